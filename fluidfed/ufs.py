"""Under storage: one small interface (list, stat, read a byte range) over the places a
dataset's mounts point at, built on obstore (Rust's object_store) for every protocol.

    s3://bucket/prefix     S3 or any S3-compatible server (endpoint, region from the
                           mount's options; credentials from the Secret-provided env)
    oss://bucket/prefix    Alibaba OSS, through its S3-compatible endpoint
    http(s)://host/path    ranged GETs; the listing comes from `<path>/.fluidfed-manifest.json`
    file:///path           local and NFS paths

Errors become UFSError (NotFoundError for a missing object; `temporary` when a retry can
help), so callers never see a library's exceptions.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import msgspec
import obstore
from obstore.store import HTTPStore, LocalStore, S3Store

from fluidfed.errors import FluidfedError
from fluidfed.models import Mount

MANIFEST = ".fluidfed-manifest.json"


class UFSError(FluidfedError):
    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class NotFoundError(UFSError):
    pass


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


def _translate(err: Exception, what: str) -> UFSError:
    if isinstance(err, FileNotFoundError | obstore.exceptions.NotFoundError):
        return NotFoundError(f"{what}: not found")
    temporary = not isinstance(
        err, obstore.exceptions.PermissionDeniedError | obstore.exceptions.UnauthenticatedError
    )
    return UFSError(f"{what}: {err}", temporary=temporary)


def _entry(meta: Any, root: str) -> Entry:
    path = str(meta["path"])
    rel = path[len(root) :].lstrip("/") if root and path.startswith(root) else path
    mtime = meta.get("last_modified")
    return Entry(
        path=rel,
        size=int(meta["size"]),
        mtime=mtime.timestamp() if mtime is not None else 0.0,
        etag=str(meta.get("e_tag") or ""),
    )


class ObjectStoreUFS:
    """Listing, stat and ranged reads on an obstore store under a root prefix."""

    def __init__(self, store: Any, root: str, uri: str) -> None:
        self.store = store
        self.root = root.strip("/")
        self.uri = uri

    def _key(self, path: str) -> str:
        return posixpath.join(self.root, path.lstrip("/")) if self.root else path.lstrip("/")

    async def list(self) -> list[Entry]:
        prefix = self.root + "/" if self.root else None
        out: list[Entry] = []
        try:
            async for chunk in obstore.list(self.store, prefix=prefix, chunk_size=1000):
                out += [_entry(m, self.root) for m in chunk]
        except Exception as err:
            raise _translate(err, f"list {self.uri}") from err
        return sorted((e for e in out if e.path != MANIFEST), key=lambda e: e.path)

    async def stat(self, path: str) -> Entry:
        try:
            meta = await obstore.head_async(self.store, self._key(path))
        except Exception as err:
            raise _translate(err, f"stat {self.uri.rstrip('/')}/{path}") from err
        return _entry(meta, self.root)

    async def read(self, path: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            got = await obstore.get_range_async(
                self.store, self._key(path), start=offset, length=length
            )
        except Exception as err:
            text = str(err)
            if "416" in text or "StartTooLarge" in text:
                return b""  # at or past the end of the object: nothing to read
            where = f"{self.uri.rstrip('/')}/{path} [{offset}+{length}]"
            raise _translate(err, f"read {where}") from err
        return bytes(got)


class HTTPUFS(ObjectStoreUFS):
    """Plain HTTP(S) has no listing: a manifest at the root names the files."""

    async def list(self) -> list[Entry]:
        try:
            got = await obstore.get_async(self.store, self._key(MANIFEST))
            raw = bytes(await got.bytes_async())
        except Exception as err:
            raise _translate(err, f"list {self.uri} (from {MANIFEST})") from err
        try:
            entries = msgspec.json.decode(raw, type=list[Entry])
        except msgspec.DecodeError as err:
            raise UFSError(
                f'{self.uri}/{MANIFEST} is not a list of {{"path", "size"}} objects: {err}'
            ) from err
        return sorted(entries, key=lambda e: e.path)


def open_ufs(mount: Mount, env: Mapping[str, str] | None = None) -> UFS:
    """The reader for a mount; credentials come from `env` (the Secret's keys)."""
    env = os.environ if env is None else env
    parts = urlsplit(mount.uri)
    opts = dict(mount.options)
    timeout = opts.pop("timeout", "30s")
    client_options: Any = {
        "timeout": timeout,
        "connect_timeout": opts.pop("connect_timeout", "5s"),
        "allow_http": True,
    }
    if parts.scheme in ("s3", "oss"):
        endpoint = opts.pop("endpoint", "")
        region = opts.pop("region", "us-east-1" if parts.scheme == "s3" else "oss-cn-hangzhou")
        if parts.scheme == "oss" and not endpoint:
            endpoint = f"https://{region}.aliyuncs.com"
        key = env.get("AWS_ACCESS_KEY_ID") or env.get("access-key") or env.get("OSS_ACCESS_KEY_ID")
        secret = (
            env.get("AWS_SECRET_ACCESS_KEY")
            or env.get("secret-key")
            or env.get("OSS_ACCESS_KEY_SECRET")
        )
        config: Any = {"region": region}
        if endpoint:
            config["endpoint"] = endpoint
            # path-style for custom endpoints (MinIO and friends); OSS wants virtual hosts
            config["virtual_hosted_style_request"] = parts.scheme == "oss"
        if key and secret:
            config["access_key_id"] = key
            config["secret_access_key"] = secret
        else:
            config["skip_signature"] = True
        config.update(opts)
        s3 = S3Store(parts.netloc, config=config, client_options=client_options)
        return ObjectStoreUFS(s3, parts.path, mount.uri)
    if parts.scheme in ("http", "https"):
        base = f"{parts.scheme}://{parts.netloc}"
        http = HTTPStore.from_url(base, client_options=client_options)
        return HTTPUFS(http, parts.path, mount.uri)
    if parts.scheme == "file":
        return ObjectStoreUFS(LocalStore(parts.path), "", mount.uri)
    raise UFSError(
        f"{mount.uri}: no reader for {parts.scheme}:// (dataset:// mounts are "
        "resolved by the agent before they reach a reader)"
    )
