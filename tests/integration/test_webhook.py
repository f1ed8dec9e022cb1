"""The sidecar webhook called by real API servers over TLS, when kubernetes-asyncio creates
pods in the serverless (native sidecars) and edge (legacy sidecars) clusters."""

import asyncio
import contextlib
import http.client
import json
import re
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from agents import objects
from devkit.local import secrets
from devkit.testing import NotYet, eventually
from fluidfed.models import Access, CacheSpec, CacheTier, Placement
from fluidfed.units import ByteSize
from tests.integration.conftest import Fleet, bound_view, dataset

pytestmark = pytest.mark.integration


def app_pod(name: str, claim: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"fluidfed.io/inject": "true"}},
        "spec": {
            "containers": [
                {
                    "name": "train",
                    "image": "example/train:1",
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
            "tolerations": [
                {"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
    }


async def ready(fleet: Fleet, name: str, cluster: str, api: Any) -> Any:
    async def bound() -> Any:
        got = await bound_view(fleet, name)
        return got or NotYet(f"{got}; {await workloads_report(api, f'{name}-home')}")

    # kwok turns pods Ready late under a loaded suite: the default, generous timeout
    await eventually(bound, f"{name} Bound on {cluster}")
    url = ""

    async def serving() -> bool:
        nonlocal url
        m = re.search(r"sidecar webhook serving on (\S+)", fleet.agents[cluster].log_text())
        url = m.group(1) if m else ""
        return bool(m)

    await eventually(serving, "webhook serving")
    return url


async def workloads_report(api: Any, namespace: str) -> str:
    """What a wait for Bound says when it gives up: the namespace's StatefulSets, pods and
    warning events (a pod that cannot be scheduled says why there)."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    out = [
        f"statefulset {s.metadata.name}: {s.status.ready_replicas or 0}/{s.spec.replicas} ready"
        for s in (await apps.list_namespaced_stateful_set(namespace)).items
    ]
    for p in (await core.list_namespaced_pod(namespace)).items:
        conds = {c.type: c.status for c in p.status.conditions or []}
        out.append(f"pod {p.metadata.name} on {p.spec.node_name}: {p.status.phase} {conds}")
    events = await core.list_namespaced_event(namespace, field_selector="type=Warning")
    out += [f"event {e.reason} {e.involved_object.name}: {e.message}" for e in events.items]
    return "; ".join(out) or f"nothing in namespace {namespace}"


async def create_when_webhook_is_registered(core: Any, ns: str, pod: dict[str, Any]) -> Any:
    """The API server picks a new webhook configuration up within a moment: retry until the
    stored pod shows it was called."""
    name = pod["metadata"]["name"]

    async def created_through_the_webhook() -> Any:
        got = await core.create_namespaced_pod(ns, pod)
        if (got.metadata.annotations or {}).get("fluidfed.io/injected-datasets"):
            return got
        await core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
        return None

    return await eventually(
        created_through_the_webhook, "the API server to call the webhook", timeout=60, interval=0.5
    )


def mutate_status(url: str, certificate: Path | None) -> int:
    """The status /mutate at `url` answers a pod's AdmissionReview with, the caller
    presenting `certificate` (<path>.crt and .key) or none."""
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # (its CA is the webhook's own: not what is tested)
    if certificate is not None:
        ctx.load_cert_chain(f"{certificate}.crt", f"{certificate}.key")
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "default",
            "operation": "CREATE",
            "object": {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}},
        },
    }
    conn = http.client.HTTPSConnection(host, int(port), timeout=10, context=ctx)
    try:
        conn.request("POST", "/mutate", json.dumps(review), {"Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def serving_serial(url: str) -> int:
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, int(port)), timeout=5) as sock,
        ctx.wrap_socket(sock, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_native_injection_denial_and_certificate_rotation(
    fleet: Fleet,
    apis: dict[str, Any],
) -> None:
    name = "hooked"
    async with fleet.admin() as hub:
        await hub.apply_dataset(dataset(name, placement=Placement(clusters=["serverless"])))
    url = await ready(fleet, name, "serverless", apis["serverless"])
    core = client.CoreV1Api(apis["serverless"])
    home = f"{name}-home"

    got = await create_when_webhook_is_registered(core, home, app_pod("train-1", name))
    stored = await core.read_namespaced_pod("train-1", home)
    assert stored.metadata.uid == got.metadata.uid
    side = stored.spec.init_containers[0]
    assert side.name == f"fluidfed-{name}"
    assert side.restart_policy == "Always"
    assert side.security_context.privileged is True
    assert side.volume_mounts[0].mount_propagation == "Bidirectional"
    data = next(v for v in stored.spec.volumes if v.name == "data")
    assert data.empty_dir is not None and data.persistent_volume_claim is None
    mount = stored.spec.containers[0].volume_mounts[0]
    # no subPath: the sidecar mounts the entry's sub-path (train) as its root
    assert (mount.mount_propagation, mount.sub_path, mount.read_only) == (
        "HostToContainer",
        None,
        True,
    )
    assert stored.metadata.labels["fluidfed.io/injected"] == "true"
    # /mutate answers only the API server's own client certificate, which the cluster's
    # admission configuration presents (the pod above was mutated): none is 401, another
    # certificate its CA signed (the admin's) 403
    pki_dir = fleet.clusters["serverless"].dir / "pki"
    assert await asyncio.to_thread(mutate_status, url, None) == 401
    assert await asyncio.to_thread(mutate_status, url, pki_dir / "admin") == 403
    assert await asyncio.to_thread(mutate_status, url, pki_dir / "webhook-client") == 200
    cfg = next(v for v in stored.spec.volumes if v.config_map is not None)
    assert cfg.config_map.name == f"fluidfed-{name}"
    # the reader token of the namespace, mounted 0600 into the sidecar only
    creds = next(v for v in stored.spec.volumes if v.secret is not None)
    assert (creds.secret.secret_name, creds.secret.default_mode) == (
        f"fluidfed-{name}-reader",
        0o600,
    )
    assert any(m.name == creds.name for m in side.volume_mounts)
    assert stored.metadata.labels[f"fluidfed.io/reader-{name}"] == "true"
    keys_before = await secrets.worker_credentials(apis["serverless"], home, name)
    token_before = await secrets.reader_token(apis["serverless"], home, name)
    assert keys_before is not None and len(keys_before.keys) == 1

    # a namespace the access list does not allow is refused, with the reason
    try:
        await core.create_namespace({"metadata": {"name": "finance"}})
    except ApiException as err:
        if err.status != 409:
            raise
    with pytest.raises(ApiException) as info:
        await core.create_namespaced_pod("finance", app_pod("leak", name))
    assert f"dataset '{name}' may not be used from namespace 'finance'" in info.value.body

    # an early certificate renewal: the serving certificate changes, admission goes on
    before = serving_serial(url)
    agent = fleet.agents["serverless"]
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)

    async def renewed() -> bool:
        return serving_serial(url) != before

    await eventually(renewed, "a new serving certificate")

    # ... and a key rotation: the new key is handed out beside the old one, which still
    # signs (the readers' tokens do not change until every worker holds the new key)
    async def rotated() -> Any:
        got = await secrets.worker_credentials(apis["serverless"], home, name)
        return got if got is not None and len(got.keys) == 2 else None

    keys = await eventually(rotated, "the binding's keys rotated")
    assert keys.keys[1] == keys_before.keys[0] and keys.sign == 1
    assert await secrets.reader_token(apis["serverless"], home, name) == token_before
    got = await core.create_namespaced_pod(home, app_pod("train-2", name))
    assert got.spec.init_containers[0].name == f"fluidfed-{name}"


async def test_a_job_pod_gets_the_legacy_sidecar_on_an_old_cluster(
    fleet: Fleet,
    apis: dict[str, Any],
) -> None:
    name = "jobdata"
    tiers = [
        CacheTier(medium="MEM", quota=ByteSize(2**30)),
        CacheTier(medium="SSD", quota=ByteSize(2**34), path="/mnt/nvme"),
    ]
    async with fleet.admin() as hub:
        await hub.apply_dataset(
            dataset(
                name,
                placement=Placement(clusters=["edge"]),
                cache=CacheSpec(tiers=tiers),
                # the whole dataset: only such readers see the node's block files
                access=[Access(namespace=f"{name}-home")],
            )
        )
    await ready(fleet, name, "edge", apis["edge"])
    core, batch = client.CoreV1Api(apis["edge"]), client.BatchV1Api(apis["edge"])
    home = f"{name}-home"
    # make sure the API server calls the webhook before the Job's pod is created
    await create_when_webhook_is_registered(core, home, app_pod("probe", name))
    template = app_pod("ignored", name)
    template["spec"]["restartPolicy"] = "Never"
    await batch.create_namespaced_job(
        home,
        {  # type: ignore[arg-type]
            "metadata": {"name": "epoch"},
            "spec": {
                "template": {
                    "metadata": {"labels": template["metadata"]["labels"]},
                    "spec": template["spec"],
                }
            },
        },
    )

    async def job_pod() -> Any:
        pods = (await core.list_namespaced_pod(home, label_selector="job-name=epoch")).items
        return pods[0] if pods else None

    pod = await eventually(job_pod, "the Job's pod")
    assert [c.name for c in pod.spec.containers] == [f"fluidfed-{name}", "train"]
    assert not pod.spec.init_containers
    assert pod.spec.share_process_namespace is True
    assert pod.metadata.annotations["fluidfed.io/sidecar-mode"] == "legacy"
    assert pod.spec.containers[0].lifecycle.post_start is not None
    # the node's SSD tier, where the cache workers keep blocks: the sidecar reads it
    # (short-circuit), read-only; the API server took both the pod and the StatefulSet
    tier = next(v for v in pod.spec.volumes if v.host_path is not None)
    assert tier.host_path.path == f"/mnt/nvme/{home}/{name}/tier-1"
    seen = next(m for m in pod.spec.containers[0].volume_mounts if m.name == tier.name)
    assert (seen.mount_path, seen.read_only) == (
        f"/var/lib/fluidfed/cache/{home}/{name}/tier-1",
        True,
    )
    apps = client.AppsV1Api(apis["edge"])
    sts = await apps.read_namespaced_stateful_set(f"fluidfed-{name}-cache", home)
    host = next(v for v in sts.spec.template.spec.volumes if v.host_path is not None)
    assert host.host_path.path == tier.host_path.path


async def test_the_api_servers_client_ca_is_read_again_when_it_changes(tmp_path: Path) -> None:
    """The API server's client CA rotated (its file replaced): the webhook admits callers
    with the new CA's certificate without a restart, within CA_RECHECK (SIGHUP: at once),
    and still the old CA's (trusted beside it)."""
    from agents.controllers.webhook import SidecarWebhook
    from agents.queue import WorkQueue
    from agents.state import AgentState, StateFile
    from agents.store import Store
    from devkit import testing
    from fluidfed import pki
    from fluidfed.backoff import Backoff
    from fluidfed.models import AgentConfig

    old, new = pki.new_ca("apiserver-client-ca"), pki.new_ca("apiserver-client-ca")
    for ca, who in ((old, "old"), (new, "new")):
        pair = pki.issue(ca, "kube-apiserver-webhook-client", client=True)
        (tmp_path / f"{who}.crt").write_bytes(pair.cert_pem)
        (tmp_path / f"{who}.key").write_bytes(pair.key_pem)
    ca_file = tmp_path / "client-ca.crt"
    ca_file.write_bytes(old.cert_pem)
    cfg = AgentConfig(
        cluster_file=str(tmp_path / "edge.toml"),
        webhook_host="127.0.0.1",
        webhook_port=0,
        webhook_client_ca_file=str(ca_file),
        webhook_client_name="kube-apiserver-webhook-client",
    )
    cluster = testing.cluster("edge", kind="edge")
    hook = SidecarWebhook(
        cfg, cluster, objects.ClusterContext(name="edge", kind="edge"),
        Store(StateFile(tmp_path / "state"), AgentState(cluster="edge")),
        WorkQueue(Backoff()), tmp_path / "webhook", asyncio.Event(),
    )  # fmt: skip
    task = asyncio.create_task(hook.run())
    try:
        await eventually(lambda: hook.url or None, "the webhook serving")
        url = hook.url
        assert await asyncio.to_thread(mutate_status, url, tmp_path / "old") == 200
        with pytest.raises(ssl.SSLError):  # a CA it does not trust: the handshake fails
            await asyncio.to_thread(mutate_status, url, tmp_path / "new")
        part = tmp_path / "client-ca.new"
        part.write_bytes(new.cert_pem)
        part.replace(ca_file)
        hook.rotate_requested.set()  # (SIGHUP; else within CA_RECHECK)

        async def admitted() -> bool:
            return await asyncio.to_thread(mutate_status, url, tmp_path / "new") == 200

        await eventually(admitted, "the new client CA trusted", timeout=30)
        assert await asyncio.to_thread(mutate_status, url, tmp_path / "old") == 200
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
