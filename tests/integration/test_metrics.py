"""Prometheus metrics over HTTP, scraped from the real server after real RPCs."""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from highpeaks_ml.client import Client
from highpeaks_ml.v1 import train_pb2
from tests.conftest import ServerProcess
from tests.support import security as sec

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
LIST_MODELS = "/highpeaks_ml.v1.ModelRegistryService/ListModels"
SECRET = b"m" * 48

DOMAIN_METRICS = {
    "highpeaks_ml_predicted_rows",
    "highpeaks_ml_predict_batch_rows",
    "highpeaks_ml_predict_queue_seconds",
    "highpeaks_ml_predict_compute_seconds",
    "highpeaks_ml_model_load_seconds",
    "highpeaks_ml_model_load_failures",
    "highpeaks_ml_loaded_sessions",
    "highpeaks_ml_training_jobs",
    "highpeaks_ml_training_job_duration_seconds",
}


@pytest.fixture(scope="module")
def metered(tmp_path_factory) -> Iterator[tuple[ServerProcess, int]]:
    tmp = tmp_path_factory.mktemp("metrics")
    home = tmp / "home"
    home.mkdir()
    port = sec.free_port()
    proc = ServerProcess(
        home,
        "--metrics-port",
        str(port),
        env=sec.hs256_env(tmp, SECRET),
    )
    yield proc, port
    proc.stop()


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted labels: value} for every sample of every family."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def test_rpc_metrics_by_method_and_code(metered):
    proc, port = metered
    before = scrape(port)
    with grpc.insecure_channel(proc.target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for _ in range(3):
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        with pytest.raises(grpc.RpcError):
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        for method in (LIST_MODELS, "/made.up.Service/AnyName", "/other/path"):
            with pytest.raises(grpc.RpcError) as err:
                ch.unary_unary(method)(b"", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = sec.token(SECRET, sec.claims("ml:train"), "HS256")
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(LIST_MODELS)(b"", metadata=sec.bearer(good), timeout=5)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        next(watch)
        during = scrape(port)
        watch.cancel()
    after = scrape(port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("highpeaks_ml_rpcs_total", method=CHECK, code="OK") == 3
    assert delta("highpeaks_ml_rpcs_total", method=CHECK, code="NOT_FOUND") == 1
    assert delta("highpeaks_ml_rpcs_total", method=LIST_MODELS, code="UNAUTHENTICATED") == 1
    assert delta("highpeaks_ml_rpcs_total", method=LIST_MODELS, code="PERMISSION_DENIED") == 1
    # Made-up paths share one label, so callers cannot grow the label set.
    assert delta("highpeaks_ml_rpcs_total", method="other", code="UNAUTHENTICATED") == 2
    assert not any("made.up" in str(k) for k in after["highpeaks_ml_rpcs_total"])
    assert delta("highpeaks_ml_rpc_duration_seconds_count", method=CHECK) == 4
    assert value(during, "highpeaks_ml_rpcs_in_flight", method=WATCH) == 1
    assert value(during, "highpeaks_ml_rpcs_in_flight", method=CHECK) == 0


def test_domain_and_process_metrics_are_exposed(metered):
    _, port = metered
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        families = {f.name for f in text_string_to_metric_families(resp.read().decode())}
    assert families >= DOMAIN_METRICS, DOMAIN_METRICS - families
    assert "process_resident_memory_bytes" in families
    assert "process_open_fds" in families
    assert all(n.startswith(("highpeaks_ml_", "process_", "python_")) for n in families), families


def test_metrics_stop_with_the_server(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    port = sec.free_port()
    proc = ServerProcess(home, "--metrics-port", str(port))
    try:
        assert "highpeaks_ml_loaded_sessions" in scrape(port)
        assert proc.terminate(signal.SIGTERM) == 0
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        proc.stop()


def test_metrics_off_by_default(server):
    assert "metrics endpoint" not in server.output()


def test_training_and_serving_metrics_end_to_end(metered):
    """Train and predict through the real server (with a token); the domain
    metrics and the caller's subject come out where they should."""
    proc, port = metered
    token = sec.token(SECRET, sec.claims("ml:train ml:predict", sub="svc-e2e"), "HS256")
    with Client(proc.target, token=token, timeout=120) as client:
        job = client.start_training("metered", "logistic_regression", "builtin:iris")
        done = client.wait_job(job.id, timeout=240)
        assert train_pb2.JobState.Name(done.state) == "JOB_STATE_SUCCEEDED", done.error
        assert done.created_by == "svc-e2e"
        X = np.array([[5.1, 3.5, 1.4, 0.2]] * 7, dtype=np.float32)
        result = client.predict("metered", X)
        assert len(result.labels) == 7
        assert client.get_version("metered", done.model_version).created_by == "svc-e2e"
    s = scrape(port)
    v = {"model": "metered", "version": str(done.model_version)}
    assert value(s, "highpeaks_ml_training_jobs", state="SUCCEEDED") >= 1
    assert value(s, "highpeaks_ml_training_jobs", state="RUNNING") == 0
    assert (
        value(
            s,
            "highpeaks_ml_training_job_duration_seconds_count",
            algorithm="logistic_regression",
            state="SUCCEEDED",
        )
        >= 1
    )
    assert value(s, "highpeaks_ml_predicted_rows_total", **v) == 7
    assert value(s, "highpeaks_ml_predict_batch_rows_sum", **v) == 7
    assert value(s, "highpeaks_ml_predict_compute_seconds_count", **v) == 1
    assert value(s, "highpeaks_ml_model_load_seconds_count", model="metered") >= 1
    assert value(s, "highpeaks_ml_loaded_sessions") >= 1
    assert "subject=svc-e2e" in proc.output()
