"""Run the hub daemon: load the catalog, serve the API, stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from fluidfed import aio, pki, tls, tlsserve, validation
from fluidfed.errors import ConfigError
from fluidfed.models import HubConfig
from hub import auth, leader
from hub.app import make_app
from hub.catalog import Catalog
from hub.store import SQLiteStore, Store

log = logging.getLogger("fluidfed.hub")


# how often the hub looks whether its certificate, key or client CA changed (a Secret
# volume cert-manager renews): new handshakes get the new ones, open watches keep theirs
TLS_RECHECK = tls.RECHECK


def _tls(cfg: HubConfig, self_signed: bool) -> tuple[tls.Served | None, str]:
    """The serving context and its files, and a note for the ready line on where clients
    find the CA."""
    if self_signed and cfg.tls_cert_file:
        raise ConfigError.one(
            "--self-signed makes its own certificate: drop tls_cert_file/tls_key_file or the flag",
            path="hub.tls_cert_file",
        )
    if self_signed:
        hosts = tuple(dict.fromkeys((cfg.host, "127.0.0.1", "localhost")))
        made = tls.self_signed(Path(cfg.data_dir) / "tls", hosts)
        served = tls.Served(str(made.cert_file), str(made.key_file), cfg.client_ca_file)
        return served, f"; self-signed, CA in {made.ca_file}"
    if cfg.tls_cert_file:
        served = tls.Served(cfg.tls_cert_file, cfg.tls_key_file, cfg.client_ca_file)
        _check_validity(cfg.tls_cert_file)
        return served, ""
    return None, ""


async def _reload_tls(
    served: tls.Served | None,
    store: Callable[[], Awaitable[bool]] | None,
    now: asyncio.Event,
) -> None:
    """Load the serving files, and the etcd store's (`store`: its `reload_tls`), again
    when they change: every TLS_RECHECK seconds, and at once on SIGHUP (`now`). Nothing
    may end the looking (the hub would serve an expiring certificate), nor one's failure
    keep the other from being looked at."""
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TLS_RECHECK):
                await now.wait()
        now.clear()
        if store is not None:
            try:
                if await store():
                    log.info("etcd's TLS files reloaded: new calls to etcd use them")
            except Exception:
                log.exception("looking at etcd's TLS files again failed; trying again")
        if served is None:
            continue
        try:
            if served.reload_pair():
                until = f"{_not_after(served.cert_file):%Y-%m-%d %H:%M}"
                log.info(
                    "TLS certificate reloaded from %s (valid until %s UTC)",
                    served.cert_file, until,
                )  # fmt: skip
            if served.clients is not None and served.clients.reload():
                log.info("client CA reloaded from %s (trusted beside the one before)",
                         served.clients.ca_file)  # fmt: skip
        except Exception:
            log.exception("looking at the TLS files again failed; trying again")


def open_store(cfg: HubConfig) -> tuple[Store, str]:
    """The catalog's store the configuration names, and where it is (for the ready line)."""
    if not cfg.store:
        store = SQLiteStore(Path(cfg.data_dir) / "catalog.db")
        return store, str(store.path)
    # our errors say what went wrong and what to do: gRPC's own log lines are noise
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        from hub import etcd
    except ImportError:
        raise ConfigError.one(
            f"store {cfg.store} needs the etcd client: pip install 'fluidfed[etcd]'",
            path="hub.store",
        ) from None
    settings = etcd.EtcdSettings(
        endpoints=etcd.parse_url(cfg.store),
        prefix=cfg.etcd_prefix,
        compact=cfg.etcd_compact,
        ca_file=cfg.etcd_ca_file,
        cert_file=cfg.etcd_cert_file,
        key_file=cfg.etcd_key_file,
        username=cfg.etcd_username,
        password_file=cfg.etcd_password_file,
        password_env=cfg.etcd_password_env,
        lease_ttl=max(1, round(cfg.leader_lease)),
    )
    shared = etcd.EtcdStore(settings)
    return shared, shared.where


def _not_after(cert_file: str) -> dt.datetime:
    """When the first certificate of the chain in `cert_file` to expire does."""
    return min(end for _, _, end in pki.validity(Path(cert_file).read_bytes()))


def _check_validity(cert_file: str) -> None:
    """Every certificate of the served chain in its validity period: one that expired is
    refused here (every client would refuse it, each as its own failure), one not valid
    yet is said (a clock apart, most likely)."""
    now = dt.datetime.now(dt.UTC)
    for what, start, end in pki.validity(Path(cert_file).read_bytes()):
        if end <= now:
            raise ConfigError.one(
                f"the certificate {what} expired on {end:%Y-%m-%d %H:%M} UTC: renew it",
                file=cert_file,
                path="hub.tls_cert_file",
            )
        if start > now:
            log.warning(
                "the certificate %s in %s is valid only from %s UTC: clients refuse it until "
                "then (is a clock wrong?)", what, cert_file, f"{start:%Y-%m-%d %H:%M}"
            )  # fmt: skip


def _data_dir(cfg: HubConfig) -> Path:
    data_dir = Path(cfg.data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError.one(
            f"{data_dir} is a file, not a directory: name a directory for the hub's data "
            "(created if missing)",
            path="hub.data_dir",
        )
    return data_dir


def _plain_beyond_loopback(cfg: HubConfig, ssl_context: ssl.SSLContext | None) -> None:
    """ConfigError for plain HTTP on an address other machines reach: the admin's and the
    clusters' tokens would cross the network in clear (`plain_http` says it is encrypted
    by other means)."""
    if ssl_context is None and not cfg.plain_http and not validation.is_loopback(cfg.host):
        raise ConfigError.one(
            f"the hub would serve plain HTTP on {cfg.host}, beyond loopback: the admin's and "
            "the clusters' tokens would cross the network in clear. Give tls_cert_file and "
            "tls_key_file, or --self-signed; or set plain_http = true where the network "
            "encrypts by other means (a service mesh's mTLS)",
            path="hub.host",
        )


def warn_unmountable(catalog: Catalog) -> list[str]:
    """Say which registered clusters could mount no dataset (registered before the hub
    refused such clusters: `validation.check_mountable`); their names."""
    named = []
    for name, rec in sorted(catalog.clusters.items()):
        for p in validation.check_mountable(rec.spec):
            log.warning(
                "cluster %s could mount no dataset (%s: %s); it gets no new binding, and the "
                "pods of those it has are refused at admission, until it is registered "
                "again with such capabilities",
                name,
                p.path,
                p.message,
            )
            named.append(name)
    return named


async def serve(cfg: HubConfig, *, ready_line: bool = True, self_signed: bool = False) -> None:
    data_dir = _data_dir(cfg)
    served, tls_note = _tls(cfg, self_signed)
    ssl_context = served.context if served is not None else None
    _plain_beyond_loopback(cfg, ssl_context)
    token, source = auth.load_admin_token(cfg.admin_token_file, cfg.admin_token_env, data_dir)
    metrics_token = auth.load_metrics_token(cfg.metrics_token_file)
    store, where = open_store(cfg)
    runner: web.AppRunner | None = None
    try:  # a catalog that cannot load, a port taken: the store's connections go too
        catalog = Catalog(
            store,
            history=cfg.event_history,
            history_bytes=cfg.event_history_bytes,
            lease_duration=cfg.lease_duration,
        )
        await catalog.load()
        warn_unmountable(catalog)
        app = make_app(
            catalog,
            token,
            metrics_token=metrics_token,
            max_body=cfg.max_body,
            bookmark_interval=cfg.bookmark_interval,
            autoscale_interval=cfg.autoscale_interval,
            metrics_stale_after=cfg.metrics_stale_after,
            mutual_tls=bool(cfg.client_ca_file),
            identity=leader.replica_identity(cfg.port),
        )
        # on SIGTERM the watch streams end at once (agents reconnect): nothing to wait 60 s for
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5)
        await runner.setup()
        # over TLS, rustls writes each watch event's record to its socket: the loop's TLS
        # costs a memory-buffer round trip per record (fluidfed/tlsserve.py)
        site = tlsserve.site(runner, cfg.host, cfg.port, ssl_context)
        await site.start()
        aio.settle_gc()
    except BaseException:
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        await store.close()
        raise
    # with port 0 the kernel picks one: read it back for the ready line
    port = cfg.port
    for addr in runner.addresses:
        port = int(addr[1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloading = None
    # (etcd's TLS files: `EtcdStore.reload_tls`)
    store_tls: Callable[[], Awaitable[bool]] | None = (
        getattr(store, "reload_tls", None) if getattr(store, "reloads_tls", False) else None
    )
    if served is not None or store_tls is not None:
        hup = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, hup.set)
        reloading = asyncio.create_task(_reload_tls(served, store_tls, hup))
    scheme = "https" if ssl_context is not None else "http"
    if ready_line:
        print(
            f"fluidfed hub listening on {scheme}://{cfg.host}:{port} "
            f"(catalog {where}, revision {catalog.revision}; admin token from {source}"
            f"{tls_note})",
            flush=True,
        )
    try:
        await stop.wait()
    finally:
        print("fluidfed hub stopping", file=sys.stderr, flush=True)
        if reloading is not None:  # (ended before the store closes: its look may use it)
            reloading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reloading
        with contextlib.suppress(Exception):
            await runner.cleanup()
        await catalog.close()
        await store.close()
