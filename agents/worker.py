"""The cache worker: `fluidfed worker serve`, the runtime agents run in their clusters.

It holds the blocks it owns (by rendezvous hashing over the current workers) in the tiers
of the dataset's cache spec, fetches a missing block from the under storage once however
many readers ask for it at the same time, warms up on request, and on SIGTERM hands its
blocks to their owners among the workers that stay before it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import msgspec
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from fluidfed import config, telemetry
from fluidfed.data import blocks, heap, layout, ufs, workers
from fluidfed.data.instruments import DataPathInstruments
from fluidfed.data.layout import FileRef, WorkerConfig
from fluidfed.data.store import BlockStore

log = logging.getLogger("fluidfed.worker")


def remaining_peers(peers: list[str], me: str) -> list[str]:
    """Who keeps serving when this worker leaves. StatefulSets remove the highest ordinals
    first, so with ordinal names the workers numbered above this one are leaving too."""
    mine = _ordinal(me)
    out = []
    for p in peers:
        if p == me:
            continue
        theirs = _ordinal(p)
        if mine is not None and theirs is not None and theirs > mine:
            continue
        out.append(p)
    return out


def _ordinal(url: str) -> int | None:
    m = re.match(r"^https?://[^.:/]+-(\d+)\.", url)
    return int(m.group(1)) if m else None


class Worker:
    def __init__(
        self,
        cfg: WorkerConfig,
        *,
        url: str,
        cache_root: Path,
        config_path: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.url = url.rstrip("/")
        self.config_file = config.Watched(config_path, WorkerConfig) if config_path else None
        pod = os.environ.get("HOSTNAME") or socket.gethostname()
        self.store = BlockStore(layout.own_tiers(cfg.tiers, pod), root=cache_root)
        self.ufs = [ufs.open_ufs(m) for m in cfg.mounts]
        self._inflight: dict[str, asyncio.Future[tuple[bytes, int]]] = {}
        self._fetch_slots = asyncio.Semaphore(cfg.fetch_concurrency)
        self.ufs_reads = 0
        self.ufs_bytes = 0
        self.ufs_errors = 0
        self.served = 0  # blocks (or spans) served to sidecars
        self.served_bytes = 0
        self.served_local = 0  # blocks read by their reader from our disk (short-circuit)
        self.located = 0  # ... of which we were asked where the file is
        self.load = workers.LoadProgress()
        self._load_task: asyncio.Task[None] | None = None
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> Worker:
        await self.store.open()
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.read_timeout)
        )
        return self

    async def close(self) -> None:
        if self._load_task:
            self._load_task.cancel()
        if self.session:
            await self.session.close()

    def peers(self) -> list[str]:
        urls = self.cfg.workers.urls()
        return urls if urls else [self.url]

    def reload(self) -> bool:
        """Take the peers from the config file again if it changed (the agent rewrites it
        on scaling)."""
        cfg = self.config_file.changed() if self.config_file else None
        if cfg is None:
            return False
        self.cfg = msgspec.structs.replace(self.cfg, workers=cfg.workers)
        log.info("peers now %s", self.peers())
        return True

    # --- blocks ---------------------------------------------------------------------

    async def block(self, key: str, ref: FileRef, index: int) -> tuple[blocks.Data, int, bool]:
        got = await self.store.get(key)
        if got is not None:
            return got[0], got[1], True
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._inflight[key] = fut
            try:
                data = await self._fetch(ref, index)
                crc = blocks.checksum(data)
                await self.store.put(key, data, crc)
                fut.set_result((data, crc))
            except BaseException as err:
                fut.set_exception(err)
                fut.exception()  # retrieved: waiters get it, nobody waiting is fine too
                raise
            finally:
                del self._inflight[key]
            return data, crc, False
        data, crc = await asyncio.shield(fut)
        return data, crc, False

    async def _fetch(self, ref: FileRef, index: int) -> bytes:
        offset, length = blocks.block_span(ref.size, self.cfg.block_size, index)
        async with self._fetch_slots:
            try:
                async with asyncio.timeout(self.cfg.read_timeout):
                    data = await self.ufs[ref.mount].read(ref.key, offset, length)
            except TimeoutError:
                self.ufs_errors += 1
                raise ufs.UFSError(
                    f"read {ref.key} [{offset}+{length}]: no answer within "
                    f"{self.cfg.read_timeout:g}s",
                    temporary=True,
                ) from None
            except ufs.UFSError:
                self.ufs_errors += 1
                raise
        self.ufs_reads += 1
        self.ufs_bytes += len(data)
        return data

    # --- warm-up --------------------------------------------------------------------

    def start_load(self, path: str, peers: list[str] | None) -> workers.LoadProgress:
        if self._load_task is not None and not self._load_task.done():
            return self.load
        self.load = workers.LoadProgress(state="running", path=path)
        self._load_task = asyncio.create_task(self._load(path, peers or self.peers()))
        return self.load

    async def _load(self, path: str, peers: list[str]) -> None:
        prog = self.load
        prefix = path.strip("/")
        try:
            files = await ufs.list_files(self.cfg.mounts, self.ufs)
            todo: list[tuple[str, FileRef, int]] = []
            bs = self.cfg.block_size
            for rel, ref in sorted(files.items()):
                if prefix and rel != prefix and not rel.startswith(prefix + "/"):
                    continue
                for i in range(blocks.block_count(ref.size, bs)):
                    key = ref.block_key(self.cfg.dataset, bs, i)
                    if blocks.owner(key, peers) == self.url:
                        todo.append((key, ref, i))
            prog.blocks = len(todo)
            queue: asyncio.Queue[tuple[str, FileRef, int]] = asyncio.Queue()
            for item in todo:
                queue.put_nowait(item)

            async def pull() -> None:
                while not queue.empty():
                    key, ref, i = queue.get_nowait()
                    try:
                        data, _, _ = await self.block(key, ref, i)
                        prog.bytes += len(data)
                    except Exception as err:
                        prog.errors += 1
                        prog.message = str(err)
                    prog.done += 1

            await asyncio.gather(*(pull() for _ in range(self.cfg.fetch_concurrency)))
            # what is still there (a quota smaller than the data evicts as it goes)
            prog.cached = sum(1 for key, _, _ in todo if key in self.store)
            prog.state = "failed" if prog.errors else "done"
        except Exception as err:
            prog.state, prog.message = "failed", str(err)
            log.warning("warm-up of %r failed: %s", path, err)

    # --- scale-in -------------------------------------------------------------------

    async def drain(self, peers: list[str]) -> dict[str, int]:
        """Hand every block to its owner among `peers` (this worker excluded)."""
        others = [p for p in peers if p != self.url]
        moved = failed = sent = 0
        if not others or self.session is None:
            return {"moved": 0, "bytes": 0, "failed": 0}
        keys = self.store.hottest()
        queue: asyncio.Queue[str] = asyncio.Queue()
        for k in keys:
            queue.put_nowait(k)
        session = self.session

        async def hand() -> None:
            nonlocal moved, failed, sent
            while not queue.empty():
                key = queue.get_nowait()
                got = await self.store.get(key)
                target = blocks.owner(key, others)
                if got is None or target is None:
                    continue
                try:
                    await workers.put_block(session, target, key, got[0], got[1])
                    moved += 1
                    sent += len(got[0])
                except workers.WorkerError as err:
                    failed += 1
                    log.warning("hand-off of %s to %s failed: %s", key, target, err)

        await asyncio.gather(*(hand() for _ in range(8)))
        log.info("handed %d blocks (%d bytes) to %s; %d failed", moved, sent, others, failed)
        return {"moved": moved, "bytes": sent, "failed": failed}

    async def report(self) -> None:
        """Heartbeat to the agent with this worker's blocks and counters."""
        if not self.cfg.agent or self.session is None:
            return
        body = {"dataset": self.cfg.dataset, "url": self.url, "status": self.status()}
        try:
            async with self.session.post(f"{self.cfg.agent}/v1/workers", json=body) as r:
                if r.status >= 300:
                    log.warning("agent %s refused the report: %s", self.cfg.agent, r.status)
        except (aiohttp.ClientError, TimeoutError) as err:
            log.debug("agent %s not reachable: %s", self.cfg.agent, err)

    async def report_loop(self) -> None:
        while True:
            await self.report()
            await asyncio.sleep(self.cfg.report_interval)

    def instrument(self, cluster: str = "") -> None:
        meter = telemetry.setup(
            "worker",
            attributes={"fluidfed.dataset": self.cfg.dataset, "fluidfed.cluster": cluster},
            otlp_default=self.cfg.agent,
        )
        DataPathInstruments(
            meter,
            self.store,
            read_bytes=lambda: {(): self.served_bytes},
            reads=lambda: {(): self.served},
            source_hits=dict,
            source_misses=dict,
            ufs_bytes=lambda: self.ufs_bytes,
            ufs_errors=lambda: self.ufs_errors,
        )

    def count_served(self, count: int, nbytes: int, *, local: bool = False) -> None:
        """Blocks (or spans) a sidecar got from us; `local`: read from our files."""
        self.served += count
        self.served_bytes += nbytes
        if local:
            self.served_local += count

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "dataset": self.cfg.dataset,
            "peers": self.peers(),
            **self.store.describe(),
            "ufs": {"reads": self.ufs_reads, "bytes": self.ufs_bytes, "errors": self.ufs_errors},
            "served": {
                "blocks": self.served,
                "bytes": self.served_bytes,
                "short_circuit": self.served_local,
                "located": self.located,
            },
            "load": msgspec.to_builtins(self.load),
        }


# --- HTTP ------------------------------------------------------------------------------

WORKER_KEY: web.AppKey[Worker] = web.AppKey("worker", Worker)


class _BlockFile(web.StreamResponse):
    """A checked disk block sent with sendfile(2): page cache to socket, no copy here."""

    def __init__(self, f: BinaryIO, size: int, headers: dict[str, str]) -> None:
        super().__init__(headers=headers)
        self.content_type = "application/octet-stream"
        self.content_length = size
        self._file = f
        self._size = size

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            writer = await super().prepare(request)
            assert writer is not None
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("connection lost")
            # asyncio falls back to reading and writing where the transport cannot (TLS)
            await asyncio.get_running_loop().sendfile(transport, self._file, 0, self._size)
            await super().write_eof()
            return writer
        finally:
            self._file.close()


def _problem(status: int, message: str) -> web.Response:
    return web.json_response({"status": status, "reason": message}, status=status)


async def _get_block(request: web.Request) -> web.StreamResponse:
    w = request.app[WORKER_KEY]
    key = request.match_info["key"]
    q = request.query
    try:
        ref = FileRef(mount=int(q["m"]), key=q["p"], size=int(q["s"]), version=q.get("v", ""))
        index = int(q["i"])
        lo, _, n = q.get("r", "").partition("-")
        span = (int(lo), int(n)) if lo else None
    except (KeyError, ValueError):
        return _problem(
            400, "a block request needs m, p, s, v and i query parameters (and r=OFF-LEN)"
        )
    if not 0 <= ref.mount < len(w.cfg.mounts):
        return _problem(
            400, f"mount {ref.mount} does not exist (this dataset has {len(w.cfg.mounts)})"
        )
    if ref.block_key(w.cfg.dataset, w.cfg.block_size, index) != key:
        return _problem(
            409,
            "block key does not match its description: sidecar and worker disagree "
            "on the dataset or block size",
        )
    if span is None and "verify" not in q:
        where = w.store.locate(key) if "local" in q else None
        if where is not None:
            # a reader on this machine reads the block file itself (short-circuit)
            w.located += 1
            w.count_served(1, where[1], local=True)
            return web.Response(
                headers={
                    workers.LOCAL: where[0],
                    workers.LENGTH: str(where[1]),
                    workers.CHECKSUM: str(where[2]),
                    workers.CACHE: "hit",
                }
            )
        held = await w.store.open_verified(key)
        if held is not None:
            w.count_served(1, held[1])
            return _BlockFile(
                held[0], held[1], {workers.CHECKSUM: str(held[2]), workers.CACHE: "hit"}
            )
    try:
        part = await w.store.get_span(key, *span) if span is not None else None
        if part is not None:
            w.count_served(1, len(part))
            crc = blocks.checksum(part)
            return web.Response(
                body=part,
                content_type="application/octet-stream",
                headers={workers.CHECKSUM: str(crc), workers.CACHE: "hit"},
            )
        data, crc, hit = await w.block(key, ref, index)
    except ufs.NotFoundError as err:
        return _problem(404, str(err))
    except ufs.UFSError as err:
        return _problem(504 if err.temporary else 502, str(err))
    if span is not None:
        data = data[span[0] : span[0] + span[1]]
        crc = blocks.checksum(data)
    w.count_served(1, len(data))
    return web.Response(
        body=data,
        content_type="application/octet-stream",
        headers={workers.CHECKSUM: str(crc), workers.CACHE: "hit" if hit else "miss"},
    )


async def _touch(request: web.Request) -> web.Response:
    """Blocks a sidecar on this node read from our files itself: hits, recently used."""
    w = request.app[WORKER_KEY]
    try:
        body = msgspec.convert(await request.json(), workers.Touched)
    except (ValueError, msgspec.ValidationError) as err:
        return _problem(400, f'expected {{"blocks": [[key, length], ...]}}: {err}')
    held = w.store.touch([key for key, _ in body.blocks])
    w.count_served(len(body.blocks), sum(n for _, n in body.blocks), local=True)
    return web.json_response({"held": held})


async def _put_block(request: web.Request) -> web.Response:
    w = request.app[WORKER_KEY]
    key = request.match_info["key"]
    if not re.fullmatch(r"[0-9a-f]{32}", key):
        return _problem(400, "not a block key")
    data = await request.read()
    try:
        crc = int(request.headers[workers.CHECKSUM])
    except (KeyError, ValueError):
        return _problem(400, f"missing {workers.CHECKSUM}")
    if blocks.checksum(data) != crc:
        return _problem(400, "block arrived damaged (checksum mismatch)")
    await w.store.put(key, data, crc)
    return web.Response(status=204)


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[WORKER_KEY].status())


async def _load(request: web.Request) -> web.Response:
    w = request.app[WORKER_KEY]
    body = await request.json() if request.can_read_body else {}
    peers = body.get("peers")
    prog = w.start_load(str(body.get("path", "")), list(peers) if peers else None)
    return web.json_response(msgspec.to_builtins(prog), status=202)


async def _load_progress(request: web.Request) -> web.Response:
    return web.json_response(msgspec.to_builtins(request.app[WORKER_KEY].load))


async def _drain(request: web.Request) -> web.Response:
    w = request.app[WORKER_KEY]
    body = await request.json() if request.can_read_body else {}
    peers = [str(p).rstrip("/") for p in body.get("peers", [])]
    return web.json_response(await w.drain(peers))


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def make_app(worker: Worker) -> web.Application:
    app = web.Application(client_max_size=64 * 2**20)
    app[WORKER_KEY] = worker
    app.router.add_get("/v1/blocks/{key}", _get_block)
    app.router.add_put("/v1/blocks/{key}", _put_block)
    app.router.add_get("/v1/status", _status)
    app.router.add_post("/v1/load", _load)
    app.router.add_get("/v1/load", _load_progress)
    app.router.add_post("/v1/drain", _drain)
    app.router.add_post("/v1/touch", _touch)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", telemetry.metrics_endpoint)
    return app


async def serve(
    cfg: WorkerConfig,
    *,
    host: str,
    port: int,
    advertise: str,
    cache_root: Path,
    config_path: Path | None,
    reload_interval: float = 5.0,
    drain_timeout: float = 60.0,
) -> None:
    runner: web.AppRunner | None = None
    worker: Worker | None = None
    heap.tune()
    try:
        site_port = port
        if not advertise:
            host_name = os.environ.get("HOSTNAME", "")
            if cfg.workers.service and host_name:
                advertise = f"http://{host_name}.{cfg.workers.service}:{cfg.workers.port}"
        worker = Worker(
            cfg,
            url=advertise or f"http://{host}:{port}",
            cache_root=cache_root,
            config_path=config_path,
        )
        await worker.open()
        worker.instrument()
        runner = web.AppRunner(make_app(worker), handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        for addr in runner.addresses:
            site_port = int(addr[1])
        if not advertise:
            worker.url = f"http://{host}:{site_port}"
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, worker.reload)
        s = worker.store.snapshot()
        print(
            f"fluidfed worker for {cfg.dataset} listening on http://{host}:{site_port} "
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
