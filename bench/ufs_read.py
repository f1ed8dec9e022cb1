"""Choosing the under-storage library: obstore and OpenDAL against a raw ranged-GET loop.

    python bench/ufs_read.py [--size-mib 256] [--block-mib 4] [--parallel 8]

One file served over HTTP with ranged GETs (aiohttp's static handler, in its own process)
is read whole in fixed blocks with the same parallelism three ways, in the same run:
a raw aiohttp ranged-GET loop (the baseline), obstore's HTTPStore (fluidfed.ufs), and
OpenDAL's async HTTP operator. Reported: MiB/s and the ratio to the raw loop, best of
three passes each, bytes checked against the source.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import opendal

from fluidfed import ufs
from fluidfed.models import Mount

SERVER = (
    "import sys; from aiohttp import web; app = web.Application(); "
    "app.router.add_static('/', sys.argv[1]); "
    "web.run_app(app, host='127.0.0.1', port=int(sys.argv[2]), print=None, access_log=None)"
)

Reader = Callable[[int, int], Awaitable[bytes]]


async def read_all(read: Reader, size: int, block: int, parallel: int) -> tuple[float, str]:
    sem = asyncio.Semaphore(parallel)
    parts: dict[int, bytes] = {}

    async def one(off: int) -> None:
        async with sem:
            parts[off] = await read(off, min(block, size - off))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(off) for off in range(0, size, block)))
    elapsed = time.perf_counter() - t0
    digest = hashlib.sha256(b"".join(parts[k] for k in sorted(parts))).hexdigest()
    return elapsed, digest


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--block-mib", type=int, default=4)
    ap.add_argument("--parallel", type=int, default=8)
    args = ap.parse_args()
    size, block = args.size_mib * 2**20, args.block_mib * 2**20
    with tempfile.TemporaryDirectory() as tmp:
        data = os.urandom(size)
        Path(tmp, "big.bin").write_bytes(data)
        want = hashlib.sha256(data).hexdigest()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-c", SERVER, tmp, str(port)])
        await asyncio.sleep(1.5)
        url = f"http://127.0.0.1:{port}"
        try:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.parallel))

            async def raw(off: int, n: int) -> bytes:
                headers = {"Range": f"bytes={off}-{off + n - 1}"}
                async with session.get(f"{url}/big.bin", headers=headers) as r:
                    return await r.read()

            reader = ufs.open_ufs(Mount(uri=f"{url}/"))

            async def via_obstore(off: int, n: int) -> bytes:
                return await reader.read("big.bin", off, n)

            op = opendal.AsyncOperator("http", endpoint=url)

            async def via_opendal(off: int, n: int) -> bytes:
                return bytes(await op.read("big.bin", offset=off, size=n))

            results: dict[str, dict[str, float]] = {}
            for name, fn in (
                ("raw_aiohttp", raw),
                ("obstore", via_obstore),
                ("opendal", via_opendal),
            ):
                best = float("inf")
                for _ in range(3):
                    elapsed, digest = await read_all(fn, size, block, args.parallel)
                    assert digest == want, f"{name} read wrong bytes"
                    best = min(best, elapsed)
                results[name] = {"MiB_per_s": round(args.size_mib / best, 1)}
            await session.close()
        finally:
            proc.terminate()
            proc.wait()
    base = results["raw_aiohttp"]["MiB_per_s"]
    for r in results.values():
        r["vs_raw"] = round(r["MiB_per_s"] / base, 2)
    print(json.dumps(results, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "ufs_read.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
