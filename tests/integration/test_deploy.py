"""The deployment manifests (configs/deploy/) as an operator applies them: every object
accepted by a real kube-apiserver (server-side dry-run), and the fluidfed TOML they carry
valid, with TLS on and the in-cluster agent reachable through its Service."""

from pathlib import Path

import pytest
import yaml

from devkit.local import cluster
from devkit.testing import kubectl, run_cli
from tests.conftest import CONFIGS

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("manifest", ["hub.yaml", "hub-ha.yaml", "agent.yaml"])
def test_manifests_apply_and_carry_valid_configs(
    local_clusters: dict[str, cluster.LocalCluster], manifest: str, tmp_path: Path
) -> None:
    docs = [d for d in yaml.safe_load_all((CONFIGS / "deploy" / manifest).read_text()) if d]
    lc = local_clusters["edge"]
    spaces = [d for d in docs if d["kind"] == "Namespace"]
    made = kubectl(
        lc.kubeconfig_path, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(spaces)
    )
    assert made.returncode == 0, made.stderr
    rest = [d for d in docs if d["kind"] != "Namespace"]
    dry = kubectl(
        lc.kubeconfig_path,
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(rest),
    )
    assert dry.returncode == 0, dry.stderr
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    files = []
    for name, text in cm["data"].items():
        (tmp_path / name).write_text(text)
        files.append(str(tmp_path / name))
    r = run_cli("validate", *files)
    assert r.returncode == 0, r.stderr
    if manifest == "agent.yaml":
        cfg = (tmp_path / "agent.toml").read_text()
        assert 'hub = "https://' in cfg and "ca_file" in cfg
        assert 'api_host = "0.0.0.0"' in cfg and "webhook_url" in cfg
        assert any(d["kind"] == "Service" for d in docs)
    else:
        hub = (tmp_path / "hub.toml").read_text()
        assert "tls_cert_file" in hub
    if manifest == "hub-ha.yaml":
        assert 'store = "etcd://' in hub and "etcd_ca_file" in hub
        kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
        assert {("StatefulSet", "fluidfed-etcd"), ("PodDisruptionBudget", "fluidfed-hub")} <= kinds
        # etcd admits its peers and the hubs; its plain metrics port no pod at all
        (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
        ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert ports == {2379, 2380}
        (hubs,) = [d for d in docs if d["kind"] == "Deployment"]
        assert hubs["spec"]["replicas"] == 3
