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

import datetime as dt
import math
import ssl
import time
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
    """What `chain_problem` checks a peer's chain against: the trusted CAs."""

    anchors: frozenset[bytes]  # the anchors (DER): a peer may send one along
    anchor_certs: tuple[x509.Certificate, ...] = ()  # the same, parsed, in the context's order


def checks_for(ca_pem: bytes) -> Checks:
    """The checks for CAs `anchors_problem` passed (so cryptography reads them whole)."""
    certs = x509.load_pem_x509_certificates(ca_pem)
    return Checks(
        frozenset(c.public_bytes(serialization.Encoding.DER) for c in certs), tuple(certs)
    )


def anchors_problem(
    ca_pem: bytes, now: float, *, partial: bool, purpose: Purpose = "server"
) -> tuple[str, float, float]:
    """Why rustls would trust the CAs in `ca_pem` where OpenSSL does not ("" if it would
    not), and the window in which that answer holds. Conservative: some CAs OpenSSL would
    take are not given to rustls either (a CA without basicConstraints, one cryptography
    cannot read whole, say)."""
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
        try:
            problem = _ca_problem(cert, purpose) or _critical_problem(cert)
            if not problem and not partial and not _self_signed(cert):
                problem = "is not self-signed (a partial chain)"
        except Exception as err:  # an extension or key cryptography cannot read
            problem = f"cannot be read whole ({type(err).__name__}: {err})"
        if problem:
            return f"the CA {name!r} {problem}", *NO_CHANGE
    return "", valid_from, valid_until


def chain_problem(
    chain: list[bytes], checks: Checks, *, purpose: Purpose = "server", now: float | None = None
) -> str:
    """What OpenSSL would refuse in a peer's certificate chain (DER, the peer's own first)
    that rustls's verification does not look at ("" if nothing): the peer's keyUsage (and
    Netscape cert type) must allow TLS (a server: digitalSignature, keyEncipherment or
    keyAgreement; a client: digitalSignature or keyAgreement); the path OpenSSL builds up
    to a trust anchor (`_path`: its links' key identifiers and signatures) must exist, and
    every CA on it be allowed to sign certificates for that purpose within its path length,
    no more of them than the anchor's path length allows (self-issued ones not counted, as
    OpenSSL does not). CAs sent off the path are not looked at, as OpenSSL does not. A
    certificate cryptography cannot read whole is refused (OpenSSL might take it: refused,
    not let through unchecked). `now`: a POSIX time (the clock's, if not given)."""
    if not chain:
        return "no certificate was sent"
    when = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
    try:
        return _chain_problem(chain, checks, purpose, when)
    except Exception as err:  # a certificate, an extension cryptography cannot read
        return f"a certificate sent cannot be read whole ({type(err).__name__}: {err})"


def _chain_problem(chain: list[bytes], checks: Checks, purpose: Purpose, now: dt.datetime) -> str:
    certs = [x509.load_der_x509_certificate(der) for der in chain]
    usage = _extension(certs[0], x509.KeyUsage)
    if usage is not None and not (
        usage.digital_signature
        or usage.key_agreement
        or (purpose == "server" and usage.key_encipherment)
    ):
        return f"the {purpose}'s certificate may not be used for TLS (keyUsage)"
    if not _netscape_allows(certs[0], _NS_SSL_SERVER if purpose == "server" else _NS_SSL_CLIENT):
        return f"the {purpose}'s certificate may not be used for TLS (Netscape cert type)"
    path = _path(certs, chain, checks, now)
    if isinstance(path, str):
        return path
    between, anchor = path
    below = 0  # CAs under the one looked at, self-issued ones not counted (OpenSSL's EXFLAG_SI)
    for cert in between:
        problem = _ca_problem(cert, purpose)
        length = (_extension(cert, x509.BasicConstraints) or _NOT_CA).path_length
        if not problem and length is not None and below > length:
            problem = "is past its path length"
        if problem:
            return f"the CA {cert.subject.rfc4514_string()!r} the {purpose} sent {problem}"
        below += cert.issuer != cert.subject
    limit = (_extension(anchor, x509.BasicConstraints) or _NOT_CA).path_length
    if limit is not None and below > limit:
        return f"{below} intermediate CAs where the trusted CA allows {limit}"
    return ""


def _path(
    certs: list[x509.Certificate], chain: list[bytes], checks: Checks, now: dt.datetime
) -> tuple[list[x509.Certificate], x509.Certificate] | str:
    """The CAs the peer sent that lie between its certificate and a trust anchor, and the
    anchor, as OpenSSL builds the path: a trusted issuer first, else among those sent the
    first valid now (else the one valid last); an issuer only where the names and key
    identifiers agree. Then each link's signature is verified, and OpenSSL tries no other
    issuer where one fails: neither is one tried here (a CA of the same name sent first
    cannot stand in for the one that signed). A CA sent that signed itself and is not
    trusted ends the path, refused. Otherwise the problem OpenSSL would name."""
    sent = list(zip(chain[1:], certs[1:], strict=True))
    between: list[x509.Certificate] = []
    cert = certs[0]
    while True:
        if cert in checks.anchor_certs:
            return between, cert  # trusted itself (a partial chain's may not be self-signed)
        name = cert.subject.rfc4514_string()
        if between and cert.issuer == cert.subject and _names_own_key(cert):
            return f"the CA {name!r} the peer sent signed itself and is not trusted"
        wanted = _authority_key_id(cert)

        def linked(issuer: x509.Certificate, wanted: bytes | None = wanted) -> bool:
            return wanted is None or _subject_key_id(issuer) in (None, wanted)

        trusted = [c for c in checks.anchor_certs if c.subject == cert.issuer]
        named = [(d, c) for d, c in sent if c.subject == cert.issuer and c is not cert]
        anchor = next((c for c in trusted if linked(c)), None)
        der = b""
        if anchor is not None:
            issuer = anchor
        else:
            candidates = [(d, c) for d, c in named if linked(c)]
            if not candidates:
                if trusted or named:
                    return (
                        f"the certificate of {name!r} names an issuer key no trusted or sent "
                        "CA of that name has (authority key identifier)"
                    )
                return f"no trusted or sent CA issued the certificate of {name!r}"
            valid = [p for p in candidates if _valid_at(p[1], now)]
            der, issuer = valid[0] if valid else max(candidates, key=lambda p: _ends(p[1]))
            if not valid:
                return f"the CA {issuer.subject.rfc4514_string()!r} the peer sent is not valid now"
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return (
                f"the certificate of {name!r} is not signed by the CA "
                f"{issuer.subject.rfc4514_string()!r} its chain leads to"
            )
        if anchor is not None or der in checks.anchors:  # (an anchor sent along)
            return between, issuer
        sent.remove((der, issuer))
        between.append(issuer)
        cert = issuer


def _valid_at(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _ends(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_after_utc


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
    # (anyExtendedKeyUsage alone is not enough for OpenSSL's TLS purposes)
    if purposes is not None and _PURPOSE_OID[purpose] not in set(purposes):
        return f"is not for TLS {purpose}s (extendedKeyUsage)"
    if not _netscape_allows(cert, _NS_SSL_CA):
        return "is not a CA for TLS (Netscape cert type)"
    return ""


# critical extensions OpenSSL 3 handles (X509_supported_extension); any other critical one
# makes it refuse the certificate, a trust anchor too, where webpki ignores it on anchors
_HANDLED_CRITICAL = {
    x509.ObjectIdentifier(oid)
    for oid in (
        "2.16.840.1.113730.1.1",  # Netscape cert type
        "2.5.29.15",  # keyUsage
        "2.5.29.17",  # subjectAltName
        "2.5.29.19",  # basicConstraints
        "2.5.29.32",  # certificatePolicies
        "2.5.29.31",  # CRL distribution points
        "2.5.29.37",  # extendedKeyUsage
        "1.3.6.1.5.5.7.1.7",  # IP address blocks (RFC 3779)
        "1.3.6.1.5.5.7.1.8",  # AS identifiers (RFC 3779)
        "1.3.6.1.5.5.7.48.1.5",  # OCSP no check
        "2.5.29.36",  # policyConstraints
        "1.3.6.1.5.5.7.1.14",  # proxyCertInfo
        "2.5.29.30",  # nameConstraints
        "2.5.29.33",  # policyMappings
        "2.5.29.54",  # inhibitAnyPolicy
    )
}


def _critical_problem(cert: x509.Certificate) -> str:
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _HANDLED_CRITICAL:
            return f"carries a critical extension OpenSSL does not handle ({ext.oid.dotted_string})"
    return ""


_NETSCAPE_CERT_TYPE = x509.ObjectIdentifier("2.16.840.1.113730.1.1")
_NS_SSL_CLIENT, _NS_SSL_SERVER, _NS_SSL_CA = 0x80, 0x40, 0x04


def _netscape_allows(cert: x509.Certificate, bit: int) -> bool:
    """Whether the certificate's Netscape cert type, if it has one, has `bit` (its first
    byte: a DER BIT STRING, tag 3, length, unused bits, the bits)."""
    try:
        raw = cert.extensions.get_extension_for_oid(_NETSCAPE_CERT_TYPE).value
    except x509.ExtensionNotFound:
        return True
    der = raw.value if isinstance(raw, x509.UnrecognizedExtension) else b""
    return len(der) >= 4 and der[0] == 3 and bool(der[3] & bit)


def _authority_key_id(cert: x509.Certificate) -> bytes | None:
    found = _extension(cert, x509.AuthorityKeyIdentifier)
    return found.key_identifier if found is not None else None


def _subject_key_id(cert: x509.Certificate) -> bytes | None:
    found = _extension(cert, x509.SubjectKeyIdentifier)
    return found.digest if found is not None else None


def _extension(cert: x509.Certificate, kind: type[_Ext]) -> _Ext | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _self_signed(cert: x509.Certificate) -> bool:
    """Issued by itself, signed with its own key (a name alone proves nothing), and, where
    it names its issuer's key, naming its own (OpenSSL's test of a self-signed CA)."""
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return _names_own_key(cert)


def _names_own_key(cert: x509.Certificate) -> bool:
    """Where it names its issuer's key, it names its own (with its name as its issuer:
    OpenSSL's self-signed flag, no signature checked)."""
    wanted, own = _authority_key_id(cert), _subject_key_id(cert)
    return wanted is None or own is None or wanted == own
