import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.local import cluster, scratch
from devkit.testing import HubProcess

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# the suite's files (pytest's base directory) on an ext4 of their own, so that what a test
# sees of a disk tier's floor (`min_free`) does not depend on how full the machine's disk
# is (`devkit.local.scratch`); FLUIDFED_TEST_DISK=0 leaves them in the system's temp dir,
# FLUIDFED_TEST_DISK_GIB sets its size
SCRATCH_GIB = scratch.GIB


class _Scratch:
    made: scratch.Scratch | None = None
    not_made = ""  # why not
    keep = False  # the session failed: kept for a look, until the next run


def scratch_in_use() -> tuple[scratch.Scratch | None, str]:
    """The suite's own filesystem, or None and why not."""
    return _Scratch.made, _Scratch.not_made


def pytest_configure(config: pytest.Config) -> None:
    opt = config.option
    if opt.basetemp is not None or os.environ.get("FLUIDFED_TEST_DISK") == "0":
        _Scratch.not_made = "--basetemp or FLUIDFED_TEST_DISK=0"
        return
    shows = (opt.help, opt.version, opt.collectonly, opt.showfixtures, opt.markers)
    if any(shows) or opt.show_fixtures_per_test:
        _Scratch.not_made = "no tests run"
        return
    if os.geteuid() != 0:
        _Scratch.not_made = "not root: no loop device to mount"
        return
    parent = scratch.parent_dir()
    gib = os.environ.get("FLUIDFED_TEST_DISK_GIB") or str(SCRATCH_GIB)
    if not gib.isdigit() or int(gib) < 1:
        raise pytest.UsageError(
            f"FLUIDFED_TEST_DISK_GIB={gib!r}: the size of the suite's own filesystem, in whole "
            f"GiB, 1 or more ({SCRATCH_GIB} if unset; a whole run takes about 6)"
        )
    size = int(gib) * 2**30
    try:
        _Scratch.made = scratch.make(parent, size)
    except OSError as err:
        raise pytest.UsageError(
            f"the suite's own filesystem ({size >> 30} GiB in {parent}) could not be made: "
            f"{err}. Free that much space, or set FLUIDFED_TEST_DISK_GIB lower, or run with "
            "FLUIDFED_TEST_DISK=0 (then disk tiers' floors depend on how full this "
            "machine's disk is)"
        ) from err
    opt.basetemp = str(_Scratch.made.mount / "pytest")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    ok = exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    _Scratch.keep = _Scratch.made is not None and not ok


def pytest_unconfigure(config: pytest.Config) -> None:
    """Released once everything is torn down (the session's clusters too), unless the
    session failed."""
    made, _Scratch.made = _Scratch.made, None
    if made is None:
        return
    if _Scratch.keep:
        print(f"\ntest files kept on {made.mount} until the next run")
    else:
        scratch.release(made.root)


def pytest_report_header(config: pytest.Config) -> str:
    made = _Scratch.made
    if made is None:
        return f"test files: in the system's temp dir ({_Scratch.not_made})"
    return f"test files: on an ext4 of their own, {made.size >> 30} GiB at {made.mount}"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    """A real hub daemon on a loopback port with its own catalog file."""
    proc = HubProcess(tmp_path / "hub").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def local_clusters(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, cluster.LocalCluster]]:
    """One real cluster per flavour (standard, serverless, edge), started in parallel once
    per session and shared by every integration test."""
    base = tmp_path_factory.mktemp("clusters")
    specs: list[tuple[str, cluster.Kind]] = [(k, k) for k in cluster.KINDS]
    clusters = asyncio.run(cluster.up_many(specs, base_dir=base, progress=print))
    try:
        yield {c.kind: c for c in clusters}
    finally:
        states = [c.state for c in clusters if c.state]
        asyncio.run(_down(clusters))
        leftover = [f"{b}:{p}" for s in states for b, p in s.pids.items() if cluster._alive(p, b)]
        assert not leftover, f"processes left behind: {leftover}"


async def _down(clusters: list[cluster.LocalCluster]) -> None:
    await asyncio.gather(*(c.down() for c in clusters))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A filesystem of 4 MiB of its own (tmpfs), for disk tiers whose quota is larger than
    their disk: as full as it gets, for real."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:  # (not root)
        pytest.skip(f"no tmpfs of its own could be mounted here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
