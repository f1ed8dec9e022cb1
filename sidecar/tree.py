"""The mounted tree: inode numbers for the dataset's paths, kept stable across listings.

Pure: built from `layout.files` output. A new listing keeps the inode of every path that is
still there and reports the files whose content changed, so the kernel's cached pages are
dropped for those and only those. A file it drops stays readable by its inode (`gone`) for
whoever had it open, until the kernel forgets the inode.
"""

from __future__ import annotations

import posixpath
from collections import OrderedDict
from collections.abc import Mapping

from fluidfed.data import layout
from fluidfed.data.layout import FileRef

ROOT = 1

# Files dropped by a listing kept readable by inode (`Tree.gone`), the latest this many: the
# kernel opens files without a word to the sidecar (`sidecar/fusesession.py`), so a file
# opened before a listing dropped it is known only by the READs that follow, which name
# its inode; those read the file as it was, as an open file outlives its unlinking.
GONE_KEPT = 4096


class Tree:
    def __init__(self) -> None:
        self.files: dict[str, FileRef] = {}
        self.children: dict[str, list[str]] = {"": []}
        self._ino: dict[str, int] = {"": ROOT}
        self._path: dict[int, str] = {ROOT: ""}
        self._next = ROOT + 1
        # inode -> a file a listing dropped, until the kernel forgets the inode (GONE_KEPT)
        self.gone: OrderedDict[int, FileRef] = OrderedDict()

    def update(
        self, files: Mapping[str, FileRef], dirs: dict[str, list[str]] | None = None
    ) -> list[int]:
        """Take a new listing (`dirs`: its `layout.directories`, if at hand); the inodes of
        files whose content changed."""
        changed = [
            self._ino[p]
            for p, ref in files.items()
            if p in self.files and p in self._ino and self.files[p].version != ref.version
        ]
        for p, old in self.files.items():
            if p not in files:
                ino = self._ino[p]
                self.gone[ino] = old
                self.gone.move_to_end(ino)
        self.files = dict(files)
        self.children = layout.directories(self.files) if dirs is None else dirs
        for d in self.children:
            self._assign(d)
        for p in self.files:
            self._assign(p)
        for ino in [i for i in self.gone if self._path[i] in self.files]:
            del self.gone[ino]  # listed again: its listing's file
        while len(self.gone) > GONE_KEPT:
            self.gone.popitem(last=False)
        return changed

    def departed(
        self, files: Mapping[str, FileRef], dirs: dict[str, list[str]] | None = None
    ) -> list[tuple[int, str]]:
        """The entries a new listing `files` (`dirs`: its `layout.directories`, if at hand)
        no longer has (files, and directories left empty), as (parent inode, name): to be
        forgotten by the kernel, so that an open of one fails at once rather than when its
        cached entry expires."""
        if dirs is None:
            dirs = layout.directories(dict(files))
        gone = [p for p in self.files if p not in files]
        gone += [d for d in self.children if d and d not in dirs]
        out = []
        for p in gone:
            parent, name = posixpath.split(p)
            ino = self._ino.get(parent)
            if ino is not None:
                out.append((ino, name))
        return out

    def _assign(self, path: str) -> int:
        ino = self._ino.get(path)
        if ino is None:
            ino = self._next
            self._next += 1
            self._ino[path] = ino
            self._path[ino] = path
        return ino

    def path(self, ino: int) -> str | None:
        p = self._path.get(ino)
        if p is None or (p not in self.files and p not in self.children):
            return None  # the path went away in a later listing
        return p

    def file(self, ino: int) -> FileRef | None:
        """The file `ino` is: as listed, or as it was when a listing dropped it (`gone`)."""
        p = self._path.get(ino)
        ref = self.files.get(p) if p is not None else None
        return ref if ref is not None else self.gone.get(ino)

    def forget(self, ino: int) -> None:
        """The kernel forgot `ino`: nothing can read it by inode any more."""
        self.gone.pop(ino, None)

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
