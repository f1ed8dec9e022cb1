"""The webhook's CA stays across restarts and rotations; its serving certificate is
renewed before it expires."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from agents.webhook.certs import CertManager


def serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_the_serving_certificate_is_due_within_renew_before_of_its_end(tmp_path: Path) -> None:
    cm = CertManager(
        tmp_path, ("127.0.0.1",), lifetime=dt.timedelta(days=10), renew_before=dt.timedelta(days=3)
    )
    now = dt.datetime.now(dt.UTC)
    assert not cm.due(now)
    assert not cm.due(now + dt.timedelta(days=6))
    assert cm.due(now + dt.timedelta(days=7, minutes=1))
    assert (tmp_path / "tls.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600


def test_rotation_replaces_the_serving_certificate_and_keeps_the_ca(tmp_path: Path) -> None:
    cm = CertManager(tmp_path, ("webhook.ns.svc",))
    ca, first = cm.ca_pem, serial(tmp_path / "tls.crt")
    cm.rotate()
    assert cm.rotations == 2
    assert serial(tmp_path / "tls.crt") != first
    assert cm.ca_pem == ca
    leaf = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    # a restarted agent keeps the CA the API server already trusts (the caBundle)
    assert CertManager(tmp_path, ("webhook.ns.svc",)).ca_pem == ca
