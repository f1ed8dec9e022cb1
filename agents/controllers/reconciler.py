"""Reconciler: for each queued binding render what it wants, compare with the live cache,
apply what differs, delete what it no longer wants, and publish its status. A retired
binding's objects are deleted and it is queued for finalization at the hub.

Errors: every failed apply or delete is recorded in the binding's status. When any was
temporary (a timeout, a 5xx, 429), the binding is queued again after a growing delay;
a permanent one waits for the next change or resync instead of looping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from agents import diff, objects, render, status, trust
from agents import live as live_objects
from agents.controllers.warmup import WarmUps
from agents.controllers.webhook import SidecarWebhook
from agents.kube import Kube
from agents.live import LiveCache
from agents.observed import Observed
from agents.queue import WorkQueue
from agents.store import Store
from fluidfed import names
from fluidfed.errors import KubeError

log = logging.getLogger("fluidfed.agent.reconciler")


@dataclasses.dataclass(eq=False)
class Reconciler:
    kube: Kube
    ctx: objects.ClusterContext
    live: LiveCache
    store: Store
    queue: WorkQueue
    observed: Observed
    warmups: WarmUps
    webhook: SidecarWebhook
    reconciles: int = dataclasses.field(default=0, init=False)
    errors: dict[str, str] = dataclasses.field(default_factory=dict, init=False)  # last logged
    known_namespaces: set[str] = dataclasses.field(default_factory=set, init=False)

    async def work(self, synced: asyncio.Event) -> None:
        """One worker: take a name, reconcile it, requeue it if the failure was temporary."""
        await synced.wait()
        while True:
            name = await self.queue.get()
            try:
                temporary = await self.reconcile(name)
            except Exception as err:
                log.exception("reconciling %s failed", name)
                temporary = bool(getattr(err, "temporary", False))
            finally:
                self.queue.done(name)
            if temporary:
                delay = self.queue.retry_later(name)
                log.info("binding %s: temporary error, trying again in %.1fs", name, delay)
            else:
                self.queue.forget(name)

    async def reconcile(self, name: str) -> bool:
        """Make the cluster hold what binding `name` wants; True when a temporary error
        stood in the way."""
        self.reconciles += 1
        if name == names.WEBHOOK_OWNER:
            if self.webhook.config is not None:
                await self.ensure(self.webhook.config)
            return False
        b = self.store.state.bindings.get(name)
        if b is None or b.deleting:
            self.warmups.stop(name)  # a repeating warm-up would go on loading forever
            await self.clean_up(name, finalize=b is not None)
            return False
        creds = (
            await self.store.data_credentials(name, time.time())
            if objects.runs_workers(b)
            else trust.DataCredentials(keys=())
        )
        wanted = render.desired(b, self.ctx, creds)
        keep = {live_objects.key_of(o) for o in wanted}
        errors: list[KubeError] = []
        for obj in wanted:
            try:
                await self.ensure(obj)
            except KubeError as err:
                errors.append(err)
        # what this binding made before but no longer needs (an access entry removed, ...)
        for k in self.live.owned_by(name):
            if k not in keep:
                try:
                    await self.kube.delete(*k)
                except KubeError as err:
                    errors.append(err)
        # (a binding its cluster's sidecars cannot serve: said here, not only at admission)
        refused = self.webhook.refuses(b)
        error = "; ".join([str(e) for e in errors] + ([refused] if refused else []))
        if error and error != self.errors.get(name):
            log.warning("binding %s: %s", name, error)
        self.errors[name] = error
        st = status.compute(
            b,
            self.live.objects,
            error=error,
            hub_last_seen=self.store.state.hub_last_seen,
            now=time.time(),
        )
        self.warmups.maybe_start(b)
        await self.store.publish(name, self.observed.fold(b, st))
        return any(e.temporary for e in errors)

    async def ensure(self, obj: dict[str, Any]) -> None:
        if obj["kind"] == "Namespace":
            ns = obj["metadata"]["name"]
            if ns in self.known_namespaces:
                return
            if await self.kube.get("v1", "Namespace", "", ns) is None:
                await self.kube.apply(obj)
            self.known_namespaces.add(ns)
            return
        cached = self.live.get(live_objects.key_of(obj))
        if diff.needs_apply(obj, cached):
            got = await self.kube.apply(obj)
            got.setdefault("apiVersion", obj["apiVersion"])
            got.setdefault("kind", obj["kind"])
            self.live.put_answer(got, cached)

    async def clean_up(self, name: str, *, finalize: bool) -> None:
        owned = self.live.owned_by(name)
        for k in owned:
            await self.kube.delete(*k)
            self.live.remove(k)
        if await self.store.retire(name, finalize=finalize):
            log.info("binding %s retired: deleted %d objects", name, len(owned))
