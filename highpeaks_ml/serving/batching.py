"""Dynamic batching: concurrent small requests for one model version share one run.

A ``Batcher`` belongs to one loaded version. ``submit(feeds, rows)`` queues a
request whose feeds have already been validated (so a bad request never
joins a batch) and waits for its own rows of the outputs. A collector task
takes queued requests in arrival order, up to ``max_rows`` rows, waiting at
most ``max_delay_s`` after the first one for others to arrive; it
concatenates their feeds along the rows, runs the model once in the
inference thread pool and hands every caller exactly its slice of every
output (row ``offset .. offset + rows``).

Isolation: a request that is cancelled before its batch starts is dropped
from it; if a merged run fails (or an output does not have one row per input
row), each request of that batch is re-run alone, so only a request that
fails by itself sees an error.

With ``max_delay_s == 0`` nothing ever waits on purpose: a request that finds
a free slot (fewer than ``max_inflight`` runs going) runs at once, alone;
requests that arrive while every slot is busy queue up and are merged into
the next run when a slot frees (opportunistic batching). See
docs/serving.md for the measurements behind the default.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("highpeaks_ml.serving")

RunFn = Callable[..., list[np.ndarray]]


@dataclass
class _Item:
    feeds: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future[list[np.ndarray]]
    queued_at: float = 0.0
    #: The request's RequestTiming (serving/manager.py) when its call is traced.
    timing: Any = None


class Batcher:
    """Merges concurrent requests for one model version into fewer onnxruntime calls."""

    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        max_rows: int,
        max_delay_s: float,
        max_inflight: int = 2,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self._run_fn = run
        #: Called with each request's wait (s) from submit to its batch's start (metrics).
        self._on_wait = on_wait
        self._executor = executor
        self.max_rows = max(1, max_rows)
        self.max_delay_s = max(0.0, max_delay_s)
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._collector: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._max_inflight = max(1, max_inflight)
        self._inflight = 0
        self._slot_free: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Counters for tests and the benchmark: runs made and requests served.
        self.runs = 0
        self.requests = 0

    async def submit(
        self, feeds: dict[str, np.ndarray], rows: int, timing: Any = None
    ) -> list[np.ndarray]:
        """Queue one validated request; return its rows of every output.

        ``timing`` (a traced call's ``RequestTiming``) gets the run's stamps."""
        loop = asyncio.get_running_loop()
        if not self.max_delay_s and not self._queue and self._inflight < self._max_inflight:
            # Opportunistic mode with a free slot: nothing to wait for, run at
            # once (no queueing cost when idle); requests arriving while the
            # slots are busy queue up and are merged when one frees.
            self._inflight += 1
            self.runs += 1
            self.requests += 1
            if self._on_wait is not None:
                self._on_wait(0.0)
            try:
                if timing is None:
                    return await loop.run_in_executor(self._executor, self._run_fn, feeds)
                run = functools.partial(self._run_fn, feeds, timing=timing)
                return await loop.run_in_executor(self._executor, run)
            finally:
                self._release()
        item = _Item(feeds, rows, loop.create_future(), time.perf_counter(), timing)
        self._queue.append(item)
        self._queued_rows += rows
        waiter = self._waiter
        if self._queued_rows >= self.max_rows and waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._collector is None or self._collector.done():
            self._collector = loop.create_task(self._collect())
        return await item.future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            if self._queued_rows < self.max_rows and self.max_delay_s > 0:
                self._waiter = loop.create_future()
                handle = loop.call_later(self.max_delay_s, _wake, self._waiter)
                try:
                    await self._waiter
                finally:
                    handle.cancel()
                    self._waiter = None
            while self._inflight >= self._max_inflight:
                self._slot_free = loop.create_future()
                await self._slot_free
            batch = self._take()
            if not batch:
                continue
            self._inflight += 1
            task = loop.create_task(self._run_batch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        rows = 0
        while self._queue:
            item = self._queue[0]
            if batch and rows + item.rows > self.max_rows:
                break
            self._queue.popleft()
            self._queued_rows -= item.rows
            if item.future.done():  # cancelled while queued: drop it
                continue
            batch.append(item)
            rows += item.rows
        return batch

    def _release(self) -> None:
        self._inflight -= 1
        if self._slot_free is not None and not self._slot_free.done():
            self._slot_free.set_result(None)

    async def _run_batch(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.runs += 1
            self.requests += len(batch)
            if self._on_wait is not None:
                now = time.perf_counter()
                for it in batch:
                    self._on_wait(now - it.queued_at)
            if len(batch) == 1:
                await self._run_alone(batch[0])
                return
            total = sum(it.rows for it in batch)
            try:
                feeds = {
                    name: np.concatenate([it.feeds[name] for it in batch])
                    for name in batch[0].feeds
                }
                started = time.perf_counter()
                outs = await loop.run_in_executor(self._executor, self._run_fn, feeds)
                ended = time.perf_counter()
                for it in batch:
                    if it.timing is not None:
                        it.timing.started, it.timing.ended = started, ended
                if any(o.ndim == 0 or o.shape[0] != total for o in outs):
                    raise ValueError("an output does not have one row per input row")
            except Exception as exc:
                # Never let one request's failure reach the others: re-run alone.
                log.debug(
                    "merged run of %d requests failed (%s); re-running alone", len(batch), exc
                )
                await asyncio.gather(*(self._run_alone(it) for it in batch))
                return
            offset = 0
            for it in batch:
                if not it.future.done():
                    it.future.set_result([o[offset : offset + it.rows] for o in outs])
                offset += it.rows
        finally:
            self._release()

    async def _run_alone(self, item: _Item) -> None:
        if item.future.done():
            return
        loop = asyncio.get_running_loop()
        run = self._run_fn
        if item.timing is not None:
            run = functools.partial(run, timing=item.timing)
        try:
            outs = await loop.run_in_executor(self._executor, run, item.feeds)
        except Exception as exc:
            if not item.future.done():
                item.future.set_exception(exc)
            return
        if not item.future.done():
            item.future.set_result(outs)

    async def close(self) -> None:
        """Wait for the batches already running (new submissions are the caller's concern)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
