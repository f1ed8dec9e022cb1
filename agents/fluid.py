"""Fluid's own objects for a `csi` binding (Fluid installed). Pure.

In the home namespace a Dataset whose mounts are written the way the dataset's engine reads
them (`fluidfed.engines`) and the engine's Runtime; for engine `fluidfed` (the default) a
ThinRuntime whose ThinRuntimeProfile runs fluidfed's own FUSE sidecar, which reads the
config.json Fluid writes for it. In every further access namespace, Fluid's way of sharing
one cache across namespaces: a Dataset whose one mount is `dataset://<home>/<name>` and an
empty ThinRuntime (the reference mode). A dataset whose mount is dataset:// is such a
reference itself.
"""

from __future__ import annotations

import posixpath
from typing import Any

from agents import objects, trust
from fluidfed import engines, names
from fluidfed.models import Binding, Dataset

API = names.FLUID_API
PROFILE_KIND = "ThinRuntimeProfile"
# every kind the agent may own on a cluster with Fluid (list-watched)
OWNED_KINDS = [
    "Dataset",
    *sorted({r.kind for r in engines.RULES.values()}),
    PROFILE_KIND,
    "DataLoad",
]
# --on-change on Fluid's own engines: Fluid's loads sync the engine's metadata first
# (loadMetadata), so each pulls what changed; Fluid has no trigger for its OnEvent policy,
# so they run on this schedule
ON_CHANGE_SCHEDULE = "*/10 * * * *"
# Fluid's DataLoad phases as a warm-up's
LOAD_PHASES = {"Pending": "Waiting", "Executing": "Running", "Complete": "Done", "Failed": "Failed"}
# where Fluid puts the FUSE container's settings (ThinRuntime)
FLUID_CONFIG = "/etc/fluid/config/config.json"
FUSE_FS_TYPE = "fuse.fluidfed"  # what /proc/mounts says of the sidecar's mount (subtype)
SIDECAR_CACHE = 128 * 2**20  # the FUSE container's own memory cache; the workers hold more


def runtime_kind(ds: Dataset) -> str:
    return "ThinRuntime" if engines.is_reference(ds) else engines.RULES[ds.cache.engine].kind


def profile_name(dataset: str) -> str:
    """fluidfed's ThinRuntimeProfile of a dataset (cluster-scoped; dataset names are the
    catalog's, unique in the federation)."""
    return objects.k8s_name("fluidfed", dataset)


def split_image(image: str) -> tuple[str, str]:
    """(image, tag) as Fluid's runtimes take them; a digest stays in the image."""
    repo, sep, tag = image.rpartition(":")
    if not sep or "/" in tag or "@" in image:
        return image, ""
    return repo, tag


def _tieredstore(ds: Dataset) -> dict[str, Any]:
    """The tiers as Fluid's runtimes read them: a level each, watermarks as usage shares
    of the quota; where the engine takes `low` as the share of the disk kept free
    (JuiceFS's free-space-ratio, `engines.EngineRule.low_is_floor`), the tier's
    `min_free`."""
    floor = engines.RULES[ds.cache.engine].low_is_floor
    return {
        "levels": [
            {
                "mediumtype": t.medium,
                "path": t.path or "/dev/shm",
                "quota": objects.quantity(t.quota),
                "high": f"{t.high:g}",
                "low": f"{t.min_free if floor else t.low:g}",
            }
            for t in ds.cache.tiers
        ]
    }


def sidecar_options(b: Binding, *, tls: bool = True) -> dict[str, str]:
    """What fluidfed's FUSE container needs beyond the Dataset's mounts, handed over as the
    ThinRuntime's fuse options (config.json's `runtimeOptions`): the dataset, its block
    size, the sidecar's memory cache, and the cache workers with the reader token (and,
    with `tls`, the binding's CA their certificate chains to)."""
    ds = b.spec
    name = objects.cache_name(ds.name)
    opts = {
        "dataset": ds.name,
        "block_size": str(int(ds.cache.block_size)),
        "cache_quota": str(SIDECAR_CACHE),
        "workers_statefulset": name,
        "workers_service": objects.worker_service(ds),
        "workers_port": str(objects.WORKER_PORT),
        "workers_replicas": str(b.replicas),
        "credentials_file": trust.sidecar_credentials_file(ds.name),
    }
    if tls:
        opts["workers_scheme"] = "https"
        opts["ca_file"] = trust.sidecar_ca_file(ds.name)
    return opts


def profile(b: Binding, ctx: objects.ClusterContext) -> dict[str, Any]:
    """fluidfed as a Fluid runtime: the FUSE container Fluid starts on each node that
    mounts the dataset is fluidfed's sidecar, reading the config.json Fluid writes."""
    image, tag = split_image(ctx.worker_image)
    fuse: dict[str, Any] = {
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": [
            "fluidfed",
            "sidecar",
            "mount",
            "--fluid-config",
            FLUID_CONFIG,
            # Fluid's FUSE pods may share the node's network: no fixed port to clash on
            "--status-addr",
            "127.0.0.1:0",
        ],
    }
    if tag:
        fuse["imageTag"] = tag
    # the reader token of the whole dataset, for the cache workers, which admit the pods
    # labelled as the dataset's readers
    ds = b.spec
    fuse["volumeMounts"] = [
        {
            "name": "fluidfed-reader",
            "mountPath": posixpath.dirname(trust.sidecar_credentials_file(ds.name)),
            "readOnly": True,
        }
    ]
    fuse["podMetadata"] = {"labels": {trust.reader_label(ds.name): "true"}}
    volume = {
        "name": "fluidfed-reader",
        "secret": {
            "secretName": trust.reader_secret_name(ds.name),
            "defaultMode": trust.SECRET_MODE,
        },
    }
    return {
        "apiVersion": API,
        "kind": PROFILE_KIND,
        "metadata": objects.meta(profile_name(ds.name), None, objects.labels(b, ctx)),
        "spec": {"fileSystemType": FUSE_FS_TYPE, "fuse": fuse, "volumes": [volume]},
    }


def runtime(b: Binding, ctx: objects.ClusterContext, *, tls: bool = True) -> dict[str, Any]:
    ds = b.spec
    spec: dict[str, Any]
    if engines.is_reference(ds):
        spec = {}
    elif ds.cache.engine == "fluidfed":
        spec = {
            "profileName": profile_name(ds.name),
            "fuse": {"options": sidecar_options(b, tls=tls)},
        }
    elif ds.cache.engine == "thin":
        spec = {"profileName": ds.cache.profile}
    else:
        spec = {"replicas": b.replicas, "tieredstore": _tieredstore(ds)}
    return {
        "apiVersion": API,
        "kind": runtime_kind(ds),
        "metadata": objects.meta(ds.name, ds.namespace, objects.labels(b, ctx)),
        "spec": spec,
    }


def dataload_name(b: Binding) -> str:
    assert b.load is not None
    return objects.k8s_name(b.spec.name, "load", str(b.load.id))


def loads_by_fluid(b: Binding) -> bool:
    """Whether Fluid's DataLoad runs the binding's warm-ups: on Fluid's own cache engines
    (the fluidfed engine's run on fluidfed's workers)."""
    return (
        b.load is not None
        and not b.deleting
        and not objects.runs_workers(b)
        and not engines.is_reference(b.spec)
    )


def dataload(b: Binding, ctx: objects.ClusterContext) -> dict[str, Any] | None:
    """Fluid's DataLoad of the binding's latest warm-up: Once, or Cron on a schedule."""
    req, ds = b.load, b.spec
    if req is None or not loads_by_fluid(b):
        return None
    spec: dict[str, Any] = {
        "dataset": {"name": ds.name, "namespace": ds.namespace},
        "loadMetadata": True,
        "policy": "Once",
    }
    if req.path:
        spec["target"] = [{"path": "/" + req.path.strip("/")}]
    schedule = req.schedule or (ON_CHANGE_SCHEDULE if req.on_change else "")
    if schedule:
        spec.update(policy="Cron", schedule=schedule)
    return {
        "apiVersion": API,
        "kind": "DataLoad",
        "metadata": objects.meta(dataload_name(b), ds.namespace, objects.labels(b, ctx)),
        "spec": spec,
    }


def _dataset(
    name: str, namespace: str, mounts: list[dict[str, Any]], lbls: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Dataset",
        "metadata": objects.meta(name, namespace, lbls),
        "spec": {"mounts": mounts, "accessModes": ["ReadOnlyMany"]},
    }


def fluid_objects(
    b: Binding, ctx: objects.ClusterContext, *, tls: bool = True
) -> list[dict[str, Any]]:
    """Fluid's objects for `b`; with `tls`, fluidfed's engine reads its workers over
    HTTPS."""
    ds = b.spec
    lbls = objects.labels(b, ctx)
    mounts = [engines.fluid_mount(ds.cache.engine, m, i) for i, m in enumerate(ds.mounts)]
    out = [_dataset(ds.name, ds.namespace, mounts, lbls), runtime(b, ctx, tls=tls)]
    if ds.cache.engine == "fluidfed" and not engines.is_reference(ds):
        out.insert(0, profile(b, ctx))
    load = dataload(b, ctx)
    if load is not None:
        out.append(load)
    ref = [{"mountPoint": f"dataset://{ds.namespace}/{ds.name}", "name": ds.name}]
    for a in ds.access_list():
        if a.namespace != ds.namespace:
            out.append(_dataset(ds.name, a.namespace, ref, lbls))
            out.append(
                {
                    "apiVersion": API,
                    "kind": "ThinRuntime",
                    "metadata": objects.meta(ds.name, a.namespace, lbls),
                    "spec": {},
                }
            )
    return out
