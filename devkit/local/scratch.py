"""A filesystem of the test suite's own for its files (pytest's base directory): an ext4
image on a loop device, its space taken from the machine's disk at once.

The cache's disk tiers keep a share of their filesystem free (`CacheTier.min_free`), so
what a test sees of them would otherwise depend on how full the machine's disk is: a CI
machine whose disk is 87% used keeps no block anywhere. On a filesystem of its own the
suite sees the same free share on every machine, or says at once that it cannot have it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

IMAGE = "disk.img"
MOUNT = "mnt"
PID = "pid"


@dataclass(frozen=True)
class Scratch:
    root: Path  # the image, its mount point and the pid of the run that holds it
    size: int

    @property
    def mount(self) -> Path:
        return self.root / MOUNT


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release(root: Path) -> None:
    """Unmount `root`'s filesystem (lazily: a process left behind keeps it until it goes,
    the loop device detached then) and remove its image."""
    mnt = root / MOUNT
    if os.path.ismount(mnt):
        _run("umount", "-l", str(mnt))
    shutil.rmtree(root, ignore_errors=True)


def release_stale(parent: Path) -> None:
    """Release what runs that ended without releasing theirs (killed) left in `parent`."""
    if not parent.is_dir():
        return
    for root in parent.iterdir():
        try:
            pid = int((root / PID).read_text())
        except (OSError, ValueError):
            pid = 0
        if not pid or not _alive(pid):
            release(root)


def make(parent: Path, size: int) -> Scratch:
    """An ext4 of `size` bytes of its own, mounted in a new directory of `parent` and held
    by this process; OSError saying why where it cannot be had (not root, no loop device,
    a disk without `size` free)."""
    release_stale(parent)
    parent.mkdir(parents=True, exist_ok=True)
    root = parent / f"run-{os.getpid()}"
    release(root)
    (root / MOUNT).mkdir(parents=True)
    (root / PID).write_text(str(os.getpid()))
    image = root / IMAGE
    try:
        with open(image, "wb") as f:
            # its space taken now (not sparse): a disk too full for the suite says so here,
            # not as I/O errors in the middle of a test
            os.posix_fallocate(f.fileno(), 0, size)
        steps = [
            # (-m 0: none kept for root, the suite runs as root; nodiscard: mkfs would give
            # the space taken back to the disk, punching it out of the image)
            ("mkfs.ext4", "-q", "-F", "-m", "0", "-i", "65536", "-E", "nodiscard", str(image)),
            # (direct I/O on the image: its pages cached once, by the filesystem on it)
            ("mount", "-o", "loop", str(image), str(root / MOUNT)),
        ]
        for argv in steps:
            done = _run(*argv)
            if done.returncode != 0:
                raise OSError(f"{' '.join(argv[:1])}: {done.stderr.strip() or done.returncode}")
        loop = _loop_of(image)
        if loop:
            _run("losetup", "--direct-io=on", loop)
    except BaseException:
        release(root)
        raise
    return Scratch(root=root, size=size)


def _loop_of(image: Path) -> str:
    done = _run("losetup", "-j", str(image), "-O", "NAME", "-n")
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
