"""The mounted tree: inode numbers for the dataset's paths, kept stable across listings.

Pure: built from `layout.files` output. A new listing keeps the inode of every path that is
still there and reports the files whose content changed, so the kernel's cached pages are
dropped for those and only those, and the names it no longer has, so the kernel forgets
them. A path a listing drops loses its inode: if it comes back, as a file or as a
directory, it is a new inode, never the old one with new content or another type. A
dropped file the kernel may still hold stays readable by its old inode (`gone`) until the
kernel forgets it.
"""

from __future__ import annotations

import posixpath
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from fluidfed.data import layout
from fluidfed.data.layout import FileRef

ROOT = 1

# Files dropped by a listing kept readable by inode (`Tree.gone`), the latest this many: the
# kernel opens files without a word to the sidecar (`sidecar/fusesession.py`), so a file
# opened before a listing dropped it is known only by the READs that follow, which name
# its inode; those read the file as it was, as an open file outlives its unlinking. Only
# files whose inode the kernel was given (`Tree.hold`) and has not forgotten are kept.
GONE_KEPT = 16384


@dataclass
class Listed:
    """What a new listing changed for the kernel."""

    changed: list[int] = field(default_factory=list)  # files with new content: their inodes
    departed: list[tuple[int, str]] = field(default_factory=list)  # names gone: (parent, name)


@dataclass
class Plan:
    """A new listing, and what taking it changes (`Tree.plan`)."""

    files: dict[str, FileRef]
    dirs: dict[str, list[str]]
    listed: Listed = field(default_factory=Listed)
    dropped: list[tuple[str, FileRef]] = field(default_factory=list)  # files gone: (path, file)
    empty: list[str] = field(default_factory=list)  # directories gone
    new: list[str] = field(default_factory=list)  # paths with no inode yet
    shadowed: list[str] = field(default_factory=list)  # files not shown: directories' names


class Tree:
    def __init__(self) -> None:
        self.files: dict[str, FileRef] = {}
        self.children: dict[str, list[str]] = {"": []}
        self._ino: dict[str, int] = {"": ROOT}
        self._path: dict[int, str] = {ROOT: ""}
        self._next = ROOT + 1
        # inodes given to the kernel (in an entry) that it has not forgotten yet, of the
        # listing and of `gone`
        self.held: set[int] = set()
        # inode -> a held file a listing dropped, until the kernel forgets it (GONE_KEPT)
        self.gone: OrderedDict[int, FileRef] = OrderedDict()

    def update(self, files: Mapping[str, FileRef]) -> Listed:
        """Take a new listing: the files whose content changed, and the entries it no
        longer has (files, and directories left empty) named by parent inode and name.
        `plan` then `apply`."""
        return self.apply(self.plan(files))

    def plan(self, files: Mapping[str, FileRef]) -> Plan:
        """What taking a new listing changes, worked out without changing anything: the
        walk over the whole listing, for a thread (200,000 files: ~0.1 s, and its
        directories ~0.2 s), while the event loop goes on answering from the tree as it
        is; `apply` then does what the plan found, in time proportional to the changes."""
        files = dict(files)
        dirs = layout.directories(files)
        out = Plan(files, dirs)
        # an object named as a directory is ("a" beside "a/b", which S3 allows): the path
        # is the directory, the file is not shown (as other file systems over S3 do)
        out.shadowed = [p for p in files if p in dirs]
        for p in out.shadowed:
            del files[p]
        for p, old in self.files.items():
            ref = files.get(p)
            if ref is None:
                out.dropped.append((p, old))
            elif ref.version != old.version:
                out.listed.changed.append(self._ino[p])
        out.empty = [d for d in self.children if d and d not in dirs]
        for p in [p for p, _ in out.dropped] + out.empty:
            parent, name = posixpath.split(p)
            ino = self._ino.get(parent)
            if ino is not None:
                out.listed.departed.append((ino, name))
        out.new = [d for d in dirs if d not in self._ino] + [p for p in files if p not in self._ino]
        return out

    def apply(self, plan: Plan) -> Listed:
        """Take the listing `plan` was made for (the tree unchanged since, but for `hold`
        and `forget`)."""
        # (`held` keeps only listed and kept inodes: an entry the kernel never took, a
        # plain READDIR's, is never forgotten by it)
        for p, old in plan.dropped:
            ino = self._ino.pop(p)
            if ino in self.held:
                self.gone[ino] = old
            else:
                del self._path[ino]
        for d in plan.empty:
            ino = self._ino.pop(d)
            del self._path[ino]
            self.held.discard(ino)
        while len(self.gone) > GONE_KEPT:
            ino = self.gone.popitem(last=False)[0]
            del self._path[ino]
            self.held.discard(ino)
        self.files = plan.files
        self.children = plan.dirs
        # new paths, and dropped ones listed again as the other kind (a new inode)
        back = [p for p, _ in plan.dropped] + plan.empty
        for p in plan.new + [p for p in back if p in plan.dirs or p in plan.files]:
            self._assign(p)
        return plan.listed

    def _assign(self, path: str) -> int:
        ino = self._ino.get(path)
        if ino is None:
            ino = self._next
            self._next += 1
            self._ino[path] = ino
            self._path[ino] = path
        return ino

    def path(self, ino: int) -> str | None:
        """The listed path of `ino`; None if it is no path of the listing (any more)."""
        p = self._path.get(ino)
        return p if p is not None and self._ino.get(p) == ino else None

    def file(self, ino: int) -> FileRef | None:
        """The file `ino` is: as listed, or as it was when a listing dropped it (`gone`)."""
        p = self.path(ino)
        return self.files.get(p) if p is not None else self.gone.get(ino)

    def hold(self, ino: int) -> None:
        """The kernel was given `ino` (a LOOKUP's or READDIRPLUS's entry)."""
        self.held.add(ino)

    def forget(self, ino: int) -> None:
        """The kernel forgot `ino`: nothing can read it by inode any more."""
        self.held.discard(ino)
        if self.gone.pop(ino, None) is not None:
            del self._path[ino]

    def inode(self, path: str) -> int:
        return self._ino[path]

    def lookup(self, parent: int, name: str) -> str | None:
        base = self.path(parent)
        if base is None or base not in self.children:
            return None
        p = posixpath.join(base, name) if base else name
        return p if (p in self.files or p in self.children) else None

    def is_dir(self, path: str) -> bool:
        return path in self.children

    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())
