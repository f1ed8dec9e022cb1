"""Autoscaling end to end: a real sidecar and cache worker export OTLP to the serverless
agent, the agent's window turns it into figures for the hub, the hub's decision moves the
binding's replicas and the agent scales the StatefulSet. A short spike changes nothing;
sustained reads scale up; idleness scales down after the window. The Prometheus endpoints
carry the same figures as the OTLP stream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from prometheus_client.parser import text_string_to_metric_families

from devkit.local import secrets
from devkit.local.cluster import free_port
from devkit.local.processes import SidecarProcess, WorkerProcess, on_loopback
from devkit.testing import eventually
from fluidfed.models import (
    Access,
    AutoscalePolicy,
    AutoscaleTarget,
    CacheSpec,
    CacheTier,
    Mount,
    Placement,
)
from fluidfed.units import ByteSize, Duration
from tests.integration import sources
from tests.integration.conftest import Fleet, cli, dataset

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
]


class Reader:
    """Reads every file of the mount over and over, past the kernel's page cache."""

    def __init__(self, mnt: Path) -> None:
        self.mnt = mnt
        self.stop = threading.Event()
        self.bytes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        files = [p for p in self.mnt.rglob("*") if p.is_file()]
        while not self.stop.is_set():
            self.once(files)

    def once(self, files: list[Path] | None = None) -> None:
        """Every file read once (or until stopped)."""
        for p in files if files is not None else [p for p in self.mnt.rglob("*") if p.is_file()]:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                while chunk := os.read(fd, 1 << 20):
                    self.bytes += len(chunk)
            finally:
                os.close(fd)
            if self.stop.is_set():
                return

    def run_for(self, seconds: float) -> None:
        self.thread.start()
        time.sleep(seconds)
        self.stop.set()
        self.thread.join(10)


def fetch_json(url: str, token: str) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def prometheus(url: str, token: str = "") -> dict[str, float]:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(
        urllib.request.Request(f"{url}/metrics", headers=auth), timeout=10
    ) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


async def test_reads_scale_the_cache_workers_up_and_idleness_scales_them_down(
    fleet: Fleet, apis: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "300")  # milliseconds
    data = sources.make_dataset(tmp_path / "data", count=40, seed=5)
    agent = fleet.agents["serverless"]
    api_port = free_port()
    agent.stop()
    agent.write_config(api_port=str(api_port), metrics_window='"3s"')
    agent.start()

    name = "busy"
    home = f"{name}-home"
    policy = AutoscalePolicy(
        targets=[AutoscaleTarget(metric="read_throughput_per_worker", target=20e6)],
        min_replicas=1,
        max_replicas=3,
        scale_up_window=Duration(6),
        scale_down_window=Duration(6),
    )
    spec = dataset(
        name,
        mounts=[Mount(uri=f"file://{data}")],
        placement=Placement(clusters=["serverless"]),
        access=[Access(namespace=home)],
        cache=CacheSpec(
            replicas=1,
            block_size=ByteSize(2**20),
            tiers=[CacheTier(medium="MEM", quota=ByteSize(256 * 2**20))],
        ),
        autoscale=policy,
    )
    async with fleet.admin() as hub:
        await hub.apply_dataset(spec)
    core, apps = client.CoreV1Api(apis["serverless"]), client.AppsV1Api(apis["serverless"])

    async def configs() -> Any:
        try:
            cm = await core.read_namespaced_config_map(f"fluidfed-{name}", home)
        except client.ApiException:
            return None
        side = json.loads(cm.data["sidecar.json"])
        return cm if side.get("agent") == f"http://127.0.0.1:{api_port}" else None

    cm = await eventually(configs, "configs naming the agent's API")
    wport = free_port()
    urls = [f"http://127.0.0.1:{wport}"]
    wcfg = on_loopback(json.loads(cm.data["worker.json"]), urls)
    scfg = on_loopback(json.loads(cm.data["sidecar.json"]), urls)
    # the binding's credentials, from the Secrets the agent made, as the pods mount them
    keys = await secrets.worker_credentials(apis["serverless"], home, name)
    token = await secrets.reader_token(apis["serverless"], home, name)
    assert keys is not None and token
    worker = WorkerProcess(tmp_path / "w", wcfg, wport, creds=keys).start()
    sc = SidecarProcess(tmp_path / "sc", scfg, tmp_path / "mnt", token=token).start()

    async def replicas() -> int:
        sts = await apps.read_namespaced_stateful_set(f"fluidfed-{name}-cache", home)
        return int(sts.spec.replicas)

    async def figures() -> Any:
        v = await fleet.view(name)
        st = v.bindings[0].status
        return st.metrics if st and st.metrics.read_bytes_per_second is not None else None

    try:
        await eventually(figures, "metrics from the data path at the hub")
        assert await replicas() == 1

        # a short spike inside the scale-up window changes nothing, though the hub saw
        # the figures pass the target (or the check would prove nothing)
        peak = 0.0

        async def watch_peak() -> None:
            nonlocal peak
            while True:
                m = await figures()
                peak = max(peak, (m.read_bytes_per_second or 0.0) if m else 0.0)
                await asyncio.sleep(0.2)

        # (the files read once before, and that read out of the hub's window: the spike
        # then reads them from the worker's memory, hundreds of MB in its second; its
        # first, cold pass, on a CI machine starting clusters, read 25 MB there, which the
        # hub saw as 17.8 MB/s)
        await asyncio.to_thread(Reader(sc.mountpoint).once)
        await eventually(lambda: _reads_below(figures, 20e6), "the first pass out of the window")
        assert await replicas() == 1
        watching = asyncio.create_task(watch_peak())
        spike = Reader(sc.mountpoint)
        await asyncio.to_thread(spike.run_for, 1.0)
        await asyncio.sleep(8)
        watching.cancel()
        print(f"spike: {spike.bytes / 1e6:.1f} MB in 1 s, the hub's peak {peak / 1e6:.1f} MB/s")
        assert peak > 20e6, f"the spike read {spike.bytes} bytes; the hub saw at most {peak}"
        assert await replicas() == 1
        async with fleet.admin() as hub:
            assert all(b.binding.replicas == 1 for b in (await hub.get_dataset(name)).bindings)

        # sustained reads: the throughput per worker passes its target, workers are added
        load = Reader(sc.mountpoint)
        load.thread.start()
        try:
            await eventually(lambda: _at_least(replicas, 2), "scale-up", timeout=40)
        except AssertionError:
            # shown by pytest: what the hub knew and decided
            print(cli(fleet.hub, "describe", "dataset", name).stdout)
            raise
        finally:
            load.stop.set()
            load.thread.join(10)
        assert load.bytes > 0

        # the same figures over Prometheus as over OTLP, once the last export went out
        await asyncio.sleep(1.5)
        with pytest.raises(urllib.error.HTTPError) as refused:  # (no token: 401)
            await asyncio.to_thread(prometheus, sc.status_url)
        assert refused.value.code == 401
        prom = await asyncio.to_thread(prometheus, sc.status_url, token)
        got = await asyncio.to_thread(
            fetch_json, f"http://127.0.0.1:{api_port}/v1/metrics?dataset={name}", token
        )
        otlp = got["latest"]["fluidfed-sidecar"]
        prom_bytes = next(v for k, v in prom.items() if k.startswith("fluidfed_read_bytes"))
        assert prom_bytes == otlp["fluidfed.read.bytes"] > 0
        with pytest.raises(urllib.error.HTTPError) as refused:  # (no token: 401)
            await asyncio.to_thread(prometheus, worker.url)
        assert refused.value.code == 401
        wprom = await asyncio.to_thread(prometheus, worker.url, token)
        assert any(k.startswith("fluidfed_cache_used") for k in wprom)

        # idle: back to the minimum once the scale-down window has passed
        await eventually(lambda: _at_most(replicas, 1), "scale-down", timeout=60)
        shown = cli(fleet.hub, "describe", "dataset", name)
        assert "scale up 1 -> " in shown.stdout and "scale down" in shown.stdout, shown.stdout
        assert "Metrics" in shown.stdout
    finally:
        sc.close()
        worker.stop(signal.SIGKILL)


async def _at_least(get: Any, n: int) -> bool:
    return bool(await get() >= n)


async def _at_most(get: Any, n: int) -> bool:
    return bool(await get() <= n)


async def _reads_below(figures: Any, rate: float) -> bool:
    m = await figures()
    return m is not None and (m.read_bytes_per_second or 0.0) < rate
