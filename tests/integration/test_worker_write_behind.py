"""A cache worker answers a miss before the block's file is written (the file is written
behind its reader): with MinIO on loopback and the worker's real HTTP server, in-process
where a write is held back on purpose, and as a `fluidfed worker serve` process killed
while it writes."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from agents.worker.core import Worker
from agents.worker.server import make_app
from devkit import testing
from devkit.local.cluster import free_port
from devkit.local.processes import WorkerProcess, local_credentials, local_token
from devkit.local.s3 import CREDENTIALS, S3Server
from fluidfed import errors
from fluidfed.data import blockfile, blocks, credentials, protocol, workers
from fluidfed.data import store as store_module
from fluidfed.data.blockfile import TRAILER_SIZE
from fluidfed.data.layout import FileRef, Peers, SidecarConfig, WorkerConfig
from fluidfed.data.store import BlockStore
from fluidfed.models import CacheTier, Mount
from fluidfed.units import ByteSize
from sidecar import reader as reader_module
from sidecar.reader import BlockReader
from tests.integration import sources
from tests.integration.test_worker_crash import no_temporary_files_left

pytestmark = pytest.mark.integration

BLOCK = 2**20
DATASET = "train"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sources.make_dataset(tmp_path_factory.mktemp("data"), count=40, seed=11)


@pytest.fixture(scope="module")
def minio(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with sources.minio_serving(data, DATASET, tmp_path_factory.mktemp("minio")) as server:
        yield server


@pytest.fixture(autouse=True)
def _s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)


def mount_of(minio: S3Server) -> dict[str, object]:
    return sources.s3_mount(minio, DATASET)


def refs(data: Path) -> list[tuple[FileRef, int, bytes]]:
    return sources.block_refs(data, BLOCK)


class Served:
    """A Worker behind its real HTTP server on loopback, and a reader's session."""

    def __init__(self, worker: Worker, url: str, session: aiohttp.ClientSession) -> None:
        self.worker = worker
        self.url = url
        self.session = session

    async def get(self, ref: FileRef, index: int, *, local: bool = False) -> workers.Fetched:
        key = ref.block_key(DATASET, BLOCK, index)
        return await workers.get_block(self.session, self.url, key, ref, index, local=local)


@pytest.fixture
async def served(minio: S3Server, tmp_path: Path) -> AsyncIterator[Served]:
    creds = tmp_path / "credentials.json"
    credentials.write_file(creds, local_credentials())
    cfg = WorkerConfig(
        dataset=DATASET,
        mounts=[Mount(uri=minio.uri(DATASET), options={"endpoint": minio.endpoint})],
        block_size=BLOCK,
        tiers=[CacheTier(medium="SSD", quota=ByteSize(2**30), path=str(tmp_path / "ssd"))],
        workers=Peers(endpoints=["http://127.0.0.1:1"]),
    )
    worker = await Worker(
        cfg, url="http://127.0.0.1:1", cache_root=tmp_path / "cache", credentials_path=creds
    ).open()
    token = local_token(DATASET, "reader")
    try:
        async with (
            testing.serving(make_app(worker)) as url,
            aiohttp.ClientSession(headers=credentials.authorization(token)) as session,
        ):
            yield Served(worker, url, session)
    finally:
        await worker.close()


async def test_a_miss_is_answered_before_its_file_is_written_and_read_again_from_memory(
    data: Path, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = testing.BlockFileGate(monkeypatch)
    ref, index, want = next(r for r in refs(data) if len(r[2]) > 1000)
    w = served.worker
    key = ref.block_key(DATASET, BLOCK, index)
    path = blockfile.block_path(w.store._tiers[0].dir or "", key)
    try:
        # two readers at once, and one once the first answer is out, all while the file
        # is held back: one GET to MinIO, the others served from memory
        first, second = await asyncio.wait_for(
            asyncio.gather(served.get(ref, index), served.get(ref, index)), 20
        )
        third = await asyncio.wait_for(served.get(ref, index), 20)
        # a reader on this machine is not pointed at a file that is not whole yet
        beside = await asyncio.wait_for(served.get(ref, index, local=True), 20)
        assert not path.exists()
        assert [bytes(f.data) for f in (first, second, third, beside)] == [want] * 4
        assert not beside.local and third.hit
        assert (w.status().ufs.reads, w.status().writing) == (1, 1)
    finally:
        gate.open.set()
    await w.stored()
    assert w.status().writing == 0
    assert blockfile.read_block_file(path) == (want, blocks.checksum(want))
    after = await served.get(ref, index, local=True)  # now the file is whole: its path
    assert after.local and after.path == str(path) and bytes(after.data) == want
    assert w.status().ufs.reads == 1


async def test_close_drain_and_warm_up_wait_for_the_files(
    data: Path, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = testing.BlockFileGate(monkeypatch)
    w = served.worker
    some = refs(data)[:6]
    try:
        await asyncio.wait_for(asyncio.gather(*(served.get(r, i) for r, i, _ in some)), 20)
        assert w.store.snapshot().writing == len(some)
        # warm-up: "done" only once what it loaded is in the files
        w.start_load("", [w.url])
        await asyncio.sleep(0.2)
        assert w.load.state == "running"
        drained = asyncio.create_task(w.drain([w.url]))  # to nobody: still waits first
        closed = asyncio.create_task(w.close())
        await asyncio.sleep(0.2)
        assert not drained.done() and not closed.done()
    finally:
        gate.open.set()
    await asyncio.wait_for(asyncio.gather(drained, closed), 30)
    tier = w.store._tiers[0].dir
    assert tier is not None
    for ref, i, want in some:
        got = blockfile.read_block_file(
            blockfile.block_path(tier, ref.block_key(DATASET, BLOCK, i))
        )
        assert got == (want, blocks.checksum(want))
    assert w.store.snapshot().writing == 0


async def test_a_closing_reader_tells_the_workers_it_had_not_told_yet(
    data: Path, minio: S3Server, served: Served
) -> None:
    """A sidecar closing while its report of file reads hangs at one worker (which took the
    connection and never answers) waits for it briefly, then tells the others, in its last
    report, what it read from their files: their share of the batch is kept, not dropped
    with the hung one, and the hung one is not told twice."""
    ref, index, want = refs(data)[0]
    key = ref.block_key(DATASET, BLOCK, index)
    await asyncio.wait_for(served.get(ref, index), 20)  # the worker holds the block
    hits = served.worker.status().hits
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.setblocking(False)
        hung = f"http://127.0.0.1:{silent.getsockname()[1]}"
        cfg = SidecarConfig(
            dataset=DATASET,
            mounts=[Mount(uri=minio.uri(DATASET), options={"endpoint": minio.endpoint})],
            block_size=BLOCK,
            workers=Peers(endpoints=[hung, served.url]),
            worker_timeout=30,
        )
        reader = BlockReader(cfg, [], await BlockStore(cfg.cache).open(), served.session)
        reader._touched = {hung: [("0" * 32, 1)], served.url: [(key, len(want))]}
        reporting = asyncio.create_task(reader._report_touches(interval=0))
        reader._reporter = reporting
        told, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(silent), 10)
        with told:  # (the report is under way, to the silent one first)
            await asyncio.sleep(0.1)
            assert not reporting.done()
            await asyncio.wait_for(reader.close(), 10)
            with pytest.raises(BlockingIOError):  # the one under way is not sent twice
                silent.accept()
    assert served.worker.status().hits == hits + 1


async def test_a_worker_killed_while_writing_behind_never_serves_a_torn_block(
    data: Path, minio: S3Server, tmp_path: Path
) -> None:
    everything = refs(data)
    port = free_port()
    ssd = tmp_path / "ssd"
    config = {
        "dataset": DATASET,
        "mounts": [mount_of(minio)],
        "block_size": BLOCK,
        "tiers": [{"medium": "SSD", "quota": "1GiB", "path": str(ssd)}],
        "workers": {"endpoints": [f"http://127.0.0.1:{port}"]},
    }
    proc = WorkerProcess(tmp_path / "w", config, port).start()
    token = credentials.authorization(local_token(DATASET, "reader"))
    try:
        async with aiohttp.ClientSession(headers=token) as session:

            async def get(ref: FileRef, i: int) -> bytes:
                key = ref.block_key(DATASET, BLOCK, i)
                got = await workers.get_block(session, proc.url, key, ref, i)
                return bytes(got.data)

            got = await asyncio.gather(*(get(r, i) for r, i, _ in everything))
            assert got == [b for _, _, b in everything]
            proc.stop(signal.SIGKILL)  # its last files may still be on their way
            # what a crash in the middle of a write can leave: a temporary file, and (on a
            # filesystem that lost the data of a renamed file) a block file cut short
            # (whole files only: the killed write's own temporary file is no block to cut)
            files = sorted(p for p in ssd.rglob("*") if p.is_file() and p.suffix != ".tmp")
            assert files
            (files[0].parent / (files[0].name + ".tmp")).write_bytes(b"half a block")
            torn = files[-1]
            os.truncate(torn, max(0, torn.stat().st_size - TRAILER_SIZE - 1))
            proc.start()
            again = await asyncio.gather(*(get(r, i) for r, i, _ in everything))
            assert again == [b for _, _, b in everything]
            async with session.get(
                f"{proc.url}/v1/status",
                headers=credentials.authorization(local_token(DATASET, "agent")),
            ) as r:
                status = await r.json()
        assert status["corrupt"] == 1  # the cut one, found and fetched again
        await no_temporary_files_left(ssd, proc)
        for f in (p for p in ssd.rglob("*") if p.is_file()):
            data_, crc = blockfile.read_block_file(f)  # every file whole, or none at all
            assert len(data_) + blockfile.trailer_size(len(data_)) == f.stat().st_size
            assert crc >= 0
    finally:
        proc.close()


async def test_a_block_file_that_cannot_be_read_is_fetched_again_and_written_anew(
    data: Path, served: Served
) -> None:
    """A checked block file the worker can no longer open (here a symlink to itself: ELOOP,
    as EIO or EACCES would be) is not a 500: the block is dropped, fetched again for its
    reader, whole or a span of it, and its file written anew."""
    w = served.worker
    (ref, index, want), (ref2, index2, want2) = [r for r in refs(data) if len(r[2]) > 1000][:2]
    for r, i in ((ref, index), (ref2, index2)):
        await served.get(r, i)
    await w.stored()
    assert (await served.get(ref, index)).hit  # (sent from its checked file)
    reads = w.status().ufs.reads
    tier = w.store._tiers[0].dir
    assert tier is not None
    for r, i in ((ref, index), (ref2, index2)):
        path = blockfile.block_path(tier, r.block_key(DATASET, BLOCK, i))
        path.unlink()
        path.symlink_to(path.name)
    whole = await served.get(ref, index)
    span = await workers.get_block(
        served.session, served.url, ref2.block_key(DATASET, BLOCK, index2), ref2, index2, (7, 100)
    )
    assert bytes(whole.data) == want and not whole.hit
    assert bytes(span.data) == want2[7:107]
    assert w.status().ufs.reads == reads + 2
    assert w.status().corrupt == 2
    await w.stored()
    for r, i, body in ((ref, index, want), (ref2, index2, want2)):
        path = blockfile.block_path(tier, r.block_key(DATASET, BLOCK, i))
        assert not path.is_symlink()
        assert blockfile.read_block_file(path) == (body, blocks.checksum(body))


def _lowest_free_fd() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)  # (the kernel gives the lowest free one)
    os.close(fd)
    return fd


async def test_a_worker_short_of_open_files_answers_503_and_keeps_the_block(
    data: Path, served: Served
) -> None:
    """A worker out of file descriptors (its open-file limit reached: EMFILE) answers 503
    saying what to raise, and keeps the block: its file is fine, and sent once it can be."""
    w = served.worker
    ref, index, want = next(r for r in refs(data) if len(r[2]) > 1000)
    key = ref.block_key(DATASET, BLOCK, index)
    query = protocol.BlockQuery(
        mount=ref.mount, key=ref.key, size=ref.size, index=index, version=ref.version
    )
    await served.get(ref, index)
    await w.stored()
    assert (await served.get(ref, index)).hit  # (the connection is kept alive: no new fd)
    w.fresh_again(key)  # as if read ahead for this reader: its first answer is a miss
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_lowest_free_fd(), hard))
    try:
        with pytest.raises(errors.WorkerError) as caught:
            await served.get(ref, index)
        url = protocol.block_url(served.url, key)
        async with served.session.get(url, params=query.params()) as r:
            status, retry = r.status, r.headers.get("Retry-After")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert (status, retry) == (503, "5")
    assert caught.value.status == 503
    assert "open-file limit" in str(caught.value)
    assert w.status().corrupt == 0
    again = await served.get(ref, index)  # (still its first answer since read ahead)
    assert not again.hit and bytes(again.data) == want
    assert (await served.get(ref, index)).hit


async def test_a_sidecar_short_of_descriptors_reads_over_http_and_keeps_its_short_circuit(
    data: Path, minio: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sidecar out of file descriptors (its open-file limit reached) cannot open the
    worker's block file on its node, whether it knew the file's place or the worker told
    it: it gets the block over HTTP (the kept-alive connection needs no new descriptor)
    and reads the worker's files again once it can, instead of taking the worker for one
    on another node for five minutes (after a short while: `SHORT_FOR`)."""
    monkeypatch.setattr(reader_module, "SHORT_FOR", 0.05)
    ref, index, want = next(r for r in refs(data) if len(r[2]) > 1000)
    key = ref.block_key(DATASET, BLOCK, index)
    port = free_port()
    config = {
        "dataset": DATASET,
        "mounts": [mount_of(minio)],
        "block_size": BLOCK,
        "tiers": [{"medium": "SSD", "quota": "1GiB", "path": str(tmp_path / "ssd")}],
        "workers": {"endpoints": [f"http://127.0.0.1:{port}"]},
    }
    proc = WorkerProcess(tmp_path / "w", config, port).start()  # (its own descriptors)
    token = credentials.authorization(local_token(DATASET, "reader"))
    cfg = SidecarConfig(
        dataset=DATASET,
        mounts=[Mount(uri=minio.uri(DATASET), options={"endpoint": minio.endpoint})],
        block_size=BLOCK,
        workers=Peers(endpoints=[proc.url]),
    )
    try:
        async with aiohttp.ClientSession(headers=token) as session:
            reader = BlockReader(cfg, [], await BlockStore(cfg.cache).open(), session)
            try:
                for _ in range(100):  # a miss, then its file once written: read here
                    got = await reader._fetch(key, ref, index)
                    if reader.stats.short_circuit:
                        break
                    await asyncio.sleep(0.05)
                assert reader.stats.short_circuit == 1 and bytes(got[0]) == want
                for knows in (True, False):  # the file's place known here, or told
                    if not knows:
                        reader._dirs.clear()
                    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                    fd = os.open(os.devnull, os.O_RDONLY)  # (the lowest free descriptor)
                    os.close(fd)
                    resource.setrlimit(resource.RLIMIT_NOFILE, (fd, hard))
                    try:
                        short = await reader._fetch(key, ref, index)
                    finally:
                        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                    assert bytes(short[0]) == want
                    assert reader.stats.short_circuit == 1  # (over HTTP)
                    assert reader._remote.get(proc.url, 0.0) == 0.0
                    assert reader.stats.worker_errors == 0
                    await asyncio.sleep(0.1)
                    again = await reader._fetch(key, ref, index)
                    assert bytes(again[0]) == want and reader.stats.short_circuit == 2
                    reader.stats.short_circuit = 1
            finally:
                await reader.close()
    finally:
        proc.close()


@pytest.mark.parametrize("behind", [True, False], ids=["written behind", "written first"])
async def test_a_miss_whose_file_cannot_be_written_is_answered_and_not_kept(
    data: Path, served: Served, behind: bool
) -> None:
    """A block file the worker cannot write (a full disk; here a file where its directory
    goes: ENOTDIR) does not fail its reader: the block fetched for it is answered, and not
    kept, whether its file was to be written behind the answer or before it (past the
    write-behind bound); a block handed over by a peer (its file written before the
    answer, as no reader waits for it) is refused with the reason."""
    w = served.worker
    if not behind:
        w.store.write_behind = 0
    ref, index, want = next(r for r in refs(data) if len(r[2]) > 1000)
    key = ref.block_key(DATASET, BLOCK, index)
    tier = w.store._tiers[0].dir
    assert tier is not None
    (tier / key[:2]).write_bytes(b"not a directory")
    got = await served.get(ref, index)
    assert bytes(got.data) == want and not got.hit
    await w.stored()
    assert key not in w.store
    again = await served.get(ref, index)  # (fetched again: nothing was kept)
    assert bytes(again.data) == want and not again.hit
    assert w.status().ufs.reads == 2
    peer = credentials.authorization(local_token(DATASET, "peer"))
    async with aiohttp.ClientSession(headers=peer) as session:
        with pytest.raises(errors.WorkerError) as refused:
            await workers.put_block(session, served.url, key, want, blocks.checksum(want))
    assert refused.value.status == 500
    assert "cannot write the block's file" in str(refused.value)
    await w.stored()
    assert key not in w.store
    assert w.status().writes.errors == 3  # the two misses' files and the peer's


async def test_the_status_says_where_block_files_were_written(data: Path, served: Served) -> None:
    """`GET /v1/status` counts the small blocks' files written on the worker's event loop
    (`BlockStore.write_on_loop`), and not the larger ones, which its writing thread
    writes; none failed, none kept the loop waiting long enough to be sent to the thread."""
    small = next(r for r in refs(data) if 1000 < len(r[2]) <= store_module.WRITE_ON_LOOP_UP_TO)
    large = next(r for r in refs(data) if len(r[2]) > store_module.WRITE_ON_LOOP_UP_TO)
    for ref, index, want in (small, large):
        got = await served.get(ref, index)
        assert bytes(got.data) == want and not got.hit
    await served.worker.stored()
    agent = credentials.authorization(local_token(DATASET, "agent"))
    async with served.session.get(f"{served.url}/v1/status", headers=agent) as r:
        assert r.status == 200
        status = protocol.decode(protocol.WorkerStatus, await r.read())
    assert status.writes.errors == 0
    assert status.writes.on_loop == 1
    assert status.writes.on_loop_stopped == 0
    assert status.ufs.reads == 2 and status.blocks == 2


async def test_a_worker_gives_back_what_another_tenant_took_of_its_disk(
    data: Path, minio: S3Server, small_disk: Path, tmp_path: Path
) -> None:
    """A worker whose disk tier (on a 4 MiB filesystem of its own, a quota of 1 GiB, 25%
    kept free) holds blocks when another tenant of the disk takes it below the floor:
    between its reports it evicts its least recently used blocks until the floor holds
    again, with no read, and its status over HTTP says how many. A second tenant takes
    more than the tier holds: the worker gives back all of it, and its status says the
    tier keeps no block now (`tiers[].short`), until the tenant leaves."""
    creds = tmp_path / "credentials.json"
    credentials.write_file(creds, local_credentials())
    tier = CacheTier(medium="SSD", quota=ByteSize(2**30), path=str(small_disk), min_free=0.25)
    cfg = WorkerConfig(
        dataset=DATASET,
        mounts=[Mount(uri=minio.uri(DATASET), options={"endpoint": minio.endpoint})],
        block_size=BLOCK,
        tiers=[tier],
        workers=Peers(endpoints=["http://127.0.0.1:1"]),
        report_interval=0.05,
    )
    worker = await Worker(
        cfg, url="http://127.0.0.1:1", cache_root=tmp_path / "cache", credentials_path=creds
    ).open()
    reader = credentials.authorization(local_token(DATASET, "reader"))
    agent = credentials.authorization(local_token(DATASET, "agent"))
    held = [r for r in refs(data) if 200_000 < len(r[2]) < 400_000][:4]  # (1.2 MiB)
    assert len(held) >= 3
    reporting: asyncio.Task[None] | None = None
    try:
        async with (
            testing.serving(make_app(worker)) as url,
            aiohttp.ClientSession(headers=reader) as session,
        ):
            for ref, index, want in held:
                key = ref.block_key(DATASET, BLOCK, index)
                got = await workers.get_block(session, url, key, ref, index)
                assert bytes(got.data) == want
            await worker.stored()
            kept = len(worker.store.hottest())
            assert kept == len(held) and worker.status().writes.shed == 0
            free, floor = testing.free_and_floor(small_disk, 0.25)
            (small_disk / "tenant").write_bytes(b"t" * (free - floor + 300_000))
            reporting = asyncio.create_task(worker.report_loop())

            def floor_holds() -> bool:
                free, floor = testing.free_and_floor(small_disk, 0.25)
                return free >= floor

            await testing.eventually(floor_holds, "the floor free again", timeout=20)

            async def status_now() -> protocol.WorkerStatus:
                async with session.get(f"{url}/v1/status", headers=agent) as r:
                    return protocol.decode(protocol.WorkerStatus, await r.read())

            status = await status_now()
            assert 0 < status.writes.shed < kept and status.blocks == kept - status.writes.shed
            assert status.ufs.reads == len(held)  # (nothing read meanwhile)
            assert not status.tiers[0].short
            free, _ = testing.free_and_floor(small_disk, 0.25)
            (small_disk / "tenant-2").write_bytes(b"t" * (free - 8192))

            async def short() -> protocol.WorkerStatus | testing.NotYet:
                st = await status_now()
                return st if st.tiers[0].short else testing.NotYet(str(st.tiers))

            status = await testing.eventually(short, "the tier said to keep no block", timeout=20)
            assert status.blocks == 0 and status.writes.shed == kept
            (small_disk / "tenant-2").unlink()

            async def room() -> protocol.WorkerStatus | testing.NotYet:
                st = await status_now()
                return st if not st.tiers[0].short else testing.NotYet(str(st.tiers))

            await testing.eventually(room, "the tier said to keep blocks again", timeout=20)
    finally:
        if reporting is not None:
            reporting.cancel()
        await worker.close()
