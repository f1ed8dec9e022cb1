"""kubectl habits on the fluidfed CLI, as a user types them against a real hub."""

import asyncio
import os
import re
import socket
from pathlib import Path

import aiohttp
import pytest

from devkit.testing import HubProcess, run_cli
from fluidfed import Client
from tests.conftest import CONFIGS
from tests.integration.conftest import cli

pytestmark = pytest.mark.integration


def test_get_describe_apply_as_kubectl_users_type_them(hub: HubProcess, tmp_path: Path) -> None:
    # apply -f DIR/ : every *.toml in it; a cluster's new token is not printed
    conf = tmp_path / "conf"
    conf.mkdir()
    for name in ("edge", "serverless"):
        (conf / f"{name}.toml").write_text((CONFIGS / "clusters" / f"{name}.toml").read_text())
    r = cli(hub, "apply", "-f", str(conf) + "/")
    assert r.returncode == 0, r.stderr
    assert "cluster/edge registered" in r.stdout and "cluster/serverless registered" in r.stdout
    assert "ffc." not in r.stdout + r.stderr  # no cluster token on any stream
    assert "--rotate-token --token-file" in r.stderr

    # apply -f - : standard input
    env = {**os.environ, "FLUIDFED_HUB": hub.url, "FLUIDFED_TOKEN": hub.admin_token}
    r = run_cli(
        "apply", "-f", "-", env=env, input=(CONFIGS / "datasets" / "imagenet.toml").read_text()
    )
    assert r.returncode == 0, r.stderr
    assert "dataset/imagenet applied" in r.stdout

    for kind in ("dataset", "ds", "datasets"):
        r = cli(hub, "get", kind, "imagenet")
        assert r.returncode == 0, r.stderr
        assert "imagenet" in r.stdout and "UFS TOTAL SIZE" in r.stdout
    r = cli(hub, "get", "ds", "-o", "name")
    assert r.stdout.splitlines() == ["dataset/imagenet"]
    r = cli(hub, "get", "cl", "-o", "name")
    assert sorted(r.stdout.splitlines()) == ["cluster/edge", "cluster/serverless"]
    r = cli(hub, "get", "ds", "-o", "wide")
    assert "PER CLUSTER" in r.stdout and "edge=Pending" in r.stdout
    r = cli(hub, "get", "b", "imagenet.edge", "-o", "wide")
    assert "LAST ERROR" in r.stdout and "imagenet.edge" in r.stdout
    r = cli(hub, "describe", "cluster", "edge")
    assert r.returncode == 0, r.stderr
    assert "imagenet.edge" in r.stdout and "fluidfed.io/kind=edge" in r.stdout

    # times in yaml and json are RFC 3339, not epoch floats: edge's agent is heard from
    token_file = tmp_path / "edge.token"
    r = cli(hub, "cluster", "register", str(conf / "edge.toml"), "--rotate-token",
            "--token-file", str(token_file))  # fmt: skip
    assert r.returncode == 0, r.stderr

    async def heartbeat() -> None:
        async with Client(hub.url, token_file.read_text().strip()) as edge:
            assert (await edge.heartbeat("edge")).ready

    asyncio.run(heartbeat())
    r = cli(hub, "get", "clusters", "edge", "-o", "yaml")
    assert re.search(r"since: '?\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r.stdout), r.stdout
    assert not re.search(r"since: \d+\.\d", r.stdout)

    # global flags after the verb
    r = run_cli(
        "get", "bindings", "--hub", hub.url, "--token", hub.admin_token,
        env={k: v for k, v in os.environ.items() if not k.startswith("FLUIDFED_")},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "imagenet.serverless" in r.stdout

    # register with a token file for a known cluster says how to get a token
    r = cli(
        hub, "cluster", "register", str(conf / "edge.toml"), "--token-file", str(tmp_path / "t")
    )
    assert r.returncode == 0 and "add --rotate-token" in r.stdout
    assert not (tmp_path / "t").exists()

    # a load path that leaves the dataset is refused with the field path
    r = cli(hub, "dataset", "load", "imagenet", "--path", "../../etc", "--no-wait")
    assert r.returncode == 2
    assert "path" in r.stderr and "leaves the dataset" in r.stderr


def test_a_body_over_the_limit_says_the_limit_in_units(hub: HubProcess, tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text(
        '[dataset]\nname = "big"\ndescription = "' + "x" * (2 * 2**20) + '"\n'
        '[[dataset.mounts]]\nuri = "s3://b/p"\n'
    )
    r = cli(hub, "apply", "-f", str(big))
    assert r.returncode == 2
    # the CLI refuses it before sending, naming the file, the line and the big field
    assert f"{big}:3: dataset.description: the spec is 2.0MiB, above 256KiB" in r.stderr
    assert "ByteSize" not in r.stderr

    # what reaches the hub anyway is refused by its body limit, said in units
    async def post() -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                hub.url + "/api/v1/datasets",
                data=b"{" + b" " * (2 * 2**20) + b"}",
                headers={"Authorization": f"Bearer {hub.admin_token}"},
            ) as resp,
        ):
            return resp.status, await resp.text()

    status, text = asyncio.run(post())
    assert status == 413 and "the limit is 1MiB;" in text and "ByteSize" not in text


def test_a_token_file_that_cannot_be_written_rotates_nothing(
    hub: HubProcess, tmp_path: Path
) -> None:
    conf = tmp_path / "edge.toml"
    conf.write_text((CONFIGS / "clusters" / "edge.toml").read_text())
    first = tmp_path / "edge.token"
    assert cli(hub, "cluster", "register", str(conf), "--token-file", str(first)).returncode == 0
    token = first.read_text().strip()
    bad = tmp_path / "no-such-dir" / "x.token"
    r = cli(hub, "cluster", "register", str(conf), "--rotate-token", "--token-file", str(bad))
    assert r.returncode == 2, r.stderr
    assert "does not exist; nothing was registered or rotated" in r.stderr
    assert "Traceback" not in r.stderr
    # registered again without a rotation: no token is issued, so where it would go is moot
    r = cli(hub, "cluster", "register", str(conf), "--token-file", str(bad))
    assert r.returncode == 0 and "token unchanged" in r.stdout, r.stderr

    async def still_valid() -> None:
        async with Client(hub.url, token) as edge:
            assert (await edge.heartbeat("edge")).ready

    asyncio.run(still_valid())
    # a loose file that was there is replaced by one its owner alone reads
    first.chmod(0o644)
    r = cli(hub, "cluster", "register", str(conf), "--rotate-token", "--token-file", str(first))
    assert r.returncode == 0, r.stderr
    assert oct(first.stat().st_mode & 0o777) == "0o600" and first.read_text().strip() != token


def test_a_hub_that_cannot_start_says_why_without_a_traceback(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'[hub]\ndata_dir = "{tmp_path / "data"}"\nport = {port}\n')
    try:
        r = run_cli("hub", "serve", "--config", str(cfg), timeout=60)
    finally:
        taken.close()
    assert r.returncode == 1 and "address already in use" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    afile = tmp_path / "a-file"
    afile.write_text("x")
    cfg.write_text(f'[hub]\ndata_dir = "{afile}"\nport = {port}\n')
    r = run_cli("hub", "serve", "--config", str(cfg), timeout=60)
    assert r.returncode == 2 and f"hub.data_dir: {afile} is a file, not a directory" in r.stderr


def test_what_the_hub_refuses_in_a_file_is_placed_in_the_file(
    hub: HubProcess, tmp_path: Path
) -> None:
    f = tmp_path / "two.toml"
    f.write_text(
        '[[dataset]]\nname = "first"\n[[dataset.mounts]]\nuri = "s3://b/p"\n\n'
        '[[dataset]]\nname = "second"\n[[dataset.mounts]]\nuri = "dataset://ghost"\n'
    )
    r = cli(hub, "apply", "-f", str(f))
    assert r.returncode == 2, r.stderr
    # only the hub knows the catalog: its answer, at the second dataset's line 9
    assert f"{f}:9: dataset[1].mounts[0].uri: " in r.stderr and "ghost" in r.stderr, r.stderr
    assert "applied before the hub refused what follows: dataset/first" in r.stderr
    one = tmp_path / "one.toml"
    one.write_text('[dataset]\nname = "third"\n[[dataset.mounts]]\nuri = "dataset://ghost"\n')
    r = cli(hub, "apply", "-f", str(one))
    assert r.returncode == 2 and f"{one}:4: dataset.mounts[0].uri: " in r.stderr, r.stderr
    assert "applied before" not in r.stderr
