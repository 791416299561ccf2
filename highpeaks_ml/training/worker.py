"""The training worker: a separate process that runs one job at a time.

``JobManager`` starts each worker with the ``spawn`` start method (a fresh
interpreter, never a fork of the gRPC server) and talks to it over a
``multiprocessing`` pipe:

- worker -> server: ``("ready", {"pid"})`` once its libraries are imported
  (the server hands it a job only then, so a job's time limit measures the job);
- server -> worker: ``("run", spec)`` (a dict, see ``JobManager._spec``) or ``None`` to stop;
- worker -> server: ``("stage", {"stage": NAME, ...})`` at each step,
  then ``("result", {"path", "meta", "metrics"})`` or ``("error", {"reason"})``.

The worker writes the verified ``model.onnx`` to ``spec["staging_path"]``
(under ``<home>/tmp``); the server process publishes it. A crash, an
out-of-memory kill or a cancel (the server kills the process) therefore
never leaves anything registered. The worker dies with its parent
(``PR_SET_PDEATHSIG`` on Linux, and a parent watchdog elsewhere).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("highpeaks_ml.training.worker")


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


def main(conn: Any, log_level: str = "INFO", log_format: str = "text") -> None:
    """Worker process entry point: run jobs received on ``conn`` until told to stop."""
    _die_with_parent()
    # Ctrl-C in a terminal reaches the whole process group; the server
    # decides what happens to running jobs, so the worker ignores SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from highpeaks_ml.logs import configure_logging

    configure_logging(log_level, log_format)
    _warm_up()
    try:
        conn.send(("ready", {"pid": os.getpid()}))
    except (BrokenPipeError, ConnectionError, EOFError):
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        _kind, spec = message

        def send(kind: str, payload: dict[str, Any]) -> None:
            conn.send((kind, payload))

        try:
            run_job(spec, send)
        except (BrokenPipeError, ConnectionError, EOFError):
            return  # the server is gone


def _warm_up() -> None:
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
        "skl2onnx.common.data_types",
    ):
        importlib.import_module(module)
    onnx_fixes.install()


def _public(message: str, spec: dict[str, Any]) -> str:
    # Client-facing text: never a path from this machine.
    for secret in (spec.get("home", ""), spec.get("staging_path", "")):
        if secret:
            message = message.replace(str(secret), "<home>")
    return message


def run_job(spec: dict[str, Any], send: Any) -> None:
    """Run one job described by ``spec``; report through ``send(kind, payload)``."""
    from highpeaks_ml.errors import HighPeaksError

    started = time.perf_counter()
    try:
        send("stage", {"stage": "LOADING_DATA"})
        frame, fingerprint = _load(spec)
        result = _train(spec, frame, fingerprint, send)
    except HighPeaksError as exc:
        send("error", {"reason": _public(exc.message, spec)})
        return
    except MemoryError:
        send("error", {"reason": "the worker ran out of memory; use fewer rows or a smaller model"})
        return
    except Exception as exc:
        log.exception("training job %s failed", spec.get("job_id"))
        first = (str(exc).splitlines() or [""])[0][:300]
        send("error", {"reason": _public(f"training failed: {type(exc).__name__}: {first}", spec)})
        return
    log.info(
        "training job done",
        extra={"job": spec.get("job_id"), "s": round(time.perf_counter() - started, 3)},
    )
    send("result", result)


def _load(spec: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from highpeaks_ml.training import datasets as ds

    source = spec["dataset"]
    needed = [spec["target"], *(name for name, _ in spec["features"])]
    if source["kind"] == "builtin":
        frame = ds.builtin_frame(source["name"])
        digest = ds.frame_sha256(frame)
        label = f"builtin:{source['name']}"
    else:
        path = Path(source["path"])
        if source["kind"] == "inline":
            _, columns = ds.analyse_csv(path)
            digest = _file_sha256(path)
            label = "inline"
        else:
            columns = tuple(ds.ColumnInfo(**c) for c in source["columns"])
            digest = source["id"]
            label = source["id"]
        by_name = {c.name: c for c in columns}
        frame = ds.load_csv_frame(path, [by_name[n] for n in needed])
    return frame, {"source": label, "sha256": digest, "rows": len(frame)}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _train(
    spec: dict[str, Any], frame: Any, fingerprint: dict[str, Any], send: Any
) -> dict[str, Any]:
    from highpeaks_ml.training import pipeline
    from highpeaks_ml.training.catalogue import get_algorithm

    def progress(stage: str, info: dict[str, Any] | None) -> None:
        send("stage", {"stage": stage, **(info or {})})

    features = [(str(n), str(t)) for n, t in spec["features"]]
    trained = pipeline.train(
        frame,
        algorithm=get_algorithm(spec["algorithm"]),
        task=spec["task"],
        params=spec["params"],
        target=spec["target"],
        features=features,
        test_size=spec["test_size"],
        seed=spec["seed"],
        progress=progress,
    )
    for warning in trained.warnings:
        log.warning("training job %s: %s", spec["job_id"], warning)
    path = Path(spec["staging_path"])
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(trained.onnx_bytes)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    meta = {
        "model_name": spec["model_name"],
        "version": 0,
        "created_at": 0.0,
        "source": "trained",
        "task": trained.task,
        "algorithm": spec["algorithm"],
        "hyperparameters": spec["params"],
        "metrics": trained.metrics,
        "features": trained.features,
        "inputs": trained.inputs,
        "outputs": trained.outputs,
        "class_labels": trained.class_labels,
        "label_dtype": trained.label_dtype,
        "dataset": {
            **fingerprint,
            "train_rows": trained.train_rows,
            "test_rows": trained.test_rows,
            "target_column": spec["target"],
            "test_size": spec["test_size"],
            "seed": spec["seed"],
        },
        "library_versions": pipeline.library_versions(),
        "verification": trained.verification,
        "job_id": spec["job_id"],
        "created_by": spec.get("created_by", ""),
        "description": spec.get("description", ""),
    }
    return {"path": str(path), "meta": meta, "metrics": trained.metrics}


__all__ = ["main", "run_job"]
