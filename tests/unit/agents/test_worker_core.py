"""The cache worker's core without its server: blocks from a local directory into a memory
tier, and the status it reports to its agent as the agent reads it."""

from __future__ import annotations

import asyncio
import gc
import os
import time
import warnings
from pathlib import Path

import pytest

from agents.registry import Registry
from agents.worker.core import Budget, Worker, remaining_peers
from fluidfed.data import blocks, credentials, protocol
from fluidfed.data.layout import FileRef, Peers, WorkerConfig
from fluidfed.models import CacheTier, Mount
from fluidfed.units import ByteSize

BLOCK = 1024


def test_a_leaving_worker_hands_over_to_lower_ordinals_only() -> None:
    peers = [f"http://w-{i}.svc:7070" for i in range(4)]
    assert remaining_peers(peers, peers[1]) == [peers[0]]
    assert remaining_peers(["http://a", "http://b"], "http://a") == ["http://b"]


KEY = b"w" * 32


@pytest.fixture
async def worker(tmp_path: Path) -> Worker:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f.bin").write_bytes(bytes(range(256)) * 10)  # 2.5 blocks
    cfg = WorkerConfig(
        dataset="train",
        mounts=[Mount(uri=f"file://{tmp_path / 'data'}")],
        block_size=BLOCK,
        tiers=[CacheTier(medium="MEM", quota=ByteSize(2**20))],
        workers=Peers(endpoints=["http://w:7070"]),
    )
    creds = tmp_path / "credentials.json"
    credentials.write_file(creds, credentials.CredentialFile(keys=[credentials.encode_key(KEY)]))
    return await Worker(
        cfg, url="http://w:7070/", cache_root=tmp_path / "cache", credentials_path=creds
    ).open()


async def test_a_block_is_read_once_then_served_from_the_cache(worker: Worker) -> None:
    ref = FileRef(mount=0, key="f.bin", size=2560)
    key = ref.block_key("train", BLOCK, 2)
    try:
        data, crc, hit, ahead, _ = await worker.block(key, ref, 2)
        assert (len(data), hit, ahead) == (512, False, 0)
        q = protocol.BlockQuery(mount=0, key="f.bin", size=2560, index=2)
        assert q.block_key("train", BLOCK) == key
        again, crc2, hit2, *_ = await worker.block(key, q, q.index)  # as the server passes it
        assert (bytes(again), crc2, hit2) == (bytes(data), crc, True)
        st = worker.status()
        assert (st.ufs.reads, st.ufs.bytes, st.hits, st.misses, st.used) == (1, 512, 1, 1, 512)
        assert st.url == "http://w:7070" and st.peers == ["http://w:7070"]
    finally:
        await worker.close()


async def test_what_the_worker_reports_is_what_the_agent_sums(worker: Worker) -> None:
    """Through the wire both ways: a field the worker fills under another name than the
    agent reads would fail here, not report 0."""
    ref = FileRef(mount=0, key="f.bin", size=2560)
    try:
        for i in range(3):
            await worker.block(ref.block_key("train", BLOCK, i), ref, i)
        await worker.block(ref.block_key("train", BLOCK, 0), ref, 0)
        reg = protocol.WorkerRegistration(dataset="train", url=worker.url, status=worker.status())
        got = protocol.decode(protocol.WorkerRegistration, protocol.encode(reg))
        registry = Registry()
        registry.report(got, now=0)
        snap = worker.store.snapshot()
        assert registry.cache("train", now=0) == (snap.used, snap.capacity, 1 / 4)
        assert snap.used == 2560 and snap.capacity == 2**20
    finally:
        await worker.close()


async def test_draining_to_nobody_moves_nothing(worker: Worker) -> None:
    try:
        assert await worker.drain([worker.url]) == protocol.DrainResult(moved=0, bytes=0, failed=0)
    finally:
        await worker.close()


async def test_a_rotation_is_taken_from_the_credentials_file(
    worker: Worker, tmp_path: Path
) -> None:
    new = b"n" * 32
    try:
        reader = credentials.Claims(role="reader", dataset="train")
        old_header = "Bearer " + credentials.sign(reader, KEY)
        assert worker.verifier.claims(old_header) == reader
        assert worker.session is not None
        peer_header = worker.session.headers["Authorization"]
        assert credentials.verify(credentials.bearer(peer_header), [KEY]).role == "peer"
        assert not worker.reload_credentials()  # unchanged: nothing to do
        # [new, old], the old one still signing: both verify, this worker signs with old
        path = worker.credentials.path
        held = credentials.CredentialFile(
            keys=[credentials.encode_key(new), credentials.encode_key(KEY)], sign=1
        )
        credentials.write_file(path, held)
        os.utime(path, (1e9, 1e9))
        assert worker.reload_credentials()
        assert worker.verifier.claims("Bearer " + credentials.sign(reader, new)) == reader
        assert worker.verifier.claims(old_header) == reader
        assert worker.session.headers["Authorization"] == peer_header
        # then the new one signs, and the old one goes
        credentials.write_file(path, credentials.CredentialFile(keys=[credentials.encode_key(new)]))
        os.utime(path, (2e9, 2e9))
        assert worker.reload_credentials()
        with pytest.raises(credentials.Refused):
            worker.verifier.claims(old_header)
        now = credentials.bearer(worker.session.headers["Authorization"])
        assert credentials.verify(now, [new]).role == "peer"
    finally:
        await worker.close()


async def test_the_fetch_budget_counts_blocks_and_never_waits_for_more_than_it_has() -> None:
    budget = Budget(4)
    held: list[int] = []
    most = 0

    async def run(n: int) -> None:
        nonlocal most
        blocks = min(n, budget.total)  # (more than it has: all of it)
        got = await budget.acquire(n)
        assert got == blocks
        held.append(blocks)
        most = max(most, sum(held))
        await asyncio.sleep(0.01)
        held.remove(blocks)
        budget.release(got)

    # runs of four, singles, and more than the budget (taken as all of it): none waits for
    # ever, and never more than four blocks at once
    await asyncio.wait_for(asyncio.gather(*(run(n) for n in (4, 1, 1, 3, 9, 2, 2))), 5)
    assert most == 4
    assert budget.free == 4
    # what was taken is given back later, by someone else (a run's blocks once stored); a
    # caller cancelled while waiting takes nothing
    taken = await budget.acquire(3)
    waiting = asyncio.create_task(budget.acquire(2))
    cancelled = asyncio.create_task(budget.acquire(1))
    await asyncio.sleep(0)
    assert not waiting.done() and budget.free == 1
    cancelled.cancel()
    budget.release(taken)
    assert await asyncio.wait_for(waiting, 5) == 2
    assert budget.free == 2


async def test_a_run_sent_in_one_answer_takes_the_blocks_held_up_to_the_first_not(
    worker: Worker,
) -> None:
    """`held_after`: of the blocks after one, those the worker holds, up to the
    first it does not, within the file; each counted a hit, or a miss where it was read for
    this reader (`fresh`)."""
    ref = FileRef(mount=0, key="f.bin", size=2560)  # blocks 0, 1 and 2 (half)
    keys = [ref.block_key("train", BLOCK, i) for i in range(3)]
    try:
        await worker.block(keys[0], ref, 0)
        await worker.block(keys[2], ref, 2)
        assert await worker.held_after(ref, 0, 3) == []  # block 1 not held: nothing after it
        await worker.block(keys[1], ref, 1)
        before = worker.status()
        worker._ahead[keys[2]] = time.monotonic()  # (read for this reader with block 1)
        got = await worker.held_after(ref, 0, 5)  # (a run past the file's end: to its end)
        assert [(bytes(d), p) for d, p in got] == [  # type: ignore[arg-type]
            (
                bytes(range(256)) * 4,
                protocol.Part(1024, blocks.checksum(bytes(range(256)) * 4), True),
            ),
            (
                bytes(range(256)) * 2,
                protocol.Part(512, blocks.checksum(bytes(range(256)) * 2), False),
            ),
        ]
        st = worker.status()
        assert (st.hits - before.hits, st.misses - before.misses) == (1, 1)
        assert not worker.fresh(keys[2])  # (asked once)
        assert [p.length for _, p in await worker.held_after(ref, 1, 1)] == [512]
    finally:
        await worker.close()


async def test_a_run_after_a_restart_reads_and_checks_the_files_it_sends(tmp_path: Path) -> None:
    """Block files found on disk at start have not been checked: `held_after` reads and
    checks them and sends them from memory (hits), rather than ending the run there."""
    (tmp_path / "data").mkdir()
    body = os.urandom(4 * BLOCK)
    (tmp_path / "data" / "g.bin").write_bytes(body)
    cfg = WorkerConfig(
        dataset="train",
        mounts=[Mount(uri=f"file://{tmp_path / 'data'}")],
        block_size=BLOCK,
        tiers=[CacheTier(medium="SSD", quota=ByteSize(2**20), path=str(tmp_path / "ssd"))],
        workers=Peers(endpoints=["http://w:7070"]),
    )
    creds = tmp_path / "credentials.json"
    credentials.write_file(creds, credentials.CredentialFile(keys=[credentials.encode_key(KEY)]))

    def start() -> Worker:
        return Worker(cfg, url="http://w:7070/", cache_root=tmp_path / "c", credentials_path=creds)

    ref = FileRef(mount=0, key="g.bin", size=len(body))
    first = await start().open()
    try:
        for i in range(4):
            await first.block(ref.block_key("train", BLOCK, i), ref, i)
        await first.store.stored()
    finally:
        await first.close()
    again = await start().open()
    try:
        got = await again.held_after(ref, 0, 3)
        sent = [bytes(d) for d, _ in got if isinstance(d, bytes | memoryview)]
        assert sent == [body[i * BLOCK : (i + 1) * BLOCK] for i in (1, 2, 3)]
        assert all(p.hit for _, p in got)
        assert (again.status().hits, again.status().misses) == (3, 0)
        files = await again.held_after(ref, 0, 3)  # checked now: their files, sent as they lie
        for f, _ in files:
            assert not isinstance(f, bytes | memoryview)
            f.close()
        assert len(files) == 3
    finally:
        await again.close()

    # a reader that goes away while a follower is read: the files taken for the answer are
    # closed, and the block read for it stays a miss for its next ask
    third = await start().open()
    try:
        key1, key2 = (ref.block_key("train", BLOCK, i) for i in (1, 2))
        assert await third.store.get(key1) is not None  # (checked: at hand, its file opened)
        third._ahead[key2] = time.monotonic()  # (read for this reader)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            task = asyncio.create_task(third.held_after(ref, 0, 2))
            await asyncio.sleep(0)  # (at block 2's read, in a thread)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            del task
            gc.collect()
        assert third.fresh(key2)
    finally:
        await third.close()
