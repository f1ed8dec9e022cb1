"""The webhook's HTTPS server (aiohttp): AdmissionReview in, decision out."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from agents.webhook import review
from agents.webhook.mutate import Decision

Decide = Callable[[dict[str, Any], str], Decision]
DECIDE: web.AppKey[Decide] = web.AppKey("decide")
STATS: web.AppKey[dict[str, float]] = web.AppKey("stats")


async def _mutate(request: web.Request) -> web.Response:
    t0 = time.perf_counter()
    body = await request.read()
    status, answer = review.handle(body, request.app[DECIDE])
    stats = request.app[STATS]
    stats["reviews"] = stats.get("reviews", 0) + 1
    stats["seconds"] = stats.get("seconds", 0.0) + time.perf_counter() - t0
    return web.json_response(answer, status=status)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(decide: Decide) -> web.Application:
    app = web.Application(client_max_size=4 * 2**20)
    app[DECIDE] = decide
    app[STATS] = {}
    app.router.add_post("/mutate", _mutate)
    app.router.add_get("/healthz", _healthz)
    return app
