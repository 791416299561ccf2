#!/usr/bin/env python
"""Training benchmark: a job's total time next to the bare scikit-learn fit, in one run.

    python scripts/bench_training.py                 # 100,000 rows x 20 columns, random_forest
    python scripts/bench_training.py --rows 20000    # smaller
    python scripts/bench_training.py --precision     # the float32 measurements of docs/training.md
    python scripts/bench_training.py --boosting      # xgboost and lightgbm against random_forest
    python scripts/bench_training.py --concurrent    # 8 jobs at once: local pool vs a Ray head
    python scripts/bench_training.py --search        # 16-trial search: parallelism 2 vs 1

The default run generates a classification table (``make_classification``,
seeded), writes it as CSV, then

1. fits ``RandomForestClassifier`` with the catalogue's defaults on the same
   80 % training split a job uses (the bare scikit-learn fit), and
2. starts ``highpeaks-ml serve`` on a fresh home, uploads the CSV, runs a
   ``random_forest`` job with default hyperparameters and follows it,

one after the other so that they never compete for CPU, and prints each
stage's time, the job's total (created -> finished, server clock) and the
ratio job total / bare fit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _table(rows: int, cols: int, path: Path) -> None:
    import pandas as pd
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=rows,
        n_features=cols,
        n_informative=max(2, cols // 2),
        n_redundant=min(2, cols // 4),
        random_state=0,
    )
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(cols)])
    frame["target"] = y
    frame.to_csv(path, index=False, float_format="%.6g")


def _bare_fit(path: Path, cpus: int = 1) -> tuple[float, float, float]:
    """(seconds to read+prepare, to fit, to export with skl2onnx) with the job's split,
    the catalogue's defaults and ``n_jobs=cpus`` (what a job with that CPU request gets)."""
    from highpeaks_ml.training import catalogue, pipeline
    from highpeaks_ml.training.datasets import analyse_csv, load_csv_frame

    t0 = time.perf_counter()
    _, columns = analyse_csv(path)
    frame = load_csv_frame(path, columns)
    features = [(c.name, c.type) for c in columns if c.name != "target"]
    data = pipeline.prepare(frame, "target", features, catalogue.CLASSIFICATION)
    X_train, _, y_train, _ = pipeline.split(data, 0.2, 0)
    algo = catalogue.get_algorithm("random_forest")
    model = algo.build("classification", algo.validate("classification", {}), 0)
    if "n_jobs" in model.get_params():
        model.set_params(n_jobs=cpus)
    X = X_train.to_numpy(dtype="float64")
    prepared = time.perf_counter() - t0
    t1 = time.perf_counter()
    model.fit(X, y_train)
    fit_s = time.perf_counter() - t1
    from skl2onnx import to_onnx

    t2 = time.perf_counter()
    to_onnx(model, X[:1].astype("float32"), options={"zipmap": False})
    return prepared, fit_s, time.perf_counter() - t2


def _serve(home: Path) -> tuple[subprocess.Popen[bytes], str, Any]:
    log = open(home.parent / "server.log", "w+b")  # noqa: SIM115 - closed by the caller
    proc = subprocess.Popen(
        [sys.executable, "-m", "highpeaks_ml.cli", "serve", "--port", "0", "--home", str(home)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = (home.parent / "server.log").read_text(errors="replace")
        m = re.search(r"listening address=\S+:(\d+)", text)
        if m and "ready" in text:
            return proc, f"127.0.0.1:{m.group(1)}", log
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{text}")
        time.sleep(0.1)
    raise TimeoutError("server did not start")


def _job(path: Path, home: Path, cpus: int = 1) -> dict[str, Any]:
    from highpeaks_ml.client import Client
    from highpeaks_ml.v1 import train_pb2

    proc, target, log = _serve(home)
    try:
        with Client(target, timeout=600) as c:
            # A tiny job first, so the measured one finds a warm worker (as on
            # any server that has been up for a few seconds).
            c.wait_job(c.start_training("warmup", "logistic_regression", "builtin:iris").id)
            t0 = time.perf_counter()
            ds = c.upload_dataset(path)
            upload_s = time.perf_counter() - t0
            job = c.start_training("bench", "random_forest", ds.id, cpus=cpus)
            stamps: list[tuple[str, float]] = []
            for snap in c.watch_job(job.id):
                name = train_pb2.JobState.Name(snap.state).removeprefix("JOB_STATE_")
                if snap.state == train_pb2.JOB_STATE_RUNNING:
                    name = train_pb2.JobStage.Name(snap.stage).removeprefix("JOB_STAGE_")
                if not stamps or stamps[-1][0] != name:
                    stamps.append((name, time.perf_counter()))
            final = c.get_job(job.id)
            meta = c.get_version("bench", final.model_version) if final.model_version else None
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        log.close()
    stages = {
        name: stamps[i + 1][1] - t for i, (name, t) in enumerate(stamps[:-1])
    }  # time spent in each state/stage, client clock
    return {
        "upload_s": upload_s,
        "rows": ds.rows,
        "size_bytes": ds.size_bytes,
        "state": train_pb2.JobState.Name(final.state),
        "error": final.error,
        "stages": stages,
        "total_s": final.finished_at.ToNanoseconds() / 1e9 - final.created_at.ToNanoseconds() / 1e9,
        "run_s": final.finished_at.ToNanoseconds() / 1e9 - final.started_at.ToNanoseconds() / 1e9,
        "metrics": dict(final.metrics),
        "onnx_bytes": meta.size_bytes if meta is not None else 0,
        "verification": meta.verification if meta is not None else None,
    }


def bench(rows: int, cols: int, cpus: int = 1) -> None:
    """Print the job-vs-bare-fit comparison."""
    import platform

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        tmpdir = Path(tmp)
        csv = tmpdir / "data.csv"
        t0 = time.perf_counter()
        _table(rows, cols, csv)
        print(f"data: {rows} rows x {cols} features + target, {csv.stat().st_size:,} bytes CSV"
              f" (generated in {time.perf_counter() - t0:.1f} s)")  # fmt: skip
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
        prep_s, fit_s, export_s = _bare_fit(csv, cpus)
        print(f"bare scikit-learn: read+prepare {prep_s:.2f} s, fit {fit_s:.2f} s, skl2onnx"
              f" export {export_s:.2f} s (RandomForestClassifier, catalogue defaults:"
              f" 100 trees, n_jobs={cpus})")  # fmt: skip
        home = tmpdir / "home"
        home.mkdir()
        result = _job(csv, home, cpus)
    print(f"upload: {result['upload_s']:.2f} s ({result['size_bytes']:,} bytes)")
    print(f"job: {result['state']} {result['error']}".rstrip())
    for name, seconds in result["stages"].items():
        print(f"  {name:<13} {seconds:8.2f} s")
    print(f"  job total (created -> finished, server clock): {result['total_s']:.2f} s")
    print(f"  of which running (started -> finished):         {result['run_s']:.2f} s")
    print(f"  ONNX model: {result['onnx_bytes']:,} bytes; metrics {result['metrics']}")
    if result["verification"] is not None:
        v = result["verification"]
        print(
            f"  verification: {v.rows} rows, label mismatch {v.label_mismatch_rate:.4%} (ties),"
            f" max |diff| {v.max_abs_diff:.3g} <= {v.tolerance:g}"
        )
    print(f"RATIO job total / bare fit = {result['total_s'] / fit_s:.2f}")
    print(
        f"RATIO job total / (bare fit + export), n_jobs={cpus} ="
        f" {result['total_s'] / (fit_s + export_s):.2f}"
    )


# --- xgboost and lightgbm against random_forest (docs/training.md) --------------------

BOOSTING = ("random_forest", "xgboost", "lightgbm")


def _boosting_data(rows: int, cols: int) -> Any:
    """The job's prepared data and split for a generated binary table (as ``_table``)."""
    import pandas as pd
    from sklearn.datasets import make_classification

    from highpeaks_ml.training import catalogue, pipeline

    X, y = make_classification(
        n_samples=rows,
        n_features=cols,
        n_informative=max(2, cols // 2),
        n_redundant=min(2, cols // 4),
        random_state=0,
    )
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(cols)]).assign(target=y)
    features = [(f"x{i}", "numeric") for i in range(cols)]
    data = pipeline.prepare(frame, "target", features, catalogue.CLASSIFICATION)
    return data, pipeline.split(data, 0.2, 0)


def _serving_rows_per_s(onnx_bytes: bytes, X: np.ndarray, batch: int, window_s: float) -> float:
    """Rows/s of in-process onnxruntime with the server's session options, ``batch`` rows a run."""
    import onnxruntime as ort

    from highpeaks_ml.config import Settings
    from highpeaks_ml.serving.providers import session_options

    options = session_options(Settings.load({"device": "cpu"}))
    sess = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    x = np.resize(X, (batch, X.shape[1])).astype(np.float32)
    for _ in range(3):
        sess.run(None, {"input": x})
    runs, t0 = 0, time.perf_counter()
    while runs < 5 or time.perf_counter() - t0 < window_s:
        sess.run(None, {"input": x})
        runs += 1
    return runs * batch / (time.perf_counter() - t0)


def boosting_one(
    algorithm: str, data: Any, split: Any, trees: int, window_s: float = 3.0
) -> dict[str, Any]:
    """Fit, export and verify one algorithm as a job does (catalogue defaults but
    ``n_estimators``, one core), and its ONNX serving rows/s at batch 1,000."""
    from highpeaks_ml.training import catalogue, pipeline

    X_train, X_test, y_train, _ = split
    algo = catalogue.get_algorithm(algorithm)
    params = algo.validate(catalogue.CLASSIFICATION, {"n_estimators": trees})
    model = pipeline.build(algo, data, params, 0)
    t0 = time.perf_counter()
    pipeline.fit(model, X_train, y_train, data.all_numeric)
    t1 = time.perf_counter()
    onnx_bytes = pipeline.export(model, data)
    t2 = time.perf_counter()
    check = pipeline.verify(model, onnx_bytes, X_test, data, y_train)
    pipeline.verify_missing(model, onnx_bytes, X_test, data, y_train)
    t3 = time.perf_counter()
    X = X_test.to_numpy(dtype=np.float32)
    return {
        "algorithm": algorithm,
        "fit_s": t1 - t0,
        "export_s": t2 - t1,
        "verify_s": t3 - t2,
        "total_s": t3 - t0,
        "onnx_mb": len(onnx_bytes) / 1e6,
        "max_abs_diff": check["max_abs_diff"],
        "rows_per_s": _serving_rows_per_s(onnx_bytes, X, 1000, window_s),
    }


def boosting_bench(rows: int, cols: int, trees: int) -> None:
    """Print fit + export + verify time and serving rows/s of each, with ratios to the forest."""
    import platform

    data, split = _boosting_data(rows, cols)
    print(f"data: {rows:,} rows x {cols} features, binary target; {len(split[0]):,} to train,"
          f" {len(split[1]):,} to verify; {trees} trees each, catalogue defaults otherwise,"
          " one core (n_jobs=1, as a job)")  # fmt: skip
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    # Untimed first round on a few rows: imports and converter registration
    # happen once per worker process, not once per job.
    small = _boosting_data(300, cols)
    for algorithm in BOOSTING:
        boosting_one(algorithm, *small, 2, window_s=0.0)
    results = []
    for algorithm in BOOSTING:
        r = boosting_one(algorithm, data, split, trees)
        print(f"  {algorithm}: fit {r['fit_s']:.2f} s, export {r['export_s']:.2f} s,"
              f" verify {r['verify_s']:.2f} s")  # fmt: skip
        results.append(r)
    base = results[0]
    print()
    print("| algorithm | fit s | export s | verify s | fit+export+verify s | vs random_forest"
          " | ONNX MB | serving rows/s (batch 1,000) | vs random_forest |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['algorithm']} | {r['fit_s']:.2f} | {r['export_s']:.2f} | {r['verify_s']:.2f}"
              f" | {r['total_s']:.2f} | {r['total_s'] / base['total_s']:.2f}x"
              f" | {r['onnx_mb']:.2f} | {r['rows_per_s']:,.0f}"
              f" | {r['rows_per_s'] / base['rows_per_s']:.2f}x |")  # fmt: skip
    for r in results[1:]:
        print(f"RATIO {r['algorithm']} / random_forest: fit+export+verify"
              f" {r['total_s'] / base['total_s']:.3f}, serving rows/s"
              f" {r['rows_per_s'] / base['rows_per_s']:.2f}")  # fmt: skip


# --- precision measurements (docs/training.md) -----------------------------------------


def _rf_scaler_experiment() -> None:
    import onnxruntime as ort
    import pandas as pd
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)
    n = 20_000
    frame = pd.DataFrame(
        {
            "a": rng.normal(1000, 300, n),
            "b": rng.exponential(50, n),
            "c": rng.normal(0, 1, n),
            "colour": rng.choice(list("rgbyk"), n),
        }
    )
    score = (frame.a - 1000) / 300 + np.log1p(frame.b) / 3 + (frame.colour == "r")
    y = (score + rng.normal(0, 0.7, n) > 1.5).astype(int)
    print("random forest (100 trees) in a mixed pipeline, 5,000 held-out rows, float32 graph:")
    for rounded in (False, True):
        data = frame.copy()
        if rounded:
            for col in "abc":
                data[col] = data[col].astype(np.float32).astype(np.float64)
        X_train, X_test, y_train, _ = train_test_split(data, y, test_size=0.25, random_state=0)
        for scaled in (True, False):
            numeric: Any = StandardScaler() if scaled else "passthrough"
            pre = ColumnTransformer(
                [
                    ("n", numeric, list("abc")),
                    ("c", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["colour"]),
                ],
                sparse_threshold=0,
            )
            forest = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1)
            model = Pipeline([("p", pre), ("m", forest)]).fit(X_train, y_train)
            types = [(c, FloatTensorType([None, 1])) for c in "abc"]
            types.append(("colour", StringTensorType([None, 1])))
            onx = convert_sklearn(
                model, initial_types=types, options={id(forest): {"zipmap": False}}
            )
            sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
            feed = {c: X_test[[c]].to_numpy(np.float32) for c in "abc"}
            feed["colour"] = X_test[["colour"]].to_numpy(object)
            labels, proba = sess.run(None, feed)
            sk_proba = model.predict_proba(X_test)
            diff = np.abs(proba - sk_proba).max(axis=1)
            top2 = np.sort(sk_proba, axis=1)
            ties = np.abs(top2[:, -1] - top2[:, -2]) <= 1e-4
            mism = labels != model.predict(X_test)
            print(
                f"  data rounded to float32={rounded!s:5} scaler={scaled!s:5}:"
                f" rows with a probability off by >1e-4: {(diff > 1e-4).sum()}"
                f" ({(diff > 1e-4).mean():.2%}), max {diff.max():.3g};"
                f" label mismatches {mism.sum()} ({(mism & ~ties).sum()} not ties)"
            )


def _hgb_experiment() -> None:
    from skl2onnx import to_onnx
    from skl2onnx.operator_converters import random_forest
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.model_selection import train_test_split

    from highpeaks_ml.training import onnx_fixes, pipeline

    X, y = load_diabetes(return_X_y=True)
    X = X.astype(np.float32).astype(np.float64)
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.5, random_state=0)
    model = HistGradientBoostingRegressor(max_iter=200, random_state=0).fit(X_train, y_train)
    print("HistGradientBoostingRegressor (200 iterations) on diabetes, 221 held-out rows:")
    onnx_fixes.install()
    fixed = random_forest.add_tree_to_attribute_pairs_hist_gradient_boosting
    for label, fn in (("skl2onnx as is", fixed.__wrapped__), ("with onnx_fixes", fixed)):
        random_forest.add_tree_to_attribute_pairs_hist_gradient_boosting = fn
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                onx = to_onnx(model, X_train[:1].astype(np.float32))
        finally:
            random_forest.add_tree_to_attribute_pairs_hist_gradient_boosting = fixed
        out = pipeline.session(onx.SerializeToString()).run(None, {"X": X_test.astype(np.float32)})
        diff = np.abs(out[0].ravel() - model.predict(X_test))
        print(
            f"  {label:16}: rows off by >1e-3: {(diff > 1e-3).sum()}, max |diff| {diff.max():.3g}"
        )


# --- 8 concurrent jobs: the local pool against Ray on the same machine -------------------


def _backend_run(
    backend: str, path: Path, jobs: int, cpus: int, tiny: int, head: Any = None
) -> dict[str, Any]:
    """``jobs`` random_forest jobs started at once on one server, after ``tiny``
    one-at-a-time iris jobs (whose created->finished time is mostly the backend's own)."""
    from highpeaks_ml.client import Client
    from highpeaks_ml.launcher import ServerProcess
    from highpeaks_ml.v1 import train_pb2

    def seconds(ts: Any) -> float:
        return float(ts.ToNanoseconds()) / 1e9

    with tempfile.TemporaryDirectory(prefix=f"bench-{backend}-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        flags = ["--training-backend", backend, "--rpc-log", "off"]
        env: dict[str, str] = {}
        if head is None:
            # The local pool: one worker process per CPU, each job on one CPU.
            flags += ["--training-workers", str(cpus)]
        else:
            # Ray: every job submitted at once; Ray runs as many as it has CPUs for.
            flags += ["--training-workers", str(jobs), "--ray-address", head.address]
            env = head.driver_env()
        with (
            ServerProcess(home, *flags, env=env) as server,
            Client(server.target, timeout=600) as c,
        ):
            c.wait_job(c.start_training("warmup", "logistic_regression", "builtin:iris").id)
            tiny_s = []
            for _ in range(tiny):
                job = c.wait_job(c.start_training("tiny", "logistic_regression", "builtin:iris").id)
                tiny_s.append(seconds(job.finished_at) - seconds(job.created_at))
            ds = c.upload_dataset(path)
            t0 = time.perf_counter()
            ids = [
                c.start_training(f"m{i}", "random_forest", ds.id, seed=i).id for i in range(jobs)
            ]
            ended = [c.wait_job(job_id) for job_id in ids]
            wall = time.perf_counter() - t0
    bad = [j.error for j in ended if j.state != train_pb2.JOB_STATE_SUCCEEDED]
    if bad:
        raise RuntimeError(f"{backend}: {len(bad)} jobs failed: {bad[0]}")
    return {
        "wall_s": wall,
        "run_s": [seconds(j.finished_at) - seconds(j.started_at) for j in ended],
        "tiny_s": tiny_s,
        "nodes": sorted({j.placement.node for j in ended}),
    }


def concurrent_bench(rows: int, cols: int, jobs: int = 8, tiny: int = 5, rounds: int = 2) -> None:
    """Print the local pool's and Ray's wall time for ``jobs`` jobs at once, their ratio,
    and Ray's overhead per job, on this machine (a one-node Ray head with its CPUs).

    The backends take turns (local, Ray, local, Ray...) and each one's best round counts,
    so that load from elsewhere on the machine favours neither."""
    from tests.support.ray_cluster import RayHead

    cpus = os.cpu_count() or 1
    print(
        f"{jobs} concurrent random_forest jobs, {rows:,} rows x {cols} columns, {cpus} CPUs,"
        f" best of {rounds} rounds"
    )
    runs: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="bench-concurrent-") as tmp:
        path = Path(tmp) / "table.csv"
        _table(rows, cols, path)
        head = RayHead(num_cpus=cpus)
        t0 = time.perf_counter()
        head.start()
        print(f"  ray start --head: {time.perf_counter() - t0:.1f} s")
        try:
            for _ in range(rounds):
                runs["local"].append(_backend_run("local", path, jobs, cpus, tiny))
                runs["ray"].append(_backend_run("ray", path, jobs, cpus, tiny, head))
        finally:
            head.stop()
    best = {name: min(r, key=lambda run: run["wall_s"]) for name, r in runs.items()}
    tiny_ms = {
        name: float(np.median([t for run in r for t in run["tiny_s"]])) * 1000
        for name, r in runs.items()
    }
    for name, r in best.items():
        walls = ", ".join(f"{run['wall_s']:.1f}" for run in runs[name])
        print(
            f"  {name:5}: wall {r['wall_s']:6.1f} s (rounds: {walls}); a job runs"
            f" {np.mean(r['run_s']):5.2f} s (mean); a tiny iris job takes"
            f" {tiny_ms[name]:5.0f} ms created->finished (median)"
        )
    print(f"  wall ray/local: {best['ray']['wall_s'] / best['local']['wall_s']:.2f}")
    run_ms = (np.mean(best["ray"]["run_s"]) - np.mean(best["local"]["run_s"])) * 1000
    print(
        f"  Ray's overhead per job: {tiny_ms['ray'] - tiny_ms['local']:+.0f} ms on a tiny job"
        f" (median); {run_ms:+.0f} ms on a job's run (started->finished, mean of the best round)"
    )


def _search_phase(client: Any, job_id: str) -> tuple[Any, float]:
    """Follow a search job; (final job, seconds its SEARCHING stage lasted, client clock)."""
    from highpeaks_ml.v1 import train_pb2

    began = ended = 0.0
    final = None
    for snap in client.watch_job(job_id, timeout=3600):
        now = time.perf_counter()
        final = snap
        searching = snap.stage == train_pb2.JOB_STAGE_SEARCHING
        if searching and not began:
            began = now
        if began and not ended and not searching:
            ended = now
    if final is None or final.state != train_pb2.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"search job failed: {final.error if final else 'no answer'}")
    return final, (ended or time.perf_counter()) - began


def _search_runs(
    backend: str, path: Path, trials: int, folds: int, space: dict[str, Any], head: Any = None
) -> tuple[dict[int, tuple[float, float]], float, float]:
    """On one server of ``backend``: the search at parallelism 1 and 2 ({parallelism:
    (wall s, trials' own s)}), then a tiny iris search (its wall s, its trials' own s)."""
    from highpeaks_ml.client import Client
    from highpeaks_ml.launcher import ServerProcess

    with tempfile.TemporaryDirectory(prefix=f"bench-search-{backend}-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        flags = ["--training-backend", backend, "--training-workers", "2", "--rpc-log", "off"]
        env: dict[str, str] = {}
        if head is not None:
            flags += ["--ray-address", head.address]
            env = head.driver_env()
        with (
            ServerProcess(home, *flags, env=env) as server,
            Client(server.target, timeout=600) as c,
        ):
            c.wait_job(c.start_training("warmup", "logistic_regression", "builtin:iris").id)
            ds = c.upload_dataset(path)
            results = {}
            for parallelism in (1, 2):
                search = {"max_trials": trials, "folds": folds, "seed": 1,
                          "parallelism": parallelism, "space": space}  # fmt: skip
                job = c.start_training(
                    f"search-p{parallelism}", "random_forest", ds.id,
                    {"n_estimators": 20}, search=search,
                )  # fmt: skip
                final, wall = _search_phase(c, job.id)
                record = c.get_version(final.model_name, final.model_version).search
                busy = sum(t.seconds for t in record.trials)
                results[parallelism] = (wall, busy)
                print(
                    f"  {backend:5} parallelism {parallelism}: search {wall:6.1f} s wall, trials'"
                    f" own time {busy:6.1f} s (mean {busy / trials:5.2f} s), best accuracy"
                    f" {record.best_score:.4f}"
                )
            tiny = {"max_trials": trials, "folds": 2, "parallelism": 1,
                    "space": {"C": {"low": 0.1, "high": 10.0, "log": True}}}  # fmt: skip
            job = c.start_training("tiny-search", "logistic_regression", "builtin:iris",
                                   search=tiny)  # fmt: skip
            final, tiny_wall = _search_phase(c, job.id)
            record = c.get_version(final.model_name, final.model_version).search
            tiny_busy = sum(t.seconds for t in record.trials)
    return results, tiny_wall, tiny_busy


def search_bench(rows: int, cols: int, trials: int = 16, folds: int = 3) -> None:
    """A ``trials``-trial random search of random_forest (20 trees) on a rows x cols
    table, ``folds``-fold, on the local pool (2 workers) and on a local Ray head with
    this machine's CPUs: wall time of the search at parallelism 1 and 2, the speed-up,
    and each backend's per-trial overhead (search wall time minus the trials' own
    time, per trial, at parallelism 1; and the same for tiny iris trials, where it is
    nearly all overhead)."""
    from tests.support.ray_cluster import RayHead

    space = {"max_depth": {"low": 4, "high": 16}, "min_samples_leaf": {"low": 1, "high": 10}}
    cpus = os.cpu_count() or 1
    print(
        f"search: {trials} random_forest trials (20 trees), {folds}-fold,"
        f" {rows:,} rows x {cols} columns, {cpus} CPUs; local pool of 2 workers, then Ray"
    )
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        path = Path(tmp) / "table.csv"
        _table(rows, cols, path)
        runs = {"local": _search_runs("local", path, trials, folds, space)}
        head = RayHead(num_cpus=cpus)
        head.start()
        try:
            runs["ray"] = _search_runs("ray", path, trials, folds, space, head)
        finally:
            head.stop()
    for backend, (results, tiny_wall, tiny_busy) in runs.items():
        (w1, b1), (w2, _b2) = results[1], results[2]
        print(
            f"  {backend:5} speed-up parallelism 2 vs 1: {w1 / w2:.2f}x; per-trial overhead:"
            f" {(w1 - b1) / trials * 1000:.0f} ms (forest trials),"
            f" {(tiny_wall - tiny_busy) / trials * 1000:.0f} ms (tiny iris trials: wall"
            f" {tiny_wall:.2f} s for {trials})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--cols", type=int, default=20)
    parser.add_argument(
        "--cpus", type=int, default=1, help="the job's CPU request (n_jobs of the bare fit too)"
    )
    parser.add_argument(
        "--precision", action="store_true", help="run the float32 measurements instead"
    )
    parser.add_argument(
        "--boosting",
        action="store_true",
        help="xgboost and lightgbm against random_forest instead (fit+export+verify, serving)",
    )
    parser.add_argument("--trees", type=int, default=100, help="with --boosting (default 100)")
    parser.add_argument(
        "--concurrent",
        action="store_true",
        help="8 jobs at once, local pool vs Ray (use --rows 20000 or so on a small machine)",
    )
    parser.add_argument(
        "--search",
        action="store_true",
        help="a 16-trial random_forest search, parallelism 2 vs 1 (default --rows 20000 here)",
    )
    args = parser.parse_args()
    if args.search:
        search_bench(args.rows if args.rows != 100_000 else 20_000, args.cols)
        return 0
    if args.concurrent:
        concurrent_bench(args.rows, args.cols)
        return 0
    if args.boosting:
        boosting_bench(args.rows, args.cols, args.trees)
        return 0
    if args.precision:
        _rf_scaler_experiment()
        _hgb_experiment()
        return 0
    bench(args.rows, args.cols, args.cpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
