"""Resync and refresh: now and then queue every binding again (a missed event is never
lost for long), and fold the cache workers' figures and warm-up progress into the last
statuses, which change without any Kubernetes object changing."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from agents.observed import Observed
from agents.queue import WorkQueue
from agents.store import Store


async def resync(store: Store, queue: WorkQueue, interval: float) -> None:
    """Queue every binding again now and then."""
    while True:
        await asyncio.sleep(interval)
        for name in store.state.bindings:
            queue.add(name)


@dataclasses.dataclass(eq=False)
class StatusRefresh:
    store: Store
    observed: Observed
    interval: float
    metrics_window: float
    _background: set[asyncio.Task[None]] = dataclasses.field(default_factory=set, init=False)

    def on_metrics(self, datasets: set[str]) -> None:
        """New OTLP figures: send the affected bindings' statuses now."""
        task = asyncio.create_task(self.refresh(datasets))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def refresh(self, datasets: set[str] | None = None) -> None:
        state = self.store.state
        for name, b in list(state.bindings.items()):
            st = state.statuses.get(name)
            if st is None or b.deleting or (datasets is not None and b.dataset not in datasets):
                continue
            await self.store.publish(name, self.observed.fold(b, st))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.observed.window.forget_before(time.time() - 10 * self.metrics_window)
            await self.refresh()
