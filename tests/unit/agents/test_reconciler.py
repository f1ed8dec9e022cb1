import asyncio
from pathlib import Path
from typing import Any

from agents import render
from agents.controllers import reconciler, warmup, webhook
from agents.live import LiveCache
from agents.metrics import MetricWindow
from agents.observed import Observed
from agents.queue import WorkQueue
from agents.registry import Registry
from agents.state import AgentState, StateFile
from agents.store import Store
from fluidfed import names
from fluidfed.backoff import Backoff
from fluidfed.errors import KubeError
from fluidfed.models import AgentConfig, Binding, Cluster
from tests.unit.agents.builders import binding


class FakeKube:
    """Applies echo the object back, unless `failing` holds an error to raise."""

    def __init__(self, failing: KubeError | None = None) -> None:
        self.failing = failing
        self.applied: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str, str, str]] = []

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.failing is not None and obj["kind"] != "Namespace":
            raise self.failing
        self.applied.append(obj)
        return dict(obj)

    async def get(self, *key: str) -> dict[str, Any] | None:
        return None

    async def delete(self, *key: str) -> None:
        self.deleted.append(key)  # type: ignore[arg-type]


def make(
    tmp_path: Path, kube: FakeKube, b: Binding
) -> tuple[reconciler.Reconciler, Store, WorkQueue, LiveCache]:
    cfg = AgentConfig(cluster_file="-")
    store = Store(StateFile(tmp_path), AgentState(cluster="edge", bindings={b.name: b}))
    queue = WorkQueue(Backoff(base=0.05, cap=1.0))
    live = LiveCache()
    ctx = render.ClusterContext(name="edge")
    registry = Registry(ttl=10)
    figures = Observed(registry, MetricWindow(window=60), store)
    hook = webhook.SidecarWebhook(
        cfg, Cluster(name="edge"), ctx, store, queue, tmp_path / "wh", asyncio.Event()
    )
    r = reconciler.Reconciler(
        kube,  # type: ignore[arg-type]
        ctx,
        live,
        store,
        queue,
        figures,
        warmup.WarmUps(registry, figures, store),
        hook,
    )
    return r, store, queue, live


async def run_once(r: reconciler.Reconciler, queue: WorkQueue) -> None:
    synced = asyncio.Event()
    synced.set()
    worker = asyncio.create_task(r.work(synced))
    try:
        async with asyncio.timeout(5):
            while r.reconciles == 0 or not queue.empty():
                await asyncio.sleep(0.01)
    finally:
        worker.cancel()


async def test_applies_what_is_wanted_and_publishes_the_status(tmp_path: Path) -> None:
    kube = FakeKube()
    r, store, queue, live = make(tmp_path, kube, binding())
    queue.add("d.edge")
    await run_once(r, queue)
    assert {o["kind"] for o in kube.applied} >= {"ConfigMap", "StatefulSet"}
    assert len(live.owned_by("d.edge")) == len(kube.applied) - 1  # the Namespace has no owner
    assert store.state.unsent == ["d.edge"]
    assert store.state.statuses["d.edge"].last_error == ""
    assert queue.failures("d.edge") == 0


async def test_a_temporary_error_is_recorded_and_retried_later(tmp_path: Path) -> None:
    kube = FakeKube(KubeError(503, "apply StatefulSet: 503 busy"))
    r, store, queue, _ = make(tmp_path, kube, binding())
    queue.add("d.edge")
    await run_once(r, queue)
    st = store.state.statuses["d.edge"]
    assert st.phase == "Failed"
    assert "503 busy" in st.last_error
    assert queue.failures("d.edge") == 1
    kube.failing = None  # the API server is back: the retry gets through by itself
    async with asyncio.timeout(2):
        assert await queue.get() == "d.edge"
    queue.close()


async def test_a_permanent_error_is_recorded_and_not_retried(tmp_path: Path) -> None:
    kube = FakeKube(KubeError(422, "apply ConfigMap: 422 invalid"))
    r, store, queue, _ = make(tmp_path, kube, binding())
    queue.add("d.edge")
    await run_once(r, queue)
    assert "422 invalid" in store.state.statuses["d.edge"].last_error
    assert queue.failures("d.edge") == 0
    await asyncio.sleep(0.2)
    assert queue.empty()


async def test_a_retired_binding_is_cleaned_up_and_queued_for_finalization(
    tmp_path: Path,
) -> None:
    kube = FakeKube()
    r, store, queue, live = make(tmp_path, kube, binding(deleting=True))
    live.put(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "c",
                "namespace": "ns",
                "labels": {names.BINDING_LABEL: "d.edge"},
            },
        }
    )
    queue.add("d.edge")
    await run_once(r, queue)
    assert kube.deleted == [("v1", "ConfigMap", "ns", "c")]
    assert len(live) == 0
    assert store.state.finalize == ["d.edge"]
