"""OpenTelemetry tracing: spans exported over OTLP/gRPC to a real receiver on loopback."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from highpeaks_ml.api import oip_messages as msgs
from highpeaks_ml.api import tracing
from highpeaks_ml.client import Client
from highpeaks_ml.config import ConfigError
from highpeaks_ml.registry.local import LocalModelStore
from highpeaks_ml.v1 import train_pb2
from tests.conftest import ServerProcess
from tests.support import serving_models as sm
from tests.support.otlp_receiver import OtlpReceiver, Span

SERVER = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER
FAILED = train_pb2.JOB_STATE_FAILED
STATUS_ERROR = 2


def _children(spans: list[Span], parent: Span) -> dict[str, Span]:
    return {s.name: s for s in spans if s.parent_span_id == parent.span_id}


def test_spans_continue_the_callers_trace_with_children_and_attributes(
    home: Path, server_process: Callable[..., ServerProcess]
) -> None:
    iris = sm.iris_logreg()
    LocalModelStore(home).publish("iris", iris.onnx, iris.meta)
    with OtlpReceiver() as receiver:
        server = server_process(
            env={
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_BSP_SCHEDULE_DELAY": "50",
                "OTEL_SERVICE_NAME": "hp-under-test",
            }
        )
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        traceparent = ("traceparent", f"00-{trace_id}-{parent_id}-01")
        with Client(server.target, metadata=(traceparent,)) as c:
            assert len(c.predict("iris", iris.X[:3]).labels) == 3
            with pytest.raises(grpc.RpcError) as err:
                c.predict("no-such-model", iris.X[:1])
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # The v2 front door, without a caller's trace: a new root span.
        req = msgs.ModelInferRequest(model_name="iris")
        req.inputs.add(name="input", datatype="FP32", shape=[2, 4])
        req.raw_input_contents.append(np.asarray(iris.X[:2], "<f4").tobytes())
        with grpc.insecure_channel(server.target) as ch:
            infer = ch.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=msgs.ModelInferResponse.FromString,
            )
            assert infer(req, timeout=30).model_name == "iris"

        def servers(spans: list[Span]) -> list[Span]:
            return [s for s in spans if s.kind == SERVER]

        spans = receiver.wait(lambda got: len(servers(got)) >= 3 and len(got) >= 9)
        by_name: dict[str, list[Span]] = {}
        for s in servers(spans):
            by_name.setdefault(s.name, []).append(s)
        ok, failed = sorted(
            by_name["highpeaks_ml.v1.PredictService/Predict"], key=lambda s: s.status_code
        )
        # The caller's traceparent is continued: same trace, its span as parent.
        for span in (ok, failed):
            assert (span.trace_id, span.parent_span_id) == (trace_id, parent_id)
            assert span.service == "hp-under-test"
            assert span.attributes["rpc.system"] == "grpc"
            assert span.attributes["rpc.service"] == "highpeaks_ml.v1.PredictService"
            assert span.attributes["rpc.method"] == "Predict"
        assert ok.attributes["rpc.grpc.status_code"] == 0 and ok.status_code != STATUS_ERROR
        assert ok.attributes["highpeaks_ml.model"] == "iris"
        assert ok.attributes["highpeaks_ml.version"] == 1
        assert ok.attributes["highpeaks_ml.rows"] == 3
        assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
        assert failed.status_code == STATUS_ERROR
        assert _children(spans, failed) == {}  # it never ran
        kids = _children(spans, ok)
        assert set(kids) == {"queue wait", "inference", "response"}
        for kid in kids.values():
            assert kid.trace_id == trace_id
            assert ok.start_ns <= kid.start_ns <= kid.end_ns <= ok.end_ns
        assert kids["queue wait"].end_ns <= kids["inference"].start_ns
        assert kids["inference"].end_ns <= kids["response"].start_ns
        assert kids["inference"].attributes["highpeaks_ml.rows"] == 3
        # ModelInfer: its own root trace, the same attributes and children.
        (v2,) = by_name["inference.GRPCInferenceService/ModelInfer"]
        assert v2.trace_id != trace_id and v2.parent_span_id == ""
        assert (v2.attributes["highpeaks_ml.model"], v2.attributes["highpeaks_ml.rows"]) == (
            "iris",
            2,
        )
        assert set(_children(spans, v2)) == {"queue wait", "inference", "response"}


JOB_STAGES = ["loading data", "fitting", "evaluating", "exporting", "verifying", "registering"]


def test_training_jobs_are_traced_by_stage_in_the_start_training_trace(
    home: Path, server_process: Callable[..., ServerProcess]
) -> None:
    with OtlpReceiver() as receiver:
        server = server_process(
            "--training-workers",
            "2",
            env={
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_BSP_SCHEDULE_DELAY": "50",
            },
        )
        trace_id, caller_id = secrets.token_hex(16), secrets.token_hex(8)
        traceparent = ("traceparent", f"00-{trace_id}-{caller_id}-01")
        with Client(server.target, metadata=(traceparent,), timeout=60) as c:
            ok = c.start_training("traced", "logistic_regression", "builtin:iris")
            # Over its time limit while fitting: a failed job.
            slow = c.start_training(
                "traced-slow",
                "random_forest",
                "builtin:digits",
                {"n_estimators": 1000},
                time_limit_s=1.0,
            )
            assert c.wait_job(ok.id, timeout=120).model_version == 1
            failed = c.wait_job(slow.id, timeout=120)
            assert failed.state == FAILED

        def jobs(spans: list[Span]) -> dict[str, Span]:
            return {
                s.attributes["highpeaks_ml.job.id"]: s for s in spans if s.name == "training job"
            }

        spans = receiver.wait(lambda got: len(jobs(got)) == 2)
        (start_ok, start_slow) = sorted(
            (s for s in spans if s.name == "highpeaks_ml.v1.TrainService/StartTraining"),
            key=lambda s: s.start_ns,
        )
        assert start_ok.parent_span_id == caller_id and start_ok.trace_id == trace_id
        job_ok, job_slow = jobs(spans)[ok.id], jobs(spans)[slow.id]
        # Each job span is a child of its StartTraining span, in the caller's trace,
        # and starts after that call did; its stages are its children, in order.
        for job, start in ((job_ok, start_ok), (job_slow, start_slow)):
            assert (job.trace_id, job.parent_span_id) == (trace_id, start.span_id)
            assert start.start_ns <= job.start_ns <= job.end_ns
            assert job.attributes["highpeaks_ml.job.backend"] == "local"
            assert job.attributes["highpeaks_ml.job.algorithm"] in (
                "logistic_regression",
                "random_forest",
            )
        assert job_ok.attributes["highpeaks_ml.model"] == "traced"
        assert job_ok.attributes["highpeaks_ml.job.state"] == "SUCCEEDED"
        assert job_ok.attributes["highpeaks_ml.version"] == 1
        assert job_ok.status_code != STATUS_ERROR
        stages = sorted(_children(spans, job_ok).values(), key=lambda s: s.start_ns)
        assert [s.name for s in stages] == JOB_STAGES
        assert stages[0].attributes["highpeaks_ml.job.stage"] == "LOADING_DATA"
        previous_end = job_ok.start_ns
        for stage in stages:
            assert stage.trace_id == trace_id and stage.status_code != STATUS_ERROR
            assert previous_end <= stage.start_ns <= stage.end_ns <= job_ok.end_ns
            previous_end = stage.end_ns
        # The failed job: error status on it and on the stage it failed in.
        assert job_slow.attributes["highpeaks_ml.job.state"] == "FAILED"
        assert job_slow.status_code == STATUS_ERROR
        slow_stages = sorted(_children(spans, job_slow).values(), key=lambda s: s.start_ns)
        assert [s.name for s in slow_stages] == JOB_STAGES[: len(slow_stages)]
        assert slow_stages[-1].name == "fitting" and slow_stages[-1].status_code == STATUS_ERROR
        assert all(s.status_code != STATUS_ERROR for s in slow_stages[:-1])
    # The link is in the job's record, so a job that waits through a restart keeps it.
    record = json.loads((home / "jobs" / f"{ok.id}.json").read_text())
    assert record["trace_parent"] == f"00-{trace_id}-{start_ok.span_id}-01"


def test_setup_is_off_unless_an_exporter_is_named() -> None:
    assert tracing.setup({}) is None
    assert tracing.setup({"OTEL_TRACES_EXPORTER": "none"}) is None
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}
    assert tracing.setup(env) is None
    with pytest.raises(ConfigError, match="zipkin"):
        tracing.setup({"OTEL_TRACES_EXPORTER": "zipkin"})
    on = tracing.setup({"OTEL_TRACES_EXPORTER": "console"})
    assert on is not None
    on.close()
