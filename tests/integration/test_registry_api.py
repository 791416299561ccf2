"""ModelRegistryService through the real server subprocess, the client and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from highpeaks_ml.client import Client
from highpeaks_ml.registry.local import LocalModelStore
from highpeaks_ml.v1 import common_pb2, registry_pb2, registry_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


# --- real models -----------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real skl2onnx exports of tiny trained models, as files."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_diabetes, load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LinearRegression, LogisticRegression

    out = tmp_path_factory.mktemp("onnx")
    x, y = load_iris(return_X_y=True)
    x = x.astype("float32")
    logreg = LogisticRegression(max_iter=500).fit(x, y)
    forest = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0).fit(x, y)
    xd, yd = load_diabetes(return_X_y=True)
    linreg = LinearRegression().fit(xd.astype("float32"), yd)
    models = {
        "logreg": to_onnx(logreg, x[:1], options={id(logreg): {"zipmap": False}}),
        "forest": to_onnx(forest, x[:1], options={id(forest): {"zipmap": False}}),
        "linreg": to_onnx(linreg, xd[:1].astype("float32")),
        # ZipMap left on: a sequence-of-maps output the platform cannot serve.
        "zipmap": to_onnx(logreg, x[:1]),
    }
    paths = {}
    for name, model in models.items():
        paths[name] = out / f"{name}.onnx"
        paths[name].write_bytes(model.SerializeToString())
    return paths


def _stub(channel: grpc.Channel) -> registry_pb2_grpc.ModelRegistryServiceStub:
    return registry_pb2_grpc.ModelRegistryServiceStub(channel)


def _import_requests(
    info: registry_pb2.ImportModelInfo | None, data: bytes, chunk: int = 200
) -> Iterator[registry_pb2.ImportModelRequest]:
    if info is not None:
        yield registry_pb2.ImportModelRequest(info=info)
    for i in range(0, len(data), chunk):
        yield registry_pb2.ImportModelRequest(chunk=data[i : i + chunk])


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def _tree(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


def _ref(name: str, **kw) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=name, **kw)


def _download(stub, ref: common_pb2.ModelRef) -> tuple[registry_pb2.ModelVersion, bytes]:
    msgs = list(stub.DownloadModelVersion(registry_pb2.DownloadModelVersionRequest(model=ref)))
    assert msgs[0].WhichOneof("part") == "version"
    assert all(m.WhichOneof("part") == "chunk" for m in msgs[1:])
    return msgs[0].version, b"".join(m.chunk for m in msgs[1:])


# --- the API -----------------------------------------------------------------------


def test_import_inspect_alias_delete_download(channel, onnx_models, home):
    stub = _stub(channel)
    logreg = onnx_models["logreg"].read_bytes()
    forest = onnx_models["forest"].read_bytes()
    info = registry_pb2.ImportModelInfo(
        model_name="iris",
        task=common_pb2.TASK_CLASSIFICATION,
        class_labels=["setosa", "versicolor", "virginica"],
        aliases=["production"],
        description="logistic regression",
        sha256=hashlib.sha256(logreg).hexdigest(),
    )
    v1 = stub.ImportModel(_import_requests(info, logreg))
    assert (v1.model_name, v1.version) == ("iris", 1)
    assert v1.source == registry_pb2.VERSION_SOURCE_IMPORTED
    assert v1.task == common_pb2.TASK_CLASSIFICATION
    assert v1.sha256 == hashlib.sha256(logreg).hexdigest() and v1.size_bytes == len(logreg)
    assert list(v1.aliases) == ["production"]
    assert list(v1.class_labels) == ["setosa", "versicolor", "virginica"]
    assert [(t.name, t.data_type, list(t.shape)) for t in v1.inputs] == [
        ("X", common_pb2.DATA_TYPE_FLOAT32, [-1, 4])
    ]
    assert [(t.name, t.data_type, list(t.shape)) for t in v1.outputs] == [
        ("label", common_pb2.DATA_TYPE_INT64, [-1]),
        ("probabilities", common_pb2.DATA_TYPE_FLOAT32, [-1, 3]),
    ]
    assert v1.load_state != registry_pb2.LOAD_STATE_UNSPECIFIED
    v2 = stub.ImportModel(
        _import_requests(registry_pb2.ImportModelInfo(model_name="iris"), forest, 4096)
    )
    assert v2.version == 2 and v2.task == common_pb2.TASK_UNSPECIFIED

    (listed,) = stub.ListModels(registry_pb2.ListModelsRequest()).models
    assert (listed.name, listed.latest_version, dict(listed.aliases)) == (
        "iris",
        2,
        {"production": 1},
    )
    assert len(listed.versions) == 0
    model = stub.GetModel(registry_pb2.GetModelRequest(name="iris"))
    assert [v.version for v in model.versions] == [1, 2]
    assert [list(v.aliases) for v in model.versions] == [["production"], []]
    assert model.created_at.ToNanoseconds() <= model.updated_at.ToNanoseconds()

    def get(**kw):
        return stub.GetModelVersion(registry_pb2.GetModelVersionRequest(model=_ref("iris", **kw)))

    assert get().version == 2
    assert get(version=1).version == 1
    assert get(alias="production").version == 1
    assert get(alias="production").description == "logistic regression"

    # Aliases: set, move, delete.
    set_alias = stub.SetAlias
    m = set_alias(registry_pb2.SetAliasRequest(model_name="iris", alias="staging", version=1))
    assert dict(m.aliases) == {"production": 1, "staging": 1}
    m = set_alias(registry_pb2.SetAliasRequest(model_name="iris", alias="staging", version=2))
    assert dict(m.aliases) == {"production": 1, "staging": 2}
    assert get(alias="staging").version == 2
    m = stub.DeleteAlias(registry_pb2.DeleteAliasRequest(model_name="iris", alias="staging"))
    assert dict(m.aliases) == {"production": 1}
    req = registry_pb2.DeleteAliasRequest(model_name="iris", alias="staging")
    assert _code(lambda: stub.DeleteAlias(req)) == grpc.StatusCode.NOT_FOUND
    req = registry_pb2.SetAliasRequest(model_name="iris", alias="latest", version=1)
    assert _code(lambda: set_alias(req)) == grpc.StatusCode.INVALID_ARGUMENT

    # Downloads: bytes equal to the file, sha256 as stored.
    meta, data = _download(stub, _ref("iris", alias="production"))
    assert meta.version == 1 and data == logreg
    assert hashlib.sha256(data).hexdigest() == meta.sha256
    meta, data = _download(stub, _ref("iris"))
    assert meta.version == 2 and data == forest

    # Deleting an aliased version needs force, which removes the alias too.
    req = registry_pb2.DeleteModelVersionRequest(model_name="iris", version=1)
    err = _error(lambda: stub.DeleteModelVersion(req))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "production" in err.details()
    assert get(version=1).version == 1
    req = registry_pb2.DeleteModelVersionRequest(model_name="iris", version=1, force=True)
    resp = stub.DeleteModelVersion(req)
    assert list(resp.removed_aliases) == ["production"]
    assert [v.version for v in resp.model.versions] == []  # Model without versions listed
    assert resp.model.latest_version == 2 and dict(resp.model.aliases) == {}
    assert _code(lambda: get(version=1)) == grpc.StatusCode.NOT_FOUND
    # Delete the latest too, then import: numbers are never reused.
    resp = stub.DeleteModelVersion(
        registry_pb2.DeleteModelVersionRequest(model_name="iris", version=2)
    )
    assert resp.model.name == ""  # no version left
    assert _code(lambda: get()) == grpc.StatusCode.NOT_FOUND
    v3 = stub.ImportModel(_import_requests(registry_pb2.ImportModelInfo(model_name="iris"), logreg))
    assert v3.version == 3
    assert sorted(os.listdir(home / "models/iris/versions")) == ["3"]


def test_unknown_things_are_not_found(channel, onnx_models):
    stub = _stub(channel)
    data = onnx_models["linreg"].read_bytes()
    stub.ImportModel(_import_requests(registry_pb2.ImportModelInfo(model_name="diabetes"), data))
    calls = {
        "model": lambda: stub.GetModel(registry_pb2.GetModelRequest(name="nope")),
        "latest": lambda: stub.GetModelVersion(
            registry_pb2.GetModelVersionRequest(model=_ref("nope"))
        ),
        "version": lambda: stub.GetModelVersion(
            registry_pb2.GetModelVersionRequest(model=_ref("diabetes", version=9))
        ),
        "alias": lambda: stub.GetModelVersion(
            registry_pb2.GetModelVersionRequest(model=_ref("diabetes", alias="prod"))
        ),
        "download": lambda: list(
            stub.DownloadModelVersion(
                registry_pb2.DownloadModelVersionRequest(model=_ref("diabetes", version=9))
            )
        ),
        "set alias": lambda: stub.SetAlias(
            registry_pb2.SetAliasRequest(model_name="diabetes", alias="prod", version=9)
        ),
        "delete": lambda: stub.DeleteModelVersion(
            registry_pb2.DeleteModelVersionRequest(model_name="nope", version=1)
        ),
    }
    for what, call in calls.items():
        err = _error(call)
        assert err.code() == grpc.StatusCode.NOT_FOUND, what
        assert "nope" in err.details() or "9" in err.details() or "prod" in err.details()


HOSTILE = ["../x", "/abs", "a/b", "x\x00y", "x" * 1024, ".hidden", "UPPER", ""]


def test_hostile_names_are_refused_and_touch_nothing(channel, onnx_models, home):
    stub = _stub(channel)
    data = onnx_models["logreg"].read_bytes()
    stub.ImportModel(_import_requests(registry_pb2.ImportModelInfo(model_name="iris"), data))
    before = _tree(home)
    for bad in HOSTILE:
        calls = [
            lambda bad=bad: stub.GetModel(registry_pb2.GetModelRequest(name=bad)),
            lambda bad=bad: stub.GetModelVersion(
                registry_pb2.GetModelVersionRequest(model=_ref(bad))
            ),
            lambda bad=bad: stub.GetModelVersion(
                registry_pb2.GetModelVersionRequest(model=_ref("iris", alias=bad))
            ),
            lambda bad=bad: stub.SetAlias(
                registry_pb2.SetAliasRequest(model_name=bad, alias="prod", version=1)
            ),
            lambda bad=bad: stub.SetAlias(
                registry_pb2.SetAliasRequest(model_name="iris", alias=bad, version=1)
            ),
            lambda bad=bad: stub.DeleteAlias(
                registry_pb2.DeleteAliasRequest(model_name="iris", alias=bad)
            ),
            lambda bad=bad: stub.DeleteModelVersion(
                registry_pb2.DeleteModelVersionRequest(model_name=bad, version=1)
            ),
            lambda bad=bad: stub.ImportModel(
                _import_requests(registry_pb2.ImportModelInfo(model_name=bad), data)
            ),
            lambda bad=bad: stub.ImportModel(
                _import_requests(
                    registry_pb2.ImportModelInfo(model_name="iris", aliases=[bad]), data
                )
            ),
            lambda bad=bad: list(
                stub.DownloadModelVersion(registry_pb2.DownloadModelVersionRequest(model=_ref(bad)))
            ),
        ]
        for i, call in enumerate(calls):
            err = _error(call)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (bad, i)
            assert len(err.details()) < 300 and str(home) not in err.details()
    assert _tree(home) == before


def test_bad_imports_are_refused(channel, onnx_models, home):
    stub = _stub(channel)
    logreg = onnx_models["logreg"].read_bytes()
    info = registry_pb2.ImportModelInfo(model_name="iris")
    before = _tree(home)
    cases = {
        "garbage": _import_requests(info, b"this is not an onnx model \x00\x01\x02" * 10),
        "truncated": _import_requests(info, logreg[: len(logreg) // 2]),
        "zipmap": _import_requests(info, onnx_models["zipmap"].read_bytes()),
        "no info first": _import_requests(None, logreg),
        "info twice": iter(
            [
                registry_pb2.ImportModelRequest(info=info),
                registry_pb2.ImportModelRequest(chunk=logreg[:10]),
                registry_pb2.ImportModelRequest(info=info),
            ]
        ),
        "empty upload": _import_requests(info, b""),
        "no messages": iter([]),
        "sha mismatch": _import_requests(
            registry_pb2.ImportModelInfo(model_name="iris", sha256="0" * 64), logreg
        ),
        "bad sha": _import_requests(
            registry_pb2.ImportModelInfo(model_name="iris", sha256="xyz"), logreg
        ),
        "labels vs columns": _import_requests(
            registry_pb2.ImportModelInfo(model_name="iris", class_labels=["a", "b"]), logreg
        ),
    }
    for what, requests in cases.items():
        err = _error(lambda requests=requests: stub.ImportModel(requests))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, err.details())
        assert str(home) not in err.details()
    assert (
        "ZipMap"
        in _error(
            lambda: stub.ImportModel(_import_requests(info, onnx_models["zipmap"].read_bytes()))
        ).details()
    )
    # Nothing was published, nothing was left behind.
    assert _tree(home) == before
    assert stub.ListModels(registry_pb2.ListModelsRequest()).models == []


def test_import_over_the_size_limit(server_process, onnx_models, home):
    server = server_process("--max-model-bytes", "4096")
    with grpc.insecure_channel(server.target) as ch:
        stub = _stub(ch)
        forest = onnx_models["forest"].read_bytes()
        assert len(forest) > 4096
        info = registry_pb2.ImportModelInfo(model_name="iris")
        err = _error(lambda: stub.ImportModel(_import_requests(info, forest, 1024)))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "4096" in err.details()
        assert os.listdir(home / "tmp") == []
        # A model under the limit still goes in.
        logreg = onnx_models["logreg"].read_bytes()
        assert stub.ImportModel(_import_requests(info, logreg)).version == 1


def test_tampered_version_is_refused_alone(channel, onnx_models, home):
    stub = _stub(channel)
    data = onnx_models["logreg"].read_bytes()
    for _ in range(2):
        stub.ImportModel(_import_requests(registry_pb2.ImportModelInfo(model_name="iris"), data))
    path = home / "models/iris/versions/1/model.onnx"
    tampered = bytearray(data)
    tampered[-1] ^= 0xFF
    path.write_bytes(bytes(tampered))
    # Metadata still answers...
    req = registry_pb2.GetModelVersionRequest(model=_ref("iris", version=1))
    assert stub.GetModelVersion(req).version == 1
    # ...the bytes are refused, naming the version and not the path...
    err = _error(lambda: _download(stub, _ref("iris", version=1)))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "version 1" in err.details() and "sha256" in err.details()
    assert str(home) not in err.details() and "model.onnx" not in err.details()
    # ...while the other version keeps working.
    meta, got = _download(stub, _ref("iris", version=2))
    assert got == data and meta.sha256 == hashlib.sha256(data).hexdigest()


def test_python_client(server, onnx_models):
    with Client(server.target) as client:
        v = client.import_model(
            "iris",
            onnx_models["logreg"],
            task="classification",
            class_labels=["a", "b", "c"],
            aliases=["production"],
        )
        assert v.version == 1
        assert client.get_version("iris", alias="production").version == 1
        assert client.set_alias("iris", "staging", 1).aliases["staging"] == 1
        assert dict(client.delete_alias("iris", "staging").aliases) == {"production": 1}
        assert [m.name for m in client.list_models()] == ["iris"]
        assert client.download_model("iris") == onnx_models["logreg"].read_bytes()
        assert client.get_model("iris").latest_version == 1
        with pytest.raises(grpc.RpcError) as err:
            client.delete_version("iris", 1)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert list(client.delete_version("iris", 1, force=True).removed_aliases) == ["production"]


# --- the CLI -----------------------------------------------------------------------


def _cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "highpeaks_ml.cli", "models", *args, "--target", target],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_cli_models_commands(server, onnx_models, tmp_path):
    t = server.target
    src = onnx_models["logreg"]
    r = _cli(t, "import", "iris", str(src), "--task", "classification", "--alias", "production")
    assert r.returncode == 0, r.stderr
    assert "iris version 1" in r.stdout
    r = _cli(t, "import", "iris", str(onnx_models["forest"]))
    assert r.returncode == 0, r.stderr

    r = _cli(t, "list")
    assert r.returncode == 0 and "iris" in r.stdout and "production -> 1" in r.stdout
    r = _cli(t, "show", "iris")
    assert r.returncode == 0, r.stderr
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    for text in ("version 1", "version 2", sha, "production", "load state", "X float32 [?, 4]"):
        assert text in r.stdout
    r = _cli(t, "show", "iris", "--alias", "production", "--json")
    assert r.returncode == 0
    shown = json.loads(r.stdout)
    assert shown["version"] == 1 and shown["sha256"] == sha

    r = _cli(t, "alias", "iris", "staging", "2")
    assert r.returncode == 0 and "staging -> version 2" in r.stdout
    r = _cli(t, "alias", "iris", "staging", "--delete")
    assert r.returncode == 0

    out = tmp_path / "exported.onnx"
    r = _cli(t, "export", "iris", "--alias", "production", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == src.read_bytes()

    r = _cli(t, "delete", "iris", "1")
    assert r.returncode == 1
    assert r.stderr.startswith("error: FAILED_PRECONDITION: ")
    r = _cli(t, "show", "nope")
    assert r.returncode == 1 and r.stderr.startswith("error: NOT_FOUND: ")
    r = _cli(t, "delete", "iris", "1", "--force")
    assert r.returncode == 0 and "production" in r.stdout


# --- crash safety ------------------------------------------------------------------

_CRASHING_PUBLISHER = """
import sys, time
from pathlib import Path
from highpeaks_ml.registry.base import VersionMeta
from highpeaks_ml.registry.local import LocalModelStore

class Paused(LocalModelStore):
    def _checkpoint(self, point):
        if point == sys.argv[2]:
            print("paused", flush=True)
            time.sleep(600)

store = Paused(Path(sys.argv[1]))
store.publish_file("iris", Path(sys.argv[3]), VersionMeta("", 0, 0.0, "imported", ""))
"""


@pytest.mark.parametrize("point", ["model-written", "staged"])
def test_kill_mid_publish_leaves_no_partial_version(
    server_process, onnx_models, home, tmp_path, point
):
    store = LocalModelStore(home)
    store.start()
    store.publish("iris", onnx_models["logreg"].read_bytes(), _meta())
    src = tmp_path / "incoming.onnx"
    src.write_bytes(onnx_models["forest"].read_bytes())
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_PUBLISHER, str(home), point, str(src)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "paused"
        # The publisher is between staging and rename: its files exist, but
        # no version 2 is visible, to this store or any other.
        assert any(n.startswith("registry-") for n in os.listdir(home / "tmp"))
        assert [m.version for m in LocalModelStore(home).get_model("iris").versions] == [1]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert sorted(os.listdir(home / "models/iris/versions")) == ["1"]
    # The server's start-up recovery removes the leftovers; version 1 serves,
    # and the next import gets a number the crashed publish never took.
    server = server_process()
    assert os.listdir(home / "tmp") == []
    with grpc.insecure_channel(server.target) as ch:
        stub = _stub(ch)
        (model,) = stub.ListModels(registry_pb2.ListModelsRequest()).models
        assert model.latest_version == 1
        _meta_v1, data = _download(stub, _ref("iris"))
        assert data == onnx_models["logreg"].read_bytes()
        info = registry_pb2.ImportModelInfo(model_name="iris")
        v = stub.ImportModel(_import_requests(info, onnx_models["forest"].read_bytes(), 4096))
        assert v.version == 2


def _meta():
    from highpeaks_ml.registry.base import VersionMeta

    return VersionMeta("", 0, 0.0, "imported", "")


def test_recover_in_process_after_kill(onnx_models, home, tmp_path):
    """The same crash, cleaned by recover() directly (no server)."""
    src = tmp_path / "incoming.onnx"
    src.write_bytes(onnx_models["logreg"].read_bytes())
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_PUBLISHER, str(home), "staged", str(src)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "paused"
    store = LocalModelStore(home)
    store.recover()  # the publisher is alive: its staging area must survive
    assert any(n.startswith("registry-") for n in os.listdir(home / "tmp"))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    store.recover()
    assert os.listdir(home / "tmp") == []
    with pytest.raises(Exception, match="not found"):
        store.get_model("iris")
