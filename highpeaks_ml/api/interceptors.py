"""Server interceptor: request id, one log line per RPC, metrics, drain, error mapping.

Every RPC passes through ``ErrorMappingInterceptor``, so no method can leak
an exception as UNKNOWN (the failure mode of per-method decorators): domain
errors become their status code, anything unexpected becomes INTERNAL with a
generic message and the traceback goes to the log only. It is the outermost
interceptor: the authentication interceptor (``api/auth.py``) runs inside
it, so refused calls are mapped, logged (with the caller's subject) and
counted like any other. While the server drains (``Lifecycle.draining``)
new RPCs other than health checks get UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import threading
import time
import traceback
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc import aio

from highpeaks_ml import errors
from highpeaks_ml.api.auth import KNOWN_METHODS
from highpeaks_ml.api.context import NO_SUBJECT, subject_var
from highpeaks_ml.api.errors import status_for
from highpeaks_ml.api.handlers import LayerInterceptor, before, rewrap_handler
from highpeaks_ml.config import RpcLog
from highpeaks_ml.logs import request_id_var
from highpeaks_ml.metrics import Metrics

log = logging.getLogger("highpeaks_ml.rpc")

# Probes and reflection are logged at DEBUG so that kubelet's probes every few
# seconds do not drown the RPC log.
_QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
REQUEST_ID_KEY = "x-request-id"
# While draining, probes must keep getting answers (NOT_SERVING): health only.
_DRAIN_EXEMPT = frozenset(
    {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", "/grpc.health.v1.Health/List"}
)
_MAX_REQUEST_ID = 128
_random_bits = random.getrandbits


class Lifecycle:
    """Server state every RPC checks: ``draining`` once shutdown begins, and how
    many RPCs (health checks aside) are being handled, so shutdown can wait for
    them while new ones are still answered UNAVAILABLE by this interceptor."""

    def __init__(self) -> None:
        self.draining = False
        self.active = 0
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        if self.active <= 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, limit_s: float) -> bool:
        """Wait until no counted RPC is in flight; False when ``limit_s`` passed first."""
        if self.active <= 0:
            return True
        self._idle = asyncio.Event()
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
            # a cancellation that arrives as the event is set.
            async with asyncio.timeout(max(0.0, limit_s)):
                await self._idle.wait()
        except TimeoutError:
            return False
        finally:
            self._idle = None
        return True


def _request_id(metadata: Iterable[tuple[str, Any]] | None) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= _MAX_REQUEST_ID:
            return value
    # 128 random bits as 32 hex digits, like uuid4().hex but without its object
    # (~2 µs) and its system call (os.urandom): the process's generator, seeded
    # from the OS at start and again in a forked child. Ids, not secrets.
    return f"{_random_bits(128):032x}"


_OK = grpc.StatusCode.OK


class _Method:
    """What the error mapping knows of one method, worked out once when its handler is built.

    ``begin`` and ``finish`` run for every RPC: they write the method's
    series into this thread's cells directly (``_Series.cells``) instead of
    a call per series (docs/serving.md).
    """

    __slots__ = (
        "exempt",
        "label",
        "lifecycle",
        "log_all",
        "log_errors",
        "method",
        "owner",
        "quiet",
        "series",
        "subject",
    )

    def __init__(self, method: str, owner: ErrorMappingInterceptor) -> None:
        self.method = method
        self.owner = owner
        # Bounded label set: an attacker's made-up paths all count as "other".
        self.label = method if method in KNOWN_METHODS else "other"
        self.series = owner.series(self.label)
        # Health watches never end by themselves: shutdown does not wait for them.
        self.exempt = method in _DRAIN_EXEMPT
        self.quiet = method.startswith(_QUIET_PREFIXES)
        self.lifecycle = owner.lifecycle
        self.log_all = owner.rpc_log is RpcLog.ALL
        self.log_errors = owner.rpc_log is RpcLog.ERRORS
        # The subject before authentication; not set when it is the variable's default.
        self.subject = owner.default_subject if owner.default_subject != NO_SUBJECT else None

    def begin(self, context: aio.ServicerContext) -> str:
        """Start one RPC: its request id (returned), subject, trailer, in-flight gauge.

        The context variables are not reset at the end: grpc.aio runs every RPC
        in a task of its own, which has its own copy of the context (where the
        subject starts as the variable's default).
        """
        request_id = _request_id(context.invocation_metadata())
        request_id_var.set(request_id)
        if self.subject is not None:
            subject_var.set(self.subject)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        series = self.series
        if series is not None:
            try:
                cells = series.local.cells
            except AttributeError:
                cells = series.cells()
            cells[0][0] += 1  # in flight
        return request_id

    def admit(self) -> bool:
        """Refuse new work while draining (health probes still answer); True when counted."""
        lifecycle = self.lifecycle
        if lifecycle is None or self.exempt:
            return False
        if lifecycle.draining:
            raise errors.Unavailable("server is shutting down; retry on another replica")
        lifecycle.enter()
        return True

    def finish(self, code: grpc.StatusCode, start: float, counted: bool) -> None:
        """End one RPC: its log line, the drain's count, the RPC series."""
        elapsed = time.perf_counter() - start
        if self.log_all or (self.log_errors and code is not _OK):
            log.log(
                logging.DEBUG if self.quiet else logging.INFO,
                "rpc",
                extra={
                    "method": self.method[:200],
                    "code": code.name,
                    "ms": round(elapsed * 1000, 3),
                    "subject": subject_var.get(),
                },
            )
        if counted:
            self.lifecycle.leave()  # type: ignore[union-attr]
        series = self.series
        if series is not None:
            try:
                in_flight, duration, ok = series.local.cells
            except AttributeError:
                in_flight, duration, ok = series.cells()
            in_flight[0] -= 1
            duration[bisect_left(series.bounds, elapsed)] += 1
            duration[-1] += elapsed
            if code is _OK:
                ok[0] += 1
            else:
                series.finished(code).inc()


def _wrap_unary_response(
    behavior: Callable[..., Awaitable[Any]],
    method: str,
    owner: ErrorMappingInterceptor,
    guard: str = "",
) -> Callable[..., Awaitable[Any]]:
    m = _Method(method, owner)
    is_async = inspect.iscoroutinefunction(behavior)

    async def handler(request: Any, context: aio.ServicerContext) -> Any:
        start = time.perf_counter()
        request_id = m.begin(context)
        code = _OK
        counted = False
        try:
            counted = m.admit()
            if guard:
                request = _malformed_checked(request, guard)
            if is_async:
                result = await behavior(request, context)
            else:
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
            set_code = context.code()
            if isinstance(set_code, grpc.StatusCode):
                code = set_code
            return result
        except aio.AbortError:
            code = _aborted_code(context)
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, message = status_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                _log_internal(method, exc)
            await context.abort(code, message, trailing_metadata=((REQUEST_ID_KEY, request_id),))
        finally:
            m.finish(code, start, counted)

    return handler


def _aborted_code(context: aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _log_internal(method: str, exc: BaseException) -> None:
    # The formatted traceback, not exc_info: a handler that keeps records
    # (pytest's, a buffering one) would otherwise keep the frames, and with
    # them the call, alive and block server.stop().
    trace = "".join(traceback.format_exception(exc)).rstrip()
    log.error("unexpected error in %s\n%s", method, trace)


def _wrap_stream_response(
    behavior: Callable[..., AsyncIterator[Any]],
    method: str,
    owner: ErrorMappingInterceptor,
    guard: str = "",
) -> Callable[..., AsyncIterator[Any]]:
    m = _Method(method, owner)

    async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        start = time.perf_counter()
        request_id = m.begin(context)
        code = _OK
        counted = False
        try:
            counted = m.admit()
            if guard:
                request = _malformed_checked(request, guard)
            async for item in behavior(request, context):
                yield item
            set_code = context.code()
            if isinstance(set_code, grpc.StatusCode):
                code = set_code
        except aio.AbortError:
            code = _aborted_code(context)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, message = status_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                _log_internal(method, exc)
            await context.abort(code, message, trailing_metadata=((REQUEST_ID_KEY, request_id),))
        finally:
            m.finish(code, start, counted)

    return handler


def _wrap_stream(
    behavior: Callable[..., Any], method: str, owner: ErrorMappingInterceptor, guard: str = ""
) -> Callable[..., Any]:
    # A streaming handler is either an async generator (yields responses) or a
    # coroutine that calls context.write() (grpc's health Watch does); the
    # wrapper must be of the same kind.
    if inspect.isasyncgenfunction(behavior):
        return _wrap_stream_response(behavior, method, owner, guard)
    return _wrap_unary_response(behavior, method, owner, guard)


class Malformed:
    """Stands for a request message that did not parse (see ``MalformedRequestInterceptor``)."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def error(self) -> errors.InvalidArgument:
        return errors.InvalidArgument(
            f"malformed request: the bytes are not a valid {self.type_name} message"
        )


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns a ``Malformed`` instead of raising."""
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)  # SomeRequest.FromString
    type_name = getattr(owner, "__name__", "request")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return Malformed(type_name)

    return deserialize


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Malformed):
            raise request.error()
        yield request


def _malformed_checked(request: Any, guard: str) -> Any:
    """``request``, refused when it is a ``Malformed`` (``guard`` "unary"), or a request
    stream that refuses one when it comes (``guard`` "stream")."""
    if guard == "stream":
        return _checked(request)
    if isinstance(request, Malformed):
        raise request.error()
    return request


def _guard(behavior: Callable[..., Any], streaming_request: bool) -> Callable[..., Any]:
    """``behavior`` of the same kind (coroutine or async generator) that raises
    InvalidArgument for a ``Malformed`` request instead of handing it over."""
    guard = "stream" if streaming_request else "unary"
    return before(behavior, lambda request, _context: _malformed_checked(request, guard))


class MalformedRequestInterceptor(LayerInterceptor):
    """Turns request bytes that do not parse into INVALID_ARGUMENT.

    grpc deserialises a request before any handler runs and answers a
    failure itself: UNKNOWN ("Unexpected <class 'DecodeError'>: ...") for a
    unary request, and inside a request stream the servicer's ``async for``
    raises DecodeError (INTERNAL once mapped). Bad input is neither. This
    interceptor must be the innermost one: its deserializer never raises but
    returns a ``Malformed`` marker, and its handler raises
    ``errors.InvalidArgument`` for it, after the outer interceptors have
    authenticated the caller and while the error mapping is in place.
    Request streams are checked as the servicer iterates them (handlers that
    read with ``context.read()`` would see the marker; none does).
    """

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        """``handler`` refusing unparsable requests (``api/dispatch.HandlerLayer``)."""
        if handler is None:
            return None
        return rewrap_handler(
            handler,
            lambda behavior, streaming_request, _: _guard(behavior, streaming_request),
            request_deserializer=_tolerant(handler.request_deserializer),
        )


class ErrorMappingInterceptor(LayerInterceptor):
    """Wraps every method handler with request ids, logging, metrics and error mapping.

    ``metrics`` (optional) receives the RPC counters; ``lifecycle`` (optional)
    makes new RPCs UNAVAILABLE once draining; ``default_subject`` is the caller
    recorded before (or without) authentication; ``rpc_log`` says which RPCs
    get their log line. ``malformed`` does ``MalformedRequestInterceptor``'s
    job in the same wrapper, for a server without authentication (nothing
    must run between them then): one interceptor and one Python frame less per
    call (docs/serving.md, "Where the batch-1 time goes").
    """

    def __init__(
        self,
        metrics: Metrics | None = None,
        lifecycle: Lifecycle | None = None,
        default_subject: str = NO_SUBJECT,
        rpc_log: RpcLog = RpcLog.ALL,
        *,
        malformed: bool = False,
    ) -> None:
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.default_subject = default_subject
        self.rpc_log = rpc_log
        self.malformed = malformed
        super().__init__()
        self._series: dict[str, _Series] = {}

    def series(self, label: str) -> _Series | None:
        """The metric series of method ``label``, made once (``labels()`` per call cost
        a lock and a dict lookup each)."""
        if self.metrics is None:
            return None
        found = self._series.get(label)
        if found is None:
            found = self._series[label] = _Series(self.metrics, label)
        return found

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        """``handler`` with the request id, log line, metrics and error mapping around it
        (``api/dispatch.HandlerLayer``); None stays None (grpc answers UNIMPLEMENTED)."""
        if handler is None:
            return None
        malformed = self.malformed

        def wrap(behavior: Callable[..., Any], streaming_request: bool, streaming: bool) -> Any:
            guard = ("stream" if streaming_request else "unary") if malformed else ""
            if streaming:
                return _wrap_stream(behavior, method, self, guard)
            return _wrap_unary_response(behavior, method, self, guard)

        if not malformed:
            return rewrap_handler(handler, wrap)
        tolerant = _tolerant(handler.request_deserializer)
        return rewrap_handler(handler, wrap, request_deserializer=tolerant)


class _Series:
    """One method's RPC metric series (children of the labelled metrics)."""

    __slots__ = ("_codes", "_rpcs", "bounds", "duration", "in_flight", "label", "local", "ok")

    def __init__(self, metrics: Metrics, label: str) -> None:
        self.label = label
        self.in_flight = metrics.rpcs_in_flight.labels(label)
        self.duration = metrics.rpc_duration.labels(label)
        self.bounds = self.duration.bounds
        self._rpcs = metrics.rpcs
        self._codes: dict[grpc.StatusCode, Any] = {}
        self.ok = self.finished(_OK)
        #: ``local.cells``: this thread's (in flight, duration, OK count) cells.
        self.local = threading.local()

    def cells(self) -> tuple[list[float], list[float], list[float]]:
        """This thread's cells of the in-flight gauge, the duration and the OK count
        (hotmetrics children's ``cell()``), made once per thread."""
        cells = (self.in_flight.cell(), self.duration.cell(), self.ok.cell())
        self.local.cells = cells
        return cells

    def finished(self, code: grpc.StatusCode) -> Any:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._rpcs.labels(self.label, code.name)
        return child
