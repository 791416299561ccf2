"""The HistGradientBoosting converter fix (highpeaks_ml.training.onnx_fixes)."""

from __future__ import annotations

import numpy as np
import pytest
from skl2onnx import to_onnx
from skl2onnx.common.tree_ensemble import get_default_tree_regressor_attribute_pairs
from skl2onnx.operator_converters import random_forest
from sklearn.datasets import load_diabetes
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.model_selection import train_test_split

from highpeaks_ml.training import onnx_fixes, pipeline


@pytest.fixture(autouse=True)
def _installed():
    onnx_fixes.install()


def _attrs_of_first_tree(model) -> dict:
    attrs = get_default_tree_regressor_attribute_pairs()
    random_forest.add_tree_to_attribute_pairs_hist_gradient_boosting(
        attrs, False, model._predictors[0][0], 0, 1.0, 0, False, False, dtype=np.float32
    )
    return attrs


def test_missing_value_flags_are_plain_ints():
    # protobuf 7 refuses bools in an INTS attribute ("Expected an int, got a
    # boolean"); skl2onnx 1.20 passes a bool for every leaf.
    X, y = load_diabetes(return_X_y=True)
    model = HistGradientBoostingRegressor(max_iter=3, random_state=0).fit(X, y)
    flags = _attrs_of_first_tree(model)["nodes_missing_value_tracks_true"]
    assert flags and all(type(v) is int for v in flags)


def test_install_is_idempotent():
    current = random_forest.add_tree_to_attribute_pairs_hist_gradient_boosting
    onnx_fixes.install()
    assert random_forest.add_tree_to_attribute_pairs_hist_gradient_boosting is current
    assert getattr(current, "__highpeaks_fix__", False)


def _mismatched_rows(monkeypatch, fixed: bool) -> int:
    if not fixed:
        wrapper = random_forest.add_tree_to_attribute_pairs_hist_gradient_boosting
        monkeypatch.setattr(
            random_forest,
            "add_tree_to_attribute_pairs_hist_gradient_boosting",
            wrapper.__wrapped__,  # skl2onnx's own function
        )
    X, y = load_diabetes(return_X_y=True)
    X = X.astype(np.float32).astype(np.float64)  # what pipeline.prepare does
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.5, random_state=0)
    model = HistGradientBoostingRegressor(max_iter=200, random_state=0).fit(X_train, y_train)
    sess = pipeline.session(to_onnx(model, X_train[:1].astype(np.float32)).SerializeToString())
    onnx_values = sess.run(None, {"X": X_test.astype(np.float32)})[0].ravel()
    return int((np.abs(onnx_values - model.predict(X_test)) > 1e-3).sum())


def test_thresholds_route_float32_values_exactly_like_sklearn(monkeypatch):
    # The diabetes features hold values one float32 step apart; rounding a
    # threshold to nearest moves some of them to the other branch (measured:
    # 4 of 221 rows). Rounding down (the fix) routes every value as sklearn does.
    assert _mismatched_rows(monkeypatch, fixed=True) == 0


@pytest.mark.filterwarnings("ignore:Field onnx.AttributeProto.ints:DeprecationWarning")
def test_without_the_fix_those_rows_differ(monkeypatch):
    # Documents why the fix exists; fails (and the fix can go) once skl2onnx
    # adjusts HistGradientBoosting thresholds itself.
    assert _mismatched_rows(monkeypatch, fixed=False) > 0


def test_classifier_with_missing_values_converts_and_matches():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)).astype(np.float32).astype(np.float64)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    X[::7, 2] = np.nan  # routed by the learned missing-value direction
    model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X, y)
    onx = to_onnx(model, X[:1].astype(np.float32), options={id(model): {"zipmap": False}})
    labels, proba = pipeline.session(onx.SerializeToString()).run(None, {"X": X.astype(np.float32)})
    assert (labels == model.predict(X)).all()
    np.testing.assert_allclose(proba, model.predict_proba(X), atol=1e-5)
