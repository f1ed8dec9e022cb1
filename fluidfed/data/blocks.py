"""Blocks: the unit the sidecar and the cache workers cache, move and checksum.

A file is cut into fixed-size blocks (the dataset's `cache.block_size`). A block's key names
the dataset, the mount, the object, the object's version (etag, or size and mtime) and the
block's index, so a changed object never serves stale blocks. Keys are spread over the
cache workers by rendezvous (highest-random-weight) hashing: each worker's weight for a
key is a hash of (worker, key) and the heaviest owns it, so adding or removing one worker
moves only that worker's share.

Pure: no I/O here. `fluidfed.data.store` keeps blocks in memory and on disk.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from zlib_ng import zlib_ng

from fluidfed.data import heap

# CRC-32 of every block, at rest and in transit: zlib-ng's (carry-less multiply) computes
# the same values as zlib's, several times faster; with zlib the check cost a quarter of a
# core at 1 GB/s of reads (README, "Measured design decisions").
checksum = zlib_ng.crc32
combine = zlib_ng.crc32_combine  # (crc of A, crc of B, len(B)): the CRC of A + B
OFF_LOOP = 2**18  # bytes from which a checksum is worth a hand-off to a thread

# A block file holds the CRC of each CHECK_PIECE bytes of its block too, so that a reader
# can check just the pieces a READ covers (`blockfile`). The kernel asks for up to 1 MiB at
# a time, not always on a boundary of 1 MiB: a piece of 256 KiB checks at most 0.5 MiB it
# does not send, and a 4 MiB block's trailer is 72 bytes.
CHECK_PIECE = 256 * 1024
PIECE_CRC = struct.Struct(">I")  # each piece's CRC, as a block file's trailer has it


async def checksum_off_loop(data: Data) -> int:
    """The CRC of a large block in a thread (zlib-ng frees the GIL: another core), of a
    small one right here (the hand-off would cost more); its pieces' noted
    (`checksum_noting`)."""
    if len(data) > OFF_LOOP:
        return await asyncio.to_thread(checksum_noting, data)
    return checksum(data)


def piece_crcs(data: Data) -> bytes:
    """The CRC of each CHECK_PIECE bytes of `data` (the last piece may be shorter), as a
    block file's trailer holds them."""
    with memoryview(data) as view, view.cast("B") as whole:
        return b"".join(
            PIECE_CRC.pack(checksum(whole[at : at + CHECK_PIECE]))
            for at in range(0, len(whole), CHECK_PIECE)
        )


def combined(pieces: Data, size: int) -> int:
    """The CRC of a block of `size` bytes from its pieces' CRCs (`piece_crcs`); ValueError
    if there are not as many as its pieces (zlib-ng's combine does not return given a
    negative length)."""
    if len(pieces) != PIECE_CRC.size * -(-size // CHECK_PIECE):
        raise ValueError(f"{len(pieces)} bytes of CRCs for {size} bytes in pieces")
    crc = 0
    for i, (piece,) in enumerate(PIECE_CRC.iter_unpack(pieces)):
        crc = combine(crc, piece, min(CHECK_PIECE, size - i * CHECK_PIECE)) if i else piece
    return crc


# The pieces' CRCs of blocks received lately, by where the block lies in memory and its
# length: taken while the bytes were in the CPU's caches, for the block file a worker may
# write of it (`pieces_of`), which would otherwise read the block once more. Entries of
# blocks never written are pushed out; one found for other bytes at the same place (a
# buffer used again) does not make the CRC it is taken with, and is not used.
_noted: OrderedDict[tuple[int, int], bytes] = OrderedDict()
_noting = threading.Lock()  # (receiving threads note, writing threads take)
NOTED_KEPT = 256


def checksum_noting(data: Data) -> int:
    """The CRC of a block just received, taken piece by piece (the same work: zlib-ng
    then combines them), the pieces' CRCs noted for `pieces_of`."""
    n = len(data)
    if n <= CHECK_PIECE:
        return checksum(data)
    pieces = piece_crcs(data)
    where = (heap.address(data), n)
    with _noting:
        _noted[where] = pieces
        _noted.move_to_end(where)
        while len(_noted) > NOTED_KEPT:
            _noted.popitem(last=False)
    return combined(pieces, n)


def pieces_of(data: Data, crc: int) -> bytes:
    """The CRCs of `data`'s pieces, for its block file: its own CRC for a block of one
    piece, those noted as it was received if they make `crc`, else taken now."""
    n = len(data)
    if n <= CHECK_PIECE:
        return PIECE_CRC.pack(crc) if n else b""
    where = (heap.address(data), n)
    with _noting:
        got = _noted.pop(where, None)
    if got is not None and combined(got, n) == crc:
        return got
    return piece_crcs(data)


# A block's bytes: held (bytes), or mapped read-only from a cache worker's block file on
# this machine (a memoryview of the page cache, see `blockfile.load_block_file`).
Data = bytes | memoryview


# (a sequential reader's READs and its read-ahead name each block several times: a
# blake2b and its string each time cost ~0.8 µs, a lookup here ~0.15)
@functools.lru_cache(maxsize=4096, typed=True)
def block_key(
    dataset: str, mount: int, path: str, version: str, block_size: int, index: int
) -> str:
    raw = f"{dataset}\0{mount}\0{path}\0{version}\0{block_size}\0{index}".encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def version_of(size: int, mtime: float, etag: str) -> str:
    """What changes when the object changes."""
    return etag.strip('"') if etag else f"{size}:{mtime:.6f}"


def block_count(size: int, block_size: int) -> int:
    return (size + block_size - 1) // block_size


def block_span(size: int, block_size: int, index: int) -> tuple[int, int]:
    """(offset, length) of block `index` of an object of `size` bytes."""
    start = index * block_size
    return start, max(0, min(block_size, size - start))


def run_after(index: int, count: int, run: int, free: Callable[[int], bool]) -> range:
    """The blocks to read with block `index` of `count` when a sequential reader will ask
    for the `run` after it next: those following it, up to the first one that is not
    `free` (held or being read already: the run must be contiguous) or the last block."""
    end = index + 1
    while end < min(count, index + 1 + run) and free(end):
        end += 1
    return range(index + 1, end)


def blocks_for(offset: int, length: int, size: int, block_size: int) -> range:
    """The indices of the blocks a read of `length` bytes at `offset` touches."""
    end = min(offset + length, size)
    if end <= offset:
        return range(0)
    return range(offset // block_size, (end - 1) // block_size + 1)


def spans(lo: int, length: int, sizes: Sequence[int]) -> list[tuple[int, int]]:
    """Where a read of `length` bytes from byte `lo` of the first of consecutive blocks of
    `sizes` bytes lies in each of them: (its first byte there, how many; the file's end
    may leave fewer than asked for)."""
    got = []
    for n in sizes:
        take = max(0, min(length, n - lo))
        got.append((min(lo, n), take))
        length -= take
        lo = 0
    return got


def _weight(node: str, key: str) -> int:
    digest = hashlib.blake2b(f"{node}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank(key: str, nodes: Iterable[str]) -> list[str]:
    """`nodes` by preference for `key`: the owner first, then who takes over if it fails."""
    return sorted(nodes, key=lambda n: (_weight(n, key), n), reverse=True)


def owner(key: str, nodes: Sequence[str]) -> str | None:
    if not nodes:
        return None
    return max(nodes, key=lambda n: (_weight(n, key), n))


class Ledger:
    """One tier's bookkeeping: which keys, how many bytes, in least-recently-used order.

    Once usage passes the high watermark (a fraction of the quota), `add` evicts the least
    recently used keys down to the low watermark and returns them for the caller to move
    to the next tier or drop. A block larger than what the tier can hold is refused.
    """

    def __init__(self, quota: int, high: float = 0.95, low: float = 0.7) -> None:
        if not 0 <= low <= high <= 1:
            raise ValueError(f"watermarks must satisfy 0 <= low <= high <= 1 (got {low}, {high})")
        self.quota = quota
        self.high = int(quota * high)
        self.low = int(quota * low)
        self.used = 0
        self._sizes: OrderedDict[str, int] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def fits(self, size: int) -> bool:
        return 0 < size <= self.high or (size == 0 and self.quota > 0)

    def touch(self, key: str) -> None:
        if key in self._sizes:
            self._sizes.move_to_end(key)

    def add(self, key: str, size: int) -> list[str]:
        """Record `key` as most recently used; the keys evicted to make room."""
        if key in self._sizes:
            self.used -= self._sizes.pop(key)
        self._sizes[key] = size
        self.used += size
        evicted: list[str] = []
        if self.used > self.high:
            while self.used > self.low and len(self._sizes) > 1:
                old, old_size = next(iter(self._sizes.items()))
                if old == key:
                    break
                del self._sizes[old]
                self.used -= old_size
                evicted.append(old)
        return evicted

    def size(self, key: str) -> int:
        return self._sizes.get(key, 0)

    def remove(self, key: str) -> int:
        size = self._sizes.pop(key, 0)
        self.used -= size
        return size

    def shed(self, need: int, cost: Callable[[int], int], keep: str) -> tuple[list[str], int]:
        """Evict the least recently used keys (never `keep`) until what they take on disk,
        `cost(size)` each, adds up to `need` bytes or none is left: (the keys, their
        bytes)."""
        gone: list[str] = []
        freed = 0
        for key in list(self._sizes):
            if freed >= need:
                break
            if key != keep:
                freed += cost(self.remove(key))
                gone.append(key)
        return gone, freed

    def hottest(self) -> list[str]:
        """Keys, most recently used first."""
        return list(reversed(self._sizes))


def room_needed(free: int, total: int, min_free: float, size: int) -> int:
    """Bytes to free on a filesystem with `free` of its `total` bytes available, so that
    `size` more leave at least `min_free` of it free: 0 where they already do, or where the
    filesystem says nothing of its size (`total` 0)."""
    if total <= 0:
        return 0
    return max(0, size + math.ceil(total * min_free) - free)


class Unseen:
    """Space a cache freed on a filesystem that the filesystem does not show yet: files
    still being removed, or removed but held open by a reader (a sidecar's mapping of a
    worker's block file), whose space comes back only when it lets go. Counted as free
    for `within` seconds after the last eviction, so that the next look does not evict
    again for the same shortfall. Pure: the caller gives what the filesystem shows (`seen`,
    bytes free), the bytes it has written since it began counting (`written`) and the
    time."""

    def __init__(self, within: float) -> None:
        self.within = within
        self.expect = 0  # bytes free the filesystem should show, before the writes since
        self.written_at = 0
        self.most = 0  # at most this much is unseen
        self.until = 0.0

    def bytes(self, seen: int, written: int, now: float) -> int:
        if now >= self.until:
            return 0
        return max(0, min(self.most, self.expect - (written - self.written_at) - seen))

    def settle(self, seen: int, written: int, now: float) -> None:
        """Count nothing more as unseen once the filesystem shows all of it (else another
        tenant's take would pass for space not shown yet)."""
        if self.bytes(seen, written, now) == 0:
            self.until = 0.0

    def freed(self, seen: int, written: int, n: int, now: float) -> None:
        """`n` more bytes freed (evicted) now."""
        unseen = self.bytes(seen, written, now)
        self.expect, self.written_at = seen + unseen + n, written
        self.most, self.until = unseen + n, now + self.within
