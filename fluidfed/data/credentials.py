"""Credentials of the data path: HMAC-signed tokens of one binding, and who may do what.

Every cache worker, sidecar and the agent of one binding share a secret key that the agent
makes (`new_key`) and keeps in a Kubernetes Secret. A token is claims signed with it:

    ff1.<base64url(JSON claims)>.<base64url(HMAC-SHA256(key, "ff1.<claims>"))>

Claims name the role (`reader`: a sidecar, `peer`: a cache worker, `agent`), the dataset,
and for a reader its namespace and access sub-path; `expires` (Unix seconds, 0: never) is
optional. Tokens are sent as `Authorization: Bearer <token>`; the receiver accepts a
signature by any key of its current list, so a rotation (a new key first in the list, the
old one kept for a grace period, see `rotate`) never refuses a token that is still being
handed out. What a role may do is decided by the pure `authorize`; a reader's sub-path is
checked against the path of the object it asks for, which the worker works out itself.

A credential file (JSON, mode 0600) holds a token, or the keys (a cache worker: it checks
tokens and signs its own peer token with `keys[sign]`). Nothing here logs a credential.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import posixpath
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

from fluidfed import config, secretfile
from fluidfed.errors import ConfigError

VERSION = "ff1"
SCHEME = "Bearer "
HEADER = "Authorization"
KEY_BYTES = 32

Role = Literal["reader", "peer", "agent"]


class Claims(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    role: Role
    dataset: str
    namespace: str = ""
    sub_path: str = ""  # a reader's access sub-path in the dataset ("" : all of it)
    expires: float = 0.0  # Unix seconds; 0: until the key is rotated out


class Refused(Exception):
    """A token that does not count: 401 with `reason` (never the token itself)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_claims_encoder = msgspec.json.Encoder()
_claims_decoder = msgspec.json.Decoder(Claims)


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def decode_key(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, signed: bytes) -> bytes:
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(claims: Claims, key: bytes) -> str:
    signed = f"{VERSION}.{_b64(_claims_encoder.encode(claims))}"
    return f"{signed}.{_b64(_mac(key, signed.encode()))}"


def peek(token: str) -> Claims:
    """The claims of a token, NOT verified: only to choose which keys to check it with."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise Refused("not a fluidfed data-path token")
    try:
        return _claims_decoder.decode(_unb64(parts[1]))
    except (msgspec.DecodeError, binascii.Error, ValueError):
        raise Refused("malformed token claims") from None


def verify(token: str, keys: Sequence[bytes], now: float | None = None) -> Claims:
    """The claims of a token signed by one of `keys`; Refused otherwise (a wrong key,
    altered claims, an expired token)."""
    claims = peek(token)
    signed, _, sig = token.rpartition(".")
    try:
        got = _unb64(sig)
    except (binascii.Error, ValueError):
        raise Refused("malformed token signature") from None
    data = signed.encode()
    if not any(hmac.compare_digest(_mac(k, data), got) for k in keys):
        raise Refused("token not signed by this binding's key (wrong or rotated-out key)")
    if claims.expires and (time.time() if now is None else now) >= claims.expires:
        raise Refused("token expired")
    return claims


def bearer(header: str | None) -> str:
    """The token of an Authorization header; Refused if there is none."""
    if not header:
        raise Refused(f"missing {HEADER}: Bearer <token> (the binding's credential)")
    if not header.startswith(SCHEME):
        raise Refused(f"{HEADER} is not a Bearer token")
    return header[len(SCHEME) :].strip()


def authorization(token: str) -> dict[str, str]:
    return {HEADER: SCHEME + token}


# --- who may do what: pure ------------------------------------------------------------


class Action(enum.Enum):
    READ_BLOCK = "read a block"
    TOUCH = "report block-file reads"
    WRITE_BLOCK = "write a block"
    STATUS = "read the status"
    LOAD = "start or follow a warm-up"
    DRAIN = "drain the cache to other workers"
    REGISTER = "register a cache worker"
    METRICS = "send metrics"
    VIEW = "read the agent's views"


ALLOWED: dict[Action, frozenset[str]] = {
    Action.READ_BLOCK: frozenset({"reader", "peer", "agent"}),
    Action.TOUCH: frozenset({"reader", "peer"}),
    Action.WRITE_BLOCK: frozenset({"peer"}),
    Action.STATUS: frozenset({"reader", "peer", "agent"}),
    Action.LOAD: frozenset({"agent"}),
    Action.DRAIN: frozenset({"agent"}),
    Action.REGISTER: frozenset({"peer"}),
    Action.METRICS: frozenset({"reader", "peer"}),
    Action.VIEW: frozenset({"reader", "peer", "agent"}),
}


def within(sub_path: str, path: str) -> bool:
    """Whether dataset path `path` lies under `sub_path` ("" or "/": everything)."""
    base = posixpath.normpath("/" + sub_path.strip("/"))
    full = posixpath.normpath("/" + path.lstrip("/"))
    return base == "/" or full == base or full.startswith(base + "/")


def authorize(claims: Claims, action: Action, dataset: str, path: str | None = None) -> str | None:
    """Why `claims` may not do `action` on `dataset` (at dataset path `path`, for block
    reads): a reason for a 403, or None when allowed."""
    if claims.dataset != dataset:
        return f"a credential of dataset {claims.dataset!r} does not count for {dataset!r}"
    if claims.role not in ALLOWED[action]:
        allowed = ", ".join(sorted(ALLOWED[action]))
        return f"role {claims.role!r} may not {action.value} (only {allowed})"
    if path is not None and claims.role == "reader" and not within(claims.sub_path, path):
        return (
            f"a reader of namespace {claims.namespace!r} may read only under "
            f"{claims.sub_path!r}, not {path!r}"
        )
    return None


# --- keys and their rotation: pure --------------------------------------------------------


class KeyEntry(msgspec.Struct, frozen=True):
    key: str  # base64
    created: float  # Unix seconds


def rotate(
    keys: Sequence[KeyEntry], now: float, every: float, grace: float, *, force: bool = False
) -> list[KeyEntry]:
    """The key list (newest first) after rotation at `now`: a new key when there is none,
    when the newest is `every` seconds old (0: never), or when `force`d. A key signs once
    it has been handed out for `grace` (`signing`); an older key is dropped once a newer
    one has signed for `grace` too, so that every holder saw the new key before tokens
    signed by it appear, and every old token was replaced before its key goes."""
    out = list(keys)
    if not out or force or (every > 0 and now - out[0].created >= every):
        out.insert(0, KeyEntry(encode_key(new_key()), now))
    keep: list[KeyEntry] = []
    for e in out:
        keep.append(e)
        if now - e.created >= 2 * grace:
            break  # every older key is past its time
    return keep


def signing(keys: Sequence[KeyEntry], now: float, grace: float) -> int:
    """The index of the key tokens are signed with: the newest handed out for `grace`,
    else the oldest."""
    for i, e in enumerate(keys):
        if now - e.created >= grace:
            return i
    return len(keys) - 1


# --- credential files -------------------------------------------------------------------


class CredentialFile(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A credential file: a token (sidecars), or keys and which one signs (workers)."""

    token: str = ""
    keys: list[str] = []
    sign: int = 0


_file_encoder = msgspec.json.Encoder()


def encode_file(cred: CredentialFile) -> bytes:
    return _file_encoder.encode(cred)


def write_file(path: Path, cred: CredentialFile) -> None:
    """Write a credential file readable by its owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    secretfile.write(path, encode_file(cred))


@dataclass(frozen=True, slots=True)
class Loaded:
    token: str
    keys: tuple[bytes, ...]
    sign: int

    def signed(self, claims: Claims) -> str:
        """`claims` signed with the signing key; "" without keys."""
        if not self.keys:
            return ""
        return sign(claims, self.keys[min(self.sign, len(self.keys) - 1)])


def load(path: Path) -> Loaded:
    cred = config.load_file(path, CredentialFile)
    try:
        keys = tuple(decode_key(k) for k in cred.keys)
    except (binascii.Error, ValueError):
        raise ConfigError.one("a key is not base64", file=str(path), path="keys") from None
    if not cred.token and not keys:
        raise ConfigError.one("holds neither a token nor keys", file=str(path))
    return Loaded(cred.token, keys, cred.sign)


class Watched:
    """A credential file that the agent (a Secret volume) or a test rewrites: `changed()`
    gives the new credential once per change, or None; a broken file keeps the last."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = config.Watched(path, CredentialFile)
        self.current = load(path)

    def changed(self) -> Loaded | None:
        if self._file.changed() is None:
            return None
        try:
            self.current = load(self.path)
        except ConfigError:
            return None
        return self.current


class Verifier:
    """Checks bearer tokens against a key list, remembering tokens already verified (one
    dict lookup per request on the hot path); the memory is dropped when the keys change."""

    MAX_REMEMBERED = 4096

    def __init__(self, keys: Sequence[bytes]) -> None:
        self.keys: tuple[bytes, ...] = tuple(keys)
        self._seen: dict[str, Claims] = {}

    def set_keys(self, keys: Sequence[bytes]) -> None:
        if tuple(keys) != self.keys:
            self.keys = tuple(keys)
            self._seen = {}

    def claims(self, header: str | None) -> Claims:
        """The verified claims of an Authorization header; Refused (401) otherwise."""
        if header is not None:
            got = self._seen.get(header)
            if got is not None and not (got.expires and time.time() >= got.expires):
                return got
        claims = verify(bearer(header), self.keys)
        assert header is not None
        if len(self._seen) >= self.MAX_REMEMBERED:
            self._seen = {}
        self._seen[header] = claims
        return claims
