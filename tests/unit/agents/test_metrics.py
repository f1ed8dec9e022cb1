"""The agent's metric window: counters to rates, restarts, ratios, freshness."""

from __future__ import annotations

import pytest

from agents.metrics import SIDECAR, WORKER, MetricWindow, Point


def pt(
    metric: str,
    at: float,
    value: float,
    *,
    service: str = SIDECAR,
    inst: str = "a",
    attrs: tuple[tuple[str, str], ...] = (),
    dataset: str = "ds",
) -> Point:
    return Point(dataset, service, inst, metric, attrs, at, value)


def test_read_rate_sums_instances_over_the_window() -> None:
    w = MetricWindow(window=10)
    for t, v in [(0, 0), (5, 500), (10, 1000)]:
        w.add(pt("fluidfed.read.bytes", t, v, inst="a"))
        w.add(pt("fluidfed.read.bytes", t, v * 2, inst="b"))
    assert w.figures("ds", now=10).read_bytes_per_second == pytest.approx(300)
    # old points leave the window: the rate follows the recent past only
    w.add(pt("fluidfed.read.bytes", 20, 1000, inst="a"))
    w.add(pt("fluidfed.read.bytes", 20, 2000, inst="b"))
    assert w.figures("ds", now=20).read_bytes_per_second == pytest.approx(0)


def test_a_restarted_instance_counts_from_zero_and_repeats_are_ignored() -> None:
    w = MetricWindow(window=10)
    w.add(pt("fluidfed.read.bytes", 0, 900))
    w.add(pt("fluidfed.read.bytes", 0, 900))  # the same collection twice
    w.add(pt("fluidfed.read.bytes", 5, 100))  # restarted: 100 since
    assert w.figures("ds", now=5).read_bytes_per_second == pytest.approx(20)


def test_hit_and_used_ratios_come_from_the_workers() -> None:
    w = MetricWindow(window=10)
    tier = (("fluidfed.tier", "MEM"),)
    for t, hits, misses in [(0, 0, 0), (4, 30, 10)]:
        w.add(pt("fluidfed.cache.hits", t, hits, service=WORKER, attrs=tier))
        w.add(pt("fluidfed.cache.misses", t, misses, service=WORKER))
    w.add(pt("fluidfed.cache.used", 4, 25, service=WORKER, attrs=tier))
    w.add(pt("fluidfed.cache.capacity", 4, 100, service=WORKER, attrs=tier))
    w.add(pt("fluidfed.cache.used", 4, 25, service=WORKER, inst="b", attrs=tier))
    w.add(pt("fluidfed.cache.capacity", 4, 100, service=WORKER, inst="b", attrs=tier))
    got = w.figures("ds", now=4)
    assert got.hit_ratio == pytest.approx(0.75)
    assert got.cache_used_ratio == pytest.approx(0.25)
    assert got.read_bytes_per_second is None  # no sidecar reported
    assert w.latest("ds")[WORKER]["fluidfed.cache.used"] == 50


def test_readers_gone_while_the_workers_report_is_a_read_rate_of_zero() -> None:
    """The serverless case: the jobs' pods ended (their sidecars with them), the workers
    run on; without a rate of 0 the cache would never scale down."""
    w = MetricWindow(window=10)
    w.add(pt("fluidfed.read.bytes", 0, 0))
    w.add(pt("fluidfed.read.bytes", 5, 500))
    for t in range(0, 60, 5):
        w.add(pt("fluidfed.cache.hits", t, t, service=WORKER))
    assert w.figures("ds", now=5).read_bytes_per_second == pytest.approx(100)
    assert w.figures("ds", now=55).read_bytes_per_second == 0.0
    w.forget_before(1000)  # all forgotten: nothing to go on again
    w.add(pt("fluidfed.cache.hits", 1001, 1, service=WORKER))
    assert w.figures("ds", now=1001).read_bytes_per_second is None


def test_nothing_fresh_means_no_figures() -> None:
    w = MetricWindow(window=10)
    w.add(pt("fluidfed.read.bytes", 0, 0))
    w.add(pt("fluidfed.read.bytes", 5, 50))
    assert not w.figures("ds", now=5).empty()
    assert w.figures("ds", now=100).empty()  # an agent that hears nothing reports nothing
    assert w.figures("other", now=5).empty()
    w.forget_before(50)
    assert w.datasets() == []
