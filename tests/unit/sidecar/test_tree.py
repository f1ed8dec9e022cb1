from __future__ import annotations

import pytest

from fluidfed.data.layout import FileRef
from sidecar import tree as tree_module
from sidecar.tree import ROOT, Tree


def ref(version: str, size: int = 1) -> FileRef:
    return FileRef(mount=0, key="k", size=size, version=version)


def test_inodes_stay_and_only_changed_files_are_reported() -> None:
    t = Tree()
    assert t.update({"a/b.txt": ref("1"), "c.txt": ref("1")}).changed == []
    ino_b = t.inode("a/b.txt")
    assert t.lookup(ROOT, "a") == "a"
    assert t.lookup(t.inode("a"), "b.txt") == "a/b.txt"
    assert t.lookup(ROOT, "zzz") is None
    changed = t.update({"a/b.txt": ref("2"), "d.txt": ref("1")}).changed
    assert changed == [ino_b]
    assert t.inode("a/b.txt") == ino_b
    assert t.path(ino_b) == "a/b.txt"
    assert t.lookup(ROOT, "c.txt") is None  # gone in the new listing
    assert t.children[""] == ["a", "d.txt"]
    assert t.is_dir("a") and not t.is_dir("d.txt")


def test_what_a_new_listing_drops_is_named_by_parent_and_name() -> None:
    t = Tree()
    t.update({"a/b.txt": ref("1"), "a/c.txt": ref("1"), "x/y/z.txt": ref("1"), "top": ref("1")})
    a, x, xy = t.inode("a"), t.inode("x"), t.inode("x/y")
    new = {"a/b.txt": ref("2"), "top": ref("1")}
    listed = t.update(new)
    # the files, and the directories no file is left in (each named once, in its parent)
    assert sorted(listed.departed) == sorted([(a, "c.txt"), (xy, "z.txt"), (x, "y"), (ROOT, "x")])
    assert listed.changed == [t.inode("a/b.txt")]
    assert t.update(new).departed == []  # nothing more once taken


def test_a_dropped_file_the_kernel_holds_reads_as_it_was_until_it_forgets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = Tree()
    t.update({"a/b.txt": ref("1"), "c.txt": ref("1"), "d.txt": ref("1"), "e.txt": ref("1")})
    b, c, e = t.inode("a/b.txt"), t.inode("c.txt"), t.inode("e.txt")
    for ino in (b, c):
        t.hold(ino)  # given to the kernel; e.txt never was
    t.update({"a/b.txt": ref("2"), "d.txt": ref("1")})
    # c.txt no longer opens by name, but reads by inode as it was; e.txt is not kept
    assert t.lookup(ROOT, "c.txt") is None and t.path(c) is None
    assert t.file(c) == ref("1") and t.file(b) == ref("2")
    assert t.file(e) is None and e not in t.gone
    t.update({"d.txt": ref("1")})
    assert t.file(b) == ref("2")  # as it was when dropped: its last version
    t.forget(b)
    assert t.file(b) is None and t.file(c) == ref("1") and b not in t.held
    # listed again: a new inode with the new content; the old one still reads as it was
    t.update({"c.txt": ref("3"), "d.txt": ref("1")})
    assert t.inode("c.txt") != c and t.file(t.inode("c.txt")) == ref("3")
    assert t.file(c) == ref("1") and t.path(c) is None
    # a dropped file's path listed again as a directory: a new inode, never the file's
    t.hold(t.inode("d.txt"))
    d = t.inode("d.txt")
    t.update({"c.txt": ref("3")})
    t.update({"c.txt": ref("3"), "d.txt/f": ref("1")})
    assert t.is_dir("d.txt") and t.inode("d.txt") != d
    assert t.file(d) == ref("1") and t.file(t.inode("d.txt")) is None
    # the latest GONE_KEPT kept
    monkeypatch.setattr(tree_module, "GONE_KEPT", 2)
    t.update({f"f{i}": ref("1") for i in range(4)})
    for i in range(4):
        t.hold(t.inode(f"f{i}"))
    f0, f3 = t.inode("f0"), t.inode("f3")
    t.update({})
    assert len(t.gone) == 2 and t.file(f3) == ref("1") and t.file(f0) is None
    # what is held is bounded by the listing and the kept: not every entry ever given
    assert t.held == set(t.gone)


def test_a_plan_changes_nothing_and_its_apply_sees_what_the_kernel_took_meanwhile() -> None:
    """`plan` (the walk over the listing, in a thread) leaves the tree as it is for the
    event loop; `apply` takes what it found, with the inodes the kernel was given since."""
    t = Tree()
    t.update({"a.txt": ref("1"), "x": ref("1"), "d/e.txt": ref("1")})
    a, x, d = t.inode("a.txt"), t.inode("x"), t.inode("d")
    state = (dict(t.files), dict(t.children), dict(t._ino), dict(t._path), set(t.held))
    plan = t.plan({"x/y": ref("1"), "d/e.txt": ref("2")})
    assert (t.files, t.children, t._ino, t._path, t.held) == state
    assert t.path(a) == "a.txt" and t.file(x) == ref("1")
    t.hold(a)  # looked up between the plan and its apply
    listed = t.apply(plan)
    assert listed.changed == [t.inode("d/e.txt")]
    assert sorted(listed.departed) == [(ROOT, "a.txt"), (ROOT, "x")]
    assert t.file(a) == ref("1") and a in t.gone  # held when applied: kept
    # "x" was a file and is a directory now, in one listing: a new inode
    assert t.is_dir("x") and t.inode("x") != x and t.file(x) is None
    assert t.lookup(t.inode("x"), "y") == "x/y" and t.inode("d") == d


def test_an_object_named_as_a_directory_is_hidden_by_it() -> None:
    """S3 allows objects "a" and "a/b" side by side: "a" is the directory, the object is
    not shown; and as either comes and goes, each listing is taken."""
    t = Tree()
    plan = t.plan({"a": ref("1"), "a/b": ref("1"), "c": ref("1")})
    assert plan.shadowed == ["a"]
    t.apply(plan)
    a = t.inode("a")
    assert t.is_dir("a") and "a" not in t.files and t.lookup(a, "b") == "a/b"
    t.hold(a)
    t.update({"c": ref("1")})  # both gone at once
    assert t.lookup(ROOT, "a") is None and a not in t.held and t.file(a) is None
    t.update({"a": ref("2"), "a/b": ref("1"), "c": ref("1")})
    t.update({"a": ref("2"), "c": ref("1")})  # the directory gone: the object shows
    assert t.file(t.inode("a")) == ref("2") and t.inode("a") != a and not t.is_dir("a")
