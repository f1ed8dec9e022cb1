"""`fluidfed local s3 up|down`: the quick start's S3 server, as a user starts it."""

import os
from pathlib import Path

import opendal
import pytest

from devkit.local.cluster import free_port
from devkit.local.processes import pid_alive
from devkit.testing import eventually, run_cli

pytestmark = pytest.mark.integration


async def test_local_s3_up_serves_the_sample_and_down_leaves_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "FLUIDFED_S3_DIR": str(tmp_path / "s3")}
    port = free_port()
    up = run_cli("local", "s3", "up", "--port", str(port), "--sample", env=env, timeout=180)
    assert up.returncode == 0, up.stderr
    creds_file = tmp_path / "s3" / "credentials.env"
    assert creds_file.stat().st_mode & 0o777 == 0o600
    creds = dict(line.split("=", 1) for line in creds_file.read_text().splitlines())
    assert creds["AWS_SECRET_ACCESS_KEY"] not in up.stdout + up.stderr  # never printed
    pid = int((tmp_path / "s3" / "minio.pid").read_text())
    try:
        op = opendal.AsyncOperator(
            "s3",
            bucket="datasets",
            root="/",
            endpoint=f"http://127.0.0.1:{port}",
            region="us-east-1",
            access_key_id=creds["AWS_ACCESS_KEY_ID"],
            secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
        )
        listed = [e.path async for e in await op.list("imagenet/train/", recursive=True)]
        assert any(p.endswith(".bin") for p in listed), listed
        again = run_cli("local", "s3", "up", "--port", str(port), env=env)
        assert again.returncode == 1 and "already runs" in again.stderr
    finally:
        down = run_cli("local", "s3", "down", env=env)
    assert down.returncode == 0, down.stderr
    await eventually(lambda: not pid_alive(pid), "MinIO to exit", timeout=30)
    assert not (tmp_path / "s3").exists()
