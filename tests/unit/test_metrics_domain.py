"""Domain metrics recorded by the serving code, read from a private registry (no sockets)."""

from __future__ import annotations

import asyncio

import pytest

from highpeaks_ml import metrics
from highpeaks_ml.serving.manager import ModelManager
from tests.conftest import make_settings
from tests.support import serving_models as sm
from tests.support.serving_store import MemoryStore
from tests.unit.test_serving_manager import iris_query, unsupported_op_model


@pytest.fixture
def fresh():
    """A fresh Metrics installed for the test, the previous one put back after."""
    before = metrics.current()
    m = metrics.Metrics(process=False)
    metrics.install(m)
    yield m
    metrics.install(before)


def sample(m: metrics.Metrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def test_two_metrics_do_not_share_a_registry():
    a, b = metrics.Metrics(process=False), metrics.Metrics(process=False)
    a.rpcs.labels("/x/Y", "OK").inc()
    assert sample(a, "highpeaks_ml_rpcs_total", method="/x/Y", code="OK") == 1
    assert sample(b, "highpeaks_ml_rpcs_total", method="/x/Y", code="OK") == 0


@pytest.mark.parametrize("batching", [False, True])
def test_serving_records_rows_batches_queue_compute_and_loads(fresh, tmp_path, batching):
    store = MemoryStore()
    exp = sm.iris_logreg()
    store.publish("iris", exp.onnx, exp.meta)
    store.put_unchecked("broken", unsupported_op_model(), exp.meta)

    async def main() -> None:
        m = ModelManager(make_settings(tmp_path, batching=batching, max_batch_delay_us=2000), store)
        await m.start()
        try:
            await asyncio.gather(m.predict(iris_query(n=5)), m.predict(iris_query(n=3)))
        finally:
            await m.close()

    asyncio.run(main())
    v = {"model": "iris", "version": "1"}
    assert sample(fresh, "highpeaks_ml_predicted_rows_total", **v) == 8
    runs = sample(fresh, "highpeaks_ml_predict_batch_rows_count", **v)
    assert sample(fresh, "highpeaks_ml_predict_batch_rows_sum", **v) == 8  # warm-up not counted
    assert runs == sample(fresh, "highpeaks_ml_predict_compute_seconds_count", **v)
    assert (runs == 1) if batching else (runs == 2)
    assert sample(fresh, "highpeaks_ml_predict_queue_seconds_count", model="iris") == 2
    assert sample(fresh, "highpeaks_ml_model_load_seconds_count", model="iris") == 1
    assert sample(fresh, "highpeaks_ml_model_load_failures_total", model="broken") == 1
    assert sample(fresh, "highpeaks_ml_loaded_sessions") == 0  # closed


def test_loaded_sessions_follow_the_cache(fresh, tmp_path):
    store = MemoryStore()
    exp = sm.iris_logreg()
    for name in ("a", "b", "c"):
        store.publish(name, exp.onnx, exp.meta)

    async def main() -> None:
        m = ModelManager(make_settings(tmp_path, session_cache_size=2), store)
        await m.start()
        try:
            assert sample(fresh, "highpeaks_ml_loaded_sessions") == 2
            for name in ("a", "b", "c"):
                await m.predict(iris_query(name))
            assert sample(fresh, "highpeaks_ml_loaded_sessions") == 2
        finally:
            await m.close()

    asyncio.run(main())
