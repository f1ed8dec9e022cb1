"""`fluidfed demo`, the README's main command, end to end."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devkit.local import cluster, netns

# a whole demo per test: minutes on a loaded 2-core machine (the subprocess has 600 s)
pytestmark = [pytest.mark.integration, pytest.mark.timeout(660)]


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


def node_network_left(demo_dir: Path) -> list[str]:
    """The serverless cluster's real-node network namespace and veth, where still there."""
    name, host_if, _ = netns.names_for(demo_dir / "clusters" / "serverless")
    return [
        str(p) for p in (Path("/run/netns", name), Path("/sys/class/net", host_if)) if p.exists()
    ]


def _summary_rows(out: str) -> dict[str, list[str]]:
    summary = out[out.index("Summary") :]
    return {
        line.split()[0]: line.split()[1:4]
        for line in summary.splitlines()
        if line.split() and line.split()[0] in ("standard", "serverless", "edge")
    }


def test_demo_quick_runs_the_serverless_pods_for_real_and_leaves_nothing(tmp_path: Path) -> None:
    """On this machine (root, the real node's binaries, mmdebstrap and umoci) the demo's
    serverless cluster has a real node: the app pod really runs, reads through its injected
    sidecar and cache workers in pods, and reports what it read from inside the pod."""
    r = demo(tmp_path, "--quick")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "[1/6] Starting the hub and three local clusters" in out
    fell_back = [line for line in out.splitlines() if "no real node" in line]
    assert fell_back == [] and "serverless: a real node on" in out, out
    # the webhook step: the pod as stored carries the sidecar
    assert "init containers ['fluidfed-imagenet']" in out
    flat = " ".join(out.split())  # rich wraps long lines at 120 columns
    # measured inside the pods on the real node, every byte checked there against the source
    assert re.search(r"cold: pod ml/train on real-node read 18 files, .* at \d+ MiB/s; "
                     r"bytes match the source warm: ", flat), out  # fmt: skip
    assert re.search(r"warm: pod ml/train-again on real-node read 18 files, .* at \d+ MiB/s; "
                     r"bytes match the source warm over cold", flat), out  # fmt: skip
    assert "measured inside the pod" in flat
    assert _summary_rows(out) == {
        "edge": ["sidecar", "2", "Bound"],
        "serverless": ["sidecar", "2", "Bound"],
        "standard": ["csi", "2", "Pending"],
    }
    assert "cleaned up" in out
    assert processes_under(tmp_path / "demo") == []
    assert not (tmp_path / "demo").exists()
    assert str(tmp_path / "demo") not in Path("/proc/self/mounts").read_text()
    assert node_network_left(tmp_path / "demo") == []


def test_demo_without_a_real_node_runs_processes_says_so_and_keep_then_down(
    tmp_path: Path,
) -> None:
    """Where no real node runs (here: asked so), the demo says why in one line and runs the
    sidecar and the workers as processes: cold through S3, then warm from the workers."""
    r = demo(tmp_path, "--quick", "--keep", "--no-real-node")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "no real node: not asked for (--no-real-node); the sidecar and workers run as " in (
        " ".join(out.split())
    )
    lines = [line.strip() for line in out.splitlines()]
    cold = lines.index(next(x for x in lines if x.startswith("cold:")))
    warm = lines.index(next(x for x in lines if x.startswith("warm:")))
    assert "bytes match the source" in lines[cold] and "bytes match the source" in lines[warm]
    assert lines[cold + 1].startswith("blocks: 0 cached at the workers")
    assert lines[warm + 1].endswith(" 0 from S3")
    assert "warm over cold" in out
    assert "imagenet.serverless" in out and "imagenet.standard" in out
    step3 = out[out.index("[3/6]") : out.index("[4/6]")]
    std = step3[step3.index("standard:") : step3.index("serverless:")]  # may wrap
    assert "ml/imagenet" in std and "research/imagenet" in std, out
    assert _summary_rows(out)["serverless"] == ["sidecar", "2", "Bound"]
    assert "fluidfed demo down" in out
    states = cluster.list_clusters(tmp_path / "demo" / "clusters")
    assert len(states) == 3 and all(cluster.running(s) for s in states)
    assert processes_under(tmp_path / "demo")
    r = demo(tmp_path, "down")
    assert r.returncode == 0, r.stderr
    assert processes_under(tmp_path / "demo") == []
    assert not (tmp_path / "demo").exists()
    assert str(tmp_path / "demo") not in Path("/proc/self/mounts").read_text()
    assert node_network_left(tmp_path / "demo") == []


def test_demo_ha_survives_the_leader_killed_then_down_leaves_nothing(tmp_path: Path) -> None:
    """`--ha`: two hub replicas on a 3-member etcd, the agents given both; the leader is
    killed with SIGKILL, the other leads, nothing acknowledged is lost, a new apply reaches
    every cluster; kept, then `demo down` stops and removes everything, etcd and the real
    node too. As a user runs it: the serverless pods on a real node, as by default."""
    r = demo(tmp_path, "--quick", "--ha", "--keep")
    assert r.returncode == 0, r.stdout + r.stderr
    flat = " ".join(r.stdout.split())  # rich wraps long lines at 120 columns
    assert "serverless: a real node on" in flat and "no real node" not in flat, r.stdout
    assert re.search(r"warm: pod ml/train-again on real-node read 18 files, .* at \d+ MiB/s; "
                     r"bytes match the source", flat), r.stdout  # fmt: skip
    assert "[1/7] Starting the hub" in flat and "etcd: 3 members on 127.0.0.1:" in flat
    urls = re.search(r"hub replicas on (https://\S+), (https://\S+) \(catalog on etcd", flat)
    assert urls, r.stdout
    first, second = urls.groups()
    # the agents watch the leader first: it is the one killed, the other takes over
    assert f"{first} leads" in flat
    assert f"[6/7] The leading hub replica is killed with SIGKILL; the other takes over " \
           f"killed the leading replica {first} (pid " in flat  # fmt: skip
    assert re.search(rf"{re.escape(second)} leads [\d.]+s later \(/readyz: ok revision=\d+ leader\)",
                     flat), r.stdout  # fmt: skip
    assert "nothing lost: 3 clusters, dataset imagenet at generation 1 and its 3 bindings" in flat
    assert f"applied imagenet again through {second}: generation 2" in flat
    assert re.search(rf"every agent's watch resumed on {re.escape(second)}: generation 2 "
                     r"reconciled in edge, serverless, standard", flat), r.stdout  # fmt: skip
    assert f"{first} restarted on the same URL and follows" in flat
    assert _summary_rows(r.stdout)["serverless"] == ["sidecar", "2", "Bound"]
    assert f"export FLUIDFED_HUB={first},{second} " in flat
    etcd_members = [p for p in processes_under(tmp_path / "demo" / "etcd") if "--name=m" in p]
    assert len(etcd_members) == 3, etcd_members
    assert len(node_network_left(tmp_path / "demo")) == 2  # kept: the node's netns and veth
    r = demo(tmp_path, "down")
    assert r.returncode == 0, r.stderr
    assert processes_under(tmp_path / "demo") == []
    assert not (tmp_path / "demo").exists()
    assert str(tmp_path / "demo") not in Path("/proc/self/mounts").read_text()
    assert node_network_left(tmp_path / "demo") == []


def test_a_demo_ended_by_sigterm_cleans_up_as_one_that_finished(tmp_path: Path) -> None:
    """SIGTERM (`kill`, a CI job's timeout, a closed terminal's SIGHUP alike) once the
    clusters, the real node and the agents run: the demo stops everything it started and
    removes its files, as after its last step, and says so. Python's default action for
    SIGTERM ended it on the spot: the real node's port forwarder held its disk's mount
    busy, and the node's network namespace stayed."""
    demo_dir = tmp_path / "demo"
    env = {**os.environ, "FLUIDFED_DEMO_DIR": str(demo_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluidfed.cli.main", "demo", "--quick"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 480
        while not any(line.startswith("[2/6]") for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.5)
        assert processes_under(demo_dir) and node_network_left(demo_dir)  # all of it runs
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    out = "".join(lines)
    assert code == 128 + signal.SIGTERM, out
    flat = " ".join(out.split())
    assert "SIGTERM: stopping the demo" in flat, out
    assert "cleaned up: processes stopped, clusters and files removed" in flat, out
    assert processes_under(demo_dir) == []
    assert not demo_dir.exists()
    assert str(demo_dir) not in Path("/proc/self/mounts").read_text()
    assert node_network_left(demo_dir) == []
