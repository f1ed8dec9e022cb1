"""One watch stream: the catalog's events after a revision, as newline-delimited JSON, with
bookmarks while quiet; it ends in-band with an ERROR event when the watcher fell behind the
kept history, and at once when the hub is stopping (the agent reconnects).

Every commit wakes every stream (each waits on the catalog's tick), so a wake-up must cost
little: no task and no timer per wait. One bookmark clock for all the streams (`Clock`)
says when a quiet stream is due a bookmark, and wakes the streams itself only when no
commit did."""

from __future__ import annotations

import asyncio
from typing import Protocol

from fluidfed import codec, errors
from fluidfed.models import WatchEvent
from hub.catalog import Catalog

DUE = 2  # beats a stream may send nothing for before its bookmark (a beat: half the interval)


class Writer(Protocol):
    async def write(self, data: bytes) -> None: ...


class Clock:
    """The bookmark clock of a hub's watch streams, and what ends them on shutdown.

    It beats every half bookmark interval; a stream that sent nothing over the last two
    beats sends a bookmark when next woken: a quiet stream's bookmark comes between half
    an interval and one and a half after its last line, then one each interval. Commits
    wake the streams, and the clock wakes them only after a beat with no commit.

    It replaces a timer per stream (`asyncio.timeout` around each wait, entered and left
    at every commit: 12-16% of a replica's samples at 5,000 watches, bench/hub_fanout.py
    --profile), which also started over at every commit: a stream whose cluster had no
    change never got a bookmark while any commit came more often than the interval (on
    etcd, the replicas' heartbeats every few seconds)."""

    def __init__(self, cat: Catalog, interval: float) -> None:
        self.cat = cat
        self.period = interval / DUE
        self.beats = 0
        self.closing = False
        self._seen: asyncio.Event | None = None  # the catalog's tick at the last beat

    def beat(self) -> None:
        self.beats += 1
        if self.cat.tick is self._seen:  # no commit woke the streams since the last beat
            self.cat.wake()
        self._seen = self.cat.tick

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            self.beat()

    def close(self) -> None:
        """End every stream (at its next wake-up: now)."""
        self.closing = True
        self.cat.wake()


async def stream(
    out: Writer, cat: Catalog, cluster: str | None, revision: int, *, clock: Clock
) -> None:
    sent = clock.beats  # the beat in which the stream last sent something
    while True:
        tick = cat.tick
        try:
            entries = cat.events_since(revision, cluster)
        except errors.Gone:
            # fell behind compaction while streaming: say so in-band and end the stream
            gone = WatchEvent(type="ERROR", revision=cat.revision, error="410 Gone")
            await out.write(codec.encode(gone) + b"\n")
            return
        if entries:
            await out.write(b"".join(e.line for e in entries))
            revision = entries[-1].revision
            sent = clock.beats
            continue
        if clock.closing:
            return
        if clock.beats - sent >= DUE:
            # nothing for this watcher up to the catalog's revision, both read just now (never
            # skip past a commit unread): a bookmark moves the watcher's revision forward
            revision = max(revision, cat.revision)
            bookmark = WatchEvent(type="BOOKMARK", revision=revision)
            await out.write(codec.encode(bookmark) + b"\n")
            sent = clock.beats
            continue  # (a commit may have come during the write)
        await tick.wait()
