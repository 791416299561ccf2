"""Rebuilding a grpc method handler around wrapped behaviour (used by every layer).

The layers (error mapping, authentication, malformed requests, tracing) say
how to wrap one method's behaviour; ``rewrap_handler`` rebuilds the handler of
whichever of the four RPC kinds it is. The server applies them once per method
(``api/dispatch.Dispatcher``); ``LayerInterceptor`` gives a layer the form of a
grpc.aio interceptor for tests and other servers, keeping the handler it built
per method in a ``HandlerCache`` (grpc.aio calls an interceptor on every RPC;
rebuilding the handler each time was most of what interceptors cost per call,
docs/serving.md).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

#: ``wrap(behavior, request_streaming, response_streaming) -> behavior``
Wrapper = Callable[[Callable[..., Any], bool, bool], Callable[..., Any]]


def rewrap_handler(
    handler: grpc.RpcMethodHandler,
    wrap: Wrapper,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """The same kind of handler with ``wrap`` applied to its behaviour.

    Keeps the serializers (or replaces the request deserializer when given),
    so an interceptor only says how to wrap, not how each of the four RPC
    kinds is rebuilt.
    """
    kw = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False, False), **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, True, False), **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, False, True), **kw)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True, True), **kw)


def before(
    behavior: Callable[..., Any], prepare: Callable[[Any, aio.ServicerContext], Any]
) -> Callable[..., Any]:
    """``behavior`` of the same kind (coroutine or async generator) that gets
    ``prepare(request, context)`` instead of the request.

    ``prepare`` runs first, before ``behavior`` is called, so what it raises
    ends the call with nothing of the handler run. It returns the request to
    hand on (the same one, or a checking wrapper around a request stream).
    """
    if inspect.isasyncgenfunction(behavior):

        async def gen(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in behavior(prepare(request, context), context):
                yield item

        return gen

    async def unary(request: Any, context: aio.ServicerContext) -> Any:
        result = behavior(prepare(request, context), context)
        if inspect.isawaitable(result):
            result = await result
        return result

    return unary


class HandlerCache:
    """The wrapped handler built for each method, reused while its inner handler is the same.

    Keyed by the method path and checked by identity of the inner handler, so
    a changed inner handler (an inner interceptor that does not cache) is
    simply wrapped again. Only methods that have a handler are cached, so the
    size is bounded by the served methods, whatever paths callers send.
    """

    def __init__(self) -> None:
        self._by_method: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(
        self,
        method: str,
        handler: grpc.RpcMethodHandler,
        build: Callable[[], grpc.RpcMethodHandler],
    ) -> grpc.RpcMethodHandler:
        """The handler ``build()`` made for ``method`` around ``handler`` (built once)."""
        hit = self._by_method.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = build()
        self._by_method[method] = (handler, wrapped)
        return wrapped


class LayerInterceptor(aio.ServerInterceptor):
    """A layer (``wrap_handler``, see ``api/dispatch.HandlerLayer``) usable as a grpc.aio
    interceptor too: the handler it wraps for a method is built once and kept.

    The server applies layers through ``api/dispatch.Dispatcher``; this form is
    for tests and other servers. ``_keep`` says which wrapped handlers may be
    kept (default: those of methods that have a handler).
    """

    def __init__(self) -> None:
        self._handlers = HandlerCache()

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        """``handler`` of ``method`` with this layer around it."""
        raise NotImplementedError

    def _keep(self, method: str, handler: grpc.RpcMethodHandler | None) -> bool:
        return handler is not None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """As a grpc.aio interceptor."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self._keep(method, handler):
            # Not kept: any path a caller sends may land here.
            return self.wrap_handler(method, handler)  # type: ignore[return-value]
        return self._handlers.get(method, handler, lambda: self.wrap_handler(method, handler))  # type: ignore[arg-type,return-value]
