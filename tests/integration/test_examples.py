"""The examples in examples/ run as a user runs them, against a real hub."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fluidfed
from devkit.testing import HubProcess

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_sdk_example_declares_and_sees_its_binding(hub: HubProcess) -> None:
    env = {**os.environ, "FLUIDFED_HUB": hub.url, "FLUIDFED_TOKEN": hub.admin_token}
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "declare_and_watch.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "declared example-imagenet (generation 1)" in r.stdout
    assert "binding example-imagenet.example-edge: sidecar, 1 replicas" in r.stdout


def test_the_public_surface_holds_what_a_script_needs() -> None:
    for name in (
        "Client",
        "Dataset",
        "Mount",
        "Cluster",
        "Capabilities",
        "Placement",
        "FluidfedError",
    ):
        assert name in fluidfed.__all__ and hasattr(fluidfed, name)
    assert fluidfed.Client.__doc__ and "ca_file" in fluidfed.Client.__doc__
