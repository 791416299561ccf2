"""Model lifecycle in the server: resolution, session cache, loading, reloads, inference.

``ModelManager`` keeps an in-memory view of the registry (name -> versions
and aliases) so that resolving ``model/version/alias`` costs a dict lookup,
not a disk read. The view is refreshed

- at once for changes made in this process (``registry.add_listener``), and
- every ``REFRESH_INTERVAL_S`` by re-reading the store, for changes made by
  other processes sharing the same home.

A refresh that brings a new latest version or moves an alias first loads the
newly targeted version (when eager loading is on, or the model already had
a version loaded), then switches the view, then unloads versions nothing
points at any more. Requests hold a reference to the loaded version they
resolved, so requests in flight on an unloaded version finish on it.

Sessions live in an LRU cache bounded by ``session_cache_size`` versions;
they load lazily on first use (concurrent first requests share one load)
or at ``start()`` for every aliased version and each model's latest when
``eager_load``. Loading (sha256-checked read, session creation, warm-up
inference) runs in a small thread pool, never on the event loop. A version
that fails to load is marked failed with the reason and answered
``Unavailable`` with it (retried after ``FAILED_RETRY_S``); other versions
keep serving.

Both front doors (the native PredictService and the Open Inference
Protocol) call ``predict``; the OIP's repository and readiness calls use
``model_ready``, ``describe``, ``repository_index``, ``load_model``,
``unload_model`` and ``statistics``. Statistics (``serving/stats.py``) are
counted here, so both front doors contribute to them.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    HighPeaksError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from highpeaks_ml.registry.base import ModelInfo, ModelStore, VersionMeta
from highpeaks_ml.serving import providers
from highpeaks_ml.serving.batching import Batcher
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
#: Small runs measured (in the thread pool) before a version may run inline.
_INLINE_PROBATION = 5

_PATHISH = re.compile(r"(?:/[\w.+-]+){2,}/?")
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*(?:[A-Z_]+\s*:\s*)?")
# onnxruntime's "file.cc:123 namespace::Function(args) " location prefix.
_ORT_WHERE = re.compile(r"^(?:[A-Z_]+\s*:\s*)?\S+\.(?:cc|cpp|h):\d+\s+\S.*?\)\s+")


@dataclass(frozen=True)
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
    ) -> None:
        self.meta = meta
        self.session = session
        self.plan = plan
        self.provider = provider
        self.all_outputs = plan.outputs.names(frozenset(), plan.label)
        self.batcher: Batcher | None = None
        #: Set by the manager once loaded (warm-up runs are not counted).
        self.stats: VersionStats | None = None
        self._inline_limit_s = inline_limit_s
        #: Estimated seconds of one run of at most INLINE_MAX_ROWS rows, and how
        #: many such runs were measured. Updated from every thread without a
        #: lock: a lost update only nudges an estimate.
        self.small_run_s = float("inf")
        self.small_runs = 0

    def inline_ok(self, feeds: dict[str, np.ndarray], rows: int) -> bool:
        """Whether a run of ``feeds`` (``rows`` rows) is cheap enough for the event loop.

        A hop to the inference thread pool costs two thread wake-ups (~130-190
        µs on a small VM; docs/serving.md), often more than the run itself. A
        version qualifies once ``_INLINE_PROBATION`` small runs were measured
        and their estimate is under the ``inline_inference_us`` setting; one
        slow run pulls the estimate up at once, so a version that turns slow
        goes back to the thread pool.
        """
        return (
            rows <= INLINE_MAX_ROWS
            and self.small_runs >= _INLINE_PROBATION
            and self.small_run_s < self._inline_limit_s
            and sum(a.size for a in feeds.values()) <= INLINE_MAX_ELEMENTS
            and all(a.dtype.kind in "biuf" for a in feeds.values())
        )

    def _note_small_run(self, elapsed: float) -> None:
        est = self.small_run_s
        if elapsed >= est or self.small_runs == 0:
            # Up fast: a version must not keep blocking the loop once it turns slow.
            self.small_run_s = elapsed if self.small_runs == 0 else est + (elapsed - est) / 2
        else:
            self.small_run_s = est + (elapsed - est) / 10
        self.small_runs += 1

    def run(
        self,
        feeds: dict[str, np.ndarray],
        run_options: Any = None,
        queued_at: float | None = None,
        *,
        record: bool = True,
    ) -> list[np.ndarray]:
        """Run every served output (blocking; called from the thread pool).

        Records the batch size and compute time (and, given ``queued_at``, the
        wait since then) in the metrics; ``record=False`` for warm-up runs.
        """
        started = time.perf_counter()
        outs = list(self.session.run(self.all_outputs, feeds, run_options))
        if record:
            name, version = self.meta.model_name, self.meta.version
            rows = next(iter(feeds.values())).shape[0] if feeds else 0
            elapsed = time.perf_counter() - started
            if rows <= INLINE_MAX_ROWS:
                self._note_small_run(elapsed)
            metrics.record_inference(name, version, rows, elapsed)
            if self.stats is not None:
                self.stats.record_execution(rows, elapsed)
            if queued_at is not None:
                metrics.record_queue_wait(name, started - queued_at)
                if self.stats is not None:
                    self.stats.record_queue(started - queued_at)
        return outs


@dataclass
class _Entry:
    """Load state of one (model, version) in this process."""

    state: str = "unloaded"  # unloaded | loading | ready | failed
    error: str = ""
    failed_at: float = 0.0
    loaded: LoadedVersion | None = None
    loading: asyncio.Future[LoadedVersion] | None = None


def _targets(info: ModelInfo) -> set[int]:
    """Versions a model's callers reach without a number: aliased ones and the latest."""
    return {*info.aliases.values(), info.latest.version}


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
        self._entries: dict[tuple[str, int], _Entry] = {}
        self._cache: OrderedDict[tuple[str, int], LoadedVersion] = OrderedDict()
        self._stats: dict[tuple[str, int], VersionStats] = {}
        workers = max(2, providers.usable_cores())
        self._infer = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer")
        self._loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="model-load")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._model_locks: dict[str, asyncio.Lock] = {}
        self._pending: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Read the registry, subscribe to changes, eager-load, start the re-read loop."""
        self._loop = asyncio.get_running_loop()
        infos = await asyncio.to_thread(self.registry.list_models)
        self._models = {i.name: i for i in infos if i.versions}
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
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
        for task in list(self._tasks):
            task.cancel()
        self._cache.clear()
        self._entries.clear()
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

    # --- prediction ---------------------------------------------------------

    async def predict(self, query: PredictQuery, time_limit: float | None = None) -> Prediction:
        """Resolve, load if needed, validate, run and assemble one request.

        ``time_limit`` (seconds) is the caller's remaining deadline: past it the
        work stops (a running inference is terminated) and ``DeadlineExceeded``
        is raised. Cancelling the calling task stops the work the same way.
        """
        if time_limit is None:
            return await self._predict(query)
        if time_limit <= 0:
            raise DeadlineExceeded("the deadline passed before the prediction started")
        try:
            async with asyncio.timeout(time_limit):
                return await self._predict(query)
        except TimeoutError:
            log.info(
                "prediction stopped: deadline exceeded",
                extra={"model": query.name, "time_limit_s": round(time_limit, 6)},
            )
            raise DeadlineExceeded(
                f"deadline exceeded after {time_limit:.3f}s while predicting with model"
                f" {query.name!r}"
            ) from None

    async def _predict(self, query: PredictQuery) -> Prediction:
        meta = await self.resolve(query.name, query.version, query.alias)
        stats = self._stats_for(meta.model_name, meta.version)
        started = time.perf_counter()
        try:
            pred = await self._predict_on(meta, query)
        except BaseException:
            # Invalid input, a load failure, a deadline or a cancellation.
            stats.record_request(False, 0, time.perf_counter() - started)
            raise
        stats.record_request(True, pred.rows, time.perf_counter() - started)
        return pred

    async def _predict_on(self, meta: VersionMeta, query: PredictQuery) -> Prediction:
        lv = await self.get_loaded(meta)
        plan = lv.plan
        as_names: list[str] | None = None
        if query.output_names:
            names = plan.outputs.resolve(query.output_names, plan.label)
            as_names = list(query.output_names)
        else:
            names = plan.outputs.names(query.outputs, plan.label)
        data = query.data
        max_rows = self.settings.max_predict_rows
        if _elements(data) >= _LARGE_ELEMENTS:
            # Large: validate, convert and run in one trip to the thread pool
            # (each trip costs a thread wake-up and an event-loop wake-up).
            rows, outs = await self._run(lv, None, data)
            if rows == 0:
                return plan.assemble(names, plan.empty_outputs(names), lv.provider, 0, as_names)
        else:
            feeds, rows = plan.feeds(data, max_rows)
            if rows == 0:
                return plan.assemble(names, plan.empty_outputs(names), lv.provider, 0, as_names)
            if lv.inline_ok(feeds, rows):
                # Cheaper than the hop to the thread pool (see inline_ok).
                outs = lv.run(feeds, queued_at=time.perf_counter())
                metrics.record_inline_run(lv.meta.model_name, lv.meta.version)
            elif lv.batcher is not None and rows < lv.batcher.max_rows:
                outs = await lv.batcher.submit(feeds, rows)
            else:
                _, outs = await self._run(lv, feeds)
        metrics.record_prediction(lv.meta.model_name, lv.meta.version, rows)
        by_name = dict(zip(lv.all_outputs, outs, strict=True))
        return plan.assemble(names, [by_name[n] for n in names], lv.provider, rows, as_names)

    async def _run(
        self,
        lv: LoadedVersion,
        feeds: dict[str, np.ndarray] | None,
        data: TensorInput | TensorsInput | RowsInput | None = None,
    ) -> tuple[int, list[np.ndarray]]:
        """(rows, outputs) of one run in the thread pool: of ``feeds``, or of ``data``
        validated and converted there first (``rows == 0``: nothing was run)."""
        import onnxruntime as ort

        run_options = ort.RunOptions()
        loop = asyncio.get_running_loop()
        max_rows = self.settings.max_predict_rows

        def work(queued_at: float) -> tuple[int, list[np.ndarray]]:
            if feeds is not None:
                return len(next(iter(feeds.values()))), lv.run(feeds, run_options, queued_at)
            assert data is not None
            checked, rows = lv.plan.feeds(data, max_rows)
            if rows == 0:
                return 0, []
            return rows, lv.run(checked, run_options, queued_at)

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
        info = self._models.get(name)
        if info is not None:
            meta = _pick(info, version, alias)
            if meta is not None:
                return meta
        # Not in the view: maybe created by another process since the last re-read.
        meta = await asyncio.to_thread(self.registry.resolve, name, version, alias)
        self._schedule_refresh(name)
        return meta

    # --- loading ------------------------------------------------------------

    async def get_loaded(self, meta: VersionMeta) -> LoadedVersion:
        """The loaded session of ``meta``, loading it first when needed."""
        key = (meta.model_name, meta.version)
        lv = self._cache.get(key)
        if lv is not None and lv.meta.sha256 == meta.sha256:
            self._cache.move_to_end(key)
            return lv
        entry = self._entries.setdefault(key, _Entry())
        if entry.state == "failed" and time.monotonic() - entry.failed_at < FAILED_RETRY_S:
            raise Unavailable(entry.error)
        return await self._load(meta)

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
                reason = exc.message  # the store's words (sha256 mismatch, unreadable)
            else:
                reason = (
                    f"model {meta.model_name!r} version {meta.version} failed to load:"
                    f" {_clean(str(exc))}"
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
        import onnxruntime as ort

        data = self.registry.read_model(meta.model_name, meta.version)
        if self._options is None:
            self._options = providers.session_options(self.settings)
        session = ort.InferenceSession(
            data, self._options, providers=providers.provider_list(self.provider)
        )
        plan = InputPlan.build(
            meta,
            [(i.name, i.type, i.shape) for i in session.get_inputs()],
            [(o.name, o.type, o.shape) for o in session.get_outputs()],
        )
        settings = self.settings
        # A batching delay asks requests to wait for company and merge: no inline runs then.
        merging = settings.batching and plan.batchable and settings.max_batch_delay_us > 0
        lv = LoadedVersion(
            meta,
            session,
            plan,
            session.get_providers()[0],
            inline_limit_s=0.0 if merging else settings.inline_inference_us / 1e6,
        )
        if self.settings.warmup:
            try:
                lv.run(plan.warmup_feeds(), record=False)
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

    def _unload(self, key: tuple[str, int]) -> None:
        self._cache.pop(key, None)
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
                for key in [k for k in self._entries if k[0] == name]:
                    self._unload(key)
                    self._entries.pop(key, None)
                for key in [k for k in self._stats if k[0] == name]:
                    del self._stats[key]
                return
            if old is not None and _signature(old) == _signature(info):
                return
            new_targets = _targets(info)
            had_loaded = any(k[0] == name for k in self._cache)
            # 1. load what the new state points at (so no caller waits for it) ...
            if self.settings.eager_load or had_loaded:
                for v in sorted(new_targets):
                    meta = _pick(info, v, None)
                    if meta is not None:
                        with contextlib.suppress(HighPeaksError):
                            await self.get_loaded(meta)
            # 2. ... then switch ...
            self._models[name] = info
            # 3. ... then unload what nothing points at any more (or what is gone).
            present = {v.version: v for v in info.versions}
            old_targets = _targets(old) if old is not None else set()
            for key in [k for k in list(self._entries) if k[0] == name]:
                v = key[1]
                if v not in present:
                    self._unload(key)
                    self._entries.pop(key, None)
                    self._stats.pop(key, None)
                elif v in old_targets and v not in new_targets:
                    self._unload(key)
            log.info(
                "model %s changed",
                name,
                extra={"latest": info.latest.version, "aliases": dict(info.aliases)},
            )

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
                if old is None or _signature(old) != _signature(info):
                    await self._refresh_model(name, info)
            for name in [n for n in self._models if n not in seen]:
                await self._refresh_model(name, None)


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


__all__ = ["LoadedVersion", "ModelManager", "PredictQuery", "VersionState"]
