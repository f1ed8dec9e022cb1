"""The restore case on etcd, with real parts: a hub on a 3-member etcd of its own, a real
agent on a real cluster. `fluidfed hub backup` takes etcd's snapshot; later applies; the
older snapshot is put back into every member (`etcdutl snapshot restore`, its revision
bumped past any a client saw and what came before compacted, as etcd advises); the hub
starts on it: the agent's watch from its revision is answered 410, it lists again and
removes what is no longer bound - as after a restore of the SQLite store."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from agents import objects
from devkit.local import cluster, etcd
from devkit.testing import AgentProcess, HubProcess, eventually, run_cli
from fluidfed import Client, Gone, names
from fluidfed.models import Placement, WatchEvent
from tests.integration.conftest import CAPS, dataset

pytestmark = pytest.mark.integration

ON_EDGE = Placement(clusters=["edge"])


async def test_an_older_etcd_snapshot_restored_agents_relist_and_remove_the_rest(
    tmp_path: Path, local_clusters: dict[str, cluster.LocalCluster]
) -> None:
    members = etcd.EtcdCluster(tmp_path / "etcd").start()  # its own: a restore wipes etcd
    hub = HubProcess(tmp_path / "hub", extra=["--store", members.store_url])
    lc = local_clusters["edge"]
    agent = None
    try:
        hub.start()
        agent = AgentProcess(
            tmp_path, "edge", "edge", str(lc.kubeconfig_path), hub.url, hub.admin_token,
            labels={"env": "test"}, capabilities=CAPS["edge"],
        ).start()  # fmt: skip
        async with await lc.api_client() as api:
            core = client.CoreV1Api(api)

            async def config_maps() -> set[str]:
                got = await core.list_config_map_for_all_namespaces(
                    label_selector=names.OWNED_SELECTOR
                )
                return {cm.metadata.name for cm in got.items}

            async with Client(hub.url, hub.admin_token) as admin:

                async def bound(name: str) -> Any:
                    v = await admin.get_dataset(name)
                    return v.bindings and all(
                        b.status is not None and b.status.phase == "Bound" for b in v.bindings
                    )

                await eventually(admin.list_clusters, "the agent to register")
                await admin.apply_dataset(dataset("kept", placement=ON_EDGE))
                await eventually(lambda: bound("kept"), "'kept' Bound on the edge")

                snap = tmp_path / "catalog.snapshot"
                r = run_cli("hub", "backup", str(snap), "--store", members.store_url)
                assert r.returncode == 0, r.stderr
                assert f"etcd snapshot of {members.store_url} saved to {snap}" in r.stdout

                await admin.apply_dataset(dataset("later", placement=ON_EDGE))
                await eventually(lambda: bound("later"), "'later' Bound on the edge")
                seen = (await admin.get_binding("later.edge")).revision  # the agent saw it
            kept, later = objects.config_name("kept"), objects.config_name("later")
            assert {kept, later} <= await config_maps()
            hub.stop()

            # `hub restore` on etcd says how: the snapshot goes back into etcd's members
            r = run_cli("hub", "restore", str(snap), "--store", members.store_url)
            assert r.returncode == 2 and "etcdutl snapshot restore" in r.stderr, r.stderr
            await asyncio.to_thread(members.restore, snap)
            hub.start()
            async with Client(hub.url, hub.admin_token) as admin:
                # what the agent's watch from there is answered (not a stream that waits)
                with pytest.raises(Gone):
                    await asyncio.wait_for(_drain(admin.watch_bindings("edge", revision=seen)), 60)

            async def later_removed() -> bool:
                names = await config_maps()
                return later not in names and kept in names

            await eventually(later_removed, "'later' removed from the edge, 'kept' left")
        async with Client(hub.url, hub.admin_token) as admin:
            assert [d.spec.name for d in await admin.list_datasets()] == ["kept"]
            assert [b.name for b in (await admin.list_bindings()).items] == ["kept.edge"]
        # listed at start, then again on the 410 from the restored catalog
        assert agent.log_text().count("listed ") == 2, agent.log_text()[-3000:]
    finally:
        if agent is not None:
            agent.stop()
        hub.stop()
        members.stop()


async def _drain(events: AsyncIterator[WatchEvent]) -> None:
    async for _ in events:
        pass
