"""Fluid's own objects for a `csi` binding (Fluid installed): a Dataset and a Runtime of the
dataset's engine in the home namespace, and a `dataset://` Dataset in every further
access namespace, Fluid's way of sharing one cache across namespaces. Pure."""

from __future__ import annotations

from typing import Any

from agents import objects
from fluidfed import names
from fluidfed.models import Binding, Mount

RUNTIME_KINDS = {"thin": "ThinRuntime", "juicefs": "JuiceFSRuntime", "alluxio": "AlluxioRuntime"}


def _fluid_mount(m: Mount, index: int) -> dict[str, Any]:
    mount: dict[str, Any] = {"mountPoint": m.uri, "name": m.name or f"m{index}"}
    if m.path:
        mount["path"] = m.path
    if m.options:
        mount["options"] = dict(m.options)
    if m.secret:
        mount["encryptOptions"] = [
            {
                "name": key,
                "valueFrom": {"secretKeyRef": {"name": m.secret, "key": key}},
            }
            for key in ("access-key", "secret-key")
        ]
    return mount


def fluid_objects(b: Binding, ctx: objects.ClusterContext) -> list[dict[str, Any]]:
    ds = b.spec
    api = names.FLUID_API
    home = {
        "apiVersion": api,
        "kind": "Dataset",
        "metadata": objects.meta(ds.name, ds.namespace, objects.labels(b, ctx)),
        "spec": {
            "mounts": [_fluid_mount(m, i) for i, m in enumerate(ds.mounts)],
            "accessModes": ["ReadOnlyMany"],
        },
    }
    runtime = {
        "apiVersion": api,
        "kind": RUNTIME_KINDS[ds.cache.engine],
        "metadata": objects.meta(ds.name, ds.namespace, objects.labels(b, ctx)),
        "spec": {
            "replicas": b.replicas,
            "tieredstore": {
                "levels": [
                    {
                        "mediumtype": t.medium,
                        "path": t.path or "/dev/shm",
                        "quota": objects.quantity(t.quota),
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
            "metadata": objects.meta(ds.name, a.namespace, objects.labels(b, ctx)),
            "spec": {
                "mounts": [{"mountPoint": f"dataset://{ds.namespace}/{ds.name}", "name": ds.name}],
                "accessModes": ["ReadOnlyMany"],
            },
        }
        for a in ds.access_list()
        if a.namespace != ds.namespace
    ]
    return [home, runtime, *refs]
