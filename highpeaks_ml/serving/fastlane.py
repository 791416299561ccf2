"""The compiled request path of one served version: raw tensors of accepted signatures.

Almost every production request looks like the one before it: the same
model reference, one raw numeric tensor of the same element type and row
shape, a few rows, default outputs. The general path (``ModelManager.predict``)
re-derives everything for each such request: it resolves the reference in
the view, finds the session in the cache, builds the domain objects, walks
the validation of ``InputPlan``, decides where to run, and assembles a
``Prediction``: about 150 Python calls, ~60-80 µs of CPU per call in the
server (docs/serving.md, "Where each microsecond goes").

A ``Lane`` is that work done once. The API keeps one per model reference a
caller used (``ModelManager.lanes``, emptied whenever the view or the
session cache changes, so a lane never outlives what it resolved) and asks
it first. ``Lane.run`` does only what depends on the request: the rows, the
byte count, the values (finite), the inline decision, the run and its
metrics. Anything else, or anything unusual, returns None *before changing
anything*, and the caller takes the general path, which answers exactly as
it always did (the same refusals, the batcher, the thread pool, tracing).
Nothing is refused here, so a lane cannot word an error differently.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from typing import Any

import numpy as np

from highpeaks_ml.serving.manager import (
    INLINE_MAX_ROWS,
    REQUEST_TIMING,
    LoadedVersion,
    ModelManager,
)

_perf_counter = time.perf_counter
_thread_time = time.thread_time
_isfinite = np.isfinite
_frombuffer = np.frombuffer

#: At most this many lanes are kept (callers choose the references they send: a
#: flood of spellings of one reference must not grow memory without bound).
MAX_LANES = 256


class Lane:
    """One loaded version's path for raw numeric tensors of signatures it accepted before.

    Made by ``open`` for a reference the view resolves to a loaded version
    with one input. ``run`` records what ``LoadedVersion.run`` and the
    manager record for an inline run: the same five series (written directly
    into this thread's cells), statistics and estimates (through the
    version's own ``note_run`` and ``VersionStats.record_inline``).
    """

    __slots__ = (
        "_batch_bounds",
        "_cache",
        "_compute_bounds",
        "_key",
        "_local",
        "_manager",
        "_max_rows",
        "_outputs",
        "_queue_zero",
        "accepted",
        "api",
        "lv",
        "slot",
    )

    def __init__(self, manager: ModelManager, lv: LoadedVersion) -> None:
        self.lv = lv
        #: The single input's name.
        self.slot = lv.plan.slots[0].name
        #: The plan's own cache of accepted signatures (``InputPlan._accepted``): the
        #: general path adds to it the first time it accepts a signature.
        self.accepted = lv.plan._accepted
        self._max_rows = manager.settings.max_predict_rows
        self._cache = manager._cache
        self._manager = manager
        self._key = (lv.meta.model_name, lv.meta.version)
        self._outputs = lv.all_outputs
        series = lv.series
        self._batch_bounds = series.batch_rows.bounds
        self._compute_bounds = series.compute.bounds
        # An inline run waited for nothing: its queue wait is 0 (bucket worked out once).
        self._queue_zero = bisect_left(series.queue.bounds, 0.0)
        self._local = threading.local()
        #: What the API layer compiles for this version (its response writers).
        self.api: dict[str, Any] = {}

    @classmethod
    def open(
        cls, manager: ModelManager, name: str, version: int | None, alias: str | None
    ) -> Lane | None:
        """The lane of the version the reference resolves to now, when it is loaded
        and takes one input (None: the general path; it loads, refuses, etc.)."""
        meta = manager._resolve_in_view(name, version, alias)
        if meta is None:
            return None
        lv = manager._loaded_now(meta)
        if lv is None or len(lv.plan.slots) != 1 or lv.plan.kind == "columns":
            return None
        return cls(manager, lv)

    def _cells(self) -> tuple[Any, ...]:
        """This thread's cells of the version's five serving series and of its statistics
        (made once per thread; the statistics' None when the version has none)."""
        lv = self.lv
        s = lv.series
        cells = (
            s.batch_rows.cell(),
            s.compute.cell(),
            s.queue.cell(),
            s.inline_runs.cell(),
            s.rows.cell(),
            lv.stats.cell() if lv.stats is not None else None,
        )
        self._local.cells = cells
        return cells

    def run(
        self, dtype: str, shape: tuple[int, ...], raw: bytes
    ) -> tuple[list[np.ndarray], int] | None:
        """(every served output, in ``lv.all_outputs`` order; rows) of one raw tensor
        for the input, run on the event loop; None when the general path must
        answer (nothing was recorded or changed then).

        ``dtype`` is the element type name the caller sent, ``shape`` the
        tensor's shape and ``raw`` its little-endian bytes.
        """
        started = _perf_counter()
        if len(shape) < 2:
            return None
        seen = self.accepted.get((self.slot, dtype, shape[1:]))
        if seen is None or REQUEST_TIMING.get() is not None:  # traced calls: general path
            return None
        rows = shape[0]
        if not 0 < rows <= self._max_rows or len(raw) != rows * seen.row_bytes:
            return None
        lv = self.lv
        # The general path's rule; no other prediction is in flight when the general
        # path has none (a lane's never is: it does not await).
        if not lv.runs_inline(rows, rows * seen.row_elements, not self._manager._predicting):
            return None
        arr = _frombuffer(raw, dtype=seen.sent).reshape(shape)
        if seen.target is not None:
            with np.errstate(over="ignore"):
                arr = arr.astype(seen.target)
        if seen.finite and not _isfinite(arr).all():
            return None  # the general path says which value, and why
        feeds = {self.slot: arr}
        stats = lv.stats
        cpu = _thread_time() if rows <= INLINE_MAX_ROWS else 0.0
        begun = _perf_counter()
        try:
            outs: list[np.ndarray] = lv.session_run(self._outputs, feeds, None)
        except BaseException:
            if stats is not None:
                stats.record_request(False, 0, _perf_counter() - started)
            raise
        ended = _perf_counter()
        elapsed = ended - begun
        lv.note_run(rows, elapsed, cpu)
        try:
            cells = self._local.cells
        except AttributeError:
            cells = self._cells()
        batch, compute, queue, inline, answered, counts = cells
        batch[bisect_left(self._batch_bounds, rows)] += 1
        batch[-1] += rows
        compute[bisect_left(self._compute_bounds, elapsed)] += 1
        compute[-1] += elapsed
        queue[self._queue_zero] += 1
        inline[0] += 1
        answered[0] += rows
        if lv.drift is not None:
            lv.drift.observe(feeds)
        self._cache.move_to_end(self._key)  # recently used (the LRU of sessions)
        if stats is not None:
            stats.record_inline(rows, elapsed, ended - started, counts)
        return outs, rows


def open_lane(
    manager: ModelManager, key: Any, name: str, version: int | None, alias: str | None
) -> Lane | None:
    """Open the lane of a reference not in ``manager.lanes`` and keep it under ``key``
    (the reference as the API spells it) when it resolves to a loaded one-input
    version now."""
    lane = Lane.open(manager, name, version, alias)
    if lane is not None:
        lanes = manager.lanes
        if len(lanes) >= MAX_LANES:
            lanes.clear()
        lanes[key] = lane
    return lane


__all__ = ["MAX_LANES", "Lane", "open_lane"]
