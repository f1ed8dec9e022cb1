"""What a binding becomes in its cluster, checked object by object."""

import base64
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agents import objects, render, trust
from devkit import testing
from fluidfed import codec, names
from fluidfed.data import credentials, layout
from fluidfed.data.layout import SidecarConfig, WorkerConfig
from fluidfed.models import (
    Access,
    Binding,
    CacheSpec,
    LoadRequest,
    Mount,
    MountMode,
    Resources,
)

CTX = objects.ClusterContext(name="edge-1", kind="edge", worker_image="img:1")
NEW, OLD = b"n" * 32, b"o" * 32
CREDS = trust.DataCredentials(keys=[NEW, OLD], sign=1)


def binding(mode: MountMode = "sidecar", **kw: Any) -> Binding:
    ds = testing.dataset(
        "imagenet",
        namespace="ml",
        mounts=[Mount(uri="s3://b/p", secret="creds", options={"endpoint": "http://s3"})],
        access=kw.pop(
            "access",
            [
                Access(namespace="ml", sub_path="train"),
                Access(namespace="research", sub_path="val"),
            ],
        ),
        cache=CacheSpec(
            replicas=2,
            tiers=[
                testing.cache_tier("MEM", 2 * 2**30),
                testing.cache_tier("SSD", 50 * 2**30, "/ssd"),
            ],
            resources=Resources(cpu="500m", memory="1Gi"),
        ),
        **kw,
    )
    return testing.binding(ds, "edge-1", mode=mode, replicas=2, generation=3)


def by_kind(objs: list[dict]) -> dict[str, list[dict]]:  # type: ignore[type-arg]
    out: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


def test_sidecar_binding_objects() -> None:
    objs = render.desired(binding(), CTX, CREDS)
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
    # the image's user runs the worker: the keys' Secret is its group's, and the node's tier
    # directory (the kubelet makes it root's) is handed to it before the worker starts
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == 65532
    (owner,) = pod["initContainers"]
    assert owner["command"] == ["chown", "65532:65532", seen]
    assert owner["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert owner["volumeMounts"] == [{"name": "tier-1-ssd", "mountPath": seen}]
    # research reads val/ only: not the node's block files, which hold every sub-path
    assert cfg.short_circuit is False
    assert "tolerations" not in pod  # an edge node needs none
    (svc,) = kinds["Service"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    for o in objs:
        if o["kind"] != "Namespace":
            assert o["metadata"]["labels"][names.BINDING_LABEL] == "imagenet.edge-1"
            assert o["metadata"]["labels"][names.MANAGED_BY] == names.AGENT
    assert "Dataset" not in kinds


def test_only_readers_of_the_whole_dataset_read_the_nodes_block_files() -> None:
    b = binding(access=[Access(namespace="ml"), Access(namespace="research", sub_path="val")])
    cms = {
        o["metadata"]["namespace"]: o for o in by_kind(render.desired(b, CTX, CREDS))["ConfigMap"]
    }
    assert json.loads(cms["ml"]["data"]["sidecar.json"])["short_circuit"] is True
    assert json.loads(cms["research"]["data"]["sidecar.json"])["short_circuit"] is False


def test_an_injected_sidecars_own_tiers_are_its_arguments_and_its_pods_emptydir_volumes(
    tmp_path: Path,
) -> None:
    """`cache.sidecar_tiers`: the webhook gives the sidecar its tiers in its arguments (the
    pod keeps those it was admitted with: its volumes cannot change) and mounts an emptyDir
    where each disk tier is said to be; the sidecar reads its arguments so."""
    import argparse

    from agents.webhook import mutate
    from sidecar import commands as sidecar_commands
    from tests.unit.agents.webhook.pods import LEGACY, PRIV, pod

    tiers = [testing.cache_tier("MEM", 256 * 2**20), testing.cache_tier("SSD", 20 * 2**30)]
    b = binding()
    cache = msgspec.structs.replace(b.spec.cache, sidecar_tiers=tiers)
    b = msgspec.structs.replace(b, spec=msgspec.structs.replace(b.spec, cache=cache))
    cms = {
        o["metadata"]["namespace"]: o for o in by_kind(render.desired(b, CTX, CREDS))["ConfigMap"]
    }
    assert "cache" not in json.loads(cms["research"]["data"]["sidecar.json"])
    out = mutate.mutate(pod(), "research", {"imagenet": b}, PRIV).pod
    assert out is not None
    spec = out["spec"]
    # the volume: the sidecar's alone, no sizeLimit (kubelet would evict the whole pod
    # for what the tier's files take beyond their bytes); memory tiers are its memory
    vol = {"name": "fluidfed-imagenet-sidecar-tier-1-ssd", "emptyDir": {}}
    assert vol in spec["volumes"]
    (side,) = spec["initContainers"]
    assert all(
        m["name"] != vol["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])
    )
    assert side["resources"] == {"requests": {"ephemeral-storage": "20Gi"}}
    # what the sidecar makes of its arguments, its config file the agent's
    (tmp_path / "sidecar.json").write_text(cms["research"]["data"]["sidecar.json"])
    argv = [
        str(tmp_path / "sidecar.json") if a.endswith("/sidecar.json") else a for a in side["args"]
    ]
    parser = argparse.ArgumentParser()
    sidecar_commands.register(parser.add_subparsers())
    cfg = sidecar_commands.sidecar_config(parser.parse_args(argv))
    assert [(t.medium, t.quota) for t in cfg.cache] == [("MEM", 256 * 2**20), ("SSD", 20 * 2**30)]
    assert cfg.cache[0].path == ""
    assert {"name": vol["name"], "mountPath": cfg.cache[1].path} in side["volumeMounts"]
    assert cfg.cache[1].path == "/fluidfed/cache/imagenet/tier-1"
    # an app container with a limit of ephemeral storage: kubelet holds the pod to the sum
    # of the limits, the tier's emptyDir counted, so the sidecar's makes room for it
    limited = pod()
    limited["spec"]["containers"][0]["resources"] = {"limits": {"ephemeral-storage": "1Gi"}}
    out = mutate.mutate(limited, "research", {"imagenet": b}, PRIV).pod
    assert out is not None
    assert out["spec"]["initContainers"][0]["resources"] == {
        "requests": {"ephemeral-storage": "20Gi"},
        "limits": {"ephemeral-storage": "40Gi"},
    }
    # the legacy form (a regular container): the pod's limit is the larger of the regular
    # containers' sum and the largest init container's, which the sidecar's must pass
    fetch = {"name": "fetch", "image": "x", "resources": {"limits": {"ephemeral-storage": "100Gi"}}}
    limited["spec"]["initContainers"] = [fetch]
    out = mutate.mutate(limited, "research", {"imagenet": b}, LEGACY).pod
    assert out is not None
    side = out["spec"]["containers"][0]
    assert side["resources"]["limits"] == {"ephemeral-storage": f"{40 + 99}Gi"}
    # none named: no volume, no argument, and the sidecar's default (128 MiB of memory)
    out = mutate.mutate(pod(), "ml", {"imagenet": binding()}, PRIV).pod
    assert out is not None
    assert not any("sidecar-tier" in v["name"] for v in out["spec"]["volumes"])
    assert "--cache-tiers" not in out["spec"]["initContainers"][0]["args"]
    assert "resources" not in out["spec"]["initContainers"][0]


def test_serverless_workers_tolerate_the_virtual_node() -> None:
    objs = render.desired(binding(), objects.ClusterContext(name="s", kind="serverless"), CREDS)
    (sts,) = by_kind(objs)["StatefulSet"]
    assert sts["spec"]["template"]["spec"]["tolerations"] == [objects.VIRTUAL_NODE_TOLERATION]
    # virtual nodes refuse hostPath and share no node with the pods: the pod's own disk,
    # and sidecars that do not look for block files
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    # no sizeLimit: kubelet would count what the block files take beyond their bytes (a
    # trailer, the page each ends in) and evict the worker; its quota asked for instead
    assert vols["tier-1-ssd"] == {"name": "tier-1-ssd", "emptyDir": {}}
    (worker,) = sts["spec"]["template"]["spec"]["containers"]
    assert worker["resources"]["requests"] == {
        "cpu": "500m",
        "memory": "1Gi",
        "ephemeral-storage": "50Gi",
    }
    assert "ephemeral-storage" not in worker["resources"]["limits"]
    assert "initContainers" not in sts["spec"]["template"]["spec"]  # fsGroup covers emptyDir
    cm = next(o for o in by_kind(objs)["ConfigMap"] if o["metadata"]["namespace"] == "ml")
    assert json.loads(cm["data"]["sidecar.json"])["short_circuit"] is False


def test_csi_binding_is_fluid_objects_with_references() -> None:
    kinds = by_kind(render.desired(binding("csi"), CTX, CREDS))
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
    # the default engine: fluidfed's sidecar as the FUSE container of a ThinRuntimeProfile
    (prof,) = kinds["ThinRuntimeProfile"]
    assert "namespace" not in prof["metadata"]  # cluster-scoped
    fuse = prof["spec"]["fuse"]
    assert (fuse["image"], fuse["imageTag"]) == ("img", "1")
    assert fuse["command"][:5] == [
        "fluidfed", "sidecar", "mount", "--fluid-config", "/etc/fluid/config/config.json"
    ]  # fmt: skip
    rt, ref_rt = kinds["ThinRuntime"]
    assert rt["spec"]["profileName"] == prof["metadata"]["name"]
    opts = rt["spec"]["fuse"]["options"]
    assert (opts["dataset"], opts["block_size"]) == ("imagenet", str(4 * 2**20))
    # fluidfed's cache workers behind Fluid's FUSE pods, as for sidecars
    (sts,) = kinds["StatefulSet"]
    assert sts["spec"]["replicas"] == 2 and opts["workers_replicas"] == "2"
    assert opts["workers_statefulset"] == sts["metadata"]["name"]
    assert opts["workers_service"] == f"{sts['metadata']['name']}.ml.svc"
    (cm,) = kinds["ConfigMap"]
    assert set(cm["data"]) == {"worker.json"} and cm["metadata"]["namespace"] == "ml"
    # the FUSE pods read the whole dataset with a reader token, labelled as readers
    (reader,) = [s for s in kinds["Secret"] if s["metadata"]["name"].endswith("-reader")]
    token = json.loads(base64.b64decode(reader["data"][names.CREDENTIALS_FILE]))["token"]
    claims = credentials.verify(token, [NEW, OLD])
    assert (claims.role, claims.namespace, claims.sub_path) == ("reader", "ml", "")
    mount = fuse["volumeMounts"][0]
    assert opts["credentials_file"].startswith(mount["mountPath"] + "/")
    assert prof["spec"]["volumes"][0]["secret"]["secretName"] == reader["metadata"]["name"]
    assert fuse["podMetadata"]["labels"] == {trust.reader_label("imagenet"): "true"}
    # Fluid's reference mode: a ThinRuntime without a profile beside the dataset:// Dataset
    assert ref_rt["metadata"]["namespace"] == "research" and ref_rt["spec"] == {}


@pytest.mark.parametrize(
    ("engine", "kind"),
    [("juicefs", "JuiceFSRuntime"), ("alluxio", "AlluxioRuntime"), ("jindo", "JindoRuntime")],
)
def test_cache_engines_get_their_runtime_with_the_tiers(engine: str, kind: str) -> None:
    uri = "juicefs:///d" if engine == "juicefs" else "s3://b"
    ds = testing.dataset(
        "d",
        uri=uri,
        cache=CacheSpec(engine=engine, tiers=[testing.cache_tier("MEM", 2**31)]),  # type: ignore[arg-type]
    )
    kinds = by_kind(render.desired(testing.binding(ds, mode="csi", replicas=2), CTX, CREDS))
    (rt,) = kinds[kind]
    assert rt["spec"]["replicas"] == 2
    # (JuiceFS: Fluid hands level 0's `low` to it as free-space-ratio, the disk's share
    # kept free: the tier's min_free, 0.15 by default; a usage watermark for the others)
    low = "0.15" if engine == "juicefs" else "0.7"
    assert rt["spec"]["tieredstore"]["levels"] == [
        {"mediumtype": "MEM", "path": "/dev/shm", "quota": "2Gi", "high": "0.95", "low": low}
    ]
    assert "ThinRuntimeProfile" not in kinds and "StatefulSet" not in kinds


def test_a_juicefs_disk_tier_keeps_its_min_free_as_juicefs_free_space_ratio() -> None:
    tier = testing.cache_tier("SSD", 2**34, "/mnt/nvme", min_free=0.25, low=0.5)
    ds = testing.dataset("d", uri="juicefs:///d", cache=CacheSpec(engine="juicefs", tiers=[tier]))
    kinds = by_kind(render.desired(testing.binding(ds, mode="csi"), CTX, CREDS))
    (level,) = kinds["JuiceFSRuntime"][0]["spec"]["tieredstore"]["levels"]
    assert level["path"] == "/mnt/nvme" and level["quota"] == "16Gi" and level["low"] == "0.25"


def test_a_reference_dataset_is_fluids_reference_mode() -> None:
    ds = testing.dataset("r", uri="dataset://ml/imagenet")
    kinds = by_kind(render.desired(testing.binding(ds, mode="csi"), CTX, CREDS))
    (rt,) = kinds["ThinRuntime"]
    assert rt["spec"] == {} and "ThinRuntimeProfile" not in kinds


def test_long_names_are_cut_and_stay_unique() -> None:
    a = objects.cache_name("a" * 63)
    b = objects.cache_name("a" * 62 + "b")
    assert len(a) <= 52 and len(b) <= 52 and a != b


@pytest.mark.parametrize(
    ("n", "q"),
    [
        (2**30, "1Gi"),
        (1536 * 2**20, "1536Mi"),
        (2**40, "1Ti"),
        (1024000, "1000Ki"),
        # what the local clusters' kube-apiserver echoed for these as plain integers
        (1000, "1k"),
        (1500000, "1500k"),
        (50 * 10**9 + 10**6, "50001M"),
        (10**15 * 3, "2929687500000Ki"),  # (a multiple of 1024 is kept binary)
        (3 * 10**9, "3G"),
        (1234567, "1234567"),
        (2048, "2Ki"),
    ],
)
def test_quantities_are_canonical(n: int, q: str) -> None:
    assert objects.quantity(n) == q


def _secret_file(secret: dict[str, Any]) -> credentials.CredentialFile:
    raw = base64.b64decode(secret["data"][names.CREDENTIALS_FILE])
    return msgspec.json.decode(raw, type=credentials.CredentialFile)


def test_the_binding_keys_are_a_secret_in_the_home_namespace_mounted_0600_by_the_workers() -> None:
    objs = render.desired(binding(), CTX, CREDS)
    secrets = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o for o in by_kind(objs)["Secret"]
    }
    keys = _secret_file(secrets[("ml", "fluidfed-imagenet-keys")])
    assert [credentials.decode_key(k) for k in keys.keys] == [NEW, OLD] and keys.sign == 1
    assert not keys.token
    (sts,) = by_kind(objs)["StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["credentials"]["secret"] == {
        "secretName": "fluidfed-imagenet-keys",
        "defaultMode": 0o600,
    }
    c = pod["containers"][0]
    assert {"name": "credentials", "mountPath": "/etc/fluidfed-credentials", "readOnly": True} in c[
        "volumeMounts"
    ]
    cm = next(o for o in by_kind(objs)["ConfigMap"] if o["metadata"]["namespace"] == "ml")
    wcfg = json.loads(cm["data"]["worker.json"])
    assert wcfg["credentials_file"] == "/etc/fluidfed-credentials/credentials.json"
    # in a pod the worker binds the pod's address, given explicitly (loopback otherwise)
    assert c["args"][-2:] == ["--host", "$(POD_IP)"]
    assert c["env"] == [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    ]


def test_each_access_namespace_gets_a_reader_token_of_its_sub_path_and_no_configmap_holds_one() -> (
    None
):
    objs = render.desired(binding(), CTX, CREDS)
    readers = {
        o["metadata"]["namespace"]: _secret_file(o)
        for o in by_kind(objs)["Secret"]
        if o["metadata"]["name"] == "fluidfed-imagenet-reader"
    }
    assert set(readers) == {"ml", "research"}
    # signed by the key the agent says signs (the old one, while the new one spreads)
    claims = credentials.verify(readers["research"].token, [OLD])
    assert claims == credentials.Claims(
        role="reader", dataset="imagenet", namespace="research", sub_path="val"
    )
    assert credentials.verify(readers["ml"].token, [OLD]).sub_path == "train"
    with pytest.raises(credentials.Refused):
        credentials.verify(readers["ml"].token, [NEW])
    for cm in by_kind(objs)["ConfigMap"]:
        text = json.dumps(cm)
        assert readers["ml"].token not in text and readers["research"].token not in text
        assert base64.b64encode(NEW).decode() not in text
    side = json.loads(
        next(o for o in by_kind(objs)["ConfigMap"] if o["metadata"]["namespace"] == "research")[
            "data"
        ]["sidecar.json"]
    )
    assert side["credentials_file"] == "/etc/fluidfed-credentials/imagenet/credentials.json"


def test_rendering_is_stable_so_an_unchanged_secret_is_not_applied_again() -> None:
    assert render.desired(binding(), CTX, CREDS) == render.desired(binding(), CTX, CREDS)


def test_the_workers_admit_only_the_datasets_readers_their_peers_and_the_agent() -> None:
    (pol,) = by_kind(render.desired(binding(), CTX, CREDS))["NetworkPolicy"]
    (sts,) = by_kind(render.desired(binding(), CTX, CREDS))["StatefulSet"]
    assert pol["metadata"]["namespace"] == "ml"
    spec = pol["spec"]
    assert spec["podSelector"] == {"matchLabels": sts["spec"]["selector"]["matchLabels"]}
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": 7070, "protocol": "TCP"}]
    peers, readers, agent = rule["from"]
    assert peers == {"podSelector": spec["podSelector"]}
    assert readers["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ml", "research"]}
    ]
    assert readers["podSelector"] == {"matchLabels": {"fluidfed.io/reader-imagenet": "true"}}
    assert agent["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "fluidfed-agent"}}


def test_csi_bindings_of_fluids_cache_engines_get_no_secrets() -> None:
    ds = testing.dataset("d", uri="s3://b", cache=CacheSpec(engine="alluxio"))
    b = testing.binding(ds, mode="csi")
    kinds = by_kind(render.desired(b, CTX, trust.DataCredentials(keys=())))
    assert "Secret" not in kinds and "NetworkPolicy" not in kinds


def loading(engine: str, **load: Any) -> Binding:
    ds = testing.dataset("d", namespace="ml", uri="s3://b", cache=CacheSpec(engine=engine))  # type: ignore[arg-type]
    return testing.binding(ds, mode="csi", load=LoadRequest(id=42, **load))


def test_fluids_engines_load_with_fluids_dataload() -> None:
    (once,) = by_kind(render.desired(loading("alluxio", path="train"), CTX, CREDS))["DataLoad"]
    assert once["metadata"]["name"] == "d-load-42" and once["metadata"]["namespace"] == "ml"
    assert once["spec"] == {
        "dataset": {"name": "d", "namespace": "ml"},
        "loadMetadata": True,
        "policy": "Once",
        "target": [{"path": "/train"}],
    }
    (cron,) = by_kind(render.desired(loading("jindo", schedule="0 */6 * * *"), CTX, CREDS))[
        "DataLoad"
    ]
    assert (cron["spec"]["policy"], cron["spec"]["schedule"]) == ("Cron", "0 */6 * * *")
    (changes,) = by_kind(render.desired(loading("juicefs", on_change=True), CTX, CREDS))["DataLoad"]
    assert changes["spec"]["policy"] == "Cron" and changes["spec"]["loadMetadata"] is True
    # fluidfed's engine loads on its own workers: no DataLoad
    assert "DataLoad" not in by_kind(render.desired(loading("fluidfed"), CTX, CREDS))
