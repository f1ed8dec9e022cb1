"""What a 4 MiB block costs to send and receive between two processes on one machine, by
how the sender sends it: sendfile(2) from a file in the page cache (a worker serving a
checked block over plain HTTP), send() from a mapping of that file, pread() into a reused
buffer then send(), and send() from memory (a block just fetched). The receiver is the
sidecar's: recv_into(MSG_WAITALL) into a reused buffer. Over TCP on loopback (how
bench/peers.py's "worker on another node" row runs on one machine, and how pods on one
node reach each other through veth) and over a Unix socket.

    python bench/loopback_send.py [--blocks 512] [--rounds 2] [--out FILE]

Figures per way, per round: MiB/s, and the CPU seconds per GiB of the sender and of the
receiver (each its own process, getrusage). Run it under the bench lock:

    flock /tmp/fluidfed-bench.lock python3 bench/loopback_send.py
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import socket
import tempfile
import time
from pathlib import Path

BLOCK = 4 * 2**20
WAYS = ("sendfile", "mapped", "pread", "memory")


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
        else:
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(f"{tmp}/s")
        listener.listen(1)
        addr = listener.getsockname()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            conn, _ = listener.accept()
            os.write(w, f"{sender(conn, path, way, blocks)}".encode())
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--blocks", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.NamedTemporaryFile(dir="/var/tmp") as f:
        f.write(os.urandom(BLOCK))
        f.flush()
        Path(f.name).read_bytes()  # in the page cache, as a checked block a worker sends
        rows = []
        for r in range(args.rounds):
            for kind in ("tcp", "unix"):
                for way in WAYS:
                    got = {
                        "round": r,
                        "socket": kind,
                        "way": way,
                        **one(kind, way, f.name, args.blocks),
                    }
                    print(json.dumps(got), flush=True)
                    rows.append(got)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
