"""fluidfed as a Fluid runtime, end to end: the objects the agent renders for the default
engine (a ThinRuntimeProfile whose FUSE container is fluidfed's sidecar), the config.json
Fluid would write from them with the Secret's key files, and the profile's FUSE command
started the way Fluid starts it, as a process with a real FUSE mount through /dev/fuse at
the target path; the dataset, in MinIO on loopback, is read through it byte for byte."""

import asyncio
import hashlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents import fluid, objects, render, trust
from devkit import testing, thinfuse
from devkit.local.s3 import PASSWORD, USER, S3Server
from devkit.testing import eventually_blocking
from fluidfed import validation
from fluidfed.models import Mount
from tests.integration import sources

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sources.make_dataset(tmp_path_factory.mktemp("data"), count=40, seed=18)


@pytest.fixture(scope="module")
def minio(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("minio")).start()
    try:
        asyncio.run(server.upload(sources.files(data), prefix="fluid"))
        yield server
    finally:
        server.stop()


def rendered(minio: S3Server) -> dict[str, dict[str, Any]]:
    """The agent's objects for the dataset on a cluster with Fluid, by kind."""
    ds = testing.dataset(
        "fluidrt",
        namespace="ml",
        mounts=[
            Mount(
                uri=minio.uri("fluid"),
                options={"endpoint": minio.endpoint, "region": "us-east-1"},
                secret="s3-creds",
            )
        ],
    )
    assert ds.cache.engine == "fluidfed"  # the default on clusters with Fluid
    assert validation.check_dataset(ds) == []
    b = testing.binding(ds, "standard", mode="csi")
    ctx = objects.ClusterContext(name="standard")
    return {o["kind"]: o for o in render.desired(b, ctx, trust.DataCredentials(keys=[]))}


def mounted_type(path: Path) -> str:
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[1] == str(path):
                return fields[2]
    return ""


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".fluidfed-manifest.json"
    }


def test_the_dataset_reads_through_the_profiles_fuse_container(
    minio: S3Server, data: Path, tmp_path: Path
) -> None:
    objs = rendered(minio)
    profile, runtime, dataset = objs["ThinRuntimeProfile"], objs["ThinRuntime"], objs["Dataset"]
    assert runtime["spec"]["profileName"] == profile["metadata"]["name"]
    # what Fluid does: the Secret's keys as files, config.json, the target path
    secrets = tmp_path / "etc-fluid" / "secrets"
    thinfuse.write_secret(secrets, "s3-creds", {"access-key": USER, "secret-key": PASSWORD})
    target = thinfuse.target_path("ml", "fluidrt", tmp_path / "runtime-mnt")
    doc = thinfuse.fuse_config(dataset, runtime, target, secrets)
    opts = doc["mounts"][0]["options"]
    assert opts["access-key"] == str(secrets / "s3-creds" / "access-key")  # a path, not the key
    config = thinfuse.write_config(doc, tmp_path / "etc-fluid" / "config")
    command = thinfuse.fuse_command(profile, config)
    log = (tmp_path / "fuse.log").open("wb")
    proc = subprocess.Popen(
        command, env=thinfuse.fuse_env(target), stdout=log, stderr=subprocess.STDOUT
    )
    try:

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "fuse.log").read_text()[-3000:]
            return mounted_type(target) == profile["spec"]["fileSystemType"] and any(
                target.iterdir()
            )

        eventually_blocking(ready, "the FUSE mount at the target path", timeout=60)
        assert mounted_type(target) == fluid.FUSE_FS_TYPE  # what Fluid's CSI plugin checks
        assert digests(target) == digests(data)
        with pytest.raises(OSError, match="Read-only file system"):
            (target / "written-by-a-pod").write_bytes(b"x")
        log_text = (tmp_path / "fuse.log").read_text()
        assert PASSWORD not in log_text, log_text  # credentials never logged
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == 0, (tmp_path / "fuse.log").read_text()[-3000:]
    assert mounted_type(target) == ""  # unmounted on SIGTERM


def test_a_missing_secret_key_is_named(minio: S3Server, tmp_path: Path) -> None:
    objs = rendered(minio)
    target = thinfuse.target_path("ml", "fluidrt", tmp_path / "mnt")
    doc = thinfuse.fuse_config(objs["Dataset"], objs["ThinRuntime"], target, tmp_path / "none")
    config = thinfuse.write_config(doc, tmp_path / "config")
    r = subprocess.run(
        thinfuse.fuse_command(objs["ThinRuntimeProfile"], config),
        env=thinfuse.fuse_env(target),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert str(tmp_path / "none" / "s3-creds" / "access-key") in r.stderr
    assert "encryptOptions" in r.stderr
