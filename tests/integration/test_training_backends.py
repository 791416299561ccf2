"""The same training jobs on both backends: local worker processes and a real Ray cluster.

The Ray cluster is the session's one head (``ray_head`` in tests/conftest.py:
``ray start --head`` on 127.0.0.1, 2 CPUs, token auth); servers attach to it
with ``--training-backend ray --ray-address <GCS address>`` as subprocesses,
the way they run. Tests that destroy a cluster start their own short-lived head.
A "slow" job is a 1000-tree random forest on the digits data (stopped early);
a "medium" one runs long enough to be caught in FITTING and still finishes.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_wine

from highpeaks_ml.client import Client
from highpeaks_ml.v1 import search_pb2, train_pb2
from tests.conftest import ServerProcess

pytest.importorskip("ray", reason="the ray extra is not installed")

from tests.support.ray_cluster import (
    RayHead,
    _listening_sockets,
    _socket_inodes,
    free_port,
)

SUCCEEDED = train_pb2.JOB_STATE_SUCCEEDED
FAILED = train_pb2.JOB_STATE_FAILED
CANCELLED = train_pb2.JOB_STATE_CANCELLED
RUNNING = train_pb2.JOB_STATE_RUNNING
QUEUED = train_pb2.JOB_STATE_QUEUED
FITTING = train_pb2.JOB_STAGE_FITTING
TRAIN_SERVICE = "highpeaks_ml.v1.TrainService"
SLOW = {"n_estimators": 1000}
MEDIUM = {"n_estimators": 150}
#: The job the backends must agree on: data, algorithm, parameters, seed.
SAME_JOB: dict[str, Any] = {
    "algorithm": "random_forest",
    "dataset": "builtin:wine",
    "params": {"n_estimators": 25, "max_depth": 6},
    "seed": 7,
}


def _serve(tmp: Path, backend: str, head: RayHead | None, *extra: str, **env: str) -> ServerProcess:
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    flags = ["--training-backend", backend, "--training-workers", "2", *extra]
    child_env: dict[str, str] = dict(env)
    if head is not None:
        flags += ["--ray-address", head.address]
        child_env = {**head.driver_env(), **child_env}
    return ServerProcess(home, *flags, env=child_env)


@pytest.fixture(scope="module")
def ray_server(
    ray_head: RayHead, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server training on the session's Ray head."""
    server = _serve(tmp_path_factory.mktemp("backend-ray"), "ray", ray_head)
    yield server
    server.stop(grace_s=10)


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server training in its own worker processes (the default backend)."""
    server = _serve(tmp_path_factory.mktemp("backend-local"), "local", None)
    yield server
    server.stop(grace_s=10)


@pytest.fixture(params=["local", "ray"])
def backend_server(request: pytest.FixtureRequest) -> ServerProcess:
    """The server of each backend in turn (the same two servers for the whole module)."""
    return request.getfixturevalue(f"{request.param}_server")


def _client(server: ServerProcess) -> Client:
    return Client(server.target, timeout=60)


def _backend(server: ServerProcess) -> str:
    args = list(server.proc.args)  # type: ignore[arg-type]
    return str(args[args.index("--training-backend") + 1])


def _wait_stage(c: Client, job_id: str, stage: int = FITTING) -> Any:
    for job in c.watch_job(job_id, timeout=240):
        if job.state == RUNNING and job.stage == stage:
            return job
        assert job.state in (QUEUED, RUNNING), (job.state, job.error)
    raise AssertionError("the job ended before reaching the stage")


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _worker_pid(job: Any) -> int:
    m = re.match(r"pid (\d+) on ", job.placement.worker)
    assert m, job.placement
    return int(m.group(1))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


_TRAINED: dict[str, tuple[Any, Any]] = {}


def _train_same_job(server: ServerProcess) -> tuple[Any, Any]:
    """(the ended job, its predictions on the whole wine data); once per backend."""
    backend = _backend(server)
    if backend not in _TRAINED:
        with _client(server) as c:
            job = c.start_training(f"wine-{backend}", **SAME_JOB)
            job = c.wait_job(job.id, timeout=300)
            assert job.state == SUCCEEDED, job.error
            result = c.predict(f"wine-{backend}", load_wine().data.astype(np.float32))
        _TRAINED[backend] = (job, result)
    return _TRAINED[backend]


# --- both backends ---------------------------------------------------------------------


def test_a_job_trains_end_to_end(backend_server: ServerProcess) -> None:
    backend = _backend(backend_server)
    job, result = _train_same_job(backend_server)
    assert job.placement.backend == backend
    assert job.model_version == 1
    if backend == "ray":
        # A Ray node id (hex) and the worker process that ran the task.
        assert re.fullmatch(r"[0-9a-f]{56}", job.placement.node), job.placement
        assert re.match(r"pid \d+ on \S+", job.placement.worker), job.placement
    else:
        assert job.placement.node and job.placement.worker.startswith("pid ")
    assert len(result.labels) == len(load_wine().target)
    # A real model: most of its own training data right.
    assert np.mean(result.labels == load_wine().target) > 0.9
    with _client(backend_server) as c:
        assert c.health(TRAIN_SERVICE) == "SERVING"


def test_same_data_and_seed_give_the_same_model_on_both_backends(
    local_server: ServerProcess, ray_server: ServerProcess
) -> None:
    """The pipeline is the same code with the same seed and n_jobs on both sides: the
    predictions (labels and probabilities) must be identical, not just close."""
    results = {"local": _train_same_job(local_server), "ray": _train_same_job(ray_server)}
    (local_job, local), (ray_job, ray) = results["local"], results["ray"]
    np.testing.assert_array_equal(local.labels, ray.labels)
    np.testing.assert_array_equal(local.probabilities, ray.probabilities)
    assert dict(local_job.metrics) == dict(ray_job.metrics)


# --- Ray only ----------------------------------------------------------------------------


def test_ray_cluster_and_driver_listen_on_loopback_only(
    ray_head: RayHead, ray_server: ServerProcess
) -> None:
    with _client(ray_server) as c:
        # A job first: the bridge is connected and Ray has started workers.
        job = c.wait_job(c.start_training("iris", "logistic_regression").id, 120)
        assert job.state == SUCCEEDED, job.error
    listening = ray_head.listening()
    assert listening, "the head listens nowhere?"
    # The bridge (the server's Ray driver process) listens too (its core worker).
    by_inode = _listening_sockets()
    for pid in _children(ray_server.pid):
        listening |= {by_inode[i] for i in _socket_inodes(pid) if i in by_inode}
    outside = {a for a in listening if not a.rsplit(":", 1)[0].endswith("127.0.0.1")}
    assert not outside, f"Ray listens beyond loopback: {sorted(outside)}"


def test_cancel_on_ray_kills_the_task(ray_server: ServerProcess) -> None:
    with _client(ray_server) as c:
        job = c.start_training("digits-cancel", "random_forest", "builtin:digits", params=SLOW)
        running = _wait_stage(c, job.id)
        pid = _worker_pid(running)
        assert _alive(pid)
        c.cancel_job(job.id)
        ended = c.wait_job(job.id, timeout=60)
        assert ended.state == CANCELLED, ended.error
        # force-cancel kills the Ray worker process that ran the fit.
        _wait_until(lambda: not _alive(pid), 30, "the Ray worker to be killed")
        assert not [m for m in c.list_models() if m.name == "digits-cancel"]


def test_a_lost_ray_worker_is_retried_and_published_once(ray_server: ServerProcess) -> None:
    with _client(ray_server) as c:
        job = c.start_training("digits-retry", "random_forest", "builtin:digits", params=MEDIUM)
        running = _wait_stage(c, job.id)
        os.kill(_worker_pid(running), signal.SIGKILL)
        ended = c.wait_job(job.id, timeout=240)
        assert ended.state == SUCCEEDED, ended.error
        assert ended.model_version == 1
        assert [v.version for v in c.get_model("digits-retry").versions] == [1]


def test_a_ray_worker_lost_on_every_try_fails_the_job_clearly(
    ray_head: RayHead, ray_server: ServerProcess
) -> None:
    with _client(ray_server) as c:
        job = c.start_training("digits-lost", "random_forest", "builtin:digits", params=SLOW)
        _wait_stage(c, job.id)
        killed: set[int] = set()
        deadline = time.monotonic() + 240
        while c.get_job(job.id).state in (QUEUED, RUNNING):
            assert time.monotonic() < deadline, "the job did not end"
            # A Ray worker running the task is titled "ray::highpeaks-ml-job-<job id>".
            for pid in ray_head.pids():
                if pid not in killed and f"job-{job.id}" in _cmdline(pid):
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            time.sleep(0.1)
        ended = c.get_job(job.id)
        assert ended.state == FAILED
        assert "Ray worker process running the job died" in ended.error, ended.error
        assert "nothing was published" in ended.error
        assert len(killed) >= 3  # the first try and two retries
        assert not [m for m in c.list_models() if m.name == "digits-lost"]


def test_a_trainer_restart_ends_its_ray_job_interrupted(ray_head: RayHead, tmp_path: Path) -> None:
    server = _serve(tmp_path, "ray", ray_head)
    try:
        with _client(server) as c:
            job = c.start_training("digits-restart", "random_forest", "builtin:digits", params=SLOW)
            pid = _worker_pid(_wait_stage(c, job.id))
        server.terminate(signal.SIGKILL)
        # The bridge (the driver) dies with the server and Ray ends the tasks it owned.
        _wait_until(lambda: not _alive(pid), 60, "Ray to end the orphaned task")
    finally:
        server.stop()
    again = _serve(tmp_path, "ray", ray_head)
    try:
        with _client(again) as c:
            ended = c.get_job(job.id)
            assert ended.state == FAILED
            assert "interrupted" in ended.error
            assert not [m for m in c.list_models() if m.name == "digits-restart"]
    finally:
        again.stop()


def test_ray_head_lost_fails_running_and_queued_jobs_and_predictions_go_on(
    tmp_path: Path,
) -> None:
    """A short-lived head of its own, stopped while one job runs and one is queued."""
    head = RayHead(num_cpus=1).start()
    try:
        # Ray ends a driver whose GCS stays unreachable this long (default 60 s).
        server = _serve(
            tmp_path,
            "ray",
            head,
            "--training-workers",
            "1",
            RAY_gcs_rpc_server_reconnect_timeout_s="5",
        )
        try:
            with _client(server) as c:
                quick = c.wait_job(c.start_training("iris", "logistic_regression").id, 120)
                assert quick.state == SUCCEEDED, quick.error
                slow = c.start_training(
                    "digits-slow", "random_forest", "builtin:digits", params=SLOW
                )
                _wait_stage(c, slow.id)
                queued = c.start_training("iris", "logistic_regression")
                assert c.get_job(queued.id).state == QUEUED
                head.stop()
                slow_end = c.wait_job(slow.id, timeout=120)
                assert slow_end.state == FAILED
                assert "lost the connection to the Ray cluster" in slow_end.error
                queued_end = c.wait_job(queued.id, timeout=120)
                assert queued_end.state == FAILED
                assert "Ray cluster" in queued_end.error and "did not run" in queued_end.error
                # The server re-checks the backend's health every 2 s.
                _wait_until(lambda: c.health(TRAIN_SERVICE) == "NOT_SERVING", 30, "health")
                # Predictions do not depend on Ray.
                assert c.health("") == "SERVING"
                out = c.predict("iris", np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32))
                assert out.labels.tolist() == [0]
        finally:
            server.stop()
    finally:
        head.stop()


def test_an_unreachable_ray_cluster_fails_jobs_and_says_so_in_health(tmp_path: Path) -> None:
    nobody = RayHead()  # never started: its address names a port nobody listens on
    nobody.address = f"127.0.0.1:{free_port()}"
    try:
        server = _serve(tmp_path, "ray", nobody)
        try:
            with _client(server) as c:
                job = c.wait_job(c.start_training("iris", "logistic_regression").id, 180)
                assert job.state == FAILED
                assert f"the Ray cluster at {nobody.address} is unreachable" in job.error
                assert "nothing was published" in job.error
                _wait_until(lambda: c.health(TRAIN_SERVICE) == "NOT_SERVING", 30, "health")
                assert c.health("") == "SERVING"
        finally:
            server.stop()
    finally:
        nobody.stop()


def test_a_search_runs_its_trials_as_ray_tasks(ray_server: ServerProcess) -> None:
    """issue 15 on Ray: 8 random trials (one Ray task each, the data put once), then the refit."""
    search = {
        "strategy": "random",
        "max_trials": 8,
        "folds": 3,
        "seed": 3,
        "parallelism": 2,
        "space": {"C": {"low": 0.01, "high": 100.0, "log": True}},
    }
    with _client(ray_server) as c:
        job = c.start_training(
            "searched-on-ray", "logistic_regression", "builtin:breast_cancer", search=search
        )
        job = c.wait_job(job.id, timeout=300)
        assert job.state == SUCCEEDED, job.error
        assert job.placement.backend == "ray"
        assert job.search.trials_total == 8 and job.search.trials_done == 8
        record = c.get_version("searched-on-ray", job.model_version).search
        assert [t.number for t in record.trials] == list(range(8))
        for t in record.trials:
            assert t.state == search_pb2.TRIAL_STATE_SUCCEEDED and len(t.fold_scores) == 3, t.error
        best = max(record.trials, key=lambda t: (t.mean, -t.number))
        assert record.best_trial == best.number
