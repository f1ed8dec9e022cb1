"""Under storage: one small interface (list, stat, read a byte range) over the places a
dataset's mounts point at, built on Apache OpenDAL's async operators for every protocol
(chosen over obstore by bench/ufs_read.py, which copied obstore's result into bytes).

    s3://bucket/prefix     S3 or any S3-compatible server (endpoint, region from the
                           mount's options; credentials from the Secret-provided env)
    oss://bucket/prefix    Alibaba OSS (OpenDAL's own OSS service)
    http(s)://host/path    ranged GETs; the listing comes from `<path>/.fluidfed-manifest.json`
    file:///path           local and NFS paths

S3 blocks (`read_block`, the sidecar's reads) come through obstore (the Rust object_store
crate) instead: it hands the body to Python as it holds it (a read-only buffer), where
OpenDAL's Python `read` returns new bytes made from its own buffer; the sidecar spent 10%
less CPU per GiB on cold reads (figures: README, "Measured design decisions"). Large
blocks skip obstore's own copy too: received over a URL obstore presigns straight into
a buffer of their size (`S3UFS`). Listing and stat stay on OpenDAL, as every other scheme
does.

Errors become UFSError (UFSNotFound for a missing object; `temporary` when a retry can
help), so callers never see a library's exceptions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import msgspec
import obstore
import obstore.exceptions
import opendal
import opendal.exceptions
from obstore.store import S3Store

from fluidfed import errors
from fluidfed.data import blocks, layout, receive
from fluidfed.data.layout import FileRef
from fluidfed.errors import UFSError, UFSNotFound
from fluidfed.models import Mount

if TYPE_CHECKING:
    from obstore.store import S3Config

log = logging.getLogger(__name__)

MANIFEST = ".fluidfed-manifest.json"
RETRIES = 2  # a read is tried again at most so often (OpenDAL and obstore alike) ...
FIRST_RETRY = 0.1  # ... the first time after this many seconds, then twice as long
RECEIVE_FROM = 2**19  # bytes of an S3 block from which it is received over a presigned URL
SIGNED_FOR = timedelta(minutes=5)  # such a URL's life (it is used once, at once)
GIVE_UP_AFTER = 3  # presigned reads failing in a row where obstore then read: obstore only


# blocks read one after the other, each with its CRC (`UFS.read_run`)
Parts = list[tuple[blocks.Data, int]]


class Entry(msgspec.Struct, frozen=True):
    path: str  # relative to the mount's root, no leading slash
    size: int
    mtime: float = 0.0
    etag: str = ""


class UFS(Protocol):
    async def list(self) -> list[Entry]:
        """Every file under the root."""

    async def stat(self, path: str) -> Entry: ...

    async def read(self, path: str, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset`; fewer (or none) at the end of the file."""

    async def read_block(self, path: str, offset: int, length: int) -> blocks.Data:
        """As `read`, perhaps as a read-only buffer the library filled (no copy into bytes)."""

    async def read_checked(self, path: str, offset: int, length: int) -> tuple[blocks.Data, int]:
        """As `read_block`, with the block's CRC-32 (a cache worker keeps and sends it)."""

    async def read_run(
        self, path: str, offset: int, lengths: Sequence[int], *, checksum: bool = True
    ) -> Parts:
        """As `read_checked` for consecutive ranges starting at `offset` (blocks one after
        the other), each in a buffer of its own: in one read where the store allows.
        Without `checksum`, as `read_block` (each CRC -1: a reader that keeps no file)."""

    def close(self) -> None:
        """Let go of kept connections and threads (a reader is not used afterwards)."""

    @property
    def presigned(self) -> int:
        """Blocks received over presigned URLs (S3's large blocks; `S3UFS`)."""

    @property
    def joined(self) -> int:
        """Blocks received in one read with the block before them (`read_run`)."""

    def joins(self, block_size: int) -> bool:
        """Whether `read_run` reads blocks of `block_size` in one read (else one by one)."""


_PERMANENT = (
    opendal.exceptions.PermissionDenied,
    opendal.exceptions.ConfigInvalid,
    opendal.exceptions.Unsupported,
    opendal.exceptions.IsADirectory,
    opendal.exceptions.NotADirectory,
)


def _translate(err: Exception, what: str) -> UFSError:
    if isinstance(err, opendal.exceptions.NotFound):
        return UFSNotFound(f"{what}: not found")
    temporary = not isinstance(err, _PERMANENT)
    return UFSError(f"{what}: {describe(str(err), type(err).__name__)}", temporary=temporary)


def describe(text: str, kind: str = "error") -> str:
    """OpenDAL's error text in one line that names the endpoint and the cause: its first
    line says what failed ("... => send http request"), its Context the URL, and its
    Source the cause ("tcp connect error: Connection refused")."""
    lines = [line.strip() for line in text.splitlines()]
    first = lines[0] if lines and lines[0] else kind
    host = next(
        (urlsplit(line[4:].strip()).netloc for line in lines if line.startswith("url:")), ""
    )
    cause = ""
    if "Source:" in lines:
        after = lines[lines.index("Source:") + 1 :]
        cause = next((line for line in after if line), "")
        # "error sending request: client error (Connect): tcp connect error: ..." -> last part
        cause = cause.split("): ")[-1] if "): " in cause else cause
    if host and cause:
        return f"{cause} at {host} ({first}); is the store there and reachable?"
    return first


class OpenDALUFS:
    """Listing, stat and ranged reads through an OpenDAL operator rooted at the mount."""

    def __init__(self, op: Any, uri: str) -> None:
        self.op = op
        self.uri = uri.rstrip("/")

    async def list(self) -> list[Entry]:
        out: list[Entry] = []
        try:
            async for e in await self.op.list("", recursive=True):
                md = e.metadata
                if md.is_file and e.path != MANIFEST:
                    out.append(_entry(e.path, md))
        except Exception as err:
            raise _translate(err, f"list {self.uri}") from err
        return sorted(out, key=lambda e: e.path)

    async def stat(self, path: str) -> Entry:
        try:
            md = await self.op.stat(path.lstrip("/"))
        except Exception as err:
            raise _translate(err, f"stat {self.uri}/{path}") from err
        return _entry(path.lstrip("/"), md)

    async def read(self, path: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        key = path.lstrip("/")
        try:
            try:
                got = await self.op.read(key, offset=offset, size=length)
            except (opendal.exceptions.Unexpected, opendal.exceptions.RangeNotSatisfied) as short:
                if isinstance(short, opendal.exceptions.Unexpected) and (
                    "too little data" not in str(short)
                ):
                    raise
                # the range runs past the end: read what is there (a tail block, or nothing)
                size = int((await self.op.stat(key)).content_length)
                if offset >= size:
                    return b""
                got = await self.op.read(key, offset=offset, size=size - offset)
        except Exception as err:
            raise _translate(err, f"read {self.uri}/{path} [{offset}+{length}]") from err
        return bytes(got)

    async def read_block(self, path: str, offset: int, length: int) -> blocks.Data:
        return await self.read(path, offset, length)

    async def read_checked(self, path: str, offset: int, length: int) -> tuple[blocks.Data, int]:
        data = await self.read_block(path, offset, length)
        return data, await blocks.checksum_off_loop(data)

    async def read_run(
        self, path: str, offset: int, lengths: Sequence[int], *, checksum: bool = True
    ) -> Parts:
        return await _each(self, path, offset, lengths, checksum)

    def close(self) -> None:
        pass  # OpenDAL's operators keep nothing that outlives the process

    @property
    def presigned(self) -> int:
        return 0

    @property
    def joined(self) -> int:
        return 0

    def joins(self, block_size: int) -> bool:
        return False  # (OpenDAL's read is one buffer: split, it would pin or copy)


class S3UFS(OpenDALUFS):
    """S3: listing and stat through OpenDAL, blocks through obstore (module docstring).

    A block of RECEIVE_FROM bytes or more, where the keys are given (`signed`), is
    received instead over a URL obstore presigns for it (local: an HMAC, no request) by
    `receive.Connections`, as the sidecar receives blocks from cache workers: in a thread,
    straight into a reused buffer of the range's size, where obstore's HTTP client hands
    over the body in chunks it then joins into one (a copy of every block: the readers'
    CPU per GiB -43% in `bench/s3_blocks.py`, a cold sidecar's -11%; figures in the
    README, "Measured design decisions"). Below that size obstore's runtime is cheaper
    than a thread hand-off, but not than the event loop: a smaller block is received the
    same way on the loop (`Connections.get_on_loop`), no thread on either side (the
    reader's CPU per 128 KiB block -30% over http, -19% over https). A read that comes
    back as anything but the range, a missing object or a range past the end (a connection
    that failed, a 5xx, a refusal) is made again through obstore, which retries and says
    what failed; after GIVE_UP_AFTER such in a row that obstore then read, every block
    goes through obstore. Where the environment names a proxy for the store's host
    obstore's client takes it and the receive would not: the receive is not used there."""

    def __init__(
        self, op: Any, uri: str, store: S3Store, *, timeout: float = 30.0, signed: bool = False
    ) -> None:
        super().__init__(op, uri)
        self.store = store
        self.timeout = timeout
        self.direct = signed  # blocks over presigned URLs (until that fails, above)
        self.conns: receive.Connections | None = None
        self.received = 0  # blocks received over presigned URLs
        self.runs_joined = 0  # ... of them in one GET with the block before them (`read_run`)
        self._missed = 0  # presigned reads failing in a row where obstore then read

    async def read_block(self, path: str, offset: int, length: int) -> blocks.Data:
        return (await self._read(path, offset, length, checksum=False))[0]

    async def read_checked(self, path: str, offset: int, length: int) -> tuple[blocks.Data, int]:
        """The block and its CRC: taken by the thread that received it where it came over a
        presigned URL (no second hand-off to a thread for it), else computed here."""
        data, crc = await self._read(path, offset, length, checksum=True)
        return data, crc if crc >= 0 else await blocks.checksum_off_loop(data)

    async def _read(
        self, path: str, offset: int, length: int, *, checksum: bool
    ) -> tuple[blocks.Data, int]:
        """(the block, its CRC if `checksum` asked for it and its receive took it, else -1)."""
        if length <= 0:
            return b"", -1
        key = path.lstrip("/")
        why = ""
        if self.direct:
            received, crc, why = await self._receive(key, offset, length, checksum)
            if received is not None:
                self._missed = 0
                return received, crc
        try:
            got = await obstore.get_range_async(self.store, key, start=offset, length=length)
        except Exception as err:
            if "416 Range Not Satisfiable" in str(err):
                return b"", -1  # at or past the end (a range that runs past it comes back short)
            raise _translate_obstore(err, self._what(key, offset, length)) from err
        if why:
            self._fell_back(why)
        return memoryview(got), -1

    async def read_run(
        self, path: str, offset: int, lengths: Sequence[int], *, checksum: bool = True
    ) -> Parts:
        """Consecutive blocks in one ranged GET over a presigned URL, each received into a
        buffer of its own with its CRC (`receive.Connections.get`'s `split`): a store
        serves one GET of 16 MiB for less than four of 4 (MinIO: 0.54-0.58 CPU-s per GiB
        against 0.86; `bench/s3_get_sizes.py`), and a sequential reader's worker makes a
        quarter of the requests. Blocks smaller than RECEIVE_FROM, and any answer that is
        not exactly the range asked for (an object that changed, a server that ignores
        ranges, a failure), are read one by one (`read_checked`, or `read_block` without
        `checksum`)."""
        total = sum(lengths)
        if not self.direct or len(lengths) < 2 or min(lengths) < RECEIVE_FROM:
            return await _each(self, path, offset, lengths, checksum)
        key = path.lstrip("/")
        signed = self._signed(key)
        if isinstance(signed, str):  # read one by one (which says why)
            return await _each(self, path, offset, lengths, checksum)
        url, conns = signed
        what = self._what(key, offset, total)
        try:
            answer = await conns.get(
                url,
                {},
                {"Range": f"bytes={offset}-{offset + total - 1}"},
                self.timeout,
                checksum=checksum,
                split=lengths,
            )
        except errors.WorkerError as err:  # (names the host, never the URL's signature)
            log.debug("%s in one GET failed (%s); block by block", what, err)
            return await _each(self, path, offset, lengths, checksum)
        parts = [(answer.body, answer.crc), *answer.rest]
        if (
            answer.status == 206
            and len(parts) == len(lengths)
            and exact_range(answer.headers.get("content-range"), offset, total)
        ):
            self.received += len(parts)
            self.runs_joined += len(parts) - 1
            return parts
        if answer.status == 404:
            raise UFSNotFound(f"{what}: not found")
        log.debug("%s in one GET: HTTP %d, not the range; block by block", what, answer.status)
        return await _each(self, path, offset, lengths, checksum)

    def _what(self, key: str, offset: int, length: int) -> str:
        return f"read {self.uri}/{key} [{offset}+{length}]"

    def _signed(self, key: str) -> tuple[str, receive.Connections] | str:
        """A presigned URL of `key` and the connections to receive it on (made on first
        use); or why not: "" where the environment names a proxy for the store's host
        (presigned reads are off from then on: obstore's client takes the proxy)."""
        try:
            url = obstore.sign(self.store, "GET", key, SIGNED_FOR)
        except Exception as err:  # not signable after all: obstore's request says why
            return f"cannot presign: {type(err).__name__}"
        if self.conns is None:
            if _proxied(url):
                self.direct = False
                return ""
            self.conns = receive.Connections()
        return url, self.conns

    async def _receive(
        self, key: str, offset: int, length: int, checksum: bool
    ) -> tuple[blocks.Data | None, int, str]:
        """(the range, its CRC or -1, "") received over a presigned URL, its CRC taken in the
        receiving thread with `checksum`; or (None, -1, why not): obstore's."""
        signed = self._signed(key)
        if isinstance(signed, str):
            return None, -1, signed
        url, conns = signed
        last = offset + length - 1
        # a small block on the event loop: not worth a thread's hand-off
        get = conns.get if length >= RECEIVE_FROM else conns.get_on_loop
        try:
            answer = await get(
                url, {}, {"Range": f"bytes={offset}-{last}"}, self.timeout, checksum=checksum
            )
        except errors.WorkerError as err:  # (names the host, never the URL's signature)
            return None, -1, str(err)
        if answer.status in (200, 206):
            got = ranged_body(
                answer.status, answer.headers.get("content-range"), answer.body, offset, length
            )
            if got is None:
                return None, -1, f"HTTP {answer.status} of another range than asked for"
            self.received += 1
            # (a 200, the whole object cut to the range here: the CRC was of the whole)
            return got, answer.crc if got is answer.body else -1, ""
        if answer.status == 416:
            return b"", -1, ""  # at or past the end
        if answer.status == 404:
            raise UFSNotFound(f"{self._what(key, offset, length)}: not found")
        said = _s3_said(bytes(answer.body[:4096]).decode("utf-8", "replace"))
        return None, -1, f"HTTP {answer.status}" + (f": {said}" if said else "")

    def _fell_back(self, why: str) -> None:
        """A presigned read failed and obstore's then read the block."""
        self._missed += 1
        if self._missed < GIVE_UP_AFTER:
            log.debug("%s: a presigned read failed (%s); read through obstore", self.uri, why)
            return
        self.direct = False
        log.warning(
            "%s: %d presigned reads in a row failed where obstore's then read (last: %s); "
            "blocks are read through obstore from now on",
            self.uri,
            self._missed,
            why,
        )

    def close(self) -> None:
        if self.conns is not None:
            self.conns.close()
            self.conns = None

    @property
    def presigned(self) -> int:
        return self.received

    @property
    def joined(self) -> int:
        return self.runs_joined

    def joins(self, block_size: int) -> bool:
        return self.direct and block_size >= RECEIVE_FROM


def ranged_body(
    status: int, content_range: str | None, body: blocks.Data, offset: int, length: int
) -> blocks.Data | None:
    """Bytes [offset, offset + length) of an object from the answer to a ranged GET, or None
    when the answer is not that range (a server's mistake; obstore reads it then): a 206
    whose Content-Range ("bytes FIRST-LAST/SIZE") starts at `offset` and spans the body, at
    most `length` bytes (fewer at the object's end), or a 200, the whole object (a server
    that ignores ranges), cut to the range."""
    if status == 200:
        return body[offset : offset + length]
    got = _content_range(content_range) if status == 206 else None
    if got is None:
        return None
    first, last = got
    if first != offset or last - first + 1 != len(body) or len(body) > length:
        return None
    return body


def _content_range(text: str | None) -> tuple[int, int] | None:
    """(FIRST, LAST) of a Content-Range "bytes FIRST-LAST/SIZE"; None if it is not one."""
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (text or "").strip())
    return (int(m.group(1)), int(m.group(2))) if m is not None else None


def exact_range(content_range: str | None, offset: int, length: int) -> bool:
    """Whether a 206's Content-Range ("bytes FIRST-LAST/SIZE") is exactly `length` bytes
    from `offset` (a range cut short at the object's end is not)."""
    return _content_range(content_range) == (offset, offset + length - 1)


async def _each(
    ufs: UFS, path: str, offset: int, lengths: Sequence[int], checksum: bool = True
) -> Parts:
    """`UFS.read_run` block by block, the reads at the same time."""
    starts = [offset + sum(lengths[:i]) for i in range(len(lengths))]
    if checksum:
        reads = (ufs.read_checked(path, o, n) for o, n in zip(starts, lengths, strict=True))
        return list(await asyncio.gather(*reads))
    got = (ufs.read_block(path, o, n) for o, n in zip(starts, lengths, strict=True))
    return [(data, -1) for data in await asyncio.gather(*got)]


def _proxied(url: str) -> bool:
    """Whether the environment sends requests to `url`'s host through a proxy."""
    proxies = urllib.request.getproxies_environment()
    parts = urlsplit(url)
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


_OBSTORE_PERMANENT = (
    obstore.exceptions.PermissionDeniedError,
    obstore.exceptions.UnauthenticatedError,
    obstore.exceptions.InvalidPathError,
    obstore.exceptions.NotSupportedError,
    obstore.exceptions.UnknownConfigurationKeyError,
)


def _translate_obstore(err: Exception, what: str) -> UFSError:
    if isinstance(err, (FileNotFoundError, obstore.exceptions.NotFoundError)):
        return UFSNotFound(f"{what}: not found")
    return UFSError(
        f"{what}: {_obstore_text(str(err))}", temporary=not isinstance(err, _OBSTORE_PERMANENT)
    )


def _obstore_text(text: str) -> str:
    """obstore's error in one line: "<what failed>: Error performing GET <url> in <time> -
    <cause>: <the answer's body>", the body an S3 error document cut to its Code and
    Message (the rest can name the caller's access key id, as AWS's SignatureDoesNotMatch
    does, and the request signed)."""
    text = " ".join(text.split())
    head, xml, body = text.partition("<?xml")
    if xml:
        said = _s3_said(body)
        text = head.rstrip(": ") + (f": {said}" if said else "")
    return text[:400]


def _s3_said(body: str) -> str:
    """An S3 error document's Code and Message, nothing else of it."""
    code = re.search(r"<Code>([^<]*)</Code>", body)
    message = re.search(r"<Message>([^<]*)</Message>", body)
    return ": ".join(m.group(1) for m in (code, message) if m is not None)[:400]


# the S3 settings obstore is given; a mount with any other option reads through OpenDAL only
_OBSTORE_S3 = {"root", "bucket", "region", "endpoint", "access_key_id", "secret_access_key"}
_OPENDAL_ONLY = {"disable_config_load", "disable_ec2_metadata", "allow_anonymous"}


def _s3_store(config: Mapping[str, str], timeout: float) -> S3Store | None:
    """obstore's reader of the same bucket, prefix and credentials as OpenDAL's `config`;
    None if the mount sets an option only OpenDAL is given."""
    if set(config) - _OBSTORE_S3 - _OPENDAL_ONLY:
        return None
    endpoint = config.get("endpoint", "")
    settings: S3Config = {"region": config["region"], "virtual_hosted_style_request": False}
    if endpoint:
        settings["endpoint"] = endpoint
    if "access_key_id" in config:
        settings["access_key_id"] = config["access_key_id"]
        settings["secret_access_key"] = config["secret_access_key"]
    else:
        settings["skip_signature"] = True
    return S3Store(
        config["bucket"],
        prefix=config["root"].strip("/") or None,
        config=settings,
        client_options={"allow_http": endpoint.startswith("http://"), "timeout": f"{timeout}s"},
        # as OpenDAL's RetryLayer (`_layered`)
        retry_config={
            "max_retries": RETRIES,
            "backoff": {
                "init_backoff": timedelta(seconds=FIRST_RETRY),
                "max_backoff": timedelta(seconds=timeout),
                "base": 2,
            },
            "retry_timeout": timedelta(seconds=timeout),
        },
    )


def _entry(path: str, md: Any) -> Entry:
    modified = getattr(md, "last_modified", None)
    return Entry(
        path=path,
        size=int(md.content_length),
        mtime=modified.timestamp() if modified is not None else 0.0,
        etag=str(md.etag or ""),
    )


class HTTPUFS(OpenDALUFS):
    """Plain HTTP(S) has no listing: a manifest at the root names the files."""

    async def list(self) -> list[Entry]:
        try:
            raw = bytes(await self.op.read(MANIFEST))
        except Exception as err:
            raise _translate(err, f"list {self.uri} (from {MANIFEST})") from err
        try:
            entries = msgspec.json.decode(raw, type=list[Entry])
        except msgspec.DecodeError as err:
            raise UFSError(
                f'{self.uri}/{MANIFEST} is not a list of {{"path", "size"}} objects: {err}'
            ) from err
        return sorted(entries, key=lambda e: e.path)


def _layered(op: Any, timeout: float) -> Any:
    # bounded retries with backoff: a store that does not answer gives an error, not a hang
    return op.layer(
        opendal.layers.RetryLayer(
            max_times=RETRIES, factor=2.0, jitter=True, max_delay=timeout, min_delay=FIRST_RETRY
        )
    )


def _seconds(text: str) -> float:
    from fluidfed.units import parse_duration

    return float(parse_duration(text))


def _operator_config(mount: Mount, env: Mapping[str, str]) -> tuple[str, dict[str, str], float]:
    """(OpenDAL service, its config, the timeout) of a mount's reader; the mount's other
    options are the service's own settings (none for http(s))."""
    parts = urlsplit(mount.uri)
    opts = dict(mount.options)
    timeout = _seconds(opts.pop("timeout", "30s"))
    opts.pop("connect_timeout", None)
    root = parts.path or "/"
    key = env.get("AWS_ACCESS_KEY_ID") or env.get("access-key") or env.get("OSS_ACCESS_KEY_ID")
    secret = (
        env.get("AWS_SECRET_ACCESS_KEY")
        or env.get("secret-key")
        or env.get("OSS_ACCESS_KEY_SECRET")
    )
    config: dict[str, str] = {"root": root}
    if parts.scheme == "s3":
        config.update(
            bucket=parts.netloc,
            region=opts.pop("region", "us-east-1"),
            disable_config_load="true",
            disable_ec2_metadata="true",
        )
        if "endpoint" in opts:
            config["endpoint"] = opts.pop("endpoint")
        if key and secret:
            config.update(access_key_id=key, secret_access_key=secret)
        else:
            config["allow_anonymous"] = "true"
        service = "s3"
    elif parts.scheme == "oss":
        region = opts.pop("region", "oss-cn-hangzhou")
        config.update(
            bucket=parts.netloc, endpoint=opts.pop("endpoint", f"https://{region}.aliyuncs.com")
        )
        if key and secret:
            config.update(access_key_id=key, access_key_secret=secret)
        else:
            config["allow_anonymous"] = "true"
        service = "oss"
    elif parts.scheme in ("http", "https"):
        config["endpoint"] = f"{parts.scheme}://{parts.netloc}"
        return "http", config, timeout
    elif parts.scheme == "file":
        service = "fs"
    else:
        raise UFSError(
            f"{mount.uri}: no reader for {parts.scheme}:// (dataset:// mounts are "
            "Fluid's: the hub places them on clusters with Fluid only)"
        )
    config.update({k: str(v) for k, v in opts.items()})
    return service, config, timeout


def open_ufs(mount: Mount, env: Mapping[str, str] | None = None) -> UFS:
    """The reader for a mount; credentials come from `env` (the Secret's keys)."""
    service, config, timeout = _operator_config(mount, os.environ if env is None else env)
    if service == "http":
        op = _layered(opendal.AsyncOperator("http", **config), timeout)
        return HTTPUFS(op, mount.uri)
    try:
        op = opendal.AsyncOperator(service, **config)
        store = _s3_store(config, timeout) if service == "s3" else None
    except Exception as err:
        raise _translate(err, f"open {mount.uri}") from err
    if store is not None:
        signed = "access_key_id" in config
        return S3UFS(_layered(op, timeout), mount.uri, store, timeout=timeout, signed=signed)
    return OpenDALUFS(_layered(op, timeout), mount.uri)


def options_problem(mount: Mount) -> str:
    """Why fluidfed's readers could not open `mount` with its options ("" if they could):
    a setting OpenDAL cannot parse (`enable_virtual_host_style = "maybe"`), found by
    making the reader's operator as `open_ufs` does, anonymous. No I/O: OpenDAL only
    parses its config here (S3 and OSS; a file:// reader's is not built here, since
    OpenDAL makes its root directory as it builds it)."""
    service, config, _ = _operator_config(mount, {})
    if service in ("fs", "http"):  # (fs makes its root directory as it is built: I/O)
        return ""
    try:
        opendal.Operator(service, **config)
    except Exception as err:  # (OpenDAL's ConfigInvalid, and whatever else it raises)
        return _said(str(err)) or type(err).__name__
    return ""


def _said(text: str) -> str:
    """What OpenDAL's error says, without its kind, its context or a backtrace: the
    setting it could not parse, else its first line's message."""
    lines = [line.strip() for line in text.strip().splitlines()]
    for line in lines:
        if line.startswith("parse config"):
            return line
    return lines[0].rpartition("=> ")[2].strip() if lines else ""


async def list_files(
    mounts: Sequence[Mount], readers: Sequence[UFS], sub_path: str = ""
) -> dict[str, FileRef]:
    """The dataset's files as sidecars and workers see them: each mount's listing, placed
    by `layout.files` (below `sub_path`)."""
    listings = []
    for reader in readers:
        entries = await reader.list()
        listings.append([(e.path, e.size, e.mtime, e.etag) for e in entries])
    return layout.files(mounts, listings, sub_path)
