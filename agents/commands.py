"""`fluidfed agent run`: plugged into the CLI through the `fluidfed.commands` entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
from pathlib import Path
from typing import Any

import msgspec

from fluidfed import aio, config, validation
from fluidfed.errors import ConfigError, Problem
from fluidfed.models import AgentConfig, Cluster, KubeAccess


def register(sub: Any) -> None:
    agent = sub.add_parser("agent", help="run a cluster's agent")
    agent_sub = agent.add_subparsers(dest="agent_command", required=True)
    run = agent_sub.add_parser("run", help="follow the hub and reconcile this cluster")
    run.add_argument("--config", "-c", required=True, help="agent TOML file (an [agent] table)")
    run.set_defaults(run=run_agent)

    worker = sub.add_parser("worker", help="run a dataset's cache worker")
    worker_sub = worker.add_subparsers(dest="worker_command", required=True)
    serve = worker_sub.add_parser("serve", help="hold a dataset's blocks for the cluster")
    serve.add_argument("--config", "-c", required=True, help="worker config (JSON or TOML)")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (loopback unless given; in a pod the agent gives the pod's)",
    )
    serve.add_argument(
        "--credentials",
        default="",
        help="the binding's keys (JSON, mode 0600; default: the config's credentials_file)",
    )
    serve.add_argument("--port", type=int, help="port (default: the config's, 7070)")
    serve.add_argument(
        "--advertise", default="", help="this worker's URL as the sidecars and peers know it"
    )
    serve.add_argument(
        "--cache-dir", default="/cache", help="where disk tiers without a path keep blocks"
    )
    serve.add_argument(
        "--drain-timeout", type=float, default=60.0, help="seconds to hand blocks over on SIGTERM"
    )
    serve.set_defaults(run=run_worker)

    creds = worker_sub.add_parser(
        "credentials",
        help="make a binding's keys or a token from them, outside Kubernetes (files, 0600)",
    )
    creds.add_argument("--keys", required=True, help="the keys file (made if it does not exist)")
    creds.add_argument("--token-out", default="", help="write a token signed by the keys here")
    creds.add_argument("--dataset", default="", help="the token's dataset")
    creds.add_argument("--role", choices=["reader", "peer", "agent"], default="reader")
    creds.add_argument("--sub-path", default="", help="a reader token's sub-path")
    creds.add_argument("--namespace", default="", help="a reader token's namespace")
    creds.add_argument(
        "--tls-dir",
        default="",
        help="also make TLS for the workers here: a CA of the binding's (ca.crt, ca.key: "
        "made once, kept) and a serving certificate for --host (tls.crt, tls.key)",
    )
    creds.add_argument(
        "--host",
        action="append",
        default=[],
        help="a name or address the workers are reached by (repeat; with --tls-dir)",
    )
    creds.set_defaults(run=run_credentials)

    r = sub.add_parser(
        "render", help="print every object the agent would make for a dataset on a cluster"
    )
    r.add_argument("-f", "--filename", required=True, metavar="DATASET.toml")
    r.add_argument("--cluster", required=True, metavar="CLUSTER.toml")
    r.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    r.add_argument("--image", default="", help="the cache workers' image (default: the agent's)")
    r.set_defaults(run=run_render)


def _resolve(base: Path, path: str) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else base / p


def load(config_path: str) -> tuple[AgentConfig, Cluster, KubeAccess, Path]:
    """The agent file, the cluster file it points at, the Kubernetes access, the state dir."""
    doc = config.load(config_path)
    if doc.agent is None:
        raise ConfigError([Problem("expected an [agent] table", file=config_path)])
    cfg = doc.agent
    base = Path(config_path).resolve().parent
    cluster_file = _resolve(base, cfg.cluster_file)
    # (a cluster registered before the hub refused ones that can mount nothing still runs its
    # agent, warned: it serves what it holds and retires it: `run_agent`)
    cdoc = config.load(cluster_file, mountable=False)
    if cdoc.cluster is None:
        raise ConfigError([Problem("expected a [cluster] table", file=str(cluster_file))])
    access = cfg.kubernetes or cdoc.cluster.kubernetes
    if access.kubeconfig:
        kubeconfig = _resolve(
            cluster_file.parent if cfg.kubernetes is None else base, access.kubeconfig
        )
        if not kubeconfig.exists():
            raise ConfigError(
                [
                    Problem(
                        f"kubeconfig {kubeconfig} does not exist",
                        file=config_path,
                        path="agent.kubernetes.kubeconfig",
                    )
                ]
            )
        access = KubeAccess(kubeconfig=str(kubeconfig), context=access.context)
    # the TLS files, like every path in the agent file, are relative to it
    tls_files = {
        f: str(_resolve(base, getattr(cfg, f)))
        for f in ("ca_file", "client_cert_file", "client_key_file", "webhook_client_ca_file")
        if getattr(cfg, f)
    }
    for field, path in tls_files.items():
        if not Path(path).is_file():
            raise ConfigError.one(
                f"{path} does not exist: give the PEM file's path (relative to this file)",
                file=config_path,
                path=f"agent.{field}",
            )
    if "webhook_client_ca_file" in tls_files:  # (read now, not once the agent runs)
        try:
            ssl.create_default_context().load_verify_locations(
                cafile=tls_files["webhook_client_ca_file"]
            )
        except (OSError, ssl.SSLError) as err:
            raise ConfigError.one(
                f"{tls_files['webhook_client_ca_file']} holds no CA certificate to load "
                f"({err}): give the PEM file of the CA that signs the API server's client "
                "certificate",
                file=config_path,
                path="agent.webhook_client_ca_file",
            ) from None
    if tls_files:
        cfg = msgspec.structs.replace(cfg, **tls_files)
    return cfg, cdoc.cluster, access, _resolve(base, cfg.state_dir)


def read_token(config_path: str, cfg: AgentConfig) -> str:
    """The cluster token from token_file (relative to the agent file), else token_env."""
    if not cfg.token_file:
        return os.environ.get(cfg.token_env, "").strip()
    path = _resolve(Path(config_path).resolve().parent, cfg.token_file)
    try:
        token = path.read_text().strip()
    except OSError as err:
        raise ConfigError.one(
            f"cannot read the cluster token file {path} ({err.strerror}): write the token "
            "that `fluidfed cluster register --token-file` gave, or drop token_file and "
            "set a bootstrap token so the agent registers itself",
            file=config_path,
            path="agent.token_file",
        ) from None
    if not token:
        raise ConfigError.one(
            f"the cluster token file {path} is empty: write the cluster's token there "
            "(`fluidfed cluster register FILE --token-file F --rotate-token` issues one)",
            file=config_path,
            path="agent.token_file",
        )
    return token


def run_agent(args: argparse.Namespace) -> int:
    from agents.agent import Agent
    from agents.kube import Kube, api_client

    cfg, cluster, access, state_dir = load(args.config)
    token = read_token(args.config, cfg)
    bootstrap = os.environ.get(cfg.bootstrap_token_env, "").strip()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for p in validation.check_mountable(cluster):
        logging.getLogger("fluidfed.agent").warning(
            "%s: %s; the hub registers such a cluster no more, and this agent only keeps "
            "up what its bindings made until they are retired",
            p.path,
            p.message,
        )

    async def main() -> None:
        kube = await Kube(await api_client(access)).open()
        agent = Agent(cfg, cluster, kube, state_dir, token=token, bootstrap_token=bootstrap)
        task = asyncio.create_task(agent.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        # SIGHUP: renew the webhook's serving certificate now
        loop.add_signal_handler(signal.SIGHUP, agent.request_rotation)
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            await kube.close()

    aio.run(main())
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from agents.worker import server
    from fluidfed.data.layout import WorkerConfig, check_config

    cfg = config.load_file(args.config, WorkerConfig)
    creds = args.credentials or cfg.credentials_file
    if not creds:
        raise ConfigError.one(
            "a cache worker needs the binding's keys: give --credentials FILE or "
            "credentials_file (the agent's Secret holds them)",
            file=args.config,
            path="credentials_file",
        )
    # like every path in the file, a disk tier's is relative to it
    here = Path(args.config).resolve().parent
    tiers = [
        msgspec.structs.replace(t, path=str(_resolve(here, t.path))) if t.path else t
        for t in cfg.tiers
    ]
    files = {
        k: str(_resolve(here, v))
        for k in ("tls_cert_file", "tls_key_file", "ca_file")
        if (v := getattr(cfg, k))
    }
    cfg = msgspec.structs.replace(cfg, tiers=tiers, **files)
    # checked as `fluidfed validate` checks it, before the worker serves
    problems = [msgspec.structs.replace(p, file=args.config) for p in check_config(cfg)]
    if args.port is not None and not 0 <= args.port < 65536:
        problems.append(Problem(f"--port {args.port} is not a TCP port (0-65535)", path="--port"))
    if not cfg.tls_cert_file and not cfg.plain_http and not validation.is_loopback(args.host):
        problems.append(
            Problem(
                f"the worker would serve plain HTTP on {args.host}, beyond loopback: its "
                "readers' tokens and the dataset's blocks would cross the network in clear. "
                "Give tls_cert_file and tls_key_file (`fluidfed worker credentials --tls-dir` "
                "makes them), or set plain_http = true where the network encrypts by other "
                "means (a service mesh's mTLS)",
                file=args.config,
                path="plain_http",
            )
        )
    if problems:
        raise ConfigError(problems)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    aio.run(
        server.serve(
            cfg,
            host=args.host,
            port=cfg.port if args.port is None else args.port,
            advertise=args.advertise,
            cache_root=Path(args.cache_dir),
            config_path=Path(args.config),
            credentials_path=_resolve(here, creds),
            drain_timeout=args.drain_timeout,
        )
    )
    return 0


def run_credentials(args: argparse.Namespace) -> int:
    """Keys for workers run by hand, and tokens for their sidecars; never printed."""
    from fluidfed.data import credentials

    keys = Path(args.keys)
    if not keys.exists():
        credentials.write_file(
            keys,
            credentials.CredentialFile(keys=[credentials.encode_key(credentials.new_key())]),
        )
        print(f"wrote new keys to {keys} (mode 0600): give it to the workers (--credentials)")
    if args.token_out:
        if not args.dataset:
            raise ConfigError.one("give the token's --dataset", path="--dataset")
        claims = credentials.Claims(
            role=args.role, dataset=args.dataset, namespace=args.namespace, sub_path=args.sub_path
        )
        token = credentials.load(keys).signed(claims)
        credentials.write_file(Path(args.token_out), credentials.CredentialFile(token=token))
        print(f"wrote a {args.role} token of {args.dataset} to {args.token_out} (mode 0600)")
    if args.tls_dir:
        if not args.host:
            raise ConfigError.one(
                "name the workers' hosts the certificate is for (--host, repeated)",
                path="--host",
            )
        from fluidfed import pki

        d = Path(args.tls_dir)
        # the CA's key in a directory of its own: what is handed out (ca.crt, and the
        # workers' pair) lies beside it, never the key that could sign more workers
        ca = pki.load_or_make_ca(d / "ca", "fluidfed-data-ca")
        leaf = pki.issue(ca, "fluidfed-cache-worker", server=True, hosts=tuple(args.host))
        pki.write(d / "tls.key", leaf.key_pem, private=True)
        pki.write(d / "tls.crt", leaf.cert_pem)
        pki.write(d / "ca.crt", ca.cert_pem)
        print(
            f"wrote the workers' certificate for {', '.join(args.host)} to {d}/tls.crt and "
            f"tls.key (mode 0600; valid 365 days: run this again to renew): tls_cert_file "
            f"and tls_key_file in the workers' config; ca_file = {d}/ca.crt in the sidecars' "
            f"and workers'. Keep {d}/ca/ca.key on this machine: it signs workers."
        )
    return 0


def run_render(args: argparse.Namespace) -> int:
    """Like `helm template`: the objects of each dataset of the file on the cluster, as the
    agent renders them (csi or sidecar mode, from the cluster's capabilities), for review.
    Whether the dataset's placement selects the cluster is the hub's call and not checked
    here. The data path's keys are the agent's to make: the Secrets show none."""
    from agents import objects, render, trust
    from fluidfed.models import Binding

    cdoc = config.load(args.cluster)
    if cdoc.cluster is None:
        raise ConfigError([Problem("expected a [cluster] table", file=args.cluster)])
    doc = config.load(args.filename)
    if not doc.dataset:
        raise ConfigError([Problem("expected a [dataset] table", file=args.filename)])
    cluster = cdoc.cluster
    image = args.image or AgentConfig(cluster_file="-").worker_image
    ctx = objects.ClusterContext(name=cluster.name, kind=cluster.kind, worker_image=image)
    out: list[dict[str, Any]] = []
    for ds in doc.dataset:
        b = Binding(
            name=f"{ds.name}.{cluster.name}",
            dataset=ds.name,
            cluster=cluster.name,
            mode=cluster.mount_mode(),
            replicas=ds.cache.replicas,
            generation=1,
            spec=ds,
        )
        # the binding's TLS as the agent makes it, its PEM left out like the keys
        made = "(made by the agent)"
        tls = trust.DataTLS(ca_cert=made, ca_key=made, cert=made, key=made, hosts=[], not_after=0.0)
        out += render.desired(b, ctx, trust.DataCredentials(keys=[], tls=tls))
    if args.output == "json":
        print(msgspec.json.format(msgspec.json.encode(out), indent=2).decode())
    else:
        import yaml

        print(yaml.safe_dump_all(out, sort_keys=False), end="")
    return 0
