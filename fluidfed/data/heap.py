"""glibc malloc settings for the processes that move megabyte blocks (sidecar, worker).

Every block arrives in fresh buffers: OpenDAL's body, the bytes handed to Python,
aiohttp's joined body, a block file read. Left to glibc's defaults, or with a low mmap
threshold, each of those is a new mapping the kernel must fault in and zero page by
page, which cost the sidecar a third of its CPU. Served from one heap instead, freed
blocks are reused and the faults go (figures: README, "Measured design decisions").
A heap keeps what it frees, so `trim_loop` hands free pages back to the kernel once a
second while blocks are moving: resident memory beyond the cache tiers settles within a
few MiB of where it was with fresh mappings (the peak is higher: see the bench).

`tune` must run before any thread allocates: glibc gives a thread its arena at its first
allocation, and once one thread has its own arena, threads started later are spread over
the arenas there are (M_ARENA_MAX only stops new ones). The sidecar tuned it after its
status server's address lookup (uvloop's thread pool) had made two more: OpenDAL's threads
then allocated from those, heaps of at most 64 MiB that free() shrinks, handing their
pages back for the next block to fault in again (figures: README). `arenas` counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import mmap
from collections.abc import Callable

log = logging.getLogger("fluidfed.data.heap")

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
HEAP_UP_TO = 32 * 2**20  # allocations below this come from (and go back to) the heap
ARENAS = 1  # one heap for every thread: OpenDAL's threads free what Python's allocated

PAGE = mmap.PAGESIZE

_libc: ctypes.CDLL | None = None


def tune() -> bool:
    """Serve block-sized allocations from the heap; False where glibc is not the allocator.
    Call it before the process starts any thread (see above): a warning says if it came
    too late."""
    global _libc
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if libc.mallopt(M_MMAP_THRESHOLD, HEAP_UP_TO) and libc.mallopt(M_ARENA_MAX, ARENAS):
            _libc = libc
            made = arenas()
            if made > ARENAS:
                log.warning(
                    "%d malloc arenas exist already: threads allocated before the heap was "
                    "tuned, and later ones share their arenas (tune earlier)",
                    made,
                )
            return True
    return False


def arenas() -> int:
    """How many malloc arenas the process has (glibc's `malloc_info`); 0 where glibc is not
    the allocator."""
    with contextlib.suppress(OSError, AttributeError):
        libc = _libc or ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        buf, size = ctypes.c_void_p(), ctypes.c_size_t()
        libc.open_memstream.restype = ctypes.c_void_p
        stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
        if not stream:
            return 0
        try:
            ok = libc.malloc_info(0, ctypes.c_void_p(stream)) == 0
        finally:
            libc.fclose(ctypes.c_void_p(stream))  # sets buf and size
        try:
            if not ok or not buf.value:
                return 0
            return ctypes.string_at(buf.value, size.value).count(b"<heap nr=")
        finally:
            libc.free(buf)
    return 0


def trim() -> None:
    """Give the heap's free pages back to the kernel (blocking, a few milliseconds)."""
    if _libc is not None:
        _libc.malloc_trim(0)


async def trim_loop(activity: Callable[[], int], interval: float = 1.0) -> None:
    """Trim after each `interval` in which `activity()` (a counter of bytes moved) changed."""
    if _libc is None:
        return
    last = activity()
    while True:
        await asyncio.sleep(interval)
        now = activity()
        if now != last:
            last = now
            await asyncio.to_thread(trim)


class _Buffer(ctypes.Structure):
    """Python's Py_buffer (part of the stable ABI since 3.11)."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_Buffer), ctypes.c_int)
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.POINTER(_Buffer),)
_release_buffer.restype = None


def address(data: bytes | bytearray | memoryview | mmap.mmap) -> int:
    """Where the first byte of a contiguous buffer is in memory (read-only ones too, which
    `ctypes.c_char.from_buffer` refuses); BufferError for a non-contiguous one."""
    view = _Buffer()
    _get_buffer(data, ctypes.byref(view), 0)  # PyBUF_SIMPLE; ctypes raises what it sets
    try:
        return view.buf or 0
    finally:
        _release_buffer(ctypes.byref(view))


def page_aligned(buf: bytearray, n: int) -> memoryview:
    """The `n` bytes of `buf` from its first page boundary on (`buf` is at least
    `n + PAGE` long): memory a direct write can take as it is (`blockfile`)."""
    skip = -address(buf) % PAGE
    return memoryview(buf)[skip : skip + n]


# A buffer of this many bytes or more is made of transparent huge pages where the kernel
# gives them (`huge`): a read past the page cache (O_DIRECT) into 4 KiB pages takes a
# segment per page, and a virtio disk takes at most 254 segments per request, so each 4
# MiB block file was read in five requests of at most 1016 KiB: 256 block files read 4 at a
# time into 4 KiB pages came at 1,054-1,508 MiB/s and 0.10-0.11 CPU-s/GiB, into huge
# pages at 2,005-2,145 and 0.06-0.07, as fast as one big file read through the page cache
# with the kernel's read-ahead (1,872-2,077) in the same minutes (figures: README).
HUGE = 2 * 2**20  # a huge page (x86-64's and arm64's with 4 KiB pages)


def huge(n: int) -> mmap.mmap:
    """Private memory for `n` bytes and a huge page more, so that `huge_aligned` finds
    `n` bytes from a huge-page boundary; its whole huge pages are asked for as such
    (MADV_HUGEPAGE: the kernel gives them at the first touch if it has them, and 4 KiB
    pages where it has none or its setting is "never"), what follows them kept to 4 KiB
    pages (MADV_NOHUGEPAGE: the few bytes of a block file's trailer would otherwise take
    2 MiB where the setting is "always"). The part before the boundary is never touched.
    Each madvise splits the mapping: two mappings per buffer at most, one when `n` is a
    multiple of a huge page (a block received), against the 65,530 a process may have
    by default (vm.max_map_count): a memory tier of ~128 GiB of 4 MiB blocks."""
    m = mmap.mmap(-1, n + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    end = -address(m) % HUGE + n // HUGE * HUGE  # of the whole huge pages
    with contextlib.suppress(OSError, AttributeError):  # (a kernel without THP)
        if n % HUGE == 0:
            m.madvise(mmap.MADV_HUGEPAGE)
        elif n >= HUGE:
            m.madvise(mmap.MADV_HUGEPAGE, 0, end)
            m.madvise(mmap.MADV_NOHUGEPAGE, end)
    return m


def huge_aligned(m: mmap.mmap, n: int) -> memoryview:
    """The `n` bytes of `m` (from `huge`) from its first huge-page boundary on."""
    skip = -address(m) % HUGE
    return memoryview(m)[skip : skip + n]


def uninitialized(n: int) -> bytearray:
    """A bytearray of `n` bytes left as malloc gave them: `bytearray(n)` would first zero
    them, a pass over the block for bytes a socket or a read overwrites at once. Its user
    fills it whole or drops it, so none of the old bytes is ever seen."""
    return _new_bytearray(None, n)  # type: ignore[no-any-return]


def aligned(n: int) -> memoryview:
    """`n` bytes of new memory that start on a page boundary (left as malloc gave them)."""
    return page_aligned(uninitialized(n + PAGE), n)


_new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
_new_bytearray.restype = ctypes.py_object
_new_bytearray.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
