"""Watches at their edges, on a real hub and on both catalog stores: a revision the
catalog never reached (a restored copy) is an error the agent understands, and SIGTERM
ends every stream at once."""

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit import testing
from devkit.testing import HubProcess, eventually
from fluidfed import Client, Gone
from fluidfed.errors import RevisionAhead
from fluidfed.models import Dataset, KubeAccess, Mount

pytestmark = pytest.mark.integration


@pytest.fixture
def hub(tmp_path: Path, store_flags: list[str]) -> Iterator[HubProcess]:
    with HubProcess(tmp_path / "hub", extra=store_flags) as proc:
        yield proc


async def test_a_watch_from_a_revision_ahead_of_the_catalog_is_gone(hub: HubProcess) -> None:
    async with Client(hub.url, hub.admin_token) as admin:
        await admin.register_cluster(
            testing.cluster("edge", kind="edge", kubernetes=KubeAccess(in_cluster=True))
        )
        listed = await admin.list_bindings("edge")
        with pytest.raises(Gone, match="ahead of the catalog") as info:
            async for _ in admin.watch_bindings("edge", revision=listed.revision + 100):
                pass
        assert not isinstance(info.value, RevisionAhead)  # the wire says 410: the SDK's Gone


async def test_sigterm_with_agents_watching_exits_within_seconds(
    tmp_path: Path, store_flags: list[str]
) -> None:
    hub = HubProcess(tmp_path / "hub", extra=store_flags).start()
    try:
        async with Client(hub.url, hub.admin_token) as admin:
            for i in range(20):
                await admin.register_cluster(
                    testing.cluster(f"c{i}", kind="edge", kubernetes=KubeAccess(in_cluster=True))
                )
            await admin.apply_dataset(Dataset(name="d", mounts=[Mount(uri="s3://b/p")]))

        ended: list[str] = []
        streaming: set[str] = set()

        async def watch(name: str) -> None:
            async with Client(hub.url, hub.admin_token) as c:
                async for _ in c.watch_bindings(name, revision=0):
                    streaming.add(name)  # (its binding's ADDED, replayed from revision 0)
                ended.append(name)

        watchers = [asyncio.create_task(watch(f"c{i}")) for i in range(20)]
        # every watch streaming before the signal (a fixed sleep stood in for it: a watch
        # not yet connected then was refused, not ended)
        await eventually(lambda: len(streaming) == 20, "20 watches streaming", timeout=30)
        assert hub.proc is not None
        t0 = time.monotonic()
        hub.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(hub.proc.wait, 30)
        took = time.monotonic() - t0
        assert code == 0
        assert took < 8, f"the hub took {took:.1f}s to stop with 20 watches open"
        await asyncio.wait_for(asyncio.gather(*watchers, return_exceptions=True), 10)
        assert len(ended) == 20  # each stream ended cleanly: agents reconnect
    finally:
        hub.stop()
