"""Which client contexts the sidecar's receive runs on rustls, and when the configuration is
built again: a context rustls would verify differently (other CAs, host names unchecked,
verification off) stays on Python's ssl, never with fewer checks."""

from __future__ import annotations

import datetime as dt
import ssl
import time
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fluidfed import tls, tlsclient, tlsserve


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


def _ca(
    *,
    days: tuple[int, int] = (-1, 365),
    ca: bool | None = True,
    cert_sign: bool = True,
    issuer: str = "",
) -> bytes:
    """A CA certificate (PEM) with what OpenSSL looks at in a trust anchor set as asked."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]) if issuer else subject
        )
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=cert_sign,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ({"days": (-30, -1)}, "has expired"),
        ({"days": (1, 30)}, "not valid yet"),
        ({"ca": False}, "not one (CA:FALSE)"),
        ({"ca": None}, "does not say it is a CA"),
        ({"cert_sign": False}, "may not sign certificates"),
        ({"issuer": "another CA"}, "not self-signed"),
    ],
)
def test_anchors_openssl_would_not_trust_leave_the_context_to_it(
    kind: dict[str, object], said: str
) -> None:
    """rustls (webpki) takes every CA given as a trust anchor as it is; OpenSSL checks it:
    a context trusting one OpenSSL would refuse stays on OpenSSL, which refuses it."""
    good = _ca()
    bad = _ca(**kind)  # type: ignore[arg-type]
    now = time.time()
    problem, _, _ = tlsclient.anchors_problem(good + bad, now, partial=False)
    assert said in problem
    assert tlsclient.anchors_problem(good, now, partial=False)[0] == ""
    ctx = tls.trusting((good + bad).decode())
    assert tlsclient.rustls_config(ctx) is None
    ctx = tls.trusting(good.decode())
    assert tlsclient.rustls_config(ctx) is not None


def test_a_partial_chain_is_rustls_s_only_when_the_context_allows_one() -> None:
    intermediate = _ca(issuer="a root")
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
    state, (kept, valid_from, valid_until) = ctx.engine_config
    assert kept is config and valid_from <= time.time() < valid_until
    # the window's end come (moved to now here): decided again, not taken from the cache
    ctx.engine_config = (state, (config, valid_from, time.time()))
    again = tlsclient.rustls_config(ctx)
    assert again is not None and again is not config
    # and after the CA's end, what is decided is OpenSSL
    problem, _, _ = tlsclient.anchors_problem(soon, valid_until + 1, partial=False)
    assert "has expired" in problem


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
