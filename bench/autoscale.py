"""Autoscaling: how fast a step in reads becomes more cache workers, and what the
instruments cost on the read path.

    python bench/autoscale.py [--runs 3]

1. Reaction time, default settings (components export every 5 s, the agent's window is
   15 s, the hub decides when figures arrive): a real local serverless cluster, a hub,
   its agent, a cache worker and a FUSE sidecar as processes; from the first read of a
   sustained load to the StatefulSet's new replicas. Reported beside what a Fluid user
   lives with: the HPA's 15 s sync period plus a 30 s Prometheus scrape interval (scale-up
   can take up to ~45 s plus the adapter's own cache) and its 5 minute scale-down window.
   Goal: within two export intervals (10 s) of the step.
2. Instruments' cost: warm reads through the mount (blocks in the sidecar's memory, page
   cache dropped before each file) with metrics on and with `OTEL_SDK_DISABLED=true`,
   same run, alternating. Goal: under 3% lower with metrics on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from devkit.local import cluster, secrets
from devkit.local.processes import (
    LOCAL_KEY,
    AgentProcess,
    SidecarProcess,
    WorkerProcess,
    on_loopback,
)
from devkit.testing import HubProcess
from fluidfed import Client
from fluidfed.models import (
    Access,
    AutoscalePolicy,
    AutoscaleTarget,
    CacheSpec,
    CacheTier,
    Dataset,
    Mount,
    Placement,
)
from fluidfed.units import ByteSize, Duration

MiB = 2**20


def make_data(root: Path, files: int, size: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{i:03d}.bin").write_bytes(os.urandom(size))
    return root


def read_loop(mnt: Path, stop: threading.Event, out: list[int]) -> None:
    files = sorted(p for p in mnt.rglob("*") if p.is_file())
    total = 0
    while not stop.is_set():
        for p in files:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                while chunk := os.read(fd, MiB):
                    total += len(chunk)
            finally:
                os.close(fd)
    out.append(total)


async def reaction(base: Path, runs: int) -> dict[str, Any]:
    data = make_data(base / "data", 16, 4 * MiB)
    (lc,) = await cluster.up_many([("serverless", "serverless")], base_dir=base / "clusters")
    hub = HubProcess(base / "hub").start()
    api_port = cluster.free_port()
    agent = AgentProcess(
        base,
        "serverless",
        "serverless",
        str(lc.kubeconfig_path),
        hub.url,
        hub.admin_token,
        capabilities={"privileged": True},
    )
    agent.write_config(api_port=str(api_port))
    agent.start()
    procs: list[Any] = []
    times: list[float] = []
    try:
        policy = AutoscalePolicy(
            targets=[AutoscaleTarget(metric="read_throughput_per_worker", target=20e6)],
            min_replicas=1,
            max_replicas=2,
            scale_down_window=Duration(10),  # only so that runs can follow each other quickly
        )
        ds = Dataset(
            name="bench",
            namespace="bench",
            mounts=[Mount(uri=f"file://{data}")],
            placement=Placement(clusters=["serverless"]),
            access=[Access(namespace="bench")],
            cache=CacheSpec(replicas=1, tiers=[CacheTier(medium="MEM", quota=ByteSize(512 * MiB))]),
            autoscale=policy,
        )
        async with Client(hub.url, hub.admin_token) as c:
            for _ in range(100):
                if [x for x in (await c.list_clusters()) if x.spec.name == "serverless"]:
                    break
                await asyncio.sleep(0.2)
            await c.apply_dataset(ds)
        api = await lc.api_client()
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        cm: Any = None
        for _ in range(300):
            try:
                cm = await core.read_namespaced_config_map("fluidfed-bench", "bench")
                if json.loads(cm.data["sidecar.json"]).get("agent"):
                    break
            except client.ApiException:
                pass
            await asyncio.sleep(0.2)
        wport = cluster.free_port()
        urls = [f"http://127.0.0.1:{wport}"]
        wcfg = on_loopback(json.loads(cm.data["worker.json"]), urls)
        scfg = on_loopback(json.loads(cm.data["sidecar.json"]), urls)
        # their credentials from the agent's Secrets, as the pods would mount them
        creds = await secrets.worker_credentials(api, "bench", "bench")
        token = await secrets.reader_token(api, "bench", "bench")
        procs.append(WorkerProcess(base / "w", wcfg, wport, creds=creds).start())
        sc = SidecarProcess(base / "sc", scfg, base / "mnt", token=token).start()
        procs.append(sc)

        async def replicas() -> int:
            sts = await apps.read_namespaced_stateful_set("fluidfed-bench-cache", "bench")
            return int(sts.spec.replicas)

        for run in range(runs):
            # idle until the window has forgotten the last load and we are back at 1
            deadline = time.monotonic() + 600
            while await replicas() != 1 and time.monotonic() < deadline:
                await asyncio.sleep(1)
            await asyncio.sleep(20)
            stop, got = threading.Event(), list[int]()
            t = threading.Thread(target=read_loop, args=(sc.mountpoint, stop, got), daemon=True)
            t0 = time.monotonic()
            t.start()
            while await replicas() < 2:
                await asyncio.sleep(0.1)
            times.append(time.monotonic() - t0)
            stop.set()
            t.join(30)
            print(f"run {run + 1}: scaled up {times[-1]:.1f}s after the step", flush=True)
        await api.close()
    finally:
        for p in procs:
            p.close()
        agent.stop()
        hub.stop()
        await lc.down()
    return {
        "scale_up_seconds": [round(x, 2) for x in times],
        "median_s": round(statistics.median(times), 2),
        "export_interval_s": 5,
        "goal": "<= 10 s (two export intervals)",
        "reference_hpa_prometheus": "15 s sync + 30 s scrape: up to ~45 s; scale-down window 300 s",
    }


def start_receiver() -> str:
    """The agent's OTLP receiver (its API app) on a loopback port, in a thread."""
    from aiohttp import web

    from agents import api
    from agents.registry import Registry

    port = cluster.free_port()
    ready = threading.Event()

    def serve() -> None:
        async def main() -> None:
            keys = [LOCAL_KEY]  # the sidecars' and workers' local key
            runner = web.AppRunner(api.make_app(Registry(), lambda _: keys), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            ready.set()
            await asyncio.Event().wait()

        asyncio.run(main())

    threading.Thread(target=serve, daemon=True).start()
    ready.wait(10)
    return f"http://127.0.0.1:{port}"


def instruments_cost(base: Path, seconds: float, rounds: int) -> dict[str, Any]:
    data = make_data(base / "warm", 8, 16 * MiB)
    cfg = {
        "dataset": "cost",
        "mounts": [{"uri": f"file://{data}"}],
        "block_size": 4 * MiB,
        "cache": [{"medium": "MEM", "quota": "512MiB"}],
        "agent": "",
    }
    rates: dict[str, list[float]] = {"on": [], "off": []}
    receiver = start_receiver()
    for r in range(rounds):
        # alternate which goes first, so warm-up effects do not favour one side
        for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
            if mode == "off":
                os.environ["OTEL_SDK_DISABLED"] = "true"
            else:
                os.environ.pop("OTEL_SDK_DISABLED", None)
            # metrics "on" also exports, to a real receiver (the agent's API, in a thread)
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver
            sc = SidecarProcess(
                base / f"cost-{mode}-{r}", cfg, base / f"cost-mnt-{mode}-{r}"
            ).start()
            try:
                warm: list[int] = []
                stop = threading.Event()
                t = threading.Thread(target=read_loop, args=(sc.mountpoint, stop, warm))
                t.start()
                time.sleep(2)  # fill the sidecar's memory tier
                stop.set()
                t.join()
                got: list[int] = []
                stop = threading.Event()
                t = threading.Thread(target=read_loop, args=(sc.mountpoint, stop, got))
                t0 = time.monotonic()
                t.start()
                time.sleep(seconds)
                stop.set()
                t.join()
                rates[mode].append(got[0] / MiB / (time.monotonic() - t0))
            finally:
                sc.close()
    os.environ.pop("OTEL_SDK_DISABLED", None)
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    return {
        "warm_MiB_per_s_metrics_on": round(on, 1),
        "warm_MiB_per_s_metrics_off": round(off, 1),
        "cost": f"{(1 - on / off) * 100:.1f}%",
        "goal": "< 3%",
        "rounds": {k: [round(x) for x in v] for k, v in rates.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="fluidfed-bench-autoscale-"))
    results = {"instruments": instruments_cost(base, args.seconds, args.rounds)}
    print(json.dumps(results, indent=2), flush=True)
    results["reaction"] = asyncio.run(reaction(base, args.runs))
    print(json.dumps(results, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "autoscale.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
