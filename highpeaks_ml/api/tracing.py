"""OpenTelemetry tracing of RPCs: one server span per call, continued from the caller.

Off by default, and then nothing of it runs: ``setup`` returns None and the
server is built without the tracing interceptor, so no span, context or
timing object exists per call (the serving core checks one contextvar that
nobody sets). On when ``OTEL_TRACES_EXPORTER`` names ``otlp`` (or
``console``, for a look at the spans on stdout); ``OTEL_SDK_DISABLED=true``
turns it off again. Everything else comes from the SDK's standard variables,
read once at start-up: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), ``OTEL_EXPORTER_OTLP_INSECURE``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_TRACES_SAMPLER`` /
``OTEL_TRACES_SAMPLER_ARG`` (default ``parentbased_always_on``),
``OTEL_SERVICE_NAME`` (default ``highpeaks-ml``), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_PROPAGATORS`` and ``OTEL_BSP_*`` (docs/observability.md).

Each RPC gets a SERVER span named after its method (``highpeaks_ml.v1.
PredictService/Predict``) whose parent is the caller's W3C ``traceparent``
(request metadata) when there is one, with ``rpc.*`` attributes, the status
code, and for predictions ``highpeaks_ml.model``, ``highpeaks_ml.version``
and ``highpeaks_ml.rows``. Unary predictions also get child spans:
``queue wait`` (from the request's dispatch to its onnxruntime call),
``inference`` (the onnxruntime call) and ``response`` (building the answer).
Children are created after the call from timestamps the serving core
recorded (``serving.manager.RequestTiming``), and only for sampled calls.

Training jobs (:class:`JobTracing`, the job manager's ``tracer``): a sampled
StartTraining call's span is kept with the job as a W3C ``traceparent``
(in its record, so a restart does not break the link), with the time each
stage began (the worker's clock, from its ``StageChanged`` events). When the
job ends the server exports a ``training job`` span, child of that call's
span, and one child per stage (``loading data``, ``fitting``, ...), with
explicit start and end times: workers (local processes or Ray tasks) need no
exporter of their own.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from highpeaks_ml import __version__
from highpeaks_ml.api.handlers import LayerInterceptor, rewrap_handler
from highpeaks_ml.serving.manager import REQUEST_TIMING, RequestTiming

if TYPE_CHECKING:
    from highpeaks_ml.training.jobs import Job

log = logging.getLogger("highpeaks_ml.tracing")

#: Exporters this server builds (OTEL_TRACES_EXPORTER); "none" or unset: tracing off.
EXPORTERS = ("otlp", "console")
#: Methods whose calls carry the prediction attributes and child spans.
_PREDICT_METHODS = frozenset(
    {"/highpeaks_ml.v1.PredictService/Predict", "/inference.GRPCInferenceService/ModelInfer"}
)


class Tracing:
    """A tracer provider of its own (not the process-global one) and its tracer."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("highpeaks_ml", __version__)

    def interceptor(self) -> TracingInterceptor:
        """The outermost interceptor: one server span per RPC."""
        return TracingInterceptor(self.tracer)

    def jobs(self) -> JobTracing:
        """The job manager's tracer (``JobManager.tracer``): spans per training job."""
        return JobTracing(self.tracer)

    def close(self) -> None:
        """Export what is still buffered and stop the exporter (server shutdown)."""
        try:
            self.provider.shutdown()
        except Exception:
            log.exception("stopping the trace exporter failed")


def setup(environ: Mapping[str, str] | None = None) -> Tracing | None:
    """Tracing as ``OTEL_*`` in ``environ`` (default: the process environment) asks,
    or None when it is off (the default)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n and n != "none"]
    if not names:
        return None
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        from highpeaks_ml.config import ConfigError

        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} not supported (use otlp, console or none)"
        )
    from opentelemetry.sdk.resources import OTEL_SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    attributes = {} if env.get(OTEL_SERVICE_NAME) else {"service.name": "highpeaks-ml"}
    attributes["service.version"] = __version__
    # Resource.create and the sampler read OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
    # OTEL_TRACES_SAMPLER(_ARG) from os.environ: the SDK's own parsing, not ours.
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    log.info(
        "tracing on",
        extra={
            "exporters": ",".join(names),
            "sampler": env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
            "sampler_arg": env.get("OTEL_TRACES_SAMPLER_ARG", ""),
        },
    )
    return Tracing(provider)


def _carrier(metadata: Any) -> dict[str, str]:
    return {k: v for k, v in metadata or () if isinstance(v, str)}


class _Span:
    """One RPC's server span: started, made current, ended with the call's status."""

    __slots__ = ("ctx_token", "span", "timing", "timing_token", "tracer")

    def __init__(self, tracer: Any, method: str, context: aio.ServicerContext) -> None:
        from opentelemetry import context as otel_context
        from opentelemetry import propagate, trace

        parent = propagate.extract(_carrier(context.invocation_metadata()))
        service, _, name = method.lstrip("/").partition("/")
        self.tracer = tracer
        self.span = tracer.start_span(
            method.lstrip("/"),
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        self.ctx_token = otel_context.attach(trace.set_span_in_context(self.span, parent))
        self.timing: RequestTiming | None = None
        self.timing_token: Any = None
        if method in _PREDICT_METHODS and self.span.is_recording():
            self.timing = RequestTiming()
            self.timing_token = REQUEST_TIMING.set(self.timing)

    def end(self, context: aio.ServicerContext, error: BaseException | None) -> None:
        from opentelemetry import context as otel_context
        from opentelemetry.trace import Status, StatusCode

        span = self.span
        code = context.code()
        if not isinstance(code, grpc.StatusCode):
            if error is None:
                code = grpc.StatusCode.OK
            elif isinstance(error, (asyncio.CancelledError, GeneratorExit)):
                code = grpc.StatusCode.CANCELLED
            else:
                code = grpc.StatusCode.UNKNOWN
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code != grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
            if self.timing is not None:
                self._children(self.timing)
        span.end()
        if self.timing_token is not None:
            REQUEST_TIMING.reset(self.timing_token)
        otel_context.detach(self.ctx_token)

    def _children(self, t: RequestTiming) -> None:
        if t.model:
            self.span.set_attribute("highpeaks_ml.model", t.model)
            self.span.set_attribute("highpeaks_ml.version", t.version)
            self.span.set_attribute("highpeaks_ml.rows", t.rows)
        if not t.done:
            return  # failed before running: the server span says why
        # perf_counter -> epoch ns, through one pair of readings taken now.
        offset = time.time_ns() - int(time.perf_counter() * 1e9)

        def ns(t_s: float) -> int:
            return offset + int(t_s * 1e9)

        from opentelemetry import trace

        tracer = self.tracer
        ctx = trace.set_span_in_context(self.span)
        stages: list[tuple[str, float, float, dict[str, Any]]] = []
        if t.started and t.dispatched:
            stages.append(("queue wait", t.dispatched, t.started, {"inline": t.inline}))
        if t.started and t.ended:
            stages.append(("inference", t.started, t.ended, {"highpeaks_ml.rows": t.rows}))
        stages.append(("response", t.done, time.perf_counter(), {}))
        for name, start, end, attrs in stages:
            child = tracer.start_span(name, context=ctx, start_time=ns(start), attributes=attrs)
            child.end(end_time=ns(max(start, end)))


def _ns(epoch_s: float) -> int:
    return int(epoch_s * 1e9)


class JobTracing:
    """Spans of training jobs, created by the server when a job ends (see the module
    docstring); implements ``training.jobs.JobTracer``."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer

    def current_parent(self) -> str:
        """The current span (StartTraining's server span) as a W3C traceparent;
        "" when there is none or it is not sampled (then the job is not traced)."""
        from opentelemetry import trace

        ctx = trace.get_current_span().get_span_context()
        if not ctx.is_valid or not ctx.trace_flags.sampled:
            return ""
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    def job_ended(self, job: Job) -> None:
        """Export the ``training job`` span of an ended job and one child per stage."""
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        # Always W3C (what current_parent wrote), whatever OTEL_PROPAGATORS says.
        parent = TraceContextTextMapPropagator().extract({"traceparent": job.trace_parent})
        end = max(job.finished_at, job.created_at)
        attributes: dict[str, Any] = {
            "highpeaks_ml.job.id": job.id,
            "highpeaks_ml.model": job.model_name,
            "highpeaks_ml.job.algorithm": job.algorithm,
            "highpeaks_ml.job.backend": job.backend,
            "highpeaks_ml.job.state": job.state,
        }
        if job.model_version:
            attributes["highpeaks_ml.version"] = job.model_version
        if job.search_plan:
            attributes["highpeaks_ml.job.trials"] = int(job.search.get("done", 0))
        span = self.tracer.start_span(
            "training job", context=parent, start_time=_ns(job.created_at), attributes=attributes
        )
        failed = job.state == "FAILED"
        ctx = trace.set_span_in_context(span)
        stages = [(str(name), float(at)) for name, at in job.stage_times]
        for i, (name, start) in enumerate(stages):
            last = i == len(stages) - 1
            stop = end if last else stages[i + 1][1]
            child = self.tracer.start_span(
                name.lower().replace("_", " "),
                context=ctx,
                start_time=_ns(min(start, end)),
                attributes={"highpeaks_ml.job.stage": name},
            )
            if failed and last:
                child.set_status(Status(StatusCode.ERROR, job.error))
            child.end(end_time=_ns(min(max(start, stop), end)))
        if failed:
            span.set_status(Status(StatusCode.ERROR, job.error))
        span.end(end_time=_ns(end))


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], method: str, tracer: Any) -> Any:
    async def handler(request: Any, context: aio.ServicerContext) -> Any:
        span = _Span(tracer, method, context)
        error: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            span.end(context, error)

    return handler


def _wrap_stream(behavior: Callable[..., AsyncIterator[Any]], method: str, tracer: Any) -> Any:
    async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        span = _Span(tracer, method, context)
        error: BaseException | None = None
        try:
            async for item in behavior(request, context):
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            span.end(context, error)

    return handler


class TracingInterceptor(LayerInterceptor):
    """Outermost interceptor (only built when tracing is on): a server span per RPC."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        super().__init__()

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        """``handler`` inside a server span (``api/dispatch.HandlerLayer``)."""
        if handler is None:
            return None
        tracer = self.tracer

        def wrap(behavior: Callable[..., Any], _: bool, streaming_response: bool) -> Any:
            if streaming_response and inspect.isasyncgenfunction(behavior):
                return _wrap_stream(behavior, method, tracer)
            return _wrap_unary(behavior, method, tracer)

        return rewrap_handler(handler, wrap)


__all__ = ["EXPORTERS", "JobTracing", "Tracing", "TracingInterceptor", "setup"]
