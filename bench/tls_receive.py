"""What receiving a cache worker's blocks over TLS costs the sidecar, with each client engine.

    python bench/tls_receive.py [--mib 1024] [--block-mib 4] [--parallel 4] [--rounds 5]

A server process (fluidfed's HTTPS server on rustls, as the cache workers serve, and a
plain HTTP one beside it) answers every GET with the same block held in memory; this
process receives `--mib` of blocks through `fluidfed.data.receive.Connections`, the
sidecar's threaded receive, `--parallel` at a time on kept-alive connections, the way
the sidecar's read-ahead asks for them. Per round each client engine takes its turn (the
order rotating); reported: MiB/s and this process's CPU-seconds per GiB received (the
receive threads and the event loop), medians of the rounds, for

* `plain`: HTTP, the body received with `recv_into(MSG_WAITALL)`: the floor;
* `openssl`: Python's `ssl` (OpenSSL 3), one 16 KiB record per `recv_into`;
* `rustls`: fluidfed's extension (`fluidfed.tlsclient`), the body decrypted into its
  buffer in one call without the GIL.

The CRC of each block is computed as the sidecar does (`checksum=True`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fluidfed import pki, tls
from fluidfed.data import receive

ENGINES = ("plain", "openssl", "rustls")


def serve(directory: Path, block: int) -> None:
    """The server process: HTTPS (rustls) and HTTP on two free ports, printed as JSON."""
    from aiohttp import web

    from fluidfed import aio, tlsserve

    body = os.urandom(block)

    async def main() -> None:
        async def get(request: web.Request) -> web.Response:
            return web.Response(body=body)

        app = web.Application()
        app.router.add_get("/block", get)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        ctx = tls.server_context(str(directory / "cert.pem"), str(directory / "key.pem"))
        secure = tlsserve.TLSSite(runner, "127.0.0.1", 0, ssl_context=ctx, engine="rustls")
        await secure.start()
        plain = web.TCPSite(runner, "127.0.0.1", 0)
        await plain.start()
        ports = [a[1] for a in runner.addresses]
        print(json.dumps({"https": ports[0], "http": ports[1]}), flush=True)
        await asyncio.Event().wait()

    aio.run(main())


async def receive_all(conns: receive.Connections, url: str, n: int, parallel: int) -> None:
    left = n

    async def one() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            got = await conns.get(url, {}, {}, 30.0)
            assert got.status == 200 and got.crc >= 0

    await asyncio.gather(*(one() for _ in range(parallel)))


def measure(
    engine: str, ports: dict[str, int], ca: str, blocks: int, parallel: int
) -> dict[str, float]:
    async def run() -> tuple[float, float]:
        conns = receive.Connections(tls=tls.trusting(ca))
        conns.rustls = engine == "rustls"
        scheme = "http" if engine == "plain" else "https"
        url = f"{scheme}://127.0.0.1:{ports[scheme]}/block"
        try:
            await receive_all(conns, url, parallel, parallel)  # connections made, not counted
            cpu0, t0 = time.process_time(), time.perf_counter()
            await receive_all(conns, url, blocks, parallel)
            return time.process_time() - cpu0, time.perf_counter() - t0
        finally:
            assert conns.opened_rustls == (conns.opened if engine == "rustls" else 0)
            conns.close()

    cpu, wall = asyncio.run(run())
    return {"cpu": cpu, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--block-mib", type=int, default=4)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--out", default="")
    ap.add_argument("--serve", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    block = args.block_mib * 2**20
    if args.serve:
        serve(Path(args.serve), block)
        return
    engines = args.engines.split(",")
    with tempfile.TemporaryDirectory() as d:
        ca = pki.new_ca("bench-ca")
        pair = pki.issue(ca, "127.0.0.1", hosts=("127.0.0.1",), server=True)
        Path(d, "cert.pem").write_bytes(pair.cert_pem)
        Path(d, "key.pem").write_bytes(pair.key_pem)
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", d, "--block-mib", str(args.block_mib)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            ports = json.loads(server.stdout.readline())
            blocks = max(1, args.mib // args.block_mib)
            runs: dict[str, list[dict[str, float]]] = {e: [] for e in engines}
            for r in range(args.rounds):
                for e in engines[r % len(engines) :] + engines[: r % len(engines)]:
                    runs[e].append(measure(e, ports, ca.cert_pem.decode(), blocks, args.parallel))
        finally:
            server.kill()
    gib = blocks * block / 2**30
    out: dict[str, Any] = {"mib": blocks * args.block_mib, "block_mib": args.block_mib,
                           "parallel": args.parallel, "rounds": args.rounds,
                           "load_average": os.getloadavg()}  # fmt: skip
    for e, got in runs.items():
        out[e] = {
            "MiB_per_s": round(statistics.median(gib * 1024 / g["wall"] for g in got), 1),
            "cpu_s_per_GiB": round(statistics.median(g["cpu"] / gib for g in got), 3),
            "cpu_runs": [round(g["cpu"] / gib, 3) for g in got],
        }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
