"""The tiered block store: eviction down the tiers, checks, spans and located files."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit import testing
from fluidfed.data import blocks
from fluidfed.data.blockfile import block_path, read_block_file
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
