"""The tiered block store: eviction down the tiers, checks, spans and located files."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from devkit import testing
from fluidfed import errors
from fluidfed.data import blockfile, blocks, heap
from fluidfed.data import store as store_module
from fluidfed.data.blockfile import CHECK_PIECE, block_path, read_block_file
from fluidfed.data.store import BlockStore
from fluidfed.models import CacheTier, Medium


def tier(medium: Medium, quota: int, path: Path | str = "") -> CacheTier:
    return testing.cache_tier(medium, quota, path, high=0.9, low=0.5)


async def test_store_moves_cold_blocks_from_memory_to_disk_and_drops_from_the_last(
    tmp_path: Path,
) -> None:
    store = await BlockStore([tier("MEM", 100), tier("SSD", 200, tmp_path)]).open()
    for i in range(16):
        await store.put(f"{i:032x}", bytes([i]) * 20)
    snap = store.snapshot()
    mem, ssd = snap.tiers
    assert mem.used <= 90 and ssd.used <= 180
    assert mem.evictions > 0 and ssd.evictions > 0
    # the newest are in memory, older ones on disk, the oldest gone
    newest = f"{15:032x}"
    assert (await store.get(newest)) == (bytes([15]) * 20, blocks.checksum(bytes([15]) * 20))
    assert await store.get(f"{0:032x}") is None
    on_disk = [k for k in store.hottest() if (tmp_path / k[:2] / k).exists()]
    assert on_disk
    assert (await store.get(on_disk[0]))[0] == bytes([int(on_disk[0], 16)]) * 20  # type: ignore[index]
    assert store.stats.misses == 1


async def test_store_detects_a_corrupt_block_and_reindexes_disk_on_restart(
    tmp_path: Path,
) -> None:
    store = await BlockStore([tier("SSD", 1000, tmp_path)]).open()
    await store.put("a" * 32, b"x" * 100)
    await store.put("b" * 32, b"y" * 100)
    # a restarted worker finds its blocks again
    again = await BlockStore([tier("SSD", 1000, tmp_path)]).open()
    assert again.snapshot().tiers[0].blocks == 2
    path = tmp_path / "aa" / ("a" * 32)
    raw = bytearray(path.read_bytes())
    raw[5] ^= 1
    path.write_bytes(bytes(raw))
    assert await again.get("a" * 32) is None
    assert again.stats.corrupt == 1
    assert not path.exists()
    assert (await again.get("b" * 32))[0] == b"y" * 100  # type: ignore[index]


def _uncached(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # (written back, so the kernel can let the pages go)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def test_a_restarted_stores_first_read_of_a_large_block_file_maps_it_in_huge_folios(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block file read whole by `get` (a worker's first read of it since it started) is
    mapped, not copied, where it is of a huge page or more: read from the disk into folios
    of a huge page (the next reader on the node maps it with huge-page entries), by one
    read for the readers that ask at once, or mapped from the page cache as it lies there.
    A small one is read through the page cache, so that a reader on the node finds it
    there; a damaged large one is dropped, as before."""
    monkeypatch.setattr(blockfile, "_huge_files", {})
    monkeypatch.setattr(blockfile, "_huge_misses", {})
    cold_reads: list[str] = []
    read_cold = blockfile.read_cold_block_file

    def counted(path: str | Path, *, lazy: bool = False) -> tuple[blocks.Data, int]:
        cold_reads.append(str(path))
        time.sleep(0.2)  # (long enough for the readers at once to ask)
        return read_cold(path, lazy=lazy)

    monkeypatch.setattr(store_module, "read_cold_block_file", counted)
    large, small = os.urandom(2**22 + 5), os.urandom(128 * 2**10)
    store = await BlockStore([tier("SSD", 2**26, tmp_path)]).open()
    for key, payload in (("a", large), ("b", small), ("c", large[::-1])):
        await store.put(key * 32, payload, wait=True)
    path = block_path(tmp_path, "c" * 32)
    raw = bytearray(path.read_bytes())
    raw[2**21 + 3] ^= 1
    path.write_bytes(bytes(raw))
    for key in "abc":
        _uncached(block_path(tmp_path, key * 32))

    again = await BlockStore([tier("SSD", 2**26, tmp_path)]).open()
    got = await asyncio.gather(*(again.get("a" * 32) for _ in range(3)))
    assert len(cold_reads) == 1
    first = got[0]
    assert first is not None and first[1] == blocks.checksum(large)
    assert bytes(first[0]) == large and all(g is not None and g[0] is first[0] for g in got)
    assert blockfile.is_mapped(first[0])
    assert blockfile._pmd_mapped_kib(heap.address(first[0])) >= 4096  # (this machine's ext4)
    del first, got
    third = await BlockStore([tier("SSD", 2**26, tmp_path)]).open()
    mapped = await third.get("a" * 32)
    assert mapped is not None and blockfile.is_mapped(mapped[0]) and bytes(mapped[0]) == large
    assert len(cold_reads) == 1  # (mapped from the page cache as it lay there)
    del mapped

    small_got, _ = await again.get("b" * 32)  # type: ignore[misc]
    assert small_got == small and type(small_got) is bytes
    blockfile.map_block_file(block_path(tmp_path, "b" * 32), cached_only=True)  # (cached)

    assert await again.get("c" * 32) is None  # (read from the disk, checked whole)
    assert len(cold_reads) == 2
    assert again.stats.corrupt == 1 and not path.exists()


@pytest.mark.parametrize("err", [errno.ENODEV, errno.EIO])
async def test_a_large_block_file_the_filesystem_will_not_map_is_read_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    """Where the filesystem refuses to map block files (some FUSE and network ones:
    ENODEV), a large one is read through the page cache instead, and no other is mapped
    there again; it is not taken for damaged. A disk error (EIO) is one: the block is
    dropped, to be fetched again, as a read that fails drops it."""
    monkeypatch.setattr(blockfile, "_huge_files", {})
    monkeypatch.setattr(blockfile, "_huge_misses", {})
    large = os.urandom(2**22 + 5)
    store = await BlockStore([tier("SSD", 2**26, tmp_path)]).open()
    await store.put("a" * 32, large, wait=True)
    again = await BlockStore([tier("SSD", 2**26, tmp_path)]).open()

    def refused(path: str | Path, **_: object) -> tuple[blocks.Data, int]:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(store_module, "map_block_file", refused)
    got = await again.get("a" * 32)
    dev = os.stat(tmp_path).st_dev
    if err == errno.ENODEV:
        assert got == (large, blocks.checksum(large)) and type(got[0]) is bytes
        assert again.stats.corrupt == 0 and blockfile._huge_files[dev] is False
        assert not blockfile.reads_huge(dev)
    else:
        assert got is None and again.stats.corrupt == 1
        assert dev not in blockfile._huge_files


async def test_a_restarted_store_leaves_out_what_cannot_be_a_block_file(tmp_path: Path) -> None:
    """Indexing a disk tier again on start: an entry that cannot be read (a symlink to
    itself: ELOOP) or is no regular file does not keep the store from opening; it is
    removed, and the blocks beside it are found."""
    store = await BlockStore([tier("SSD", 1000, tmp_path)]).open()
    await store.put("a" * 32, b"x" * 100)
    await store.put("b" * 32, b"y" * 100)
    looped = tmp_path / "bb" / ("b" * 32)
    looped.unlink()
    looped.symlink_to(looped.name)
    (tmp_path / "aa" / ("c" * 32)).mkdir()  # (left as it is: not ours to remove)
    (tmp_path / "aa" / ("d" * 32)).write_bytes(b"abc")  # (shorter than a trailer)
    again = await BlockStore([tier("SSD", 1000, tmp_path)]).open()
    assert again.snapshot().tiers[0].blocks == 1
    assert not looped.is_symlink() and not looped.exists()
    assert not (tmp_path / "aa" / ("d" * 32)).exists()
    assert (await again.get("a" * 32))[0] == b"x" * 100  # type: ignore[index]
    assert await again.get("b" * 32) is None


def test_store_needs_a_directory_for_disk_tiers() -> None:
    with pytest.raises(ValueError, match="needs a path"):
        BlockStore([tier("SSD", 10)])


async def test_spans_of_disk_blocks_are_read_directly_once_the_block_was_checked(
    tmp_path: Path,
) -> None:
    store = await BlockStore([tier("SSD", 1000, tmp_path)]).open()
    await store.put("c" * 32, bytes(range(100)))
    assert await store.get_span("c" * 32, 10, 5) == bytes(range(10, 15))
    assert await store.get_span("d" * 32, 0, 5) is None
    # after a restart nothing is trusted yet: the first span read checks the whole block
    again = await BlockStore([tier("SSD", 1000, tmp_path)]).open()
    path = tmp_path / "cc" / ("c" * 32)
    raw = bytearray(path.read_bytes())
    raw[50] ^= 1
    path.write_bytes(bytes(raw))
    assert await again.get_span("c" * 32, 10, 5) is None
    assert again.stats.corrupt == 1


async def test_a_span_of_a_block_damaged_on_disk_after_its_check_is_caught_and_dropped(
    tmp_path: Path,
) -> None:
    """A span of a block checked once is read by itself, but checked by the pieces it lies
    in: bytes damaged on the disk since are caught, the block dropped (its reader fetches it
    again), where they were sent with a CRC taken of the damaged bytes, which the receiver
    found whole. A span in another piece reads as before."""
    store = await BlockStore([tier("SSD", 2**21, tmp_path)]).open()
    key, data = "e" * 32, os.urandom(3 * CHECK_PIECE + 10)
    await store.put(key, data)
    assert await store.get_span(key, 5, 100) == data[5:105]  # (checked once: put by us)
    path = block_path(tmp_path, key)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes([data[2 * CHECK_PIECE + 7] ^ 0xFF]), 2 * CHECK_PIECE + 7)
    finally:
        os.close(fd)
    assert await store.get_span(key, CHECK_PIECE - 3, 6) == data[CHECK_PIECE - 3 : CHECK_PIECE + 3]
    assert await store.get_span(key, 2 * CHECK_PIECE + 100, 4096) is None
    assert store.stats.corrupt == 1 and key not in store
    await store.stored()
    assert not path.exists()


async def test_checked_disk_blocks_are_located_for_short_circuit_readers(
    tmp_path: Path,
) -> None:
    store = await BlockStore([tier("MEM", 150), tier("SSD", 1000, tmp_path)]).open()
    await store.put("e" * 32, b"e" * 100)
    assert store.locate("e" * 32) is None  # in memory: only over the socket
    await store.put("f" * 32, b"f" * 100)  # pushes "e" down to the disk
    path, length, crc = store.locate("e" * 32)  # type: ignore[misc]
    assert (path, length, crc) == (
        str(tmp_path / "ee" / ("e" * 32)),
        100,
        blocks.checksum(b"e" * 100),
    )
    assert Path(path).read_bytes()[:length] == b"e" * 100
    assert store.locate("0" * 32) is None
    # after a restart a block file is handed out only once it was read and checked again
    again = await BlockStore([tier("SSD", 1000, tmp_path)]).open()
    assert again.locate("e" * 32) is None
    assert await again.get("e" * 32) is not None
    assert again.locate("e" * 32) == (path, length, crc)


async def test_blocks_read_from_their_files_stay_hot(tmp_path: Path) -> None:
    ssd = testing.cache_tier("SSD", 300, tmp_path, high=0.9, low=0.8)
    store = await BlockStore([ssd]).open()
    await store.put("a" * 32, b"a" * 100)
    await store.put("b" * 32, b"b" * 100)
    # a sidecar on this machine read "a" from its file, and says so
    assert store.touch(["a" * 32, "0" * 32]) == 1
    assert store.stats.hits == 1
    await store.put("c" * 32, b"c" * 100)  # past the high mark: the coldest block goes
    assert "a" * 32 in store and "b" * 32 not in store
    data, crc = read_block_file(block_path(tmp_path, "a" * 32))
    assert (data, crc) == (b"a" * 100, blocks.checksum(b"a" * 100))


async def test_a_block_read_for_its_reader_counts_a_miss_however_it_is_served(
    tmp_path: Path,
) -> None:
    """A block read from the under storage with the one before it, for the reader that
    now asks for it (`fresh`): a miss in the counts, whichever way it is served, and
    recently used all the same."""
    ssd = testing.cache_tier("SSD", 1000, tmp_path, high=0.9, low=0.8)
    store = await BlockStore([ssd]).open()
    keys = [c * 32 for c in "abcd"]
    for k in keys:
        await store.put(k, k.encode()[:1] * 100)
    await store.stored()
    # served in the reverse order of their puts: each becomes the most recently used
    assert store.touch([keys[3], "0" * 32], {keys[3]}) == 1
    opened = store.open_verified(keys[2], fresh=True)
    assert opened is not None
    opened[0].close()
    assert store.locate(keys[1], fresh=True) is not None
    assert await store.get(keys[0], fresh=True) is not None
    assert (store.stats.hits, store.stats.misses) == (0, 4)
    assert store.hottest() == keys
    assert await store.get(keys[0]) is not None and store.locate(keys[3]) is not None
    assert (store.stats.hits, store.stats.misses) == (2, 4)
    assert store.snapshot().tiers[0].hits == 2


async def test_a_block_written_behind_is_served_from_memory_until_its_file_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = testing.BlockFileGate(monkeypatch)
    store = await BlockStore([tier("SSD", 1000, tmp_path)], write_behind=1000).open()
    key, data = "a" * 32, bytes(range(100))
    try:
        await store.put(key, data)  # returns before the file is written
        await gate.writing()
        path = block_path(tmp_path, key)
        assert not path.exists() and key in store
        assert store.snapshot().writing == 1
        assert await store.get(key) == (data, blocks.checksum(data))
        assert await store.get_span(key, 10, 5) == data[10:15]
        # nobody is pointed at, or sent, a file that is not whole yet
        assert store.locate(key) is None
        assert store.open_verified(key) is None
        assert (store.stats.hits, store.stats.misses) == (2, 0)
    finally:
        gate.open.set()
    await store.stored()
    assert store.snapshot().writing == 0
    assert read_block_file(path) == (data, blocks.checksum(data))
    assert store.locate(key) == (str(path), 100, blocks.checksum(data))
    # once whole, the file is handed out for sending as it lies (the trailer after the data)
    opened = store.open_verified(key)
    assert opened is not None
    f, length, crc = opened
    with f:
        assert (f.read(length), length, crc) == (data, 100, blocks.checksum(data))


async def test_waiting_for_the_files_waits_for_every_write_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = testing.BlockFileGate(monkeypatch)
    store = await BlockStore([tier("SSD", 1000, tmp_path)], write_behind=1000).open()
    keys = [f"{i:032x}" for i in range(3)]
    for i, key in enumerate(keys):
        await store.put(key, bytes([i]) * 100)
    stored = asyncio.create_task(store.stored())
    await asyncio.sleep(0.05)
    assert not stored.done()
    gate.open.set()
    await asyncio.wait_for(stored, 10)
    for i, key in enumerate(keys):
        assert read_block_file(block_path(tmp_path, key))[0] == bytes([i]) * 100


async def test_past_its_bound_a_put_waits_for_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = testing.BlockFileGate(monkeypatch)
    store = await BlockStore([tier("SSD", 1000, tmp_path)], write_behind=150).open()
    await store.put("a" * 32, b"a" * 100)  # within the bound: behind
    second = asyncio.create_task(store.put("b" * 32, b"b" * 100))  # past it: waits
    await gate.writing()
    await asyncio.sleep(0.05)
    assert not second.done()
    assert "b" * 32 not in store  # counted once its file is there
    gate.open.set()
    await asyncio.wait_for(second, 10)
    assert block_path(tmp_path, "b" * 32).exists() and "b" * 32 in store
    await store.stored()


async def test_a_block_evicted_or_replaced_while_written_behind_leaves_one_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = testing.BlockFileGate(monkeypatch)
    ssd = testing.cache_tier("SSD", 250, tmp_path, high=0.7, low=0.4)
    store = await BlockStore([ssd], write_behind=1000).open()
    await store.put("a" * 32, b"a" * 100)
    # the same key again (a peer's hand-off): waits for the first write (one temporary name)
    again = asyncio.create_task(store.put("a" * 32, b"A" * 100))
    # past the high mark: "a" is evicted, once its file is written, and removed
    evicting = asyncio.create_task(store.put("b" * 32, b"b" * 100))
    await gate.writing()
    await asyncio.sleep(0.05)
    assert not again.done()
    gate.open.set()
    await asyncio.wait_for(asyncio.gather(again, evicting), 10)
    await store.stored()
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert files == sorted(k for k in ("a" * 32, "b" * 32) if k in store)
    assert not list(tmp_path.rglob("*.tmp"))
    for name in files:
        data, _ = read_block_file(block_path(tmp_path, name))
        assert data == (await store.get(name))[0]  # type: ignore[index]


async def worker_store(path: Path, size: int = 2**20) -> BlockStore:
    """A worker's store: one disk tier of `size` bytes, as many written behind, small
    blocks' files on the loop."""
    return await BlockStore([tier("SSD", size, path)], write_behind=size, write_on_loop=True).open()


def unwritable(path: Path) -> str:
    """A block key whose file cannot be written under `path`: a file where its directory
    goes (root or not)."""
    key = "c" * 32
    (path / key[:2]).write_text("a file where its directory goes")
    return key


@pytest.fixture
def no_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes on the loop stay there whatever the machine makes them wait (a loaded CI)."""
    monkeypatch.setattr(store_module, "WAIT_BUDGET", 60.0)


@pytest.mark.usefixtures("no_trips")
@pytest.mark.parametrize("size", [100, store_module.WRITE_ON_LOOP_UP_TO + 1])
async def test_a_block_whose_file_cannot_be_written_behind_leaves_the_cache(
    tmp_path: Path, size: int
) -> None:
    store = await worker_store(tmp_path)
    key = unwritable(tmp_path)
    await store.put(key, b"c" * size)
    # a small block's file is written on the loop before `put` returns: gone at once; a
    # larger one is served from memory while its thread tries (or already gone)
    if size <= store_module.WRITE_ON_LOOP_UP_TO:
        assert key not in store and store.stats.write_errors == 1
    await store.stored()
    assert key not in store and store.stats.write_errors == 1
    assert store.snapshot().used == 0
    assert await store.get(key) is None  # a miss: the caller fetches it again


@pytest.mark.usefixtures("no_trips")
@pytest.mark.parametrize("size", [100, store_module.WRITE_ON_LOOP_UP_TO + 1])
async def test_a_block_whose_file_cannot_be_written_while_put_waits_is_the_callers_error(
    tmp_path: Path, size: int
) -> None:
    store = await worker_store(tmp_path)
    key = unwritable(tmp_path)
    with pytest.raises(NotADirectoryError):  # (a peer's hand-off: its sender hears)
        await store.put(key, b"c" * size, wait=True)
    assert key not in store and store.stats.write_errors == 1
    assert store.snapshot().used == 0


async def test_a_block_at_hand_is_held_in_memory_or_in_a_file_checked_before(
    tmp_path: Path,
) -> None:
    """What a worker can send at once after another block (`BlockStore.at_hand`): a block in
    memory, or a disk block's file whose CRC held once, counted like any answer; a file
    not checked yet (found on disk at start) or a block not held: None, not counted."""
    mem = await BlockStore([tier("MEM", 1000)]).open()
    await mem.put("a" * 32, b"a" * 20, blocks.checksum(b"a" * 20))
    await mem.put("d" * 32, b"d" * 20)  # (no CRC: a memory-only store computes none)
    assert mem.at_hand("d" * 32) is None
    held = mem.at_hand("a" * 32)
    assert held is not None
    assert (bytes(held[0]), held[1:]) == (b"a" * 20, (20, blocks.checksum(b"a" * 20)))  # type: ignore[arg-type]
    assert mem.at_hand("b" * 32) is None
    assert (mem.stats.hits, mem.stats.misses) == (1, 0)

    disk = await BlockStore([tier("SSD", 1000, tmp_path)]).open()
    await disk.put("c" * 32, b"c" * 30)
    await disk.stored()
    held = disk.at_hand("c" * 32, fresh=True)  # (read for this reader: a miss)
    assert held is not None and held[1:] == (30, blocks.checksum(b"c" * 30))
    f = held[0]
    assert not isinstance(f, bytes | memoryview)
    with f:
        assert f.read(held[1]) == b"c" * 30
    assert (disk.stats.hits, disk.stats.misses) == (0, 1)

    again = await BlockStore([tier("SSD", 1000, tmp_path)]).open()  # (a restart)
    assert "c" * 32 in again and again.at_hand("c" * 32) is None
    assert (again.stats.hits, again.stats.misses) == (0, 0)
    assert await again.get("c" * 32) is not None  # read and checked: at hand from now on
    held = again.at_hand("c" * 32)
    assert held is not None
    held[0].close()  # type: ignore[union-attr]


async def test_blocks_moved_down_to_a_tier_that_cannot_write_are_dropped_not_leaked(
    tmp_path: Path,
) -> None:
    """A disk tier whose files cannot be written (a full disk; here a file in place of its
    directory) under a memory tier: the blocks the memory tier moves down are dropped
    (counted, as from the last tier), the put that moved them succeeds, and every block
    the memory tier still holds is in its count (none left in memory uncounted)."""
    ssd = tmp_path / "ssd"
    store = await BlockStore([tier("MEM", 100), tier("SSD", 1000, ssd)]).open()
    ssd.rmdir()
    ssd.write_bytes(b"not a directory")
    for i in range(12):
        await store.put(f"{i:032x}", bytes([i]) * 20)
    mem = store._tiers[0]
    assert set(mem.mem) == set(mem.ledger.hottest())
    assert store.stats.write_errors >= 6
    assert store.snapshot().tiers[1].blocks == 0
    newest = f"{11:032x}"
    assert (await store.get(newest))[0] == bytes([11]) * 20  # type: ignore[index]


async def test_a_block_put_again_while_others_move_down_stays_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A memory tier moving blocks down to a disk tier waits for each file: a block it
    evicted and has not moved yet may be put again meanwhile (a reader missed it and
    fetched it again). That copy stays where it was put, readable; the move skips it."""
    store = await BlockStore([tier("MEM", 100), tier("SSD", 1000, tmp_path)]).open()
    keys = [f"{i:032x}" for i in range(5)]
    for i, k in enumerate(keys[:4]):
        await store.put(k, bytes([i]) * 20)
    gate = testing.BlockFileGate(monkeypatch)
    moving = asyncio.create_task(store.put(keys[4], bytes([4]) * 20))  # (evicts 0, 1, 2)
    await gate.writing()  # block 0's file, held
    assert keys[1] not in store
    await store.put(keys[1], b"again" * 4)  # (fetched again, while the move waits)
    gate.open.set()
    await asyncio.wait_for(moving, 10)
    assert (await store.get(keys[1])) == (b"again" * 4, blocks.checksum(b"again" * 4))
    assert store.snapshot().tiers[0].used == sum(
        len(store._tiers[0].mem[k][0]) for k in store._tiers[0].ledger.hottest()
    )
    assert (await store.get(keys[0]))[0] == bytes([0]) * 20  # type: ignore[index]


async def test_a_put_cancelled_while_its_file_is_written_leaves_no_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller cancelled while the store writes its block's file (past the write-behind
    bound, or with nothing to write behind) leaves no half-written file, and no whole one
    that no tier counts: it is removed once written."""
    store = await BlockStore([tier("SSD", 1000, tmp_path)]).open()
    gate = testing.BlockFileGate(monkeypatch)
    key = "e" * 32
    put = asyncio.create_task(store.put(key, b"z" * 100))
    await gate.writing()
    put.cancel()
    gate.open.set()
    with pytest.raises(asyncio.CancelledError):
        await put
    await store.stored()  # (the write went on, then its file was removed)
    assert not block_path(tmp_path, key).exists() and key not in store
    assert store.snapshot().tiers[0].used == 0


class WritingThreads:
    """The name of the thread that wrote each block file (the real write after)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hold: float = 0.0) -> None:
        self.names: list[str] = []  # in the order the writes began
        self.by_key: dict[str, str] = {}
        self.hold = hold  # seconds the next write sleeps first (a disk that makes it wait)

        def noted(path: str | Path, data: blocks.Data, crc: int) -> None:
            self.names.append(threading.current_thread().name)
            self.by_key[Path(path).name] = self.names[-1]
            if self.hold:
                time.sleep(self.hold)
                self.hold = 0.0
            blockfile.write_block_file(path, data, crc)

        monkeypatch.setattr(store_module, "write_block_file", noted)


@pytest.mark.usefixtures("no_trips")
async def test_a_small_block_file_is_written_on_the_event_loop_a_large_one_in_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = WritingThreads(monkeypatch)
    store = await worker_store(tmp_path, 2**24)
    small, large = b"s" * store_module.WRITE_ON_LOOP_UP_TO, b"l" * 2**20
    await store.put("a" * 32, small)
    assert "a" * 32 in threads.by_key  # (written before `put` returned)
    await store.put("b" * 32, large)
    await store.stored()
    await store.put("c" * 32, small, wait=True)  # (a peer's hand-off: the same)
    loop_thread = threading.current_thread().name
    assert threads.by_key["a" * 32] == loop_thread and threads.by_key["c" * 32] == loop_thread
    assert threads.by_key["b" * 32].startswith("fluidfed-blockfile")
    assert store.stats.loop_writes == 2 and store.describe()["loop_writes"] == 2
    for key, data in (("a" * 32, small), ("b" * 32, large), ("c" * 32, small)):
        assert read_block_file(block_path(tmp_path, key)) == (data, blocks.checksum(data))


@pytest.mark.usefixtures("no_trips")
async def test_without_write_on_loop_and_moved_down_a_tier_small_files_go_to_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = WritingThreads(monkeypatch)
    # a sidecar's store: every file in the thread
    plain = await BlockStore([tier("SSD", 2**20, tmp_path / "a")], write_behind=2**20).open()
    await plain.put("a" * 32, b"a" * 100)
    await plain.stored()
    # a worker's with a memory tier first: the blocks it moves down, many at once
    tiers = [tier("MEM", 1000, ""), tier("SSD", 2**20, tmp_path / "b")]
    store = await BlockStore(tiers, write_behind=2**20, write_on_loop=True).open()
    for i in range(20):
        await store.put(f"{i:032x}", bytes([i]) * 100)
    await store.stored()
    assert threads.by_key.pop("a" * 32).startswith("fluidfed-blockfile")
    assert len(threads.by_key) >= 10  # (moved down to the disk)
    assert all(name.startswith("fluidfed-blockfile") for name in threads.by_key.values())
    assert plain.stats.loop_writes == store.stats.loop_writes == 0


@pytest.mark.usefixtures("no_trips")
async def test_a_small_block_put_again_waits_for_its_file_being_written_in_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    real = blockfile.write_block_file

    def held_if_large(path: str | Path, data: blocks.Data, crc: int) -> None:
        if len(data) > store_module.WRITE_ON_LOOP_UP_TO and not gate.wait(30):
            raise TimeoutError("the test never opened the gate")
        real(path, data, crc)

    monkeypatch.setattr(store_module, "write_block_file", held_if_large)
    store = await worker_store(tmp_path, 2**24)
    key, small = "a" * 32, b"s" * 100
    await store.put(key, b"l" * 2**20)  # behind: its thread holds at the gate
    again = asyncio.create_task(store.put(key, small))
    await asyncio.sleep(0.05)
    assert not again.done()  # (one thing at a time per file: the same temporary name)
    gate.set()
    await asyncio.wait_for(again, 10)
    await store.stored()
    assert read_block_file(block_path(tmp_path, key)) == (small, blocks.checksum(small))
    assert await store.get(key) == (small, blocks.checksum(small))
    assert store.stats.loop_writes == 1


async def test_writes_on_the_loop_that_keep_it_waiting_send_small_files_to_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(store_module, "BACK_TO_THREAD_FOR", 1.0)
    monkeypatch.setattr(store_module, "WAIT_BUDGET", 0.05)  # (room for the machine's own)
    # the first write sleeps past the budget (a disk, a throttle, a journal)
    threads = WritingThreads(monkeypatch, hold=0.1)
    store = await worker_store(tmp_path)
    caplog.set_level(logging.INFO, "fluidfed.store")
    await store.put("a" * 32, b"a" * 100)
    s = store.stats
    assert (s.loop_writes, s.loop_writes_waited, s.loop_writes_stopped) == (1, 1, 1)
    assert "kept the event loop waiting" in caplog.text
    await store.put("b" * 32, b"b" * 100)  # meanwhile: the thread's
    await store.stored()
    assert threads.by_key["b" * 32].startswith("fluidfed-blockfile")
    await asyncio.sleep(1.1)
    await store.put("c" * 32, b"c" * 100)  # after it: on the loop again
    assert threads.by_key["c" * 32] == threading.current_thread().name
    assert (s.loop_writes, s.loop_writes_stopped) == (2, 1)
    for key in ("a" * 32, "b" * 32, "c" * 32):
        assert read_block_file(block_path(tmp_path, key))[0] == key[0].encode() * 100


async def test_a_short_wait_on_the_loop_leaves_small_files_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "WAIT_BUDGET", 0.05)  # (room for the machine's own)
    threads = WritingThreads(monkeypatch, hold=0.002)
    store = await worker_store(tmp_path)
    for key in ("a" * 32, "b" * 32):
        await store.put(key, key[:1].encode() * 100)
    s = store.stats
    assert s.loop_writes == 2 and s.loop_writes_waited >= 1 and s.loop_writes_stopped == 0
    assert set(threads.by_key.values()) == {threading.current_thread().name}


@pytest.mark.parametrize(
    ("wall", "ran", "queued", "slept", "waited"),
    [
        (0.005, 0.001, 0.0, 1, 0.004),  # asleep on the disk
        (0.005, 0.001, 0.004, 1, 0.0),  # waiting for a core (another process busy)
        (0.005, 0.001, 0.0, 0, 0.0),  # interrupts' work on its core: no sleep
        (0.001, 0.0012, 0.0, 2, 0.0),  # (the clocks' grain)
    ],
)
def test_a_write_waited_where_it_slept_beyond_the_time_it_ran_or_waited_for_a_core(
    wall: float, ran: float, queued: float, slept: int, waited: float
) -> None:
    assert store_module.LoopWaits.waited(wall, ran, queued, slept) == pytest.approx(waited)


def test_small_files_leave_the_loop_once_their_waits_in_a_window_reach_the_budget() -> None:
    w = store_module.LoopWaits()
    budget, window = store_module.WAIT_BUDGET, store_module.WINDOW
    back = store_module.BACK_TO_THREAD_FOR
    t = 100.0
    assert w.open(t)
    # waits spread over windows never add up
    for i in range(10):
        assert not w.note(budget * 0.6, t + i * window)
    # within one window they do
    t += 20 * window
    assert not w.note(budget * 0.6, t)
    assert w.note(budget * 0.6, t + window / 2)
    assert not w.open(t + window) and not w.open(t + window / 2 + back - 1)
    assert w.open(t + window / 2 + back)
    # the count starts over at a trip, within the same window too
    assert not w.note(budget * 0.6, t + window * 0.7)


def test_the_kernel_says_how_long_this_thread_ran_and_waited_for_a_core() -> None:
    before = store_module._thread_times()
    assert before is not None  # (Linux with scheduler statistics: what CI runs on)
    sum(range(200_000))
    time.sleep(0.001)
    after = store_module._thread_times()
    assert after is not None and after[0] > before[0] and after[1] >= before[1]
    assert after[2] > before[2]  # (the sleep)


def test_a_thread_that_ends_leaves_no_schedstat_file_open() -> None:
    """Each thread that asks keeps its schedstat file open, and it is closed when the
    thread ends: threads that run an event loop each (tests, anyio's portals) come and go
    without leaking a descriptor apiece."""

    def opened() -> set[str]:
        names = set()
        for fd in Path("/proc/self/fd").iterdir():
            try:
                if "schedstat" in os.readlink(fd):
                    names.add(fd.name)
            except FileNotFoundError:  # (closed meanwhile: the listing's own descriptor)
                pass
        return names

    said: list[tuple[float, float, int] | None] = []
    held: list[int] = []

    def ask() -> None:
        time.sleep(0.001)  # (a new thread's run time is 0 until it is first switched out)
        said.append(store_module._thread_times())
        held.append(len(opened()))

    before = opened()
    for _ in range(5):
        t = threading.Thread(target=ask)
        t.start()
        t.join()
    gc.collect()
    assert None not in said and len(said) == 5
    assert min(held) > len(before)  # (each had its own open while it ran)
    assert opened() == before


async def test_a_disk_tier_keeps_min_free_of_its_filesystem_free_by_evicting_its_oldest(
    small_disk: Path,
) -> None:
    """A tier whose quota (1 GiB) is far larger than its disk (4 MiB): its least recently
    used blocks are evicted (their files removed) so that the filesystem keeps `min_free`
    free, small blocks written on the loop and larger ones behind their readers alike; no
    write fails, and the newest blocks stay."""
    spec = testing.cache_tier("SSD", 2**30, small_disk, min_free=0.25)
    store = await BlockStore([spec], write_behind=2**30, write_on_loop=True).open()
    sizes = [64 * 1024, 300 * 1024] * 20  # 7.3 MiB in all
    keys = [f"{i:032x}" for i in range(len(sizes))]
    for i, (key, size) in enumerate(zip(keys, sizes, strict=True)):
        await store.put(key, bytes([i]) * size)
        await store.stored()
        free, floor = testing.free_and_floor(small_disk, 0.25)
        assert free >= floor, (i, free, floor)
    assert store.stats.write_errors == 0 and store.stats.no_room == 0
    assert store.stats.shed > 0 and store.describe()["shed"] == store.stats.shed
    assert keys[0] not in store and not block_path(small_disk, keys[0]).exists()
    assert await store.get(keys[-1]) == (
        bytes([39]) * sizes[-1],
        blocks.checksum(bytes([39]) * sizes[-1]),
    )
    on_disk = {p.name for p in small_disk.rglob("*") if p.is_file()}
    assert on_disk == {k for k in keys if k in store}


async def test_without_min_free_the_same_disk_fills_and_its_writes_fail(small_disk: Path) -> None:
    """The same tier with the floor off: the disk fills and writes fail with ENOSPC (what
    the floor keeps from happening, and from the node's other tenants)."""
    spec = testing.cache_tier("SSD", 2**30, small_disk, min_free=0.0)
    store = await BlockStore([spec]).open()
    failed = []
    for i in range(40):
        try:
            await store.put(f"{i:032x}", bytes([i]) * 300 * 1024, wait=True)
        except OSError as err:
            failed.append(err.errno)
    assert failed and set(failed) == {errno.ENOSPC}
    assert store.stats.write_errors == len(failed) and store.stats.shed == 0


async def test_puts_at_once_evict_for_their_own_blocks_only(small_disk: Path) -> None:
    """Sixteen puts at once on a tier at its floor, written behind their readers, just
    after another tenant took 512 KiB of the disk: the first evicts for that shortfall and
    its own block, each of the others for its own block only, counting what the ones
    before it evicted (none evicts again for the shortfall), and the floor holds."""
    spec = testing.cache_tier("SSD", 2**30, small_disk, min_free=0.25)
    store = await BlockStore([spec], write_behind=2**30, write_on_loop=True).open()
    size = 128 * 1024
    for i in range(40):  # (5 MiB: to the floor and past it, one at a time)
        await store.put(f"{i:032x}", bytes([i]) * size)
    await store.stored()
    held = len(store.hottest())
    (small_disk / "another-tenant").write_bytes(b"t" * 512 * 1024)  # (4 blocks' files)
    await asyncio.gather(*(store.put(f"{i:032x}", bytes([i]) * size) for i in range(40, 56)))
    await store.stored()
    free, floor = testing.free_and_floor(small_disk, 0.25)
    assert free >= floor
    assert store.stats.write_errors == 0 and store.stats.no_room == 0
    # 16 new blocks in, 16 + 4 old ones out (give or take one)
    assert held - 5 <= len(store.hottest()) <= held - 3, (held, len(store.hottest()))
    assert all(f"{i:032x}" in store for i in range(40, 56))


async def test_a_block_no_eviction_can_make_room_for_is_refused_saying_why(
    small_disk: Path,
) -> None:
    """Where even an empty tier leaves too little free (90% of a 4 MiB disk kept free: no
    1 MiB block fits), `put` raises ENOSPC naming `min_free`, nothing is written, and the
    blocks the tier holds stay (evicting them all would not have made room)."""
    spec = testing.cache_tier("SSD", 2**30, small_disk, min_free=0.9)
    store = await BlockStore([spec]).open()
    small = [f"{i:032x}" for i in range(3)]
    for key in small:
        await store.put(key, b"s" * 64 * 1024, wait=True)
    with pytest.raises(
        OSError, match=r"keeps 90% of its filesystem free \(cache.tiers\[\]\.min_free\)"
    ) as refused:
        await store.put("d" * 32, b"x" * 2**20, wait=True)
    assert refused.value.errno == errno.ENOSPC
    assert store.stats.no_room == 1 and "d" * 32 not in store
    assert store.stats.shed == 0 and all(k in store for k in small)
    assert {p.name for p in small_disk.rglob("*") if p.is_file()} == set(small)


async def test_keep_free_gives_back_what_another_tenant_took(small_disk: Path) -> None:
    """Another tenant of the disk takes it below the tier's floor: `keep_free` (a worker
    calls it every few seconds) evicts the tier's least recently used blocks until the
    floor holds again, and where they cannot make it, all of them."""
    spec = testing.cache_tier("SSD", 2**30, small_disk, min_free=0.25)
    store = await BlockStore([spec]).open()
    keys = [f"{i:032x}" for i in range(12)]
    for key in keys:  # (1.5 MiB of the 3 MiB above the floor)
        await store.put(key, b"k" * 128 * 1024, wait=True)
    store.keep_free()
    await store.stored()
    assert store.stats.shed == 0  # (nothing lacking)
    (small_disk / "tenant-1").write_bytes(b"t" * 2 * 2**20)  # 0.5 MiB below the floor now
    store.keep_free()
    await store.stored()
    free, floor = testing.free_and_floor(small_disk, 0.25)
    assert free >= floor and 0 < store.stats.shed < len(keys)
    assert keys[-1] in store and keys[0] not in store  # (the least recently used went)
    free, _ = testing.free_and_floor(small_disk, 0.25)
    (small_disk / "tenant-2").write_bytes(b"t" * (free - 8192))  # more than the tier holds
    store.keep_free()
    await store.stored()
    assert not store.hottest() and not [p for p in small_disk.rglob("*") if p.parent != small_disk]


async def test_a_tier_whose_disk_is_below_its_floor_without_its_blocks_says_so_once(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node's disk already fuller than a tier's floor (another tenant): `keep_free` logs
    once that the tier keeps no block and why (naming `min_free`), not again while it
    stays so, nor when the floor just holds again, and once more when the tenant frees
    more and the tier keeps blocks again, even where its own puts took that room at once;
    a tier that can keep blocks says nothing."""
    spec = testing.cache_tier("SSD", 2**30, small_disk, min_free=0.25)
    store = await BlockStore([spec]).open()
    await store.put("a" * 32, b"k" * 128 * 1024, wait=True)
    caplog.set_level(logging.INFO, logger="fluidfed.store")
    store.keep_free()
    assert not caplog.records
    free, _ = testing.free_and_floor(small_disk, 0.25)
    tenant = small_disk / "tenant"
    tenant.write_bytes(b"t" * (free - 8192))
    for _ in range(3):
        store.keep_free()
        await store.stored()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and caplog.records[0].levelno == logging.WARNING, said
    assert f"cache tier {small_disk} keeps no block" in said[0]
    assert "less than the 25% it keeps free (cache.tiers[].min_free)" in said[0]
    assert "a" * 32 not in store  # (given back on the way)
    with pytest.raises(OSError, match="min_free"):
        await store.put("b" * 32, b"k" * 4096, wait=True)
    # the tenant gives back a little: the floor holds, but with less than the margin over
    # it (1% of this disk), so not yet said to have room (a disk that hovers at the floor
    # is not said to every few seconds)
    fs = os.statvfs(small_disk)
    margin = min(store_module.SHORT_MARGIN, fs.f_blocks * fs.f_frsize // 100)
    free, floor = testing.free_and_floor(small_disk, 0.25)
    os.truncate(tenant, tenant.stat().st_size - (floor - free) - margin // 2)
    free, floor = testing.free_and_floor(small_disk, 0.25)
    assert floor <= free < floor + margin
    store.keep_free()
    assert len(caplog.records) == 1
    # the tenant gives back two margins' worth, and the tier's own puts fill it to the
    # floor at once (as a busy worker's do between two looks): its blocks count as room,
    # as they did when it was said short, so it is said to keep blocks again
    os.truncate(tenant, tenant.stat().st_size - 2 * margin)
    for put in range(100):  # (until less than the margin is left over the floor)
        await store.put(f"{put:032x}", b"p" * 4096, wait=True)
        free, floor = testing.free_and_floor(small_disk, 0.25)
        if free < floor + margin:
            break
    assert put > 0 and floor <= free < floor + margin
    store.keep_free()
    store.keep_free()
    said = [r.getMessage() for r in caplog.records]
    assert (
        len(said) == 2
        and said[1] == f"cache tier {small_disk} keeps blocks again: its filesystem has room"
    )


async def test_space_held_open_by_a_reader_is_not_evicted_for_twice(small_disk: Path) -> None:
    """Block files evicted to make room that a reader still holds open (a sidecar's mapping
    of a worker's file) free nothing until it lets go: the next looks count that space as
    coming (`blocks.Unseen`) and evict no more blocks for the same shortfall; once the
    reader lets go, the floor holds with what was evicted."""
    spec = testing.cache_tier("SSD", 2**30, small_disk, min_free=0.25)
    store = await BlockStore([spec]).open()
    keys = [f"{i:032x}" for i in range(12)]
    for key in keys:
        await store.put(key, b"k" * 128 * 1024, wait=True)
    held = [os.open(block_path(small_disk, k), os.O_RDONLY) for k in keys]
    try:
        (small_disk / "tenant").write_bytes(b"t" * 2 * 2**20)  # 0.5 MiB below the floor
        store.keep_free()
        await store.stored()
        shed = store.stats.shed
        free, floor = testing.free_and_floor(small_disk, 0.25)
        assert 0 < shed < len(keys) and free < floor  # (evicted, removed, still held open)
        for _ in range(3):
            store.keep_free()
            await store.stored()
        assert store.stats.shed == shed  # (not again for what is coming back)
    finally:
        for fd in held:
            os.close(fd)
    free, floor = testing.free_and_floor(small_disk, 0.25)
    assert free >= floor
    store.keep_free()
    await store.stored()
    assert store.stats.shed == shed


async def test_a_sidecars_store_holds_the_disk_blocks_it_read_mapped_and_unchecked(
    tmp_path: Path,
) -> None:
    """With `hold` and `lazy` (a sidecar's own disk tier), a block read from its file stays
    at hand for `peek` (the READs after the first), mapped from the page cache and checked
    by the pieces each READ covers; the oldest are let go of past `hold` bytes, as is a
    block discarded; a read-ahead's `load` reads a file before its READs come, counted as
    no hit. A block whose file is still being written is at hand too."""
    size = 3 * blocks.CHECK_PIECE  # (pieces: mapped lazily, each checked as it is read)
    store = await BlockStore([tier("SSD", 2**26, tmp_path)], hold=2 * size, lazy=True).open()
    payloads = {f"{i:032x}": os.urandom(size) for i in range(4)}
    for key, payload in payloads.items():
        await store.put(key, payload)
    first, second, third, fourth = payloads
    assert store.peek(first) is None  # (on disk, not read yet)
    got = await store.get(first)
    assert got is not None and bytes(got[0]) == payloads[first]
    assert blockfile.is_mapped(got[0]) and blockfile.is_unchecked(got[0])
    held = store.peek(first)
    assert held is not None and bytes(held) == payloads[first]
    assert (await store.get(first)) == got and store.stats.file_reads == 1
    assert store.stats.hits == 3

    store.load(second)
    store.load(second)  # (under way: not again)
    deadline = time.monotonic() + 10
    while store.peek(second, count=False) is None:
        assert time.monotonic() < deadline, "the read-ahead's load never came"
        await asyncio.sleep(0.01)
    assert store.stats.loads == 1 and store.stats.file_reads == 2 and store.stats.hits == 3

    assert (await store.get(third)) is not None
    assert store.peek(first, count=False) is None  # (past `hold`: the oldest let go of)
    old = store.peek(third, count=False)
    assert old is not None
    await store.discard(third)
    assert store.peek(third, count=False) is None and await store.get(third) is None
    assert store.peek(fourth, count=False) is None  # (never read: not held)
    await store.put(third, payloads[fourth])  # (its key back, other bytes: not the old)
    assert store.peek(third, count=False) is None
    again = await store.get(third)
    assert again is not None and bytes(again[0]) == payloads[fourth]

    behind = await BlockStore([tier("SSD", 2**26, tmp_path / "b")], write_behind=2**24).open()
    gate = threading.Event()
    behind._writer.submit(gate.wait)  # (the writing thread busy: the file waits)
    try:
        await behind.put(first, payloads[first])
        pending = behind.peek(first)
        assert pending is not None and bytes(pending) == payloads[first]
    finally:
        gate.set()
    await behind.stored()


async def test_a_held_disk_block_whose_reads_check_failed_is_read_whole_not_dropped(
    tmp_path: Path,
) -> None:
    """A READ's check of a lazily held block fails for pages the kernel let go of as well as
    for damaged bytes: the store lets go of it and reads its file checked whole next, which
    keeps a sound file (no S3 read, nothing counted corrupt) and drops a damaged one."""
    size = 3 * blocks.CHECK_PIECE
    store = await BlockStore([tier("SSD", 2**26, tmp_path)], hold=size, lazy=True).open()
    key, payload = "d" * 32, os.urandom(size)
    await store.put(key, payload)
    assert blockfile.is_unchecked((await store.get(key))[0])  # type: ignore[index]
    assert store.distrust(key)
    assert store.peek(key, count=False) is None
    got = await store.get(key)
    assert got is not None and bytes(got[0]) == payload and not blockfile.is_unchecked(got[0])
    assert store.stats.corrupt == 0 and block_path(tmp_path, key).exists()

    store.distrust(key)  # (then damaged in place: its whole check drops it)
    fd = os.open(block_path(tmp_path, key), os.O_WRONLY)
    try:
        os.pwrite(fd, bytes([payload[7] ^ 1]), 7)
    finally:
        os.close(fd)
    assert await store.get(key) is None
    assert store.stats.corrupt == 1 and not block_path(tmp_path, key).exists()
    memory = await BlockStore([tier("MEM", 2**26)], hold=size, lazy=True).open()
    await memory.put(key, payload)
    assert not memory.distrust(key)  # (held in memory: a worker's file, the caller's)


async def test_a_disk_read_let_go_of_while_under_way_is_neither_held_nor_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of a block's file that was under way when the block was discarded (a READ's
    failed check) ends after the block is in the tier again, fetched anew: its result is
    not held nor returned for it; the reader gets the new block, and its file stays."""
    size = 3 * blocks.CHECK_PIECE
    slow = store_module._Tier.read

    def read(self: store_module._Tier, key: str, lazy: bool = False) -> object:
        got = slow(self, key, lazy)  # (the old file's bytes, read before it is let go of)
        time.sleep(0.3)
        return got

    monkeypatch.setattr(store_module._Tier, "read", read)
    store = await BlockStore([tier("SSD", 2**26, tmp_path)], hold=size).open()
    key, old, new = "f" * 32, os.urandom(size), os.urandom(size)
    await store.put(key, old)
    under_way = asyncio.ensure_future(store.get(key))
    await asyncio.sleep(0.05)
    await store.discard(key)
    await store.put(key, new)
    got = await under_way
    assert got is not None and bytes(got[0]) == new
    held = store.peek(key, count=False)
    assert held is not None and bytes(held) == new
    assert block_path(tmp_path, key).exists() and store.stats.corrupt == 0


async def test_a_disk_tier_whose_filesystem_maps_nothing_is_read_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lazy store on a filesystem that refuses mappings (some FUSE and network ones)
    reads its block files instead, checked whole, and stops trying to map them: nothing is
    taken for damaged."""
    size = 3 * blocks.CHECK_PIECE
    tried: list[str] = []

    def refused(path: str | Path, **kw: bool) -> tuple[blocks.Data, int]:
        tried.append(str(path))
        raise OSError(errno.ENODEV, "no mappings here")

    monkeypatch.setattr(store_module, "map_block_file", refused)
    store = await BlockStore([tier("SSD", 2**26, tmp_path)], hold=size, lazy=True).open()
    payloads = {k * 32: os.urandom(size) for k in "gh"}
    for key, payload in payloads.items():
        await store.put(key, payload)
    for key, payload in payloads.items():
        got = await store.get(key)
        assert got is not None and bytes(got[0]) == payload
    assert len(tried) == 1  # (found once, then read)
    assert store.stats.corrupt == 0 and all(block_path(tmp_path, k).exists() for k in payloads)


async def test_a_lazily_held_disk_block_damaged_in_its_file_fails_its_check(
    tmp_path: Path,
) -> None:
    """A block mapped lazily is checked whole by any use but a READ's answer: a byte of its
    file damaged after it was written is found (its pieces' CRCs still make the block's,
    so the mapping itself does not fail)."""
    size = 3 * blocks.CHECK_PIECE
    store = await BlockStore([tier("SSD", 2**26, tmp_path)], hold=size, lazy=True).open()
    key, payload = "c" * 32, os.urandom(size)
    await store.put(key, payload)
    path = block_path(tmp_path, key)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes([payload[size // 2] ^ 0xFF]), size // 2)
    finally:
        os.close(fd)
    got = await store.get(key)
    assert got is not None and blockfile.is_unchecked(got[0])
    with pytest.raises(errors.CorruptBlock):
        blockfile.check_whole(got[0])


async def test_failed_checks_of_one_block_share_its_one_whole_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each READ of a block whose pages the kernel let go of fails its check (four for a 4
    MiB block): the first READ back lets go of the block, and the others do not start its
    whole read again while it is under way, nor take a lazy read that ends after them."""
    size = 3 * blocks.CHECK_PIECE
    slow = store_module._Tier.read

    def read(self: store_module._Tier, key: str, lazy: bool = False) -> object:
        got = slow(self, key, lazy)
        time.sleep(0.2)
        return got

    monkeypatch.setattr(store_module._Tier, "read", read)
    store = await BlockStore([tier("SSD", 2**26, tmp_path)], hold=size, lazy=True).open()
    key, payload = "a" * 32, os.urandom(size)
    await store.put(key, payload)
    assert blockfile.is_unchecked((await store.get(key))[0])  # type: ignore[index]
    assert store.distrust(key)
    whole = asyncio.ensure_future(store.get(key))
    await asyncio.sleep(0.05)
    assert store.distrust(key) and store.distrust(key)  # (the same block's other READs)
    got = await whole
    assert got is not None and bytes(got[0]) == payload and not blockfile.is_unchecked(got[0])
    assert store.stats.file_reads == 2  # (the lazy mapping, then one whole read)
    held = store.peek(key, count=False)
    assert held is not None and not blockfile.is_unchecked(held)
