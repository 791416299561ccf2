"""Prometheus metrics: one registry per server, recorded from any layer without grpc.

The API layer records the RPC metrics in its interceptor; domain code
(serving, training) records its own through the functions below, which write
to the metrics of the running server (``install``) or, before a server
exists, to a private default that nobody scrapes. Each ``Metrics`` has its
own ``CollectorRegistry`` (never prometheus_client's global one), so several
servers in one process do not collide.

Metric names (all prefixed ``highpeaks_ml_``; labels in brackets):

RPCs
  ``rpcs_total`` [method, code]                  finished RPCs by status code
  ``rpc_duration_seconds`` [method]              handler latency histogram
  ``rpcs_in_flight`` [method]                    RPCs being handled now
Serving
  ``predicted_rows_total`` [model, version]      rows answered by predictions
  ``predict_batch_rows`` [model, version]        rows per onnxruntime call (batch size)
  ``predict_queue_seconds`` [model]              wait before the onnxruntime call
  ``predict_compute_seconds`` [model, version]   duration of one onnxruntime call
  ``inline_inference_runs_total`` [model, version]  of those, calls run on the event loop
  ``model_load_seconds`` [model]                 session creation (+ warm-up) time
  ``model_load_failures_total`` [model]          versions that failed to load
  ``model_targets_held`` [model]                 aliases ("latest" too) still served from their
                                                 previous version: the new one failed to load
  ``load_check_seconds``                         proving a new version loads, before a publish
  ``load_check_refusals_total`` [stage]          versions refused by that proof (load, inputs,
                                                 run, timeout, memory, crash)
  ``loaded_sessions``                            model versions loaded now
  ``loaded_model_bytes``                         their ONNX files' total size
  ``feature_drift`` [model, version, feature]    PSI of served inputs against the training
                                                 profile over the drift window (docs/insight.md)
Training
  ``training_jobs`` [state]                      jobs per state now
  ``training_job_duration_seconds`` [algorithm, state]  wall time of finished jobs
  ``training_job_records_pruned_total`` [reason] ended job records removed (age, count)
  ``training_job_record_write_failures_total``   job record writes the store refused (retried)
  ``training_job_records_unsaved``               jobs whose newest state is not yet stored
Authentication keys (source: public_key_file, jwks_file, secret_file, jwks_url)
  ``auth_key_reloads_total`` [source]            loads that changed the keys in use
  ``auth_key_reload_failures_total`` [source]    reads/fetches that failed (old keys kept)
  ``auth_key_last_success_timestamp_seconds`` [source]  last good read or fetch (Unix time)
Process (prometheus_client's collectors)
  ``process_*`` (RSS, CPU, open fds), ``python_gc_*``, ``python_info``
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    platform_collector,
    process_collector,
    start_http_server,
)

from highpeaks_ml.hotmetrics import HotCounter, HotGauge, HotHistogram

log = logging.getLogger("highpeaks_ml.metrics")

PREFIX = "highpeaks_ml_"

# Latency buckets from 0.5 ms (a small prediction on loopback) to 60 s
# (a large download or import).
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
_LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)


class Metrics:
    """Every metric of one server, in its own registry."""

    def __init__(self, *, process: bool = True) -> None:
        r = self.registry = CollectorRegistry()
        if process:
            process_collector.ProcessCollector(registry=r)
            platform_collector.PlatformCollector(registry=r)
            gc_collector.GCCollector(registry=r)
        p = PREFIX
        # --- RPCs (recorded by api/interceptors.py). Every call records these and
        # the serving series below: lock-free cells (hotmetrics.py), same exposition.
        self.rpcs = HotCounter(
            p + "rpcs", "Finished RPCs by method and status code.", ["method", "code"], registry=r
        )
        self.rpc_duration = HotHistogram(
            p + "rpc_duration_seconds",
            "RPC handling time by method (seconds).",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rpcs_in_flight = HotGauge(
            p + "rpcs_in_flight", "RPCs being handled now, by method.", ["method"], registry=r
        )
        # --- serving
        self.predicted_rows = HotCounter(
            p + "predicted_rows",
            "Rows answered by predictions, by model and version.",
            ["model", "version"],
            registry=r,
        )
        self.predict_batch_rows = HotHistogram(
            p + "predict_batch_rows",
            "Rows per onnxruntime call (the batch size), by model and version.",
            ["model", "version"],
            buckets=_ROW_BUCKETS,
            registry=r,
        )
        self.predict_queue_seconds = HotHistogram(
            p + "predict_queue_seconds",
            "Time a prediction waited before its onnxruntime call (batching, executor).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.predict_compute_seconds = HotHistogram(
            p + "predict_compute_seconds",
            "Duration of one onnxruntime call, by model and version.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inline_inference_runs = HotCounter(
            p + "inline_inference_runs",
            "onnxruntime calls run on the event loop (small, measured-cheap requests; "
            "a subset of predict_compute_seconds' count), by model and version.",
            ["model", "version"],
            registry=r,
        )
        self.model_load_seconds = Histogram(
            p + "model_load_seconds",
            "Time to load (and warm up) one model version.",
            ["model"],
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.model_load_failures = Counter(
            p + "model_load_failures", "Model versions that failed to load.", ["model"], registry=r
        )
        self.model_targets_held = Gauge(
            p + "model_targets_held",
            "Aliases (and latest) whose callers are still served their previous version "
            "because the version they now point at failed to load.",
            ["model"],
            registry=r,
        )
        self.load_check_seconds = Histogram(
            p + "load_check_seconds",
            "Time to prove, before a publish, that onnxruntime loads and runs a new version.",
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.load_check_refusals = Counter(
            p + "load_check_refusals",
            "New versions refused before publishing because the serving runtime could not "
            "load or run them, by stage (load, inputs, run, timeout, memory, crash).",
            ["stage"],
            registry=r,
        )
        self.loaded_sessions = Gauge(
            p + "loaded_sessions", "Model versions loaded in onnxruntime now.", registry=r
        )
        self.loaded_model_bytes = Gauge(
            p + "loaded_model_bytes",
            "Total size of the ONNX files of the model versions loaded now.",
            registry=r,
        )
        self.feature_drift = Gauge(
            p + "feature_drift",
            "Population stability index of a feature's served inputs against the version's "
            "training profile, over the drift window (< 0.1 none, > 0.25 significant).",
            ["model", "version", "feature"],
            registry=r,
        )
        # --- training
        self.training_jobs = Gauge(
            p + "training_jobs", "Training jobs in each state now.", ["state"], registry=r
        )
        self.training_job_duration = Histogram(
            p + "training_job_duration_seconds",
            "Wall time of finished training jobs, by algorithm and final state.",
            ["algorithm", "state"],
            buckets=_JOB_BUCKETS,
            registry=r,
        )
        self.training_job_records_pruned = Counter(
            p + "training_job_records_pruned",
            "Records of ended training jobs removed by retention, by reason (age or count).",
            ["reason"],
            registry=r,
        )
        self.training_job_record_write_failures = Counter(
            p + "training_job_record_write_failures",
            "Job record writes that failed (the state is kept in memory and the write retried).",
            registry=r,
        )
        self.training_job_records_unsaved = Gauge(
            p + "training_job_records_unsaved",
            "Jobs whose newest state is not yet in the job record store (writes being retried).",
            registry=r,
        )
        # --- authentication keys (recorded by api/auth.py)
        self.auth_key_reloads = Counter(
            p + "auth_key_reloads",
            "JWT verification key sets loaded that changed the keys in use (start-up "
            "included), by source.",
            ["source"],
            registry=r,
        )
        self.auth_key_reload_failures = Counter(
            p + "auth_key_reload_failures",
            "JWT key files or JWKS fetches that failed (unreadable, malformed, unreachable); "
            "the previous keys stay in use.",
            ["source"],
            registry=r,
        )
        self.auth_key_last_success = Gauge(
            p + "auth_key_last_success_timestamp_seconds",
            "Unix time of the last successful read (key file) or fetch (JWKS URL), by source.",
            ["source"],
            registry=r,
        )
        self._http: Any = None
        self._thread: threading.Thread | None = None

    # --- HTTP exposition ---------------------------------------------------------

    def serve_http(self, host: str, port: int) -> None:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread."""
        self._http, self._thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics endpoint", extra={"metrics_port": port})

    def stop_http(self) -> None:
        """Stop the HTTP endpoint (idempotent)."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


_current = Metrics(process=False)


def install(metrics: Metrics) -> None:
    """Make ``metrics`` the one that domain code records to (the server does this)."""
    global _current
    _current = metrics


def current() -> Metrics:
    """The metrics domain code records to."""
    return _current


# --- recording helpers for domain code (no grpc, no label juggling) -------------------


def record_prediction(model: str, version: int | str, rows: int) -> None:
    """A prediction request of ``rows`` rows was answered by ``model`` v``version``."""
    _current.predicted_rows.labels(model, str(version)).inc(rows)


class VersionSeries:
    """The serving metric series of one model version, looked up once.

    ``labels(...)`` costs a lock and a dict lookup per call; the hot path of a
    prediction records five series, so a loaded version keeps its children here
    (in the metrics installed when it loaded). Same metrics as the functions below.
    """

    __slots__ = ("batch_rows", "compute", "inline_runs", "queue", "rows")

    def __init__(self, model: str, version: int | str) -> None:
        m, v = _current, str(version)
        self.rows = m.predicted_rows.labels(model, v)
        self.batch_rows = m.predict_batch_rows.labels(model, v)
        self.compute = m.predict_compute_seconds.labels(model, v)
        self.inline_runs = m.inline_inference_runs.labels(model, v)
        self.queue = m.predict_queue_seconds.labels(model)


def record_inference(model: str, version: int | str, rows: int, compute_s: float) -> None:
    """One onnxruntime call over ``rows`` rows (one batch) took ``compute_s`` seconds."""
    m = _current
    v = str(version)
    m.predict_batch_rows.labels(model, v).observe(rows)
    m.predict_compute_seconds.labels(model, v).observe(compute_s)


def record_inline_run(model: str, version: int | str) -> None:
    """One onnxruntime call of ``model`` v``version`` ran on the event loop."""
    _current.inline_inference_runs.labels(model, str(version)).inc()


def record_queue_wait(model: str, seconds: float) -> None:
    """A request waited ``seconds`` before its onnxruntime call (recorded per request)."""
    _current.predict_queue_seconds.labels(model).observe(seconds)


def record_model_load(model: str, seconds: float, ok: bool) -> None:
    """Loading a version of ``model`` took ``seconds``; ``ok`` False counts a failure."""
    m = _current
    if ok:
        m.model_load_seconds.labels(model).observe(seconds)
    else:
        m.model_load_failures.labels(model).inc()


def set_targets_held(model: str, count: int) -> None:
    """How many of ``model``'s aliases (and latest) are held on their previous version."""
    _current.model_targets_held.labels(model).set(count)


def record_load_check(ok: bool, stage: str, seconds: float) -> None:
    """A pre-publish load check took ``seconds``; ``ok`` False counts a refusal at ``stage``."""
    m = _current
    m.load_check_seconds.observe(seconds)
    if not ok:
        m.load_check_refusals.labels(stage).inc()


def set_feature_drift(model: str, version: int | str, feature: str, psi: float) -> None:
    """A feature's PSI over the drift window (serving/drift.py)."""
    _current.feature_drift.labels(model, str(version), feature).set(psi)


def set_loaded_sessions(count: int, model_bytes: int = 0) -> None:
    """The number of model versions loaded now, and their ONNX files' total size."""
    _current.loaded_sessions.set(count)
    _current.loaded_model_bytes.set(model_bytes)


def set_training_jobs(counts: Mapping[str, int]) -> None:
    """The number of jobs in each state now (states absent from ``counts`` keep theirs)."""
    gauge = _current.training_jobs
    for state, n in counts.items():
        gauge.labels(state).set(n)


def record_training_job(algorithm: str, state: str, seconds: float) -> None:
    """A job of ``algorithm`` ended in ``state`` after ``seconds`` of wall time."""
    _current.training_job_duration.labels(algorithm, state).observe(seconds)


def record_training_jobs_pruned(reason: str, count: int) -> None:
    """Retention removed ``count`` ended job records, for ``reason`` (``age`` or ``count``)."""
    _current.training_job_records_pruned.labels(reason).inc(count)


def record_job_record_write_failure(unsaved: int) -> None:
    """A job record write failed; ``unsaved`` jobs now wait for their record to be stored."""
    _current.training_job_record_write_failures.inc()
    _current.training_job_records_unsaved.set(unsaved)


def set_job_records_unsaved(unsaved: int) -> None:
    """How many jobs' newest state waits to be stored (0 once every retry landed)."""
    _current.training_job_records_unsaved.set(unsaved)


def record_auth_key_load(source: str, ok: bool, changed: bool = False) -> None:
    """A JWT key source was read or fetched: ``ok`` False counts a failure;
    ``changed`` counts a load that replaced the keys in use."""
    m = _current
    if not ok:
        m.auth_key_reload_failures.labels(source).inc()
        return
    m.auth_key_last_success.labels(source).set_to_current_time()
    if changed:
        m.auth_key_reloads.labels(source).inc()


__all__ = [
    "PREFIX",
    "Metrics",
    "current",
    "install",
    "record_auth_key_load",
    "record_inference",
    "record_job_record_write_failure",
    "record_load_check",
    "record_model_load",
    "record_prediction",
    "record_queue_wait",
    "record_training_job",
    "record_training_jobs_pruned",
    "set_job_records_unsaved",
    "set_loaded_sessions",
    "set_targets_held",
    "set_training_jobs",
]
