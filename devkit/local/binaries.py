"""The local-cluster binaries: found in the cache, or built once by testbin.sh."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

from devkit.local import paths

K8S_VERSION = "v1.34.4"
NEEDED = (
    "etcd",
    "etcdutl",  # `etcdutl snapshot restore`: a hub backup on etcd put back
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "minio",
    # a real node: kubelet, containerd (+ ctr, the runc shim), runc, CNI plugins, CoreDNS, pause
    "kubelet",
    "containerd",
    "ctr",
    "containerd-shim-runc-v2",
    "runc",
    "cni/loopback",
    "cni/bridge",
    "cni/host-local",
    "coredns",
    "pause",
)
SCRIPT = Path(__file__).with_name("testbin.sh")

# kwok's stages: nodes become Ready and keep their lease; pods are scheduled -> Running;
# pods of finished Jobs complete; deleted pods go away.
KWOK_CONFIG = """\
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  enableCRDs: []
  nodeLeaseDurationSeconds: 40
"""


def cache_dir() -> Path:
    return paths.cache_dir("testbin", "FLUIDFED_TESTBIN") / K8S_VERSION


def missing() -> list[str]:
    d = cache_dir()
    return [b for b in NEEDED if not (d / b).is_file()]


async def ensure(progress: Callable[[str], None]) -> Path:
    """The directory with every binary, building what is missing (minutes, the first time)."""
    if not missing():
        return cache_dir()
    from fluidfed.errors import LocalClusterError

    if shutil.which("go") is None:
        raise LocalClusterError(
            "the local clusters need Go (>= 1.24) to build Kubernetes, kwok and etcd once: "
            "install Go and retry, or set FLUIDFED_TESTBIN to a directory that has them"
        )
    progress(
        f"building local-cluster binaries ({', '.join(missing())}) into {cache_dir()}: "
        "this takes several minutes the first time"
    )
    proc = await asyncio.create_subprocess_exec(
        "bash", str(SCRIPT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    tail: list[str] = []
    async for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        tail = [*tail[-20:], line]
        if line.startswith("[testbin]"):
            progress(line)
    if await proc.wait() != 0 or missing():
        raise LocalClusterError("building the local-cluster binaries failed:\n" + "\n".join(tail))
    return cache_dir()
