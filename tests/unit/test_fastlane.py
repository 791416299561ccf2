"""The compiled request path (serving/fastlane.py, api/fastpath.py) against the general path.

A ModelManager with an in-memory store and real skl2onnx exports; the fast
path is called as the servicers call it, with the one thing it reads of a
grpc context (``time_remaining``). The server-level tests (test_predict_api,
test_oip_tritonclient, test_metrics ...) go through it on every raw request.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from highpeaks_ml import metrics
from highpeaks_ml.api import fastpath
from highpeaks_ml.api import oip_messages as msgs
from highpeaks_ml.api.converters import oip as oip_conv
from highpeaks_ml.api.converters import predict as predict_conv
from highpeaks_ml.client import build_request
from highpeaks_ml.errors import InvalidArgument, NotFound
from highpeaks_ml.serving import fastlane
from highpeaks_ml.serving.manager import REQUEST_TIMING, ModelManager, RequestTiming
from tests.conftest import make_settings
from tests.support import serving_models as sm
from tests.support.serving_store import GatedStore, MemoryStore

# A limit no run on any machine misses: these tests are about the rules.
GENEROUS = {"inline_inference_us": 1_000_000}


class Ctx:
    """What the fast path reads of a ``grpc.aio.ServicerContext``."""

    def __init__(self, remaining: float | None = None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def started(store: MemoryStore, tmp_path: Path, **settings: Any) -> ModelManager:
    m = ModelManager(make_settings(tmp_path, **{**GENEROUS, **settings}), store)
    await m.start()
    return m


@contextlib.asynccontextmanager
async def serving(
    store: MemoryStore, tmp_path: Path, **settings: Any
) -> AsyncIterator[ModelManager]:
    """A started ModelManager over ``store``, closed at the end."""
    m = await started(store, tmp_path, **settings)
    try:
        yield m
    finally:
        await m.close()


IRIS = sm.iris_logreg("iris")


@pytest.fixture
def iris_store() -> MemoryStore:
    store = MemoryStore()
    store.publish("iris", IRIS.onnx, IRIS.meta)
    return store


async def until(predicate: Any, limit_s: float = 20.0) -> None:
    end = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def infer_request(name: str, x: np.ndarray, input_name: str, version: str = "") -> Any:
    req = msgs.ModelInferRequest(model_name=name, model_version=version, id="r-1")
    req.inputs.add(name=input_name, datatype=oip_conv.DATATYPE_OF[str(x.dtype)], shape=x.shape)
    req.raw_input_contents.append(x.tobytes())
    return req


async def general_native(m: ModelManager, req: Any) -> Any:
    pred = await m.predict(predict_conv.query_from_proto(req))
    return predict_conv.response_from_prediction(pred, req.id, req.raw_output)


async def general_infer(m: ModelManager, req: Any) -> Any:
    query, raw = oip_conv.query_from_infer(req)
    return oip_conv.infer_response(await m.predict(query), req.id, raw)


def wire(msg: Any) -> bytes:
    return bytes(msg.SerializeToString(deterministic=True))


MODELS = {
    "logreg": lambda: sm.iris_logreg("m"),
    "logreg-float64-input": lambda: sm.iris_logreg("m", dtype="float64"),
    "forest-string-labels": lambda: sm.iris_forest_string_labels("m"),
    "regressor": lambda: sm.linear_regressor("m"),
    "imported": lambda: sm.imported_logreg("m"),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_the_fast_path_answers_exactly_what_the_general_path_answers(kind, tmp_path):
    exp = MODELS[kind]()
    store = MemoryStore()
    store.publish("m", exp.onnx, exp.meta)

    async def main():
        async with serving(store, tmp_path) as m:
            slot = m._cache[("m", 1)].plan.slots[0].name
            for rows in (1, 3, 50):
                x = np.ascontiguousarray(exp.X[:rows], dtype=np.float32)
                for raw_output in (True, False):
                    req = build_request("m", x, raw=True, request_id="r-1")
                    req.raw_output = raw_output
                    expected = await general_native(m, req)  # also accepts the signature
                    fast = fastpath.native(m, req, Ctx())
                    assert fast is not None, "an accepted raw tensor takes the lane"
                    assert wire(fast) == wire(expected)
                ireq = infer_request("m", x, slot)
                expected = await general_infer(m, ireq)
                fast = fastpath.infer(m, ireq, Ctx())
                assert fast is not None
                assert wire(fast) == wire(expected)

    run(main())


def _series(name: str, labels: dict[str, str]) -> float:
    value = metrics.current().registry.get_sample_value(name, labels)
    return value or 0.0


def test_fast_runs_are_counted_like_every_other_run(iris_store, tmp_path):
    mv = {"model": "iris", "version": "1"}
    names = {
        "inline": ("highpeaks_ml_inline_inference_runs_total", mv),
        "rows": ("highpeaks_ml_predicted_rows_total", mv),
        "batches": ("highpeaks_ml_predict_batch_rows_count", mv),
        "batch_rows": ("highpeaks_ml_predict_batch_rows_sum", mv),
        "computes": ("highpeaks_ml_predict_compute_seconds_count", mv),
        "queue": ("highpeaks_ml_predict_queue_seconds_count", {"model": "iris"}),
    }

    async def main():
        async with serving(iris_store, tmp_path) as m:
            req = build_request("iris", IRIS.X[:2].astype(np.float32))
            await general_native(m, req)
            before = {k: _series(*v) for k, v in names.items()}
            (snap_before,) = await m.statistics("iris", 1)
            for _ in range(7):
                assert fastpath.native(m, req, Ctx()) is not None
            after = {k: _series(*v) for k, v in names.items()}
            (snap,) = await m.statistics("iris", 1)
        delta = {k: after[k] - before[k] for k in names}
        assert delta == {
            "inline": 7,
            "rows": 14,
            "batches": 7,
            "batch_rows": 14,
            "computes": 7,
            "queue": 7,
        }
        assert snap.success.count - snap_before.success.count == 7
        assert snap.inference_count - snap_before.inference_count == 14
        assert snap.execution_count - snap_before.execution_count == 7
        assert snap.queue.count - snap_before.queue.count == 7
        assert snap.compute.ns > snap_before.compute.ns
        (two_rows,) = [b for b in snap.batches if b.batch_size == 2]
        assert two_rows.compute.count == 8  # the general run and the 7 fast ones

    run(main())


def test_anything_unusual_goes_to_the_general_path_and_changes_nothing(iris_store, tmp_path):
    x = IRIS.X[:2].astype(np.float32)
    nan = build_request("iris", np.array([[1, 2, math.nan, 4]], np.float32))
    short = build_request("iris", x)
    short.tensor.raw_data = short.tensor.raw_data[:-4]
    both = build_request("iris", x)
    both.tensor.float_values.extend([1.0])
    too_many = build_request("iris", np.zeros((101, 4), np.float32))
    zero_rows = build_request("iris", np.zeros((0, 4), np.float32))
    wide = build_request("iris", np.zeros((1, 5), np.float32))
    unknown = build_request("nope", x)
    bad_version = build_request("iris", x)
    bad_version.model.version = 0
    picked = build_request("iris", x, outputs=("labels",))
    refused = (nan, short, both, too_many, wide)

    async def main():
        async with serving(iris_store, tmp_path, max_predict_rows=100) as m:
            ok = build_request("iris", x)
            await general_native(m, ok)
            assert fastpath.native(m, ok, Ctx()) is not None
            (snap_before,) = await m.statistics("iris", 1)
            for req in (*refused, zero_rows, unknown, bad_version, picked):
                assert fastpath.native(m, req, Ctx()) is None, req
            assert fastpath.native(m, ok, Ctx(remaining=0.0)) is None  # the deadline passed
            token = REQUEST_TIMING.set(RequestTiming())  # a traced call: spans need the stages
            try:
                assert fastpath.native(m, ok, Ctx()) is None
            finally:
                REQUEST_TIMING.reset(token)
            (snap,) = await m.statistics("iris", 1)
            assert snap == snap_before  # nothing counted for the refused

            # ... where the general path refuses them in its own words, as a server
            # that never saw an accepted request would.
            async with serving(iris_store, tmp_path / "fresh", max_predict_rows=100) as fresh:
                for req in refused:
                    with pytest.raises(InvalidArgument) as seen:
                        await general_native(m, req)
                    with pytest.raises(InvalidArgument) as first:
                        await general_native(fresh, req)
                    assert seen.value.message == first.value.message
            with pytest.raises(NotFound):
                await general_native(m, unknown)

    run(main())


def test_a_lane_follows_alias_moves_deletions_and_unloads(iris_store, tmp_path):
    store = iris_store
    store.publish("iris", IRIS.onnx, sm.with_version(IRIS, 2))
    store.set_alias("iris", "prod", 1)
    store.set_alias("iris", "stable", 1)  # keeps v1 loaded when prod moves
    x = IRIS.X[:1].astype(np.float32)
    by_alias = build_request("iris", x, alias="prod")
    v1 = build_request("iris", x, version=1)

    async def main():
        async with serving(store, tmp_path) as m:
            for req in (by_alias, v1):
                await general_native(m, req)
                assert fastpath.native(m, req, Ctx()).model_version == 1
            # Nothing loads or unloads (both versions are loaded and still targets):
            # only the view changes, and the lane must not answer from v1.
            store.set_alias("iris", "prod", 2)
            await until(lambda: m._served["iris"]["prod"] == 2)
            assert {k for k in m._cache} == {("iris", 1), ("iris", 2)}
            assert fastpath.native(m, by_alias, Ctx()) is None  # the lane went with it
            assert (await general_native(m, by_alias)).model_version == 2
            assert fastpath.native(m, by_alias, Ctx()).model_version == 2

            # v1 is no target once stable moves too: unloaded, its lanes gone.
            store.set_alias("iris", "stable", 2)
            await until(lambda: ("iris", 1) not in m._cache)
            assert fastpath.native(m, v1, Ctx()) is None
            await general_native(m, v1)  # loads it again (asked for by number)
            assert fastpath.native(m, v1, Ctx()) is not None
            store.delete_version("iris", 1)
            await until(lambda: all(v.version != 1 for v in m._models["iris"].versions))
            assert fastpath.native(m, v1, Ctx()) is None
            with pytest.raises(NotFound):
                await general_native(m, v1)

            assert await m.unload_model("iris")
            assert fastpath.native(m, by_alias, Ctx()) is None  # not loaded: no lane
            assert not m.lanes

    run(main())


class SlowSession:
    """A real session whose runs take ``delay_s`` of CPU time (busy, not asleep)."""

    def __init__(self, session: Any, delay_s: float) -> None:
        self._session = session
        self.delay_s = delay_s
        self.calls = 0

    def run(self, *args: Any) -> Any:
        self.calls += 1
        end = time.thread_time() + self.delay_s
        while time.thread_time() < end:
            pass
        return self._session.run(*args)


def test_one_slow_run_through_the_lane_takes_the_version_off_the_loop(iris_store, tmp_path):
    req = build_request("iris", IRIS.X[:1].astype(np.float32))

    async def main():
        async with serving(iris_store, tmp_path, inline_inference_us=20_000) as m:
            await general_native(m, req)
            assert fastpath.native(m, req, Ctx()) is not None
            lv = m._cache[("iris", 1)]
            slow = SlowSession(lv.session, delay_s=0.25)  # 10x the limit and more
            lv.session = slow
            assert lv.session_run == slow.run  # follows the session
            assert fastpath.native(m, req, Ctx()) is not None  # ran inline, measured
            assert slow.calls == 1
            assert lv.small_run_s >= 0.02
            assert fastpath.native(m, req, Ctx()) is None  # the thread pool's from now on

    run(main())


def test_cpu_sessions_are_run_without_the_python_wrapper(iris_store, tmp_path):
    async def main():
        async with serving(iris_store, tmp_path) as m:
            lv = m._cache[("iris", 1)]
            assert isinstance(lv.session, ort.InferenceSession)
            assert lv.session_run == lv.session._sess.run
            x = IRIS.X[:3].astype(np.float32)
            direct = lv.session_run(lv.all_outputs, {"input": x}, None)
            wrapped = lv.session.run(lv.all_outputs, {"input": x})
            for a, b in zip(direct, wrapped, strict=True):
                np.testing.assert_array_equal(a, b)

    run(main())


def test_lanes_kept_are_bounded(iris_store, tmp_path):
    async def main():
        async with serving(iris_store, tmp_path) as m:
            # Callers choose the bytes of their references (unknown fields, repeats):
            # many spellings of one reference must not grow the map without bound.
            for i in range(fastlane.MAX_LANES * 3):
                assert fastlane.open_lane(m, f"spelling-{i}", "iris", None, None) is not None
                assert len(m.lanes) <= fastlane.MAX_LANES

    run(main())


def test_the_lane_runs_a_larger_request_only_while_no_other_prediction_is_in_flight(tmp_path):
    store = GatedStore()
    store.publish("iris", IRIS.onnx, IRIS.meta)
    big = build_request("iris", IRIS.X[:100].astype(np.float32))  # over INLINE_MAX_ROWS
    gated = build_request("gated", IRIS.X[:1].astype(np.float32))

    async def main():
        # Small-run inlining off: only the idle rule puts a run on the loop.
        settings = {"inline_inference_us": 0, "inline_when_idle_us": 10_000_000}
        async with serving(store, tmp_path, **settings) as m:
            await general_native(m, big)
            assert fastpath.native(m, big, Ctx()) is not None  # alone: the lane runs it
            store.gate.clear()
            waiting = asyncio.get_running_loop().create_task(general_native(m, gated))
            try:
                await asyncio.sleep(0.05)
                assert not waiting.done()
                assert fastpath.native(m, big, Ctx()) is None  # another in flight: general
            finally:
                store.gate.set()
            with pytest.raises(NotFound):
                await waiting

    run(main())
