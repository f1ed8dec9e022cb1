"""Fixtures of the integration tests: a hub and one agent per local cluster (the fleet),
and Kubernetes clients for the session's clusters."""

import json
import os
import ssl
import subprocess
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from devkit import testing
from devkit.local import cluster, etcd
from devkit.testing import AgentProcess, HubProcess, NotYet, eventually_blocking, run_cli
from fluidfed import Client
from fluidfed.models import (
    Access,
    CacheSpec,
    Dataset,
    DatasetView,
    Mount,
    Placement,
)

CAPS = {
    "standard": {"csi": True, "fluid": True, "privileged": True},
    "serverless": {"privileged": True},  # this platform admits the privileged sidecar
    "edge": {"privileged": True, "native_sidecar": False},
}


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[etcd.EtcdCluster]:
    """A real 3-member etcd on loopback, once per session; each hub gets its own prefix."""
    with etcd.EtcdCluster(tmp_path_factory.mktemp("etcd")) as members:
        yield members
    left = [p.pid for p in members.procs.values() if p.poll() is None]
    assert not left, f"etcd members left behind: {left}"


@pytest.fixture(params=["sqlite", "etcd"])
def store_flags(request: pytest.FixtureRequest) -> list[str]:
    """`hub serve` flags for each catalog store: the embedded SQLite file, and etcd (a
    fresh prefix of the session's cluster, so every test starts from an empty catalog)."""
    if request.param == "sqlite":
        return []
    members: etcd.EtcdCluster = request.getfixturevalue("etcd_cluster")
    return ["--store", members.store_url, "--etcd-prefix", f"/t-{uuid.uuid4().hex[:12]}/"]


def cli(
    hub: HubProcess, *args: str, token: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The `fluidfed` command line as a user runs it, against `hub`."""
    env = {**os.environ, "FLUIDFED_HUB": hub.url, "FLUIDFED_TOKEN": token or hub.admin_token}
    if hub.ca_file:
        env["FLUIDFED_CA_FILE"] = hub.ca_file
    return run_cli(*args, env=env, timeout=timeout)


class Fleet:
    def __init__(
        self,
        hub: HubProcess,
        agents: dict[str, AgentProcess],
        clusters: dict[str, cluster.LocalCluster],
    ) -> None:
        self.hub = hub
        self.agents = agents
        self.clusters = clusters

    def admin(self) -> Client:
        return Client(self.hub.url, self.hub.admin_token, ca_file=self.hub.ca_file)

    async def view(self, name: str) -> DatasetView:
        async with self.admin() as c:
            return await c.get_dataset(name)


@pytest.fixture
def fleet(local_clusters: dict[str, cluster.LocalCluster], tmp_path: Path) -> Iterator[Fleet]:
    # over HTTPS, as across machines: agents and clients verify the hub's self-signed CA
    hub = HubProcess(tmp_path / "hub", extra=["--self-signed"]).start()
    agents = {
        kind: AgentProcess(
            tmp_path,
            kind,
            kind,
            str(lc.kubeconfig_path),
            hub.url,
            hub.admin_token,
            labels={"env": "test"},
            capabilities=CAPS[kind],
            ca_file=hub.ca_file,
        )
        for kind, lc in local_clusters.items()
    }
    for kind, a in agents.items():
        # the webhook answers only the API server's own client certificate (its admission
        # configuration: `cluster.WEBHOOK_CLIENT_CN`)
        a.write_config(**local_clusters[kind].webhook_client_settings())
        a.start()
    _wait_registered(hub, set(agents))
    try:
        yield Fleet(hub, agents, local_clusters)
    finally:
        for a in agents.values():
            a.stop()
            # shown by pytest when the test failed
            print(f"--- agent {a.name} log (tail) ---\n{a.log_text()[-3000:]}")
        if hub.errors is not None:
            print(f"--- hub stderr (tail) ---\n{hub.errors.tail()}")
        hub.stop()


def _wait_registered(hub: HubProcess, names: set[str], within: float = 60) -> None:
    req = urllib.request.Request(
        hub.url + "/api/v1/clusters", headers={"Authorization": f"Bearer {hub.admin_token}"}
    )

    ctx = ssl.create_default_context(cafile=hub.ca_file) if hub.ca_file else None

    def registered() -> bool | NotYet:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
            seen = {c["spec"]["name"] for c in json.loads(resp.read())}
        return names <= seen or NotYet(f"not registered: {sorted(names - seen)}")

    eventually_blocking(registered, "the agents to register", timeout=within)


def dataset(name: str, **kw: Any) -> Dataset:
    base: dict[str, Any] = {
        "namespace": f"{name}-home",
        "mounts": [
            Mount(
                uri="s3://bucket/data",
                options={"endpoint": "http://127.0.0.1:9000"},
                secret="s3-creds",
            )
        ],
        "access": [
            Access(namespace=f"{name}-home", sub_path="train"),
            Access(namespace=f"{name}-other", sub_path="val"),
        ],
        "cache": CacheSpec(replicas=1, max_replicas=5, tiers=[testing.cache_tier("MEM", 2**30)]),
        "placement": Placement(selector=None),
    }
    return testing.dataset(name, **{**base, **kw})


@pytest.fixture
async def apis(local_clusters: dict[str, cluster.LocalCluster]) -> AsyncIterator[dict[str, Any]]:
    opened = {k: await lc.api_client() for k, lc in local_clusters.items()}
    try:
        yield opened
    finally:
        for api in opened.values():
            await api.close()


async def bound_view(fleet: Fleet, name: str) -> Any:
    """The view once its one binding is Bound; else a falsy note of where it stands (with
    its cluster's cache workers as Kubernetes has them)."""
    v = await fleet.view(name)
    st = v.bindings[0].status if v.bindings else None
    if st is not None and st.phase == "Bound":
        return v
    where = [await workers_report(fleet, b.binding.cluster, v.spec) for b in v.bindings]
    return NotYet(
        f"bindings={[b.binding.name for b in v.bindings]} status={st}\n" + "\n".join(where)
    )


async def workers_report(fleet: Fleet, kind: str, ds: Dataset) -> str:
    """A binding's cache workers as its cluster has them: the StatefulSet's status, each
    pod's phase, node and conditions, and the nodes' Ready condition and taints. What a wait
    for Bound says when it gives up: a binding the agent still calls Pending while its
    StatefulSet counts the pods ready is the agent's fault; pods not Ready (kwok's node
    NotReady or tainted, say) the cluster's."""
    if kind not in fleet.clusters:
        return f"{kind}: not a cluster of this fleet"
    out = [f"{kind}:"]
    api = await fleet.clusters[kind].api_client()
    try:
        try:
            sts = await client.AppsV1Api(api).read_namespaced_stateful_set(
                f"fluidfed-{ds.name}-cache", ds.namespace
            )
            s = sts.status
            out.append(
                f"  StatefulSet replicas={s.replicas} ready={s.ready_replicas} "
                f"current={s.current_replicas} observedGeneration={s.observed_generation}"
                f"/{sts.metadata.generation}"
            )
        except ApiException as err:
            out.append(f"  StatefulSet: {err.status} {err.reason}")
        core = client.CoreV1Api(api)
        for p in (await core.list_namespaced_pod(ds.namespace)).items:
            conds = {
                c.type: f"{c.status}{'/' + c.reason if c.reason else ''}"
                for c in p.status.conditions or []
            }
            out.append(f"  pod {p.metadata.name} on {p.spec.node_name}: {p.status.phase} {conds}")
        for n in (await core.list_node()).items:
            ready = [c for c in n.status.conditions or [] if c.type == "Ready"]
            taints = [f"{t.key}:{t.effect}" for t in n.spec.taints or []]
            out.append(
                f"  node {n.metadata.name}: Ready={ready[0].status if ready else '?'} taints={taints}"
            )
    except Exception as err:  # the report must not hide the wait's own failure
        out.append(f"  (no report: {err!r})")
    finally:
        await api.close()
    return "\n".join(out)
