"""Kinds: one list-then-watch per owned kind fills the live-object cache and queues the
binding of every object that changes, so drift comes back. Reconciling waits until every
kind is listed once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from agents import fluid, informer
from agents import live as live_objects
from agents.kube import Kube
from agents.live import LiveCache
from agents.queue import WorkQueue
from agents.state import AgentState
from fluidfed import names
from fluidfed.backoff import Backoff
from fluidfed.errors import KubeError

log = logging.getLogger("fluidfed.agent.kinds")

SIDECAR_KINDS = [
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("v1", "Service"),
    ("apps/v1", "StatefulSet"),
    ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"),
]
FLUID_API = names.FLUID_API
FLUID_KINDS = [(FLUID_API, k) for k in fluid.OWNED_KINDS]
OWNED_KINDS = SIDECAR_KINDS + FLUID_KINDS
OWNED = names.OWNED_SELECTOR

KubeObject = dict[str, Any]
KindEvent = informer.Event[KubeObject, str]


def binding_to_queue(obj: KubeObject, state: AgentState, webhook_serving: bool) -> str | None:
    """The binding to reconcile when `obj` changed: ours or one being finalized, or the
    webhook's owner while this agent serves the webhook; None for anything else."""
    name = live_objects.owner_of(obj)
    if name is None:
        return None
    if name in state.bindings or name in state.finalize:
        return name
    if name == names.WEBHOOK_OWNER and webhook_serving:
        return name
    return None


class KubeKind:
    """The agent's objects of one kind, as an informer source."""

    def __init__(self, kube: Kube, api_version: str, kind: str) -> None:
        self.kube = kube
        self.api_version = api_version
        self.kind = kind

    def _typed(self, obj: KubeObject) -> KubeObject:
        obj.setdefault("apiVersion", self.api_version)
        obj.setdefault("kind", self.kind)
        return obj

    async def list(self) -> tuple[list[KubeObject], str]:
        items, rv = await self.kube.list(self.api_version, self.kind, OWNED)
        return [self._typed(o) for o in items], rv

    async def watch(self, version: str) -> AsyncIterator[informer.Change[KubeObject, str]]:
        async for etype, raw in self.kube.watch(self.api_version, self.kind, OWNED, version):
            obj = self._typed(raw)
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if etype == "DELETED":
                yield informer.Deleted(obj, rv)
            elif etype == "ADDED":
                yield informer.Added(obj, rv)
            elif etype == "MODIFIED":
                yield informer.Modified(obj, rv)
            else:
                yield informer.Bookmark(rv)

    def too_old(self, error: Exception) -> bool:
        return isinstance(error, KubeError) and error.status == 410


@dataclasses.dataclass(eq=False)
class KindFollower:
    source: KubeKind
    live: LiveCache
    queue: WorkQueue
    state: AgentState
    webhook_serving: Callable[[], bool]
    backoff: Backoff
    synced: asyncio.Event = dataclasses.field(default_factory=asyncio.Event, init=False)

    async def run(self) -> None:
        async for ev in informer.list_then_watch(self.source, self.backoff):
            if not self.handle(ev):
                return

    def handle(self, ev: KindEvent) -> bool:
        """Apply one event to the cache; False when there is nothing to follow."""
        match ev:
            case informer.Listed(items=items):
                gone = self.live.replace_kind(self.source.api_version, self.source.kind, items)
                for obj in gone:
                    self._queue_owner(obj)
                self.synced.set()
            case informer.Added(obj=obj) | informer.Modified(obj=obj):
                self.live.put(obj)
                self._queue_owner(obj)
            case informer.Deleted(obj=obj):
                self.live.remove(live_objects.key_of(obj))
                self._queue_owner(obj)
            case informer.Retrying(error=KubeError(status=404, temporary=False)):
                # the cluster does not serve this kind (no Fluid here): nothing to follow
                self.synced.set()
                return False
            case informer.Retrying(error=KubeError(status=403) as err, delay=delay):
                # not allowed to list it (a ClusterRole from an older version, say): say
                # why, and let reconciling go on without it rather than wait for ever
                log.error(
                    "the agent may not list %s (%s): apply configs/deploy/agent.yaml's "
                    "ClusterRole; retrying in %.1fs",
                    self.source.kind,
                    err,
                    delay,
                )
                self.synced.set()
            case informer.Retrying(error=KubeError(temporary=False) as err, delay=delay):
                log.error("listing %s failed: %s; retrying in %.1fs", self.source.kind, err, delay)
            case informer.Retrying(error=KubeError()):
                pass  # temporary (a restart of the API server): the informer retries
            case informer.Retrying(error=err, delay=delay):
                log.error(
                    "watching %s failed; retrying in %.1fs", self.source.kind, delay, exc_info=err
                )
        return True

    def _queue_owner(self, obj: KubeObject) -> None:
        name = binding_to_queue(obj, self.state, self.webhook_serving())
        if name is not None:
            self.queue.add(name)


async def wait_for_sync(followers: list[KindFollower]) -> None:
    """Reconciling starts once every owned kind is listed; say what is slow."""
    while True:
        pending = [f.source.kind for f in followers if not f.synced.is_set()]
        if not pending:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await asyncio.gather(*(f.synced.wait() for f in followers))
            continue
        log.warning("still listing %s from the cluster", ", ".join(pending))
