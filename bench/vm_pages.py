"""How much of the read path's CPU is this virtual machine's free page reporting: the same
`bench/read_path.py --only cold,warm` run with the guest reporting its free memory to the
host (as it does by default here) and with reporting held off, the two taking turns.

    sudo python bench/vm_pages.py [--size-mib 512] [--rounds 3] [--out FILE]
    sudo python bench/vm_pages.py --hold -- COMMAND...   # COMMAND with reporting held off

A guest with virtio-balloon's free page reporting (/sys/module/page_reporting; Firecracker
VMs have it on) hands every free 2 MiB chunk back to its host within seconds, so the next
page placed there faults in the host on its first touch. On the read path the first touch
of a new page-cache page is the FUSE reply's copy, made by the sidecar; so every cold or
warm read through a fresh mount pays the host's faults in the sidecar's CPU, and a node
whose memory is in use (a cache node's is) would not. "kept" raises the reporting order
above the largest free block (nothing qualifies) and touches the free memory once, so the
host backs it again; the original order is put back at the end, whatever happens.

Root only (the module's parameters); nothing here is used by fluidfed itself.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PARAMS = Path("/sys/module/page_reporting/parameters")
ORDER = PARAMS / "page_reporting_order"
REPORTED = PARAMS / "reported_kib"
HELD_OFF = 11  # above MAX_PAGE_ORDER (10): no free block is large enough to be reported
HEADROOM = 3 * 2**30  # left untouched for the bench's own processes


def meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def touch_free_memory() -> float:
    """Write one byte in every page of (free memory - HEADROOM), then free it all: the host
    backs those pages again. Returns the seconds it took."""
    n = max(0, meminfo("MemFree") - HEADROOM) // 2**20 * 2**20
    t0 = time.perf_counter()
    m = mmap.mmap(-1, n)
    chunk = b"\1" * 2**20
    for at in range(0, n, len(chunk)):
        m[at : at + len(chunk)] = chunk
    m.close()
    return time.perf_counter() - t0


def read_path(size_mib: int) -> dict[str, Any]:
    bench = Path(__file__).with_name("read_path.py")
    tree = str(bench.parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [tree, os.environ.get("PYTHONPATH")])),
    }
    argv = [sys.executable, str(bench), "--only", "cold,warm", "--runs", "1"]
    out = subprocess.run(
        [*argv, "--size-mib", str(size_mib)],
        check=True,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out[out.index("{") :])
    return result


def figures(r: dict[str, Any]) -> dict[str, float]:
    cold, warm = r["cold"], r["warm"]
    return {
        "cold_MiB_per_s": cold["mount_MiB_per_s"],
        "cold_sidecar_cpu_s_per_GiB": cold["cpu"]["sidecar_cpu_s_per_GiB"],
        "remote_MiB_per_s": warm["remote"]["mount_MiB_per_s"],
        "remote_sidecar_cpu_s_per_GiB": warm["remote"]["cpu"]["sidecar_cpu_s_per_GiB"],
        "remote_worker_cpu_s_per_GiB": warm["remote"]["cpu"]["worker_cpu_s_per_GiB"],
        "same_node_MiB_per_s": warm["same_node"]["mount_MiB_per_s"],
        "same_node_sidecar_cpu_s_per_GiB": warm["same_node"]["cpu"]["sidecar_cpu_s_per_GiB"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="JSON figures (default: stdout only)")
    ap.add_argument("--hold", action="store_true", help="run the command after -- held off")
    ap.add_argument("command", nargs="*", help="with --hold: the command to run")
    args = ap.parse_args()
    if not ORDER.exists():
        sys.exit(f"{ORDER} is missing: this machine does not report free pages, nothing to compare")
    if os.geteuid() != 0:
        sys.exit(f"run as root: {ORDER} is written to hold reporting off")
    original = ORDER.read_text().strip()
    if args.hold:
        if not args.command:
            sys.exit("--hold needs a command after --")
        try:
            ORDER.write_text(str(HELD_OFF))
            print(f"free memory touched in {touch_free_memory():.0f} s", file=sys.stderr)
            sys.exit(subprocess.run(args.command, check=False).returncode)
        finally:
            ORDER.write_text(original)
    modes = {"reported": original, "kept": str(HELD_OFF)}
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    touched: list[float] = []
    reported: dict[str, int] = {m: 0 for m in modes}
    load_start = os.getloadavg()
    try:
        for i in range(args.rounds):
            order = list(modes) if i % 2 == 0 else list(reversed(modes))
            for mode in order:
                ORDER.write_text(modes[mode])
                if mode == "kept":
                    touched.append(touch_free_memory())
                before = int(REPORTED.read_text())
                print(f"round {i + 1}/{args.rounds}: {mode} ...", file=sys.stderr, flush=True)
                got = figures(read_path(args.size_mib))
                reported[mode] += int(REPORTED.read_text()) - before
                runs[mode].append(got)
                print(f"  {json.dumps(got)}", file=sys.stderr, flush=True)
    finally:
        ORDER.write_text(original)
    results: dict[str, Any] = {
        "size_mib": args.size_mib,
        "rounds": args.rounds,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "seconds_to_touch_free_memory": [round(t, 1) for t in touched],
        "reported_to_host_MiB": {m: v // 1024 for m, v in reported.items()},
    }
    for mode, rs in runs.items():
        results[mode] = {k: round(statistics.median(r[k] for r in rs), 2) for k in rs[0]}
        results[mode + "_runs"] = rs
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
