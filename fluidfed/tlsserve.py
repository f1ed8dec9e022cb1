"""HTTPS for an aiohttp server with each record encrypted and written to its socket in one
call.

The event loop's own TLS (asyncio's and uvloop's `SSLProtocol`) runs OpenSSL on memory
buffers: every write encrypts into a memory BIO, reads the record back out as a new bytes
object, and hands that to the TCP transport. For a server that sends small writes to many
connections (the hub's watch streams: one binding event, one ~250-byte record, to each of
thousands of agents) that round trip is most of what TLS costs. Here a connection's TLS
writes its records straight to the socket, with one of two engines:

* `rustls` (the default): rustls through fluidfed's own extension (`native/tls`, built with
  the package: `fluidfed._rustls`); a write is one call that encrypts and sends. What a
  300-byte line costs the server beyond a plain `send`: 0.13 µs of CPU on rustls against
  0.69 on OpenSSL 3.0 through Python's `ssl` (one connection), 1.2 against 3.6 among 5,000
  (`bench/tls_engines.py`).
* `openssl`: an `ssl.SSLSocket` per connection (OpenSSL's socket BIO); a write is one
  `SSL_write`. What serves a context rustls cannot (a key with a password), and the
  fallback where the extension is not built.

The hub's fan-out to 5,000 agents (bench/hub_fanout.py): TLS adds 1.0 µs of the hub's CPU
per delivered binding on rustls, 6.9 on OpenSSL on the sockets, 11.75 on the loop's TLS,
to the 26-27 µs of plain HTTP (README, "Measured design decisions").

`TLSSite` is an aiohttp site like `web.TCPSite(..., ssl_context=...)`; the transport it
gives each connection is an `asyncio.Transport` with flow control both ways, a handshake
deadline, and `get_extra_info("ssl_object")` for the peer's certificate. `site()` picks it
for every fluidfed server that serves TLS (the hub, the cache workers, the agent's API and
webhook). `FLUIDFED_TLS_TRANSPORT` chooses: `rustls`, `openssl`, or `loop` (the event loop's
TLS). The serving context must be a `fluidfed.tls.ServerContext` for rustls (it keeps the
PEM rustls is built from); another context is served with OpenSSL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import ssl
import time
from typing import Any, NamedTuple

from aiohttp import web
from aiohttp.web_runner import BaseSite

from fluidfed import tlscheck
from fluidfed.errors import SCARCE, FluidfedError
from fluidfed.tls import ServerContext

try:
    from fluidfed import _rustls
except ImportError as err:  # the package was installed without its Rust extension
    _rustls = None  # type: ignore[assignment]  # (tls_engine() says so)
    _RUSTLS_MISSING = str(err)
    _TLS_ERRORS: tuple[type[Exception], ...] = (OSError, ssl.SSLError)
else:
    _RUSTLS_MISSING = ""
    _TLS_ERRORS = (OSError, ssl.SSLError, _rustls.TLSError)

_ACCEPT_ERRORS: tuple[type[Exception], ...] = (*_TLS_ERRORS, ValueError)

log = logging.getLogger("fluidfed.tls")

HANDSHAKE_TIMEOUT = 60.0  # seconds, as asyncio's default ssl_handshake_timeout
READ_SIZE = 64 * 1024  # one SSL_read returns one record (16 KiB at most)
READS_PER_WAKE = 16  # then back to the loop: a busy peer does not starve the others
HIGH_WATER = 64 * 1024
CLOSE_TIMEOUT = 30.0  # seconds a closing connection may take to send what it holds, and
# then to hear the peer's close (as asyncio's ssl_shutdown_timeout)
ACCEPTS_PER_WAKE = 16  # each runs the handshake's first step: a burst does not stall the loop
ACCEPT_PAUSE = 1.0  # seconds without accepting after the process ran out of descriptors
ENGINES = ("rustls", "openssl", "loop")
DONE, WANT_READ, WANT_WRITE = 0, 1, 2  # a handshake step's outcome (as fluidfed._rustls's)


def tls_engine() -> str:
    """The TLS engine FLUIDFED_TLS_TRANSPORT names: rustls (the default), openssl, or loop
    (the event loop's TLS). The default is openssl where the rustls extension is missing,
    said once in the log."""
    choice = os.environ.get("FLUIDFED_TLS_TRANSPORT", "")
    if choice and choice not in ENGINES:
        raise FluidfedError(
            f"FLUIDFED_TLS_TRANSPORT={choice!r} in the environment: set it to 'rustls' (the "
            "default), 'openssl' (OpenSSL on the sockets) or 'loop' (the event loop's TLS), "
            "or unset it"
        )
    if choice == "rustls" and _rustls is None:
        raise FluidfedError(
            f"FLUIDFED_TLS_TRANSPORT=rustls, but fluidfed's rustls extension does not load "
            f"({_RUSTLS_MISSING}): install fluidfed with Rust's cargo on the PATH "
            "(scripts/setup), or set FLUIDFED_TLS_TRANSPORT=openssl"
        )
    if not choice:
        if _rustls is None:
            say_once(
                "TLS with OpenSSL: fluidfed's rustls extension does not load (%s); install "
                "fluidfed with Rust's cargo on the PATH for TLS on rustls",
                _RUSTLS_MISSING,
            )
            return "openssl"
        return "rustls"
    return choice


def rustls_module() -> Any:
    """fluidfed's rustls extension, or None where the package was built without it."""
    return _rustls


_said: set[str] = set()


def say_once(msg: str, *args: Any) -> None:
    if msg not in _said:
        _said.add(msg)
        log.warning(msg, *args)


def versions(ctx: ssl.SSLContext) -> tuple[bool, bool]:
    """Whether `ctx` allows TLS 1.2, and 1.3 (rustls has no older one): its minimum and
    maximum versions, and the OP_NO_TLSv1_2/OP_NO_TLSv1_3 options."""
    # MINIMUM_SUPPORTED and MAXIMUM_SUPPORTED are negative sentinels, not versions
    low, high = ctx.minimum_version, ctx.maximum_version
    low = ssl.TLSVersion.TLSv1_2 if low == ssl.TLSVersion.MINIMUM_SUPPORTED else low
    high = ssl.TLSVersion.TLSv1_3 if high == ssl.TLSVersion.MAXIMUM_SUPPORTED else high
    tls12 = low <= ssl.TLSVersion.TLSv1_2 <= high and not ctx.options & ssl.OP_NO_TLSv1_2
    tls13 = low <= ssl.TLSVersion.TLSv1_3 <= high and not ctx.options & ssl.OP_NO_TLSv1_3
    return tls12, tls13


def site(
    runner: web.BaseRunner,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    *,
    reuse_address: bool = True,
) -> web.BaseSite:
    """The site every fluidfed server listens with: `TLSSite` when it serves TLS (unless
    FLUIDFED_TLS_TRANSPORT=loop), else aiohttp's `TCPSite`."""
    if ssl_context is not None:
        chosen = tls_engine()
        if chosen != "loop":
            return TLSSite(
                runner, host, port, ssl_context=ssl_context, reuse_address=reuse_address,
                engine=chosen,
            )  # fmt: skip
    return web.TCPSite(runner, host, port, reuse_address=reuse_address, ssl_context=ssl_context)


class _Served(NamedTuple):
    """What a connection on rustls is served with: rustls's configuration, and what
    `tlscheck.chain_problem` checks a client's certificate chain against (None: clients
    are not verified)."""

    config: Any
    checks: tlscheck.Checks | None


def _rustls_config(ctx: ssl.SSLContext) -> _Served | None:
    """The rustls configuration serving what `ctx` serves (built again after each load into
    it, a rotated certificate, or a change of its verification or versions, and when a
    client CA expires or begins), or None where rustls cannot serve it as OpenSSL would,
    said in the log. Called at each accept: the configuration built is kept on the context
    with the state it was built from."""
    if _rustls is None:
        return None
    if not isinstance(ctx, ServerContext) or ctx.pem is None:
        say_once(
            "serving TLS with OpenSSL: rustls serves a fluidfed.tls.ServerContext with a "
            "certificate and a key without a password, and this context is not one"
        )
        return None
    state = (
        ctx.generation, ctx.verify_mode, ctx.verify_flags, ctx.options, ctx.minimum_version,
        ctx.maximum_version,
    )  # fmt: skip
    now = time.time()
    found, kept = ctx.engine_kept(state, now)
    if found:
        return kept  # type: ignore[no-any-return]
    verify = ctx.verify_mode != ssl.CERT_NONE
    served: _Served | None = None
    problem, valid_from, valid_until = "", *tlscheck.NO_CHANGE
    if verify and (ctx.unrecorded_cas or not ctx.ca_pem):
        problem = (
            "its clients are verified against CAs rustls was not given (a capath directory, "
            "the system's) or none"
        )
    elif verify and ctx.verify_flags & ~tlscheck.RUSTLS_FLAGS:
        problem = (
            f"its verify_flags ({ctx.verify_flags!r}) ask for checks rustls does not make "
            "(CRLs, strict X.509)"
        )
    elif verify:
        partial = bool(ctx.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN)
        problem, valid_from, valid_until = tlscheck.anchors_problem(
            ctx.ca_pem, now, partial=partial, purpose="client"
        )
    if problem:
        say_once("serving TLS with OpenSSL: %s", problem)
    else:
        chain, key = ctx.pem
        try:
            config = _rustls.ServerConfig(
                chain, key, ctx.ca_pem if verify else None,
                ctx.verify_mode == ssl.CERT_REQUIRED, *versions(ctx),
            )  # fmt: skip
            served = _Served(config, tlscheck.checks_for(ctx.ca_pem) if verify else None)
        except ValueError as err:
            log.warning("serving TLS with OpenSSL: rustls does not take this context (%s)", err)
    ctx.engine_keep(state, served, (valid_from, valid_until))
    return served


class _Transport(asyncio.Transport):
    """What both engines' transports share: one server-side TLS connection, its handshake
    done, driven by the loop's readiness callbacks on its descriptor; flow control both
    ways; a close that sends what is held, then close_notify, then reads the peer away."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: asyncio.Protocol
    ) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._pending: collections.deque[bytes | memoryview] = collections.deque()
        self._pending_size = 0
        self._high = HIGH_WATER
        self._low = HIGH_WATER // 4
        self._writing_paused = False  # the protocol's writing, by our flow control
        self._reading_paused = False  # our reading, by the protocol
        self._reader = False
        self._writer = False
        self._closing = False
        self._lost = False
        self._close_timer: asyncio.TimerHandle | None = None
        protocol.connection_made(self)
        self._watch_read()
        # a request sent with the handshake's last flight may already be in: read it now
        loop.call_soon(self._read_ready)

    def _read_ready(self) -> None:
        raise NotImplementedError

    def _write_ready(self) -> None:
        raise NotImplementedError

    def _holds_writes(self) -> bool:
        return bool(self._pending)

    def _close_notify(self) -> None:
        raise NotImplementedError

    # --- the descriptor's callbacks

    def _watch_read(self) -> None:
        if not self._reader and not self._reading_paused and not self._closing:
            self._loop.add_reader(self._fd, self._read_ready)
            self._reader = True

    def _unwatch_read(self) -> None:
        if self._reader:
            self._loop.remove_reader(self._fd)
            self._reader = False

    def _watch_write(self) -> None:
        if not self._writer:
            self._loop.add_writer(self._fd, self._write_ready)
            self._writer = True

    def _unwatch_write(self) -> None:
        if self._writer:
            self._loop.remove_writer(self._fd)
            self._writer = False

    def _deliver(self, data: bytes) -> None:
        if not data:  # the peer closed (close_notify, or the TCP connection)
            self._unwatch_read()
            if not self._protocol.eof_received():
                self.close()
            return
        try:
            self._protocol.data_received(data)
        except Exception as err:  # the protocol's fault: the connection goes, not the loop
            log.exception("a protocol failed on data received")
            self._fatal(err)

    def _drained(self) -> None:
        """All that was held went to the socket: the close that waited for it goes on, or
        reading (if a write held it back) and the writer resume."""
        self._unwatch_write()
        if self._closing:
            self._shutdown(None)
            return
        self._watch_read()
        self._maybe_resume_writing()

    def _maybe_resume_writing(self) -> None:
        if self._writing_paused and self._pending_size <= self._low:
            self._writing_paused = False
            self._protocol.resume_writing()

    def _queue(self, chunk: bytes | memoryview) -> None:
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        self._watch_write()
        if not self._writing_paused and self._pending_size > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    # --- asyncio.Transport

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a TLS connection has no half-close")

    def get_write_buffer_size(self) -> int:
        return self._pending_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low

    def pause_reading(self) -> None:
        self._reading_paused = True
        self._unwatch_read()

    def is_reading(self) -> bool:
        return self._reader

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; send what is buffered, then close_notify, then close."""
        if self._closing:
            return
        self._closing = True
        self._unwatch_read()
        if not self._holds_writes():
            self._shutdown(None)
        else:  # a peer that stopped reading does not keep it open for ever
            self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, self.abort)

    def abort(self) -> None:
        self._closing = True
        self._shutdown(None, flush=False)

    def _fatal(self, err: Exception) -> None:
        self._closing = True
        self._shutdown(err, flush=False)

    def _shutdown(self, err: Exception | None, *, flush: bool = True) -> None:
        if self._lost:
            return
        self._lost = True
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._unwatch_read()
        self._unwatch_write()
        self._pending.clear()
        self._pending_size = 0
        linger = False
        if flush:
            # our close_notify (best effort), then what the peer still sends is read away
            # until it closes: a close with bytes unread resets the connection, and a reset
            # throws away the end of the response still in the kernel's send buffer
            self._close_notify()
            linger = True
        self._loop.call_soon(self._connection_lost, err, linger)

    def _connection_lost(self, err: Exception | None, linger: bool) -> None:
        try:
            self._protocol.connection_lost(err)
        finally:
            if linger:
                _Linger(self._loop, self._sock)
            else:
                self._sock.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        try:
            if name == "peername":
                return self._sock.getpeername()
            if name == "sockname":
                return self._sock.getsockname()
            return self._extra_info(name, default)
        except (OSError, ValueError):
            return default

    def _extra_info(self, name: str, default: Any) -> Any:
        return default


class OpenSSLTransport(_Transport):
    """A connection on an `ssl.SSLSocket`: OpenSSL's socket BIO. What SSL_write has not
    taken yet waits in `_pending`; after a WantWrite its first item goes again as it is
    (OpenSSL asks for the same bytes), so it is never joined with the next."""

    _sock: ssl.SSLSocket

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket, protocol: asyncio.Protocol
    ) -> None:
        self._read_needs_write = False  # an SSL_read that must send first (a key update)
        self._held: list[bytes] = []  # read while the protocol paused reading (_finish_read)
        super().__init__(loop, sock, protocol)

    # OpenSSL takes one operation at a time on a connection: an SSL_write that said
    # WantWrite must be finished (the same bytes again) before an SSL_read, which may have
    # to send too (the answer to a TLS 1.3 key update) and would write over it (BAD_LENGTH);
    # and an SSL_read that said WantWrite must be done again before any SSL_write. So
    # nothing is read while a write waits for the socket, and nothing written while such a
    # read does (HTTP/1.1 reads the next request after the response anyway).

    def _read_ready(self) -> None:
        for _ in range(READS_PER_WAKE):
            if self._reading_paused or self._closing:
                return
            if self._pending and not self._read_needs_write:  # a write waits: read after it
                self._unwatch_read()
                return
            try:
                data = self._sock.recv(READ_SIZE)
            except ssl.SSLWantReadError:
                self._read_needs_write = False
                return
            except ssl.SSLWantWriteError:
                self._read_needs_write = True
                self._unwatch_read()
                self._watch_write()
                return
            except (OSError, ssl.SSLError) as err:
                self._fatal(err)
                return
            self._read_needs_write = False
            self._deliver(data)
            if not data or self._lost:
                return
        if self._sock.pending():  # decrypted bytes OpenSSL holds: no readiness for those
            self._loop.call_soon(self._read_ready)

    def _write_ready(self) -> None:
        if self._read_needs_write:
            self._finish_read()  # the read's own write goes out first
            if self._read_needs_write or self._lost:
                return
        try:
            while self._pending:
                self._send(self._pending[0])
                self._pending_size -= len(self._pending.popleft())
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            self._maybe_resume_writing()
            return  # the loop calls again once the socket takes more
        except (OSError, ssl.SSLError) as err:
            self._fatal(err)
            return
        self._drained()

    def _finish_read(self) -> None:
        """The SSL_read that wanted to write, again (whether or not reading is paused or
        the connection closing: OpenSSL needs it done before the next SSL_write). What it
        reads waits for `resume_reading` if reading is paused, and is dropped if closing."""
        try:
            data = self._sock.recv(READ_SIZE)
        except ssl.SSLWantWriteError:
            return  # still: the loop calls _write_ready again once the socket takes more
        except ssl.SSLWantReadError:
            data = None
        except (OSError, ssl.SSLError) as err:
            self._fatal(err)
            return
        self._read_needs_write = False
        if self._closing:
            return
        if data is not None and self._reading_paused:
            self._held.append(data)
        elif data is not None:
            self._deliver(data)
        if not self._reading_paused and not self._lost:
            self._watch_read()
            self._loop.call_soon(self._read_ready)

    def _send(self, data: bytes | memoryview) -> None:
        """All of `data` through SSL_write, or SSLWantWriteError with OpenSSL holding its
        progress (to be called again with the same bytes)."""
        sent = self._sock.send(data)
        if sent < len(data):  # a partial write, should OpenSSL report one: keep the rest
            self._pending_size -= sent
            self._pending[0] = data[sent:]
            raise ssl.SSLWantWriteError()

    # --- asyncio.Transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if self._pending or self._read_needs_write:  # behind what waits for the socket
            self._queue(bytes(data))
            return
        try:
            sent = self._sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            self._queue(bytes(data))  # OpenSSL keeps its progress: it wants the same bytes
            return
        except (OSError, ssl.SSLError) as err:
            self._fatal(err)
            return
        if sent < len(data):  # a partial write, should OpenSSL report one: the rest waits
            self._queue(bytes(data[sent:]))

    def resume_reading(self) -> None:
        if not self._reading_paused or self._closing:
            return
        self._reading_paused = False
        held, self._held = self._held, []
        for at, data in enumerate(held):
            self._deliver(data)
            if self._closing or self._reading_paused:  # paused again: the rest waits
                self._held = held[at + 1 :] if self._reading_paused else []
                return
        self._watch_read()
        if self._sock.pending():  # decrypted bytes OpenSSL holds: no readiness for those
            self._loop.call_soon(self._read_ready)

    def _close_notify(self) -> None:
        with contextlib.suppress(OSError, ValueError, ssl.SSLError):
            self._sock.unwrap()

    def _extra_info(self, name: str, default: Any) -> Any:
        sock = self._sock
        if name in ("socket", "ssl_object"):
            return sock
        if name == "sslcontext":
            return sock.context
        if name == "peercert":
            return sock.getpeercert()
        if name == "cipher":
            return sock.cipher()
        if name == "compression":
            return sock.compression()
        return default


class RustlsTransport(_Transport):
    """A connection on rustls (`fluidfed._rustls.Conn`), the socket's descriptor its own.
    rustls reads and writes independently (the answer to a TLS 1.3 key update goes with
    the next write), holds up to 64 KiB of records the socket did not take, and takes no
    more plaintext beyond that: the rest waits in `_pending`, counted for flow control."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        conn: Any,
        ctx: ssl.SSLContext,
        protocol: asyncio.Protocol,
    ) -> None:
        self._conn = conn
        self._ctx = ctx
        super().__init__(loop, sock, protocol)

    def _read_ready(self) -> None:
        # one call reads what the socket has, up to 256 KiB: the loop calls again while the
        # descriptor stays readable, and rustls keeps no plaintext back between calls
        if self._reading_paused or self._closing:
            return
        try:
            data = self._conn.read()
            if self._conn.wants_write():  # what a read had to send (an alert), not all sent
                self._watch_write()
        except _TLS_ERRORS as err:
            self._fatal(err)
            return
        if data is not None:
            self._deliver(data)
            if data and self._conn.eof():  # the close came with the data: say it next
                self._loop.call_soon(self._read_ready)

    def _write_ready(self) -> None:
        try:
            if not self._conn.flush():
                return  # the loop calls again once the socket takes more
            while self._pending:
                chunk = self._pending[0]
                rest = self._conn.write(chunk)
                if rest <= 0:
                    self._pending.popleft()
                    self._pending_size -= len(chunk)
                    if rest == 0:
                        continue
                else:  # (a view: a block's rest is not copied at each partial write)
                    self._pending[0] = memoryview(chunk)[len(chunk) - rest :]
                    self._pending_size -= len(chunk) - rest
                self._maybe_resume_writing()
                return
        except _TLS_ERRORS as err:
            self._fatal(err)
            return
        self._drained()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if self._pending:  # behind what waits for the socket
            self._queue(_kept(data, 0))
            return
        try:
            # 0: all of it is on its way; -1: taken, its records wait for the socket;
            # n > 0: its last n bytes were not taken (rustls holds its limit)
            rest = self._conn.write(data)
        except _TLS_ERRORS as err:
            self._fatal(err)
            return
        if rest > 0:
            self._queue(_kept(data, len(memoryview(data).cast("B")) - rest))
        elif rest:
            self._watch_write()

    def _holds_writes(self) -> bool:
        return bool(self._pending) or self._conn.wants_write()

    def resume_reading(self) -> None:
        if not self._reading_paused or self._closing:
            return
        self._reading_paused = False
        self._watch_read()
        # what rustls decrypted before the pause (a request that came with the handshake's
        # last flight, a close that came with data) has no readiness of its own
        self._loop.call_soon(self._read_ready)

    def _close_notify(self) -> None:
        with contextlib.suppress(*_TLS_ERRORS):
            self._conn.close_notify()

    def _extra_info(self, name: str, default: Any) -> Any:
        if name == "ssl_object":
            return _PeerView(self._conn)
        if name == "socket":
            return self._sock
        if name == "sslcontext":
            return self._ctx
        if name == "cipher":
            return (self._conn.cipher(), self._conn.version(), None)
        return default


def _kept(data: bytes | bytearray | memoryview, start: int) -> bytes | memoryview:
    """`data[start:]` to keep after write() returns: a view of bytes (they cannot change),
    a copy of anything else (the caller may reuse its buffer)."""
    if isinstance(data, bytes):
        return memoryview(data)[start:] if start else data
    return bytes(memoryview(data).cast("B")[start:])


class _PeerView:
    """`get_extra_info("ssl_object")` on the rustls engine: what fluidfed reads of an
    `ssl.SSLObject` (the hub's mutual TLS reads the client's certificate, DER)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        if not binary_form:
            raise ValueError(
                "the rustls TLS engine gives the peer's certificate as DER only: "
                "getpeercert(binary_form=True)"
            )
        cert: bytes | None = self._conn.peer_certificate()
        return cert

    def version(self) -> str | None:
        version: str | None = self._conn.version()
        return version

    def cipher(self) -> tuple[str | None, str | None, None]:
        return (self._conn.cipher(), self._conn.version(), None)


class _Linger:
    """A closed connection's descriptor kept until the peer closes its side (its bytes read
    and dropped unencrypted) or CLOSE_TIMEOUT passes, then closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        if self._fd < 0:
            return
        self._timer = loop.call_later(CLOSE_TIMEOUT, self._close)
        loop.add_reader(self._fd, self._drain)

    def _drain(self) -> None:
        if _read_away(self._fd):
            self._close()

    def _close(self) -> None:
        if self._sock.fileno() >= 0:
            self._timer.cancel()
            self._loop.remove_reader(self._fd)
            self._sock.close()


def _read_away(fd: int) -> bool:
    """Read and drop what the peer has sent (raw bytes, some reads' worth): whether it has
    closed its side, or the connection failed (nothing more will come)."""
    try:
        for _ in range(READS_PER_WAKE):
            if not os.read(fd, READ_SIZE):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    return False


class _OpenSSLHandshake:
    def __init__(self, ctx: ssl.SSLContext, conn: socket.socket) -> None:
        self.sock = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)

    def step(self) -> int:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            return WANT_READ
        except ssl.SSLWantWriteError:
            return WANT_WRITE
        return DONE

    def transport(self, loop: asyncio.AbstractEventLoop, protocol: Any) -> _Transport:
        return OpenSSLTransport(loop, self.sock, protocol)


class _RustlsHandshake:
    def __init__(self, ctx: ssl.SSLContext, served: _Served, conn: socket.socket) -> None:
        self.ctx = ctx
        self.sock = conn
        assert _rustls is not None
        self.conn = _rustls.Conn(served.config, conn.fileno())
        self.checks = served.checks

    def step(self) -> int:
        done: int = self.conn.handshake()
        if done == DONE and self.checks is not None:
            # what OpenSSL checks in a client's chain and rustls does not, before the
            # connection serves anything (no certificate: rustls's to allow or refuse)
            chain = self.conn.peer_chain()
            problem = tlscheck.chain_problem(chain, self.checks, purpose="client") if chain else ""
            if problem:
                assert _rustls is not None
                raise _rustls.TLSError(f"the client's certificate: {problem}")
        return done

    def transport(self, loop: asyncio.AbstractEventLoop, protocol: Any) -> _Transport:
        return RustlsTransport(loop, self.sock, self.conn, self.ctx, protocol)


class _Listener:
    """The listening socket: accepts, handshakes each connection without blocking the loop
    (within HANDSHAKE_TIMEOUT), then hands it to a protocol over the engine's transport."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        ctx: ssl.SSLContext,
        factory: Any,
        engine: str,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._ctx = ctx
        self._factory = factory
        self._engine = engine
        self._handshaking: dict[
            int, tuple[_OpenSSLHandshake | _RustlsHandshake, asyncio.TimerHandle]
        ] = {}
        self.sockets = [sock]
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as err:
                if err.errno not in SCARCE:
                    log.warning("accepting a connection failed: %s", err)
                    return
                # out of descriptors: the backlog waits, and the loop does not spin on it
                log.warning("accepting connections paused for %.0f s: %s", ACCEPT_PAUSE, err)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(ACCEPT_PAUSE, self._resume_accepting)
                return
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                config = _rustls_config(self._ctx) if self._engine == "rustls" else None
                if config is not None:
                    hs: _OpenSSLHandshake | _RustlsHandshake = _RustlsHandshake(
                        self._ctx, config, conn
                    )
                else:
                    hs = _OpenSSLHandshake(self._ctx, conn)
            except _ACCEPT_ERRORS as err:  # a client already gone, or resetting
                log.debug("a connection went before its TLS began: %s", err)
                conn.close()
                continue
            fd = hs.sock.fileno()
            timer = self._loop.call_later(HANDSHAKE_TIMEOUT, self._give_up, fd)
            self._handshaking[fd] = (hs, timer)
            self._handshake(fd)

    def _resume_accepting(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def _handshake(self, fd: int) -> None:
        hs, timer = self._handshaking[fd]
        try:
            step = hs.step()
        except _TLS_ERRORS as err:  # not TLS, an untrusted client certificate
            log.debug("TLS handshake with a client failed: %s", err)
            self._drop(fd, drain=True)
            return
        if step == WANT_READ:
            self._loop.remove_writer(fd)
            self._loop.add_reader(fd, self._handshake, fd)
            return
        if step == WANT_WRITE:
            self._loop.remove_reader(fd)
            self._loop.add_writer(fd, self._handshake, fd)
            return
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        timer.cancel()
        del self._handshaking[fd]
        hs.transport(self._loop, self._factory())

    def _give_up(self, fd: int) -> None:
        log.debug("TLS handshake not done within %.0f s: connection closed", HANDSHAKE_TIMEOUT)
        self._drop(fd)

    def _drop(self, fd: int, *, drain: bool = False) -> None:
        hs, timer = self._handshaking.pop(fd)
        timer.cancel()
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        if drain:
            # what the client sent and OpenSSL refused (plain HTTP to this port, say): read
            # it away, or closing with it unread resets the connection, and the client sees
            # "connection reset" where a closed connection tells it the port speaks TLS
            _read_away(fd)
        hs.sock.close()

    def close(self) -> None:
        """Stop listening and drop the handshakes under way (established connections are
        the server's to close)."""
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        for fd in list(self._handshaking):
            self._drop(fd)


class TLSSite(BaseSite):
    """`web.TCPSite(runner, host, port, ssl_context=ctx)`, each record written to its socket
    by the engine: rustls, or OpenSSL (`tls_engine()`: FLUIDFED_TLS_TRANSPORT) by default."""

    __slots__ = ("_host", "_port", "_reuse_address", "engine")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        backlog: int = 4096,
        reuse_address: bool = True,
        engine: str = "",
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._reuse_address = reuse_address
        if engine in ("", "loop"):
            engine = tls_engine()
            engine = "openssl" if engine == "loop" else engine
        if engine not in ("rustls", "openssl"):
            raise ValueError(f"TLSSite serves with 'rustls' or 'openssl', not {engine!r}")
        if engine == "rustls" and _rustls_config(ssl_context) is None:
            engine = "openssl"  # (_rustls_config says why)
        self.engine = engine  # the engine its connections start on

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host or "0.0.0.0"
        return f"https://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        assert self._ssl_context is not None and self._runner.server is not None
        # as asyncio's create_server: one listening socket per address the host names
        # (both families for "localhost", every interface for "" or None)
        infos = await loop.getaddrinfo(
            self._host or None, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        listeners = []
        try:
            for family, kind, proto, _, addr in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                listeners.append(sock)
                if self._reuse_address:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(addr)
                except OSError as err:  # said as asyncio's create_server says it
                    raise OSError(
                        err.errno,
                        f"error while attempting to bind on address {addr!r}: "
                        f"{(err.strerror or str(err)).lower()}",
                    ) from None
                sock.listen(self._backlog)
                sock.setblocking(False)
        except OSError:
            for sock in listeners:
                sock.close()
            raise
        self._server = _Listeners(  # type: ignore[assignment]
            [
                _Listener(loop, sock, self._ssl_context, self._runner.server, self.engine)
                for sock in listeners
            ]
        )


class _Listeners:
    """What aiohttp's runner knows of a site's server: its sockets, and close."""

    def __init__(self, listeners: list[_Listener]) -> None:
        self._listeners = listeners
        self.sockets = [sock for one in listeners for sock in one.sockets]

    def close(self) -> None:
        for one in self._listeners:
            one.close()

    async def wait_closed(self) -> None:
        return None
