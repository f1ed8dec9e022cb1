"""The hub refuses to serve plain HTTP where other machines reach it."""

import asyncio
import logging
import ssl
from pathlib import Path

import pytest

from devkit import testing
from fluidfed.errors import ConfigError
from fluidfed.models import Capabilities, Cluster, HubConfig
from hub import server
from hub.catalog import Catalog
from hub.store import SQLiteStore


async def test_plain_http_beyond_loopback_is_refused_before_anything_opens(
    tmp_path: Path,
) -> None:
    """Tokens would cross the network in clear: said at start, with what to do, before the
    store or a port is opened."""
    for host in ("0.0.0.0", "::", "10.0.0.5", "hub.example.com"):
        cfg = HubConfig(host=host, port=0, data_dir=str(tmp_path / "hub"))
        with pytest.raises(ConfigError, match="beyond loopback") as info:
            # (without the check it would serve on: the timeout fails the test, not hangs it)
            await asyncio.wait_for(server.serve(cfg, ready_line=False), timeout=30)
        (p,) = info.value.problems
        assert p.path == "hub.host" and "tls_cert_file" in p.message and "plain_http" in p.message
        assert not (tmp_path / "hub" / "catalog.db").exists()


def test_loopback_tls_or_an_explicit_plain_http_serve() -> None:
    tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for cfg, ctx in (
        (HubConfig(host="127.0.0.1"), None),
        (HubConfig(host="::1"), None),
        (HubConfig(host="localhost"), None),
        (HubConfig(host="0.0.0.0"), tls_ctx),
        (HubConfig(host="0.0.0.0", plain_http=True), None),  # a service mesh encrypts
    ):
        server._plain_beyond_loopback(cfg, ctx)  # (no error)


async def test_the_hub_says_which_clusters_registered_before_could_mount_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cluster that could mount no dataset is refused at registration now; one stored
    before (the catalog takes what it is given) is named in the hub's log at start."""
    cat = Catalog(SQLiteStore(tmp_path / "catalog.db"))
    await cat.load()
    await cat.register_cluster(Cluster(name="old"))  # (the defaults: no CSI, unprivileged)
    await cat.register_cluster(testing.cluster("fine"))
    await cat.register_cluster(
        Cluster(name="fluid", capabilities=Capabilities(csi=True, fluid=True))
    )
    with caplog.at_level(logging.WARNING, logger="fluidfed.hub"):
        assert server.warn_unmountable(cat) == ["old"]
    assert "cluster old could mount no dataset" in caplog.text
    assert "set privileged = true" in caplog.text
    await cat.store.close()
