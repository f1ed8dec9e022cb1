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


def _choices(typ: Any, path: str) -> list[Any] | None:
    """The allowed values of the Literal field at `path` inside `typ`, if it is one."""
    node: Any = msgspec.inspect.type_info(typ)
    for key in re.findall(r"[^.\[\]]+", path):
        while isinstance(node, msgspec.inspect.UnionType):
            node = next(
                (t for t in node.types if not isinstance(t, msgspec.inspect.NoneType)), None
            )
        if isinstance(node, msgspec.inspect.StructType):
            node = next((f.type for f in node.fields if f.encode_name == key), None)
        elif isinstance(node, msgspec.inspect.ListType | msgspec.inspect.DictType):
            node = node.item_type if isinstance(node, msgspec.inspect.ListType) else node.value_type
        else:
            return None
    while isinstance(node, msgspec.inspect.UnionType):
        node = next((t for t in node.types if not isinstance(t, msgspec.inspect.NoneType)), None)
    return list(node.values) if isinstance(node, msgspec.inspect.LiteralType) else None


def problem_of(err: msgspec.ValidationError, root: str = "", typ: Any = None) -> Problem:
    """msgspec's first error as a Problem whose path is `root.field[i].field`.

    With `typ` (the type that was decoded), a bad enum value also says the allowed ones.
    """
    m = _AT.match(str(err))
    # an error at the top level has no "at `$...`"
    msg, path = (m.group("msg"), m.group("path").lstrip(".")) if m else (str(err), "")
    unknown = re.match(r"Object contains unknown field `([^`]+)`", msg)
    if unknown:
        field = unknown.group(1)
        known = getattr(typ, "__struct_fields__", ()) if not path else ()
        hint = (
            f"expected one of {', '.join(known)}"
            if known
            else "check its spelling against the documented keys"
        )
        return Problem(f"unknown key {field!r}: {hint}", path=_join(root, _join(path, field)))
    missing = re.match(r"Object missing required field `([^`]+)`", msg)
    if missing:
        field = missing.group(1)
        return Problem(f"required key {field!r} is missing", path=_join(root, _join(path, field)))
    if not m:
        return Problem(msg, path=root)
    if msg.startswith("Invalid enum value") and typ is not None:
        choices = _choices(typ, path)
        if choices:
            msg += ": expected one of " + ", ".join(repr(c) for c in choices)
    return Problem(msg.replace("Expected", "expected", 1), path=_join(root, path))
