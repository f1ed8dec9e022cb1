"""One watch stream against a catalog that commits while the stream waits and times out."""

import asyncio
from pathlib import Path

from devkit import testing
from fluidfed import codec
from fluidfed.models import Cluster, WatchEvent
from hub import watch
from hub.catalog import Catalog
from hub.store import SQLiteStore

_event_dec = codec.decoder(WatchEvent)


class Lines:
    def __init__(self) -> None:
        self.events: list[WatchEvent] = []

    async def write(self, data: bytes) -> None:
        self.events += [_event_dec.decode(line) for line in data.splitlines()]


async def test_bookmarks_never_skip_a_commit_that_races_a_timeout(tmp_path: Path) -> None:
    cat = Catalog(SQLiteStore(tmp_path / "catalog.db"))
    await cat.load()
    await cat.register_cluster(Cluster(name="a"))
    start = cat.revision
    out, closing = Lines(), asyncio.Event()
    # a bookmark interval of 0: every wait times out, most of them as a commit lands
    stream = asyncio.create_task(watch.stream(out, cat, "a", start, interval=0, closing=closing))
    for i in range(30):
        await cat.apply_dataset(testing.dataset(f"d{i}"))
    await asyncio.sleep(0.05)
    closing.set()
    await asyncio.wait_for(stream, 5)
    added = [e.object.dataset for e in out.events if e.type == "ADDED" and e.object]
    assert added == [f"d{i}" for i in range(30)]  # none missed, none repeated, in order
    revisions = [e.revision for e in out.events]
    assert revisions == sorted(revisions) and revisions[-1] == cat.revision
