"""Warm-ups of fluidfed's workers: a repeating one (--schedule, --on-change) never ends by
itself, so a binding that goes ends it."""

import asyncio
from pathlib import Path

import msgspec

from agents.controllers import warmup
from agents.metrics import MetricWindow
from agents.observed import Observed
from agents.registry import Registry
from agents.state import AgentState, StateFile
from agents.store import Store
from fluidfed.models import LoadRequest
from tests.unit.agents.builders import binding


def warmups(tmp_path: Path) -> warmup.WarmUps:
    registry, store = Registry(), Store(StateFile(tmp_path), AgentState(cluster="edge"))
    return warmup.WarmUps(registry, Observed(registry, MetricWindow(), store), store)


async def test_a_deleted_binding_ends_its_repeating_warm_up(tmp_path: Path) -> None:
    loads = warmups(tmp_path)
    b = msgspec.structs.replace(binding(), load=LoadRequest(id=7, on_change=True))
    loads.maybe_start(b)
    task = loads._tasks[b.name]
    await asyncio.sleep(0)  # it runs: waiting for workers (none registered here)
    assert not task.done()
    loads.maybe_start(msgspec.structs.replace(b, deleting=True))
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert b.name not in loads.observed.loads
    loads.maybe_start(b)  # asked again later (the binding back): it starts afresh
    again = loads._tasks[b.name]
    assert again is not task and not again.done()
    loads.stop(b.name)  # as the reconciler does for a binding gone from the hub
    await asyncio.gather(again, return_exceptions=True)
    assert again.cancelled()
