"""Server interceptor: request id, one log line per RPC, and error mapping.

Every RPC passes through ``ErrorMappingInterceptor``, so no method can leak
an exception as UNKNOWN (the failure mode of per-method decorators): domain
errors become their status code, anything unexpected becomes INTERNAL with a
generic message and the traceback goes to the log only.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from highpeaks_ml.api.errors import status_for
from highpeaks_ml.logs import request_id_var

log = logging.getLogger("highpeaks_ml.rpc")

# Probes and reflection are logged at DEBUG so that kubelet's probes every few
# seconds do not drown the RPC log.
_QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
REQUEST_ID_KEY = "x-request-id"
_MAX_REQUEST_ID = 128


def _request_id(metadata: tuple[Any, ...] | None) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= _MAX_REQUEST_ID:
            return value
    return uuid.uuid4().hex


class _Call:
    """Bookkeeping for one RPC: sets the request id, logs the outcome."""

    def __init__(self, method: str, metadata: tuple[Any, ...] | None) -> None:
        self.method = method
        self.request_id = _request_id(metadata)
        self.start = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.token: Any = None

    def enter(self, context: aio.ServicerContext) -> None:
        self.token = request_id_var.set(self.request_id)
        context.set_trailing_metadata(((REQUEST_ID_KEY, self.request_id),))

    async def fail(self, context: aio.ServicerContext, exc: BaseException) -> None:
        code, message = status_for(exc)
        self.code = code
        if code == grpc.StatusCode.INTERNAL:
            # Log the formatted traceback, not exc_info: a handler that keeps
            # records (pytest's, a buffering one) would otherwise keep the
            # frames, and with them the call, alive and block server.stop().
            trace = "".join(traceback.format_exception(exc)).rstrip()
            log.error("unexpected error in %s\n%s", self.method, trace)
        await context.abort(code, message, trailing_metadata=((REQUEST_ID_KEY, self.request_id),))

    def aborted(self, context: aio.ServicerContext) -> None:
        code = context.code()
        self.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN

    def finish(self) -> None:
        elapsed_ms = (time.perf_counter() - self.start) * 1000
        level = logging.DEBUG if self.method.startswith(_QUIET_PREFIXES) else logging.INFO
        log.log(
            level,
            "rpc",
            extra={"method": self.method, "code": self.code.name, "ms": round(elapsed_ms, 3)},
        )
        if self.token is not None:
            request_id_var.reset(self.token)


def _wrap_unary_response(
    behavior: Callable[..., Awaitable[Any]], method: str, metadata: Any
) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: aio.ServicerContext) -> Any:
        call = _Call(method, metadata)
        call.enter(context)
        try:
            result = behavior(request, context)
            if asyncio.iscoroutine(result):
                result = await result
            code = context.code()
            if isinstance(code, grpc.StatusCode):
                call.code = code
            return result
        except aio.AbortError:
            call.aborted(context)
            raise
        except asyncio.CancelledError:
            call.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            await call.fail(context, exc)
        finally:
            call.finish()

    return handler


def _wrap_stream_response(
    behavior: Callable[..., AsyncIterator[Any]], method: str, metadata: Any
) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        call = _Call(method, metadata)
        call.enter(context)
        try:
            async for item in behavior(request, context):
                yield item
            code = context.code()
            if isinstance(code, grpc.StatusCode):
                call.code = code
        except aio.AbortError:
            call.aborted(context)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            call.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            await call.fail(context, exc)
        finally:
            call.finish()

    return handler


def _wrap_stream(behavior: Callable[..., Any], method: str, metadata: Any) -> Callable[..., Any]:
    # A streaming handler is either an async generator (yields responses) or a
    # coroutine that calls context.write() (grpc's health Watch does); the
    # wrapper must be of the same kind.
    if inspect.isasyncgenfunction(behavior):
        return _wrap_stream_response(behavior, method, metadata)
    return _wrap_unary_response(behavior, method, metadata)


class ErrorMappingInterceptor(aio.ServerInterceptor):
    """Wraps every method handler with request ids, logging and error mapping."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # unknown method: grpc answers UNIMPLEMENTED
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary_response(handler.unary_unary, method, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary_response(handler.stream_unary, method, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, method, metadata),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
