"""The read-only FUSE filesystem (pyfuse3): the kernel's requests answered from the tree and
the block reader. Writes, renames and deletions get EROFS; a read that cannot be served in
time gets EIO.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyfuse3

from fluidfed.data import blockfile, blocks
from fluidfed.data.layout import FileRef
from fluidfed.errors import CorruptBlock
from sidecar.reader import BlockReader
from sidecar.tree import Tree

log = logging.getLogger("fluidfed.sidecar")

# st_blksize: the read size cat, cp and Python's open() pick their buffers by. Reads from
# the page cache are fastest in pieces that stay in the CPU caches: re-reading 1 GiB with
# `cat` went from 0.83 to 0.89 of `cat` on ext4 (which gets 128 KiB too) when this was
# lowered from the 4 MiB block size; cold reads are unchanged, the kernel's read-ahead
# asks for 1 MiB requests whatever the reader's size. It also keeps a Python data loader
# holding many files open from allocating 4 MiB of buffer for each.
PREFERRED_IO = 128 * 1024

# Files up to this size (and within one block) are handed to the kernel straight from their
# worker's block file when it lies on this node, in the thread that read the file rather
# than on the event loop, and kept nowhere in the sidecar: by pyfuse3's session into the
# page cache when they are opened (no READ follows), by the native one as the answer to
# their one READ, its opens taking no message (figures: README, "Measured design
# decisions"). 1 MiB: what the kernel asks for in one READ anyway (its read-ahead window).
PUSH_MAX = 1024 * 1024

# (ino, mode, nlink, size, blocks, mtime_ns, blksize, uid, gid): an inode's attributes
Attrs = tuple[int, int, int, int, int, int, int, int, int]

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT

# Readers of one file followed apart (`stream`); past this many, the one unseen longest is
# let go of (its next read starts a new streak).
STREAMS_PER_INODE = 32
# Files of more than one block whose readers are followed; past this many, the file unseen
# longest is let go of. (A file of one block has nothing to read ahead: none is kept.)
STREAMED_FILES = 1024
# A READ smaller than this starts a reader's streak only within SMALL_NEAR bytes of where
# that reader's last READ ended (`_follow`): the kernel's READs of a sequential reader grow
# to 1 MiB, each from the end of the one before, where a random reader's READs are its own
# sizes, anywhere; matched by block to one of STREAMS_PER_INODE readers (a block either
# side), nearly every one of them was taken for a sequential reader's and read ahead of:
# three blocks mapped per 4 KiB READ of a 512 MiB file (figures: README, "Measured design
# decisions"). A reader in its streak is followed by block: the session answers READs of
# the blocks it holds by itself, so the next READ here may lie a block on. SMALL_NEAR: two
# such READs, for two taken out of order.
SMALL_READ = 256 * 1024
SMALL_NEAR = 2 * SMALL_READ


@dataclass
class Handle:
    """An open file as READs see it: the file they read, and how it is being read."""

    ref: FileRef
    inode: int
    last_block: int = -1
    end: int = -1  # where its last READ ended (the furthest, while it reads in sequence)
    streak: int = 0  # reads in a row at or just after the last block: a sequential reader
    ahead: int = 0  # the blocks before this one were asked for ahead of it already
    planned: int = -1  # the first block of the session's plan it handed over last, if any


def _pyfuse3_store(inode: int, data: blocks.Data) -> None:
    # pyfuse3 takes any contiguous buffer (its stub says bytes)
    pyfuse3.notify_store(pyfuse3.InodeT(inode), 0, data)  # type: ignore[arg-type]


async def _erofs(*_: Any) -> Any:
    raise pyfuse3.FUSEError(errno.EROFS)


class DatasetFS(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, tree: Tree, reader: BlockReader, *, ttl: float, read_timeout: float):
        super().__init__()
        self.tree = tree
        self.reader = reader
        self.ttl = ttl
        self.read_timeout = read_timeout
        self.block_size = reader.cfg.block_size
        self.readahead = reader.cfg.readahead
        self._handles: dict[int, Handle] = {}
        # inode -> its readers, the most recent last (the native session's opens take no
        # message, so its READs come with no handle: `stream`)
        self._streams: OrderedDict[int, list[Handle]] = OrderedDict()
        # inode -> the file as it was when the kernel got its data (pushed or read; pyfuse3's
        # session): the kernel keeps those pages (keep_cache), not pushed again on open
        self._given: dict[int, FileRef] = {}
        self.closing = False
        self._storing: set[int] = set()  # threads inside _store
        self._next_fh = 1
        # hands a file's bytes to the kernel's page cache (FUSE notify_store; pyfuse3's)
        self.store_pages: Callable[[int, blocks.Data], None] = _pyfuse3_store
        self._mounted_at = time.time_ns()
        self.reads = 0
        self.reads_in_session = 0  # of them, answered by the session (`served_elsewhere`)
        self.read_errors = 0
        self.bytes_served = 0
        self.on_read: Callable[[float], None] | None = None  # seconds per served read
        # the blocks of an inode the FUSE session reads by itself (`NativeSession._plan`),
        # if any: not read ahead here, by any of its readers
        self.planned: Callable[[int], Container[int] | None] = lambda inode: None

    # --- metadata -------------------------------------------------------------------

    def stat(self, path: str) -> Attrs:
        """(ino, mode, nlink, size, blocks, mtime_ns, blksize, uid, gid) of `path`."""
        ref = self.tree.files.get(path)
        ino = self.tree.inode(path)
        if ref is None:
            return (ino, stat.S_IFDIR | 0o555, 2, 0, 0, self._mounted_at, PREFERRED_IO, 0, 0)
        return self._file_stat(ino, ref)

    def entry(self, path: str) -> Attrs:
        """`stat` of `path` for an entry given to the kernel (a LOOKUP's, a directory
        listing's): the kernel may hold the inode from now on (`Tree.hold`)."""
        attrs = self.stat(path)
        self.tree.hold(attrs[0])
        return attrs

    def _file_stat(self, ino: int, ref: FileRef) -> Attrs:
        ns = int(ref.mtime * 1e9) if ref.mtime else self._mounted_at
        blocks = (ref.size + 511) // 512
        return (ino, stat.S_IFREG | 0o444, 1, ref.size, blocks, ns, PREFERRED_IO, 0, 0)

    def inode_stat(self, inode: int) -> Attrs:
        """`stat` of what `inode` is: a listed path, or a file a listing dropped that the
        kernel still holds (an open file's fstat)."""
        path = self.tree.path(inode)
        if path is not None:
            return self.stat(path)
        ref = self.tree.gone.get(inode)
        if ref is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._file_stat(inode, ref)

    def _attrs(self, attrs: Attrs) -> pyfuse3.EntryAttributes:
        ino, mode, nlink, size, st_blocks, ns, blksize, uid, gid = attrs
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(ino)
        a.entry_timeout = self.ttl
        a.attr_timeout = self.ttl
        a.st_uid = uid
        a.st_gid = gid
        a.st_blksize = blksize
        a.st_mode = mode
        a.st_nlink = nlink
        a.st_size = size
        a.st_blocks = st_blocks
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
        return a

    # The requests' answers, decided without waiting (both FUSE sessions call these; the
    # pyfuse3 methods below wrap them)

    def lookup_path(self, parent_inode: int, name: bytes) -> str:
        text = os.fsdecode(name)
        if text == ".":
            path = self.tree.path(parent_inode)
        elif text == "..":
            base = self.tree.path(parent_inode)
            path = None if base is None else os.path.dirname(base)
        else:
            path = self.tree.lookup(parent_inode, text)
        if path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return path

    def inode_path(self, inode: int) -> str:
        path = self.tree.path(inode)
        if path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return path

    def opendir_now(self, inode: int) -> int:
        path = self.inode_path(inode)
        if not self.tree.is_dir(path):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    def entries(self, fh: int, start_id: int) -> Iterator[tuple[bytes, str, int]]:
        """(name, path, the offset of the entry after it) of a directory's entries from
        `start_id` on."""
        base = self.tree.path(fh)
        if base is None:
            return
        names = self.tree.children.get(base, [])
        for i in range(start_id, len(names)):
            path = f"{base}/{names[i]}" if base else names[i]
            yield os.fsencode(names[i]), path, i + 1

    def statfs_now(self) -> tuple[int, int, int, int, int, int, int, int]:
        """(blocks, bfree, bavail, files, ffree, bsize, namelen, frsize)."""
        files = len(self.tree.files) + len(self.tree.children)
        return (self.tree.total_bytes() // 4096 + 1, 0, 0, files, 0, 4096, 255, 4096)

    def release_now(self, fh: int) -> None:
        self._handles.pop(fh, None)

    def forget_now(self, inode_list: Iterable[tuple[int, int]]) -> None:
        # the kernel dropped these inodes, and their pages with them
        for inode, _ in inode_list:
            self._given.pop(inode, None)
            self._streams.pop(inode, None)
            self.tree.forget(inode)

    # --- metadata (pyfuse3) ---------------------------------------------------------

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        return self._attrs(self.entry(self.lookup_path(parent_inode, name)))

    async def getattr(self, inode: pyfuse3.InodeT, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attrs(self.inode_stat(inode))

    async def opendir(self, inode: pyfuse3.InodeT, ctx: Any) -> pyfuse3.FileHandleT:
        return pyfuse3.FileHandleT(self.opendir_now(inode))

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: Any) -> None:
        for name, path, after in self.entries(fh, start_id):
            if not pyfuse3.readdir_reply(token, name, self._attrs(self.entry(path)), after):
                return

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        blocks, _, _, files, _, bsize, namemax, frsize = self.statfs_now()
        s.f_bsize, s.f_frsize, s.f_blocks = bsize, frsize, blocks
        s.f_bfree = s.f_bavail = 0
        s.f_files = files
        s.f_ffree = s.f_favail = 0
        s.f_namemax = namemax
        return s

    # --- data -----------------------------------------------------------------------

    def open_now(self, inode: int, flags: int) -> tuple[int, FileRef | None]:
        """The new handle, and the file if it is to be pushed (`push`) before the answer.
        The file is immutable until a listing says otherwise: the answer keeps the
        kernel's pages (keep_cache). A file a listing dropped opens by its inode as it
        was (reopened through /proc/PID/fd: `Tree.gone`)."""
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        ref = self.tree.file(inode)
        if ref is None:
            self.inode_path(inode)  # ENOENT if it is nothing (any more)
            raise pyfuse3.FUSEError(errno.EISDIR)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = Handle(ref, inode)
        if self._pushable(ref) and self.reader.can_push() and self._given.get(inode) != ref:
            return fh, ref
        return fh, None

    def _pushable(self, ref: FileRef) -> bool:
        """Whether the file is small enough to be pushed at its OPEN (`push`)."""
        return 0 < ref.size <= min(PUSH_MAX, self.block_size)

    def handle(self, fh: int) -> Handle:
        """The open file behind handle `fh` (pyfuse3's session: every OPEN gets one)."""
        h = self._handles.get(fh)
        if h is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return h

    def stream(self, inode: int, off: int) -> Handle:
        """What a READ of `inode` at `off` reads, without a handle (the native session: the
        kernel opens files by itself, and the READs of a reader in another container name
        no process). The file as listed now: a changed file reads its new bytes (its old
        pages were dropped with the new listing); a file a listing dropped reads as it was
        (it was open: its name no longer opens, `Tree.gone`). A READ continues the reader
        whose last block lies next to it, so that several sequential readers of one file
        each keep their read-ahead; once the file is not known at all any more, only such
        a reader reads on (what it read), the others get ENOENT."""
        ref = self.tree.file(inode)
        streams = self._streams.get(inode)
        if streams is None:
            if ref is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            if ref.size <= self.block_size:
                return Handle(ref, inode)  # one block: nothing to follow, nothing kept
            streams = self._streams[inode] = []
            if len(self._streams) > STREAMED_FILES:
                self._streams.popitem(last=False)
        else:
            self._streams.move_to_end(inode)
        block = off // self.block_size
        h = None
        for i in range(len(streams) - 1, -1, -1):
            last = streams[i].last_block
            if last - 1 <= block <= last + 2:
                h = streams.pop(i)
                break
        if h is None or (ref is not None and h.ref != ref):
            if ref is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            h = Handle(ref, inode)
            if len(streams) >= STREAMS_PER_INODE:
                del streams[0]
        streams.append(h)
        return h

    async def open(self, inode: pyfuse3.InodeT, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        fh, push = self.open_now(inode, flags)
        if push is not None:
            await self.push(inode, push)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=True)

    async def push(self, inode: int, ref: FileRef) -> None:
        """Store a small file in the kernel's page cache before answering its OPEN (pyfuse3's
        session), if its block is at hand on this machine: one request (READ) fewer per
        file. Best effort: on any failure the kernel sends the READ as it would have."""
        if await self._hand(ref, functools.partial(self._store, inode)):
            self._given[inode] = ref

    def givable(self, h: Handle, off: int, size: int) -> bool:
        """Whether a READ asks for the whole of a small file whose block may lie in a
        worker's block file on this node (the native session's opens take no message, so
        this READ is where pyfuse3's session would have pushed it): `give` it."""
        return off == 0 and size >= h.ref.size and self._pushable(h.ref) and self.reader.can_push()

    async def give(self, h: Handle, write: Callable[[blocks.Data], None]) -> bool:
        """Hand `write` the whole file `h` reads straight from its worker's block file on
        this node, as `push` does (blocking: called in the thread that read the file, or
        here for a file in the page cache; the data valid only during the call), keeping
        nothing in the sidecar's memory. False if the block is not there: nothing was
        written, read it the usual way."""
        if not await self._hand(h.ref, write):
            return False
        self.bytes_served += h.ref.size
        return True

    async def _hand(self, ref: FileRef, then: Callable[[blocks.Data], None]) -> bool:
        try:
            async with asyncio.timeout(self.read_timeout):
                return await self.reader.push(ref, then)
        except Exception as err:
            log.debug("handing %s on from its block file failed: %s", ref.key, err)
            return False

    def _store(self, inode: int, data: blocks.Data) -> None:
        """A whole file into the kernel's page cache for `inode`. Blocking (a write to
        /dev/fuse, the GIL let go): the thread that read the block calls it. Both sessions
        take any contiguous buffer, so a mapped block goes without a copy. Refused once
        `quiesce` began: the session it writes to is about to be freed."""
        me = threading.get_ident()
        self._storing.add(me)  # before looking at `closing`: see quiesce
        try:
            if self.closing:
                raise OSError(errno.ESHUTDOWN, "unmounting")
            self.store_pages(inode, data)
        finally:
            self._storing.discard(me)

    async def quiesce(self, within: float = 5.0) -> None:
        """Hand the kernel nothing more, and wait (up to `within` seconds) for the threads
        doing it now: closing the session frees what they write to, and a push whose
        opener gave up (timeout, cancelled) may still be under way in its thread. A thread
        either sees `closing` or is already in `_storing` when this looks."""
        self.closing = True
        deadline = time.monotonic() + within
        # polled: the threads would need the loop (call_soon_threadsafe) to set an Event
        while self._storing and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    def read_held(self, h: Handle, off: int, size: int) -> Any:
        """The answer to a READ if its bytes are at hand (the common warm case: not timed,
        timing every read cost 6% of a core on warm reads), else None: `read_fetched`
        then gets them. Either way the READ is counted and followed here."""
        ref = h.ref
        idx = blocks.blocks_for(off, size, ref.size, self.block_size)
        self.reads += 1
        if not idx:
            return b""
        self._follow(h, idx, off, size)
        if len(idx) == 1:
            lo = off - idx[0] * self.block_size
            held = self.reader.peek(ref, idx[0])
            if held is not None:
                self.bytes_served += min(size, len(held) - lo)
                return memoryview(held)[lo : lo + size]
        # (not held: what was asked for ahead of it may have failed, or been let go of
        # before it was read; the next READ asks for the blocks after it again)
        h.ahead = min(h.ahead, idx[-1] + 1)
        return None

    def follow(self, h: Handle, off: int, size: int) -> None:
        """Follow a READ the session answered by itself (from a block held there): its
        reader is tracked, and read ahead of, as `read_held` does (its count comes with
        `served_elsewhere`)."""
        idx = blocks.blocks_for(off, size, h.ref.size, self.block_size)
        if idx:
            self._follow(h, idx, off, size)

    def plan(self, h: Handle, first: int, count: int) -> list[tuple[str, str, list[str]] | None]:
        """`BlockReader.plan` for up to `count` blocks of the file `h` reads from block
        `first` on, if `h` reads the file as listed now (else nothing)."""
        if self.tree.file(h.inode) != h.ref:
            return []
        end = min(first + count, blocks.block_count(h.ref.size, self.block_size))
        return self.reader.plan(h.ref, range(first, end))

    def passed(self, inode: int, index: int, within: int) -> None:
        """A reader of `inode` went on into its block `index` without a READ here (the
        session answered it from a block it mapped itself, after those it was handed from
        here): the reader whose last block lies nearest before it, up to `within` blocks,
        moves on, so that the READ that comes here after those finds it (`stream`) still
        sequential, its read-ahead going."""
        behind = [h for h in self._streams.get(inode) or () if 0 <= index - h.last_block <= within]
        if behind:
            max(behind, key=lambda h: h.last_block).last_block = index

    def served_elsewhere(self, reads: int, nbytes: int) -> None:
        """Count READs, of `nbytes` in all, that the session answered by itself from
        blocks held there (given it by `held_block`: local hits, and the store's)."""
        self.reads += reads
        self.reads_in_session += reads
        self.bytes_served += nbytes
        self.reader.stats.local_hits += reads
        self.reader.store.count_hits(reads)

    def held_block(self, h: Handle, index: int) -> Any:
        """Block `index` of the file `h` reads if the sidecar holds it now in memory (its
        own, or mapped from a worker's file) and `h` reads the file as listed now, else
        None. Not counted as a read: `served_elsewhere` counts the READs it answers."""
        if self.tree.file(h.inode) != h.ref:
            return None  # (changed or gone since: its old blocks must not be held again)
        return self.reader.store.peek(self.reader.key(h.ref, index), count=False)

    def when_fetched(self, h: Handle, index: int, then: Callable[[], object]) -> bool:
        """`BlockReader.when_fetched` for block `index` of the file `h` reads, if `h` reads
        the file as listed now (else False)."""
        if self.tree.file(h.inode) != h.ref:
            return False
        return self.reader.when_fetched(h.ref, index, then)

    async def read_fetched(self, h: Handle, off: int, size: int, *, again: bool = False) -> Any:
        """The answer to a READ whose bytes were not at hand. `again`: its earlier answer
        failed its check as it was sent (counted then: its bytes are not counted twice,
        `bytes_served` only grows, as the counter it feeds must)."""
        idx = blocks.blocks_for(off, size, h.ref.size, self.block_size)
        lo = off - idx[0] * self.block_size
        started = time.perf_counter()
        data = await self._fetch(h, idx, lo, size)
        if not again:
            self.bytes_served += len(data)
        if self.on_read is not None:
            self.on_read(time.perf_counter() - started)
        return data

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> Any:
        """pyfuse3's READ: its answer checked whole here (it cannot be checked as it is
        sent, as the native session's is)."""
        h = self.handle(fh)
        self._given[h.inode] = h.ref  # (the kernel keeps the pages: not pushed again)
        data = self.read_held(h, off, size)
        if data is None:
            data = await self.read_fetched(h, off, size)
        for _ in range(2):
            try:
                blockfile.check_whole(data)
                return data
            except CorruptBlock:
                await self.distrust(h, off)
                data = await self.read_fetched(h, off, size, again=True)
        raise pyfuse3.FUSEError(errno.EIO)  # (read checked whole twice: not from its files)

    async def distrust(self, h: Handle, off: int) -> None:
        """The block that a READ at `off` lies in failed its check as it was answered from
        a worker's file: let go of it, and take it checked whole when it is next read."""
        await self.reader.distrust(h.ref, off // self.block_size)

    def _follow(self, h: Handle, idx: range, off: int = -1, size: int = 0) -> None:
        """Track sequential readers and fetch ahead of them.

        The kernel's read-ahead sends several requests at once, slightly out of order:
        reads that stay within a couple of blocks of the last one count as sequential; a
        small one (`SMALL_READ`, of `size` bytes at `off`) starts a streak only where the
        last one ended."""
        first, last = idx[0], idx[-1]
        if 0 < size < SMALL_READ and first and not h.streak:
            near = abs(off - h.end) <= SMALL_NEAR  # (a reader's start: its READs after it)
        else:
            near = h.last_block - 1 <= first <= h.last_block + 2
        if first == 0 or near:
            h.streak += 1
            if first == 0 and h.last_block > 1:  # back to the start (a handle of
                h.last_block, h.ahead = 0, 0  # pyfuse3's): the blocks ahead asked for again
        else:
            h.streak = h.ahead = 0
        h.last_block = max(h.last_block, last) if h.streak else last
        if size:
            h.end = max(h.end, off + size) if h.streak else off + size
        if h.streak and self.readahead:
            # (only blocks not asked for ahead of this reader before: each block's READs,
            # four for a block of 4 MiB, would look up the same ones again)
            end = min(last + 1 + self.readahead, blocks.block_count(h.ref.size, self.block_size))
            start = max(last + 1, h.ahead)
            if start < end:
                ahead: Iterable[int] = range(start, end)
                if (planned := self.planned(h.inode)) is not None:
                    ahead = [i for i in ahead if i not in planned]  # (the rest the session's)
                self.reader.prefetch(h.ref, ahead)
                h.ahead = end

    async def _fetch(self, h: Handle, idx: range, lo: int, size: int) -> Any:
        ref, first = h.ref, idx[0]
        try:
            async with asyncio.timeout(self.read_timeout):
                if len(idx) == 1 and not h.streak and not self.reader.cached(ref, first):
                    # a random read: just its bytes, not the whole block
                    return await self.reader.read_span(ref, first, lo, size)
                if len(idx) == 1:
                    parts = [await self.reader.block(ref, first)]
                else:
                    parts = list(await asyncio.gather(*(self.reader.block(ref, i) for i in idx)))
                    # (copied into one answer below: the bytes of each checked first, by
                    # the pieces they cover, as the session checks an answer it sends; a
                    # block mapped unchecked stays so, and warm, for the plan of its next)
                    spans = blocks.spans(lo, size, [len(p) for p in parts])
                    checked = self.reader.checked
                    parts = [
                        await checked(ref, i, p, span)
                        for i, p, span in zip(idx, parts, spans, strict=True)
                    ]
        except Exception as err:
            self.read_errors += 1
            off = first * self.block_size + lo
            log.warning("read %s [%d+%d] failed: %s", ref.key, off, size, err)
            raise pyfuse3.FUSEError(errno.EIO) from None
        if len(parts) == 1:
            return memoryview(parts[0])[lo : lo + size]
        return b"".join(parts)  # (across blocks: only the bytes asked for, `spans`)

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        """Nothing to write back. ENOSYS makes the kernel stop sending FLUSH for this
        mount (fuse_flush sets no_flush): one round trip through Python fewer on every
        close(), a fifth of a small file's requests (figures: README)."""
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        self.release_now(fh)

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    async def forget(self, inode_list: Any) -> None:
        self.forget_now(inode_list)

    # --- a read-only filesystem -----------------------------------------------------

    setattr = _erofs  # type: ignore[assignment]
    mknod = _erofs  # type: ignore[assignment]
    mkdir = _erofs  # type: ignore[assignment]
    unlink = _erofs  # type: ignore[assignment]
    rmdir = _erofs  # type: ignore[assignment]
    symlink = _erofs  # type: ignore[assignment]
    rename = _erofs  # type: ignore[assignment]
    link = _erofs  # type: ignore[assignment]
    write = _erofs  # type: ignore[assignment]
    create = _erofs  # type: ignore[assignment]
    setxattr = _erofs  # type: ignore[assignment]
    removexattr = _erofs  # type: ignore[assignment]
