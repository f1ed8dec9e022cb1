"""Is the live object already what we want? Pure.

The API server adds defaults, status and metadata; what we own is right when every field we
set has the same value live. Lists compare element by element (same length).
"""

from __future__ import annotations

from typing import Any


def is_subset(want: Any, have: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            k in have and is_subset(v, have[k]) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(is_subset(w, h) for w, h in zip(want, have, strict=True))
        )
    return bool(want == have)


def needs_apply(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    if live is None:
        return True
    want = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}
    return not is_subset(want, live)
