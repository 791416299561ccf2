"""Missing values in serving/inputs.py: accepted exactly where the schema allows them.

Plans are built from real exports with the per-feature ``allows_missing``
flag set on some features only, so each test shows both sides: NaN / null
passes for a flagged feature and is refused (naming row and feature) for
the others; infinity is refused everywhere.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest

from highpeaks_ml.errors import InvalidArgument
from highpeaks_ml.registry.base import FeatureSpec, VersionMeta
from highpeaks_ml.serving.inputs import InputPlan, RowsInput, TensorInput, TensorsInput
from tests.support import serving_models as sm

MAX_ROWS = 100


def plan_with(exp: sm.Exported, allowed: set[str]) -> InputPlan:
    meta = replace(
        exp.meta,
        version=1,
        features=tuple(replace(f, allows_missing=f.name in allowed) for f in exp.meta.features),
    )
    sess = ort.InferenceSession(exp.onnx, providers=["CPUExecutionProvider"])
    return InputPlan.build(
        meta,
        [(i.name, i.type, i.shape) for i in sess.get_inputs()],
        [(o.name, o.type, o.shape) for o in sess.get_outputs()],
    )


def refused(plan: InputPlan, data, *needles: str) -> str:
    with pytest.raises(InvalidArgument) as err:
        plan.feeds(data, MAX_ROWS)
    for needle in needles:
        assert needle in err.value.message, err.value.message
    return err.value.message


def raw(x: np.ndarray) -> TensorInput:
    return TensorInput("float32", x.shape, raw=x.tobytes())


@pytest.fixture(scope="module")
def iris():
    # NaN allowed in two of the four columns of the one "input" matrix.
    return plan_with(sm.iris_logreg(), {"sepal_length", "petal_width"})


@pytest.fixture(scope="module")
def mixed():
    return plan_with(sm.mixed_classifier(), {"size", "colour"})


def test_nan_in_allowed_columns_of_the_matrix_passes_through(iris):
    x = np.ones((3, 4), np.float32)
    x[0, 0] = x[2, 3] = np.nan
    feeds, rows = iris.feeds(raw(x), MAX_ROWS)
    assert rows == 3
    np.testing.assert_array_equal(feeds["input"], x)  # NaN reaches the graph unchanged


def test_nan_in_other_columns_is_refused_naming_row_and_feature(iris):
    x = np.ones((3, 4), np.float32)
    x[0, 0] = np.nan  # allowed
    x[2, 1] = np.nan  # sepal_width: not allowed
    refused(
        iris,
        raw(x),
        "tensor[2, 1] (row 2, feature 'sepal_width')",
        "missing values are refused",
    )


def test_infinity_is_refused_even_in_allowed_columns(iris):
    x = np.ones((2, 4), np.float32)
    x[1, 0] = np.inf
    refused(iris, raw(x), "tensor[1, 0]", "infinity is refused")
    typed = TensorInput("float64", (1, 4), values=[-np.inf, 1.0, 1.0, 1.0])
    refused(iris, typed, "tensor[0, 0]", "infinity is refused")
    big = TensorInput("float64", (1, 4), values=[1e300, 1.0, 1.0, 1.0])  # inf in float32
    refused(iris, big, "infinity is refused")


def test_rows_null_and_nan_are_missing_values_where_allowed(iris):
    rows = [
        {"sepal_length": None, "sepal_width": 3.0, "petal_length": 1.0, "petal_width": 0.2},
        {"sepal_length": 5.0, "sepal_width": 3.0, "petal_length": 1.0, "petal_width": np.nan},
    ]
    feeds, _ = iris.feeds(RowsInput(rows), MAX_ROWS)
    x = feeds["input"]
    assert np.isnan(x[0, 0]) and np.isnan(x[1, 3]) and np.isfinite(x[:, 1:3]).all()


def test_rows_null_or_nan_refused_for_other_features(iris):
    ok = {"sepal_length": 5.0, "sepal_width": 3.0, "petal_length": 1.0, "petal_width": 0.2}
    refused(
        iris,
        RowsInput([ok, {**ok, "petal_length": None}]),
        "rows[1].petal_length",
        "got null (this model does not accept missing values for it)",
    )
    refused(iris, RowsInput([{**ok, "sepal_width": np.nan}]), "rows[0].sepal_width", "refused")
    refused(iris, RowsInput([{**ok, "sepal_length": np.inf}]), "infinity is refused")
    refused(iris, RowsInput([{**ok, "sepal_length": "x"}]), "expects a number")


def test_mixed_rows_null_becomes_nan_or_the_empty_category(mixed):
    rows = [
        {"size": None, "colour": None, "weight": 5.0},
        {"size": 9.0, "colour": "red", "weight": 4.0},
    ]
    feeds, _ = mixed.feeds(RowsInput(rows), MAX_ROWS)
    assert np.isnan(feeds["size"][0, 0]) and feeds["size"][1, 0] == 9.0
    assert feeds["colour"][:, 0].tolist() == ["", "red"]  # what training made of an empty cell
    refused(
        mixed,
        RowsInput([{"size": 1.0, "colour": "red", "weight": None}]),
        "rows[0].weight",
        "does not accept missing values",
    )


def test_mixed_named_tensors_follow_each_features_flag(mixed):
    def t(v, dtype="float32"):
        return TensorInput(dtype, (1, 1), values=[v])

    ok = {"size": t(float("nan")), "colour": t("", "string"), "weight": t(5.0)}
    feeds, _ = mixed.feeds(TensorsInput(ok), MAX_ROWS)
    assert np.isnan(feeds["size"][0, 0])
    bad = {**ok, "weight": t(float("nan"))}
    refused(mixed, TensorsInput(bad), "tensor[0, 0] (row 0, feature 'weight')", "refused")


def test_imported_models_refuse_nan():
    exp = sm.imported_logreg()
    sess = ort.InferenceSession(exp.onnx, providers=["CPUExecutionProvider"])
    plan = InputPlan.build(
        replace(exp.meta, version=1),
        [(i.name, i.type, i.shape) for i in sess.get_inputs()],
        [(o.name, o.type, o.shape) for o in sess.get_outputs()],
    )
    x = np.ones((1, 4), np.float32)
    x[0, 2] = np.nan
    refused(plan, raw(x), "tensor[0, 2]", "missing values are refused")


def test_old_records_read_without_the_flag_refuse():
    meta = VersionMeta.from_dict(
        {
            "model_name": "m",
            "version": 1,
            "created_at": 0.0,
            "source": "trained",
            "task": "classification",
            "features": [{"name": "a", "type": "numeric", "categories": []}],
        }
    )
    assert meta.features == (FeatureSpec("a", "numeric"),)
    assert meta.features[0].allows_missing is False
    again = VersionMeta.from_dict(
        replace(meta, features=(replace(meta.features[0], allows_missing=True),)).to_dict()
    )
    assert again.features[0].allows_missing is True
