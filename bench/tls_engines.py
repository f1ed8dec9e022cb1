"""What one small TLS record costs the server with each of fluidfed's TLS engines.

    python bench/tls_engines.py [--conns 1 1000 5000] [--rounds 20] [--size 300]

The hub's watch streams send one record per delivered binding to each agent, so what a
server pays per small record is most of what TLS adds to the fan-out (`bench/hub_fanout.py`).
This bench takes the event loop and HTTP away and keeps the sockets: N TCP connections
on 127.0.0.1, the server side of each on one engine, the client side Python's
`ssl` in the same process, handshakes done. Then `--rounds` rounds of one `--size`-byte line
written to every connection in turn, the clients drained after each round (not counted).
It reports the server's CPU (the writing thread's, CLOCK_THREAD_CPUTIME_ID) per line, the
median of the rounds (with fewer than 200 connections each gets several lines a round):

* `plain`: `socket.send`, the floor (the system call every engine makes too);
* `openssl`: `ssl.SSLSocket.send`, OpenSSL's socket BIO (fluidfed/tlsserve.py's
  OpenSSLTransport);
* `rustls`: `fluidfed._rustls.Conn.write` (RustlsTransport): rustls encrypts and sends.

`*_extra_us` is what the engine adds to a line over `plain`.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fluidfed import _rustls, pki, tls

ENGINES = ("plain", "openssl", "rustls")


def contexts(directory: Path) -> tuple[tls.ServerContext, ssl.SSLContext]:
    ca = pki.new_ca("bench-ca")
    pair = pki.issue(ca, "localhost", hosts=("localhost",), server=True)
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    (directory / "cert.pem").write_bytes(pair.cert_pem)
    (directory / "key.pem").write_bytes(pair.key_pem)
    server = tls.server_context(str(directory / "cert.pem"), str(directory / "key.pem"))
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(directory / "ca.pem")
    return server, client


def thread_cpu() -> float:
    return time.thread_time()  # CLOCK_THREAD_CPUTIME_ID: the scheduler's, not ticks


class Pair:
    """One connection: the server's writer on `engine`, the client's reader."""

    def __init__(
        self,
        engine: str,
        listener: socket.socket,
        server_ctx: tls.ServerContext,
        client_ctx: ssl.SSLContext,
    ) -> None:
        b = socket.create_connection(listener.getsockname())
        a, _ = listener.accept()
        for s in (a, b):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sockets = (a, b)
        self.client: Any = b
        self.write: Callable[[bytes], Any] = a.send
        if engine == "plain":
            return
        self.client = client_ctx.wrap_socket(
            b, server_hostname="localhost", do_handshake_on_connect=False
        )
        if engine == "openssl":
            server = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
            self._handshake(lambda: _ssl_step(server))
            self.write = server.send
            self.server: Any = server
        else:
            assert server_ctx.pem is not None
            config = _rustls.ServerConfig(*server_ctx.pem)
            conn = _rustls.Conn(config, a.fileno())
            self._handshake(conn.handshake)
            self.write = conn.write
            self.server = conn

    def _handshake(self, server_step: Callable[[], int]) -> None:
        server_done = client_done = False
        for _ in range(100):
            if not client_done:
                client_done = _ssl_step(self.client) == _rustls.DONE
            if not server_done:
                server_done = server_step() == _rustls.DONE
            if server_done and client_done:
                return
        raise RuntimeError("the handshake did not finish")

    def drain(self) -> int:
        got = 0
        while True:
            try:
                data = self.client.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                return got
            if not data:
                return got
            got += len(data)


def _ssl_step(sock: ssl.SSLSocket) -> int:
    try:
        sock.do_handshake()
    except ssl.SSLWantReadError:
        return _rustls.WANT_READ
    except ssl.SSLWantWriteError:
        return _rustls.WANT_WRITE
    return _rustls.DONE


def measure(engine: str, n: int, rounds: int, size: int, ctxs: tuple[Any, Any]) -> float:
    """Server CPU µs per line on `engine` with `n` connections (median over the rounds)."""
    with socket.create_server(("127.0.0.1", 0), backlog=n) as listener:
        pairs = [Pair(engine, listener, *ctxs) for _ in range(n)]
    line = b"x" * (size - 1) + b"\n"
    each = max(1, 200 // n)  # lines per connection per round: 200 a round at least
    per_round = []
    try:
        for _ in range(rounds):
            t0 = thread_cpu()
            for p in pairs:
                for _ in range(each):
                    p.write(line)
            per_round.append((thread_cpu() - t0) / (n * each) * 1e6)
            for p in pairs:
                if p.drain() != size * each:
                    raise RuntimeError(f"{engine}: a client did not get its lines")
    finally:
        for p in pairs:
            for s in p.sockets:
                s.close()
    return statistics.median(per_round)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, nargs="+", default=[1, 1000, 5000])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--size", type=int, default=300, help="bytes per line (a binding: ~250)")
    ap.add_argument("--out", default="tls_engines.json", help="file name under bench/results")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * max(args.conns) + 100
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    results = []
    with tempfile.TemporaryDirectory() as d:
        ctxs = contexts(Path(d))
        for n in args.conns:
            row: dict[str, Any] = {"conns": n}
            for engine in ENGINES:
                row[f"{engine}_us"] = round(measure(engine, n, args.rounds, args.size, ctxs), 3)
            for engine in ENGINES[1:]:
                row[f"{engine}_extra_us"] = round(row[f"{engine}_us"] - row["plain_us"], 3)
            row["rustls_vs_openssl_extra"] = round(
                row["rustls_extra_us"] / row["openssl_extra_us"], 3
            )
            print(json.dumps(row), flush=True)
            results.append(row)
    out = Path(__file__).resolve().parent / "results" / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"argv": sys.argv[1:], "size": args.size, "rounds": args.rounds}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
