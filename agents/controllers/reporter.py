"""Status reporter: send the statuses and finalizations the hub has not heard yet; they
stay on disk while the hub is away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec

from agents import store as published
from agents.hub_link import HubLink
from agents.store import Store
from fluidfed.errors import BadRequest, FluidfedError, NotFound, Unauthorized

log = logging.getLogger("fluidfed.agent.reporter")


async def run(link: HubLink, store: Store, interval: float) -> None:
    """Send what is pending whenever the store wakes us, and every `interval` anyway."""
    while True:
        try:
            await send_pending(link, store)
        except FluidfedError as err:
            # the hub away (temporary) or not taking this token: try again later
            store.hub_lost()
            if not (err.temporary or isinstance(err, Unauthorized)):
                log.error("reporting to the hub failed: %s", err)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await store.wake_reporter.wait()
        store.wake_reporter.clear()


async def send_pending(link: HubLink, store: Store) -> None:
    hub = link.client
    state = store.state
    for name in list(state.unsent):
        current = state.statuses.get(name)
        if current is not None and name in state.bindings:
            st = msgspec.structs.replace(
                current, hub_last_seen=state.hub_last_seen, reported_at=time.time()
            )
            try:
                await hub.report_status(name, st)
            except NotFound:
                pass  # the binding is gone at the hub; nothing to report
            except BadRequest as err:
                # resending the same status cannot help: say so once, and go on
                log.error("the hub refused the status of %s: %s", name, err)
        # a newer status may have come while this one was on its way: keep that one
        if published.mark_sent(state, name, current):
            await store.save()
    for name in list(state.finalize):
        with contextlib.suppress(NotFound):
            await hub.finalize_binding(name)
        published.finalized(state, name)
        await store.save()
        log.info("binding %s cleaned up and finalized at the hub", name)
