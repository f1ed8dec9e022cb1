"""Where the sidecar gets a block: its own memory cache, then the block's owner among the
cache workers, then the under storage directly. Every path is bounded in time; a worker
that fails is skipped for a few seconds so readers do not each wait for it again.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from fluidfed import errors
from fluidfed.data import blockfile, blocks, receive, ufs, workers
from fluidfed.data.layout import FileRef, SidecarConfig
from fluidfed.data.store import BlockStore

log = logging.getLogger("fluidfed.sidecar")

WORKER_BACKOFF = 5.0  # seconds a failing worker is skipped
REMOTE_RECHECK = 300.0  # seconds before asking a remote worker for short-circuit reads again


@dataclass
class ReadStats:
    local_hits: int = 0  # the sidecar's own cache
    worker_hits: int = 0  # a worker had the block
    worker_misses: int = 0  # a worker fetched it from the UFS for us
    ufs_reads: int = 0  # read the UFS ourselves (no worker, or it failed)
    ufs_presigned: int = 0  # of those, S3 blocks received over presigned URLs
    worker_errors: int = 0
    short_circuit: int = 0  # worker hits read from the worker's block file on this machine
    ufs_errors: int = 0
    readahead: int = 0
    bytes: int = 0  # read from the under storage directly
    # small files handed to the kernel straight from a worker's block file on this node
    # (pyfuse3's session: into its page cache at their OPEN; the native one: their READ)
    pushed: int = 0
    connections: int = 0  # opened to workers for blocks (the rest reused kept-alive ones)
    connections_rustls: int = 0  # of those, https ones on rustls (the others: Python's ssl)
    connections_loop: int = 0  # opened for small files' blocks, on the event loop
    buffers_reused: int = 0  # blocks from workers (or their cold files) in a buffer used before


class BlockReader:
    def __init__(
        self,
        cfg: SidecarConfig,
        readers: list[ufs.UFS],
        store: BlockStore,
        session: aiohttp.ClientSession | None,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.cfg = cfg
        self.readers = readers
        self.store = store
        self.session = session
        # blocks from workers received straight into their buffers, off the event loop
        # (https workers verified with `tls`, else the system's roots)
        self.conns = receive.Connections(tls=tls)
        self.workers = cfg.workers.urls()
        self.stats = ReadStats()
        # the counters a thread handing a block to the kernel changes too (see `push`)
        self._counting = threading.Lock()
        self._down: dict[str, float] = {}
        self._remote: dict[str, float] = {}  # workers whose block files are not visible here
        self._dirs: dict[str, list[str]] = {}  # a worker's tier directories seen from here
        self._touched: dict[str, list[tuple[str, int]]] = {}  # read from files, to report
        self._reporter: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Future[blocks.Data]] = {}
        self._background: set[asyncio.Task[None]] = set()

    def key(self, ref: FileRef, index: int) -> str:
        return ref.block_key(self.cfg.dataset, self.cfg.block_size, index)

    async def block(self, ref: FileRef, index: int) -> blocks.Data:
        key = self.key(ref, index)
        got = await self.store.get(key)
        if got is not None:
            self.stats.local_hits += 1
            return got[0]
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            data, crc = await self._fetch(key, ref, index)
            await self.store.put(key, data, None if crc < 0 else crc)
            fut.set_result(data)
            return data
        except BaseException as err:
            fut.set_exception(err)
            fut.exception()
            raise
        finally:
            del self._inflight[key]

    def peek(self, ref: FileRef, index: int) -> blocks.Data | None:
        """The block if the sidecar's memory holds it: no waiting, no task."""
        got = self.store.peek(self.key(ref, index))
        if got is None:
            return None
        self.stats.local_hits += 1
        return got

    def can_push(self) -> bool:
        """Whether `push` can find anything: a worker's block files are visible here."""
        return bool(self._dirs) and self.cfg.short_circuit

    async def push(self, ref: FileRef, store: Callable[[blocks.Data], None]) -> bool:
        """Give `store` (which hands it to the kernel, blocking, the GIL let go: into its
        page cache, or as a READ's answer) block 0 of `ref`, read in a thread from its
        owner's block file if that lies on this node (or here, mapped, if the file is in
        the page cache). False, and nothing stored, if the block is not there or `store`
        failed: the caller reads it the usual way."""
        key = self.key(ref, 0)
        target = self._worker_for(key)
        if target is None or target not in self._dirs:  # (a worker seen as remote has none)
            return False
        failed: list[OSError] = []

        def guarded(data: blocks.Data) -> None:
            # counted before the kernel has it: a reader that got the bytes and then asks
            # for the status sees them counted (counted after, on the loop, it may not)
            self._hits(+1, pushed=True)
            try:
                store(data)
            except OSError as err:
                self._hits(-1, pushed=True)
                failed.append(err)

        if await self._from_files(target, key, guarded, ref.size) is None:
            return False
        if failed:
            log.debug("handing %s to the kernel failed: %s", ref.key, failed[0])
            return False
        return True

    def _hits(self, n: int, *, pushed: bool = False) -> None:
        """Count `n` blocks read from a worker's files on this node (and handed to the
        kernel straight from them: `pushed`). Called from threads as well as the loop."""
        with self._counting:
            self.stats.worker_hits += n
            self.stats.short_circuit += n
            if pushed:
                self.stats.pushed += n

    def cached(self, ref: FileRef, index: int) -> bool:
        key = self.key(ref, index)
        return key in self.store or key in self._inflight

    async def read_span(self, ref: FileRef, index: int, lo: int, size: int) -> blocks.Data:
        """`size` bytes at `lo` in block `index`, without fetching the whole block here
        (random reads); the worker still caches the whole block."""
        key = self.key(ref, index)
        span = (lo, size)
        target = self._worker_for(key)
        if target is not None and self.session is not None:
            try:
                async with asyncio.timeout(self.cfg.worker_timeout):
                    got = await workers.get_block(
                        self.session, target, key, ref, index, span, conns=self.conns
                    )
                self._count(got.hit)
                return got.data
            except (TimeoutError, errors.WorkerError) as err:
                self._failed(target, err)
        offset, _ = blocks.block_span(ref.size, self.cfg.block_size, index)
        return await self._ufs(ref, offset + lo, min(size, ref.size - offset - lo))

    def _worker_for(self, key: str) -> str | None:
        now = time.monotonic()
        return blocks.owner(key, [w for w in self.workers if self._down.get(w, 0.0) <= now])

    def _count(self, hit: bool) -> None:
        if hit:
            with self._counting:
                self.stats.worker_hits += 1
        else:
            self.stats.worker_misses += 1

    def _failed(self, target: str, err: Exception) -> None:
        self.stats.worker_errors += 1
        if not (isinstance(err, errors.WorkerError) and err.status in (404, 409)):
            self._down[target] = time.monotonic() + WORKER_BACKOFF
        log.info("worker %s failed: %s; reading the UFS", target, err)

    async def _ufs(self, ref: FileRef, offset: int, length: int) -> blocks.Data:
        try:
            data = await self.readers[ref.mount].read_block(ref.key, offset, length)
        except errors.UFSError:
            self.stats.ufs_errors += 1
            raise
        self.stats.ufs_reads += 1
        self.stats.ufs_presigned = sum(r.presigned for r in self.readers)
        self.stats.bytes += len(data)
        return data

    def prefetch(self, ref: FileRef, indices: range) -> None:
        """Fetch blocks ahead of a sequential reader, in the background."""
        for i in indices:
            key = self.key(ref, i)
            if key in self.store or key in self._inflight:
                continue
            self.stats.readahead += 1
            task = asyncio.create_task(self._quiet(ref, i))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _quiet(self, ref: FileRef, index: int) -> None:
        try:
            async with asyncio.timeout(self.cfg.read_timeout):
                await self.block(ref, index)
        except Exception as err:  # the reader will ask again and get the error itself
            log.debug("read-ahead of %s #%d failed: %s", ref.key, index, err)

    async def _fetch(self, key: str, ref: FileRef, index: int) -> tuple[blocks.Data, int]:
        target = self._worker_for(key)
        if target is not None and self.session is not None:
            now = time.monotonic()
            local = self.cfg.short_circuit and self._remote.get(target, 0.0) <= now
            if local and target in self._dirs:
                found = await self._from_files(target, key)
                if found is not None:
                    return found
            try:
                async with asyncio.timeout(self.cfg.worker_timeout):
                    try:
                        got = await workers.get_block(
                            self.session, target, key, ref, index, local=local, conns=self.conns
                        )
                    except errors.NotLocal as err:
                        log.info("%s; reading its blocks over HTTP", err)
                        self._remote[target] = now + REMOTE_RECHECK
                        self._dirs.pop(target, None)  # it moved, or never was here
                        got = await workers.get_block(
                            self.session, target, key, ref, index, conns=self.conns
                        )
                self._count(got.hit)
                self.stats.connections = self.conns.opened
                self.stats.connections_rustls = self.conns.opened_rustls
                self.stats.connections_loop = self.conns.opened_on_loop
                self.stats.buffers_reused = self.conns.buffers.reused
                if got.local:
                    with self._counting:
                        self.stats.short_circuit += 1
                    self._learn(target, got.path, key)
                return got.data, got.crc
            except (TimeoutError, errors.WorkerError) as err:
                self._failed(target, err)
        data = await self._ufs(ref, *blocks.block_span(ref.size, self.cfg.block_size, index))
        return data, -1  # the store computes it if a disk tier will hold the block

    def _learn(self, worker: str, path: str, key: str) -> None:
        """The tier directory a worker's block file lies in: its next blocks are looked
        for there first, without asking the worker."""
        d = blockfile.tier_dir(path, key)
        if d is None:
            return
        dirs = self._dirs.setdefault(worker, [])
        if d not in dirs:
            dirs.append(d)

    async def _from_files(
        self,
        worker: str,
        key: str,
        then: Callable[[blocks.Data], None] | None = None,
        size: int = 0,
    ) -> tuple[blocks.Data, int] | None:
        """A block straight from a worker's files (checked against the CRC it was stored
        with), or None: ask the worker. The worker hears of it in the next report. With
        `then`, `then` gets the block (of `size` bytes) as `_give` reads it; without, the
        block is mapped here if it is in the page cache, else read past it in a thread."""
        for d in self._dirs[worker]:
            path = blockfile.block_file(d, key)
            try:
                if then is None:
                    # (a file not in the page cache read into a reused buffer)
                    data, crc = await blockfile.load_block_file(path, self.conns.buffers.take)
                else:
                    data, crc = await self._give(path, size, then)
            except FileNotFoundError:
                continue  # not there (yet, or any more): another tier, or the worker
            except errors.CorruptBlock:
                return None  # the worker checks it, drops it and fetches it again
            except OSError as err:
                log.info("cannot read %s's block files in %s: %s", worker, d, err)
                self._dirs[worker].remove(d)
                return None
            if then is None:  # (`then` counted them as it handed them on: see `push`)
                self._hits(1)
            self.stats.buffers_reused = self.conns.buffers.reused
            self._touched.setdefault(worker, []).append((key, size if then else len(data)))
            if self._reporter is None or self._reporter.done():
                self._reporter = asyncio.create_task(self._report_touches())
            return data, crc
        return None

    @staticmethod
    async def _give(
        path: str, size: int, then: Callable[[blocks.Data], None]
    ) -> tuple[blocks.Data, int]:
        """Hand `then` a block file's checked data: mapped and given here when the file is
        in the page cache (a thread hand-off costs more than the copy), else read and given
        in a thread (`blockfile.give_block_file`: the data returned is then empty, `then`
        had it)."""
        try:
            data, crc = blockfile.map_block_file(path, cached_only=True)
        except errors.NotCached:
            return b"", await asyncio.to_thread(blockfile.give_block_file, path, size, then)
        if len(data) != size:  # the kernel would take a longer one as the file's new size
            raise errors.CorruptBlock(f"{path}: {len(data)} bytes, expected {size}")
        then(data)
        return data, crc

    async def _report_touches(self, interval: float = 1.0) -> None:
        """Tell each worker, once a second, which of its blocks were read from its files:
        they count as its hits and stay recently used in its cache."""
        while self._touched:
            await asyncio.sleep(interval)
            batch, self._touched = self._touched, {}
            for worker, done in batch.items():
                if self.session is None:
                    return
                try:
                    async with asyncio.timeout(self.cfg.worker_timeout):
                        await workers.touch(self.session, worker, done)
                except (TimeoutError, errors.WorkerError) as err:
                    log.debug("telling %s of %d file reads failed: %s", worker, len(done), err)

    def trust_changed(self) -> None:
        """How workers are verified changed (their CA named): those that failed may answer
        now, so none is skipped for its last failure any longer."""
        self._down.clear()

    async def close(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
            await asyncio.gather(self._reporter, return_exceptions=True)
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self.conns.close()
