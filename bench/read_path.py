"""The read path through the FUSE sidecar, each figure against a baseline from the same run.

    python bench/read_path.py [--size-mib 1024] [--files 10000] [--runs 3] [--only cold,warm]

Real parts only: MinIO on loopback, `fluidfed worker serve` and `fluidfed sidecar mount`
processes, a FUSE mount through /dev/fuse, fio (Debian's package) for the I/O figures.

    cold      1 GiB sequential through a fresh mount, no workers, from MinIO
              vs a raw ranged-GET loop (presigned URLs, aiohttp) with the same parallelism,
              run alternately; CPU seconds per GiB of the sidecar and MinIO
    warm      the same through a fresh mount from one cache worker holding every block
              vs reading the worker's block files directly; CPU of sidecar and worker;
              twice: the sidecar on the worker's node (it reads the block files itself,
              short-circuit) and as if remote (the blocks over HTTP); and the worker's
              credential check per block request, in µs and as a share of a block's time
    reread    a mount's file again, kernel page cache warm, `cat` vs `cat` of a local file
              (tmpfs and fio figures as context)
    random    4 KiB and 128 KiB random reads (IOPS) through a fresh mount backed by the
              warm worker vs the local copy
    metadata  stat / open / readdir per second on 10,000 files through the mount vs direct
    ttfb      time to the first byte of a cold read vs a raw ranged GET
    rss       sidecar RSS beyond what its memory tier holds: settled (2 s after the read),
              anonymous only, and the peak (VmHWM) minus the tier's quota
    fanout    4 sidecars on one node reading the same file at once through one cache worker
              (HTTP), empty then warm: aggregate MiB/s and worker CPU, vs one sidecar alone

Small files (128 KiB read whole by 8 readers) and metadata against the peer clients:
bench/peers.py (`--clients fluidfed` for fluidfed alone), with the helpers here.

Each figure is the median of --runs runs; this 2-core VM's speed drifts between minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

from devkit.local.cluster import free_port
from devkit.local.processes import SidecarProcess, WorkerProcess
from devkit.local.s3 import CREDENTIALS, S3Server
from fluidfed.data import credentials, layout
from fluidfed.models import Mount

BLOCK = 4 * 2**20
READAHEAD = 4
TIER_MIB = 128


def add_fio_args(ap: argparse.ArgumentParser, which: str) -> None:
    """--io-kib and --skew-kib: how fio reads `which` (each read's size, and where the
    reading starts; from a skew, the kernel's READs run across a client's blocks, as a
    reader that starts mid-block, or reads a record at a time, gets them)."""
    ap.add_argument("--io-kib", type=int, default=1024, help=f"{which}: each read's size")
    ap.add_argument("--skew-kib", type=int, default=0, help=f"{which}: read from this far in")


def fio(
    path: Path,
    rw: str,
    bs: str,
    *,
    size: int,
    runtime: int = 0,
    invalidate: int = 1,
    readers: int = 1,
    offset: int = 0,
) -> Any:
    """fio over `path` from byte `offset` to `size`; with several `readers`, each reads its
    own consecutive part of those bytes at once (the first from `offset`, the next a
    part's length on, ...), and the figures are of them all."""
    part = (size - offset) // readers
    argv = [
        "fio",
        "--name=b",
        f"--filename={path}",
        f"--rw={rw}",
        f"--bs={bs}",
        "--readonly",
        f"--size={part}",
        "--ioengine=psync",
        f"--invalidate={invalidate}",
        "--output-format=json",
    ]
    if offset:
        argv.append(f"--offset={offset}")
    if readers > 1:
        argv += [f"--numjobs={readers}", f"--offset_increment={part}", "--group_reporting"]
    if runtime:
        argv += [f"--runtime={runtime}", "--time_based"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]["read"]
    return {"MiB_per_s": round(job["bw_bytes"] / 2**20, 1), "iops": round(job["iops"])}


async def raw_get_loop(url: str, size: int, parallel: int) -> float:
    """MiB/s of a ranged-GET loop over the object in BLOCK pieces, `parallel` at a time."""
    sem = asyncio.Semaphore(parallel)
    async with aiohttp.ClientSession() as session:

        async def one(off: int) -> int:
            async with sem:
                rng = f"bytes={off}-{min(off + BLOCK, size) - 1}"
                async with session.get(url, headers={"Range": rng}) as r:
                    return len(await r.read())

        t0 = time.perf_counter()
        got = sum(await asyncio.gather(*(one(o) for o in range(0, size, BLOCK))))
        dt = time.perf_counter() - t0
    assert got == size
    return size / 2**20 / dt


async def raw_ttfb(urls: list[str]) -> float:
    out = []
    async with aiohttp.ClientSession() as session:
        for url in urls:
            t0 = time.perf_counter()
            async with session.get(url, headers={"Range": "bytes=0-4095"}) as r:
                await r.read()
            out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1000


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    return status_kib(pid, "VmRSS") / 1024


def proc_stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (state first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_seconds(pid: int) -> float:
    """System CPU of a process, all its threads (the kernel's work for it)."""
    return int(proc_stat(pid)[12]) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int:
    """Page faults of a process that needed no disk (fresh or reclaimed pages)."""
    return int(proc_stat(pid)[7])


def page_reporting() -> dict[str, Any]:
    """This VM's free page reporting as the run finds it (bench/vm_pages.py): its order
    (above 10: held off) and how much free memory it has handed to the host so far. Every
    figure of the data path depends on it: memory handed back faults in the host when a
    page-cache page lands there, at the FUSE reply's copy (remote warm reads 446 against
    1,243 MiB/s, `bench/results/vm_pages.json`)."""
    params = Path("/sys/module/page_reporting/parameters")
    try:
        return {
            "order": int((params / "page_reporting_order").read_text()),
            "reported_MiB": int((params / "reported_kib").read_text()) // 1024,
        }
    except (OSError, ValueError):
        return {}


class CPU:
    """CPU seconds per GiB moved, per process, over a measured stretch: where the time
    goes, and how many of the machine's cores the whole read path kept busy."""

    def __init__(self, procs: dict[str, int]) -> None:
        self.procs = procs
        self.start = {k: cpu_seconds(p) for k, p in procs.items()}
        self.t0 = time.perf_counter()

    def per_gib(self, nbytes: int) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        used = {k: cpu_seconds(p) - self.start[k] for k, p in self.procs.items()}
        out = {f"{k}_cpu_s_per_GiB": round(v / (nbytes / 2**30), 2) for k, v in used.items()}
        out["cores_busy_besides_fio"] = round(sum(used.values()) / wall, 2)
        return out


def cat_mib_s(path: Path) -> float:
    """MiB/s of `cat FILE > /dev/null` (the issue's re-read baseline)."""
    size = path.stat().st_size
    t0 = time.perf_counter()
    subprocess.run(f"cat '{path}' > /dev/null", shell=True, check=True)
    return size / 2**20 / (time.perf_counter() - t0)


def tree_pids(pid: int) -> list[int]:
    """A process and all its descendants (a peer client may fork helpers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return out


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process tree, every thread of every process in it."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            total += cpu_seconds(p)
        except OSError:  # gone meanwhile
            continue
    return total


SMALL_FILE = 128 * 2**10
READERS = 8  # a DataLoader with 8 workers


def small_file(i: int) -> bytes:
    """The content of small file `i`: its number, then random bytes (shared: the clients
    compress and deduplicate nothing by default)."""
    return i.to_bytes(16, "big") + _SMALL_BASE[16:]


_SMALL_BASE = os.urandom(SMALL_FILE)


def small_file_keys(n: int, dirs: int) -> list[str]:
    """`n` files in `dirs` directories, relative to the dataset root."""
    return [f"small/d{i % dirs:03d}/f{i:06d}.bin" for i in range(n)]


def write_small_files(root: Path, keys: list[str]) -> None:
    for i, key in enumerate(keys):
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(small_file(i))


def read_whole(paths: list[Path], readers: int = READERS) -> dict[str, float]:
    """Every file read whole by `readers` threads, the way a DataLoader's workers read
    samples: files/s and the per-file latency (open to close)."""
    lat = [0.0] * len(paths)

    def one(i: int) -> None:
        t0 = time.perf_counter()
        fd = os.open(paths[i], os.O_RDONLY)
        try:
            while os.read(fd, 2**20):
                pass
        finally:
            os.close(fd)
        lat[i] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(readers) as pool:
        list(pool.map(one, range(len(paths))))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100)
    return {
        "files_per_s": round(len(paths) / wall),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
    }


def drop_cached(root: Path) -> None:
    """Drop the page cache of every file under `root` (a client's own cache, a worker's
    disk tier) and only those: the machine is shared, /proc/sys/vm/drop_caches is not."""
    os.sync()
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def load_cached(root: Path) -> None:
    """Read every file under `root` once, so that all of it is in the page cache (a worker
    writes blocks of 1 MiB or more past it: a fill leaves them on the disk only)."""
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError), open(p, "rb", buffering=0) as f:
                while f.read(2**22):
                    pass


def open_close_per_s(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        os.close(os.open(p, os.O_RDONLY))
    return len(paths) / (time.perf_counter() - t0)


def readdir_s(directory: Path) -> tuple[int, float]:
    """(entries, seconds) of listing `directory` with their types (os.scandir)."""
    t0 = time.perf_counter()
    with os.scandir(directory) as it:
        n = sum(1 for e in it if e.is_file())
    return n, time.perf_counter() - t0


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 1)


def median_cpu(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs (not one run's figures)."""
    return {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}


def sidecar(
    root: Path, name: str, mount: dict[str, Any], workers: list[str], **kw: Any
) -> SidecarProcess:
    cfg = {
        "dataset": "bench",
        "mounts": [mount],
        "block_size": BLOCK,
        "workers": {"endpoints": workers},
        "readahead": READAHEAD,
        "cache": [{"medium": "MEM", "quota": f"{TIER_MIB}MiB"}],
        **kw,
    }
    return SidecarProcess(root / name, cfg, root / f"{name}-mnt").start()


@contextlib.contextmanager
def pythonpath(tree: str, env: dict[str, str] | None = None) -> Iterator[None]:
    """Children started meanwhile run fluidfed from `tree` ("": as this process does),
    with `env` added to their environment."""
    # PYTHONSAFEPATH: children run `python -m fluidfed.cli.main`, and -m puts the working
    # directory first on sys.path, ahead of PYTHONPATH: every tree's processes ran the code
    # of the directory the bench was started from, whatever `tree` said
    changes = {"PYTHONSAFEPATH": "1", **({"PYTHONPATH": tree} if tree else {}), **(env or {})}
    old = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def low_floor() -> dict[str, float]:
    """A worker's disk tier's free-space floor (`min_free`), checked as always but set low:
    a bench whose runs keep their workers' files must not have them evicted as the
    machine's disk fills up. Left out for a tree from before it (whose workers refuse
    it), the tree being the one the next worker runs from (`pythonpath`)."""
    tree = (os.environ.get("PYTHONPATH") or "").split(":")[0] or str(Path(__file__).parents[1])
    models = Path(tree) / "fluidfed" / "models.py"
    return {"min_free": 0.02} if "min_free" in models.read_text() else {}


def warm_worker(
    root: Path, mount: dict[str, Any], size_mib: int, name: str = "worker"
) -> WorkerProcess:
    wdir = root / name
    tier = [
        {
            "medium": "SSD",
            "quota": f"{2 * size_mib + 64}MiB",
            "path": str(wdir / "ssd"),
            **low_floor(),
        }
    ]
    port = free_port()
    return WorkerProcess(
        wdir,
        {
            "dataset": "bench",
            "mounts": [mount],
            "block_size": BLOCK,
            "tiers": tier,
            "workers": {"endpoints": [f"http://127.0.0.1:{port}"]},
        },
        port,
    ).start()


PARTS = ("cold", "reread", "ttfb", "warm", "random", "metadata", "fanout")
FANOUT = 4  # sidecars on one node reading the same dataset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (median reported)")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated: {PARTS}")
    ap.add_argument(
        "--random-over-http",
        action="store_true",
        help="random: short-circuit reads off, as a worker on another node is read",
    )
    ap.add_argument(
        "--against",
        default="",
        help="another checkout (main's): its sidecars read the warm rows too, alternating "
        "with this tree's, in the same run (the worker is this tree's)",
    )
    args = ap.parse_args()
    only = set(args.only.split(","))
    size = args.size_mib * 2**20
    runs = args.runs
    os.environ.update(CREDENTIALS)
    results: dict[str, Any] = {
        "size_mib": args.size_mib,
        "block_mib": BLOCK // 2**20,
        "runs": runs,
        "cores": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "page_reporting_start": page_reporting(),
    }
    root = Path(tempfile.mkdtemp(prefix="fluidfed-bench-"))
    server = S3Server(root / "minio").start()
    assert server.proc is not None
    procs: list[Any] = []
    try:
        local = root / "local"
        local.mkdir()
        big = local / "big.bin"
        with open(big, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(2**20))
        ttfb_objects = {f"ttfb/{i}.bin": os.urandom(2**20) for i in range(20)}
        print(f"uploading {args.size_mib} MiB to MinIO ...", file=sys.stderr)
        asyncio.run(server.upload({"big.bin": big.read_bytes(), **ttfb_objects}, prefix="data"))
        mount = {"uri": server.uri("data"), "options": {"endpoint": server.endpoint}}
        url = asyncio.run(server.presign("data/big.bin"))

        # (a) cold: straight from MinIO through fresh mounts, no workers, interleaved with
        # a raw ranged-GET loop of the same parallelism (this machine's speed drifts)
        if "cold" in only:
            parallel = READAHEAD + 1
            raw: list[float] = []
            cold: list[float] = []
            cpu: list[dict[str, float]] = []
            rss: dict[str, float] = {}
            # a pass of each first, not counted: MinIO is busiest right after the upload
            asyncio.run(raw_get_loop(url, size, parallel))
            warmup = sidecar(root, "cold-warmup", mount, [])
            procs.append(warmup)
            fio(warmup.mountpoint / "big.bin", "read", "1M", size=size)
            warmup.stop()
            for i in range(runs):
                raw.append(asyncio.run(raw_get_loop(url, size, parallel)))
                sc = sidecar(root, f"cold{i}", mount, [])
                procs.append(sc)
                assert sc.proc is not None
                meter = CPU({"sidecar": sc.proc.pid, "minio": server.proc.pid})
                cold.append(fio(sc.mountpoint / "big.bin", "read", "1M", size=size)["MiB_per_s"])
                cpu.append(meter.per_gib(size))
                if i == 0:
                    time.sleep(2.5)  # the sidecar gives freed heap pages back within a second
                    tier = sc.status()["cache"]["used"] / 2**20
                    rss = {
                        "settled_rss_MiB": round(rss_mib(sc.proc.pid) - tier, 1),
                        "settled_anonymous_MiB": round(
                            status_kib(sc.proc.pid, "RssAnon") / 1024 - tier, 1
                        ),
                        "peak_rss_minus_tier_quota_MiB": round(
                            status_kib(sc.proc.pid, "VmHWM") / 1024 - TIER_MIB, 1
                        ),
                    }
                sc.stop()
            results["cold"] = {
                "mount_MiB_per_s": median(cold),
                "raw_get_MiB_per_s": median(raw),
                "ratio": ratio(median(cold), median(raw)),
                "goal": ">= 0.70",
                "runs": {"mount": [round(x) for x in cold], "raw": [round(x) for x in raw]},
                "cpu": cpu[len(cpu) // 2],
            }
            results["rss"] = {
                **rss,
                "memory_tier_MiB": TIER_MIB,
                "goal": "<= 80 MB (settled)",
            }

        # (c) re-read: the kernel's page cache is kept for unchanged files. Both files
        # are read once first (this VM's DAMON reclaim pages out what sat idle for 30 s)
        if "reread" in only or "ttfb" in only:
            sc = sidecar(root, "reread", mount, [])
            procs.append(sc)
            through = sc.mountpoint / "big.bin"
            if "reread" in only:
                cat_mib_s(through)
                cat_mib_s(big)
                mnt_cat, loc_cat, mnt_fio, loc_fio = [], [], [], []
                for _ in range(max(runs, 5)):
                    mnt_cat.append(cat_mib_s(through))
                    loc_cat.append(cat_mib_s(big))
                for _ in range(runs):
                    mnt_fio.append(fio(through, "read", "1M", size=size, invalidate=0)["MiB_per_s"])
                    loc_fio.append(fio(big, "read", "1M", size=size, invalidate=0)["MiB_per_s"])
                shm = Path("/dev/shm") / f"fluidfed-bench-{os.getpid()}.bin"
                try:
                    shutil.copyfile(big, shm)
                    tmpfs_cat = median([cat_mib_s(shm) for _ in range(max(runs, 5))])
                finally:
                    shm.unlink(missing_ok=True)
                results["reread"] = {
                    "mount_cat_MiB_per_s": median(mnt_cat),
                    "local_cat_MiB_per_s": median(loc_cat),
                    "ratio": ratio(median(mnt_cat), median(loc_cat)),
                    "goal": ">= 0.90",
                    "context_tmpfs_cat_MiB_per_s": tmpfs_cat,
                    "context_fio_1M": {
                        "mount_MiB_per_s": median(mnt_fio),
                        "local_MiB_per_s": median(loc_fio),
                        "ratio": ratio(median(mnt_fio), median(loc_fio)),
                    },
                }
            # ttfb: a cold 4 KiB read through the mount vs a raw ranged GET
            if "ttfb" in only:
                mount_ttfb = []
                for key in ttfb_objects:
                    t0 = time.perf_counter()
                    with open(sc.mountpoint / key, "rb") as f:
                        f.read(4096)
                    mount_ttfb.append(time.perf_counter() - t0)
                urls = [asyncio.run(server.presign(f"data/{k}")) for k in ttfb_objects]
                raw_ms = asyncio.run(raw_ttfb(urls))
                results["ttfb"] = {
                    "mount_ms": round(statistics.median(mount_ttfb) * 1000, 2),
                    "raw_get_ms": round(raw_ms, 2),
                    "goal": "<= raw + 5 ms",
                }
            sc.stop()

        # (b) warm from a cache worker (disk tier, so its block files can be read directly)
        w = None
        if "warm" in only or "random" in only:
            w = warm_worker(root, mount, args.size_mib)
            procs.append(w)
            fill = sidecar(root, "fill", mount, [w.url])
            fio(fill.mountpoint / "big.bin", "read", "1M", size=size)
            fill.stop()
            # the worker's cache files on disk, as a worker filled earlier has them: else
            # the kernel writes the fill's 1 GiB back ~30 s later, in the middle of a run
            os.sync()
        if w is not None and "warm" in only:
            assert w.proc is not None
            files = [p for p in (root / "worker" / "ssd").rglob("*") if p.is_file()]
            direct: list[float] = []
            # same node: the sidecar reads the worker's block files (short-circuit);
            # another node: the same blocks over HTTP (short_circuit off)
            ways = {"same_node": True, "remote": False}
            trees = {"": str(Path(__file__).resolve().parents[1])}
            if args.against:  # each way from the other tree too, each tree first in turn
                trees["_against"] = str(Path(args.against).resolve())
            warm: dict[str, list[float]] = {k + t: [] for k in ways for t in trees}
            warm_cpu: dict[str, list[dict[str, float]]] = {k: [] for k in warm}
            for i in range(runs):
                t0 = time.perf_counter()
                n = sum(len(p.read_bytes()) for p in files)
                direct.append(n / 2**20 / (time.perf_counter() - t0))
                order = list(trees.items())
                order = order[i % len(order) :] + order[: i % len(order)]
                for (tag, tree), (way, short) in ((t, y) for y in ways.items() for t in order):
                    with pythonpath(tree if args.against else ""):
                        sc = sidecar(
                            root, f"warm-{way}{tag}{i}", mount, [w.url], short_circuit=short
                        )
                    way += tag
                    procs.append(sc)
                    assert sc.proc is not None
                    meter = CPU({"sidecar": sc.proc.pid, "worker": w.proc.pid})
                    got = fio(sc.mountpoint / "big.bin", "read", "1M", size=size)
                    warm[way].append(got["MiB_per_s"])
                    warm_cpu[way].append(meter.per_gib(size))
                    blocks_read = sc.status()["blocks"]
                    assert blocks_read["worker_hits"] > 0
                    assert (blocks_read["short_circuit"] > 0) == short
                    sc.stop()
            results["warm"] = {
                way: {
                    "mount_MiB_per_s": median(warm[way]),
                    "worker_block_files_MiB_per_s": median(direct),
                    "ratio": ratio(median(warm[way]), median(direct)),
                    "runs": [round(x) for x in warm[way]],
                    "cpu": median_cpu(warm_cpu[way]),
                    "cpu_runs": warm_cpu[way],
                }
                for way in warm
            }
            if args.against:
                results["warm"]["against"] = trees["_against"]
                results["warm"]["remote_ratio_to_against"] = ratio(
                    median(warm["remote"]), median(warm["remote_against"])
                )
            results["warm"]["goal"] = ">= 0.25 and >= 1 GB/s"
            results["warm"]["credential_check"] = credential_check(median(warm["remote"]))

        # random reads through a fresh mount backed by the warm worker, vs the local copy
        if w is not None and "random" in only:
            results["random"] = {}
            for bs in ("4k", "128k"):
                over_http = {"short_circuit": False} if args.random_over_http else {}
                sc = sidecar(root, f"rand{bs}", mount, [w.url], **over_http)
                procs.append(sc)
                through_r = fio(sc.mountpoint / "big.bin", "randread", bs, size=size, runtime=8)
                direct_r = fio(big, "randread", bs, size=size, runtime=8, invalidate=0)
                status = sc.status()
                results["random"][bs] = {
                    "mount_iops": through_r["iops"],
                    "local_iops": direct_r["iops"],
                    "ratio": ratio(through_r["iops"], direct_r["iops"]),
                    # where the READs were answered: blocks mapped from the worker's files
                    # here (short_circuit) or spans asked of it over HTTP (worker_hits)
                    "reads": status["reads"],
                    "reads_in_session": status["reads_in_session"],
                    "blocks": {
                        k: status["blocks"][k]
                        for k in ("local_hits", "worker_hits", "short_circuit", "worker_misses")
                    },
                }
                sc.stop()

        # metadata on many small files (a local directory as the UFS: this is the FUSE path)
        if "metadata" in only:
            many = root / "many"
            for i in range(args.files):
                d = many / f"d{i % 100:02d}"
                d.mkdir(parents=True, exist_ok=True)
                (d / f"f{i:05d}").write_bytes(b"x")
            sc = sidecar(root, "meta", {"uri": f"file://{many}"}, [])
            procs.append(sc)
            results["metadata"] = metadata(sc.mountpoint, many)
            sc.stop()
        if "fanout" in only:
            results["fanout"] = fanout(root, mount, args.size_mib, runs, procs)
    finally:
        for p in procs:
            p.close()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        results["load_average_end"] = os.getloadavg()  # 2 shared cores: how busy they were
        results["page_reporting_end"] = page_reporting()
        print(json.dumps(results, indent=2))
        if only == set(PARTS):
            out = Path(__file__).parent / "results"
            out.mkdir(exist_ok=True)
            (out / "read_path.json").write_text(json.dumps(results, indent=2))


def fanout(
    root: Path, mount: dict[str, Any], size_mib: int, runs: int, procs: list[Any]
) -> dict[str, Any]:
    """FANOUT sidecars on one node read the same file at once through one cache worker
    (over HTTP, as from another node): first empty (the worker fetches each block once for
    all of them), then warm; aggregate MiB/s and the worker's CPU per GiB delivered, against
    one sidecar reading MinIO alone in the same run."""
    size = size_mib * 2**20
    rows: dict[str, list[dict[str, float]]] = {}

    def together(scs: list[SidecarProcess], w: WorkerProcess | None) -> dict[str, float]:
        pids = {f"sidecar{i}": sc.proc.pid for i, sc in enumerate(scs) if sc.proc is not None}
        if w is not None and w.proc is not None:
            pids["worker"] = w.proc.pid
        meter = CPU(pids)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(scs)) as pool:
            list(pool.map(lambda sc: fio(sc.mountpoint / "big.bin", "read", "1M", size=size), scs))
        wall = time.perf_counter() - t0
        cpu = meter.per_gib(size * len(scs))
        got = {"aggregate_MiB_per_s": round(size * len(scs) / 2**20 / wall, 1)}
        got["sidecars_cpu_s_per_GiB"] = round(
            sum(v for k, v in cpu.items() if k.startswith("sidecar")), 2
        )
        got["worker_cpu_s_per_GiB"] = cpu.get("worker_cpu_s_per_GiB", 0.0)
        return got

    for run in range(runs):
        alone = sidecar(root, f"fan-alone{run}", mount, [])
        procs.append(alone)
        rows.setdefault("one sidecar, MinIO alone", []).append(together([alone], None))
        alone.stop()
        w = warm_worker(root, mount, size_mib, name=f"fan-worker{run}")
        procs.append(w)
        for phase in ("empty worker", "warm worker"):
            scs = [
                sidecar(root, f"fan{run}-{phase[:5]}{i}", mount, [w.url], short_circuit=False)
                for i in range(FANOUT)
            ]
            procs.extend(scs)
            rows.setdefault(f"{FANOUT} sidecars, {phase}", []).append(together(scs, w))
            for sc in scs:
                sc.stop()
        w.close()
    out: dict[str, Any] = {
        row: {k: median([x[k] for x in xs]) for k in xs[0]} for row, xs in rows.items()
    }
    base = out["one sidecar, MinIO alone"]["aggregate_MiB_per_s"]
    for row in out.values():
        row["vs_one_sidecar_alone"] = ratio(row["aggregate_MiB_per_s"], base)
    return out


def credential_check(remote_mib_s: float, n: int = 200_000) -> dict[str, Any]:
    """What the worker's credential check costs per block request (every warm remote read
    pays it; the same code as `agents.worker.server`: the remembered token, the reader's
    sub-path decision on the object's path), a first-time verify (HMAC-SHA256, once per
    token), and its share of a block's time at the measured warm remote rate."""
    key = credentials.new_key()
    claims = credentials.Claims(role="reader", dataset="bench", namespace="ns", sub_path="d")
    header = "Bearer " + credentials.sign(claims, key)
    verifier = credentials.Verifier([key])
    mounts = [Mount(uri="s3://b/p")]

    def per_block() -> None:
        got = verifier.claims(header)
        path = layout.dataset_path(mounts, 0, "d/big.bin")
        assert credentials.authorize(got, credentials.Action.READ_BLOCK, "bench", path) is None

    t0 = time.perf_counter()
    for _ in range(n):
        per_block()
    cached_us = (time.perf_counter() - t0) / n * 1e6
    token = header.removeprefix("Bearer ")
    t0 = time.perf_counter()
    for _ in range(n // 10):
        credentials.verify(token, [key])
    fresh_us = (time.perf_counter() - t0) / (n // 10) * 1e6
    block_us = BLOCK / 2**20 / remote_mib_s * 1e6 if remote_mib_s else 0.0
    return {
        "per_block_request_us": round(cached_us, 2),
        "first_verify_us": round(fresh_us, 2),
        "block_time_at_remote_rate_us": round(block_us),
        "share_of_block_time": round(cached_us / block_us, 5) if block_us else None,
        "goal": "within 10% of the read without it",
    }


def metadata(mnt: Path, direct: Path) -> dict[str, Any]:
    def rate(root: Path, op: str) -> float:
        paths = [
            root / f"d{i % 100:02d}" / f"f{i:05d}" for i in range(len(list(direct.rglob("f*"))))
        ]
        t0 = time.perf_counter()
        if op == "stat":
            for p in paths:
                os.stat(p)
        elif op == "open":
            for p in paths:
                os.close(os.open(p, os.O_RDONLY))
        else:
            for d in sorted(root.iterdir()):
                os.listdir(d)
            return 100 / (time.perf_counter() - t0)
        return len(paths) / (time.perf_counter() - t0)

    out: dict[str, Any] = {}
    out["cold_stat_per_s"] = round(rate(mnt, "stat"))
    for op in ("stat", "open", "readdir"):
        m, d = rate(mnt, op), rate(direct, op)
        out[op] = {"mount_per_s": round(m), "direct_per_s": round(d), "ratio": ratio(m, d)}
    out["goal"] = "warm stat >= 10,000/s"
    return out


if __name__ == "__main__":
    main()
