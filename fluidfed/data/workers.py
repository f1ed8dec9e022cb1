"""The cache-worker client: how sidecars, peers and the agent talk to a cache worker.

The messages, routes and headers are in `fluidfed.data.protocol`, shared with the worker.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from typing import NamedTuple, TypeVar

import aiohttp

from fluidfed import errors
from fluidfed.data import blockfile, blocks, heap, protocol, receive
from fluidfed.data.layout import FileRef
from fluidfed.errors import ConfigError

READ_SIZE = 2**20  # bytes per socket read when receiving blocks
THREAD_FROM = 2**20  # bytes of a block from which it is received in a thread (`_large`)


class Fetched(NamedTuple):
    data: blocks.Data
    crc: int
    hit: bool  # the worker had it (else it read the UFS for us)
    local: bool = False  # read from the worker's block file on this machine
    path: str = ""  # ... that file
    ahead: int = 0  # blocks after it the worker read with it for us (`protocol.AHEAD`)
    # asked for `joined`: the blocks after it that came in the same answer, as (data, CRC,
    # hit), at most the run asked for, up to the first that arrived damaged or of another
    # length than its block's (asked for on its own again)
    rest: tuple[tuple[blocks.Data, int, bool], ...] = ()
    # ... and whether the worker joins runs at all (None: not asked; False: an older worker)
    joined: bool | None = None
    # the block file the worker named could not be opened here for want of descriptors or
    # memory (`errors.SCARCE`): it came over HTTP instead
    short: bool = False


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
    conns: receive.Connections | None = None,
    run: int = 0,
    block_size: int = 0,
) -> Fetched:
    """The block from the worker at `url`, or `span` (offset in the block, length) of it,
    which the worker cuts from the whole block it caches. `run`: how many blocks after
    this one the caller asks for next (a sequential reader), which a worker missing this
    one may read from the under storage with it (`protocol.BlockQuery.run`), and sends
    after it in the same answer, with those of them it holds (`Fetched.rest`; received
    with `conns` only, each block into a buffer of its own; with the dataset's
    `block_size` each must be its block's length, and at most `run` are taken).

    A worker sends a disk block it has checked before as it lies on disk; if it arrives
    damaged, it is asked for again with `verify`, which makes the worker read and check
    it (dropping and refetching a corrupt copy).

    With `local`, a worker holding the block checked on disk answers with the file's path
    instead (short-circuit read: the reader on the same machine reads the page cache
    itself, no bytes over the socket); NotLocal if that path is not visible here.

    With `conns`, the block is received straight into a buffer of its size
    (`fluidfed.data.receive`, over TLS for an https worker, verified with the context
    `conns` was given) with `session`'s headers (the credential) and timeout: in a thread,
    or on the event loop for a small file's block (`_large`); without, through `session`
    (its connector verifies)."""
    query = protocol.BlockQuery(
        mount=ref.mount,
        key=ref.key,
        size=ref.size,
        index=index,
        version=ref.version,
        span=protocol.Span(*span) if span is not None else None,
        verify=verify,
        local=local and not verify,
        run=run,
        joined=bool(run) and span is None and conns is not None and conns.handles(url),
    )
    again = functools.partial(get_block, session, url, key, ref, index, span, conns=conns)
    target = protocol.block_url(url, key)
    headers: Mapping[str, str]
    answer_rest: tuple[tuple[blocks.Data, int], ...] = ()  # (`receive.Answer.rest`)
    got: int | None = None  # the body's CRC, where it was computed as it arrived
    if conns is not None and conns.handles(url):
        # a small file's block on the event loop: not worth a thread's hand-off
        if query.joined:  # (several blocks, each into a buffer of its own: in a thread)
            answer = await conns.get(
                target, query.params(), session.headers, _timeout(session), split=_parts
            )
        else:
            get = conns.get if _large(ref, span) else conns.get_on_loop
            answer = await get(target, query.params(), session.headers, _timeout(session))
        if answer.status != 200:
            text = bytes(answer.body).decode(errors="replace")
            raise errors.WorkerError(f"{url}: {answer.status} {text}", status=answer.status)
        data: blocks.Data = answer.body
        headers, got, answer_rest = answer.headers, answer.crc, answer.rest
    else:
        try:
            async with session.get(target, params=query.params()) as r:
                if r.status != 200:
                    raise errors.WorkerError(f"{url}: {r.status} {await r.text()}", status=r.status)
                if (r.content_length or 0) > receive.MAX_BODY:
                    raise errors.WorkerError(
                        f"{url}: answer of {r.content_length} bytes: a block is at most "
                        f"{receive.MAX_BODY}"
                    )
                _large_reads(r)
                data = await r.read()
                headers = r.headers
        except (aiohttp.ClientError, TimeoutError) as err:
            raise errors.WorkerError(f"{url}: {str(err) or 'no answer in time'}") from err
    crc = int(headers.get(protocol.CHECKSUM, "-1"))
    hit = headers.get(protocol.CACHE) == "hit"
    path = headers.get(protocol.LOCAL)
    length = int(headers.get(protocol.LENGTH, "0"))
    if path is not None:
        try:
            take = conns.buffers.take if conns is not None else heap.aligned
            data, got = await blockfile.load_block_file(path, take)
        except errors.CorruptBlock:  # the worker checks it, drops it and fetches again
            return await again(verify=True)
        except OSError as err:
            if err.errno in errors.SCARCE:  # (this reader is short, not the file: over HTTP,
                # as this answer said: its hit or miss)
                return (await again())._replace(hit=hit, short=True)
            raise errors.NotLocal(f"{url}: block file {path} is not readable here: {err}") from err
        if len(data) != length or got != crc:  # replaced since the worker answered
            return await again()
        return Fetched(data, crc, hit, local=True, path=path)
    rest: list[tuple[blocks.Data, int, bool]] = []
    if answer_rest:
        said = protocol.parse_parts(headers[protocol.PARTS], receive.MAX_BODY)
        for i, ((part, came), p) in enumerate(zip(answer_rest, said[:run], strict=False)):
            want = blocks.block_span(ref.size, block_size, index + 1 + i)[1] if block_size else 0
            if came != p.crc or want not in (0, len(part)):
                break  # (asked for again on its own: checked end to end there)
            rest.append((part, p.crc, p.hit))
    joined = protocol.PARTS in headers if query.joined else None
    if got is None:
        got = await blocks.checksum_off_loop(data)
    if got != crc:
        if not verify:
            # the first again, checked at the worker; those after it that came whole kept
            # (the worker counted them served: asked for again, they would count twice)
            fixed = await again(verify=True)
            return fixed._replace(rest=tuple(rest), joined=joined)
        raise errors.WorkerError(f"{url}: block {key} arrived damaged (checksum mismatch)")
    ahead = headers.get(protocol.AHEAD, "0")
    return Fetched(
        data,
        crc,
        hit,
        ahead=int(ahead) if ahead.isdigit() else 0,
        rest=tuple(rest),
        joined=joined,
    )


def _parts(headers: Mapping[str, str], length: int) -> list[int]:
    """The sizes of the blocks in a joined answer of `length` bytes (`protocol.PARTS`): the
    first, then those after it; just the one block where the header is absent."""
    text = headers.get(protocol.PARTS)
    if not text:
        return []
    rest = [p.length for p in protocol.parse_parts(text, receive.MAX_BODY)]
    first = length - sum(rest)
    if not 0 < first <= receive.MAX_BODY:
        raise ValueError(f"{protocol.PARTS}: {sum(rest)} bytes of parts in a body of {length}")
    return [first, *rest]


def _large(ref: FileRef, span: tuple[int, int] | None) -> bool:
    """Whether the answer may be large enough to be worth a thread: a span of at least
    THREAD_FROM, or any block of a file that large (its blocks are, but for the last). A
    small file's block costs the thread hand-off more than the copies it saves (figures:
    README, "Measured design decisions")."""
    return (span[1] if span is not None else ref.size) >= THREAD_FROM


def _timeout(session: aiohttp.ClientSession) -> float:
    """The seconds `session` gives a request (aiohttp's default, 5 minutes, if none)."""
    t = session.timeout
    return t.total or t.sock_read or 300.0


def _large_reads(r: aiohttp.ClientResponse) -> None:
    """Let the connection read up to 1 MiB per system call instead of asyncio's 256 KiB:
    a block is 4 MiB, and each read costs the event loop a callback and a buffer (figures:
    README, "Measured design decisions"). The connection is kept alive, so this holds
    for the blocks after this one. `max_size` is an attribute of asyncio's socket
    transport, not public API: where it is absent this does nothing, as on uvloop, whose
    transports read into the loop's own 250 KB buffer (and were faster all the same:
    README, the read path on uvloop)."""
    transport = r.connection.transport if r.connection is not None else None
    if transport is not None and getattr(transport, "max_size", 0) < READ_SIZE:
        with contextlib.suppress(AttributeError):
            transport.max_size = READ_SIZE  # type: ignore[attr-defined]


async def touch(session: aiohttp.ClientSession, url: str, blocks: list[tuple[str, int]]) -> None:
    """Tell a worker which of its blocks were read from its files (they stay hot there)."""
    await _call(
        session, "POST", url + protocol.TOUCH, protocol.TouchResult, protocol.Touched(blocks=blocks)
    )


async def put_block(
    session: aiohttp.ClientSession, url: str, key: str, data: blocks.Data, crc: int
) -> None:
    try:
        async with session.put(
            protocol.block_url(url, key), data=data, headers={protocol.CHECKSUM: str(crc)}
        ) as r:
            if r.status not in (200, 201, 204):
                raise errors.WorkerError(f"{url}: {r.status} {await r.text()}", status=r.status)
    except (aiohttp.ClientError, TimeoutError) as err:
        raise errors.WorkerError(f"{url}: {str(err) or 'no answer in time'}") from err


M = TypeVar("M", bound=protocol.Message)


async def _call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    answer: type[M],
    body: protocol.Message | None = None,
) -> M:
    """One JSON exchange: `body` encoded, the answer decoded as `answer`; WorkerError for
    a refusal, an unreachable worker or an answer of another shape."""
    try:
        async with session.request(
            method,
            url,
            data=protocol.encode(body) if body is not None else None,
            headers={"Content-Type": protocol.JSON} if body is not None else None,
        ) as r:
            if r.status >= 300:
                raise errors.WorkerError(f"{url}: {r.status} {await r.text()}", status=r.status)
            return protocol.decode(answer, await r.read())
    except (aiohttp.ClientError, TimeoutError) as err:
        raise errors.WorkerError(f"{url}: {str(err) or 'no answer in time'}") from err
    except ConfigError as err:
        raise errors.WorkerError(f"{url}: unexpected answer: {err}") from err


async def status(session: aiohttp.ClientSession, url: str) -> protocol.WorkerStatus:
    return await _call(session, "GET", url + protocol.STATUS, protocol.WorkerStatus)


async def start_load(
    session: aiohttp.ClientSession, url: str, path: str, peers: list[str] | None = None
) -> protocol.LoadProgress:
    body = protocol.LoadRequest(path=path, peers=peers)
    return await _call(session, "POST", url + protocol.LOAD, protocol.LoadProgress, body)


async def load_progress(session: aiohttp.ClientSession, url: str) -> protocol.LoadProgress:
    return await _call(session, "GET", url + protocol.LOAD, protocol.LoadProgress)


async def drain(session: aiohttp.ClientSession, url: str, peers: list[str]) -> protocol.DrainResult:
    body = protocol.DrainRequest(peers=peers)
    return await _call(session, "POST", url + protocol.DRAIN, protocol.DrainResult, body)


async def register(
    session: aiohttp.ClientSession, agent: str, registration: protocol.WorkerRegistration
) -> None:
    """A worker's heartbeat to its agent."""
    try:
        async with session.post(
            agent + protocol.REGISTER,
            data=protocol.encode(registration),
            headers={"Content-Type": protocol.JSON},
        ) as r:
            if r.status >= 300:
                raise errors.WorkerError(f"{agent}: {r.status} {await r.text()}", status=r.status)
    except (aiohttp.ClientError, TimeoutError) as err:
        raise errors.WorkerError(f"{agent}: {str(err) or 'no answer in time'}") from err
