"""Local Kubernetes clusters on loopback: real etcd, kube-apiserver, controller-manager,
scheduler, and kwok simulating the nodes. For the tests and `fluidfed demo`.

Each cluster lives in its own directory (certificates, kubeconfig, logs, etcd data and a
state file) so the CLI can start one (`fluidfed local up`) and another process can list or
stop it. Processes run in their own sessions and are stopped by process group.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import msgspec
import yaml

from devkit.local import binaries, crds, image, netns, paths, realnode
from fluidfed import names, pki
from fluidfed.errors import LocalClusterError
from fluidfed.models import CLUSTER_KINDS, ClusterKind

Kind = ClusterKind
KINDS = CLUSTER_KINDS
SERVICE_CIDR = "10.96.0.0/16"
# the common name of the client certificate a local cluster's API server presents to the
# webhooks it calls (its admission configuration), which a fluidfed agent's webhook can
# require (webhook_client_name); signed by the cluster's CA (pki/ca.crt)
WEBHOOK_CLIENT_CN = "kube-apiserver-webhook-client"
POD_CIDR = "10.244.0.1/16"
VIRTUAL_NODE_TAINT = {
    "key": names.VIRTUAL_NODE_TAINT,
    "value": "fluidfed",
    "effect": "NoSchedule",
}
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"  # "fake" on the nodes kwok simulates

Progress = Callable[[str], None]


class ClusterState(msgspec.Struct, kw_only=True):
    name: str
    kind: Kind
    dir: str
    kubeconfig: str
    server: str
    pids: dict[str, int] = {}
    started_at: float = 0.0
    startup_seconds: float = 0.0
    network: netns.NodeNetwork | None = None  # with a real node: its veth pair
    real_node: realnode.NodeState | None = None  # kubelet + containerd, beside kwok's


def default_base_dir() -> Path:
    return paths.cache_dir("clusters", "FLUIDFED_CLUSTERS_DIR")


# --- what each flavour looks like (pure) -------------------------------------------------


def _node(
    name: str,
    labels: dict[str, str],
    *,
    cpu: str,
    memory: str,
    pods: str,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **labels,
            },
        },
        "spec": {"taints": taints or []},
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory, "pods": pods},
            "capacity": {"cpu": cpu, "memory": memory, "pods": pods},
        },
    }


def flavour_nodes(kind: Kind) -> list[dict[str, Any]]:
    """The fake nodes of a flavour: what makes a cluster standard, serverless or edge."""
    if kind == "standard":
        return [
            _node(
                f"node-{i}",
                {"node-role.kubernetes.io/worker": ""},
                cpu="16",
                memory="64Gi",
                pods="110",
            )
            for i in range(3)
        ]
    if kind == "serverless":
        # like a virtual-kubelet node: one big virtual node, tainted so that only pods that
        # tolerate it land there, and DaemonSets never do
        return [
            _node(
                "virtual-kubelet",
                {
                    "type": "virtual-kubelet",
                    "kubernetes.io/role": "agent",
                    "alibabacloud.com/virtual-node": "true",
                },
                cpu="1000",
                memory="4Ti",
                pods="10000",
                taints=[VIRTUAL_NODE_TAINT],
            )
        ]
    return [
        _node(
            f"edge-{i}",
            {names.EDGE_NODE_LABEL: "", "fluidfed.io/edge-site": "local"},
            cpu="4",
            memory="8Gi",
            pods="30",
        )
        for i in range(2)
    ]


def kubeconfig(name: str, server: str, ca_pem: bytes, client: pki.KeyPair) -> dict[str, Any]:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}
        ],
        "users": [
            {
                "name": f"{name}-admin",
                "user": {
                    "client-certificate-data": b64(client.cert_pem),
                    "client-key-data": b64(client.key_pem),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": f"{name}-admin"}}],
        "current-context": name,
    }


# --- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_children: dict[int, subprocess.Popen[bytes]] = {}


def _alive(pid: int, binary: str) -> bool:
    child = _children.get(pid)
    if child is not None:
        # our own child: between fork and exec its cmdline is still ours, so ask it directly
        return child.poll() is None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # a binary, or one of the dev kit's modules run as `python -m devkit.local.<binary>`
    return binary.encode() in argv[0] or argv[1:3] == [b"-m", f"devkit.local.{binary}".encode()]


def _stop_pid(pid: int, binary: str, timeout: float = 10.0) -> None:
    if not _alive(pid, binary):
        _children.pop(pid, None)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid, binary):
        time.sleep(0.05)
    if _alive(pid, binary):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    child = _children.pop(pid, None)
    if child is not None:
        child.wait()


class LocalCluster:
    def __init__(
        self,
        name: str,
        kind: Kind = "standard",
        *,
        base_dir: Path | None = None,
        start_timeout: float = 180.0,
        real_node: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise LocalClusterError(f"unknown cluster kind {kind!r}: use one of {', '.join(KINDS)}")
        self.name = name
        self.kind = kind
        self.real_node = real_node
        self.node_timeout = 120.0
        self.dir = (base_dir or default_base_dir()) / name
        self.state: ClusterState | None = None
        self.start_timeout = start_timeout
        self._last_wait = "starting"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def kubeconfig_path(self) -> Path:
        return self.dir / "kubeconfig"

    # --- up ------------------------------------------------------------------------------

    async def up(self, progress: Progress | None = None) -> ClusterState:
        say = progress or (lambda _msg: None)
        existing = load_state(self.dir)
        if existing is not None and all(_alive(p, b) for b, p in existing.pids.items()):
            self.state = existing
            say(f"{self.name}: already running")
            if not (self.dir / "admission.yaml").exists():
                say(
                    f"{self.name}: started by an older fluidfed, its API server presents no "
                    "client certificate to webhooks (an agent with webhook_client_ca_file "
                    f"refuses it): `fluidfed local down {self.name}` and up again"
                )
            return existing
        if existing is not None:
            await asyncio.to_thread(stop_state, existing)
        if self.real_node:
            realnode.check_host()
        bins = await binaries.ensure(say)
        t0 = time.monotonic()
        if self.dir.exists():
            await asyncio.to_thread(shutil.rmtree, self.dir)
        self.dir.mkdir(parents=True)
        # the node's network first: the API server binds the host side of its veth
        network = await asyncio.to_thread(netns.create, self.dir) if self.real_node else None
        try:
            await asyncio.to_thread(self._prepare, network)
        except BaseException:
            if network is not None:
                netns.delete(network)
            raise
        ports = {"etcd": free_port(), "peer": free_port(), "api": free_port()}
        server = f"https://127.0.0.1:{ports['api']}"
        state = ClusterState(
            name=self.name,
            kind=self.kind,
            dir=str(self.dir),
            kubeconfig=str(self.kubeconfig_path),
            server=server,
            started_at=time.time(),
            network=network,
        )
        self.state = state
        try:
            await asyncio.to_thread(self._write_kubeconfig, server)
            say(f"{self.name}: starting etcd")
            self._spawn(state, bins / "etcd", self._etcd_args(ports))
            say(f"{self.name}: starting kube-apiserver")
            self._spawn(state, bins / "kube-apiserver", self._apiserver_args(ports, network))
            if network is not None:
                # loopback clients reach the API server bound to the veth's host side
                target = f"{network.host_ip}:{ports['api']}"
                self._spawn_module(state, "forward", [f"127.0.0.1:{ports['api']}", target])
            async with asyncio.timeout(self.start_timeout):
                await self._wait_ready(server)
            say(f"{self.name}: starting controller-manager, scheduler and kwok")
            kc = str(self.kubeconfig_path)
            self._spawn(
                state,
                bins / "kube-controller-manager",
                [
                    f"--kubeconfig={kc}",
                    "--leader-elect=false",
                    "--secure-port=0",
                    f"--service-account-private-key-file={self.dir / 'pki/sa.key'}",
                    f"--root-ca-file={self.dir / 'pki/ca.crt'}",
                    "--controllers=*,-nodeipam,-cloud-node-lifecycle",
                    "--concurrent-statefulset-syncs=5",
                    "--v=1",
                ],
            )
            self._spawn(
                state,
                bins / "kube-scheduler",
                [
                    f"--kubeconfig={kc}",
                    "--leader-elect=false",
                    "--secure-port=0",
                    "--v=1",
                ],
            )
            self._spawn(
                state,
                bins / "kwok",
                [
                    f"--kubeconfig={kc}",
                    # only its own nodes: a real node stays the kubelet's
                    f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                    f"--cidr={POD_CIDR}",
                    f"--config={self.dir / 'kwok.yaml'}",
                ],
            )
            async with asyncio.timeout(self.start_timeout):
                await self._create_nodes_and_wait()
            if network is not None:
                await self._start_real_node(state, bins, network, ports, say)
        except TimeoutError:
            await asyncio.to_thread(stop_state, state)
            raise LocalClusterError(
                f"{self.name}: not ready in {self.start_timeout}s ({self._last_wait}); "
                f"see the logs in {self.dir / 'logs'}"
            ) from None
        except BaseException:
            await asyncio.to_thread(stop_state, state)
            raise
        state.startup_seconds = round(time.monotonic() - t0, 2)
        self.state_file.write_bytes(msgspec.json.encode(state))
        say(f"{self.name}: ready in {state.startup_seconds}s, kubeconfig {self.kubeconfig_path}")
        return state

    def _prepare(self, network: netns.NodeNetwork | None) -> None:
        (self.dir / "pki").mkdir(parents=True)
        (self.dir / "logs").mkdir()
        ca = pki.new_ca(f"fluidfed-local-{self.name}-ca")
        serving = pki.issue(
            ca,
            "kube-apiserver",
            server=True,
            hosts=(
                *((network.host_ip,) if network else ()),
                "127.0.0.1",
                "localhost",
                "10.96.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        admin = pki.issue(ca, "fluidfed-admin", org="system:masters", client=True)
        sa_key, sa_pub = pki.rsa_keypair()
        d = self.dir / "pki"
        pki.write(d / "ca.crt", ca.cert_pem)
        pki.write(d / "ca.key", ca.key_pem, private=True)
        pki.write(d / "apiserver.crt", serving.cert_pem)
        pki.write(d / "apiserver.key", serving.key_pem, private=True)
        pki.write(d / "admin.crt", admin.cert_pem)
        pki.write(d / "admin.key", admin.key_pem, private=True)
        pki.write(d / "sa.key", sa_key, private=True)
        pki.write(d / "sa.pub", sa_pub)
        # how the API server authenticates to kubelets (logs, exec)
        kubelet_client = pki.issue(
            ca, "kube-apiserver-kubelet-client", org="system:masters", client=True
        )
        pki.write(d / "kubelet-client.crt", kubelet_client.cert_pem)
        pki.write(d / "kubelet-client.key", kubelet_client.key_pem, private=True)
        (self.dir / "kwok.yaml").write_text(binaries.KWOK_CONFIG)
        self._write_admission(ca)

    def _write_admission(self, ca: pki.KeyPair) -> None:
        """The API server's admission configuration: it presents a client certificate of
        its own (WEBHOOK_CLIENT_CN) to every admission webhook it calls."""
        d = self.dir / "pki"
        client = pki.issue(ca, WEBHOOK_CLIENT_CN, client=True)
        pki.write(d / "webhook-client.crt", client.cert_pem)
        pki.write(d / "webhook-client.key", client.key_pem, private=True)
        users = {
            "apiVersion": "v1",
            "kind": "Config",
            "users": [  # ("*": whatever the webhook's host)
                {
                    "name": "*",
                    "user": {
                        "client-certificate": str(d / "webhook-client.crt"),
                        "client-key": str(d / "webhook-client.key"),
                    },
                }
            ],
        }
        pki.write(self.dir / "admission-kubeconfig.yaml", yaml.safe_dump(users).encode())
        webhook = {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "WebhookAdmissionConfiguration",
            "kubeConfigFile": str(self.dir / "admission-kubeconfig.yaml"),
        }
        admission = {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "AdmissionConfiguration",
            "plugins": [
                {"name": plugin, "configuration": webhook}
                for plugin in ("MutatingAdmissionWebhook", "ValidatingAdmissionWebhook")
            ],
        }
        pki.write(self.dir / "admission.yaml", yaml.safe_dump(admission).encode())

    def _write_kubeconfig(self, server: str) -> None:
        d = self.dir / "pki"
        admin = pki.KeyPair((d / "admin.crt").read_bytes(), (d / "admin.key").read_bytes())
        doc = kubeconfig(self.name, server, (d / "ca.crt").read_bytes(), admin)
        pki.write(self.kubeconfig_path, yaml.safe_dump(doc).encode(), private=True)

    def _etcd_args(self, ports: dict[str, int]) -> list[str]:
        return [
            f"--name={self.name}",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{ports['etcd']}",
            f"--advertise-client-urls=http://127.0.0.1:{ports['etcd']}",
            f"--listen-peer-urls=http://127.0.0.1:{ports['peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['peer']}",
            f"--initial-cluster={self.name}=http://127.0.0.1:{ports['peer']}",
            "--unsafe-no-fsync",  # test clusters: speed over durability
            "--quota-backend-bytes=4294967296",
            "--log-level=warn",
        ]

    def _apiserver_args(
        self, ports: dict[str, int], network: netns.NodeNetwork | None = None
    ) -> list[str]:
        d = self.dir / "pki"
        # with a real node: the host side of its veth, one address (never 0.0.0.0)
        bind = network.host_ip if network else "127.0.0.1"
        return [
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            f"--bind-address={bind}",
            f"--advertise-address={bind}",
            f"--secure-port={ports['api']}",
            f"--tls-cert-file={d / 'apiserver.crt'}",
            f"--tls-private-key-file={d / 'apiserver.key'}",
            f"--client-ca-file={d / 'ca.crt'}",
            f"--service-account-key-file={d / 'sa.pub'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            f"--kubelet-client-certificate={d / 'kubelet-client.crt'}",
            f"--kubelet-client-key={d / 'kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            f"--admission-control-config-file={self.dir / 'admission.yaml'}",
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            f"--cert-dir={d}",
            "--v=1",
        ]

    def _spawn(self, state: ClusterState, binary: Path, args: list[str]) -> None:
        log = open(self.dir / "logs" / f"{binary.name}.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            proc = _popen([str(binary), *args], log)
        finally:
            log.close()
        state.pids[binary.name] = proc
        # record as we go, so a failed start still knows what to stop
        self.state_file.write_bytes(msgspec.json.encode(state))

    def _spawn_module(self, state: ClusterState, module: str, args: list[str]) -> None:
        """One of the dev kit's own programs (`python -m devkit.local.<module>`)."""
        log = open(self.dir / "logs" / f"{module}.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            state.pids[module] = _popen(
                [sys.executable, "-m", f"devkit.local.{module}", *args], log
            )
        finally:
            log.close()
        self.state_file.write_bytes(msgspec.json.encode(state))

    async def _start_real_node(
        self,
        state: ClusterState,
        bins: Path,
        network: netns.NodeNetwork,
        ports: dict[str, int],
        say: Progress,
    ) -> None:
        """The kubelet, containerd and the cluster DNS in the node's namespaces; until the
        node is Ready and the DNS answers (a dead kubelet, containerd or CoreDNS is an
        error with their last log lines)."""
        from kubernetes_asyncio import client

        d = self.dir / "pki"
        ca = pki.KeyPair((d / "ca.crt").read_bytes(), (d / "ca.key").read_bytes())
        flavour = flavour_nodes(self.kind)[0]
        say(f"{self.name}: starting a real node (kubelet + containerd) on {network.node_ip}")
        state.real_node = await asyncio.to_thread(
            realnode.prepare,
            self.dir,
            bins,
            ca,
            f"https://{network.host_ip}:{ports['api']}",
            network,
            labels=realnode.node_labels(flavour["metadata"]["labels"]),
            taints=flavour["spec"]["taints"],
        )
        self.state_file.write_bytes(msgspec.json.encode(state))
        proc = realnode.start(state.real_node)
        _children[proc.pid] = proc
        state.pids["kubelet"] = proc.pid
        self.state_file.write_bytes(msgspec.json.encode(state))
        started = state.real_node
        try:
            async with asyncio.timeout(self.node_timeout), await self.api_client() as api:
                rbac = client.RbacAuthorizationV1Api(api)
                role, binding = realnode.dns_rbac()
                await rbac.create_cluster_role(cast(Any, role))
                await rbac.create_cluster_role_binding(cast(Any, binding))
                await realnode.wait_ready(started, api, lambda: proc.poll() is None, say)
        except TimeoutError:
            raise realnode.failure(started, f"not Ready in {self.node_timeout}s") from None
        cpid = realnode.containerd_pid(started)
        if cpid is not None:
            state.pids = {**state.pids, "containerd": cpid}

    async def _wait_ready(self, server: str) -> None:
        ctx = self.ssl_context()
        last = ""
        async with aiohttp.ClientSession() as s:
            while True:
                self._check_processes()
                try:
                    async with s.get(
                        f"{server}/readyz", ssl=ctx, timeout=aiohttp.ClientTimeout(total=5)
                    ) as r:
                        if r.status == 200:
                            return
                        last = f"HTTP {r.status}: {(await r.text())[-300:]}"
                except (aiohttp.ClientError, TimeoutError) as err:
                    last = str(err)
                self._last_wait = f"kube-apiserver not ready: {last}"
                await asyncio.sleep(0.25)

    def _check_processes(self) -> None:
        assert self.state is not None
        for binary, pid in self.state.pids.items():
            if not _alive(pid, binary):
                log = self.dir / "logs" / f"{binary}.log"
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                raise LocalClusterError(f"{self.name}: {binary} exited; last log lines:\n{tail}")

    async def _create_nodes_and_wait(self) -> None:
        # Ready means: kwok reports the nodes Ready, the node-lifecycle controller has lifted
        # the not-ready taint, and the default service account exists (pods can be created)
        from kubernetes_asyncio import client

        async with await self.api_client() as api:
            core = client.CoreV1Api(api)
            for node in flavour_nodes(self.kind):
                await core.create_node(cast(Any, node))
            want = {n["metadata"]["name"] for n in flavour_nodes(self.kind)}
            while True:
                self._check_processes()
                nodes = await core.list_node()
                ready = {n.metadata.name for n in nodes.items if realnode.takes_pods(n)}
                sas = await core.list_namespaced_service_account("default")
                if want <= ready and any(sa.metadata.name == "default" for sa in sas.items):
                    return
                self._last_wait = f"nodes ready: {sorted(ready)} of {sorted(want)}"
                await asyncio.sleep(0.25)

    async def install_fluid_crds(self, progress: Progress | None = None) -> crds.FluidCRDs:
        """Install Fluid's CRDs (Fluid's own where they are found, else fluidfed's, and
        `progress` says which) and wait until the API server serves them."""
        from kubernetes_asyncio import client

        found = crds.find()
        if progress is not None and not found.real:
            progress(f"{self.name}: {found.describe()}")
        async with await self.api_client() as api:
            ext = client.ApiextensionsV1Api(api)
            for doc in found.documents:
                try:
                    await ext.create_custom_resource_definition(cast(Any, doc))
                except client.ApiException as err:
                    if err.status != 409:
                        raise
            while True:
                listed = await ext.list_custom_resource_definition()
                established = {
                    c.metadata.name
                    for c in listed.items
                    if any(
                        x.type == "Established" and x.status == "True"
                        for x in (c.status.conditions or [])
                    )
                }
                if found.names <= established:
                    return found
                await asyncio.sleep(0.2)

    # --- use -----------------------------------------------------------------------------

    def webhook_client_settings(self) -> dict[str, str]:
        """The agent settings (TOML values) by which its webhook answers this cluster's API
        server only: the client certificate the API server presents (`_write_admission`)."""
        return {
            "webhook_client_ca_file": json.dumps(str(self.dir / "pki" / "ca.crt")),
            "webhook_client_name": json.dumps(WEBHOOK_CLIENT_CN),
        }

    def ssl_context(self) -> ssl.SSLContext:
        d = self.dir / "pki"
        ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
        ctx.load_cert_chain(str(d / "admin.crt"), str(d / "admin.key"))
        return ctx

    async def api_client(self) -> Any:
        """A kubernetes-asyncio ApiClient for this cluster (use `async with`)."""
        return await api_client_for(self.kubeconfig_path)

    async def down(self) -> list[str]:
        """Stop and remove the cluster; what could not be cleaned up (empty when all went)."""
        state = load_state(self.dir) or self.state
        left = await asyncio.to_thread(stop_state, state) if state is not None else []
        if self.dir.exists():
            await asyncio.to_thread(shutil.rmtree, self.dir, True)
        return left


def _popen(argv: list[str], log: Any) -> int:
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    _children[proc.pid] = proc  # reaped by _stop_pid; processes of another CLI run are not ours
    return proc.pid


async def api_client_for(kubeconfig_path: Path | str) -> Any:
    """A kubernetes-asyncio ApiClient from a kubeconfig file (use `async with`)."""
    from kubernetes_asyncio import config

    return await config.new_client_from_config(config_file=str(kubeconfig_path))


def load_state(cluster_dir: Path) -> ClusterState | None:
    f = cluster_dir / "state.json"
    if not f.exists():
        return None
    try:
        return msgspec.json.decode(f.read_bytes(), type=ClusterState)
    except msgspec.DecodeError:
        return None


async def load_image(cluster_dir: Path, built: image.BuiltImage) -> float:
    """Import a built image into a running cluster's real node; seconds taken."""
    state = load_state(cluster_dir)
    if state is None or state.real_node is None or not running(state):
        raise LocalClusterError(
            f"no running local cluster with a real node in {cluster_dir}: "
            "start one with `fluidfed local up NAME --real-node`"
        )
    name = built.ref.rsplit(":", 1)[0]
    return await asyncio.to_thread(
        realnode.load_image, state.real_node, binaries.cache_dir(), Path(built.archive), name
    )


def stop_state(state: ClusterState) -> list[str]:
    """Stop everything of a cluster; what could not be cleaned up (empty when all went)."""
    left: list[str] = []
    pids = dict(state.pids)
    if "kubelet" in pids:
        # the real node first: kubelet (containerd shares its process group), then what
        # is left in its cgroups, and the host sysctls
        _stop_pid(pids.pop("kubelet"), "kubelet")
        pids.pop("containerd", None)
    if state.real_node is not None:
        left += realnode.stop(state.real_node)
    # reverse start order: node simulator and controllers first, etcd last
    for binary, pid in reversed(list(pids.items())):
        _stop_pid(pid, binary)
    if state.network is not None:
        # last: the API server listened on its host side
        netns.delete(state.network)
        left += netns.leftovers(state.network)
    return left


def running(state: ClusterState) -> bool:
    return bool(state.pids) and all(_alive(p, b) for b, p in state.pids.items())


def list_clusters(base_dir: Path | None = None) -> list[ClusterState]:
    base = base_dir or default_base_dir()
    if not base.exists():
        return []
    states = [load_state(d) for d in sorted(base.iterdir()) if d.is_dir()]
    return [s for s in states if s is not None]


async def up_many(
    specs: list[tuple[str, Kind]],
    *,
    base_dir: Path | None = None,
    progress: Progress | None = None,
    fluid: bool = True,
    real_nodes: frozenset[str] = frozenset(),
) -> list[LocalCluster]:
    """Start several clusters in parallel (binaries are built once, first). With `fluid`,
    standard clusters get Fluid's CRDs, as a cluster with Fluid installed has them; the
    clusters named in `real_nodes` get a real node each."""
    await binaries.ensure(progress or (lambda _m: None))
    clusters = [LocalCluster(n, k, base_dir=base_dir, real_node=n in real_nodes) for n, k in specs]

    async def start(c: LocalCluster) -> ClusterState:
        state = await c.up(progress)
        if fluid and c.kind == "standard":
            await c.install_fluid_crds(progress)
        return state

    results = await asyncio.gather(*(start(c) for c in clusters), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        await asyncio.gather(*(c.down() for c in clusters), return_exceptions=True)
        raise errors[0]
    return clusters
