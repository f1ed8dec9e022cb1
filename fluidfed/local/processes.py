"""Real fluidfed daemons as child processes: the hub and agents, for the demo and the tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

_READY = re.compile(r"listening on (http://\S+)")


class HubProcess:
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
        self.url = ""

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def start(self, timeout: float = 30.0) -> HubProcess:
        env = {**os.environ, **(self.env or {})}
        env.pop("FLUIDFED_ADMIN_TOKEN", None)
        self.proc = subprocess.Popen(
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
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"hub exited with {self.proc.returncode}: {err}")
            m = _READY.search(line)
            if m:
                self.url = m.group(1)
                # keep the port across restarts, as clients hold the URL
                self.port = int(self.url.rsplit(":", 1)[1])
                return self
        self.stop()
        raise RuntimeError(f"hub did not become ready in {timeout}s; last line: {line!r}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        self.proc = None
        return code

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> HubProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AgentProcess:
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
    ) -> None:
        self.dir = Path(workdir) / f"agent-{cluster_name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = cluster_name
        self.bootstrap_token = bootstrap_token
        self.token = token
        self.hub_url = hub_url
        caps = "".join(f"{k} = {str(v).lower()}\n" for k, v in (capabilities or {}).items())
        lbls = ", ".join(f'"{k}" = "{v}"' for k, v in (labels or {}).items())
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
        settings = {"heartbeat_interval": '"1s"', "status_interval": '"500ms"', **extra}
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

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
