"""What the cache workers report, folded into a binding's status by the agent."""

import json
import time
from pathlib import Path

from agents import status
from agents.metrics import MetricWindow
from agents.observed import Observed
from agents.registry import Registry
from agents.state import AgentState, StateFile
from agents.store import Store
from devkit.testing import WORKER_STATUS_WIRE
from fluidfed.data import protocol
from tests.unit.agents.builders import binding


def test_the_workers_disks_short_of_room_reach_the_binding_status(tmp_path: Path) -> None:
    """Two live workers of the dataset: the blocks their disks did not keep (write errors
    and no room at the floor) and those they shed to keep it, summed into the status the
    agent reports to the hub (`fluidfed describe` shows them)."""
    registry = Registry()
    observed = Observed(
        registry, MetricWindow(), Store(StateFile(tmp_path), AgentState(cluster="edge"))
    )
    b = binding("d.edge")
    ssd = {"medium": "SSD", "quota": 1, "used": 0, "blocks": 0, "hits": 0, "evictions": 0}
    for url, writes, short in (
        ("http://w-0", {"errors": 1, "no_room": 2, "shed": 30}, True),
        ("http://w-1", {"no_room": 4, "shed": 12}, False),
    ):
        wire = {**WORKER_STATUS_WIRE, "writes": writes, "tiers": [{**ssd, "short": short}]}
        body = {"dataset": "d", "url": url, "status": wire}
        reg = protocol.decode(protocol.WorkerRegistration, json.dumps(body).encode())
        registry.report(reg, now=time.time())
    st = observed.fold(b, status.compute(b, {}))
    assert (st.cache_not_kept, st.cache_shed, st.cache_disks_full) == (7, 42, 1)
