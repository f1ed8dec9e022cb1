"""Placement: (dataset, clusters, current bindings) -> bindings. Pure, deterministic.

Filters first (explicit names, label selector, kinds); then, when `max_clusters` limits
the choice, a ranking that prefers clusters that already hold the dataset (no churn),
then Ready over never-seen over Offline clusters, spreading over regions or zones when
asked. An Offline cluster keeps its binding: an edge cluster that lost the hub must keep
its data. A cluster that could mount no dataset (registered before the hub refused such
clusters: `Cluster.can_mount`) gets no new binding, and keeps one it has only where
`max_clusters` leaves room once every cluster that can mount is placed (it ranks as one
that holds nothing); a binding it lets go of, retiring, is not taken back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fluidfed.models import Binding, ClusterRecord, Dataset
from hub import autoscale, selectors


def binding_name(dataset: str, cluster: str) -> str:
    return f"{dataset}.{cluster}"


def eligible(dataset: Dataset, cluster: ClusterRecord) -> bool:
    pl, spec = dataset.placement, cluster.spec
    if pl.clusters and spec.name not in pl.clusters:
        return False
    if pl.kinds and spec.kind not in pl.kinds:
        return False
    return pl.selector is None or selectors.matches(pl.selector, spec.selector_labels())


def _readiness_rank(c: ClusterRecord) -> int:
    cond = c.status.condition
    if cond is None:
        return 1  # registered, agent not seen yet
    return 0 if cond.type == "Ready" else 2


def _choose(
    dataset: Dataset, candidates: list[ClusterRecord], current: Mapping[str, Binding]
) -> list[ClusterRecord]:
    limit = dataset.placement.max_clusters
    ranked = sorted(
        candidates,
        key=lambda c: (
            c.spec.name not in current or not c.spec.can_mount(),
            _readiness_rank(c),
            c.spec.name,
        ),
    )
    if not limit or len(ranked) <= limit:
        return ranked
    spread = dataset.placement.spread_by
    if not spread:
        return ranked[:limit]

    def domain(c: ClusterRecord) -> str:
        return c.spec.region if spread == "region" else f"{c.spec.region}/{c.spec.zone}"

    chosen: list[ClusterRecord] = []
    used: dict[str, int] = {}
    remaining = list(ranked)
    while remaining and len(chosen) < limit:
        # the best-ranked cluster among the least-used domains
        pick = min(remaining, key=lambda c: (used.get(domain(c), 0), ranked.index(c)))
        chosen.append(pick)
        used[domain(pick)] = used.get(domain(pick), 0) + 1
        remaining.remove(pick)
    return chosen


def replicas_for(dataset: Dataset, current: Binding | None) -> int:
    """Replicas come from the cache spec, unless the autoscaler owns them."""
    if dataset.autoscale is None:
        return dataset.cache.replicas
    policy = autoscale.within(dataset.autoscale, dataset.cache)
    if current is None:
        return max(policy.min_replicas, min(dataset.cache.replicas, policy.max_replicas))
    if current.replicas == 0 and policy.idle_after > 0:
        return 0  # scaled to zero while idle: the autoscaler brings it back on reads
    return max(policy.min_replicas, min(current.replicas, policy.max_replicas))


def place(
    dataset: Dataset,
    generation: int,
    clusters: Iterable[ClusterRecord],
    current: Mapping[str, Binding],
) -> dict[str, Binding]:
    """The bindings `dataset` should have, keyed by cluster name.

    `current` maps cluster name -> the dataset's binding there now.
    """
    candidates = [
        c
        for c in clusters
        if eligible(dataset, c) and (c.spec.name in current or c.spec.can_mount())
    ]
    chosen = _choose(dataset, candidates, current)
    return {
        c.spec.name: Binding(
            name=binding_name(dataset.name, c.spec.name),
            dataset=dataset.name,
            cluster=c.spec.name,
            mode=c.spec.mount_mode(),
            replicas=replicas_for(dataset, current.get(c.spec.name)),
            generation=generation,
            spec=dataset,
        )
        for c in chosen
    }
