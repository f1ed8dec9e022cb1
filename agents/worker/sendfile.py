"""sendfile(2) from a block file to a reader's connection, on any event loop.

asyncio's `loop.sendfile` does this on its own loop, but uvloop, every fluidfed process's
loop (fluidfed/aio.py), does not implement it, and will not let `add_writer` wait on a
socket a transport owns. So the copy runs in a thread of its own: the page cache goes to
the socket with no copy in Python (worker CPU 1.6 -> 0.43 s/GiB, README "Measured design
decisions"), and the GIL is free while the kernel sends.

The thread sends from and to duplicates of the file's and the connection's descriptors,
which it closes itself: if the request is cancelled (the reader went away) and the file and
the transport close theirs meanwhile, the numbers may be given to the next file or
connection, but the duplicates still name the old ones, so no bytes of another block, and
no bytes to another reader.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import select
import time
from typing import BinaryIO

# a slow reader holds one thread: enough that slow readers cannot stall the others
_THREADS = 32
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(_THREADS, thread_name_prefix="sendfile")
    return _pool


def usable(transport: asyncio.BaseTransport) -> bool:
    """Whether the kernel can send to this connection: a plain socket, not TLS."""
    return (
        transport.get_extra_info("socket") is not None
        and transport.get_extra_info("ssl_object") is None
    )


async def send(
    transport: asyncio.WriteTransport, f: BinaryIO, offset: int, count: int, *, stall: float
) -> None:
    """Send `count` bytes of `f` from `offset` on `transport`'s socket (`usable` must hold),
    after what the transport has buffered. TimeoutError when the reader takes nothing for
    `stall` seconds; OSError when the connection breaks."""
    loop = asyncio.get_running_loop()
    # bytes written so far (the response's head) must reach the socket first
    deadline = loop.time() + stall
    while transport.get_write_buffer_size() and not transport.is_closing():
        if loop.time() > deadline:
            raise TimeoutError(f"the reader took nothing for {stall:.0f}s")
        await asyncio.sleep(0.001)
    if transport.is_closing():
        raise ConnectionResetError("the connection closed before the block was sent")
    sock_fd = os.dup(transport.get_extra_info("socket").fileno())
    try:
        file_fd = os.dup(f.fileno())
    except BaseException:
        os.close(sock_fd)
        raise
    try:
        done = loop.run_in_executor(
            _executor(), _send_blocking, sock_fd, file_fd, offset, count, stall
        )
    except BaseException:
        os.close(sock_fd)
        os.close(file_fd)
        raise
    await done


def _send_blocking(sock_fd: int, file_fd: int, offset: int, count: int, stall: float) -> None:
    """sendfile(2) on a non-blocking socket until `count` bytes went; closes both
    descriptors."""
    try:
        end = offset + count
        poller = select.poll()
        poller.register(sock_fd, select.POLLOUT)
        while offset < end:
            try:
                sent = os.sendfile(sock_fd, file_fd, offset, end - offset)
            except BlockingIOError:
                started = time.monotonic()
                if not poller.poll(stall * 1000):
                    raise TimeoutError(
                        f"the reader took nothing for {time.monotonic() - started:.0f}s"
                    ) from None
                continue
            if sent == 0:
                raise EOFError(f"the block file ended at byte {offset}, before {end}")
            offset += sent
    finally:
        os.close(sock_fd)
        os.close(file_fd)
