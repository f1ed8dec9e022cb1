"""A binding's status from what the cluster shows. Pure."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from agents import fluid, objects
from fluidfed import names
from fluidfed.models import Binding, BindingStatus, Figures, LoadStatus
from fluidfed.units import parse_size


def _fluid_size(text: Any) -> int:
    if not isinstance(text, str) or not text.strip():
        return 0
    try:
        return int(parse_size(text.replace(" ", "")))
    except ValueError:
        return 0


def _percent(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    m = re.match(r"^\s*([\d.]+)\s*%\s*$", text)
    return float(m.group(1)) / 100 if m else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def fluid_load(b: Binding, live: dict[tuple[str, str, str, str], dict[str, Any]]) -> LoadStatus:
    """The warm-up as Fluid's DataLoad reports it: its phase, and its last condition or
    duration as the message (Fluid counts no blocks)."""
    assert b.load is not None
    name = fluid.dataload_name(b)
    st = _dict(_dict(live.get((names.FLUID_API, "DataLoad", b.spec.namespace, name))).get("status"))
    phase = fluid.LOAD_PHASES.get(str(st.get("phase") or ""), "Waiting")
    conditions = [_dict(c) for c in st.get("conditions") or []]
    said = str(conditions[-1].get("message") or "") if conditions else ""
    took = f" in {st['duration']}" if st.get("duration") else ""
    message = said or f"Fluid DataLoad {name}: {st.get('phase') or 'created'}{took}"
    return LoadStatus(id=b.load.id, phase=phase, path=b.load.path, message=message)  # type: ignore[arg-type]


def compute(
    b: Binding,
    live: dict[tuple[str, str, str, str], dict[str, Any]],
    *,
    error: str = "",
    hub_last_seen: float = 0.0,
    now: float = 0.0,
) -> BindingStatus:
    ds = b.spec
    ready = 0
    capacity = sum(int(t.quota) for t in ds.cache.tiers) * b.replicas
    used = 0
    hit_ratio: float | None = None
    ufs_total = 0
    fluid_phase = ""
    if objects.runs_workers(b):
        sts = live.get(("apps/v1", "StatefulSet", ds.namespace, objects.cache_name(ds.name)))
        ready = int(_dict(_dict(sts).get("status")).get("readyReplicas") or 0)
    if b.mode == "csi":
        api = names.FLUID_API
        dataset = _dict(live.get((api, "Dataset", ds.namespace, ds.name)))
        runtime = _dict(live.get((api, fluid.runtime_kind(ds), ds.namespace, ds.name)))
        st = _dict(dataset.get("status"))
        fluid_phase = str(st.get("phase") or "")
        cache = _dict(st.get("cacheStates"))
        used = _fluid_size(cache.get("cached"))
        capacity = _fluid_size(cache.get("cacheCapacity")) or capacity
        hit_ratio = _percent(cache.get("cacheHitRatio"))
        ufs_total = _fluid_size(st.get("ufsTotal"))  # "[Calculating]" until Fluid knows
        if not objects.runs_workers(b):
            ready = int(_dict(runtime.get("status")).get("workerNumberReady") or 0)
    if error:
        phase = "Failed"
    elif b.mode == "csi":
        phase = "Bound" if fluid_phase == "Bound" else "Pending"
    elif ready >= b.replicas:
        phase = "Bound"
    elif ready > 0:
        phase = "Degraded"
    else:
        phase = "Pending"
    load = None
    if fluid.loads_by_fluid(b):
        load = fluid_load(b, live)
    return BindingStatus(
        load=load,
        phase=phase,  # type: ignore[arg-type]
        mode=b.mode,
        ready_workers=ready,
        cache_capacity=capacity,
        cache_used=used,
        ufs_total=ufs_total,
        hit_ratio=hit_ratio,
        last_error=error,
        observed_generation=b.generation,
        hub_last_seen=hub_last_seen,
        reported_at=now,
    )


def with_workers(
    st: BindingStatus,
    cache: tuple[int, int, float | None] | None,
    load: LoadStatus | None,
    figures: Figures | None = None,
    measured: int = 0,
    disks: tuple[int, int, int] | None = None,
) -> BindingStatus:
    """The status with what the cache workers report (used, capacity, hit ratio; with
    `disks`, `registry.Disks`: the blocks their disk tiers did not keep, those they evicted
    to keep the disk's floor free, and the workers whose disk keeps none now), the latest
    warm-up's progress and the metric window's figures folded in; the under storage's size
    as the last load of the whole dataset measured it (else `measured`, the one known
    before)."""
    changes: dict[str, Any] = {"load": load, "metrics": figures or Figures()}
    if load is not None and not load.path and load.phase == "Done" and load.ufs_bytes:
        changes["ufs_total"] = load.ufs_bytes
    elif not st.ufs_total:
        changes["ufs_total"] = measured
    if cache is not None:
        used, capacity, ratio = cache
        changes.update(cache_used=used, cache_capacity=capacity or st.cache_capacity)
        if ratio is not None:
            changes["hit_ratio"] = ratio
    if disks is not None:
        changes["cache_not_kept"], changes["cache_shed"], changes["cache_disks_full"] = disks
    return msgspec.structs.replace(st, **changes)
