"""Job record retention through the real server subprocess: an ended job disappears.

A server with a one-second retention trains a tiny model on built-in data;
once the job has ended its record leaves ListTrainingJobs, GetTrainingJob
answers NOT_FOUND, the file under ``<home>/jobs`` is gone, and the version the
job registered is still served. The policy's details (count limit, restarts,
idempotency keys, crash leftovers) are unit-tested in
tests/unit/test_training_jobs_retention.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from highpeaks_ml.client import Client
from highpeaks_ml.v1 import train_pb2


def test_an_ended_job_is_removed_after_the_retention(server_process, home: Path):
    server = server_process("--job-retention-s", "1", "--max-job-records", "10")
    with Client(server.target, timeout=60) as client:
        job = client.start_training(
            "tiny", "logistic_regression", "builtin:iris", idempotency_key="retention-1"
        )
        done = client.wait_job(job.id, timeout=120)
        assert done.state == train_pb2.JOB_STATE_SUCCEEDED, done.error
        ended = time.monotonic()
        deadline = ended + 20
        while job.id in [j.id for j in client.list_jobs()]:
            assert time.monotonic() < deadline, "the ended job was never removed"
            time.sleep(0.1)
        assert time.monotonic() - ended >= 0.5  # kept for (about) the retention first
        with pytest.raises(grpc.RpcError) as err:
            client.get_job(job.id)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert not (home / "jobs" / f"{job.id}.json").exists()
        # The version it registered is the registry's, untouched.
        assert client.get_version("tiny", done.model_version).version == done.model_version
        # The key is free again: a new job, not the removed one.
        again = client.start_training(
            "tiny", "logistic_regression", "builtin:iris", idempotency_key="retention-1"
        )
        assert again.id != job.id
