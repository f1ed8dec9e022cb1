"""`--exit-with-peers`: where Kubernetes has no native sidecars, the sidecar is a regular
container sharing the pod's process namespace; it leaves once the app containers are gone,
so a Job's pod can complete. Pure: decides from a process table.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def others(procs: Iterable[tuple[int, int]], me: int) -> set[int]:
    """Processes (pid, ppid) that are not `me`, my descendants or the pod's pause (pid 1)."""
    table = dict(procs)
    out = set()
    for pid in table:
        p, seen = pid, set()
        while p not in (0, 1, me) and p in table and p not in seen:
            seen.add(p)
            p = table[p]
        if pid != 1 and p != me:
            out.add(pid)
    return out


class PeerWatch:
    """True from `gone()` once peers were seen and then all of them left."""

    def __init__(self) -> None:
        self.seen = False

    def gone(self, peers: set[int]) -> bool:
        if peers:
            self.seen = True
            return False
        return self.seen


def process_table(proc: Path = Path("/proc")) -> list[tuple[int, int]]:
    out = []
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out.append((int(d.name), int(fields[1])))
    return out
