"""Input validation and conversion (serving/inputs.py) against plans of real exports."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from highpeaks_ml.errors import InvalidArgument
from highpeaks_ml.registry.base import VersionMeta
from highpeaks_ml.serving.inputs import InputPlan, RowsInput, TensorInput
from tests.support import serving_models as sm

MAX_ROWS = 1000


def plan_of(exp: sm.Exported, version: int = 1) -> tuple[InputPlan, ort.InferenceSession]:
    sess = ort.InferenceSession(exp.onnx, providers=["CPUExecutionProvider"])
    meta = sm.with_version(exp, version)
    plan = InputPlan.build(
        meta,
        [(i.name, i.type, i.shape) for i in sess.get_inputs()],
        [(o.name, o.type, o.shape) for o in sess.get_outputs()],
    )
    return plan, sess


@pytest.fixture(scope="module")
def iris():
    return plan_of(sm.iris_logreg())


@pytest.fixture(scope="module")
def mixed():
    return plan_of(sm.mixed_classifier())


@pytest.fixture(scope="module")
def imported():
    return plan_of(sm.imported_logreg())


def refused(plan: InputPlan, data, *needles: str, max_rows: int = MAX_ROWS) -> str:
    with pytest.raises(InvalidArgument) as err:
        plan.feeds(data, max_rows)
    for needle in needles:
        assert needle in err.value.message, err.value.message
    return err.value.message


def raw(x: np.ndarray, dtype: str = "float32", shape=None) -> TensorInput:
    return TensorInput(dtype, tuple(shape if shape is not None else x.shape), raw=x.tobytes())


# --- plans -----------------------------------------------------------------


def test_plan_kinds(iris, mixed, imported):
    assert iris[0].kind == "matrix"
    assert mixed[0].kind == "columns"
    assert imported[0].kind == "graph"
    assert iris[0].outputs.label == "label" and iris[0].outputs.probabilities == "probabilities"
    assert imported[0].outputs.label == "label"
    reg, _ = plan_of(sm.linear_regressor())
    assert reg.outputs.values == "variable" and reg.outputs.label is None


def test_plan_refuses_graph_that_does_not_match_features():
    exp = sm.iris_logreg()
    meta = sm.with_version(exp, 1)
    with pytest.raises(ValueError, match="do not match"):
        InputPlan.build(
            meta,
            [("input", "tensor(float)", [None, 3])],
            [("label", "tensor(int64)", [None]), ("probabilities", "tensor(float)", [None, 3])],
        )


# --- tensors ---------------------------------------------------------------


def test_raw_and_typed_give_the_same_feeds(iris):
    plan, _ = iris
    x = sm.iris_logreg().X[:7]
    a, n = plan.feeds(raw(x), MAX_ROWS)
    b, m = plan.feeds(TensorInput("float32", x.shape, values=x.ravel().tolist()), MAX_ROWS)
    assert n == m == 7
    np.testing.assert_array_equal(a["input"], x)
    np.testing.assert_array_equal(b["input"], x)
    assert a["input"].dtype == np.float32


def test_numeric_types_are_cast_to_the_models_type(iris):
    plan, _ = iris
    x = np.array([[1, 2, 3, 4]], dtype=np.int64)
    feeds, _ = plan.feeds(raw(x, "int64"), MAX_ROWS)
    assert feeds["input"].dtype == np.float32
    feeds, _ = plan.feeds(raw(x.astype(np.float64), "float64"), MAX_ROWS)
    assert feeds["input"].dtype == np.float32


@pytest.mark.parametrize(
    ("dtype", "needle"),
    [("string", "STRING is not accepted"), ("bool", "BOOL is not accepted"), ("", "data_type")],
)
def test_wrong_dtype(iris, dtype, needle):
    plan, _ = iris
    data = TensorInput(dtype, (1, 4), values=["a", "b", "c", "d"] if dtype == "string" else None)
    refused(plan, data, needle)


def test_wrong_feature_count(iris):
    plan, _ = iris
    x = np.zeros((2, 5), np.float32)
    msg = refused(plan, raw(x), "tensor.shape[1]", "5 features", "expects 4")
    assert "petal_width" in msg


def test_wrong_rank(iris):
    plan, _ = iris
    refused(plan, raw(np.zeros(4, np.float32)), "tensor.shape", "1 dimensions")
    refused(plan, raw(np.zeros((1, 2, 2), np.float32)), "3 dimensions")


@pytest.mark.parametrize("delta", [-4, -1, 1, 4])
def test_raw_length_mismatch_both_ways(iris, delta):
    plan, _ = iris
    data = TensorInput("float32", (2, 4), raw=b"\0" * (32 + delta))
    refused(plan, data, "tensor.raw_data", f"{32 + delta} bytes", "needs 32 bytes")


@pytest.mark.parametrize("count", [7, 9, 0])
def test_typed_count_mismatch_both_ways(iris, count):
    plan, _ = iris
    data = TensorInput("float32", (2, 4), values=[1.0] * count)
    if count == 0:
        # No values at all and no raw data: the shape claims 8 elements.
        refused(plan, TensorInput("float32", (2, 4), raw=b""), "0 values", "8 elements")
    else:
        refused(plan, data, f"{count} values", "8 elements")


def test_negative_dimension(iris):
    plan, _ = iris
    refused(plan, TensorInput("float32", (-1, 4), raw=b""), "tensor.shape[0]", "negative")
    refused(plan, TensorInput("float32", (2, -4), raw=b""), "tensor.shape[1]", "negative")


def test_huge_dimensions_do_not_allocate(iris, imported):
    plan, _ = iris
    big = 2**31
    refused(plan, TensorInput("float32", (big, big), raw=b"\0" * 16), "over the limit")
    refused(plan, TensorInput("float32", (1, 2**62), raw=b"\0" * 16), "expects 4")
    # A graph with a dynamic second dimension: only the data length can refuse it.
    dyn = InputPlan.build(
        VersionMeta("dyn", 1, 0.0, "imported", ""),
        [("x", "tensor(float)", [None, None])],
        [("y", "tensor(float)", [None, 1])],
    )
    refused(dyn, TensorInput("float32", (big, big), raw=b"\0" * 16), "needs", max_rows=2**40)
    refused(dyn, TensorInput("float32", (2**40, 2**40, 2**40), raw=b""), max_rows=2**41)


def test_rows_over_limit(iris):
    plan, _ = iris
    refused(plan, raw(np.zeros((11, 4), np.float32)), "11 rows", "limit of 10", max_rows=10)
    rows = sm.rows_of(np.zeros((11, 4)), sm.IRIS_FEATURES)
    refused(plan, RowsInput(rows), "11 rows", "limit of 10", max_rows=10)


def test_zero_rows(iris, mixed):
    plan, _ = iris
    feeds, n = plan.feeds(TensorInput("float32", (0, 4), raw=b""), MAX_ROWS)
    assert n == 0 and feeds["input"].shape == (0, 4)
    feeds, n = plan.feeds(RowsInput([]), MAX_ROWS)
    assert n == 0 and feeds["input"].shape == (0, 4)
    feeds, n = mixed[0].feeds(RowsInput([]), MAX_ROWS)
    assert n == 0 and feeds["colour"].shape == (0, 1)
    out = plan.empty_outputs(["label", "probabilities"])
    pred = plan.assemble(["label", "probabilities"], out, "CPUExecutionProvider", 0)
    assert pred.labels.shape == (0,) and pred.probabilities.shape == (0, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_refused(iris, bad):
    plan, _ = iris
    x = np.ones((3, 4), np.float32)
    x[2, 1] = bad
    msg = refused(plan, raw(x), "tensor[2, 1]", "sepal_width", "not a finite number")
    assert "refused" in msg


def test_float64_beyond_float32_range_is_refused(iris):
    plan, _ = iris
    x = np.ones((1, 4), np.float64)
    x[0, 3] = 1e300
    refused(plan, raw(x, "float64"), "not a finite number")


def test_string_tensor_raw_layout(imported):
    from highpeaks_ml.serving.inputs import _decode_strings

    data = b"".join(len(s).to_bytes(4, "little") + s for s in (b"ab", b"", "é".encode()))
    assert list(_decode_strings(data, 3)) == ["ab", "", "é"]
    with pytest.raises(InvalidArgument, match="ends after"):
        _decode_strings(data[:2], 3)
    with pytest.raises(InvalidArgument, match="left over"):
        _decode_strings(data + b"x", 3)
    with pytest.raises(InvalidArgument, match="runs past"):
        _decode_strings(b"\x09\0\0\0abc", 1)


def test_tensor_for_categorical_model_refused(mixed):
    plan, _ = mixed
    refused(plan, raw(np.zeros((1, 3), np.float32)), "categorical features", "named rows")


# --- rows ------------------------------------------------------------------


def test_rows_give_the_same_feeds_as_the_matrix(iris):
    plan, _ = iris
    x = sm.iris_logreg().X[:5]
    feeds, n = plan.feeds(RowsInput(sm.rows_of(x, sm.IRIS_FEATURES)), MAX_ROWS)
    assert n == 5
    np.testing.assert_array_equal(feeds["input"], x)


def test_rows_missing_and_unknown_features(iris):
    plan, _ = iris
    rows = sm.rows_of(np.ones((2, 4)), sm.IRIS_FEATURES)
    del rows[1]["petal_length"]
    refused(plan, RowsInput(rows), "rows[1]", "missing feature 'petal_length'", "expects 4")
    rows = sm.rows_of(np.ones((2, 4)), sm.IRIS_FEATURES)
    rows[0]["colour"] = 1.0
    refused(plan, RowsInput(rows), "rows[0]", "unknown feature 'colour'")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("abc", "string 'abc'"),
        ("1.5", "string '1.5'"),
        (None, "null"),
        (True, "true"),
        ([1], "list"),
    ],
)
def test_rows_non_numbers_refused(iris, value, shown):
    plan, _ = iris
    rows = sm.rows_of(np.ones((3, 4)), sm.IRIS_FEATURES)
    rows[2]["sepal_width"] = value
    refused(plan, RowsInput(rows), "rows[2].sepal_width", "expects a number", shown)


def test_rows_non_finite_refused(iris):
    plan, _ = iris
    rows = sm.rows_of(np.ones((2, 4)), sm.IRIS_FEATURES)
    rows[1]["petal_width"] = math.inf
    refused(plan, RowsInput(rows), "rows[1].petal_width", "not a finite number")


def test_mixed_rows(mixed):
    plan, _ = mixed
    exp = sm.mixed_classifier()
    rows = sm.rows_of(exp.X.iloc[:4])
    feeds, n = plan.feeds(RowsInput(rows), MAX_ROWS)
    assert n == 4
    assert feeds["colour"].shape == (4, 1) and feeds["colour"].dtype == object
    assert feeds["size"].dtype == np.float32 and feeds["size"].shape == (4, 1)
    bad = [dict(r) for r in rows]
    bad[3]["colour"] = 3.0
    refused(plan, RowsInput(bad), "rows[3].colour", "categorical feature expects a string")
    bad = [dict(r) for r in rows]
    bad[0]["size"] = "big"
    refused(plan, RowsInput(bad), "rows[0].size", "expects a number")


def test_imported_rows_keyed_by_input_name(imported):
    plan, _ = imported
    x = sm.imported_logreg().X[:3]
    rows = [{"float_input": [float(v) for v in r]} for r in x]
    feeds, _ = plan.feeds(RowsInput(rows), MAX_ROWS)
    np.testing.assert_array_equal(feeds["float_input"], x)
    rows[1] = {"float_input": [1.0, 2.0]}
    refused(plan, RowsInput(rows), "rows[1].float_input", "2 numbers", "takes 4")
    refused(plan, RowsInput([{"x": 1.0}]), "unknown input 'x'")


def test_multi_input_imported_model_refuses_a_tensor(mixed):
    exp = sm.mixed_classifier()
    meta = VersionMeta("m", 1, 0.0, "imported", "classification")
    sess = plan_of(exp)[1]
    plan = InputPlan.build(
        meta,
        [(i.name, i.type, i.shape) for i in sess.get_inputs()],
        [(o.name, o.type, o.shape) for o in sess.get_outputs()],
    )
    refused(plan, raw(np.zeros((1, 3), np.float32)), "has 3 inputs", "named rows")


# --- outputs ---------------------------------------------------------------


def test_assemble_matches_sklearn(iris):
    plan, sess = iris
    exp = sm.iris_logreg()
    feeds, n = plan.feeds(raw(exp.X), MAX_ROWS)
    names = plan.outputs.names(frozenset(), plan.label)
    pred = plan.assemble(names, sess.run(names, feeds), "CPUExecutionProvider", n)
    np.testing.assert_array_equal(pred.labels, exp.estimator.predict(exp.X))
    np.testing.assert_allclose(pred.probabilities, exp.estimator.predict_proba(exp.X), atol=1e-5)
    assert pred.class_labels == ("0", "1", "2") and pred.values is None


def test_regression_values_are_flat():
    plan, sess = plan_of(sm.linear_regressor())
    exp = sm.linear_regressor()
    feeds, n = plan.feeds(raw(exp.X), MAX_ROWS)
    names = plan.outputs.names(frozenset(), plan.label)
    pred = plan.assemble(names, sess.run(names, feeds), "CPUExecutionProvider", n)
    assert pred.values.shape == (len(exp.X),)
    np.testing.assert_allclose(pred.values, exp.estimator.predict(exp.X), rtol=1e-5, atol=1e-4)
    with pytest.raises(InvalidArgument, match="no labels output"):
        plan.outputs.names(frozenset({"labels"}), plan.label)


def test_outputs_subset(iris):
    plan, _ = iris
    assert plan.outputs.names(frozenset({"probabilities"}), "m") == ["probabilities"]
    with pytest.raises(InvalidArgument, match="no values output"):
        plan.outputs.names(frozenset({"values"}), "m")


# --- property: anything a caller sends either converts or is refused cleanly ---

_DTYPES = ["float32", "float64", "int64", "int32", "bool", "string", ""]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    dtype=st.sampled_from(_DTYPES),
    shape=st.lists(st.integers(min_value=-3, max_value=2**40), min_size=0, max_size=4),
    nbytes=st.integers(min_value=0, max_value=256),
)
def test_any_tensor_converts_or_is_refused(iris, dtype, shape, nbytes):
    plan, _ = iris
    data = TensorInput(dtype, tuple(shape), raw=bytes(range(256))[:nbytes] if nbytes else b"")
    try:
        feeds, n = plan.feeds(data, 10_000)
    except InvalidArgument:
        return
    arr = feeds["input"]
    assert arr.shape == (n, 4) and arr.dtype == np.float32
    assert np.isfinite(arr).all()


# --- the accepted-signature shortcut ---------------------------------------------


def test_a_second_tensor_of_an_accepted_signature_is_checked_as_strictly():
    """After one raw tensor is accepted, the next of the same element type and row
    shape skips the checks that depend only on that; what is left must still
    refuse every bad request with the same words as a plan that never saw one."""
    fresh = lambda: plan_of(sm.iris_logreg())[0]  # noqa: E731
    warm = fresh()
    good = np.arange(8, dtype=np.float32).reshape(2, 4)
    feeds, rows = warm.feeds(raw(good), MAX_ROWS)
    assert rows == 2 and warm._accepted  # the signature is remembered
    (first,) = feeds.values()
    # Accepted again, the same feed (float64 converted to the input's float32).
    for x, dtype in ((good, "float32"), (good.astype(np.float64), "float64")):
        warm.feeds(raw(x, dtype), MAX_ROWS)
        again, n = fresh().feeds(raw(x, dtype), MAX_ROWS)
        ours, m = warm.feeds(raw(x, dtype), MAX_ROWS)
        assert n == m and all(
            np.array_equal(a, b) and a.dtype == b.dtype
            for a, b in zip(again.values(), ours.values(), strict=True)
        )
    assert np.array_equal(first, good)
    nan = good.copy()
    nan[1, 2] = np.nan
    bad = [
        raw(nan),  # NaN in a feature that does not allow missing values
        raw(np.full((2, 4), np.inf, np.float32)),
        raw(good, shape=(3, 4)),  # bytes for 2 rows, shape says 3
        raw(good, shape=(-2, 4)),
        raw(np.zeros((MAX_ROWS + 1, 4), np.float32)),  # over the row limit
        raw(np.full((2, 4), 1e300), "float64"),  # overflows float32: infinity
    ]
    for data in bad:
        expected = refused(fresh(), data)
        assert refused(warm, data) == expected
