"""The README's quick start, pasted as a user pastes it: the first block runs as written
(hub in the background, its token awaited, clusters registered, one dataset applied) in a
fresh directory with the shipped configs."""

import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def quick_start_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start by hand") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    # the install line is what CI has done already
    return "\n".join(
        line for line in block.group(1).splitlines() if not line.startswith("pip install")
    )


def test_the_quick_start_block_runs_as_written(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    script = (
        textwrap.dedent(
            """\
        set -euo pipefail
        trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT
        """
        )
        + quick_start_block()
    )
    r = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # get bindings: one binding per selected cluster, with the mount mode it supports
    for binding, mode in (("imagenet.edge", "sidecar"), ("imagenet.standard", "csi")):
        assert re.search(rf"{binding}\s+imagenet\s+\S+\s+{mode}", r.stdout), r.stdout
    assert "Name:        imagenet" in r.stdout  # describe dataset
    assert (tmp_path / "edge.token").stat().st_mode & 0o777 == 0o600
