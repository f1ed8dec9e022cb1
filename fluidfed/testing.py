"""Helpers shipped for tests, benchmarks and the demo: run a real hub as a child process."""

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
