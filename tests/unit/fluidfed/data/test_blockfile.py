"""The on-disk block file: mapped and checked, and copied off the event loop when not cached."""

from __future__ import annotations

import array
import errno
import fcntl
import functools
import gc
import mmap
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from devkit import testing
from fluidfed.data import blockfile, blocks, heap, receive
from fluidfed.data.blockfile import (
    DIRECT_FROM,
    WRITE_PIECE,
    block_file,
    block_path,
    give_block_file,
    load_block_file,
    map_block_file,
    read_block_file,
    read_block_file_direct,
    trailer_size,
    write_block_file,
)
from fluidfed.data.store import BlockStore
from fluidfed.errors import CorruptBlock, NotCached


async def test_block_files_are_mapped_checked_and_outlive_eviction(tmp_path: Path) -> None:
    ssd = testing.cache_tier("SSD", 2**20, tmp_path)
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
    store = await BlockStore([testing.cache_tier("SSD", 2**22, tmp_path)]).open()
    payload = b"x" * 2**20
    await store.put("c" * 32, payload)
    path = block_path(tmp_path, "c" * 32)
    _uncached(path)
    data, crc = await load_block_file(path)  # read from the disk, in a thread
    assert data == payload and crc == blocks.checksum(payload)
    # read, not mapped: faulting a mapping in from the disk holds the process's mmap lock,
    # and the readers of other cold block files would wait for it; and read past the page
    # cache, which still does not hold the file
    assert isinstance(data, memoryview) and isinstance(data.obj, bytearray)
    with pytest.raises(NotCached):
        map_block_file(path, cached_only=True)
    # once it is cached (read by another), it is mapped right away
    assert read_block_file(path) == (payload, crc)
    again, _ = map_block_file(path, cached_only=True)
    assert isinstance(again, memoryview) and again == payload
    mapped, _ = await load_block_file(path)
    assert isinstance(mapped, memoryview) and isinstance(mapped.obj, mmap.mmap)
    assert mapped == payload


# files a test that wants a file in folios of a huge page tries before it fails: where
# memory is busy (another build beside the tests) the kernel may find no free 2 MiB
# for a folio at the moment it reads, and reads that part into small folios, as it may
HUGE_FOUND_IN = 3


def _uncached(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # written back, so the kernel can drop the pages
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    with pytest.raises(NotCached):
        map_block_file(path, cached_only=True)


@pytest.fixture(scope="module")
def journalled_ext4(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A directory on an ext4 of its own (a loop device) mounted with data=journal, where
    Linux reads files into small folios only (`ext4_should_enable_large_folio`) and takes
    O_DIRECT as buffered I/O: a filesystem where huge folios cannot be had, for real."""
    root = tmp_path_factory.mktemp("journalled")
    image, mnt = root / "ext4.img", root / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(64 * 2**20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    mounted = made.returncode == 0 and (
        subprocess.run(
            ["mount", "-o", "loop,data=journal", str(image), str(mnt)],
            capture_output=True,
            text=True,
        ).returncode
        == 0
    )
    if not mounted:  # (no loop devices, no right to mount, no mkfs.ext4)
        pytest.skip(f"no ext4 of its own could be mounted here: {made.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _fresh_place(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Path:
    """The test's directory `where` ("the test directory", or one on the journalled ext4),
    with what `blockfile` learnt of filesystems' huge folios forgotten."""
    if where != "the test directory":
        tmp_path = request.getfixturevalue("journalled_ext4") / tmp_path.name
        tmp_path.mkdir()
    monkeypatch.setattr(blockfile, "_huge_files", {})
    monkeypatch.setattr(blockfile, "_huge_misses", {})
    return tmp_path


@pytest.mark.parametrize("where", ["the test directory", "a journalled ext4"])
async def test_a_cold_large_block_file_is_mapped_in_huge_folios_where_the_kernel_can(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """A block file of a huge page or more that must come from the disk is mapped with
    huge pages and faulted in (`read_cold_block_file`): where the kernel reads files into
    folios of 2 MiB (the test directory here: ext4 on Linux 6.18, transparent huge pages
    on `madvise`) it is mapped by huge-page entries and stays in the page cache, where
    the next reader maps it from, also after a read probe's read-ahead took its first
    pages in small folios (cachestat refused); on a filesystem where the kernel does not
    (an ext4 with data=journal), it is read into a buffer of the reader's once HUGE_TRIES
    files have said so. A small one is read past the page cache either way; a damaged one
    is refused either way: checked whole, or, where its reader takes blocks unchecked and
    it is mapped, by the check of its pieces as they are used."""
    tmp_path = _fresh_place(where, tmp_path, monkeypatch, request)
    payload = os.urandom(2**22 + 5)
    crc = blocks.checksum(payload)
    pool = receive.Buffers()
    handed: list[memoryview] = []

    def take(n: int) -> memoryview:
        handed.append(pool.take(n))
        return handed[-1]

    def cold(key: str) -> str:
        path = block_file(str(tmp_path), key * 32)
        write_block_file(path, payload, crc)  # (past the page cache)
        _uncached(path)
        return path

    path = cold("a")
    dev = os.stat(path).st_dev
    data, got = await blockfile.load_block_file(path, take)
    assert bytes(data) == payload and got == crc
    # (this machine's kernel and test directory give huge folios; a journalled ext4 not)
    assert bool(blockfile._huge_files.get(dev)) is (where == "the test directory")
    if blockfile._huge_files.get(dev):
        assert type(memoryview(data).obj) is mmap.mmap  # the file's pages, not a copy
        assert blockfile._pmd_mapped_kib(heap.address(data)) >= 2048
        again, _ = map_block_file(path, cached_only=True)  # the next reader's: cached
        assert blockfile._pmd_mapped_kib(heap.address(again)) >= 2048
        del again
        # cachestat refused: the read probe's read-ahead takes the first pages in small
        # folios, which are let go of before the file is mapped with huge pages (only
        # here: the probe's read-ahead would cache the small file below, by chance)
        with monkeypatch.context() as refused:
            refused.setattr(blockfile, "_cachestat", None)
            mapped = []
            for key in "bij"[:HUGE_FOUND_IN]:  # (memory busy: `HUGE_FOUND_IN`)
                data, _ = await blockfile.load_block_file(cold(key), take)
                mapped.append(blockfile._pmd_mapped_kib(heap.address(data)))
                if mapped[-1] >= 4096:
                    break
            assert mapped[-1] >= 4096, mapped
    else:  # the kernel did not: after HUGE_TRIES files, read into a buffer of the pool
        for key in "cde"[: blockfile.HUGE_TRIES - 1]:
            await blockfile.load_block_file(cold(key), take)
        assert blockfile._huge_files[dev] is False
        later = cold("f")
        handed.clear()
        data, _ = await blockfile.load_block_file(later, take)
        assert bytes(data) == payload
        assert [heap.address(b) for b in handed] == [heap.address(data)]  # not mapped
        del handed[:]
    del data

    small = block_file(str(tmp_path), "g" * 32)
    write_block_file(small, payload[: 2**20], blocks.checksum(payload[: 2**20]))
    _uncached(small)
    held, _ = await blockfile.load_block_file(small, take)
    assert bytes(held) == payload[: 2**20]
    if where == "the test directory":  # (data=journal takes O_DIRECT as buffered)
        with pytest.raises(NotCached):  # (read past the page cache)
            map_block_file(small, cached_only=True)

    raw = bytearray(Path(path).read_bytes())
    raw[2**21] ^= 1  # its data, past its first huge page
    Path(path).write_bytes(raw)
    _uncached(path)
    with pytest.raises(CorruptBlock, match="checksum mismatch"):
        await blockfile.load_block_file(path, take)
    lazily = block_file(str(tmp_path), "h" * 32)  # (the same, for a reader taking it so)
    Path(lazily).parent.mkdir(exist_ok=True)
    Path(lazily).write_bytes(raw)
    _uncached(lazily)
    if blockfile._huge_files.get(dev):  # mapped: its pieces checked as they are answered
        damaged, _ = await blockfile.load_block_file(lazily, take, lazy=True)
        assert blockfile.unchecked_span(damaged) is not None
        with pytest.raises(CorruptBlock, match="checksum mismatch"):
            blockfile.check_whole(damaged)
    else:  # read into a buffer: checked whole there
        with pytest.raises(CorruptBlock, match="checksum mismatch"):
            await blockfile.load_block_file(lazily, take, lazy=True)


@pytest.mark.parametrize("where", ["the test directory", "a journalled ext4"])
def test_a_cold_block_file_is_read_into_huge_folios_for_a_worker_to_send(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """`read_in_huge_folios` (a worker about to send a file that is not in the page cache)
    reads a large block file into folios of a huge page, the few small ones a read left
    at its start let go of first, so that the next reader maps all of it with huge-page
    entries; it maps nothing itself after. A file shorter than a huge page is not read;
    on a filesystem where the kernel keeps no such folios (an ext4 with data=journal),
    none is read once HUGE_TRIES files have said so; nor one all in the page cache."""
    tmp_path = _fresh_place(where, tmp_path, monkeypatch, request)
    payload = os.urandom(2**22 + 5)

    def cold(key: str, data: bytes = payload) -> int:
        path = block_file(str(tmp_path), key * 32)
        write_block_file(path, data, blocks.checksum(data))
        _uncached(path)
        return os.open(path, os.O_RDONLY)

    for key in "afg"[:HUGE_FOUND_IN]:  # (memory busy: `HUGE_FOUND_IN`)
        fd = cold(key)
        try:
            assert not blockfile.in_page_cache(fd, len(payload))
            os.pread(fd, 4096, 0)  # (a read's few small folios at the start)
            maps = Path("/proc/self/maps").read_text().count(tmp_path.name)
            assert blockfile.read_in_huge_folios(fd, len(payload))
            assert Path("/proc/self/maps").read_text().count(tmp_path.name) == maps
            assert blockfile.in_page_cache(fd, len(payload))
            assert not blockfile.read_in_huge_folios(fd, len(payload))  # (cached: not again)
            with mmap.mmap(fd, 2**22, prot=mmap.PROT_READ) as m:
                m.madvise(mmap.MADV_HUGEPAGE)
                m.madvise(blockfile._POPULATE_READ)
                huge = blockfile._pmd_mapped_kib(heap.address(m))
        finally:
            os.close(fd)
        if huge == 4096 or where != "the test directory":
            break
    dev = os.stat(tmp_path).st_dev
    if where == "the test directory":  # (ext4 on Linux 6.18, huge pages on `madvise`)
        assert huge == 4096 and blockfile._huge_files[dev] is True
    else:
        assert huge == 0
        for key in "bc"[: blockfile.HUGE_TRIES - 1]:
            fd = cold(key)
            try:
                assert blockfile.read_in_huge_folios(fd, len(payload))
            finally:
                os.close(fd)
        assert blockfile._huge_files[dev] is False
        fd = cold("d")
        try:
            assert not blockfile.read_in_huge_folios(fd, len(payload))
            assert not blockfile.in_page_cache(fd, len(payload))
        finally:
            os.close(fd)
    fd = cold("e", payload[: heap.HUGE - 1])
    try:
        assert not blockfile.read_in_huge_folios(fd, heap.HUGE - 1)
        assert not blockfile.in_page_cache(fd, heap.HUGE - 1)
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [0, 5, 4096 - trailer_size(4000), 128 * 1024, 2**22 + 5])
def test_a_cold_block_file_is_read_past_the_page_cache_into_a_reused_buffer(
    tmp_path: Path, size: int
) -> None:
    payload = os.urandom(size)
    path = block_file(str(tmp_path), "a" * 32)
    write_block_file(path, payload, blocks.checksum(payload))
    pool = receive.Buffers()
    for _ in range(2):
        _uncached(path)
        data, crc = read_block_file_direct(path, pool.take)
        assert data == payload and crc == blocks.checksum(payload)
        assert heap.address(data) % heap.PAGE == 0  # (the buffer a direct read needs)
        with pytest.raises(NotCached):  # and the page cache still does not hold it
            map_block_file(path, cached_only=True)
        del data  # the second read takes the first one's buffer again
    assert pool.reused == 1

    held = read_block_file_direct(path)  # its own new memory, without a pool
    assert held == (payload, blocks.checksum(payload))

    raw = bytearray(Path(path).read_bytes())
    raw[-1] ^= 0xFF  # the trailer's CRC
    Path(path).write_bytes(raw)
    _uncached(path)
    with pytest.raises(CorruptBlock, match="checksum mismatch"):
        read_block_file_direct(path, pool.take)
    Path(path).write_bytes(b"FFB")  # shorter than a trailer
    with pytest.raises(CorruptBlock, match="shorter than its trailer"):
        read_block_file_direct(path, pool.take)
    os.unlink(path)
    with pytest.raises(FileNotFoundError):
        read_block_file_direct(path, pool.take)


async def test_a_block_file_named_as_a_string_reads_back_checked(tmp_path: Path) -> None:
    store = await BlockStore([testing.cache_tier("SSD", 2**20, tmp_path)]).open()
    payload = os.urandom(70_000)
    await store.put("d" * 32, payload)
    path = block_file(str(tmp_path), "d" * 32)
    assert Path(path) == block_path(tmp_path, "d" * 32)
    data, crc = read_block_file(path)
    assert data == payload and crc == blocks.checksum(payload)

    raw = bytearray(Path(path).read_bytes())
    raw[100] ^= 0xFF
    Path(path).write_bytes(raw)
    with pytest.raises(CorruptBlock):
        read_block_file(path)


async def test_a_block_file_given_from_a_reused_buffer_is_checked_first(tmp_path: Path) -> None:
    store = await BlockStore([testing.cache_tier("SSD", 2**22, tmp_path)]).open()
    small, large = os.urandom(5_000), os.urandom(300_000)
    await store.put("e" * 32, small)
    await store.put("f" * 32, large)
    seen: list[bytes] = []
    views: list[memoryview] = []

    def copy(view: memoryview) -> None:
        views.append(view)
        seen.append(bytes(view))

    for key, payload in (("f" * 32, large), ("e" * 32, small), ("f" * 32, large)):
        crc = give_block_file(block_file(str(tmp_path), key), len(payload), copy)
        assert crc == blocks.checksum(payload)
    # each call saw its own bytes (a copy made during the call), the buffer reused; a view
    # kept past the call is released, never a window on the next file's bytes
    assert seen == [large, small, large]
    with pytest.raises(ValueError, match="released"):
        bytes(views[0])
    # a cold file is read past the page cache
    cold = block_file(str(tmp_path), "f" * 32)
    _uncached(cold)
    assert give_block_file(cold, len(large), copy) == blocks.checksum(large)
    assert seen[-1] == large
    with pytest.raises(NotCached):
        map_block_file(cold, cached_only=True)

    path = block_file(str(tmp_path), "e" * 32)
    with pytest.raises(CorruptBlock):  # not the size the listing says: not handed on
        give_block_file(path, len(small) - 1, copy)
    with pytest.raises(CorruptBlock):
        give_block_file(path, len(small) + 1, copy)
    raw = bytearray(Path(path).read_bytes())
    raw[10] ^= 0xFF
    Path(path).write_bytes(raw)
    with pytest.raises(CorruptBlock):
        give_block_file(path, len(small), copy)
    assert len(seen) == 4


@pytest.mark.parametrize("size", [0, 5, 128 * 1024, DIRECT_FROM - 1])
def test_a_small_block_written_through_the_page_cache_reads_back_checked(
    tmp_path: Path, size: int
) -> None:
    # a view into a larger buffer (as a library's), empty or not: the data and its trailer
    payload = memoryview(os.urandom(size + 3))[3:]
    path = block_path(tmp_path, "e" * 32)
    write_block_file(path, payload, blocks.checksum(payload))
    assert path.stat().st_size == size + trailer_size(size)
    assert read_block_file(path) == (bytes(payload), blocks.checksum(payload))
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("size", [DIRECT_FROM, DIRECT_FROM + 4096 + 5, 3 * 2**22 + 1])
def test_a_large_block_written_past_the_page_cache_reads_back_checked(
    tmp_path: Path, size: int
) -> None:
    # unaligned memory (an offset into a larger buffer), an unaligned length, and more
    # than one aligned chunk: the file is the data and its trailer, as a buffered write's
    payload = memoryview(os.urandom(size + 3))[3:]
    path = block_path(tmp_path, "e" * 32)
    write_block_file(path, payload, blocks.checksum(payload))
    assert path.stat().st_size == size + trailer_size(size)
    with pytest.raises(NotCached):  # past the page cache: its first page is not there
        map_block_file(path, cached_only=True)
    assert read_block_file(path) == (bytes(payload), blocks.checksum(payload))
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("skew", [0, 3])
def test_a_block_starting_on_a_page_is_written_from_its_own_memory(
    tmp_path: Path, skew: int
) -> None:
    # a received block starts on a page (receive.Buffers): its direct write needs no copy,
    # so the writing thread never makes its aligned buffer; one off the page does
    size = DIRECT_FROM + 4096 + 5
    buf = bytearray(size + heap.PAGE + skew)
    view = heap.page_aligned(buf, size + skew)[skew:]
    view[:] = os.urandom(size)
    payload = view.toreadonly()
    path = block_path(tmp_path, "e" * 32)
    made: list[bool] = []
    huge: list[bool] = []

    def write() -> None:
        write_block_file(path, payload, blocks.checksum(payload))
        aligned = getattr(blockfile._aligned, "buf", None)
        made.append(aligned is not None)
        # (of huge pages: a direct write from 4 KiB pages is split by the disk's limit)
        if aligned is not None:
            at = heap.address(aligned)
            huge.append(at % heap.HUGE == 0)
            huge.append("hg" in testing.vm_flags(at) or not testing.HAS_THP)

    writer = threading.Thread(target=write)
    writer.start()
    writer.join()
    assert made == [skew != 0] and huge == ([True, True] if skew else [])
    with pytest.raises(NotCached):  # past the page cache all the same
        map_block_file(path, cached_only=True)
    assert read_block_file(path) == (bytes(payload), blocks.checksum(payload))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem needs root")
@pytest.mark.parametrize("size", [512 * 1024, DIRECT_FROM + 5])
def test_a_full_disk_fails_the_write_and_keeps_the_old_file_and_no_partial_one(
    tmp_path: Path, size: int
) -> None:
    # a real filesystem of 256 KiB (tmpfs) that fills up part way through the new file
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        old = os.urandom(1000)
        path = block_path(mnt, "d" * 32)
        write_block_file(path, old, blocks.checksum(old))
        used = shutil.disk_usage(mnt).used
        payload = os.urandom(size)
        with pytest.raises(OSError, match="No space left on device"):
            write_block_file(path, payload, blocks.checksum(payload))
        assert read_block_file(path) == (old, blocks.checksum(old))
        assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file
        assert shutil.disk_usage(mnt).used == used  # its space given back at once
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_filesystem_refusing_direct_writes_gets_buffered_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_direct(path: str | Path, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT not supported")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_direct)
    payload = os.urandom(3 * WRITE_PIECE + 1)  # buffered: in pieces
    for key in ("f" * 32, "0" * 32):
        path = block_path(tmp_path, key)
        write_block_file(path, payload, blocks.checksum(payload))
        assert read_block_file(path) == (payload, blocks.checksum(payload))
    assert str(tmp_path) in blockfile._buffered_only


def test_a_disk_refusing_the_alignment_of_direct_writes_gets_buffered_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwrite = os.pwrite

    def no_aligned(fd: int, data: Any, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", no_aligned)
    payload = os.urandom(DIRECT_FROM + 5)
    path = block_path(tmp_path, "1" * 32)
    write_block_file(path, payload, blocks.checksum(payload))
    assert read_block_file(path) == (payload, blocks.checksum(payload))
    assert str(tmp_path) in blockfile._buffered_only


def test_a_filesystem_refusing_direct_reads_gets_buffered_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = os.urandom(300_000)
    paths = [block_file(str(tmp_path), key) for key in ("1" * 32, "2" * 32)]
    for path in paths:
        write_block_file(path, payload, blocks.checksum(payload))
    real_open = os.open
    opened: list[int] = []

    def no_direct(path: str | Path, flags: int, mode: int = 0o777) -> int:
        opened.append(flags)
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT not supported")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_direct)
    assert read_block_file_direct(paths[0]) == (payload, blocks.checksum(payload))
    assert str(tmp_path) in blockfile._buffered_only
    # the tier is read buffered from now on, without trying again
    opened.clear()
    seen: list[bytes] = []
    assert give_block_file(paths[1], len(payload), lambda v: seen.append(bytes(v))) >= 0
    assert seen == [payload] and not [f for f in opened if f & os.O_DIRECT]


def test_a_disk_refusing_the_alignment_of_direct_reads_gets_buffered_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = os.urandom(DIRECT_FROM + 5)
    path = block_file(str(tmp_path), "3" * 32)
    write_block_file(path, payload, blocks.checksum(payload))
    real_preadv = os.preadv

    def no_aligned(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "preadv", no_aligned)
    assert read_block_file_direct(path) == (payload, blocks.checksum(payload))
    assert str(tmp_path) in blockfile._buffered_only


def _flags(path: Path) -> int:
    flags = array.array("i", [0])
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, blockfile._FS_IOC_GETFLAGS, flags, True)
    finally:
        os.close(fd)
    return flags[0]


async def test_a_disk_tier_spreads_its_subdirectories_over_ext4s_groups(tmp_path: Path) -> None:
    tier = tmp_path / "ssd"
    await BlockStore([testing.cache_tier("SSD", 2**22, tier)]).open()
    if not blockfile.spread_subdirectories(tmp_path):  # not ext4 (no such flag): no change
        pytest.skip("the test directory's filesystem has no top-directory flag")
    assert _flags(tier) & blockfile._TOPDIR_FL
    assert blockfile.spread_subdirectories(tier)  # again: already marked, still fine
    assert not blockfile.spread_subdirectories(tmp_path / "missing")


def test_without_cachestat_a_read_probe_tells_a_cached_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older kernel, or a seccomp profile refusing cachestat: asked once, then the
    RWF_NOWAIT read probe answers (here for a file the page cache holds)."""

    def refused(fd: int, length: int) -> bool:
        raise OSError(errno.ENOSYS, "no cachestat")

    monkeypatch.setattr(blockfile, "_cachestat", refused)
    payload = os.urandom(70_000)  # written through the page cache
    path = block_path(tmp_path, "a" * 32)
    write_block_file(path, payload, blocks.checksum(payload))
    data, crc = map_block_file(path, cached_only=True)
    assert isinstance(data, memoryview) and data == payload and crc == blocks.checksum(payload)
    assert blockfile._cachestat is None


def test_a_file_cachestat_is_refused_for_gets_the_read_probe_and_cachestat_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux 6.14 answers EPERM for a file the caller may neither write nor own (a sidecar
    reading a worker's block files as another user): that file gets the read probe, the
    next is asked with cachestat again."""

    def not_yours(fd: int, length: int) -> bool:
        raise OSError(errno.EPERM, "not yours")

    monkeypatch.setattr(blockfile, "_cachestat", not_yours)
    payload = os.urandom(70_000)
    path = block_path(tmp_path, "b" * 32)
    write_block_file(path, payload, blocks.checksum(payload))
    data, _ = map_block_file(path, cached_only=True)
    assert data == payload and blockfile._cachestat is not_yours


def test_cachestat_is_what_tells_cached_from_cold_here(tmp_path: Path) -> None:
    """This kernel has cachestat (Linux 6.5): every page of a file counted, without
    starting a read; a file whose first page alone is cached is not cached."""
    assert blockfile._cachestat is blockfile._cachestat_all
    path = tmp_path / "f"
    path.write_bytes(os.urandom(4 * 2**20 + 10))
    fd = os.open(path, os.O_RDONLY)
    try:
        length = os.fstat(fd).st_size
        assert blockfile._cachestat_all(fd, length)  # just written: cached
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert not blockfile._cachestat_all(fd, length)
        assert not blockfile._cachestat_all(fd, length)  # and asking read nothing in
        os.pread(fd, 4096, 0)  # the first page (and some read-ahead), not the file
        assert not blockfile._cachestat_all(fd, length)
        assert len(os.pread(fd, length, 0)) == length
        assert blockfile._cachestat_all(fd, length)
    finally:
        os.close(fd)


def _keep(into: list[bytes], view: memoryview) -> None:
    into.append(bytes(view))


def _old_block_file(path: str | Path, data: bytes) -> None:
    """A block file as written before its pieces' CRCs: the data, b"FFB1" and its CRC."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data + b"FFB1" + blocks.checksum(data).to_bytes(4, "big"))


@pytest.mark.parametrize(
    "size", [0, 1, blockfile.CHECK_PIECE - 1, blockfile.CHECK_PIECE, 4 * 2**20 + 3]
)
def test_a_block_file_carries_a_crc_per_piece_and_older_files_read_as_before(
    tmp_path: Path, size: int
) -> None:
    """The trailer holds the CRC of each CHECK_PIECE bytes (the last piece shorter), then
    magic and the block's CRC; every reader takes such a file and an older one (FFB1: the
    block's CRC alone) alike, and tells their data apart from their trailers."""
    payload = os.urandom(size)
    crc = blocks.checksum(payload)
    pieces = -(-size // blockfile.CHECK_PIECE)
    assert trailer_size(size) == 8 + 4 * pieces
    new, old = block_file(str(tmp_path), "a" * 32), block_file(str(tmp_path), "b" * 32)
    write_block_file(new, payload, crc)
    raw = Path(new).read_bytes()
    assert raw[:size] == payload and raw[-8:-4] == b"FFB2" and len(raw) == size + trailer_size(size)
    assert raw[size:-8] == blockfile.piece_crcs(payload)
    assert [int.from_bytes(raw[size + 4 * i : size + 4 * i + 4], "big") for i in range(pieces)] == [
        blocks.checksum(payload[at : at + blockfile.CHECK_PIECE])
        for at in range(0, size, blockfile.CHECK_PIECE)
    ]
    _old_block_file(old, payload)
    for path in (new, old):
        assert blockfile.data_length(path, os.path.getsize(path)) == size
        assert read_block_file(path) == (payload, crc)
        data, got = read_block_file_direct(path)
        assert (bytes(data), got) == (payload, crc)
        for lazy in (False, True):
            data, got = map_block_file(path, lazy=lazy)
            assert (bytes(data), got) == (payload, crc)
        handed: list[bytes] = []
        assert give_block_file(path, size, functools.partial(_keep, handed)) == crc
        assert handed == [payload]
        with pytest.raises(CorruptBlock, match="expected"):
            give_block_file(path, size + 1, lambda v: None)


def test_a_span_is_read_checked_by_the_pieces_it_lies_in(tmp_path: Path) -> None:
    """`read_span_checked`: the bytes asked for (fewer past the block's end), from a read of
    the pieces they lie in checked against the trailer; a damaged piece fails only the
    spans that touch it; an older file (FFB1) is read and checked whole."""
    piece = blockfile.CHECK_PIECE
    payload = os.urandom(3 * piece + 1000)
    new, old = block_file(str(tmp_path), "a" * 32), block_file(str(tmp_path), "b" * 32)
    write_block_file(new, payload, blocks.checksum(payload))
    _old_block_file(old, payload)
    spans = [(0, 1), (piece - 5, 10), (7, 2 * piece), (3 * piece + 990, 100), (len(payload), 9)]
    for path in (new, old):
        for lo, n in spans:
            assert blockfile.read_span_checked(path, lo, n) == payload[lo : lo + n], (lo, n)
    for path in (new, old):
        with open(path, "r+b") as f:
            f.seek(piece + 3)
            f.write(bytes([payload[piece + 3] ^ 1]))
    assert blockfile.read_span_checked(new, 2 * piece, 50) == payload[2 * piece : 2 * piece + 50]
    for path in (new, old):
        with pytest.raises(CorruptBlock):
            blockfile.read_span_checked(path, piece - 5, 10)
    with pytest.raises(CorruptBlock):
        blockfile.read_span_checked(old, 2 * piece, 50)  # (checked whole: no pieces to tell)


async def test_a_restarted_store_finds_its_blocks_sizes_in_either_format(tmp_path: Path) -> None:
    store = await BlockStore([testing.cache_tier("SSD", 2**24, tmp_path)]).open()
    await store.put("a" * 32, b"x" * 300_000)  # two pieces
    _old_block_file(block_path(tmp_path, "b" * 32), b"y" * 1000)
    _old_block_file(block_path(tmp_path, "c" * 32), b"z" * 100)
    odd = Path(block_path(tmp_path, "c" * 32))
    odd.write_bytes(odd.read_bytes()[:-8] + b"NOPE" + bytes(4))
    again = await BlockStore([testing.cache_tier("SSD", 2**24, tmp_path)]).open()
    # (the one that is no block file is indexed as an old one, and found damaged when read)
    assert again.snapshot().tiers[0].used == 300_000 + 1000 + 100
    assert (await again.get("a" * 32))[0] == b"x" * 300_000  # type: ignore[index]
    assert (await again.get("b" * 32))[0] == b"y" * 1000  # type: ignore[index]
    assert await again.get("c" * 32) is None
    assert again.stats.corrupt == 1


def test_only_a_block_files_mapping_is_taken_for_one(tmp_path: Path) -> None:
    """`is_mapped`: a block mapped from its file (the page cache, which the native session
    may hold on to a moment longer) and any part of it, not a block in this process's
    memory, however that was allocated (a received block's buffer of huge pages is an
    anonymous mapping)."""
    payload = os.urandom(2 * blockfile.CHECK_PIECE + 3)
    path = block_file(str(tmp_path), "a" * 32)
    write_block_file(path, payload, blocks.checksum(payload))
    for lazy in (False, True):
        data, _ = map_block_file(path, lazy=lazy)
        assert blockfile.is_mapped(data) and blockfile.is_mapped(memoryview(data)[5:9])
    assert not blockfile.is_mapped(read_block_file(path)[0])
    huge = heap.huge(heap.HUGE)
    assert isinstance(huge, mmap.mmap)
    assert not blockfile.is_mapped(heap.huge_aligned(huge, heap.HUGE))
    assert not blockfile.is_mapped(memoryview(bytearray(payload)))
    assert not blockfile.is_mapped(payload) and not blockfile.is_mapped(None)


def test_a_cached_block_mapped_lazily_has_only_its_end_faulted_in(tmp_path: Path) -> None:
    """Mapped `lazy` on the event loop from the page cache, a block file has only its end
    faulted in (the trailer read there): its reader's threads fault in what they check,
    16 pages a fault, without the walk over every page that faulting it all in costs. A
    use that checks it whole faults it all in first; one that cannot be mapped lazily (one
    piece, no pieces' CRCs) is checked whole at once, as before."""
    payload = os.urandom(4 * 2**20)
    path = block_file(str(tmp_path), "a" * 32)
    write_block_file(path, payload, blocks.checksum(payload))
    Path(path).read_bytes()  # (into the page cache: a large block is written past it)
    data, crc = map_block_file(path, cached_only=True, lazy=True)
    at = heap.address(data)
    assert blockfile.unchecked_span(data) is not None and crc == blocks.checksum(payload)
    assert testing.mapped_bytes(at) <= 128 * 1024  # (fault-around: 64 KiB at most a fault)
    blockfile.check_whole(data)
    assert testing.mapped_bytes(at) >= len(payload) and bytes(data) == payload
    single = block_file(str(tmp_path), "b" * 32)
    write_block_file(single, payload[: blockfile.CHECK_PIECE], 0)
    Path(single).read_bytes()
    with pytest.raises(CorruptBlock, match="checksum mismatch"):  # (checked: a wrong CRC)
        map_block_file(single, cached_only=True, lazy=True)
    older = block_file(str(tmp_path), "c" * 32)  # (no pieces' CRCs: checked whole)
    _old_block_file(older, payload)
    Path(older).read_bytes()
    kept, _ = map_block_file(older, cached_only=True, lazy=True)
    assert blockfile.unchecked_span(kept) is None
    assert testing.mapped_bytes(heap.address(kept)) >= len(payload) and bytes(kept) == payload


def test_a_cached_block_mapped_lazily_leaves_its_pages_unactivated(tmp_path: Path) -> None:
    """Unmapped after its reader's faults, a block file mapped lazily from the page cache
    has not had its pages activated (the kernel marks a mapping's young pages accessed at
    unmap, each under the LRU's lock, unless the file was advised NOREUSE): the reader's
    copy in the FUSE file's page cache is what is read again."""
    payload = os.urandom(4 * 2**20)
    path = block_file(str(tmp_path), "a" * 32)
    write_block_file(path, payload, blocks.checksum(payload))
    Path(path).read_bytes()  # (into the page cache, read once: referenced, not active)
    data, _ = map_block_file(path, cached_only=True, lazy=True)
    for at in range(0, len(payload), 16 * mmap.PAGESIZE):  # (the reader's faults)
        assert data[at] == payload[at]
    frames = testing.page_frames(heap.address(data), len(payload))
    assert len(frames) == len(payload) // mmap.PAGESIZE
    if not any(frames):
        pytest.skip("page frame numbers need CAP_SYS_ADMIN (/proc/self/pagemap)")
    if testing.multi_gen_lru():
        pytest.skip("the multi-generation LRU keeps no active list (/proc/kpageflags)")
    # (the probe's and the trailer's reads may have activated a folio or two before)
    before = testing.active_pages(frames)
    del data
    gc.collect()  # (unmapped with its last view)
    assert testing.active_pages(frames) - before < len(frames) // 8


def test_a_block_mapped_lazily_is_checked_by_its_reader_piece_by_piece(tmp_path: Path) -> None:
    """Mapped `lazy`, a block file is not read whole: only its pieces' CRCs are checked
    against the block's. A READ's answer (a part of the block) names the block, where it
    starts in it and those CRCs (`unchecked_span`), for the thread that sends it to check;
    any other use checks the whole block (`check_whole`), which marks it checked, or finds
    it damaged."""
    piece = blockfile.CHECK_PIECE
    payload = os.urandom(3 * piece + 5)
    path = block_file(str(tmp_path), "a" * 32)
    write_block_file(path, payload, blocks.checksum(payload))
    data, _ = map_block_file(path, lazy=True)
    answer = memoryview(data)[piece + 7 : 2 * piece]
    span = blockfile.unchecked_span(answer)
    assert span is not None
    block, lo, pieces, fd = span
    assert bytes(block) == payload and lo == piece + 7 and pieces == blockfile.piece_crcs(payload)
    assert os.path.samefile(f"/proc/self/fd/{fd}", path)  # (open as long as it is mapped)
    assert blockfile.unchecked_span(memoryview(payload)) is None  # (not a mapped block)
    one = block_file(str(tmp_path), "b" * 32)  # (a block of one piece: checked at once)
    write_block_file(one, payload[:piece], blocks.checksum(payload[:piece]))
    assert blockfile.unchecked_span(map_block_file(one, lazy=True)[0]) is None
    assert blockfile.unchecked_span(read_block_file(path)[0]) is None
    older = block_file(str(tmp_path), "c" * 32)  # (an older file: no pieces' CRCs)
    _old_block_file(older, payload)
    fds = len(os.listdir("/proc/self/fd"))
    kept = map_block_file(older, lazy=True)[0]  # checked whole, as before
    assert blockfile.unchecked_span(kept) is None
    assert len(os.listdir("/proc/self/fd")) == fds + 1  # (mmap's own; none kept for it)
    blockfile.check_span(answer)  # (only the pieces it covers: still unchecked)
    assert blockfile.unchecked_span(answer) is not None
    blockfile.check_whole(answer)  # (a part names its block: checked whole)
    assert blockfile.unchecked_span(answer) is None and blockfile.unchecked_span(data) is None

    # damaged in its bytes: mapped lazily all the same, found by the check of the piece or
    # of the whole block; mapped eagerly, refused at once
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, bytes([payload[2 * piece] ^ 1]), 2 * piece)
    finally:
        os.close(fd)
    with pytest.raises(CorruptBlock, match="checksum mismatch"):
        map_block_file(path)
    data, _ = map_block_file(path, lazy=True)
    span = blockfile.unchecked_span(data[: 2 * piece])
    assert span is not None
    block, lo, pieces, _ = span
    assert [blocks.checksum(block[at : at + piece]) for at in range(0, len(block), piece)] != [
        int.from_bytes(pieces[i : i + 4], "big") for i in range(0, len(pieces), 4)
    ]
    # (a part copied out of it, into an answer joined with the next block's: checked by the
    # pieces it covers, the block still unchecked after it, whole or damaged)
    blockfile.check_span(data[piece - 5 : 2 * piece])
    blockfile.check_span(data[3 * piece :])  # (the last piece, shorter)
    assert blockfile.unchecked_span(data) is not None
    for part in (data[2 * piece - 1 : 2 * piece + 1], data[2 * piece + 1 :]):
        with pytest.raises(CorruptBlock, match="checksum mismatch"):
            blockfile.check_span(part)
    with pytest.raises(CorruptBlock, match="checksum mismatch"):
        blockfile.check_whole(data[10:20])
    assert blockfile.unchecked_span(data) is not None  # (still unchecked: its reader drops it)

    # a trailer whose pieces' CRCs do not make the block's: refused when mapped
    raw = bytearray(Path(path).read_bytes())
    raw[2 * piece] ^= 1  # (the data as written)
    raw[len(payload)] ^= 1  # the first piece's CRC
    Path(path).write_bytes(raw)
    with pytest.raises(CorruptBlock, match="do not make the block's"):
        map_block_file(path, lazy=True)
    raw[-8:-4] = b"NOPE"
    Path(path).write_bytes(raw)
    with pytest.raises(CorruptBlock, match="not a block file"):
        map_block_file(path, lazy=True)
    Path(path).write_bytes(b"x" + b"FFB2" + bytes(4))  # (no room for a piece's CRC)
    for read in (map_block_file, read_block_file, read_block_file_direct):
        with pytest.raises(CorruptBlock, match="no block file's length"):
            read(path)
