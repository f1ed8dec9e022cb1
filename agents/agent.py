"""The agent: follow the hub, keep the desired state on disk, reconcile the cluster.

Agent.run only wires named controllers (agents/controllers/) over shared pieces:

    queue     WorkQueue    binding names to reconcile; temporary failures come back later
    live      LiveCache    the cluster's objects the agent owns, by key
    store     Store        state.json, statuses to send, bindings to finalize
    link      HubLink      the hub client, the cluster token and registration

    hubsync    list then watch this cluster's bindings, queue what changed
    heartbeat  renew the cluster's lease at the hub
    kinds      list then watch every owned kind into `live`, queue the owners
    reconciler render, compare, apply, delete, publish the status (cfg.workers of them)
    reporter   send unsent statuses and finalizations
    resync     queue every binding now and then; refresh cache figures in statuses
    warm-ups   loads asked by bindings, on the registered cache workers
    webhook    the sidecar mutating webhook and its certificate

Reconciling starts from the state on disk at once, whether the hub answers or not.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from agents import api as agent_api
from agents import objects
from agents.controllers import heartbeat, hubsync, kinds, reconciler, reporter, resync
from agents.controllers import warmup as warmups
from agents.controllers import webhook as sidecar_webhook
from agents.hub_link import HubLink
from agents.kube import Kube
from agents.live import LiveCache
from agents.metrics import MetricWindow
from agents.observed import Observed
from agents.queue import WorkQueue
from agents.registry import Registry
from agents.state import StateFile
from agents.store import Store
from agents.webhook.certs import CertManager
from fluidfed import tlsserve, validation
from fluidfed.backoff import Backoff
from fluidfed.models import AgentConfig, Cluster

log = logging.getLogger("fluidfed.agent")


def api_serves_tls(cfg: AgentConfig) -> bool:
    """Whether the agent's API serves HTTPS: `api_tls` "on", or "auto" and either it
    listens beyond loopback (pods on other machines reach it) or its URL says https."""
    if cfg.api_tls != "auto":
        return cfg.api_tls == "on"
    return urlsplit(cfg.api_url).scheme == "https" or not validation.is_loopback(cfg.api_host)


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
    ) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.kube = kube
        self.file = StateFile(state_dir)
        self.store = Store(
            self.file,
            self.file.load(cluster.name),
            rotation=cfg.credential_rotation,
            grace=cfg.credential_grace,
        )
        self.token = token or self.file.load_token()
        self.bootstrap_token = bootstrap_token
        self.backoff = Backoff()
        self.queue = WorkQueue(self.backoff)
        self.live = LiveCache()
        self.registry = Registry(ttl=max(10.0, 3 * cfg.status_interval))
        self.window = MetricWindow(window=cfg.metrics_window)
        self.rotate_requested = asyncio.Event()
        self.reconciler: reconciler.Reconciler | None = None

    @property
    def reconciles(self) -> int:
        return self.reconciler.reconciles if self.reconciler is not None else 0

    @property
    def queued(self) -> frozenset[str]:
        return self.queue.pending()

    def request_rotation(self) -> None:
        """Renew the webhook's serving certificate and rotate every binding's data-path
        keys now (SIGHUP)."""
        self.rotate_requested.set()
        self.store.rotate_now.update(self.store.state.bindings)
        for name in self.store.state.bindings:
            self.queue.add(name)

    async def run(self) -> None:
        cfg, store = self.cfg, self.store
        log.info(
            "agent for cluster %s starting with %d bindings from %s (revision %d)",
            self.cluster.name,
            len(store.state.bindings),
            self.file.path,
            store.state.revision,
        )
        link = HubLink(cfg, self.cluster, self.file, self.token, self.bootstrap_token)
        figures = Observed(self.registry, self.window, store)
        refresh = resync.StatusRefresh(store, figures, cfg.status_interval, cfg.metrics_window)
        # cache workers register here before the first reconcile, so their config has its URL
        api_certs = self._api_certs()
        api, api_url = await self._start_api(refresh.on_metrics, api_certs)
        ctx = objects.ClusterContext(
            name=self.cluster.name,
            kind=self.cluster.kind,
            worker_image=cfg.worker_image,
            agent_url=api_url,
            agent_ca=api_certs.ca_pem.decode() if api_certs is not None else "",
            data_tls=cfg.data_tls == "on",
        )
        if cfg.data_tls == "off":
            log.warning(
                "data_tls is off: cache workers serve plain HTTP, tokens and blocks cross "
                "the pod network unencrypted unless the network itself encrypts them"
            )
        webhook = sidecar_webhook.SidecarWebhook(
            cfg,
            self.cluster,
            ctx,
            store,
            self.queue,
            self.file.dir / "webhook",
            self.rotate_requested,
        )
        loads = warmups.WarmUps(
            self.registry,
            figures,
            store,
            on_change_interval=cfg.on_change_interval,
            data_tls=cfg.data_tls == "on",
        )
        self.reconciler = reconciler.Reconciler(
            self.kube, ctx, self.live, store, self.queue, figures, loads, webhook
        )
        followers = [
            kinds.KindFollower(
                kinds.KubeKind(self.kube, api_version, kind),
                self.live,
                self.queue,
                store.state,
                webhook.serving,
                self.backoff,
            )
            for api_version, kind in kinds.OWNED_KINDS
        ]
        for name in [*store.state.bindings, *store.state.finalize]:
            self.queue.add(name)
        all_synced = asyncio.Event()

        async def until_synced() -> None:
            await kinds.wait_for_sync(followers)
            all_synced.set()

        try:
            async with asyncio.TaskGroup() as tg:
                for follower in followers:
                    tg.create_task(follower.run())
                tg.create_task(until_synced())
                for _ in range(cfg.workers):
                    tg.create_task(self.reconciler.work(all_synced))
                tg.create_task(hubsync.HubSync(link, store, self.queue, self.backoff).run())
                tg.create_task(heartbeat.run(link, store, cfg.heartbeat_interval))
                tg.create_task(reporter.run(link, store, cfg.status_interval))
                tg.create_task(resync.resync(store, self.queue, cfg.resync_interval))
                tg.create_task(refresh.run())
                if api_certs is not None:
                    tg.create_task(self._renew_api_cert(api_certs))
                if webhook.enabled:
                    tg.create_task(webhook.run())
        finally:
            loads.cancel_all()
            self.queue.close()
            await api.cleanup()
            await link.close()

    def _api_certs(self) -> CertManager | None:
        """The API's serving certificate when it serves HTTPS (`api_tls`), from a CA of the
        agent's kept in its state directory (the binding's Secrets hand it to the workers
        and sidecars, `objects.ClusterContext.agent_ca`)."""
        cfg = self.cfg
        if not api_serves_tls(cfg):
            return None
        called = urlsplit(cfg.api_url).hostname or ""
        names_ = (called, cfg.api_host, "127.0.0.1", "localhost")
        return CertManager(
            self.file.dir / "api",
            tuple(dict.fromkeys(n for n in names_ if n and n not in ("0.0.0.0", "::"))),
            lifetime=dt.timedelta(seconds=cfg.webhook_cert_lifetime),
            renew_before=dt.timedelta(seconds=cfg.webhook_renew_before),
            name="fluidfed-agent-api",
        )

    async def _renew_api_cert(self, certs: CertManager) -> None:
        """Renew the API's serving certificate in place before it expires (the CA stays)."""
        while True:
            await asyncio.sleep(min(3600.0, self.cfg.webhook_renew_before / 4))
            if certs.due():
                certs.rotate()
                log.info("agent API certificate renewed (valid until %s)", certs.not_after)

    async def _start_api(
        self, on_metrics: Callable[[set[str]], None], certs: CertManager | None
    ) -> tuple[web.AppRunner, str]:
        """The agent's API, where this cluster's cache workers register and send metrics;
        over HTTPS with `certs`."""
        app = agent_api.make_app(self.registry, self.store.keys_of_dataset, self.window, on_metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        # with port 0 the kernel picks one; keep it across restarts (it is in the workers'
        # config), unless something else took it meanwhile
        saved = self.file.dir / "api-port"
        port = self.cfg.api_port
        if not port and saved.exists():
            port = int(saved.read_text().strip() or 0)
        ssl_context = certs.context if certs is not None else None
        try:
            site = tlsserve.site(runner, self.cfg.api_host, port, ssl_context)
            await site.start()
        except OSError:
            site = tlsserve.site(runner, self.cfg.api_host, self.cfg.api_port, ssl_context)
            await site.start()
        port = int(runner.addresses[0][1])
        if not self.cfg.api_port:
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(f"{port}\n")
        scheme = "https" if certs is not None else "http"
        api_url = self.cfg.api_url or f"{scheme}://{self.cfg.api_host}:{port}"
        log.info("agent API for cache workers on %s", api_url)
        return runner, api_url
