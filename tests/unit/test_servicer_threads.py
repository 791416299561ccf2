"""acquire_in_thread / release_in_thread: cleanup that cancellation cannot skip.

The default executor has one worker, kept busy, so the cleanup job waits in
its queue when the handler is cancelled: exactly where a plain
``await asyncio.to_thread(...)`` loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

from highpeaks_ml.api.servicers._threads import acquire_in_thread, release_in_thread


async def _cancel_during_cleanup(shielded: bool) -> bool:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(1))
    busy = threading.Event()
    blocker = loop.run_in_executor(None, busy.wait)
    released = threading.Event()

    async def handler() -> None:
        try:
            raise ValueError("the request stream ended")
        finally:
            if shielded:
                await release_in_thread(released.set)
            else:
                await asyncio.to_thread(released.set)

    task = asyncio.create_task(handler())
    await asyncio.sleep(0)  # the handler now waits for its cleanup job
    task.cancel()  # as grpc does when the call is torn down
    with contextlib.suppress(asyncio.CancelledError, ValueError):
        await task
    busy.set()
    await blocker
    await asyncio.sleep(0.2)
    return released.is_set()


def test_a_plain_to_thread_cleanup_is_lost_when_cancelled():
    # The failure mode the helper exists for (ImportModel leaked its staging area).
    assert asyncio.run(_cancel_during_cleanup(shielded=False)) is False


def test_release_in_thread_runs_although_cancelled():
    assert asyncio.run(_cancel_during_cleanup(shielded=True)) is True


async def _cancel_during_acquire() -> list[str]:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(1))
    events: list[str] = []
    creating = threading.Event()
    proceed = threading.Event()

    def create() -> str:
        creating.set()
        proceed.wait()
        events.append("created")
        return "spool"

    task = asyncio.create_task(acquire_in_thread(create, lambda r: events.append(f"released {r}")))
    for _ in range(500):  # until create() runs in the worker
        if creating.is_set():
            break
        await asyncio.sleep(0.01)
    task.cancel()  # the caller goes away while the staging area is being made
    with contextlib.suppress(asyncio.CancelledError):
        await task
    proceed.set()
    for _ in range(100):
        if "released spool" in events:
            break
        await asyncio.sleep(0.01)
    return events


def test_acquire_in_thread_releases_what_a_cancelled_caller_never_got():
    assert asyncio.run(_cancel_during_acquire()) == ["created", "released spool"]


def test_acquire_in_thread_returns_the_result():
    async def main() -> str:
        return await acquire_in_thread(lambda: "x", lambda r: None)

    assert asyncio.run(main()) == "x"
