"""fluidfed/tlsserve.py, the hub's HTTPS: an aiohttp app served over TLSSite on loopback,
met by real clients (aiohttp's, and raw sockets for what a client may do wrong)."""

import asyncio
import hashlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from fluidfed import tlsserve
from fluidfed.errors import FluidfedError

pytestmark = pytest.mark.integration

BIG = 8 * 2**20


class Served:
    def __init__(self, runner: web.AppRunner, site: tlsserve.TLSSite, ca: trustme.CA) -> None:
        self.runner = runner
        self.port = runner.addresses[0][1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.client_ctx = ssl.create_default_context()
        ca.configure_trust(self.client_ctx)
        self.seen: dict[str, Any] = {}


def _app(seen: dict[str, Any]) -> web.Application:
    async def big(request: web.Request) -> web.StreamResponse:
        # 8 MiB in 64 KiB writes to a client that reads slowly: how much the transport
        # holds at once says whether it paused the writer
        resp = web.StreamResponse()
        await resp.prepare(request)
        assert request.transport is not None
        held = 0
        piece = bytes(range(256)) * 256
        for _ in range(BIG // len(piece)):
            await resp.write(piece)
            held = max(held, request.transport.get_write_buffer_size())
        seen["max_held"] = held
        await resp.write_eof()
        return resp

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(text=hashlib.sha256(body).hexdigest())

    async def who(request: web.Request) -> web.Response:
        assert request.transport is not None
        obj = request.transport.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True) if obj is not None else None
        return web.Response(text=f"{request.scheme} {'cert' if der else 'none'}")

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        seen["streaming"] = True
        try:
            while True:
                await resp.write(b"tick\n")
                await asyncio.sleep(0.01)
        except (ConnectionError, aiohttp.ClientConnectionResetError) as err:
            seen["stream_error"] = err
            raise

    app = web.Application(client_max_size=4 * 2**20)
    app.router.add_get("/big", big)
    app.router.add_post("/echo", echo)
    app.router.add_get("/who", who)
    app.router.add_get("/stream", stream)
    return app


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def served(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[Served]:
    cert = ca.issue_cert("127.0.0.1")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ctx.load_verify_locations(cafile=str(ca_file))
    ctx.verify_mode = ssl.CERT_OPTIONAL  # as the hub's with client_ca_file
    seen: dict[str, Any] = {}
    runner = web.AppRunner(_app(seen), handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    site = tlsserve.TLSSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    s = Served(runner, site, ca)
    s.seen = seen
    try:
        yield s
    finally:
        await runner.cleanup()


async def test_a_large_response_to_a_slow_reader_arrives_whole_and_pauses_the_writer(
    served: Served,
) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.get(served.url + "/big", ssl=served.client_ctx) as resp,
    ):
        digest = hashlib.sha256()
        while chunk := await resp.content.read(256 * 1024):
            digest.update(chunk)
            await asyncio.sleep(0.002)
    piece = bytes(range(256)) * 256
    assert digest.hexdigest() == hashlib.sha256(piece * (BIG // len(piece))).hexdigest()
    # flow control: the transport held a few pieces at most, never the 8 MiB written
    assert served.seen["max_held"] < 1024 * 1024, served.seen["max_held"]


async def test_bodies_and_many_requests_on_one_connection(served: Served) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB up: many records read per readiness
    conn = aiohttp.TCPConnector(limit=1, ssl=served.client_ctx)
    async with aiohttp.ClientSession(connector=conn) as s:
        for _ in range(20):
            async with s.post(served.url + "/echo", data=body) as resp:
                assert await resp.text() == hashlib.sha256(body).hexdigest()
        async with s.get(served.url + "/who") as resp:
            assert await resp.text() == "https none"


async def test_a_client_certificate_is_seen_by_the_handler(served: Served, ca: trustme.CA) -> None:
    # the client's own context, with a certificate of the CA the server trusts
    ca.issue_cert("agent-a").configure_cert(served.client_ctx)
    async with aiohttp.ClientSession() as s, s.get(served.url + "/who", ssl=served.client_ctx) as r:
        assert await r.text() == "https cert"
    # one from another CA fails the handshake: no request reaches the app
    stranger = trustme.CA().issue_cert("agent-b")
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    stranger.configure_cert(ctx)
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientError):
            async with s.get(served.url + "/who", ssl=ctx) as r:
                await r.text()


async def test_plain_http_to_the_port_is_closed_not_reset(served: Served) -> None:
    plain = "http://" + served.url.removeprefix("https://")
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with s.get(plain + "/who") as r:
                await r.text()


async def test_a_silent_client_is_dropped_at_the_handshake_deadline(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tlsserve, "HANDSHAKE_TIMEOUT", 0.3)
    loop = asyncio.get_running_loop()
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.setblocking(False)
        # connected, and nothing sent: the server closes it when the deadline passes
        got = await asyncio.wait_for(loop.sock_recv(sock, 100), 10)
        assert got == b""


async def test_a_client_gone_mid_stream_ends_the_handler_and_its_connection(
    served: Served,
) -> None:
    ctx = served.client_ctx
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", served.port, ssl=ctx, server_hostname="127.0.0.1"
    )
    writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200" in await reader.readline()
    await reader.readuntil(b"tick\n")
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()  # a reset, as a client killed mid-read

    async def gone() -> None:
        while "stream_error" not in served.seen or served.runner.server.connections:  # type: ignore[union-attr]
            await asyncio.sleep(0.02)

    await asyncio.wait_for(gone(), 10)


async def test_stopping_the_server_ends_an_open_stream(served: Served) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.get(served.url + "/stream", ssl=served.client_ctx) as r,
    ):
        assert await r.content.readline() == b"tick\n"
        await served.runner.cleanup()
        with pytest.raises(aiohttp.ClientPayloadError):
            await _read_to_end(r)
    # the port no longer listens
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", served.port), timeout=2).close()


async def _read_to_end(r: aiohttp.ClientResponse) -> None:
    while await r.content.readline():
        pass


def test_the_transport_is_chosen_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUIDFED_TLS_TRANSPORT", raising=False)
    assert tlsserve.use_socket_tls()
    monkeypatch.setenv("FLUIDFED_TLS_TRANSPORT", "loop")
    assert not tlsserve.use_socket_tls()
    monkeypatch.setenv("FLUIDFED_TLS_TRANSPORT", "kernel")
    with pytest.raises(FluidfedError, match=r"FLUIDFED_TLS_TRANSPORT='kernel'.*'socket'.*'loop'"):
        tlsserve.use_socket_tls()


async def test_a_taken_port_says_which_address(served: Served, ca: trustme.CA) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    runner = web.AppRunner(web.Application())
    await runner.setup()
    try:
        site = tlsserve.TLSSite(runner, "127.0.0.1", served.port, ssl_context=ctx)
        with pytest.raises(OSError, match=rf"'127.0.0.1', {served.port}\): address already in use"):
            await site.start()
    finally:
        await runner.cleanup()
