"""The hub's HTTP API (aiohttp): routes, auth, errors. The catalog does the work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web
from opentelemetry import metrics

from fluidfed import codec, cron, errors, names, telemetry, tls, validation
from fluidfed.errors import Problem
from fluidfed.models import (
    Binding,
    BindingStatus,
    Cluster,
    Dataset,
    ErrorBody,
    ListResult,
    Mount,
    Registered,
)
from fluidfed.units import format_size
from hub import auth, openapi, watch
from hub.autoscaler import Autoscaler
from hub.catalog import Catalog
from hub.leader import Leadership
from hub.store import Shared

log = logging.getLogger("fluidfed.hub")
CATALOG = web.AppKey("catalog", Catalog)
ADMIN_TOKEN = web.AppKey("admin_token", str)
METRICS_TOKEN = web.AppKey("metrics_token", str)  # "": none (`metrics_token_file`)
MAX_BODY = web.AppKey("max_body", int)
AUTOSCALER = web.AppKey("autoscaler", Autoscaler)
LEADERSHIP = web.AppKey("leadership", Leadership)
AHEAD_WAIT = 5.0  # a watch from a revision another replica has seen: wait to see it too
PRINCIPAL = "fluidfed.principal"

_cluster_dec = codec.decoder(Cluster)
_dataset_dec = codec.decoder(Dataset)
_status_dec = codec.decoder(BindingStatus)


class LoadAsk(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`POST /api/v1/datasets/{name}/load`: warm the caches of some clusters (all if none)."""

    clusters: list[str] = []
    path: str = ""
    schedule: str = ""  # Cron: load again on this schedule (fluidfed.cron)
    on_change: bool = False  # OnEvent: load again what changed in the under storage


_load_dec = msgspec.json.Decoder(LoadAsk)


class LabelPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    set: dict[str, str] = {}
    remove: list[str] = []


_labels_dec = codec.decoder(LabelPatch)


@dataclass(frozen=True, slots=True)
class Instruments:
    """The hub's own instruments, made when its app is (no meter provider at import)."""

    requests: metrics.Counter
    watches: metrics.UpDownCounter

    @classmethod
    def create(cls) -> Instruments:
        meter = telemetry.setup(names.HUB_SERVICE)
        return cls(
            requests=meter.create_counter(
                names.HUB_REQUESTS, unit="{request}", description="API requests by route and status"
            ),
            watches=meter.create_up_down_counter(
                names.HUB_WATCHES, unit="{watch}", description="Open watch streams"
            ),
        )


INSTRUMENTS = web.AppKey("instruments", Instruments)
MUTUAL_TLS = web.AppKey("mutual_tls", bool)
WATCH_CLOCK = web.AppKey("watch_clock", watch.Clock)  # bookmarks; closed on shutdown


def error_response(
    status: int, message: str, problems: list[Problem] | None = None
) -> web.Response:
    body = ErrorBody(
        error=message,
        problems=[codec.to_builtins(p) for p in problems or []],
    )
    return web.Response(status=status, body=codec.encode(body), content_type="application/json")


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=codec.encode(obj), content_type="application/json")


async def _body(request: web.Request, decoder: msgspec.json.Decoder[Any], root: str) -> Any:
    """The decoded request body; a bad one is a 400 whose problems carry field paths."""
    raw = await request.read()
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as err:
        raise errors.BadRequest(
            "the request body is not valid", [codec.problem_of(err, root, decoder.type)]
        ) from None
    except msgspec.DecodeError as err:
        raise errors.BadRequest(f"the request body is not valid JSON: {err}") from None


@web.middleware
async def errors_mw(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    route = (
        request.match_info.route.resource.canonical if request.match_info.route.resource else "-"
    )
    try:
        try:
            resp = await handler(request)
        except errors.NotFound:
            # on a shared store, what another replica just wrote may not be here yet: see
            # all that was committed before now, then answer (a handler that did not find
            # what it needed has changed nothing)
            if not await request.app[CATALOG].sync():
                raise
            resp = await handler(request)
    except errors.APIError as err:
        resp = error_response(err.status, err.reason, err.problems)
    except web.HTTPRequestEntityTooLarge:
        resp = error_response(
            413,
            f"request body too large: the limit is {format_size(request.app[MAX_BODY])}; "
            "split the input or raise max_body in the hub's configuration",
        )
    except web.HTTPException as err:
        if err.status >= 400 and err.content_type != "application/json":
            allow = err.headers.get("Allow", "")
            said = f"{request.method} is not allowed here: use {allow}" if allow else err.reason
            resp = error_response(err.status, said)
            if allow:  # (405: which methods the path takes)
                resp.headers["Allow"] = allow
        else:
            raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        resp = error_response(500, "internal error in the hub: its log has the details")
    request.app[INSTRUMENTS].requests.add(
        1, {"route": route, "method": request.method, "status": str(resp.status)}
    )
    return resp


# besides the API, what answers only with a token: the catalog's figures and its API's
# shape (a caller without one learns nothing of the fleet); /healthz and /readyz answer
# any caller, as the kubelet's probes cannot carry one
GUARDED = ("/metrics", "/openapi.json")


@web.middleware
async def auth_mw(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    path = request.path
    guarded = path.startswith("/api/") or path in GUARDED
    if guarded or (path == "/readyz" and "Authorization" in request.headers):
        principal = await _principal(request)
        if isinstance(principal, web.Response):
            return principal if guarded else await handler(request)
        if isinstance(principal, auth.Scraper) and path not in ("/metrics", "/readyz"):
            return error_response(403, "the metrics token reads /metrics only")
        request[PRINCIPAL] = principal
    return await handler(request)


async def _principal(request: web.Request) -> auth.Principal | web.Response:
    """Who the request's token is, or the answer that refuses it (401, or 403 for a
    cluster's agent without its certificate where agents must show one)."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return error_response(401, "no token: send 'Authorization: Bearer <token>'")
    token = header.removeprefix("Bearer ").strip()
    if auth.same_token(token, auth.token_hash(request.app[ADMIN_TOKEN])):
        return auth.Admin()
    metrics = request.app[METRICS_TOKEN]
    if metrics and auth.same_token(token, auth.token_hash(metrics)):
        return auth.Scraper()
    cat = request.app[CATALOG]
    cluster = cat.cluster_of_token(token)
    if cluster is None and await cat.sync():  # registered at another replica just now
        cluster = cat.cluster_of_token(token)
    if cluster is None:
        return error_response(401, "unknown token")
    if request.app[MUTUAL_TLS]:
        problem = _certificate_problem(request, cluster)
        if problem:
            return error_response(403, problem)
    return auth.ClusterAgent(cluster)


@web.middleware
async def consistent_reads_mw(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """On a shared store a read sees every write acknowledged before it, whichever replica
    took the write: the replica catches up with the store first (a watch starts from the
    revision it names instead)."""
    if (
        request.method == "GET"
        and request.path.startswith("/api/")
        and request.query.get("watch", "").lower() not in _TRUE
    ):
        await request.app[CATALOG].sync()
    return await handler(request)


def _certificate_problem(request: web.Request, cluster: str) -> str:
    """With mutual TLS, a cluster's token counts only with that cluster's certificate."""
    name = tls.peer_common_name(tls.peer_certificate(request.transport))
    if name is None:
        return (
            f"the hub asks agents for a client certificate (mutual TLS): present the "
            f"certificate of cluster {cluster} (client_cert_file, client_key_file)"
        )
    if name != cluster:
        return f"the client certificate is cluster {name}'s, the token cluster {cluster}'s"
    return ""


def _admin(request: web.Request) -> None:
    if not isinstance(request[PRINCIPAL], auth.Admin):
        raise errors.Forbidden("this needs the admin token; a cluster token cannot do it")


def _may_act_for(request: web.Request, cluster: str) -> None:
    p = request[PRINCIPAL]
    if isinstance(p, auth.ClusterAgent) and p.cluster != cluster:
        raise errors.Forbidden(
            f"the token of cluster {p.cluster} cannot read or write cluster {cluster}"
        )


def _reader_options(mount: Mount) -> str:
    """Whether fluidfed's readers can open `mount` with its settings: OpenDAL parsing its
    config, no I/O (imported only for a mount that has settings of OpenDAL's)."""
    from fluidfed.data import ufs

    return ufs.options_problem(mount)


# --- probes and documents -------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    cat = request.app[CATALOG]
    if cat.store_problem and PRINCIPAL not in request:  # (the store's address, its error)
        return web.Response(
            status=503,
            text="not ready: the catalog's store is failing (the hub's log says why, as "
            "does /readyz asked with a token)",
        )
    if cat.store_problem:
        return web.Response(status=503, text=f"not ready: {cat.store_problem}")
    leads = " leader" if request.app[LEADERSHIP].leading.is_set() else ""
    return web.Response(text=f"ok revision={cat.revision}{leads}")


async def openapi_doc(request: web.Request) -> web.Response:
    return json_response(openapi.document())


# --- clusters -------------------------------------------------------------------------


async def list_clusters(request: web.Request) -> web.Response:
    _admin(request)
    cat = request.app[CATALOG]
    return json_response(sorted(cat.clusters.values(), key=lambda c: c.spec.name))


async def register_cluster(request: web.Request) -> web.Response:
    _admin(request)
    spec: Cluster = await _body(request, _cluster_dec, "cluster")
    errors.BadRequest.unless_valid(
        validation.check_cluster(spec) + validation.check_mountable(spec)
    )
    rotate = _flag(request, "rotate_token")
    cat = request.app[CATALOG]
    existed = spec.name in cat.clusters
    rec, token = await cat.register_cluster(spec, rotate_token=rotate)
    return json_response(Registered(cluster=rec, token=token or ""), status=200 if existed else 201)


async def get_cluster(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    _may_act_for(request, name)
    cat = request.app[CATALOG]
    if name not in cat.clusters:
        raise errors.NotFound(f"cluster {name} not found")
    return json_response(cat.clusters[name])


async def patch_cluster_labels(request: web.Request) -> web.Response:
    _admin(request)
    patch: LabelPatch = await _body(request, _labels_dec, "")
    errors.BadRequest.unless_valid(
        validation.check_labels(patch.set, "set")
        + [
            p
            for i, k in enumerate(patch.remove)
            for p in validation.check_label_key(k, f"remove[{i}]")
        ]
    )
    rec = await request.app[CATALOG].relabel_cluster(
        request.match_info["name"], patch.set, patch.remove
    )
    return json_response(rec)


async def delete_cluster(request: web.Request) -> web.Response:
    _admin(request)
    await request.app[CATALOG].delete_cluster(request.match_info["name"])
    return web.Response(status=204)


async def heartbeat(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    _may_act_for(request, name)
    return json_response(await request.app[CATALOG].heartbeat(name))


# --- datasets -------------------------------------------------------------------------


async def list_datasets(request: web.Request) -> web.Response:
    _admin(request)
    cat = request.app[CATALOG]
    return json_response([cat.dataset_view(n) for n in sorted(cat.datasets)])


async def apply_dataset(request: web.Request) -> web.Response:
    _admin(request)
    spec: Dataset = await _body(request, _dataset_dec, "dataset")
    cat = request.app[CATALOG]
    # (a name taken before a rule on names was added stays updatable)
    named = spec.name not in cat.datasets
    errors.BadRequest.unless_valid(
        validation.check_dataset(spec, named=named, options=_reader_options)
    )
    name = request.match_info.get("name")
    if name is not None and name != spec.name:
        raise errors.BadRequest(
            f"the URL names dataset {name} but the body names {spec.name}",
            [Problem("must match the name in the URL", path="dataset.name")],
        )
    existed = spec.name in cat.datasets
    await cat.apply_dataset(spec)
    return json_response(cat.dataset_view(spec.name), status=200 if existed else 201)


async def get_dataset(request: web.Request) -> web.Response:
    _admin(request)
    return json_response(request.app[CATALOG].dataset_view(request.match_info["name"]))


async def load_dataset(request: web.Request) -> web.Response:
    _admin(request)
    ask: LoadAsk = await _body(request, _load_dec, "load")
    path = ask.path.strip("/")
    if ".." in path.split("/"):
        raise errors.BadRequest(
            "the load path leaves the dataset",
            [Problem("a path inside the dataset, without '..' (e.g. train/class-1)", path="path")],
        )
    if ask.schedule:
        try:
            cron.parse(ask.schedule)
        except ValueError as err:
            raise errors.BadRequest(
                "the load schedule is not a cron schedule", [Problem(str(err), path="schedule")]
            ) from None
    name = request.match_info["name"]
    cat = request.app[CATALOG]
    bindings = await cat.request_load(
        name,
        ask.clusters,
        ask.path,
        schedule=ask.schedule,
        on_change=ask.on_change,
        key=_idempotency_key(request),
    )
    return json_response(bindings, status=202)


def _idempotency_key(request: web.Request) -> str:
    """The client's key for a request it may send again to another replica ("" if none)."""
    key = request.headers.get(names.IDEMPOTENCY_KEY, "")
    if len(key) > 128 or not key.isprintable():
        raise errors.BadRequest(
            f"the {names.IDEMPOTENCY_KEY} header is not a key",
            [Problem("at most 128 printable characters (a UUID)", path=names.IDEMPOTENCY_KEY)],
        )
    return key


async def delete_dataset(request: web.Request) -> web.Response:
    _admin(request)
    await request.app[CATALOG].delete_dataset(request.match_info["name"])
    return web.Response(status=204)


# --- bindings: list, watch, status ----------------------------------------------------


_TRUE, _FALSE = ("1", "true"), ("", "0", "false")


def _flag(request: web.Request, name: str) -> bool:
    """A yes/no query parameter: 1/true or 0/false (any case), absent or empty for no;
    anything else is refused, not taken as no (`?rotate_token=yes` rotated nothing and
    said nothing)."""
    raw = request.query.get(name, "")
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise errors.BadRequest(
        f"{name} is a yes/no parameter",
        [Problem(f"got {raw!r}: use true or false", path=f"query.{name}")],
    )


def _revision_param(request: web.Request) -> int | None:
    raw = request.query.get("revision")
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise errors.BadRequest(
            "revision must be a non-negative integer",
            [Problem(f"got {raw!r}", path="query.revision")],
        )
    return value


async def bindings(request: web.Request) -> web.StreamResponse:
    cat = request.app[CATALOG]
    principal = request[PRINCIPAL]
    cluster = request.query.get("cluster") or None
    if isinstance(principal, auth.ClusterAgent):
        cluster = cluster or principal.cluster
        _may_act_for(request, cluster)
    if not _flag(request, "watch"):
        items = (
            cat.bindings_of(cluster)
            if cluster
            else sorted(cat.bindings.values(), key=lambda b: b.name)
        )
        return json_response(ListResult(revision=cat.revision, items=items))
    revision = _revision_param(request)
    return await _watch(request, cat, cluster, cat.revision if revision is None else revision)


async def _watch(
    request: web.Request, cat: Catalog, cluster: str | None, revision: int
) -> web.StreamResponse:
    if isinstance(cat.store, Shared):
        # resumed here from another replica that is ahead of this one: catch up first
        await cat.reach(revision, within=AHEAD_WAIT)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cat.replayed.wait(), AHEAD_WAIT)
        if not cat.replayed.is_set():
            raise errors.ServerError(
                "this hub replica is still reading the catalog's history from its store: "
                "retry in a moment",
                status=503,
            )
    cat.events_since(revision, cluster)  # 410 before the stream starts if compacted
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    watches = request.app[INSTRUMENTS].watches
    watches.add(1)
    try:
        await watch.stream(resp, cat, cluster, revision, clock=request.app[WATCH_CLOCK])
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        watches.add(-1)
    return resp


def _binding(request: web.Request) -> Binding:
    """The binding the URL names, if the token may act for its cluster."""
    name = request.match_info["name"]
    b = request.app[CATALOG].bindings.get(name)
    if b is None:
        raise errors.NotFound(f"binding {name} not found")
    _may_act_for(request, b.cluster)
    return b


async def get_binding(request: web.Request) -> web.Response:
    return json_response(_binding(request))


async def finalize_binding(request: web.Request) -> web.Response:
    await request.app[CATALOG].finalize_binding(_binding(request).name)
    return web.Response(status=204)


async def put_status(request: web.Request) -> web.Response:
    name = _binding(request).name
    cat = request.app[CATALOG]
    status: BindingStatus = await _body(request, _status_dec, "status")
    await cat.report_status(name, status)  # the autoscaler sees it, on the leading replica
    return web.Response(status=204)


async def _lease_loop(app: web.Application) -> None:
    cat = app[CATALOG]
    while True:
        await asyncio.sleep(max(0.2, cat.lease_duration / 4))
        try:
            await cat.expire_leases()
        except Exception:  # a failing store, say: the next round tries again
            log.exception("expiring leases failed; trying again")


async def _publish_heartbeats(app: web.Application) -> None:
    """The heartbeats agents sent to this replica, for the leader (on a shared store)."""
    cat = app[CATALOG]
    store = cat.store
    assert isinstance(store, Shared)
    while True:
        await asyncio.sleep(max(0.2, cat.lease_duration / 4))
        try:
            await store.publish_heartbeats(app[LEADERSHIP].identity, cat.beats_to_publish())
        except errors.FluidfedError as err:
            log.warning("publishing heartbeats failed (%s); trying again", err)


async def _follow(app: web.Application) -> None:
    while True:
        try:
            await app[CATALOG].follow()
        except Exception:
            log.exception("following the shared store failed; again in 1s")
            await asyncio.sleep(1.0)


async def _close_watches(app: web.Application) -> None:
    app[WATCH_CLOCK].close()  # the watch streams end
    await app[LEADERSHIP].resign()  # another replica leads now, not in a lease's time


async def _background(app: web.Application) -> Any:
    leader = app[LEADERSHIP]
    work = [leader.run([lambda: _lease_loop(app), app[AUTOSCALER].run]), app[WATCH_CLOCK].run()]
    if isinstance(app[CATALOG].store, Shared):
        work += [_follow(app), _publish_heartbeats(app)]
    tasks = [asyncio.create_task(w) for w in work]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


ROUTES: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
    ("GET", "/healthz", healthz),
    ("GET", "/readyz", readyz),
    ("GET", "/metrics", telemetry.metrics_endpoint),
    ("GET", "/openapi.json", openapi_doc),
    ("GET", "/api/v1/clusters", list_clusters),
    ("POST", "/api/v1/clusters", register_cluster),
    ("GET", "/api/v1/clusters/{name}", get_cluster),
    ("PATCH", "/api/v1/clusters/{name}/labels", patch_cluster_labels),
    ("DELETE", "/api/v1/clusters/{name}", delete_cluster),
    ("POST", "/api/v1/clusters/{name}/heartbeat", heartbeat),
    ("GET", "/api/v1/datasets", list_datasets),
    ("POST", "/api/v1/datasets", apply_dataset),
    ("PUT", "/api/v1/datasets/{name}", apply_dataset),
    ("GET", "/api/v1/datasets/{name}", get_dataset),
    ("DELETE", "/api/v1/datasets/{name}", delete_dataset),
    ("POST", "/api/v1/datasets/{name}/load", load_dataset),
    ("GET", "/api/v1/bindings", bindings),
    ("GET", "/api/v1/bindings/{name}", get_binding),
    ("DELETE", "/api/v1/bindings/{name}", finalize_binding),
    ("PUT", "/api/v1/bindings/{name}/status", put_status),
]


def make_app(
    catalog: Catalog,
    admin_token: str,
    *,
    metrics_token: str = "",
    max_body: int = 2**20,
    bookmark_interval: float = 10.0,
    autoscale_interval: float = 15.0,
    metrics_stale_after: float = 60.0,
    mutual_tls: bool = False,
    identity: str = "hub",
) -> web.Application:
    app = web.Application(
        middlewares=[errors_mw, auth_mw, consistent_reads_mw], client_max_size=max_body
    )
    app[CATALOG] = catalog
    app[ADMIN_TOKEN] = admin_token
    app[METRICS_TOKEN] = metrics_token
    app[MAX_BODY] = max_body
    app[INSTRUMENTS] = Instruments.create()
    app[MUTUAL_TLS] = mutual_tls
    app[WATCH_CLOCK] = watch.Clock(catalog, bookmark_interval)
    app.on_shutdown.append(_close_watches)
    app[AUTOSCALER] = Autoscaler(
        catalog, interval=autoscale_interval, stale_after=metrics_stale_after
    )
    catalog.on_status = app[AUTOSCALER].observe  # statuses reported to any replica
    app[LEADERSHIP] = Leadership(catalog.store, identity)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(_background)
    return app
