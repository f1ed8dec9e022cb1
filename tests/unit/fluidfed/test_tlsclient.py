"""Which client contexts the sidecar's receive runs on rustls, and when the configuration is
built again: a context rustls would verify differently (other CAs, host names unchecked,
verification off) stays on Python's ssl, never with fewer checks."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from fluidfed import tls, tlsclient


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
