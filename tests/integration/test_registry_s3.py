"""The S3 backend on a real S3 server (SeaweedFS): two servers on one bucket, outages,
wrong credentials, polling cost, crash recovery.

The store's contract itself (versions, aliases, integrity, concurrent publishers)
runs on both backends in tests/integration/test_registry_stores.py.
"""

from __future__ import annotations

import csv
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import obstore
import pytest

from highpeaks_ml.client import Client
from highpeaks_ml.config import ConfigError
from highpeaks_ml.errors import InvalidArgument, NotFound, Unavailable
from highpeaks_ml.launcher import ServerStartError
from highpeaks_ml.registry.base import VersionMeta
from highpeaks_ml.registry.s3 import S3Location, S3ModelStore
from highpeaks_ml.v1 import train_pb2
from tests.conftest import ServerProcess
from tests.support.s3_server import S3Server

#: Generous: a poll every 0.5 s, on a loaded 2-core machine.
FOLLOW_DEADLINE_S = 60.0


def _meta() -> VersionMeta:
    return VersionMeta("", 0, 0.0, "trained", "classification")


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def url(s3_server: S3Server) -> str:
    """A fresh prefix on the session's server."""
    return s3_server.url(f"it-{uuid.uuid4().hex[:12]}")


def _store(url: str, local: Path, **kw: Any) -> S3ModelStore:
    store = S3ModelStore(S3Location.parse(url), local, **kw)
    store.start()
    return store


def _keys(store: S3ModelStore, prefix: str = "") -> list[str]:
    return sorted(o["path"] for batch in obstore.list(store.store, prefix or None) for o in batch)


def test_the_test_server_listens_on_loopback_only(s3_server: S3Server) -> None:
    listening = s3_server.listening()
    assert listening, "weed mini listens on nothing?"
    assert {addr for addr, _port in listening} == {"127.0.0.1"}
    assert ("127.0.0.1", s3_server.ports["s3"]) in listening


def test_wrong_credentials_fail_at_start_up(
    s3_server: S3Server, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3_server.env(secret_key="not-the-secret").items():
        monkeypatch.setenv(key, value)
    store = S3ModelStore(S3Location.parse(url), tmp_path / "local")
    with pytest.raises(ConfigError, match="refused the credentials") as err:
        store.start()
    assert "not-the-secret" not in str(err.value)
    # The server refuses to start, with the reason, before serving anything.
    with pytest.raises(ServerStartError) as started:
        ServerProcess(
            tmp_path / "home",
            "--store",
            url,
            env=s3_server.env(secret_key="not-the-secret"),
            timeout=60,
        )
    assert started.value.returncode == 2
    assert "refused the credentials" in started.value.output
    assert "not-the-secret" not in started.value.output


def test_polls_cheaply_and_sees_other_writers(s3_env: S3Server, url: str, tmp_path: Path) -> None:
    writer = _store(url, tmp_path / "w")
    writer.publish("iris", b"a", _meta(), ("prod",))
    reader = _store(url, tmp_path / "r", poll_s=3600)
    before = dict(reader.requests)
    for _ in range(200):
        assert reader.resolve("iris", alias="prod").version == 1
        reader.list_models()
    assert reader.requests == before  # all from memory: no request at all
    # Another writer adds a version and moves the alias; the reader notices at its next poll.
    writer.publish("iris", b"b", _meta())
    writer.set_alias("iris", "prod", 2)
    reader.poll_s = 0.2
    deadline = time.monotonic() + FOLLOW_DEADLINE_S
    while reader.resolve("iris", alias="prod").version != 2:
        assert time.monotonic() < deadline, "the reader never saw the change"
        time.sleep(0.05)
    # One LIST per poll; GETs only for what changed: the new manifest and the aliases.
    assert reader.requests.get("get", 0) - before.get("get", 0) == 2
    assert reader.requests.get("put", 0) == before.get("put", 0)


class _Crashing(S3ModelStore):
    """Takes the S3 server away at a checkpoint of the publish."""

    def __init__(self, *args: Any, server: S3Server, at: str, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.server, self.at = server, at

    def _checkpoint(self, point: str) -> None:
        if point == self.at:
            self.server.stop()


def test_store_stopped_mid_publish_leaves_nothing_visible(
    s3_env: S3Server, url: str, tmp_path: Path
) -> None:
    crashing = _Crashing(
        S3Location.parse(url), tmp_path / "c", server=s3_env, at="model-written", poll_s=0.1
    )
    crashing.start()
    try:
        with pytest.raises(Unavailable, match="unreachable"):
            crashing.publish("iris", b"half", _meta(), ("prod",))
    finally:
        s3_env.start()
    fresh = _store(url, tmp_path / "f")
    with pytest.raises(NotFound):
        fresh.get_model("iris")
    assert fresh.list_models() == []
    assert [k for k in _keys(fresh) if k.startswith("models/")] == []
    # The next publish takes number 1 (no gap), and the orphan upload goes once it is old.
    assert fresh.publish("iris", b"whole", _meta(), ("prod",)).version == 1
    assert len({k.split("/")[2] for k in _keys(fresh, "uploads/")}) == 2
    assert fresh._collect_orphans(time.time() + 1) == 1
    assert len({k.split("/")[2] for k in _keys(fresh, "uploads/")}) == 1
    assert fresh.read_model("iris", 1) == b"whole"


def test_recover_keeps_young_orphans_and_referenced_uploads(
    s3_env: S3Server, url: str, tmp_path: Path
) -> None:
    store = _store(url, tmp_path / "s")
    store.publish("iris", b"m", _meta())
    obstore.put(store.store, "uploads/iris/deadbeef/model.onnx", b"orphan")
    store.recover()  # the orphan is younger than ORPHAN_AGE_S: a publish may be under way
    assert "uploads/iris/deadbeef/model.onnx" in _keys(store)
    assert store._collect_orphans(time.time() + 1) == 1
    assert "uploads/iris/deadbeef/model.onnx" not in _keys(store)
    assert store.read_model("iris", 1) == b"m"


def _csv(path: Path) -> Path:
    rng = np.random.default_rng(7)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "label"])
        for _ in range(120):
            a, b = rng.normal(size=2)
            w.writerow([f"{a:.4f}", f"{b:.4f}", "yes" if a + b > 0 else "no"])
    return path


@pytest.fixture
def pair(
    s3_server: S3Server, url: str, tmp_path: Path
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """A trainer and a serving-only replica on one bucket prefix, each with its own home."""
    common = ("--store", url, "--store-poll-s", "0.5")
    trainer = ServerProcess(tmp_path / "trainer", *common, env=s3_server.env())
    try:
        replica = ServerProcess(
            tmp_path / "replica",
            *common,
            "--training-workers",
            "0",
            "--session-cache-size",
            "1",
            "--store-cache-mb",
            "0",
            env=s3_server.env(),
        )
    except BaseException:
        trainer.stop()
        raise
    try:
        yield trainer, replica
    finally:
        replica.stop()
        trainer.stop()


def _follow(client: Client, X: Any, version: int) -> None:
    deadline = time.monotonic() + FOLLOW_DEADLINE_S
    while True:
        try:
            if client.predict("churn", X, alias="prod").model_version == version:
                return
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        assert time.monotonic() < deadline, f"the replica never served version {version}"
        time.sleep(0.1)


def test_trainer_and_replica_share_a_bucket(
    pair: tuple[ServerProcess, ServerProcess], s3_env: S3Server, url: str, tmp_path: Path
) -> None:
    s3_server = s3_env
    trainer, replica = pair
    X = [{"a": 0.5, "b": 0.1}, {"a": -1.0, "b": -0.3}]
    with Client(trainer.target, timeout=60) as t, Client(replica.target, timeout=60) as r:
        ds = t.upload_dataset(_csv(tmp_path / "churn.csv"), name="churn", target="label")
        job = t.start_training("churn", "logistic_regression", ds.id, aliases=["prod"])
        assert t.wait_job(job.id, timeout=240).model_version == 1
        # Trained on one server, served by the other (which never trained anything).
        _follow(r, X, 1)
        assert list(r.predict("churn", X, alias="prod").labels) == ["yes", "no"]
        job2 = t.start_training("churn", "random_forest", ds.id, {"n_estimators": 5})
        assert t.wait_job(job2.id, timeout=240).model_version == 2
        # An alias moved on the trainer is followed by the replica at its next poll.
        t.set_alias("churn", "prod", 2)
        _follow(r, X, 2)
        assert r.get_model("churn").aliases["prod"] == 2

        # Everything durable is in the bucket: versions, the dataset, job records.
        store = _store(url, tmp_path / "look")
        keys = _keys(store)
        assert f"datasets/{ds.id}/meta.json" in keys and f"datasets/{ds.id}/data.csv" in keys
        assert {f"jobs/{job.id}.json", f"jobs/{job2.id}.json"} <= set(keys)
        assert {"models/churn/versions/1.json", "models/churn/versions/2.json"} <= set(keys)
        assert not (tmp_path / "trainer" / "models").exists()
        assert not (tmp_path / "trainer" / "jobs" / f"{job.id}.json").exists()

        # The store goes away: the replica keeps serving what it has loaded, health
        # stays SERVING; a version it would have to download fails UNAVAILABLE, saying why.
        s3_server.stop()
        try:
            assert r.health() == "SERVING"
            assert r.predict("churn", X, alias="prod").model_version == 2
            with pytest.raises(grpc.RpcError) as err:
                r.predict("churn", X, version=1)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "model store is unreachable" in (err.value.details() or "")
            assert r.predict("churn", X, alias="prod").model_version == 2
            assert r.health() == "SERVING"
        finally:
            s3_server.start()
        # Back: the trainer publishes again and the replica follows.
        job3 = t.start_training("churn", "logistic_regression", ds.id, {"C": 0.5})
        assert t.wait_job(job3.id, timeout=240).model_version == 3
        t.set_alias("churn", "prod", 3)
        _follow(r, X, 3)


def test_artifacts_travel_with_their_version(s3_env: S3Server, url: str, tmp_path: Path) -> None:
    store = _store(url, tmp_path / "s")
    files = {"report.html": b"<html></html>", "fig-roc.png": b"\x89PNG...", "report.json": b"{}"}
    before = _keys(store)
    with pytest.raises(InvalidArgument):
        store.publish("m", b"onnx", _meta(), artifacts={**files, "../evil.json": b"x"})
    assert _keys(store) == before  # a bad name refuses the whole publish: nothing written
    stored = store.publish("m", b"onnx", _meta(), artifacts=files)
    assert [a.name for a in stored.artifacts] == sorted(files)
    fresh = _store(url, tmp_path / "f")  # another replica
    assert fresh.resolve("m", 1).artifacts == stored.artifacts
    assert fresh.read_artifact("m", 1, "fig-roc.png") == files["fig-roc.png"]
    with pytest.raises(NotFound, match="has no artifact"):
        fresh.read_artifact("m", 1, "fig-pr.png")
    key = f"uploads/m/{store._upload_of('m', 1)}/artifacts/report.json"
    obstore.put(store.store, key, b"{1}")  # tampered, same size
    with pytest.raises(Unavailable, match="integrity check"):
        fresh.read_artifact("m", 1, "report.json")
    store.delete_version("m", 1)
    assert [k for k in _keys(store) if k.startswith("uploads/")] == []


def test_a_queued_inline_job_survives_a_trainer_restart_on_an_empty_home(
    s3_env: S3Server, url: str, tmp_path: Path
) -> None:
    """Inline rows wait in the bucket beside the job record (not on the trainer's
    disk, an emptyDir): a trainer restarted on an empty home runs the queued job."""
    common = ("--store", url, "--training-workers", "1")
    rows = [{"x": float(i), "y": i % 2} for i in range(40)]
    first = ServerProcess(tmp_path / "trainer-1", *common, env=s3_env.env())
    try:
        with Client(first.target, timeout=60) as c:
            busy = c.start_training(
                "busy", "random_forest", "builtin:digits", {"n_estimators": 1000}
            )
            for snap in c.watch_job(busy.id, timeout=120):
                if snap.state == train_pb2.JOB_STATE_RUNNING:
                    break
            job = c.start_training("inline", "logistic_regression", rows, target="y")
            assert c.get_job(job.id).state == train_pb2.JOB_STATE_QUEUED
        assert first.terminate(signal.SIGTERM) == 0  # the queued job stays queued
    finally:
        first.stop()
    store = _store(url, tmp_path / "look")
    assert f"jobs/{job.id}.csv" in _keys(store, "jobs/")
    second = ServerProcess(tmp_path / "trainer-2", *common, env=s3_env.env())
    try:
        with Client(second.target, timeout=60) as c:
            final = c.wait_job(job.id, timeout=240)
            assert final.state == train_pb2.JOB_STATE_SUCCEEDED, final.error
            assert c.get_version("inline", final.model_version).dataset.source == "inline"
    finally:
        second.stop()
    assert f"jobs/{job.id}.csv" not in _keys(store, "jobs/")
    assert not (tmp_path / "trainer-1" / "jobs" / f"{job.id}.csv").exists()
