"""The hub's autoscaler: keeps each binding's recent metrics, runs the pure decision on a
period, and writes the replicas (with the reason) into the binding through the catalog."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from fluidfed.models import AutoscaleDecision, BindingStatus
from hub import autoscale
from hub.catalog import Catalog

log = logging.getLogger("fluidfed.hub.autoscaler")


class Autoscaler:
    def __init__(
        self,
        catalog: Catalog,
        *,
        interval: float = 15.0,
        stale_after: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.catalog = catalog
        self.interval = interval
        self.stale_after = stale_after
        self.clock = clock
        self.windows: dict[str, deque[autoscale.Sample]] = {}
        self.recommendations: dict[str, list[autoscale.Recommendation]] = {}
        self.wake = asyncio.Event()  # new metrics: decide now, not at the next period

    def observe(self, binding: str, status: BindingStatus) -> None:
        """Keep the metrics an agent reported with a binding's status."""
        m = status.metrics
        if m.empty():
            return
        sample = autoscale.Sample(
            at=self.clock(),
            cache_used_ratio=m.cache_used_ratio,
            hit_ratio=m.hit_ratio,
            read_bytes_per_second=m.read_bytes_per_second,
        )
        self.windows.setdefault(binding, deque(maxlen=4096)).append(sample)
        self.wake.set()

    def _horizon(self, binding: str) -> float:
        b = self.catalog.bindings[binding]
        p = b.spec.autoscale
        spans = [self.stale_after, 600.0]
        if p is not None:
            spans += [p.scale_up_window, p.scale_down_window, p.idle_after]
        return max(spans) * 1.1

    async def tick(self) -> list[autoscale.Decision]:
        now = self.clock()
        made = []
        for name, b in list(self.catalog.bindings.items()):
            policy = b.spec.autoscale
            if policy is None or b.deleting:
                continue
            horizon = self._horizon(name)
            window = self.windows.get(name, deque())
            while window and now - window[0].at > horizon:
                window.popleft()
            recs = [r for r in self.recommendations.get(name, []) if now - r.at <= horizon]
            d = autoscale.decide(
                autoscale.within(policy, b.spec.cache),
                list(window),
                b.replicas,
                recs,
                now,
                stale_after=self.stale_after,
            )
            if d is None:
                continue  # no (fresh) metrics: no decision, never a scale to zero
            self.recommendations[name] = [*recs, autoscale.Recommendation(now, d.recommendation)]
            if d.changed:
                await self.catalog.scale(
                    name,
                    AutoscaleDecision(
                        at=now, current=d.current, replicas=d.replicas, reason=d.reason
                    ),
                )
                made.append(d)
        for gone in set(self.windows) - set(self.catalog.bindings):
            self.windows.pop(gone, None)
            self.recommendations.pop(gone, None)
        return made

    async def run(self, min_gap: float = 0.2) -> None:
        """Decide every `interval`, and as soon as new metrics arrive (at most every
        `min_gap` seconds): scale-up reacts within one export of the load step."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self.wake.wait()
            self.wake.clear()
            try:
                await self.tick()
            except Exception:  # a failing store, say: the next round decides again
                log.exception("autoscaling failed; deciding again at the next round")
            await asyncio.sleep(min_gap)
