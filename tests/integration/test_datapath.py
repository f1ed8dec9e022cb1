"""The data path for real: `fluidfed sidecar mount` through /dev/fuse, `fluidfed worker serve`
processes holding blocks, and under storage from MinIO, plain HTTP and a local directory."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from devkit.local.cluster import free_port
from devkit.local.processes import (
    LOCAL_KEY,
    SidecarProcess,
    WorkerProcess,
    is_mounted,
    local_credentials,
    local_token,
)
from devkit.local.s3 import CREDENTIALS, S3Server
from devkit.testing import NotYet, eventually_blocking
from fluidfed import errors
from fluidfed.data import blockfile, blocks, credentials, protocol, receive, ufs, workers
from fluidfed.data.layout import FileRef
from fluidfed.errors import NotCached
from fluidfed.models import Mount
from sidecar.fs import PREFERRED_IO
from tests.integration import sources

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
]

BLOCK = 2**20
DATASET = "train"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sources.make_dataset(tmp_path_factory.mktemp("data"), count=200, seed=7)


@pytest.fixture(scope="module")
def minio(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with sources.minio_serving(data, "train", tmp_path_factory.mktemp("minio")) as server:
        yield server


@pytest.fixture(scope="module")
def http(data: Path) -> Iterator[str]:
    with sources.http_server(data) as (url, _):
        yield url


@pytest.fixture(autouse=True)
def _s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # the Secret-provided environment of a pod, here of the child processes
    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)


def mount_of(kind: str, minio: S3Server | None, http: str, data: Path) -> dict[str, Any]:
    if kind == "s3":
        assert minio is not None
        return {"uri": minio.uri("train"), "options": {"endpoint": minio.endpoint}}
    if kind == "http":
        return {"uri": http}
    return {"uri": f"file://{data}"}


def worker_config(
    mount: dict[str, Any], peers: list[str], tiers: Any = None, block_size: int = BLOCK
) -> dict[str, Any]:
    return {
        "dataset": DATASET,
        "mounts": [mount],
        "block_size": block_size,
        "tiers": tiers or [{"medium": "MEM", "quota": "512MiB"}],
        "workers": {"endpoints": peers},
    }


def sidecar_config(mount: dict[str, Any], peers: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "dataset": DATASET,
        "mounts": [mount],
        "block_size": BLOCK,
        "workers": {"endpoints": peers},
        "cache": [{"medium": "MEM", "quota": "64MiB"}],
        **extra,
    }


def auth(role: Any = "agent", **claims: str) -> dict[str, str]:
    """The Authorization header of a token of the local binding."""
    return auth_of(DATASET, role, **claims)


def auth_of(dataset: str, role: Any, *, sub_path: str = "", namespace: str = "") -> dict[str, str]:
    token = local_token(dataset, role, sub_path=sub_path, namespace=namespace)
    return {"Authorization": "Bearer " + token}


class Workers:
    def __init__(
        self,
        root: Path,
        mount: dict[str, Any],
        tiers: Any = None,
        wrap: tuple[str, ...] = (),
        block_size: int = BLOCK,
    ) -> None:
        self.root = root
        self.mount = mount
        self.tiers = tiers
        self.wrap = wrap
        self.block_size = block_size
        self.procs: list[WorkerProcess] = []

    def urls(self) -> list[str]:
        return [w.url for w in self.procs]

    def add(self) -> WorkerProcess:
        w = WorkerProcess(self.root / f"w{len(self.procs)}", {}, free_port(), wrap=self.wrap)
        self.procs.append(w)
        for p in self.procs:
            p.write_config(worker_config(self.mount, self.urls(), self.tiers, self.block_size))
        w.start()
        for p in self.procs[:-1]:
            p.reload()
        return w

    def stop(self) -> None:
        for p in self.procs:
            p.stop(signal.SIGKILL)


@pytest.fixture
def workers_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Workers] = []

    def make(
        mount: dict[str, Any],
        n: int,
        tiers: Any = None,
        wrap: tuple[str, ...] = (),
        block_size: int = BLOCK,
    ) -> Workers:
        ws = Workers(tmp_path / f"workers-{len(made)}", mount, tiers, wrap, block_size)
        made.append(ws)
        for _ in range(n):
            ws.add()
        return ws

    yield make
    for ws in made:
        ws.stop()


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[Any]:
    made: list[SidecarProcess] = []

    def start(config: dict[str, Any], name: str = "") -> SidecarProcess:
        name = name or f"s{len(made)}"
        sc = SidecarProcess(tmp_path / name, config, tmp_path / f"{name}-mnt")
        made.append(sc)
        return sc.start()

    yield start
    for sc in made:
        sc.close()


def ssd_worker(
    data: Path, ssd: Path, workers_factory: Any, wrap: tuple[str, ...] = (), block_size: int = BLOCK
) -> tuple[dict[str, bytes], dict[str, Any], Workers]:
    """The test dataset from a local directory, and one worker keeping blocks in `ssd`."""
    ssd.mkdir(exist_ok=True)
    mount = {"uri": f"file://{data}"}
    disk = [{"medium": "SSD", "quota": "1GiB", "path": str(ssd)}]
    ws = workers_factory(mount, 1, tiers=disk, wrap=wrap, block_size=block_size)
    return sources.files(data), mount, ws


def read_all(mnt: Path, want: dict[str, bytes]) -> None:
    stats = {str(p.relative_to(mnt)): p.stat() for p in mnt.rglob("*") if p.is_file()}
    assert {k: st.st_size for k, st in stats.items()} == {k: len(v) for k, v in want.items()}
    # readers size their buffers by st_blksize: page-cache-sized, not the 4 MiB block
    assert {st.st_blksize for st in stats.values()} == {PREFERRED_IO}
    for rel, data in want.items():
        got = (mnt / rel).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), rel


def block_count(want: dict[str, bytes]) -> int:
    return sum((len(v) + BLOCK - 1) // BLOCK for v in want.values())


@pytest.mark.parametrize("kind", ["s3", "http", "file"])
def test_mount_reads_every_file_and_the_second_pass_is_served_by_the_workers(
    kind: str,
    minio: S3Server,
    http: str,
    data: Path,
    workers_factory: Any,
    sidecars: Any,
) -> None:
    want = sources.files(data)
    mount = mount_of(kind, minio, http, data)
    ws = workers_factory(mount, 2)
    first = sidecars(sidecar_config(mount, ws.urls()))
    read_all(first.mountpoint, want)
    # directories list as in the source; stat answers without reading
    assert sorted(os.listdir(first.mountpoint)) == sorted(
        p.name for p in data.iterdir() if p.name != ".fluidfed-manifest.json"
    )
    sample = next(k for k, v in want.items() if len(v) > BLOCK)
    assert (first.mountpoint / sample).stat().st_size == len(want[sample])
    cold = first.status()["blocks"]
    # every block came through a worker, a miss there (read for it, alone or in a run with
    # the block before it)
    assert cold["worker_misses"] == block_count(want)
    assert cold["ufs_reads"] == 0
    ufs = [w.status()["ufs"] for w in ws.procs]
    ufs_reads = [u["reads"] for u in ufs]
    assert all(n > 0 for n in ufs_reads)  # both workers own a share
    assert sum(ufs_reads) == block_count(want)  # each block read from the UFS once
    # S3's blocks came over presigned URLs, those under 512 KiB on the event loop, and the
    # runs in one GET each
    presigned = [u["presigned"] for u in ufs]
    if kind == "s3":
        assert presigned == ufs_reads
        assert sum(u["joined"] for u in ufs) > 0
    else:
        assert presigned == [0, 0]
        assert [u["joined"] for u in ufs] == [0, 0]
    first.stop()

    # a new pod on the cluster: nothing in its own cache, everything at the workers
    second = sidecars(sidecar_config(mount, ws.urls()))
    read_all(second.mountpoint, want)
    warm = second.status()["blocks"]
    assert warm["worker_hits"] == block_count(want)
    assert warm["worker_misses"] == 0
    assert [w.status()["ufs"]["reads"] for w in ws.procs] == ufs_reads


def test_a_reader_asks_for_runs_only_while_a_file_is_cold(
    minio: S3Server, tmp_path: Path, workers_factory: Any, sidecars: Any
) -> None:
    """A sequential reader asks its worker for a block with those after it (one GET from
    S3) while the file's blocks miss there; a reader that finds a file's blocks in the
    worker's files on its node knows the file is cached: at most its first read-ahead
    asks for a run, the others block by block, at once."""
    rng = random.Random(5)
    want = {name: rng.randbytes(16 * BLOCK) for name in ("a.bin", "b.bin")}
    other = {"c.bin": rng.randbytes(16 * BLOCK), "d.bin": rng.randbytes(8 * BLOCK)}
    asyncio.run(minio.upload(want | other, prefix="long"))
    mount = {"uri": minio.uri("long"), "options": {"endpoint": minio.endpoint}}
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    ws = workers_factory(mount, 1, tiers=[{"medium": "SSD", "quota": "1GiB", "path": str(ssd)}])
    first = sidecars(sidecar_config(mount, ws.urls()))
    for name, data in want.items():
        assert (first.mountpoint / name).read_bytes() == data
    cold = first.status()["blocks"]
    assert cold["runs"] >= 4  # cold: a run per read-ahead
    # every block a miss, at the sidecar as at the worker, however it came: the first of
    # a run over HTTP, the others over HTTP or from the worker's files (reported)
    assert (cold["worker_misses"], cold["worker_hits"]) == (32, 0), cold
    first.stop()  # (its last reports of blocks read from the files sent)
    st = ws.procs[0].status()
    assert st["ufs"]["joined"] > 0
    assert (st["misses"], st["hits"]) == (32, 0), st
    ws.procs[0].wait_written()

    second = sidecars(sidecar_config(mount, ws.urls()))
    for name, data in want.items():
        assert (second.mountpoint / name).read_bytes() == data
    got = second.status()["blocks"]
    assert got["short_circuit"] == got["worker_hits"] == 32, got
    assert got["runs"] <= len(want), got  # b.bin's first block came from the files too
    second.stop()

    # a reader elsewhere (over HTTP) reads a cold file: misses both sides all the same,
    # the run's blocks served from the worker's memory or sent from its files
    before = ws.procs[0].status()
    remote = sidecars(sidecar_config(mount, ws.urls(), short_circuit=False))
    assert (remote.mountpoint / "c.bin").read_bytes() == other["c.bin"]
    got = remote.status()["blocks"]
    assert (got["worker_misses"], got["worker_hits"], got["short_circuit"]) == (16, 0, 0), got
    assert got["runs"] >= 2
    st = ws.procs[0].status()
    assert (st["misses"] - before["misses"], st["hits"] - before["hits"]) == (16, 0), st

    # the worker says how many blocks it read with a miss for its reader: those are misses
    # on their first ask, whichever way they are read
    async def ask() -> tuple[workers.Fetched, workers.Fetched]:
        mounts = [Mount(uri=minio.uri("long"), options={"endpoint": minio.endpoint})]
        ref = (await ufs.list_files(mounts, [ufs.open_ufs(m) for m in mounts]))["d.bin"]
        async with aiohttp.ClientSession(headers=auth("reader")) as s:
            url, key = ws.urls()[0], ref.block_key(DATASET, BLOCK, 0)
            first = await workers.get_block(s, url, key, ref, 0, run=3)
            key = ref.block_key(DATASET, BLOCK, 1)
            return first, await workers.get_block(s, url, key, ref, 1)

    first_block, second_block = asyncio.run(ask())
    assert (first_block.hit, first_block.ahead) == (False, 3)
    assert (second_block.hit, second_block.ahead) == (False, 0)


def test_a_run_comes_in_one_answer_over_http(
    minio: S3Server, tmp_path: Path, workers_factory: Any, sidecars: Any
) -> None:
    """A sequential reader over HTTP gets a block and the blocks after it that its worker
    holds, or has just read for it, in one answer (`BlockQuery.joined`): cold, misses at
    both ends; warm, hits; every byte as stored."""
    rng = random.Random(11)
    want = {"e.bin": rng.randbytes(12 * BLOCK + 5)}
    asyncio.run(minio.upload(want, prefix="joined"))
    mount = {"uri": minio.uri("joined"), "options": {"endpoint": minio.endpoint}}
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    ws = workers_factory(mount, 1, tiers=[{"medium": "SSD", "quota": "1GiB", "path": str(ssd)}])
    worker = ws.procs[0]
    blocks_in = 13

    cold = sidecars(sidecar_config(mount, ws.urls(), short_circuit=False))
    assert (cold.mountpoint / "e.bin").read_bytes() == want["e.bin"]
    got = cold.status()["blocks"]
    assert (got["worker_misses"], got["worker_hits"], got["ufs_reads"]) == (blocks_in, 0, 0), got
    cold.stop()
    st = worker.status()
    assert (st["misses"], st["hits"]) == (blocks_in, 0), st
    joined_cold = st["served"]["joined"]
    assert joined_cold > 0, st  # a run read from S3 for this reader, sent with its first
    worker.wait_written()

    warm = sidecars(sidecar_config(mount, ws.urls(), short_circuit=False))
    assert (warm.mountpoint / "e.bin").read_bytes() == want["e.bin"]
    got = warm.status()["blocks"]
    assert (got["worker_hits"], got["worker_misses"], got["ufs_reads"]) == (blocks_in, 0, 0), got
    warm.stop()
    before, st = st, worker.status()
    # every block once a hit at the worker too, the pairs sent from the block files
    assert (st["hits"] - before["hits"], st["misses"] - before["misses"]) == (blocks_in, 0), st
    assert st["served"]["joined"] > joined_cold, st
    assert st["served"]["blocks"] - before["served"]["blocks"] == blocks_in, st

    # the blocks themselves: asked with a run, received into a buffer each and checked
    async def ask() -> tuple[workers.Fetched, workers.Fetched]:
        mounts = [Mount(uri=minio.uri("joined"), options={"endpoint": minio.endpoint})]
        ref = (await ufs.list_files(mounts, [ufs.open_ufs(m) for m in mounts]))["e.bin"]
        conns = receive.Connections()
        try:
            async with aiohttp.ClientSession(headers=auth("reader")) as s:
                url = ws.urls()[0]
                key = ref.block_key(DATASET, BLOCK, 9)
                run = await workers.get_block(s, url, key, ref, 9, run=3, conns=conns)
                alone = await workers.get_block(s, url, key, ref, 9, run=3)  # (no `conns`)
                return run, alone
        finally:
            conns.close()

    run, alone = asyncio.run(ask())
    body = want["e.bin"]
    assert bytes(run.data) == body[9 * BLOCK : 10 * BLOCK] and run.hit
    assert [(bytes(d), c, h) for d, c, h in run.rest] == [
        (
            body[i * BLOCK : (i + 1) * BLOCK],
            blocks.checksum(body[i * BLOCK : (i + 1) * BLOCK]),
            True,
        )
        for i in (10, 11, 12)
    ]
    assert len(run.rest[-1][0]) == 5  # the file's last block, short
    assert run.joined is True
    # through aiohttp (no `conns`) one block, never asked for with others
    assert bytes(alone.data) == bytes(run.data) and alone.joined is None


@pytest.mark.parametrize("through", ["s3", "worker"])
def test_blocks_read_ahead_of_a_slower_reader_are_answered_by_the_session_as_they_come(
    through: str, minio: S3Server, workers_factory: Any, sidecars: Any
) -> None:
    """A sequential reader slower than its blocks come (read ahead from S3, or from a worker
    over HTTP, one block ahead here) has each block handed to the native session as it
    comes, so that all of its READs are answered there, the first too: only the first
    block's first READ comes to the event loop. (Before, the next block was handed over
    only if it had come when its reader reached the block before: the first READ of each
    block read ahead alone came to the event loop.)"""
    body = random.Random(17).randbytes(12 * BLOCK + 99)
    asyncio.run(minio.upload({"slow.bin": body}, prefix="slow"))
    mount = {"uri": minio.uri("slow"), "options": {"endpoint": minio.endpoint}}
    urls = workers_factory(mount, 1).urls() if through == "worker" else []
    sc = sidecars(sidecar_config(mount, urls, short_circuit=False, readahead=1))
    fd = os.open(sc.mountpoint / "slow.bin", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # (a READ per read: 4 per block)
        got = bytearray()
        while chunk := os.read(fd, BLOCK // 4):
            got += chunk
            time.sleep(0.03)  # (the block read ahead comes meanwhile)
    finally:
        os.close(fd)
    assert got == body
    st = sc.status()
    assert st["reads"] == 12 * 4 + 1, st
    blocks_from = st["blocks"]["worker_misses" if through == "worker" else "ufs_reads"]
    assert blocks_from == 13, st
    # (3-4 before, the blocks that came in a run with the one before them held at once)
    assert st["reads"] - st["reads_in_session"] == 1, st


def test_sub_path_shows_only_that_directory(
    data: Path, workers_factory: Any, sidecars: Any
) -> None:
    mount = {"uri": f"file://{data}"}
    sc = sidecars(sidecar_config(mount, [], sub_path="part-3"))
    want = sources.files(data / "part-3")
    read_all(sc.mountpoint, want)
    assert sc.status()["blocks"]["ufs_reads"] > 0  # no workers: straight from the UFS


def test_blocks_read_from_s3_come_from_one_heap(minio: S3Server, data: Path, sidecars: Any) -> None:
    """OpenDAL's threads allocate every block from the one heap `heap.tune` set up: the
    sidecar tunes before any thread starts (its status server's address lookup made two
    more arenas when it tuned later, heaps that free() hands back and blocks fault in)."""
    want = sources.files(data)
    sc = sidecars(sidecar_config(mount_of("s3", minio, "", data), []))
    read_all(sc.mountpoint, want)
    got = sc.status()
    assert got["blocks"]["ufs_reads"] >= block_count(want)
    assert 0 < got["blocks"]["ufs_presigned"] == got["blocks"]["ufs_reads"]  # small ones too
    # a file read in sequence: the blocks after a block read with it in one GET
    assert got["blocks"]["ufs_joined"] > 0
    assert got["heap_arenas"] == 1


def test_two_workers_then_three_then_two_keep_the_cache(
    minio: S3Server, data: Path, workers_factory: Any, sidecars: Any
) -> None:
    want = sources.files(data)
    total = block_count(want)
    mount = mount_of("s3", minio, "", data)
    ws = workers_factory(mount, 2)
    sc = sidecars(sidecar_config(mount, ws.urls()))
    read_all(sc.mountpoint, want)
    sc.stop()
    before = [w.status() for w in ws.procs]

    # scale out: the new worker takes about a third; the others keep what they had
    third = ws.add()
    sc = sidecars(sidecar_config(mount, ws.urls()))
    read_all(sc.mountpoint, want)
    got = sc.status()["blocks"]
    moved = got["worker_misses"]
    assert got["worker_hits"] + moved == total
    assert 0.15 * total < moved < 0.5 * total, (moved, total)
    assert third.status()["ufs"]["reads"] == moved  # only the new worker's share moved
    for w, b in zip(ws.procs[:2], before, strict=True):
        assert w.status()["ufs"]["reads"] == b["ufs"]["reads"]
    sc.stop()

    # scale in: the leaving worker hands its blocks to their owners among those who stay
    for w in ws.procs[:2]:
        w.write_config(worker_config(mount, ws.urls()[:2]))
    assert third.stop() == 0
    assert "handed" in third.log.read_text()
    ws.procs.pop()
    sc = sidecars(sidecar_config(mount, ws.urls()))
    read_all(sc.mountpoint, want)
    got = sc.status()["blocks"]
    assert got["worker_hits"] == total, got  # nothing was thrown away
    assert got["worker_misses"] == 0


def test_s3_that_stops_gives_eio_within_the_timeout_and_reads_recover(
    data: Path, tmp_path: Path, sidecars: Any
) -> None:
    server = S3Server(tmp_path / "minio").start()
    try:
        want = sources.files(data)
        asyncio.run(server.upload(want, prefix="train"))
        mount = {
            "uri": server.uri("train"),
            "options": {"endpoint": server.endpoint, "timeout": "1s"},
        }
        sc = sidecars(sidecar_config(mount, [], read_timeout=3.0, readahead=0))
        names = sorted(k for k, v in want.items() if v)
        assert (sc.mountpoint / names[0]).read_bytes() == want[names[0]]
        server.stop()
        t0 = time.monotonic()
        with pytest.raises(OSError, match="Input/output error") as info:
            (sc.mountpoint / names[1]).read_bytes()
        assert info.value.errno == errno.EIO
        assert time.monotonic() - t0 < 10  # bounded: EIO, never a hang
        server.start()
        assert (sc.mountpoint / names[1]).read_bytes() == want[names[1]]
    finally:
        server.stop()


def test_a_corrupt_block_on_a_workers_disk_is_detected_and_fetched_again(
    data: Path, tmp_path: Path, workers_factory: Any, sidecars: Any
) -> None:
    want, mount, ws = ssd_worker(data, tmp_path / "ssd", workers_factory)
    name = next(k for k, v in want.items() if len(v) > BLOCK)
    sc = sidecars(sidecar_config(mount, ws.urls()))
    assert (sc.mountpoint / name).read_bytes() == want[name]
    sc.stop()
    stored = written(tmp_path / "ssd", ws.procs[0])
    victim = stored[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    reads_before = ws.procs[0].status()["ufs"]["reads"]

    sc = sidecars(sidecar_config(mount, ws.urls()))
    assert (sc.mountpoint / name).read_bytes() == want[name]
    st = ws.procs[0].status()
    assert st["corrupt"] == 1
    assert st["ufs"]["reads"] == reads_before + 1  # that one block came from the UFS again


@pytest.mark.parametrize("engine", ["native", "pyfuse3"])
def test_a_sidecars_own_disk_tier_serves_its_next_mount_each_block_read_once_and_checked(
    engine: str,
    monkeypatch: pytest.MonkeyPatch,
    minio: S3Server,
    data: Path,
    tmp_path: Path,
    sidecars: Any,
) -> None:
    """A sidecar with a disk tier of its own and no cache worker (an edge node's emptyDir):
    its first read keeps every block in a file (written behind the READs, all whole once it
    has unmounted). The next mount reads them from there, not from S3: each block's file
    once, not once per READ (the READs after the first find it held), blocks ahead of a
    sequential reader read before their READs come, every READ's answer checked by the
    pieces it covers. A block file damaged in place fails that check, and the READ is
    answered again with the block's true bytes, from S3."""
    monkeypatch.setenv("FLUIDFED_FUSE", engine)
    mount = mount_of("s3", minio, "", data)
    want = sources.files(data)
    own = tmp_path / "own"
    size = 4 * BLOCK  # (the default: a block file of a huge page or more, mapped lazily)

    def count(files: list[str]) -> int:
        return sum(-(-len(want[k]) // size) for k in files)

    tier = {"medium": "SSD", "quota": "1GiB", "path": str(own)}
    cfg = sidecar_config(mount, [], cache=[tier], block_size=size)
    fill = sidecars(cfg, name="fill")
    read_all(fill.mountpoint, want)
    assert fill.status()["blocks"]["ufs_reads"] == count(list(want))
    fill.stop()
    files = [p for p in own.rglob("*") if p.is_file() and len(p.name) == 32]
    assert len(files) == count(list(want))  # every block's file whole, none left half

    big = sorted(want, key=lambda k: len(want[k]))[-2:]
    assert all(len(want[k]) > size for k in big)
    sc = sidecars(cfg, name="warm")
    for name in big:  # (a READ per 128 KiB: 32 for each whole block)
        assert read_in_pieces(sc.mountpoint / name) == want[name]
    st = sc.status()
    assert st["blocks"]["ufs_reads"] == 0
    assert st["reads"] >= sum(-(-len(want[k]) // (BLOCK // 8)) for k in big)
    assert st["cache"]["file_reads"] == count(big)  # (not one per READ)
    assert st["cache"]["loads"] > 0  # read ahead of their READs
    assert st["blocks"]["reread"] == st["cache"]["corrupt"] == 0
    sc.stop()

    for f in files:  # one byte of each block's data damaged, its trailer as written
        raw = bytearray(f.read_bytes())
        raw[(len(raw) - blockfile.trailer_size(len(raw))) // 2] ^= 0xFF
        f.write_bytes(bytes(raw))
    again = sidecars(cfg, name="damaged")
    for name in big:
        assert read_in_pieces(again.mountpoint / name) == want[name]
    st = again.status()
    assert st["blocks"]["corrupt"] + st["cache"]["corrupt"] > 0
    assert st["blocks"]["ufs_reads"] > 0  # those blocks from S3 again


def read_in_pieces(path: Path, piece: int = BLOCK // 8, *, drop: bool = False) -> bytes:
    """A file read `piece` bytes at a time with the kernel's read-ahead off, so that each
    read is a READ of its own: several READs to a block. `drop`: its pages in the page
    cache dropped first, so that every byte is asked for again."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if drop:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        out = bytearray()
        while chunk := os.read(fd, piece):
            out += chunk
        return bytes(out)
    finally:
        os.close(fd)


@pytest.mark.parametrize("engine", ["native", "pyfuse3"])
def test_a_block_file_damaged_after_its_workers_check_is_caught_as_it_is_read(
    engine: str,
    monkeypatch: pytest.MonkeyPatch,
    data: Path,
    tmp_path: Path,
    workers_factory: Any,
    sidecars: Any,
) -> None:
    """A worker's block file in the page cache is mapped by a sidecar on its node without
    reading it whole first: each READ's answer is checked by the pieces it covers as it is
    sent (pyfuse3's session: the whole block, before it answers), the native session's
    READs answered from a block it holds too. A file damaged after the worker checked it
    (its bytes, not its trailer) fails that check; the READ is answered again, from the
    worker, with the block's true bytes."""
    monkeypatch.setenv("FLUIDFED_FUSE", engine)
    want, mount, ws = ssd_worker(data, tmp_path / "ssd", workers_factory)
    first, second = sorted(want, key=lambda k: len(want[k]))[-2:]
    assert len(want[first]) > 2 * BLOCK and len(want[second]) > 2 * BLOCK
    reader = sidecars(sidecar_config(mount, ws.urls()))
    read_all(reader.mountpoint, want)  # the worker keeps every block
    reader.stop()
    damaged = written(tmp_path / "ssd", ws.procs[0])
    for f in damaged:
        f.read_bytes()  # (in the page cache now: mapped when read, not read past it)

    # a new reader learns where the worker's files lie (the worker checks what it points
    # to) and reads the first file from them, mapped, every piece's check holding; then
    # every block file is damaged in place: one byte of its last piece, its trailer as the
    # worker wrote it
    sc = sidecars(sidecar_config(mount, ws.urls()))
    assert read_in_pieces(sc.mountpoint / first) == want[first]
    status = sc.status()
    got = status["blocks"]
    assert got["short_circuit"] > 0 and got["reread"] == got["corrupt"] == 0
    # the native session answers most READs that lie in a block held there by itself
    # (the first READ of a block, or all, come through the event loop), counted alike
    in_session = status["reads_in_session"]
    if engine == "native":
        assert status["reads"] == status["fuse_requests"]["read"]
        assert status["reads"] // 2 <= in_session < status["reads"]
    else:
        assert in_session == 0
    for f in damaged:
        raw = f.read_bytes()
        size = blockfile.data_length(f, len(raw))
        fd = os.open(f, os.O_RDWR)
        try:
            os.pwrite(fd, bytes([raw[size - 1] ^ 0xFF]), size - 1)
        finally:
            os.close(fd)

    assert read_in_pieces(sc.mountpoint / second) == want[second]
    status = sc.status()
    got = status["blocks"]
    assert got["reread"] >= 1  # caught as it was read, not when it was mapped
    assert 1 <= got["corrupt"] <= len(damaged)
    # an answer that failed its check and was sent again counts once; the pieces' pages
    # were asked of the page cache (cachestat), not faulted in
    assert status["bytes_read"] == len(want[first]) + len(want[second])
    assert status["cachestat_refused"] is False
    # small files (one block) too: handed to the kernel from their checked file, or read
    # the usual way once that check fails, never from the damaged file unchecked
    small = [k for k, v in want.items() if 0 < len(v) <= BLOCK][:20]
    for k in small:
        assert (sc.mountpoint / k).read_bytes() == want[k], k
    assert sc.status()["blocks"]["corrupt"] >= got["corrupt"] + len(small)


def cached_or_dropped(tier: Path, worker: WorkerProcess, *, cached: bool) -> list[Path]:
    """A worker's block files once written, written back (none of their pages is let go of
    as that ends), then each read into the page cache (`cached`) or dropped from it."""
    files = written(tier, worker)
    os.sync()
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            if cached:
                f.read_bytes()
            else:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            assert blockfile.in_page_cache(fd, os.fstat(fd).st_size) == cached, f
        finally:
            os.close(fd)
    return files


def _read_beside_its_worker(
    tmp_path: Path,
    workers_factory: Any,
    sidecars: Any,
    n: int,
    bs: int,
    *,
    cached: bool,
    readers: int = 1,
    mapped: float = 1 / 3,
    skew: int = 0,
    chunk: int = BLOCK,
) -> None:
    """A file of `n` blocks of `bs` bytes filled into a worker's files on this node, in the
    page cache (`cached`) or dropped from it, then read by a new sidecar from byte `skew`
    to its end (by `readers` at once, each its own consecutive part, `chunk` bytes at a
    time; the kernel's read-ahead then sends READs of 1 MiB from where each starts, across
    blocks for any `skew` not a multiple of 1 MiB): every block a hit
    at its worker, counted once, none read again; with the native session (the
    FLUIDFED_FUSE of the test) at least `mapped` of them mapped or read in by the session
    itself, and most READs answered there (the first blocks come over HTTP as the reader
    learns where the files lie, and the sidecar reads a few ahead before the session is
    handed the rest: 133 of 140 here, warm or cold; 123 when each plan's end had the
    sidecar read the next blocks ahead itself); none with pyfuse3's. (A reader that
    starts mid-file has its first READ taken for a random read: once the sidecar knows
    where the files lie, a file dropped from the page cache gives it a span over HTTP,
    counted a hit, before its block is read whole; one in the page cache is mapped and
    kept, and a reader that comes before that is known has its block asked for whole:
    exactly `n` in six runs of session 56.)"""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(n)
    content = b"".join(rng.randbytes(bs) for _ in range(n))[:-777]
    (src / "big.bin").write_bytes(content)
    _, mount, ws = ssd_worker(src, tmp_path / "ssd", workers_factory, block_size=bs)
    filler = sidecars(sidecar_config(mount, ws.urls(), block_size=bs))
    assert (filler.mountpoint / "big.bin").read_bytes() == content
    filler.stop()
    files = cached_or_dropped(tmp_path / "ssd", ws.procs[0], cached=cached)
    assert len(files) == n

    sc = sidecars(sidecar_config(mount, ws.urls(), block_size=bs))
    part = -(-n // readers) * bs

    def read(at: int) -> bytes:
        end = min(at + part, len(content))
        with open(sc.mountpoint / "big.bin", "rb", buffering=0) as f:
            return b"".join(
                os.pread(f.fileno(), min(chunk, end - o), o) for o in range(at, end, chunk)
            )

    with concurrent.futures.ThreadPoolExecutor(readers) as pool:
        parts = list(pool.map(read, range(skew, len(content), part)))
    assert b"".join(parts) == content[skew:]
    status = sc.status()
    got = status["blocks"]
    # (up to 280 MiB each, twice: not left to fill the suite's filesystem, `test_scratch`)
    for f in [src / "big.bin", *files]:
        f.unlink()
    assert n <= got["worker_hits"] <= n + readers - 1, got
    assert got["worker_misses"] == got["ufs_reads"] == 0
    assert got["reread"] == got["corrupt"] == 0
    if os.environ.get("FLUIDFED_FUSE", "native") == "native":
        assert n * mapped <= got["session_mapped"] <= got["short_circuit"] <= n + readers - 1, got
        assert status["reads_in_session"] > status["reads"] // 2
    else:
        assert got["session_mapped"] == 0


@pytest.mark.parametrize(
    ("engine", "readers", "skew"),
    [("native", 1, 0), ("pyfuse3", 1, 0), ("native", 2, 0), ("native", 1, BLOCK // 16)],
    ids=["native", "pyfuse3", "native-two-readers", "native-unaligned"],
)
@pytest.mark.parametrize("cached", [True, False], ids=["warm", "dropped"])
def test_a_file_beside_its_worker_is_mapped_or_read_in_block_by_block_by_the_session(
    engine: str,
    readers: int,
    skew: int,
    cached: bool,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    workers_factory: Any,
    sidecars: Any,
) -> None:
    """A large file whose blocks lie in a worker's files on this node: once a block of it
    came from there, the native session maps the next ones itself (no READ reaches the
    event loop for them), checked as they are sent: from the page cache (warm), or read in
    from the disk by its loading threads ahead of the reader (dropped; blocks of 2 MiB,
    which the sidecar maps when read from the disk). Every block is counted once, a hit at
    its worker, whether the sidecar read it ahead or the session mapped it (the sidecar
    reads nothing ahead that the session was given); pyfuse3's session maps none itself.
    The file runs past the ends of two plans: at each, the READ that comes to the event
    loop for the block after it is handed back to the session, its reader handed on from
    there, rather than read there with the blocks after it read ahead there too.

    Two readers of one file at once, each its own half (two DataLoader workers reading one
    large file, each past one plan's 64 blocks: it hands over again midway): each hands
    its own blocks to the session (a plan of its own), rather than the two replacing each
    other's at every hand-over (then most READs came to the event loop: 50-54 of 160
    blocks mapped by the session, warm; 142 since; and cold, blocks were read twice).

    A reader that starts mid-block, 128 KiB at a time (the kernel's READs then run across
    blocks: all of them warm, blocks of 1 MiB; one in four cold, of 4 MiB): the session
    answers a READ across two blocks from the two, joined, mapping or reading in what it
    lacks, where they all came to the event loop before (none mapped by the session warm,
    and cold, up to 25 hits for 16 of 4 MiB). The READ across a plan's end, and one of a
    planned block that reached the session just before its plan, are handed back to the
    session rather than read by the event loop, which read a planned block twice (142
    hits for 140 blocks, every run)."""
    monkeypatch.setenv("FLUIDFED_FUSE", engine)
    if readers == 1:  # (past the ends of two plans: PLANNED blocks each)
        n, bs = (140, BLOCK) if cached else (140, 2 * BLOCK)
    else:
        n, bs = (2 * 80, BLOCK) if cached else (2 * 72, 2 * BLOCK)
    _read_beside_its_worker(
        tmp_path,
        workers_factory,
        sidecars,
        n,
        bs,
        cached=cached,
        readers=readers,
        mapped=0.9 if readers == 1 else 2 / 3,
        skew=skew,
        chunk=BLOCK // 8 if skew else BLOCK,
    )


def test_a_file_changed_under_its_reader_is_not_answered_from_blocks_the_session_holds(
    tmp_path: Path, workers_factory: Any, sidecars: Any
) -> None:
    """The native session answers the READs that lie in a block it holds (mapped from the
    worker's file on this node) without the event loop. A new listing in which the file
    changed lets go of them with the kernel's pages: a reader that keeps reading the file
    (keeping those blocks in use) gets its new bytes, not the old blocks'."""
    src = tmp_path / "src"
    src.mkdir()
    old = random.Random(11).randbytes(3 * BLOCK + 4321)
    (src / "f.bin").write_bytes(old)
    _, mount, ws = ssd_worker(src, tmp_path / "ssd", workers_factory)
    filler = sidecars(sidecar_config(mount, ws.urls()))
    assert (filler.mountpoint / "f.bin").read_bytes() == old
    filler.stop()
    for f in written(tmp_path / "ssd", ws.procs[0]):
        f.read_bytes()  # (in the page cache: mapped, not read past it)

    sc = sidecars(sidecar_config(mount, ws.urls(), metadata_ttl=0.3))
    path = sc.mountpoint / "f.bin"
    assert read_in_pieces(path) == old
    assert sc.status()["reads_in_session"] > 0

    new = bytes(b ^ 0x5A for b in old)  # (the same size)
    (src / "f.bin").write_bytes(new)

    def read_again() -> Any:
        got = read_in_pieces(path, drop=True)
        # (a read across the change may mix the two: read again)
        return True if got == new else NotYet("the old bytes, or some of them, still")

    eventually_blocking(read_again, "the file's new bytes", timeout=20, interval=0.01)
    assert read_in_pieces(path, drop=True) == new


def test_a_sidecar_beside_its_worker_reads_the_block_files_itself(
    data: Path, tmp_path: Path, workers_factory: Any, sidecars: Any
) -> None:
    want, mount, ws = ssd_worker(data, tmp_path / "ssd", workers_factory)
    first = sidecars(sidecar_config(mount, ws.urls()))
    read_all(first.mountpoint, want)
    # the worker fetched them: misses, but for blocks it read in a run with the one before
    # them (`BlockQuery.run`) that the sidecar found in its files before it asked: hits
    cold = first.status()["blocks"]
    assert cold["worker_misses"] + cold["worker_hits"] == block_count(want)
    assert cold["worker_hits"] <= cold["short_circuit"]
    assert ws.procs[0].status()["ufs"]["reads"] == block_count(want)
    first.stop()
    ws.procs[0].wait_written()  # a block still being written is not located: sent over HTTP

    sc = sidecars(sidecar_config(mount, ws.urls()))
    read_all(sc.mountpoint, want)
    got = sc.status()["blocks"]
    # every block came from the worker's files, read by the sidecar, none over the socket
    assert got["short_circuit"] == got["worker_hits"] == block_count(want)
    assert got["ufs_reads"] == got["worker_misses"] == 0

    # the first ones the worker pointed to; the rest the sidecar found in the same
    # directory and reported (within a second): to the worker they are hits all the same
    # (with those of the first reader's it read from the files)
    read_from_files = block_count(want) + cold["short_circuit"]

    def all_reported() -> Any:
        served = ws.procs[0].status()["served"]
        return served if served["short_circuit"] >= read_from_files else NotYet(served)

    served = eventually_blocking(
        all_reported, "the sidecar's reports of the blocks it read", timeout=10, interval=0.2
    )
    assert served["short_circuit"] == read_from_files
    assert served["located"] < block_count(want) // 4  # most were found without asking

    # and a reader that asks not to, gets the bytes over HTTP
    sc.stop()
    sc = sidecars(sidecar_config(mount, ws.urls(), short_circuit=False))
    read_all(sc.mountpoint, want)
    assert sc.status()["blocks"]["short_circuit"] == 0
    assert sc.status()["blocks"]["worker_hits"] == block_count(want)


@pytest.mark.parametrize("engine", ["native", "pyfuse3"])
def test_small_files_beside_their_worker_are_read_from_its_files_once(
    engine: str,
    monkeypatch: pytest.MonkeyPatch,
    data: Path,
    tmp_path: Path,
    workers_factory: Any,
    sidecars: Any,
) -> None:
    """A small file whose block lies in a worker's file on this node is handed to the
    kernel straight from that file: by pyfuse3's session into the page cache with its OPEN
    (no READ follows), by the native one (its opens take no message) as the answer to its
    one READ. Either way the file is read past the page cache when not in it, nothing of
    it stays in the sidecar's memory, and opened again nothing is read."""
    monkeypatch.setenv("FLUIDFED_FUSE", engine)
    monkeypatch.setenv("FLUIDFED_FUSE_OPENS", "kernel")  # (the native session's)
    pushes = engine == "pyfuse3"
    want, mount, ws = ssd_worker(data, tmp_path / "ssd", workers_factory)
    first = sidecars(sidecar_config(mount, ws.urls()))
    read_all(first.mountpoint, want)  # the worker fetches and keeps every block
    assert first.status()["blocks"]["pushed"] == 0  # none was on this machine yet
    first.stop()

    # from the disk: read past the page cache (and handed on in a thread)
    for p in written(tmp_path / "ssd", ws.procs[0]):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    sc = sidecars(sidecar_config(mount, ws.urls()))
    small = [k for k, v in want.items() if 0 < len(v) <= BLOCK]
    large = {k: v for k, v in want.items() if len(v) > BLOCK}
    for k, v in large.items():  # READ requests: these also show where the files lie
        assert (sc.mountpoint / k).read_bytes() == v
    got = sc.status()
    reads = got["reads"]
    assert got["blocks"]["pushed"] == 0 and reads > 0
    for k in small:
        assert (sc.mountpoint / k).read_bytes() == want[k]
    got = sc.status()
    assert got["blocks"]["pushed"] == len(small)
    if pushes:  # with its OPEN: no READ reached us
        assert got["reads"] == reads
    else:
        assert got["reads"] - reads == len(small)
        assert got["fuse_requests"]["open"] == 1 and got["fuse_requests"]["release"] == 0
    assert got["blocks"]["short_circuit"] == block_count(want)
    assert got["cache"]["blocks"] <= block_count(large)  # the small ones not kept
    assert got["blocks"]["worker_misses"] == got["blocks"]["ufs_reads"] == 0
    reads = got["reads"]

    # opened again on the same mount: the kernel has them, nothing is read or pushed twice;
    # but for a file whose pages it let go of meanwhile (memory pressure: once in a full CI
    # run, 293 READs against 292), read again with one READ (by the native session pushed
    # again, as its first was), counted just before; a few at most, or something let go
    # of them all (an invalidation, pages not kept)
    let_go = sum(not fuse_pages_cached(sc.mountpoint / k, len(want[k])) for k in small)
    assert let_go <= len(small) // 4, (let_go, len(small))
    for k in small:
        assert (sc.mountpoint / k).read_bytes() == want[k]
    got = sc.status()
    assert got["blocks"]["pushed"] == len(small) + (0 if pushes else let_go)
    assert got["reads"] == reads + let_go, (
        reads,
        let_go,
        got["fuse_requests"],
        got["blocks"],
        got["cache"],
    )
    # the block files were read past the page cache (O_DIRECT): not in memory twice
    files = [p for p in written(tmp_path / "ssd", ws.procs[0]) if p.is_file()]
    for p in files:
        with pytest.raises(NotCached):
            blockfile.map_block_file(p, cached_only=True)

    # a new mount, the block files in the page cache now (read by another process): mapped
    # and handed on right away
    for p in files:
        p.read_bytes()
    sc.stop()
    sc = sidecars(sidecar_config(mount, ws.urls()))
    for k in [*large, *small]:
        assert (sc.mountpoint / k).read_bytes() == want[k]
    got = sc.status()
    assert got["blocks"]["pushed"] == len(small)
    assert got["blocks"]["short_circuit"] == block_count(want)

    # a reader that does not read this machine's block files pushes nothing
    sc.stop()
    sc = sidecars(sidecar_config(mount, ws.urls(), short_circuit=False))
    read_all(sc.mountpoint, want)
    assert sc.status()["blocks"]["pushed"] == 0
    assert sc.status()["blocks"]["short_circuit"] == 0


def test_a_worker_started_at_a_low_open_files_limit_serves_at_its_hard_limit(
    data: Path, tmp_path: Path, workers_factory: Any, sidecars: Any
) -> None:
    """A container runtime may start a process at 1,024 open files (its hard limit far
    above): the worker, which holds a descriptor per reader's connection, raises it to the
    hard limit before it serves, and serves."""
    wrap = ("prlimit", "--nofile=1024:8192", "--")
    want, mount, ws = ssd_worker(data, tmp_path / "ssd", workers_factory, wrap=wrap)
    proc = ws.procs[0].proc
    assert proc is not None
    limits = Path(f"/proc/{proc.pid}/limits").read_text().splitlines()
    line = next(x for x in limits if x.startswith("Max open files"))
    assert line.split()[3:5] == ["8192", "8192"], line
    sc = sidecars(sidecar_config(mount, ws.urls()))
    read_all(sc.mountpoint, want)
    assert sc.status()["blocks"]["worker_misses"] > 0


def fuse_pages_cached(path: Path, size: int) -> bool:
    """Whether the kernel holds every page of a file of the mount, asked of cachestat
    (which sends the mount no request; the open sends none with the native session's
    kernel opens, and an OPEN with pyfuse3's, which pushes nothing for a file it pushed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return blockfile._cachestat_all(fd, size)
    finally:
        os.close(fd)


def filled_ssd_worker(
    data: Path, tmp_path: Path, workers_factory: Any, sidecars: Any
) -> tuple[dict[str, bytes], dict[str, Any], Workers]:
    """`ssd_worker` with every block of the dataset in its disk tier (a reader read it all),
    each in its file (the worker answers before it writes)."""
    want, mount, ws = ssd_worker(data, tmp_path / "ssd", workers_factory)
    first = sidecars(sidecar_config(mount, ws.urls()))
    read_all(first.mountpoint, want)
    first.stop()
    ws.procs[0].wait_written()
    files = [p for p in (tmp_path / "ssd").rglob("*") if p.is_file()]
    assert len(files) == block_count(want) == ws.procs[0].status()["blocks"], files
    return want, mount, ws


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_workers_disk_blocks_are_sent_over_http_on_either_event_loop(
    loop: str,
    data: Path,
    tmp_path: Path,
    workers_factory: Any,
    sidecars: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sendfile(2) on asyncio's loop; uvloop has no `loop.sendfile` (the worker's answers
    failed there, and its readers fell back to the under storage): our own sendfile on
    its socket there, every block file sent so either way."""
    monkeypatch.setenv("FLUIDFED_EVENT_LOOP", loop)
    want, mount, ws = filled_ssd_worker(data, tmp_path, workers_factory, sidecars)
    sc = sidecars(sidecar_config(mount, ws.urls(), short_circuit=False))
    read_all(sc.mountpoint, want)
    got = sc.status()["blocks"]
    assert got["worker_hits"] == block_count(want), got
    assert got["worker_errors"] == got["ufs_reads"] == got["short_circuit"] == 0
    assert "NotImplementedError" not in ws.procs[0].log.read_text()
    served = ws.procs[0].status()["served"]
    assert served["sendfile"] == block_count(want), served


def test_a_reader_hanging_up_mid_block_leaves_the_worker_serving(
    data: Path,
    tmp_path: Path,
    workers_factory: Any,
    sidecars: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A block file being sent with sendfile(2) on uvloop to a reader that goes away: no
    error logged, the next reader served from the same file."""
    monkeypatch.setenv("FLUIDFED_EVENT_LOOP", "uvloop")
    want, mount, ws = filled_ssd_worker(data, tmp_path, workers_factory, sidecars)
    rel = max(want, key=lambda k: len(want[k]))
    ref, key = asyncio.run(_block_of(data, rel))
    query = protocol.BlockQuery(
        mount=ref.mount, key=ref.key, size=ref.size, index=0, version=ref.version
    )
    url = URL(protocol.block_url(ws.urls()[0], key)).with_query(query.params())
    for _ in range(5):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
            sock.settimeout(10)
            sock.connect((url.host, url.port))
            lines = [f"GET {url.raw_path_qs} HTTP/1.1", f"Host: {url.host}:{url.port}"]
            lines += [f"{k}: {v}" for k, v in auth("reader").items()]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            assert sock.recv(12) == b"HTTP/1.1 200"  # then gone, most of the block unread
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sc = sidecars(sidecar_config(mount, ws.urls(), short_circuit=False))
    assert (sc.mountpoint / rel).read_bytes() == want[rel]
    served = ws.procs[0].status()["served"]
    # this reader's blocks, and those of the five that the socket's buffer took whole
    # before the reset (the others raised within sendfile, to the reader that hung up)
    assert 0 <= served["sendfile"] - -(-len(want[rel]) // BLOCK) <= 5, served
    log = ws.procs[0].log.read_text()
    assert "Error handling request" not in log and "Traceback" not in log


def random_reads(mnt: Path, want: dict[str, bytes], seed: int) -> int:
    """Reads of 4-40 KiB at random places past each large file's first block, each through
    its own open (none continues a sequential streak, so each asks for just its span);
    checked against the source. How many were made."""
    import random

    rng = random.Random(seed)
    made = 0
    for rel, body in sorted(want.items()):
        if len(body) <= 2 * BLOCK:
            continue
        for _ in range(4):
            off = rng.randrange(BLOCK + 1, len(body) - 4096)
            n = rng.randrange(4096, 40 * 1024)
            fd = os.open(mnt / rel, os.O_RDONLY)
            try:
                got = os.pread(fd, n, off)
            finally:
                os.close(fd)
            assert got == body[off : off + n], (rel, off, n)
            made += 1
    return made


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("medium", ["MEM", "SSD"])
def test_random_reads_through_a_worker_over_http_get_exactly_their_bytes(
    loop: str,
    medium: str,
    minio: S3Server,
    data: Path,
    tmp_path: Path,
    workers_factory: Any,
    sidecars: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A random read asks the worker for its span alone: first a miss the worker fetches
    whole from S3 and cuts, then a cut of the block its memory or disk tier holds. Both
    answers are sent from memory after their headers (not joined with them first)."""
    monkeypatch.setenv("FLUIDFED_EVENT_LOOP", loop)
    mount = mount_of("s3", minio, "", data)
    want = sources.files(data)
    tiers = (
        None
        if medium == "MEM"
        else [{"medium": "SSD", "quota": "1GiB", "path": str(tmp_path / "ssd")}]
    )
    ws = workers_factory(mount, 1, tiers=tiers)
    for seed in (1, 2):  # misses, then the same spans from the worker's tier
        sc = sidecars(sidecar_config(mount, ws.urls(), short_circuit=False), name=f"r{seed}")
        made = random_reads(sc.mountpoint, want, seed=1)
        got = sc.status()["blocks"]
        assert made > 0
        assert got["ufs_reads"] == got["worker_errors"] == got["short_circuit"] == 0, got
        # (some reads are the kernel's or the sidecar's own: a file's reads overlap)
        assert got["worker_hits" if seed == 2 else "worker_misses"] > made // 2, got
        sc.stop()


def test_random_reads_of_a_block_file_damaged_after_its_workers_check_get_its_true_bytes(
    data: Path, tmp_path: Path, workers_factory: Any, sidecars: Any
) -> None:
    """A worker sends a span of a disk block it checked once from a read of the pieces the
    span lies in, checked against the block file's trailer: a file damaged in place since
    (its bytes, not its trailer) is caught there, dropped and fetched again, and the reader
    gets the true bytes. Before, the span was cut from the damaged bytes and sent with a
    CRC taken of them, which its receiver found whole."""
    want, mount, ws = ssd_worker(data, tmp_path / "ssd", workers_factory)
    first = sidecars(sidecar_config(mount, ws.urls()), name="fill")
    read_all(first.mountpoint, want)  # (the worker checks each block as it writes it)
    first.stop()
    for f in written(tmp_path / "ssd", ws.procs[0]):
        raw = f.read_bytes()
        size = blockfile.data_length(f, len(raw))
        fd = os.open(f, os.O_RDWR)
        try:  # every byte of the block flipped, its trailer left as the worker wrote it
            os.pwrite(fd, bytes(b ^ 0xFF for b in raw[:size]), 0)
        finally:
            os.close(fd)
    sc = sidecars(sidecar_config(mount, ws.urls(), short_circuit=False))
    made = random_reads(sc.mountpoint, want, seed=7)  # (each checked against the source)
    got = sc.status()["blocks"]
    assert made > 0 and got["short_circuit"] == got["ufs_reads"] == 0, got
    assert ws.procs[0].status()["corrupt"] >= 1  # (found as each span was read)


@pytest.mark.parametrize("cached", [True, False], ids=["warm", "dropped"])
def test_random_reads_beside_their_worker_map_its_files_in_the_page_cache_else_ask_spans(
    cached: bool, tmp_path: Path, workers_factory: Any, sidecars: Any
) -> None:
    """Random reads of a file whose blocks lie in a worker's files on this node: where a
    block's file is whole in the page cache, the sidecar maps it (after one block asked
    for whole, which tells it where the files lie), rather than asking the worker for each
    span over HTTP, as it did: a random reader never located the files. Where the file
    was dropped from the page cache, it asks for the span (a whole block read from the
    disk for a few KiB would cost the disk 100 times the bytes). The reads lie four blocks
    apart, each through its own open: none is taken for a sequential reader's."""
    src = tmp_path / "src"
    src.mkdir()
    body = random.Random(23).randbytes(24 * BLOCK - 555)
    (src / "big.bin").write_bytes(body)
    _, mount, ws = ssd_worker(src, tmp_path / "ssd", workers_factory)
    filler = sidecars(sidecar_config(mount, ws.urls()))
    assert (filler.mountpoint / "big.bin").read_bytes() == body
    filler.stop()
    cached_or_dropped(tmp_path / "ssd", ws.procs[0], cached=cached)
    sc = sidecars(sidecar_config(mount, ws.urls()))
    rng = random.Random(29)
    far = range(2, 24, 4)  # (a reader at block 0 or 1 starts a streak: read ahead)
    for index in far:
        off = index * BLOCK + rng.randrange(0, BLOCK // 2)
        n = rng.randrange(4096, 40 * 1024)
        fd = os.open(sc.mountpoint / "big.bin", os.O_RDONLY)
        try:
            assert os.pread(fd, n, off) == body[off : off + n], (off, n)
        finally:
            os.close(fd)
    got = sc.status()["blocks"]
    assert got["worker_misses"] == got["ufs_reads"] == got["worker_errors"] == 0, got
    assert got["reread"] == got["corrupt"] == 0, got
    spans = got["worker_hits"] - got["short_circuit"]  # (asked of the worker over HTTP)
    # the first read locates the files: its block asked for whole, read from its file
    assert (spans, got["short_circuit"]) == ((0, len(far)) if cached else (len(far) - 1, 1)), got


def test_a_malformed_touch_report_is_refused_with_the_expected_shape(
    data: Path, workers_factory: Any
) -> None:
    ws = workers_factory({"uri": f"file://{data}"}, 1)
    req = urllib.request.Request(
        f"{ws.urls()[0]}/v1/touch",
        data=json.dumps({"blocks": "not a list"}).encode(),
        headers={"Content-Type": "application/json", **auth("reader")},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 400
    reason = json.load(info.value)["reason"]
    assert '{"blocks": [[key, length], ...]}' in reason and "blocks" in reason
    assert ws.procs[0].status()["served"]["short_circuit"] == 0  # nothing was counted


def test_a_worker_whose_files_are_not_visible_is_read_over_http(
    data: Path, tmp_path: Path, workers_factory: Any, sidecars: Any
) -> None:
    # the worker in its own mount namespace, its cache on a tmpfs only it sees: for the
    # sidecar it is on another machine
    ssd = tmp_path / "ssd"
    hidden = ("unshare", "--mount", "--propagation", "private", "--")
    wrap = (*hidden, "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"', str(ssd))
    want, mount, ws = ssd_worker(data, ssd, workers_factory, wrap)
    first = sidecars(sidecar_config(mount, ws.urls()))
    read_all(first.mountpoint, want)
    first.stop()
    assert not any(ssd.iterdir())  # the blocks are on the worker's side only

    sc = sidecars(sidecar_config(mount, ws.urls()))
    read_all(sc.mountpoint, want)
    got = sc.status()["blocks"]
    assert got["short_circuit"] == 0
    assert got["worker_hits"] == block_count(want)
    assert got["worker_errors"] == 0 and got["ufs_reads"] == 0
    # the sidecar stopped asking for block files after the first answers it could not use
    # (as many as it had blocks in flight), not once per block
    tried = ws.procs[0].status()["served"]["short_circuit"]
    assert 1 <= tried <= 8 < block_count(want)
    assert 1 <= sc.log.read_text().count("is not readable here") <= tried


def test_writes_renames_and_deletions_are_refused(data: Path, sidecars: Any) -> None:
    sc = sidecars(sidecar_config({"uri": f"file://{data}"}, []))
    mnt = sc.mountpoint
    some = next(p for p in mnt.rglob("*") if p.is_file())
    attempts: list[Callable[[], object]] = [
        lambda: os.open(mnt / "new.txt", os.O_WRONLY | os.O_CREAT),
        lambda: os.open(some, os.O_RDWR),
        lambda: os.mkdir(mnt / "dir"),
        lambda: os.rename(some, mnt / "moved"),
        lambda: os.unlink(some),
        lambda: os.truncate(some, 0),
    ]
    for attempt in attempts:
        with pytest.raises(OSError, match="Read-only file system") as info:
            attempt()
        assert info.value.errno == errno.EROFS
    assert some.exists()


def test_sigterm_during_reads_unmounts_cleanly(data: Path, sidecars: Any) -> None:
    want = sources.files(data)
    sc = sidecars(sidecar_config({"uri": f"file://{data}"}, []))
    big = next(k for k, v in want.items() if len(v) > BLOCK)
    outcome: list[str] = []
    holding = threading.Event()

    def reader() -> None:
        try:
            with open(sc.mountpoint / big, "rb") as f:  # a file open across the unmount
                f.read(4096)
                holding.set()
                until = time.monotonic() + 5
                while time.monotonic() < until:
                    f.seek(0)
                    f.read(BLOCK)
                outcome.append("ok")
        except OSError as err:
            outcome.append(errno.errorcode.get(err.errno or 0, str(err)))
        finally:
            holding.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert holding.wait(10)
    assert sc.stop(signal.SIGTERM) == 0
    assert not is_mounted(sc.mountpoint)
    assert not sc.ready_file.exists()
    t.join(10)
    assert not t.is_alive()  # the open file did not hang its reader
    # reads that were under way end, from the page cache or with ENOTCONN (closing the
    # file after the unmount says ENOTCONN too): never a hang, never another error
    assert outcome and set(outcome) <= {"ok", "ENOTCONN"}, outcome


def test_a_sidecar_killed_with_sigkill_leaves_a_dead_mount_its_successor_clears(
    data: Path, sidecars: Any
) -> None:
    """The kubelet restarts a killed sidecar on the same mountpoint: the new one takes the
    dead FUSE mount away (it would otherwise outlive the pod) and serves again."""
    want = sources.files(data)
    config = sidecar_config({"uri": f"file://{data}"}, [])
    first = sidecars(config, "killed")
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait(10)
    assert is_mounted(first.mountpoint)  # its mount is left behind, dead
    with pytest.raises(OSError, match="not connected") as info:
        os.listdir(first.mountpoint / "does-not-exist")
    assert info.value.errno == errno.ENOTCONN
    second = SidecarProcess(first.dir.with_name("again"), config, first.mountpoint).start()
    try:
        read_all(second.mountpoint, want)
        with open("/proc/self/mounts") as f:
            at = [line for line in f if line.split()[1] == str(first.mountpoint.resolve())]
        assert len(at) == 1  # its own mount only: the dead one is gone, not shadowed
    finally:
        second.close()


# --- who may read, write, drain and load (issue 16) ---------------------------------------


async def _block_of(data: Path, rel: str) -> tuple[FileRef, str]:
    """A file of the local dataset as the sidecar lists it, and its first block's key."""
    mounts = [Mount(uri=f"file://{data}")]
    listed = await ufs.list_files(mounts, [ufs.open_ufs(m) for m in mounts])
    ref = listed[rel]
    return ref, ref.block_key(DATASET, BLOCK, 0)


def _call(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_a_forged_block_is_refused_and_the_mount_keeps_serving_the_source(
    data: Path, workers_factory: Any, sidecars: Any
) -> None:
    """The tester's reproduction: a PUT replacing a cached block, then a reader."""
    want = sources.files(data)
    mount = {"uri": f"file://{data}"}
    ws = workers_factory(mount, 1)
    first = sidecars(sidecar_config(mount, ws.urls()))
    read_all(first.mountpoint, want)  # every block now cached at the worker
    first.stop()
    rel = next(k for k, v in want.items() if len(v) > BLOCK)
    _, key = asyncio.run(_block_of(data, rel))
    forged = b"forged!" * (BLOCK // 7)
    put = f"{ws.urls()[0]}/v1/blocks/{key}"
    crc = {"X-Fluidfed-Checksum": str(blocks.checksum(forged))}
    other_key = local_token(DATASET, "peer", key=b"x" * 32)
    attempts = {
        "no credential": (crc, 401),
        "a token of another key": ({**crc, "Authorization": f"Bearer {other_key}"}, 401),
        "a reader's token": ({**crc, **auth("reader")}, 403),
        "the agent's token": ({**crc, **auth("agent")}, 403),
        "a peer of another dataset": ({**crc, **auth_of("other", "peer")}, 403),
    }
    for what, (headers, status) in attempts.items():
        got, body = _call(put, "PUT", forged, headers)
        assert got == status, f"{what}: {got} {body!r}"
    # a new pod reads the source's bytes, every block from the worker's cache
    second = sidecars(sidecar_config(mount, ws.urls()))
    assert (second.mountpoint / rel).read_bytes() == want[rel]
    read_all(second.mountpoint, want)
    st = second.status()["blocks"]
    assert st["worker_hits"] == block_count(want) and st["worker_errors"] == 0


def test_a_reader_gets_only_blocks_under_its_sub_path(data: Path, workers_factory: Any) -> None:
    ws = workers_factory({"uri": f"file://{data}"}, 1)
    inside = next(k for k in sources.files(data) if k.startswith("part-3/"))
    outside = next(k for k in sources.files(data) if k.startswith("part-1/"))
    research = auth("reader", sub_path="part-3", namespace="research")

    async def get(rel: str, headers: dict[str, str], direct: bool) -> int:
        """The status of a block request through aiohttp, or (`direct`) received in a
        thread into its buffer, as the sidecar does (`receive.Connections`)."""
        ref, key = await _block_of(data, rel)
        conns = receive.Connections() if direct else None
        async with aiohttp.ClientSession(headers=headers) as s:
            try:
                await workers.get_block(s, ws.urls()[0], key, ref, 0, conns=conns)
            except errors.WorkerError as err:
                return err.status
            finally:
                if conns is not None:
                    conns.close()
        return 200

    for direct in (False, True):
        assert asyncio.run(get(inside, research, direct)) == 200
        assert asyncio.run(get(outside, research, direct)) == 403  # ml's sub-path, say
        assert asyncio.run(get(outside, auth("reader"), direct)) == 200  # the whole dataset
        assert asyncio.run(get(outside, {}, direct)) == 401


def test_a_reader_cannot_step_out_of_its_sub_path_by_the_object_path_it_sends(
    tmp_path: Path, workers_factory: Any
) -> None:
    """The worker checks a reader's sub-path against where the object it asks for lies in
    the dataset, and reads it below the mount alone. Here the mount shows at /m: the reader
    may read /m/part-3, and the object m/part-3/s.bin lies at /m/m/part-3/s.bin, outside.
    Asked for as '/m/part-3/s.bin', the check joined the path whole to the mount point,
    which the leading '/' discarded: it saw /m/part-3/s.bin and let it through (200). Now
    the '/' is dropped for the check as for the read (403); a '..' is refused (400)."""
    root = tmp_path / "bucket"
    for rel in ("part-3/ok.bin", "m/part-3/s.bin"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode() * 100)
    (tmp_path / "beside.bin").write_bytes(b"not the dataset's" * 100)
    ws = workers_factory({"uri": f"file://{root}", "path": "/m"}, 1)
    reader = auth("reader", sub_path="m/part-3", namespace="research")

    async def get(key: str, size: int, headers: dict[str, str]) -> int:
        ref = FileRef(0, key, size)
        async with aiohttp.ClientSession(headers=headers) as s:
            try:
                await workers.get_block(s, ws.urls()[0], ref.block_key(DATASET, BLOCK, 0), ref, 0)
            except errors.WorkerError as err:
                return err.status
        return 200

    ok, secret = len(b"part-3/ok.bin") * 100, len(b"m/part-3/s.bin") * 100
    assert asyncio.run(get("part-3/ok.bin", ok, reader)) == 200
    assert asyncio.run(get("m/part-3/s.bin", secret, reader)) == 403
    assert asyncio.run(get("/m/part-3/s.bin", secret, reader)) == 403
    assert asyncio.run(get("/part-3/ok.bin", ok, reader)) == 200  # (an HTTP manifest's form)
    assert asyncio.run(get("part-3/../m/part-3/s.bin", secret, reader)) == 400
    # a reader of the whole dataset does not leave the mount's root either
    assert asyncio.run(get("m/part-3/s.bin", secret, auth("reader"))) == 200
    assert asyncio.run(get("../beside.bin", len(b"not the dataset's") * 100, auth("reader"))) == 400


def test_drain_and_load_answer_only_the_agent(data: Path, workers_factory: Any) -> None:
    ws = workers_factory({"uri": f"file://{data}"}, 1)
    url = ws.urls()[0]
    json_body = {"Content-Type": "application/json"}
    drain = json.dumps({"peers": ["http://127.0.0.1:9/"]}).encode()
    for path, body in (("/v1/drain", drain), ("/v1/load", b"{}")):
        for headers, status in (
            ({}, 401),
            (auth("reader"), 403),
            (auth("peer"), 403),
            (auth_of("other", "agent"), 403),
        ):
            got, said = _call(url + path, "POST", body, {**json_body, **headers})
            assert got == status, f"{path} {headers}: {got} {said!r}"
    assert _call(url + "/v1/drain", "POST", drain, {**json_body, **auth("agent")})[0] == 200
    assert _call(url + "/v1/load", "POST", b"{}", {**json_body, **auth("agent")})[0] == 202
    assert _call(url + "/v1/status")[0] == 401
    assert _call(url + "/healthz")[0] == 200  # the kubelet's probe needs none
    # the figures name the dataset and how its cache is used: to the binding's tokens
    assert _call(url + "/metrics")[0] == 401
    assert _call(url + "/metrics", headers=auth_of("other", "reader"))[0] == 403
    got, text = _call(url + "/metrics", headers=auth("reader"))
    assert got == 200 and b"fluidfed_" in text


def test_a_sidecars_status_answers_its_own_token_only(data: Path, sidecars: Any) -> None:
    """Its figures name the dataset, its mount and its workers; in a pod that shares the
    node's network (Fluid's FUSE pods may), its loopback is the node's. The probes need
    no token."""
    sc = sidecars(sidecar_config({"uri": f"file://{data}"}, []))
    for path in ("/v1/status", "/metrics"):
        assert _call(sc.status_url + path)[0] == 401
        assert _call(sc.status_url + path, headers=auth_of("other", "reader"))[0] == 401
        got, body = _call(sc.status_url + path, headers=sc.authorization())
        assert got == 200 and body
    # a header of other than UTF-8 is a refusal (it was a 500, with a traceback logged)
    host, port = sc.status_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"GET /v1/status HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer \xff\xfe\r\n\r\n"
        )
        assert conn.recv(4096).split(b" ", 2)[1] == b"401"
    assert _call(sc.status_url + "/healthz")[0] == 200
    assert _call(sc.status_url + "/readyz")[0] in (200, 503)


@pytest.mark.parametrize("n", [1, 2])
def test_a_warm_up_reads_a_workers_blocks_one_after_the_other_in_one_get(
    n: int, minio: S3Server, data: Path, workers_factory: Any, sidecars: Any
) -> None:
    """A warm-up (`POST /v1/load`) reads each worker's blocks that follow one another in a
    file in runs, one ranged GET each from S3: every block cached all the same, each read
    from the store once, and a reader then finds them all."""
    want = sources.files(data)
    mount = mount_of("s3", minio, "", data)
    ws = workers_factory(mount, n)
    body, headers = b"{}", {"Content-Type": "application/json", **auth("agent")}
    for url in ws.urls():
        assert _call(url + "/v1/load", "POST", body, headers)[0] == 202

    def loaded() -> Any:
        got = [json.loads(_call(u + "/v1/load", headers=headers)[1]) for u in ws.urls()]
        return got if all(g["state"] == "done" for g in got) else NotYet(got)

    progress = eventually_blocking(loaded, "the warm-ups", timeout=60, interval=0.2)
    assert sum(p["blocks"] for p in progress) == block_count(want)
    assert all(p["done"] == p["cached"] == p["blocks"] and p["errors"] == 0 for p in progress)
    ufs = [w.status()["ufs"] for w in ws.procs]
    assert sum(u["reads"] for u in ufs) == block_count(want)  # each block once
    assert all(u["joined"] > 0 for u in ufs)  # runs in one GET, on every worker
    sc = sidecars(sidecar_config(mount, ws.urls()))
    read_all(sc.mountpoint, want)
    got = sc.status()["blocks"]
    assert got["worker_hits"] == block_count(want) and got["worker_misses"] == 0
    assert sum(w.status()["ufs"]["reads"] for w in ws.procs) == block_count(want)


def test_a_worker_without_the_binding_keys_does_not_start(tmp_path: Path) -> None:
    cfg = tmp_path / "worker.json"
    cfg.write_text(json.dumps(worker_config({"uri": f"file://{tmp_path}"}, [])))
    got = subprocess.run(
        [sys.executable, "-m", "fluidfed.cli.main", "worker", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert got.returncode != 0
    assert "a cache worker needs the binding's keys" in got.stderr


def test_rotating_the_key_during_reads_keeps_them_going(
    data: Path, workers_factory: Any, sidecars: Any
) -> None:
    """The agent's three steps: workers get [new, old]; readers get tokens of the new key;
    the old key goes. Reads run through all of it and never fall back to the UFS."""
    want = sources.files(data)
    mount = {"uri": f"file://{data}"}
    ws = workers_factory(mount, 2)
    sc = sidecars(sidecar_config(mount, ws.urls(), metadata_ttl=0.5))
    read_all(sc.mountpoint, want)  # the workers hold everything
    new = credentials.new_key()
    stop = threading.Event()
    failures: list[str] = []
    passes = 0

    def reader() -> None:
        nonlocal passes
        try:
            while not stop.is_set():
                for rel, body in want.items():
                    # drop the kernel's and the sidecar's copies: every pass asks the workers
                    with open(sc.mountpoint / rel, "rb") as f:
                        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                        if f.read() != body:
                            failures.append(rel)
                passes += 1
        except Exception as err:  # a read that fails ends the reader: the test says so
            failures.append(repr(err))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        steps: list[Callable[[], object]] = [
            lambda: [
                w.write_credentials(local_credentials([new, LOCAL_KEY], sign=1)) for w in ws.procs
            ],
            lambda: sc.write_token(local_token(DATASET, key=new)),
            lambda: [w.write_credentials(local_credentials([new])) for w in ws.procs],
        ]
        for step in steps:
            step()
            for w in ws.procs:
                w.reload()
            sc.reload()
            before = passes
            deadline = time.monotonic() + 60
            # at least one whole pass after each step, however slow the machine
            while passes < before + 2 and time.monotonic() < deadline and thread.is_alive():
                time.sleep(0.1)
            assert passes >= before + 2, (passes, before, failures)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    assert not failures
    st = sc.status()["blocks"]
    assert st["worker_errors"] == 0 and st["ufs_reads"] == 0, st
    # the old key is gone: its tokens are refused now
    old = {"Authorization": "Bearer " + local_token(DATASET, "agent")}
    assert _call(f"{ws.urls()[0]}/v1/status", headers=old)[0] == 401
    new_agent = {"Authorization": "Bearer " + local_token(DATASET, "agent", key=new)}
    assert _call(f"{ws.urls()[0]}/v1/status", headers=new_agent)[0] == 200


# --- blocks received straight into their buffers, in threads (issue 20) -------------------


def written(tier: Path, worker: WorkerProcess) -> list[Path]:
    """The block files of a worker's disk tier once none is being written: a worker answers
    a miss before its file is whole (write-behind), so a test that reads or damages the
    files waits for them: first until the worker has no block left to write (a write not
    yet begun shows no temporary file), then until no temporary file is left."""
    worker.wait_written(30)

    def whole() -> list[Path] | None:
        files = [p for p in tier.rglob("*") if p.is_file()]
        return None if not files or any(p.suffix == ".tmp" for p in files) else files

    return eventually_blocking(whole, f"the block files in {tier} written", timeout=30)


def _whole_blocks(data: Path) -> list[str]:
    """Files of the test dataset longer than a block: their block 0 is a whole one."""
    return sorted(k for k, v in sources.files(data).items() if len(v) > BLOCK)


def test_blocks_received_into_their_buffers_are_the_sources_over_one_kept_connection(
    data: Path, workers_factory: Any
) -> None:
    want = sources.files(data)
    ws = workers_factory({"uri": f"file://{data}"}, 1)
    names = _whole_blocks(data)[:4]
    assert len(names) == 4

    async def run() -> None:
        conns = receive.Connections()
        try:
            async with aiohttp.ClientSession(headers=auth("reader")) as s:

                async def get(rel: str, span: tuple[int, int] | None = None) -> workers.Fetched:
                    ref, key = await _block_of(data, rel)
                    return await workers.get_block(s, ws.urls()[0], key, ref, 0, span, conns=conns)

                for attempt in range(2):  # the worker fetches them, then has them
                    for rel in names:
                        got = await get(rel)
                        assert bytes(got.data) == want[rel][:BLOCK]
                        assert got.hit == (attempt == 1)
                part = await get(names[0], (1000, 5000))
                assert bytes(part.data) == want[names[0]][1000:6000]
                # a block still held keeps its buffer: the next ones go elsewhere
                kept = (await get(names[0])).data
                reused = conns.buffers.reused
                for rel in names[1:]:
                    assert bytes((await get(rel)).data) == want[rel][:BLOCK]
                assert bytes(kept) == want[names[0]][:BLOCK]
                assert conns.buffers.reused > reused  # those let go were used again
                with pytest.raises(TypeError):  # handed out read-only
                    kept[0] = 0  # type: ignore[index]
            # one request at a time: every one of them on the first connection, but the
            # small span, received on the event loop over a connection of the loop's
            assert (conns.opened, conns.opened_on_loop, conns.idle()) == (1, 1, 2)
        finally:
            conns.close()
        assert conns.idle() == 0

    asyncio.run(run())


def test_a_damaged_block_received_into_its_buffer_is_asked_for_again_checked(
    data: Path, tmp_path: Path, workers_factory: Any
) -> None:
    want, _, ws = ssd_worker(data, tmp_path / "ssd", workers_factory)
    rel = _whole_blocks(data)[0]

    async def get() -> workers.Fetched:
        ref, key = await _block_of(data, rel)
        conns = receive.Connections()
        try:
            async with aiohttp.ClientSession(headers=auth("reader")) as s:
                return await workers.get_block(s, ws.urls()[0], key, ref, 0, conns=conns)
        finally:
            conns.close()

    assert bytes(asyncio.run(get()).data) == want[rel][:BLOCK]
    stored = written(tmp_path / "ssd", ws.procs[0])
    assert len(stored) == 1
    raw = bytearray(stored[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    stored[0].write_bytes(bytes(raw))  # the worker sends it as it lies on disk
    got = asyncio.run(get())
    assert bytes(got.data) == want[rel][:BLOCK]
    assert ws.procs[0].status()["corrupt"] == 1  # asked again with verify: checked


class _CuttingRelay:
    """TCP between a client and a real worker, passing on at most `budget` bytes of the
    worker's answers; then it closes the connection, or with `stall` holds it open
    sending nothing (a network that fails mid-body)."""

    def __init__(self, upstream: str, budget: int, *, stall: bool = False) -> None:
        host, port = upstream.removeprefix("http://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.budget = budget
        self.stall = stall
        self.cut = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.server.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        ur, uw = await asyncio.open_connection(*self.upstream)

        async def up() -> None:
            while chunk := await r.read(2**16):
                uw.write(chunk)
                await uw.drain()

        pump = asyncio.create_task(up())
        try:
            left = self.budget
            while left > 0 and (chunk := await ur.read(min(left, 2**16))):
                w.write(chunk)
                await w.drain()
                left -= len(chunk)
            self.cut.set()
            if self.stall:
                await asyncio.sleep(3600)
        finally:
            pump.cancel()
            uw.close()
            w.close()


def _small_file(data: Path) -> str:
    """A file of the test dataset whose block is received on the event loop."""
    return sorted(k for k, v in sources.files(data).items() if 2**17 < len(v) < BLOCK)[0]


@pytest.mark.parametrize("on_loop", [False, True], ids=["thread", "loop"])
def test_a_connection_cut_or_stalled_mid_body_is_a_worker_error(
    data: Path, workers_factory: Any, on_loop: bool
) -> None:
    ws = workers_factory({"uri": f"file://{data}"}, 1)
    rel = _small_file(data) if on_loop else _whole_blocks(data)[0]
    half = len(sources.files(data)[rel]) // 2 if on_loop else BLOCK // 2

    async def run() -> None:
        ref, key = await _block_of(data, rel)
        conns = receive.Connections()
        try:
            timeout = aiohttp.ClientTimeout(total=2)
            async with aiohttp.ClientSession(headers=auth("reader"), timeout=timeout) as s:
                await workers.get_block(s, ws.urls()[0], key, ref, 0, conns=conns)  # cached
                made = conns.opened_on_loop if on_loop else conns.opened
                assert made == 1
                async with _CuttingRelay(ws.urls()[0], half) as url:
                    with pytest.raises(errors.WorkerError, match="closed after"):
                        await workers.get_block(s, url, key, ref, 0, conns=conns)
                async with _CuttingRelay(ws.urls()[0], half, stall=True) as url:
                    with pytest.raises(errors.WorkerError, match="no answer in time"):
                        await workers.get_block(s, url, key, ref, 0, conns=conns)
                relay = _CuttingRelay(ws.urls()[0], half, stall=True)
                async with relay as url:  # closing the connections ends a stalled one
                    got = asyncio.create_task(workers.get_block(s, url, key, ref, 0, conns=conns))
                    await relay.cut.wait()
                    conns.close()
                    with pytest.raises(errors.WorkerError):
                        await got
            assert conns.idle() == 0  # none of the broken ones kept
        finally:
            conns.close()

    asyncio.run(run())


@pytest.mark.parametrize("on_loop", [False, True], ids=["thread", "loop"])
def test_a_worker_gone_after_a_kept_connection_is_a_worker_error(
    data: Path, workers_factory: Any, on_loop: bool
) -> None:
    """Its kept connection closed (seen, not reused), and a new one refused: WorkerError,
    which the sidecar answers by reading the under storage, never a bare OSError."""
    ws = workers_factory({"uri": f"file://{data}"}, 1)
    rel = _small_file(data) if on_loop else _whole_blocks(data)[0]

    async def run() -> None:
        ref, key = await _block_of(data, rel)
        conns = receive.Connections()
        try:
            async with aiohttp.ClientSession(headers=auth("reader")) as s:
                await workers.get_block(s, ws.urls()[0], key, ref, 0, conns=conns)
                assert conns.idle() == 1
                ws.procs[0].stop(signal.SIGKILL)
                with pytest.raises(errors.WorkerError, match="refused"):
                    await workers.get_block(s, ws.urls()[0], key, ref, 0, conns=conns)
                assert conns.idle() == 0
        finally:
            conns.close()

    asyncio.run(run())


def test_an_answer_larger_than_any_block_is_refused_before_it_is_received() -> None:
    """A peer that says its block is a terabyte, or streams one without a length, is a
    WorkerError (the sidecar then reads the under storage), and no buffer of that size is
    made: a block is at most 64 MiB."""
    heads = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    ]

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        head = heads.pop(0)
        w.write(head)
        with contextlib.suppress(ConnectionError):
            await w.drain()
            for _ in range(80 if b"chunked" in head else 0):  # 80 chunks of 1 MiB, then
                w.write(b"100000\r\n" + bytes(2**20) + b"\r\n")  # nothing (a bound
                await w.drain()  # on what a broken guard would take in)
            await asyncio.sleep(30)

    async def run() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/blocks/x"
        conns = receive.Connections()
        try:
            with pytest.raises(errors.WorkerError, match="1099511627776 bytes"):
                await conns.get(url, {}, {}, 10.0)
            with pytest.raises(errors.WorkerError, match="over 67108864 bytes"):
                await conns.get(url, {}, {}, 5.0)
            assert conns.idle() == 0
        finally:
            conns.close()
            server.close()

    asyncio.run(run())
