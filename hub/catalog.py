"""The catalog: clusters, datasets, bindings and their status, with a monotonic revision.

The catalog lives in memory and is written through a `Store` first: a change is computed
on copies, committed as one revision, and only then made visible. Every binding change is
also an entry of the watch log, from which agents resume by revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import msgspec

from fluidfed import codec, errors, names
from fluidfed.errors import Problem
from fluidfed.models import (
    AutoscaleDecision,
    Binding,
    BindingStatus,
    BindingView,
    Cluster,
    ClusterRecord,
    ClusterStatus,
    Condition,
    Dataset,
    DatasetRecord,
    DatasetView,
    LoadRequest,
)
from hub import auth, consistency, placement, watchlog
from hub.store import BEAT, REV, Change, Delete, Op, Put, Shared, Snapshot, Store

CLUSTER, DATASET, BINDING, STATUS, TOKEN = "cluster", "dataset", "binding", "status", "token"
DECISIONS = "decisions"
KEEP_DECISIONS = 20
HISTORY_PER_CLUSTER = 4  # watch events kept per registered cluster, at least (see _size_log)
RETRIES = 20  # a change computed again when other replicas keep writing first

_cluster_dec = codec.decoder(ClusterRecord)
_dataset_dec = codec.decoder(DatasetRecord)
_binding_dec = codec.decoder(Binding)
_status_dec = codec.decoder(BindingStatus)
_decisions_dec = codec.decoder(list[AutoscaleDecision])
_beats_dec = codec.decoder(dict[str, float])


def _check_bindings(bindings: Iterable[Binding], path: str) -> None:
    """Refuse bindings a cluster cannot make real: a name that does not fit a label value,
    or dataset:// mounts on a cluster without Fluid. Placement's bindings, before they are
    encoded (checking the ops decoded each binding once more), and what a spec may mount
    checked once per spec and mount mode, not once per cluster."""
    served: set[tuple[int, str]] = set()  # (spec, mode) found fine
    for b in bindings:
        problems = consistency.check_binding_names(b.dataset, [b.cluster], path)
        if (id(b.spec), b.mode) not in served:
            found = consistency.check_served(b.spec, b.cluster, b.mode)
            if not found:
                served.add((id(b.spec), b.mode))
            problems += found
        errors.BadRequest.unless_valid(problems)


def _referenced_first(datasets: Mapping[str, DatasetRecord]) -> list[DatasetRecord]:
    """The datasets, each after the dataset it mounts through dataset://, if any (one at
    most, and no cycle: `consistency.check_references`); chains of any length."""
    out: list[DatasetRecord] = []
    done: set[str] = set()
    for name in sorted(datasets):
        chain: list[str] = []
        at: str | None = name
        while at is not None and at not in done and at in datasets and at not in chain:
            chain.append(at)
            refs = consistency.dataset_references(datasets[at].spec)
            at = refs[0][1] if refs else None
        for n in reversed(chain):
            done.add(n)
            out.append(datasets[n])
    return out


class Catalog:
    def __init__(
        self,
        store: Store,
        *,
        history: int = 10000,
        history_bytes: int = 64 * 2**20,
        lease_duration: float = 40.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.store_problem = ""  # the store's last write failed: why
        self.history = history
        self.history_bytes = history_bytes  # the watch log's size bound, beside its count
        self.lease_duration = lease_duration
        self.clock = clock
        self.revision = 0
        self.clusters: dict[str, ClusterRecord] = {}
        self.datasets: dict[str, DatasetRecord] = {}
        self.bindings: dict[str, Binding] = {}
        # the same bindings by dataset, then cluster: an apply looks at its dataset's own
        # (walking every binding of every dataset was a dataset count x N per apply)
        self._placed: dict[str, dict[str, Binding]] = {}
        # and by cluster, then name: an agent's list (every agent relists after a hub's
        # restart) walked every binding of every cluster, N agents x N clusters' bindings
        self._of_cluster: dict[str, dict[str, Binding]] = {}
        self.statuses: dict[str, BindingStatus] = {}
        self.token_hashes: dict[str, str] = {}
        self.decisions: dict[str, list[AutoscaleDecision]] = {}
        # the one decoded spec the bindings of each dataset share (see _share_spec)
        self._specs: dict[str, Dataset] = {}
        self.heartbeats: dict[str, float] = {}  # every replica's, on a shared store
        self.local_beats: dict[str, float] = {}  # those that reached this replica
        self.base = 0  # the revision of the last catalog change (the store's may be newer)
        # a binding's status as it reaches the catalog (from any replica): the autoscaler
        self.on_status: Callable[[str, BindingStatus], None] | None = None
        self.log = watchlog.WatchLog(history, history_bytes)
        self._size_log()
        # a shared store's history before this replica loaded, replayed into the log from
        # `follow_from` up to `replayed_to`; watches wait for `replayed`
        self.follow_from = self.replayed_to = 0
        self.replayed = asyncio.Event()
        self._store_compacted = 0
        self._write = asyncio.Lock()
        self._tick = asyncio.Event()
        self._since_compaction = 0
        self._compaction: asyncio.Task[None] | None = None
        # sync()'s reads of the store's revision, shared by callers (unknown tokens: any
        # client can send them, and each would otherwise cost the store a round trip)
        self._revision_reads: _Rounds[int] | None = None

    # --- start-up and following a shared store -------------------------------------------

    async def load(self) -> None:
        self._reset(await self.store.load())

    def _reset(self, snap: Snapshot) -> None:
        """The catalog as the store has it; watches from before `snap.compacted` are Gone."""
        self.revision, self.base = snap.revision, snap.base
        self.follow_from, self.replayed_to = snap.follow_from, snap.revision
        self.replayed = asyncio.Event()
        if snap.follow_from >= snap.revision:
            self.replayed.set()
        self.log = watchlog.WatchLog(self.history, self.history_bytes)
        self._size_log()
        self.log.compacted = snap.compacted
        for table in (self.clusters, self.datasets, self.bindings, self.statuses):
            table.clear()
        self.token_hashes.clear()
        self.decisions.clear()
        self._specs.clear()
        self._placed.clear()
        self._of_cluster.clear()
        for (kind, name), value in snap.records.items():
            self._apply(snap.revisions.get((kind, name), 0), Put(kind, name, value), log=False)
        for ev in snap.events:
            if ev.kind == BINDING and ev.value is not None:
                b = _binding_dec.decode(ev.value)
                self.log.append(ev.revision, "ADDED" if ev.type == "put" else "DELETED", b)
        now = self.clock()
        # the hub was away, not the agents: give every cluster a fresh lease to prove itself
        self.heartbeats = {name: now for name in self.clusters}
        for ev in snap.events:
            if ev.kind == BEAT and ev.value is not None:
                self._merge_beats(ev.value)
        self._publish()

    async def follow(self) -> None:
        """Keep the catalog current with what other replicas write to a shared store."""
        store = self.store
        assert isinstance(store, Shared)
        start = self.revision if self.replayed.is_set() else self.follow_from
        async for change in store.follow(start):
            async with self._write:
                if change.reset is not None:
                    self._reset(change.reset)
                    continue
                if not self.replayed.is_set():
                    if change.revision <= self.replayed_to:
                        self._replay(change)
                        continue
                    self.replayed.set()
                own = change.revision <= self.base  # applied when this replica committed it
                for ev in change.events:
                    if ev.kind == BEAT and ev.value is not None:
                        self._merge_beats(ev.value)
                    elif own:
                        continue
                    elif ev.kind == REV:
                        self.base = change.revision  # the next change is computed on this one
                    elif ev.type == "put" and ev.value is not None:
                        self._apply(change.revision, Put(ev.kind, ev.name, ev.value))
                    else:
                        self._apply(change.revision, Delete(ev.kind, ev.name, ev.value))
                if change.revision > self.revision:
                    self.revision = change.revision
                    self._publish()

    def _replay(self, change: Change) -> None:
        """The history before this replica loaded the catalog: into the watch log only."""
        for ev in change.events:
            if ev.kind == BINDING and ev.value is not None:
                b = _binding_dec.decode(ev.value)
                etype = "ADDED" if ev.type == "put" else "DELETED"
                self.log.append(change.revision, etype, _at(b, change.revision))
        self.follow_from = change.revision
        if change.revision == self.replayed_to:
            self.replayed.set()

    async def reach(self, revision: int, within: float) -> bool:
        """Wait (at most `within` seconds) until this replica has seen `revision`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self.revision < revision:
                    await self.tick.wait()
        return self.revision >= revision

    async def sync(self, within: float = 5.0) -> bool:
        """On a shared store, see everything committed before now (what another replica
        acknowledged, say); whether anything could be new."""
        store = self.store
        if not isinstance(store, Shared):
            return False
        if self._revision_reads is None:
            self._revision_reads = _Rounds(store.current_revision)
        return await self.reach(await self._revision_reads.result(), within)

    def _merge_beats(self, raw: bytes) -> None:
        """Heartbeats another replica received: the newest of each cluster counts."""
        for name, at in _beats_dec.decode(raw).items():
            if at > self.heartbeats.get(name, 0):
                self.heartbeats[name] = at

    def beats_to_publish(self) -> dict[str, float]:
        """The heartbeats this replica received within a lease, for the leader to see."""
        now = self.clock()
        self.local_beats = {
            n: t for n, t in self.local_beats.items() if now - t <= self.lease_duration
        }
        return dict(self.local_beats)

    # --- reading -------------------------------------------------------------------------

    @property
    def tick(self) -> asyncio.Event:
        """Set at the next commit (or `wake`); take it before reading to never miss a
        change."""
        return self._tick

    def wake(self) -> None:
        """Set the tick without a change: what waits on it looks again (the watches'
        bookmark clock, and shutdown, wake the watch streams so)."""
        self._publish()

    def bindings_of(self, cluster: str) -> list[Binding]:
        return sorted(self._of_cluster.get(cluster, {}).values(), key=lambda b: b.name)

    @property
    def compacted(self) -> int:
        return self.log.compacted

    def events_since(self, revision: int, cluster: str | None) -> list[watchlog.LogEntry]:
        return self.log.since(revision, cluster, self.revision)

    def dataset_view(self, name: str) -> DatasetView:
        rec = self.datasets.get(name)
        if rec is None:
            raise errors.NotFound(f"dataset {name} not found")
        views = [
            BindingView(
                binding=b,
                status=self.statuses.get(b.name),
                decisions=self.decisions.get(b.name, []),
            )
            for b in sorted(self._placed.get(name, {}).values(), key=lambda b: b.name)
        ]
        phases = [
            "Deleting" if v.binding.deleting else v.status.phase if v.status else "Pending"
            for v in views
        ]
        bound = phases.count("Bound")
        if not views:
            phase = "Unplaced"
        elif bound == len(phases):
            phase = "Bound"
        elif bound:
            phase = f"PartiallyBound ({bound}/{len(phases)})"
        elif any(p in ("Failed", "Degraded") for p in phases):
            phase = "Degraded"
        else:
            phase = "Pending"
        return DatasetView(
            spec=rec.spec,
            generation=rec.generation,
            revision=rec.revision,
            bindings=views,
            phase=phase,
            cache_used=sum(v.status.cache_used for v in views if v.status),
            cache_capacity=sum(v.status.cache_capacity for v in views if v.status),
            ufs_total=max((v.status.ufs_total for v in views if v.status), default=0),
            created=rec.created,
        )

    def cluster_of_token(self, token: str) -> str | None:
        name = auth.cluster_of(token)
        if name is None:
            return None
        stored = self.token_hashes.get(name)
        if stored is None or not auth.same_token(token, stored):
            return None
        return name

    # --- writing -------------------------------------------------------------------------
    #
    # Every change is computed by a pure function of the catalog (`compute(rev)` -> ops),
    # committed only if the catalog is still at `self.base`, and computed again after
    # catching up when another replica wrote first (`_transact`).

    async def register_cluster(
        self, spec: Cluster, *, rotate_token: bool = False
    ) -> tuple[ClusterRecord, str | None]:
        """Create or update a cluster; a token is returned when one is created or rotated."""
        token: str | None = None

        def compute(rev: int) -> list[Op]:
            nonlocal token
            old = self.clusters.get(spec.name)
            token = None
            if old is not None and old.spec == spec and not rotate_token:
                return []
            status = old.status if old else ClusterStatus()
            rec = ClusterRecord(spec=spec, status=status, revision=rev)
            ops: list[Op] = []
            if old is None or rotate_token:
                token = auth.new_cluster_token(spec.name)
                ops.append(Put(TOKEN, spec.name, auth.token_hash(token).encode()))
            ops.append(Put(CLUSTER, spec.name, codec.encode(rec)))
            placed = self._replace_all(rev, {**self.clusters, spec.name: rec}, "cluster.name")
            return ops + placed

        await self._transact(compute)
        self.heartbeats.setdefault(spec.name, self.clock())
        return self.clusters[spec.name], token

    async def relabel_cluster(
        self, name: str, set_labels: dict[str, str], remove: Iterable[str]
    ) -> ClusterRecord:
        old = self._cluster(name)
        labels = {k: v for k, v in old.spec.labels.items() if k not in set(remove)}
        labels.update(set_labels)
        spec = msgspec.structs.replace(old.spec, labels=labels)
        rec, _ = await self.register_cluster(spec)
        return rec

    async def delete_cluster(self, name: str) -> None:
        def compute(rev: int) -> list[Op]:
            self._cluster(name)
            ops: list[Op] = [Delete(CLUSTER, name), Delete(TOKEN, name)]
            for b in self.bindings_of(name):
                ops += self._delete_binding_ops(b)
            return ops

        await self._transact(compute)
        self.heartbeats.pop(name, None)

    async def apply_dataset(self, spec: Dataset) -> tuple[DatasetRecord, bool]:
        """Create or update; returns the record and whether anything changed."""

        def compute(rev: int) -> list[Op]:
            old = self.datasets.get(spec.name)
            if old is not None and old.spec == spec:
                return []
            rec = DatasetRecord(
                spec=spec,
                generation=(old.generation + 1) if old else 1,
                revision=rev,
                created=old.created if old else self.clock(),
            )
            known = {n: r.spec for n, r in self.datasets.items() if n != spec.name}
            errors.BadRequest.unless_valid(consistency.check_references(spec, known, "dataset"))
            homes = {**{n: d.namespace for n, d in known.items()}, spec.name: spec.namespace}
            hosts: dict[str, set[str]] = {}
            placed = self._replace(
                rev, rec, self.clusters, "dataset.name", homes=homes, hosts=hosts
            )
            # the datasets that mount this one follow it, where it moved (a new one is
            # mounted by none yet)
            was = {c for c, b in self._placed.get(spec.name, {}).items() if not b.deleting}
            if old is not None and (
                old.spec.namespace != spec.namespace or was != hosts[spec.name]
            ):
                placed += self._follow(rev, spec.name, known, homes, hosts)
            return [Put(DATASET, spec.name, codec.encode(rec)), *placed]

        changed = await self._transact(compute)
        return self.datasets[spec.name], changed

    async def request_load(
        self,
        name: str,
        clusters: list[str],
        path: str,
        *,
        schedule: str = "",
        on_change: bool = False,
        key: str = "",
    ) -> list[Binding]:
        """Ask the agents of `clusters` (all the dataset's clusters if empty) to warm their
        caches with `path` of the dataset; the bindings that carry the request. An ask
        with the `key` (idempotency key) of the request these bindings carry is that
        request again: nothing changes (on any replica: the key is in the store)."""
        chosen: list[str] = []

        def compute(rev: int) -> list[Op]:
            nonlocal chosen
            if name not in self.datasets:
                raise errors.NotFound(f"dataset {name} not found")
            live = {c: b for c, b in self._placed.get(name, {}).items() if not b.deleting}
            unknown = sorted(set(clusters) - set(live))
            if unknown:
                raise errors.BadRequest(
                    f"dataset {name} is not placed on {', '.join(unknown)}",
                    [
                        Problem(
                            f"placed on: {', '.join(sorted(live)) or 'no cluster yet'}",
                            path="load.clusters",
                        )
                    ],
                )
            picked = [live[c] for c in sorted(clusters or live)]
            if not picked:
                raise errors.Conflict(f"dataset {name} is not placed on any cluster yet")
            chosen = [b.name for b in picked]
            if key and all(b.load is not None and b.load.key == key for b in picked):
                asked = picked[0].load
                assert asked is not None
                if (asked.path, asked.schedule, asked.on_change) != (
                    path.strip("/"),
                    schedule,
                    on_change,
                ):  # (one key, another ask: a client's bug, not a retry)
                    raise errors.Conflict(
                        f"{names.IDEMPOTENCY_KEY} {key!r} was sent with another warm-up of "
                        f"{name} (path {asked.path or '/'!r}, schedule {asked.schedule!r}): "
                        "a retry sends the same request; a new request takes a new key"
                    )
                return []  # asked already (sent again after a lost answer)
            req = LoadRequest(
                key=key,
                id=rev,
                path=path.strip("/"),
                requested_at=time.time(),
                schedule=schedule,
                on_change=on_change,
            )
            out = [msgspec.structs.replace(b, load=req, revision=rev) for b in picked]
            return [Put(BINDING, b.name, codec.encode(b)) for b in out]

        await self._transact(compute)
        return [self.bindings[n] for n in chosen if n in self.bindings]

    async def delete_dataset(self, name: str) -> None:
        def compute(rev: int) -> list[Op]:
            if name not in self.datasets:
                raise errors.NotFound(f"dataset {name} not found")
            others = {n: r.spec for n, r in self.datasets.items()}
            referrers = consistency.referrers(name, others)
            if referrers:
                raise errors.Conflict(
                    f"dataset {name} is mounted by {', '.join(referrers)} (dataset://{name}): "
                    "delete or change those first"
                )
            ops: list[Op] = [Delete(DATASET, name)]
            for b in self._placed.get(name, {}).values():
                ops += self._retire_ops(rev, b)
            return ops

        await self._transact(compute)

    async def finalize_binding(self, name: str) -> None:
        """The agent has removed what a retired binding made: forget the binding."""

        def compute(rev: int) -> list[Op]:
            b = self.bindings.get(name)
            if b is None:
                raise errors.NotFound(f"binding {name} not found")
            if not b.deleting:
                raise errors.Conflict(
                    f"binding {name} is still wanted: only a retired binding is finalized"
                )
            return self._delete_binding_ops(b)

        await self._transact(compute)

    async def report_status(self, binding: str, status: BindingStatus) -> None:
        def compute(rev: int) -> list[Op]:
            if binding not in self.bindings:
                raise errors.NotFound(f"binding {binding} not found")
            return [Put(STATUS, binding, codec.encode(status))]

        await self._transact(compute)

    async def set_replicas(self, binding: str, replicas: int) -> Binding:
        def compute(rev: int) -> list[Op]:
            b = self.bindings.get(binding)
            if b is None:
                raise errors.NotFound(f"binding {binding} not found")
            if b.replicas == replicas:
                return []
            nb = msgspec.structs.replace(b, replicas=replicas, revision=rev)
            return [Put(BINDING, b.name, codec.encode(nb))]

        await self._transact(compute)
        return self.bindings[binding]

    async def scale(self, binding: str, decision: AutoscaleDecision) -> None:
        """Write the autoscaler's replicas into a binding, with the decision on record; only
        while this replica leads (a shared store refuses it otherwise: NotLeader)."""

        def compute(rev: int) -> list[Op]:
            b = self.bindings.get(binding)
            if b is None or b.deleting or b.replicas != decision.current:
                # gone, or the replicas moved since the decision (it was committed already,
                # before a retry, or another change came first): decide again, never twice
                return []
            kept = [*self.decisions.get(binding, []), decision][-KEEP_DECISIONS:]
            ops: list[Op] = [Put(DECISIONS, binding, codec.encode(kept))]
            if b.replicas != decision.replicas:
                nb = msgspec.structs.replace(b, replicas=decision.replicas, revision=rev)
                ops.append(Put(BINDING, b.name, codec.encode(nb)))
            return ops

        await self._transact(compute, fence=True)

    async def heartbeat(self, cluster: str) -> ClusterRecord:
        rec = self._cluster(cluster)
        now = self.clock()
        self.heartbeats[cluster] = self.local_beats[cluster] = now
        if not rec.ready:
            rec = await self._set_condition(cluster, "Ready", "agent heartbeat")
        return rec

    async def expire_leases(self) -> list[str]:
        """Mark clusters whose lease ran out Offline; they keep their bindings. Only while
        this replica leads (a shared store refuses it otherwise: NotLeader)."""
        now = self.clock()
        expired = [
            name
            for name, rec in self.clusters.items()
            if rec.ready and now - self.heartbeats.get(name, 0) > self.lease_duration
        ]
        for name in expired:
            if name in self.clusters:  # deleted meanwhile: nothing to mark
                await self._set_condition(
                    name, "Offline", "lease expired: no heartbeat", fence=True
                )
        return expired

    async def _set_condition(
        self, name: str, typ: str, reason: str, *, fence: bool = False
    ) -> ClusterRecord:
        def compute(rev: int) -> list[Op]:
            old = self._cluster(name)
            fresh = self.clock() - self.heartbeats.get(name, 0) <= self.lease_duration
            if old.ready == (typ == "Ready") or (fence and fresh):
                return []  # decided on a catalog since changed: nothing to do any more
            cond = Condition(type=typ, since=self.clock(), reason=reason)  # type: ignore[arg-type]
            rec = ClusterRecord(
                spec=old.spec,
                status=ClusterStatus(condition=cond, last_heartbeat=self.heartbeats.get(name, 0)),
                revision=rev,
            )
            ops: list[Op] = [Put(CLUSTER, name, codec.encode(rec))]
            return ops + self._replace_all(rev, {**self.clusters, name: rec})

        await self._transact(compute, fence=fence)
        return self._cluster(name)

    # --- internals -----------------------------------------------------------------------

    def _cluster(self, name: str) -> ClusterRecord:
        rec = self.clusters.get(name)
        if rec is None:
            raise errors.NotFound(f"cluster {name} not found")
        return rec

    def _follow(
        self,
        rev: int,
        name: str,
        known: Mapping[str, Dataset],
        homes: dict[str, str],
        hosts: dict[str, set[str]],
    ) -> list[Op]:
        """The datasets that mount `name` follow it to its namespace and to where it is
        placed now (`hosts`), checked as their own applies are; one that a cluster cannot
        serve refuses the change, naming it."""
        ops: list[Op] = []
        for n in consistency.mounted_by(name, known):
            try:
                ops += self._replace(
                    rev,
                    self.datasets[n],
                    self.clusters,
                    "dataset.placement",
                    homes=homes,
                    hosts=hosts,
                )
            except errors.BadRequest as err:
                raise errors.BadRequest(
                    f"dataset {n} mounts {name} (dataset://) and would follow it: {err.reason}",
                    [Problem(f"{n}: {p.message}", path="dataset.placement") for p in err.problems],
                ) from None
        return ops

    def _replace_all(
        self, rev: int, clusters: dict[str, ClusterRecord], check: str = ""
    ) -> list[Op]:
        ops: list[Op] = []
        hosts: dict[str, set[str]] = {}
        homes = {n: r.spec.namespace for n, r in self.datasets.items()}
        # datasets mounted through dataset:// first: their referrers follow where they go
        for rec in _referenced_first(self.datasets):
            ops += self._replace(rev, rec, clusters, check, homes=homes, hosts=hosts)
        return ops

    def _replace(
        self,
        rev: int,
        rec: DatasetRecord,
        clusters: dict[str, ClusterRecord],
        check: str = "",
        *,
        homes: dict[str, str] | None = None,
        hosts: dict[str, set[str]] | None = None,
    ) -> list[Op]:
        """The ops that turn the dataset's current bindings into placement's answer; with
        `check` (the field path to blame), the new bindings checked first (_check_bindings).
        A dataset with dataset:// mounts is placed only where the datasets it mounts are
        (Fluid's reference dataset reads one in its own cluster): `hosts`, the clusters of
        datasets placed anew in this change (else their bindings now), gets this one's.
        `homes`: each dataset's namespace, where this change moves one."""
        current = self._placed.get(rec.spec.name, {})
        live = {c: b for c, b in current.items() if not b.deleting}
        if homes is None:
            homes = {n: r.spec.namespace for n, r in self.datasets.items()}
        hosts = {} if hosts is None else hosts
        spec = consistency.fluid_references(rec.spec, homes)
        for _, ref in consistency.dataset_references(rec.spec):
            there = hosts.get(ref)
            if there is None:
                there = {c for c, b in self._placed.get(ref, {}).items() if not b.deleting}
            # (unchecked, as a cluster's condition changes: never where no Fluid serves it)
            clusters = {
                n: c
                for n, c in clusters.items()
                if n in there and (check or c.spec.mount_mode() == "csi")
            }
        wanted = placement.place(spec, rec.generation, clusters.values(), live)
        hosts[rec.spec.name] = set(wanted)
        changed = [
            (b, old)
            for cluster, b in wanted.items()
            if (old := current.get(cluster)) is None or not _same_binding(old, b)
        ]
        if check:
            _check_bindings((b for b, _ in changed), check)
        ops: list[Op] = []
        for b, old in changed:
            # a warm-up asked for stays asked for when the spec changes
            nb = msgspec.structs.replace(b, revision=rev, load=old.load if old else None)
            ops.append(Put(BINDING, b.name, codec.encode(nb)))
        for cluster, old in current.items():
            if cluster not in wanted:
                ops += self._retire_ops(rev, old)
        return ops

    def _retire_ops(self, rev: int, b: Binding) -> list[Op]:
        """Mark a binding for deletion; its agent cleans up, then finalizes it."""
        if b.deleting:
            return []
        retired = msgspec.structs.replace(b, deleting=True, revision=rev)
        return [Put(BINDING, b.name, codec.encode(retired))]

    def _delete_binding_ops(self, b: Binding) -> list[Op]:
        ops: list[Op] = [Delete(BINDING, b.name, last=codec.encode(b))]
        if b.name in self.statuses:
            ops.append(Delete(STATUS, b.name))
        if b.name in self.decisions:
            ops.append(Delete(DECISIONS, b.name))
        return ops

    async def _transact(self, compute: Callable[[int], list[Op]], *, fence: bool = False) -> bool:
        """Compute a change on the catalog as it is and commit it; again, once caught up,
        when another replica changed the catalog first. Whether anything changed."""
        for _ in range(RETRIES):
            async with self._write:
                ops = compute(self.revision + 1)
                if not ops:
                    return False
                try:
                    await self._commit(ops, fence=fence)
                    return True
                except errors.StaleRevision as stale:
                    behind = stale.current
            # another replica wrote first: see its change, then decide again
            if not await self.reach(behind, within=10.0):
                raise errors.StoreError(
                    f"catalog store: this hub replica is behind the store (at revision "
                    f"{self.revision}, the store at {behind}): check its connection to the store"
                )
        raise errors.StoreError(
            f"catalog store: the change lost the race to other replicas {RETRIES} times; retry"
        )

    async def _commit(self, ops: list[Op], *, fence: bool = False) -> None:
        try:
            rev = await self.store.commit(self.base, ops, fence=fence)
        except errors.StoreError as err:
            self.store_problem = err.reason  # /readyz: not ready until a write succeeds
            raise
        self.store_problem = ""
        # durable now: make it visible
        self.revision = self.base = rev
        for op in ops:
            self._apply(rev, op)
        self._since_compaction += len(ops)
        log = self.log
        due = self._since_compaction > log.count // 10 or log.compacted > self._store_compacted
        if due and (self._compaction is None or self._compaction.done()):
            self._since_compaction = 0
            # after the commit is visible and acknowledged, not before: its round trips (on
            # etcd) or its DELETE (SQLite) were on every apply's path at thousands of
            # clusters (bench/hub_fanout.py: README, "Measured design decisions")
            self._compaction = asyncio.get_running_loop().create_task(self._compact())
        self._publish()

    async def _compact(self) -> None:
        """The store forgets at least what the log forgot (the log may trim by bytes). The
        writes are durable already: a failing compaction is tried again, never an error."""
        log = self.log
        try:
            self._store_compacted = await self.store.compact(log.count, log.compacted)
            if not isinstance(self.store, Shared):  # etcd's history is not this log's
                log.compacted = max(log.compacted, self._store_compacted)
        except errors.StoreError as err:
            self.store_problem = err.reason

    async def close(self) -> None:
        """Let a compaction under way finish (before the store closes)."""
        if self._compaction is not None:
            await self._compaction

    def _publish(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    def _size_log(self) -> None:
        """One apply writes an event per cluster it places on: the log keeps at least a few
        applies' worth whatever the fleet's size (at 10,000 clusters a log of 10,000 would
        send every watching agent a 410 at every apply); the byte bound still holds."""
        self.log.count = max(self.history, HISTORY_PER_CLUSTER * len(self.clusters))

    def _share_spec(self, b: Binding) -> Binding:
        """`b` (decoded just now) holding the spec object its dataset's other bindings hold,
        where the specs are equal: a dataset placed on N clusters keeps one decoded spec,
        not N copies. Memory, and the garbage collector: every copy was ~7 more objects
        that each full collection walked again (at 10,000 clusters, a third of the hub's
        CPU per binding; bench/hub_fanout.py)."""
        shared = self._specs.get(b.dataset)
        if shared is None or shared != b.spec:
            self._specs[b.dataset] = b.spec
        else:
            b.spec = shared
        return b

    def _unindex(self, b: Binding) -> None:
        """Take `b` out of the by-dataset and by-cluster indexes of `bindings`."""
        for index, key, name in (
            (self._placed, b.dataset, b.cluster),
            (self._of_cluster, b.cluster, b.name),
        ):
            inner = index.get(key)
            if inner is not None and inner.pop(name, None) is not None and not inner:
                del index[key]

    def _apply(self, rev: int, op: Op, *, log: bool = True) -> None:
        """One op, as of revision `rev` (the records say the revision the store gave)."""
        if isinstance(op, Put):
            if op.kind == CLUSTER:
                c = _cluster_dec.decode(op.value)
                self.clusters[op.name] = _at(c, rev)
                self._size_log()
            elif op.kind == DATASET:
                self.datasets[op.name] = _at(_dataset_dec.decode(op.value), rev)
            elif op.kind == BINDING:
                b = self._share_spec(_at(_binding_dec.decode(op.value), rev))
                before = self.bindings.get(op.name)
                if before is not None:
                    self._unindex(before)
                self.bindings[op.name] = b
                self._placed.setdefault(b.dataset, {})[b.cluster] = b
                self._of_cluster.setdefault(b.cluster, {})[b.name] = b
                etype = "MODIFIED" if before is not None else "ADDED"
                if log:
                    self.log.append(rev, etype, b)
            elif op.kind == STATUS:
                status = self.statuses[op.name] = _status_dec.decode(op.value)
                if log and self.on_status is not None:
                    self.on_status(op.name, status)
            elif op.kind == TOKEN:
                self.token_hashes[op.name] = op.value.decode()
            elif op.kind == DECISIONS:
                self.decisions[op.name] = _decisions_dec.decode(op.value)
            return
        if op.kind == CLUSTER:
            self.clusters.pop(op.name, None)
            self._size_log()
        elif op.kind == DATASET:
            self.datasets.pop(op.name, None)
            self._specs.pop(op.name, None)
        elif op.kind == BINDING:
            gone = self.bindings.pop(op.name, None)
            if gone is not None:
                self._unindex(gone)
                self.log.append(rev, "DELETED", gone)
                if gone.dataset not in self.datasets:  # its dataset's last ones go: forget
                    self._specs.pop(gone.dataset, None)
        elif op.kind == STATUS:
            self.statuses.pop(op.name, None)
        elif op.kind == TOKEN:
            self.token_hashes.pop(op.name, None)
        elif op.kind == DECISIONS:
            self.decisions.pop(op.name, None)


R = TypeVar("R", ClusterRecord, DatasetRecord, Binding)


def _at(rec: R, rev: int) -> R:
    """The record as of the revision the store committed it at (a replica computes a
    change with the revision it expects; the store may have moved on in between)."""
    if rev and rec.revision != rev:
        return msgspec.structs.replace(rec, revision=rev)
    return rec


def _same_binding(a: Binding, b: Binding) -> bool:
    def key(x: Binding) -> tuple[object, ...]:
        return (x.mode, x.replicas, x.generation, x.spec, x.deleting)

    return key(a) == key(b)


T = TypeVar("T")


class _Rounds(Generic[T]):
    """Calls of `read` shared by concurrent callers, at most one in flight: a caller gets
    the result of a call that started after it asked (so nothing committed before it asked
    is missed), and every caller that asked during one call shares the next."""

    def __init__(self, read: Callable[[], Awaitable[T]]) -> None:
        self._read = read
        self._next: asyncio.Future[T] | None = None
        self._running = False
        self._task: asyncio.Task[None] | None = None

    async def result(self) -> T:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            self._next.add_done_callback(_retrieved)
        fut = self._next
        if not self._running:
            self._running = True
            self._task = asyncio.get_running_loop().create_task(self._run())
        return await asyncio.shield(fut)

    async def _run(self) -> None:
        try:
            while self._next is not None:
                fut, self._next = self._next, None
                try:
                    fut.set_result(await self._read())
                except BaseException as err:  # a cancelled read too: no caller waits forever
                    if isinstance(err, asyncio.CancelledError):
                        fut.cancel()
                        raise
                    fut.set_exception(err)
                    if not isinstance(err, Exception):
                        raise
        finally:
            self._running = False


def _retrieved(fut: asyncio.Future[Any]) -> None:
    """Callers that went away leave no 'exception was never retrieved' behind."""
    if not fut.cancelled():
        fut.exception()
