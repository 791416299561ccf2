"""Model lifecycle in the server: resolution, session cache, loading, reloads, inference.

``ModelManager`` keeps an in-memory view of the registry (name -> versions
and aliases) so that resolving ``model/version/alias`` costs a dict lookup,
not a disk read. The view is refreshed

- at once for changes made in this process (``registry.add_listener``), and
- every ``REFRESH_INTERVAL_S`` by re-reading the store, for changes made by
  other processes sharing the same home.

A refresh that brings a new latest version or moves an alias first loads the
newly targeted version (when eager loading is on, or the model already had
a version loaded), then switches, then unloads versions nothing points at
any more. A target (an alias, or ``latest``) whose new version fails to load
is *held*: its callers keep getting the version it pointed at before (when
that one still exists and has not failed itself), the failure is logged,
shown by ``version_status``/``held_targets`` (GetModelVersion) and counted
in the ``model_targets_held`` gauge, and the load is retried every
``FAILED_RETRY_S`` until it succeeds or the target moves on. Requests hold a
reference to the loaded version they resolved, so requests in flight on an
unloaded version finish on it.

Sessions live in an LRU cache bounded by ``session_cache_size`` versions;
they load lazily on first use (concurrent first requests share one load)
or at ``start()`` for every aliased version and each model's latest when
``eager_load``. Loading (sha256-checked read, session creation, warm-up
inference) runs in a small thread pool, never on the event loop. A version
that fails to load is marked failed with the reason (in our words:
onnxruntime's own text goes to the log only) and answered ``Unavailable``
with it (retried after ``FAILED_RETRY_S``); other versions keep serving.

Both front doors (the native PredictService and the Open Inference
Protocol) call ``predict``; the OIP's repository and readiness calls use
``model_ready``, ``describe``, ``repository_index``, ``load_model``,
``unload_model`` and ``statistics``. Statistics (``serving/stats.py``) are
counted here, so both front doors contribute to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import re
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from highpeaks_ml import metrics
from highpeaks_ml.config import Settings
from highpeaks_ml.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    HighPeaksError,
    InvalidArgument,
    NotFound,
    Unavailable,
    quote,
)
from highpeaks_ml.registry.base import ModelInfo, ModelStore, VersionMeta
from highpeaks_ml.serving import loadcheck, providers
from highpeaks_ml.serving.batching import Batcher
from highpeaks_ml.serving.drift import (
    PROFILE_ARTIFACT,
    DriftMonitor,
    DriftReport,
    TrainingProfile,
    VersionDrift,
    feed_columns,
)
from highpeaks_ml.serving.inputs import (
    InputPlan,
    Prediction,
    RowsInput,
    TensorInput,
    TensorsInput,
)
from highpeaks_ml.serving.stats import StatsSnapshot, VersionStats

log = logging.getLogger("highpeaks_ml.serving")

#: How often the store is re-read for changes made by other processes.
REFRESH_INTERVAL_S = 1.0
#: How long a failed version stays failed before a request retries the load.
FAILED_RETRY_S = 30.0
#: Requests at or above this many elements are validated in the thread pool,
#: so converting a large typed tensor does not hold up the event loop.
_LARGE_ELEMENTS = 50_000
#: Runs of at most this many rows may run inline on the event loop (see
#: ``LoadedVersion.inline_ok``); their measured cost decides whether they do.
INLINE_MAX_ROWS = 8
#: ... and of at most this many input elements, all numeric: a string's cost
#: grows with its length, which the estimate of earlier runs does not know.
INLINE_MAX_ELEMENTS = 4096
#: Larger runs may run inline too when their estimated cost (rows times the
#: measured cost per row of larger runs) is under the limit, up to this many
#: numeric input elements (requests of ``_LARGE_ELEMENTS`` or more never do).
INLINE_MAX_BATCH_ELEMENTS = 32768
#: One cheap small run in this many updates the inline estimate (see LoadedVersion.run).
_MEASURE_EVERY = 4
#: Small runs measured (in the thread pool) before a version may run inline.
_INLINE_PROBATION = 5
#: The target key of a model's latest version (next to its aliases; an alias
#: can never be called "latest").
LATEST = "latest"

_PATHISH = re.compile(r"(?:/[\w.+-]+){2,}/?")
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*(?:[A-Z_]+\s*:\s*)?")
# onnxruntime's "file.cc:123 namespace::Function(args) " location prefix.
_ORT_WHERE = re.compile(r"^(?:[A-Z_]+\s*:\s*)?\S+\.(?:cc|cpp|h):\d+\s+\S.*?\)\s+")


class RequestTiming:
    """``time.perf_counter`` stamps of one request's stages, for a trace (api/tracing.py).

    Recorded only while ``REQUEST_TIMING`` holds one (a sampled call with
    tracing on); otherwise the hot path reads one contextvar and records nothing.
    """

    __slots__ = ("dispatched", "done", "ended", "inline", "model", "rows", "started", "version")

    def __init__(self) -> None:
        self.model = ""
        self.version = 0
        self.rows = 0
        #: Validated and handed on (to the loop's inline run, the batcher or the pool).
        self.dispatched = 0.0
        #: The onnxruntime call (for a merged batch: the batch's dispatch and end).
        self.started = 0.0
        self.ended = 0.0
        #: The outputs are back on the event loop.
        self.done = 0.0
        self.inline = False


#: The current call's ``RequestTiming`` (set by the API's tracing), or None.
REQUEST_TIMING: contextvars.ContextVar[RequestTiming | None] = contextvars.ContextVar(
    "request_timing", default=None
)


@dataclass(slots=True)  # per request: not frozen (see serving/inputs.TensorInput)
class PredictQuery:
    """One prediction request in domain terms."""

    name: str
    version: int | None = None
    alias: str | None = None
    data: TensorInput | TensorsInput | RowsInput = field(default_factory=lambda: RowsInput(()))
    #: Subset of ("labels", "probabilities", "values"); empty = all the model has.
    outputs: frozenset[str] = frozenset()
    #: Outputs by name instead (ONNX names or ``inputs.OUTPUT_ALIASES``), returned
    #: in ``Prediction.outputs`` under these names; takes precedence over ``outputs``.
    output_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class VersionState:
    """A version of the registry with its load state in this process."""

    model_name: str
    version: int
    state: str  # unloaded | loading | ready | failed
    error: str = ""


class LoadedVersion:
    """An onnxruntime session with its plan; kept alive by requests that use it."""

    def __init__(
        self,
        meta: VersionMeta,
        session: Any,
        plan: InputPlan,
        provider: str,
        inline_limit_s: float = 0.0,
        idle_limit_s: float = 0.0,
    ) -> None:
        self.meta = meta
        self.provider = provider
        self.session = session
        self.plan = plan
        self.all_outputs = plan.outputs.names(frozenset(), plan.label)
        #: Its metric series, looked up once (metrics.VersionSeries).
        self.series = metrics.VersionSeries(meta.model_name, meta.version)
        self.batcher: Batcher | None = None
        #: Set by the manager once loaded (warm-up runs are not counted).
        self.stats: VersionStats | None = None
        #: The served-input profile (serving/drift.py); None when drift is off or the
        #: version has no training profile.
        self.drift: VersionDrift | None = None
        self._inline_limit_s = inline_limit_s
        self._idle_limit_s = idle_limit_s
        #: Estimated seconds of one run of at most INLINE_MAX_ROWS rows, and how
        #: many such runs were measured. Updated from every thread without a
        #: lock: a lost update only nudges an estimate.
        self.small_run_s = float("inf")
        self.small_runs = 0
        #: Small runs made (the estimate updated or not; see run()).
        self._small_seen = 0
        #: The warm-up's one-row feeds (None until it ran).
        self.warm_feeds: dict[str, np.ndarray] | None = None
        #: Estimated seconds per row of runs of more than INLINE_MAX_ROWS rows (wall
        #: time: onnxruntime may spread them over its intra-op threads).
        self.row_cost_s = float("inf")

    @property
    def session(self) -> Any:
        """The onnxruntime session (settable: ``session_run`` follows it)."""
        return self._session

    @session.setter
    def session(self, session: Any) -> None:
        self._session = session
        #: What the runs call: the session's ``run``, or for a CPU session its C++
        #: ``run`` directly (``_direct_run``).
        self.session_run = _direct_run(session, self.provider)

    def inline_ok(self, feeds: dict[str, np.ndarray], rows: int, idle: bool = False) -> bool:
        """Whether a run of ``feeds`` (``rows`` rows) may run on the event loop
        (``runs_inline`` for these feeds: numeric only; ``idle``: no other prediction
        is in flight)."""
        if len(feeds) == 1:  # the common case, without the generators
            (a,) = feeds.values()
            return a.dtype.kind in "biuf" and self.runs_inline(rows, a.size, idle)
        return all(a.dtype.kind in "biuf" for a in feeds.values()) and self.runs_inline(
            rows, sum(a.size for a in feeds.values()), idle
        )

    def runs_inline(self, rows: int, elements: int, idle: bool) -> bool:
        """Whether a run of numeric feeds of ``rows`` rows and ``elements`` elements in all
        may run on the event loop: the one rule, for the general path and the lanes.

        A hop to the inference thread pool costs two thread wake-ups (~130-190
        µs on a small VM; docs/serving.md), often more than the run itself. A
        version qualifies once ``_INLINE_PROBATION`` small runs were measured
        (the warm-up at load makes them) and their estimate is under the
        ``inline_inference_us`` setting; a run of more rows qualifies when
        rows times the measured cost per row of larger runs is under it. A
        run ten times the limit pulls an estimate over it at once, so a
        version that turns slow goes back to the thread pool (``_nudge``).

        With ``idle`` (no other prediction in flight), a larger run also
        qualifies when its estimate is under the ``inline_when_idle_us``
        setting: the pool trip cost a 1,000-row forest (~2.7 ms) 0.61-0.85x
        the rows/s it answers on the loop on the 2-core development VM
        (docs/serving.md), and with nothing else in flight nothing waits for
        the loop but what arrives during the run, at most about the limit.
        """
        if rows <= INLINE_MAX_ROWS:
            return (
                self.small_runs >= _INLINE_PROBATION
                and self.small_run_s < self._inline_limit_s
                and elements <= INLINE_MAX_ELEMENTS
            )
        # A larger run whose estimate is under the limit too (e.g. 1,000 rows of
        # a linear model: ~50 µs of onnxruntime against a ~150 µs pool hop).
        cost = rows * self.row_cost_s
        if cost < self._inline_limit_s and elements <= INLINE_MAX_BATCH_ELEMENTS:
            return True
        return idle and cost < self._idle_limit_s and elements < _LARGE_ELEMENTS

    def note_run(self, rows: int, elapsed: float, cpu: float) -> None:
        """Update the inline estimates after a run of ``rows`` rows that took ``elapsed``
        seconds of wall time; ``cpu`` is the thread's CPU time read before a small run.

        The thread's CPU time is a system call (~0.6 µs here): read again after
        one small run in _MEASURE_EVERY, every run of the probation, and any run
        whose wall time reached the limit (its CPU time may have too; a run under
        it in wall time is under it in CPU time as well).
        """
        if rows <= INLINE_MAX_ROWS:
            self._small_seen += 1
            if (
                elapsed >= self._inline_limit_s
                or self.small_runs < _INLINE_PROBATION
                or not self._small_seen % _MEASURE_EVERY
            ):
                self._note_small_run(time.thread_time() - cpu)
        else:
            self.row_cost_s = (
                elapsed / rows
                if self.row_cost_s == float("inf")
                else _nudge(self.row_cost_s, elapsed / rows)
            )

    def _note_small_run(self, elapsed: float) -> None:
        self.small_run_s = elapsed if self.small_runs == 0 else _nudge(self.small_run_s, elapsed)
        self.small_runs += 1

    def warm_up(self, feeds: dict[str, np.ndarray], batch_rows: int) -> None:
        """Run ``feeds`` (one row) ``_INLINE_PROBATION`` times, then a batch of ``batch_rows``.

        onnxruntime initialises lazily (allocations, kernel choice per shape),
        so without this the first callers of a new version pay for it. The
        one-row runs also serve as the inline probation (their fastest run is
        the estimate: a run slowed by a busy machine does not count), so the
        first small request may already run on the event loop. Nothing is
        recorded in the metrics.
        """
        times = []
        for _ in range(_INLINE_PROBATION):
            started = time.perf_counter()
            self.session.run(self.all_outputs, feeds)
            times.append(time.perf_counter() - started)
        self.small_run_s, self.small_runs = min(times), len(times)
        self.warm_feeds = feeds
        if batch_rows > INLINE_MAX_ROWS and self.plan.batchable:
            batch = {k: np.repeat(v, batch_rows, axis=0) for k, v in feeds.items()}
            times = []
            for _ in range(2):
                started = time.perf_counter()
                self.session.run(self.all_outputs, batch)
                times.append(time.perf_counter() - started)
            self.row_cost_s = min(times) / batch_rows

    def run(
        self,
        feeds: dict[str, np.ndarray],
        run_options: Any = None,
        queued_at: float | None = None,
        *,
        record: bool = True,
        on_loop: bool = False,
        timing: RequestTiming | None = None,
    ) -> list[np.ndarray]:
        """Run every served output (blocking; from the thread pool, or ``on_loop``).

        Records the batch size and compute time (and, given ``queued_at``, the
        wait since then) in the metrics; ``record=False`` for warm-up runs.
        A small run's cost for the inline estimate is the calling thread's
        CPU time: its wall time also counts waiting for the GIL (up to the
        interpreter's 5 ms switch interval when another thread holds it) and
        for a core, which under concurrent load pushed every estimate past the
        limit and kept versions off the loop. (A model that spreads one small
        run over onnxruntime's intra-op threads is undercounted; ``on_loop``
        only says where it ran.)
        """
        if not record:
            return self.session.run(self.all_outputs, feeds, run_options)  # type: ignore[no-any-return]
        rows = next(iter(feeds.values())).shape[0] if feeds else 0
        small = rows <= INLINE_MAX_ROWS
        cpu = time.thread_time() if small else 0.0
        started = time.perf_counter()
        outs: list[np.ndarray] = self.session_run(self.all_outputs, feeds, run_options)
        elapsed = time.perf_counter() - started
        if timing is not None:
            timing.started, timing.ended = started, started + elapsed
        self.note_run(rows, elapsed, cpu)
        series = self.series
        series.batch_rows.observe(rows)
        series.compute.observe(elapsed)
        waited = None if queued_at is None else started - queued_at
        if waited is not None:
            series.queue.observe(waited)
        if self.stats is not None:
            self.stats.record_execution(rows, elapsed, waited)
        # Native Predict, PredictStream and OIP all run here: one deque append.
        if self.drift is not None:
            self.drift.observe(feeds)
        return outs


@dataclass
class _Entry:
    """Load state of one (model, version) in this process."""

    state: str = "unloaded"  # unloaded | loading | ready | failed
    error: str = ""
    failed_at: float = 0.0
    loaded: LoadedVersion | None = None
    loading: asyncio.Future[LoadedVersion] | None = None


def _direct_run(session: Any, provider: str) -> Any:
    """The C++ ``run`` of a CPU ``onnxruntime.InferenceSession``, else its ``run``.

    ``InferenceSession.run`` is Python around the C++ call: it checks that
    every input is fed (the plan checked that already), that no OrtValue
    belongs to another session (feeds here are numpy arrays), that WebGPU
    graph capture is off (it is never on here), and on an execution-provider
    failure falls back to the CPU provider, which a CPU session does not
    need. Five Python frames per run (~4 µs in a loop, more in the server);
    a CUDA session keeps the wrapper for its fallback. Anything that is not
    an ``InferenceSession`` (a test's wrapper) or has no ``_sess`` (another
    onnxruntime version) keeps ``run``.
    """
    import onnxruntime as ort

    inner = getattr(session, "_sess", None)
    if (
        provider == providers.CPU
        and isinstance(session, ort.InferenceSession)
        and callable(getattr(inner, "run", None))
    ):
        return inner.run  # type: ignore[union-attr]
    return session.run


def _targets(info: ModelInfo) -> set[int]:
    """Versions a model's callers reach without a number: aliased ones and the latest."""
    return {*info.aliases.values(), info.latest.version}


def _target_map(info: ModelInfo) -> dict[str, int]:
    """Target (an alias, or ``LATEST``) -> the version the registry points it at."""
    return {LATEST: info.latest.version, **info.aliases}


def _signature(info: ModelInfo) -> tuple[Any, ...]:
    return (
        tuple((v.version, v.sha256) for v in info.versions),
        tuple(sorted(info.aliases.items())),
    )


def _clean(msg: str) -> str:
    """A client-facing load error: first line, no paths, bounded length."""
    first = (msg or "").strip().splitlines()[0] if (msg or "").strip() else "unknown error"
    first = _ORT_WHERE.sub("", _ORT_PREFIX.sub("", first))
    return _PATHISH.sub("<path>", first)[:300]


class ModelManager:
    """Serves predictions from the registry's versions (see the module docstring)."""

    def __init__(self, settings: Settings, registry: ModelStore) -> None:
        self.settings = settings
        self.registry = registry
        choice = providers.choose_provider(settings)
        #: The execution provider in use ("CUDAExecutionProvider" or "CPUExecutionProvider").
        self.provider = choice.provider
        self.provider_reason = choice.reason
        self._options: Any = None
        self._models: dict[str, ModelInfo] = {}
        #: name -> target (alias or LATEST) -> the version its callers get here:
        #: the registry's, except for held targets (see the module docstring).
        self._served: dict[str, dict[str, int]] = {}
        #: name -> held target -> the registry's version for it (which failed to load).
        self._held: dict[str, dict[str, int]] = {}
        self._entries: dict[tuple[str, int], _Entry] = {}
        self._cache: OrderedDict[tuple[str, int], LoadedVersion] = OrderedDict()
        self._stats: dict[tuple[str, int], VersionStats] = {}
        #: The compiled request paths callers used (serving/fastlane.py), by the
        #: reference as the API spells it. Emptied by every change of the view or
        #: of the session cache (``_changed``): a lane never outlives what it resolved.
        self.lanes: dict[Any, Any] = {}
        #: Predictions of the general path in flight (the lanes' never await, so
        #: they are never in flight while another runs): see LoadedVersion.runs_inline.
        self._predicting = 0
        workers = max(2, providers.usable_cores())
        self._infer = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer")
        self._loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="model-load")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._model_locks: dict[str, asyncio.Lock] = {}
        self._pending: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        #: Served-input profiles per version (serving/drift.py).
        self.drift = DriftMonitor(
            enabled=settings.drift_enabled,
            window_s=settings.drift_window_s,
            on_psi=metrics.set_feature_drift,
        )

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Read the registry, subscribe to changes, eager-load, start the re-read loop."""
        self._loop = asyncio.get_running_loop()
        self.drift.start()
        infos = await asyncio.to_thread(self.registry.list_models)
        self._models = {i.name: i for i in infos if i.versions}
        self._served = {n: _target_map(i) for n, i in self._models.items()}
        self._changed()
        self.registry.add_listener(self._on_change)
        if self.settings.eager_load:
            wanted = _within_budget(
                [
                    meta
                    for i in self._models.values()
                    for v in sorted(_targets(i))
                    if (meta := _pick(i, v, None)) is not None
                ],
                self.settings.session_cache_size,
                int(self.settings.session_cache_mb * 1024 * 1024),
            )
            await asyncio.gather(*(self._load_quietly(n, v) for n, v in wanted))
        self._refresh_task = self._loop.create_task(self._refresh_loop())
        log.info(
            "serving on %s",
            self.provider,
            extra={"models": len(self._models), "loaded": len(self._cache)},
        )

    async def close(self) -> None:
        """Stop the re-read loop and release every session."""
        self._closed = True
        self.drift.close()
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
        for task in list(self._tasks):
            task.cancel()
        self._cache.clear()
        self._entries.clear()
        self._changed()
        metrics.set_loaded_sessions(0, 0)
        self._infer.shutdown(wait=False, cancel_futures=True)
        self._loader.shutdown(wait=False, cancel_futures=True)

    # --- status -------------------------------------------------------------

    def version_status(self, name: str, version: int) -> tuple[str, str, str]:
        """(load_state, load_error, execution_provider) of a version in this process."""
        entry = self._entries.get((name, version))
        if entry is None:
            return "unloaded", "", ""
        if entry.state == "ready" and entry.loaded is not None:
            return "ready", "", entry.loaded.provider
        return entry.state, entry.error, ""

    def held_targets(self, name: str, version: int) -> list[str]:
        """Targets (aliases, ``latest``) pointing at ``version`` in the registry whose callers
        are still served their previous version here, because ``version`` failed to load."""
        return sorted(k for k, v in self._held.get(name, {}).items() if v == version)

    async def ensure_servable(self, name: str, version: int) -> None:
        """Load ``version`` of ``name`` here unless loaded; ``FailedPrecondition`` (with the
        load error) when it does not load, ``NotFound`` when it does not exist.

        SetAlias calls this before moving an alias, so an alias is only moved onto a
        version this server can serve (unless the caller forces it).
        """
        meta = await self.resolve(name, version)
        try:
            await self.get_loaded(meta)
        except Unavailable as exc:
            raise FailedPrecondition(exc.message) from None

    # --- prediction ---------------------------------------------------------

    async def predict(self, query: PredictQuery, time_limit: float | None = None) -> Prediction:
        """Resolve, load if needed, validate, run and assemble one request.

        ``time_limit`` (seconds) is the caller's remaining deadline: past it the
        work stops (a running inference is terminated) and ``DeadlineExceeded``
        is raised. Cancelling the calling task stops the work the same way.
        """
        if time_limit is not None and time_limit <= 0:
            raise DeadlineExceeded("the deadline passed before the prediction started")
        self._predicting += 1
        try:
            if time_limit is None:
                return await self._predict(query)
            async with asyncio.timeout(time_limit):
                return await self._predict(query)
        except TimeoutError:
            if time_limit is None:  # not the deadline's: someone else's to map
                raise
            log.info(
                "prediction stopped: deadline exceeded",
                extra={"model": query.name, "time_limit_s": round(time_limit, 6)},
            )
            raise DeadlineExceeded(
                f"deadline exceeded after {time_limit:.3f}s while predicting with model"
                f" {quote(query.name)}"
            ) from None
        finally:
            self._predicting -= 1

    async def _predict(self, query: PredictQuery) -> Prediction:
        # The view and the session cache answer almost every request without
        # waiting: their synchronous lookups first, the awaiting ones on a miss
        # (each coroutine level costs on every call; docs/serving.md).
        meta = self._resolve_in_view(query.name, query.version, query.alias)
        if meta is None:
            meta = await self._resolve_in_store(query.name, query.version, query.alias)
        stats = self._stats_for(meta.model_name, meta.version)
        started = time.perf_counter()
        try:
            lv = self._loaded_now(meta)
            if lv is None:
                lv = await self._load_missing(meta)
            pred = await self._predict_on(lv, query)
        except BaseException:
            # Invalid input, a load failure, a deadline or a cancellation.
            stats.record_request(False, 0, time.perf_counter() - started)
            raise
        stats.record_request(True, pred.rows, time.perf_counter() - started)
        return pred

    async def _predict_on(self, lv: LoadedVersion, query: PredictQuery) -> Prediction:
        plan = lv.plan
        as_names: list[str] | None = None
        if query.output_names:
            names = plan.outputs.resolve(query.output_names, plan.label)
            as_names = list(query.output_names)
        else:
            names = plan.outputs.names(query.outputs, plan.label)
        data = query.data
        max_rows = self.settings.max_predict_rows
        timing = REQUEST_TIMING.get()
        if timing is not None:
            timing.model, timing.version = lv.meta.model_name, lv.meta.version
        if _elements(data) >= _LARGE_ELEMENTS:
            # Large: validate, convert and run in one trip to the thread pool
            # (each trip costs a thread wake-up and an event-loop wake-up).
            if timing is not None:
                timing.dispatched = time.perf_counter()
            rows, outs = await self._run(lv, None, data, timing)
            if rows == 0:
                return plan.assemble(names, plan.empty_outputs(names), lv.provider, 0, as_names)
        else:
            feeds, rows = plan.feeds(data, max_rows)
            if rows == 0:
                return plan.assemble(names, plan.empty_outputs(names), lv.provider, 0, as_names)
            if timing is not None:
                timing.dispatched = time.perf_counter()
            if lv.inline_ok(feeds, rows, idle=self._predicting == 1):
                # Cheaper than the hop to the thread pool, or the only prediction in
                # flight (see LoadedVersion.runs_inline).
                outs = lv.run(feeds, queued_at=time.perf_counter(), on_loop=True, timing=timing)
                lv.series.inline_runs.inc()
                if timing is not None:
                    timing.inline = True
            elif lv.batcher is not None and rows < lv.batcher.max_rows:
                outs = await lv.batcher.submit(feeds, rows, timing)
            else:
                _, outs = await self._run(lv, feeds, timing=timing)
        if timing is not None:
            timing.rows, timing.done = rows, time.perf_counter()
        lv.series.rows.inc(rows)
        if names != lv.all_outputs:  # a subset, or another order
            by_name = dict(zip(lv.all_outputs, outs, strict=True))
            outs = [by_name[n] for n in names]
        return plan.assemble(names, outs, lv.provider, rows, as_names)

    async def _run(
        self,
        lv: LoadedVersion,
        feeds: dict[str, np.ndarray] | None,
        data: TensorInput | TensorsInput | RowsInput | None = None,
        timing: RequestTiming | None = None,
    ) -> tuple[int, list[np.ndarray]]:
        """(rows, outputs) of one run in the thread pool: of ``feeds``, or of ``data``
        validated and converted there first (``rows == 0``: nothing was run)."""
        import onnxruntime as ort

        run_options = ort.RunOptions()
        loop = asyncio.get_running_loop()
        max_rows = self.settings.max_predict_rows

        def work(queued_at: float) -> tuple[int, list[np.ndarray]]:
            if feeds is not None:
                rows = len(next(iter(feeds.values())))
                return rows, lv.run(feeds, run_options, queued_at, timing=timing)
            assert data is not None
            checked, rows = lv.plan.feeds(data, max_rows)
            if rows == 0:
                return 0, []
            return rows, lv.run(checked, run_options, queued_at, timing=timing)

        try:
            return await loop.run_in_executor(self._infer, work, time.perf_counter())
        except asyncio.CancelledError:
            # The caller went away or its deadline passed: stop the inference.
            run_options.terminate = True
            log.info("prediction stopped: call cancelled", extra={"model": lv.meta.model_name})
            raise

    # --- resolution ---------------------------------------------------------

    async def resolve(
        self, name: str, version: int | None = None, alias: str | None = None
    ) -> VersionMeta:
        """The version a request names, from the in-memory view (the store when unknown)."""
        meta = self._resolve_in_view(name, version, alias)
        if meta is not None:
            return meta
        return await self._resolve_in_store(name, version, alias)

    async def _resolve_in_store(
        self, name: str, version: int | None, alias: str | None
    ) -> VersionMeta:
        """``resolve`` for what the view does not know: maybe created by another
        process since the last re-read."""
        meta = await asyncio.to_thread(self.registry.resolve, name, version, alias)
        self._schedule_refresh(name)
        return meta

    def _resolve_in_view(
        self, name: str, version: int | None, alias: str | None
    ) -> VersionMeta | None:
        """``resolve`` from the in-memory view alone (None: ask the store)."""
        info = self._models.get(name)
        if info is None:
            return None
        if version is None:
            # An alias or the latest: the version its callers get here (held targets
            # keep their previous version while the new one fails to load).
            served = self._served.get(name, {}).get(alias or LATEST)
            meta = _pick(info, served, None) if served is not None else None
            if meta is None:
                meta = _pick(info, None, alias)
            return meta
        return _pick(info, version, alias)

    # --- loading ------------------------------------------------------------

    async def get_loaded(self, meta: VersionMeta) -> LoadedVersion:
        """The loaded session of ``meta``, loading it first when needed."""
        lv = self._loaded_now(meta)
        if lv is not None:
            return lv
        return await self._load_missing(meta)

    async def _load_missing(self, meta: VersionMeta) -> LoadedVersion:
        """``get_loaded`` for a version not loaded now: load it, unless it failed
        within ``FAILED_RETRY_S`` (Unavailable with that failure)."""
        key = (meta.model_name, meta.version)
        entry = self._entries.setdefault(key, _Entry())
        if entry.state == "failed" and time.monotonic() - entry.failed_at < FAILED_RETRY_S:
            raise Unavailable(entry.error)
        return await self._load(meta)

    def _loaded_now(self, meta: VersionMeta) -> LoadedVersion | None:
        """The loaded session of ``meta`` when it is loaded (marked recently used)."""
        key = (meta.model_name, meta.version)
        lv = self._cache.get(key)
        if lv is not None and lv.meta.sha256 == meta.sha256:
            self._cache.move_to_end(key)
            return lv
        return None

    async def _load(self, meta: VersionMeta) -> LoadedVersion:
        key = (meta.model_name, meta.version)
        entry = self._entries.setdefault(key, _Entry())
        if entry.loading is not None and not entry.loading.done():
            return await asyncio.shield(entry.loading)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[LoadedVersion] = loop.create_future()
        entry.loading = fut
        entry.state = "loading"
        started = time.perf_counter()
        try:
            lv = await loop.run_in_executor(self._loader, self._load_sync, meta)
        except Exception as exc:
            if isinstance(exc, HighPeaksError):
                reason = exc.message  # ours: the store's (sha256, unreadable) or _load_sync's
            else:
                log.warning(
                    "loading model %s version %d failed",
                    meta.model_name,
                    meta.version,
                    extra={"detail": f"{type(exc).__name__}: {_clean(str(exc))}"},
                )
                reason = (
                    f"model {meta.model_name!r} version {meta.version} failed to load:"
                    f" {loadcheck.explain(exc)}"
                )
            entry.state, entry.error, entry.failed_at = "failed", reason, time.monotonic()
            entry.loaded = None
            metrics.record_model_load(meta.model_name, time.perf_counter() - started, ok=False)
            log.warning("load failed: %s", reason)
            error = Unavailable(reason)
            fut.set_exception(error)
            fut.exception()  # retrieved: waiters get it through shield()
            raise error from None
        lv.stats = self._stats_for(meta.model_name, meta.version)
        if lv.warm_feeds is not None and lv.inline_ok(lv.warm_feeds, 1):
            # Small requests will run here, on the loop's thread: onnxruntime's first
            # run on a thread sets up per-thread state, so do it now (cheaper than
            # the limit, as the warm-up measured), not in the first caller's request.
            with contextlib.suppress(Exception):
                lv.session.run(lv.all_outputs, lv.warm_feeds)
        if self.settings.batching and lv.plan.batchable:
            lv.batcher = Batcher(
                lv.run,
                self._infer,
                self.settings.max_batch_size,
                self.settings.max_batch_delay_us / 1e6,
                max_inflight=max(1, providers.usable_cores()),
                on_wait=functools.partial(_record_wait, meta.model_name, lv.stats),
            )
        entry.state, entry.error, entry.loaded = "ready", "", lv
        self._cache[key] = lv
        self._cache.move_to_end(key)
        self._changed()
        self._evict()
        metrics.record_model_load(meta.model_name, time.perf_counter() - started, ok=True)
        self._report_loaded()
        fut.set_result(lv)
        log.info(
            "loaded model %s version %d on %s",
            meta.model_name,
            meta.version,
            lv.provider,
            extra={"ms": round((time.perf_counter() - started) * 1000, 1)},
        )
        return lv

    async def _load_quietly(self, name: str, version: int) -> None:
        info = self._models.get(name)
        meta = _pick(info, version, None) if info else None
        if meta is None:
            return
        with contextlib.suppress(HighPeaksError):
            await self.get_loaded(meta)

    def _load_sync(self, meta: VersionMeta) -> LoadedVersion:
        data = self.registry.read_model(meta.model_name, meta.version)
        if self._options is None:
            self._options = providers.session_options(self.settings)
        label = f"model {meta.model_name!r} version {meta.version}"
        try:
            session, plan = loadcheck.open_session(
                data, meta, self._options, providers.provider_list(self.provider)
            )
        except ValueError as exc:  # InputPlan.build: the graph does not fit the metadata
            raise Unavailable(f"{label} failed to load: {_clean(str(exc))}") from None
        except Exception as exc:
            # onnxruntime's text may carry its source paths and internals: the log
            # gets it, callers get our words.
            log.warning(
                "onnxruntime could not load %s",
                label,
                extra={"detail": f"{type(exc).__name__}: {str(exc)[:4000]}"},
            )
            raise Unavailable(f"{label} failed to load: {loadcheck.explain(exc, data)}") from None
        settings = self.settings
        # A batching delay asks requests to wait for company and merge: no inline runs then.
        merging = settings.batching and plan.batchable and settings.max_batch_delay_us > 0
        lv = LoadedVersion(
            meta,
            session,
            plan,
            session.get_providers()[0],
            inline_limit_s=0.0 if merging else settings.inline_inference_us / 1e6,
            idle_limit_s=0.0 if merging else settings.inline_when_idle_us / 1e6,
        )
        lv.drift = self._track_drift(meta)
        if self.settings.warmup:
            try:
                lv.warm_up(plan.warmup_feeds(), settings.max_batch_size)
            except Exception as exc:
                # A model may reject zeros (e.g. a fixed vocabulary); real
                # requests will tell. The session itself loaded fine.
                log.warning(
                    "warm-up of model %s version %d failed: %s",
                    meta.model_name,
                    meta.version,
                    _clean(str(exc)),
                )
        return lv

    def _track_drift(self, meta: VersionMeta) -> VersionDrift | None:
        """The served profile of a version with a training profile (None otherwise)."""
        if not self.drift.enabled or not any(a.name == PROFILE_ARTIFACT for a in meta.artifacts):
            return None
        columns = feed_columns(
            [(f.name, f.type) for f in meta.features], [(t.name, t.shape) for t in meta.inputs]
        )
        if columns is None:
            return None
        try:
            raw = self.registry.read_artifact(meta.model_name, meta.version, PROFILE_ARTIFACT)
            profile = TrainingProfile.from_json(raw)
        except Exception as exc:
            # Drift is advisory: a missing or damaged profile never stops serving.
            log.warning(
                "no drift tracking for model %s version %d: %s",
                meta.model_name,
                meta.version,
                getattr(exc, "message", str(exc))[:300],
            )
            return None
        if len(profile.features) != len(columns):
            return None
        return self.drift.track(meta.model_name, meta.version, profile, columns)

    def drift_report(self, meta: VersionMeta) -> DriftReport:
        """The drift of a version's served inputs (NotFound without a training profile)."""
        if not any(a.name == PROFILE_ARTIFACT for a in meta.artifacts):
            raise NotFound(
                f"model {meta.model_name!r} version {meta.version} has no training profile"
                " (imported versions and versions trained before profiles have none)"
            )
        vd = self.drift.get(meta.model_name, meta.version)
        if vd is None:
            # Not loaded (or drift off) here: the training side alone, no rows seen.
            raw = self.registry.read_artifact(meta.model_name, meta.version, PROFILE_ARTIFACT)
            vd = VersionDrift(
                meta.model_name,
                meta.version,
                TrainingProfile.from_json(raw),
                tuple(("", 0) for _ in meta.features),
                self.drift.window_s,
            )
        return vd.report()

    def _loaded_bytes(self) -> int:
        return sum(lv.meta.size_bytes for lv in self._cache.values())

    def _report_loaded(self) -> None:
        metrics.set_loaded_sessions(len(self._cache), self._loaded_bytes())

    def _evict(self) -> None:
        """Unload least recently used versions past either bound (never the newest)."""
        limit = int(self.settings.session_cache_mb * 1024 * 1024)
        while len(self._cache) > self.settings.session_cache_size or (
            limit and len(self._cache) > 1 and self._loaded_bytes() > limit
        ):
            key, _lv = self._cache.popitem(last=False)
            self._unload(key)
        if limit and self._loaded_bytes() > limit:
            newest = next(reversed(self._cache.values()))
            log.warning(
                "model %s version %d alone is larger than session_cache_mb",
                newest.meta.model_name,
                newest.meta.version,
                extra={"bytes": newest.meta.size_bytes, "limit_bytes": limit},
            )

    def _changed(self) -> None:
        """The view or the session cache changed: forget every lane (see ``lanes``)."""
        self.lanes.clear()

    def _unload(self, key: tuple[str, int]) -> None:
        self._cache.pop(key, None)
        self._changed()
        entry = self._entries.get(key)
        if entry is not None and entry.state == "ready":
            entry.state, entry.loaded = "unloaded", None
            log.info("unloaded model %s version %d", *key)
        self._report_loaded()

    # --- repository, readiness and statistics (OIP) --------------------------

    def _stats_for(self, name: str, version: int) -> VersionStats:
        key = (name, version)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = VersionStats(name, version)
        return stats

    async def _info(self, name: str) -> ModelInfo:
        """A model's versions and aliases: the view, else the store (NotFound when unknown)."""
        info = self._models.get(name)
        if info is not None:
            return info
        info = await asyncio.to_thread(self.registry.get_model, name)
        if not info.versions:
            raise NotFound(f"model {name!r} not found")
        self._schedule_refresh(name)
        return info

    async def model_ready(
        self, name: str, version: int | None = None, alias: str | None = None
    ) -> bool:
        """Whether the version named is loaded and ready here (False when it does not exist)."""
        try:
            meta = await self.resolve(name, version, alias)
        except (NotFound, InvalidArgument):  # no such model (or not even a valid name)
            return False
        lv = self._cache.get((meta.model_name, meta.version))
        return lv is not None and lv.meta.sha256 == meta.sha256

    async def describe(
        self, name: str, version: int | None = None, alias: str | None = None
    ) -> tuple[ModelInfo, VersionMeta]:
        """The model (all its versions) and the version named (latest by default)."""
        meta = await self.resolve(name, version, alias)
        return await self._info(name), meta

    async def repository_index(self) -> list[VersionState]:
        """Every version in the store with its load state here, by model then version."""
        infos = await asyncio.to_thread(self.registry.list_models)
        out = []
        for info in sorted(infos, key=lambda i: i.name):
            for meta in info.versions:
                state, error, _provider = self.version_status(info.name, meta.version)
                out.append(VersionState(info.name, meta.version, state, error))
        return out

    async def load_model(self, name: str) -> list[int]:
        """Load the versions callers reach without a number (latest, aliased); their numbers.

        An explicit load retries a version that failed recently at once. Raises
        ``NotFound`` for an unknown model and ``Unavailable`` (with the reason)
        when a version does not load.
        """
        info = await self._info(name)
        wanted = sorted(_targets(info))
        for v in wanted:
            entry = self._entries.get((name, v))
            if entry is not None and entry.state == "failed":
                entry.failed_at = 0.0
        for v in wanted:
            meta = _pick(info, v, None)
            if meta is not None:
                await self.get_loaded(meta)
        if name in self._held:
            await self._refresh_model(name)  # they load now: switch held targets over
        return wanted

    async def unload_model(self, name: str) -> list[int]:
        """Release every loaded version of ``name`` from memory (not from disk); their numbers.

        Requests in flight finish on the sessions they hold; a later request
        loads its version again, as after an eviction from the cache. A
        failed version's error is forgotten, so the next request retries it.
        """
        await self._info(name)  # NotFound for an unknown model
        released = []
        for key in [k for k in self._entries if k[0] == name]:
            entry = self._entries[key]
            if entry.state == "ready":
                released.append(key[1])
                self._unload(key)
            elif entry.state == "failed":
                entry.state, entry.error, entry.failed_at = "unloaded", "", 0.0
        return sorted(released)

    async def statistics(
        self, name: str | None = None, version: int | None = None, alias: str | None = None
    ) -> list[StatsSnapshot]:
        """Statistics of one version, of every version of ``name`` (no version or alias
        given), or of every version of every model (no name)."""
        if name is None:
            infos = await asyncio.to_thread(self.registry.list_models)
            keys = [
                (i.name, m.version) for i in sorted(infos, key=lambda i: i.name) for m in i.versions
            ]
        elif version is None and alias is None:
            info = await self._info(name)
            keys = [(name, m.version) for m in info.versions]
        else:
            meta = await self.resolve(name, version, alias)
            keys = [(meta.model_name, meta.version)]
        out = []
        for key in keys:
            stats = self._stats.get(key)
            out.append(stats.snapshot() if stats is not None else StatsSnapshot(*key))
        return out

    # --- change tracking ----------------------------------------------------

    def _on_change(self, name: str) -> None:
        """Registry listener: may be called from any thread."""
        loop = self._loop
        if loop is None or self._closed or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._schedule_refresh, name)

    def _schedule_refresh(self, name: str) -> None:
        if self._closed or name in self._pending:
            return
        self._pending.add(name)
        task = asyncio.get_running_loop().create_task(self._refresh_model(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_model(self, name: str, info: ModelInfo | None = None) -> None:
        lock = self._model_locks.setdefault(name, asyncio.Lock())
        async with lock:
            self._pending.discard(name)
            if info is None:
                try:
                    info = await asyncio.to_thread(self.registry.get_model, name)
                except NotFound:
                    info = None
            old = self._models.get(name)
            if info is None or not info.versions:
                self._models.pop(name, None)
                self._served.pop(name, None)
                self._changed()
                if self._held.pop(name, None):
                    metrics.set_targets_held(name, 0)
                for key in [k for k in self._entries if k[0] == name]:
                    self._unload(key)
                    self._entries.pop(key, None)
                for key in [k for k in self._stats if k[0] == name]:
                    del self._stats[key]
                return
            held_before = self._held.get(name, {})
            if old is not None and _signature(old) == _signature(info) and not held_before:
                return
            wanted = _target_map(info)
            served_before = self._served.get(name, {})
            present = {v.version: v for v in info.versions}
            had_loaded = any(k[0] == name for k in self._cache)
            # 1. load what the new state points at (so no caller waits for it) ...
            failed: set[int] = set()
            if self.settings.eager_load or had_loaded:
                for v in sorted(set(wanted.values())):
                    try:
                        await self.get_loaded(present[v])
                    except HighPeaksError:
                        failed.add(v)
            # 2. ... then switch, except targets whose new version failed to load:
            # their callers keep the version they had (when it still exists and has
            # not failed itself) until the new one loads (retried every FAILED_RETRY_S).
            served: dict[str, int] = {}
            held: dict[str, int] = {}
            for target, v in wanted.items():
                before = served_before.get(target)
                if (
                    v in failed
                    and before is not None
                    and before != v
                    and before in present
                    and self.version_status(name, before)[0] != "failed"
                ):
                    served[target], held[target] = before, v
                else:
                    served[target] = v
            self._models[name] = info
            self._served[name] = served
            self._changed()
            if held:
                self._held[name] = held
            else:
                self._held.pop(name, None)
            if held != held_before:
                metrics.set_targets_held(name, len(held))
                self._log_holds(name, served, held, held_before)
            # 3. ... then unload what nothing points at any more (or what is gone).
            old_served = set(served_before.values())
            new_served = set(served.values())
            for key in [k for k in list(self._entries) if k[0] == name]:
                v = key[1]
                if v not in present:
                    self._unload(key)
                    self._entries.pop(key, None)
                    self._stats.pop(key, None)
                elif v in old_served and v not in new_served:
                    self._unload(key)
            if old is None or _signature(old) != _signature(info):
                log.info(
                    "model %s changed",
                    name,
                    extra={"latest": info.latest.version, "aliases": dict(info.aliases)},
                )

    def _log_holds(
        self, name: str, served: dict[str, int], held: dict[str, int], before: dict[str, int]
    ) -> None:
        for key, v in sorted(held.items()):
            if before.get(key) != v:
                _state, error, _provider = self.version_status(name, v)
                log.error(
                    "model %s: %s now points at version %d, which failed to load; its callers"
                    " keep getting version %d until it loads",
                    name,
                    key,
                    v,
                    served[key],
                    extra={"model": name, "target": key, "error": error},
                )
        for key, v in sorted(before.items()):
            if key not in held and served.get(key) == v:
                log.info("model %s: %s switched to version %d, which loads now", name, key, v)

    async def _refresh_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(REFRESH_INTERVAL_S)
            try:
                infos = await asyncio.to_thread(self.registry.list_models)
            except Exception as exc:
                log.warning("re-reading the model store failed: %s", _clean(str(exc)))
                continue
            seen = {i.name: i for i in infos if i.versions}
            for name, info in seen.items():
                old = self._models.get(name)
                # Held targets are retried here too (their loads every FAILED_RETRY_S).
                if old is None or _signature(old) != _signature(info) or name in self._held:
                    await self._refresh_model(name, info)
            for name in [n for n in self._models if n not in seen]:
                await self._refresh_model(name, None)


def _nudge(estimate: float, measured: float) -> float:
    """``estimate`` moved towards ``measured``: up an eighth of the gap, down a sixteenth.

    A run ten times the inline limit takes a cheap version off the loop at once;
    a lone run a few times the estimate (an interrupt or a cache miss charged to
    it, common on a busy host) does not; cheap runs bring it back over a few.
    """
    if measured >= estimate:
        return estimate + (measured - estimate) / 8
    return estimate + (measured - estimate) / 16


def _within_budget(metas: list[VersionMeta], count: int, limit_bytes: int) -> list[tuple[str, int]]:
    """The first versions of ``metas`` that fit ``count`` versions and ``limit_bytes`` (0: any)."""
    out: list[tuple[str, int]] = []
    total = 0
    for meta in metas:
        if len(out) >= count or (limit_bytes and out and total + meta.size_bytes > limit_bytes):
            break
        out.append((meta.model_name, meta.version))
        total += meta.size_bytes
    return out


def _pick(info: ModelInfo, version: int | None, alias: str | None) -> VersionMeta | None:
    """The version of ``info`` named by number/alias/latest, or None when not in the view."""
    if alias:
        v = info.aliases.get(alias)
        if v is None:
            return None
        version = v
    if version:
        for meta in info.versions:
            if meta.version == version:
                return meta
        return None
    return info.latest


def _record_wait(model: str, stats: VersionStats, seconds: float) -> None:
    """A request's wait for its (batched) execution: in the metrics and the statistics."""
    metrics.record_queue_wait(model, seconds)
    stats.record_queue(seconds)


def _elements(data: TensorInput | TensorsInput | RowsInput) -> int:
    if isinstance(data, TensorsInput):
        return sum(_elements(t) for t in data.tensors.values())
    if isinstance(data, RowsInput):
        return len(data.rows) * 8
    if data.raw:
        return len(data.raw) // 4
    return len(data.values) if data.values is not None else 0


__all__ = [
    "REQUEST_TIMING",
    "LoadedVersion",
    "ModelManager",
    "PredictQuery",
    "RequestTiming",
    "VersionState",
]
