"""One generic handler that finds every method's wrapped handler with one dict lookup.

The server used to stack grpc.aio interceptors (tracing, error mapping,
authentication, malformed requests) and let the generated
``add_*Servicer_to_server`` functions register every method with the server.
Both cost per call, measured against ``scripts/minimal_server.py``
(docs/serving.md, "Where each microsecond goes"):

- grpc.aio runs the interceptor chain as coroutines for every RPC, even
  when each interceptor hands back a cached handler (~10-20 µs each);
- grpc.aio (1.6x+) keeps one pending "request call" per *registered* method
  and waits for the next RPC with ``asyncio.wait`` over all of them, so
  every call paid for the ~25 methods of this server (a callback added and
  removed on each): about 50 µs of CPU per call on the development VM.

``Dispatcher`` takes the place of both. It looks like a server to the
generated registration functions (``add_registered_method_handlers``,
``add_generic_rpc_handlers``), wraps each method's handler with the layers
once, when the server is built, and is installed as the server's only
generic handler: per call grpc waits on one pending request and asks
``service()``, a dict lookup. The layers (``HandlerLayer``) are what the
interceptors were, and still are when used as interceptors in tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import Protocol

import grpc
from grpc import aio

from highpeaks_ml.api.handlers import HandlerCache


class HandlerLayer(Protocol):
    """What wraps a method's handler (authentication, error mapping, tracing ...)."""

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        """``handler`` of ``method`` with this layer around it (None: unknown method).

        Called once per known method; for a method nobody serves it is called
        per call with ``handler`` None (a layer may answer it, e.g. refuse an
        unauthenticated caller), and the result is not kept.
        """
        ...


class Dispatcher(grpc.GenericRpcHandler):
    """Every registered method's handler, wrapped by ``layers`` (outermost first) once.

    Register servicers on it as on a server (the generated
    ``add_*Servicer_to_server(servicer, dispatcher)``), then ``install`` it.
    A generic handler that is not one service's method table (nothing of
    this project's) is asked per call and its answer wrapped once per method.
    """

    def __init__(self, layers: Sequence[HandlerLayer] = ()) -> None:
        self._layers = tuple(layers)
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._services: set[str] = set()
        self._generic: list[grpc.GenericRpcHandler] = []
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._from_generic = HandlerCache()
        self._installed = False

    # --- the server-like registration API the generated code calls -----------------

    def add_registered_method_handlers(
        self, service: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        """Serve ``service``'s methods (``{"Method": handler}``)."""
        self._check_open()
        self._services.add(service)
        for name, handler in method_handlers.items():
            self._methods[f"/{service}/{name}"] = handler

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]
    ) -> None:
        """Keep generic handlers; one that is a service already registered by method is
        dropped (the generated code registers each service both ways)."""
        self._check_open()
        self._generic.extend(generic_rpc_handlers)

    def install(self, server: aio.Server) -> None:
        """Wrap every method once and make this the server's only handler."""
        self._check_open()
        self._generic = [
            g
            for g in self._generic
            if not (isinstance(g, grpc.ServiceRpcHandler) and g.service_name() in self._services)
        ]
        self._wrapped = {}
        for method, handler in self._methods.items():
            wrapped = self._wrap(method, handler)
            if wrapped is not None:
                self._wrapped[method] = wrapped
        self._installed = True
        server.add_generic_rpc_handlers((self,))

    @property
    def methods(self) -> frozenset[str]:
        """The paths served from the method table."""
        return frozenset(self._methods)

    # --- per call ----------------------------------------------------------------

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """The wrapped handler of the called method (None: grpc answers UNIMPLEMENTED)."""
        method = handler_call_details.method
        found = self._wrapped.get(method)
        if found is not None:
            return found
        for generic in self._generic:
            inner = generic.service(handler_call_details)
            if inner is not None:
                return self._from_generic.get(method, inner, partial(self._wrap, method, inner))  # type: ignore[arg-type]
        # Nobody serves it; a layer may still answer (authentication refuses
        # first). Built per call and not kept: callers choose these paths.
        return self._wrap(method, None)

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        for layer in reversed(self._layers):  # innermost first
            handler = layer.wrap_handler(method, handler)
        return handler

    def _check_open(self) -> None:
        if self._installed:
            raise RuntimeError("the dispatcher is installed; register handlers before install()")


__all__ = ["Dispatcher", "HandlerLayer"]
