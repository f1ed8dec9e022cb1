"""Real kube-apiservers (with controller-manager, scheduler and kwok nodes) on loopback,
driven with kubernetes-asyncio: what fluidfed's agents will rely on."""

import asyncio
import base64
import functools
import json
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException

from devkit.local import binaries, cluster
from devkit.testing import eventually, run_cli
from fluidfed import pki
from tests.conftest import CONFIGS

pytestmark = pytest.mark.integration

KINDS = list(cluster.KINDS)


def toleration() -> list[dict[str, str]]:
    t = cluster.VIRTUAL_NODE_TAINT
    return [{"key": t["key"], "operator": "Equal", "value": t["value"], "effect": t["effect"]}]


@pytest.mark.parametrize("kind", KINDS)
async def test_namespace_crd_statefulset_watch_and_namespace_deletion(
    local_clusters: dict[str, cluster.LocalCluster], kind: str
) -> None:
    lc = local_clusters[kind]
    async with await lc.api_client() as api:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        ext, custom = client.ApiextensionsV1Api(api), client.CustomObjectsApi(api)
        ns = f"t-{kind}"
        await core.create_namespace({"metadata": {"name": ns}})  # type: ignore[arg-type]

        # a CRD becomes Established, then holds an object
        crd: dict[str, Any] = {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"widgets{kind}.example.fluidfed.io"},
            "spec": {
                "group": "example.fluidfed.io",
                "scope": "Namespaced",
                "names": {
                    "plural": f"widgets{kind}",
                    "singular": f"widget{kind}",
                    "kind": f"Widget{kind.title()}",
                },
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            },
        }
        await ext.create_custom_resource_definition(crd)  # type: ignore[arg-type]

        async def established() -> bool:
            got = await ext.read_custom_resource_definition(crd["metadata"]["name"])
            return any(
                c.type == "Established" and c.status == "True" for c in got.status.conditions or []
            )

        await eventually(established, what="CRD Established")
        await custom.create_namespaced_custom_object(
            "example.fluidfed.io",
            "v1",
            ns,
            f"widgets{kind}",
            {
                "apiVersion": "example.fluidfed.io/v1",
                "kind": f"Widget{kind.title()}",
                "metadata": {"name": "w1"},
                "spec": {"size": 3},
            },
        )
        obj = await custom.get_namespaced_custom_object(
            "example.fluidfed.io", "v1", ns, f"widgets{kind}", "w1"
        )
        assert obj["spec"] == {"size": 3}

        # watch pods while a StatefulSet rolls out on the kwok nodes
        events: list[tuple[str, str, str]] = []

        # from the list's revision: every event after it comes, however late the stream
        # starts (a sleep stood in for "the watch is established")
        since = (await core.list_namespaced_pod(ns)).metadata.resource_version

        async def watch_pods() -> None:
            w = watch.Watch()
            async with w.stream(
                core.list_namespaced_pod, ns, resource_version=since, timeout_seconds=60
            ) as stream:
                async for ev in stream:
                    pod = ev["object"]
                    events.append((ev["type"], pod.metadata.name, pod.status.phase or ""))
                    if sum(1 for t, _, ph in events if ph == "Running" and t == "MODIFIED") >= 2:
                        break

        watcher = asyncio.create_task(watch_pods())
        sts = {
            "metadata": {"name": "cache"},
            "spec": {
                "replicas": 2,
                "serviceName": "cache",
                "selector": {"matchLabels": {"app": "cache"}},
                "template": {
                    "metadata": {"labels": {"app": "cache"}},
                    "spec": {
                        "containers": [{"name": "c", "image": "example/cache:1"}],
                        "tolerations": toleration(),
                    },
                },
            },
        }
        await apps.create_namespaced_stateful_set(ns, sts)  # type: ignore[arg-type]

        async def running() -> list[Any]:
            pods = (await core.list_namespaced_pod(ns)).items
            return [p for p in pods if p.status.phase == "Running"] if len(pods) == 2 else []

        pods = await eventually(running, what="StatefulSet pods Running")
        nodes = {n["metadata"]["name"] for n in cluster.flavour_nodes(kind)}  # type: ignore[arg-type]
        assert {p.metadata.name for p in pods} == {"cache-0", "cache-1"}
        assert all(p.spec.node_name in nodes for p in pods)
        await asyncio.wait_for(watcher, 60)
        assert any(t == "ADDED" and n == "cache-0" for t, n, _ in events)
        assert any(t == "MODIFIED" and ph == "Running" for t, _, ph in events)

        # namespace deletion runs the namespace controller: everything inside goes too
        await core.delete_namespace(ns)

        async def gone() -> bool:
            try:
                await core.read_namespace(ns)
            except ApiException as err:
                return err.status == 404
            return False

        await eventually(gone, what="namespace deleted", timeout=90)
        await ext.delete_custom_resource_definition(crd["metadata"]["name"])


async def test_daemonset_skips_the_serverless_virtual_node(
    local_clusters: dict[str, cluster.LocalCluster],
) -> None:
    ds = {
        "metadata": {"name": "node-agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "node-agent"}},
            "template": {
                "metadata": {"labels": {"app": "node-agent"}},
                "spec": {"containers": [{"name": "a", "image": "example/agent:1"}]},
            },
        },
    }
    results = {}
    for kind in ("standard", "serverless"):
        async with await local_clusters[kind].api_client() as api:
            apps = client.AppsV1Api(api)
            await apps.create_namespaced_daemon_set("default", ds)  # type: ignore[arg-type]

            status = await eventually(
                functools.partial(_ds_observed, apps), what="DaemonSet observed"
            )
            if kind == "standard":
                status = await eventually(
                    functools.partial(_ds_scheduled, apps, 3), what="DaemonSet on 3 standard nodes"
                )
            results[kind] = status.desired_number_scheduled
            await apps.delete_namespaced_daemon_set("node-agent", "default")
    assert results == {"standard": 3, "serverless": 0}


async def _ds_observed(apps: Any) -> Any:
    got = await apps.read_namespaced_daemon_set("node-agent", "default")
    return got.status if got.status.observed_generation else None


async def _ds_scheduled(apps: Any, n: int) -> Any:
    got = await apps.read_namespaced_daemon_set("node-agent", "default")
    return got.status if got.status.desired_number_scheduled == n else None


async def test_api_server_calls_a_mutating_webhook_over_tls(
    local_clusters: dict[str, cluster.LocalCluster], tmp_path: Path
) -> None:
    lc = local_clusters["serverless"]
    ca = pki.new_ca("webhook-test-ca")
    serving = pki.issue(ca, "webhook", server=True, hosts=("127.0.0.1",))
    (tmp_path / "tls.crt").write_bytes(serving.cert_pem)
    (tmp_path / "tls.key").write_bytes(serving.key_pem)
    seen: list[dict[str, Any]] = []

    async def mutate(request: web.Request) -> web.Response:
        review = await request.json()
        seen.append(review)
        patch = [
            {
                "op": "add",
                "path": "/metadata/annotations",
                "value": {"webhook.fluidfed.io/seen": "true"},
            }
        ]
        return web.json_response(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": review["request"]["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
            }
        )

    app = web.Application()
    app.router.add_post("/mutate", mutate)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with await lc.api_client() as api:
            adm, core = client.AdmissionregistrationV1Api(api), client.CoreV1Api(api)
            await adm.create_mutating_webhook_configuration(
                {  # type: ignore[arg-type]
                    "metadata": {"name": "test-webhook"},
                    "webhooks": [
                        {
                            "name": "pods.test.fluidfed.io",
                            "clientConfig": {
                                "url": f"https://127.0.0.1:{port}/mutate",
                                "caBundle": base64.b64encode(ca.cert_pem).decode(),
                            },
                            "rules": [
                                {
                                    "operations": ["CREATE"],
                                    "apiGroups": [""],
                                    "apiVersions": ["v1"],
                                    "resources": ["pods"],
                                }
                            ],
                            "objectSelector": {"matchLabels": {"webhook-test": "yes"}},
                            "admissionReviewVersions": ["v1"],
                            "sideEffects": "None",
                            "failurePolicy": "Fail",
                            "timeoutSeconds": 5,
                        }
                    ],
                }
            )
            pod = {
                "metadata": {"name": "hooked", "labels": {"webhook-test": "yes"}},
                "spec": {
                    "containers": [{"name": "c", "image": "example/app:1"}],
                    "tolerations": toleration(),
                },
            }

            async def created() -> Any:
                # the configuration reaches the API server's webhook cache shortly after
                try:
                    return await core.create_namespaced_pod("default", pod)  # type: ignore[arg-type]
                except ApiException as err:
                    if err.status == 409:
                        return await core.read_namespaced_pod("hooked", "default")
                    raise

            await created()

            async def annotated() -> Any:
                got = await core.read_namespaced_pod("hooked", "default")
                if (got.metadata.annotations or {}).get("webhook.fluidfed.io/seen") == "true":
                    return got
                await core.delete_namespaced_pod("hooked", "default", grace_period_seconds=0)
                await asyncio.sleep(0.5)
                await created()
                return None

            await eventually(annotated, what="pod mutated by the webhook")
            assert seen and seen[-1]["request"]["kind"]["kind"] == "Pod"
            # a pod without the label is not sent to the webhook
            before = len(seen)
            await core.create_namespaced_pod(
                "default",
                {  # type: ignore[arg-type]
                    "metadata": {"name": "plain"},
                    "spec": {
                        "containers": [{"name": "c", "image": "example/app:1"}],
                        "tolerations": toleration(),
                    },
                },
            )
            assert len(seen) == before
            await adm.delete_mutating_webhook_configuration("test-webhook")
    finally:
        await runner.cleanup()


def test_cli_local_up_list_down_leaves_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "FLUIDFED_CLUSTERS_DIR": str(tmp_path)}

    def fluidfed(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=env, timeout=240)

    up = fluidfed("local", "up", "cli-edge", "--kind", "edge")
    assert up.returncode == 0, up.stderr
    kubeconfig = Path(up.stdout.strip())
    assert kubeconfig == tmp_path / "cli-edge" / "kubeconfig" and kubeconfig.exists()
    state = cluster.load_state(tmp_path / "cli-edge")
    assert state is not None and cluster.running(state)
    listed = fluidfed("local", "list")
    assert "cli-edge" in listed.stdout and "running" in listed.stdout
    r = subprocess.run(
        [
            str(binaries.cache_dir() / "kubectl"),
            "--kubeconfig",
            str(kubeconfig),
            "get",
            "nodes",
            "-o",
            "name",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sorted(r.stdout.split()) == ["node/edge-0", "node/edge-1"]
    down = fluidfed("local", "down", "cli-edge")
    assert down.returncode == 0
    assert not any(cluster._alive(p, b) for b, p in state.pids.items())
    assert not (tmp_path / "cli-edge").exists()
    assert fluidfed("local", "down", "nope").returncode == 2


@pytest.mark.parametrize("manifest", ["hub.yaml", "agent.yaml"])
async def test_deploy_manifests_pass_a_server_side_dry_run(
    local_clusters: dict[str, cluster.LocalCluster], manifest: str
) -> None:
    import yaml
    from kubernetes_asyncio.dynamic import DynamicClient

    docs = [d for d in yaml.safe_load_all((CONFIGS / "deploy" / manifest).read_text()) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment"} <= kinds
    async with await local_clusters["standard"].api_client() as api:
        core = client.CoreV1Api(api)
        try:
            await core.create_namespace({"metadata": {"name": "fluidfed-system"}})  # type: ignore[arg-type]
        except ApiException as err:
            if err.status != 409:  # already there from an earlier run of this test
                raise
        dyn = await DynamicClient(
            api, cache_file=str(Path(os.environ.get("TMPDIR", "/tmp")) / f"dry-{os.getpid()}.json")
        )
        for doc in docs:
            if doc["kind"] == "Namespace":
                continue
            res = await dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            got = await dyn.create(
                res,
                body=doc,
                namespace=doc["metadata"].get("namespace"),
                dry_run="All",
                field_manager="fluidfed-test",
            )
            data = got.to_dict()
            assert data.get("kind") == doc["kind"], data  # a failed request comes back as a Status
        if manifest == "agent.yaml":
            # the agent's own configuration in the manifest is valid fluidfed TOML
            from fluidfed import config

            cm = next(d for d in docs if d["kind"] == "ConfigMap")
            config.loads(cm["data"]["agent.toml"], file="agent.toml")
            config.loads(cm["data"]["cluster.toml"], file="cluster.toml")
