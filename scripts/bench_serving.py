#!/usr/bin/env python
"""Serving benchmark on loopback: every number next to a baseline measured in the same run.

    python scripts/bench_serving.py                # about 3 minutes on 2 cores
    python scripts/bench_serving.py --quick        # about 1 minute
    python scripts/bench_serving.py --ratios-only  # only the table against the minimal server
    python scripts/bench_serving.py --drift-only   # only drift profiling on against off

What it does:

1. Trains a LogisticRegression and a RandomForestClassifier (50 trees, depth
   8) on 20 synthetic features, exports both with skl2onnx and imports them
   through the registry API (ImportModel) of a server started as a
   subprocess (``highpeaks-ml serve``, CPU provider, ``--rpc-log off`` so
   the per-RPC log line does not count).
2. Prints the targets' table first: the server against the minimal server
   (``scripts/minimal_server.py``: grpc.aio, parse, onnxruntime inline,
   answer; nothing else), both front doors (native Predict and the Open
   Inference Protocol's ModelInfer), same run, calls interleaved:
   batch-1 p50, requests/s with 8 concurrent batch-1 callers, server CPU per
   call under those callers (utime+stime from /proc/<pid>/stat over the
   window, divided by the calls answered; ten one-second windows per server,
   each of ours right before one of the minimal server's, and the ratio is
   the median of those pairs' ratios, as for rows/s at batch 1,000 per
   round: the shared machine's load swings both by up to 2x between
   windows), rows/s at batch 1,000, and the
   first request after a new version loads against the steady p50 (and
   against a request to a version already serving sent the same way: right
   after a GetModelVersion call, which isolates what the load left undone
   from what any request after a pause pays). The same table ends with two
   defaults against servers without them (8 concurrent batch-1 callers,
   windows alternating): tracing on at 1% sampling against off, and drift
   profiling of served inputs on (the default) against ``--no-drift-enabled``
   on a 20-feature logistic regression that each server trains itself (only
   a trained version has a training profile); goal: drift on within 3%.
3. Then one table (medians of repeated rounds, and ratios):
   - batch-1 unary latency p50/p99 against (a) onnxruntime called in this
     process on the same row and (b) a bare grpc.aio echo server (a
     subprocess, no interceptor, no protobuf) answering a payload of the
     same size as the real response, for a request of the real size;
   - rows/s at batch 10,000 (raw bytes both ways) against in-process
     onnxruntime on the same rows (same session options as the server), and
     the echo server moving the same bytes (the transport's floor);
   - requests/s at batch 1 with 16 concurrent callers, unary and over the
     bidirectional stream (16 streams, one request in flight each), with
     dynamic batching off, on with a 500 µs delay, and on with delay 0
     (opportunistic), each on a fresh server, with the single-caller p50;
   - two defaults against a second server started without them, calls
     interleaved: small runs on the event loop (``--inline-inference-us``,
     batch-1 p50) and keeping freed memory (``--keep-freed-memory-mb``,
     rows/s at batch 10,000).

Clients send pre-serialised request bytes and do not parse the answers
(identity serializers), for the server and the echo alike, so the
comparison measures the server, not the benchmark's own protobuf work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from highpeaks_ml.launcher import ServerProcess  # noqa: E402

PREDICT = "/highpeaks_ml.v1.PredictService/Predict"
STREAM = "/highpeaks_ml.v1.PredictService/PredictStream"
ECHO = "/bench.Echo/Echo"
CONCURRENCY = 16
N_FEATURES = 20


# --- the echo baseline (runs as a subprocess: --echo-server SIZE) -----------


async def _echo_server(size: int) -> None:
    import grpc
    from grpc import aio

    payload = b"x" * size

    async def echo(request: bytes, context: Any) -> bytes:
        return payload

    async def echo_stream(requests: Any, context: Any) -> Any:
        async for _ in requests:
            yield payload

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "EchoStream": grpc.stream_stream_rpc_method_handler(echo_stream),
        },
    )
    server = aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"PORT {port}", flush=True)
    await server.wait_for_termination()


# --- helpers -------------------------------------------------------------------


def _server(home: Path, *extra: str) -> ServerProcess:
    """``highpeaks-ml serve`` on loopback (CPU), without the log line per RPC."""
    return ServerProcess(home, "--rpc-log", "off", *extra, device="cpu")


class Echo:
    """The bare grpc.aio echo server as a subprocess."""

    def __init__(self, size: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--echo-server", str(size)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError("echo server did not start")
        self.target = f"127.0.0.1:{int(line.split()[1])}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def _export(model: Any, n_features: int) -> bytes:
    """A fitted classifier as ONNX bytes: one float32 "input" [-1, n_features], no ZipMap."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    return bytes(onx.SerializeToString())


def _models() -> dict[str, tuple[bytes, np.ndarray, Any]]:
    """name -> (onnx bytes, data, in-process session)."""
    import onnxruntime as ort
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    from highpeaks_ml.config import Settings
    from highpeaks_ml.serving.providers import session_options

    X, y = make_classification(
        n_samples=4000, n_features=N_FEATURES, n_informative=10, n_classes=3, random_state=0
    )
    X = X.astype(np.float32)
    options = session_options(Settings.load({"device": "cpu"}))
    out = {}
    for name, model in (
        ("bench-logreg", LogisticRegression(max_iter=1000)),
        ("bench-forest", RandomForestClassifier(n_estimators=50, max_depth=8, random_state=0)),
    ):
        model.fit(X, y)
        data = _export(model, N_FEATURES)
        # The server's own session options (threads = usable cores, no
        # spinning), so the ratio measures what serving adds, and the
        # baseline's idle threads do not spin on the cores the server needs.
        sess = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        out[name] = (data, X, sess)
    return out


def _import(target: str, models: dict[str, Any]) -> None:
    from highpeaks_ml.client import Client

    with Client(target) as c:
        for name, (data, _, _) in models.items():
            c.import_model(name, data, task="classification", class_labels=["0", "1", "2"])


def _request(name: str, x: np.ndarray) -> bytes:
    from highpeaks_ml.client import build_request

    return bytes(build_request(name, x, raw=True).SerializeToString())


def _latencies(call: Any, payload: bytes, n: int) -> list[float]:
    for _ in range(min(200, n)):  # warm-up
        call(payload)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call(payload)
        out.append(time.perf_counter() - t0)
    return out


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def _unary(target: str, method: str) -> tuple[Any, Any]:
    import grpc

    ch = grpc.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", 256 << 20),
            ("grpc.max_send_message_length", 256 << 20),
        ],
    )
    grpc.channel_ready_future(ch).result(timeout=30)
    call = ch.unary_unary(method)  # identity serializers: bytes in, bytes out
    return ch, call


async def _rate(
    target: str,
    method: str,
    payload: bytes,
    seconds: float,
    stream: bool,
    concurrency: int = CONCURRENCY,
) -> float:
    """Requests/s with ``concurrency`` callers (unary calls, or ping-pong streams)."""
    from grpc import aio

    async with aio.insecure_channel(target) as ch:
        await ch.channel_ready()
        done = 0
        stop = False

        async def unary_worker() -> None:
            nonlocal done
            call = ch.unary_unary(method)
            while not stop:
                await call(payload)
                done += 1

        async def stream_worker() -> None:
            nonlocal done
            call = ch.stream_stream(method)()
            while not stop:
                await call.write(payload)
                await call.read()
                done += 1
            await call.done_writing()

        worker = stream_worker if stream else unary_worker
        # Warm-up, then count.
        stop = False
        tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
        await asyncio.sleep(min(0.5, seconds / 4))
        start_done, t0 = done, time.perf_counter()
        await asyncio.sleep(seconds)
        count, elapsed = done - start_done, time.perf_counter() - t0
        stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
        return count / elapsed


# --- against the minimal server (scripts/minimal_server.py) ---------------------

INFER = "/inference.GRPCInferenceService/ModelInfer"
C8 = 8
GOALS = {"p50": 1.15, "c8": 0.85, "cpu": 1.15, "big": 1.0, "first": 2.0}


class Minimal:
    """scripts/minimal_server.py as a subprocess, serving the given ONNX files."""

    def __init__(self, files: dict[str, Path]) -> None:
        argv = [sys.executable, str(ROOT / "scripts" / "minimal_server.py")]
        for name, path in files.items():
            argv += ["--model", f"{name}={path}"]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError("minimal server did not start")
        self.target = f"127.0.0.1:{int(line.split()[1])}"
        self.pid = self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def _cpu_s(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _infer_request(name: str, x: np.ndarray, version: str = "") -> bytes:
    from highpeaks_ml.api import oip_messages as msgs

    req = msgs.ModelInferRequest(model_name=name, model_version=version)
    req.inputs.add(name="input", datatype="FP32", shape=x.shape)
    req.raw_input_contents.append(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return bytes(req.SerializeToString())


def _native_request(name: str, x: np.ndarray, version: int | None = None) -> bytes:
    from highpeaks_ml.client import build_request

    return bytes(build_request(name, x, version=version, raw=True).SerializeToString())


async def _rate_cpu(
    target: str, method: str, payload: bytes, seconds: float, pid: int
) -> tuple[float, float]:
    """(requests/s, server CPU seconds per request) with C8 concurrent unary callers."""
    from grpc import aio

    async with aio.insecure_channel(target) as ch:
        await ch.channel_ready()
        call = ch.unary_unary(method)
        done = 0
        stop = False

        async def worker() -> None:
            nonlocal done
            while not stop:
                await call(payload)
                done += 1

        tasks = [asyncio.ensure_future(worker()) for _ in range(C8)]
        await asyncio.sleep(min(0.5, seconds / 4))
        n0, c0, t0 = done, _cpu_s(pid), time.perf_counter()
        await asyncio.sleep(seconds)
        n1, c1, t1 = done, _cpu_s(pid), time.perf_counter()
        stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
        return (n1 - n0) / (t1 - t0), (c1 - c0) / max(1, n1 - n0)


def _paired(ours: list[float], theirs: list[float]) -> float:
    """The median of the per-round ratios ``ours[i] / theirs[i]``."""
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


def _ratio(value: float, goal: float, higher_is_better: bool) -> str:
    ok = value >= goal if higher_is_better else value <= goal
    sign = ">=" if higher_is_better else "<="
    return f"{value:.2f}x ({'met' if ok else 'NOT met'}: goal {sign} {goal:.2f}x)"


def _first_call(
    target: str, name: str, data: bytes, x1: np.ndarray, door: str, call: Any
) -> tuple[float, float]:
    """(first request to a new version, a request to a version already serving).

    Imports ``data`` as a new version of ``name`` and waits until this server
    has loaded it (it preloads a new latest) without predicting. Then, each
    right after a GetModelVersion call (so both follow the same non-Predict
    RPC, not a hot loop of Predicts): one request to version 1, which has
    been serving all along (an alias keeps it loaded; a version nothing points
    at is unloaded when the latest moves on), and the first request to the
    new one, over ``call``, an open channel of the same front door.
    """
    from highpeaks_ml.client import Client
    from highpeaks_ml.v1 import registry_pb2

    def request(version: int) -> bytes:
        if door == "v2":
            return _infer_request(name, x1, str(version))
        return _native_request(name, x1, version)

    def timed(req: bytes) -> float:
        t0 = time.perf_counter()
        call(req)
        return time.perf_counter() - t0

    with Client(target) as c:
        number = c.import_model(
            name, data, task="classification", class_labels=["0", "1", "2"]
        ).version
        deadline = time.monotonic() + 60
        while c.get_version(name, number).load_state != registry_pb2.LOAD_STATE_READY:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} version {number} did not load")
            time.sleep(0.02)
        old, new = request(1), request(number)
        c.get_version(name, number)
        warm = timed(old)
        c.get_version(name, number)
        first = timed(new)
    return first, warm


def _minimal_rows(
    models: dict[str, tuple[bytes, np.ndarray, Any]], tmp: Path, quick: bool
) -> list[tuple[str, ...]]:
    """The targets' table: this server / the minimal server, per model and front door."""
    from highpeaks_ml.client import Client

    rounds = 3 if quick else 5
    lat_per = 200 if quick else 500
    # Short paired windows, many of them: other tenants' load on the shared machine
    # swings a server's CPU per call by 2x between windows (measured), so each round
    # measures both servers back to back and the ratio is the median of the rounds'.
    rate_rounds = 4 if quick else 10
    rate_s = 1.0
    big_per = 10 if quick else 30  # a 1,000-row call swings more than a 1-row one
    firsts = 3 if quick else 5
    files = {}
    for name, (data, _, _) in models.items():
        files[name] = tmp / f"{name}.onnx"
        files[name].write_bytes(data)
    home = tmp / "home-ratios"
    home.mkdir()
    server = _server(home)
    minimal = None
    rows: list[tuple[str, ...]] = []
    try:
        minimal = Minimal(files)
        _import(server.target, models)
        servers = [(server.target, server.pid), (minimal.target, minimal.pid)]
        for name, (data, X, _) in models.items():
            x1 = X[:1]
            xb = np.resize(X, (1000, N_FEATURES)).astype(np.float32)
            for door, method, build in (
                ("native", PREDICT, _native_request),
                ("v2", INFER, _infer_request),
            ):
                req1, reqb = build(name, x1), build(name, xb)
                calls = [_unary(t, method) for t, _ in servers]
                lat: list[list[float]] = [[], []]
                big: list[list[float]] = [[], []]
                big_rounds: list[list[float]] = [[], []]
                for _ in range(rounds):  # interleaved: noise on the shared machine hits both
                    for i, (_, call) in enumerate(calls):
                        lat[i] += _latencies(call, req1, lat_per)
                    for i, (_, call) in enumerate(calls):
                        times = _latencies(call, reqb, big_per)
                        big[i] += times
                        big_rounds[i].append(statistics.median(times))
                rate: list[list[float]] = [[], []]
                cpu: list[list[float]] = [[], []]
                for _ in range(rate_rounds):
                    for i, (target, pid) in enumerate(servers):
                        r, c = asyncio.run(_rate_cpu(target, method, req1, rate_s, pid))
                        rate[i].append(r)
                        cpu[i].append(c)
                # The first request after a new version loads (this server only).
                call = calls[0][1]
                with Client(server.target) as c:
                    c.set_alias(name, "bench-warm", 1)  # stays loaded: the baseline
                pairs = [
                    _first_call(server.target, name, data, x1, door, call) for _ in range(firsts)
                ]
                steady = statistics.median(_latencies(call, req1, lat_per))
                for ch, _ in calls:
                    ch.close()
                p50 = [statistics.median(v) for v in lat]
                rps = [statistics.median(v) for v in rate]
                cpus = [statistics.median(v) for v in cpu]
                bigs = [1000 / statistics.median(v) for v in big]
                # Ratios: the median of each round's (the two servers measured back to back).
                rps_x = _paired(rate[0], rate[1])
                cpu_x = _paired(cpu[0], cpu[1])
                big_x = _paired(big_rounds[1], big_rounds[0])  # rows/s: the inverse of time
                f50 = statistics.median(p[0] for p in pairs)
                w50 = statistics.median(p[1] for p in pairs)
                label = f"{name} {door}"
                rows += [
                    (
                        f"{label}: batch-1 p50",
                        _fmt_us(p50[0]),
                        f"minimal {_fmt_us(p50[1])}",
                        _ratio(p50[0] / p50[1], GOALS["p50"], False),
                    ),
                    (
                        f"{label}: req/s, {C8} callers, batch 1",
                        f"{rps[0]:,.0f}",
                        f"minimal {rps[1]:,.0f}",
                        _ratio(rps_x, GOALS["c8"], True),
                    ),
                    (
                        f"{label}: server CPU per batch-1 call ({C8} callers)",
                        _fmt_us(cpus[0]),
                        f"minimal {_fmt_us(cpus[1])}",
                        _ratio(cpu_x, GOALS["cpu"], False),
                    ),
                    (
                        f"{label}: rows/s at batch 1,000",
                        f"{bigs[0]:,.0f}",
                        f"minimal {bigs[1]:,.0f}",
                        _ratio(big_x, GOALS["big"], True),
                    ),
                    (
                        f"{label}: first request after a version loads (median of {firsts})",
                        _fmt_us(f50),
                        f"steady p50 {_fmt_us(steady)}; a serving version, same way {_fmt_us(w50)}",
                        _ratio(f50 / steady, GOALS["first"], False)
                        + f"; {f50 / w50:.2f}x the serving version",
                    ),
                ]
    finally:
        if minimal is not None:
            minimal.stop()
        server.stop(grace_s=20)
    return rows


def _tracing_rows(
    models: dict[str, tuple[bytes, np.ndarray, Any]], tmp: Path, quick: bool
) -> list[tuple[str, ...]]:
    """Tracing on with 1% sampling (spans exported over OTLP/gRPC to a receiver in this
    process) against off (the default), same run, c8 windows alternating."""
    from tests.support.otlp_receiver import OtlpReceiver

    rounds = 3 if quick else 5
    rate_s = 1.0 if quick else 2.0
    rows: list[tuple[str, ...]] = []
    with OtlpReceiver() as receiver:
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.01",
        }
        (tmp / "trace-off").mkdir()
        (tmp / "trace-on").mkdir()
        servers = [_server(tmp / "trace-off")]
        try:
            servers.append(
                ServerProcess(tmp / "trace-on", "--rpc-log", "off", device="cpu", env=env)
            )
            for srv in servers:
                _import(srv.target, models)
            name, (_, X, _) = next(iter(models.items()))
            req = _native_request(name, X[:1])
            rate: list[list[float]] = [[], []]
            cpu: list[list[float]] = [[], []]
            for _ in range(rounds):
                for i, srv in enumerate(servers):
                    r, c = asyncio.run(_rate_cpu(srv.target, PREDICT, req, rate_s, srv.pid))
                    rate[i].append(r)
                    cpu[i].append(c)
        finally:
            for srv in servers:
                srv.stop(grace_s=20)
        exported = len(receiver.spans)
    off, on = (statistics.median(v) for v in rate)
    c_off, c_on = (statistics.median(v) for v in cpu)
    rows.append(
        (
            f"{name} native: req/s, {C8} callers, tracing on (1% sampled, OTLP)",
            f"{on:,.0f}",
            f"tracing off {off:,.0f}",
            f"{on / off:.2f}x; CPU/call {_fmt_us(c_on)} vs {_fmt_us(c_off)};"
            f" {exported} spans exported",
        )
    )
    return rows


def _drift_cpu_per_request(X: np.ndarray, requests: int = 2000, rounds: int = 5) -> float:
    """Drift's own CPU per batch-1 request, in this process (no network, no neighbours'
    noise): the hot path's ``observe`` plus the background drain, PSI and gauges, run
    as the server runs them (serving/drift.py) over a profile of ``X``."""
    from highpeaks_ml import metrics
    from highpeaks_ml.serving.drift import DriftMonitor, build_profile

    profile = build_profile([(f"f{i}", "numeric", X[:, i]) for i in range(X.shape[1])])
    monitor = DriftMonitor(on_psi=metrics.set_feature_drift)
    vd = monitor.track("bench", 1, profile, tuple(("input", i) for i in range(X.shape[1])))
    assert vd is not None
    feeds = [{"input": X[i : i + 1].astype(np.float32)} for i in range(requests)]
    best = float("inf")
    for _ in range(rounds):
        t0 = time.thread_time()
        for feed in feeds:
            vd.observe(feed)
        monitor.drain_all()
        best = min(best, time.thread_time() - t0)
    return best / requests


def _drift_rows(tmp: Path, quick: bool) -> list[tuple[str, ...]]:
    """Drift profiling on (the default) against off (``--no-drift-enabled``), same run:
    a logistic regression on 20 features trained by each server (so the version has a
    training profile, which imported models lack), c8 batch-1 windows in A/B/B/A order."""
    from sklearn.datasets import make_classification

    from highpeaks_ml.client import Client

    rounds = 6 if quick else 16
    rate_s = 1.0
    X, y = make_classification(
        n_samples=2000, n_features=N_FEATURES, n_informative=10, n_classes=3, random_state=1
    )
    csv = tmp / "drift-train.csv"
    header = ",".join([*(f"f{i}" for i in range(N_FEATURES)), "y"])
    np.savetxt(csv, np.column_stack([X, y]), delimiter=",", header=header, comments="", fmt="%.6g")
    name = "bench-drift"
    (tmp / "drift-on").mkdir()
    (tmp / "drift-off").mkdir()
    servers = [_server(tmp / "drift-on")]
    rate: list[list[float]] = [[], []]
    cpu: list[list[float]] = [[], []]
    try:
        servers.append(_server(tmp / "drift-off", "--no-drift-enabled"))
        for srv in servers:
            with Client(srv.target, timeout=300) as c:
                dataset = c.upload_dataset(csv, target="y")
                job = c.start_training(name, "logistic_regression", dataset.id, target="y")
                final = c.wait_job(job.id, timeout=600)
                if not final.model_version:
                    raise RuntimeError(f"training the drift model failed: {final.error}")
        req = _native_request(name, X[:1].astype(np.float32))
        for r in range(rounds):
            # A/B then B/A: a trend in the machine's load hits both alike.
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for i in order:
                srv = servers[i]
                got, c_s = asyncio.run(_rate_cpu(srv.target, PREDICT, req, rate_s, srv.pid))
                rate[i].append(got)
                cpu[i].append(c_s)
        with Client(servers[0].target) as c:
            seen = c.get_drift(name).rows
    finally:
        for srv in servers:
            srv.stop(grace_s=20)
    on, off = (statistics.median(v) for v in rate)
    c_on, c_off = (statistics.median(v) for v in cpu)
    # Each round's two windows are neighbours in time: their ratio cancels most of
    # the machine's drift; the median of those ratios is the figure.
    paired = sorted(a / b for a, b in zip(rate[0], rate[1], strict=True))
    ratio = statistics.median(paired)
    quartiles = statistics.quantiles(paired, n=4)
    own = _drift_cpu_per_request(X)
    return [
        (
            f"{name} (trained, 20 features) native: req/s, {C8} callers, drift on (default)",
            f"{on:,.0f}",
            f"--no-drift-enabled {off:,.0f}",
            f"{ratio:.3f}x ({'met' if ratio >= 0.97 else 'NOT met'}: goal >= 0.97x; median of"
            f" {rounds} paired windows, quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f});"
            f" CPU/call {_fmt_us(c_on)} vs {_fmt_us(c_off)}; {seen:,} rows profiled",
        ),
        (
            f"{name}: drift's own CPU per batch-1 request (append + drain + PSI, in-process)",
            f"{own * 1e6:.2f} µs",
            f"server CPU/call, drift off {_fmt_us(c_off)}",
            f"{own / c_off:.2%} of a call",
        ),
    ]


def _fmt_us(s: float) -> str:
    return f"{s * 1e6:,.0f} µs"


def _table(rows: list[tuple[str, ...]], head: tuple[str, ...]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    return "\n".join(out)


def _batch1(target: str, req: bytes, n: int) -> list[float]:
    ch, call = _unary(target, PREDICT)
    try:
        return _latencies(call, req, n)
    finally:
        ch.close()


def _ab_rows(
    home: Path,
    models: dict[str, tuple[bytes, np.ndarray, Any]],
    requests1: dict[str, bytes],
    lat_n: int,
    big_rounds: int,
) -> list[tuple[str, ...]]:
    """Two defaults measured against a server started without them, calls interleaved:
    small runs on the event loop (batch-1 p50) and keeping freed memory (batch 10,000)."""
    rows: list[tuple[str, ...]] = []
    pairs = {
        "inline": ((), ("--inline-inference-us", "0")),
        "memory": ((), ("--keep-freed-memory-mb", "0")),
    }
    for kind, (with_it, without_it) in pairs.items():
        servers = [_server(home / f"ab-{kind}-on", *with_it)]
        try:
            servers.append(_server(home / f"ab-{kind}-off", *without_it))
            for srv in servers:
                _import(srv.target, models)
            for name, (_, X, _) in models.items():
                calls = [_unary(srv.target, PREDICT) for srv in servers]
                if kind == "inline":
                    req, n, per = requests1[name], lat_n // 3, 100
                else:
                    xb = np.resize(X, (10_000, N_FEATURES)).astype(np.float32)
                    # Short alternating rounds: a 17 ms forest call is noisy on shared cores.
                    req, n, per = _request(name, xb), big_rounds * 3, 3
                times: list[list[float]] = [[], []]
                for _ in range(max(1, n // per)):  # interleaved: noise hits both alike
                    for i, (_, call) in enumerate(calls):
                        times[i] += _latencies(call, req, per)
                for ch, _ in calls:
                    ch.close()
                on, off = (statistics.median(t) for t in times)
                if kind == "inline":
                    rows.append(
                        (
                            f"{name}: batch-1 unary p50, small runs on the event loop (default)",
                            _fmt_us(on),
                            f"--inline-inference-us 0 {_fmt_us(off)}",
                            f"{off / on:.2f}x faster",
                        )
                    )
                else:
                    rows.append(
                        (
                            f"{name}: rows/s at batch 10,000, freed memory kept (default)",
                            f"{10_000 / on:,.0f}",
                            f"--keep-freed-memory-mb 0 {10_000 / off:,.0f}",
                            f"{off / on:.2f}x",
                        )
                    )
        finally:
            for srv in servers:
                srv.stop(grace_s=20)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter rounds (~1 minute)")
    parser.add_argument(
        "--ratios-only", action="store_true", help="only the table against the minimal server"
    )
    parser.add_argument(
        "--drift-only", action="store_true", help="only drift profiling on against off"
    )
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server is not None:
        asyncio.run(_echo_server(args.echo_server))
        return 0

    lat_n = 1500 if args.quick else 4000
    big_rounds = 5 if args.quick else 15
    rate_s = 1.5 if args.quick else 4.0
    rounds = 1 if args.quick else 3
    rows: list[tuple[str, str, str, str]] = []

    tmp = Path(tempfile.mkdtemp(prefix="hp-bench-"))
    if args.drift_only:
        print(_table(_drift_rows(tmp, args.quick), ("measurement", "served", "baseline", "ratio")))
        return 0
    print("training and exporting the models ...", file=sys.stderr)
    models = _models()
    home = tmp / "home"
    home.mkdir()
    requests1 = {name: _request(name, X[:1]) for name, (_, X, _) in models.items()}

    ratio_rows = (
        _minimal_rows(models, tmp, args.quick)
        + _tracing_rows(models, tmp, args.quick)
        + _drift_rows(tmp, args.quick)
    )
    print(_table(ratio_rows, ("measurement", "served", "minimal server (same run)", "ratio")))
    print(flush=True)
    if args.ratios_only:
        return 0

    server = _server(home)
    try:
        _import(server.target, models)
        # --- batch-1 latency --------------------------------------------------
        for name, (_, X, _) in models.items():
            req = requests1[name]
            ch, call = _unary(server.target, PREDICT)
            resp_size = len(call(req))
            ch_echo = None
            echo = Echo(resp_size)
            try:
                ch_echo, echo_call = _unary(echo.target, ECHO)
                server_lat: list[float] = []
                echo_lat: list[float] = []
                # Interleave rounds so drift on the shared machine hits both.
                for _ in range(rounds):
                    server_lat += _latencies(call, req, lat_n // rounds)
                    echo_lat += _latencies(echo_call, req, lat_n // rounds)
            finally:
                if ch_echo is not None:
                    ch_echo.close()
                echo.stop()
            ch.close()
            sess = models[name][2]
            x1 = X[:1]
            inproc = _latencies(lambda _p, s=sess, x=x1: s.run(None, {"input": x}), b"", lat_n)
            p50, p99 = _pct(server_lat, 50), _pct(server_lat, 99)
            e50, e99 = _pct(echo_lat, 50), _pct(echo_lat, 99)
            i50 = _pct(inproc, 50)
            rows.append(
                (
                    f"{name}: batch-1 unary p50 (request {len(req)} B, response {resp_size} B)",
                    _fmt_us(p50),
                    f"echo {_fmt_us(e50)}; in-process ORT {_fmt_us(i50)}",
                    f"{p50 / e50:.2f}x echo (target <= 1.30x); {p50 / i50:.0f}x ORT",
                )
            )
            rows.append(
                (
                    f"{name}: batch-1 unary p99",
                    _fmt_us(p99),
                    f"echo {_fmt_us(e99)}",
                    f"{p99 / e99:.2f}x echo",
                )
            )
        # --- batch 10,000 throughput -------------------------------------------
        for name, (_, X, sess) in models.items():
            xb = np.resize(X, (10_000, N_FEATURES)).astype(np.float32)
            req = _request(name, xb)
            ch, call = _unary(server.target, PREDICT)
            resp_size = len(call(req))
            served, local, floor = [], [], []
            sess.run(None, {"input": xb})
            for _ in range(big_rounds):  # interleaved: noise hits both alike
                t0 = time.perf_counter()
                call(req)
                served.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                sess.run(None, {"input": xb})
                local.append(time.perf_counter() - t0)
            ch.close()
            # The transport's own floor for these sizes: echo 0.8 MB in, the response out.
            echo = Echo(resp_size)
            try:
                ch, echo_call = _unary(echo.target, ECHO)
                echo_call(req)
                for _ in range(big_rounds):
                    t0 = time.perf_counter()
                    echo_call(req)
                    floor.append(time.perf_counter() - t0)
                ch.close()
            finally:
                echo.stop()
            s_rps = 10_000 / statistics.median(served)
            l_rps = 10_000 / statistics.median(local)
            e_rps = 10_000 / statistics.median(floor)
            rows.append(
                (
                    f"{name}: rows/s at batch 10,000 (raw, {len(req) / 1e6:.1f} MB in,"
                    f" {resp_size / 1e6:.2f} MB out)",
                    f"{s_rps:,.0f}",
                    f"in-process ORT {l_rps:,.0f}; echo of the same bytes {e_rps:,.0f}",
                    f"{s_rps / l_rps:.0%} of ORT (target >= 60%)"
                    + (f"; the echo alone: {e_rps / l_rps:.0%}" if e_rps < l_rps else ""),
                )
            )
    finally:
        server.stop(grace_s=20)

    # --- two defaults, each against the server without it (A/B, same run) ----
    rows += _ab_rows(home, models, requests1, lat_n, big_rounds)

    # --- concurrency: batching off, on (default delay), on (delay 0) ----------
    configs = {
        "off": (),
        "on, delay 500 µs": ("--batching", "--max-batch-delay-us", "500"),
        "on, delay 0": ("--batching", "--max-batch-delay-us", "0"),
    }
    measured: dict[tuple[str, str], tuple[float, float, float]] = {}
    for label, extra in configs.items():
        server = _server(home, *extra)
        try:
            for name in models:
                req = requests1[name]
                solo = _pct(_batch1(server.target, req, lat_n // 3), 50)
                unary = asyncio.run(_rate(server.target, PREDICT, req, rate_s, False))
                stream = asyncio.run(_rate(server.target, STREAM, req, rate_s, True))
                measured[(name, label)] = (solo, unary, stream)
        finally:
            server.stop(grace_s=20)

    for name in models:
        _, u_off, s_off = measured[(name, "off")]
        rows.append(
            (
                f"{name}: req/s, batch 1, {CONCURRENCY} streams vs {CONCURRENCY} unary callers",
                f"{s_off:,.0f}",
                f"unary {u_off:,.0f}",
                f"{s_off / u_off:.2f}x unary (target >= 2x)",
            )
        )
        for label in list(configs)[1:]:
            _, u_on, s_on = measured[(name, label)]
            rows.append(
                (
                    f"{name}: req/s, batch 1, {CONCURRENCY} unary callers, batching {label}",
                    f"{u_on:,.0f}",
                    f"batching off {u_off:,.0f}",
                    f"{u_on / u_off:.2f}x",
                )
            )
            rows.append(
                (
                    f"{name}: req/s, batch 1, {CONCURRENCY} streams, batching {label}",
                    f"{s_on:,.0f}",
                    f"batching off {s_off:,.0f}",
                    f"{s_on / s_off:.2f}x",
                )
            )
    print(_table(rows, ("measurement", "served", "baseline (same run)", "ratio")))
    print()
    batch_rows = [
        (
            name,
            label,
            _fmt_us(solo),
            f"{unary:,.0f}",
            f"{stream:,.0f}",
        )
        for (name, label), (solo, unary, stream) in measured.items()
    ]
    print(
        _table(
            batch_rows,
            (
                "model",
                "batching",
                "1 caller p50",
                f"{CONCURRENCY} unary callers req/s",
                f"{CONCURRENCY} streams req/s",
            ),
        )
    )
    print(
        f"\ncpu cores usable: {len(os.sched_getaffinity(0))}; latency calls per case: {lat_n};"
        f" rate window: {rate_s}s; server --rpc-log off",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
