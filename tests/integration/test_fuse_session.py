"""The sidecar's FUSE sessions through /dev/fuse: the native one (fluidfed._fuse, the
default) and pyfuse3 (FLUIDFED_FUSE=pyfuse3) answer the kernel alike; the native one writes
large READ answers from its own threads."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit import testing
from devkit.local.processes import SidecarProcess, is_mounted
from devkit.testing import NotYet, eventually_blocking
from sidecar.fs import PREFERRED_IO

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root"),
]

MANY = 1500  # entries in one directory: several READDIR answers
BIG = 48 * 2**20 + 12_345  # several blocks, the last one short


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuse-src")
    (root / "many").mkdir()
    for i in range(MANY):
        (root / "many" / f"f{i:05d}").write_bytes(i.to_bytes(4, "little") * (i % 7 + 1))
    (root / "deep" / "er").mkdir(parents=True)
    (root / "deep" / "er" / "x.txt").write_bytes(b"deep down\n")
    (root / "empty.bin").write_bytes(b"")
    (root / "big.bin").write_bytes(os.urandom(BIG))
    os.utime(root / "deep" / "er" / "x.txt", ns=(1_600_000_000_123_456_789,) * 2)
    return root


@pytest.fixture
def mounted(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    made: list[SidecarProcess] = []

    def start(engine: str, mountpoint: Path | None = None) -> SidecarProcess:
        monkeypatch.setenv("FLUIDFED_FUSE", engine)
        sc = SidecarProcess(
            tmp_path / engine,
            {"dataset": "d", "mounts": [{"uri": f"file://{tree}"}]},
            mountpoint or tmp_path / f"{engine}-mnt",
        )
        made.append(sc)
        return sc.start()

    yield start
    for sc in made:
        sc.close()


@pytest.mark.parametrize("engine", ["native", "pyfuse3"])
def test_both_sessions_answer_the_kernel_alike(tree: Path, mounted: Any, engine: str) -> None:
    mnt = mounted(engine).mountpoint
    # what Fluid's CSI and the agent look for (agents/fluid.py: FUSE_FS_TYPE)
    assert mount_types(mnt) == ["fuse.fluidfed"]
    # a directory larger than one READDIR answer, in order, every entry once
    names = os.listdir(mnt / "many")
    assert sorted(names) == sorted(os.listdir(tree / "many")) and len(names) == MANY
    with os.scandir(mnt / "many") as it:
        sizes = {e.name: e.stat().st_size for e in it}
    assert sizes == {n: (tree / "many" / n).stat().st_size for n in names}
    # attributes: read-only, the source's size and mtime, page-cache-sized st_blksize
    st = (mnt / "deep" / "er" / "x.txt").stat()
    assert stat.S_IMODE(st.st_mode) == 0o444 and stat.S_ISREG(st.st_mode)
    assert st.st_size == 10 and st.st_blksize == PREFERRED_IO
    assert st.st_mtime_ns // 1000 == 1_600_000_000_123_456  # (float seconds in the listing)
    assert stat.S_ISDIR((mnt / "deep").stat().st_mode)
    # bytes: small, empty, and across blocks, whole and at odd offsets
    assert (mnt / "deep" / "er" / "x.txt").read_bytes() == b"deep down\n"
    assert (mnt / "empty.bin").read_bytes() == b""
    want = (tree / "big.bin").read_bytes()
    got = (mnt / "big.bin").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest()
    fd = os.open(mnt / "big.bin", os.O_RDONLY)
    try:
        for off in (0, 4 * 2**20 - 3, BIG - 100, BIG, BIG + 5):
            assert os.pread(fd, 7000, off) == want[off : off + 7000], off
    finally:
        os.close(fd)
    # errors: missing names, directories read as files, every change
    with pytest.raises(FileNotFoundError):
        (mnt / "deep" / "nope").stat()
    with pytest.raises(IsADirectoryError):
        (mnt / "deep").read_bytes()
    for change in (
        lambda: os.close(os.open(mnt / "deep" / "er" / "x.txt", os.O_WRONLY | os.O_APPEND)),
        lambda: (mnt / "new").write_bytes(b"x"),
        lambda: (mnt / "deep" / "er" / "x.txt").unlink(),
        lambda: (mnt / "deep").rename(mnt / "moved"),
        lambda: (mnt / "d2").mkdir(),
        lambda: os.chmod(mnt / "empty.bin", 0o777),
    ):
        with pytest.raises(OSError, match="Read-only file system") as err:
            change()
        assert err.value.errno == errno.EROFS
    # statfs: the dataset's size and file count, nothing free
    sv = os.statvfs(mnt)
    total = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    assert sv.f_bsize == 4096 and sv.f_blocks == total // 4096 + 1 and sv.f_bfree == 0
    assert sv.f_files >= MANY + 4


def mount_types(path: Path) -> list[str]:
    """The types of the mounts stacked at `path`, bottom first (/proc/self/mounts)."""
    target = os.path.abspath(path)
    with open("/proc/self/mounts") as f:
        return [p[2] for p in (line.split() for line in f) if len(p) > 2 and p[1] == target]


def _threads(pid: int) -> dict[str, float]:
    """Seconds each thread of `pid` ran, by name (schedstat: nanoseconds, not ticks)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            ran = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[name] = out.get(name, 0.0) + ran
    return out


def test_the_native_session_writes_large_read_answers_from_its_own_threads(
    tree: Path, mounted: Any
) -> None:
    sc = mounted("native")
    assert sc.proc is not None
    before = _threads(sc.proc.pid)
    assert {"fuse-reply-0", "fuse-reply-1"} <= set(before)
    with open(sc.mountpoint / "big.bin", "rb", buffering=0) as f:
        while f.read(2**20):
            pass
    after = _threads(sc.proc.pid)
    replying = sum(after[n] - before[n] for n in after if n.startswith("fuse-reply"))
    # ~48 MiB copied into the page cache by them: milliseconds; inline it would be ~0
    assert replying > 0.002, (before, after)


@pytest.mark.parametrize("opens", ["kernel", "session"])
def test_opens_reach_no_one_and_reads_follow_the_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opens: str
) -> None:
    """The native session's opens take no message: after the first OPEN (answered ENOSYS)
    the kernel opens files by itself, with no OPEN nor RELEASE, and keeps their pages (or,
    FLUIDFED_FUSE_OPENS=session, the session's threads answer each OPEN). Either way the
    READs the kernel still sends (past the page cache here) name no handle and are served
    by inode. A new listing: new bytes for a changed file; a removed one no longer opens,
    but reads as it was where it was open already."""
    monkeypatch.setenv("FLUIDFED_FUSE", "native")
    monkeypatch.setenv("FLUIDFED_FUSE_OPENS", opens)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"one")
    big = os.urandom(5 * 2**20)
    (src / "big.bin").write_bytes(big)
    cfg = {"dataset": "d", "mounts": [{"uri": f"file://{src}"}], "metadata_ttl": 0.5}
    sc = SidecarProcess(tmp_path / "sc", cfg, tmp_path / "mnt").start()
    try:
        mnt = sc.mountpoint
        assert (mnt / "a.txt").read_bytes() == b"one"
        with open(mnt / "big.bin", "rb") as f:
            assert f.read(4096) == big[:4096]
        before = sc.status()
        assert before["fuse_opens"] == opens
        assert before["fuse_requests"]["open"] == (1 if opens == "kernel" else 2)
        for i in range(20):
            assert (mnt / "a.txt").read_bytes() == b"one"  # from the kept pages
            # pages the kernel does not have (O_DIRECT: every read a READ)
            fd = os.open(mnt / "big.bin", os.O_RDONLY | os.O_DIRECT)
            try:
                at = 4 * 2**20 + 4096 * i
                assert os.pread(fd, 4096, at) == big[at : at + 4096]
            finally:
                os.close(fd)
        after = sc.status()
        sent = {k: v - before["fuse_requests"][k] for k, v in after["fuse_requests"].items()}
        # (20 of each file; more READs than the 20 past the page cache may come: the
        # kernel's read-ahead of the first read of big.bin may still be under way)
        assert sent["open"] == (0 if opens == "kernel" else 40), sent
        if opens == "kernel":
            assert sent["release"] == 0, sent
        assert sent["read"] >= 20 and after["reads"] - before["reads"] >= 20, sent
        assert after["read_errors"] == 0
        with pytest.raises(OSError, match="Read-only") as err:  # writers are still refused
            os.open(mnt / "a.txt", os.O_WRONLY)
        assert err.value.errno == errno.EROFS

        (src / "a.txt").write_bytes(b"two, longer")
        deadline = time.monotonic() + 15
        while (got := (mnt / "a.txt").read_bytes()) == b"one" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert got == b"two, longer"
        # opened, not read yet (O_DIRECT: each read a READ), then dropped by a listing
        held = {n: os.open(mnt / n, os.O_RDONLY | os.O_DIRECT) for n in ("a.txt", "big.bin")}
        try:
            (src / "a.txt").unlink()
            (src / "big.bin").unlink()
            deadline = time.monotonic() + 15
            while (mnt / "a.txt").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            with pytest.raises(FileNotFoundError):
                os.open(mnt / "a.txt", os.O_RDONLY)
            # an open file outlives its name: it reads as it was (its blocks in the
            # sidecar's memory, read above; the source is gone), its fstat answers (asked
            # of the sidecar: the kernel's attributes expired meanwhile)
            assert os.pread(held["a.txt"], 4096, 0) == b"two, longer"
            assert os.pread(held["big.bin"], 4096, 4096) == big[4096:8192]
            assert os.pread(held["big.bin"], 4096, 4 * 2**20) == big[4 * 2**20 : 4 * 2**20 + 4096]
            time.sleep(1.0)
            before = sc.status()["fuse_requests"]["getattr"]
            assert os.fstat(held["a.txt"]).st_size == len(b"two, longer")
            assert os.fstat(held["big.bin"]).st_size == len(big)
            assert sc.status()["fuse_requests"]["getattr"] > before
            # the name listed again: a new file, a new inode; the open one reads as it was
            (src / "a.txt").write_bytes(b"three")
            deadline = time.monotonic() + 15
            while not (mnt / "a.txt").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert (mnt / "a.txt").read_bytes() == b"three"
            assert os.stat(mnt / "a.txt").st_ino != os.fstat(held["a.txt"]).st_ino
            assert os.pread(held["a.txt"], 4096, 0) == b"two, longer"
        finally:
            for fd in held.values():
                os.close(fd)
        if opens == "kernel":
            assert sc.status()["fuse_requests"]["open"] == 1
        assert sc.status()["read_errors"] == 0
    finally:
        sc.close()


def test_an_unmount_with_a_file_still_open_does_not_hang_nor_take_what_lies_below(
    tree: Path, mounted: Any, tmp_path: Path
) -> None:
    # in a pod the mountpoint is itself a mount (the volume the webhook gives the sidecar)
    volume = tmp_path / "volume"
    volume.mkdir()
    subprocess.run(["mount", "--bind", str(volume), str(volume)], check=True)
    try:
        _unmount_with_a_file_open(tree, mounted(engine="native", mountpoint=volume))
        assert mount_types(volume) != [] and "fuse.fluidfed" not in mount_types(volume)
    finally:
        subprocess.run(["umount", "-l", str(volume)], check=False)


def _unmount_with_a_file_open(tree: Path, sc: SidecarProcess) -> None:
    assert sc.proc is not None
    f = open(sc.mountpoint / "big.bin", "rb", buffering=0)  # noqa: SIM115 (closed below)
    try:
        assert f.read(10) == (tree / "big.bin").read_bytes()[:10]
        sc.proc.send_signal(signal.SIGTERM)
        assert sc.proc.wait(timeout=20) == 0
        assert "fuse.fluidfed" not in mount_types(sc.mountpoint)
        # the open file lost its server: bytes not read before are an error, not a hang
        with pytest.raises(OSError, match=r"not connected") as err:
            os.pread(f.fileno(), 10, 40 * 2**20)
        assert err.value.errno == errno.ENOTCONN
    finally:
        with contextlib.suppress(OSError):  # (ENOTCONN: the same lost server)
            f.close()


def test_a_closing_session_answers_what_it_will_not_serve_not_connected(tmp_path: Path) -> None:
    """Between `close` (SIGTERM) and the unmount, requests queued and requests that come
    are answered ENOTCONN, as after the unmount: never EIO, which says something failed
    (CI saw a reader's EIO in that window when it was)."""
    from fluidfed import _fuse

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    s = _fuse.Session(str(mnt), ["fsname=fluidfed", "subtype=fluidfed", "ro"], 2, 2)
    errors: list[int] = []

    def stat(name: str) -> None:
        try:
            os.stat(mnt / name)
        except OSError as err:
            errors.append(err.errno or 0)

    try:
        queued = threading.Thread(target=stat, args=("queued",), daemon=True)
        queued.start()
        readable, _, _ = select.select([s.fileno()], [], [], 10)
        assert readable, "the kernel's request was not queued"
        s.close()  # (not taken: it is answered by the close)
        queued.join(10)
        assert not queued.is_alive()
        stat("after")  # one that comes after
        assert errors == [errno.ENOTCONN] * 2, [errno.errorcode[e] for e in errors]
    finally:
        s.unmount()
    assert not is_mounted(mnt)


def test_a_forgotten_name_is_looked_up_again_before_its_entry_expires(tmp_path: Path) -> None:
    """`invalidate_entry` (a new listing's departed names): the kernel drops the entry at
    once, though it was given for an hour, and the next stat asks again."""
    from fluidfed import _fuse

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    s = _fuse.Session(str(mnt), ["fsname=fluidfed", "subtype=fluidfed", "ro"], 2, 2)
    lookups: list[bytes] = []
    stop = threading.Event()
    attrs = (2, stat.S_IFREG | 0o444, 1, 5, 1, 0, 4096, 0, 0)
    root = (1, stat.S_IFDIR | 0o555, 2, 0, 0, 0, 4096, 0, 0)

    def serve() -> None:
        while not stop.is_set():
            if not select.select([s.fileno()], [], [], 0.1)[0]:
                continue
            for req in s.take():
                if req[0] == _fuse.LOOKUP:
                    lookups.append(req[3])
                    if req[3] == b"x":
                        req[1].entry(attrs, 3600.0, 3600.0)
                    else:
                        req[1].error(errno.ENOENT)
                elif req[0] == _fuse.GETATTR:
                    req[1].attr(root if req[2] == 1 else attrs, 3600.0)
                elif req[1] is not None:
                    req[1].error(errno.ENOSYS)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        assert os.stat(mnt / "x").st_size == 5
        assert os.stat(mnt / "x").st_size == 5
        assert lookups == [b"x"]  # the entry is kept: no second LOOKUP
        s.invalidate_entry(1, b"x")
        s.invalidate_entry(1, b"never-looked-up")  # (the kernel holds none: not an error)
        assert os.stat(mnt / "x").st_size == 5
        assert lookups == [b"x", b"x"]
    finally:
        stop.set()
        t.join(5)
        s.unmount()
    assert not is_mounted(mnt)


@contextlib.contextmanager
def _one_file(
    mnt: Path,
    content: bytes,
    threads: int = 2,
    back: Callable[[Any, int, int], bool] | None = None,
) -> Iterator[tuple[Any, list[tuple[int, ...]]]]:
    """A native session at `mnt` with one file, "f" (inode 2), served from `content` by a
    thread of the test: (the session, the READs, REREADs, SEENs and BACKs Python was
    given, as (kind, ino, offset, size)). `threads` read the kernel's requests. A READ
    for which `back(session, offset, size)` says so is handed back to the session
    (`Reply.session`) rather than answered."""
    from fluidfed import _fuse

    mnt.mkdir()
    s = _fuse.Session(str(mnt), ["fsname=fluidfed", "subtype=fluidfed", "ro"], threads, 2)
    attrs = (2, stat.S_IFREG | 0o444, 1, len(content), 1, 0, 4096, 0, 0)
    root = (1, stat.S_IFDIR | 0o555, 2, 0, 0, 0, 4096, 0, 0)
    seen: list[tuple[int, ...]] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if not select.select([s.fileno()], [], [], 0.1)[0]:
                continue
            for req in s.take():
                kind, reply = req[0], req[1]
                if kind == _fuse.LOOKUP:
                    reply.entry(attrs, 3600.0, 3600.0)
                elif kind == _fuse.GETATTR:
                    reply.attr(root if req[2] == 1 else attrs, 3600.0)
                elif kind in (_fuse.READ, _fuse.REREAD, _fuse.SEEN, _fuse.BACK):
                    seen.append((kind, req[2], req[3], req[4]))
                    if kind == _fuse.READ and back is not None and back(s, req[3], req[4]):
                        reply.session(req[2], req[3], req[4])
                    elif reply is not None:
                        reply.data(content[req[3] : req[3] + req[4]])
                elif reply is not None:
                    reply.error(errno.ENOSYS)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield s, seen
    finally:
        stop.set()
        t.join(5)
        s.unmount()
    assert not is_mounted(mnt)


def _read(path: Path, at: int, n: int) -> bytes:
    """`n` bytes at `at`, the file's pages dropped first and no read-ahead: READs of those
    bytes only."""
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        return os.pread(f.fileno(), n, at)


def _block_files(tier: Path, content: bytes, bs: int, bad_crc: int = -1) -> list[str]:
    """`content`'s blocks of `bs` bytes written as a worker's block files in `tier` (with
    their pieces' CRCs), keys k0, k1...: their paths. Block `bad_crc`'s trailer has a CRC
    its pieces' CRCs do not make."""
    from fluidfed.data import blockfile, blocks

    paths = []
    for i in range((len(content) + bs - 1) // bs):
        data = content[i * bs : (i + 1) * bs]
        path = blockfile.block_path(tier, f"k{i}")
        path.parent.mkdir(parents=True, exist_ok=True)
        blockfile.write_block_file(path, data, blocks.checksum(data) ^ (i == bad_crc))
        paths.append(str(path))
    return paths


def test_reads_in_a_block_the_session_holds_are_answered_there_and_checked(
    tmp_path: Path,
) -> None:
    """`Session.hold`: the READs that lie in a held block are answered by the session's
    own threads (none reaches Python; the first of them comes as SEEN, without a reply),
    a READ in the file's last block past its end gets the bytes there are, one that runs
    past a block that is not the last comes to Python. A held block not checked whole is
    checked by the pieces each answer covers: one that fails comes back as REREAD, and the
    block is let go of (the READs after it come to Python)."""
    import mmap
    import zlib

    from fluidfed import _fuse

    piece = 64 * 1024
    size = 5 * piece + 1000  # blocks of 2 pieces: [0, 2p) [2p, 4p) [4p, 5p + 1000)
    content = os.urandom(size)
    src = tmp_path / "blocks"
    src.write_bytes(content)
    src.read_bytes()  # (in the page cache: the pieces' check asks it)
    fd = os.open(src, os.O_RDONLY)
    mapped = memoryview(mmap.mmap(fd, 0, prot=mmap.PROT_READ))
    crcs = [zlib.crc32(content[i : i + piece]) for i in range(0, size, piece)]
    f = tmp_path / "mnt" / "f"
    try:
        with _one_file(tmp_path / "mnt", content) as (s, seen):
            # the middle block, checked whole: its READs answered by the session
            s.hold(2, 2 * piece, mapped[2 * piece : 4 * piece], False, None, 0, -1, False)
            for at in range(2 * piece, 4 * piece, piece // 2):
                assert _read(f, at, piece // 2) == content[at : at + piece // 2]
            # (SEEN comes to Python on its own: the READ was answered without waiting)
            got = eventually_blocking(
                lambda: list(seen) or NotYet("no SEEN yet"), "the first READ's SEEN", timeout=10
            )
            assert got == [(_fuse.SEEN, 2, 2 * piece, piece // 2)]
            assert s.served() == (4, 2 * piece)
            assert s.served() == (0, 0)  # (since the last call)
            # a READ that runs past it (not the file's last block) is Python's
            seen.clear()
            assert _read(f, 4 * piece - 4096, 8192) == content[4 * piece - 4096 : 4 * piece + 4096]
            assert [k for k, *_ in seen] == [_fuse.READ]
            # the last block: a READ past the file's end gets what there is
            s.hold(2, 4 * piece, mapped[4 * piece : size], True, None, 0, -1, True)
            seen.clear()
            assert _read(f, 4 * piece, 2 * piece) == content[4 * piece :]
            assert seen == []  # (Python answered one in it: no SEEN)
            assert s.served() == (1, size - 4 * piece)

            # the first block, not checked whole, its second piece's CRC wrong
            bad = b"".join(c.to_bytes(4, "big") for c in [crcs[0], crcs[1] ^ 1])
            s.hold(2, 0, mapped[: 2 * piece], False, bad, piece, fd, True)
            seen.clear()
            assert _read(f, 0, piece) == content[:piece]  # (its piece holds)
            assert _read(f, piece, piece) == content[piece : 2 * piece]  # (by Python)
            assert seen == [(_fuse.REREAD, 2, piece, piece)]
            seen.clear()
            assert _read(f, 0, piece) == content[:piece]
            assert [k for k, *_ in seen] == [_fuse.READ]  # (let go of)
            # held again, its CRCs right: a small READ is Python's (which checks the whole
            # block, once, where the session would check a whole piece for each), a large
            # one the session's
            good = b"".join(c.to_bytes(4, "big") for c in crcs[:2])
            s.hold(2, 0, mapped[: 2 * piece], False, good, piece, fd, True)
            seen.clear()
            assert _read(f, 4096, 4096) == content[4096:8192]
            assert _read(f, piece, piece) == content[piece : 2 * piece]
            assert [(k, off) for k, _, off, _ in seen] == [(_fuse.READ, 4096)]

            # a held block is let go of with the file's pages (a new listing)
            s.hold(2, 0, mapped[: 2 * piece], False, None, 0, -1, True)
            s.invalidate_inode(2)
            seen.clear()
            assert _read(f, 0, piece) == content[:piece]
            assert [k for k, *_ in seen] == [_fuse.READ]
            # and a second unused, at the next `take` after it
            s.hold(2, 0, mapped[: 2 * piece], False, None, 0, -1, True)
            assert _read(f, 0, piece) == content[:piece]
            time.sleep(1.1)
            with contextlib.suppress(OSError):  # (answered ENOSYS: a request for a `take`)
                os.listdir(tmp_path / "mnt")
            seen.clear()
            assert _read(f, 0, piece) == content[:piece]
            assert [k for k, *_ in seen] == [_fuse.READ]
            # and the arguments are checked
            with pytest.raises(ValueError, match="bytes of CRCs"):
                s.hold(2, 0, mapped[: 2 * piece], False, bad[:4], piece, fd, True)
            with pytest.raises(ValueError, match="multiple of 4096"):
                s.hold(2, 0, mapped[: 2 * piece], False, bad, 1000, fd, True)
    finally:
        os.close(fd)


def test_blocks_planned_are_mapped_by_the_session_from_their_files_and_checked(
    tmp_path: Path,
) -> None:
    """`Session.plan`: the session maps a planned block from its worker's file itself when
    its first READ comes (the first path that is there), answers its READs without Python
    (no READ, no SEEN) and says which it mapped (`loaded`). Each answer is checked by the
    pieces it covers: a damaged one comes back as REREAD, and the plan is let go of. A
    block not planned, or whose file is not whole in the page cache, or whose pieces'
    CRCs do not make the block's, or of another length, comes to Python as a READ; so do
    all once the file is let go of (a new listing)."""
    from fluidfed import _fuse
    from fluidfed.data import blockfile

    bs, piece = 2**20, blockfile.CHECK_PIECE
    size = 5 * bs + 300 * 1024  # the last block short, of two pieces
    content = os.urandom(size)
    # (block 3: its pieces do not make it)
    paths = _block_files(tmp_path / "tier", content, bs, bad_crc=3)
    for p in paths:
        Path(p).read_bytes()  # (in the page cache)
    # block 4's file: one byte of its data changed after it was written
    with open(paths[4], "r+b") as damaged:
        damaged.seek(bs - 1)
        damaged.write(bytes([content[5 * bs - 1] ^ 1]))
    os.sync()
    f = tmp_path / "mnt" / "f"
    with _one_file(tmp_path / "mnt", content) as (s, seen):
        missing = str(tmp_path / "elsewhere" / "k2")
        s.plan(
            2,
            1,
            bs,
            size,
            piece,
            [[paths[1]], [missing, paths[2]], [paths[3]], [paths[4]], [paths[5]]],
        )
        seen.clear()
        step = 128 * 1024  # (a READ each)
        for at in range(0, size, step):
            assert _read(f, at, step) == content[at : at + step], at
        # blocks 1, 2 (its second path) and 5 mapped here, each READ of theirs answered
        # here; block 0 (not planned) and block 3 (its trailer does not add up) Python's;
        # block 4's last piece failed its check as it was sent (the READs before it were
        # answered here), and the file's plan was let go of with it: the rest came to Python
        mapped = s.loaded()
        assert mapped == [(2, 1), (2, 2), (2, 4)]
        asked = [(k, off // bs) for k, _, off, _ in seen]
        assert (
            asked
            == [(_fuse.READ, 0)] * 8
            + [(_fuse.READ, 3)] * 8
            + [
                (_fuse.REREAD, 4),
                (_fuse.READ, 4),
            ]
            + [(_fuse.READ, 5)] * 3
        )
        assert s.served() == (8 + 8 + 7, 23 * step)  # (the one sent again too)
        assert s.loaded() == []  # (since the last call)

        # planned again: a block held already is answered from that, not mapped again; a
        # block whose file left the page cache since (memory ran short) is read in by a
        # loading thread, its READ parked for it, not passed to Python
        s.hold(2, bs, memoryview(content)[bs : 2 * bs], False, None, 0, -1, True)
        s.plan(2, 1, bs, size, piece, [[paths[1]], [paths[2]], [], [], [paths[5]]])
        fd = os.open(paths[2], os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            assert not blockfile.in_page_cache(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        seen.clear()
        for at in (bs, 2 * bs, 5 * bs):
            assert _read(f, at, step) == content[at : at + step]
        assert s.loaded() == [(2, 2), (2, 5)]
        assert seen == []
        # a small READ (the block is checked whole for it) is Python's, and maps nothing; one
        # into the next block is answered from the two held, joined; a block let go of
        # (unused for a second) is mapped again from its file by its next READ, and not
        # told twice; a READ across two such blocks maps both
        seen.clear()
        assert _read(f, 5 * bs + 4096, 4096) == content[5 * bs + 4096 : 5 * bs + 8192]
        at = 2 * bs - step // 2
        assert _read(f, at, step) == content[at : at + step]
        assert [(k, off // bs) for k, _, off, _ in seen] == [(_fuse.READ, 5)]
        time.sleep(1.1)
        with contextlib.suppress(OSError):  # (answered ENOSYS: a request for a `take`)
            os.listdir(tmp_path / "mnt")
        seen.clear()
        assert _read(f, 5 * bs, step) == content[5 * bs : 5 * bs + step]
        assert _read(f, at, step) == content[at : at + step]
        assert seen == [] and s.loaded() == [(2, 1)]
        # a new listing lets the plan go: the same READs are Python's
        s.plan(2, 1, bs, size, piece, [[paths[1]], [paths[2]]])
        s.invalidate_inode(2)
        seen.clear()
        assert _read(f, bs, step) == content[bs : bs + step]
        assert [(k, off // bs) for k, _, off, _ in seen] == [(_fuse.READ, 1)]
        assert s.loaded() == []
        with pytest.raises(ValueError, match="multiple of 4096"):
            s.plan(2, 1, bs, size, 1000, [[paths[1]]])


def test_a_read_handed_back_to_the_session_is_answered_there_once_or_comes_back(
    tmp_path: Path,
) -> None:
    """`Reply.session`: a READ that came to Python just before its reader was handed over
    (here: a READ across blocks 0 and 1, the plan of block 1 on made as it came) is
    answered by the session from the block held and the block it maps (the planned block
    read once, by the session); one the session cannot answer either (its block neither
    held nor planned) comes back to Python as BACK. Each is counted once, a READ."""
    from fluidfed import _fuse
    from fluidfed.data import blockfile

    bs, piece, step = 2**20, blockfile.CHECK_PIECE, 128 * 1024
    size = 3 * bs
    content = os.urandom(size)
    paths = _block_files(tmp_path / "tier", content, bs)
    for p in paths:
        Path(p).read_bytes()  # (in the page cache)
    f = tmp_path / "mnt" / "f"
    block0 = memoryview(content)[:bs]

    def hand_over(s: Any, off: int, size: int) -> bool:
        # (Python answered from block 0 and hands its reader over, as this READ comes)
        s.hold(2, 0, block0, False, None, 0, -1, True)
        s.plan(2, 1, bs, len(content), piece, [[paths[1]]])
        return True

    with _one_file(tmp_path / "mnt", content, back=hand_over) as (s, seen):
        at = bs - step // 2
        assert _read(f, at, step) == content[at : at + step]
        assert seen == [(_fuse.READ, 2, at, step)]
        assert s.loaded() == [(2, 1)]  # (block 1 mapped by the session, told once)
        assert s.served() == (1, step)
        # block 2: neither held nor planned, so back to Python, which answers it
        seen.clear()
        at = 2 * bs + step
        assert _read(f, at, step) == content[at : at + step]
        assert seen == [(_fuse.READ, 2, at, step), (_fuse.BACK, 2, at, step)]
        assert s.served() == (0, 0) and s.loaded() == []
        assert dict(s.requests())["read"] == 2


def test_readers_of_one_file_at_different_places_each_keep_their_plan(tmp_path: Path) -> None:
    """Plans of one file stand side by side (readers of it at different places, each
    handing its own over): the READs of each one's blocks are answered by the session. A
    plan replaces those it plans a block of and the one it `replaces` (its reader's plan
    before), and past `PLANS_PER_FILE` the one made first goes: its blocks' READs are
    Python's again, as are those of a plan let go of (`unplan`: one, or all of the
    file's). (Each block read here once: one read before is held, answered from that
    whatever the plans.)"""
    from fluidfed import _fuse
    from fluidfed.data import blockfile

    bs, piece = 2**20, blockfile.CHECK_PIECE
    most = _fuse.PLANS_PER_FILE
    size = (4 * most + 4) * bs
    content = os.urandom(size)
    paths = _block_files(tmp_path / "tier", content, bs)
    for p in paths:
        Path(p).read_bytes()  # (in the page cache: warm plans)
    f = tmp_path / "mnt" / "f"
    step = 128 * 1024

    def plan(first: int, n: int, replaces: int | None = None) -> None:
        blocks = [[p] for p in paths[first : first + n]]
        s.plan(2, first, bs, size, piece, blocks, 0, replaces)

    def read(*blocks: int) -> list[int]:
        """Read a piece of each block: the blocks whose READs came to Python."""
        seen.clear()
        for i in blocks:
            assert _read(f, i * bs, step) == content[i * bs : i * bs + step], i
        return [off // bs for k, _, off, _ in seen if k == _fuse.READ]

    with _one_file(tmp_path / "mnt", content) as (s, seen):
        # one reader's plan from block 0, another's from block 6: both stand
        plan(0, 3)
        plan(6, 2)
        assert read(0, 6) == []
        assert sorted(s.loaded()) == [(2, 0), (2, 6)]
        # a plan from block 5 plans block 6: the plan from 6 goes (block 7 is Python's),
        # the one from 0 stands
        plan(5, 2)
        assert read(1, 5, 7) == [7]
        # up to PLANS_PER_FILE of them; past that, the one made first goes (block 2's)
        for first in range(9, 9 + 4 * (most - 1), 4):
            plan(first, 2)
        last = 9 + 4 * (most - 2)
        assert read(2, last) == [2]
        # one let go of (the one that plans block `last`): the others stand
        s.unplan(2, last)
        assert read(last + 1, 9) == [last + 1]
        # a reader's next plan replaces its plan before, wherever that lies
        plan(12, 1, replaces=9)
        assert read(10, 12) == [10]
        # no paths: all of the file's plans let go of; so does `unplan` without a block
        s.plan(2, 0, bs, size, piece, [])
        assert read(13) == [13]
        plan(14, 1)
        s.unplan(2)
        assert read(14) == [14]
        assert sorted(s.loaded()) == [(2, 1), (2, 5), (2, 9), (2, 12), (2, last)]


def test_a_cold_plan_has_the_session_read_its_blocks_in_ahead_of_their_reader(
    tmp_path: Path,
) -> None:
    """`Session.plan` with `ahead`: the session's loading threads read the planned block
    files in from the disk (none of them in the page cache), `ahead` blocks past the last
    one its reader reached (the first ones at once, none further until a READ reaches
    them), and hold them: their READs are answered there (no READ, no SEEN), each block
    told once as its reader reaches it (`loaded`). A block file whose pieces' CRCs do not
    make the block's is not held: its READs come to Python, and the blocks after it are
    still read in. A READ of a block not read in yet waits for a loading thread to read it,
    parked (not on the thread that took it from the kernel)."""
    from fluidfed import _fuse
    from fluidfed.data import blockfile

    bs, piece = 2**20, blockfile.CHECK_PIECE
    size = 7 * bs + 512 * 1024  # the last block short, of two pieces
    content = os.urandom(size)
    # (block 5: its pieces do not make it)
    paths = _block_files(tmp_path / "tier", content, bs, bad_crc=5)
    os.sync()

    def cached(i: int) -> bool:
        fd = os.open(paths[i], os.O_RDONLY)
        try:
            return blockfile.in_page_cache(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    def read_in(*want: int) -> None:
        deadline = time.monotonic() + 10
        while not all(cached(i) for i in want):
            assert time.monotonic() < deadline, [cached(i) for i in range(8)]
            time.sleep(0.01)

    def drop(*which: int) -> None:
        # (retried: a replying thread lets go of its share of a block's mapping just after
        # the kernel has its reply, and a page still mapped stays in the page cache)
        deadline = time.monotonic() + 10
        while True:
            for i in which:
                fd = os.open(paths[i], os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
            if not any(cached(i) for i in which):
                return
            assert time.monotonic() < deadline, [cached(i) for i in which]
            time.sleep(0.01)

    drop(*range(8))
    f = tmp_path / "mnt" / "f"
    with _one_file(tmp_path / "mnt", content) as (s, seen):
        s.plan(2, 1, bs, size, piece, [[p] for p in paths[1:]], 2)
        read_in(1, 2)  # (at once: the first two planned)
        time.sleep(0.2)
        assert not cached(3) and s.loaded() == []  # (nothing reached yet)
        seen.clear()
        step = 128 * 1024  # (a READ each)
        assert _read(f, bs, step) == content[bs : bs + step]
        assert seen == [] and s.loaded() == [(2, 1)]
        read_in(3)  # (two past the block reached)
        time.sleep(0.2)
        assert not cached(4)
        for at in range(bs, size, step):
            assert _read(f, at, step) == content[at : at + step], at
        # every READ answered there but block 5's (its trailer does not add up), and
        # blocks 6 and 7 read in all the same
        assert [(k, off // bs) for k, _, off, _ in seen] == [(_fuse.READ, 5)] * 8
        assert s.loaded() == [(2, 2), (2, 3), (2, 4), (2, 6), (2, 7)]
        assert all(cached(i) for i in (1, 2, 3, 4, 6, 7))

        # planned anew, the files off the page cache again: a READ of a block not read in
        # yet (a reader that jumped ahead) has it read in by a loading thread, and waits
        # for it there, parked (the thread that read it from the kernel goes on)
        s.unhold(2)
        drop(*range(8))
        s.plan(2, 1, bs, size, piece, [[p] for p in paths[1:]], 1)
        read_in(1)
        seen.clear()
        assert _read(f, 6 * bs, step) == content[6 * bs : 6 * bs + step]
        assert seen == [] and s.loaded() == [(2, 6)]
        read_in(7)  # (one past the block reached)
        assert not any(cached(i) for i in (2, 3, 4, 5))


def test_a_read_of_a_block_being_read_in_is_parked_not_waited_for_on_its_thread(
    tmp_path: Path,
) -> None:
    """A READ of a block a loading thread is reading in (a cold plan's) is parked with
    that load: the one thread that reads the kernel's requests goes on answering others
    meanwhile (a READ Python answers), and the parked READ is answered by the session once
    the block is in (its loading thread stalled here on a FIFO listed first among the
    block's paths, until a writer opens it)."""
    from fluidfed import _fuse
    from fluidfed.data import blockfile

    bs, piece = 2**20, blockfile.CHECK_PIECE
    size = 4 * bs
    content = os.urandom(size)
    paths = _block_files(tmp_path / "tier", content, bs)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    f = tmp_path / "mnt" / "f"
    step = 128 * 1024
    with _one_file(tmp_path / "mnt", content, threads=1) as (s, seen):
        # (nothing read in at once: block 1's load opens the FIFO first, and waits there)
        s.plan(2, 1, bs, size, piece, [[str(fifo), paths[1]], [paths[2]], [paths[3]]], 1)
        got: list[bytes] = []
        parked = threading.Thread(target=lambda: got.append(_read(f, bs, step)), daemon=True)
        parked.start()
        time.sleep(0.3)
        assert parked.is_alive() and not got  # (waiting for its block)
        # the one request thread is free: a READ of block 0 (not planned) is Python's
        other: list[bytes] = []
        t = threading.Thread(target=lambda: other.append(_read(f, 0, step)), daemon=True)
        t.start()
        t.join(10)
        assert other == [content[:step]]
        assert [(k, off) for k, _, off, _ in seen] == [(_fuse.READ, 0)]
        assert parked.is_alive()
        # the FIFO opened by a writer: the load goes on to the block's file, and the parked
        # READ is answered from it by the session
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        parked.join(10)
        assert got == [content[bs : bs + step]]
        assert [(k, off) for k, _, off, _ in seen] == [(_fuse.READ, 0)]
        assert s.loaded() == [(2, 1)]


def test_the_session_holds_a_few_blocks_of_the_sidecars_memory_only(tmp_path: Path) -> None:
    """Blocks in the sidecar's memory (not mapped from a file) are held up to 8 MiB in all,
    the least lately used let go of first (its READs come to Python again); a larger one
    is not held at all. Mapped ones do not count against it."""
    from fluidfed import _fuse

    mib = 2**20
    content = os.urandom(24 * mib)
    f = tmp_path / "mnt" / "f"
    with _one_file(tmp_path / "mnt", content) as (s, seen):
        view = memoryview(content)
        s.hold(2, 0, view[: 4 * mib], False, None, 0, -1, True, True)
        s.hold(2, 4 * mib, view[4 * mib : 8 * mib], False, None, 0, -1, True, True)
        assert _read(f, mib, 4096) == content[mib : mib + 4096]  # (the first used lately)
        s.hold(2, 8 * mib, view[8 * mib : 12 * mib], False, None, 0, -1, True, True)
        s.hold(2, 12 * mib, view[12 * mib : 24 * mib], False, None, 0, -1, True, False)
        s.hold(2, 0, view[: 9 * mib], False, None, 0, -1, True, True)  # (too large)
        seen.clear()
        for at in (0, 5 * mib, 9 * mib, 20 * mib):
            assert _read(f, at, 4096) == content[at : at + 4096]
        # the second block let go of for the third; the fourth, "mapped", counts not
        assert [(k, off) for k, _, off, _ in seen] == [(_fuse.READ, 5 * mib)]


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("FLUIDFED_FUSE", "libfuse2", "native, pyfuse3"),
        ("FLUIDFED_FUSE_OPENS", "x", "auto, kernel"),
    ],
)
def test_an_unknown_session_name_is_refused_before_mounting(
    tmp_path: Path, var: str, value: str, expected: str
) -> None:
    cfg = tmp_path / "sidecar.json"
    cfg.write_text('{"dataset": "d", "mounts": [{"uri": "file:///tmp"}]}')
    env = {**os.environ, var: value}
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "fluidfed.cli.main", "sidecar", "mount"),
            *("--config", str(cfg), "--mountpoint", str(tmp_path / "mnt")),
            *("--status-addr", "127.0.0.1:0"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert var in proc.stderr and expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not is_mounted(tmp_path / "mnt")


def test_a_sidecars_disk_tier_gives_back_what_another_tenant_took(
    tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edge sidecar whose disk tier (a 4 MiB filesystem of its own, 25% kept free)
    caches the files read through its mount, until another tenant of the disk takes it
    below the floor: within seconds it evicts its least recently used blocks until the
    floor holds again, its status says how many, and the files still read whole."""
    monkeypatch.setenv("FLUIDFED_FUSE", "native")
    src = tmp_path / "src"
    src.mkdir()
    files = {f"f{i}.bin": os.urandom(300_000) for i in range(6)}  # (1.7 MiB)
    for name, body in files.items():
        (src / name).write_bytes(body)
    tier = {"medium": "SSD", "quota": "1GiB", "path": str(small_disk), "min_free": 0.25}
    cfg: dict[str, object] = {"dataset": "d", "mounts": [{"uri": f"file://{src}"}], "cache": [tier]}
    sc = SidecarProcess(tmp_path / "sc", cfg, tmp_path / "mnt").start()
    try:
        for name, body in files.items():
            assert (sc.mountpoint / name).read_bytes() == body
        cache = eventually_blocking(
            lambda: (c := sc.status()["cache"])["blocks"] == len(files) and c,
            "every file's block on the sidecar's disk",
            timeout=20,
        )
        assert cache["shed"] == 0
        free, floor = testing.free_and_floor(small_disk, 0.25)
        (small_disk / "tenant").write_bytes(b"t" * (free - floor + 400_000))
        eventually_blocking(
            lambda: (
                testing.free_and_floor(small_disk, 0.25)[0]
                >= testing.free_and_floor(small_disk, 0.25)[1]
            ),
            "the floor free again",
            timeout=20,
        )
        cache = sc.status()["cache"]
        assert 0 < cache["shed"] < len(files) and cache["blocks"] == len(files) - cache["shed"]
        for name, body in files.items():
            assert (sc.mountpoint / name).read_bytes() == body
    finally:
        sc.close()
