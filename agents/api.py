"""The agent's own HTTP API, inside its cluster: cache workers register and report here.

POST /v1/workers   WorkerRegistration   a worker's heartbeat (`fluidfed.data.protocol`)
GET  /v1/workers?dataset=NAME        who is alive: [WorkerSeen, ...]
POST /v1/metrics   OTLP/HTTP protobuf   sidecars' and workers' metrics (they drive scaling)
GET  /v1/metrics?dataset=NAME        the figures of the metrics window

Every request carries a data-path token of the dataset's binding
(`fluidfed.data.credentials`): registrations only from its workers (`peer`), metrics from
its workers and sidecars, and only about that dataset; views from any of its holders.
401 without a valid token, 403 when it does not allow the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from aiohttp import web

from agents import otlp
from agents.metrics import MetricWindow
from agents.registry import Registry
from fluidfed.data import answers, credentials, protocol
from fluidfed.data.credentials import Action
from fluidfed.errors import ConfigError

KeysOf = Callable[[str], list[bytes]]  # a dataset's keys here, old ones in their grace

REGISTRY: web.AppKey[Registry] = web.AppKey("registry", Registry)
KEYS_OF: web.AppKey[KeysOf] = web.AppKey("keys_of")
WINDOW: web.AppKey[MetricWindow] = web.AppKey("window", MetricWindow)
ON_METRICS: web.AppKey[Callable[[set[str]], None]] = web.AppKey("on_metrics")


def _problem(status: int, reason: str) -> web.Response:
    return answers.answer(status, reason)


def _claims(request: web.Request) -> credentials.Claims | web.Response:
    """The verified claims of the request's token (checked against the keys of the
    dataset it names), or its 401."""
    try:
        token = credentials.bearer(request.headers.get(credentials.HEADER))
        claimed = credentials.peek(token)
        return credentials.verify(token, request.app[KEYS_OF](claimed.dataset))
    except credentials.Refused as err:
        return answers.answer(401, err.reason, realm="fluidfed-agent")


def _refused(request: web.Request, action: Action, dataset: str) -> web.Response | None:
    claims = _claims(request)
    if isinstance(claims, web.Response):
        return claims
    why = credentials.authorize(claims, action, dataset)
    return None if why is None else _problem(403, why)


async def _report(request: web.Request) -> web.Response:
    claims = _claims(request)
    if isinstance(claims, web.Response):
        return claims
    try:
        reg = protocol.decode(protocol.WorkerRegistration, await request.read())
    except ConfigError as err:
        return _problem(400, str(err))
    why = credentials.authorize(claims, Action.REGISTER, reg.dataset)
    if why is not None:
        return _problem(403, why)
    request.app[REGISTRY].report(reg, time.time())
    return web.Response(status=204)


async def _list(request: web.Request) -> web.Response:
    dataset = request.query.get("dataset", "")
    refused = _refused(request, Action.VIEW, dataset)
    if refused is not None:
        return refused
    live = request.app[REGISTRY].alive(dataset, time.time())
    seen = [protocol.WorkerSeen(url=w.url, seen=w.seen, status=w.status) for w in live]
    return web.Response(body=protocol.encode(seen), content_type=protocol.JSON)


async def _metrics(request: web.Request) -> web.Response:
    claims = _claims(request)
    if isinstance(claims, web.Response):
        return claims
    if request.content_type != otlp.CONTENT_TYPE:
        return _problem(415, f"send OTLP as {otlp.CONTENT_TYPE} (protobuf)")
    try:
        points = otlp.decode(await request.read())
    except otlp.BadExport as err:
        return _problem(400, str(err))
    for dataset in sorted({p.dataset for p in points}):
        why = credentials.authorize(claims, Action.METRICS, dataset)
        if why is not None:  # figures of another dataset would steer its scaling
            return _problem(403, why)
    window = request.app[WINDOW]
    for p in points:
        window.add(p)
    request.app[ON_METRICS]({p.dataset for p in points})
    return web.Response(body=otlp.response(), content_type=otlp.CONTENT_TYPE)


async def _figures(request: web.Request) -> web.Response:
    dataset = request.query.get("dataset", "")
    refused = _refused(request, Action.VIEW, dataset)
    if refused is not None:
        return refused
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
    keys_of: KeysOf,
    window: MetricWindow | None = None,
    on_metrics: Callable[[set[str]], None] = lambda _: None,
) -> web.Application:
    app = web.Application(client_max_size=16 * 2**20)
    app[REGISTRY] = registry
    app[KEYS_OF] = keys_of
    app[WINDOW] = window or MetricWindow()
    app[ON_METRICS] = on_metrics
    app.router.add_post("/v1/metrics", _metrics)
    app.router.add_get("/v1/metrics", _figures)
    app.router.add_post(protocol.REGISTER, _report)
    app.router.add_get(protocol.REGISTER, _list)
    return app
