"""Receiving a block from a cache worker (or a large range of an S3 object, over a
presigned URL: `fluidfed.data.ufs`) into one buffer of its size, off the event loop.

`workers.get_block` over aiohttp cost the sidecar most of its CPU on a warm read from a
worker on another node: uvloop read the socket into its own buffer, aiohttp copied each
chunk into a new bytes object, and `read()` joined them (a second copy of the block),
every chunk a callback on the event loop. Here one GET runs in a thread on a blocking
socket: the response head is read and parsed by httptools (llhttp, the parser aiohttp
and uvicorn build on), then the body, its length known from Content-Length, is received
straight into a buffer of that size, the thread woken by the kernel once a MiB of it
waits (SO_RCVLOWAT; a blocking receive is woken for every few segments) while the event
loop and the GIL are free, then its CRC in the same thread (figures: README, "Measured
design decisions").

HTTP/1.1 on the wire, the worker unchanged (aiohttp). Connections are kept alive and
reused, at most `idle` idle ones per worker, each closed after `IDLE_FOR` seconds idle
(aiohttp's server closes them at 75). A block's buffer is handed to the caller read-only,
and used again for another block only once nothing references it (`Buffers`): the memory
tier and FUSE replies that keep it never see it change.

A small answer (a small file's block: `workers._large`) is not worth a thread hand-off,
so `Connections.get_on_loop` makes the same exchange on the event loop instead, over
connections of its own (`_LoopConn`, an `asyncio.BufferedProtocol`): the head read into a
page of scratch and parsed by httptools, the body received by the transport straight into
a buffer of its size, no aiohttp request, response or stream objects per block (figures:
README, "Measured design decisions"). Over TLS that is the loop's TLS, verified with the
caller's context, as aiohttp's was.

An https worker (the agent's workers serve TLS with their binding's certificate) is
received the same way over TLS verified with the caller's context: on rustls
(`fluidfed.tlsclient`) the body is decrypted into the buffer in one call, the GIL
released, each receive stopping at the request's deadline; where rustls cannot verify as
the context does (or FLUIDFED_TLS_TRANSPORT says openssl), over an `ssl` socket, which
hands over one record (16 KiB) per receive and keeps Python's own timeout on the socket
(see `_take`; figures: README, "Encryption" in "The data path").
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, cast

import httptools
from multidict import CIMultiDict
from yarl import URL

from fluidfed import errors, tlsclient, tlsserve
from fluidfed.data import blocks, heap
from fluidfed.validation import MAX_BLOCK_SIZE

MAX_BODY = MAX_BLOCK_SIZE  # the largest block a dataset may have
IDLE_FOR = 30.0  # seconds an idle connection is kept (the worker's server drops it at 75)
# bytes per read until the response head is complete: one page, so the head's read takes
# little of the body along (64 KiB did: a new 64 KiB bytes object per block and that much of
# the body copied twice; figures: README, "Measured design decisions")
HEAD_READ = 2**12
# a body's receiving thread is woken once this much of it waits in the socket: the
# receiver's CPU per GiB -25% over plain HTTP on loopback, 512 KiB to 2 MiB alike (figures:
# README, "Measured design decisions")
WAKE_EVERY = 2**20
WINDOW_AT_LEAST = 4 * WAKE_EVERY  # (see `_open_window`)
MAX_HEAD = 2**16  # a longer head is refused


# a function of an answer's headers and body length saying the sizes of the body's parts
SplitBy = Callable[[CIMultiDict[str], int], Sequence[int]]
_Split = tuple[int, ...] | SplitBy  # (the sizes themselves, or such a function)


class Answer(NamedTuple):
    status: int
    headers: CIMultiDict[str]
    body: blocks.Data
    crc: int  # of the body, when `checksum` was asked for and the status is 200 or 206; else -1
    # a body received in parts (`split`): the parts after `body`, each with its CRC as above
    rest: tuple[tuple[blocks.Data, int], ...] = ()


class Buffers:
    """Block buffers, used again once nothing holds them any more: a new buffer's pages
    are faults the kernel must serve and zero, page by page: 13-15% of the sidecar's CPU
    on a warm remote read in perf (malloc hands freed blocks back to the kernel).

    Every buffer handed out is tracked; one is reused only when the tracking list holds
    its last reference: a block in the memory tier, a slice in a FUSE reply, any view of
    it keeps it (every view holds its bytearray or mapping), so a buffer is never
    overwritten while still referenced. The `spare` unreferenced ones taken last are
    kept, and more while all held stays within the most bytes referenced at once lately
    (in this window of `idle` seconds or the one before); none after `idle` seconds
    without a block. A memory tier lets go of several blocks at once, and takes as many
    again as the next ones come: with 4 kept, half the blocks of a warm read came in new
    buffers; with 8, one in six of a 2 GiB read from another node. Kept within that peak,
    the process never holds more than it held moments ago, or `spare` buffers more.

    A buffer is handed out as a view of `n` bytes that starts on a page boundary (each
    buffer is a page longer than its block): a cache worker writes a block of 1 MiB or
    more to its disk with O_DIRECT straight from there, not through a copy into aligned
    memory (`blockfile`; 10% of a worker's CPU filling its cache, figures: README). A
    buffer of a huge page or more starts on a huge-page boundary and is made of huge pages
    where the kernel has them (`heap.huge`): a direct read or write of a block is then one
    request to the disk, not five."""

    def __init__(
        self, spare: int = 8, idle: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.spare = spare
        self.idle = idle
        self.reused = 0
        self._held: list[bytearray | mmap.mmap] = []  # (the last taken last)
        self._lock = threading.Lock()
        self._clock = clock
        self._last = 0.0
        # the most bytes referenced at once in this window of `idle` seconds and in the one
        # before (a window starts at a take `idle` or more after the one before started)
        self._peak = (0, 0)
        self._window = 0.0

    def take(self, n: int) -> memoryview:
        huge = n >= heap.HUGE  # (of huge pages: `heap.huge`; smaller ones from the heap)
        size = n + (heap.HUGE if huge else heap.PAGE)
        with self._lock:
            now = self._last = self._clock()
            held = self._held
            free = _unreferenced(held)
            live = size + sum(len(b) for b, f in zip(held, free, strict=True) if not f)
            if now - self._window >= 2 * self.idle:  # (no window just before this one)
                self._window, self._peak = now, (live, 0)
            elif now - self._window >= self.idle:
                self._window, self._peak = now, (live, self._peak[0])
            elif live > self._peak[0]:
                self._peak = (live, self._peak[1])
            # the one used again: the one of its size taken last; kept: the `spare` taken
            # last, and more while all held stays within the peak (the process held that
            # much moments ago: a memory tier lets go of several blocks at once, and takes
            # as many again as the next ones come in)
            budget = max(self._peak) - live
            found: bytearray | mmap.mmap | None = None
            keep = [not f for f in free]
            spare = 0
            for i in range(len(held) - 1, -1, -1):
                if keep[i]:
                    continue
                buf = held[i]
                if found is None and len(buf) == size and isinstance(buf, mmap.mmap) == huge:
                    found = buf
                elif spare < self.spare or len(buf) <= budget:
                    keep[i] = True
                    spare += 1
                    budget -= len(buf)
                # (else dropped: freed once this loop lets it go)
            if found is not None:
                self.reused += 1
            else:
                found = heap.huge(n) if huge else heap.uninitialized(size)
            self._held = [b for b, k in zip(held, keep, strict=True) if k]
            self._held.append(found)
            if isinstance(found, mmap.mmap):
                return heap.huge_aligned(found, n)
            return heap.page_aligned(found, n)

    def forget_idle(self) -> bool:
        """Drop the unreferenced buffers if no block was taken for `idle` seconds; False
        if one was (ask again later)."""
        with self._lock:
            if self._clock() - self._last < self.idle:
                return False
            free = _unreferenced(self._held)
            self._held = [b for b, f in zip(self._held, free, strict=True) if not f]
            self._peak = (0, 0)
            return True

    def spares(self) -> int:
        with self._lock:
            return sum(_unreferenced(self._held))


def _counts(held: Sequence[bytearray | mmap.mmap]) -> list[int]:
    return [sys.getrefcount(b) for b in held]


# what `_counts` says of a buffer the list alone holds, and of one held elsewhere too
# (measured, not assumed: the count a call adds differs between Python versions)
_ALONE = _counts([bytearray(1)])[0]
_REUSE = _counts([_probe := bytearray(1)])[0] > _ALONE
del _probe


def _unreferenced(held: Sequence[bytearray | mmap.mmap]) -> list[bool]:
    """For each buffer, whether `held` holds its only reference. Always False where the
    count cannot tell (then no buffer is reused)."""
    return [c <= _ALONE and _REUSE for c in _counts(held)]


class _Head:
    """httptools' callbacks for one response: the head, and a body that is not received
    straight into a buffer (error answers, chunked ones) gathered in pieces."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.status = 0
        self.keep = False
        self.head_done = False
        self.done = False
        self.pieces: list[bytes] = []
        self.got = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        # asked here: once the whole message is parsed, llhttp has reset for the next one
        # and says "not keep-alive"
        self.status = self.parser.get_status_code()
        self.keep = self.parser.should_keep_alive()
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)
        self.got += len(body)

    def on_message_complete(self) -> None:
        self.done = True


# a connection: plain, Python's ssl, or rustls
_Socket = socket.socket | tlsclient.RustlsSocket


class _Closed(Exception):
    """The worker closed the connection before answering (a stale keep-alive one)."""


class Connections:
    """Kept-alive HTTP/1.1 connections to cache workers, for block GETs received in
    threads (`get`) or on the event loop (`get_on_loop`, connections of its own). `close`
    closes every one, idle or in use (a thread receiving on one then fails at once
    instead of waiting out its timeout); it is called on the event loop's thread."""

    def __init__(
        self, *, idle: int = 8, threads: int = 16, tls: ssl.SSLContext | None = None
    ) -> None:
        self.idle_max = idle
        # how https workers are verified (None: the system's roots, as aiohttp's default),
        # and whether on rustls where it can (asked now: a wrong setting stops the start)
        self.tls = tls
        self.rustls = tlsserve.tls_engine() == "rustls"
        self._idle: dict[_Where, deque[tuple[_Socket, float]]] = {}
        self._busy: set[_Socket] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="fluidfed-recv")
        self._closed = False
        self.opened = 0  # connections made (what reuse saves)
        self.opened_rustls = 0  # of those, https ones on rustls
        self.buffers = Buffers()
        self._forget: asyncio.TimerHandle | None = None
        # the event loop's connections (`get_on_loop`): idle ones per worker, and all
        self._loop_idle: dict[_Where, deque[_LoopConn]] = {}
        self._loop_all: set[_LoopConn] = set()
        self.opened_on_loop = 0  # connections made for answers received on the loop

    @staticmethod
    def handles(url: str) -> bool:
        return url.startswith(("http://", "https://"))

    async def get(
        self,
        url: str,
        params: Mapping[str, str | int],
        headers: Mapping[str, str],
        seconds: float,
        *,
        checksum: bool = True,
        split: Sequence[int] | SplitBy = (),
    ) -> Answer:
        """GET `url` with `params`: status, headers, body (and its CRC with `checksum`).
        With `split`, a 200's or 206's body of exactly that many bytes in all is received
        in parts of those sizes, each into a buffer of its own with its own CRC: `body`
        the first, `rest` the others (several blocks in one ranged GET, each then cached
        and freed on its own); a body of another length comes whole, `rest` empty. A
        `split` that is a function is given the answer's headers and body length and says
        the sizes (several blocks in one answer of a worker's); its ValueError fails the
        answer.
        WorkerError if the worker cannot be reached, closes the connection before the
        whole answer arrived, or takes longer than `seconds` (the thread cannot be
        cancelled: a caller's own timeout leaves it to finish or fail within those)."""
        where, request = self._target(url, params, headers)
        loop = asyncio.get_running_loop()
        try:
            job = loop.run_in_executor(
                self._pool,
                self._exchange,
                where,
                request,
                seconds,
                checksum,
                split if callable(split) else tuple(split),
            )
        except RuntimeError as err:  # the pool was shut down meanwhile
            raise errors.WorkerError(f"{where.name}: the sidecar is closing") from err
        answer = await job
        if self._forget is None:
            self._forget = loop.call_later(self.buffers.idle, self._forget_idle)
        return answer

    def _target(
        self, url: str, params: Mapping[str, str | int], headers: Mapping[str, str]
    ) -> tuple[_Where, bytes]:
        """Where `url` is, and the request for it. A URL that brings its own query (a
        presigned one: a credential) is sent as it is, and never named in an error."""
        u = URL(url).with_query(params) if params else URL(url, encoded=True)
        if self._closed:
            raise errors.WorkerError(f"{u.with_query(None)}: the sidecar is closing")
        if u.host is None or u.port is None:
            raise errors.WorkerError(f"{u.with_query(None)}: not a worker URL")
        return _Where(u.scheme == "https", u.host, u.port), _request(u, headers)

    async def get_on_loop(
        self,
        url: str,
        params: Mapping[str, str | int],
        headers: Mapping[str, str],
        seconds: float,
        *,
        checksum: bool = True,
    ) -> Answer:
        """`get` on the event loop, for a small answer (its CRC taken here too, with
        `checksum`): the same errors, the whole exchange within `seconds`."""
        where, request = self._target(url, params, headers)
        try:
            async with asyncio.timeout(seconds):
                while True:
                    conn, reused = await self._loop_take(where)
                    try:
                        answer, keep = await conn.exchange(request, checksum)
                    except _Closed:
                        conn.close()
                        if reused:
                            continue  # closed while idle: once more on a new connection
                        raise errors.WorkerError("connection closed before an answer") from None
                    except BaseException:
                        conn.close()  # (a timeout, a cancel: what is left of it unread)
                        raise
                    if keep and not self._closed:
                        conn.since = time.monotonic()
                        self._loop_idle.setdefault(where, deque()).append(conn)
                    else:
                        conn.close()
                    return answer
        except TimeoutError:
            raise errors.WorkerError(f"{where.name}: no answer in time") from None
        except errors.WorkerError as err:
            raise errors.WorkerError(f"{where.name}: {err}", status=err.status) from None
        except (OSError, ssl.SSLError, httptools.HttpParserError) as err:
            raise errors.WorkerError(f"{where.name}: {_said(err)}") from err

    async def _loop_take(self, where: _Where) -> tuple[_LoopConn, bool]:
        """An idle connection of the event loop's to `where` still open (the freshest),
        else a new one (over TLS, its handshake done, the worker verified)."""
        idle = self._loop_idle.get(where)
        now = time.monotonic()
        while idle:
            kept = idle.pop()
            if not kept.closed and now - kept.since < IDLE_FOR:
                return kept, True
            kept.close()
        if self._closed:
            raise errors.WorkerError("the sidecar is closing")
        ctx = (self.tls or _system_roots()) if where.secure else None
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            _LoopConn,
            where.host,
            where.port,
            ssl=ctx,
            server_hostname=where.host if ctx is not None else None,
        )
        self.opened_on_loop += 1
        self._loop_all.add(conn)
        conn.on_close = self._loop_all.discard
        if self._closed:
            conn.close()
            raise errors.WorkerError("the sidecar is closing")
        return conn, False

    def _forget_idle(self) -> None:
        if self.buffers.forget_idle():
            self._forget = None
        else:
            loop = asyncio.get_running_loop()
            self._forget = loop.call_later(self.buffers.idle, self._forget_idle)

    def _exchange(
        self,
        where: _Where,
        request: bytes,
        timeout: float,
        checksum: bool,
        split: _Split = (),
    ) -> Answer:
        deadline = time.monotonic() + timeout
        name = where.name
        while True:
            try:
                sock, reused = self._take(where, timeout, deadline)
            except (TimeoutError, OSError) as err:  # refused, unreachable, no answer in time
                raise errors.WorkerError(f"{name}: {err or type(err).__name__}") from err
            try:
                answer, keep = _exchange_on(sock, request, deadline, checksum, self.buffers, split)
            except _Closed:
                self._drop(sock)
                if reused:
                    continue  # closed while idle: once more on a new connection
                raise errors.WorkerError(f"{name}: connection closed before an answer") from None
            except errors.WorkerError as err:
                self._drop(sock)
                raise errors.WorkerError(f"{name}: {err}", status=err.status) from None
            except (BlockingIOError, TimeoutError) as err:  # SO_RCVTIMEO/SNDTIMEO; TLS's timeout
                self._drop(sock)
                raise errors.WorkerError(f"{name}: no answer in time") from err
            except (OSError, httptools.HttpParserError) as err:
                self._drop(sock)
                raise errors.WorkerError(f"{name}: {err or type(err).__name__}") from err
            except BaseException:
                self._drop(sock)
                raise
            if keep:
                self._give_back(where, sock)
            else:
                self._drop(sock)
            return answer

    def _take(self, where: _Where, timeout: float, deadline: float) -> tuple[_Socket, bool]:
        """An idle connection to `where` still open (the freshest), else a new one (over
        TLS, its handshake done and the worker's certificate verified), its connect and
        handshake within what is left until `deadline` (a request retried on a new
        connection keeps to its first deadline), its sends and receives later bounded by
        `timeout` each, as long as it is kept."""
        now = time.monotonic()
        with self._lock:
            idle = self._idle.get(where)
            while idle:
                kept, since = idle.pop()
                if now - since < IDLE_FOR and not _readable(kept):
                    self._busy.add(kept)
                    return kept, True
                kept.close()  # expired, or the worker closed it (EOF is readable)
        left = deadline - now
        if left <= 0:
            raise TimeoutError("no answer in time")
        raw = socket.create_connection((where.host, where.port), timeout=left)
        sock: _Socket = raw
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ctx = (self.tls or _system_roots()) if where.secure else None
            config = tlsclient.rustls_config(ctx) if ctx is not None and self.rustls else None
            if ctx is not None and config is None:
                # Python's ssl keeps its own timeout on every operation, the handshake's
                # too: over a blocking socket it takes the kernel's timeout (EAGAIN) for
                # "try again" and would wait on a stalled worker for ever. It receives a
                # record at a time anyway, so MSG_WAITALL has nothing to save there.
                raw.settimeout(max(deadline - time.monotonic(), 0.001))  # the handshake's
                sock = ctx.wrap_socket(raw, server_hostname=where.host)
                sock.settimeout(timeout)  # each operation's from here on
            else:
                # blocking from here on, each receive and send bounded by the kernel: a
                # blocking socket is what lets MSG_WAITALL (or rustls) wait for the whole
                # body
                raw.settimeout(None)
                tv = struct.pack("ll", int(timeout), int((timeout % 1) * 1e6))
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
                _open_window(raw)  # (the receives that set wake-up marks: these two)
                if config is not None:  # the handshake, within what is left
                    left = max(deadline - time.monotonic(), 0.001)
                    sock = tlsclient.RustlsSocket(raw, config, where.host, left)
        except OSError:
            raw.close()
            raise
        with self._lock:
            self.opened += 1
            self.opened_rustls += isinstance(sock, tlsclient.RustlsSocket)
            if self._closed:
                sock.close()
                raise errors.WorkerError("the sidecar is closing")
            self._busy.add(sock)
        return sock, False

    def _give_back(self, where: _Where, sock: _Socket) -> None:
        with self._lock:
            self._busy.discard(sock)
            idle = self._idle.setdefault(where, deque())
            if self._closed or len(idle) >= self.idle_max:
                sock.close()
                return
            idle.append((sock, time.monotonic()))

    def _drop(self, sock: _Socket) -> None:
        with self._lock:
            self._busy.discard(sock)
        sock.close()

    def idle(self) -> int:
        """Idle connections kept, the threads' and the event loop's."""
        on_loop = sum(len(d) for d in self._loop_idle.values())
        with self._lock:
            return on_loop + sum(len(d) for d in self._idle.values())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for idle in self._idle.values():
                for sock, _ in idle:
                    sock.close()
            self._idle.clear()
            self._loop_idle.clear()
            for conn in list(self._loop_all):  # (on the loop's thread: the sidecar's close)
                conn.close()
            for sock in self._busy:  # its thread's receive returns; the thread closes it
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._forget is not None:
            self._forget.cancel()
            self._forget = None


class _Where(NamedTuple):
    secure: bool  # https
    host: str
    port: int

    @property
    def name(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}:{self.port}"


class _LoopConn(asyncio.BufferedProtocol):
    """A kept-alive connection on the event loop, one exchange at a time: the head is read
    into a page of scratch (`HEAD_READ`, as the threads read it) and parsed, then the
    transport receives the body straight into a buffer of its Content-Length."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.since = 0.0  # when it went idle
        self.on_close: Callable[[_LoopConn], None] | None = None
        self._scratch = memoryview(bytearray(HEAD_READ))
        self._head: _Head | None = None
        self._body: memoryview | None = None  # the body's buffer, once the head is in
        self._got = 0
        self._seen = 0  # bytes of this answer received
        self._done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's: no subclass)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.on_close is not None:
            self.on_close(self)
        if self._done is not None and not self._done.done():
            if self._seen == 0:
                self._done.set_exception(_Closed())
            else:
                what = (
                    "in the answer's head"
                    if self._body is None
                    else f"after {self._got} of {len(self._body)} body bytes"
                )
                self._done.set_exception(errors.WorkerError(f"connection closed {what}"))

    def eof_received(self) -> bool:
        return False  # closed: connection_lost tells a waiting exchange

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, request: bytes, checksum: bool = True) -> tuple[Answer, bool]:
        """Send `request`, receive its answer (and the CRC of a 200's or 206's body, with
        `checksum`); also whether the connection can be kept."""
        assert self.transport is not None
        head = self._head = _Head()
        self._body, self._got, self._seen = None, 0, 0
        done = self._done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            await done
        finally:
            self._done = None
        if self._body is not None:
            body: blocks.Data = self._body.toreadonly()
            self._body = None
        else:
            body = b"".join(head.pieces)
        status = head.status
        crc = await blocks.checksum_off_loop(body) if checksum and status in (200, 206) else -1
        return Answer(status, head.headers, body, crc), head.keep

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body is not None and self._got < len(self._body):
            return self._body[self._got :]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        done = self._done
        if done is None or done.done():
            self.close()  # bytes nobody asked for: the connection is not reused
            return
        self._seen += nbytes
        if self._body is not None:
            self._got += nbytes
            if self._got >= len(self._body):
                done.set_result(None)
            return
        head = self._head
        assert head is not None
        try:
            head.parser.feed_data(self._scratch[:nbytes])
        except httptools.HttpParserError as err:
            done.set_exception(err)
            return
        if not head.head_done:
            if self._seen > MAX_HEAD:
                done.set_exception(errors.WorkerError("answer head too long"))
            return
        length = head.headers.get("content-length")
        if not head.done and head.status in (200, 206) and length is not None:
            n = int(length)
            if not 0 <= n <= MAX_BODY:  # refused before a buffer of that size is made
                done.set_exception(
                    errors.WorkerError(f"answer of {n} bytes: a block is at most {MAX_BODY}")
                )
                return
            # what came with the head, then the rest straight into the buffer
            body = memoryview(heap.uninitialized(n))
            for piece in head.pieces:
                body[self._got : self._got + len(piece)] = piece
                self._got += len(piece)
            head.pieces.clear()
            self._body = body
            if self._got >= n:
                done.set_result(None)
        elif head.done:
            done.set_result(None)
        elif head.got > MAX_BODY:
            done.set_exception(
                errors.WorkerError(f"answer over {MAX_BODY} bytes: a block is at most that")
            )


_roots: ssl.SSLContext | None = None


def _system_roots() -> ssl.SSLContext:
    """A verifying context on the system's trust store, made once."""
    global _roots
    if _roots is None:
        _roots = ssl.create_default_context()
    return _roots


def _request(u: URL, headers: Mapping[str, str]) -> bytes:
    host = f"[{u.raw_host}]" if ":" in (u.raw_host or "") else u.raw_host  # IPv6
    lines = [f"GET {u.raw_path_qs} HTTP/1.1", f"Host: {host}:{u.port}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "host"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _readable(sock: _Socket) -> bool:
    """Whether an idle connection has something to read: the worker closed it (or sent
    what it should not have). Either way it is not reused."""
    if isinstance(sock, ssl.SSLSocket | tlsclient.RustlsSocket) and sock.pending():
        return True  # a record already decrypted
    try:  # (poll, not select: select cannot watch a descriptor numbered 1,024 or more)
        ready = select.poll()
        ready.register(sock, select.POLLIN)
        return bool(ready.poll(0))
    except (OSError, ValueError):
        return True


def _exchange_on(
    sock: _Socket,
    request: bytes,
    deadline: float,
    checksum: bool,
    buffers: Buffers,
    split: _Split = (),
) -> tuple[Answer, bool]:
    """One request and its answer on `sock`; also whether the connection can be reused."""
    if isinstance(sock, tlsclient.RustlsSocket):
        sock.set_deadline(deadline)  # (MSG_WAITALL and Python's ssl keep to theirs)
    sock.sendall(request)
    head = _Head()
    parser = head.parser
    seen = 0
    while not head.head_done:
        chunk = sock.recv(HEAD_READ)
        if not chunk:
            if seen == 0:
                raise _Closed
            raise errors.WorkerError("connection closed in the answer's head")
        seen += len(chunk)
        if seen > MAX_HEAD and not head.head_done:
            raise errors.WorkerError("answer head too long")
        parser.feed_data(chunk)
        _in_time(deadline)
    status, keep = head.status, head.keep
    length = head.headers.get("content-length")
    if not head.done and status in (200, 206) and length is not None:
        # the body (a whole block, a range of an object, or several blocks in one range:
        # `split`) straight into buffers of their size: what came with the head first
        # (httptools handed it to the list), then the rest in as few reads as the
        # kernel allows, one per part when the timeout is not reached
        n = int(length)
        if callable(split):
            try:
                split = tuple(split(head.headers, n))
            except ValueError as err:
                raise errors.WorkerError(str(err)) from None
        if not 0 <= n <= MAX_BODY * max(1, len(split)):  # refused before a buffer is made
            raise errors.WorkerError(f"answer of {n} bytes: a block is at most {MAX_BODY}")
        sizes = split if split and sum(split) == n and max(split) <= MAX_BODY else (n,)
        if len(sizes) == 1 and n > MAX_BODY:
            raise errors.WorkerError(f"answer of {n} bytes: a block is at most {MAX_BODY}")
        views = [buffers.take(size) for size in sizes]
        came = b"".join(head.pieces)
        head.pieces.clear()
        parts: list[tuple[blocks.Data, int]] = []
        at = 0  # of the body
        for view in views:
            got = min(len(came) - at, len(view)) if at < len(came) else 0
            view[:got] = came[at : at + got]
            at += len(view)
            _receive_into(sock, view, got, deadline)
            crc = blocks.checksum_noting(view) if checksum else -1
            parts.append((view.toreadonly(), crc))
        body, crc = parts[0]
        return Answer(status, head.headers, body, crc, tuple(parts[1:])), keep
    while not head.done:
        chunk = sock.recv(HEAD_READ)
        if not chunk:
            raise errors.WorkerError(f"connection closed after {head.got} body bytes")
        parser.feed_data(chunk)
        if head.got > MAX_BODY:
            raise errors.WorkerError(f"answer over {MAX_BODY} bytes: a block is at most that")
        _in_time(deadline)
    body = b"".join(head.pieces)
    crc = blocks.checksum_noting(body) if checksum and status in (200, 206) else -1
    return Answer(status, head.headers, body, crc), keep


def _receive_into(sock: _Socket, view: memoryview, got: int, deadline: float) -> None:
    """Fill `view` from `sock`, its first `got` bytes already there: on plain TCP woken per
    WAKE_EVERY bytes (`_receive_woken_per_piece`), over TLS its own way."""
    n = len(view)
    if got < n and type(sock) is socket.socket:  # plain TCP (TLS: its own way)
        got = _receive_woken_per_piece(sock, view, got, n, deadline)
    # an ssl socket takes no flags: it receives a record at a time (rustls: all of the
    # body it can)
    flags = 0 if isinstance(sock, ssl.SSLSocket) else socket.MSG_WAITALL
    while got < n:
        r = sock.recv_into(view[got:], n - got, flags)
        if r == 0:
            raise errors.WorkerError(f"connection closed after {got} of {n} body bytes")
        got += r
        if got < n:
            _in_time(deadline)


def _open_window(sock: socket.socket) -> None:
    """Let the connection's receive window grow past the wake-up mark from the start.
    Raising SO_RCVLOWAT above the receive buffer also raises the buffer, and clamps the
    window to the mark: a window of exactly the mark would fill before the reader is woken,
    leaving the sender idle a round trip per mark until autotuning grew it. Set once to
    WINDOW_AT_LEAST (the kernel caps it at half of tcp_rmem's largest) and back to 1, the
    window starts at least that large; the marks set later lie below it and change
    nothing else. Best effort."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, WINDOW_AT_LEAST)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


def _receive_woken_per_piece(
    sock: socket.socket, view: memoryview, got: int, n: int, deadline: float
) -> int:
    """Receive the body into `view[got:n]` waking up once per WAKE_EVERY bytes come: how
    many bytes `view` holds then (`n`; fewer only if the worker closed, which the caller
    reports). A blocking `recv(MSG_WAITALL)` wakes the thread for every few segments that
    arrive (the kernel wakes a reader whenever anything is there to read), and each wake-up
    is a context switch and a copy of a little; with SO_RCVLOWAT the kernel wakes the poll
    only once that many bytes wait, then one receive takes them all. The mark is never set
    above what the body still owes (the poll would wait for bytes that never come), and is
    put back to 1 after (the next answer's head, the idle check in `_readable`). Past the
    deadline: TimeoutError."""
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    try:
        while got < n:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, min(WAKE_EVERY, n - got))
            if not poll.poll(max(0.0, deadline - time.monotonic()) * 1000):
                raise TimeoutError("no answer in time")
            try:
                r = sock.recv_into(view[got:], n - got, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue  # (woken by the mark's change with nothing to read: wait again)
            if r == 0:
                return got
            got += r
        return got
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


def _said(err: Exception) -> str:
    """What failed, in the words the threads' sockets use: asyncio says "Connect call
    failed" where a socket says "Connection refused" (or unreachable...)."""
    if isinstance(err, OSError) and err.errno and str(err.strerror).startswith("Connect call"):
        return f"[Errno {err.errno}] {os.strerror(err.errno)}"
    return str(err) or type(err).__name__


def _in_time(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise errors.WorkerError("no answer in time")
