"""A worker's write of 4 MiB blocks that do not start on a page (blocks from OpenDAL or
obstore: other UFSs than S3's presigned reads), past the page cache: `write_block_file`
copies them into its thread's aligned buffer and writes that with O_DIRECT. MiB/s and the
process's CPU seconds per GiB, per round, for the source tree given (a checkout of main to
compare against; this tree by default).

    flock /tmp/fluidfed-bench.lock python3 bench/direct_write.py [TREE] [--blocks 128]
        [--rounds 3] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

BLOCK = 4 * 2**20


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("tree", nargs="?", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("--blocks", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()
    sys.path.insert(0, args.tree)
    from fluidfed.data import blockfile, blocks

    raw = bytearray(os.urandom(BLOCK + 64))
    data = memoryview(raw)[16 : 16 + BLOCK]  # off a page, as obstore's blocks are
    crc = blocks.checksum(data)
    gib = args.blocks * BLOCK / 2**30
    tier = tempfile.mkdtemp(prefix="fluidfed-direct-write-", dir=args.dir)
    try:
        figures = []
        for r in range(args.rounds):
            c0, t0 = cpu(), time.perf_counter()
            for i in range(args.blocks):
                key = f"{i:04x}{r:02d}" + "0" * 26
                blockfile.write_block_file(blockfile.block_file(tier, key), data, crc)
            took = time.perf_counter() - t0
            figures.append(f"{gib * 1024 / took:.0f} MiB/s {(cpu() - c0) / gib:.3f} CPU-s/GiB")
        print(args.tree, "|", " | ".join(figures))
    finally:
        shutil.rmtree(tier, ignore_errors=True)


if __name__ == "__main__":
    main()
