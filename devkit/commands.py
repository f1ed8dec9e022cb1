"""The dev kit's commands, plugged into `fluidfed` by entry point:

* `fluidfed local up|list|down`: real local clusters for trying fluidfed and for its tests;
* `fluidfed local etcd up|down`: a 3-member etcd on loopback for the hub's HA store;
* `fluidfed demo [--quick] [--keep] [--no-real-node] [--ha]` and `fluidfed demo down`.

Heavy modules load only when a command runs: daemons started by this CLI skip them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from fluidfed import aio, secretfile
from fluidfed.cli import output
from fluidfed.errors import FluidfedError
from fluidfed.models import CLUSTER_KINDS


def register(sub: Any) -> None:
    _register_demo(sub)
    _register_local(sub)


def _register_local(sub: Any) -> None:
    loc = sub.add_parser("local", help="local Kubernetes clusters (real control plane, kwok nodes)")
    loc.add_argument(
        "--dir",
        help="where clusters live (env FLUIDFED_CLUSTERS_DIR; default ~/.cache/fluidfed/clusters)",
    )
    loc_sub = loc.add_subparsers(dest="local_command", required=True)
    p = loc_sub.add_parser("up", help="start a cluster and print its kubeconfig path")
    p.add_argument("name")
    p.add_argument("--kind", choices=list(CLUSTER_KINDS), default="standard")
    p.add_argument(
        "--fluid",
        action="store_true",
        help="install Fluid's Dataset and Runtime CRDs (a cluster with Fluid)",
    )
    p.add_argument(
        "--real-node",
        action="store_true",
        help="add one real node (kubelet + containerd + runc, its own network namespace); root",
    )
    p.set_defaults(run=run_up)
    p = loc_sub.add_parser("image", help="the fluidfed image, built without Docker")
    img_sub = p.add_subparsers(dest="image_command", required=True)
    p = img_sub.add_parser(
        "build", help="build (or find in the cache) the image; print its OCI archive"
    )
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.add_argument(
        "--load", metavar="CLUSTER", help="import it into the real node of this local cluster"
    )
    p.set_defaults(run=run_image_build)
    p = loc_sub.add_parser("s3", help="a local S3 server (MinIO on loopback) for datasets")
    s3_sub = p.add_subparsers(dest="s3_command", required=True)
    p = s3_sub.add_parser("up", help="start it (bucket 'datasets'), print how to use it")
    p.add_argument("--port", type=int, default=9000, help="port on 127.0.0.1 (default 9000)")
    p.add_argument(
        "--sample",
        action="store_true",
        help="put the demo's generated sample dataset at s3://datasets/imagenet",
    )
    p.set_defaults(run=run_s3_up)
    p = s3_sub.add_parser("down", help="stop it and remove its data")
    p.set_defaults(run=run_s3_down)
    _register_etcd(loc_sub)
    p = loc_sub.add_parser(
        "credentials",
        help="write the data-path keys a cluster's agent made for a dataset (for workers run "
        "here as processes)",
    )
    p.add_argument("name", help="the local cluster")
    p.add_argument("dataset")
    p.add_argument("--keys", required=True, help="write them to this file (mode 0600)")
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the agent to make them"
    )
    p.set_defaults(run=run_credentials)
    p = loc_sub.add_parser("list", help="list local clusters")
    p.set_defaults(run=run_list)
    p = loc_sub.add_parser("down", help="stop clusters and remove their files")
    p.add_argument("name", nargs="?")
    p.add_argument("--all", action="store_true")
    p.set_defaults(run=run_down)


def _register_etcd(loc_sub: Any) -> None:
    p = loc_sub.add_parser("etcd", help="a local etcd cluster (3 members on loopback) for hub HA")
    etcd_sub = p.add_subparsers(dest="etcd_command", required=True)
    p = etcd_sub.add_parser("up", help="start it and print the hub's --store URL")
    p.add_argument(
        "--ports",
        default="2379,22379,32379",
        help="client ports on 127.0.0.1, one per member (default 2379,22379,32379)",
    )
    p.set_defaults(run=run_etcd_up)
    p = etcd_sub.add_parser("down", help="stop it and remove its data")
    p.set_defaults(run=run_etcd_down)


def run_etcd_up(args: argparse.Namespace) -> int:
    from devkit.local import etcd

    try:
        ports = [int(p) for p in args.ports.split(",")]
    except ValueError:
        raise FluidfedError(
            f"--ports {args.ports!r}: give client ports separated by commas, e.g. 2379,22379,32379"
        ) from None
    base = _base(args) or etcd.default_dir()
    cluster = etcd.up(base / "etcd" if args.dir else base, ports)
    _say(f"etcd: {len(ports)} members healthy, data and logs in {cluster.base_dir}")
    output.console.print(cluster.store_url)
    return 0


def run_etcd_down(args: argparse.Namespace) -> int:
    from devkit.local import etcd

    base = _base(args) or etcd.default_dir()
    stopped = etcd.down(base / "etcd" if args.dir else base)
    output.console.print(f"local etcd stopped ({len(stopped)} members) and its data removed")
    return 0


def _base(args: argparse.Namespace) -> Path | None:
    return Path(args.dir) if args.dir else None


def _say(msg: str) -> None:
    output.err_console.print(f"[dim]{escape(msg)}[/dim]")


def run_up(args: argparse.Namespace) -> int:
    from devkit.local import cluster  # the CLI starts fast; daemons skip it

    c = cluster.LocalCluster(args.name, args.kind, base_dir=_base(args), real_node=args.real_node)

    async def go() -> cluster.ClusterState:
        state = await c.up(_say)
        if args.fluid:
            found = await c.install_fluid_crds(_say)
            _say(f"{args.name}: installed {found.describe()}")
        return state

    state = aio.run(go())
    output.console.print(state.kubeconfig)
    return 0


def run_image_build(args: argparse.Namespace) -> int:
    from devkit.local import cluster, image  # the CLI starts fast; daemons skip it

    built = image.build_fluidfed(_say, force=args.force)
    how = f"built in {built.seconds}s" if built.seconds else "from the cache"
    _say(f"{built.ref}: {built.bytes / 2**20:.0f} MiB, {how}")
    if args.load:
        base = _base(args) or cluster.default_base_dir()
        seconds = aio.run(cluster.load_image(base / args.load, built))
        _say(f"{built.ref}: imported into {args.load}'s real node in {seconds:.1f}s")
    output.console.print(built.archive)
    return 0


def _s3_dir() -> Path:
    from devkit.local import paths

    return paths.cache_dir("s3", "FLUIDFED_S3_DIR")


def run_s3_up(args: argparse.Namespace) -> int:
    from devkit.local import binaries, processes, s3

    base = _s3_dir()
    pid_file = base / "minio.pid"
    if pid_file.exists() and processes.pid_alive(int(pid_file.read_text())):
        raise FluidfedError(f"a local S3 server already runs (pid file {pid_file})")
    aio.run(binaries.ensure(_say))
    server = s3.S3Server(base / "data", port=args.port).start(detach=True)
    assert server.proc is not None
    pid_file.write_text(f"{server.proc.pid}\n")
    env_file = base / "credentials.env"
    secretfile.write(env_file, "".join(f"{k}={v}\n" for k, v in s3.CREDENTIALS.items()))
    if args.sample:
        from devkit import demo

        aio.run(server.upload(demo.sample_dataset(small=True), prefix="imagenet"))
    output.console.print(f"S3 server (MinIO) on {server.endpoint}, bucket datasets")
    if args.sample:
        output.console.print("sample dataset at s3://datasets/imagenet")
    output.console.print(f"its credentials, for the sidecar and the worker: {env_file}")
    output.console.print(f"  set -a; . {env_file}; set +a")
    return 0


def run_s3_down(args: argparse.Namespace) -> int:
    import shutil

    from devkit.local import processes

    base = _s3_dir()
    pid_file = base / "minio.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if processes.pid_alive(pid):
            # gone before its files are: MinIO writes some of its own as it stops, and a
            # directory removed under it came back
            processes.stop_pids([pid])
    shutil.rmtree(base, ignore_errors=True)
    output.console.print("local S3 server stopped and its data removed")
    return 0


def run_credentials(args: argparse.Namespace) -> int:
    """The binding's keys from the Secret its agent keeps in the cluster, so that cache
    workers and sidecars run here as processes are the binding's own: the agent takes
    registrations and metrics only from them, and they take warm-ups only from it."""
    from agents import trust
    from devkit.local import cluster, secrets
    from fluidfed.data import credentials

    base = _base(args) or cluster.default_base_dir()
    state = cluster.load_state(base / args.name)
    if state is None:
        output.err_console.print(
            f"[red]error:[/red] no local cluster named {escape(args.name)} in {base}: start it "
            f"with `fluidfed local up {escape(args.name)}`"
        )
        return 2

    async def wait() -> tuple[str, credentials.CredentialFile]:
        said = False
        async with await cluster.api_client_for(state.kubeconfig) as api:
            async with asyncio.timeout(args.timeout):
                while True:
                    found = await secrets.keys_anywhere(api, args.dataset)
                    if found is not None:
                        return found
                    if not said:
                        _say(
                            f"waiting for the agent of {args.name} to make the keys of "
                            f"{args.dataset} (it does once the dataset is bound there)"
                        )
                        said = True
                    await asyncio.sleep(0.5)

    try:
        namespace, keys = aio.run(wait())
    except TimeoutError:
        raise FluidfedError(
            f"no keys for dataset {args.dataset} in cluster {args.name} after {args.timeout:.0f}s: "
            f"is `fluidfed agent run` running for {args.name}, and is {args.dataset} placed "
            f"there (`fluidfed get bindings --cluster {args.name}`)?"
        ) from None
    credentials.write_file(Path(args.keys), keys)
    secret = f"{namespace}/{trust.keys_secret_name(args.dataset)}"
    output.console.print(
        f"wrote the keys of {args.dataset} from {args.name}'s Secret {secret} to {args.keys} "
        "(mode 0600)"
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    from devkit.local import cluster  # the CLI starts fast; daemons skip it

    t = Table(box=None, header_style="bold")
    # the host side is where a real node's pods reach the agent's API and an S3 server
    for col in ("NAME", "KIND", "STATUS", "SERVER", "REAL NODE", "HOST SIDE", "KUBECONFIG"):
        t.add_column(col)
    for s in cluster.list_clusters(_base(args)):
        status = "running" if cluster.running(s) else "stopped"
        node, host = (s.network.node_ip, s.network.host_ip) if s.network else ("-", "-")
        t.add_row(s.name, s.kind, status, s.server, node, host, s.kubeconfig)
    output.console.print(t)
    return 0


def run_down(args: argparse.Namespace) -> int:
    from devkit.local import cluster  # the CLI starts fast; daemons skip it

    if not args.all and not args.name:
        output.err_console.print("[red]error:[/red] name a cluster or pass --all")
        return 2
    base = _base(args) or cluster.default_base_dir()
    names = [s.name for s in cluster.list_clusters(base)] if args.all else [args.name]
    if args.name and not (base / args.name).exists():
        output.err_console.print(f"[red]error:[/red] no local cluster named {args.name} in {base}")
        return 2

    async def go() -> None:
        for n in names:
            state = cluster.load_state(base / n)
            kind = state.kind if state else "standard"
            left = await cluster.LocalCluster(n, kind, base_dir=base).down()
            for what in left:
                output.err_console.print(f"[yellow]warning:[/yellow] {n}: {what} left behind")
            output.console.print(f"cluster {n} stopped and removed")

    aio.run(go())
    return 0


def _register_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole federation on this machine, in one command")
    p.add_argument("action", nargs="?", choices=["down"], help="down: remove a kept demo")
    p.add_argument("--quick", action="store_true", help="skip the slow steps")
    p.add_argument("--keep", action="store_true", help="leave everything running")
    p.add_argument(
        "--no-real-node",
        dest="real_node",
        action="store_false",
        help="run the serverless sidecar and workers as processes, not in pods on a real node",
    )
    p.add_argument(
        "--ha",
        action="store_true",
        help="the hub as 2 replicas on a 3-member local etcd; the leader is killed on the way",
    )
    p.add_argument(
        "--dir", help="work directory (env FLUIDFED_DEMO_DIR; default ~/.cache/fluidfed/demo)"
    )
    p.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from devkit import demo

    base = Path(args.dir) if args.dir else demo.default_dir()
    if args.action == "down":
        aio.run(demo.stop(base))
        demo.console.print(f"demo in {base} stopped and removed")
        return 0
    from devkit import preflight

    findings = preflight.for_demo()
    if preflight.blocking(findings):
        output.err_console.print(
            "[red]error:[/red] fluidfed demo cannot run on this machine yet; what it checked:",
            markup=True,
        )
        for line in preflight.report(findings):
            output.err_console.print(escape(line))
        output.err_console.print(
            "scripts/setup installs or checks all of it (scripts/demo runs it)"
        )
        return 2
    run = demo.Demo(base, quick=args.quick, keep=args.keep, real_node=args.real_node, ha=args.ha)
    return aio.run(_until_signalled(run.run(), demo.console.print))


async def _until_signalled(main: Coroutine[Any, Any, Any], say: Callable[[str], None]) -> int:
    """Run `main`; SIGTERM or SIGHUP cancels it as Ctrl-C does, so its cleanup runs (by
    default Python ends on them at once, and a demo left its clusters and the real node's
    network behind). 0 once done, 128 + the signal's number once stopped so."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    got: list[signal.Signals] = []

    def stop(sig: signal.Signals) -> None:
        if got:  # (the demo's cleanup runs to its end whatever cancels it: `to_the_end`)
            message = f"{sig.name}: already stopping, cleaning up"
        else:
            got.append(sig)
            task.cancel()
            message = f"{sig.name}: stopping the demo and cleaning up what it started"
        # (after a closed terminal's SIGHUP, writing to it fails: EIO)
        with contextlib.suppress(OSError):
            say(message)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop, sig)
    try:
        await main
    except asyncio.CancelledError:
        if not got:
            raise
        return 128 + got[0].value
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0
