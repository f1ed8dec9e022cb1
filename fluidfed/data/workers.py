"""Talking to cache workers over HTTP: the protocol both ends share.

    GET  /v1/blocks/{key}?m=&p=&v=&s=&i=   a block; fetched from the UFS on a miss
                                    (&r=OFF-LEN: only those bytes of it; &verify=1: read
                                    and check it even if it was checked before)
    PUT  /v1/blocks/{key}                  hand a block over (scale-in)
    GET  /v1/status                        blocks, bytes per tier, hits, misses, evictions
    POST /v1/load      {"path": P}         pull what this worker owns under P (warm-up)
    GET  /v1/load                          warm-up progress
    POST /v1/drain     {"peers": [...]}    hand every block to its owner among `peers`
    POST /v1/touch     {"blocks": [[key, length], ...]}   blocks a reader on the worker's
                                    machine read from its files: hits, kept recently used

A block travels with its CRC-32 in `X-Fluidfed-Checksum`; the receiver checks it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, NamedTuple

import aiohttp
import msgspec

from fluidfed.data import blockfile, blocks
from fluidfed.data.layout import FileRef
from fluidfed.errors import FluidfedError

CHECKSUM = "X-Fluidfed-Checksum"
CACHE = "X-Fluidfed-Cache"  # "hit" or "miss": where the worker found the block
LOCAL = "X-Fluidfed-Local"  # short-circuit: the block file's path on the worker's machine
LENGTH = "X-Fluidfed-Length"  # ... and the block's length (the file has an 8-byte trailer)
READ_SIZE = 2**20  # bytes per socket read when receiving blocks


class WorkerError(FluidfedError):
    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotLocal(WorkerError):
    """The worker's block file is not visible here: the worker is on another machine."""


class Fetched(NamedTuple):
    data: blocks.Data
    crc: int
    hit: bool  # the worker had it (else it read the UFS for us)
    local: bool = False  # read from the worker's block file on this machine
    path: str = ""  # ... that file


class Touched(msgspec.Struct):
    blocks: list[tuple[str, int]]  # (key, length) read from the worker's files


class LoadProgress(msgspec.Struct, kw_only=True):
    state: str = "idle"  # idle | running | done | failed
    path: str = ""
    blocks: int = 0  # blocks this worker owns under the path
    done: int = 0
    cached: int = 0  # of `blocks`, how many are in the cache when the load finished
    bytes: int = 0
    errors: int = 0
    message: str = ""


def block_query(ref: FileRef, index: int) -> dict[str, str]:
    return {
        "m": str(ref.mount),
        "p": ref.key,
        "v": ref.version,
        "s": str(ref.size),
        "i": str(index),
    }


async def get_block(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    ref: FileRef,
    index: int,
    span: tuple[int, int] | None = None,
    *,
    verify: bool = False,
    local: bool = False,
) -> Fetched:
    """The block from the worker at `url`, or `span` (offset in the block, length) of it,
    which the worker cuts from the whole block it caches.

    A worker sends a disk block it has checked before as it lies on disk; if it arrives
    damaged, it is asked for again with `verify`, which makes the worker read and check
    it (dropping and refetching a corrupt copy).

    With `local`, a worker holding the block checked on disk answers with the file's path
    instead (short-circuit read: the reader on the same machine reads the page cache
    itself, no bytes over the socket); NotLocal if that path is not visible here."""
    params = block_query(ref, index)
    if span is not None:
        params["r"] = f"{span[0]}-{span[1]}"
    if verify:
        params["verify"] = "1"
    elif local:
        params["local"] = "1"
    try:
        async with session.get(f"{url}/v1/blocks/{key}", params=params) as r:
            if r.status != 200:
                raise WorkerError(f"{url}: {r.status} {await r.text()}", status=r.status)
            _large_reads(r)
            data: blocks.Data = await r.read()
            crc = int(r.headers.get(CHECKSUM, "-1"))
            hit = r.headers.get(CACHE) == "hit"
            path = r.headers.get(LOCAL)
            length = int(r.headers.get(LENGTH, "0"))
    except aiohttp.ClientError as err:
        raise WorkerError(f"{url}: {err}") from err
    if path is not None:
        try:
            data, got = await blockfile.load_block_file(path)
        except blockfile.CorruptBlock:  # the worker checks it, drops it and fetches again
            return await get_block(session, url, key, ref, index, span, verify=True)
        except OSError as err:
            raise NotLocal(f"{url}: block file {path} is not readable here: {err}") from err
        if len(data) != length or got != crc:  # replaced since the worker answered
            return await get_block(session, url, key, ref, index, span)
        return Fetched(data, crc, hit, local=True, path=path)
    # zlib releases the GIL on large buffers: check on another core, off the event loop
    got = (
        await asyncio.to_thread(blocks.checksum, data)
        if len(data) > 2**18
        else (blocks.checksum(data))
    )
    if got != crc:
        if not verify:
            return await get_block(session, url, key, ref, index, span, verify=True)
        raise WorkerError(f"{url}: block {key} arrived damaged (checksum mismatch)")
    return Fetched(data, crc, hit)


def _large_reads(r: aiohttp.ClientResponse) -> None:
    """Let the connection read up to 1 MiB per system call instead of asyncio's 256 KiB:
    a block is 4 MiB, and each read costs the event loop a callback and a buffer (warm
    reads through the sidecar: 655 -> 700 MiB/s, 13% less of its CPU). The connection
    is kept alive, so this holds for the blocks after this one. `max_size` is an
    attribute of asyncio's socket transport, not public API: where it is absent this
    does nothing."""
    transport = r.connection.transport if r.connection is not None else None
    if transport is not None and getattr(transport, "max_size", 0) < READ_SIZE:
        with contextlib.suppress(AttributeError):
            transport.max_size = READ_SIZE  # type: ignore[attr-defined]


async def touch(session: aiohttp.ClientSession, url: str, blocks: list[tuple[str, int]]) -> None:
    """Tell a worker which of its blocks were read from its files (they stay hot there)."""
    await _json(session, "POST", f"{url}/v1/touch", msgspec.to_builtins(Touched(blocks)))


async def put_block(
    session: aiohttp.ClientSession, url: str, key: str, data: blocks.Data, crc: int
) -> None:
    try:
        async with session.put(
            f"{url}/v1/blocks/{key}", data=data, headers={CHECKSUM: str(crc)}
        ) as r:
            if r.status not in (200, 201, 204):
                raise WorkerError(f"{url}: {r.status} {await r.text()}", status=r.status)
    except aiohttp.ClientError as err:
        raise WorkerError(f"{url}: {err}") from err


async def _json(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    try:
        async with session.request(method, url, json=body) as r:
            if r.status >= 300:
                raise WorkerError(f"{url}: {r.status} {await r.text()}", status=r.status)
            return await r.json()
    except aiohttp.ClientError as err:
        raise WorkerError(f"{url}: {err}") from err


async def status(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    got: dict[str, Any] = await _json(session, "GET", f"{url}/v1/status")
    return got


async def start_load(
    session: aiohttp.ClientSession, url: str, path: str, peers: list[str] | None = None
) -> LoadProgress:
    body: dict[str, Any] = {"path": path}
    if peers is not None:
        body["peers"] = peers
    return msgspec.convert(await _json(session, "POST", f"{url}/v1/load", body), LoadProgress)


async def load_progress(session: aiohttp.ClientSession, url: str) -> LoadProgress:
    return msgspec.convert(await _json(session, "GET", f"{url}/v1/load"), LoadProgress)


async def drain(session: aiohttp.ClientSession, url: str, peers: list[str]) -> dict[str, Any]:
    got: dict[str, Any] = await _json(session, "POST", f"{url}/v1/drain", {"peers": peers})
    return got
