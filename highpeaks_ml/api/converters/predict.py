"""PredictService messages <-> serving domain objects (and numpy arrays <-> Tensor).

The conversion is the hot path of every prediction, so it avoids per-element
Python work where the wire allows: ``raw_data`` is handed to numpy as it is
(``np.frombuffer``, no copy), typed values go through ``np.fromiter`` after
the size checks, and outputs are written with ``tobytes()`` (raw) or one
``extend(tolist())`` per tensor (typed).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from highpeaks_ml.api.errors import status_for
from highpeaks_ml.errors import InvalidArgument
from highpeaks_ml.serving.inputs import Prediction, RowsInput, TensorInput
from highpeaks_ml.serving.manager import PredictQuery
from highpeaks_ml.v1 import common_pb2, predict_pb2

log = logging.getLogger("highpeaks_ml.api")

#: DataType enum value -> element type name of the serving domain.
DTYPE_NAMES = {
    common_pb2.DATA_TYPE_FLOAT32: "float32",
    common_pb2.DATA_TYPE_FLOAT64: "float64",
    common_pb2.DATA_TYPE_INT64: "int64",
    common_pb2.DATA_TYPE_INT32: "int32",
    common_pb2.DATA_TYPE_BOOL: "bool",
    common_pb2.DATA_TYPE_STRING: "string",
}
DTYPE_ENUMS = {v: k for k, v in DTYPE_NAMES.items()}
#: The typed repeated field that carries each element type.
VALUE_FIELDS = {
    "float32": "float_values",
    "float64": "double_values",
    "int64": "int64_values",
    "int32": "int32_values",
    "bool": "bool_values",
    "string": "string_values",
}
#: The typed value fields in field-number order (the first one set is named in errors).
_VALUE_FIELD_ORDER = tuple(
    sorted(
        VALUE_FIELDS.values(), key=lambda n: common_pb2.Tensor.DESCRIPTOR.fields_by_name[n].number
    )
)
_OUTPUT_KINDS = {
    predict_pb2.OUTPUT_KIND_LABELS: "labels",
    predict_pb2.OUTPUT_KIND_PROBABILITIES: "probabilities",
    predict_pb2.OUTPUT_KIND_VALUES: "values",
}
_NUMPY_KINDS = {
    np.dtype(np.float32): "float32",
    np.dtype(np.float64): "float64",
    np.dtype(np.int64): "int64",
    np.dtype(np.int32): "int32",
    np.dtype(np.bool_): "bool",
}


# --- requests ----------------------------------------------------------------


def tensor_from_proto(t: common_pb2.Tensor, where: str = "tensor") -> TensorInput:
    """A domain ``TensorInput`` (values are not converted yet; sizes are checked first)."""
    dtype = DTYPE_NAMES.get(t.data_type, "")
    if t.data_type and not dtype:
        raise InvalidArgument(f"{where}.data_type: unknown value {t.data_type}")
    # Not ListFields(), and raw_data read once: every read of a bytes field
    # copies it out of the message (ListFields() too), which for a large raw
    # tensor cost more than running the model (docs/serving.md).
    present = [name for name in _VALUE_FIELD_ORDER if len(getattr(t, name))]
    raw = t.raw_data
    if present:
        if raw:
            raise InvalidArgument(f"{where}: give either raw_data or {present[0]}, not both")
        if len(present) > 1 or (dtype and present[0] != VALUE_FIELDS[dtype]):
            expected = VALUE_FIELDS.get(dtype, "the field of data_type")
            raise InvalidArgument(
                f"{where}.{present[0]}: does not match data_type"
                f" {common_pb2.DataType.Name(t.data_type)} (use {expected} or raw_data)"
            )
        values: Sequence[Any] | None = getattr(t, present[0])
        return TensorInput(dtype, tuple(t.shape), values=values)
    return TensorInput(dtype, tuple(t.shape), raw=raw)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        return v.number_value
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "list_value":
        return [_value(x) for x in v.list_value.values]
    if kind == "struct_value":
        return {k: _value(x) for k, x in v.struct_value.fields.items()}
    return None


def rows_from_proto(rows: Sequence[Any]) -> RowsInput:
    """Named rows from ``google.protobuf.Struct`` rows (numbers are floats, as in JSON)."""
    out = []
    for row in rows:
        d = {}
        for k, v in row.fields.items():
            kind = v.WhichOneof("kind")
            # The two common cases first, inline: this runs once per cell.
            if kind == "number_value":
                d[k] = v.number_value
            elif kind == "string_value":
                d[k] = v.string_value
            else:
                d[k] = _value(v)
        out.append(d)
    return RowsInput(out)


def query_from_proto(req: predict_pb2.PredictRequest) -> PredictQuery:
    """A ``PredictQuery`` for the serving domain."""
    ref = req.model
    if not ref.name:
        raise InvalidArgument("model.name: required")
    selector = ref.WhichOneof("selector")
    version: int | None = None
    alias: str | None = None
    if selector == "version":
        if ref.version < 1:
            raise InvalidArgument("model.version: versions start at 1")
        version = ref.version
    elif selector == "alias":
        if not ref.alias:
            raise InvalidArgument("model.alias: empty")
        alias = ref.alias
    which = req.WhichOneof("inputs")
    data: TensorInput | RowsInput
    if which == "tensor":
        data = tensor_from_proto(req.tensor)
    elif which == "rows":
        data = rows_from_proto(req.rows.rows)
    else:
        raise InvalidArgument("inputs: give a tensor or rows")
    outputs: frozenset[str] = frozenset()
    if req.outputs:
        kinds = []
        for k in req.outputs:
            name = _OUTPUT_KINDS.get(k)
            if name is None:
                raise InvalidArgument(f"outputs: {k} is not a valid OutputKind")
            kinds.append(name)
        outputs = frozenset(kinds)
    return PredictQuery(ref.name, version, alias, data, outputs)


# --- responses ---------------------------------------------------------------


def encode_strings(values: Any) -> bytes:
    """The length-prefixed raw layout of a STRING tensor (4-byte LE length + UTF-8)."""
    parts = []
    for v in values:
        b = v.encode("utf-8") if isinstance(v, str) else bytes(v)
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def tensor_to_proto(arr: np.ndarray, raw: bool, out: common_pb2.Tensor | None = None) -> Any:
    """Write ``arr`` into ``out`` (or a new Tensor) as raw bytes or typed values."""
    t = out if out is not None else common_pb2.Tensor()
    if arr.dtype == object or arr.dtype.kind in "US":
        t.data_type = common_pb2.DATA_TYPE_STRING
        t.shape.extend(arr.shape)
        flat = arr.reshape(-1)
        if raw:
            t.raw_data = encode_strings(flat)
        else:
            t.string_values.extend(str(v) for v in flat)
        return t
    kind = _NUMPY_KINDS.get(arr.dtype)
    if kind is None:  # e.g. big-endian or unsigned: normalise to a served type
        arr = arr.astype(np.float32 if arr.dtype.kind == "f" else np.int64)
        kind = _NUMPY_KINDS[arr.dtype]
    t.data_type = DTYPE_ENUMS[kind]
    t.shape.extend(arr.shape)
    if raw:
        t.raw_data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    else:
        getattr(t, VALUE_FIELDS[kind]).extend(arr.reshape(-1).tolist())
    return t


def response_from_prediction(
    pred: Prediction, request_id: str, raw: bool
) -> predict_pb2.PredictResponse:
    """The ``PredictResponse`` for a domain ``Prediction``."""
    resp = predict_pb2.PredictResponse(
        model_name=pred.model_name,
        model_version=pred.version,
        id=request_id,
        execution_provider=pred.provider,
    )
    if pred.labels is not None:
        tensor_to_proto(pred.labels, raw, resp.labels)
    if pred.probabilities is not None:
        tensor_to_proto(pred.probabilities, raw, resp.probabilities)
        resp.class_labels.extend(pred.class_labels)
    if pred.values is not None:
        tensor_to_proto(pred.values, raw, resp.values)
    return resp


def stream_error(exc: BaseException, request_id: str) -> predict_pb2.PredictStreamResponse:
    """A ``PredictStreamResponse`` carrying the error of one stream request."""
    code, message = status_for(exc)
    if code.name == "INTERNAL":
        log.error("unexpected error in a PredictStream request", exc_info=exc)
    return predict_pb2.PredictStreamResponse(
        error=common_pb2.StreamError(code=code.value[0], message=message), id=request_id
    )


# --- for clients ---------------------------------------------------------------


def tensor_to_numpy(t: common_pb2.Tensor) -> np.ndarray:
    """A numpy array from a Tensor (raw or typed), shaped by ``t.shape``."""
    dtype = DTYPE_NAMES.get(t.data_type)
    if dtype is None:
        raise ValueError(f"tensor has no data_type ({t.data_type})")
    shape = tuple(t.shape)
    if dtype == "string":
        raw = t.raw_data
        if raw:
            items = []
            pos = 0
            while pos < len(raw):
                (n,) = struct.unpack_from("<I", raw, pos)
                items.append(raw[pos + 4 : pos + 4 + n].decode("utf-8"))
                pos += 4 + n
        else:
            items = list(t.string_values)
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    np_dtype = np.dtype(dtype).newbyteorder("<")
    raw = t.raw_data  # one copy out of the message, not one per read
    if raw:
        return np.frombuffer(raw, dtype=np_dtype).reshape(shape)
    values = getattr(t, VALUE_FIELDS[dtype])
    return np.fromiter(values, dtype=np_dtype, count=len(values)).reshape(shape)


def numpy_to_tensor(arr: np.ndarray, raw: bool = True) -> common_pb2.Tensor:
    """A Tensor from a numpy array (raw little-endian bytes by default)."""
    return tensor_to_proto(np.asarray(arr), raw)


# --- request building and results, for the Python client and the CLI ----------

_OUTPUT_ENUMS = {v: k for k, v in _OUTPUT_KINDS.items()}


def _native(v: Any) -> Any:
    """A JSON-compatible Python value from a numpy/pandas scalar."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        return v.item()
    return v


def rows_to_proto(rows: Any, out: Any) -> None:
    """Fill ``FeatureRows`` ``out`` from a list of dicts or a pandas DataFrame."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        rows = rows.to_dict(orient="records")
    for row in rows:
        s = out.rows.add()
        s.update({str(k): _native(v) for k, v in row.items()})


def _matrix(X: Any) -> np.ndarray:
    arr = np.asarray(X)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)  # one row
    if arr.dtype.kind == "f" and arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)
    elif arr.dtype.kind in "iu" and arr.dtype not in (np.int32, np.int64):
        arr = arr.astype(np.int64)
    elif arr.dtype.kind in "US":
        arr = arr.astype(object)
    return arr


def build_request(
    name: str,
    X: Any,
    version: int | None = None,
    alias: str | None = None,
    raw: bool = True,
    outputs: Sequence[str] = (),
    request_id: str = "",
) -> predict_pb2.PredictRequest:
    """A ``PredictRequest`` for ``X``: a numpy array (a tensor; raw bytes when ``raw``),
    or a list of dicts / a pandas DataFrame (named rows).

    ``outputs`` is a subset of ("labels", "probabilities", "values").
    """
    if version is not None and alias is not None:
        raise ValueError("give a version or an alias, not both")
    req = predict_pb2.PredictRequest(raw_output=raw, id=request_id)
    req.model.name = name
    if version is not None:
        req.model.version = version
    elif alias is not None:
        req.model.alias = alias
    for o in outputs:
        req.outputs.append(_OUTPUT_ENUMS[o])  # type: ignore[arg-type]
    is_table = hasattr(X, "to_dict") and hasattr(X, "columns")
    if is_table or (isinstance(X, list) and X and isinstance(X[0], dict)):
        rows_to_proto(X, req.rows)
    elif isinstance(X, list) and not X:
        req.rows.SetInParent()  # zero rows
    else:
        tensor_to_proto(_matrix(X), raw, req.tensor)
    return req


class PredictResult:
    """One prediction as numpy arrays (``None`` for outputs the model does not have)."""

    __slots__ = (
        "class_labels",
        "execution_provider",
        "id",
        "labels",
        "model_name",
        "model_version",
        "probabilities",
        "values",
    )

    def __init__(self, resp: predict_pb2.PredictResponse) -> None:
        self.model_name: str = resp.model_name
        self.model_version: int = resp.model_version
        self.execution_provider: str = resp.execution_provider
        self.id: str = resp.id
        self.labels = tensor_to_numpy(resp.labels) if resp.HasField("labels") else None
        self.probabilities = (
            tensor_to_numpy(resp.probabilities) if resp.HasField("probabilities") else None
        )
        self.class_labels: list[str] = list(resp.class_labels)
        self.values = tensor_to_numpy(resp.values) if resp.HasField("values") else None

    def __repr__(self) -> str:
        n = next((len(a) for a in (self.labels, self.values) if a is not None), 0)
        return f"PredictResult({self.model_name!r} v{self.model_version}, {n} rows)"


class StreamFailure:
    """A PredictStream request answered with an error (the stream went on)."""

    __slots__ = ("code", "id", "message")

    def __init__(self, code: int, message: str, request_id: str) -> None:
        self.code = code  # a google.rpc.Code value (3 = INVALID_ARGUMENT, ...)
        self.message = message
        self.id = request_id

    def __repr__(self) -> str:
        return f"StreamFailure(code={self.code}, message={self.message!r}, id={self.id!r})"
