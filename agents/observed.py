"""What the cache workers and warm-ups add to a binding's status: the registered workers'
cache use, the latest warm-up's progress and the metric window's figures."""

from __future__ import annotations

import time

from agents import objects, status
from agents.metrics import MetricWindow
from agents.registry import Registry
from agents.store import Store
from fluidfed.models import Binding, BindingStatus, LoadStatus


class Observed:
    def __init__(self, registry: Registry, window: MetricWindow, store: Store) -> None:
        self.registry = registry
        self.window = window
        self.store = store
        self.loads: dict[str, LoadStatus] = {}  # warm-up progress by binding, this process

    def load_of(self, binding: str) -> LoadStatus | None:
        """The latest warm-up known: this process's, else the one in the last status."""
        load = self.loads.get(binding)
        if load is None:
            prev = self.store.state.statuses.get(binding)
            load = prev.load if prev is not None else None
        return load

    def fold(self, b: Binding, st: BindingStatus) -> BindingStatus:
        now = time.time()
        cache = self.registry.cache(b.dataset, now) if objects.runs_workers(b) else None
        figures = self.window.figures(b.dataset, now)
        # without fluidfed's workers, Fluid's DataLoad says how the warm-up goes (st.load)
        load = self.load_of(b.name) if objects.runs_workers(b) else st.load
        prev = self.store.state.statuses.get(b.name)
        measured = prev.ufs_total if prev is not None else 0
        disks = self.registry.disks(b.dataset, now) if objects.runs_workers(b) else None
        return status.with_workers(st, cache, load, figures, measured, disks)
