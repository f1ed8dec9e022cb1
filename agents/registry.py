"""The cache workers of this cluster as they report themselves to the agent. Pure: the
agent's API feeds it, the load runner and the status read it."""

from __future__ import annotations

from dataclasses import dataclass

from fluidfed.data import protocol


@dataclass
class WorkerReport:
    url: str
    dataset: str
    seen: float
    status: protocol.WorkerStatus


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

    def disks(self, dataset: str, now: float) -> tuple[int, int] | None:
        """(blocks not kept, blocks evicted to keep the disk's floor free) over the dataset's
        live workers, since each started: what their disk tiers could not hold (a full or
        failing disk, `min_free`); None if none report."""
        live = self.alive(dataset, now)
        if not live:
            return None
        not_kept = sum(w.status.writes.errors + w.status.writes.no_room for w in live)
        return not_kept, sum(w.status.writes.shed for w in live)
