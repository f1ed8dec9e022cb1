"""Client TLS on a blocking socket in a thread, with rustls: the sidecar's block receive
from https cache workers (`fluidfed.data.receive`).

Python's `ssl` returns one record (16 KiB) per `recv_into`, so a 4 MiB block is 256 calls,
each giving the GIL back and taking it again beside the FUSE loop's thread. rustls
(fluidfed's extension, `native/tls/src/client.rs`) receives and decrypts a whole body into
its buffer in one call with the GIL released (figures: README, "Encryption" in "The data
path").

Verification is the same as the `ssl` context's: the server's certificate must chain to
the CAs the context was given as PEM (`fluidfed.tls.ClientContext`) and name the host
connected to (DNS name, or IP address in an IP SAN). A context rustls cannot verify as
OpenSSL would (the system's trust store, a `capath` directory, host names not checked, a
client key with a password) is left to Python's `ssl`, said once in the log, as is every
context when `FLUIDFED_TLS_TRANSPORT` is `openssl` or `loop`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import ssl
import time
from typing import Any

from cryptography import x509

from fluidfed import tlsserve
from fluidfed.tls import ClientContext

log = logging.getLogger("fluidfed.tls")


# verification flags rustls's own checks stand for: OpenSSL's defaults, a partial chain
# (rustls takes any CA given as an anchor), strict X.509 (webpki checks its own strict
# profile of RFC 5280). Any other (CRL checks above all: rustls reads no CRL) is OpenSSL's.
_RUSTLS_FLAGS = (
    ssl.VERIFY_X509_TRUSTED_FIRST | ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
)


def rustls_config(ctx: ssl.SSLContext) -> Any:
    """The rustls client configuration verifying what `ctx` verifies (built again after a
    load into it: a CA reloaded on rotation), or None where Python's `ssl` is to be used.
    Called at each new connection (where `tlsserve.tls_engine()` is rustls): the
    configuration is kept on the context with the state it was built from, until a CA it
    trusts expires."""
    rustls = tlsserve.rustls_module()
    if rustls is None:
        return None
    if not isinstance(ctx, ClientContext):
        tlsserve.say_once(
            "receiving TLS with OpenSSL: rustls verifies with a fluidfed.tls.ClientContext, "
            "and this context is not one"
        )
        return None
    state = (
        ctx.generation, ctx.verify_mode, ctx.check_hostname, ctx.verify_flags, ctx.options,
        ctx.minimum_version, ctx.maximum_version,
    )  # fmt: skip
    now = time.time()
    if ctx.engine_config is not None and ctx.engine_config[0] == state:
        config, valid_from, valid_until = ctx.engine_config[1]
        if valid_from <= now < valid_until:
            return config
    config = None
    valid_from, valid_until = -math.inf, math.inf
    if ctx.verify_mode != ssl.CERT_REQUIRED or not ctx.check_hostname:
        tlsserve.say_once(
            "receiving TLS with OpenSSL: rustls always verifies the server and its name, "
            "and this context does not"
        )
    elif ctx.unrecorded_cas or not ctx.ca_pem:
        tlsserve.say_once(
            "receiving TLS with OpenSSL: the servers are verified against CAs rustls was "
            "not given (the system's, a capath directory)"
        )
    elif ctx.unrecorded_cert:
        tlsserve.say_once(
            "receiving TLS with OpenSSL: the client certificate's key has a password, "
            "which rustls does not take"
        )
    elif ctx.verify_flags & ~_RUSTLS_FLAGS:
        tlsserve.say_once(
            "receiving TLS with OpenSSL: the context's verify_flags (%r) ask for checks "
            "rustls does not make (CRLs)",
            ctx.verify_flags,
        )
    else:
        partial = bool(ctx.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN)
        problem, valid_from, valid_until = anchors_problem(ctx.ca_pem, now, partial=partial)
        if problem:
            log.warning("receiving TLS with OpenSSL: %s", problem)
        else:
            tls12, tls13 = tlsserve.versions(ctx)
            chain, key = ctx.pem if ctx.pem is not None else (None, None)
            try:
                config = rustls.ClientConfig(ctx.ca_pem, chain, key, tls12, tls13)
            except ValueError as err:
                log.warning(
                    "receiving TLS with OpenSSL: rustls does not take this context (%s)", err
                )
    ctx.engine_config = (state, (config, valid_from, valid_until))
    return config


def anchors_problem(ca_pem: bytes, now: float, *, partial: bool) -> tuple[str, float, float]:
    """Why rustls would trust the CAs in `ca_pem` where OpenSSL does not ("" if it would
    not), and the window in which that answer holds. rustls (webpki) takes every CA given
    as a bare trust anchor, whatever it says of itself; OpenSSL trusts a CA only while it
    is valid, a CA (basicConstraints), allowed to sign certificates (keyUsage), and, without
    VERIFY_X509_PARTIAL_CHAIN, self-signed. So rustls is used only for anchors all of which
    pass those checks: the others make it OpenSSL's, checking as it does."""
    try:
        certs = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as err:
        return f"a trusted CA does not parse ({err})", -math.inf, math.inf
    valid_from, valid_until = -math.inf, math.inf
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
            basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            return f"the CA {name!r} does not say it is a CA", -math.inf, math.inf
        if not basic.ca:
            return f"{name!r} is trusted as a CA but is not one (CA:FALSE)", -math.inf, math.inf
        try:
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            pass
        else:
            if not usage.key_cert_sign:
                return f"the CA {name!r} may not sign certificates", -math.inf, math.inf
        if not partial and cert.issuer != cert.subject:
            return f"the CA {name!r} is not self-signed (a partial chain)", -math.inf, math.inf
    return "", valid_from, valid_until


class RustlsSocket:
    """A connected blocking socket with TLS on rustls, its handshake done and the server's
    certificate verified (within `timeout` seconds): what `fluidfed.data.receive` uses of a
    socket. Receives stop at the deadline last set (`set_deadline`), sends at the socket's
    SO_SNDTIMEO: TimeoutError when one runs out; a TLS failure is an `ssl.SSLError`
    (`ssl.SSLCertVerificationError` for a certificate refused), as with Python's `ssl`."""

    def __init__(self, sock: socket.socket, config: Any, host: str, timeout: float) -> None:
        """`sock`: connected and blocking (`settimeout(None)`; its sends bounded by
        SO_SNDTIMEO): the waits are rustls's, in the kernel."""
        rustls = tlsserve.rustls_module()
        assert rustls is not None  # a config was built
        if sock.gettimeout() is not None:
            raise ValueError("RustlsSocket takes a blocking socket: settimeout(None) first")
        self.sock = sock
        self._error = rustls.TLSError
        if not host.isascii():  # an internationalised name, as Python's ssl sends it
            host = host.encode("idna").decode("ascii")
        try:
            self.conn = rustls.ClientConn(config, sock.fileno(), host)
        except (ValueError, self._error) as err:
            raise ssl.SSLError(1, f"TLS with {host}: {err}") from None
        self.conn.set_deadline(timeout)
        self._call(self.conn.handshake)

    def _call(self, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except self._error as err:
            msg = str(err)
            if msg.startswith("invalid peer certificate"):  # rustls's words for it
                raise ssl.SSLCertVerificationError(
                    1, f"certificate verify failed (CERTIFICATE_VERIFY_FAILED): {msg}"
                ) from None
            raise ssl.SSLError(1, msg) from None
        except BlockingIOError:  # a socket wait ran out (SO_RCVTIMEO/SO_SNDTIMEO)
            raise TimeoutError("timed out") from None

    def set_deadline(self, deadline: float) -> None:
        """Receives stop at `deadline` (time.monotonic()), however the server trickles."""
        self.conn.set_deadline(deadline - time.monotonic())

    def fileno(self) -> int:
        return self.sock.fileno()

    def sendall(self, data: bytes) -> None:
        self._call(self.conn.sendall, data)

    def recv(self, n: int) -> bytes:
        return self._call(self.conn.recv, n)  # type: ignore[no-any-return]

    def recv_into(self, buffer: Any, n: int = 0, flags: int = 0) -> int:
        """Fills the first `n` bytes of `buffer` (all of it with 0) unless the server closes
        or the deadline passes after some bytes came: how many. `flags` are ignored."""
        return self._call(self.conn.recv_into, buffer, n or None)  # type: ignore[no-any-return]

    def pending(self) -> bool:
        """Whether decrypted bytes, or the server's close, wait unread."""
        return self.conn.pending()  # type: ignore[no-any-return]

    def version(self) -> str | None:
        return self.conn.version()  # type: ignore[no-any-return]

    def peer_certificate(self) -> bytes | None:
        """The server's certificate, DER."""
        return self.conn.peer_certificate()  # type: ignore[no-any-return]

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        """Close the socket; while a thread is in a call on it, only shut it down (the call
        ends at once), and the socket stays open for that thread to close: its descriptor
        number is never given to another socket under the call."""
        try:
            self.conn.detach()
        except RuntimeError:  # in use by another thread
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            return
        self.sock.close()
