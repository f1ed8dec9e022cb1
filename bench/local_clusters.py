"""Start-up time and memory of local clusters: one alone, then three in parallel.

    python bench/local_clusters.py

Memory is the summed RSS of each cluster's processes (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok) once it is ready; the three-cluster
figures are reported beside the one-cluster baseline of the same run.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

from devkit.local import binaries, cluster


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def memory(c: cluster.LocalCluster) -> dict[str, float]:
    assert c.state is not None
    return {b: round(rss_mib(p), 1) for b, p in c.state.pids.items()}


async def run(specs: list[tuple[str, cluster.Kind]], base: Path) -> dict[str, object]:
    t0 = time.monotonic()
    clusters = await cluster.up_many(specs, base_dir=base)
    wall = time.monotonic() - t0
    await asyncio.sleep(5)  # let controllers settle before reading memory
    per = {c.name: memory(c) for c in clusters}
    await asyncio.gather(*(c.down() for c in clusters))
    return {
        "clusters": len(specs),
        "wall_s": round(wall, 2),
        "per_cluster_startup_s": {c.name: c.state.startup_seconds for c in clusters if c.state},
        "rss_mib_total": round(sum(sum(m.values()) for m in per.values()), 1),
        "rss_mib_by_process": per,
    }


async def main() -> None:
    await binaries.ensure(print)
    with tempfile.TemporaryDirectory() as tmp:
        one = await run([("one", "standard")], Path(tmp))
        three = await run(
            [("standard", "standard"), ("serverless", "serverless"), ("edge", "edge")], Path(tmp)
        )
    ratio = {
        "wall_3_vs_1": round(float(three["wall_s"]) / float(one["wall_s"]), 2),  # type: ignore[arg-type]
        "rss_3_vs_1": round(float(three["rss_mib_total"]) / float(one["rss_mib_total"]), 2),  # type: ignore[arg-type]
    }
    result = {"one": one, "three": three, "ratios": ratio}
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "local_clusters.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
