"""`fluidfed local etcd up|down` as a user runs it: three healthy members on loopback,
a second `up` refused with what to do, and nothing left after `down`."""

import json
import urllib.request
from pathlib import Path

import pytest

from devkit.local.cluster import free_port
from devkit.local.processes import pid_alive
from devkit.testing import run_cli

pytestmark = pytest.mark.integration


def test_up_prints_the_store_url_and_down_leaves_nothing(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    flags = ["local", "--dir", str(tmp_path), "etcd"]
    up = run_cli(*flags, "up", "--ports", ",".join(map(str, ports)))
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == "etcd://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    state = json.loads((tmp_path / "etcd" / "members.json").read_text())
    pids = [m["pid"] for m in state["members"]]
    try:
        for p in ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{p}/health", timeout=5) as r:
                assert json.loads(r.read())["health"] == "true"
        again = run_cli(*flags, "up", "--ports", ",".join(map(str, ports)))
        assert again.returncode == 1 and "fluidfed local etcd down" in again.stderr
        bad = run_cli(*flags, "up", "--ports", "2379,x")
        assert bad.returncode == 1 and "--ports" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        down = run_cli(*flags, "down")
    assert down.returncode == 0, down.stderr
    assert "3 members" in down.stdout
    assert not [p for p in pids if pid_alive(p)]
    assert not (tmp_path / "etcd").exists()
