"""Block arithmetic, block keys, rendezvous hashing and the LRU ledger."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from fluidfed.data import blocks


def test_block_ranges() -> None:
    assert blocks.block_count(0, 4) == 0
    assert blocks.block_count(9, 4) == 3
    assert blocks.block_span(9, 4, 2) == (8, 1)
    assert blocks.block_span(9, 4, 3) == (12, 0)
    assert list(blocks.blocks_for(3, 2, 9, 4)) == [0, 1]
    assert list(blocks.blocks_for(8, 100, 9, 4)) == [2]
    assert list(blocks.blocks_for(9, 10, 9, 4)) == []
    # (where a read across blocks lies in each: the first from `lo`, the next from 0)
    assert blocks.spans(3, 2, [4, 4]) == [(3, 1), (0, 1)]
    assert blocks.spans(1, 7, [4, 4]) == [(1, 3), (0, 4)]
    assert blocks.spans(2, 10, [4, 1]) == [(2, 2), (0, 1)]  # (the file's end: fewer)
    assert blocks.spans(0, 4, [4, 4]) == [(0, 4), (0, 0)]


def test_a_run_takes_the_free_blocks_after_a_miss_up_to_the_first_taken_or_the_end() -> None:
    def free_but(*taken: int) -> Callable[[int], bool]:
        return lambda i: i not in taken

    assert blocks.run_after(3, 10, 1, free_but()) == range(4, 5)
    assert blocks.run_after(3, 10, 3, free_but()) == range(4, 7)
    assert blocks.run_after(3, 10, 3, free_but(5)) == range(4, 5)  # contiguous only
    assert blocks.run_after(3, 10, 3, free_but(4, 6)) == range(4, 4)  # taken at once: none
    assert blocks.run_after(8, 10, 3, free_but()) == range(9, 10)  # the last block ends it
    assert blocks.run_after(9, 10, 3, free_but()) == range(10, 10)
    assert blocks.run_after(3, 10, 0, free_but()) == range(4, 4)
    asked: list[int] = []

    def free(i: int) -> bool:
        asked.append(i)
        return True

    blocks.run_after(3, 10, 2, free)
    assert asked == [4, 5]  # nothing past the run is looked at


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
    without_w0 = {k: blocks.owner(k, ["w1", "w2"]) for k in keys}
    assert all(without_w0[k] == after[k] for k in keys if after[k] != "w0")
    assert {without_w0[k] for k in keys if after[k] == "w0"} == {"w1", "w2"}
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


def test_the_ledger_sheds_least_recently_used_keys_until_their_files_free_enough() -> None:
    led = blocks.Ledger(quota=1000)
    for k in "abcd":
        led.add(k, 10)
    led.touch("a")
    # each key's file takes twice its size; 30 bytes: b and c (40), never the kept one
    assert led.shed(30, lambda n: 2 * n, keep="b") == (["c", "d"], 40)
    assert led.hottest() == ["a", "b"] and led.used == 20
    assert led.shed(0, lambda n: n, keep="") == ([], 0)
    assert led.shed(100, lambda n: n, keep="a") == (["b"], 10)  # all it has: short
    assert led.hottest() == ["a"]


def test_room_needed_keeps_the_floor_of_the_filesystem_free() -> None:
    # 1,000 bytes, 10% kept free: 300 free takes 200 more, not 201
    assert blocks.room_needed(free=300, total=1000, min_free=0.1, size=200) == 0
    assert blocks.room_needed(free=300, total=1000, min_free=0.1, size=201) == 1
    assert blocks.room_needed(free=50, total=1000, min_free=0.1, size=100) == 150
    assert blocks.room_needed(free=0, total=1000, min_free=0.0, size=0) == 0
    # a filesystem that says nothing of itself (statvfs all zeros): nothing to free
    assert blocks.room_needed(free=0, total=0, min_free=0.5, size=100) == 0


def test_space_evicted_counts_as_free_until_the_filesystem_shows_it() -> None:
    u = blocks.Unseen(within=60)
    assert u.bytes(seen=100, written=0, now=0) == 0
    u.freed(seen=100, written=0, n=50, now=0)  # 50 evicted, the filesystem shows 100 free
    assert u.bytes(seen=100, written=0, now=1) == 50  # (held open: not shown yet)
    assert u.bytes(seen=130, written=0, now=1) == 20  # (30 of it shown)
    assert u.bytes(seen=110, written=20, now=1) == 20  # (20 written since: expected 130)
    u.freed(seen=110, written=20, n=10, now=2)  # 10 more while 20 are still unseen
    assert u.bytes(seen=110, written=20, now=3) == 30
    assert u.bytes(seen=110, written=20, now=62) == 0  # (long enough: counted no more)
    u.settle(seen=140, written=20, now=3)  # all of it shown: nothing unseen from now on
    assert u.bytes(seen=100, written=20, now=4) == 0  # (another tenant's take is not ours)
    u.freed(seen=100, written=20, n=10, now=5)
    u.settle(seen=100, written=20, now=6)  # (not shown yet: still counted)
    assert u.bytes(seen=100, written=20, now=6) == 10


def test_a_received_blocks_pieces_are_noted_for_its_file_and_used_only_if_they_hold() -> None:
    """A block's CRC taken as it is received (`checksum_noting`) is the CRC of the whole,
    its pieces' CRCs noted by where it lies: the block file written of it takes those
    (`pieces_of`) rather than reading it again, unless they do not make its CRC (other
    bytes in the same buffer since). A block of one piece is its own piece's CRC."""
    size = 3 * blocks.CHECK_PIECE + 11
    raw = bytearray(os.urandom(size))
    buf = memoryview(raw)  # (a receive buffer, as received blocks lie in)
    crc = blocks.checksum_noting(buf)
    assert crc == blocks.checksum(buf)
    pieces = blocks.piece_crcs(buf)
    assert blocks.combined(pieces, size) == crc
    raw[5] ^= 1  # (not as received: the noted pieces are what is written)
    assert blocks.pieces_of(buf, crc) == pieces
    assert blocks.pieces_of(buf, crc) == blocks.piece_crcs(buf)  # (taken: noted ones went)

    blocks.checksum_noting(buf)  # noted, then the buffer holds another block
    raw[:] = os.urandom(size)
    other = blocks.checksum(buf)
    assert blocks.pieces_of(buf, other) == blocks.piece_crcs(buf)  # (the noted do not make it)

    small = os.urandom(blocks.CHECK_PIECE)
    assert blocks.pieces_of(small, 12345) == (12345).to_bytes(4, "big")
    assert blocks.pieces_of(b"", 0) == b""
    with pytest.raises(ValueError, match="8 bytes of CRCs for 10 bytes"):
        blocks.combined(bytes(8), 10)  # (two CRCs for one piece: refused, not combined)
