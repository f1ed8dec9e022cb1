"""A `fluidfed worker serve` process killed while it fills its disk tier from MinIO, and
what a crash in the middle of a write can leave behind: restarted, it never serves a torn
block file (a temporary file is removed, a cut one fails its CRC and is fetched again)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from devkit.local.cluster import free_port
from devkit.local.processes import WorkerProcess, local_token
from devkit.local.s3 import CREDENTIALS, S3Server
from devkit.testing import NotYet, eventually
from fluidfed.data import blockfile, credentials, workers
from fluidfed.data.blockfile import TRAILER_SIZE
from fluidfed.data.layout import FileRef
from tests.integration import sources

pytestmark = pytest.mark.integration

BLOCK = 2**20
DATASET = "train"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sources.make_dataset(tmp_path_factory.mktemp("data"), count=40, seed=11)


@pytest.fixture(scope="module")
def minio(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with sources.minio_serving(data, DATASET, tmp_path_factory.mktemp("minio")) as server:
        yield server


@pytest.fixture(autouse=True)
def _s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)


def mount_of(minio: S3Server) -> dict[str, object]:
    return sources.s3_mount(minio, DATASET)


def refs(data: Path) -> list[tuple[FileRef, int, bytes]]:
    return sources.block_refs(data, BLOCK)


async def test_a_worker_killed_while_writing_never_serves_a_torn_block(
    data: Path, minio: S3Server, tmp_path: Path
) -> None:
    everything = refs(data)
    port = free_port()
    ssd = tmp_path / "ssd"
    config = {
        "dataset": DATASET,
        "mounts": [mount_of(minio)],
        "block_size": BLOCK,
        "tiers": [{"medium": "SSD", "quota": "1GiB", "path": str(ssd)}],
        "workers": {"endpoints": [f"http://127.0.0.1:{port}"]},
    }
    proc = WorkerProcess(tmp_path / "w", config, port).start()
    token = credentials.authorization(local_token(DATASET, "reader"))
    try:
        async with aiohttp.ClientSession(headers=token) as session:

            async def get(ref: FileRef, i: int) -> bytes:
                key = ref.block_key(DATASET, BLOCK, i)
                got = await workers.get_block(session, proc.url, key, ref, i)
                return bytes(got.data)

            got = await asyncio.gather(*(get(r, i) for r, i, _ in everything))
            assert got == [b for _, _, b in everything]
            proc.stop(signal.SIGKILL)  # as soon as the last answer is in
            # what a crash in the middle of a write can leave: a temporary file, and (on a
            # filesystem that lost the data of a renamed file) a block file cut short
            # (whole files only: the killed write's own temporary file is no block to cut)
            files = sorted(p for p in ssd.rglob("*") if p.is_file() and p.suffix != ".tmp")
            assert files
            (files[0].parent / (files[0].name + ".tmp")).write_bytes(b"half a block")
            torn = files[-1]
            os.truncate(torn, max(0, torn.stat().st_size - TRAILER_SIZE - 1))
            proc.start()
            again = await asyncio.gather(*(get(r, i) for r, i, _ in everything))
            assert again == [b for _, _, b in everything]
            agent = credentials.authorization(local_token(DATASET, "agent"))
            async with session.get(f"{proc.url}/v1/status", headers=agent) as r:
                status = await r.json()
        assert status["corrupt"] == 1  # the cut one, found and fetched again
        await no_temporary_files_left(ssd, proc)
        for f in (p for p in ssd.rglob("*") if p.is_file()):
            data_, crc = blockfile.read_block_file(f)  # every file whole, or none at all
            assert len(data_) + blockfile.trailer_size(len(data_)) == f.stat().st_size
            assert crc >= 0
    finally:
        proc.close()


async def no_temporary_files_left(ssd: Path, proc: WorkerProcess) -> None:
    """Wait until no temporary block file is left under `ssd`: the crash's is removed when
    the worker starts; the cut block fetched again is written behind its reader, so its own
    may still be on its way, or not even begun (CI once found a temporary file whose write
    started after none was left): first until the worker has no block left to write, then
    until its last temporary file is gone. One left 10 s fails."""
    await asyncio.to_thread(proc.wait_written, 30)

    def none_left() -> bool | NotYet:
        left = sorted(str(p.relative_to(ssd)) for p in ssd.rglob("*.tmp"))
        return True if not left else NotYet(f"temporary files left: {left}")

    await eventually(none_left, "no temporary block file left", timeout=10)
