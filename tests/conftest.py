"""Shared fixtures: the real server on port 0, as a subprocess, with a temporary home.

Servers run as subprocesses (``highpeaks-ml serve``), the way users run them.
An in-process grpc.aio server on a background thread's event loop can block
in ``server.stop()`` after a streaming RPC ended with INTERNAL/UNAVAILABLE
(seen with grpcio 1.85; the main-thread loop that ``serve`` uses is not
affected), so the suite does not host servers on threads.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from highpeaks_ml.config import Settings

ROOT = Path(__file__).resolve().parent.parent


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


class ServerProcess:
    """``highpeaks-ml serve`` as a subprocess on a free port."""

    LISTEN = re.compile(r"listening address=\S+:(\d+)")

    def __init__(self, home: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.log_path = home.parent / f"server-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w+b")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "highpeaks_ml.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--home",
                str(home),
                "--device",
                "cpu",
                *extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        self.port = self._wait_port()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_port(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.LISTEN.search(self.output())
            if m and "ready" in self.output():
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            time.sleep(0.05)
        raise TimeoutError(f"server did not become ready:\n{self.output()}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()


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
