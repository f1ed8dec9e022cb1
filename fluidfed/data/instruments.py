"""The data path's OpenTelemetry instruments (names and meaning in `fluidfed.telemetry`).

Counters the components keep anyway (block store statistics, where blocks came from) are
observed when a reader collects, so the hot path pays nothing for them; only the per-read
duration histogram is recorded as reads happen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from fluidfed.data.store import BlockStore

Counts = Callable[[], dict[tuple[tuple[str, str], ...], float]]


class DataPathInstruments:
    """Instruments over a block store and the component's own counters.

    `reads` and `sources` are callables returning cumulative values keyed by their
    attributes (tuples of (key, value) pairs), read at collection time.
    """

    def __init__(
        self,
        meter: metrics.Meter,
        store: BlockStore,
        *,
        read_bytes: Counts,
        reads: Counts,
        source_hits: Counts,
        source_misses: Counts,
        ufs_bytes: Callable[[], float],
        ufs_errors: Callable[[], float],
    ) -> None:
        self.store = store
        self.duration = meter.create_histogram(
            "fluidfed.read.duration", unit="s", description="time to serve a read"
        )

        def from_counts(counts: Counts) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def cb(_: CallbackOptions) -> Iterable[Observation]:
                return [Observation(v, dict(attrs)) for attrs, v in counts().items()]

            return cb

        meter.create_observable_counter(
            "fluidfed.read.bytes",
            [from_counts(read_bytes)],
            unit="By",
            description="bytes served to readers",
        )
        meter.create_observable_counter(
            "fluidfed.read.operations", [from_counts(reads)], description="reads served"
        )
        meter.create_observable_counter(
            "fluidfed.cache.hits",
            [self._tier_hits, from_counts(source_hits)],
            description="blocks found in a cache",
        )
        meter.create_observable_counter(
            "fluidfed.cache.misses",
            [self._store_misses, from_counts(source_misses)],
            description="blocks not found in a cache",
        )
        meter.create_observable_counter(
            "fluidfed.cache.evictions", [self._evictions], description="blocks evicted"
        )
        meter.create_observable_gauge(
            "fluidfed.cache.used", [self._used], unit="By", description="bytes held"
        )
        meter.create_observable_gauge(
            "fluidfed.cache.capacity", [self._capacity], unit="By", description="tier quota"
        )
        meter.create_observable_counter(
            "fluidfed.data.ufs.read.bytes",
            [lambda _: [Observation(ufs_bytes())]],
            unit="By",
            description="bytes read from the under storage",
        )
        meter.create_observable_counter(
            "fluidfed.data.ufs.errors",
            [lambda _: [Observation(ufs_errors())]],
            description="failed under-storage reads",
        )

    def _tiers(self) -> Any:
        return self.store.snapshot().tiers

    def _tier_hits(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(t.hits, {"fluidfed.tier": t.medium, "fluidfed.source": "local"})
            for t in self._tiers()
        ]

    def _store_misses(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.store.stats.misses, {"fluidfed.source": "local"})]

    def _evictions(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(t.evictions, {"fluidfed.tier": t.medium}) for t in self._tiers()]

    def _used(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(t.used, {"fluidfed.tier": t.medium}) for t in self._tiers()]

    def _capacity(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(t.quota, {"fluidfed.tier": t.medium}) for t in self._tiers()]
