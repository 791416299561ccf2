"""Dynamic batching: exact split-back, isolation of failures, bounds (real iris session)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest

from highpeaks_ml.serving.batching import Batcher
from tests.support import serving_models as sm


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(sm.iris_logreg().onnx, providers=["CPUExecutionProvider"])


@pytest.fixture
def pool():
    with ThreadPoolExecutor(2) as ex:
        yield ex


class Recorder:
    """A run function over a real session that records each call's row count."""

    def __init__(self, session, poison: float | None = None) -> None:
        self.session = session
        self.poison = poison
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, feeds):
        x = feeds["input"]
        with self.lock:
            self.sizes.append(len(x))
        if self.poison is not None and (x == self.poison).any():
            raise RuntimeError("poisoned input")
        return list(self.session.run(["label", "probabilities"], feeds))


def _requests(sizes: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    X = sm.iris_logreg().X
    return [X[rng.integers(0, len(X), n)] for n in sizes]


def test_merged_results_equal_individual_runs(session, pool):
    sizes = [1, 3, 1, 2, 5, 1, 1, 4]
    reqs = _requests(sizes)
    rec = Recorder(session)
    batcher = Batcher(rec, pool, max_rows=64, max_delay_s=0.01)

    async def main():
        return await asyncio.gather(*(batcher.submit({"input": x}, len(x)) for x in reqs))

    results = asyncio.run(main())
    # Everything was queued before the collector ran: one merged run.
    assert rec.sizes == [sum(sizes)]
    assert batcher.runs == 1 and batcher.requests == len(sizes)
    # Split back exactly: each caller's slice is bit for bit its rows of the merged run.
    merged_labels, merged_probs = session.run(
        ["label", "probabilities"], {"input": np.concatenate(reqs)}
    )
    offset = 0
    for x, (labels, probs) in zip(reqs, results, strict=True):
        n = len(x)
        assert len(labels) == n and probs.shape == (n, 3)
        np.testing.assert_array_equal(labels, merged_labels[offset : offset + n])
        np.testing.assert_array_equal(probs, merged_probs[offset : offset + n])
        offset += n
        # Against running the request alone: same labels; probabilities may differ
        # in the last float32 bits, because onnxruntime picks a different matrix
        # kernel for one row than for several (docs/serving.md).
        want_labels, want_probs = session.run(["label", "probabilities"], {"input": x})
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_allclose(probs, want_probs, rtol=0, atol=2e-6)


def test_opportunistic_mode_runs_at_once_when_idle_and_merges_under_load(session, pool):
    sizes = [1, 2, 1, 3, 1]
    rec = Recorder(session)
    batcher = Batcher(rec, pool, max_rows=64, max_delay_s=0.0, max_inflight=1)
    reqs = _requests(sizes)

    async def main():
        return await asyncio.gather(*(batcher.submit({"input": x}, len(x)) for x in reqs))

    results = asyncio.run(main())
    # The first finds the slot free and runs alone; the others queue behind it
    # and share the next run.
    assert rec.sizes == [1, sum(sizes[1:])]
    assert [len(r[0]) for r in results] == sizes


def test_batches_never_exceed_max_rows(session, pool):
    sizes = [3] * 10
    rec = Recorder(session)
    batcher = Batcher(rec, pool, max_rows=7, max_delay_s=0.0)

    async def main():
        return await asyncio.gather(
            *(batcher.submit({"input": x}, len(x)) for x in _requests(sizes))
        )

    results = asyncio.run(main())
    assert all(s <= 7 for s in rec.sizes) and sum(rec.sizes) == 30
    assert [len(r[0]) for r in results] == sizes


def test_delay_collects_late_arrivals(session, pool):
    rec = Recorder(session)
    batcher = Batcher(rec, pool, max_rows=64, max_delay_s=0.05)
    reqs = _requests([1, 1, 1])

    async def main():
        first = asyncio.ensure_future(batcher.submit({"input": reqs[0]}, 1))
        await asyncio.sleep(0)  # the collector starts waiting
        rest = [batcher.submit({"input": x}, 1) for x in reqs[1:]]
        return await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert rec.sizes == [3]


def test_full_batch_does_not_wait_for_the_delay(session, pool):
    rec = Recorder(session)
    # A delay far longer than the test timeout: only a full batch can start it.
    batcher = Batcher(rec, pool, max_rows=4, max_delay_s=600)

    async def main():
        return await asyncio.wait_for(
            asyncio.gather(*(batcher.submit({"input": x}, 2) for x in _requests([2, 2]))), 60
        )

    asyncio.run(main())
    assert rec.sizes == [4]


def test_a_failing_request_does_not_affect_the_others(session, pool):
    reqs = _requests([2, 1, 3, 1])
    poison = np.full((1, 4), 123.0, dtype=np.float32)
    reqs.insert(2, poison)
    rec = Recorder(session, poison=123.0)
    batcher = Batcher(rec, pool, max_rows=64, max_delay_s=0.01)

    async def main():
        return await asyncio.gather(
            *(batcher.submit({"input": x}, len(x)) for x in reqs), return_exceptions=True
        )

    results = asyncio.run(main())
    assert isinstance(results[2], RuntimeError)
    for i, (x, res) in enumerate(zip(reqs, results, strict=True)):
        if i == 2:
            continue
        want = session.run(["label", "probabilities"], {"input": x})
        # Re-run alone after the failed merge: exactly the single-request result.
        np.testing.assert_array_equal(res[0], want[0])
        np.testing.assert_array_equal(res[1], want[1])
    # One merged attempt, then each request alone.
    assert rec.sizes[0] == sum(len(x) for x in reqs) and len(rec.sizes) == 1 + len(reqs)


def test_cancelled_request_is_dropped_from_its_batch(session, pool):
    rec = Recorder(session)
    batcher = Batcher(rec, pool, max_rows=64, max_delay_s=0.05)
    reqs = _requests([1, 5, 1])

    async def main():
        tasks = [asyncio.ensure_future(batcher.submit({"input": x}, len(x))) for x in reqs]
        await asyncio.sleep(0)
        tasks[1].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return done

    done = asyncio.run(main())
    assert isinstance(done[1], asyncio.CancelledError)
    assert rec.sizes == [2]
    assert len(done[0][0]) == 1 and len(done[2][0]) == 1
