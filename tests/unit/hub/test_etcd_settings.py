"""The etcd store's settings, read from `[hub] store` and the etcd_* keys (no etcd here:
the store's behaviour is tested against a real etcd in tests/integration)."""

import logging
import os
from pathlib import Path

import pytest

from devkit.local.cluster import free_port
from fluidfed import config, pki
from fluidfed.errors import ConfigError
from hub import etcd


def test_an_etcd_url_names_its_members() -> None:
    assert etcd.parse_url("etcd://127.0.0.1:2379,10.0.0.2:22379") == (
        "127.0.0.1:2379",
        "10.0.0.2:22379",
    )
    assert etcd.parse_url("etcd://etcd-0.etcd:2379/") == ("etcd-0.etcd:2379",)


@pytest.mark.parametrize(
    "url", ["etcd://", "etcd://host", "etcd://host:port", "http://h:2379", "etcd://h:1/x"]
)
def test_a_bad_etcd_url_says_what_to_write(url: str) -> None:
    with pytest.raises(ConfigError, match=r"etcd://HOST:PORT") as info:
        etcd.parse_url(url)
    assert info.value.problems[0].path == "hub.store"


def test_the_hub_config_refuses_a_store_it_does_not_know() -> None:
    with pytest.raises(ConfigError, match="etcd://HOST:PORT") as info:
        config.loads('[hub]\nstore = "postgres://db"\n', file="hub.toml")
    assert info.value.problems[0].file == "hub.toml"
    with pytest.raises(ConfigError, match="give both or neither"):
        config.loads('[hub]\nstore = "etcd://h:2379"\netcd_cert_file = "c.pem"\n')
    doc = config.loads('[hub]\nstore = "etcd://h:2379"\netcd_prefix = "/ff/"\n')
    assert doc.hub is not None and doc.hub.store == "etcd://h:2379"


def test_an_etcd_user_without_a_password_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FLUIDFED_ETCD_PASSWORD", raising=False)
    settings = etcd.EtcdSettings(endpoints=("h:2379",), username="hub")
    with pytest.raises(ConfigError, match="FLUIDFED_ETCD_PASSWORD"):
        etcd.EtcdStore(settings)


def test_a_password_in_the_etcd_url_is_refused_without_being_repeated() -> None:
    with pytest.raises(ConfigError, match="etcd_username and etcd_password_file") as info:
        config.loads('[hub]\nstore = "etcd://root:EtcdPass1@10.0.0.1:2379"\n', file="hub.toml")
    assert "EtcdPass1" not in str(info.value)


def test_an_etcd_password_is_not_sent_in_clear_beyond_loopback() -> None:
    from fluidfed import validation
    from fluidfed.models import HubConfig

    remote = HubConfig(store="etcd://127.0.0.1:2379,10.0.0.2:2379", etcd_username="root")
    (p,) = validation.check_hub(remote)
    assert p.path == "hub.etcd_ca_file" and "10.0.0.2:2379" in p.message
    assert (
        validation.check_hub(HubConfig(store="etcd://127.0.0.1:2379", etcd_username="root")) == []
    )
    tls = HubConfig(store="etcd://10.0.0.2:2379", etcd_username="root", etcd_ca_file="ca.pem")
    assert validation.check_hub(tls) == []
    mutual = HubConfig(
        store="etcd://10.0.0.2:2379", etcd_username="root", etcd_cert_file="c", etcd_key_file="k"
    )
    assert validation.check_hub(mutual) == []  # (TLS, the system's roots trusted)
    assert validation.check_hub(HubConfig(store="etcd://10.0.0.2:2379")) == []  # (no password)


async def test_etcd_tls_files_that_do_not_load_or_reach_etcd_keep_the_ones_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`reload_tls` leaves files that do not load (a certificate replaced before its key)
    for the ones before, said once, tried again at their next change; files that load
    but that etcd does not take (none listens here) keep the ones before too, said once,
    tried again at each look; unchanged files or the same bytes: nothing. (Files etcd
    takes: tests/integration/test_hub_etcd.py.)"""
    ca = pki.new_ca("etcd CA")
    first, second = (pki.issue(ca, "fluidfed-hub", client=True) for _ in range(2))
    files = {n: tmp_path / n for n in ("ca.crt", "hub.crt", "hub.key")}

    def write(name: str, data: bytes) -> None:
        part = tmp_path / f".{name}.new"
        part.write_bytes(data)
        os.replace(part, files[name])  # (a new inode: replaced whole, as kubelet does)

    write("ca.crt", ca.cert_pem)
    write("hub.crt", first.cert_pem)
    write("hub.key", first.key_pem)
    store = etcd.EtcdStore(
        etcd.EtcdSettings(
            endpoints=(f"127.0.0.1:{free_port()}",),  # (nothing listens: refused at once)
            ca_file=str(files["ca.crt"]),
            cert_file=str(files["hub.crt"]),
            key_file=str(files["hub.key"]),
            timeout=2.0,
        )
    )
    try:
        assert store.reloads_tls and not await store.reload_tls()  # (nothing changed)
        before = store._creds
        write("hub.crt", first.cert_pem)  # the same bytes, a new file: nothing to load
        assert not await store.reload_tls() and store._creds is before
        write("hub.crt", second.cert_pem)  # its key not yet: refused, said once
        with caplog.at_level(logging.WARNING, logger="fluidfed.hub.etcd"):
            assert not await store.reload_tls() and not await store.reload_tls()
            write("hub.key", second.key_pem)  # a pair now, but etcd cannot be reached
            assert not await store.reload_tls() and not await store.reload_tls()
        said = [r.getMessage() for r in caplog.records]
        assert sum("were not loaded" in m for m in said) == 1
        assert sum("a call with them to" in m for m in said) == 1  # (tried twice, said once)
        assert str(files["hub.crt"]) in said[0] and "BEGIN" not in "".join(said)
        assert store._creds is before
    finally:
        await store.close()
    assert not etcd.EtcdStore(etcd.EtcdSettings(endpoints=("127.0.0.1:1",))).reloads_tls
