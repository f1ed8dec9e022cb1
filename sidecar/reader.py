"""Where the sidecar gets a block: its own memory cache, then the block's owner among the
cache workers, then the under storage directly. Every path is bounded in time; a worker
that fails is skipped for a few seconds so readers do not each wait for it again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp

from fluidfed import errors
from fluidfed.data import blockfile, blocks, protocol, receive, ufs, workers
from fluidfed.data.layout import FileRef, SidecarConfig
from fluidfed.data.store import BlockStore

log = logging.getLogger("fluidfed.sidecar")

WORKER_BACKOFF = 5.0  # seconds a failing worker is skipped
REMOTE_RECHECK = 300.0  # seconds before asking a remote worker for short-circuit reads again
# seconds before a random read asks a worker again where its block files lie (a whole block
# for a span: `read_span`), where the last answer did not say (a miss, a block in memory)
LOCATE_AGAIN = 30.0
SHORT_FOR = 1.0  # seconds blocks are read over HTTP after this sidecar ran out of descriptors
# blocks asked for with a block a sequential reader misses at its worker, to be read from
# the under storage in the same ranged read (`prefetch`): with 4 MiB blocks one GET of 16
# MiB, the first read filling a worker's cache +11%, the store's CPU per GiB -19% (runs of
# two gained nothing; figures: README, "Measured design decisions")
RUN = protocol.MAX_RUN
# blocks asked for with a block of a warm file read over HTTP, sent in the same answer
# (`_joins`): one request for two blocks, 512 MiB from a worker's page cache over loopback
# 1,083 -> 1,166 MiB/s, the sidecar 0.88 -> 0.80 CPU-s/GiB; runs of four cut the sidecar's
# CPU more but read 1,051, each answer's first block waiting for all four (figures:
# README, "Measured design decisions")
WARM_RUN = 1
CLOSE_REPORT_WITHIN = 1.0  # seconds a closing reader gives each worker its last report
COLD_FILES = 1024  # files whose last answer from a worker is remembered (`_seen`)
AHEAD_KEPT = 4096  # blocks remembered as read ahead for this reader (`_read_ahead`)
SUSPECTS_KEPT = 1024  # blocks remembered as found damaged in a worker's files (`distrust`)


@dataclass
class ReadStats:
    local_hits: int = 0  # the sidecar's own cache
    worker_hits: int = 0  # a worker had the block
    worker_misses: int = 0  # a worker fetched it from the UFS for us
    ufs_reads: int = 0  # read the UFS ourselves (no worker, or it failed)
    ufs_presigned: int = 0  # of those, S3 blocks received over presigned URLs
    ufs_joined: int = 0  # ... and in one GET with the block before them (a run: `_ufs_run`)
    worker_errors: int = 0
    short_circuit: int = 0  # blocks read from the worker's block file on this machine
    session_mapped: int = 0  # of those, mapped by the FUSE session itself (`plan`)
    ufs_errors: int = 0
    readahead: int = 0
    # read-aheads that took a block together with those after it (a file taken for cold:
    # asked of its worker in one request, or read from S3 in one GET, unless its first
    # block turns up in the worker's files here)
    runs: int = 0
    bytes: int = 0  # read from the under storage directly
    # small files handed to the kernel straight from a worker's block file on this node
    # (pyfuse3's session: into its page cache at their OPEN; the native one: their READ)
    pushed: int = 0
    connections: int = 0  # opened to workers for blocks (the rest reused kept-alive ones)
    connections_rustls: int = 0  # of those, https ones on rustls (the others: Python's ssl)
    connections_loop: int = 0  # opened for small files' blocks, on the event loop
    buffers_reused: int = 0  # blocks from workers (or their cold files) in a buffer used before
    # a worker's block files on this node found damaged as they were read (the block then
    # asked of the worker, which drops the file and fetches it again)
    corrupt: int = 0
    # READ answers from such a file, mapped and not checked whole, that failed a check of
    # their pieces as they were sent, or of the whole block before (a small READ, an answer
    # across blocks, pyfuse3's session), and were answered again (`distrust`)
    reread: int = 0


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
        # workers a random read asked where their files lie, until when (`read_span`)
        self._located: dict[str, float] = {}
        # workers that send no runs in one answer (older ones), until when (`_joins`)
        self._joinless: dict[str, float] = {}
        # blocks that came in an answer after the one asked for, for the read-ahead that
        # reserved them (`_fill`)
        self._arrived: dict[str, tuple[blocks.Data, int]] = {}
        self._dirs: dict[str, list[str]] = {}  # a worker's tier directories seen from here
        self._ahead: dict[str, bool] = {}  # blocks read ahead for us, not read yet (`_read_ahead`)
        self._touched: dict[str, list[tuple[str, int]]] = {}  # read from files, to report
        self._reporter: asyncio.Task[None] | None = None
        self._reporting: asyncio.Task[None] | None = None  # its report under way
        self._inflight: dict[str, asyncio.Future[blocks.Data]] = {}
        self._short_until = 0.0  # (out of descriptors: `_from_files`)
        # blocks whose mapped file failed a check as it was read: checked whole when they
        # are read from a worker's files again (`distrust`), not a READ at a time
        self._suspects: OrderedDict[str, None] = OrderedDict()
        # files whose last block from a worker was a miss there (True) or a hit: `_seen`
        self._cold: dict[tuple[int, str], bool] = {}
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
        return await self._fill(fut, key, ref, index)

    async def _fill(
        self,
        fut: asyncio.Future[blocks.Data],
        key: str,
        ref: FileRef,
        index: int,
        run: int | None = 0,
        found: tuple[blocks.Data, int] | None = None,
    ) -> blocks.Data:
        """Fetch a block, keep it and give it to those waiting on `fut` (in `_inflight`
        under `key` until then); `run`: the blocks after it to ask for with it (None: it
        was asked for with the one before it: sent with it by its worker, `_arrived`, or
        read with it from the under storage here, else fetched now on its own). `found`:
        the block and its CRC, already had (mapped from its worker's file: `read_span`)."""
        try:
            came = found or (self._arrived.pop(key, None) if run is None else None)
            if came is not None:  # had, or sent with the one before it by its worker
                await self._keep(key, *came)
                fut.set_result(came[0])
                return came[0]
            got = await self.store.get(key) if run is None else None
            if got is not None:  # read with the one before it from the under storage here
                fut.set_result(got[0])
                return got[0]
            data, crc = await self._fetch(key, ref, index, run)
            await self._keep(key, data, None if crc < 0 else crc)
            fut.set_result(data)
            return data
        except BaseException as err:
            fut.set_exception(err)
            fut.exception()
            raise
        finally:
            del self._inflight[key]

    async def _keep(self, key: str, data: blocks.Data, crc: int | None) -> None:
        """Keep a block here; one whose file cannot be written (a disk tier of this
        sidecar's on a full disk) is read all the same, and not kept."""
        try:
            await self.store.put(key, data, crc)
        except OSError as err:
            self.store.not_kept.warning(
                "block %s not kept here: its file could not be written: %s", key, err
            )

    def peek(self, ref: FileRef, index: int) -> blocks.Data | None:
        """The block if the sidecar's memory holds it: no waiting, no task."""
        got = self.store.peek(self.key(ref, index))
        if got is None:
            return None
        self.stats.local_hits += 1
        return got

    async def distrust(self, ref: FileRef, index: int) -> None:
        """Block `index` of `ref`, held here as mapped from a worker's file, failed its
        check as it was read: let go of it, and read it whole and checked when it is next
        read (so from the worker, which drops the file and fetches the block again, if
        the file is still damaged). One of this sidecar's own disk tier is read checked
        whole when next read, and dropped only if that fails (the store's `corrupt`): a
        READ's check also fails for pages the kernel let go of, not only for damaged ones."""
        key = self.key(ref, index)
        self.stats.reread += 1
        # (with a disk tier here a worker's file is checked whole as it is loaded: a READ
        # fails its check only on this sidecar's own files, held or let go of since)
        if self.store.distrust(key) or self.store.on_disk:
            return
        if key not in self._suspects:  # (its other READs under way fail too: said once)
            self.stats.corrupt += 1
            log.warning("block %d of %s: its worker's block file failed a check", index, ref.key)
        self._suspect(key)
        await self.store.discard(key)

    def _suspect(self, key: str) -> None:
        self._suspects[key] = None
        self._suspects.move_to_end(key)
        if len(self._suspects) > SUSPECTS_KEPT:
            self._suspects.popitem(last=False)

    async def checked(
        self, ref: FileRef, index: int, data: blocks.Data, span: tuple[int, int] | None = None
    ) -> blocks.Data:
        """`data`, block `index` of `ref`, checked whole if it was mapped unchecked (for
        any use but a READ's answer: `blockfile.check_whole`); or with `span` (lo, size),
        those bytes of it, checked by the pieces they cover (a READ's answer copied out of
        it: `blockfile.check_span`; the block stays unchecked). If that fails, the block
        read again (`distrust`), and checked again (CorruptBlock if that fails too)."""
        for attempt in range(3):
            if span is None:
                got, check = data, blockfile.check_whole
            else:
                got, check = memoryview(data)[span[0] : span[0] + span[1]], blockfile.check_span
            try:
                check(got)
                return got
            except errors.CorruptBlock:
                if attempt == 2:
                    raise
                await self.distrust(ref, index)
                data = await self.block(ref, index)
        raise AssertionError("not reached")

    def can_push(self) -> bool:
        """Whether `push` can find anything: a worker's block files are visible here (and
        this sidecar has descriptors to open them: `_short_until`)."""
        return bool(self._dirs) and self.cfg.short_circuit and self._short_until <= time.monotonic()

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

    def _hits(self, n: int, *, pushed: bool = False, fresh: bool = False) -> None:
        """Count `n` blocks read from a worker's files on this node (and handed to the
        kernel straight from them: `pushed`): hits, or with `fresh` misses (read from the
        under storage for this reader). Called from threads as well as the loop."""
        with self._counting:
            if fresh:
                self.stats.worker_misses += n
            else:
                self.stats.worker_hits += n
            self.stats.short_circuit += n
            if pushed:
                self.stats.pushed += n

    def cached(self, ref: FileRef, index: int) -> bool:
        key = self.key(ref, index)
        return key in self.store or key in self._inflight

    def when_fetched(self, ref: FileRef, index: int, then: Callable[[], object]) -> bool:
        """Whether block `index` of `ref` is being fetched (read ahead, or for a READ);
        if so, `then` is called once it has come and is kept here (not if it failed)."""
        fut = self._inflight.get(self.key(ref, index))
        if fut is None:
            return False

        def came(f: asyncio.Future[blocks.Data]) -> None:
            if not f.cancelled() and f.exception() is None:
                then()

        fut.add_done_callback(came)
        return True

    async def read_span(self, ref: FileRef, index: int, lo: int, size: int) -> blocks.Data:
        """`size` bytes at `lo` in block `index`, without fetching the whole block here
        (random reads); the worker still caches the whole block. Where the block's file
        lies on this node whole in the page cache, the block is mapped from it instead
        (no round trip to the worker, no disk read) and held, as a sequential reader's
        is: the reads after it in that block are answered from it."""
        key = self.key(ref, index)
        span = (lo, size)
        target = self._worker_for(key)
        if target is not None and key not in self._inflight and self._maps_here(target):
            if target not in self._dirs:
                # where its files lie is not known yet: this block is asked for whole, for
                # the path of its file (`_fetch`), once in a while until it is known
                self._located[target] = time.monotonic() + LOCATE_AGAIN
                return memoryview(await self.block(ref, index))[lo : lo + size]
            # (`_from_files` maps a cached file on the loop, without waiting: nothing else
            # can start fetching the block before it is in `_inflight` below)
            found = await self._from_files(target, key, cached_only=True)
            if found is not None:
                fut = asyncio.get_running_loop().create_future()
                self._inflight[key] = fut
                data = await self._fill(fut, key, ref, index, found=found)
                if size >= blockfile.PIECEWISE_FROM:  # (checked by its pieces as it is sent)
                    return memoryview(data)[lo : lo + size]
                # a small one: the pieces it covers checked, and copied out (not one to
                # check its whole block for: the block's later READs check it)
                return bytes(await self.checked(ref, index, data, span))
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

    def _short_circuits(self, target: str, now: float) -> bool:
        """Whether blocks of worker `target` are looked for in its files on this node
        (short-circuit reads: asked for, the worker not found remote lately, this sidecar
        not out of descriptors)."""
        return (
            self.cfg.short_circuit
            and self._remote.get(target, 0.0) <= now
            and self._short_until <= now
        )

    def _maps_here(self, target: str) -> bool:
        """Whether a random read of a block of `target` may map the block from its file on
        this node (`read_span`): short-circuit reads go on, this sidecar keeps no disk tier
        (whose blocks it writes, checked whole), and where `target`'s files lie is known,
        or was not asked lately (`_located`)."""
        now = time.monotonic()
        return (
            self.session is not None
            and not self.store.on_disk
            and self._short_circuits(target, now)
            and (target in self._dirs or self._located.get(target, 0.0) <= now)
        )

    def _worker_for(self, key: str) -> str | None:
        now = time.monotonic()
        return blocks.owner(key, [w for w in self.workers if self._down.get(w, 0.0) <= now])

    def _count(self, hit: bool) -> None:
        with self._counting:  # (`_hits` counts from threads too)
            if hit:
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
        self._counted_ufs(len(data))
        return data

    async def _ufs_checked(self, ref: FileRef, offset: int, length: int) -> tuple[blocks.Data, int]:
        """As `_ufs`, with the block's CRC, for this sidecar's disk tier."""
        try:
            data, crc = await self.readers[ref.mount].read_checked(ref.key, offset, length)
        except errors.UFSError:
            self.stats.ufs_errors += 1
            raise
        self._counted_ufs(len(data))
        return data, crc

    def _counted_ufs(self, nbytes: int) -> None:
        self.stats.ufs_reads += 1
        self.stats.ufs_presigned = sum(r.presigned for r in self.readers)
        self.stats.bytes += nbytes

    def prefetch(self, ref: FileRef, indices: Iterable[int]) -> None:
        """Fetch blocks ahead of a sequential reader, in the background. Where the file's
        blocks have been misses at their worker (a first read; a file not asked for yet
        is taken for one, as the kernel's read-ahead asks for the first blocks of a file
        before any has come), a block is asked for together with the next ones (up to
        `RUN`) that the same worker owns: the worker reads them from the under storage in
        one ranged read and sends them in the same answer (an older worker: they are asked
        for once the first is here, hits in its memory by then). Blocks no worker has are
        read here the same way. A warm file read over HTTP is asked for in runs of
        WARM_RUN + 1 blocks, sent in one answer (`_joins`)."""
        bs = self.cfg.block_size
        count = blocks.block_count(ref.size, bs)
        cold = (
            RUN
            and self._cold.get((ref.mount, ref.key), True)  # (not known: likely)
            and ref.mount < len(self.readers)
            and self.readers[ref.mount].joins(bs)  # (a store read block by block: none)
        )
        for i in indices:
            key = self.key(ref, i)
            if key in self._inflight:
                continue
            if key in self.store:
                self.store.load(key)  # (on this sidecar's disk: read ahead, held at hand)
                continue
            if cold:
                follow = self._run_after(ref, i, key, count, RUN)
            elif self._joins(key):
                follow = self._run_after(ref, i, key, count, WARM_RUN)
            else:
                follow = []
            loop = asyncio.get_running_loop()
            futs = [loop.create_future() for _ in range(1 + len(follow))]
            for k, f in zip([key, *follow], futs, strict=True):
                self._inflight[k] = f
            self.stats.readahead += len(futs)
            self.stats.runs += bool(follow)
            run = list(zip([key, *follow], futs, strict=True))
            task = asyncio.create_task(self._quiet(ref, i, run))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            task.add_done_callback(functools.partial(self._abandon, ref, run))

    def _abandon(
        self, ref: FileRef, run: list[tuple[str, asyncio.Future[blocks.Data]]], _: object
    ) -> None:
        """Once a read-ahead's task is over: a block of it never fetched (the task was
        cancelled before it began, or timed out) fails its waiters and is no longer in
        flight, so a reader asking for it again fetches it; a block sent with another and
        not taken by then is dropped (`_arrived`)."""
        for k, f in run:
            if not f.done():
                f.set_exception(errors.WorkerError(f"read-ahead of {ref.key} stopped"))
                f.exception()
            if self._inflight.get(k) is f:
                del self._inflight[k]
            self._arrived.pop(k, None)

    def _joins(self, key: str) -> bool:
        """Whether the block's worker sends a run of it and the blocks after it that it
        holds in one answer (`BlockQuery.joined`) where a warm file is read over HTTP:
        one request and one answer per run instead of one per block. Not where the blocks
        are read from the worker's files here."""
        owner = self._worker_for(key)
        return (
            owner is not None
            and self.session is not None
            and not (self.cfg.short_circuit and owner in self._dirs)
            and self._joinless.get(owner, 0.0) <= time.monotonic()
        )

    def _run_after(self, ref: FileRef, index: int, key: str, count: int, most: int) -> list[str]:
        """The keys of the blocks after `index` to ask its worker for with it (or to read
        with it from the under storage, where no worker has them): up to `most`, as long as
        that worker owns them and nothing here holds or fetches them."""
        owner = self._worker_for(key)  # (None: no worker, this reader reads them itself)
        keys: dict[int, str] = {}

        def free(i: int) -> bool:
            k = keys[i] = self.key(ref, i)
            return k not in self.store and k not in self._inflight and self._worker_for(k) == owner

        return [keys[i] for i in blocks.run_after(index, count, most, free)]

    async def _quiet(
        self, ref: FileRef, index: int, run: list[tuple[str, asyncio.Future[blocks.Data]]]
    ) -> None:
        """Fetch block `index` (its future the first of `run`'s), then the blocks of `run`
        after it, all at once; a failure is the reader's to see when it asks. The blocks
        of `run` not reached in time fail their waiters (`_abandon`)."""
        (key, fut), *follow = run
        failed: list[BaseException] = []  # the reader will ask again and get the error itself
        try:
            async with asyncio.timeout(self.cfg.read_timeout):
                try:
                    await self._fill(fut, key, ref, index, len(follow))
                except Exception as err:
                    failed.append(err)
                # the blocks after it at once, whether it came or not (sent with it by
                # their worker, a hit in its memory by now, or read wherever `_fetch` finds
                # them)
                fills = (
                    self._fill(f, k, ref, i, None) for i, (k, f) in enumerate(follow, index + 1)
                )
                got = await asyncio.gather(*fills, return_exceptions=True)
                failed += [g for g in got if isinstance(g, BaseException)]
        except Exception as err:
            failed.append(err)
        if failed:
            log.debug("read-ahead of %s from #%d failed: %s", ref.key, index, failed[0])

    async def _fetch(
        self, key: str, ref: FileRef, index: int, run: int | None = 0
    ) -> tuple[blocks.Data, int]:
        """The block and its CRC (-1: not known) from its worker, else the under storage.
        `run`: the blocks after it to ask the worker for with it; None: it was read with
        the block before it (a hit at the worker, which tells nothing of the file)."""
        target = self._worker_for(key)
        if target is not None and self.session is not None:
            now = time.monotonic()
            local = self._short_circuits(target, now)
            # a block its worker read with the one before it for this reader (as it said,
            # `protocol.AHEAD`) came from the under storage: a miss, however it comes
            fresh = self._ahead.pop(key, False)
            if local and target in self._dirs:
                found = await self._from_files(target, key, fresh=fresh)
                if found is not None:
                    if run is not None:  # (cached: its next blocks asked for at once)
                        self._seen(ref, not fresh)
                    return found
                local = self._short_until <= now  # (out of descriptors just now: over HTTP)
            try:
                async with asyncio.timeout(self.cfg.worker_timeout):
                    try:
                        got = await workers.get_block(
                            self.session,
                            target,
                            key,
                            ref,
                            index,
                            local=local,
                            conns=self.conns,
                            run=run or 0,
                            block_size=self.cfg.block_size,
                        )
                    except errors.NotLocal as err:
                        log.info("%s; reading its blocks over HTTP", err)
                        self._remote[target] = now + REMOTE_RECHECK
                        self._dirs.pop(target, None)  # it moved, or never was here
                        got = await workers.get_block(
                            self.session,
                            target,
                            key,
                            ref,
                            index,
                            conns=self.conns,
                            run=run or 0,
                            block_size=self.cfg.block_size,
                        )
                self._count(got.hit)
                for i, (data, crc, hit) in enumerate(got.rest, index + 1):
                    # (sent with it: for the read-ahead that reserved them, `_fill`)
                    self._count(hit)
                    self._arrived[self.key(ref, i)] = (data, crc)
                if got.short:  # (out of descriptors: blocks over HTTP a while, `_from_files`)
                    self._short_until = time.monotonic() + SHORT_FOR
                if got.joined is False:  # an older worker: warm files block by block again
                    self._joinless[target] = now + REMOTE_RECHECK
                if run is not None:
                    self._seen(ref, got.hit)
                if got.ahead:
                    self._read_ahead(ref, index, got.ahead)
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
        if run and self.readers[ref.mount].joins(self.cfg.block_size):
            return await self._ufs_run(ref, index, run)
        offset, length = blocks.block_span(ref.size, self.cfg.block_size, index)
        if self.store.on_disk:  # (taken by the thread that received it, pieces noted)
            return await self._ufs_checked(ref, offset, length)
        return await self._ufs(ref, offset, length), -1  # (a memory-only store needs none)

    async def _ufs_run(self, ref: FileRef, index: int, run: int) -> tuple[blocks.Data, int]:
        """Block `index` and the `run` after it from the under storage in one read where it
        allows (S3: one ranged GET, `UFS.read_run`): the first returned, the others kept
        here, where the read-ahead that asked for them finds them (`_fill`)."""
        bs = self.cfg.block_size
        lengths = [blocks.block_span(ref.size, bs, i)[1] for i in range(index, index + 1 + run)]
        offset = blocks.block_span(ref.size, bs, index)[0]
        reader = self.readers[ref.mount]
        try:
            # (CRCs where this sidecar's disk keeps the blocks: taken by the receiving thread)
            parts = await reader.read_run(ref.key, offset, lengths, checksum=self.store.on_disk)
        except errors.UFSError:
            self.stats.ufs_errors += 1
            raise
        self.stats.ufs_reads += len(parts)
        self.stats.ufs_presigned = sum(r.presigned for r in self.readers)
        self.stats.ufs_joined = sum(r.joined for r in self.readers)
        self.stats.bytes += sum(len(d) for d, _ in parts)
        for i, (data, crc) in enumerate(parts[1:], index + 1):
            await self._keep(self.key(ref, i), data, None if crc < 0 else crc)
        return parts[0]

    def _read_ahead(self, ref: FileRef, index: int, count: int) -> None:
        """Remember the `count` blocks after `index` that its worker read with it for this
        reader (their first reads are misses), for the AHEAD_KEPT latest; at most RUN of
        them, within the file (a count past those is not what was asked for)."""
        whole = blocks.block_count(ref.size, self.cfg.block_size)
        for i in blocks.run_after(index, whole, min(count, RUN), lambda _: True):
            self._ahead[self.key(ref, i)] = True
        while len(self._ahead) > AHEAD_KEPT:
            del self._ahead[next(iter(self._ahead))]

    def _seen(self, ref: FileRef, hit: bool) -> None:
        """Remember whether a file's last block from a worker was a miss there (its next
        blocks are asked for in runs: `prefetch`), for the COLD_FILES files seen last."""
        if ref.size <= self.cfg.block_size:
            return
        file = (ref.mount, ref.key)
        self._cold.pop(file, None)
        self._cold[file] = not hit
        if len(self._cold) > COLD_FILES:
            del self._cold[next(iter(self._cold))]

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
        *,
        fresh: bool = False,
        cached_only: bool = False,
    ) -> tuple[blocks.Data, int] | None:
        """A block straight from a worker's files (checked against the CRC it was stored
        with: whole, or, mapped, by the pieces each READ's answer covers as it is sent), or
        None: ask the worker. The worker hears of it in the next report. With `then`,
        `then` gets the block (of `size` bytes) as `_give` reads it; without, the block is
        mapped here if it is in the page cache, else read in a thread: a large one into the
        page cache and mapped, a small one past it (`blockfile.load_block_file`). A block
        kept on this sidecar's disk is checked whole before (it would be written
        unchecked). With `cached_only`, None for a file not whole in the page cache (the
        caller asks the worker for what it needs of it, not the whole file from the disk):
        nothing waits, all is done on the loop."""
        for d in self._dirs[worker]:
            path = blockfile.block_file(d, key)
            try:
                if then is None:
                    # (a small file not in the page cache read into a reused buffer and
                    # checked; any other mapped and checked as it is read, unless it
                    # failed that lately)
                    take = self.conns.buffers.take
                    lazy = key not in self._suspects and not self.store.on_disk
                    if cached_only:
                        data, crc = blockfile.map_block_file(path, cached_only=True, lazy=lazy)
                    else:
                        data, crc = await blockfile.load_block_file(path, take, lazy=lazy)
                else:
                    data, crc = await self._give(path, size, then)
            except FileNotFoundError:
                continue  # not there (yet, or any more): another tier, or the worker
            except errors.NotCached:
                return None  # (`cached_only`: the worker reads what is needed of it)
            except errors.CorruptBlock:
                if key not in self._suspects:  # (else counted when it failed as it was read)
                    self.stats.corrupt += 1
                self._suspect(key)  # (not mapped unchecked when read again meanwhile)
                return None  # the worker checks it, drops it and fetches it again
            except OSError as err:
                if err.errno in errors.SCARCE:  # (this sidecar is short, not the files)
                    log.info("cannot read %s's block file %s now: %s", worker, path, err)
                    # for a while blocks are asked for over HTTP, not located: a file its
                    # worker pointed to could not be opened either (asked for twice)
                    self._short_until = time.monotonic() + SHORT_FOR
                    return None
                log.info("cannot read %s's block files in %s: %s", worker, d, err)
                self._dirs[worker].remove(d)
                return None
            if then is None:  # (`then` counted them as it handed them on: see `push`)
                self._hits(1, fresh=fresh)
            self.stats.buffers_reused = self.conns.buffers.reused
            self._touch(worker, key, size if then else len(data))
            return data, crc
        return None

    def _touch(self, worker: str, key: str, size: int) -> None:
        """Tell `worker` in its next report that its block `key` was read from its files."""
        self._touched.setdefault(worker, []).append((key, size))
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.create_task(self._report_touches())

    def plan(self, ref: FileRef, indices: range) -> list[tuple[str, str, list[str]] | None]:
        """For each of a file's blocks `indices`: (its worker, its key, where its file may
        lie in that worker's tiers on this node), for the FUSE session to map it there
        itself (`NativeSession._plan`); None for a block to read here as usual (a worker
        whose files are not visible here, or none; one that failed a check lately; one held
        or fetched here already: read ahead, counted then). Nothing where blocks are
        checked whole (kept on this sidecar's disk), or read over HTTP for now (out of
        descriptors)."""
        if not self.cfg.short_circuit or self.store.on_disk or time.monotonic() < self._short_until:
            return []
        out: list[tuple[str, str, list[str]] | None] = []
        for i in indices:
            key = self.key(ref, i)
            worker = self._worker_for(key)
            dirs = self._dirs.get(worker) if worker is not None else None
            if (
                worker is None
                or not dirs
                or key in self._suspects
                or key in self.store
                or key in self._inflight
            ):
                out.append(None)
            else:
                out.append((worker, key, [blockfile.block_file(d, key) for d in dirs]))
        return out

    def mapped_by_session(self, worker: str, key: str, size: int) -> None:
        """Count a block the FUSE session mapped from `worker`'s file itself (`plan`): a
        hit there, told to it as such."""
        self._hits(1)
        self.stats.session_mapped += 1
        self._touch(worker, key, size)

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
        they count as its hits (misses, those it read ahead for this reader) and stay
        recently used in its cache."""
        while self._touched:
            await asyncio.sleep(interval)
            # (shielded: a close lets a report under way finish, briefly: `close`)
            self._reporting = asyncio.create_task(self._report_now(self.cfg.worker_timeout))
            await asyncio.shield(self._reporting)

    async def _report_now(self, within: float) -> None:
        batch, self._touched = self._touched, {}
        if self.session is None:
            return
        todo = list(batch.items())
        try:
            while todo:
                worker, done = todo[0]
                try:
                    async with asyncio.timeout(within):
                        await workers.touch(self.session, worker, done)
                except (TimeoutError, errors.WorkerError) as err:
                    log.debug("telling %s of %d file reads failed: %s", worker, len(done), err)
                del todo[0]
        finally:
            # cancelled on the way (the sidecar closing): the workers not told yet are told
            # in its last report; the one being told may have heard it, so not again
            for worker, done in todo[1:]:
                self._touched.setdefault(worker, [])[:0] = done

    def trust_changed(self) -> None:
        """How workers are verified changed (their CA named): those that failed may answer
        now, so none is skipped for its last failure any longer."""
        self._down.clear()

    async def close(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
            await asyncio.gather(self._reporter, return_exceptions=True)
            self._reporter = None
            under_way = self._reporting
            if under_way is not None and not under_way.done():
                # a report under way finishes, briefly (a worker half told counts wrong);
                # cut short, it leaves the workers it had not told yet to the last one
                await asyncio.wait({under_way}, timeout=CLOSE_REPORT_WITHIN)
                under_way.cancel()
                await asyncio.gather(under_way, return_exceptions=True)
            # what was read from the workers' files since the last report, told before
            # leaving (briefly: a worker that does not answer is not waited for)
            await self._report_now(CLOSE_REPORT_WITHIN)
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self.conns.close()
