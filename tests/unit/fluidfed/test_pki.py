"""Certificates: a CA, and the server and client certificates it signs."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from fluidfed import pki


def test_a_server_certificate_is_signed_by_the_ca_for_its_names_and_addresses() -> None:
    ca = pki.new_ca("fluidfed-test-ca")
    leaf = pki.issue(
        ca,
        "webhook",
        org="fluidfed",
        hosts=("127.0.0.1", "webhook.ns.svc"),
        server=True,
        lifetime=dt.timedelta(days=2),
    )
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    cert = x509.load_pem_x509_certificate(leaf.cert_pem)
    assert cert.issuer == ca_cert.subject
    cert.verify_directly_issued_by(ca_cert)  # raises if the signature is not the CA's
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["webhook.ns.svc"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    left = pki.not_after(leaf.cert_pem) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=1, hours=23) < left <= dt.timedelta(days=2)


def test_a_client_certificate_has_no_names_and_says_client() -> None:
    ca = pki.new_ca("ca")
    cert = x509.load_pem_x509_certificate(
        pki.issue(ca, "admin", org="system:masters", client=True).cert_pem
    )
    assert [a.value for a in cert.subject] == ["admin", "system:masters"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert not any(isinstance(e.value, x509.SubjectAlternativeName) for e in cert.extensions)


def test_private_files_are_written_for_the_owner_only(tmp_path: Path) -> None:
    private, public = pki.rsa_keypair()
    assert private.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert public.startswith(b"-----BEGIN PUBLIC KEY-----")
    key = pki.write(tmp_path / "sa.key", private, private=True)
    pub = pki.write(tmp_path / "sa.pub", public)
    assert key.read_bytes() == private
    assert key.stat().st_mode & 0o777 == 0o600
    assert pub.read_bytes() == public


def test_a_private_file_written_over_a_readable_one_is_private(tmp_path: Path) -> None:
    old = tmp_path / "hub.key"
    old.write_bytes(b"old")
    old.chmod(0o644)
    pki.write(old, b"new key", private=True)
    assert old.read_bytes() == b"new key"
    assert old.stat().st_mode & 0o777 == 0o600


def test_every_certificate_of_a_chain_has_its_validity_read() -> None:
    import trustme

    leaf = trustme.CA().create_child_ca().issue_cert("hub.example")
    chain = b"".join(b.bytes() for b in leaf.cert_chain_pems)
    got = pki.validity(chain)
    assert len(got) == 2  # the leaf and the intermediate that signed it
    assert all(start < end for _, start, end in got)
