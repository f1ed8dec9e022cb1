"""A TCP forwarder from one loopback port to one address: a cluster with a real node binds
its kube-apiserver to the host side of the node's veth (never every interface), and this
keeps the loopback clients (kubeconfig, controllers, kwok, tests) working.

    python -m devkit.local.forward 127.0.0.1:PORT HOST:PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from fluidfed import aio


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof() if writer.can_write_eof() else writer.close()


async def serve(listen: str, target: str) -> None:
    to_host, to_port = _split(target)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(to_host, to_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()

    host, port = _split(listen)
    server = await asyncio.start_server(handle, host, port, reuse_address=True)
    print(f"forwarding {listen} -> {target}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        aio.run(serve(argv[0], argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
