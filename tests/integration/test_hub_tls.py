"""The hub over TLS, as a user and an agent meet it: HTTPS with a self-signed CA or the
operator's certificate, clients that always verify, and mutual TLS binding a cluster's
certificate to its name."""

import datetime as dt
import os
import re
import signal
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest
import trustme

from devkit import testing
from devkit.testing import HubProcess, run_cli
from fluidfed import Client, ConfigError, Forbidden, HubUnreachable
from tests.integration.conftest import cli

pytestmark = pytest.mark.integration


def _cli_env(hub: HubProcess, **extra: str) -> dict[str, str]:
    env = {**os.environ, "FLUIDFED_HUB": hub.url, "FLUIDFED_TOKEN": hub.admin_token}
    env.pop("FLUIDFED_CA_FILE", None)
    return {**env, **extra}


def test_self_signed_hub_serves_https_and_clients_verify(tmp_path: Path) -> None:
    with HubProcess(tmp_path / "hub", extra=["--self-signed"]) as hub:
        assert hub.url.startswith("https://127.0.0.1:")
        ca = tmp_path / "hub" / "tls" / "ca.crt"
        assert ca.exists()

        # the CA given by flag, by variable: the CLI talks to the hub
        ok = run_cli("--cacert", str(ca), "get", "clusters", env=_cli_env(hub))
        assert ok.returncode == 0, ok.stderr
        ok = run_cli("get", "clusters", env=_cli_env(hub, FLUIDFED_CA_FILE=str(ca)))
        assert ok.returncode == 0, ok.stderr

        # no CA: the system's roots do not know this hub, and nothing turns that off
        refused = run_cli("get", "clusters", env=_cli_env(hub))
        assert refused.returncode == 2
        assert "does not trust" in refused.stderr and "--cacert" in refused.stderr
        assert hub.admin_token not in refused.stderr + refused.stdout


async def test_a_hub_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    ours, theirs = trustme.CA(), trustme.CA()
    server = theirs.issue_cert("127.0.0.1")
    cert, key = tmp_path / "hub.crt", tmp_path / "hub.key"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca = tmp_path / "ours.crt"
    ours.cert_pem.write_to_path(str(ca))
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'[hub]\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n')

    with HubProcess(tmp_path / "hub", extra=["--config", str(cfg)]) as hub:
        assert hub.url.startswith("https://")
        async with Client(hub.url, hub.admin_token, ca_file=str(ca)) as c:
            with pytest.raises(ConfigError, match="does not trust"):
                await c.list_clusters()
        refused = run_cli("--cacert", str(ca), "get", "clusters", env=_cli_env(hub))
        assert refused.returncode == 2, refused.stderr

        # the right CA: the SDK works, also with a session of the caller's own
        theirs_ca = tmp_path / "theirs.crt"
        theirs.cert_pem.write_to_path(str(theirs_ca))
        async with Client(hub.url, hub.admin_token, ca_file=str(theirs_ca)) as c:
            assert await c.list_clusters() == []
        sslctx = ssl.create_default_context(cafile=str(theirs_ca))
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=sslctx)) as own,
            Client(hub.url, hub.admin_token, session=own) as c,
        ):
            assert await c.list_clusters() == []


async def test_mutual_tls_binds_a_cluster_certificate_to_its_name(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    files = {}
    for name, pem in (
        ("hub.crt", server.cert_chain_pems[0]),
        ("hub.key", server.private_key_pem),
        ("ca.crt", ca.cert_pem),
    ):
        files[name] = tmp_path / name
        pem.write_to_path(str(files[name]))
    for cluster in ("edge", "serverless"):
        leaf = ca.issue_cert(f"{cluster}.clusters.fluidfed.local", common_name=cluster)
        leaf.cert_chain_pems[0].write_to_path(str(tmp_path / f"{cluster}.crt"))
        leaf.private_key_pem.write_to_path(str(tmp_path / f"{cluster}.key"))
    cfg = tmp_path / "hub.toml"
    cfg.write_text(
        f'[hub]\ntls_cert_file = "{files["hub.crt"]}"\ntls_key_file = "{files["hub.key"]}"\n'
        f'client_ca_file = "{files["ca.crt"]}"\n'
    )
    ca_file = str(files["ca.crt"])

    with HubProcess(tmp_path / "hub", extra=["--config", str(cfg)]) as hub:
        # the admin token needs no client certificate
        async with Client(hub.url, hub.admin_token, ca_file=ca_file) as admin:
            edge = await admin.register_cluster(testing.cluster("edge", kind="edge"))
            await admin.register_cluster(testing.cluster("serverless", kind="serverless"))

        def as_agent(cert: str | None) -> Client:
            if cert is None:
                return Client(hub.url, edge.token, ca_file=ca_file)
            return Client(
                hub.url,
                edge.token,
                ca_file=ca_file,
                cert_file=str(tmp_path / f"{cert}.crt"),
                key_file=str(tmp_path / f"{cert}.key"),
            )

        async with as_agent("edge") as c:
            await c.heartbeat("edge")  # its own token with its own certificate
        async with as_agent("serverless") as c:
            with pytest.raises(Forbidden, match="serverless's, the token cluster edge's"):
                await c.heartbeat("edge")
        async with as_agent(None) as c:
            with pytest.raises(Forbidden, match="client certificate"):
                await c.heartbeat("edge")

        # and nothing answers over plain HTTP
        plain = hub.url.replace("https://", "http://")
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.ClientError):
                async with s.get(plain + "/api/v1/clusters") as r:
                    await r.read()


def test_tls_settings_are_checked_with_the_field_path(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[hub]\ntls_cert_file = "/nonexistent.crt"\n')
    r = run_cli("validate", str(cfg), env=dict(os.environ))
    assert r.returncode == 2
    assert "tls_cert_file and tls_key_file go together" in r.stderr
    r = cli_missing_files(tmp_path)
    assert r.returncode == 2
    assert "nonexistent.crt" in r.stderr and "tls_cert_file" in r.stderr


def cli_missing_files(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "hub2.toml"
    cfg.write_text('[hub]\ntls_cert_file = "/nonexistent.crt"\ntls_key_file = "/nonexistent.key"\n')
    return run_cli(
        "hub",
        "serve",
        "--config",
        str(cfg),
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "d"),
        env=dict(os.environ),
    )


def test_plain_hub_still_serves_http_and_refuses_a_ca_without_https(hub: HubProcess) -> None:
    assert hub.url.startswith("http://")
    r = cli(hub, "get", "clusters")
    assert r.returncode == 0, r.stderr
    r = run_cli("--cacert", "/etc/hostname", "get", "clusters", env=_cli_env(hub))
    assert r.returncode == 2
    assert "not https://" in r.stderr


async def test_tls_mistakes_get_the_advice_that_fits(tmp_path: Path) -> None:
    """An expired hub certificate is refused at the hub's start; a client on the wrong
    scheme or a wrong host name is told which, not 'give the CA'."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_file))

    def hub_cfg(leaf: trustme.LeafCert, name: str) -> Path:
        cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(
            f'[hub]\ndata_dir = "{tmp_path / name}"\ntls_cert_file = "{cert}"\n'
            f'tls_key_file = "{key}"\n'
        )
        return cfg

    old = ca.issue_cert(
        "127.0.0.1",
        not_before=dt.datetime(2021, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2021, 12, 31, tzinfo=dt.UTC),
    )
    r = run_cli("hub", "serve", "--config", str(hub_cfg(old, "old")), timeout=60)
    assert r.returncode == 2, r.stderr
    assert re.search(r"hub.tls_cert_file: the certificate .* expired on 2021-12-31", r.stderr)

    other_host = ca.issue_cert("hub.example")
    with HubProcess(tmp_path / "h", extra=["--config", str(hub_cfg(other_host, "host"))]) as hub:
        async with Client(hub.url, hub.admin_token, ca_file=str(ca_file)) as c:
            with pytest.raises(
                ConfigError, match=re.escape("is not for the host in https://127.0.0.1")
            ):
                await c.list_clusters()
        plain_url = "http://" + hub.url.removeprefix("https://")
        async with Client(plain_url, hub.admin_token) as c:
            with pytest.raises(
                HubUnreachable, match=re.escape(f"if the hub serves HTTPS, use {hub.url}")
            ):
                await c.list_clusters()


def test_https_to_a_plain_hub_says_it_speaks_http(hub: HubProcess) -> None:
    https = "https://" + hub.url.removeprefix("http://")
    r = run_cli("--hub", https, f"--token={hub.admin_token}", "get", "clusters")  # may start "-"
    assert r.returncode == 1 and f"the hub there speaks plain HTTP: use {hub.url}" in r.stderr


async def test_a_renewed_certificate_and_client_ca_are_served_without_a_restart(
    tmp_path: Path,
) -> None:
    """cert-manager renews a hub's certificate in its Secret volume (the files replaced,
    here by a new CA's), and the clusters' client CA with it: the hub serves the new
    certificate to new connections and admits the new CA's clients, without a restart
    (SIGHUP: at once; else within `TLS_RECHECK`), the old CA's clients still admitted."""
    old, new = trustme.CA(), trustme.CA()
    files = {n: tmp_path / n for n in ("hub.crt", "hub.key", "ca.crt")}

    def write(ca: trustme.CA, *, clients: list[trustme.CA]) -> None:
        cert = ca.issue_cert("127.0.0.1")
        pems = {
            "hub.crt": cert.cert_chain_pems[0].bytes(),
            "hub.key": cert.private_key_pem.bytes(),
            "ca.crt": b"".join(c.cert_pem.bytes() for c in clients),
        }
        for name, pem in pems.items():  # (a Secret volume's update: files replaced whole)
            part = tmp_path / f".{name}.new"
            part.write_bytes(pem)
            os.replace(part, files[name])
        for c, who in ((old, "old"), (new, "new")):
            leaf = c.issue_cert("edge.clusters.fluidfed.local", common_name="edge")
            leaf.cert_chain_pems[0].write_to_path(str(tmp_path / f"edge-{who}.crt"))
            leaf.private_key_pem.write_to_path(str(tmp_path / f"edge-{who}.key"))
        for c, who in ((old, "old"), (new, "new")):
            c.cert_pem.write_to_path(str(tmp_path / f"{who}-ca.crt"))

    write(old, clients=[old])
    cfg = tmp_path / "hub.toml"
    cfg.write_text(
        f'[hub]\ntls_cert_file = "{files["hub.crt"]}"\ntls_key_file = "{files["hub.key"]}"\n'
        f'client_ca_file = "{files["ca.crt"]}"\n'
    )
    with HubProcess(tmp_path / "hub", extra=["--config", str(cfg)]) as hub:
        async with Client(hub.url, hub.admin_token, ca_file=str(tmp_path / "old-ca.crt")) as a:
            edge = await a.register_cluster(testing.cluster("edge", kind="edge"))

        def agent(who: str, ca: str) -> Client:
            return Client(
                hub.url,
                edge.token,
                ca_file=str(tmp_path / f"{ca}-ca.crt"),
                cert_file=str(tmp_path / f"edge-{who}.crt"),
                key_file=str(tmp_path / f"edge-{who}.key"),
            )

        async with agent("new", "old") as c:  # the new CA's client: refused, not yet trusted
            with pytest.raises(HubUnreachable, match="unknown ca"):
                await c.heartbeat("edge")
        write(new, clients=[new])
        assert hub.proc is not None
        hub.proc.send_signal(signal.SIGHUP)

        async def renewed() -> bool:
            async with agent("new", "new") as c:  # verifies the hub against the new CA
                await c.heartbeat("edge")
            return True

        await testing.eventually(renewed, "the renewed certificate served", timeout=30)
        async with agent("old", "new") as c:  # (the CA before, trusted beside the new)
            await c.heartbeat("edge")
        async with agent("old", "old") as c:  # the old certificate is served no more
            with pytest.raises(ConfigError, match="presented a certificate this client does not"):
                await c.heartbeat("edge")
        assert hub.errors is not None
        log = hub.errors.tail(200)
        assert "TLS certificate reloaded from" in log and "client CA reloaded from" in log
