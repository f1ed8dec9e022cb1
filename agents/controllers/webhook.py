"""The sidecar webhook: serve the pod mutation over TLS, keep its serving certificate
fresh (renewed when due or on SIGHUP) and have the reconciler apply the
MutatingWebhookConfiguration (owned by names.WEBHOOK_OWNER)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from agents import objects, render
from agents.queue import WorkQueue
from agents.store import Store
from agents.webhook import mutate
from agents.webhook import server as webhook_server
from agents.webhook.certs import CertManager
from fluidfed import names, tls, tlsserve
from fluidfed.errors import ConfigError
from fluidfed.models import AgentConfig, Binding, Cluster

log = logging.getLogger("fluidfed.agent.webhook")

CA_RECHECK = tls.RECHECK  # how often the API server's client CA file is looked at for a change


@dataclasses.dataclass(eq=False)
class SidecarWebhook:
    cfg: AgentConfig
    cluster: Cluster
    ctx: objects.ClusterContext
    store: Store
    queue: WorkQueue
    directory: Path
    rotate_requested: asyncio.Event  # set on SIGHUP
    config: dict[str, Any] | None = dataclasses.field(default=None, init=False)  # set while serving
    url: str = dataclasses.field(default="", init=False)
    certs: CertManager | None = dataclasses.field(default=None, init=False)

    @property
    def enabled(self) -> bool:
        return self.cfg.webhook and self.cluster.mount_mode() == "sidecar"

    def serving(self) -> bool:
        return self.config is not None

    def settings(self) -> mutate.SidecarSettings:
        return mutate.SidecarSettings(
            image=self.cfg.sidecar_image,
            cpu=self.cfg.sidecar_cpu,
            memory=self.cfg.sidecar_memory,
            short_circuit=objects.short_circuit(self.ctx.kind),
        )

    def decide(self, pod: dict[str, Any], namespace: str) -> mutate.Decision:
        state = self.store.state
        bindings = {b.dataset: b for b in state.bindings.values() if not b.deleting}
        return mutate.mutate(pod, namespace, bindings, self.cluster.capabilities, self.settings())

    def refuses(self, b: Binding) -> str:
        """Why every pod asking for the binding's dataset would be refused here ("" if
        not): said in its status, before anyone's pod is."""
        if not self.enabled or b.mode != "sidecar":
            return ""
        short = mutate.memory_short(b.dataset, b, self.settings())
        return f"pods that ask for it are refused: {short}" if short else ""

    async def run(self) -> None:
        cfg = self.cfg
        # the serving certificate names every way it is called: the URL the API server is
        # given (a Service's DNS name in a pod) and loopback
        called = urlsplit(cfg.webhook_url).hostname or ""
        names_ = (called, cfg.webhook_host, "127.0.0.1", "localhost")
        hosts = tuple(dict.fromkeys(n for n in names_ if n and n != "0.0.0.0"))
        self.certs = CertManager(
            self.directory,
            hosts,
            lifetime=dt.timedelta(seconds=cfg.webhook_cert_lifetime),
            renew_before=dt.timedelta(seconds=cfg.webhook_renew_before),
        )
        caller = None
        clients: tls.Trusted | None = None
        if cfg.webhook_client_ca_file:
            # asked for, not required, by the handshake: /mutate refuses a caller without it;
            # read again when it changes (the API server's client CA rotated)
            try:
                clients = tls.Trusted(cfg.webhook_client_ca_file, self.certs.context)
            except ConfigError as err:  # (the API server's client CA: said with its field)
                p = err.problems[0]
                raise ConfigError.one(
                    p.message, file=p.file, path="agent.webhook_client_ca_file"
                ) from None
            self.certs.context.verify_mode = ssl.CERT_OPTIONAL
            caller = webhook_server.Caller(cfg.webhook_client_name)
        runner = web.AppRunner(webhook_server.make_app(self.decide, caller), access_log=None)
        await runner.setup()
        site = tlsserve.site(runner, cfg.webhook_host, cfg.webhook_port, self.certs.context)
        await site.start()
        port = int(runner.addresses[0][1])
        self.url = cfg.webhook_url or f"https://{cfg.webhook_host}:{port}/mutate"
        self.config = render.webhook_configuration(self.ctx, self.url, self.certs.ca_pem)
        log.info("sidecar webhook serving on %s", self.url)
        self.queue.add(names.WEBHOOK_OWNER)
        # (the client CA looked at as often as the hub looks at its files)
        wake = min(3600.0, cfg.webhook_renew_before / 4, CA_RECHECK if clients else 3600.0)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wake):
                        await self.rotate_requested.wait()
                if clients is not None and clients.reload():
                    log.info(
                        "webhook client CA reloaded from %s (trusted beside the one before)",
                        cfg.webhook_client_ca_file,
                    )
                if self.rotate_requested.is_set() or self.certs.due():
                    self.rotate_requested.clear()
                    self.certs.rotate()
                    log.info(
                        "webhook serving certificate renewed (valid until %s)",
                        self.certs.not_after.isoformat(),
                    )
        finally:
            await runner.cleanup()
