"""The floor of a FUSE server's CPU for sequential 1 MiB reads on this machine: a compiled
libfuse3 server (bench/fuse_floor.c) against fluidfed's sidecar, each answering every READ
from its own memory, the kernel's page cache dropped before each read. Whether a native
data plane would save the sidecar's CPU, and how much of it is the kernel's anyway.

    python bench/fuse_floor.py [--size-mib 1024] [--runs 3] [--variants ...] [--out FILE]

Root only (mounts, /proc/sys/vm/drop_caches, the mount's read_ahead_kb). On this shared
machine run it under the bench lock, with free page reporting held off (bench/vm_pages.py):

    PYTHONPATH=. flock /tmp/fluidfed-bench.lock python3 bench/vm_pages.py --hold -- \\
        python3 bench/fuse_floor.py --size-mib 1024 --runs 3

    mem-1t          fuse_floor -s: one thread (fuse_session_loop), `data` generated in
                    memory at start, each READ answered with fuse_reply_buf (libfuse
                    writev()s it to /dev/fuse: the kernel copies it into the page cache)
    mem-mt          the same, multi-threaded (fuse_session_loop_mt)
    splice-cached   fuse_floor --splice FILE, multi-threaded: each READ answered with
                    fuse_reply_data of FILE's range (FUSE_BUF_IS_FD|FUSE_BUF_FD_SEEK, splice
                    write on: libfuse splices FILE -> pipe -> /dev/fuse), FILE read into
                    the page cache after the drop; /proc/sys/fs/pipe-max-size raised to
                    2 MiB meanwhile (put back after each run), see below
    splice-dropped  the same with FILE left out of the page cache (read from the disk)
    mmap-cached     fuse_floor --mmap FILE, multi-threaded: each READ answered with
                    fuse_reply_buf from a shared mapping of FILE (in the page cache after
                    the drop): writev of page-cache pages, as the native session answers
                    a warm block file; against splice-cached, what splicing would save it
    fallback-cached splice-cached with pipe-max-size as found (1 MiB by default): libfuse
                    grows its pipe to the reply + 3 pages, which is above that, and a root
                    without CAP_SYS_RESOURCE (this machine's; a pod's by default) may not;
                    so it falls back to pread() into a fresh malloc'd buffer + writev(), two
                    copies and the buffer's page faults per READ ("spliced" says which)
    fluidfed        `fluidfed sidecar mount` (bench/read_path.py's sidecar, MinIO on
                    loopback, no workers) with a memory tier larger than the file, the file
                    read through the mount once first (every block in the sidecar's memory),
                    then the drop: every READ answered by Python from memory

Each run: a fresh mount, its read_ahead_kb raised to 1024 (as sidecar/mount.py does, so
the kernel sends 1 MiB READs), `echo 1 > /proc/sys/vm/drop_caches`, then `fio --rw=read
--bs=1M --ioengine=psync` of the whole file. Figures, medians of --runs runs with the
variants taking turns going first: MiB/s (fio); the server's CPU seconds per GiB read
(utime + stime of all its threads, /proc/PID/stat) and of that the system part (the
kernel's work in the server's threads: /dev/fuse reads and writes, the reply's copy into
the page cache, splice); fio's own CPU per GiB (the reader's side of the same copy,
context); the READs the server answered per GiB (1024: 1 MiB each). For fluidfed also the
blocks it fetched from MinIO during the measured read (0: all from memory).

Where the time goes: `perf record -g -p PID` of the server during the read (not done
here). In memory mode nearly all of it is the kernel's memcpy in fuse_dev_write ->
fuse_copy_folio, the reply's one copy into the page cache.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

import peers
import read_path as rp

from devkit.local.s3 import CREDENTIALS, S3Server
from fluidfed import aio

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "fuse_floor.c"
VARIANTS = [
    "mem-1t",
    "mem-mt",
    "splice-cached",
    "splice-dropped",
    "fallback-cached",
    "mmap-cached",
    "fluidfed",
]
PIPE_MAX = Path("/proc/sys/fs/pipe-max-size")
SPLICE_PIPE = 2 * 2**20  # pipe-max-size for the splice variants: a 1 MiB reply fits
READ_AHEAD_KIB = 1024


def compile_server(out: Path) -> Path:
    """bench/fuse_floor.c built with -O2 against libfuse3, into `out`."""
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "fuse3"], check=True, capture_output=True, text=True
    ).stdout.split()
    binary = out / "fuse_floor"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(binary), str(SOURCE), *flags], check=True)
    return binary


def cpu(pid: int) -> tuple[float, float]:
    """(user + system, system) CPU seconds of a process, all its threads."""
    return rp.cpu_seconds(pid), rp.system_seconds(pid)


def drop_caches() -> None:
    """Every clean page-cache page of the machine, the FUSE file's too: the kernel must ask
    the server for every block again (the mounts' files are open only while fio reads)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("1")


def read_whole(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(2**22):
            pass


def raise_readahead(mountpoint: Path) -> int:
    """The mount's read_ahead_kb raised to READ_AHEAD_KIB; returns what it was before."""
    dev = os.stat(mountpoint).st_dev
    path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    before = int(path.read_text())
    path.write_text(str(READ_AHEAD_KIB))
    return before


def fio(path: Path, size_mib: int) -> dict[str, float]:
    """Sequential 1 MiB reads of the whole file: MiB/s and fio's own CPU per GiB."""
    argv = [
        "fio",
        "--name=r",
        f"--filename={path}",
        "--readonly",  # never lay out a file of its own where a mount went away
        "--rw=read",
        "--bs=1M",
        f"--size={size_mib}M",
        "--ioengine=psync",
        "--output-format=json",
    ]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]
    secs = job["read"]["runtime"] / 1000
    gib = job["read"]["io_bytes"] / 2**30
    assert gib * 1024 >= size_mib, f"fio read {gib} GiB of {size_mib} MiB"
    return {
        "MiB_per_s": round(job["read"]["bw_bytes"] / 2**20, 1),
        "fio_cpu_s_per_GiB": round((job["usr_cpu"] + job["sys_cpu"]) / 100 * secs / gib, 3),
    }


def measure(pid: int, path: Path, size_mib: int) -> dict[str, Any]:
    """fio of `path` with the CPU per GiB that the server `pid` spent meanwhile."""
    (total0, sys0), t0 = cpu(pid), time.perf_counter()
    got: dict[str, Any] = fio(path, size_mib)
    (total1, sys1), wall = cpu(pid), time.perf_counter() - t0
    gib = size_mib / 1024
    got["server_cpu_s_per_GiB"] = round((total1 - total0) / gib, 3)
    got["server_sys_s_per_GiB"] = round((sys1 - sys0) / gib, 3)
    got["server_cores_busy"] = round((total1 - total0) / wall, 2)
    return got


def unmount(mountpoint: Path) -> None:
    """Detach a mount if there is one, lazily if it is busy."""
    if os.path.ismount(mountpoint):
        for flags in (["-u"], ["-u", "-z"]):
            if subprocess.run(["fusermount3", *flags, str(mountpoint)]).returncode == 0:
                return


@contextlib.contextmanager
def floor_server(
    binary: Path, argv: list[str], root: Path, name: str
) -> Iterator[tuple[int, Path]]:
    """fuse_floor mounted at a fresh directory under `root`: (its pid, the mountpoint);
    unmounted and gone afterwards, whatever happens. Its closing words (READ count) are
    left in `root`/`name`.log."""
    mnt = root / f"{name}-mnt"
    mnt.mkdir()
    log = open(root / f"{name}.log", "w")  # noqa: SIM115 (the server's whole life)
    proc = subprocess.Popen([str(binary), *argv, str(mnt)], stderr=log)
    try:
        t0 = time.perf_counter()
        while not (mnt / "data").exists():  # mounted, INIT answered
            if proc.poll() is not None or time.perf_counter() - t0 > 30:
                raise RuntimeError(f"fuse_floor {argv} did not mount: {log.name}")
            time.sleep(0.05)
        yield proc.pid, mnt
    finally:
        unmount(mnt)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def pipe_max_size(nbytes: int) -> Iterator[None]:
    """/proc/sys/fs/pipe-max-size at least `nbytes` meanwhile, put back afterwards."""
    original = PIPE_MAX.read_text().strip()
    if int(original) < nbytes:
        PIPE_MAX.write_text(str(nbytes))
    try:
        yield
    finally:
        PIPE_MAX.write_text(original)


def floor_run(binary: Path, root: Path, variant: str, size_mib: int, src: Path) -> dict[str, Any]:
    argv = {
        "mem-1t": ["-s"],
        "mem-mt": [],
        "splice-cached": ["--splice", str(src)],
        "splice-dropped": ["--splice", str(src)],
        "fallback-cached": ["--splice", str(src)],
        "mmap-cached": ["--mmap", str(src)],
    }[variant]
    name = f"{variant}-{time.monotonic_ns()}"
    pipes = pipe_max_size(SPLICE_PIPE) if variant.startswith("splice") else contextlib.nullcontext()
    with pipes, floor_server(binary, [*argv, str(size_mib)], root, name) as (pid, mnt):
        before = raise_readahead(mnt)
        drop_caches()
        if variant.endswith("-cached"):
            read_whole(src)
        got = measure(pid, mnt / "data", size_mib)
    got["read_ahead_kb_at_mount"] = before
    log = (root / f"{name}.log").read_text()
    if "--splice" in argv:
        got["spliced"] = int("spliced" in log)
    words = log.split()
    if "READs," in words:
        got["READs_per_GiB"] = round(int(words[words.index("READs,") - 1]) / (size_mib / 1024))
    return got


class Fluidfed:
    """MinIO on loopback holding one object of the file's size, and a fresh sidecar mount
    of it per run (bench/read_path.py's, with a memory tier that holds the whole file)."""

    def __init__(self, root: Path, size_mib: int) -> None:
        os.environ.update(CREDENTIALS)
        self.root, self.size_mib, self.count = root, size_mib, 0
        self.server = S3Server(root / "minio").start()
        try:
            local = root / "local"
            local.mkdir()
            with open(local / "big.bin", "wb") as f:
                for _ in range(size_mib):
                    f.write(os.urandom(2**20))
            aio.run(peers.upload(self.server, local))
            shutil.rmtree(local)
        except BaseException:
            self.server.stop()
            raise
        self.mount = {
            "uri": self.server.uri(peers.PREFIX),
            "options": {"endpoint": self.server.endpoint},
        }

    def run(self) -> dict[str, Any]:
        self.count += 1
        tier = [{"medium": "MEM", "quota": f"{2 * self.size_mib + 64}MiB"}]
        sc = rp.sidecar(self.root, f"sc{self.count}", self.mount, [], cache=tier)
        try:
            assert sc.proc is not None
            path = sc.mountpoint / "big.bin"
            read_whole(path)  # every block into the sidecar's memory tier
            want = -(-self.size_mib * 2**20 // rp.BLOCK)
            t0 = time.perf_counter()
            while sc.status()["cache"]["blocks"] < want and time.perf_counter() - t0 < 30:
                time.sleep(0.1)  # its read-ahead's last fetches
            before = sc.status()
            raised = raise_readahead(sc.mountpoint)  # done by the sidecar already
            drop_caches()
            got = measure(sc.proc.pid, path, self.size_mib)
            after = sc.status()
        finally:
            sc.close()
        got["read_ahead_kb_at_mount"] = raised
        got["READs_per_GiB"] = round((after["reads"] - before["reads"]) / (self.size_mib / 1024))
        got["blocks_in_memory"] = before["cache"]["blocks"]
        got["blocks_fetched_during_read"] = (
            after["blocks"]["ufs_reads"] - before["blocks"]["ufs_reads"]
        )
        return got

    def close(self) -> None:
        self.server.stop()


def table(rows: dict[str, dict[str, Any]], size_mib: int, runs: int) -> str:
    cols = [  # (figure, heading, width, format)
        ("MiB_per_s", "MiB/s", 8, ".0f"),
        ("server_cpu_s_per_GiB", "CPU-s/GiB", 11, ".2f"),
        ("server_sys_s_per_GiB", "of it sys", 11, ".2f"),
        ("server_cores_busy", "cores", 7, ".2f"),
        ("fio_cpu_s_per_GiB", "fio CPU-s/GiB", 15, ".2f"),
        ("READs_per_GiB", "READs/GiB", 11, ".0f"),
        ("spliced", "spliced", 9, ".0f"),
    ]
    lines = [
        f"{size_mib} MiB, fio 1 MiB sequential psync, page cache dropped first; "
        f"server CPU per GiB read; medians of {runs} runs",
        f"{'variant':16s}" + "".join(f"{h:>{w}s}" for _, h, w, _ in cols),
    ]
    for name, row in rows.items():
        cells = "".join(
            f"{row[k]:>{w}{fmt}}" if k in row else f"{'-':>{w}s}" for k, _, w, fmt in cols
        )
        lines.append(f"{name:16s}{cells}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants: {sorted(unknown)}")
    root = Path(tempfile.mkdtemp(prefix="fluidfed-floor-"))
    reporting = rp.page_reporting()  # held off (order 11) for comparable figures
    out: dict[str, list[dict[str, Any]]] = {}
    ff: Fluidfed | None = None
    try:
        binary = compile_server(root)
        src = root / "splice-source"
        if any(v.startswith(("splice", "fallback", "mmap")) for v in variants):
            with open(src, "wb") as f:
                for _ in range(args.size_mib):
                    f.write(os.urandom(2**20))
        if "fluidfed" in variants:
            ff = Fluidfed(root, args.size_mib)
        for r in range(args.runs):
            k = r % len(variants)
            for v in variants[k:] + variants[:k]:
                got = (
                    ff.run()
                    if v == "fluidfed" and ff
                    else floor_run(binary, root, v, args.size_mib, src)
                )
                print(v, json.dumps(got), file=sys.stderr, flush=True)
                out.setdefault(v, []).append(got)
    finally:
        for mnt in root.glob("*-mnt"):
            unmount(mnt)
        if ff is not None:
            ff.close()
        shutil.rmtree(root, ignore_errors=True)
    rows = {
        name: {
            k: statistics.median(x[k] for x in xs)
            for k in xs[0]
            if isinstance(xs[0][k], (int, float))
        }
        for name, xs in out.items()
    }
    for name, xs in out.items():
        rows[name]["MiB_per_s_runs"] = [x["MiB_per_s"] for x in xs]
        rows[name]["server_cpu_s_per_GiB_runs"] = [x["server_cpu_s_per_GiB"] for x in xs]
    print(table(rows, args.size_mib, args.runs))
    info = {"size_mib": args.size_mib, "runs": args.runs, "page_reporting": reporting}
    print(json.dumps({**info, "variants": rows}, indent=1))
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main()
