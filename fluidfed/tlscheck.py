"""What OpenSSL checks in a certificate chain that rustls's verifier (webpki) does not, so
that a context fluidfed runs on rustls (`fluidfed.tlsclient` for the sidecar's block
receive, `fluidfed.tlsserve` for client certificates) accepts no certificate that Python's
`ssl` with the same context would refuse.

webpki takes every CA it is given as a bare trust anchor, whatever the CA says of itself,
and does not look at keyUsage. OpenSSL trusts a CA only while it is valid, a CA
(basicConstraints) allowed to sign certificates (keyUsage) for the purpose at hand
(extendedKeyUsage), within its path length, self-signed unless VERIFY_X509_PARTIAL_CHAIN;
and it refuses a peer certificate whose keyUsage does not allow TLS. So:

* `anchors_problem`: a context whose CAs do not all pass is left to OpenSSL (and the
  answer is asked again when one of them expires or begins);
* `chain_problem`: the chain the peer sent is checked after rustls verified it, before
  any request is sent or served;
* `RUSTLS_FLAGS`: verification flags beyond these (CRL checks, VERIFY_X509_STRICT) leave
  the context to OpenSSL.

Pure: no I/O.
"""

from __future__ import annotations

import math
import ssl
from typing import Literal, NamedTuple, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

# verification flags rustls's checks (with these) stand for: OpenSSL's defaults and a
# partial chain (rustls takes any CA given as an anchor). Any other is OpenSSL's: CRL
# checks (rustls reads no CRL), and VERIFY_X509_STRICT (key identifiers and the like,
# which webpki does not look at; Python 3.13 sets it by default, so there such contexts
# stay on OpenSSL).
RUSTLS_FLAGS = ssl.VERIFY_X509_TRUSTED_FIRST | ssl.VERIFY_X509_PARTIAL_CHAIN

Purpose = Literal["server", "client"]  # whose certificates are checked: a TLS server's, a client's

NO_CHANGE = (-math.inf, math.inf)  # a window that does not end
_NOT_CA = x509.BasicConstraints(ca=False, path_length=None)
_Ext = TypeVar("_Ext", bound=x509.ExtensionType)
_PURPOSE_OID = {
    "server": ExtendedKeyUsageOID.SERVER_AUTH,
    "client": ExtendedKeyUsageOID.CLIENT_AUTH,
}


class Checks(NamedTuple):
    """What `chain_problem` checks a peer's chain against, from the trusted CAs."""

    limit: int | None  # the fewest intermediates an anchor allows under it (None: any)
    anchors: frozenset[bytes]  # the anchors (DER): a peer may send one along


def checks_for(ca_pem: bytes) -> Checks:
    certs = x509.load_pem_x509_certificates(ca_pem)
    lengths = [(_extension(c, x509.BasicConstraints) or _NOT_CA).path_length for c in certs]
    found = [n for n in lengths if n is not None]
    return Checks(
        min(found) if found else None,
        frozenset(c.public_bytes(serialization.Encoding.DER) for c in certs),
    )


def anchors_problem(
    ca_pem: bytes, now: float, *, partial: bool, purpose: Purpose = "server"
) -> tuple[str, float, float]:
    """Why rustls would trust the CAs in `ca_pem` where OpenSSL does not ("" if it would
    not), and the window in which that answer holds. Conservative: some CAs OpenSSL would
    take are not given to rustls either (a CA without basicConstraints, say)."""
    try:
        certs = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as err:
        return f"a trusted CA does not parse ({err})", *NO_CHANGE
    valid_from, valid_until = NO_CHANGE
    for cert in certs:
        name = cert.subject.rfc4514_string()
        begins = cert.not_valid_before_utc.timestamp()
        ends = cert.not_valid_after_utc.timestamp()
        if not begins <= now <= ends:
            # OpenSSL refuses it until it is valid: decided again when it is
            if now < begins:
                return f"the CA {name!r} is not valid yet", -math.inf, begins
            return f"the CA {name!r} has expired", ends, math.inf
        valid_from, valid_until = max(valid_from, begins), min(valid_until, ends)
        problem = _ca_problem(cert, purpose)
        if not problem and not partial and not _self_signed(cert):
            problem = "is not self-signed (a partial chain)"
        if problem:
            return f"the CA {name!r} {problem}", *NO_CHANGE
    return "", valid_from, valid_until


def chain_problem(chain: list[bytes], checks: Checks, *, purpose: Purpose = "server") -> str:
    """What OpenSSL would refuse in a peer's certificate chain (DER, the peer's own first)
    that rustls's verification does not look at ("" if nothing): the peer's keyUsage must
    allow TLS (a server: digitalSignature, keyEncipherment or keyAgreement; a client:
    digitalSignature or keyAgreement); every certificate it sent after its own must be a CA
    allowed to sign certificates for that purpose within its path length; and no more of
    them (anchors sent along aside) than the anchors' smallest path length."""
    if not chain:
        return "no certificate was sent"
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError as err:
        return f"a certificate sent does not parse ({err})"
    usage = _extension(certs[0], x509.KeyUsage)
    if usage is not None and not (
        usage.digital_signature
        or usage.key_agreement
        or (purpose == "server" and usage.key_encipherment)
    ):
        return f"the {purpose}'s certificate may not be used for TLS (keyUsage)"
    below = 0  # CAs under the one looked at, in the chain
    for der, cert in zip(chain[1:], certs[1:], strict=True):
        if der in checks.anchors:
            continue
        problem = _ca_problem(cert, purpose)
        length = (_extension(cert, x509.BasicConstraints) or _NOT_CA).path_length
        if not problem and length is not None and below > length:
            problem = "is past its path length"
        if problem:
            return f"the CA {cert.subject.rfc4514_string()!r} the {purpose} sent {problem}"
        below += 1
    if checks.limit is not None and below > checks.limit:
        return f"{below} intermediate CAs where the trusted CA allows {checks.limit}"
    return ""


def _ca_problem(cert: x509.Certificate, purpose: Purpose) -> str:
    """What keeps OpenSSL from taking `cert` as a CA for a chain of this purpose."""
    basic = _extension(cert, x509.BasicConstraints)
    if basic is None:
        return "does not say it is a CA"
    if not basic.ca:
        return "is not a CA (CA:FALSE)"
    usage = _extension(cert, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        return "may not sign certificates (keyUsage)"
    purposes = _extension(cert, x509.ExtendedKeyUsage)
    if purposes is not None and not {
        _PURPOSE_OID[purpose],
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    } & set(purposes):
        return f"is not for TLS {purpose}s (extendedKeyUsage)"
    return ""


def _extension(cert: x509.Certificate, kind: type[_Ext]) -> _Ext | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _self_signed(cert: x509.Certificate) -> bool:
    """Issued by itself and signed with its own key (a name alone proves nothing)."""
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
