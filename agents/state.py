"""The agent's memory on local disk: the desired state, and what the hub has not heard yet.

Written atomically (temporary file, fsync, rename, fsync of the directory) after every
change, so a restart - hub or no hub - starts from the last state the agent knew.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from agents.trust import DataTLS
from fluidfed import codec, secretfile
from fluidfed.data.credentials import KeyEntry
from fluidfed.errors import ConfigError
from fluidfed.models import Binding, BindingStatus


class AgentState(msgspec.Struct, kw_only=True):
    cluster: str
    revision: int = 0  # the hub revision the bindings below are as of
    bindings: dict[str, Binding] = {}
    statuses: dict[str, BindingStatus] = {}
    unsent: list[str] = []  # statuses the hub has not acknowledged yet
    finalize: list[str] = []  # retired bindings cleaned up; the hub not told yet
    hub_last_seen: float = 0.0
    # each sidecar binding's data-path keys, newest first: kept here so that a restart
    # does not rotate them (the file is the owner's only, 0600)
    keys: dict[str, list[KeyEntry]] = {}
    # ... and its TLS: the binding's CA (kept, so sidecars keep trusting it) and the
    # workers' serving certificate
    tls: dict[str, DataTLS] = {}


_decoder = codec.decoder(AgentState)


class StateFile:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "state.json"

    def load(self, cluster: str) -> AgentState:
        if not self.path.exists():
            return AgentState(cluster=cluster)
        try:
            state = _decoder.decode(self.path.read_bytes())
        except msgspec.DecodeError as err:
            raise ConfigError.one(
                f"not an agent state file ({err}): move it away to start from the hub's "
                "state (the agent relists its bindings)",
                file=str(self.path),
            ) from None
        if state.cluster != cluster:
            raise ConfigError.one(
                f"this state directory holds the state of cluster {state.cluster!r}, not "
                f"{cluster!r}: give each agent its own state_dir",
                file=str(self.path),
                path="agent.state_dir",
            )
        return state

    def save(self, state: AgentState) -> None:
        self.write(codec.encode(state))

    def write(self, data: bytes) -> None:
        """Write an encoded state; callers serialise writes (one temporary file)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        secretfile.write(self.path, data, durable=True)  # it holds keys

    # the cluster token received at registration, kept beside the state (mode 0600)
    @property
    def token_path(self) -> Path:
        return self.dir / "cluster-token"

    def load_token(self) -> str:
        return self.token_path.read_text().strip() if self.token_path.exists() else ""

    def save_token(self, token: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        secretfile.write(self.token_path, token + "\n", durable=True)
