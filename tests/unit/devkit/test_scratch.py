"""The suite's own filesystem for its files (`devkit.local.scratch`), for real: an ext4
image on a loop device (root: CI is)."""

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from devkit.local import scratch
from tests.conftest import scratch_in_use

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")


def _mounts() -> str:
    return Path("/proc/self/mounts").read_text()


def test_the_suites_files_are_on_a_filesystem_of_their_own(tmp_path: Path) -> None:
    """This run's `tmp_path` (pytest's base directory, set by the conftest) is on an ext4
    of the suite's own, not the temp dir's disk, and that ext4 is nearly all free: a disk
    tier's floor sees the same there on every machine."""
    made, why_not = scratch_in_use()
    if made is None:
        # (no reason: this is another copy of the conftest than the one pytest runs)
        assert why_not, "the conftest made no filesystem of its own and says no reason"
        pytest.skip(f"this run's files are in the temp dir: {why_not}")
    assert tmp_path.is_relative_to(made.mount) and os.path.ismount(made.mount)
    assert os.stat(tmp_path).st_dev != os.stat(tempfile.gettempdir()).st_dev
    fs = os.statvfs(tmp_path)
    assert fs.f_bavail / fs.f_blocks > 0.5


def test_made_mounted_nearly_empty_then_released(tmp_path: Path) -> None:
    """`make` mounts an ext4 of the size asked, with its space taken at once, none kept
    back for root, and its image read and written past the page cache; `release`
    unmounts it and removes its image."""
    made = scratch.make(tmp_path / "parent", 64 * 2**20)
    try:
        assert os.path.ismount(made.mount)
        assert os.stat(made.root / scratch.IMAGE).st_blocks * 512 >= 64 * 2**20  # (not sparse)
        fs = os.statvfs(made.mount)
        assert 0.8 * 64 < fs.f_blocks * fs.f_frsize / 2**20 <= 64
        assert fs.f_bavail / fs.f_blocks > 0.96  # (none kept for root: ext4 keeps 5% else)
        assert scratch.direct_io(scratch.loop_of(made.root / scratch.IMAGE))
        assert oct(os.stat(made.root.parent).st_mode & 0o777) == oct(0o700)
        (made.mount / "f").write_bytes(b"x" * 4096)
    finally:
        scratch.release(made.root)
    assert not made.root.exists()
    assert str(made.root) not in _mounts()


def test_what_a_killed_run_left_is_released_by_the_next(tmp_path: Path) -> None:
    """A run killed before it released its filesystem leaves it mounted with its pid file:
    the next run releases it (its process gone), and one whose pid is another process's
    now (another start time) or from before a reboot (another boot id); not a live run's,
    nor one being made (no pid file yet), nor anything not a run's."""
    parent = tmp_path / "parent"
    left = scratch.make(parent, 32 * 2**20)
    pid, started, boot = scratch.holder().split()
    gone = subprocess.Popen(["true"])
    gone.wait()
    (left.root / scratch.PID).write_text(f"{gone.pid} {started} {boot}")  # (a run that ended)
    names = ("run-1", "run-2", "run-3", "run-4", "keep")
    reused, rebooted, live, making, other = (parent / n for n in names)
    for d in (reused, rebooted, live, making, other):
        (d / scratch.MOUNT).mkdir(parents=True)
    (reused / scratch.PID).write_text(f"1 {int(started) + 1} {boot}")  # (init's pid now)
    (rebooted / scratch.PID).write_text(f"{pid} {started} another-boot")
    (live / scratch.PID).write_text(scratch.holder())
    scratch.release_stale(parent)
    try:
        assert not left.root.exists() and str(left.root) not in _mounts()
        assert not reused.exists() and not rebooted.exists()
        assert live.exists() and making.exists() and other.exists()
        scratch.release_stale(parent, now=time.time() + 2 * scratch.YOUNG)
        assert not making.exists() and live.exists() and other.exists()
    finally:
        scratch.release(left.root)


def test_a_filesystem_that_stays_mounted_is_not_removed_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the unmount does not take (here: `umount` made to fail), `release` removes
    the image's name only, never what is in the mount."""
    made = scratch.make(tmp_path / "parent", 32 * 2**20)
    (made.mount / "kept").write_bytes(b"k")
    real = scratch._run

    def no_umount(*argv: str) -> subprocess.CompletedProcess[str]:
        return real("false") if argv[0] == "umount" else real(*argv)

    monkeypatch.setattr(scratch, "_run", no_umount)
    scratch.release(made.root)
    assert (made.mount / "kept").read_bytes() == b"k"
    assert not (made.root / scratch.IMAGE).exists()
    monkeypatch.undo()
    scratch.release(made.root)
    assert not made.root.exists()


def test_a_disk_without_the_room_asked_is_said_at_once(tmp_path: Path) -> None:
    """More than the disk has: `make` fails saying how much and where, and leaves nothing
    behind."""
    small = scratch.make(tmp_path / "parent", 32 * 2**20)
    try:
        parent = small.mount / "parent"
        with pytest.raises(OSError, match=r"1 GiB for .*disk.img: No space left on device"):
            scratch.make(parent, 2**30, wait=0)
        assert not list(parent.iterdir())
    finally:
        scratch.release(small.root)
