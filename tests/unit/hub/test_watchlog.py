"""The watch log alone: bounded by count and by bytes, trimmed by whole revisions."""

import gc

import pytest

from devkit import testing
from fluidfed.errors import Compacted, RevisionAhead
from hub.watchlog import WatchLog


def test_trimmed_by_whole_revisions_to_its_count() -> None:
    log = WatchLog(count=4, size=2**30)
    for rev in range(1, 11):  # two events per revision
        for cluster in ("a", "b"):
            log.append(rev, "ADDED", testing.binding(cluster=cluster))
    assert len(log) <= 5 and log.compacted >= 6
    kept = log.since(log.compacted, None, current=10)
    revs = [e.revision for e in kept]
    assert revs and set(revs) <= set(range(log.compacted + 1, 11))
    assert all(revs.count(r) == 2 for r in set(revs))  # no revision kept by halves
    with pytest.raises(Compacted):
        log.since(1, None, current=10)
    with pytest.raises(RevisionAhead):
        log.since(11, None, current=10)


def test_bounded_by_bytes_and_filtered_by_cluster() -> None:
    big = testing.dataset("d", description="x" * 10_000)
    log = WatchLog(count=10_000, size=50_000)
    for rev in range(1, 21):
        log.append(rev, "MODIFIED", testing.binding(big, cluster="a" if rev % 2 else "b"))
    assert log.bytes <= 50_000 * 1.25
    assert all(e.cluster == "b" for e in log.since(log.compacted, "b", current=20))


def test_a_clusters_events_stay_in_order_through_trims() -> None:
    log = WatchLog(count=30, size=2**30)
    for rev in range(1, 101):  # a revision places on several clusters, as an apply does
        for cluster in ("a", "b", "c")[: 1 + rev % 3]:
            log.append(rev, "ADDED", testing.binding(cluster=cluster))
    everything = log.since(log.compacted, None, current=100)
    for cluster in ("a", "b", "c", "nowhere"):
        for since in range(log.compacted, 101):
            expect = [e for e in everything if e.cluster == cluster and e.revision > since]
            assert log.since(since, cluster, current=100) == expect


def test_its_entries_are_never_walked_by_the_garbage_collector() -> None:
    log = WatchLog(count=100, size=2**30)
    log.append(1, "ADDED", testing.binding(cluster="a"))
    (entry,) = log.since(0, "a", current=1)
    assert not gc.is_tracked(entry)  # a few applies' worth, one per cluster each
