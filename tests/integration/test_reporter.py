"""The agent's status reporter against a real hub: statuses and finalizations the hub has
not heard are sent, kept on disk until then, and a binding the hub already forgot is
finalized all the same. (Which status stays unsent when a newer one arrives in flight is
the store's pure rule: tests/unit/agents/test_store.py.)"""

from pathlib import Path

import pytest

from agents.controllers import reporter
from agents.hub_link import HubLink
from agents.state import AgentState, StateFile
from agents.store import Store
from devkit import testing
from devkit.testing import HubProcess
from fluidfed import Client
from fluidfed.models import AgentConfig, BindingStatus, Dataset, KubeAccess, Mount

pytestmark = pytest.mark.integration


async def test_statuses_reach_the_hub_and_finalized_bindings_are_forgotten(
    hub: HubProcess, tmp_path: Path
) -> None:
    edge = testing.cluster("edge", kind="edge", kubernetes=KubeAccess(in_cluster=True))
    async with Client(hub.url, hub.admin_token) as admin:
        token = (await admin.register_cluster(edge)).token
        await admin.apply_dataset(Dataset(name="d", mounts=[Mount(uri="s3://b/p")]))
        listed = await admin.list_bindings("edge")
    (b,) = listed.items
    gone = "forgotten.edge"  # retired here, already forgotten by the hub
    state = AgentState(
        cluster="edge", revision=listed.revision, bindings={b.name: b}, finalize=[gone]
    )
    file = StateFile(tmp_path)
    store = Store(file, state)
    link = HubLink(AgentConfig(cluster_file="-", hub=hub.url), edge, file, token, "")
    try:
        await store.publish(b.name, BindingStatus(phase="Bound", ready_workers=2))
        assert state.unsent == [b.name]
        await reporter.send_pending(link, store)
    finally:
        await link.close()

    async with Client(hub.url, hub.admin_token) as admin:
        (view,) = (await admin.get_dataset("d")).bindings
    assert view.status is not None
    assert (view.status.phase, view.status.ready_workers) == ("Bound", 2)
    assert state.unsent == [] and state.finalize == []
    on_disk = StateFile(tmp_path).load("edge")
    assert on_disk.unsent == [] and on_disk.finalize == []
