"""Status reporter: send the statuses and finalizations the hub has not heard yet; they
stay on disk while the hub is away."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time

import msgspec

from agents import store as published
from agents.hub_link import HubLink
from agents.store import Store
from fluidfed.errors import HubUnreachable, NotFound, ServerError, Unauthorized

log = logging.getLogger("fluidfed.agent.reporter")


@dataclasses.dataclass(eq=False)
class StatusReporter:
    link: HubLink
    store: Store
    interval: float

    async def run(self) -> None:
        wake = self.store.wake_reporter
        while True:
            try:
                await self.send_pending()
            except (HubUnreachable, ServerError, Unauthorized):
                self.store.hub_lost()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await wake.wait()
            wake.clear()

    async def send_pending(self) -> None:
        hub = self.link.client
        state = self.store.state
        for name in list(state.unsent):
            current = state.statuses.get(name)
            if current is not None and name in state.bindings:
                st = msgspec.structs.replace(
                    current, hub_last_seen=state.hub_last_seen, reported_at=time.time()
                )
                # NotFound: the binding is gone at the hub; nothing to report
                with contextlib.suppress(NotFound):
                    await hub.report_status(name, st)
            # a newer status may have come while this one was on its way: keep that one
            if published.mark_sent(state, name, current):
                await self.store.save()
        for name in list(state.finalize):
            with contextlib.suppress(NotFound):
                await hub.finalize_binding(name)
            published.finalized(state, name)
            await self.store.save()
            log.info("binding %s cleaned up and finalized at the hub", name)
