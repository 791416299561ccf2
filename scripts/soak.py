#!/usr/bin/env python
"""Bounded soak test on loopback: mixed load against a real server for a fixed time.

    python scripts/soak.py --duration 600            # 10 minutes (docs/soak.md)
    python scripts/soak.py --duration 3 --window 1   # a smoke run

It starts ``highpeaks-ml serve`` on 127.0.0.1 (port 0, a temporary home
unless ``--home``), trains the first version of model ``soak`` through the
server (built-in iris, alias ``production``), then for ``--duration`` seconds:

- ``--concurrency`` (16) callers predict in a loop, split between four kinds:
  unary with a typed tensor (``float_values``), unary with a raw tensor
  (``raw_data``), unary with named rows, and a long-lived PredictStream (one
  request in flight, reopened every 200 requests); each asks for
  ``production`` or the latest version;
- a control loop starts a training job every ``--train-every`` seconds
  (logistic regression, random forest, decision tree, k-NN on iris, in turn),
  moves ``production`` to another version every ``--alias-every`` seconds, and
  deletes unaliased versions beyond the newest five;
- a canceller, twice a second, walks away from calls on purpose: a
  PredictStream after one answer, a DownloadModelVersion after the metadata,
  a WatchTrainingJob after the first update, and a Predict with a 1 ms
  deadline.

Then it sends SIGTERM and waits for the drain. It reports errors by status
code (per operation; the deliberate cancellations separately), prediction
latency p50/p99 and requests/s per ``--window`` seconds, the server process's
RSS, open file descriptors and threads (from /proc/<pid>/status and
/proc/<pid>/fd) at the start of the load, every window and the end, and how
the server stopped. It stops by itself; exit code 0 when no prediction failed,
nothing logged an unexpected error and the server drained cleanly, else 1.
``--json FILE`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from highpeaks_ml.client import Client  # noqa: E402
from highpeaks_ml.launcher import ServerProcess, ServerStartError  # noqa: E402
from highpeaks_ml.v1 import common_pb2, predict_pb2, registry_pb2, train_pb2  # noqa: E402

MODEL = "soak"
KINDS = ("unary-typed", "unary-raw", "unary-rows", "stream")
ALGORITHMS = (
    ("logistic_regression", {}),
    ("random_forest", {"n_estimators": 20, "max_depth": 6}),
    ("decision_tree", {"max_depth": 5}),
    ("knn", {"n_neighbors": 7}),
)
KEEP_VERSIONS = 5
STREAM_REOPEN = 200
FINAL_JOB_STATES = (
    train_pb2.JOB_STATE_SUCCEEDED,
    train_pb2.JOB_STATE_FAILED,
    train_pb2.JOB_STATE_CANCELLED,
)


# --- the server ---------------------------------------------------------------------------


def start_server(home: Path, extra: list[str]) -> ServerProcess:
    """``highpeaks-ml serve`` on 127.0.0.1 (port 0); its log next to the home.

    The server runs with ``--rpc-log off``: one INFO line per RPC would grow
    the log by hundreds of MB in ten minutes.
    """
    try:
        return ServerProcess(home, *extra, device="cpu", log_path=home.parent / "soak-server.log")
    except ServerStartError as exc:
        raise SystemExit(str(exc)) from None


def server_stats(pid: int) -> dict[str, Any]:
    """RSS (MiB), threads and open file descriptors of the server process, and
    how many processes it has started (training workers) with their RSS."""
    out: dict[str, Any] = {"t": round(time.monotonic(), 3)}
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        out["rss_mib"] = round(int(_field(status, "VmRSS").split()[0]) / 1024, 1)
        out["threads"] = int(_field(status, "Threads"))
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return out
    children = _children(pid)
    out["children"] = len(children)
    child_rss = 0
    for child in children:
        try:
            status = Path(f"/proc/{child}/status").read_text()
            child_rss += int(_field(status, "VmRSS").split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            pass
    out["children_rss_mib"] = round(child_rss / 1024, 1)
    return out


def terminate(server: ServerProcess, timeout: float = 60) -> tuple[int | None, float]:
    """SIGTERM; the exit code (None if it did not exit in time) and the seconds it took."""
    start = time.monotonic()
    try:
        code: int | None = server.terminate(signal.SIGTERM, timeout)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - start


def _field(status: str, name: str) -> str:
    for line in status.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return "0"


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/<pid>/task/*/children)."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            out += [int(c) for c in text.split()]
    except FileNotFoundError:
        pass
    return out


# --- what happened ------------------------------------------------------------------------


@dataclass
class Record:
    """Everything the load did, filled by many threads (list.append is atomic)."""

    start: float = 0.0
    ok: list[tuple[float, str, float]] = field(default_factory=list)  # (t, kind, seconds)
    errors: list[tuple[float, str, str, str]] = field(default_factory=list)  # (t, op, code, msg)
    intended: Counter[str] = field(default_factory=Counter)  # deliberate cancels, by what
    ops: Counter[str] = field(default_factory=Counter)  # control operations done
    jobs: Counter[str] = field(default_factory=Counter)  # training jobs by final state
    job_errors: list[str] = field(default_factory=list)  # why jobs failed
    versions_seen: set[int] = field(default_factory=set)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def error(self, op: str, exc: grpc.RpcError) -> None:
        details = (exc.details() or "")[:160]
        self.errors.append((time.monotonic(), op, exc.code().name, details))


class Model:
    """Request material for model ``soak`` (trained on iris, so every version takes
    the same four features)."""

    def __init__(self, client: Client) -> None:
        meta = client.get_version(MODEL)
        self.features = [f.name for f in meta.features]
        from sklearn.datasets import load_iris

        self.X = load_iris().data.astype(np.float32)

    def rows(self, rng: random.Random, n: int) -> np.ndarray:
        i = rng.randrange(0, len(self.X) - n)
        return self.X[i : i + n]

    def request(self, kind: str, rng: random.Random) -> predict_pb2.PredictRequest:
        x = self.rows(rng, rng.choice((1, 1, 1, 4, 16)))
        req = predict_pb2.PredictRequest(model=common_pb2.ModelRef(name=MODEL))
        if rng.random() < 0.8:
            req.model.alias = "production"
        if kind == "unary-rows":
            for r in x:
                req.rows.rows.add().update(dict(zip(self.features, map(float, r), strict=True)))
        elif kind == "unary-typed":
            req.tensor.data_type = common_pb2.DATA_TYPE_FLOAT32
            req.tensor.shape.extend(x.shape)
            req.tensor.float_values.extend(x.ravel().tolist())
        else:
            req.tensor.data_type = common_pb2.DATA_TYPE_FLOAT32
            req.tensor.shape.extend(x.shape)
            req.tensor.raw_data = x.tobytes()
            req.raw_output = True
        return req


def _check(resp: predict_pb2.PredictResponse, rec: Record) -> None:
    rows = resp.labels.shape[0] if resp.labels.shape else 0
    if rows == 0 or list(resp.probabilities.shape) != [rows, 3]:
        raise AssertionError(f"incomplete answer from version {resp.model_version}")
    rec.versions_seen.add(resp.model_version)


# --- the load -----------------------------------------------------------------------------


def unary_caller(
    client: Client, model: Model, kind: str, rec: Record, stop: threading.Event, seed: int
) -> None:
    rng = random.Random(seed)
    stub = client.predictor
    while not stop.is_set():
        req = model.request(kind, rng)
        t0 = time.perf_counter()
        try:
            resp = stub.Predict(req, timeout=30)
        except grpc.RpcError as exc:
            rec.error(kind, exc)
            time.sleep(0.05)
            continue
        rec.ok.append((time.monotonic(), kind, time.perf_counter() - t0))
        try:
            _check(resp, rec)
        except AssertionError as exc:
            rec.errors.append((time.monotonic(), kind, "BAD_ANSWER", str(exc)))


def stream_caller(
    client: Client, model: Model, rec: Record, stop: threading.Event, seed: int
) -> None:
    """One request in flight over a long-lived PredictStream (reopened now and then)."""
    rng = random.Random(seed)
    while not stop.is_set():
        outbox: queue.Queue[Any] = queue.Queue()
        responses = client.predictor.PredictStream(iter(outbox.get, None), timeout=600)
        try:
            for _ in range(STREAM_REOPEN):
                if stop.is_set():
                    break
                t0 = time.perf_counter()
                outbox.put(model.request("stream", rng))
                msg = next(responses)
                if msg.WhichOneof("result") == "error":
                    rec.errors.append(
                        (
                            time.monotonic(),
                            "stream",
                            f"in-stream {msg.error.code}",
                            msg.error.message,
                        )
                    )
                    continue
                rec.ok.append((time.monotonic(), "stream", time.perf_counter() - t0))
                _check(msg.response, rec)
            outbox.put(None)
            for _ in responses:  # drain to the end of the call
                pass
        except grpc.RpcError as exc:
            rec.error("stream", exc)
            time.sleep(0.05)
        except AssertionError as exc:
            rec.errors.append((time.monotonic(), "stream", "BAD_ANSWER", str(exc)))
        finally:
            outbox.put(None)


def control_loop(
    client: Client, rec: Record, stop: threading.Event, train_every: float, alias_every: float
) -> None:
    """Training jobs, alias moves and deletions of old versions, one at a time."""
    rng = random.Random(7)
    next_train = time.monotonic() + min(train_every, 5.0)
    running: str | None = None
    running_what = ""
    turn = 0
    while not stop.wait(alias_every):
        try:
            if running is not None:
                job = client.get_job(running)
                if job.state in FINAL_JOB_STATES:
                    rec.jobs[train_pb2.JobState.Name(job.state)] += 1
                    if job.error:
                        rec.job_errors.append(f"{running_what}: {job.error[:300]}")
                    running = None
            if running is None and time.monotonic() >= next_train:
                algo, params = ALGORITHMS[turn % len(ALGORITHMS)]
                turn += 1
                running = client.start_training(
                    MODEL, algo, "builtin:iris", params, seed=turn, time_limit_s=120
                ).id
                running_what = f"{algo} {params} seed {turn}"
                rec.ops["training started"] += 1
                next_train = time.monotonic() + train_every
            info = client.get_model(MODEL)
            versions = [v.version for v in info.versions]
            target = rng.choice(versions[-KEEP_VERSIONS:])
            client.set_alias(MODEL, "production", target)
            rec.ops["alias moved"] += 1
            aliased = set(dict(info.aliases).values()) | {target}
            for v in versions[:-KEEP_VERSIONS]:
                if v not in aliased:
                    client.delete_version(MODEL, v)
                    rec.ops["version deleted"] += 1
        except grpc.RpcError as exc:
            rec.error("control", exc)
    if running is not None:
        rec.ops["training left running at the end"] += 1


def canceller(client: Client, model: Model, rec: Record, stop: threading.Event) -> None:
    """Calls abandoned on purpose: the server must shrug them off."""
    rng = random.Random(11)
    while not stop.wait(0.5):
        try:
            reqs = [model.request("stream", rng) for _ in range(50)]
            call = client.predictor.PredictStream(iter(reqs), timeout=30)
            next(call)
            call.cancel()
            rec.intended["PredictStream cancelled after one answer"] += 1

            call = client.registry.DownloadModelVersion(
                registry_pb2.DownloadModelVersionRequest(
                    model=common_pb2.ModelRef(name=MODEL, alias="production")
                ),
                timeout=30,
            )
            next(call)
            call.cancel()
            rec.intended["DownloadModelVersion cancelled after the metadata"] += 1

            jobs = client.list_jobs(model=MODEL, limit=1)
            if jobs:
                call = client.train.WatchTrainingJob(
                    train_pb2.WatchTrainingJobRequest(id=jobs[0].id), timeout=30
                )
                next(call)
                call.cancel()
                rec.intended["WatchTrainingJob cancelled after one update"] += 1
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                rec.error("canceller", exc)
        try:
            client.predictor.Predict(model.request("unary-raw", rng), timeout=0.001)
            rec.intended["Predict answered within a 1 ms deadline"] += 1
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                rec.intended["Predict past a 1 ms deadline"] += 1
            else:
                rec.error("deadline", exc)


def sampler(server: ServerProcess, rec: Record, stop: threading.Event, window: float) -> None:
    while not stop.wait(window):
        rec.samples.append(server_stats(server.pid))


# --- the report ---------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def report(rec: Record, start_stats: dict[str, Any], end_stats: dict[str, Any], args: Any) -> dict:
    duration = args.duration
    windows: list[dict[str, Any]] = []
    n_windows = max(1, round(duration / args.window))
    by_window: dict[int, list[float]] = defaultdict(list)
    errors_by_window: Counter[int] = Counter()
    for t, _kind, seconds in rec.ok:
        by_window[min(n_windows - 1, int((t - rec.start) // args.window))].append(seconds)
    for t, *_ in rec.errors:
        errors_by_window[min(n_windows - 1, max(0, int((t - rec.start) // args.window)))] += 1
    for w in range(n_windows):
        lat = by_window.get(w, [])
        windows.append(
            {
                "window": w,
                "from_s": round(w * args.window, 1),
                "requests": len(lat),
                "req_per_s": round(len(lat) / args.window, 1),
                "p50_ms": round(_pct(lat, 0.50) * 1000, 2),
                "p99_ms": round(_pct(lat, 0.99) * 1000, 2),
                "errors": errors_by_window.get(w, 0),
            }
        )
    per_kind = {}
    for kind in KINDS:
        lat = [s for _, k, s in rec.ok if k == kind]
        per_kind[kind] = {
            "requests": len(lat),
            "p50_ms": round(_pct(lat, 0.50) * 1000, 2),
            "p99_ms": round(_pct(lat, 0.99) * 1000, 2),
        }
    errors: dict[str, dict[str, int]] = defaultdict(dict)
    for _, op, code, _msg in rec.errors:
        errors[op][code] = errors[op].get(code, 0) + 1
    all_lat = [s for _, _, s in rec.ok]
    return {
        "duration_s": duration,
        "concurrency": args.concurrency,
        "predictions_ok": len(rec.ok),
        "predictions_per_s": round(len(rec.ok) / duration, 1),
        "p50_ms": round(_pct(all_lat, 0.50) * 1000, 2),
        "p99_ms": round(_pct(all_lat, 0.99) * 1000, 2),
        "per_kind": per_kind,
        "windows": windows,
        "errors": dict(errors),
        "error_examples": [e[1:] for e in rec.errors[:5]],
        "intended_cancellations": dict(rec.intended),
        "control": dict(rec.ops),
        "training_jobs": dict(rec.jobs),
        "training_job_errors": rec.job_errors,
        "versions_seen": sorted(rec.versions_seen),
        "server_start": start_stats,
        "server_end": end_stats,
        "server_samples": rec.samples,
    }


def print_report(r: dict[str, Any]) -> None:
    p = print
    p(f"\nsoak: {r['duration_s']} s, {r['concurrency']} callers")
    p(
        f"predictions OK: {r['predictions_ok']} ({r['predictions_per_s']}/s), "
        f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms"
    )
    for kind, k in r["per_kind"].items():
        p(
            f"  {kind:12s} {k['requests']:8d} requests"
            f"  p50 {k['p50_ms']:8.2f} ms  p99 {k['p99_ms']:8.2f} ms"
        )
    p("\nper window:")
    p("  from_s  requests   req/s   p50_ms   p99_ms  errors")
    for w in r["windows"]:
        p(
            f"  {w['from_s']:6.0f} {w['requests']:9d} {w['req_per_s']:7.1f} "
            f"{w['p50_ms']:8.2f} {w['p99_ms']:8.2f} {w['errors']:7d}"
        )
    p("\nerrors by operation and code: " + (json.dumps(r["errors"]) if r["errors"] else "none"))
    for example in r["error_examples"]:
        p(f"  e.g. {example}")
    p(f"deliberate cancellations: {json.dumps(r['intended_cancellations'])}")
    p(f"control operations: {json.dumps(r['control'])}")
    p(f"training jobs: {json.dumps(r['training_jobs'])}; versions answering: {r['versions_seen']}")
    for error in r["training_job_errors"]:
        p(f"  job failed: {error}")
    s, e = r["server_start"], r["server_end"]
    p("\nserver process       start      end")
    for key, label in (
        ("rss_mib", "RSS (MiB)"),
        ("fds", "open fds"),
        ("threads", "threads"),
        ("children", "child procs"),
        ("children_rss_mib", "children RSS"),
    ):
        p(f"  {label:14s} {s.get(key, '-')!s:>8} {e.get(key, '-')!s:>8}")
    if r["server_samples"]:
        rss = [x.get("rss_mib") for x in r["server_samples"]]
        fds = [x.get("fds") for x in r["server_samples"]]
        thr = [x.get("threads") for x in r["server_samples"]]
        p(f"  per window: RSS {rss}\n              fds {fds}\n              threads {thr}")
    p(
        f"\nshutdown: exit code {r['exit_code']} after {r['stop_s']} s; "
        f"server log: {r['log_errors']} unexpected errors, {r['log_tracebacks']} tracebacks"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    ap.add_argument("--concurrency", type=int, default=16, help="prediction callers (default 16)")
    ap.add_argument("--window", type=float, default=60.0, help="report window in s (default 60)")
    ap.add_argument("--train-every", type=float, default=30.0, help="s between training jobs")
    ap.add_argument("--alias-every", type=float, default=2.0, help="s between alias moves")
    ap.add_argument("--home", type=Path, help="server home (default: a temporary directory)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra argument for highpeaks-ml serve (repeat), e.g. --server-arg=--no-batching",
    )
    args = ap.parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1 or args.window <= 0:
        ap.error("--duration and --window must be positive, --concurrency at least 1")
    args.window = min(args.window, args.duration)

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        home = args.home or Path(tmp) / "home"
        home.mkdir(parents=True, exist_ok=True)
        server = start_server(home, ["--rpc-log", "off", *args.server_arg])
        try:
            return run(server, args)
        finally:
            server.stop()
            if args.home is None:
                print(f"(server log was {server.log_path}, removed with the temporary home)")


def run(server: ServerProcess, args: Any) -> int:
    print(f"server {server.target} pid {server.pid}; training the first version ...")
    client = Client(server.target, timeout=60)
    job = client.start_training(
        MODEL, "logistic_regression", "builtin:iris", aliases=["production"]
    )
    done = client.wait_job(job.id, timeout=300)
    if done.state != train_pb2.JOB_STATE_SUCCEEDED:
        print(f"the first training job failed: {done.error}")
        return 1
    model = Model(client)
    rec = Record()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    # One channel per four callers: several HTTP/2 connections, as real clients have.
    clients = [Client(server.target, timeout=60) for _ in range(max(1, args.concurrency // 4))]
    for i in range(args.concurrency):
        kind = KINDS[i % len(KINDS)]
        c = clients[i % len(clients)]
        if kind == "stream":
            target: Any = stream_caller
            a: tuple[Any, ...] = (c, model, rec, stop, i)
        else:
            target, a = unary_caller, (c, model, kind, rec, stop, i)
        threads.append(threading.Thread(target=target, args=a, name=f"{kind}-{i}", daemon=True))
    threads.append(
        threading.Thread(
            target=control_loop,
            args=(client, rec, stop, args.train_every, args.alias_every),
            daemon=True,
        )
    )
    threads.append(threading.Thread(target=canceller, args=(client, model, rec, stop), daemon=True))
    threads.append(
        threading.Thread(target=sampler, args=(server, rec, stop, args.window), daemon=True)
    )
    start_stats = server_stats(server.pid)
    print(f"load for {args.duration:g} s: {json.dumps(start_stats)}")
    rec.start = time.monotonic()
    for t in threads:
        t.start()
    try:
        time.sleep(args.duration)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    end_stats = server_stats(server.pid)
    health = client.health()
    for c in (*clients, client):
        c.close()
    code, stop_s = terminate(server, timeout=60)
    out = server.output()
    result = report(rec, start_stats, end_stats, args)
    result.update(
        health_at_end=health,
        exit_code=code,
        stop_s=round(stop_s, 2),
        log_errors=out.count("unexpected error"),
        log_tracebacks=out.count("Traceback"),
    )
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    prediction_errors = sum(
        n for op, codes in result["errors"].items() if op in KINDS for n in codes.values()
    )
    ok = (
        prediction_errors == 0
        and health == "SERVING"
        and code == 0
        and result["log_errors"] == 0
        and result["predictions_ok"] > 0
    )
    print("\nRESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
