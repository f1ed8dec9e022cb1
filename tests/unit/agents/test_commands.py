"""The agent's and the worker's command lines: safe defaults."""

import argparse
import ssl
import stat
from pathlib import Path

import pytest

from agents import commands
from devkit import testing
from fluidfed import config, pki, tls
from fluidfed.data import credentials
from fluidfed.errors import ConfigError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_a_worker_listens_on_loopback_unless_told() -> None:
    args = parse("worker", "serve", "--config", "w.json")
    assert args.host == "127.0.0.1"
    assert args.credentials == ""  # then the config's credentials_file, else it refuses


def test_credentials_by_hand_are_files_of_mode_0600_that_workers_accept(tmp_path: Path) -> None:
    keys, token = tmp_path / "keys.json", tmp_path / "token.json"
    argv = ["worker", "credentials", "--keys", str(keys), "--token-out", str(token)]
    args = parse(*argv, "--dataset", "d", "--sub-path", "val")
    assert args.run(args) == 0
    for f in (keys, token):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    held = credentials.load(keys)
    claims = credentials.verify(credentials.load(token).token, held.keys)
    assert (claims.role, claims.dataset, claims.sub_path) == ("reader", "d", "val")
    assert args.run(args) == 0 and credentials.load(keys) == held  # kept, not remade


def test_tls_by_hand_keeps_the_ca_and_its_certificate_verifies_for_the_named_hosts(
    tmp_path: Path,
) -> None:
    keys, d = tmp_path / "keys.json", tmp_path / "tls"
    base = ["worker", "credentials", "--keys", str(keys), "--tls-dir", str(d)]
    no_host = parse(*base)
    with pytest.raises(ConfigError, match="--host"):
        no_host.run(no_host)
    args = parse(*base, "--host", "w0.example", "--host", "10.0.0.7")
    assert args.run(args) == 0
    for f in ("ca/ca.key", "tls.key"):
        assert stat.S_IMODE((d / f).stat().st_mode) == 0o600
    assert not (d / "ca.key").exists()  # the CA's key is not among the files handed out
    ca = (d / "ca.crt").read_bytes()
    assert args.run(args) == 0 and (d / "ca.crt").read_bytes() == ca  # the CA is kept
    served = tls.Served(str(d / "tls.crt"), str(d / "tls.key"))
    client = tls.trusting(ca.decode())
    for host in ("w0.example", "10.0.0.7"):
        testing.handshake(served.context, client, host)
    with pytest.raises(ssl.SSLCertVerificationError):
        testing.handshake(served.context, client, "w1.example")


def test_a_worker_refuses_a_config_that_would_fail_before_it_serves(tmp_path: Path) -> None:
    """Checked as `fluidfed validate` checks it (it was not, at start): a fetch concurrency
    of 0, a NaN report interval, a port out of range, said with the file."""
    cfg = tmp_path / "worker.toml"
    cfg.write_text(
        'dataset = "d"\nfetch_concurrency = 0\nreport_interval = nan\n'
        'credentials_file = "keys.json"\n[[mounts]]\nuri = "s3://b/p"\n'
    )
    args = parse("worker", "serve", "--config", str(cfg), "--port", "70000")
    with pytest.raises(ConfigError) as info:
        args.run(args)
    got = {p.path: p for p in info.value.problems}
    assert set(got) == {"fetch_concurrency", "report_interval", "--port"}
    assert got["fetch_concurrency"].file == str(cfg)


def test_a_worker_not_named_among_its_peers_says_so() -> None:
    """Run with --host 0.0.0.0 (or localhost) and no --advertise, a worker's URL is not
    one its peers name: it owns no block, and a warm-up pulled nothing and said done."""
    from agents.worker import server
    from fluidfed.data.layout import Peers, WorkerConfig
    from fluidfed.models import Mount

    cfg = WorkerConfig(
        dataset="d",
        mounts=[Mount(uri="s3://b/p")],
        workers=Peers(endpoints=["http://127.0.0.1:7070/"]),
    )
    said = server.not_among_peers("http://0.0.0.0:7070", cfg)
    assert "not among its peers" in said and "--advertise" in said
    assert server.not_among_peers("http://127.0.0.1:7070", cfg) == ""
    alone = WorkerConfig(dataset="d", mounts=[Mount(uri="s3://b/p")])
    assert server.not_among_peers("http://0.0.0.0:7070", alone) == ""  # (no peers listed)
    assert server._in_url("::1") == "[::1]" and server._in_url("127.0.0.1") == "127.0.0.1"


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.7", "::"])
def test_a_worker_serves_plain_http_beyond_loopback_only_when_told(
    tmp_path: Path, host: str
) -> None:
    """Its readers' tokens and the blocks would cross the network in clear; on loopback,
    or with plain_http where the network encrypts by other means, it goes on."""
    cfg = tmp_path / "worker.toml"
    body = 'dataset = "d"\ncredentials_file = "keys.json"\n[[mounts]]\nuri = "s3://b/p"\n'
    cfg.write_text(body)
    # (--port out of range: a second problem, said with it, so no test here ever serves)
    args = parse("worker", "serve", "--config", str(cfg), "--host", host, "--port", "70000")
    with pytest.raises(ConfigError) as info:
        args.run(args)
    got = {p.path: p for p in info.value.problems}
    assert set(got) == {"plain_http", "--port"}
    assert f"plain HTTP on {host}" in got["plain_http"].message
    assert got["plain_http"].file == str(cfg)
    for told in ("plain_http = true\n", ""):
        cfg.write_text(told + body)
        h = host if told else "127.0.0.1"
        args = parse("worker", "serve", "--config", str(cfg), "--host", h, "--port", "70000")
        with pytest.raises(ConfigError) as info:
            args.run(args)
        assert {p.path for p in info.value.problems} == {"--port"}


def test_an_agent_whose_cluster_was_registered_unable_to_mount_still_loads(
    tmp_path: Path,
) -> None:
    """The hub refuses to register a cluster that could mount no dataset now, but one it
    registered before keeps its agent (warned when it runs), to keep up and retire what its
    bindings made; a file `fluidfed validate` or `cluster register` reads is refused."""
    (tmp_path / "cluster.toml").write_text(
        '[cluster]\nname = "old"\nkind = "edge"\n[cluster.kubernetes]\nin_cluster = true\n'
    )
    (tmp_path / "agent.toml").write_text(
        '[agent]\ncluster_file = "cluster.toml"\nhub = "https://127.0.0.1:8470"\n'
    )
    _, cluster, _, _ = commands.load(str(tmp_path / "agent.toml"))
    assert cluster.name == "old" and not cluster.capabilities.privileged
    with pytest.raises(ConfigError, match="could mount no dataset"):
        config.load(tmp_path / "cluster.toml")


def test_the_webhooks_client_ca_is_found_beside_the_agent_file_and_read_at_load(
    tmp_path: Path,
) -> None:
    """webhook_client_ca_file, like every path in the agent file, is relative to it, and
    a missing or unreadable one is an error when the file is loaded, with its field, not
    once the agent runs."""
    (tmp_path / "cluster.toml").write_text(
        '[cluster]\nname = "c"\n[cluster.capabilities]\nprivileged = true\n'
        "[cluster.kubernetes]\nin_cluster = true\n"
    )
    agent = tmp_path / "agent.toml"

    def load(ca: str) -> str:
        agent.write_text(
            '[agent]\ncluster_file = "cluster.toml"\nhub = "https://127.0.0.1:8470"\n'
            f'webhook_client_ca_file = "{ca}"\nwebhook_client_name = "apiserver"\n'
        )
        return commands.load(str(agent))[0].webhook_client_ca_file

    (tmp_path / "ca.crt").write_bytes(pki.new_ca("the API server's client CA").cert_pem)
    assert load("ca.crt") == str(tmp_path / "ca.crt")
    with pytest.raises(ConfigError, match="does not exist") as info:
        load("nowhere.crt")
    assert str(info.value.problems[0]).startswith(f"{agent}: agent.webhook_client_ca_file")
    (tmp_path / "bad.crt").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="holds no CA certificate"):
        load("bad.crt")
