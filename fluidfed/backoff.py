"""Retry delays as data: exponential growth with full jitter, capped.

Full jitter (a uniform draw between zero and the exponential bound) spreads a thousand
agents that lost the hub at the same moment over the whole window instead of sending
them back in waves.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0

    def bound(self, attempt: int) -> float:
        return min(self.cap, self.base * self.factor ** min(attempt, 64))

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Endless delays for attempts 0, 1, 2, ... each drawn from [0, bound(attempt)]."""
        draw = rng or random.Random()
        attempt = 0
        while True:
            yield draw.uniform(0, self.bound(attempt))
            attempt += 1
