"""Start ``highpeaks-ml serve`` as a subprocess and wait until it is ready.

For tests, benchmarks and scripts, not for production (Kubernetes runs the
server itself). It exists so that the test fixtures, ``scripts/bench_serving.py``,
``scripts/soak.py`` and ``scripts/gpu_check.py`` start a server one way instead
of four: each used to pick its port and judge readiness differently (a free port
picked in advance, which another process can take before the server binds it;
health polling; the log). Here:

- the server binds ``--port 0`` (the kernel picks a free port, so nothing can
  take it first) on 127.0.0.1, with the given home, device, extra flags and
  environment; stdout and stderr go to a log file;
- the bound port comes from the server's ``listening address=HOST:PORT`` log
  line and readiness from its ``ready`` line (written after health turns
  SERVING, and readable with TLS or auth on, where an anonymous health call
  might not be), in text or JSON log format;
- a server that exits first, or is not ready within ``timeout`` seconds, is
  killed and :class:`ServerStartError` carries the end of its log.

The child is ``python -m highpeaks_ml.cli serve ...``, the same entry point
as ``highpeaks-ml serve``. The two lines are INFO, so keep ``--log-level`` at
INFO (the default); to keep the per-RPC lines out of a benchmark, pass
``--rpc-log off`` instead.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

__all__ = ["ServerProcess", "ServerStartError", "parse_line"]

#: The logger whose INFO lines (lifecycle only) the launcher needs at any --log-level.
SERVER_LOGGER = "highpeaks_ml.server"
#: How much of the log a start-up error quotes.
TAIL_LINES = 60

# ``... INFO highpeaks_ml.server [-] listening address=127.0.0.1:50051 version=...``
_TEXT_LISTENING = re.compile(r"\] listening address=(\S+)")
_TEXT_READY = re.compile(r"\] ready$")
# The package directory's parent: a source checkout, or site-packages when installed.
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class ServerStartError(RuntimeError):
    """The server exited, or was not ready in time.

    ``reason`` says which in one line; the message adds the end of the log.
    """

    def __init__(self, reason: str, *, output: str, log_path: Path, returncode: int | None) -> None:
        lines = output.splitlines()[-TAIL_LINES:]
        super().__init__(f"{reason}; the end of its log ({log_path}):\n" + "\n".join(lines))
        self.reason = reason
        self.output = output
        self.log_path = log_path
        self.returncode = returncode


def parse_line(line: str) -> tuple[str, int | None] | None:
    """``("listening", port)`` or ``("ready", None)`` for the server's two start-up lines
    (text or JSON log format); None for any other line."""
    line = line.strip()
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return None
        if not isinstance(record, dict) or record.get("logger") != SERVER_LOGGER:
            return None
        msg, address = record.get("msg"), record.get("address")
        if msg == "ready":
            return ("ready", None)
        if msg == "listening" and isinstance(address, str):
            return _listening(address)
        return None
    if f" {SERVER_LOGGER} " not in line:
        return None
    if _TEXT_READY.search(line):
        return ("ready", None)
    m = _TEXT_LISTENING.search(line)
    return _listening(m.group(1)) if m else None


def _listening(address: str) -> tuple[str, int | None] | None:
    port = address.rsplit(":", 1)[-1]
    return ("listening", int(port)) if port.isdigit() else None


class ServerProcess:
    """``highpeaks-ml serve`` on 127.0.0.1, port 0, as a subprocess; ready when constructed.

    ``extra`` flags come after the launcher's own (``--host``, ``--port``,
    ``--home``, ``--device``), so they win where they repeat one. ``env`` is
    added to this process's environment. The log goes to ``log_path``
    (default ``server-<ns>.log`` beside ``home``) and stays after ``stop()``.
    """

    def __init__(
        self,
        home: Path | str,
        *extra: str,
        device: str | None = "cpu",
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        timeout: float = 120.0,
    ) -> None:
        home = Path(home)
        _check_log_level(extra)
        self.log_path = log_path or home.parent / f"server-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w+b")  # noqa: SIM115 - closed in stop()
        argv = [
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
            *(("--device", device) if device else ()),
            *extra,
        ]
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=_child_env(env)
        )
        self.port = 0
        try:
            self.port = self._wait_ready(timeout)
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        """Everything the server has written so far."""
        return self.log_path.read_text(errors="replace")

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` and return the exit code; ``subprocess.TimeoutExpired`` if it
        has not exited within ``timeout`` seconds (then ``stop()`` kills it)."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def stop(self, grace_s: float = 0) -> None:
        """Kill the server if it still runs (after a SIGTERM and up to ``grace_s``
        seconds to drain, when given) and close the log. Safe to call twice."""
        if self.proc.poll() is None and grace_s > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate(signal.SIGTERM, grace_s)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        port: int | None = None
        pending = b""
        with open(self.log_path, "rb") as reader:
            while True:
                exited = self.proc.poll() is not None  # before reading: no line is missed
                pending += reader.read()
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    found = parse_line(raw.decode(errors="replace"))
                    if found is None:
                        continue
                    if found[0] == "listening":
                        port = found[1]
                    elif port:
                        return port
                if exited:
                    code = self.proc.returncode
                    raise self._error(f"exited with code {code} before it was ready")
                if time.monotonic() >= deadline:
                    raise self._error(f"was not ready within {timeout:g} s")
                time.sleep(0.05)

    def _error(self, what: str) -> ServerStartError:
        return ServerStartError(
            f"highpeaks-ml serve {what}",
            output=self.output(),
            log_path=self.log_path,
            returncode=self.proc.poll(),
        )


def _child_env(env: dict[str, str] | None) -> dict[str, str]:
    """This process's environment plus ``env`` and unbuffered output.

    Run from a source checkout, the checkout also goes first on PYTHONPATH
    (unless it is on it already, so a caller's order, such as gpu_check's
    site folder before the repository, is kept): the server runs the same
    code as its caller, from any working directory.
    """
    out = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if (_PACKAGE_ROOT / "pyproject.toml").is_file():
        paths = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]
        if str(_PACKAGE_ROOT) not in paths:
            out["PYTHONPATH"] = os.pathsep.join([str(_PACKAGE_ROOT), *paths])
    return out


def _check_log_level(extra: tuple[str, ...]) -> None:
    """Refuse a level that hides the INFO start-up lines (the wait would only time out)."""
    levels = [v for flag, v in itertools.pairwise(extra) if flag == "--log-level"]
    levels += [a.split("=", 1)[1] for a in extra if a.startswith("--log-level=")]
    if levels and levels[-1].upper() not in ("DEBUG", "INFO"):
        raise ValueError(
            f"--log-level {levels[-1]} hides the server's start-up lines the launcher reads;"
            " keep INFO and pass --rpc-log off to leave out the line per RPC"
        )
