"""The suite's own filesystem for its files (`devkit.local.scratch`), for real: an ext4
image on a loop device (root: CI is)."""

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from devkit.local import scratch

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")


def test_the_suites_files_are_on_a_filesystem_of_their_own(tmp_path: Path) -> None:
    """This run's `tmp_path` (pytest's base directory, set by the conftest) is on an ext4
    of the suite's own, not the temp dir's disk, and that ext4 is nearly all free: a disk
    tier's floor sees the same there on every machine."""
    if os.environ.get("FLUIDFED_TEST_DISK") == "0":
        pytest.skip("FLUIDFED_TEST_DISK=0: the files are in the temp dir, as asked")
    assert os.stat(tmp_path).st_dev != os.stat(tempfile.gettempdir()).st_dev
    assert os.stat(tmp_path).st_dev != os.stat(os.environ.get("TMPDIR") or "/var/tmp").st_dev
    fs = os.statvfs(tmp_path)
    assert fs.f_bavail / fs.f_blocks > 0.5


def test_made_mounted_nearly_empty_then_released(tmp_path: Path) -> None:
    """`make` mounts an ext4 of the size asked, with its space taken at once and none
    kept back for root; `release` unmounts it and removes its image."""
    made = scratch.make(tmp_path / "parent", 64 * 2**20)
    try:
        assert os.path.ismount(made.mount)
        assert os.stat(made.root / scratch.IMAGE).st_blocks * 512 >= 64 * 2**20  # (not sparse)
        fs = os.statvfs(made.mount)
        assert 0.8 * 64 < fs.f_blocks * fs.f_frsize / 2**20 <= 64
        assert fs.f_bavail / fs.f_blocks > 0.96  # (none kept for root: ext4 keeps 5% else)
        (made.mount / "f").write_bytes(b"x" * 4096)
    finally:
        scratch.release(made.root)
    assert not made.root.exists()
    assert str(made.root) not in Path("/proc/self/mounts").read_text()


def test_what_a_killed_run_left_is_released_by_the_next(tmp_path: Path) -> None:
    """A run killed before it released its filesystem leaves it mounted with its pid: the
    next `make` in the same place releases it (its process gone), not a live run's."""
    parent = tmp_path / "parent"
    left = scratch.make(parent, 32 * 2**20)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (left.root / scratch.PID).write_text(str(gone.pid))  # (a run that ended)
    live = parent / "run-live"
    live.mkdir()
    (live / scratch.PID).write_text("1")  # (init: alive)
    scratch.release_stale(parent)
    try:
        assert not left.root.exists() and not os.path.ismount(left.mount)
        assert live.exists()
    finally:
        scratch.release(left.root)
