"""The hub's watch log: every binding event of the kept history, encoded once and sent to
every watcher. Pure. Bounded by count and by bytes; trimmed in chunks and by whole
revisions only, since a watch resumes between revisions, never inside one.

Indexed by cluster too: an agent's watch reads only its own cluster's events, so what one
watcher costs does not grow with the number of clusters (a dataset placed on N clusters
is N events in one revision: scanning them all for each of N watchers was N² per apply)."""

from __future__ import annotations

import bisect
import operator
from collections import Counter

import msgspec

from fluidfed import codec, errors
from fluidfed.models import Binding, WatchEvent


class LogEntry(msgspec.Struct, frozen=True, gc=False):
    """Untracked by the garbage collector (an int, a str and bytes: never a cycle). The
    log holds a few applies' worth, one per cluster each: every apply to N clusters left N
    more objects for each full collection to walk (py-spy put 18-31% of a hub's samples at
    5,000 watches in the collector; bench/hub_fanout.py --profile)."""

    revision: int
    cluster: str
    line: bytes  # the encoded WatchEvent, newline-terminated: encoded once, sent to many


class WatchLog:
    def __init__(self, count: int, size: int) -> None:
        self.count = count  # events kept, at most ...
        self.size = size  # ... and bytes
        self.compacted = 0  # watches from before this revision are Gone
        self._entries: list[LogEntry] = []
        self._revisions: list[int] = []
        self._by_cluster: dict[str, list[LogEntry]] = {}  # the same entries, per cluster
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, rev: int, etype: str, b: Binding) -> None:
        event = WatchEvent(type=etype, revision=rev, object=b)  # type: ignore[arg-type]
        line = codec.encode(event) + b"\n"
        entry = LogEntry(rev, b.cluster, line)
        self._entries.append(entry)
        self._revisions.append(rev)
        self._by_cluster.setdefault(b.cluster, []).append(entry)
        self.bytes += len(line)
        over_count = len(self._entries) > self.count + self.count // 4
        if over_count or self.bytes > self.size + self.size // 4:
            self._trim()

    def _trim(self) -> None:
        entries = self._entries
        cut = max(0, len(entries) - self.count)
        kept = self.bytes - sum(len(e.line) for e in entries[:cut])
        while kept > self.size and cut < len(entries) - 1:
            kept -= len(entries[cut].line)
            cut += 1
        if cut == 0:
            return
        dropped = self._revisions[cut - 1]
        cut = bisect.bisect_right(self._revisions, dropped)
        self.bytes -= sum(len(e.line) for e in entries[:cut])
        # the oldest entries of each cluster are the ones dropped
        for cluster, dropped_count in Counter(e.cluster for e in entries[:cut]).items():
            own = self._by_cluster[cluster]
            del own[:dropped_count]
            if not own:
                del self._by_cluster[cluster]
        del entries[:cut]
        del self._revisions[:cut]
        self.compacted = max(self.compacted, dropped)

    def since(self, revision: int, cluster: str | None, current: int) -> list[LogEntry]:
        """The events after `revision` (of `cluster`, or all); Gone for a revision older
        than the kept history or newer than `current`."""
        if revision < self.compacted:
            raise errors.Compacted(revision, self.compacted)
        if revision > current:
            raise errors.RevisionAhead(revision, current)
        if cluster is None:
            return self._entries[bisect.bisect_right(self._revisions, revision) :]
        own = self._by_cluster.get(cluster)
        if not own or own[-1].revision <= revision:
            return []
        return own[bisect.bisect_right(own, revision, key=_revision) :]


_revision = operator.attrgetter("revision")
