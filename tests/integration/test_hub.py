"""The hub as a user meets it: a real daemon process, the CLI and the SDK over loopback;
each test on both catalog stores (the SQLite file, and etcd)."""

import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest

from devkit import testing
from devkit.testing import HubProcess, eventually, eventually_blocking
from fluidfed import Client, Forbidden, Gone, Unauthorized, codec, config, validation
from fluidfed.errors import APIError
from fluidfed.models import Cluster, LabelSelector, Placement, WatchEvent
from tests.conftest import CONFIGS
from tests.integration.conftest import cli

pytestmark = pytest.mark.integration

TWO_OF_THREE = """\
[dataset]
name = "imagenet"
namespace = "ml"

[[dataset.mounts]]
uri = "s3://datasets/imagenet"

[dataset.placement]
selector = { match_labels = { env = "prod" } }
"""


def register_fleet(hub: HubProcess, tmp_path: Path) -> dict[str, str]:
    tokens = {}
    for name in ("standard", "serverless", "edge"):
        out = tmp_path / f"{name}.token"
        r = cli(
            hub,
            "cluster",
            "register",
            str(CONFIGS / "clusters" / f"{name}.toml"),
            "--token-file",
            str(out),
        )
        assert r.returncode == 0, r.stderr
        tokens[name] = out.read_text().strip()
    return tokens


@pytest.fixture
def hub(tmp_path: Path, store_flags: list[str]) -> Iterator[HubProcess]:
    """A real hub daemon on a loopback port, on each catalog store."""
    with HubProcess(tmp_path / "hub", extra=store_flags) as proc:
        yield proc


@contextlib.contextmanager
def configured_hub(tmp_path: Path, toml: str, store_flags: list[str]) -> Iterator[HubProcess]:
    """A hub started with `toml` as its config file, with the fleet registered."""
    cfg = tmp_path / "hub.toml"
    cfg.write_text(toml)
    with HubProcess(tmp_path / "h", extra=["--config", str(cfg), *store_flags]) as hub:
        register_fleet(hub, tmp_path)
        yield hub


def test_register_apply_and_placement_follows_labels(hub: HubProcess, tmp_path: Path) -> None:
    register_fleet(hub, tmp_path)
    ds = tmp_path / "ds.toml"
    ds.write_text(TWO_OF_THREE)
    r = cli(hub, "apply", "-f", str(ds))
    assert r.returncode == 0, r.stderr
    assert "serverless (sidecar)" in r.stdout and "standard (csi)" in r.stdout

    r = cli(hub, "get", "bindings", "-o", "json")

    def wanted() -> set[tuple[str, str]]:
        items = json.loads(cli(hub, "get", "bindings", "-o", "json").stdout)["items"]
        return {(b["cluster"], b["mode"]) for b in items if not b.get("deleting")}

    assert wanted() == {("standard", "csi"), ("serverless", "sidecar")}

    # relabel: the edge cluster joins prod, serverless leaves it
    assert cli(hub, "cluster", "label", "edge", "env=prod").returncode == 0
    assert cli(hub, "cluster", "label", "serverless", "env-").returncode == 0
    assert wanted() == {("standard", "csi"), ("edge", "sidecar")}

    r = cli(hub, "describe", "dataset", "imagenet")
    assert r.returncode == 0
    assert "edge" in r.stdout and "standard" in r.stdout
    assert "Deleting" in r.stdout  # serverless: retired, waiting for its agent to clean up
    r = cli(hub, "get", "clusters")
    assert "standard" in r.stdout and "csi" in r.stdout

    assert cli(hub, "delete", "dataset", "imagenet").returncode == 0
    assert wanted() == set()
    r = cli(hub, "describe", "dataset", "imagenet")
    assert r.returncode == 2 and "not found" in r.stderr


def test_cluster_token_sees_only_its_own_cluster(hub: HubProcess, tmp_path: Path) -> None:
    tokens = register_fleet(hub, tmp_path)

    async def go() -> None:
        async with Client(hub.url, hub.admin_token) as admin:
            await admin.apply_dataset(testing.dataset("d", uri="file:///data"))
        async with Client(hub.url, tokens["edge"]) as edge:
            own = await edge.list_bindings("edge")
            assert [b.name for b in own.items] == ["d.edge"]
            with pytest.raises(Forbidden):
                await edge.list_bindings("standard")
            with pytest.raises(Forbidden):
                await edge.get_binding("d.standard")
            with pytest.raises(Forbidden):
                await edge.heartbeat("standard")
            with pytest.raises(Forbidden):
                await edge.apply_dataset(testing.dataset("x", uri="file:///x"))
            with pytest.raises(Forbidden):
                await edge.list_clusters()
            rec = await edge.heartbeat("edge")
            assert rec.ready
        async with Client(hub.url, "") as anon:
            with pytest.raises(Unauthorized):
                await anon.list_bindings("edge")
        async with Client(hub.url, "ffc.edge.forged") as forged:
            with pytest.raises(Unauthorized):
                await forged.list_bindings("edge")

    asyncio.run(go())
    r = cli(hub, "get", "bindings", "--cluster", "standard", token=tokens["edge"])
    assert r.returncode == 2 and "cannot read or write cluster standard" in r.stderr


async def _collect(
    client: Client, cluster: str, revision: int, out: list[WatchEvent], stop_after: int
) -> int:
    """Watch until `stop_after` binding events arrived; return the last revision seen."""
    async for ev in client.watch_bindings(cluster, revision=revision):
        if ev.type == "BOOKMARK":
            revision = ev.revision
            continue
        out.append(ev)
        revision = ev.revision
        if len(out) >= stop_after:
            break
    return revision


def test_watch_resumes_after_disconnect_without_gaps_or_repeats(
    hub: HubProcess, tmp_path: Path
) -> None:
    tokens = register_fleet(hub, tmp_path)

    async def go() -> None:
        async with (
            Client(hub.url, hub.admin_token) as admin,
            Client(hub.url, tokens["edge"]) as edge,
        ):
            start = (await edge.list_bindings()).revision
            seen: list[WatchEvent] = []
            # first connection: sees 3 of the changes, then drops
            task = asyncio.create_task(_collect(edge, "edge", start, seen, 3))
            for i in range(3):
                await admin.apply_dataset(testing.dataset(f"d{i}", uri="file:///x"))
            last = await asyncio.wait_for(task, 10)
            # changes while disconnected: two more datasets, one deleted, one placed away
            await admin.apply_dataset(testing.dataset("d3", uri="file:///x"))
            await admin.delete_dataset("d0")
            await admin.apply_dataset(
                testing.dataset("d1", uri="file:///x", placement=Placement(clusters=["standard"]))
            )
            await admin.apply_dataset(testing.dataset("d4", uri="file:///x"))
            # resume from the last revision seen
            await asyncio.wait_for(_collect(edge, "edge", last, seen, 7), 10)
            kinds = [(e.type, e.object.name, e.object.deleting) for e in seen if e.object]
            assert kinds == [
                ("ADDED", "d0.edge", False),
                ("ADDED", "d1.edge", False),
                ("ADDED", "d2.edge", False),
                ("ADDED", "d3.edge", False),
                ("MODIFIED", "d0.edge", True),  # retired: the agent cleans up, then finalizes
                ("MODIFIED", "d1.edge", True),
                ("ADDED", "d4.edge", False),
            ]
            revs = [e.revision for e in seen]
            assert revs == sorted(set(revs)), "events repeated or out of order"
            # replaying the events gives exactly the listed state
            state: dict[str, bool] = {}
            for e in seen:
                assert e.object is not None
                state[e.object.name] = e.object.deleting
            listed = await edge.list_bindings()
            assert state == {b.name: b.deleting for b in listed.items}
            # the agent finalizes a retired binding: the watch then says DELETED
            await edge.finalize_binding("d0.edge")
            with pytest.raises(Forbidden):
                await edge.finalize_binding("d1.standard")
            async for ev in edge.watch_bindings("edge", revision=seen[-1].revision):
                assert (ev.type, ev.object.name if ev.object else "") == ("DELETED", "d0.edge")
                break

    asyncio.run(go())


def test_bookmarks_advance_a_quiet_watch(tmp_path: Path, store_flags: list[str]) -> None:
    with configured_hub(tmp_path, '[hub]\nbookmark_interval = "200ms"\n', store_flags) as hub:

        async def go() -> None:
            async with Client(hub.url, hub.admin_token) as admin:
                await admin.apply_dataset(
                    testing.dataset(
                        "d", uri="file:///x", placement=Placement(clusters=["standard"])
                    )
                )
                async for ev in admin.watch_bindings("edge", revision=0):
                    assert ev.type == "BOOKMARK"
                    assert ev.revision >= 4  # moved past changes that were not edge's
                    break

        asyncio.run(go())


def test_bookmarks_come_while_other_clusters_change_more_often(
    tmp_path: Path, store_flags: list[str]
) -> None:
    """Commits for other clusters, more often than the bookmark interval, wake a quiet
    watch: it still gets its bookmarks (a timer per watch, started over at each wake-up,
    never fired; on etcd the replicas' heartbeats alone came every 5 s, under the default
    10 s interval)."""
    with configured_hub(tmp_path, '[hub]\nbookmark_interval = "1s"\n', store_flags) as hub:

        async def go() -> None:
            async with Client(hub.url, hub.admin_token) as admin:
                start = (await admin.list_bindings("edge")).revision

                async def others() -> None:
                    for i in range(1000):
                        await admin.apply_dataset(
                            testing.dataset(
                                f"d{i}", uri="file:///x", placement=Placement(clusters=["standard"])
                            )
                        )
                        await asyncio.sleep(0.25)

                busy = asyncio.create_task(others())
                try:
                    async with asyncio.timeout(20):  # 1 s expected: a failure, not a speed
                        async for ev in admin.watch_bindings("edge", revision=start):
                            assert ev.type == "BOOKMARK"
                            assert ev.revision > start + 1  # past the others' commits
                            break
                finally:
                    busy.cancel()

        asyncio.run(go())


def test_watch_from_compacted_revision_is_410(tmp_path: Path, store_flags: list[str]) -> None:
    with configured_hub(tmp_path, "[hub]\nevent_history = 100\n", store_flags) as hub:

        async def go() -> None:
            async with Client(hub.url, hub.admin_token) as admin:
                for i in range(140):
                    await admin.apply_dataset(
                        testing.dataset(
                            f"d{i}", uri="file:///x", placement=Placement(clusters=["edge"])
                        )
                    )
                with pytest.raises(Gone):
                    async for _ in admin.watch_bindings("edge", revision=1):
                        pass
                # relist, then watch from the list's revision: works
                listed = await admin.list_bindings("edge")
                assert len(listed.items) == 140
                await admin.apply_dataset(
                    testing.dataset("late", uri="file:///x", placement=Placement(clusters=["edge"]))
                )
                async for ev in admin.watch_bindings("edge", revision=listed.revision):
                    assert ev.object is not None and ev.object.name == "late.edge"
                    break

        asyncio.run(go())


def test_restart_finds_everything(hub: HubProcess, tmp_path: Path) -> None:
    tokens = register_fleet(hub, tmp_path)
    ds = tmp_path / "ds.toml"
    ds.write_text(TWO_OF_THREE)
    assert cli(hub, "apply", "-f", str(ds)).returncode == 0
    before = json.loads(cli(hub, "get", "bindings", "-o", "json").stdout)
    hub.stop()
    hub.start()
    after = json.loads(cli(hub, "get", "bindings", "-o", "json").stdout)
    # the same bindings (on etcd the revision moves on: the new replica took the lead)
    assert after["items"] == before["items"] and after["revision"] >= before["revision"]
    # cluster tokens still work after the restart
    r = cli(hub, "get", "bindings", "--cluster", "standard", "-o", "json", token=tokens["standard"])
    assert r.returncode == 0 and "imagenet.standard" in r.stdout


def test_kill9_during_a_burst_loses_no_acknowledged_write(hub: HubProcess, tmp_path: Path) -> None:
    register_fleet(hub, tmp_path)
    acked: list[str] = []

    async def writer(client: Client, wid: int) -> None:
        for i in range(10_000):
            name = f"w{wid}-{i}"
            await client.apply_dataset(testing.dataset(name, uri="file:///x"))
            acked.append(name)

    async def go() -> None:
        async with Client(hub.url, hub.admin_token, timeout=5) as client:
            tasks = [asyncio.create_task(writer(client, w)) for w in range(8)]
            await eventually(lambda: len(acked) >= 60, "60 acknowledged writes", interval=0.01)
            hub.kill9()
            for t in tasks:
                with contextlib.suppress(Exception):
                    await t

    asyncio.run(go())
    assert len(acked) >= 60
    hub.start()

    async def check() -> set[str]:
        async with Client(hub.url, hub.admin_token) as client:
            return {d.spec.name for d in await client.list_datasets()}

    stored = asyncio.run(check())
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged writes lost: {sorted(missing)[:5]}"


def test_bad_input_is_a_clear_error_and_stores_nothing(hub: HubProcess, tmp_path: Path) -> None:
    register_fleet(hub, tmp_path)
    headers = {"Authorization": f"Bearer {hub.admin_token}", "Content-Type": "application/json"}

    async def go() -> None:
        async with aiohttp.ClientSession(headers=headers) as s:
            url = hub.url + "/api/v1/datasets"
            cases = [
                (
                    b'{"name": "x", "mounts": [{"uri": "s3://b", "endpiont": 1}]}',
                    400,
                    "dataset.mounts[0].endpiont",
                ),
                (
                    b'{"name": "x", "mounts": [{"uri": "s3://b"}], "cache": {"replicas": "2"}}',
                    400,
                    "dataset.cache.replicas",
                ),
                (
                    b'{"name": "x", "mounts": [{"uri": "s3://b"}], "cache": {"tiers": [{"medium": "MEM", "quota": "huge"}]}}',
                    400,
                    "dataset.cache.tiers[0].quota",
                ),
                (
                    b'{"name": "x", "mounts": [{"uri": "s3://b"}], "placement": {"selector": {"match_expressions": [{"key": "a", "operator": "Exists", "values": ["v"]}]}}}',
                    400,
                    "dataset.placement.selector.match_expressions[0].values",
                ),
                (b'{"name": "Bad_Name", "mounts": [{"uri": "s3://b"}]}', 400, "dataset.name"),
                (b'{"name": "x", "mounts": [{"uri": "ftp://b"}]}', 400, "dataset.mounts[0].uri"),
                (b'{"name": "x", "mounts"', 400, ""),
                (  # a setting OpenDAL cannot parse: every sidecar and worker failed to open
                    b'{"name": "x", "mounts": [{"uri": "s3://b", "options": '
                    b'{"enable_virtual_host_style": "maybe"}}]}',
                    400,
                    "dataset.mounts[0].options.enable_virtual_host_style",
                ),
                (
                    b'{"name": "x", "mounts": [{"uri": "s3://b/p\\n"}]}',
                    400,
                    "dataset.mounts[0].uri",
                ),
                (
                    b'{"name": "x", "mounts": [{"uri": "s3://b"}], "description": "'
                    + b"a" * (2 << 20)
                    + b'"}',
                    413,
                    "",
                ),
            ]
            for body, status, path in cases:
                async with s.post(url, data=body) as resp:
                    got = await resp.json()
                    assert resp.status == status, (body[:80], got)
                    assert got["error"]
                    if path:
                        assert any(p["path"] == path for p in got["problems"]), got
            async with s.get(url) as resp:
                assert await resp.json() == []
            async with s.get(hub.url + "/api/v1/bindings") as resp:
                assert (await resp.json())["items"] == []

    asyncio.run(go())
    # the CLI says where in the file, and exits 2
    bad = tmp_path / "bad.toml"
    bad.write_text(TWO_OF_THREE.replace('namespace = "ml"', 'namespace = "ml"\nreplicas = 3'))
    r = cli(hub, "apply", "-f", str(bad))
    assert r.returncode == 2
    assert f"{bad}:4: dataset.replicas: unknown key 'replicas'" in r.stderr


def test_query_flags_methods_and_label_removals_are_said_not_ignored(
    hub: HubProcess, tmp_path: Path
) -> None:
    """`?rotate_token=yes` rotated nothing and said nothing; `?watch=maybe` listed; a 405
    named no method; removing a label key no cluster can have did nothing, silently."""
    register_fleet(hub, tmp_path)
    headers = {"Authorization": f"Bearer {hub.admin_token}", "Content-Type": "application/json"}
    edge = (CONFIGS / "clusters" / "edge.toml").read_text()
    spec = codec.to_builtins(config.loads(edge).cluster)

    async def go() -> None:
        async with aiohttp.ClientSession(headers=headers) as s:
            api = hub.url + "/api/v1"
            for method, path, body, where in (
                ("POST", "/clusters?rotate_token=yes", spec, "query.rotate_token"),
                ("GET", "/bindings?watch=maybe", None, "query.watch"),
                ("PATCH", "/clusters/edge/labels", {"remove": [""]}, "remove[0]"),
                ("PATCH", "/clusters/edge/labels", {"remove": ["a b"]}, "remove[0]"),
            ):
                async with s.request(method, api + path, json=body) as r:
                    got = await r.json()
                    assert r.status == 400, (path, got)
                    assert [p["path"] for p in got["problems"]] == [where], got
            async with s.post(api + "/clusters?rotate_token=True", json=spec) as r:
                assert r.status == 200 and (await r.json())["token"]  # (True: rotated)
            async with s.patch(api + "/datasets") as r:
                assert r.status == 405 and "GET" in r.headers["Allow"]
                assert "use " in (await r.json())["error"]

    asyncio.run(go())


def test_probes_answer_anyone_and_metrics_and_openapi_take_a_token(
    tmp_path: Path, store_flags: list[str]
) -> None:
    scrape = "m" * 8 + secrets.token_hex(16)
    (tmp_path / "metrics-token").write_text(scrape + "\n")
    toml = f'[hub]\nmetrics_token_file = "{tmp_path / "metrics-token"}"\n'
    with configured_hub(tmp_path, toml, store_flags) as hub:
        admin = {"Authorization": f"Bearer {hub.admin_token}"}
        scraper = {"Authorization": f"Bearer {scrape}"}

        async def status(s: aiohttp.ClientSession, path: str, headers: dict[str, str]) -> int:
            async with s.get(hub.url + path, headers=headers) as r:
                return r.status

        async def go() -> None:
            async with aiohttp.ClientSession() as s:
                # the kubelet's probes carry no token
                assert await status(s, "/healthz", {}) == 200
                assert await status(s, "/readyz", {}) == 200
                # the fleet's figures and the API's shape: only with a token
                assert await status(s, "/metrics", {}) == 401
                assert await status(s, "/openapi.json", {}) == 401
                bad = {"Authorization": "Bearer " + "x" * 40}
                assert await status(s, "/metrics", bad) == 401
                async with s.get(hub.url + "/openapi.json", headers=admin) as r:
                    doc = await r.json()
                    assert "/api/v1/bindings" in doc["paths"]
                    assert "Dataset" in doc["components"]["schemas"]
                for who in (admin, scraper):
                    async with s.get(hub.url + "/metrics", headers=who) as r:
                        assert "fluidfed_hub_requests_total" in await r.text()
                # the metrics token reads /metrics alone (and the probes, as anyone does)
                assert await status(s, "/readyz", scraper) == 200
                assert await status(s, "/openapi.json", scraper) == 403
                assert await status(s, "/api/v1/clusters", scraper) == 403
                assert await status(s, "/api/v1/datasets", scraper) == 403

        asyncio.run(go())


def test_a_request_the_hub_cannot_parse_leaves_no_token_in_its_log(hub: HubProcess) -> None:
    """A header past aiohttp's 8,190 bytes: its error quotes what it read, the token of
    the Authorization header among it, and the hub logged that with a traceback."""
    token = hub.admin_token
    host, port = hub.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            f"GET /api/v1/clusters HTTP/1.1\r\nHost: h\r\n"
            f"Authorization: Bearer {token}{'y' * 9000}\r\n\r\n".encode()
        )
        answer = conn.recv(65536)
    assert answer.split(b" ", 2)[1] == b"400"
    # a header of other than UTF-8: refused (it was a 500, a traceback logged), the probes
    # answered as for anyone
    for path, status in (
        (b"/api/v1/clusters", b"401"),
        (b"/metrics", b"401"),
        (b"/readyz", b"200"),
    ):
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(
                b"GET " + path + b" HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer \xff\xfe\r\n\r\n"
            )
            assert conn.recv(65536).split(b" ", 2)[1] == status, path
    assert hub.errors is not None

    def logged() -> str:
        text = hub.errors.tail(200) if hub.errors else ""
        assert "Error handling request" in text
        return text

    text = eventually_blocking(logged, "the hub's log of the bad request")
    assert token not in text and "Bearer ***" in text
    assert "Traceback" not in text


def test_a_metrics_token_file_that_cannot_be_read_stops_the_hub_with_its_field(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'[hub]\nmetrics_token_file = "{tmp_path / "missing"}"\n')
    r = subprocess.run(
        [sys.executable, "-m", "fluidfed.cli.main", "hub", "serve", "--config", str(cfg),
         "--port", "0", "--data-dir", str(tmp_path / "h")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode != 0
    assert "hub.metrics_token_file" in r.stderr and "metrics token file" in r.stderr, r.stderr


def test_unreachable_hub_exits_1(tmp_path: Path) -> None:
    env = {**os.environ, "FLUIDFED_HUB": "http://127.0.0.1:9", "FLUIDFED_TOKEN": "x"}
    r = subprocess.run(
        [sys.executable, "-m", "fluidfed.cli.main", "get", "clusters"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 1
    assert "cannot reach the hub" in r.stderr


def test_sdk_round_trip_of_selector_placement(hub: HubProcess, tmp_path: Path) -> None:
    register_fleet(hub, tmp_path)

    async def go() -> None:
        async with Client(hub.url, hub.admin_token) as c:
            view = await c.apply_dataset(
                testing.dataset(
                    "edge-only",
                    uri="https://example.org/data",
                    placement=Placement(
                        selector=LabelSelector(match_labels={"fluidfed.io/kind": "edge"})
                    ),
                )
            )
            assert [v.binding.cluster for v in view.bindings] == ["edge"]
            await c.register_cluster(
                testing.cluster("edge2", kind="edge", kubernetes={"in_cluster": True})
            )
            view = await c.get_dataset("edge-only")
            assert [v.binding.cluster for v in view.bindings] == ["edge", "edge2"]

    asyncio.run(go())


def test_a_cluster_that_could_mount_no_dataset_is_refused_and_nothing_is_stored(
    hub: HubProcess,
) -> None:
    """No Fluid CSI and no privileged FUSE sidecar: admission would refuse the cluster's every
    pod, so the hub refuses the cluster, with the field and what to set; the same cluster
    able to mount is registered."""

    async def go() -> None:
        async with Client(hub.url, hub.admin_token) as admin:
            with pytest.raises(APIError) as info:
                await admin.register_cluster(Cluster(name="nowhere", kind="edge"))
            assert info.value.status == 400
            assert "cluster.capabilities.privileged" in str(info.value)
            assert "set privileged = true" in str(info.value)
            assert "nowhere" not in {c.spec.name for c in await admin.list_clusters()}
            await admin.register_cluster(testing.cluster("nowhere", kind="edge"))
            assert "nowhere" in {c.spec.name for c in await admin.list_clusters()}

    asyncio.run(go())


def test_the_largest_spec_the_hub_takes_reaches_the_agents_watch_and_one_past_it_is_refused(
    hub: HubProcess, tmp_path: Path
) -> None:
    """A spec the hub accepts must not fail later: the biggest one (just under
    validation.MAX_SPEC_BYTES) travels whole in a watch event; a bigger one is refused at
    apply with the field where it is big, and nothing stored is lost."""
    tokens = register_fleet(hub, tmp_path)
    note = "n" * (validation.MAX_SPEC_BYTES - 2000)
    big = testing.dataset("big", placement=Placement(clusters=["edge"]))
    big = msgspec.structs.replace(
        big, mounts=[msgspec.structs.replace(big.mounts[0], options={"note": note})]
    )

    async def go() -> None:
        async with Client(hub.url, hub.admin_token) as admin:
            await admin.apply_dataset(big)
            too_big = msgspec.structs.replace(
                big, mounts=[msgspec.structs.replace(big.mounts[0], options={"note": note * 2})]
            )
            with pytest.raises(APIError) as info:
                await admin.apply_dataset(too_big)
            assert info.value.status == 400, info.value
            assert "dataset.mounts[0]" in str(info.value) and "256KiB" in str(info.value)
        async with Client(hub.url, tokens["edge"]) as edge, asyncio.timeout(60):
            async for ev in edge.watch_bindings("edge", revision=0):
                if ev.type == "ADDED" and ev.object is not None:
                    assert ev.object.spec.mounts[0].options["note"] == note
                    break

    asyncio.run(go())
