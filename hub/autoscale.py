"""The autoscale decision. Pure: (policy, metric window, current replicas, recent
recommendations, now) -> decision with its reason, or None when there is nothing to go on.

Like the Kubernetes HPA: each target proposes replicas in proportion to how far its
metric is from the goal (within a tolerance, no change); the largest proposal wins; the
result is clamped to min/max and to a step limit; a scale-down takes the highest
recommendation of the scale-down window (a short dip changes nothing) and a scale-up the
lowest of the scale-up window. An idle binding (no reads for `idle_after`) scales to
zero when the policy allows it. No metrics, or only stale ones, means no decision: an
agent that went offline must not lose its cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgspec

from fluidfed.models import AutoscalePolicy, AutoscaleTarget, CacheSpec


@dataclass(frozen=True, slots=True)
class Sample:
    """One report of a binding's metrics (rates over the agent's sliding window)."""

    at: float
    cache_used_ratio: float | None = None
    hit_ratio: float | None = None
    read_bytes_per_second: float | None = None


@dataclass(frozen=True, slots=True)
class Recommendation:
    at: float
    replicas: int


@dataclass(frozen=True, slots=True)
class Decision:
    at: float
    current: int
    replicas: int
    recommendation: int  # before the stabilization windows
    reason: str
    proposals: dict[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.replicas != self.current


def _propose(
    t: AutoscaleTarget, s: Sample, current: int, tolerance: float
) -> tuple[int, str] | None:
    base = max(current, 1)
    if t.metric == "cache_used_ratio":
        value = s.cache_used_ratio
        if value is None:
            return None
        ratio = value / t.target
    elif t.metric == "hit_ratio":
        value = s.hit_ratio
        if value is None:
            return None
        # a low hit ratio asks for more cache; a perfect one for none more
        ratio = t.target / value if value > 0 else math.inf
    else:
        if s.read_bytes_per_second is None:
            return None
        value = s.read_bytes_per_second / base
        ratio = value / t.target
    if abs(ratio - 1.0) <= tolerance:
        return current, f"{t.metric} {value:.3g} is within {tolerance:.0%} of {t.target:.3g}"
    proposal = base + 1 if math.isinf(ratio) else math.ceil(base * ratio - 1e-9)
    word = "above" if value > t.target else "below"
    return proposal, f"{t.metric} {value:.3g} is {word} {t.target:.3g}"


def within(policy: AutoscalePolicy, cache: CacheSpec) -> AutoscalePolicy:
    """`policy` with its bounds inside the cache's own (`cache.min_replicas`,
    `max_replicas`): the hub refuses a spec whose bounds reach past them, and a spec stored
    before it did is held to them here."""
    lo = min(max(policy.min_replicas, cache.min_replicas), cache.max_replicas)
    hi = max(lo, min(policy.max_replicas, cache.max_replicas))
    if (lo, hi) == (policy.min_replicas, policy.max_replicas):
        return policy
    return msgspec.structs.replace(policy, min_replicas=lo, max_replicas=hi)


def decide(
    policy: AutoscalePolicy,
    window: list[Sample],
    current: int,
    recent: list[Recommendation],
    now: float,
    *,
    stale_after: float = 60.0,
) -> Decision | None:
    fresh = [s for s in window if now - s.at <= stale_after]
    if not fresh:
        return None
    latest = max(fresh, key=lambda s: s.at)

    # idle: no reads at all over the whole idle period (and samples that cover it)
    if policy.idle_after > 0:
        period = [s for s in window if now - s.at <= policy.idle_after]
        covered = any(now - s.at >= policy.idle_after * 0.9 for s in window)
        if covered and period and all((s.read_bytes_per_second or 0) == 0 for s in period):
            target = 0
            reason = f"no reads for {policy.idle_after:g}s: scale to zero"
            return _finish(policy, current, target, reason, {}, recent, now, idle=True)

    proposals: dict[str, int] = {}
    reasons: dict[str, str] = {}
    for t in policy.targets:
        got = _propose(t, latest, current, policy.tolerance)
        if got is not None:
            proposals[t.metric], reasons[t.metric] = got
    if not proposals:
        return None
    if current == 0 and (latest.read_bytes_per_second or 0) > 0:
        proposals["reads"] = max(policy.min_replicas, 1)
        reasons["reads"] = "reads while scaled to zero"
    winner = max(proposals, key=lambda k: proposals[k])
    raw = proposals[winner]
    return _finish(policy, current, raw, reasons[winner], proposals, recent, now)


def _finish(
    policy: AutoscalePolicy,
    current: int,
    raw: int,
    reason: str,
    proposals: dict[str, int],
    recent: list[Recommendation],
    now: float,
    *,
    idle: bool = False,
) -> Decision:
    lo = 0 if idle else policy.min_replicas
    clamped = max(lo, min(policy.max_replicas, raw))
    notes = [reason]
    if clamped != raw:
        notes.append(f"clamped to [{lo}, {policy.max_replicas}]")
    recs = [*recent, Recommendation(now, clamped)]
    new = clamped
    if clamped < current:
        held = max(r.replicas for r in recs if now - r.at <= policy.scale_down_window)
        new = min(current, max(clamped, held))
        if new != clamped:
            notes.append(f"scale-down held at {new} by the {policy.scale_down_window:g}s window")
    elif clamped > current:
        held = min(r.replicas for r in recs if now - r.at <= policy.scale_up_window)
        new = max(current, min(clamped, held))
        if new != clamped:
            notes.append(f"scale-up held at {new} by the {policy.scale_up_window:g}s window")
    if abs(new - current) > policy.max_step:
        stepped = current + policy.max_step * (1 if new > current else -1)
        notes.append(f"step limited to {policy.max_step}")
        new = stepped
    verb = "keep" if new == current else ("scale up" if new > current else "scale down")
    return Decision(
        at=now,
        current=current,
        replicas=new,
        recommendation=clamped,
        reason=f"{verb} {current} -> {new}: " + "; ".join(notes),
        proposals=proposals,
    )
