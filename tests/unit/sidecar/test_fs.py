"""The FUSE filesystem's pieces that need no mount (the mounted behaviour is tested through
/dev/fuse in tests/integration/test_datapath.py)."""

from __future__ import annotations

import asyncio
import errno
import threading

import pytest

from fluidfed.data.layout import SidecarConfig
from fluidfed.data.store import BlockStore
from fluidfed.models import Mount
from sidecar.fs import DatasetFS
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
