"""XGBoost and LightGBM in the pipeline: labels, exact thresholds, devices, missing libraries."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from highpeaks_ml.config import Settings
from highpeaks_ml.errors import FailedPrecondition, Unavailable
from highpeaks_ml.training import boosting, device
from highpeaks_ml.training import pipeline as pl
from highpeaks_ml.training.catalogue import CLASSIFICATION, REGRESSION, get_algorithm
from highpeaks_ml.training.datasets import NUMERIC, builtin_frame


def _train(frame, algorithm, task, target="target", seed=0, test_size=0.25, **params):
    algo = get_algorithm(algorithm)
    features = [(c, NUMERIC) for c in frame.columns if c != target]
    return pl.train(
        frame,
        algorithm=algo,
        task=task,
        params=algo.validate(task, {"n_estimators": 10, **params}),
        target=target,
        features=features,
        test_size=test_size,
        seed=seed,
    )


@pytest.mark.parametrize("algorithm", ["xgboost", "lightgbm"])
def test_any_class_labels_come_back_from_the_graph(algorithm):
    """XGBoost itself only takes labels 0..n-1: 3/7/9 and text must still round-trip."""
    iris = builtin_frame("iris")
    for mapping, dtype in (({0: 3, 1: 7, 2: 9}, "int64"), ({0: "a", 1: "b", 2: "c"}, "string")):
        frame = iris.assign(target=iris["target"].map(mapping))
        if dtype == "int64":
            frame["target"] = frame["target"].astype(float)
        model = _train(frame, algorithm, CLASSIFICATION)
        labels = [str(v) for v in mapping.values()]
        assert model.class_labels == labels and model.label_dtype == dtype
        X = frame.drop(columns="target").to_numpy(np.float32)
        got, proba = pl.session(model.onnx_bytes).run(None, {"input": X})
        want = model.estimator.predict(X.astype(np.float64))
        assert [str(v) for v in got] == [str(v) for v in want]
        assert set(map(str, got)) <= set(labels) and proba.shape == (len(X), 3)


def test_xgboost_binary_and_the_seed():
    frame = builtin_frame("breast_cancer")
    a = _train(frame, "xgboost", CLASSIFICATION, subsample=0.7, colsample_bytree=0.5)
    b = _train(frame, "xgboost", CLASSIFICATION, subsample=0.7, colsample_bytree=0.5)
    c = _train(frame, "xgboost", CLASSIFICATION, seed=1, subsample=0.7, colsample_bytree=0.5)
    X = frame.drop(columns="target").to_numpy(np.float32)
    proba = [pl.session(m.onnx_bytes).run(None, {"input": X})[1] for m in (a, b, c)]
    np.testing.assert_array_equal(proba[0], proba[1])  # same seed: the same model
    assert not np.array_equal(proba[0], proba[2])  # row/column sampling follows the seed
    assert "roc_auc" in a.metrics and a.verification["passed"]


def test_lightgbm_thresholds_are_exact_in_float32():
    """A LightGBM threshold between two float32 values, rounded up by onnx, sent one
    diabetes row down the other branch (off by 5.07) before ``exact_thresholds``."""
    model = _train(builtin_frame("diabetes"), "lightgbm", REGRESSION, n_estimators=20, seed=7)
    assert model.verification["passed"] and model.verification["max_rel_diff"] < 1e-5


def test_exact_thresholds_lowers_only_what_rounds_up():
    up = 0.1  # float32(0.1) > 0.1
    exact = 0.5
    below = float(np.float32(0.2)) - 1e-12  # rounds up to float32(0.2)
    assert float(np.float32(up)) > up
    tree = {
        "decision_type": "<=",
        "threshold": up,
        "left_child": {
            "decision_type": "<=",
            "threshold": exact,
            "left_child": {"leaf_value": 1.0},
            "right_child": {"decision_type": "==", "threshold": "1||2", "left_child": {}},
        },
        "right_child": {"decision_type": "<=", "threshold": below, "right_child": {}},
    }
    assert boosting.exact_thresholds(tree) == 2
    for t, node in ((up, tree), (below, tree["right_child"])):
        f = np.float32(node["threshold"])
        assert float(f) <= t < float(np.nextafter(f, np.float32(np.inf)))
    assert tree["left_child"]["threshold"] == exact
    assert tree["left_child"]["right_child"]["threshold"] == "1||2"


def test_nan_is_routed_like_the_library_in_onnx():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    y = X[:, 0] * 2 + np.where(np.isnan(X[:, 1]), 5.0, X[:, 1])
    X[rng.random(X.shape) < 0.2] = np.nan
    frame = pd.DataFrame(X, columns=list("abcd")).assign(target=y)
    for algorithm in ("xgboost", "lightgbm"):
        model = _train(frame, algorithm, REGRESSION)
        rows = X[:50].astype(np.float32)
        (got,) = pl.session(model.onnx_bytes).run(None, {"input": rows})
        want = model.estimator.predict(rows.astype(np.float64))
        np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-5, atol=1e-4)
        assert np.isnan(rows).any() and model.verification["rows_with_missing"] > 0
        assert all(f["allows_missing"] for f in model.features)


def test_a_missing_library_is_refused_at_submission():
    absent = dataclasses.replace(get_algorithm("lightgbm"), requires=("no_such_module_hp",))
    with pytest.raises(FailedPrecondition) as err:
        absent.validate(CLASSIFICATION, {})
    assert "needs no_such_module_hp, not installed" in err.value.message
    assert "highpeaks-ml[boost]" in err.value.message


def test_only_xgboost_is_moved_to_the_training_device(tmp_path):
    iris = builtin_frame("iris")
    data = pl.prepare(iris, "target", [(c, NUMERIC) for c in iris.columns[:-1]], CLASSIFICATION)
    for name, on_cuda in (("xgboost", "cuda"), ("lightgbm", "cpu"), ("random_forest", "cpu")):
        algo = get_algorithm(name)
        assert algo.training_device("cuda") == on_cuda and algo.training_device("cpu") == "cpu"
        model = pl.build(algo, data, algo.validate(CLASSIFICATION, {}), 0, device="cuda")
        params = model.steps[-1][1].get_params()
        assert params.get("device", "cpu") == on_cuda


def test_training_device_choice(tmp_path):
    cpu = device.choose_training_device(Settings.load({"home": tmp_path, "training_device": "cpu"}))
    assert (cpu.device, cpu.reason) == ("cpu", "training_device=cpu")
    if device.probe_cuda_training()[0]:
        pytest.skip("CUDA training works here")
    auto = device.choose_training_device(Settings.load({"home": tmp_path}))
    assert auto.device == "cpu" and auto.reason.startswith("training_device=auto: CUDA not usable")
    with pytest.raises(Unavailable) as err:
        device.choose_training_device(Settings.load({"home": tmp_path, "training_device": "cuda"}))
    assert err.value.message.startswith("training_device=cuda but CUDA training is not usable: ")


def test_the_cpu_wheel_says_it_has_no_cuda():
    from importlib import metadata

    try:
        metadata.version("xgboost-cpu")
    except metadata.PackageNotFoundError:
        pytest.skip("not the xgboost-cpu wheel")
    assert device.xgboost_has_cuda() == (
        False,
        "this XGBoost build has no CUDA support (the xgboost-cpu wheel)",
    )
