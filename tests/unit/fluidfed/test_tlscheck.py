"""fluidfed/tlscheck.py: what OpenSSL checks in a certificate chain that rustls's webpki
does not, on certificates made here with what OpenSSL looks at set as each case needs."""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fluidfed import pki, tlscheck


def _usage(*, cert_sign: bool = False, signature: bool = True) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signature, content_commitment=not signature, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _cert(
    name: str,
    *,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
    days: tuple[int, int] = (-1, 365),
    ca: bool | None = True,
    path_length: int | None = None,
    usage: x509.KeyUsage | None = None,
    purposes: list[x509.ObjectIdentifier] | None = None,
    issuer_name: str = "",
    ip: str = "",
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    own_key_id: bool = False,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate with what OpenSSL looks at set as asked: self-signed unless `issuer`
    (name, key) signs it; `issuer_name` names another issuer on a self-signed one."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    by_name, by_key = issuer if issuer is not None else (subject, key)
    if issuer_name:
        by_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(by_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
        .add_extension(usage or _usage(cert_sign=bool(ca)), critical=True)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca, path_length), critical=True)
    if purposes is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
    if ip:
        names = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))])
        builder = builder.add_extension(names, critical=False)
    if own_key_id:
        builder = builder.add_extension(_keyid(key), critical=False)
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(by_key, hashes.SHA256()), key


def _ca(**kind: Any) -> bytes:
    return _cert("test CA", **kind)[0].public_bytes(serialization.Encoding.PEM)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ({"days": (-30, -1)}, "has expired"),
        ({"days": (1, 30)}, "not valid yet"),
        ({"ca": False}, "not a CA (CA:FALSE)"),
        ({"usage": _usage(cert_sign=False)}, "may not sign certificates"),
        ({"purposes": [ExtendedKeyUsageOID.CLIENT_AUTH]}, "not for TLS servers"),
        ({"issuer_name": "another CA"}, "not self-signed"),
        # named as its own issuer, but signed by another key: a name proves nothing
        ({"issuer": (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")]),
                     ec.generate_private_key(ec.SECP256R1()))}, "not self-signed"),
        # (OpenSSL may trust a CA saying nothing of itself: rustls is not given it either)
        ({"ca": None}, "does not say it is a CA"),
    ],
)  # fmt: skip
def test_anchors_openssl_would_not_take_as_they_are_are_named(
    kind: dict[str, Any], said: str
) -> None:
    """rustls (webpki) takes every CA given as a trust anchor as it is; OpenSSL checks it:
    each CA OpenSSL would not trust is named, with why."""
    good = _ca()
    bad = _ca(**kind)
    now = time.time()
    problem, _, _ = tlscheck.anchors_problem(good + bad, now, partial=False)
    assert said in problem
    assert tlscheck.anchors_problem(good, now, partial=False)[0] == ""


def test_what_openssl_would_refuse_in_a_chain_is_named() -> None:
    """What webpki does not look at in the chain a peer sends: its certificate's
    keyUsage, and the CAs it sends (CA, keyUsage, extendedKeyUsage, path length)."""
    root, root_key = _cert("root")
    by_root = (root.subject, root_key)
    good_leaf, _ = _cert("worker", issuer=by_root, ca=False, usage=_usage())
    none = tlscheck.checks_for(root.public_bytes(serialization.Encoding.PEM))  # nothing else
    assert tlscheck.chain_problem([_der(good_leaf)], none) == ""
    assert tlscheck.chain_problem([], none) == "no certificate was sent"
    no_tls, _ = _cert("worker", issuer=by_root, ca=False, usage=_usage(signature=False))
    assert "may not be used for TLS" in tlscheck.chain_problem([_der(no_tls)], none)
    # a client's keyEncipherment alone is no use for TLS; a server's is
    enciphers = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=True,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    rsa_only, _ = _cert("peer", issuer=by_root, ca=False, usage=enciphers)
    assert tlscheck.chain_problem([_der(rsa_only)], none) == ""
    assert "client's certificate" in tlscheck.chain_problem(
        [_der(rsa_only)], none, purpose="client"
    )

    def through(**kind: Any) -> str:
        mid, mid_key = _cert("intermediate", issuer=by_root, **kind)
        leaf, _ = _cert("worker", issuer=(mid.subject, mid_key), ca=False, usage=_usage())
        return tlscheck.chain_problem([_der(leaf), _der(mid)], none)

    assert through() == ""
    assert "may not sign certificates" in through(usage=_usage(cert_sign=False))
    assert "not a CA" in through(ca=False, usage=_usage(cert_sign=True))
    assert "not for TLS servers" in through(purposes=[ExtendedKeyUsageOID.CLIENT_AUTH])
    server_mid, server_mid_key = _cert(
        "mid", issuer=by_root, purposes=[ExtendedKeyUsageOID.SERVER_AUTH]
    )
    client, _ = _cert(
        "agent", issuer=(server_mid.subject, server_mid_key), ca=False, usage=_usage()
    )
    assert "not for TLS clients" in tlscheck.chain_problem(
        [_der(client), _der(server_mid)], none, purpose="client"
    )  # fmt: skip
    assert through(purposes=[ExtendedKeyUsageOID.SERVER_AUTH]) == ""
    # path length: an intermediate allowing none under it, with one under it
    upper, upper_key = _cert("upper", issuer=by_root, path_length=0)
    lower, lower_key = _cert("lower", issuer=(upper.subject, upper_key))
    leaf, _ = _cert("worker", issuer=(lower.subject, lower_key), ca=False, usage=_usage())
    assert "past its path length" in tlscheck.chain_problem(
        [_der(leaf), _der(lower), _der(upper)], none
    )
    # and the trusted CA's own: a root allowing no intermediate under it (an anchor the
    # server sends along is not counted)
    low_root, low_root_key = _cert("strict root", path_length=0)
    strict = tlscheck.checks_for(low_root.public_bytes(serialization.Encoding.PEM))
    mid, mid_key = _cert("intermediate", issuer=(low_root.subject, low_root_key))
    leaf, _ = _cert("worker", issuer=(mid.subject, mid_key), ca=False, usage=_usage())
    assert "where the trusted CA allows 0" in tlscheck.chain_problem(
        [_der(leaf), _der(mid)], strict
    )
    direct, _ = _cert("worker", issuer=(low_root.subject, low_root_key), ca=False, usage=_usage())
    assert tlscheck.chain_problem([_der(direct), _der(low_root)], strict) == ""
    # a chain that reaches no trusted CA is no chain OpenSSL takes
    assert "no trusted or sent CA issued" in tlscheck.chain_problem([_der(leaf)], strict)


def test_cas_sent_off_the_path_are_not_looked_at() -> None:
    """OpenSSL builds the path from the peer's certificate up, a trusted issuer first,
    and never looks at a CA the peer sent that is not on it: neither is it held against
    the peer here (a bundle with extra CAs is common), nor counted against a path length."""
    root, root_key = _cert("root", path_length=1)
    anchors = tlscheck.checks_for(root.public_bytes(serialization.Encoding.PEM))
    mid, mid_key = _cert("intermediate", issuer=(root.subject, root_key))
    leaf, _ = _cert("worker", issuer=(mid.subject, mid_key), ca=False, usage=_usage())
    not_a_ca, not_a_ca_key = _cert(
        "stray", issuer=(root.subject, root_key), ca=False, usage=_usage()
    )
    other, _ = _cert("another intermediate", issuer=(root.subject, root_key))
    for extra in (not_a_ca, other):
        assert tlscheck.chain_problem([_der(leaf), _der(mid), _der(extra)], anchors) == ""
        assert tlscheck.chain_problem([_der(leaf), _der(extra), _der(mid)], anchors) == ""
    # on the path, the same CA is held against the peer, and so is one more intermediate
    below_stray, _ = _cert("worker", issuer=(not_a_ca.subject, not_a_ca_key), ca=False,
                           usage=_usage())  # fmt: skip
    assert "not a CA" in tlscheck.chain_problem([_der(below_stray), _der(not_a_ca)], anchors)
    lower, lower_key = _cert("lower", issuer=(mid.subject, mid_key))
    deep, _ = _cert("worker", issuer=(lower.subject, lower_key), ca=False, usage=_usage())
    assert "where the trusted CA allows 1" in tlscheck.chain_problem(
        [_der(deep), _der(lower), _der(mid)], anchors
    )
    # a trusted issuer is taken before a sent one of the same name (OpenSSL's trusted first)
    impostor, _ = _cert("root", ca=False, usage=_usage())
    assert tlscheck.chain_problem([_der(leaf), _der(mid), _der(impostor)], anchors) == ""


def test_a_ca_sent_cannot_stand_in_for_the_one_that_signed() -> None:
    """The second review of the path: OpenSSL picks an issuer by name and key identifier,
    then verifies the signature and tries no other. A CA of the issuer's name sent first
    (a decoy, fine by every check) must not hide the one that signed (which fails one);
    an issuer valid now is taken before an expired one; a self-issued CA is not counted
    against a path length; a CA the peer sent that signed itself ends the path."""
    root, root_key = _cert("root")
    anchors = tlscheck.checks_for(root.public_bytes(serialization.Encoding.PEM))
    signer, signer_key = _cert("mid", issuer=(root.subject, root_key), usage=_usage())
    leaf, _ = _cert("worker", issuer=(signer.subject, signer_key), ca=False, usage=_usage())
    decoy, _ = _cert("mid", issuer=(root.subject, root_key))
    assert "may not sign certificates" in tlscheck.chain_problem(
        [_der(leaf), _der(signer)], anchors
    )
    assert "is not signed by the CA 'CN=mid'" in tlscheck.chain_problem(
        [_der(leaf), _der(decoy), _der(signer)], anchors
    )
    # the same with a trusted CA of the name that did not sign: refused, not looked past
    other_root, _ = _cert("root")
    both = tlscheck.checks_for(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (other_root, root))
    )
    good_mid, good_mid_key = _cert("mid", issuer=(root.subject, root_key))
    below, _ = _cert("worker", issuer=(good_mid.subject, good_mid_key), ca=False, usage=_usage())
    assert "is not signed by the CA 'CN=root'" in tlscheck.chain_problem(
        [_der(below), _der(good_mid)], both
    )
    # valid now first: an expired CA of the name sent first is passed over for a valid one
    key = ec.generate_private_key(ec.SECP256R1())
    expired, _ = _cert("mid", issuer=(root.subject, root_key), days=(-30, -1), key=key)
    valid, _ = _cert("mid", issuer=(root.subject, root_key), key=key)
    under, _ = _cert("worker", issuer=(valid.subject, key), ca=False, usage=_usage())
    assert tlscheck.chain_problem([_der(under), _der(expired), _der(valid)], anchors) == ""
    assert "not valid now" in tlscheck.chain_problem([_der(under), _der(expired)], anchors)
    # a self-issued CA (a key rollover's link) is not counted against a path length
    # (key identifiers tell the link from the root of the same name, as OpenSSL needs)
    strict_root, strict_key = _cert("strict root", path_length=0, own_key_id=True)
    strict = tlscheck.checks_for(strict_root.public_bytes(serialization.Encoding.PEM))
    new_key = ec.generate_private_key(ec.SECP256R1())

    def issued_by(k: ec.EllipticCurvePrivateKey) -> tuple[tuple[x509.ExtensionType, bool]]:
        return ((x509.AuthorityKeyIdentifier.from_issuer_public_key(k.public_key()), False),)

    link, _ = _cert("strict root", issuer=(strict_root.subject, strict_key), key=new_key,
                    own_key_id=True, extra=issued_by(strict_key))  # fmt: skip
    rolled, _ = _cert("worker", issuer=(link.subject, new_key), ca=False, usage=_usage(),
                      extra=issued_by(new_key))  # fmt: skip
    assert tlscheck.chain_problem([_der(rolled), _der(link)], strict) == ""
    # a CA the peer sent that signed itself, not trusted, ends the path: refused
    untrusted, untrusted_key = _cert("private root")
    cross, _ = _cert("private root", issuer=(root.subject, root_key), key=untrusted_key)
    inner, _ = _cert("worker", issuer=(untrusted.subject, untrusted_key), ca=False,
                     usage=_usage())  # fmt: skip
    assert "signed itself and is not trusted" in tlscheck.chain_problem(
        [_der(inner), _der(untrusted), _der(cross)], anchors
    )
    assert tlscheck.chain_problem([_der(inner), _der(cross)], anchors) == ""


def test_a_ca_past_its_end_is_named_and_the_answer_holds_until_its_end() -> None:
    soon = _ca(days=(-1, 1))
    now = time.time()
    problem, valid_from, valid_until = tlscheck.anchors_problem(soon, now, partial=False)
    assert problem == "" and valid_from <= now < valid_until
    problem, _, _ = tlscheck.anchors_problem(soon, valid_until + 1, partial=False)
    assert "has expired" in problem


def _keyid(key: ec.EllipticCurvePrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def test_what_openssl_refuses_beyond_keyusage_is_named_too() -> None:
    """The third review's cases: anyExtendedKeyUsage alone on a CA, a critical extension
    OpenSSL does not handle on an anchor, key identifiers that do not link a certificate
    to its issuer, a Netscape cert type without the TLS bit; and a certificate
    cryptography cannot read whole is a problem named, never an exception."""
    now = time.time()
    any_eku = _ca(purposes=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])
    assert "not for TLS servers" in tlscheck.anchors_problem(any_eku, now, partial=False)[0]
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4.5"), b"\x05\x00")
    odd = _ca(extra=((unknown, True),))
    assert "critical extension" in tlscheck.anchors_problem(odd, now, partial=False)[0]
    assert tlscheck.anchors_problem(_ca(extra=((unknown, False),)), now, partial=False)[0] == ""
    # an anchor naming another key as its issuer's is not self-signed to OpenSSL
    other = ec.generate_private_key(ec.SECP256R1())
    rekeyed = _ca(
        own_key_id=True,
        extra=((x509.AuthorityKeyIdentifier(_keyid(other).digest, None, None), False),),
    )
    assert "not self-signed" in tlscheck.anchors_problem(rekeyed, now, partial=False)[0]

    root, root_key = _cert(
        "root", extra=((_keyid(ec.generate_private_key(ec.SECP256R1())), False),)
    )
    checks = tlscheck.checks_for(root.public_bytes(serialization.Encoding.PEM))
    by_root = (root.subject, root_key)
    akid = x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key())
    leaf, _ = _cert("worker", issuer=by_root, ca=False, usage=_usage(), extra=((akid, False),))
    assert "authority key identifier" in tlscheck.chain_problem([_der(leaf)], checks)
    # linked where the identifiers agree: fluidfed's own CA and certificates, both ways
    ca = pki.new_ca("fluidfed-test-ca")
    own = tlscheck.checks_for(ca.cert_pem)
    assert tlscheck.anchors_problem(ca.cert_pem, now, partial=False)[0] == ""
    assert tlscheck.anchors_problem(ca.cert_pem, now, partial=False, purpose="client")[0] == ""
    for server in (True, False):
        pair = pki.issue(ca, "worker-0", hosts=("127.0.0.1",), server=server, client=not server)
        der = x509.load_pem_x509_certificate(pair.cert_pem).public_bytes(serialization.Encoding.DER)
        purpose: tlscheck.Purpose = "server" if server else "client"
        assert tlscheck.chain_problem([der], own, purpose=purpose) == "", purpose
    ns_client_only = x509.UnrecognizedExtension(
        x509.ObjectIdentifier("2.16.840.1.113730.1.1"), b"\x03\x02\x07\x80"
    )
    leaf, _ = _cert(
        "worker", issuer=by_root, ca=False, usage=_usage(), extra=((ns_client_only, False),)
    )
    assert "Netscape cert type" in tlscheck.chain_problem([_der(leaf)], checks)
    assert tlscheck.chain_problem([_der(leaf)], checks, purpose="client") == ""
    # a certificate cryptography cannot read: named, not raised
    good, _ = _cert("worker", issuer=by_root, ca=False, usage=_usage())
    raw = good.public_bytes(serialization.Encoding.DER)
    assert tlscheck.chain_problem([raw, b"not a certificate"], checks).startswith(
        "a certificate sent cannot be read whole"
    )
