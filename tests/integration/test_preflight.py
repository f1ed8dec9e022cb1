"""The preflight on this machine, seen by a newcomer who has neither Go nor the built
binaries (a home of their own, Go off the PATH): scripts/setup's first step, run by a
python3 with nothing installed, and `fluidfed demo`, both stop at once with what is
missing and what to run, and start nothing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devkit.testing import run_cli

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def newcomer_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLUIDFED_", "XDG_"))}
    # no Go: only the system's directories on the PATH (Go lives in /usr/local/go/bin)
    return {**env, "HOME": str(home), "PATH": "/usr/bin:/bin"}


def test_setup_and_the_demo_say_that_go_is_needed_while_nothing_is_built(tmp_path: Path) -> None:
    env = newcomer_env(tmp_path / "home")
    # python3 -m devkit.preflight uses the standard library only: it runs without site-packages
    bare = subprocess.run(
        [sys.executable, "-S", "-m", "devkit.preflight", "setup"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bare.returncode == 2, bare.stdout + bare.stderr
    lines = bare.stdout.splitlines()
    go = next(i for i, line in enumerate(lines) if "Go >= 1.24 builds the local-cluster" in line)
    assert lines[go].startswith("  MISSING") and "no `go` on PATH" in lines[go]
    assert str(tmp_path / "home" / ".cache" / "fluidfed" / "testbin") in lines[go]
    assert "https://go.dev/dl/" in lines[go + 1] and "FLUIDFED_TESTBIN" in lines[go + 1]
    assert "nothing changed" in bare.stderr

    demo = run_cli("demo", "--quick", "--dir", str(tmp_path / "demo"), env=env)
    assert demo.returncode == 2, demo.stdout + demo.stderr
    assert "fluidfed demo cannot run on this machine yet" in demo.stderr
    assert "no `go` on PATH" in demo.stderr
    assert not (tmp_path / "demo").exists()  # nothing started
