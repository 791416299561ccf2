"""The dispatcher: handlers wrapped once per method, one lookup per call (no sockets).

The behaviour through a real server (auth refusals of unknown paths, malformed
requests, reflection, health) is covered by the integration tests; these pin
what the dispatcher itself promises.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import aio

from highpeaks_ml.api.dispatch import Dispatcher
from highpeaks_ml.api.interceptors import ErrorMappingInterceptor


async def _echo(request, context):  # pragma: no cover - never called here
    return request


class Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


class Recording:
    """A layer that counts how often it wraps, and answers unknown paths when asked."""

    def __init__(self, answer_unknown: bool = False) -> None:
        self.wrapped: list[str] = []
        self.answer_unknown = answer_unknown

    def wrap_handler(self, method, handler):
        self.wrapped.append(method)
        if handler is None:
            return grpc.unary_unary_rpc_method_handler(_echo) if self.answer_unknown else None
        return grpc.unary_unary_rpc_method_handler(handler.unary_unary)


class FakeServer:
    def __init__(self) -> None:
        self.generic: list = []

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.generic.extend(handlers)


def _register(d: Dispatcher) -> None:
    handlers = {"M": grpc.unary_unary_rpc_method_handler(_echo)}
    # What the generated add_*Servicer_to_server does: both ways.
    d.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("pkg.S", handlers),))
    d.add_registered_method_handlers("pkg.S", handlers)


def test_each_method_is_wrapped_once_and_found_by_lookup():
    outer, inner = Recording(), Recording()
    d = Dispatcher([outer, inner])
    _register(d)
    server = FakeServer()
    d.install(server)
    assert server.generic == [d]  # the server's only handler
    assert d.methods == {"/pkg.S/M"}
    first = d.service(Details("/pkg.S/M"))
    assert first is d.service(Details("/pkg.S/M"))
    # Innermost first, once each; the duplicate generic registration is dropped.
    assert inner.wrapped == ["/pkg.S/M"] and outer.wrapped == ["/pkg.S/M"]


def test_unknown_paths_go_through_the_layers_per_call_and_are_not_kept():
    layer = Recording(answer_unknown=True)
    d = Dispatcher([layer])
    _register(d)
    d.install(FakeServer())
    for _ in range(3):
        assert d.service(Details("/made.Up/Path")) is not None
    assert layer.wrapped.count("/made.Up/Path") == 3
    plain = Dispatcher([ErrorMappingInterceptor()])
    _register(plain)
    plain.install(FakeServer())
    assert plain.service(Details("/made.Up/Path")) is None  # grpc answers UNIMPLEMENTED


def test_a_foreign_generic_handler_is_asked_per_call_and_wrapped_once():
    class Foreign(grpc.GenericRpcHandler):
        def __init__(self) -> None:
            self.asked = 0
            self.handler = grpc.unary_unary_rpc_method_handler(_echo)

        def service(self, details):
            self.asked += 1
            return self.handler if details.method == "/f.F/X" else None

    foreign, layer = Foreign(), Recording()
    d = Dispatcher([layer])
    d.add_generic_rpc_handlers((foreign,))
    d.install(FakeServer())
    a, b = d.service(Details("/f.F/X")), d.service(Details("/f.F/X"))
    assert a is b and foreign.asked == 2 and layer.wrapped == ["/f.F/X"]


def test_registering_after_install_is_refused():
    d = Dispatcher()
    d.install(FakeServer())
    with pytest.raises(RuntimeError):
        d.add_registered_method_handlers("pkg.S", {})
    with pytest.raises(RuntimeError):
        d.install(FakeServer())


def test_a_real_aio_server_accepts_it():
    async def main() -> None:
        server = aio.server()
        d = Dispatcher([ErrorMappingInterceptor()])
        _register(d)
        d.install(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                assert await ch.unary_unary("/pkg.S/M")(b"ping") == b"ping"
                with pytest.raises(aio.AioRpcError) as err:
                    await ch.unary_unary("/pkg.S/Nope")(b"")
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            await server.stop(None)

    asyncio.run(main())
