"""Small files read through a cache worker against the sidecar alone, the variants
alternated in one run, with the CPU of sidecar and worker apart (all threads, and the
kernel's share), and optionally their py-spy profiles: where a first epoch through workers
loses its speed (issue 20), in a minute or two rather than bench/peers.py's whole table.

    python bench/cold_worker.py [--files 4000] [--dirs 40] [--runs 3] [--file-kib 128]
        [--variants alone,worker,dropped] [--profile DIR] [--perf DIR] [--ops]
        [--seq-mib 512 [--readers 1] [--io-kib 1024] [--skew-kib 0]]

    alone    a fresh sidecar without workers (reads MinIO itself)
    worker   a fresh sidecar and an empty worker with a disk tier, over HTTP (as on another
             node): every block a miss the worker fetches, answers and writes to its disk
    filling  `worker` with the sidecar on the worker's node (short-circuit on, as
             bench/peers.py's first read filling the cache): the misses come over HTTP all
             the same
    dropped  a fresh sidecar beside a worker holding every block (filled before, not
             counted), the block files dropped from the page cache (short-circuit reads)
    cached   the same with the block files read into the page cache first (the fill
             writes blocks of 1 MiB or more past it)
    second   `dropped`, then read once by another sidecar on this node before the one
             measured (the page cache as that tree's sidecar leaves a file it read from
             the disk: a second epoch on the node)
    served   the same read over HTTP (a sidecar on another node), the block files as the
             fill left them
    sent     `dropped`, then read once over HTTP by another sidecar (a sidecar on another
             node) before the one measured on this node: the page cache as the worker's
             sending left the block files
    restarted  `served` from a worker restarted after the fill (the same directory), the
             block files dropped from the page cache: its first read of each file checks
             it whole
    remote   the same read over HTTP with the block files read into the page cache first
             (bench/peers.py's "warm, worker remote" row)
    load     no reader: a fresh worker warms up the whole dataset (`POST /v1/load`, as its
             agent asks), timed until it says done (every block in its file); MiB/s, and
             the worker's and MinIO's CPU per GiB (the "per file" figures)
    NAME=[TREE]:MODE[:LOOP]  one of those from another source tree (a checkout of main)
             and/or on another event loop, e.g. main=/tmp/main:worker or
             worker-asyncio=:worker:asyncio (FLUIDFED_EVENT_LOOP of both processes)

Figures: files/s, p50/p99 per file, CPU ms per file of the sidecar and of the worker (and
of that the system time), their minor page faults per file, and for `worker` the blocks
the worker holds afterwards. The clients take turns going first. --profile records py-spy
(250 Hz, Python frames) of the sidecar and the worker in each run, into DIR; --perf records
`perf record -g` of the sidecar and the worker (every thread, kernel and native frames) into DIR. --ops
counts the requests the kernel sends the mount per file, by kind (the
`fuse:fuse_request_send` trace event; needs tracefs: `mount -t tracefs nodev
/sys/kernel/tracing`). --file-kib sets the files' size (4096: one whole 4 MiB block per
file, a first epoch of large samples filling the worker's disk). --seq-mib N reads one
file of N MiB instead, sequentially with fio (1 MiB requests, the sidecar's read-ahead
asking for the next blocks): `worker` is then bench/peers.py's "first read filling the
cache" row, in MiB/s with CPU per GiB ("per file" figures become per GiB); --readers N
has N fio jobs read it at once, each its own consecutive part (the figures of them all).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import peers
import read_path as rp

from devkit.local import processes
from devkit.local.s3 import CREDENTIALS, S3Server

FILE_SIZE = rp.SMALL_FILE  # --file-kib
SEQ = False  # --seq-mib: one file read sequentially by fio
READERS = 1  # --readers: fio jobs reading that file at once, each its own part of it
IO = "1M"  # --io-kib: each read's size
SKEW = 0  # --skew-kib: where the first reader starts
KEEP = False  # --keep: workers' block files deleted only at the end (see --help)
MINIO_PID = 0  # its CPU is counted too: MinIO shares the two cores


def machine_busy() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / tick, sum(fields) / tick


def write_files(root: Path, keys: list[str]) -> None:
    """`rp.write_small_files`, or files of FILE_SIZE: their number, then random bytes."""
    if SEQ:
        root.mkdir(parents=True, exist_ok=True)
        with open(root / keys[0], "wb") as f:
            for _ in range(FILE_SIZE // 2**20):
                f.write(os.urandom(2**20))
        return
    if FILE_SIZE == rp.SMALL_FILE:
        rp.write_small_files(root, keys)
        return
    base = os.urandom(FILE_SIZE)
    for i, key in enumerate(keys):
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(i.to_bytes(8, "big") + base[8:])


def worker_blocks(w: processes.WorkerProcess) -> int:
    return int(w.status()["blocks"])


TRACING = Path("/sys/kernel/tracing")
FUSE_SEND = TRACING / "events/fuse/fuse_request_send"


class FuseOps:
    """The FUSE requests sent to one mount while it is open, counted by opcode from the
    kernel's trace buffer (global: other mounts' requests are told apart by connection)."""

    def __init__(self, mountpoint: Path) -> None:
        self.dev = os.stat(mountpoint).st_dev
        (TRACING / "trace").write_text("")
        (TRACING / "buffer_size_kb").write_text("16384")
        (FUSE_SEND / "filter").write_text(f"connection == {self.dev}")
        (FUSE_SEND / "enable").write_text("1")

    def stop(self, files: int) -> dict[str, float]:
        (FUSE_SEND / "enable").write_text("0")
        (FUSE_SEND / "filter").write_text("0")
        counts: dict[str, int] = {}
        with open(TRACING / "trace") as f:
            for line in f:
                m = re.search(r"opcode \d+ \((\w+)\)", line)
                if m:
                    counts[m.group(1)] = counts.get(m.group(1), 0) + 1
        (TRACING / "trace").write_text("")
        return {k: round(v / files, 3) for k, v in sorted(counts.items())}


def thread_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of a process's threads: its main thread (the event loop) apart from the
    rest (thread pools, OpenDAL's runtime), user and system each."""
    out = {"loop_user": 0.0, "loop_sys": 0.0, "threads_user": 0.0, "threads_sys": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        who = "loop" if task.name == str(pid) else "threads"
        out[f"{who}_user"] += int(fields[11]) / tick
        out[f"{who}_sys"] += int(fields[12]) / tick
    return out


def warm_up(
    root: Path, mount: dict[str, Any], files: int, name: str, tree: str, run: int
) -> dict[str, Any]:
    """`load`: a fresh worker warms up the whole dataset (`POST /v1/load`, as its agent
    asks); the time until it says done (every block in its file), its CPU and MinIO's."""
    with peers.pythonpath(tree):
        w = rp.warm_worker(root, mount, files * FILE_SIZE // 2**20 + 1, name=f"w-{name}-{run}")
    try:
        assert w.proc is not None
        pids = {"worker": w.proc.pid, **({"minio": MINIO_PID} if MINIO_PID else {})}
        headers = {
            "Authorization": "Bearer " + processes.local_token("bench", "agent"),
            "Content-Type": "application/json",
        }
        busy0 = machine_busy()
        cpu0 = {k: rp.tree_cpu_seconds(p) for k, p in pids.items()}
        t0 = time.perf_counter()
        urllib.request.urlopen(
            urllib.request.Request(w.url + "/v1/load", b"{}", headers, method="POST"), timeout=10
        ).read()
        while True:
            with urllib.request.urlopen(
                urllib.request.Request(w.url + "/v1/load", headers=headers), timeout=10
            ) as r:
                progress = json.loads(r.read())
            if progress["state"] in ("done", "failed"):
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
        busy1 = machine_busy()
        mib = progress["bytes"] / 2**20
        got: dict[str, Any] = {
            "MiB_per_s": round(mib / seconds, 1),
            "machine_busy": round((busy1[0] - busy0[0]) / (busy1[1] - busy0[1]), 3),
        }
        for k, p in pids.items():  # per GiB
            got[f"{k}_cpu_ms_per_file"] = round((rp.tree_cpu_seconds(p) - cpu0[k]) * 1024 / mib, 3)
        got["load"] = progress
        got["ufs"] = w.status()["ufs"]
        return got
    finally:
        w.close()
        shutil.rmtree(w.dir, ignore_errors=True)


def read_once(sc: Any, keys: list[str]) -> None:
    """Read the files through a started sidecar once, then stop it."""
    try:
        if SEQ:
            rp.cat_mib_s(sc.mountpoint / keys[0])
        else:
            rp.read_whole([sc.mountpoint / k for k in keys])
    finally:
        sc.close()


def one(
    root: Path,
    mount: dict[str, Any],
    keys: list[str],
    name: str,
    variant: tuple[str, str, str],
    profile: Path | None,
    run: int,
    ops: bool = False,
    perf: Path | None = None,
) -> dict[str, Any]:
    tree, mode, loop = variant
    total_mib = len(keys) * FILE_SIZE // 2**20 + 1
    w = None
    env = {"FLUIDFED_EVENT_LOOP": loop} if loop else {}
    try:
        with peers.pythonpath(tree, env):
            if mode != "alone":
                w = rp.warm_worker(root, mount, total_mib, name=f"w-{name}-{run}")
            if mode in ("dropped", "cached", "served", "remote", "second", "sent", "restarted"):
                assert w is not None
                fill = rp.sidecar(root, f"fill-{name}-{run}", mount, [w.url], short_circuit=False)
                read_once(fill, keys)
                want = -(-FILE_SIZE // rp.BLOCK) if SEQ else len(keys)
                t0 = time.perf_counter()
                while worker_blocks(w) < want and time.perf_counter() - t0 < 60:
                    time.sleep(0.2)
                w.wait_written()
                if mode == "restarted":  # (killed: no hand-off; its files stay)
                    w.close()
                if mode in ("dropped", "second", "sent", "restarted"):
                    rp.drop_cached(w.dir)
                if mode == "restarted":
                    w.start()
                elif mode in ("cached", "remote"):
                    rp.load_cached(w.dir)
                if mode == "second":  # (read once by a sidecar of this tree on this node)
                    first = rp.sidecar(
                        root, f"first-{name}-{run}", mount, [w.url], short_circuit=True
                    )
                    read_once(first, keys)
                if mode == "sent":  # (read once over HTTP by a sidecar of this tree)
                    first = rp.sidecar(
                        root, f"first-{name}-{run}", mount, [w.url], short_circuit=False
                    )
                    read_once(first, keys)
            sc = rp.sidecar(
                root,
                f"sc-{name}-{run}",
                mount,
                [w.url] if w else [],
                short_circuit=mode in ("dropped", "cached", "filling", "second", "sent"),
            )
    except BaseException:
        if w is not None:  # a failed fill leaves no worker running
            w.close()
            shutil.rmtree(w.dir, ignore_errors=True)
        raise
    assert sc.proc is not None
    spies = []
    try:
        pids = {"sidecar": sc.proc.pid}
        if w is not None and w.proc is not None:
            pids["worker"] = w.proc.pid
        if profile is not None:
            for who, pid in pids.items():
                out = profile / f"{name}-{who}-{run}.txt"
                spies.append(
                    subprocess.Popen(
                        [
                            "py-spy",
                            "record",
                            "--pid",
                            str(pid),
                            "--rate",
                            "250",
                            "--format",
                            "raw",
                            "--output",
                            str(out),
                            *(["--native"] if os.environ.get("NATIVE") else ["--nonblocking"]),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        for who, pid in pids.items() if perf is not None else ():
            assert perf is not None
            out = perf / f"{name}-{who}-{run}.data"
            spies.append(
                subprocess.Popen(
                    ["perf", "record", "-g", "-F", "999", "-p", str(pid), "-o", str(out)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        if spies:
            time.sleep(1.0)
        if MINIO_PID:
            pids["minio"] = MINIO_PID
        busy0 = machine_busy()
        cpu0 = {k: rp.tree_cpu_seconds(p) for k, p in pids.items()}
        sys0 = {k: rp.system_seconds(p) for k, p in pids.items()}
        flt0 = {k: rp.minor_faults(p) for k, p in pids.items()}
        threads0 = thread_seconds(sc.proc.pid)
        counter = FuseOps(sc.mountpoint) if ops else None
        if SEQ:
            path = sc.mountpoint / keys[0]
            got: dict[str, Any] = rp.fio(
                path, "read", IO, size=FILE_SIZE, readers=READERS, offset=SKEW
            )
            units = (FILE_SIZE - SKEW) / 2**30 * 1000  # "ms per file" becomes s per GiB
        else:
            got = rp.read_whole([sc.mountpoint / k for k in keys])
            units = len(keys)
        if counter is not None:
            got["fuse_ops_per_file"] = counter.stop(len(keys))
        busy1 = machine_busy()
        got["machine_busy"] = round((busy1[0] - busy0[0]) / (busy1[1] - busy0[1]), 3)
        threads1 = thread_seconds(sc.proc.pid)
        for k, v in threads1.items():
            got[f"sidecar_{k}_ms_per_file"] = round((v - threads0[k]) * 1000 / units, 3)
        for k, p in pids.items():
            got[f"{k}_cpu_ms_per_file"] = round(
                (rp.tree_cpu_seconds(p) - cpu0[k]) * 1000 / units, 3
            )
            got[f"{k}_sys_ms_per_file"] = round((rp.system_seconds(p) - sys0[k]) * 1000 / units, 3)
            got[f"{k}_faults_per_file"] = round((rp.minor_faults(p) - flt0[k]) / units, 1)
        for s in spies:
            s.send_signal(2)
        for s in spies:
            s.wait(30)
        if w is not None and mode == "worker":
            got["worker_blocks"] = worker_blocks(w)  # it holds every file's block now
        status = sc.status()
        got["sidecar"] = status["blocks"]
        # READs the native session answered by itself, from blocks held there (0 before)
        got["sidecar"]["reads_in_session"] = status.get("reads_in_session", 0)
        got["sidecar"]["reads"] = status["reads"]
        if w is not None:  # (sendfile, and files read into huge folios before: 0 before)
            served = w.status().get("served", {})
            got["worker_sent"] = {k: served.get(k, 0) for k in ("sendfile", "read_huge")}
        return got
    finally:
        for s in spies:
            if s.poll() is None:
                s.kill()
        sc.close()
        if w is not None:
            w.close()
            if not KEEP:
                shutil.rmtree(w.dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=4000)
    ap.add_argument("--dirs", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--variants", default="alone,worker,dropped")
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--file-kib", type=int, default=rp.SMALL_FILE // 1024)
    ap.add_argument("--perf", type=Path)
    ap.add_argument("--ops", action="store_true", help="FUSE requests per file, by kind")
    ap.add_argument("--seq-mib", type=int, default=0, help="one file of this size, fio")
    ap.add_argument(
        "--readers",
        type=int,
        default=1,
        help="with --seq-mib: this many fio jobs read the file at once, each its own "
        "consecutive part of it (several DataLoader workers reading one large file)",
    )
    rp.add_fio_args(ap, "with --seq-mib")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="delete the workers' block files only at the end: ext4 without a journal (this "
        "VM's) skips inodes freed in the last 30-60 s one by one on every create",
    )
    args = ap.parse_args()
    reporting = rp.page_reporting()
    if reporting.get("order", 11) <= 10:  # (session 54: two probes at 182-308 MiB/s so)
        print(
            "warning: this VM reports its free memory to the host (page_reporting order "
            f"{reporting['order']}): every figure includes the host's faults on fresh pages; "
            "run under `bench/vm_pages.py --hold --`",
            file=sys.stderr,
        )
    global FILE_SIZE, SEQ, KEEP, READERS, IO, SKEW
    KEEP = args.keep
    READERS = args.readers
    IO, SKEW = f"{args.io_kib}k", args.skew_kib * 1024
    FILE_SIZE = args.file_kib * 1024
    if args.seq_mib:
        FILE_SIZE, SEQ = args.seq_mib * 2**20, True
    os.environ.update(CREDENTIALS)
    variants: list[tuple[str, tuple[str, str, str]]] = []
    for v in args.variants.split(","):
        name, _, spec = v.partition("=")
        tree, mode, loop = ([*spec.split(":"), ""][:3]) if spec else ("", name, "")
        variants.append((name, (str(Path(tree).resolve()) if tree else "", mode, loop)))
    for d in (args.profile, args.perf):
        if d:
            d.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="fluidfed-coldw-"))
    server = S3Server(root / "minio").start()
    global MINIO_PID
    MINIO_PID = server.proc.pid if server.proc is not None else 0
    keys = ["big.bin"] if SEQ else rp.small_file_keys(args.files, args.dirs)
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        local = root / "local"
        write_files(local, keys)
        asyncio.run(peers.upload(server, local))
        mount = {
            "uri": server.uri(peers.PREFIX),
            "options": {"endpoint": server.endpoint},
        }
        for r in range(args.runs):
            for name, variant in peers.rotated(variants, r):
                if variant[1] == "load":
                    got = warm_up(root, mount, len(keys), name, variant[0], r)
                else:
                    got = one(
                        root, mount, keys, name, variant, args.profile, r, args.ops, args.perf
                    )
                print(name, json.dumps(got), file=sys.stderr, flush=True)
                out.setdefault(name, []).append(got)
    finally:
        for mnt in root.glob("*-mnt"):
            processes.force_unmount(mnt)
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    if SEQ:
        print(
            f"one file of {args.seq_mib} MiB from {args.skew_kib} KiB on, fio "
            f"{args.io_kib} KiB sequential by {args.readers} reader(s), per GiB, medians of "
            f"{args.runs}"
        )
    else:
        print(
            f"{args.files} files of {args.file_kib} KiB, {args.dirs} dirs, 8 readers, "
            f"medians of {args.runs}"
        )
    for name, xs in out.items():
        row = {
            k: statistics.median(x[k] for x in xs)
            for k in xs[0]
            if isinstance(xs[0][k], (int, float))
        }
        speed = "MiB_per_s" if SEQ else "files_per_s"
        row[f"{speed}_runs"] = [x[speed] for x in xs]
        print(name, json.dumps(row))
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main()
