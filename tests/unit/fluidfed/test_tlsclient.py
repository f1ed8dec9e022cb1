"""Which client contexts the sidecar's receive runs on rustls, and when the configuration is
built again: a context rustls would verify differently (other CAs, host names unchecked,
verification off) stays on Python's ssl, never with fewer checks."""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from fluidfed import tls, tlsclient, tlsserve
from tests.unit.fluidfed.test_tlscheck import _ca


def _pem(ca: trustme.CA) -> str:
    return ca.cert_pem.bytes().decode()


def test_a_context_trusting_pem_cas_is_rustls_s_and_rebuilt_after_each_load() -> None:
    ctx = tls.trusting(_pem(trustme.CA()))
    assert isinstance(ctx, tls.ClientContext)
    first = tlsclient.rustls_config(ctx)
    assert first is not None
    assert tlsclient.rustls_config(ctx) is first  # kept while nothing changes
    ctx.load_verify_locations(cadata=_pem(trustme.CA()))  # a rotation: the new CA beside
    rotated = tlsclient.rustls_config(ctx)
    assert rotated is not None and rotated is not first
    assert ctx.ca_pem.count(b"BEGIN CERTIFICATE") == 2


def test_the_sidecars_context_from_its_ca_file_is_rustls_s(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    trusted = tls.Trusted(str(tmp_path / "ca.crt"))
    assert tlsclient.rustls_config(trusted.context) is not None
    # and a client certificate (mutual TLS) goes with it
    ctx = tls.client_context(tls.ClientTLS(ca_file=str(tmp_path / "ca.crt")))
    ca.issue_cert("client").configure_cert(ctx)
    assert ctx.pem is not None and tlsclient.rustls_config(ctx) is not None


@pytest.mark.parametrize(
    "change",
    [
        "system",  # the system's trust store: rustls was not given those CAs
        "capath",  # a hashed directory OpenSSL looks up as it verifies
        "no_hostname",  # host names not checked: rustls always checks them
        "optional",  # the server's certificate not required
        "none",  # not verified at all
        "plain_context",  # a context that did not record its CAs
        "no_version",  # nothing rustls speaks: Python's ssl refuses it as it should
    ],
)
def test_contexts_rustls_would_verify_differently_stay_on_pythons_ssl(
    change: str, tmp_path: Path
) -> None:
    ctx: ssl.SSLContext = tls.trusting(_pem(trustme.CA()))
    if change == "system":
        ctx = tls.client_context(tls.ClientTLS())
    elif change == "capath":
        ctx.load_verify_locations(capath=str(tmp_path))
    elif change == "no_hostname":
        ctx.check_hostname = False
    elif change == "optional":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_OPTIONAL
    elif change == "none":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif change == "plain_context":
        ctx = ssl.create_default_context(cadata=_pem(trustme.CA()))
    elif change == "no_version":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    assert tlsclient.rustls_config(ctx) is None


def test_the_versions_follow_the_context() -> None:
    ctx = tls.trusting(_pem(trustme.CA()))
    both = tlsclient.rustls_config(ctx)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    only13 = tlsclient.rustls_config(ctx)
    assert only13 is not None and only13 is not both


@pytest.mark.parametrize(
    "kind",
    [{"days": (-30, -1)}, {"ca": False}, {"purposes": [ExtendedKeyUsageOID.CLIENT_AUTH]}],
)
def test_a_context_trusting_a_ca_openssl_would_not_take_stays_on_openssl(
    kind: dict[str, Any],
) -> None:
    good = _ca()
    ctx = tls.trusting((good + _ca(**kind)).decode())
    assert tlsclient.rustls_config(ctx) is None
    assert tlsclient.rustls_config(tls.trusting(good.decode())) is not None


def test_a_partial_chain_is_rustls_s_only_when_the_context_allows_one() -> None:
    intermediate = _ca(issuer_name="a root")
    ctx = tls.trusting(intermediate.decode())
    assert tlsclient.rustls_config(ctx) is None
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    assert tlsclient.rustls_config(ctx) is not None


def test_the_decision_is_made_again_when_a_trusted_ca_expires() -> None:
    soon = _ca(days=(-1, 1))
    ctx = tls.trusting(soon.decode())
    config = tlsclient.rustls_config(ctx)
    assert config is not None
    assert ctx.engine_config is not None
    state, kept, valid_from, valid_until = ctx.engine_config
    assert kept is config and valid_from <= time.time() < valid_until
    assert ctx.engine_kept(state, valid_until - 1) == (True, config)
    assert ctx.engine_kept(state, valid_until) == (False, None)  # the CA's end
    # the window's end come (moved to now here): decided again, not taken from the cache
    ctx.engine_keep(state, config, (valid_from, time.time()))
    again = tlsclient.rustls_config(ctx)
    assert again is not None and again is not config


def test_crl_checks_and_a_client_key_with_a_password_stay_on_openssl(tmp_path: Path) -> None:
    ctx = tls.trusting(_pem(trustme.CA()))
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF  # rustls reads no CRL
    assert tlsclient.rustls_config(ctx) is None
    # a client key with a password: rustls cannot be given it, and would go without it
    ca = trustme.CA()
    leaf = ca.issue_cert("client")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ctx = tls.trusting(_pem(ca))
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem", password=b"secret")
    assert ctx.pem is None and ctx.unrecorded_cert
    assert tlsclient.rustls_config(ctx) is None


@pytest.mark.filterwarnings("ignore:ssl.OP_NO_SSL:DeprecationWarning")
def test_versions_follow_the_no_tls_options_too() -> None:
    ctx = tls.trusting(_pem(trustme.CA()))
    assert tlsserve.versions(ctx) == (True, True)
    ctx.options |= ssl.OP_NO_TLSv1_3
    assert tlsserve.versions(ctx) == (True, False)
    ctx.options |= ssl.OP_NO_TLSv1_2
    assert tlsserve.versions(ctx) == (False, False)
    assert tlsclient.rustls_config(ctx) is None  # nothing left: OpenSSL refuses it
