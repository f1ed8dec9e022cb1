"""Byte sizes and durations as users write them: `4GiB`, `500Mi`, `1048576`; `30s`, `5m`."""

from __future__ import annotations

import math
import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
}
MAX_SIZE = 2**60  # 1 EiB: far past any cache, and a float's integer part is exact below it
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ByteSize(int):
    """A number of bytes; decoded from `4GiB`, `500Mi`, `10GB` or a plain integer."""

    def __repr__(self) -> str:
        return f"ByteSize({format_size(self)})"


class Duration(float):
    """A number of seconds; decoded from `30s`, `5m`, `1h30m`, `250ms` or a plain number."""

    def __repr__(self) -> str:
        return f"Duration({format_duration(self)})"


def parse_size(value: object) -> ByteSize:
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 4GiB, 500Mi or a number of bytes, got {value}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return ByteSize(value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        unit = m.group(2).lower() if m else ""
        if m and unit in _SIZE_UNITS:
            n = float(m.group(1)) * _SIZE_UNITS[unit]
            if not math.isfinite(n) or n > MAX_SIZE:
                raise ValueError(f"a size of at most 1EiB, got {value!r}")
            return ByteSize(int(n))
    raise ValueError(
        f"expected a size such as 4GiB, 500Mi, 10GB or a number of bytes, got {value!r}"
    )


def parse_duration(value: object) -> Duration:
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {value}")
    if isinstance(value, int | float):
        if not math.isfinite(value):  # (NaN passes every comparison: a loop's sleep dies)
            raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {value}")
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value}")
        return Duration(float(value))
    if isinstance(value, str):
        text = value.strip()
        total, pos = 0.0, 0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            pos = m.end()
        else:
            if text and pos == len(text) and math.isfinite(total):
                return Duration(total)
    raise ValueError(f"expected a duration such as 30s, 5m, 1h30m or 250ms, got {value!r}")


# a Kubernetes quantity's suffixes and what they multiply by ("1e3": a decimal exponent)
_QUANTITY_RE = re.compile(r"^\+?(\d+(?:\.\d*)?|\.\d+)(?:[eE]([-+]?\d+)|([a-zA-Z]*))$")
_QUANTITY_SUFFIXES = {
    "": 1.0,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    **{s: float(2 ** (10 * (i + 1))) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}


def quantity_value(text: str) -> float:
    """A Kubernetes quantity's value ("512Mi": 536870912.0, "100m": 0.1, "1e3": 1000.0);
    ValueError if it is none."""
    m = _QUANTITY_RE.match(text)
    if m is None or (m.group(3) or "") not in _QUANTITY_SUFFIXES:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 512Mi, 2Gi, 500m)")
    number, exponent, suffix = m.groups()
    if exponent is not None:
        return float(number) * 10.0 ** int(exponent)
    return float(number) * _QUANTITY_SUFFIXES[suffix or ""]


def format_size(n: int) -> str:
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            value = n / factor
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{n}B"


def format_duration(seconds: float) -> str:
    if seconds < 1 and seconds:
        return f"{seconds * 1000:.0f}ms"
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds / 3600:.0f}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:g}s"
