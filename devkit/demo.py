"""`fluidfed demo`: the federation on one machine, in one command, on embedded defaults.

A hub on SQLite, three real local clusters (standard with Fluid's CRDs, serverless,
edge), one agent per cluster, one dataset declared once and placed on all three. Where the
machine can run one, the serverless cluster gets a real node (kubelet + containerd) and its
pods run for real: the app pod, its injected sidecar and the cache workers, with the reads
measured inside the pod (demo_pods.py); elsewhere the demo says why and runs the sidecar and
workers as processes. Then the edge keeps working while the hub is away. With --ha the
hub is two replicas on a 3-member local etcd and the agents know both: the leading replica
is killed with SIGKILL, the other takes over, and a new apply still reaches every cluster.
Everything is removed at the end (also on Ctrl-C) unless --keep.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from agents import objects
from devkit import demo_pods
from devkit.local import binaries, cluster, etcd, paths, s3, secrets
from devkit.local.processes import (
    AgentProcess,
    HubProcess,
    SidecarProcess,
    WorkerProcess,
    force_unmount,
    on_loopback,
    pid_alive,
)
from devkit.local.s3 import S3Server
from fluidfed import config, engines, names
from fluidfed.client import Client
from fluidfed.errors import LocalClusterError
from fluidfed.models import DatasetView, Figures

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)

CLUSTERS: dict[str, str] = {
    "standard": """\
[cluster]
name = "standard"
kind = "standard"
region = "eu-west"
zone = "eu-west-1a"
labels = {{ env = "prod", gpu = "a100" }}
[cluster.capabilities]
csi = true
fluid = true
privileged = true
[cluster.kubernetes]
kubeconfig = "{kubeconfig}"
""",
    "serverless": """\
[cluster]
name = "serverless"
kind = "serverless"
region = "eu-west"
zone = "eu-west-1b"
labels = {{ env = "prod" }}
[cluster.capabilities]
privileged = true          # the platform admits the privileged FUSE sidecar
native_sidecar = true
[cluster.kubernetes]
kubeconfig = "{kubeconfig}"
""",
    "edge": """\
[cluster]
name = "edge"
kind = "edge"
region = "eu-north"
zone = "store-17"
labels = {{ env = "edge" }}
[cluster.capabilities]
privileged = true
native_sidecar = false
[cluster.kubernetes]
kubeconfig = "{kubeconfig}"
""",
}

SECRET = "imagenet-s3"  # the mount's credentials, a Secret in each namespace that reads

DATASET = """\
[dataset]
name = "imagenet"
namespace = "ml"
description = "ImageNet training set, declared once for the whole fleet"

[[dataset.mounts]]
uri = "s3://datasets/imagenet"
options = {{ endpoint = "{endpoint}", region = "us-east-1" }}
secret = "{secret}"

[dataset.cache]
replicas = 2
max_replicas = 4
block_size = "1MiB"

[[dataset.cache.tiers]]
medium = "MEM"
quota = "2GiB"

[dataset.autoscale]          # from the sidecars' and workers' OpenTelemetry metrics
min_replicas = 2
max_replicas = 4
scale_down_window = "20s"    # short for the demo (Kubernetes' HPA default: 5 minutes)
[[dataset.autoscale.targets]]
metric = "read_throughput_per_worker"
target = 50000000            # bytes per second per cache worker

[dataset.placement]
selector = {{ match_expressions = [{{ key = "env", operator = "In", values = ["prod", "edge"] }}] }}

[[dataset.access]]
namespace = "ml"
sub_path = "train"

[[dataset.access]]
namespace = "research"
sub_path = "val"
"""


# --ha: the replicas' settings; another replica leads within about `leader_lease`
HA_HUB = """\
[hub]
leader_lease = "2s"
"""
HA_REPLICAS = 2


def default_dir() -> Path:
    return paths.cache_dir("demo", "FLUIDFED_DEMO_DIR")


class DemoState(msgspec.Struct):
    """What `--keep` leaves running, for `fluidfed demo down`."""

    hub_pid: int = 0
    agent_pids: dict[str, int] = {}
    hub_url: str = ""
    hub_pids: list[int] = []  # --ha: every replica (hub_pid is the first)
    other_pids: list[int] = []  # the S3 server, cache workers, the sidecar
    mountpoint: str = ""


@dataclass
class Summary:
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    steps: list[tuple[str, float]] = field(default_factory=list)
    injected: str = ""
    read: str = ""
    speedup: float = 0.0
    autoscale: str = ""


def sample_dataset(*, small: bool) -> dict[str, bytes]:
    """A generated stand-in for ImageNet: train/ and val/ folders of mixed-size files."""
    rng = random.Random(2026)
    count, sizes = (
        (24, [4096, 300_000, 1_500_000]) if small else (96, [300_000, 2_000_000, 6_000_000])
    )
    out = {}
    for i in range(count):
        split = "val" if i % 4 == 3 else "train"
        out[f"{split}/class-{i % 5}/img-{i:04d}.bin"] = rng.randbytes(rng.choice(sizes))
    return out


async def _until(
    get: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], within: float, every: float
) -> Any:
    async with asyncio.timeout(within):
        while True:
            got = await get()
            if ok(got):
                return got
            await asyncio.sleep(every)


def _read_loop(mnt: Path, stop: threading.Event) -> None:
    """Read every file again and again, past the kernel's page cache."""
    files = [p for p in mnt.rglob("*") if p.is_file()]
    while not stop.is_set():
        for p in files:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                while os.read(fd, 2**20):
                    pass
            finally:
                os.close(fd)


READERS = 8  # parallel readers, as a PyTorch DataLoader with 8 workers reads


def _digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(2**20):
            h.update(chunk)
    return h.digest()


def _read_and_check(mnt: Path, want: dict[str, bytes]) -> bool:
    """Read every file whole with READERS threads at once, each checked against the source."""
    seen = {str(p.relative_to(mnt)) for p in mnt.rglob("*") if p.is_file()}
    if seen != set(want):
        return False
    with concurrent.futures.ThreadPoolExecutor(READERS) as pool:
        got = dict(zip(want, pool.map(_digest, (mnt / rel for rel in want)), strict=True))
    return all(got[rel] == hashlib.sha256(data).digest() for rel, data in want.items())


class Demo:
    def __init__(
        self, base: Path, *, quick: bool, keep: bool, real_node: bool = True, ha: bool = False
    ) -> None:
        self.base = base
        self.quick = quick
        self.keep = keep
        self.ha = ha  # the hub as replicas on a local etcd
        self.etcd: etcd.EtcdCluster | None = None
        self.hubs: list[HubProcess] = []  # every replica; `hub` is the first
        self.real_node = real_node  # asked for; `pods` says whether pods really run
        self.pods = ""  # the image's reference in the real node, once its pods can run
        self.host = "127.0.0.1"  # where the pods reach the S3 server and the agent
        self.clusters: list[cluster.LocalCluster] = []
        self.hub: HubProcess | None = None
        self.agents: dict[str, AgentProcess] = {}
        self.summary = Summary()
        self.step_no = 0
        self.total = (6 if quick else 8) + (1 if ha else 0)
        self.s3: S3Server | None = None
        self.workers: list[WorkerProcess] = []
        self.sidecar: SidecarProcess | None = None
        self.sample: dict[str, bytes] = {}
        # what runs in threads and starts processes (`_in_thread`): waited for at cleanup
        self.threads: set[asyncio.Future[Any]] = set()

    def step(self, text: str) -> None:
        self.step_no += 1
        console.print(f"[bold cyan][{self.step_no}/{self.total}][/bold cyan] {text}")

    def note(self, text: str) -> None:
        console.print(f"      {text}")

    async def timed(self, name: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        t0 = time.monotonic()
        result = await fn()
        self.summary.steps.append((name, time.monotonic() - t0))
        return result

    @property
    def ca_file(self) -> Path:
        return self.base / "hub" / "tls" / "ca.crt"

    @property
    def hub_urls(self) -> list[str]:
        """The URLs of the replicas running (the one hub's without --ha)."""
        return [h.url for h in self.hubs if h.proc is not None]

    def admin(self) -> Client:
        assert self.hub is not None
        return Client(self.hub_urls, self.hub.admin_token, ca_file=str(self.ca_file))

    async def run(self) -> Summary:
        if self.base.exists():
            await stop(self.base)
        self.base.mkdir(parents=True)
        try:
            await self.timed("start", self._start)
            await self.timed("place", self._place)
            await self.timed("reconcile", self._reconciled)
            await self.timed("webhook", self._webhook_pod)
            await self.timed("data path", self._data_path)
            if not self.quick:
                await self.timed("autoscaling", self._autoscale)
                await self.timed("edge autonomy", self._autonomy)
            if self.ha:
                await self.timed("failover", self._failover)
            await self._summarise()
        finally:
            # whole, even when a signal cancels this task again meanwhile
            await to_the_end(self._finish())
        return self.summary

    async def _finish(self) -> None:
        if self.keep:
            await asyncio.gather(*self.threads, return_exceptions=True)
            self._write_keep_state()
        else:
            await self._cleanup()

    async def _in_thread(self, fn: Callable[[], Any]) -> Any:
        """`fn()` in a thread that starts processes: a cancelled wait (a signal) does not
        stop the thread, so the cleanup waits for it before it stops what was started."""
        fut = asyncio.ensure_future(asyncio.to_thread(fn))
        self.threads.add(fut)
        fut.add_done_callback(self.threads.discard)
        return await asyncio.shield(fut)

    # --- the steps -----------------------------------------------------------------------

    async def _start(self) -> None:
        self.step(
            "Starting the hub and three local clusters (standard with Fluid, serverless, edge)"
        )
        missing = binaries.missing()
        if missing:
            self.note(
                f"first run: building {', '.join(missing)} from the Go module proxy "
                "(several minutes, once)"
            )
        await self._clusters()
        # over HTTPS, as across machines: a CA and certificate made in the hub's directory
        if self.ha:
            await self._hub_replicas()
        else:
            self.hub = HubProcess(self.base / "hub", extra=["--self-signed"]).start()
            self.hubs = [self.hub]
            self.note(
                f"hub on {self.hub.url} (catalog {self.base / 'hub' / 'catalog.db'}; "
                f"TLS, CA {self.ca_file})"
            )
        self.s3 = S3Server(self.base / "s3", host=self.host).start()
        # the credentials the mount's Secret would hold, for the workers and the sidecar
        os.environ.update(s3.CREDENTIALS)
        self.sample = sample_dataset(small=self.quick)
        await self.s3.upload(self.sample, prefix="imagenet")
        size = sum(len(v) for v in self.sample.values())
        self.note(
            f"S3 server (MinIO) on {self.s3.endpoint}: s3://datasets/imagenet, "
            f"{len(self.sample)} files, {size / 2**20:.0f} MiB generated"
        )
        for lc in self.clusters:
            toml = CLUSTERS[lc.kind].format(kubeconfig=lc.kubeconfig_path)
            path = self.base / f"{lc.kind}.toml"
            path.write_text(toml)
            spec = config.load(path).cluster
            assert spec is not None
            async with self.admin() as hub:
                token = (await hub.register_cluster(spec)).token
            agent = AgentProcess(
                self.base,
                lc.kind,
                lc.kind,
                str(lc.kubeconfig_path),
                ",".join(self.hub_urls),  # every replica: the agent fails over
                "",
                cluster_toml=toml,
                token=token,
            )
            settings = {
                "ca_file": json.dumps(str(self.ca_file)),
                # the webhook answers the API server's own client certificate only
                **lc.webhook_client_settings(),
            }
            if self.pods and lc.kind == "serverless":
                # its workers and sidecars run in pods: the agent's API where they reach it
                settings |= {
                    "api_host": json.dumps(self.host),
                    "worker_image": json.dumps(self.pods),
                    "sidecar_image": json.dumps(self.pods),
                }
            agent.write_config(**settings)
            self.agents[lc.kind] = agent.start()
            assert lc.state is not None
            self.note(
                f"cluster {lc.kind}: {lc.state.server}, {spec.mount_mode()} mounts, "
                f"agent pid {agent.proc.pid if agent.proc else '?'}"
            )

    async def _hub_replicas(self) -> None:
        """--ha: a 3-member etcd on loopback and two hub replicas sharing it (one data
        directory: the same admin token and CA, as a Secret would give them)."""
        members = etcd.EtcdCluster(self.base / "etcd", size=3)
        self.etcd = await self._in_thread(lambda: members.start(detach=True))
        self.note(f"etcd: 3 members on {', '.join(self.etcd.endpoints)} (v3.6, real processes)")
        cfg = self.base / "hub.toml"
        cfg.write_text(HA_HUB)
        flags = ["--self-signed", "--config", str(cfg), "--store", self.etcd.store_url]
        for _ in range(HA_REPLICAS):  # one after the other: the first makes the CA
            self.hubs.append(HubProcess(self.base / "hub", extra=flags).start())
        leader = await self._leader(within=30)
        # the leader first: the agents watch it, so its loss is theirs to fail over from
        self.hubs.sort(key=lambda h: h is not leader)
        self.hub = self.hubs[0]
        self.note(
            f"hub replicas on {', '.join(self.hub_urls)} (catalog on etcd; TLS, CA "
            f"{self.ca_file}); {leader.url} leads"
        )

    def _readyz(self, hub: HubProcess) -> str:
        """What a replica's /readyz says ("ok revision=N leader" where it leads); "" when it
        cannot be reached."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(hub.url + "/readyz", timeout=5, context=ctx) as r:
                return str(r.read().decode())
        except (urllib.error.URLError, OSError):
            return ""

    async def _leader(self, within: float, among: list[HubProcess] | None = None) -> HubProcess:
        """The replica that leads, once one does (of `among`, else of all running)."""

        async def leading() -> HubProcess | None:
            for h in among or [h for h in self.hubs if h.proc is not None]:
                if (await asyncio.to_thread(self._readyz, h)).endswith(" leader"):
                    return h
            return None

        try:
            found: HubProcess = await _until(leading, lambda h: h is not None, within, 0.2)
        except TimeoutError:
            raise RuntimeError(
                f"no hub replica leads after {within:.0f}s: see the replicas' output above "
                f"and etcd's logs in {self.base / 'etcd'}"
            ) from None
        return found

    async def _clusters(self) -> None:
        """The three clusters; the serverless one with a real node where this machine can
        run one, else (said in one line) as before."""

        def progress(m: str) -> None:
            if m.startswith("[testbin]") or "real node" in m:
                self.note(f"[dim]{m}[/dim]")

        why = demo_pods.unavailable() if self.real_node else "not asked for (--no-real-node)"
        specs: list[tuple[str, cluster.Kind]] = [(k, k) for k in cluster.KINDS]
        base = self.base / "clusters"
        if not why:
            try:
                self.clusters = await cluster.up_many(
                    specs, base_dir=base, progress=progress, real_nodes=frozenset({"serverless"})
                )
                node = next(c for c in self.clusters if c.kind == "serverless")
                self.pods = await demo_pods.image_on_node(node, progress)
                assert node.state is not None and node.state.network is not None
                self.host = node.state.network.host_ip
                async with await node.api_client() as api:
                    await demo_pods.cordon_kwok_nodes(api)
                    # the workers and sidecars in pods take the source's keys from the Secret
                    # the dataset names, as in any cluster
                    keys = {engines.ACCESS_KEY: s3.USER, engines.SECRET_KEY: s3.PASSWORD}
                    await demo_pods.source_secret(api, SECRET, ["ml", "research"], keys)
                self.note(
                    f"serverless: a real node on {node.state.network.node_ip} runs its pods "
                    "(its simulated nodes take none)"
                )
                return
            except (LocalClusterError, RuntimeError, OSError) as err:
                why = demo_pods.first_line(err)
                await asyncio.gather(*(c.down() for c in self.clusters), return_exceptions=True)
                self.pods, self.host = "", "127.0.0.1"
        self.note(f"[yellow]no real node: {why}; the sidecar and workers run as processes[/yellow]")
        self.clusters = await cluster.up_many(specs, base_dir=base, progress=progress)

    async def _place(self) -> None:
        self.step("Declaring one dataset, placed on every cluster, readable from two namespaces")
        path = self.base / "imagenet.toml"
        assert self.s3 is not None
        path.write_text(DATASET.format(endpoint=self.s3.endpoint, secret=SECRET))
        (ds,) = config.load(path).dataset
        async with self.admin() as hub:
            view = await hub.apply_dataset(ds)
        from fluidfed.cli import output

        output.console.print(output.bindings_table([v.binding for v in view.bindings]))

    async def _wait_view(self, ok: Callable[[DatasetView], bool], within: float) -> DatasetView:
        async with asyncio.timeout(within):
            while True:
                async with self.admin() as hub:
                    view = await hub.get_dataset("imagenet")
                if ok(view):
                    return view
                await asyncio.sleep(0.3)

    async def _reconciled(self) -> None:
        self.step("Agents make it real in each cluster")

        def sidecars_bound(v: DatasetView) -> bool:
            # every agent has reported; sidecar clusters have their cache workers running
            return all(b.status is not None for b in v.bindings) and all(
                b.status is not None and b.status.phase == "Bound"
                for b in v.bindings
                if b.binding.mode == "sidecar"
            )

        try:
            view = await self._wait_view(sidecars_bound, 120)
        except TimeoutError:
            if not self.pods:
                raise
            lc = next(c for c in self.clusters if c.kind == "serverless")
            report = await demo_pods.pods_report(lc, "ml")
            raise RuntimeError(
                f"the serverless cache workers not ready in 120s:\n{report}"
            ) from None
        for lc in self.clusters:
            objs = await _owned_objects(lc)
            self.note(f"{lc.kind}: {', '.join(objs) or 'nothing yet'}")
        self._record(view)

    async def _webhook_pod(self) -> None:
        self.step(
            "A pod on the serverless cluster asks for the dataset; the webhook adds the sidecar"
        )

        lc = next(c for c in self.clusters if c.kind == "serverless")
        if self.pods:  # this one runs: it reads the dataset and checks every byte
            pod = demo_pods.app_pod("train", self.pods, demo_pods.TRAIN, {"WANT": self._want()})
            await self._webhook_pod_stored(lc, pod)
            return
        pod = {
            "metadata": {"name": "train", "labels": {names.INJECT_LABEL: "true"}},
            "spec": {
                "containers": [
                    {
                        "name": "train",
                        "image": "python:3.12",
                        "command": ["python", "train.py", "--data", "/data"],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    }
                ],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "imagenet"}}],
            },
        }
        await self._webhook_pod_stored(lc, pod)

    async def _webhook_pod_stored(self, lc: cluster.LocalCluster, pod: Any) -> None:
        from kubernetes_asyncio import client

        async with await lc.api_client() as api:
            core = client.CoreV1Api(api)
            # the API server takes a moment to pick a new webhook configuration up
            got: Any = None
            for _ in range(60):
                got = await core.create_namespaced_pod("ml", pod)
                if (got.metadata.annotations or {}).get(names.INJECTED_ANNOTATION):
                    break
                await core.delete_namespaced_pod(
                    pod["metadata"]["name"], "ml", grace_period_seconds=0
                )
                await asyncio.sleep(0.5)
            else:
                raise RuntimeError("the serverless cluster's API server never called the webhook")
        side = got.spec.init_containers[0]
        inits = [c.name for c in got.spec.init_containers]
        self.note(
            f"pod ml/train as stored: init containers {inits}, "
            f"containers {[c.name for c in got.spec.containers]}"
        )
        self.note(
            f"sidecar {side.name}: {' '.join(side.args)} (restartPolicy {side.restart_policy})"
        )
        vol = next(v for v in got.spec.volumes if v.name == "data")
        shared = "an emptyDir shared with the sidecar" if vol.empty_dir is not None else vol
        self.note(f"volume data: {shared}")
        self.summary.injected = side.name

    def _want(self) -> str:
        """What namespace ml reads (sub-path train), as {file: sha256} for the app pod."""
        return json.dumps(
            {
                k.removeprefix("train/"): hashlib.sha256(v).hexdigest()
                for k, v in self.sample.items()
                if k.startswith("train/")
            }
        )

    async def _data_path_in_pods(self) -> None:
        self.step("The app reads the dataset inside its pod; cache workers in pods hold its blocks")
        from kubernetes_asyncio import client

        lc = next(c for c in self.clusters if c.kind == "serverless")
        rates = []
        async with await lc.api_client() as api:
            for label, name in (("cold", "train"), ("warm", "train-again")):
                if name != "train":  # a new pod, a new sidecar: what it finds is the workers'
                    pod: Any = demo_pods.app_pod(
                        name, self.pods, demo_pods.TRAIN, {"WANT": self._want()}
                    )
                    await client.CoreV1Api(api).create_namespaced_pod("ml", pod)
                done = await demo_pods.finished(api, "ml", name, within=300)
                got = await demo_pods.result(api, "ml", name)
                rate = got["bytes"] / 2**20 / got["seconds"] if got["seconds"] else 0.0
                rates.append(rate)
                ok = got["match"] and got["listed"]
                self.note(
                    f"{label}: pod ml/{name} on {done.spec.node_name} read {got['files']} files, "
                    f"{got['bytes'] / 2**20:.0f} MiB with {READERS} parallel readers at "
                    f"{rate:.0f} MiB/s; bytes {'match the source' if ok else 'DIFFER'}"
                )
                if not ok:
                    raise RuntimeError("the bytes read inside the pod differ from the source")
        self.summary.speedup = rates[1] / rates[0] if rates[0] else 0.0
        self.summary.read = f"in the pod: cold {rates[0]:.0f} MiB/s, warm {rates[1]:.0f} MiB/s"
        self.note(
            f"warm over cold: {self.summary.speedup:.1f}x (measured inside the pod: FUSE "
            "sidecar, cache workers in pods on the same node, one shared 2-core machine)"
        )

    async def _data_path(self) -> None:
        if self.pods:
            await self._data_path_in_pods()
            return
        self.step("The sidecar mounts the dataset here; two cache workers hold its blocks")
        from kubernetes_asyncio import client

        lc = next(c for c in self.clusters if c.kind == "serverless")
        async with await lc.api_client() as api:
            cm = await client.CoreV1Api(api).read_namespaced_config_map(
                objects.config_name("imagenet"), "ml"
            )
            # and the credentials it keeps in Secrets, as the pods would mount them
            creds = await secrets.worker_credentials(api, "ml", "imagenet")
            token = await secrets.reader_token(api, "ml", "imagenet")
        # the configs the agent wrote for the StatefulSet's pods, run here as processes
        # (on loopback, where the workers' Service names and their TLS do not apply)
        ports = [cluster.free_port() for _ in range(2)]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        wcfg = on_loopback(json.loads(cm.data[names.WORKER_CONFIG]), urls)
        scfg = on_loopback(json.loads(cm.data[names.SIDECAR_CONFIG]), urls)
        # metrics every second rather than every 5 s: the autoscaling step is quicker
        os.environ.setdefault("OTEL_METRIC_EXPORT_INTERVAL", "1000")
        for i, port in enumerate(ports):
            self.workers.append(
                WorkerProcess(self.base / f"worker-{i}", wcfg, port, creds=creds).start()
            )
        self.note(f"cache workers on {', '.join(urls)}, registered with the serverless agent")
        self.note(f"mounted at {self.base / 'mnt'} (namespace ml's view: sub-path train)")
        want = {
            k.removeprefix("train/"): v for k, v in self.sample.items() if k.startswith("train/")
        }
        size = sum(len(v) for v in want.values())
        mnt = self.base / "mnt"
        rates = []
        for label in ("cold", "warm"):
            sc = SidecarProcess(self.base / f"sidecar-{label}", scfg, mnt, token=token).start()
            self.sidecar = sc
            t0 = time.monotonic()
            ok = await asyncio.to_thread(_read_and_check, mnt, want)
            rate = size / 2**20 / (time.monotonic() - t0)
            rates.append(rate)
            st = sc.status()["blocks"]
            self.note(
                f"{label}: {len(want)} files, {size / 2**20:.0f} MiB read by {READERS} parallel "
                f"readers at {rate:.0f} MiB/s; bytes {'match the source' if ok else 'DIFFER'}"
            )
            self.note(
                f"      blocks: {st['worker_hits']} cached at the workers, "
                f"{st['worker_misses']} from S3"
            )
            if not ok:
                raise RuntimeError("the bytes read through the mount differ from the source")
            if label == "cold" or (self.quick and not self.keep):
                sc.stop()
                self.sidecar = None
        self.summary.speedup = rates[1] / rates[0] if rates[0] else 0.0
        self.summary.read = f"cold {rates[0]:.0f} MiB/s, warm {rates[1]:.0f} MiB/s"
        self.note(
            f"warm over cold: {self.summary.speedup:.1f}x (small files on one shared 2-core "
            "machine: bench/read_path.py measures the data path's own figures)"
        )

    async def _autoscale(self) -> None:
        self.step("Reads drive the cache workers up; idleness brings them down")
        shown: set[float] = set()

        async def serverless() -> Any:
            async with self.admin() as hub:
                view = await hub.get_dataset("imagenet")
            v = next(b for b in view.bindings if b.binding.cluster == "serverless")
            for d in v.decisions:
                if d.at not in shown and d.replicas != d.current:
                    shown.add(d.at)
                    self.note(f"decision: {d.reason}")
            return v

        start = (await serverless()).binding.replicas
        t0 = time.monotonic()
        async with self._load():
            where = "in pod ml/load" if self.pods else "through the mount"
            self.note(f"reading {where} as fast as it goes ({start} workers)")
            v = await _until(serverless, lambda b: b.binding.replicas > start, 180, 0.5)
            figures = v.status.metrics if v.status else Figures()
            rate = (figures.read_bytes_per_second or 0.0) / 2**20
            self.note(
                f"{time.monotonic() - t0:.1f}s after the load began: {v.binding.replicas} "
                f"workers (reads {rate:.0f} MiB/s at the agent)"
            )
        t1 = time.monotonic()
        self.note("the load stops")
        v = await _until(serverless, lambda b: b.binding.replicas <= start, 180, 1.0)
        self.note(
            f"{time.monotonic() - t1:.0f}s after the load stopped: back to "
            f"{v.binding.replicas} workers (the agent's window, then the 20s scale-down window)"
        )
        self.summary.autoscale = f"{start} -> {max(d.replicas for d in v.decisions)} -> {start}"

    @contextlib.asynccontextmanager
    async def _load(self) -> AsyncIterator[None]:
        """Reads as fast as they go while inside: a pod on the real node (its sidecar's
        figures reach the agent), else a thread reading the demo's own mount."""
        if not self.pods:
            assert self.sidecar is not None
            stop = threading.Event()
            reader = threading.Thread(target=_read_loop, args=(self.sidecar.mountpoint, stop))
            reader.start()
            try:
                yield
            finally:
                stop.set()
                await asyncio.to_thread(reader.join, 30)
            return
        from kubernetes_asyncio import client

        lc = next(c for c in self.clusters if c.kind == "serverless")
        pod: Any = demo_pods.app_pod("load", self.pods, demo_pods.LOAD, {})
        async with await lc.api_client() as api:
            core = client.CoreV1Api(api)
            await core.create_namespaced_pod("ml", pod)
            try:
                yield
            finally:
                await core.delete_namespaced_pod("load", "ml")

    async def _autonomy(self) -> None:
        self.step("The hub goes away; the edge keeps working from its state on disk")
        assert self.hub is not None
        edge = next(c for c in self.clusters if c.kind == "edge")
        for h in self.hubs:
            h.stop()
        self.note("hub stopped" if len(self.hubs) == 1 else "every hub replica stopped")
        from kubernetes_asyncio import client

        async with await edge.api_client() as api:
            core = client.CoreV1Api(api)
            await core.delete_namespaced_config_map(objects.config_name("imagenet"), "ml")
            self.note("deleted ConfigMap ml/fluidfed-imagenet on the edge by hand")
            t0 = time.monotonic()
            async with asyncio.timeout(60):
                while True:
                    with contextlib.suppress(client.ApiException):
                        await core.read_namespaced_config_map(objects.config_name("imagenet"), "ml")
                        break
                    await asyncio.sleep(0.2)
            self.note(f"the edge agent restored it in {time.monotonic() - t0:.1f}s, hub still down")
        agent = self.agents["edge"]
        agent.stop()
        agent.start()
        self.note("edge agent restarted with the hub still down: it carries on from disk")
        for h in self.hubs:
            h.start()
        self.note(f"hub back on {', '.join(self.hub_urls)}")
        view = await self._wait_view(
            lambda v: any(
                b.binding.cluster == "edge"
                and b.status is not None
                and b.status.hub_last_seen > 0
                and b.status.phase == "Bound"
                for b in v.bindings
            ),
            60,
        )
        self.note("status caught up at the hub")
        self._record(view)

    async def _failover(self) -> None:
        self.step("The leading hub replica is killed with SIGKILL; the other takes over")
        leader = await self._leader(within=30)
        async with self.admin() as hub:
            before = await hub.get_dataset("imagenet")
            clusters = sorted(c.spec.name for c in await hub.list_clusters())
        acked = {b.binding.name: b.binding.revision for b in before.bindings}
        pid = leader.proc.pid if leader.proc else 0
        leader.stop(signal.SIGKILL)
        self.note(f"killed the leading replica {leader.url} (pid {pid}) with SIGKILL")
        if leader is not self.hubs[0]:  # the lead moved since the agents were started
            self.note(
                f"(the lead had moved: the agents' first hub URL is {self.hubs[0].url}, "
                "the replica left, so their watches there carry on)"
            )
        t0 = time.monotonic()
        new = await self._leader(within=30)
        said = await asyncio.to_thread(self._readyz, new)
        self.note(f"{new.url} leads {time.monotonic() - t0:.1f}s later (/readyz: {said})")
        async with self.admin() as hub:
            after = await hub.get_dataset("imagenet")
            clusters_after = sorted(c.spec.name for c in await hub.list_clusters())
        got = {b.binding.name: b.binding.revision for b in after.bindings}
        lost = [n for n, rev in acked.items() if got.get(n, -1) < rev]
        if lost or clusters_after != clusters or after.generation < before.generation:
            raise RuntimeError(
                f"the replica left lost acknowledged writes: bindings {lost or 'none'}, "
                f"clusters {clusters} before and {clusters_after} after, dataset generation "
                f"{before.generation} before and {after.generation} after"
            )
        self.note(
            f"nothing lost: {len(clusters_after)} clusters, dataset imagenet at generation "
            f"{after.generation} and its {len(got)} bindings, as acknowledged before the kill"
        )
        (ds,) = config.load(self.base / "imagenet.toml").dataset
        ds = msgspec.structs.replace(ds, description=ds.description + " (after the failover)")
        t1 = time.monotonic()
        async with self.admin() as hub:
            gen = (await hub.apply_dataset(ds)).generation
        self.note(f"applied imagenet again through {new.url}: generation {gen}")

        def reconciled(v: DatasetView) -> bool:
            return all(b.status is not None and b.status.observed_generation >= gen
                       for b in v.bindings)  # fmt: skip

        view = await self._wait_view(reconciled, 90)
        self.note(
            f"every agent's watch resumed on {new.url}: generation {gen} reconciled in "
            f"{', '.join(b.binding.cluster for b in view.bindings)} "
            f"{time.monotonic() - t1:.1f}s after the apply"
        )
        await self._in_thread(leader.start)
        said = await asyncio.to_thread(self._readyz, leader)
        self.note(f"{leader.url} restarted on the same URL and follows (/readyz: {said})")
        self._record(view)

    def _record(self, view: DatasetView) -> None:
        self.summary.rows = [
            (
                b.binding.cluster,
                b.binding.mode,
                str(b.binding.replicas),
                b.status.phase if b.status else "Pending",
                str(b.status.ready_workers) if b.status else "-",
            )
            for b in view.bindings
        ]

    async def _summarise(self) -> None:
        self.step("Summary")
        t = Table(box=None, header_style="bold")
        for col in ("CLUSTER", "MODE", "REPLICAS", "PHASE", "READY WORKERS"):
            t.add_column(col)
        for row in self.summary.rows:
            t.add_row(*row)
        console.print(t)
        if self.summary.injected:
            self.note(f"webhook: sidecar {self.summary.injected} injected on serverless")
        if self.summary.read:
            self.note(
                f"reads through the mount: {self.summary.read} "
                f"({self.summary.speedup:.1f}x warm over cold)"
            )
        if self.summary.autoscale:
            self.note(f"autoscaling on serverless: {self.summary.autoscale} cache workers")
        timings = ", ".join(f"{n} {s:.1f}s" for n, s in self.summary.steps)
        self.note(f"timings: {timings}")
        self.note("csi clusters report Pending until Fluid's own controllers bind the Dataset")

    # --- keeping and cleaning up ---------------------------------------------------------

    def _write_keep_state(self) -> None:
        state = DemoState(
            hub_pid=self.hub.proc.pid if self.hub and self.hub.proc else 0,
            agent_pids={k: a.proc.pid for k, a in self.agents.items() if a.proc},
            hub_url=self.hub.url if self.hub else "",
            hub_pids=[h.proc.pid for h in self.hubs if h.proc is not None],
            other_pids=[
                p.proc.pid
                for p in [self.s3, *self.workers, self.sidecar]
                if p is not None and p.proc is not None
            ],
            mountpoint=str(self.base / "mnt") if self.sidecar else "",
        )
        (self.base / "demo.json").write_bytes(msgspec.json.encode(state))
        console.print("\nLeft running (remove with `fluidfed demo down`):")
        if self.hub:
            urls = ",".join(self.hub_urls)
            console.print(f"  export FLUIDFED_HUB={urls} FLUIDFED_CA_FILE={self.ca_file}")
            console.print(f"  export FLUIDFED_TOKEN=$(cat {self.base / 'hub' / 'admin-token'})")
            console.print("  fluidfed get bindings; fluidfed describe dataset imagenet")
        for lc in self.clusters:
            console.print(f"  kubeconfig {lc.kind}: {lc.kubeconfig_path}")
        if self.sidecar is not None:
            console.print(
                f"  the dataset (ml's view, sub-path train): ls {self.sidecar.mountpoint}"
            )
        if self.s3 is not None:
            console.print(f"  S3 server: {self.s3.endpoint} (bucket datasets)")
        if self.etcd is not None:
            console.print(f"  etcd: {self.etcd.store_url} (the hub replicas' catalog)")

    async def _cleanup(self) -> None:
        await asyncio.gather(*self.threads, return_exceptions=True)
        if self.sidecar is not None:
            self.sidecar.close()
        for w in self.workers:
            w.stop()
        if self.s3 is not None:
            self.s3.stop()
        force_unmount(self.base / "mnt")
        for a in self.agents.values():
            a.stop()
        for h in self.hubs:
            h.stop()
        if self.ha:  # (the members a start cut short started too: as `stop` finds them)
            await asyncio.to_thread(etcd.down, self.base / "etcd")
        await asyncio.gather(*(c.down() for c in self.clusters), return_exceptions=True)
        shutil.rmtree(self.base, ignore_errors=True)
        with contextlib.suppress(OSError):  # (a terminal that hung up: EIO)
            console.print("[dim]cleaned up: processes stopped, clusters and files removed[/dim]")


async def _owned_objects(lc: cluster.LocalCluster) -> list[str]:
    from kubernetes_asyncio import client

    sel = names.OWNED_SELECTOR
    out: list[str] = []
    async with await lc.api_client() as api:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        cms = (await core.list_config_map_for_all_namespaces(label_selector=sel)).items
        if cms:
            out.append(f"{len(cms)} ConfigMaps")
        sts = (await apps.list_stateful_set_for_all_namespaces(label_selector=sel)).items
        for s in sts:
            out.append(
                f"StatefulSet {s.metadata.namespace}/{s.metadata.name} "
                f"{s.status.ready_replicas or 0}/{s.spec.replicas} ready"
            )
        custom = client.CustomObjectsApi(api)
        for plural in ("datasets", "thinruntimes"):
            with contextlib.suppress(client.ApiException):
                got = await custom.list_cluster_custom_object(
                    names.FLUID_GROUP, names.FLUID_VERSION, plural
                )
                items = [
                    i for i in got["items"] if i["metadata"].get("labels", {}).get(names.MANAGED_BY)
                ]
                if items:
                    kind = "Fluid Datasets" if plural == "datasets" else "ThinRuntimes"
                    where = ", ".join(
                        f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in items
                    )
                    out.append(f"{kind} {where}")
    return out


async def to_the_end(step: Awaitable[None]) -> None:
    """Await `step` to its end, whatever cancels the caller meanwhile (a signal during the
    demo's cleanup must not cut it short), then let that cancellation through."""
    task = asyncio.ensure_future(step)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


async def stop(base: Path) -> None:
    """Stop what a kept demo left running and remove its files."""
    state_file = base / "demo.json"
    if state_file.exists():
        state = msgspec.json.decode(state_file.read_bytes(), type=DemoState)
        hubs = {state.hub_pid, *state.hub_pids}
        pids = [p for p in [*state.other_pids, *state.agent_pids.values(), *hubs] if p]
        await _terminate(pids)
        if state.mountpoint:
            force_unmount(Path(state.mountpoint))
    # --ha: the etcd members (after the hubs, which write to them until they stop)
    await asyncio.to_thread(etcd.down, base / "etcd")
    for st in cluster.list_clusters(base / "clusters"):
        await cluster.LocalCluster(st.name, st.kind, base_dir=base / "clusters").down()
    shutil.rmtree(base, ignore_errors=True)


async def _terminate(pids: list[int], grace: float = 15.0) -> None:
    """SIGTERM, then wait for them to be gone (the sidecar unmounts, workers try their
    hand-off); SIGKILL what is still there after `grace` seconds. They are not our
    children, so liveness is probed with signal 0."""

    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

    async def remaining() -> list[int]:
        return [p for p in pids if pid_alive(p)]

    with contextlib.suppress(TimeoutError):
        await _until(remaining, lambda left: not left, grace, 0.1)
    for pid in await remaining():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
