"""The cache workers of this cluster as they report themselves to the agent. Pure: the
agent's API feeds it, the load runner and the status read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class WorkerReport:
    url: str
    dataset: str
    seen: float
    status: dict[str, Any] = field(default_factory=dict)


class Registry:
    def __init__(self, ttl: float = 10.0) -> None:
        self.ttl = ttl
        self._workers: dict[tuple[str, str], WorkerReport] = {}

    def report(self, dataset: str, url: str, status: dict[str, Any], now: float) -> None:
        self._workers[(dataset, url)] = WorkerReport(url, dataset, now, status)

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
        used = sum(int(w.status.get("used", 0)) for w in live)
        capacity = sum(int(w.status.get("capacity", 0)) for w in live)
        hits = sum(int(w.status.get("hits", 0)) for w in live)
        misses = sum(int(w.status.get("misses", 0)) for w in live)
        ratio = hits / (hits + misses) if hits + misses else None
        return used, capacity, ratio
