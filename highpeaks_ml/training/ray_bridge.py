"""The Ray side of ``training_backend=ray``: the bridge process (the Ray driver) and the task.

The server never imports Ray. :class:`~highpeaks_ml.training.ray_executor.RayExecutor`
starts this module's :func:`main` in a child process (``spawn``: a fresh
interpreter), the *bridge*, which is the Ray driver: it attaches to the cluster
(``ray.init(address=...)``), submits one Ray task per job and relays the job's
events over a pipe. Why a separate process:

- A driver attached by GCS address is ended by Ray itself when the head stays
  unreachable for ``RAY_gcs_rpc_server_reconnect_timeout_s`` (60 s by default):
  "Failed to connect to GCS ... The program will terminate". In the server
  process that would take predictions down with the Ray head.
- ``ray.init`` in a main thread replaces the process's SIGTERM handler (the
  server's graceful drain), and Ray's threads, logging and imports stay out of
  the server.

When the bridge dies the executor fails its open runs with a clear reason and
starts a new bridge; the tasks it owned end with it (Ray's ownership model: the
tasks of a driver that exits are cancelled), so nothing of theirs is ever
published.

The task (:func:`train_task`) runs on a Ray worker, which imports this module
(same image, same ``highpeaks_ml``). It is a Ray *streaming generator*: it
yields ``Started`` (where it runs), a ``StageChanged`` per stage and one final
event, so stages reach the server while the job runs without an actor or a
queue to keep alive. The job's CPUs and memory are the task's Ray resources
(``num_cpus``, ``memory``); inside, the worker applies the same bounds as a
local worker (``n_jobs`` and BLAS threads from the CPUs, an address-space limit
from the memory). The spec, with the dataset's bytes, is put in the object
store once per job (``ray.put``): a retried task reads the same object.

Pipe protocol (pickled tuples):

- bridge -> server: ``("connected", info)`` or ``("unreachable", reason)`` once,
  then ``("event", job_id, JobEvent)``;
- server -> bridge: ``("submit", JobSpec)``, ``("cancel", job_id)``, ``None`` to stop;
- search trials: server -> bridge ``("trial", key, TrialSpec)``, ``("cancel_trial", key)``;
  bridge -> server ``("trial", key, TrialResult)`` (key: ``"<job id>:<trial number>"``).
  One Ray task per trial; a search job's data is put in the object store once
  and read by every trial task (and kept parsed in a Ray worker between
  trials of the same job).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

from highpeaks_ml.training.spec import (
    Cancelled,
    Failed,
    JobData,
    JobEvent,
    JobSpec,
    Placement,
    Started,
    Succeeded,
    TrialResult,
    TrialSpec,
)

log = logging.getLogger("highpeaks_ml.training.ray")

#: How often Ray re-runs a job's task whose worker process or node was lost
#: (not for the job's own errors: those are a Failed event, never an exception).
MAX_RETRIES = 2
#: The Ray namespace of the bridge's jobs (seen in ``ray list tasks``).
NAMESPACE = "highpeaks-ml"
BACKEND = "ray"
#: A TCP connect to the address first: a cluster that is down is reported at once.
PROBE_TIMEOUT_S = 10.0
#: Longest wait for ``ray.init`` (which otherwise retries a silent address for minutes).
CONNECT_TIMEOUT_S = 90.0

_FINAL = (Succeeded, Failed, Cancelled)
#: A search job's dataset stays in the object store this long after its last trial ended.
TRIAL_DATA_IDLE_S = 120.0
#: This Ray worker process's loaded table and folds of the last search job it ran a
#: trial of (worker.run_trial's cache): the next trial of that job skips the parsing.
_TRIAL_CACHE: dict[str, Any] = {}


# --- the task (runs on a Ray worker) --------------------------------------------------


def train_task(spec: JobSpec) -> Iterator[JobEvent]:
    """One job on a Ray worker: ``Started``, ``StageChanged``..., one final event.

    ``run_job`` reports stages through a callback; it runs in a thread so that
    this generator can yield each stage as it happens.
    """
    import ray

    from highpeaks_ml.training.worker import run_job

    node_id = ray.get_runtime_context().get_node_id()
    yield Started(
        Placement(
            BACKEND,
            node=node_id,  # the Ray node id (`ray list nodes` maps it to a host or pod)
            worker=f"pid {os.getpid()} on {socket.gethostname()}",
        )
    )
    events: queue.Queue[tuple[bool, JobEvent]] = queue.Queue()

    def job() -> None:
        try:
            final = run_job(spec, lambda event: events.put((False, event)))
        except BaseException as exc:  # run_job returns Failed for the job's own errors
            final = Failed(f"training failed: {type(exc).__name__}")
        events.put((True, final))

    threading.Thread(target=job, name=f"job-{spec.job_id}", daemon=True).start()
    while True:
        last, event = events.get()
        yield event
        if last:
            return


def trial_task(spec: TrialSpec, data: JobData) -> TrialResult:
    """One search trial on a Ray worker (the data comes from the object store)."""
    import dataclasses

    from highpeaks_ml.training.worker import run_trial

    return run_trial(dataclasses.replace(spec, data=data), _TRIAL_CACHE)


# --- the bridge process (the Ray driver) ------------------------------------------------


class _Bridge:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.send_lock = threading.Lock()
        self.lock = threading.Lock()
        self.runs: dict[str, Any] = {}  # job id -> ObjectRefGenerator
        self.cancelled: set[str] = set()
        self.remote: Any = None
        self.remote_trial: Any = None
        #: search job id -> [data ObjectRef, trials in flight, when the last one ended]
        self.trial_data: dict[str, list[Any]] = {}

    def send(self, message: Any) -> None:
        with self.send_lock, contextlib.suppress(OSError):
            self.conn.send(message)

    def event(self, job_id: str, event: JobEvent) -> None:
        self.send(("event", job_id, event))

    def submit(self, spec: JobSpec) -> None:
        threading.Thread(
            target=self.follow, args=(spec,), name=f"follow-{spec.job_id}", daemon=True
        ).start()

    def cancel(self, job_id: str) -> None:
        import ray

        with self.lock:
            self.cancelled.add(job_id)
            generator = self.runs.get(job_id)
        if generator is not None:
            # force: kill the worker process (a fit in native code ignores the
            # KeyboardInterrupt a plain cancel raises); a cancelled task is never retried.
            with contextlib.suppress(Exception):
                ray.cancel(generator, force=True)

    def trial(self, key: str, spec: TrialSpec) -> None:
        threading.Thread(target=self.follow_trial, args=(key, spec), daemon=True).start()

    def follow_trial(self, key: str, spec: TrialSpec) -> None:
        """Run one trial as a Ray task; send ``("trial", key, TrialResult)``."""
        import time

        import ray

        job_id = spec.job_id
        try:
            with self.lock:
                now = time.monotonic()
                for old, (_ref, running, ended) in list(self.trial_data.items()):
                    if not running and now - ended > TRIAL_DATA_IDLE_S:
                        del self.trial_data[old]
                entry = self.trial_data.get(job_id)
                if entry is None:
                    if spec.data is None:
                        raise RuntimeError("no data for the search's trials")
                    # Once per search job: every trial task reads the same object.
                    entry = self.trial_data[job_id] = [ray.put(spec.data), 0, now]
                entry[1] += 1
            options: dict[str, Any] = {
                "num_cpus": spec.resources.cpus,
                "max_retries": MAX_RETRIES,
                "retry_exceptions": False,
                "name": f"highpeaks-ml-trial-{key}",
            }
            if spec.resources.memory_mb > 0:
                options["memory"] = spec.resources.memory_mb * 1024 * 1024
            import dataclasses

            ref = self.remote_trial.options(**options).remote(
                dataclasses.replace(spec, data=None), entry[0]
            )
            with self.lock:
                self.runs[key] = ref
                cancel_now = key in self.cancelled
            if cancel_now:
                self.cancel(key)
            result = ray.get(ref)
        except Exception as exc:
            with self.lock:
                cancelled = key in self.cancelled
            if cancelled:
                result = TrialResult(spec.number, "CANCELLED")
            else:
                log.warning("trial %s failed on Ray: %s", key, _first_line(exc))
                result = TrialResult(spec.number, "FAILED", error=failure_reason(exc))
        finally:
            with self.lock:
                self.runs.pop(key, None)
                self.cancelled.discard(key)
                entry = self.trial_data.get(job_id)
                if entry is not None:
                    entry[1] = max(0, entry[1] - 1)
                    entry[2] = time.monotonic()
        self.send(("trial", key, result))

    def follow(self, spec: JobSpec) -> None:
        """Submit ``spec`` as a task and relay its events until the final one."""
        import ray

        job_id = spec.job_id
        started = False
        try:
            options: dict[str, Any] = {
                "num_cpus": spec.resources.cpus,
                "max_retries": MAX_RETRIES,
                "retry_exceptions": False,
                "name": f"highpeaks-ml-job-{job_id}",
            }
            if spec.resources.memory_mb > 0:
                options["memory"] = spec.resources.memory_mb * 1024 * 1024
            spec_ref = ray.put(spec)  # once per job: retries read the same object
            generator = self.remote.options(**options).remote(spec_ref)
            with self.lock:
                self.runs[job_id] = generator
                cancel_now = job_id in self.cancelled
            if cancel_now:
                self.cancel(job_id)
            for ref in generator:
                event = ray.get(ref)
                if isinstance(event, Started):
                    if started:  # a retry of a lost worker starts over
                        log.warning(
                            "job %s: Ray re-ran its task (the previous worker was lost) on %s",
                            job_id,
                            event.placement.node,
                        )
                        continue
                    started = True
                self.event(job_id, event)
                if isinstance(event, _FINAL):
                    return
            self.event(job_id, Failed("the Ray task ended without a result; nothing was published"))
        except Exception as exc:
            with self.lock:
                cancelled = job_id in self.cancelled
            if cancelled:
                self.event(job_id, Cancelled())
            else:
                log.warning("job %s failed on Ray: %s", job_id, _first_line(exc))
                self.event(job_id, Failed(failure_reason(exc)))
        finally:
            with self.lock:
                self.runs.pop(job_id, None)
                self.cancelled.discard(job_id)


def failure_reason(exc: BaseException) -> str:
    """Client-facing words for a Ray task that ended with ``exc`` (no host paths, no traceback)."""
    import ray.exceptions as rex

    done = "; nothing was published"
    if isinstance(exc, rex.OutOfMemoryError):
        return (
            "Ray's memory monitor stopped the job's worker because its node ran low on memory"
            f"{done} (ask for more memory per job, or run it on a bigger node)"
        )
    if isinstance(exc, rex.NodeDiedError):
        return f"the Ray node running the job was lost (after {MAX_RETRIES} retries){done}"
    if isinstance(exc, rex.WorkerCrashedError):
        return f"the Ray worker process running the job died (after {MAX_RETRIES} retries){done}"
    if isinstance(exc, rex.TaskUnschedulableError | rex.RuntimeEnvSetupError):
        return f"the Ray cluster could not run the job ({_first_line(exc)}){done}"
    if isinstance(exc, rex.ObjectLostError | rex.OwnerDiedError):
        return f"the job's data was lost in the Ray cluster{done}"
    if isinstance(exc, rex.RayTaskError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        return f"training failed on Ray: {type(cause).__name__}{done}"
    return f"the job failed on the Ray cluster ({type(exc).__name__}){done}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def connect_reason(exc: BaseException) -> str:
    """Why ``ray.init`` failed, in words an operator can act on (the address is the caller's)."""
    text = str(exc).lower()
    if "auth" in text or "unauthenticated" in text or "token" in text:
        return "authentication failed (RAY_AUTH_MODE / RAY_AUTH_TOKEN must match the cluster's)"
    if "version" in text and "mismatch" in text:
        return "its Ray or Python version differs from this trainer's"
    return f"{type(exc).__name__}: {_first_line(exc)}"[:300]


def _probe(address: str) -> str | None:
    """Why nothing answers at ``address`` (a TCP connect), or None: it answers, or the
    address has no host:port to try (``auto``, ``local``)."""
    target = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"nothing answers at {host}:{port} ({exc.strerror or type(exc).__name__})"
    return None


def main(conn: Any, address: str, log_level: str = "INFO", log_format: str = "text") -> None:
    """Bridge process entry point: connect to ``address`` and serve the pipe until told to stop."""
    from highpeaks_ml.logs import configure_logging
    from highpeaks_ml.training.worker import _die_with_parent

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when the bridge stops
    configure_logging(log_level, log_format)
    import ray

    bridge = _Bridge(conn)
    problem = _probe(address)
    if problem:
        log.error("cannot connect to the Ray cluster at %s: %s", address, problem)
        bridge.send(("unreachable", problem))
        return

    def give_up() -> None:
        # ray.init retries a silent address for minutes; the trainer should know sooner.
        log.error(
            "no connection to the Ray cluster at %s within %.0f s", address, CONNECT_TIMEOUT_S
        )
        bridge.send(("unreachable", f"no connection within {CONNECT_TIMEOUT_S:.0f} s"))
        os._exit(2)

    watchdog = threading.Timer(CONNECT_TIMEOUT_S, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        ctx = ray.init(
            address=address,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        resources = ray.cluster_resources()
    except Exception as exc:
        log.error("cannot connect to the Ray cluster at %s: %s", address, _first_line(exc))
        bridge.send(("unreachable", connect_reason(exc)))
        return
    finally:
        watchdog.cancel()
    bridge.remote = ray.remote(train_task)
    bridge.remote_trial = ray.remote(trial_task)
    info = {
        "cpus": float(resources.get("CPU", 0)),
        "ray_version": ray.__version__,
        "dashboard": getattr(ctx, "dashboard_url", "") or "",
    }
    log.info("connected to the Ray cluster", extra={"address": address, **info})
    bridge.send(("connected", info))
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message is None:
                break
            kind, payload = message[0], message[1]
            if kind == "submit":
                bridge.submit(payload)
            elif kind in ("cancel", "cancel_trial"):
                bridge.cancel(payload)
            elif kind == "trial":
                bridge.trial(payload, message[2])
    finally:
        # Ends the tasks this driver owns (a job still running is cancelled by Ray).
        with contextlib.suppress(Exception):
            ray.shutdown()


__all__ = ["MAX_RETRIES", "connect_reason", "failure_reason", "main", "train_task", "trial_task"]
