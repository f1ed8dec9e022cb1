"""Why every fluidfed process runs on uvloop (fluidfed/aio.py): how often a short process
that used OpenDAL dies at exit, on asyncio's loop and on uvloop, in the same run.

    python bench/loop_exit.py [--runs 60] [--objects 200]

Each run is a new Python process that writes `--objects` small objects to MinIO with
devkit's `S3Server.upload` (OpenDAL, as `fluidfed local s3 up --sample`) on the chosen loop, prints "done" and returns; the
runs alternate between the loops. Counted: exits that were not 0 after "done" (SIGABRT:
an OpenDAL thread, still in the loop's call_soon_threadsafe, asked for the GIL back after
the interpreter began to finalize, and CPython 3.11 ends such a thread with pthread_exit,
which aborts a Rust thread). Output: JSON with the count per loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from devkit.local import binaries
from devkit.local.s3 import S3Server

LOOPS = ("asyncio", "uvloop")

CHILD = """
import sys
from pathlib import Path
from devkit.local.s3 import S3Server
from fluidfed import aio

# the server's own upload (16 writes in flight), to the MinIO the parent started
server = S3Server(Path(sys.argv[1]), port=int(sys.argv[2]))
objects = {str(i): b"x" * 1000 for i in range(int(sys.argv[3]))}
aio.run(server.upload(objects, prefix="loop-exit"))
print("done", flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60, help="processes per loop")
    ap.add_argument("--objects", type=int, default=200, help="objects each process writes")
    args = ap.parse_args()
    asyncio.run(binaries.ensure(print))
    died: dict[str, list[int]] = {k: [] for k in LOOPS}
    with tempfile.TemporaryDirectory() as tmp:
        server = S3Server(Path(tmp) / "s3").start()
        try:
            runs(server, args, died)
        finally:
            server.stop()
    print(
        json.dumps(
            {
                "runs_per_loop": args.runs,
                "objects_per_run": args.objects,
                **{f"{k}_died_at_exit": len(v) for k, v in died.items()},
                **{f"{k}_exit_codes": sorted(set(v)) for k, v in died.items()},
            },
            indent=2,
        )
    )


def runs(server: S3Server, args: argparse.Namespace, died: dict[str, list[int]]) -> None:
    for _ in range(args.runs):
        for loop in LOOPS:
            env = {**os.environ, "FLUIDFED_EVENT_LOOP": loop}
            got = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    str(server.data_dir),
                    str(server.port),
                    str(args.objects),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if "done" not in got.stdout:
                raise SystemExit(f"a run on {loop} failed before its end: {got.stderr}")
            if got.returncode != 0:
                died[loop].append(got.returncode)


if __name__ == "__main__":
    main()
