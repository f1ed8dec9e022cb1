"""Cold sequential reads through fresh sidecars of several source trees, alternated in one run.

    python bench/cold_trees.py --trees main=/work/base,new=. [--runs 5] [--size-mib 512]
        [--env 'new:GLIBC_TUNABLES=glibc.malloc.hugetlb=1;X=1'] [--perf new]

bench/read_path.py's cold part (MinIO on loopback, a fresh sidecar per run, no workers,
fio 1 MiB sequential, the raw ranged-GET loop with the same parallelism before each round)
with each round reading once through a sidecar of every tree, their order rotating. Per
read: MiB/s, the sidecar's CPU seconds and minor page faults per GiB, MinIO's CPU. Each
tree's sidecar runs with PYTHONPATH set to the tree and PYTHONSAFEPATH (bench/peers.py,
`pythonpath`); `--env` adds variables to one tree's sidecars (the same tree may be listed
twice under two names). `--perf NAME[:NAME]`: after the rounds, one more read per named tree
under `perf record -g` of its sidecar, written to perf-NAME.data in the working directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import read_path as rp

from devkit.local.s3 import CREDENTIALS, S3Server


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trees", required=True, help="name=path,name=path")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--env", default="", help="name:K=V;K=V, comma-separated per tree")
    ap.add_argument("--perf", default="", help="tree names, colon-separated")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.trees.split(","))
    extra: dict[str, dict[str, str]] = {}
    for item in filter(None, args.env.split(",")):
        name, kvs = item.split(":", 1)
        extra[name] = dict(kv.split("=", 1) for kv in kvs.split(";"))
    size = args.size_mib * 2**20
    os.environ.update(CREDENTIALS)
    root = Path(tempfile.mkdtemp(prefix="fluidfed-cold-trees-"))
    server = S3Server(root / "minio").start()
    assert server.proc is not None
    print("load average at start", os.getloadavg(), flush=True)
    results: dict[str, list[tuple[float, float, float, float]]] = {n: [] for n in trees}
    raw: list[float] = []
    try:
        asyncio.run(server.upload({"big.bin": os.urandom(size)}, prefix="data"))
        mount = {"uri": server.uri("data"), "options": {"endpoint": server.endpoint}}
        url = asyncio.run(server.presign("data/big.bin"))
        parallel = rp.READAHEAD + 1
        asyncio.run(rp.raw_get_loop(url, size, parallel))

        def one(name: str, tag: str, perf: bool = False) -> tuple[float, float, float, float]:
            with rp.pythonpath(trees[name], extra.get(name, {})):
                sc = rp.sidecar(root, f"{name}-{tag}", mount, [])
            try:
                assert sc.proc is not None and server.proc is not None
                pid = sc.proc.pid
                recorder: subprocess.Popen[Any] | None = None
                if perf:
                    argv = ["perf", "record", "-F", "999", "-g", "-p", str(pid)]
                    recorder = subprocess.Popen(
                        [*argv, "-o", f"perf-{name}.data"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    time.sleep(1.0)
                faults = rp.minor_faults(pid)
                meter = rp.CPU({"sidecar": pid, "minio": server.proc.pid})
                mib_s = rp.fio(sc.mountpoint / "big.bin", "read", "1M", size=size)["MiB_per_s"]
                cpu = meter.per_gib(size)
                faults = int((rp.minor_faults(pid) - faults) / (size / 2**30))
                if recorder is not None:
                    recorder.send_signal(signal.SIGINT)
                    recorder.wait()
                return mib_s, cpu["sidecar_cpu_s_per_GiB"], faults, cpu["minio_cpu_s_per_GiB"]
            finally:
                sc.stop()

        for n in trees:  # a read of each first, not counted
            one(n, "warmup")
        for r in range(args.runs):
            raw.append(asyncio.run(rp.raw_get_loop(url, size, parallel)))
            order = list(trees)
            order = order[r % len(order) :] + order[: r % len(order)]
            for n in order:
                got = one(n, f"r{r}")
                results[n].append(got)
                print(
                    f"round {r} {n}: {got[0]:.0f} MiB/s, sidecar {got[1]:.2f} CPU-s/GiB, "
                    f"{got[2]} minor faults/GiB, MinIO {got[3]:.2f}; raw GET loop {raw[-1]:.0f}",
                    flush=True,
                )
        for n in filter(None, args.perf.split(":")):
            one(n, "perf", perf=True)
        print("load average at end", os.getloadavg())
        raw_m = statistics.median(raw)
        print(f"raw GET loop: median {raw_m:.0f} MiB/s, runs {[round(x) for x in raw]}")
        for n, xs in results.items():
            mib_s = statistics.median(x[0] for x in xs)
            cpu_m = statistics.median(x[1] for x in xs)
            faults_m = statistics.median(x[2] for x in xs)
            print(
                f"{n}: median {mib_s:.0f} MiB/s (ratio to the raw loop {mib_s / raw_m:.3f}), "
                f"sidecar {cpu_m:.2f} CPU-s/GiB, {faults_m:.0f} minor faults/GiB; "
                f"runs {[round(x[0]) for x in xs]}, CPU {[x[1] for x in xs]}"
            )
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
