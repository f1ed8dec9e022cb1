from pathlib import Path

from agents.controllers import reporter
from agents.hub_link import HubLink
from agents.state import AgentState, StateFile
from agents.store import Store
from fluidfed.errors import NotFound
from fluidfed.models import AgentConfig, BindingStatus, Cluster
from tests.unit.agents.builders import binding


class FakeHub:
    """Records what it is told; `during_report` runs while a status is on its way."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reported: list[tuple[str, str]] = []
        self.finalized: list[str] = []
        self.during_report: BindingStatus | None = None

    async def report_status(self, name: str, st: BindingStatus) -> None:
        self.reported.append((name, st.phase))
        if self.during_report is not None:
            await self.store.publish(name, self.during_report)
            self.during_report = None

    async def finalize_binding(self, name: str) -> None:
        self.finalized.append(name)
        raise NotFound(404, "already gone")  # the hub forgot it: finalized all the same


def make(tmp_path: Path, state: AgentState) -> tuple[HubLink, Store, FakeHub]:
    file = StateFile(tmp_path)
    store = Store(file, state)
    link = HubLink(AgentConfig(cluster_file="-"), Cluster(name="edge"), file, "t", "")
    hub = FakeHub(store)
    link.client = hub  # type: ignore[assignment]
    return link, store, hub


async def test_a_status_that_changed_in_flight_stays_unsent(tmp_path: Path) -> None:
    b = binding()
    state = AgentState(cluster="edge", bindings={b.name: b})
    link, store, hub = make(tmp_path, state)
    await store.publish(b.name, BindingStatus(phase="Pending"))
    hub.during_report = BindingStatus(phase="Bound", ready_workers=1)
    await reporter.send_pending(link, store)
    assert hub.reported == [(b.name, "Pending")]
    assert state.unsent == [b.name]  # the Bound one is still to send
    await reporter.send_pending(link, store)
    assert hub.reported[-1] == (b.name, "Bound")
    assert state.unsent == []
    assert StateFile(tmp_path).load("edge").unsent == []


async def test_finalized_bindings_are_forgotten(tmp_path: Path) -> None:
    b = binding(deleting=True)
    state = AgentState(cluster="edge", bindings={b.name: b}, finalize=[b.name])
    link, store, hub = make(tmp_path, state)
    await reporter.send_pending(link, store)
    assert hub.finalized == [b.name]
    assert state.finalize == []
    assert state.bindings == {}
    assert StateFile(tmp_path).load("edge").finalize == []
