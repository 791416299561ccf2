"""Retention of ended training job records: by age, by count, across restarts, crash leftovers.

Real files in a temporary home; the only stand-in is ``IdleExecutor`` for the
executor (a fake of the ``Executor`` protocol, not a mock): it starts each job
and never finishes it until cancelled, so a job stays RUNNING (or QUEUED
behind it) for as long as a test needs, without spawning an interpreter that
imports scikit-learn. The real executor is covered by
tests/unit/test_training_jobs.py and the integration tests
(tests/integration/test_job_retention.py for retention).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from highpeaks_ml import metrics
from highpeaks_ml.config import Settings, add_settings_flags, settings_from_args
from highpeaks_ml.errors import NotFound
from highpeaks_ml.training.datasets import DatasetStore
from highpeaks_ml.training.executor import Executor
from highpeaks_ml.training.jobs import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobManager,
    TrainRequest,
)
from highpeaks_ml.training.spec import (
    BuiltinDataset,
    Cancelled,
    JobEvent,
    JobSpec,
    Placement,
    Started,
)
from tests.conftest import make_settings
from tests.unit.test_training_jobs import RefusingStore, _record

DAY = 24 * 3600.0
PRUNED = "highpeaks_ml_training_job_records_pruned_total"


class IdleExecutor:
    """An ``Executor`` whose jobs start at once and never end until cancelled."""

    backend = "idle"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cancel: dict[str, asyncio.Event] = {}

    @property
    def slots(self) -> int:
        return self.settings.training_workers

    async def start(self) -> None:
        pass

    def health(self) -> str | None:
        return None

    async def cancel(self, job_id: str) -> None:
        self._cancel.setdefault(job_id, asyncio.Event()).set()

    async def close(self) -> None:
        for event in self._cancel.values():
            event.set()

    async def run(self, spec: JobSpec) -> AsyncIterator[JobEvent]:
        cancel = self._cancel.setdefault(spec.job_id, asyncio.Event())
        yield Started(Placement(self.backend))
        await cancel.wait()
        yield Cancelled()


def test_the_fake_is_an_executor(tmp_path):
    assert isinstance(IdleExecutor(make_settings(tmp_path)), Executor)


@pytest.fixture
def fresh() -> Iterator[metrics.Metrics]:
    """A fresh Metrics installed for the test, the previous one put back after."""
    before = metrics.current()
    m = metrics.Metrics(process=False)
    metrics.install(m)
    yield m
    metrics.install(before)


def pruned(m: metrics.Metrics, reason: str) -> float:
    return m.registry.get_sample_value(PRUNED, {"reason": reason}) or 0.0


def write_record(
    home: Path, job_id: str, state: str, ended_ago: float = 0.0, key: str = "", **extra: Any
) -> Path:
    """A job record as JobManager writes it; ended ``ended_ago`` seconds ago (final states)."""
    data = _record(job_id, state, "m")
    now = time.time()
    data["created_at"] = now - ended_ago - 60
    if state in (SUCCEEDED, FAILED, CANCELLED):
        data["finished_at"] = now - ended_ago
    data["request"]["idempotency_key"] = key
    data.update(extra)
    path = home / "jobs" / f"{job_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def manager(home: Path, **overrides: Any) -> JobManager:
    settings = make_settings(home, **overrides)
    return JobManager(settings, RefusingStore(), DatasetStore(home), IdleExecutor(settings))


def run(coro: Any) -> Any:
    started = time.monotonic()
    result = asyncio.run(asyncio.wait_for(coro, 60))
    # A hang that a timeout's cancel "resolved" would otherwise pass unseen.
    assert time.monotonic() - started < 30, "the scenario hung"
    return result


def job_ids(m: JobManager) -> set[str]:
    return {j.id for j in m.list(limit=10_000)}


def files(home: Path) -> tuple[list[str], list[str]]:
    return sorted(os.listdir(home / "jobs")), sorted(os.listdir(home / "tmp"))


async def until(predicate: Any, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def iris(key: str = "") -> TrainRequest:
    return TrainRequest("m", "logistic_regression", BuiltinDataset("iris"), idempotency_key=key)


def test_settings_defaults_validation_and_flags(monkeypatch):
    monkeypatch.delenv("HIGHPEAKS_ML_JOB_RETENTION_S", raising=False)
    monkeypatch.delenv("HIGHPEAKS_ML_MAX_JOB_RECORDS", raising=False)
    s = Settings.load()
    assert s.job_retention_s == 7 * DAY and s.max_job_records == 1000
    for bad in ({"job_retention_s": -1}, {"max_job_records": -1}):
        with pytest.raises(ValidationError):
            Settings.load(bad)
    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    args = parser.parse_args(["--job-retention-s", "60", "--max-job-records", "5"])
    s = settings_from_args(args)
    assert (s.job_retention_s, s.max_job_records) == (60.0, 5)


def test_start_up_removes_records_past_the_retention(tmp_path, fresh):
    home = tmp_path / "home"
    write_record(home, "old-ok", SUCCEEDED, ended_ago=8 * DAY)
    write_record(home, "old-failed", FAILED, ended_ago=7 * DAY + 60)
    # Its inline data and a staging leftover go with it.
    (home / "jobs" / "old-failed.csv").write_text("a,b\n1,2\n")
    (home / "tmp" / "job-old-failed.onnx.part").write_bytes(b"half")
    write_record(home, "recent", CANCELLED, ended_ago=DAY)
    write_record(home, "waiting", QUEUED, created_at=time.time() - 30 * DAY)
    m = manager(home)

    async def scenario() -> None:
        await m.start()
        try:
            assert job_ids(m) == {"recent", "waiting"}
            for gone in ("old-ok", "old-failed"):
                with pytest.raises(NotFound):
                    m.get(gone)
                with pytest.raises(NotFound):
                    await anext(aiter(m.watch(gone)))
            assert pruned(fresh, "age") == 2
            # While serving: a later pass removes "recent" once it is due.
            assert await m.prune(now=time.time() + 6 * DAY + 60) == 1
            assert job_ids(m) == {"waiting"}
            assert pruned(fresh, "age") == 3
        finally:
            await m.begin_shutdown()
            await m.close()

    run(scenario())
    assert files(home) == (["waiting.json"], [])


def test_the_count_limit_keeps_the_newest_ended_records(tmp_path, fresh):
    home = tmp_path / "home"
    for i in range(6):  # e0 ended first, e5 last
        write_record(home, f"e{i}", SUCCEEDED if i % 2 else FAILED, ended_ago=600.0 - i)
    write_record(home, "waiting", QUEUED, created_at=time.time() - 7200)
    m = manager(home, job_retention_s=0, max_job_records=3)

    async def scenario() -> None:
        await m.start()
        try:
            assert job_ids(m) == {"e3", "e4", "e5", "waiting"}
            assert pruned(fresh, "count") == 3 and pruned(fresh, "age") == 0
            # Queued and running jobs are not counted and never removed.
            await until(lambda: m.get("waiting").state == RUNNING)
            queued = await m.start_training(iris())
            assert await m.prune(now=time.time() + 1000 * DAY) == 0
            # A job that ends pushes the oldest ended record out (the retention
            # task is woken by the end; no waiting for its 5-minute pass).
            await m.cancel("waiting")
            await until(lambda: "e3" not in job_ids(m))
            assert job_ids(m) == {"e4", "e5", "waiting", queued.id}
            assert pruned(fresh, "count") == 4
        finally:
            await m.begin_shutdown()
            await m.close()

    run(scenario())
    assert not (home / "jobs" / "e3.json").exists()


def test_queued_and_running_jobs_are_never_removed(tmp_path, fresh):
    home = tmp_path / "home"
    (home / "jobs").mkdir(parents=True)
    m = manager(home, job_retention_s=0.001, max_job_records=1)

    async def scenario() -> None:
        await m.start()
        try:
            first = await m.start_training(iris())
            second = await m.start_training(iris())
            third = await m.start_training(iris())
            await until(lambda: m.get(first.id).state == RUNNING)
            assert await m.prune(now=time.time() + 1000 * DAY) == 0
            assert m.get(first.id).state == RUNNING
            assert m.get(second.id).state == m.get(third.id).state == QUEUED
            assert sorted(files(home)[0]) == sorted(f"{j.id}.json" for j in (first, second, third))
            await m.cancel(second.id)
            await m.cancel(first.id)
            # Both ended; past the (tiny) retention they go, the queued one stays.
            await m.prune(now=time.time() + 1)
            assert job_ids(m) == {third.id}
            # (the retention task may have removed one first, by count)
            assert pruned(fresh, "age") + pruned(fresh, "count") == 2
        finally:
            await m.begin_shutdown()
            await m.close()

    run(scenario())


def test_zero_keeps_records_forever(tmp_path, fresh):
    home = tmp_path / "home"
    write_record(home, "ancient", SUCCEEDED, ended_ago=3650 * DAY)
    for i in range(5):
        write_record(home, f"e{i}", FAILED, ended_ago=400 * DAY)
    m = manager(home, job_retention_s=0, max_job_records=0)

    async def scenario() -> None:
        await m.start()
        try:
            assert len(job_ids(m)) == 6
            assert await m.prune(now=time.time() + 1e6 * DAY) == 0
            assert "training-retention" not in {t.get_name() for t in m._tasks}
        finally:
            await m.begin_shutdown()
            await m.close()

    run(scenario())
    assert len(files(home)[0]) == 6
    assert pruned(fresh, "age") == pruned(fresh, "count") == 0


def test_removed_records_stay_removed_after_a_restart(tmp_path):
    home = tmp_path / "home"
    write_record(home, "old", SUCCEEDED, ended_ago=30 * DAY)
    write_record(home, "mid", FAILED, ended_ago=3 * DAY)
    write_record(home, "new", SUCCEEDED, ended_ago=60)
    (home / "jobs" / "mid.csv").write_text("a,b\n1,2\n")  # an ended job's leftover

    async def first_run() -> None:
        m = manager(home)
        await m.start()
        try:
            assert job_ids(m) == {"mid", "new"}
            assert await m.prune(now=time.time() + 5 * DAY) == 1  # "mid", while serving
        finally:
            await m.begin_shutdown()
            await m.close()

    async def second_run() -> set[str]:
        m = manager(home)
        await m.start()
        try:
            return job_ids(m)
        finally:
            await m.begin_shutdown()
            await m.close()

    run(first_run())
    assert files(home) == (["new.json"], [])
    assert run(second_run()) == {"new"}
    assert files(home) == (["new.json"], [])


def test_an_idempotency_key_whose_job_was_removed_starts_a_new_job(tmp_path):
    home = tmp_path / "home"
    write_record(home, "pruned-at-start", SUCCEEDED, ended_ago=8 * DAY, key="nightly-1")
    write_record(home, "kept", SUCCEEDED, ended_ago=60, key="nightly-2")
    m = manager(home)

    async def scenario() -> None:
        await m.start()
        try:
            fresh_job = await m.start_training(iris("nightly-1"))
            assert fresh_job.id != "pruned-at-start" and fresh_job.state == QUEUED
            assert (await m.start_training(iris("nightly-1"))).id == fresh_job.id
            assert (await m.start_training(iris("nightly-2"))).id == "kept"
            # Removed while serving: the key is free again, and only that key.
            assert await m.prune(now=time.time() + 7 * DAY) == 1
            again = await m.start_training(iris("nightly-2"))
            assert again.id not in ("kept", fresh_job.id)
            assert (await m.start_training(iris("nightly-2"))).id == again.id
            assert (await m.start_training(iris("nightly-1"))).id == fresh_job.id
            assert set(m._idempotency.values()) <= job_ids(m)
        finally:
            await m.begin_shutdown()
            await m.close()

    run(scenario())


def test_crash_leftovers_do_not_break_start_up(tmp_path):
    home = tmp_path / "home"
    write_record(home, "keep", SUCCEEDED, ended_ago=60)
    # A crash inside write_atomic: its temp file, never renamed.
    (home / "jobs" / f".keep.json.{'ab' * 16}.tmp").write_text('{"id": "ke')
    # A record damaged outside the server's writes (write_atomic never leaves one).
    (home / "jobs" / "torn.json").write_text('{"id": "torn", "state": "SUCC')
    # A crash in a prune after the inline data went, before the record did.
    write_record(home, "half-pruned", FAILED, ended_ago=30 * DAY)
    # Inline data whose record is gone (a crash in between, either way round).
    (home / "jobs" / "orphan.csv").write_text("a,b\n1,2\n")
    (home / "tmp" / "job-orphan.onnx").write_bytes(b"staging")
    m = manager(home)

    async def scenario() -> set[str]:
        await m.start()
        try:
            return job_ids(m)
        finally:
            await m.begin_shutdown()
            await m.close()

    assert run(scenario()) == {"keep"}
    # The damaged record is left for an operator to look at (and skipped with a warning).
    assert files(home) == (["keep.json", "torn.json"], [])
