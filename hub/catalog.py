"""The catalog: clusters, datasets, bindings and their status, with a monotonic revision.

The catalog lives in memory and is written through a `Store` first: a change is computed
on copies, committed as one revision, and only then made visible. Every binding change is
also an entry of the watch log, from which agents resume by revision.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import msgspec

from fluidfed import codec, errors
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
from hub.store import Delete, Op, Put, Store

CLUSTER, DATASET, BINDING, STATUS, TOKEN = "cluster", "dataset", "binding", "status", "token"
DECISIONS = "decisions"
KEEP_DECISIONS = 20

_cluster_dec = codec.decoder(ClusterRecord)
_dataset_dec = codec.decoder(DatasetRecord)
_binding_dec = codec.decoder(Binding)
_status_dec = codec.decoder(BindingStatus)
_decisions_dec = codec.decoder(list[AutoscaleDecision])


def _check_binding_names(ops: list[Op], path: str) -> None:
    """Refuse ops that would write a binding a cluster cannot make real: a name that does
    not fit a label value, or dataset:// mounts on a cluster without Fluid."""
    for op in ops:
        if isinstance(op, Put) and op.kind == BINDING:
            dataset, _, cluster = op.name.partition(".")
            problems = consistency.check_binding_names(dataset, [cluster], path)
            b = _binding_dec.decode(op.value)
            problems += consistency.check_served(b.spec, b.cluster, b.mode)
            errors.BadRequest.unless_valid(problems)


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
        self.statuses: dict[str, BindingStatus] = {}
        self.token_hashes: dict[str, str] = {}
        self.decisions: dict[str, list[AutoscaleDecision]] = {}
        self.heartbeats: dict[str, float] = {}
        self.log = watchlog.WatchLog(history, history_bytes)
        self._store_compacted = 0
        self._write = asyncio.Lock()
        self._tick = asyncio.Event()
        self._since_compaction = 0

    # --- start-up ------------------------------------------------------------------------

    async def load(self) -> None:
        snap = await self.store.load()
        self.revision, self.log.compacted = snap.revision, snap.compacted
        for (kind, name), value in snap.records.items():
            if kind == CLUSTER:
                self.clusters[name] = _cluster_dec.decode(value)
            elif kind == DATASET:
                self.datasets[name] = _dataset_dec.decode(value)
            elif kind == BINDING:
                self.bindings[name] = _binding_dec.decode(value)
            elif kind == STATUS:
                self.statuses[name] = _status_dec.decode(value)
            elif kind == TOKEN:
                self.token_hashes[name] = value.decode()
            elif kind == DECISIONS:
                self.decisions[name] = _decisions_dec.decode(value)
        for ev in snap.events:
            if ev.kind == BINDING and ev.value is not None:
                b = _binding_dec.decode(ev.value)
                self.log.append(ev.revision, "ADDED" if ev.type == "put" else "DELETED", b)
        now = self.clock()
        # the hub was away, not the agents: give every cluster a fresh lease to prove itself
        self.heartbeats = {name: now for name in self.clusters}

    # --- reading -------------------------------------------------------------------------

    @property
    def tick(self) -> asyncio.Event:
        """Set at the next commit; take it before reading to never miss a change."""
        return self._tick

    def bindings_of(self, cluster: str) -> list[Binding]:
        return sorted(
            (b for b in self.bindings.values() if b.cluster == cluster), key=lambda b: b.name
        )

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
            for b in sorted(self.bindings.values(), key=lambda b: b.name)
            if b.dataset == name
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

    async def register_cluster(
        self, spec: Cluster, *, rotate_token: bool = False
    ) -> tuple[ClusterRecord, str | None]:
        """Create or update a cluster; a token is returned when one is created or rotated."""
        async with self._write:
            rev = self.revision + 1
            old = self.clusters.get(spec.name)
            status = old.status if old else ClusterStatus()
            rec = ClusterRecord(spec=spec, status=status, revision=rev)
            ops: list[Op] = []
            token = None
            if old is None or rotate_token:
                token = auth.new_cluster_token(spec.name)
                ops.append(Put(TOKEN, spec.name, auth.token_hash(token).encode()))
            if old is None or old.spec != spec or token:
                ops.append(Put(CLUSTER, spec.name, codec.encode(rec)))
                clusters = {**self.clusters, spec.name: rec}
                placed = self._replace_all(rev, clusters)
                _check_binding_names(placed, "cluster.name")
                ops += placed
                await self._commit(rev, ops)
                if token:
                    self.token_hashes[spec.name] = auth.token_hash(token)
                self.heartbeats.setdefault(spec.name, self.clock())
                return rec, token
            return old, None

    async def relabel_cluster(
        self, name: str, set_labels: dict[str, str], remove: Iterable[str]
    ) -> ClusterRecord:
        old = self._cluster(name)
        labels = {k: v for k, v in old.spec.labels.items() if k not in set(remove)}
        labels.update(set_labels)
        spec = Cluster(
            name=old.spec.name,
            kind=old.spec.kind,
            region=old.spec.region,
            zone=old.spec.zone,
            labels=labels,
            capabilities=old.spec.capabilities,
            kubernetes=old.spec.kubernetes,
        )
        rec, _ = await self.register_cluster(spec)
        return rec

    async def delete_cluster(self, name: str) -> None:
        async with self._write:
            self._cluster(name)
            rev = self.revision + 1
            ops: list[Op] = [Delete(CLUSTER, name), Delete(TOKEN, name)]
            for b in self.bindings_of(name):
                ops += self._delete_binding_ops(b)
            await self._commit(rev, ops)
            self.heartbeats.pop(name, None)

    async def apply_dataset(self, spec: Dataset) -> tuple[DatasetRecord, bool]:
        """Create or update; returns the record and whether anything changed."""
        async with self._write:
            old = self.datasets.get(spec.name)
            if old is not None and old.spec == spec:
                return old, False
            rev = self.revision + 1
            rec = DatasetRecord(
                spec=spec,
                generation=(old.generation + 1) if old else 1,
                revision=rev,
                created=old.created if old else self.clock(),
            )
            known = {n: r.spec for n, r in self.datasets.items() if n != spec.name}
            errors.BadRequest.unless_valid(consistency.check_references(spec, known, "dataset"))
            ops: list[Op] = [Put(DATASET, spec.name, codec.encode(rec))]
            placed = self._replace(rev, rec, self.clusters)
            _check_binding_names(placed, "dataset.name")
            ops += placed
            await self._commit(rev, ops)
            return rec, True

    async def request_load(
        self,
        name: str,
        clusters: list[str],
        path: str,
        *,
        schedule: str = "",
        on_change: bool = False,
    ) -> list[Binding]:
        """Ask the agents of `clusters` (all the dataset's clusters if empty) to warm their
        caches with `path` of the dataset; the bindings that carry the request."""
        async with self._write:
            if name not in self.datasets:
                raise errors.NotFound(f"dataset {name} not found")
            live = {
                b.cluster: b for b in self.bindings.values() if b.dataset == name and not b.deleting
            }
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
            chosen = [live[c] for c in sorted(clusters or live)]
            if not chosen:
                raise errors.Conflict(f"dataset {name} is not placed on any cluster yet")
            rev = self.revision + 1
            req = LoadRequest(
                id=rev,
                path=path.strip("/"),
                requested_at=time.time(),
                schedule=schedule,
                on_change=on_change,
            )
            out = [msgspec.structs.replace(b, load=req, revision=rev) for b in chosen]
            await self._commit(rev, [Put(BINDING, b.name, codec.encode(b)) for b in out])
            return out

    async def delete_dataset(self, name: str) -> None:
        async with self._write:
            if name not in self.datasets:
                raise errors.NotFound(f"dataset {name} not found")
            others = {n: r.spec for n, r in self.datasets.items()}
            referrers = consistency.referrers(name, others)
            if referrers:
                raise errors.Conflict(
                    f"dataset {name} is mounted by {', '.join(referrers)} (dataset://{name}): "
                    "delete or change those first"
                )
            rev = self.revision + 1
            ops: list[Op] = [Delete(DATASET, name)]
            for b in list(self.bindings.values()):
                if b.dataset == name:
                    ops += self._retire_ops(rev, b)
            await self._commit(rev, ops)

    async def finalize_binding(self, name: str) -> None:
        """The agent has removed what a retired binding made: forget the binding."""
        async with self._write:
            b = self.bindings.get(name)
            if b is None:
                raise errors.NotFound(f"binding {name} not found")
            if not b.deleting:
                raise errors.Conflict(
                    f"binding {name} is still wanted: only a retired binding is finalized"
                )
            await self._commit(self.revision + 1, self._delete_binding_ops(b))

    async def report_status(self, binding: str, status: BindingStatus) -> None:
        async with self._write:
            if binding not in self.bindings:
                raise errors.NotFound(f"binding {binding} not found")
            rev = self.revision + 1
            await self._commit(rev, [Put(STATUS, binding, codec.encode(status))])

    async def set_replicas(self, binding: str, replicas: int) -> Binding:
        async with self._write:
            b = self.bindings.get(binding)
            if b is None:
                raise errors.NotFound(f"binding {binding} not found")
            if b.replicas == replicas:
                return b
            rev = self.revision + 1
            nb = msgspec.structs.replace(b, replicas=replicas, revision=rev)
            await self._commit(rev, [Put(BINDING, b.name, codec.encode(nb))])
            return nb

    async def scale(self, binding: str, decision: AutoscaleDecision) -> None:
        """Write the autoscaler's replicas into a binding, with the decision on record."""
        async with self._write:
            b = self.bindings.get(binding)
            if b is None or b.deleting:
                return
            rev = self.revision + 1
            kept = [*self.decisions.get(binding, []), decision][-KEEP_DECISIONS:]
            ops: list[Op] = [Put(DECISIONS, binding, codec.encode(kept))]
            if b.replicas != decision.replicas:
                nb = msgspec.structs.replace(b, replicas=decision.replicas, revision=rev)
                ops.append(Put(BINDING, b.name, codec.encode(nb)))
            await self._commit(rev, ops)

    async def heartbeat(self, cluster: str) -> ClusterRecord:
        rec = self._cluster(cluster)
        self.heartbeats[cluster] = self.clock()
        if not rec.ready:
            rec = await self._set_condition(cluster, "Ready", "agent heartbeat")
        return rec

    async def expire_leases(self) -> list[str]:
        """Mark clusters whose lease ran out Offline; they keep their bindings."""
        now = self.clock()
        expired = [
            name
            for name, rec in self.clusters.items()
            if rec.ready and now - self.heartbeats.get(name, 0) > self.lease_duration
        ]
        for name in expired:
            if name in self.clusters:  # deleted meanwhile: nothing to mark
                await self._set_condition(name, "Offline", "lease expired: no heartbeat")
        return expired

    async def _set_condition(self, name: str, typ: str, reason: str) -> ClusterRecord:
        async with self._write:
            old = self._cluster(name)
            rev = self.revision + 1
            cond = Condition(type=typ, since=self.clock(), reason=reason)  # type: ignore[arg-type]
            rec = ClusterRecord(
                spec=old.spec,
                status=ClusterStatus(condition=cond, last_heartbeat=self.heartbeats.get(name, 0)),
                revision=rev,
            )
            ops: list[Op] = [Put(CLUSTER, name, codec.encode(rec))]
            ops += self._replace_all(rev, {**self.clusters, name: rec})
            await self._commit(rev, ops)
            return rec

    # --- internals -----------------------------------------------------------------------

    def _cluster(self, name: str) -> ClusterRecord:
        rec = self.clusters.get(name)
        if rec is None:
            raise errors.NotFound(f"cluster {name} not found")
        return rec

    def _replace_all(self, rev: int, clusters: dict[str, ClusterRecord]) -> list[Op]:
        ops: list[Op] = []
        for rec in self.datasets.values():
            ops += self._replace(rev, rec, clusters)
        return ops

    def _replace(
        self, rev: int, rec: DatasetRecord, clusters: dict[str, ClusterRecord]
    ) -> list[Op]:
        """The ops that turn the dataset's current bindings into placement's answer."""
        current = {b.cluster: b for b in self.bindings.values() if b.dataset == rec.spec.name}
        live = {c: b for c, b in current.items() if not b.deleting}
        homes = {n: r.spec.namespace for n, r in self.datasets.items()}
        spec = consistency.fluid_references(rec.spec, homes)
        wanted = placement.place(spec, rec.generation, clusters.values(), live)
        ops: list[Op] = []
        for cluster, b in wanted.items():
            old = current.get(cluster)
            if old is not None and _same_binding(old, b):
                continue
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

    async def _commit(self, rev: int, ops: list[Op]) -> None:
        assert rev == self.revision + 1
        try:
            await self.store.commit(rev, ops)
        except errors.StoreError as err:
            self.store_problem = err.reason  # /readyz: not ready until a write succeeds
            raise
        self.store_problem = ""
        # durable now: make it visible
        self.revision = rev
        for op in ops:
            self._apply(rev, op)
        self._since_compaction += len(ops)
        log = self.log
        if self._since_compaction > self.history // 10 or log.compacted > self._store_compacted:
            self._since_compaction = 0
            # the store forgets at least what the log forgot (the log may trim by bytes); the
            # write is durable already: a failing compaction is tried again, never an error
            try:
                self._store_compacted = await self.store.compact(self.history, log.compacted)
                log.compacted = max(log.compacted, self._store_compacted)
            except errors.StoreError as err:
                self.store_problem = err.reason
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    def _apply(self, rev: int, op: Op) -> None:
        if isinstance(op, Put):
            if op.kind == CLUSTER:
                self.clusters[op.name] = _cluster_dec.decode(op.value)
            elif op.kind == DATASET:
                self.datasets[op.name] = _dataset_dec.decode(op.value)
            elif op.kind == BINDING:
                b = _binding_dec.decode(op.value)
                etype = "MODIFIED" if op.name in self.bindings else "ADDED"
                self.bindings[op.name] = b
                self.log.append(rev, etype, b)
            elif op.kind == STATUS:
                self.statuses[op.name] = _status_dec.decode(op.value)
            elif op.kind == TOKEN:
                self.token_hashes[op.name] = op.value.decode()
            elif op.kind == DECISIONS:
                self.decisions[op.name] = _decisions_dec.decode(op.value)
            return
        if op.kind == CLUSTER:
            self.clusters.pop(op.name, None)
        elif op.kind == DATASET:
            self.datasets.pop(op.name, None)
        elif op.kind == BINDING:
            gone = self.bindings.pop(op.name, None)
            if gone is not None:
                self.log.append(rev, "DELETED", gone)
        elif op.kind == STATUS:
            self.statuses.pop(op.name, None)
        elif op.kind == TOKEN:
            self.token_hashes.pop(op.name, None)
        elif op.kind == DECISIONS:
            self.decisions.pop(op.name, None)


def _same_binding(a: Binding, b: Binding) -> bool:
    def key(x: Binding) -> tuple[object, ...]:
        return (x.mode, x.replicas, x.generation, x.spec, x.deleting)

    return key(a) == key(b)
