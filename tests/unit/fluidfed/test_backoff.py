import random

from fluidfed.backoff import Backoff


def test_delays_grow_to_the_cap_with_full_jitter() -> None:
    b = Backoff(base=0.5, factor=2, cap=30)
    assert [b.bound(i) for i in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    draws = b.delays(random.Random(7))
    for attempt in range(50):
        d = next(draws)
        assert 0 <= d <= b.bound(attempt)


def test_a_thousand_agents_do_not_come_back_at_once() -> None:
    # the fifth retry of 1000 agents spreads over the whole window, not in a burst
    b = Backoff(base=0.5, factor=2, cap=30)
    fifth = []
    for seed in range(1000):
        draws = b.delays(random.Random(seed))
        for _ in range(4):
            next(draws)
        fifth.append(next(draws))
    buckets = [0] * 8
    for d in fifth:
        buckets[min(7, int(d / 1.0))] += 1
    assert max(buckets) < 200  # no second holds more than a fifth of them
