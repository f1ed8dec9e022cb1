"""The test kit, shipped for tests and benchmarks: real daemons as child processes, typed
builders of valid `fluidfed.models` objects, and `eventually`, the one way a test waits
for something to become true."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import mmap
import os
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

from aiohttp import web

from devkit.local.processes import AgentProcess as AgentProcess
from devkit.local.processes import HubProcess as HubProcess
from fluidfed.data import blockfile
from fluidfed.models import (
    Binding,
    BindingStatus,
    CacheTier,
    Capabilities,
    Cluster,
    ClusterRecord,
    ClusterStatus,
    Condition,
    Dataset,
    Medium,
    Mount,
    MountMode,
    Phase,
)
from fluidfed.units import ByteSize

if TYPE_CHECKING:
    import pytest

    from fluidfed.data import blocks

__all__ = [
    "AgentProcess",
    "BlockFileGate",
    "HubProcess",
    "NotYet",
    "binding",
    "binding_status",
    "cache_tier",
    "cluster",
    "cluster_record",
    "dataset",
    "eventually",
    "eventually_blocking",
]

T = TypeVar("T")


class BlockFileGate:
    """Holds every block file a `BlockStore` writes (the real write, in its thread) until
    `open` is set: what readers see while files are being written. Small blocks' files
    too go to the thread meanwhile (a worker's store writes them on its event loop, which a
    held write would hold up)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("fluidfed.data.store.WRITE_ON_LOOP_UP_TO", -1)
        self.open = threading.Event()
        self.started = threading.Semaphore(0)
        real = blockfile.write_block_file

        def held(path: str | Path, data: blocks.Data, crc: int) -> None:
            self.started.release()
            if not self.open.wait(30):
                raise TimeoutError("the test never opened the gate")
            real(path, data, crc)

        monkeypatch.setattr("fluidfed.data.store.write_block_file", held)

    async def writing(self) -> None:
        """Once a write has reached its thread."""
        assert await asyncio.to_thread(self.started.acquire, True, 10)


# ---- builders: the smallest valid object; every field can be given --------------------


def dataset(name: str = "ds", *, uri: str = "s3://b/p", **fields: Any) -> Dataset:
    """A dataset over one mount of `uri` (unless `mounts` is given)."""
    fields.setdefault("mounts", [Mount(uri=uri)])
    return Dataset(name=name, **fields)


def binding(
    spec: Dataset | None = None,
    cluster: str = "c",
    *,
    mode: MountMode = "sidecar",
    replicas: int = 1,
    generation: int = 1,
    **fields: Any,
) -> Binding:
    """`spec` (default `dataset()`) placed on `cluster`, named as the hub names it."""
    spec = spec or dataset()
    name = f"{spec.name}.{cluster}"
    fields = {"mode": mode, "replicas": replicas, "generation": generation, **fields}
    return Binding(name=name, dataset=spec.name, cluster=cluster, spec=spec, **fields)


def binding_status(phase: Phase = "Bound", **fields: Any) -> BindingStatus:
    return BindingStatus(phase=phase, **fields)


def cache_tier(
    medium: Medium = "MEM", quota: int = 2**30, path: str | Path = "", **fields: Any
) -> CacheTier:
    return CacheTier(medium=medium, quota=ByteSize(quota), path=str(path), **fields)


def free_and_floor(path: Path, min_free: float) -> tuple[int, int]:
    """The bytes free on `path`'s filesystem, and `min_free` of its size (a disk tier's
    floor: `CacheTier.min_free`)."""
    fs = os.statvfs(path)
    return fs.f_bavail * fs.f_frsize, int(fs.f_blocks * fs.f_frsize * min_free)


def cluster(name: str = "c", **fields: Any) -> Cluster:
    """A cluster that can mount datasets: without other capabilities, one that admits the
    FUSE sidecar (privileged), as the hub requires of a cluster without Fluid's CSI."""
    fields.setdefault("capabilities", Capabilities(privileged=True))
    return Cluster(name=name, **fields)


def cluster_record(
    name: str = "c", *, state: Literal["Ready", "Offline"] | None = "Ready", **fields: Any
) -> ClusterRecord:
    """A registered cluster whose last condition is `state` (None: never heard of)."""
    condition = Condition(type=state, since=0) if state else None
    return ClusterRecord(spec=cluster(name, **fields), status=ClusterStatus(condition=condition))


# What a cache worker of this version sends as its status (GET /v1/status, registration),
# key by key: the wire shape both ends of fluidfed.data.protocol must keep.
WORKER_STATUS_WIRE: dict[str, Any] = {
    "url": "http://w-0.svc:7070",
    "dataset": "train",
    "peers": ["http://w-0.svc:7070"],
    "blocks": 3,
    "used": 300,
    "capacity": 1000,
    "hits": 7,
    "misses": 3,
    "corrupt": 0,
    "evictions": 0,
    "tiers": [
        {
            "medium": "MEM",
            "quota": 1000,
            "used": 300,
            "blocks": 3,
            "hits": 7,
            "evictions": 0,
            "short": False,
        }
    ],
    "ufs": {"reads": 3, "bytes": 300, "errors": 0, "presigned": 2, "joined": 1},
    "served": {
        "blocks": 10,
        "bytes": 1000,
        "short_circuit": 0,
        "located": 0,
        "sendfile": 4,
        "joined": 2,
        "read_huge": 1,
    },
    "load": {"state": "idle", "path": "", "blocks": 0, "done": 0, "cached": 0, "bytes": 0},
    "writing": 1,
    "writes": {
        "errors": 1,
        "on_loop": 5,
        "on_loop_waited": 1,
        "on_loop_stopped": 0,
        "shed": 2,
        "no_room": 0,
    },
}


# ---- the command line ------------------------------------------------------------------


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`fluidfed ARGS...` as a user runs it (this interpreter, output captured; `input`
    on its standard input)."""
    return subprocess.run(
        [sys.executable, "-m", "fluidfed.cli.main", *args],
        input=input,
        capture_output=True,
        text=True,
        env=dict(os.environ if env is None else env),
        timeout=timeout,
    )


def kubectl(
    kubeconfig: Path | str, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """The cached kubectl against a local cluster (its kubeconfig), output captured."""
    from devkit.local import binaries

    return subprocess.run(
        [str(binaries.cache_dir() / "kubectl"), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---- waiting ----------------------------------------------------------------------------


class NotYet(str):
    """A falsy note of where a wait stands, for a check to return: `eventually` goes on,
    and shows the last one when time is up."""

    def __bool__(self) -> bool:
        return False


class _Attempts:
    """The deadline of one wait, the last value and error seen, and the failure that
    says what was awaited."""

    def __init__(self, what: str, timeout: float, interval: float) -> None:
        self.what = what
        self.timeout = timeout
        self.interval = interval
        self.deadline = time.monotonic() + timeout
        self.tries = 0
        self.last: object = None
        self.error: Exception | None = None

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def done(self, value: object, error: Exception | None) -> bool:
        """Whether this try ends the wait; else it is noted, and past the deadline the
        wait fails."""
        if error is None and value:
            return True
        self.tries += 1
        self.last, self.error = value, error
        if self.left() <= 0:
            raise self.failure()
        return False

    def pause(self) -> float:
        return min(self.interval, max(self.left(), 0))

    def failure(self) -> AssertionError:
        seen = f"last error: {self.error!r}" if self.error else f"last value: {self.last!r}"
        err = AssertionError(
            f"timed out after {self.timeout:g}s ({self.tries} tries) waiting for "
            f"{self.what}; {seen}"
        )
        err.__cause__ = self.error
        return err


# a check's None or NotYet means "not yet": never what `eventually` returns
@overload
async def eventually(
    check: Callable[[], Awaitable[T | NotYet | None]],
    what: str,
    *,
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T | NotYet | None],
    what: str,
    *,
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
) -> T: ...


async def eventually(
    check: Callable[[], Any],
    what: str,
    *,
    # a deadline in the call, not a scope around it: the failure must say what was awaited
    timeout: float = 120,  # noqa: ASYNC109
    interval: float = 0.25,
) -> Any:
    """Call `check` (a function, or one returning an awaitable) every `interval` seconds
    until it returns something truthy, and return that. An exception from `check` counts
    as "not yet". After `timeout` seconds (a check that hangs included) fail with what was
    awaited and the last value or error seen.

    Generous by default: this 2-core VM's speed drifts by 2x, and kwok's pods once took
    over a minute to turn Ready under a loaded suite."""
    attempts = _Attempts(what, timeout, interval)
    while True:
        value, error = None, None
        scope = asyncio.timeout(max(attempts.left(), 0))
        try:
            async with scope:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
        except Exception as err:
            if scope.expired():
                raise attempts.failure() from attempts.error
            error = err
        if attempts.done(value, error):
            return value
        await asyncio.sleep(attempts.pause())


def eventually_blocking(
    check: Callable[[], T | NotYet | None],
    what: str,
    *,
    timeout: float = 120,
    interval: float = 0.25,
) -> T:
    """`eventually` for the places that cannot await (sync fixtures and tests, threads):
    the same rules, but a check that hangs is not cut short."""
    attempts = _Attempts(what, timeout, interval)
    while True:
        value, error = None, None
        try:
            value = check()
        except Exception as err:
            error = err
        if attempts.done(value, error):
            return cast(T, value)
        time.sleep(attempts.pause())


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str) -> bytes:
    """A TLS handshake between a serving and a client context over memory buffers (no
    socket, no loop): the certificate the client was shown (DER), or the client's
    ssl.SSLCertVerificationError when it refuses it (another CA, another name)."""
    bios = [ssl.MemoryBIO() for _ in range(4)]
    c = client.wrap_bio(bios[0], bios[1], server_hostname=host)
    s = server.wrap_bio(bios[2], bios[3], server_side=True)
    for _ in range(10):
        done = 0
        for end in (c, s):
            try:
                end.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        bios[2].write(bios[1].read())  # client -> server
        bios[0].write(bios[3].read())  # server -> client
        if done == 2:
            der = c.getpeercert(binary_form=True)
            assert der is not None
            return der
    raise AssertionError("the TLS handshake did not finish")


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """`app` served by aiohttp on a free port of `host` until the block ends: its base URL
    (http://HOST:PORT, no trailing slash)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, 0).start()
        port = int(runner.addresses[0][1])
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def _smaps_field(address: int, field: str) -> list[str]:
    """A field of the mapping of this process that `address` lies in, as
    /proc/self/smaps says it (the words after its name)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == field:
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def vm_flags(address: int) -> set[str]:
    """The flags of the mapping of this process that `address` lies in, as
    /proc/self/smaps names them ("hg": huge pages asked for, "nh": refused)."""
    return set(_smaps_field(address, "VmFlags:"))


def mapped_bytes(address: int) -> int:
    """How much of the mapping that `address` lies in has pages mapped (its Rss)."""
    kib, unit = _smaps_field(address, "Rss:")
    assert unit == "kB"
    return int(kib) * 1024


def page_frames(address: int, length: int) -> list[int]:
    """The page frames of the pages mapped in this process at `address` for `length`
    bytes (none mapped: left out; all 0 without CAP_SYS_ADMIN, /proc/self/pagemap)."""
    first, n = address // mmap.PAGESIZE, -(-(address % mmap.PAGESIZE + length) // mmap.PAGESIZE)
    with open("/proc/self/pagemap", "rb") as pm:
        pm.seek(first * 8)
        entries = struct.unpack(f"{n}Q", pm.read(8 * n))
    return [e & ((1 << 55) - 1) for e in entries if e >> 63]


def active_pages(frames: list[int]) -> int:
    """How many of these page frames are on an active LRU list (/proc/kpageflags)."""
    active = 0
    with open("/proc/kpageflags", "rb") as kf:
        for pfn in frames:
            kf.seek(pfn * 8)
            (flags,) = struct.unpack("Q", kf.read(8))
            active += flags >> 6 & 1  # (KPF_ACTIVE)
    return active


def multi_gen_lru() -> bool:
    """Whether this kernel runs the multi-generation LRU, which sets no page active."""
    try:
        return int(Path("/sys/kernel/mm/lru_gen/enabled").read_text(), 16) != 0
    except (OSError, ValueError):
        return False


# whether this kernel has transparent huge pages (MADV_HUGEPAGE marks a mapping "hg")
HAS_THP = Path("/sys/kernel/mm/transparent_hugepage").is_dir()
