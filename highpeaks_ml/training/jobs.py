"""Training jobs: the job state machine over an executor; the server publishes.

Lifecycle::

    QUEUED -> RUNNING (LOADING_DATA, FITTING, EVALUATING, EXPORTING, VERIFYING,
              REGISTERING) -> SUCCEEDED | FAILED | CANCELLED

Who owns what:

- ``JobManager`` (this module): request checks, the queue, job records,
  watchers, cancel, time limits, retention, restart recovery and publishing.
  It knows no process, pipe or cluster.
- An :class:`~highpeaks_ml.training.executor.Executor` runs each job where
  it runs jobs (``local_executor``: worker processes of this server; Ray):
  the manager hands it a self-contained :class:`~highpeaks_ml.training.spec.JobSpec`
  (the dataset's bytes inside) and follows its events. It never publishes.
- ``worker.run_job`` is the job itself: fit, evaluate, export, verify; it
  returns the ONNX bytes and the version's metadata.
- A search job (``TrainRequest.search``; training/search.py) is planned at
  submission (bad spaces are refused before a job exists). When it runs, the
  manager asks the search's sampler for configurations and runs each as a
  trial on the executor (``TrialExecutor.run_trial``), up to the plan's
  parallelism, recording every trial and the progress (stage SEARCHING);
  then it runs the best configuration as the job's ordinary run (the refit)
  and publishes it with the search's record. Cancel and the time limit stop
  the pending trials and cancel the running ones; the time limit covers the
  search and the refit. If every trial fails the job fails with the first
  trial's reason.
- Promote-if-better (``TrainRequest.promote_if_better``): the spec carries the
  alias's current version (ONNX bytes); the worker scores both models on the
  job's held-out rows; at publish the manager moves the alias only if the new
  score is better and the alias still points where it did (recorded in the
  job and the version).

Details:

- ``start_training`` validates everything that can be checked without
  training (names, algorithm and hyperparameters, dataset, target, split
  sizes, resources), persists the job and returns it QUEUED at once.
- ``executor.slots`` slot tasks take queued jobs in order. A job stays QUEUED
  until the executor reports it started (a local worker may still be
  starting), then RUNNING with the stage the executor reports.
- Its ``Succeeded`` result is checked (it is this job's model) and published
  by the server with ``registry.publish`` together with the requested
  aliases: the server is the only writer, and a job publishes at most once.
- Cancel, time limit, shutdown: the manager asks the executor to cancel the
  run (the local one kills the worker process); nothing is published. A run
  that fails (a crash, an out-of-memory kill, a job over its memory bound)
  fails its job with the executor's reason; the server keeps serving.
- Every job is a record in the job record store (registry/jobrecords.py:
  ``<home>/jobs/<id>.json``, or ``jobs/<id>.json`` on S3) replaced atomically
  on each change; inline rows wait beside it in the same store (``<id>.csv``)
  until the job ends, so a queued inline job survives a restart on any
  backend. At start-up, jobs found RUNNING were interrupted by a crash or
  kill of the server: they become FAILED, except one killed while
  REGISTERING whose version did land in the registry (found by the version's
  ``job_id``): it becomes SUCCEEDED with that version, any requested alias
  the crash left unset (missing, or on an older version) is set, and a
  promote-if-better decision recorded in the version is applied under the
  same guard as at publish. QUEUED ones run.
- A record write the store refuses (S3 unreachable, a full disk) loses no
  state and stops no slot: the job goes on from its in-memory state, its
  watchers see every change, and the newest record of each such job is
  retried in the background (backoff 0.5 s doubling to 30 s) until it lands;
  logged, and counted by ``highpeaks_ml_training_job_record_write_failures_total``
  and ``highpeaks_ml_training_job_records_unsaved``. Retention never removes
  a job whose final record is not stored yet. Only the first record (the
  submission) must land: otherwise StartTraining fails and no job exists.
- Watchers (``watch``) receive a snapshot of every change, in order.
- Idempotency keys: a second request with a key already used (by the same
  caller) returns that key's job when its parameters are the same, and is
  FAILED_PRECONDITION naming that job when they differ.
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
import hashlib
import json
import logging
import math
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from highpeaks_ml import metrics as prom
from highpeaks_ml.config import Settings
from highpeaks_ml.errors import (
    FailedPrecondition,
    HighPeaksError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    quote,
)
from highpeaks_ml.registry.base import ModelStore, VersionMeta, validate_alias, validate_name
from highpeaks_ml.registry.jobrecords import JobRecordStore, LocalJobRecords
from highpeaks_ml.storage import TMP_SUFFIX
from highpeaks_ml.training import catalogue
from highpeaks_ml.training import search as searching
from highpeaks_ml.training.datasets import (
    CATEGORICAL,
    DEFAULT_TARGET,
    DatasetInfo,
    DatasetStore,
    analyse_csv,
    check_target_column,
    inline_csv,
)
from highpeaks_ml.training.device import choose_training_device
from highpeaks_ml.training.executor import Executor, TrialExecutor, make_executor
from highpeaks_ml.training.pipeline import (
    MAX_CATEGORIES,
    check_params_fit_rows,
    check_split_sizes,
)
from highpeaks_ml.training.spec import (
    SEARCHING,
    STAGE_WORDS,
    STAGES,
    Baseline,
    BuiltinData,
    BuiltinDataset,
    Cancelled,
    DatasetSource,
    Failed,
    InlineData,
    InlineDataset,
    JobData,
    JobResult,
    JobSpec,
    Placement,
    Resources,
    StageChanged,
    Started,
    Succeeded,
    TrialSpec,
    UploadedData,
    UploadedDataset,
)

log = logging.getLogger("highpeaks_ml.jobs")

QUEUED = "QUEUED"
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})
REGISTERING = "REGISTERING"

DEFAULT_TEST_SIZE = 0.2
MAX_IDEMPOTENCY_KEY = 128
MAX_DESCRIPTION = 4096
#: The smallest memory bound a job may ask for (MiB): less cannot even load the data.
MIN_JOB_MEMORY_MB = 64
#: Staging files of the worker protocol before the executor seam; removed at start-up.
STAGING_PREFIX = "job-"
INTERRUPTED = "interrupted by a server restart; the job did not finish (start it again)"
SHUTTING_DOWN = "server shutting down"
CANCELLED_BY_CALLER = "cancelled by a caller"
#: Longest pause between two retention passes while serving; a pass also runs
#: when a job ends and when the oldest ended record is due.
PRUNE_INTERVAL_S = 300.0
#: Shortest pause between two passes, so a tiny retention cannot spin the loop.
MIN_PRUNE_PAUSE_S = 1.0
#: Retries of record writes the store refused: the first pause, doubled up to the last.
RECORD_RETRY_MIN_S = 0.5
RECORD_RETRY_MAX_S = 30.0
# Job records keep the request's dataset in the JSON shape they always had.
_KIND_UPLOADED, _KIND_BUILTIN, _KIND_INLINE = "dataset_id", "builtin", "inline"


def _source_to_dict(src: DatasetSource) -> dict[str, Any]:
    if isinstance(src, UploadedDataset):
        return {"kind": _KIND_UPLOADED, "value": src.dataset_id, "row_count": 0}
    if isinstance(src, BuiltinDataset):
        return {"kind": _KIND_BUILTIN, "value": src.name, "row_count": 0}
    return {"kind": _KIND_INLINE, "value": "", "row_count": src.row_count}


def _source_from_dict(data: Mapping[str, Any]) -> DatasetSource:
    kind = data.get("kind")
    if kind == _KIND_UPLOADED:
        return UploadedDataset(str(data.get("value", "")))
    if kind == _KIND_BUILTIN:
        return BuiltinDataset(str(data.get("value", "")))
    if kind == _KIND_INLINE:
        return InlineDataset(None, int(data.get("row_count", 0)))
    raise ValueError(f"unknown dataset kind {kind!r}")


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
    #: CPUs and memory (MiB) asked for; 0 = the server's defaults.
    cpus: int = 0
    memory_mb: int = 0
    #: A hyperparameter search instead of one fit (training/search.py).
    search: searching.SearchRequest | None = None
    #: An alias to move to the new version only if it scores better.
    promote_if_better: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; inline rows are left out (the data lives beside the job as CSV)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("dataset", "search")}
        d["dataset"] = _source_to_dict(self.dataset)
        d["search"] = self.search.to_dict() if self.search is not None else None
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainRequest:
        """Inverse of ``to_dict`` (inline rows are not restored)."""
        d = dict(data)
        src = _source_from_dict(d.pop("dataset", {}))
        found = d.pop("search", None)
        d["search"] = searching.SearchRequest.from_dict(found) if found else None
        known = set(cls.__dataclass_fields__)
        return cls(dataset=src, **{k: v for k, v in d.items() if k in known})

    def fingerprint(self) -> str:
        """sha256 of the parameters, inline rows included (idempotency: same key, same request?)."""
        d = self.to_dict()
        d.pop("idempotency_key", None)
        if isinstance(self.dataset, InlineDataset) and self.dataset.rows is not None:
            rows = json.dumps(list(self.dataset.rows), sort_keys=True, default=str)
            d["dataset"]["rows_sha256"] = hashlib.sha256(rows.encode()).hexdigest()
        text = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()


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
    cpus: int = 1
    memory_mb: int = 0
    #: sha256 of the request's parameters ("" in records from before it existed).
    request_sha256: str = ""
    # Where it ran (set when it started).
    backend: str = ""
    node: str = ""
    worker: str = ""
    worker_pid: int = 0
    #: A search job's resolved plan (search.SearchPlan.to_dict; {} = no search).
    search_plan: dict[str, Any] = field(default_factory=dict)
    #: A search's progress ("total", "done", "failed", "running", "best_trial",
    #: "best_score", "best_params", "stopped_by_budget") and its "trials".
    search: dict[str, Any] = field(default_factory=dict)
    #: The promote-if-better decision, once registered (see VersionMeta.promotion).
    promotion: dict[str, Any] = field(default_factory=dict)
    #: The W3C traceparent of the StartTraining call's span when tracing is on and
    #: the call was sampled ("" otherwise): the job's spans join that trace.
    trace_parent: str = ""
    #: [stage, epoch seconds it began] per stage, kept only for a traced job.
    stage_times: list[list[Any]] = field(default_factory=list)
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
        d = {k: v for k, v in asdict(self).items() if k != "request"}
        d["request"] = self.request.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        """Inverse of ``to_dict``."""
        d = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        d["request"] = TrainRequest.from_dict(d["request"])
        return cls(**d)


class JobTracer(Protocol):
    """Traces jobs (api/tracing.py); the manager has one only while tracing is on."""

    def current_parent(self) -> str:
        """The calling RPC's span as a W3C traceparent ("" when it is not sampled)."""
        ...

    def job_ended(self, job: Job) -> None:
        """Export the spans of a traced job that has just ended (never raises)."""
        ...


class JobManager:
    """Training jobs: submission, the queue, records, watchers, publishing; runs on an executor."""

    def __init__(
        self,
        settings: Settings,
        registry: ModelStore,
        datasets: DatasetStore,
        executor: Executor | None = None,
        records: JobRecordStore | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.datasets = datasets
        self.dir = Path(settings.home) / "jobs"
        self.tmp_dir = Path(settings.home) / "tmp"
        #: Where job records are kept (registry/jobrecords.py): ``<home>/jobs`` by default.
        self.records = records if records is not None else LocalJobRecords(self.dir)
        self._jobs: dict[str, Job] = {}
        self._idempotency: dict[tuple[str, str], str] = {}
        self._queue: deque[str] = deque()
        #: Jobs handed to the executor whose run has not ended.
        self._open: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: dict[str, set[asyncio.Queue[Job]]] = {}
        self._notified: dict[str, int] = {}
        #: Runs the manager asked to stop -> (state, reason) recorded when they end.
        self._stop: dict[str, tuple[str, str]] = {}
        #: Search jobs whose trials are running -> set to stop them.
        self._search_stops: dict[str, asyncio.Event] = {}
        self._written: dict[str, int] = {}
        #: Jobs whose newest record the store refused -> (seq, bytes): retried by
        #: the record flusher until written (guarded by _write_lock).
        self._unsaved: dict[str, tuple[int, bytes]] = {}
        self._flush_wake: asyncio.Event | None = None
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
        #: False on a serving-only server (``training_workers == 0``).
        self.enabled = settings.training_workers > 0
        self.executor: Executor | None = None
        #: Set by the server when tracing is on (``OTEL_*``); None: nothing is traced.
        self.tracer: JobTracer | None = None
        #: Where XGBoost trains (training/device.py): decided once; an unusable
        #: training_device=cuda fails start-up here with Unavailable.
        self.training_device = "cpu"
        if self.enabled:
            self.executor = executor if executor is not None else make_executor(settings)
            self.training_device = choose_training_device(settings).device

    # --- life cycle --------------------------------------------------------

    async def start(self) -> None:
        """Load and recover jobs, start the executor, submit the demo job when asked."""
        self._wake = asyncio.Event()
        if not self.enabled or self.executor is None:
            # Never touch the jobs or staging files: they belong to the trainer.
            log.info("training is off in this server (training_workers=0)")
            self._started = True
            return
        await asyncio.to_thread(self._prepare_dirs)
        records = await asyncio.to_thread(self._load_records)
        # First: the recovery below writes records, which the store may refuse.
        self._flush_wake = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="training-records"))
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
                self._trace(job)
            elif job.state == QUEUED:
                if not job.memory_mb:  # queued before jobs had resources: the defaults
                    job.memory_mb = self.settings.job_memory_mb
                self._queue.append(job.id)
            if job.final and job.id not in self._unsaved:
                self._ended[job.id] = _ended_at(job)
        await asyncio.to_thread(self._drop_orphans)
        await self.prune()
        await self.executor.start()
        for index in range(self.executor.slots):
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
        version = next((v for v in info.versions if v.job_id == job.id), None)
        if version is None:
            return None
        landed = version.version
        self._complete_promotion(job, info.aliases, version)
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

    def _complete_promotion(
        self, job: Job, aliases: Mapping[str, int], version: VersionMeta
    ) -> None:
        """Promote-if-better after a restart: the decision recorded in the landed
        version (made before the publish) is applied, under the same guard as at
        publish: the alias moves only if the version scored better and the alias
        still points where the decision found it (nowhere, or the version compared
        with). The job gets the version's decision; a decision the guard now
        refuses is recorded as not promoted, with why."""
        alias = job.request.promote_if_better
        decision = dict(version.promotion)
        if not alias or decision.get("alias") != alias:
            return
        landed = version.version
        now = aliases.get(alias)
        compared = int(decision.get("current_version", 0) or 0)
        if decision.get("promoted") and now != landed:
            if now == (compared or None):
                self.registry.set_alias(job.model_name, alias, landed)
                log.warning(
                    "job %s: promote-if-better alias %r of model %s set to version %d after"
                    " a restart",
                    job.id,
                    alias,
                    job.model_name,
                    landed,
                )
            else:
                where = f"version {now}" if now is not None else "nowhere (deleted)"
                decision["promoted"] = False
                decision["reason"] = (
                    f"{decision.get('reason', '')}; but the server restarted before the alias"
                    f" moved and it now points to {where}: it was left alone"
                ).lstrip("; ")
                log.warning(
                    "job %s: promote-if-better alias %r left on %s after a restart",
                    job.id,
                    alias,
                    where,
                )
        job.promotion = decision

    def _prepare_dirs(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for entry in os.listdir(self.tmp_dir):
            if entry.startswith(STAGING_PREFIX):
                (self.tmp_dir / entry).unlink(missing_ok=True)
        for entry in os.listdir(self.dir):
            if entry.startswith(".") and entry.endswith(TMP_SUFFIX):
                (self.dir / entry).unlink(missing_ok=True)
        self.records.prepare()

    def _drop_orphans(self) -> None:
        """Remove inline rows no queued job needs: its job ended (a crash, or a store
        error, before they went) or its record is gone (a crash between the two)."""
        try:
            doomed = [
                job_id
                for job_id in self.records.inline_ids()
                if (job := self._jobs.get(job_id)) is None or job.final
            ]
        except Exception as exc:
            log.warning("could not list the inline rows of jobs: %s", _first_line(exc))
            return
        self._drop_inline(doomed)

    def _load_records(self) -> list[Job]:
        jobs = []
        for entry, data in self.records.load_all():
            try:
                jobs.append(Job.from_dict(json.loads(data)))
            except (ValueError, TypeError, KeyError):
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
                    dataset=BuiltinDataset("iris"),
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
                await self._request_stop(job.id, CANCELLED, SHUTTING_DOWN)
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
        """Stop the slot tasks and the executor."""
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
        if self._unsaved:
            # A last try for records the store refused; what stays unsaved is the
            # record before (a RUNNING one is then recovered at the next start-up).
            error = await asyncio.to_thread(self._flush_once)
            if error is not None:
                log.error(
                    "%d training job record(s) could not be stored before shutting down: %s",
                    len(self._unsaved),
                    _first_line(error),
                )
        if self.executor is not None and self._started:
            await self.executor.close()

    def health(self) -> str | None:
        """None while jobs can run; else why not (the executor's word)."""
        if not self.enabled or self.executor is None:
            return None
        return self.executor.health()

    # --- submission --------------------------------------------------------

    def _require_enabled(self) -> None:
        if not self.enabled:
            raise Unavailable(
                "this server runs no training (training_workers=0); send TrainService job"
                " calls to the server that trains"
            )

    def _known(self, created_by: str, key: str, fingerprint: str) -> Job | None:
        """The job of an idempotency key already used, if any; FailedPrecondition when
        it was used with other parameters."""
        if not key:
            return None
        known = self._idempotency.get((created_by, key))
        if known is None:
            return None
        job = self._jobs[known]
        if job.request_sha256 and job.request_sha256 != fingerprint:
            raise FailedPrecondition(
                f"idempotency key {quote(key)} was used for training job {job.id} with other"
                " parameters; send the same parameters to get that job, or use a new key"
            )
        return job

    def _resources(self, req: TrainRequest) -> Resources:
        """The job's CPUs and memory: asked for, else the defaults; within the maxima."""
        max_cpus = self.settings.max_job_cpus or os.cpu_count() or 1
        cpus = int(req.cpus) or min(self.settings.job_cpus, max_cpus)
        if cpus < 1 or cpus > max_cpus:
            raise InvalidArgument(
                f"resources.cpus must be between 1 and {max_cpus} (this server's maximum per"
                f" job), got {req.cpus}"
            )
        max_mb = self.settings.max_job_memory_mb or _physical_memory_mb()
        memory_mb = int(req.memory_mb) or min(self.settings.job_memory_mb, max_mb)
        if memory_mb < MIN_JOB_MEMORY_MB or memory_mb > max_mb:
            raise InvalidArgument(
                f"resources.memory_mb must be between {MIN_JOB_MEMORY_MB} and {max_mb} (this"
                f" server's maximum per job), got {req.memory_mb}"
            )
        return Resources(cpus=cpus, memory_mb=memory_mb)

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
        fingerprint = req.fingerprint()
        if (known := self._known(created_by, key, fingerprint)) is not None:
            return known.snapshot()
        validate_name(req.model_name, "model name")
        aliases = list(dict.fromkeys(req.aliases))
        for alias in aliases:
            validate_alias(alias)
        if req.promote_if_better:
            validate_alias(req.promote_if_better)
            if req.promote_if_better in aliases:
                raise InvalidArgument(
                    f"alias {quote(req.promote_if_better)} is in both aliases and"
                    " promote_if_better; name it in one of them"
                )
        if req.search is not None and not isinstance(self.executor, TrialExecutor):
            backend = getattr(self.executor, "backend", "this")
            raise FailedPrecondition(
                f"the {backend} training backend of this server cannot run hyperparameter"
                " searches yet; train without search"
            )
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
        resources = self._resources(req)
        self._check_queue_room()

        job_id = uuid.uuid4().hex
        try:
            info = await self._dataset_info(req.dataset, job_id)
            # An explicit target wins; else the one named when the dataset was uploaded.
            target = req.target_column or info.target_column or DEFAULT_TARGET
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
            plan = None
            if req.search is not None:
                plan = searching.plan_search(
                    req.search,
                    algorithm=algorithm,
                    task=task,
                    fixed=req.hyperparameters,
                    train_rows=train_rows,
                    n_classes=classes,
                    job_seed=0 if req.seed is None else int(req.seed),
                    default_parallelism=self.executor.slots if self.executor else 1,
                    max_trials_cap=self.settings.max_search_trials,
                )
            # Re-check after the awaits above: a concurrent request may have
            # used the key or filled the queue meanwhile.
            if (known := self._known(created_by, key, fingerprint)) is not None:
                raise _Duplicate(known.id)
            self._check_queue_room()
            inline = isinstance(req.dataset, InlineDataset)
            if inline:
                # Into the job record store before the record (a crash in between
                # leaves rows without a job, which the next start-up removes).
                await asyncio.to_thread(self._keep_inline, job_id)
        except _Duplicate as dup:
            known_job = self._jobs[dup.job_id].snapshot()  # before an await: it may be pruned
            await asyncio.to_thread(self._scratch(job_id).unlink, missing_ok=True)
            return known_job
        except BaseException:
            await asyncio.to_thread(self._discard_submission, job_id, req.dataset)
            raise
        seed = 0 if req.seed is None else int(req.seed)
        src = req.dataset
        # The job keeps the request without the inline rows (they are stored beside it).
        if isinstance(src, InlineDataset):
            src = InlineDataset(None, len(src.rows or ()))
        stored_req = replace(req, aliases=aliases, dataset=src)
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
            cpus=resources.cpus,
            memory_mb=resources.memory_mb,
            request_sha256=fingerprint,
            search_plan=plan.to_dict() if plan is not None else {},
            search=_progress(plan) if plan is not None else {},
            # The caller's span, read here while the RPC's context is current.
            trace_parent=self.tracer.current_parent() if self.tracer is not None else "",
        )
        self._jobs[job_id] = job
        if key:
            self._idempotency[(created_by, key)] = job_id
        try:
            await self._save(job, strict=True)
        except BaseException:
            self._jobs.pop(job_id, None)
            if key:
                self._idempotency.pop((created_by, key), None)
            await asyncio.to_thread(self._discard_submission, job_id, req.dataset)
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
        if isinstance(source, UploadedDataset):
            return await asyncio.to_thread(self.datasets.get, source.dataset_id)
        if isinstance(source, BuiltinDataset):
            info, _digest = await asyncio.to_thread(self.datasets.builtin, source.name)
            return info
        if isinstance(source, InlineDataset):
            rows = list(source.rows or ())
            data = await asyncio.to_thread(inline_csv, rows)
            # Checked on local scratch space; stored once the request is accepted.
            path = self._scratch(job_id)
            await asyncio.to_thread(path.write_bytes, data)
            n, columns = await asyncio.to_thread(analyse_csv, path)
            return DatasetInfo("inline", "", "csv", len(data), n, columns, time.time())
        raise InvalidArgument("dataset: give a dataset_id, a builtin name or inline rows")

    def _scratch(self, job_id: str) -> Path:
        """Local scratch copy of a job's inline rows (``<home>/tmp``; staging files
        of this prefix are removed at start-up)."""
        return self.tmp_dir / f"{STAGING_PREFIX}{job_id}.csv"

    def _keep_inline(self, job_id: str) -> None:
        """Store a submitted job's inline rows beside its record (then drop the scratch copy)."""
        path = self._scratch(job_id)
        self.records.write_inline(job_id, path.read_bytes())
        path.unlink(missing_ok=True)

    def _discard_submission(self, job_id: str, source: DatasetSource) -> None:
        """A refused submission leaves nothing: its scratch copy and stored rows go."""
        if isinstance(source, InlineDataset):
            self._scratch(job_id).unlink(missing_ok=True)
            self._drop_inline([job_id])

    def _drop_inline(self, job_ids: list[str]) -> bool:
        """Remove jobs' inline rows from the store; False (logged) when it refused
        (the leftovers are removed at the next start-up)."""
        if not job_ids:
            return True
        try:
            self.records.remove_inline(job_ids)
        except Exception as exc:
            log.warning("could not remove the inline rows of %d job(s): %s", len(job_ids), exc)
            return False
        return True

    def _inline_rows(self, job_id: str) -> InlineData:
        """A job's inline rows from the store, with their columns (analysed on scratch)."""
        data = self.records.read_inline(job_id)
        if data is None:
            raise NotFound(
                "the job's inline rows are missing from the job record store; start it again"
            )
        path = self._scratch(job_id)
        try:
            path.write_bytes(data)
            _rows, columns = analyse_csv(path)
        finally:
            path.unlink(missing_ok=True)
        return InlineData(columns=columns, csv=data)

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
        inline = [j for j in doomed if _is_inline(self._jobs.get(j))]
        removed = await asyncio.to_thread(self._remove_records, list(doomed), inline)
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

    def _remove_records(self, job_ids: list[str], inline: list[str]) -> list[str]:
        """Delete the jobs' inline rows, then their records; the ids whose record is gone.
        Jobs whose rows the store refused keep their record (the next pass retries)."""
        if inline and not self._drop_inline(inline):
            job_ids = [j for j in job_ids if j not in set(inline)]
        return self.records.remove(job_ids)

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
            raise NotFound(f"training job {quote(job_id)} not found")
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
            raise NotFound(f"training job {quote(job_id)} not found")
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
            raise NotFound(f"training job {quote(job_id)} not found")
        if job.final:
            raise FailedPrecondition(
                f"training job {quote(job_id)} already ended ({job.state});"
                " there is nothing to cancel"
            )
        if job.id not in self._open:
            # Still in our queue: the executor never saw it.
            with contextlib.suppress(ValueError):
                self._queue.remove(job_id)
            await self._finish(job, CANCELLED, reason)
            return job.snapshot()
        if job.stage == REGISTERING:
            raise FailedPrecondition(
                f"training job {quote(job_id)} is registering its version and can no longer"
                " be cancelled"
            )
        await self._request_stop(job_id, CANCELLED, reason)
        # The run ends Cancelled and the slot records it; wait for that.
        return await self._until_final(job_id)

    async def _request_stop(self, job_id: str, state: str, reason: str) -> None:
        """Ask the executor to stop the job's run; record ``state``/``reason`` when it ends.
        The first request wins (a cancel after the time limit keeps the time limit)."""
        self._stop.setdefault(job_id, (state, reason))
        if (search_stop := self._search_stops.get(job_id)) is not None:
            search_stop.set()
        if self.executor is not None and job_id in self._open:
            await self.executor.cancel(job_id)

    # --- state changes -----------------------------------------------------

    async def _save(self, job: Job, strict: bool = False) -> None:
        """Persist the job's current state, then tell its watchers.

        A write the store refuses raises only when ``strict`` (the submission);
        otherwise the in-memory state stands, watchers are told, and the record
        is retried in the background until it lands (``_flush_loop``).
        """
        job.seq += 1
        snap = job.snapshot()
        data = json.dumps(snap.to_dict(), separators=(",", ":")).encode()
        try:
            await asyncio.to_thread(self._write_record, snap.id, snap.seq, data)
        except Exception as exc:
            if strict:
                raise
            self._defer_record(snap.id, snap.seq, data, exc)
        self._notify(snap)
        self._count_states()

    def _defer_record(self, job_id: str, seq: int, data: bytes, exc: BaseException) -> None:
        """Keep a refused record for the flusher (the newest one per job wins)."""
        with self._write_lock:
            if self._written.get(job_id, -1) >= seq:
                return
            pending = self._unsaved.get(job_id)
            if pending is None or pending[0] < seq:
                self._unsaved[job_id] = (seq, data)
            unsaved = len(self._unsaved)
        prom.record_job_record_write_failure(unsaved)
        log.warning(
            "could not store the record of training job %s (%s); the job goes on and the"
            " write is retried",
            job_id,
            _first_line(exc),
            extra={"job": job_id, "unsaved": unsaved},
        )
        if self._flush_wake is not None:
            self._flush_wake.set()

    def _flush_once(self) -> BaseException | None:
        """Write every pending record (oldest job first); the first error, which stops
        the pass (the store is likely down: no point hammering it job after job)."""
        with self._write_lock:
            pending = list(self._unsaved.items())
        for job_id, (seq, data) in pending:
            try:
                self._write_record(job_id, seq, data)
            except Exception as exc:
                return exc
        return None

    async def _flush_loop(self) -> None:
        """Retry refused record writes with backoff until every one landed."""
        assert self._flush_wake is not None
        while True:
            await self._flush_wake.wait()
            delay = RECORD_RETRY_MIN_S
            while self._unsaved:
                await asyncio.sleep(delay)
                before = self._unsaved_ids()
                error = await asyncio.to_thread(self._flush_once)
                landed = before - self._unsaved_ids()
                for job_id in landed:
                    self._record_landed(job_id)
                prom.set_job_records_unsaved(len(self._unsaved))
                if error is None:
                    delay = RECORD_RETRY_MIN_S
                else:
                    prom.record_job_record_write_failure(len(self._unsaved))
                    delay = min(delay * 2, RECORD_RETRY_MAX_S)
                    log.warning(
                        "job records still cannot be stored (%s); %d job(s) wait, next try in %g s",
                        _first_line(error),
                        len(self._unsaved),
                        delay,
                    )
                if landed:
                    log.info("stored %d delayed job record(s)", len(landed))
            self._flush_wake.clear()

    def _unsaved_ids(self) -> set[str]:
        with self._write_lock:  # writer threads remove entries as records land
            return set(self._unsaved)

    def _record_landed(self, job_id: str) -> None:
        """A delayed record was stored: an ended job's final one frees it for retention."""
        job = self._jobs.get(job_id)
        if job is not None and job.final and job_id not in self._unsaved:
            self._ended[job_id] = _ended_at(job)
            if self._prune_wake is not None:
                self._prune_wake.set()

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
            self.records.write(job_id, data)
            self._written[job_id] = seq
            pending = self._unsaved.get(job_id)
            if pending is not None and pending[0] <= seq:
                del self._unsaved[job_id]

    def _trace(self, job: Job) -> None:
        """Hand an ended job to the tracer (only one started by a traced call)."""
        if self.tracer is None or not job.trace_parent:
            return
        try:
            self.tracer.job_ended(job)
        except Exception:  # tracing is advisory: never fail a job for it
            log.exception("tracing job %s failed", job.id)

    def _notify(self, snap: Job) -> None:
        if self._notified.get(snap.id, -1) >= snap.seq:
            return
        self._notified[snap.id] = snap.seq
        for queue in self._watchers.get(snap.id, ()):
            queue.put_nowait(snap)

    async def _finish(self, job: Job, state: str, error: str = "") -> None:
        job.state, job.error, job.finished_at, job.stage = state, error, time.time(), ""
        self._stop.pop(job.id, None)
        # Inline rows go first, so that whoever sees the final state sees them
        # gone (a crash or a store error in between: the next start-up removes them).
        if _is_inline(job):
            await asyncio.to_thread(self._drop_inline, [job.id])
        await self._save(job)
        # Only once the final record is stored may retention remove it (a
        # refused write: when the flusher stores it).
        if job.id not in self._unsaved:
            self._ended[job.id] = _ended_at(job)
            if self._prune_wake is not None:
                self._prune_wake.set()
        if job.started_at:
            prom.record_training_job(job.algorithm, state, job.finished_at - job.started_at)
        self._trace(job)
        log.info(
            "training job ended",
            extra={"job": job.id, "state": state, "version": job.model_version, "error": error},
        )

    # --- running jobs on the executor ---------------------------------------

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
            self._open.add(job.id)
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("training slot %d failed while running job %s", index, job.id)
                if not job.final:
                    # Never let the slot die: it serves the jobs queued after this one.
                    try:
                        await self._finish(job, FAILED, "internal error while running the job")
                    except Exception:
                        log.exception("training slot %d could not end job %s", index, job.id)
            finally:
                self._open.discard(job.id)

    def _spec(self, job: Job) -> JobSpec:
        """The job as its executor gets it: self-contained, the dataset's bytes inside."""
        src = job.request.dataset
        data: JobData
        if isinstance(src, BuiltinDataset):
            data = BuiltinData(src.name)
        elif isinstance(src, InlineDataset):
            data = self._inline_rows(job.id)
        else:
            info = self.datasets.get(src.dataset_id)
            data = UploadedData(info.id, info.columns, self.datasets.read_bytes(info.id))
        return JobSpec(
            job_id=job.id,
            model_name=job.model_name,
            algorithm=job.algorithm,
            task=job.task,
            params=dict(job.params),
            target=job.target,
            features=tuple((str(n), str(t)) for n, t in job.features),
            test_size=job.test_size,
            seed=job.seed,
            data=data,
            resources=Resources(
                cpus=job.cpus, memory_mb=job.memory_mb, device=self.training_device
            ),
            time_limit_s=job.time_limit_s,
            created_by=job.created_by,
            description=job.request.description,
            compare_metric=self._compare_metric(job),
            baseline=self._baseline(job),
        )

    def _compare_metric(self, job: Job) -> str:
        """The metric promote-if-better compares with ("" when not asked)."""
        if not job.request.promote_if_better:
            return ""
        if job.search_plan:
            return str(job.search_plan["metric"])
        return searching.DEFAULT_METRIC[job.task]

    def _baseline(self, job: Job) -> Baseline | None:
        """The version the promote-if-better alias points at now, to score in the job."""
        alias = job.request.promote_if_better
        if not alias:
            return None
        try:
            info = self.registry.get_model(job.model_name)
        except NotFound:
            return None
        version = info.aliases.get(alias)
        if version is None:
            return None
        labels = next((v.class_labels for v in info.versions if v.version == version), ())
        try:
            onnx = self.registry.read_model(job.model_name, version)
        except HighPeaksError as exc:
            # Scored as unreadable in the job: the alias then stays where it is.
            log.warning("job %s: cannot read version %d to compare: %s", job.id, version, exc)
            onnx = b""
        return Baseline(version=version, onnx=onnx, class_labels=tuple(labels))

    async def _run(self, job: Job) -> None:
        assert self.executor is not None
        try:
            spec = await asyncio.to_thread(self._spec, job)
        except HighPeaksError as exc:
            await self._finish(job, FAILED, exc.message)
            return
        if job.final or job.id in self._stop:
            if not job.final:
                state, reason = self._stop[job.id]
                await self._finish(job, state, reason)
            return
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None
        if job.search_plan:
            # The time limit covers the whole search and the refit.
            timer = loop.call_later(job.time_limit_s, self._time_up, job.id)
            try:
                params = await self._search(job, spec)
                if params is not None:
                    spec = replace(
                        spec,
                        params=params,
                        baseline=await asyncio.to_thread(self._baseline, job),
                        trials=_report_trials(job),
                    )
            except BaseException:
                timer.cancel()
                raise
            if params is None:
                timer.cancel()
                return
        result: JobResult | None = None
        ended = False
        events = self.executor.run(spec)
        try:
            async for event in events:
                if isinstance(event, Started):
                    self._started_on(job, event.placement)
                    await self._save(job)
                    if timer is None:
                        timer = loop.call_later(job.time_limit_s, self._time_up, job.id)
                elif isinstance(event, StageChanged):
                    if event.stage != job.stage or event.metrics is not None:
                        job.stage = event.stage
                        _mark_stage(job, event.stage, event.at)
                        if event.metrics is not None:
                            job.metrics = dict(event.metrics)
                        await self._save(job)
                elif isinstance(event, Succeeded):
                    result, ended = event.result, True
                    break
                elif isinstance(event, Failed):
                    ended = True
                    await self._finish(job, FAILED, event.reason)
                    break
                elif isinstance(event, Cancelled):
                    ended = True
                    state, reason = self._stop.get(job.id, (CANCELLED, ""))
                    await self._finish(job, state, reason)
                    break
        finally:
            if timer is not None:
                timer.cancel()
            # An async generator left early must be closed (its finally frees the worker).
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
        if not ended:
            log.error("the executor ended job %s's run without a final event", job.id)
            await self._finish(job, FAILED, "internal error while running the job")
            return
        if result is not None:
            await self._register(job, result)

    def _started_on(self, job: Job, where: Placement) -> None:
        # A search job started when its search did.
        job.state, job.stage = RUNNING, STAGES[0]
        _mark_stage(job, STAGES[0])
        job.started_at = job.started_at or time.time()
        job.backend, job.node, job.worker, job.worker_pid = (
            where.backend,
            where.node,
            where.worker,
            where.pid,
        )

    def _time_up(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.final or job.stage == REGISTERING:
            return
        stage = STAGE_WORDS.get(job.stage, job.stage.lower())
        reason = (
            f"time limit of {job.time_limit_s:g} s exceeded while {stage}; nothing was published"
        )
        task = asyncio.ensure_future(self._request_stop(job_id, FAILED, reason))
        self._tasks.append(task)  # kept referenced until close()

    def _check_result(self, job: Job, result: JobResult) -> None:
        """The result is this job's model: refuse one that is not (a confused executor)."""
        meta = result.meta
        if (meta.job_id, meta.model_name, meta.algorithm) != (
            job.id,
            job.model_name,
            job.algorithm,
        ):
            raise InvalidArgument("the executor returned another job's model")
        if not result.onnx:
            raise InvalidArgument("the executor returned an empty model")
        if len(result.onnx) > self.settings.max_model_bytes:
            raise InvalidArgument(
                f"the trained model is {len(result.onnx)} bytes, over the server's limit of"
                f" {self.settings.max_model_bytes} (max_model_bytes)"
            )

    def _final_meta(self, job: Job, result: JobResult) -> tuple[VersionMeta, tuple[str, ...]]:
        """The version's metadata with the search's record and the promotion
        decision, and the aliases to publish it with."""
        meta = result.meta
        aliases = list(job.request.aliases)
        changes: dict[str, Any] = {}
        if job.search_plan:
            plan = searching.SearchPlan.from_dict(job.search_plan)
            trials = [_trial_from_dict(t) for t in job.search.get("trials", ())]
            changes["search"] = searching.search_record(
                plan, trials, bool(job.search.get("stopped_by_budget"))
            )
        alias = job.request.promote_if_better
        if alias:
            promotion = self._decide(job, alias, dict(meta.promotion))
            if promotion["promoted"]:
                aliases.append(alias)
            changes["promotion"] = promotion
        return replace(meta, **changes), tuple(aliases)

    def _decide(self, job: Job, alias: str, scores: dict[str, Any]) -> dict[str, Any]:
        """Promote-if-better: move ``alias`` only if the new version scored better than
        the version the job compared with, and the alias still points there."""
        try:
            now: int | None = self.registry.get_model(job.model_name).aliases.get(alias)
        except NotFound:
            now = None
        metric = str(scores.get("metric", ""))
        greater = bool(scores.get("greater_is_better", True))
        new, current = scores.get("new_score"), scores.get("current_score")
        compared = int(scores.get("current_version", 0) or 0)
        promoted = False
        if new is None:
            reason = "the new version was not scored; the alias was left alone"
        elif not compared:
            promoted = now is None
            reason = (
                "no version held the alias"
                if promoted
                else f"version {now} took the alias while the job ran; it was left there"
            )
        elif now != compared:
            where = f"to version {now}" if now is not None else "away (deleted)"
            reason = (
                f"the alias moved from version {compared} {where} while the job ran;"
                " it was left alone"
            )
        elif scores.get("error"):
            reason = f"{scores['error']}; the alias was left on version {compared}"
        elif current is not None and (new > current if greater else new < current):
            promoted = True
            reason = f"{metric} {new:.6g} beats {current:.6g} of version {compared}"
        else:
            reason = (
                f"{metric} {new:.6g} does not beat {current:.6g} of version {compared};"
                " the alias stays there"
            )
        log.info(
            "promote-if-better",
            extra={"job": job.id, "alias": alias, "promoted": promoted, "reason": reason},
        )
        return {
            "alias": alias,
            "metric": metric,
            "greater_is_better": greater,
            "new_score": new,
            "current_version": compared,
            "current_score": current,
            "promoted": promoted,
            "reason": reason,
        }

    # --- searches ------------------------------------------------------------

    async def _search(self, job: Job, spec: JobSpec) -> dict[str, Any] | None:
        """Run a search job's trials; the best configuration's parameters (all of
        them), or None when the job ended here (cancelled, out of time, all failed)."""
        executor = self.executor
        assert isinstance(executor, TrialExecutor)
        plan = searching.SearchPlan.from_dict(job.search_plan)
        algorithm = catalogue.get_algorithm(job.algorithm)
        fixed = dict(job.request.hyperparameters)
        stop = asyncio.Event()
        self._search_stops[job.id] = stop
        records: dict[int, searching.TrialRecord] = {}
        running: dict[asyncio.Future[Any], int] = {}
        budget_over = False
        stopper = asyncio.ensure_future(stop.wait())
        try:
            # Optuna's import and study: off the loop.
            sampler = await asyncio.to_thread(searching.Sampler, plan)
            job.state, job.stage, job.started_at = RUNNING, SEARCHING, time.time()
            _mark_stage(job, SEARCHING)
            job.backend = executor.backend
            deadline = time.monotonic() + plan.time_budget_s if plan.time_budget_s > 0 else None
            while not stop.is_set():
                while len(running) < plan.parallelism:
                    if deadline is not None and time.monotonic() >= deadline:
                        budget_over = True
                        break
                    asked = sampler.ask()
                    if asked is None:
                        break
                    number, suggested = asked
                    record = searching.TrialRecord(number, suggested)
                    records[number] = record
                    try:
                        params = algorithm.validate(job.task, {**fixed, **suggested})
                    except HighPeaksError as exc:
                        record.state, record.error = searching.TRIAL_FAILED, exc.message
                        sampler.tell(number, None)
                        continue
                    trial = TrialSpec(
                        job_id=job.id,
                        number=number,
                        algorithm=job.algorithm,
                        task=job.task,
                        params=params,
                        target=spec.target,
                        features=spec.features,
                        test_size=spec.test_size,
                        seed=spec.seed,
                        search_seed=plan.seed,
                        folds=plan.folds,
                        metric=plan.metric,
                        data=spec.data,
                        resources=spec.resources,
                    )
                    running[asyncio.ensure_future(executor.run_trial(trial))] = number
                self._note_progress(job, plan, records, running, budget_over)
                await self._save(job)
                if not running:
                    break
                done, _ = await asyncio.wait(
                    {*running, stopper}, return_when=asyncio.FIRST_COMPLETED
                )
                for fut in done:
                    if fut is stopper or fut.cancelled():
                        continue
                    number = running.pop(fut)
                    outcome = fut.result()
                    rec = records[number]
                    rec.state, rec.error = outcome.state, outcome.error
                    rec.fold_scores, rec.seconds = list(outcome.fold_scores), outcome.seconds
                    succeeded = rec.state == searching.TRIAL_SUCCEEDED
                    sampler.tell(number, rec.mean if succeeded else None)
        finally:
            stopper.cancel()
            self._search_stops.pop(job.id, None)
            for fut in running:
                fut.cancel()  # their workers are stopped; the records stay CANCELLED
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        self._note_progress(job, plan, records, {}, budget_over)
        if stop.is_set() or job.id in self._stop:
            state, reason = self._stop.get(job.id, (CANCELLED, CANCELLED_BY_CALLER))
            await self._finish(job, state, reason)
            return None
        best = searching.best_trial(plan, list(records.values()))
        if best is None:
            first = min(records.values(), key=lambda r: r.number, default=None)
            why = first.error if first is not None and first.error else "no trial ran"
            await self._finish(
                job,
                FAILED,
                f"every trial of the search failed ({len(records)} trials); the first"
                f" failed with: {why}",
            )
            return None
        job.stage = STAGES[0]  # the refit of the winner
        _mark_stage(job, STAGES[0])
        await self._save(job)
        return algorithm.validate(job.task, {**fixed, **best.params})

    def _note_progress(
        self,
        job: Job,
        plan: searching.SearchPlan,
        records: Mapping[int, searching.TrialRecord],
        running: Mapping[Any, int],
        budget_over: bool,
    ) -> None:
        out = set(running.values())
        ended = [r for n, r in sorted(records.items()) if n not in out]
        best = searching.best_trial(plan, ended)
        job.search = {
            **_progress(plan),
            "done": sum(1 for r in ended if r.state != searching.TRIAL_CANCELLED),
            "failed": sum(1 for r in ended if r.state == searching.TRIAL_FAILED),
            "running": len(out),
            "best_trial": best.number if best is not None else -1,
            "best_score": best.mean if best is not None else None,
            "best_params": dict(best.params) if best is not None else {},
            "stopped_by_budget": budget_over and len(records) < plan.max_trials,
            "trials": [r.to_dict() for r in ended],
        }

    async def _register(self, job: Job, result: JobResult) -> None:

        if job.id in self._stop:
            state, reason = self._stop[job.id]
            await self._finish(job, state, reason)
            return
        job.stage = REGISTERING
        _mark_stage(job, REGISTERING)
        job.metrics = dict(result.metrics or job.metrics)
        await self._save(job)
        try:
            self._check_result(job, result)
            meta, aliases = await asyncio.to_thread(self._final_meta, job, result)
            job.promotion = dict(meta.promotion)
            stored = await asyncio.to_thread(
                self.registry.publish,
                job.model_name,
                result.onnx,
                meta,
                aliases,
                # The evaluation report and training profile, in the same atomic publish.
                dict(result.artifacts),
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


def _mark_stage(job: Job, stage: str, at: float = 0.0) -> None:
    """Note when a traced job entered ``stage`` (``at``: the worker's clock, else now)."""
    if not job.trace_parent:
        return  # tracing off, or the call was not sampled: nothing kept
    last = job.stage_times[-1] if job.stage_times else None
    if last is not None and last[0] == stage:
        return
    now = time.time()
    # A worker on another node has its own clock: keep the stages in order, none
    # before the job was submitted and none in the future.
    floor = float(last[1]) if last is not None else job.created_at
    job.stage_times.append([stage, min(max(at or now, floor), now)])


def _trial_from_dict(d: Mapping[str, Any]) -> searching.TrialRecord:
    return searching.TrialRecord(
        number=int(d["number"]),
        params=dict(d.get("params", {})),
        state=str(d.get("state", searching.TRIAL_CANCELLED)),
        fold_scores=[float(x) for x in d.get("fold_scores", ())],
        seconds=float(d.get("seconds", 0.0)),
        error=str(d.get("error", "")),
    )


def _report_trials(job: Job) -> tuple[dict[str, Any], ...]:
    """A search's ended trials as the evaluation report draws them (score
    against each searched hyperparameter; a failed trial has no score)."""
    return tuple(
        {
            "number": int(t["number"]),
            "params": dict(t.get("params") or {}),
            "score": t.get("mean") if t.get("state") == searching.TRIAL_SUCCEEDED else None,
            "state": str(t.get("state", "")),
        }
        for t in job.search.get("trials", ())
        if t.get("state") != searching.TRIAL_CANCELLED
    )


def _progress(plan: searching.SearchPlan) -> dict[str, Any]:
    """A search's progress before its first trial."""
    return {
        "total": plan.max_trials,
        "done": 0,
        "failed": 0,
        "running": 0,
        "metric": plan.metric,
        "greater_is_better": plan.greater_is_better,
        "best_trial": -1,
        "best_score": None,
        "best_params": {},
        "stopped_by_budget": False,
        "trials": [],
    }


def _is_inline(job: Job | None) -> bool:
    """Whether a job trains on inline rows (kept beside its record until it ends)."""
    return job is not None and isinstance(job.request.dataset, InlineDataset)


def _first_line(exc: BaseException) -> str:
    """An error's first line, cut (S3 client errors run to many lines)."""
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _ended_at(job: Job) -> float:
    """When a job reached its final state (its creation for records without one)."""
    return job.finished_at or job.created_at


def _physical_memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (OSError, ValueError):
        return 1 << 20


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
                raise InvalidArgument(f"feature column {quote(name)} is the target column")
            if name in seen:
                raise InvalidArgument(f"feature column {quote(name)} is listed twice")
            if info.column(name) is None:
                raise InvalidArgument(f"feature column {quote(name)} is not in the dataset")
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
            raise InvalidArgument(f"feature column {quote(name)} has no values; leave it out")
        if col.type == CATEGORICAL and col.distinct_values > MAX_CATEGORIES:
            raise InvalidArgument(
                f"feature column {quote(name)} has {col.distinct_values} distinct values; at most"
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
    "BuiltinDataset",
    "DatasetSource",
    "InlineDataset",
    "Job",
    "JobManager",
    "JobTracer",
    "TrainRequest",
    "UploadedDataset",
]
