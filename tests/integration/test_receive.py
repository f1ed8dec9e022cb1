"""The sidecar's block receive over plain HTTP (fluidfed/data/receive.py) against an aiohttp
server on 127.0.0.1: an answer's head is read in small pieces (HEAD_READ) so that little of
the body is copied twice, so a head longer than one piece, or than MAX_HEAD, must still be
told right."""

from __future__ import annotations

import asyncio
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, cast

import pytest
import uvloop
from aiohttp import web

from devkit import testing
from fluidfed import errors
from fluidfed.data import receive

pytestmark = pytest.mark.integration


def pattern(n: int) -> bytes:
    return (bytes(range(251)) * (n // 251 + 1))[:n]


def padding(total: int) -> dict[str, str]:
    """Headers of about `total` bytes, in lines of ~1 KiB."""
    return {f"X-Pad-{i}": f"{i:04d}" + "p" * 1000 for i in range(total // 1024 + 1)}


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.Response:
        n, pad = int(request.query["n"]), int(request.query["pad"])
        return web.Response(body=pattern(n), headers=padding(pad))

    app = web.Application()
    app.router.add_get("/h", answer)
    async with testing.serving(app) as url:
        yield f"{url}/h"


WAYS = ["thread", "loop", "uvloop"]  # `get`; `get_on_loop` on asyncio's loop, on uvloop's


async def on(way: str, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `body` on the loop `way` names: uvloop's in a thread of its own (the server
    keeps this test's loop)."""
    if way == "uvloop":
        await asyncio.to_thread(uvloop.run, body())
    else:
        await body()


def getter(conns: receive.Connections, way: str) -> Callable[..., Awaitable[receive.Answer]]:
    return conns.get if way == "thread" else conns.get_on_loop


def opened(conns: receive.Connections, way: str) -> int:
    return conns.opened if way == "thread" else conns.opened_on_loop


def not_opened(conns: receive.Connections, way: str) -> int:
    return conns.opened_on_loop if way == "thread" else conns.opened


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("n", [0, 100, receive.HEAD_READ * 3 + 5, 4 * 2**20 + 7])
@pytest.mark.parametrize("pad", [0, receive.HEAD_READ * 3])
async def test_heads_longer_than_a_piece_and_bodies_of_every_size_arrive_whole(
    server: str, n: int, pad: int, way: str
) -> None:
    conns = receive.Connections()
    get = getter(conns, way)

    async def body() -> None:
        for _ in range(2):  # the second on the same connection: nothing of the first left
            got = await get(server, {"n": n, "pad": pad}, {}, 10.0)
            assert got.status == 200
            assert bytes(got.body) == pattern(n)
            assert got.crc == zlib.crc32(pattern(n))
            assert got.headers.get("X-Pad-0", "").startswith("0000")
            assert len([k for k in got.headers if k.startswith("X-Pad-")]) == pad // 1024 + 1
        assert opened(conns, way) == 1
        assert not_opened(conns, way) == 0
        conns.close()

    try:
        await on(way, body)
    finally:
        conns.close()


@pytest.mark.parametrize("pad", [0, receive.HEAD_READ * 3])
@pytest.mark.parametrize(
    "sizes",
    [(100, 3 * receive.HEAD_READ), (5, 1, 2**20), (2 * 2**20, 2 * 2**20 + 7)],
    ids=["head-spans-two", "head-spans-three", "blocks"],
)
async def test_a_body_split_into_parts_arrives_each_in_a_buffer_of_its_own(
    server: str, sizes: tuple[int, ...], pad: int
) -> None:
    """Several blocks in one answer (a worker's ranged read of a run): each part in its own
    buffer with its own CRC, what came with the head spread over as many parts as it
    covers; a body of another length than the parts comes whole."""
    conns = receive.Connections()
    n = sum(sizes)
    want = pattern(n)
    try:
        for _ in range(2):  # the second on the same connection, into reused buffers
            got = await conns.get(server, {"n": n, "pad": pad}, {}, 10.0, split=sizes)
            assert got.status == 200
            parts = [(got.body, got.crc), *got.rest]
            assert [len(d) for d, _ in parts] == list(sizes)
            at = 0
            for data, crc in parts:
                assert bytes(data) == want[at : at + len(data)]
                assert crc == zlib.crc32(want[at : at + len(data)])
                at += len(data)
            assert all(isinstance(d, memoryview) and d.readonly for d, _ in parts)
            # none a view of another's buffer: each is cached and freed on its own
            assert len({id(cast(memoryview, d).obj) for d, _ in parts}) == len(sizes)
        got = await conns.get(server, {"n": n + 1, "pad": pad}, {}, 10.0, split=sizes)
        assert bytes(got.body) == pattern(n + 1)
        assert got.rest == ()
        assert got.crc == zlib.crc32(pattern(n + 1))
        assert conns.opened == 1
    finally:
        conns.close()


@pytest.mark.parametrize("way", WAYS)
async def test_a_head_over_max_head_is_refused(server: str, way: str) -> None:
    conns = receive.Connections()
    get = getter(conns, way)

    async def body() -> None:
        with pytest.raises(errors.WorkerError, match="answer head too long"):
            await get(server, {"n": 10, "pad": receive.MAX_HEAD + 4096}, {}, 10.0)
        # the connection is dropped, the next request goes well on a new one
        got = await asyncio.wait_for(get(server, {"n": 10, "pad": 0}, {}, 10.0), 10)
        assert bytes(got.body) == pattern(10)
        assert opened(conns, way) == 2
        conns.close()

    try:
        await on(way, body)
    finally:
        conns.close()


@pytest.fixture
async def paced() -> AsyncIterator[str]:
    """Bodies sent in parts with pauses between (`parts`: comma-separated byte counts, a
    pause of `pause` seconds after each part but the last), then `end`: "whole" (the last
    part), "close" (the connection closed, the body short) or "stall" (the body short, the
    connection left open until the test ends)."""
    done = asyncio.Event()

    async def answer(request: web.Request) -> web.StreamResponse:
        parts = [int(p) for p in request.query["parts"].split(",")]
        end, pause = request.query["end"], float(request.query["pause"])
        body = pattern(sum(parts))
        length = len(body) + (0 if end == "whole" else 1000)
        resp = web.StreamResponse(headers={"Content-Length": str(length)})
        await resp.prepare(request)
        at = 0
        for i, n in enumerate(parts):
            await resp.write(body[at : at + n])
            at += n
            if i < len(parts) - 1:
                await asyncio.sleep(pause)
        if end == "close":
            assert request.transport is not None
            request.transport.close()
        elif end == "stall":
            await done.wait()
        return resp

    app = web.Application()
    app.router.add_get("/p", answer)
    async with testing.serving(app) as url:
        try:
            yield f"{url}/p"
        finally:
            done.set()


async def test_a_body_arriving_in_pauses_is_received_whole_and_the_connection_reused(
    paced: str,
) -> None:
    """A thread receiving a body waits to be woken until WAKE_EVERY bytes wait in the
    socket, never for more than the body still owes: a body whose last part is shorter
    than that and comes after a pause is received (a mark left above what is owed would
    wait for the deadline: "no answer in time"), and so is a short answer on the same
    connection after it (its head read with the mark back at 1)."""
    every = receive.WAKE_EVERY
    conns = receive.Connections()
    try:
        # a new connection's window is larger than a mark from the start (a window of just
        # the mark would fill before the reader is woken, the sender idle meanwhile)
        small = await conns.get(paced, {"parts": "10", "end": "whole", "pause": "0"}, {}, 20.0)
        assert bytes(small.body) == pattern(10)
        ((sock, _),) = [kept for idle in conns._idle.values() for kept in idle]
        assert isinstance(sock, socket.socket)  # (plain HTTP)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP) >= 2 * every
        for parts in (
            [every + 500, every - 100, 37],  # each pause leaves less than the mark owed
            [100, 5, every * 2 + 3],
            [every * 3],
        ):
            q = {"parts": ",".join(map(str, parts)), "end": "whole", "pause": "0.3"}
            got = await conns.get(paced, q, {}, 20.0, checksum=True)
            assert got.status == 200 and bytes(got.body) == pattern(sum(parts))
            assert got.crc == zlib.crc32(pattern(sum(parts)))
            small = await conns.get(paced, {"parts": "10", "end": "whole", "pause": "0"}, {}, 20.0)
            assert bytes(small.body) == pattern(10)
        assert conns.opened == 1
        ((sock, _),) = [kept for idle in conns._idle.values() for kept in idle]
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1  # mark put back
    finally:
        conns.close()


@pytest.mark.parametrize("end", ["close", "stall"])
async def test_a_body_cut_short_fails_at_once_or_at_its_deadline(paced: str, end: str) -> None:
    """A worker that closes mid-body is told at once; one that stops sending is given up
    at the request's deadline, not later; either way the connection is not kept."""
    conns = receive.Connections()
    q = {"parts": f"{receive.WAKE_EVERY + 7},5000", "end": end, "pause": "0.1"}
    said = "connection closed after" if end == "close" else "no answer in time"
    try:
        with pytest.raises(errors.WorkerError, match=said):
            await asyncio.wait_for(conns.get(paced, q, {}, 1.5), 15)
        got = await conns.get(paced, {"parts": "10", "end": "whole", "pause": "0"}, {}, 20.0)
        assert bytes(got.body) == pattern(10)
        assert conns.opened == 2
    finally:
        conns.close()
