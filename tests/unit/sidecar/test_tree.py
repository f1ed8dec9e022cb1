from __future__ import annotations

from fluidfed.data.layout import FileRef
from sidecar.tree import ROOT, Tree


def ref(version: str, size: int = 1) -> FileRef:
    return FileRef(mount=0, key="k", size=size, version=version)


def test_inodes_stay_and_only_changed_files_are_reported() -> None:
    t = Tree()
    assert t.update({"a/b.txt": ref("1"), "c.txt": ref("1")}) == []
    ino_b = t.inode("a/b.txt")
    assert t.lookup(ROOT, "a") == "a"
    assert t.lookup(t.inode("a"), "b.txt") == "a/b.txt"
    assert t.lookup(ROOT, "zzz") is None
    changed = t.update({"a/b.txt": ref("2"), "d.txt": ref("1")})
    assert changed == [ino_b]
    assert t.inode("a/b.txt") == ino_b
    assert t.path(ino_b) == "a/b.txt"
    assert t.lookup(ROOT, "c.txt") is None  # gone in the new listing
    assert t.children[""] == ["a", "d.txt"]
    assert t.is_dir("a") and not t.is_dir("d.txt")
