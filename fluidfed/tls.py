"""TLS for the hub and its clients, on the standard library's ssl.

Verification is never optional: a client context always checks the server's certificate,
against the given CA file or the system's trust store. A file that cannot be read or is not
a certificate (or key) is a ConfigError naming the file and the option it came from.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from fluidfed import pki
from fluidfed.errors import ConfigError, Problem

log = logging.getLogger("fluidfed.tls")


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """How a client verifies the hub (and, for mutual TLS, who it is)."""

    ca_file: str = ""  # "" : the system's trust store
    cert_file: str = ""  # a client certificate for mutual TLS ...
    key_file: str = ""  # ... and its key


def _problem(option: str, path: str, err: Exception) -> ConfigError:
    return ConfigError.one(
        f"cannot use it for TLS ({err}); give a readable PEM file", file=path, path=option
    )


class RecordedContext(ssl.SSLContext):
    """An `ssl.SSLContext` that also keeps the PEM it was given (its own certificate chain
    and key, the CAs it verifies peers against): what fluidfed's rustls engine is built
    from (`fluidfed.tlsserve` for servers, `fluidfed.tlsclient` for the sidecar's block
    receive). Every load counts as a new `generation`, so a certificate or CA loaded again
    (rotation) reaches new connections on either engine. What rustls cannot be given is
    left to OpenSSL: a key with a password (`pem` is None, `unrecorded_cert`), and CAs not
    loaded from PEM (`unrecorded_cas`: a `capath` directory, the system's defaults). rustls
    uses the versions between `minimum_version` and `maximum_version` (1.2 and 1.3 at most;
    `OP_NO_TLSv1_2`/`OP_NO_TLSv1_3` in `options` count too) with its own cipher suites
    (`set_ciphers` and the other `options` are OpenSSL's alone)."""

    generation = 0
    pem: tuple[bytes, bytes] | None = None  # (certificate chain, key)
    unrecorded_cert = False  # a certificate whose key has a password: `pem` is None
    ca_pem = b""  # the CAs peers are verified against
    unrecorded_cas = False
    # what the engine built from this context (its rustls configuration, or None where
    # rustls cannot take it), the state it was built from, and the window of time it holds
    # for (a CA it trusts expires, or begins): built again when either says so
    engine_config: tuple[tuple[Any, ...], Any, float, float] | None = None

    def engine_kept(self, state: tuple[Any, ...], now: float) -> tuple[bool, Any]:
        """(True, what the engine kept) if it was built from `state` and holds at `now`."""
        kept = self.engine_config
        if kept is not None and kept[0] == state and kept[2] <= now < kept[3]:
            return True, kept[1]
        return False, None

    def engine_keep(self, state: tuple[Any, ...], built: Any, window: tuple[float, float]) -> None:
        self.engine_config = (state, built, *window)

    def load_cert_chain(
        self,
        certfile: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        keyfile: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None,
        password: Any = None,
    ) -> None:
        # read here, then by OpenSSL: a pair rewritten in place between the two reads
        # could differ; fluidfed's own rotations load from files nobody else writes
        chain = Path(os.fsdecode(certfile)).read_bytes()
        key = Path(os.fsdecode(keyfile)).read_bytes() if keyfile is not None else chain
        super().load_cert_chain(certfile, keyfile, password)
        self.pem = (chain, key) if password is None else None
        self.unrecorded_cert = password is not None
        self.generation += 1

    def load_verify_locations(
        self,
        cafile: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None,
        capath: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None,
        cadata: Any = None,  # PEM text, or DER bytes
    ) -> None:
        super().load_verify_locations(cafile, capath, cadata)
        if cafile is not None:
            self.ca_pem += Path(os.fsdecode(cafile)).read_bytes() + b"\n"
        if isinstance(cadata, str):
            self.ca_pem += cadata.encode() + b"\n"
        elif cadata is not None:  # DER
            self.ca_pem += ssl.DER_cert_to_PEM_cert(bytes(cadata)).encode()
        if capath is not None:  # a hashed directory, looked up by OpenSSL as it verifies
            self.unrecorded_cas = True
        self.generation += 1

    def load_default_certs(self, purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH) -> None:
        super().load_default_certs(purpose)
        self.unrecorded_cas = True
        self.generation += 1

    def set_default_verify_paths(self) -> None:
        super().set_default_verify_paths()
        self.unrecorded_cas = True
        self.generation += 1


class ServerContext(RecordedContext):
    """A serving context either of `fluidfed.tlsserve`'s engines serves (its `ca_pem`: the
    CAs client certificates are verified against)."""


class ClientContext(RecordedContext):
    """A verifying client context (the server's certificate chains to `ca_pem` and names the
    host) that `fluidfed.tlsclient` can also run on rustls."""


def _client(cafile: str = "", cadata: str | None = None) -> ClientContext:
    """What `ssl.create_default_context()` makes for a client, as a ClientContext: the
    server's certificate verified, its host name checked, against `cafile`/`cadata` or
    else the system's trust store."""
    ctx = ClientContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    if sys.version_info >= (3, 13):  # what create_default_context adds there
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
    if cafile or cadata is not None:
        ctx.load_verify_locations(cafile=cafile or None, cadata=cadata)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return ctx


def server_context(cert_file: str, key_file: str, client_ca_file: str = "") -> ServerContext:
    """A serving context; with `client_ca_file`, clients may present a certificate signed by
    that CA (checked when presented: whether one is required is the caller's policy)."""
    ctx = ServerContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as err:
        raise _problem("tls_cert_file/tls_key_file", cert_file, err) from None
    if client_ca_file:
        try:
            ctx.load_verify_locations(cafile=client_ca_file)
        except (OSError, ssl.SSLError) as err:
            raise _problem("client_ca_file", client_ca_file, err) from None
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(tls: ClientTLS) -> ClientContext:
    """A verifying client context: the hub's certificate must chain to `ca_file` (or the
    system's roots) and name the host."""
    try:
        ctx = _client(cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as err:
        raise _problem("ca_file", tls.ca_file, err) from None
    if tls.cert_file or tls.key_file:
        if not (tls.cert_file and tls.key_file):
            raise ConfigError(
                [
                    Problem(
                        "a client certificate needs both client_cert_file and client_key_file",
                        path="client_cert_file" if not tls.cert_file else "client_key_file",
                    )
                ]
            )
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as err:
            raise _problem("client_cert_file/client_key_file", tls.cert_file, err) from None
    return ctx


def trusting(ca_pem: str) -> ClientContext:
    """A verifying client context that trusts only the CA `ca_pem` (PEM text): the agent's,
    for the workers of a binding whose CA it keeps."""
    ctx = _client(cadata=ca_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# how often files renewed in place are looked at (`Watched`; SIGHUP: at once)
RECHECK = 30.0


def _stamp(*files: str) -> tuple[tuple[int, int], ...]:
    """What tells a changed file: its inode and mtime, each read through the Secret
    volume's symlinks (the current files); (0, 0) for one that cannot be read."""
    out = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            out.append((0, 0))
        else:
            out.append((st.st_ino, st.st_mtime_ns))
    return tuple(out)


class Watched:
    """Files read again when they change (a Secret volume that cert-manager or the agent
    renews): `changed` says their bytes when a file's stamp moved and the bytes differ
    from those in use, once; the taker says whether it put them to use (`taken`) or not
    (`failed`: not offered again until the files change again). The same bytes again (a
    Secret volume's other keys updated) are not offered. Stamps are looked at before the
    files are read: a change in between is seen at the next look."""

    def __init__(self, *files: str) -> None:
        self.files = files
        self._seen = _stamp(*files)
        self._loaded = _digest(*(Path(f) for f in files))
        self._failed: tuple[tuple[int, int], ...] | None = None
        self._read: tuple[tuple[tuple[int, int], ...], bytes] | None = None

    def changed(self) -> tuple[bytes, ...] | None:
        """The files' bytes if they changed since those in use, else None; OSError when
        one cannot be read (then `failed`)."""
        stamp = _stamp(*self.files)
        if stamp in (self._seen, self._failed):
            return None
        self._read = (stamp, b"")
        data = tuple(Path(f).read_bytes() for f in self.files)
        digest = _digest(*data)
        if digest == self._loaded:
            self._seen, self._read = stamp, None
            return None
        self._read = (stamp, digest)
        return data

    def taken(self) -> None:
        """What `changed` said last is in use now."""
        assert self._read is not None
        self._seen, self._loaded = self._read

    def failed(self) -> None:
        """What `changed` said last (or could not read) is not used: not offered again
        until the files change again."""
        assert self._read is not None
        self._failed = self._read[0]


class Served:
    """A serving context whose certificate and key are read again when their files change
    (a Secret volume the agent or cert-manager updates on renewal or rotation): new
    handshakes present the new pair, connections already open keep theirs, so no read is
    dropped. With `client_ca_file`, the CA client certificates are checked against is read
    again too, when it changes: a new CA trusted beside the old (`Trusted`)."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str = "") -> None:
        self.cert_file, self.key_file = cert_file, key_file
        # (looked at, and read, before the context reads them: a change in between is
        # seen as one at the next look, and loaded then)
        self._pair = Watched(cert_file, key_file)
        ca = Watched(client_ca_file) if client_ca_file else None
        self.context = server_context(cert_file, key_file, client_ca_file)
        self.clients = Trusted(client_ca_file, self.context, watched=ca) if ca else None

    def reload(self) -> bool:
        """Load what changed again (the pair, the client CA); True when something new is
        in use (`reload_pair`, `Trusted.reload`)."""
        pair = self.reload_pair()
        return (self.clients.reload() if self.clients is not None else False) or pair

    def reload_pair(self) -> bool:
        """Load the pair again if a file changed; True when a new one is in use. A pair
        that does not load, or does not match (a certificate replaced before its key), keeps
        the last one: False, a warning once, and the next change is tried again. The files
        are read once, checked on a context of their own (from memory: no file is written,
        a pod's root may be read-only), and only then loaded into the live one from the
        same bytes (loading a mismatched pair into it would leave it with the new
        certificate and no key). The same bytes again (a Secret volume's other keys
        updated) load nothing."""
        try:
            got = self._pair.changed()
        except OSError as err:
            return self._failing(f"cannot read it ({err})")
        if got is None:
            return False
        cert, key = got
        try:
            check_pair(cert, key)
        except ssl.SSLError as err:
            return self._failing(f"not a certificate and its key ({err})")
        with in_memory(cert, "tls.crt") as c, in_memory(key, "tls.key") as k:
            self.context.load_cert_chain(c, k)
        self._pair.taken()
        return True

    def _failing(self, why: str) -> bool:
        self._pair.failed()
        log.warning(
            "%s and %s changed but were not loaded: %s; the pair before stays in use until "
            "they change again", self.cert_file, self.key_file, why,
        )  # fmt: skip
        return False


def check_pair(cert: bytes, key: bytes) -> None:
    """ssl.SSLError unless `cert` (PEM, a chain) and `key` load as a certificate and its
    key; read from memory, no file written (a pod's root may be read-only)."""
    with in_memory(cert, "tls.crt") as c, in_memory(key, "tls.key") as k:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(c, k)


class Trusted:
    """A verifying client context trusting the CA in `ca_file`, which is read again when it
    changes: a new CA is trusted beside the old (what handshakes already verified, and
    the workers not yet renewed, still count)."""

    def __init__(
        self,
        ca_file: str,
        context: ssl.SSLContext | None = None,
        *,
        watched: Watched | None = None,
    ) -> None:
        """With `context`, the CA is added to that one (already in use by connections
        made earlier) instead of a new context trusting it alone; `watched`: it holds the
        CA already, read as `watched` saw the file."""
        self.ca_file = ca_file
        self.context: ssl.SSLContext
        self._file = watched or Watched(ca_file)
        if context is None:
            self.context = client_context(ClientTLS(ca_file=ca_file))
        elif watched is not None:
            self.context = context
        else:
            try:
                context.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as err:
                raise _problem("ca_file", ca_file, err) from None
            self.context = context

    def reload(self) -> bool:
        """Trust the file's CAs too if it changed; True when new ones are trusted. The
        same bytes again (a Secret volume's other keys updated) load nothing; a file that
        does not load is said once and tried again at its next change."""
        try:
            got = self._file.changed()
            if got is None:
                return False
            self.context.load_verify_locations(cadata=got[0].decode())
        except (OSError, ssl.SSLError, UnicodeDecodeError, ValueError) as err:
            self._file.failed()
            log.warning(
                "%s changed but was not loaded (%s): the CAs before stay trusted until it "
                "changes again", self.ca_file, err,
            )  # fmt: skip
            return False
        self._file.taken()
        return True


def _digest(*parts: bytes | Path) -> bytes:
    """What tells files' contents apart (a path read; "" for one that cannot be)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            try:
                part = part.read_bytes()
            except OSError:
                part = b""
        h.update(len(part).to_bytes(8, "big") + part)
    return h.digest()


@contextlib.contextmanager
def in_memory(data: bytes, name: str) -> Iterator[str]:
    """`data` as a path to read it from, without a file on any filesystem (a memfd)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def peer_certificate(transport: Any) -> bytes | None:
    """The verified certificate (DER) the peer of an HTTPS server's connection presented,
    on either TLS engine (`fluidfed.tlsserve`); None without one, or over plain HTTP."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der: bytes | None = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    return der


def peer_common_name(der: bytes | None) -> str | None:
    """The common name of a peer certificate (DER, as `SSLObject.getpeercert(True)` gives)."""
    if not der:
        return None
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class SelfSigned:
    ca_file: Path
    cert_file: Path
    key_file: Path


def self_signed(directory: Path, hosts: tuple[str, ...]) -> SelfSigned:
    """A CA and a serving certificate for `hosts` in `directory`, for development: the CA is
    kept across restarts (clients keep trusting it), the serving certificate is made anew."""
    ca = pki.load_or_make_ca(directory, "fluidfed-hub-ca")
    leaf = pki.issue(ca, "fluidfed-hub", server=True, hosts=hosts)
    cert = pki.write(directory / "hub.crt", leaf.cert_pem)
    key = pki.write(directory / "hub.key", leaf.key_pem, private=True)
    return SelfSigned(ca_file=directory / "ca.crt", cert_file=cert, key_file=key)


def issue_client(ca_dir: Path, cluster: str, out: Path) -> tuple[Path, Path]:
    """A client certificate for `cluster`, signed by the CA in `ca_dir` (the self-signed
    hub's): what an agent presents for mutual TLS. Written to `out`/<cluster>.crt/.key."""
    ca = pki.load_or_make_ca(ca_dir, "fluidfed-hub-ca")
    leaf = pki.issue(ca, cluster, client=True)
    out.mkdir(parents=True, exist_ok=True)
    cert = pki.write(out / f"{cluster}.crt", leaf.cert_pem)
    key = pki.write(out / f"{cluster}.key", leaf.key_pem, private=True)
    return cert, key
