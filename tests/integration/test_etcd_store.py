"""The etcd store's feed on a real etcd, two replicas (two stores) on one prefix: what one
replica commits reaches the other with its events, and comes back to the one that
committed it without them (its catalog applied them when it committed)."""

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from devkit.local import etcd
from hub.etcd import EtcdSettings, EtcdStore
from hub.store import Change, Put

pytestmark = pytest.mark.integration


async def _next_change_at(feed: AsyncIterator[Change], revision: int) -> Change:
    """The feed's change of `revision` (progress reports on the way are passed over)."""
    async with asyncio.timeout(30):
        async for change in feed:
            if change.revision == revision:
                return change
            assert change.revision < revision, f"revision {revision} was passed over"
    raise AssertionError("the feed ended")


async def test_a_replica_reads_the_events_of_the_others_commits_not_of_its_own(
    etcd_cluster: etcd.EtcdCluster,
) -> None:
    prefix = f"/t-{secrets.token_hex(4)}/"
    one, other = (
        EtcdStore(EtcdSettings(endpoints=tuple(etcd_cluster.endpoints), prefix=prefix))
        for _ in range(2)
    )
    try:
        snap = await one.load()
        feeds = [s.follow(snap.revision).__aiter__() for s in (one, other)]
        rev = await one.commit(snap.base, [Put("binding", "d.c1", b"{}")])
        mine = await _next_change_at(feeds[0], rev)
        theirs = await _next_change_at(feeds[1], rev)
        assert mine.events == []
        assert [(e.kind, e.name, e.value) for e in theirs.events] == [
            ("rev", "", None),
            ("binding", "d.c1", b"{}"),
        ]
        # and the other way round: the other replica's commit, events and all
        rev2 = await other.commit(rev, [Put("binding", "d.c2", b"[]")])
        assert [e.name for e in (await _next_change_at(feeds[0], rev2)).events] == ["", "d.c2"]
        assert (await _next_change_at(feeds[1], rev2)).events == []
        assert not one._own and not other._own  # nothing kept once the feed passed it
    finally:
        for feed in feeds:
            await feed.aclose()  # type: ignore[attr-defined]
        await one.close()
        await other.close()
