"""What one GET costs the object store by its size: MinIO's CPU per GiB served for ranged
GETs of one object (1 to 16 MiB each) and for whole objects of 4 and 16 MiB (JuiceFS
reads its own 4 MiB chunk objects), the same bytes, 5 GETs in flight, read by aiohttp.

    python bench/s3_get_sizes.py [--size-mib 512] [--rounds 2]

On this machine the store shares the clients' two cores, so what a GET costs it is CPU the
clients do not get (`bench/peers.py`'s fill rows: MinIO spends ~0.9 CPU-s per GiB there).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import aiohttp
import read_path as rp

from devkit.local.s3 import S3Server

RANGES = (1 << 20, 4 << 20, 8 << 20, 16 << 20)
WHOLE = (4 << 20, 16 << 20)
IN_FLIGHT = 5


async def get_all(jobs: list[tuple[str, str | None]]) -> int:
    sem = asyncio.Semaphore(IN_FLIGHT)
    async with aiohttp.ClientSession() as session:

        async def one(url: str, rng: str | None) -> int:
            async with sem, session.get(url, headers={"Range": rng} if rng else {}) as r:
                r.raise_for_status()
                return len(await r.read())

        return sum(await asyncio.gather(*(one(u, r) for u, r in jobs)))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="fluidfed-s3get-") as d:
        server = S3Server(Path(d) / "minio").start()
        assert server.proc is not None
        pid = server.proc.pid
        try:
            data = os.urandom(size)
            objects = {"big.bin": data}
            for piece in WHOLE:
                for i in range(size // piece):
                    objects[f"p{piece >> 20}/{i:05d}"] = data[i * piece : (i + 1) * piece]
            await server.upload(objects)
            big = await server.presign("big.bin")
            whole = {
                piece: [
                    await server.presign(f"p{piece >> 20}/{i:05d}") for i in range(size // piece)
                ]
                for piece in WHOLE
            }
            for r in range(args.rounds):
                rows: list[tuple[str, list[tuple[str, str | None]]]] = [
                    (
                        f"ranges of {piece >> 20:2d} MiB",
                        [(big, f"bytes={o}-{o + piece - 1}") for o in range(0, size, piece)],
                    )
                    for piece in RANGES
                ]
                rows += [
                    (f"whole objects of {piece >> 20:2d} MiB", [(u, None) for u in whole[piece]])
                    for piece in WHOLE
                ]
                for name, jobs in rows:
                    c0, t0 = rp.cpu_seconds(pid), time.perf_counter()
                    n = await get_all(jobs)
                    dt, used = time.perf_counter() - t0, rp.cpu_seconds(pid) - c0
                    gib = n / 2**30
                    print(
                        f"round {r}: {name}: {n / 2**20 / dt:6.0f} MiB/s, "
                        f"MinIO {used / gib:.2f} CPU-s/GiB ({used * 1000 / len(jobs):.1f} ms per GET)",
                        flush=True,
                    )
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
