"""A real Ray head for tests: ``ray start --head`` on loopback, stopped without ``ray stop``.

One :class:`RayHead` is a one-node Ray cluster the way an operator starts one
(``ray start --head``), confined to this machine and to this test run:

- **Loopback only.** ``--node-ip-address=127.0.0.1`` alone is not enough: Ray
  replaces a loopback address by the machine's network address (and binds
  there) unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is in the environment
  of ``ray start`` and of every driver (despite its name, that switch makes Ray
  keep 127.0.0.1 on Linux too). :meth:`RayHead.listening` reads which
  addresses its processes listen on, so a test can check it.
- **Its own ports.** The GCS port is picked by Ray (``--port=0``); every other
  port with a fixed default (Ray client server 10001, dashboard agent 52365,
  autoscaler metrics 44217, ...) gets a free one, so two heads (the session's
  and a short-lived one for destructive tests, or two test runs) never collide.
- **Token authentication on** (``RAY_AUTH_MODE=token`` with a random
  ``RAY_AUTH_TOKEN``): ``ray start`` leaves it off unless told. A driver needs
  :meth:`RayHead.driver_env` in its environment.
- **Stopped by process group, never by name.** ``ray stop`` kills every Ray
  process of the machine (other test runs', a developer's cluster). The head
  is started in a process group of its own, which its daemons keep (the
  raylet's workers are its children), and :meth:`RayHead.stop` signals only
  those: the raylet first, then the agents, the GCS last (the order
  ``ray stop`` uses), SIGKILL after a grace.
- Dashboard off, 2 CPUs, a short temp dir (Ray's unix socket paths must stay
  under 108 bytes), usage stats off.
"""

from __future__ import annotations

import contextlib
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

__all__ = ["RayHead", "free_port"]

#: ``ray start`` takes about 5 s on an idle 2-core machine; much more under load.
START_TIMEOUT_S = 120.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_cli() -> str:
    here = Path(sys.executable).parent / "ray"
    found = str(here) if here.exists() else shutil.which("ray")
    if not found:
        raise RuntimeError("the ray CLI is not installed (the `ray` extra: pip install '.[ray]')")
    return found


def _group_pids(pgid: int) -> dict[int, str]:
    """{pid: command name} of the live processes in process group ``pgid`` and of their
    descendants (Linux /proc): the raylet starts Ray workers in process groups of their own."""
    procs: dict[int, tuple[str, int, int]] = {}  # pid -> (comm, ppid, pgrp)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            procs[int(entry.name)] = (comm, int(fields[1]), int(fields[2]))
    found = {pid for pid, (_, _, group) in procs.items() if group == pgid}
    while True:
        more = {pid for pid, (_, ppid, _) in procs.items() if ppid in found} - found
        if not more:
            break
        found |= more
    return {pid: procs[pid][0] for pid in found}


def _group_pids_name(pid: int) -> str:
    """The command name of live process ``pid``, or "" (gone, or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    if stat[stat.rindex(")") + 2 :].split()[0] == "Z":
        return ""
    return stat[stat.index("(") + 1 : stat.rindex(")")]


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _listening_sockets() -> dict[str, str]:
    """{inode: "address:port"} of every TCP socket in LISTEN state (IPv4 and IPv6)."""
    out: dict[str, str] = {}
    for name, width in (("tcp", 8), ("tcp6", 32)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state != "0A":  # LISTEN
                continue
            hex_addr, hex_port = local.split(":")
            raw = bytes.fromhex(hex_addr)
            # /proc/net shows each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            family = socket.AF_INET if width == 8 else socket.AF_INET6
            out[inode] = f"{socket.inet_ntop(family, words)}:{int(hex_port, 16)}"
    return out


class RayHead:
    """One Ray head on 127.0.0.1 (see the module docstring); started by :meth:`start`."""

    def __init__(self, num_cpus: int = 2) -> None:
        self.num_cpus = num_cpus
        self.token = secrets.token_hex(32)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="hpray-"))
        self.client_port = 0
        self.address = ""  # the GCS address, "127.0.0.1:PORT"
        self.pgid = 0

    # --- environment ---------------------------------------------------------------

    def driver_env(self) -> dict[str, str]:
        """What a driver (the server's Ray bridge, a script) needs in its environment."""
        return {
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    @property
    def client_address(self) -> str:
        """The Ray client (``ray://``) address, as the Kubernetes trainer uses."""
        return f"ray://127.0.0.1:{self.client_port}"

    # --- life cycle ------------------------------------------------------------------

    def start(self) -> RayHead:
        """Run ``ray start --head`` and wait until the cluster is up."""
        self.client_port = free_port()
        env = {
            **os.environ,
            **self.driver_env(),
            "AUTOSCALER_METRIC_PORT": str(free_port()),
        }
        argv = [
            _ray_cli(),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            "--port=0",
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
            f"--ray-client-server-port={self.client_port}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ]
        # A new process group: the daemons `ray start` leaves behind keep it, which
        # is how stop() finds them (and only them). Not a new session: with the
        # kernel's autogroup scheduling a session gets its own share of the CPUs,
        # which would favour Ray over local workers in a benchmark on a busy machine.
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            process_group=0,
        )
        self.pgid = proc.pid
        try:
            output, _ = proc.communicate(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError("ray start --head did not finish in time") from None
        current = self.temp_dir / "ray_current_cluster"
        if proc.returncode != 0 or not current.exists():
            self.stop()
            raise RuntimeError(f"ray start --head failed ({proc.returncode}):\n{output[-3000:]}")
        self.address = current.read_text().strip()
        return self

    def pids(self) -> dict[int, str]:
        """{pid: name} of this cluster's live processes (its Ray workers included:
        they are the raylet's children, in process groups of their own)."""
        return _group_pids(self.pgid) if self.pgid else {}

    def worker_pids(self) -> list[int]:
        """The Ray worker processes (``ray::IDLE``, ``ray::<task name>``), not the agents."""
        # /proc's comm is cut at 15 characters: "ray::DashboardA", "ray::RuntimeEnv".
        agents = ("ray::Dashboard", "ray::RuntimeEnv")
        return [
            pid
            for pid, name in self.pids().items()
            if name.startswith("ray::") and not name.startswith(agents)
        ]

    def listening(self) -> set[str]:
        """Every "address:port" this cluster's processes listen on."""
        by_inode = _listening_sockets()
        found = set()
        for pid in self.pids():
            for inode in _socket_inodes(pid):
                if inode in by_inode:
                    found.add(by_inode[inode])
        return found

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop this cluster's processes (the raylet, the agents, then the GCS) and
        remove its temp dir. Safe to call twice."""
        if self.pgid:
            everyone = self.pids()  # now: a worker orphaned by its raylet loses the link
            order = (
                lambda name: name == "raylet",
                lambda name: name != "gcs_server",
                lambda name: True,
            )
            for chosen in order:
                pids = [pid for pid, name in self.pids().items() if chosen(name)]
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + grace_s
                while time.monotonic() < deadline and set(pids) & set(self.pids()):
                    time.sleep(0.1)
            left = self.pids()
            left.update({p: n for p, n in everyone.items() if _group_pids_name(p) == n})
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)
            self.pgid = 0
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def kill_gcs(self) -> None:
        """Kill the head's GCS (the cluster's control plane) with SIGKILL: the head is gone."""
        for pid, name in self.pids().items():
            if name == "gcs_server":
                os.kill(pid, signal.SIGKILL)
