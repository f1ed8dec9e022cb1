"""Data-affinity scheduling with the real kube-scheduler of a local cluster: the webhook
gives a pod that reads the whole dataset a preferred affinity to the dataset's cache-worker
pods, and the scheduler puts it on their node (the edge cluster's two kwok nodes); a
sub-path reader, which gets no such affinity, is spread as the scheduler would; without
workers the injected pod is scheduled all the same."""

import contextlib
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from devkit import testing
from devkit.testing import NotYet, eventually
from fluidfed.models import Access, CacheSpec, Placement
from tests.integration.conftest import Fleet, dataset
from tests.integration.test_webhook import app_pod, create_when_webhook_is_registered, ready

pytestmark = pytest.mark.integration

NAME = "near"
HOME, OTHER = f"{NAME}-home", f"{NAME}-other"
WORKERS = f"fluidfed.io/binding={NAME}.edge,app.kubernetes.io/component=cache-worker"
# a reader's own load: enough that the scheduler, left to itself, would spread readers over
# the two edge nodes (4 CPUs, 8 GiB each), small enough that three fit on one
REQUESTS = {"cpu": "500m", "memory": "1Gi"}


def near(replicas: int) -> Any:
    tiers = [testing.cache_tier("MEM", 2**30), testing.cache_tier("SSD", 2**34, "/mnt/nvme")]
    return dataset(
        NAME,
        placement=Placement(clusters=["edge"]),
        cache=CacheSpec(replicas=replicas, min_replicas=0, max_replicas=2, tiers=tiers),
        # the home namespace reads the whole dataset (short-circuit), the other only val/
        access=[Access(namespace=HOME), Access(namespace=OTHER, sub_path="val")],
    )


def reader(name: str) -> dict[str, Any]:
    pod = app_pod(name, NAME)
    pod["spec"]["containers"][0]["resources"] = {"requests": REQUESTS, "limits": REQUESTS}
    return pod


async def scheduled(core: Any, ns: str, name: str) -> str:
    """The node the scheduler bound the pod to."""

    async def bound() -> Any:
        pod = await core.read_namespaced_pod(name, ns)
        return pod.spec.node_name or NotYet(f"{ns}/{name} not scheduled: {pod.status.conditions}")

    node: str = await eventually(bound, f"the scheduler to place {ns}/{name}", timeout=60)
    return node


def preferred_terms(pod: Any) -> list[Any]:
    affinity = pod.spec.affinity
    if affinity is None or affinity.pod_affinity is None:
        return []
    return affinity.pod_affinity.preferred_during_scheduling_ignored_during_execution or []


async def test_readers_land_beside_the_datasets_workers_and_schedule_without_them(
    fleet: Fleet, apis: dict[str, Any]
) -> None:
    core = client.CoreV1Api(apis["edge"])
    try:
        await _readers_and_workers(fleet, core)
    finally:
        # the edge cluster serves the whole session: its nodes get their room back
        for ns in (HOME, OTHER):
            with contextlib.suppress(ApiException):  # not there if the test failed early
                await core.delete_collection_namespaced_pod(
                    ns, label_selector="fluidfed.io/inject=true", grace_period_seconds=0
                )


async def _readers_and_workers(fleet: Fleet, core: Any) -> None:
    async with fleet.admin() as hub:
        await hub.apply_dataset(near(replicas=1))
    await ready(fleet, NAME, "edge", core.api_client)

    async def worker_node() -> Any:
        pods = (await core.list_namespaced_pod(HOME, label_selector=WORKERS)).items
        return pods[0].spec.node_name if pods and pods[0].spec.node_name else None

    # the StatefulSet's one worker, placed by the scheduler on one of the two kwok nodes
    node = await eventually(worker_node, "the cache worker to be scheduled", timeout=90)
    nodes = {n.metadata.name for n in (await core.list_node()).items}
    assert node in nodes and len(nodes) >= 2

    first = await create_when_webhook_is_registered(core, HOME, reader("reader-0"))
    (term,) = preferred_terms(first)
    assert term.weight == 100
    assert term.pod_affinity_term.topology_key == "kubernetes.io/hostname"
    assert term.pod_affinity_term.namespaces == [HOME]
    assert term.pod_affinity_term.label_selector.match_labels == {
        "fluidfed.io/binding": f"{NAME}.edge",
        "app.kubernetes.io/component": "cache-worker",
    }
    # one after another, each placed before the next comes: every reader joins the worker,
    # though the node fills up with the readers before it
    placed = [await scheduled(core, HOME, "reader-0")]
    for i in (1, 2):
        await core.create_namespaced_pod(HOME, reader(f"reader-{i}"))
        placed.append(await scheduled(core, HOME, f"reader-{i}"))
    assert placed == [node] * 3, f"readers on {placed}, the worker on {node}"

    # a sub-path reader asks the workers over HTTP: no affinity, and the scheduler, left to
    # itself, picks the node with room - not the one the readers filled
    control = await core.create_namespaced_pod(OTHER, reader("sub-path-reader"))
    assert control.metadata.annotations["fluidfed.io/injected-datasets"] == f"{NAME}=data"
    assert preferred_terms(control) == []
    elsewhere = await scheduled(core, OTHER, "sub-path-reader")
    assert elsewhere != node, (
        "without the affinity the reader should have gone to the node with room"
    )

    # no workers (scaled to zero): the preference is only a preference
    async with fleet.admin() as hub:
        await hub.apply_dataset(near(replicas=0))

    async def no_workers() -> Any:
        pods = (await core.list_namespaced_pod(HOME, label_selector=WORKERS)).items
        return not pods or NotYet(f"worker pods left: {[p.metadata.name for p in pods]}")

    await eventually(no_workers, "the cache workers to be gone", timeout=120)
    alone = await core.create_namespaced_pod(HOME, reader("reader-alone"))
    assert len(preferred_terms(alone)) == 1
    assert await scheduled(core, HOME, "reader-alone") in nodes
