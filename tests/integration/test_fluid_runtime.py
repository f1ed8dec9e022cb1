"""fluidfed as a Fluid runtime, end to end: the objects the agent renders for the default
engine (a ThinRuntimeProfile whose FUSE container is fluidfed's sidecar, and fluidfed's
cache workers), started the way Fluid and the kubelet start them: the worker from the
StatefulSet's container with its ConfigMap and Secrets, the profile's FUSE command with the
config.json Fluid would write and the Secrets' key files at their container paths, each a
process in a mount namespace of its own; the FUSE mount (real, through /dev/fuse) appears
at Fluid's target path through a shared mount, as with Bidirectional propagation. The
dataset, in MinIO on loopback, is read through it byte for byte, its blocks served by the
cache worker."""

import base64
import hashlib
import json
import os
import random
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents import fluid, objects, render, trust
from devkit import testing, thinfuse
from devkit.local.s3 import PASSWORD, USER, S3Server
from devkit.testing import eventually_blocking
from fluidfed import validation
from fluidfed.data import credentials, protocol
from fluidfed.models import Mount
from tests.integration import sources

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces and mounts need root"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sources.make_dataset(tmp_path_factory.mktemp("data"), count=40, seed=18)


@pytest.fixture(scope="module")
def minio(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with sources.minio_serving(data, "fluid", tmp_path_factory.mktemp("minio")) as server:
        yield server


S3_SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "s3-creds"},
    "data": {
        "access-key": base64.b64encode(USER.encode()).decode(),
        "secret-key": base64.b64encode(PASSWORD.encode()).decode(),
    },
}


def rendered(minio: S3Server, creds: trust.DataCredentials) -> list[dict[str, Any]]:
    """The agent's objects for the dataset on a cluster with Fluid."""
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
    return render.desired(b, objects.ClusterContext(name="standard"), creds)


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (o,) = [o for o in objs if o["kind"] == kind and o["metadata"].get("namespace") != "default"][
        :1
    ]
    return o


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


def stop(c: thinfuse.Container) -> int:
    c.proc.send_signal(signal.SIGTERM)
    return c.proc.wait(timeout=60)


def test_the_dataset_reads_through_the_profiles_fuse_container_and_the_workers(
    minio: S3Server, data: Path, tmp_path: Path
) -> None:
    creds = trust.DataCredentials(keys=[os.urandom(32)])
    objs = rendered(minio, creds)
    profile, runtime = one(objs, "ThinRuntimeProfile"), one(objs, "ThinRuntime")
    dataset, sts = one(objs, "Dataset"), one(objs, "StatefulSet")
    assert runtime["spec"]["profileName"] == profile["metadata"]["name"]
    named = {o["metadata"]["name"]: o for o in objs if o["kind"] in ("Secret", "ConfigMap")}
    sources_ = {**named, "s3-creds": S3_SECRET}
    # the cluster's DNS: the StatefulSet's pod by its name behind the headless Service
    pod_ip = f"127.0.{random.randint(1, 250)}.{random.randint(2, 250)}"
    pod = f"{sts['metadata']['name']}-0"
    hosts = {f"{pod}.{sts['spec']['serviceName']}.ml.svc": pod_ip}
    logs = {n: (tmp_path / f"{n}.log").open("wb") for n in ("worker", "fuse")}

    # the cache worker, from the StatefulSet's pod template
    spec = sts["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    env = {"POD_IP": pod_ip, "HOSTNAME": pod, "access-key": USER, "secret-key": PASSWORD}
    worker = thinfuse.Container(
        tmp_path / "worker",
        thinfuse.command(["fluidfed", *thinfuse.expand(c["args"], env)]),
        files=thinfuse.volume_files(spec["volumes"], c["volumeMounts"], sources_),
        env=thinfuse.clean_env(env),
        hosts=hosts,
        log=logs["worker"],
    )
    try:
        with thinfuse.propagating(tmp_path / "runtime-mnt") as root:
            target = thinfuse.target_path("ml", "fluidrt", root)
            files = thinfuse.fluid_fuse_files(dataset, runtime, profile, target, sources_)
            doc = json.loads(files[thinfuse.FLUID_CONFIG])
            # Fluid hands the credentials over as files, never their values
            assert doc["mounts"][0]["options"]["access-key"] == (
                "/etc/fluid/secrets/s3-creds/access-key"
            )
            fuse = thinfuse.Container(
                tmp_path / "fuse",
                thinfuse.command(profile["spec"]["fuse"]["command"]),
                files=files,
                env=thinfuse.clean_env({"MOUNT_POINT": str(target)}),
                hosts=hosts,
                log=logs["fuse"],
            )
            try:

                def ready() -> bool:
                    for name, c in (("fuse", fuse), ("worker", worker)):
                        assert c.proc.poll() is None, (tmp_path / f"{name}.log").read_text()
                    want: str = profile["spec"]["fileSystemType"]
                    return mounted_type(target) == want and listens(pod_ip, objects.WORKER_PORT)

                # the mount, and the worker listening (as its readiness probe would say):
                # a read before it listens goes to MinIO, and the worker is skipped for 5 s
                eventually_blocking(ready, "the FUSE mount at Fluid's target path", timeout=60)
                assert mounted_type(target) == fluid.FUSE_FS_TYPE  # what Fluid's CSI checks
                assert digests(target) == digests(data)
                with pytest.raises(OSError, match="Read-only file system"):
                    (target / "written-by-a-pod").write_bytes(b"x")
            finally:
                assert stop(fuse) == 0, (tmp_path / "fuse.log").read_text()
            assert mounted_type(target) == ""  # unmounted on SIGTERM
        # the blocks came from the cache worker, which read them from MinIO once
        token = creds.token(credentials.Claims(role="agent", dataset="fluidrt"))
        req = urllib.request.Request(
            f"http://{pod_ip}:{objects.WORKER_PORT}{protocol.STATUS}",
            headers=credentials.authorization(token),
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            st = json.loads(resp.read())
        assert st["served"]["blocks"] > 0 and st["ufs"]["reads"] > 0, st
        for name in logs:
            text = (tmp_path / f"{name}.log").read_text()
            assert PASSWORD not in text, text  # credentials never logged
    finally:
        stop(worker)
        for f in logs.values():
            f.close()


def test_a_missing_secret_key_is_named(minio: S3Server, tmp_path: Path) -> None:
    objs = rendered(minio, trust.DataCredentials(keys=[]))
    profile = one(objs, "ThinRuntimeProfile")
    target = thinfuse.target_path("ml", "fluidrt", tmp_path / "mnt")
    named = {o["metadata"]["name"]: o for o in objs if o["kind"] in ("Secret", "ConfigMap")}
    empty = {**S3_SECRET, "data": {}}
    files = thinfuse.fluid_fuse_files(
        one(objs, "Dataset"), one(objs, "ThinRuntime"), profile, target,
        {**named, "s3-creds": empty},
    )  # fmt: skip
    fuse = thinfuse.Container(
        tmp_path / "fuse",
        thinfuse.command(profile["spec"]["fuse"]["command"]),
        files=files,
        env=thinfuse.clean_env({"MOUNT_POINT": str(target)}),
        log=(tmp_path / "fuse.log").open("wb"),
    )
    assert fuse.proc.wait(timeout=60) == 2
    text = (tmp_path / "fuse.log").read_text()
    assert "/etc/fluid/secrets/s3-creds/access-key" in text and "encryptOptions" in text


def listens(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True
