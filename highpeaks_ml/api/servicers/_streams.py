"""Answering a request stream in order while working on several requests at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

Req = TypeVar("Req")
Resp = TypeVar("Resp")

#: Requests of one stream being worked on at once. Pipelining lets the
#: stream's requests overlap (and share dynamic batches); the bound keeps one
#: stream from queueing unbounded work: past it the stream is not read.
STREAM_WINDOW = 64


async def pipelined(
    requests: AsyncIterator[Req], answer: Callable[[Req], Coroutine[Any, Any, Resp]]
) -> AsyncGenerator[Resp, None]:
    """``answer(request)`` for each request, yielded in request order.

    Up to ``STREAM_WINDOW`` answers run at once while the stream is read
    ahead. ``answer`` should not raise for a bad request (the streams answer
    errors in-stream); a failed *read* (a malformed message) ends the
    iteration with that error after the answers before it. When the
    consumer stops (the call is cancelled or fails), everything still queued
    or running is cancelled.
    """
    loop = asyncio.get_running_loop()
    window: asyncio.Queue[asyncio.Task[Resp] | None] = asyncio.Queue(STREAM_WINDOW)

    async def read() -> None:
        try:
            async for request in requests:
                await window.put(loop.create_task(answer(request)))
        finally:
            await window.put(None)

    reader = loop.create_task(read())
    try:
        while (task := await window.get()) is not None:
            yield await task
        await reader  # surfaces a failed read (e.g. a malformed message)
    finally:
        reader.cancel()
        while not window.empty():
            pending = window.get_nowait()
            if pending is not None:
                pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
