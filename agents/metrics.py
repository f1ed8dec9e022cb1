"""What the data path reports, turned into per-dataset rates and ratios over a sliding
window: the figures the hub's autoscaler decides on. Pure: points in, figures out.

Points are cumulative counters or gauges, keyed by the reporting instance (its
`service.instance.id`) and the point's attributes. A counter's rate over the window is its
increase between the first and last points in the window (a counter that went down
restarted: counted from zero); instances are summed.

    read_bytes_per_second   rate of fluidfed.read.bytes over the sidecars; 0 once the
                            sidecars that reported have gone (the jobs ended) while the
                            workers still report; unknown if no sidecar ever reported
    hit_ratio               increase of worker cache hits / (hits + misses)
    cache_used_ratio        workers' fluidfed.cache.used / fluidfed.cache.capacity (latest)
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from fluidfed import names
from fluidfed.models import Figures

SIDECAR, WORKER = names.SIDECAR_SERVICE, names.WORKER_SERVICE
Attrs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Point:
    dataset: str
    service: str  # service.name: fluidfed-sidecar or fluidfed-worker
    instance: str  # service.instance.id
    metric: str
    attrs: Attrs
    at: float  # seconds
    value: float


@dataclass
class _Series:
    points: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=512))


class MetricWindow:
    def __init__(self, window: float = 15.0) -> None:
        self.window = window
        self._series: dict[tuple[str, str, str, str, Attrs], _Series] = {}
        self._last_seen: dict[str, float] = {}
        self._had_readers: set[str] = set()  # datasets whose sidecars have reported

    def add(self, p: Point) -> None:
        key = (p.dataset, p.service, p.instance, p.metric, p.attrs)
        s = self._series.setdefault(key, _Series())
        if s.points and p.at <= s.points[-1][0]:
            return  # the same collection again, or out of order
        s.points.append((p.at, p.value))
        self._last_seen[p.dataset] = max(self._last_seen.get(p.dataset, 0.0), p.at)
        if p.service == SIDECAR:
            self._had_readers.add(p.dataset)

    def datasets(self) -> list[str]:
        return sorted(self._last_seen)

    def _recent(self, dataset: str, service: str, metric: str, now: float) -> list[_Series]:
        return [
            s
            for (d, svc, _, m, _), s in self._series.items()
            if d == dataset
            and svc == service
            and m == metric
            and s.points
            and now - s.points[-1][0] <= self.window * 2
        ]

    def _increase(self, dataset: str, service: str, metric: str, now: float) -> tuple[float, float]:
        """(increase, seconds covered) of a counter over the window, over all instances."""
        total, span = 0.0, 0.0
        for s in self._recent(dataset, service, metric, now):
            pts = [(t, v) for t, v in s.points if now - t <= self.window]
            if len(pts) < 2:
                # one point in the window: measure from the one before it, if any
                older = [(t, v) for t, v in s.points if now - t > self.window]
                pts = older[-1:] + pts
            if len(pts) < 2:
                continue
            inc = 0.0
            for (_, a), (_, b) in itertools.pairwise(pts):
                inc += b - a if b >= a else b  # went down: the instance restarted
            total += inc
            span = max(span, pts[-1][0] - pts[0][0])
        return total, span

    def _latest(self, dataset: str, service: str, metric: str, now: float) -> float | None:
        got = [s.points[-1][1] for s in self._recent(dataset, service, metric, now)]
        return sum(got) if got else None

    def figures(self, dataset: str, now: float) -> Figures:
        """The dataset's figures now; empty when nothing fresh was reported."""
        if now - self._last_seen.get(dataset, 0.0) > self.window * 2:
            return Figures()
        rate: float | None = None
        read, span = self._increase(dataset, SIDECAR, names.READ_BYTES, now)
        if span > 0:
            rate = read / span
        elif self._recent(dataset, SIDECAR, names.READ_BYTES, now) or (
            dataset in self._had_readers
        ):
            rate = 0.0  # readers that read nothing, or readers gone: a cache nobody reads
        hits, _ = self._increase(dataset, WORKER, names.CACHE_HITS, now)
        misses, _ = self._increase(dataset, WORKER, names.CACHE_MISSES, now)
        used = self._latest(dataset, WORKER, names.CACHE_USED, now)
        capacity = self._latest(dataset, WORKER, names.CACHE_CAPACITY, now)
        return Figures(
            read_bytes_per_second=rate,
            hit_ratio=hits / (hits + misses) if hits + misses > 0 else None,
            # a tier may pass its quota for a moment before it evicts: a ratio stays <= 1
            cache_used_ratio=min(1.0, used / capacity) if used is not None and capacity else None,
        )

    def latest(self, dataset: str) -> dict[str, dict[str, float]]:
        """service -> metric -> the sum over instances and attributes of the last values
        received (what `GET /v1/metrics` shows, to compare with a component's own)."""
        out: dict[str, dict[str, float]] = {}
        for (d, svc, _, m, _), s in self._series.items():
            if d == dataset and s.points:
                per = out.setdefault(svc, {})
                per[m] = per.get(m, 0.0) + s.points[-1][1]
        return out

    def forget_before(self, cutoff: float) -> None:
        for key in [k for k, s in self._series.items() if s.points[-1][0] < cutoff]:
            del self._series[key]
        for d in [d for d, t in self._last_seen.items() if t < cutoff]:
            del self._last_seen[d]
            self._had_readers.discard(d)
