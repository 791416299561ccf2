"""What travels between the job manager and an executor: typed, frozen, picklable.

The job manager (``training/jobs.py``) turns a validated StartTraining request
into a :class:`JobSpec` and hands it to an :class:`~highpeaks_ml.training.executor.Executor`
(a local process pool, or Ray). The executor runs it wherever it runs jobs and
answers with a stream of :data:`JobEvent` ending in exactly one of
:class:`Succeeded` (carrying a :class:`JobResult`), :class:`Failed` or
:class:`Cancelled`.

Rules that make an executor interchangeable:

- **Self-contained.** A spec carries everything the job needs, the dataset's
  bytes included (:class:`UploadedData`, :class:`InlineData`) or the name of a
  dataset every worker has (:class:`BuiltinData`, shipped with scikit-learn).
  The worker never needs a path of the server's machine, so it may run on
  another node.
- **Nothing written by the worker.** The result carries the ONNX bytes, the
  metrics and the version's metadata; the server checks them and publishes
  (the server is the only writer to the registry). A worker that dies, is
  cancelled or runs out of time therefore leaves nothing behind.
- **Picklable.** Specs and results cross a process pipe (local executor) or
  the Ray object store, so they hold only plain values, tuples, mappings and
  these dataclasses. They are frozen: treat the mappings inside as read-only.
- **The job id is the idempotency key of the publish.** A result is published
  at most once per job id, whoever delivers it (a retried Ray task, a
  re-attached run).

This module imports nothing heavy (no scikit-learn, no onnxruntime, no grpc).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from highpeaks_ml.registry.base import VersionMeta
from highpeaks_ml.training.datasets import ColumnInfo

#: Stages a running job goes through, in order (the job manager adds
#: REGISTERING itself, once the executor has delivered the result).
STAGES = ("LOADING_DATA", "FITTING", "EVALUATING", "EXPORTING", "VERIFYING", "REGISTERING")
WORKER_STAGES = STAGES[:-1]
#: The stage of a search job while its trials run (before the refit's stages).
SEARCHING = "SEARCHING"
#: Each stage in words, for messages ("... while fitting").
STAGE_WORDS = {
    "LOADING_DATA": "loading data",
    "FITTING": "fitting",
    "EVALUATING": "evaluating",
    "EXPORTING": "exporting",
    "VERIFYING": "verifying",
    "REGISTERING": "registering",
    SEARCHING: "searching",
}


# --- where a request's data comes from (what the caller named) --------------------


@dataclass(frozen=True)
class UploadedDataset:
    """A dataset uploaded with UploadDataset, by id (its sha256)."""

    dataset_id: str


@dataclass(frozen=True)
class BuiltinDataset:
    """One of scikit-learn's built-in datasets (``iris``, ``wine``...)."""

    name: str


@dataclass(frozen=True)
class InlineDataset:
    """Rows sent inside the request. ``rows`` is None once stored (the rows
    then live beside the job record as CSV); ``row_count`` stays."""

    rows: tuple[Mapping[str, Any], ...] | None = None
    row_count: int = 0


#: Exactly one of the three (a request's ``dataset``).
DatasetSource = UploadedDataset | BuiltinDataset | InlineDataset


# --- what the worker gets (self-contained) -----------------------------------------


@dataclass(frozen=True)
class UploadedData:
    """An uploaded dataset's bytes and its stored column analysis."""

    dataset_id: str
    columns: tuple[ColumnInfo, ...]
    csv: bytes = field(repr=False)


@dataclass(frozen=True)
class BuiltinData:
    """A built-in dataset: every worker builds it from scikit-learn."""

    name: str


@dataclass(frozen=True)
class InlineData:
    """Inline rows as CSV bytes, with the column analysis made at submission."""

    columns: tuple[ColumnInfo, ...]
    csv: bytes = field(repr=False)


#: Exactly one of the three (a spec's ``data``).
JobData = UploadedData | BuiltinData | InlineData


@dataclass(frozen=True)
class Resources:
    """What one job may use: CPUs (scikit-learn's ``n_jobs``, BLAS/OpenMP
    threads) and memory (MiB). The local executor enforces the memory as an
    address-space limit on the worker process; Ray reserves both as the
    task's resources."""

    cpus: int = 1
    memory_mb: int = 0
    #: The server's training device, "cuda" or "cpu" (training/device.py,
    #: decided once at start-up); only XGBoost trains on "cuda".
    device: str = "cpu"


@dataclass(frozen=True)
class Baseline:
    """The version an alias points at, to be scored on the job's held-out rows
    (promote-if-better): its ONNX bytes and class labels."""

    version: int
    onnx: bytes = field(repr=False)
    class_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobSpec:
    """One job, resolved and validated by the job manager: what a worker runs."""

    job_id: str
    model_name: str
    algorithm: str  # a catalogue name
    task: str  # "classification" | "regression"
    params: Mapping[str, Any]  # validated hyperparameters (the catalogue's defaults filled in)
    target: str
    features: tuple[tuple[str, str], ...]  # (column, "numeric" | "categorical"), in order
    test_size: float
    seed: int
    data: JobData
    resources: Resources = Resources()
    #: Wall-time limit (s). The job manager enforces it (it cancels the run);
    #: an executor may pass it on as a hint (a Ray task timeout).
    time_limit_s: float = 0.0
    created_by: str = ""
    description: str = ""
    #: Promote-if-better: the metric to score the new model and ``baseline``
    #: with on the held-out rows ("" = no comparison). The worker records
    #: both scores in ``meta.promotion``; the manager decides.
    compare_metric: str = ""
    baseline: Baseline | None = None
    #: A search job's refit: its ended trials (``{"number", "params" (the searched
    #: ones), "score" (mean fold score, None when failed), "state"}`` each), drawn
    #: in the version's evaluation report (training/report.py). Empty otherwise.
    trials: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class TrialSpec:
    """One trial of a hyperparameter search (training/search.py): cross-validate
    ``params`` on the training split of the job's data.

    The split is the job's (``test_size``, ``seed``), so the held-out rows of
    the refit are never seen by a trial. ``data`` may be None when the
    executor knows the worker still holds this job's data (sent with an
    earlier trial of the same job): the dataset travels once per worker and job.
    """

    job_id: str
    number: int
    algorithm: str
    task: str
    params: Mapping[str, Any]  # the full set (fixed, searched and defaults)
    target: str
    features: tuple[tuple[str, str], ...]
    test_size: float
    seed: int  # the job's seed: its split and the estimator's seed
    search_seed: int  # the folds' shuffle
    folds: int
    metric: str
    data: JobData | None
    resources: Resources = Resources()


@dataclass(frozen=True)
class TrialResult:
    """What a trial returns: its state ("SUCCEEDED", "FAILED", "CANCELLED"),
    the metric per fold and the worker's wall time; ``error`` client-facing."""

    number: int
    state: str
    fold_scores: tuple[float, ...] = ()
    seconds: float = 0.0
    error: str = ""


@dataclass(frozen=True)
class JobResult:
    """A trained, exported and verified model, not yet published."""

    onnx: bytes = field(repr=False)
    #: The version's metadata as the worker filled it; ``version``,
    #: ``created_at``, ``sha256`` and ``size_bytes`` are the registry's to set.
    meta: VersionMeta
    metrics: Mapping[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    #: Files published with the version (artifact name -> bytes): the evaluation
    #: report (training/report.py) and the training-data profile (serving/drift.py).
    artifacts: Mapping[str, bytes] = field(default_factory=dict, repr=False)


# --- what the executor reports -----------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a job runs: the backend, the node (host name, or Ray node id) and
    the worker (a process id locally, a Ray worker or task id)."""

    backend: str
    node: str = ""
    worker: str = ""
    #: The local worker's process id (0 elsewhere): tests and operators kill it.
    pid: int = 0


@dataclass(frozen=True)
class Started:
    """The job left the queue and runs at ``placement`` (sent once, first)."""

    placement: Placement


@dataclass(frozen=True)
class StageChanged:
    """The job reached ``stage`` (one of ``WORKER_STAGES``); ``metrics`` once evaluated."""

    stage: str
    metrics: Mapping[str, float] | None = None
    #: When the worker entered the stage (epoch seconds, the worker's clock; 0 =
    #: unknown): the stage spans of a traced job (api/tracing.py) start there.
    at: float = 0.0


@dataclass(frozen=True)
class Succeeded:
    """The job's model is trained and verified (final)."""

    result: JobResult


@dataclass(frozen=True)
class Failed:
    """The job failed (final). ``reason`` is client-facing: words a user can
    act on, never a path, a traceback or a host's secret."""

    reason: str


@dataclass(frozen=True)
class Cancelled:
    """The job was stopped by ``Executor.cancel`` (final); nothing was produced."""


JobEvent = Started | StageChanged | Succeeded | Failed | Cancelled
FinalEvent = Succeeded | Failed | Cancelled

__all__ = [
    "SEARCHING",
    "STAGES",
    "STAGE_WORDS",
    "WORKER_STAGES",
    "Baseline",
    "BuiltinData",
    "BuiltinDataset",
    "Cancelled",
    "DatasetSource",
    "Failed",
    "FinalEvent",
    "InlineData",
    "InlineDataset",
    "JobData",
    "JobEvent",
    "JobResult",
    "JobSpec",
    "Placement",
    "Resources",
    "StageChanged",
    "Started",
    "Succeeded",
    "TrialResult",
    "TrialSpec",
    "UploadedData",
    "UploadedDataset",
]
