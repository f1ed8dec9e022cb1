import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.local import cluster
from devkit.testing import HubProcess

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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
