"""One watch stream: the catalog's events after a revision, as newline-delimited JSON, with
bookmarks while quiet; it ends in-band with an ERROR event when the watcher fell behind the
kept history, and at once when the hub is stopping (the agent reconnects)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from fluidfed import codec, errors
from fluidfed.models import WatchEvent
from hub.catalog import Catalog


class Writer(Protocol):
    async def write(self, data: bytes) -> None: ...


async def stream(
    out: Writer,
    cat: Catalog,
    cluster: str | None,
    revision: int,
    *,
    interval: float,
    closing: asyncio.Event,
) -> None:
    # Every commit wakes every watcher, so a wake-up must cost little: the stream waits on
    # the catalog's tick in its own task under a timeout (no task per wait), and `closing`
    # cuts the running timeout short.
    waiting: asyncio.Timeout | None = None

    def close(_: object) -> None:
        if waiting is not None:
            waiting.reschedule(-1)

    closer = asyncio.ensure_future(closing.wait())
    closer.add_done_callback(close)
    quiet = False  # the last wait timed out: nothing new for a while
    try:
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
                continue
            if closing.is_set():
                return
            if quiet:
                # nothing for this watcher up to the catalog's revision, both read just now
                # (a timeout can fire as a commit wakes the watch: never skip past that
                # commit unread): a bookmark moves the watcher's revision forward
                revision = max(revision, cat.revision)
                bookmark = WatchEvent(type="BOOKMARK", revision=revision)
                await out.write(codec.encode(bookmark) + b"\n")
            try:
                async with asyncio.timeout(interval) as waiting:
                    await tick.wait()
                quiet = False
            except TimeoutError:
                quiet = True
            finally:
                waiting = None
    finally:
        closer.cancel()
