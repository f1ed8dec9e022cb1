from pathlib import Path

import pytest

from agents import informer
from agents.controllers import hubsync
from agents.hub_link import HubLink
from agents.queue import WorkQueue
from agents.state import AgentState, StateFile
from agents.store import Store
from fluidfed.backoff import Backoff
from fluidfed.errors import HubUnreachable
from fluidfed.models import AgentConfig, Binding, Cluster
from tests.unit.agents.builders import binding


def state_with(*bindings: Binding, revision: int = 3) -> AgentState:
    return AgentState(cluster="edge", revision=revision, bindings={b.name: b for b in bindings})


@pytest.mark.parametrize(
    ("change", "queued", "held"),
    [
        (informer.Added(binding("new.edge"), 9), ["new.edge"], {"a.edge", "new.edge"}),
        (informer.Modified(binding("a.edge", 2), 9), ["a.edge"], {"a.edge"}),
        (informer.Deleted(binding("a.edge"), 9), ["a.edge"], set()),
        (informer.Deleted(binding("gone.edge"), 9), ["gone.edge"], {"a.edge"}),
        (informer.Bookmark(9), [], {"a.edge"}),
    ],
)
def test_a_hub_watch_event_applied_to_the_state(
    change: informer.Change[Binding, int], queued: list[str], held: set[str]
) -> None:
    state = state_with(binding("a.edge"))
    assert hubsync.apply_change(state, change) == queued
    assert set(state.bindings) == held
    assert state.revision == 9  # a bookmark moves the revision too


def test_a_modified_binding_is_held_as_the_hub_sent_it() -> None:
    state = state_with(binding("a.edge"))
    retired = binding("a.edge", 2, deleting=True)
    hubsync.apply_change(state, informer.Modified(retired, 4))
    assert state.bindings["a.edge"] is retired


def test_a_relist_queues_what_changed_or_went_and_drops_what_went() -> None:
    same, changed, gone = binding("same.edge"), binding("changed.edge"), binding("gone.edge")
    state = state_with(same, changed, gone)
    listed = [binding("same.edge"), binding("changed.edge", 2), binding("new.edge")]
    queued = hubsync.apply_listing(state, listed, 20)
    assert sorted(queued) == ["changed.edge", "gone.edge", "new.edge"]
    assert set(state.bindings) == {"same.edge", "changed.edge", "new.edge"}
    assert state.bindings["changed.edge"].generation == 2
    assert state.revision == 20


def test_an_unchanged_relist_queues_nothing() -> None:
    state = state_with(binding("a.edge"))
    assert hubsync.apply_listing(state, [binding("a.edge")], 7) == []
    assert state.revision == 7


def sync(tmp_path: Path, state: AgentState) -> tuple[hubsync.HubSync, WorkQueue]:
    file = StateFile(tmp_path)
    link = HubLink(AgentConfig(cluster_file="-", hub="http://127.0.0.1:9"), cluster(), file, "", "")
    queue = WorkQueue(Backoff())
    return hubsync.HubSync(link, Store(file, state), queue, Backoff()), queue


def cluster() -> Cluster:
    return Cluster(name="edge")


async def test_handled_events_are_saved_and_queued(tmp_path: Path) -> None:
    s, queue = sync(tmp_path, state_with(binding("a.edge")))
    await s.handle(informer.Listed([binding("b.edge")], 30))
    await s.handle(informer.Added(binding("c.edge"), 31))
    on_disk = StateFile(tmp_path).load("edge")
    assert on_disk.revision == 31
    assert set(on_disk.bindings) == {"b.edge", "c.edge"}
    assert queue.pending() == {"a.edge", "b.edge", "c.edge"}
    assert s.store.hub_up.is_set()


async def test_too_old_forgets_the_revision_and_an_unreachable_hub_is_down(
    tmp_path: Path,
) -> None:
    s, queue = sync(tmp_path, state_with(binding("a.edge"), revision=12))
    s.store.hub_up.set()
    await s.handle(informer.Relisting(12))
    assert s.store.state.revision == 0
    await s.handle(informer.Retrying(HubUnreachable("refused"), 0.5))
    assert not s.store.hub_up.is_set()
    assert queue.empty()
