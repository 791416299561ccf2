"""The executor seam: where training jobs run (local worker processes, or Ray).

The job manager (``training/jobs.py``) owns the job state machine (records,
queue, cancel, time limits, watch, retention, publishing). It hands each job
to an :class:`Executor` as a self-contained :class:`~highpeaks_ml.training.spec.JobSpec`
and follows the events the executor reports; ``make_executor(settings)`` picks
the implementation from ``settings.training_backend``.

Contract, for an implementation (``local_executor.LocalExecutor``, ``ray_executor.RayExecutor``):

- ``slots`` jobs may run at once; the manager never has more than ``slots``
  runs open (it queues the rest itself, so that queued jobs can be listed,
  cancelled and recovered after a restart).
- ``run(spec)`` is an async iterator. It yields :class:`~.spec.Started` once
  the job really runs (the manager shows it QUEUED until then), any number of
  :class:`~.spec.StageChanged`, and ends after exactly one final event:
  :class:`~.spec.Succeeded`, :class:`~.spec.Failed` or :class:`~.spec.Cancelled`.
  It may end with ``Failed`` before ``Started`` (no worker could start, the
  cluster is unreachable). It does not raise for a job's own failures (bad
  data, a crash of the worker, a lost node): those are ``Failed`` with a
  client-facing reason. A memory-bound overrun says "memory limit" in its reason.
- ``cancel(job_id)`` stops that job's run wherever it is (waiting for a
  worker, or running) and returns at once; the run then ends with
  ``Cancelled``. Unknown or finished ids are ignored. The manager uses it for
  CancelTrainingJob, for the time limit and at shutdown.
- Nothing an executor does publishes a model: the manager publishes the
  ``JobResult`` of a ``Succeeded`` event, once per job id.
- ``health()`` is None while jobs can run, else a short reason (shown by the
  Train service's health and in queued jobs' errors), e.g. "the Ray cluster
  at ... is unreachable".
- ``start()`` / ``close()`` bracket the executor's life (``close`` ends every
  run still open); neither blocks the event loop.

Trials of a hyperparameter search (training/search.py), for executors that
also implement :class:`TrialExecutor`:

- ``await run_trial(spec)`` runs one :class:`~.spec.TrialSpec` on a worker
  (waiting for a free one: trials share the workers with jobs, so
  ``slots`` bounds how many run at once) and returns its
  :class:`~.spec.TrialResult`. A trial's own failure (a bad combination, a
  crash of its worker) is a result with state ``FAILED`` and a client-facing
  ``error``; it never raises for those.
- Cancelling the task that awaits ``run_trial`` stops the trial wherever it
  is (waiting: it never starts; running: its worker is stopped) before the
  ``CancelledError`` propagates. The job manager cancels a search's trials
  this way (CancelTrainingJob, the time limit, shutdown); ``cancel(job_id)``
  is for ``run`` only.
- The dataset should travel once per worker and job where the backend can:
  a spec whose ``data`` is None means "the data of this job this worker got
  before" (the local executor strips it itself when it knows that).
- A search job holds no run while its trials run: the manager runs the
  refit of the best configuration with ``run`` afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from highpeaks_ml.config import ConfigError
from highpeaks_ml.training.spec import JobEvent, JobSpec, TrialResult, TrialSpec

if TYPE_CHECKING:
    from highpeaks_ml.config import Settings

#: ``settings.training_backend`` values.
LOCAL = "local"
RAY = "ray"


@runtime_checkable
class Executor(Protocol):
    """Runs training jobs somewhere; see the module docstring for the contract."""

    #: "local" or "ray": shown in job records and WatchTrainingJob.
    backend: str

    @property
    def slots(self) -> int:
        """How many jobs may run at once."""
        ...

    async def start(self) -> None:
        """Get ready to run jobs (start workers, connect to a cluster)."""
        ...

    def run(self, spec: JobSpec) -> AsyncIterator[JobEvent]:
        """Run one job: Started, StageChanged..., then one final event."""
        ...

    async def cancel(self, job_id: str) -> None:
        """Stop the job's run (its stream then ends with Cancelled); returns at once."""
        ...

    def health(self) -> str | None:
        """None while jobs can run, else why not (client-facing)."""
        ...

    async def close(self) -> None:
        """End every open run and release the workers or the cluster connection."""
        ...


@runtime_checkable
class TrialExecutor(Executor, Protocol):
    """An executor that also runs search trials (see the module docstring)."""

    async def run_trial(self, spec: TrialSpec) -> TrialResult:
        """Run one trial on a worker; cancelling the awaiting task stops it."""
        ...


def make_executor(settings: Settings) -> Executor:
    """The executor ``settings.training_backend`` names; ConfigError when it cannot be used."""
    backend = str(settings.training_backend)
    if backend == LOCAL:
        from highpeaks_ml.training.local_executor import LocalExecutor

        return LocalExecutor(settings)
    if backend == RAY:
        try:
            from highpeaks_ml.training import ray_executor  # type: ignore[attr-defined,unused-ignore]
        except ImportError as exc:
            raise ConfigError(
                "training_backend=ray is not available in this build"
                f" ({exc.msg}); use training_backend=local or install the ray extra"
            ) from None
        executor: Executor = ray_executor.RayExecutor(settings)
        return executor
    raise ConfigError(f"unknown training_backend {backend!r}; use 'local' or 'ray'")


def spawn_child(
    ctx: Any, target: Callable[..., Any], args: tuple[Any, ...], name: str
) -> tuple[Any, Any]:
    """Start ``target(child_end, *args)`` in a fresh (``spawn``) daemon process with a
    duplex pipe; returns (the process, the server's end of the pipe).

    Both backends keep their work out of the server process this way: the local
    pool's training workers, and the Ray backend's bridge (the only process that
    imports Ray).
    """
    parent, child = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=target, args=(child, *args), name=name, daemon=True)
    proc.start()
    child.close()
    return proc, parent


__all__ = ["LOCAL", "RAY", "Executor", "TrialExecutor", "make_executor", "spawn_child"]
