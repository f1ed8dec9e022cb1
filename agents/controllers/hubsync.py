"""Hub sync: register if needed, list then watch this cluster's bindings from the last
revision, keep them in the state on disk and queue every binding that changed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from agents import informer
from agents.hub_link import HubLink
from agents.queue import WorkQueue
from agents.state import AgentState
from agents.store import Store
from fluidfed.backoff import Backoff
from fluidfed.errors import FluidfedError, Gone
from fluidfed.models import Binding

log = logging.getLogger("fluidfed.agent.hubsync")

HubEvent = informer.Event[Binding, int]


def apply_listing(state: AgentState, listed: list[Binding], revision: int) -> list[str]:
    """A full listing replaces the bindings; returns the names to reconcile (gone or
    changed)."""
    fresh = {b.name: b for b in listed}
    changed = sorted(set(state.bindings) - set(fresh))
    for name in changed:
        state.bindings.pop(name)
    for name, b in fresh.items():
        if state.bindings.get(name) != b:
            state.bindings[name] = b
            changed.append(name)
    state.revision = revision
    return changed


def apply_change(state: AgentState, change: informer.Change[Binding, int]) -> list[str]:
    """One watch event; returns the names to reconcile."""
    state.revision = change.version
    match change:
        case informer.Deleted(obj=b):
            state.bindings.pop(b.name, None)
        case informer.Added(obj=b) | informer.Modified(obj=b):
            state.bindings[b.name] = b
        case _:
            return []
    return [b.name]


class HubBindings:
    """The hub's bindings of one cluster, as an informer source."""

    def __init__(self, link: HubLink) -> None:
        self.link = link

    async def list(self) -> tuple[list[Binding], int]:
        await self.link.ensure_registered()
        listed = await self.link.client.list_bindings(self.link.cluster.name)
        return listed.items, listed.revision

    async def watch(self, version: int) -> AsyncIterator[informer.Change[Binding, int]]:
        await self.link.ensure_registered()
        cluster = self.link.cluster.name
        async for ev in self.link.client.watch_bindings(cluster, revision=version):
            if ev.type == "BOOKMARK" or ev.object is None:
                yield informer.Bookmark(ev.revision)
            elif ev.type == "DELETED":
                yield informer.Deleted(ev.object, ev.revision)
            elif ev.type == "ADDED":
                yield informer.Added(ev.object, ev.revision)
            else:
                yield informer.Modified(ev.object, ev.revision)

    def too_old(self, error: Exception) -> bool:
        return isinstance(error, Gone)


class HubSync:
    def __init__(self, link: HubLink, store: Store, queue: WorkQueue, backoff: Backoff) -> None:
        self.source = HubBindings(link)
        self.store = store
        self.queue = queue
        self.backoff = backoff

    async def run(self) -> None:
        state = self.store.state
        delays = self.backoff.delays()
        while True:
            events = informer.list_then_watch(
                self.source, self.backoff, version=state.revision or None
            )
            try:
                async for ev in events:
                    await self.handle(ev)
            except Exception:
                # the state could not be saved, say: start again from the saved revision
                delay = next(delays)
                log.exception("following the hub failed; retrying in %.1fs", delay)
                await asyncio.sleep(delay)

    async def handle(self, ev: HubEvent) -> None:
        state = self.store.state
        match ev:
            case informer.Listed(items=items, version=revision):
                self.store.heard_from_hub(time.time())
                self._queue(apply_listing(state, items, revision))
                await self.store.save()
                log.info("listed %d bindings at revision %d", len(items), revision)
            case informer.Relisting():
                log.info("revision %d is too old at the hub: listing again", state.revision)
                state.revision = 0
            case informer.Retrying(error=err, delay=delay):
                self._log_retry(err, delay)
            case _:
                self.store.heard_from_hub(time.time())
                self._queue(apply_change(state, ev))
                await self.store.save()

    def _queue(self, names: list[str]) -> None:
        for name in names:
            self.queue.add(name)

    def _log_retry(self, err: Exception, delay: float) -> None:
        if isinstance(err, FluidfedError) and err.temporary:
            self.store.hub_lost()
            log.warning("hub unavailable (%s); retrying in %.1fs", err, delay)
        elif isinstance(err, FluidfedError):
            log.error("%s; retrying in %.1fs", err, delay)
        else:
            log.error("following the hub failed; retrying in %.1fs", delay, exc_info=err)
