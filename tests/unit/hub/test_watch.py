"""One watch stream against a catalog that commits while the stream waits, with the
bookmark clock beaten by hand between commits."""

import asyncio
from collections.abc import Callable
from pathlib import Path

from devkit import testing
from fluidfed import codec
from fluidfed.models import Dataset, Placement, WatchEvent
from hub import watch
from hub.catalog import Catalog
from hub.store import SQLiteStore

_event_dec = codec.decoder(WatchEvent)


class Lines:
    def __init__(self) -> None:
        self.events: list[WatchEvent] = []

    async def write(self, data: bytes) -> None:
        self.events += [_event_dec.decode(line) for line in data.splitlines()]

    def of(self, etype: str) -> list[WatchEvent]:
        return [e for e in self.events if e.type == etype]


async def settle(done: Callable[[], bool] = lambda: False) -> None:
    """Let the stream run until `done`, or until it has had every chance to."""
    for _ in range(50):
        if done():
            return
        await asyncio.sleep(0)


async def catalog(tmp_path: Path, *clusters: str) -> Catalog:
    cat = Catalog(SQLiteStore(tmp_path / "catalog.db"))
    await cat.load()
    for name in clusters:
        await cat.register_cluster(testing.cluster(name))
    return cat


def on(cluster: str, name: str) -> Dataset:
    return testing.dataset(name, placement=Placement(clusters=[cluster]))


async def test_bookmarks_never_skip_or_repeat_a_commit_between_beats(tmp_path: Path) -> None:
    cat = await catalog(tmp_path, "a")
    clock = watch.Clock(cat, interval=10)
    out = Lines()
    stream = asyncio.create_task(watch.stream(out, cat, "a", cat.revision, clock=clock))
    for i in range(30):
        # beats land before, between and after commits: a bookmark is due at most of them
        for _ in range(i % 3):
            clock.beat()
        await cat.apply_dataset(testing.dataset(f"d{i}"))
        if i % 2:
            await settle()
    await settle(lambda: len(out.of("ADDED")) == 30)
    clock.close()
    await asyncio.wait_for(stream, 5)
    added = [e.object.dataset for e in out.of("ADDED") if e.object]
    assert added == [f"d{i}" for i in range(30)]  # none missed, none repeated, in order
    assert out.of("BOOKMARK")  # the beats did make bookmarks among the events
    revisions = [e.revision for e in out.events]
    assert revisions == sorted(revisions) and revisions[-1] == cat.revision


async def test_a_quiet_stream_gets_a_bookmark_each_interval(tmp_path: Path) -> None:
    cat = await catalog(tmp_path, "a", "b")
    clock = watch.Clock(cat, interval=10)
    assert clock.period == 5  # two beats to an interval
    out = Lines()
    stream = asyncio.create_task(watch.stream(out, cat, "a", cat.revision, clock=clock))
    await settle()
    clock.beat()
    await settle()
    assert out.events == []  # half an interval: not yet
    clock.beat()
    await settle(lambda: bool(out.events))
    assert [(e.type, e.revision) for e in out.events] == [("BOOKMARK", cat.revision)]
    clock.beat()
    await settle()
    assert len(out.events) == 1
    clock.beat()
    await settle(lambda: len(out.events) == 2)
    assert [e.type for e in out.events] == ["BOOKMARK", "BOOKMARK"]
    clock.close()
    await asyncio.wait_for(stream, 5)


async def test_bookmarks_come_while_other_clusters_commits_wake_the_stream(
    tmp_path: Path,
) -> None:
    """A stream woken by commits that are not its own still gets its bookmarks (a timer per
    stream started over at each of them, and never fired while they came often)."""
    cat = await catalog(tmp_path, "a", "b")
    clock = watch.Clock(cat, interval=10)
    out = Lines()
    stream = asyncio.create_task(watch.stream(out, cat, "a", cat.revision, clock=clock))
    for i in range(4):
        await cat.apply_dataset(on("b", f"d{i}"))  # wakes a's stream, with nothing for it
        await settle()
        clock.beat()  # the streams were woken since the last beat: the clock does not wake
        await settle()
    assert [e.type for e in out.events] == ["BOOKMARK"]  # at the commit after 2 beats
    assert out.events[0].revision == cat.revision - 1  # past b's commits up to then
    await cat.apply_dataset(on("a", "mine"))
    await settle(lambda: len(out.events) == 2)
    assert [e.type for e in out.events] == ["BOOKMARK", "ADDED"]
    clock.close()
    await asyncio.wait_for(stream, 5)


async def test_the_clock_wakes_the_streams_only_after_a_beat_without_a_commit(
    tmp_path: Path,
) -> None:
    cat = await catalog(tmp_path, "a")
    clock = watch.Clock(cat, interval=10)
    clock.beat()
    first = cat.tick
    clock.beat()  # nothing committed since the last beat: wake
    assert first.is_set()
    await cat.apply_dataset(on("a", "d"))
    woken = cat.tick
    clock.beat()  # a commit woke them since the last beat: no need
    assert not woken.is_set()
    clock.beat()
    assert woken.is_set()


async def test_closing_ends_every_stream_at_once(tmp_path: Path) -> None:
    cat = await catalog(tmp_path, "a", "b")
    clock = watch.Clock(cat, interval=3600)
    outs = [Lines() for _ in range(3)]
    streams = [
        asyncio.create_task(watch.stream(out, cat, c, cat.revision, clock=clock))
        for out, c in zip(outs, ["a", "b", None], strict=True)
    ]
    await settle()
    assert not any(s.done() for s in streams)
    clock.close()
    await asyncio.wait_for(asyncio.gather(*streams), 5)
    assert all(out.events == [] for out in outs)
