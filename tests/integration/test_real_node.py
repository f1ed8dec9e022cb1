"""A real node (kubelet + containerd + runc) in a local serverless cluster, and fluidfed's
own image in pods on it: the node is Ready as a virtual node, the image runs `fluidfed`,
and a privileged native FUSE sidecar serves a dataset to the app container of its pod.

The cluster with its real node starts once per test session; its `down` must leave
nothing behind (processes, network namespace, veth, cgroups, mounts, host sysctls).
"""

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import ssl
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from aiohttp import web
from kubernetes_asyncio import client

from agents import objects, trust
from devkit.local import binaries, cluster, image, netns, realnode
from devkit.testing import AgentProcess, HubProcess, NotYet, eventually, serving
from fluidfed import Client, names
from fluidfed.data import blockfile, credentials, protocol, ufs
from fluidfed.errors import LocalClusterError
from fluidfed.models import Access, CacheSpec, CacheTier, Dataset, Mount
from fluidfed.units import ByteSize
from tests.integration import sources
from tests.integration.test_webhook import create_when_webhook_is_registered

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="a real node needs root"),
]

NS = "default"


def _host_mounts() -> str:
    return Path("/proc/self/mounts").read_text()


def _cgroups_of(state: realnode.NodeState) -> list[str]:
    return [c for c in state.cgroups if Path(c).exists()]


@contextlib.contextmanager
def _real_cluster(base: Path, name: str, kind: cluster.Kind) -> Iterator[cluster.LocalCluster]:
    """A local cluster of `kind` with its real node; its `down` must leave nothing."""
    sysctls = realnode._read_sysctls()
    lc = cluster.LocalCluster(name, kind, base_dir=base, real_node=True)
    asyncio.run(lc.up(print))
    state = lc.state
    assert state is not None and state.real_node is not None
    node_state = state.real_node
    try:
        yield lc
    finally:
        left = asyncio.run(lc.down())
        assert left == [], f"left behind: {left}"
        alive = [f"{b}:{p}" for b, p in state.pids.items() if cluster._alive(p, b)]
        assert alive == [], f"processes left behind: {alive}"
        assert netns.leftovers(node_state.network) == []
        assert _cgroups_of(node_state) == []
        assert not realnode.runtime_dir(node_state.network).exists()
        assert str(base) not in _host_mounts()
        if not any(Path("/run/netns").glob("fluidfed-*")):  # the last real node is gone
            assert realnode._read_sysctls() == sysctls


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.LocalCluster]:
    """A serverless cluster whose real node stands in for the virtual node."""
    with _real_cluster(tmp_path_factory.mktemp("real"), "real", "serverless") as lc:
        yield lc


@pytest.fixture(scope="session")
def built_image() -> image.BuiltImage:
    built = image.build_fluidfed(print)
    print(f"image {built.ref}: {built.bytes / 2**20:.0f} MiB, built in {built.seconds}s")
    return built


@pytest.fixture(scope="session")
def fluidfed_image(
    real_cluster: cluster.LocalCluster, built_image: image.BuiltImage
) -> image.BuiltImage:
    seconds = asyncio.run(cluster.load_image(real_cluster.dir, built_image))
    print(f"imported in {seconds:.1f}s")
    return built_image


@pytest.fixture(scope="session")
def edge_cluster(
    tmp_path_factory: pytest.TempPathFactory, built_image: image.BuiltImage
) -> Iterator[cluster.LocalCluster]:
    """An edge cluster (no native sidecars, the node's disk for cache tiers) with a real
    node and the image in it."""
    with _real_cluster(tmp_path_factory.mktemp("edge"), "edge", "edge") as lc:
        asyncio.run(cluster.load_image(lc.dir, built_image))
        yield lc


def _on_real_node(spec: dict[str, Any]) -> dict[str, Any]:
    taint = cluster.VIRTUAL_NODE_TAINT
    return {
        "nodeSelector": {realnode.REAL_NODE_LABEL: "true"},
        "tolerations": [{"key": taint["key"], "operator": "Exists", "effect": "NoSchedule"}],
        "hostNetwork": True,  # the loopback CNI plugin alone: the node's network
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 10,
        **spec,
    }


async def _run_pod(api: Any, pod: dict[str, Any], within: float = 120) -> Any:
    """Create the pod, wait until it has finished; the pod (phase Succeeded or Failed)."""
    core = client.CoreV1Api(api)
    name = pod["metadata"]["name"]
    await core.create_namespaced_pod(NS, pod)  # type: ignore[arg-type]
    return await eventually(lambda: _finished(core, name), f"pod {name} to finish", timeout=within)


async def _gone(core: Any, name: str, namespace: str = NS) -> bool:
    with contextlib.suppress(client.ApiException):
        await core.read_namespaced_pod(name, namespace)
        return False
    return True


async def _finished(core: Any, name: str) -> Any:
    p = await core.read_namespaced_pod(name, NS)
    return p if p.status.phase in ("Succeeded", "Failed") else None


async def _logs(api: Any, pod: str, container: str, namespace: str = NS) -> str:
    # raw: the client would parse a log that looks like JSON into a dict (and the response
    # is aiohttp's, not the str the stubs say)
    resp: Any = await client.CoreV1Api(api).read_namespaced_pod_log(
        pod, namespace, container=container, _preload_content=False
    )
    body: bytes = await resp.read()
    return body.decode()


async def test_real_node_is_ready_as_the_flavours_node_and_kwok_leaves_it_alone(
    real_cluster: cluster.LocalCluster,
) -> None:
    async with await real_cluster.api_client() as api:
        node = await client.CoreV1Api(api).read_node(realnode.NODE_NAME)
    ready = {c.type: c.status for c in node.status.conditions}["Ready"]
    assert ready == "True"
    # the kubelet reports it, not kwok
    assert node.status.node_info.kubelet_version == binaries.K8S_VERSION
    assert node.status.node_info.container_runtime_version == "containerd://2.1.9"
    assert cluster.KWOK_NODE_ANNOTATION not in (node.metadata.annotations or {})
    # a serverless real node is a virtual node: label and taint
    assert node.metadata.labels["alibabacloud.com/virtual-node"] == "true"
    assert [t.key for t in node.spec.taints] == [names.VIRTUAL_NODE_TAINT]
    state = real_cluster.state
    assert state is not None and state.real_node is not None
    assert node.status.addresses[0].address == state.real_node.network.node_ip
    # the API server listens on the veth's host side and on loopback through the forwarder,
    # never on every interface
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
    port = state.server.rsplit(":", 1)[1]
    local = {line.split()[3] for line in listening.splitlines()}
    assert f"{state.real_node.network.host_ip}:{port}" in local
    assert f"127.0.0.1:{port}" in local
    assert f"0.0.0.0:{port}" not in local and f"*:{port}" not in local


async def test_fluidfed_image_runs_fluidfed_as_65532_without_the_dev_kit(
    real_cluster: cluster.LocalCluster, fluidfed_image: image.BuiltImage
) -> None:
    venv = image.VENV
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "fluidfed-help"},
        "spec": _on_real_node(
            {
                "containers": [
                    # the image's entrypoint and user, as configs/deploy/Dockerfile has them
                    {
                        "name": "help",
                        "image": fluidfed_image.ref,
                        "imagePullPolicy": "Never",
                        "args": ["--help"],
                    },
                    {
                        "name": "inside",
                        "image": fluidfed_image.ref,
                        "imagePullPolicy": "Never",
                        "command": [
                            "sh",
                            "-c",
                            f"id -u; id -g; ls {venv}/lib/python3*/site-packages | grep -c "
                            "'^devkit' || true",
                        ],
                    },
                ]
            }
        ),
    }
    async with await real_cluster.api_client() as api:
        done = await _run_pod(api, pod)
        help_text = await _logs(api, "fluidfed-help", "help")
        inside = (await _logs(api, "fluidfed-help", "inside")).split()
    assert done.status.phase == "Succeeded", done.status
    assert "usage: fluidfed" in help_text
    for command in ("hub", "agent", "sidecar", "worker"):
        assert command in help_text
    assert "demo" not in help_text  # the dev kit's commands are not in the image
    assert inside == ["65532", "65532", "0"]


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Files of a few sizes (one across several blocks) and their sha256."""
    d = tmp_path_factory.mktemp("dataset")
    sums = {}
    for name, size in (("a.bin", 1), ("b.bin", 70_000), ("big/c.bin", 9 * 2**20 + 3)):
        data = os.urandom(size)
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    d.chmod(0o755)
    return d, sums


# the app container: read every file under ROOT, ROUNDS times, PAUSE seconds apart; one JSON
# line per round (a dead mount shows as an error or an empty round, and the app reads on)
READER = """
import hashlib, json, os, sys, time
root, rounds, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
for i in range(rounds):
    sums = {}
    try:
        for d, _, files in os.walk(root):
            for f in files:
                p = os.path.join(d, f)
                with open(p, "rb") as fh:
                    sums[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
        print(json.dumps({"round": i, "sums": sums}), flush=True)
    except OSError as err:
        print(json.dumps({"round": i, "error": str(err)}), flush=True)
    time.sleep(pause)
"""


def _rounds(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.strip().splitlines() if line.startswith("{")]


def _fuse_pod(name: str, ref: str, src: Path, rounds: int = 1, pause: float = 0) -> dict[str, Any]:
    """A pod with a privileged native FUSE sidecar (a file:// dataset from `src`) and an app
    container running READER over the mount."""
    ready = f"/tmp/fluidfed-{name}.ready"
    mountpoint = f"/shared/{name}"
    sidecar = {
        "name": "fluidfed-sidecar",
        "image": ref,
        "imagePullPolicy": "Never",
        "restartPolicy": "Always",  # native sidecar
        "args": [
            "sidecar",
            "mount",
            "--dataset",
            name,
            "--uri",
            "file:///data",
            "--mountpoint",
            mountpoint,
            "--ready-file",
            ready,
        ],
        "securityContext": {"privileged": True, "runAsUser": 0, "runAsNonRoot": False},
        "startupProbe": {
            "exec": {"command": ["test", "-f", ready]},
            "periodSeconds": 1,
            "failureThreshold": 120,
        },
        "volumeMounts": [
            {"name": "shared", "mountPath": "/shared", "mountPropagation": "Bidirectional"},
            {"name": "data", "mountPath": "/data", "readOnly": True},
        ],
    }
    app = {
        "name": "app",
        "image": ref,
        "imagePullPolicy": "Never",
        "command": ["python3", "-c", READER, mountpoint, str(rounds), str(pause)],
        "volumeMounts": [
            {"name": "shared", "mountPath": "/shared", "mountPropagation": "HostToContainer"}
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": _on_real_node(
            {
                "initContainers": [sidecar],
                "containers": [app],
                "volumes": [
                    {"name": "shared", "emptyDir": {}},
                    {"name": "data", "hostPath": {"path": str(src), "type": "Directory"}},
                ],
            }
        ),
    }


def _in_node(lc: cluster.LocalCluster, *argv: str) -> str:
    """A command in the node's mount namespace (the kubelet's)."""
    assert lc.state is not None
    pid = lc.state.pids["kubelet"]
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-m", *argv], capture_output=True, text=True, check=True
    ).stdout


def _node_fuse_mounts(lc: cluster.LocalCluster, dataset: str) -> list[str]:
    """Where the node has a sidecar's FUSE mount of `dataset`."""
    lines = _in_node(lc, "cat", "/proc/self/mounts").splitlines()
    return [line.split()[1] for line in lines if line.startswith(f"fluidfed:{dataset} ")]


async def test_native_fuse_sidecar_serves_the_dataset_to_the_app_container(
    real_cluster: cluster.LocalCluster,
    fluidfed_image: image.BuiltImage,
    dataset_dir: tuple[Path, dict[str, str]],
) -> None:
    src, sums = dataset_dir
    pod = _fuse_pod("reader", fluidfed_image.ref, src)
    async with await real_cluster.api_client() as api:
        core = client.CoreV1Api(api)
        done = await _run_pod(api, pod, within=180)
        out = await _logs(api, "reader", "app")
        assert done.status.phase == "Succeeded", (
            done.status,
            await _logs(api, "reader", "fluidfed-sidecar"),
        )
        # every file of the dataset, read through FUSE inside the pod, with its checksum
        assert _rounds(out) == [{"round": 0, "sums": sums}]
        # the mount lived in the node's mount namespace only, and goes with the pod
        assert "fluidfed:reader " not in _host_mounts()
        assert str(real_cluster.dir) not in _host_mounts()
        await core.delete_namespaced_pod("reader", NS)
        await eventually(lambda: _gone(core, "reader"), "the pod to be deleted", timeout=60)
    assert _node_fuse_mounts(real_cluster, "reader") == []


async def test_a_bad_node_start_is_a_clear_error_with_the_kubelets_log_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_cluster: cluster.LocalCluster
) -> None:
    good = realnode.kubelet_args
    monkeypatch.setattr(realnode, "kubelet_args", lambda *a: [*good(*a), "--no-such-flag-fluidfed"])
    lc = cluster.LocalCluster("bad", "edge", base_dir=tmp_path, real_node=True)
    t0 = time.monotonic()
    with pytest.raises(LocalClusterError) as err:
        await lc.up()
    assert time.monotonic() - t0 < 60
    message = str(err.value)
    assert "real node real-node" in message
    assert "unknown flag: --no-such-flag-fluidfed" in message  # the kubelet's own words
    net = netns.NodeNetwork(
        netns=netns.names_for(lc.dir)[0], host_if=netns.names_for(lc.dir)[1],
        node_if="", host_ip="", node_ip="",
    )  # fmt: skip
    assert netns.leftovers(net) == []
    await lc.down()


@contextlib.asynccontextmanager
async def _http_on(host: str, root: Path) -> AsyncIterator[str]:
    """A plain HTTP server for `root` on the node's host-side address (what its pods reach)."""
    app = web.Application()
    app.router.add_static("/", root)
    async with serving(app, host) as url:
        yield f"{url}/"


def _sidecar_pids(mountpoint: str) -> list[int]:
    """The sidecar processes (on the host's pid view) mounting at `mountpoint`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"sidecar" in argv and mountpoint.encode() in argv:
                found.append(int(proc.name))
    return found


async def test_a_sigkilled_sidecar_is_restarted_remounts_and_the_app_reads_on(
    real_cluster: cluster.LocalCluster,
    fluidfed_image: image.BuiltImage,
    dataset_dir: tuple[Path, dict[str, str]],
) -> None:
    src, sums = dataset_dir
    pod = _fuse_pod("survivor", fluidfed_image.ref, src, rounds=60, pause=0.5)
    async with await real_cluster.api_client() as api:
        core = client.CoreV1Api(api)
        await core.create_namespaced_pod(NS, pod)  # type: ignore[arg-type]

        async def reading() -> bool:
            p = await core.read_namespaced_pod("survivor", NS)
            if not any(c.state.running for c in p.status.container_statuses or []):
                return False
            return bool(_rounds(await _logs(api, "survivor", "app")))

        await eventually(reading, "the app reading through the mount", timeout=120)
        # the mount lives in the node's mount namespace only
        assert _node_fuse_mounts(real_cluster, "survivor")
        assert "fluidfed:survivor " not in _host_mounts()
        killed = _sidecar_pids("/shared/survivor")
        assert killed, "no sidecar process found"
        for pid in killed:
            os.kill(pid, 9)
        rounds_at_kill = len(_rounds(await _logs(api, "survivor", "app")))

        async def restarted() -> Any:
            p = await core.read_namespaced_pod("survivor", NS)
            side = p.status.init_container_statuses[0]
            return side if side.restart_count >= 1 and side.started else None

        await eventually(restarted, "the kubelet to restart the sidecar", timeout=120)
        done = await eventually(
            lambda: _finished(core, "survivor"), "the app to finish its rounds", timeout=180
        )
        log = _rounds(await _logs(api, "survivor", "app"))
        sidecar_log = await _logs(api, "survivor", "fluidfed-sidecar")
        assert done.status.phase == "Succeeded", (done.status, sidecar_log)
        app = done.status.container_statuses[0]
        assert app.restart_count == 0  # the app itself never died
        assert len(log) == 60 and rounds_at_kill < 60
        # after the new sidecar mounted again, the app read every file right
        assert log[-1] == {"round": 59, "sums": sums}
        good_after_kill = [r for r in log[rounds_at_kill:] if r.get("sums") == sums]
        assert good_after_kill, log

        await core.delete_namespaced_pod("survivor", NS)
        # the restarted sidecar cleared the killed one's dead mount (REAL-NODE.md item 10):
        # the pod goes within its grace period, with no operator unmounting anything
        await eventually(lambda: _gone(core, "survivor"), "the pod to be deleted", timeout=90)
    assert _node_fuse_mounts(real_cluster, "survivor") == []


def _block_file_sizes(sizes: list[int], block_size: int = 4 * 2**20) -> list[int]:
    """The sizes of the block files of files of `sizes` (each block's trailer added)."""
    out = []
    for size in sizes:
        for start in range(0, size, block_size):
            n = min(block_size, size - start)
            out.append(n + blockfile.trailer_size(n))
    return sorted(out)


@pytest.mark.parametrize(
    ("sub", "native", "own_disk"),
    [
        ("", True, True),  # with a disk tier of the sidecar's own: an emptyDir of the pod
        ("", False, False),  # the legacy form: the sidecar ends with the app, the pod completes
        ("part-1", True, False),
    ],
)
async def test_injected_sidecar_serves_its_namespaces_part_of_the_dataset_in_a_pod(
    real_cluster: cluster.LocalCluster,
    fluidfed_image: image.BuiltImage,
    tmp_path: Path,
    sub: str,
    native: bool,
    own_disk: bool,
) -> None:
    """The whole sidecar path on the real node: hub, agent (sidecar image = the image built
    here), webhook; the app container of an injected pod reads its namespace's part of the
    dataset through the sidecar's FUSE mount, the pod completes (in the legacy form too,
    where the sidecar is a regular container that must leave with the app), and the pod's
    deletion leaves no mount. With `cache.sidecar_tiers` naming a disk tier, the sidecar
    kept every block it read in its pod's emptyDir, on the node's disk."""
    state = real_cluster.state
    assert state is not None and state.network is not None
    src = sources.make_dataset(tmp_path / "src", count=40)
    top = src / sub
    want = {
        str(p.relative_to(top)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in top.rglob("*")
        if p.is_file() and p.name != ufs.MANIFEST
    }
    name = f"podread{sub.replace('-', '')}{'' if native else 'legacy'}"
    # the legacy sidecar polls the pod's processes every second and leaves only once it has
    # seen a peer and all peers are gone (sidecar/peers.py). Once, under load, the app had
    # exited 0 and the sidecar was still there 120 s later; an app that outlives a poll
    # leaves nothing to chance (a bare `python3 -c pass` app did complete when tried)
    linger = "0" if native else "3"
    if own_disk:  # (kubelet empties a finished pod's volumes: the app stays while looked at)
        linger = "600"
    home = f"{name}-home"
    hub = HubProcess(tmp_path / "hub").start()
    agent = AgentProcess(
        tmp_path, "real", "serverless", str(real_cluster.kubeconfig_path), hub.url,
        hub.admin_token, capabilities={"privileged": True, "native_sidecar": native},
    )  # fmt: skip
    agent.write_config(
        sidecar_image=json.dumps(fluidfed_image.ref), worker_image=json.dumps(fluidfed_image.ref)
    )
    agent.start()
    try:
        async with _http_on(state.network.host_ip, src) as url:
            async with Client(hub.url, hub.admin_token) as c:
                await c.apply_dataset(
                    Dataset(
                        name=name,
                        namespace=home,
                        mounts=[Mount(uri=url)],
                        access=[Access(namespace=home, sub_path=sub)],
                        cache=CacheSpec(
                            replicas=0,
                            min_replicas=0,
                            sidecar_tiers=[CacheTier(medium="SSD", quota=ByteSize(2**28))]
                            if own_disk
                            else [],
                        ),
                    )
                )

                async def bound() -> bool:
                    v = await c.get_dataset(name)
                    st = v.bindings[0].status if v.bindings else None
                    return st is not None and st.phase == "Bound"

                await eventually(bound, f"{name} Bound", timeout=90)
            await eventually(
                lambda: asyncio.sleep(0, "sidecar webhook serving on" in agent.log_text()),
                "the webhook serving",
            )
            pod = {
                "metadata": {"name": "app", "labels": {names.INJECT_LABEL: "true"}},
                "spec": _on_real_node(
                    {
                        "containers": [
                            {
                                "name": "app",
                                "image": fluidfed_image.ref,
                                "imagePullPolicy": "Never",
                                "command": ["python3", "-c", READER, "/data", "1", linger],
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            }
                        ],
                        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": name}}],
                    }
                ),
            }
            async with await real_cluster.api_client() as api:
                core = client.CoreV1Api(api)
                injected = await create_when_webhook_is_registered(core, home, pod)
                if native:
                    sidecar = injected.spec.init_containers[0]
                    assert sidecar.restart_policy == "Always"
                else:
                    sidecar = injected.spec.containers[0]
                    assert injected.spec.share_process_namespace is True
                assert sidecar.image == fluidfed_image.ref

                async def finished() -> Any:
                    p = await core.read_namespaced_pod("app", home)
                    if p.status.phase in ("Succeeded", "Failed"):
                        return p
                    statuses = (p.status.init_container_statuses or []) + (
                        p.status.container_statuses or []
                    )
                    for c in statuses:
                        waiting = c.state.waiting
                        if waiting is not None and waiting.reason == "CreateContainerConfigError":
                            raise AssertionError(f"container {c.name}: {waiting.message}")
                    return NotYet(f"{p.status.phase} {[(c.name, c.state) for c in statuses]}")

                volumes = {v.name: v for v in injected.spec.volumes}
                own = [n for n, v in volumes.items() if "sidecar-tier" in n]
                assert len(own) == (1 if own_disk else 0)
                if own_disk:
                    assert volumes[own[0]].empty_dir.size_limit is None
                    side = next(c for c in injected.spec.init_containers if c.args)
                    assert side.resources.requests == {"ephemeral-storage": "256Mi"}
                    assert "--cache-tiers" in side.args

                    async def read() -> Any:
                        # (a container not started yet has a Status for its log)
                        got = [
                            r for r in _rounds(await _logs(api, "app", "app", home)) if "round" in r
                        ]
                        return got or await finished()

                    logs = await eventually(read, "the app to read the dataset", timeout=120)
                    assert logs == [{"round": 0, "sums": want}], logs
                    # every block the app read, in its own file on the pod's emptyDir
                    where = realnode.kubelet_root(state.network) / "pods" / injected.metadata.uid
                    tier = where / "volumes/kubernetes.io~empty-dir" / own[0]
                    blocks = _block_file_sizes([(top / rel).stat().st_size for rel in want])

                    async def kept() -> Any:  # (written behind the reads)
                        found = _in_node(real_cluster, "find", str(tier), "-type", "f")
                        sizes = _in_node(real_cluster, "find", str(tier), "-type", "f",
                                         "-printf", "%s\n")  # fmt: skip
                        got = sorted(map(int, sizes.split()))
                        return got == blocks or NotYet(f"{len(got)} of {len(blocks)}: {found}")

                    await eventually(kept, "the sidecar's block files on its emptyDir")
                else:
                    done = await eventually(finished, "the injected pod to finish", timeout=120)
                    logs = await _logs(api, "app", "app", home)
                    assert done.status.phase == "Succeeded", (
                        done.status,
                        await _logs(api, "app", sidecar.name, home),
                    )
                    assert _rounds(logs) == [{"round": 0, "sums": want}]
                await core.delete_namespaced_pod("app", home)
                await eventually(
                    lambda: _gone(core, "app", home), "the pod to be deleted", timeout=60
                )
            assert _node_fuse_mounts(real_cluster, name) == []
    finally:
        agent.stop()
        print(f"--- agent log (tail) ---\n{agent.log_text()[-3000:]}")
        hub.stop()


async def test_the_unprivileged_form_is_refused_by_the_api_server(
    real_cluster: cluster.LocalCluster, fluidfed_image: image.BuiltImage
) -> None:
    """SYS_ADMIN and /dev/fuse without the privileged flag: the API server refuses the
    Bidirectional propagation a sidecar needs to share its mount, so the webhook must not
    offer that form (what Kubernetes answers is recorded here)."""
    pod = _fuse_pod("unprivileged", fluidfed_image.ref, Path("/nonexistent"))
    side = pod["spec"]["initContainers"][0]
    side["securityContext"] = {"privileged": False, "capabilities": {"add": ["SYS_ADMIN"]}}
    pod["spec"]["volumes"].append(
        {"name": "fuse", "hostPath": {"path": "/dev/fuse", "type": "CharDevice"}}
    )
    side["volumeMounts"].append({"name": "fuse", "mountPath": "/dev/fuse"})
    async with await real_cluster.api_client() as api:
        with pytest.raises(client.ApiException) as err:
            await client.CoreV1Api(api).create_namespaced_pod(NS, pod, dry_run="All")  # type: ignore[arg-type]
    assert err.value.status == 422
    # the client decodes the body it raises with (its stubs say bytes)
    assert "Bidirectional mount propagation is available only to privileged containers" in (
        cast(str, err.value.body)
    )


POD_NET_APP = """
import http.server, sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode(), flush=True)
http.server.HTTPServer(("", 8080), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


async def test_pods_off_the_host_network_reach_the_host_side_and_are_reached_from_it(
    real_cluster: cluster.LocalCluster, fluidfed_image: image.BuiltImage, tmp_path: Path
) -> None:
    """The pod network (bridge + host-local in the node's namespace, the /24 routed by the
    host): what cache-worker pods need to serve sidecars and reach the host's services."""
    state = real_cluster.state
    assert state is not None and state.network is not None
    (tmp_path / "hello").write_text("hello from the host side")
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "podnet"},
        "spec": {
            **_on_real_node({"hostNetwork": False}),
            "containers": [
                {
                    "name": "app",
                    "image": fluidfed_image.ref,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", POD_NET_APP],
                    "workingDir": "/tmp",
                }
            ],
        },
    }
    async with (
        _http_on(state.network.host_ip, tmp_path) as url,
        await real_cluster.api_client() as api,
    ):
        core = client.CoreV1Api(api)
        pod["spec"]["containers"][0]["command"].append(url + "hello")
        await core.create_namespaced_pod(NS, pod)  # type: ignore[arg-type]

        async def fetched() -> Any:
            p = await core.read_namespaced_pod("podnet", NS)
            if p.status.phase != "Running":
                return NotYet(str(p.status.phase))
            log = await _logs(api, "podnet", "app")
            return p if "hello from the host side" in log else NotYet(log)

        running = await eventually(fetched, "the pod to fetch from the host side", timeout=120)
        # the pod's network namespace lives under the node's directory, not in /run/netns
        assert not [n for n in os.listdir("/run/netns") if n.startswith("cni-")]
        assert list((real_cluster.dir / "node" / "containerd" / "state").rglob("netns/cni-*"))
        pod_ip = running.status.pod_ip
        assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(state.network.pod_cidr)

        def get() -> int:
            with urllib.request.urlopen(f"http://{pod_ip}:8080/", timeout=10) as r:
                return int(r.status)

        assert await asyncio.to_thread(get) == 200  # the host reaches the pod
        await core.delete_namespaced_pod("podnet", NS, grace_period_seconds=0)
        await eventually(lambda: _gone(core, "podnet"), "the pod to be deleted", timeout=60)


def _sums_and_blocks(src: Path, block: int = 4 * 2**20) -> tuple[dict[str, str], int]:
    """The sha256 of every file of a dataset's source, and how many blocks they make."""
    files = [p for p in src.rglob("*") if p.is_file() and p.name != ufs.MANIFEST]
    want = {str(p.relative_to(src)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    return want, sum(-(-p.stat().st_size // block) for p in files)


async def _workers(
    agent: AgentProcess, agent_api: str, dataset: str, key: bytes
) -> list[dict[str, Any]]:
    """The workers of `dataset` registered with the agent, each with its last status (its
    API serves HTTPS here: it listens on the host side, beyond loopback)."""
    token = credentials.sign(credentials.Claims(role="agent", dataset=dataset), key)
    headers = credentials.authorization(token)
    url = f"{agent_api}{protocol.REGISTER}?dataset={dataset}"
    ctx = ssl.create_default_context(cafile=str(agent.api_ca_file))

    def get() -> list[dict[str, Any]]:
        req = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            got: list[dict[str, Any]] = json.load(r)
        return got

    return await asyncio.to_thread(get)


async def _signing_key(core: Any, dataset: str, namespace: str) -> bytes:
    secret = await core.read_namespaced_secret(trust.keys_secret_name(dataset), namespace)
    doc = base64.b64decode(secret.data[names.CREDENTIALS_FILE])
    cred = msgspec.json.decode(doc, type=credentials.CredentialFile)
    return credentials.decode_key(cred.keys[cred.sign])


@contextlib.asynccontextmanager
async def _kwok_nodes_cordoned(api: Any) -> AsyncIterator[None]:
    """The cluster's only schedulable node is the real one while this runs: the cache
    workers the agent renders go where they really run (kwok's nodes would take them too)."""
    core = client.CoreV1Api(api)
    kwok = [
        n.metadata.name
        for n in (await core.list_node()).items
        if n.metadata.name != realnode.NODE_NAME
    ]
    for n in kwok:
        await core.patch_node(n, {"spec": {"unschedulable": True}})
    try:
        yield
    finally:
        for n in kwok:
            await core.patch_node(n, {"spec": {"unschedulable": False}})


async def _pods_report(api: Any, namespace: str) -> str:
    """Each pod's phase, its containers' states and their last log lines: what a wait on
    pods says when it gives up."""
    core = client.CoreV1Api(api)
    out = []
    for p in (await core.list_namespaced_pod(namespace)).items:
        out.append(f"pod {p.metadata.name} on {p.spec.node_name}: {p.status.phase}")
        statuses = (p.status.init_container_statuses or []) + (p.status.container_statuses or [])
        for cs in statuses:
            out.append(f"  {cs.name}: {cs.state}")
            with contextlib.suppress(client.ApiException):
                log = await _logs(api, p.metadata.name, cs.name, namespace)
                out.extend(f"    | {line}" for line in log.splitlines()[-8:])
    return "\n".join(out)


def _reader_pod(name: str, claim: str, ref: str) -> dict[str, Any]:
    """An app pod on the pod network (cluster DNS: it finds the workers by name), labelled
    for injection, reading the whole claim once."""
    return {
        "metadata": {"name": name, "labels": {names.INJECT_LABEL: "true"}},
        "spec": _on_real_node(
            {
                "hostNetwork": False,
                "containers": [
                    {
                        "name": "app",
                        "image": ref,
                        "imagePullPolicy": "Never",
                        "command": ["python3", "-c", READER, "/data", "1", "0"],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    }
                ],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
            }
        ),
    }


async def test_cache_workers_run_as_pods_serve_the_next_reader_and_hand_off_when_scaled_down(
    real_cluster: cluster.LocalCluster, fluidfed_image: image.BuiltImage, tmp_path: Path
) -> None:
    """Cache workers as the StatefulSet pods the agent renders, on the real node: they
    register with the agent's API on the node's host side, the first injected reader fills
    them from the source, the next reader's blocks are all worker hits; scaled 3 -> 2, the
    leaving worker hands its blocks to the others in its grace period and a third reader
    still reads nothing from the source."""
    state = real_cluster.state
    assert state is not None and state.network is not None
    src = sources.make_dataset(tmp_path / "src", count=24)
    want, blocks = _sums_and_blocks(src)
    name, home = "podworkers", "podworkers-home"
    api_url = f"https://{state.network.host_ip}:{cluster.free_port()}"
    hub = HubProcess(tmp_path / "hub").start()
    agent = AgentProcess(
        tmp_path, "real", "serverless", str(real_cluster.kubeconfig_path), hub.url,
        hub.admin_token, capabilities={"privileged": True, "native_sidecar": True},
    )  # fmt: skip
    # the workers and sidecars in pods reach the agent on the node's host side
    host, port = api_url.removeprefix("https://").split(":")
    agent.write_config(
        sidecar_image=json.dumps(fluidfed_image.ref),
        worker_image=json.dumps(fluidfed_image.ref),
        api_host=json.dumps(host),
        api_port=port,
    )
    agent.start()

    async def apply(c: Client, url: str, replicas: int) -> None:
        cache = CacheSpec(replicas=replicas, min_replicas=replicas, max_replicas=replicas)
        await c.apply_dataset(
            Dataset(
                name=name, namespace=home, mounts=[Mount(uri=url)],
                access=[Access(namespace=home)], cache=cache,
            )
        )  # fmt: skip

    async def read(core: Any, api: Any, pod: str) -> None:
        await create_when_webhook_is_registered(
            core, home, _reader_pod(pod, name, fluidfed_image.ref)
        )

        async def finished() -> Any:
            p = await core.read_namespaced_pod(pod, home)
            return p if p.status.phase in ("Succeeded", "Failed") else NotYet(p.status.phase)

        done = await eventually(finished, f"{pod} to finish", timeout=180)
        side = done.spec.init_containers[0].name
        assert done.status.phase == "Succeeded", await _logs(api, pod, side, home)
        assert _rounds(await _logs(api, pod, "app", home)) == [{"round": 0, "sums": want}]
        said = await _logs(api, pod, side, home)
        # its metrics went to the agent's API over HTTPS, verified by the agent's CA
        assert "CERTIFICATE_VERIFY_FAILED" not in said, said[-3000:]
        await core.delete_namespaced_pod(pod, home)

    try:
        async with (
            _http_on(state.network.host_ip, src) as url,
            Client(hub.url, hub.admin_token) as c,
            await real_cluster.api_client() as api,
            _kwok_nodes_cordoned(api),
        ):
            core = client.CoreV1Api(api)
            await apply(c, url, 3)

            async def ready(n: int) -> Any:
                v = await c.get_dataset(name)
                st = v.bindings[0].status if v.bindings else None
                ok = st is not None and st.phase == "Bound" and st.ready_workers == n
                return True if ok else NotYet(f"{st}; {await _pods_report(api, home)}")

            await eventually(lambda: ready(3), "3 cache workers ready in pods", timeout=180)
            key = await _signing_key(core, name, home)
            pods = await core.list_namespaced_pod(
                home, label_selector=f"{names.COMPONENT_LABEL}=cache-worker"
            )
            assert {p.spec.node_name for p in pods.items} == {realnode.NODE_NAME}

            def totals(ws: list[dict[str, Any]], of: int = 3) -> tuple[int, int, int]:
                """Hits, misses and under-storage reads of the workers 0..`of`-1 (a worker
                that left stays in the agent's list until its last report grows old)."""
                mine = [f"fluidfed-{name}-cache-{i}." for i in range(of)]
                st = [w["status"] for w in ws if any(m in w["url"] for m in mine)]
                return (
                    sum(s["hits"] for s in st),
                    sum(s["misses"] for s in st),
                    sum(s["ufs"]["reads"] for s in st),
                )

            # they serve HTTPS with the binding's certificate, for their Service's names
            registered = await _workers(agent, api_url, name, key)
            assert sorted(w["url"] for w in registered) == [
                f"https://fluidfed-{name}-cache-{i}.fluidfed-{name}-cache.{home}.svc:7070"
                for i in range(3)
            ]
            await read(core, api, "first")

            async def measured() -> Any:
                v = await c.get_dataset(name)
                st = v.bindings[0].status if v.bindings else None
                figures = st.metrics if st is not None else None
                return figures if figures and figures.cache_used_ratio is not None else None

            # the workers' OTLP metrics reached the agent's API over HTTPS (its CA from the
            # binding's Secret): the agent sent the hub figures made of them
            await eventually(measured, "figures from the workers' metrics", timeout=60)
            hits0, misses0, ufs0 = totals(await _workers(agent, api_url, name, key))
            assert misses0 >= blocks and ufs0 >= blocks  # the first reader filled them

            await read(core, api, "second")

            async def reported_hits() -> Any:
                got = totals(await _workers(agent, api_url, name, key))
                return got if got[0] - hits0 >= blocks else NotYet(got)

            hits1, misses1, ufs1 = await eventually(reported_hits, "the workers' hits", timeout=30)
            assert (hits1 - hits0, misses1, ufs1) == (blocks, misses0, ufs0)  # all hits

            await apply(c, url, 2)
            await eventually(lambda: ready(2), "2 cache workers after scaling down", timeout=180)

            async def two_left() -> Any:
                ps = await core.list_namespaced_pod(
                    home, label_selector=f"{names.COMPONENT_LABEL}=cache-worker"
                )
                return ps if len(ps.items) == 2 else NotYet(len(ps.items))

            await eventually(two_left, "the third worker pod gone", timeout=120)
            before = totals(await _workers(agent, api_url, name, key), of=2)
            await read(core, api, "third")

            async def third_hits() -> Any:
                got = totals(await _workers(agent, api_url, name, key), of=2)
                if got[0] - before[0] >= blocks:
                    return got
                return NotYet(f"{got} (before: {before}); {await _pods_report(api, home)}")

            after = await eventually(third_hits, "the remaining workers' hits", timeout=30)
            # the leaving worker's blocks moved in its grace period: still nothing from S3
            assert after[2] == before[2], (before, after)
            # the workers reported to the agent's API (registrations, OTLP metrics) and
            # reached each other over HTTPS, every certificate verified
            selector = f"{names.COMPONENT_LABEL}=cache-worker"
            for p in (await core.list_namespaced_pod(home, label_selector=selector)).items:
                said = await _logs(api, p.metadata.name, "worker", home)
                assert "CERTIFICATE_VERIFY_FAILED" not in said, said[-3000:]
    finally:
        agent.stop()
        print(f"--- agent log (tail) ---\n{agent.log_text()[-3000:]}")
        hub.stop()


async def test_edge_job_in_the_legacy_form_reads_the_workers_disk_tier_on_its_node(
    edge_cluster: cluster.LocalCluster, built_image: image.BuiltImage, tmp_path: Path
) -> None:
    """An edge cluster without native sidecars: a Job's injected pod (the sidecar a
    regular container, gated by postStart) completes and its sidecar ends with it; the
    cache worker keeps its blocks in the node's directory (the tier's path), and the next
    Job's sidecar, on the same node, reads those block files itself (short-circuit)."""
    state = edge_cluster.state
    assert state is not None and state.network is not None
    src = sources.make_dataset(tmp_path / "src", count=12)
    want, blocks = _sums_and_blocks(src)
    ssd = tmp_path / "ssd"
    name, home = "edgejob", "edgejob-home"
    host = state.network.host_ip
    port = cluster.free_port()
    hub = HubProcess(tmp_path / "hub").start()
    agent = AgentProcess(
        tmp_path, "edge", "edge", str(edge_cluster.kubeconfig_path), hub.url, hub.admin_token,
        capabilities={"privileged": True, "native_sidecar": False},
    )  # fmt: skip
    agent.write_config(
        sidecar_image=json.dumps(built_image.ref),
        worker_image=json.dumps(built_image.ref),
        api_host=json.dumps(host),
        api_port=str(port),
    )
    agent.start()

    def job(job_name: str) -> dict[str, Any]:
        pod = _reader_pod(job_name, name, built_image.ref)
        # an app that outlives one of the legacy sidecar's process polls (every second)
        pod["spec"]["containers"][0]["command"][-1] = "2"
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": job_name},
            "spec": {"backoffLimit": 0, "template": pod},
        }

    async def run(api: Any, job_name: str) -> None:
        batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
        await batch.create_namespaced_job(home, job(job_name))  # type: ignore[arg-type]

        async def finished() -> Any:
            j = await batch.read_namespaced_job(job_name, home)
            if j.status.succeeded or j.status.failed:
                return j
            return NotYet(await _pods_report(api, home))

        done = await eventually(finished, f"job {job_name} to finish", timeout=180)
        (pod,) = (await core.list_namespaced_pod(home, label_selector=f"job-name={job_name}")).items
        assert done.status.succeeded == 1, await _pods_report(api, home)
        # the legacy form: the sidecar is the first regular container and left with the app
        assert pod.metadata.annotations[names.MODE_ANNOTATION] == "legacy"
        side = pod.status.container_statuses[0] if pod.status.container_statuses else None
        assert side is not None and side.state.terminated is not None
        assert side.state.terminated.exit_code == 0
        logs = await _logs(api, pod.metadata.name, "app", home)
        assert _rounds(logs) == [{"round": 0, "sums": want}]

    try:
        async with (
            _http_on(host, src) as url,
            Client(hub.url, hub.admin_token) as c,
            await edge_cluster.api_client() as api,
            _kwok_nodes_cordoned(api),
        ):
            tier = CacheTier(medium="SSD", quota=ByteSize(2**30), path=str(ssd))
            await c.apply_dataset(
                Dataset(
                    name=name, namespace=home, mounts=[Mount(uri=url)],
                    access=[Access(namespace=home)],
                    cache=CacheSpec(replicas=1, min_replicas=1, max_replicas=1, tiers=[tier]),
                )
            )  # fmt: skip

            async def ready() -> Any:
                v = await c.get_dataset(name)
                st = v.bindings[0].status if v.bindings else None
                ok = st is not None and st.phase == "Bound" and st.ready_workers == 1
                return True if ok else NotYet(f"{st}; {await _pods_report(api, home)}")

            await eventually(ready, "the cache worker ready in its pod", timeout=180)
            await eventually(
                lambda: asyncio.sleep(0, "sidecar webhook serving on" in agent.log_text()),
                "the webhook serving",
            )
            core = client.CoreV1Api(api)
            key = await _signing_key(core, name, home)
            await run(api, "first")
            # the worker's blocks are files in the node's directory of the tier (written
            # behind the answers: waited for)

            async def written() -> Any:
                files = [p for p in ssd.rglob("*") if p.is_file()]
                whole = len(files) >= blocks and not any(p.suffix == ".tmp" for p in files)
                return files if whole else NotYet(files)

            stored = await eventually(written, "the worker's block files written", timeout=30)
            assert all(p.stat().st_uid == objects.IMAGE_UID for p in stored)
            (worker,) = await _workers(agent, f"https://{host}:{port}", name, key)
            served0 = worker["status"]["served"]["short_circuit"]

            await run(api, "second")

            async def short_circuited() -> Any:
                (w,) = await _workers(agent, f"https://{host}:{port}", name, key)
                st = w["status"]
                got = st["served"]["short_circuit"] - served0
                return st if got >= blocks else NotYet(st["served"])

            st = await eventually(short_circuited, "the sidecar's own reads reported", timeout=30)
            assert st["ufs"]["reads"] == worker["status"]["ufs"]["reads"]  # nothing from S3
    finally:
        agent.stop()
        print(f"--- agent log (tail) ---\n{agent.log_text()[-3000:]}")
        hub.stop()
