"""The sidecar injection over many pod shapes, checked on the resulting pod (and on the
patch: applying it to the original gives that pod)."""

from typing import Any

import msgspec
import pytest

from agents.webhook import mutate as m
from devkit import testing
from fluidfed.models import Access, CacheSpec, CacheTier, Capabilities, Mount
from fluidfed.units import ByteSize
from tests.unit.agents.webhook.pods import BINDINGS, LEGACY, PRIV, apply_patch, binding, pod


def injected(p: dict[str, Any], ns: str = "ml", caps: Capabilities = PRIV) -> dict[str, Any]:
    d = m.mutate(p, ns, BINDINGS, caps, m.SidecarSettings(image="ff:1", cpu="100m", memory="256Mi"))
    assert d.allowed, d.message
    assert d.pod is not None
    assert apply_patch(p, d.patch) == d.pod  # the patch says exactly what changed
    return d.pod


def test_pvc_style_native_sidecar() -> None:
    out = injected(pod())
    spec = out["spec"]
    assert {"name": "data", "emptyDir": {}} in spec["volumes"]
    (side,) = spec["initContainers"]
    assert side["name"] == "fluidfed-imagenet"
    assert side["restartPolicy"] == "Always"
    assert side["image"] == "ff:1"
    assert side["securityContext"]["privileged"] is True
    assert side["volumeMounts"][0] == {
        "name": "data",
        "mountPath": "/fluidfed/mnt/imagenet",
        "mountPropagation": "Bidirectional",
    }
    assert (
        "startupProbe" in side
        and side["startupProbe"]["exec"]["command"]
        == ["test", "-f", "/tmp/fluidfed-imagenet.ready"]
        and "/tmp/fluidfed-imagenet.ready" in side["args"]
    )
    assert side["resources"] == {
        "limits": {"cpu": "100m", "memory": "256Mi"},
        "requests": {"cpu": "100m", "memory": "256Mi"},
    }
    app_mount = spec["containers"][0]["volumeMounts"][0]
    assert app_mount == {
        "name": "data",
        "mountPath": "/data",
        "mountPropagation": "HostToContainer",
        "readOnly": True,
    }  # no subPath: the sidecar mounts the entry's sub-path (train) as its root
    cfg = next(v for v in spec["volumes"] if v["name"] == "fluidfed-config-imagenet")
    assert cfg["configMap"]["name"] == "fluidfed-imagenet"
    assert out["metadata"]["labels"]["fluidfed.io/injected"] == "true"
    assert out["metadata"]["annotations"]["fluidfed.io/injected-datasets"] == "imagenet=data"
    assert out["metadata"]["annotations"]["fluidfed.io/sidecar-mode"] == "native"


def test_the_sidecar_gets_its_namespaces_reader_token_and_the_pod_the_readers_label() -> None:
    out = injected(pod(), ns="research")
    spec = out["spec"]
    vol = next(v for v in spec["volumes"] if v["name"] == "fluidfed-credentials-imagenet")
    # the Secret the agent renders in the pod's own namespace, files readable by the owner
    assert vol["secret"] == {"secretName": "fluidfed-imagenet-reader", "defaultMode": 0o600}
    (side,) = spec["initContainers"]
    assert {
        "name": "fluidfed-credentials-imagenet",
        "mountPath": "/etc/fluidfed-credentials/imagenet",
        "readOnly": True,
    } in side["volumeMounts"]
    # the app containers never see it
    for c in spec["containers"]:
        assert all(
            mnt["name"] != "fluidfed-credentials-imagenet" for mnt in c.get("volumeMounts", [])
        )
    # the cache workers' NetworkPolicy admits pods with this label
    assert out["metadata"]["labels"]["fluidfed.io/reader-imagenet"] == "true"


def _ssd_bindings() -> dict[str, Any]:
    """A dataset with a disk tier: ml reads all of it, research only val/."""
    b = binding("ssd")
    tiers = [
        CacheTier(medium="MEM", quota=ByteSize(2**30)),
        CacheTier(medium="SSD", quota=ByteSize(2**34), path="/mnt/nvme"),
    ]
    access = [Access(namespace="ml"), Access(namespace="research", sub_path="val")]
    spec = msgspec.structs.replace(b.spec, cache=CacheSpec(tiers=tiers), access=access)
    return {"ssd": msgspec.structs.replace(b, spec=spec)}


def test_the_sidecar_sees_the_nodes_disk_tiers_read_only() -> None:
    bindings = _ssd_bindings()
    asks = pod(volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "ssd"}}])
    out = m.mutate(asks, "ml", bindings, PRIV).pod
    assert out is not None
    (side,) = out["spec"]["initContainers"]
    tier = {
        "name": "fluidfed-ssd-tier-1-ssd",
        "hostPath": {"path": "/mnt/nvme/ml/ssd/tier-1", "type": "DirectoryOrCreate"},
    }
    assert tier in out["spec"]["volumes"]
    assert {
        "name": "fluidfed-ssd-tier-1-ssd",
        "mountPath": "/var/lib/fluidfed/cache/ml/ssd/tier-1",  # where the workers see it
        "readOnly": True,
    } in side["volumeMounts"]
    # memory tiers are the worker's own; serverless sidecars share no node with workers
    assert not any("mem" in v["name"] for v in out["spec"]["volumes"])
    remote = m.mutate(asks, "ml", bindings, PRIV, m.SidecarSettings(short_circuit=False)).pod
    assert remote is not None
    assert not any("hostPath" in v for v in remote["spec"]["volumes"])
    # the node's block files hold every sub-path's blocks: a sub-path reader asks the
    # worker, which checks its sub-path, and never sees them
    sub = m.mutate(asks, "research", bindings, PRIV).pod
    assert sub is not None
    assert not any("hostPath" in v for v in sub["spec"]["volumes"])


def test_legacy_sidecar_first_with_a_poststart_gate() -> None:
    out = injected(pod(), caps=LEGACY)
    spec = out["spec"]
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == ["fluidfed-imagenet", "app"]
    side = spec["containers"][0]
    assert "restartPolicy" not in side
    assert "--exit-with-peers" in side["args"]
    assert "postStart" in side["lifecycle"]
    assert spec["shareProcessNamespace"] is True
    assert out["metadata"]["annotations"]["fluidfed.io/sidecar-mode"] == "legacy"


def test_annotation_style_and_namespace_access_entry() -> None:
    p = pod(
        volumes=[{"name": "ds", "emptyDir": {}}],
        annotations={"fluidfed.io/datasets": "imagenet=ds"},
        containers=[
            {"name": "app", "volumeMounts": [{"name": "ds", "mountPath": "/in", "subPath": "2024"}]}
        ],
    )
    out = injected(p, ns="research")
    mount = out["spec"]["containers"][0]["volumeMounts"][0]
    assert mount["subPath"] == "2024"  # the pod's own, below the sidecar's root (val)
    assert "readOnly" not in mount  # the entry is not read-only: the pod keeps its own setting


def test_several_datasets_in_one_pod() -> None:
    p = pod(
        volumes=[
            {"name": "a", "persistentVolumeClaim": {"claimName": "imagenet"}},
            {"name": "b", "persistentVolumeClaim": {"claimName": "coco"}},
        ],
        containers=[
            {
                "name": "app",
                "volumeMounts": [
                    {"name": "a", "mountPath": "/a"},
                    {"name": "b", "mountPath": "/b"},
                ],
            }
        ],
    )
    out = injected(p)
    assert [c["name"] for c in out["spec"]["initContainers"]] == [
        "fluidfed-imagenet",
        "fluidfed-coco",
    ]
    assert out["metadata"]["annotations"]["fluidfed.io/injected-datasets"] == "imagenet=a,coco=b"


def test_init_containers_that_read_the_dataset() -> None:
    reader = {"name": "prep", "image": "x", "volumeMounts": [{"name": "data", "mountPath": "/d"}]}
    out = injected(pod(init=[reader]))
    inits = out["spec"]["initContainers"]
    assert [c["name"] for c in inits] == ["fluidfed-imagenet", "prep"]  # the mount comes first
    assert inits[1]["volumeMounts"][0]["mountPropagation"] == "HostToContainer"
    d = m.mutate(pod(init=[reader]), "ml", BINDINGS, LEGACY)
    assert not d.allowed and "init container 'prep'" in d.message


def test_non_root_pods_keep_their_settings_and_the_sidecar_runs_as_root() -> None:
    out = injected(pod(security={"runAsNonRoot": True, "runAsUser": 1000}))
    assert out["spec"]["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000}
    sc = out["spec"]["initContainers"][0]["securityContext"]
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False


def test_name_clashes_get_suffixes() -> None:
    p = pod(
        volumes=[
            {"name": "data", "persistentVolumeClaim": {"claimName": "imagenet"}},
            {"name": "fluidfed-config-imagenet", "emptyDir": {}},
        ],
        containers=[
            {"name": "fluidfed-imagenet", "volumeMounts": [{"name": "data", "mountPath": "/d"}]}
        ],
    )
    out = injected(p)
    assert out["spec"]["initContainers"][0]["name"] == "fluidfed-imagenet-2"
    names = [v["name"] for v in out["spec"]["volumes"]]
    assert "fluidfed-config-imagenet-2" in names and len(names) == len(set(names))


ANNOTATED: dict[str, Any] = {
    "volumes": [{"name": "ds", "emptyDir": {}}],
    "annotations": {"fluidfed.io/datasets": "imagenet=ds"},
    "containers": [{"name": "app", "volumeMounts": [{"name": "ds", "mountPath": "/d"}]}],
}


@pytest.mark.parametrize("shape", [{}, ANNOTATED], ids=["pvc", "annotation"])
def test_reinvocation_changes_nothing(shape: dict[str, Any]) -> None:
    # the annotation form still asks for the dataset after injection (a PVC pod's volume
    # became an emptyDir): only the injected marker keeps a second sidecar out
    out = injected(pod(**shape))
    again = m.mutate(out, "ml", BINDINGS, PRIV)
    assert again.allowed and again.patch == [] and again.pod is None


def test_unlabelled_pods_and_pods_asking_for_nothing_pass_untouched() -> None:
    d = m.mutate(pod(inject=False), "ml", BINDINGS, PRIV)
    assert d.allowed and d.patch == [] and d.pod is None
    plain = pod(volumes=[{"name": "data", "emptyDir": {}}])
    d = m.mutate(plain, "ml", BINDINGS, PRIV)
    assert d.allowed and d.patch == []


@pytest.mark.parametrize(
    ("p", "ns", "caps", "needle"),
    [
        (pod(), "finance", PRIV, "dataset 'imagenet' may not be used from namespace 'finance'"),
        (
            pod(
                volumes=[{"name": "d", "emptyDir": {}}],
                annotations={"fluidfed.io/datasets": "nope=d"},
            ),
            "ml",
            PRIV,
            "dataset 'nope' is not bound to this cluster",
        ),
        (
            pod(
                volumes=[{"name": "d", "emptyDir": {}}],
                annotations={"fluidfed.io/datasets": "fluidds=d"},
            ),
            "ml",
            PRIV,
            "mounted by CSI",
        ),
        (pod(annotations={"fluidfed.io/datasets": "imagenet"}), "ml", PRIV, "is malformed"),
        (
            pod(annotations={"fluidfed.io/datasets": "imagenet=missing"}),
            "ml",
            PRIV,
            "no such volume",
        ),
        (pod(), "ml", Capabilities(privileged=False), "admits no privileged sidecar"),
        (  # two sidecars' FUSE mounts on one directory, each unmounting the other's
            pod(
                volumes=[{"name": "d", "emptyDir": {}}],
                annotations={"fluidfed.io/datasets": "imagenet=d,coco=d"},
            ),
            "ml",
            PRIV,
            "give each dataset a volume of its own",
        ),
        (  # the API server refuses shareProcessNamespace beside hostPID
            {**pod(), "spec": {**pod()["spec"], "hostPID": True}},
            "ml",
            LEGACY,
            "drop hostPID",
        ),
        (
            pod(),
            "ml",
            Capabilities(privileged=False, fuse_device_resource="smarter-devices/fuse"),
            "Bidirectional mount propagation",
        ),
    ],
)
def test_denials_say_what_and_where(
    p: dict[str, Any], ns: str, caps: Capabilities, needle: str
) -> None:
    d = m.mutate(p, ns, BINDINGS, caps)
    assert not d.allowed
    assert needle in d.message


def test_a_fuse_device_resource_is_requested_where_the_platform_names_one() -> None:
    caps = Capabilities(privileged=True, fuse_device_resource="smarter-devices/fuse")
    out = injected(pod(), caps=caps)
    side = out["spec"]["initContainers"][0]
    assert side["resources"]["limits"]["smarter-devices/fuse"] == "1"
    assert side["securityContext"]["privileged"] is True


def test_a_long_dataset_name_still_gives_names_kubernetes_takes() -> None:
    long = "d" * 61  # as long as the hub accepts (with a one-letter cluster name)
    bindings = {long: binding(long)}
    p = pod(
        annotations={"fluidfed.io/datasets": f"{long}=ds"}, volumes=[{"name": "ds", "emptyDir": {}}]
    )
    d = m.mutate(p, "ml", bindings, PRIV, m.SidecarSettings(image="ff:1"))
    assert d.allowed and d.pod is not None, d.message
    spec = d.pod["spec"]
    names_ = [v["name"] for v in spec["volumes"]] + [
        c["name"] for c in spec.get("initContainers", []) + spec["containers"]
    ]
    assert all(len(n) <= 63 for n in names_), [n for n in names_ if len(n) > 63]


SSD_POD: dict[str, Any] = {
    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "ssd"}}]
}

WORKERS_TERM = {
    "weight": 100,
    "podAffinityTerm": {
        # the StatefulSet's pods (agents/render.py), in the dataset's home namespace
        "labelSelector": {
            "matchLabels": {
                "fluidfed.io/binding": "ssd.c",
                "app.kubernetes.io/component": "cache-worker",
            }
        },
        "namespaces": ["ml"],
        "topologyKey": "kubernetes.io/hostname",
    },
}


def _mutated(p: dict[str, Any], ns: str = "ml", **settings: Any) -> dict[str, Any]:
    bindings = _ssd_bindings()
    d = m.mutate(p, ns, bindings, PRIV, m.SidecarSettings(**settings))
    assert d.allowed and d.pod is not None, d.message
    assert apply_patch(p, d.patch) == d.pod
    return d.pod


def test_a_short_circuit_reader_prefers_the_nodes_of_the_datasets_workers() -> None:
    bindings = _ssd_bindings()
    assert bindings["ssd"].name == "ssd.c"  # the binding the workers are labelled with
    assert m.worker_affinity(bindings["ssd"]) == WORKERS_TERM
    out = _mutated(pod(**SSD_POD))
    assert out["spec"]["affinity"] == {
        "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [WORKERS_TERM]}
    }


def test_no_data_affinity_where_a_reader_could_not_short_circuit() -> None:
    # serverless: sidecars share no node with the workers
    assert "affinity" not in _mutated(pod(**SSD_POD), short_circuit=False)["spec"]
    # a sub-path reader asks the workers over HTTP, wherever they are
    assert "affinity" not in _mutated(pod(**SSD_POD), ns="research")["spec"]
    # memory tiers only: no block files on the node to read
    assert "affinity" not in injected(pod())["spec"]


def test_the_pods_own_affinity_is_kept_and_the_workers_term_added_once() -> None:
    zone = {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
        ]
    }
    theirs_preferred = {
        "weight": 10,
        "podAffinityTerm": {
            "labelSelector": {"matchLabels": {"app": "ps"}},
            "topologyKey": "topology.kubernetes.io/zone",
        },
    }
    theirs_required = {
        "labelSelector": {"matchLabels": {"app": "db"}},
        "topologyKey": "kubernetes.io/hostname",
    }
    apart = {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}
        ]
    }
    asks = pod(**SSD_POD)
    asks["spec"]["affinity"] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": zone},
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [theirs_required],
            "preferredDuringSchedulingIgnoredDuringExecution": [theirs_preferred],
        },
        "podAntiAffinity": apart,
    }
    out = _mutated(asks)
    assert out["spec"]["affinity"] == {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": zone},
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [theirs_required],
            "preferredDuringSchedulingIgnoredDuringExecution": [theirs_preferred, WORKERS_TERM],
        },
        "podAntiAffinity": apart,
    }
    # the original pod is left as it was
    assert asks["spec"]["affinity"]["podAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ] == [theirs_preferred]
    # a pod that already prefers the workers (written by hand) keeps one term
    asks["spec"]["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] = [
        WORKERS_TERM
    ]
    again = _mutated(asks)["spec"]["affinity"]["podAffinity"]
    assert again["preferredDuringSchedulingIgnoredDuringExecution"] == [WORKERS_TERM]


def test_a_pod_reading_two_datasets_prefers_the_workers_of_each() -> None:
    bindings = _ssd_bindings()
    b = bindings["ssd"]
    other = msgspec.structs.replace(
        b,
        name="nvme.c",
        dataset="nvme",
        spec=msgspec.structs.replace(b.spec, name="nvme", namespace="ml"),
    )
    bindings["nvme"] = other
    asks = pod(
        volumes=[
            {"name": "data", "persistentVolumeClaim": {"claimName": "ssd"}},
            {"name": "more", "persistentVolumeClaim": {"claimName": "nvme"}},
        ]
    )
    d = m.mutate(asks, "ml", bindings, PRIV)
    assert d.pod is not None
    preferred = d.pod["spec"]["affinity"]["podAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred == [m.worker_affinity(b), m.worker_affinity(other)]
    assert (
        preferred[1]["podAffinityTerm"]["labelSelector"]["matchLabels"]["fluidfed.io/binding"]
        == "nvme.c"
    )


def test_the_sidecar_gets_the_sources_secret_where_the_namespace_has_it() -> None:
    mounts = [Mount(uri="s3://b/p", secret="s3-creds"), Mount(uri="s3://c/q", secret="s3-creds")]
    ds = testing.dataset("secured", namespace="ml", mounts=mounts, access=[Access(namespace="ml")])
    p = pod(
        annotations={"fluidfed.io/datasets": "secured=ds"}, volumes=[{"name": "ds", "emptyDir": {}}]
    )
    d = m.mutate(p, "ml", {"secured": testing.binding(ds)}, PRIV, m.SidecarSettings(image="ff:1"))
    assert d.pod is not None
    side = d.pod["spec"]["initContainers"][0]
    # it lists the source and reads it when no worker answers; optional: a reader namespace
    # without a copy of the Secret still starts and reads through the workers
    assert side["envFrom"] == [{"secretRef": {"name": "s3-creds", "optional": True}}]
    assert "envFrom" not in injected(pod())["spec"]["initContainers"][0]  # no secret, none


def test_a_claim_of_a_csi_bound_dataset_is_left_to_csi() -> None:
    # the PVC form names Fluid's own claim where the dataset is mounted by CSI: no sidecar
    csi = pod(volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "fluidds"}}])
    d = m.mutate(csi, "ml", BINDINGS, PRIV)
    assert d.allowed and d.patch == [] and d.pod is None


def test_an_annotation_naming_a_claim_volume_gives_one_sidecar() -> None:
    out = injected(pod(annotations={"fluidfed.io/datasets": "imagenet=data"}))
    assert [c["name"] for c in out["spec"]["initContainers"]] == ["fluidfed-imagenet"]


def test_legacy_init_containers_that_do_not_read_the_dataset_are_allowed() -> None:
    other = {"name": "prep", "image": "x", "volumeMounts": [{"name": "tmp", "mountPath": "/t"}]}
    p = pod(init=[other])
    p["spec"]["volumes"].append({"name": "tmp", "emptyDir": {}})
    out = injected(p, caps=LEGACY)
    assert [c["name"] for c in out["spec"]["initContainers"]] == ["prep"]
    assert [c["name"] for c in out["spec"]["containers"]] == ["fluidfed-imagenet", "app"]


def test_a_dataset_and_volume_named_twice_give_one_sidecar() -> None:
    p = pod(
        volumes=[{"name": "ds", "emptyDir": {}}],
        annotations={"fluidfed.io/datasets": "imagenet=ds,imagenet=ds"},
    )
    out = injected(p)
    assert [c["name"] for c in out["spec"]["initContainers"]] == ["fluidfed-imagenet"]


def test_a_pod_with_host_pid_gets_its_sidecar_where_sidecars_are_native() -> None:
    p = pod()
    p["spec"]["hostPID"] = True
    out = injected(p)
    assert "shareProcessNamespace" not in out["spec"]


def test_a_memory_tier_the_sidecars_memory_limit_cannot_hold_is_refused_saying_what_to_raise() -> (
    None
):
    b = binding()

    def with_tiers(*tiers: CacheTier) -> dict[str, Any]:
        spec = msgspec.structs.replace(b.spec, cache=CacheSpec(sidecar_tiers=list(tiers)))
        return {"imagenet": msgspec.structs.replace(b, spec=spec)}

    big = with_tiers(CacheTier(medium="MEM", quota=ByteSize(2**30)))
    d = m.mutate(pod(), "ml", big, PRIV, m.SidecarSettings(memory="1Gi"))
    assert not d.allowed
    assert d.message == (
        "dataset 'imagenet''s sidecars keep 1GiB of blocks in memory (cache.sidecar_tiers) "
        "and need about 256MiB more, which this cluster's memory limit for sidecars (1Gi, "
        "sidecar_memory in the agent's configuration) cannot hold: the kernel would kill the "
        "sidecar as its cache fills. Raise sidecar_memory to at least 1280Mi, or give the "
        "dataset a smaller MEM sidecar tier"
    )
    # the tier and 256 MiB: admitted (1.25Gi exactly, or in decimal units); no limit: admitted
    for memory in ("1.25Gi", "1342177280", "1400M", ""):
        assert m.mutate(pod(), "ml", big, PRIV, m.SidecarSettings(memory=memory)).allowed, memory
    assert not m.mutate(pod(), "ml", big, PRIV, m.SidecarSettings(memory="1342177279")).allowed
    # disk tiers alone: the blocks written behind and held at hand are memory too
    disk = with_tiers(CacheTier(medium="SSD", quota=ByteSize(2**34)))
    assert not m.mutate(pod(), "ml", disk, PRIV, m.SidecarSettings(memory="128Mi")).allowed
    assert m.mutate(pod(), "ml", disk, PRIV, m.SidecarSettings(memory="256Mi")).allowed
    # no tiers named: as before this check (the sidecar's 128 MiB default, the limit the
    # cluster's operator chose)
    assert m.mutate(pod(), "ml", BINDINGS, PRIV, m.SidecarSettings(memory="100M")).allowed
