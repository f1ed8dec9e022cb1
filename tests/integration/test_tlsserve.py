"""fluidfed/tlsserve.py, the hub's HTTPS: an aiohttp app served over TLSSite on loopback,
met by real clients (aiohttp's, openssl s_client, and raw sockets for what a client may do
wrong), each test on both engines (rustls, OpenSSL on the sockets). These run on the
suite's asyncio loop; the hub and the workers run TLSSite on uvloop
in their own processes in test_hub_tls.py, test_data_tls.py and test_real_node.py."""

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fluidfed import tls, tlsserve
from fluidfed.errors import FluidfedError
from tests.unit.fluidfed.test_tlscheck import _cert, _usage

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
        self.ca_file = ""
        self.transport = ""  # the transport class the connections should be on


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
        kind = type(request.transport).__name__
        return web.Response(text=f"{request.scheme} {'cert' if der else 'none'} {kind}")

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

    async def ones(request: web.Request) -> web.StreamResponse:
        # n bytes of 0x01 (no text a client prints has one), in 64 KiB writes
        resp = web.StreamResponse()
        await resp.prepare(request)
        left = int(request.query["n"])
        while left:
            piece = min(left, 65536)
            await resp.write(b"\x01" * piece)
            left -= piece
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=4 * 2**20)
    app.router.add_get("/ones", ones)
    app.router.add_get("/big", big)
    app.router.add_post("/echo", echo)
    app.router.add_get("/who", who)
    app.router.add_get("/stream", stream)
    return app


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


TRANSPORTS = {"rustls": "RustlsTransport", "openssl": "OpenSSLTransport"}


@pytest.fixture(params=list(TRANSPORTS))
async def served(
    request: pytest.FixtureRequest, ca: trustme.CA, tmp_path: Path
) -> AsyncIterator[Served]:
    cert = ca.issue_cert("127.0.0.1")
    ctx = tls.ServerContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ctx.load_verify_locations(cafile=str(ca_file))
    ctx.verify_mode = ssl.CERT_OPTIONAL  # as the hub's with client_ca_file
    seen: dict[str, Any] = {}
    runner = web.AppRunner(_app(seen), handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    site = tlsserve.TLSSite(runner, "127.0.0.1", 0, ssl_context=ctx, engine=request.param)
    assert site.engine == request.param
    await site.start()
    s = Served(runner, site, ca)
    s.transport = TRANSPORTS[request.param]
    s.seen = seen
    s.ca_file = str(ca_file)
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
            assert await resp.text() == f"https none {served.transport}"


async def test_a_client_certificate_is_seen_by_the_handler(served: Served, ca: trustme.CA) -> None:
    # the client's own context, with a certificate of the CA the server trusts
    ca.issue_cert("agent-a").configure_cert(served.client_ctx)
    async with aiohttp.ClientSession() as s, s.get(served.url + "/who", ssl=served.client_ctx) as r:
        assert await r.text() == f"https cert {served.transport}"
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


def test_the_engine_is_chosen_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUIDFED_TLS_TRANSPORT", raising=False)
    assert tlsserve.tls_engine() == "rustls"  # the extension is built with the package
    for choice in ("openssl", "loop", "rustls"):
        monkeypatch.setenv("FLUIDFED_TLS_TRANSPORT", choice)
        assert tlsserve.tls_engine() == choice
    monkeypatch.setenv("FLUIDFED_TLS_TRANSPORT", "kernel")
    with pytest.raises(FluidfedError, match=r"'kernel'.*'rustls'.*'openssl'.*'loop'"):
        tlsserve.tls_engine()
    # without the extension: OpenSSL by default, and a clear refusal when rustls is asked for
    monkeypatch.setattr(tlsserve, "_rustls", None)
    monkeypatch.setattr(tlsserve, "_RUSTLS_MISSING", "no module named fluidfed._rustls")
    monkeypatch.setenv("FLUIDFED_TLS_TRANSPORT", "rustls")
    with pytest.raises(FluidfedError, match=r"does not load \(no module.*cargo.*=openssl"):
        tlsserve.tls_engine()
    monkeypatch.delenv("FLUIDFED_TLS_TRANSPORT")
    assert tlsserve.tls_engine() == "openssl"


async def test_a_taken_port_says_which_address(served: Served, ca: trustme.CA) -> None:
    ctx = tls.ServerContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    runner = web.AppRunner(web.Application())
    await runner.setup()
    try:
        site = tlsserve.TLSSite(runner, "127.0.0.1", served.port, ssl_context=ctx)
        with pytest.raises(OSError, match=rf"'127.0.0.1', {served.port}\): address already in use"):
            await site.start()
    finally:
        await runner.cleanup()


async def test_key_updates_while_a_response_waits_for_the_socket(served: Served) -> None:
    # a TLS 1.3 key update asks the server for one back: its answer must not be written
    # over a record OpenSSL is still sending to a slow reader (OpenSSL: BAD_LENGTH, the
    # connection dropped); `openssl s_client` sends one at each "K"
    n = 64 * 2**20
    proc = await asyncio.create_subprocess_exec(
        *("openssl", "s_client", "-connect", f"127.0.0.1:{served.port}", "-tls1_3"),
        *("-CAfile", served.ca_file, "-servername", "127.0.0.1"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"GET /ones?n={n} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())

    async def key_updates() -> None:
        assert proc.stdin is not None
        for _ in range(30):
            await asyncio.sleep(0.05)
            proc.stdin.write(b"K\n")
            await proc.stdin.drain()

    keys = asyncio.create_task(key_updates())
    got, updates, out = 0, 0, b""
    try:
        while got < n:
            chunk = await asyncio.wait_for(proc.stdout.read(65536), 30)
            if not chunk:
                break
            got += chunk.count(b"\x01")  # s_client's own report has none
            updates += (out[-16:] + chunk).count(b"KEYUPDATE")
            out = chunk
            await asyncio.sleep(0.002)  # a slow reader: the server's socket fills
    finally:
        keys.cancel()
        with contextlib.suppress(ProcessLookupError):  # it ends when the server closes
            proc.kill()
        await proc.wait()
    assert updates > 0  # s_client did send them
    assert got == n, f"{got} of {n} bytes"


async def test_a_client_that_sends_after_the_close_gets_the_whole_response(
    served: Served,
) -> None:
    # the server closes after a `Connection: close` response with most of it still in its
    # socket; the client then sends one more request: closing with that unread would reset
    # the connection and lose the end of the response
    n = 2 * 2**20
    ctx = served.client_ctx

    def client() -> int:
        raw = socket.create_connection(("127.0.0.1", served.port))
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(f"GET /ones?n={n} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            time.sleep(1)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.2)
            got = b""
            with contextlib.suppress(ssl.SSLError, OSError):
                while chunk := s.recv(65536):
                    got += chunk
            return got.count(b"\x01")

    assert await asyncio.to_thread(client) == n


async def test_clients_gone_before_the_handshake_do_not_reach_the_loop(served: Served) -> None:
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))

    def resets() -> None:
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", served.port))
            s.send(b"x")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # a reset

    await asyncio.to_thread(resets)
    async with aiohttp.ClientSession() as s, s.get(served.url + "/who", ssl=served.client_ctx) as r:
        assert await r.text() == f"https none {served.transport}"
    assert not errors, errors[:3]


async def test_a_closed_connection_whose_client_stopped_reading_goes_within_the_deadline(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tlsserve, "CLOSE_TIMEOUT", 0.5)

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = fds()
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", served.port))
    loop = asyncio.get_running_loop()
    tls = served.client_ctx.wrap_socket(
        raw, server_hostname="127.0.0.1", do_handshake_on_connect=False
    )
    await asyncio.to_thread(tls.do_handshake)
    tls.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        while "streaming" not in served.seen:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # the client reads nothing: the server's socket fills
        assert fds() == before + 2  # the client's socket and the server's
        await served.runner.cleanup()
        deadline = loop.time() + 10
        while fds() > before + 1 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert fds() == before + 1  # the server's is closed; the client's alone is left
    finally:
        tls.close()


async def _serve(ctx: ssl.SSLContext, engine: str) -> tuple[web.AppRunner, tlsserve.TLSSite, int]:
    runner = web.AppRunner(_app({}), handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    site = tlsserve.TLSSite(runner, "127.0.0.1", 0, ssl_context=ctx, engine=engine)
    await site.start()
    return runner, site, runner.addresses[0][1]


def _server_certificate(port: int, ctx: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        der = s.getpeercert(binary_form=True)
        assert der is not None
        return der


@pytest.mark.parametrize("engine", list(TRANSPORTS))
async def test_a_certificate_loaded_again_reaches_new_connections(
    ca: trustme.CA, engine: str
) -> None:
    # rotation: a Secret volume's new pair loaded into the live context (tls.Served.reload,
    # the webhook's CertManager); rustls builds its configuration again for the new pair
    first, second = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    ctx = tls.ServerContext(ssl.PROTOCOL_TLS_SERVER)
    first.configure_cert(ctx)
    runner, _, port = await _serve(ctx, engine)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    try:
        seen = await asyncio.to_thread(_server_certificate, port, client)
        assert seen == ssl.PEM_cert_to_DER_cert(first.cert_chain_pems[0].bytes().decode())
        second.configure_cert(ctx)
        seen = await asyncio.to_thread(_server_certificate, port, client)
        assert seen == ssl.PEM_cert_to_DER_cert(second.cert_chain_pems[0].bytes().decode())
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("engine", list(TRANSPORTS))
async def test_a_required_client_certificate_is_required(
    ca: trustme.CA, tmp_path: Path, engine: str
) -> None:
    ctx = tls.ServerContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ctx.load_verify_locations(cafile=str(tmp_path / "ca.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    runner, _, port = await _serve(ctx, engine)
    url = f"https://127.0.0.1:{port}/who"
    client = ssl.create_default_context()
    ca.configure_trust(client)
    try:
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.ClientError):
                async with s.get(url, ssl=client) as r:
                    await r.text()
            ca.issue_cert("agent-a").configure_cert(client)
            async with s.get(url, ssl=client) as r:
                assert await r.text() == f"https cert {TRANSPORTS[engine]}"
    finally:
        await runner.cleanup()


def _client_files(tmp_path: Path, chain: list[x509.Certificate], key: Any) -> None:
    """client.crt (the chain as sent) and client.key in `tmp_path`."""
    pem = serialization.Encoding.PEM
    (tmp_path / "client.crt").write_bytes(b"".join(c.public_bytes(pem) for c in chain))
    (tmp_path / "client.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _trusting(ca: trustme.CA, root: x509.Certificate, mode: ssl.VerifyMode) -> ssl.SSLContext:
    """A server context with a certificate from `ca`, asking clients for one from `root`."""
    ctx = tls.ServerContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ctx.load_verify_locations(cadata=root.public_bytes(serialization.Encoding.PEM).decode())
    ctx.verify_mode = mode
    return ctx


@pytest.mark.parametrize("engine", list(TRANSPORTS))
async def test_a_client_certificate_not_for_tls_is_refused_on_both_engines(
    ca: trustme.CA, tmp_path: Path, engine: str
) -> None:
    """rustls's verification does not look at keyUsage: the check after its handshake
    refuses a client certificate OpenSSL refuses, before anything is served."""
    root, root_key = _cert("client CA")
    client_cert, client_key = _cert(
        "agent-a", issuer=(root.subject, root_key), ca=False, usage=_usage(signature=False)
    )
    _client_files(tmp_path, [client_cert], client_key)
    ctx = _trusting(ca, root, ssl.CERT_OPTIONAL)
    runner, _, port = await _serve(ctx, engine)
    url = f"https://127.0.0.1:{port}/who"
    client = ssl.create_default_context()
    ca.configure_trust(client)
    try:
        async with aiohttp.ClientSession() as s, s.get(url, ssl=client) as r:
            assert await r.text() == f"https none {TRANSPORTS[engine]}"  # no certificate
        client.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
        async with aiohttp.ClientSession() as s:  # a new connection, with the certificate
            with pytest.raises(aiohttp.ClientError):
                async with s.get(url, ssl=client) as r:
                    await r.text()
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("engine", list(TRANSPORTS))
async def test_a_client_bundle_with_cas_off_the_path_is_served_on_both_engines(
    ca: trustme.CA, tmp_path: Path, engine: str
) -> None:
    """A client certificate file carrying CAs besides its path (a stray certificate that
    is no CA at all): OpenSSL never looks at them, nor does the check after rustls's
    handshake."""
    root, root_key = _cert("client CA", path_length=1)
    mid, mid_key = _cert("client intermediate", issuer=(root.subject, root_key))
    client_cert, client_key = _cert(
        "agent-a", issuer=(mid.subject, mid_key), ca=False, usage=_usage()
    )
    stray, _ = _cert("stray", issuer=(root.subject, root_key), ca=False, usage=_usage())
    other, _ = _cert("another intermediate", issuer=(root.subject, root_key))
    _client_files(tmp_path, [client_cert, mid, stray, other], client_key)
    ctx = _trusting(ca, root, ssl.CERT_REQUIRED)
    runner, _, port = await _serve(ctx, engine)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"https://127.0.0.1:{port}/who", ssl=client) as r,
        ):
            assert await r.text() == f"https cert {TRANSPORTS[engine]}"
    finally:
        await runner.cleanup()


async def test_a_context_rustls_cannot_serve_is_served_with_openssl(
    ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a key with a password: OpenSSL takes it, rustls takes none; so does a plain SSLContext
    # (no PEM kept): both serve, with OpenSSL, and the log says why
    cert = ca.issue_cert("127.0.0.1")
    key = cert.private_key_pem.bytes()

    locked = serialization.load_pem_private_key(key, None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "key.pem").write_bytes(locked)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    with_password = tls.ServerContext(ssl.PROTOCOL_TLS_SERVER)
    with_password.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem", password=b"secret")
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(plain)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    tlsserve._said.clear()
    for ctx in (with_password, plain):
        runner, site, port = await _serve(ctx, "rustls")
        try:
            assert site.engine == "openssl"
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"https://127.0.0.1:{port}/who", ssl=client) as r,
            ):
                assert await r.text() == "https none OpenSSLTransport"
        finally:
            await runner.cleanup()
    assert "not one" in caplog.text  # the plain context's reason


class MemoryClient:
    """A client whose records are made in memory (ssl.MemoryBIO), so the test decides which
    of them share a TCP segment: after the handshake, the client's Finished is still to be
    sent (with what the test writes next, or by `send`)."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.raw = socket.create_connection(("127.0.0.1", port))
        self.raw.settimeout(5)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.send()
                self.incoming.write(self.raw.recv(65536))

    def send(self) -> None:
        """What the client's TLS made so far, in one segment."""
        self.raw.sendall(self.outgoing.read())


async def test_a_close_that_comes_with_a_request_is_seen(served: Served) -> None:
    # the request and the client's close_notify in one segment, the client then waiting for
    # the server's close (as Python's unwrap): read together, the close must not be lost
    # behind the request (the server kept the connection for its keep-alive)
    def client() -> tuple[bytes, str]:
        c = MemoryClient(served.port, served.client_ctx)
        c.send()
        time.sleep(0.2)  # the server's session tickets arrive
        c.obj.write(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(ssl.SSLWantReadError):
            c.obj.unwrap()
        c.send()
        got = b""
        try:
            while data := c.raw.recv(65536):
                c.incoming.write(data)
                try:
                    while chunk := c.obj.read(65536):
                        got += chunk
                except ssl.SSLWantReadError:
                    continue
                except ssl.SSLZeroReturnError:  # the server's close_notify
                    break
            return got, "closed"
        except TimeoutError:
            return got, "still open after 5 s"
        finally:
            c.raw.close()

    got, end = await asyncio.to_thread(client)
    # (aiohttp drops a request whose client closed: what matters is that it hears the close)
    assert end == "closed", (got[:40], end)


@pytest.mark.parametrize("engine", list(TRANSPORTS))
async def test_a_request_that_came_with_the_handshake_waits_out_a_pause(
    ca: trustme.CA, engine: str
) -> None:
    # the client's Finished and its request in one segment: decrypted with the handshake,
    # it is in the engine's hands, not the socket's; a protocol that pauses reading at
    # once must get it when it resumes, with no readiness of the socket to say so
    got: list[bytes] = []

    class PausesFirst(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transport.pause_reading()
            asyncio.get_running_loop().call_later(0.3, transport.resume_reading)

        def data_received(self, data: bytes) -> None:
            got.append(data)

    ctx = tls.ServerContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    listener = tlsserve._Listener(asyncio.get_running_loop(), sock, ctx, PausesFirst, engine)

    def client() -> socket.socket:
        c = MemoryClient(sock.getsockname()[1], client_ctx)
        c.obj.write(b"hello")
        c.send()  # Finished and the request: one segment
        return c.raw

    raw = await asyncio.to_thread(client)
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while not got and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert b"".join(got) == b"hello"
    finally:
        raw.close()
        listener.close()


@pytest.mark.parametrize("engine", list(TRANSPORTS))
async def test_the_context_s_versions_are_served(ca: trustme.CA, engine: str) -> None:
    ctx = tls.ServerContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    runner, site, port = await _serve(ctx, engine)
    assert site.engine == engine
    old = ssl.create_default_context()
    ca.configure_trust(old)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
            await asyncio.to_thread(_server_certificate, port, old)
        old.maximum_version = ssl.TLSVersion.TLSv1_3
        assert await asyncio.to_thread(_server_certificate, port, old)
    finally:
        await runner.cleanup()
