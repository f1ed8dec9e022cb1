from pathlib import Path

from agents import store
from agents.state import AgentState, StateFile
from fluidfed.models import BindingStatus
from tests.unit.agents.builders import binding


def test_publishing_the_same_status_twice_adds_nothing_unsent() -> None:
    state = AgentState(cluster="edge")
    first = BindingStatus(phase="Bound", ready_workers=1, reported_at=1.0)
    assert store.record_status(state, "d.edge", first)
    assert state.unsent == ["d.edge"]
    state.unsent.clear()
    # only the sending times differ: nothing new to send
    again = BindingStatus(phase="Bound", ready_workers=1, reported_at=9.0, hub_last_seen=5.0)
    assert not store.record_status(state, "d.edge", again)
    assert state.unsent == []
    assert state.statuses["d.edge"] is first


def test_a_newer_status_replaces_one_in_flight() -> None:
    state = AgentState(cluster="edge")
    sending = BindingStatus(phase="Pending")
    store.record_status(state, "d.edge", sending)
    newer = BindingStatus(phase="Bound", ready_workers=1)
    assert store.record_status(state, "d.edge", newer)
    assert state.unsent == ["d.edge"]  # listed once
    # the hub acknowledged the older one: the newer one stays to send
    assert not store.mark_sent(state, "d.edge", sending)
    assert state.unsent == ["d.edge"]
    assert store.mark_sent(state, "d.edge", newer)
    assert state.unsent == []


def test_retiring_drops_the_status_and_queues_finalization_once() -> None:
    b = binding()
    state = AgentState(
        cluster="edge",
        bindings={b.name: b},
        statuses={b.name: BindingStatus()},
        unsent=[b.name],
    )
    assert store.retire(state, b.name, finalize=True)
    assert not store.retire(state, b.name, finalize=True)
    assert state.finalize == [b.name]
    assert state.statuses == {}
    assert state.unsent == []
    store.finalized(state, b.name)
    assert state.finalize == []
    assert state.bindings == {}


def test_retiring_a_binding_the_hub_forgot_does_not_finalize() -> None:
    state = AgentState(cluster="edge", statuses={"x.edge": BindingStatus()})
    assert not store.retire(state, "x.edge", finalize=False)
    assert state.finalize == []
    assert state.statuses == {}


async def test_publish_saves_and_wakes_the_reporter_only_on_change(tmp_path: Path) -> None:
    file = StateFile(tmp_path)
    s = store.Store(file, AgentState(cluster="edge"))
    await s.publish("d.edge", BindingStatus(phase="Bound"))
    assert s.wake_reporter.is_set()
    assert file.load("edge").unsent == ["d.edge"]
    s.wake_reporter.clear()
    await s.publish("d.edge", BindingStatus(phase="Bound", reported_at=3.0))
    assert not s.wake_reporter.is_set()


def test_hearing_from_the_hub_again_wakes_the_reporter(tmp_path: Path) -> None:
    s = store.Store(StateFile(tmp_path), AgentState(cluster="edge"))
    s.heard_from_hub(10.0)
    assert s.state.hub_last_seen == 10.0
    assert s.wake_reporter.is_set()
    s.wake_reporter.clear()
    s.heard_from_hub(11.0)
    assert not s.wake_reporter.is_set()  # it was up already
    s.hub_lost()
    s.heard_from_hub(12.0)
    assert s.wake_reporter.is_set()


def test_a_binding_gets_keys_once_they_survive_a_restart_and_retiring_drops_them(
    tmp_path: Path,
) -> None:
    state = AgentState(cluster="edge", bindings={"d.edge": binding("d")})
    assert store.rotate_keys(state, "d.edge", now=0.0, every=0.0, grace=60.0)
    assert not store.rotate_keys(state, "d.edge", now=1e6, every=0.0, grace=60.0)
    file = StateFile(tmp_path)
    file.save(state)
    assert (tmp_path / "state.json").stat().st_mode & 0o077 == 0  # it holds keys: 0600
    again = file.load("edge")
    assert again.keys == state.keys  # a restart does not rotate them
    (key,) = store.keys_of_dataset(again, "d")
    assert len(key) == 32 and store.keys_of_dataset(again, "other") == []
    store.retire(state, "d.edge", finalize=True)
    assert "d.edge" not in state.keys


def test_a_due_rotation_keeps_the_old_key_beside_the_new_one() -> None:
    state = AgentState(cluster="edge", bindings={"d.edge": binding("d")})
    store.rotate_keys(state, "d.edge", now=0.0, every=100.0, grace=10.0)
    old = state.keys["d.edge"][0]
    assert store.rotate_keys(state, "d.edge", now=100.0, every=100.0, grace=10.0)
    assert state.keys["d.edge"][1] == old and len(store.keys_of_dataset(state, "d")) == 2
    assert store.rotate_keys(state, "d.edge", now=120.0, every=100.0, grace=10.0)
    assert len(state.keys["d.edge"]) == 1 and state.keys["d.edge"][0] != old


def test_a_binding_gets_its_tls_once_it_survives_a_restart_a_rotation_renews_it_and_retiring_drops_it(
    tmp_path: Path,
) -> None:
    state = AgentState(cluster="edge", bindings={"d.edge": binding("d")})
    assert store.renew_tls(state, "d.edge", now=0.0)
    made = state.tls["d.edge"]
    assert made.hosts == ["*.fluidfed-d-cache.ns.svc", "fluidfed-d-cache.ns.svc"]
    assert not store.renew_tls(state, "d.edge", now=1.0)  # not due: nothing changes
    assert not store.renew_tls(state, "gone.edge", now=1.0)  # no such binding
    file = StateFile(tmp_path)
    file.save(state)
    assert file.load("edge").tls == state.tls  # a restart keeps the CA the sidecars trust
    assert store.renew_tls(state, "d.edge", now=2.0, force=True)  # SIGHUP
    renewed = state.tls["d.edge"]
    assert renewed.cert != made.cert and renewed.ca_cert == made.ca_cert
    store.retire(state, "d.edge", finalize=True)
    assert "d.edge" not in state.tls
