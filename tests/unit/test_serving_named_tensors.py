"""Domain rules the Open Inference Protocol relies on: one tensor per input
(``TensorsInput``), outputs by name and alias, metadata outputs, statistics.

Plans are built from the recorded metadata and the session's (name, type,
shape) lists, as ``ModelManager`` does after loading, without onnxruntime.
"""

from __future__ import annotations

import numpy as np
import pytest

from highpeaks_ml.errors import InvalidArgument
from highpeaks_ml.serving.inputs import (
    InputPlan,
    Naming,
    TensorInput,
    TensorsInput,
    served_outputs,
)
from highpeaks_ml.serving.stats import VersionStats
from tests.support import serving_models as sm

OIP = Naming(
    tensor="inputs['x']",
    dtype="inputs['x'].datatype",
    raw="raw_input_contents[0]",
    values="inputs['x'].contents",
    unset="",
    types={"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32",
           "bool": "BOOL", "string": "BYTES"},
)  # fmt: skip


def _plan(exp) -> InputPlan:
    ort = {"float32": "tensor(float)", "int64": "tensor(int64)", "string": "tensor(string)"}
    meta = exp.meta
    return InputPlan.build(
        meta,
        [(t.name, ort[t.dtype], t.shape) for t in meta.inputs],
        [(t.name, ort[t.dtype], t.shape) for t in meta.outputs],
    )


def test_per_feature_inputs_by_name_typed_bytes_and_raw():
    plan = _plan(sm.mixed_classifier())
    size = TensorInput("float32", (2, 1), values=[1.0, 2.0])
    colour = TensorInput("string", (2, 1), values=[b"red", b"blue"])
    weight = TensorInput("float32", (2, 1), raw=np.array([3, 4], "<f4").tobytes())
    feeds, rows = plan.feeds(TensorsInput({"weight": weight, "size": size, "colour": colour}), 10)
    assert rows == 2 and list(feeds) == ["size", "colour", "weight"]
    assert feeds["colour"].dtype == object and feeds["colour"][:, 0].tolist() == ["red", "blue"]
    assert feeds["weight"].shape == (2, 1) and feeds["weight"].dtype == np.float32


def test_per_feature_refusals_name_the_input():
    plan = _plan(sm.mixed_classifier())
    ok = {
        "size": TensorInput("float32", (1, 1), values=[1.0]),
        "colour": TensorInput("string", (1, 1), values=[b"red"]),
        "weight": TensorInput("float32", (1, 1), values=[1.0]),
    }
    with pytest.raises(InvalidArgument, match="missing input 'weight'"):
        plan.feeds(TensorsInput({k: v for k, v in ok.items() if k != "weight"}), 10)
    with pytest.raises(InvalidArgument, match="unknown input 'colour2'"):
        plan.feeds(TensorsInput({**ok, "colour2": ok["colour"]}), 10)
    bad = TensorInput("string", (1, 1), values=[b"\xff"], naming=OIP)
    with pytest.raises(InvalidArgument, match=r"inputs\['x'\].contents: string element 0"):
        plan.feeds(TensorsInput({**ok, "colour": bad}), 10)
    two_rows = TensorInput("float32", (2, 1), values=[1.0, 2.0], naming=OIP)
    with pytest.raises(InvalidArgument, match="2 rows but input 'size' has 1"):
        plan.feeds(TensorsInput({**ok, "weight": two_rows}), 10)
    nan = TensorInput("float32", (1, 1), values=[float("nan")], naming=OIP)
    with pytest.raises(InvalidArgument, match=r"\(row 0, feature 'weight'\)"):
        plan.feeds(TensorsInput({**ok, "weight": nan}), 10)
    raw = TensorInput("float32", (1, 1), raw=b"\x00" * 3, naming=OIP)
    with pytest.raises(InvalidArgument, match=r"raw_input_contents\[0\]: 3 bytes .* FP32"):
        plan.feeds(TensorsInput({**ok, "size": raw}), 10)


def test_matrix_model_by_name_uses_the_same_checks_as_a_lone_tensor():
    plan = _plan(sm.iris_logreg())
    t = TensorInput("float32", (1, 5), values=[0.0] * 5, naming=OIP)
    with pytest.raises(InvalidArgument) as named:
        plan.feeds(TensorsInput({"input": t}), 10)
    assert str(named.value).startswith("inputs['x'].shape[1]: 5 features given")
    with pytest.raises(InvalidArgument) as native:
        plan.feeds(TensorInput("float32", (1, 5), values=[0.0] * 5), 10)
    assert str(native.value) == str(named.value).replace("inputs['x']", "tensor")


def test_outputs_by_name_and_alias():
    clf = _plan(sm.iris_logreg()).outputs
    assert clf.resolve(["predict", "probabilities"], "m") == ["label", "probabilities"]
    assert clf.resolve(["predict_proba"], "m") == ["probabilities"]
    with pytest.raises(InvalidArgument, match="requested twice"):
        clf.resolve(["label", "label"], "m")
    reg = _plan(sm.linear_regressor()).outputs
    assert reg.resolve(["predict", "variable"], "m") == ["variable", "variable"]
    with pytest.raises(
        InvalidArgument, match=r"has no output 'predict_proba' .*aliases: predict\)"
    ):
        reg.resolve(["predict_proba"], "m")


def test_served_outputs_from_metadata():
    assert [o.name for o in served_outputs(sm.iris_logreg().meta)] == ["label", "probabilities"]
    assert [o.name for o in served_outputs(sm.linear_regressor().meta)] == ["variable"]


def test_version_stats():
    s = VersionStats("m", 2)
    s.record_execution(4, 0.001)
    s.record_execution(4, 0.002)
    s.record_execution(1, 0.001)
    for _ in range(9):
        s.record_request(True, 1, 0.01)
    s.record_request(False, 5, 0.5)
    s.record_queue(0.25)
    snap = s.snapshot()
    assert (snap.inference_count, snap.execution_count) == (9, 3)
    assert (snap.success.count, snap.fail.count, snap.fail.ns) == (9, 1, 500_000_000)
    assert [(b.batch_size, b.compute.count) for b in snap.batches] == [(1, 1), (4, 2)]
    assert snap.queue.ns == 250_000_000 and snap.last_inference_ms > 0
