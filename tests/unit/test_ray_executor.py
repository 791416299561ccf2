"""The Ray backend's pieces that need no cluster: settings, reasons given to clients."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from highpeaks_ml.config import ConfigError
from highpeaks_ml.training.executor import Executor, make_executor
from tests.conftest import ROOT, make_settings

pytest.importorskip("ray", reason="the ray extra is not installed")

from ray import exceptions as rex

from highpeaks_ml.training import ray_bridge
from highpeaks_ml.training.ray_executor import RayExecutor


def test_the_factory_makes_a_ray_executor_that_does_not_import_ray_in_the_server(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, training_backend="ray", ray_address="ray://head:10001")
    executor = make_executor(settings)
    assert isinstance(executor, RayExecutor) and isinstance(executor, Executor)
    assert executor.backend == "ray" and executor.slots == settings.training_workers
    # Not connected before start(): health says what it waits for.
    assert executor.health() == "connecting to the Ray cluster at ray://head:10001"
    # The server process never imports Ray (the bridge process does).
    code = (
        "import sys; from highpeaks_ml.training import ray_executor, executor;"
        " assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_ray_needs_an_address(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs ray_address"):
        make_executor(make_settings(tmp_path, training_backend="ray"))


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (rex.WorkerCrashedError(), "Ray worker process running the job died (after 2 retries)"),
        (rex.NodeDiedError("node gone"), "Ray node running the job was lost"),
        (rex.OutOfMemoryError("/tmp/x killed"), "memory monitor"),
        (rex.OwnerDiedError("ab" * 14, None, ""), "data was lost"),
        (ValueError("/secret/path"), "failed on the Ray cluster (ValueError)"),
    ],
)
def test_failure_reasons_are_clear_and_leak_nothing(exc: BaseException, words: str) -> None:
    reason = ray_bridge.failure_reason(exc)
    assert words in reason
    assert reason.endswith("nothing was published") or "nothing was published" in reason
    assert "/tmp" not in reason and "/secret" not in reason and "Traceback" not in reason


def test_connect_reasons() -> None:
    auth = RuntimeError("Unauthenticated: InvalidAuthToken: Authentication token is missing")
    assert "RAY_AUTH_TOKEN" in ray_bridge.connect_reason(auth)
    assert ray_bridge.connect_reason(ConnectionError("x" * 1000)).startswith("ConnectionError: ")
    assert len(ray_bridge.connect_reason(ConnectionError("x" * 1000))) <= 300
    # No host:port to probe: left to ray.init.
    assert ray_bridge._probe("auto") is None
