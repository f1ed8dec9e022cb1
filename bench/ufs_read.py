"""Choosing the under-storage library: obstore and OpenDAL against a raw ranged-GET loop.

    python bench/ufs_read.py [--size-mib 256] [--block-mib 4] [--parallel 8]

One file, served over HTTP with ranged GETs (aiohttp's static handler, in its own process)
and by MinIO over S3 (the libraries sign, the raw loop GETs a presigned URL), is read whole in
fixed blocks with the same parallelism three ways, in the same run: a raw aiohttp
ranged-GET loop (the baseline), obstore, and fluidfed.data.ufs on OpenDAL. Reported: MiB/s (best of three passes) and its ratio to the raw loop,
and CPU seconds per GiB of this process, every thread (median of three): on a node the
reader shares with the application, that decides the throughput through a mount. Bytes
are checked against the source.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import obstore
from obstore.store import HTTPStore

from devkit.local import binaries
from devkit.local.cluster import free_port
from devkit.local.s3 import CREDENTIALS, S3Server
from fluidfed.data import heap, ufs
from fluidfed.models import Mount

SERVER = (
    "import sys; from aiohttp import web; app = web.Application(); "
    "app.router.add_static('/', sys.argv[1]); "
    "web.run_app(app, host='127.0.0.1', port=int(sys.argv[2]), print=None, access_log=None)"
)

Reader = Callable[[int, int], Awaitable[bytes]]


def cpu_seconds() -> float:
    """This process's CPU, every thread (the libraries' own runtimes included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def read_all(read: Reader, size: int, block: int, parallel: int) -> tuple[float, float, str]:
    """(seconds, CPU seconds, sha256) of reading the whole object."""
    sem = asyncio.Semaphore(parallel)
    parts: dict[int, bytes] = {}

    async def one(off: int) -> None:
        async with sem:
            parts[off] = await read(off, min(block, size - off))

    t0, c0 = time.perf_counter(), cpu_seconds()
    await asyncio.gather(*(one(off) for off in range(0, size, block)))
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    digest = hashlib.sha256(b"".join(parts[k] for k in sorted(parts))).hexdigest()
    return elapsed, cpu, digest


async def compare(
    readers: dict[str, Reader], size: int, block: int, parallel: int, want: str
) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name, fn in readers.items():
        best = float("inf")
        cpu = []
        for _ in range(3):
            elapsed, used, digest = await read_all(fn, size, block, parallel)
            cpu.append(used)
            assert digest == want, f"{name} read wrong bytes"
            best = min(best, elapsed)
        results[name] = {
            "MiB_per_s": round(size / 2**20 / best, 1),
            # what a reader costs the cores it shares with the application and the server
            "cpu_s_per_GiB": round(statistics.median(cpu) / (size / 2**30), 2),
        }
    base = results["raw_aiohttp"]["MiB_per_s"]
    for r in results.values():
        r["vs_raw"] = round(r["MiB_per_s"] / base, 2)
    return results


async def s3_readers(
    tmp: str, data: bytes, session: aiohttp.ClientSession, stack: contextlib.ExitStack
) -> dict[str, Reader]:
    """MinIO on loopback (devkit.local.s3): the libraries sign their requests, the raw
    loop GETs a presigned URL."""
    server = S3Server(Path(tmp) / "minio").start()
    stack.callback(server.stop)
    await server.upload({"big.bin": data})
    url = await server.presign("big.bin")

    async def raw(off: int, n: int) -> bytes:
        async with session.get(url, headers={"Range": f"bytes={off}-{off + n - 1}"}) as r:
            return await r.read()

    store = server.store()

    async def via_obstore(off: int, n: int) -> bytes:
        return bytes(await obstore.get_range_async(store, "big.bin", start=off, length=n))

    mount = Mount(uri=server.uri(""), options={"endpoint": server.endpoint})
    reader = ufs.open_ufs(mount, env=CREDENTIALS)

    async def via_ufs(off: int, n: int) -> bytes:
        return await reader.read("big.bin", off, n)

    return {"raw_aiohttp": raw, "obstore": via_obstore, "fluidfed.data.ufs (opendal)": via_ufs}


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--block-mib", type=int, default=4)
    ap.add_argument("--parallel", type=int, default=8)
    args = ap.parse_args()
    size, block = args.size_mib * 2**20, args.block_mib * 2**20
    heap.tune()  # the allocator settings of the sidecar and the workers that use these readers
    with tempfile.TemporaryDirectory() as tmp:
        data = os.urandom(size)
        Path(tmp, "big.bin").write_bytes(data)
        want = hashlib.sha256(data).hexdigest()
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-c", SERVER, tmp, str(port)])
        await asyncio.sleep(1.5)
        url = f"http://127.0.0.1:{port}"
        try:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.parallel))

            async def raw(off: int, n: int) -> bytes:
                headers = {"Range": f"bytes={off}-{off + n - 1}"}
                async with session.get(f"{url}/big.bin", headers=headers) as r:
                    return await r.read()

            http_store = HTTPStore.from_url(url, client_options={"allow_http": True})

            async def via_obstore(off: int, n: int) -> bytes:
                got = await obstore.get_range_async(http_store, "big.bin", start=off, length=n)
                return bytes(got)

            reader = ufs.open_ufs(Mount(uri=f"{url}/"))

            async def via_ufs(off: int, n: int) -> bytes:
                return await reader.read("big.bin", off, n)

            results = {
                "http": await compare(
                    {
                        "raw_aiohttp": raw,
                        "obstore": via_obstore,
                        "fluidfed.data.ufs (opendal)": via_ufs,
                    },
                    size,
                    block,
                    args.parallel,
                    want,
                )
            }
            if (binaries.cache_dir() / "minio").exists():
                with contextlib.ExitStack() as stack:
                    readers = await s3_readers(tmp, data, session, stack)
                    results["s3_minio"] = await compare(readers, size, block, args.parallel, want)
            await session.close()
        finally:
            proc.terminate()
            proc.wait()
    print(json.dumps(results, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "ufs_read.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
