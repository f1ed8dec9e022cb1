"""A real etcd cluster on loopback for the highly available hub: three members (etcd
v3.6, built by testbin.sh and cached with the Kubernetes binaries), each with its data
under one directory. `fluidfed local etcd up|down` and the tests' fixture run it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devkit.local import binaries, paths
from devkit.local.cluster import free_port
from devkit.local.processes import pid_alive, stop_pids, stop_process
from fluidfed import pki
from fluidfed.errors import LocalClusterError

STATE = "members.json"  # the members of a detached cluster: names, ports, pids
# a restored snapshot's revision jumps by this much (etcd's advice for Kubernetes)
BUMP_REVISION = 1_000_000_000


def default_dir() -> Path:
    return paths.cache_dir("etcd", "FLUIDFED_ETCD_DIR")


@dataclass(frozen=True, slots=True)
class ClientFiles:
    """What a client of a TLS etcd needs: the members' CA, its certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    client_port: int
    peer_port: int
    tls: bool = False

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


class EtcdCluster:
    """`size` etcd members on 127.0.0.1; `store_url` is what the hub's `--store` takes.
    With `tls`, clients reach them over TLS with a certificate of the members' CA (made in
    `<base_dir>/tls`; `client` has the hub's files)."""

    def __init__(
        self,
        base_dir: Path,
        *,
        size: int = 3,
        client_ports: list[int] | None = None,
        tls: bool = False,
    ) -> None:
        self.base_dir = Path(base_dir)
        ports = client_ports or [free_port() for _ in range(size)]
        self.members = [Member(f"m{i}", ports[i], free_port(), tls) for i in range(size)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.client: ClientFiles | None = None
        self._server: ClientFiles | None = None
        self._ca: pki.KeyPair | None = None
        if tls:
            self._server, self.client = self._make_certificates()

    def _make_certificates(self) -> tuple[ClientFiles, ClientFiles]:
        d = self.base_dir / "tls"
        d.mkdir(parents=True, exist_ok=True)
        ca = self._ca = pki.new_ca("fluidfed local etcd CA")
        ca_file = pki.write(d / "ca.crt", ca.cert_pem)
        server = pki.issue(ca, "etcd", hosts=("127.0.0.1", "localhost"), server=True, client=True)
        hub = pki.issue(ca, "fluidfed-hub", client=True)
        return (
            ClientFiles(
                ca_file,
                pki.write(d / "server.crt", server.cert_pem),
                pki.write(d / "server.key", server.key_pem, private=True),
            ),
            ClientFiles(
                ca_file,
                pki.write(d / "hub.crt", hub.cert_pem),
                pki.write(d / "hub.key", hub.key_pem, private=True),
            ),
        )

    def rotate_ca(self) -> ClientFiles:
        """A new CA for the members and their clients (as an operator rotates etcd's):
        new files in place of the members' and the hub's (`client`), each replaced whole;
        the members take them at their next start."""
        assert self._server is not None and self.client is not None, "a TLS cluster"
        ca = self._ca = pki.new_ca("fluidfed local etcd CA (rotated)")
        server = pki.issue(ca, "etcd", hosts=("127.0.0.1", "localhost"), server=True, client=True)
        hub = pki.issue(ca, "fluidfed-hub", client=True)
        _replace(
            (self._server.ca_file, ca.cert_pem),
            (self._server.cert_file, server.cert_pem),
            (self._server.key_file, server.key_pem),
            (self.client.cert_file, hub.cert_pem),
            (self.client.key_file, hub.key_pem),
        )
        return self.client

    def renew_client(self, directory: Path) -> ClientFiles:
        """A new client certificate of the members' CA (as cert-manager renews the
        hub's) with that CA, in `directory` as `ca.crt`, `hub.crt` and `hub.key`, each
        replaced whole."""
        assert self._ca is not None, "a TLS cluster"
        hub = pki.issue(self._ca, "fluidfed-hub", client=True)
        files = ClientFiles(directory / "ca.crt", directory / "hub.crt", directory / "hub.key")
        _replace(
            (files.ca_file, self._ca.cert_pem),
            (files.cert_file, hub.cert_pem),
            (files.key_file, hub.key_pem),
        )
        return files

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{m.client_port}" for m in self.members]

    @property
    def store_url(self) -> str:
        return "etcd://" + ",".join(self.endpoints)

    def _argv(self, m: Member) -> list[str]:
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        return [
            str(binaries.cache_dir() / "etcd"),
            f"--name={m.name}",
            f"--data-dir={self.base_dir / m.name}",
            f"--listen-client-urls={m.client_url}",
            f"--advertise-client-urls={m.client_url}",
            f"--listen-peer-urls={m.peer_url}",
            f"--initial-advertise-peer-urls={m.peer_url}",
            f"--initial-cluster={initial}",
            "--initial-cluster-token=fluidfed-local",
            "--initial-cluster-state=new",
            # loopback: short heartbeats, so a stopped member is noticed within a second
            "--heartbeat-interval=100",
            "--election-timeout=1000",
            "--log-level=warn",
            # a hub change is one transaction: a dataset placed on N clusters is N + 2 ops
            # (its bindings, its record, the revision key), so 10,000 did not fit in 10,000
            "--max-txn-ops=100000",
            "--max-request-bytes=33554432",
            *self._tls_flags(),
        ]

    def _tls_flags(self) -> list[str]:
        if self._server is None:
            return []
        return [
            "--client-cert-auth",
            f"--trusted-ca-file={self._server.ca_file}",
            f"--cert-file={self._server.cert_file}",
            f"--key-file={self._server.key_file}",
        ]

    def start(self, timeout: float = 60.0, *, detach: bool = False) -> EtcdCluster:
        """Start every member and wait until each is healthy; `detach`: in their own
        session, so they outlive the command that started them (`fluidfed local etcd up`)."""
        if shutil.which(str(binaries.cache_dir() / "etcd")) is None:
            raise LocalClusterError(
                f"no etcd binary in {binaries.cache_dir()}: run `fluidfed local up NAME` once "
                "(it builds the local-cluster binaries), or set FLUIDFED_TESTBIN"
            )
        self.base_dir.mkdir(parents=True, exist_ok=True)
        try:  # a member that fails to start or to turn healthy stops those already started
            for m in self.members:
                self.start_member(m.name, detach=detach)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        if detach:
            state = {
                "members": [{**vars_of(m), "pid": self.procs[m.name].pid} for m in self.members]
            }
            (self.base_dir / STATE).write_text(json.dumps(state))
        return self

    def start_member(self, name: str, *, detach: bool = False) -> None:
        m = self.member(name)
        with open(self.base_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                self._argv(m),
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=detach,
            )

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise LocalClusterError(
            f"no etcd member {name}: the members are m0..m{len(self.members) - 1}"
        )

    def stop_member(self, name: str, sig: int = signal.SIGKILL) -> None:
        stop_process(self.procs.pop(name, None), sig, 10.0)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = [m for m in self.members if m.name in self.procs]
        while pending:
            m = pending[0]
            proc = self.procs[m.name]
            if proc.poll() is not None:
                raise LocalClusterError(
                    f"etcd member {m.name} exited with {proc.returncode}; its log: "
                    f"{self.base_dir / (m.name + '.log')}"
                )
            if _healthy(m, self._server):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise LocalClusterError(
                    f"etcd member {m.name} ({m.client_url}) not healthy within {timeout:.0f}s; "
                    f"its log: {self.base_dir / (m.name + '.log')}"
                )
            time.sleep(0.1)

    def restore(self, snapshot: Path, timeout: float = 60.0) -> None:
        """Put an etcd snapshot (`fluidfed hub backup` on etcd, `etcdctl snapshot save`)
        back as etcd's documentation says: every member stopped, each one's data directory
        made anew by `etcdutl snapshot restore`, the members started on them. The revision
        jumps by BUMP_REVISION and what came before is compacted, as etcd advises where
        clients watch."""
        etcdutl = binaries.cache_dir() / "etcdutl"
        if not etcdutl.is_file():
            raise LocalClusterError(
                f"no etcdutl in {binaries.cache_dir()}: run devkit/local/testbin.sh once "
                "(it builds etcdutl beside etcd), or set FLUIDFED_TESTBIN"
            )
        for name in list(self.procs):
            self.stop_member(name, signal.SIGTERM)
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        for m in self.members:
            data = self.base_dir / m.name
            shutil.rmtree(data, ignore_errors=True)
            done = subprocess.run(
                [
                    str(etcdutl),
                    "snapshot",
                    "restore",
                    str(snapshot),
                    f"--name={m.name}",
                    f"--initial-cluster={initial}",
                    "--initial-cluster-token=fluidfed-local",
                    f"--initial-advertise-peer-urls={m.peer_url}",
                    f"--data-dir={data}",
                    # past any revision a client saw, every older one compacted: watchers
                    # (the hub, and through it the agents) are told to list again, rather
                    # than resuming at a revision that now names other changes
                    f"--bump-revision={BUMP_REVISION}",
                    "--mark-compacted",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise LocalClusterError(
                    f"etcdutl snapshot restore {snapshot} for member {m.name} failed: "
                    f"{(done.stderr or done.stdout).strip()[-1000:]}"
                )
        for m in self.members:
            self.start_member(m.name)
        self.wait_healthy(timeout)

    def stop(self) -> None:
        for name in list(self.procs):
            self.stop_member(name, signal.SIGTERM)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _replace(*files: tuple[Path, bytes]) -> None:
    """Write each file whole in place of the one there (as kubelet updates a Secret
    volume): a reader sees the old bytes or the new, never part; keys owner-only."""
    for path, pem in files:
        part = path.with_name(f".{path.name}.new")
        pki.write(part, pem, private=path.suffix == ".key")
        os.replace(part, path)


def vars_of(m: Member) -> dict[str, object]:
    return {"name": m.name, "client_port": m.client_port, "peer_port": m.peer_port, "tls": m.tls}


def _healthy(m: Member, tls: ClientFiles | None) -> bool:
    ctx = None
    if tls is not None:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file))
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    try:
        with urllib.request.urlopen(m.client_url + "/health", timeout=2, context=ctx) as r:
            return bool(json.loads(r.read()).get("health") == "true")
    except (urllib.error.URLError, OSError, ValueError):
        return False


def up(base_dir: Path, client_ports: list[int]) -> EtcdCluster:
    """Start a detached cluster in `base_dir` (refused if one runs there)."""
    running = running_pids(base_dir)
    if running:
        raise LocalClusterError(
            f"a local etcd cluster already runs from {base_dir} (pids "
            f"{', '.join(map(str, running))}): `fluidfed local etcd down` first"
        )
    shutil.rmtree(base_dir, ignore_errors=True)
    return EtcdCluster(base_dir, size=len(client_ports), client_ports=client_ports).start(
        detach=True
    )


def running_pids(base_dir: Path) -> list[int]:
    state = base_dir / STATE
    if not state.exists():
        return []
    members = json.loads(state.read_text()).get("members", [])
    return [int(m["pid"]) for m in members if pid_alive(int(m["pid"]))]


def down(base_dir: Path, timeout: float = 10.0) -> list[int]:
    """Stop a detached cluster and remove its data; the pids that were stopped."""
    pids = running_pids(base_dir)
    stop_pids(pids, timeout)
    shutil.rmtree(base_dir, ignore_errors=True)
    return pids
