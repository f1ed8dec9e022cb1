"""`fluidfed hub ...`: plugged into the CLI through the `fluidfed.commands` entry point."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import msgspec

from fluidfed import aio, config
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
        p.add_argument("--config", "-c", help="hub TOML file (its data_dir, or its store)")
        p.add_argument("--data-dir", help="the hub's data directory")
        p.add_argument(
            "--store",
            help="etcd://HOST:PORT,... : the catalog is on etcd (backup: etcd's snapshot)",
        )
    backup.set_defaults(run=run_backup)
    restore.set_defaults(run=run_restore)


# the file and directory settings of [hub]: relative ones are taken from the config file's
# directory, as in the agent's, worker's and sidecar's files (flags: from the current one)
_PATHS = (
    "data_dir", "admin_token_file", "metrics_token_file", "tls_cert_file", "tls_key_file",
    "client_ca_file", "etcd_ca_file", "etcd_cert_file", "etcd_key_file", "etcd_password_file",
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


def _store_config(args: argparse.Namespace) -> HubConfig:
    cfg = _hub_config(args)
    if args.store is not None:
        cfg = msgspec.structs.replace(cfg, store=args.store)
    if args.data_dir:
        cfg = msgspec.structs.replace(cfg, data_dir=args.data_dir)
    return cfg


def run_backup(args: argparse.Namespace) -> int:
    from hub.store import backup_file

    cfg = _store_config(args)
    if cfg.store:
        size, where = aio.run(_etcd_snapshot(cfg, Path(args.file)))
        print(
            f"etcd snapshot of {where} saved to {args.file} ({size} bytes, consistent; every "
            "key of that etcd, not only the catalog's): `fluidfed hub restore` says how to "
            "put it back"
        )
        return 0
    source = Path(cfg.data_dir) / "catalog.db"
    out = Path(args.file)
    if out.is_dir() or not out.parent.is_dir():
        what = "is a directory" if out.is_dir() else f"is in {out.parent}, which does not exist"
        raise ConfigError.one(
            f"the backup {out} {what}: name a file to write in an existing directory",
            path="FILE",
        )
    if not source.is_file():
        raise ConfigError.one(
            f"no catalog at {source}: give the hub's data directory (--data-dir) or its "
            "file (--config)",
            path="--data-dir",
        )
    backup_file(source, out)
    print(f"catalog {source} copied to {args.file} (consistent, write-ahead log included)")
    return 0


async def _etcd_snapshot(cfg: HubConfig, out: Path) -> tuple[int, str]:
    from hub import etcd, server

    store, where = server.open_store(cfg)
    assert isinstance(store, etcd.EtcdStore)
    try:
        return await store.snapshot(out), where
    finally:
        await store.close()


def run_restore(args: argparse.Namespace) -> int:
    from hub.store import restore_file

    cfg = _store_config(args)
    if cfg.store:
        # etcd's members hold the catalog: only they can take a snapshot back
        raise ConfigError.one(
            f"the catalog is on {cfg.store}: a snapshot goes back into etcd itself. Stop "
            "every hub replica; stop the etcd members; for each member run `etcdutl snapshot "
            f"restore {args.file} --name NAME --initial-cluster NAME=PEER_URL,... "
            "--initial-advertise-peer-urls PEER_URL --data-dir NEW_DIR --bump-revision "
            "1000000000 --mark-compacted` (so that watchers list again rather than resume "
            "at a revision that now names other changes); start the members "
            "on their new data directories, then the replicas (agents list again and remove "
            "what is no longer bound)",
            file=args.config or "",
            path="hub.store",
        )
    target = Path(cfg.data_dir) / "catalog.db"
    backup = Path(args.file)
    if not backup.is_file():
        what = "is a directory" if backup.is_dir() else "does not exist"
        raise ConfigError.one(
            f"the backup {backup} {what}: give a file `fluidfed hub backup FILE` wrote",
            path="FILE",
        )
    if not target.parent.is_dir():
        raise ConfigError.one(
            f"no hub data directory at {target.parent}: give the hub's (--data-dir) or its "
            "file (--config)",
            path="--data-dir",
        )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = restore_file(backup, target, stamp)
    before = f"; the catalog it replaced is kept as {kept}" if kept else ""
    print(
        f"catalog {target} restored from {args.file}{before}. Start the hub: agents list "
        "again and remove what is no longer bound"
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
    # what the hub says as it serves (which replica leads, a certificate reloaded), as the
    # agent does: on stderr, its ready line alone on stdout
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    aio.run(server.serve(cfg, self_signed=args.self_signed))
    return 0
