"""The pre-publish load check (serving/loadcheck.py) on real ONNX models, hostile ones included.

It runs a real child process per check; the hostile cases run with small
limits so they are quick.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from highpeaks_ml.errors import InvalidArgument
from highpeaks_ml.registry.base import VersionMeta
from highpeaks_ml.registry.local import LocalModelStore
from highpeaks_ml.serving.loadcheck import LoadCheck, unknown_operators
from tests.conftest import make_settings
from tests.support import serving_models as sm


def _model(nodes, initializers=(), out_shape=(None, 1)) -> bytes:
    """A graph from float32 input "x" [N, 4] to float32 output "variable"."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [
            helper.make_tensor_value_info(
                "variable", TensorProto.FLOAT, list(out_shape) if out_shape else None
            )
        ],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def memory_bomb() -> bytes:
    """Loads fine; its first run asks for a 6.4 GB tensor (ConstantOfShape 40000 x 40000)."""
    shape = numpy_helper.from_array(np.array([40000, 40000], dtype=np.int64), "shape")
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    return _model(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["big"], value=one),
            helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
            helper.make_node("ReduceSum", ["x"], ["r"], keepdims=0),
            helper.make_node("Add", ["r", "s"], ["variable"]),
        ],
        [shape],
        out_shape=(1,),
    )


def endless_loop() -> bytes:
    """A Loop of 10**15 iterations: its first run never ends."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None),
        ],
        initializer=[numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")],
    )
    inits = [
        numpy_helper.from_array(np.array(10**15, dtype=np.int64), "M"),
        numpy_helper.from_array(np.array(True), "c"),
    ]
    return _model([helper.make_node("Loop", ["M", "c", "x"], ["variable"], body=body)], inits)


def fails_when_run() -> bytes:
    """Loads, but reshaping a row of 4 values into rows of 3 fails on a one-row run."""
    shape = numpy_helper.from_array(np.array([-1, 3], dtype=np.int64), "shape")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    return _model(
        [
            helper.make_node("Reshape", ["x", "shape"], ["r"]),
            helper.make_node("ReduceSum", ["r", "axes"], ["variable"], keepdims=1),
        ],
        [shape, axes],
    )


def _check(tmp_path: Path, data: bytes, meta=None, **settings) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    check = LoadCheck(make_settings(tmp_path, **settings))
    check(path, meta or VersionMeta("hostile", 0, 0.0, "imported", "regression"))


@pytest.mark.parametrize(
    "exported", [sm.iris_logreg, sm.mixed_classifier, sm.linear_regressor, sm.imported_logreg]
)
def test_models_that_serve_pass(tmp_path, exported):
    exp = exported()
    _check(tmp_path, exp.onnx, exp.meta)


@pytest.mark.parametrize(
    ("data", "settings", "needle"),
    [
        (sm.unknown_operator_onnx(), {}, "domains onnxruntime does not know"),
        (b"\x08\x01garbage", {}, "does not parse as an ONNX model"),
        (fails_when_run(), {}, "a run on a one-row input"),
        (memory_bomb(), {"load_check_memory_mb": 256}, "load_check_memory_mb=256"),
        (endless_loop(), {"load_check_timeout_s": 2}, "longer than 2 s"),
    ],
    ids=["unknown-operator", "garbage", "run-fails", "memory", "time"],
)
def test_models_that_cannot_serve_are_refused_in_our_words(tmp_path, data, settings, needle):
    with pytest.raises(InvalidArgument) as err:
        _check(tmp_path, data, **settings)
    message = err.value.message
    assert needle in message and "nothing was stored" in message
    assert "ONNXRuntimeError" not in message and ".cc:" not in message


def test_the_store_runs_the_check_before_a_version_exists(tmp_path):
    store = LocalModelStore(tmp_path / "home")
    store.start()
    store.set_publish_check(LoadCheck(make_settings(tmp_path)))
    exp = sm.imported_logreg()
    store.publish("m", exp.onnx, exp.meta, aliases=("production",))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(sm.unknown_operator_onnx())
    with pytest.raises(InvalidArgument):
        store.publish_file("m", bad, exp.meta, aliases=("production",))
    assert bad.exists()  # the caller keeps its file
    with pytest.raises(InvalidArgument):
        store.publish("m", sm.unknown_operator_onnx(), exp.meta, aliases=("production",))
    info = store.get_model("m")
    assert [v.version for v in info.versions] == [1] and info.aliases == {"production": 1}


def test_unknown_operators_are_named_from_the_graph():
    assert unknown_operators(sm.unknown_operator_onnx("x.y", "Op")) == ["x.y:Op"]
    assert unknown_operators(sm.iris_logreg().onnx) == []
    assert unknown_operators(b"not onnx") == []
