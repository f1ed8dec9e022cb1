"""The agent's connection to the hub: one client, the cluster token, and registration."""

from __future__ import annotations

import logging

from agents.state import StateFile
from fluidfed.client import Client
from fluidfed.errors import FluidfedError, NotFound, Unauthorized
from fluidfed.models import AgentConfig, Cluster

log = logging.getLogger("fluidfed.agent.hub")


class HubLink:
    def __init__(
        self, cfg: AgentConfig, cluster: Cluster, file: StateFile, token: str, bootstrap: str
    ) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.file = file
        self.token = token
        self.bootstrap_token = bootstrap
        self.client = self._client(token)
        self.registered = False

    def _client(self, token: str) -> Client:
        cfg = self.cfg
        return Client(
            cfg.hub,
            token,
            timeout=15,
            ca_file=cfg.ca_file,
            cert_file=cfg.client_cert_file,
            key_file=cfg.client_key_file,
        )

    async def ensure_registered(self) -> None:
        """Once per process: check the token, or register the cluster with the bootstrap
        token (which also rotates the cluster token)."""
        if self.registered:
            return
        if self.token:
            try:
                await self.client.heartbeat(self.cluster.name)
                self.registered = True
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
        async with self._client(self.bootstrap_token) as admin:
            result = await admin.register_cluster(self.cluster, rotate_token=True)
        self.token = result.token
        self.file.save_token(self.token)
        self.client.token = self.token  # sent with every request from now on
        self.registered = True
        log.info("registered cluster %s with the hub", self.cluster.name)

    async def close(self) -> None:
        await self.client.close()
