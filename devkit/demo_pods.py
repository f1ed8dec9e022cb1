"""The demo's serverless pods for real: a real node (kubelet + containerd) in the serverless
cluster, fluidfed's image in it, and app pods whose reads are measured inside the pod.

What `fluidfed demo` does where this machine can run a real node; where it cannot, the
demo says why in one line and runs the sidecar and workers as processes instead.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from typing import Any

from devkit.local import cluster, image, realnode
from fluidfed import names
from fluidfed.errors import LocalClusterError

# the app container: read every file of the mount whole with 8 threads (as a PyTorch
# DataLoader with 8 workers reads), check each against the sha256 the demo passes in WANT,
# print one JSON line of what it read and how fast
TRAIN = """
import concurrent.futures, hashlib, json, os, sys, time
root, want = sys.argv[1], json.loads(os.environ["WANT"])
def digest(rel):
    h, n = hashlib.sha256(), 0
    with open(os.path.join(root, rel), "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return rel, h.hexdigest(), n
t0 = time.monotonic()
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    got = list(pool.map(digest, sorted(want)))
seconds = time.monotonic() - t0
listed = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
print(json.dumps({
    "files": len(got), "bytes": sum(n for _, _, n in got), "seconds": seconds,
    "match": all(want[rel] == h for rel, h, _ in got), "listed": listed == sorted(want),
}), flush=True)
"""

# the load that drives autoscaling: read everything again and again, past the page cache
LOAD = """
import os, sys
files = [os.path.join(d, f) for d, _, fs in os.walk(sys.argv[1]) for f in fs]
while True:
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while os.read(fd, 1 << 20):
            pass
        os.close(fd)
"""


def unavailable() -> str:
    """Why this machine cannot run the demo's real node ("" when it can): said before
    anything starts."""
    try:
        realnode.check_host()
    except LocalClusterError as err:
        return str(err)
    missing = [t for t in ("mmdebstrap", "umoci") if shutil.which(t) is None]
    if missing:
        return (
            f"building the image needs {', '.join(missing)} (apt-get install {' '.join(missing)})"
        )
    return ""


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def app_pod(name: str, ref: str, script: str, env: dict[str, str]) -> dict[str, Any]:
    """An app pod asking for the dataset (the webhook adds the sidecar), on the real node
    and its pod network, where cluster DNS finds the cache workers."""
    taint = cluster.VIRTUAL_NODE_TAINT
    return {
        "metadata": {"name": name, "labels": {names.INJECT_LABEL: "true"}},
        "spec": {
            "nodeSelector": {realnode.REAL_NODE_LABEL: "true"},
            "tolerations": [{"key": taint["key"], "operator": "Exists", "effect": "NoSchedule"}],
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 10,
            "containers": [
                {
                    "name": "train",
                    "image": ref,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", script, "/data"],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "imagenet"}}],
        },
    }


async def image_on_node(lc: cluster.LocalCluster, say: Callable[[str], None]) -> str:
    """Build (or take from the cache) fluidfed's image and import it into the real node."""
    built = await asyncio.to_thread(image.build_fluidfed, say)
    how = f"built in {built.seconds:.0f}s" if built.seconds else "from the image cache"
    seconds = await cluster.load_image(lc.dir, built)
    say(f"image {built.ref} ({built.bytes / 2**20:.0f} MiB, {how}) imported in {seconds:.1f}s")
    return built.ref


async def cordon_kwok_nodes(api: Any) -> list[str]:
    """The real node stands in for the cluster's simulated nodes: they take no new pods, so
    the cache workers run where they really run."""
    from kubernetes_asyncio import client

    core = client.CoreV1Api(api)
    kwok = [n.metadata.name for n in (await core.list_node()).items]
    kwok = [n for n in kwok if n != realnode.NODE_NAME]
    for n in kwok:
        await core.patch_node(n, {"spec": {"unschedulable": True}})
    return kwok


async def finished(api: Any, namespace: str, name: str, within: float) -> Any:
    """The pod once it has finished; an error with its containers' states if it failed or
    took longer than `within` seconds."""
    from kubernetes_asyncio import client

    core = client.CoreV1Api(api)
    pod: Any = None
    try:
        async with asyncio.timeout(within):
            while True:
                pod = await core.read_namespaced_pod(name, namespace)
                if pod.status.phase in ("Succeeded", "Failed"):
                    break
                await asyncio.sleep(0.5)
    except TimeoutError:
        raise RuntimeError(f"pod {namespace}/{name} not finished in {within:.0f}s: "
                           f"{_states(pod)}") from None  # fmt: skip
    if pod.status.phase != "Succeeded":
        raise RuntimeError(f"pod {namespace}/{name} failed: {_states(pod)}")
    return pod


def _states(pod: Any) -> str:
    if pod is None:
        return "not found"
    statuses = (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
    return "; ".join(f"{c.name}: {c.state}" for c in statuses) or str(pod.status.phase)


async def result(api: Any, namespace: str, name: str) -> dict[str, Any]:
    """The JSON line TRAIN printed."""
    from kubernetes_asyncio import client

    resp: Any = await client.CoreV1Api(api).read_namespaced_pod_log(
        name, namespace, container="train", _preload_content=False
    )
    text = (await resp.read()).decode()
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"pod {namespace}/{name} printed no result: {text[-500:]}")
    got: dict[str, Any] = json.loads(lines[-1])
    return got


async def source_secret(api: Any, name: str, namespaces: list[str], data: dict[str, str]) -> None:
    """The mount's Secret as a user makes it (`kubectl create secret generic NAME
    --from-literal=AWS_ACCESS_KEY_ID=...`), in the dataset's namespace and its readers'."""
    from kubernetes_asyncio import client

    core = client.CoreV1Api(api)
    for ns in namespaces:
        body: Any = {"metadata": {"name": ns}}
        try:
            await core.create_namespace(body)
        except client.ApiException as err:
            if err.status != 409:
                raise
        secret: Any = {"metadata": {"name": name}, "type": "Opaque", "stringData": data}
        await core.create_namespaced_secret(ns, secret)


async def pods_report(lc: cluster.LocalCluster, namespace: str) -> str:
    """One line per pod of `namespace`: where it runs and its containers' states."""
    from kubernetes_asyncio import client

    async with await lc.api_client() as api:
        pods = (await client.CoreV1Api(api).list_namespaced_pod(namespace)).items
    return "\n".join(f"{p.metadata.name} on {p.spec.node_name}: {_states(p)}" for p in pods)
