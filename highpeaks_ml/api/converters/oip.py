"""Open Inference Protocol messages <-> serving domain objects.

ModelInfer requests become the same ``PredictQuery`` the native Predict
builds: one ``TensorInput`` per input tensor (``TensorsInput``), validated by
``serving/inputs.py`` like any other request; this module only checks what is
specific to the protocol's wire form (datatype names, which ``contents``
field, raw vs typed, parameters) and names fields the protocol's way
(``inputs['input'].shape[1]``, ``raw_input_contents[0]``, ``FP32``).

Outputs keep the ONNX names, element types and shapes onnxruntime produced
(``label`` [N], ``probabilities`` [N, C], ``variable`` [N, 1]); an output
requested by an alias (``predict``, ``predict_proba``) is returned under the
name it was requested by. Outputs are raw (``raw_output_contents``) when the
request's inputs were raw, typed (``contents``) when they were typed; the
request parameter ``binary_data_output`` (bool) overrides that.

ModelStreamInfer answers each request with a ``ModelStreamInferResponse``:
the ModelInferResponse of a success, or the failure's client-facing message
(what ModelInfer gives as its status details) in ``error_message``, with the
request's ``id`` in ``infer_response.id``, as Triton does, so a client can
tell which request failed. Like Triton, every stream response carries the
response parameter ``triton_final_response: true`` (each request has exactly
one response), which clients written for decoupled models wait for.

NaN in an FP32/FP64 input is a missing value, accepted only where the
version's schema says its feature allows it (``serving/inputs.py``);
ModelMetadata says which inputs do in its ``properties`` (the protocol's
optional model properties): ``allows_missing.<input>`` and ``features``.
"""

from __future__ import annotations

import functools
import json
import logging
import traceback
from collections.abc import Sequence
from typing import Any

from highpeaks_ml.api.errors import status_for
from highpeaks_ml.api.oip_messages import (
    ModelInferResponse,
    ModelMetadataResponse,
    ModelStatisticsResponse,
    ModelStreamInferResponse,
    RepositoryIndexResponse,
    ServerMetadataResponse,
)
from highpeaks_ml.errors import InvalidArgument, quote
from highpeaks_ml.registry.base import ModelInfo, TensorSpec, VersionMeta
from highpeaks_ml.serving.inputs import Naming, Prediction, TensorInput, TensorsInput
from highpeaks_ml.serving.manager import PredictQuery, VersionState
from highpeaks_ml.serving.stats import Duration, StatsSnapshot
from highpeaks_ml.tensors import BY_NAME, BY_OIP, ELEMENT_TYPES, write_oip_output

log = logging.getLogger("highpeaks_ml.api")

#: Element type -> the protocol's datatype name (from highpeaks_ml/tensors.py).
DATATYPE_OF = {e.name: e.oip for e in ELEMENT_TYPES}
#: The platform reported for every model.
PLATFORM = "onnx_onnxv1"
#: Protocol extensions implemented (and only those are advertised).
EXTENSIONS = ("model_repository", "statistics")
#: RepositoryIndex state of each load state, with the reason shown when there is no error.
REPOSITORY_STATES = {
    "ready": ("READY", ""),
    "loading": ("LOADING", ""),
    "failed": ("UNAVAILABLE", ""),
    "unloaded": ("UNAVAILABLE", "unloaded"),
}
_SUPPORTED = ", ".join(BY_OIP)
# Parameters that ask for features this server does not have: refused rather
# than ignored, so a caller never silently gets something else.
_UNSUPPORTED_TENSOR_PARAMS = ("shared_memory_region", "shared_memory_byte_size")
_UNSUPPORTED_OUTPUT_PARAMS = ("classification", *_UNSUPPORTED_TENSOR_PARAMS)


# --- model selection ------------------------------------------------------------


def version_selector(value: str, field: str) -> tuple[int | None, str | None]:
    """(version, alias) of a protocol version string: "" = latest, digits = a number,
    anything else = an alias."""
    if not value:
        return None, None
    if value.isdigit():
        number = int(value)
        if number < 1:
            raise InvalidArgument(f"{field}: {quote(value)}: versions start at 1")
        return number, None
    return None, value


def required(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field}: required")
    return value


# --- ModelInfer --------------------------------------------------------------------


def _naming(name: str, index: int) -> Naming:
    """How refusals name input ``name``: every request needs one, few use it, so
    those of short names (the real ones) are made once per name and position."""
    if len(name) <= 64:
        return _naming_cached(name, index)
    return _make_naming(name, index)


@functools.lru_cache(maxsize=256)
def _naming_cached(name: str, index: int) -> Naming:
    return _make_naming(name, index)


def _make_naming(name: str, index: int) -> Naming:
    where = f"inputs[{quote(name)}]"
    return Naming(
        tensor=where,
        dtype=f"{where}.datatype",
        raw=f"raw_input_contents[{index}]",
        values=f"{where}.contents",
        unset="",
        types=DATATYPE_OF,
    )


def _check_parameters(params: Any, where: str, refused: Sequence[str]) -> None:
    if not params:  # the common case: no parameters at all
        return
    for key in refused:
        if key in params:
            raise InvalidArgument(f"{where}.parameters: {key!r} is not supported by this server")


def _tensor(inp: Any, index: int, raw: bytes | None) -> TensorInput:
    name = inp.name
    naming = _naming(name, index)
    where = naming.tensor  # inputs['name']
    _check_parameters(inp.parameters, where, _UNSUPPORTED_TENSOR_PARAMS)
    if not inp.datatype:
        raise InvalidArgument(f"{where}.datatype: required ({_SUPPORTED})")
    et = BY_OIP.get(inp.datatype)
    if et is None:
        raise InvalidArgument(
            f"{where}.datatype: {quote(inp.datatype)} is not supported (supported: {_SUPPORTED})"
        )
    shape = tuple(inp.shape)
    if raw is not None:
        return TensorInput(et.name, shape, raw=raw, naming=naming)
    field = et.oip_contents
    present = [f.name for f, _ in inp.contents.ListFields()]
    if len(present) > 1 or (present and present[0] != field):
        wrong = next(p for p in present if p != field)
        raise InvalidArgument(
            f"{where}.contents.{wrong}: does not match datatype {inp.datatype}"
            f" (use contents.{field} or raw_input_contents)"
        )
    values: Sequence[Any] = getattr(inp.contents, field)
    return TensorInput(et.name, shape, values=values, naming=naming)


def query_from_infer(req: Any) -> tuple[PredictQuery, bool]:
    """The ``PredictQuery`` of a ModelInferRequest and whether outputs go raw."""
    name = required(req.model_name, "model_name")
    version, alias = version_selector(req.model_version, "model_version")
    if not req.inputs:
        raise InvalidArgument("inputs: none given")
    raw_contents = req.raw_input_contents
    raw = len(raw_contents) > 0
    if raw:
        typed = next((i for i in req.inputs if i.contents.ListFields()), None)
        if typed is not None:
            raise InvalidArgument(
                f"inputs[{quote(typed.name)}].contents: give either raw_input_contents or"
                " contents, not both"
            )
        if len(raw_contents) != len(req.inputs):
            raise InvalidArgument(
                f"raw_input_contents: {len(raw_contents)} given for {len(req.inputs)} inputs;"
                " give one per input, in the order of inputs"
            )
    tensors: dict[str, TensorInput] = {}
    for i, inp in enumerate(req.inputs):
        if not inp.name:
            raise InvalidArgument(f"inputs[{i}].name: required")
        if inp.name in tensors:
            raise InvalidArgument(f"inputs[{i}].name: {quote(inp.name)} is given twice")
        tensors[inp.name] = _tensor(inp, i, raw_contents[i] if raw else None)
    names = []
    for i, out in enumerate(req.outputs):
        if not out.name:
            raise InvalidArgument(f"outputs[{i}].name: required")
        _check_parameters(out.parameters, f"outputs[{quote(out.name)}]", _UNSUPPORTED_OUTPUT_PARAMS)
        names.append(out.name)
    raw_out = raw
    param = req.parameters.get("binary_data_output")
    if param is not None:
        if param.WhichOneof("parameter_choice") != "bool_param":
            raise InvalidArgument("parameters['binary_data_output']: must be a bool_param")
        raw_out = param.bool_param
    query = PredictQuery(name, version, alias, TensorsInput(tensors), output_names=tuple(names))
    return query, raw_out


def infer_response(pred: Prediction, request_id: str, raw: bool, out: Any = None) -> Any:
    """The ModelInferResponse of a domain ``Prediction`` (written into ``out`` when given,
    e.g. a stream response's ``infer_response``, which saves copying the outputs)."""
    resp = ModelInferResponse() if out is None else out
    resp.model_name = pred.model_name
    resp.model_version = str(pred.version)
    resp.id = request_id
    for name, produced in pred.outputs.items():
        write_oip_output(resp, name, produced, raw)
    return resp


# --- ModelStreamInfer ----------------------------------------------------------------


#: The response parameter Triton sets on each stream response: true on the last
#: (here the only) response of a request.
FINAL_RESPONSE_PARAM = "triton_final_response"


def stream_infer_response(pred: Prediction, request_id: str, raw: bool) -> Any:
    """The ModelStreamInferResponse of one successful stream request: ModelInfer's answer."""
    msg = ModelStreamInferResponse()
    infer_response(pred, request_id, raw, msg.infer_response)
    msg.infer_response.parameters[FINAL_RESPONSE_PARAM].bool_param = True
    return msg


def stream_response_of(resp: Any) -> Any:
    """The ModelStreamInferResponse carrying ModelInfer's answer ``resp``."""
    msg = ModelStreamInferResponse(infer_response=resp)
    msg.infer_response.parameters[FINAL_RESPONSE_PARAM].bool_param = True
    return msg


def stream_error(exc: BaseException, request_id: str) -> Any:
    """The ModelStreamInferResponse of one failed stream request.

    ``error_message`` is the message ModelInfer would give as its status
    details (unexpected errors: the generic one, the traceback only in the
    log). tritonclient tells errors from results by a non-empty
    ``error_message``, so it is never empty. ``infer_response`` carries only
    the request's id (and the final-response flag), as Triton fills it, so
    the failed request can be named.
    """
    code, message = status_for(exc)
    if code.name == "INTERNAL":
        # The formatted traceback, not exc_info (see api/interceptors.py).
        trace = "".join(traceback.format_exception(exc)).rstrip()
        log.error("unexpected error in a ModelStreamInfer request\n%s", trace)
    resp = ModelInferResponse(id=request_id)
    resp.parameters[FINAL_RESPONSE_PARAM].bool_param = True
    return ModelStreamInferResponse(error_message=message or code.name, infer_response=resp)


# --- metadata, repository, statistics ------------------------------------------------


def _tensor_metadata(target: Any, spec: TensorSpec) -> None:
    et = BY_NAME.get(spec.dtype)
    datatype = et.oip if et is not None else spec.dtype.upper()
    target.add(name=spec.name, datatype=datatype, shape=spec.shape)


def server_metadata(version: str) -> Any:
    """ServerMetadataResponse: name, version and the implemented extensions."""
    return ServerMetadataResponse(name="highpeaks-ml", version=version, extensions=EXTENSIONS)


#: Model property prefix: "allows_missing.<input>" -> "true" | "false".
ALLOWS_MISSING = "allows_missing."


def model_properties(meta: VersionMeta) -> dict[str, str]:
    """The ModelMetadataResponse ``properties`` of ``meta`` (which inputs take missing values).

    ``allows_missing.<input>`` is "true" when every feature fed through that
    input accepts a missing value (NaN; "" in a BYTES input), as recorded at
    training time; "false" otherwise, and for every input of an imported model
    (no features recorded: NaN is refused). ``features`` lists the trained
    features as JSON: ``[{"name", "type", "allows_missing"}, ...]``.
    """
    features = meta.features
    inputs = meta.inputs
    per_input: dict[str, bool] = {t.name: False for t in inputs}
    if features and len(inputs) == 1:  # the feature matrix
        per_input[inputs[0].name] = all(f.allows_missing for f in features)
    elif features and len(inputs) == len(features):  # one input per feature, in order
        for t, f in zip(inputs, features, strict=True):
            per_input[t.name] = f.allows_missing
    props = {ALLOWS_MISSING + name: "true" if ok else "false" for name, ok in per_input.items()}
    if features:
        props["features"] = json.dumps(
            [{"name": f.name, "type": f.type, "allows_missing": f.allows_missing} for f in features]
        )
    return props


def model_metadata(info: ModelInfo, meta: VersionMeta, outputs: Sequence[TensorSpec]) -> Any:
    """ModelMetadataResponse of version ``meta`` of ``info`` with its served ``outputs``."""
    resp = ModelMetadataResponse(
        name=info.name,
        versions=[str(v.version) for v in info.versions],
        platform=PLATFORM,
        properties=model_properties(meta),
    )
    for spec in meta.inputs:
        _tensor_metadata(resp.inputs, spec)
    for spec in outputs:
        _tensor_metadata(resp.outputs, spec)
    return resp


def repository_index(states: Sequence[VersionState], ready_only: bool) -> Any:
    """RepositoryIndexResponse: one entry per version, READY / LOADING / UNAVAILABLE."""
    resp = RepositoryIndexResponse()
    for s in states:
        state, reason = REPOSITORY_STATES.get(s.state, ("UNAVAILABLE", s.state))
        if ready_only and state != "READY":
            continue
        resp.models.add(
            name=s.model_name, version=str(s.version), state=state, reason=s.error or reason
        )
    return resp


def _duration(target: Any, d: Duration) -> None:
    target.count = d.count
    target.ns = d.ns


def statistics(snapshots: Sequence[StatsSnapshot]) -> Any:
    """ModelStatisticsResponse of the given versions."""
    resp = ModelStatisticsResponse()
    for snap in snapshots:
        m = resp.model_stats.add(
            name=snap.model_name,
            version=str(snap.version),
            last_inference=snap.last_inference_ms,
            inference_count=snap.inference_count,
            execution_count=snap.execution_count,
        )
        st = m.inference_stats
        _duration(st.success, snap.success)
        _duration(st.fail, snap.fail)
        _duration(st.queue, snap.queue)
        _duration(st.compute_infer, snap.compute)
        for b in snap.batches:
            batch = m.batch_stats.add(batch_size=b.batch_size)
            _duration(batch.compute_infer, b.compute)
    return resp


def repository_name(value: str) -> None:
    """The server has one repository: only the empty (default) name is valid."""
    if value:
        raise InvalidArgument(
            f"repository_name: {quote(value)} is unknown; this server has one repository"
            " (leave repository_name empty)"
        )


def check_repository_parameters(params: Any) -> None:
    """Load/unload parameters are not supported (config overrides, model files),
    except Triton's ``unload_dependents`` (no model here has dependents)."""
    for key in params:
        if key != "unload_dependents":
            raise InvalidArgument(f"parameters: {quote(key)} is not supported by this server")
