"""`fluidfed render`: every object the agent would make for a dataset on a cluster, printed
for review, and each one accepted by a real kube-apiserver (server-side dry-run; the
standard cluster serves the Fluid CRDs the local clusters install)."""

import json
from pathlib import Path

import pytest
import yaml

from devkit.local import cluster
from devkit.testing import kubectl, run_cli
from tests.conftest import CONFIGS

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("edge", {"ConfigMap", "Secret", "NetworkPolicy", "Service", "StatefulSet"}),
        (
            "standard",
            {
                "Dataset",
                "ThinRuntime",
                "ThinRuntimeProfile",
                "ConfigMap",
                "Secret",
                "NetworkPolicy",
                "Service",
                "StatefulSet",
            },
        ),
    ],
)
def test_rendered_objects_are_what_the_cluster_accepts(
    local_clusters: dict[str, cluster.LocalCluster], kind: str, expected: set[str]
) -> None:
    dataset = str(CONFIGS / "datasets" / "imagenet.toml")
    r = run_cli("render", "-f", dataset, "--cluster", str(CONFIGS / "clusters" / f"{kind}.toml"))
    assert r.returncode == 0, r.stderr
    objs = [o for o in yaml.safe_load_all(r.stdout) if o]
    assert {o["kind"] for o in objs} - {"Namespace"} == expected
    as_json = run_cli(
        "render", "-f", dataset, "--cluster", str(CONFIGS / "clusters" / f"{kind}.toml"),
        "-o", "json",
    )  # fmt: skip
    assert json.loads(as_json.stdout) == objs
    lc = local_clusters[kind]
    spaces = [o for o in objs if o["kind"] == "Namespace"]
    rest = [o for o in objs if o["kind"] != "Namespace"]
    made = kubectl(
        lc.kubeconfig_path, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(spaces)
    )
    assert made.returncode == 0, made.stderr
    dry = kubectl(
        lc.kubeconfig_path, "apply", "--server-side", "--dry-run=server", "--field-manager=fluidfed-agent",
        "-f", "-", stdin=yaml.safe_dump_all(rest),
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("serverside-applied (server dry run)") == len(rest), dry.stdout


def test_render_names_a_bad_file(tmp_path: Path) -> None:
    r = run_cli("render", "-f", str(CONFIGS / "hub.toml"), "--cluster", str(CONFIGS / "hub.toml"))
    assert r.returncode == 2 and "expected a [cluster] table" in r.stderr
