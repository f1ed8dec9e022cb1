"""The on-disk block file: the block's bytes, then its trailer: the CRC-32 of each
CHECK_PIECE bytes of it, then magic and the block's CRC-32 (8 bytes). Files written before
the pieces' CRCs (magic FFB1) end in those 8 bytes alone, and are read as before.

Reading one checks the CRC. A checked file can also be mapped read-only and faulted in at
once (so an unreadable file is an OSError at load time, never a SIGBUS later); cachestat
tells whether the file is in the page cache, so the caller can map it on its event loop
and read the rest in a thread. A file mapped `lazy` is not checked whole at once: each
READ's answer is checked by the pieces it covers, in the thread that copies it to the
kernel, while the bytes are in that core's caches (`unchecked_span`; figures: README,
"Measured design decisions"), once cachestat says they lie in the page cache (else the
READ is answered from elsewhere); any other use checks the whole block first, faulting
it all in (`check_whole`). One mapped lazily from the page cache has only its end
faulted in at once.
Workers replace block files whole (rename) and never shorten one, so a mapped file cannot
shrink under its reader. A block of 1 MiB or more is written past the page cache
(O_DIRECT), smaller ones through it.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import platform
import struct
import sys
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from fluidfed.data import blocks, heap
from fluidfed.errors import CorruptBlock, NotCached

_TRAILER = struct.Struct(">4sI")  # the trailer's last bytes: magic, the block's CRC
_MAGIC = b"FFB1"  # the block's CRC alone (files written before the pieces' CRCs)
_MAGIC_PIECES = b"FFB2"  # a CRC per CHECK_PIECE bytes before magic and the block's CRC
TRAILER_SIZE = _TRAILER.size  # the shortest trailer (an empty block's)
CHECK_PIECE = blocks.CHECK_PIECE  # a READ's answer is checked by the pieces it covers
# READ answers this large (the native session's INLINE_REPLY: those its replying threads
# write) from a block not checked whole are checked by the pieces they lie in, by the
# thread that copies them; smaller ones check their whole block on the event loop, once
PIECEWISE_FROM = 64 * 1024
_PIECE_CRC = blocks.PIECE_CRC
piece_crcs = blocks.piece_crcs
_combined = blocks.combined


def trailer_size(size: int) -> int:
    """The trailer a block of `size` bytes is written with."""
    return _TRAILER.size + _PIECE_CRC.size * -(-size // CHECK_PIECE)


def _layout(path: str | Path, length: int, tail: blocks.Data) -> int:
    """The data size of a block file of `length` bytes that ends in `tail` (its last
    _TRAILER.size bytes); CorruptBlock if it is no block file."""
    magic = bytes(tail[:4])
    if magic == _MAGIC:
        return length - _TRAILER.size
    if magic == _MAGIC_PIECES:  # size + 4 * ceil(size / CHECK_PIECE) bytes before the tail
        rest = length - _TRAILER.size
        size = rest - _PIECE_CRC.size * -(-rest // (CHECK_PIECE + _PIECE_CRC.size))
        if size < 0 or size + trailer_size(size) != length:  # (cut short, or grown)
            raise CorruptBlock(f"{path}: {length} bytes is no block file's length")
        return size
    raise CorruptBlock(f"{path}: not a block file (its trailer says {magic!r})")


def data_length(path: str | Path, length: int) -> int:
    """The data size of the block file at `path`, `length` bytes long (its trailer read:
    its size depends on its format). OSError if it cannot be read, CorruptBlock if it is
    no block file."""
    if length < _TRAILER.size:
        raise CorruptBlock(f"{path}: shorter than its trailer")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        tail = os.pread(fd, _TRAILER.size, length - _TRAILER.size)
    finally:
        os.close(fd)
    if len(tail) != _TRAILER.size:
        raise CorruptBlock(f"{path}: changed while read")
    return _layout(path, length, tail)


def read_span_checked(path: str | Path, lo: int, n: int) -> bytes:
    """`n` bytes at `lo` of the block in the file at `path` (fewer past its end), checked
    by the pieces they lie in against the CRCs its trailer keeps for them: a random read
    reads 256 KiB at most per piece it touches, not the whole block, and bytes damaged on
    the disk since the block was last checked whole are caught all the same (CorruptBlock).
    A file without its pieces' CRCs (FFB1) is read and checked whole. OSError if it cannot
    be read. Blocking: for a thread."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        length = _length(fd, path)
        tail = os.pread(fd, _TRAILER.size, length - _TRAILER.size)
        size = _layout(path, length, tail)
        if tail[:4] != _MAGIC_PIECES:
            data, _ = read_block_file(path)
            return bytes(data[lo : lo + n])
        end = min(lo + n, size)
        if end <= lo:
            return b""
        first, last = lo // CHECK_PIECE, -(-end // CHECK_PIECE)
        start, stop = first * CHECK_PIECE, min(last * CHECK_PIECE, size)
        covered = os.pread(fd, stop - start, start)
        at = size + first * _PIECE_CRC.size
        want = os.pread(fd, (last - first) * _PIECE_CRC.size, at)
    finally:
        os.close(fd)
    if len(covered) != stop - start or piece_crcs(covered) != want:
        raise CorruptBlock(f"{path}: a piece's checksum mismatch")
    return covered[lo - start : end - start]


def block_path(directory: str | Path, key: str) -> Path:
    """Where a disk tier keeps a block: <dir>/<first two characters of the key>/<key>."""
    return Path(block_file(str(directory), key))


def block_file(directory: str, key: str) -> str:
    """`block_path` as a string, for a reader's hot path (pathlib's parsing cost a small
    file's read 4% of the sidecar's event loop)."""
    return f"{directory}/{key[:2]}/{key}"


def tier_dir(path: str | Path, key: str) -> str | None:
    """The tier directory of `path` if that is where `block_path` puts `key`, else None."""
    p = Path(path)
    if p.name != key or p.parent.name != key[:2]:
        return None
    return str(p.parent.parent)


# Blocks of this size or more are written past the page cache (O_DIRECT). A block file's
# page cache is memory the machine has not used lately, and on a VM whose host takes free
# memory back (free page reporting: this one's), touching it again cost the worker 3-3.7
# CPU-s per GiB of copy_folio_from_iter_atomic once the memory freed recently was used up,
# against 0.6-0.7 (all of its system time) writing past it; a first read of 4 MiB blocks
# through an empty worker, with the page cache growing, read at 235-245 MiB/s against
# 466-488 (figures: README, "Measured design decisions"). What it costs: the first read of
# such a file afterwards comes from the disk (its reader faults the page cache in then),
# later ones from the page cache as before. Smaller blocks stay buffered: a direct write
# per 128 KiB file cost more than a buffered one.
DIRECT_FROM = 2**20
_ALIGN = 4096  # of a direct write's memory, offset and length (any disk's logical block)
_CHUNK = 8 * 2**20  # largest direct write, the size of each thread's aligned buffer
_aligned = threading.local()  # each writing thread's aligned buffer (`_write_through_aligned`)
_buffered_only: set[str] = set()  # tier directories whose filesystem refused O_DIRECT

# A buffered block file is written in pieces of at most this many bytes: given 2 MiB or
# more in one write, ext4 puts the pages in 2 MiB folios, the size of the blocks of free
# memory this VM hands back to its host, and so took reclaimed ones even while memory
# freed lately was at hand (a script writing new 4 MiB files: 2.9-3.3 CPU-s per GiB in
# writes of 2 or 4 MiB, 0.28-0.44 in writes of 1 MiB or less).
WRITE_PIECE = 2**20


def write_block_file(path: str | Path, data: blocks.Data, crc: int) -> None:
    """Write a block file whole: to a temporary name, then renamed over `path`, so a reader
    (or a mapping) sees the old file or the new one, never a mix. Blocking. Its directory
    is made only when the file cannot be created without it (a tier's directories are
    there from its first block on): pathlib and a `mkdir` per block were a third of the
    write of a small file's block in a worker's writing thread (figures: README)."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    # (a block whose bytes no longer match `crc` is written all the same, and refused when
    # it is read, as a damaged one: its pieces' CRCs make `crc`, or are of its bytes)
    trailer = blocks.pieces_of(data, crc) + _TRAILER.pack(_MAGIC_PIECES, crc)
    tier = os.path.dirname(os.path.dirname(path))
    try:
        direct = len(data) >= DIRECT_FROM and tier not in _buffered_only
        if direct and not _write_direct(tmp, data, trailer):
            _buffered_only.add(tier)
            direct = False
        if not direct:
            fd = _create(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                with memoryview(data) as view, view.cast("B") as whole:
                    if len(whole) <= WRITE_PIECE:  # block and trailer in one system call
                        _write_all(fd, [whole, trailer])
                    else:
                        for at in range(0, len(whole), WRITE_PIECE):
                            _write_all(fd, [whole[at : at + WRITE_PIECE]])
                        _write_all(fd, [trailer])
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        # a full disk: what was written of it goes at once (the file it was to replace,
        # if any, stays as it was)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _create(path: str, flags: int) -> int:
    """`os.open(path, flags)` for a new file, its directory made if it is missing."""
    try:
        return os.open(path, flags | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, flags | os.O_CLOEXEC, 0o644)


def _write_all(fd: int, pieces: list[memoryview | bytes]) -> None:
    """All of `pieces` at the file's position (a short write is rare: out of space is an
    error instead)."""
    views = [memoryview(p) for p in pieces]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views:
            views[0] = views[0][n:]


def _write_direct(tmp: str, data: blocks.Data, trailer: bytes) -> bool:
    """Write `data` and `trailer` to `tmp`, its aligned part with O_DIRECT, the rest through
    the page cache; False where the filesystem refuses O_DIRECT (tmpfs before Linux 6.6,
    some FUSE and network filesystems) or this alignment (the caller writes the file again,
    buffered). The aligned part goes from the block's own memory where that starts on a
    page (a received block: `receive.Buffers`), else through this thread's page-aligned
    buffer."""
    try:
        fd = _create(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT)
    except OSError as err:
        if err.errno == errno.EINVAL:
            return False
        raise
    try:
        view = memoryview(data).cast("B")
        whole = len(view) - len(view) % _ALIGN
        try:
            if heap.address(view) % _ALIGN == 0:
                _pwrite_all(fd, view[:whole], 0)
            else:
                _write_through_aligned(fd, view[:whole])
        except OSError as err:  # opened, but its alignment is not the disk's
            if err.errno == errno.EINVAL:
                return False
            raise
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        _pwrite_all(fd, bytes(view[whole:]) + trailer, whole)
    finally:
        os.close(fd)
    return True


def _write_through_aligned(fd: int, view: memoryview) -> None:
    """Write `view` (a multiple of _ALIGN long) at 0 in chunks copied into this thread's
    aligned buffer (of huge pages, as `receive.Buffers`: a direct write from 4 KiB pages
    is split into requests of at most 254 of them)."""
    aligned: memoryview | None = getattr(_aligned, "buf", None)
    if aligned is None:
        aligned = _aligned.buf = heap.huge_aligned(heap.huge(_CHUNK), _CHUNK)
    for at in range(0, len(view), _CHUNK):
        n = min(_CHUNK, len(view) - at)
        aligned[:n] = view[at : at + n]
        _pwrite_all(fd, aligned[:n], at)


def _pwrite_all(fd: int, data: bytes | memoryview, at: int) -> None:
    """All of `data` at `at` (a short write is rare: out of space is an error instead)."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], at + done)


# ext4's inode flag for "the top of a directory hierarchy": the allocator spreads the
# subdirectories of such a directory over the disk's block groups as it does the root's
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_TOPDIR_FL = 0x00020000


def spread_subdirectories(directory: str | Path) -> bool:
    """Mark a disk tier's directory so that ext4 puts its subdirectories (and so the block
    files in them) in block groups of their own rather than beside the parent's. Without
    a journal, ext4 checks every free inode it passes in a group for a deletion in the last
    30-60 s and skips it: in a group other files come and go in (a shared /tmp, a cache
    that evicts), each new block file was checked against every one of them, a quarter of
    a cache worker's CPU on a first read of small files (figures: README, "Measured design
    decisions"). False where the filesystem has no such flag (not ext4): nothing changes."""
    flags = array.array("i", [0])
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        if not flags[0] & _TOPDIR_FL:
            flags[0] |= _TOPDIR_FL
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags, False)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def read_block_file(path: str | Path) -> tuple[bytes, int]:
    """(data, CRC) of a block file, checked; FileNotFoundError if it is gone, CorruptBlock
    if it is damaged. Blocking: run it in a thread (the read and the CRC free the GIL)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        length = _length(fd, path)
        tail = os.pread(fd, _TRAILER.size, length - _TRAILER.size)
        size = _layout(path, length, tail) if len(tail) == _TRAILER.size else 0
        data = os.pread(fd, size, 0)
        trailer = os.pread(fd, length - size, size)
    finally:
        os.close(fd)
    if len(data) != size or len(trailer) != length - size or trailer[-_TRAILER.size :] != tail:
        raise CorruptBlock(f"{path}: changed while read")
    return data, _check(path, data, trailer)


_buffers = threading.local()  # each thread's buffer for `give_block_file`


def read_block_file_direct(
    path: str | Path, take: Callable[[int], memoryview] = heap.aligned
) -> tuple[blocks.Data, int]:
    """(data, CRC) of a block file that is not in the page cache, checked, read past it
    (O_DIRECT) into page-aligned memory of `take(n)` bytes (the sidecar's
    `receive.Buffers`: a block's buffer is used again once nothing holds it). Read through
    the page cache, a cold file's pages are new memory the kernel must find and fill: ~1
    CPU-s per GiB of system time on this VM, ~0.1 past it (figures: README, "Measured
    design decisions"), and the block would lie in memory twice, as the file's pages and
    as the reader's (its memory tier, the FUSE file's page cache). Read through the page
    cache where the filesystem refuses O_DIRECT. FileNotFoundError if it is gone,
    CorruptBlock if it is damaged. Blocking: for a thread."""

    def room(file_size: int) -> memoryview:
        if file_size < _TRAILER.size:
            raise CorruptBlock(f"{path}: shorter than its trailer")
        # a page more than the file: one that grew meanwhile reads longer, and is told apart
        return take((file_size // _ALIGN + 1) * _ALIGN)

    view, n, file_size = _read_whole(path, room)
    if n != file_size:
        raise CorruptBlock(f"{path}: changed while read")
    size = _layout(path, n, view[n - _TRAILER.size : n])
    data = view[:size]
    return data, _check(path, data, view[size:n])


def give_block_file(path: str | Path, size: int, then: Callable[[memoryview], None]) -> int:
    """Read a block file of `size` data bytes into this thread's reused buffer, check it,
    and hand `then` a view of the data, valid only during the call (a consumer that copies
    it, as FUSE's notify_store does); returns the CRC. FileNotFoundError if it is gone,
    CorruptBlock if it is damaged or not `size` bytes long. Blocking, for a thread: one
    read call and no allocation, where `read_block_file` makes six calls (each letting go
    of the GIL and taking it again) and a new bytes object whose pages fault in afresh.
    Read past the page cache where the filesystem allows (`read_block_file_direct`): the
    caller reads files that are not in it."""
    need = size + trailer_size(size) + 1  # one more: a longer file is told apart
    room = -(-need // _ALIGN) * _ALIGN
    buf: mmap.mmap | None = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < room:
        buf = _buffers.buf = mmap.mmap(-1, max(room, 256 * 1024))  # (on a page boundary)
    with memoryview(buf) as whole:
        _, n, _ = _read_whole(path, lambda _: whole[:room])
        if n < _TRAILER.size or n == room:
            raise CorruptBlock(f"{path}: {n} bytes, not a block of {size}")
        got = _layout(path, n, whole[n - _TRAILER.size : n])
        if got != size:
            raise CorruptBlock(f"{path}: a block of {got} bytes, expected {size}")
        with whole[:size] as data:
            crc = _check(path, data, whole[size:n])
            then(data)
    return crc


def _read_whole(path: str | Path, room: Callable[[int], memoryview]) -> tuple[memoryview, int, int]:
    """(buffer, bytes read into it, the file's size) of a block file read from its start
    into `room(its size)`, page-aligned memory a multiple of _ALIGN long: past the page
    cache (O_DIRECT), or through it where the filesystem refuses O_DIRECT or its alignment
    (its tier is then read and written buffered from now on)."""
    path = os.fspath(path)
    tier = os.path.dirname(os.path.dirname(path))
    direct = tier not in _buffered_only
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECT if direct else 0))
    except OSError as err:
        if not direct or err.errno != errno.EINVAL:
            raise
        _buffered_only.add(tier)
        direct = False
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        file_size = os.fstat(fd).st_size
        view = room(file_size)
        try:
            n = os.preadv(fd, [view], 0)
        except OSError as err:
            if not direct or err.errno != errno.EINVAL:
                raise
            _buffered_only.add(tier)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            n = os.preadv(fd, [view], 0)
    finally:
        os.close(fd)
    return view, n, file_size


def _length(fd: int, path: str | Path) -> int:
    """The length of an open block file; CorruptBlock if it cannot hold a trailer."""
    length = os.fstat(fd).st_size
    if length < _TRAILER.size:
        raise CorruptBlock(f"{path}: shorter than its trailer")
    return length


def _check(path: str | Path, data: blocks.Data, trailer: blocks.Data) -> int:
    """The block's CRC, if `data` matches the trailer's (all that follows the data; its
    format told by `_layout`); CorruptBlock if not."""
    magic, crc = _TRAILER.unpack(trailer[-_TRAILER.size :])
    if blocks.checksum(data) != crc:
        raise CorruptBlock(f"{path}: checksum mismatch")
    if magic == _MAGIC_PIECES and _combined(trailer[: -_TRAILER.size], len(data)) != crc:
        raise CorruptBlock(f"{path}: its pieces' checksums do not make the block's")
    return int(crc)


# MADV_POPULATE_READ (Linux 5.14; Python names it from 3.13 on): fault a mapping in now,
# failing with an error where touching it later would raise SIGBUS
_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
# of a cached file mapped lazily, what is faulted in at once: its trailer, with the
# pieces' CRCs of a block of up to 511 MiB (a longer one's: the rest of them after)
_TAIL_FAULTED = 8192
_can_map = True  # False once the kernel turned out not to have it: copy instead


def map_block_file(
    path: str | Path, *, cached_only: bool = False, lazy: bool = False, huge: bool = False
) -> tuple[blocks.Data, int]:
    """(data, CRC) of a block file, checked, the data mapped read-only from the page cache
    instead of copied: a reader on the worker's machine hands it to FUSE as it lies, one
    copy and one thread hand-off fewer than pread in a thread (figures: README, "Measured
    design decisions").

    The mapping is faulted in before anything touches it, so an unreadable file is an
    OSError here and never a SIGBUS later; after that the kernel copies from it (FUSE
    replies, writes), which fail with EFAULT rather than a signal, and the checks of a
    `lazy` one read only pages still in the page cache, or fault them in again first (a
    page let go of and unreadable is then an error too). A `lazy` one found in the page
    cache (`cached_only`) has only its end faulted in (the trailer read here): its
    reader's checks fault in the rest as they read it. Workers replace block files whole
    (rename) and never shorten one, so a mapped file does not shrink under its reader; an
    evicted (unlinked) file stays readable, and its disk space held, until the reader
    drops the mapping.

    With `cached_only`, NotCached is raised instead of waiting for the disk when a page of
    the file is not in the page cache, or not read yet (or the kernel cannot tell): the
    event loop maps files that are cached and hands the others to a thread.

    With `lazy`, a file with its pieces' CRCs and more than one piece is not checked whole
    here (only that those make the block's CRC): its reader checks what it uses of it
    (`unchecked_span`, `check_whole`). Any other file is checked here all the same.

    With `huge`, what of the file lies in the page cache already is let go of, and the
    mapping asks for huge pages (MADV_HUGEPAGE) before it is faulted in, with the GIL let
    go (the disk reads meanwhile): the file is then read into folios of a huge page, each
    mapped by one page-table entry (`read_cold_block_file`). Blocking: for a thread."""
    global _can_map
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    # (a lazy one's checks ask whether its pages are still in the page cache: it keeps
    # `fd` open while it is mapped, besides the duplicate Python's mmap keeps of any file
    # it maps; for any other, `fd` is closed here)
    kept = False
    try:
        length = _length(fd, path)
        if cached_only:
            _probe(fd, length)
        if not _can_map:
            return read_block_file(path)
        if huge:  # (what lies in the page cache already, in small folios, let go of)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        lazy_cached = cached_only and lazy and not huge
        if lazy_cached:
            # read once: its pages are not marked accessed when it is unmapped, each under
            # the LRU's lock, as a mapping's young pages otherwise are (Linux 6.3; before,
            # the advice does nothing), nor kept from reclaim meanwhile by its young
            # entries (a piece let go of before it is sent is read again: REREAD); the
            # reader's copy in the FUSE file's page cache is what is read again. (Advice
            # to the file, which the mapping shares: MADV_SEQUENTIAL on the mapping would
            # take the mmap lock for writing, against the reader's faults)
            with contextlib.suppress(OSError):  # (only advice)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_NOREUSE)
        m = mmap.mmap(fd, length, prot=mmap.PROT_READ)
        _file_maps.add(m)
        # a cached file mapped lazily: only its end faulted in here (the trailer, read
        # now); its reader's threads fault in what they check, once cachestat says it
        # lies in the page cache (see `unchecked_span`), and any other use of it faults
        # it all in first (`check_whole`). Faulting all of it in here walked every page
        # and marked each accessed (the LRU's lock): half of the event loop's time on a
        # warm read of a worker's files, where a reader's faults map 16 pages each.
        tail = 0
        if lazy_cached:
            tail = max(0, length - _TAIL_FAULTED) // mmap.PAGESIZE * mmap.PAGESIZE
        try:
            if huge:
                _populate_huge(m, length)
            else:
                m.madvise(_POPULATE_READ, tail)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
            _can_map = False  # before Linux 5.14
            return read_block_file(path)
        whole = memoryview(m)
        size = _layout(path, length, whole[-_TRAILER.size :])
        data = whole[:size]
        # (only a block of more than one piece is mapped lazily: a one-piece block's check
        # gains nothing from it)
        if lazy and size > CHECK_PIECE and whole[-_TRAILER.size : -4] == _MAGIC_PIECES:
            if size < tail:  # (more pieces than the end faulted in holds)
                at = size // mmap.PAGESIZE * mmap.PAGESIZE
                m.madvise(_POPULATE_READ, at, tail - at)
            (crc,) = _PIECE_CRC.unpack(whole[-4:])
            pieces = bytes(whole[size : -_TRAILER.size])
            if _combined(pieces, size) != crc:
                raise CorruptBlock(f"{path}: its pieces' checksums do not make the block's")
            # (not closed at exit: a replying thread may still ask about it then)
            weakref.finalize(m, os.close, fd).atexit = False
            kept = True
            _unchecked[m] = _Unchecked(heap.address(m), size, crc, pieces, fd, lazy_cached)
            return data, crc
        if tail:  # (checked whole here after all: all of it faulted in first)
            m.madvise(_POPULATE_READ, 0, tail)
        return data, _check(path, data, whole[size:])
    finally:
        if not kept:
            os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


def _populate_huge(m: mmap.mmap, length: int) -> None:
    """Ask for huge pages for mapping `m`, then fault all of it in, the GIL let go while
    the disk reads (through ctypes: mmap's own madvise holds it, which stalled the event
    loop for each cold block's read, ~1 ms: the sidecar's first read from the disk 1,100
    against 1,328 MiB/s past the page cache). OSError as `madvise` raises it."""
    with contextlib.suppress(OSError):  # (no transparent huge pages: small ones, as asked)
        m.madvise(mmap.MADV_HUGEPAGE)
    if _libc.madvise(ctypes.c_void_p(heap.address(m)), ctypes.c_size_t(length), _POPULATE_READ):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# By filesystem (st_dev): whether the kernel reads a file mapped with huge pages there into
# folios of a huge page and maps them so (transparent huge pages not `never`, and large
# folios in the filesystem: ext4 from Linux 6.16, XFS from 5.18). Unknown until a file
# there says yes, or HUGE_TRIES files say no before any says yes (a huge page the kernel
# could not find at the time says no too: hence more than one)
_huge_files: dict[int, bool] = {}
_huge_misses: dict[int, int] = {}
HUGE_TRIES = 3


def _pmd_mapped_kib(address: int) -> int:
    """How much of this process's mapping at `address` huge-page entries map (its
    FilePmdMapped, /proc/self/smaps); 0 if that cannot be read."""
    inside = False
    try:
        with open("/proc/self/smaps", "rb") as f:
            for line in f:
                head = line.split(maxsplit=1)[0] if line.strip() else b""
                if head.endswith(b":"):
                    if inside and head == b"FilePmdMapped:":
                        return int(line.split()[1])
                elif b"-" in head:
                    lo, hi = (int(x, 16) for x in head.split(b"-"))
                    inside = lo <= address < hi
    except (OSError, ValueError):
        pass
    return 0


HUGE_FILE = heap.HUGE + trailer_size(heap.HUGE)  # a block file of a huge page or more


def read_cold_block_file(
    path: str | Path, take: Callable[[int], memoryview] = heap.aligned, *, lazy: bool = False
) -> tuple[blocks.Data, int]:
    """(data, CRC) of a block file that is not in the page cache, checked whole (a large one
    mapped `lazy` with `lazy`: `map_block_file`). One of a huge page or more is mapped with
    huge pages and faulted in (`map_block_file`'s `huge`): the kernel reads it from the disk
    into folios of 2 MiB, which the next reader on this node maps in two page-table entries
    instead of a thousand (the read after it 1,381 -> 2,297 MiB/s at 0.55 -> 0.40 CPU-s/GiB,
    where a file read past the page cache came from the disk again; the first read level:
    figures, README, "Measured design decisions"). Whatever of it lies in the page cache
    already in small folios (a read probe's read-ahead, `_probe`) is let go of first
    (`map_block_file`). Any other file, or one on a filesystem where the kernel does not
    read files into such folios (`_huge_files`), is read past the page cache
    (`read_block_file_direct`), as a small file's mapping would wait on the mmap lock for
    its disk read. Blocking: for a thread."""
    stat = os.stat(path)
    dev = stat.st_dev
    large = stat.st_size >= HUGE_FILE
    if not large or not _can_map or _huge_files.get(dev) is False:
        return read_block_file_direct(path, take)
    data, crc = map_block_file(path, huge=True, lazy=lazy)
    _learn_huge(dev, data)
    return data, crc


def _learn_huge(dev: int, mapped: blocks.Data | mmap.mmap) -> None:
    """Note in `_huge_files` whether the kernel put the file just mapped (with huge pages,
    faulted in, still mapped) on filesystem `dev` in folios of a huge page (the first
    verdict stays: threads learn at once)."""
    if dev in _huge_files:
        return
    if _pmd_mapped_kib(heap.address(mapped)) > 0:
        _huge_files.setdefault(dev, True)
    else:
        _huge_misses[dev] = _huge_misses.get(dev, 0) + 1
        if _huge_misses[dev] >= HUGE_TRIES:
            _huge_files.setdefault(dev, False)


def no_huge(dev: int) -> bool:
    """Take filesystem `dev` for one that keeps no folios of a huge page, or maps no block
    file: its large files are then read, not mapped (`reads_huge`). Whether that is new."""
    new = _huge_files.get(dev) is not False
    _huge_files[dev] = False
    return new


def in_page_cache(fd: int, length: int) -> bool:
    """Whether all `length` bytes of the file open at `fd` lie in the page cache, read
    (`_probe`: cachestat, then a read that does not wait). A few microseconds: for the
    event loop."""
    try:
        _probe(fd, length)
    except NotCached:
        return False
    return True


def reads_huge(dev: int) -> bool:
    """Whether `read_in_huge_folios` reads a file on filesystem `dev`: not known to keep
    no folios of a huge page (`_huge_files`), and a kernel with MADV_POPULATE_READ."""
    return _can_map and _huge_files.get(dev) is not False


def read_in_huge_folios(fd: int, length: int) -> bool:
    """Read the first `length` bytes of the block file open at `fd` into the page cache,
    asking for folios of a huge page, as `read_cold_block_file` reads a large one (what of
    it lies there in small folios let go of first), and map none of it after: for a cache
    worker about to send a file that is not in the page cache. The wait for the disk is
    then this thread's, not the event loop's inside sendfile(2), and where the kernel
    keeps such folios (ext4 from Linux 6.16, XFS) a reader on this node maps the file in
    a few page-table entries instead of a thousand (~5 against 130-500 µs per 4 MiB here,
    as sendfile's or a plain read's read-ahead leaves it; figures: README, "Measured
    design decisions"). False, nothing read: shorter than a huge page, all in the page
    cache by now, or not `reads_huge` there. OSError if it cannot be read. Blocking: for
    a thread."""
    global _can_map
    dev = os.fstat(fd).st_dev
    if length < heap.HUGE or not reads_huge(dev) or in_page_cache(fd, length):
        return False
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    with mmap.mmap(fd, length, prot=mmap.PROT_READ) as m:
        try:
            _populate_huge(m, length)
        except OSError as err:
            if err.errno == errno.EINVAL:  # before Linux 5.14: never again
                _can_map = False
                return False
            raise
        _learn_huge(dev, m)
    return True


class _Unchecked(NamedTuple):
    start: int  # the mapping's address
    size: int  # the block's bytes
    crc: int
    pieces: bytes  # their CRCs, as the trailer has them
    fd: int  # the file, open while it is mapped
    cached: bool  # found whole in the page cache as it was mapped (not read from the disk)


# blocks mapped `lazy` and not checked whole since, by their mapping: an entry goes with
# the last view of its mapping (the map is touched from threads that drop such views too:
# each of its operations holds the GIL)
_unchecked: weakref.WeakKeyDictionary[mmap.mmap, _Unchecked] = weakref.WeakKeyDictionary()


def _unchecked_of(data: object) -> tuple[mmap.mmap, _Unchecked] | None:
    if type(data) is not memoryview:
        return None
    m = data.obj
    if type(m) is not mmap.mmap:
        return None
    got = _unchecked.get(m)
    return None if got is None else (m, got)


def from_page_cache(data: object) -> bool:
    """Whether `data` lies in a block mapped `lazy` from a file found whole in the page
    cache (`map_block_file` with `cached_only`), not checked whole since: a reader whose
    blocks are warm, whose next ones likely are too."""
    got = _unchecked_of(data)
    return got is not None and got[1].cached


def is_unchecked(data: object) -> bool:
    """Whether `data` lies in a block mapped `lazy` and not checked whole since."""
    return _unchecked_of(data) is not None


def unchecked_span(data: blocks.Data) -> tuple[memoryview, int, bytes, int] | None:
    """For a READ's answer that lies in a block mapped `lazy` and not checked whole:
    (the block, where the answer starts in it, its pieces' CRCs as the trailer has them,
    CHECK_PIECE bytes each, the file open), for the thread that sends it to check what it
    covers, once those pieces are in the page cache. None for any other answer (checked,
    or not a block file's)."""
    got = _unchecked_of(data)
    if got is None:
        return None
    m, u = got
    return memoryview(m)[: u.size], heap.address(data) - u.start, u.pieces, u.fd


# the mappings of block files (`map_block_file`), apart from those of this process's memory
# (`heap.huge`'s buffers are anonymous mappings)
_file_maps: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()


def is_mapped(data: object) -> bool:
    """Whether `data` is a block mapped from a block file (`map_block_file`): the page
    cache, not this process's memory."""
    return type(data) is memoryview and data.obj in _file_maps


def check_whole(data: blocks.Data) -> None:
    """Check the block that `data` (all of it or a part) lies in, if it was mapped `lazy`
    and has not been checked whole: CorruptBlock if it does not match its CRC. For every
    use of such a block but a READ's answer."""
    got = _unchecked_of(data)
    if got is None:
        return
    m, u = got
    try:  # (faulted in again first: a page let go of and unreadable is an error, not SIGBUS)
        if u.size:
            m.madvise(_POPULATE_READ, 0, u.size)
    except OSError as err:
        raise CorruptBlock(f"a block file mapped here cannot be read again: {err}") from err
    with memoryview(m) as whole, whole[: u.size] as block:
        if blocks.checksum(block) != u.crc:
            raise CorruptBlock("a block file mapped here: checksum mismatch")
    _unchecked.pop(m, None)


def check_span(data: blocks.Data) -> None:
    """Check the pieces that `data` covers of the block it lies in, if that was mapped
    `lazy` and has not been checked whole: CorruptBlock if one does not match its CRC. The
    block stays unchecked, its other pieces checked as they are used. For a READ's answer
    copied out of the block (one that runs into the next block, joined from the two), as
    the thread that sends an answer from one block checks it."""
    got = _unchecked_of(data)
    if got is None or not len(data):
        return
    m, u = got
    lo = heap.address(data) - u.start
    start = lo // CHECK_PIECE * CHECK_PIECE
    end = min(-(-(lo + len(data)) // CHECK_PIECE) * CHECK_PIECE, u.size)
    try:  # (faulted in again first: a page let go of and unreadable is an error, not SIGBUS)
        m.madvise(_POPULATE_READ, start, end - start)
    except OSError as err:
        raise CorruptBlock(f"a block file mapped here cannot be read again: {err}") from err
    with memoryview(m) as whole, whole[start:end] as covered:
        crcs = blocks.piece_crcs(covered)
    at = start // CHECK_PIECE * blocks.PIECE_CRC.size
    if crcs != u.pieces[at : at + len(crcs)]:
        raise CorruptBlock("a block file mapped here: a piece's checksum mismatch")


def _probe(fd: int, length: int) -> None:
    """NotCached unless every page of the file is in the page cache, read: asked with
    cachestat (Linux 6.5), which only looks, but counts a page whose read is still on its
    way (another reader's), so then a read of the first and last bytes with RWF_NOWAIT,
    which fails while a page is locked for its read. cachestat alone is missing where the
    kernel lacks it or numbers it otherwise (ENOSYS: asked no more), and refused for a file
    the caller may neither write nor own (Linux 6.14) or by a seccomp profile (Docker's
    default): EPERM, the read probe for that file. The read probe alone starts a cold
    file's read-ahead, and on a disk fast enough (a VM's, its host's cache behind it) the
    read-ahead lands within the call and the read succeeds: a cold file passed for a
    cached one about half the time here and was faulted in from the disk on the event
    loop."""
    global _cachestat
    look = _cachestat  # (another thread may set it to None meanwhile)
    if look is not None:
        try:
            if not look(fd, length):
                raise NotCached()
        except OSError as err:
            if err.errno == errno.ENOSYS:
                _cachestat = None  # not in this kernel: the read probe from now on
            elif err.errno != errno.EPERM:  # (EPERM: for this file; the read probe, once)
                raise NotCached() from err
    one = bytearray(1)
    for at in (0, length - 1):
        try:
            os.preadv(fd, [one], at, os.RWF_NOWAIT)
        except OSError as err:  # EAGAIN: not cached, or not read yet; EOPNOTSUPP: cannot tell
            raise NotCached() from err


class _Range(ctypes.Structure):
    _fields_ = (("off", ctypes.c_uint64), ("len", ctypes.c_uint64))


class _Stat(ctypes.Structure):
    _fields_ = tuple(
        (name, ctypes.c_uint64)
        for name in ("cache", "dirty", "writeback", "evicted", "recently_evicted")
    )


# cachestat's number in the table most architectures share (Linux 6.5); alpha and mips
# number theirs otherwise, and get the read probe
_SYS_CACHESTAT = 451
_SHARED_TABLE = {
    "x86_64", "i686", "i386", "aarch64", "arm64", "armv7l", "riscv64", "ppc64", "ppc64le",
    "s390x", "loongarch64",
}  # fmt: skip
_syscall = _libc.syscall if sys.platform == "linux" else None


def _cachestat_all(fd: int, length: int) -> bool:
    """Whether all `length` bytes of `fd` lie in the page cache: one cachestat over the
    file, its cached pages counted against its pages (OSError if the kernel cannot say)."""
    assert _syscall is not None
    span, stat = _Range(0, length), _Stat()
    if _syscall(_SYS_CACHESTAT, fd, ctypes.byref(span), ctypes.byref(stat), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return bool(stat.cache >= -(-length // mmap.PAGESIZE))


_cachestat: Callable[[int, int], bool] | None = (
    _cachestat_all if _syscall is not None and platform.machine() in _SHARED_TABLE else None
)


async def load_block_file(
    path: str | Path, take: Callable[[int], memoryview] = heap.aligned, *, lazy: bool = False
) -> tuple[blocks.Data, int]:
    """`map_block_file` on the event loop when the file is in the page cache (mapping 4 MiB
    takes microseconds and a hand-off to a thread cost more than the read itself), else
    `read_cold_block_file` in a thread: a small file that must come from the disk is read
    past the page cache into memory from `take`, not mapped (faulting a mapping in holds
    the process's mmap lock while the disk reads, so the threads mapping cold files wait
    for each other: 8 threads mapped ~3,500 small files/s, pread ~7,500; figures: README,
    "Measured design decisions"); a large one is mapped with huge pages. `lazy`: as
    `map_block_file`'s, a large file read from the disk too (its bytes come by DMA: checked
    whole there, they were read from memory twice, by the check and by the copy of each
    answer, where each piece's check now leaves it in the CPU's caches for its copy)."""
    try:
        return map_block_file(path, cached_only=True, lazy=lazy)
    except NotCached:
        return await asyncio.to_thread(read_cold_block_file, path, take, lazy=lazy)
