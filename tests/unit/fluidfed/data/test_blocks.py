"""Block arithmetic, rendezvous hashing, the LRU ledger and the tiered block store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fluidfed.data import blocks, layout
from fluidfed.data.blockfile import (
    CorruptBlock,
    NotCached,
    block_path,
    load_block_file,
    map_block_file,
    read_block_file,
)
from fluidfed.data.store import BlockStore
from fluidfed.models import CacheTier, Mount


def test_block_ranges() -> None:
    assert blocks.block_count(0, 4) == 0
    assert blocks.block_count(9, 4) == 3
    assert blocks.block_span(9, 4, 2) == (8, 1)
    assert blocks.block_span(9, 4, 3) == (12, 0)
    assert list(blocks.blocks_for(3, 2, 9, 4)) == [0, 1]
    assert list(blocks.blocks_for(8, 100, 9, 4)) == [2]
    assert list(blocks.blocks_for(9, 10, 9, 4)) == []


def test_keys_change_with_the_object_version() -> None:
    a = blocks.block_key("ds", 0, "a.bin", blocks.version_of(10, 1.0, ""), 4, 0)
    b = blocks.block_key("ds", 0, "a.bin", blocks.version_of(11, 1.0, ""), 4, 0)
    c = blocks.block_key("ds", 0, "a.bin", blocks.version_of(10, 1.0, '"etag"'), 4, 0)
    assert len({a, b, c}) == 3
    assert blocks.version_of(10, 1.0, '"etag"') == "etag"


def test_rendezvous_moves_only_the_new_workers_share() -> None:
    keys = [blocks.block_key("ds", 0, f"f{i}", "v", 4, 0) for i in range(3000)]
    two = ["w0", "w1"]
    three = [*two, "w2"]
    before = {k: blocks.owner(k, two) for k in keys}
    after = {k: blocks.owner(k, three) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "w2" for k in moved)  # nothing moves between old workers
    assert 0.28 < len(moved) / len(keys) < 0.39  # about a third
    # removing a worker moves only what it owned, to the others
    back = {k: blocks.owner(k, two) for k in keys}
    assert back == before
    assert blocks.rank(keys[0], three)[0] == after[keys[0]]
    assert blocks.owner(keys[0], []) is None


def test_ledger_evicts_least_recently_used_down_to_the_low_mark() -> None:
    led = blocks.Ledger(quota=100, high=0.9, low=0.5)
    for k in "abcd":
        assert led.add(k, 20) == []
    led.touch("a")  # a is now the most recent
    evicted = led.add("e", 20)  # 100 > 90: down to <= 50
    assert evicted == ["b", "c", "d"]
    assert led.used == 40
    assert led.hottest() == ["e", "a"]
    assert not led.fits(91)
    assert led.fits(90)
    with pytest.raises(ValueError, match="watermarks"):
        blocks.Ledger(10, high=0.5, low=0.9)


def tier(medium: str, quota: int, path: Path | None = None) -> CacheTier:
    return CacheTier(medium=medium, quota=quota, path=str(path or ""), high=0.9, low=0.5)  # type: ignore[arg-type]


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


def test_layout_places_mounts_and_applies_the_sub_path() -> None:
    mounts = [Mount(uri="s3://a/x", name="imgs"), Mount(uri="s3://b/y", name="labels")]
    listings = [
        [("train/1.jpg", 10, 1.0, "e1"), ("val/2.jpg", 5, 1.0, "e2")],
        [("all.csv", 3, 2.0, "")],
    ]
    everything = layout.files(mounts, listings)
    assert sorted(everything) == ["imgs/train/1.jpg", "imgs/val/2.jpg", "labels/all.csv"]
    assert everything["labels/all.csv"].mount == 1
    assert everything["imgs/train/1.jpg"].key == "train/1.jpg"
    sub = layout.files(mounts, listings, sub_path="/imgs/train/")
    assert list(sub) == ["1.jpg"]
    assert layout.directories(everything) == {
        "": ["imgs", "labels"],
        "imgs": ["train", "val"],
        "imgs/train": ["1.jpg"],
        "imgs/val": ["2.jpg"],
        "labels": ["all.csv"],
    }
    one = layout.files([Mount(uri="file:///d")], [[("a", 1, 0.0, "")]])
    assert list(one) == ["a"]


def test_peers_from_a_statefulset() -> None:
    p = layout.Peers(statefulset="fluidfed-x-cache", service="fluidfed-x-cache.ns.svc", replicas=2)
    assert p.urls() == [
        "http://fluidfed-x-cache-0.fluidfed-x-cache.ns.svc:7070",
        "http://fluidfed-x-cache-1.fluidfed-x-cache.ns.svc:7070",
    ]
    assert layout.Peers(endpoints=["http://a/"]).urls() == ["http://a"]


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
    ssd = CacheTier(medium="SSD", quota=300, path=str(tmp_path), high=0.9, low=0.8)  # type: ignore[arg-type]
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


async def test_block_files_are_mapped_checked_and_outlive_eviction(tmp_path: Path) -> None:
    ssd = CacheTier(medium="SSD", quota=2**20, path=str(tmp_path))  # type: ignore[arg-type]
    store = await BlockStore([ssd]).open()
    payload = bytes(range(256)) * 1000
    await store.put("a" * 32, payload)
    path = block_path(tmp_path, "a" * 32)

    data, crc = map_block_file(path)
    assert isinstance(data, memoryview) and data == payload
    assert crc == blocks.checksum(payload)
    # the worker evicts it (unlinks the file): what is mapped stays readable
    await store.discard("a" * 32)
    assert not path.exists()
    assert bytes(data[1000:1010]) == payload[1000:1010]

    # damage is found in a mapped block as in a read one
    await store.put("b" * 32, payload)
    damaged = block_path(tmp_path, "b" * 32)
    raw = bytearray(damaged.read_bytes())
    raw[5000] ^= 0xFF
    damaged.write_bytes(raw)
    with pytest.raises(CorruptBlock):
        map_block_file(damaged)
    with pytest.raises(CorruptBlock):
        await load_block_file(damaged)
    damaged.write_bytes(b"FFB")  # shorter than a trailer
    with pytest.raises(CorruptBlock):
        map_block_file(damaged)


async def test_block_files_not_in_the_page_cache_are_read_off_the_event_loop(
    tmp_path: Path,
) -> None:
    store = await BlockStore([CacheTier(medium="SSD", quota=2**22, path=str(tmp_path))]).open()  # type: ignore[arg-type]
    payload = b"x" * 2**20
    await store.put("c" * 32, payload)
    path = block_path(tmp_path, "c" * 32)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # written back, so the kernel can drop the pages
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    with pytest.raises(NotCached):
        map_block_file(path, cached_only=True)
    data, crc = await load_block_file(path)  # read from the disk, in a thread
    assert data == payload and crc == blocks.checksum(payload)
    # now it is cached: mapped right away
    again, _ = map_block_file(path, cached_only=True)
    assert again == payload
