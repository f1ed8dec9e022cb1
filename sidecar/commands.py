"""`fluidfed sidecar mount`: plugged into the CLI through the `fluidfed.commands` entry point."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import msgspec

from fluidfed import aio, codec, config
from fluidfed.data.layout import Peers, SidecarConfig, check_config
from fluidfed.errors import ConfigError, FluidfedError, Problem
from fluidfed.models import CacheTier, Mount
from sidecar import fluidconf


def register(sub: Any) -> None:
    side = sub.add_parser("sidecar", help="the FUSE client that mounts a dataset in a pod")
    side_sub = side.add_subparsers(dest="sidecar_command", required=True)
    mount = side_sub.add_parser(
        "mount",
        help="mount a dataset read-only (from the agent's config file, or from flags)",
    )
    mount.add_argument("--config", "-c", help="sidecar config (the agent's sidecar.json, or TOML)")
    mount.add_argument(
        "--fluid-config",
        default="",
        metavar="CONFIG_JSON",
        help="as a Fluid ThinRuntime's FUSE container: the config.json Fluid writes "
        "(/etc/fluid/config/config.json), its mounts, credential files and target path",
    )
    mount.add_argument(
        "--mountpoint",
        "-m",
        default="",
        help="where to mount the dataset (with --fluid-config: its targetPath by default)",
    )
    mount.add_argument("--dataset", help="dataset name (without --config)")
    mount.add_argument(
        "--uri", action="append", default=[], help="under storage to mount (without --config)"
    )
    mount.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the --uri mount (endpoint=..., region=...)",
    )
    mount.add_argument("--sub-path", help="show only this directory of the dataset")
    mount.add_argument(
        "--worker",
        action="append",
        default=[],
        metavar="URL",
        help="a cache worker (repeat; overrides the config's workers)",
    )
    mount.add_argument(
        "--credentials",
        default="",
        help="this reader's token (JSON, mode 0600; default: the config's credentials_file)",
    )
    mount.add_argument("--ready-file", default="", help="written once the mount answers")
    mount.add_argument(
        "--status-addr", default="127.0.0.1:7071", help="HOST:PORT of /readyz and /v1/status"
    )
    mount.add_argument("--cache-dir", default="", help="where disk cache tiers keep blocks")
    mount.add_argument(
        "--cache-tiers",
        default="",
        metavar="JSON",
        help="the cache tiers, as the config's `cache` (a JSON list of {medium, quota, "
        "path, ...}); over the config's",
    )
    mount.add_argument(
        "--exit-with-peers",
        action="store_true",
        help="unmount and exit once the pod's other containers have finished",
    )
    mount.set_defaults(run=run_mount)


def fluid_config(path: str) -> tuple[SidecarConfig, str]:
    """The settings and the mount point from Fluid's config.json; the credentials it names
    (files of the Secret's keys) go where the under-storage readers take them from."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError.one(
            f"cannot read Fluid's config ({err.strerror}): is this container started by a "
            "ThinRuntime whose profile is fluidfed's?",
            file=path,
        ) from None
    fc = fluidconf.parse(raw, path)
    cfg, creds = fluidconf.sidecar_config(fc, path)
    for var, value in creds.items():
        if fluidconf.is_secret_file(value):
            try:
                value = Path(value).read_text().strip()
            except OSError as err:
                # the path names the Secret and its key, never their value
                raise ConfigError.one(
                    f"cannot read the credential file {value} ({err.strerror}): the Secret "
                    "named in the Dataset's encryptOptions must hold that key",
                    file=path,
                ) from None
        os.environ[var] = value
    return cfg, fc.target_path or os.environ.get("MOUNT_POINT", "")


def sidecar_config(args: argparse.Namespace) -> SidecarConfig:
    if args.fluid_config:
        cfg, target = fluid_config(args.fluid_config)
        args.mountpoint = args.mountpoint or target
    elif args.config:
        cfg = config.load_file(args.config, SidecarConfig)
    elif args.uri and args.dataset:
        options = {}
        for i, kv in enumerate(args.option):
            key, sep, value = kv.partition("=")
            if not sep:
                raise ConfigError(
                    [Problem(f"expected KEY=VALUE, got {kv!r}", path=f"--option[{i}]")]
                )
            options[key] = value
        cfg = SidecarConfig(
            dataset=args.dataset,
            mounts=[Mount(uri=u, name=f"m{i}", options=options) for i, u in enumerate(args.uri)],
        )
    else:
        raise ConfigError(
            [Problem("give --config FILE, or --dataset NAME with --uri URI", path="sidecar mount")]
        )
    if args.sub_path is not None:
        cfg = msgspec.structs.replace(cfg, sub_path=args.sub_path)
    if getattr(args, "cache_tiers", ""):
        cfg = msgspec.structs.replace(cfg, cache=_cache_tiers(args.cache_tiers))
    if args.worker:
        cfg = msgspec.structs.replace(cfg, workers=Peers(endpoints=list(args.worker)))
    if args.credentials:
        cfg = msgspec.structs.replace(cfg, credentials_file=args.credentials)
    elif cfg.credentials_file and args.config:  # relative to the config file
        base = Path(args.config).resolve().parent
        cfg = msgspec.structs.replace(cfg, credentials_file=str(base / cfg.credentials_file))
    if cfg.ca_file and args.config:
        cfg = msgspec.structs.replace(
            cfg, ca_file=str(Path(args.config).resolve().parent / cfg.ca_file)
        )
    # checked as `fluidfed validate` checks it, before anything mounts: a zero block size,
    # a NaN timeout or a sub-path with '..' failed every read instead
    problems = check_config(cfg, rooted=bool(getattr(args, "cache_dir", "")))
    if problems:
        where = args.config or args.fluid_config or ""
        raise ConfigError([msgspec.structs.replace(p, file=where) for p in problems])
    return cfg


def _cache_tiers(text: str) -> list[CacheTier]:
    """--cache-tiers: a JSON list of tiers, as a config's `cache`."""
    try:
        return codec.decoder(list[CacheTier]).decode(text)
    except msgspec.ValidationError as err:
        raise ConfigError([codec.problem_of(err, "--cache-tiers", list[CacheTier])]) from None
    except msgspec.DecodeError as err:
        raise ConfigError(
            [Problem(f"not JSON ({err}): give a list of tiers", path="--cache-tiers")]
        ) from None


def run_mount(args: argparse.Namespace) -> int:
    try:
        from sidecar.mount import Sidecar, serve
    except ModuleNotFoundError as err:
        if err.name != "pyfuse3":
            raise
        raise FluidfedError(
            "the FUSE sidecar needs pyfuse3, which is not installed: pip install "
            "'fluidfed[fuse]' (it builds against libfuse3: apt-get install libfuse3-dev "
            "pkg-config fuse3 first)"
        ) from None

    from sidecar import fusesession

    for check, name in (
        (fusesession.engine, fusesession.ENGINE_VAR),
        (fusesession.kernel_opens, fusesession.OPENS_VAR),
    ):
        try:
            check()
        except ValueError as err:
            raise ConfigError([Problem(str(err), path=name)]) from None
    cfg = sidecar_config(args)
    if not args.mountpoint:
        raise ConfigError([Problem("give --mountpoint DIR", path="--mountpoint")])
    Path(args.mountpoint).mkdir(parents=True, exist_ok=True)
    host, _, port = args.status_addr.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            [Problem(f"expected HOST:PORT, got {args.status_addr!r}", path="--status-addr")]
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def main() -> None:
        sc = Sidecar(
            cfg,
            args.mountpoint,
            ready_file=args.ready_file,
            cache_dir=Path(args.cache_dir) if args.cache_dir else None,
            config_path=Path(args.config) if args.config else None,
        )
        if args.worker:
            sc.workers_override = list(args.worker)
        await serve(
            sc, status_host=host, status_port=int(port), exit_with_peers=args.exit_with_peers
        )

    aio.run(main())
    return 0
