"""The catalog commands: validate, cluster, apply, get, describe, delete."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import tomli

from fluidfed import aio, config, cron, secretfile
from fluidfed.cli import output, settings
from fluidfed.client import Client
from fluidfed.data import layout
from fluidfed.data.layout import SidecarConfig, WorkerConfig
from fluidfed.errors import APIError, ConfigError, NotFound, Problem
from fluidfed.models import Document, LoadStatus, Mount
from fluidfed.units import format_size

Sub = Any  # argparse's private _SubParsersAction

# what `get` and `describe` take, kubectl-style: plural, singular and short names
KINDS = {
    "clusters": "clusters",
    "cluster": "clusters",
    "cl": "clusters",
    "datasets": "datasets",
    "dataset": "datasets",
    "ds": "datasets",
    "bindings": "bindings",
    "binding": "bindings",
    "b": "bindings",
}


def _client_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The hub flags, also after the verb (`fluidfed get bindings --hub URL`): unset here,
    they leave what was given before the verb (or nothing) in place."""
    p.add_argument("--hub", default=argparse.SUPPRESS, help="hub URL (env FLUIDFED_HUB)")
    p.add_argument("--token", default=argparse.SUPPRESS, help="API token (env FLUIDFED_TOKEN)")
    p.add_argument(
        "--cacert", default=argparse.SUPPRESS, metavar="FILE", help="CA of the hub's certificate"
    )
    p.add_argument("--client-config", default=argparse.SUPPRESS, help="client TOML file")
    return p


def register(sub: Sub) -> None:
    p = sub.add_parser("validate", help="check TOML files; print every error")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(run=run_validate)

    cl = sub.add_parser("cluster", help="register, label and delete clusters")
    cl_sub = cl.add_subparsers(dest="cluster_command", required=True)
    p = _client_flags(
        cl_sub.add_parser("register", help="register (or update) a cluster from its TOML")
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--rotate-token", action="store_true", help="issue a new cluster token")
    p.add_argument("--token-file", help="write the cluster token here (mode 0600)")
    p.set_defaults(run=_hub(cluster_register))
    p = _client_flags(cl_sub.add_parser("label", help="set (k=v) or remove (k-) cluster labels"))
    p.add_argument("name")
    p.add_argument("labels", nargs="+", metavar="LABEL")
    p.set_defaults(run=_hub(cluster_label))
    p = _client_flags(cl_sub.add_parser("delete", help="delete a cluster and its bindings"))
    p.add_argument("name")
    p.set_defaults(run=_hub(cluster_delete))

    p = _client_flags(sub.add_parser("apply", help="create or update what the files declare"))
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="a TOML file, a directory (its *.toml files), or - for standard input",
    )
    p.set_defaults(run=_hub(apply))

    p = _client_flags(sub.add_parser("get", help="list clusters, datasets or bindings"))
    p.add_argument("kind", choices=list(KINDS), metavar="KIND", help="clusters|datasets|bindings")
    p.add_argument("name", nargs="?", help="only this one")
    p.add_argument(
        "-o", "--output", choices=["table", "wide", "name", "json", "yaml"], default="table"
    )
    p.add_argument("--cluster", help="bindings of this cluster only")
    p.set_defaults(run=_hub(get))

    p = _client_flags(
        sub.add_parser("describe", help="show a dataset or a cluster with its status")
    )
    p.add_argument("kind", choices=[k for k, v in KINDS.items() if v != "bindings"], metavar="KIND")
    p.add_argument("name")
    p.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    p.set_defaults(run=_hub(describe))

    ds = sub.add_parser("dataset", help="work with a dataset's caches")
    ds_sub = ds.add_subparsers(dest="dataset_command", required=True)
    p = _client_flags(
        ds_sub.add_parser(
            "load", help="warm the cache workers with a dataset (or a path in it), with progress"
        )
    )
    p.add_argument("name")
    p.add_argument(
        "--cluster", action="append", default=[], help="only this cluster (repeat; default all)"
    )
    p.add_argument("--path", default="", help="only this directory or file of the dataset")
    p.add_argument(
        "--schedule",
        default="",
        metavar="CRON",
        help='load again on this cron schedule, in UTC (Fluid\'s Cron policy; "0 */6 * * *")',
    )
    p.add_argument(
        "--on-change",
        action="store_true",
        help="load again whenever the under storage changed, only what changed (OnEvent)",
    )
    p.add_argument("--no-wait", action="store_true", help="ask for it and return at once")
    p.add_argument(
        "--timeout",
        type=float,
        default=660.0,
        help="seconds to wait for every cluster (an agent gives up after 600)",
    )
    p.set_defaults(run=_hub(dataset_load))

    p = _client_flags(sub.add_parser("delete", help="delete a dataset"))
    p.add_argument("kind", choices=["dataset", "ds"], metavar="KIND")
    p.add_argument("name")
    p.set_defaults(run=_hub(delete))


def _hub(
    fn: Callable[[Client, argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        s = settings.resolve(args.hub, args.token, args.client_config, args.cacert)
        if not s.token:
            raise ConfigError(
                [
                    Problem(
                        "no token: pass --token, set FLUIDFED_TOKEN (or FLUIDFED_TOKEN_FILE), "
                        f"or put token_file in {settings.default_config_path()}"
                    )
                ]
            )

        async def go() -> int:
            async with Client(s.hub, s.token, ca_file=s.ca_file) as client:
                return await fn(client, args)

        return aio.run(go())

    return run


def _expand(files: list[str]) -> list[str]:
    """Directories stand for their *.toml files (sorted), as `kubectl apply -f DIR/` does."""
    out: list[str] = []
    for f in files:
        p = Path(f)
        if f != "-" and p.is_dir():
            found = sorted(str(x) for x in p.glob("*.toml"))
            if not found:
                raise ConfigError.one("no *.toml file in this directory", file=f)
            out += found
        else:
            out.append(f)
    return out


def _reader_options(mount: Mount) -> str:
    """Whether fluidfed's readers can open `mount` with its settings (OpenDAL, imported
    only for a mount that has any)."""
    from fluidfed.data import ufs

    return ufs.options_problem(mount)


def _load_all(files: list[str]) -> list[tuple[str, Document, str]]:
    """Every document named, with its file and its text (to place the hub's problems)."""
    docs, problems = [], []
    for f in _expand(files):
        try:
            source = sys.stdin.read() if f == "-" else config.read(Path(f))
            name = "<stdin>" if f == "-" else f
            doc = config.loads(source, file=name, options=_reader_options)
            docs.append((f, doc, source))
        except ConfigError as err:
            problems += err.problems
    if problems:
        raise ConfigError(problems)
    return docs


def _data_path_kind(path: str) -> type[SidecarConfig] | type[WorkerConfig] | None:
    """A sidecar's or a worker's settings (a top-level `dataset = "name"`), or None."""
    if path == "-" or not path.endswith((".toml", ".json")):
        return None
    try:
        text = Path(path).read_text()
        raw = tomli.loads(text) if path.endswith(".toml") else msgspec.json.decode(text)
    except (
        OSError,
        UnicodeDecodeError,
        tomli.TOMLDecodeError,
        msgspec.DecodeError,
        RecursionError,
    ):
        return None  # the document loader says what is wrong with it
    if not isinstance(raw, dict) or not isinstance(raw.get("dataset"), str):
        return None
    return WorkerConfig if "tiers" in raw or "port" in raw else SidecarConfig


def run_validate(args: argparse.Namespace) -> int:
    """Every file kind the project ships: catalog documents (cluster, datasets, hub, agent)
    and the data path's settings (sidecar, worker). Every problem of every file, then 2."""
    problems: list[Problem] = []
    valid: list[str] = []
    for f in _expand(args.files):
        kind = _data_path_kind(f)
        try:
            if kind is None:
                _load_all([f])
            else:
                cfg = config.load_file(f, kind)
                lines = config.toml_lines(Path(f).read_text()) if f.endswith(".toml") else {}
                problems += [
                    Problem(p.message, path=p.path, file=f, line=config.locate(lines, p.path))
                    for p in layout.check_config(cfg)
                ]
            valid.append(f)
        except ConfigError as err:
            problems += err.problems
    if problems:
        raise ConfigError(problems)
    for f in valid:
        output.console.print(f"{f}: valid")
    return 0


async def _cluster_known(client: Client, name: str) -> bool:
    """Registered already (registering again then issues no token)."""
    try:
        await client.get_cluster(name)
    except NotFound:
        return False
    return True


async def cluster_register(client: Client, args: argparse.Namespace) -> int:
    doc = config.load(args.file)
    if doc.cluster is None:
        raise ConfigError([Problem("expected a [cluster] table", file=args.file)])
    why = secretfile.unwritable(Path(args.token_file)) if args.token_file else ""
    if why and (args.rotate_token or not await _cluster_known(client, doc.cluster.name)):
        # asked before the hub issues (or rotates) a token that would then be nowhere
        msg = f"cannot write the token there: {why}; nothing was registered or rotated"
        raise ConfigError([Problem(msg, path="--token-file", file=args.token_file)])
    result = await client.register_cluster(doc.cluster, rotate_token=args.rotate_token)
    name = result.cluster.spec.name
    if not result.token:
        note = (
            "; nothing written: add --rotate-token to issue a new token into it"
            if args.token_file
            else ""
        )
        output.console.print(f"cluster/{name} registered (already known; token unchanged{note})")
        return 0
    if args.token_file:
        path = Path(args.token_file)
        try:
            secretfile.write(path, result.token + "\n")
        except OSError as err:
            # the hub holds only the token's hash: shown once here, or lost
            why = err.strerror or str(err)
            output.err_console.print(f"error: cannot write {path}: {why}", markup=False)
            output.console.print(f"token: {result.token}")
            output.console.print("keep it now: the hub stores only its hash")
            return 1
        output.console.print(f"cluster/{name} registered; token written to {path}")
    else:
        output.console.print(f"cluster/{name} registered")
        output.console.print(f"token: {result.token}")
        output.console.print("keep it now: the hub stores only its hash")
    return 0


async def cluster_label(client: Client, args: argparse.Namespace) -> int:
    set_labels: dict[str, str] = {}
    remove: list[str] = []
    for item in args.labels:
        if item.endswith("-") and "=" not in item:
            remove.append(item[:-1])
        elif "=" in item:
            k, v = item.split("=", 1)
            set_labels[k] = v
        else:
            raise ConfigError(
                [Problem(f"{item!r}: write key=value to set or key- to remove", path="labels")]
            )
    rec = await client.label_cluster(args.name, set_labels, remove)
    labels = ",".join(f"{k}={v}" for k, v in sorted(rec.spec.labels.items())) or "none"
    output.console.print(f"cluster/{args.name} labeled: {labels}")
    return 0


async def cluster_delete(client: Client, args: argparse.Namespace) -> int:
    await client.delete_cluster(args.name)
    output.console.print(f"cluster/{args.name} deleted")
    return 0


async def apply(client: Client, args: argparse.Namespace) -> int:
    applied: list[str] = []
    for f, doc, source in _load_all(args.filename):
        at = "cluster"  # what is being applied, as a path in the file
        try:
            if doc.cluster is not None:
                result = await client.register_cluster(doc.cluster)
                output.console.print(f"cluster/{doc.cluster.name} registered")
                applied.append(f"cluster/{doc.cluster.name}")
                if result.token:
                    # a credential does not belong in output that lands in logs and scrollback
                    output.err_console.print(
                        f"a token was issued for cluster {doc.cluster.name} and not shown: "
                        "write one to a file for its agent with `fluidfed cluster register "
                        "FILE --rotate-token --token-file F`"
                    )
            for i, ds in enumerate(doc.dataset):
                at = f"dataset[{i}]"
                view = await client.apply_dataset(ds)
                applied.append(f"dataset/{ds.name}")
                where = ", ".join(f"{v.binding.cluster} ({v.binding.mode})" for v in view.bindings)
                output.console.print(
                    f"dataset/{ds.name} applied (generation {view.generation}); "
                    f"placed on {where or 'no cluster'}"
                )
        except APIError as err:
            if applied:
                output.err_console.print(
                    f"applied before the hub refused what follows: {', '.join(applied)}; "
                    "nothing after it was applied",
                    markup=False,
                )
            if err.status not in (400, 422) or not err.problems:
                raise  # not the file's fault (a token, a conflict, the hub itself): as it is
            raise ConfigError(_placed(err, f, source, at)) from None
        if doc.hub is not None:
            output.console.print(
                "(a [hub] table configures `fluidfed hub serve`; nothing to apply)"
            )
    return 0


def _placed(err: APIError, f: str, source: str, at: str) -> list[Problem]:
    """The hub's problems with one document (`dataset.mounts[0].uri`) at their place in
    the file it came from (`dataset[1].mounts[0].uri`, its line)."""
    try:
        single = isinstance(tomli.loads(source).get("dataset"), dict)
    except (tomli.TOMLDecodeError, RecursionError):
        single = False
    prefix = "dataset" if single and at.startswith("dataset") else at
    lines = config.toml_lines(source)
    file = "<stdin>" if f == "-" else f
    out = []
    for p in err.problems:
        path = p.path
        kind = at.split("[")[0]
        if path == kind or path.startswith((kind + ".", kind + "[")):
            path = prefix + path.removeprefix(kind)
        out.append(Problem(p.message, path=path, file=file, line=config.locate(lines, path)))
    return out


async def get(client: Client, args: argparse.Namespace) -> int:
    kind, fmt, wide = KINDS[args.kind], args.output, args.output == "wide"
    if kind == "clusters":
        clusters = (
            [await client.get_cluster(args.name)] if args.name else await client.list_clusters()
        )
        names = [c.spec.name for c in clusters]
        _show("cluster", clusters, names, output.clusters_table(clusters, wide=wide), args)
    elif kind == "datasets":
        datasets = (
            [await client.get_dataset(args.name)] if args.name else await client.list_datasets()
        )
        names = [d.spec.name for d in datasets]
        _show("dataset", datasets, names, output.datasets_table(datasets, wide=wide), args)
    else:
        if args.name:
            items = [await client.get_binding(args.name)]
            listed: Any = items[0]
        else:
            result = await client.list_bindings(args.cluster)
            items, listed = result.items, result
        if fmt in ("table", "wide"):
            statuses = {}
            for d in {b.dataset for b in items}:
                view = await client.get_dataset(d)
                statuses.update({v.binding.name: v.status for v in view.bindings if v.status})
            output.console.print(output.bindings_table(items, statuses, wide=wide))
        elif fmt == "name":
            output.names("binding", [b.name for b in items])
        else:
            output.dump(listed, fmt)
    return 0


def _show(kind: str, items: list[Any], names: list[str], table: Any, args: Any) -> None:
    """One kind's `get` in the asked format: a table, kind/name lines, or json/yaml (one
    object when a name was asked for)."""
    if args.output in ("table", "wide"):
        output.console.print(table)
    elif args.output == "name":
        output.names(kind, names)
    else:
        output.dump(items[0] if args.name else items, args.output)


async def describe(client: Client, args: argparse.Namespace) -> int:
    if KINDS[args.kind] == "clusters":
        rec = await client.get_cluster(args.name)
        bindings = (await client.list_bindings(args.name)).items
        if args.output == "text":
            output.describe_cluster(rec, bindings)
        else:
            output.dump(rec, args.output)
        return 0
    view = await client.get_dataset(args.name)
    if args.output == "text":
        output.describe_dataset(view)
    else:
        output.dump(view, args.output)
    return 0


async def delete(client: Client, args: argparse.Namespace) -> int:
    await client.delete_dataset(args.name)
    output.console.print(f"dataset/{args.name} deleted")
    return 0


async def dataset_load(client: Client, args: argparse.Namespace) -> int:
    """Ask for the warm-up, then follow each cluster's progress until it is done (a
    scheduled one: until it is set up)."""
    if args.schedule:
        try:
            next_run = cron.parse(args.schedule).next_after(time.time())
        except ValueError as err:
            raise ConfigError.one(str(err), path="--schedule") from None
    asked = await client.load_dataset(
        args.name, args.cluster, args.path, schedule=args.schedule, on_change=args.on_change
    )
    ids = {b.cluster: b.load.id for b in asked if b.load is not None}
    what = f"/{args.path.strip('/')}" if args.path.strip("/") else "the whole dataset"
    output.console.print(f"warm-up of {args.name} ({what}) asked of {', '.join(sorted(ids))}")
    if args.on_change:
        output.console.print("  and again whenever its under storage changes (what changed)")
    if args.schedule:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(next_run))
        output.console.print(
            f"  on schedule {args.schedule!r}, first at {when}: `fluidfed describe dataset "
            f"{args.name}` shows each cluster's last run"
        )
        return 0
    if args.no_wait:
        return 0
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    final: dict[str, LoadStatus] = {}
    with Progress(
        TextColumn("{task.description:<14}", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[note]}", markup=False),
        console=output.console,
        transient=False,
    ) as bar:
        tasks = {c: bar.add_task(c, total=None, note="waiting for the agent") for c in ids}
        started = asyncio.get_running_loop().time()
        deadline = started + args.timeout
        while len(final) < len(ids):
            view = await client.get_dataset(args.name)
            quiet = asyncio.get_running_loop().time() - started > 30
            for v in view.bindings:
                c = v.binding.cluster
                ld = v.status.load if v.status else None
                if c in ids and c not in final and quiet and (ld is None or ld.id != ids[c]):
                    bar.update(
                        tasks[c],
                        note="no word from its agent yet: is it running? "
                        "(`fluidfed get clusters` shows when it was last seen)",
                    )
                if c not in ids or ld is None or ld.id != ids[c] or c in final:
                    continue
                note = output.safe(ld.message) or f"{ld.phase.lower()}, {format_size(ld.bytes)}"
                bar.update(tasks[c], total=ld.blocks or None, completed=ld.done, note=note)
                if ld.phase in ("Done", "Failed"):
                    final[c] = ld
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.3)
    failed = False
    for c in sorted(ids):
        ld = final.get(c)
        if ld is None:
            output.console.print(f"{c}: not finished within {args.timeout:g}s")
            failed = True
            continue
        failed = failed or ld.phase != "Done"
        if not ld.blocks:  # Fluid's DataLoad says how it went, not how many blocks
            said = f" - {output.safe(ld.message)}" if ld.message else ""
            output.console.print(f"{c}: {ld.phase}{said}")
            continue
        output.console.print(
            f"{c}: {ld.phase}, {ld.percent():.1f}% cached "
            f"({ld.cached}/{ld.blocks} blocks, {format_size(ld.bytes)} pulled)"
            + (f" - {output.safe(ld.message)}" if ld.message else "")
        )
    return 1 if failed else 0
