"""The pure parts of the real node and the image: addresses, labels, configs, the script."""

import ipaddress
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from devkit.local import cluster, image, netns, realnode
from fluidfed import names
from fluidfed.errors import LocalClusterError


def test_a_free_30_is_picked_from_the_pool_away_from_what_the_host_uses() -> None:
    first = netns.pick_subnet("fluidfed-abc", [])
    assert first.prefixlen == 30 and first.subnet_of(netns.POOL)
    again = netns.pick_subnet("fluidfed-abc", [first])
    assert again != first and not again.overlaps(first)
    pods = netns.pick_subnet("fluidfed-abc", [], netns.POD_POOL, 24)
    assert pods.prefixlen == 24 and pods.subnet_of(netns.POD_POOL)
    # a host route over the whole pool leaves nothing
    with pytest.raises(LocalClusterError, match="no free /30"):
        netns.pick_subnet("x", [ipaddress.IPv4Network("10.0.0.0/8")])


def test_names_fit_the_kernels_15_characters_and_differ_per_directory() -> None:
    a = netns.names_for(Path("/tmp/a/c"))
    b = netns.names_for(Path("/tmp/b/c"))
    assert a != b
    assert all(len(n) <= 15 for n in (*a[1:], *b[1:]))


def test_the_real_node_stands_in_for_the_flavours_nodes() -> None:
    serverless = cluster.flavour_nodes("serverless")[0]["metadata"]["labels"]
    labels = realnode.node_labels(serverless)
    assert labels["alibabacloud.com/virtual-node"] == "true"
    assert labels["type"] == "virtual-kubelet"
    assert labels[realnode.REAL_NODE_LABEL] == "true"
    assert "kubernetes.io/hostname" not in labels
    edge = realnode.node_labels(cluster.flavour_nodes("edge")[0]["metadata"]["labels"])
    assert names.EDGE_NODE_LABEL in edge and "type" not in edge  # kwok's mark is not kept


def test_kubelet_and_containerd_configs_carry_what_this_machine_needs() -> None:
    net = netns.NodeNetwork(
        netns="fluidfed-x", host_if="ffhx", node_if="ffnx", host_ip="10.213.0.1",
        node_ip="10.213.0.2", pod_cidr="10.214.7.0/24",
    )  # fmt: skip
    d, bins = Path("/c/node"), Path("/bin/testbin")
    taints = [cluster.VIRTUAL_NODE_TAINT]
    cfg = realnode.kubelet_config(d, net, "/caller/fluidfed-x", taints)
    assert cfg["cgroupDriver"] == "cgroupfs" and cfg["failCgroupV1"] is False
    assert cfg["failSwapOn"] is False and cfg["podLogsDir"] == "/c/node/pod-logs"
    assert cfg["address"] == "10.213.0.2" and cfg["cgroupRoot"] == "/caller/fluidfed-x"
    assert cfg["registerWithTaints"] == taints
    yaml.safe_dump(cfg)  # serialisable as written
    toml = realnode.containerd_config(d, bins, image.PAUSE_REF, realnode.socket_path(net))
    # a deep cluster directory must not push the socket past a unix socket's 107 bytes
    assert 'address = "/run/fluidfed/real-nodes/fluidfed-x/containerd.sock"' in toml
    assert (
        cfg["containerRuntimeEndpoint"]
        == "unix:///run/fluidfed/real-nodes/fluidfed-x/containerd.sock"
    )
    assert "restrict_oom_score_adj = true" in toml
    assert f'sandbox = "{image.PAUSE_REF}"' in toml
    assert 'bin_dirs = ["/bin/testbin/cni"]' in toml
    assert "netns_mounts_under_state_dir = true" in toml  # not the host's /run/netns
    bridge = realnode.cni_conflist(d, net)["plugins"][0]
    assert bridge["ipMasq"] is False  # the host routes the /24 back: no iptables needed
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.214.7.0/24"}]]
    script = realnode.node_script(d, bins, ["/sys/fs/cgroup/memory/x"], net, "real-node")
    commands = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert not any("ip netns exec" in line for line in commands)
    assert "mount -t sysfs sysfs /sys" in script and "mount --make-rshared /" in script
    assert script.index("mount --move") < script.index("--make-rshared")
    assert "--node-ip=10.213.0.2" in script and "echo $$ > /sys/fs/cgroup/memory/x" in script
    # the cluster DNS: pods resolve names with the node's CoreDNS, which reads only what it needs
    assert cfg["clusterDNS"] == ["10.213.0.2"] and cfg["clusterDomain"] == "cluster.local"
    assert script.index("coredns -conf") < script.index("exec ")
    corefile = realnode.corefile(d, net)
    assert "bind 10.213.0.2" in corefile and "kubeconfig /c/node/coredns.kubeconfig" in corefile
    assert "forward" not in corefile  # nothing beyond the cluster's names leaves the node
    role, binding = realnode.dns_rbac()
    assert {v for r in role["rules"] for v in r["verbs"]} == {"list", "watch"}
    assert binding["subjects"][0]["name"] == realnode.DNS_USER


def test_the_images_pyproject_leaves_the_dev_kit_out() -> None:
    text = (image.project_root() / "pyproject.toml").read_text()
    out = image.without_devkit(text)
    assert "devkit.commands" not in out  # no entry point to a module the image lacks
    assert not any(line.startswith("devkit = [") for line in out.splitlines())
    assert 'sidecar = "sidecar.commands:register"' in out
    assert 'include = ["fluidfed*", "hub*", "agents*", "sidecar*"]' in out


def test_a_node_process_is_alive_while_node_sh_has_forked_it_but_not_yet_run_it(
    tmp_path: Path,
) -> None:
    # node.sh writes `$!` as it forks containerd and CoreDNS: until the child execs, its
    # command line is the shell's, and the start must not take that for a dead containerd
    script = tmp_path / "node.sh"
    script.write_text("sleep 30\n")
    shell = subprocess.Popen(["sh", str(script)])
    binary = subprocess.Popen(["sleep", "30"])
    argv = Path(f"/proc/{binary.pid}/cmdline")
    for _ in range(500):  # its exec done (its command line set up), to tell it apart below
        if argv.read_bytes().startswith(b"sleep"):
            break
        time.sleep(0.01)
    try:
        assert realnode._is_or_becoming(shell.pid, "containerd")
        assert realnode._is_or_becoming(binary.pid, "sleep")
        assert not realnode._is_or_becoming(binary.pid, "containerd")  # another program
    finally:
        for p in (shell, binary):
            p.kill()
            p.wait()
    assert not realnode._is_or_becoming(binary.pid, "sleep")  # gone
    # in the middle of its exec a process's command line reads empty for a moment (the old
    # one gone, the new one not set up): right after Popen returns, now and then
    for _ in range(300):
        execing = subprocess.Popen(["sleep", "30"])
        try:
            assert realnode._is_or_becoming(execing.pid, "sleep")
        finally:
            execing.kill()
            execing.wait()
    zombie = subprocess.Popen(["sleep", "0"])
    stat = Path(f"/proc/{zombie.pid}/stat")
    for _ in range(500):  # exited, not reaped yet: its command line is empty
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.01)
    try:
        assert not realnode._is_or_becoming(zombie.pid, "sleep")
    finally:
        zombie.wait()


def test_a_node_takes_pods_once_ready_and_the_not_ready_taint_is_lifted() -> None:
    from kubernetes_asyncio.client import V1Node, V1NodeCondition, V1NodeSpec, V1NodeStatus, V1Taint

    def node(ready: str, *taints: str) -> V1Node:
        return V1Node(
            spec=V1NodeSpec(taints=[V1Taint(key=k, effect="NoSchedule") for k in taints] or None),
            status=V1NodeStatus(conditions=[V1NodeCondition(type="Ready", status=ready)]),
        )

    virtual = names.VIRTUAL_NODE_TAINT
    assert realnode.takes_pods(node("True", virtual))
    # Ready a few seconds before the node-lifecycle controller lifts its taint
    assert not realnode.takes_pods(node("True", virtual, "node.kubernetes.io/not-ready"))
    assert not realnode.takes_pods(node("True", "node.kubernetes.io/unreachable"))
    assert not realnode.takes_pods(node("False", virtual))
    assert not realnode.takes_pods(V1Node(spec=V1NodeSpec(), status=V1NodeStatus()))
