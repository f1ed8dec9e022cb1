"""A binding's status, computed from the live objects it made."""

from typing import Any

import pytest

from agents import status
from devkit import testing
from fluidfed.models import Binding, CacheSpec, LoadRequest, LoadStatus, MountMode


def binding(mode: MountMode = "sidecar") -> Binding:
    """Two workers of 2 GiB in memory and 50 GiB on disk each, at generation 3."""
    tiers = [testing.cache_tier("MEM", 2 * 2**30), testing.cache_tier("SSD", 50 * 2**30, "/ssd")]
    spec = testing.dataset("imagenet", namespace="ml", cache=CacheSpec(replicas=2, tiers=tiers))
    return testing.binding(spec, "edge-1", mode=mode, replicas=2, generation=3)


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
    live: dict[tuple[str, str, str, str], dict[str, Any]] = {
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
        # fluidfed's own workers serve the default engine behind Fluid's FUSE pods
        ("apps/v1", "StatefulSet", "ml", "fluidfed-imagenet-cache"): {
            "status": {"readyReplicas": 2}
        },
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


@pytest.mark.parametrize(
    ("fluid_status", "phase", "says"),
    [
        ({}, "Waiting", "Fluid DataLoad d-load-7: created"),
        ({"phase": "Executing", "conditions": []}, "Running", "Executing"),
        ({"phase": "Complete", "duration": "12s", "conditions": []}, "Done", "Complete in 12s"),
        (
            {
                "phase": "Failed",
                "conditions": [{"type": "Failed", "status": "True", "message": "/x: no such"}],
            },
            "Failed",
            "/x: no such",
        ),
    ],
)
def test_a_fluid_warm_up_is_read_from_its_dataload(
    fluid_status: dict[str, Any], phase: str, says: str
) -> None:
    ds = testing.dataset("d", namespace="ml", cache=CacheSpec(engine="alluxio"))
    b = testing.binding(ds, mode="csi", load=LoadRequest(id=7, path="x"))
    live = {("data.fluid.io/v1alpha1", "DataLoad", "ml", "d-load-7"): {"status": fluid_status}}
    ld = status.compute(b, live).load
    assert ld is not None and (ld.id, ld.phase, ld.path) == (7, phase, "x")
    assert says in ld.message


def test_a_load_of_the_whole_dataset_measures_the_under_storage() -> None:
    st = status.compute(binding(), {})
    whole = LoadStatus(id=1, phase="Done", ufs_bytes=5 * 2**30)
    assert status.with_workers(st, None, whole).ufs_total == 5 * 2**30
    part = LoadStatus(id=2, phase="Done", path="train", ufs_bytes=2**30)
    assert status.with_workers(st, None, part).ufs_total == 0  # a part is not the whole
    assert status.with_workers(st, None, part, measured=5 * 2**30).ufs_total == 5 * 2**30


def test_what_the_workers_disks_did_not_keep_is_folded_in() -> None:
    st = status.compute(binding(), {})
    assert (st.cache_not_kept, st.cache_shed, st.cache_disks_full) == (0, 0, 0)
    folded = status.with_workers(st, None, None, disks=(3, 7, 2))
    assert (folded.cache_not_kept, folded.cache_shed, folded.cache_disks_full) == (3, 7, 2)
