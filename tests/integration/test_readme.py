"""The README's quick start, pasted as a user pastes it, line by line into a shell (bash
reading its standard input), in a fresh directory with the shipped configs: the first block
(hub in the background, its token awaited, clusters registered, one dataset applied), then
the second (S3 server, a local cluster and its agent, a worker and the FUSE sidecar as
processes, a warm-up) in the same shell, as the README says."""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from devkit.local import binaries, processes
from devkit.testing import run_cli

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

# what the quick start's files and commands listen on, as written
PORTS = {8470: "the hub", 8471: "the agent's API", 7070: "the worker", 9000: "the S3 server"}


def quick_start_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start by hand") : readme.index("\n## Files")]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "the quick start has two bash blocks"
    # the install line is what CI has done already
    return [
        "\n".join(line for line in b.splitlines() if not line.startswith("pip install"))
        for b in blocks
    ]


class Shell:
    """bash reading the pasted lines from its standard input, in its own process group so
    that whatever it left running is stopped with it, even after a timeout."""

    PREFIX = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n"

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env

    def paste(self, lines: str, timeout: float) -> subprocess.CompletedProcess[str]:
        proc = subprocess.Popen(
            ["bash", "-s"],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(self.PREFIX + lines + "\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
            err += f"\n[test] the pasted lines did not finish within {timeout:.0f}s"
        finally:
            # the EXIT trap stopped the background jobs; whatever outlived it goes now
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def fresh(tmp_path: Path) -> tuple[Path, Shell]:
    """A fresh directory with the repository's configs and a home of its own (the local
    clusters and S3 server live under ~/.cache), reusing the built binaries."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    env["FLUIDFED_TESTBIN"] = str(binaries.cache_dir().parent)
    for var in ("XDG_CACHE_HOME", "FLUIDFED_TOKEN", "FLUIDFED_HUB", "FLUIDFED_CLUSTERS_DIR"):
        env.pop(var, None)
    return tmp_path, Shell(tmp_path, env)


def ports_taken() -> list[str]:
    taken = []
    for port, what in PORTS.items():
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                taken.append(f"{port} ({what})")
    return taken


def test_the_first_quick_start_block_runs_as_written(fresh: tuple[Path, Shell]) -> None:
    where, shell = fresh
    assert not ports_taken(), f"the quick start's ports are in use: {ports_taken()}"
    r = shell.paste(quick_start_blocks()[0], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    # get bindings: one binding per selected cluster, with the mount mode it supports
    for binding, mode in (("imagenet.edge", "sidecar"), ("imagenet.standard", "csi")):
        assert re.search(rf"{binding}\s+imagenet\s+\S+\s+{mode}", r.stdout), r.stdout
    assert "Name:        imagenet" in r.stdout  # describe dataset
    assert (where / "edge.token").stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
def test_the_second_quick_start_block_runs_as_written(fresh: tuple[Path, Shell]) -> None:
    where, shell = fresh
    assert not ports_taken(), f"the quick start's ports are in use: {ports_taken()}"
    first, second = quick_start_blocks()
    try:
        r = shell.paste(first + "\n" + second, timeout=300)
    finally:
        mnt = where / "mnt" / "imagenet"
        left_mounted = processes.is_mounted(mnt)
        processes.force_unmount(mnt)
        # the README's last words: the cluster and the S3 server down
        env = shell.env
        down = [
            run_cli("local", "down", "serverless", env=env),
            run_cli("local", "s3", "down", env=env),
        ]
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-6000:]
    assert not left_mounted, "the sidecar did not unmount on SIGTERM"
    assert all(d.returncode == 0 for d in down), [d.stderr for d in down]
    # ls of the mount: the dataset's two folders
    assert re.search(r"^train\nval$", r.stdout, re.M), r.stdout
    # the warm-up went through the worker run by hand, registered with the agent
    assert re.search(r"serverless: Done, 100\.0% cached \((\d+)/\1 blocks", r.stdout), r.stdout
    assert re.search(r"serverless: Done, whole dataset, 100\.0% cached", r.stdout), r.stdout
    keys = where / "configs" / "worker-credentials.json"
    assert keys.stat().st_mode & 0o777 == 0o600
    # the worker's disk tier is beside its file, as the file says
    assert (where / "configs" / ".fluidfed" / "worker-cache").is_dir()
