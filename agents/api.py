"""The agent's own HTTP API, inside its cluster: cache workers register and report here.

POST /v1/workers   {"dataset", "url", "status"}   a worker's heartbeat
GET  /v1/workers?dataset=NAME                      who is alive
"""

from __future__ import annotations

import time

from aiohttp import web

from agents.registry import Registry

REGISTRY: web.AppKey[Registry] = web.AppKey("registry", Registry)


async def _report(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        dataset, url = str(body["dataset"]), str(body["url"]).rstrip("/")
        status = dict(body.get("status") or {})
    except (ValueError, KeyError, TypeError):
        return web.json_response(
            {"status": 400, "reason": 'expected {"dataset", "url", "status"}'}, status=400
        )
    request.app[REGISTRY].report(dataset, url, status, time.time())
    return web.Response(status=204)


async def _list(request: web.Request) -> web.Response:
    dataset = request.query.get("dataset", "")
    live = request.app[REGISTRY].alive(dataset, time.time())
    return web.json_response([{"url": w.url, "seen": w.seen, "status": w.status} for w in live])


def make_app(registry: Registry) -> web.Application:
    app = web.Application()
    app[REGISTRY] = registry
    app.router.add_post("/v1/workers", _report)
    app.router.add_get("/v1/workers", _list)
    return app
