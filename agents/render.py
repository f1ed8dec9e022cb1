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
import dataclasses
import posixpath
from collections.abc import Callable
from typing import Any

from agents import fluid, objects, trust
from fluidfed import codec, names
from fluidfed.models import Access, Binding, CacheTier, Dataset, Mount


def namespaces(b: Binding, ctx: objects.ClusterContext) -> list[dict[str, Any]]:
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
    b: Binding,
    namespace: str,
    ctx: objects.ClusterContext,
    creds: trust.DataCredentials,
) -> dict[str, Any]:
    """What `fluidfed sidecar mount` needs in `namespace` (the access entry applied): with
    the binding's TLS, its workers over HTTPS, and what it trusts (`trust.ca_bundle`)
    beside its token."""
    ds = b.spec
    entry = next(a for a in ds.access_list() if a.namespace == namespace)
    doc: dict[str, Any] = {
        "short_circuit": objects.short_circuit(ctx.kind) and reads_whole_dataset(entry),
        "agent": ctx.agent_url,
        "dataset": ds.name,
        "cluster": b.cluster,
        "namespace": namespace,
        "sub_path": entry.sub_path,
        "read_only": entry.read_only,
        "mounts": [_mount_doc(m) for m in ds.mounts],
        "block_size": int(ds.cache.block_size),
        "workers": _peers(b, creds.tls is not None),
        "credentials_file": trust.sidecar_credentials_file(ds.name),
    }
    if trust.ca_bundle(ctx, creds):
        doc["ca_file"] = trust.sidecar_ca_file(ds.name)
    return doc


def _peers(b: Binding, tls: bool) -> dict[str, Any]:
    """The cache workers as the sidecars and the workers find them: the StatefulSet's pods
    behind its headless Service."""
    name = objects.cache_name(b.spec.name)
    return {
        "statefulset": name,
        "service": objects.worker_service(b.spec),
        "port": objects.WORKER_PORT,
        "replicas": b.replicas,
        "scheme": "https" if tls else "http",
    }


def worker_config(
    b: Binding, ctx: objects.ClusterContext, creds: trust.DataCredentials
) -> dict[str, Any]:
    """What `fluidfed worker serve` needs: with the binding's TLS, it serves HTTPS with the
    binding's certificate (from the keys' Secret); peers and the agent's API are verified
    against what the Secret says to trust (`trust.ca_bundle`)."""
    ds = b.spec
    doc: dict[str, Any] = {
        "agent": ctx.agent_url,
        "dataset": ds.name,
        "mounts": [_mount_doc(m) for m in ds.mounts],
        "block_size": int(ds.cache.block_size),
        "port": objects.WORKER_PORT,
        "tiers": _worker_tiers(ds),
        "workers": _peers(b, creds.tls is not None),
        "credentials_file": trust.worker_file(names.CREDENTIALS_FILE),
    }
    if creds.tls is not None:
        doc["tls_cert_file"] = trust.worker_file(names.TLS_CERT_FILE)
        doc["tls_key_file"] = trust.worker_file(names.TLS_KEY_FILE)
    else:  # (the cluster's operator turned the data path's TLS off: `data_tls`)
        doc["plain_http"] = True
    if trust.ca_bundle(ctx, creds):
        doc["ca_file"] = trust.worker_file(names.CA_FILE)
    return doc


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
    hostPath): disk tiers in the pod's own emptyDir, without a sizeLimit (as a sidecar's:
    `sidecar_tier_volumes`), their quotas the worker's request of ephemeral storage."""
    name = _tier_name(i, tier)
    if tier.medium == "MEM":
        empty = {"sizeLimit": objects.quantity(tier.quota), "medium": "Memory"}
        return {"name": name, "emptyDir": empty}, {"name": name, "mountPath": "/cache/mem"}
    mount = {"name": name, "mountPath": tier_mount_path(ds, i)}
    if not on_node:
        return {"name": name, "emptyDir": {}}, mount
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


SIDECAR_CACHE_ROOT = "/fluidfed/cache"  # an injected sidecar's disk tiers, in its pod


def sidecar_tier_path(dataset: str, i: int) -> str:
    return posixpath.join(SIDECAR_CACHE_ROOT, dataset, f"tier-{i}")


def sidecar_tiers(ds: Dataset) -> list[dict[str, Any]]:
    """`cache.sidecar_tiers` as an injected sidecar is given them (its `--cache-tiers`, so
    a pod keeps the tiers it was admitted with whatever the spec becomes: its volumes
    cannot change): disk tiers where the webhook mounts their volumes."""
    return _tier_docs(ds.cache.sidecar_tiers, lambda i: sidecar_tier_path(ds.name, i))


def sidecar_tier_volumes(ds: Dataset) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(volume, mount) of each disk tier of `cache.sidecar_tiers`: an emptyDir of the
    reader's pod. No sizeLimit: the tier's quota counts its blocks' bytes, while kubelet
    would count what their files take of the disk (a page each at least) and evict the
    whole pod, app and all, past the limit; the tier keeps `min_free` of the disk free."""
    out = []
    for i, tier in enumerate(ds.cache.sidecar_tiers):
        if tier.medium != "MEM":
            name = f"sidecar-{_tier_name(i, tier)}"  # (not the workers' tier it may mount)
            mount = {"name": name, "mountPath": sidecar_tier_path(ds.name, i)}
            out.append(({"name": name, "emptyDir": {}}, mount))
    return out


def _worker_tiers(ds: Dataset) -> list[dict[str, Any]]:
    """The tiers as the worker sees them: disk tiers in its own directory ({pod} is its
    pod's name) below the node directory."""
    return _tier_docs(ds.cache.tiers, lambda i: posixpath.join(tier_mount_path(ds, i), "{pod}"))


def _tier_docs(tiers: list[CacheTier], disk_path: Callable[[int], str]) -> list[dict[str, Any]]:
    """Tiers as a process's settings say them, each disk tier's path `disk_path(i)`."""
    out = []
    for i, tier in enumerate(tiers):
        doc = codec.to_builtins(tier)
        if tier.medium != "MEM":
            doc["path"] = disk_path(i)
        out.append(doc)
    return out


def _secret_env(ds: Dataset) -> list[dict[str, Any]]:
    secrets = sorted({m.secret for m in ds.mounts if m.secret})
    return [{"secretRef": {"name": s}} for s in secrets]


def cache_workers(
    b: Binding, ctx: objects.ClusterContext, *, tls: bool = True
) -> list[dict[str, Any]]:
    ds = b.spec
    name, ns = objects.cache_name(ds.name), ds.namespace
    selector = objects.worker_selector(b)
    lbls = objects.labels(b, ctx, **objects.worker_selector(b))
    on_node = objects.short_circuit(ctx.kind)
    tier_volumes = [_tier_volume(ds, i, t, on_node=on_node) for i, t in enumerate(ds.cache.tiers)]
    resources: dict[str, Any] = {}
    requests = {
        k: v
        for k, v in (("cpu", ds.cache.resources.cpu), ("memory", ds.cache.resources.memory))
        if v
    }
    if requests:
        resources = {"requests": requests, "limits": dict(requests)}
    disk = sum(t.quota for t in ds.cache.tiers if t.medium != "MEM")
    if disk and not on_node:  # (room on the node's disk, or a virtual node's sandbox)
        resources.setdefault("requests", {})["ephemeral-storage"] = objects.quantity(disk)
    image = ctx.worker_image  # each cluster's own (its mirror, its version), never a spec's
    container: dict[str, Any] = {
        "name": "worker",
        "image": image,
        # the pod's own address: the worker binds loopback unless told
        "args": [
            "worker",
            "serve",
            "--config",
            f"/etc/fluidfed/{names.WORKER_CONFIG}",
            "--host",
            "$(POD_IP)",
        ],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "blocks", "containerPort": objects.WORKER_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {
                "path": "/healthz",
                "port": objects.WORKER_PORT,
                "scheme": "HTTPS" if tls else "HTTP",
            }
        },
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/fluidfed", "readOnly": True},
            {"name": "credentials", "mountPath": trust.WORKER_CREDENTIALS_DIR, "readOnly": True},
            *(m for _, m in tier_volumes),
        ],
    }
    if resources:
        container["resources"] = resources
    env_from = _secret_env(ds)
    if env_from:
        container["envFrom"] = env_from
    uid = objects.IMAGE_UID
    pod_spec: dict[str, Any] = {
        # a leaving worker hands its blocks to the others first (`--drain-timeout` 60 s)
        "terminationGracePeriodSeconds": 90,
        # the image's user; fsGroup makes the keys' Secret (mode 0600) readable by it
        "securityContext": {
            "runAsUser": uid,
            "runAsGroup": uid,
            "runAsNonRoot": True,
            "fsGroup": uid,
        },
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": objects.config_name(ds.name)}},
            {
                "name": "credentials",
                "secret": {
                    "secretName": trust.keys_secret_name(ds.name),
                    "defaultMode": trust.SECRET_MODE,
                },
            },
            *(v for v, _ in tier_volumes),
        ],
    }
    host_dirs = [m["mountPath"] for v, m in tier_volumes if "hostPath" in v]
    if host_dirs:
        # fsGroup does not reach hostPath: the node's tier directories (made by the kubelet
        # as root) are handed to the worker's user before it starts
        pod_spec["initContainers"] = [
            {
                "name": "tier-owner",
                "image": image,
                "command": ["chown", f"{uid}:{uid}", *host_dirs],
                "securityContext": {
                    "runAsUser": 0,
                    "runAsNonRoot": False,
                    "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
                },
                "volumeMounts": [m for v, m in tier_volumes if "hostPath" in v],
            }
        ]
    if ctx.kind == "serverless":
        pod_spec["tolerations"] = [objects.VIRTUAL_NODE_TOLERATION]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": objects.meta(name, ns, lbls),
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "ports": [
                {
                    "name": "blocks",
                    "port": objects.WORKER_PORT,
                    "targetPort": objects.WORKER_PORT,
                    "protocol": "TCP",
                }
            ],
            "publishNotReadyAddresses": True,
        },
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": objects.meta(name, ns, lbls),
        "spec": {
            "replicas": b.replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": lbls}, "spec": pod_spec},
        },
    }
    return [service, statefulset]


def _config_map(
    b: Binding, ctx: objects.ClusterContext, namespace: str, data: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": objects.meta(
            objects.config_name(b.spec.name), namespace, objects.labels(b, ctx)
        ),
        "data": data,
    }


def worker_objects(
    b: Binding, ctx: objects.ClusterContext, creds: trust.DataCredentials, *, config: bool
) -> list[dict[str, Any]]:
    """The cache workers, their keys and network policy; with `config`, the ConfigMap
    holding only worker.json (none of the access entries shares its namespace)."""
    ds = b.spec
    tls = creds.tls is not None
    out = [trust.keys_secret(b, ctx, creds), trust.network_policy(b, ctx)]
    if config:
        data = {names.WORKER_CONFIG: codec.encode(worker_config(b, ctx, creds)).decode()}
        out.append(_config_map(b, ctx, ds.namespace, data))
    return out + cache_workers(b, ctx, tls=tls)


def sidecar_objects(
    b: Binding, ctx: objects.ClusterContext, creds: trust.DataCredentials
) -> list[dict[str, Any]]:
    ds = b.spec
    out: list[dict[str, Any]] = []
    for entry in ds.access_list():
        out.append(trust.reader_secret(b, ctx, creds, entry))
        config = sidecar_config(b, entry.namespace, ctx, creds)
        data = {names.SIDECAR_CONFIG: codec.encode(config).decode()}
        if entry.namespace == ds.namespace:
            data[names.WORKER_CONFIG] = codec.encode(worker_config(b, ctx, creds)).decode()
        out.append(_config_map(b, ctx, entry.namespace, data))
    home_served = ds.namespace in {a.namespace for a in ds.access_list()}
    return out + worker_objects(b, ctx, creds, config=not home_served)


def csi_objects(
    b: Binding, ctx: objects.ClusterContext, creds: trust.DataCredentials
) -> list[dict[str, Any]]:
    """Fluid's objects; with the fluidfed engine also the cache workers behind Fluid's FUSE
    pods, which read with a reader token of the whole dataset (in the home namespace)."""
    out = fluid.fluid_objects(b, ctx, tls=creds.tls is not None)
    if objects.runs_workers(b):
        whole = Access(namespace=b.spec.namespace)
        out += [trust.reader_secret(b, ctx, creds, whole)]
        out += worker_objects(b, ctx, creds, config=True)
    return out


def desired(
    b: Binding, ctx: objects.ClusterContext, creds: trust.DataCredentials
) -> list[dict[str, Any]]:
    """Every object the binding needs, namespaces first; `creds` signs the tokens of the
    data path's Secrets (and its TLS encrypts the workers' traffic, unless the cluster's
    operator turned that off: `ctx.data_tls`)."""
    if not ctx.data_tls:
        creds = dataclasses.replace(creds, tls=None)
    make = csi_objects if b.mode == "csi" else sidecar_objects
    return namespaces(b, ctx) + make(b, ctx, creds)


def webhook_configuration(ctx: objects.ClusterContext, url: str, ca_pem: bytes) -> dict[str, Any]:
    """The MutatingWebhookConfiguration that sends labelled pods to this agent."""

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
