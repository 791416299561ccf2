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
threads, requests from the event loop, each into the thread's own cell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from highpeaks_ml.hotmetrics import PerThread


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


# Positions in a thread's cell.
_OK_N, _OK_NS, _FAIL_N, _FAIL_NS, _ROWS, _QUEUE_N, _QUEUE_NS, _RUN_N, _RUN_NS = range(9)


class _Cell:
    """One thread's counters (only that thread writes them)."""

    __slots__ = ("batches", "counts")

    def __init__(self) -> None:
        self.counts = [0] * 9
        self.batches: dict[int, list[int]] = {}

    def request(self, ok: bool, rows: int, ns: int) -> None:
        """Count one request that finished after ``ns`` nanoseconds."""
        counts = self.counts
        if ok:
            counts[_OK_N] += 1
            counts[_OK_NS] += ns
            counts[_ROWS] += rows
        else:
            counts[_FAIL_N] += 1
            counts[_FAIL_NS] += ns

    def execution(self, rows: int, ns: int, waited_ns: int | None) -> None:
        """Count one run over ``rows`` rows (and its one request's queue wait, if given)."""
        counts = self.counts
        counts[_RUN_N] += 1
        counts[_RUN_NS] += ns
        if waited_ns is not None:
            counts[_QUEUE_N] += 1
            counts[_QUEUE_NS] += waited_ns
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = [0, 0]
        batch[0] += 1
        batch[1] += ns


class VersionStats:
    """Counters of one model version (see the module docstring).

    Every prediction records here, so each thread counts into a cell of its
    own, without a lock (``hotmetrics.PerThread``, as the hot metrics), and a
    snapshot adds the cells up.
    """

    def __init__(self, model_name: str, version: int) -> None:
        self.model_name = model_name
        self.version = version
        self._cells = PerThread(_Cell)
        self._mine = self._cells.mine
        self._last_ms = 0

    def record_request(self, ok: bool, rows: int, seconds: float) -> None:
        """One request finished (``ok`` or not) after ``seconds``, answering ``rows`` rows."""
        self._mine().request(ok, rows, _ns(seconds))
        self._last_ms = int(time.time() * 1000)

    def record_execution(self, rows: int, seconds: float, waited: float | None = None) -> None:
        """One onnxruntime run over ``rows`` rows took ``seconds``; ``waited`` (when
        given) is the queue wait of its one request (as ``record_queue``)."""
        self._mine().execution(rows, _ns(seconds), None if waited is None else _ns(waited))

    def cell(self) -> _Cell:
        """This thread's cell (only this thread may write it; see ``record_inline``)."""
        return self._mine()

    def record_inline(self, rows: int, seconds: float, total: float, cell: _Cell) -> None:
        """One request answered by one run of its own, started at once (on the event
        loop): ``record_execution(rows, seconds, 0.0)`` and ``record_request(True, rows,
        total)``, into this thread's ``cell`` (the caller keeps it: the lookup is paid
        per prediction; serving/fastlane.py)."""
        cell.execution(rows, _ns(seconds), 0)
        cell.request(True, rows, _ns(total))
        self._last_ms = int(time.time() * 1000)

    def record_queue(self, seconds: float) -> None:
        """One request waited ``seconds`` before its execution started."""
        counts = self._mine().counts
        counts[_QUEUE_N] += 1
        counts[_QUEUE_NS] += _ns(seconds)

    def snapshot(self) -> StatsSnapshot:
        """The counters of every thread added up."""
        cells = self._cells.all()
        c = [0] * 9
        batches: dict[int, list[int]] = {}
        for cell in cells:
            for i, v in enumerate(cell.counts):
                c[i] += v
            for size, (n, ns) in list(cell.batches.items()):
                both = batches.setdefault(size, [0, 0])
                both[0] += n
                both[1] += ns
        return StatsSnapshot(
            model_name=self.model_name,
            version=self.version,
            last_inference_ms=self._last_ms,
            inference_count=c[_ROWS],
            execution_count=c[_RUN_N],
            success=Duration(c[_OK_N], c[_OK_NS]),
            fail=Duration(c[_FAIL_N], c[_FAIL_NS]),
            queue=Duration(c[_QUEUE_N], c[_QUEUE_NS]),
            compute=Duration(c[_RUN_N], c[_RUN_NS]),
            batches=tuple(
                BatchStats(size, Duration(n, ns)) for size, (n, ns) in sorted(batches.items())
            ),
        )


__all__ = ["BatchStats", "Duration", "StatsSnapshot", "VersionStats"]
