"""The cache worker's core, without its HTTP server (`agents.worker.server`).

It holds the blocks it owns (by rendezvous hashing over the current workers) in the tiers
of the dataset's cache spec, fetches a missing block from the under storage once however
many readers ask for it at the same time, warms up on request, and on SIGTERM hands its
blocks to their owners among the workers that stay before it exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, NamedTuple

import aiohttp
import msgspec

from fluidfed import config, errors, names, telemetry
from fluidfed.data import blocks, credentials, layout, protocol, ufs, workers
from fluidfed.data.instruments import DataPathInstruments
from fluidfed.data.layout import FileRef, WorkerConfig
from fluidfed.data.store import BlockStore
from fluidfed.logs import Seldom

log = logging.getLogger("fluidfed.worker")

# bytes of fetched blocks a worker may hold in memory while their files are written: it
# answers a miss before the block file is written (README, "Measured design decisions");
# past this, a miss waits for its file
WRITE_BEHIND = 64 * 2**20
AHEAD_KEPT = 4096  # blocks read with a miss before them remembered until served (`fresh`)
AHEAD_FOR = 30.0  # seconds such a block's first answer still counts as a miss


class Got(NamedTuple):
    """A block as `Worker.block` has it for its caller."""

    data: blocks.Data
    crc: int
    hit: bool  # cached (else read from the under storage for this caller)
    ahead: int = 0  # blocks after it read with it for this reader (their first answers: misses)
    # ... or, asked for `joined`, those blocks themselves (data, CRC), misses all
    rest: tuple[tuple[blocks.Data, int], ...] = ()


# a file of the dataset as listed, or as a block request names it: the server passes the
# query itself, no FileRef built per request
Source = FileRef | protocol.BlockQuery


class Budget:
    """Blocks in flight from the under storage, at most `total` however they are grouped
    (a run of several takes as many; more than `total` take all of it), handed out in the
    order asked for. What `acquire` gave is given back with `release`, perhaps later than
    the read (a run's blocks are stored after its first is answered: `Worker._keep`)."""

    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self.free = self.total
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, n: int) -> int:
        """Wait until `n` blocks (at most `total`) may be read; how many were taken."""
        n = min(max(1, n), self.total)
        if not self._waiting and self.free >= n:
            self.free -= n
            return n
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append((n, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(n)  # given just as the caller was cancelled: back
            raise
        return n

    def release(self, n: int) -> None:
        self.free += n
        while self._waiting:
            want, fut = self._waiting[0]
            if fut.done():  # (cancelled while waiting)
                self._waiting.popleft()
                continue
            if self.free < want:
                break
            self._waiting.popleft()
            self.free -= want
            fut.set_result(None)


def close_files(sources: Iterable[BinaryIO | blocks.Data]) -> None:
    """Close the block files among blocks to send (the others are data in memory)."""
    for source in sources:
        if not isinstance(source, bytes | memoryview):
            source.close()


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
        credentials_path: Path,
        peer_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.cfg = cfg
        self.peer_tls = peer_tls  # how https peers are verified (None: the system's roots)
        self.url = url.rstrip("/")
        self.config_file = config.Watched(config_path, WorkerConfig) if config_path else None
        # the binding's keys: every request is checked against them (ConfigError if the
        # file is missing or holds no keys: a worker without them would answer anyone)
        self.credentials = credentials.Watched(credentials_path)
        if not self.credentials.current.keys:
            raise errors.ConfigError.one(
                "holds no keys: a cache worker needs the binding's keys to check its readers",
                file=str(credentials_path),
            )
        self.verifier = credentials.Verifier(self.credentials.current.keys)
        pod = os.environ.get("HOSTNAME") or socket.gethostname()
        # (small blocks' files written on the loop: cheaper than the hand-off to a thread)
        self.store = BlockStore(
            layout.own_tiers(cfg.tiers, pod),
            root=cache_root,
            write_behind=WRITE_BEHIND,
            write_on_loop=True,
        )
        self.ufs = [ufs.open_ufs(m) for m in cfg.mounts]
        self._inflight: dict[str, asyncio.Future[tuple[blocks.Data, int]]] = {}
        self._handoff_failed = Seldom(log)
        self._ahead: dict[str, float] = {}  # read with a miss, not served yet: when (`fresh`)
        # blocks read from the under storage at once (a run of four takes four: 16 runs at
        # once waited on the disk's writes past the write-behind; figures: README)
        self._fetching = Budget(cfg.fetch_concurrency)
        self._keeping: set[asyncio.Task[None]] = set()  # runs' blocks being stored (`_keep`)
        self.ufs_reads = 0
        self.ufs_bytes = 0
        self.ufs_errors = 0
        self.served = 0  # blocks (or spans) served to sidecars
        self.served_bytes = 0
        self.served_local = 0  # blocks read by their reader from our disk (short-circuit)
        self.located = 0  # ... of which we were asked where the file is
        self.served_sendfile = 0  # blocks sent from their files with sendfile(2)
        # blocks read into the page cache in a thread before they were sent, huge folios
        # asked for (`server._read_before_sending`), and those being read: by file
        self.served_read_huge = 0
        self.reading_huge: dict[tuple[int, int], asyncio.Future[bool]] = {}
        self.served_joined = 0  # blocks sent after another in one answer (`held_after`)
        self.load = protocol.LoadProgress()
        self._load_task: asyncio.Task[None] | None = None
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> Worker:
        await self.store.open()
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.read_timeout),
            headers=self._own_token(),
            connector=aiohttp.TCPConnector(ssl=self.peer_tls or True),
        )
        return self

    def _peer_token(self) -> str:
        return self.credentials.current.signed(
            credentials.Claims(role="peer", dataset=self.cfg.dataset)
        )

    def _own_token(self) -> dict[str, str]:
        """This worker's peer token (for its peers and the agent), signed by the key the
        agent says signs."""
        return credentials.authorization(self._peer_token())

    def reload_credentials(self) -> bool:
        """Take the keys again if their file changed (a rotation): tokens signed by any of
        them count from now on, and this worker signs with the one the agent chose."""
        got = self.credentials.changed()
        if got is None or not got.keys:
            return False
        self.verifier.set_keys(got.keys)
        if self.session is not None:
            self.session.headers.update(self._own_token())
        log.info("credentials reloaded: %d keys", len(got.keys))
        return True

    async def close(self) -> None:
        if self._load_task:
            self._load_task.cancel()
        await self.stored()
        if self.session:
            await self.session.close()
        for u in self.ufs:
            u.close()

    async def stored(self) -> None:
        """Once every block answered so far is in its file: a block is served from memory
        while its file is written, and anything that counts or reads the files waits
        (the blocks of a run kept after its answer too: `_keep`)."""
        await asyncio.gather(*list(self._keeping), return_exceptions=True)
        await self.store.stored()

    def peers(self) -> list[str]:
        urls = self.cfg.workers.urls()
        return urls if urls else [self.url]

    def reload(self) -> bool:
        """Take the peers from the config file again if it changed (the agent rewrites it
        on scaling)."""
        self.reload_credentials()
        cfg = self.config_file.changed() if self.config_file else None
        if cfg is None:
            return False
        self.cfg = msgspec.structs.replace(self.cfg, workers=cfg.workers)
        log.info("peers now %s", self.peers())
        return True

    # --- blocks ---------------------------------------------------------------------

    async def block(
        self,
        key: str,
        ref: Source,
        index: int,
        run: int = 0,
        *,
        reader: bool = True,
        fresh: bool = False,
        joined: bool = False,
    ) -> Got:
        """The block `index` of `ref` and whether it was cached. On a miss, up to `run`
        blocks after it are read with it (`_run`); a `reader` will ask for them next (their
        first answers say "miss": `fresh`), a warm-up will not; with `joined` the reader
        gets them in this answer instead (`Got.rest`, counted as misses now). `fresh`: this
        reader's first ask for a block so read (`fresh`): answered and counted a miss."""
        got = await self.store.get(key, fresh=fresh)
        if got is not None:
            return Got(got[0], got[1], not fresh)
        fut = self._inflight.get(key)
        if fut is None:
            run_keys = self._run(key, ref, index, run)
            loop = asyncio.get_running_loop()
            futs = {k: loop.create_future() for k in run_keys}
            self._inflight.update(futs)
            rest: list[tuple[str, blocks.Data, int]] = []
            held = 0
            try:
                # the budget is held until the run's blocks are stored (`_keep`): reads do
                # not run ahead of the disk's writes
                held = await self._fetching.acquire(len(run_keys))
                parts = await self._fetch(ref, range(index, index + len(run_keys)))
                now = time.monotonic()
                for (k, f), (data, crc) in zip(futs.items(), parts, strict=True):
                    if k != key:
                        if reader and not joined:
                            self._ahead[k] = now
                        rest.append((k, data, crc))
                    f.set_result((data, crc))  # (those waiting have it now)
                while len(self._ahead) > AHEAD_KEPT:  # (read ahead for a reader that left)
                    del self._ahead[next(iter(self._ahead))]
                try:
                    await self.store.put(key, *parts[0])
                except OSError as err:  # (a full disk: answered all the same, as behind)
                    self.store.not_kept.warning(
                        "block %s not cached: its file could not be written: %s", key, err
                    )
            except BaseException as err:
                for f in futs.values():
                    if not f.done():
                        f.set_exception(err)
                        f.exception()  # retrieved: waiters get it, nobody waiting is fine too
                raise
            finally:
                del self._inflight[key]
                if rest:  # kept after this answer: it does not wait for their files
                    task = asyncio.create_task(self._keep(rest, held))
                    self._keeping.add(task)
                    task.add_done_callback(self._keeping.discard)
                else:
                    for k in futs:
                        self._inflight.pop(k, None)
                    if held:
                        self._fetching.release(held)
            if reader and joined:
                self.store.count_misses(len(parts) - 1)
                return Got(*parts[0], False, rest=tuple(parts[1:]))
            return Got(*parts[0], False, len(parts) - 1 if reader else 0)
        data, crc = await asyncio.shield(fut)
        return Got(data, crc, False)

    async def held_after(
        self, ref: Source, index: int, run: int
    ) -> list[tuple[BinaryIO | blocks.Data, protocol.Part]]:
        """Of the `run` blocks after `index` of `ref`, those this worker holds, up to the
        first it does not: a sequential reader's run sent in one answer
        (`BlockQuery.joined`). Each as it can be sent at once (`BlockStore.at_hand`), or
        read and checked here first (a block file not read since this worker started);
        each counted as its own request would be (a hit, or a miss if it was read for this
        reader: `fresh`)."""
        bs = self.cfg.block_size
        count = blocks.block_count(ref.size, bs)
        out: list[tuple[BinaryIO | blocks.Data, protocol.Part]] = []
        for i in blocks.run_after(index, count, min(run, protocol.MAX_RUN), lambda _: True):
            k = blocks.block_key(self.cfg.dataset, ref.mount, ref.key, ref.version, bs, i)
            if k not in self.store:
                break
            fresh = self.fresh(k)
            held: tuple[BinaryIO | blocks.Data, int, int] | None = None
            try:
                held = self.store.at_hand(k, fresh=fresh)
                if held is None:  # (its file not checked since the start: read and checked)
                    got = await self.store.get(k, fresh=fresh)
                    if got is None:  # (its own request counts the miss)
                        self.store.count_misses(-1)
                    elif got[1] >= 0:
                        held = (got[0], len(got[0]), got[1])
            except OSError as err:  # (its own request will say what is wrong)
                log.info("block %s not sent with the one before it: %s", k, err)
            except BaseException:  # (cancelled: the reader went away) nothing sent
                if fresh:
                    self.fresh_again(k)
                close_files(source for source, _ in out)
                raise
            if held is None:  # (gone meanwhile, or damaged: asked for on its own)
                if fresh:
                    self.fresh_again(k)  # (its first answer: still a miss)
                break
            out.append((held[0], protocol.Part(held[1], held[2], not fresh)))
        return out

    async def _keep(self, rest: list[tuple[str, blocks.Data, int]], held: int) -> None:
        """Store the blocks read with a miss after it was answered; until each is stored,
        a request for it finds it in `_inflight` (read already). Then give back the
        `held` blocks of the fetch budget the run took."""
        try:
            for k, data, crc in rest:
                try:
                    await self.store.put(k, data, crc)
                except Exception as err:  # (a write that fails: not cached, as behind)
                    self.store.not_kept.warning(
                        "block %s read with the one before it not kept: %s", k, err
                    )
                finally:
                    self._inflight.pop(k, None)
        finally:
            for k, _, _ in rest:
                self._inflight.pop(k, None)
            self._fetching.release(held)

    def fresh(self, key: str) -> bool:
        """Whether `key` was read from the under storage with a miss before it (`_run`) in
        the last AHEAD_FOR seconds and not asked for since: its first answer (or a reader
        on this node reading its file) is a miss, counted as one (its reader asked, the
        under storage was read for it); asked once, it is not fresh any more. A request
        asks this once, before looking anywhere for the block."""
        since = self._ahead.pop(key, None)
        return since is not None and time.monotonic() - since < AHEAD_FOR

    def fresh_again(self, key: str) -> None:
        """`key` was asked `fresh` and not answered (the worker short of descriptors: a
        503; not sent with the block before it): its next answer is still its first, a
        miss."""
        self._ahead[key] = time.monotonic()

    def _run(self, key: str, ref: Source, index: int, ahead: int) -> list[str]:
        """The keys of the blocks to read from the under storage for a miss of `key`: it,
        and of the `ahead` blocks after it (that its reader asks for next:
        `BlockQuery.run`) those this worker owns and neither holds nor is reading already,
        up to the first it does not."""
        if not ahead or not self.ufs[ref.mount].joins(self.cfg.block_size):
            return [key]  # (a store read block by block: the run would only wait longer)
        bs, peers = self.cfg.block_size, self.peers()
        keys = {index: key}

        def free(i: int) -> bool:
            k = keys[i] = blocks.block_key(self.cfg.dataset, ref.mount, ref.key, ref.version, bs, i)
            return (
                k not in self.store
                and k not in self._inflight
                and blocks.owner(k, peers) == self.url
            )

        follow = blocks.run_after(index, blocks.block_count(ref.size, bs), ahead, free)
        return [keys[i] for i in range(index, follow.stop)]

    async def _fetch(self, ref: Source, run: range) -> list[tuple[blocks.Data, int]]:
        """The blocks `run` of `ref` from the under storage, each with its CRC (taken where
        it arrived, if it can be: `UFS.read_checked`); several in one read where the store
        allows (`UFS.read_run`)."""
        bs = self.cfg.block_size
        offset = blocks.block_span(ref.size, bs, run[0])[0]
        lengths = [blocks.block_span(ref.size, bs, i)[1] for i in run]
        length = sum(lengths)
        store = self.ufs[ref.mount]
        # (within the fetch budget its caller took: `block`)
        try:
            async with asyncio.timeout(self.cfg.read_timeout):
                if len(lengths) == 1:
                    parts = [await store.read_checked(ref.key, offset, length)]
                else:
                    parts = await store.read_run(ref.key, offset, lengths)
        except TimeoutError:
            self.ufs_errors += 1
            raise errors.UFSError(
                f"read {ref.key} [{offset}+{length}]: no answer within {self.cfg.read_timeout:g}s",
                temporary=True,
            ) from None
        except errors.UFSError:
            self.ufs_errors += 1
            raise
        self.ufs_reads += len(parts)
        self.ufs_bytes += sum(len(d) for d, _ in parts)
        return parts

    # --- warm-up --------------------------------------------------------------------

    def start_load(self, path: str, peers: list[str] | None) -> protocol.LoadProgress:
        if self._load_task is not None and not self._load_task.done():
            return self.load
        self.load = protocol.LoadProgress(state="running", path=path)
        self._load_task = asyncio.create_task(self._load(path, peers or self.peers()))
        return self.load

    async def _load(self, path: str, peers: list[str]) -> None:
        prog = self.load
        prefix = path.strip("/")
        try:
            files = await ufs.list_files(self.cfg.mounts, self.ufs)
            # this worker's blocks, those one after the other in a file in runs of up to
            # 1 + MAX_RUN (each run one ranged read where the store allows: `block`)
            todo: list[tuple[FileRef, list[tuple[int, str]]]] = []
            bs = self.cfg.block_size
            for rel, ref in sorted(files.items()):
                if prefix and rel != prefix and not rel.startswith(prefix + "/"):
                    continue
                prog.ufs_bytes += ref.size
                last = -2
                joins = protocol.MAX_RUN if self.ufs[ref.mount].joins(bs) else 0
                for i in range(blocks.block_count(ref.size, bs)):
                    key = ref.block_key(self.cfg.dataset, bs, i)
                    if blocks.owner(key, peers) != self.url:
                        continue
                    run = todo[-1][1] if todo and todo[-1][0] is ref else []
                    if i == last + 1 and 0 < len(run) <= joins:
                        run.append((i, key))
                    else:
                        todo.append((ref, [(i, key)]))
                    last = i
            prog.blocks = sum(len(run) for _, run in todo)
            queue: asyncio.Queue[tuple[FileRef, list[tuple[int, str]]]] = asyncio.Queue()
            for item in todo:
                queue.put_nowait(item)

            async def pull() -> None:
                # (at most fetch_concurrency blocks in flight however they are grouped:
                # `_fetching`)
                while not queue.empty():
                    ref, run = queue.get_nowait()
                    for n, (i, key) in enumerate(run):
                        try:
                            if n == 0:
                                await self.block(key, ref, i, len(run) - 1, reader=False)
                            elif key not in self.store and key not in self._inflight:
                                await self.block(key, ref, i)  # (not read with the first)
                            prog.bytes += blocks.block_span(ref.size, bs, i)[1]
                        except Exception as err:
                            prog.errors += 1
                            prog.message = str(err)
                        prog.done += 1

            await asyncio.gather(*(pull() for _ in range(self.cfg.fetch_concurrency)))
            await self.stored()  # loaded means in the files, not in memory waiting for them
            # what is still there (a quota smaller than the data evicts as it goes)
            prog.cached = sum(1 for _, run in todo for _, key in run if key in self.store)
            prog.state = "failed" if prog.errors else "done"
        except Exception as err:
            prog.state, prog.message = "failed", str(err)
            log.warning("warm-up of %r failed: %s", path, err)

    # --- scale-in -------------------------------------------------------------------

    async def drain(self, peers: list[str]) -> protocol.DrainResult:
        """Hand every block to its owner among `peers` (this worker excluded)."""
        others = [p for p in peers if p != self.url]
        moved = failed = sent = 0
        await self.stored()
        if not others or self.session is None:
            return protocol.DrainResult(moved=0, bytes=0, failed=0)
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
                except errors.WorkerError as err:
                    failed += 1  # (a peer with a full disk fails them all: said seldom)
                    self._handoff_failed.warning(
                        "hand-off of %s to %s failed: %s", key, target, err
                    )

        await asyncio.gather(*(hand() for _ in range(8)))
        log.info("handed %d blocks (%d bytes) to %s; %d failed", moved, sent, others, failed)
        return protocol.DrainResult(moved=moved, bytes=sent, failed=failed)

    async def report(self) -> None:
        """Heartbeat to the agent with this worker's blocks and counters."""
        if not self.cfg.agent or self.session is None:
            return
        body = protocol.WorkerRegistration(
            dataset=self.cfg.dataset, url=self.url, status=self.status()
        )
        try:
            await workers.register(self.session, self.cfg.agent, body)
        except errors.WorkerError as err:
            if err.status:
                log.warning("agent %s refused the report: %s", self.cfg.agent, err)
            else:
                log.debug("agent %s not reachable: %s", self.cfg.agent, err)
        except TimeoutError as err:
            log.debug("agent %s not reachable: %s", self.cfg.agent, err)

    async def report_loop(self) -> None:
        """Report every `report_interval`, and give back meanwhile what another tenant of a
        disk tier's filesystem took below its floor (`BlockStore.keep_free`)."""
        while True:
            self.store.keep_free()
            await self.report()
            await asyncio.sleep(self.cfg.report_interval)

    def instrument(self, cluster: str = "") -> None:
        meter = telemetry.setup(
            names.WORKER_SERVICE,
            attributes={names.ATTR_DATASET: self.cfg.dataset, names.ATTR_CLUSTER: cluster},
            otlp_default=self.cfg.agent,
            token=self._peer_token,
            ca_file=self.cfg.ca_file,
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

    def status(self) -> protocol.WorkerStatus:
        s = self.store.snapshot()
        return protocol.WorkerStatus(
            url=self.url,
            dataset=self.cfg.dataset,
            peers=self.peers(),
            blocks=sum(t.blocks for t in s.tiers),
            used=s.used,
            capacity=s.capacity,
            hits=s.hits,
            misses=s.misses,
            corrupt=s.corrupt,
            evictions=sum(t.evictions for t in s.tiers),
            tiers=[
                protocol.TierStatus(
                    medium=t.medium,
                    quota=t.quota,
                    used=t.used,
                    blocks=t.blocks,
                    hits=t.hits,
                    evictions=t.evictions,
                    short=t.short,
                )
                for t in s.tiers
            ],
            ufs=protocol.UFSCounters(
                reads=self.ufs_reads,
                bytes=self.ufs_bytes,
                errors=self.ufs_errors,
                presigned=sum(u.presigned for u in self.ufs),
                joined=sum(u.joined for u in self.ufs),
            ),
            served=protocol.Served(
                blocks=self.served,
                bytes=self.served_bytes,
                short_circuit=self.served_local,
                located=self.located,
                sendfile=self.served_sendfile,
                read_huge=self.served_read_huge,
                joined=self.served_joined,
            ),
            load=self.load,
            writing=s.writing + len(self._keeping),
            writes=protocol.Writes(
                errors=s.write_errors,
                on_loop=s.loop_writes,
                on_loop_waited=s.loop_writes_waited,
                on_loop_stopped=s.loop_writes_stopped,
                shed=s.shed,
                no_room=s.no_room,
            ),
        )
