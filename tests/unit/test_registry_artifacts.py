"""Version artifacts on the local store: published atomically with the version, sha256-checked."""

from __future__ import annotations

import hashlib

import pytest

from highpeaks_ml.errors import InvalidArgument, NotFound, Unavailable
from highpeaks_ml.registry.base import VersionMeta
from highpeaks_ml.registry.local import LocalModelStore

ONNX = b"not really onnx, the store does not parse it"


def _meta() -> VersionMeta:
    return VersionMeta(model_name="m", version=0, created_at=0.0, source="trained", task="")


@pytest.fixture
def store(tmp_path):
    s = LocalModelStore(tmp_path)
    s.start()
    return s


def test_artifacts_are_listed_with_sha256_and_read_back(store):
    files = {"report.html": b"<html></html>", "fig-roc.png": b"\x89PNG...", "report.json": b"{}"}
    stored = store.publish("m", ONNX, _meta(), artifacts=files)
    assert [a.name for a in stored.artifacts] == sorted(files)
    for a in stored.artifacts:
        assert a.sha256 == hashlib.sha256(files[a.name]).hexdigest()
        assert a.size_bytes == len(files[a.name])
    media = {a.name: a.media_type for a in store.list_artifacts("m", 1)}
    assert media == {
        "fig-roc.png": "image/png",
        "report.html": "text/html; charset=utf-8",
        "report.json": "application/json",
    }
    fresh = LocalModelStore(store.home)  # another process reads meta.json from disk
    assert fresh.resolve("m", 1).artifacts == stored.artifacts
    assert fresh.read_artifact("m", 1, "fig-roc.png") == files["fig-roc.png"]
    with pytest.raises(NotFound, match=r"has no artifact 'fig-pr\.png'"):
        store.read_artifact("m", 1, "fig-pr.png")


def test_version_without_artifacts_lists_none(store):
    assert store.publish("m", ONNX, _meta()).artifacts == ()
    with pytest.raises(NotFound):
        store.read_artifact("m", 1, "report.html")


def test_tampered_artifact_is_refused(store):
    store.publish("m", ONNX, _meta(), artifacts={"report.json": b'{"a": 1}'})
    path = store.home / "models" / "m" / "versions" / "1" / "artifacts" / "report.json"
    path.write_bytes(b'{"a": 2}')
    with pytest.raises(Unavailable, match="integrity check"):
        store.read_artifact("m", 1, "report.json")
    assert store.read_model("m", 1) == ONNX  # the model itself is fine


@pytest.mark.parametrize("bad", ["../x.png", "a/b.png", "Report.html", "report.exe", ".png", ""])
def test_bad_artifact_names_refuse_the_whole_publish(store, bad):
    with pytest.raises(InvalidArgument, match="invalid artifact name"):
        store.publish("m", ONNX, _meta(), artifacts={"report.json": b"{}", bad: b"x"})
    with pytest.raises(NotFound):
        store.get_model("m")  # nothing was published


def test_publish_file_carries_artifacts(store, tmp_path):
    src = tmp_path / "model.onnx"
    src.write_bytes(ONNX)
    stored = store.publish_file("m", src, _meta(), artifacts={"profile.json": b"[]"})
    assert store.read_artifact("m", stored.version, "profile.json") == b"[]"


def test_an_artifact_that_is_not_bytes_refuses_the_publish(store):
    # check_publish_args, shared by both stores, says so before anything is written.
    with pytest.raises(InvalidArgument, match=r"'report\.json' is not bytes"):
        store.publish("m", ONNX, _meta(), artifacts={"report.json": "{}"})  # type: ignore[dict-item]
    with pytest.raises(NotFound):
        store.get_model("m")
