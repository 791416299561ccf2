"""JobManager's tracer hook in-process: what a traced job keeps, across a restart.

The spans themselves (through a real OTLP receiver) are checked in
tests/integration/test_tracing.py; here a recording tracer (a fake of the
``JobTracer`` seam, not of anything users meet) sees what the manager hands
it. The worker processes are real.
"""

from __future__ import annotations

import asyncio
import json
import time

from highpeaks_ml.registry.local import LocalModelStore
from highpeaks_ml.training.datasets import DatasetStore
from highpeaks_ml.training.jobs import (
    FAILED,
    QUEUED,
    RUNNING,
    STAGES,
    SUCCEEDED,
    Job,
    JobManager,
    TrainRequest,
)
from highpeaks_ml.training.spec import BuiltinDataset
from tests.conftest import make_settings

PARENT = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"


class RecordingTracer:
    """Answers ``parent`` for the current call; keeps every ended job it is given."""

    def __init__(self, parent: str) -> None:
        self.parent = parent
        self.ended: list[Job] = []

    def current_parent(self) -> str:
        return self.parent

    def job_ended(self, job: Job) -> None:
        self.ended.append(job.snapshot())


def _record(job_id: str, state: str, trace_parent: str) -> dict:
    job = Job(
        id=job_id,
        model_name="m",
        algorithm="logistic_regression",
        request=TrainRequest("m", "logistic_regression", BuiltinDataset("iris")),
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
        features=[
            [f, "numeric"]
            for f in (
                "sepal length (cm)",
                "sepal width (cm)",
                "petal length (cm)",
                "petal width (cm)",
            )
        ],
        time_limit_s=60.0,
        trace_parent=trace_parent,
    )
    return job.to_dict()


def test_jobs_from_before_a_restart_keep_their_trace_and_stage_times(tmp_path):
    home = tmp_path / "home"
    (home / "jobs").mkdir(parents=True)
    for job_id, state in (("interrupted", RUNNING), ("waiting", QUEUED)):
        record = _record(job_id, state, PARENT)
        (home / "jobs" / f"{job_id}.json").write_text(json.dumps(record))
    manager = JobManager(make_settings(home), LocalModelStore(home), DatasetStore(home))
    tracer = RecordingTracer(parent="")  # a later call that was not sampled
    manager.tracer = tracer

    async def scenario():
        await manager.start()
        try:
            waiting = await manager._until_final("waiting")
            fresh = await manager.start_training(
                TrainRequest("m", "logistic_regression", BuiltinDataset("iris"))
            )
            return waiting, await manager._until_final(fresh.id)
        finally:
            await manager.begin_shutdown()
            await manager.close()

    waiting, fresh = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert waiting.state == SUCCEEDED and fresh.state == SUCCEEDED
    # Only the jobs of a traced call reach the tracer: the interrupted one
    # (recovered as FAILED) and the queued one that ran after the restart.
    by_id = {j.id: j for j in tracer.ended}
    assert set(by_id) == {"interrupted", "waiting"}
    assert by_id["interrupted"].state == FAILED and by_id["interrupted"].trace_parent == PARENT
    ran = by_id["waiting"]
    assert ran.trace_parent == PARENT
    assert [s for s, _ in ran.stage_times] == list(STAGES)
    times = [at for _, at in ran.stage_times]
    assert ran.created_at <= times[0] and times == sorted(times) and times[-1] <= ran.finished_at
    # Kept in the record; an untraced job keeps nothing.
    stored = json.loads((home / "jobs" / "waiting.json").read_text())
    assert stored["trace_parent"] == PARENT and len(stored["stage_times"]) == len(STAGES)
    assert fresh.trace_parent == "" and fresh.stage_times == []
