"""CPU of one apply placed on N clusters, on an in-process catalog (SQLite, a temporary
directory): the apply's own path (placement, checks, encoding, the commit, the catalog's
update and its watch log), with no watcher; then every cluster's agent listing its bindings
once (what a hub's restart brings). The fan-out bench (hub_fanout.py) measures
delivery too, in whose noise a change of the apply's path is lost.

    python bench/hub_apply.py [--clusters 10000] [--applies 8]

Compare trees by running it with PYTHONPATH at each, alternating.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import uvloop

from fluidfed.models import Capabilities, Cluster, Dataset, KubeAccess, Mount, Placement
from hub.catalog import Catalog
from hub.store import SQLiteStore


async def main(n: int, applies: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cat = Catalog(SQLiteStore(Path(tmp) / "catalog.db"), history=max(10_000, 4 * n))
        await cat.load()
        for i in range(n):
            edge = Cluster(
                name=f"c{i:05d}",
                kind="edge",
                capabilities=Capabilities(privileged=True),
                kubernetes=KubeAccess(in_cluster=True),
            )
            await cat.register_cluster(edge)
        cpu, wall = [], []
        for r in range(applies):
            d = Dataset(name=f"d{r}", mounts=[Mount(uri="s3://bench/data")], placement=Placement())
            c0, w0 = time.process_time(), time.perf_counter()
            await cat.apply_dataset(d)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        # every agent relists (a hub restarted, a watch older than the history): N lists
        c0 = time.process_time()
        listed = sum(len(cat.bindings_of(name)) for name in cat.clusters)
        relist = time.process_time() - c0
        await cat.close()
        await cat.store.close()
    mid = statistics.median(cpu)
    print(
        f"{n} clusters, {applies} applies: CPU per apply median {mid * 1e3:.1f} ms "
        f"(first {cpu[0] * 1e3:.1f}, last {cpu[-1] * 1e3:.1f}), per binding "
        f"{mid / n * 1e6:.2f} µs; wall median {statistics.median(wall) * 1e3:.1f} ms; "
        f"every cluster listing its {listed} bindings: CPU {relist * 1e3:.1f} ms",
        flush=True,
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clusters", type=int, default=10_000)
    ap.add_argument("--applies", type=int, default=8)
    args = ap.parse_args()
    uvloop.run(main(args.clusters, args.applies))
