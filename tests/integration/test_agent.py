"""Agents on three real local clusters (standard with Fluid's CRDs, serverless, edge),
following a real hub process."""

import asyncio
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from devkit.local import secrets
from devkit.testing import NotYet, eventually, run_cli
from fluidfed.data import credentials
from fluidfed.models import (
    CacheSpec,
    CacheTier,
    Placement,
)
from fluidfed.units import ByteSize
from tests.integration.conftest import Fleet, bound_view, dataset, workers_report

pytestmark = pytest.mark.integration

FLUID = ("data.fluid.io", "v1alpha1")


async def sts_of(api: Any, ns: str, name: str) -> Any:
    try:
        return await client.AppsV1Api(api).read_namespaced_stateful_set(name, ns)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


async def owned(api: Any, ns: str) -> dict[str, str]:
    """kind/name -> resourceVersion of the agent's objects in a namespace."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    sel = "fluidfed.io/managed-by=fluidfed-agent"
    out = {}
    o: Any  # a model of each kind in turn
    for o in (await core.list_namespaced_config_map(ns, label_selector=sel)).items:
        out[f"ConfigMap/{o.metadata.name}"] = o.metadata.resource_version
    for o in (await core.list_namespaced_service(ns, label_selector=sel)).items:
        out[f"Service/{o.metadata.name}"] = o.metadata.resource_version
    for o in (await apps.list_namespaced_stateful_set(ns, label_selector=sel)).items:
        out[f"StatefulSet/{o.metadata.name}"] = o.metadata.resource_version
    # the binding's keys: an agent restart must not rotate them
    for o in (await core.list_namespaced_secret(ns, label_selector=sel)).items:
        out[f"Secret/{o.metadata.name}"] = o.metadata.resource_version
    net = client.NetworkingV1Api(api)
    for o in (await net.list_namespaced_network_policy(ns, label_selector=sel)).items:
        out[f"NetworkPolicy/{o.metadata.name}"] = o.metadata.resource_version
    for o in (await core.list_namespaced_pod(ns, label_selector=sel)).items:
        out[f"Pod/{o.metadata.name}"] = o.metadata.uid
    return out


async def test_one_dataset_on_three_clusters_scale_and_delete(
    fleet: Fleet, apis: dict[str, Any]
) -> None:
    name = "three"
    async with fleet.admin() as hub:
        view = await hub.apply_dataset(dataset(name))
    assert {v.binding.cluster: v.binding.mode for v in view.bindings} == {
        "standard": "csi",
        "serverless": "sidecar",
        "edge": "sidecar",
    }

    async def sidecar_bound() -> Any:
        v = await fleet.view(name)
        phases = {b.binding.cluster: b.status.phase if b.status else "" for b in v.bindings}
        if phases.get("serverless") == "Bound" and phases.get("edge") == "Bound":
            return v
        reports = [await workers_report(fleet, k, v.spec) for k in ("serverless", "edge")]
        return NotYet(f"phases={phases}\n" + "\n".join(reports))

    await eventually(sidecar_bound, "sidecar bindings Bound")

    home, other = f"{name}-home", f"{name}-other"
    for kind in ("serverless", "edge"):
        api = apis[kind]
        core = client.CoreV1Api(api)
        cm_home = await core.read_namespaced_config_map(f"fluidfed-{name}", home)
        cm_other = await core.read_namespaced_config_map(f"fluidfed-{name}", other)
        assert set(cm_home.data) == {"sidecar.json", "worker.json"}
        assert '"sub_path":"val"' in cm_other.data["sidecar.json"]
        svc = await core.read_namespaced_service(f"fluidfed-{name}-cache", home)
        assert svc.spec.cluster_ip == "None"
        sts = await sts_of(api, home, f"fluidfed-{name}-cache")
        assert sts.spec.replicas == 1
        assert sts.metadata.labels["fluidfed.io/binding"] == f"{name}.{kind}"
        # the binding's credentials: keys for the workers, a reader token per namespace
        # (of its entry's sub-path), only the workers' peers, readers and agent admitted
        keys = await secrets.worker_credentials(api, home, name)
        token = await secrets.reader_token(api, other, name)
        assert keys is not None and len(keys.keys) == 1 and token
        held = [credentials.decode_key(k) for k in keys.keys]
        claims = credentials.verify(token, held)
        assert (claims.role, claims.namespace, claims.sub_path) == ("reader", other, "val")
        assert token not in cm_other.data["sidecar.json"] + cm_home.data["worker.json"]
        assert keys.keys[0] not in cm_home.data["worker.json"]
        policy = await client.NetworkingV1Api(api).read_namespaced_network_policy(
            f"fluidfed-{name}-cache", home
        )
        assert policy.spec.pod_selector.match_labels == sts.spec.selector.match_labels
        pods = (await core.list_namespaced_pod(home)).items
        assert [p.status.phase for p in pods] == ["Running"]
        if kind == "serverless":
            assert pods[0].spec.node_name == "virtual-kubelet"
        # no Fluid objects where the cluster mounts by sidecar
        assert not await _fluid_objects(api, home)

    # the standard cluster holds Fluid's objects instead, and no cache-worker StatefulSet
    api = apis["standard"]
    custom = client.CustomObjectsApi(api)

    async def fluid_made() -> bool:
        return (
            len(await _fluid_objects(api, home)) == 2 and len(await _fluid_objects(api, other)) == 2
        )

    await eventually(fluid_made, "Fluid Dataset and Runtime in the standard cluster")
    home_ds = await custom.get_namespaced_custom_object(*FLUID, home, "datasets", name)
    assert home_ds["spec"]["mounts"][0]["mountPoint"] == "s3://bucket/data"
    assert (
        home_ds["spec"]["mounts"][0]["encryptOptions"][0]["valueFrom"]["secretKeyRef"]["name"]
        == "s3-creds"
    )
    ref = await custom.get_namespaced_custom_object(*FLUID, other, "datasets", name)
    assert ref["spec"]["mounts"] == [{"mountPoint": f"dataset://{home}/{name}", "name": name}]
    # the default engine: Fluid's FUSE pods run fluidfed's sidecar, before fluidfed's workers
    runtime = await custom.get_namespaced_custom_object(*FLUID, home, "thinruntimes", name)
    profile = await custom.get_cluster_custom_object(
        *FLUID, "thinruntimeprofiles", runtime["spec"]["profileName"]
    )
    assert profile["spec"]["fuse"]["command"][:3] == ["fluidfed", "sidecar", "mount"]
    assert runtime["spec"]["fuse"]["options"]["workers_replicas"] == "1"
    # (applied in the same reconcile as the Fluid objects, not necessarily before them)
    await eventually(
        lambda: sts_of(api, home, f"fluidfed-{name}-cache"),
        "fluidfed's cache workers' StatefulSet in the standard cluster",
    )

    # Fluid's controller reports the cache; the agent carries it to the hub
    await custom.patch_namespaced_custom_object_status(  # type: ignore[call-arg]
        *FLUID,
        home,
        "datasets",
        name,
        {
            "status": {
                "phase": "Bound",
                # Fluid's schema requires the conditions its controller keeps
                "conditions": [{"type": "Ready", "status": "True", "reason": "DatasetReady"}],
                "cacheStates": {
                    "cached": "512MiB",
                    "cacheCapacity": "1GiB",
                    "cachedPercentage": "50%",
                    "cacheHitRatio": "80.0%",
                },
            }
        },
        _content_type="application/merge-patch+json",
    )

    async def csi_bound() -> Any:
        v = await fleet.view(name)
        st = next(b.status for b in v.bindings if b.binding.cluster == "standard")
        return st if st and st.phase == "Bound" else None

    st = await eventually(csi_bound, "Fluid status at the hub")
    assert st.cache_used == 512 * 2**20 and st.cache_capacity == 2**30
    assert st.hit_ratio == pytest.approx(0.8)
    done = run_cli(
        "--hub", fleet.hub.url, "--token", fleet.hub.admin_token, "--cacert", fleet.hub.ca_file,
        "describe", "dataset", name,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for cl in ("standard", "serverless", "edge"):
        assert cl in out
    assert "Bound" in out and "0.80" in out

    # scale: the StatefulSets follow, and the Fluid runtime's replicas too
    async with fleet.admin() as hub:
        await hub.apply_dataset(
            dataset(
                name,
                cache=CacheSpec(
                    replicas=3,
                    max_replicas=5,
                    tiers=[CacheTier(medium="MEM", quota=ByteSize(2**30))],
                ),
            )
        )

    async def scaled() -> bool:
        for kind in ("serverless", "edge", "standard"):
            pods = (await client.CoreV1Api(apis[kind]).list_namespaced_pod(home)).items
            if sorted(p.status.phase for p in pods) != ["Running"] * 3:
                return False
        rt = await custom.get_namespaced_custom_object(*FLUID, home, "thinruntimes", name)
        return bool(rt["spec"]["fuse"]["options"]["workers_replicas"] == "3")

    await eventually(scaled, "three cache workers per cluster")

    # delete: every owned object goes, and the hub forgets the bindings once they are gone
    async with fleet.admin() as hub:
        await hub.delete_dataset(name)

    async def all_gone() -> bool:
        async with fleet.admin() as hub:
            if (await hub.list_bindings()).items:
                return False
        for kind in ("serverless", "edge"):
            if await owned(apis[kind], home) or await owned(apis[kind], other):
                return False
        return not await _fluid_objects(apis["standard"], home) and not await _fluid_objects(
            apis["standard"], other
        )

    await eventually(all_gone, "owned objects deleted and bindings finalized", timeout=90)


async def _fluid_objects(api: Any, ns: str) -> list[str]:
    custom = client.CustomObjectsApi(api)
    names = []
    for plural in ("datasets", "thinruntimes"):
        try:
            got = await custom.list_namespaced_custom_object(*FLUID, ns, plural)
        except ApiException as err:
            if err.status == 404:
                continue
            raise
        names += [f"{plural}/{o['metadata']['name']}" for o in got["items"]]
    return names


async def test_edge_keeps_working_while_the_hub_is_away(fleet: Fleet, apis: dict[str, Any]) -> None:
    name = "autonomy"
    home = f"{name}-home"
    api = apis["edge"]
    core = client.CoreV1Api(api)
    async with fleet.admin() as hub:
        await hub.apply_dataset(dataset(name, placement=Placement(clusters=["edge"])))

    async def bound() -> Any:
        return await bound_view(fleet, name)

    await eventually(bound, "edge binding Bound")
    before = await owned(api, home)
    assert (
        "StatefulSet/fluidfed-autonomy-cache" in before
        and "Pod/fluidfed-autonomy-cache-0" in before
    )

    fleet.hub.stop()
    # drift while the hub is away: deleted by hand, restored by the agent
    await core.delete_namespaced_config_map(f"fluidfed-{name}", home)

    # a read that fails (404 until it is back) is one more try
    await eventually(
        lambda: core.read_namespaced_config_map(f"fluidfed-{name}", home),
        "ConfigMap restored with the hub down",
    )
    # an edit by hand is undone too
    await client.AppsV1Api(api).patch_namespaced_stateful_set(  # type: ignore[call-arg]
        f"fluidfed-{name}-cache",
        home,
        {"spec": {"replicas": 2}},
        _content_type="application/merge-patch+json",
    )

    async def replicas_back() -> bool:
        sts = await sts_of(api, home, f"fluidfed-{name}-cache")
        return bool(sts.spec.replicas == 1)

    await eventually(replicas_back, "StatefulSet replicas restored")

    # restart the agent while the hub is still down: it carries on from its state on disk
    agent = fleet.agents["edge"]
    agent.stop()
    await core.delete_namespaced_service(f"fluidfed-{name}-cache", home)
    agent.start()

    await eventually(
        lambda: core.read_namespaced_service(f"fluidfed-{name}-cache", home),
        "Service restored by the restarted agent, hub still down",
    )
    assert "hub unavailable" in agent.log_text()

    # the hub returns: the status catches up, nothing that was right was recreated
    fleet.hub.start()

    async def caught_up() -> Any:
        v = await fleet.view(name)
        st = v.bindings[0].status
        return st if st and st.phase == "Bound" and st.hub_last_seen > 0 else None

    await eventually(caught_up, "status after the hub's return")
    after = await owned(api, home)
    assert after["Pod/fluidfed-autonomy-cache-0"] == before["Pod/fluidfed-autonomy-cache-0"]
    assert (
        after["ConfigMap/fluidfed-autonomy"] != before["ConfigMap/fluidfed-autonomy"]
    )  # recreated


async def test_restart_changes_nothing_that_is_right(fleet: Fleet, apis: dict[str, Any]) -> None:
    name = "steady"
    home = f"{name}-home"
    async with fleet.admin() as hub:
        await hub.apply_dataset(dataset(name, placement=Placement(clusters=["serverless"])))

    async def bound() -> Any:
        return await bound_view(fleet, name)

    await eventually(bound, "serverless binding Bound")
    api = apis["serverless"]
    before = await owned(api, home)
    agent = fleet.agents["serverless"]
    agent.stop()
    fleet.hub.stop()
    fleet.hub.start()  # a reconnect after a hub restart, and an agent restart
    # while the agent is down, one of its objects goes: the restarted agent must notice
    # (proof that it reconciled), and leave everything else as it was
    gone = f"fluidfed-{name}"
    await client.CoreV1Api(api).delete_namespaced_config_map(gone, home)
    agent.start()

    async def restored() -> bool:
        return f"ConfigMap/{gone}" in await owned(api, home)

    await eventually(restored, "the restarted agent to recreate what went")
    await asyncio.sleep(3)  # several status intervals and watch events
    after = await owned(api, home)
    assert after.pop(f"ConfigMap/{gone}") != before.pop(f"ConfigMap/{gone}")
    assert after == before


async def test_a_binding_kubernetes_refuses_gets_a_clear_status_others_go_on(
    fleet: Fleet, apis: dict[str, Any]
) -> None:
    # what the hub cannot know: the cluster's own policy (here a quota of no StatefulSets
    # in the dataset's namespace) refuses the cache workers
    core = client.CoreV1Api(apis["edge"])
    await core.create_namespace({"metadata": {"name": "refused-home"}})  # type: ignore[arg-type]
    await core.create_namespaced_resource_quota(
        "refused-home",
        {  # type: ignore[arg-type]
            "metadata": {"name": "no-statefulsets"},
            "spec": {"hard": {"count/statefulsets.apps": "0"}},
        },
    )
    bad = dataset(
        "refused",
        placement=Placement(clusters=["edge"]),
        cache=CacheSpec(replicas=1, tiers=[CacheTier(medium="MEM", quota=ByteSize(2**30))]),
    )
    good = dataset("fine", placement=Placement(clusters=["edge"]))
    async with fleet.admin() as hub:
        await hub.apply_dataset(bad)
        await hub.apply_dataset(good)

    async def settled() -> Any:
        b, g = await fleet.view("refused"), await fleet.view("fine")
        sb, sg = b.bindings[0].status, g.bindings[0].status
        if sb and sg and sb.phase == "Failed" and sg.phase == "Bound":
            return sb, sg
        return NotYet(f"refused: {sb}\nfine: {sg}\n{await workers_report(fleet, 'edge', g.spec)}")

    sb, _ = await eventually(settled, "one Failed, one Bound")
    # the API server's refusal, said with the object it was about
    assert "apply StatefulSet refused-home/fluidfed-refused-cache" in sb.last_error
    assert "quota" in sb.last_error, sb.last_error
