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

from fluidfed import names
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
            names.READ_DURATION, unit="s", description="time to serve a read"
        )

        def from_counts(counts: Counts) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def cb(_: CallbackOptions) -> Iterable[Observation]:
                return [Observation(v, dict(attrs)) for attrs, v in counts().items()]

            return cb

        meter.create_observable_counter(
            names.READ_BYTES,
            [from_counts(read_bytes)],
            unit="By",
            description="bytes served to readers",
        )
        meter.create_observable_counter(
            names.READ_OPERATIONS, [from_counts(reads)], description="reads served"
        )
        meter.create_observable_counter(
            names.CACHE_HITS,
            [self._tier_hits, from_counts(source_hits)],
            description="blocks found in a cache",
        )
        meter.create_observable_counter(
            names.CACHE_MISSES,
            [self._store_misses, from_counts(source_misses)],
            description="blocks not found in a cache",
        )
        meter.create_observable_counter(
            names.CACHE_EVICTIONS, [self._evictions], description="blocks evicted"
        )
        meter.create_observable_gauge(
            names.CACHE_USED, [self._used], unit="By", description="bytes held"
        )
        meter.create_observable_gauge(
            names.CACHE_CAPACITY, [self._capacity], unit="By", description="tier quota"
        )
        meter.create_observable_counter(
            names.UFS_READ_BYTES,
            [lambda _: [Observation(ufs_bytes())]],
            unit="By",
            description="bytes read from the under storage",
        )
        meter.create_observable_counter(
            names.UFS_ERRORS,
            [lambda _: [Observation(ufs_errors())]],
            description="failed under-storage reads",
        )

    def _tiers(self) -> Any:
        return self.store.snapshot().tiers

    def _tier_hits(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(t.hits, {names.ATTR_TIER: t.medium, names.ATTR_SOURCE: "local"})
            for t in self._tiers()
        ]

    def _store_misses(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.store.stats.misses, {names.ATTR_SOURCE: "local"})]

    def _evictions(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(t.evictions, {names.ATTR_TIER: t.medium}) for t in self._tiers()]

    def _used(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(t.used, {names.ATTR_TIER: t.medium}) for t in self._tiers()]

    def _capacity(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(t.quota, {names.ATTR_TIER: t.medium}) for t in self._tiers()]
