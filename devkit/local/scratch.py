"""A filesystem of the test suite's own for its files (pytest's base directory): an ext4
image on a loop device, its space taken from the machine's disk at once.

The cache's disk tiers keep a share of their filesystem free (`CacheTier.min_free`), so
what a test sees of them would otherwise depend on how full the machine's disk is: a CI
machine whose disk is 87% used keeps no block anywhere. On a filesystem of its own the
suite sees the same free share on every machine, or says at once that it cannot have it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

IMAGE = "disk.img"
MOUNT = "mnt"
PID = "pid"  # the run's process: "<pid> <its start time> <boot id>"
RUN = re.compile(r"^run-\d+$")  # (what `release_stale` may remove: nothing else there)
YOUNG = 60.0  # seconds a run's directory may be without its pid file (being made)
GIB = 16  # the suite's (FLUIDFED_TEST_DISK_GIB): a whole run took 6.2 GiB at its peak


def parent_dir() -> Path:
    """Where the suite's filesystems are made: $TMPDIR, else /var/tmp (a disk, where /tmp
    may be a tmpfs, whose space is memory)."""
    return Path(os.environ.get("TMPDIR") or "/var/tmp") / "fluidfed-tests"


@dataclass(frozen=True)
class Scratch:
    root: Path  # the image, its mount point and the pid of the run that holds it
    size: int

    @property
    def mount(self) -> Path:
        return self.root / MOUNT


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _started(pid: int) -> str:
    """When process `pid` started (clock ticks since boot), "" if there is none: with the
    boot id, what tells a run's process from another that took its pid since."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat_line.rpartition(")")[2].split()[19]  # (field 22; the name may hold spaces)


def holder() -> str:
    """This process, as a run's pid file names it."""
    pid = os.getpid()
    return f"{pid} {_started(pid)} {_boot_id()}"


def _held(line: str) -> bool:
    """Whether the process a pid file names is still the one that wrote it."""
    pid, started, boot = [*line.split(), "", "", ""][:3]
    return pid.isdigit() and boot == _boot_id() and started == _started(int(pid)) != ""


def release(root: Path) -> None:
    """Unmount `root`'s filesystem, lazily (a process left behind keeps it until it goes;
    the loop device is detached then, and the image's space given back), and remove the
    directory. Where it stays mounted, only the image's name goes: nothing is removed
    through a mount."""
    mnt = root / MOUNT
    if os.path.ismount(mnt):
        _run("umount", "-l", str(mnt))
    if os.path.ismount(mnt):
        with_image = root / IMAGE
        with_image.unlink(missing_ok=True)
        return
    shutil.rmtree(root, ignore_errors=True)


def release_stale(parent: Path, now: float | None = None) -> None:
    """Release what runs that ended without releasing theirs (killed, or a reboot since)
    left in `parent`: their process gone, or another's now (a pid file's process start
    time and boot id). One parent per machine and pid namespace."""
    now = time.time() if now is None else now
    for root in parent.iterdir():
        try:
            if not RUN.match(root.name) or root.is_symlink() or not root.is_dir():
                continue
            try:
                line = (root / PID).read_text()
            except FileNotFoundError:
                if now - root.stat().st_mtime < YOUNG:  # (a run making it now)
                    continue
                line = ""
            if not _held(line):
                release(root)
        except FileNotFoundError:  # (released meanwhile: by its run, or another's look)
            continue


def _own_dir(parent: Path) -> None:
    """`parent` made if need be, root's own and no one else's (it is in a directory all
    may write to, and root removes what is in it)."""
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(parent)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(f"{parent} is not a directory of this user's alone: remove it")


def _fallocate(image: Path, size: int, wait: float = 10.0) -> None:
    """The image's space taken now (not sparse): a disk too full for the suite says so
    here, not as I/O errors in the middle of a test. A run released just before gives its
    image's space back once its loop device is detached, a moment later: waited for."""
    deadline = time.monotonic() + wait
    with open(image, "wb") as f:
        while True:
            try:
                os.posix_fallocate(f.fileno(), 0, size)
                return
            except OSError as err:
                if err.errno != errno.ENOSPC or time.monotonic() > deadline:
                    held = _deleted_images()
                    raise OSError(
                        err.errno,
                        f"{size >> 30} GiB for {image}: {err.strerror}"
                        + (f"; loop devices still hold deleted images: {held}" if held else ""),
                    ) from err
                time.sleep(0.5)


def _deleted_images() -> str:
    done = _run("losetup", "-l", "-n", "-O", "NAME,BACK-FILE")
    return ", ".join(line.strip() for line in done.stdout.splitlines() if "(deleted)" in line)


def make(parent: Path, size: int, *, wait: float = 10.0) -> Scratch:
    """An ext4 of `size` bytes of its own, mounted in a new directory of `parent` and held
    by this process; OSError saying why where it cannot be had (not root, no loop device,
    a disk without `size` free, `wait` seconds after a run just released gave its back)."""
    _own_dir(parent)  # (first: nothing is removed from a directory not root's alone)
    release_stale(parent)
    root = parent / f"run-{os.getpid()}"
    release(root)
    root.mkdir(mode=0o700)
    (root / PID).write_text(holder())  # (first: no other run takes it for stale)
    image = root / IMAGE
    try:
        (root / MOUNT).mkdir()
        _fallocate(image, size, wait)
        steps = [
            # (-m 0: none kept for root, the suite runs as root; nodiscard: mkfs would give
            # the space taken back to the disk, punching it out of the image)
            ("mkfs.ext4", "-q", "-F", "-m", "0", "-i", "65536", "-E", "nodiscard", str(image)),
            ("mount", "-o", "loop", str(image), str(root / MOUNT)),
        ]
        for argv in steps:
            done = _run(*argv)
            if done.returncode != 0:
                raise OSError(f"{argv[0]}: {done.stderr.strip() or done.returncode}")
        # direct I/O on the image where the kernel allows it: its pages cached once, by
        # the filesystem on it, not again by the disk's (`direct_io` says)
        loop = loop_of(image)
        if loop:
            _run("losetup", "--direct-io=on", loop)
    except BaseException:
        release(root)
        raise
    return Scratch(root=root, size=size)


def loop_of(image: Path) -> str:
    """The loop device `image` is attached to ("" if none)."""
    done = _run("losetup", "-j", str(image), "-O", "NAME", "-n")
    lines = done.stdout.split()
    return lines[0] if lines else ""


def direct_io(loop: str) -> bool:
    """Whether loop device `loop` (/dev/loopN) reads and writes its image past the page
    cache."""
    try:
        return Path(f"/sys/block/{Path(loop).name}/loop/dio").read_text().strip() == "1"
    except OSError:
        return False
