"""Both front doors' way onto a version's compiled request path (serving/fastlane.py).

``native`` (PredictService.Predict) and ``infer`` (the Open Inference
Protocol's ModelInfer) answer the common request, one raw numeric tensor
with default outputs for a model reference answered before, through its
``Lane``, or return None, and the servicer takes the general path. They
read each message field once, refuse nothing and change nothing before
they know the lane will answer: every refusal, with its wording, stays the
general path's. They answer with the message the general path would,
written by a writer compiled per version (``_NativeWriter``, ``_InferWriter``;
a test compares the two paths' messages).
"""

from __future__ import annotations

from typing import Any

from grpc import aio

from highpeaks_ml.api.converters import oip as oip_conv
from highpeaks_ml.api.converters import predict as predict_conv
from highpeaks_ml.api.oip_messages import ModelInferRequest, ModelInferResponse
from highpeaks_ml.serving.fastlane import open_lane
from highpeaks_ml.serving.inputs import served_output
from highpeaks_ml.serving.manager import LoadedVersion, ModelManager
from highpeaks_ml.tensors import BY_OIP, BY_PROTO, raw_element_type
from highpeaks_ml.v1 import common_pb2, predict_pb2

_TENSOR = common_pb2.Tensor.DESCRIPTOR.fields_by_name
_DATA_TYPE, _SHAPE, _RAW = _TENSOR["data_type"], _TENSOR["shape"], _TENSOR["raw_data"]
_INPUT_SHAPE = ModelInferRequest.DESCRIPTOR.nested_types_by_name["InferInputTensor"].fields_by_name[
    "shape"
]
#: The native wire's DataType value -> element type name.
_NATIVE_TYPES = {code: et.name for code, et in BY_PROTO.items()}
#: The OIP datatype -> element type name.
_OIP_TYPES = {name: et.name for name, et in BY_OIP.items()}


def native(
    models: ModelManager, request: predict_pb2.PredictRequest, context: aio.ServicerContext
) -> predict_pb2.PredictResponse | None:
    """The answer to a Predict request through its lane, or None (general path)."""
    if request.WhichOneof("inputs") != "tensor" or request.outputs:
        return None
    # One read of the tensor's fields: exactly data_type, shape and raw_data (a
    # typed-values field alongside is the general path's refusal).
    fields = request.tensor.ListFields()
    if (
        len(fields) != 3
        or fields[0][0] is not _DATA_TYPE
        or fields[1][0] is not _SHAPE
        or fields[2][0] is not _RAW
    ):
        return None
    ref = request.model
    # The reference's bytes name it exactly (name, and version or alias or neither).
    key = ref.SerializeToString()
    lane = models.lanes.get(key)
    if lane is None:
        lane = _open_native(models, key, ref)
        if lane is None:
            return None
    dtype = _NATIVE_TYPES.get(fields[0][1])
    remaining = context.time_remaining()
    if dtype is None or (remaining is not None and remaining <= 0):
        return None  # the general path refuses (or says the deadline passed)
    got = lane.run(dtype, tuple(fields[1][1]), fields[2][1])
    if got is None:
        return None
    outs, rows = got
    lv = lane.lv
    if request.raw_output:
        writer = lane.api.get("native")
        if writer is None:
            writer = lane.api["native"] = _NativeWriter(lv)
        resp = writer.write(outs, request.id)
        if resp is not None:
            return resp
    pred = lv.plan.assemble(lv.all_outputs, outs, lv.provider, rows)
    return predict_conv.response_from_prediction(pred, request.id, request.raw_output)


class _NativeWriter:
    """A version's raw ``PredictResponse``, compiled from its first outputs: which output
    goes in which field, with which element type.

    The same message ``plan.assemble`` + ``response_from_prediction`` make
    (a test compares them), without the ``Prediction`` between them. An
    output whose type is not the one compiled (or is not plain numeric:
    strings) makes ``write`` return None, and the converters write it.
    """

    __slots__ = ("_head", "_kinds", "_parts")

    def __init__(self, lv: LoadedVersion) -> None:
        o = lv.plan.outputs
        kinds = {o.label: "labels", o.probabilities: "probabilities", o.values: "values"}
        self._parts: tuple[tuple[str, int, Any, int, bool], ...] | None = None
        self._kinds = tuple(
            (kinds[name], i) for i, name in enumerate(lv.all_outputs) if name in kinds
        )
        self._head: dict[str, Any] = {
            "model_name": lv.meta.model_name,
            "model_version": lv.meta.version,
            "execution_provider": lv.provider,
            "class_labels": o.class_labels if o.probabilities in lv.all_outputs else (),
        }

    def _compile(self, outs: list[Any]) -> tuple[tuple[str, int, Any, int, bool], ...]:
        parts = []
        for kind, i in self._kinds:
            served = served_output(kind, outs[i])
            et = raw_element_type(served.dtype)
            if et is None or served.dtype != outs[i].dtype:  # strings, casts: converters
                return ()
            parts.append((kind, i, outs[i].dtype, et.proto, kind != "probabilities"))
        return tuple(parts)

    def write(self, outs: list[Any], request_id: str) -> predict_pb2.PredictResponse | None:
        """The response, or None for outputs ``response_from_prediction`` must write."""
        parts = self._parts
        if parts is None:
            parts = self._parts = self._compile(outs)
        if not parts:
            return None
        resp = predict_pb2.PredictResponse(id=request_id, **self._head)
        for kind, i, dtype, code, flatten in parts:
            arr = outs[i]
            if arr.dtype != dtype:
                return None
            if flatten and arr.ndim == 2 and arr.shape[1] == 1:  # served_output's reshape
                arr = arr.reshape(-1)
            tensor = getattr(resp, kind)
            tensor.data_type = code
            tensor.shape.extend(arr.shape)
            tensor.raw_data = arr.tobytes()
        return resp


def _open_native(models: ModelManager, key: bytes, ref: common_pb2.ModelRef) -> Any:
    if not ref.name:
        return None
    selector = ref.WhichOneof("selector")
    version = alias = None
    if selector == "version":
        if ref.version < 1:
            return None
        version = ref.version
    elif selector == "alias":
        if not ref.alias:
            return None
        alias = ref.alias
    return open_lane(models, key, ref.name, version, alias)


def infer(models: ModelManager, request: Any, context: aio.ServicerContext) -> Any | None:
    """The ModelInferResponse of a ModelInfer request through its lane, or None (general
    path); outputs raw (``raw_input_contents`` given, no ``binary_data_output``)."""
    inputs = request.inputs
    raws = request.raw_input_contents
    if len(inputs) != 1 or len(raws) != 1 or request.outputs or request.parameters:
        return None
    # Exactly name, datatype and shape (fields 1-3): no parameters, no typed contents.
    fields = inputs[0].ListFields()
    if len(fields) != 3 or fields[2][0] is not _INPUT_SHAPE:
        return None
    name = request.model_name
    version = request.model_version
    key = ("v2", name, version)
    lane = models.lanes.get(key)
    if lane is None:
        lane = _open_infer(models, key, name, version)
        if lane is None:
            return None
    dtype = _OIP_TYPES.get(fields[1][1])
    remaining = context.time_remaining()
    if dtype is None or fields[0][1] != lane.slot or (remaining is not None and remaining <= 0):
        return None
    got = lane.run(dtype, tuple(fields[2][1]), raws[0])
    if got is None:
        return None
    outs, rows = got
    writer = lane.api.get("v2")
    if writer is None:
        writer = lane.api["v2"] = _InferWriter(lane.lv)
    resp = writer.write(outs, request.id)
    if resp is None:
        lv = lane.lv
        pred = lv.plan.assemble(lv.all_outputs, outs, lv.provider, rows)
        resp = oip_conv.infer_response(pred, request.id, True)
    return resp


class _InferWriter:
    """A version's raw ModelInferResponse, compiled from its first outputs (as
    ``_NativeWriter``): the outputs as onnxruntime returns them, by ONNX name."""

    __slots__ = ("_head", "_names", "_parts")

    def __init__(self, lv: LoadedVersion) -> None:
        self._names = lv.all_outputs
        self._parts: tuple[tuple[str, Any, str], ...] | None = None
        self._head = {"model_name": lv.meta.model_name, "model_version": str(lv.meta.version)}

    def _compile(self, outs: list[Any]) -> tuple[tuple[str, Any, str], ...]:
        parts = []
        for name, arr in zip(self._names, outs, strict=True):
            et = raw_element_type(arr.dtype)
            if et is None:  # strings or an unusual type: the converters
                return ()
            parts.append((name, arr.dtype, et.oip))
        return tuple(parts)

    def write(self, outs: list[Any], request_id: str) -> Any | None:
        """The response, or None for outputs ``infer_response`` must write."""
        parts = self._parts
        if parts is None:
            parts = self._parts = self._compile(outs)
        if not parts:
            return None
        tensors = []
        contents = []
        for (name, dtype, datatype), arr in zip(parts, outs, strict=True):
            if arr.dtype != dtype:
                return None
            tensors.append({"name": name, "datatype": datatype, "shape": arr.shape})
            contents.append(arr.tobytes())
        return ModelInferResponse(
            id=request_id, outputs=tensors, raw_output_contents=contents, **self._head
        )


def _open_infer(models: ModelManager, key: tuple[str, str, str], name: str, version: str) -> Any:
    if not name:
        return None
    try:
        number, alias = oip_conv.version_selector(version, "model_version")
    except Exception:
        return None
    return open_lane(models, key, name, number, alias)


__all__ = ["infer", "native"]
