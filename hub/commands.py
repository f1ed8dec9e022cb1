"""`fluidfed hub ...`: plugged into the CLI through the `fluidfed.commands` entry point."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable

import msgspec

from fluidfed import config
from fluidfed.errors import ConfigError, Problem
from fluidfed.models import HubConfig


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    hub = sub.add_parser("hub", help="run the hub daemon")
    hub_sub = hub.add_subparsers(dest="hub_command", required=True)
    serve = hub_sub.add_parser("serve", help="serve the catalog and the API")
    serve.add_argument("--config", "-c", help="hub TOML file (a [hub] table)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (0: any free port)")
    serve.add_argument("--data-dir", help="directory of the catalog file")
    serve.add_argument(
        "--self-signed",
        action="store_true",
        help="serve HTTPS with a CA and certificate made in <data-dir>/tls (development)",
    )
    serve.set_defaults(run=run_serve)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed (its TLS and sockets cost the hub's fan-out a fraction of
    asyncio's: bench/hub_fanout.py), unless FLUIDFED_EVENT_LOOP=asyncio."""
    if os.environ.get("FLUIDFED_EVENT_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_serve(args: argparse.Namespace) -> int:
    from hub import server

    cfg = HubConfig()
    if args.config:
        doc = config.load(args.config)
        if doc.hub is None:
            raise ConfigError([Problem("expected a [hub] table", file=args.config)])
        cfg = doc.hub
    overrides = {
        k: v
        for k, v in (("host", args.host), ("port", args.port), ("data_dir", args.data_dir))
        if v is not None
    }
    if overrides:
        cfg = msgspec.structs.replace(cfg, **overrides)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(server.serve(cfg, self_signed=args.self_signed))
    return 0
