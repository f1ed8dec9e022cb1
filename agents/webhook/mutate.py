"""The pod mutation of the sidecar webhook. Pure: (pod, namespace, bindings, cluster) ->
decision with the mutated pod and the JSON patch from the original to it.

A pod labelled `fluidfed.io/inject: "true"` asks for datasets by volume: a
`persistentVolumeClaim.claimName` equal to a dataset bound here in sidecar mode, or the
annotation `fluidfed.io/datasets: "<dataset>=<volume>[,...]"`. Each such volume becomes a
shared emptyDir into which a FUSE sidecar mounts the dataset (Bidirectional propagation);
the containers that used the volume see it with HostToContainer propagation, at the
sub-path and read-only setting of the dataset's access entry for the pod's namespace.
The disk tiers of the dataset's `cache.sidecar_tiers` are further emptyDir volumes, the
sidecar's alone, which it is told of by its arguments (the pod keeps the tiers it was
admitted with), and their quotas its request of the node's ephemeral storage.

Data affinity, as Fluid users expect it: where the sidecar reads the node's cache
directories (short-circuit: a reader of the whole dataset, on a cluster whose sidecars share
nodes with the workers, of a dataset with a disk tier), the pod gets a preferred pod
affinity to the dataset's cache-worker pods on the same node, merged into the affinity the
pod has. Preferred, never required: without workers, or with no room beside them, the pod is
scheduled as it would have been.
"""

from __future__ import annotations

import copy
import math
import posixpath
from dataclasses import dataclass, field
from typing import Any

from agents import objects, render, trust
from fluidfed import codec, names
from fluidfed.models import Access, Binding, Capabilities
from fluidfed.units import format_size, quantity_value

MOUNT_ROOT = "/fluidfed/mnt"
# the most a preferred term weighs (1-100): beside the dataset's workers, a reader maps their
# block files rather than fetching them over the network
DATA_AFFINITY_WEIGHT = 100
CONFIG_ROOT = "/etc/fluidfed"


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    image: str = "ghcr.io/fluidfed/fluidfed:0.1.0"
    cpu: str = ""
    memory: str = ""
    # mount the node's cache directories read-only: blocks a worker on the same node holds
    # are read from their files (off on serverless clusters: no shared node, no hostPath)
    short_circuit: bool = True


@dataclass(slots=True)
class Decision:
    allowed: bool
    message: str = ""
    patch: list[dict[str, Any]] = field(default_factory=list)
    pod: dict[str, Any] | None = None  # the mutated pod, when allowed


def deny(message: str) -> Decision:
    return Decision(allowed=False, message=message)


def _parse_annotation(text: str) -> list[tuple[str, str]] | str:
    pairs = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        ds, sep, vol = item.partition("=")
        if not sep or not ds.strip() or not vol.strip():
            return (
                f"annotation {names.DATASETS_ANNOTATION}={text!r} is malformed at {item!r}: "
                "write <dataset>=<volume-name>[,...]"
            )
        pairs.append((ds.strip(), vol.strip()))
    return pairs


def requested(pod: dict[str, Any], bindings: dict[str, Binding]) -> list[tuple[str, str]] | str:
    """(dataset, volume) pairs the pod asks for, or an error message."""
    meta = pod.get("metadata") or {}
    volumes = {v.get("name"): v for v in (pod.get("spec") or {}).get("volumes") or []}
    pairs: list[tuple[str, str]] = []
    text = (meta.get("annotations") or {}).get(names.DATASETS_ANNOTATION)
    if text is not None:
        parsed = _parse_annotation(text)
        if isinstance(parsed, str):
            return parsed
        for_volume: dict[str, str] = {}
        for ds, vol in parsed:
            if vol not in volumes:
                return (
                    f"annotation {names.DATASETS_ANNOTATION} names volume {vol!r} for dataset "
                    f"{ds!r}, but the pod has no such volume"
                )
            if for_volume.setdefault(vol, ds) != ds:  # (two sidecars mounted on one directory)
                return (
                    f"annotation {names.DATASETS_ANNOTATION} names volume {vol!r} for datasets "
                    f"{for_volume[vol]!r} and {ds!r}: give each dataset a volume of its own"
                )
        pairs += list(dict.fromkeys(parsed))  # (a pair named twice is one sidecar)
    named = {v for _, v in pairs}
    for name, vol in volumes.items():
        claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and name not in named:
            b = bindings.get(claim)
            if b is not None and b.mode == "sidecar":
                pairs.append((claim, name))
    return pairs


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate = f"{name}-{n}"
        n += 1
    taken.add(candidate)
    return candidate


def _ready_file(ds: str) -> str:
    # written by the sidecar once its mount answers a request through the kernel
    return f"/tmp/fluidfed-{ds}.ready"


def _security(caps: Capabilities) -> tuple[dict[str, Any], dict[str, str]] | str:
    """The sidecar's securityContext and extra resource limits, or why it cannot run.

    The app sees the sidecar's FUSE mount only through Bidirectional mount propagation,
    which Kubernetes allows in privileged containers only: an unprivileged platform cannot
    run a FUSE sidecar (the API server would refuse the pod), so admission says so."""
    if not caps.privileged:
        return (
            "this cluster admits no privileged sidecar (capabilities.privileged = false), and "
            "the FUSE sidecar's mount reaches the app only through Bidirectional mount "
            "propagation, which Kubernetes allows in privileged containers only: set "
            "privileged = true if the platform admits privileged sidecars, or mount by CSI"
        )
    limits = {caps.fuse_device_resource: "1"} if caps.fuse_device_resource else {}
    # a platform that hands /dev/fuse out as a device resource schedules on it
    return {"privileged": True, "runAsUser": 0, "runAsNonRoot": False}, limits


# what an injected sidecar holds in memory besides its MEM tier: its blocks written behind
# and held at hand (64 MiB each, sidecar/mount.py), and the process itself
SIDECAR_OVERHEAD = 256 * 2**20


def memory_short(ds: str, b: Binding, settings: SidecarSettings) -> str:
    """Why the cluster's memory limit for sidecars cannot hold the tiers the dataset names
    for its sidecars ("" if it can, or the dataset names none): the kernel would kill the
    sidecar as its cache filled, over and over."""
    tiers = b.spec.cache.sidecar_tiers
    try:
        limit = quantity_value(settings.memory) if settings.memory else 0.0
    except ValueError:  # (the agent's configuration is checked as it is loaded)
        return ""
    held = sum(t.quota for t in tiers if t.medium == "MEM")
    if not tiers or not limit or held + SIDECAR_OVERHEAD <= limit:
        return ""
    return (
        f"dataset {ds!r}'s sidecars keep {format_size(held)} of blocks in memory "
        f"(cache.sidecar_tiers) and need about {format_size(SIDECAR_OVERHEAD)} more, which "
        f"this cluster's memory limit for sidecars ({settings.memory}, sidecar_memory in the "
        "agent's configuration) cannot hold: the kernel would kill the sidecar as its cache "
        f"fills. Raise sidecar_memory to at least {-(-(held + SIDECAR_OVERHEAD) // 2**20)}Mi, or "
        "give the dataset a smaller MEM sidecar tier"
    )


def _ephemeral_limit(c: dict[str, Any]) -> float | None:
    """A container's limit of ephemeral storage, in bytes (None: it has none)."""
    limit = ((c.get("resources") or {}).get("limits") or {}).get("ephemeral-storage")
    try:
        return None if limit is None else quantity_value(str(limit))
    except ValueError:  # (the API server refuses the pod)
        return None


def mutate(
    pod: dict[str, Any],
    namespace: str,
    bindings: dict[str, Binding],
    caps: Capabilities,
    settings: SidecarSettings = SidecarSettings(),
) -> Decision:
    meta = pod.get("metadata") or {}
    if (meta.get("labels") or {}).get(names.INJECT_LABEL) != "true":
        return Decision(allowed=True)
    if (meta.get("annotations") or {}).get(names.INJECTED_ANNOTATION):
        return Decision(allowed=True)  # injected before: reinvocation changes nothing
    asked = requested(pod, bindings)
    if isinstance(asked, str):
        return deny(asked)
    if not asked:
        return Decision(allowed=True)
    security = _security(caps)
    if isinstance(security, str):
        return deny(security)
    sec_ctx, limits = security

    out = copy.deepcopy(pod)
    spec = out.setdefault("spec", {})
    volumes: list[dict[str, Any]] = spec.setdefault("volumes", [])
    containers: list[dict[str, Any]] = spec.setdefault("containers", [])
    inits: list[dict[str, Any]] = spec.get("initContainers") or []
    taken_volumes = {v["name"] for v in volumes}
    taken_containers = {c["name"] for c in containers + inits}
    native = caps.native_sidecar
    sidecars: list[dict[str, Any]] = []
    done: list[str] = []

    for ds, vol_name in asked:
        b = bindings.get(ds)
        if b is None:
            return deny(
                f"dataset {ds!r} is not bound to this cluster: place it here first "
                "(fluidfed describe dataset shows where it is)"
            )
        if b.mode != "sidecar":
            return deny(
                f"dataset {ds!r} is mounted by CSI in this cluster: use its "
                "PersistentVolumeClaim without the fluidfed.io/inject label"
            )
        entry: Access | None = next(
            (a for a in b.spec.access_list() if a.namespace == namespace), None
        )
        if entry is None:
            allowed = ", ".join(a.namespace for a in b.spec.access_list())
            return deny(
                f"dataset {ds!r} may not be used from namespace {namespace!r} (allowed: {allowed})"
            )
        too_little = memory_short(ds, b, settings)
        if too_little:
            return deny(too_little)
        readers = [
            c for c in inits if any(m.get("name") == vol_name for m in c.get("volumeMounts") or [])
        ]
        if readers and not native:
            return deny(
                f"init container {readers[0]['name']!r} reads dataset {ds!r}, but "
                "this cluster has no native sidecars (Kubernetes < 1.28): only app "
                "containers can read it"
            )
        # the volume becomes a shared emptyDir the sidecar mounts into
        for v in volumes:
            if v["name"] == vol_name:
                v.clear()
                v.update({"name": vol_name, "emptyDir": {}})
        # names Kubernetes takes (DNS labels, 63 at most) however long the dataset's name
        config_vol = _unique(objects.k8s_name("fluidfed-config", ds, limit=60), taken_volumes)
        volumes.append({"name": config_vol, "configMap": {"name": objects.config_name(ds)}})
        # the reader token of this namespace's access entry, from the agent's Secret
        creds_vol = _unique(objects.k8s_name("fluidfed-credentials", ds, limit=60), taken_volumes)
        volumes.append(
            {
                "name": creds_vol,
                "secret": {
                    "secretName": trust.reader_secret_name(ds),
                    "defaultMode": trust.SECRET_MODE,
                },
            }
        )
        mountpoint = f"{MOUNT_ROOT}/{ds}"
        for c in containers + inits:
            for m in c.get("volumeMounts") or []:
                if m.get("name") == vol_name:
                    # the sidecar mounts the access entry's sub-path as the root: the pod's
                    # own subPath (if any) is below it, the entry's is not applied again
                    m["mountPropagation"] = "HostToContainer"
                    if entry.read_only:
                        m["readOnly"] = True
        sidecar: dict[str, Any] = {
            "name": _unique(objects.k8s_name("fluidfed", ds, limit=60), taken_containers),
            "image": settings.image,
            "args": [
                "sidecar",
                "mount",
                "--config",
                f"{CONFIG_ROOT}/{ds}/{names.SIDECAR_CONFIG}",
                "--mountpoint",
                mountpoint,
                "--ready-file",
                _ready_file(ds),
                # probes read the ready file: a free port each, so several sidecars share a pod
                "--status-addr",
                "127.0.0.1:0",
            ]
            + ([] if native else ["--exit-with-peers"])
            # the tiers this pod's volumes were made for, whatever the spec becomes
            + (
                ["--cache-tiers", codec.encode(render.sidecar_tiers(b.spec)).decode()]
                if b.spec.cache.sidecar_tiers
                else []
            ),
            "securityContext": copy.deepcopy(sec_ctx),
            "volumeMounts": [
                {"name": vol_name, "mountPath": mountpoint, "mountPropagation": "Bidirectional"},
                {"name": config_vol, "mountPath": f"{CONFIG_ROOT}/{ds}", "readOnly": True},
                {
                    "name": creds_vol,
                    "mountPath": posixpath.dirname(trust.sidecar_credentials_file(ds)),
                    "readOnly": True,
                },
            ],
        }
        # the source's credentials (the mount's Secret) where the pod's namespace has it:
        # the sidecar lists the source and reads it when no worker answers
        secrets = sorted({m.secret for m in b.spec.mounts if m.secret})
        if secrets:
            sidecar["envFrom"] = [{"secretRef": {"name": n, "optional": True}} for n in secrets]
        # the sidecar's own disk tiers (`cache.sidecar_tiers`): emptyDir volumes of the pod
        for vol, mnt in render.sidecar_tier_volumes(b.spec):
            name = _unique(objects.k8s_name("fluidfed", ds, vol["name"], limit=60), taken_volumes)
            volumes.append({**vol, "name": name})
            sidecar["volumeMounts"].append({**mnt, "name": name})
        node_tiers = render.short_circuit_volumes(b.spec)
        if settings.short_circuit and render.reads_whole_dataset(entry) and node_tiers:
            for vol, mnt in node_tiers:
                name = _unique(
                    objects.k8s_name("fluidfed", ds, vol["name"], limit=60), taken_volumes
                )
                volumes.append({**vol, "name": name})
                sidecar["volumeMounts"].append({**mnt, "name": name})
            prefer_pods(spec, worker_affinity(b))
        requests = {k: v for k, v in (("cpu", settings.cpu), ("memory", settings.memory)) if v}
        wanted, bounds = dict(requests), {**requests, **limits}
        disk = sum(t.quota for t in b.spec.cache.sidecar_tiers if t.medium != "MEM")
        if disk:  # (the scheduler puts the pod where the node's disk has room for them)
            wanted["ephemeral-storage"] = objects.quantity(disk)
            if any(_ephemeral_limit(c) is not None for c in containers + inits):
                # kubelet holds the pod's disk use, its emptyDirs included, to the sum of
                # its containers' limits: this one's makes room for the tiers' files (their
                # trailers and the page each ends in: twice the bytes of 4 KiB blocks)
                room = 2 * disk
                if not native:
                    # a regular container: the pod's limit is the larger of the regular
                    # containers' sum and the largest init container's (a native sidecar,
                    # started first, is added to both)
                    regular = sum(_ephemeral_limit(c) or 0.0 for c in containers)
                    largest = max((_ephemeral_limit(c) or 0.0 for c in inits), default=0.0)
                    room += math.ceil(max(0.0, largest - regular))
                bounds["ephemeral-storage"] = objects.quantity(room)
        resources = {k: v for k, v in (("limits", bounds), ("requests", wanted)) if v}
        if resources:
            sidecar["resources"] = resources
        if native:
            sidecar["restartPolicy"] = "Always"
            sidecar["startupProbe"] = {
                "exec": {"command": ["test", "-f", _ready_file(ds)]},
                "periodSeconds": 1,
                "failureThreshold": 300,
            }
        else:
            # regular container placed first; the kubelet starts the next container only
            # after postStart returns, so the apps find the mount in place
            wait = (
                f"for i in $(seq 1200); do test -f {_ready_file(ds)} "
                "&& exit 0; sleep 0.1; done; exit 1"
            )
            sidecar["lifecycle"] = {"postStart": {"exec": {"command": ["sh", "-c", wait]}}}
        sidecars.append(sidecar)
        done.append(f"{ds}={vol_name}")

    if native:
        spec["initContainers"] = sidecars + inits
    elif spec.get("hostPID"):
        # (the API server refuses shareProcessNamespace beside hostPID)
        return deny(
            "this cluster has no native sidecars (Kubernetes < 1.28), where the sidecar "
            "shares the pod's process namespace to leave with the app, which a pod with "
            "hostPID cannot: drop hostPID, or run the pod on a cluster with native sidecars"
        )
    else:
        spec["containers"] = sidecars + containers
        # the sidecar sees the app processes and leaves when they are gone (Jobs complete)
        spec["shareProcessNamespace"] = True
    out_meta = out.setdefault("metadata", {})
    out_labels = out_meta.setdefault("labels", {})
    out_labels[names.INJECTED_LABEL] = "true"
    for ds, _ in asked:  # the workers' NetworkPolicy admits the dataset's readers
        out_labels[trust.reader_label(ds)] = "true"
    annotations = out_meta.setdefault("annotations", {})
    annotations[names.INJECTED_ANNOTATION] = ",".join(done)
    annotations[names.MODE_ANNOTATION] = "native" if native else "legacy"
    return Decision(allowed=True, pod=out, patch=json_patch(pod, out))


def worker_affinity(b: Binding) -> dict[str, Any]:
    """A preferred pod-affinity term toward the binding's cache-worker pods (in the
    dataset's home namespace, whichever namespace the reader is in), node by node."""
    return {
        "weight": DATA_AFFINITY_WEIGHT,
        "podAffinityTerm": {
            "labelSelector": {"matchLabels": objects.worker_selector(b)},
            "namespaces": [b.spec.namespace],
            "topologyKey": names.HOSTNAME_LABEL,
        },
    }


def prefer_pods(spec: dict[str, Any], term: dict[str, Any]) -> None:
    """Add a preferred pod-affinity term to a pod spec, keeping every affinity the pod
    already has (node affinity, anti-affinity, required and preferred terms); a term it
    already holds is not added twice."""
    affinity = spec["affinity"] = spec.get("affinity") or {}
    pod_affinity = affinity["podAffinity"] = affinity.get("podAffinity") or {}
    key = "preferredDuringSchedulingIgnoredDuringExecution"
    preferred = pod_affinity[key] = pod_affinity.get(key) or []
    if term not in preferred:
        preferred.append(term)


def json_patch(original: dict[str, Any], mutated: dict[str, Any]) -> list[dict[str, Any]]:
    """RFC 6902 operations turning `original` into `mutated`, per changed field of the
    metadata and spec (whole lists replaced: simple and always consistent)."""
    ops: list[dict[str, Any]] = []
    for section in ("metadata", "spec"):
        before = original.get(section) or {}
        after = mutated.get(section) or {}
        if section not in original:
            ops.append({"op": "add", "path": f"/{section}", "value": after})
            continue
        for key in sorted(set(before) | set(after)):
            path = f"/{section}/{key.replace('~', '~0').replace('/', '~1')}"
            if key not in after:
                ops.append({"op": "remove", "path": path})
            elif key not in before:
                ops.append({"op": "add", "path": path, "value": after[key]})
            elif before[key] != after[key]:
                ops.append({"op": "replace", "path": path, "value": after[key]})
    return ops
