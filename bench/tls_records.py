"""What one TLS record costs a server as the number of open TLS connections grows.

    python bench/tls_records.py [--conns 1 200 1000 5000] [--rounds 20] [--size 900]

The hub's watch streams send one record per delivered binding (README, "Measured design
decisions": one socket write, one record), and `bench/hub_fanout.py` found the extra CPU
TLS costs per record growing with the number of watchers. This bench takes everything
but OpenSSL away: N server-side `ssl.SSLObject`s on memory BIOs (Python's own TLS, the one
asyncio's and uvloop's transports drive), each with its handshake done against a client
object in memory, then `--rounds` rounds of one `--size`-byte record written to every
connection in turn (`SSLObject.write` and the outgoing BIO's `read`, what a transport does
per write), no sockets, no event loop. It reports the server's CPU microseconds per
record for each N, and the same for the bytes copied alone (the plain path's floor).

`--no-release-buffers` clears OpenSSL's SSL_MODE_RELEASE_BUFFERS, which CPython sets on
every context (each record's write buffer is then kept per connection instead of taken
from the allocator and given back): an experiment through ctypes on CPython's private
object layout, for measuring only.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import resource
import ssl
import sys
import tempfile
import time
from pathlib import Path

from fluidfed import pki

SSL_CTRL_CLEAR_MODE = 78
SSL_MODE_RELEASE_BUFFERS = 0x10


def contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = pki.new_ca("bench-ca")
    pair = pki.issue(ca, "localhost", hosts=("localhost", "127.0.0.1"), server=True)
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    (directory / "cert.pem").write_bytes(pair.cert_pem)
    (directory / "key.pem").write_bytes(pair.key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(directory / "ca.pem")
    return server, client


def keep_buffers(ctx: ssl.SSLContext) -> None:
    lib = ctypes.CDLL(ctypes.util.find_library("ssl") or "libssl.so.3")
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    # PySSLContext: PyObject_HEAD (refcount, type), then the SSL_CTX pointer
    raw = ctypes.c_void_p.from_address(id(ctx) + 2 * ctypes.sizeof(ctypes.c_void_p)).value
    mode = lib.SSL_CTX_ctrl(raw, SSL_CTRL_CLEAR_MODE, SSL_MODE_RELEASE_BUFFERS, None)
    if mode & SSL_MODE_RELEASE_BUFFERS:
        raise SystemExit("clearing SSL_MODE_RELEASE_BUFFERS did not take")


class Pair:
    def __init__(self, server: ssl.SSLContext, client: ssl.SSLContext) -> None:
        self.s_in, self.s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.c_in, self.c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.s = server.wrap_bio(self.s_in, self.s_out, server_side=True)
        self.c = client.wrap_bio(self.c_in, self.c_out, server_hostname="localhost")
        done = [False, False]
        while not all(done):
            for i, (obj, out, peer_in) in enumerate(
                ((self.c, self.c_out, self.s_in), (self.s, self.s_out, self.c_in))
            ):
                if not done[i]:
                    try:
                        obj.do_handshake()
                        done[i] = True
                    except ssl.SSLWantReadError:
                        pass
                data = out.read()
                if data:
                    peer_in.write(data)
        # the server's session tickets, read by the client: the streams start clean
        with contextlib.suppress(ssl.SSLWantReadError):
            self.c.read(1)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(
    n: int, rounds: int, size: int, server: ssl.SSLContext, client: ssl.SSLContext
) -> dict[str, float]:
    before = rss_kib()
    pairs = [Pair(server, client) for _ in range(n)]
    per_conn = (rss_kib() - before) / n
    payload = b"x" * size
    objs = [(p.s.write, p.s_out.read) for p in pairs]
    sinks = [bytearray(64 * 1024) for _ in range(n)]  # the plain path: one copy per write
    t0 = time.process_time()
    for _ in range(rounds):
        for write, read in objs:
            write(payload)
            read()
    tls = (time.process_time() - t0) / (rounds * n) * 1e6
    t0 = time.process_time()
    for _ in range(rounds):
        for sink in sinks:
            sink[:size] = payload
            bytes(sink[:size])
    plain = (time.process_time() - t0) / (rounds * n) * 1e6
    return {
        "conns": n,
        "tls_us_per_record": round(tls, 2),
        "copy_us_per_record": round(plain, 2),
        "rss_kib_per_conn": round(per_conn, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, nargs="+", default=[1, 200, 1000, 5000])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--size", type=int, default=900, help="bytes per record (a binding event)")
    ap.add_argument("--no-release-buffers", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server, client = contexts(Path(tmp))
    if args.no_release_buffers:
        keep_buffers(server)
    print(f"{ssl.OPENSSL_VERSION}, Python {sys.version.split()[0]}", file=sys.stderr)
    rows = []
    for n in args.conns:
        row = measure(n, args.rounds, args.size, server, client)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} KiB", file=sys.stderr)


if __name__ == "__main__":
    main()
