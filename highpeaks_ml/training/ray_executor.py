"""``training_backend=ray``: each training job is one task on a Ray cluster.

The server side of the Ray backend. It does not import Ray: it starts a child
process, the *bridge* (``training/ray_bridge.py``, the Ray driver), and talks
to it over a pipe; see that module for why the driver is not the server.

- ``start()`` starts the bridge, which connects to ``settings.ray_address``
  (``ray://host:10001`` through the Ray client server, or the head's GCS
  address ``host:6379`` from a machine that is a Ray node) in the background:
  the server starts serving at once, whether the cluster is up or not.
- ``run(spec)`` hands the spec to the bridge, which submits one Ray task with
  the job's CPUs and memory as Ray resources; the task's events come back as
  they happen (``Started`` once a Ray worker runs it: until then the job shows
  QUEUED, waiting for cluster resources).
- ``cancel(job_id)``: ``ray.cancel(force=True)`` on the task (its worker
  process is killed; a cancelled task is not retried).
- A lost worker or node: Ray re-runs the task up to ``MAX_RETRIES`` times, then
  the job ends FAILED saying so.
- Cluster unreachable (at start, or later: the bridge then exits and is
  restarted with back-off): ``health()`` says so, which the Train service's
  health reports; a job that gets its turn meanwhile ends FAILED with the same
  reason ("the Ray cluster at ... is unreachable"), the runs open at the loss
  end FAILED ("lost the connection ..."). Predictions never depend on Ray.
- A trainer restart: the bridge dies with the server, and with it every task it
  owned; the job manager marks those jobs FAILED "interrupted" when it starts
  again (docs/training.md). Nothing is re-attached or re-submitted, and only the
  server publishes, once per job id.

Search trials (``run_trial``, the ``TrialExecutor`` protocol): one Ray task
per trial, the search job's data put in the object store once (see
``ray_bridge``); cancelling the awaiting task cancels the Ray task.

``slots`` is ``settings.training_workers``: how many jobs are submitted to the
cluster at once (the rest wait in the job manager's queue, where they can be
listed and cancelled). Set it to what the cluster can run at its largest; Ray
queues what does not fit yet, and KubeRay's autoscaler adds workers for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import threading
from collections.abc import AsyncIterator
from typing import Any

from highpeaks_ml.config import ConfigError, Settings
from highpeaks_ml.training.executor import RAY, spawn_child
from highpeaks_ml.training.spec import (
    Cancelled,
    Failed,
    JobEvent,
    JobSpec,
    Succeeded,
    TrialResult,
    TrialSpec,
)

log = logging.getLogger("highpeaks_ml.jobs")

_FINAL = (Succeeded, Failed, Cancelled)
#: How long a job waits for a bridge that is still connecting before it fails.
CONNECT_WAIT_S = 120.0
#: Back-off between bridge restarts after the cluster was unreachable or lost.
RECONNECT_MIN_S = 2.0
RECONNECT_MAX_S = 60.0


class _BridgeProcess:
    """The bridge child process and the server's end of its pipe."""

    def __init__(self, ctx: Any, settings: Settings) -> None:
        from highpeaks_ml.training import ray_bridge

        self.proc, self.conn = spawn_child(
            ctx,
            ray_bridge.main,
            (settings.ray_address, settings.log_level, settings.log_format.value),
            "highpeaks-ml-ray-bridge",
        )
        self._send_lock = threading.Lock()

    def send(self, message: Any) -> bool:
        """Send ``message`` (blocking: call it off the event loop); False if the bridge is gone."""
        try:
            with self._send_lock:
                self.conn.send(message)
            return True
        except (OSError, ValueError):
            return False

    def stop(self, grace_s: float) -> None:
        """Ask the bridge to stop (it shuts its Ray driver down), then kill it; blocking."""
        if self.proc.is_alive():
            self.send(None)
            self.proc.join(grace_s)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        with contextlib.suppress(OSError):
            self.conn.close()


class RayExecutor:
    """Runs each job as a Ray task through a bridge process (see the module docstring)."""

    backend = RAY

    def __init__(self, settings: Settings) -> None:
        if not settings.ray_address:
            raise ConfigError(
                "training_backend=ray needs ray_address (ray://HEAD:10001, or the head's"
                " GCS address HOST:6379)"
            )
        self.settings = settings
        self.address = settings.ray_address
        self._ctx = multiprocessing.get_context("spawn")
        self._bridge: _BridgeProcess | None = None
        self._runs: dict[str, asyncio.Queue[JobEvent]] = {}
        self._trials: dict[str, asyncio.Future[TrialResult]] = {}
        self._cancelled: set[str] = set()
        self._connected = False
        self._problem: str | None = f"connecting to the Ray cluster at {self.address}"
        self._settled: asyncio.Event | None = None  # set once the bridge said connected or not
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def slots(self) -> int:
        """Jobs submitted to the cluster at once (``training_workers``)."""
        return self.settings.training_workers

    async def start(self) -> None:
        """Start the bridge; it connects in the background (start-up never waits for Ray)."""
        self._settled = asyncio.Event()
        self._supervisor = asyncio.create_task(self._supervise(), name="ray-bridge")

    def health(self) -> str | None:
        """None while connected to the cluster, else why jobs cannot run."""
        return None if self._connected else self._problem

    async def cancel(self, job_id: str) -> None:
        """Cancel the job's Ray task (``ray.cancel(force=True)``), or its submission."""
        self._cancelled.add(job_id)
        run = self._runs.get(job_id)
        bridge = self._bridge
        if run is None:
            return
        if bridge is None or not self._connected:
            run.put_nowait(Cancelled())
            return
        if not await asyncio.to_thread(bridge.send, ("cancel", job_id)):
            run.put_nowait(Cancelled())

    async def close(self) -> None:
        """Stop the bridge (Ray cancels the tasks it owned); open runs end Cancelled."""
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        bridge, self._bridge = self._bridge, None
        if bridge is not None:
            await asyncio.to_thread(bridge.stop, 15.0)
        self._connected = False
        self._problem = "the trainer is shutting down"
        for run in self._runs.values():
            run.put_nowait(Cancelled())
        for key, waiting in self._trials.items():
            if not waiting.done():
                waiting.set_result(TrialResult(int(key.rsplit(":", 1)[1]), "CANCELLED"))

    async def run(self, spec: JobSpec) -> AsyncIterator[JobEvent]:
        """Submit ``spec`` as a Ray task; yield its events until the final one."""
        job_id = spec.job_id
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._runs[job_id] = queue
        try:
            if not await self._wait_connected(job_id):
                if job_id in self._cancelled:
                    yield Cancelled()
                else:
                    problem = self._problem or ""
                    if not problem or problem.startswith("connecting"):
                        problem = f"the Ray cluster at {self.address} did not answer in time"
                    yield Failed(
                        f"{problem}; the job did not run and nothing was published"
                        " (start it again once the cluster is back)"
                    )
                return
            bridge = self._bridge
            if job_id in self._cancelled:
                yield Cancelled()
                return
            # Off the loop: a spec carries the dataset's bytes.
            if bridge is None or not await asyncio.to_thread(bridge.send, ("submit", spec)):
                yield Failed(self._lost_reason())
                return
            while True:
                event = await queue.get()
                yield event
                if isinstance(event, _FINAL):
                    return
        finally:
            self._runs.pop(job_id, None)
            self._cancelled.discard(job_id)

    async def run_trial(self, spec: TrialSpec) -> TrialResult:
        """Run one search trial as a Ray task (``TrialExecutor``); cancelling the awaiting
        task cancels the Ray task (``ray.cancel(force=True)``) first."""
        key = f"{spec.job_id}:{spec.number}"
        if not await self._wait_connected(key):
            problem = self._problem or f"the Ray cluster at {self.address} did not answer"
            return TrialResult(spec.number, "FAILED", error=f"{problem}; the trial did not run")
        bridge = self._bridge
        result: asyncio.Future[TrialResult] = asyncio.get_running_loop().create_future()
        self._trials[key] = result
        try:
            if bridge is None or not await asyncio.to_thread(bridge.send, ("trial", key, spec)):
                return TrialResult(spec.number, "FAILED", error=self._lost_reason())
            return await result
        except asyncio.CancelledError:
            if bridge is not None:
                await asyncio.to_thread(bridge.send, ("cancel_trial", key))
            raise
        finally:
            self._trials.pop(key, None)

    # --- the bridge ------------------------------------------------------------------

    def _lost_reason(self) -> str:
        return (
            f"lost the connection to the Ray cluster at {self.address} while the job ran;"
            " nothing was published (start the job again)"
        )

    async def _wait_connected(self, job_id: str) -> bool:
        """Wait (bounded) for a connecting bridge; True when connected."""
        if self._connected:
            return True
        assert self._settled is not None, "start() first"
        waited = 0.0
        while not self._settled.is_set() and waited < CONNECT_WAIT_S:
            if job_id in self._cancelled or self._closed:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), 1.0)
            waited += 1.0
        return self._connected

    async def _supervise(self) -> None:
        """Keep one bridge running: start it, relay its messages, restart it with back-off."""
        assert self._settled is not None
        delay = RECONNECT_MIN_S
        loop = asyncio.get_running_loop()
        while not self._closed:
            bridge = _BridgeProcess(self._ctx, self.settings)
            self._bridge = bridge
            inbox: asyncio.Queue[Any] = asyncio.Queue()

            def reader(b: _BridgeProcess = bridge, q: asyncio.Queue[Any] = inbox) -> None:
                # Blocking receives in a thread: results carry ONNX bytes.
                while True:
                    try:
                        message = b.conn.recv()
                    except (EOFError, OSError):
                        message = None
                    try:
                        loop.call_soon_threadsafe(q.put_nowait, message)
                    except RuntimeError:  # the loop is closed: the server has stopped
                        return
                    if message is None:
                        return

            threading.Thread(target=reader, name="ray-bridge-reader", daemon=True).start()
            was_connected = False
            while True:
                message = await inbox.get()
                if message is None:
                    break
                kind = message[0]
                if kind == "connected":
                    self._connected, self._problem = True, None
                    was_connected = True
                    delay = RECONNECT_MIN_S
                    self._settled.set()
                    log.info("training on the Ray cluster at %s", self.address, extra=message[1])
                elif kind == "unreachable":
                    self._problem = (
                        f"the Ray cluster at {self.address} is unreachable: {message[1]}"
                    )
                    self._settled.set()
                elif kind == "trial":
                    waiting = self._trials.get(message[1])
                    if waiting is not None and not waiting.done():
                        waiting.set_result(message[2])
                elif kind == "event":
                    _kind, job_id, event = message
                    run = self._runs.get(job_id)
                    if run is not None:
                        run.put_nowait(event)
            # The bridge is gone: its runs cannot report any more.
            await asyncio.to_thread(bridge.stop, 5.0)
            self._bridge = None
            if self._closed:
                return
            self._connected = False
            if was_connected:
                self._problem = (
                    f"lost the connection to the Ray cluster at {self.address}; reconnecting"
                )
                log.error(
                    "lost the Ray cluster at %s (bridge exit code %s)",
                    self.address,
                    bridge.proc.exitcode,
                )
            for key, waiting in list(self._trials.items()):
                if not waiting.done():
                    number = int(key.rsplit(":", 1)[1])
                    waiting.set_result(TrialResult(number, "FAILED", error=self._lost_reason()))
            for job_id, run in list(self._runs.items()):
                run.put_nowait(
                    Cancelled() if job_id in self._cancelled else Failed(self._lost_reason())
                )
            self._settled.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
            # Jobs that arrive while reconnecting wait for the outcome.
            self._settled.clear()


__all__ = ["RayExecutor"]
