"""`fluidfed dataset load`, end to end: the hub records the warm-up, the serverless cluster's
agent drives its cache workers (real `fluidfed worker serve` processes, configured from the
worker.json the agent wrote into the cluster, registered with the agent's API), the CLI
shows the progress, and a sidecar mounted afterwards finds every block cached."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from devkit.local import secrets
from devkit.local.cluster import free_port
from devkit.local.processes import SidecarProcess, WorkerProcess, on_loopback
from devkit.testing import eventually
from fluidfed.models import Access, CacheSpec, CacheTier, Mount, Placement
from fluidfed.units import ByteSize
from tests.integration import sources
from tests.integration.conftest import Fleet, cli, dataset

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
]

BLOCK = 2**20


async def test_dataset_load_warms_the_workers_and_reports_progress(
    fleet: Fleet, apis: dict[str, Any], tmp_path: Path
) -> None:
    data = sources.make_dataset(tmp_path / "data", count=120, seed=3)
    want = sources.files(data)
    blocks = sum((len(v) + BLOCK - 1) // BLOCK for v in want.values())

    # the serverless agent serves its API on a known port, so workers can find it
    agent = fleet.agents["serverless"]
    api_port = free_port()
    agent.stop()
    agent.write_config(api_port=str(api_port), on_change_interval='"1s"')
    agent.start()

    name = "warm"
    spec = dataset(
        name,
        mounts=[Mount(uri=f"file://{data}")],
        placement=Placement(clusters=["serverless"]),
        access=[Access(namespace=f"{name}-home")],  # the whole dataset
        cache=CacheSpec(
            replicas=2,
            block_size=ByteSize(BLOCK),
            tiers=[CacheTier(medium="MEM", quota=ByteSize(512 * 2**20))],
        ),
    )
    async with fleet.admin() as hub:
        await hub.apply_dataset(spec)

    # the worker config as the agent wrote it into the cluster, pointing at the agent
    core = client.CoreV1Api(apis["serverless"])

    async def worker_json() -> Any:
        try:
            cm = await core.read_namespaced_config_map(f"fluidfed-{name}", f"{name}-home")
        except client.ApiException:
            return None
        cfg = json.loads(cm.data["worker.json"])
        return cfg if cfg.get("agent") == f"http://127.0.0.1:{api_port}" else None

    cfg = await eventually(worker_json, "worker.json naming the agent's API")
    assert cfg["workers"]["statefulset"] == f"fluidfed-{name}-cache"
    # the binding's credentials, from the Secrets the agent made, as the pods mount them
    keys = await secrets.worker_credentials(apis["serverless"], f"{name}-home", name)
    token = await secrets.reader_token(apis["serverless"], f"{name}-home", name)
    assert keys is not None and token
    # here the pods are processes on loopback rather than the StatefulSet's pods
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    cfg = on_loopback(cfg, urls)
    workers = [
        WorkerProcess(tmp_path / f"w{i}", cfg, p, creds=keys).start() for i, p in enumerate(ports)
    ]
    try:
        # asking about a cluster the dataset is not on is refused, and changes nothing
        bad = cli(fleet.hub, "dataset", "load", name, "--cluster", "edge")
        assert bad.returncode == 2
        assert "not placed on edge" in bad.stderr and "serverless" in bad.stderr

        r = cli(fleet.hub, "dataset", "load", name, "--cluster", "serverless", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "serverless: Done, 100.0% cached" in r.stdout
        assert f"({blocks}/{blocks} blocks" in r.stdout

        shown = cli(fleet.hub, "describe", "dataset", name)
        assert "Warm-up" in shown.stdout and "Done" in shown.stdout

        # a path the dataset does not have is an error that names it, not "100% of 0"
        r = cli(fleet.hub, "dataset", "load", name, "--path", "no/such/dir", timeout=180)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "serverless: Failed" in r.stdout and "nothing under 'no/such/dir'" in r.stdout
        # a schedule that is no cron schedule is refused before anything is asked
        r = cli(fleet.hub, "dataset", "load", name, "--schedule", "0 */6 * *")
        assert r.returncode == 2 and "--schedule" in r.stderr and "has 4 fields" in r.stderr

        async def cache_reported() -> Any:
            v = await fleet.view(name)
            st = v.bindings[0].status
            return st if st and st.cache_used >= sum(len(x) for x in want.values()) else None

        await eventually(cache_reported, "cache figures reported by the workers")
        # the load of the whole dataset measured the under storage: Fluid's columns
        total = sum(len(x) for x in want.values())
        assert (await fleet.view(name)).ufs_total == total
        shown = cli(fleet.hub, "get", "datasets", name)
        assert "UFS TOTAL SIZE" in shown.stdout and "100.0%" in shown.stdout, shown.stdout

        # a pod mounting the dataset now reads every block from the warm workers
        side = {
            "dataset": name,
            "mounts": cfg["mounts"],
            "block_size": BLOCK,
            "workers": {"endpoints": urls},
        }
        sc = SidecarProcess(tmp_path / "sc", side, tmp_path / "mnt", token=token).start()
        try:
            for rel, body in want.items():
                assert (sc.mountpoint / rel).read_bytes() == body
            got = sc.status()["blocks"]
            assert got["worker_hits"] == blocks
            assert got["worker_misses"] == 0
        finally:
            sc.close()

        # --on-change: loaded now, and again as the under storage changes: a new object is
        # pulled by the next round, without being asked
        r = cli(fleet.hub, "dataset", "load", name, "--on-change", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "whenever its under storage changes" in r.stdout
        late = os.urandom(3 * BLOCK)
        (data / "late").mkdir()
        (data / "late" / "new.bin").write_bytes(late)

        async def pulled() -> Any:
            v = await fleet.view(name)
            ld = v.bindings[0].status.load if v.bindings[0].status else None
            return ld if ld and ld.phase == "Done" and ld.blocks == blocks + 3 else None

        ld = await eventually(pulled, "the changed under storage loaded", timeout=60)
        assert ld.cached == blocks + 3

        async def remeasured() -> bool:
            return (await fleet.view(name)).ufs_total == total + len(late)

        await eventually(remeasured, "the under storage's new size")
    finally:
        for w in workers:
            w.stop(signal.SIGKILL)
