"""`fluidfed demo`, the README's main command, end to end."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devkit.local import cluster

pytestmark = pytest.mark.integration


def demo(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLUIDFED_DEMO_DIR": str(tmp / "demo")}
    return subprocess.run(
        [sys.executable, "-m", "fluidfed.cli.main", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def processes_under(path: Path) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmd:
            found.append(f"{pid}: {cmd[:120]}")
    return found


def test_demo_quick_runs_end_to_end_and_leaves_nothing(tmp_path: Path) -> None:
    r = demo(tmp_path, "--quick")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "[1/6] Starting the hub and three local clusters" in out
    # the webhook step: the pod as stored carries the sidecar
    assert "init containers ['fluidfed-imagenet']" in out
    # the data path step: cold through S3, then warm from the workers, bytes checked
    lines = [line.strip() for line in out.splitlines()]
    cold = lines.index(next(x for x in lines if x.startswith("cold:")))
    warm = lines.index(next(x for x in lines if x.startswith("warm:")))
    assert "bytes match the source" in lines[cold] and "bytes match the source" in lines[warm]
    assert lines[cold + 1].startswith("blocks: 0 cached at the workers")
    assert lines[warm + 1].endswith(" 0 from S3")
    assert "warm over cold" in out
    assert "imagenet.serverless" in out and "imagenet.standard" in out
    summary = out[out.index("Summary") :]
    rows = {
        line.split()[0]: line.split()[1:4]
        for line in summary.splitlines()
        if line.split() and line.split()[0] in ("standard", "serverless", "edge")
    }
    assert rows == {
        "edge": ["sidecar", "2", "Bound"],
        "serverless": ["sidecar", "2", "Bound"],
        "standard": ["csi", "2", "Pending"],
    }
    step3 = out[out.index("[3/6]") : out.index("[4/6]")]
    std = step3[step3.index("standard:") : step3.index("serverless:")]  # may wrap
    assert "ml/imagenet" in std and "research/imagenet" in std, out
    assert "cleaned up" in out
    assert processes_under(tmp_path / "demo") == []
    assert not (tmp_path / "demo").exists()
    assert str(tmp_path / "demo") not in Path("/proc/self/mounts").read_text()


def test_demo_keep_then_down(tmp_path: Path) -> None:
    r = demo(tmp_path, "--quick", "--keep")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fluidfed demo down" in r.stdout
    states = cluster.list_clusters(tmp_path / "demo" / "clusters")
    assert len(states) == 3 and all(cluster.running(s) for s in states)
    assert processes_under(tmp_path / "demo")
    r = demo(tmp_path, "down")
    assert r.returncode == 0, r.stderr
    assert processes_under(tmp_path / "demo") == []
    assert not (tmp_path / "demo").exists()
    assert str(tmp_path / "demo") not in Path("/proc/self/mounts").read_text()
