"""The agent's API takes registrations and metrics only from its binding's workers and
sidecars: a real `fluidfed worker serve` registers and a real sidecar exports OTLP with
their tokens, while the same requests without a valid one are refused (issue 16)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

from agents import api, otlp
from agents.metrics import MetricWindow
from agents.registry import Registry
from devkit.local.cluster import free_port
from devkit.local.processes import LOCAL_KEY, SidecarProcess, WorkerProcess, local_token
from devkit.testing import NotYet, eventually
from fluidfed.data import protocol
from tests.integration import sources

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
]

DATASET = "train"


@pytest.fixture
async def agent_api() -> AsyncIterator[tuple[str, Registry, MetricWindow]]:
    registry, window = Registry(ttl=30), MetricWindow(window=15)
    keys = {DATASET: [LOCAL_KEY]}  # the binding's keys, as the agent's state holds them
    app = api.make_app(registry, lambda d: keys.get(d, []), window)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", registry, window
    finally:
        await runner.cleanup()


def _export(dataset: str) -> bytes:
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.extend(
        [
            KeyValue(key="fluidfed.dataset", value=AnyValue(string_value=dataset)),
            KeyValue(key="service.name", value=AnyValue(string_value="fluidfed-sidecar")),
        ]
    )
    m = metrics_pb2.Metric(name="fluidfed.read.bytes")
    m.sum.data_points.add(as_int=10**12, time_unix_nano=time.time_ns())
    rm.scope_metrics.add().metrics.extend([m])
    out: bytes = req.SerializeToString()
    return out


def _auth(role: Any, dataset: str = DATASET, key: bytes = LOCAL_KEY) -> dict[str, str]:
    return {"Authorization": "Bearer " + local_token(dataset, role, key=key)}


async def test_only_the_bindings_workers_register_and_its_holders_send_metrics(
    agent_api: tuple[str, Registry, MetricWindow],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, registry, window = agent_api
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "300")
    data = sources.make_dataset(tmp_path / "data", count=20, seed=3)
    mount = {"uri": f"file://{data}"}
    port = free_port()
    worker = WorkerProcess(
        tmp_path / "w",
        {
            "dataset": DATASET,
            "mounts": [mount],
            "agent": url,
            "report_interval": 0.2,
            "workers": {"endpoints": [f"http://127.0.0.1:{port}"]},
        },
        port,
    ).start()
    sc = SidecarProcess(
        tmp_path / "s",
        {"dataset": DATASET, "mounts": [mount], "agent": url, "workers": {"endpoints": []}},
        tmp_path / "mnt",
    ).start()
    try:
        # the real worker registers with its peer token; the real sidecar's OTLP counts
        def registered() -> Any:
            live = registry.alive(DATASET, time.time())
            return live or NotYet("no worker registered")

        await eventually(registered, "the worker to register", timeout=30)
        for p in sc.mountpoint.rglob("*"):
            if p.is_file():
                p.read_bytes()

        def exported() -> Any:
            latest = window.latest(DATASET)
            return latest.get("fluidfed-sidecar") or NotYet(f"latest={latest}")

        await eventually(exported, "the sidecar's metrics", timeout=30)

        forged = protocol.WorkerRegistration(
            dataset=DATASET,
            url="http://attacker:1",
            status=protocol.decode(protocol.WorkerStatus, await _status(worker.url)),
        )
        body = protocol.encode(forged)
        json_type = {"Content-Type": protocol.JSON}
        otlp_type = {"Content-Type": otlp.CONTENT_TYPE}
        other_key = b"z" * 32
        async with aiohttp.ClientSession() as s:
            cases = [
                ("POST", "/v1/workers", body, json_type, 401),
                ("POST", "/v1/workers", body, {**json_type, **_auth("peer", key=other_key)}, 401),
                ("POST", "/v1/workers", body, {**json_type, **_auth("reader")}, 403),
                ("POST", "/v1/workers", body, {**json_type, **_auth("agent")}, 403),
                ("POST", "/v1/metrics", _export(DATASET), otlp_type, 401),
                ("POST", "/v1/metrics", _export(DATASET), {**otlp_type, **_auth("agent")}, 403),
                # a sidecar of this binding speaking for another dataset would steer its scaling
                ("POST", "/v1/metrics", _export("other"), {**otlp_type, **_auth("reader")}, 403),
                ("GET", f"/v1/workers?dataset={DATASET}", None, {}, 401),
                ("GET", f"/v1/metrics?dataset={DATASET}", None, {}, 401),
                ("GET", "/v1/workers?dataset=other", None, _auth("peer"), 403),
            ]
            for method, path, sent, headers, status in cases:
                async with s.request(method, url + path, data=sent, headers=headers) as r:
                    said = await r.text()
                    assert r.status == status, f"{method} {path} {headers}: {r.status} {said}"
            async with s.get(url + f"/v1/workers?dataset={DATASET}", headers=_auth("agent")) as r:
                seen = [w["url"] for w in await r.json()]
        assert seen == [worker.url]  # the forged registrations counted for nothing
        assert window.latest("other") == {}  # refused metrics were not taken in
        assert window.latest(DATASET)["fluidfed-sidecar"]["fluidfed.read.bytes"] < 10**12
    finally:
        sc.close()
        worker.close()


async def _status(url: str) -> bytes:
    async with (
        aiohttp.ClientSession(headers=_auth("agent")) as s,
        s.get(url + protocol.STATUS) as r,
    ):
        assert r.status == 200
        return await r.read()
