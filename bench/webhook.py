"""Admission latency of the sidecar webhook against a no-op aiohttp handler, same run.

    python bench/webhook.py [--reviews 2000]

Both servers run in a child process pinned to one core, over TLS on loopback, and get
the same AdmissionReview (a pod asking for one dataset) from a client in this process at
1, 16 and 128 concurrent reviews. Reported: p50/p99 latency and reviews per second, and
the webhook's p99 as a ratio of the no-op's. Goal: p99 under 5 ms at 16 concurrent, and
under 2x the no-op's p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

from fluidfed import pki

SERVER = textwrap.dedent(
    """
    import asyncio, os, ssl, sys
    from aiohttp import web
    os.sched_setaffinity(0, {0})
    mode, cert, key = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "noop":
        async def handler(request):
            await request.read()
            return web.json_response({"apiVersion": "admission.k8s.io/v1",
                                      "kind": "AdmissionReview",
                                      "response": {"uid": "x", "allowed": True}})
        app = web.Application(); app.router.add_post("/mutate", handler)
    else:
        from agents.webhook import mutate, server
        from fluidfed.models import Access, Binding, Capabilities, Dataset, Mount
        ds = Dataset(name="imagenet", namespace="ml", mounts=[Mount(uri="s3://b/p")],
                     access=[Access(namespace="ml", sub_path="train")])
        b = {"imagenet": Binding(name="imagenet.c", dataset="imagenet", cluster="c",
                                 mode="sidecar", replicas=1, generation=1, spec=ds)}
        caps = Capabilities(privileged=True)
        app = server.make_app(lambda pod, ns: mutate.mutate(pod, ns, b, caps))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
    async def main():
        runner = web.AppRunner(app, access_log=None); await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx); await site.start()
        print(runner.addresses[0][1], flush=True); await asyncio.Event().wait()
    asyncio.run(main())
    """
)

REVIEW = json.dumps(
    {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u",
            "kind": {"kind": "Pod"},
            "namespace": "ml",
            "operation": "CREATE",
            "object": {
                "metadata": {"name": "p", "labels": {"fluidfed.io/inject": "true"}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "a",
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }
                    ],
                    "volumes": [
                        {"name": "data", "persistentVolumeClaim": {"claimName": "imagenet"}}
                    ],
                },
            },
        },
    }
).encode()


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def load(url: str, ca: str, concurrency: int, total: int) -> tuple[list[float], float]:
    ctx = ssl.create_default_context(cafile=ca)
    lat: list[float] = []
    conn = aiohttp.TCPConnector(ssl=ctx, limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:
        for _ in range(min(50, total)):  # warm connections and code paths
            async with s.post(url, data=REVIEW) as r:
                await r.read()
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                t0 = time.perf_counter()
                async with s.post(url, data=REVIEW) as r:
                    await r.read()
                    assert r.status == 200
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        wall = time.perf_counter() - t0
    return lat, total / wall


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reviews", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ca = pki.new_ca("bench-ca")
        leaf = pki.issue(ca, "bench", server=True, hosts=("127.0.0.1",))
        paths = {n: Path(tmp) / n for n in ("ca.crt", "tls.crt", "tls.key")}
        paths["ca.crt"].write_bytes(ca.cert_pem)
        paths["tls.crt"].write_bytes(leaf.cert_pem)
        paths["tls.key"].write_bytes(leaf.key_pem)
        results: dict[str, dict[str, float]] = {}
        for mode in ("noop", "webhook"):
            proc = subprocess.Popen(
                [sys.executable, "-c", SERVER, mode, str(paths["tls.crt"]), str(paths["tls.key"])],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            )
            assert proc.stdout is not None
            url = f"https://127.0.0.1:{proc.stdout.readline().strip()}/mutate"
            try:
                for c in (1, 16, 128):
                    lat, rps = await load(url, str(paths["ca.crt"]), c, args.reviews)
                    results[f"{mode}@{c}"] = {
                        "p50_ms": round(pct(lat, 50) * 1000, 3),
                        "p99_ms": round(pct(lat, 99) * 1000, 3),
                        "reviews_per_s": round(rps),
                    }
            finally:
                proc.terminate()
                proc.wait()
    for c in (1, 16, 128):
        results[f"p99_ratio@{c}"] = {
            "webhook_vs_noop": round(
                results[f"webhook@{c}"]["p99_ms"] / results[f"noop@{c}"]["p99_ms"], 2
            )
        }
    print(json.dumps(results, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "webhook.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
