"""fluidfed against the FUSE clients run on S3 today, side by side: s3fs, rclone and JuiceFS
on the same MinIO (loopback), in the same run, clients interleaved, medians of --runs.

    python bench/peers.py [--quick] [--size-mib 1024] [--files 20000] [--dirs 200]
        [--flat 10000] [--runs 3] [--only seq,small,meta,fill] [--clients fluidfed,s3fs,...]
        [--before TREE] [--asyncio]

    seq    one big object read sequentially with fio (1 MiB requests):
           cold   a fresh mount, no cache, from MinIO; vs the raw ranged-GET loop of the
                  same parallelism as fluidfed's read-ahead (bench/read_path.py's)
           warm   a fresh mount over each client's own cache, filled before, its files
                  read into the page cache first: fluidfed's cache worker on this node
                  (short-circuit) and as if on another (HTTP); then again with the cache
                  files dropped from the page cache (fluidfed: on this node), each client
                  from its disk (the peers write their caches through the page cache,
                  a worker its large blocks past it: without these steps the peers' warm
                  rows read memory and fluidfed's first warm run the disk); each such
                  row also as a share of the same file read from the local disk (fio,
                  its pages dropped) just before it (`of_local_disk`): the disk's rate
                  moves by up to 2x within an hour on this VM
           reread the same mount again, the kernel's page cache warm
           fill   the first read of each client filling its empty cache (fluidfed: through
                  an empty cache worker), --runs times, the clients taking turns (`--only
                  fill`: these rows alone)
    small  20,000 files of 128 KiB in 200 directories read whole by 8 threads (--readers; a
           DataLoader's 8 workers): files/s, p50/p99 per file, CPU per 1,000 files
           cold   fresh mount, no cache (fluidfed also through an empty cache worker)
           warm   again on the same mount (page cache)
           dropped a fresh mount over each client's own disk cache, filled before, its
                  files dropped from the page cache (fluidfed: the worker's disk tier)
           and the same files on local disk, warm and dropped, as the ceiling
    meta   open+close per second of every small file (twice: new and known names) and a
           readdir of one directory of 10,000 entries, through a fresh mount

CPU seconds are every thread of each client's whole process tree (from /proc; fluidfed
with a worker: sidecar + worker), robust to the other builds sharing this machine's 2
cores; the load average is in the output. The peers' binaries are cached outside the
repository (~/.cache/fluidfed/peers): s3fs and rclone are Debian's packages, JuiceFS is
built once from the Go module proxy's source (`go build`: `go install` refuses its
replace directives). Page caches are dropped per file (fadvise), never machine-wide.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import read_path as rp

from devkit.local import processes
from devkit.local.s3 import CREDENTIALS, PASSWORD, USER, S3Server

READERS = rp.READERS  # --readers: threads reading the small files
IO = "1M"  # --io-kib: each read's size, the large file
SKEW = 0  # --skew-kib: where in the large file the reads start
OWN_DISK = "fluidfed-disk"  # fluidfed's sidecar with a disk cache of its own (`NOTES`)
DISK_TIER_MIB = 8192  # ... its size: all a run's data, as the peers' caches hold it
FREE_SPACE_RATIO = "0.01"  # JuiceFS's floor of free disk for its cache (see `Bench.open`)

PEERS_DIR = Path(os.environ.get("FLUIDFED_PEERS", Path.home() / ".cache/fluidfed/peers"))
JUICEFS = "github.com/juicedata/juicefs"
JUICEFS_VERSION = "v1.4.1"
# JuiceFS's own "lite" build (its Makefile) with SQLite kept: no other object stores
JUICEFS_TAGS = (
    "nogateway,nowebdav,nocos,nobos,nohdfs,noibmcos,noobs,nooss,noqingstor,nosftp,noswift,"
    "noazure,nogs,noufile,nob2,nonfs,nodragonfly,nomysql,nopg,notikv,nobadger,noetcd,nocifs,"
    "nostorj,noqiniu,notos,noks3"
)
PREFIX = "data"  # the dataset's objects in the bucket

# where a comparison is not like for like
NOTES = {
    "fluidfed": (
        "4 MiB blocks, 4 blocks read ahead (5 GETs in flight), kernel read-ahead 1 MiB, "
        "keep_cache; warm: a cache worker's disk tier on this node's disk, read by the "
        "sidecar from the block files (same node) or over plain HTTP on loopback (remote; "
        "a cluster's workers serve HTTPS: bench/data_tls.py); every block's CRC checked"
    ),
    "fluidfed-disk": (
        "fluidfed's sidecar alone, no cache worker, with a disk tier of its own on this "
        "node's disk (`cache` of the sidecar: one SSD tier), as the peers keep theirs: "
        "like for like with their own-cache rows (a sidecar mounted by hand where no "
        "worker runs; a cluster's shared "
        "cache is the worker's, the fluidfed rows); cold rows as fluidfed's"
    ),
    "s3fs": (
        "cold: no use_cache, ranged GETs of the kernel's read-ahead size; warm: use_cache, "
        "whole objects on this node's disk; no kernel_cache, so re-reads reach s3fs"
    ),
    "rclone": (
        "cold: --vfs-cache-mode off, one streaming GET per open file with 128 MiB chunks; "
        "warm: --vfs-cache-mode full on this node's disk"
    ),
    "juicefs": (
        "reads its own 4 MiB chunk objects (the data written through its mount), not the "
        "dataset's objects; metadata in SQLite on local disk (no S3 LIST, no HEAD per "
        "open); cold: --cache-size 0; warm: its disk cache on this node's disk, its "
        "blocks' checksums checked (--verify-cache-checksum extend, the default), "
        f"--free-space-ratio {FREE_SPACE_RATIO} (at its default, 0.1, it evicted its cache on "
        "this VM's root filesystem: 11% free to non-root users)"
    ),
}


def juicefs_binary() -> Path:
    """JuiceFS built from the Go module proxy's source, once."""
    out = PEERS_DIR / f"juicefs-{JUICEFS_VERSION}"
    if out.exists():
        return out
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    print(f"building JuiceFS {JUICEFS_VERSION} (minutes, once) ...", file=sys.stderr)
    got = subprocess.run(
        ["go", "mod", "download", "-json", f"{JUICEFS}@{JUICEFS_VERSION}"],
        cwd=PEERS_DIR,
        check=True,
        capture_output=True,
        text=True,
    )
    src = json.loads(got.stdout)["Dir"]
    tmp = out.with_suffix(".tmp")
    subprocess.run(
        ["go", "build", "-tags", JUICEFS_TAGS, "-ldflags", "-s -w", "-o", str(tmp), "."],
        cwd=src,
        check=True,
    )
    tmp.rename(out)
    return out


class Mounted:
    """A mounted client: its mountpoint, the processes whose CPU it costs, how to end it."""

    def __init__(self, mountpoint: Path, pids: list[int], close: Callable[[], object]) -> None:
        self.mountpoint = mountpoint
        self.pids = pids
        self._close = close
        self._cpu0 = self.cpu()

    def cpu(self) -> float:
        return sum(rp.tree_cpu_seconds(p) for p in self.pids)

    def used(self) -> float:
        """CPU seconds since the last call (or the mount)."""
        now = self.cpu()
        used, self._cpu0 = now - self._cpu0, now
        return used

    def close(self) -> None:
        self._close()


def unmount(mnt: Path, proc: subprocess.Popen[bytes]) -> None:
    """Unmount a peer and wait for its process; kill and detach lazily if it hangs."""
    subprocess.run(["fusermount", "-u", str(mnt)], check=False, capture_output=True)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    processes.force_unmount(mnt)


def peer_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a peer: the AWS SDKs' CA bundle left out (plain HTTP on loopback;
    rclone refuses to start with one set)."""
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    return {**env, **extra}


def start_peer(argv: list[str], mnt: Path, log: Path, env: dict[str, str]) -> Mounted:
    mnt.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, env=peer_env(env))
    deadline = time.monotonic() + 60
    while not processes.is_mounted(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            unmount(mnt, proc)
            raise RuntimeError(f"{argv[0]} did not mount: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    os.stat(mnt)
    return Mounted(mnt, [proc.pid], lambda: unmount(mnt, proc))


class Bench:
    """The object store, the datasets, and a mount of each client (`cache` on or off)."""

    def __init__(self, root: Path, server: S3Server) -> None:
        self.root = root
        self.server = server
        self.mount = {"uri": server.uri(PREFIX), "options": {"endpoint": server.endpoint}}
        self.passwd = root / "s3fs.passwd"
        self.passwd.write_text(f"{USER}:{PASSWORD}\n")
        self.passwd.chmod(0o600)
        self.juicefs = ""  # the JuiceFS binary, once the volume is formatted and loaded
        self.meta = f"sqlite3://{root / 'juicefs.db'}"
        self.count = 0
        self.generation: dict[str, int] = {}  # of each client's cache directory
        self.settle = 0.0  # seconds between a mount and its first read filling its cache
        # fluidfed clients: name -> the source tree its processes run from ("": this one)
        self.trees: dict[str, str] = {"fluidfed": ""}
        # ... and the environment they run with besides this one's
        self.envs: dict[str, dict[str, str]] = {}

    def caches(self, client: str) -> Path:
        return self.root / "caches" / f"{client}{self.generation.get(client, 0)}"

    def fresh_cache(self, client: str) -> None:
        """The client's next `open(cache=True)` starts from an empty cache directory (the
        old one stays on disk till the end: deleting files costs the next writer on this
        VM's ext4, see bench/cold_worker.py --keep)."""
        self.generation[client] = self.generation.get(client, 0) + 1

    def _next(self, client: str) -> tuple[Path, Path]:
        self.count += 1
        d = self.root / "mounts" / f"{client}{self.count}"
        d.mkdir(parents=True)
        return d / "mnt", d / "log"

    def open(self, client: str, cache: bool) -> Mounted:
        mnt, log = self._next(client)
        cdir = self.caches(client) if cache else mnt.parent / "nocache"
        cdir.mkdir(parents=True, exist_ok=True)
        if client == "s3fs":
            opts = f"ro,url={self.server.endpoint},use_path_request_style,passwd_file={self.passwd}"
            if cache:
                opts += f",use_cache={cdir}"
            argv = ["s3fs", f"{self.server.bucket}:/{PREFIX}", str(mnt), "-f", "-o", opts]
            return start_peer(argv, mnt, log, {})
        if client == "rclone":
            argv = ["rclone", "mount", f":s3:{self.server.bucket}/{PREFIX}", str(mnt)]
            argv += ["--read-only", "--cache-dir", str(cdir)]
            argv += ["--vfs-cache-mode", "full" if cache else "off"]
            env = {
                "RCLONE_CONFIG": str(self.root / "rclone.conf"),
                "RCLONE_S3_PROVIDER": "Minio",
                "RCLONE_S3_ENDPOINT": self.server.endpoint,
                "RCLONE_S3_ACCESS_KEY_ID": USER,
                "RCLONE_S3_SECRET_ACCESS_KEY": PASSWORD,
            }
            return start_peer(argv, mnt, log, env)
        if client == "juicefs":
            argv = [self.juicefs, "mount", self.meta, str(mnt), "--no-usage-report"]
            argv += ["--cache-dir", str(cdir), "--cache-size", "102400" if cache else "0"]
            # JuiceFS evicts its cache, checking every second, while less than a tenth of
            # the disk is free to non-root users (statfs's f_bavail; `--free-space-ratio`,
            # default 0.1): on this VM's root filesystem (11% free to non-root, much of the
            # rest held for root) the caches of one run took it under, and its warm rows
            # then read from MinIO what it had evicted. The other clients keep no such
            # floor (s3fs's ensure_diskfree is 0 by default, rclone 1.60 has none; fluidfed's
            # disk tier has its size)
            argv += ["--free-space-ratio", FREE_SPACE_RATIO]
            return start_peer(argv, mnt, log, {})
        if client == OWN_DISK:
            return self.own_disk(cdir if cache else None)
        raise ValueError(client)

    def own_disk(self, cdir: Path | None) -> Mounted:
        """fluidfed's sidecar with a disk tier of its own at `cdir` (None: none), no
        worker: where the peers keep their caches, and as they do."""
        self.count += 1
        tier = {"medium": "SSD", "quota": f"{DISK_TIER_MIB}MiB", "path": str(cdir)}
        extra = {"cache": [tier]} if cdir is not None else {}
        sc = rp.sidecar(self.root, f"sc{self.count}-{OWN_DISK}", self.mount, [], **extra)
        assert sc.proc is not None
        return Mounted(sc.mountpoint, [sc.proc.pid], sc.stop)

    def fluidfed(
        self,
        client: str,
        workers: list[processes.WorkerProcess],
        short_circuit: bool = True,
    ) -> Mounted:
        self.count += 1
        with pythonpath(self.trees[client], self.envs.get(client, {})):
            sc = rp.sidecar(
                self.root,
                f"sc{self.count}-{client}",
                self.mount,
                [w.url for w in workers],
                short_circuit=short_circuit,
            )
        assert sc.proc is not None
        pids = [sc.proc.pid] + [w.proc.pid for w in workers if w.proc is not None]
        return Mounted(sc.mountpoint, pids, sc.stop)

    def mount_cold(self, client: str) -> Mounted:
        """A fresh mount without any cache: fluidfed without workers."""
        return self.fluidfed(client, []) if client in self.trees else self.open(client, False)

    def worker(self, client: str, name: str, size_mib: int) -> processes.WorkerProcess:
        self.count += 1
        with pythonpath(self.trees[client], self.envs.get(client, {})):
            return rp.warm_worker(self.root, self.mount, size_mib, name=f"{name}{self.count}")

    def load_juicefs(self, local: Path) -> None:
        """Format a JuiceFS volume (SQLite metadata, MinIO storage) and copy the dataset
        in through its mount: JuiceFS reads only data it wrote itself."""
        binary = str(juicefs_binary())
        bucket = f"{self.server.endpoint}/juicefs"
        argv = [binary, "format", "--storage", "minio", "--bucket", bucket]
        argv += ["--access-key", USER, "--secret-key", PASSWORD, self.meta, "bench"]
        subprocess.run(argv, check=True, capture_output=True)
        self.juicefs = binary
        mnt, log = self._next("juicefs-load")
        argv = [binary, "mount", self.meta, str(mnt), "--no-usage-report", "--cache-size", "0"]
        argv += ["--cache-dir", str(mnt.parent / "cache")]
        m = start_peer(argv, mnt, log, {})
        try:
            for p in local.iterdir():
                if p.is_dir():
                    shutil.copytree(p, mnt / p.name)
                else:
                    shutil.copyfile(p, mnt / p.name)
        finally:
            m.close()


pythonpath = rp.pythonpath  # (cold_worker.py uses it from here)


def cache_held(b: Bench, client: str, worker: processes.WorkerProcess | None = None) -> float:
    """MiB a client's cache holds on disk after a fill (its files' allocated blocks: s3fs's
    are sparse), once its writes are done: each fill row says how much of the data the
    warm and dropped rows then find cached."""
    if worker is not None:
        worker.wait_written()
        where = worker.dir / "ssd"  # its disk tier (`read_path.warm_worker`), not its logs
    else:
        where = b.caches(client)
    held = 0
    for top, _, names in os.walk(where):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                held += os.lstat(os.path.join(top, name)).st_blocks * 512
    return round(held / 2**20, 1)


T = TypeVar("T")


def rotated(clients: list[T], r: int) -> list[T]:
    """The clients in the order of run `r`: each one goes first in turn, so none is
    always measured on the machine the one before it left (page cache, writeback)."""
    k = r % len(clients)
    return clients[k:] + clients[:k]


def measure(m: Mounted, fn: Callable[[], dict[str, Any]], per: float, unit: str) -> dict[str, Any]:
    """`fn`'s figures with the CPU seconds the client spent on it, per `unit`."""
    m.used()
    got = fn()
    got[f"cpu_s_per_{unit}"] = round(m.used() / per, 3)
    return got


def seq_runs(
    b: Bench, clients: list[str], local: Path, size: int, runs: int, fill_only: bool = False
) -> dict[str, Any]:
    big = "big.bin"
    gib = (size - SKEW) / 2**30
    url = asyncio.run(b.server.presign(f"{PREFIX}/{big}"))

    def fio(m: Mounted, invalidate: int = 1) -> dict[str, Any]:
        return measure(
            m,
            lambda: {
                "MiB_per_s": rp.fio(
                    m.mountpoint / big, "read", IO, size=size, invalidate=invalidate, offset=SKEW
                )["MiB_per_s"]
            },
            gib,
            "GiB",
        )

    out: dict[str, list[dict[str, Any]]] = {}

    def add(row: str, got: dict[str, Any]) -> None:
        out.setdefault(row, []).append(got)

    def dropped(row: str, m: Mounted) -> None:
        """A read of a cache whose files were dropped from the page cache, against the
        same file read from the local disk just before (fio drops its pages first): this
        disk's rate moves by up to 2x within an hour here, and the clients' dropped rows
        are measured minutes apart (`of_local_disk`: the client's share of it)."""
        disk = rp.fio(local / big, "read", "1M", size=size)["MiB_per_s"]
        add("local disk, page cache dropped (before each dropped row)", {"MiB_per_s": disk})
        got = fio(m)
        got["of_local_disk"] = round(got["MiB_per_s"] / disk, 2)
        add(row, got)

    workers: dict[str, processes.WorkerProcess] = {}
    old: list[processes.WorkerProcess] = []
    try:
        # fill each client's cache (a cold read that also fills it; not counted as cold:
        # the peers write to their disk caches while reading), into an empty cache each
        # round, the clients taking turns going first (each meets the machine as the one
        # before left it: page cache, memory freed or not); the last round's caches serve
        # the warm rows
        for r in range(runs):
            for c in rotated(clients, r):
                if c in b.trees:
                    if c in workers:
                        old.append(workers[c])
                        workers[c].close()
                    w = workers[c] = b.worker(c, "seq", size // 2**20)
                    m = b.fluidfed(c, [w])
                else:
                    b.fresh_cache(c)
                    m = b.open(c, cache=True)
                row = f"{c}: cold, filling its cache" + (" (a worker)" if c in b.trees else "")
                try:
                    time.sleep(b.settle)
                    add(row, fio(m))
                finally:
                    m.close()
                out[row][-1]["cache_MiB"] = cache_held(b, c, workers.get(c))
        for w in workers.values():
            w.wait_written()  # its last blocks' files, or they drop what is loaded below
        os.sync()
        for r in range(0 if fill_only else runs):
            mib_s = asyncio.run(rp.raw_get_loop(url, size, rp.READAHEAD + 1))
            add("raw ranged-GET loop", {"MiB_per_s": round(mib_s, 1)})
            for c in rotated(clients, r):
                m = b.mount_cold(c)
                try:
                    add(f"{c}: cold", fio(m))
                    add(f"{c}: re-read, page cache", fio(m, invalidate=0))
                finally:
                    m.close()
                # every client's cache files in the page cache for the warm rows, put there
                # by plain reads, then dropped from it: a peer writes its cache through the
                # page cache, a worker its large blocks past it, so each meets both states
                # alike (dropped first: the last round's "read after that one" left
                # fluidfed's block files in huge folios, which plain reads keep as they are)
                cache = workers[c].dir if c in workers else b.caches(c)
                rp.drop_cached(cache)
                rp.load_cached(cache)
                if c not in workers:
                    m = b.open(c, cache=True)
                    try:
                        add(f"{c}: warm, own cache", fio(m))
                    finally:
                        m.close()
                    rp.drop_cached(cache)
                    m = b.open(c, cache=True)
                    try:
                        dropped(f"{c}: warm, own cache, page cache dropped", m)
                    finally:
                        m.close()
                    m = b.open(c, cache=True)
                    try:
                        add(f"{c}: warm, own cache, the read after that one", fio(m))
                    finally:
                        m.close()
                    continue
                for way, here in (("same node", True), ("remote, HTTP", False)):
                    m = b.fluidfed(c, [workers[c]], short_circuit=here)
                    try:
                        add(f"{c}: warm, worker {way}", fio(m))
                    finally:
                        m.close()
                rp.drop_cached(cache)
                m = b.fluidfed(c, [workers[c]], short_circuit=True)
                try:
                    dropped(f"{c}: warm, worker same node, page cache dropped", m)
                finally:
                    m.close()
                # the next epoch on the node: the page cache as that read from the disk
                # left it (a peer: its cache files read through it; fluidfed: large block
                # files mapped in huge folios, small ones read past it)
                m = b.fluidfed(c, [workers[c]], short_circuit=True)
                try:
                    add(f"{c}: warm, worker same node, the read after that one", fio(m))
                finally:
                    m.close()
    finally:
        for w in [*workers.values(), *old]:
            w.close()
    return {row: summarize(xs) for row, xs in out.items()}


def small_runs(
    b: Bench, clients: list[str], local: Path, keys: list[str], runs: int
) -> dict[str, Any]:
    n = len(keys)
    k = n / 1000
    total_mib = n * rp.SMALL_FILE // 2**20 + 1
    out: dict[str, list[dict[str, Any]]] = {}

    def add(row: str, got: dict[str, Any]) -> None:
        out.setdefault(row, []).append(got)

    def read(m: Mounted) -> dict[str, Any]:
        paths = [m.mountpoint / key for key in keys]
        return measure(m, lambda: rp.read_whole(paths, READERS), k, "1000_files")

    for c in clients:
        if c not in b.trees:  # fill each peer's own cache once
            before = cache_held(b, c)  # (the sequential rows' file, when they ran)
            m = b.open(c, cache=True)
            try:
                add(f"{c}: cold, filling its cache", read(m))
            finally:
                m.close()
            held = cache_held(b, c) - before
            out[f"{c}: cold, filling its cache"][-1]["cache_MiB"] = round(held, 1)
    os.sync()
    for r in range(runs):
        local_paths = [local / key for key in keys]
        rp.drop_cached(local / "small")
        add("local disk, page cache dropped", rp.read_whole(local_paths, READERS))
        add("local disk, page cache", rp.read_whole(local_paths, READERS))
        for c in rotated(clients, r):
            m = b.mount_cold(c)
            try:
                add(f"{c}: cold", read(m))
                add(f"{c}: warm, page cache", read(m))
            finally:
                m.close()
            if c not in b.trees:
                rp.drop_cached(b.caches(c))
                m = b.open(c, cache=True)
                try:
                    add(f"{c}: page cache dropped, own disk cache", read(m))
                finally:
                    m.close()
                continue
            w = b.worker(c, "small", total_mib)
            try:
                m = b.fluidfed(c, [w], short_circuit=False)
                row = f"{c}: cold, through an empty cache worker (HTTP)"
                try:
                    add(row, read(m))
                finally:
                    m.close()
                out[row][-1]["cache_MiB"] = cache_held(b, c, w)
                for way, sc in (("same node", True), ("remote, HTTP", False)):
                    rp.drop_cached(w.dir)
                    m = b.fluidfed(c, [w], short_circuit=sc)
                    try:
                        add(f"{c}: page cache dropped, worker disk tier, {way}", read(m))
                    finally:
                        m.close()
            finally:
                # (its block files stay on disk till the end, as the peers' caches do
                # (`fresh_cache`; --runs times the small files' size): removed here, they
                # cost the next round's first read through a worker ext4's search past
                # freshly freed inodes)
                w.close()
    return {row: summarize(xs) for row, xs in out.items()}


def meta_runs(
    b: Bench, clients: list[str], keys: list[str], flat: int, runs: int
) -> dict[str, Any]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in range(runs):
        for c in rotated(clients, r):
            m = b.fluidfed(c, []) if c in b.trees else b.open(c, cache=True)
            try:
                paths = [m.mountpoint / key for key in keys]
                first = rp.open_close_per_s(paths)
                again = rp.open_close_per_s(paths)
                entries, secs = rp.readdir_s(m.mountpoint / "flat")
                assert entries == flat, (c, entries)
                out.setdefault(c, []).append(
                    {
                        "open_close_per_s_first": round(first),
                        "open_close_per_s_again": round(again),
                        "readdir_entries_per_s": round(entries / secs),
                    }
                )
            finally:
                m.close()
    return {row: summarize(xs) for row, xs in out.items()}


def summarize(xs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the runs, and the runs' headline figure."""
    keys = xs[0].keys()
    got: dict[str, Any] = {k: round(statistics.median(x[k] for x in xs), 3) for k in keys}
    head = next(iter(keys))
    got["runs"] = [x[head] for x in xs]
    return got


def table(title: str, rows: dict[str, Any]) -> str:
    cols = [*dict.fromkeys(k for r in rows.values() for k in r if k != "runs"), "runs"]
    lines = [f"### {title}", "", "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


PARTS = ("seq", "small", "meta")  # and "fill": of "seq", only the first read filling a cache
CLIENTS = ("fluidfed", OWN_DISK, "s3fs", "rclone", "juicefs")


def main() -> None:
    global READERS, IO, SKEW
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="256 MiB, 2,000 small files, 2 runs")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--dirs", type=int, default=200)
    ap.add_argument("--flat", type=int, default=10_000, help="entries of the readdir")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--readers", type=int, default=READERS, help="threads reading small files")
    rp.add_fio_args(ap, "the large file")
    ap.add_argument("--only", default=",".join(PARTS))
    ap.add_argument("--clients", default=",".join(CLIENTS))
    ap.add_argument("--name", default="", help="of the result files in bench/results/")
    ap.add_argument(
        "--before",
        metavar="TREE",
        help="also fluidfed from another source tree (a checkout of main), as 'fluidfed-before'",
    )
    ap.add_argument(
        "--asyncio",
        action="store_true",
        help="also fluidfed from this tree on asyncio's loop instead of uvloop "
        "(FLUIDFED_EVENT_LOOP=asyncio), as 'fluidfed-asyncio'",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds each client's mount waits before its first read filling its cache, "
        "so that memory the client before freed has been handed back to this VM's host "
        "(free page reporting, ~2 s) whoever starts faster (4 s changed no figure in one run)",
    )
    args = ap.parse_args()
    READERS = args.readers
    IO, SKEW = f"{args.io_kib}k", args.skew_kib * 1024
    if args.quick:
        args.size_mib, args.files, args.dirs, args.flat = 256, 2000, 20, 2000
    only = set(args.only.split(","))
    clients = args.clients.split(",")
    for flag, client in ((args.asyncio, "fluidfed-asyncio"), (args.before, "fluidfed-before")):
        if flag:
            clients.insert(clients.index("fluidfed") + 1 if "fluidfed" in clients else 0, client)
    os.environ.update(CREDENTIALS)
    size = args.size_mib * 2**20
    results: dict[str, Any] = {
        "size_mib": args.size_mib,
        "io_kib": args.io_kib,
        "skew_kib": args.skew_kib,
        "files": args.files,
        "dirs": args.dirs,
        "runs": args.runs,
        "cores": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "page_reporting_start": rp.page_reporting(),
        "notes": {c: NOTES[c] for c in clients if c in NOTES},
        "before": args.before or "",
        "asyncio": args.asyncio,
        "versions": {},
    }
    if "juicefs" in clients:
        juicefs_binary()  # before anything starts: the build is long the first time
    root = Path(tempfile.mkdtemp(prefix="fluidfed-peers-"))
    server = S3Server(root / "minio").start()
    b = Bench(root, server)
    b.settle = args.settle
    if args.before:
        b.trees["fluidfed-before"] = str(Path(args.before).resolve())
    if args.asyncio:
        b.trees["fluidfed-asyncio"] = ""
        b.envs["fluidfed-asyncio"] = {"FLUIDFED_EVENT_LOOP": "asyncio"}
    keys = rp.small_file_keys(args.files, args.dirs)
    try:
        local = root / "local"
        local.mkdir()
        with open(local / "big.bin", "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(2**20))
        rp.write_small_files(local, keys)
        for i in range(args.flat):
            (local / "flat").mkdir(exist_ok=True)
            (local / "flat" / f"e{i:05d}").write_bytes(b"x")
        print("uploading to MinIO ...", file=sys.stderr)
        asyncio.run(upload(server, local))
        if "juicefs" in clients:
            print("loading JuiceFS ...", file=sys.stderr)
            b.load_juicefs(local)
        results["versions"] = versions(b, clients)
        tables = []
        if "seq" in only or "fill" in only:
            results["seq"] = seq_runs(
                b, clients, local, size, args.runs, fill_only="seq" not in only
            )
            what = f"{args.size_mib} MiB sequential, fio {args.io_kib} KiB"
            if args.skew_kib:
                what += f" from {args.skew_kib} KiB on"
            tables.append(table(what, results["seq"]))
        if "small" in only:
            results["small"] = small_runs(b, clients, local, keys, args.runs)
            title = f"{args.files} files of 128 KiB, {args.dirs} dirs, {READERS} readers"
            tables.append(table(title, results["small"]))
        if "meta" in only:
            results["meta"] = meta_runs(b, clients, keys, args.flat, args.runs)
            tables.append(table("metadata", results["meta"]))
    finally:
        for mnt in (root / "mounts").glob("*/mnt"):
            processes.force_unmount(mnt)
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    results["load_average_end"] = os.getloadavg()
    results["page_reporting_end"] = rp.page_reporting()
    print(json.dumps(results, indent=2))
    print("\n".join(tables))
    print(f"load average: start {results['load_average_start']}, end {os.getloadavg()}")
    start, end = results["page_reporting_start"], results["page_reporting_end"]
    if start and end:
        print(
            f"free page reporting: order {start['order']} (above 10: held off), "
            f"{end['reported_MiB'] - start['reported_MiB']} MiB handed to the host meanwhile"
        )
    for c, note in results["notes"].items():
        print(f"- {c}: {note}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    name = args.name or ("peers-quick" if args.quick else "peers")
    (out / f"{name}.json").write_text(json.dumps(results, indent=2))
    (out / f"{name}.md").write_text("\n".join(tables))


async def upload(server: S3Server, local: Path, batch: int = 256) -> None:
    """Every file under `local` as an object under PREFIX, a batch at a time in memory."""
    files = [p for p in sorted(local.rglob("*")) if p.is_file()]
    for i in range(0, len(files), batch):
        part = {str(p.relative_to(local)): p.read_bytes() for p in files[i : i + batch]}
        await server.upload(part, prefix=PREFIX)


def versions(b: Bench, clients: list[str]) -> dict[str, str]:
    argv = {"s3fs": ["s3fs", "--version"], "rclone": ["rclone", "version"]}
    if b.juicefs:
        argv["juicefs"] = [b.juicefs, "--version"]
    out = {}
    for c in clients:
        if c in argv:
            got = subprocess.run(argv[c], capture_output=True, text=True).stdout
            out[c] = got.splitlines()[0] if got else "?"
    return out


if __name__ == "__main__":
    main()
