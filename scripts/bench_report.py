"""How much the evaluation report adds to a training job (issue: at most 15%).

Trains a random forest (catalogue defaults) on a synthetic ``--rows`` x ``--features``
classification table with ``pipeline.train`` (fit, evaluate, export, verify), then
builds the report and profile (``report.for_job``) and prints both times and the
ratio. Run: ``.venv/bin/python scripts/bench_report.py [--rows 100000 --features 20]``.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--task", choices=("classification", "regression"), default="classification")
    ap.add_argument("--n-jobs", type=int, default=1)
    args = ap.parse_args()

    from sklearn.datasets import make_classification, make_regression

    from highpeaks_ml.training import pipeline, report, worker
    from highpeaks_ml.training.catalogue import get_algorithm

    worker.warm_up()  # a worker imports its libraries before its first job
    if args.task == "classification":
        X, y = make_classification(
            args.rows, args.features, n_informative=10, n_classes=3, random_state=0
        )
    else:
        X, y = make_regression(args.rows, args.features, n_informative=10, random_state=0)
    cols = [f"x{i}" for i in range(args.features)]
    frame = pd.DataFrame(X, columns=cols)
    frame["target"] = y
    algo = get_algorithm("random_forest")
    started = time.perf_counter()
    trained = pipeline.train(
        frame,
        algorithm=algo,
        task=args.task,
        params=algo.validate(args.task, {}),
        target="target",
        features=[(c, "numeric") for c in cols],
        test_size=0.2,
        seed=0,
        n_jobs=args.n_jobs,
    )
    train_s = time.perf_counter() - started
    spec = SimpleNamespace(model_name="bench", algorithm="random_forest", seed=0, job_id="bench")
    started = time.perf_counter()
    artifacts, problem = report.for_job(spec, trained)
    report_s = time.perf_counter() - started
    assert not problem, problem
    size = sum(len(v) for v in artifacts.values())
    print(
        f"{args.rows}x{args.features} random forest ({args.task}, n_jobs={args.n_jobs}):"
        f" train+export+verify {train_s:.1f} s, report+profile {report_s:.1f} s"
        f" (+{100 * report_s / train_s:.1f}%), {len(artifacts)} artifacts, {size / 1e6:.2f} MB"
        f" [{np.__name__} {np.__version__}]"
    )


if __name__ == "__main__":
    main()
