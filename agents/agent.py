"""The agent: follow the hub, keep the desired state on disk, reconcile the cluster.

Tasks, all in one event loop:

* follow   - register if needed, list then watch the cluster's bindings from the last
             revision, relist on 410, reconnect with jittered backoff; writes state to disk.
* heartbeat - renews the cluster's lease at the hub.
* kinds    - one list-then-watch per owned kind fills a cache of live objects and queues the
             binding of every object that changes (drift comes back).
* workers  - reconcile queued bindings: render, compare with the cache, apply what differs,
             delete what is no longer wanted, compute the status.
* report   - sends statuses and finalizations the hub has not heard yet; keeps them on disk
             while the hub is away.

Reconciling starts from the state on disk at once, whether the hub answers or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from agents import api as agent_api
from agents import diff, render, status
from agents.kube import Kube, KubeError
from agents.metrics import MetricWindow
from agents.registry import Registry
from agents.state import AgentState, StateFile
from agents.webhook import mutate
from agents.webhook import server as webhook_server
from agents.webhook.certs import CertManager
from fluidfed import codec, names
from fluidfed.backoff import Backoff
from fluidfed.client import Client
from fluidfed.data import workers
from fluidfed.errors import FluidfedError, Gone, HubUnreachable, NotFound, ServerError, Unauthorized
from fluidfed.models import (
    AgentConfig,
    Binding,
    BindingStatus,
    Cluster,
    LoadRequest,
    LoadStatus,
)

log = logging.getLogger("fluidfed.agent")

SIDECAR_KINDS = [
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "StatefulSet"),
    ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"),
]
FLUID_API = f"{names.FLUID_GROUP}/{names.FLUID_VERSION}"
FLUID_KINDS = [(FLUID_API, "Dataset"), *((FLUID_API, k) for k in render.RUNTIME_KINDS.values())]
OWNED = f"{names.MANAGED_BY}={names.AGENT}"

Key = tuple[str, str, str, str]


def _key_of(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (
        obj.get("apiVersion", ""),
        obj.get("kind", ""),
        meta.get("namespace") or "",
        meta.get("name", ""),
    )


def _same_status(a: BindingStatus | None, b: BindingStatus) -> bool:
    if a is None:
        return False
    strip = {"reported_at": 0.0, "hub_last_seen": 0.0}
    return msgspec.structs.replace(a, **strip) == msgspec.structs.replace(b, **strip)


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        cluster: Cluster,
        kube: Kube,
        state_dir: Path,
        *,
        token: str = "",
        bootstrap_token: str = "",
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.kube = kube
        self.file = StateFile(state_dir)
        self.state: AgentState = self.file.load(cluster.name)
        self.token = token or self.file.load_token()
        self.bootstrap_token = bootstrap_token
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.ctx = render.ClusterContext(
            name=cluster.name, kind=cluster.kind, worker_image=cfg.worker_image
        )
        self.live: dict[Key, dict[str, Any]] = {}
        self.known_namespaces: set[str] = set()
        self.errors: dict[str, str] = {}
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.queued: set[str] = set()
        self.synced: dict[tuple[str, str], asyncio.Event] = {}
        self.hub_up = asyncio.Event()
        self.wake_report = asyncio.Event()
        self.hub: Client | None = None
        self.reconciles = 0
        self._save_lock = asyncio.Lock()
        self.webhook_config: dict[str, Any] | None = None
        self.webhook_url = ""
        self.certs: CertManager | None = None
        self.rotate_requested = asyncio.Event()
        self.all_synced = asyncio.Event()
        self.registry = Registry(ttl=max(10.0, 3 * cfg.status_interval))
        self.window = MetricWindow(window=cfg.metrics_window)
        self.loads: dict[str, LoadStatus] = {}
        self._load_tasks: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.api_url = ""

    # --- plumbing ------------------------------------------------------------------------

    def enqueue(self, name: str) -> None:
        if name not in self.queued:
            self.queued.add(name)
            self.queue.put_nowait(name)

    async def save(self) -> None:
        # encode here, where the state is not changing; write in a thread, one at a time
        data = codec.encode(self.state)
        async with self._save_lock:
            await asyncio.to_thread(self.file.write, data)

    async def run(self) -> None:
        log.info(
            "agent for cluster %s starting with %d bindings from %s (revision %d)",
            self.cluster.name,
            len(self.state.bindings),
            self.file.path,
            self.state.revision,
        )
        self.hub = Client(self.cfg.hub, self.token, timeout=15)
        kinds = SIDECAR_KINDS + FLUID_KINDS
        self.synced = {k: asyncio.Event() for k in kinds}
        for name in self.state.bindings:
            self.enqueue(name)
        for name in self.state.finalize:
            self.enqueue(name)
        api = await self._start_api()
        try:
            async with asyncio.TaskGroup() as tg:
                for api_version, kind in kinds:
                    tg.create_task(self._follow_kind(api_version, kind))
                tg.create_task(self._await_sync())
                for _ in range(self.cfg.workers):
                    tg.create_task(self._worker())
                tg.create_task(self._follow_hub())
                tg.create_task(self._heartbeat())
                tg.create_task(self._report())
                tg.create_task(self._resync())
                tg.create_task(self._refresh_statuses())
                if self.cfg.webhook and self.cluster.mount_mode() == "sidecar":
                    tg.create_task(self._webhook())
        finally:
            for t in self._load_tasks.values():
                t.cancel()
            await api.cleanup()
            await self.hub.close()

    async def _start_api(self) -> web.AppRunner:
        """The agent's API, where this cluster's cache workers register (before the first
        reconcile, so their config carries its URL)."""
        app = agent_api.make_app(self.registry, self.window, self._on_metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        # with port 0 the kernel picks one; keep it across restarts (it is in the workers'
        # config), unless something else took it meanwhile
        saved = self.file.dir / "api-port"
        port = self.cfg.api_port
        if not port and saved.exists():
            port = int(saved.read_text().strip() or 0)
        try:
            site = web.TCPSite(runner, self.cfg.api_host, port, reuse_address=True)
            await site.start()
        except OSError:
            site = web.TCPSite(runner, self.cfg.api_host, self.cfg.api_port, reuse_address=True)
            await site.start()
        port = int(runner.addresses[0][1])
        if not self.cfg.api_port:
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(f"{port}\n")
        self.api_url = self.cfg.api_url or f"http://{self.cfg.api_host}:{port}"
        self.ctx = dataclasses.replace(self.ctx, agent_url=self.api_url)
        log.info("agent API for cache workers on %s", self.api_url)
        return runner

    # --- the hub -------------------------------------------------------------------------

    def _client(self) -> Client:
        assert self.hub is not None
        return self.hub

    async def _ensure_registered(self) -> None:
        hub = self._client()
        if self.token:
            try:
                await hub.heartbeat(self.cluster.name)
                return
            except (Unauthorized, NotFound):
                if not self.bootstrap_token:
                    raise FluidfedError(
                        f"the hub does not accept this agent's token for cluster "
                        f"{self.cluster.name}; give a valid token or a bootstrap token to "
                        "register again"
                    ) from None
        if not self.bootstrap_token:
            raise FluidfedError(
                "no cluster token: set token_file or the token variable, or a bootstrap "
                "(admin) token so the agent can register its cluster"
            )
        async with Client(self.cfg.hub, self.bootstrap_token, timeout=15) as admin:
            result = await admin.register_cluster(self.cluster, rotate_token=True)
        self.token = result.token
        self.file.save_token(self.token)
        hub.token = self.token
        await hub.close()  # the session carries the old header
        log.info("registered cluster %s with the hub", self.cluster.name)

    async def _follow_hub(self) -> None:
        delays = self.backoff.delays()
        registered = False
        while True:
            try:
                if not registered:
                    await self._ensure_registered()
                    registered = True
                await self._list_and_watch()
            except Gone:
                log.info("revision %d is too old at the hub: listing again", self.state.revision)
                self.state.revision = 0
                continue
            except (HubUnreachable, ServerError) as err:
                self.hub_up.clear()
                delay = next(delays)
                log.warning("hub unavailable (%s); retrying in %.1fs", err, delay)
                await asyncio.sleep(delay)
                continue
            except FluidfedError as err:
                delay = next(delays)
                log.error("%s; retrying in %.1fs", err, delay)
                await asyncio.sleep(delay)
                continue
            except Exception:
                delay = next(delays)
                log.exception("following the hub failed; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                continue
            delays = self.backoff.delays()  # the stream ended cleanly: reconnect soon

    def _seen_hub(self) -> None:
        self.state.hub_last_seen = self.clock()
        if not self.hub_up.is_set():
            self.hub_up.set()
            self.wake_report.set()

    async def _list_and_watch(self) -> None:
        hub = self._client()
        if self.state.revision == 0:
            listed = await hub.list_bindings(self.cluster.name)
            self._seen_hub()
            fresh = {b.name: b for b in listed.items}
            for name in set(self.state.bindings) - set(fresh):
                self.state.bindings.pop(name)
                self.enqueue(name)
            for name, b in fresh.items():
                if self.state.bindings.get(name) != b:
                    self.state.bindings[name] = b
                    self.enqueue(name)
            self.state.revision = listed.revision
            await self.save()
            log.info("listed %d bindings at revision %d", len(fresh), listed.revision)
        async for ev in hub.watch_bindings(self.cluster.name, revision=self.state.revision):
            self._seen_hub()
            if ev.type != "BOOKMARK" and ev.object is not None:
                b = ev.object
                if ev.type == "DELETED":
                    self.state.bindings.pop(b.name, None)
                else:
                    self.state.bindings[b.name] = b
                self.enqueue(b.name)
            self.state.revision = ev.revision
            await self.save()

    async def _heartbeat(self) -> None:
        while True:
            with contextlib.suppress(FluidfedError):
                if self.token:
                    await self._client().heartbeat(self.cluster.name)
                    self._seen_hub()
            await asyncio.sleep(self.cfg.heartbeat_interval)

    async def _report(self) -> None:
        while True:
            try:
                await self._send_pending()
            except (HubUnreachable, ServerError, Unauthorized):
                self.hub_up.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.status_interval):
                    await self.wake_report.wait()
            self.wake_report.clear()

    async def _send_pending(self) -> None:
        hub = self._client()
        for name in list(self.state.unsent):
            current = self.state.statuses.get(name)
            if current is not None and name in self.state.bindings:
                st = msgspec.structs.replace(
                    current, hub_last_seen=self.state.hub_last_seen, reported_at=self.clock()
                )
                # NotFound: the binding is gone at the hub; nothing to report
                with contextlib.suppress(NotFound):
                    await hub.report_status(name, st)
            # a newer status may have come while this one was on its way: keep that one
            if self.state.statuses.get(name) is current and name in self.state.unsent:
                self.state.unsent.remove(name)
                await self.save()
        for name in list(self.state.finalize):
            with contextlib.suppress(NotFound):
                await hub.finalize_binding(name)
            self.state.finalize.remove(name)
            self.state.bindings.pop(name, None)
            self.state.statuses.pop(name, None)
            await self.save()
            log.info("binding %s cleaned up and finalized at the hub", name)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.resync_interval)
            for name in self.state.bindings:
                self.enqueue(name)

    # --- the sidecar webhook ---------------------------------------------------------------

    def decide(self, pod: dict[str, Any], namespace: str) -> mutate.Decision:
        bindings = {b.dataset: b for b in self.state.bindings.values() if not b.deleting}
        settings = mutate.SidecarSettings(
            image=self.cfg.sidecar_image,
            cpu=self.cfg.sidecar_cpu,
            memory=self.cfg.sidecar_memory,
            short_circuit=render.short_circuit(self.ctx.kind),
        )
        return mutate.mutate(pod, namespace, bindings, self.cluster.capabilities, settings)

    def request_rotation(self) -> None:
        self.rotate_requested.set()

    async def _webhook(self) -> None:
        cfg = self.cfg
        hosts = tuple(dict.fromkeys((cfg.webhook_host, "127.0.0.1", "localhost")))
        self.certs = CertManager(
            self.file.dir / "webhook",
            hosts,
            lifetime=dt.timedelta(seconds=cfg.webhook_cert_lifetime),
            renew_before=dt.timedelta(seconds=cfg.webhook_renew_before),
        )
        runner = web.AppRunner(webhook_server.make_app(self.decide), access_log=None)
        await runner.setup()
        site = web.TCPSite(
            runner, cfg.webhook_host, cfg.webhook_port, ssl_context=self.certs.context
        )
        await site.start()
        port = int(runner.addresses[0][1])
        self.webhook_url = cfg.webhook_url or f"https://{cfg.webhook_host}:{port}/mutate"
        self.webhook_config = render.webhook_configuration(
            self.ctx, self.webhook_url, self.certs.ca_pem
        )
        log.info("sidecar webhook serving on %s", self.webhook_url)
        self.enqueue(names.WEBHOOK_OWNER)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(3600.0, cfg.webhook_renew_before / 4)):
                        await self.rotate_requested.wait()
                if self.rotate_requested.is_set() or self.certs.due():
                    self.rotate_requested.clear()
                    self.certs.rotate()
                    log.info(
                        "webhook serving certificate renewed (valid until %s)",
                        self.certs.not_after.isoformat(),
                    )
        finally:
            await runner.cleanup()

    # --- the cluster ---------------------------------------------------------------------

    async def _follow_kind(self, api_version: str, kind: str) -> None:
        synced = self.synced[(api_version, kind)]
        delays = self.backoff.delays()
        while True:
            try:
                items, rv = await self.kube.list(api_version, kind, OWNED)
            except KubeError as err:
                if err.status == 404 and not err.temporary:
                    # the cluster does not serve this kind (no Fluid here): nothing to follow
                    synced.set()
                    return
                await asyncio.sleep(next(delays))
                continue
            stale = {k for k in self.live if k[:2] == (api_version, kind)}
            for obj in items:
                obj.setdefault("apiVersion", api_version)
                obj.setdefault("kind", kind)
                stale.discard(_key_of(obj))
                self.live[_key_of(obj)] = obj
            for k in stale:
                gone = self.live.pop(k)
                self._enqueue_owner(gone)
            synced.set()
            try:
                async for etype, obj in self.kube.watch(api_version, kind, OWNED, rv):
                    if etype == "ERROR":
                        break
                    obj.setdefault("apiVersion", api_version)
                    obj.setdefault("kind", kind)
                    k = _key_of(obj)
                    if etype == "DELETED":
                        self.live.pop(k, None)
                    else:
                        self.live[k] = obj
                    self._enqueue_owner(obj)
            except KubeError as err:
                if err.status != 410:
                    await asyncio.sleep(next(delays))
                continue
            except Exception:
                log.exception("watching %s failed; listing again", kind)
                await asyncio.sleep(next(delays))
                continue
            delays = self.backoff.delays()

    def _enqueue_owner(self, obj: dict[str, Any]) -> None:
        name = ((obj.get("metadata") or {}).get("labels") or {}).get(names.BINDING_LABEL)
        ours = name in self.state.bindings or name in self.state.finalize
        webhook = name == names.WEBHOOK_OWNER and self.webhook_config is not None
        if name and (ours or webhook):
            self.enqueue(name)

    async def _await_sync(self) -> None:
        """Reconciling starts once every owned kind is listed; say what is slow."""
        while True:
            pending = [kind for (_, kind), ev in self.synced.items() if not ev.is_set()]
            if not pending:
                self.all_synced.set()
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await asyncio.gather(*(ev.wait() for ev in self.synced.values()))
                continue
            log.warning("still listing %s from the cluster", ", ".join(pending))

    async def _worker(self) -> None:
        await self.all_synced.wait()
        while True:
            name = await self.queue.get()
            self.queued.discard(name)
            try:
                await self.reconcile(name)
            except Exception:
                log.exception("reconciling %s failed", name)
            finally:
                self.queue.task_done()

    async def reconcile(self, name: str) -> None:
        self.reconciles += 1
        if name == names.WEBHOOK_OWNER:
            if self.webhook_config is not None:
                await self._ensure(self.webhook_config)
            return
        b = self.state.bindings.get(name)
        if b is None or b.deleting:
            await self._clean_up(name, finalize=b is not None)
            return
        wanted = render.desired(b, self.ctx)
        keep = {_key_of(o) for o in wanted}
        errors: list[str] = []
        for obj in wanted:
            try:
                await self._ensure(obj)
            except KubeError as err:
                errors.append(str(err))
        # what this binding made before but no longer needs (an access entry removed, ...)
        for k, obj in list(self.live.items()):
            labels = (obj.get("metadata") or {}).get("labels") or {}
            if labels.get(names.BINDING_LABEL) == name and k not in keep:
                try:
                    await self.kube.delete(*k)
                except KubeError as err:
                    errors.append(str(err))
        error = "; ".join(errors)
        if error and error != self.errors.get(name):
            log.warning("binding %s: %s", name, error)
        self.errors[name] = error
        st = status.compute(
            b, self.live, error=error, hub_last_seen=self.state.hub_last_seen, now=self.clock()
        )
        self._maybe_load(b)
        await self._publish(name, self._with_workers(b, st))

    # --- cache workers and warm-ups --------------------------------------------------------

    def _with_workers(self, b: Binding, st: BindingStatus) -> BindingStatus:
        now = self.clock()
        cache = self.registry.cache(b.dataset, now) if b.mode == "sidecar" else None
        load = self.loads.get(b.name)
        if load is None:
            prev = self.state.statuses.get(b.name)
            load = prev.load if prev is not None else None
        figures = self.window.figures(b.dataset, now)
        return status.with_workers(st, cache, load, figures)

    def _on_metrics(self, datasets: set[str]) -> None:
        """New OTLP figures: send the affected bindings' statuses now."""
        task = asyncio.create_task(self._refresh(datasets))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh(self, datasets: set[str] | None = None) -> None:
        for name, b in list(self.state.bindings.items()):
            st = self.state.statuses.get(name)
            if st is None or b.deleting or (datasets is not None and b.dataset not in datasets):
                continue
            await self._publish(name, self._with_workers(b, st))

    async def _refresh_statuses(self) -> None:
        """Cache figures and warm-up progress change without any Kubernetes object
        changing: fold them into the last status now and then."""
        while True:
            await asyncio.sleep(self.cfg.status_interval)
            self.window.forget_before(self.clock() - 10 * self.cfg.metrics_window)
            await self._refresh()

    def _maybe_load(self, b: Binding) -> None:
        req = b.load
        if req is None or b.deleting:
            return
        task = self._load_tasks.get(b.name)
        if task is not None and not task.done():
            return
        known = self.loads.get(b.name)
        if known is None:
            prev = self.state.statuses.get(b.name)
            known = prev.load if prev is not None else None
        if known is not None and known.id >= req.id and known.phase in ("Done", "Failed"):
            return
        self._load_tasks[b.name] = asyncio.create_task(self._run_load(b, req))

    async def _run_load(self, b: Binding, req: LoadRequest) -> None:
        prog = LoadStatus(id=req.id, path=req.path, phase="Waiting")
        self.loads[b.name] = prog

        async def show(**changes: Any) -> None:
            nonlocal prog
            prog = msgspec.structs.replace(prog, **changes)
            self.loads[b.name] = prog
            st = self.state.statuses.get(b.name)
            if st is not None:
                await self._publish(b.name, self._with_workers(b, st))

        log.info("warm-up %d of %s (path %r) starting", req.id, b.dataset, req.path or "/")
        try:
            live: list[Any] = []
            async with asyncio.timeout(600):
                while not live:
                    live = self.registry.alive(b.dataset, self.clock())
                    if not live:
                        await show(message="waiting for cache workers to register")
                        await asyncio.sleep(1)
            urls = [w.url for w in live]
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
                for u in urls:
                    await workers.start_load(s, u, req.path, urls)
                await show(phase="Running", workers=len(urls), message="")
                while True:
                    progress = [await workers.load_progress(s, u) for u in urls]
                    running = any(p.state == "running" for p in progress)
                    await show(
                        blocks=sum(p.blocks for p in progress),
                        done=sum(p.done for p in progress),
                        bytes=sum(p.bytes for p in progress),
                        errors=sum(p.errors for p in progress),
                        cached=sum(p.cached for p in progress),
                        message="; ".join(sorted({p.message for p in progress if p.message})),
                    )
                    if not running:
                        break
                    await asyncio.sleep(0.5)
            await show(phase="Failed" if prog.errors else "Done")
        except (TimeoutError, workers.WorkerError) as err:
            await show(phase="Failed", message=str(err) or "no cache worker registered")
        log.info(
            "warm-up %d of %s: %s (%.1f%% cached)", req.id, b.dataset, prog.phase, prog.percent()
        )

    async def _publish(self, name: str, st: BindingStatus) -> None:
        if not _same_status(self.state.statuses.get(name), st):
            self.state.statuses[name] = st
            if name not in self.state.unsent:
                self.state.unsent.append(name)
            await self.save()
            self.wake_report.set()

    async def _ensure(self, obj: dict[str, Any]) -> None:
        if obj["kind"] == "Namespace":
            ns = obj["metadata"]["name"]
            if ns in self.known_namespaces:
                return
            if await self.kube.get("v1", "Namespace", "", ns) is None:
                await self.kube.apply(obj)
            self.known_namespaces.add(ns)
            return
        k = _key_of(obj)
        if diff.needs_apply(obj, self.live.get(k)):
            got = await self.kube.apply(obj)
            got.setdefault("apiVersion", obj["apiVersion"])
            got.setdefault("kind", obj["kind"])
            self.live[k] = got

    async def _clean_up(self, name: str, *, finalize: bool) -> None:
        owned = [
            k
            for k, o in self.live.items()
            if ((o.get("metadata") or {}).get("labels") or {}).get(names.BINDING_LABEL) == name
        ]
        for k in owned:
            await self.kube.delete(*k)
            self.live.pop(k, None)
        self.state.statuses.pop(name, None)
        if name in self.state.unsent:
            self.state.unsent.remove(name)
        if finalize and name not in self.state.finalize:
            self.state.finalize.append(name)
            log.info("binding %s retired: deleted %d objects", name, len(owned))
        await self.save()
        self.wake_report.set()
