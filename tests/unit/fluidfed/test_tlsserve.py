"""Which serving contexts rustls is given, and when its configuration is built again: a
context whose client checks or versions rustls cannot be told is served with OpenSSL, never
with fewer checks."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme
from cryptography.x509.oid import ExtendedKeyUsageOID

from fluidfed import tls, tlsserve
from tests.unit.fluidfed.test_tlscheck import _ca


def _context(tmp_path: Path) -> tls.ServerContext:
    ca = trustme.CA()
    ctx = tls.ServerContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return ctx


def test_client_certificates_checked_against_pem_cas_are_rustls_s(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    plain = tlsserve._rustls_config(ctx)
    assert plain is not None
    ctx.load_verify_locations(cafile=str(tmp_path / "ca.pem"))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    optional = tlsserve._rustls_config(ctx)
    assert optional is not None and optional is not plain
    ctx.verify_mode = ssl.CERT_REQUIRED  # changed after: a configuration of its own
    required = tlsserve._rustls_config(ctx)
    assert required is not None and required is not optional
    assert tlsserve._rustls_config(ctx) is required  # and kept while nothing changes


def test_cas_rustls_was_not_given_leave_the_context_to_openssl(tmp_path: Path) -> None:
    # a capath directory (looked up by OpenSSL as it verifies), even after a rotation
    ctx = _context(tmp_path)
    ctx.load_verify_locations(capath=str(tmp_path))
    ctx.verify_mode = ssl.CERT_REQUIRED
    assert tlsserve._rustls_config(ctx) is None
    trustme.CA().issue_cert("127.0.0.1").configure_cert(ctx)
    assert tlsserve._rustls_config(ctx) is None
    # the system's CAs
    ctx = _context(tmp_path)
    ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    ctx.verify_mode = ssl.CERT_REQUIRED
    assert tlsserve._rustls_config(ctx) is None
    # clients to verify and no CA at all
    ctx = _context(tmp_path)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    assert tlsserve._rustls_config(ctx) is None


def test_the_versions_served_follow_the_context(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    both = tlsserve._rustls_config(ctx)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    only13 = tlsserve._rustls_config(ctx)
    assert only13 is not None and only13 is not both
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    assert tlsserve._rustls_config(ctx) is not None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # no version left: OpenSSL's to refuse
    assert tlsserve._rustls_config(ctx) is None


def test_client_cas_openssl_would_not_take_and_crl_checks_leave_it_to_openssl(
    tmp_path: Path,
) -> None:
    """rustls takes any client CA as it is and reads no CRL; OpenSSL checks both."""
    for bad in (
        _ca(ca=False),
        _ca(days=(-30, -1)),
        _ca(purposes=[ExtendedKeyUsageOID.SERVER_AUTH]),
    ):
        ctx = _context(tmp_path)
        ctx.load_verify_locations(cadata=bad.decode())
        ctx.verify_mode = ssl.CERT_REQUIRED
        assert tlsserve._rustls_config(ctx) is None
    ctx = _context(tmp_path)
    ctx.load_verify_locations(cadata=_ca(purposes=[ExtendedKeyUsageOID.CLIENT_AUTH]).decode())
    ctx.verify_mode = ssl.CERT_REQUIRED
    served = tlsserve._rustls_config(ctx)
    assert served is not None and served.checks is not None
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    assert tlsserve._rustls_config(ctx) is None
    # clients not verified: nothing to check
    ctx = _context(tmp_path)
    served = tlsserve._rustls_config(ctx)
    assert served is not None and served.checks is None
