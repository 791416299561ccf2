"""Rebuilding a grpc method handler around wrapped behaviour (used by every interceptor)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

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
