"""The pieces every object the agent makes shares: the cluster context, names that fit
Kubernetes, the owner labels, metadata, quantities. Pure."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from fluidfed import engines, names
from fluidfed.models import Binding, Dataset

WORKER_PORT = 7070
# the user of fluidfed's image (configs/deploy/Dockerfile's USER): workers run as it, and
# their Secret volume and disk tiers must be readable and writable by it
IMAGE_UID = 65532

VIRTUAL_NODE_TOLERATION = {
    "key": names.VIRTUAL_NODE_TAINT,
    "operator": "Exists",
    "effect": "NoSchedule",
}


@dataclass(frozen=True, slots=True)
class ClusterContext:
    """What the agent knows of its cluster that shapes the objects."""

    name: str
    kind: str = "standard"
    worker_image: str = "ghcr.io/fluidfed/fluidfed:0.1.0"
    agent_url: str = ""  # where cache workers register (the agent's API)
    agent_ca: str = ""  # the CA of the API's certificate (PEM) when it serves HTTPS
    data_tls: bool = True  # the cache workers serve HTTPS (`data_tls` in the agent file)


def short_circuit(kind: str) -> bool:
    """Whether sidecars read the node's cache directories: not on virtual (serverless)
    nodes, which share no node with the workers and refuse hostPath volumes."""
    return kind != "serverless"


def runs_workers(b: Binding) -> bool:
    """Whether fluidfed's cache workers serve the binding: sidecar mounts, and on clusters
    with Fluid the `fluidfed` engine (Fluid's FUSE container is fluidfed's sidecar)."""
    if b.mode == "sidecar":
        return True
    return b.spec.cache.engine == "fluidfed" and not engines.is_reference(b.spec)


def k8s_name(*parts: str, limit: int = 52) -> str:
    """Join parts into a DNS name; too long ones are cut and made unique by a hash."""
    name = "-".join(p for p in parts if p)
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def cache_name(dataset: str) -> str:
    return k8s_name("fluidfed", dataset, "cache")


def worker_service(ds: Dataset) -> str:
    """The DNS name of the cache workers' headless Service: each worker is
    `<statefulset>-<i>.<this>`, the name its serving certificate is for."""
    return f"{cache_name(ds.name)}.{ds.namespace}.svc"


def config_name(dataset: str) -> str:
    return k8s_name("fluidfed", dataset)


_QUANTITY_SUFFIXES = (
    ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10), ("G", 10**9), ("M", 10**6),
    ("k", 10**3),
)  # fmt: skip


def quantity(n: int) -> str:
    """Bytes in Kubernetes' canonical quantity form, so a live object compares equal: a
    binary suffix where one divides them, else the API server's decimal one ("50G" for
    50000000000, "1k" for 1000)."""
    # (binary first; a multiple of 10**12 is one of 1024: T and above never come after)
    for suffix, factor in _QUANTITY_SUFFIXES:
        if n and n % factor == 0:
            return f"{n // factor}{suffix}"
    return str(n)


def labels(b: Binding, ctx: ClusterContext, **extra: str) -> dict[str, str]:
    return {
        names.MANAGED_BY: names.AGENT,
        names.DATASET_LABEL: b.dataset,
        names.BINDING_LABEL: b.name,
        names.CLUSTER_LABEL: ctx.name,
        **extra,
    }


def meta(name: str, namespace: str | None, lbls: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": lbls}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def worker_selector(b: Binding) -> dict[str, str]:
    return {names.BINDING_LABEL: b.name, names.COMPONENT_LABEL: names.CACHE_WORKER}
