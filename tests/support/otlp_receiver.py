"""A real OTLP/gRPC trace receiver on loopback, for tests of the server's tracing.

Implements ``opentelemetry.proto.collector.trace.v1.TraceService`` with the
generated stubs that ship in ``opentelemetry-proto`` and keeps every span it
is sent, flattened with its resource's ``service.name``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@dataclass
class Span:
    """One received span, ids as hex."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    attributes: dict[str, Any] = field(default_factory=dict)


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """``with OtlpReceiver() as r``: ``r.endpoint`` to export to, ``r.wait(...)`` for spans."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._cond = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(0)

    def Export(self, request: Any, context: Any) -> Any:
        got = []
        for rs in request.resource_spans:
            attrs = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(
                        Span(
                            service=str(attrs.get("service.name", "")),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            kind=s.kind,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            status_code=s.status.code,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                        )
                    )
        with self._cond:
            self.spans.extend(got)
            self._cond.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait(self, predicate: Callable[[list[Span]], bool], timeout: float = 20.0) -> list[Span]:
        """Every span received, once ``predicate(spans)`` holds (AssertionError on timeout)."""
        end = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.spans):
                left = end - time.monotonic()
                if left <= 0:
                    names = [s.name for s in self.spans]
                    raise AssertionError(f"spans not received in {timeout}s; got {names}")
                self._cond.wait(left)
            return list(self.spans)
