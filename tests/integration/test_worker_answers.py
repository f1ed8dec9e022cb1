"""A cache worker's block answers as they go on the wire, on uvloop (the worker's loop):
blocks sent one after the other in one body, from memory and from files."""

from __future__ import annotations

import asyncio
import mmap
import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
import uvloop
from aiohttp import web

from agents.worker import server
from agents.worker.core import Worker
from fluidfed.data import blockfile, heap

pytestmark = pytest.mark.integration


def _slow_get(port: int) -> bytes:
    """The body of GET /b, read through a small receive window: the worker's transport
    takes the memory block faster than the socket does."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /b HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        got = bytearray()
        while chunk := sock.recv(2**16):
            got += chunk
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


class _Counts:
    """What `server._Blocks` keeps of its worker."""

    def __init__(self) -> None:
        self.served_sendfile = 0
        self.served_read_huge = 0
        self.reading_huge: dict[tuple[int, int], asyncio.Future[bool]] = {}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _slow_get_on_uvloop(
    answer: Handler, after: Callable[[], None] = lambda: None, readers: int = 1
) -> bytes:
    """`answer` served on uvloop (the worker's loop), its body read by `_slow_get` (by
    `readers` at once: the body they all read); `after` runs once the body is in, the
    server still up."""

    async def run() -> bytes:
        app = web.Application()
        app.router.add_get("/b", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            bodies = await asyncio.gather(
                *(asyncio.to_thread(_slow_get, port) for _ in range(readers))
            )
            assert all(b == bodies[0] for b in bodies)
            return bodies[0]
        finally:
            after()
            await runner.cleanup()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run())


def test_a_file_after_a_block_in_memory_is_still_sent_with_sendfile(tmp_path: Path) -> None:
    """A joined answer whose first block is in memory and the next in a file, to a reader
    slower than the worker: every byte in order, and the file sent with sendfile(2), not
    mapped and copied (uvloop lets the writer go on once its write is done, the transport
    empty, as `server._sendfile` needs)."""
    first = os.urandom(16 * 2**20)  # (more than the socket takes at once)
    second = os.urandom(3 * 2**20 + 7)
    path = tmp_path / "block"
    path.write_bytes(second)
    counts = _Counts()

    async def answer(request: web.Request) -> web.StreamResponse:
        f = path.open("rb")
        parts: list[tuple[Any, int]] = [(memoryview(first), len(first)), (f, len(second))]
        return server._Blocks(cast(Worker, counts), parts, {})

    body = _slow_get_on_uvloop(answer)
    assert body == first + second
    assert counts.served_sendfile == 1


def test_a_block_file_not_in_the_page_cache_is_read_into_huge_folios_before_it_is_sent(
    tmp_path: Path,
) -> None:
    """A large block file that must come from the disk is read in a thread, into folios
    of a huge page (`blockfile.read_in_huge_folios`), then sent from the page cache with
    sendfile(2): every byte, and a reader on this node then maps the whole file with
    huge-page entries, where sendfile's own read-ahead leaves small folios. A file in the
    page cache already is sent as it is, without reading it first."""
    block = os.urandom(4 * 2**20 + 7)
    path = tmp_path / "block"
    path.write_bytes(block)
    with path.open("rb") as f:
        os.fsync(f.fileno())  # (written back, so the kernel can let the pages go)
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert not blockfile.in_page_cache(f.fileno(), len(block))
    counts = _Counts()

    async def answer(request: web.Request) -> web.StreamResponse:
        return server._Blocks(cast(Worker, counts), [(path.open("rb"), len(block))], {})

    assert _slow_get_on_uvloop(answer) == block
    assert (counts.served_read_huge, counts.served_sendfile) == (1, 1)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 4 * 2**20, prot=mmap.PROT_READ) as m:
        assert blockfile.in_page_cache(f.fileno(), len(block))
        m.madvise(mmap.MADV_HUGEPAGE)
        m.madvise(blockfile._POPULATE_READ)
        assert blockfile._pmd_mapped_kib(heap.address(m)) == 4096

    assert _slow_get_on_uvloop(answer) == block  # cached now: sent as it is
    assert (counts.served_read_huge, counts.served_sendfile) == (1, 2)


def test_requests_sending_one_cold_block_file_at_once_wait_for_one_read_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four requests for one large block file that is not in the page cache, at once: the
    file is read once, in one thread (each read would let go of what the one before read,
    and sendfile then read it again on the event loop), and every body is the file."""
    block = os.urandom(4 * 2**20 + 7)
    path = tmp_path / "block"
    path.write_bytes(block)
    with path.open("rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    reads: list[int] = []
    real = blockfile.read_in_huge_folios

    def read_slowly(fd: int, length: int) -> bool:  # (long enough for all four to ask)
        reads.append(fd)
        time.sleep(0.5)
        return real(fd, length)

    monkeypatch.setattr(blockfile, "read_in_huge_folios", read_slowly)
    counts = _Counts()

    async def answer(request: web.Request) -> web.StreamResponse:
        return server._Blocks(cast(Worker, counts), [(path.open("rb"), len(block))], {})

    assert _slow_get_on_uvloop(answer, readers=4) == block
    assert len(reads) == 1
    assert (counts.served_read_huge, counts.served_sendfile) == (1, 4)
    assert counts.reading_huge == {}


def test_a_worker_out_of_descriptors_still_sends_a_block_file_it_opened(tmp_path: Path) -> None:
    """On uvloop a block file goes out through a duplicate of the socket's descriptor
    (sendfile's wait) or a mapping (which takes one too), both made after the headers went
    out: a worker at its open-file limit then sends the file as it reads it, every byte,
    instead of cutting the answer short."""
    block = os.urandom(3 * 2**20 + 5)
    path = tmp_path / "block"
    path.write_bytes(block)
    counts = _Counts()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def answer(request: web.Request) -> web.StreamResponse:
        f = path.open("rb")
        fd = os.open(os.devnull, os.O_RDONLY)  # (the lowest free descriptor)
        os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd, hard))  # (put back below)
        return server._Blocks(cast(Worker, counts), [(f, len(block))], {})

    def put_back() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    try:
        body = _slow_get_on_uvloop(answer, put_back)
    finally:
        put_back()
    assert body == block
    assert counts.served_sendfile == 0
