"""The autoscaler's loop around the pure decision, on a real SQLite catalog and a clock the
test moves: stale metrics decide nothing, deleting bindings are left alone, old samples and
bindings that are gone are forgotten."""

from pathlib import Path

from devkit import testing
from fluidfed.models import (
    AutoscalePolicy,
    AutoscaleTarget,
    BindingStatus,
    CacheSpec,
    Figures,
)
from fluidfed.units import Duration
from hub.autoscaler import Autoscaler
from hub.catalog import Catalog
from hub.store import SQLiteStore

POLICY = AutoscalePolicy(
    targets=[AutoscaleTarget(metric="cache_used_ratio", target=0.5)],
    min_replicas=1,
    max_replicas=5,
    max_step=1,
    scale_up_window=Duration(0.0),
    scale_down_window=Duration(0.0),
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def setup(tmp_path: Path) -> tuple[Catalog, Autoscaler, Clock]:
    cat = Catalog(SQLiteStore(tmp_path / "catalog.db"))
    await cat.load()
    await cat.register_cluster(testing.cluster("c"))
    await cat.apply_dataset(testing.dataset("hot", cache=CacheSpec(replicas=4), autoscale=POLICY))
    clock = Clock()
    return cat, Autoscaler(cat, stale_after=2.0, clock=clock), clock


def low() -> BindingStatus:
    return BindingStatus(phase="Bound", metrics=Figures(cache_used_ratio=0.1))


async def test_a_fresh_sample_decides_and_a_stale_one_does_not(tmp_path: Path) -> None:
    cat, scaler, clock = await setup(tmp_path)
    scaler.observe("hot.c", low())
    clock.now += 3  # past stale_after
    assert await scaler.tick() == []
    assert cat.bindings["hot.c"].replicas == 4
    scaler.observe("hot.c", low())
    clock.now += 1
    (d,) = await scaler.tick()
    assert (d.current, d.replicas) == (4, 3)
    assert cat.bindings["hot.c"].replicas == 3


async def test_a_binding_being_deleted_is_not_scaled(tmp_path: Path) -> None:
    cat, scaler, clock = await setup(tmp_path)
    await cat.delete_dataset("hot")
    assert cat.bindings["hot.c"].deleting
    scaler.observe("hot.c", low())
    clock.now += 1
    assert await scaler.tick() == []
    assert cat.bindings["hot.c"].replicas == 4


async def test_old_samples_and_bindings_that_are_gone_are_forgotten(tmp_path: Path) -> None:
    cat, scaler, clock = await setup(tmp_path)
    scaler.observe("hot.c", BindingStatus(phase="Bound", metrics=Figures(cache_used_ratio=0.5)))
    await scaler.tick()
    assert len(scaler.windows["hot.c"]) == 1 and scaler.recommendations["hot.c"]
    clock.now += 601 * 1.1  # past the horizon: the longest window the policy looks at
    await scaler.tick()
    assert len(scaler.windows["hot.c"]) == 0
    scaler.observe("hot.c", low())
    await cat.delete_dataset("hot")
    await cat.finalize_binding("hot.c")
    await scaler.tick()
    assert "hot.c" not in scaler.windows and "hot.c" not in scaler.recommendations
