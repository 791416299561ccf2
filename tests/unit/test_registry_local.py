"""LocalModelStore on a real temporary directory: versions, aliases, integrity, races, recovery."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from highpeaks_ml.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from highpeaks_ml.registry import local as local_mod
from highpeaks_ml.registry.base import TensorSpec, VersionMeta
from highpeaks_ml.registry.local import LocalModelStore

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


@pytest.fixture
def store(tmp_path: Path) -> LocalModelStore:
    s = LocalModelStore(tmp_path / "home")
    s.start()
    return s


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


def test_publish_fills_meta_and_resolves(store: LocalModelStore) -> None:
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
    vdir = store.home / "models" / "iris" / "versions" / "2"
    assert sorted(os.listdir(vdir)) == ["meta.json", "model.onnx"]
    stored = json.loads((vdir / "meta.json").read_text())
    assert stored["sha256"] == v2.sha256 and stored["metrics"] == {"accuracy": 0.95}
    # A second store on the same home (another process, in effect) reads the same.
    other = LocalModelStore(store.home)
    assert other.resolve("iris", alias="production") == v2


def test_unknown_things_are_not_found(store: LocalModelStore) -> None:
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


def test_aliases_set_move_delete(store: LocalModelStore) -> None:
    for i in range(3):
        store.publish("iris", f"m{i}".encode(), _meta())
    assert store.set_alias("iris", "production", 1).aliases == {"production": 1}
    store.set_alias("iris", "staging", 2)
    info = store.set_alias("iris", "production", 3)  # move
    assert info.aliases == {"production": 3, "staging": 2}
    assert info.aliases_of(3) == ["production"]
    on_disk = json.loads((store.home / "models/iris/aliases.json").read_text())
    assert on_disk == {"aliases": {"production": 3, "staging": 2}}
    assert store.delete_alias("iris", "staging").aliases == {"production": 3}
    with pytest.raises(NotFound):
        store.delete_alias("iris", "staging")
    for bad in ("latest", "7", "Prod", "../x"):
        with pytest.raises(InvalidArgument):
            store.set_alias("iris", bad, 1)
    # No temp files are left next to aliases.json.
    assert sorted(os.listdir(store.home / "models/iris")) == [
        ".lock",
        "aliases.json",
        "high_water",
        "versions",
    ]


def test_delete_refuses_aliased_unless_forced(store: LocalModelStore) -> None:
    store.publish("iris", b"a", _meta())
    store.publish("iris", b"b", _meta(), ("production", "canary"))
    with pytest.raises(FailedPrecondition, match="canary, production"):
        store.delete_version("iris", 2)
    assert store.resolve("iris").version == 2
    info, removed = store.delete_version("iris", 2, force=True)
    assert removed == ["canary", "production"]
    assert info is not None and [m.version for m in info.versions] == [1] and info.aliases == {}
    assert not (store.home / "models/iris/versions/2").exists()


def test_numbers_are_never_reused(store: LocalModelStore) -> None:
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
    # Also for a fresh store instance (the mark is on disk, not in memory).
    assert LocalModelStore(store.home).publish("iris", b"d", _meta()).version == 4


def test_sha_mismatch_refuses_that_version_only(store: LocalModelStore) -> None:
    store.publish("iris", b"good-one", _meta())
    store.publish("iris", b"good-two", _meta())
    path = store.home / "models/iris/versions/1/model.onnx"
    path.write_bytes(b"evil-one")  # same size, other bytes
    for read in (
        lambda: store.read_model("iris", 1),
        lambda: list(store.iter_model_chunks("iris", 1, 4)),
    ):
        with pytest.raises(Unavailable) as err:
            read()
        assert "'iris' version 1" in err.value.message
        assert "sha256" in err.value.message
        assert str(store.home) not in err.value.message
    # Metadata and the other version keep working.
    assert store.resolve("iris", version=1).version == 1
    assert store.read_model("iris", 2) == b"good-two"
    path.unlink()
    with pytest.raises(Unavailable, match="version 1"):
        store.read_model("iris", 1)


HOSTILE = ["../x", "/abs", "a/b", "x\x00y", "x" * 1024, "", ".hidden", "A", ".."]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_names_touch_nothing(store: LocalModelStore, bad: str) -> None:
    store.publish("iris", b"m", _meta())
    before = _tree(store.home.parent)
    calls = [
        lambda: store.publish(bad, b"m", _meta()),
        lambda: store.publish_file(bad, store.home / "nothing", _meta()),
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
    assert _tree(store.home.parent) == before


def test_concurrent_publishes_from_threads(store: LocalModelStore) -> None:
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
store = LocalModelStore(home)
while not go.exists():
    time.sleep(0.005)
for j in range(4):
    m = store.publish("race", f"{tag}-{j}".encode(), VersionMeta("", 0, 0.0, "trained", ""))
    print(m.version, flush=True)
"""


def test_concurrent_publishes_from_processes(store: LocalModelStore, tmp_path: Path) -> None:
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PUBLISHER, str(store.home), f"p{i}", str(go)],
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


def test_recover_removes_leftovers_only(store: LocalModelStore) -> None:
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


def test_publish_file_moves_and_checks_sha(store: LocalModelStore) -> None:
    src = store.home / "tmp" / "from-training.onnx"
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
    assert sorted(os.listdir(store.home / "tmp")) == []


def test_listeners_fire_after_each_change(store: LocalModelStore) -> None:
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
    store: LocalModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
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
