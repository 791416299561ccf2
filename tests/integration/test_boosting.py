"""XGBoost and LightGBM through the real server: Train, Predict and the Open Inference Protocol.

Each algorithm is trained by the server's Train service (its worker process,
its export and verification) on builtin:iris, builtin:diabetes and an
uploaded CSV with text and numeric columns and gaps. The same job is then
fitted here with the project's pipeline (same data, features, seed and
hyperparameters: both libraries are deterministic with one thread and a
seed), and the server's answers (Predict, and OIP through tritonclient) must
equal that library model's within the training verification's tolerances.
Also: the training device is recorded and shown by ``models show``, an
unusable ``--training-device cuda`` stops start-up, and a missing library
is refused at submission.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest

from highpeaks_ml.client import Client
from highpeaks_ml.registry.local import LocalModelStore
from highpeaks_ml.training import datasets as ds
from highpeaks_ml.training import device as training_device
from highpeaks_ml.training import pipeline
from highpeaks_ml.training.catalogue import CLASSIFICATION, get_algorithm
from highpeaks_ml.v1 import train_pb2
from tests.conftest import ROOT, ServerProcess

tc = pytest.importorskip("tritonclient.grpc")

ALGORITHMS = ("xgboost", "lightgbm")
PARAMS = {"n_estimators": 8}
SEED = 5
TEST_SIZE = 0.25
CLI = (sys.executable, "-m", "highpeaks_ml.cli")
CUDA_TRAINING = ("--device", "cpu", "--training-device", "cuda")


def _mixed_csv(path: Path, rows: int = 240) -> Path:
    """Text and numeric columns with gaps, and a text target."""
    rng = np.random.default_rng(3)
    lines = ["amount,region,tenure,plan"]
    for _ in range(rows):
        amount = rng.normal(100, 30)
        region = str(rng.choice(["north", "south", "east"]))
        tenure = int(rng.integers(1, 60))
        score = amount / 30 + (region == "north") * 1.5 + rng.normal(0, 0.5)
        plan = "gold" if score > 4.2 else ("silver" if score > 3.2 else "basic")
        cells = [f"{amount:.3f}", region, str(tenure)]
        if rng.random() < 0.12:
            cells[0] = ""  # a missing number
        if rng.random() < 0.12:
            cells[1] = ""  # a missing text cell
        if rng.random() < 0.12:
            cells[2] = ""
        lines.append(",".join([*cells, plan]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("boosting") / "home"
    home.mkdir()
    proc = ServerProcess(home, "--training-workers", "2", "--training-device", "auto")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def csv_dataset(client: Client, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    path = _mixed_csv(tmp_path_factory.mktemp("csv") / "plans.csv")
    info = client.upload_dataset(path, name="plans", target="plan")
    return info.id, path


def _home(server: ServerProcess) -> Path:
    return Path(server.proc.args[server.proc.args.index("--home") + 1])


def _frame(source: str, csv: tuple[str, Path]) -> tuple[pd.DataFrame, str]:
    """The table a job on ``source`` trains on, as the worker loads it, and its target."""
    if source != "csv":
        return ds.builtin_frame(source), "target"
    _, columns = ds.analyse_csv(csv[1])
    return ds.load_csv_frame(csv[1], columns), "plan"


@pytest.fixture(scope="module")
def jobs(client: Client, csv_dataset: tuple[str, Path]) -> dict[tuple[str, str], Any]:
    """Every (algorithm, source) job, started together and waited for."""
    sources = {"iris": "builtin:iris", "diabetes": "builtin:diabetes", "csv": csv_dataset[0]}
    started = {
        (algo, key): client.start_training(
            f"{algo}-{key}",
            algo,
            source,
            PARAMS,
            target="plan" if key == "csv" else None,
            seed=SEED,
            test_size=TEST_SIZE,
        )
        for algo in ALGORITHMS
        for key, source in sources.items()
    }
    return {k: client.wait_job(j.id, timeout=240) for k, j in started.items()}


CASES = [(a, s) for a in ALGORITHMS for s in ("iris", "diabetes", "csv")]


@pytest.mark.parametrize(("algorithm", "source"), CASES, ids=[f"{a}-{s}" for a, s in CASES])
def test_server_answers_like_the_library(
    algorithm, source, jobs, client, server, csv_dataset
) -> None:
    job = jobs[(algorithm, source)]
    assert job.state == train_pb2.JOB_STATE_SUCCEEDED, job.error
    name = f"{algorithm}-{source}"
    meta = LocalModelStore(_home(server)).resolve(name)
    assert meta.algorithm == algorithm and meta.verification["passed"]
    # No GPU here (or training_device auto found none usable): the CPU.
    expected_device = "cuda" if training_device.probe_cuda_training()[0] else "cpu"
    if algorithm == "lightgbm":
        expected_device = "cpu"
    assert meta.training_device == expected_device
    assert client.get_version(name).training_device == expected_device
    assert "xgboost" in meta.library_versions and "onnxmltools" in meta.library_versions

    # The same fit here, with the library: what the server must answer.
    frame, target = _frame(source, csv_dataset)
    features = [(f.name, f.type) for f in meta.features]
    algo = get_algorithm(algorithm)
    trained = pipeline.train(
        frame,
        algorithm=algo,
        task=meta.task,
        params=algo.validate(meta.task, PARAMS),
        target=target,
        features=features,
        test_size=TEST_SIZE,
        seed=SEED,
    )
    assert trained.metrics == pytest.approx(dict(meta.metrics), rel=1e-9)
    sample = frame.sample(60, random_state=1).reset_index(drop=True)
    rows = sample[[c for c, _ in features]]
    if source == "csv":
        assert rows.isna().any().any() and (rows["region"] == "").any()  # gaps are in there
    data = pipeline.prepare(sample, target, features, meta.task)
    sk_in = data.X.to_numpy(dtype="float64") if data.all_numeric else data.X
    model = trained.estimator

    served = client.predict(name, rows if source == "csv" else rows.to_numpy(np.float32))
    feed = pipeline.onnx_feed(data.X, data)
    triton = tc.InferenceServerClient(server.target)
    inputs = []
    for spec in meta.inputs:
        arr = feed[spec.name]
        dtype = "BYTES" if spec.dtype == "string" else "FP32"
        inputs.append(tc.InferInput(spec.name, list(arr.shape), dtype))
        inputs[-1].set_data_from_numpy(arr)
    oip = triton.infer(name, inputs)
    if meta.task == CLASSIFICATION:
        want_labels = np.asarray(model.predict(sk_in)).astype(str)
        want_proba = model.predict_proba(sk_in)
        for labels, proba in (
            (served.labels, served.probabilities),
            (oip.as_numpy("label"), oip.as_numpy("probabilities")),
        ):
            got = np.asarray(
                [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(labels)]
            )
            np.testing.assert_array_equal(got, want_labels)
            np.testing.assert_allclose(proba, want_proba, atol=pipeline.PROBA_TOLERANCE)
    else:
        want = np.asarray(model.predict(sk_in), dtype=np.float64).reshape(-1)
        scale = np.abs(want) + float(np.std(frame[target]))
        for values in (served.values, oip.as_numpy("variable")):
            got = np.asarray(values, dtype=np.float64).reshape(-1)
            assert (np.abs(got - want) / scale).max() <= pipeline.REGRESSION_RTOL


def test_models_show_says_where_it_was_trained(jobs, server) -> None:
    assert all(j.state == train_pb2.JOB_STATE_SUCCEEDED for j in jobs.values())
    out = subprocess.run(
        [*CLI, "--target", server.target, "models", "show", "lightgbm-iris"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "algorithm: lightgbm   trained on: cpu" in out.stdout


def test_boosting_hyperparameters_are_listed_and_bounded(client) -> None:
    algos = {a.name: a for a in client.list_algorithms()}
    xgb = {h.name: h for h in algos["xgboost"].hyperparameters}
    lgbm = {h.name: h for h in algos["lightgbm"].hyperparameters}
    assert {"n_estimators", "max_depth", "learning_rate", "min_child_weight"} <= set(xgb)
    assert {"num_leaves", "min_child_samples", "subsample", "colsample_bytree"} <= set(lgbm)
    assert xgb["learning_rate"].default.number_value == 0.3
    assert lgbm["max_depth"].nullable and not xgb["max_depth"].nullable
    with pytest.raises(grpc.RpcError) as err:
        client.start_training("too-deep", "xgboost", "builtin:iris", {"max_depth": 25})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'max_depth' of 'xgboost' must be <= 24" in str(err.value.details())


def test_cuda_training_device_without_a_gpu_stops_start_up(tmp_path) -> None:
    if training_device.cuda_devices()[0]:
        pytest.skip("this machine has a CUDA device; training_device=cuda may well work")
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.run(
        [*CLI, "serve", "--port", "0", "--home", str(home), *CUDA_TRAINING],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "training_device=cuda but CUDA training is not usable" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
