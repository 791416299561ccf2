"""The hostile-input suite: whatever a caller sends, the server answers with the right
status code, keeps serving, and changes nothing on disk when it refuses.

Every case checks three things: the status code; that the server still serves
afterwards (health SERVING and a correct Predict, on the same channel); and,
where the call was refused, that the data directory is unchanged (every file's
size, mtime, inode and, below 1 MiB, sha256; every directory's presence).

One server (``srv``) with small limits serves most cases; the JWT cases have
their own server with authentication on, and the SIGKILL cases start and kill
their own. Other modules test many of these paths in depth (test_predict_api,
test_registry_api, test_training_api, test_auth, test_limits); this suite runs
them against one live server, adds the home-unchanged and still-serving checks
to each, and covers what they do not (malformed bytes on every method, races,
cancelled streams, kills mid-publish).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from tritonclient.grpc import service_pb2, service_pb2_grpc

from highpeaks_ml.api.auth import ADMIN, PREDICT, TRAIN
from highpeaks_ml.registry.local import LocalModelStore
from highpeaks_ml.v1 import (
    common_pb2,
    predict_pb2,
    registry_pb2,
    registry_pb2_grpc,
    train_pb2,
)
from tests.conftest import ServerProcess
from tests.integration.test_limits import unknown_field_message
from tests.support import security as sec
from tests.support import serving_models as sm
from tests.support.hostile import (
    Live,
    Stubs,
    assert_serves,
    call_raw,
    good_predict,
    log_errors,
    method_table,
    open_fds,
    put_text,
    seed,
    served_methods,
    served_request_types,
    snapshot,
    status_of,
    text_fields,
    unchanged,
    versions_of,
)

LIMIT = 256 * 1024  # --max-receive-message-bytes of the shared server
MAX_ROWS = 100  # --max-predict-rows of the shared server
Code = grpc.StatusCode
INVALID = Code.INVALID_ARGUMENT
NOT_FOUND = Code.NOT_FOUND
NEVER = (Code.INTERNAL, Code.UNKNOWN)
F32 = common_pb2.DATA_TYPE_FLOAT32
F64 = common_pb2.DATA_TYPE_FLOAT64
SLOW_TRAINING = {"n_estimators": 1000}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("hostile") / "home"
    home.mkdir()
    seed(home)
    proc = ServerProcess(
        home,
        "--max-predict-rows",
        str(MAX_ROWS),
        "--max-receive-message-bytes",
        str(LIMIT),
        "--training-workers",
        "2",
    )
    channel = grpc.insecure_channel(proc.target)
    try:
        yield Live(proc, home, Stubs.of(channel))
    finally:
        channel.close()
        proc.stop()


def _import_requests(
    info: registry_pb2.ImportModelInfo, data: bytes, chunk: int = 64 * 1024
) -> Iterator[registry_pb2.ImportModelRequest]:
    yield registry_pb2.ImportModelRequest(info=info)
    for i in range(0, len(data), chunk):
        yield registry_pb2.ImportModelRequest(chunk=data[i : i + chunk])


def _upload(
    info: train_pb2.DatasetUploadInfo, data: bytes = b"a,b\n1,x\n2,y\n3,x\n"
) -> Iterator[train_pb2.UploadDatasetRequest]:
    yield train_pb2.UploadDatasetRequest(info=info)
    yield train_pb2.UploadDatasetRequest(chunk=data)


def _train(**kw: Any) -> train_pb2.StartTrainingRequest:
    base: dict[str, Any] = {
        "model_name": "hostile",
        "algorithm": "logistic_regression",
        "dataset": train_pb2.DatasetRef(builtin="iris"),
    }
    base.update(kw)
    return train_pb2.StartTrainingRequest(**base)


def _ref(name: str = "iris", **kw: Any) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=name, **kw)


# --- names ----------------------------------------------------------------------------

NAMES = {
    "dotdot-path": "../x",
    "deep-path": "../../etc/passwd",
    "absolute": "/abs",
    "slash": "a/b",
    "nul": "x\x00y",
    "1kb": "x" * 1024,
    "64-chars": "a" * 64,
    "unicode": "modèle-é",
    "cjk": "模型",
    "dot": ".",
    "dotdot": "..",
    "upper": "UPPER",
    "space": "a b",
    "newline": "a\nb",
    "leading-dash": "-x",
}
ONNX = sm.iris_logreg().onnx

MODEL_NAME_OPS: dict[str, Callable[[Stubs, str], Any]] = {
    "GetModel": lambda s, n: s.registry.GetModel(registry_pb2.GetModelRequest(name=n)),
    "GetModelVersion": lambda s, n: s.registry.GetModelVersion(
        registry_pb2.GetModelVersionRequest(model=_ref(n))
    ),
    "Predict": lambda s, n: s.predict.Predict(
        predict_pb2.PredictRequest(model=_ref(n), tensor=good_predict().tensor)
    ),
    "SetAlias": lambda s, n: s.registry.SetAlias(
        registry_pb2.SetAliasRequest(model_name=n, alias="prod", version=1)
    ),
    "DeleteAlias": lambda s, n: s.registry.DeleteAlias(
        registry_pb2.DeleteAliasRequest(model_name=n, alias="production")
    ),
    "DeleteModelVersion": lambda s, n: s.registry.DeleteModelVersion(
        registry_pb2.DeleteModelVersionRequest(model_name=n, version=1, force=True)
    ),
    "ImportModel": lambda s, n: s.registry.ImportModel(
        _import_requests(registry_pb2.ImportModelInfo(model_name=n), ONNX)
    ),
    "DownloadModelVersion": lambda s, n: list(
        s.registry.DownloadModelVersion(registry_pb2.DownloadModelVersionRequest(model=_ref(n)))
    ),
    "StartTraining": lambda s, n: s.train.StartTraining(_train(model_name=n)),
}

ALIAS_OPS: dict[str, Callable[[Stubs, str], Any]] = {
    "GetModelVersion": lambda s, a: s.registry.GetModelVersion(
        registry_pb2.GetModelVersionRequest(model=_ref(alias=a))
    ),
    "Predict": lambda s, a: s.predict.Predict(
        predict_pb2.PredictRequest(model=_ref(alias=a), tensor=good_predict().tensor)
    ),
    "DownloadModelVersion": lambda s, a: list(
        s.registry.DownloadModelVersion(
            registry_pb2.DownloadModelVersionRequest(model=_ref(alias=a))
        )
    ),
    "SetAlias": lambda s, a: s.registry.SetAlias(
        registry_pb2.SetAliasRequest(model_name="iris", alias=a, version=1)
    ),
    "DeleteAlias": lambda s, a: s.registry.DeleteAlias(
        registry_pb2.DeleteAliasRequest(model_name="iris", alias=a)
    ),
    "ImportModel.aliases": lambda s, a: s.registry.ImportModel(
        _import_requests(registry_pb2.ImportModelInfo(model_name="iris", aliases=[a]), ONNX)
    ),
    "StartTraining.aliases": lambda s, a: s.train.StartTraining(_train(aliases=[a])),
}

DATASET_OPS: dict[str, Callable[[Stubs, str], Any]] = {
    "UploadDataset.name": lambda s, n: s.train.UploadDataset(
        _upload(train_pb2.DatasetUploadInfo(name=n))
    ),
    "GetDataset": lambda s, n: s.train.GetDataset(train_pb2.GetDatasetRequest(id=n)),
    "StartTraining.dataset_id": lambda s, n: s.train.StartTraining(
        _train(dataset=train_pb2.DatasetRef(dataset_id=n))
    ),
    "StartTraining.builtin": lambda s, n: s.train.StartTraining(
        _train(dataset=train_pb2.DatasetRef(builtin=n))
    ),
}


@pytest.mark.parametrize("op", sorted(MODEL_NAME_OPS))
def test_hostile_model_names(srv, op):
    for label, name in {**NAMES, "empty": ""}.items():
        details = srv.refused(lambda s, n=name: MODEL_NAME_OPS[op](s, n), INVALID, "name")
        assert len(details) < 400, (label, details)


@pytest.mark.parametrize("op", sorted(ALIAS_OPS))
def test_hostile_aliases(srv, op):
    # Aliases also must not be numbers or "latest" (where an alias is written).
    extra = {"empty": ""}
    if op.startswith(("SetAlias", "ImportModel", "StartTraining")):
        extra |= {"number": "123", "latest": "latest"}
    for _label, alias in {**NAMES, **extra}.items():
        srv.refused(lambda s, a=alias: ALIAS_OPS[op](s, a), INVALID, "alias")


@pytest.mark.parametrize("op", sorted(DATASET_OPS))
def test_hostile_dataset_names(srv, op):
    for label, name in NAMES.items():
        # 64 hex digits is the form of a dataset id: a well-formed, unknown id.
        by_id = op in ("GetDataset", "StartTraining.dataset_id")
        code = NOT_FOUND if by_id and label == "64-chars" else INVALID
        srv.refused(lambda s, n=name: DATASET_OPS[op](s, n), code, "dataset")


VERSION_OPS: dict[str, Callable[[Stubs, int], Any]] = {
    "GetModelVersion": lambda s, v: s.registry.GetModelVersion(
        registry_pb2.GetModelVersionRequest(model=_ref(version=v))
    ),
    "Predict": lambda s, v: s.predict.Predict(
        predict_pb2.PredictRequest(model=_ref(version=v), tensor=good_predict().tensor)
    ),
    "DownloadModelVersion": lambda s, v: list(
        s.registry.DownloadModelVersion(
            registry_pb2.DownloadModelVersionRequest(model=_ref(version=v))
        )
    ),
    "SetAlias": lambda s, v: s.registry.SetAlias(
        registry_pb2.SetAliasRequest(model_name="iris", alias="prod", version=v)
    ),
    "DeleteModelVersion": lambda s, v: s.registry.DeleteModelVersion(
        registry_pb2.DeleteModelVersionRequest(model_name="iris", version=v, force=True)
    ),
}


@pytest.mark.parametrize("op", sorted(VERSION_OPS))
def test_hostile_versions(srv, op):
    # Versions are uint32 on the wire: 0 is refused, the largest value is unknown.
    srv.refused(lambda s: VERSION_OPS[op](s, 0), INVALID, "version")
    srv.refused(lambda s: VERSION_OPS[op](s, 2**32 - 1), NOT_FOUND, "4294967295")


def test_version_varint_wider_than_uint32(srv):
    # A 10-byte varint (2**64 - 1) in ModelRef.version: protobuf keeps the low
    # 32 bits, so this is version 4294967295, which does not exist.
    ref = b"\x0a\x04iris" + b"\x10" + b"\xff" * 9 + b"\x01"
    request = b"\x0a" + bytes([len(ref)]) + ref
    method = "/highpeaks_ml.v1.ModelRegistryService/GetModelVersion"
    with unchanged(srv.home):
        code, details = call_raw(srv.stubs.channel, method, (False, False), [request])
    assert code == NOT_FOUND, details
    assert_serves(srv.stubs)


def test_path_like_job_ids_are_unknown_jobs(srv):
    # Job ids are opaque and looked up in memory, never used as paths.
    ops = {
        "get": lambda s, j: s.train.GetTrainingJob(train_pb2.GetTrainingJobRequest(id=j)),
        "cancel": lambda s, j: s.train.CancelTrainingJob(train_pb2.CancelTrainingJobRequest(id=j)),
        "watch": lambda s, j: list(
            s.train.WatchTrainingJob(train_pb2.WatchTrainingJobRequest(id=j), timeout=10)
        ),
    }
    for op in ops.values():
        for job_id in [*NAMES.values(), ""]:
            srv.refused(lambda s, j=job_id, op=op: op(s, j), NOT_FOUND, "training job")


# --- tensors and rows -----------------------------------------------------------------


def _tensor(name: str = "iris", **tensor: Any) -> predict_pb2.PredictRequest:
    return predict_pb2.PredictRequest(
        model=_ref(name, version=1), tensor=common_pb2.Tensor(**tensor)
    )


def _rows(rows: list[dict[str, Any]], name: str = "iris") -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest(model=_ref(name, version=1), rows=predict_pb2.FeatureRows())
    for r in rows:
        req.rows.rows.add().update(r)
    return req


def _f32(*values: float) -> bytes:
    return np.array(values, "<f4").tobytes()


def _rows_with(value: Any, feature: str = "sepal_width") -> predict_pb2.PredictRequest:
    row: dict[str, Any] = dict.fromkeys(sm.IRIS_FEATURES, 1.0)
    req = _rows([row])
    req.rows.rows[0].fields[feature].CopyFrom(struct_pb2.Value())
    target = req.rows.rows[0].fields[feature]
    if isinstance(value, float):
        target.number_value = value
    elif value is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, list):
        target.list_value.extend(value)
    else:
        target.struct_value.update(value)
    return req


def _mixed_row(**change: Any) -> predict_pb2.PredictRequest:
    row = {"size": 10.0, "colour": "red", "weight": 5.0, **change}
    return _rows([row], "mixed")


NAN, INF = float("nan"), float("inf")
BIG = 2**31

BAD_PREDICTIONS: dict[str, predict_pb2.PredictRequest] = {
    # shape vs data, both directions, typed and raw
    "typed fewer values": _tensor(data_type=F32, shape=[2, 4], float_values=[1.0] * 7),
    "typed more values": _tensor(data_type=F32, shape=[2, 4], float_values=[1.0] * 9),
    "typed int64 fewer": _tensor(
        data_type=common_pb2.DATA_TYPE_INT64, shape=[1, 4], int64_values=[1, 2, 3]
    ),
    "raw fewer bytes": _tensor(data_type=F32, shape=[2, 4], raw_data=b"\0" * 31),
    "raw more bytes": _tensor(data_type=F32, shape=[2, 4], raw_data=b"\0" * 36),
    "raw not a multiple": _tensor(data_type=F64, shape=[1, 4], raw_data=b"\0" * 33),
    "raw without shape": _tensor(data_type=F32, raw_data=b"\0" * 16),
    "typed without shape": _tensor(data_type=F32, float_values=[1.0] * 4),
    # dimensions
    "negative rows": _tensor(data_type=F32, shape=[-1, 4], raw_data=b""),
    "negative features": _tensor(data_type=F32, shape=[1, -4], raw_data=b"\0" * 16),
    "most negative int64": _tensor(data_type=F32, shape=[-(2**63), 4], raw_data=b""),
    "2^31 x 2^31 raw": _tensor(data_type=F32, shape=[BIG, BIG], raw_data=b"\0" * 16),
    "2^31 x 2^31 typed": _tensor(data_type=F32, shape=[BIG, BIG], float_values=[1.0] * 4),
    "int64 product overflows": _tensor(data_type=F32, shape=[2**62, 2**62], raw_data=b"\0" * 16),
    "max int64 rows": _tensor(data_type=F32, shape=[2**63 - 1, 4], raw_data=b"\0" * 16),
    "huge features": _tensor(data_type=F32, shape=[1, 2**62], raw_data=b"\0" * 16),
    "zero rows huge features": _tensor(data_type=F32, shape=[0, 2**62], raw_data=b""),
    "rank 1": _tensor(data_type=F32, shape=[4], float_values=[1.0] * 4),
    "rank 3": _tensor(data_type=F32, shape=[1, 2, 2], float_values=[1.0] * 4),
    "rank 0": _tensor(data_type=F32, shape=[], float_values=[1.0]),
    "rank 64": _tensor(data_type=F32, shape=[1] * 64, float_values=[1.0]),
    # data types
    "no data type": _tensor(shape=[1, 4], raw_data=b"\0" * 16),
    "unknown data type": _tensor(data_type=99, shape=[1, 4], raw_data=b"\0" * 16),
    "string typed to numeric": _tensor(
        data_type=common_pb2.DATA_TYPE_STRING, shape=[1, 4], string_values=["1"] * 4
    ),
    "string raw to numeric": _tensor(
        data_type=common_pb2.DATA_TYPE_STRING,
        shape=[1, 4],
        raw_data=b"".join(struct.pack("<I", 1) + b"1" for _ in range(4)),
    ),
    "string raw, length past the end": _tensor(
        data_type=common_pb2.DATA_TYPE_STRING,
        shape=[1, 4],
        raw_data=struct.pack("<I", 2**32 - 1) + b"x",
    ),
    "bool to numeric": _tensor(
        data_type=common_pb2.DATA_TYPE_BOOL, shape=[1, 4], bool_values=[True] * 4
    ),
    "raw and typed": _tensor(
        data_type=F32, shape=[1, 4], float_values=[1.0] * 4, raw_data=b"\0" * 16
    ),
    "typed field of another type": _tensor(data_type=F32, shape=[1, 4], double_values=[1.0] * 4),
    "two typed fields": _tensor(
        data_type=F32, shape=[1, 4], float_values=[1.0] * 4, int64_values=[1] * 4
    ),
    "string tensor to categorical model": _tensor(
        "mixed", data_type=common_pb2.DATA_TYPE_STRING, shape=[1, 3], string_values=["a"] * 3
    ),
    # NaN and infinity: refused, wherever they come from (docs/serving.md)
    "NaN typed float32": _tensor(data_type=F32, shape=[1, 4], float_values=[1, NAN, 1, 1]),
    "inf typed float64": _tensor(data_type=F64, shape=[1, 4], double_values=[1, 1, INF, 1]),
    "-inf raw float32": _tensor(data_type=F32, shape=[1, 4], raw_data=_f32(1, 1, 1, -INF)),
    "NaN raw float64": _tensor(
        data_type=F64, shape=[1, 4], raw_data=np.array([NAN, 1, 1, 1], "<f8").tobytes()
    ),
    "float64 beyond float32": _tensor(data_type=F64, shape=[1, 4], double_values=[1e300] * 4),
    "NaN in rows": _rows_with(NAN),
    "inf in rows": _rows_with(-INF),
    # rows over --max-predict-rows
    "tensor over the row limit": _tensor(
        data_type=F32, shape=[MAX_ROWS + 1, 4], raw_data=b"\0" * 16 * (MAX_ROWS + 1)
    ),
    "rows over the row limit": _rows([dict.fromkeys(sm.IRIS_FEATURES, 1.0)] * (MAX_ROWS + 1)),
    # named rows of the wrong kind
    "string for a number": _rows_with("abc"),
    "null for a number": _rows_with(None),
    "bool for a number": _rows_with(True),
    "list for a number": _rows_with([1.0]),
    "struct for a number": _rows_with({"a": 1.0}),
    "missing feature": _rows([{k: 1.0 for k in sm.IRIS_FEATURES[:3]}]),
    "unknown feature": _rows([{**dict.fromkeys(sm.IRIS_FEATURES, 1.0), "extra": 1.0}]),
    "1 KB feature name": _rows([{"x" * 1024: 1.0}]),
    "number for a category": _mixed_row(colour=3.0),
    "NaN for a mixed model": _mixed_row(size=NAN),
    "no inputs": predict_pb2.PredictRequest(model=_ref(version=1)),
    "unknown output kind": predict_pb2.PredictRequest(
        model=_ref(version=1),
        tensor=good_predict().tensor,
        outputs=[99],
    ),
    "labels from a regressor": predict_pb2.PredictRequest(
        model=_ref("prices", version=1),
        tensor=common_pb2.Tensor(data_type=F32, shape=[0, 3]),
        outputs=[predict_pb2.OUTPUT_KIND_LABELS],
    ),
}


@pytest.mark.parametrize("case", list(BAD_PREDICTIONS))
def test_bad_predictions_are_invalid_argument(srv, case):
    srv.refused(lambda s: s.predict.Predict(BAD_PREDICTIONS[case], timeout=30), INVALID)


def test_bad_predictions_inside_one_stream(srv):
    """The same requests over one PredictStream: each answered with an in-stream
    INVALID_ARGUMENT, in order, and the stream goes on to the good one at the end."""
    requests = []
    for i, req in enumerate(BAD_PREDICTIONS.values()):
        copy = predict_pb2.PredictRequest()
        copy.CopyFrom(req)
        copy.id = str(i)
        requests.append(copy)
    last = good_predict()
    last.id = "good"
    with unchanged(srv.home):
        out = list(srv.stubs.predict.PredictStream(iter([*requests, last]), timeout=60))
    assert [o.id for o in out] == [r.id for r in requests] + ["good"]
    assert all(o.error.code == INVALID.value[0] for o in out[:-1]), [
        (o.id, o.error) for o in out if o.error.code != INVALID.value[0]
    ]
    assert out[-1].WhichOneof("result") == "response"
    assert_serves(srv.stubs)


def test_zero_rows_are_answered_not_refused(srv):
    resp = srv.stubs.predict.Predict(_tensor(data_type=F32, shape=[0, 4]), timeout=30)
    assert list(resp.probabilities.shape) == [0, 3]


# --- message size ---------------------------------------------------------------------

OVER_LIMIT_METHODS = {
    "/highpeaks_ml.v1.PredictService/Predict": (False, False),
    "/highpeaks_ml.v1.TrainService/StartTraining": (False, False),
    "/highpeaks_ml.v1.ModelRegistryService/SetAlias": (False, False),
    "/highpeaks_ml.v1.TrainService/WatchTrainingJob": (False, True),
    "/highpeaks_ml.v1.ModelRegistryService/ImportModel": (True, False),
    "/highpeaks_ml.v1.TrainService/UploadDataset": (True, False),
    "/highpeaks_ml.v1.PredictService/PredictStream": (True, True),
}


@pytest.mark.parametrize("method", list(OVER_LIMIT_METHODS))
def test_one_byte_over_the_message_limit(srv, method):
    """test_limits.py covers the limit itself (1 KiB, gzip, mid-stream); here each
    kind of method gets a message of LIMIT + 1 bytes, and the same channel then
    serves a good call. For client streams a valid first message comes first,
    so an import or upload is under way when the oversized message arrives."""
    over = unknown_field_message(LIMIT + 1)
    assert len(over) == LIMIT + 1
    kind = OVER_LIMIT_METHODS[method]
    first = {
        "ImportModel": registry_pb2.ImportModelRequest(
            info=registry_pb2.ImportModelInfo(model_name="over")
        ),
        "UploadDataset": train_pb2.UploadDatasetRequest(info=train_pb2.DatasetUploadInfo()),
        "PredictStream": good_predict(),
    }.get(method.rsplit("/", 1)[1])
    messages = [over] if first is None else [first.SerializeToString(), over]
    with unchanged(srv.home, settle_s=10):
        code, details = call_raw(srv.stubs.channel, method, kind, messages)
    assert code == Code.RESOURCE_EXHAUSTED, details
    assert_serves(srv.stubs)


@pytest.mark.parametrize(
    "method",
    [
        "/highpeaks_ml.v1.ModelRegistryService/ImportModel",
        "/highpeaks_ml.v1.TrainService/UploadDataset",
    ],
)
def test_oversized_message_mid_upload_leaks_nothing(srv, method):
    """Regression: grpc ends the request stream (as if complete) and then cancels the
    handler; the staging area's cleanup in ``finally`` used to be cancelled before
    it ran, leaking the spool file and its lock descriptor on most attempts."""
    first = (
        registry_pb2.ImportModelRequest(info=registry_pb2.ImportModelInfo(model_name="over"))
        if "Import" in method
        else train_pb2.UploadDatasetRequest(info=train_pb2.DatasetUploadInfo())
    ).SerializeToString()
    over = unknown_field_message(LIMIT + 1)
    fds = open_fds(srv.proc)
    with unchanged(srv.home, settle_s=10):
        for _ in range(10):
            code, _details = call_raw(srv.stubs.channel, method, (True, False), [first, over])
            assert code == Code.RESOURCE_EXHAUSTED
    assert open_fds(srv.proc) < fds + 5
    assert_serves(srv.stubs)


# --- malformed bytes on every method ----------------------------------------------------


METHODS = method_table()

MALFORMED = {
    "invalid tags": b"\xff\xff\xff\xff",
    "truncated length-delimited field": b"\x0a\x05ab",
    "length past the end": b"\x0a\xff\xff\xff\xff\x0f",
    "truncated varint": b"\x08\x80",
    "11-byte varint": b"\x08" + b"\xff" * 10 + b"\x01",
    "wire type 7": b"\x0f",
    "field number 0": b"\x00\x01",
    "end group without a start": b"\x0c",
}
# Parse or not (depending on the message), but never INTERNAL/UNKNOWN.
ODD = {
    "invalid UTF-8 in field 1": b"\x0a\x02\xff\xfe",
    "wrong wire type for field 1": b"\x0d\x00\x00\x00\x00",
    "unknown group nested 200 deep": b"\x0b" * 200 + b"\x0c" * 200,
    "unknown field 536870911": b"\xfa\xff\xff\xff\x0f\x01x",
    "empty": b"",
}


def test_the_method_table_covers_what_the_server_serves(srv):
    """Reflection lists what is really served; each of its methods is in METHODS."""
    served = served_methods(srv.stubs.channel)
    assert len(served) >= 20
    assert served <= set(METHODS), served - set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_malformed_bytes_on_every_method(srv, method):
    kind = METHODS[method]
    for label, payload in MALFORMED.items():
        with unchanged(srv.home):
            code, details = call_raw(srv.stubs.channel, method, kind, [payload])
        assert code == INVALID, (label, code, details)
        assert "malformed request" in details, details
        assert_serves(srv.stubs)
    for label, payload in ODD.items():
        code, details = call_raw(srv.stubs.channel, method, kind, [payload])
        assert code not in NEVER, (label, code, details)
        assert_serves(srv.stubs)


def test_malformed_message_in_the_middle_of_streams(srv):
    """A good first message, then garbage: the stream fails with INVALID_ARGUMENT,
    nothing an import or upload had staged is kept, the server serves on."""
    garbage = MALFORMED["truncated length-delimited field"]
    cases = {
        "/highpeaks_ml.v1.PredictService/PredictStream": [good_predict().SerializeToString()],
        "/inference.GRPCInferenceService/ModelStreamInfer": [
            _infer(typed=FOUR).SerializeToString()
        ],
        "/highpeaks_ml.v1.ModelRegistryService/ImportModel": [
            registry_pb2.ImportModelRequest(
                info=registry_pb2.ImportModelInfo(model_name="midstream")
            ).SerializeToString(),
            registry_pb2.ImportModelRequest(chunk=ONNX[:100]).SerializeToString(),
        ],
        "/highpeaks_ml.v1.TrainService/UploadDataset": [
            train_pb2.UploadDatasetRequest(info=train_pb2.DatasetUploadInfo()).SerializeToString(),
            train_pb2.UploadDatasetRequest(chunk=b"a,b\n1,2\n").SerializeToString(),
        ],
    }
    for method, first in cases.items():
        with unchanged(srv.home):
            code, details = call_raw(srv.stubs.channel, method, METHODS[method], [*first, garbage])
        assert code == INVALID and "malformed request" in details, (method, code, details)
        assert_serves(srv.stubs)


# --- the Open Inference Protocol ---------------------------------------------------------


def _infer(
    name: str = "iris",
    version: str = "1",
    datatype: str = "FP32",
    shape: tuple[int, ...] = (1, 4),
    raw: bytes | None = None,
    typed: list[float] | None = None,
    input_name: str = "input",
    outputs: tuple[str, ...] = (),
) -> Any:
    req = service_pb2.ModelInferRequest(model_name=name, model_version=version)
    tensor = req.inputs.add(name=input_name, datatype=datatype, shape=list(shape))
    if typed is not None:
        tensor.contents.fp32_contents.extend(typed)
    if raw is not None:
        req.raw_input_contents.append(raw)
    for o in outputs:
        req.outputs.add(name=o)
    return req


def _twice() -> Any:
    req = _infer(typed=[1.0] * 4)
    req.inputs.add(name="input", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend(
        [1.0] * 4
    )
    return req


FOUR = [1.0] * 4
OIP_BAD: dict[str, tuple[Any, grpc.StatusCode]] = {
    "raw fewer bytes": (_infer(shape=(2, 4), raw=b"\0" * 31), INVALID),
    "raw more bytes": (_infer(shape=(2, 4), raw=b"\0" * 33), INVALID),
    "typed fewer values": (_infer(shape=(2, 4), typed=[1.0] * 7), INVALID),
    "typed more values": (_infer(shape=(1, 4), typed=[1.0] * 5), INVALID),
    "negative dimension": (_infer(shape=(-1, 4), raw=b""), INVALID),
    "2^31 x 2^31": (_infer(shape=(BIG, BIG), raw=b"\0" * 16), INVALID),
    "int64 product overflows": (_infer(shape=(2**62, 2**62), raw=b"\0" * 16), INVALID),
    "rows over the limit": (
        _infer(shape=(MAX_ROWS + 1, 4), raw=b"\0" * 16 * (MAX_ROWS + 1)),
        INVALID,
    ),
    "BYTES to a numeric input": (
        _infer(datatype="BYTES", raw=struct.pack("<I", 1) + b"1"),
        INVALID,
    ),
    "unsupported datatype": (_infer(datatype="FP16", raw=b"\0" * 8), INVALID),
    "NaN": (_infer(typed=[1.0, NAN, 1.0, 1.0]), INVALID),
    "infinity raw": (_infer(raw=_f32(1, 1, INF, 1)), INVALID),
    "unknown input": (_infer(input_name="x", typed=FOUR), INVALID),
    "input given twice": (_twice(), INVALID),
    "raw and typed": (_infer(typed=FOUR, raw=b"\0" * 16), INVALID),
    "unknown output": (_infer(typed=FOUR, outputs=("nope",)), INVALID),
    "no inputs": (service_pb2.ModelInferRequest(model_name="iris"), INVALID),
    "path-like model": (_infer(name="../x", typed=FOUR), INVALID),
    "NUL in the model name": (_infer(name="a\x00b", typed=FOUR), INVALID),
    "1 KB model name": (_infer(name="x" * 1024, typed=FOUR), INVALID),
    "path-like version (an alias)": (_infer(version="../x", typed=FOUR), INVALID),
    "version 0": (_infer(version="0", typed=FOUR), INVALID),
    "unknown model": (_infer(name="nope", typed=FOUR), NOT_FOUND),
    "unknown version": (_infer(version="99", typed=FOUR), NOT_FOUND),
    "30-digit version": (_infer(version="9" * 30, typed=FOUR), NOT_FOUND),
    "unknown alias": (_infer(version="staging", typed=FOUR), NOT_FOUND),
    "tampered version": (_infer(name="broken", typed=FOUR), Code.UNAVAILABLE),
}


@pytest.mark.parametrize("case", list(OIP_BAD))
def test_oip_model_infer_hostile_inputs(srv, case):
    """inference.GRPCInferenceService/ModelInfer (tritonclient's messages): the same
    validation as the native API, under the protocol's names (docs/oip.md)."""
    req, code = OIP_BAD[case]
    stub = service_pb2_grpc.GRPCInferenceServiceStub(srv.stubs.channel)
    srv.refused(lambda s: stub.ModelInfer(req, timeout=30), code)


def test_oip_hostile_inputs_inside_one_stream(srv):
    """The same requests over one ModelStreamInfer: each answered in order with an
    in-stream error_message equal to ModelInfer's status details, the response naming
    its request; the stream goes on to the good one at the end."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(srv.stubs.channel)
    requests = []
    for i, (req, _code) in enumerate(OIP_BAD.values()):
        copy = service_pb2.ModelInferRequest()
        copy.CopyFrom(req)
        copy.id = str(i)
        requests.append(copy)
    last = _infer(typed=FOUR)
    last.id = "good"
    with unchanged(srv.home):
        out = list(stub.ModelStreamInfer(iter([*requests, last]), timeout=60))
    assert [o.infer_response.id for o in out] == [r.id for r in requests] + ["good"]
    for req, o in zip(requests, out, strict=False):
        _code, details = status_of(lambda req=req: stub.ModelInfer(req, timeout=30))
        assert o.error_message and o.error_message == details, (req.id, o.error_message)
        assert str(srv.home) not in o.error_message and "Traceback" not in o.error_message
    assert out[-1].error_message == "" and out[-1].infer_response.outputs
    assert_serves(srv.stubs)


def test_oip_repository_calls_with_hostile_names(srv):
    stub = service_pb2_grpc.GRPCInferenceServiceStub(srv.stubs.channel)
    for name in NAMES.values():
        for call in (
            lambda n=name: stub.RepositoryModelLoad(
                service_pb2.RepositoryModelLoadRequest(model_name=n)
            ),
            lambda n=name: stub.RepositoryModelUnload(
                service_pb2.RepositoryModelUnloadRequest(model_name=n)
            ),
            lambda n=name: stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=n)),
            lambda n=name: stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name=n)),
        ):
            srv.refused(lambda s, call=call: call(), INVALID, "name")
    srv.refused(
        lambda s: stub.RepositoryModelLoad(
            service_pb2.RepositoryModelLoadRequest(model_name="iris", repository_name="../x")
        ),
        INVALID,
        "repository_name",
    )


# --- long caller input: every message bounded ------------------------------------------

#: A caller-supplied text of 10 KB (lowercase letters: only its length is wrong).
LONG = "a" * 10240
#: The most bytes of status details (and in-stream error messages), api/errors.py.
MAX_DETAILS = 512
OK = Code.OK


def _long_bases() -> dict[str, list[Any]]:
    """A valid request (the messages of the call) of every served method, to
    put a 10 KB text into, one field at a time (the first message gets it)."""
    r, t, h = registry_pb2, train_pb2, health_pb2
    info = r.ImportModelInfo(model_name="bounded")
    upload = t.DatasetUploadInfo(name="bounded")
    return {
        "/grpc.health.v1.Health/Check": [h.HealthCheckRequest()],
        "/grpc.health.v1.Health/Watch": [h.HealthCheckRequest()],
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": [
            reflection_pb2.ServerReflectionRequest(list_services="")
        ],
        "/highpeaks_ml.v1.ModelRegistryService/ListModels": [r.ListModelsRequest()],
        "/highpeaks_ml.v1.ModelRegistryService/GetModel": [r.GetModelRequest(name="iris")],
        "/highpeaks_ml.v1.ModelRegistryService/GetModelVersion": [
            r.GetModelVersionRequest(model=_ref())
        ],
        "/highpeaks_ml.v1.ModelRegistryService/DownloadModelVersion": [
            r.DownloadModelVersionRequest(model=_ref())
        ],
        "/highpeaks_ml.v1.ModelRegistryService/SetAlias": [
            r.SetAliasRequest(model_name="iris", alias="staging", version=1)
        ],
        "/highpeaks_ml.v1.ModelRegistryService/DeleteAlias": [
            r.DeleteAliasRequest(model_name="iris", alias="staging")
        ],
        "/highpeaks_ml.v1.ModelRegistryService/DeleteModelVersion": [
            r.DeleteModelVersionRequest(model_name="iris", version=99)
        ],
        "/highpeaks_ml.v1.ModelRegistryService/ImportModel": list(_import_requests(info, ONNX)),
        # One figure asked for, so that the figure's name is read (not only the model's).
        "/highpeaks_ml.v1.ModelRegistryService/GetVersionReport": [
            r.GetVersionReportRequest(
                model=_ref(), format=r.REPORT_FORMAT_FIGURE, figure="confusion-matrix"
            )
        ],
        "/highpeaks_ml.v1.ModelRegistryService/GetDriftReport": [
            r.GetDriftReportRequest(model=_ref())
        ],
        "/highpeaks_ml.v1.PredictService/Predict": [good_predict()],
        "/highpeaks_ml.v1.PredictService/PredictStream": [good_predict()],
        "/highpeaks_ml.v1.TrainService/UploadDataset": list(_upload(upload)),
        "/highpeaks_ml.v1.TrainService/GetDataset": [t.GetDatasetRequest(id="f" * 64)],
        "/highpeaks_ml.v1.TrainService/ListDatasets": [t.ListDatasetsRequest()],
        "/highpeaks_ml.v1.TrainService/ListAlgorithms": [t.ListAlgorithmsRequest()],
        "/highpeaks_ml.v1.TrainService/StartTraining": [_train(model_name="bounded")],
        "/highpeaks_ml.v1.TrainService/GetTrainingJob": [t.GetTrainingJobRequest(id="nope")],
        "/highpeaks_ml.v1.TrainService/ListTrainingJobs": [t.ListTrainingJobsRequest()],
        "/highpeaks_ml.v1.TrainService/CancelTrainingJob": [t.CancelTrainingJobRequest(id="nope")],
        "/highpeaks_ml.v1.TrainService/WatchTrainingJob": [t.WatchTrainingJobRequest(id="nope")],
        "/inference.GRPCInferenceService/ServerLive": [service_pb2.ServerLiveRequest()],
        "/inference.GRPCInferenceService/ServerReady": [service_pb2.ServerReadyRequest()],
        "/inference.GRPCInferenceService/ServerMetadata": [service_pb2.ServerMetadataRequest()],
        "/inference.GRPCInferenceService/ModelReady": [service_pb2.ModelReadyRequest(name="iris")],
        "/inference.GRPCInferenceService/ModelMetadata": [
            service_pb2.ModelMetadataRequest(name="iris")
        ],
        "/inference.GRPCInferenceService/ModelStatistics": [
            service_pb2.ModelStatisticsRequest(name="iris")
        ],
        "/inference.GRPCInferenceService/ModelInfer": [_infer(typed=FOUR)],
        "/inference.GRPCInferenceService/ModelStreamInfer": [_infer(typed=FOUR)],
        "/inference.GRPCInferenceService/RepositoryIndex": [service_pb2.RepositoryIndexRequest()],
        "/inference.GRPCInferenceService/RepositoryModelLoad": [
            service_pb2.RepositoryModelLoadRequest(model_name="iris")
        ],
        "/inference.GRPCInferenceService/RepositoryModelUnload": [
            service_pb2.RepositoryModelUnloadRequest(model_name="scratch")
        ],
    }


_CODE_OF = {code.value[0]: code for code in Code}
PREDICT_STREAM = "/highpeaks_ml.v1.PredictService/PredictStream"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

_HEALTH = "/grpc.health.v1.Health/"
_REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
_TRAIN = "/highpeaks_ml.v1.TrainService/"
_OIP = "/inference.GRPCInferenceService/"
#: The code a 10 KB text in each field gets where it is not INVALID_ARGUMENT:
#: NOT_FOUND for an id nobody has; OK where the text is the caller's own (a
#: correlation id echoed back, a list filter, parameters the protocol lets a
#: server ignore), where ModelReady answers false, and for grpc's health and
#: reflection services (which answer unknown names in their own way).
LONG_EXPECTED: dict[tuple[str, str], grpc.StatusCode] = {
    (_HEALTH + "Check", "service"): NOT_FOUND,
    (_HEALTH + "Watch", "service"): OK,
    **{
        (_REFLECTION, p): OK for p in text_fields(reflection_pb2.ServerReflectionRequest.DESCRIPTOR)
    },
    ("/highpeaks_ml.v1.PredictService/Predict", "id"): OK,
    (PREDICT_STREAM, "id"): OK,
    (_TRAIN + "GetTrainingJob", "id"): NOT_FOUND,
    (_TRAIN + "CancelTrainingJob", "id"): NOT_FOUND,
    (_TRAIN + "WatchTrainingJob", "id"): NOT_FOUND,
    (_TRAIN + "ListTrainingJobs", "model_name"): OK,
    **{
        (m, p): OK
        for m in (MODEL_INFER, MODEL_STREAM_INFER)
        for p in ("id", "parameters{}", "inputs.parameters{}")
    },
    (_OIP + "ModelReady", "name"): OK,
    (_OIP + "ModelReady", "version"): OK,
}


def _long_cases() -> list[tuple[str, str]]:
    return [
        (method, path)
        for method, reqs in sorted(_long_bases().items())
        for path in text_fields(reqs[0].DESCRIPTOR)
    ]


def test_long_text_cases_cover_every_served_method(srv):
    """What reflection serves, method by method and text field by text field,
    is what the 10 KB test below sends (a new method or field must get a case)."""
    served = served_request_types(srv.stubs.channel)
    bases = _long_bases()
    assert set(served) == set(bases), set(served) ^ set(bases)
    for method, request in served.items():
        assert text_fields(request) == text_fields(bases[method][0].DESCRIPTOR), method


@pytest.mark.parametrize(("method", "path"), _long_cases())
def test_10kb_text_in_every_field_of_every_method(srv, method, path):
    """A 10 KB name, column, id... in any text field of any served method: the
    call gets its real status (never RESOURCE_EXHAUSTED for oversized metadata,
    never UNKNOWN/INTERNAL) with details of at most 512 bytes that quote at most
    a short piece of the text; the streams answer in-stream, as small. A refused
    call changes nothing on disk, and the server serves on."""
    reqs = _long_bases()[method]
    put_text(reqs[0], path, LONG)
    expected = LONG_EXPECTED.get((method, path), INVALID)
    responses: list[bytes] = []
    with unchanged(srv.home) if expected != OK else contextlib.nullcontext():
        code, details = call_raw(
            srv.stubs.channel,
            method,
            METHODS[method],
            [m.SerializeToString() for m in reqs],
            responses=responses,
        )
    if method == PREDICT_STREAM and code == OK:
        answer = predict_pb2.PredictStreamResponse.FromString(responses[0])
        if answer.HasField("error"):
            code, details = _CODE_OF[answer.error.code], answer.error.message
    elif method == MODEL_STREAM_INFER and code == OK:
        details = service_pb2.ModelStreamInferResponse.FromString(responses[0]).error_message
        # No code in-stream: ModelInfer's, whose status details the message repeats.
        code, unary = call_raw(
            srv.stubs.channel, MODEL_INFER, (False, False), [reqs[0].SerializeToString()]
        )
        assert details == unary, (details[:200], unary[:200])
    assert code == expected, (code, details[:200])
    assert len(details.encode()) <= MAX_DETAILS, (len(details.encode()), details[:200])
    # Caller text is quoted cut (errors.quote), not left to the cap's blind cut.
    assert "a" * 100 not in details, details[:200]
    assert_serves(srv.stubs)


def _hyperparameters(**values: Any) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


#: 10 KB caller text in values rather than names: cells, categories, choices, CSV headers.
LONG_VALUES: dict[str, tuple[Callable[[Stubs], Any], grpc.StatusCode]] = {
    "string for a numeric feature": (lambda s: s.predict.Predict(_rows_with(LONG)), INVALID),
    "string hyperparameter": (
        lambda s: s.train.StartTraining(
            _train(hyperparameters=_hyperparameters(class_weight=LONG))
        ),
        INVALID,
    ),
    "CSV header column, unknown target": (
        lambda s: s.train.UploadDataset(
            _upload(
                train_pb2.DatasetUploadInfo(name="bounded", target_column="nope"),
                f"{LONG},b\n1,x\n2,y\n".encode(),
            )
        ),
        INVALID,
    ),
    "inline dataset cell in a numeric column": (
        lambda s: s.train.StartTraining(
            _train(
                dataset=train_pb2.DatasetRef(
                    inline=train_pb2.InlineDataset(
                        rows=[_hyperparameters(x=1.0, target=0.0)] * 3
                        + [_hyperparameters(x=LONG, target=1.0)]
                    )
                ),
                target_column="target",
                task=common_pb2.TASK_REGRESSION,
            )
        ),
        INVALID,
    ),
}


@pytest.mark.parametrize("case", list(LONG_VALUES))
def test_10kb_values_are_quoted_cut(srv, case):
    call, code = LONG_VALUES[case]
    details = srv.refused(call, code)
    assert len(details.encode()) <= MAX_DETAILS and "a" * 100 not in details, details[:200]


def test_a_10kb_model_name_reads_well_in_status_and_in_stream(srv):
    """The caller sees which name was refused, cut, with its length, as the status of
    Predict and ModelInfer and as ModelStreamInfer's in-stream error_message."""
    expected = f"invalid model name '{'a' * 64}…' (10240 characters): use 1-63 lowercase"
    stub = service_pb2_grpc.GRPCInferenceServiceStub(srv.stubs.channel)
    request = _infer(name=LONG, typed=FOUR)
    request.id = "long"
    details = srv.refused(lambda s: stub.ModelInfer(request, timeout=30), INVALID)
    assert details.startswith(expected), details
    details = srv.refused(lambda s: s.predict.Predict(good_predict(LONG)), INVALID)
    assert details.startswith(expected), details
    with unchanged(srv.home):
        (answer,) = stub.ModelStreamInfer(iter([request]), timeout=30)
    assert answer.infer_response.id == "long"
    assert answer.error_message.startswith(expected), answer.error_message[:200]
    assert len(answer.error_message.encode()) <= MAX_DETAILS


# --- unknown things -----------------------------------------------------------------------

UNKNOWN: dict[str, Callable[[Stubs], Any]] = {
    "model": lambda s: s.registry.GetModel(registry_pb2.GetModelRequest(name="nope")),
    "latest of unknown model": lambda s: s.registry.GetModelVersion(
        registry_pb2.GetModelVersionRequest(model=_ref("nope"))
    ),
    "version": lambda s: s.registry.GetModelVersion(
        registry_pb2.GetModelVersionRequest(model=_ref(version=99))
    ),
    "alias": lambda s: s.registry.GetModelVersion(
        registry_pb2.GetModelVersionRequest(model=_ref(alias="staging"))
    ),
    "predict unknown model": lambda s: s.predict.Predict(
        predict_pb2.PredictRequest(model=_ref("nope"), tensor=good_predict().tensor)
    ),
    "predict unknown version": lambda s: s.predict.Predict(
        predict_pb2.PredictRequest(model=_ref(version=99), tensor=good_predict().tensor)
    ),
    "predict unknown alias": lambda s: s.predict.Predict(
        predict_pb2.PredictRequest(model=_ref(alias="staging"), tensor=good_predict().tensor)
    ),
    "download unknown version": lambda s: list(
        s.registry.DownloadModelVersion(
            registry_pb2.DownloadModelVersionRequest(model=_ref(version=99))
        )
    ),
    "alias to unknown version": lambda s: s.registry.SetAlias(
        registry_pb2.SetAliasRequest(model_name="iris", alias="staging", version=99)
    ),
    "alias of unknown model": lambda s: s.registry.SetAlias(
        registry_pb2.SetAliasRequest(model_name="nope", alias="staging", version=1)
    ),
    "delete unknown alias": lambda s: s.registry.DeleteAlias(
        registry_pb2.DeleteAliasRequest(model_name="iris", alias="staging")
    ),
    "delete unknown version": lambda s: s.registry.DeleteModelVersion(
        registry_pb2.DeleteModelVersionRequest(model_name="iris", version=99)
    ),
    "delete version of unknown model": lambda s: s.registry.DeleteModelVersion(
        registry_pb2.DeleteModelVersionRequest(model_name="nope", version=1)
    ),
    "job": lambda s: s.train.GetTrainingJob(train_pb2.GetTrainingJobRequest(id="nope")),
    "cancel unknown job": lambda s: s.train.CancelTrainingJob(
        train_pb2.CancelTrainingJobRequest(id="nope")
    ),
    "watch unknown job": lambda s: list(
        s.train.WatchTrainingJob(train_pb2.WatchTrainingJobRequest(id="nope"), timeout=10)
    ),
    "dataset": lambda s: s.train.GetDataset(train_pb2.GetDatasetRequest(id="f" * 64)),
    "train on unknown dataset": lambda s: s.train.StartTraining(
        _train(dataset=train_pb2.DatasetRef(dataset_id="f" * 64))
    ),
}


@pytest.mark.parametrize("case", list(UNKNOWN))
def test_unknown_things_are_not_found(srv, case):
    srv.refused(UNKNOWN[case], NOT_FOUND)


# --- hyperparameters and other training inputs ---------------------------------------------

BAD_TRAINING: dict[str, dict[str, Any]] = {
    "unknown algorithm": {"algorithm": "no_such_algorithm"},
    "unknown hyperparameter": {"params": {"n_jobs": -1}},
    "random_state": {"params": {"random_state": 1}},
    "verbose": {"params": {"verbose": 1}},
    "below the minimum": {"algorithm": "random_forest", "params": {"n_estimators": 0}},
    "above the maximum": {"algorithm": "random_forest", "params": {"n_estimators": 10**9}},
    "negative": {"params": {"max_iter": -5}},
    "fraction for an int": {"params": {"max_iter": 5.5}},
    "2^63 for an int": {"params": {"max_iter": 2.0**63}},
    "1e300": {"params": {"C": 1e300}},
    "-0.0 below a positive minimum": {"params": {"C": -0.0}},
    "NaN": {"params": {"C": NAN}},
    "infinity": {"params": {"C": INF}},
    "-infinity for an int": {"params": {"max_iter": -INF}},
    "NaN nested in a list": {"params": {"C": [1.0, NAN]}},
    "string for a number": {"params": {"C": "big"}},
    "bool for a number": {"params": {"C": True}},
    "null for a non-nullable": {"params": {"C": None}},
    "list for a number": {"params": {"C": [1.0]}},
    "struct for a number": {"params": {"C": {"a": 1.0}}},
    "choice not allowed": {"params": {"class_weight": "x" * 10_000}},
    "1 KB parameter name": {"params": {"p" * 1024: 1.0}},
    "NaN test_size": {"test_size": NAN},
    "test_size above 0.5": {"test_size": 0.9},
    "infinite time limit": {"time_limit_seconds": INF},
    "negative time limit": {"time_limit_seconds": -1.0},
    "unknown task": {"task": 99},
    "task the algorithm lacks": {"task": common_pb2.TASK_REGRESSION},
    "long description": {"description": "d" * 100_000},
    "long idempotency key": {"idempotency_key": "k" * 200},
    "target not in the data": {"target_column": "species"},
    "feature not in the data": {"feature_columns": ["nope"]},
    "target as a feature": {"feature_columns": ["target"]},
    "NaN in inline rows": {"inline": [{"x": 1.0, "y": 1.0}, {"x": NAN, "y": 0.0}]},
    "inf in inline rows": {"inline": [{"x": INF, "y": 1.0}, {"x": 1.0, "y": 0.0}]},
    "nested inline value": {"inline": [{"x": {"deep": 1.0}, "y": 1.0}]},
    "no dataset": {"dataset": None},
}


def _training_request(case: dict[str, Any]) -> train_pb2.StartTrainingRequest:
    case = dict(case)
    params = struct_pb2.Struct()
    for key, value in case.pop("params", {}).items():
        v = params.fields[key]
        if isinstance(value, list):
            v.list_value.extend(value)
        elif isinstance(value, dict):
            v.struct_value.update(value)
        elif value is None:
            v.null_value = struct_pb2.NULL_VALUE
        elif isinstance(value, bool):
            v.bool_value = value
        elif isinstance(value, str):
            v.string_value = value
        else:
            v.number_value = value
    req = _train(hyperparameters=params)
    if "inline" in case:
        rows = case.pop("inline")
        req.dataset.CopyFrom(train_pb2.DatasetRef(inline=train_pb2.InlineDataset()))
        for row in rows:
            s = req.dataset.inline.rows.add()
            for k, value in row.items():
                if isinstance(value, dict):
                    s.fields[k].struct_value.update(value)
                else:
                    s.fields[k].number_value = value
        req.target_column = "y"
    if "dataset" in case:
        case.pop("dataset")
        req.ClearField("dataset")
    for key, value in case.items():
        if isinstance(value, list):
            getattr(req, key).extend(value)
        else:
            setattr(req, key, value)
    return req


@pytest.mark.parametrize("case", list(BAD_TRAINING))
def test_bad_training_requests_are_invalid_argument(srv, case):
    req = _training_request(BAD_TRAINING[case])
    srv.refused(lambda s: s.train.StartTraining(req, timeout=30), INVALID)


# --- races ----------------------------------------------------------------------------------


def test_trainings_and_alias_moves_race_a_prediction_loop(srv):
    """Two trainings publish versions of 'race' and the 'production' alias keeps
    moving while three callers predict in a loop (alias, latest, a stream). No
    prediction fails, and each answer is exactly what the version it names
    gives when asked by number afterwards: no answer came from a half-loaded
    or mixed-up version."""
    s = srv.stubs
    X = sm.iris_logreg().X[::15].astype(np.float32)  # 10 rows
    tensor = common_pb2.Tensor(data_type=F32, shape=list(X.shape), raw_data=X.tobytes())
    answers: list[tuple[int, np.ndarray]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def record(resp: predict_pb2.PredictResponse) -> None:
        probs = np.array(resp.probabilities.float_values, np.float32).reshape(-1, 3)
        assert probs.shape == (10, 3) and len(resp.labels.int64_values) == 10
        answers.append((resp.model_version, probs))

    def unary(ref: common_pb2.ModelRef) -> None:
        try:
            while not stop.is_set():
                record(s.predict.Predict(predict_pb2.PredictRequest(model=ref, tensor=tensor)))
        except BaseException as exc:
            failures.append(exc)

    def stream() -> None:
        def requests() -> Iterator[predict_pb2.PredictRequest]:
            while not stop.is_set():
                yield predict_pb2.PredictRequest(
                    model=_ref("race", alias="production"), tensor=tensor
                )
                time.sleep(0.002)

        try:
            for msg in s.predict.PredictStream(requests(), timeout=300):
                assert msg.WhichOneof("result") == "response", msg.error
                record(msg.response)
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=unary, args=(_ref("race", alias="production"),)),
        threading.Thread(target=unary, args=(_ref("race"),)),
        threading.Thread(target=stream),
    ]
    for t in threads:
        t.start()
    try:
        jobs = [
            s.train.StartTraining(
                _train(model_name="race", algorithm=algo, aliases=aliases), timeout=30
            )
            for algo, aliases in (("logistic_regression", ["production"]), ("decision_tree", []))
        ]
        done: set[str] = set()
        flip = 0
        deadline = time.monotonic() + 240
        # At least 20 alias moves, however quickly the (warm) workers train.
        while (len(done) < len(jobs) or flip < 20) and time.monotonic() < deadline and not failures:
            versions = versions_of(s, "race")
            flip += 1
            s.registry.SetAlias(
                registry_pb2.SetAliasRequest(
                    model_name="race", alias="production", version=versions[flip % len(versions)]
                )
            )
            for job in jobs:
                state = s.train.GetTrainingJob(train_pb2.GetTrainingJobRequest(id=job.id)).state
                assert state not in (train_pb2.JOB_STATE_FAILED, train_pb2.JOB_STATE_CANCELLED)
                if state == train_pb2.JOB_STATE_SUCCEEDED:
                    done.add(job.id)
            time.sleep(0.05)
        assert len(done) == 2, "the trainings did not finish"
        # Point the alias at the newest version and let the callers see it.
        s.registry.SetAlias(
            registry_pb2.SetAliasRequest(model_name="race", alias="production", version=3)
        )
        deadline = time.monotonic() + 30
        while not {2, 3} <= {v for v, _ in answers} and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[0]
    seen = {v for v, _ in answers}
    assert seen == {1, 2, 3}, seen
    # Every answer equals its version's answer, asked by number now.
    truth = {}
    for v in seen:
        resp = s.predict.Predict(
            predict_pb2.PredictRequest(model=_ref("race", version=v), tensor=tensor)
        )
        truth[v] = np.array(resp.probabilities.float_values, np.float32).reshape(-1, 3)
    for v, probs in answers:
        # Batching may run a request alone or merged: the last float32 bits may differ.
        np.testing.assert_allclose(probs, truth[v], rtol=0, atol=2e-6)
    assert len(answers) > 50
    assert_serves(s)


# --- cancelled clients ----------------------------------------------------------------------


def test_client_cancels_mid_stream(srv):
    s = srv.stubs
    errors_before = log_errors(srv.proc)

    # PredictStream: requests keep coming, the client walks away after three answers.
    def forever() -> Iterator[predict_pb2.PredictRequest]:
        i = 0
        while True:
            req = good_predict()
            req.id = str(i)
            i += 1
            yield req

    call = s.predict.PredictStream(forever(), timeout=60)
    assert [next(call).id for _ in range(3)] == ["0", "1", "2"]
    call.cancel()
    assert call.code() == Code.CANCELLED
    assert_serves(s)

    # PredictStream cancelled before reading anything, with 500 requests sent.
    call = s.predict.PredictStream(iter([good_predict()] * 500), timeout=60)
    call.cancel()
    assert_serves(s)

    # DownloadModelVersion of a 4 MB model (several chunks): cancelled after the metadata.
    call = s.registry.DownloadModelVersion(
        registry_pb2.DownloadModelVersionRequest(model=_ref("slow", version=1)), timeout=60
    )
    assert next(call).WhichOneof("part") == "version"
    call.cancel()
    assert_serves(s)
    # ... and a full download afterwards still matches.
    chunks = list(
        s.registry.DownloadModelVersion(
            registry_pb2.DownloadModelVersionRequest(model=_ref("slow", version=1)), timeout=60
        )
    )
    data = b"".join(m.chunk for m in chunks[1:])
    assert hashlib.sha256(data).hexdigest() == chunks[0].version.sha256 and len(chunks) > 2

    # WatchTrainingJob of a long job: the watcher goes away, the job and server carry on.
    job = s.train.StartTraining(
        _train(model_name="watched", algorithm="random_forest", **_slow_params()), timeout=30
    )
    call = s.train.WatchTrainingJob(train_pb2.WatchTrainingJobRequest(id=job.id), timeout=60)
    assert next(call).id == job.id
    call.cancel()
    assert_serves(s)
    state = s.train.GetTrainingJob(train_pb2.GetTrainingJobRequest(id=job.id)).state
    assert state in (train_pb2.JOB_STATE_QUEUED, train_pb2.JOB_STATE_RUNNING)
    s.train.CancelTrainingJob(train_pb2.CancelTrainingJobRequest(id=job.id))

    # Client streams abandoned half-way leave nothing behind.
    with unchanged(srv.home, settle_s=10):
        q: queue.Queue = queue.Queue()
        q.put(registry_pb2.ImportModelRequest(info=registry_pb2.ImportModelInfo(model_name="gone")))
        q.put(registry_pb2.ImportModelRequest(chunk=ONNX[:100]))
        future = s.registry.ImportModel.future(iter(q.get, None), timeout=60)
        _wait_for_staging(srv.home)
        future.cancel()
        q.put(None)
    with unchanged(srv.home, settle_s=10):
        q = queue.Queue()
        q.put(train_pb2.UploadDatasetRequest(info=train_pb2.DatasetUploadInfo(name="gone")))
        q.put(train_pb2.UploadDatasetRequest(chunk=b"a,b\n" + b"1,2\n" * 1000))
        future = s.train.UploadDataset.future(iter(q.get, None), timeout=60)
        _wait_for_staging(srv.home, "upload-")
        future.cancel()
        q.put(None)
    assert_serves(s)
    assert log_errors(srv.proc) == errors_before


def _slow_params() -> dict[str, Any]:
    params = struct_pb2.Struct()
    params.update(SLOW_TRAINING)
    return {"hyperparameters": params, "dataset": train_pb2.DatasetRef(builtin="digits")}


def _wait_for_staging(home: Path, prefix: str = "registry-", timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(n.startswith(prefix) and not n.endswith(".lock") for n in os.listdir(home / "tmp")):
            return
        time.sleep(0.01)
    raise AssertionError(f"no {prefix}* staging area appeared")


# --- tampered files -------------------------------------------------------------------------


def test_tampered_onnx_is_refused_while_others_serve(srv):
    """(Also in test_predict_api / test_registry_api.) The seeded 'broken' version's
    file no longer matches its sha256: predictions and downloads are refused with
    UNAVAILABLE naming the version, metadata still answers, every other model
    serves, and nothing on disk is changed or removed."""
    bad = predict_pb2.PredictRequest(model=_ref("broken", version=1), tensor=good_predict().tensor)
    srv.refused(lambda s: s.predict.Predict(bad), Code.UNAVAILABLE, "sha256", "version 1")
    srv.refused(
        lambda s: list(
            s.registry.DownloadModelVersion(
                registry_pb2.DownloadModelVersionRequest(model=_ref("broken", version=1))
            )
        ),
        Code.UNAVAILABLE,
        "sha256",
    )
    meta = srv.stubs.registry.GetModelVersion(
        registry_pb2.GetModelVersionRequest(model=_ref("broken", version=1))
    )
    assert meta.load_state == registry_pb2.LOAD_STATE_FAILED and "sha256" in meta.load_error
    for name, n in (("prices", 3), ("slow", 4)):
        resp = srv.stubs.predict.Predict(
            _tensor(name, data_type=F32, shape=[1, n], float_values=[1.0] * n)
        )
        assert resp.model_version == 1


# --- SIGKILL during a registry publish --------------------------------------------------------


def _check_after_restart(home: Path, acknowledged: set[int], expected: dict[int, bytes]) -> Live:
    """A fresh server on ``home``: no staging leftovers, version 1 serves, every
    version is complete (its bytes match its sha256 and what was sent), every
    acknowledged version is there."""
    proc = ServerProcess(home)
    channel = grpc.insecure_channel(proc.target)
    live = Live(proc, home, Stubs.of(channel))
    assert not [n for n in os.listdir(home / "tmp") if n.startswith("registry-")]
    versions = versions_of(live.stubs, "big")
    assert versions[0] == 1 and acknowledged <= set(versions), (versions, acknowledged)
    for v in versions:
        msgs = list(
            live.stubs.registry.DownloadModelVersion(
                registry_pb2.DownloadModelVersionRequest(model=_ref("big", version=v)), timeout=60
            )
        )
        data = b"".join(m.chunk for m in msgs[1:])
        assert hashlib.sha256(data).hexdigest() == msgs[0].version.sha256
        if v in expected:
            assert data == expected[v]
    resp = live.stubs.predict.Predict(good_predict("big", 1))
    assert resp.model_version == 1
    return live


def test_sigkill_during_import_and_restart(tmp_path):
    """The server is SIGKILLed while a 4 MB ImportModel is under way: in the middle
    of the upload, and right after its last chunk (while it checks, stages and
    publishes). After each restart nothing partial is visible, staging areas are
    gone, version 1 serves, an acknowledged import is there, and the next import
    gets a fresh number. (test_registry_api.py kills a publisher paused exactly
    between staging and rename.)"""
    home = tmp_path / "home"
    home.mkdir()
    store = LocalModelStore(home)
    store.start()
    iris = sm.iris_logreg()
    store.publish("big", iris.onnx, iris.meta)
    big = sm.deep_forest().onnx
    acknowledged: set[int] = set()
    expected = {1: iris.onnx}
    # Kill points: during the upload, then 0 and 30 ms after the last chunk. Each
    # check's server is the next one killed.
    proc = ServerProcess(home)
    for delay in (None, 0.0, 0.03):
        channel = grpc.insecure_channel(proc.target)
        stub = registry_pb2_grpc.ModelRegistryServiceStub(channel)
        q: queue.Queue = queue.Queue()
        q.put(registry_pb2.ImportModelRequest(info=registry_pb2.ImportModelInfo(model_name="big")))
        chunks = [big[i : i + 64 * 1024] for i in range(0, len(big), 64 * 1024)]
        half = len(chunks) // 2
        for c in chunks[:half]:
            q.put(registry_pb2.ImportModelRequest(chunk=c))
        future = stub.ImportModel.future(iter(q.get, None), timeout=60)
        _wait_for_staging(home)
        if delay is not None:
            for c in chunks[half:]:
                q.put(registry_pb2.ImportModelRequest(chunk=c))
            q.put(None)
            time.sleep(delay)
        proc.terminate(signal.SIGKILL)
        q.put(None)
        with contextlib.suppress(grpc.RpcError, grpc.FutureCancelledError):
            version = future.result(timeout=30)
            acknowledged.add(version.version)
            expected[version.version] = big
        channel.close()
        proc.stop()
        live = _check_after_restart(home, acknowledged, expected)
        live.stubs.channel.close()
        proc = live.proc
    # Whatever happened before, the next import gets the next free number.
    try:
        with grpc.insecure_channel(proc.target) as channel:
            stubs = Stubs.of(channel)
            before = versions_of(stubs, "big")
            new = stubs.registry.ImportModel(
                _import_requests(registry_pb2.ImportModelInfo(model_name="big"), iris.onnx)
            )
            assert new.version > max(before)
    finally:
        proc.stop()


def test_sigkill_while_a_training_job_registers(tmp_path):
    """Killed when a job reports the REGISTERING stage (the server publishes the
    worker's staged file): after a restart the job either succeeded with a
    complete version or failed as interrupted, with no version at all."""
    home = tmp_path / "home"
    home.mkdir()
    store = LocalModelStore(home)
    store.start()
    iris = sm.iris_logreg()
    store.publish("big", iris.onnx, iris.meta)
    proc = ServerProcess(home)
    with grpc.insecure_channel(proc.target) as channel:
        stubs = Stubs.of(channel)
        job = stubs.train.StartTraining(_train(model_name="big"), timeout=30)
        for update in stubs.train.WatchTrainingJob(
            train_pb2.WatchTrainingJobRequest(id=job.id), timeout=120
        ):
            if update.stage == train_pb2.JOB_STAGE_REGISTERING or update.state > 2:
                break
        proc.terminate(signal.SIGKILL)
    proc.stop()
    live = _check_after_restart(home, set(), {})
    try:
        final = live.stubs.train.GetTrainingJob(train_pb2.GetTrainingJobRequest(id=job.id))
        versions = versions_of(live.stubs, "big")
        if final.state == train_pb2.JOB_STATE_SUCCEEDED:
            assert versions == [1, 2] and final.model_version == 2
        else:
            assert final.state == train_pb2.JOB_STATE_FAILED, final
            assert "interrupted" in final.error and versions == [1]
    finally:
        live.stubs.channel.close()
        live.proc.stop()


# --- every JWT case against a write RPC ---------------------------------------------------------


class Keys:
    def __init__(self) -> None:
        self.rsa = sec.rsa_key()
        self.other = sec.rsa_key()
        self.secret = b"h" * 40


@pytest.fixture(scope="module")
def jwt_keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def jwt_srv(tmp_path_factory, jwt_keys) -> Iterator[Live]:
    """Auth on: RS256 keys from a JWKS and an HS256 shared secret (the set-up in
    which algorithm confusion would bite), issuer and audience required, and a
    plaintext health-only port."""
    import json

    tmp = tmp_path_factory.mktemp("hostile-jwt")
    (tmp / "jwks.json").write_text(json.dumps(sec.jwks({"rsa-1": jwt_keys.rsa})))
    (tmp / "secret").write_bytes(jwt_keys.secret)
    home = tmp / "home"
    home.mkdir()
    seed(home)
    health_port = sec.free_port()
    proc = ServerProcess(
        home,
        "--health-port",
        str(health_port),
        env={
            "HIGHPEAKS_ML_AUTH_MODE": "jwt",
            "HIGHPEAKS_ML_JWT_ALGORITHMS": "RS256,ES256,HS256",
            "HIGHPEAKS_ML_JWT_JWKS_FILE": str(tmp / "jwks.json"),
            "HIGHPEAKS_ML_JWT_SECRET_FILE": str(tmp / "secret"),
            "HIGHPEAKS_ML_JWT_ISSUER": sec.ISSUER,
            "HIGHPEAKS_ML_JWT_AUDIENCE": sec.AUDIENCE,
        },
    )
    proc.health_port = health_port
    channel = grpc.insecure_channel(proc.target)
    try:
        yield Live(proc, home, Stubs.of(channel))
    finally:
        channel.close()
        proc.stop()


ALL = f"{PREDICT} {TRAIN} {ADMIN}"


def _jwt_cases(k: Keys) -> dict[str, tuple[tuple[tuple[str, str], ...], grpc.StatusCode]]:
    def rs(scopes: str | None = ALL, **kw: Any) -> str:
        return sec.token(k.rsa, sec.claims(scopes, **kw), "RS256", kid="rsa-1")

    now = int(time.time())
    pem = sec.public_pem(k.rsa)
    unauth = Code.UNAUTHENTICATED
    return {
        "missing": ((), unauth),
        "malformed": ((("authorization", "Bearer not.a.jwt"),), unauth),
        "not bearer": ((("authorization", "Basic dXNlcjpwYXNz"),), unauth),
        "expired": (sec.bearer(rs(exp_in=-120)), unauth),
        "no exp": (sec.bearer(rs(exp_in=None)), unauth),
        "not yet valid": (sec.bearer(rs(nbf=now + 600)), unauth),
        "issued in the future": (sec.bearer(rs(iat=now + 600)), unauth),
        "wrong audience": (sec.bearer(rs(aud="someone-else")), unauth),
        "wrong issuer": (sec.bearer(rs(iss="https://evil.test/")), unauth),
        "alg none": (
            sec.bearer(sec.forged_token(sec.claims(ALL), {"alg": "none", "kid": "rsa-1"}, None)),
            unauth,
        ),
        "HS256 signed with the RSA public key": (
            sec.bearer(sec.forged_token(sec.claims(ALL), {"alg": "HS256", "kid": "rsa-1"}, pem)),
            unauth,
        ),
        "HS256 with a wrong secret": (
            sec.bearer(sec.token(b"w" * 40, sec.claims(ALL), "HS256")),
            unauth,
        ),
        "unknown kid": (sec.bearer(sec.token(k.rsa, sec.claims(ALL), kid="rsa-9")), unauth),
        "signed by another key": (
            sec.bearer(sec.token(k.other, sec.claims(ALL), kid="rsa-1")),
            unauth,
        ),
        "missing scope": (sec.bearer(rs(f"{PREDICT} {TRAIN}")), Code.PERMISSION_DENIED),
        "no scopes": (sec.bearer(rs(None)), Code.PERMISSION_DENIED),
        "two authorization headers": (sec.bearer(rs()) + sec.bearer(rs()), unauth),
    }


#: The names of ``_jwt_cases`` (parametrize needs them before any key exists).
JWT_CASES = [
    "missing",
    "malformed",
    "not bearer",
    "expired",
    "no exp",
    "not yet valid",
    "issued in the future",
    "wrong audience",
    "wrong issuer",
    "alg none",
    "HS256 signed with the RSA public key",
    "HS256 with a wrong secret",
    "unknown kid",
    "signed by another key",
    "missing scope",
    "no scopes",
    "two authorization headers",
]


def _admin(k: Keys) -> tuple[tuple[str, str], ...]:
    return sec.bearer(sec.token(k.rsa, sec.claims(ALL), "RS256", kid="rsa-1"))


def _move_alias(s: Stubs, metadata: tuple[tuple[str, str], ...]) -> Any:
    return s.registry.SetAlias(
        registry_pb2.SetAliasRequest(model_name="iris", alias="production", version=2),
        metadata=metadata,
        timeout=10,
    )


@pytest.mark.parametrize("case", JWT_CASES)
def test_jwt_cases_against_a_write_rpc(jwt_srv, jwt_keys, case):
    """(test_auth.py has each case in depth.) A write RPC (moving an alias) with each
    bad token: the right code, the alias file untouched, the server serving."""
    cases = _jwt_cases(jwt_keys)
    assert list(cases) == JWT_CASES
    metadata, code = cases[case]
    jwt_srv.refused(lambda s: _move_alias(s, metadata), code, metadata=_admin(jwt_keys))


def test_jwt_malformed_bytes_are_authenticated_first(jwt_srv, jwt_keys):
    method = "/highpeaks_ml.v1.ModelRegistryService/SetAlias"
    garbage = [MALFORMED["truncated length-delimited field"]]
    with unchanged(jwt_srv.home):
        code, _ = call_raw(jwt_srv.stubs.channel, method, METHODS[method], garbage)
        assert code == Code.UNAUTHENTICATED
        code, details = call_raw(
            jwt_srv.stubs.channel, method, METHODS[method], garbage, _admin(jwt_keys)
        )
        assert code == INVALID and "malformed request" in details
    # The plaintext health-only port refuses garbage the same way.
    with grpc.insecure_channel(f"127.0.0.1:{jwt_srv.proc.health_port}") as ch:
        code, _ = call_raw(ch, "/grpc.health.v1.Health/Check", (False, False), garbage)
        assert code == INVALID
        assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest()).status == 1
    assert_serves(jwt_srv.stubs, _admin(jwt_keys))


def test_jwt_control_a_good_token_does_change_the_alias(jwt_srv, jwt_keys):
    """The control that makes the cases above meaningful: the same call with a
    valid admin token goes through and does change the home."""
    before = snapshot(jwt_srv.home)
    assert dict(_move_alias(jwt_srv.stubs, _admin(jwt_keys)).aliases)["production"] == 2
    assert snapshot(jwt_srv.home) != before


# --- last: the server never logged an unexpected error ----------------------------------------


def test_no_unexpected_errors_were_logged(srv, jwt_srv):
    for live in (srv, jwt_srv):
        assert not log_errors(live.proc), log_errors(live.proc)[:5]
