"""Load fluidfed's TOML files into models, with errors that say file, line and field path.

tomli tells where a syntax error is; for type and rule errors the line is found by
walking the source for the table and key that the field path names (`toml_lines`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec
import tomli

from fluidfed import codec, validation
from fluidfed.errors import ConfigError, Problem
from fluidfed.models import Document

T = TypeVar("T")
log = logging.getLogger("fluidfed.config")

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*="
)


def _split_key(dotted: str) -> list[str]:
    parts = re.findall(r"\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+", dotted)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def toml_lines(source: str) -> dict[str, int]:
    """Map every table and key path in a TOML text to its line: `dataset[0].cache.tiers[1]`.

    Arrays of tables get their index; plain tables and keys are recorded as written.
    """
    lines: dict[str, int] = {}
    aot_count: dict[str, int] = {}
    table: list[str] = []
    for lineno, text in enumerate(source.splitlines(), start=1):
        m = _HEADER.match(text)
        if m and not _KEY.match(text):
            is_array = m.group(1) == "[["
            resolved: list[str] = []
            keys = _split_key(m.group(2))
            for depth, key in enumerate(keys):
                prefix = ".".join([*resolved, key])
                last = depth == len(keys) - 1
                if is_array and last:
                    idx = aot_count.get(prefix, -1) + 1
                    aot_count[prefix] = idx
                    # a new element resets the counters of arrays nested below it
                    for k in [k for k in aot_count if k.startswith(prefix + "[")]:
                        del aot_count[k]
                    resolved.append(f"{key}[{idx}]")
                elif prefix in aot_count:
                    resolved.append(f"{key}[{aot_count[prefix]}]")
                else:
                    resolved.append(key)
            table = resolved
            lines.setdefault(".".join(table), lineno)
            continue
        assignment = _KEY.match(text)
        if assignment:
            lines.setdefault(".".join([*table, *_split_key(assignment.group(1))]), lineno)
    return lines


def locate(lines: dict[str, int], path: str) -> int:
    """The line of the longest prefix of `path` found in the file (0 if none)."""
    probe = path
    while probe:
        if probe in lines:
            return lines[probe]
        cut = max(probe.rfind("."), probe.rfind("["))
        probe = probe[:cut] if cut > 0 else ""
    return 0


def _normalise(raw: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Accept `[dataset]` (one) as well as `[[dataset]]` (several)."""
    single = isinstance(raw.get("dataset"), dict)
    if single:
        raw = {**raw, "dataset": [raw["dataset"]]}
    return raw, single


def parse_document(
    data: dict[str, Any],
    *,
    file: str = "",
    source: str = "",
    options: validation.OptionsCheck | None = None,
    mountable: bool = True,
) -> Document:
    """Decode and check a document given as builtins (`options`: as `check_dataset` takes
    it; `mountable`: as `check_document` takes it); raises ConfigError with every
    problem."""
    data, single = _normalise(data)
    lines = toml_lines(source) if source else {}
    dataset_path = "dataset" if single else "dataset[{i}]"

    def place(p: Problem) -> Problem:
        path = p.path
        if single:
            path = re.sub(r"^dataset\[0\]", "dataset", path)
        return Problem(p.message, path=path, file=file, line=locate(lines, path))

    try:
        doc = codec.convert(data, Document)
    except msgspec.ValidationError as err:
        raise ConfigError([place(codec.problem_of(err, typ=Document))]) from None
    problems = validation.check_document(doc, dataset_path, options, mountable=mountable)
    if problems:
        raise ConfigError([place(p) for p in problems])
    return doc


def loads(
    source: str,
    *,
    file: str = "<string>",
    options: validation.OptionsCheck | None = None,
    mountable: bool = True,
) -> Document:
    try:
        raw = tomli.loads(source)
    except tomli.TOMLDecodeError as err:
        line = getattr(err, "lineno", 0) or 0
        msg = getattr(err, "msg", str(err))
        raise ConfigError(
            [Problem(f"not valid TOML: {msg}; fix the syntax", file=file, line=line)]
        ) from None
    except RecursionError as err:  # tomli's bound on nesting: "nested more than ... levels"
        raise ConfigError([Problem(f"not valid TOML: {err}", file=file)]) from None
    return parse_document(raw, file=file, source=source, options=options, mountable=mountable)


def read(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem("no such file", file=str(p))]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([Problem(f"cannot read: {err}", file=str(p))]) from None


def load(path: str | Path, *, mountable: bool = True) -> Document:
    p = Path(path)
    return loads(read(p), file=str(p), mountable=mountable)


def load_file(path: str | Path, typ: type[T]) -> T:
    """A data-path config (the JSON the agent writes into ConfigMaps, or TOML by hand)."""
    p = Path(path)
    source = read(p)
    lines: dict[str, int] = {}
    try:
        if p.suffix == ".toml":
            raw: Any = tomli.loads(source)
            lines = toml_lines(source)
        else:
            raw = msgspec.json.decode(source)
    except (tomli.TOMLDecodeError, msgspec.DecodeError, RecursionError) as err:
        raise ConfigError(
            [Problem(f"not valid {p.suffix.lstrip('.') or 'JSON'}: {err}", file=str(p))]
        ) from None
    try:
        return codec.convert(raw, typ)
    except msgspec.ValidationError as err:
        problem = codec.problem_of(err, typ=typ)
        raise ConfigError(
            [
                Problem(
                    problem.message,
                    path=problem.path,
                    file=str(p),
                    line=locate(lines, problem.path),
                )
            ]
        ) from None


class Watched(Generic[T]):
    """A config file someone else rewrites (the agent, through a ConfigMap): `changed()`
    gives the new contents once per change, or None; a broken file keeps the last good."""

    def __init__(self, path: Path, typ: type[T]) -> None:
        self.path = path
        self.typ = typ
        self._mtime = 0.0
        self._mtime = self._stat()

    def _stat(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return self._mtime  # gone for a moment (a ConfigMap swap): no change

    def changed(self) -> T | None:
        mtime = self._stat()
        if mtime == self._mtime:
            return None
        try:
            got = load_file(self.path, self.typ)
        except ConfigError as err:
            log.warning("not reloading %s: %s", self.path, "; ".join(map(str, err.problems)))
            return None
        self._mtime = mtime
        return got
