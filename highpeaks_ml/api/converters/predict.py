"""PredictService messages <-> serving domain objects.

The conversion is the hot path of every prediction, so it avoids per-element
Python work where the wire allows: ``raw_data`` is handed to numpy as it is
(``np.frombuffer``, no copy), typed values go through ``np.fromiter`` after
the size checks, and outputs are written with ``tobytes()`` (raw) or one
``extend(tolist())`` per tensor (typed). The element types and the numpy
<-> Tensor codecs live in ``highpeaks_ml/tensors.py`` (shared with the
client); request building and result parsing for callers in ``client.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from highpeaks_ml.api.errors import status_for
from highpeaks_ml.errors import InvalidArgument
from highpeaks_ml.serving.inputs import Prediction, RowsInput, TensorInput
from highpeaks_ml.serving.manager import PredictQuery
from highpeaks_ml.tensors import BY_PROTO, ELEMENT_TYPES, raw_tensor_fields, write_tensor
from highpeaks_ml.v1 import common_pb2, predict_pb2

log = logging.getLogger("highpeaks_ml.api")

#: The typed value fields in field-number order (the first one set is named in errors).
_VALUE_FIELD_ORDER = tuple(
    sorted(
        (e.value_field for e in ELEMENT_TYPES),
        key=lambda n: common_pb2.Tensor.DESCRIPTOR.fields_by_name[n].number,
    )
)
#: OutputKind enum value -> output kind name (the serving domain's).
OUTPUT_KINDS = {
    predict_pb2.OUTPUT_KIND_LABELS: "labels",
    predict_pb2.OUTPUT_KIND_PROBABILITIES: "probabilities",
    predict_pb2.OUTPUT_KIND_VALUES: "values",
}


# --- requests ----------------------------------------------------------------


def tensor_from_proto(t: common_pb2.Tensor, where: str = "tensor") -> TensorInput:
    """A domain ``TensorInput`` (values are not converted yet; sizes are checked first)."""
    et = BY_PROTO.get(t.data_type)
    if t.data_type and et is None:
        raise InvalidArgument(f"{where}.data_type: unknown value {t.data_type}")
    dtype = et.name if et is not None else ""
    # Not ListFields(), and raw_data read once: every read of a bytes field
    # copies it out of the message (ListFields() too), which for a large raw
    # tensor cost more than running the model (docs/serving.md).
    present = [name for name in _VALUE_FIELD_ORDER if len(getattr(t, name))]
    raw = t.raw_data
    if present:
        if raw:
            raise InvalidArgument(f"{where}: give either raw_data or {present[0]}, not both")
        if len(present) > 1 or (et is not None and present[0] != et.value_field):
            expected = et.value_field if et is not None else "the field of data_type"
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
            name = OUTPUT_KINDS.get(k)
            if name is None:
                raise InvalidArgument(f"outputs: {k} is not a valid OutputKind")
            kinds.append(name)
        outputs = frozenset(kinds)
    return PredictQuery(ref.name, version, alias, data, outputs)


# --- responses ---------------------------------------------------------------


def response_from_prediction(
    pred: Prediction, request_id: str, raw: bool
) -> predict_pb2.PredictResponse:
    """The ``PredictResponse`` for a domain ``Prediction``."""
    if raw:
        return _raw_response(pred, request_id)
    resp = predict_pb2.PredictResponse(
        model_name=pred.model_name,
        model_version=pred.version,
        id=request_id,
        execution_provider=pred.provider,
    )
    if pred.labels is not None:
        write_tensor(pred.labels, raw, resp.labels)
    if pred.probabilities is not None:
        write_tensor(pred.probabilities, raw, resp.probabilities)
        resp.class_labels.extend(pred.class_labels)
    if pred.values is not None:
        write_tensor(pred.values, raw, resp.values)
    return resp


def _raw_response(pred: Prediction, request_id: str) -> predict_pb2.PredictResponse:
    # Every numeric output as constructor arguments: one message construction
    # (the common case of every prediction answered raw; docs/serving.md).
    fields: dict[str, Any] = {}
    odd: list[tuple[str, Any]] = []
    for name, arr in (
        ("labels", pred.labels),
        ("probabilities", pred.probabilities),
        ("values", pred.values),
    ):
        if arr is not None:
            found = raw_tensor_fields(arr)
            if found is None:
                odd.append((name, arr))
            else:
                fields[name] = found
    resp = predict_pb2.PredictResponse(
        model_name=pred.model_name,
        model_version=pred.version,
        id=request_id,
        execution_provider=pred.provider,
        class_labels=pred.class_labels if pred.probabilities is not None else (),
        **fields,
    )
    for name, arr in odd:  # strings, or types write_tensor normalises
        write_tensor(arr, True, getattr(resp, name))
    return resp


def stream_error(exc: BaseException, request_id: str) -> predict_pb2.PredictStreamResponse:
    """A ``PredictStreamResponse`` carrying the error of one stream request."""
    code, message = status_for(exc)
    if code.name == "INTERNAL":
        log.error("unexpected error in a PredictStream request", exc_info=exc)
    return predict_pb2.PredictStreamResponse(
        error=common_pb2.StreamError(code=code.value[0], message=message), id=request_id
    )
