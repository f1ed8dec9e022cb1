from typing import Any

import pytest

from agents import informer
from agents.controllers import kinds
from agents.live import LiveCache
from agents.queue import WorkQueue
from agents.state import AgentState
from fluidfed import names
from fluidfed.backoff import Backoff
from fluidfed.errors import KubeError
from tests.unit.agents.builders import binding


def obj(name: str, owner: str | None, kind: str = "ConfigMap") -> dict[str, Any]:
    labels = {names.BINDING_LABEL: owner} if owner else {}
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "labels": labels},
    }


STATE = AgentState(cluster="edge", bindings={"a.edge": binding("a.edge")}, finalize=["old.edge"])


@pytest.mark.parametrize(
    ("owner", "webhook_serving", "queued"),
    [
        ("a.edge", False, "a.edge"),  # ours
        ("old.edge", False, "old.edge"),  # retired, being finalized
        (names.WEBHOOK_OWNER, True, names.WEBHOOK_OWNER),
        (names.WEBHOOK_OWNER, False, None),  # another agent's webhook, or none served
        ("other.edge", True, None),  # foreign
        (None, True, None),  # no binding label
    ],
)
def test_which_binding_an_object_event_queues(
    owner: str | None, webhook_serving: bool, queued: str | None
) -> None:
    assert kinds.binding_to_queue(obj("x", owner), STATE, webhook_serving) == queued


def follower(live: LiveCache, queue: WorkQueue, *, serving: bool = False) -> kinds.KindFollower:
    source = kinds.KubeKind(None, "v1", "ConfigMap")  # type: ignore[arg-type]
    return kinds.KindFollower(source, live, queue, STATE, lambda: serving, Backoff())


async def test_a_listing_replaces_the_kind_and_queues_owners_of_what_went() -> None:
    live, queue = LiveCache(), WorkQueue(Backoff())
    live.put(obj("stale", "a.edge"))
    live.put(obj("kept", "other.edge"))
    live.put(obj("sts", "a.edge", kind="StatefulSet"))  # another kind: untouched
    f = follower(live, queue)
    assert f.handle(informer.Listed([obj("kept", "other.edge"), obj("new", "a.edge")], "5"))
    assert f.synced.is_set()
    names = {k[3] for k in live}
    assert names == {"kept", "new", "sts"}
    assert queue.pending() == {"a.edge"}  # from "stale"; a listed object queues nothing


async def test_watch_events_update_the_cache_and_queue_the_owner() -> None:
    live, queue = LiveCache(), WorkQueue(Backoff())
    f = follower(live, queue)
    f.handle(informer.Added(obj("cm", "a.edge"), "6"))
    assert ("v1", "ConfigMap", "ns", "cm") in set(live)
    assert await queue.get() == "a.edge"
    queue.done("a.edge")
    f.handle(informer.Deleted(obj("cm", "a.edge"), "7"))
    assert len(live) == 0
    assert queue.pending() == {"a.edge"}
    f.handle(informer.Modified(obj("cm2", "foreign.edge"), "8"))
    assert len(live) == 1
    assert queue.pending() == {"a.edge"}


def test_a_kind_the_cluster_does_not_serve_is_synced_and_not_followed() -> None:
    f = follower(LiveCache(), WorkQueue(Backoff()))
    assert f.handle(informer.Retrying(KubeError(503, "busy"), 1.0))
    assert not f.synced.is_set()
    assert not f.handle(informer.Retrying(KubeError(404, "no such kind"), 1.0))
    assert f.synced.is_set()


def test_live_cache_finds_what_a_binding_owns() -> None:
    live = LiveCache()
    live.put(obj("a1", "a.edge"))
    live.put(obj("a2", "a.edge", kind="Service"))
    live.put(obj("b1", "b.edge"))
    assert sorted(k[3] for k in live.owned_by("a.edge")) == ["a1", "a2"]
    assert live.owned_by("c.edge") == []


def test_a_kind_the_agent_may_not_list_does_not_hold_reconciling_back() -> None:
    f = follower(LiveCache(), WorkQueue(Backoff()))
    assert f.handle(informer.Retrying(KubeError(403, "secrets is forbidden"), 1.0))
    assert f.synced.is_set()  # reconciling starts; the error is logged with what to do


def test_an_apply_answer_does_not_hide_what_the_watch_brought_meanwhile() -> None:
    live, queue = LiveCache(), WorkQueue(Backoff())
    f = follower(live, queue)
    created = obj("sts", "a.edge", kind="StatefulSet")
    f.handle(informer.Added(created, "10"))
    asked_over = live.get(("v1", "StatefulSet", "ns", "sts"))
    # while the apply was on its way the watch brought the controller's status update
    ready = {**created, "status": {"readyReplicas": 1}}
    f.handle(informer.Modified(ready, "12"))
    answer = {**created, "metadata": {**created["metadata"], "resourceVersion": "11"}}
    assert not live.put_answer(answer, asked_over)
    assert live.get(("v1", "StatefulSet", "ns", "sts")) is ready
    # nothing came meanwhile: the answer is the newest copy there is
    again = {**ready, "spec": {"replicas": 2}}
    assert live.put_answer(again, ready)
    assert live.get(("v1", "StatefulSet", "ns", "sts")) is again
    # the first apply of an object not cached yet
    assert live.put_answer(obj("new", "a.edge"), None)
    assert ("v1", "ConfigMap", "ns", "new") in set(live)
