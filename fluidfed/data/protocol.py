"""The cache-worker protocol: every message that crosses HTTP between a cache worker, the
sidecars that read from it, its peers and the agent it registers with, as one struct each,
shared by both ends.

    GET  /v1/blocks/{key}?BlockQuery       a block; fetched from the UFS on a miss
    PUT  /v1/blocks/{key}                  hand a block over (scale-in); CHECKSUM header
    GET  /v1/status                        -> WorkerStatus
    POST /v1/load      LoadRequest         -> LoadProgress: pull what it owns (warm-up)
    GET  /v1/load                          -> LoadProgress
    POST /v1/drain     DrainRequest        -> DrainResult: hand every block to its owner
    POST /v1/touch     Touched             -> TouchResult: blocks read from its files
    POST {agent}/v1/workers  WorkerRegistration   the worker's heartbeat to the agent

A block travels with its CRC-32 in `X-Fluidfed-Checksum` (the blocks a joined answer sends
after it, in `X-Fluidfed-Parts`); the receiver checks it.

Messages tolerate fields they do not know (an older and a newer version talk during an
upgrade) and encode every field, zeros too (readers index the status by key). The counters
a receiver adds up are required: a field renamed on one side is refused with a 400 that
names it, not summed as 0. A field added later gets a default, so older senders still pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, TypeVar

import msgspec

from fluidfed import codec
from fluidfed.data import blocks
from fluidfed.errors import ConfigError, Problem

# --- routes and headers -----------------------------------------------------------------

BLOCK = "/v1/blocks/{key}"
STATUS = "/v1/status"
LOAD = "/v1/load"
DRAIN = "/v1/drain"
TOUCH = "/v1/touch"
HEALTHZ = "/healthz"
METRICS = "/metrics"
REGISTER = "/v1/workers"  # on the agent's API

CHECKSUM = "X-Fluidfed-Checksum"
CACHE = "X-Fluidfed-Cache"  # "hit" or "miss": where the worker found the block
LOCAL = "X-Fluidfed-Local"  # short-circuit: the block file's path on the worker's machine
LENGTH = "X-Fluidfed-Length"  # ... and the block's length (the file has a trailer after it)
# on a miss asked for with `BlockQuery.run`: how many blocks after it the worker read with
# it for this reader (their first answers are misses too; an older worker says nothing)
AHEAD = "X-Fluidfed-Ahead"
# asked for with `BlockQuery.joined`: the blocks after the first that follow it in the same
# body, each `LENGTH/CRC/hit|miss`, comma-separated (`Part`), empty for none; absent from an
# older worker's answer (the body is the one block) and from an answer by path (`LOCAL`)
PARTS = "X-Fluidfed-Parts"
JSON = "application/json"
MAX_RUN = 3  # blocks a worker reads with a missing one, at most (`BlockQuery.run`: more is
# read as this many)


def block_url(url: str, key: str) -> str:
    return f"{url}{BLOCK.format(key=key)}"


class Part(NamedTuple):
    """A block sent after the first in one answer (`PARTS`)."""

    length: int
    crc: int
    hit: bool


def parts_header(parts: Iterable[Part]) -> str:
    return ",".join(f"{p.length}/{p.crc}/{'hit' if p.hit else 'miss'}" for p in parts)


def parse_parts(text: str, most: int) -> list[Part]:
    """The blocks after the first in an answer, from `PARTS` (empty: none): each of 1 to
    `most` bytes, at most MAX_RUN of them. ValueError saying what is wrong otherwise (the
    answer is then not to be trusted)."""
    parts: list[Part] = []
    if not text.strip():
        return parts
    for item in text.split(","):
        fields = item.strip().split("/")
        try:
            length, crc, cache = fields
            part = Part(int(length), int(crc), cache == "hit")
        except ValueError:
            cache, part = "", Part(0, -1, False)
        if cache not in ("hit", "miss") or not 0 < part.length <= most or part.crc < 0:
            raise ValueError(f"{PARTS}: bad part {item.strip()!r} (LENGTH/CRC/hit|miss)")
        parts.append(part)
    if len(parts) > MAX_RUN:
        raise ValueError(f"{PARTS}: {len(parts)} parts, at most {MAX_RUN}")
    return parts


# --- block requests -----------------------------------------------------------------------


class Span:
    """Bytes of a block: offset in it and length; `OFF-LEN` on the wire."""

    __slots__ = ("length", "offset")

    def __init__(self, offset: int, length: int) -> None:
        self.offset = offset
        self.length = length

    @classmethod
    def parse(cls, text: str) -> Span:
        lo, sep, n = text.partition("-")
        if not sep:
            raise ValueError(f"expected OFF-LEN, got {text!r}")
        return cls(int(lo), int(n))

    def __str__(self) -> str:
        return f"{self.offset}-{self.length}"

    def __repr__(self) -> str:
        return f"Span({self.offset}, {self.length})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Span) and (self.offset, self.length) == (
            other.offset,
            other.length,
        )

    def __hash__(self) -> int:
        return hash((self.offset, self.length))


class BlockQuery(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Which block `GET /v1/blocks/{key}` asks for, as query parameters. The short names
    are the wire format older workers and sidecars speak; flags are sent only when set
    (an older worker tests for their presence)."""

    SHAPE: ClassVar[str] = (
        "?m=MOUNT&p=PATH&s=SIZE&i=INDEX[&v=VERSION][&r=OFF-LEN][&verify=1|&local=1][&n=RUN][&j=1]"
    )

    mount: int = msgspec.field(name="m")
    key: str = msgspec.field(name="p")  # the object's path in the mount, as FileRef.key
    size: int = msgspec.field(name="s")
    index: int = msgspec.field(name="i")
    version: str = msgspec.field(default="", name="v")
    span: Span | None = msgspec.field(default=None, name="r")  # only these bytes of it
    verify: bool = False  # read and check it even if it was checked before
    local: bool = False  # answer with the block file's path if it is on disk, checked
    # blocks after this one a sequential reader asks this worker for next: on a miss the
    # worker may read them from the under storage with it, in one ranged read (`run_after`)
    run: Annotated[int, msgspec.Meta(ge=0)] = msgspec.field(default=0, name="n")
    # ... sent in this answer after it, those the worker holds or has just read (`PARTS`):
    # one request and one answer for a sequential reader's run instead of one per block
    joined: bool = msgspec.field(default=False, name="j")

    def block_key(self, dataset: str, block_size: int) -> str:
        return blocks.block_key(dataset, self.mount, self.key, self.version, block_size, self.index)

    def params(self) -> dict[str, str | int]:
        out: dict[str, str | int] = {_M: self.mount, _P: self.key, _S: self.size, _I: self.index}
        if self.version:
            out[_V] = self.version
        if self.span is not None:
            out[_R] = str(self.span)
        if self.verify:
            out[_VERIFY] = "1"
        if self.local:
            out[_LOCAL] = "1"
        if self.run:
            out[_N] = self.run
        if self.joined:
            out[_J] = "1"
        return out

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> BlockQuery:
        """The request from a query string; ConfigError naming the bad parameter. A flag
        is set by its presence, as older workers read it."""
        key = query.get(_P)
        if key is not None and not _plain_key(key):
            why = (
                f"object path {key!r} has a '..' between slashes: the worker reads below "
                "its mount alone, and checks a reader's sub-path against that place"
            )
            raise ConfigError([_expected(cls, Problem(why, path=_P))])
        try:  # once per block: plain lookups, a tenth of msgspec.convert on a multidict
            r = query.get(_R)
            return cls(
                mount=int(query[_M]),
                key=query[_P],
                size=int(query[_S]),
                index=int(query[_I]),
                version=query.get(_V, ""),
                span=Span.parse(r) if r else None,
                verify=_VERIFY in query,
                local=_LOCAL in query,
                run=_bounded_run(query.get(_N)),
                joined=_J in query,
            )
        except (KeyError, ValueError):
            pass
        try:  # ... and the schema says what is wrong
            got: BlockQuery = msgspec.convert(dict(query), cls, strict=False, dec_hook=_span)
        except msgspec.ValidationError as err:
            problem = codec.problem_of(err)
            missing = _MISSING.match(problem.message)
            if missing:  # at the top level msgspec names no path
                problem = Problem("required parameter is missing", path=missing.group(1))
            raise ConfigError([_expected(cls, problem)]) from None
        return got


_WIRE = {f.name: f.encode_name for f in msgspec.structs.fields(BlockQuery)}
_M, _P, _S, _I = _WIRE["mount"], _WIRE["key"], _WIRE["size"], _WIRE["index"]
_V, _R, _VERIFY, _LOCAL = _WIRE["version"], _WIRE["span"], _WIRE["verify"], _WIRE["local"]
_N, _J = _WIRE["run"], _WIRE["joined"]
_MISSING = re.compile(r"Object missing required field `([^`]+)`")


def _plain_key(key: str) -> bool:
    """Whether an object path stays below its mount: a '..' segment would step out of the
    mount's root, or the dataset's, where the read resolves it (a '.' one, or a leading '/'
    an HTTP mount's manifest may give, are read and checked alike: `layout.dataset_path`)."""
    return ".." not in key.split("/")


def _bounded_run(text: str | None) -> int:
    """`run` from its parameter, at most MAX_RUN (a newer sidecar may ask for more: this
    worker reads what it reads at most); ValueError for a negative count (the schema then
    says what is wrong)."""
    n = int(text) if text else 0
    if n < 0:
        raise ValueError(n)
    return min(n, MAX_RUN)


def _span(typ: type, value: Any) -> Any:
    if typ is Span:
        return Span.parse(value)
    raise NotImplementedError(f"no decoder for {typ!r}")


# --- JSON messages -------------------------------------------------------------------------


class Message(msgspec.Struct, kw_only=True):
    """The policy of every JSON message: unknown fields are tolerated, every field is
    encoded. `SHAPE` is what a sender who got it wrong is told to send. Not frozen: the
    worker updates its LoadProgress in place as a warm-up goes, and a frozen struct cannot
    derive from a mutable base."""

    SHAPE: ClassVar[str] = "{...}"


class TierStatus(Message):
    medium: str
    quota: int
    used: int
    blocks: int
    hits: int
    evictions: int
    # a disk tier whose filesystem is below its `min_free` even without its blocks: it
    # keeps none now (a node's disk that full), until space is freed
    short: bool = False


class UFSCounters(Message):
    reads: int  # blocks read from the under storage
    bytes: int
    errors: int
    presigned: int = 0  # of the reads, S3 blocks received over presigned URLs
    # of the reads, blocks received in one ranged read with the block before them (the
    # blocks a sequential reader asks for next: `BlockQuery.run`; S3's large blocks)
    joined: int = 0


class Served(Message):
    blocks: int  # blocks (or spans) served to sidecars
    bytes: int
    short_circuit: int  # blocks read by their reader from our disk
    located: int  # ... of which we were asked where the file is
    sendfile: int = 0  # blocks sent from their files with sendfile(2): no copy in the worker
    joined: int = 0  # blocks sent after another in the same answer (`BlockQuery.joined`)
    # blocks sent from files not in the page cache, read into it first in a thread, with
    # folios of a huge page asked for (`blockfile.read_in_huge_folios`)
    read_huge: int = 0


class Writes(Message):
    """The block files a worker's disk tiers wrote: those that failed, and where the small
    ones were written (`BlockStore.write_on_loop`)."""

    errors: int = 0  # files that could not be written (a full disk): answered, not kept
    on_loop: int = 0  # small blocks' files written (or tried) on the event loop
    on_loop_waited: int = 0  # ... of which kept the loop asleep (the disk, the throttle)
    # times small blocks' files went to the writing thread for a while (the waits added up)
    on_loop_stopped: int = 0
    # blocks evicted to keep their tier's filesystem `min_free` free, and blocks not kept
    # because even that could not
    shed: int = 0
    no_room: int = 0


LoadState = Literal["idle", "running", "done", "failed"]


class LoadProgress(Message):
    """A warm-up as it goes; the worker updates it in place."""

    state: LoadState = "idle"
    path: str = ""
    blocks: int = 0  # blocks this worker owns under the path
    done: int = 0
    cached: int = 0  # of `blocks`, how many are in the cache when the load finished
    bytes: int = 0
    errors: int = 0
    message: str = ""
    ufs_bytes: int = 0  # the under storage's bytes under the path (each worker lists it all)


class WorkerStatus(Message):
    """`GET /v1/status`, and what a worker reports to its agent."""

    url: str
    dataset: str
    peers: list[str]
    blocks: int
    used: int  # bytes cached, all tiers
    capacity: int  # bytes the tiers may hold
    hits: int
    misses: int
    corrupt: int
    evictions: int
    tiers: list[TierStatus]
    ufs: UFSCounters
    served: Served
    load: LoadProgress = msgspec.field(default_factory=LoadProgress)
    writing: int = 0  # blocks held in memory until their disk file is written
    writes: Writes = msgspec.field(default_factory=Writes)


class WorkerRegistration(Message):
    SHAPE: ClassVar[str] = '{"dataset", "url", "status"}'

    dataset: str
    url: str
    status: WorkerStatus


class WorkerSeen(Message):
    """`GET /v1/workers` on the agent: a live worker and when it last reported."""

    url: str
    seen: float
    status: WorkerStatus


class LoadRequest(Message):
    SHAPE: ClassVar[str] = '{"path": P, "peers": [URL, ...]}'

    path: str = ""
    peers: list[str] | None = None  # who owns what; default: the worker's own peers


class DrainRequest(Message):
    SHAPE: ClassVar[str] = '{"peers": [URL, ...]}'

    peers: list[str] = []


class DrainResult(Message):
    moved: int
    bytes: int
    failed: int


class Touched(Message):
    SHAPE: ClassVar[str] = '{"blocks": [[key, length], ...]}'

    blocks: list[tuple[str, int]]  # (key, length) read from the worker's files


class TouchResult(Message):
    held: int  # of those, how many the worker still holds


# --- encoding --------------------------------------------------------------------------

M = TypeVar("M", bound=Message)

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Message], msgspec.json.Decoder[Any]] = {}


def encode(msg: Message | list[WorkerSeen]) -> bytes:
    return _encoder.encode(msg)


def decode(typ: type[M], data: bytes) -> M:
    """`data` as a `typ`; ConfigError saying what was wrong, where, and the shape to send."""
    dec = _decoders.get(typ)
    if dec is None:
        dec = _decoders[typ] = msgspec.json.Decoder(typ)
    try:
        got: M = dec.decode(data)
    except msgspec.ValidationError as err:
        raise ConfigError([_expected(typ, codec.problem_of(err, typ=typ))]) from None
    except msgspec.DecodeError as err:
        raise ConfigError([_expected(typ, Problem(f"not JSON: {err}"))]) from None
    return got


def _expected(typ: type[Message] | type[BlockQuery], problem: Problem) -> Problem:
    return Problem(f"expected {typ.SHAPE}: {problem}")
