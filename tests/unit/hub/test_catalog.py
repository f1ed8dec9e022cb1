"""Catalog revision logic on a real SQLite file."""

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from devkit import testing
from fluidfed import errors
from fluidfed.errors import APIError, Compacted, StoreError
from fluidfed.models import (
    Capabilities,
    Dataset,
    DatasetRecord,
    LabelSelector,
    Mount,
    Placement,
)
from hub.catalog import Catalog
from hub.store import Op, SQLiteStore


def ds(name: str = "ds", **pl: object) -> Dataset:
    return testing.dataset(name, placement=Placement(**pl))  # type: ignore[arg-type]


async def new_catalog(path: Path, **kw: object) -> Catalog:
    cat = Catalog(SQLiteStore(path / "catalog.db"), **kw)  # type: ignore[arg-type]
    await cat.load()
    return cat


async def test_every_change_bumps_the_revision_once(tmp_path: Path) -> None:
    cat = await new_catalog(tmp_path)
    assert cat.revision == 0
    await cat.register_cluster(testing.cluster("a", labels={"env": "prod"}))
    await cat.register_cluster(testing.cluster("b"))
    assert cat.revision == 2
    _, changed = await cat.apply_dataset(ds(selector=LabelSelector(match_labels={"env": "prod"})))
    assert changed
    assert cat.revision == 3
    assert sorted(cat.bindings) == ["ds.a"]
    assert cat.bindings["ds.a"].revision == 3
    # the same spec again changes nothing and keeps the revision
    _, changed = await cat.apply_dataset(ds(selector=LabelSelector(match_labels={"env": "prod"})))
    assert not changed
    assert cat.revision == 3


async def test_relabel_moves_placement_in_one_revision(tmp_path: Path) -> None:
    cat = await new_catalog(tmp_path)
    await cat.register_cluster(testing.cluster("a", labels={"env": "prod"}))
    await cat.register_cluster(testing.cluster("b"))
    await cat.apply_dataset(ds(selector=LabelSelector(match_labels={"env": "prod"})))
    rev = cat.revision
    await cat.relabel_cluster("b", {"env": "prod"}, [])
    await cat.relabel_cluster("a", {}, ["env"])
    # ds.a is retired, not dropped: its agent removes what it made, then finalizes it
    assert {n: b.deleting for n, b in cat.bindings.items()} == {"ds.a": True, "ds.b": False}
    events = cat.events_since(rev, None)
    assert [(e.revision, e.cluster) for e in events] == [(rev + 1, "b"), (rev + 2, "a")]
    assert b'"MODIFIED"' in events[1].line and b'"deleting":true' in events[1].line
    with pytest.raises(APIError) as info:
        await cat.finalize_binding("ds.b")  # still wanted
    assert info.value.status == 409
    await cat.finalize_binding("ds.a")
    assert sorted(cat.bindings) == ["ds.b"]
    assert [v.binding.name for v in cat.dataset_view("ds").bindings] == ["ds.b"]
    # placed again where it was finalized: a new binding, not the forgotten one
    await cat.relabel_cluster("a", {"env": "prod"}, [])
    assert not cat.bindings["ds.a"].deleting
    await cat.delete_cluster("b")
    assert [v.binding.name for v in cat.dataset_view("ds").bindings] == ["ds.a"]
    assert b'"DELETED"' in cat.events_since(rev + 2, "a")[0].line


async def test_events_since_filters_by_cluster(tmp_path: Path) -> None:
    cat = await new_catalog(tmp_path)
    for n in "abc":
        await cat.register_cluster(testing.cluster(n))
    await cat.apply_dataset(ds("one"))
    await cat.apply_dataset(ds("two", clusters=["b"]))
    assert [e.revision for e in cat.events_since(0, "b")] == [4, 5]
    assert [e.revision for e in cat.events_since(4, "b")] == [5]
    assert cat.events_since(5, "a") == []


async def test_compacted_revision_is_refused(tmp_path: Path) -> None:
    cat = await new_catalog(tmp_path, history=100)
    await cat.register_cluster(testing.cluster("a"))
    for i in range(140):
        await cat.apply_dataset(ds(f"d{i}"))
    assert cat.compacted > 1
    with pytest.raises(Compacted) as info:
        cat.events_since(1, "a")
    assert info.value.status == 410
    assert cat.events_since(cat.compacted, "a")  # the oldest kept still works
    # the store compacts too (after the commits: close waits for it), and a restart keeps
    # the watermark
    await cat.close()
    cat2 = await new_catalog(tmp_path, history=100)
    assert cat2.compacted > 1
    with pytest.raises(Compacted):
        cat2.events_since(1, "a")
    assert cat2.events_since(cat.revision - 3, "a")[-1].revision == cat.revision


class HeldCompaction(SQLiteStore):
    """The SQLite store, its compactions held until `release` (or failing)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = asyncio.Event()
        self.started = 0
        self.fail = False

    async def compact(self, keep_events: int, through: int = 0) -> int:
        self.started += 1
        await self.release.wait()
        if self.fail:
            raise StoreError("catalog store: compaction failed (as the test asks)")
        return await super().compact(keep_events, through)


async def test_commits_are_visible_and_acknowledged_before_the_store_compacts(
    tmp_path: Path,
) -> None:
    store = HeldCompaction(tmp_path / "catalog.db")
    cat = Catalog(store, history=10)
    await cat.load()
    await cat.register_cluster(testing.cluster("a"))
    tick = cat.tick
    for i in range(3):  # past a tenth of the history: a compaction is due at each
        await cat.apply_dataset(ds(f"d{i}"))  # returns with the compaction held
    assert tick.is_set() and len(cat.events_since(0, "a")) == 3
    assert store.started == 1  # one at a time: the others wait for the next commit
    store.release.set()
    await cat.close()  # the compaction finishes before the store may close
    await cat.apply_dataset(ds("d3"))
    await asyncio.sleep(0)  # the compaction's task begins
    assert store.started == 2
    await cat.close()
    assert cat.store_problem == ""
    # a failing compaction is no failed write: the store's problem shows (in /readyz)
    store.fail = True
    await cat.apply_dataset(ds("d4"))
    await cat.close()
    assert store.started == 3 and "compaction failed" in cat.store_problem
    assert cat.bindings["d4.a"].revision == cat.revision
    await store.close()


async def test_the_watch_history_grows_with_the_fleet_so_one_apply_never_overflows_it(
    tmp_path: Path,
) -> None:
    """One apply writes an event per cluster: with more clusters than `history` an agent
    watching from before the apply would get 410 and relist at every apply."""
    cat = await new_catalog(tmp_path, history=100)
    for i in range(60):
        await cat.register_cluster(testing.cluster(f"c{i}"))
    before = cat.revision
    await cat.apply_dataset(ds("one"))
    await cat.apply_dataset(ds("two"))  # 120 events: more than history=100 (and its slack)
    assert cat.log.count == 240
    assert [b"one.c0" in e.line for e in cat.events_since(before, "c0")] == [True, False]


async def test_restart_finds_everything(tmp_path: Path) -> None:
    cat = await new_catalog(tmp_path)
    _, token = await cat.register_cluster(testing.cluster("a", labels={"x": "1"}))
    await cat.apply_dataset(ds())
    await cat.store.close()
    again = await new_catalog(tmp_path)
    assert again.revision == cat.revision
    assert again.clusters == cat.clusters
    assert again.datasets == cat.datasets
    assert again.bindings == cat.bindings
    assert token and again.cluster_of_token(token) == "a"
    assert [e.line for e in again.events_since(0, "a")] == [
        e.line for e in cat.events_since(0, "a")
    ]


class FailingStore(SQLiteStore):
    async def commit(self, base: int, ops: list[Op], *, fence: bool = False) -> int:
        raise OSError("disk full")


async def test_a_failed_commit_changes_nothing_visible(tmp_path: Path) -> None:
    cat = await new_catalog(tmp_path)
    await cat.register_cluster(testing.cluster("a"))
    before = (cat.revision, dict(cat.datasets), dict(cat.bindings))
    cat.store = FailingStore(tmp_path / "catalog.db")
    with pytest.raises(OSError, match="disk full"):
        await cat.apply_dataset(ds())
    assert (cat.revision, dict(cat.datasets), dict(cat.bindings)) == before


async def test_tokens_are_stored_hashed_and_checked(tmp_path: Path) -> None:
    cat = await new_catalog(tmp_path)
    _, token = await cat.register_cluster(testing.cluster("a"))
    assert token is not None
    raw = (tmp_path / "catalog.db").read_bytes()
    assert token.encode() not in raw
    assert cat.cluster_of_token(token) == "a"
    assert cat.cluster_of_token(token[:-1] + ("x" if token[-1] != "x" else "y")) is None
    assert cat.cluster_of_token("ffc.b." + token.split(".")[2]) is None
    # re-registering keeps the token; rotating replaces it
    _, same = await cat.register_cluster(testing.cluster("a", labels={"k": "v"}))
    assert same is None and cat.cluster_of_token(token) == "a"
    _, new = await cat.register_cluster(testing.cluster("a"), rotate_token=True)
    assert new and cat.cluster_of_token(new) == "a" and cat.cluster_of_token(token) is None


async def test_lease_expiry_marks_offline_and_keeps_bindings(tmp_path: Path) -> None:
    now = [1000.0]
    cat = Catalog(SQLiteStore(tmp_path / "c.db"), lease_duration=40, clock=lambda: now[0])
    await cat.load()
    await cat.register_cluster(testing.cluster("edge"))
    await cat.apply_dataset(ds())
    rec = await cat.heartbeat("edge")
    assert rec.ready
    now[0] += 30
    assert await cat.expire_leases() == []
    now[0] += 20
    assert await cat.expire_leases() == ["edge"]
    cond = cat.clusters["edge"].status.condition
    assert cond is not None and cond.type == "Offline"
    assert "ds.edge" in cat.bindings
    rec = await cat.heartbeat("edge")
    assert rec.ready


async def test_delete_dataset_and_cluster(tmp_path: Path) -> None:
    cat = await new_catalog(tmp_path)
    await cat.register_cluster(testing.cluster("a"))
    await cat.register_cluster(testing.cluster("b"))
    await cat.apply_dataset(ds())
    await cat.delete_cluster("b")
    assert sorted(cat.bindings) == ["ds.a"]  # a deleted cluster's bindings go at once
    await cat.delete_dataset("ds")
    assert cat.datasets == {}
    assert cat.bindings["ds.a"].deleting
    # applying it again while the old binding is being retired revives the binding
    await cat.apply_dataset(ds())
    assert not cat.bindings["ds.a"].deleting
    await cat.delete_dataset("ds")
    await cat.finalize_binding("ds.a")
    assert cat.bindings == {}
    with pytest.raises(APIError) as info:
        await cat.delete_dataset("ds")
    assert info.value.status == 404


async def test_generation_counts_spec_changes(tmp_path: Path) -> None:
    cat = await new_catalog(tmp_path)
    await cat.register_cluster(testing.cluster("a"))
    rec, _ = await cat.apply_dataset(ds())
    assert rec.generation == 1
    changed = msgspec.structs.replace(ds(), description="v2")
    rec, _ = await cat.apply_dataset(changed)
    assert rec.generation == 2
    assert cat.bindings["ds.a"].generation == 2


async def test_the_catalog_refuses_what_would_fail_in_a_cluster(tmp_path: Path) -> None:
    cat = await new_catalog(tmp_path)
    fluid = Capabilities(csi=True, fluid=True)  # dataset:// mounts need Fluid
    await cat.register_cluster(testing.cluster("c" * 30, capabilities=fluid))
    # a binding name longer than a label value: refused at apply, nothing stored
    with pytest.raises(APIError) as info:
        await cat.apply_dataset(ds("d" * 40))
    assert info.value.status == 400 and info.value.problems[0].path == "dataset.name"
    assert cat.datasets == {} and cat.bindings == {}
    # ... and a cluster whose name would make one for a dataset already placed
    await cat.apply_dataset(ds("d" * 30))
    with pytest.raises(APIError) as info:
        await cat.register_cluster(testing.cluster("e" * 33, capabilities=fluid))
    assert info.value.problems[0].path == "cluster.name"
    assert "e" * 33 not in cat.clusters

    # dataset:// references: to a missing dataset, in a cycle, and deleting a referenced one
    with pytest.raises(APIError, match="not valid") as info:
        await cat.apply_dataset(Dataset(name="ref", mounts=[Mount(uri="dataset://nope")]))
    assert info.value.problems[0].path == "dataset.mounts[0].uri"
    await cat.apply_dataset(Dataset(name="ref", mounts=[Mount(uri="dataset://" + "d" * 30)]))
    with pytest.raises(APIError) as info:
        await cat.delete_dataset("d" * 30)
    assert info.value.status == 409 and "mounted by ref" in info.value.reason
    with pytest.raises(APIError) as info:
        await cat.apply_dataset(Dataset(name="d" * 30, mounts=[Mount(uri="dataset://ref")]))
    assert "cycle" in info.value.problems[0].message


async def test_the_watch_log_is_bounded_by_bytes_as_well_as_by_count(tmp_path: Path) -> None:
    cat = await new_catalog(tmp_path, history=10000, history_bytes=600_000)
    for i in range(5):
        await cat.register_cluster(testing.cluster(f"c{i}"))
    for gen in range(40):  # a 50 kB spec placed on 5 clusters, applied 40 times
        big = Dataset(
            name="big", description=f"{gen}" + "x" * 50_000, mounts=[Mount(uri="s3://b/p")]
        )
        await cat.apply_dataset(big)
    held = cat.log.bytes
    assert held <= 600_000 * 1.25
    assert cat.compacted > 5  # the old revisions are gone ...
    with pytest.raises(Compacted):
        cat.events_since(1, None)
    assert cat.events_since(cat.revision - 1, None)  # ... the recent ones are kept
    # and the store forgot them too: a restart holds no more than the log did
    await cat.close()
    again = await new_catalog(tmp_path, history=10000, history_bytes=600_000)
    assert again.compacted >= cat.compacted - 1
    assert again.log.bytes <= 600_000 * 1.25


async def test_dataset_references_reach_fluid_as_it_reads_them_and_never_a_sidecar(
    tmp_path: Path,
) -> None:
    cat = await new_catalog(tmp_path)
    await cat.register_cluster(
        testing.cluster("f", capabilities=Capabilities(csi=True, fluid=True))
    )
    await cat.apply_dataset(Dataset(name="base", namespace="data", mounts=[Mount(uri="s3://b/p")]))
    await cat.apply_dataset(Dataset(name="ref", mounts=[Mount(uri="dataset://base")]))
    assert cat.bindings["ref.f"].spec.mounts[0].uri == "dataset://data/base"  # Fluid's form
    assert cat.datasets["ref"].spec.mounts[0].uri == "dataset://base"  # the user's, as given
    # a sidecar cluster has no reader for it: refused, at registration as at apply
    with pytest.raises(APIError) as info:
        await cat.register_cluster(testing.cluster("s"))
    assert "need a cluster with Fluid" in info.value.problems[0].message
    assert "s" not in cat.clusters


async def test_a_reference_is_placed_where_its_dataset_is_and_follows_it(tmp_path: Path) -> None:
    """Fluid's reference dataset reads the dataset it mounts in its own cluster and
    namespace: placed where that one is not, or left behind when it moved, it failed there
    (the hub took both applies)."""
    cat = await new_catalog(tmp_path)
    for name in ("a", "b", "c"):
        await cat.register_cluster(
            testing.cluster(name, capabilities=Capabilities(csi=True, fluid=True))
        )

    def base(namespace: str, *where: str) -> Dataset:
        return Dataset(
            name="base",
            namespace=namespace,
            mounts=[Mount(uri="s3://b/p")],
            placement=Placement(clusters=list(where)),
        )

    def placed(name: str) -> dict[str, str]:
        return {
            b.cluster: b.spec.mounts[0].uri
            for b in cat.bindings.values()
            if b.dataset == name and not b.deleting
        }

    await cat.apply_dataset(base("one", "a", "b"))
    await cat.apply_dataset(Dataset(name="ref", mounts=[Mount(uri="dataset://base")]))
    await cat.apply_dataset(Dataset(name="ref2", mounts=[Mount(uri="dataset://ref")]))
    assert placed("ref") == {"a": "dataset://one/base", "b": "dataset://one/base"}  # not c
    assert set(placed("ref2")) == {"a", "b"}
    # it moves to another namespace: its referrers' mounts follow
    await cat.apply_dataset(base("two", "a", "b"))
    assert placed("ref") == {"a": "dataset://two/base", "b": "dataset://two/base"}
    # it leaves a cluster and comes to another: so do they, down the chain
    await cat.apply_dataset(base("two", "b", "c"))
    assert set(placed("ref")) == {"b", "c"} and set(placed("ref2")) == {"b", "c"}
    assert cat.bindings["ref.a"].deleting and cat.bindings["ref2.a"].deleting
    # a cluster that goes: the same, in the order references run
    await cat.delete_cluster("b")
    assert set(placed("base")) == set(placed("ref")) == set(placed("ref2")) == {"c"}


async def test_a_reference_follows_its_dataset_no_further_than_fluid_serves_it(
    tmp_path: Path,
) -> None:
    """A dataset moved to a cluster without Fluid would take the dataset that mounts it
    there: the move is refused, naming it (the hub wrote a binding it would refuse)."""
    cat = await new_catalog(tmp_path)
    await cat.register_cluster(
        testing.cluster("a", capabilities=Capabilities(csi=True, fluid=True))
    )
    await cat.register_cluster(testing.cluster("b"))  # mounts by sidecar
    base = Dataset(name="base", mounts=[Mount(uri="s3://b/p")], placement=Placement(clusters=["a"]))
    await cat.apply_dataset(base)
    await cat.apply_dataset(Dataset(name="ref", mounts=[Mount(uri="dataset://base")]))
    wider = msgspec.structs.replace(base, placement=Placement(clusters=["a", "b"]))
    with pytest.raises(APIError) as info:
        await cat.apply_dataset(wider)
    assert "dataset ref mounts base (dataset://) and would follow it" in info.value.reason
    assert "need a cluster with Fluid" in info.value.problems[0].message
    assert "ref.b" not in cat.bindings and "base.b" not in cat.bindings


def test_datasets_come_after_the_one_they_mount_in_chains_of_any_length() -> None:
    from hub.catalog import _referenced_first

    names = [f"d{i:04d}" for i in range(3000)]  # d0000 mounts d0001, ... (sorted top-first)
    recs = {
        n: DatasetRecord(
            spec=Dataset(
                name=n,
                mounts=[Mount(uri=f"dataset://{names[i + 1]}" if i + 1 < len(names) else "s3://b")],
            )
        )
        for i, n in enumerate(names)
    }
    order = [r.spec.name for r in _referenced_first(recs)]
    assert order == names[::-1]  # (it recursed once per link: RecursionError at 1,000)


def test_a_restore_keeps_every_catalog_it_replaced_and_reads_any_path(tmp_path: Path) -> None:
    """Two restores within one second overwrote the first kept copy; a '#' or '%' in the
    backup's path cut SQLite's URI short (refused, and an empty file made beside it)."""
    from hub import store

    data = tmp_path / "data"
    data.mkdir()
    target = data / "catalog.db"
    odd = tmp_path / "dir#1" / "backup 50%41.db"
    odd.parent.mkdir()

    async def make(path: Path, name: str) -> None:
        cat = Catalog(SQLiteStore(path))
        await cat.load()
        await cat.register_cluster(testing.cluster(name))
        await cat.close()
        await cat.store.close()  # (as the hub stops: its write-ahead log folded in)

    asyncio.run(make(target, "first"))
    asyncio.run(make(odd, "second"))
    store.backup_file(odd, tmp_path / "copy#2.db")  # (a '#' in the source's path too)
    before = target.read_bytes()
    kept = [store.restore_file(odd, target, "T"), store.restore_file(odd, target, "T")]
    assert kept[0] is not None and kept[1] is not None and kept[0] != kept[1]
    assert kept[0].read_bytes() == before
    assert not (tmp_path / "dir").exists()  # (the path was not cut at its '#')


async def test_an_apply_is_refused_for_the_one_cluster_that_cannot_mount_it(
    tmp_path: Path,
) -> None:
    """What a spec may mount is checked once per mount mode, not per cluster: a Fluid
    cluster passing says nothing of a sidecar one placed beside it."""
    cat = await new_catalog(tmp_path)
    for i in range(3):
        await cat.register_cluster(
            testing.cluster(f"f{i}", capabilities=Capabilities(csi=True, fluid=True))
        )
    await cat.register_cluster(testing.cluster("s"))
    await cat.apply_dataset(Dataset(name="base", mounts=[Mount(uri="s3://b/p")]))
    with pytest.raises(APIError) as info:
        await cat.apply_dataset(Dataset(name="ref", mounts=[Mount(uri="dataset://base")]))
    (problem,) = info.value.problems
    assert "need a cluster with Fluid" in problem.message and "picks s," in problem.message
    assert "ref" not in cat.datasets and not [b for b in cat.bindings if b.startswith("ref.")]
    # placed on the Fluid clusters alone, it is taken
    await cat.apply_dataset(
        Dataset(
            name="ref",
            mounts=[Mount(uri="dataset://base")],
            placement=Placement(clusters=["f0", "f1", "f2"]),
        )
    )
    assert sorted(b for b in cat.bindings if b.startswith("ref.")) == ["ref.f0", "ref.f1", "ref.f2"]


async def test_a_dataset_bound_on_some_clusters_is_partially_bound(tmp_path: Path) -> None:
    cat = await new_catalog(tmp_path, clock=lambda: 1000.0)
    for name in ("a", "b", "c"):
        await cat.register_cluster(testing.cluster(name))
    await cat.apply_dataset(ds())
    assert cat.dataset_view("ds").phase == "Pending" and cat.dataset_view("ds").created == 1000.0
    gib = 2**30
    await cat.report_status("ds.a", testing.binding_status("Bound", ufs_total=3 * gib))
    await cat.report_status("ds.b", testing.binding_status("Bound", cache_used=gib))
    v = cat.dataset_view("ds")
    assert v.phase == "PartiallyBound (2/3)"
    assert (v.ufs_total, v.cache_used) == (3 * gib, gib)
    await cat.report_status("ds.c", testing.binding_status("Bound"))
    assert cat.dataset_view("ds").phase == "Bound"


async def test_a_load_asked_again_with_its_idempotency_key_is_one_load(tmp_path: Path) -> None:
    cat = await new_catalog(tmp_path)
    await cat.register_cluster(testing.cluster("a"))
    await cat.apply_dataset(ds())
    first = await cat.request_load("ds", [], "train", key="k1")
    rev = cat.revision
    again = await cat.request_load("ds", [], "train", key="k1")  # its answer was lost
    assert again == first and cat.revision == rev  # nothing new for the agents
    assert first[0].load is not None and first[0].load.key == "k1"
    other = await cat.request_load("ds", [], "train", key="k2")  # a new ask
    assert cat.revision > rev and other[0].load is not None and other[0].load.id > first[0].load.id
    unkeyed = [await cat.request_load("ds", [], "train") for _ in range(2)]
    assert unkeyed[1][0].load is not None and unkeyed[0][0].load is not None
    assert unkeyed[1][0].load.id > unkeyed[0][0].load.id  # without a key, each is new
    # one key with another ask is a client's bug, not a retry: said, not ignored
    await cat.request_load("ds", [], "train", key="k3")
    rev = cat.revision
    for path, schedule in (("val", ""), ("train", "0 * * * *")):
        with pytest.raises(errors.Conflict, match="was sent with another warm-up"):
            await cat.request_load("ds", [], path, schedule=schedule, key="k3")
    assert cat.revision == rev


async def test_revision_reads_are_shared_yet_none_started_before_its_caller_asked() -> None:
    from hub.catalog import _Rounds

    calls = 0
    release = asyncio.Event()

    async def read() -> int:
        nonlocal calls
        calls += 1
        mine = calls
        await release.wait()
        return mine

    rounds = _Rounds(read)
    first = [asyncio.create_task(rounds.result()) for _ in range(50)]
    await asyncio.sleep(0)  # the first read is in flight
    later = [asyncio.create_task(rounds.result()) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    assert {await t for t in first} == {1}
    # who asked while read 1 was in flight gets read 2, started after they asked
    assert {await t for t in later} == {2}
    assert calls == 2  # 100 callers, 2 reads of the store


async def test_the_bindings_of_a_dataset_share_one_spec_and_keep_their_own_when_it_differs(
    tmp_path: Path,
) -> None:
    cat = await new_catalog(tmp_path)
    for name in ("a", "b", "c"):
        await cat.register_cluster(testing.cluster(name))
    await cat.apply_dataset(ds())
    a, b, c = (cat.bindings[f"ds.{n}"] for n in "abc")
    assert a.spec is b.spec is c.spec  # one object in memory, not one per cluster
    await cat.store.close()
    again = await new_catalog(tmp_path)
    assert again.bindings == cat.bindings
    assert again.bindings["ds.a"].spec is again.bindings["ds.c"].spec
    # placed on a alone: a's binding gets the new spec, b's and c's are retired with the old
    await again.apply_dataset(ds(clusters=["a"]))
    a, b, c = (again.bindings[f"ds.{n}"] for n in "abc")
    assert a.spec.placement.clusters == ["a"]
    assert b.deleting and c.deleting
    assert b.spec.placement.clusters == [] and b.spec is c.spec
    # the dataset and its last bindings gone: the shared spec is forgotten too
    await again.delete_dataset("ds")
    for n in "abc":
        await again.finalize_binding(f"ds.{n}")
    assert again.bindings == {}
    assert "ds" not in again._specs


async def test_a_revision_read_cancelled_under_its_callers_does_not_leave_them_waiting() -> None:
    from hub.catalog import _Rounds

    async def read() -> int:
        await asyncio.Event().wait()  # a call that never answers, until cancelled
        return 0

    rounds = _Rounds(read)
    waiting = asyncio.create_task(rounds.result())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert rounds._task is not None
    rounds._task.cancel()  # as at shutdown: the read under them goes
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 5)


def _scanned(cat: Catalog) -> dict[str, list[str]]:
    """Each cluster's bindings found the slow way, by walking all of them."""
    return {c: sorted(n for n, b in cat.bindings.items() if b.cluster == c) for c in cat.clusters}


def _indexed(cat: Catalog) -> dict[str, list[str]]:
    return {c: [b.name for b in cat.bindings_of(c)] for c in cat.clusters}


async def test_a_clusters_bindings_follow_every_change_and_a_restart(tmp_path: Path) -> None:
    cat = await new_catalog(tmp_path)
    for n in "abc":
        await cat.register_cluster(testing.cluster(n, labels={"env": "prod"} if n != "c" else {}))
    prod = LabelSelector(match_labels={"env": "prod"})
    steps: list[Callable[[], Awaitable[object]]] = [
        lambda: cat.apply_dataset(ds("one")),
        lambda: cat.apply_dataset(ds("two", selector=prod)),
        lambda: cat.relabel_cluster("c", {"env": "prod"}, []),  # two placed on c
        lambda: cat.relabel_cluster("a", {}, ["env"]),  # two.a retiring, still a's
        lambda: cat.finalize_binding("two.a"),
        lambda: cat.delete_dataset("one"),
        lambda: cat.finalize_binding("one.b"),
        lambda: cat.delete_cluster("c"),
    ]
    for step in steps:
        await step()
        assert _indexed(cat) == _scanned(cat)
    assert _indexed(cat) == {"a": ["one.a"], "b": ["two.b"]}
    await cat.store.close()
    again = await new_catalog(tmp_path)
    assert _indexed(again) == _scanned(again) == {"a": ["one.a"], "b": ["two.b"]}
    assert again.bindings_of("gone") == []
