"""The element-type table and the tensor codecs shared by client and server."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from highpeaks_ml.api.oip_messages import ModelInferResponse
from highpeaks_ml.client import build_request
from highpeaks_ml.tensors import (
    BY_NAME,
    ELEMENT_TYPES,
    decode_strings,
    encode_strings,
    tensor_to_numpy,
    write_oip_output,
    write_tensor,
)
from highpeaks_ml.v1 import common_pb2


def test_table_matches_every_wire() -> None:
    """Each column agrees with the enum, field or type string it names."""
    contents = {f.name for f in ModelInferResponse().outputs.add().contents.DESCRIPTOR.fields}
    for e in ELEMENT_TYPES:
        assert common_pb2.DataType.Name(e.proto) == f"DATA_TYPE_{e.shown}"  # type: ignore[arg-type]
        assert e.value_field in common_pb2.Tensor.DESCRIPTOR.fields_by_name
        assert e.oip_contents in contents
        assert onnx.helper.tensor_dtype_to_np_dtype(e.onnx) == (
            np.dtype(object) if e.name == "string" else e.numpy
        )
    # Every DataType but UNSPECIFIED is served.
    assert {e.proto for e in ELEMENT_TYPES} == set(common_pb2.DataType.values()) - {0}


def test_ort_type_strings_are_onnxruntimes() -> None:
    """A graph with one input of each ONNX type: onnxruntime names them as the table does."""
    import onnxruntime as ort
    from onnx import helper

    ins = [
        helper.make_tensor_value_info(f"x{i}", e.onnx, [None]) for i, e in enumerate(ELEMENT_TYPES)
    ]
    outs = [
        helper.make_tensor_value_info(f"y{i}", e.onnx, [None]) for i, e in enumerate(ELEMENT_TYPES)
    ]
    nodes = [helper.make_node("Identity", [f"x{i}"], [f"y{i}"]) for i in range(len(ELEMENT_TYPES))]
    model = helper.make_model(
        helper.make_graph(nodes, "g", ins, outs), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.type for i in sess.get_inputs()] == [e.ort for e in ELEMENT_TYPES]


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.arange(4, dtype=np.float64),
        np.array([[1], [-2]], dtype=np.int64),
        np.array([3, 4], dtype=np.int32),
        np.array([True, False]),
        np.array(["a", "", "héllo"], dtype=object),
    ],
)
@pytest.mark.parametrize("raw", [True, False])
def test_native_round_trip(arr: np.ndarray, raw: bool) -> None:
    t = write_tensor(arr, raw, common_pb2.Tensor())
    back = tensor_to_numpy(common_pb2.Tensor.FromString(t.SerializeToString()))
    assert back.shape == arr.shape
    assert back.tolist() == arr.tolist()
    assert t.data_type == BY_NAME["string" if arr.dtype == object else str(arr.dtype)].proto


def test_unserved_types_are_normalised() -> None:
    t = write_tensor(np.array([1, 2], dtype=np.uint8), True, common_pb2.Tensor())
    assert t.data_type == common_pb2.DATA_TYPE_INT64
    t = write_tensor(np.array([1.5], dtype=">f8"), True, common_pb2.Tensor())
    assert tensor_to_numpy(t).tolist() == [1.5]


def test_strings_layout() -> None:
    raw = encode_strings(["ab", "", "ü"])
    assert raw[:6] == b"\x02\x00\x00\x00ab"
    assert decode_strings(raw) == ["ab", "", "ü"]


def test_oip_outputs() -> None:
    resp = ModelInferResponse()
    write_oip_output(resp, "label", np.array([1, 2], dtype=np.int64), raw=True)
    write_oip_output(resp, "probabilities", np.ones((2, 2), dtype=np.float32), raw=False)
    assert [(o.name, o.datatype, list(o.shape)) for o in resp.outputs] == [
        ("label", "INT64", [2]),
        ("probabilities", "FP32", [2, 2]),
    ]
    assert np.frombuffer(resp.raw_output_contents[0], "<i8").tolist() == [1, 2]
    assert list(resp.outputs[1].contents.fp32_contents) == [1.0] * 4


def test_client_imports_no_server_code() -> None:
    """`import highpeaks_ml.client` and building/reading predictions load nothing of the server."""
    code = (
        "import sys, numpy as np\n"
        "import highpeaks_ml.client as c\n"
        "req = c.build_request('m', np.zeros((2, 3), np.float32), outputs=['labels'])\n"
        "from highpeaks_ml.v1 import predict_pb2\n"
        "resp = predict_pb2.PredictResponse(model_name='m')\n"
        "resp.labels.CopyFrom(req.tensor)\n"
        "assert c.PredictResult(resp).labels.shape == (2, 3)\n"
        "c._task_enum('classification')\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('highpeaks_ml.api',"
        " 'highpeaks_ml.serving', 'highpeaks_ml.training', 'highpeaks_ml.registry',"
        " 'highpeaks_ml.config', 'onnxruntime')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_build_request_round_trips_through_server_converter() -> None:
    from highpeaks_ml.api.converters.predict import query_from_proto

    req = build_request("m", np.arange(6, dtype=np.float32).reshape(2, 3), alias="prod")
    query = query_from_proto(req)
    assert (query.name, query.alias, query.data.dtype, query.data.shape) == (  # type: ignore[union-attr]
        "m",
        "prod",
        "float32",
        (2, 3),
    )
