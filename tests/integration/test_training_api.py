"""TrainService through the real server subprocess: datasets, jobs, workers, crashes, restarts.

Training here is real (small data); a "slow" job is a 1000-tree random forest
on the digits data, which runs long enough to be watched, cancelled, timed
out or killed, and is always stopped early.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2

from highpeaks_ml.client import Client
from highpeaks_ml.errors import NotFound
from highpeaks_ml.registry.local import LocalModelStore
from highpeaks_ml.training.pipeline import onnx_feed
from highpeaks_ml.v1 import train_pb2
from tests.conftest import ROOT, ServerProcess

SLOW = {"n_estimators": 1000}
SUCCEEDED = train_pb2.JOB_STATE_SUCCEEDED
FAILED = train_pb2.JOB_STATE_FAILED
CANCELLED = train_pb2.JOB_STATE_CANCELLED
RUNNING = train_pb2.JOB_STATE_RUNNING
QUEUED = train_pb2.JOB_STATE_QUEUED
MAX_DATASET_BYTES = 200_000


def _start(tmp_path_factory: pytest.TempPathFactory, *extra: str) -> ServerProcess:
    home = tmp_path_factory.mktemp("training") / "home"
    home.mkdir()
    return ServerProcess(home, *extra)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = _start(
        tmp_path_factory, "--training-workers", "2", "--max-dataset-bytes", str(MAX_DATASET_BYTES)
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, timeout=60) as c:
        yield c


def _home(server: ServerProcess) -> Path:
    return Path(server.proc.args[server.proc.args.index("--home") + 1])


def _record(server: ServerProcess, job_id: str) -> dict:
    return json.loads((_home(server) / "jobs" / f"{job_id}.json").read_text())


def _wait_stage(client: Client, job_id: str, stage: int = train_pb2.JOB_STAGE_FITTING) -> None:
    for job in client.watch_job(job_id, timeout=120):
        if job.state == RUNNING and job.stage == stage:
            return
        assert job.state in (QUEUED, RUNNING), (job.state, job.error)
    raise AssertionError("the job ended before reaching the stage")


def _mixed_csv(path: Path, rows: int = 300) -> Path:
    rng = np.random.default_rng(1)
    lines = ["amount,region,tenure,churn"]
    for _ in range(rows):
        amount = rng.normal(100, 30)
        region = rng.choice(["north", "south", "east"])
        tenure = int(rng.integers(1, 60))
        churn = "yes" if amount / 30 + (region == "north") * 1.5 + rng.normal(0, 0.5) > 4 else "no"
        lines.append(f"{amount:.3f},{region},{tenure},{churn}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_algorithms_are_listed_with_bounds(client):
    algos = {a.name: a for a in client.list_algorithms()}
    assert set(algos) >= {"logistic_regression", "random_forest", "hist_gradient_boosting", "mlp"}
    rf = {h.name: h for h in algos["random_forest"].hyperparameters}
    assert rf["n_estimators"].type == train_pb2.PARAM_TYPE_INT
    assert (rf["n_estimators"].minimum, rf["n_estimators"].maximum) == (1, 1000)
    assert rf["n_estimators"].default.number_value == 100
    assert rf["max_depth"].nullable and "n_jobs" not in rf
    assert not algos["random_forest"].scales_numeric_features
    assert algos["svm"].scales_numeric_features


def test_upload_csv_with_categorical_train_and_watch(client, server, tmp_path):
    path = _mixed_csv(tmp_path / "churn.csv")
    ds = client.upload_dataset(path, name="churn", target="churn", chunk_size=1000)
    assert ds.rows == 300 and ds.name == "churn" and len(ds.id) == 64
    types = {c.name: c.type for c in ds.columns}
    assert types == {
        "amount": train_pb2.COLUMN_TYPE_NUMERIC,
        "region": train_pb2.COLUMN_TYPE_CATEGORICAL,
        "tenure": train_pb2.COLUMN_TYPE_NUMERIC,
        "churn": train_pb2.COLUMN_TYPE_CATEGORICAL,
    }
    assert client.get_dataset(ds.id) == ds
    assert ds.id in [d.id for d in client.list_datasets()]
    assert client.upload_dataset(path).id == ds.id  # content-addressed

    job = client.start_training(
        "churn", "random_forest", ds.id, {"n_estimators": 25}, target="churn", aliases=["prod"]
    )
    assert job.state == QUEUED and job.request.dataset.dataset_id == ds.id
    seen = [(j.state, j.stage) for j in client.watch_job(job.id, timeout=120)]
    final = client.get_job(job.id)
    assert final.state == SUCCEEDED, final.error
    stages = [stage for state, stage in seen if state == RUNNING]
    assert stages == sorted(set(stages))  # each stage once, in order
    assert train_pb2.JOB_STAGE_VERIFYING in stages and train_pb2.JOB_STAGE_REGISTERING in stages
    assert final.model_version == 1 and final.task == 1
    assert set(final.metrics) == {"accuracy", "f1_macro", "log_loss", "roc_auc"}

    store = LocalModelStore(_home(server))
    meta = store.resolve("churn", alias="prod")
    assert meta.version == 1 and meta.algorithm == "random_forest" and meta.job_id == job.id
    assert meta.hyperparameters["n_estimators"] == 25 and "max_depth" in meta.hyperparameters
    assert meta.dataset["sha256"] == ds.id and meta.dataset["rows"] == 300
    assert meta.dataset["train_rows"] + meta.dataset["test_rows"] == 300
    assert meta.verification["passed"] and meta.class_labels == ("no", "yes")
    assert [f.name for f in meta.features] == ["amount", "region", "tenure"]
    assert meta.features[1].categories == ("east", "north", "south")
    assert set(meta.library_versions) >= {"scikit-learn", "skl2onnx", "onnx", "onnxruntime"}

    # The registered graph predicts from raw rows, preprocessing inside.
    import onnxruntime as ort
    import pandas as pd

    from highpeaks_ml.training.pipeline import PreparedData

    sess = ort.InferenceSession(store.read_model("churn", 1), providers=["CPUExecutionProvider"])
    rows = pd.DataFrame({"amount": [160.0, 60.0], "region": ["north", "west"], "tenure": [3, 40]})
    data = PreparedData(
        X=rows,
        y=np.array([]),
        task="classification",
        features=[("amount", "numeric"), ("region", "categorical"), ("tenure", "numeric")],
        input_names=["amount", "region", "tenure"],
    )
    labels, proba = sess.run(None, onnx_feed(rows, data))
    assert list(labels) == ["yes", "no"] and proba.shape == (2, 2)


def test_two_concurrent_jobs_on_one_name_get_versions_1_and_2(client, server):
    jobs = [
        client.start_training("twins", "logistic_regression", "builtin:iris", seed=s)
        for s in (1, 2)
    ]
    finals = [client.wait_job(j.id, timeout=120) for j in jobs]
    assert [f.state for f in finals] == [SUCCEEDED, SUCCEEDED], [f.error for f in finals]
    assert sorted(f.model_version for f in finals) == [1, 2]
    versions = LocalModelStore(_home(server)).get_model("twins").versions
    assert [v.version for v in versions] == [1, 2]


def test_idempotency_key_returns_the_same_job(client):
    first = client.start_training(
        "idem", "decision_tree", "builtin:wine", idempotency_key="order-42"
    )
    again = client.start_training(
        "idem", "decision_tree", "builtin:wine", idempotency_key="order-42"
    )
    assert again.id == first.id
    assert client.wait_job(first.id, timeout=120).model_version == 1
    third = client.start_training(
        "idem", "decision_tree", "builtin:wine", idempotency_key="order-42"
    )
    assert third.id == first.id and third.state == SUCCEEDED
    assert len(client.list_jobs(model="idem")) == 1


def test_cancel_running_and_queued_jobs_publishes_nothing(client, server):
    slow = [
        client.start_training("cancelled", "random_forest", "builtin:digits", SLOW)
        for _ in range(2)
    ]
    for job in slow:
        _wait_stage(client, job.id)
    queued = client.start_training("cancelled", "logistic_regression", "builtin:iris")
    assert client.get_job(queued.id).state == QUEUED  # both workers are busy
    assert client.cancel_job(queued.id).state == CANCELLED

    pid = _record(server, slow[0].id)["worker_pid"]
    done = client.cancel_job(slow[0].id)
    assert done.state == CANCELLED and done.error == "cancelled by a caller"
    assert _gone(pid)
    with pytest.raises(grpc.RpcError) as err:
        client.cancel_job(slow[0].id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # A watcher that goes away ends its stream cleanly; the server carries on.
    stream = client.train.WatchTrainingJob(train_pb2.WatchTrainingJobRequest(id=slow[1].id))
    assert next(stream).id == slow[1].id
    stream.cancel()
    with pytest.raises(grpc.RpcError) as err:
        next(stream)
    assert err.value.code() == grpc.StatusCode.CANCELLED
    assert client.health() == "SERVING"
    assert client.cancel_job(slow[1].id).state == CANCELLED
    assert [j.state for j in client.watch_job(slow[1].id, timeout=10)] == [CANCELLED]

    with pytest.raises(NotFound):
        LocalModelStore(_home(server)).get_model("cancelled")
    # The pool is whole again: the next job runs.
    again = client.start_training("after-cancel", "knn", "builtin:iris")
    assert client.wait_job(again.id, timeout=120).state == SUCCEEDED


def _gone(pid: int, wait_s: float = 10.0) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_worker_killed_mid_job_fails_the_job_and_server_keeps_serving(client, server):
    job = client.start_training("killed", "random_forest", "builtin:digits", SLOW)
    _wait_stage(client, job.id)
    os.kill(_record(server, job.id)["worker_pid"], signal.SIGKILL)
    final = client.wait_job(job.id, timeout=60)
    assert final.state == FAILED
    assert "killed by SIGKILL" in final.error and "nothing was published" in final.error
    assert client.health() == "SERVING"
    after = client.start_training("killed", "logistic_regression", "builtin:iris")
    assert client.wait_job(after.id, timeout=120).model_version == 1


def test_time_limit_fails_the_job(client):
    job = client.start_training(
        "too-slow", "random_forest", "builtin:digits", SLOW, time_limit_s=1.0
    )
    final = client.wait_job(job.id, timeout=60)
    assert final.state == FAILED
    assert final.error == "time limit of 1 s exceeded while fitting; nothing was published"


def _rows(n: int, target) -> list[dict]:
    return [{"x": float(i), "c": "a" if i % 2 else "b", "y": target(i)} for i in range(n)]


HOSTILE = [
    ({"model": "../x"}, "invalid model name"),
    ({"model": "A"}, "invalid model name"),
    ({"model": "x" * 1000}, "invalid model name"),
    ({"model": "a\x00b"}, "invalid model name"),
    ({"algorithm": "no_such_algorithm"}, "unknown algorithm"),
    ({"params": {"n_jobs": -1}}, "unknown hyperparameter 'n_jobs'"),
    ({"params": {"n_estimators": 10**9}}, "'n_estimators' of 'random_forest' must be <= 1000"),
    ({"params": {"max_depth": "deep"}}, "'max_depth' of 'random_forest' must be a number"),
    ({"dataset": "builtin:mnist"}, "unknown built-in dataset 'mnist'"),
    ({"target": "species"}, "target column 'species' is not in the dataset"),
    ({"test_size": 0.9}, "test_size must be in (0, 0.5]"),
    ({"time_limit_s": -1.0}, "time_limit_seconds must be positive"),
    ({"aliases": ["latest"]}, "invalid alias 'latest'"),
    ({"aliases": ["../prod"]}, "invalid alias"),
    ({"idempotency_key": "k" * 200}, "idempotency_key is longer than 128"),
    ({"features": ["target"]}, "feature column 'target' is the target column"),
    ({"features": ["nope"]}, "feature column 'nope' is not in the dataset"),
    ({"task": "regression", "algorithm": "logistic_regression"}, "supports classification only"),
    ({"dataset": _rows(40, lambda i: "same")}, "target column 'y' is constant"),
    ({"dataset": _rows(40, lambda i: None if i == 3 else i % 2)}, "has 1 missing"),
    ({"dataset": _rows(6, lambda i: i % 2)}, "too few rows for the split"),
    ({"dataset": [{"x": 1, "y": 1}, {"x": 2}]}, "ragged rows: inline row 2 lacks 'y'"),
    ({"dataset": [{"x": {"deep": 1}, "y": 1}]}, "only numbers, strings and null"),
    ({"algorithm": "knn", "params": {"n_neighbors": 500}}, "exceeds the 120 training rows"),
]


def test_hostile_requests_are_invalid_argument_and_leave_nothing(client, server):
    jobs_dir = _home(server) / "jobs"
    before = sorted(os.listdir(jobs_dir))
    for change, fragment in HOSTILE:
        kw = {
            "model": "hostile",
            "algorithm": "random_forest",
            "dataset": "builtin:iris",
            "params": {},
            "target": None,
            **change,
        }
        dataset = kw.pop("dataset")
        if isinstance(dataset, list) and "y" in dataset[0]:
            kw["target"] = kw["target"] or "y"
        with pytest.raises(grpc.RpcError) as err:
            client.start_training(
                kw.pop("model"),
                kw.pop("algorithm"),
                dataset,
                kw.pop("params"),
                target=kw.pop("target"),
                **kw,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (change, err.value.details())
        assert fragment in err.value.details(), (change, err.value.details())
    assert sorted(os.listdir(jobs_dir)) == before
    assert not client.list_jobs(model="hostile")


def test_unknown_dataset_and_job_are_not_found(client):
    for call in (
        lambda: client.start_training("m", "knn", "f" * 64),
        lambda: client.get_dataset("f" * 64),
        lambda: client.get_job("nope"),
        lambda: client.cancel_job("nope"),
        lambda: list(client.watch_job("nope")),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        client.get_dataset("../../etc/passwd")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _upload_raw(client: Client, messages: list[train_pb2.UploadDatasetRequest]):
    return client.train.UploadDataset(iter(messages), timeout=30)


def _info(**kw) -> train_pb2.UploadDatasetRequest:
    return train_pb2.UploadDatasetRequest(info=train_pb2.DatasetUploadInfo(**kw))


def _chunk(data: bytes) -> train_pb2.UploadDatasetRequest:
    return train_pb2.UploadDatasetRequest(chunk=data)


def test_upload_validation(client, server):
    datasets_dir = _home(server) / "datasets"
    before = sorted(os.listdir(datasets_dir))
    cases = [
        ([_info()], grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        ([_info(), _chunk(b"a,b\n1,2\n3\n")], grpc.StatusCode.INVALID_ARGUMENT, "ragged rows"),
        ([_chunk(b"a,b\n1,2\n")], grpc.StatusCode.INVALID_ARGUMENT, "first UploadDataset"),
        ([_info(), _info()], grpc.StatusCode.INVALID_ARGUMENT, "only the first"),
        ([_info(name="../x")], grpc.StatusCode.INVALID_ARGUMENT, "invalid dataset name"),
        (
            [_info(target_column="b"), _chunk(b"a,b\n1,2\n2,2\n")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "target column 'b' is constant",
        ),
        (
            [_info(sha256="0" * 64), _chunk(b"a,b\n1,2\n")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "sha256 mismatch",
        ),
        (
            [_info(), *[_chunk(b"1,2\n" * 10_000)] * 10],
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"larger than the limit of {MAX_DATASET_BYTES} bytes",
        ),
    ]
    for messages, code, fragment in cases:
        with pytest.raises(grpc.RpcError) as err:
            _upload_raw(client, messages)
        assert err.value.code() == code, (fragment, err.value.details())
        assert fragment in err.value.details()
        assert str(_home(server)) not in err.value.details()
    assert sorted(os.listdir(datasets_dir)) == before
    assert not [e for e in os.listdir(_home(server) / "tmp") if e.startswith("upload-")]


def test_inline_rows_train(client, server):
    rows = [{"x": float(i), "colour": "red" if i % 3 else "blue", "y": i % 2} for i in range(60)]
    job = client.start_training("inline", "hist_gradient_boosting", rows, target="y")
    assert job.request.dataset.WhichOneof("source") == "inline"
    final = client.wait_job(job.id, timeout=120)
    assert final.state == SUCCEEDED, final.error
    meta = LocalModelStore(_home(server)).resolve("inline")
    assert meta.dataset["source"] == "inline" and meta.dataset["rows"] == 60
    assert not (_home(server) / "jobs" / f"{job.id}.csv").exists()  # dropped once done


def _cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "highpeaks_ml.cli", *args, "--target", server.target],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )


def test_cli_train_wait_end_to_end(server, tmp_path):
    path = _mixed_csv(tmp_path / "cli.csv", rows=120)
    up = _cli(server, "datasets", "upload", str(path), "--target-column", "churn")
    assert up.returncode == 0, up.stderr
    dataset_id = up.stdout.strip()
    assert len(dataset_id) == 64

    out = _cli(
        server,
        "train",
        "--model", "cli-model",
        "--algorithm", "random_forest",
        "--dataset", dataset_id,
        "--target-column", "churn",
        "--param", "n_estimators=15",
        "--param", "max_depth=null",
        "--alias", "staging",
        "--wait",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "model cli-model version 1" in out.stdout and "accuracy" in out.stdout
    for stage in ("fitting", "verifying", "registering", "SUCCEEDED"):
        assert stage in out.stderr

    # A CSV file as --dataset is uploaded first; this one has a class with a
    # single row, which only the worker can see: the job FAILS, exit code 1.
    lonely = tmp_path / "lonely.csv"
    lonely.write_text(
        "x,y\n" + "".join(f"{i},{'a' if i % 2 else 'b'}\n" for i in range(30)) + "99,z\n"
    )
    failed = _cli(
        server, "train", "--model", "cli-model", "--algorithm", "logistic_regression",
        "--dataset", str(lonely), "--target-column", "y", "--wait",
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    assert "uploaded lonely.csv" in failed.stderr and "FAILED" in failed.stderr
    assert "class 'z' has only 1 row" in failed.stderr

    bad = _cli(server, "train", "--model", "cli-model", "--algorithm", "random_forest",
               "--param", "n_jobs=4", "--wait")  # fmt: skip
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "n_jobs" in bad.stderr

    listed = _cli(server, "jobs", "list", "--model", "cli-model", "--json")
    assert listed.returncode == 0
    jobs = json.loads(listed.stdout)
    assert [j["state"] for j in jobs] == ["JOB_STATE_FAILED", "JOB_STATE_SUCCEEDED"]
    shown = _cli(server, "jobs", "show", jobs[-1]["id"])
    assert shown.returncode == 0 and "SUCCEEDED" in shown.stdout and "version:    1" in shown.stdout


# --- separate servers: restart, shutdown, demo -------------------------------------


def test_demo_restart_recovery_and_shutdown(tmp_path_factory):
    # First start on an empty home with --demo: the iris model gets trained.
    server = _start(tmp_path_factory, "--training-workers", "1", "--demo")
    home = _home(server)
    try:
        with Client(server.target, timeout=60) as c:
            deadline = time.monotonic() + 60
            while not (demo := c.list_jobs(model="iris")) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert c.wait_job(demo[0].id, timeout=120).state == SUCCEEDED
            meta = LocalModelStore(home).resolve("iris", alias="production")
            assert meta.version == 1 and meta.algorithm == "random_forest"

            running = c.start_training("recovered", "random_forest", "builtin:digits", SLOW)
            _wait_stage(c, running.id)
            queued = c.start_training("recovered", "logistic_regression", "builtin:iris")
            assert c.get_job(queued.id).state == QUEUED
            # Inline rows wait beside the queued job's record until it runs.
            rows = [{"x": float(i), "y": i % 2} for i in range(40)]
            inline = c.start_training("recovered-inline", "logistic_regression", rows, target="y")
            assert c.get_job(inline.id).state == QUEUED
            assert (home / "jobs" / f"{inline.id}.csv").exists()
        worker = _record(server, running.id)["worker_pid"]
        server.terminate(signal.SIGKILL)  # the server dies mid-job
        assert _gone(worker)  # and its worker with it
    finally:
        server.stop()

    server = ServerProcess(home, "--demo")
    try:
        with Client(server.target, timeout=60) as c:
            interrupted = c.get_job(running.id)
            assert interrupted.state == FAILED
            assert "interrupted by a server restart" in interrupted.error
            resumed = c.wait_job(queued.id, timeout=120)
            assert resumed.state == SUCCEEDED and resumed.model_version == 1
            resumed_inline = c.wait_job(inline.id, timeout=120)
            assert resumed_inline.state == SUCCEEDED, resumed_inline.error
            assert not (home / "jobs" / f"{inline.id}.csv").exists()
            assert not [e for e in os.listdir(home / "tmp") if e.startswith("job-")]
            assert len(c.list_jobs(model="iris")) == 1  # a model exists: no second demo

            shut = c.start_training("recovered", "random_forest", "builtin:digits", SLOW)
            _wait_stage(c, shut.id)
        assert server.terminate(signal.SIGTERM) == 0
    finally:
        server.stop()
    record = json.loads((home / "jobs" / f"{shut.id}.json").read_text())
    assert (record["state"], record["error"]) == ("CANCELLED", "server shutting down")
    assert [v.version for v in LocalModelStore(home).get_model("recovered").versions] == [1]


def test_struct_values_for_hyperparameters_round_trip(client):
    # Hyperparameters arrive as a Struct (numbers are doubles): 7.0 is the int 7.
    params = struct_pb2.Struct()
    params.update({"n_estimators": 7, "bootstrap": False, "max_depth": None})
    job = client.train.StartTraining(
        train_pb2.StartTrainingRequest(
            model_name="struct",
            algorithm="random_forest",
            hyperparameters=params,
            dataset=train_pb2.DatasetRef(builtin="iris"),
        ),
        timeout=30,
    )
    final = client.wait_job(job.id, timeout=120)
    assert final.state == SUCCEEDED, final.error


def test_created_by_is_the_authenticated_caller(tmp_path_factory, tmp_path):
    from highpeaks_ml.api.auth import ADMIN, PREDICT, TRAIN
    from tests.support import security as sec

    secret = b"s" * 40
    home = tmp_path_factory.mktemp("training-auth") / "home"
    home.mkdir()
    server = ServerProcess(home, env=sec.hs256_env(tmp_path, secret))
    try:
        claims = sec.claims(f"{PREDICT} {TRAIN} {ADMIN}", sub="alice")
        with Client(server.target, timeout=60, token=sec.token(secret, claims, "HS256")) as c:
            ds = c.upload_dataset(_mixed_csv(tmp_path / "a.csv", rows=60))
            assert ds.created_by == "alice"
            job = c.start_training("owned", "logistic_regression", "builtin:iris")
            assert job.created_by == "alice"
            assert c.wait_job(job.id, timeout=120).state == SUCCEEDED
        assert LocalModelStore(home).resolve("owned").created_by == "alice"
    finally:
        server.stop()


# --- dataset default target, idempotency conflicts, resources, placement ----------


def test_the_target_named_at_upload_is_the_default_target(client, server, tmp_path):
    path = _mixed_csv(tmp_path / "default-target.csv", rows=150)
    ds = client.upload_dataset(path, name="default-target", target="churn")
    assert ds.target_column == "churn"
    assert client.get_dataset(ds.id).target_column == "churn"
    implicit = client.start_training("default-target", "logistic_regression", ds.id)
    explicit = client.start_training(
        "default-target", "logistic_regression", ds.id, target="region"
    )
    # The same bytes uploaded again naming another column: that one is the default now.
    assert client.upload_dataset(path, target="region").target_column == "region"
    assert client.upload_dataset(path).target_column == "region"  # naming none keeps it
    after = client.start_training("default-target", "logistic_regression", ds.id, seed=1)
    targets = {}
    for job in (implicit, explicit, after):
        final = client.wait_job(job.id, timeout=120)
        assert final.state == SUCCEEDED, final.error
        # A fresh reader each time: one store's cache may be up to refresh_s behind
        # the server's publishes (a version landed right after the last read).
        store = LocalModelStore(_home(server))
        meta = store.resolve("default-target", version=final.model_version)
        targets[job.id] = (meta.dataset["target_column"], meta.class_labels)
    assert targets[implicit.id] == ("churn", ("no", "yes"))
    assert targets[explicit.id] == ("region", ("east", "north", "south"))
    assert targets[after.id][0] == "region"


def test_an_idempotency_key_reused_with_other_parameters_is_refused(client):
    first = client.start_training(
        "idem-conflict", "decision_tree", "builtin:wine", idempotency_key="order-7"
    )
    for other in (
        {"params": {"max_depth": 3}},
        {"dataset": "builtin:iris"},
        {"aliases": ["prod"]},
    ):
        kw = {"params": None, "dataset": "builtin:wine", **other}
        with pytest.raises(grpc.RpcError) as err:
            client.start_training(
                "idem-conflict",
                "decision_tree",
                kw.pop("dataset"),
                kw.pop("params"),
                idempotency_key="order-7",
                **kw,
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, other
        assert first.id in err.value.details() and "order-7" in err.value.details()
    same = client.start_training(
        "idem-conflict", "decision_tree", "builtin:wine", idempotency_key="order-7"
    )
    assert same.id == first.id
    # Inline rows count as parameters too.
    rows = _rows(40, lambda i: i % 2)
    inline = client.start_training("idem-rows", "knn", rows, target="y", idempotency_key="rows")
    assert client.start_training(
        "idem-rows", "knn", rows, target="y", idempotency_key="rows"
    ).id == (inline.id)
    changed = [dict(r) for r in rows]
    changed[0]["x"] = 99.0
    with pytest.raises(grpc.RpcError) as err:
        client.start_training("idem-rows", "knn", changed, target="y", idempotency_key="rows")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(client.list_jobs(model="idem-conflict")) == 1
    for job in (first, inline):
        assert client.wait_job(job.id, timeout=120).state == SUCCEEDED


def test_resources_and_placement_are_recorded(client, server):
    import socket

    job = client.start_training(
        "placed", "random_forest", "builtin:iris", {"n_estimators": 10}, cpus=2, memory_mb=1024
    )
    assert (job.resources.cpus, job.resources.memory_mb) == (2, 1024)
    assert not job.placement.backend  # not started yet
    final = client.wait_job(job.id, timeout=120)
    assert final.state == SUCCEEDED, final.error
    assert final.placement.backend == "local"
    assert final.placement.node == socket.gethostname()
    assert final.placement.worker.startswith("pid ")
    assert _record(server, job.id)["worker_pid"] == int(final.placement.worker.split()[1])
    default = client.start_training("placed", "knn", "builtin:iris")
    assert (default.resources.cpus, default.resources.memory_mb) == (1, 2048)  # the settings'
    for resources, fragment in (
        ({"cpus": 100_000}, "resources.cpus must be between 1 and"),
        ({"memory_mb": 10**9}, "resources.memory_mb must be between 64 and"),
        ({"memory_mb": 10}, "resources.memory_mb must be between 64 and"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            client.start_training("placed", "knn", "builtin:iris", **resources)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, resources
        assert fragment in err.value.details()
    assert client.wait_job(default.id, timeout=120).state == SUCCEEDED


def test_a_job_over_its_memory_bound_fails_and_the_rest_goes_on(client, server):
    # 10 hidden layers of 4096 units: about 1.2 GB of weights alone, far past 256 MiB.
    huge = {"hidden_units": 4096, "hidden_layers": 10, "max_iter": 1}
    hog = client.start_training("hog", "mlp", "builtin:iris", huge, memory_mb=256)
    neighbour = client.start_training("hog-neighbour", "logistic_regression", "builtin:iris")
    final = client.wait_job(hog.id, timeout=120)
    assert final.state == FAILED
    assert "memory limit of 256 MiB" in final.error and "nothing was published" in final.error
    assert client.wait_job(neighbour.id, timeout=120).state == SUCCEEDED
    assert client.health() == "SERVING"
    with pytest.raises(NotFound):
        LocalModelStore(_home(server)).get_model("hog")
    # The worker it ran on was replaced: the pool runs the next jobs.
    again = [client.start_training("hog-after", "knn", "builtin:iris", seed=s) for s in (1, 2)]
    assert [client.wait_job(j.id, timeout=120).state for j in again] == [SUCCEEDED] * 2
