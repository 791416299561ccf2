"""The Open Inference Protocol through tritonclient, against the real server (subprocess).

This test process imports tritonclient (its ``inference.*`` messages in the
default descriptor pool) next to highpeaks_ml; the server is a subprocess.
Models are real skl2onnx exports placed in the home with the real
LocalModelStore before the server starts. tritonclient's gRPC client always
sends raw tensors (``raw_input_contents``); the typed form is sent with the
GRPCInferenceService stub tritonclient ships (``service_pb2_grpc``) and with
grpcurl's JSON.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import highpeaks_ml
from highpeaks_ml.api import oip_messages as msgs
from highpeaks_ml.client import Client
from highpeaks_ml.registry.local import LocalModelStore
from tests.conftest import ROOT, ServerProcess, grpcurl
from tests.support import security as sec
from tests.support import serving_models as sm

tc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
INVALID = "StatusCode.INVALID_ARGUMENT"
NOT_FOUND = "StatusCode.NOT_FOUND"
UNAVAILABLE = "StatusCode.UNAVAILABLE"
SECRET = b"o" * 48


def seed(home: Path) -> None:
    """iris v1 (production), v2, v3; flowers; prices; mixed; imported; a tampered 'broken'."""
    store = LocalModelStore(home)
    store.start()
    for c, aliases in ((1.0, ("production",)), (0.01, ()), (0.1, ())):
        exp = sm.iris_logreg(c=c)
        store.publish("iris", exp.onnx, exp.meta, aliases)
    for exp in (
        sm.iris_forest_string_labels(),
        sm.linear_regressor(),
        sm.mixed_classifier(),
        sm.imported_logreg(),
    ):
        store.publish(exp.meta.model_name, exp.onnx, exp.meta)
    sm.publish_broken(store, home)


def _home(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    home = tmp_path_factory.mktemp(name) / "home"
    home.mkdir()
    seed(home)
    return home


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    proc = ServerProcess(_home(tmp_path_factory, "oip"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server) -> Iterator[tc.InferenceServerClient]:
    c = tc.InferenceServerClient(server.target)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    ch = grpc.insecure_channel(server.target)
    yield service_pb2_grpc.GRPCInferenceServiceStub(ch)
    ch.close()


def infer_input(name: str, arr: np.ndarray, datatype: str) -> tc.InferInput:
    inp = tc.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    return inp


def raises(code: str, fn, *args, **kw) -> str:
    with pytest.raises(InferenceServerException) as err:
        fn(*args, **kw)
    assert err.value.status() == code, (err.value.status(), err.value.message())
    return err.value.message()


def mixed_inputs(df, rows=slice(None)) -> list[tc.InferInput]:
    """The mixed model's three [N, 1] inputs (FP32, BYTES, FP32), from its DataFrame."""
    part = df.iloc[rows]
    out = []
    for col in ("size", "colour", "weight"):
        if col == "colour":
            arr = part[col].to_numpy().astype(object).reshape(-1, 1)
            out.append(infer_input(col, arr, "BYTES"))
        else:
            arr = part[col].to_numpy().astype(np.float32).reshape(-1, 1)
            out.append(infer_input(col, arr, "FP32"))
    return out


# --- server and model metadata ------------------------------------------------------


def test_live_ready_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "highpeaks-ml"
    assert meta.version == highpeaks_ml.__version__
    assert list(meta.extensions) == ["model_repository", "statistics"]


def test_model_ready_by_version_and_alias(client):
    assert client.is_model_ready("iris")  # latest (3), eager-loaded
    assert client.is_model_ready("iris", "1")
    assert client.is_model_ready("iris", "production")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("iris", "9")
    assert not client.is_model_ready("broken")  # its load failed (sha256)


def test_model_metadata(client):
    meta = client.get_model_metadata("iris")
    assert meta.name == "iris"
    assert list(meta.versions) == ["1", "2", "3"]
    assert meta.platform == "onnx_onnxv1"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 4])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 3]),
    ]
    mixed = client.get_model_metadata("mixed", "1")
    assert [(t.name, t.datatype, list(t.shape)) for t in mixed.inputs] == [
        ("size", "FP32", [-1, 1]),
        ("colour", "BYTES", [-1, 1]),
        ("weight", "FP32", [-1, 1]),
    ]
    assert [(t.name, t.datatype) for t in mixed.outputs] == [
        ("label", "BYTES"),
        ("probabilities", "FP32"),
    ]
    prices = client.get_model_metadata("prices")
    assert [(t.name, t.datatype, list(t.shape)) for t in prices.outputs] == [
        ("variable", "FP32", [-1, 1])
    ]
    imported = client.get_model_metadata("imported")
    assert [t.name for t in imported.inputs] == ["float_input"]
    raises(NOT_FOUND, client.get_model_metadata, "nope")
    raises(NOT_FOUND, client.get_model_metadata, "iris", "7")
    raises(NOT_FOUND, client.get_model_metadata, "iris", "staging")


# --- inference ------------------------------------------------------------------------


def test_binary_infer_matches_sklearn_with_request_id(client):
    exp = sm.iris_logreg()
    X = exp.X
    res = client.infer("iris", [infer_input("input", X, "FP32")], "1", request_id="req-7")
    resp = res.get_response()
    assert (resp.model_name, resp.model_version, resp.id) == ("iris", "1", "req-7")
    assert len(resp.raw_output_contents) == 2  # raw in, raw out
    labels = res.as_numpy("label")
    assert labels.dtype == np.int64 and labels.shape == (len(X),)
    np.testing.assert_array_equal(labels, exp.estimator.predict(X))
    probs = res.as_numpy("probabilities")
    assert probs.shape == (len(X), 3)
    np.testing.assert_allclose(probs, exp.estimator.predict_proba(X), atol=1e-5)


def test_typed_infer_matches_sklearn(stub):
    exp = sm.iris_logreg()
    X = exp.X[:20]
    req = service_pb2.ModelInferRequest(model_name="iris", model_version="production", id="t")
    inp = req.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
    inp.contents.fp32_contents.extend(X.reshape(-1).tolist())
    resp = stub.ModelInfer(req, timeout=30)
    assert (resp.model_version, resp.id) == ("1", "t")
    assert not resp.raw_output_contents  # typed in, typed out
    by_name = {o.name: o for o in resp.outputs}
    label = by_name["label"]
    assert (label.datatype, list(label.shape)) == ("INT64", [20])
    np.testing.assert_array_equal(label.contents.int64_contents, exp.estimator.predict(X))
    probs = by_name["probabilities"]
    assert (probs.datatype, list(probs.shape)) == ("FP32", [20, 3])
    np.testing.assert_allclose(
        np.array(probs.contents.fp32_contents).reshape(20, 3),
        exp.estimator.predict_proba(X),
        atol=1e-5,
    )
    # binary_data_output asks for raw outputs of a typed request
    req.parameters["binary_data_output"].bool_param = True
    res = tc.InferResult(stub.ModelInfer(req, timeout=30))
    np.testing.assert_array_equal(res.as_numpy("label"), exp.estimator.predict(X))


def test_versions_by_number_alias_and_latest(client):
    X = sm.iris_logreg().X[::7]
    for version, c, answered in (("1", 1.0, "1"), ("3", 0.1, "3"), ("production", 1.0, "1")):
        res = client.infer("iris", [infer_input("input", X, "FP32")], version)
        assert res.get_response().model_version == answered
        np.testing.assert_allclose(
            res.as_numpy("probabilities"),
            sm.iris_logreg(c=c).estimator.predict_proba(X),
            atol=1e-5,
        )
    res = client.infer("iris", [infer_input("input", X, "FP32")])
    assert res.get_response().model_version == "3"


def test_requested_outputs_and_aliases(client):
    exp = sm.iris_logreg()
    X = exp.X[:10]
    inp = [infer_input("input", X, "FP32")]
    res = client.infer("iris", inp, "1", outputs=[tc.InferRequestedOutput("probabilities")])
    assert [o.name for o in res.get_response().outputs] == ["probabilities"]
    res = client.infer(
        "iris",
        inp,
        "1",
        outputs=[tc.InferRequestedOutput("predict_proba"), tc.InferRequestedOutput("predict")],
    )
    assert [o.name for o in res.get_response().outputs] == ["predict_proba", "predict"]
    np.testing.assert_array_equal(res.as_numpy("predict"), exp.estimator.predict(X))
    np.testing.assert_allclose(
        res.as_numpy("predict_proba"), exp.estimator.predict_proba(X), atol=1e-5
    )
    # a regressor's "predict" is its values
    reg = sm.linear_regressor()
    res = client.infer(
        "prices",
        [infer_input("input", reg.X, "FP32")],
        outputs=[tc.InferRequestedOutput("predict")],
    )
    np.testing.assert_allclose(
        res.as_numpy("predict").reshape(-1), reg.estimator.predict(reg.X), rtol=1e-5, atol=1e-4
    )
    msg = raises(INVALID, client.infer, "iris", inp, outputs=[tc.InferRequestedOutput("nope")])
    assert "'nope'" in msg and "label, probabilities" in msg
    msg = raises(INVALID, client.infer, "prices", [infer_input("input", reg.X, "FP32")],
                 outputs=[tc.InferRequestedOutput("predict_proba")])  # fmt: skip
    assert "has no output 'predict_proba'" in msg
    with_class_count = tc.InferRequestedOutput("probabilities", class_count=2)
    msg = raises(INVALID, client.infer, "iris", inp, outputs=[with_class_count])
    assert "classification" in msg


def test_string_labels_regressor_and_imported(client):
    exp = sm.iris_forest_string_labels()
    res = client.infer("flowers", [infer_input("input", exp.X, "FP32")])
    label = res.as_numpy("label")
    assert res.get_output("label").datatype == "BYTES"
    np.testing.assert_array_equal(label.astype(str), exp.estimator.predict(exp.X))

    reg = sm.linear_regressor()
    res = client.infer("prices", [infer_input("input", reg.X, "FP32")])
    values = res.as_numpy("variable")
    assert values.shape == (len(reg.X), 1)  # the ONNX shape, as ModelMetadata says
    np.testing.assert_allclose(values[:, 0], reg.estimator.predict(reg.X), rtol=1e-5, atol=1e-4)

    imp = sm.imported_logreg()
    res = client.infer("imported", [infer_input("float_input", imp.X, "FP32")])
    np.testing.assert_array_equal(res.as_numpy("label"), imp.estimator.predict(imp.X))
    # an INT64 tensor to a float input is cast, as in the native API
    res = client.infer("iris", [infer_input("input", np.array([[5, 3, 1, 0]]), "INT64")], "1")
    assert res.as_numpy("label").tolist() == [0]


def test_bytes_inputs_of_a_mixed_model_binary_and_typed(client, stub):
    exp = sm.mixed_classifier()
    df = exp.X
    res = client.infer("mixed", mixed_inputs(df))
    np.testing.assert_array_equal(res.as_numpy("label").astype(str), exp.estimator.predict(df))
    np.testing.assert_allclose(
        res.as_numpy("probabilities"), exp.estimator.predict_proba(df), atol=1e-5
    )

    part = df.iloc[:6]
    req = service_pb2.ModelInferRequest(model_name="mixed")
    for col in ("size", "colour", "weight"):
        inp = req.inputs.add(
            name=col, datatype="BYTES" if col == "colour" else "FP32", shape=[len(part), 1]
        )
        if col == "colour":
            inp.contents.bytes_contents.extend(v.encode() for v in part[col])
        else:
            inp.contents.fp32_contents.extend(part[col].astype(float).tolist())
    resp = stub.ModelInfer(req, timeout=30)
    label = next(o for o in resp.outputs if o.name == "label")
    got = [b.decode() for b in label.contents.bytes_contents]
    assert got == list(exp.estimator.predict(part))

    # a number where a string is expected, and a missing input
    bad = mixed_inputs(df, slice(0, 2))
    bad[1] = infer_input("colour", np.zeros((2, 1), dtype=np.float32), "FP32")
    msg = raises(INVALID, client.infer, "mixed", bad)
    assert "inputs['colour'].datatype: FP32 is not accepted by input 'colour'" in msg
    assert "takes BYTES" in msg
    msg = raises(INVALID, client.infer, "mixed", mixed_inputs(df, slice(0, 2))[:2])
    assert "missing input 'weight'" in msg
    rows = mixed_inputs(df, slice(0, 2))
    rows[2] = infer_input("weight", np.ones((3, 1), dtype=np.float32), "FP32")
    assert "every input needs the same number of rows" in raises(
        INVALID, client.infer, "mixed", rows
    )


# --- errors -------------------------------------------------------------------------------


def test_error_statuses(server, client, stub):
    X = sm.iris_logreg().X[:2]
    good = [infer_input("input", X, "FP32")]
    assert "model 'nope' not found" in raises(NOT_FOUND, client.infer, "nope", good)
    raises(NOT_FOUND, client.infer, "iris", good, "9")
    raises(NOT_FOUND, client.infer, "iris", good, "staging")
    assert "sha256" in raises(UNAVAILABLE, client.infer, "broken", good)

    # wrong datatype: strings to a numeric input; a datatype the server does not take
    strings = infer_input("input", np.array([["a"] * 4] * 2, dtype=object), "BYTES")
    msg = raises(INVALID, client.infer, "iris", [strings])
    assert "inputs['input'].datatype: BYTES is not accepted by input 'input'" in msg
    half = infer_input("input", X.astype(np.float16), "FP16")
    assert "'FP16' is not supported" in raises(INVALID, client.infer, "iris", [half])

    # shape vs data, and the feature count
    short = infer_input("input", X, "FP32")
    short.set_shape([3, 4])
    msg = raises(INVALID, client.infer, "iris", [short])
    assert "raw_input_contents[0]: 32 bytes but shape [3, 4] of FP32 needs 48 bytes" in msg
    wide = infer_input("input", np.zeros((2, 5), dtype=np.float32), "FP32")
    msg = raises(INVALID, client.infer, "iris", [wide])
    assert "inputs['input'].shape[1]: 5 features given but model 'iris' version 3 expects 4" in msg
    assert "unknown input 'x'" in raises(
        INVALID, client.infer, "iris", [infer_input("x", X, "FP32")]
    )
    nan = X.copy()
    nan[1, 2] = np.nan
    msg = raises(INVALID, client.infer, "iris", [infer_input("input", nan, "FP32")])
    assert "(row 1, feature 'petal_length')" in msg

    # typed contents and raw contents together; typed contents of the wrong type
    req = service_pb2.ModelInferRequest(model_name="iris")
    inp = req.inputs.add(name="input", datatype="FP32", shape=[2, 4])
    inp.contents.fp32_contents.extend(X.reshape(-1).tolist())
    req.raw_input_contents.append(X.tobytes())
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "either raw_input_contents or contents, not both" in err.value.details()
    req.ClearField("raw_input_contents")
    inp.contents.ClearField("fp32_contents")
    inp.contents.fp64_contents.extend(X.reshape(-1).tolist())
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "contents.fp64_contents: does not match datatype FP32" in err.value.details()

    # bytes that are not a ModelInferRequest at all
    with grpc.insecure_channel(server.target) as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\xff\xff", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ModelInferRequest" in err.value.details()


# --- ModelStreamInfer ------------------------------------------------------------------


def stream(
    target: str, send: Callable[[Any], None], headers: dict[str, str] | None = None
) -> list[tuple[Any, Any]]:
    """``send(client)`` on a fresh tritonclient stream: every (result, error) its
    callback received, in arrival order (one reader thread calls it)."""
    answers: list[tuple[Any, Any]] = []
    client = tc.InferenceServerClient(target)
    try:
        client.start_stream(lambda result, error: answers.append((result, error)), headers=headers)
        send(client)
        client.stop_stream()  # half-closes, then waits for every answer
    finally:
        client.close()
    return answers


def test_stream_infer_answers_in_order_as_model_infer_does(server, client):
    iris, reg = sm.iris_logreg(), sm.linear_regressor()
    calls = [
        ("iris", "1", iris.X[:1]),
        ("iris", "3", iris.X[10:25]),
        ("prices", "", reg.X),
        ("iris", "production", iris.X[50:52]),
        ("iris", "", iris.X[100:150]),
    ]

    def send(c) -> None:
        for i, (model, version, X) in enumerate(calls):
            c.async_stream_infer(
                model, [infer_input("input", X, "FP32")], version, request_id=f"s{i}"
            )

    answers = stream(server.target, send)
    assert len(answers) == len(calls)
    for i, ((model, version, X), (result, error)) in enumerate(zip(calls, answers, strict=True)):
        assert error is None, error
        resp = result.get_response()
        unary = client.infer(model, [infer_input("input", X, "FP32")], version)
        expected = unary.get_response()
        assert (resp.model_name, resp.model_version, resp.id) == (
            model,
            expected.model_version,
            f"s{i}",
        )
        assert [(o.name, o.datatype, list(o.shape)) for o in resp.outputs] == [
            (o.name, o.datatype, list(o.shape)) for o in expected.outputs
        ]
        assert len(resp.raw_output_contents) == len(resp.outputs)  # raw in, raw out
        for o in expected.outputs:
            np.testing.assert_allclose(result.as_numpy(o.name), unary.as_numpy(o.name), atol=1e-6)
        assert resp.parameters["triton_final_response"].bool_param  # as Triton's
    np.testing.assert_array_equal(
        answers[1][0].as_numpy("label"), sm.iris_logreg(c=0.1).estimator.predict(iris.X[10:25])
    )


def test_stream_errors_are_answered_in_stream_and_the_stream_goes_on(server, client):
    X = sm.iris_logreg().X[:3]
    short = infer_input("input", X, "FP32")
    short.set_shape([4, 4])
    calls: list[tuple[str, list[Any]]] = [
        ("iris", [infer_input("input", X, "FP32")]),
        ("nope", [infer_input("input", X, "FP32")]),  # unknown model
        ("iris", [infer_input("input", X[:, :3], "FP32")]),  # wrong shape: 3 features
        ("iris", [infer_input("input", X, "FP32")]),
        ("iris", [short]),  # shape vs bytes
        ("broken", [infer_input("input", X, "FP32")]),  # a version that cannot load
        ("iris", [infer_input("input", X, "FP32")]),
    ]

    def send(c) -> None:
        for i, (model, inputs) in enumerate(calls):
            c.async_stream_infer(model, inputs, request_id=f"e{i}")

    answers = stream(server.target, send)
    assert len(answers) == len(calls)
    expected_label = sm.iris_logreg(c=0.1).estimator.predict(X)
    for i, ((model, inputs), (result, error)) in enumerate(zip(calls, answers, strict=True)):
        if i in (0, 3, 6):
            assert error is None, (i, error)
            assert result.get_response().id == f"e{i}"
            np.testing.assert_array_equal(result.as_numpy("label"), expected_label)
            continue
        assert result is None and isinstance(error, InferenceServerException), (i, result)
        # the message ModelInfer gives as its status details for the same request
        with pytest.raises(InferenceServerException) as unary:
            client.infer(model, inputs)
        assert error.message() == unary.value.message(), i
    assert answers[1][1].message() == "model 'nope' not found"
    assert "inputs['input'].shape[1]: 3 features given" in answers[2][1].message()
    assert "raw_input_contents[0]: 48 bytes but shape [4, 4]" in answers[4][1].message()
    assert "sha256" in answers[5][1].message()


def test_stream_typed_with_the_servers_own_messages(server):
    """No tritonclient: the stream over a plain channel with the message classes of
    highpeaks_ml.api.oip_messages; typed contents in, typed out; more requests than
    the stream's window; the error's response names its request; then a client
    that walks away mid-stream."""
    exp = sm.iris_logreg()
    n = 150

    def request(i: int) -> Any:
        req = msgs.ModelInferRequest(
            model_name="nope" if i % 10 == 3 else "iris", model_version="1", id=str(i)
        )
        rows = exp.X[i % 100 : i % 100 + 2]
        tensor = req.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
        tensor.contents.fp32_contents.extend(rows.reshape(-1).tolist())
        return req

    with grpc.insecure_channel(server.target) as ch:
        call = ch.stream_stream(
            STREAM,
            request_serializer=msgs.ModelInferRequest.SerializeToString,
            response_deserializer=msgs.ModelStreamInferResponse.FromString,
        )
        answers = list(call((request(i) for i in range(n)), timeout=120))
        assert [a.infer_response.id for a in answers] == [str(i) for i in range(n)]
        for i, a in enumerate(answers):
            if i % 10 == 3:
                assert a.error_message == "model 'nope' not found"
                assert not a.infer_response.outputs
                continue
            assert a.error_message == "", (i, a.error_message)
            resp = a.infer_response
            assert resp.model_version == "1" and not resp.raw_output_contents
            label = next(o for o in resp.outputs if o.name == "label")
            expected = exp.estimator.predict(exp.X[i % 100 : i % 100 + 2])
            assert list(label.contents.int64_contents) == expected.tolist()

        # A client that stops reading and cancels with requests still coming.
        def forever() -> Iterator[Any]:
            i = 0
            while True:
                yield request(i * 10)  # all good
                i += 1

        walkaway = call(forever(), timeout=60)
        for _ in range(3):
            assert next(walkaway).error_message == ""
        walkaway.cancel()
        # the server serves on
        again = list(call(iter([request(0)]), timeout=30))
        assert [a.infer_response.id for a in again] == ["0"]


# --- repository and statistics -----------------------------------------------------


def _index(client) -> dict[tuple[str, str], tuple[str, str]]:
    idx = client.get_model_repository_index()
    return {(m.name, m.version): (m.state, m.reason) for m in idx.models}


def test_repository_index_states(client, stub):
    idx = _index(client)
    assert set(idx) >= {("iris", "1"), ("iris", "2"), ("iris", "3"), ("mixed", "1")}
    assert idx[("iris", "1")] == ("READY", "")  # aliased: eager-loaded
    assert idx[("iris", "2")] == ("UNAVAILABLE", "unloaded")  # neither latest nor aliased
    state, reason = idx[("broken", "1")]
    assert state == "UNAVAILABLE" and "sha256" in reason
    resp = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True), timeout=10)
    assert {m.state for m in resp.models} == {"READY"}
    assert {("iris", "2"), ("broken", "1")}.isdisjoint((m.name, m.version) for m in resp.models)
    with pytest.raises(grpc.RpcError) as err:
        stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(repository_name="x"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # a request for version 2 loads it
    client.infer("iris", [infer_input("input", sm.iris_logreg().X[:1], "FP32")], "2")
    assert client.is_model_ready("iris", "2")
    assert _index(client)[("iris", "2")] == ("READY", "")


def test_load_and_unload(client):
    X = sm.linear_regressor().X
    assert client.is_model_ready("prices")
    client.unload_model("prices")
    assert not client.is_model_ready("prices")
    assert _index(client)[("prices", "1")] == ("UNAVAILABLE", "unloaded")
    client.load_model("prices")
    assert client.is_model_ready("prices")
    # unloading only releases memory: the next request loads the version again
    client.unload_model("prices")
    client.infer("prices", [infer_input("input", X, "FP32")])
    assert client.is_model_ready("prices")
    raises(NOT_FOUND, client.load_model, "nope")
    raises(NOT_FOUND, client.unload_model, "nope")
    assert "sha256" in raises(UNAVAILABLE, client.load_model, "broken")
    msg = raises(INVALID, client.load_model, "prices", config='{"backend": "onnxruntime"}')
    assert "'config' is not supported" in msg


def _stats(client, name: str, version: str = "") -> list:
    return list(client.get_inference_statistics(name, version).model_stats)


def test_statistics_count_successes_failures_and_rows(client):
    X = sm.iris_forest_string_labels().X[:3]
    (before,) = _stats(client, "flowers", "1")
    for _ in range(2):
        client.infer("flowers", [infer_input("input", X, "FP32")])
    raises(INVALID, client.infer, "flowers", [infer_input("input", X[:, :3], "FP32")])
    (after,) = _stats(client, "flowers", "1")
    assert (after.name, after.version) == ("flowers", "1")
    s0, s1 = before.inference_stats, after.inference_stats
    assert s1.success.count - s0.success.count == 2
    assert s1.fail.count - s0.fail.count == 1
    assert after.inference_count - before.inference_count == 6  # rows
    assert after.execution_count - before.execution_count == 2
    assert s1.success.ns > s0.success.ns and s1.compute_infer.ns > s0.compute_infer.ns
    assert after.last_inference > 0
    assert {b.batch_size for b in after.batch_stats} >= {3}
    # every version of a model, every model, and unknown names
    assert [s.version for s in _stats(client, "iris")] == ["1", "2", "3"]
    everything = {(s.name, s.version) for s in _stats(client, "")}
    assert {("iris", "3"), ("mixed", "1"), ("flowers", "1")} <= everything
    raises(NOT_FOUND, client.get_inference_statistics, "nope")


# --- tools ------------------------------------------------------------------------------


def test_grpcurl_lists_the_service_and_infers_with_json(server):
    listing = subprocess.run(
        [grpcurl(), "-plaintext", server.target, "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listing.returncode == 0, listing.stderr
    services = set(listing.stdout.split())
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
    assert "highpeaks_ml.v1.PredictService" in services
    described = subprocess.run(
        [grpcurl(), "-plaintext", server.target, "describe", "inference.GRPCInferenceService"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert described.returncode == 0, described.stderr
    assert (
        "rpc ModelStreamInfer ( stream .inference.ModelInferRequest )"
        " returns ( stream .inference.ModelStreamInferResponse )"
    ) in described.stdout
    exp = sm.iris_logreg()
    request = {
        "model_name": "iris",
        "model_version": "1",
        "id": "from-grpcurl",
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [2, 4],
                "contents": {"fp32_contents": exp.X[:2].reshape(-1).tolist()},
            }
        ],
        "outputs": [{"name": "label"}],
    }
    out = subprocess.run(
        [
            grpcurl(),
            "-plaintext",
            "-d",
            json.dumps(request),
            server.target,
            "inference.GRPCInferenceService/ModelInfer",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    resp = json.loads(out.stdout)
    assert resp["id"] == "from-grpcurl" and resp["modelVersion"] == "1"
    (label,) = resp["outputs"]
    assert label["name"] == "label" and label["datatype"] == "INT64"
    got = [int(v) for v in label["contents"]["int64Contents"]]
    assert got == exp.estimator.predict(exp.X[:2]).tolist()


def test_the_documented_snippet_runs(server, capsys):
    """docs/oip.md's tritonclient example (the README's) works as written."""
    text = (ROOT / "docs" / "oip.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)
    assert '"127.0.0.1:50051"' in code
    code = code.replace('"127.0.0.1:50051"', repr(server.target))
    exec(compile(code, "docs/oip.md", "exec"), {})  # our own documentation
    out = capsys.readouterr().out
    assert "iris 1 READY" in out and "broken 1 UNAVAILABLE" in out
    assert "('input', 'FP32', [-1, 4])" in out
    expected = sm.iris_logreg().estimator.predict(
        np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    )
    assert out.rstrip().endswith(str(expected.tolist()))


def test_the_documented_stream_snippet_runs(server, capsys):
    """docs/oip.md's streaming example works as written and prints what it says."""
    text = (ROOT / "docs" / "oip.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (code,) = [b for b in blocks if "start_stream" in b]
    assert '"127.0.0.1:50051"' in code
    code = code.replace('"127.0.0.1:50051"', repr(server.target))
    exec(compile(code, "docs/oip.md", "exec"), {})  # our own documentation
    labels = sm.iris_logreg(c=0.1).estimator.predict(  # the latest iris here
        np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    )
    assert labels.tolist() == [0, 2]  # as the snippet's comment says
    assert capsys.readouterr().out.splitlines() == [
        "r0 [0 2]",
        "error: model 'nope' not found",
        "r2 [0 2]",
    ]


# --- batching, statistics across both front doors --------------------------------------


def test_statistics_show_batching_and_count_both_front_doors(tmp_path_factory):
    """Batches of exactly 4 rows (a delay far longer than the test): 8 concurrent
    one-row requests make 2 executions whatever the timing; a native Predict of 4
    rows (runs alone) adds one more."""
    proc = ServerProcess(
        _home(tmp_path_factory, "oip-batching"),
        "--batching",
        "--max-batch-size",
        "4",
        "--max-batch-delay-us",
        "60000000",
    )
    try:
        exp = sm.iris_logreg()
        X = exp.X[:8]
        results: list = [None] * 8
        client = tc.InferenceServerClient(proc.target)

        def call(i: int) -> None:
            try:
                results[i] = client.infer("iris", [infer_input("input", X[i : i + 1], "FP32")], "1")
            except Exception as exc:  # reported below
                results[i] = exc

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        labels = [r.as_numpy("label")[0] for r in results]
        assert labels == exp.estimator.predict(X).tolist()
        (stats,) = _stats(client, "iris", "1")
        assert stats.inference_stats.success.count == 8
        assert stats.inference_count == 8
        assert stats.execution_count == 2
        assert [(b.batch_size, b.compute_infer.count) for b in stats.batch_stats] == [(4, 2)]
        assert stats.inference_stats.queue.count == 8
        with Client(proc.target) as native:
            native.predict("iris", exp.X[:4], version=1)
        (stats,) = _stats(client, "iris", "1")
        assert (stats.inference_stats.success.count, stats.inference_count) == (9, 12)
        assert stats.execution_count == 3
        client.close()
    finally:
        proc.stop()


# --- auth and metrics ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[tuple[ServerProcess, int]]:
    tmp = tmp_path_factory.mktemp("oip-auth")
    port = sec.free_port()
    proc = ServerProcess(
        _home(tmp_path_factory, "oip-auth-home"),
        "--metrics-port",
        str(port),
        env=sec.hs256_env(tmp, SECRET),
    )
    yield proc, port
    proc.stop()


def _bearer(scopes: str) -> dict[str, str]:
    return {"authorization": f"Bearer {sec.token(SECRET, sec.claims(scopes), 'HS256')}"}


def _metric(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_auth_scopes_and_metrics(secured):
    proc, port = secured
    client = tc.InferenceServerClient(proc.target)
    try:
        X = sm.iris_logreg().X[:5]
        inp = [infer_input("input", X, "FP32")]
        raises("StatusCode.UNAUTHENTICATED", client.infer, "iris", inp)
        raises("StatusCode.UNAUTHENTICATED", client.is_server_ready)
        raises("StatusCode.UNAUTHENTICATED", client.get_model_repository_index)
        predict = _bearer("ml:predict")
        res = client.infer("iris", inp, headers=predict)
        np.testing.assert_array_equal(
            res.as_numpy("label"), sm.iris_logreg(c=0.1).estimator.predict(X)
        )
        assert client.is_server_ready(headers=predict)
        assert client.get_model_repository_index(headers=predict).models
        msg = raises("StatusCode.PERMISSION_DENIED", client.unload_model, "iris", headers=predict)
        assert "ml:admin" in msg
        client.unload_model("iris", headers=_bearer("ml:admin"))
        client.load_model("iris", headers=_bearer("ml:admin"))
        raises(
            "StatusCode.PERMISSION_DENIED", client.infer, "iris", inp, headers=_bearer("ml:admin")
        )

        method = "/inference.GRPCInferenceService/ModelInfer"
        assert _metric(port, "highpeaks_ml_rpcs_total", method=method, code="OK") == 1
        assert _metric(port, "highpeaks_ml_rpcs_total", method=method, code="UNAUTHENTICATED") == 1
        assert _metric(port, "highpeaks_ml_predicted_rows_total", model="iris", version="3") == 5
    finally:
        client.close()


def test_stream_needs_the_predict_scope_and_is_counted(secured):
    proc, port = secured
    X = sm.iris_logreg().X[:4]

    def send(c) -> None:
        # When the refusal came first, tritonclient refuses to send on the stream.
        with contextlib.suppress(InferenceServerException):
            c.async_stream_infer("iris", [infer_input("input", X, "FP32")], "1", request_id="a")

    for headers, code, fragment in (
        (None, "StatusCode.UNAUTHENTICATED", "missing credentials"),
        (_bearer("ml:admin"), "StatusCode.PERMISSION_DENIED", "ml:predict"),
    ):
        ((result, error),) = stream(proc.target, send, headers)
        assert result is None and error.status() == code, (error.status(), error.message())
        assert fragment in error.message()
    ((result, error),) = stream(proc.target, send, _bearer("ml:predict"))
    assert error is None and result.get_response().id == "a"
    np.testing.assert_array_equal(result.as_numpy("label"), sm.iris_logreg().estimator.predict(X))
    for code in ("OK", "UNAUTHENTICATED", "PERMISSION_DENIED"):
        assert _metric(port, "highpeaks_ml_rpcs_total", method=STREAM, code=code) == 1, code
