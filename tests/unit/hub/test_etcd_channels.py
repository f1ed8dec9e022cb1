"""The etcd store's channels across a reload of its TLS files: one made with files since
replaced closes once no call uses it (the watch of etcd included), and one made for a
probe that did not get through is closed too, cancelled or refused. (No etcd here: a
socket that accepts and never answers, and stand-ins that count closes; the reload
against a real etcd is in tests/integration/test_hub_etcd.py.)"""

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import grpc

from fluidfed import pki
from hub import etcd


class _Channel:
    """What the store asks of a channel it retires: close."""

    def __init__(self) -> None:
        self.closed = 0

    async def close(self, grace: float | None = None) -> None:
        self.closed += 1


async def test_a_retired_channel_closes_with_its_last_call_not_before() -> None:
    store = etcd.EtcdStore(etcd.EtcdSettings(endpoints=("127.0.0.1:1",)))
    busy: Any = _Channel()
    idle: Any = _Channel()
    store._use(busy)  # (a watch and a call on it)
    store._use(busy)
    store._retire(busy)
    store._retire(idle)
    await asyncio.sleep(0)
    assert (busy.closed, idle.closed) == (0, 1)
    store._unuse(busy)
    await asyncio.sleep(0)
    assert busy.closed == 0
    store._unuse(busy)
    await asyncio.sleep(0)
    assert busy.closed == 1
    await store.close()
    assert (busy.closed, idle.closed) == (1, 1)


async def test_a_probe_cancelled_or_refused_leaves_no_channel_open(tmp_path: Path) -> None:
    ca = pki.new_ca("etcd CA")
    ca_file = pki.write(tmp_path / "ca.crt", ca.cert_pem)
    silent = socket.socket()  # accepts (the kernel's backlog), never answers a handshake
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    store = etcd.EtcdStore(
        etcd.EtcdSettings(
            endpoints=(f"127.0.0.1:{silent.getsockname()[1]}",),
            ca_file=str(ca_file),
            timeout=30.0,
        )
    )
    opened: list[grpc.aio.Channel] = []
    closed: list[grpc.aio.Channel] = []
    real_open = store._open

    def recording(at: int, creds: Any) -> grpc.aio.Channel:
        channel = real_open(at, creds)
        real_close = channel.close

        async def close(grace: float | None = None) -> None:
            closed.append(channel)
            await real_close(grace)

        channel.close = close
        opened.append(channel)
        return channel

    store._open = recording  # type: ignore[method-assign]
    try:
        other = pki.new_ca("another CA")  # the CA rotated in the hub's files
        part = tmp_path / ".ca.crt.new"
        part.write_bytes(other.cert_pem)
        os.replace(part, ca_file)
        before = store._creds
        looking = asyncio.create_task(store.reload_tls())
        while not opened:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # (its handshake under way, unanswered)
        looking.cancel()
        await asyncio.gather(looking, return_exceptions=True)
        await asyncio.gather(*store._closing)
        assert store._creds is before and not store._users and closed == opened
    finally:
        await store.close()
        silent.close()
