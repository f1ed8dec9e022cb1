"""What the agent writes for every Fluid engine, against Fluid's real CRDs in a real
kube-apiserver: every mount of every scheme that the catalog accepts for an engine is
rendered and server-side dry-run with strict field validation (an unknown or mistyped
field is an error, not silently dropped). A spec the hub accepts must not fail in the
cluster."""

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents import objects, render, trust
from devkit import testing
from devkit.local import cluster, crds
from devkit.testing import HubProcess, kubectl
from fluidfed import Client, engines, errors, names, validation
from fluidfed.models import Access, CacheSpec, Dataset, Engine, LoadRequest, Mount
from tests.integration.conftest import cli

pytestmark = pytest.mark.integration

CTX = objects.ClusterContext(name="standard", worker_image="ghcr.io/fluidfed/fluidfed:0.1.0")
S3 = {"endpoint": "http://minio.storage:9000", "region": "us-east-1"}
MOUNTS = [
    Mount(uri="s3://datasets/imagenet", options=S3, secret="s3-creds"),
    Mount(uri="oss://bucket/data", options={"endpoint": "https://oss.example"}, secret="oss"),
    Mount(uri="https://mirror.example/spark/"),
    Mount(uri="file:///mnt/data", path="/local"),
    Mount(uri="nfs://0a1b2c-xyz.cn-hangzhou.nas.aliyuncs.com:/train"),
    Mount(uri="nfs://nfs.storage:/exports/train"),
    Mount(
        uri="juicefs:///demo",
        name="jfs-demo",
        options={"bucket": "http://minio.storage:9000/jfs", "storage": "minio"},
        secret="jfs-secret",
    ),
    Mount(uri="dataset://imagenet"),
]


def spec(engine: Engine, mount: Mount, i: int) -> Dataset:
    tiers = [testing.cache_tier("MEM", 2**30), testing.cache_tier("SSD", 20 * 2**30, "/mnt/ssd")]
    if engines.RULES[engine].one_tier:  # (JuiceFS, Jindo: the first level only; else refused)
        tiers = tiers[1:]
    return testing.dataset(
        f"{engine}-{i}",
        namespace="fluid-home",
        mounts=[mount],
        access=[Access(namespace="fluid-home"), Access(namespace="fluid-other", sub_path="x")],
        cache=CacheSpec(
            engine=engine,
            profile="nfs-profile" if engine == "thin" else "",
            replicas=2,
            tiers=tiers,
        ),
    )


def accepted() -> list[Dataset]:
    """Every (engine, mount) the catalog's validation accepts."""
    out = []
    for engine in engines.RULES:
        for i, m in enumerate(MOUNTS):
            ds = spec(engine, m, i)
            if not validation.check_dataset(ds):
                out.append(ds)
    return out


def test_the_cluster_serves_fluids_own_crds(
    local_clusters: dict[str, cluster.LocalCluster],
) -> None:
    found = crds.find()
    print(found.describe())
    got = kubectl(
        local_clusters["standard"].kubeconfig_path, "get", "crd", "datasets.data.fluid.io", "-o", "json"
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    schema = json.loads(got.stdout)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # Fluid's schema knows sharedEncryptOptions; fluidfed's fallback does not
    assert ("sharedEncryptOptions" in schema["properties"]["spec"]["properties"]) == found.real


def test_every_spec_the_catalog_accepts_is_accepted_by_fluids_crds(
    local_clusters: dict[str, cluster.LocalCluster],
) -> None:
    specs = accepted()
    # every engine serves something, and each refuses something
    assert {d.cache.engine for d in specs} == set(engines.RULES)
    assert len(specs) < len(engines.RULES) * len(MOUNTS)
    objs: list[dict[str, Any]] = []
    load = LoadRequest(id=5, path="train", schedule="0 */6 * * *")
    for ds in specs:
        b = testing.binding(ds, "standard", mode="csi", replicas=2, load=load)
        objs += render.desired(b, CTX, trust.DataCredentials(keys=[]))
    kube = local_clusters["standard"].kubeconfig_path
    spaces = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Namespace"}
    rest = [o for o in objs if o["kind"] != "Namespace"]
    made = kubectl(
        kube, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(list(spaces.values()))
    )
    assert made.returncode == 0, made.stderr
    kinds = {o["kind"] for o in rest}
    assert {"Dataset", "ThinRuntime", "ThinRuntimeProfile", "AlluxioRuntime", "JindoRuntime",
            "JuiceFSRuntime", "EFCRuntime", "DataLoad"} <= kinds  # fmt: skip
    dry = kubectl(
        kube, "apply", "--server-side", "--dry-run=server", "--validate=strict",
        f"--field-manager={names.AGENT}", "-f", "-", stdin=yaml.safe_dump_all(rest),
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("serverside-applied (server dry run)") == len(rest), dry.stdout


def test_fields_survive_the_api_server(local_clusters: dict[str, cluster.LocalCluster]) -> None:
    """A server-side dry-run shows what the API server keeps: nothing the engines read is
    pruned or rewritten."""
    kube = local_clusters["standard"].kubeconfig_path
    ds = spec("alluxio", MOUNTS[0], 0)
    b = testing.binding(ds, "standard", mode="csi", replicas=2)
    objs = render.desired(b, CTX, trust.DataCredentials(keys=[]))
    spaces = [o for o in objs if o["kind"] == "Namespace"]
    kubectl(kube, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(spaces))
    for o in objs:
        if o["kind"] == "Namespace":
            continue
        dry = kubectl(
            kube, "apply", "--server-side", "--dry-run=server", "-o", "json", "-f", "-",
            stdin=yaml.safe_dump(o),
        )  # fmt: skip
        assert dry.returncode == 0, dry.stderr
        kept = json.loads(dry.stdout)["spec"]
        assert _contains(kept, o["spec"]), (o["kind"], kept)


def _contains(got: Any, wanted: Any) -> bool:
    if isinstance(wanted, dict):
        return isinstance(got, dict) and all(_contains(got.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return (
            isinstance(got, list) and len(got) == len(wanted) and all(map(_contains, got, wanted))
        )
    return bool(got == wanted)


async def test_the_hub_refuses_what_the_engine_cannot_serve(
    hub: HubProcess, tmp_path: Path
) -> None:
    spec = (
        '[dataset]\nname = "nas"\n[[dataset.mounts]]\nuri = "s3://bucket/data"\n'
        '[dataset.cache]\nengine = "efc"\n'
    )
    (tmp_path / "nas.toml").write_text(spec)
    r = cli(hub, "apply", "-f", str(tmp_path / "nas.toml"))
    assert r.returncode == 2
    assert "mounts[0].uri" in r.stderr and "cannot serve s3://" in r.stderr
    assert "Engines that serve s3://: fluidfed, thin, alluxio, jindo" in r.stderr
    # the hub itself, not only the CLI
    ds = testing.dataset("nas", mounts=[Mount(uri="s3://b/p")], cache=CacheSpec(engine="efc"))
    async with Client(hub.url, hub.admin_token) as c:
        with pytest.raises(errors.BadRequest) as err:
            await c.apply_dataset(ds)
    assert [p.path for p in err.value.problems] == ["dataset.mounts[0].uri"]
