"""ModelManager with an in-memory store and real skl2onnx exports (no sockets)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from highpeaks_ml.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from highpeaks_ml.serving import manager as manager_mod
from highpeaks_ml.serving import providers
from highpeaks_ml.serving.inputs import RowsInput, TensorInput
from highpeaks_ml.serving.manager import ModelManager, PredictQuery
from tests.conftest import ROOT, make_settings
from tests.support import serving_models as sm
from tests.support.serving_store import GatedStore, MemoryStore


def run(coro):
    return asyncio.run(coro)


def raw(x: np.ndarray) -> TensorInput:
    return TensorInput(str(x.dtype), x.shape, raw=x.tobytes())


def iris_query(name: str = "iris", n: int = 5, **kw) -> PredictQuery:
    return PredictQuery(name, data=raw(sm.iris_logreg().X[:n]), **kw)


async def started(store: MemoryStore, tmp_path: Path, **settings) -> ModelManager:
    m = ModelManager(make_settings(tmp_path, **settings), store)
    await m.start()
    return m


async def until(predicate, limit_s: float = 20.0) -> None:
    """Wait (polling the loop) until ``predicate()`` holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def unsupported_op_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["input"], ["y"], domain="com.example")],
        "bad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    exp = sm.iris_logreg()
    s.publish("iris", exp.onnx, exp.meta)
    return s


def test_predicts_like_sklearn_and_reports_provider(store, tmp_path):
    async def main():
        m = await started(store, tmp_path)
        try:
            exp = sm.iris_logreg()
            pred = await m.predict(PredictQuery("iris", data=raw(exp.X)))
            assert pred.model_name == "iris" and pred.version == 1
            assert pred.provider == m.provider == "CPUExecutionProvider"
            np.testing.assert_array_equal(pred.labels, exp.estimator.predict(exp.X))
            np.testing.assert_allclose(
                pred.probabilities, exp.estimator.predict_proba(exp.X), atol=1e-5
            )
            assert m.version_status("iris", 1) == ("ready", "", "CPUExecutionProvider")
            assert m.version_status("iris", 7) == ("unloaded", "", "")
        finally:
            await m.close()

    run(main())


def test_eager_load_targets_aliased_and_latest_only(store, tmp_path):
    exp = sm.iris_logreg()
    store.publish("iris", exp.onnx, exp.meta)  # v2
    store.publish("iris", exp.onnx, exp.meta)  # v3 (latest)
    store.set_alias("iris", "production", 1)

    async def main():
        m = await started(store, tmp_path)
        try:
            assert m.version_status("iris", 1)[0] == "ready"
            assert m.version_status("iris", 2)[0] == "unloaded"
            assert m.version_status("iris", 3)[0] == "ready"
        finally:
            await m.close()

    run(main())


def test_lazy_load_on_first_use(store, tmp_path):
    async def main():
        m = await started(store, tmp_path, eager_load=False)
        try:
            assert m.version_status("iris", 1)[0] == "unloaded"
            assert store.reads == 0
            await asyncio.gather(*(m.predict(iris_query()) for _ in range(5)))
            # Concurrent first requests share one load.
            assert store.reads == 1
            assert m.version_status("iris", 1)[0] == "ready"
        finally:
            await m.close()

    run(main())


def test_lru_bound(store, tmp_path):
    exp = sm.iris_logreg()
    for _ in range(2):
        store.publish("iris", exp.onnx, exp.meta)

    async def main():
        m = await started(store, tmp_path, eager_load=False, session_cache_size=2)
        try:
            for v in (1, 2, 3):
                await m.predict(iris_query(version=v))
            assert [m.version_status("iris", v)[0] for v in (1, 2, 3)] == [
                "unloaded",
                "ready",
                "ready",
            ]
            await m.predict(iris_query(version=2))  # 2 becomes most recent
            await m.predict(iris_query(version=1))  # loads 1 again, evicts 3
            assert [m.version_status("iris", v)[0] for v in (1, 2, 3)] == [
                "ready",
                "ready",
                "unloaded",
            ]
            assert store.reads == 4
        finally:
            await m.close()

    run(main())


def test_not_found(store, tmp_path):
    async def main():
        m = await started(store, tmp_path)
        try:
            with pytest.raises(NotFound, match="'nope'"):
                await m.predict(iris_query("nope"))
            with pytest.raises(NotFound, match="version 9"):
                await m.predict(iris_query(version=9))
            with pytest.raises(NotFound, match="alias 'gone'"):
                await m.predict(iris_query(alias="gone"))
        finally:
            await m.close()

    run(main())


@pytest.mark.parametrize("damage", ["tamper", "garbage", "unsupported_op"])
def test_broken_version_is_refused_while_others_serve(store, tmp_path, damage):
    exp = sm.iris_logreg()
    if damage == "tamper":
        store.publish("broken", exp.onnx, exp.meta)
        store.tamper("broken", 1)
        needle = "sha256 mismatch"
    elif damage == "garbage":
        store.put_unchecked("broken", b"\x08\x01garbage", exp.meta)
        needle = "failed to load"
    else:
        store.put_unchecked("broken", unsupported_op_model(), exp.meta)
        needle = "Frobnicate"

    async def main():
        m = await started(store, tmp_path)
        try:
            state, error, _ = m.version_status("broken", 1)
            assert state == "failed" and needle in error
            assert "onnxruntime_src" not in error and ".cc:" not in error  # no internals
            assert "ONNXRuntimeError" not in error and "registered" not in error  # our words
            for _ in range(2):  # sticky: answered from the recorded failure
                with pytest.raises(Unavailable, match=needle):
                    await m.predict(iris_query("broken"))
            pred = await m.predict(iris_query("iris"))
            assert len(pred.labels) == 5
        finally:
            await m.close()

    run(main())


def test_new_version_and_alias_move_are_picked_up(store, tmp_path):
    store.set_alias("iris", "production", 1)
    other = sm.iris_logreg(c=0.01)

    async def main():
        m = await started(store, tmp_path)
        try:
            pinned = await m.get_loaded(await m.resolve("iris", 1))
            store.publish("iris", other.onnx, other.meta)  # v2, latest
            await until(lambda: m._models["iris"].latest.version == 2)
            # Loaded before the switch.
            assert m.version_status("iris", 2)[0] == "ready"
            pred = await m.predict(iris_query())
            assert pred.version == 2
            assert (await m.predict(iris_query(alias="production"))).version == 1
            store.set_alias("iris", "production", 2)
            await until(lambda: m._models["iris"].aliases["production"] == 2)
            assert (await m.predict(iris_query(alias="production"))).version == 2
            # Version 1 is no longer a target: unloaded, yet a holder can still run it.
            assert m.version_status("iris", 1)[0] == "unloaded"
            feeds, _ = pinned.plan.feeds(raw(sm.iris_logreg().X[:2]), 10)
            assert len(pinned.run(feeds)[0]) == 2
            # And an explicit request for it loads it again.
            assert (await m.predict(iris_query(version=1))).version == 1
        finally:
            await m.close()

    run(main())


def test_changes_from_other_processes_are_seen_by_the_periodic_reread(store, tmp_path, monkeypatch):
    monkeypatch.setattr(manager_mod, "REFRESH_INTERVAL_S", 0.05)
    exp = sm.iris_logreg()

    async def main():
        m = await started(store, tmp_path)
        try:
            # Simulate another process: change the store without telling listeners.
            listeners, store._listeners = store._listeners, []
            store.publish("iris", exp.onnx, exp.meta)
            store._listeners = listeners
            await until(lambda: m._models["iris"].latest.version == 2)
            assert (await m.predict(iris_query())).version == 2
        finally:
            await m.close()

    run(main())


def test_deleted_version_is_forgotten(store, tmp_path):
    exp = sm.iris_logreg()
    store.publish("iris", exp.onnx, exp.meta)

    async def main():
        m = await started(store, tmp_path)
        try:
            await m.predict(iris_query(version=1))
            store.delete_version("iris", 1)
            await until(lambda: len(m._models["iris"].versions) == 1)
            with pytest.raises(NotFound):
                await m.predict(iris_query(version=1))
            assert m.version_status("iris", 1)[0] == "unloaded"
        finally:
            await m.close()

    run(main())


def test_deadline(store, tmp_path):
    async def main():
        # Every run through the thread pool: an inline run takes less than any limit
        # and is not stopped (docs/serving.md).
        m = await started(store, tmp_path, inline_inference_us=0)
        try:
            with pytest.raises(DeadlineExceeded):
                await m.predict(iris_query(), time_limit=0)
            with pytest.raises(DeadlineExceeded, match="deadline exceeded"):
                await m.predict(iris_query(), time_limit=1e-9)
            # Still serving afterwards.
            assert len((await m.predict(iris_query(), time_limit=30)).labels) == 5
        finally:
            await m.close()

    run(main())


def test_validation_and_zero_rows(store, tmp_path):
    async def main():
        m = await started(store, tmp_path, max_predict_rows=3)
        try:
            with pytest.raises(InvalidArgument, match="limit of 3"):
                await m.predict(iris_query(n=4))
            pred = await m.predict(
                PredictQuery("iris", data=TensorInput("float32", (0, 4), raw=b""))
            )
            assert pred.labels.shape == (0,) and pred.probabilities.shape == (0, 3)
            pred = await m.predict(PredictQuery("iris", data=RowsInput([])))
            assert pred.rows == 0
        finally:
            await m.close()

    run(main())


def test_large_requests_are_validated_and_run_off_the_loop(store, tmp_path):
    exp = sm.iris_logreg()
    X = np.resize(exp.X, (20_000, 4)).astype(np.float32)  # over the "large" threshold

    async def main():
        m = await started(store, tmp_path)
        try:
            pred = await m.predict(PredictQuery("iris", version=1, data=raw(X)))
            np.testing.assert_array_equal(pred.labels, exp.estimator.predict(X))
            bad = X.copy()
            bad[12_345, 2] = np.nan
            with pytest.raises(InvalidArgument, match=r"tensor\[12345, 2\]"):
                await m.predict(PredictQuery("iris", data=raw(bad)))
        finally:
            await m.close()

    run(main())


def test_batching_on_gives_the_same_labels_and_splits_exactly(store, tmp_path):
    exp = sm.iris_logreg()
    rows = [exp.X[i : i + 1 + i % 3] for i in range(0, 60, 4)]

    async def serve(batching: bool):
        m = await started(store, tmp_path, batching=batching, max_batch_delay_us=2000)
        try:
            preds = await asyncio.gather(
                *(m.predict(PredictQuery("iris", data=raw(x))) for x in rows)
            )
            lv = m._cache[("iris", 1)]
            merged = lv.batcher.runs < lv.batcher.requests if lv.batcher else None
            return preds, merged
        finally:
            await m.close()

    on, merged = run(serve(True))
    off, none = run(serve(False))
    assert merged is True and none is None
    for a, b, x in zip(on, off, rows, strict=True):
        assert len(a.labels) == len(x)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=0, atol=2e-6)


def test_cpu_device_does_not_probe(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("probed")

    monkeypatch.setattr(providers, "probe_cuda", boom)
    choice = providers.choose_provider(make_settings(tmp_path, device="cpu"))
    assert choice.provider == "CPUExecutionProvider"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_auto_chooses_quietly_with_one_log_line():
    proc = _python(
        "from highpeaks_ml.logs import configure_logging;"
        "from highpeaks_ml.config import Settings;"
        "from highpeaks_ml.serving.providers import choose_provider;"
        "configure_logging('DEBUG');"
        "print(choose_provider(Settings.load({'device': 'auto'})).provider)"
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "device=auto" in lines[0]
    if not providers._driver_present()[0]:
        # This machine (no NVIDIA driver): CPU, with the reason.
        assert proc.stdout.strip() == "CPUExecutionProvider"
        assert "execution provider CPUExecutionProvider" in lines[0]
        assert "CUDA not usable" in lines[0] and "libcuda.so.1" in lines[0]
    elif proc.stdout.strip() == "CUDAExecutionProvider":
        assert "a probe session ran on CUDAExecutionProvider" in lines[0]
    else:
        assert "CUDA not usable" in lines[0]


def test_cuda_probe_past_the_driver_check_is_quiet():
    # Skip the cheap driver check so that, without a GPU, onnxruntime really
    # tries (and fails) to load its CUDA provider: none of that may be printed.
    proc = _python(
        "from highpeaks_ml.serving.providers import probe_cuda;"
        "ok, why = probe_cuda(check_driver=False);"
        "import sys; sys.stdout.write(f'RESULT {ok} {why}')"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("RESULT ")
    if not providers._driver_present()[0]:
        assert proc.stdout.startswith("RESULT False ")
        assert len(proc.stdout) > len("RESULT False ")  # with a reason


def test_cuda_device_fails_clearly_when_cuda_is_unusable(tmp_path):
    try:
        choice = providers.choose_provider(make_settings(tmp_path, device="cuda"))
    except Unavailable as exc:
        assert re.fullmatch(r"device=cuda but CUDA is not usable: .+", exc.message)
    else:
        assert choice.provider == "CUDAExecutionProvider"
        pytest.skip("CUDA is usable on this machine")


def test_session_options(tmp_path):
    opts = providers.session_options(make_settings(tmp_path, intra_op_threads=3))
    assert opts.intra_op_num_threads == 3
    opts = providers.session_options(make_settings(tmp_path, graph_optimization="basic"))
    assert opts.intra_op_num_threads == min(providers.usable_cores(), 8)
    assert providers.provider_list("CPUExecutionProvider") == ["CPUExecutionProvider"]
    assert providers.provider_list("CUDAExecutionProvider")[0][0] == "CUDAExecutionProvider"


class ThreadRecordingSession:
    """A real onnxruntime session that notes which thread ran each call."""

    def __init__(self, session, delay_s: float = 0.0) -> None:
        self._session = session
        self.delay_s = delay_s
        self.threads: list[int] = []

    def run(self, *args, **kwargs):
        self.threads.append(threading.get_ident())
        if self.delay_s:  # busy, not asleep: the estimate counts the thread's CPU time
            end = time.thread_time() + self.delay_s
            while time.thread_time() < end:
                pass
        return self._session.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)


async def _recording(m: ModelManager, delay_s: float = 0.0) -> ThreadRecordingSession:
    lv = m._cache[("iris", 1)]
    rec = ThreadRecordingSession(lv.session, delay_s)
    lv.session = rec
    return rec


def _inline_runs() -> float:
    from highpeaks_ml import metrics

    sample = metrics.current().registry.get_sample_value(
        "highpeaks_ml_inline_inference_runs_total", {"model": "iris", "version": "1"}
    )
    return sample or 0.0


async def _one_row_predictions(m: ModelManager, count: int) -> None:
    for _ in range(count):
        pred = await m.predict(iris_query(n=1))
        assert len(pred.labels) == 1


def test_warm_up_is_the_probation_small_runs_start_on_the_loop(store, tmp_path):
    async def main():
        # A limit no run on any machine misses, so the test is about the rule.
        m = await started(store, tmp_path, inline_inference_us=1_000_000)
        try:
            lv = m._cache[("iris", 1)]
            assert lv.small_runs == manager_mod._INLINE_PROBATION  # measured at load
            rec = await _recording(m)
            loop_thread = threading.get_ident()
            await _one_row_predictions(m, 2)
            assert rec.threads == [loop_thread, loop_thread]
        finally:
            await m.close()

    run(main())


def test_small_cheap_runs_move_onto_the_event_loop_after_probation(store, tmp_path):
    async def main():
        # A limit no run on any machine misses, so the test is about the rule;
        # without warm-up the probation runs are the first requests'.
        m = await started(store, tmp_path, inline_inference_us=1_000_000, warmup=False)
        try:
            rec = await _recording(m)
            loop_thread = threading.get_ident()
            inline_runs = _inline_runs()
            await _one_row_predictions(m, manager_mod._INLINE_PROBATION + 3)
            first = rec.threads[: manager_mod._INLINE_PROBATION]
            after = rec.threads[manager_mod._INLINE_PROBATION :]
            assert loop_thread not in first  # measured in the thread pool first
            assert after and all(t == loop_thread for t in after)
            assert _inline_runs() - inline_runs == len(after)  # and counted
            # More rows than INLINE_MAX_ROWS go to the thread pool while no larger
            # run was measured (no warm-up here).
            await m.predict(iris_query(n=manager_mod.INLINE_MAX_ROWS + 1))
            assert rec.threads[-1] != loop_thread
        finally:
            await m.close()

    run(main())


def test_inline_off_with_zero_and_with_a_batching_delay(store, tmp_path):
    async def main(**settings):
        m = await started(store, tmp_path, **settings)
        try:
            rec = await _recording(m)
            await _one_row_predictions(m, manager_mod._INLINE_PROBATION + 3)
            return rec.threads, threading.get_ident()
        finally:
            await m.close()

    for settings in (
        {"inline_inference_us": 0},
        {"inline_inference_us": 1_000_000, "max_batch_delay_us": 500},
    ):
        threads, loop_thread = run(main(**settings))
        assert loop_thread not in threads, settings


def test_a_version_that_turns_slow_goes_back_to_the_thread_pool(store, tmp_path):
    async def main():
        # 20 ms of CPU: no probation run misses it, even on a loaded machine.
        m = await started(store, tmp_path, inline_inference_us=20_000, warmup=False)
        try:
            rec = await _recording(m)
            loop_thread = threading.get_ident()
            await _one_row_predictions(m, manager_mod._INLINE_PROBATION + 1)
            assert rec.threads[-1] == loop_thread
            rec.delay_s = 0.25  # over ten times the limit: one such run is enough
            await _one_row_predictions(m, 1)
            rec.threads.clear()
            await _one_row_predictions(m, 3)
            assert rec.threads and loop_thread not in rec.threads
        finally:
            await m.close()

    run(main())


def test_a_larger_request_runs_on_the_loop_only_while_no_other_prediction_is_in_flight(tmp_path):
    store = GatedStore()
    exp = sm.iris_logreg()
    store.publish("iris", exp.onnx, exp.meta)

    async def main(idle_us: int) -> tuple[list[int], list[int], int]:
        # The warm-up measured the cost per row of a 64-row batch; a generous limit,
        # so the test is about the rule, not this machine's speed. Small-run inlining
        # off (a 100-row logistic regression is cheaper than the hop): this rule only.
        m = await started(store, tmp_path, inline_when_idle_us=idle_us, inline_inference_us=0)
        try:
            rec = await _recording(m)
            big = iris_query(n=100)  # over INLINE_MAX_ROWS: not a small run
            await m.predict(big)
            alone = list(rec.threads)
            rec.threads.clear()
            store.gate.clear()
            waiting = asyncio.get_running_loop().create_task(m.predict(PredictQuery("gated")))
            await asyncio.sleep(0.05)  # it waits on the store: a prediction in flight
            assert not waiting.done()
            await m.predict(big)
            store.gate.set()
            with pytest.raises(NotFound):
                await waiting
            return alone, list(rec.threads), threading.get_ident()
        finally:
            store.gate.set()
            await m.close()

    alone, beside, loop_thread = run(main(idle_us=10_000_000))
    assert alone == [loop_thread]  # nothing else to serve: on the loop
    assert beside and loop_thread not in beside  # another in flight: the thread pool
    alone, _, loop_thread = run(main(idle_us=0))
    assert alone and loop_thread not in alone  # 0 = never


def test_small_run_estimate_rises_fast_and_falls_slowly():
    lv = manager_mod.LoadedVersion.__new__(manager_mod.LoadedVersion)
    lv.small_run_s, lv.small_runs, lv._inline_limit_s = float("inf"), 0, 100e-6
    lv.row_cost_s = float("inf")
    one = {"input": np.zeros((1, 4), np.float32)}
    for _ in range(manager_mod._INLINE_PROBATION):
        lv._note_small_run(10e-6)
    assert lv.small_run_s == pytest.approx(10e-6) and lv.inline_ok(one, 1)
    lv._note_small_run(400e-6)  # a lone outlier (an interrupt charged to the run)
    assert lv.inline_ok(one, 1)
    for _ in range(20):
        lv._note_small_run(10e-6)
    lv._note_small_run(1e-3)  # ten times the limit: off the loop at once
    assert lv.small_run_s > 100e-6 and not lv.inline_ok(one, 1)
    n = 0
    while not lv.inline_ok(one, 1):
        lv._note_small_run(10e-6)
        n += 1
    assert 3 < n < 20  # back after several cheap runs, not one
    rows = manager_mod.INLINE_MAX_ROWS + 1
    assert not lv.inline_ok({"input": np.zeros((rows, 4), np.float32)}, rows)
    # Few rows but many elements, or strings (cost grows with their length): the pool.
    wide = {"input": np.zeros((1, manager_mod.INLINE_MAX_ELEMENTS + 1), np.float32)}
    assert not lv.inline_ok(wide, 1)
    text = {"input": np.array([["a" * 10]], dtype=object)}
    assert not lv.inline_ok(text, 1)
    assert lv.inline_ok({"a": np.zeros((2, 3), np.int64), "b": np.ones((2, 1), bool)}, 2)
    for _ in range(3):  # sustained slow runs keep it off
        lv._note_small_run(300e-6)
    assert not lv.inline_ok(one, 1)


def test_byte_bound_unloads_least_recently_used_but_never_the_newest(store, tmp_path):
    exp = sm.iris_logreg()
    for _ in range(2):
        store.publish("iris", exp.onnx, exp.meta)  # versions 2 and 3, same size as 1
    size = len(exp.onnx)

    async def main(limit_bytes: float):
        m = await started(
            store, tmp_path, eager_load=False, session_cache_mb=limit_bytes / (1024 * 1024)
        )
        try:
            states = []
            for v in (1, 2, 3):
                await m.predict(iris_query(version=v))
                states.append([m.version_status("iris", n)[0] for n in (1, 2, 3)])
            return states, m._loaded_bytes()
        finally:
            await m.close()

    # Room for two files: the third load unloads the least recently used.
    states, loaded = run(main(2.5 * size))
    assert states[-1] == ["unloaded", "ready", "ready"] and loaded == 2 * size
    # Room for none: each load still stays (alone), the previous one goes.
    states, loaded = run(main(size / 2))
    assert states == [
        ["ready", "unloaded", "unloaded"],
        ["unloaded", "ready", "unloaded"],
        ["unloaded", "unloaded", "ready"],
    ]
    assert loaded == size


def test_eager_loading_stops_at_the_byte_bound(tmp_path):
    store = MemoryStore()
    exp = sm.iris_logreg()
    for name in ("a", "b", "c"):
        store.publish(name, exp.onnx, exp.meta)

    async def main():
        m = await started(store, tmp_path, session_cache_mb=2.5 * len(exp.onnx) / (1024 * 1024))
        try:
            return [m.version_status(name, 1)[0] for name in ("a", "b", "c")]
        finally:
            await m.close()

    assert run(main()) == ["ready", "ready", "unloaded"]


def test_larger_runs_go_inline_only_when_rows_times_their_cost_is_under_the_limit():
    lv = manager_mod.LoadedVersion.__new__(manager_mod.LoadedVersion)
    lv.small_run_s, lv.small_runs, lv._inline_limit_s = 10e-6, 5, 100e-6
    lv.row_cost_s = float("inf")

    def feeds(rows: int, width: int = 20) -> dict[str, np.ndarray]:
        return {"input": np.zeros((rows, width), np.float32)}

    assert not lv.inline_ok(feeds(1000), 1000)  # never measured
    lv.row_cost_s = 50e-9  # 1,000 rows: 50 µs
    assert lv.inline_ok(feeds(1000), 1000)
    assert not lv.inline_ok(feeds(3000, 4), 3000)  # 150 µs: over the limit
    elements = manager_mod.INLINE_MAX_BATCH_ELEMENTS // 20 + 1
    lv.row_cost_s = 1e-9
    assert not lv.inline_ok(feeds(elements), elements)  # too many elements for the loop
    lv._inline_limit_s = 0.0  # --inline-inference-us 0
    assert not lv.inline_ok(feeds(1000), 1000)
