"""The model store's contract on both backends: versions, aliases, integrity, races, recovery.

Every test runs against the local directory (``LocalModelStore`` on a temporary
directory) and against S3 (``S3ModelStore`` on a real SeaweedFS server, the
session's ``s3_server``, each test under its own prefix); the few that look at
one backend's layout say so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from highpeaks_ml.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from highpeaks_ml.registry import local as local_mod
from highpeaks_ml.registry.base import TensorSpec, VersionMeta
from highpeaks_ml.registry.local import LocalModelStore
from highpeaks_ml.registry.s3 import S3Location, S3ModelStore

ROOT = Path(__file__).resolve().parents[2]


def _meta(**kw) -> VersionMeta:
    base = {
        "model_name": "",
        "version": 0,
        "created_at": 0.0,
        "source": "trained",
        "task": "classification",
        "algorithm": "logistic_regression",
        "metrics": {"accuracy": 0.9},
        "class_labels": ("a", "b"),
        "inputs": (TensorSpec("input", "float32", (-1, 4)),),
    }
    base.update(kw)
    return VersionMeta(**base)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A started store of each backend (S3: a fresh prefix on the session's server)."""
    if request.param == "local":
        s = LocalModelStore(tmp_path / "home")
        s.start()
        return s
    server = request.getfixturevalue("s3_server")
    monkeypatch = request.getfixturevalue("monkeypatch")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    location = S3Location.parse(server.url(f"registry-{uuid.uuid4().hex[:12]}"))
    s3 = S3ModelStore(location, tmp_path / "home", poll_s=0.2)
    s3.start()
    return s3


def _reopen(store: Any, **kw: Any) -> Any:
    """A second store on the same storage (another process, in effect)."""
    if isinstance(store, LocalModelStore):
        return LocalModelStore(store.home, **kw)
    other = S3ModelStore(store.location, store.local_dir.parent / uuid.uuid4().hex, **kw)
    other.start()
    return other


def _objects(store: S3ModelStore) -> dict[str, bytes]:
    """Every object under the store's prefix with its content."""
    import obstore

    paths = [o["path"] for batch in obstore.list(store.store, chunk_size=1000) for o in batch]
    return {p: bytes(obstore.get(store.store, p).bytes()) for p in paths}


def _blob(store: S3ModelStore, name: str, version: int) -> str:
    return f"uploads/{name}/{store._upload_of(name, version)}/model.onnx"


def _overwrite_model(store: Any, name: str, version: int, data: bytes | None) -> None:
    """Replace (or with None remove) a stored version's bytes behind the store's back."""
    if isinstance(store, LocalModelStore):
        path = store.home / f"models/{name}/versions/{version}/model.onnx"
        if data is None:
            path.unlink()
        else:
            path.write_bytes(data)
        return
    import obstore

    key = _blob(store, name, version)
    shutil.rmtree(store.cache_dir, ignore_errors=True)  # the replica's cache is checked too
    if data is None:
        obstore.delete(store.store, key)
    else:
        obstore.put(store.store, key, data)


def _snapshot(store: Any) -> Any:
    """Everything the store keeps (files and objects), to prove that nothing changed."""
    if isinstance(store, LocalModelStore):
        return _tree(store.home.parent)
    return _objects(store), _tree(store.local_dir)


def _tree(root: Path) -> dict[str, tuple[bool, bytes]]:
    """Every path under ``root`` with its content (files) - to prove nothing changed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = (True, b"")
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = (False, Path(p).read_bytes())
    return out


def test_publish_fills_meta_and_resolves(store: Any) -> None:
    v1 = store.publish("iris", b"model-one", _meta())
    v2 = store.publish("iris", b"model-two", _meta(metrics={"accuracy": 0.95}), ("production",))
    assert (v1.version, v2.version) == (1, 2)
    assert v1.model_name == "iris"
    assert v1.sha256 == hashlib.sha256(b"model-one").hexdigest()
    assert v1.size_bytes == len(b"model-one")
    assert v1.created_at > 0
    assert store.resolve("iris") == v2
    assert store.resolve("iris", version=1) == v1
    assert store.resolve("iris", alias="production") == v2
    assert store.resolve("iris", alias="latest") == v2
    assert store.read_model("iris", 1) == b"model-one"
    assert b"".join(store.iter_model_chunks("iris", 2, 3)) == b"model-two"
    info = store.get_model("iris")
    assert [m.version for m in info.versions] == [1, 2]
    assert info.aliases == {"production": 2}
    assert [m.name for m in store.list_models()] == ["iris"]
    # The layout promised in docs/registry.md.
    if isinstance(store, LocalModelStore):
        vdir = store.home / "models" / "iris" / "versions" / "2"
        assert sorted(os.listdir(vdir)) == ["meta.json", "model.onnx"]
        stored = json.loads((vdir / "meta.json").read_text())
    else:
        objects = _objects(store)
        upload = store._upload_of("iris", 2)
        assert sorted(k for k in objects if "/2." in k or upload in k) == [
            "models/iris/versions/2.json",
            f"uploads/iris/{upload}/model.onnx",
        ]
        manifest = json.loads(objects["models/iris/versions/2.json"])
        assert manifest["upload"] == upload
        stored = manifest["meta"]
        assert objects[f"uploads/iris/{upload}/model.onnx"] == b"model-two"
    assert stored["sha256"] == v2.sha256 and stored["metrics"] == {"accuracy": 0.95}
    # A second store on the same storage (another process, in effect) reads the same.
    other = _reopen(store)
    assert other.resolve("iris", alias="production") == v2


def test_unknown_things_are_not_found(store: Any) -> None:
    with pytest.raises(NotFound, match="'nope'"):
        store.get_model("nope")
    with pytest.raises(NotFound):
        store.resolve("nope")
    store.publish("iris", b"m", _meta())
    with pytest.raises(NotFound, match="no version 7"):
        store.resolve("iris", version=7)
    with pytest.raises(NotFound, match="no alias 'prod'"):
        store.resolve("iris", alias="prod")
    with pytest.raises(NotFound):
        store.read_model("iris", 7)
    with pytest.raises(NotFound):
        store.set_alias("iris", "prod", 7)
    with pytest.raises(NotFound):
        store.delete_alias("iris", "prod")
    with pytest.raises(NotFound):
        store.delete_version("iris", 7)
    with pytest.raises(NotFound):
        store.set_alias("nope", "prod", 1)
    with pytest.raises(InvalidArgument):
        store.resolve("iris", version=1, alias="prod")
    with pytest.raises(InvalidArgument):
        store.resolve("iris", version=0)


def test_aliases_set_move_delete(store: Any) -> None:
    for i in range(3):
        store.publish("iris", f"m{i}".encode(), _meta())
    assert store.set_alias("iris", "production", 1).aliases == {"production": 1}
    store.set_alias("iris", "staging", 2)
    info = store.set_alias("iris", "production", 3)  # move
    assert info.aliases == {"production": 3, "staging": 2}
    assert info.aliases_of(3) == ["production"]
    if isinstance(store, LocalModelStore):
        on_disk = json.loads((store.home / "models/iris/aliases.json").read_text())
    else:
        on_disk = json.loads(_objects(store)["models/iris/aliases.json"])
    assert on_disk == {"aliases": {"production": 3, "staging": 2}}
    assert store.delete_alias("iris", "staging").aliases == {"production": 3}
    with pytest.raises(NotFound):
        store.delete_alias("iris", "staging")
    for bad in ("latest", "7", "Prod", "../x"):
        with pytest.raises(InvalidArgument):
            store.set_alias("iris", bad, 1)
    # No temp files are left next to aliases.json.
    if isinstance(store, LocalModelStore):
        assert sorted(os.listdir(store.home / "models/iris")) == [
            ".lock",
            "aliases.json",
            "high_water",
            "versions",
        ]


def test_delete_refuses_aliased_unless_forced(store: Any) -> None:
    store.publish("iris", b"a", _meta())
    store.publish("iris", b"b", _meta(), ("production", "canary"))
    with pytest.raises(FailedPrecondition, match="canary, production"):
        store.delete_version("iris", 2)
    assert store.resolve("iris").version == 2
    info, removed = store.delete_version("iris", 2, force=True)
    assert removed == ["canary", "production"]
    assert info is not None and [m.version for m in info.versions] == [1] and info.aliases == {}
    if isinstance(store, LocalModelStore):
        assert not (store.home / "models/iris/versions/2").exists()
    else:
        # A tombstone keeps the number taken; the bytes are gone.
        objects = _objects(store)
        assert json.loads(objects["models/iris/versions/2.json"])["deleted"] is True
        assert len([k for k in objects if k.startswith("uploads/")]) == 1


def test_numbers_are_never_reused(store: Any) -> None:
    store.publish("iris", b"a", _meta())
    store.publish("iris", b"b", _meta())
    store.delete_version("iris", 2)
    assert store.publish("iris", b"c", _meta()).version == 3
    store.delete_version("iris", 3)
    info, removed = store.delete_version("iris", 1)
    assert info is None and removed == []
    with pytest.raises(NotFound):
        store.get_model("iris")
    assert store.list_models() == []
    # Also for a fresh store instance (the mark is in storage, not in memory).
    assert _reopen(store).publish("iris", b"d", _meta()).version == 4


def test_sha_mismatch_refuses_that_version_only(store: Any) -> None:
    store.publish("iris", b"good-one", _meta())
    store.publish("iris", b"good-two", _meta())
    _overwrite_model(store, "iris", 1, b"evil-one")  # same size, other bytes
    for read in (
        lambda: store.read_model("iris", 1),
        lambda: list(store.iter_model_chunks("iris", 1, 4)),
    ):
        with pytest.raises(Unavailable) as err:
            read()
        assert "'iris' version 1" in err.value.message
        assert "sha256" in err.value.message
        assert str(store.tmp_dir.parent) not in err.value.message
    # Metadata and the other version keep working.
    assert store.resolve("iris", version=1).version == 1
    assert store.read_model("iris", 2) == b"good-two"
    _overwrite_model(store, "iris", 1, None)
    with pytest.raises(Unavailable, match="version 1"):
        store.read_model("iris", 1)


HOSTILE = ["../x", "/abs", "a/b", "x\x00y", "x" * 1024, "", ".hidden", "A", ".."]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_names_touch_nothing(store: Any, bad: str) -> None:
    store.publish("iris", b"m", _meta())
    before = _snapshot(store)
    calls = [
        lambda: store.publish(bad, b"m", _meta()),
        lambda: store.publish_file(bad, store.tmp_dir / "nothing", _meta()),
        lambda: store.publish("iris", b"m", _meta(), (bad,)),
        lambda: store.get_model(bad),
        lambda: store.resolve(bad),
        lambda: store.resolve("iris", alias=bad),
        lambda: store.read_model(bad, 1),
        lambda: store.set_alias(bad, "prod", 1),
        lambda: store.set_alias("iris", bad, 1),
        lambda: store.delete_alias("iris", bad),
        lambda: store.delete_version(bad, 1),
    ]
    for call in calls:
        with pytest.raises(InvalidArgument) as err:
            call()
        assert len(err.value.message) < 300
    assert _snapshot(store) == before


def test_concurrent_publishes_from_threads(store: Any) -> None:
    got: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def work(i: int) -> None:
        try:
            start.wait()
            for j in range(4):
                got.append(store.publish("race", f"{i}-{j}".encode(), _meta()).version)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(got) == list(range(1, 25))
    info = store.get_model("race")
    assert [m.version for m in info.versions] == list(range(1, 25))
    # Each version holds the bytes its publisher wrote, under its own sha256.
    assert len({m.sha256 for m in info.versions}) == 24


_PUBLISHER = """
import sys, time
from pathlib import Path
from highpeaks_ml.registry.base import VersionMeta
from highpeaks_ml.registry.local import LocalModelStore
home, tag, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
if sys.argv[4] == "local":
    store = LocalModelStore(home)
else:
    from highpeaks_ml.registry.s3 import S3Location, S3ModelStore
    store = S3ModelStore(S3Location.parse(sys.argv[4]), home / tag)
    store.start()
while not go.exists():
    time.sleep(0.005)
for j in range(4):
    m = store.publish("race", f"{tag}-{j}".encode(), VersionMeta("", 0, 0.0, "trained", ""))
    print(m.version, flush=True)
"""


def test_concurrent_publishes_from_processes(store: Any, tmp_path: Path) -> None:
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    where = "local" if isinstance(store, LocalModelStore) else str(store.location)
    home = store.home if isinstance(store, LocalModelStore) else tmp_path / "publishers"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PUBLISHER, str(home), f"p{i}", str(go), where],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(4)
    ]
    got: list[int] = []
    go.touch()
    # This process publishes at the same time, through its own store.
    for j in range(4):
        got.append(store.publish("race", f"main-{j}".encode(), _meta()).version)
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        got.extend(int(line) for line in out.split())
    assert sorted(got) == list(range(1, 21))
    assert [m.version for m in store.get_model("race").versions] == list(range(1, 21))


def test_recover_removes_leftovers_only(store: Any) -> None:
    if not isinstance(store, LocalModelStore):
        pytest.skip("local layout (S3: tests/integration/test_registry_s3.py, recover tests)")
    tmp = store.home / "tmp"
    store.publish("iris", b"m", _meta())
    # A live staging area (lock held): must survive.
    live = store.scratch()
    live.path.mkdir()
    (live.path / "model.onnx").write_bytes(b"partial")
    # A crashed one: lock file present but nobody holds it.
    (tmp / "registry-dead").mkdir()
    (tmp / "registry-dead/model.onnx").write_bytes(b"partial")
    (tmp / "registry-dead.lock").touch()
    # An entry without a lock file, and an unrelated file of someone else.
    (tmp / "registry-orphan.onnx").write_bytes(b"x")
    (tmp / "training-job.onnx").write_bytes(b"keep")
    # Temp and trash entries inside a model directory.
    model_dir = store.home / "models/iris"
    (model_dir / ".aliases.json.123.tmp").write_text("{")
    (model_dir / ".trash-9-abc").mkdir()
    (model_dir / ".trash-9-abc/model.onnx").write_bytes(b"x")

    store.recover()

    assert sorted(os.listdir(tmp)) == sorted(
        [live.path.name, f"{live.path.name}.lock", "training-job.onnx"]
    )
    assert sorted(os.listdir(model_dir)) == [".lock", "high_water", "versions"]
    assert store.read_model("iris", 1) == b"m"
    live.release()
    assert sorted(os.listdir(tmp)) == ["training-job.onnx"]


def test_publish_file_moves_and_checks_sha(store: Any) -> None:
    src = store.tmp_dir / "from-training.onnx"
    src.write_bytes(b"trained-bytes")
    with pytest.raises(InvalidArgument, match="sha256 mismatch"):
        store.publish_file("iris", src, _meta(sha256="0" * 64))
    assert src.read_bytes() == b"trained-bytes"  # given back on failure
    with pytest.raises(NotFound):
        store.get_model("iris")
    meta = store.publish_file(
        "iris", src, _meta(sha256=hashlib.sha256(b"trained-bytes").hexdigest()), ("staging",)
    )
    assert meta.version == 1 and not src.exists()
    assert store.read_model("iris", 1) == b"trained-bytes"
    assert store.get_model("iris").aliases == {"staging": 1}
    assert sorted(os.listdir(store.tmp_dir)) == []


def test_listeners_fire_after_each_change(store: Any) -> None:
    seen: list[str] = []
    store.add_listener(seen.append)

    def broken(name: str) -> None:
        raise RuntimeError("listener bug")

    store.add_listener(broken)  # must not break the store or later listeners
    store.publish("iris", b"a", _meta())
    store.publish("wine", b"b", _meta())
    store.set_alias("iris", "prod", 1)
    store.delete_alias("iris", "prod")
    store.delete_version("wine", 1)
    assert seen == ["iris", "wine", "iris", "iris", "wine"]
    with pytest.raises(NotFound):
        store.delete_version("wine", 1)
    assert len(seen) == 5  # failures are not changes


def test_reads_are_cached_but_see_other_writers(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not isinstance(store, LocalModelStore):
        pytest.skip(
            "local cache (S3: test_registry_s3.py::test_polls_cheaply_and_sees_other_writers)"
        )
    store.publish("iris", b"a", _meta(), ("prod",))
    reader = LocalModelStore(store.home, refresh_s=0.2)
    assert reader.resolve("iris", alias="prod").version == 1
    reads = {"meta": 0, "aliases": 0}
    real_from_dict = VersionMeta.from_dict.__func__  # type: ignore[attr-defined]
    real_aliases = local_mod._read_aliases

    def count_meta(cls, data):
        reads["meta"] += 1
        return real_from_dict(cls, data)

    def count_aliases(model_dir):
        reads["aliases"] += 1
        return real_aliases(model_dir)

    monkeypatch.setattr(VersionMeta, "from_dict", classmethod(count_meta))
    monkeypatch.setattr(local_mod, "_read_aliases", count_aliases)
    for _ in range(200):
        reader.resolve("iris", alias="prod")
    assert reads["aliases"] <= 1 and reads["meta"] == 0
    # Another writer (its own store, as another process would have) moves the
    # alias and adds a version; the reader notices within refresh_s.
    store.publish("iris", b"b", _meta())
    store.set_alias("iris", "prod", 2)
    deadline = time.monotonic() + 10
    while reader.resolve("iris", alias="prod").version != 2:
        assert time.monotonic() < deadline, "reader never saw the change"
        time.sleep(0.02)
    # Only the new version's metadata was read; version 1 came from the cache.
    assert reads["meta"] == 1
