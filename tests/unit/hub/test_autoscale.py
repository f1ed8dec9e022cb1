"""The autoscale decision, table by table."""

import pytest

from fluidfed.models import AutoscalePolicy, AutoscaleTarget
from hub.autoscale import Recommendation, Sample, decide

MiB = 2**20


def policy(*targets: tuple[str, float], **kw: object) -> AutoscalePolicy:
    base: dict[str, object] = {
        "min_replicas": 1,
        "max_replicas": 10,
        "tolerance": 0.1,
        "scale_up_window": 0.0,
        "scale_down_window": 0.0,
        "max_step": 10,
    }
    base.update(kw)
    return AutoscalePolicy(
        targets=[AutoscaleTarget(metric=m, target=t) for m, t in targets],  # type: ignore[arg-type]
        **base,  # type: ignore[arg-type]
    )


USED = ("cache_used_ratio", 0.8)
HIT = ("hit_ratio", 0.9)
TPUT = ("read_throughput_per_worker", 100 * MiB)


@pytest.mark.parametrize(
    ("targets", "sample", "current", "want"),
    [
        ((USED,), Sample(100, cache_used_ratio=0.8), 2, 2),  # on target
        ((USED,), Sample(100, cache_used_ratio=0.86), 2, 2),  # within tolerance
        ((USED,), Sample(100, cache_used_ratio=0.95), 2, 3),  # past the tolerance: up
        ((USED,), Sample(100, cache_used_ratio=0.2), 4, 1),  # mostly empty: down
        ((HIT,), Sample(100, hit_ratio=0.45), 2, 4),  # half the hits wanted: twice the cache
        ((HIT,), Sample(100, hit_ratio=0.0), 2, 3),  # no hits at all: one more
        ((TPUT,), Sample(100, read_bytes_per_second=600 * MiB), 2, 6),
        ((TPUT,), Sample(100, read_bytes_per_second=150 * MiB), 3, 2),
        # several targets: the largest proposal wins
        (
            (USED, HIT, TPUT),
            Sample(100, cache_used_ratio=0.4, hit_ratio=0.3, read_bytes_per_second=100 * MiB),
            2,
            6,
        ),
        ((USED, TPUT), Sample(100, cache_used_ratio=0.8, read_bytes_per_second=10 * MiB), 2, 2),
    ],
)
def test_proposals(
    targets: tuple[tuple[str, float], ...], sample: Sample, current: int, want: int
) -> None:
    d = decide(policy(*targets), [sample], current, [], now=100)
    assert d is not None
    assert d.replicas == want, d.reason


def test_min_and_max() -> None:
    d = decide(policy(USED, max_replicas=3), [Sample(0, cache_used_ratio=4.0)], 2, [], 0)
    assert d is not None and d.replicas == 3 and "clamped" in d.reason
    d = decide(policy(USED, min_replicas=2), [Sample(0, cache_used_ratio=0.01)], 3, [], 0)
    assert d is not None and d.replicas == 2


def test_step_limit() -> None:
    d = decide(policy(USED, max_step=2), [Sample(0, cache_used_ratio=4.0)], 2, [], 0)
    assert d is not None and d.replicas == 4 and "step limited to 2" in d.reason
    d = decide(policy(USED, max_step=1), [Sample(0, cache_used_ratio=0.1)], 5, [], 0)
    assert d is not None and d.replicas == 4


def test_scale_down_window_holds_the_highest_recent_recommendation() -> None:
    p = policy(USED, scale_down_window=300.0)
    recent = [Recommendation(800, 4), Recommendation(950, 3)]
    d = decide(p, [Sample(1000, cache_used_ratio=0.2)], 4, recent, 1000)
    assert d is not None and d.replicas == 4 and d.recommendation == 1
    assert "held at 4 by the 300s window" in d.reason
    # once the high recommendations leave the window, the scale-down happens
    d = decide(p, [Sample(1200, cache_used_ratio=0.2)], 4, recent, 1200)
    assert d is not None and d.replicas == 3  # 950's 3 is still inside


def test_a_short_spike_inside_the_scale_up_window_changes_nothing() -> None:
    p = policy(USED, scale_up_window=60.0)
    recent = [Recommendation(950, 2), Recommendation(980, 2)]
    d = decide(p, [Sample(1000, cache_used_ratio=2.0)], 2, recent, 1000)
    assert d is not None and d.replicas == 2 and d.recommendation == 5
    # sustained for the whole window: up it goes
    recent = [Recommendation(935, 4), Recommendation(970, 4)]
    d = decide(p, [Sample(1000, cache_used_ratio=2.0)], 2, recent, 1000)
    assert d is not None and d.replicas == 4


def test_idle_scales_to_zero_and_reads_bring_it_back() -> None:
    p = policy(TPUT, idle_after=300.0)
    window = [Sample(t, read_bytes_per_second=0.0) for t in range(690, 1001, 30)]
    d = decide(p, window, 3, [], 1000)
    assert d is not None and d.replicas == 0 and "scale to zero" in d.reason
    # not idle for long enough yet: the samples do not cover the idle period
    d = decide(p, window[-3:], 3, [], 1000)
    assert d is not None and d.replicas != 0
    d = decide(p, [Sample(2000, read_bytes_per_second=50 * MiB)], 0, [], 2000)
    assert d is not None and d.replicas == 1 and "scale up 0 -> 1" in d.reason


def test_no_idle_scale_to_zero_unless_the_policy_says_so() -> None:
    window = [
        Sample(t, read_bytes_per_second=0.0, cache_used_ratio=0.01) for t in range(0, 1000, 30)
    ]
    d = decide(policy(USED), window, 3, [], 990)
    assert d is not None and d.replicas == 1  # min_replicas, never zero


def test_missing_or_stale_metrics_mean_no_decision() -> None:
    assert decide(policy(USED), [], 3, [], 1000) is None
    assert decide(policy(USED), [Sample(100, cache_used_ratio=0.99)], 3, [], 1000) is None
    # metrics present, but none for any target
    assert decide(policy(HIT), [Sample(1000, cache_used_ratio=0.5)], 3, [], 1000) is None


def test_the_reason_names_the_metric() -> None:
    d = decide(policy(HIT), [Sample(0, hit_ratio=0.5)], 2, [], 0)
    assert d is not None
    assert d.reason.startswith("scale up 2 -> 4: hit_ratio 0.5 is below 0.9")
    assert d.proposals == {"hit_ratio": 4}


def test_reads_while_scaled_to_zero_bring_a_worker_back_whatever_the_targets_say() -> None:
    # an empty cache proposes nothing more; the reads alone ask for a worker
    p = policy(USED, min_replicas=0)
    d = decide(p, [Sample(0, cache_used_ratio=0.0, read_bytes_per_second=50 * MiB)], 0, [], 0)
    assert d is not None and d.replicas == 1 and "reads while scaled to zero" in d.reason
    d = decide(p, [Sample(0, cache_used_ratio=0.0, read_bytes_per_second=0.0)], 0, [], 0)
    assert d is None or d.replicas == 0


def test_the_newest_fresh_sample_decides() -> None:
    window = [Sample(100, cache_used_ratio=0.2), Sample(90, cache_used_ratio=1.0)]
    d = decide(policy(USED), window, 4, [], 100)
    assert d is not None and d.replicas == 1, d
    d = decide(policy(USED), window[::-1], 4, [], 100)
    assert d is not None and d.replicas == 1, d


def test_reads_before_the_idle_period_do_not_keep_a_cache_up() -> None:
    p = policy(TPUT, idle_after=300.0)
    window = [
        Sample(t, read_bytes_per_second=(80 * MiB if t < 600 else 0.0))
        for t in range(400, 1001, 30)
    ]
    d = decide(p, window, 3, [], 1000)
    assert d is not None and d.replicas == 0 and "scale to zero" in d.reason
    # a read inside the period keeps it
    window[-2] = Sample(window[-2].at, read_bytes_per_second=1.0)
    d = decide(p, window, 3, [], 1000)
    assert d is not None and d.replicas != 0
