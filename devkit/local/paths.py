"""Where fluidfed keeps what it builds and runs on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(name: str, override_env: str) -> Path:
    """`$override_env` if set, else `$XDG_CACHE_HOME/fluidfed/<name>` (~/.cache by default)."""
    env = os.environ.get(override_env)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fluidfed" / name
