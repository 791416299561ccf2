"""JobManager in-process (no gRPC): records, recovery, registration failures, serving-only mode.

The worker processes are real (spawned); the registry is a small fake whose
publish fails, to reach the "registering failed" path that the real store
only takes on disk errors. The full lifecycle through the server is in
tests/integration/test_training_api.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from highpeaks_ml.errors import Unavailable
from highpeaks_ml.registry.base import ModelInfo, ModelStore, VersionMeta
from highpeaks_ml.training.datasets import DatasetStore
from highpeaks_ml.training.jobs import (
    FAILED,
    QUEUED,
    RUNNING,
    Job,
    JobManager,
    TrainRequest,
)
from highpeaks_ml.training.spec import BuiltinDataset, InlineDataset
from tests.conftest import make_settings

IRIS_FEATURES = [
    "sepal length (cm)",
    "sepal width (cm)",
    "petal length (cm)",
    "petal width (cm)",
]


class RefusingStore(ModelStore):
    """A registry that has no models and refuses every publish (read-only storage)."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, VersionMeta]] = []

    def list_models(self) -> list[ModelInfo]:
        return []

    def publish(self, name, onnx_bytes, meta, aliases=(), artifacts=None):  # type: ignore[override]
        assert onnx_bytes
        self.attempts.append((name, meta))
        raise Unavailable("the model storage is read-only")

    def _unused(self, *args, **kwargs):
        raise AssertionError("not used by JobManager")

    get_model = resolve = read_model = iter_model_chunks = publish_file = _unused  # type: ignore[assignment]
    read_artifact = _unused  # type: ignore[assignment]
    set_alias = delete_alias = delete_version = add_listener = recover = _unused  # type: ignore[assignment]


def _record(job_id: str, state: str, model: str) -> dict:
    job = Job(
        id=job_id,
        model_name=model,
        algorithm="logistic_regression",
        request=TrainRequest(model, "logistic_regression", BuiltinDataset("iris")),
        state=state,
        stage="FITTING" if state == RUNNING else "",
        created_at=time.time(),
        task="classification",
        params={
            "C": 1.0,
            "max_iter": 100,
            "tol": 1e-4,
            "fit_intercept": True,
            "class_weight": None,
        },
        target="target",
        features=[[f, "numeric"] for f in IRIS_FEATURES],
        time_limit_s=60.0,
    )
    return job.to_dict()


@pytest.fixture
def run() -> Iterator[Callable]:
    def go(coro):
        return asyncio.run(asyncio.wait_for(coro, 120))

    yield go


def test_records_round_trip_without_inline_rows():
    rows = [{"x": 1.0, "y": "a"}, {"x": 2.0, "y": "b"}]
    req = TrainRequest("m", "knn", InlineDataset(rows=tuple(rows), row_count=2), seed=5)
    job = Job("j1", "m", "knn", req, created_at=1.0)
    data = json.loads(json.dumps(job.to_dict()))
    assert "rows" not in data["request"]["dataset"]
    back = Job.from_dict(data)
    assert back.request.dataset.row_count == 2 and back.request.dataset.rows is None
    assert back.request.seed == 5 and back.id == "j1"


def test_recovery_and_a_refused_publish(tmp_path, run):
    home = tmp_path / "home"
    (home / "jobs").mkdir(parents=True)
    (home / "tmp").mkdir()
    (home / "tmp" / "job-old.onnx").write_bytes(b"partial")  # a crashed job's staging file
    for job_id, state in (("interrupted", RUNNING), ("waiting", QUEUED)):
        (home / "jobs" / f"{job_id}.json").write_text(json.dumps(_record(job_id, state, "m")))
    store = RefusingStore()
    manager = JobManager(make_settings(home), store, DatasetStore(home))

    async def scenario():
        await manager.start()
        try:
            assert not (home / "tmp" / "job-old.onnx").exists()
            interrupted = manager.get("interrupted")
            assert interrupted.state == FAILED and "interrupted by a server restart" in (
                interrupted.error
            )
            return await manager._until_final("waiting")
        finally:
            await manager.begin_shutdown()
            await manager.close()

    final = run(scenario())
    assert final.state == FAILED
    assert final.error == "registering the version failed: the model storage is read-only"
    ((name, meta),) = store.attempts
    assert name == "m" and meta.job_id == "waiting" and meta.verification["passed"]
    assert [e for e in os.listdir(home / "tmp") if e.startswith("job-")] == []
    on_disk = json.loads((home / "jobs" / "interrupted.json").read_text())
    assert on_disk["state"] == FAILED


def test_serving_only_server_leaves_the_trainers_jobs_alone(tmp_path, run):
    home = tmp_path / "home"
    (home / "jobs").mkdir(parents=True)
    (home / "tmp").mkdir()
    (home / "tmp" / "job-live.onnx").write_bytes(b"the trainer is writing this")
    record = home / "jobs" / "live.json"
    record.write_text(json.dumps(_record("live", RUNNING, "m")))
    settings = make_settings(home).model_copy(update={"training_workers": 0})
    manager = JobManager(settings, RefusingStore(), DatasetStore(home))

    async def scenario():
        await manager.start()
        try:
            with pytest.raises(Unavailable, match="training_workers=0"):
                await manager.start_training(TrainRequest("m", "knn", BuiltinDataset("iris")))
            with pytest.raises(Unavailable):
                manager.get("live")
        finally:
            await manager.begin_shutdown()
            await manager.close()

    run(scenario())
    assert json.loads(record.read_text())["state"] == RUNNING
    assert (home / "tmp" / "job-live.onnx").exists()


def test_a_job_killed_after_its_version_landed_is_recovered_as_succeeded(tmp_path, run):
    """Killed while REGISTERING: the version may have been committed (and its
    aliases not yet written). At start-up such a job becomes SUCCEEDED with
    its version and the aliases it asked for are completed; one without a
    landed version is FAILED as interrupted."""
    from highpeaks_ml.registry.local import LocalModelStore
    from highpeaks_ml.training.jobs import SUCCEEDED
    from tests.support import serving_models as sm

    home = tmp_path / "home"
    (home / "jobs").mkdir(parents=True)
    store = LocalModelStore(home)
    store.start()
    iris = sm.iris_logreg()
    store.publish("m", iris.onnx, iris.meta, aliases=("production",))  # v1, older
    store.publish("m", iris.onnx, replace(iris.meta, job_id="landed"))  # v2: the job's
    store.publish("m", iris.onnx, iris.meta, aliases=("canary",))  # v3, newer
    for job_id in ("landed", "lost"):
        record = _record(job_id, RUNNING, "m")
        record["stage"] = "REGISTERING"
        record["request"]["aliases"] = ["production", "canary", "staging"]
        (home / "jobs" / f"{job_id}.json").write_text(json.dumps(record))
    manager = JobManager(make_settings(home), store, DatasetStore(home))

    async def scenario():
        await manager.start()
        try:
            return manager.get("landed"), manager.get("lost")
        finally:
            await manager.begin_shutdown()
            await manager.close()

    landed, lost = run(scenario())
    assert landed.state == SUCCEEDED and landed.model_version == 2 and not landed.error
    assert lost.state == FAILED and "interrupted by a server restart" in lost.error
    # Missing and older aliases completed; the one moved to a newer version stays.
    assert store.get_model("m").aliases == {"production": 2, "staging": 2, "canary": 3}
    on_disk = json.loads((home / "jobs" / "landed.json").read_text())
    assert on_disk["state"] == SUCCEEDED and on_disk["model_version"] == 2


def test_a_promotion_decided_before_a_restart_is_applied_at_recovery(tmp_path, run):
    """Killed while REGISTERING after its version (with the promote-if-better
    decision in its metadata) landed and before the alias moved: recovery applies
    the decision under the publish's guard (the alias moves only from where the
    decision found it), and the job reports the decision."""
    from highpeaks_ml.registry.local import LocalModelStore
    from highpeaks_ml.training.jobs import SUCCEEDED
    from tests.support import serving_models as sm

    home = tmp_path / "home"
    (home / "jobs").mkdir(parents=True)
    store = LocalModelStore(home)
    store.start()
    iris = sm.iris_logreg()

    def decision(promoted: bool) -> dict:
        return {
            "alias": "production",
            "metric": "accuracy",
            "greater_is_better": True,
            "new_score": 0.97 if promoted else 0.90,
            "current_version": 1,
            "current_score": 0.93,
            "promoted": promoted,
            "reason": "accuracy 0.97 beats 0.93 of version 1" if promoted else "does not beat",
        }

    # "better": beat production (v1); "worse": did not; "moved": beat v1, but
    # production was moved to v3 after the job compared.
    cases = {"better": True, "worse": False, "moved": True}
    for model, promoted in cases.items():
        store.publish(model, iris.onnx, iris.meta, aliases=("production",))
        landed = replace(iris.meta, job_id=model, promotion=decision(promoted))
        store.publish(model, iris.onnx, landed)  # v2, without the alias: the crash
        record = _record(model, RUNNING, model)
        record["stage"] = "REGISTERING"
        record["request"]["promote_if_better"] = "production"
        (home / "jobs" / f"{model}.json").write_text(json.dumps(record))
    store.publish("moved", iris.onnx, iris.meta, aliases=("production",))  # v3
    manager = JobManager(make_settings(home), store, DatasetStore(home))

    async def scenario():
        await manager.start()
        try:
            return {model: manager.get(model) for model in cases}
        finally:
            await manager.begin_shutdown()
            await manager.close()

    jobs = run(scenario())
    assert {m: (j.state, j.model_version) for m, j in jobs.items()} == {
        m: (SUCCEEDED, 2) for m in cases
    }
    assert {m: store.get_model(m).aliases["production"] for m in cases} == {
        "better": 2,
        "worse": 1,
        "moved": 3,
    }
    assert jobs["better"].promotion == decision(True)
    assert jobs["worse"].promotion == decision(False)
    moved = jobs["moved"].promotion
    assert moved["promoted"] is False and "now points to version 3" in moved["reason"]
    on_disk = json.loads((home / "jobs" / "better.json").read_text())
    assert on_disk["promotion"]["promoted"] is True
