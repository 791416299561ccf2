"""The training worker: runs one ``JobSpec`` (training/spec.py) and returns its result.

``run_job(spec, report)`` is the whole job: load the data from the spec's
bytes, fit, evaluate, export to ONNX, verify, and return a final event
(``Succeeded`` with the ONNX bytes and the version's metadata, or
``Failed``). It needs no path of the server's machine and writes nothing, so
any executor can call it: the local executor's worker processes (``main``
below) or a Ray task.

Resources: the job's CPUs cap scikit-learn's ``n_jobs`` and the BLAS/OpenMP
thread pools; its memory becomes an address-space limit (``RLIMIT_AS``) of
the process for the job's duration, on top of what the idle worker already
maps (libraries, thread stacks). An allocation past it fails (MemoryError,
or an allocator error inside a native library) and the job ends FAILED with
a "memory limit" reason; the worker process then exits so that the next job
gets a fresh one.

The local executor's process protocol (``multiprocessing`` pipe, ``spawn``
start method: a fresh interpreter, never a fork of the gRPC server):

- worker -> server: ``("ready", {"pid", "node"})`` once its libraries are
  imported (the server hands it a job only then, so a job's time limit
  measures the job);
- server -> worker: ``("run", JobSpec)``, or ``None`` to stop;
- worker -> server: ``("event", JobEvent)`` for each stage, then one final event;
- server -> worker: ``("trial", TrialSpec)`` (a search's trial); worker -> server:
  ``("trial", TrialResult)``. The worker keeps the last job's data and folds
  between trials, so a spec whose ``data`` is None reuses them.

The worker dies with its parent (``PR_SET_PDEATHSIG`` on Linux, and a parent
watchdog elsewhere).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from highpeaks_ml.training.spec import (
    STAGE_WORDS,
    BuiltinData,
    Failed,
    FinalEvent,
    InlineData,
    JobEvent,
    JobResult,
    JobSpec,
    Resources,
    StageChanged,
    Succeeded,
    TrialResult,
    TrialSpec,
    UploadedData,
)

log = logging.getLogger("highpeaks_ml.training.worker")

#: glibc's mallopt(M_ARENA_MAX): each thread that allocates would otherwise
#: reserve its own 64 MiB heap of address space, which an address-space
#: limit counts although the memory is never used.
_M_ARENA_MAX = -8
_ARENAS = 2
#: Texts of allocation failures raised by native code (C++ std::bad_alloc,
#: numpy, thread creation) under an address-space limit.
_OOM_WORDS = (
    "bad_alloc",
    "cannot allocate memory",
    "unable to allocate",
    "out of memory",
    "can't start new thread",
    "failed to allocate",
    "resource temporarily unavailable",
)


def _die_with_parent() -> None:
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    # The portable fallback: notice that the parent is gone.

    def watchdog() -> None:
        while True:
            time.sleep(2.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watchdog, name="parent-watchdog", daemon=True).start()


def _few_arenas() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).mallopt(_M_ARENA_MAX, _ARENAS)


def main(conn: Any, log_level: str = "INFO", log_format: str = "text") -> None:
    """Worker process entry point: run jobs received on ``conn`` until told to stop."""
    _die_with_parent()
    # Ctrl-C in a terminal reaches the whole process group; the server
    # decides what happens to running jobs, so the worker ignores SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from highpeaks_ml.logs import configure_logging

    configure_logging(log_level, log_format)
    _few_arenas()
    warm_up()
    try:
        conn.send(("ready", {"pid": os.getpid(), "node": socket.gethostname()}))
    except (BrokenPipeError, ConnectionError, EOFError):
        return
    trials: dict[str, Any] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        kind, spec = message
        if kind == "trial":
            result = run_trial(spec, trials)
            try:
                conn.send(("trial", result))
            except (BrokenPipeError, ConnectionError, EOFError):
                return
            if result.state == "FAILED" and _MEMORY_LIMIT in result.error:
                return
            continue
        trials.clear()  # a job: the last search's data is no longer needed

        def report(event: JobEvent) -> None:
            conn.send(("event", event))

        try:
            final = run_job(spec, report)
            conn.send(("event", final))
        except (BrokenPipeError, ConnectionError, EOFError):
            return  # the server is gone
        if isinstance(final, Failed) and _MEMORY_LIMIT in final.reason:
            # The heap may be fragmented or half-freed after a failed
            # allocation: the next job gets a fresh process.
            return


def warm_up() -> None:
    """Import what jobs use (scikit-learn estimators, skl2onnx, onnxruntime) before any job."""
    import importlib

    from highpeaks_ml.training import onnx_fixes, pipeline

    pipeline.library_versions()
    for module in (
        "sklearn.compose",
        "sklearn.ensemble",
        "sklearn.impute",
        "sklearn.linear_model",
        "sklearn.metrics",
        "sklearn.model_selection",
        "sklearn.neighbors",
        "sklearn.neural_network",
        "sklearn.preprocessing",
        "sklearn.svm",
        "sklearn.tree",
        "sklearn.inspection",
        "sklearn.calibration",
        "matplotlib.figure",
        "matplotlib.backends.backend_agg",
        "skl2onnx.common.data_types",
        "threadpoolctl",
    ):
        importlib.import_module(module)
    onnx_fixes.install()


# --- resources ---------------------------------------------------------------------

_MEMORY_LIMIT = "memory limit"


def _address_space_mb() -> int:
    """This process's mapped address space now (MiB); 0 when unknown."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
        return pages * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    except (OSError, ValueError, IndexError):
        return 0


@contextlib.contextmanager
def job_resources(resources: Resources, enforce_memory: bool = True) -> Iterator[int]:
    """Within: at most ``resources.cpus`` BLAS/OpenMP threads and, when
    ``enforce_memory``, an address-space limit of ``resources.memory_mb`` above
    the current one. Yields the limit set (MiB of address space, 0 = none)."""
    from threadpoolctl import threadpool_limits

    limit_mb = 0
    previous: tuple[int, int] | None = None
    if enforce_memory and resources.memory_mb > 0:
        import resource

        base = _address_space_mb()
        if base:
            limit_mb = base + resources.memory_mb
            previous = resource.getrlimit(resource.RLIMIT_AS)
            hard = previous[1]
            soft = limit_mb * 1024 * 1024
            if hard != resource.RLIM_INFINITY:
                soft = min(soft, hard)
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    try:
        with threadpool_limits(limits=max(1, resources.cpus)):
            yield limit_mb
    finally:
        if previous is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, previous)


def _memory_reason(spec: JobSpec | TrialSpec, stage: str) -> str:
    return (
        f"the job exceeded its memory limit of {spec.resources.memory_mb} MiB while"
        f" {STAGE_WORDS.get(stage, stage.lower())}; nothing was published (ask for more"
        " memory, or use fewer rows or a smaller model)"
    )


# --- the job -----------------------------------------------------------------------


def run_job(
    spec: JobSpec, report: Callable[[JobEvent], None], enforce_memory: bool = True
) -> FinalEvent:
    """Run one job; ``report`` gets each ``StageChanged``; returns the final event.

    Never raises for the job's own failures (they are ``Failed`` with a
    client-facing reason); ``report``'s own errors (a broken pipe) propagate.
    """
    from highpeaks_ml.errors import HighPeaksError
    from highpeaks_ml.training.catalogue import get_algorithm

    started = time.perf_counter()
    stage = ["LOADING_DATA"]

    def progress(name: str, metrics: dict[str, float] | None = None) -> None:
        stage[0] = name
        report(StageChanged(name, metrics, time.time()))

    limited = False
    try:
        # No address-space limit on a GPU job: the CUDA driver reserves far more
        # address space than memory, and would fail to initialise under one.
        on_gpu = get_algorithm(spec.algorithm).training_device(spec.resources.device) != "cpu"
        with job_resources(spec.resources, enforce_memory and not on_gpu) as limit_mb:
            limited = limit_mb > 0
            progress("LOADING_DATA")
            frame, fingerprint = _load(spec)
            result = _train(spec, frame, fingerprint, progress)
            del frame
    except HighPeaksError as exc:
        return Failed(exc.message)
    except MemoryError:
        if limited:
            return Failed(_memory_reason(spec, stage[0]))
        return Failed("the worker ran out of memory; use fewer rows or a smaller model")
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:300]
        if limited and any(word in str(exc).lower() for word in _OOM_WORDS):
            log.warning("training job %s hit its memory limit: %s", spec.job_id, first)
            return Failed(_memory_reason(spec, stage[0]))
        log.exception("training job %s failed", spec.job_id)
        return Failed(f"training failed: {type(exc).__name__}: {first}")
    log.info(
        "training job done",
        extra={"job": spec.job_id, "s": round(time.perf_counter() - started, 3)},
    )
    return Succeeded(result)


def run_trial(
    spec: TrialSpec, cache: dict[str, Any] | None = None, enforce_memory: bool = True
) -> TrialResult:
    """Run one search trial (training/search.py): cross-validate ``spec.params``.

    ``cache`` keeps the job's loaded table and folds between trials of the
    same job (one job at a time); a spec without ``data`` needs them there.
    Never raises for the trial's own failures: they are a FAILED result.
    """
    from highpeaks_ml.errors import HighPeaksError
    from highpeaks_ml.training import search
    from highpeaks_ml.training.catalogue import get_algorithm

    cache = {} if cache is None else cache
    started = time.perf_counter()

    def failed(reason: str) -> TrialResult:
        seconds = time.perf_counter() - started
        return TrialResult(spec.number, search.TRIAL_FAILED, (), seconds, reason)

    limited = False
    try:
        on_gpu = get_algorithm(spec.algorithm).training_device(spec.resources.device) != "cpu"
        with job_resources(spec.resources, enforce_memory and not on_gpu) as limit_mb:
            limited = limit_mb > 0
            if cache.get("job_id") != spec.job_id:
                cache.clear()
                if spec.data is None:
                    return failed("internal error: the worker does not hold this job's data")
                cache["frame"], _fingerprint = _load(spec)
                cache["job_id"] = spec.job_id
            if cache.get("folds") is None:
                cache["folds"] = search.prepare_folds(cache["frame"], spec)
            return search.run_trial_on(cache["folds"], spec)
    except HighPeaksError as exc:
        return failed(exc.message)
    except MemoryError:
        cache.clear()
        if limited:
            return failed(_memory_reason(spec, "FITTING"))
        return failed("the worker ran out of memory; use fewer rows or a smaller model")
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:300]
        if limited and any(word in str(exc).lower() for word in _OOM_WORDS):
            cache.clear()
            return failed(_memory_reason(spec, "FITTING"))
        log.exception("trial %d of job %s failed", spec.number, spec.job_id)
        return failed(f"{type(exc).__name__}: {first}")


def _load(spec: JobSpec | TrialSpec) -> tuple[Any, dict[str, Any]]:
    from highpeaks_ml.training import datasets as ds

    data = spec.data
    needed = [spec.target, *(name for name, _ in spec.features)]
    if isinstance(data, BuiltinData):
        frame = ds.builtin_frame(data.name)
        return frame, {"source": f"builtin:{data.name}", "sha256": ds.frame_sha256(frame)}
    if isinstance(data, UploadedData):
        digest, label = data.dataset_id, data.dataset_id
    elif isinstance(data, InlineData):
        digest, label = hashlib.sha256(data.csv).hexdigest(), "inline"
    else:  # pragma: no cover - the union is closed
        raise TypeError(f"unknown job data {type(data).__name__}")
    by_name = {c.name: c for c in data.columns}
    frame = ds.load_csv_frame(io.BytesIO(data.csv), [by_name[n] for n in needed])
    return frame, {"source": label, "sha256": digest}


def _train(
    spec: JobSpec,
    frame: Any,
    fingerprint: dict[str, Any],
    progress: Callable[[str, dict[str, float] | None], None],
) -> JobResult:
    from highpeaks_ml.registry.base import VersionMeta
    from highpeaks_ml.training import pipeline
    from highpeaks_ml.training.catalogue import get_algorithm

    def stage(name: str, info: dict[str, Any] | None) -> None:
        metrics = (info or {}).get("metrics")
        progress(name, dict(metrics) if metrics is not None else None)

    rows = len(frame)
    trained = pipeline.train(
        frame,
        algorithm=get_algorithm(spec.algorithm),
        task=spec.task,
        params=dict(spec.params),
        target=spec.target,
        features=[(str(n), str(t)) for n, t in spec.features],
        test_size=spec.test_size,
        seed=spec.seed,
        progress=stage,
        n_jobs=spec.resources.cpus,
        device=spec.resources.device,
    )
    for warning in trained.warnings:
        log.warning("training job %s: %s", spec.job_id, warning)
    # After verification: the evaluation report and the drift profile (training/report.py);
    # a search job's refit adds its trials (score against each searched hyperparameter).
    from highpeaks_ml.training import report as evaluation

    artifacts, report_problem = evaluation.for_job(spec, trained, list(spec.trials) or None)
    if report_problem:
        trained.warnings.append(report_problem)
    promotion = _compare(spec, frame, trained) if spec.compare_metric else {}
    meta = VersionMeta.from_dict(
        {
            "model_name": spec.model_name,
            "version": 0,
            "created_at": 0.0,
            "source": "trained",
            "task": trained.task,
            "algorithm": spec.algorithm,
            "hyperparameters": dict(spec.params),
            "metrics": trained.metrics,
            "features": trained.features,
            "inputs": trained.inputs,
            "outputs": trained.outputs,
            "class_labels": trained.class_labels,
            "label_dtype": trained.label_dtype,
            "dataset": {
                **fingerprint,
                "rows": rows,
                "train_rows": trained.train_rows,
                "test_rows": trained.test_rows,
                "target_column": spec.target,
                "test_size": spec.test_size,
                "seed": spec.seed,
            },
            "library_versions": pipeline.library_versions(),
            "verification": trained.verification,
            "training_device": trained.training_device,
            "job_id": spec.job_id,
            "created_by": spec.created_by,
            "description": spec.description,
            "promotion": promotion,
        }
    )
    return JobResult(
        onnx=trained.onnx_bytes,
        meta=meta,
        metrics=dict(trained.metrics),
        warnings=tuple(trained.warnings),
        artifacts=artifacts,
    )


def _compare(spec: JobSpec, frame: Any, trained: Any) -> dict[str, Any]:
    """Promote-if-better's scores: the new ONNX model and the baseline's, on the
    held-out rows of this job (the same split as the fit), with one metric."""
    from highpeaks_ml.training import pipeline, search

    metric = spec.compare_metric
    data = pipeline.prepare(frame, spec.target, [(n, t) for n, t in spec.features], spec.task)
    _X_train, X_test, _y_train, y_test = pipeline.split(data, spec.test_size, spec.seed)
    feed = pipeline.onnx_feed(X_test, data)
    out: dict[str, Any] = {
        "metric": metric,
        "greater_is_better": search.metric_direction(spec.task, metric),
        "new_score": search.score_onnx(
            trained.onnx_bytes, feed, y_test, spec.task, metric, trained.class_labels
        ),
        "current_version": 0,
        "current_score": None,
        "error": "",
    }
    if spec.baseline is not None:
        out["current_version"] = spec.baseline.version
        try:
            out["current_score"] = search.score_onnx(
                spec.baseline.onnx, feed, y_test, spec.task, metric, spec.baseline.class_labels
            )
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0][:200]
            out["error"] = (
                f"version {spec.baseline.version} could not be scored on this job's held-out"
                f" rows ({type(exc).__name__}: {first})"
            )
    return out


__all__ = ["job_resources", "main", "run_job", "run_trial", "warm_up"]
