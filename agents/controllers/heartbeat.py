"""Heartbeat: renew the cluster's lease at the hub now and then."""

from __future__ import annotations

import asyncio
import contextlib
import time

from agents.hub_link import HubLink
from agents.store import Store
from fluidfed.errors import FluidfedError


async def run(link: HubLink, store: Store, interval: float) -> None:
    while True:
        with contextlib.suppress(FluidfedError):
            if link.token:
                await link.client.heartbeat(link.cluster.name)
                store.heard_from_hub(time.time())
        await asyncio.sleep(interval)
