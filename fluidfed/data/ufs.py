"""Under storage: one small interface (list, stat, read a byte range) over the places a
dataset's mounts point at, built on Apache OpenDAL's async operators for every protocol
(chosen over obstore by bench/ufs_read.py: faster on both HTTP and S3 here).

    s3://bucket/prefix     S3 or any S3-compatible server (endpoint, region from the
                           mount's options; credentials from the Secret-provided env)
    oss://bucket/prefix    Alibaba OSS (OpenDAL's own OSS service)
    http(s)://host/path    ranged GETs; the listing comes from `<path>/.fluidfed-manifest.json`
    file:///path           local and NFS paths

Errors become UFSError (UFSNotFound for a missing object; `temporary` when a retry can
help), so callers never see a library's exceptions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import msgspec
import opendal
import opendal.exceptions

from fluidfed.data import layout
from fluidfed.data.layout import FileRef
from fluidfed.errors import UFSError, UFSNotFound
from fluidfed.models import Mount

MANIFEST = ".fluidfed-manifest.json"


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
            max_times=2, factor=2.0, jitter=True, max_delay=timeout, min_delay=0.1
        )
    )


def _seconds(text: str) -> float:
    from fluidfed.units import parse_duration

    return float(parse_duration(text))


def open_ufs(mount: Mount, env: Mapping[str, str] | None = None) -> UFS:
    """The reader for a mount; credentials come from `env` (the Secret's keys)."""
    env = os.environ if env is None else env
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
        op = _layered(opendal.AsyncOperator("http", **config), timeout)
        return HTTPUFS(op, mount.uri)
    elif parts.scheme == "file":
        service = "fs"
    else:
        raise UFSError(
            f"{mount.uri}: no reader for {parts.scheme}:// (dataset:// mounts are "
            "Fluid's: the hub places them on clusters with Fluid only)"
        )
    config.update({k: str(v) for k, v in opts.items()})
    try:
        op = opendal.AsyncOperator(service, **config)
    except Exception as err:
        raise _translate(err, f"open {mount.uri}") from err
    return OpenDALUFS(_layered(op, timeout), mount.uri)


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
