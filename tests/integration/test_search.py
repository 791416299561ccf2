"""Hyperparameter search and promote-if-better through the real server (local backend).

Searches here are real and small: decision trees and tiny forests on
breast_cancer (569 rows), 3 folds, so a trial takes milliseconds of fitting
and the test measures mostly the trial machinery.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from highpeaks_ml.client import Client
from highpeaks_ml.v1 import search_pb2, train_pb2
from tests.conftest import ROOT, ServerProcess

SUCCEEDED = train_pb2.JOB_STATE_SUCCEEDED
FAILED = train_pb2.JOB_STATE_FAILED
CANCELLED = train_pb2.JOB_STATE_CANCELLED
RUNNING = train_pb2.JOB_STATE_RUNNING
TRIAL_OK = search_pb2.TRIAL_STATE_SUCCEEDED
DATA = "builtin:breast_cancer"
C_SPACE = {"C": {"low": 0.01, "high": 100.0, "log": True}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("search") / "home"
    home.mkdir()
    proc = ServerProcess(home, "--training-workers", "2", "--max-search-trials", "40")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, timeout=60) as c:
        yield c


def _search(client: Client, model: str, search: dict[str, Any], **kw: Any) -> Any:
    """Start a search job and wait for its end; returns (final job, progress snapshots)."""
    job = client.start_training(
        model, kw.pop("algorithm", "decision_tree"), DATA, search=search, **kw
    )
    seen = [snap for snap in client.watch_job(job.id, timeout=300)]
    return seen[-1], seen


def _params(trial: Any) -> dict[str, Any]:
    return {k: _int(v) for k, v in json_format.MessageToDict(trial.params).items()}


def _int(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def test_random_search_beats_the_default_and_records_every_trial(client: Client) -> None:
    search = {
        "strategy": "random",
        "max_trials": 8,
        "folds": 3,
        "seed": 3,
        "parallelism": 2,
        "space": C_SPACE,
    }
    job, seen = _search(client, "searched", search, algorithm="logistic_regression")
    assert job.state == SUCCEEDED, job.error
    # WatchTrainingJob streamed the search: stage SEARCHING with trials counting up.
    searching = [s for s in seen if s.stage == train_pb2.JOB_STAGE_SEARCHING]
    assert searching, "no SEARCHING snapshot"
    done = [s.search.trials_done for s in searching]
    assert done == sorted(done) and done[-1] >= 1
    assert job.search.trials_total == 8 and job.search.trials_done == 8
    assert job.search.metric == "accuracy" and job.search.HasField("best_score")
    assert job.placement.backend == "local"

    version = client.get_version("searched", job.model_version)
    record = version.search
    assert record.strategy == search_pb2.SEARCH_STRATEGY_RANDOM
    assert record.folds == 3 and record.metric == "accuracy" and record.seed == 3
    assert len(record.trials) == 8 and [t.number for t in record.trials] == list(range(8))
    for t in record.trials:
        assert t.state == TRIAL_OK, t.error
        assert len(t.fold_scores) == 3 and t.seconds > 0
        assert t.mean == pytest.approx(statistics.fmean(t.fold_scores))
        assert t.std == pytest.approx(statistics.pstdev(t.fold_scores))
        params = _params(t)
        assert set(params) == {"C"} and 0.01 <= params["C"] <= 100.0
    best = max(record.trials, key=lambda t: (t.mean, -t.number))
    assert record.best_trial == best.number and record.best_score == best.mean
    assert job.search.best_score == pytest.approx(best.mean)
    # The registered model is the winner, refit: its hyperparameters are the winner's.
    hyper = {k: _int(v) for k, v in json_format.MessageToDict(version.hyperparameters).items()}
    assert {k: hyper[k] for k in _params(best)} == _params(best)
    assert version.metrics["accuracy"] > 0.8

    # The catalogue default (C = 1), scored on the same folds in the same
    # server: a one-point grid.
    default_search = {
        "strategy": "grid",
        "folds": 3,
        "seed": 3,
        "space": {"C": [1.0]},
    }
    default_job, _ = _search(
        client, "searched-default", default_search, algorithm="logistic_regression"
    )
    assert default_job.state == SUCCEEDED, default_job.error
    default_score = client.get_version("searched-default", default_job.model_version).search
    assert len(default_score.trials) == 1
    assert record.best_score >= default_score.best_score


def test_grid_search_runs_exactly_the_grid(client: Client) -> None:
    grid = {"max_depth": [2, 4, None], "min_samples_leaf": [1, 10]}
    job, _ = _search(client, "gridded", {"strategy": "grid", "folds": 2, "space": grid})
    assert job.state == SUCCEEDED, job.error
    assert job.search.trials_total == 6 and job.search.trials_done == 6
    record = client.get_version("gridded", job.model_version).search
    tried = [tuple(sorted(_params(t).items())) for t in record.trials]
    expected = [
        tuple(sorted(zip(grid, combo, strict=True))) for combo in itertools.product(*grid.values())
    ]
    assert sorted(tried, key=repr) == sorted(expected, key=repr)
    assert len(set(tried)) == 6
    # The version's evaluation report draws the trials: score against each
    # searched hyperparameter, in the JSON, the figures and the HTML page.
    info, data = client.get_report("gridded", fmt="json")
    doc = json.loads(data)
    assert doc["trials"]["count"] == 6
    assert doc["trials"]["params"] == ["max_depth", "min_samples_leaf"]
    by_number = {t.number: t for t in record.trials}
    for t in doc["trials"]["trials"]:
        assert t["params"] == _params(by_number[t["number"]])
        assert t["score"] == pytest.approx(by_number[t["number"]].mean)
    assert {"trials-max-depth", "trials-min-samples-leaf"} <= set(info.figures)
    _info, png = client.get_report("gridded", fmt="figure", figure="trials-max-depth")
    assert png.startswith(b"\x89PNG")
    _info, page = client.get_report("gridded")
    assert b'alt="Trials: max_depth"' in page and b'alt="Trials: min_samples_leaf"' in page


def test_cancelled_search_publishes_nothing(client: Client) -> None:
    # Slow trials (big forests on every fold) so that the cancel lands mid-search.
    search = {
        "strategy": "random",
        "max_trials": 20,
        "folds": 5,
        "parallelism": 2,
        "space": {"n_estimators": [600, 800], "min_samples_leaf": {"low": 1, "high": 5}},
    }
    job = client.start_training("cancelled-search", "random_forest", DATA, search=search)
    for snap in client.watch_job(job.id, timeout=120):
        if snap.stage == train_pb2.JOB_STAGE_SEARCHING and snap.search.trials_running > 0:
            break
        assert snap.state in (train_pb2.JOB_STATE_QUEUED, RUNNING), snap.error
    cancelled = client.cancel_job(job.id)
    assert cancelled.state == CANCELLED
    assert cancelled.search.trials_running == 0
    assert cancelled.search.trials_done < 20
    with pytest.raises(grpc.RpcError) as err:
        client.get_model("cancelled-search")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # The workers are usable again: a small job after it succeeds.
    after = client.start_training("after-cancel", "decision_tree", "builtin:iris")
    assert client.wait_job(after.id, timeout=120).state == SUCCEEDED


def test_search_whose_every_trial_fails_fails_with_the_first_reason(client: Client) -> None:
    # k of k-NN above the rows each fold fits on: every trial fails in its worker.
    search = {
        "strategy": "random",
        "max_trials": 3,
        "folds": 3,
        "space": {"n_neighbors": {"low": 500, "high": 900}},
    }
    job = client.start_training("all-fail", "knn", "builtin:iris", search=search)
    final = client.wait_job(job.id, timeout=120)
    assert final.state == FAILED
    assert "every trial of the search failed (3 trials)" in final.error
    assert "n_neighbors" in final.error and "exceeds" in final.error
    assert final.search.trials_failed == 3
    with pytest.raises(grpc.RpcError):
        client.get_model("all-fail")


@pytest.mark.parametrize(
    ("algorithm", "search", "words"),
    [
        ("decision_tree", {"space": {"max_depthh": [2]}}, "unknown hyperparameter"),
        ("decision_tree", {"space": {"max_depth": {"low": 0, "high": 8}}}, "must be >= 1"),
        ("decision_tree", {"space": {"max_depth": {"low": 2, "high": 500}}}, "must be <= 100"),
        ("decision_tree", {"strategy": "grid"}, "a grid needs at least one"),
        (
            "decision_tree",
            {"strategy": "grid", "space": {"max_depth": []}},
            "list of values is empty",
        ),
        (
            "decision_tree",
            {"strategy": "grid", "space": {"max_depth": {"low": 1, "high": 3}}},
            "needs a list of values",
        ),
        ("decision_tree", {"max_trials": 41}, "cap of 40"),
        (
            "decision_tree",
            {
                "strategy": "grid",
                "space": {"max_depth": list(range(1, 8)), "min_samples_leaf": list(range(1, 8))},
            },
            "49 combinations",
        ),
        ("decision_tree", {"folds": 1}, "between 2 and 20"),
        ("decision_tree", {"metric": "r2"}, "not a classification metric"),
        ("knn", {"space": {"weights": {"low": 1, "high": 2}}}, "list them"),
        (
            "logistic_regression",
            {"space": {"C": {"low": 0.0, "high": 1.0, "log": True}}},
            "must be >= 1e-06",
        ),
    ],
)
def test_bad_searches_are_refused_before_a_job_exists(
    client: Client, algorithm: str, search: dict[str, Any], words: str
) -> None:
    before = len(client.list_jobs(limit=1000))
    with pytest.raises(grpc.RpcError) as err:
        client.start_training("refused", algorithm, DATA, search=search)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (err.value.details() or ""), err.value.details()
    assert len(client.list_jobs(limit=1000)) == before


def test_more_folds_than_rows_per_class_is_refused(client: Client) -> None:
    rows = [{"x": float(i), "target": "a" if i < 16 else "b"} for i in range(20)]
    with pytest.raises(grpc.RpcError) as err:
        client.start_training("tiny", "decision_tree", rows, search={"folds": 10})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "per class" in (err.value.details() or "")


def test_promote_if_better_moves_production_only_for_a_better_model(client: Client) -> None:
    name = "promoted"
    # No holder yet: the alias is set.
    first = client.wait_job(
        client.start_training(
            name, "decision_tree", DATA, {"max_depth": 1}, promote_if_better="production"
        ).id,
        timeout=120,
    )
    assert first.state == SUCCEEDED, first.error
    assert first.promotion.promoted and first.promotion.current_version == 0
    assert client.get_model(name).aliases["production"] == first.model_version

    # Worse (a near-constant model): production stays, both scores recorded.
    worse = client.wait_job(
        client.start_training(
            name, "logistic_regression", DATA, {"C": 1e-6}, promote_if_better="production"
        ).id,
        timeout=120,
    )
    assert worse.state == SUCCEEDED, worse.error
    p = worse.promotion
    assert not p.promoted and p.metric == "accuracy"
    assert p.current_version == first.model_version and p.HasField("current_score")
    assert p.new_score < p.current_score
    assert client.get_model(name).aliases["production"] == first.model_version
    stored = client.get_version(name, worse.model_version).promotion
    assert stored.reason == p.reason and not stored.promoted

    # Better (a forest, found by a small search): production moves to it.
    better = client.wait_job(
        client.start_training(
            name,
            "random_forest",
            DATA,
            search={"max_trials": 2, "folds": 3, "space": {"n_estimators": [20, 40]}},
            promote_if_better="production",
        ).id,
        timeout=300,
    )
    assert better.state == SUCCEEDED, better.error
    p = better.promotion
    assert p.promoted and p.current_version == first.model_version
    assert p.new_score > p.current_score
    assert client.get_model(name).aliases["production"] == better.model_version
    assert client.get_version(name, alias="production").promotion.promoted


def _cli(server: ServerProcess, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "highpeaks_ml.cli", *argv, "--target", server.target],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def test_cli_search_with_flags_and_a_search_file(server: ServerProcess, tmp_path: Path) -> None:
    run = _cli(
        server,
        "train",
        "--model", "cli-search",
        "--algorithm", "logistic_regression",
        "--dataset", DATA,
        "--search", "random",
        "--trials", "4",
        "--folds", "3",
        "--param-range", "C=0.01:100:log",
        "--promote-if-better", "production",
        "--wait",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    # Not a terminal: plain progress lines, then the outcome.
    assert "trials 4/4" in run.stderr or "trials 3/4" in run.stderr, run.stderr
    assert "search: 4 trials (0 failed), best accuracy" in run.stdout, run.stdout
    assert "alias production moved to this version: no version held the alias" in run.stdout

    search_file = tmp_path / "search.yaml"
    search_file.write_text(
        "strategy: grid\nfolds: 3\nspace:\n  C: [0.1, 1.0]\n  fit_intercept: [true]\n"
    )
    run = _cli(
        server,
        "train", "--model", "cli-search", "--algorithm", "logistic_regression",
        "--dataset", DATA, "--search-file", str(search_file), "--wait",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "search: 2 trials (0 failed)" in run.stdout, run.stdout

    shown = _cli(server, "models", "show", "cli-search", "--version", "2")
    assert shown.returncode == 0, shown.stderr
    assert "search: grid, 2 trials (0 not succeeded), 3-fold accuracy" in shown.stdout
    assert shown.stdout.count("    #") == 2, shown.stdout
    shown = _cli(server, "models", "show", "cli-search", "--version", "1")
    assert "promote-if-better production: moved here: no version held the alias" in shown.stdout

    bad = _cli(server, "train", "--model", "x", "--algorithm", "knn", "--param-range", "k=1:x")
    assert bad.returncode == 2 and "LOW and HIGH must be numbers" in bad.stderr
