"""The agent's registry of cache workers: typed reports in, typed sums out."""

from __future__ import annotations

import json

from agents.registry import Disks, Registry
from devkit.testing import WORKER_STATUS_WIRE as STATUS
from fluidfed.data import protocol


def _reg(url: str, dataset: str = "train", **fields: object) -> protocol.WorkerRegistration:
    body = {"dataset": dataset, "url": url, "status": {**STATUS, "url": url, **fields}}
    return protocol.decode(protocol.WorkerRegistration, json.dumps(body).encode())


def test_cache_sums_the_live_workers_of_the_dataset() -> None:
    r = Registry(ttl=10)
    r.report(_reg("http://a/", used=100, capacity=1000, hits=3, misses=1), now=0)
    r.report(_reg("http://b", used=50, capacity=1000, hits=1, misses=3), now=5)
    r.report(_reg("http://c", dataset="other", used=999), now=5)
    assert r.cache("train", now=9) == (150, 2000, 0.5)
    assert [w.url for w in r.alive("train", now=9)] == ["http://a", "http://b"]
    # a worker that stopped reporting no longer counts; then none does
    assert r.cache("train", now=12) == (50, 1000, 0.25)
    assert r.cache("train", now=100) is None


def test_a_report_replaces_the_last_one_of_that_worker() -> None:
    r = Registry()
    r.report(_reg("http://a", used=1), now=0)
    r.report(_reg("http://a/", used=2), now=1)
    assert r.cache("train", now=1) == (2, 1000, 0.7)


def test_no_hits_and_no_misses_is_no_ratio() -> None:
    r = Registry()
    r.report(_reg("http://a", hits=0, misses=0), now=0)
    assert r.cache("train", now=0) == (300, 1000, None)


def test_dead_workers_are_forgotten() -> None:
    r = Registry(ttl=1)
    r.report(_reg("http://a"), now=0)
    assert r.alive("train", now=7) == []
    assert r._workers == {}


def _tier(medium: str, short: bool = False) -> dict[str, object]:
    return {"medium": medium, "quota": 1, "used": 0, "blocks": 0, "hits": 0, "evictions": 0,
            "short": short}  # fmt: skip


def test_disks_sum_what_the_live_workers_did_not_keep_and_shed() -> None:
    """Blocks not kept and shed summed over the live workers; the workers with a disk
    tier that keeps no block now counted once each, however many such tiers."""
    r = Registry(ttl=10)
    a = {"errors": 1, "no_room": 2, "shed": 3}
    full = [_tier("MEM"), _tier("SSD", short=True), _tier("HDD", short=True)]
    r.report(_reg("http://a", writes=a, tiers=full), now=0)
    r.report(_reg("http://b", writes={"no_room": 1, "shed": 4}, tiers=[_tier("SSD")]), now=5)
    r.report(_reg("http://c", dataset="other", writes={"shed": 99}, tiers=full), now=5)
    assert r.disks("train", now=9) == Disks(not_kept=4, shed=7, full=1)
    assert r.disks("train", now=12) == Disks(not_kept=1, shed=4, full=0)  # (a stopped)
    assert r.disks("train", now=100) is None
