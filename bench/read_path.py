"""The read path through the FUSE sidecar, each figure against a baseline from the same run.

    python bench/read_path.py [--size-mib 1024] [--files 10000]

Real parts only: MinIO on loopback, `fluidfed worker serve` and `fluidfed sidecar mount`
processes, a FUSE mount through /dev/fuse, fio (Debian's package) for the I/O figures.

    cold      1 GiB sequential through a fresh mount, no workers, from MinIO
              vs a raw ranged-GET loop (presigned URLs, aiohttp) with the same parallelism;
              fio on a local copy as context
    warm      the same through a fresh mount from one cache worker holding every block
              vs reading the worker's block files directly
    reread    the same mount again, kernel page cache warm, vs fio on a cached local file
    random    4 KiB and 128 KiB random reads (IOPS) through a fresh mount backed by the
              warm worker vs the local copy
    metadata  stat / open / readdir per second on 10,000 files through the mount vs direct
    ttfb      time to the first byte of a cold read vs a raw ranged GET
    rss       sidecar RSS beyond what its memory tier holds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import boto3

from fluidfed.local.cluster import free_port
from fluidfed.local.processes import SidecarProcess, WorkerProcess
from fluidfed.local.s3 import CREDENTIALS, PASSWORD, USER, S3Server

BLOCK = 4 * 2**20
READAHEAD = 4


def fio(path: Path, rw: str, bs: str, *, size: int, runtime: int = 0, invalidate: int = 1) -> Any:
    argv = [
        "fio",
        "--name=b",
        f"--filename={path}",
        f"--rw={rw}",
        f"--bs={bs}",
        "--readonly",
        f"--size={size}",
        "--ioengine=psync",
        f"--invalidate={invalidate}",
        "--output-format=json",
    ]
    if runtime:
        argv += [f"--runtime={runtime}", "--time_based"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]["read"]
    return {"MiB_per_s": round(job["bw_bytes"] / 2**20, 1), "iops": round(job["iops"])}


def presign(server: S3Server, key: str) -> str:
    s3 = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=USER,
        aws_secret_access_key=PASSWORD,
    )
    url: str = s3.generate_presigned_url(
        "get_object", Params={"Bucket": server.bucket, "Key": key}, ExpiresIn=3600
    )
    return url


async def raw_get_loop(url: str, size: int, parallel: int) -> float:
    """MiB/s of a ranged-GET loop over the object in BLOCK pieces, `parallel` at a time."""
    sem = asyncio.Semaphore(parallel)
    async with aiohttp.ClientSession() as session:

        async def one(off: int) -> int:
            async with sem:
                rng = f"bytes={off}-{min(off + BLOCK, size) - 1}"
                async with session.get(url, headers={"Range": rng}) as r:
                    return len(await r.read())

        t0 = time.perf_counter()
        got = sum(await asyncio.gather(*(one(o) for o in range(0, size, BLOCK))))
        dt = time.perf_counter() - t0
    assert got == size
    return size / 2**20 / dt


async def raw_ttfb(urls: list[str]) -> float:
    out = []
    async with aiohttp.ClientSession() as session:
        for url in urls:
            t0 = time.perf_counter()
            async with session.get(url, headers={"Range": "bytes=0-4095"}) as r:
                await r.read()
            out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1000


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sidecar(
    root: Path, name: str, mount: dict[str, Any], workers: list[str], **kw: Any
) -> SidecarProcess:
    cfg = {
        "dataset": "bench",
        "mounts": [mount],
        "block_size": BLOCK,
        "workers": {"endpoints": workers},
        "readahead": READAHEAD,
        "cache": [{"medium": "MEM", "quota": "128MiB"}],
        **kw,
    }
    return SidecarProcess(root / name, cfg, root / f"{name}-mnt").start()


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10_000)
    args = ap.parse_args()
    size = args.size_mib * 2**20
    os.environ.update(CREDENTIALS)
    results: dict[str, Any] = {"size_mib": args.size_mib, "block_mib": BLOCK // 2**20}
    root = Path(tempfile.mkdtemp(prefix="fluidfed-bench-"))
    server = S3Server(root / "minio").start()
    procs: list[Any] = []
    try:
        local = root / "local"
        local.mkdir()
        big = local / "big.bin"
        with open(big, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(2**20))
        ttfb_objects = {f"ttfb/{i}.bin": os.urandom(2**20) for i in range(20)}
        print(f"uploading {args.size_mib} MiB to MinIO ...", file=sys.stderr)
        asyncio.run(server.upload({"big.bin": big.read_bytes(), **ttfb_objects}, prefix="data"))
        mount = {"uri": server.uri("data"), "options": {"endpoint": server.endpoint}}

        # (a) cold: straight from MinIO, vs a raw ranged-GET loop with the same parallelism
        parallel = READAHEAD + 1
        raw = max(
            asyncio.run(raw_get_loop(presign(server, "data/big.bin"), size, parallel))
            for _ in range(2)
        )
        cold_sc = sidecar(root, "cold", mount, [])
        procs.append(cold_sc)
        cold = fio(cold_sc.mountpoint / "big.bin", "read", "1M", size=size)
        st = cold_sc.status()
        rss_extra = rss_mib(cold_sc.proc.pid) - st["cache"]["used"] / 2**20  # type: ignore[union-attr]
        local_fio = fio(big, "read", "1M", size=size, invalidate=0)
        results["cold"] = {
            "mount_MiB_per_s": cold["MiB_per_s"],
            "raw_get_MiB_per_s": round(raw, 1),
            "ratio": ratio(cold["MiB_per_s"], raw),
            "goal": ">= 0.70",
            "context_local_fio_MiB_per_s": local_fio["MiB_per_s"],
        }
        results["rss"] = {
            "sidecar_rss_beyond_memory_tier_MiB": round(rss_extra, 1),
            "goal": "<= 80 MB",
        }
        # (c) re-read: the kernel's page cache is kept for unchanged files
        # best of three: this 2-core machine's noise is larger than the effect measured
        reread = max(
            (
                fio(cold_sc.mountpoint / "big.bin", "read", "1M", size=size, invalidate=0)
                for _ in range(3)
            ),
            key=lambda r: r["MiB_per_s"],
        )
        local_fio = max(
            (fio(big, "read", "1M", size=size, invalidate=0) for _ in range(3)),
            key=lambda r: r["MiB_per_s"],
        )
        results["reread"] = {
            "mount_MiB_per_s": reread["MiB_per_s"],
            "local_cached_MiB_per_s": local_fio["MiB_per_s"],
            "ratio": ratio(reread["MiB_per_s"], local_fio["MiB_per_s"]),
            "goal": ">= 0.90",
        }
        # ttfb: a cold 4 KiB read through the mount vs a raw ranged GET
        mount_ttfb = []
        for key in ttfb_objects:
            t0 = time.perf_counter()
            with open(cold_sc.mountpoint / key, "rb") as f:
                f.read(4096)
            mount_ttfb.append(time.perf_counter() - t0)
        raw_ms = asyncio.run(raw_ttfb([presign(server, f"data/{k}") for k in ttfb_objects]))
        results["ttfb"] = {
            "mount_ms": round(statistics.median(mount_ttfb) * 1000, 2),
            "raw_get_ms": round(raw_ms, 2),
            "goal": "<= raw + 5 ms",
        }
        cold_sc.stop()

        # (b) warm from a cache worker (disk tier, so its block files can be read directly)
        wdir = root / "worker"
        tier = [
            {"medium": "SSD", "quota": f"{2 * args.size_mib + 64}MiB", "path": str(wdir / "ssd")}
        ]
        port = free_port()
        w = WorkerProcess(
            wdir,
            {
                "dataset": "bench",
                "mounts": [mount],
                "block_size": BLOCK,
                "tiers": tier,
                "workers": {"endpoints": [f"http://127.0.0.1:{port}"]},
            },
            port,
        ).start()
        procs.append(w)
        fill = sidecar(root, "fill", mount, [w.url])
        fio(fill.mountpoint / "big.bin", "read", "1M", size=size)
        fill.stop()
        warm_sc = sidecar(root, "warm", mount, [w.url])
        procs.append(warm_sc)
        warm = fio(warm_sc.mountpoint / "big.bin", "read", "1M", size=size)
        assert warm_sc.status()["blocks"]["worker_hits"] > 0
        files = [p for p in (wdir / "ssd").rglob("*") if p.is_file()]
        t0 = time.perf_counter()
        n = sum(len(p.read_bytes()) for p in files)
        direct = n / 2**20 / (time.perf_counter() - t0)
        results["warm"] = {
            "mount_MiB_per_s": warm["MiB_per_s"],
            "worker_block_files_MiB_per_s": round(direct, 1),
            "ratio": ratio(warm["MiB_per_s"], direct),
            "goal": ">= 0.25 and >= 1 GB/s",
        }
        warm_sc.stop()

        # random reads through a fresh mount backed by the warm worker, vs the local copy
        results["random"] = {}
        for bs in ("4k", "128k"):
            sc = sidecar(root, f"rand{bs}", mount, [w.url])
            procs.append(sc)
            through = fio(sc.mountpoint / "big.bin", "randread", bs, size=size, runtime=8)
            direct_r = fio(big, "randread", bs, size=size, runtime=8, invalidate=0)
            results["random"][bs] = {
                "mount_iops": through["iops"],
                "local_iops": direct_r["iops"],
                "ratio": ratio(through["iops"], direct_r["iops"]),
            }
            sc.stop()

        # metadata on many small files (a local directory as the UFS: this is the FUSE path)
        many = root / "many"
        for i in range(args.files):
            d = many / f"d{i % 100:02d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i:05d}").write_bytes(b"x")
        sc = sidecar(root, "meta", {"uri": f"file://{many}"}, [])
        procs.append(sc)
        results["metadata"] = metadata(sc.mountpoint, many)
        sc.stop()
    finally:
        for p in procs:
            p.close()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "read_path.json").write_text(json.dumps(results, indent=2))


def metadata(mnt: Path, direct: Path) -> dict[str, Any]:
    def rate(root: Path, op: str) -> float:
        paths = [
            root / f"d{i % 100:02d}" / f"f{i:05d}" for i in range(len(list(direct.rglob("f*"))))
        ]
        t0 = time.perf_counter()
        if op == "stat":
            for p in paths:
                os.stat(p)
        elif op == "open":
            for p in paths:
                os.close(os.open(p, os.O_RDONLY))
        else:
            for d in sorted(root.iterdir()):
                os.listdir(d)
            return 100 / (time.perf_counter() - t0)
        return len(paths) / (time.perf_counter() - t0)

    out: dict[str, Any] = {}
    out["cold_stat_per_s"] = round(rate(mnt, "stat"))
    for op in ("stat", "open", "readdir"):
        m, d = rate(mnt, op), rate(direct, op)
        out[op] = {"mount_per_s": round(m), "direct_per_s": round(d), "ratio": ratio(m, d)}
    out["goal"] = "warm stat >= 10,000/s"
    return out


if __name__ == "__main__":
    main()
