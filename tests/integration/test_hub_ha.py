"""The hub highly available on etcd, with real parts only: a 3-member etcd, two hub
replicas (real processes sharing it), clients on both replicas' URLs as agents are, and
real agents on real clusters.

A burst of applies while the leading replica is killed with SIGKILL: every acknowledged
write is there, each cluster's binding stream resumes on the other replica with no gap and
no repeat, and the other replica takes over the leases and the autoscaler (heartbeats sent
to either replica count, and no decision is made twice). A burst while one etcd member is
killed: the writes go on."""

import asyncio
import contextlib
import signal
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from devkit import testing
from devkit.local import cluster, etcd
from devkit.testing import AgentProcess, HubProcess, eventually
from fluidfed import Client, Gone
from fluidfed.errors import HubUnreachable, ServerError
from fluidfed.models import (
    AutoscalePolicy,
    AutoscaleTarget,
    BindingStatus,
    CacheSpec,
    Figures,
    KubeAccess,
    Placement,
)
from fluidfed.units import Duration
from tests.integration.conftest import CAPS, dataset

pytestmark = pytest.mark.integration

CLUSTERS = ("c0", "c1", "c2")
HUB_TOML = """\
[hub]
lease_duration = "3s"
bookmark_interval = "200ms"
autoscale_interval = "200ms"
metrics_stale_after = "30s"
leader_lease = "2s"
"""


def leads(hub: HubProcess) -> bool:
    try:
        with urllib.request.urlopen(hub.url + "/readyz", timeout=5) as r:
            return " leader" in r.read().decode()
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Replicas:
    hubs: list[HubProcess]
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def admin_token(self) -> str:
        return self.hubs[0].admin_token

    def leader(self) -> HubProcess | None:
        return next((h for h in self.hubs if h.proc is not None and leads(h)), None)

    def urls(self, first: HubProcess) -> list[str]:
        """Both replicas' URLs, `first` first (where clients start)."""
        return [first.url] + [h.url for h in self.hubs if h is not first]


@contextlib.contextmanager
def start_replicas(tmp_path: Path, members: etcd.EtcdCluster, toml: str) -> Iterator[Replicas]:
    """Two hub replicas with `toml` as their config, on a fresh prefix of `members`."""
    cfg = tmp_path / "hub.toml"
    cfg.write_text(toml)
    flags = ["--config", str(cfg), "--store", members.store_url]
    flags += ["--etcd-prefix", f"/ha-{uuid.uuid4().hex[:12]}/"]
    # one data directory: the replicas share the admin token, as a Secret would give it
    hubs = [HubProcess(tmp_path / "hub", extra=flags).start() for _ in range(2)]
    try:
        yield Replicas(hubs)
    finally:
        for h in hubs:
            if h.errors is not None and h.errors.tail():
                print(f"--- hub {h.url} stderr (tail) ---\n{h.errors.tail()}")
            h.stop()


@pytest.fixture
def replicas(tmp_path: Path, etcd_cluster: etcd.EtcdCluster) -> Iterator[Replicas]:
    with start_replicas(tmp_path, etcd_cluster, HUB_TOML) as r:
        yield r


async def register(r: Replicas) -> None:
    async with Client(r.urls(r.hubs[0]), r.admin_token) as admin:
        for name in CLUSTERS:
            reg = await admin.register_cluster(
                testing.cluster(name, kind="edge", kubernetes=KubeAccess(in_cluster=True))
            )
            r.tokens[name] = reg.token


@dataclass
class Stream:
    """One cluster's binding events as a client on both replicas saw them."""

    cluster: str
    start: int
    events: list[tuple[int, str, str]] = field(default_factory=list)
    revision: int = 0
    resumed: int = 0  # watches opened after the first (on whichever replica)
    gone: str = ""  # a 410 (the agent would have listed again): must not happen


async def follow(client: Client, s: Stream, stop: asyncio.Event) -> None:
    """Watch as the agent does: from the last revision handled, again after a break; a
    Gone here (a relist) would fail the test."""
    s.revision = s.start
    while not stop.is_set():
        try:
            async for ev in client.watch_bindings(s.cluster, revision=s.revision):
                if ev.type != "BOOKMARK" and ev.object is not None:
                    s.events.append((ev.revision, ev.type, ev.object.name))
                s.revision = ev.revision
                if stop.is_set():
                    return
        except (HubUnreachable, ServerError):
            await asyncio.sleep(0.05)
        except Gone as err:
            s.gone = str(err)
            return
        s.resumed += 1


async def replay(url: str, token: str, s: Stream, upto: int) -> list[tuple[int, str, str]]:
    """The same cluster's events from the same start, read again in one watch."""
    got: list[tuple[int, str, str]] = []
    async with Client(url, token) as c:
        async for ev in c.watch_bindings(s.cluster, revision=s.start):
            if ev.type != "BOOKMARK" and ev.object is not None:
                got.append((ev.revision, ev.type, ev.object.name))
            if ev.revision >= upto:
                return got
    raise AssertionError("the watch ended before the revision of the last write")


@contextlib.asynccontextmanager
async def burst(urls: list[str], token: str, acked: list[str]) -> AsyncIterator[None]:
    """Four writers applying datasets placed on every cluster, each acknowledged write
    noted; stopped when the block ends."""

    async def writer(w: int) -> None:
        async with Client(urls, token, timeout=10) as client:
            for i in range(100_000):
                name = f"w{w}-{i}"
                ds = testing.dataset(
                    name, uri="file:///x", placement=Placement(clusters=[*CLUSTERS])
                )
                try:
                    await client.apply_dataset(ds)
                except (HubUnreachable, ServerError):
                    continue  # not acknowledged: it may or may not be there
                acked.append(name)

    tasks = [asyncio.create_task(writer(w)) for w in range(4)]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_killing_the_leader_mid_burst(replicas: Replicas) -> None:
    r = replicas
    await register(r)
    leader: HubProcess = await eventually(r.leader, "one replica to lead")
    other = next(h for h in r.hubs if h is not leader)
    policy = AutoscalePolicy(
        targets=[AutoscaleTarget(metric="cache_used_ratio", target=0.5)],
        min_replicas=1,
        max_replicas=4,
        max_step=1,
        scale_up_window=Duration(0.0),
        scale_down_window=Duration(0.0),
    )
    async with Client(r.urls(leader), r.admin_token) as admin:
        await admin.apply_dataset(
            testing.dataset(
                "hot",
                uri="s3://b/p",
                cache=CacheSpec(replicas=1),
                autoscale=policy,
                placement=Placement(clusters=["c0"]),
            )
        )
        start = (await admin.list_bindings()).revision

    # agents: heartbeats to the replica that does not lead (the leader sees them through
    # etcd), watches that start on the leader
    stop, beating = asyncio.Event(), set(CLUSTERS)
    clients = {c: Client(r.urls(leader), r.tokens[c], timeout=5) for c in CLUSTERS}
    beats = {c: Client(r.urls(other), r.tokens[c], timeout=5) for c in CLUSTERS}

    async def heartbeat() -> None:
        while not stop.is_set():
            for c in list(beating):
                with contextlib.suppress(HubUnreachable, ServerError):
                    await beats[c].heartbeat(c)
            await asyncio.sleep(0.3)

    streams = {c: Stream(c, start) for c in CLUSTERS}
    tasks = [asyncio.create_task(follow(clients[c], streams[c], stop)) for c in CLUSTERS]
    tasks.append(asyncio.create_task(heartbeat()))
    try:
        # the leader's autoscaler acts on a status reported to the other replica
        hot = clients["c0"]
        full = BindingStatus(phase="Bound", metrics=Figures(cache_used_ratio=1.0))
        await beats["c0"].report_status("hot.c0", full)
        await eventually(lambda: _replicas(hot, 4), "the leader to scale up, step by step")

        acked: list[str] = []
        async with burst(r.urls(leader), r.admin_token, acked):
            await eventually(lambda: len(acked) >= 40, "40 acknowledged writes", interval=0.01)
            assert leader.proc is not None
            leader.proc.send_signal(signal.SIGKILL)
            leader.stop()
            beating.discard("c2")  # c2's agent goes away with it
            await eventually(lambda: len(acked) >= 120, "120 acknowledged writes", interval=0.05)

        # the other replica leads, and runs the leases and the autoscaler
        assert await eventually(lambda: leads(other), "the other replica to lead")
        idle = BindingStatus(phase="Bound", metrics=Figures(cache_used_ratio=0.1))
        await hot.report_status("hot.c0", idle)
        await eventually(lambda: _replicas(hot, 1), "the new leader to scale down")
        async with Client(other.url, r.admin_token) as admin:

            async def offline() -> bool:
                states = {c.spec.name: c.ready for c in await admin.list_clusters()}
                return states == {"c0": True, "c1": True, "c2": False}

            await eventually(offline, "c2 Offline (no heartbeat), c0 and c1 Ready")
            stored = {d.spec.name for d in await admin.list_datasets()}
            decisions = (await admin.get_dataset("hot")).bindings[0].decisions
            last = (await admin.list_bindings()).revision
        missing = set(acked) - stored
        assert not missing, f"{len(missing)} acknowledged writes lost: {sorted(missing)[:5]}"
        # no decision made twice: each step up decided once, by whichever replica led
        steps = [(d.current, d.replicas) for d in decisions]
        assert steps == [(1, 2), (2, 3), (3, 4), (4, 3), (3, 2), (2, 1)]

        # every cluster's stream, resumed on the other replica, is the whole history once
        for c in CLUSTERS:
            s = streams[c]

            def caught_up(s: Stream = s) -> bool | str:
                return s.revision >= last or s.gone

            await eventually(caught_up, f"{c}'s watch to reach {last}")
            assert not s.gone, f"{c}'s watch had to list again: {s.gone}"
            again = await replay(other.url, r.tokens[c], s, s.revision)
            seen = [e for e in s.events if e[0] <= s.revision]
            print(f"{c}: {len(seen)} events, {s.resumed} resumed watches, {len(acked)} acked")
            assert s.resumed >= 1, f"{c}'s watch never had to resume"
            assert len(set(seen)) == len(seen), f"{c}: events repeated"
            assert seen == again, f"{c}: the stream differs from the history (a gap)"
            assert {e[2] for e in seen if e[1] == "ADDED"} >= {f"{n}.{c}" for n in acked}
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in [*clients.values(), *beats.values()]:
            await client.close()


async def _replicas(client: Client, want: int) -> bool:
    return (await client.get_binding("hot.c0")).replicas == want


async def test_a_leader_that_stops_hands_over(replicas: Replicas) -> None:
    first: HubProcess = await eventually(replicas.leader, "one replica to lead")
    assert first.stop() == 0  # SIGTERM: it resigns, the lease is revoked, not left to run out
    second = await eventually(replicas.leader, "the other replica to lead")
    assert second is not first
    first.start()  # back, it does not take the lead from the leader

    def serving(hub: HubProcess) -> bool:
        with urllib.request.urlopen(hub.url + "/readyz", timeout=5) as r:
            body: str = r.read().decode()
            return body.startswith("ok revision=")

    # once it serves it has caught up with the store and is campaigning behind the leader
    await eventually(lambda: asyncio.to_thread(serving, first), "the first replica serving")
    assert leads(second) and not leads(first)


async def test_writes_go_on_while_an_etcd_member_is_down(
    replicas: Replicas, etcd_cluster: etcd.EtcdCluster
) -> None:
    r = replicas
    await register(r)
    acked: list[str] = []
    try:
        async with burst(r.urls(r.hubs[0]), r.admin_token, acked):
            await eventually(lambda: len(acked) >= 30, "30 acknowledged writes", interval=0.01)
            etcd_cluster.stop_member("m1")
            at_stop = len(acked)
            await eventually(
                lambda: len(acked) >= at_stop + 60, "60 more writes with m1 down", interval=0.05
            )
        for hub in r.hubs:
            async with Client(hub.url, r.admin_token) as admin:

                async def stored(admin: Client = admin) -> bool:
                    return set(acked) <= {d.spec.name for d in await admin.list_datasets()}

                await eventually(stored, f"every acknowledged write on {hub.url}")
    finally:
        etcd_cluster.start_member("m1")
        etcd_cluster.wait_healthy(60)


async def test_a_revision_compacted_away_is_410_on_every_replica(
    tmp_path: Path, etcd_cluster: etcd.EtcdCluster
) -> None:
    with start_replicas(tmp_path, etcd_cluster, HUB_TOML + "event_history = 100\n") as r:
        await register(r)
        a, b = r.hubs
        async with Client(a.url, r.admin_token) as on_a, Client(b.url, r.admin_token) as on_b:
            first = (await on_a.list_bindings("c0")).revision
            for i in range(140):
                await on_a.apply_dataset(
                    testing.dataset(f"d{i}", uri="file:///x", placement=Placement(clusters=["c0"]))
                )
            # the other replica forgot the same history: 410, the agent lists again there
            with pytest.raises(Gone):
                async for _ in on_b.watch_bindings("c0", revision=first):
                    pass
            listed = await on_b.list_bindings("c0")
            assert len(listed.items) == 140
            await on_b.apply_dataset(
                testing.dataset("late", uri="file:///x", placement=Placement(clusters=["c0"]))
            )
            # and watches from the list's revision on either replica
            for c in (on_a, on_b):
                async for ev in c.watch_bindings("c0", revision=listed.revision):
                    assert ev.object is not None and ev.object.name == "late.c0"
                    break


async def test_agents_follow_the_replica_that_survives(
    tmp_path: Path,
    etcd_cluster: etcd.EtcdCluster,
    local_clusters: dict[str, cluster.LocalCluster],
) -> None:
    """Real agents on real clusters, given both replicas' URLs: the leader is killed and
    they go on with the other, resuming their watch (no list again)."""
    with start_replicas(tmp_path, etcd_cluster, HUB_TOML) as r:
        leader: HubProcess = await eventually(r.leader, "one replica to lead")
        other = next(h for h in r.hubs if h is not leader)
        agents = [
            AgentProcess(
                tmp_path, kind, kind, str(lc.kubeconfig_path), ",".join(r.urls(leader)),
                r.admin_token, labels={"env": "test"}, capabilities=CAPS[kind],
            )
            for kind, lc in local_clusters.items()
        ]  # fmt: skip
        for a in agents:
            a.start()
        try:
            async with Client(r.urls(other), r.admin_token) as admin:

                async def registered() -> bool:
                    names = {c.spec.name for c in await admin.list_clusters()}
                    return names >= set(local_clusters)

                await eventually(registered, "the agents to register")
                sidecar = Placement(clusters=["serverless", "edge"])

                async def bound(name: str) -> bool:
                    v = await admin.get_dataset(name)
                    phases = [b.status.phase if b.status else "" for b in v.bindings]
                    return phases == ["Bound", "Bound"]

                await admin.apply_dataset(dataset("before", placement=sidecar))
                await eventually(lambda: bound("before"), "'before' Bound by both agents")
                leader.kill9()
                await admin.apply_dataset(dataset("after", placement=sidecar))
                await eventually(lambda: bound("after"), "'after' Bound through the survivor")
                await admin.delete_dataset("before")

                async def finalized() -> bool:
                    return "before" not in {
                        d.spec.name for d in await admin.list_datasets()
                    } and not [
                        b for b in (await admin.list_bindings()).items if b.dataset == "before"
                    ]

                await eventually(finalized, "'before' cleaned up by the agents and forgotten")
            for a in agents:
                # one list at start-up; after the failover the watch resumed where it was
                assert a.log_text().count("listed ") == 1, a.log_text()[-3000:]
        finally:
            for a in agents:
                a.stop()


@contextlib.asynccontextmanager
async def answers_lost(upstream: str) -> AsyncIterator[tuple[str, list[str]]]:
    """A TCP hop in front of a real replica: each request is delivered whole and answered
    there, and the answer is dropped (a connection broken at the worst moment). Yields the
    hop's URL and the request lines the replica answered."""
    host, port = upstream.removeprefix("http://").rsplit(":", 1)
    answered: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (int(x.split(b":", 1)[1]) for x in head.split(b"\r\n")
                 if x.lower().startswith(b"content-length:")), 0,
            )  # fmt: skip
            up_writer.write(head + await reader.readexactly(length))
            await up_writer.drain()
            if await up_reader.read(1):  # the replica answers: it did what was asked
                answered.append(head.split(b"\r\n", 1)[0].decode())
        finally:
            up_writer.close()
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", answered
    finally:
        server.close()
        await server.wait_closed()


async def test_a_load_whose_answer_was_lost_is_applied_once_across_replicas(
    replicas: Replicas,
) -> None:
    """A warm-up asked on one replica, its answer lost: the client asks the other with the
    same idempotency key and the hub makes it one load. A token rotation whose answer was
    lost is not sent to the other replica at all (it may have been applied)."""
    await register(replicas)
    a, b = replicas.hubs
    async with Client(b.url, replicas.admin_token) as admin:
        await admin.apply_dataset(dataset("ds", placement=Placement(clusters=["c0"])))
        start = (await admin.list_bindings("c0")).revision
    async with (
        answers_lost(a.url) as (hop, answered),
        Client([hop, b.url], replicas.admin_token) as hub,
    ):
        (got,) = await hub.load_dataset("ds", ["c0"], "train")
        assert answered == ["POST /api/v1/datasets/ds/load HTTP/1.1"]  # applied on a
        assert got.load is not None and got.load.key
    async with (
        answers_lost(a.url) as (hop, answered),
        Client([hop, b.url], replicas.admin_token) as hub,
    ):
        with pytest.raises(HubUnreachable, match="may have been applied there"):
            await hub.register_cluster(
                testing.cluster("c1", kind="edge", kubernetes=KubeAccess(in_cluster=True)),
                rotate_token=True,
            )
        assert answered == ["POST /api/v1/clusters?rotate_token=true HTTP/1.1"]
    async with Client(b.url, replicas.admin_token) as admin:
        await admin.apply_dataset(dataset("marker", placement=Placement(clusters=["c0"])))
        seen: list[tuple[str, str]] = []
        async for ev in admin.watch_bindings("c0", revision=start):
            if ev.object is None or ev.type == "BOOKMARK":
                continue
            seen.append((ev.object.name, ev.object.load.key if ev.object.load else ""))
            if ev.object.name == "marker.c0":
                break
        # one change of ds.c0 for the load, with the key both replicas were sent
        assert seen == [("ds.c0", got.load.key), ("marker.c0", "")]


async def test_a_token_issued_at_one_replica_works_at_the_other_at_once(
    replicas: Replicas,
) -> None:
    """The other replica may not have seen the registration yet: it catches up with etcd
    before it answers 401. Unknown tokens (anyone can send them) all get 401, at once, and
    the replica goes on serving (that they share their reads of etcd is the unit test's:
    tests/unit/hub/test_catalog.py)."""
    first, other = replicas.hubs
    async with Client(first.url, replicas.admin_token) as admin:
        token = (
            await admin.register_cluster(
                testing.cluster("fresh", kind="edge", kubernetes=KubeAccess(in_cluster=True))
            )
        ).token
    async with Client(other.url, token) as fresh:
        assert (await fresh.heartbeat("fresh")).ready

    async def forged(i: int) -> int:
        async with (
            aiohttp.ClientSession() as s,
            s.get(
                other.url + "/api/v1/bindings",
                headers={"Authorization": f"Bearer ffc.fresh.forged{i}"},
            ) as resp,
        ):
            return resp.status

    assert set(await asyncio.gather(*(forged(i) for i in range(200)))) == {401}
    async with Client(other.url, token) as fresh:  # still served
        assert (await fresh.heartbeat("fresh")).ready
