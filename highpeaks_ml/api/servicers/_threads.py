"""Creating something that must be released, in a worker thread, safely under cancellation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("highpeaks_ml.api")

T = TypeVar("T")


async def acquire_in_thread(create: Callable[[], T], release: Callable[[T], object]) -> T:
    """``await asyncio.to_thread(create)``, without leaking ``create``'s result.

    Cancelling the awaiting RPC (a client gone, a message over the size
    limit) does not stop the thread: ``create`` still finishes, and what it
    made (an open spool file holding a lock, its staging area) would be lost
    to the caller's ``finally`` and leak until the process exits. Here the
    thread is shielded and, when the caller was cancelled meanwhile,
    ``release`` runs on the result (in a thread) as soon as it exists.
    """
    future = asyncio.ensure_future(asyncio.to_thread(create))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        loop = asyncio.get_running_loop()

        def release_quietly(item: T) -> None:
            try:
                release(item)
            except Exception:
                log.exception("releasing a resource of a cancelled call failed")

        def drop(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                loop.run_in_executor(None, release_quietly, done.result())

        future.add_done_callback(drop)
        raise


async def release_in_thread(release: Callable[[], object]) -> None:
    """``await asyncio.to_thread(release)`` that runs ``release`` even under cancellation.

    Cleanup in a ``finally`` often runs because the RPC is being cancelled
    (grpc cancels the handler when a client goes away or a message breaks a
    limit). A cancellation still pending when the handler reaches
    ``await asyncio.to_thread(...)`` cancels the executor job before a
    thread picks it up, so the cleanup silently never runs. Shielded, it
    always runs to the end; the caller still sees its CancelledError.
    """
    task = asyncio.ensure_future(asyncio.to_thread(release))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_log_failure)  # nobody else will look at the outcome
        raise


def _log_failure(task: asyncio.Future[object]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("cleanup of a cancelled call failed: %r", exc)
