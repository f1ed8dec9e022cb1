"""What a binding becomes in its cluster, checked object by object."""

import json

import pytest

from agents import diff, render, status
from fluidfed import codec, names
from fluidfed.data import layout
from fluidfed.data.layout import SidecarConfig, WorkerConfig
from fluidfed.models import (
    Access,
    Binding,
    CacheSpec,
    CacheTier,
    Dataset,
    Mount,
    Resources,
)
from fluidfed.units import ByteSize

CTX = render.ClusterContext(name="edge-1", kind="edge", worker_image="img:1")


def binding(mode: str = "sidecar", **kw: object) -> Binding:
    ds = Dataset(
        name="imagenet",
        namespace="ml",
        mounts=[Mount(uri="s3://b/p", secret="creds", options={"endpoint": "http://s3"})],
        access=[
            Access(namespace="ml", sub_path="train"),
            Access(namespace="research", sub_path="val"),
        ],
        cache=CacheSpec(
            replicas=2,
            tiers=[
                CacheTier(medium="MEM", quota=ByteSize(2 * 2**30)),
                CacheTier(medium="SSD", quota=ByteSize(50 * 2**30), path="/ssd"),
            ],
            resources=Resources(cpu="500m", memory="1Gi"),
        ),
        **kw,  # type: ignore[arg-type]
    )
    return Binding(
        name="imagenet.edge-1",
        dataset="imagenet",
        cluster="edge-1",
        mode=mode,  # type: ignore[arg-type]
        replicas=2,
        generation=3,
        spec=ds,
    )


def by_kind(objs: list[dict]) -> dict[str, list[dict]]:  # type: ignore[type-arg]
    out: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


def test_sidecar_binding_objects() -> None:
    objs = render.desired(binding(), CTX)
    kinds = by_kind(objs)
    assert [o["metadata"]["name"] for o in kinds["Namespace"]] == ["ml", "research"]
    assert objs[0]["kind"] == "Namespace"  # namespaces first
    cms = {o["metadata"]["namespace"]: o for o in kinds["ConfigMap"]}
    assert set(cms) == {"ml", "research"}
    side = json.loads(cms["research"]["data"]["sidecar.json"])
    assert side["sub_path"] == "val" and side["read_only"] is True
    # what the sidecar and the workers read back: the StatefulSet's pods, by DNS name
    cfg = codec.convert(json.loads(cms["research"]["data"]["sidecar.json"]), SidecarConfig)
    assert cfg.workers.urls() == [
        "http://fluidfed-imagenet-cache-0.fluidfed-imagenet-cache.ml.svc:7070",
        "http://fluidfed-imagenet-cache-1.fluidfed-imagenet-cache.ml.svc:7070",
    ]
    assert cfg.sub_path == "val"
    assert "worker.json" in cms["ml"]["data"] and "worker.json" not in cms["research"]["data"]
    wcfg = codec.convert(json.loads(cms["ml"]["data"]["worker.json"]), WorkerConfig)
    assert wcfg.workers == cfg.workers and wcfg.tiers
    (sts,) = kinds["StatefulSet"]
    assert sts["spec"]["replicas"] == 2
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "img:1"
    assert c["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert c["envFrom"] == [{"secretRef": {"name": "creds"}}]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["tier-0-mem"]["emptyDir"] == {"sizeLimit": "2Gi", "medium": "Memory"}
    # a disk tier lives on the node (the tier's path names the root), each worker pod in
    # its own directory below it: a restarted worker keeps its blocks, a sidecar on the
    # node can read them
    host = {"path": "/ssd/ml/imagenet/tier-1", "type": "DirectoryOrCreate"}
    assert vols["tier-1-ssd"]["hostPath"] == host
    seen = "/var/lib/fluidfed/cache/ml/imagenet/tier-1"
    assert {"name": "tier-1-ssd", "mountPath": seen} in c["volumeMounts"]
    assert wcfg.tiers[1].path == seen + "/{pod}" and wcfg.tiers[0].path == ""
    assert layout.own_tiers(wcfg.tiers, "w-0")[1].path == seen + "/w-0"
    assert cfg.short_circuit is True
    assert "tolerations" not in pod  # an edge node needs none
    (svc,) = kinds["Service"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    for o in objs:
        if o["kind"] != "Namespace":
            assert o["metadata"]["labels"][names.BINDING_LABEL] == "imagenet.edge-1"
            assert o["metadata"]["labels"][names.MANAGED_BY] == names.AGENT
    assert "Dataset" not in kinds


def test_serverless_workers_tolerate_the_virtual_node() -> None:
    objs = render.desired(binding(), render.ClusterContext(name="s", kind="serverless"))
    (sts,) = by_kind(objs)["StatefulSet"]
    assert sts["spec"]["template"]["spec"]["tolerations"] == [render.VIRTUAL_NODE_TOLERATION]
    # virtual nodes refuse hostPath and share no node with the pods: the pod's own disk,
    # and sidecars that do not look for block files
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert vols["tier-1-ssd"] == {"name": "tier-1-ssd", "emptyDir": {"sizeLimit": "50Gi"}}
    cm = next(o for o in by_kind(objs)["ConfigMap"] if o["metadata"]["namespace"] == "ml")
    assert json.loads(cm["data"]["sidecar.json"])["short_circuit"] is False


def test_csi_binding_is_fluid_objects_with_references() -> None:
    kinds = by_kind(render.desired(binding("csi"), CTX))
    assert "StatefulSet" not in kinds and "ConfigMap" not in kinds
    home, ref = kinds["Dataset"]
    assert home["metadata"]["namespace"] == "ml"
    assert home["spec"]["mounts"][0]["mountPoint"] == "s3://b/p"
    assert home["spec"]["mounts"][0]["options"] == {"endpoint": "http://s3"}
    assert [e["name"] for e in home["spec"]["mounts"][0]["encryptOptions"]] == [
        "access-key",
        "secret-key",
    ]
    assert ref["metadata"]["namespace"] == "research"
    assert ref["spec"]["mounts"] == [{"mountPoint": "dataset://ml/imagenet", "name": "imagenet"}]
    (rt,) = kinds["ThinRuntime"]
    assert rt["spec"]["replicas"] == 2
    assert rt["spec"]["tieredstore"]["levels"][0] == {
        "mediumtype": "MEM",
        "path": "/dev/shm",
        "quota": "2Gi",
        "high": "0.95",
        "low": "0.7",
    }


@pytest.mark.parametrize(
    ("engine", "kind"), [("juicefs", "JuiceFSRuntime"), ("alluxio", "AlluxioRuntime")]
)
def test_runtime_kind_follows_the_engine(engine: str, kind: str) -> None:
    b = binding("csi")
    ds = Dataset(name="d", mounts=[Mount(uri="s3://b")], cache=CacheSpec(engine=engine))  # type: ignore[arg-type]
    b2 = Binding(
        name="d.c", dataset="d", cluster="c", mode="csi", replicas=1, generation=1, spec=ds
    )
    assert kind in by_kind(render.desired(b2, CTX))
    assert b.spec.cache.engine == "thin"


def test_long_names_are_cut_and_stay_unique() -> None:
    a = render.cache_name("a" * 63)
    b = render.cache_name("a" * 62 + "b")
    assert len(a) <= 52 and len(b) <= 52 and a != b


@pytest.mark.parametrize(
    ("n", "q"), [(2**30, "1Gi"), (1536 * 2**20, "1536Mi"), (2**40, "1Ti"), (1000, "1000")]
)
def test_quantities_are_canonical(n: int, q: str) -> None:
    assert render.quantity(n) == q


def test_subset_compare() -> None:
    want = {
        "metadata": {"name": "x", "labels": {"a": "1"}},
        "spec": {"replicas": 2, "ports": [{"port": 1}]},
    }
    live = {
        "metadata": {"name": "x", "labels": {"a": "1", "b": "2"}, "resourceVersion": "9"},
        "spec": {"replicas": 2, "ports": [{"port": 1, "protocol": "TCP"}]},
        "status": {},
    }
    assert diff.is_subset(want, live)
    assert not diff.needs_apply({"apiVersion": "v1", "kind": "X", **want}, live)
    assert diff.needs_apply({"apiVersion": "v1", "kind": "X", **want}, None)
    live["spec"]["replicas"] = 3
    assert not diff.is_subset(want, live)
    live["spec"]["replicas"] = 2
    live["spec"]["ports"].append({"port": 2})
    assert not diff.is_subset(want, live)  # a list must match in length


def test_status_of_a_sidecar_binding() -> None:
    b = binding()
    key = ("apps/v1", "StatefulSet", "ml", "fluidfed-imagenet-cache")
    assert status.compute(b, {}).phase == "Pending"
    assert status.compute(b, {key: {"status": {"readyReplicas": 1}}}).phase == "Degraded"
    st = status.compute(b, {key: {"status": {"readyReplicas": 2}}}, hub_last_seen=5.0)
    assert (st.phase, st.ready_workers, st.cache_capacity, st.observed_generation) == (
        "Bound",
        2,
        2 * 52 * 2**30,
        3,
    )
    assert st.hub_last_seen == 5.0
    assert status.compute(b, {}, error="boom").phase == "Failed"


def test_status_of_a_csi_binding_reads_fluid() -> None:
    b = binding("csi")
    api = "data.fluid.io/v1alpha1"
    live = {
        (api, "Dataset", "ml", "imagenet"): {
            "status": {
                "phase": "Bound",
                "cacheStates": {
                    "cached": "1.5GiB",
                    "cacheCapacity": "4GiB",
                    "cachedPercentage": "37.5%",
                    "cacheHitRatio": "92.0%",
                },
            }
        },
        (api, "ThinRuntime", "ml", "imagenet"): {"status": {"workerNumberReady": 2}},
    }
    st = status.compute(b, live)
    assert (st.phase, st.cache_used, st.cache_capacity, st.ready_workers) == (
        "Bound",
        int(1.5 * 2**30),
        4 * 2**30,
        2,
    )
    assert st.hit_ratio == pytest.approx(0.92)
    # a Status object where an object was expected (a failed read) is no object at all
    assert (
        status.compute(b, {(api, "Dataset", "ml", "imagenet"): {"status": "Failure"}}).phase
        == "Pending"
    )
