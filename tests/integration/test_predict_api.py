"""PredictService through the real server (subprocess) with real skl2onnx models.

Models are placed in the home with the real LocalModelStore before the server
starts (and one is imported through the registry API), then called through
real channels, the Python client, grpcurl and the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from highpeaks_ml.client import Client
from highpeaks_ml.registry.local import LocalModelStore
from highpeaks_ml.serving import providers
from highpeaks_ml.v1 import common_pb2, predict_pb2, predict_pb2_grpc
from tests.conftest import ROOT, ServerProcess, grpcurl
from tests.support import serving_models as sm

MAX_ROWS = 5000
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def seed(home: Path) -> None:
    """iris v1 (production) + v2, flowers, prices, mixed, a tampered 'broken' model."""
    store = LocalModelStore(home)
    store.start()
    iris, iris2 = sm.iris_logreg(), sm.iris_logreg(c=0.01)
    store.publish("iris", iris.onnx, iris.meta, ("production",))
    store.publish("iris", iris2.onnx, iris2.meta)
    for exp in (sm.iris_forest_string_labels(), sm.linear_regressor(), sm.mixed_classifier()):
        store.publish(exp.meta.model_name, exp.onnx, exp.meta)
    sm.publish_broken(store, home)


def _start(tmp_path_factory: pytest.TempPathFactory, *extra: str) -> ServerProcess:
    home = tmp_path_factory.mktemp("predict") / "home"
    home.mkdir()
    seed(home)
    return ServerProcess(home, "--max-predict-rows", str(MAX_ROWS), *extra)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = _start(tmp_path_factory)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory):
    # A long delay so that concurrent requests really share runs.
    proc = _start(tmp_path_factory, "--batching", "--max-batch-delay-us", "20000")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server):
    with Client(server.target) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server):
    ch = grpc.insecure_channel(server.target)
    yield predict_pb2_grpc.PredictServiceStub(ch)
    ch.close()


def call(stub, req, timeout=30):
    return stub.Predict(req, timeout=timeout)


def fails(stub, req, code, *needles):
    with pytest.raises(grpc.RpcError) as err:
        call(stub, req)
    assert err.value.code() == code, err.value.details()
    for n in needles:
        assert n in err.value.details(), err.value.details()
    return err.value.details()


def tensor_req(name="iris", **tensor) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest(tensor=common_pb2.Tensor(**tensor))
    req.model.name = name
    return req


# --- correctness ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["raw", "typed", "rows"])
def test_iris_matches_sklearn(client, how):
    exp = sm.iris_logreg()
    X = exp.X
    if how == "rows":
        res = client.predict("iris", sm.rows_of(X, sm.IRIS_FEATURES), version=1)
    else:
        res = client.predict("iris", X, version=1, raw=how == "raw")
    assert res.model_name == "iris" and res.model_version == 1
    assert res.execution_provider == "CPUExecutionProvider"
    np.testing.assert_array_equal(res.labels, exp.estimator.predict(X))
    np.testing.assert_allclose(res.probabilities, exp.estimator.predict_proba(X), atol=1e-5)
    assert res.class_labels == ["0", "1", "2"]
    assert res.probabilities.dtype == np.float32 and res.labels.dtype == np.int64


def test_latest_and_alias(client):
    assert client.predict("iris", sm.iris_logreg().X[:2]).model_version == 2
    assert client.predict("iris", sm.iris_logreg().X[:2], alias="production").model_version == 1


def test_string_labels_regressor_and_mixed(client):
    exp = sm.iris_forest_string_labels()
    res = client.predict("flowers", exp.X)
    np.testing.assert_array_equal(res.labels, exp.estimator.predict(exp.X))
    np.testing.assert_allclose(res.probabilities, exp.estimator.predict_proba(exp.X), atol=1e-5)
    assert res.class_labels == ["setosa", "versicolor", "virginica"]

    exp = sm.linear_regressor()
    res = client.predict("prices", exp.X, raw=False)
    assert res.labels is None and res.probabilities is None
    np.testing.assert_allclose(res.values, exp.estimator.predict(exp.X), rtol=1e-5, atol=1e-4)

    exp = sm.mixed_classifier()
    res = client.predict("mixed", exp.X)  # a DataFrame: named rows with strings
    np.testing.assert_array_equal(res.labels, exp.estimator.predict(exp.X))
    np.testing.assert_allclose(res.probabilities, exp.estimator.predict_proba(exp.X), atol=1e-5)
    assert res.class_labels == ["no", "yes"]


def test_output_subset_and_raw_output(stub):
    exp = sm.iris_logreg()
    req = predict_pb2.PredictRequest(
        model=common_pb2.ModelRef(name="iris", version=1),
        rows=predict_pb2.FeatureRows(),
        outputs=[predict_pb2.OUTPUT_KIND_LABELS],
        raw_output=True,
        id="abc",
    )
    for row in sm.rows_of(exp.X[:3], sm.IRIS_FEATURES):
        req.rows.rows.add().update(row)
    resp = call(stub, req)
    assert resp.id == "abc" and not resp.HasField("probabilities")
    assert resp.labels.raw_data and not resp.labels.int64_values
    assert np.frombuffer(resp.labels.raw_data, "<i8").tolist() == [0, 0, 0]


def test_imported_model_through_the_registry_api(client):
    exp = sm.imported_logreg()
    version = client.import_model(
        "imported-iris", exp.onnx, task="classification", class_labels=["a", "b", "c"]
    )
    res = client.predict("imported-iris", exp.X, version=version.version)
    np.testing.assert_array_equal(res.labels, exp.estimator.predict(exp.X))
    np.testing.assert_allclose(res.probabilities, exp.estimator.predict_proba(exp.X), atol=1e-5)
    assert res.class_labels == ["a", "b", "c"]
    rows = [{"float_input": [float(v) for v in r]} for r in exp.X[:4]]
    res = client.predict("imported-iris", rows)
    np.testing.assert_array_equal(res.labels, exp.estimator.predict(exp.X[:4]))


def test_zero_rows(client, stub):
    res = client.predict("iris", np.zeros((0, 4), np.float32))
    assert res.labels.shape == (0,) and res.probabilities.shape == (0, 3)
    resp = call(stub, tensor_req(data_type=common_pb2.DATA_TYPE_FLOAT32, shape=[0, 4]))
    assert list(resp.probabilities.shape) == [0, 3]
    res = client.predict("mixed", [])
    assert res.labels.shape == (0,)


# --- validation -----------------------------------------------------------------

F32 = common_pb2.DATA_TYPE_FLOAT32
BAD_TENSORS = {
    "wrong feature count": (
        {"data_type": F32, "shape": [1, 5], "float_values": [1.0] * 5},
        ["tensor.shape[1]", "5 features", "expects 4"],
    ),
    "wrong dtype": (
        {"data_type": common_pb2.DATA_TYPE_STRING, "shape": [1, 4], "string_values": ["a"] * 4},
        ["tensor.data_type", "STRING is not accepted"],
    ),
    "no dtype": ({"shape": [1, 4], "raw_data": b"\0" * 16}, ["tensor.data_type"]),
    "too few bytes": (
        {"data_type": F32, "shape": [2, 4], "raw_data": b"\0" * 31},
        ["tensor.raw_data", "31 bytes", "needs 32"],
    ),
    "too many bytes": (
        {"data_type": F32, "shape": [2, 4], "raw_data": b"\0" * 36},
        ["36 bytes", "needs 32"],
    ),
    "too few values": (
        {"data_type": F32, "shape": [2, 4], "float_values": [1.0] * 7},
        ["7 values", "8 elements"],
    ),
    "too many values": (
        {"data_type": F32, "shape": [1, 4], "float_values": [1.0] * 5},
        ["5 values", "4 elements"],
    ),
    "negative dim": (
        {"data_type": F32, "shape": [-1, 4], "raw_data": b""},
        ["tensor.shape[0]", "negative"],
    ),
    "overflowing dims": (
        {"data_type": F32, "shape": [2**31, 2**31], "raw_data": b"\0" * 16},
        ["tensor.shape[0]", "limit"],
    ),
    "huge second dim": (
        {"data_type": F32, "shape": [1, 2**62], "raw_data": b"\0" * 16},
        ["tensor.shape[1]", "expects 4"],
    ),
    "over the row limit": (
        {"data_type": F32, "shape": [MAX_ROWS + 1, 4], "raw_data": b"\0" * 16 * (MAX_ROWS + 1)},
        [f"{MAX_ROWS + 1} rows", f"limit of {MAX_ROWS}"],
    ),
    "NaN": (
        {"data_type": F32, "shape": [1, 4], "float_values": [1.0, float("nan"), 1.0, 1.0]},
        ["tensor[0, 1]", "sepal_width", "not a finite number"],
    ),
    "raw and typed": (
        {"data_type": F32, "shape": [1, 4], "float_values": [1.0] * 4, "raw_data": b"\0" * 16},
        ["either raw_data or float_values"],
    ),
    "typed field of another type": (
        {"data_type": F32, "shape": [1, 4], "double_values": [1.0] * 4},
        ["tensor.double_values", "does not match data_type DATA_TYPE_FLOAT32"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
def test_bad_tensors_are_invalid_argument(stub, case):
    tensor, needles = BAD_TENSORS[case]
    fails(stub, tensor_req(**tensor), INVALID, *needles)


def rows_req(rows, name="iris") -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest(rows=predict_pb2.FeatureRows())
    req.model.name = name
    for r in rows:
        req.rows.rows.add().update(r)
    return req


def test_bad_rows_are_invalid_argument(stub):
    good = sm.rows_of(np.ones((2, 4)), sm.IRIS_FEATURES)
    missing = [dict(good[0]), {k: v for k, v in good[1].items() if k != "petal_width"}]
    fails(stub, rows_req(missing), INVALID, "rows[1]", "missing feature 'petal_width'")
    renamed = [dict(good[0], colour=1.0)]
    fails(stub, rows_req(renamed), INVALID, "rows[0]", "unknown feature 'colour'")
    text = [dict(good[0], sepal_length="long")]
    fails(stub, rows_req(text), INVALID, "rows[0].sepal_length", "expects a number")
    cat = sm.rows_of(sm.mixed_classifier().X.iloc[:1])
    cat[0]["colour"] = 2.0
    fails(stub, rows_req(cat, "mixed"), INVALID, "rows[0].colour", "expects a string")
    fails(stub, rows_req([{}] * (MAX_ROWS + 1)), INVALID, f"limit of {MAX_ROWS}")


def test_other_invalid_requests(stub):
    fails(stub, predict_pb2.PredictRequest(model=common_pb2.ModelRef(name="iris")), INVALID)
    fails(stub, tensor_req("Bad Name!", data_type=F32, shape=[0, 4]), INVALID, "model name")
    req = tensor_req("prices", data_type=F32, shape=[0, 3])
    req.outputs.append(predict_pb2.OUTPUT_KIND_LABELS)
    fails(stub, req, INVALID, "no labels output")


def test_not_found(stub):
    fails(stub, tensor_req("nope", data_type=F32, shape=[0, 4]), NOT_FOUND, "'nope'")
    req = tensor_req(data_type=F32, shape=[0, 4])
    req.model.version = 42
    fails(stub, req, NOT_FOUND, "version 42")
    req = tensor_req(data_type=F32, shape=[0, 4])
    req.model.alias = "staging"
    fails(stub, req, NOT_FOUND, "alias 'staging'")


def test_tampered_version_is_refused_while_others_serve(client, stub, server):
    fails(
        stub,
        tensor_req("broken", data_type=F32, shape=[1, 4], float_values=[1.0] * 4),
        grpc.StatusCode.UNAVAILABLE,
        "sha256",
    )
    assert len(client.predict("iris", sm.iris_logreg().X[:3]).labels) == 3
    version = client.get_version("broken", 1)
    assert version.load_error and "sha256" in version.load_error


# --- streams --------------------------------------------------------------------


def test_predict_stream_answers_in_order_and_survives_errors(client):
    exp = sm.iris_logreg()
    reqs = [
        client.predict_request("iris", exp.X[:3], version=1, request_id="a"),
        client.predict_request("iris", np.zeros((1, 3), np.float32), request_id="b"),
        client.predict_request("nope", exp.X[:1], request_id="c"),
        client.predict_request(
            "iris", sm.rows_of(exp.X[3:5], sm.IRIS_FEATURES), version=1, request_id="d"
        ),
        client.predict_request("iris", np.zeros((0, 4), np.float32), request_id="e"),
    ]
    out = list(client.predict_stream(reqs))
    assert [o.id for o in out] == ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(out[0].labels, exp.estimator.predict(exp.X[:3]))
    assert out[1].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "expects 4" in out[1].message
    assert out[2].code == grpc.StatusCode.NOT_FOUND.value[0]
    np.testing.assert_array_equal(out[3].labels, exp.estimator.predict(exp.X[3:5]))
    assert out[4].labels.shape == (0,)


def test_many_stream_requests_pipelined(client):
    exp = sm.iris_logreg()
    reqs = [
        client.predict_request("iris", exp.X[i : i + 1], version=1, request_id=str(i))
        for i in range(150)
    ]
    out = list(client.predict_stream(reqs))
    assert [o.id for o in out] == [str(i) for i in range(150)]
    labels = np.concatenate([o.labels for o in out])
    np.testing.assert_array_equal(labels, exp.estimator.predict(exp.X))


# --- deadlines ------------------------------------------------------------------


def test_deadline_exceeded_stops_the_work(tmp_path_factory):
    home = tmp_path_factory.mktemp("deadline") / "home"
    home.mkdir()
    slow = sm.deep_forest()
    store = LocalModelStore(home)
    store.start()
    store.publish("slow", slow.onnx, slow.meta)
    # One onnxruntime thread: the work takes the same time on any number of cores.
    proc = ServerProcess(home, "--intra-op-threads", "1")
    try:
        # 4.8 MB that arrive in milliseconds, then ~2 s of onnxruntime work
        # (dev VM; at least ~1 s on fast cores): the deadline passes mid-run.
        X = np.resize(slow.X, (300_000, 4)).astype(np.float32)
        with Client(proc.target) as c:
            with pytest.raises(grpc.RpcError) as err:
                c.predict("slow", X, timeout=0.6)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # The server stopped that inference rather than finishing it.
            end = time.monotonic() + 30
            while "prediction stopped" not in proc.output() and time.monotonic() < end:
                time.sleep(0.05)
            assert "prediction stopped" in proc.output()
            assert len(c.predict("slow", X[:10]).labels) == 10
    finally:
        proc.stop()


# --- batching -------------------------------------------------------------------


def test_batching_on_and_off_agree_and_bad_requests_stay_isolated(server, batching_server):
    exp = sm.iris_logreg()
    chunks = [exp.X[i : i + 1 + i % 4] for i in range(0, 140, 5)]
    bad = np.zeros((1, 3), np.float32)
    results: dict[int, object] = {}

    def worker(i: int, c: Client) -> None:
        x = bad if i % 4 == 3 else chunks[i]
        try:
            results[i] = c.predict("iris", x, version=1)
        except grpc.RpcError as exc:
            results[i] = exc

    with Client(batching_server.target) as c_on, Client(server.target) as c_off:
        threads = [threading.Thread(target=worker, args=(i, c_on)) for i in range(len(chunks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, x in enumerate(chunks):
            got = results[i]
            if i % 4 == 3:
                assert isinstance(got, grpc.RpcError)
                assert got.code() == INVALID and "expects 4" in got.details()
                continue
            assert not isinstance(got, grpc.RpcError), got
            off = c_off.predict("iris", x, version=1)
            assert len(got.labels) == len(x)
            np.testing.assert_array_equal(got.labels, off.labels)
            np.testing.assert_array_equal(got.labels, exp.estimator.predict(x))
            # One row alone vs inside a merged run: onnxruntime may pick a
            # different matrix kernel, so the last float32 bits may differ.
            np.testing.assert_allclose(got.probabilities, off.probabilities, rtol=0, atol=2e-6)
    assert "INTERNAL" not in batching_server.output()


# --- hot reload -----------------------------------------------------------------


def test_alias_move_and_new_version_while_requests_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("reload") / "home"
    home.mkdir()
    v1, v2 = sm.iris_logreg(), sm.iris_logreg(c=0.01)
    store = LocalModelStore(home)
    store.start()
    store.publish("iris", v1.onnx, v1.meta, ("production",))
    proc = ServerProcess(home)
    X = v1.X[::10]
    want = {1: v1.estimator.predict_proba(X), 2: v2.estimator.predict_proba(X)}
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def loop(c: Client) -> None:
        while not stop.is_set():
            try:
                res = c.predict("iris", X, alias="production")
                # A complete version answered: its probabilities, all rows.
                np.testing.assert_allclose(res.probabilities, want[res.model_version], atol=1e-5)
                seen.append(res.model_version)
            except BaseException as exc:
                errors.append(exc)
                return

    try:
        with Client(proc.target) as c:
            t = threading.Thread(target=loop, args=(c,))
            t.start()
            while len(seen) < 20 and not errors:
                time.sleep(0.01)
            new = c.import_model("iris", v2.onnx, task="classification")  # becomes latest
            assert new.version == 2
            end = time.monotonic() + 30
            while c.predict("iris", X[:1]).model_version != 2 and time.monotonic() < end:
                time.sleep(0.05)
            assert c.predict("iris", X[:1]).model_version == 2
            c.set_alias("iris", "production", 2)
            n = len(seen)
            while (len(seen) < n + 20 or seen[-1] != 2) and time.monotonic() < end and not errors:
                time.sleep(0.01)
            stop.set()
            t.join(30)
    finally:
        stop.set()
        proc.stop()
    assert not errors, errors[0]
    assert seen[0] == 1 and seen[-1] == 2
    # Switched once: never back to 1 after the first answer from 2.
    first2 = seen.index(2)
    assert set(seen[first2:]) == {2}


# --- start-up: providers --------------------------------------------------------


def test_auto_device_logs_one_clear_provider_line(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    proc = ServerProcess(home, "--device", "auto")
    try:
        out = proc.output()
    finally:
        proc.stop()
    lines = [line for line in out.splitlines() if "execution provider" in line]
    assert len(lines) == 1, out
    assert "device=auto" in lines[0]
    assert "[E:onnxruntime" not in out and "[W:onnxruntime" not in out and "libcublas" not in out
    if not providers._driver_present()[0]:
        assert "CPUExecutionProvider" in lines[0] and "CUDA not usable" in lines[0]


def test_cuda_device_fails_start_up_clearly(tmp_path):
    if providers._driver_present()[0]:
        pytest.skip("this machine has an NVIDIA driver; device=cuda may well work")
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "highpeaks_ml.cli",
            "serve",
            "--port",
            "0",
            "--home",
            str(home),
            "--device",
            "cuda",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "device=cuda but CUDA is not usable" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


# --- grpcurl and the CLI --------------------------------------------------------


def test_grpcurl_json_predict(server):
    exp = sm.iris_logreg()
    body = {
        "model": {"name": "iris", "alias": "production"},
        "tensor": {
            "dataType": "DATA_TYPE_FLOAT32",
            "shape": [2, 4],
            "floatValues": [float(v) for v in exp.X[[0, 100]].ravel()],
        },
    }
    out = subprocess.run(
        [
            grpcurl(),
            "-plaintext",
            "-d",
            json.dumps(body),
            server.target,
            "highpeaks_ml.v1.PredictService/Predict",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    resp = json.loads(out.stdout)
    # grpcurl prints the proto field names.
    assert resp["model_name"] == "iris" and resp["model_version"] == 1
    want = exp.estimator.predict(exp.X[[0, 100]])
    assert [int(v) for v in resp["labels"]["int64_values"]] == want.tolist()
    probs = np.array(resp["probabilities"]["float_values"]).reshape(2, 3)
    np.testing.assert_allclose(probs, exp.estimator.predict_proba(exp.X[[0, 100]]), atol=1e-5)
    assert resp["class_labels"] == ["0", "1", "2"]
    assert resp["execution_provider"] == "CPUExecutionProvider"


def _cli(target: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "highpeaks_ml.cli", "predict", "--target", target, *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        cwd=ROOT,
    )


def test_cli_predict(server, tmp_path):
    exp = sm.iris_logreg()
    X = exp.X[:6]
    header = ",".join(sm.IRIS_FEATURES)
    csv_file = tmp_path / "some.csv"
    csv_file.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in X) + "\n")
    out = _cli(server.target, "--model", "iris", "--alias", "production", "--input", str(csv_file))
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout)
    assert [r["label"] for r in records] == exp.estimator.predict(X).tolist()
    probs = np.array([[r["probabilities"][c] for c in ("0", "1", "2")] for r in records])
    np.testing.assert_allclose(probs, exp.estimator.predict_proba(X), atol=1e-5)

    plain = "\n".join(",".join(map(str, r)) for r in X) + "\n"
    out = _cli(server.target, "--model", "iris", "--version", "1", "--input", "-", stdin=plain)
    assert out.returncode == 0, out.stderr
    assert [r["label"] for r in json.loads(out.stdout)] == exp.estimator.predict(X).tolist()

    out = _cli(
        server.target,
        "--model",
        "prices",
        "--input",
        "-",
        "--output",
        "csv",
        stdin="a,b,c\n1,2,3\n",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "value"
    want = sm.linear_regressor().estimator.predict(np.array([[1.0, 2.0, 3.0]]))[0]
    assert abs(float(lines[1]) - want) < 1e-4

    out = _cli(server.target, "--model", "iris", "--input", "-", stdin="x,y\n1,2\n")
    assert out.returncode == 1
    assert "INVALID_ARGUMENT" in out.stderr and "unknown feature 'x'" in out.stderr
