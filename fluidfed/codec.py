"""JSON encoding and decoding with fluidfed's value types, shared by hub, agents and CLI."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from fluidfed.errors import Problem
from fluidfed.units import ByteSize, Duration, parse_duration, parse_size

T = TypeVar("T")


def dec_hook(typ: type, value: Any) -> Any:
    if typ is ByteSize:
        return parse_size(value)
    if typ is Duration:
        return parse_duration(value)
    raise NotImplementedError(f"no decoder for {typ!r}")


def enc_hook(obj: Any) -> Any:
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_encoder = msgspec.json.Encoder(enc_hook=enc_hook)


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decoder(typ: type[T]) -> msgspec.json.Decoder[T]:
    """A reusable typed decoder; build once per type, keep it on hot paths."""
    return msgspec.json.Decoder(typ, dec_hook=dec_hook)


def convert(data: Any, typ: type[T]) -> T:
    return msgspec.convert(data, typ, dec_hook=dec_hook)


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj, enc_hook=enc_hook)


_AT = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>[^`]*)`$", re.S)


def _join(root: str, path: str) -> str:
    if not root:
        return path
    if not path:
        return root
    return f"{root}{path}" if path.startswith("[") else f"{root}.{path}"


def problem_of(err: msgspec.ValidationError, root: str = "") -> Problem:
    """msgspec's first error as a Problem whose path is `root.field[i].field`."""
    m = _AT.match(str(err))
    if not m:
        return Problem(str(err), path=root)
    msg, path = m.group("msg"), m.group("path").lstrip(".")
    unknown = re.match(r"Object contains unknown field `([^`]+)`", msg)
    if unknown:
        field = unknown.group(1)
        return Problem(
            f"unknown key {field!r}: check its spelling against the documented keys",
            path=_join(root, _join(path, field)),
        )
    missing = re.match(r"Object missing required field `([^`]+)`", msg)
    if missing:
        field = missing.group(1)
        return Problem(f"required key {field!r} is missing", path=_join(root, _join(path, field)))
    return Problem(msg.replace("Expected", "expected", 1), path=_join(root, path))
