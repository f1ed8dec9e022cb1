"""The cache workers of this cluster as they report themselves to the agent. Pure: the
agent's API feeds it, the load runner and the status read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from fluidfed.data import protocol


@dataclass
class WorkerReport:
    url: str
    dataset: str
    seen: float
    status: protocol.WorkerStatus


class Disks(NamedTuple):
    """What a dataset's live workers' disk tiers could not hold: blocks not kept (a full or
    failing disk, `min_free`) and blocks evicted to keep a disk's floor free, since each
    worker started; and the workers with a tier that keeps no block now (its disk below
    the floor even without its blocks)."""

    not_kept: int
    shed: int
    full: int


class Registry:
    def __init__(self, ttl: float = 10.0) -> None:
        self.ttl = ttl
        self._workers: dict[tuple[str, str], WorkerReport] = {}

    def report(self, reg: protocol.WorkerRegistration, now: float) -> None:
        url = reg.url.rstrip("/")
        self._workers[(reg.dataset, url)] = WorkerReport(url, reg.dataset, now, reg.status)

    def alive(self, dataset: str, now: float) -> list[WorkerReport]:
        for key, w in list(self._workers.items()):
            if now - w.seen > 6 * self.ttl:
                del self._workers[key]  # long gone: forget it
        return sorted(
            (
                w
                for w in self._workers.values()
                if w.dataset == dataset and now - w.seen <= self.ttl
            ),
            key=lambda w: w.url,
        )

    def cache(self, dataset: str, now: float) -> tuple[int, int, float | None] | None:
        """(used, capacity, hit ratio) over the dataset's live workers; None if none report."""
        live = self.alive(dataset, now)
        if not live:
            return None
        used = sum(w.status.used for w in live)
        capacity = sum(w.status.capacity for w in live)
        hits = sum(w.status.hits for w in live)
        misses = sum(w.status.misses for w in live)
        ratio = hits / (hits + misses) if hits + misses else None
        return used, capacity, ratio

    def disks(self, dataset: str, now: float) -> Disks | None:
        """`Disks` over the dataset's live workers; None if none report."""
        live = self.alive(dataset, now)
        if not live:
            return None
        return Disks(
            not_kept=sum(w.status.writes.errors + w.status.writes.no_room for w in live),
            shed=sum(w.status.writes.shed for w in live),
            full=sum(any(t.short for t in w.status.tiers) for w in live),
        )
