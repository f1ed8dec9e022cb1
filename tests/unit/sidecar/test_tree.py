from __future__ import annotations

import pytest

from fluidfed.data.layout import FileRef
from sidecar import tree as tree_module
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


def test_what_a_new_listing_drops_is_named_by_parent_and_name() -> None:
    t = Tree()
    t.update({"a/b.txt": ref("1"), "a/c.txt": ref("1"), "x/y/z.txt": ref("1"), "top": ref("1")})
    new = {"a/b.txt": ref("2"), "top": ref("1")}
    gone = t.departed(new)
    # the files, and the directories no file is left in (each named once, in its parent)
    assert sorted(gone) == sorted(
        [(t.inode("a"), "c.txt"), (t.inode("x/y"), "z.txt"), (t.inode("x"), "y"), (ROOT, "x")]
    )
    t.update(new)
    assert t.departed(new) == []  # nothing more once taken


def test_a_dropped_file_stays_readable_by_inode_until_the_kernel_forgets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = Tree()
    t.update({"a/b.txt": ref("1"), "c.txt": ref("1"), "d.txt": ref("1")})
    b, c = t.inode("a/b.txt"), t.inode("c.txt")
    t.update({"a/b.txt": ref("2"), "d.txt": ref("1")})
    # c.txt no longer opens by name, but reads by inode as it was
    assert t.lookup(ROOT, "c.txt") is None and t.path(c) is None
    assert t.file(c) == ref("1") and t.file(b) == ref("2")
    t.update({"d.txt": ref("1")})
    assert t.file(b) == ref("2")  # as it was when dropped: its last version
    t.forget(b)
    assert t.file(b) is None and t.file(c) == ref("1")
    # listed again: its listing's file, nothing kept apart
    t.update({"c.txt": ref("3"), "d.txt": ref("1")})
    assert t.inode("c.txt") == c and t.file(c) == ref("3") and c not in t.gone
    # the latest GONE_KEPT kept
    monkeypatch.setattr(tree_module, "GONE_KEPT", 2)
    t.update({f"f{i}": ref("1") for i in range(4)})
    t.update({})
    assert [t.path(i) for i in t.gone] == [None, None]
    assert t.file(t.inode("f3")) == ref("1") and t.file(t.inode("f0")) is None
