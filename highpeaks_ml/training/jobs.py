"""Training jobs: queued, run in worker processes, published by the server process.

Lifecycle::

    QUEUED -> RUNNING (LOADING_DATA, FITTING, EVALUATING, EXPORTING, VERIFYING,
              REGISTERING) -> SUCCEEDED | FAILED | CANCELLED

- ``start_training`` validates everything that can be checked without
  training (names, algorithm and hyperparameters, dataset, target, split
  sizes), persists the job and returns it QUEUED at once.
- A pool of ``settings.training_workers`` processes (``spawn`` start method:
  fresh interpreters, never a fork of the gRPC server) runs the jobs, one
  each. The asyncio loop waits on each worker's pipe and process sentinel
  with ``add_reader``, so no thread is held while a job runs.
- The worker writes the verified model to ``<home>/tmp/job-<id>.onnx``; the
  server process publishes it with ``registry.publish_file`` (so in-process
  registry listeners fire) together with the requested aliases.
- Cancel, time limit: the worker process is killed and a fresh one started;
  nothing is published. A worker that dies on its own (crash, OOM kill,
  SIGKILL) fails its job with the reason; the server keeps serving.
- Every job is a JSON file ``<home>/jobs/<id>.json`` replaced atomically
  (temp file, fsync, rename) on each change. At start-up, jobs found RUNNING
  were interrupted by a crash or kill of the server: they become FAILED,
  except one killed while REGISTERING whose version did land in the registry
  (found by the version's ``job_id``): it becomes SUCCEEDED with that version,
  and any requested alias the crash left unset (missing, or on an older
  version) is set. QUEUED ones run.
- Watchers (``watch``) receive a snapshot of every change, in order.
- Retention: records of ended jobs are removed once older than
  ``settings.job_retention_s`` or past the newest ``settings.max_job_records``
  ended ones, at start-up and then by one background task (woken when a job
  ends, and when the next record is due). Queued and running jobs are never
  removed. A removed job is unknown (NotFound); its idempotency key is free
  again; the version it registered stays in the registry.
- ``training_workers = 0`` makes a serving-only server: it neither runs nor
  recovers jobs (another process, the trainer, owns ``<home>/jobs`` on a
  shared volume) and answers every job call with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from highpeaks_ml import metrics as prom
from highpeaks_ml.config import Settings
from highpeaks_ml.errors import (
    FailedPrecondition,
    HighPeaksError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from highpeaks_ml.registry.base import ModelStore, VersionMeta, validate_alias, validate_name
from highpeaks_ml.storage import TMP_SUFFIX, fsync_dir, write_atomic
from highpeaks_ml.training import catalogue
from highpeaks_ml.training.datasets import (
    CATEGORICAL,
    DEFAULT_TARGET,
    DatasetInfo,
    DatasetStore,
    analyse_csv,
    check_target_column,
    inline_csv,
)
from highpeaks_ml.training.pipeline import (
    MAX_CATEGORIES,
    check_params_fit_rows,
    check_split_sizes,
)

log = logging.getLogger("highpeaks_ml.jobs")

QUEUED = "QUEUED"
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})
STAGES = ("LOADING_DATA", "FITTING", "EVALUATING", "EXPORTING", "VERIFYING", "REGISTERING")
REGISTERING = "REGISTERING"

DEFAULT_TEST_SIZE = 0.2
WORKER_START_ATTEMPTS = 3
#: How long a new worker may take to import its libraries and report ready.
WORKER_START_TIMEOUT_S = 300.0
MAX_IDEMPOTENCY_KEY = 128
MAX_DESCRIPTION = 4096
STAGING_PREFIX = "job-"
INTERRUPTED = "interrupted by a server restart; the job did not finish (start it again)"
SHUTTING_DOWN = "server shutting down"
CANCELLED_BY_CALLER = "cancelled by a caller"
#: Longest pause between two retention passes while serving; a pass also runs
#: when a job ends and when the oldest ended record is due.
PRUNE_INTERVAL_S = 300.0
#: Shortest pause between two passes, so a tiny retention cannot spin the loop.
MIN_PRUNE_PAUSE_S = 1.0
_STAGE_WORDS = {
    "LOADING_DATA": "loading data",
    "FITTING": "fitting",
    "EVALUATING": "evaluating",
    "EXPORTING": "exporting",
    "VERIFYING": "verifying",
    REGISTERING: "registering",
}


@dataclass
class DatasetSource:
    """Where a job's data comes from: exactly one of an uploaded id, a built-in, inline rows."""

    kind: str  # "dataset_id" | "builtin" | "inline"
    value: str = ""  # the dataset id or built-in name
    rows: list[dict[str, Any]] | None = None  # inline rows (never persisted)
    row_count: int = 0  # inline rows given (kept when the rows are dropped)


@dataclass
class TrainRequest:
    """What StartTraining asks for (domain form of StartTrainingRequest)."""

    model_name: str
    algorithm: str
    dataset: DatasetSource
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    target_column: str = ""
    task: str = ""
    test_size: float = 0.0
    seed: int | None = None
    idempotency_key: str = ""
    aliases: list[str] = field(default_factory=list)
    time_limit_s: float = 0.0
    description: str = ""
    feature_columns: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; inline rows are left out (the data lives beside the job as CSV)."""
        d = asdict(self)
        d["dataset"].pop("rows", None)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainRequest:
        """Inverse of ``to_dict`` (inline rows are not restored)."""
        d = dict(data)
        src = dict(d.pop("dataset", {}))
        src.pop("rows", None)
        known = set(cls.__dataclass_fields__)
        return cls(dataset=DatasetSource(**src), **{k: v for k, v in d.items() if k in known})


@dataclass
class Job:
    """A training job as stored and reported."""

    id: str
    model_name: str
    algorithm: str
    request: TrainRequest
    state: str = QUEUED
    stage: str = ""
    error: str = ""
    model_version: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    created_by: str = ""
    task: str = ""
    # Resolved at submission: what the worker runs.
    params: dict[str, Any] = field(default_factory=dict)
    target: str = ""
    features: list[list[str]] = field(default_factory=list)
    test_size: float = DEFAULT_TEST_SIZE
    seed: int = 0
    time_limit_s: float = 0.0
    worker_pid: int = 0
    seq: int = 0

    @property
    def final(self) -> bool:
        """Whether the job has ended."""
        return self.state in FINAL_STATES

    def snapshot(self) -> Job:
        """An independent copy (what watchers and callers get)."""
        return copy.deepcopy(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        d = asdict(self)
        d["request"] = self.request.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """Inverse of ``to_dict``."""
        d = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        d["request"] = TrainRequest.from_dict(d["request"])
        return cls(**d)


class _Worker:
    """One worker process and the server's end of its pipe."""

    def __init__(self, ctx: Any, settings: Settings) -> None:
        from highpeaks_ml.training import worker

        parent, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=worker.main,
            args=(child, settings.log_level, settings.log_format.value),
            name="highpeaks-ml-training",
            daemon=True,
        )
        self.proc.start()
        child.close()
        self.conn = parent
        self.ready = False  # set when the process reported its libraries imported

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


def _crash_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory, or killed from outside)" if -code == signal.SIGKILL else ""
        return (
            f"the training worker process was killed by {name}{hint};"
            " nothing was published (start the job again, with fewer rows or a smaller model"
            " if it ran out of memory)"
        )
    return (
        f"the training worker process exited unexpectedly (exit code {code}); nothing was published"
    )


class JobManager:
    """Training jobs: submission, the worker pool, persistence, watchers."""

    def __init__(self, settings: Settings, registry: ModelStore, datasets: DatasetStore) -> None:
        self.settings = settings
        self.registry = registry
        self.datasets = datasets
        self.dir = Path(settings.home) / "jobs"
        self.tmp_dir = Path(settings.home) / "tmp"
        self._jobs: dict[str, Job] = {}
        self._idempotency: dict[tuple[str, str], str] = {}
        self._queue: deque[str] = deque()
        self._workers: list[_Worker | None] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: dict[str, set[asyncio.Queue[Job]]] = {}
        self._notified: dict[str, int] = {}
        self._cancel: dict[str, asyncio.Event] = {}
        self._cancel_reason: dict[str, str] = {}
        self._written: dict[str, int] = {}
        self._write_lock = threading.Lock()
        #: Ended jobs whose final record is on disk -> when they ended: the
        #: only jobs retention may remove (never one whose last write is pending).
        self._ended: dict[str, float] = {}
        self._wake: asyncio.Event | None = None
        self._prune_wake: asyncio.Event | None = None
        #: The last retention pass could not remove everything: wait the full
        #: interval before the next, rather than retrying (and logging) every second.
        self._prune_backoff = False
        self._prune_lock = asyncio.Lock()  # one pass at a time
        self._started = False
        self._shutting_down = False
        self._closed = False
        self._ctx = multiprocessing.get_context("spawn")
        #: False on a serving-only server (``training_workers == 0``).
        self.enabled = settings.training_workers > 0

    # --- life cycle --------------------------------------------------------

    async def start(self) -> None:
        """Load and recover jobs, start the worker pool, submit the demo job when asked."""
        self._wake = asyncio.Event()
        if not self.enabled:
            # Never touch the jobs or staging files: they belong to the trainer.
            log.info("training is off in this server (training_workers=0)")
            self._started = True
            return
        await asyncio.to_thread(self._prepare_dirs)
        records = await asyncio.to_thread(self._load_records)
        now = time.time()
        for job in sorted(records, key=lambda j: j.created_at):
            self._jobs[job.id] = job
            if job.request.idempotency_key:
                self._idempotency[(job.created_by, job.request.idempotency_key)] = job.id
            if job.state == RUNNING:
                landed = None
                if job.stage == REGISTERING:
                    landed = await asyncio.to_thread(self._complete_registration, job)
                if landed is not None:
                    job.state, job.model_version = SUCCEEDED, landed
                    job.error, job.finished_at, job.stage = "", now, ""
                    await self._save(job)
                    log.warning(
                        "job %s was interrupted after registering version %d: marked SUCCEEDED",
                        job.id,
                        landed,
                    )
                else:
                    job.state, job.error, job.finished_at, job.stage = FAILED, INTERRUPTED, now, ""
                    await self._save(job)
                    log.warning("job %s was interrupted by a restart: marked FAILED", job.id)
            elif job.state == QUEUED:
                self._queue.append(job.id)
            if job.final:
                await asyncio.to_thread(self._drop_files, job.id)
                self._ended[job.id] = _ended_at(job)
        await asyncio.to_thread(self._drop_orphans)
        await self.prune()
        for _ in range(self.settings.training_workers):
            self._workers.append(_Worker(self._ctx, self.settings))
        for index in range(self.settings.training_workers):
            self._tasks.append(
                asyncio.create_task(self._slot(index), name=f"training-slot-{index}")
            )
        if self._retention_on:
            self._prune_wake = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._prune_loop(), name="training-retention"))
        self._started = True
        self._count_states()
        if self._queue:
            log.info("resuming %d queued training job(s)", len(self._queue))
            self._wake.set()
        if self.settings.demo:
            # In the background: start-up (and health SERVING) does not wait
            # for loading the built-in data.
            self._tasks.append(asyncio.create_task(self._submit_demo(), name="training-demo"))

    def _complete_registration(self, job: Job) -> int | None:
        """The version a job interrupted while REGISTERING did publish, if any.

        The registry commits a version (rename) before it writes the aliases,
        so a crash in between leaves the version without them: each requested
        alias that is missing or points at an older version is set now (one
        on a newer version was moved there since, and stays).
        """
        try:
            info = self.registry.get_model(job.model_name)
        except NotFound:
            return None
        landed = next((v.version for v in info.versions if v.job_id == job.id), None)
        if landed is None:
            return None
        for alias in job.request.aliases:
            current = info.aliases.get(alias)
            if current is None or current < landed:
                self.registry.set_alias(job.model_name, alias, landed)
                log.warning(
                    "job %s: alias %r of model %s set to version %d after a restart",
                    job.id,
                    alias,
                    job.model_name,
                    landed,
                )
        return landed

    def _prepare_dirs(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for entry in os.listdir(self.tmp_dir):
            if entry.startswith(STAGING_PREFIX):
                (self.tmp_dir / entry).unlink(missing_ok=True)
        for entry in os.listdir(self.dir):
            if entry.startswith(".") and entry.endswith(TMP_SUFFIX):
                (self.dir / entry).unlink(missing_ok=True)

    def _drop_orphans(self) -> None:
        """Remove inline data whose record is gone (a crash between the two)."""
        for entry in os.listdir(self.dir):
            if entry.startswith(".") or not entry.endswith(".csv"):
                continue
            if not (self.dir / f"{entry.removesuffix('.csv')}.json").exists():
                (self.dir / entry).unlink(missing_ok=True)

    def _load_records(self) -> list[Job]:
        jobs = []
        for entry in os.listdir(self.dir):
            if not entry.endswith(".json") or entry.startswith("."):
                continue
            try:
                jobs.append(Job.from_dict(json.loads((self.dir / entry).read_text("utf-8"))))
            except (OSError, ValueError, TypeError, KeyError):
                log.warning("job record %s is unreadable; skipped", entry)
        return jobs

    async def _submit_demo(self) -> None:
        """With ``--demo`` and no model registered: train ``iris`` (alias production)."""
        try:
            models = await asyncio.to_thread(self.registry.list_models)
            if models or any(j.model_name == "iris" and not j.final for j in self._jobs.values()):
                return
            job = await self.start_training(
                TrainRequest(
                    model_name="iris",
                    algorithm="random_forest",
                    dataset=DatasetSource("builtin", "iris"),
                    aliases=["production"],
                    description="demo model: random forest on the iris data set",
                )
            )
            log.info("demo: training model 'iris'", extra={"job": job.id})
        except HighPeaksError as exc:
            log.warning("demo: could not submit the iris job: %s", exc.message)
        except Exception:
            log.exception("demo: could not submit the iris job")

    async def begin_shutdown(self) -> None:
        """Refuse new jobs; cancel running ones ("server shutting down"); queued ones stay."""
        self._shutting_down = True
        running = [j for j in self._jobs.values() if j.state == RUNNING]
        for job in running:
            if job.stage != REGISTERING:
                self._request_cancel(job.id, SHUTTING_DOWN)
        if self._wake is not None:
            self._wake.set()
        waits = [asyncio.ensure_future(self._until_final(j.id)) for j in running]
        if waits:
            _done, pending = await asyncio.wait(waits, timeout=15.0)
            for task in pending:
                task.cancel()

    async def _until_final(self, job_id: str) -> Job:
        final = self.get(job_id)
        async for snap in self.watch(job_id):
            final = snap
        return final

    async def close(self) -> None:
        """Stop the slot tasks and the worker processes."""
        if self._closed:
            return
        self._closed = True
        self._shutting_down = True
        if self._wake is not None:
            self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for w in self._workers:
            if w is not None:
                await w.stop(kill=False, grace_s=5.0)
        self._workers = []

    # --- submission --------------------------------------------------------

    def _require_enabled(self) -> None:
        if not self.enabled:
            raise Unavailable(
                "this server runs no training (training_workers=0); send TrainService job"
                " calls to the server that trains"
            )

    async def start_training(self, req: TrainRequest, created_by: str = "") -> Job:
        """Validate and queue a job; returns it QUEUED (or the job of a known idempotency key)."""
        self._require_enabled()
        if self._shutting_down:
            raise Unavailable("the server is shutting down; no new training jobs")
        if not self._started:
            raise Unavailable("the training service is starting")
        key = req.idempotency_key or ""
        if len(key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidArgument(
                f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY} characters"
            )
        if key and (known := self._idempotency.get((created_by, key))) is not None:
            return self._jobs[known].snapshot()
        validate_name(req.model_name, "model name")
        aliases = list(dict.fromkeys(req.aliases))
        for alias in aliases:
            validate_alias(alias)
        algorithm = catalogue.get_algorithm(req.algorithm)
        test_size = req.test_size or DEFAULT_TEST_SIZE
        if not math.isfinite(test_size) or not 0 < test_size <= 0.5:
            raise InvalidArgument(f"test_size must be in (0, 0.5], got {req.test_size!r}")
        limit = req.time_limit_s or self.settings.job_time_limit_s
        if not math.isfinite(limit) or limit <= 0:
            raise InvalidArgument(f"time_limit_seconds must be positive, got {req.time_limit_s!r}")
        limit = min(limit, self.settings.job_time_limit_s)
        if len(req.description) > MAX_DESCRIPTION:
            raise InvalidArgument(f"description is longer than {MAX_DESCRIPTION} characters")
        self._check_queue_room()

        job_id = uuid.uuid4().hex
        try:
            info = await self._dataset_info(req.dataset, job_id)
            target = req.target_column or DEFAULT_TARGET
            target_col = check_target_column(info, target)
            features = _features(info, target, req.feature_columns)
            task = catalogue.resolve_task(
                req.task,
                algorithm,
                target=target,
                target_numeric=target_col.type != CATEGORICAL,
                target_integral=target_col.integral,
                distinct_values=target_col.distinct_values,
            )
            params = algorithm.validate(task, req.hyperparameters)
            classes = target_col.distinct_values if task == catalogue.CLASSIFICATION else 0
            train_rows, _ = check_split_sizes(info.rows, test_size, classes)
            check_params_fit_rows(algorithm, params, train_rows)
            # Re-check after the awaits above: a concurrent request may have
            # used the key or filled the queue meanwhile.
            if key and (known := self._idempotency.get((created_by, key))) is not None:
                raise _Duplicate(known)
            self._check_queue_room()
        except _Duplicate as dup:
            known_job = self._jobs[dup.job_id].snapshot()  # before an await: it may be pruned
            await asyncio.to_thread(self._drop_files, job_id)
            return known_job
        except BaseException:
            await asyncio.to_thread(self._drop_files, job_id)
            raise
        seed = 0 if req.seed is None else int(req.seed)
        src = req.dataset
        # The job keeps the request without the inline rows (they are on disk).
        stored_src = DatasetSource(src.kind, src.value, None, len(src.rows or []))
        stored_req = TrainRequest(**{**req.__dict__, "aliases": aliases, "dataset": stored_src})
        job = Job(
            id=job_id,
            model_name=req.model_name,
            algorithm=algorithm.name,
            request=stored_req,
            created_at=time.time(),
            created_by=created_by,
            task=task,
            params=params,
            target=target,
            features=[[n, t] for n, t in features],
            test_size=test_size,
            seed=seed,
            time_limit_s=limit,
        )
        self._jobs[job_id] = job
        if key:
            self._idempotency[(created_by, key)] = job_id
        try:
            await self._save(job)
        except BaseException:
            self._jobs.pop(job_id, None)
            if key:
                self._idempotency.pop((created_by, key), None)
            await asyncio.to_thread(self._drop_files, job_id)
            raise
        log.info(
            "training job queued",
            extra={"job": job_id, "model": job.model_name, "algorithm": job.algorithm},
        )
        self._queue.append(job_id)
        assert self._wake is not None
        self._wake.set()
        return job.snapshot()

    def _check_queue_room(self) -> None:
        queued = sum(1 for j in self._jobs.values() if j.state == QUEUED)
        if queued >= self.settings.max_queued_jobs:
            raise ResourceExhausted(
                f"{queued} training jobs are queued (the limit is"
                f" {self.settings.max_queued_jobs}); try again later"
            )

    async def _dataset_info(self, source: DatasetSource, job_id: str) -> DatasetInfo:
        if source.kind == "dataset_id":
            return await asyncio.to_thread(self.datasets.get, source.value)
        if source.kind == "builtin":
            info, _digest = await asyncio.to_thread(self.datasets.builtin, source.value)
            return info
        if source.kind == "inline":
            rows = source.rows or []
            data = await asyncio.to_thread(inline_csv, rows)
            path = self._inline_path(job_id)
            await asyncio.to_thread(write_atomic, path, data)
            n, columns = await asyncio.to_thread(analyse_csv, path)
            return DatasetInfo("inline", "", "csv", len(data), n, columns, time.time())
        raise InvalidArgument("dataset: give a dataset_id, a builtin name or inline rows")

    def _inline_path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.csv"

    def _staging_path(self, job_id: str) -> Path:
        return self.tmp_dir / f"{STAGING_PREFIX}{job_id}.onnx"

    def _drop_files(self, job_id: str) -> None:
        self._inline_path(job_id).unlink(missing_ok=True)
        for suffix in ("", ".part"):
            Path(f"{self._staging_path(job_id)}{suffix}").unlink(missing_ok=True)

    # --- retention ---------------------------------------------------------

    @property
    def _retention_on(self) -> bool:
        return self.settings.job_retention_s > 0 or self.settings.max_job_records > 0

    def _expired(self, now: float) -> dict[str, str]:
        """Ended jobs to remove now -> why ("age" or "count"), oldest ended first."""
        retention = self.settings.job_retention_s
        limit = self.settings.max_job_records
        doomed: dict[str, str] = {}
        order = sorted(self._ended.items(), key=lambda item: (item[1], item[0]))
        if retention > 0:
            for job_id, ended in order:
                if ended > now - retention:
                    break
                doomed[job_id] = "age"
        if limit > 0 and len(order) - len(doomed) > limit:
            excess = len(order) - len(doomed) - limit
            for job_id, _ended in order:
                if excess == 0:
                    break
                if job_id not in doomed:
                    doomed[job_id] = "count"
                    excess -= 1
        return doomed

    async def prune(self, now: float | None = None) -> int:
        """Remove the records retention no longer keeps; returns how many were removed.

        Per job: its inline data and staging leftovers, then the record
        (``unlink``: atomic, so never half a record); one fsync of the
        directory; memory last. A crash before a record's unlink leaves that
        whole record, which the next start-up prunes again.
        """
        if not self._retention_on or not self.enabled:
            return 0
        async with self._prune_lock:
            return await self._prune(time.time() if now is None else now)

    async def _prune(self, now: float) -> int:
        doomed = self._expired(now)
        if not doomed:
            return 0
        removed = await asyncio.to_thread(self._remove_records, list(doomed))
        self._prune_backoff = len(removed) < len(doomed)
        reasons: dict[str, int] = {}
        for job_id in removed:
            # Ended and on disk: no write, cancel or slot refers to it any more.
            job = self._jobs.pop(job_id, None)
            self._ended.pop(job_id, None)
            self._notified.pop(job_id, None)
            self._written.pop(job_id, None)
            if job is not None and job.request.idempotency_key:
                index = (job.created_by, job.request.idempotency_key)
                if self._idempotency.get(index) == job_id:
                    del self._idempotency[index]
            reasons[doomed[job_id]] = reasons.get(doomed[job_id], 0) + 1
        for reason, n in reasons.items():
            prom.record_training_jobs_pruned(reason, n)
        if removed:
            self._count_states()
            log.info(
                "removed ended training job records (retention)",
                extra={"removed": len(removed), **{f"by_{r}": n for r, n in reasons.items()}},
            )
        return len(removed)

    def _remove_records(self, job_ids: list[str]) -> list[str]:
        """Delete each job's files, record last; the ids whose record is gone."""
        removed = []
        for job_id in job_ids:
            try:
                self._drop_files(job_id)
                (self.dir / f"{job_id}.json").unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not remove the record of job %s: %s", job_id, exc)
                continue
            removed.append(job_id)
        if removed:
            try:
                fsync_dir(self.dir)
            except OSError as exc:  # the unlinks stand; a crash may bring some back
                log.warning("could not fsync %s after removing job records: %s", self.dir, exc)
        return removed

    def _next_prune_in(self, now: float) -> float:
        """Seconds until the next retention pass is due."""
        pause = PRUNE_INTERVAL_S
        if self.settings.job_retention_s > 0 and self._ended and not self._prune_backoff:
            due = min(self._ended.values()) + self.settings.job_retention_s
            pause = min(pause, due - now)
        return max(pause, MIN_PRUNE_PAUSE_S)

    async def _prune_loop(self) -> None:
        """While serving: a pass when a job ended, when a record is due, at least every 5 min."""
        assert self._prune_wake is not None
        while True:
            # Not asyncio.wait_for: on Python 3.11 it can swallow a cancel that
            # arrives as the event fires (close() would then wait forever).
            woken = asyncio.ensure_future(self._prune_wake.wait())
            try:
                await asyncio.wait({woken}, timeout=self._next_prune_in(time.time()))
            finally:
                woken.cancel()
            self._prune_wake.clear()
            try:
                await self.prune()
            except Exception:
                self._prune_backoff = True
                log.exception("removing old training job records failed; trying again later")

    # --- queries -----------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """One job; NotFound when unknown."""
        self._require_enabled()
        job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise NotFound(f"training job {str(job_id)[:80]!r} not found")
        return job.snapshot()

    def list(self, model_name: str = "", states: Iterable[str] = (), limit: int = 100) -> list[Job]:
        """Jobs, newest first, optionally for one model and some states."""
        self._require_enabled()
        wanted = set(states)
        jobs = [
            j
            for j in self._jobs.values()
            if (not model_name or j.model_name == model_name) and (not wanted or j.state in wanted)
        ]
        jobs.sort(key=lambda j: (j.created_at, j.id), reverse=True)
        return [j.snapshot() for j in jobs[: limit if limit > 0 else 100]]

    async def watch(self, job_id: str) -> AsyncIterator[Job]:
        """The job now, then every change, ending after a final state."""
        self._require_enabled()
        job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise NotFound(f"training job {str(job_id)[:80]!r} not found")
        queue: asyncio.Queue[Job] = asyncio.Queue()
        # Subscribe and snapshot with no await in between: no change is lost.
        self._watchers.setdefault(job_id, set()).add(queue)
        try:
            current = job.snapshot()
            yield current
            last = current.seq
            while not current.final:
                current = await queue.get()
                if current.seq <= last:
                    continue
                last = current.seq
                yield current
        finally:
            watchers = self._watchers.get(job_id)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    self._watchers.pop(job_id, None)

    # --- cancel ------------------------------------------------------------

    async def cancel(self, job_id: str, reason: str = CANCELLED_BY_CALLER) -> Job:
        """Cancel a queued or running job; FailedPrecondition when it already ended."""
        self._require_enabled()
        job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise NotFound(f"training job {str(job_id)[:80]!r} not found")
        if job.final:
            raise FailedPrecondition(
                f"training job {job_id!r} already ended ({job.state}); there is nothing to cancel"
            )
        if job.state == QUEUED:
            with contextlib.suppress(ValueError):
                self._queue.remove(job_id)
            await self._finish(job, CANCELLED, reason)
            return job.snapshot()
        if job.stage == REGISTERING:
            raise FailedPrecondition(
                f"training job {job_id!r} is registering its version and can no longer be cancelled"
            )
        self._request_cancel(job_id, reason)
        # The slot kills the worker and records CANCELLED; wait for that.
        return await self._until_final(job_id)

    def _request_cancel(self, job_id: str, reason: str) -> None:
        self._cancel_reason.setdefault(job_id, reason)
        self._cancel.setdefault(job_id, asyncio.Event()).set()

    # --- state changes -----------------------------------------------------

    async def _save(self, job: Job) -> None:
        """Persist the job's current state, then tell its watchers."""
        job.seq += 1
        snap = job.snapshot()
        data = json.dumps(snap.to_dict(), separators=(",", ":")).encode()
        await asyncio.to_thread(self._write_record, snap.id, snap.seq, data)
        self._notify(snap)
        self._count_states()

    def _count_states(self) -> None:
        """The jobs-per-state gauge (every state present, zeros included)."""
        counts = dict.fromkeys(STATES, 0)
        for j in self._jobs.values():
            counts[j.state] = counts.get(j.state, 0) + 1
        prom.set_training_jobs(counts)

    def _write_record(self, job_id: str, seq: int, data: bytes) -> None:
        # Writes may finish out of order (threads); never let an older state win.
        with self._write_lock:
            if self._written.get(job_id, -1) >= seq:
                return
            write_atomic(self.dir / f"{job_id}.json", data)
            self._written[job_id] = seq

    def _notify(self, snap: Job) -> None:
        if self._notified.get(snap.id, -1) >= snap.seq:
            return
        self._notified[snap.id] = snap.seq
        for queue in self._watchers.get(snap.id, ()):
            queue.put_nowait(snap)

    async def _finish(self, job: Job, state: str, error: str = "") -> None:
        job.state, job.error, job.finished_at, job.stage = state, error, time.time(), ""
        job.worker_pid = 0
        self._cancel.pop(job.id, None)
        self._cancel_reason.pop(job.id, None)
        # Staging and inline files go first, so that whoever sees the final
        # state sees them gone (a crash in between: restart recovery decides).
        await asyncio.to_thread(self._drop_files, job.id)
        await self._save(job)
        # Only now (the final record on disk) may retention remove it.
        self._ended[job.id] = _ended_at(job)
        if self._prune_wake is not None:
            self._prune_wake.set()
        if job.started_at:
            prom.record_training_job(job.algorithm, state, job.finished_at - job.started_at)
        log.info(
            "training job ended",
            extra={"job": job.id, "state": state, "version": job.model_version, "error": error},
        )

    # --- the worker pool ---------------------------------------------------

    async def _next_job(self) -> Job | None:
        assert self._wake is not None
        while not self._shutting_down:
            while self._queue:
                job = self._jobs.get(self._queue.popleft())
                if job is not None and job.state == QUEUED:
                    return job
            self._wake.clear()
            await self._wake.wait()
        return None

    async def _slot(self, index: int) -> None:
        while True:
            job = await self._next_job()
            if job is None:
                return
            try:
                await self._run(index, job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("training slot %d failed while running job %s", index, job.id)
                if not job.final:
                    await self._finish(job, FAILED, "internal error while running the job")

    async def _worker(self, index: int) -> _Worker:
        """The slot's worker, started if needed and ready (its libraries imported)."""
        never = asyncio.Event()
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
            event = await self._wait(w, never, WORKER_START_TIMEOUT_S)
            if event == "message":
                with contextlib.suppress(EOFError, OSError):
                    kind, _payload = w.conn.recv()
                    if kind == "ready":
                        w.ready = True
                        return w
            code = await w.stop()
            self._workers[index] = None
            log.error("training worker %d failed to start (%s, exit code %s)", index, event, code)
        raise _NoWorker(
            f"the training worker process could not start (exit code {code}); see the server log"
        )

    async def _replace(self, index: int, kill: bool = True) -> int | None:
        w = self._workers[index]
        code = await w.stop(kill=kill) if w is not None else None
        self._workers[index] = None if self._shutting_down else _Worker(self._ctx, self.settings)
        return code

    def _spec(self, job: Job) -> dict[str, Any]:
        src = job.request.dataset
        dataset: dict[str, Any] = {"kind": src.kind}
        if src.kind == "builtin":
            dataset["name"] = src.value
        elif src.kind == "inline":
            dataset["path"] = str(self._inline_path(job.id))
        else:
            info = self.datasets.get(src.value)
            dataset.update(
                id=info.id,
                path=str(self.datasets.data_path(info.id)),
                columns=[asdict(c) for c in info.columns],
            )
        return {
            "job_id": job.id,
            "model_name": job.model_name,
            "algorithm": job.algorithm,
            "task": job.task,
            "params": job.params,
            "target": job.target,
            "features": job.features,
            "test_size": job.test_size,
            "seed": job.seed,
            "dataset": dataset,
            "staging_path": str(self._staging_path(job.id)),
            "home": str(self.settings.home.resolve()),
            "created_by": job.created_by,
            "description": job.request.description,
        }

    async def _wait(self, w: _Worker, cancel: asyncio.Event, within_s: float) -> str:
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

    async def _run(self, index: int, job: Job) -> None:
        try:
            w = await self._worker(index)
        except _NoWorker as exc:
            if job.state == QUEUED:
                await self._finish(job, FAILED, str(exc))
            return
        if job.state != QUEUED:
            return  # cancelled while a worker was being (re)started
        job.state, job.stage, job.started_at, job.worker_pid = (
            RUNNING,
            STAGES[0],
            time.time(),
            w.pid,
        )
        await self._save(job)
        cancel = self._cancel.setdefault(job.id, asyncio.Event())
        try:
            spec = await asyncio.to_thread(self._spec, job)
        except HighPeaksError as exc:
            await self._finish(job, FAILED, exc.message)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + job.time_limit_s
        with contextlib.suppress(OSError):  # a dead worker: its sentinel says so below
            w.conn.send(("run", spec))
        result: dict[str, Any] | None = None
        while result is None:
            event = await self._wait(w, cancel, max(0.0, deadline - loop.time()))
            if event == "message":
                try:
                    kind, payload = w.conn.recv()
                except (EOFError, OSError):
                    event = "died"
                else:
                    if kind == "stage":
                        metrics = payload.get("metrics")
                        if payload["stage"] != job.stage or metrics is not None:
                            job.stage = payload["stage"]
                            if metrics is not None:
                                job.metrics = dict(metrics)
                            await self._save(job)
                    elif kind == "error":
                        await self._finish(job, FAILED, str(payload["reason"]))
                        return
                    elif kind == "result":
                        result = payload
                    continue
            if event == "died":
                code = await self._replace(index)
                log.error("training worker died during job %s (exit code %s)", job.id, code)
                await self._finish(job, FAILED, _crash_reason(code))
                return
            if event == "cancel":
                await self._replace(index)
                await self._finish(job, CANCELLED, self._cancel_reason.get(job.id, ""))
                return
            if event == "timeout":
                stage = _STAGE_WORDS.get(job.stage, job.stage.lower())
                await self._replace(index)
                await self._finish(
                    job,
                    FAILED,
                    f"time limit of {job.time_limit_s:g} s exceeded while {stage};"
                    " nothing was published",
                )
                return
        await self._register(job, result)

    async def _register(self, job: Job, result: dict[str, Any]) -> None:
        if job.id in self._cancel_reason:
            await self._finish(job, CANCELLED, self._cancel_reason[job.id])
            return
        job.stage = REGISTERING
        job.metrics = dict(result.get("metrics", job.metrics))
        await self._save(job)
        try:
            meta = VersionMeta.from_dict(result["meta"])
            stored = await asyncio.to_thread(
                self.registry.publish_file,
                job.model_name,
                Path(result["path"]),
                meta,
                tuple(job.request.aliases),
            )
        except HighPeaksError as exc:
            await self._finish(job, FAILED, f"registering the version failed: {exc.message}")
            return
        except Exception:
            log.exception("publishing job %s failed", job.id)
            await self._finish(
                job, FAILED, "registering the version failed (internal error; see the server log)"
            )
            return
        job.model_version = stored.version
        await self._finish(job, SUCCEEDED)


def _ended_at(job: Job) -> float:
    """When a job reached its final state (its creation for records without one)."""
    return job.finished_at or job.created_at


class _NoWorker(Exception):
    """No worker process could be started for a slot."""


class _Duplicate(Exception):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


def _features(info: DatasetInfo, target: str, requested: list[str]) -> list[tuple[str, str]]:
    """(name, type) of the feature columns, checked against the dataset."""
    if requested:
        seen: set[str] = set()
        for name in requested:
            if name == target:
                raise InvalidArgument(f"feature column {name!r} is the target column")
            if name in seen:
                raise InvalidArgument(f"feature column {name!r} is listed twice")
            if info.column(name) is None:
                raise InvalidArgument(f"feature column {str(name)[:80]!r} is not in the dataset")
            seen.add(name)
        names = list(requested)
    else:
        names = [n for n in info.column_names if n != target]
    if not names:
        raise InvalidArgument("the dataset has no feature columns besides the target")
    out = []
    for name in names:
        col = info.column(name)
        assert col is not None
        if col.missing >= info.rows:
            raise InvalidArgument(f"feature column {name!r} has no values; leave it out")
        if col.type == CATEGORICAL and col.distinct_values > MAX_CATEGORIES:
            raise InvalidArgument(
                f"feature column {name!r} has {col.distinct_values} distinct values; at most"
                f" {MAX_CATEGORIES} categories are one-hot encoded (leave it out with"
                " feature_columns)"
            )
        out.append((name, col.type))
    return out


__all__ = [
    "CANCELLED",
    "FAILED",
    "FINAL_STATES",
    "QUEUED",
    "RUNNING",
    "STAGES",
    "STATES",
    "SUCCEEDED",
    "DatasetSource",
    "Job",
    "JobManager",
    "TrainRequest",
]
