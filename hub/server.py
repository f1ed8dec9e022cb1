"""Run the hub daemon: load the catalog, serve the API, stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from aiohttp import web

from fluidfed.models import HubConfig
from hub import auth
from hub.app import make_app
from hub.catalog import Catalog
from hub.store import SQLiteStore


async def serve(cfg: HubConfig, *, ready_line: bool = True) -> None:
    data_dir = Path(cfg.data_dir)
    token, source = auth.load_admin_token(cfg.admin_token_file, cfg.admin_token_env, data_dir)
    store = SQLiteStore(data_dir / "catalog.db")
    catalog = Catalog(store, history=cfg.event_history, lease_duration=cfg.lease_duration)
    await catalog.load()
    app = make_app(
        catalog,
        token,
        max_body=cfg.max_body,
        bookmark_interval=cfg.bookmark_interval,
        autoscale_interval=cfg.autoscale_interval,
        metrics_stale_after=cfg.metrics_stale_after,
    )
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True)
    await site.start()
    # with port 0 the kernel picks one: read it back for the ready line
    port = cfg.port
    for addr in runner.addresses:
        port = int(addr[1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready_line:
        print(
            f"fluidfed hub listening on http://{cfg.host}:{port} "
            f"(catalog {store.path}, revision {catalog.revision}; admin token from {source})",
            flush=True,
        )
    try:
        await stop.wait()
    finally:
        print("fluidfed hub stopping", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            await runner.cleanup()
        await store.close()
