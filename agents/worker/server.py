"""The cache worker's HTTP server: the handlers of `fluidfed.data.protocol` over a Worker,
and `serve`, the process `fluidfed worker serve` runs."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import mmap
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import BinaryIO, TypeVar

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from agents.worker.core import Worker, close_files, log, remaining_peers
from fluidfed import errors, telemetry, tls, tlsserve
from fluidfed.data import answers, blockfile, blocks, credentials, heap, layout, protocol
from fluidfed.data.credentials import Action
from fluidfed.data.layout import WorkerConfig
from fluidfed.errors import ConfigError
from fluidfed.logs import Seldom

M = TypeVar("M", bound=protocol.Message)

WORKER_KEY: web.AppKey[Worker] = web.AppKey("worker", Worker)
_SHORT = Seldom(log)  # (a worker out of descriptors fails every request a while)


class _Blocks(web.StreamResponse):
    """Blocks sent one after the other after the headers (a sequential reader's run in one
    answer: `BlockQuery.joined`; else one block). A block held in memory (a miss just
    fetched, the memory tier, a span) is sent as it is. A checked disk block is sent from
    the page cache without copying it here: sendfile(2), asyncio's `loop.sendfile` or, on
    uvloop, which has none, our own on the transport's socket (`_sendfile`; before it,
    every such answer failed with NotImplementedError on uvloop and its reader fell back
    to the under storage); over TLS the file is mapped and the mapping handed to the
    transport (asyncio reads and writes it itself); a worker out of descriptors reads it
    and sends what it read (`_send_read`). Files are closed once sent or failed.

    A `web.Response` holds its headers back to send them with the body in one write,
    which aiohttp makes by joining the two into new bytes on Python before 3.12.9 (its
    `writelines` is not used there): a copy of every block, and fresh pages for it
    (figures: README, "Measured design decisions"); a StreamResponse sends its headers at
    prepare."""

    def __init__(
        self,
        w: Worker,
        parts: list[tuple[BinaryIO | blocks.Data, int]],
        headers: dict[str, str],
    ) -> None:
        super().__init__(headers=headers)
        self.content_type = "application/octet-stream"
        self.content_length = sum(n for _, n in parts)
        self._worker = w
        self._parts = parts

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            writer = await super().prepare(request)
            assert writer is not None
            for part, size in self._parts:
                if isinstance(part, bytes | memoryview):
                    if size:
                        await _send(request, writer, part)
                else:
                    await self._send_file(request, writer, part, size)
            await super().write_eof()
            return writer
        finally:
            close_files(part for part, _ in self._parts)

    async def _send_file(
        self, request: web.BaseRequest, writer: AbstractStreamWriter, f: BinaryIO, size: int
    ) -> None:
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        await _read_before_sending(self._worker, f, size)
        try:
            # asyncio falls back to reading and writing where the transport cannot (TLS)
            await asyncio.get_running_loop().sendfile(transport, f, 0, size)
            sent = transport.get_extra_info("sslcontext") is None
        except NotImplementedError:  # uvloop
            sent = bool(size) and await _sendfile(transport, f, size)
            if size and not sent:
                try:
                    mapped = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
                except OSError as err:
                    # short of descriptors (Python's mmap takes one) or of mappings: the
                    # headers are out, so the block goes as it is read here, needing none
                    if err.errno not in errors.SCARCE:
                        raise
                    await _send_read(request, writer, f, size)
                else:
                    # the transport keeps the view until it is written; the mapping goes
                    # with the last reference (an evicted file stays readable till then)
                    await _send(request, writer, memoryview(mapped))
                    await writer.drain()
        self._worker.served_sendfile += sent


async def _read_before_sending(w: Worker, f: BinaryIO, size: int) -> None:
    """A block file of a huge page or more that is not in the page cache read into it in a
    thread, in folios of a huge page where the kernel keeps them
    (`blockfile.read_in_huge_folios`), before it is sent: not by sendfile's read-ahead on
    the event loop, and the next reader on this node maps it in a few page-table entries.
    The requests that send one file at once wait for one read of it (each would let go of
    what the one before read, `posix_fadvise`), done in a duplicate of the descriptor
    that the thread closes (a request cancelled meanwhile closes its own). A file that
    cannot be read, or a worker out of descriptors, goes to sendfile as it is, to fail
    there as before."""
    if size < heap.HUGE:
        return
    fd = f.fileno()
    st = os.fstat(fd)
    if not blockfile.reads_huge(st.st_dev) or blockfile.in_page_cache(fd, size):
        return
    key = (st.st_dev, st.st_ino)
    reading = w.reading_huge.get(key)
    if reading is None:
        try:
            own = os.dup(fd)
        except OSError as err:
            if err.errno not in errors.SCARCE:
                raise
            return
        reading = w.reading_huge[key] = asyncio.ensure_future(
            asyncio.to_thread(_read_huge, own, size)
        )
        reading.add_done_callback(functools.partial(_read_done, w, key))
    try:
        await asyncio.shield(reading)
    except (OSError, ValueError) as err:  # (ValueError: mmap, a file shorter than said)
        _SHORT.warning("a block file not read before it was sent: %s", err)


def _read_huge(fd: int, size: int) -> bool:
    try:
        return blockfile.read_in_huge_folios(fd, size)
    finally:
        os.close(fd)


def _read_done(w: Worker, key: tuple[int, int], reading: asyncio.Future[bool]) -> None:
    w.reading_huge.pop(key, None)
    if not reading.cancelled() and reading.exception() is None and reading.result():
        w.served_read_huge += 1


async def _sendfile(transport: asyncio.BaseTransport, f: BinaryIO, size: int) -> bool:
    """`size` bytes of `f` sent with sendfile(2) on the transport's socket, from the event
    loop (uvloop has no `loop.sendfile`): the kernel hands the socket the page cache's
    pages, where a mapping handed to the transport is copied into it (a quarter of a
    worker's samples serving cached blocks; figures: README). The socket is waited on
    through a duplicate of its descriptor, as uvloop keeps a transport's own to itself.
    False, nothing sent, where the transport is encrypted, has no socket, or still holds
    bytes of its own to send, or the process is out of descriptors (the caller sends the
    block its way)."""
    sock = transport.get_extra_info("socket")
    pending = getattr(transport, "get_write_buffer_size", None)  # (uvloop's: no subclass)
    if (
        sock is None
        or transport.get_extra_info("sslcontext") is not None
        or pending is None
        or pending()
    ):
        return False
    loop = asyncio.get_running_loop()
    try:
        fd = os.dup(sock.fileno())
    except OSError as err:  # (out of descriptors: nothing sent, the caller's way it goes)
        if err.errno not in errors.SCARCE:
            raise
        return False
    try:
        sent = 0
        while sent < size:
            try:
                n = os.sendfile(fd, f.fileno(), sent, size - sent)
            except BlockingIOError:
                await _writable(loop, fd)
                continue
            except OSError as err:  # the reader went away: as the transport says it
                raise ConnectionResetError(f"sending a block file: {err}") from err
            if n == 0:  # (block files are replaced whole, never shortened)
                raise ConnectionResetError("block file shorter than its length")
            sent += n
    finally:
        os.close(fd)
    return True


READ_PIECE = 2**20  # bytes of a block file read and sent at a time (`_send_read`)


async def _send_read(
    request: web.BaseRequest, writer: AbstractStreamWriter, f: BinaryIO, size: int
) -> None:
    """`size` bytes of `f` read here a piece at a time and sent: what a worker out of file
    descriptors can still do (sendfile's wait and a mapping each need a new one)."""
    at = 0
    while at < size:  # (in a thread: a file not in the page cache waits for the disk)
        piece = await asyncio.to_thread(os.pread, f.fileno(), min(READ_PIECE, size - at), at)
        if not piece:  # (block files are replaced whole, never shortened)
            raise ConnectionResetError("block file shorter than its length")
        await _send(request, writer, piece)
        await writer.drain()
        at += len(piece)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


TLS_PIECE = 256 * 2**10  # bytes handed to a TLS transport at a time (`_send`)


async def _send(request: web.BaseRequest, writer: AbstractStreamWriter, data: blocks.Data) -> None:
    """Write `data` after the headers. Over TLS in pieces: uvloop's TLS transport encrypts
    what it is given whole into its buffer and hands the socket one new bytes object of
    that size, fresh memory for every block; pieces of 256 KiB keep both small."""
    transport = request.transport
    if transport is None or transport.get_extra_info("sslcontext") is None:
        await writer.write(data)
        return
    view = memoryview(data)
    for at in range(0, len(view), TLS_PIECE):
        await writer.write(view[at : at + TLS_PIECE])


RETRY_AFTER = "5"  # seconds a 503 for a worker short of descriptors or memory says to wait


def _problem(status: int, message: str) -> web.Response:
    response = answers.answer(status, message)
    if status == 503:  # (the worker is short for now: `errors.SCARCE`)
        response.headers["Retry-After"] = RETRY_AFTER
    return response


def _refused(request: web.Request, action: Action, path: str | None = None) -> web.Response | None:
    """401 without a valid credential of this binding, 403 when its role (or a reader's
    sub-path, for `path`) does not allow `action`; None: go ahead. A verified token is
    remembered, so this is one dict lookup per request once a connection is going."""
    claims = _authenticated(request)
    if isinstance(claims, web.Response):
        return claims
    why = credentials.authorize(claims, action, request.app[WORKER_KEY].cfg.dataset, path)
    return None if why is None else _problem(403, why)


def _authenticated(request: web.Request) -> credentials.Claims | web.Response:
    """The verified claims of the request's token, or its 401."""
    try:
        return request.app[WORKER_KEY].verifier.claims(request.headers.get(credentials.HEADER))
    except credentials.Refused as err:
        return answers.answer(401, err.reason, realm="fluidfed")


def _json(msg: protocol.Message, status: int = 200) -> web.Response:
    return web.Response(body=protocol.encode(msg), status=status, content_type=protocol.JSON)


async def _get_block(request: web.Request) -> web.StreamResponse:
    try:
        return await _block_answer(request)
    except OSError as err:
        if err.errno not in errors.SCARCE:
            raise
        # the worker, not the block, is short: its reader reads the under storage itself
        # meanwhile (a sidecar leaves a worker that fails alone for a while)
        what = "open files" if err.errno in (errno.EMFILE, errno.ENFILE) else "memory"
        raise_it = (
            "its open-file limit (the pod's LimitNOFILE, ulimit -n; the node's fs.file-max)"
            if what == "open files"
            else "its memory limit"
        )
        _SHORT.warning("a block request failed, short of %s: %s; raise %s", what, err, raise_it)
        return _problem(
            503, f"this worker is short of {what} ({os.strerror(err.errno)}): raise {raise_it}"
        )


async def _block_answer(request: web.Request) -> web.StreamResponse:
    w = request.app[WORKER_KEY]
    key = request.match_info["key"]
    claims = _authenticated(request)
    if isinstance(claims, web.Response):
        return claims
    try:
        q = protocol.BlockQuery.from_query(request.query)
    except ConfigError as err:
        return _problem(400, str(err))
    if not 0 <= q.mount < len(w.cfg.mounts):
        return _problem(
            400, f"mount {q.mount} does not exist (this dataset has {len(w.cfg.mounts)})"
        )
    if q.block_key(w.cfg.dataset, w.cfg.block_size) != key:
        return _problem(
            409,
            "block key does not match its description: sidecar and worker disagree "
            "on the dataset or block size",
        )
    # a reader's sub-path against the object's place in the dataset, worked out here from
    # the request (its block key matched the object above), never taken from the client
    path = layout.dataset_path(w.cfg.mounts, q.mount, q.key)
    why = credentials.authorize(claims, Action.READ_BLOCK, w.cfg.dataset, path)
    if why is not None:
        return _problem(403, why)
    span = q.span
    # a block read ahead for this reader with a miss before it: its first whole answer a
    # miss (a span of it, a random read, leaves that to the whole block's)
    first = span is None and w.fresh(key)
    try:
        return await _held_or_fetched(w, q, key, first)
    except OSError as err:
        if first and err.errno in errors.SCARCE:  # (not answered: the next answer is the miss)
            w.fresh_again(key)
        raise


async def _held_or_fetched(
    w: Worker, q: protocol.BlockQuery, key: str, first: bool
) -> web.StreamResponse:
    """The answer to a block request found well-formed and allowed: the block's file for a
    reader on this node to read, the block as this worker holds it, or fetched now.
    `first`: its first answer since it was read ahead for this reader (a miss)."""
    span = q.span
    cache = "miss" if first else "hit"
    if span is None and not q.verify:
        where = w.store.locate(key, fresh=first) if q.local else None
        if where is not None:
            # a reader on this machine reads the block file itself (short-circuit)
            w.located += 1
            w.count_served(1, where[1], local=True)
            return web.Response(
                headers={
                    protocol.LOCAL: where[0],
                    protocol.LENGTH: str(where[1]),
                    protocol.CHECKSUM: str(where[2]),
                    protocol.CACHE: cache,
                }
            )
        held = w.store.open_verified(key, fresh=first)
        if held is not None:
            headers = {protocol.CHECKSUM: str(held[2]), protocol.CACHE: cache}
            return await _answer(w, q, [(held[0], held[1])], headers)
    try:
        part = await w.store.get_span(key, span.offset, span.length) if span is not None else None
        if part is not None:
            w.count_served(1, len(part))
            crc = blocks.checksum(part)
            return _Blocks(
                w, [(part, len(part))], {protocol.CHECKSUM: str(crc), protocol.CACHE: "hit"}
            )
        joined = q.joined and span is None
        got = await w.block(key, q, q.index, q.run, fresh=first, joined=joined)
    except errors.UFSNotFound as err:
        return _problem(404, str(err))
    except errors.UFSError as err:
        return _problem(504 if err.temporary else 502, str(err))
    data, crc = got.data, got.crc
    if span is not None:
        data = data[span.offset : span.offset + span.length]
        crc = blocks.checksum(data)
    headers = {protocol.CHECKSUM: str(crc), protocol.CACHE: "hit" if got.hit else "miss"}
    if got.ahead:  # (the blocks after it read for this reader: misses here and there)
        headers[protocol.AHEAD] = str(got.ahead)
    if span is not None:
        w.count_served(1, len(data))
        return _Blocks(w, [(data, len(data))], headers)
    # (read with it for this reader, sent with it: misses here and there)
    rest: list[tuple[BinaryIO | blocks.Data, protocol.Part]] | None = [
        (d, protocol.Part(len(d), c, False)) for d, c in got.rest
    ] or None
    return await _answer(w, q, [(data, len(data))], headers, rest)


async def _answer(
    w: Worker,
    q: protocol.BlockQuery,
    first: list[tuple[BinaryIO | blocks.Data, int]],
    headers: dict[str, str],
    rest: list[tuple[BinaryIO | blocks.Data, protocol.Part]] | None = None,
) -> _Blocks:
    """A whole block's answer; asked for `joined`, with the blocks of the run after it
    (`rest`, else those this worker holds, read and checked first if need be:
    `Worker.held_after`), named in `PARTS`
    (present, if empty, in every answer to a joined request: the reader learns that this
    worker joins runs)."""
    if rest is None and q.joined and q.run:
        try:
            rest = await w.held_after(q, q.index, q.run)
        except BaseException:  # (cancelled: the reader went away) the first file closed
            close_files(source for source, _ in first)
            raise
    rest = rest or []
    parts = first + [(source, p.length) for source, p in rest]
    if q.joined:
        headers[protocol.PARTS] = protocol.parts_header(p for _, p in rest)
    w.count_served(len(parts), sum(n for _, n in parts))
    w.served_joined += len(rest)
    return _Blocks(w, parts, headers)


async def _touch(request: web.Request) -> web.Response:
    """Blocks a sidecar on this node read from our files itself: hits, recently used."""
    w = request.app[WORKER_KEY]
    refused = _refused(request, Action.TOUCH)
    if refused is not None:
        return refused
    try:
        body = protocol.decode(protocol.Touched, await request.read())
    except ConfigError as err:
        return _problem(400, str(err))
    keys = [key for key, _ in body.blocks]
    # read by the reader they were read ahead for: misses, as their answers would say
    held = w.store.touch(keys, {key for key in keys if w.fresh(key)})
    # what a reader says it read feeds the throughput that scales the workers: at most a
    # block per block reported
    bs = w.cfg.block_size
    w.count_served(len(body.blocks), sum(max(0, min(n, bs)) for _, n in body.blocks), local=True)
    return _json(protocol.TouchResult(held=held))


async def _put_block(request: web.Request) -> web.Response:
    w = request.app[WORKER_KEY]
    key = request.match_info["key"]
    refused = _refused(request, Action.WRITE_BLOCK)
    if refused is not None:
        return refused
    if not re.fullmatch(r"[0-9a-f]{32}", key):
        return _problem(400, "not a block key")
    data = await request.read()
    try:
        crc = int(request.headers[protocol.CHECKSUM])
    except (KeyError, ValueError):
        return _problem(400, f"missing {protocol.CHECKSUM}")
    if blocks.checksum(data) != crc:
        return _problem(400, "block arrived damaged (checksum mismatch)")
    try:  # (its file written before the answer: no reader waits, its sender hears)
        await w.store.put(key, data, crc, wait=True)
    except OSError as err:  # (the block is not taken: its sender keeps or drops it)
        w.store.not_kept.warning(
            "block %s handed over not kept: its file could not be written: %s", key, err
        )
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        return _problem(
            507 if full else 503 if err.errno in errors.SCARCE else 500,
            f"this worker cannot write the block's file: {err.strerror or type(err).__name__}"
            + (": its disk tier's filesystem is full" if full else ""),
        )
    return web.Response(status=204)


async def _status(request: web.Request) -> web.Response:
    return _refused(request, Action.STATUS) or _json(request.app[WORKER_KEY].status())


async def _body(request: web.Request, typ: type[M]) -> M:
    """The request's JSON body as `typ`; none at all means the defaults."""
    return protocol.decode(typ, await request.read()) if request.can_read_body else typ()


async def _allowed_body(request: web.Request, action: Action, typ: type[M]) -> M | web.Response:
    """The request's body as `typ` if its credential allows `action`; else the answer."""
    refused = _refused(request, action)
    if refused is not None:
        return refused
    try:
        return await _body(request, typ)
    except ConfigError as err:
        return _problem(400, str(err))


async def _load(request: web.Request) -> web.Response:
    body = await _allowed_body(request, Action.LOAD, protocol.LoadRequest)
    if isinstance(body, web.Response):
        return body
    return _json(request.app[WORKER_KEY].start_load(body.path, body.peers or None), status=202)


async def _load_progress(request: web.Request) -> web.Response:
    return _refused(request, Action.LOAD) or _json(request.app[WORKER_KEY].load)


async def _drain(request: web.Request) -> web.Response:
    body = await _allowed_body(request, Action.DRAIN, protocol.DrainRequest)
    if isinstance(body, web.Response):
        return body
    return _json(await request.app[WORKER_KEY].drain([p.rstrip("/") for p in body.peers]))


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _metrics(request: web.Request) -> web.Response:
    """Prometheus text, to the holders of the binding's tokens (as `/status`): the figures
    name the dataset and how its cache is used."""
    return _refused(request, Action.STATUS) or await telemetry.metrics_endpoint(request)


def make_app(worker: Worker) -> web.Application:
    app = web.Application(client_max_size=64 * 2**20)
    app[WORKER_KEY] = worker
    app.router.add_get(protocol.BLOCK, _get_block)
    app.router.add_put(protocol.BLOCK, _put_block)
    app.router.add_get(protocol.STATUS, _status)
    app.router.add_post(protocol.LOAD, _load)
    app.router.add_get(protocol.LOAD, _load_progress)
    app.router.add_post(protocol.DRAIN, _drain)
    app.router.add_post(protocol.TOUCH, _touch)
    app.router.add_get(protocol.HEALTHZ, _healthz)
    app.router.add_get(protocol.METRICS, _metrics)
    return app


def _in_url(host: str) -> str:
    """`host` as a URL names it: an IPv6 address in brackets (http://::1:7070 parses as no
    host at all)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def not_among_peers(url: str, cfg: WorkerConfig) -> str:
    """What to say where this worker's own URL is not one its peers are named by (a list
    of endpoints, not a statefulset's): it then owns no block, so a warm-up pulls nothing
    and says it is done, and its reader's runs are not read ahead ("" if it is there)."""
    peers = [e.rstrip("/") for e in cfg.workers.endpoints]
    if not peers or cfg.workers.statefulset or url.rstrip("/") in peers:
        return ""
    return (
        f"this worker's URL {url} is not among its peers ({', '.join(peers)}): it owns no "
        "block, so warm-ups pull nothing; give --advertise with the URL its peers name it "
        "by, or list it in workers.endpoints"
    )


async def serve(
    cfg: WorkerConfig,
    *,
    host: str,
    port: int,
    advertise: str,
    cache_root: Path,
    config_path: Path | None,
    credentials_path: Path,
    reload_interval: float = 5.0,
    drain_timeout: float = 60.0,
) -> None:
    runner: web.AppRunner | None = None
    worker: Worker | None = None
    heap.tune()
    try:
        # HTTPS with the binding's certificate where the config gives one (the agent's
        # workers), its peers verified against the binding's CA
        served = tls.Served(cfg.tls_cert_file, cfg.tls_key_file) if cfg.tls_cert_file else None
        trusted = tls.Trusted(cfg.ca_file) if cfg.ca_file else None
        scheme = "https" if served is not None else "http"
        site_port = port
        if not advertise:
            host_name = os.environ.get("HOSTNAME", "")
            if cfg.workers.service and host_name:
                advertise = f"{scheme}://{host_name}.{cfg.workers.service}:{cfg.workers.port}"
        worker = Worker(
            cfg,
            url=advertise or f"{scheme}://{_in_url(host)}:{port}",
            cache_root=cache_root,
            config_path=config_path,
            credentials_path=credentials_path,
            peer_tls=trusted.context if trusted is not None else None,
        )
        await worker.open()
        worker.instrument()
        runner = web.AppRunner(make_app(worker), handle_signals=False, access_log=None)
        await runner.setup()
        site = tlsserve.site(runner, host, port, served.context if served is not None else None)
        await site.start()
        for addr in runner.addresses:
            site_port = int(addr[1])
        if not advertise:
            worker.url = f"{scheme}://{_in_url(host)}:{site_port}"
        if stray := not_among_peers(worker.url, cfg):
            log.warning("%s", stray)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, worker.reload)
        s = worker.store.snapshot()
        print(
            f"fluidfed worker for {cfg.dataset} listening on {scheme}://{host}:{site_port} "
            f"as {worker.url} ({len(worker.store.hottest())} blocks cached, "
            f"capacity {s.capacity} bytes)",
            flush=True,
        )
        reporting = asyncio.create_task(worker.report_loop())
        moved = worker
        trimming = asyncio.create_task(heap.trim_loop(lambda: moved.served_bytes + moved.ufs_bytes))
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(reload_interval):
                    await stop.wait()
            worker.reload()
            for files in (served, trusted):
                if files is not None and files.reload():
                    log.info("TLS files reloaded: %s", type(files).__name__)
        reporting.cancel()
        trimming.cancel()
        # leaving: hand the cache to those who stay (the config file says who they are)
        worker.reload()
        stay = remaining_peers(worker.peers(), worker.url)
        print(
            f"fluidfed worker stopping: handing blocks to {stay or 'nobody'}",
            file=sys.stderr,
            flush=True,
        )
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                await worker.drain(stay)
        log.info("hand-off took %.1fs", time.monotonic() - started)
    finally:
        if runner is not None:
            await runner.cleanup()
        if worker is not None:
            await worker.close()
        await asyncio.to_thread(telemetry.shutdown)
