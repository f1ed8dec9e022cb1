"""Serving and trusting contexts that follow their files (a Secret volume the agent
updates): a handshake on memory buffers shows which certificate a new connection gets."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
import trustme

from devkit import testing
from fluidfed import pki, tls


def _swap(path: Path, data: bytes) -> None:
    """Replace a file as a Secret volume does: a new file renamed over the old."""
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


def test_a_served_pair_is_read_again_when_it_changes_and_a_broken_one_keeps_the_last(
    tmp_path: Path,
) -> None:
    ca = pki.new_ca("test-ca")
    first = pki.issue(ca, "w", server=True, hosts=("w.ns.svc",))
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    _swap(cert, first.cert_pem)
    _swap(key, first.key_pem)
    served = tls.Served(str(cert), str(key))
    client = tls.trusting(ca.cert_pem.decode())
    assert testing.handshake(served.context, client, "w.ns.svc") == _der(first.cert_pem)
    assert not served.reload()  # unchanged

    _swap(cert, b"not a certificate")  # a half-done update: the last pair stays in use
    assert not served.reload()
    assert testing.handshake(served.context, client, "w.ns.svc") == _der(first.cert_pem)

    second = pki.issue(ca, "w", server=True, hosts=("w.ns.svc",))
    _swap(cert, second.cert_pem)  # the new certificate with the old key: not a pair
    assert not served.reload()
    assert testing.handshake(served.context, client, "w.ns.svc") == _der(first.cert_pem)
    _swap(key, second.key_pem)
    assert served.reload()
    assert testing.handshake(served.context, client, "w.ns.svc") == _der(second.cert_pem)


def test_a_trusted_ca_file_that_changes_adds_the_new_ca_beside_the_old(tmp_path: Path) -> None:
    # two CAs of one name (issuers are found by key identifier, not by the first name)
    old, new = pki.new_ca("data-ca"), pki.new_ca("data-ca")
    ca_file = tmp_path / "ca.crt"
    _swap(ca_file, old.cert_pem)
    trusted = tls.Trusted(str(ca_file))
    by_old = pki.issue(old, "w", server=True, hosts=("w.ns.svc",))
    by_new = pki.issue(new, "w", server=True, hosts=("w.ns.svc",))

    def server(pair: pki.KeyPair) -> ssl.SSLContext:
        cert, key = tmp_path / "s.crt", tmp_path / "s.key"
        cert.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
        return tls.server_context(str(cert), str(key))

    testing.handshake(server(by_old), trusted.context, "w.ns.svc")
    with pytest.raises(ssl.SSLCertVerificationError):  # a CA not in the file
        testing.handshake(server(by_new), trusted.context, "w.ns.svc")
    _swap(ca_file, new.cert_pem)
    assert trusted.reload() and not trusted.reload()
    testing.handshake(server(by_new), trusted.context, "w.ns.svc")
    testing.handshake(server(by_old), trusted.context, "w.ns.svc")  # workers not yet renewed


def test_a_server_context_keeps_what_rustls_is_built_from(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    ctx = tls.ServerContext(ssl.PROTOCOL_TLS_SERVER)
    assert ctx.pem is None and ctx.generation == 0
    ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    assert ctx.pem == ((tmp_path / "tls.crt").read_bytes(), cert.private_key_pem.bytes())
    assert ctx.generation == 1
    ctx.load_verify_locations(cadata=ca.cert_pem.bytes().decode())
    assert ctx.ca_pem.startswith(ca.cert_pem.bytes()) and ctx.generation == 2
    # a file that is no certificate is refused by OpenSSL first, and nothing of it is kept
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(ssl.SSLError):
        ctx.load_cert_chain(tmp_path / "bad.pem")
    assert ctx.pem == ((tmp_path / "tls.crt").read_bytes(), cert.private_key_pem.bytes())
    assert ctx.generation == 2
    # the hub's contexts are ServerContexts, so either engine serves them
    assert isinstance(tls.server_context(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")),
                      tls.ServerContext)  # fmt: skip


def test_a_served_client_ca_that_changes_is_trusted_beside_the_old(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = pki.new_ca("clients-old"), pki.new_ca("clients-new")
    ca = pki.new_ca("serving")
    pair = pki.issue(ca, "hub", server=True, hosts=("hub",))
    cert, key, clients = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt"
    _swap(cert, pair.cert_pem)
    _swap(key, pair.key_pem)
    _swap(clients, old.cert_pem)
    served = tls.Served(str(cert), str(key), str(clients))

    def trusted() -> set[str]:  # (OpenSSL's own store, not only what rustls is given)
        der = served.context.get_ca_certs(binary_form=True)
        return {str(tls.peer_common_name(d)) for d in der}

    assert trusted() == {"clients-old"}
    assert not served.reload()  # nothing changed: nothing loaded again
    _swap(clients, old.cert_pem)  # the same bytes, a new file (a Secret's other key changed)
    generation = served.context.generation
    assert not served.reload() and served.context.generation == generation
    _swap(clients, b"not a certificate")  # said once, the CAs before kept
    with caplog.at_level("WARNING", logger="fluidfed.tls"):
        assert not served.reload() and not served.reload()
    assert [r.getMessage().count("changed but was not loaded") for r in caplog.records] == [1]
    _swap(clients, new.cert_pem)
    assert served.reload() and not served.reload()
    assert trusted() == {"clients-old", "clients-new"}
    assert served.context.verify_mode == ssl.CERT_OPTIONAL
    assert not served.reload_pair()  # the pair did not change


def test_a_renewed_pair_loads_where_no_file_can_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub's pod has a read-only root and no /tmp: the new pair is checked from memory."""
    ca = pki.new_ca("serving")
    first, second = (pki.issue(ca, "hub", server=True, hosts=("hub",)) for _ in range(2))
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    _swap(cert, first.cert_pem)
    _swap(key, first.key_pem)
    served = tls.Served(str(cert), str(key))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "no-such-dir"))
    _swap(cert, second.cert_pem)
    _swap(key, second.key_pem)
    assert served.reload()
    client = tls.trusting(ca.cert_pem.decode())
    assert testing.handshake(served.context, client, "hub") == _der(second.cert_pem)
