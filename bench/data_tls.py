"""What TLS costs the data path between nodes: a warm read from a worker on another node
(short-circuit off, the blocks over the network) from a worker serving plain HTTP and from
one serving HTTPS with its binding's certificate (as the agent's workers do), alternated in
one run, with the CPU of sidecar and worker per GiB.

    python bench/data_tls.py [--size-mib 512] [--runs 3] [--files 0]

Both workers hold the same blocks of one file on their own disk tier (filled first, not
counted); each run starts a fresh sidecar per worker, which way goes first alternating, and
reads the file with fio (1 MiB sequential, the page cache dropped per file). `--files N`
also reads N small files (128 KiB, 8 readers) from each worker the same way: the small
blocks go through aiohttp's TLS, the large ones through the threaded receive. Figures:
MiB/s (files/s), CPU-s per GiB (per 1,000 files) of each process, and `tls_vs_plain` ratios
from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import read_path as rp

from agents import trust
from devkit.local.cluster import free_port
from devkit.local.processes import WorkerProcess


def worker(root: Path, name: str, mount: dict[str, Any], size_mib: int, tls: bool) -> WorkerProcess:
    wdir = root / name
    port = free_port()
    w = WorkerProcess(wdir, {}, port, secure=tls)
    cfg: dict[str, Any] = {
        "dataset": "bench",
        "mounts": [mount],
        "block_size": rp.BLOCK,
        "tiers": [{"medium": "SSD", "quota": f"{2 * size_mib + 64}MiB", "path": str(wdir / "ssd")}],
        "workers": {"endpoints": [w.url]},
    }
    if tls:
        made = trust.data_tls(None, ["127.0.0.1"], time.time())
        for field, name_, text in (
            ("ca_file", "ca.crt", made.ca_cert),
            ("tls_cert_file", "tls.crt", made.cert),
            ("tls_key_file", "tls.key", made.key),
        ):
            (wdir / name_).write_text(text)
            cfg[field] = str(wdir / name_)
    w.write_config(cfg)
    return w.start()


def trusting(root: Path, way: str) -> dict[str, str]:
    """A sidecar's setting to trust the worker of `way` (its binding's CA, for TLS)."""
    ca = root / way / "ca.crt"
    return {"ca_file": str(ca)} if ca.exists() else {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files", type=int, default=0, help="also N small files of 128 KiB")
    ap.add_argument("--out", default="", help="write the figures here too (JSON)")
    ap.add_argument(
        "--against",
        default="",
        metavar="TREE",
        help="also a TLS worker and its sidecars from another checkout (tls_against)",
    )
    args = ap.parse_args()
    size = args.size_mib * 2**20
    results: dict[str, Any] = {"size_mib": args.size_mib, "runs": args.runs}
    with tempfile.TemporaryDirectory(prefix="fluidfed-tls-") as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        with open(data / "big.bin", "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(2**20))
        keys = rp.small_file_keys(args.files, max(1, args.files // 100)) if args.files else []
        if keys:
            rp.write_small_files(data, keys)
        mount = {"uri": f"file://{data}"}
        ways = {"plain": False, "tls": True}
        trees = {way: "" for way in ways}
        if args.against:
            ways["tls_against"] = True
            trees["tls_against"] = str(Path(args.against).resolve())
        workers = {}
        for way, tls in ways.items():
            with rp.pythonpath(trees[way]):
                workers[way] = worker(root, way, mount, args.size_mib, tls)
        procs: list[Any] = list(workers.values())
        try:
            for way, w in workers.items():  # fill each worker's disk tier (not counted)
                fill = rp.sidecar(
                    root, f"fill-{way}", mount, [w.url], short_circuit=False, **trusting(root, way)
                )
                procs.append(fill)
                rp.fio(fill.mountpoint / "big.bin", "read", "1M", size=size)
                if keys:
                    rp.read_whole([fill.mountpoint / k for k in keys])
                st = fill.status()["blocks"]
                assert st["worker_misses"] > 0 and st["worker_errors"] == 0, st
                fill.stop()
            os.sync()
            seq: dict[str, list[float]] = {w: [] for w in ways}
            seq_cpu: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
            small: dict[str, list[float]] = {w: [] for w in ways}
            small_cpu: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
            for i in range(args.runs):
                order = list(ways)[i % len(ways) :] + list(ways)[: i % len(ways)]
                for way in order:
                    w = workers[way]
                    with rp.pythonpath(trees[way]):
                        sc = rp.sidecar(
                            root,
                            f"{way}{i}",
                            mount,
                            [w.url],
                            short_circuit=False,
                            **trusting(root, way),
                        )
                    procs.append(sc)
                    assert sc.proc is not None and w.proc is not None
                    pids = {"sidecar": sc.proc.pid, "worker": w.proc.pid}
                    meter = rp.CPU(pids)
                    got = rp.fio(sc.mountpoint / "big.bin", "read", "1M", size=size)
                    seq[way].append(got["MiB_per_s"])
                    seq_cpu[way].append(meter.per_gib(size))
                    if keys:
                        meter = rp.CPU(pids)
                        got_small = rp.read_whole([sc.mountpoint / k for k in keys])
                        small[way].append(got_small["files_per_s"])
                        per = meter.per_gib(len(keys) * 2**30 // 1000)  # per 1,000 files
                        small_cpu[way].append(
                            {k.replace("_per_GiB", "_per_1000_files"): v for k, v in per.items()}
                        )
                    st = sc.status()["blocks"]
                    assert st["worker_hits"] > 0 and st["worker_errors"] == 0, st
                    sc.stop()
        finally:
            for p in procs:
                p.stop()
        for way in ways:
            results[way] = {
                "seq_MiB_per_s": rp.median(seq[way]),
                "seq_runs": [round(x) for x in seq[way]],
                "seq_cpu_per_GiB": rp.median_cpu(seq_cpu[way]),
            }
            if keys:
                results[way] |= {
                    "small_files_per_s": rp.median(small[way]),
                    "small_runs": [round(x) for x in small[way]],
                    "small_cpu_per_1000_files": rp.median_cpu(small_cpu[way]),
                }
        results["tls_vs_plain_seq"] = rp.ratio(rp.median(seq["tls"]), rp.median(seq["plain"]))
        if args.against:
            results["against"] = trees["tls_against"]
            results["tls_vs_against_seq"] = rp.ratio(
                rp.median(seq["tls"]), rp.median(seq["tls_against"])
            )
        if keys:
            results["tls_vs_plain_small"] = rp.ratio(
                rp.median(small["tls"]), rp.median(small["plain"])
            )
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
