"""One watch stream: the catalog's events after a revision, as newline-delimited JSON, with
bookmarks while quiet; it ends in-band with an ERROR event when the watcher fell behind the
kept history, and at once when the hub is stopping (the agent reconnects)."""

from __future__ import annotations

import asyncio
import contextlib
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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_either(tick, closing), timeout=interval)
            continue
        # quiet for a while: a bookmark moves the watcher's revision forward
        revision = max(revision, cat.revision)
        await out.write(codec.encode(WatchEvent(type="BOOKMARK", revision=revision)) + b"\n")


async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
