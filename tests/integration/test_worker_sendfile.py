"""agents.worker.sendfile on uvloop, every process's loop: a block file goes to a reader's
connection through sendfile(2), a slow reader included, and a cancelled send leaves no
descriptor behind."""

import asyncio
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from agents.worker import sendfile
from fluidfed import aio

pytestmark = pytest.mark.integration

SIZE = 32 * 2**20 + 12345  # more than the sockets take at once: the thread waits for room


def _serve_once(
    handler: Callable[[asyncio.StreamWriter], object], ssl_ctx: object = None
) -> tuple[int, threading.Thread]:
    """A server on loopback, on uvloop in a thread of its own, handling one connection."""
    ready = threading.Event()
    port: list[int] = []

    async def main() -> None:
        done = asyncio.Event()

        async def on_conn(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(writer)  # type: ignore[misc]
            finally:
                writer.close()
                done.set()

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=ssl_ctx)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        async with server:
            await done.wait()

    t = threading.Thread(target=aio.run, args=(main(),))
    t.start()
    assert ready.wait(10)
    return port[0], t


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_slow_reader_gets_the_head_and_every_byte(tmp_path: Path) -> None:
    block = tmp_path / "block"
    data = os.urandom(SIZE)
    block.write_bytes(data)
    seen: dict[str, object] = {}

    async def handler(writer: asyncio.StreamWriter) -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        seen["usable"] = sendfile.usable(writer.transport)
        writer.write(b"HEAD\n")
        with block.open("rb") as f:
            await sendfile.send(writer.transport, f, 100, SIZE - 100, stall=30)  # type: ignore[arg-type]

    port, t = _serve_once(handler)
    got = bytearray()
    with socket.create_connection(("127.0.0.1", port)) as c:
        time.sleep(0.5)  # the sender fills what the socket takes, then waits
        while chunk := c.recv(65536):
            got += chunk
    t.join(30)
    assert seen["usable"] is True
    assert bytes(got) == b"HEAD\n" + data[100:]


def test_a_cancelled_send_closes_its_descriptors(tmp_path: Path) -> None:
    block = tmp_path / "block"
    block.write_bytes(os.urandom(SIZE))
    outcome: dict[str, object] = {}

    async def handler(writer: asyncio.StreamWriter) -> None:
        with block.open("rb") as f:
            task = asyncio.create_task(
                sendfile.send(writer.transport, f, 0, SIZE, stall=30)  # type: ignore[arg-type]
            )
            await asyncio.sleep(0.3)  # the reader reads nothing: the thread waits for room
            task.cancel()
            outcome["cancelled"] = await asyncio.gather(task, return_exceptions=True)

    before = _fds()
    port, t = _serve_once(handler)
    with socket.create_connection(("127.0.0.1", port)):
        t.join(30)  # the handler closed its side and the file
    # the thread saw the connection go and closed its duplicates
    deadline = time.monotonic() + 10
    while _fds() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert isinstance(outcome["cancelled"], list)
    assert isinstance(outcome["cancelled"][0], asyncio.CancelledError)
    assert _fds() <= before


def test_tls_is_not_for_the_kernel(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    seen: dict[str, object] = {}

    async def handler(writer: asyncio.StreamWriter) -> None:
        seen["usable"] = sendfile.usable(writer.transport)

    port, t = _serve_once(handler, server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as c,
    ):
        c.recv(1)
    t.join(30)
    assert seen["usable"] is False
