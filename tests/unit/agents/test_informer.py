from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

from agents import informer
from fluidfed.backoff import Backoff

Change = informer.Change[str, int]


class TooOld(Exception):
    pass


class Broken(Exception):
    pass


class ScriptedSource:
    """Listings and watch streams played back in order; an exception in a stream is
    raised where it stands."""

    def __init__(
        self, listings: list[tuple[list[str], int]], streams: list[list[Change | Exception]]
    ) -> None:
        self.listings = listings
        self.streams = streams
        self.watched_from: list[int] = []

    async def list(self) -> tuple[list[str], int]:
        return self.listings.pop(0)

    async def watch(self, version: int) -> AsyncIterator[Change]:
        self.watched_from.append(version)
        for item in self.streams.pop(0):
            if isinstance(item, Exception):
                raise item
            yield item

    def too_old(self, error: Exception) -> bool:
        return isinstance(error, TooOld)


NO_WAIT = Backoff(base=0.0, cap=0.0)


async def take(events: AsyncIterator[informer.Event[str, int]], n: int) -> list[object]:
    got: list[object] = []
    async for ev in events:
        got.append(ev)
        if len(got) == n:
            break
    return got


async def test_lists_first_then_watches_from_the_listed_version() -> None:
    src = ScriptedSource([(["a", "b"], 5)], [[informer.Added("c", 6), informer.Deleted("a", 7)]])
    got = await take(informer.list_then_watch(src, NO_WAIT), 3)
    assert got == [informer.Listed(["a", "b"], 5), informer.Added("c", 6), informer.Deleted("a", 7)]
    assert src.watched_from == [5]


async def test_with_a_version_it_resumes_without_listing() -> None:
    src = ScriptedSource([], [[informer.Bookmark(12)], [informer.Modified("a", 13)]])
    got = await take(informer.list_then_watch(src, NO_WAIT, version=10), 2)
    # the first stream ended cleanly: the next resumes from the last event's version
    assert got == [informer.Bookmark(12), informer.Modified("a", 13)]
    assert src.watched_from == [10, 12]


async def test_too_old_relists_and_watches_from_the_new_listing() -> None:
    src = ScriptedSource(
        [(["x"], 40)], [[informer.Added("a", 11), TooOld()], [informer.Added("y", 41)]]
    )
    got = await take(informer.list_then_watch(src, NO_WAIT, version=10), 4)
    assert got == [
        informer.Added("a", 11),
        informer.Relisting(11),
        informer.Listed(["x"], 40),
        informer.Added("y", 41),
    ]
    assert src.watched_from == [10, 40]


async def test_an_error_is_shown_then_the_watch_resumes_after_a_delay() -> None:
    err = Broken("connection reset")
    src = ScriptedSource([], [[informer.Added("a", 3), err], [informer.Added("b", 4)]])
    got = await take(informer.list_then_watch(src, Backoff(base=0.01, cap=0.01), version=2), 3)
    assert got[0] == informer.Added("a", 3)
    assert isinstance(got[1], informer.Retrying)
    assert got[1].error is err
    assert 0 <= got[1].delay <= 0.01
    assert got[2] == informer.Added("b", 4)
    assert src.watched_from == [2, 3]


async def test_a_consumer_that_stops_at_an_error_never_waits() -> None:
    src = ScriptedSource([], [[Broken("no such kind")]])
    # an async generator, which its annotation (an iterator) does not say: closed here
    events = cast(
        AsyncGenerator[informer.Event[str, int], None],
        informer.list_then_watch(src, Backoff(base=3600, cap=3600), version=1),
    )
    got = await take(events, 1)
    await events.aclose()  # would hang on the hour-long sleep if it had started
    assert isinstance(got[0], informer.Retrying)
