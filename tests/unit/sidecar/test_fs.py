"""The FUSE filesystem's pieces that need no mount (the mounted behaviour is tested through
/dev/fuse in tests/integration/test_datapath.py)."""

from __future__ import annotations

import asyncio
import errno
import threading

import pyfuse3
import pytest

from fluidfed.data.layout import FileRef, SidecarConfig
from fluidfed.data.store import BlockStore
from fluidfed.models import Mount
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


def _file(version: str, size: int = 10 * 2**20) -> FileRef:
    return FileRef(mount=0, key="f", size=size, version=version)


async def test_reads_without_a_handle_follow_the_listing_and_each_thread_apart() -> None:
    """The native session's READs name an inode and the reading thread, no handle
    (`DatasetFS.stream`)."""
    fs = await _fs()
    fs.tree.update({"f": _file("1"), "g": _file("1")})
    ino = fs.tree.inode("f")
    one, two = fs.stream(ino, 100), fs.stream(ino, 200)
    assert one is not two and one.ref == two.ref == _file("1")
    assert fs.stream(ino, 100) is one  # a thread's reads are followed where it left off
    one.streak = 3
    # a new listing changed the file: the next read of every thread reads the new one
    fs.tree.update({"f": _file("2"), "g": _file("1")})
    again = fs.stream(ino, 100)
    assert again.ref == _file("2") and again.streak == 0
    # gone from the listing: a thread that read it goes on reading what it read, a new
    # one gets ENOENT
    fs.tree.update({"g": _file("1")})
    assert fs.stream(ino, 100).ref == _file("2")
    with pytest.raises(pyfuse3.FUSEError) as err:
        fs.stream(ino, 300)
    assert err.value.errno == errno.ENOENT
    # the kernel forgot the inode: nothing is kept for it
    fs.forget_now([(ino, 1)])
    with pytest.raises(pyfuse3.FUSEError):
        fs.stream(ino, 100)
    # many threads: the ones not seen for longest are let go of, the others kept
    g = fs.tree.inode("g")
    first = fs.stream(g, 0)
    kept = fs.stream(g, 1)
    for pid in range(2, STREAMS_PER_INODE + 1):
        fs.stream(g, pid)
        fs.stream(g, 1)
    assert fs.stream(g, 1) is kept
    assert fs.stream(g, 0) is not first
    assert len(fs._streams[g]) == STREAMS_PER_INODE


async def test_a_handle_of_pyfuse3s_session_must_exist() -> None:
    fs = await _fs()
    with pytest.raises(pyfuse3.FUSEError) as err:
        fs.handle(7)
    assert err.value.errno == errno.EBADF
