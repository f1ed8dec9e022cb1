"""The webhook's own CA and serving certificate, renewed before they expire.

The CA lives long and goes into the MutatingWebhookConfiguration's caBundle; the serving
certificate is short-lived and renewed in place: the TLS context loads the new chain and
every new handshake uses it, so admission never stops.
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

from fluidfed import pki, tls


class CertManager:
    def __init__(
        self,
        directory: Path,
        hosts: tuple[str, ...],
        *,
        lifetime: dt.timedelta = dt.timedelta(days=30),
        renew_before: dt.timedelta = dt.timedelta(days=7),
        name: str = "fluidfed-webhook",
    ) -> None:
        self.dir = directory
        self.hosts = hosts
        self.lifetime = lifetime
        self.renew_before = renew_before
        self.context = tls.ServerContext(ssl.PROTOCOL_TLS_SERVER)  # either TLS engine
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.name = name  # of the serving certificate; its CA's is `<name>-ca`
        self.ca = pki.load_or_make_ca(self.dir, f"{name}-ca")
        self.rotations = 0
        self._issue()

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem

    def _issue(self) -> None:
        leaf = pki.issue(self.ca, self.name, server=True, hosts=self.hosts, lifetime=self.lifetime)
        crt, key = self.dir / "tls.crt", self.dir / "tls.key"
        pki.write(key, leaf.key_pem, private=True)
        pki.write(crt, leaf.cert_pem)
        self.context.load_cert_chain(str(crt), str(key))
        self.not_after = pki.not_after(leaf.cert_pem)
        self.rotations += 1

    def due(self, now: dt.datetime | None = None) -> bool:
        now = now or dt.datetime.now(dt.UTC)
        return self.not_after - now <= self.renew_before

    def rotate(self) -> None:
        """A new serving certificate now (the CA, and so the caBundle, stay)."""
        self._issue()
