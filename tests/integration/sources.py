"""Under storage for the integration tests: a generated dataset, served from a directory, a
plain HTTP server (ranged GETs, a manifest for listing) and MinIO."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devkit.local.cluster import free_port
from devkit.local.s3 import S3Server
from devkit.testing import eventually_blocking
from fluidfed.data import blocks, ufs
from fluidfed.data.layout import FileRef

HTTP_SERVER = (
    "import sys; from aiohttp import web; app = web.Application(); "
    "app.router.add_static('/', sys.argv[1]); "
    "web.run_app(app, host='127.0.0.1', port=int(sys.argv[2]), print=None)"
)
SIZES = [0, 1, 100, 4096, 65_537, 300_000, 1_500_000, 5_000_000]


def make_dataset(root: Path, count: int = 300, seed: int = 42) -> Path:
    """`count` files of mixed sizes (some span several 1 MiB blocks) in nested directories,
    and the manifest an HTTP mount lists from."""
    rng = random.Random(seed)
    manifest = []
    for i in range(count):
        size = rng.choice(SIZES)
        rel = f"part-{i % 7}/sub-{i % 3}/file-{i:04d}.bin"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        manifest.append({"path": rel, "size": size})
    (root / ufs.MANIFEST).write_text(json.dumps(manifest))
    return root


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != ufs.MANIFEST
    }


def wait_port(port: int, within: float = 20) -> None:
    def listens() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    eventually_blocking(listens, f"something to listen on {port}", timeout=within, interval=0.05)


@contextmanager
def http_server(root: Path, port: int = 0) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-c", HTTP_SERVER, str(root), str(port)])
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}/", proc
    finally:
        proc.terminate()
        proc.wait()


@contextmanager
def minio_serving(data: Path, prefix: str, work: Path) -> Iterator[S3Server]:
    """MinIO on loopback (its files in `work`) holding the files of `data` under `prefix`."""
    server = S3Server(work).start()
    try:
        asyncio.run(server.upload(files(data), prefix=prefix))
        yield server
    finally:
        server.stop()


def s3_mount(minio: S3Server, prefix: str) -> dict[str, object]:
    """The mount of `prefix` in `minio`, as a worker's or sidecar's config names it."""
    return {"uri": minio.uri(prefix), "options": {"endpoint": minio.endpoint}}


def block_refs(data: Path, block: int) -> list[tuple[FileRef, int, bytes]]:
    """(file, block index, the block's bytes) of every block of the dataset in `data`."""
    out = []
    for rel, body in sorted(files(data).items()):
        ref = FileRef(mount=0, key=rel, size=len(body))
        for i in range(blocks.block_count(len(body), block)):
            out.append((ref, i, body[i * block : (i + 1) * block]))
    return out
