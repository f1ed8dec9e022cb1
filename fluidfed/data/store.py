"""Where blocks are kept: tiers from a cache spec, memory first, then disk directories.

New blocks go to the first tier; a tier past its high watermark moves its least recently
used blocks down to the next tier (the last tier drops them) until it is back at its low
watermark. Each block carries a CRC-32: on disk in its trailer (`blockfile`), checked when a block
is read whole, so a corrupt block, or one whose file cannot be read, is dropped and
reported as a miss (the caller fetches it again); a block checked once can be sent from
the page cache as it is (`open_verified`), its receiver checking the CRC end to end. Disk
tiers are indexed again on start, so a restarted worker keeps its cache.

With `write_behind`, a block put into a disk tier is held in memory while a thread writes
its file, and `put` returns at once (a cache worker answers its reader meanwhile): reads of
it are served from that memory, it is located or sent from its file only once the file is
whole (renamed into place), and `stored` waits until every such file is written. At most
`write_behind` bytes wait so; past that, or for a block nobody reads yet (`put`'s `wait`:
a peer's hand-off), `put` writes before it returns.

With `hold` (a sidecar's), the blocks of more than a piece that `get` reads from a disk
tier (mapped from the page cache, or read into it) stay at hand, the latest `hold` bytes
(HELD_BLOCKS at most), so that the READs of one block after the first, and a read-ahead
that loaded it before its READs came (`load`), find it in `peek` as they find a memory
tier's: a block of 4 MiB is read by four READs of 1 MiB. A mapped block held so takes no
memory but its page-cache pages. With
`lazy` too, a disk tier's block file that has its pieces' CRCs is mapped without being
checked whole (`blockfile.map_block_file`): each READ's answer is checked by the pieces it
covers as it is sent, and any other use checks it whole (`blockfile.check_whole`).

With `write_on_loop` (a cache worker's), a small block's file (WRITE_ON_LOOP_UP_TO) put
into a disk tier is written on the event loop itself before `put` returns, behind or not:
~50 µs for 128 KiB, where the hand-off to the thread and back cost the worker more than the
write (figures: README, "Measured design decisions"); blocks moved down from a memory tier
still go to the thread (many at once). Once such writes have kept the loop waiting
WAIT_BUDGET within a WINDOW (asleep on the disk, the kernel's throttle of dirty pages, a
journal), small blocks go to the thread for BACK_TO_THREAD_FOR (`LoopWaits`): that bounds
how often a slow disk holds up the loop, not how long one write may.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import resource
import stat
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Container
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from fluidfed import errors
from fluidfed.data import blocks
from fluidfed.data.blockfile import (
    CHECK_PIECE,
    HUGE_FILE,
    TRAILER_SIZE,
    block_file,
    block_path,
    data_length,
    is_unchecked,
    map_block_file,
    no_huge,
    read_block_file,
    read_cold_block_file,
    read_span_checked,
    reads_huge,
    spread_subdirectories,
    trailer_size,
    write_block_file,
)
from fluidfed.logs import Seldom
from fluidfed.models import CacheTier

log = logging.getLogger("fluidfed.store")
# a filesystem that maps no file (some FUSE and network ones), or not read-only
_MAP_REFUSED = {errno.ENODEV, errno.EINVAL, errno.EOPNOTSUPP, errno.EACCES, errno.EPERM}
_NO_MAPPINGS = {errno.ENODEV, errno.EOPNOTSUPP}  # (... for any file of its, not one file)
# (each says how many like it went unsaid: a failing disk fails every block)
_UNREADABLE = Seldom(log)
_UNREMOVABLE = Seldom(log)

WRITE_ON_LOOP_UP_TO = 2**18  # bytes of a block whose file is written on the event loop
WAIT_BUDGET = 0.01  # seconds those writes may keep the loop waiting in a WINDOW ...
WINDOW = 1.0
BACK_TO_THREAD_FOR = 60.0  # ... before small blocks' files go to the thread this long
# seconds that space evicted to keep a disk tier's floor free counts as free while the
# filesystem does not show it (files held open by readers: `blocks.Unseen`)
UNSEEN_FOR = 60.0
# a disk tier said to keep no block (its filesystem below its floor) is said to have room
# again once this much more than the floor is free, its own blocks counted (or 1% of the
# filesystem, if less): not every few seconds where a disk hovers at the floor
# (`BlockStore.keep_free`); it keeps blocks as soon as one fits
SHORT_MARGIN = 64 * 2**20
HELD_BLOCKS = 64  # disk blocks held at hand at most (`hold`), however small
_NOT_YET: Any = object()  # (`get`: no file read yet)


def _unreadable(path: Path | str, err: OSError, *, dropped: bool = False) -> None:
    """A block file that is there but cannot be read (EIO, EACCES, ELOOP...): logged, and
    the caller takes the block as gone: a reader's request for it is a miss, the block is
    fetched again and its file written anew (where its path can take one). `dropped`: the
    caller is `BlockStore.get`, which drops it (a warning); the others log what they met.
    Gone (ENOENT): nothing to say. Short of descriptors or memory (`errors.SCARCE`): raised."""
    if isinstance(err, FileNotFoundError):
        return
    if err.errno in errors.SCARCE:
        raise err
    if dropped:
        _UNREADABLE.warning(
            "block file %s cannot be read (%s): dropped, to be fetched again", path, err
        )
    else:
        log.info("block file %s cannot be read: %s", path, err)


@dataclass
class TierStats:
    medium: str
    quota: int
    used: int = 0
    blocks: int = 0
    hits: int = 0
    evictions: int = 0
    # a disk tier whose filesystem is below its floor even without its blocks: keeps none
    # now (`BlockStore.keep_free`)
    short: bool = False


@dataclass
class StoreStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    writing: int = 0  # blocks served from memory until their file is written
    write_errors: int = 0  # block files that could not be written (the block not kept)
    loop_writes: int = 0  # block files written (or tried) on the event loop
    loop_writes_waited: int = 0  # ... that kept the loop waiting (`LoopWaits.waited`)
    loop_writes_stopped: int = 0  # times they went to the thread for BACK_TO_THREAD_FOR
    # blocks not kept: their tier's filesystem could not stay `min_free` free with them
    no_room: int = 0
    shed: int = 0  # blocks evicted to keep a tier's filesystem `min_free` free
    file_reads: int = 0  # disk blocks' files read (mapped or copied) for `get`
    loads: int = 0  # ... of which a read-ahead asked for (`load`)
    tiers: list[TierStats] = field(default_factory=list)

    @property
    def used(self) -> int:
        return sum(t.used for t in self.tiers)

    @property
    def capacity(self) -> int:
        return sum(t.quota for t in self.tiers)


class _Tier:
    def __init__(self, spec: CacheTier, directory: Path | None) -> None:
        self.medium = spec.medium
        self.min_free = spec.min_free  # (disk tiers: `BlockStore._room`)
        self.writing = 0  # bytes of block files being written in the thread now
        self.written = 0  # bytes of block files let be written so far (`BlockStore._room`)
        self.unseen = blocks.Unseen(UNSEEN_FOR)  # ... and evicted, not yet shown free
        self.ledger = blocks.Ledger(int(spec.quota), spec.high, spec.low)
        self.dir = directory
        self.mem: dict[str, tuple[blocks.Data, int]] = {}
        # disk blocks whose CRC held since they were written or read: key -> (crc, length)
        self.verified: dict[str, tuple[int, int]] = {}
        # disk blocks whose file is being written, held here meanwhile: key -> (data, crc)
        self.pending: dict[str, tuple[blocks.Data, int]] = {}
        self.hits = 0
        self.evictions = 0
        self.short = False  # below its floor with none of its blocks left (`keep_free`)
        self.mappable = True  # (its filesystem maps files: `read_cached`, lazy `read`)

    def file(self, key: str) -> Path:
        assert self.dir is not None
        return block_path(self.dir, key)

    # disk I/O runs in a thread (a small block's write: on the loop, `write_on_loop`); these
    # are the blocking halves
    def write(self, key: str, data: blocks.Data, crc: int) -> int:
        if crc < 0:
            crc = blocks.checksum(data)
        assert self.dir is not None
        write_block_file(block_file(str(self.dir), key), data, crc)
        return crc

    # (None from these three: the block's file is gone, damaged or unreadable, `_unreadable`)
    def read(self, key: str, lazy: bool = False) -> tuple[blocks.Data, int] | None:
        """A block file read whole and checked (`BlockStore.get`: a worker's first answer
        of a file since it started, a hand-off, a warm-up; a sidecar's own disk tier). One
        of a huge page or more, on a filesystem not known to keep no folios that large
        (`reads_huge`), is mapped, not copied: as it lies in the page cache, or, not
        there, read into it in such folios (`read_cold_block_file`); the next reader on
        this node then maps it in a few page-table entries, and the disk is read in
        requests of a huge page, not by a plain read's read-ahead (~0.1 against ~0.4
        CPU-s/GiB here). Any other file, or one whose filesystem refuses the mapping (said
        once, and none mapped there again), is read through the page cache (past it, a
        same-node reader would read the disk again). `lazy`: a mapped one is not checked
        whole (`map_block_file`; a smaller one in the page cache: `read_cached`)."""
        path = self.file(key)
        try:
            st = os.stat(path)
            if st.st_size >= HUGE_FILE and reads_huge(st.st_dev):
                try:
                    try:
                        return map_block_file(path, cached_only=True, lazy=lazy)
                    except errors.NotCached:
                        return read_cold_block_file(path, lazy=lazy)
                except OSError as err:  # (a disk error: as the read below would say)
                    if err.errno not in _MAP_REFUSED:
                        raise
                    if no_huge(st.st_dev):
                        log.info("block files in %s not mapped (%s): read instead", self.dir, err)
                except ValueError:  # (mmap: the file shorter than it was; the read says)
                    pass
            return read_block_file(path)
        except errors.CorruptBlock:
            return None
        except OSError as err:
            _unreadable(path, err, dropped=True)
            return None

    def read_cached(self, key: str) -> tuple[blocks.Data, int] | None:
        """`read` with `lazy` of a block file whose pages all lie in the page cache, mapped
        on the event loop (microseconds: a hand-off to a thread costs more); NotCached for
        any other (`read` then, in a thread), and where the filesystem refuses mappings."""
        path = self.file(key)
        if not self.mappable:
            raise errors.NotCached(str(path))
        try:
            return map_block_file(path, cached_only=True, lazy=True)
        except errors.CorruptBlock:
            return None
        except OSError as err:
            if err.errno in _NO_MAPPINGS:  # (the filesystem's answer: read from now on)
                self.mappable = False
                log.info("block files in %s not mapped (%s): read instead", self.dir, err)
            if err.errno in _MAP_REFUSED:  # (the thread's read says what else it is)
                raise errors.NotCached(str(path)) from err
            _unreadable(path, err, dropped=True)
            return None
        except ValueError as err:  # (mmap: the file shorter than it was; `read` says)
            raise errors.NotCached(str(path)) from err

    def read_span(self, key: str, lo: int, n: int) -> bytes | None:
        """`n` bytes at `lo` of a block verified once, checked by the pieces they lie in
        (a random read needs no 4 MiB read and CRC each time; its bytes are checked all
        the same: the receiver checks only that they came as they were sent). None if the
        file is gone, unreadable or damaged: the caller drops it (`BlockStore.get_span`)."""
        path = self.file(key)
        try:
            return read_span_checked(path, lo, n)
        except errors.CorruptBlock as err:
            log.warning("block file %s is damaged: %s; dropped", path, err)
            return None
        except OSError as err:
            _unreadable(path, err)
            return None

    def open_data(self, key: str) -> BinaryIO | None:
        """The block file, open for sending without reading it here."""
        assert self.dir is not None
        path = block_file(str(self.dir), key)
        try:
            return open(path, "rb")  # the caller closes it
        except OSError as err:
            _unreadable(path, err)
            return None

    def unlink(self, key: str) -> None:
        path = self.file(key)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:  # (its space stays taken; the tier's count no longer has it)
            _UNREMOVABLE.warning("block file %s cannot be removed: %s", path, err)

    def scan(self) -> list[tuple[float, str, int]]:
        """(atime, key, length) of the block files the tier's directory holds. What cannot
        be a block file (a temporary file left by a crash, a file shorter than a trailer,
        anything but a regular file) is removed where it can be; what cannot be read is
        logged and left out, so a damaged entry does not keep the worker from starting
        (its block is fetched again)."""
        assert self.dir is not None
        found = []
        for sub in self.dir.iterdir() if self.dir.exists() else ():
            try:
                if not sub.is_dir():
                    continue
                entries = list(sub.iterdir())
            except OSError as err:
                _unreadable(sub, err)
                continue
            for f in entries:
                try:
                    st = f.lstat()
                    short = st.st_size < TRAILER_SIZE  # (no trailer: no block)
                    if f.suffix == ".tmp" or not stat.S_ISREG(st.st_mode) or short:
                        if not stat.S_ISDIR(st.st_mode):
                            f.unlink(missing_ok=True)
                        continue
                    try:
                        size = data_length(f, st.st_size)  # (its trailer tells)
                    except errors.CorruptBlock:  # found damaged when read: counted, fetched
                        size = st.st_size - TRAILER_SIZE
                except OSError as err:
                    _unreadable(f, err)
                    continue
                found.append((st.st_atime, f.name, size))
        return sorted(found)


class BlockStore:
    """Tiered block storage with checksums. Not thread-safe: use from one event loop."""

    def __init__(
        self,
        tiers: list[CacheTier],
        root: Path | None = None,
        *,
        write_behind: int = 0,
        write_on_loop: bool = False,
        hold: int = 0,
        lazy: bool = False,
    ) -> None:
        self._tiers: list[_Tier] = []
        for i, spec in enumerate(tiers):
            directory = None
            if spec.medium != "MEM":
                if spec.path:
                    directory = Path(spec.path)
                elif root is not None:
                    directory = root / f"tier-{i}-{spec.medium.lower()}"
                else:
                    raise ValueError(f"tier {i} ({spec.medium}) needs a path")
            self._tiers.append(_Tier(spec, directory))
        self.stats = StoreStats()
        # disk blocks whose files are being read whole for `get`, by key
        self._reading: dict[str, asyncio.Future[tuple[blocks.Data, int] | None]] = {}
        self.write_behind = write_behind  # bytes of blocks that may wait for their files
        # blocks not kept because their files could not be written: said once in a while
        self.not_kept = Seldom(log)
        self._behind = 0  # ... waiting now
        # what is being done to each block's file, one thing at a time per key (writes share
        # a temporary name; a removal must not take a file written after it was decided):
        # writes behind the readers, writes `put` waits for, and removals (a write on the
        # loop needs no entry: it is over before anything else runs)
        self._files: dict[str, asyncio.Task[None]] = {}
        self._cleanups: set[asyncio.Task[None]] = set()  # (files of cancelled puts)
        # block files are written by a thread of their own, so writes waiting behind their
        # readers never hold up the shared threads (checksums, reads of disk blocks)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="fluidfed-blockfile")
        self.write_on_loop = write_on_loop  # small blocks' files (module docstring)
        # disk blocks read by `get` lately, at hand for `peek` (module docstring): key ->
        # (data, crc), the latest last, `hold` bytes and HELD_BLOCKS at most
        self.hold = hold
        self.lazy = lazy
        self._held: OrderedDict[str, tuple[blocks.Data, int]] = OrderedDict()
        self._held_bytes = 0
        # reads of files let go of while under way (discarded, evicted): not kept, nor
        # taken for the block's, which may be in the tier again by the time they end
        self._stale: weakref.WeakSet[asyncio.Future[Any]] = weakref.WeakSet()
        # disk blocks whose lazy mapping failed a READ's check: read checked whole next
        self._whole: set[str] = set()
        self._loading: dict[str, asyncio.Future[Any]] = {}  # (`load`'s reads, by key)
        self._loop_waits = LoopWaits()  # ... for now

    async def open(self) -> BlockStore:
        for tier in self._tiers:
            if tier.dir is None:
                continue
            tier.dir.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(spread_subdirectories, tier.dir)
            for _, key, size in await asyncio.to_thread(tier.scan):
                for gone in tier.ledger.add(key, size):
                    await asyncio.to_thread(tier.unlink, gone)
        return self

    @property
    def on_disk(self) -> bool:
        """Whether a block put here may be written to a file (a disk tier)."""
        return any(t.dir is not None for t in self._tiers)

    def __contains__(self, key: str) -> bool:
        return any(key in t.ledger for t in self._tiers)

    def _holder(self, key: str) -> _Tier | None:
        """The first tier that holds `key`."""
        return next((t for t in self._tiers if key in t.ledger), None)

    def _hit(self, tier: _Tier, key: str, fresh: bool = False) -> None:
        """A held block served (recently used): a hit, or with `fresh` a miss (read from
        the under storage for this very reader, with the block before it, in one read)."""
        tier.ledger.touch(key)
        if fresh:
            self.stats.misses += 1
            return
        tier.hits += 1
        self.stats.hits += 1

    def peek(self, key: str, *, count: bool = True) -> blocks.Data | None:
        """A block held in a memory tier, synchronously (counted as a hit unless not
        `count`: recently used all the same); None otherwise (not counted: the caller goes
        on to `get`)."""
        tier = self._holder(key)
        if tier is None:
            return None
        if tier.dir is None:
            data = tier.mem[key][0]
        elif (got := tier.pending.get(key) or self._held.get(key)) is not None:
            data = got[0]  # (its file being written, or read lately: `hold`)
        else:
            return None
        if count:
            self._hit(tier, key)
        else:
            tier.ledger.touch(key)
        return data

    def loaded(self, key: str) -> bool:
        """Whether `peek` has `key` now, or a read of its file is under way: a read-ahead
        need not `load` it."""
        tier = self._holder(key)
        return (
            tier is None
            or tier.dir is None
            or key in tier.pending
            or key in self._held
            or key in self._reading
            or key in self._loading
        )

    def load(self, key: str) -> None:
        """Read a disk block's file in the background, for `peek` to have it (`hold`): a
        read-ahead's. A file that cannot be read is dropped, as `get` drops it."""
        tier = self._holder(key)
        if tier is not None and self._holds(tier.ledger.size(key)) and not self.loaded(key):
            self.stats.loads += 1
            task = self._loading[key] = asyncio.ensure_future(self.get(key, count=False))
            task.add_done_callback(functools.partial(self._load_done, key))

    def _load_done(self, key: str, task: asyncio.Future[Any]) -> None:
        if self._loading.get(key) is task:
            del self._loading[key]
        if not task.cancelled() and task.exception() is not None:  # (its READs read it again)
            log.debug("block %s not read ahead: %s", key, task.exception())

    def _holds(self, size: int) -> bool:
        """Whether a disk block of `size` bytes is held at hand once read: one of more than
        a piece (several READs; a smaller one is one READ, and each held would keep a
        mapping and a descriptor), within `hold`."""
        return CHECK_PIECE < size <= self.hold

    def _keep_at_hand(self, key: str, got: tuple[blocks.Data, int]) -> None:
        if not self._holds(len(got[0])):
            return
        old = self._held.pop(key, None)
        if old is not None:
            self._held_bytes -= len(old[0])
        self._held[key] = got
        self._held_bytes += len(got[0])
        while self._held_bytes > self.hold or len(self._held) > HELD_BLOCKS:
            _, (data, _) = self._held.popitem(last=False)
            self._held_bytes -= len(data)

    def _let_go_held(self, key: str) -> None:
        old = self._held.pop(key, None)
        if old is not None:
            self._held_bytes -= len(old[0])

    def _let_go(self, key: str) -> None:
        self._let_go_held(key)
        reading = self._reading.pop(key, None)
        if reading is not None:
            self._stale.add(reading)
        self._whole.discard(key)

    def distrust(self, key: str) -> bool:
        """A READ's check of a disk block held here failed (its bytes, or its pages no
        longer in the page cache: the check reads none from the disk): let go of it, and
        read its file checked whole when it is next asked for, where a damaged one is
        dropped (`get`). False: no disk tier here holds it (a worker's file)."""
        tier = self._holder(key)
        if tier is None or tier.dir is None:
            return False
        if key in self._whole:  # (its whole read is due, or under way: not started again)
            self._let_go_held(key)
            return True
        self._let_go(key)
        self._whole.add(key)
        return True

    def count_hits(self, n: int) -> None:
        """`n` reads of blocks held in memory served by someone else (the sidecar's FUSE
        session, from blocks `peek` gave it): hits of the first memory tier."""
        tier = next((t for t in self._tiers if t.dir is None), None)
        if tier is None and self._tiers:  # (a disk tier alone: the blocks held from it)
            tier = self._tiers[0]
        if tier is not None and n > 0:
            tier.hits += n
            self.stats.hits += n

    async def get_span(self, key: str, lo: int, n: int) -> blocks.Data | None:
        """Part of a cached block, or None (then `get` the whole block). A disk block is
        read whole and checked the first time; after that spans are read directly."""
        tier = self._holder(key)
        if tier is None:
            return None
        held = tier.verified.get(key)
        if tier.dir is None:
            data: blocks.Data | None = tier.mem[key][0][lo : lo + n]
        elif key in tier.pending:
            data = tier.pending[key][0][lo : lo + n]
        elif held is not None:
            data = await asyncio.to_thread(tier.read_span, key, lo, n)
            if data is None:  # (damaged or gone: dropped, as `get` drops it; fetched again)
                if tier.verified.get(key) is held:  # (not if replaced meanwhile)
                    self.stats.corrupt += 1
                    tier.ledger.remove(key)
                    await self._unlink(tier, key)
                return None
        else:
            whole = await self.get(key)
            return None if whole is None else whole[0][lo : lo + n]
        if data is None:
            return None
        self._hit(tier, key)
        return data

    def _checked(self, key: str) -> tuple[_Tier, tuple[int, int]] | None:
        """The disk tier holding `key` and the block's (CRC, length), if its CRC held once."""
        tier = self._holder(key)
        held = tier.verified.get(key) if tier is not None else None
        return None if tier is None or held is None else (tier, held)

    def open_verified(self, key: str, *, fresh: bool = False) -> tuple[BinaryIO, int, int] | None:
        """A disk block whose CRC already held once, as (file, length, CRC) for sending
        straight from the page cache (counted as a hit, or with `fresh` a miss: `_hit`);
        None: use `get`, which reads and checks it. The receiver checks the CRC end to end
        and asks again with a full check if it does not hold."""
        checked = self._checked(key)
        if checked is None:
            return None
        tier, held = checked
        # opened here, not in a thread: the hand-off to a thread and back cost a worker
        # more than the open of a path whose directory is in the kernel's caches (small
        # files from a worker on another node: 2,081 -> 2,326 files/s, the worker 0.32 ->
        # 0.23 CPU-ms per file; README); a cold one reads its directory from the disk
        # here, as sending a block file that is not in the page cache reads its data here
        f = tier.open_data(key)
        if f is None:
            return None
        self._hit(tier, key, fresh)
        return f, held[1], held[0]

    def locate(self, key: str, *, fresh: bool = False) -> tuple[str, int, int] | None:
        """(file path, data length, CRC) of a disk block whose CRC already held once, for a
        reader on the same machine to read itself (counted as a hit, or with `fresh` a
        miss: `_hit`); None otherwise. The file is the data followed by its trailer."""
        checked = self._checked(key)
        if checked is None:
            return None
        tier, held = checked
        self._hit(tier, key, fresh)
        return os.path.abspath(tier.file(key)), held[1], held[0]

    def at_hand(
        self, key: str, *, fresh: bool = False
    ) -> tuple[BinaryIO | blocks.Data, int, int] | None:
        """A held block that can be sent now, without reading it here: (its data, or a
        disk block's file whose CRC already held once, as `open_verified`; length; CRC),
        counted as `_hit` says. None, not counted: not held, its file not checked yet
        (`get` reads and checks it), or held in memory without its CRC (`put`)."""
        tier = self._holder(key)
        if tier is None:
            return None
        if tier.dir is not None and key not in tier.pending:
            return self.open_verified(key, fresh=fresh)
        data, crc = tier.mem[key] if tier.dir is None else tier.pending[key]
        if crc < 0:
            return None
        self._hit(tier, key, fresh)
        return data, len(data), crc

    def count_misses(self, n: int) -> None:
        """Blocks read from the under storage for a reader, answered before any lookup."""
        self.stats.misses += n

    def touch(self, keys: list[str], fresh: Container[str] = ()) -> int:
        """Blocks a reader on this machine read from their files: count them as hits (those
        in `fresh` as misses: `_hit`) and keep them recently used. How many are still held."""
        held = 0
        for key in keys:
            tier = self._holder(key)
            if tier is not None:
                self._hit(tier, key, key in fresh)
                held += 1
        return held

    def _read_done(self, key: str, reading: asyncio.Future[Any]) -> None:
        if self._reading.get(key) is reading:
            del self._reading[key]
        if not reading.cancelled():
            reading.exception()  # (each reader that waited raised it; none left: dropped)

    async def get(
        self, key: str, *, fresh: bool = False, count: bool = True
    ) -> tuple[blocks.Data, int] | None:
        """(data, crc) of a cached block, or None (a miss; a corrupt block counts as one).
        `fresh`: counted as a miss where held (`_hit`); not `count`: neither (a read-ahead's
        `load`: its READs count it)."""
        tier = self._holder(key)
        if tier is None:
            if count:
                self.stats.misses += 1
            return None
        if tier.dir is None:
            got: tuple[blocks.Data, int] | None = tier.mem[key]
        elif key in tier.pending:
            got = tier.pending[key]  # its file is still being written
        elif key in self._held:
            got = self._held[key]
            self._held.move_to_end(key)
        else:
            reading = self._reading.get(key)
            lazy = self.lazy and key not in self._whole
            got = _NOT_YET
            if lazy and reading is None:
                with contextlib.suppress(errors.NotCached):
                    got = tier.read_cached(key)
                    self.stats.file_reads += 1
            if got is _NOT_YET:
                if reading is None:
                    self.stats.file_reads += 1
                    # (readers of one block at once share one read of its file: each would
                    # take its pages in anew, `read_cold_block_file`, and check it again)
                    reading = self._reading[key] = asyncio.ensure_future(
                        asyncio.to_thread(tier.read, key, lazy)
                    )
                    reading.add_done_callback(functools.partial(self._read_done, key))
                got = await asyncio.shield(reading)
                if reading in self._stale or (lazy and key in self._whole):
                    # (let go of meanwhile, or found wanting as lazily mapped: ask again)
                    return await self.get(key, fresh=fresh, count=count)
            if not lazy and got is not None:
                self._whole.discard(key)
            if got is None:
                self._whole.discard(key)
                # gone, corrupt or unreadable: forget it, the caller fetches it again
                if key in tier.ledger:
                    self.stats.corrupt += 1
                    tier.ledger.remove(key)
                    await self._unlink(tier, key)
                if count:
                    self.stats.misses += 1
                return None
            if not is_unchecked(got[0]):  # (a lazy one's pieces are checked as it is read)
                tier.verified[key] = (got[1], len(got[0]))
            if self.hold and key in tier.ledger:  # (not if it left the tier meanwhile)
                self._keep_at_hand(key, got)
        if count:
            self._hit(tier, key, fresh)
        else:
            tier.ledger.touch(key)
        return got

    async def put(
        self, key: str, data: blocks.Data, crc: int | None = None, *, wait: bool = False
    ) -> None:
        """Keep a block; its CRC-32 is computed here unless given (a memory-only store
        never needs it: -1 marks "not computed"). OSError if it goes to a disk tier whose
        file cannot be written before this returns (past `write_behind`, or with `wait`:
        a block no reader waits for, whose sender should hear of it; a full disk): it is
        not kept. Blocks it moves down a tier to a disk that cannot write them are dropped
        (logged), as from the last tier."""
        if crc is None:
            crc = -1 if all(t.dir is None for t in self._tiers) else blocks.checksum(data)
        for i, tier in enumerate(self._tiers):
            if tier.ledger.fits(len(data)):
                for other in self._tiers[i + 1 :]:
                    await self._drop(other, key)
                await self._place(i, key, data, crc, wait=wait)
                return

    async def _place(
        self,
        i: int,
        key: str,
        data: blocks.Data,
        crc: int,
        *,
        wait: bool = False,
        on_loop: bool = True,
    ) -> None:
        tier = self._tiers[i]
        if tier.dir is None:
            tier.mem[key] = (data, crc)
        else:
            # (room before the key is found settled: nothing may wait between that and its
            # write registered, `_files`: one thing at a time per key)
            room, removing = self._room(tier, key, len(data))
            if removing is not None:  # (its own evictions' files gone before it is written)
                await asyncio.wait({removing})
            await self._settled(key)
            if crc < 0:
                crc = blocks.checksum(data)
            behind = (
                not wait and self.write_behind > 0 and self._behind + len(data) <= self.write_behind
            )
            if not room:
                self.stats.no_room += 1
                full = OSError(
                    errno.ENOSPC,
                    f"{tier.dir} keeps {tier.min_free:.0%} of its filesystem free "
                    "(cache.tiers[].min_free), and its own blocks cannot make room",
                )
                if not behind:  # (as a write that fails: the caller's error, or logged)
                    raise full
                self.not_kept.warning("block %s not cached: %s", key, full)
                return
            if (
                on_loop
                and self.write_on_loop
                and len(data) <= WRITE_ON_LOOP_UP_TO
                and self._loop_waits.open(time.monotonic())
            ):
                # (no task, no memory copy meanwhile: whole when this returns)
                try:
                    self._write_here(tier, key, data, crc)
                except Exception as err:
                    self.stats.write_errors += 1
                    if not behind:  # (as `_write`'s: the caller's error, or logged)
                        raise
                    self.not_kept.warning(
                        "block %s not cached: its file could not be written: %s", key, err
                    )
                    return
                tier.verified[key] = (crc, len(data))
                await self._placed(i, tier, key, data)
                return
            task = asyncio.create_task(self._write(tier, key, data, crc, behind=behind))
            self._files[key] = task
            tier.writing += len(data)  # (its file's room not yet taken: `_room`)
            if behind:
                # readers get it from memory until the file is whole; `stored` waits
                tier.pending[key] = (data, crc)
                self._behind += len(data)
            else:
                try:
                    await asyncio.shield(task)  # a cancelled caller leaves no half-written file
                except asyncio.CancelledError:
                    # ... nor a whole one no tier counts: removed once written (unless the
                    # block is held again by then)
                    cleanup = asyncio.create_task(self._unlink(tier, key))
                    self._cleanups.add(cleanup)
                    cleanup.add_done_callback(self._cleanups.discard)
                    raise
        await self._placed(i, tier, key, data)

    def keep_free(self) -> None:
        """Give back, from each disk tier, what its filesystem lacks below the tier's floor
        (`min_free`: another tenant of the node's disk took it), its least recently used
        blocks evicted as far as they go. For now and then (a cache worker between its
        reports, every few seconds): a tier that writes nothing would keep it otherwise.
        Logs when a tier can keep no block (its filesystem short of the floor even with none
        of them: a node's disk already that full), and when it can again."""
        now = time.monotonic()
        for tier in self._tiers:
            kept, _ = self._room(tier, "", 0, partial=True)
            if tier.short and kept:
                # (said again only with room for more than the floor itself, its own blocks
                # counted as room, as they were when it was said short: a disk that hovers
                # at the floor is not said to every few seconds, nor a tier kept short by
                # its own puts; unknown, as on an error, is not room)
                fs = self._statvfs(tier)
                margin = min(SHORT_MARGIN, fs.f_blocks * fs.f_frsize // 100) if fs else 0
                own = tier.ledger.used
                kept = fs is not None and self._lacking(tier, fs, margin - own, now) == 0
            if kept == (not tier.short):
                continue
            tier.short = not kept
            if tier.short:  # (said once, not with every block refused: the reason for them)
                log.warning(
                    "cache tier %s keeps no block: its filesystem has less than the %.0f%% "
                    "it keeps free (cache.tiers[].min_free) even with none of the tier's "
                    "blocks on it; it keeps blocks again once other tenants of the disk free "
                    "space, or with a lower min_free",
                    tier.dir,
                    tier.min_free * 100,
                )
            else:
                log.info("cache tier %s keeps blocks again: its filesystem has room", tier.dir)

    def _room(
        self, tier: _Tier, key: str, size: int, *, partial: bool = False
    ) -> tuple[bool, asyncio.Task[None] | None]:
        """Whether a file for a block of `size` bytes leaves `tier`'s filesystem at least
        `min_free` free (a node's disk is shared: kubelet evicts pods where it runs short),
        once the tier's least recently used blocks are evicted, and the task that removes
        their files (`_remove`: the caller waits for it before it writes); unless
        `partial`, none is evicted where all of them would not do, and False: the block is
        not kept. Files being written count as written, the file a re-put replaces as
        removed, and space evicted lately that the filesystem does not show as free yet
        (`blocks.Unseen`: files held open by a reader), so no look evicts again for the
        same shortfall. Nothing here waits: each look sees what the last one evicted.
        Its quota aside: a quota larger than the disk stops here, not at ENOSPC."""
        fs = self._statvfs(tier)
        if fs is None:  # (no floor; or the write will say what is wrong)
            return True, None
        page = fs.f_frsize or 4096

        def on_disk(n: int) -> int:
            return -(-(n + trailer_size(n)) // page) * page

        seen = fs.f_bavail * fs.f_frsize
        want = on_disk(size) if key else 0  # (`keep_free`: no file of its own)
        replaced = on_disk(tier.ledger.size(key)) if key in tier.ledger else 0
        now = time.monotonic()
        need = self._lacking(tier, fs, want - replaced, now)
        removing = None
        if need > 0:
            held = tier.ledger.used + len(tier.ledger) * (page + trailer_size(size))
            if held < need and not partial:
                return False, None  # (not even every block's file would make it: none evicted)
            gone, freed = tier.ledger.shed(need, on_disk, keep=key)
            tier.evictions += len(gone)
            self.stats.shed += len(gone)
            tier.unseen.freed(seen, tier.written, freed, now)
            removing = self._remove(tier, gone)
            if freed < need:
                return False, removing
        tier.written += want
        return True, removing

    @staticmethod
    def _statvfs(tier: _Tier) -> os.statvfs_result | None:
        """What `tier`'s filesystem says of its space; None for a tier without a floor (in
        memory, `min_free` 0), or where it cannot say."""
        if tier.min_free <= 0 or tier.dir is None:
            return None
        try:
            return os.statvfs(tier.dir)
        except OSError:
            return None

    @staticmethod
    def _lacking(tier: _Tier, fs: os.statvfs_result, size: int, now: float) -> int:
        """Bytes `tier`'s filesystem lacks for `size` more above its floor: what it shows
        free, less the files being written, plus what was evicted lately and is not shown
        free yet (`blocks.Unseen`). A filesystem that says nothing (all zeros: some FUSE
        ones) lacks nothing."""
        seen = fs.f_bavail * fs.f_frsize
        free = seen - tier.writing + tier.unseen.bytes(seen, tier.written, now)
        return blocks.room_needed(free, fs.f_blocks * fs.f_frsize, tier.min_free, size)

    def _remove(self, tier: _Tier, keys: list[str]) -> asyncio.Task[None] | None:
        """A task of its own that removes the files of blocks `tier` no longer holds, one
        after the other (`stored` waits for it), then tells `tier.unseen` what the
        filesystem shows."""
        if not keys:
            return None

        async def remove() -> None:
            for key in keys:
                await self._unlink(tier, key)
            with contextlib.suppress(OSError):
                fs = os.statvfs(tier.dir or ".")
                tier.unseen.settle(fs.f_bavail * fs.f_frsize, tier.written, time.monotonic())

        task = asyncio.create_task(remove())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    async def _placed(self, i: int, tier: _Tier, key: str, data: blocks.Data) -> None:
        """`key` counted in tier `i`, and what that evicts moved down or dropped."""
        evicted = tier.ledger.add(key, len(data))
        tier.evictions += len(evicted)
        if tier.dir is not None:  # the last tiers are disks: what leaves them is dropped
            for old in evicted:
                await self._unlink(tier, old)
            return
        # out of memory at once, before any wait: an evicted block is in no tier's count
        # from here on, so neither is its data (a cancelled caller or a failed move leaves
        # none behind), and a block put again meanwhile is a new entry, not taken for it
        moving = [(old, got) for old in evicted if (got := tier.mem.pop(old, None)) is not None]
        moving.reverse()  # (taken from the end: each freed as soon as it is moved)
        nxt = i + 1
        while moving:
            old, (old_data, old_crc) = moving.pop()
            if (
                nxt >= len(self._tiers)
                or old in tier.ledger  # (put again meanwhile: that copy stays)
                or not self._tiers[nxt].ledger.fits(len(old_data))
            ):
                continue
            try:
                await self._place(nxt, old, old_data, old_crc, on_loop=False)  # (many at once)
            except OSError as err:  # (a full disk) dropped, as from the last tier
                self.not_kept.warning("block %s not moved down a tier: its file: %s", old, err)

    async def _write(
        self, tier: _Tier, key: str, data: blocks.Data, crc: int, *, behind: bool
    ) -> None:
        """Write a block file in the writing thread; once it is whole, it may be located
        and sent as it is. A write that fails is counted (`write_errors`); behind its
        readers (`behind`) the block then leaves the cache (logged), otherwise the error is
        the caller's (`put`'s: the block is not kept)."""
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._writer, tier.write, key, data, crc)
            tier.verified[key] = (crc, len(data))  # written by us just now
        except Exception as err:
            self.stats.write_errors += 1
            if not behind:
                raise
            tier.ledger.remove(key)
            self._let_go(key)
            self.not_kept.warning(
                "block %s not cached: its file could not be written: %s", key, err
            )
        finally:
            tier.writing -= len(data)
            if behind:
                del tier.pending[key]
                self._behind -= len(data)
            del self._files[key]

    def _write_here(self, tier: _Tier, key: str, data: blocks.Data, crc: int) -> None:
        """`tier.write` on the event loop (its error the caller's), the time it kept the
        loop waiting counted (`LoopWaits`)."""
        before, start = _thread_times(), time.monotonic()
        try:
            tier.write(key, data, crc)
        finally:
            self.stats.loop_writes += 1
            after, now = _thread_times(), time.monotonic()
            if before is None or after is None:  # (the kernel does not say: the thread's)
                self.write_on_loop = False
                log.info(
                    "this kernel does not say how long a thread waits (/proc/thread-self/"
                    "schedstat): small blocks' files are written by the writing thread"
                )
            else:
                waited = LoopWaits.waited(
                    now - start, after[0] - before[0], after[1] - before[1], after[2] - before[2]
                )
                self.stats.loop_writes_waited += waited > 0
                if self._loop_waits.note(waited, now):
                    self.stats.loop_writes_stopped += 1
                    log.info(
                        "small block files' writes kept the event loop waiting %.0f ms or "
                        "more within %.0f s (the last %.1f ms): they are written by the "
                        "writing thread for the next %.0f s",
                        WAIT_BUDGET * 1000,
                        WINDOW,
                        waited * 1000,
                        BACK_TO_THREAD_FOR,
                    )

    async def _settled(self, key: str) -> None:
        """Once nothing is done to the file of `key` (what started meanwhile too)."""
        while (busy := self._files.get(key)) is not None:
            await asyncio.wait({busy})  # it goes on if this caller is cancelled

    async def _unlink(self, tier: _Tier, key: str) -> None:
        """Remove the file of a block the tier no longer holds, after what is being done to
        it; not if the block was placed in the tier again meanwhile (its file stays)."""
        await self._settled(key)
        if key in tier.ledger:
            return
        tier.verified.pop(key, None)
        self._let_go(key)

        async def unlink() -> None:
            try:
                await asyncio.to_thread(tier.unlink, key)
            finally:
                del self._files[key]

        self._files[key] = task = asyncio.create_task(unlink())
        await asyncio.shield(task)

    async def stored(self) -> None:
        """Once every block put so far is in its file (or failed to be written), and the
        files of blocks that left are removed."""
        while self._files or self._cleanups:
            await asyncio.wait(set(self._files.values()) | self._cleanups)

    async def _drop(self, tier: _Tier, key: str) -> None:
        if tier.dir is not None and key in tier.ledger:
            self._let_go(key)
        if tier.ledger.remove(key) or key in tier.mem:
            tier.mem.pop(key, None)
            if tier.dir is not None:
                await self._unlink(tier, key)

    async def discard(self, key: str) -> None:
        for tier in self._tiers:
            await self._drop(tier, key)

    def hottest(self) -> list[str]:
        """Every cached key, the most recently used of the first tier first."""
        out: list[str] = []
        for tier in self._tiers:
            out += tier.ledger.hottest()
        return out

    def snapshot(self) -> StoreStats:
        s = self.stats
        s.writing = sum(len(t.pending) for t in self._tiers)
        s.tiers = [
            TierStats(
                medium=t.medium,
                quota=t.ledger.quota,
                used=t.ledger.used,
                blocks=len(t.ledger),
                hits=t.hits,
                evictions=t.evictions,
                short=t.short,
            )
            for t in self._tiers
        ]
        return s

    def describe(self) -> dict[str, Any]:
        s = self.snapshot()
        return {
            "blocks": sum(t.blocks for t in s.tiers),
            "used": s.used,
            "capacity": s.capacity,
            "hits": s.hits,
            "misses": s.misses,
            "corrupt": s.corrupt,
            "writing": s.writing,
            "write_errors": s.write_errors,
            "loop_writes": s.loop_writes,
            "loop_writes_waited": s.loop_writes_waited,
            "loop_writes_stopped": s.loop_writes_stopped,
            "no_room": s.no_room,
            "shed": s.shed,
            "file_reads": s.file_reads,
            "loads": s.loads,
            "evictions": sum(t.evictions for t in s.tiers),
            "tiers": [t.__dict__ for t in s.tiers],
        }


class LoopWaits:
    """Whether small blocks' files are written on the event loop: not for BACK_TO_THREAD_FOR
    once their writes kept it waiting WAIT_BUDGET or more within a WINDOW (fixed windows,
    one after the other: waits either side of a boundary may add up to twice the budget
    within a WINDOW's time). Pure: the caller gives the times."""

    def __init__(self) -> None:
        self.spent = 0.0  # seconds waited in the current window
        self.since = 0.0  # (monotonic) the window's start
        self.until = 0.0  # (monotonic) writes in the thread until then

    def open(self, now: float) -> bool:
        return now >= self.until

    @staticmethod
    def waited(wall: float, ran: float, queued: float, slept: int) -> float:
        """Seconds a write kept the loop's thread asleep: where it went to sleep (`slept`
        times: on the disk, a lock, the kernel's throttle, the GIL taken back from
        another thread), what it took beyond the time the thread ran and the time it
        waited for a core (taken off it by the scheduler, which the thread would not have
        escaped elsewhere)."""
        return max(0.0, wall - ran - queued) if slept > 0 else 0.0

    def note(self, waited: float, now: float) -> bool:
        """Count a write's wait; True if that sends small blocks to the thread now."""
        if now - self.since >= WINDOW:
            self.since, self.spent = now, 0.0
        self.spent += waited
        if self.spent < WAIT_BUDGET:
            return False
        self.until, self.spent = now + BACK_TO_THREAD_FOR, 0.0
        return True


class _Schedstat:
    """A thread's /proc/thread-self/schedstat, open while the thread lives: closed when
    its thread-local goes, at the thread's end (threads running an event loop each come
    and go: tests, anyio's portals)."""

    __slots__ = ("fd",)

    def __init__(self) -> None:
        self.fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)

    def __del__(self, close: Callable[[int], None] = os.close) -> None:
        close(self.fd)  # (`os` itself may be gone at the interpreter's end)


_THREAD = threading.local()  # each thread's `_Schedstat`
# (a child forked without exec opens its own: the parent's names the parent's thread)
os.register_at_fork(after_in_child=lambda: _THREAD.__dict__.pop("schedstat", None))


def _thread_times() -> tuple[float, float, int] | None:
    """(seconds this thread has run, seconds it has waited for a core, times it has gone to
    sleep), or None where the kernel does not say (no /proc; scheduler statistics off, where
    schedstat reads all zeros). The
    run time is the thread's CPU clock, exact to now: schedstat's own first field is brought
    up to date only at the scheduler's tick or a switch, so a write of 100 µs between two
    ticks seemed to have slept all of it. The wait for a core is brought up to date when
    the thread gets one back, before it runs again. The sleeps (voluntary context
    switches) tell a wait from time taken from the thread without its sleeping, which
    counts as neither run nor wait (interrupts' work on its core, loopback's network; the
    hypervisor's, steal time): every bench run added up 10 ms of it within a second."""
    try:
        f = getattr(_THREAD, "schedstat", None)
        if f is None:
            f = _THREAD.schedstat = _Schedstat()
        ran, queued = (int(n) for n in os.pread(f.fd, 64, 0).split()[:2])
        slept = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
    except (OSError, ValueError, AttributeError):  # (RUSAGE_THREAD: Linux's)
        return None
    return (time.thread_time(), queued / 1e9, slept) if ran else None
