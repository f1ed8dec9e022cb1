"""The FUSE filesystem's pieces that need no mount (the mounted behaviour is tested through
/dev/fuse in tests/integration/test_datapath.py)."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import threading
from collections.abc import Callable

import pyfuse3
import pytest

from fluidfed.data.layout import FileRef, SidecarConfig
from fluidfed.data.store import BlockStore
from fluidfed.models import Mount
from sidecar import fs as fs_module
from sidecar import fusesession
from sidecar.fs import STREAMS_PER_INODE, DatasetFS
from sidecar.reader import BlockReader
from sidecar.tree import Tree


async def _fs() -> DatasetFS:
    cfg = SidecarConfig(dataset="d", mounts=[Mount(uri="s3://b/p")])
    store = await BlockStore(cfg.cache).open()
    return DatasetFS(Tree(), BlockReader(cfg, [], store, None), ttl=1.0, read_timeout=1.0)


async def test_unmounting_waits_for_a_store_under_way_and_refuses_new_ones() -> None:
    fs = await _fs()
    # a thread inside a store (as a push's thread is while pyfuse3 writes to /dev/fuse)
    fs._storing.add(threading.get_ident() + 1)
    quiet = asyncio.create_task(fs.quiesce(within=5.0))
    await asyncio.sleep(0.05)
    assert fs.closing and not quiet.done()  # the session must outlive that write
    fs._storing.clear()
    await asyncio.wait_for(quiet, 1.0)
    # afterwards nothing reaches pyfuse3 (its session is about to be freed)
    with pytest.raises(OSError, match="unmounting") as err:
        await asyncio.to_thread(fs._store, 2, b"data")
    assert err.value.errno == errno.ESHUTDOWN
    assert not fs._storing


def _file(version: str, size: int = 100 * 2**20, key: str = "f") -> FileRef:
    return FileRef(mount=0, key=key, size=size, version=version)


async def test_reads_without_a_handle_follow_the_listing_and_each_reader_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The native session's READs name an inode and an offset, no handle (nor a process:
    a reader in another container is pid 0 to the sidecar): `DatasetFS.stream`."""
    fs = await _fs()
    bs = fs.block_size
    small = _file("1", size=100, key="s")
    fs.tree.update({"f": _file("1"), "s": small})
    ino, sino = fs.entry("f")[0], fs.entry("s")[0]  # (looked up: the kernel holds them)
    # two readers of one file, far apart: each its own, each continued where it left off
    a = fs.stream(ino, 0)
    a.last_block = 0
    b = fs.stream(ino, 10 * bs)
    b.last_block = 10
    assert a is not b and a.ref == b.ref == _file("1")
    assert fs.stream(ino, 1 * bs) is a
    assert fs.stream(ino, 11 * bs + 5) is b
    # a file of one block has nothing to read ahead: nothing is kept for it
    assert fs.stream(sino, 0).ref == small and sino not in fs._streams
    # a new listing changed the file: its readers read the new one, from a new streak
    a.streak = 3
    fs.tree.update({"f": _file("2"), "s": small})
    again = fs.stream(ino, 1 * bs)
    assert again.ref == _file("2") and again.streak == 0
    again.last_block = 1
    # dropped by a listing: it was open (the kernel still holds the inode), so it reads as
    # it was, for the reader reading on and for one that opened it and reads only now
    # (an open file outlives its unlinking), and its fstat answers
    fs.tree.update({"s": small})
    assert fs.stream(ino, 2 * bs).ref == _file("2")
    assert fs.stream(ino, 50 * bs).ref == _file("2")
    assert fs.inode_stat(ino)[3] == _file("2").size
    with pytest.raises(pyfuse3.FUSEError) as err:
        fs.stream(sino + 100, 0)  # an inode never given
    assert err.value.errno == errno.ENOENT
    # pyfuse3's session: reopened by its inode (/proc/PID/fd), it opens as it was too
    fh, _ = fs.open_now(ino, os.O_RDONLY)
    assert fs.handle(fh).ref == _file("2")
    fs.release_now(fh)
    # the kernel forgot the inode: nothing is kept for it, nothing reads it
    fs.forget_now([(ino, 1)])
    assert ino not in fs._streams and ino not in fs.tree.gone
    for ask in (
        lambda: fs.stream(ino, 0),
        lambda: fs.inode_stat(ino),
        lambda: fs.open_now(ino, os.O_RDONLY),
    ):
        with pytest.raises(pyfuse3.FUSEError) as err:
            ask()
        assert err.value.errno == errno.ENOENT
    # many readers of one file: the one unseen longest is let go of
    fs.tree.update({"f": _file("3"), "g": _file("1", key="g"), "h": _file("1", key="h")})
    g = fs.tree.inode("g")
    first = fs.stream(g, 0)
    first.last_block = 0
    for i in range(1, STREAMS_PER_INODE + 1):
        fs.stream(g, 4 * i * bs).last_block = 4 * i
    assert len(fs._streams[g]) == STREAMS_PER_INODE
    assert fs.stream(g, 1 * bs) is not first
    # many files: the one unseen longest is let go of
    monkeypatch.setattr(fs_module, "STREAMED_FILES", 2)
    fs.stream(fs.tree.inode("f"), 0)
    fs.stream(fs.tree.inode("h"), 0)
    assert list(fs._streams) == [fs.tree.inode("f"), fs.tree.inode("h")]


async def test_a_handle_of_pyfuse3s_session_must_exist() -> None:
    fs = await _fs()
    with pytest.raises(pyfuse3.FUSEError) as err:
        fs.handle(7)
    assert err.value.errno == errno.EBADF


@pytest.mark.parametrize(
    ("release", "safe"),
    [
        ("6.19.0", True),
        ("7.1.3-arch1-1", True),
        ("6.18.44-fc-v1272", True),
        ("6.18.10", True),
        ("6.18.9", False),  # before the read-ahead deadlock's fix reached 6.18's series
        ("6.18", False),
        ("6.12.80-generic", False),  # other series: unknown here, the session answers
        ("5.15.0-91-generic", False),
    ],
)
def test_the_kernel_opens_files_itself_only_where_that_cannot_deadlock(
    release: str, safe: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fusesession.kernel_opens_safe(release) is safe
    monkeypatch.setattr("platform.release", lambda: release)
    monkeypatch.delenv("FLUIDFED_FUSE_OPENS", raising=False)
    assert fusesession.kernel_opens() is safe
    monkeypatch.setenv("FLUIDFED_FUSE_OPENS", "kernel")
    assert fusesession.kernel_opens()
    monkeypatch.setenv("FLUIDFED_FUSE_OPENS", "session")
    assert not fusesession.kernel_opens()
    monkeypatch.setenv("FLUIDFED_FUSE_OPENS", "sometimes")
    with pytest.raises(ValueError, match="auto, kernel, session"):
        fusesession.kernel_opens()


def test_a_files_plans_keep_as_the_session_keeps_them() -> None:
    """Python's record of a file's plans (`_FilePlans`) follows the session's rules: a
    plan replaces those it plans a block of and its reader's plan before, the others
    stand, and past the most the one made first goes; a new plan has room up to the next
    plan's start; a block is the session's while a plan has a path for it."""

    def planned(first: int, n: int, gap: int = -1) -> fusesession._Planned:
        blocks = [None if i == gap else ("w", f"k{i}", 1) for i in range(first, first + n)]
        return fusesession._Planned(first, 1000, blocks, 0)

    def firsts() -> list[int]:
        return [p.first for p in ps.plans]

    ps = fusesession._FilePlans(4)
    ps.add(planned(0, 4, gap=2))
    ps.add(planned(10, 4))
    assert firsts() == [0, 10]
    assert 1 in ps and 2 not in ps and 4 not in ps and 13 in ps and "13" not in ps
    assert ps.at(2) is ps.plans[0] and ps.at(4) is None
    assert ps.room(4, 64) == 6 and ps.room(14, 64) == 64 and ps.room(4, 3) == 3
    # a reader that reaches another's plan rides it, at a block it plans or one it leaves
    # to Python (at hand there): a plan made from there would replace it
    assert ps.ridden(2, planned=10) is ps.plans[0] and ps.ridden(3, planned=10) is ps.plans[0]
    assert ps.ridden(2, planned=0) is None  # (its own plan)
    assert ps.ridden(4, planned=10) is None  # (none covers block 4)
    ps.add(planned(5, 5), replaces=0)  # (its reader's next plan)
    assert firsts() == [10, 5]
    ps.add(planned(15, 2), replaces=99)  # (its reader's plan before gone meanwhile)
    ps.add(planned(17, 2), replaces=15)
    assert firsts() == [10, 5, 17]
    ps.add(planned(20, 2))
    assert firsts() == [10, 5, 17, 20]
    ps.add(planned(30, 2))  # (past 4: the one made first goes)
    assert firsts() == [5, 17, 20, 30]
    ps.add(planned(40, 2))
    ps.add(planned(3, 30))  # (starts before the ones from 5 to 30 and plans blocks of each)
    assert firsts() == [40, 3]
    assert ps.drop(4) and firsts() == [40] and not ps.drop(4)


async def _asking(
    monkeypatch: pytest.MonkeyPatch, blocks: int
) -> tuple[DatasetFS, int, list[int], Callable[[int], None]]:
    """A DatasetFS with one file of `blocks` blocks, its reader's read-ahead recorded:
    (the fs, the file's inode, the blocks asked for ahead, a READ of 1 MiB at an offset
    followed as the kernel would send it)."""
    fs = await _fs()
    bs, mib = fs.block_size, 2**20
    asked: list[int] = []
    monkeypatch.setattr(fs.reader, "prefetch", lambda ref, indices: asked.extend(indices))
    fs.tree.update({"f": _file("1", size=blocks * bs)})
    ino = fs.entry("f")[0]

    def read(off: int) -> None:
        h = fs.stream(ino, off)
        fs._follow(h, range(off // bs, (off + mib - 1) // bs + 1))

    return fs, ino, asked, read


async def test_a_sequential_reader_asks_for_each_block_ahead_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kernel's READs of a sequential reader (1 MiB each, four to a 4 MiB block) ask
    for the `readahead` blocks after theirs, each once: not looked up again at every READ.
    A reader that goes back (a second epoch from the start) asks for them all again."""
    fs, ino, asked, read = await _asking(monkeypatch, 20)
    bs, ahead, mib = fs.block_size, fs.readahead, 2**20

    for off in range(0, 8 * bs, mib):  # the first 8 blocks, 1 MiB at a time
        read(off)
    wanted = list(asked)
    assert wanted == list(range(1, 8 + ahead))  # each block after the first, once
    # slightly out of order (the kernel's read-ahead): nothing new, nothing twice
    read(7 * bs - mib)
    assert asked == wanted
    # to the end: nothing past the file's last block
    for off in range(8 * bs, 20 * bs, mib):
        read(off)
    assert asked == list(range(1, 20))
    asked.clear()
    for off in range(0, 2 * bs, mib):  # a second epoch, from the start
        read(off)
    assert asked == list(range(1, 2 + ahead))

    # a READ whose block is not held (its read-ahead failed, or the block was let go of
    # before it was read): the blocks after it are asked for again (those held or on
    # their way are skipped by `prefetch` itself)
    asked.clear()
    h = fs.stream(ino, 2 * bs)
    assert fs.read_held(h, 2 * bs, mib) is None  # (nothing is held here; asks for 6)
    read(2 * bs + mib)
    assert asked == [2 + ahead, *range(3, 3 + ahead)]

    # a handle of pyfuse3's session (one per open) going back to the start: asked for
    # again once, not at each READ of the first block
    asked.clear()
    opened = fs_module.Handle(_file("1", size=20 * bs), ino)
    for i in [*range(10), 0, 0, 0]:
        fs._follow(opened, range(i, i + 1))
    assert asked == [*range(1, 10 + ahead), *range(1, 1 + ahead)]


async def test_small_reads_at_random_ask_for_nothing_ahead_small_reads_in_sequence_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A random reader's READs are its own sizes, anywhere in the file: matched by block to
    one of the file's many followed readers, nearly each was taken for a sequential
    reader's, and the blocks after it read ahead. A small READ (under `SMALL_READ`) now
    starts a reader's streak only where that reader's last READ ended; the kernel's READs
    of a sequential reader come so (growing from a few KiB, a pair sometimes out of order).
    A reader in its streak is followed by block as before (the session answers some of
    its READs by itself), and so are READs of 1 MiB (the tests above)."""
    fs, ino, asked, _ = await _asking(monkeypatch, 200)
    bs, ahead = fs.block_size, fs.readahead
    rng = random.Random(3)

    def small(off: int, size: int) -> None:
        h = fs.stream(ino, off)
        fs.read_held(h, off, size)

    for _ in range(2000):  # 4 KiB and 128 KiB at random past the first block
        small(rng.randrange(bs, 200 * bs - 2**17), rng.choice((4096, 2**17)))
    assert len(fs._streams[ino]) == STREAMS_PER_INODE  # (every reader in use)
    # (a READ now and then still lands where a reader left off, and that reader is then
    # followed by block: 465 blocks asked for here, where every READ matched by block
    # asked for 4,347)
    assert len(asked) < 600, len(asked)
    asked.clear()
    # a small reader in sequence from mid-file, its READs growing, two out of order
    at, reads = 50 * bs + 12345, []
    for size in (4096, 8192, 16384, 32768, 65536, 131072, 131072):
        reads.append((at, size))
        at += size
    reads[3], reads[4] = reads[4], reads[3]
    for off, size in reads:
        small(off, size)
    # (each READ asks again: nothing here is ever held; `prefetch` skips what is on its way)
    assert sorted(set(asked)) == list(range(51, 51 + ahead)), asked


async def test_no_reader_asks_ahead_for_the_blocks_the_session_reads_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The blocks of a file the FUSE session was handed (`DatasetFS.planned`) are read
    there: no reader of that file asks for them ahead here, not one whose READ missed (its
    read-ahead lowered) nor another reader of the same file; the blocks around them, and
    those among them the plan leaves to the sidecar (block 6 here), are asked for as
    usual."""
    fs, ino, asked, read = await _asking(monkeypatch, 40)
    bs, ahead, mib = fs.block_size, fs.readahead, 2**20
    planned = set(range(3, 10)) - {6}
    fs.planned = lambda inode: planned if inode == ino else None

    for off in range(0, 3 * bs, mib):  # up to the planned blocks: only those before them
        read(off)
    assert asked == [1, 2, 6]
    asked.clear()
    h = fs.stream(ino, 3 * bs)
    fs.read_held(h, 3 * bs, mib)  # (a planned block's READ came here: nothing held)
    read(3 * bs + mib)
    assert asked == [6]  # (again after the miss: `prefetch` skips it if on its way)
    asked.clear()
    # another reader of the file, further on, then into the planned blocks
    read(20 * bs)
    read(20 * bs + mib)
    assert asked == list(range(21, 21 + ahead))
    asked.clear()
    read(8 * bs)  # (a third reader, in the plan)
    read(8 * bs + mib)
    assert asked == list(range(10, 9 + ahead))
    assert len(fs._streams[ino]) == 3
    # the plan let go of (a block the session could not read): the first reader's next
    # READ, a miss, has it read ahead here again
    fs.planned = lambda inode: None
    h = fs.stream(ino, 4 * bs)
    fs.read_held(h, 4 * bs, mib)
    asked.clear()
    read(4 * bs + mib)
    assert asked == list(range(5, 5 + ahead))


async def test_a_block_is_handed_to_the_session_only_for_the_file_as_listed_now() -> None:
    """`held_block`: what the native session may answer READs from by itself. A reader's
    READ still under way when a new listing changed its file must not hand the session the
    old version's block (the session lets go of the file's blocks when the listing applies;
    one held after that would answer the new file's READs with the old bytes). Neither
    counted as a hit: the READs the session answers from it are (`served_elsewhere`)."""
    fs = await _fs()
    old = _file("1")
    fs.tree.update({"f": old})
    ino = fs.entry("f")[0]
    h = fs.stream(ino, 0)
    block = bytes(range(256)) * 16
    await fs.reader.store.put(fs.reader.key(old, 0), block)
    hits = fs.reader.store.stats.hits
    assert fs.held_block(h, 0) == block
    assert fs.held_block(h, 1) is None  # (not held here)
    assert fs.reader.store.stats.hits == hits
    fs.served_elsewhere(3, 3 * 4096)
    assert fs.reader.store.stats.hits == hits + 3
    assert (fs.reads, fs.reads_in_session, fs.bytes_served) == (3, 3, 3 * 4096)
    fs.tree.update({"f": _file("2")})  # changed: `h` still reads the old version
    assert fs.held_block(h, 0) is None
    fs.tree.update({})  # gone
    assert fs.held_block(h, 0) is None
