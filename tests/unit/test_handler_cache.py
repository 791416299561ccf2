"""HandlerCache and the interceptors' reuse of wrapped handlers (no sockets)."""

from __future__ import annotations

import asyncio

import grpc

from highpeaks_ml.api.handlers import HandlerCache
from highpeaks_ml.api.interceptors import ErrorMappingInterceptor, MalformedRequestInterceptor


async def _behaviour(request, context):  # pragma: no cover - never called here
    return request


def _handler() -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(_behaviour)


def test_built_once_per_method_and_rebuilt_when_the_inner_handler_changes():
    cache = HandlerCache()
    built: list[str] = []

    def build(tag: str):
        def make():
            built.append(tag)
            return _handler()

        return make

    inner = _handler()
    first = cache.get("/a/M", inner, build("a1"))
    assert cache.get("/a/M", inner, build("a2")) is first
    other = cache.get("/b/M", inner, build("b1"))
    assert other is not first
    changed = _handler()
    assert cache.get("/a/M", changed, build("a3")) is not first
    assert built == ["a1", "b1", "a3"]


def test_interceptors_hand_out_the_same_wrapped_handler_for_every_call():
    class Details:
        def __init__(self, method: str) -> None:
            self.method = method
            self.invocation_metadata = (("x-request-id", method),)

    inner = _handler()

    async def continuation(details):
        return inner if details.method.startswith("/known") else None

    async def main():
        for interceptor in (ErrorMappingInterceptor(), MalformedRequestInterceptor()):
            a = await interceptor.intercept_service(continuation, Details("/known.S/M"))
            b = await interceptor.intercept_service(continuation, Details("/known.S/M"))
            assert a is b and a is not inner
            c = await interceptor.intercept_service(continuation, Details("/known.S/N"))
            assert c is not a
            # Unknown paths are not cached: nothing grows with what callers send.
            assert await interceptor.intercept_service(continuation, Details("/x/Y")) is None
            assert len(interceptor._handlers._by_method) == 2

    asyncio.run(main())
