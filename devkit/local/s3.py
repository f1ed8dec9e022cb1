"""A real S3 server on loopback for the demo, the tests and the benchmarks: MinIO, built
from the Go module proxy by testbin.sh and cached with the Kubernetes binaries.

A directory made in MinIO's data path before it starts is a bucket, so nothing beyond
fluidfed's own dependencies is needed: objects are written with OpenDAL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import opendal
from obstore.store import S3Store

from devkit.local import binaries
from devkit.local.cluster import free_port
from devkit.local.processes import stop_process

USER, PASSWORD = "fluidfed", "fluidfed-secret"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": USER, "AWS_SECRET_ACCESS_KEY": PASSWORD}


class S3Server:
    def __init__(
        self,
        data_dir: Path,
        *,
        bucket: str = "datasets",
        port: int = 0,
        host: str = "127.0.0.1",
        certs_dir: Path | None = None,
        ca_file: Path | None = None,
    ) -> None:
        """`host`: loopback, or the host side of a real node's network (what its pods
        reach); never every interface. `certs_dir`: serve https with its public.crt and
        private.key (MinIO's names), issued by the CA in `ca_file`."""
        self.data_dir = Path(data_dir)
        self.bucket = bucket
        self.host = host
        self.port = port or free_port()
        self.certs_dir = certs_dir
        self.ca_file = ca_file
        scheme = "https" if certs_dir is not None else "http"
        self.endpoint = f"{scheme}://{host}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0, *, detach: bool = False) -> S3Server:
        """Start MinIO and wait until it answers; `detach`: in its own session, so it
        outlives the command that started it (`fluidfed local s3 up`)."""
        (self.data_dir / self.bucket).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MINIO_ROOT_USER": USER, "MINIO_ROOT_PASSWORD": PASSWORD}
        self.proc = subprocess.Popen(
            [
                str(binaries.cache_dir() / "minio"),
                "server",
                str(self.data_dir),
                "--quiet",
                "--address",
                f"{self.host}:{self.port}",
                "--console-address",
                f"127.0.0.1:{free_port()}",
                *(["--certs-dir", str(self.certs_dir)] if self.certs_dir is not None else []),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=detach,
        )
        deadline = time.monotonic() + timeout
        trust = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"minio exited with {self.proc.returncode}")
            try:
                ready = f"{self.endpoint}/minio/health/ready"
                with urllib.request.urlopen(ready, timeout=2, context=trust):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"minio did not become ready in {timeout}s")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 10.0)
        self.proc = None

    def operator(self) -> opendal.AsyncOperator:
        return opendal.AsyncOperator(
            "s3",
            bucket=self.bucket,
            endpoint=self.endpoint,
            region="us-east-1",
            access_key_id=USER,
            secret_access_key=PASSWORD,
            root="/",
        )

    def store(self) -> S3Store:
        """obstore's client of the bucket (the benchmarks read with it as the sidecar does)."""
        return S3Store(
            self.bucket,
            config={
                "endpoint": self.endpoint,
                "region": "us-east-1",
                "virtual_hosted_style_request": False,
                "access_key_id": USER,
                "secret_access_key": PASSWORD,
            },
            client_options=(
                {"allow_http": True, "root_certificate": self.ca_file.read_text()}
                if self.ca_file
                else {"allow_http": True}
            ),
        )

    async def upload(self, objects: Mapping[str, bytes], prefix: str = "") -> None:
        op = self.operator()
        sem = asyncio.Semaphore(16)

        async def put(key: str, data: bytes) -> None:
            async with sem:
                await op.write(f"{prefix.strip('/')}/{key}".lstrip("/"), data)

        await asyncio.gather(*(put(k, v) for k, v in objects.items()))

    async def presign(self, key: str, seconds: int = 3600) -> str:
        """A URL that GETs `key` without credentials (the benchmarks' raw loops)."""
        got = await self.operator().presign_read(key, seconds)
        return str(got.url)

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix.strip('/')}"
