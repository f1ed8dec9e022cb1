"""Heartbeat: renew the cluster's lease at the hub now and then."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

from agents.hub_link import HubLink
from agents.store import Store
from fluidfed.errors import FluidfedError


@dataclasses.dataclass(eq=False)
class Heartbeat:
    link: HubLink
    store: Store
    interval: float

    async def run(self) -> None:
        while True:
            with contextlib.suppress(FluidfedError):
                if self.link.token:
                    await self.link.client.heartbeat(self.link.cluster.name)
                    self.store.heard_from_hub(time.time())
            await asyncio.sleep(self.interval)
