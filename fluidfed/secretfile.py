"""Files that hold a secret (a token, a key, credentials): readable by their owner only from
their first byte, written whole or not at all.

A temporary file beside the destination (created 0600) is renamed over it, so a file that
was there with a looser mode is replaced, not rewritten in place keeping its mode (an
`os.open(..., 0o600)` of an existing 0644 file leaves it 0644), and a failed write leaves
the old content, not half a token. (A process killed between the two leaves the
temporary file beside it, owner-only, named `.<name>.<random>`.)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write(path: Path, data: bytes | str, *, durable: bool = False) -> Path:
    """Write `data` to `path`, mode 0600; `durable`: on disk (file and directory synced)
    before returning, for state that must survive a crash."""
    raw = data.encode() if isinstance(data, str) else data
    # through a symlink to the file it names (a token file linked from elsewhere), as a
    # plain open would, rather than replacing the link with a file of its own
    path = Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        dfd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


def unwritable(path: Path) -> str:
    """Why a secret cannot be written to `path` ("" if it can): asked before the secret is
    issued, so that a token is never made that nowhere holds."""
    path = Path(os.path.realpath(path))
    if path.is_dir():
        return f"{path} is a directory"
    if not path.parent.is_dir():
        return f"directory {path.parent} does not exist"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"directory {path.parent} is not writable"
    return ""
