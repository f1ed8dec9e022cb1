"""What the agent says in a binding's status about pods its webhook would refuse."""

import asyncio
from pathlib import Path

import msgspec

from agents import objects
from agents.controllers.webhook import SidecarWebhook
from agents.queue import WorkQueue
from agents.state import AgentState, StateFile
from agents.store import Store
from devkit import testing
from fluidfed.backoff import Backoff
from fluidfed.models import AgentConfig, CacheSpec, CacheTier, Capabilities, Cluster
from fluidfed.units import ByteSize


def _hook(tmp_path: Path, cluster: Cluster, **cfg: object) -> SidecarWebhook:
    return SidecarWebhook(
        AgentConfig(cluster_file="-", **cfg),  # type: ignore[arg-type]
        cluster,
        objects.ClusterContext(name="edge", kind="edge"),
        Store(StateFile(tmp_path), AgentState(cluster="edge")),
        WorkQueue(Backoff()),
        tmp_path / "wh",
        asyncio.Event(),
    )


def test_only_a_sidecar_cluster_whose_webhook_injects_says_its_sidecars_cannot_hold_them(
    tmp_path: Path,
) -> None:
    ds = testing.dataset("big", uri="file:///x")
    tiers = [CacheTier(medium="MEM", quota=ByteSize(2**30))]
    ds = msgspec.structs.replace(ds, cache=CacheSpec(sidecar_tiers=tiers))
    b = testing.binding(ds, "edge")
    edge = Cluster(name="edge", kind="edge")
    said = _hook(tmp_path, edge, sidecar_memory="512Mi").refuses(b)
    assert said.startswith("pods that ask for it are refused: dataset 'big''s sidecars keep 1GiB")
    assert _hook(tmp_path, edge, sidecar_memory="1280Mi").refuses(b) == ""
    assert _hook(tmp_path, edge).refuses(b) == ""  # no limit
    assert _hook(tmp_path, edge, sidecar_memory="512Mi", webhook=False).refuses(b) == ""
    fluid = Cluster(name="edge", capabilities=Capabilities(csi=True, fluid=True))
    csi = testing.binding(ds, "edge", mode="csi")
    assert _hook(tmp_path, fluid, sidecar_memory="512Mi").refuses(csi) == ""
