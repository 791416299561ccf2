"""Drift of served inputs: training profiles, rolling served profiles, PSI.

**Training profile** (built by the training worker from the training split,
stored with the version as the artifact ``profile.json``):

- numeric feature: the decile bin edges of its non-missing values
  (``np.quantile``; repeated edges of a discrete feature collapse), the
  proportion of values in each bin, and the missing rate (NaN);
- categorical feature: the ``top_k`` most frequent categories with their
  proportions, one proportion for every other category, and the missing rate
  (the empty string is a missing category, as serving's ``null``).

A value ``x`` falls in bin ``searchsorted(edges, x, side="right")``, on both
sides, so the served counts use exactly the training bins.

**Served profile** (``VersionDrift``, one per loaded version): the same bins,
counted over a rolling time window (``drift_window_s``) made of
``WINDOW_SLICES`` slices, so memory is bounded (slices x bins integers) and
old traffic leaves the window slice by slice. The hot path
(``LoadedVersion.run``, which native Predict, PredictStream and the Open
Inference Protocol all go through) only appends a reference to the request's
feeds to a bounded queue (``observe``: an append, no numpy); a background
thread drains the queue every ``DRAIN_INTERVAL_S`` seconds, concatenates the
queued rows and counts them with one vectorised ``np.searchsorted`` per
feature. When traffic outruns the drain the queue keeps the newest requests
(sampling), and a large request contributes at most ``MAX_ROWS_PER_REQUEST``
evenly spaced rows.

**Drift** of a feature is the population stability index between the
training proportions ``e`` and the served ones ``a`` over the same bins
(missing values being one more bin; categories: the listed ones plus
"other"): ``PSI = sum((a - e) * ln(a / e))``, proportions floored at
``PSI_FLOOR`` so an empty bin does not make it infinite. Rules of thumb
(docs/insight.md): under 0.1 no significant shift, 0.1-0.25 moderate, above
0.25 significant.

This module imports numpy only (no grpc, no onnxruntime, no pandas), so the
training worker uses it to build profiles.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("highpeaks_ml.serving.drift")

#: Artifact name of the training profile.
PROFILE_ARTIFACT = "profile.json"
PROFILE_FORMAT = 1
#: Numeric bins (deciles) and categories kept per categorical feature.
NUMERIC_BINS = 10
TOP_K = 20
#: Smallest proportion used in the PSI (an empty bin would make it infinite).
PSI_FLOOR = 1e-4
#: PSI thresholds: under MODERATE no significant shift; above SIGNIFICANT a significant one.
MODERATE = 0.1
SIGNIFICANT = 0.25
#: Slices of the rolling window; the window moves by one slice at a time.
WINDOW_SLICES = 12
#: Seconds between two drains of the queued feeds (and gauge updates).
DRAIN_INTERVAL_S = 1.0
#: Requests queued between two drains at most (older ones are dropped: sampling).
MAX_QUEUED = 4096
#: Rows of one request counted at most (evenly spaced rows of a larger one).
MAX_ROWS_PER_REQUEST = 1024
#: Fewest rows in the window before a feature's PSI is exported as a gauge
#: (a PSI of a handful of rows is noise); reports show it with the rows seen.
MIN_ROWS_FOR_GAUGE = 100

NUMERIC = "numeric"
CATEGORICAL = "categorical"


# --- training profile ----------------------------------------------------------------


@dataclass(frozen=True)
class FeatureProfile:
    """The training distribution of one feature (see the module docstring)."""

    name: str
    type: str  # NUMERIC | CATEGORICAL
    #: Numeric: interior bin edges (ascending); categorical: the kept categories.
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    #: Proportions of the non-missing values per bin (numeric: len(edges) + 1;
    #: categorical: len(categories) + 1, the last one "other").
    proportions: tuple[float, ...] = ()
    missing_rate: float = 0.0

    @property
    def bins(self) -> int:
        """Counted bins, the missing one included (numeric: edges + 2; categorical:
        categories + "other" + missing)."""
        return (len(self.edges) if self.type == NUMERIC else len(self.categories)) + 2

    def expected(self) -> np.ndarray:
        """Training proportions over the counted bins (missing last), summing to 1."""
        present = np.asarray(self.proportions, dtype=np.float64) * (1.0 - self.missing_rate)
        return np.append(present, self.missing_rate)

    def bin_labels(self) -> list[str]:
        """Human-readable names of the counted bins (missing last)."""
        if self.type == NUMERIC:
            e = [f"{v:.4g}" for v in self.edges]
            if not e:
                labels = ["all"]
            else:
                labels = [f"< {e[0]}"]
                labels += [f"[{a}, {b})" for a, b in itertools.pairwise(e)]
                labels.append(f">= {e[-1]}")
        else:
            labels = [*self.categories, "(other)"]
        return [*labels, "(missing)"]

    def count(self, values: np.ndarray) -> np.ndarray:
        """Counts of ``values`` (one column, any length) over the counted bins."""
        counts = np.zeros(self.bins, dtype=np.int64)
        if values.size == 0:
            return counts
        if self.type == NUMERIC:
            x = np.asarray(values, dtype=np.float64).ravel()
            missing = np.isnan(x)
            present = x[~missing]
            idx = np.searchsorted(np.asarray(self.edges, dtype=np.float64), present, side="right")
            counts[:-1] = np.bincount(idx, minlength=self.bins - 1)[: self.bins - 1]
            counts[-1] = int(missing.sum())
            return counts
        cats, n = np.unique(
            np.asarray(values, dtype=object).ravel().astype(str), return_counts=True
        )
        index = {c: i for i, c in enumerate(self.categories)}
        other = len(self.categories)
        for c, k in zip(cats.tolist(), n.tolist(), strict=True):
            if c == "":
                counts[-1] += k
            else:
                counts[index.get(c, other)] += k
        return counts

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "type": self.type,
            "edges": list(self.edges),
            "categories": list(self.categories),
            "proportions": list(self.proportions),
            "missing_rate": self.missing_rate,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureProfile:
        """Inverse of ``to_dict``."""
        return cls(
            name=str(d["name"]),
            type=str(d["type"]),
            edges=tuple(float(v) for v in d.get("edges", ())),
            categories=tuple(str(v) for v in d.get("categories", ())),
            proportions=tuple(float(v) for v in d["proportions"]),
            missing_rate=float(d.get("missing_rate", 0.0)),
        )


@dataclass(frozen=True)
class TrainingProfile:
    """The profile of every feature of a version's training split, in model order."""

    features: tuple[FeatureProfile, ...]
    rows: int

    def to_json(self) -> bytes:
        """The ``profile.json`` artifact."""
        body = {
            "format": PROFILE_FORMAT,
            "rows": self.rows,
            "features": [f.to_dict() for f in self.features],
        }
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TrainingProfile:
        """Inverse of ``to_json`` (ValueError for another format)."""
        raw = json.loads(data)
        if raw.get("format") != PROFILE_FORMAT:
            raise ValueError(f"unknown profile format {raw.get('format')!r}")
        return cls(
            features=tuple(FeatureProfile.from_dict(f) for f in raw["features"]),
            rows=int(raw["rows"]),
        )


def profile_feature(
    name: str, kind: str, values: np.ndarray, bins: int = NUMERIC_BINS, top_k: int = TOP_K
) -> FeatureProfile:
    """The profile of one training column (numeric: float with NaN; categorical: str)."""
    n = len(values)
    if kind == NUMERIC:
        x = np.asarray(values, dtype=np.float64)
        missing = np.isnan(x)
        present = x[~missing]
        if present.size:
            qs = np.quantile(present, np.linspace(0.0, 1.0, bins + 1)[1:-1])
            edges = np.unique(qs)
        else:
            edges = np.empty(0)
        prof = FeatureProfile(name, NUMERIC, edges=tuple(float(v) for v in edges))
        counts = prof.count(present)[:-1]
        total = max(int(counts.sum()), 1)
        return FeatureProfile(
            name,
            NUMERIC,
            edges=prof.edges,
            proportions=tuple(float(c) / total for c in counts),
            missing_rate=float(missing.sum()) / n if n else 0.0,
        )
    s = np.asarray(values, dtype=object).astype(str)
    missing_n = int((s == "").sum())
    cats, counts = np.unique(s[s != ""], return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top_k]
    kept = tuple(str(cats[i]) for i in order)
    prof = FeatureProfile(name, CATEGORICAL, categories=kept)
    c = prof.count(s[s != ""])[:-1]
    total = max(int(c.sum()), 1)
    return FeatureProfile(
        name,
        CATEGORICAL,
        categories=kept,
        proportions=tuple(float(v) / total for v in c),
        missing_rate=missing_n / n if n else 0.0,
    )


def build_profile(columns: Sequence[tuple[str, str, np.ndarray]]) -> TrainingProfile:
    """The profile of a training split: ``columns`` = (feature name, kind, values) in order."""
    rows = len(columns[0][2]) if columns else 0
    return TrainingProfile(
        features=tuple(profile_feature(n, k, v) for n, k, v in columns), rows=rows
    )


def psi(expected: np.ndarray, actual_counts: np.ndarray) -> float:
    """Population stability index of served ``actual_counts`` against ``expected`` proportions
    (same bins); NaN when nothing was counted."""
    total = actual_counts.sum()
    if total <= 0:
        return math.nan
    a = np.maximum(actual_counts / total, PSI_FLOOR)
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def level(value: float) -> str:
    """Words for a PSI: "none" (< 0.1), "moderate" (0.1-0.25), "significant" (> 0.25)."""
    if math.isnan(value):
        return "no traffic"
    if value < MODERATE:
        return "none"
    if value <= SIGNIFICANT:
        return "moderate"
    return "significant"


# --- served profile --------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift over the window."""

    name: str
    type: str
    psi: float  # NaN without traffic
    rows: int
    bins: tuple[str, ...]
    training: tuple[float, ...]
    served: tuple[float, ...]

    @property
    def level(self) -> str:
        return level(self.psi)


@dataclass(frozen=True)
class DriftReport:
    """A version's drift: features sorted by PSI, highest first."""

    model_name: str
    version: int
    window_s: float
    rows: int
    training_rows: int
    features: tuple[FeatureDrift, ...] = field(default_factory=tuple)


#: (input name, column) each feature is read from in a run's feeds.
Columns = tuple[tuple[str, int], ...]


class VersionDrift:
    """The rolling served profile of one loaded version (see the module docstring)."""

    def __init__(
        self,
        model_name: str,
        version: int,
        profile: TrainingProfile,
        columns: Columns,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model_name = model_name
        self.version = version
        self.profile = profile
        self.columns = columns
        self.window_s = float(window_s)
        self._slice_s = self.window_s / WINDOW_SLICES
        self._clock = clock
        self._queue: deque[Mapping[str, np.ndarray]] = deque(maxlen=MAX_QUEUED)
        self._lock = threading.Lock()
        #: (slice number, counts per feature) for the slices inside the window, oldest first.
        self._slices: deque[tuple[int, list[np.ndarray]]] = deque()
        self._expected = [f.expected() for f in profile.features]

    def observe(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Queue one run's feeds (the hot path: one deque append; thread-safe)."""
        self._queue.append(feeds)

    def drain(self) -> int:
        """Count the queued feeds into the current slice; returns the rows counted."""
        items: list[Mapping[str, np.ndarray]] = []
        pop = self._queue.popleft
        while True:
            try:
                items.append(pop())
            except IndexError:
                break
        with self._lock:
            current = self._rotate()
            if not items:
                return 0
            by_input: dict[str, list[np.ndarray]] = {}
            for feeds in items:
                for name, arr in feeds.items():
                    rows = arr.shape[0] if arr.ndim else 0
                    if rows > MAX_ROWS_PER_REQUEST:
                        arr = arr[:: math.ceil(rows / MAX_ROWS_PER_REQUEST)]
                    by_input.setdefault(name, []).append(arr)
            merged = {
                name: np.concatenate(arrs) if len(arrs) > 1 else arrs[0]
                for name, arrs in by_input.items()
            }
            counted = 0
            for i, (feature, (inp, col)) in enumerate(
                zip(self.profile.features, self.columns, strict=True)
            ):
                found = merged.get(inp)
                if found is None:
                    continue
                values = found.reshape(found.shape[0], -1)[:, col]
                current[i] += feature.count(values)
                counted = max(counted, len(values))
            return counted

    def _rotate(self) -> list[np.ndarray]:
        """The current slice's counts (a new slice when its time came); drops old slices."""
        number = int(self._clock() // self._slice_s) if self._slice_s > 0 else 0
        while self._slices and self._slices[0][0] <= number - WINDOW_SLICES:
            self._slices.popleft()
        if not self._slices or self._slices[-1][0] != number:
            self._slices.append(
                (number, [np.zeros(f.bins, dtype=np.int64) for f in self.profile.features])
            )
        return self._slices[-1][1]

    def report(self) -> DriftReport:
        """PSI per feature over the window (the queue drained first), highest first."""
        self.drain()
        with self._lock:
            self._rotate()
            totals = [
                np.sum([s[1][i] for s in self._slices], axis=0)
                for i in range(len(self.profile.features))
            ]
        out = []
        for feature, expected, counts in zip(
            self.profile.features, self._expected, totals, strict=True
        ):
            rows = int(counts.sum())
            served = counts / rows if rows else np.zeros_like(expected)
            out.append(
                FeatureDrift(
                    name=feature.name,
                    type=feature.type,
                    psi=psi(expected, counts),
                    rows=rows,
                    bins=tuple(feature.bin_labels()),
                    training=tuple(float(v) for v in expected),
                    served=tuple(float(v) for v in served),
                )
            )
        out.sort(key=lambda f: (-(f.psi if not math.isnan(f.psi) else -1.0), f.name))
        return DriftReport(
            model_name=self.model_name,
            version=self.version,
            window_s=self.window_s,
            rows=max((f.rows for f in out), default=0),
            training_rows=self.profile.rows,
            features=tuple(out),
        )


def feed_columns(
    features: Sequence[tuple[str, str]], inputs: Sequence[tuple[str, Sequence[int]]]
) -> Columns | None:
    """Where each feature is in a run's feeds, from a version's schema: one matrix input
    with a column per feature (all numeric), or one input per feature; None otherwise."""
    if len(inputs) == 1 and len(inputs[0][1]) == 2 and inputs[0][1][-1] == len(features):
        return tuple((inputs[0][0], j) for j in range(len(features)))
    if len(inputs) == len(features) and len(features) > 0:
        return tuple((name, 0) for name, _ in inputs)
    return None


class DriftMonitor:
    """Every tracked version's served profile, drained by one background thread.

    ``enabled=False`` (setting ``drift_enabled``) tracks nothing: ``track``
    returns None, so the hot path does no work at all.
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        window_s: float = 3600.0,
        on_psi: Callable[[str, int, str, float], None] | None = None,
        interval_s: float = DRAIN_INTERVAL_S,
    ) -> None:
        self.enabled = enabled
        self.window_s = window_s
        self._on_psi = on_psi
        self._interval_s = interval_s
        self._versions: dict[tuple[str, int], VersionDrift] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def track(
        self, name: str, version: int, profile: TrainingProfile, columns: Columns
    ) -> VersionDrift | None:
        """The served profile of a version (kept across unload and reload); None when off."""
        if not self.enabled:
            return None
        with self._lock:
            vd = self._versions.get((name, version))
            if vd is None:
                vd = VersionDrift(name, version, profile, columns, self.window_s)
                self._versions[(name, version)] = vd
            return vd

    def get(self, name: str, version: int) -> VersionDrift | None:
        """The served profile of a tracked version, or None."""
        with self._lock:
            return self._versions.get((name, version))

    def forget(self, name: str, version: int | None = None) -> None:
        """Stop tracking a deleted version (every version of ``name`` when None)."""
        with self._lock:
            for key in [k for k in self._versions if k[0] == name and version in (None, k[1])]:
                del self._versions[key]

    def start(self) -> None:
        """Start the drain thread (no-op when disabled or started)."""
        if not self.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="drift", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the drain thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def drain_all(self) -> None:
        """Count every version's queued feeds and export the PSI of those with enough rows."""
        with self._lock:
            versions = list(self._versions.values())
        for vd in versions:
            try:
                vd.drain()
                if self._on_psi is None:
                    continue
                rep = vd.report()
                for f in rep.features:
                    if f.rows >= MIN_ROWS_FOR_GAUGE:
                        self._on_psi(vd.model_name, vd.version, f.name, f.psi)
            except Exception:
                # Drift is advisory: a bad batch must never break serving.
                log.exception("drift update failed for %s version %d", vd.model_name, vd.version)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.drain_all()


__all__ = [
    "MODERATE",
    "PROFILE_ARTIFACT",
    "SIGNIFICANT",
    "DriftMonitor",
    "DriftReport",
    "FeatureDrift",
    "FeatureProfile",
    "TrainingProfile",
    "VersionDrift",
    "build_profile",
    "feed_columns",
    "level",
    "profile_feature",
    "psi",
]
