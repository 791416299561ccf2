#!/usr/bin/env python
"""Training benchmark: a job's total time next to the bare scikit-learn fit, in one run.

    python scripts/bench_training.py                 # 100,000 rows x 20 columns, random_forest
    python scripts/bench_training.py --rows 20000    # smaller
    python scripts/bench_training.py --precision     # the float32 measurements of docs/training.md

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


def _bare_fit(path: Path) -> tuple[float, float]:
    """(seconds to read+prepare, seconds to fit) with the job's split and defaults."""
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
    X = X_train.to_numpy(dtype="float64")
    prepared = time.perf_counter() - t0
    t1 = time.perf_counter()
    model.fit(X, y_train)
    return prepared, time.perf_counter() - t1


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


def _job(path: Path, home: Path) -> dict[str, Any]:
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
            job = c.start_training("bench", "random_forest", ds.id)
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


def bench(rows: int, cols: int) -> None:
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
        prep_s, fit_s = _bare_fit(csv)
        print(f"bare scikit-learn: read+prepare {prep_s:.2f} s, fit {fit_s:.2f} s"
              " (RandomForestClassifier, catalogue defaults: 100 trees, n_jobs=1)")  # fmt: skip
        home = tmpdir / "home"
        home.mkdir()
        result = _job(csv, home)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--cols", type=int, default=20)
    parser.add_argument(
        "--precision", action="store_true", help="run the float32 measurements instead"
    )
    args = parser.parse_args()
    if args.precision:
        _rf_scaler_experiment()
        _hgb_experiment()
        return 0
    bench(args.rows, args.cols)
    return 0


if __name__ == "__main__":
    sys.exit(main())
