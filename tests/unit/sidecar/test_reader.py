"""The sidecar's block reader on a worker's block files seen from its node (no worker
process and no network: the files are written here as a worker writes them)."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
from pathlib import Path

import aiohttp
import msgspec
import pytest

from devkit import testing
from fluidfed import errors
from fluidfed.data import blockfile, blocks
from fluidfed.data.layout import FileRef, Peers, SidecarConfig
from fluidfed.data.store import BlockStore
from fluidfed.models import Mount
from sidecar.reader import AHEAD_KEPT, RUN, BlockReader

WORKER = "http://127.0.0.1:7070"


async def _reader(tier: Path, ref: FileRef, data: bytes, *, cached: bool) -> BlockReader:
    """A reader whose one worker keeps `ref`'s block 0 (`data`) in a file in `tier`, in the
    page cache or not (`cached`)."""
    cfg = SidecarConfig(
        dataset="d", mounts=[Mount(uri="s3://b/p")], workers=Peers(endpoints=[WORKER])
    )
    reader = BlockReader(cfg, [], await BlockStore(cfg.cache).open(), None)
    path = blockfile.block_path(tier, reader.key(ref, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    blockfile.write_block_file(path, data, blocks.checksum(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        if cached:
            os.read(fd, len(data) + 64)
        else:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if not cached:  # (else `push` maps it on the loop, not in a thread)
        with pytest.raises(errors.NotCached):
            blockfile.map_block_file(path, cached_only=True)
    reader._dirs[WORKER] = [str(tier)]
    return reader


@pytest.mark.parametrize("cached", [True, False], ids=["mapped", "read in a thread"])
async def test_a_block_handed_to_the_kernel_is_counted_before_the_kernel_has_it(
    tmp_path: Path, cached: bool
) -> None:
    """A reader gets a small file's bytes as soon as `store` hands them to the kernel (the
    native session answers its READ there, in the thread that read the block file): a
    status asked for right after must count the block, so it is counted before; a block
    the kernel refused is not counted, and the caller reads it the usual way."""
    data = os.urandom(100_000)
    ref = FileRef(mount=0, key="small.bin", size=len(data), version="v1")
    reader = await _reader(tmp_path, ref, data, cached=cached)
    seen: list[tuple[bytes, int, int, int]] = []

    def store(got: blocks.Data) -> None:
        st = reader.stats
        seen.append((bytes(got), st.pushed, st.short_circuit, st.worker_hits))

    assert await reader.push(ref, store)
    assert seen == [(data, 1, 1, 1)]

    def refused(got: blocks.Data) -> None:
        raise OSError(errno.ENOENT, "the kernel forgot the inode")

    assert not await reader.push(ref, refused)
    st = reader.stats
    assert (st.pushed, st.short_circuit, st.worker_hits) == (1, 1, 1)
    await reader.close()


async def test_blocks_a_worker_says_it_read_ahead_are_remembered_within_the_run_and_file(
    tmp_path: Path,
) -> None:
    """A worker's answer says how many blocks after it it read for this reader: at most a
    run's (RUN), never past the file's end, and only the latest AHEAD_KEPT are kept."""
    data = os.urandom(1000)
    ref = FileRef(mount=0, key="big.bin", size=10 * 4 * 2**20, version="v1")
    reader = await _reader(tmp_path, ref, data, cached=True)
    try:
        reader._read_ahead(ref, 0, 10**9)  # (a worker saying more than it could have)
        assert list(reader._ahead) == [reader.key(ref, i) for i in range(1, 1 + RUN)]
        reader._ahead.clear()
        reader._read_ahead(ref, 8, 3)  # the file's last block is 9
        assert list(reader._ahead) == [reader.key(ref, 9)]
        other = FileRef(mount=0, key="other.bin", size=2**40, version="v1")
        for i in range(0, 3 * AHEAD_KEPT, RUN + 1):
            reader._read_ahead(other, i, RUN)
        assert len(reader._ahead) == AHEAD_KEPT
        assert reader.key(other, 3 * AHEAD_KEPT - 1) in reader._ahead
    finally:
        await reader.close()


async def test_a_warm_file_is_asked_for_in_joined_runs_only_where_it_is_read_over_http(
    tmp_path: Path,
) -> None:
    """Runs of a warm file sent in one answer (`_joins`): for a block whose worker is
    reached over HTTP, not one whose files this reader reads itself, nor with no worker."""
    ref = FileRef(mount=0, key="big.bin", size=10 * 4 * 2**20, version="v1")
    reader = await _reader(tmp_path, ref, os.urandom(1000), cached=True)
    key = reader.key(ref, 3)
    async with aiohttp.ClientSession() as session:  # (never connects here)
        try:
            assert not reader._joins(key)  # no session: no worker is asked at all
            reader.session = session
            assert not reader._joins(key)  # its files are read here
            reader.cfg = msgspec.structs.replace(reader.cfg, short_circuit=False)
            assert reader._joins(key)
            reader.cfg = msgspec.structs.replace(reader.cfg, short_circuit=True)
            del reader._dirs[WORKER]  # (a worker on another node)
            assert reader._joins(key)
            reader.workers = []
            assert not reader._joins(key)
        finally:
            reader.session = None
            await reader.close()


async def test_a_sidecar_short_of_descriptors_keeps_reading_the_files_once_it_can(
    tmp_path: Path,
) -> None:
    """Out of file descriptors (its open-file limit reached: EMFILE) a sidecar cannot open
    a worker's block file: it asks the worker this time and keeps the directory, reading
    the files again once it can; a file that cannot be read for a reason of its own
    (ELOOP here, as EIO or EACCES) makes it leave the directory to the worker."""
    data = os.urandom(100_000)
    ref = FileRef(mount=0, key="small.bin", size=len(data), version="v1")
    reader = await _reader(tmp_path, ref, data, cached=True)
    key = reader.key(ref, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fd = os.open(os.devnull, os.O_RDONLY)  # (the lowest free descriptor)
    os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (fd, hard))
    try:
        short = await reader._from_files(WORKER, key)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert short is None and reader._dirs[WORKER] == [str(tmp_path)]
    got = await reader._from_files(WORKER, key)
    assert got is not None and bytes(got[0]) == data
    path = blockfile.block_path(tmp_path, key)
    path.unlink()
    path.symlink_to(path.name)
    assert await reader._from_files(WORKER, key) is None
    assert reader._dirs[WORKER] == []
    await reader.close()


async def test_a_block_this_sidecar_cannot_keep_is_read_all_the_same(tmp_path: Path) -> None:
    """A sidecar whose first cache tier is on a disk it cannot write to (full; here a file
    in place of the tier's directory) still hands its reader the block it fetched: it is
    not kept, and the read does not fail."""
    cfg = SidecarConfig(
        dataset="d", mounts=[Mount(uri="s3://b/p")], workers=Peers(endpoints=[WORKER])
    )
    ssd = tmp_path / "ssd"
    store = await BlockStore([testing.cache_tier("SSD", 2**20, ssd)]).open()
    ssd.rmdir()
    ssd.write_bytes(b"not a directory")
    reader = BlockReader(cfg, [], store, None)
    data = os.urandom(1000)
    ref = FileRef(mount=0, key="f.bin", size=len(data), version="v1")
    key = reader.key(ref, 0)
    reader._arrived[key] = (data, blocks.checksum(data))  # (sent with the block before it)
    fut = asyncio.get_running_loop().create_future()
    reader._inflight[key] = fut
    assert bytes(await reader._fill(fut, key, ref, 0, None)) == data
    assert bytes(fut.result()) == data and key not in store
    await reader.close()


async def test_a_block_on_its_way_is_told_of_once_it_has_come_and_is_kept(tmp_path: Path) -> None:
    """`when_fetched`: for a block being fetched, its callback runs once the block has come
    and is kept here (the session is handed it from the store then), never for one whose
    fetch failed, and nothing is promised for a block not on its way."""
    cfg = SidecarConfig(
        dataset="d", mounts=[Mount(uri="s3://b/p")], workers=Peers(endpoints=[WORKER])
    )
    reader = BlockReader(cfg, [], await BlockStore(cfg.cache).open(), None)
    data = os.urandom(3000)
    ref = FileRef(mount=0, key="f.bin", size=2 * len(data), version="v1")
    loop = asyncio.get_running_loop()
    told: list[tuple[int, bytes | None]] = []

    def then(index: int) -> None:
        got = reader.peek(ref, index)
        told.append((index, None if got is None else bytes(got)))

    assert not reader.when_fetched(ref, 0, lambda: then(0))  # (not on its way)
    key = reader.key(ref, 0)
    reader._arrived[key] = (data, blocks.checksum(data))  # (sent with the block before it)
    fut = reader._inflight[key] = loop.create_future()
    assert reader.when_fetched(ref, 0, lambda: then(0))
    assert told == []
    await reader._fill(fut, key, ref, 0, None)
    await asyncio.sleep(0)  # (a future's callbacks run soon after it is done)
    assert told == [(0, data)]

    failed = reader._inflight[reader.key(ref, 1)] = loop.create_future()
    assert reader.when_fetched(ref, 1, lambda: then(1))
    failed.set_exception(errors.WorkerError("gone"))
    failed.exception()
    await asyncio.sleep(0)
    assert told == [(0, data)]
    await reader.close()
