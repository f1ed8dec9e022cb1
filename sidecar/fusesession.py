"""The FUSE session a mount's requests come through and its answers go back by.

- `NativeSession` (the default): `fluidfed._fuse` (native/fuse, on fuser). Threads of its
  own read the kernel's requests and queue them; the event loop decides every answer from
  `DatasetFS` and hands it back. A READ's bytes are written to /dev/fuse (the kernel's
  copy into the file's page cache) by threads of its own, without the GIL. Opens take no
  message where the kernel is safe with it (`kernel_opens`): the kernel opens files by
  itself (no OPEN, no RELEASE); else the session's threads answer them. Either way READs
  name the inode (`DatasetFS.stream`) rather than a handle. The READs that lie in a block
  the sidecar holds (mapped from a worker's file, or a few in its memory) are answered by
  the session itself once Python hands it the block (`NativeSession._hold`). A reader
  whose blocks lie in a worker's files on this node is handed on whole: the session maps
  the next blocks itself, where Python says they lie (`NativeSession._plan`), from the
  page cache (a warm file) or read in from the disk by its loading threads (a cold one).
- `Pyfuse3Session` (`FLUIDFED_FUSE=pyfuse3`): pyfuse3 on the event loop, as before. Its
  READ answers copy on the loop's thread with the GIL held, so every READ of a mount ran
  on one core (figures: README, "Measured design decisions").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import logging
import os
import platform
import re
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any, Protocol

import pyfuse3

from fluidfed.data import blockfile
from fluidfed.errors import CorruptBlock
from sidecar.fs import DatasetFS, Handle

log = logging.getLogger("fluidfed.sidecar")

ENGINES = ("native", "pyfuse3")
ENGINE_VAR = "FLUIDFED_FUSE"  # which session (ENGINES)
OPENS = ("auto", "kernel", "session")
OPENS_VAR = "FLUIDFED_FUSE_OPENS"  # who answers opens (OPENS)

# The first kernels whose files opened without a message (no_open) keep their inode while a
# read-ahead is under way: before "fuse: fix readahead reclaim deadlock" (in 6.19, queued
# for 6.18's stable series on 2026-01-21), memory reclaim run by the sidecar while it
# serves a read-ahead could evict that inode and wait on the very pages it is filling.
# Older series may have it too, unknown here: FLUIDFED_FUSE_OPENS=kernel says they do.
SAFE_KERNEL_OPENS = ((6, 19, 0), (6, 18, 10))

# blocks of a file whose files the session maps itself at a time (`NativeSession._plan`):
# a READ comes to the event loop once per PLANNED blocks (or where a block cannot be
# mapped there), rather than once per block
PLANNED = 64
PLANS_KEPT = 1024  # files whose plans are remembered (to count what the session mapped)


@dataclasses.dataclass
class _Planned:
    first: int  # the first block planned
    size: int  # the file's
    blocks: list[tuple[str, str, int] | None]  # each one's (worker, key, size), if planned
    ahead: int  # blocks the session reads in ahead of its reader (0: a warm file's plan)

    def __contains__(self, index: object) -> bool:
        """Whether block `index` is the session's to read (`DatasetFS.planned`)."""
        i = index - self.first if isinstance(index, int) else -1
        return 0 <= i < len(self.blocks) and self.blocks[i] is not None

    def covers(self, index: int) -> bool:
        return self.first <= index < self.first + len(self.blocks)


class _FilePlans:
    """A file's plans, as the session keeps them (`Session.plan`): one per reader of the
    file at another place, each handing its own over, none two of which plan one block.
    A plan replaces those it plans a block of and its reader's plan before (`replaces`:
    its first block, `Handle.planned`), and past `_fuse.PLANS_PER_FILE` the one made
    first goes. A reader's plan ends where the next one of the file starts (`room`): a
    reader that catches up with another rides that one's plan, rather than the two
    replacing each other's at every hand-over."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.plans: list[_Planned] = []  # (the one made first first)

    def __contains__(self, index: object) -> bool:
        """Whether block `index` is the session's to read (`DatasetFS.planned`)."""
        return any(index in p for p in self.plans)

    def at(self, index: int) -> _Planned | None:
        """The plan that plans block `index`, if one does."""
        return next((p for p in self.plans if p.covers(index)), None)

    def ridden(self, index: int, planned: int) -> _Planned | None:
        """Another reader's plan (not the one made at `planned`, this reader's) that
        covers block `index`, whether or not it plans that block (one it does not is at
        hand here, held as it is reached): a reader that reaches it rides it. Planning
        anew from `index` would replace it (the two overlap), its reader's next blocks
        then read here and its mapped ones told again."""
        p = self.at(index)
        return p if p is not None and p.first != planned else None

    def room(self, first: int, most: int) -> int:
        """How many blocks from `first` on a new plan may take, up to `most`: those before
        the next plan of the file."""
        return min([most] + [p.first - first for p in self.plans if p.first > first])

    def add(self, plan: _Planned, replaces: int = -1) -> None:
        end = plan.first + len(plan.blocks)
        kept = [
            p
            for p in self.plans
            if p.first != replaces and (p.first >= end or plan.first >= p.first + len(p.blocks))
        ]
        self.plans = [*kept[max(0, len(kept) - self.most + 1) :], plan]

    def drop(self, index: int) -> bool:
        """Let go of the plan that plans block `index` (`Session.unplan`): whether one did."""
        p = self.at(index)
        if p is not None:
            self.plans.remove(p)
        return p is not None


PIECEWISE_FROM = blockfile.PIECEWISE_FROM


class Session(Protocol):
    async def main(self) -> None: ...  # serves until `terminate`
    async def terminate(self) -> None: ...
    def close(self) -> None: ...  # unmounts; after `main` ended
    def invalidate_inode(self, inode: int) -> None: ...  # blocking: for a thread
    def invalidate_entry(self, parent: int, name: bytes) -> None: ...  # blocking: a thread
    def requests(self) -> dict[str, int]: ...  # the kernel's requests so far, by kind
    # whether the replying threads, refused cachestat, fault in the pieces they check
    def cachestat_refused(self) -> bool: ...
    def settle(self) -> None: ...  # the READs answered so far counted in `DatasetFS`

    opens: str  # who answers opens: "kernel" (no message), "session", "pyfuse3"


def engine() -> str:
    """The session `FLUIDFED_FUSE` names ("native" unless set)."""
    name = os.environ.get(ENGINE_VAR, "native").strip() or "native"
    if name not in ENGINES:
        raise ValueError(f"{ENGINE_VAR}={name!r}: expected one of {', '.join(ENGINES)}")
    return name


def kernel_opens_safe(release: str) -> bool:
    """Whether a kernel release (`uname -r`) lets the kernel open files by itself without
    risking the read-ahead deadlock above."""
    nums = [int(n) for n in re.findall(r"\d+", release.split("-")[0])[:3]]
    version = tuple(nums + [0] * (3 - len(nums)))
    first, series = SAFE_KERNEL_OPENS
    return version >= first or (version[:2] == series[:2] and version >= series)


def kernel_opens() -> bool:
    """Whether the native session lets the kernel open files by itself (no OPEN, no
    RELEASE) or answers them: `FLUIDFED_FUSE_OPENS` (kernel, session; auto unless set: the
    kernel where `kernel_opens_safe`)."""
    name = os.environ.get(OPENS_VAR, "auto").strip() or "auto"
    if name not in OPENS:
        raise ValueError(f"{OPENS_VAR}={name!r}: expected one of {', '.join(OPENS)}")
    if name == "auto":
        return kernel_opens_safe(platform.release())
    return name == "kernel"


def mount(fs: DatasetFS, mountpoint: str, options: set[str]) -> Session:
    """Mount `fs` at `mountpoint` through the session `FLUIDFED_FUSE` names."""
    if engine() == "pyfuse3":
        return Pyfuse3Session(fs, mountpoint, options)
    return NativeSession(fs, mountpoint, options)


class NativeSession:
    def __init__(
        self,
        fs: DatasetFS,
        mountpoint: str,
        options: set[str],
        *,
        threads: int = 2,
        repliers: int = 2,
    ) -> None:
        from fluidfed import _fuse

        self.fs = fs
        self._fuse = _fuse
        kernel = kernel_opens()
        self.opens = "kernel" if kernel else "session"
        self._s = _fuse.Session(mountpoint, sorted(options), threads, repliers, kernel)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped: asyncio.Future[None] | None = None
        self._plans: OrderedDict[int, _FilePlans] = OrderedDict()  # by inode (`_plan`)
        # by inode: the blocks planned, by index, as counted once mapped (`settle`)
        self._mapped: OrderedDict[int, dict[int, tuple[str, str, int]]] = OrderedDict()
        fs.planned = self._planned

    def invalidate_inode(self, inode: int) -> None:
        self._s.invalidate_inode(inode)  # (its plan let go of there too)
        self._plans.pop(inode, None)
        self._mapped.pop(inode, None)

    def invalidate_entry(self, parent: int, name: bytes) -> None:
        self._s.invalidate_entry(parent, name)

    def requests(self) -> dict[str, int]:
        return dict(self._s.requests())

    def cachestat_refused(self) -> bool:
        return bool(self._fuse.cachestat_refused())

    def settle(self) -> None:
        """Count the READs the session answered by itself (`hold`) since last asked, and
        the blocks it mapped itself (`_plan`): hits at their workers, their readers moved
        on."""
        reads, served = self._s.served()
        if reads:
            self.fs.served_elsewhere(reads, served)
        for ino, index in self._s.loaded():
            self.fs.passed(ino, index, self.fs.readahead + 2)
            if (b := self._mapped.get(ino, {}).pop(index, None)) is not None:
                self.fs.reader.mapped_by_session(*b)

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        fd = self._s.fileno()
        loop.add_reader(fd, self._drain)
        sweep = asyncio.create_task(self._sweep())
        try:
            self._drain()  # what came before the loop watched
            await self._stopped
        finally:
            sweep.cancel()
            loop.remove_reader(fd)

    async def _sweep(self, every: float = 1.0) -> None:
        """`take` at least once a second: the READ answers written since the last one are
        let go of there (a mapped block file evicted meanwhile keeps its disk space until
        then), without waking the loop for each."""
        while True:
            await asyncio.sleep(every)
            self._drain()

    async def terminate(self) -> None:
        """Take no more requests, and give up the answers still being fetched: both are
        answered ENOTCONN, what their callers see a moment later anyway, once the mount is
        gone (EIO would say something failed)."""
        self._s.close()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        self._s.unmount()

    # --- the requests ---------------------------------------------------------------

    def _drain(self) -> None:
        f = self._fuse
        fs = self.fs
        ttl = fs.ttl
        self.settle()
        for req in self._s.take():
            kind, reply = req[0], req[1]
            try:
                if kind == f.READ:
                    ino, off, size = req[2], req[3], req[4]
                    if self._back_to_session(ino, off, size):
                        reply.session(ino, off, size)  # (else back as BACK)
                        continue
                    self._take_read(reply, ino, off, size)
                elif kind == f.BACK:  # a READ handed back to the session, not answered there
                    ino, off, size = req[2], req[3], req[4]
                    if self._unmappable(ino, off, size):
                        self._unplan(ino, off // fs.block_size)
                    self._take_read(reply, ino, off, size)
                elif kind == f.SEEN:  # a READ answered by the session from a block held
                    ino, off, size = req[2], req[3], req[4]
                    h = fs.stream(ino, off)
                    fs.follow(h, off, size)
                    index = off // fs.block_size
                    self._next(h, ino, index + 1, fs.held_block(h, index))
                elif kind == f.REREAD:  # its answer's block failed its check as it was sent
                    ino, off, size = req[2], req[3], req[4]
                    h = fs.stream(ino, off)
                    self._later(reply, self._read(reply, h, ino, off, size, again=True))
                elif kind == f.LOOKUP:
                    reply.entry(fs.entry(fs.lookup_path(req[2], req[3])), ttl, ttl)
                elif kind == f.GETATTR:
                    reply.attr(fs.inode_stat(req[2]), ttl)
                elif kind == f.FORGET:
                    fs.forget_now(req[2])
                    for ino, _ in req[2]:  # (the session let its plan go)
                        self._plans.pop(ino, None)
                        self._mapped.pop(ino, None)
                elif kind == f.OPENDIR:
                    reply.open(fs.opendir_now(req[2]))
                elif kind == f.READDIR:
                    for name, path, after in fs.entries(req[2], req[3]):
                        if not reply.add(name, fs.entry(path), ttl, after):
                            break
                    reply.done()
                elif kind == f.STATFS:
                    reply.statfs(*fs.statfs_now())
                else:
                    reply.error(errno.ENOSYS)
            except pyfuse3.FUSEError as err:
                _fail(reply, err.errno)
            except Exception:
                log.exception("answering a FUSE request (%d) failed", kind)
                _fail(reply, errno.EIO)

    def _take_read(self, reply: Any, ino: int, off: int, size: int) -> None:
        """Answer a READ here: from the block at hand, else once fetched."""
        fs = self.fs
        h = fs.stream(ino, off)
        data = fs.read_held(h, off, size)
        if data is not None:
            if not self._answer_read(reply, data, h, ino, off):
                self._later(reply, self._read(reply, h, ino, off, size, again=True))
        elif fs.givable(h, off, size):
            self._later(reply, self._give(reply, h, ino, off, size))
        else:
            self._later(reply, self._read(reply, h, ino, off, size))

    def _later(self, reply: Any, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(self._answer(reply, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(functools.partial(_cancelled, reply, work))

    @staticmethod
    async def _answer(reply: Any, work: Any) -> None:
        try:
            await work
        except pyfuse3.FUSEError as err:
            _fail(reply, err.errno)
        except asyncio.CancelledError:
            _fail(reply, errno.ENOTCONN)
            raise
        except Exception:
            log.exception("answering a FUSE request failed")
            _fail(reply, errno.EIO)

    async def _read(
        self, reply: Any, h: Handle, ino: int, off: int, size: int, *, again: bool = False
    ) -> None:
        """Answer a READ from blocks fetched if need be; `again`: its block, mapped from a
        worker's file, failed its check as it was answered (let go of, then read checked
        whole: `DatasetFS.distrust`; the answer's bytes were counted then)."""
        for _ in range(2):
            if again:
                self._s.unhold(ino)  # (its plan too)
                self._plans.pop(ino, None)
                await self.fs.distrust(h, off)
            data = await self.fs.read_fetched(h, off, size, again=again)
            if self._answer_read(reply, data, h, ino, off):
                return
            again = True
        raise pyfuse3.FUSEError(errno.EIO)  # (a block checked whole cannot fail this way)

    def _answer_read(self, reply: Any, data: Any, h: Handle, ino: int, off: int) -> bool:
        """A READ's bytes to the session; those of a block mapped from a worker's file and
        not checked whole are checked by the pieces they lie in as they are sent (a piece
        that fails comes back as REREAD). A small answer checks its whole block here
        instead, once (a piece per small READ would check many times what it sends):
        False, and unanswered, if that fails. The block a large answer lies in is held by
        the session, with the next block if it is at hand, so that the READs after it that
        lie in them are answered there (`_hold`)."""
        span = blockfile.unchecked_span(data)
        bs = self.fs.block_size
        # (the block the READ ends in: the next one for a READ that ran into it, its answer
        # joined from the two here)
        end = (off + max(len(data), 1) - 1) // bs
        if len(data) >= PIECEWISE_FROM:
            # (held before this READ is answered: its reader's next READ may come at once,
            # and may run into the next block too, answered there from the two joined)
            for index in range(off // bs, end + 1):
                self._hold(h, ino, index, seen=True)
        if span is None:
            reply.data(data)
        elif len(data) < PIECEWISE_FROM:
            try:
                blockfile.check_whole(data)
            except CorruptBlock:
                return False
            reply.data(data)
        else:
            block, lo, pieces, fd = span
            piece = blockfile.CHECK_PIECE
            reply.data_checked(block, lo, len(data), pieces, piece, ino, off, fd)
        if len(data) >= PIECEWISE_FROM:
            # (a joined answer is no block's: the block it ended in says if it was warm)
            self._next(h, ino, end + 1, data if end == off // bs else self.fs.held_block(h, end))
        return True

    def _next(self, h: Handle, ino: int, index: int, data: Any) -> bool:
        """Have the session answer the READs of block `index` of `ino` by itself, its
        reader having reached the block before it (`data`, or a part of it): from there on
        it maps the next blocks itself (`_plan`; a cold file's, one whose block came from
        its worker's file on the disk, read in ahead of its reader there too), but for
        those at hand here already (read ahead), which it is handed (with no SEEN: nothing
        more is read ahead here); else Python holds the next one (`_hold`), once it has
        come if it is on its way, and hears of its first READ. Whether block `index` is
        the session's now (planned, or held there)."""
        # (the reader's plan: the one it is in, or whose end it reached; else the file's
        # latest, of another reader)
        ps = self._plans.get(ino)
        p = None if ps is None else ps.at(index) or ps.at(index - 1) or ps.plans[-1]
        # (another reader's plan that covers block `index`: this reader rides it, warm or
        # cold, rather than the two replacing each other's at each hand-over)
        riding = ps is not None and ps.ridden(index, h.planned) is not None
        if not (riding or (p is not None and p.ahead and self._ahead_of(ino, p, index))):
            # (a file planned before, that reached a block read ahead here, goes on
            # planned, cold or warm as it was unless its block says which; a cold plan
            # whose reader has blocks of it still to reach is kept, its loads under way)
            warm = data is not None and blockfile.from_page_cache(data)
            cold = (  # (with no read-ahead, a cold file's blocks are read as they come)
                not warm and self.fs.readahead > 0 and blockfile.is_unchecked(data)
            )
            ahead = self.fs.readahead if cold else (p.ahead if p is not None and not warm else 0)
            if not ((p is not None or warm or cold) and self._plan(h, ino, index, ahead)):
                if self._hold(h, ino, index, seen=False):
                    return True
                # (still on its way, read ahead: held once it has come, so that its first
                # READ too is answered there, the reader followed by its SEEN)
                later = functools.partial(self._hold, h, ino, index, seen=False)
                self.fs.when_fetched(h, index, later)
                return False
        held = 0
        for i in range(index, index + self.fs.readahead + 1):
            if not self._hold(h, ino, i, seen=True):
                break
            held += 1
        return held > 0 or index in self._plans.get(ino, ())

    def _planned(self, ino: int) -> _FilePlans | None:
        """The blocks of `ino` the session's plans have it read (`DatasetFS.planned`)."""
        return self._plans.get(ino)

    def _ahead_of(self, ino: int, p: _Planned, index: int) -> bool:
        """Whether plan `p` of `ino` has blocks from `index` on that its reader has not
        reached yet (not counted: `settle`)."""
        mapped = self._mapped.get(ino, {})
        end = p.first + len(p.blocks)
        return p.first <= index < end and any(i in mapped for i in range(index, end))

    def _unmappable(self, ino: int, off: int, size: int) -> bool:
        """Whether a READ that came back here (BACK) lies in a block the session's plan for
        `ino` has it map, and is one the session would answer from it (`Shared::load`): it
        could not map that block (not there, not whole in the page cache, damaged)."""
        bs = self.fs.block_size
        ps = self._plans.get(ino)
        p = None if ps is None else ps.at(off // bs)
        if p is None or size < PIECEWISE_FROM:
            return False
        i = off // bs - p.first
        if not 0 <= i < len(p.blocks) or p.blocks[i] is None:
            return False
        return off % bs + size <= bs or (off // bs + 1) * bs >= p.size

    def _back_to_session(self, ino: int, off: int, size: int) -> bool:
        """Whether a READ that came here lies in a block of `ino` that a plan of the
        session's has it map, or runs across two blocks one of which it does, and is one
        the session would answer from them (`Shared::load`): it is then handed back to the
        session (`Reply.session`) rather than read here, which would read a planned block
        twice (here, and by the session for the READ after it). Such a READ reached the
        session just before its reader was handed over (the kernel's read-ahead sends a
        few at once: the plan was made meanwhile), or runs past the end of its reader's
        plan: that reader is then handed over again from the block it runs into (`_next`).
        One the session cannot answer either (a block it could not map) comes back, BACK."""
        ps = self._plans.get(ino)
        if ps is None or not ps.plans or size < PIECEWISE_FROM:
            return False
        bs = self.fs.block_size
        first, last = off // bs, (min(off + size, ps.plans[0].size) - 1) // bs
        if last == first:
            if first in ps or first - 1 not in ps or ps.at(first) is not None:
                return first in ps
            # (the block after the end of a plan: its reader handed on from there, rather
            # than this block read here and the next ones read ahead here)
            return self._next(self.fs.stream(ino, off), ino, first, None)
        if last != first + 1 or not (first in ps or last in ps):
            return False
        if last not in ps:  # (past the end of its plan: the next one made from there)
            # (if the session cannot have that block, neither can it answer this READ:
            # read here at once rather than after a round trip there)
            return self._next(self.fs.stream(ino, off), ino, last, None)
        return True

    def _unplan(self, ino: int, index: int | None = None) -> None:
        """Let the session's plan of `ino` that plans block `index` go (that reader's; the
        others of the file stand), or all of the file's (their held blocks stay): the
        READs of its blocks come here again, its reader read ahead of here, and nothing is
        mapped twice (nor counted so)."""
        ps = self._plans.get(ino)
        if ps is None:
            return
        if index is None or (ps.drop(index) and not ps.plans):
            del self._plans[ino]
        try:
            self._s.unplan(ino, index)
        except Exception:
            log.exception("letting the FUSE session's plan of inode %d go failed", ino)

    def _plan(self, h: Handle, ino: int, first: int, ahead: int) -> bool:
        """Have the session map the blocks of file `ino` from `first` on (up to PLANNED)
        from their workers' files on this node by itself, as its reader reaches each: the
        event loop then maps, reads, holds and lets go of none of them. A warm file's
        (`ahead` 0: one whose blocks were found whole in the page cache, as its next ones
        likely are) are mapped from the page cache; a cold file's are read in from the
        disk by the session's loading threads, `ahead` blocks ahead of its reader. The plan
        ends where another reader's plan of the file starts. Whether any was planned; if
        none, a plan of the file that plans block `first` goes (this reader is read ahead
        of here). A block the session cannot map (not there, not in the page cache for a
        warm file, another format, damaged) comes here as a READ."""
        ps = self._plans.get(ino)
        n = PLANNED if ps is None else ps.room(first, PLANNED)
        planned = [] if self.cachestat_refused() else self.fs.plan(h, first, n)
        if not any(planned):  # (refused cachestat, the session cannot tell a warm file)
            if ps is not None and ps.at(first) is not None:
                self._unplan(ino, first)
            return False
        paths = [p[2] if p is not None else [] for p in planned]
        bs = self.fs.block_size
        size = h.ref.size
        replaces = h.planned if h.planned >= 0 else None
        try:
            self._s.plan(ino, first, bs, size, blockfile.CHECK_PIECE, paths, ahead, replaces)
        except Exception:  # (its READs come here instead)
            log.exception("handing the plan of %s to the FUSE session failed", h.ref.key)
            return False
        # (nothing of it read ahead here from now on: the reader's READs that come here,
        # the blocks the session could not map, are read as they come)
        h.ahead = max(h.ahead, first + len(planned))
        entries = [
            None if p is None else (p[0], p[1], min(bs, size - i * bs))
            for i, p in enumerate(planned, first)
        ]
        if ps is None:
            ps = _FilePlans(self._fuse.PLANS_PER_FILE)
        ps.add(_Planned(first, size, entries, ahead), h.planned)
        h.planned = first
        self._plans[ino] = ps  # (again: `invalidate_inode`, from another thread, pops it)
        # (what a block mapped from it is counted as, when the session says so: kept past
        # the plan, which the next one may replace first)
        mapped = self._mapped.pop(ino, {})
        mapped.update((i, e) for i, e in enumerate(entries, first) if e is not None)
        self._mapped[ino] = mapped
        self._plans.move_to_end(ino)
        while len(self._plans) > PLANS_KEPT:  # (the session's let go of too)
            self._unplan(next(iter(self._plans)))
        while len(self._mapped) > PLANS_KEPT:
            self._mapped.popitem(last=False)
        return True

    def _hold(self, h: Handle, ino: int, index: int, *, seen: bool) -> bool:
        """Have the session answer the READs of `ino` that lie in its block `index` by
        itself, without a round trip through the event loop, if the sidecar holds that
        block (mapped from a worker's file, or in its memory: the session holds a few of
        those, `HELD_MEMORY`): each checked by the pieces it covers as it is sent unless
        the block was checked whole. Its first such READ comes back as SEEN unless `seen`
        (Python answered one in it), for `DatasetFS.follow` to read ahead. Whether the
        sidecar holds it."""
        block_size = self.fs.block_size
        start = index * block_size
        if start >= h.ref.size:
            return False
        data = self.fs.held_block(h, index)
        if data is None:
            return False
        last = start + len(data) >= h.ref.size
        span = blockfile.unchecked_span(data)
        try:
            if span is None:
                memory = not blockfile.is_mapped(data)
                self._s.hold(ino, start, data, last, None, 0, -1, seen, memory)
            elif span[1] == 0 and len(span[0]) == len(data):
                block, _, pieces, fd = span
                self._s.hold(ino, start, block, last, pieces, blockfile.CHECK_PIECE, fd, seen)
        except Exception:  # (its READs are answered here instead: the READ goes on)
            log.exception("handing block %d of %s to the FUSE session failed", index, h.ref.key)
        return True

    async def _give(self, reply: Any, h: Handle, ino: int, off: int, size: int) -> None:
        """A small file's READ answered straight from its worker's block file on this node
        (`DatasetFS.give`), else read the usual way."""
        gave = False

        def write(data: Any) -> None:
            nonlocal gave
            gave = True
            with contextlib.suppress(RuntimeError):  # (answered by a fallback already)
                reply.data_now(data)

        if await self.fs.give(h, write) or gave:
            return
        # (a hand-off given up on, its thread still reading, may answer first: either
        # answer is the file's bytes, and the second one is refused)
        with contextlib.suppress(RuntimeError):
            await self._read(reply, h, ino, off, size)


def _cancelled(reply: Any, work: Coroutine[Any, Any, None], task: asyncio.Task[None]) -> None:
    """A task cancelled before it ran never reached `_answer`'s handlers: answer now (not
    when the reply is collected), and close the work it never awaited."""
    if task.cancelled():
        work.close()
        _fail(reply, errno.ENOTCONN)


def _fail(reply: Any, code: int) -> None:
    """Answer `code`, unless the request was answered already (or needs no answer)."""
    if reply is not None:
        with contextlib.suppress(RuntimeError):
            reply.error(code)


class Pyfuse3Session:
    def __init__(self, fs: DatasetFS, mountpoint: str, options: set[str]) -> None:
        self.opens = "pyfuse3"
        pyfuse3.init(fs, mountpoint, options)

    async def main(self) -> None:
        await pyfuse3.main(min_tasks=4, max_tasks=64)

    async def terminate(self) -> None:
        """pyfuse3.terminate, past a race in pyfuse3's asyncio shim: when /dev/fuse turned
        readable just before, one of its read futures is already resolved, and its
        notify_closing raises InvalidStateError on it and skips the rest (seen in CI as a
        sidecar exiting 1 on SIGTERM during reads). The session is marked to exit before
        that; once the resolved reader has had its turn, the call goes through."""
        for _ in range(100):
            try:
                pyfuse3.terminate()
                return
            except asyncio.InvalidStateError:
                await asyncio.sleep(0)
        log.warning("FUSE loop readers could not all be told to stop")

    def close(self) -> None:
        pyfuse3.close(unmount=True)

    def requests(self) -> dict[str, int]:
        return {}  # (pyfuse3 counts none)

    def cachestat_refused(self) -> bool:
        return False  # (its answers are checked whole on the event loop)

    def settle(self) -> None:
        pass  # (every READ is answered on the event loop, and counted there)

    def invalidate_entry(self, parent: int, name: bytes) -> None:
        pyfuse3.invalidate_entry(pyfuse3.InodeT(parent), pyfuse3.FileNameT(name))

    def invalidate_inode(self, inode: int) -> None:
        pyfuse3.invalidate_inode(pyfuse3.InodeT(inode))
