"""One real node in a local cluster: kubelet + containerd + runc in the node's own network
namespace (see netns.py) and their own mount namespace, beside the cluster's kwok nodes.

How it starts (each step answers an error met on these machines, see the README):
`nsenter --net=<netns> -- unshare -m --propagation slave -- sh node.sh`; node.sh joins the
node's cgroups, mounts a sysfs of the new network namespace while keeping the cgroup mounts,
lazily unmounts the FUSE mounts it inherited, makes `/` rshared inside the namespace only,
starts containerd, imports the sandbox image and execs the kubelet. Everything the node or
its pods mount stays inside and goes when they exit. `stop` kills what runs in the node's
cgroups, removes them, the network namespace and the veth pair, and puts back the host
sysctls the kubelet changed.

The config builders are pure; the edges are `start`, `wait_ready` and `stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import yaml

from devkit.local import image, netns
from fluidfed import pki
from fluidfed.errors import LocalClusterError

NODE_NAME = "real-node"
# on the real node only: tests and the demo find it by this label (dev kit, not fluidfed)
REAL_NODE_LABEL = "fluidfed.io/real-node"
KUBELET_PORT = 10250
# the node's cluster DNS: CoreDNS in the node's network namespace, on the node's address
CLUSTER_DOMAIN = "cluster.local"
DNS_READY_PORT = 8181
DNS_USER = "fluidfed-devkit:coredns"  # its client certificate's name; RBAC in dns_rbac()
# what the kubelet writes on the host (pkg/kubelet/cm: setupKernelTunables)
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
SHARED = Path("/run/fluidfed/real-nodes")  # sysctls saved by the first real node, and users
CGROUP_FS = Path("/sys/fs/cgroup")
LOG_LINES = 30

Progress = Callable[[str], None]


class NodeState(msgspec.Struct, kw_only=True):
    name: str
    dir: str
    network: netns.NodeNetwork
    cgroup_root: str  # the kubelet's cgroupRoot: pods and the node's own processes below it
    cgroups: list[str] = []  # the directories made, one per hierarchy, outermost first


# --- what it runs (pure) -----------------------------------------------------------------


def runtime_dir(net: netns.NodeNetwork) -> Path:
    """Short paths for the node's sockets: a unix socket's path has at most 107 bytes, and
    the cluster's directory may be deep (pytest's, a user's)."""
    return SHARED / net.netns


def socket_path(net: netns.NodeNetwork) -> Path:
    """containerd's socket (the host's ctr imports images through it)."""
    return runtime_dir(net) / "containerd.sock"


def kubelet_root(net: netns.NodeNetwork) -> Path:
    """The kubelet's root directory as the node sees it: the node directory's kubelet/
    bound here inside the node's mount namespace (its sockets live below it)."""
    return runtime_dir(net) / "kubelet"


def node_labels(flavour_labels: dict[str, str]) -> dict[str, str]:
    """The real node stands in for the flavour's nodes: their labels (a serverless real
    node is a virtual node), not kwok's marks."""
    labels = {k: v for k, v in flavour_labels.items() if k != "kubernetes.io/hostname"}
    if labels.get("type") == "kwok":
        labels.pop("type")
    return {**labels, REAL_NODE_LABEL: "true"}


def containerd_config(d: Path, bins: Path, sandbox_image: str, sock: Path) -> str:
    return f"""\
version = 3
root = "{d / "containerd/root"}"
state = "{d / "containerd/state"}"
# no NRI socket in /var/run, no tracing exporter
disabled_plugins = [
  "io.containerd.nri.v1.nri",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{sock}"

[plugins.'io.containerd.internal.v1.opt']
  path = "{d / "containerd/opt"}"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "{sandbox_image}"

[plugins.'io.containerd.cri.v1.runtime']
  # root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj makes runc create fail
  restrict_oom_score_adj = true
  # pods' network namespaces under the node's directory, not in the host's /run/netns
  netns_mounts_under_state_dir = true

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["{bins / "cni"}"]
  conf_dir = "{d / "cni"}"

[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = "{bins / "runc"}"
  Root = "{d / "containerd/runc"}"
  SystemdCgroup = false
"""


def cni_conflist(d: Path, net: netns.NodeNetwork) -> dict[str, Any]:
    """Pods off the host network: a bridge in the node's namespace, the node as their
    gateway, addresses from the node's /24 (no masquerade: the host routes the /24 back)."""
    return {
        "cniVersion": "1.0.0",
        "name": "fluidfed-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "fluidfed0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": net.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(d / "cni-ipam"),
                },
            }
        ],
    }


def kubelet_config(
    d: Path, net: netns.NodeNetwork, cgroup_root: str, taints: list[dict[str, str]]
) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{socket_path(net)}",
        "podLogsDir": str(d / "pod-logs"),  # not podLogsDirectory: unknown fields are ignored
        "volumePluginDir": str(d / "volume-plugins"),
        "address": net.node_ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(d / "pki/ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "registerWithTaints": taints,
        "clusterDNS": [net.node_ip],
        "clusterDomain": CLUSTER_DOMAIN,
        "maxPods": 30,
        "serializeImagePulls": False,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "2%"},
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "shutdownGracePeriod": "0s",
    }


def kubelet_args(d: Path, net: netns.NodeNetwork, name: str) -> list[str]:
    return [
        f"--config={d / 'kubelet.yaml'}",
        f"--kubeconfig={d / 'kubelet.kubeconfig'}",
        f"--root-dir={kubelet_root(net)}",
        f"--cert-dir={d / 'kubelet/pki'}",
        f"--hostname-override={name}",
        f"--node-ip={net.node_ip}",
        "--v=1",
    ]


def corefile(d: Path, net: netns.NodeNetwork) -> str:
    """Pods find Services and StatefulSet pods by name (the cluster domain only: nothing
    is forwarded, the node's network reaches no resolver beyond it)."""
    return f"""\
.:53 {{
    bind {net.node_ip}
    ready {net.node_ip}:{DNS_READY_PORT}
    errors
    cache 5
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {d / "coredns.kubeconfig"}
        pods insecure
        ttl 5
    }}
}}
"""


def dns_rbac() -> list[dict[str, Any]]:
    """What CoreDNS's kubernetes plugin reads, for its user and nothing more."""
    name = "fluidfed-devkit-coredns"
    rules = [
        {"apiGroups": [""], "resources": ["services", "pods", "namespaces"],
         "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
         "verbs": ["list", "watch"]},
    ]  # fmt: skip
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": rules,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": DNS_USER}],
    }
    return [role, binding]


def node_script(d: Path, bins: Path, cgroups: list[str], net: netns.NodeNetwork, name: str) -> str:
    """node.sh: run under `nsenter --net -- unshare -m --propagation slave`."""
    q = shlex.quote
    joins = "\n".join(f"echo $$ > {q(c + '/cgroup.procs')}" for c in cgroups)
    kubelet = " ".join(q(a) for a in [str(bins / "kubelet"), *kubelet_args(d, net, name)])
    return f"""\
#!/bin/sh
# The real node {name}: started by fluidfed's dev kit in the network namespace {net.netns}
# and a mount namespace of its own (slave of the host's).
set -eu
export PATH={q(str(bins))}:/usr/sbin:/usr/bin:/sbin:/bin
{joins}
# the kubelet needs this namespace's sysfs and the host's cgroup mounts: a plain
# `ip netns exec` would hide the cgroup v1 mounts under a fresh sysfs
keep=$(mktemp -d)
mount --rbind /sys/fs/cgroup "$keep"
mount -t sysfs sysfs /sys
mount --move "$keep" /sys/fs/cgroup
rmdir "$keep"
# the copies of other people's FUSE mounts would keep their filesystems alive
awk '$3 == "fuse" || $3 ~ /^fuse\\./ {{print $2}}' /proc/self/mounts | while read -r m; do
  umount -l "$(printf '%b' "$m")" 2>/dev/null || true
done
mount --make-rshared /
mkdir -p {q(str(kubelet_root(net)))}
mount --bind {q(str(d / "kubelet"))} {q(str(kubelet_root(net)))}
containerd --config {q(str(d / "containerd.toml"))} >> {q(str(d / "logs/containerd.log"))} 2>&1 &
echo $! > {q(str(d / "containerd.pid"))}
i=0
while ! ctr --address {q(str(socket_path(net)))} version >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -gt 300 ] || ! kill -0 "$!" 2>/dev/null; then
    echo "containerd did not start" >&2
    exit 1
  fi
  sleep 0.1
done
ctr --address {q(str(socket_path(net)))} -n k8s.io images import \\
  --base-name {q(image.PAUSE_REF.rsplit(":", 1)[0])} {q(str(d / "pause.tar"))} >&2
coredns -conf {q(str(d / "Corefile"))} >> {q(str(d / "logs/coredns.log"))} 2>&1 &
echo $! > {q(str(d / "coredns.pid"))}
exec {kubelet}
"""


# --- cgroups -----------------------------------------------------------------------------


def hierarchies() -> list[tuple[Path, str]]:
    """(mount point, this process's path in it) for every cgroup hierarchy mounted under
    /sys/fs/cgroup."""
    mounts: dict[frozenset[str], Path] = {}
    unified: Path | None = None
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _dev, mount_point, fs, options, *_ = line.split()
        if not mount_point.startswith(str(CGROUP_FS)):
            continue
        if fs == "cgroup":
            mounts[frozenset(options.split(","))] = Path(mount_point)
        elif fs == "cgroup2":
            unified = Path(mount_point)
    found: list[tuple[Path, str]] = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if not controllers:
            if unified is not None:
                found.append((unified, path))
            continue
        for opts, where in mounts.items():
            if set(controllers.split(",")) <= opts:
                found.append((where, path))
                break
    return found


def cgroup_root_for(netns_name: str, hier: list[tuple[Path, str]]) -> str:
    """Below the deepest place this process is in (its memory limit, say), so that the
    node and its pods stay inside what confines the caller."""
    base = max((p for _, p in hier), key=len, default="/")
    return f"{base.rstrip('/')}/{netns_name}"


def make_cgroups(root: str, hier: list[tuple[Path, str]]) -> list[str]:
    made: list[str] = []
    for where, _ in hier:
        d = where / root.lstrip("/")
        missing = [p for p in [d, *d.parents] if not p.exists()]
        for p in reversed(missing):
            p.mkdir()
            made.append(str(p))
            for knob in ("cpuset.cpus", "cpuset.mems"):
                # a new cpuset is empty: no process may join until it has cpus and mems
                if (p / knob).exists() and not (p / knob).read_text().strip():
                    (p / knob).write_text((p.parent / knob).read_text())
    return made


def _procs(tree: Path) -> Iterator[int]:
    for d, _dirs, files in os.walk(tree):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                for pid in Path(d, "cgroup.procs").read_text().split():
                    yield int(pid)


def remove_cgroups(made: list[str], timeout: float = 20.0) -> list[str]:
    """Kill what is left in them and remove them, the kubelet's below them too; what could
    not be removed."""
    deadline = time.monotonic() + timeout
    for top in made:
        while (pids := set(_procs(Path(top)))) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
    left = []
    for top in reversed(made):
        if not Path(top).exists():
            continue
        for d, _dirs, _files in os.walk(top, topdown=False):
            try:
                Path(d).rmdir()
            except OSError:
                if Path(d).exists() and d == top:
                    left.append(d)
    return left


# --- host sysctls ------------------------------------------------------------------------


@contextlib.contextmanager
def _shared() -> Iterator[Path]:
    SHARED.mkdir(parents=True, exist_ok=True)
    with open(SHARED / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield SHARED


def _read_sysctls() -> dict[str, str]:
    out = {}
    for key in SYSCTLS:
        with contextlib.suppress(OSError):
            out[key] = (Path("/proc/sys") / key).read_text().strip()
    return out


def hold_sysctls(netns_name: str) -> None:
    """Before a kubelet starts: save the host's values unless another real node already
    did (it saw them untouched); count this node among their users."""
    with _shared() as d:
        users = d / "users"
        users.mkdir(exist_ok=True)
        for u in users.iterdir():  # nodes whose namespace is gone were killed, not stopped
            if not Path(f"/run/netns/{u.name}").exists():
                u.unlink()
        saved = d / "sysctls.json"
        if not any(users.iterdir()) or not saved.exists():
            saved.write_text(json.dumps(_read_sysctls()))
        (users / netns_name).touch()


def release_sysctls(netns_name: str) -> None:
    """After a kubelet stops: the last real node puts the saved values back."""
    with _shared() as d:
        (d / "users" / netns_name).unlink(missing_ok=True)
        saved = d / "sysctls.json"
        if any((d / "users").iterdir()) or not saved.exists():
            return
        for key, value in json.loads(saved.read_text()).items():
            with contextlib.suppress(OSError):
                (Path("/proc/sys") / key).write_text(value)
        saved.unlink()


# --- lifecycle ---------------------------------------------------------------------------


def check_host() -> None:
    """What a real node needs of this machine, said before anything starts."""
    if os.geteuid() != 0:
        raise LocalClusterError("a real node needs root (network namespace, mounts, cgroups)")
    missing = [t for t in ("ip", "nsenter", "unshare", "mount", "umount") if not shutil.which(t)]
    if missing:
        raise LocalClusterError(
            f"a real node needs {', '.join(missing)}: apt-get install iproute2 util-linux mount"
        )
    if not hierarchies():
        raise LocalClusterError(f"a real node needs the cgroup hierarchies under {CGROUP_FS}")


def prepare(
    cluster_dir: Path,
    bins: Path,
    ca: pki.KeyPair,
    server: str,
    net: netns.NodeNetwork,
    *,
    labels: dict[str, str],
    taints: list[dict[str, str]],
    name: str = NODE_NAME,
) -> NodeState:
    """Write what the node runs from (certificates, configs, node.sh, the sandbox image)
    and make its cgroups. Pure files, no process yet."""
    from devkit.local import cluster  # the kubeconfig builder: one for admin and node

    d = cluster_dir / "node"
    for sub in ("pki", "logs", "cni", "pod-logs", "volume-plugins", "kubelet"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    client = pki.issue(ca, f"system:node:{name}", org="system:nodes", client=True)
    pki.write(d / "pki/ca.crt", ca.cert_pem)
    doc = cluster.kubeconfig(name, server, ca.cert_pem, client)
    # kubeconfigs with a client key: private from the start
    pki.write(d / "kubelet.kubeconfig", yaml.safe_dump(doc).encode(), private=True)
    dns = pki.issue(ca, DNS_USER, client=True)
    dns_doc = cluster.kubeconfig(name, server, ca.cert_pem, dns)
    pki.write(d / "coredns.kubeconfig", yaml.safe_dump(dns_doc).encode(), private=True)
    (d / "Corefile").write_text(corefile(d, net))
    hier = hierarchies()
    root = cgroup_root_for(net.netns, hier)
    runtime_dir(net).mkdir(parents=True, exist_ok=True)
    (d / "containerd.toml").write_text(
        containerd_config(d, bins, image.PAUSE_REF, socket_path(net))
    )
    (d / "cni/10-fluidfed.conflist").write_text(json.dumps(cni_conflist(d, net), indent=2))
    kcfg = kubelet_config(d, net, root, taints)
    (d / "kubelet.yaml").write_text(yaml.safe_dump(kcfg))
    (d / "labels.json").write_text(json.dumps(labels))
    shutil.copyfile(image.pause_image(bins), d / "pause.tar")
    made = make_cgroups(root, hier)
    cgroups = [str(w / root.lstrip("/")) for w, _ in hier]
    (d / "node.sh").write_text(node_script(d, bins, cgroups, net, name))
    return NodeState(name=name, dir=str(d), network=net, cgroup_root=root, cgroups=made)


def start(state: NodeState) -> subprocess.Popen[bytes]:
    """nsenter -> unshare -> node.sh -> kubelet (the pid stays the kubelet's)."""
    d = Path(state.dir)
    hold_sysctls(state.network.netns)
    with open(d / "logs/kubelet.log", "ab") as log:
        return subprocess.Popen(
            ["nsenter", f"--net={state.network.netns_path}", "--",
             "unshare", "-m", "--propagation", "slave", "--",
             "sh", str(d / "node.sh")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip


def _pid(state: NodeState, what: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((Path(state.dir) / f"{what}.pid").read_text())
    return None


def containerd_pid(state: NodeState) -> int | None:
    return _pid(state, "containerd")


def dns_ready(state: NodeState) -> bool:
    """CoreDNS's ready plugin: 200 once the kubernetes plugin has synced with the API."""
    url = f"http://{state.network.node_ip}:{DNS_READY_PORT}/ready"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def log_tail(state: NodeState, what: str, lines: int = LOG_LINES) -> str:
    f = Path(state.dir) / "logs" / f"{what}.log"
    if not f.exists():
        return f"({what}: no log)"
    text = f.read_text(errors="replace").rstrip().splitlines()[-lines:]
    return f"--- {what} ({f}), last lines:\n" + "\n".join(text)


def failure(state: NodeState, why: str) -> LocalClusterError:
    return LocalClusterError(
        f"real node {state.name}: {why}\n{log_tail(state, 'kubelet')}\n"
        f"{log_tail(state, 'containerd')}\n{log_tail(state, 'coredns', 10)}"
    )


NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def takes_pods(node: Any) -> bool:
    """Whether a node (kubernetes-asyncio's V1Node) can be given pods: its kubelet (or
    kwok) reports it Ready and the node-lifecycle controller has lifted the taint it put
    on while it was not (a node turns Ready a few seconds before the taint goes, and a pod
    without a toleration for it stays Pending until then)."""
    ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
    return ready and not any(t.key in NOT_READY_TAINTS for t in node.spec.taints or [])


async def wait_ready(state: NodeState, api: Any, alive: Callable[[], bool], say: Progress) -> None:
    """Until the node takes pods (`takes_pods`), carries its labels and the cluster DNS
    answers; a dead kubelet, containerd or CoreDNS is an error with their last log lines,
    at once."""
    from kubernetes_asyncio import client

    core = client.CoreV1Api(api)
    labelled = False
    last = "not registered"
    while True:
        if not alive():
            raise failure(state, f"the kubelet or containerd exited ({last})")
        cpid = containerd_pid(state)
        if cpid is not None and not _is_or_becoming(cpid, "containerd"):
            raise failure(state, "containerd exited")
        dpid = _pid(state, "coredns")
        if dpid is not None and not _is_or_becoming(dpid, "coredns"):
            raise failure(state, "the cluster DNS (CoreDNS) exited")
        try:
            node = await core.read_node(state.name)
        except client.ApiException as err:
            if err.status != 404:
                raise
            await asyncio.sleep(0.25)
            continue
        if not labelled:
            labels = json.loads((Path(state.dir) / "labels.json").read_text())
            await core.patch_node(state.name, {"metadata": {"labels": labels}})
            labelled = True
            say(f"real node {state.name} registered")
        if takes_pods(node):
            if await asyncio.to_thread(dns_ready, state):
                return
            last = "the cluster DNS not ready"
            await asyncio.sleep(0.25)
            continue
        ready = {c.type: c for c in node.status.conditions or []}.get("Ready")
        taints = [t.key for t in node.spec.taints or [] if t.key in NOT_READY_TAINTS]
        last = f"Ready={ready.status if ready else '?'}: {ready.message if ready else ''}"
        if taints:
            last += f"; tainted {', '.join(taints)}"
        await asyncio.sleep(0.25)


def stop(state: NodeState) -> list[str]:
    """Once the kubelet is stopped: stop containerd, kill what is left in the node's
    cgroups (shims, containers), remove the cgroups and put back the host sysctls; what
    could not be cleaned up. The network stays: the API server listens on it until it
    has stopped (taken away first, its graceful shutdown waits for good)."""
    cpid = containerd_pid(state)
    if cpid is not None and _is(cpid, "containerd"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(cpid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _is(cpid, "containerd"):
            time.sleep(0.05)
    left = remove_cgroups(state.cgroups)
    shutil.rmtree(runtime_dir(state.network), ignore_errors=True)
    release_sysctls(state.network.netns)
    return left


def _is_or_becoming(pid: int, binary: str) -> bool:
    """`_is`, or still node.sh's fork about to run `binary`: node.sh writes `$!` to the pid
    file as it forks, and until the child execs, its command line is the shell's (seen as
    "containerd exited" by a start that looked in between, on a busy machine); while it
    execs, its command line reads empty for a moment (the old one is gone, the new one not
    yet set up: 11 of 300 reads right after `subprocess.Popen` returned, here), and only a
    zombie's stays so."""
    argv = _argv(pid)
    if not argv:
        return _state(pid) not in ("", "Z", "X")
    return _is(pid, binary, argv) or any(a.endswith(b"/node.sh") for a in argv)


def _argv(pid: int) -> list[bytes]:
    """A process's command line; empty if it is gone, a zombie, or in the middle of exec."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.split(b"\0") if raw else []


def _state(pid: int) -> str:
    """A process's state letter (R, S, D, Z...); empty if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _is(pid: int, binary: str, argv: list[bytes] | None = None) -> bool:
    argv = _argv(pid) if argv is None else argv
    return bool(argv) and argv[0].endswith(binary.encode())


def load_image(state: NodeState, bins: Path, archive: Path, base_name: str) -> float:
    """Import an OCI archive into the node's containerd for pods (`imagePullPolicy:
    Never`); seconds taken."""
    address = str(socket_path(state.network))
    return image.import_image(bins / "ctr", address, archive, base_name)
