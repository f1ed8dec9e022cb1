"""A real node's own network namespace: a veth pair with a /30, the host side and the node
side, and nothing else (no default route, the host's ip_forward untouched), so that the node
and its pods reach only the host-side address. Pods off the host network get a /24 behind
the node (a bridge in its namespace); the host routes that /24 to the node side, so the
host reaches them and they reach the host without address translation.

Namespace and interface names are global on the machine: they derive from a hash of the
cluster's directory, so two clusters of the same name in different directories never meet.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from fluidfed.errors import LocalClusterError

# the /30s and the pods' /24s the project hands out: private, away from the usual
# Docker/Kubernetes ranges
POOL = ipaddress.IPv4Network("10.213.0.0/16")
POD_POOL = ipaddress.IPv4Network("10.214.0.0/16")
LOCK = Path("/run/fluidfed/netns.lock")


class NodeNetwork(msgspec.Struct, frozen=True, kw_only=True):
    netns: str
    host_if: str
    node_if: str
    host_ip: str
    node_ip: str
    prefix: int = 30
    pod_cidr: str = ""  # the pods' /24 behind the node (bridge + host-local)

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"


def names_for(cluster_dir: Path) -> tuple[str, str, str]:
    """(netns, host interface, node interface) for a cluster directory; interface names
    stay within the kernel's 15 characters."""
    tag = hashlib.sha256(str(cluster_dir.resolve()).encode()).hexdigest()[:8]
    return f"fluidfed-{tag}", f"ffh{tag}", f"ffn{tag}"


def pick_subnet(
    seed: str,
    used: Iterable[ipaddress.IPv4Network],
    pool: ipaddress.IPv4Network = POOL,
    prefix: int = 30,
) -> ipaddress.IPv4Network:
    """The first /`prefix` of `pool`, from a place given by `seed`, that overlaps nothing in
    `used` (the host's addresses and routes)."""
    taken = list(used)
    blocks = list(pool.subnets(new_prefix=prefix))
    start = int(hashlib.sha256(seed.encode()).hexdigest(), 16) % len(blocks)
    for i in range(len(blocks)):
        block = blocks[(start + i) % len(blocks)]
        if not any(block.overlaps(t) for t in taken):
            return block
    raise LocalClusterError(f"no free /{prefix} left in {pool} for a real node")


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LocalClusterError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def _used() -> Iterator[ipaddress.IPv4Network]:
    for link in json.loads(_ip("-j", "-4", "addr") or "[]"):
        for a in link.get("addr_info", []):
            yield ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default" and dst[0].isdigit():
            yield ipaddress.IPv4Network(dst, strict=False)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def exists(net: NodeNetwork) -> bool:
    return Path(net.netns_path).exists()


def create(cluster_dir: Path) -> NodeNetwork:
    """The namespace, the veth pair and its /30, `lo` up inside; undone if a step fails."""
    netns, host_if, node_if = names_for(cluster_dir)
    with _locked():
        used = list(_used())
        block = pick_subnet(netns, used)
        pods = pick_subnet(netns, used, POD_POOL, 24)
        host_ip, node_ip = (str(h) for h in block.hosts())
        net = NodeNetwork(
            netns=netns, host_if=host_if, node_if=node_if, host_ip=host_ip, node_ip=node_ip,
            pod_cidr=str(pods),
        )  # fmt: skip
        delete(net)  # what a killed run left behind
        try:
            _ip("netns", "add", netns)
            _ip("link", "add", host_if, "type", "veth", "peer", "name", node_if, "netns", netns)
            _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
            _ip("link", "set", host_if, "up")
            _ip("-n", netns, "addr", "add", f"{node_ip}/30", "dev", node_if)
            _ip("-n", netns, "link", "set", node_if, "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            _ip("route", "add", str(pods), "via", node_ip, "dev", host_if)
        except LocalClusterError:
            delete(net)
            raise
    return net


def delete(net: NodeNetwork) -> None:
    """Remove the namespace and the veth pair (no-op for what is already gone)."""
    for args in (("link", "del", net.host_if), ("netns", "del", net.netns)):
        subprocess.run(["ip", *args], capture_output=True, check=False)


def leftovers(net: NodeNetwork) -> list[str]:
    """What of the network is still on the machine (empty after `delete`)."""
    found = []
    if exists(net):
        found.append(f"netns {net.netns}")
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=False)
    if any(line.split("@")[0].split()[0] == net.host_if for line in links.stdout.splitlines()):
        found.append(f"link {net.host_if}")
    return found
