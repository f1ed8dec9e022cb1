"""The agent's own HTTP API, inside its cluster: cache workers register and report here.

POST /v1/workers   WorkerRegistration   a worker's heartbeat (`fluidfed.data.protocol`)
GET  /v1/workers?dataset=NAME        who is alive: [WorkerSeen, ...]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from aiohttp import web

from agents import otlp
from agents.metrics import MetricWindow
from agents.registry import Registry
from fluidfed.data import protocol
from fluidfed.errors import ConfigError

REGISTRY: web.AppKey[Registry] = web.AppKey("registry", Registry)
WINDOW: web.AppKey[MetricWindow] = web.AppKey("window", MetricWindow)
ON_METRICS: web.AppKey[Callable[[set[str]], None]] = web.AppKey("on_metrics")


async def _report(request: web.Request) -> web.Response:
    try:
        reg = protocol.decode(protocol.WorkerRegistration, await request.read())
    except ConfigError as err:
        return web.json_response({"status": 400, "reason": str(err)}, status=400)
    request.app[REGISTRY].report(reg, time.time())
    return web.Response(status=204)


async def _list(request: web.Request) -> web.Response:
    dataset = request.query.get("dataset", "")
    live = request.app[REGISTRY].alive(dataset, time.time())
    seen = [protocol.WorkerSeen(url=w.url, seen=w.seen, status=w.status) for w in live]
    return web.Response(body=protocol.encode(seen), content_type=protocol.JSON)


async def _metrics(request: web.Request) -> web.Response:
    if request.content_type != otlp.CONTENT_TYPE:
        return web.json_response(
            {"status": 415, "reason": f"send OTLP as {otlp.CONTENT_TYPE} (protobuf)"},
            status=415,
        )
    try:
        points = otlp.decode(await request.read())
    except otlp.BadExport as err:
        return web.json_response({"status": 400, "reason": str(err)}, status=400)
    window = request.app[WINDOW]
    for p in points:
        window.add(p)
    request.app[ON_METRICS]({p.dataset for p in points})
    return web.Response(body=otlp.response(), content_type=otlp.CONTENT_TYPE)


async def _figures(request: web.Request) -> web.Response:
    dataset = request.query.get("dataset", "")
    window = request.app[WINDOW]
    return web.json_response(
        {
            "dataset": dataset,
            "window_seconds": window.window,
            "figures": msgspec.to_builtins(window.figures(dataset, time.time())),
            "latest": window.latest(dataset),
        }
    )


def make_app(
    registry: Registry,
    window: MetricWindow | None = None,
    on_metrics: Callable[[set[str]], None] = lambda _: None,
) -> web.Application:
    app = web.Application(client_max_size=16 * 2**20)
    app[REGISTRY] = registry
    app[WINDOW] = window or MetricWindow()
    app[ON_METRICS] = on_metrics
    app.router.add_post("/v1/metrics", _metrics)
    app.router.add_get("/v1/metrics", _figures)
    app.router.add_post(protocol.REGISTER, _report)
    app.router.add_get(protocol.REGISTER, _list)
    return app
