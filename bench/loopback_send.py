"""What a 4 MiB block costs to send and receive between two processes on one machine, by
how the sender sends it: sendfile(2) from a file in the page cache (a worker serving a
checked block over plain HTTP), send() from a mapping of that file, pread() into a reused
buffer then send(), and send() from memory (a block just fetched). The receiver is the
sidecar's: recv_into(MSG_WAITALL) into a reused buffer. Over TCP on loopback (how
bench/peers.py's "worker on another node" row runs on one machine) and over a Unix
socket; with --veth also over TCP through a veth pair, the sender in a network namespace
of its own (how two pods on one node reach each other: a CNI's veth, MTU 1500 unless
--mtu says otherwise; needs root, and makes the namespace and pair for the run only, with
link-local addresses that route nowhere).

    python bench/loopback_send.py [--blocks 512] [--rounds 2] [--veth] [--mtu 1500]
        [--out FILE]

Figures per way, per round: MiB/s, and the CPU seconds per GiB of the sender and of the
receiver (each its own process, getrusage). Run it under the bench lock:

    flock /tmp/fluidfed-bench.lock python3 bench/loopback_send.py
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import mmap
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BLOCK = 4 * 2**20
WAYS = ("sendfile", "mapped", "pread", "memory")
# the veth pair's two ends (--veth): link-local, so nothing routes to or from them
HERE, THERE = "169.254.77.1", "169.254.77.2"
NETNS = f"fluidfed-bench-{os.getpid()}"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sender(conn: socket.socket, path: str, way: str, blocks: int) -> float:
    """Send `blocks` blocks as the receiver asks for them; the CPU seconds it took."""
    fd = os.open(path, os.O_RDONLY)
    held = os.urandom(BLOCK)
    buf = mmap.mmap(-1, BLOCK)
    start = cpu()
    for _ in range(blocks):
        conn.recv(16)
        if way == "sendfile":
            sent = 0
            while sent < BLOCK:
                sent += os.sendfile(conn.fileno(), fd, sent, BLOCK - sent)
        elif way == "mapped":
            with mmap.mmap(fd, BLOCK, prot=mmap.PROT_READ) as m:
                conn.sendall(m)
        elif way == "pread":
            os.preadv(fd, [buf], 0)
            conn.sendall(buf)
        else:
            conn.sendall(held)
    os.close(fd)
    return cpu() - start


def one(kind: str, way: str, path: str, blocks: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "tcp":
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
        elif kind == "veth":  # the sender's end in the namespace, as another pod's
            with in_netns(NETNS):
                listener = socket.socket()
            listener.bind((THERE, 0))
        else:
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(f"{tmp}/s")
        listener.listen(1)
        addr = listener.getsockname()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # (never back into main: its cleanup is the parent's)
            try:
                conn, _ = listener.accept()
                os.write(w, f"{sender(conn, path, way, blocks)}".encode())
            finally:
                os._exit(0)
        s = socket.socket(listener.family)
        s.connect(addr)
        view = memoryview(mmap.mmap(-1, BLOCK))
        start, t0 = cpu(), time.perf_counter()
        for _ in range(blocks):
            s.send(b"GET")
            got = 0
            while got < BLOCK:
                n = s.recv_into(view[got:], BLOCK - got, socket.MSG_WAITALL)
                if not n:
                    raise ConnectionError("sender went away")
                got += n
        took, received = time.perf_counter() - t0, cpu() - start
        os.waitpid(pid, 0)
        sent = float(os.read(r, 64))
        os.close(r)
        os.close(w)
        s.close()
        listener.close()
    gib = blocks * BLOCK / 2**30
    return {
        "MiB_per_s": round(gib * 1024 / took),
        "sender_cpu_s_per_GiB": round(sent / gib, 3),
        "receiver_cpu_s_per_GiB": round(received / gib, 3),
    }


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """This thread in network namespace `name` (sockets made meanwhile belong to it), and
    back in its own after (Python 3.11 has no os.setns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    other = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(other, 0) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        try:
            yield
        finally:
            if libc.setns(own, 0) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(other)


def _remove_stale() -> None:
    """Namespaces and links an earlier run killed before its cleanup left (their address
    would take this run's packets)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in names.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith("fluidfed-bench-"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        fields = line.split(":")
        link = fields[1].strip().split("@")[0] if len(fields) > 1 else ""
        if link.startswith("ffbench") and link.endswith("a"):
            subprocess.run(["ip", "link", "del", link], capture_output=True)


@contextlib.contextmanager
def veth_pair(mtu: int) -> Iterator[None]:
    """A network namespace NETNS joined to this one by a veth pair (HERE here, THERE in
    it), removed after."""
    if shutil.which("ip") is None:
        raise SystemExit("--veth needs iproute2's `ip` (Debian: apt-get install iproute2)")
    _remove_stale()
    here, there = f"ffbench{os.getpid()}a", f"ffbench{os.getpid()}b"
    steps = [
        ["ip", "netns", "add", NETNS],
        ["ip", "link", "add", here, "mtu", str(mtu), "type", "veth", "peer", "name", there],
        ["ip", "link", "set", there, "netns", NETNS],
        ["ip", "addr", "add", f"{HERE}/30", "dev", here],
        ["ip", "link", "set", here, "up"],
        ["ip", "-n", NETNS, "link", "set", there, "mtu", str(mtu)],
        ["ip", "-n", NETNS, "addr", "add", f"{THERE}/30", "dev", there],
        ["ip", "-n", NETNS, "link", "set", there, "up"],
    ]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"--veth: {' '.join(step)}: {done.stderr.strip()} (needs root)")
        yield
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--blocks", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--veth", action="store_true", help="also TCP through a veth pair")
    ap.add_argument("--mtu", type=int, default=1500, help="the veth pair's MTU")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.mtu != 1500 and not args.veth:
        ap.error("--mtu sets the veth pair's MTU: it needs --veth")
    kinds = ("tcp", "unix", "veth") if args.veth else ("tcp", "unix")
    with contextlib.ExitStack() as stack, tempfile.NamedTemporaryFile(dir="/var/tmp") as f:
        if args.veth:
            stack.enter_context(veth_pair(args.mtu))
        f.write(os.urandom(BLOCK))
        f.flush()
        Path(f.name).read_bytes()  # in the page cache, as a checked block a worker sends
        rows = []
        for r in range(args.rounds):
            for kind in kinds:
                for way in WAYS:
                    got = {
                        "round": r,
                        "socket": kind if kind != "veth" else f"veth, MTU {args.mtu}",
                        "way": way,
                        **one(kind, way, f.name, args.blocks),
                    }
                    print(json.dumps(got), flush=True)
                    rows.append(got)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
