"""An agent reconciling many datasets into one real local cluster.

    python bench/agent_reconcile.py [--datasets 200]

A hub process, one local serverless cluster (its virtual node takes every pod), N datasets bound to it, and the agent running in
this process (so its Kubernetes request counters can be read). Reported:

* time from the agent's start until every object exists, and until every binding's status
  (Bound: cache workers running) is at the hub;
* Kubernetes API requests and writes per dataset;
* the agent's RSS (this process; the hub runs apart);
* after a restart with nothing to change: time to converge, and writes made (goal: 0).

Baseline, same run: the same objects server-side applied straight from a loop with
kubernetes-asyncio (no hub, no agent), one request per object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from agents import objects, render, trust
from agents.agent import Agent
from agents.kube import Kube, api_client
from devkit.local import cluster
from devkit.testing import HubProcess
from fluidfed import Client
from fluidfed.models import (
    AgentConfig,
    Capabilities,
    Cluster,
    Dataset,
    KubeAccess,
    Mount,
    Placement,
)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def datasets(n: int, ns: str) -> list[Dataset]:
    return [
        Dataset(
            name=f"d{i:04d}",
            namespace=ns,
            mounts=[Mount(uri=f"s3://bench/d{i}")],
            placement=Placement(clusters=["edge"]),
        )
        for i in range(n)
    ]


async def wait_until(check, what: str, within: float = 600) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(0.1)
    return time.monotonic() - t0


async def run(n: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (lc,) = await cluster.up_many([("edge", "serverless")], base_dir=base / "clusters")
        hub = HubProcess(base / "hub").start()
        try:
            spec = Cluster(
                name="edge",
                kind="serverless",
                capabilities=Capabilities(privileged=True),
                kubernetes=KubeAccess(kubeconfig=str(lc.kubeconfig_path)),
            )
            async with Client(hub.url, hub.admin_token) as admin:
                token = (await admin.register_cluster(spec)).token
                for ds in datasets(n, "bench"):
                    await admin.apply_dataset(ds)

            cfg = AgentConfig(cluster_file="-", hub=hub.url, workers=8)
            access = KubeAccess(kubeconfig=str(lc.kubeconfig_path))
            rss_before = rss_mib()

            # --- first start: everything to create ---------------------------------
            kube = await Kube(await api_client(access)).open()
            agent = Agent(cfg, spec, kube, base / "state", token=token)
            t0 = time.monotonic()
            task = asyncio.create_task(agent.run())

            async def objects_exist() -> bool:
                sts = [k for k in agent.live if k[1] == "StatefulSet"]
                return len(sts) >= n

            async def all_reported() -> bool:
                async with Client(hub.url, hub.admin_token) as c:
                    views = await c.list_datasets()
                return (
                    sum(
                        1
                        for v in views
                        for b in v.bindings
                        if b.status and b.status.phase == "Bound"
                    )
                    >= n
                )

            await wait_until(objects_exist, "objects")
            t_objects = time.monotonic() - t0
            await wait_until(all_reported, "statuses")
            t_reported = time.monotonic() - t0
            requests, writes = kube.requests, kube.writes
            rss = rss_mib()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await kube.close()

            # --- restart: nothing to change ----------------------------------------
            kube2 = await Kube(await api_client(access)).open()
            agent2 = Agent(cfg, spec, kube2, base / "state", token=token)
            t1 = time.monotonic()
            task2 = asyncio.create_task(agent2.run())

            async def converged() -> bool:
                return agent2.reconciles >= n and agent2.queue.empty() and not agent2.queued

            await wait_until(converged, "restart")
            t_restart = time.monotonic() - t1
            await asyncio.sleep(2)  # status intervals, watch events: anything written late
            restart_writes = kube2.writes
            restart_requests = kube2.requests
            task2.cancel()
            await asyncio.gather(task2, return_exceptions=True)

            # --- baseline: the same objects applied straight from a loop ------------
            ctx = objects.ClusterContext(name="edge", kind="serverless")
            from fluidfed.data import credentials
            from fluidfed.models import ClusterRecord
            from hub import placement

            objs = []
            for ds in datasets(n, "bench-raw"):
                b = placement.place(ds, 1, [ClusterRecord(spec=spec)], {})["edge"]
                creds = trust.DataCredentials(keys=[credentials.new_key()])
                objs += render.desired(b, ctx, creds)
            seen_ns: set[str] = set()
            t2 = time.monotonic()
            for o in objs:
                if o["kind"] == "Namespace":
                    if o["metadata"]["name"] in seen_ns:
                        continue
                    seen_ns.add(o["metadata"]["name"])
                await kube2.apply(o)
            t_baseline = time.monotonic() - t2
            await kube2.close()
        finally:
            hub.stop()
            await lc.down()
    return {
        "datasets": n,
        "objects_s": round(t_objects, 2),
        "all_reported_bound_s": round(t_reported, 2),
        "kube_requests_per_dataset": round(requests / n, 2),
        "kube_writes_per_dataset": round(writes / n, 2),
        "agent_rss_mib": round(rss, 1),
        "agent_rss_growth_mib": round(rss - rss_before, 1),
        "restart_converge_s": round(t_restart, 2),
        "restart_writes": restart_writes,
        "restart_requests": restart_requests,
        "baseline_direct_apply_s": round(t_baseline, 2),
        "objects_vs_baseline": round(t_objects / t_baseline, 2),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--datasets", type=int, default=200)
    args = ap.parse_args()
    result = await run(args.datasets)
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "agent_reconcile.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
