"""The embedded executor: training jobs in worker processes of this server.

``settings.training_workers`` processes (``spawn`` start method: fresh
interpreters, never a fork of the gRPC server) each run one job at a time
(``worker.main``). The asyncio loop waits on each worker's pipe and process
sentinel with ``add_reader``, so no thread is held while a job runs; specs
and results (dataset and ONNX bytes) cross the pipe in a worker thread, so a
large one never blocks the loop.

- Cancel (a caller, the time limit, shutdown): the worker process is killed
  and a fresh one started; the run ends ``Cancelled``.
- A worker that dies on its own (crash, out-of-memory kill, SIGKILL) ends its
  run ``Failed`` with the reason; the server keeps serving.
- A job's memory bound is an address-space limit inside the worker (see
  ``worker.job_resources``); a worker whose job hit it exits after reporting,
  and the next job gets a fresh process.
- Search trials (``run_trial``) take a free worker like jobs do. Each worker
  remembers whose data it holds: a job's dataset crosses a worker's pipe once
  per search, later trials of that job there go without it. Cancelling a
  trial's task kills its worker (a fresh one replaces it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import signal
from collections.abc import AsyncIterator
from typing import Any

from highpeaks_ml.config import Settings
from highpeaks_ml.training.executor import LOCAL, spawn_child
from highpeaks_ml.training.spec import (
    Cancelled,
    Failed,
    JobEvent,
    JobSpec,
    Placement,
    StageChanged,
    Started,
    TrialResult,
    TrialSpec,
)

log = logging.getLogger("highpeaks_ml.jobs")

WORKER_START_ATTEMPTS = 3
#: How long a new worker may take to import its libraries and report ready.
WORKER_START_TIMEOUT_S = 300.0


class _Worker:
    """One worker process and the server's end of its pipe."""

    def __init__(self, ctx: Any, settings: Settings) -> None:
        from highpeaks_ml.training import worker

        self.proc, self.conn = spawn_child(
            ctx,
            worker.main,
            (settings.log_level, settings.log_format.value),
            "highpeaks-ml-training",
        )
        self.ready = False  # set when the process reported its libraries imported
        self.node = ""
        #: The job whose data this process holds from an earlier trial ("" = none).
        self.data_of = ""

    @property
    def pid(self) -> int:
        return int(self.proc.pid or 0)

    def alive(self) -> bool:
        return bool(self.proc.is_alive())

    async def stop(self, kill: bool = True, grace_s: float = 10.0) -> int | None:
        """Kill (or ask to stop) and reap the process; returns its exit code."""
        if self.proc.is_alive():
            if kill:
                self.proc.kill()
            else:
                with contextlib.suppress(OSError):
                    self.conn.send(None)
        await asyncio.to_thread(self.proc.join, grace_s)
        if self.proc.is_alive():
            self.proc.kill()
            await asyncio.to_thread(self.proc.join, grace_s)
        code = self.proc.exitcode
        with contextlib.suppress(OSError):
            self.conn.close()
        return code


class _NoWorker(Exception):
    """No worker process could be started for a slot."""


def crash_reason(code: int | None, memory_mb: int = 0) -> str:
    """Client-facing words for a worker process that ended during a job."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL:
            hint = " (out of memory, or killed from outside)"
        elif memory_mb and -code in (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS):
            # A native library that cannot allocate under the address-space
            # limit often aborts instead of raising.
            hint = f" (probably at the job's memory limit of {memory_mb} MiB)"
        else:
            hint = ""
        return (
            f"the training worker process was killed by {name}{hint};"
            " nothing was published (start the job again, with fewer rows or a smaller model"
            " if it ran out of memory)"
        )
    return (
        f"the training worker process exited unexpectedly (exit code {code}); nothing was published"
    )


class LocalExecutor:
    """Runs jobs in a pool of local worker processes (see the module docstring)."""

    backend = LOCAL

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker | None] = []
        self._free: asyncio.Queue[int] | None = None
        self._cancel: dict[str, asyncio.Event] = {}
        self._closed = False

    @property
    def slots(self) -> int:
        """One job per worker process."""
        return self.settings.training_workers

    async def start(self) -> None:
        """Start the worker processes (they import their libraries in the background)."""
        self._free = asyncio.Queue()
        for index in range(self.slots):
            self._workers.append(_Worker(self._ctx, self.settings))
            self._free.put_nowait(index)

    def health(self) -> str | None:
        """Local workers are restarted as needed: always able to run jobs."""
        return None

    async def cancel(self, job_id: str) -> None:
        """Stop ``job_id``'s run: its worker is killed (or it never starts)."""
        self._cancel.setdefault(job_id, asyncio.Event()).set()

    async def close(self) -> None:
        """Stop every worker process (ending the runs still open)."""
        self._closed = True
        for event in self._cancel.values():
            event.set()
        workers, self._workers = self._workers, []
        for w in workers:
            if w is not None:
                await w.stop(kill=False, grace_s=5.0)

    async def run(self, spec: JobSpec) -> AsyncIterator[JobEvent]:
        """Run ``spec`` on a free worker: Started, StageChanged..., one final event."""
        assert self._free is not None, "start() first"
        cancel = self._cancel.setdefault(spec.job_id, asyncio.Event())
        try:
            index = await self._acquire(cancel)
            if index is None:
                yield Cancelled()
                return
            try:
                async for event in self._run_on(index, spec, cancel):
                    yield event
            finally:
                self._free.put_nowait(index)
        finally:
            self._cancel.pop(spec.job_id, None)

    async def run_trial(self, spec: TrialSpec) -> TrialResult:
        """Run one search trial on a free worker (see the module docstring)."""
        assert self._free is not None, "start() first"
        never = asyncio.Event()
        index = await self._free.get()  # cancellation-safe: a cancelled get takes nothing
        try:
            return await self._trial_on(index, spec, never)
        finally:
            self._free.put_nowait(index)

    async def _trial_on(self, index: int, spec: TrialSpec, never: asyncio.Event) -> TrialResult:
        def failed(reason: str) -> TrialResult:
            return TrialResult(spec.number, "FAILED", (), 0.0, reason)

        try:
            w = await self._worker(index, never)
        except _NoWorker as exc:
            return failed(str(exc))
        assert w is not None
        if w.data_of == spec.job_id:
            spec = dataclasses.replace(spec, data=None)
        try:
            # Off the loop: the first trial of a job on a worker carries the dataset's bytes.
            await asyncio.to_thread(_send, w.conn, ("trial", spec))
            while True:
                event, kind, payload = await self._receive(w, never)
                if event == "message":
                    if kind != "trial":
                        continue
                    w.data_of = spec.job_id
                    if payload.state == "FAILED" and "memory limit" in payload.error:
                        await self._replace(index, kill=False)  # it exits after reporting
                    result: TrialResult = payload
                    return result
                if event == "died":
                    code = await self._replace(index)
                    log.error(
                        "training worker died during trial %d of job %s (exit code %s)",
                        spec.number,
                        spec.job_id,
                        code,
                    )
                    return failed(crash_reason(code, spec.resources.memory_mb))
        except asyncio.CancelledError:
            # Stop the trial where it runs: the worker is killed and replaced.
            await asyncio.shield(self._replace(index))
            raise

    async def _acquire(self, cancel: asyncio.Event) -> int | None:
        assert self._free is not None
        if cancel.is_set():
            return None
        getting = asyncio.ensure_future(self._free.get())
        cancelled = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait({getting, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not getting.done():
                getting.cancel()
        if cancel.is_set():
            if getting.done() and not getting.cancelled():
                self._free.put_nowait(getting.result())
            return None
        return getting.result()

    async def _run_on(
        self, index: int, spec: JobSpec, cancel: asyncio.Event
    ) -> AsyncIterator[JobEvent]:
        try:
            w = await self._worker(index, cancel)
        except _NoWorker as exc:
            yield Failed(str(exc))
            return
        if w is None or cancel.is_set():
            yield Cancelled()
            return
        yield Started(Placement(LOCAL, node=w.node, worker=f"pid {w.pid}", pid=w.pid))
        # Off the loop: a spec carries the dataset's bytes.
        sending = asyncio.ensure_future(asyncio.to_thread(_send, w.conn, ("run", spec)))
        cancelled = asyncio.ensure_future(cancel.wait())
        await asyncio.wait({sending, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        cancelled.cancel()
        while True:
            event, kind, payload = await self._receive(w, cancel)
            if event == "message":
                if kind != "event":
                    continue
                if isinstance(payload, StageChanged):
                    yield payload
                    continue
                if isinstance(payload, Failed) and "memory limit" in payload.reason:
                    await self._replace(index, kill=False)  # it exits after reporting
                yield payload
                return
            if event == "died":
                code = await self._replace(index)
                log.error("training worker died during job %s (exit code %s)", spec.job_id, code)
                yield Failed(crash_reason(code, spec.resources.memory_mb))
                return
            if event == "cancel":
                await self._replace(index)
                with contextlib.suppress(Exception):
                    await sending
                yield Cancelled()
                return

    async def _worker(self, index: int, cancel: asyncio.Event) -> _Worker | None:
        """The slot's worker, started if needed and ready; None when cancelled meanwhile."""
        code: int | None = None
        for _attempt in range(WORKER_START_ATTEMPTS):
            w = self._workers[index]
            if w is not None and not w.alive():
                code = await w.stop()
                log.warning("training worker %d had exited (code %s); restarting it", index, code)
                w = None
            if w is None:
                w = _Worker(self._ctx, self.settings)
                self._workers[index] = w
            if w.ready:
                return w
            event = await self._wait(w, cancel, WORKER_START_TIMEOUT_S)
            if event == "cancel":
                return None  # the worker goes on starting, for the next job
            if event == "message":
                with contextlib.suppress(EOFError, OSError):
                    kind, payload = w.conn.recv()
                    if kind == "ready":
                        w.ready = True
                        w.node = str(payload.get("node", ""))
                        return w
            code = await w.stop()
            self._workers[index] = None
            log.error("training worker %d failed to start (%s, exit code %s)", index, event, code)
        raise _NoWorker(
            f"the training worker process could not start (exit code {code}); see the server log"
        )

    async def _replace(self, index: int, kill: bool = True) -> int | None:
        w = self._workers[index] if index < len(self._workers) else None
        code = await w.stop(kill=kill) if w is not None else None
        if index < len(self._workers):
            self._workers[index] = None if self._closed else _Worker(self._ctx, self.settings)
        return code

    async def _receive(self, w: _Worker, cancel: asyncio.Event) -> tuple[str, str, Any]:
        """The worker's next message as ``("message", kind, payload)``, or ``("died", "",
        None)`` (also when the pipe breaks mid-message) or ``("cancel", "", None)``."""
        event = await self._wait(w, cancel)
        if event != "message":
            return event, "", None
        try:
            kind, payload = await asyncio.to_thread(w.conn.recv)
        except (EOFError, OSError):
            return "died", "", None
        return event, kind, payload

    async def _wait(self, w: _Worker, cancel: asyncio.Event, within_s: float | None = None) -> str:
        """'message', 'died', 'cancel' or 'timeout', whichever comes first."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[str] = loop.create_future()

        def fire(kind: str) -> None:
            if not ready.done():
                ready.set_result(kind)

        loop.add_reader(w.conn.fileno(), fire, "message")
        loop.add_reader(w.proc.sentinel, fire, "died")
        cancelled = asyncio.ensure_future(cancel.wait())
        waiters: set[asyncio.Future[Any]] = {ready, cancelled}
        try:
            await asyncio.wait(waiters, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(w.conn.fileno())
            loop.remove_reader(w.proc.sentinel)
            cancelled.cancel()
        if cancel.is_set():
            return "cancel"
        if ready.done():
            return ready.result()
        return "timeout"


def _send(conn: Any, message: Any) -> None:
    # A dead worker: its sentinel says so to the waiting loop.
    with contextlib.suppress(OSError):
        conn.send(message)


__all__ = ["LocalExecutor", "crash_reason"]
