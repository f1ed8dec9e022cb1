"""What a binding becomes in its cluster: Kubernetes objects as plain dicts. Pure.

`sidecar` bindings (serverless, edge): namespaces of the access list, a ConfigMap in each
(what the FUSE sidecar needs to mount the dataset there), and in the home namespace the
cache workers (StatefulSet + headless Service).

`csi` bindings (Fluid installed): Fluid's own Dataset and Runtime in the home namespace,
and in every further namespace a Dataset whose mount is `dataset://<home>/<name>`, Fluid's
way of sharing one cache across namespaces.

Namespaces are created when missing but never deleted: other workloads may live there.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fluidfed import codec, names
from fluidfed.data import credentials
from fluidfed.models import Access, Binding, CacheTier, Dataset, Mount

RUNTIME_KINDS = {"thin": "ThinRuntime", "juicefs": "JuiceFSRuntime", "alluxio": "AlluxioRuntime"}
WORKER_PORT = 7070
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


@dataclass(frozen=True, slots=True)
class DataCredentials:
    """A binding's data-path keys (newest first, as the agent keeps them) and the index of
    the one that signs tokens (`fluidfed.data.credentials.signing`)."""

    keys: Sequence[bytes]
    sign: int = 0

    def token(self, claims: credentials.Claims) -> str:
        """`claims` signed by the signing key; "" without keys (nothing will accept it)."""
        if not self.keys:
            return ""
        return credentials.sign(claims, self.keys[min(self.sign, len(self.keys) - 1)])


# where the binding's Secrets appear: the keys in the worker pods, a reader's token in its
# sidecar (one directory per dataset); mode 0600, never in a ConfigMap
WORKER_CREDENTIALS_DIR = "/etc/fluidfed-credentials"
SIDECAR_CREDENTIALS_ROOT = "/etc/fluidfed-credentials"
SECRET_MODE = 0o600


def keys_secret_name(dataset: str) -> str:
    return k8s_name("fluidfed", dataset, "keys")


def reader_secret_name(dataset: str) -> str:
    return k8s_name("fluidfed", dataset, "reader")


def reader_label(dataset: str) -> str:
    """The label the webhook puts on pods that read `dataset`: the workers' NetworkPolicy
    admits them."""
    return names.READER_LABEL_PREFIX + k8s_name("reader", dataset, limit=63)


def sidecar_credentials_file(dataset: str) -> str:
    return posixpath.join(SIDECAR_CREDENTIALS_ROOT, dataset, names.CREDENTIALS_FILE)


def short_circuit(kind: str) -> bool:
    """Whether sidecars read the node's cache directories: not on virtual (serverless)
    nodes, which share no node with the workers and refuse hostPath volumes."""
    return kind != "serverless"


def k8s_name(*parts: str, limit: int = 52) -> str:
    """Join parts into a DNS name; too long ones are cut and made unique by a hash."""
    name = "-".join(p for p in parts if p)
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def cache_name(dataset: str) -> str:
    return k8s_name("fluidfed", dataset, "cache")


def config_name(dataset: str) -> str:
    return k8s_name("fluidfed", dataset)


def quantity(n: int) -> str:
    """Bytes in Kubernetes' canonical quantity form, so a live object compares equal."""
    for suffix, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
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


def _meta(name: str, namespace: str | None, lbls: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": lbls}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def namespaces(b: Binding, ctx: ClusterContext) -> list[dict[str, Any]]:
    wanted = sorted({b.spec.namespace, *(a.namespace for a in b.spec.access_list())})
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": n, "labels": {names.MANAGED_BY: names.AGENT}},
        }
        for n in wanted
    ]


def _mount_doc(m: Mount) -> dict[str, Any]:
    return codec.to_builtins(m)  # type: ignore[no-any-return]


def sidecar_config(
    b: Binding, namespace: str, agent_url: str = "", *, short_circuit: bool = True
) -> dict[str, Any]:
    """What `fluidfed sidecar mount` needs in `namespace` (the access entry applied)."""
    ds = b.spec
    entry = next(a for a in ds.access_list() if a.namespace == namespace)
    return {
        "short_circuit": short_circuit and reads_whole_dataset(entry),
        "agent": agent_url,
        "dataset": ds.name,
        "cluster": b.cluster,
        "namespace": namespace,
        "sub_path": entry.sub_path,
        "read_only": entry.read_only,
        "mounts": [_mount_doc(m) for m in ds.mounts],
        "block_size": int(ds.cache.block_size),
        "workers": _peers(b),
        "credentials_file": sidecar_credentials_file(ds.name),
    }


def _peers(b: Binding) -> dict[str, Any]:
    """The cache workers as the sidecars and the workers find them: the StatefulSet's pods
    behind its headless Service."""
    name = cache_name(b.spec.name)
    return {
        "statefulset": name,
        "service": f"{name}.{b.spec.namespace}.svc",
        "port": WORKER_PORT,
        "replicas": b.replicas,
    }


def worker_config(b: Binding, ctx: ClusterContext) -> dict[str, Any]:
    ds = b.spec
    return {
        "agent": ctx.agent_url,
        "dataset": ds.name,
        "mounts": [_mount_doc(m) for m in ds.mounts],
        "block_size": int(ds.cache.block_size),
        "port": WORKER_PORT,
        "tiers": _worker_tiers(ds),
        "workers": _peers(b),
        "credentials_file": posixpath.join(WORKER_CREDENTIALS_DIR, names.CREDENTIALS_FILE),
    }


HOST_CACHE_ROOT = "/var/lib/fluidfed"  # disk tiers on the node, unless a tier names a path
CACHE_MOUNT_ROOT = "/var/lib/fluidfed/cache"  # where workers and sidecars see them


def _tier_name(i: int, tier: CacheTier) -> str:
    return f"tier-{i}-{tier.medium.lower()}"


def tier_host_dir(ds: Dataset, i: int, tier: CacheTier) -> str:
    """A disk tier's directory on the node: `path` (or /var/lib/fluidfed)/<ns>/<dataset>/
    tier-<i>, one directory per worker pod below it. On the node, not in the pod, so a
    worker restarted there finds its blocks, and a sidecar on the same node can read them
    (short-circuit)."""
    root = tier.path or HOST_CACHE_ROOT
    return posixpath.join(root, ds.namespace, ds.name, f"tier-{i}")


def tier_mount_path(ds: Dataset, i: int) -> str:
    return posixpath.join(CACHE_MOUNT_ROOT, ds.namespace, ds.name, f"tier-{i}")


def _tier_volume(
    ds: Dataset, i: int, tier: CacheTier, *, on_node: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume of a tier and its mount; `on_node` False (virtual nodes, which refuse
    hostPath): disk tiers in the pod's own emptyDir."""
    name = _tier_name(i, tier)
    if tier.medium == "MEM":
        empty = {"sizeLimit": quantity(tier.quota), "medium": "Memory"}
        return {"name": name, "emptyDir": empty}, {"name": name, "mountPath": "/cache/mem"}
    mount = {"name": name, "mountPath": tier_mount_path(ds, i)}
    if not on_node:
        return {"name": name, "emptyDir": {"sizeLimit": quantity(tier.quota)}}, mount
    host = {"path": tier_host_dir(ds, i, tier), "type": "DirectoryOrCreate"}
    return {"name": name, "hostPath": host}, mount


def reads_whole_dataset(entry: Access) -> bool:
    """Whether an access entry's readers may see every block of the dataset. Only they
    read the node's block files (short-circuit): those directories hold the blocks of every
    sub-path, and what a sidecar can open its pod's other containers may reach too (a
    legacy sidecar shares their process namespace), so a sub-path reader asks the worker,
    which checks the sub-path."""
    return posixpath.normpath("/" + entry.sub_path.strip("/")) == "/"


def short_circuit_volumes(ds: Dataset) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(volume, read-only mount) of each disk tier's node directory, for a FUSE sidecar:
    blocks that a worker on its node holds are read from their files."""
    out = []
    for i, tier in enumerate(ds.cache.tiers):
        if tier.medium != "MEM":
            vol, mnt = _tier_volume(ds, i, tier)
            out.append((vol, {**mnt, "readOnly": True}))
    return out


def _worker_tiers(ds: Dataset) -> list[dict[str, Any]]:
    """The tiers as the worker sees them: disk tiers in its own directory ({pod} is its
    pod's name) below the node directory."""
    out = []
    for i, tier in enumerate(ds.cache.tiers):
        doc = codec.to_builtins(tier)
        if tier.medium != "MEM":
            doc["path"] = posixpath.join(tier_mount_path(ds, i), "{pod}")
        out.append(doc)
    return out


def _secret_env(ds: Dataset) -> list[dict[str, Any]]:
    secrets = sorted({m.secret for m in ds.mounts if m.secret})
    return [{"secretRef": {"name": s}} for s in secrets]


def _worker_selector(b: Binding) -> dict[str, str]:
    return {names.BINDING_LABEL: b.name, names.COMPONENT_LABEL: "cache-worker"}


def _secret(
    name: str, namespace: str, lbls: dict[str, str], cred: credentials.CredentialFile
) -> dict[str, Any]:
    data = base64.b64encode(credentials.encode_file(cred)).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(name, namespace, lbls),
        "type": "Opaque",
        "data": {names.CREDENTIALS_FILE: data},
    }


def keys_secret(b: Binding, ctx: ClusterContext, creds: DataCredentials) -> dict[str, Any]:
    """The binding's keys, for its cache workers (home namespace)."""
    cred = credentials.CredentialFile(
        keys=[credentials.encode_key(k) for k in creds.keys], sign=creds.sign
    )
    return _secret(keys_secret_name(b.spec.name), b.spec.namespace, labels(b, ctx), cred)


def reader_secret(
    b: Binding, ctx: ClusterContext, creds: DataCredentials, entry: Access
) -> dict[str, Any]:
    """The reader token of an access entry, for the sidecars of its namespace: it reads
    only under the entry's sub-path."""
    claims = credentials.Claims(
        role="reader", dataset=b.spec.name, namespace=entry.namespace, sub_path=entry.sub_path
    )
    cred = credentials.CredentialFile(token=creds.token(claims))
    return _secret(reader_secret_name(b.spec.name), entry.namespace, labels(b, ctx), cred)


def network_policy(b: Binding, ctx: ClusterContext) -> dict[str, Any]:
    """Only the dataset's sidecars (pods the webhook labelled, in the access namespaces),
    the other workers and the agent reach the workers' port."""
    ds = b.spec
    readers = sorted({a.namespace for a in ds.access_list()})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(cache_name(ds.name), ds.namespace, labels(b, ctx)),
        "spec": {
            "podSelector": {"matchLabels": _worker_selector(b)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "ports": [{"port": WORKER_PORT, "protocol": "TCP"}],
                    "from": [
                        {"podSelector": {"matchLabels": _worker_selector(b)}},
                        {
                            "namespaceSelector": {
                                "matchExpressions": [
                                    {
                                        "key": names.NAMESPACE_NAME_LABEL,
                                        "operator": "In",
                                        "values": readers,
                                    }
                                ]
                            },
                            "podSelector": {"matchLabels": {reader_label(ds.name): "true"}},
                        },
                        {
                            "namespaceSelector": {},
                            "podSelector": {"matchLabels": {names.APP_NAME_LABEL: names.AGENT}},
                        },
                    ],
                }
            ],
        },
    }


def cache_workers(b: Binding, ctx: ClusterContext) -> list[dict[str, Any]]:
    ds = b.spec
    name, ns = cache_name(ds.name), ds.namespace
    selector = _worker_selector(b)
    lbls = labels(b, ctx, **{names.COMPONENT_LABEL: "cache-worker"})
    on_node = short_circuit(ctx.kind)
    tier_volumes = [_tier_volume(ds, i, t, on_node=on_node) for i, t in enumerate(ds.cache.tiers)]
    resources: dict[str, Any] = {}
    requests = {
        k: v
        for k, v in (("cpu", ds.cache.resources.cpu), ("memory", ds.cache.resources.memory))
        if v
    }
    if requests:
        resources = {"requests": requests, "limits": dict(requests)}
    container: dict[str, Any] = {
        "name": "worker",
        "image": ctx.worker_image,
        # the pod's own address: the worker binds loopback unless told
        "args": [
            "worker",
            "serve",
            "--config",
            "/etc/fluidfed/worker.json",
            "--host",
            "$(POD_IP)",
        ],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "blocks", "containerPort": WORKER_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": WORKER_PORT}},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/fluidfed", "readOnly": True},
            {"name": "credentials", "mountPath": WORKER_CREDENTIALS_DIR, "readOnly": True},
            *(m for _, m in tier_volumes),
        ],
    }
    if resources:
        container["resources"] = resources
    env_from = _secret_env(ds)
    if env_from:
        container["envFrom"] = env_from
    pod_spec: dict[str, Any] = {
        # a leaving worker hands its blocks to the others first (`--drain-timeout` 60 s)
        "terminationGracePeriodSeconds": 90,
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": config_name(ds.name)}},
            {
                "name": "credentials",
                "secret": {"secretName": keys_secret_name(ds.name), "defaultMode": SECRET_MODE},
            },
            *(v for v, _ in tier_volumes),
        ],
    }
    if ctx.kind == "serverless":
        pod_spec["tolerations"] = [VIRTUAL_NODE_TOLERATION]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, ns, lbls),
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "ports": [
                {
                    "name": "blocks",
                    "port": WORKER_PORT,
                    "targetPort": WORKER_PORT,
                    "protocol": "TCP",
                }
            ],
            "publishNotReadyAddresses": True,
        },
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(name, ns, lbls),
        "spec": {
            "replicas": b.replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": lbls}, "spec": pod_spec},
        },
    }
    return [service, statefulset]


def sidecar_objects(
    b: Binding, ctx: ClusterContext, creds: DataCredentials
) -> list[dict[str, Any]]:
    ds = b.spec
    out: list[dict[str, Any]] = [keys_secret(b, ctx, creds), network_policy(b, ctx)]
    for entry in ds.access_list():
        out.append(reader_secret(b, ctx, creds, entry))
        data = {
            names.SIDECAR_CONFIG: codec.encode(
                sidecar_config(
                    b, entry.namespace, ctx.agent_url, short_circuit=short_circuit(ctx.kind)
                )
            ).decode()
        }
        if entry.namespace == ds.namespace:
            data[names.WORKER_CONFIG] = codec.encode(worker_config(b, ctx)).decode()
        out.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _meta(config_name(ds.name), entry.namespace, labels(b, ctx)),
                "data": data,
            }
        )
    if ds.namespace not in {a.namespace for a in ds.access_list()}:
        out.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _meta(config_name(ds.name), ds.namespace, labels(b, ctx)),
                "data": {names.WORKER_CONFIG: codec.encode(worker_config(b, ctx)).decode()},
            }
        )
    return out + cache_workers(b, ctx)


def _fluid_mount(m: Mount, index: int) -> dict[str, Any]:
    mount: dict[str, Any] = {"mountPoint": m.uri, "name": m.name or f"m{index}"}
    if m.path:
        mount["path"] = m.path
    if m.options:
        mount["options"] = dict(m.options)
    if m.secret:
        mount["encryptOptions"] = [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": m.secret, "key": key}}}
            for key in ("access-key", "secret-key")
        ]
    return mount


def fluid_objects(b: Binding, ctx: ClusterContext) -> list[dict[str, Any]]:
    ds = b.spec
    api = f"{names.FLUID_GROUP}/{names.FLUID_VERSION}"
    home = {
        "apiVersion": api,
        "kind": "Dataset",
        "metadata": _meta(ds.name, ds.namespace, labels(b, ctx)),
        "spec": {
            "mounts": [_fluid_mount(m, i) for i, m in enumerate(ds.mounts)],
            "accessModes": ["ReadOnlyMany"],
        },
    }
    runtime = {
        "apiVersion": api,
        "kind": RUNTIME_KINDS[ds.cache.engine],
        "metadata": _meta(ds.name, ds.namespace, labels(b, ctx)),
        "spec": {
            "replicas": b.replicas,
            "tieredstore": {
                "levels": [
                    {
                        "mediumtype": t.medium,
                        "path": t.path or "/dev/shm",
                        "quota": quantity(t.quota),
                        "high": f"{t.high:g}",
                        "low": f"{t.low:g}",
                    }
                    for t in ds.cache.tiers
                ]
            },
        },
    }
    refs = [
        {
            "apiVersion": api,
            "kind": "Dataset",
            "metadata": _meta(ds.name, a.namespace, labels(b, ctx)),
            "spec": {
                "mounts": [{"mountPoint": f"dataset://{ds.namespace}/{ds.name}", "name": ds.name}],
                "accessModes": ["ReadOnlyMany"],
            },
        }
        for a in ds.access_list()
        if a.namespace != ds.namespace
    ]
    return [home, runtime, *refs]


def desired(b: Binding, ctx: ClusterContext, creds: DataCredentials) -> list[dict[str, Any]]:
    """Every object the binding needs, namespaces first; `creds` signs the tokens of the
    sidecar mode's Secrets."""
    owned = fluid_objects(b, ctx) if b.mode == "csi" else sidecar_objects(b, ctx, creds)
    return namespaces(b, ctx) + owned


def key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])


def webhook_configuration(ctx: ClusterContext, url: str, ca_pem: bytes) -> dict[str, Any]:
    """The MutatingWebhookConfiguration that sends labelled pods to this agent."""
    import base64

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": f"fluidfed-sidecar-{ctx.name}",
            "labels": {
                names.MANAGED_BY: names.AGENT,
                names.CLUSTER_LABEL: ctx.name,
                names.BINDING_LABEL: names.WEBHOOK_OWNER,
            },
        },
        "webhooks": [
            {
                "name": "sidecar.fluidfed.io",
                "clientConfig": {"url": url, "caBundle": base64.b64encode(ca_pem).decode()},
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "objectSelector": {"matchLabels": {names.INJECT_LABEL: "true"}},
                "failurePolicy": "Fail",  # no pod starts without its data
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "IfNeeded",
                "sideEffects": "None",
                "timeoutSeconds": 5,
                "admissionReviewVersions": ["v1"],
            }
        ],
    }
