"""Placement is a pure function of (dataset, clusters, current bindings)."""

from typing import Literal

import msgspec
import pytest

from devkit import testing
from fluidfed.models import (
    AutoscalePolicy,
    AutoscaleTarget,
    Binding,
    CacheSpec,
    Capabilities,
    ClusterRecord,
    Dataset,
    LabelSelector,
    Mount,
    Placement,
    SelectorOp,
    SelectorRequirement,
)
from fluidfed.units import Duration
from hub import placement


def cluster(
    name: str,
    *,
    kind: str = "standard",
    labels: dict[str, str] | None = None,
    region: str = "r1",
    zone: str = "z1",
    fluid: bool = False,
    state: Literal["Ready", "Offline"] | None = "Ready",
) -> ClusterRecord:
    caps = Capabilities(csi=fluid, fluid=fluid, privileged=not fluid)
    return testing.cluster_record(
        name,
        state=state,
        kind=kind,
        labels=labels or {},
        region=region,
        zone=zone,
        capabilities=caps,
    )


def dataset(**placement_args: object) -> Dataset:
    return testing.dataset(placement=Placement(**placement_args))  # type: ignore[arg-type]


def names(bindings: dict[str, Binding]) -> list[str]:
    return sorted(bindings)


FLEET = [
    cluster("a", labels={"env": "prod", "gpu": "a100"}, fluid=True),
    cluster("b", kind="serverless", labels={"env": "prod"}),
    cluster("c", kind="edge", labels={"env": "edge"}, region="r2"),
    cluster("d", labels={"env": "dev"}, region="r2", zone="z2"),
]


def test_no_placement_means_every_cluster() -> None:
    assert names(placement.place(dataset(), 1, FLEET, {})) == ["a", "b", "c", "d"]


def test_explicit_names() -> None:
    assert names(placement.place(dataset(clusters=["b", "d", "zz"]), 1, FLEET, {})) == ["b", "d"]


def test_match_labels_and_kinds_are_anded() -> None:
    sel = LabelSelector(match_labels={"env": "prod"})
    assert names(placement.place(dataset(selector=sel), 1, FLEET, {})) == ["a", "b"]
    got = placement.place(dataset(selector=sel, kinds=["serverless"]), 1, FLEET, {})
    assert names(got) == ["b"]


@pytest.mark.parametrize(
    ("op", "values", "expected"),
    [
        ("In", ["prod", "edge"], ["a", "b", "c"]),
        ("NotIn", ["prod"], ["c", "d"]),
        ("Exists", [], ["a", "b", "c", "d"]),
        ("DoesNotExist", [], []),
    ],
)
def test_match_expressions(op: SelectorOp, values: list[str], expected: list[str]) -> None:
    sel = LabelSelector(
        match_expressions=[SelectorRequirement(key="env", operator=op, values=values)]
    )
    assert names(placement.place(dataset(selector=sel), 1, FLEET, {})) == expected


def test_gpu_label_expression() -> None:
    sel = LabelSelector(match_expressions=[SelectorRequirement(key="gpu", operator="Exists")])
    assert names(placement.place(dataset(selector=sel), 1, FLEET, {})) == ["a"]


def test_derived_labels_are_selectable() -> None:
    sel = LabelSelector(match_labels={"topology.kubernetes.io/region": "r2"})
    assert names(placement.place(dataset(selector=sel), 1, FLEET, {})) == ["c", "d"]


def test_mount_mode_follows_capabilities() -> None:
    got = placement.place(dataset(), 1, FLEET, {})
    assert {k: b.mode for k, b in got.items()} == {
        "a": "csi",
        "b": "sidecar",
        "c": "sidecar",
        "d": "sidecar",
    }


def test_csi_without_fluid_is_sidecar() -> None:
    caps = Capabilities(csi=True, privileged=True)
    c = testing.cluster_record("x", state=None, capabilities=caps)
    assert placement.place(dataset(), 1, [c], {})["x"].mode == "sidecar"


def test_a_cluster_that_could_mount_nothing_gets_no_new_binding_and_keeps_its_own() -> None:
    """Registered before the hub refused such clusters (no CSI, not privileged): placing a
    dataset there would have admission refuse its every pod; a binding it has stays, as an
    Offline cluster's does (its agent retires it when the dataset goes)."""
    stored = testing.cluster_record("old", capabilities=Capabilities())
    fleet = [stored, cluster("b")]
    assert names(placement.place(dataset(), 1, fleet, {})) == ["b"]
    held = placement.place(dataset(), 1, [cluster("old"), cluster("b")], {})
    assert names(placement.place(dataset(), 2, fleet, held)) == ["b", "old"]
    # ... but with max_clusters it ranks as one that holds nothing: a cluster that can
    # mount takes the place
    one = dataset(max_clusters=1)
    held = placement.place(one, 1, [cluster("old")], {})
    assert names(held) == ["old"]  # (mountable then, say)
    assert names(placement.place(one, 2, [stored], held)) == ["old"]  # (nothing better)
    assert names(placement.place(one, 2, fleet, held)) == ["b"]


def test_max_clusters_prefers_ready_over_unknown_over_offline() -> None:
    fleet = [cluster("a", state="Offline"), cluster("b", state=None), cluster("c")]
    assert names(placement.place(dataset(max_clusters=1), 1, fleet, {})) == ["c"]
    assert names(placement.place(dataset(max_clusters=2), 1, fleet, {})) == ["b", "c"]


def test_offline_cluster_keeps_its_binding() -> None:
    fleet = [cluster("a", state="Offline"), cluster("b"), cluster("c")]
    first = placement.place(dataset(max_clusters=1), 1, [cluster("a"), *fleet[1:]], {})
    assert names(first) == ["a"]
    again = placement.place(dataset(max_clusters=1), 1, fleet, first)
    assert names(again) == ["a"]


def test_spread_by_region() -> None:
    fleet = [cluster("a", region="r1"), cluster("b", region="r1"), cluster("c", region="r2")]
    assert names(placement.place(dataset(max_clusters=2), 1, fleet, {})) == ["a", "b"]
    got = placement.place(dataset(max_clusters=2, spread_by="region"), 1, fleet, {})
    assert names(got) == ["a", "c"]


def test_spread_by_zone_within_region() -> None:
    fleet = [cluster("a", zone="z1"), cluster("b", zone="z1"), cluster("c", zone="z2")]
    got = placement.place(dataset(max_clusters=2, spread_by="zone"), 1, fleet, {})
    assert names(got) == ["a", "c"]
    # a zone is named within its region: z1 of r1 and z1 of r2 are two domains
    fleet = [cluster("a"), cluster("b"), cluster("c", region="r2")]
    got = placement.place(dataset(max_clusters=2, spread_by="zone"), 1, fleet, {})
    assert names(got) == ["a", "c"]


def test_bindings_carry_name_generation_and_replicas() -> None:
    got = placement.place(dataset(clusters=["a"]), 7, FLEET, {})
    b = got["a"]
    assert (b.name, b.dataset, b.cluster, b.generation, b.replicas) == ("ds.a", "ds", "a", 7, 1)


def test_autoscaled_replicas_survive_replacement() -> None:
    ds = Dataset(
        name="ds",
        mounts=[Mount(uri="s3://b/p")],
        autoscale=AutoscalePolicy(
            targets=[AutoscaleTarget(metric="hit_ratio", target=0.9)],
            min_replicas=1,
            max_replicas=5,
        ),
    )
    current = placement.place(ds, 1, FLEET[:1], {})
    scaled = {
        "a": Binding(
            **{
                **{f: getattr(current["a"], f) for f in current["a"].__struct_fields__},
                "replicas": 4,
            }
        )
    }
    assert placement.place(ds, 2, FLEET[:1], scaled)["a"].replicas == 4
    # a policy narrowed below what the autoscaler had: clamped to the new bounds
    assert ds.autoscale is not None
    narrower = msgspec.structs.replace(
        ds, autoscale=msgspec.structs.replace(ds.autoscale, min_replicas=1, max_replicas=3)
    )
    assert placement.place(narrower, 3, FLEET[:1], scaled)["a"].replicas == 3


def test_a_new_binding_starts_within_the_autoscale_bounds() -> None:
    policy = AutoscalePolicy(
        targets=[AutoscaleTarget(metric="hit_ratio", target=0.9)], min_replicas=2, max_replicas=5
    )
    few = testing.dataset("ds", cache=CacheSpec(replicas=1), autoscale=policy)
    assert placement.place(few, 1, FLEET[:1], {})["a"].replicas == 2
    many = testing.dataset("ds", cache=CacheSpec(replicas=9), autoscale=policy)
    assert placement.place(many, 1, FLEET[:1], {})["a"].replicas == 5


def test_a_spec_stored_with_autoscale_past_the_caches_bounds_is_held_to_them() -> None:
    """The hub now refuses autoscale bounds past cache.min/max_replicas; a spec stored
    before that is held to the cache's, where a binding starts and where the autoscaler
    decides (`autoscale.within`)."""
    from hub import autoscale

    policy = AutoscalePolicy(
        targets=[AutoscaleTarget(metric="hit_ratio", target=0.9)], min_replicas=1, max_replicas=10
    )
    capped = testing.dataset("ds", cache=CacheSpec(replicas=9, max_replicas=2), autoscale=policy)
    assert placement.place(capped, 1, FLEET[:1], {})["a"].replicas == 2
    assert capped.autoscale is not None
    held = autoscale.within(capped.autoscale, capped.cache)
    assert (held.min_replicas, held.max_replicas) == (1, 2)
    full = [autoscale.Sample(0, hit_ratio=0.1)]  # (asks for many more replicas)
    decided = autoscale.decide(held, full, 2, [], 0.0)
    assert decided is not None and decided.replicas == 2
    floor = CacheSpec(replicas=3, min_replicas=3, max_replicas=5)
    assert (
        autoscale.within(policy, floor).min_replicas,
        autoscale.within(policy, floor).max_replicas,
    ) == (3, 5)
    assert autoscale.within(policy, CacheSpec()) is policy  # (the defaults agree)
    high = msgspec.structs.replace(policy, min_replicas=5)
    small = CacheSpec(replicas=1, max_replicas=3)
    assert (
        autoscale.within(high, small).min_replicas,
        autoscale.within(high, small).max_replicas,
    ) == (3, 3)


def test_a_binding_scaled_to_zero_while_idle_stays_there_when_placed_again() -> None:
    """The autoscaler scales an idle dataset to zero below its minimum (idle_after); a
    placement again (any cluster's change) lifted it back to the minimum, and the two
    took turns."""
    policy = AutoscalePolicy(
        targets=[AutoscaleTarget(metric="hit_ratio", target=0.9)],
        min_replicas=2,
        idle_after=Duration(60),
    )
    ds = testing.dataset("ds", cache=CacheSpec(replicas=2), autoscale=policy)
    first = placement.place(ds, 1, FLEET[:1], {})
    idle = {"a": msgspec.structs.replace(first["a"], replicas=0)}
    assert placement.place(ds, 2, FLEET[:1], idle)["a"].replicas == 0
    no_idle = testing.dataset(
        "ds",
        cache=CacheSpec(replicas=2),
        autoscale=msgspec.structs.replace(policy, idle_after=Duration(0)),
    )
    assert placement.place(no_idle, 2, FLEET[:1], idle)["a"].replicas == 2


def test_placement_is_deterministic() -> None:
    a = placement.place(dataset(max_clusters=2, spread_by="region"), 1, FLEET, {})
    b = placement.place(dataset(max_clusters=2, spread_by="region"), 1, list(reversed(FLEET)), {})
    assert a == b
