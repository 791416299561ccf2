"""Missing values: training and serving agree, for every algorithm in the catalogue.

Each catalogue algorithm is trained here, for each task it has, with the
project's own pipeline (``pipeline.train``: fit, export, verify) on small
tables with gaps: an all-numeric one (one ONNX matrix input) and, once per
algorithm, a mixed one with a categorical column (one input per feature). The
ONNX bytes it produced are published with the metadata training records and
served by the real server; rows with missing values then go through every
front door (a raw tensor with NaN, named rows with nulls, the Open Inference
Protocol with NaN / "", the CLI's CSV with empty cells) and must get what the
fitted scikit-learn pipeline answers, within the tolerances of the training
verification. A version whose schema does not allow missing values (recorded
before the flag existed) and an imported model keep refusing NaN and nulls.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest

from highpeaks_ml.api import oip_messages as msgs
from highpeaks_ml.client import Client
from highpeaks_ml.registry.base import VersionMeta
from highpeaks_ml.registry.local import LocalModelStore
from highpeaks_ml.training import catalogue, pipeline
from highpeaks_ml.training.catalogue import CLASSIFICATION, INT, REGRESSION
from highpeaks_ml.training.datasets import CATEGORICAL, NUMERIC
from highpeaks_ml.v1 import train_pb2
from tests.conftest import ROOT, ServerProcess
from tests.support import serving_models as sm

tc = pytest.importorskip("tritonclient.grpc")

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NUMBERS = ["sepal_length", "sepal_width", "petal_length"]
#: Hyperparameters made small so that the whole catalogue trains in seconds.
QUICK = {"n_estimators": 10, "max_iter": 30}


@dataclass(frozen=True)
class Case:
    algorithm: catalogue.Algorithm
    task: str
    layout: str  # "matrix" (numeric features) | "mixed" (a categorical feature too)

    @property
    def name(self) -> str:
        return f"{self.algorithm.name}-{self.task[:5]}-{self.layout}".replace("_", "-")


def _cases() -> list[Case]:
    # Every algorithm and task: new catalogue entries are covered without a change here.
    out = []
    for alg in catalogue.algorithms():
        for i, task in enumerate(alg.tasks):
            out.append(Case(alg, task, "matrix"))
            if i == 0:
                out.append(Case(alg, task, "mixed"))
    return out


CASES = _cases()


def _iris() -> pd.DataFrame:
    """Iris with gaps (about 15% of the feature cells), as ``datasets.type_frame`` types it."""
    from sklearn.datasets import load_iris

    raw = load_iris(as_frame=True)
    frame = raw.frame.rename(columns=dict(zip(raw.feature_names, sm.IRIS_FEATURES, strict=True)))
    rng = np.random.default_rng(7)
    band = np.where(frame["sepal_width"] > 3.0, "wide", "narrow").astype(object)
    band[frame["sepal_length"] > 6.5] = "long"
    frame["band"] = band
    for col in [*NUMBERS, "band"]:
        gone = rng.random(len(frame)) < 0.15
        frame.loc[gone, col] = np.nan if col != "band" else ""  # "": a missing text cell
    frame["species"] = frame["target"].astype("float64")  # class ids 0, 1, 2
    return frame


def _features(case: Case) -> list[tuple[str, str]]:
    feats = [(c, NUMERIC) for c in NUMBERS]
    return [*feats, ("band", CATEGORICAL)] if case.layout == "mixed" else feats


def _target(case: Case) -> str:
    return "species" if case.task == CLASSIFICATION else "petal_width"


def _params(case: Case) -> dict[str, Any]:
    given = {
        p.name: max(int(p.minimum or 1), min(int(p.default), QUICK[p.name]))
        for p in case.algorithm.params_for(case.task)
        if p.name in QUICK and p.type == INT
    }
    return case.algorithm.validate(case.task, given)


def _probe(case: Case) -> pd.DataFrame:
    """Rows to predict (caller's column names): gaps everywhere, one row with every
    feature missing and one complete row."""
    rng = np.random.default_rng(11)
    frame = _iris()
    rows = frame.iloc[rng.choice(len(frame), 40, replace=False)].reset_index(drop=True)
    cols = [c for c, _ in _features(case)]
    out = rows[cols].copy()
    for col in cols:
        gone = rng.random(len(out)) < 0.3
        out.loc[gone, col] = np.nan if col != "band" else ""
    out.loc[0, cols] = [np.nan if c != "band" else "" for c in cols]
    out.loc[1, cols] = [1.0 if c != "band" else "wide" for c in cols]
    for col in NUMBERS:
        out[col] = out[col].astype(np.float32).astype(np.float64)  # the graph computes in float32
    return out


@dataclass
class Trained:
    case: Case
    model: Any  # the fitted scikit-learn pipeline
    meta: VersionMeta
    onnx: bytes
    y_std: float


def _train(case: Case) -> Trained:
    frame = _iris()
    if case.task == REGRESSION:
        frame = frame[frame["petal_width"].notna()].reset_index(drop=True)
    trained = pipeline.train(
        frame,
        algorithm=case.algorithm,
        task=case.task,
        params=_params(case),
        target=_target(case),
        features=_features(case),
        test_size=0.25,
        seed=3,
    )
    # The metadata the training worker records (training/worker.py).
    meta = VersionMeta.from_dict(
        {
            "model_name": case.name,
            "version": 0,
            "created_at": 0.0,
            "source": "trained",
            "task": trained.task,
            "algorithm": case.algorithm.name,
            "hyperparameters": _params(case),
            "metrics": trained.metrics,
            "features": trained.features,
            "inputs": trained.inputs,
            "outputs": trained.outputs,
            "class_labels": trained.class_labels,
            "label_dtype": trained.label_dtype,
            "verification": trained.verification,
        }
    )
    y_std = float(np.std(frame[_target(case)].to_numpy(dtype=np.float64)))
    return Trained(case, trained.estimator, meta, trained.onnx_bytes, y_std)


def _sk_input(t: Trained, probe: pd.DataFrame) -> Any:
    """What scikit-learn gets for ``probe`` (as ``pipeline`` fits: a matrix, or the
    table under the ONNX input names)."""
    if t.case.layout == "matrix":
        return probe[NUMBERS].to_numpy(dtype=np.float64)
    names = pipeline.input_names(list(probe.columns))
    return probe.set_axis(names, axis=1)


@pytest.fixture(scope="module")
def trained() -> dict[str, Trained | BaseException]:
    out: dict[str, Trained | BaseException] = {}
    for case in CASES:
        if case.algorithm.missing_modules():
            continue
        try:
            out[case.name] = _train(case)
        except Exception as exc:  # reported by that case's test
            out[case.name] = exc
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory, trained) -> Any:
    home = tmp_path_factory.mktemp("missing") / "home"
    home.mkdir()
    store = LocalModelStore(home)
    store.start()
    for t in trained.values():
        if isinstance(t, Trained):
            store.publish(t.case.name, t.onnx, t.meta)
    # A version recorded before "allows_missing" existed: same graph, no flag.
    first = next(t for t in trained.values() if isinstance(t, Trained))
    old = replace(
        first.meta,
        model_name="old-record",
        features=tuple(replace(f, allows_missing=False) for f in first.meta.features),
    )
    store.publish("old-record", first.onnx, old)
    imported = sm.imported_logreg()
    store.publish("imported", imported.onnx, imported.meta)
    proc = ServerProcess(home)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server):
    with Client(server.target) as c:
        yield c


@pytest.fixture(scope="module")
def triton(server):
    c = tc.InferenceServerClient(server.target)
    yield c
    c.close()


def _properties(server: ServerProcess, name: str) -> dict[str, str]:
    """ModelMetadata's ``properties`` (the protocol's field that Triton's file lacks,
    so tritonclient drops it: read with the server's own message classes)."""
    with grpc.insecure_channel(server.target) as ch:
        call = ch.unary_unary(
            "/inference.GRPCInferenceService/ModelMetadata",
            request_serializer=msgs.ModelMetadataRequest.SerializeToString,
            response_deserializer=msgs.ModelMetadataResponse.FromString,
        )
        return dict(call(msgs.ModelMetadataRequest(name=name), timeout=30).properties)


def _get(trained: dict[str, Any], case: Case) -> Trained:
    if case.algorithm.missing_modules():
        pytest.skip(f"{case.algorithm.name} needs {case.algorithm.missing_modules()}")
    t = trained[case.name]
    if isinstance(t, BaseException):
        raise t
    return t


def _ambiguous(t: Trained, Xs: Any) -> np.ndarray:
    """Rows where float32 may legitimately pick another class or neighbour (as ``verify``)."""
    rows = len(Xs)
    ties = pipeline._neighbour_tie_rows(t.model, Xs, rows)
    if t.case.task == CLASSIFICATION:
        ties = ties | pipeline._tie_rows(t.model, Xs)
    return ties


def _assert_matches(t: Trained, probe: pd.DataFrame, labels: Any, proba: Any, values: Any) -> None:
    Xs = _sk_input(t, probe)
    skip = _ambiguous(t, Xs)
    assert (~skip).sum() >= len(probe) // 2, "too few unambiguous rows to compare"
    keep = ~skip
    if t.case.task == CLASSIFICATION:
        want_labels = np.asarray(t.model.predict(Xs)).astype(str)
        got_labels = np.asarray(labels).reshape(-1).astype(str)
        np.testing.assert_array_equal(got_labels[keep], want_labels[keep])
        want = t.model.predict_proba(Xs)
        np.testing.assert_allclose(
            np.asarray(proba)[keep], want[keep], atol=pipeline.PROBA_TOLERANCE, rtol=0
        )
    else:
        want = np.asarray(t.model.predict(Xs), dtype=np.float64).reshape(-1)
        got = np.asarray(values, dtype=np.float64).reshape(-1)
        scale = np.abs(want) + max(t.y_std, 1e-12)
        assert (np.abs(got - want)[keep] / scale[keep]).max() <= pipeline.REGRESSION_RTOL


def _missing(v: Any) -> bool:
    return (isinstance(v, float) and np.isnan(v)) or v == ""


def _rows(probe: pd.DataFrame) -> list[dict[str, Any]]:
    """Named rows as JSON has them: null for a missing value."""
    return [
        {k: None if _missing(v) else v for k, v in r.items()}
        for r in probe.to_dict(orient="records")
    ]


# --- every algorithm ------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_training_records_and_verifies_missing_values(trained, case):
    t = _get(trained, case)
    assert [f.allows_missing for f in t.meta.features] == [True] * len(t.meta.features)
    assert t.meta.verification["rows_with_missing"] > 0


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_native_predict_matches_scikit_learn(trained, client, case):
    t = _get(trained, case)
    probe = _probe(case)
    rows = client.predict(case.name, _rows(probe))
    _assert_matches(t, probe, rows.labels, rows.probabilities, rows.values)
    if case.layout == "matrix":  # the same rows as one raw float32 tensor with NaN
        X = probe[NUMBERS].to_numpy(dtype=np.float32)
        assert np.isnan(X).any()
        tensor = client.predict(case.name, X)
        _assert_matches(t, probe, tensor.labels, tensor.probabilities, tensor.values)
        typed = client.predict(case.name, X, raw=False)
        _assert_matches(t, probe, typed.labels, typed.probabilities, typed.values)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_open_inference_protocol_matches_scikit_learn(trained, server, triton, case):
    t = _get(trained, case)
    probe = _probe(case)
    inputs = []
    if case.layout == "matrix":
        X = probe[NUMBERS].to_numpy(dtype=np.float32)
        inputs.append(tc.InferInput("input", list(X.shape), "FP32"))
        inputs[-1].set_data_from_numpy(X)
    else:
        for spec, col in zip(t.meta.inputs, probe.columns, strict=True):
            if spec.dtype == "string":
                arr = probe[col].to_numpy(dtype=object).astype(str).reshape(-1, 1)
                inputs.append(tc.InferInput(spec.name, list(arr.shape), "BYTES"))
                inputs[-1].set_data_from_numpy(arr.astype(np.object_))
            else:
                arr = probe[col].to_numpy(dtype=np.float32).reshape(-1, 1)
                inputs.append(tc.InferInput(spec.name, list(arr.shape), "FP32"))
                inputs[-1].set_data_from_numpy(arr)
    res = triton.infer(case.name, inputs)
    if case.task == CLASSIFICATION:
        _assert_matches(t, probe, res.as_numpy("label"), res.as_numpy("probabilities"), None)
    else:
        _assert_matches(t, probe, None, None, res.as_numpy("variable"))
    props = _properties(server, case.name)
    assert all(props[f"allows_missing.{s.name}"] == "true" for s in t.meta.inputs), props
    assert triton.get_model_metadata(case.name).name == case.name  # still read by tritonclient


# --- the schema, shown ---------------------------------------------------------------


def test_schema_says_which_features_take_missing_values(trained, client, server):
    case = next(c for c in CASES if c.layout == "mixed")
    _get(trained, case)
    v = client.get_version(case.name)
    assert [(f.name, f.allows_missing) for f in v.features] == [
        (c, True) for c, _ in _features(case)
    ]
    assert v.verification.rows_with_missing > 0
    old = client.get_version("old-record")
    assert old.features and not any(f.allows_missing for f in old.features)
    assert not client.get_version("imported").features

    props = _properties(server, case.name)
    assert json.loads(props["features"]) == [
        {"name": c, "type": k, "allows_missing": True} for c, k in _features(case)
    ]
    old_props = _properties(server, "old-record")
    assert [v for k, v in old_props.items() if k.startswith("allows_missing.")] == ["false"] * len(
        old.inputs
    )
    assert _properties(server, "imported") == {"allows_missing.float_input": "false"}


def _cli(target: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "highpeaks_ml.cli", *args, "--target", target],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        cwd=ROOT,
    )


def test_cli_shows_the_flag_and_predicts_csv_with_empty_cells(trained, server):
    case = next(c for c in CASES if c.layout == "mixed" and c.task == CLASSIFICATION)
    t = _get(trained, case)
    shown = _cli(server.target, "models", "show", case.name)
    assert shown.returncode == 0, shown.stderr
    assert "sepal_length (numeric) [missing: allowed]" in shown.stdout
    assert "with missing values" in shown.stdout
    old = _cli(server.target, "models", "show", "old-record")
    assert "[missing: refused]" in old.stdout and "[missing: allowed]" not in old.stdout

    probe = _probe(case)
    text = probe.to_csv(index=False)  # NaN and "" both become empty cells
    assert ",," in text or text.splitlines()[1].startswith(",")
    out = _cli(server.target, "predict", "--model", case.name, "--input", "-", stdin=text)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    proba = np.array([[r["probabilities"][c] for c in t.meta.class_labels] for r in got])
    _assert_matches(t, probe, [r["label"] for r in got], proba, None)

    matrix = next(c for c in CASES if c.layout == "matrix" and c.task == REGRESSION)
    tm = _get(trained, matrix)
    probe = _probe(matrix)
    headerless = probe.to_csv(index=False, header=False)
    assert headerless.splitlines()[0] == ",,"  # the all-missing row first: still not a header
    out = _cli(server.target, "predict", "--model", matrix.name, "--input", "-", stdin=headerless)
    assert out.returncode == 0, out.stderr
    _assert_matches(tm, probe, None, None, [r["value"] for r in json.loads(out.stdout)])


# --- models that cannot: still refused -----------------------------------------------


def _refused(fn: Any, *args: Any, **kw: Any) -> str:
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kw)
    assert err.value.code() == INVALID, err.value.details()
    return str(err.value.details())


def test_versions_without_the_flag_refuse_missing_values(trained, client, triton):
    first = next(t for t in trained.values() if isinstance(t, Trained))
    probe = _probe(first.case)
    name = "old-record"
    if first.case.layout == "matrix":
        X = probe[NUMBERS].to_numpy(dtype=np.float32)
        assert "missing values are refused" in _refused(client.predict, name, X)
        inp = tc.InferInput("input", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)
        with pytest.raises(tc.InferenceServerException) as err:
            triton.infer(name, [inp])
        assert "missing values are refused" in err.value.message()
    rows = _rows(probe)
    assert "does not accept missing values" in _refused(client.predict, name, rows)
    complete = [r for r in rows if None not in r.values()]
    assert len(client.predict(name, complete).labels) == len(complete) > 0


def test_imported_models_refuse_missing_values(client, triton):
    X = sm.imported_logreg().X[:3].astype(np.float32).copy()
    X[1, 2] = np.nan
    assert "missing values are refused" in _refused(client.predict, "imported", X)
    inp = tc.InferInput("float_input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    with pytest.raises(tc.InferenceServerException) as err:
        triton.infer("imported", [inp])
    assert "missing values are refused" in err.value.message()


def test_infinity_is_refused_even_where_missing_values_are_allowed(trained, client):
    case = next(c for c in CASES if c.layout == "matrix")
    _get(trained, case)
    X = np.ones((2, 3), np.float32)
    X[0, 0] = np.nan
    X[1, 2] = np.inf
    msg = _refused(client.predict, case.name, X)
    assert "tensor[1, 2]" in msg and "infinity is refused" in msg
    rows = [{c: 1.0 for c in NUMBERS}, {**{c: 1.0 for c in NUMBERS}, "sepal_width": float("-inf")}]
    assert "infinity is refused" in _refused(client.predict, case.name, rows)


def test_train_service_records_the_flag_and_serving_obeys_it(client):
    """End to end: inline rows with nulls -> StartTraining -> GetModelVersion -> Predict."""
    rng = np.random.default_rng(5)
    rows = []
    for i in range(60):
        x = float(rng.normal())
        rows.append(
            {
                "x": None if i % 7 == 0 else round(x, 3),
                "colour": None if i % 5 == 0 else ("red" if x > 0 else "blue"),
                "y": "up" if x > 0 else "down",
            }
        )
    job = client.start_training("e2e-missing", "random_forest", rows, {"n_estimators": 5}, "y")
    done = client.wait_job(job.id, timeout=300)
    assert done.state == train_pb2.JOB_STATE_SUCCEEDED, done.error
    v = client.get_version("e2e-missing")
    assert {(f.name, f.allows_missing) for f in v.features} == {("x", True), ("colour", True)}
    assert v.verification.rows_with_missing > 0
    got = client.predict("e2e-missing", [{"x": None, "colour": None}, {"x": 2.0, "colour": "red"}])
    assert got.labels is not None and list(got.labels)[1] == "up"
