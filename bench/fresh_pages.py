"""What a new block file costs on this machine, apart from everything else a cache worker
does: files of 128 KiB written the way a worker writes them (to a temporary name, then
renamed), in memory the kernel took back from the virtual machine's host, in memory freed
just before, and over files that exist (no new pages), and the same for plain memory.

    python bench/fresh_pages.py [--files 2000] [--dir DIR] [--settle 5]

A guest whose balloon device reports free pages to its host (virtio-balloon's free page
reporting, /sys/module/page_reporting; Firecracker VMs have it on) gives every freed 2 MiB
chunk back after ~2 s: the next page placed there faults in the host, so new page-cache
pages (a new block file) and freshly mapped memory cost far more than reused ones. CPU of
this process (user + system) per file, and how much the guest reported meanwhile.
"""

from __future__ import annotations

import argparse
import mmap
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPORTED = Path("/sys/module/page_reporting/parameters/reported_kib")
SIZE = 128 * 2**10


def reported_kib() -> int:
    try:
        return int(REPORTED.read_text())
    except (OSError, ValueError):
        return -1


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def write_files(root: Path, n: int, data: bytes) -> None:
    for i in range(n):
        d = root / f"{i % 256:02x}"
        d.mkdir(exist_ok=True)
        tmp = d / f"{i:08d}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.write(b"FFB1\0\0\0\0")
        os.replace(tmp, d / f"{i:08d}")


def overwrite_files(root: Path, n: int, data: bytes) -> None:
    for i in range(n):
        with open(root / f"{i % 256:02x}" / f"{i:08d}", "r+b") as f:
            f.write(data)


def touch_memory(nbytes: int) -> None:
    m = mmap.mmap(-1, nbytes)
    for at in range(0, nbytes, 4096):
        m[at] = 1
    m.close()


def measure(name: str, n: int, fn: object, *args: object) -> None:
    assert callable(fn)
    rep0, t0, c0 = reported_kib(), time.perf_counter(), cpu()
    fn(*args)
    c1, t1, rep1 = cpu(), time.perf_counter(), reported_kib()
    print(
        f"{name:48s} {1000 * (c1 - c0) / n:7.3f} CPU-ms per 128 KiB "
        f"({(c1 - c0) / (n * SIZE / 2**30):6.2f} CPU-s/GiB, {n / (t1 - t0):8.0f}/s); "
        f"host took back {max(0, rep1 - rep0) // 1024} MiB meanwhile",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds for the host to take back")
    args = ap.parse_args()
    n = args.files
    data = os.urandom(SIZE - 8)
    root = Path(tempfile.mkdtemp(prefix="fluidfed-fresh-", dir=args.dir))
    print(f"{n} files of 128 KiB in {root}; reported so far {reported_kib()} KiB", flush=True)
    try:
        for rnd in range(2):
            a, b = root / f"a{rnd}", root / f"b{rnd}"
            a.mkdir()
            b.mkdir()
            time.sleep(args.settle)
            measure("new files, memory the host took back", n, write_files, a, n, data)
            measure("the same files overwritten (no new pages)", n, overwrite_files, a, n, data)
            shutil.rmtree(a)  # their page cache freed: write new files into it at once
            measure("new files, memory freed just before", n, write_files, b, n, data)
            shutil.rmtree(b)
            time.sleep(args.settle)
            measure("plain memory, taken back by the host", n, touch_memory, n * SIZE)
            measure("plain memory, freed just before", n, touch_memory, n * SIZE)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"reported in all {reported_kib()} KiB", file=sys.stderr)


if __name__ == "__main__":
    main()
