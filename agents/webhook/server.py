"""The webhook's HTTPS server (aiohttp): AdmissionReview in, decision out. Where the API
server presents a client certificate of its own when it calls webhooks (its admission
configuration), /mutate answers only a caller with that certificate (`Caller`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from agents.webhook import review
from agents.webhook.mutate import Decision
from fluidfed import tls

Decide = Callable[[dict[str, Any], str], Decision]
DECIDE: web.AppKey[Decide] = web.AppKey("decide")
STATS: web.AppKey[dict[str, float]] = web.AppKey("stats")


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who may call /mutate: a client certificate the TLS context verified (its CA loaded
    there, asked for but not required, so /healthz stays open), of common name `name`
    (empty: any the CA signed)."""

    name: str = ""


CALLER: web.AppKey[Caller | None] = web.AppKey("caller")


def _refused(request: web.Request, caller: Caller) -> web.Response | None:
    """401 for a caller without a verified client certificate, 403 for one of another
    name; None: go ahead."""
    der = tls.peer_certificate(request.transport)
    if not der:
        message = (
            "this webhook answers the API server only: present its client certificate "
            "(the admission configuration's kubeConfigFile)"
        )
        return web.json_response({"message": message}, status=401)
    if not caller.name:
        return None
    try:
        name = tls.peer_common_name(der)
    except ValueError:  # (a certificate the TLS engine took and cryptography cannot read)
        name = None
    if name != caller.name:
        whose = "without a common name" if name is None else f"of {name!r}"
        message = (
            f"the client certificate {whose} is not the API server's "
            f"({caller.name!r}, webhook_client_name)"
        )
        return web.json_response({"message": message}, status=403)
    return None


async def _mutate(request: web.Request) -> web.Response:
    caller = request.app[CALLER]
    if caller is not None:
        refused = _refused(request, caller)
        if refused is not None:
            return refused
    t0 = time.perf_counter()
    body = await request.read()
    status, answer = review.handle(body, request.app[DECIDE])
    stats = request.app[STATS]
    stats["reviews"] = stats.get("reviews", 0) + 1
    stats["seconds"] = stats.get("seconds", 0.0) + time.perf_counter() - t0
    return web.json_response(answer, status=status)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(decide: Decide, caller: Caller | None = None) -> web.Application:
    app = web.Application(client_max_size=4 * 2**20)
    app[DECIDE] = decide
    app[CALLER] = caller
    app[STATS] = {}
    app.router.add_post("/mutate", _mutate)
    app.router.add_get("/healthz", _healthz)
    return app
