"""`fluidfed demo`: the federation on one machine, in one command, on embedded defaults.

A hub on SQLite, three real local clusters (standard with Fluid's CRDs, serverless,
edge), one agent per cluster, one dataset declared once and placed on all three. Then the
edge keeps working while the hub is away. Everything runs as separate processes, as in a
real deployment; everything is removed at the end (also on Ctrl-C) unless --keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from fluidfed import config
from fluidfed.client import Client
from fluidfed.local import binaries, cluster, paths
from fluidfed.local.processes import AgentProcess, HubProcess
from fluidfed.models import DatasetView

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
privileged = false
native_sidecar = true
fuse_device_resource = "smarter-devices/fuse"
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

DATASET = """\
[dataset]
name = "imagenet"
namespace = "ml"
description = "ImageNet training set, declared once for the whole fleet"

[[dataset.mounts]]
uri = "s3://datasets/imagenet"
options = { endpoint = "http://127.0.0.1:9000", region = "us-east-1" }
secret = "imagenet-s3"

[dataset.cache]
replicas = 2
max_replicas = 4

[[dataset.cache.tiers]]
medium = "MEM"
quota = "2GiB"

[dataset.placement]
selector = { match_expressions = [{ key = "env", operator = "In", values = ["prod", "edge"] }] }

[[dataset.access]]
namespace = "ml"
sub_path = "train"

[[dataset.access]]
namespace = "research"
sub_path = "val"
"""


def default_dir() -> Path:
    return paths.cache_dir("demo", "FLUIDFED_DEMO_DIR")


class DemoState(msgspec.Struct):
    """What `--keep` leaves running, for `fluidfed demo down`."""

    hub_pid: int = 0
    agent_pids: dict[str, int] = {}
    hub_url: str = ""


@dataclass
class Summary:
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    steps: list[tuple[str, float]] = field(default_factory=list)


class Demo:
    def __init__(self, base: Path, *, quick: bool, keep: bool) -> None:
        self.base = base
        self.quick = quick
        self.keep = keep
        self.clusters: list[cluster.LocalCluster] = []
        self.hub: HubProcess | None = None
        self.agents: dict[str, AgentProcess] = {}
        self.summary = Summary()
        self.step_no = 0
        self.total = 4 if quick else 5

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

    def admin(self) -> Client:
        assert self.hub is not None
        return Client(self.hub.url, self.hub.admin_token)

    async def run(self) -> Summary:
        if self.base.exists():
            await stop(self.base)
        self.base.mkdir(parents=True)
        try:
            await self.timed("start", self._start)
            await self.timed("place", self._place)
            await self.timed("reconcile", self._reconciled)
            if not self.quick:
                await self.timed("edge autonomy", self._autonomy)
            await self._summarise()
        finally:
            if self.keep:
                self._write_keep_state()
            else:
                await self._cleanup()
        return self.summary

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
        self.clusters = await cluster.up_many(
            [(k, k) for k in cluster.KINDS],
            base_dir=self.base / "clusters",
            progress=lambda m: self.note(f"[dim]{m}[/dim]") if m.startswith("[testbin]") else None,
        )
        self.hub = HubProcess(self.base / "hub").start()
        self.note(f"hub on {self.hub.url} (catalog {self.base / 'hub' / 'catalog.db'})")
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
                self.hub.url,
                "",
                cluster_toml=toml,
                token=token,
            )
            self.agents[lc.kind] = agent.start()
            assert lc.state is not None
            self.note(
                f"cluster {lc.kind}: {lc.state.server}, {spec.mount_mode()} mounts, "
                f"agent pid {agent.proc.pid if agent.proc else '?'}"
            )

    async def _place(self) -> None:
        self.step("Declaring one dataset, placed on every cluster, readable from two namespaces")
        path = self.base / "imagenet.toml"
        path.write_text(DATASET)
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

        view = await self._wait_view(sidecars_bound, 120)
        for lc in self.clusters:
            objs = await _owned_objects(lc)
            self.note(f"{lc.kind}: {', '.join(objs) or 'nothing yet'}")
        self._record(view)

    async def _autonomy(self) -> None:
        self.step("The hub goes away; the edge keeps working from its state on disk")
        assert self.hub is not None
        edge = next(c for c in self.clusters if c.kind == "edge")
        self.hub.stop()
        self.note("hub stopped")
        from kubernetes_asyncio import client

        async with await edge.api_client() as api:
            core = client.CoreV1Api(api)
            await core.delete_namespaced_config_map("fluidfed-imagenet", "ml")
            self.note("deleted ConfigMap ml/fluidfed-imagenet on the edge by hand")
            t0 = time.monotonic()
            async with asyncio.timeout(60):
                while True:
                    with contextlib.suppress(client.ApiException):
                        await core.read_namespaced_config_map("fluidfed-imagenet", "ml")
                        break
                    await asyncio.sleep(0.2)
            self.note(f"the edge agent restored it in {time.monotonic() - t0:.1f}s, hub still down")
        agent = self.agents["edge"]
        agent.stop()
        agent.start()
        self.note("edge agent restarted with the hub still down: it carries on from disk")
        self.hub.start()
        self.note(f"hub back on {self.hub.url}")
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
        timings = ", ".join(f"{n} {s:.1f}s" for n, s in self.summary.steps)
        self.note(f"timings: {timings}")
        self.note("csi clusters report Pending until Fluid's own controllers bind the Dataset")

    # --- keeping and cleaning up ---------------------------------------------------------

    def _write_keep_state(self) -> None:
        state = DemoState(
            hub_pid=self.hub.proc.pid if self.hub and self.hub.proc else 0,
            agent_pids={k: a.proc.pid for k, a in self.agents.items() if a.proc},
            hub_url=self.hub.url if self.hub else "",
        )
        (self.base / "demo.json").write_bytes(msgspec.json.encode(state))
        console.print("\nLeft running (remove with `fluidfed demo down`):")
        if self.hub:
            console.print(f"  export FLUIDFED_HUB={self.hub.url}")
            console.print(f"  export FLUIDFED_TOKEN=$(cat {self.base / 'hub' / 'admin-token'})")
            console.print("  fluidfed get bindings; fluidfed describe dataset imagenet")
        for lc in self.clusters:
            console.print(f"  kubeconfig {lc.kind}: {lc.kubeconfig_path}")

    async def _cleanup(self) -> None:
        for a in self.agents.values():
            a.stop()
        if self.hub is not None:
            self.hub.stop()
        await asyncio.gather(*(c.down() for c in self.clusters), return_exceptions=True)
        shutil.rmtree(self.base, ignore_errors=True)
        console.print("[dim]cleaned up: processes stopped, clusters and files removed[/dim]")


async def _owned_objects(lc: cluster.LocalCluster) -> list[str]:
    from kubernetes_asyncio import client

    sel = "fluidfed.io/managed-by=fluidfed-agent"
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
                got = await custom.list_cluster_custom_object("data.fluid.io", "v1alpha1", plural)
                items = [
                    i
                    for i in got["items"]
                    if i["metadata"].get("labels", {}).get("fluidfed.io/managed-by")
                ]
                if items:
                    kind = "Fluid Datasets" if plural == "datasets" else "ThinRuntimes"
                    where = ", ".join(
                        f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in items
                    )
                    out.append(f"{kind} {where}")
    return out


async def stop(base: Path) -> None:
    """Stop what a kept demo left running and remove its files."""
    state_file = base / "demo.json"
    if state_file.exists():
        state = msgspec.json.decode(state_file.read_bytes(), type=DemoState)
        for pid in [*state.agent_pids.values(), state.hub_pid]:
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
    for st in cluster.list_clusters(base / "clusters"):
        await cluster.LocalCluster(st.name, st.kind, base_dir=base / "clusters").down()
    shutil.rmtree(base, ignore_errors=True)
