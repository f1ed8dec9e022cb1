"""Real fluidfed daemons as child processes: the hub and agents, for the demo and the tests."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from fluidfed.data import credentials

_READY = re.compile(r"listening on (https?://\S+)")

# The key of the data-path processes that are given none (one per test run): their workers
# share it and their sidecars get reader tokens signed by it, as one binding's would be.
LOCAL_KEY = credentials.new_key()


def local_credentials(
    keys: Sequence[bytes] = (LOCAL_KEY,), sign: int = 0
) -> credentials.CredentialFile:
    """A cache worker's credential file holding `keys`."""
    return credentials.CredentialFile(keys=[credentials.encode_key(k) for k in keys], sign=sign)


def local_token(
    dataset: str,
    role: credentials.Role = "reader",
    *,
    sub_path: str = "",
    namespace: str = "",
    key: bytes = LOCAL_KEY,
) -> str:
    """A token of a local binding, as the agent would hand it out."""
    claims = credentials.Claims(role=role, dataset=dataset, namespace=namespace, sub_path=sub_path)
    return credentials.sign(claims, key)


class Drain:
    """Reads one of a child's pipes on a thread until it closes, so that a chatty child
    never blocks on a full pipe; keeps its last lines for error messages and notes the
    first line that matches `ready`."""

    def __init__(
        self, stream: IO[str], *, ready: re.Pattern[str] | None = None, keep: int = 200
    ) -> None:
        self.ready = ready
        self.match: re.Match[str] | None = None
        self.closed = False
        self._lines: deque[str] = deque(maxlen=keep)
        self._changed = threading.Condition()
        self._thread = threading.Thread(
            target=self._read, args=(stream,), name="drain", daemon=True
        )
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                with self._changed:
                    self._lines.append(line)
                    if self.ready is not None and self.match is None:
                        self.match = self.ready.search(line)
                        if self.match is not None:
                            self._changed.notify_all()
        except (OSError, ValueError):  # closed under the reader once the child was stopped
            pass
        finally:
            with self._changed:
                self.closed = True
                self._changed.notify_all()

    def wait_ready(self, timeout: float) -> re.Match[str] | None:
        """The ready line's match, once it came; None if the pipe closed or `timeout`
        passed first."""
        with self._changed:
            self._changed.wait_for(lambda: self.match is not None or self.closed, timeout)
            return self.match

    def wait_closed(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return self.closed

    def tail(self, lines: int = 40) -> str:
        with self._changed:
            return "".join(list(self._lines)[-lines:])


def ready_line(
    proc: subprocess.Popen[str],
    pattern: re.Pattern[str],
    what: str,
    timeout: float,
    *,
    stderr: Drain | None = None,
) -> re.Match[str]:
    """Wait until the daemon prints its ready line, however silent it stays: at most
    `timeout` seconds. Its stdout is drained for the rest of its life. A child that exits
    or misses the deadline is killed, and the error shows its last output (and that of
    `stderr`, where its stderr is drained too)."""
    assert proc.stdout is not None
    out = Drain(proc.stdout, ready=pattern)
    m = out.wait_ready(timeout)
    if m is not None:
        return m
    if out.closed:  # its stdout ended: it is exiting, give it a moment to be reaped
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)
    exited = proc.poll() is not None
    if not exited:
        proc.kill()
    proc.wait()
    for drain in (out, stderr):
        if drain is not None:
            drain.wait_closed(5.0)  # what it wrote before it died, for the message
    stop_process(proc, signal.SIGKILL, 10.0)
    said = out.tail() + (stderr.tail() if stderr is not None else "")
    why = f"exited with {proc.returncode}" if exited else f"did not become ready in {timeout}s"
    raise RuntimeError(f"{what} {why}; its last output:\n{said[-3000:]}")


def launch(
    argv: Sequence[str],
    pattern: re.Pattern[str],
    what: str,
    timeout: float,
    *,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[str], re.Match[str], Drain]:
    """Start a daemon with both pipes drained for its whole life; it, its ready line's
    match, and its stderr (whose last lines go into error messages)."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stderr is not None
    errors = Drain(proc.stderr)
    return proc, ready_line(proc, pattern, what, timeout, stderr=errors), errors


class _Child:
    """A daemon run as a child process: `stop` signals it and waits (SIGKILL after
    `stop_timeout`), and forgets it."""

    proc: subprocess.Popen[Any] | None = None
    stop_timeout = 10.0

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int:
        code = stop_process(self.proc, sig, self.stop_timeout if timeout is None else timeout)
        self.proc = None
        return code


class HubProcess(_Child):
    """`fluidfed hub serve` on a loopback port, with its own data directory.

    The process is the real daemon; `url` and `admin_token` are read from what it prints
    and writes, as a user would.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.extra = extra or []
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.errors: Drain | None = None  # its stderr, drained: the last lines
        self.url = ""

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    @property
    def ca_file(self) -> str:
        """The CA of a hub started with --self-signed (clients verify it); "" otherwise."""
        return str(self.data_dir / "tls" / "ca.crt") if "--self-signed" in self.extra else ""

    def start(self, timeout: float = 30.0) -> HubProcess:
        env = {**os.environ, **(self.env or {})}
        env.pop("FLUIDFED_ADMIN_TOKEN", None)
        self.proc, ready, self.errors = launch(
            [
                sys.executable,
                "-m",
                "fluidfed.cli.main",
                "hub",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self.extra,
            ],
            _READY,
            "hub",
            timeout,
            env=env,
        )
        self.url = ready.group(1)
        # keep the port across restarts, as clients hold the URL
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> HubProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AgentProcess(_Child):
    """`fluidfed agent run` for one local cluster, configured from files it writes."""

    def __init__(
        self,
        workdir: Path,
        cluster_name: str,
        kind: str,
        kubeconfig: str,
        hub_url: str,
        bootstrap_token: str,
        *,
        labels: dict[str, str] | None = None,
        capabilities: dict[str, bool] | None = None,
        cluster_toml: str | None = None,
        token: str = "",
        ca_file: str = "",
    ) -> None:
        self.dir = Path(workdir) / f"agent-{cluster_name}"
        self.ca_file = ca_file  # the hub's CA, for an https hub
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = cluster_name
        self.bootstrap_token = bootstrap_token
        self.token = token
        self.hub_url = hub_url
        # (by default a platform that admits the FUSE sidecar: the hub refuses a cluster
        # that can mount nothing)
        given = {"privileged": True} if capabilities is None else capabilities
        caps = "".join(f"{k} = {str(v).lower()}\n" for k, v in given.items())
        lbls = ", ".join(f'"{k}" = "{v}"' for k, v in (labels or {}).items())
        self._extra: dict[str, str] = {}  # settings given to write_config so far
        if cluster_toml is not None:
            (self.dir / "cluster.toml").write_text(cluster_toml)
        else:
            self._write_cluster(cluster_name, kind, lbls, caps, kubeconfig)
        self.write_config()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "agent.log"

    def _write_cluster(self, name: str, kind: str, lbls: str, caps: str, kubeconfig: str) -> None:
        cluster_name = name
        (self.dir / "cluster.toml").write_text(
            f'[cluster]\nname = "{cluster_name}"\nkind = "{kind}"\nlabels = {{ {lbls} }}\n'
            f"[cluster.capabilities]\n{caps}"
            f'[cluster.kubernetes]\nkubeconfig = "{kubeconfig}"\n'
        )

    def write_config(self, **extra: str) -> None:
        """agent.toml with `extra` settings (TOML values) on top of those given before."""
        self._extra = {**self._extra, **extra}
        settings = {"heartbeat_interval": '"1s"', "status_interval": '"500ms"', **self._extra}
        if self.ca_file:
            settings.setdefault("ca_file", json.dumps(self.ca_file))
        body = "".join(f"{k} = {v}\n" for k, v in settings.items())
        (self.dir / "agent.toml").write_text(
            f'[agent]\ncluster_file = "cluster.toml"\nhub = "{self.hub_url}"\n'
            f'state_dir = "state"\n{body}'
        )

    def start(self) -> AgentProcess:
        env = {**os.environ, "FLUIDFED_BOOTSTRAP_TOKEN": self.bootstrap_token}
        if self.token:
            env["FLUIDFED_AGENT_TOKEN"] = self.token
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fluidfed.cli.main",
                    "agent",
                    "run",
                    "--config",
                    str(self.dir / "agent.toml"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def api_ca_file(self) -> Path:
        """The CA of its API's certificate, once it serves HTTPS (beyond loopback)."""
        return self.dir / "state" / "api" / "ca.crt"


def _spawn(
    log: Path, pattern: str, what: str, timeout: float, *args: str, wrap: Sequence[str] = ()
) -> tuple[subprocess.Popen[str], re.Match[str]]:
    """`fluidfed ARGS...` with stderr to `log`, once it prints its ready line; `wrap` is
    a command that execs the rest of its arguments (unshare, ...)."""
    with open(log, "a") as err:
        proc = subprocess.Popen(
            [*wrap, sys.executable, "-m", "fluidfed.cli.main", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    return proc, ready_line(proc, re.compile(pattern), what, timeout)


# what a pod's config names that a process standing in for the pod does not have: the
# binding's TLS files from its Secret, for the workers' Service names, which do not resolve
# outside the cluster
POD_TLS_FIELDS = ("tls_cert_file", "tls_key_file", "ca_file")


def on_loopback(config: dict[str, Any], urls: list[str]) -> dict[str, Any]:
    """A worker's or sidecar's config as the agent wrote it for pods, for a local process
    on loopback: the workers at `urls` over plain HTTP (the data path over TLS in pods is
    tested on the real node, with the names the certificates are for)."""
    out = {k: v for k, v in config.items() if k not in POD_TLS_FIELDS}
    out["workers"] = {"endpoints": urls}
    return out


class WorkerProcess(_Child):
    """`fluidfed worker serve` on a loopback port, with its config file and cache directory."""

    stop_timeout = 60.0  # the hand-off of its blocks on SIGTERM

    def __init__(
        self,
        workdir: Path,
        config: dict[str, object],
        port: int,
        wrap: Sequence[str] = (),
        *,
        creds: credentials.CredentialFile | None = None,
        secure: bool = False,
    ) -> None:
        self.wrap = tuple(wrap)  # a command that execs the worker (a mount namespace, ...)
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        # `secure`: its config gives it a certificate, it serves HTTPS
        self.url = f"{'https' if secure else 'http'}://127.0.0.1:{port}"
        self.config_path = self.dir / "worker.json"
        self.dataset = ""
        self.write_config(config)
        # the binding's keys, as the agent's Secret gives them to a worker pod
        self.credentials_path = self.dir / "credentials.json"
        self.write_credentials(creds or local_credentials())
        self.proc: subprocess.Popen[str] | None = None
        self.log = self.dir / "worker.log"

    def write_credentials(self, creds: credentials.CredentialFile) -> None:
        """(Re)write its keys (0600); it takes them on SIGHUP or within 5 s."""
        credentials.write_file(self.credentials_path, creds)

    def write_config(self, config: dict[str, object]) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config))
        os.replace(tmp, self.config_path)
        self.dataset = str(config.get("dataset", ""))

    def status(self) -> dict[str, Any]:
        """Its `GET /v1/status`, asked as its agent (a plain-HTTP worker)."""
        token = local_token(self.dataset, "agent")
        req = urllib.request.Request(
            f"{self.url}/v1/status", headers=credentials.authorization(token)
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            got: dict[str, Any] = json.load(r)
        return got

    def wait_written(self, timeout: float = 60.0) -> None:
        """Until every block it has fetched is in its file (`writing` 0): a file written
        after a bench read the tier into the page cache would drop those pages again (a
        worker writes blocks of 1 MiB or more with O_DIRECT)."""
        deadline = time.monotonic() + timeout
        while (left := self.status()["writing"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            raise TimeoutError(
                f"worker {self.url}: {left} blocks still unwritten after {timeout:g}s"
            )

    def start(self, timeout: float = 30.0) -> WorkerProcess:
        self.proc, _ = _spawn(
            self.log, r"listening on", "worker", timeout,
            "worker", "serve", "--config", str(self.config_path),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--advertise", self.url, "--cache-dir", str(self.dir / "cache"),
            "--credentials", str(self.credentials_path),
            wrap=self.wrap,
        )  # fmt: skip
        return self

    def reload(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def close(self) -> None:
        """Stop it however it is (the hand-off is skipped)."""
        self.stop(signal.SIGKILL)


class SidecarProcess(_Child):
    """`fluidfed sidecar mount` as a local process: the FUSE mount a pod's sidecar makes."""

    stop_timeout = 30.0

    def __init__(
        self,
        workdir: Path,
        config: dict[str, object],
        mountpoint: Path,
        *,
        token: str | None = None,
    ) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mountpoint = Path(mountpoint)
        self.config_path = self.dir / "sidecar.json"
        self.config_path.write_text(json.dumps(config))
        # its reader token, as the agent's Secret gives it to the sidecar container; by
        # default one of the local binding for the config's dataset and sub-path
        self.credentials_path = self.dir / "credentials.json"
        if token is None:
            token = local_token(
                str(config["dataset"]),
                sub_path=str(config.get("sub_path", "")),
                namespace=str(config.get("namespace", "")),
            )
        self.write_token(token)
        self.ready_file = self.dir / "ready"
        self.proc: subprocess.Popen[str] | None = None
        self.status_url = ""
        self.log = self.dir / "sidecar.log"

    def write_token(self, token: str) -> None:
        """(Re)write its token (0600); it takes it on SIGHUP or within 5 s."""
        credentials.write_file(self.credentials_path, credentials.CredentialFile(token=token))

    def reload(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def start(self, timeout: float = 60.0, extra: tuple[str, ...] = ()) -> SidecarProcess:
        self.proc, m = _spawn(
            self.log, r"status (http://\S+)\)", "sidecar", timeout,
            "sidecar", "mount", "--config", str(self.config_path),
            "--mountpoint", str(self.mountpoint), "--ready-file", str(self.ready_file),
            "--status-addr", "127.0.0.1:0", "--cache-dir", str(self.dir / "cache"),
            "--credentials", str(self.credentials_path), *extra,
        )  # fmt: skip
        self.status_url = m.group(1)
        return self

    def authorization(self) -> dict[str, str]:
        """The header its status server asks for: its own token."""
        return credentials.authorization(credentials.load(self.credentials_path).token)

    def status(self) -> dict[str, Any]:
        # (a token just rewritten is the sidecar's within 5 s, or at once on SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            req = urllib.request.Request(
                f"{self.status_url}/v1/status", headers=self.authorization()
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    got: dict[str, Any] = json.load(r)
                return got
            except urllib.error.HTTPError as err:
                if err.code != 401 or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def close(self) -> None:
        """Stop it however it is, and detach a mount a killed sidecar left behind."""
        self.stop(signal.SIGKILL)
        force_unmount(self.mountpoint)


def stop_pids(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM each of `pids`, then wait until all have exited, SIGKILL for those still
    there after `timeout` seconds: a caller removing their files must not do so while
    they can still write them (MinIO writes its own at shutdown)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # (not ours: left)
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _running(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    while any(_running(p) for p in pids) and time.monotonic() < deadline + 5:
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """`pid_alive`, a child of ours that exited reaped first (a zombie answers signal 0)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether a process (not necessarily our child) still exists: signal 0 probes it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_mounted(mountpoint: Path) -> bool:
    target = os.path.abspath(mountpoint)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 1)


def force_unmount(mountpoint: Path) -> None:
    """Detach a mount a killed sidecar left behind (no-op when nothing is mounted)."""
    if is_mounted(mountpoint):
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)


def stop_process(proc: subprocess.Popen[Any] | None, sig: int, timeout: float) -> int:
    """Signal a child, wait up to `timeout`, then kill it; its exit code (0 if none)."""
    if proc is None:
        return 0
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()
    return proc.returncode
