"""`fluidfed hub ...`: plugged into the CLI through the `fluidfed.commands` entry point."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable
from pathlib import Path

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
        "--store",
        help="etcd://HOST:PORT,... : share the catalog on etcd with other hub replicas "
        "(default: the SQLite file in the data directory)",
    )
    serve.add_argument("--etcd-prefix", help="the catalog's keys in etcd (default /fluidfed/)")
    serve.add_argument(
        "--self-signed",
        action="store_true",
        help="serve HTTPS with a CA and certificate made in <data-dir>/tls (development)",
    )
    serve.set_defaults(run=run_serve)

    backup = hub_sub.add_parser(
        "backup", help="an online, consistent copy of the catalog (while the hub runs)"
    )
    backup.add_argument("file", metavar="FILE")
    restore = hub_sub.add_parser("restore", help="put a backup in place (the hub stopped)")
    restore.add_argument("file", metavar="FILE")
    for p in (backup, restore):
        p.add_argument("--config", "-c", help="hub TOML file (for its data_dir)")
        p.add_argument("--data-dir", help="the hub's data directory")
    backup.set_defaults(run=run_backup)
    restore.set_defaults(run=run_restore)


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


# the file and directory settings of [hub]: relative ones are taken from the config file's
# directory, as in the agent's, worker's and sidecar's files (flags: from the current one)
_PATHS = (
    "data_dir", "admin_token_file", "tls_cert_file", "tls_key_file", "client_ca_file",
    "etcd_ca_file", "etcd_cert_file", "etcd_key_file", "etcd_password_file",
)  # fmt: skip


def _hub_config(args: argparse.Namespace) -> HubConfig:
    if not args.config:
        return HubConfig()
    doc = config.load(args.config)
    if doc.hub is None:
        raise ConfigError([Problem("expected a [hub] table", file=args.config)])
    base = Path(args.config).resolve().parent
    paths = {
        f: str(base / v) for f in _PATHS if (v := getattr(doc.hub, f)) and not Path(v).is_absolute()
    }
    return msgspec.structs.replace(doc.hub, **paths)


def _catalog_file(args: argparse.Namespace) -> Path:
    cfg = _hub_config(args)
    if cfg.store and not args.data_dir:
        raise ConfigError.one(
            f"the catalog is on {cfg.store}: back it up with etcd's own `etcdctl snapshot "
            "save` (and restore with `etcdutl snapshot restore`)",
            file=args.config,
            path="hub.store",
        )
    return Path(args.data_dir or cfg.data_dir) / "catalog.db"


def run_backup(args: argparse.Namespace) -> int:
    from hub.store import backup_file

    source = _catalog_file(args)
    backup_file(source, Path(args.file))
    print(f"catalog {source} copied to {args.file} (consistent, write-ahead log included)")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    from hub.store import restore_file

    target = _catalog_file(args)
    restore_file(Path(args.file), target)
    print(
        f"catalog {target} restored from {args.file}; start the hub: agents list again and "
        "remove what is no longer bound"
    )
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from hub import server

    cfg = _hub_config(args)
    overrides = {
        k: v
        for k, v in (
            ("host", args.host),
            ("port", args.port),
            ("data_dir", args.data_dir),
            ("store", args.store),
            ("etcd_prefix", args.etcd_prefix),
        )
        if v is not None
    }
    if overrides:
        cfg = msgspec.structs.replace(cfg, **overrides)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(server.serve(cfg, self_signed=args.self_signed))
    return 0
