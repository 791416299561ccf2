"""Counters, gauges and histograms for the serving hot path: no lock per observation.

prometheus_client's metrics take a lock for every ``inc``/``observe`` (a
histogram takes two: the bucket and the sum) and run a few Python frames
around it. A prediction records about ten series, and in the running server
that cost ~40 µs of CPU per call, a tenth of a whole batch-1 call
(docs/serving.md, "Where each microsecond goes"). These record into
per-thread cells instead: each thread writes only its own list (no lock, no
lost update), and a scrape sums the cells. Exposition is prometheus_client's
own (a custom collector yielding its metric families), so the names, labels,
``_total``/``_bucket``/``_sum``/``_count`` samples and bucket bounds are what
prometheus_client's metrics of the same declaration expose.

Only the few series every prediction touches use this; everything else keeps
prometheus_client's metrics.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

_INF = float("inf")
T = TypeVar("T")


class PerThread(Generic[T]):
    """One ``make()`` per thread, and the list of all of them.

    Each thread writes only its own, so nothing is lost without a lock; a
    reader sees every completed update of every thread (item stores are
    atomic), perhaps not one made while it reads.
    """

    __slots__ = ("_all", "_lock", "_make", "local")

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        #: ``local.cell`` is this thread's once ``mine()`` made it (callers on
        #: the hot path read it directly and call ``mine()`` on AttributeError).
        self.local = threading.local()
        self._all: list[T] = []
        self._lock = threading.Lock()  # guards the list only

    def mine(self) -> T:
        """This thread's (made on its first use)."""
        try:
            return self.local.cell  # type: ignore[no-any-return]
        except AttributeError:
            cell = self._make()
            with self._lock:
                self._all.append(cell)
            self.local.cell = cell
            return cell

    def all(self) -> list[T]:
        """Every thread's, as they are now."""
        with self._lock:
            return list(self._all)


class Cells(PerThread[list[float]]):
    """One list of ``size`` numbers per thread; ``total()`` adds them up."""

    __slots__ = ("_size",)

    def __init__(self, size: int) -> None:
        super().__init__(lambda: [0] * size)
        self._size = size

    def total(self) -> list[float]:
        """Every thread's cell added up, position by position."""
        out: list[float] = [0] * self._size
        for cell in self.all():
            for i, v in enumerate(cell):
                out[i] += v
        return out


class _Metric:
    """A labelled family: ``labels(*values)`` gives the child that records."""

    kind = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)  # type: ignore[arg-type]

    def labels(self, *values: Any) -> Any:
        """The child of these label values (made once; values are turned into str)."""
        key = tuple(str(v) for v in values)
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected")
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = self._child()
        return child

    def _child(self) -> Any:
        raise NotImplementedError

    def _items(self) -> list[tuple[tuple[str, ...], Any]]:
        with self._lock:
            return list(self._children.items())

    def describe(self) -> list[Metric]:
        """The family without samples (for the registry's duplicate-name check)."""
        return [self._family()]

    def _family(self) -> Any:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        """The family with one sample set per child."""
        family = self._family()
        for key, child in self._items():
            self._add(family, list(key), child)
        yield family

    def _add(self, family: Any, labels: list[str], child: Any) -> None:
        raise NotImplementedError


class _Child:
    """One labelled series: a ``Cells`` of ``size`` numbers per thread."""

    __slots__ = ("_cells", "_local")

    def __init__(self, size: int) -> None:
        self._cells = Cells(size)
        #: ``_local.cell`` is this thread's cell once made: the recording methods
        #: read it directly (``Cells.mine()`` inlined: they run several times per
        #: prediction) and call ``mine()`` on AttributeError.
        self._local = self._cells.local

    def cell(self) -> list[float]:
        """This thread's cell: for a recorder that writes several series in one Python
        frame (serving/fastlane.py, api/interceptors.py); only this thread may write it."""
        return self._cells.mine()


class _ScalarChild(_Child):
    """A series of one number (``[value]`` per thread)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(1)

    def get(self) -> float:
        """The current value (every thread's cell added up)."""
        return self._cells.total()[0]


class _CounterChild(_ScalarChild):
    __slots__ = ("created",)

    def __init__(self) -> None:
        super().__init__()
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (>= 0)."""
        if amount < 0:
            raise ValueError("counters only go up")
        try:
            cell = self._local.cell
        except AttributeError:
            cell = self._cells.mine()
        cell[0] += amount


class HotCounter(_Metric):
    """A counter (exposed as ``<name>_total``, with ``_created``)."""

    def _child(self) -> _CounterChild:
        return _CounterChild()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Any, labels: list[str], child: Any) -> None:
        family.add_metric(labels, child.get(), created=child.created)


class _GaugeChild(_ScalarChild):
    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        """Add ``amount``."""
        try:
            cell = self._local.cell
        except AttributeError:
            cell = self._cells.mine()
        cell[0] += amount

    def dec(self, amount: float = 1) -> None:
        """Subtract ``amount`` (a thread's own cell may go negative; the sum does not)."""
        self.inc(-amount)


class HotGauge(_Metric):
    """A gauge moved by ``inc``/``dec`` only (what the RPCs in flight need)."""

    def _child(self) -> _GaugeChild:
        return _GaugeChild()

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Any, labels: list[str], child: Any) -> None:
        family.add_metric(labels, child.get())


class _HistogramChild(_Child):
    __slots__ = ("_n", "bounds")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        # One count per bucket (non-cumulative: ``bisect_left(bounds, amount)``), then
        # the sum of the observations.
        super().__init__(len(bounds) + 1)
        #: The buckets' upper bounds, ``+Inf`` last.
        self.bounds = bounds
        self._n = len(bounds)

    def observe(self, amount: float) -> None:
        """Record one observation."""
        try:
            cell = self._local.cell
        except AttributeError:
            cell = self._cells.mine()
        cell[bisect_left(self.bounds, amount)] += 1
        cell[self._n] += amount

    def buckets(self) -> tuple[list[tuple[str, float]], float]:
        """(cumulative ``(le, count)`` pairs, sum)."""
        total = self._cells.total()
        out = []
        running = 0.0
        for bound, count in zip(self.bounds, total, strict=False):
            running += count
            out.append((_le(bound), running))
        return out, total[self._n]


def _le(bound: float) -> str:
    # prometheus_client's own formatting of bucket bounds ("0.005", "+Inf").
    from prometheus_client.utils import floatToGoString

    return str(floatToGoString(bound))


class HotHistogram(_Metric):
    """A histogram with fixed ``buckets`` (upper bounds; ``+Inf`` is added)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != _INF:
            bounds.append(_INF)
        self.bounds = tuple(bounds)
        super().__init__(name, documentation, labelnames, registry)

    def _child(self) -> _HistogramChild:
        return _HistogramChild(self.bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Any, labels: list[str], child: Any) -> None:
        buckets, total = child.buckets()
        family.add_metric(labels, buckets, total)


__all__ = ["Cells", "HotCounter", "HotGauge", "HotHistogram", "PerThread"]
