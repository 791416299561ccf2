"""Element types and the tensor <-> numpy codecs shared by the client and the server.

One table (``ELEMENT_TYPES``) names every element type served: its domain
name, numpy dtype, ONNX ``TensorProto`` type, onnxruntime type string and its
name on each wire (the native ``common.DataType`` enum and typed field, the
Open Inference Protocol's datatype and ``contents`` field). Every other
module derives its lookups from it.

The codecs turn numpy arrays into ``common.Tensor`` messages and back (raw
little-endian bytes or typed values; STRING as the length-prefixed layout)
and write Open Inference Protocol outputs. This module imports numpy only:
no domain code, no grpc, no generated code, no onnxruntime, so the domain
(``serving``, ``registry``) may read the table too and ``import
highpeaks_ml.client`` stays light (a test checks ``sys.modules``). The
messages are duck-typed; the enum numbers are the protos' (a test checks).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ElementType:
    """One element type and its name in every vocabulary that has one."""

    #: Domain name ("float32"), what ``TensorSpec.dtype`` and the serving core use.
    name: str
    #: numpy dtype (little-endian; strings are object arrays).
    numpy: np.dtype[Any]
    #: ONNX ``TensorProto.DataType`` value.
    onnx: int
    #: onnxruntime's type string of a tensor input/output.
    ort: str
    #: Native wire: the ``common.DataType`` value ...
    proto: int
    #: ... its name as messages show it ...
    shown: str
    #: ... and the ``common.Tensor`` field carrying typed values.
    value_field: str
    #: Open Inference Protocol: the datatype name ...
    oip: str
    #: ... and the ``InferTensorContents`` field carrying typed values.
    oip_contents: str


#: Every element type served, in one table.
# fmt: off
ELEMENT_TYPES: tuple[ElementType, ...] = (
    ElementType(
        "float32", np.dtype("<f4"), 1, "tensor(float)",
        1, "FLOAT32", "float_values", "FP32", "fp32_contents",
    ),
    ElementType(
        "float64", np.dtype("<f8"), 11, "tensor(double)",
        2, "FLOAT64", "double_values", "FP64", "fp64_contents",
    ),
    ElementType(
        "int64", np.dtype("<i8"), 7, "tensor(int64)",
        3, "INT64", "int64_values", "INT64", "int64_contents",
    ),
    ElementType(
        "int32", np.dtype("<i4"), 6, "tensor(int32)",
        4, "INT32", "int32_values", "INT32", "int_contents",
    ),
    ElementType(
        "bool", np.dtype(np.bool_), 9, "tensor(bool)",
        5, "BOOL", "bool_values", "BOOL", "bool_contents",
    ),
    ElementType(
        "string", np.dtype(object), 8, "tensor(string)",
        6, "STRING", "string_values", "BYTES", "bytes_contents",
    ),
)
# fmt: on

#: Lookups derived from the table (never written by hand elsewhere).
BY_NAME: dict[str, ElementType] = {e.name: e for e in ELEMENT_TYPES}
BY_PROTO: dict[int, ElementType] = {e.proto: e for e in ELEMENT_TYPES}
BY_OIP: dict[str, ElementType] = {e.oip: e for e in ELEMENT_TYPES}
BY_ORT: dict[str, ElementType] = {e.ort: e for e in ELEMENT_TYPES}
BY_ONNX: dict[int, ElementType] = {e.onnx: e for e in ELEMENT_TYPES}
#: numpy dtype (native byte order) -> element type, numeric and bool only.
BY_NUMPY: dict[np.dtype[Any], ElementType] = {
    e.numpy.newbyteorder("="): e for e in ELEMENT_TYPES if e.name != "string"
}
STRING = BY_NAME["string"]
_LE = "<" if np.little_endian else ">"


def served_array(arr: np.ndarray) -> tuple[ElementType, np.ndarray]:
    """(element type, ``arr`` in a served type): unsigned or big-endian arrays are
    normalised (floats to float32, integers to int64), text to object."""
    if arr.dtype == object or arr.dtype.kind in "US":
        return STRING, arr
    et = BY_NUMPY.get(arr.dtype)
    if et is None:
        arr = arr.astype(np.float32 if arr.dtype.kind == "f" else np.int64)
        et = BY_NUMPY[arr.dtype]
    return et, arr


def raw_element_type(dtype: np.dtype[Any]) -> ElementType | None:
    """The element type an array of ``dtype`` is written raw as, as it is, or None when
    ``write_tensor``/``write_oip_output`` must normalise or encode it (strings,
    unusual types, and every multi-byte type on a big-endian host)."""
    et = BY_NUMPY.get(dtype)
    if et is None or (_LE == ">" and dtype.byteorder != "|"):
        return None
    return et


def raw_tensor_fields(arr: np.ndarray) -> dict[str, Any] | None:
    """A native ``Tensor``'s fields for ``arr`` as raw bytes, as a dict to build the message
    with (one construction instead of three field writes: ~half the cost), or None
    as for ``raw_element_type``."""
    et = raw_element_type(arr.dtype)
    if et is None:
        return None
    return {"data_type": et.proto, "shape": arr.shape, "raw_data": arr.tobytes()}


def encode_strings(values: Any) -> bytes:
    """The length-prefixed raw layout of a STRING tensor (4-byte LE length + UTF-8)."""
    parts = []
    pack = struct.Struct("<I").pack
    for v in values:
        b = v.encode("utf-8") if isinstance(v, str) else bytes(v)
        parts.append(pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def decode_strings(raw: bytes) -> list[str]:
    """The strings of the length-prefixed layout (trusting the sender: for answers)."""
    items = []
    pos = 0
    view = memoryview(raw)
    while pos < len(raw):
        n = int.from_bytes(view[pos : pos + 4], "little")
        items.append(bytes(view[pos + 4 : pos + 4 + n]).decode("utf-8"))
        pos += 4 + n
    return items


def _raw_bytes(arr: np.ndarray) -> bytes:
    # Little-endian bytes: no conversion (only the one copy tobytes makes) on
    # little-endian hosts.
    if _LE == ">" and arr.dtype.byteorder != "|":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()


def write_tensor(arr: np.ndarray, raw: bool, out: Any) -> Any:
    """Write ``arr`` into the native ``Tensor`` ``out`` as raw bytes or typed values."""
    et, arr = served_array(arr)
    out.data_type = et.proto  # type: ignore[assignment]
    out.shape.extend(arr.shape)
    if et is STRING:
        flat = arr.reshape(-1)
        if raw:
            out.raw_data = encode_strings(flat)
        else:
            out.string_values.extend(str(v) for v in flat)
    elif raw:
        out.raw_data = _raw_bytes(arr)
    else:
        getattr(out, et.value_field).extend(arr.reshape(-1).tolist())
    return out


def tensor_to_numpy(t: Any) -> np.ndarray:
    """A numpy array from a native ``Tensor`` (raw or typed), shaped by ``t.shape``.

    Raw numeric data is wrapped without a copy (the array is read-only).
    """
    et = BY_PROTO.get(t.data_type)
    if et is None:
        raise ValueError(f"tensor has no data_type ({t.data_type})")
    shape = tuple(t.shape)
    raw = t.raw_data  # one copy out of the message, not one per read
    if et is STRING:
        items = decode_strings(raw) if raw else list(t.string_values)
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    if raw:
        return np.frombuffer(raw, dtype=et.numpy).reshape(shape)
    values = getattr(t, et.value_field)
    return np.fromiter(values, dtype=et.numpy, count=len(values)).reshape(shape)


def write_oip_output(resp: Any, name: str, arr: np.ndarray, raw: bool) -> None:
    """Append output ``name`` to the Open Inference Protocol ``ModelInferResponse`` ``resp``:
    raw (``raw_output_contents``) or typed (``contents``)."""
    et, arr = served_array(arr)
    out = resp.outputs.add(name=name, datatype=et.oip, shape=arr.shape)
    if et is STRING:
        flat = arr.reshape(-1)
        if raw:
            resp.raw_output_contents.append(encode_strings(flat))
        else:
            out.contents.bytes_contents.extend(str(v).encode("utf-8") for v in flat)
    elif raw:
        resp.raw_output_contents.append(_raw_bytes(arr))
    else:
        getattr(out.contents, et.oip_contents).extend(arr.reshape(-1).tolist())


__all__ = [
    "BY_NAME",
    "BY_NUMPY",
    "BY_OIP",
    "BY_ONNX",
    "BY_ORT",
    "BY_PROTO",
    "ELEMENT_TYPES",
    "ElementType",
    "decode_strings",
    "encode_strings",
    "raw_element_type",
    "raw_tensor_fields",
    "served_array",
    "tensor_to_numpy",
    "write_oip_output",
    "write_tensor",
]
