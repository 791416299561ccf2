"""Property-based fuzzing of the real server: no request, however odd, gets INTERNAL or
UNKNOWN, and the server keeps serving after each one.

hypothesis generates PredictRequest, StartTrainingRequest and registry request
messages (extreme numbers, NaN/inf, long and odd strings, random shapes,
dtypes and raw bytes, wrong oneofs) and raw byte strings for every served
method, and sends them to one server subprocess. After every example the
server must answer health SERVING and a correct Predict.

CI runs a bounded, derandomized number of examples (the same ones every run).
Locally, for a longer hunt::

    HIGHPEAKS_ML_FUZZ_EXAMPLES=5000 HIGHPEAKS_ML_FUZZ_RANDOM=1 \\
        .venv/bin/pytest tests/integration/test_fuzz.py
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from highpeaks_ml.training.catalogue import algorithms
from highpeaks_ml.v1 import common_pb2, predict_pb2, registry_pb2, train_pb2
from tests.conftest import ServerProcess
from tests.support import serving_models as sm
from tests.support.hostile import (
    NEVER,
    Live,
    Stubs,
    assert_serves,
    call_raw,
    log_errors,
    method_table,
    seed,
)

EXAMPLES = int(os.environ.get("HIGHPEAKS_ML_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("HIGHPEAKS_ML_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
METHODS = method_table()


@pytest.fixture(scope="module")
def fz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A server with the hostile suite's models, small limits, and training that
    cannot pile up: one worker, three queued jobs, 5 s per job."""
    home = tmp_path_factory.mktemp("fuzz") / "home"
    home.mkdir()
    seed(home)
    proc = ServerProcess(
        home,
        "--max-predict-rows",
        "1000",
        "--max-receive-message-bytes",
        str(1 << 20),
        "--max-dataset-bytes",
        str(64 * 1024),
        "--max-model-bytes",
        str(256 * 1024),
        "--max-queued-jobs",
        "3",
        "--job-time-limit-s",
        "5",
    )
    channel = grpc.insecure_channel(proc.target)
    try:
        yield Live(proc, home, Stubs.of(channel))
    finally:
        channel.close()
        proc.stop()


def check(live: Live, call: Any) -> None:
    """Run ``call`` (stubs -> anything); no INTERNAL/UNKNOWN, and the server serves."""
    try:
        result = call(live.stubs)
        if isinstance(result, Iterator):
            for _ in result:
                pass
    except grpc.RpcError as err:
        assert err.code() not in NEVER, (err.code(), err.details())
    assert_serves(live.stubs)


# --- strategies ---------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT32 = st.integers(0, 2**32 - 1)
SMALL_DIM = st.integers(-2, 6)
DIM = st.one_of(SMALL_DIM, SMALL_DIM, INT64, st.sampled_from([2**31, 2**32, 2**62, 2**63 - 1]))
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
FLOATS32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
TEXT = st.one_of(
    st.text(max_size=20),
    st.text(max_size=2000),
    st.sampled_from(["", ".", "..", "../x", "/abs", "a\x00b", "latest", "123", "é"]),
)


def usually(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
    """``usual`` four times in five, else ``odd``: requests mostly get past the
    first checks, so the deeper ones are fuzzed too."""
    return st.integers(0, 4).flatmap(lambda i: odd if i == 0 else usual)


KNOWN = st.sampled_from(["iris", "iris", "mixed", "prices", "broken", "nope"])
MODEL_NAMES = usually(KNOWN, TEXT)
# Names the fuzzer may change or delete: never the model the liveness check uses.
VICTIMS = usually(st.sampled_from(["prices", "victim", "nope"]), TEXT).filter(lambda n: n != "iris")
FEATURES = st.sampled_from(
    [*sm.IRIS_FEATURES, "size", "colour", "weight", "a", "b", "c", "input", "x"]
)


@st.composite
def model_refs(draw: st.DrawFn, names: st.SearchStrategy[str] = MODEL_NAMES) -> Any:
    ref = common_pb2.ModelRef(name=draw(names))
    which = draw(st.sampled_from(["none", "none", "none", "version", "alias"]))
    if which == "version":
        ref.version = draw(st.one_of(st.integers(1, 2), st.integers(0, 3), UINT32))
    elif which == "alias":
        ref.alias = draw(usually(st.sampled_from(["production", "latest"]), TEXT))
    return ref


NUMERIC_TYPES = {
    common_pb2.DATA_TYPE_FLOAT32: ("float_values", "<f4", FLOATS32),
    common_pb2.DATA_TYPE_FLOAT64: ("double_values", "<f8", FLOATS),
    common_pb2.DATA_TYPE_INT64: ("int64_values", "<i8", INT64),
    common_pb2.DATA_TYPE_INT32: ("int32_values", "<i4", st.integers(-(2**31), 2**31 - 1)),
}


@st.composite
def near_valid_tensors(draw: st.DrawFn) -> common_pb2.Tensor:
    """[rows, 3 or 4] numbers of the right count, typed or raw: past the size checks,
    into value conversion and onnxruntime (NaN, inf and extremes included)."""
    dtype = draw(st.sampled_from(sorted(NUMERIC_TYPES)))
    field, np_type, values = NUMERIC_TYPES[dtype]
    rows, cols = draw(st.integers(0, 5)), draw(st.sampled_from([3, 4, 4]))
    data = draw(st.lists(values, min_size=rows * cols, max_size=rows * cols))
    t = common_pb2.Tensor(data_type=dtype, shape=[rows, cols])
    if draw(st.booleans()):
        t.raw_data = np.array(data, np_type).tobytes()
    else:
        getattr(t, field).extend(data)
    return t


@st.composite
def tensors(draw: st.DrawFn) -> common_pb2.Tensor:
    if draw(st.booleans()):
        return draw(near_valid_tensors())
    t = common_pb2.Tensor(data_type=draw(st.integers(0, 8)))  # 7, 8: unknown values
    shape = draw(st.lists(DIM, max_size=4))
    t.shape.extend(shape)
    how = draw(st.sampled_from(["raw", "raw-sized", "float", "double", "int64", "other", "none"]))
    if how == "raw":
        t.raw_data = draw(st.binary(max_size=600))
    elif how == "raw-sized":
        # The right number of bytes for a small float32 shape: past the size
        # checks, into the values.
        n = 1
        for d in shape:
            n *= max(0, min(d, 8))
        t.raw_data = draw(st.binary(min_size=4 * n, max_size=4 * n))
    elif how == "float":
        t.float_values.extend(draw(st.lists(FLOATS32, max_size=40)))
    elif how == "double":
        t.double_values.extend(draw(st.lists(FLOATS, max_size=40)))
    elif how == "int64":
        t.int64_values.extend(draw(st.lists(INT64, max_size=40)))
    elif how == "other":
        field = draw(st.sampled_from(["int32", "bool", "string"]))
        if field == "int32":
            t.int32_values.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=20)))
        elif field == "bool":
            t.bool_values.extend(draw(st.lists(st.booleans(), max_size=20)))
        else:
            t.string_values.extend(draw(st.lists(TEXT, max_size=10)))
    return t


def _value(draw: st.DrawFn, depth: int = 0) -> struct_pb2.Value:
    v = struct_pb2.Value()
    kind = draw(st.sampled_from(["number", "number", "string", "bool", "null", "list", "struct"]))
    if kind == "number":
        v.number_value = draw(st.one_of(FLOATS, st.integers(-(2**70), 2**70).map(float)))
    elif kind == "string":
        v.string_value = draw(TEXT)
    elif kind == "bool":
        v.bool_value = draw(st.booleans())
    elif kind == "null":
        v.null_value = struct_pb2.NULL_VALUE
    elif kind == "list" and depth < 2:
        v.list_value.values.extend(_value(draw, depth + 1) for _ in range(draw(st.integers(0, 3))))
    elif kind == "struct" and depth < 2:
        for _ in range(draw(st.integers(0, 3))):
            v.struct_value.fields[draw(TEXT)].CopyFrom(_value(draw, depth + 1))
    return v


@st.composite
def structs(draw: st.DrawFn, keys: st.SearchStrategy[str] = FEATURES) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    for _ in range(draw(st.integers(0, 6))):
        s.fields[draw(st.one_of(keys, TEXT))].CopyFrom(_value(draw))
    return s


@st.composite
def predict_requests(draw: st.DrawFn) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest(model=draw(model_refs()))
    which = draw(st.sampled_from(["tensor", "tensor", "tensor", "rows", "rows", "none"]))
    if which == "tensor":
        req.tensor.CopyFrom(draw(tensors()))
    elif which == "rows":
        req.rows.SetInParent()
        for _ in range(draw(st.integers(0, 5))):
            req.rows.rows.add().CopyFrom(draw(structs()))
    req.outputs.extend(draw(st.lists(usually(st.integers(1, 3), st.integers(0, 6)), max_size=3)))
    req.raw_output = draw(st.booleans())
    req.id = draw(usually(st.just(""), TEXT))
    return req


CATALOGUE = {a.name: [p.name for p in a.params] for a in algorithms()}
PARAM_NAMES = st.sampled_from(sorted({p for ps in CATALOGUE.values() for p in ps} | {"n_jobs"}))


@st.composite
def training_requests(draw: st.DrawFn) -> train_pb2.StartTrainingRequest:
    def mostly(usual: Any, odd: st.SearchStrategy[Any]) -> Any:
        return draw(usually(st.just(usual), odd))

    req = train_pb2.StartTrainingRequest(
        model_name=mostly("fuzzed", TEXT),
        algorithm=draw(usually(st.sampled_from(sorted(CATALOGUE)), TEXT)),
        target_column=mostly("", st.one_of(st.just("target"), TEXT)),
        task=mostly(0, st.integers(0, 4)),
        test_size=mostly(0.0, FLOATS),
        idempotency_key=mostly("", TEXT),
        time_limit_seconds=mostly(0.0, FLOATS),
        description=mostly("", TEXT),
    )
    if draw(st.booleans()):
        req.hyperparameters.CopyFrom(draw(structs(PARAM_NAMES)))
    source = draw(st.sampled_from(["builtin", "builtin", "dataset_id", "inline", "inline", "none"]))
    if source == "builtin":
        req.dataset.builtin = draw(usually(st.sampled_from(["iris", "wine", "mnist"]), TEXT))
    elif source == "dataset_id":
        req.dataset.dataset_id = draw(st.one_of(st.text("0123456789abcdef", max_size=70), TEXT))
    elif source == "inline":
        req.dataset.inline.SetInParent()
        for _ in range(draw(st.integers(0, 8))):
            req.dataset.inline.rows.add().CopyFrom(draw(structs(st.sampled_from(["x", "y"]))))
    if draw(st.booleans()):
        req.seed = draw(INT64)
    if draw(st.integers(0, 3)) == 0:
        req.aliases.extend(draw(st.lists(TEXT, max_size=3)))
    if draw(st.integers(0, 3)) == 0:
        req.feature_columns.extend(draw(st.lists(TEXT, max_size=3)))
    return req


@st.composite
def registry_calls(draw: st.DrawFn) -> tuple[str, Any]:
    """(name, stubs -> call) for one registry RPC with fuzzed fields; the ones that
    change or delete things only touch VICTIMS."""
    kind = draw(
        st.sampled_from(
            ["get", "version", "download", "set", "delete-alias", "delete", "import", "list"]
        )
    )
    if kind == "get":
        req: Any = registry_pb2.GetModelRequest(name=draw(MODEL_NAMES))
        return kind, lambda s: s.registry.GetModel(req, timeout=30)
    if kind == "version":
        req = registry_pb2.GetModelVersionRequest(model=draw(model_refs()))
        return kind, lambda s: s.registry.GetModelVersion(req, timeout=30)
    if kind == "download":
        req = registry_pb2.DownloadModelVersionRequest(model=draw(model_refs()))
        return kind, lambda s: s.registry.DownloadModelVersion(req, timeout=30)
    if kind == "set":
        req = registry_pb2.SetAliasRequest(
            model_name=draw(VICTIMS),
            alias=draw(st.one_of(st.just("production"), TEXT)),
            version=draw(st.one_of(st.integers(0, 2), UINT32)),
        )
        return kind, lambda s: s.registry.SetAlias(req, timeout=30)
    if kind == "delete-alias":
        req = registry_pb2.DeleteAliasRequest(model_name=draw(VICTIMS), alias=draw(TEXT))
        return kind, lambda s: s.registry.DeleteAlias(req, timeout=30)
    if kind == "delete":
        req = registry_pb2.DeleteModelVersionRequest(
            model_name=draw(VICTIMS), version=draw(UINT32), force=draw(st.booleans())
        )
        return kind, lambda s: s.registry.DeleteModelVersion(req, timeout=30)
    if kind == "import":
        info = registry_pb2.ImportModelInfo(
            model_name=draw(VICTIMS),
            task=draw(st.integers(0, 4)),
            class_labels=draw(st.lists(TEXT, max_size=4)),
            aliases=draw(st.lists(TEXT, max_size=2)),
            description=draw(TEXT),
            sha256=draw(st.one_of(st.just(""), st.text("0123456789abcdef", max_size=70))),
        )
        parts = [registry_pb2.ImportModelRequest(info=info)]
        # Random bytes, or a real model cut short or with bytes flipped.
        onnx = sm.iris_logreg().onnx
        body = draw(
            st.one_of(
                st.binary(max_size=2000),
                st.integers(0, len(onnx)).map(lambda n: onnx[:n]),
                st.integers(0, len(onnx) - 1).map(
                    lambda i: onnx[:i] + bytes([onnx[i] ^ 0xFF]) + onnx[i + 1 :]
                ),
            )
        )
        parts += [
            registry_pb2.ImportModelRequest(chunk=body[i : i + 500])
            for i in range(0, len(body), 500)
        ]
        return kind, lambda s: s.registry.ImportModel(iter(parts), timeout=30)
    req = registry_pb2.ListModelsRequest()
    return kind, lambda s: s.registry.ListModels(req, timeout=30)


# --- properties ---------------------------------------------------------------------------


@FUZZ
@given(req=predict_requests())
def test_fuzzed_predict_requests(fz, req):
    check(fz, lambda s: s.predict.Predict(req, timeout=30))


@settings(FUZZ, max_examples=max(1, EXAMPLES // 4))
@given(reqs=st.lists(predict_requests(), min_size=1, max_size=6))
def test_fuzzed_predict_streams(fz, reqs):
    def stream(s: Stubs) -> None:
        out = list(s.predict.PredictStream(iter(reqs), timeout=60))
        assert len(out) == len(reqs)
        for msg in out:  # in-stream errors carry a google.rpc code, never INTERNAL/UNKNOWN
            assert msg.WhichOneof("result") == "response" or msg.error.code not in (2, 13)

    check(fz, stream)


@FUZZ
@given(req=training_requests())
def test_fuzzed_training_requests(fz, req):
    check(fz, lambda s: s.train.StartTraining(req, timeout=30))


@FUZZ
@given(call=registry_calls())
def test_fuzzed_registry_requests(fz, call):
    check(fz, call[1])


@FUZZ
@given(
    method=st.sampled_from(sorted(METHODS)),
    messages=st.lists(st.binary(max_size=300), min_size=1, max_size=3),
)
def test_random_bytes_on_every_method(fz, method, messages):
    kind = METHODS[method]
    code, details = call_raw(fz.stubs.channel, method, kind, messages if kind[0] else messages[:1])
    assert code not in NEVER, (method, code, details)
    assert_serves(fz.stubs)


def test_no_unexpected_errors_were_logged(fz):
    # Fuzzed jobs that were accepted are stopped: none runs on after the module.
    for job in fz.stubs.train.ListTrainingJobs(train_pb2.ListTrainingJobsRequest()).jobs:
        if job.state in (train_pb2.JOB_STATE_QUEUED, train_pb2.JOB_STATE_RUNNING):
            try:
                fz.stubs.train.CancelTrainingJob(train_pb2.CancelTrainingJobRequest(id=job.id))
            except grpc.RpcError as exc:
                # It reached its last stage (registering) since it was listed:
                # it ends by itself, and the server says so.
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
                assert "can no longer be cancelled" in exc.details()
    assert not log_errors(fz.proc), log_errors(fz.proc)[:5]
