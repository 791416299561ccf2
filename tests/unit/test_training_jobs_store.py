"""JobManager over a job record store that fails, and inline rows kept in the store.

The worker processes and the model registry are real (spawned workers, a
``LocalModelStore``); the job record store is the real ``LocalJobRecords``
behind a switch (``FlakyRecords``, a fake of the store interface, not a mock)
that refuses record writes while it is "down", as an S3 store refuses them
while the bucket is unreachable past its client's retries.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from highpeaks_ml import metrics
from highpeaks_ml.errors import Unavailable
from highpeaks_ml.registry.jobrecords import LocalJobRecords
from highpeaks_ml.registry.local import LocalModelStore
from highpeaks_ml.training.datasets import DatasetStore
from highpeaks_ml.training.jobs import QUEUED, SUCCEEDED, JobManager, TrainRequest
from highpeaks_ml.training.spec import BuiltinDataset, InlineDataset
from tests.conftest import make_settings
from tests.unit.test_training_jobs_retention import IdleExecutor

FAILURES = "highpeaks_ml_training_job_record_write_failures_total"
UNSAVED = "highpeaks_ml_training_job_records_unsaved"


class FlakyRecords(LocalJobRecords):
    """``LocalJobRecords`` whose record writes fail while ``down`` (reads still work)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.down = False
        self.refused = 0

    def write(self, job_id: str, data: bytes) -> None:
        if self.down:
            self.refused += 1
            raise Unavailable("the job record store is unreachable (test)")
        super().write(job_id, data)


@pytest.fixture
def fresh() -> Iterator[metrics.Metrics]:
    before = metrics.current()
    m = metrics.Metrics(process=False)
    metrics.install(m)
    yield m
    metrics.install(before)


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


async def _until(predicate: Any, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def _on_disk(records: Path, job_id: str) -> dict[str, Any]:
    return json.loads((records / f"{job_id}.json").read_text())


def _rows() -> tuple[dict[str, Any], ...]:
    return tuple(
        {"x": float(i), "colour": "red" if i % 3 else "blue", "y": i % 2} for i in range(40)
    )


def test_slots_survive_a_record_store_that_refuses_writes(tmp_path, fresh):
    """Two jobs queued on one slot; the store goes down: both jobs still run and
    end SUCCEEDED (in memory, to watchers), nothing is lost, the slot goes on; once
    the store is back every record lands with the final state."""
    home = tmp_path / "home"
    records = FlakyRecords(tmp_path / "records")
    settings = make_settings(home, training_workers=1)
    registry = LocalModelStore(home)
    registry.start()
    manager = JobManager(settings, registry, DatasetStore(home), records=records)
    iris = TrainRequest("m", "logistic_regression", BuiltinDataset("iris"))

    async def scenario() -> tuple[Any, Any]:
        await manager.start()
        try:
            first = await manager.start_training(iris)
            second = await manager.start_training(iris)
            records.down = True
            # A submission needs its record stored: refused, and no job exists.
            with pytest.raises(Unavailable):
                await manager.start_training(iris)
            assert len(manager.list()) == 2
            done = [await manager._until_final(j.id) for j in (first, second)]
            # Both ran (the slot survived the first job's refused writes).
            assert [j.state for j in done] == [SUCCEEDED, SUCCEEDED], [j.error for j in done]
            assert sorted(j.model_version for j in done) == [1, 2]
            assert manager.get(second.id).state == SUCCEEDED
            # The store still holds what it held: the jobs' queued records.
            assert _on_disk(records.dir, second.id)["state"] == QUEUED
            assert fresh.registry.get_sample_value(FAILURES) >= 2
            assert fresh.registry.get_sample_value(UNSAVED) == 2
            assert not manager._ended  # retention may not remove them yet
            refused = records.refused
            # The flusher retries while the store is down (with backoff, at most
            # 30 s apart: wait for a retry rather than for a fixed time).
            await _until(lambda: records.refused > refused, within_s=45.0)
            records.down = False
            await _until(lambda: not manager._unsaved)
            assert fresh.registry.get_sample_value(UNSAVED) == 0
            assert set(manager._ended) == {first.id, second.id}
            # A slot still serves: a job submitted now runs as usual.
            third = await manager._until_final((await manager.start_training(iris)).id)
            assert third.state == SUCCEEDED and third.model_version == 3
            return first, second
        finally:
            await manager.begin_shutdown()
            await manager.close()

    first, second = _run(scenario())
    for job in (first, second):
        record = _on_disk(records.dir, job.id)
        assert record["state"] == SUCCEEDED and record["model_version"] in (1, 2)


def test_queued_inline_rows_live_in_the_record_store_and_survive_a_new_home(tmp_path):
    """Inline rows are kept beside the record, in the job record store (not the
    home): a trainer restarted on an empty home with the same store runs the
    queued inline job, and the rows go once it ended."""
    shared = tmp_path / "shared-records"  # stands for the bucket
    first_home, second_home = tmp_path / "home-1", tmp_path / "home-2"
    req = TrainRequest(
        "inline", "logistic_regression", InlineDataset(_rows(), 40), target_column="y"
    )

    async def submit() -> str:
        # One slot, busy with a job that never ends (IdleExecutor): the inline job
        # stays QUEUED, and a shutdown leaves it so (as a SIGTERM'd trainer does).
        settings = make_settings(first_home, training_workers=1)
        manager = JobManager(
            settings,
            LocalModelStore(first_home),
            DatasetStore(first_home),
            IdleExecutor(settings),
            records=LocalJobRecords(shared),
        )
        await manager.start()
        try:
            await manager.start_training(TrainRequest("busy", "knn", BuiltinDataset("iris")))
            job = await manager.start_training(req)
            assert manager.get(job.id).state == QUEUED
        finally:
            await manager.begin_shutdown()
            await manager.close()
        assert manager.get(job.id).state == QUEUED
        return job.id

    job_id = _run(submit())
    assert (shared / f"{job_id}.csv").exists()
    assert not (first_home / "jobs" / f"{job_id}.csv").exists()
    assert not list((first_home / "tmp").glob("job-*"))  # the scratch copy is gone

    registry = LocalModelStore(second_home)
    registry.start()
    manager = JobManager(
        make_settings(second_home, training_workers=1),
        registry,
        DatasetStore(second_home),
        records=LocalJobRecords(shared),
    )

    async def resume() -> Any:
        await manager.start()
        try:
            return await manager._until_final(job_id)
        finally:
            await manager.begin_shutdown()
            await manager.close()

    final = _run(resume())
    assert final.state == SUCCEEDED, final.error
    meta = registry.resolve("inline")
    assert meta.dataset["source"] == "inline" and meta.dataset["rows"] == 40
    assert not (shared / f"{job_id}.csv").exists()  # dropped once done
    assert json.loads((shared / f"{job_id}.json").read_text())["state"] == SUCCEEDED
