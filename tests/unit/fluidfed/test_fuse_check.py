"""The check a FUSE session's replying thread makes before it answers a READ from a block
file mapped without a whole check (`Reply.data_checked`), run on real files through the
same native code (`_fuse.pieces_hold`); and, in a process whose seccomp filter refuses
cachestat as a container's profile or a newer kernel may, its fallback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fluidfed import _fuse
from fluidfed.data import blockfile, blocks
from fluidfed.data.blockfile import block_file, map_block_file, write_block_file

PIECE = blockfile.CHECK_PIECE


def _mapped(tmp_path: Path, payload: bytes) -> tuple[memoryview, bytes, int]:
    """(the block, its pieces' CRCs, the file open) of a block file mapped lazily (the
    block's view holds the mapping)."""
    path = block_file(str(tmp_path), "a" * 32)
    write_block_file(path, payload, blocks.checksum(payload))
    data, _ = map_block_file(path, lazy=True)
    span = blockfile.unchecked_span(data)
    assert span is not None
    block, lo, pieces, fd = span
    assert lo == 0
    return block, pieces, fd


def test_the_pieces_an_answer_covers_are_checked_and_only_those(tmp_path: Path) -> None:
    payload = os.urandom(3 * PIECE + 5)
    block, pieces, fd = _mapped(tmp_path, payload)
    assert _fuse.pieces_hold(block, 0, len(block), pieces, PIECE, fd)
    assert _fuse.pieces_hold(block, len(block) - 1, 1, pieces, PIECE, fd)  # (the short one)
    writer = os.open(block_file(str(tmp_path), "a" * 32), os.O_WRONLY)
    try:  # damaged on the disk's side after it was mapped (the mapping shows it)
        os.pwrite(writer, bytes([payload[2 * PIECE + 9] ^ 1]), 2 * PIECE + 9)
    finally:
        os.close(writer)
    assert not _fuse.pieces_hold(block, 2 * PIECE + 100, 10, pieces, PIECE, fd)
    assert not _fuse.pieces_hold(block, PIECE, PIECE + 1, pieces, PIECE, fd)  # (reaches it)
    assert _fuse.pieces_hold(block, 0, 2 * PIECE, pieces, PIECE, fd)  # (the others hold)
    assert _fuse.pieces_hold(block, 3 * PIECE, 5, pieces, PIECE, fd)
    assert _fuse.cachestat_refused() is not _has_cachestat(tmp_path)


def test_bad_arguments_are_refused_before_any_check(tmp_path: Path) -> None:
    block, pieces, fd = _mapped(tmp_path, os.urandom(2 * PIECE))
    with pytest.raises(ValueError, match="bytes at"):
        _fuse.pieces_hold(block, PIECE, PIECE + 1, pieces, PIECE, fd)  # past its end
    with pytest.raises(ValueError, match="pieces of 1000 bytes: expected a multiple of 4096"):
        _fuse.pieces_hold(block, 0, 1, pieces, 1000, fd)  # (a piece starts on a page)
    with pytest.raises(ValueError, match="bytes of CRCs"):
        _fuse.pieces_hold(block, 0, 1, pieces[:4], PIECE, fd)


def _has_cachestat(tmp_path: Path) -> bool:
    """Whether this kernel answers cachestat here (Linux 6.5, no seccomp profile refusing
    it), asked of a file of `tmp_path`."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    fd = os.open(probe, os.O_RDONLY)
    try:
        return blockfile._cachestat_all(fd, 1) in (True, False)
    except OSError:
        return False
    finally:
        os.close(fd)


def _cold_file(tmp_path: Path, payload: bytes) -> int:
    """A file of `payload` whose pages are not in the page cache, open (skipped where the
    filesystem keeps them all the same: tmpfs)."""
    path = tmp_path / "cold"
    path.write_bytes(payload)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    if _has_cachestat(tmp_path) and blockfile._cachestat_all(fd, 1):
        os.close(fd)
        pytest.skip(f"{tmp_path}'s filesystem keeps a file's pages (tmpfs): none is cold")
    return fd


def test_pieces_the_page_cache_let_go_of_fail_the_check(tmp_path: Path) -> None:
    """Read through a mapping, a page not in the page cache would come from the disk in
    the replying thread, where a failed read is SIGBUS: such a piece fails the check (the
    READ is answered from elsewhere) until it is in the page cache again."""
    if not _has_cachestat(tmp_path):
        pytest.skip("cachestat refused here: the pieces are faulted in instead (next test)")
    payload = os.urandom(2 * PIECE)
    pieces = blockfile.piece_crcs(payload)
    fd = _cold_file(tmp_path, payload)
    try:
        assert not _fuse.pieces_hold(payload, 0, 10, pieces, PIECE, fd)
        os.pread(fd, PIECE, 0)  # the first piece read into the page cache
        os.posix_fadvise(fd, PIECE, 0, os.POSIX_FADV_DONTNEED)  # (not what read-ahead took)
        assert _fuse.pieces_hold(payload, 0, 10, pieces, PIECE, fd)
        assert not _fuse.pieces_hold(payload, PIECE, 10, pieces, PIECE, fd)
    finally:
        os.close(fd)


# A seccomp filter for this thread: cachestat (451 on x86_64) fails with `refusal`.
_REFUSING = """
import ctypes, errno, mmap, os, struct, sys
from fluidfed import _fuse
from fluidfed.data import blockfile

libc = ctypes.CDLL(None, use_errno=True)
code = [
    (0x20, 0, 0, 0),  # load the syscall's number
    (0x15, 0, 1, 451),  # cachestat?
    (0x06, 0, 0, 0x00050000 | errno.{refusal}),  # fail with the refusal
    (0x06, 0, 0, 0x7FFF0000),  # allow anything else
]
kept = []


def install(code):  # a seccomp filter (BPF instructions) on this thread; False: refused
    program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in code))
    prog = ctypes.create_string_buffer(
        struct.pack("HxxxxxxP", len(code), ctypes.addressof(program))
    )
    kept.append((program, prog))
    return libc.prctl(22, 2, prog, 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


if libc.prctl(38, 1, 0, 0, 0) != 0 or not install(code):  # (PR_SET_NO_NEW_PRIVS first)
    print("NOSECCOMP", ctypes.get_errno())
    sys.exit(0)

piece = blockfile.CHECK_PIECE
payload = os.urandom(2 * piece)
pieces = blockfile.piece_crcs(payload)
fd = os.open(sys.argv[1], os.O_RDONLY)
block = mmap.mmap(-1, len(payload))  # (page-aligned, as a mapped block file is)
block[:] = payload
held = _fuse.pieces_hold(block, 0, 10, pieces, piece, fd)  # asked, refused, faulted in
refused = _fuse.cachestat_refused()
# from now on cachestat kills the process: the check must not ask it again
assert install([(0x20, 0, 0, 0), (0x15, 0, 1, 451), (0x06, 0, 0, 0x80000000), code[-1]])
again = _fuse.pieces_hold(block, piece, 10, pieces, piece, fd)
block[piece + 3] ^= 1
damaged = _fuse.pieces_hold(block, piece, 10, pieces, piece, fd)
print(held, refused, again, damaged)
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the filter names x86_64's number")
@pytest.mark.parametrize("refusal", ["ENOSYS", "EPERM"])
def test_where_cachestat_is_refused_the_pieces_are_faulted_in_and_checked(
    tmp_path: Path, refusal: str
) -> None:
    """A seccomp profile (ENOSYS or EPERM) or Linux 6.14's rule for a file the caller may
    neither write nor own (EPERM) refuses cachestat: the refusal is remembered (not paid
    again per READ; `cachestat_refused`, in the sidecar's status), the pieces are faulted
    in instead and still checked. The file here is cold, which cachestat would have
    failed: the fallback alone makes these hold. Once refused, cachestat is made to kill
    the process: a check that asked it again would not come back."""
    fd = _cold_file(tmp_path, os.urandom(2 * PIECE))
    os.close(fd)
    script = textwrap.dedent(_REFUSING).replace("{refusal}", refusal)
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "cold")],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    if done.stdout.startswith("NOSECCOMP"):
        pytest.skip(f"seccomp filters are refused here ({done.stdout.strip()})")
    assert done.stdout.split() == ["True", "True", "True", "False"]
