"""S3 blocks through obstore against the same blocks over presigned URLs received straight
into a buffer (`fluidfed.data.ufs.S3UFS`), in one process, the two taking turns.

    python bench/s3_blocks.py [--size-mib 1024] [--block-kib 4096] [--parallel 5] [--rounds 5]
        [--tls]

One object in MinIO on loopback is read whole in blocks of `--block-kib`, `--parallel` at
a time (the sidecar's read-ahead), each round by obstore's `get_range_async` (the buffer
its HTTP client joined the body into, no copy after) and by `S3UFS.read_block` (obstore
presigns, `receive.Connections` receives into a reused buffer: in a thread, or on the
event loop for a block under `ufs.RECEIVE_FROM`), alternating which goes first, on the
event loop fluidfed's processes run (`fluidfed.aio`: uvloop). Reported per reader: MiB/s, CPU-seconds per GiB of this process (every
thread) and of MinIO (medians over the rounds; each round as [MiB/s, CPU, MinIO's CPU]).
The bytes are checked once. Run it under `bench/vm_pages.py --hold --` too: obstore's new
buffer per block is memory this VM may have handed back to its host. `--tls`: MinIO over
https (a certificate of a CA made for the run, trusted by both readers); the presigned
reader is then S3UFS's steps spelled out (obstore presigns, `receive.Connections`, given
the CA, receives as S3UFS has it receive a block of that size), since S3UFS trusts the
system's roots only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import obstore
import read_path as rp
import trustme

from devkit.local.s3 import CREDENTIALS, S3Server
from fluidfed import aio
from fluidfed.data import blocks, heap, receive, ufs
from fluidfed.models import Mount

Reader = Callable[[int, int], Awaitable[blocks.Data]]
KEY = "big.bin"


async def read_all(
    read: Reader, size: int, block: int, parallel: int, server: int
) -> tuple[float, float, float]:
    """(seconds, CPU seconds here, the server's CPU seconds) of reading the object whole;
    each block dropped once read."""
    slots = asyncio.Semaphore(parallel)

    async def one(off: int) -> None:
        async with slots:
            got = await read(off, min(block, size - off))
            if len(got) != min(block, size - off):
                raise AssertionError(f"block at {off}: {len(got)} bytes")

    me = os.getpid()
    t0, c0, s0 = time.perf_counter(), rp.cpu_seconds(me), rp.cpu_seconds(server)
    await asyncio.gather(*(one(off) for off in range(0, size, block)))
    return time.perf_counter() - t0, rp.cpu_seconds(me) - c0, rp.cpu_seconds(server) - s0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    size, block = args.size_mib * 2**20, args.block_kib * 1024
    heap.tune()  # the sidecar's and the workers' allocator settings
    top = Path(tempfile.mkdtemp(prefix="fluidfed-s3blocks-"))
    certs = ca_file = None
    if args.tls:
        certs, ca_file = _certificates(top)
    server = S3Server(top / "minio", certs_dir=certs, ca_file=ca_file).start()
    conns = receive.Connections(tls=ssl.create_default_context(cafile=ca_file))
    try:
        data = os.urandom(size)
        store = server.store()
        await obstore.put_async(store, KEY, data)
        reader = ufs.open_ufs(
            Mount(uri=server.uri(""), options={"endpoint": server.endpoint}), env=CREDENTIALS
        )
        if not isinstance(reader, ufs.S3UFS):
            raise SystemExit("the mount does not read through S3UFS")

        async def via_obstore(off: int, n: int) -> blocks.Data:
            return memoryview(await obstore.get_range_async(store, KEY, start=off, length=n))

        async def via_presigned(off: int, n: int) -> blocks.Data:
            if not args.tls:
                return await reader.read_block(KEY, off, n)
            url = obstore.sign(store, "GET", KEY, ufs.SIGNED_FOR)
            get = conns.get if n >= ufs.RECEIVE_FROM else conns.get_on_loop
            got = await get(url, {}, {"Range": f"bytes={off}-{off + n - 1}"}, 30.0, checksum=False)
            if got.status != 206:
                raise SystemExit(f"presigned read: HTTP {got.status}")
            return got.body

        readers: dict[str, Reader] = {"obstore": via_obstore, "presigned": via_presigned}
        at = size // 3
        for name, fn in readers.items():
            if bytes(await fn(at, block)) != data[at : at + block]:
                raise SystemExit(f"{name} read wrong bytes")
        del data
        assert server.proc is not None
        gib = size / 2**30
        runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in readers}
        for r in range(args.rounds):
            order = list(readers) if r % 2 == 0 else list(reversed(readers))
            for name in order:
                elapsed, cpu, served = await read_all(
                    readers[name], size, block, args.parallel, server.proc.pid
                )
                runs[name].append((size / 2**20 / elapsed, cpu / gib, served / gib))
        received = conns.opened + conns.opened_on_loop if args.tls else reader.received
        if received == 0 or not reader.direct:
            raise SystemExit("S3UFS did not read over presigned URLs")
        reader.close()
    finally:
        conns.close()
        server.stop()
    out: dict[str, Any] = {
        "tls": args.tls,
        "size_mib": args.size_mib,
        "block_kib": args.block_kib,
        "parallel": args.parallel,
        "rounds": args.rounds,
        "page_reporting": rp.page_reporting(),
    }
    for name, xs in runs.items():
        out[name] = {
            "MiB_per_s": round(statistics.median(x[0] for x in xs)),
            "cpu_s_per_GiB": round(statistics.median(x[1] for x in xs), 3),
            "minio_cpu_s_per_GiB": round(statistics.median(x[2] for x in xs), 3),
            "runs": [[round(a), round(b, 3), round(c, 3)] for a, b, c in xs],
        }
    out["presigned_vs_obstore"] = {
        "MiB_per_s": round(out["presigned"]["MiB_per_s"] / out["obstore"]["MiB_per_s"], 2),
        "cpu_s_per_GiB": round(
            out["presigned"]["cpu_s_per_GiB"] / out["obstore"]["cpu_s_per_GiB"], 2
        ),
    }
    return out


def _certificates(top: Path) -> tuple[Path, Path]:
    """MinIO's certificate directory for 127.0.0.1, and the file of the CA that issued it."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certs = top / "certs"
    certs.mkdir()
    cert.private_key_pem.write_to_path(str(certs / "private.key"))
    cert.cert_chain_pems[0].write_to_path(str(certs / "public.crt"))
    ca.cert_pem.write_to_path(str(top / "ca.pem"))
    return certs, top / "ca.pem"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--block-kib", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--name", default="", help="suffix of the result file in bench/results/")
    ap.add_argument("--tls", action="store_true", help="MinIO over https")
    args = ap.parse_args()
    result = aio.run(run(args))
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    name = f"s3_blocks{'-' + args.name if args.name else ''}.json"
    (out / name).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
