"""The hot path's lock-free metrics expose what prometheus_client's would, and lose nothing."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from highpeaks_ml.hotmetrics import HotCounter, HotGauge, HotHistogram
from highpeaks_ml.serving.stats import VersionStats

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def _lines(registry: CollectorRegistry) -> set[str]:
    # _created carries the creation time, which differs between the two.
    return {
        line
        for line in generate_latest(registry).decode().splitlines()
        if line and "_created" not in line
    }


def test_exposition_matches_prometheus_client():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    made = [
        (
            HotCounter("c", "A counter.", ["m"], registry=ours),
            Counter("c", "A counter.", ["m"], registry=theirs),
        ),
        (
            HotGauge("g", "A gauge.", ["m"], registry=ours),
            Gauge("g", "A gauge.", ["m"], registry=theirs),
        ),
        (
            HotHistogram("h", "A histogram.", ["m"], buckets=BUCKETS, registry=ours),
            Histogram("h", "A histogram.", ["m"], buckets=BUCKETS, registry=theirs),
        ),
    ]
    for pair in made[:2]:  # the counter and the gauge
        for label, amount in (("a", 1), ("a", 2.5), ("b", 1)):
            for metric in pair:
                metric.labels(label).inc(amount)
    gauge_ours, gauge_theirs = made[1]
    gauge_ours.labels("a").dec(0.5)
    gauge_theirs.labels("a").dec(0.5)
    hist_ours, hist_theirs = made[2]
    # On a bound, between bounds, above the last, zero.
    for value in (0.001, 0.005, 0.5, 7.0, 0.0, 1.0):
        hist_ours.labels("x").observe(value)
        hist_theirs.labels("x").observe(value)
    assert _lines(ours) == _lines(theirs)
    assert ours.get_sample_value("c_total", {"m": "a"}) == 3.5
    assert ours.get_sample_value("h_bucket", {"m": "x", "le": "0.001"}) == 2
    assert ours.get_sample_value("h_count", {"m": "x"}) == 6


def test_counter_refuses_going_down_and_labels_are_checked():
    c = HotCounter("c", "A counter.", ["m"], registry=CollectorRegistry())
    with pytest.raises(ValueError):
        c.labels("a").inc(-1)
    with pytest.raises(ValueError):
        c.labels("a", "b")
    assert c.labels(1) is c.labels("1")


def test_no_update_is_lost_across_threads():
    registry = CollectorRegistry()
    c = HotCounter("c", "A counter.", ["m"], registry=registry)
    g = HotGauge("g", "A gauge.", ["m"], registry=registry)
    h = HotHistogram("h", "A histogram.", ["m"], buckets=BUCKETS, registry=registry)
    stats = VersionStats("m", 1)
    per_thread, threads = 20_000, 8
    start = threading.Barrier(threads)

    def work() -> None:
        child_c, child_g, child_h = c.labels("a"), g.labels("a"), h.labels("a")
        start.wait()
        for i in range(per_thread):
            child_c.inc()
            child_g.inc()
            child_h.observe(0.005)
            stats.record_execution(1 + i % 2, 0.001)
            stats.record_request(True, 1, 0.002)
            if i % 2:
                child_g.dec()

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    total = per_thread * threads
    assert registry.get_sample_value("c_total", {"m": "a"}) == total
    assert registry.get_sample_value("g", {"m": "a"}) == total / 2
    assert registry.get_sample_value("h_bucket", {"m": "a", "le": "0.01"}) == total
    assert registry.get_sample_value("h_sum", {"m": "a"}) == pytest.approx(total * 0.005)
    snap = stats.snapshot()
    assert snap.execution_count == total
    assert snap.success.count == total and snap.inference_count == total
    assert [(b.batch_size, b.compute.count) for b in snap.batches] == [
        (1, total // 2),
        (2, total // 2),
    ]
