"""Cumulative inference statistics per model version, counted in the serving core.

``ModelManager`` keeps one ``VersionStats`` per (model, version) for as long as
the version exists (loading and unloading do not reset it), so every front
door (the native PredictService and the Open Inference Protocol) contributes
to the same numbers. What is counted where:

- a request (``record_request``): success or failure with its duration, from
  the version's resolution to the assembled result (a failure that names no
  existing version, e.g. an unknown model, belongs to no version);
  ``inference_count`` grows by the rows of each successful request;
- a model execution (``record_execution``): one onnxruntime run, with its rows
  (the batch size) and compute time. With dynamic batching several requests
  share one execution, so ``execution_count`` < requests shows batching at work;
- a queue wait (``record_queue``): per request, the time from submission to
  the start of its execution (batching delay, thread-pool wait).

All methods are thread-safe: executions are recorded from the inference
threads, requests from the event loop.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Duration:
    """A count and the total time of those events, in nanoseconds."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class BatchStats:
    """Executions of one batch size (rows per onnxruntime run)."""

    batch_size: int
    compute: Duration


@dataclass(frozen=True)
class StatsSnapshot:
    """A consistent copy of one version's statistics."""

    model_name: str
    version: int
    #: When the last request finished, in milliseconds since the epoch (0 = never).
    last_inference_ms: int = 0
    #: Rows answered by successful requests.
    inference_count: int = 0
    #: onnxruntime runs.
    execution_count: int = 0
    success: Duration = Duration()
    fail: Duration = Duration()
    queue: Duration = Duration()
    compute: Duration = Duration()
    batches: tuple[BatchStats, ...] = ()


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


class VersionStats:
    """Counters of one model version (see the module docstring)."""

    def __init__(self, model_name: str, version: int) -> None:
        self.model_name = model_name
        self.version = version
        self._lock = threading.Lock()
        self._last_ms = 0
        self._inferences = 0
        self._success = [0, 0]
        self._fail = [0, 0]
        self._queue = [0, 0]
        self._compute = [0, 0]
        self._batches: dict[int, list[int]] = {}

    def record_request(self, ok: bool, rows: int, seconds: float) -> None:
        """One request finished (``ok`` or not) after ``seconds``, answering ``rows`` rows."""
        ns = _ns(seconds)
        with self._lock:
            bucket = self._success if ok else self._fail
            bucket[0] += 1
            bucket[1] += ns
            if ok:
                self._inferences += rows
            self._last_ms = int(time.time() * 1000)

    def record_execution(self, rows: int, seconds: float) -> None:
        """One onnxruntime run over ``rows`` rows took ``seconds``."""
        ns = _ns(seconds)
        with self._lock:
            self._compute[0] += 1
            self._compute[1] += ns
            batch = self._batches.setdefault(rows, [0, 0])
            batch[0] += 1
            batch[1] += ns

    def record_queue(self, seconds: float) -> None:
        """One request waited ``seconds`` before its execution started."""
        ns = _ns(seconds)
        with self._lock:
            self._queue[0] += 1
            self._queue[1] += ns

    def snapshot(self) -> StatsSnapshot:
        """A consistent copy of the counters."""
        with self._lock:
            return StatsSnapshot(
                model_name=self.model_name,
                version=self.version,
                last_inference_ms=self._last_ms,
                inference_count=self._inferences,
                execution_count=self._compute[0],
                success=Duration(*self._success),
                fail=Duration(*self._fail),
                queue=Duration(*self._queue),
                compute=Duration(*self._compute),
                batches=tuple(
                    BatchStats(size, Duration(*counts))
                    for size, counts in sorted(self._batches.items())
                ),
            )


__all__ = ["BatchStats", "Duration", "StatsSnapshot", "VersionStats"]
