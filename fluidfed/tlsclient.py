"""Client TLS on a blocking socket in a thread, with rustls: the sidecar's block receive
from https cache workers (`fluidfed.data.receive`).

Python's `ssl` returns one record (16 KiB) per `recv_into`, so a 4 MiB block is 256 calls,
each giving the GIL back and taking it again beside the FUSE loop's thread. rustls
(fluidfed's extension, `native/tls/src/client.rs`) receives and decrypts a whole body into
its buffer in one call with the GIL released (figures: README, "Encryption" in "The data
path").

Verification is the same as the `ssl` context's: the server's certificate must chain to
the CAs the context was given as PEM (`fluidfed.tls.ClientContext`) and name the host
connected to (DNS name, or IP address in an IP SAN); what OpenSSL checks beyond rustls is
`fluidfed.tlscheck`'s. A context rustls cannot verify as OpenSSL would (the system's trust
store, a `capath` directory, host names not checked, a client key with a password, CRL or
strict checks, CAs OpenSSL would not trust as they are) is left to Python's `ssl`, said in
the log, as is every context when `FLUIDFED_TLS_TRANSPORT` is `openssl` or `loop`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from typing import Any, NamedTuple

from fluidfed import tlscheck, tlsserve
from fluidfed.tls import ClientContext

log = logging.getLogger("fluidfed.tls")


def rustls_config(ctx: ssl.SSLContext) -> Setup | None:
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
    found, kept = ctx.engine_kept(state, now)
    if found:
        return kept  # type: ignore[no-any-return]
    config: Setup | None = None
    valid_from, valid_until = tlscheck.NO_CHANGE
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
    elif ctx.verify_flags & ~tlscheck.RUSTLS_FLAGS:
        tlsserve.say_once(
            "receiving TLS with OpenSSL: the context's verify_flags (%r) ask for checks "
            "rustls does not make (CRLs, strict X.509)",
            ctx.verify_flags,
        )
    else:
        partial = bool(ctx.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN)
        problem, valid_from, valid_until = tlscheck.anchors_problem(
            ctx.ca_pem, now, partial=partial
        )
        if problem:
            log.warning("receiving TLS with OpenSSL: %s", problem)
        else:
            tls12, tls13 = tlsserve.versions(ctx)
            chain, key = ctx.pem if ctx.pem is not None else (None, None)
            try:
                made = rustls.ClientConfig(ctx.ca_pem, chain, key, tls12, tls13)
                config = Setup(made, tlscheck.checks_for(ctx.ca_pem))
            except ValueError as err:
                log.warning(
                    "receiving TLS with OpenSSL: rustls does not take this context (%s)", err
                )
    ctx.engine_keep(state, config, (valid_from, valid_until))
    return config


class Setup(NamedTuple):
    """What a connection on rustls is made with: rustls's configuration, and what
    `tlscheck.chain_problem` checks the server's chain against."""

    config: Any
    checks: tlscheck.Checks


class RustlsSocket:
    """A connected blocking socket with TLS on rustls, its handshake done and the server's
    certificate verified (within `timeout` seconds): what `fluidfed.data.receive` uses of a
    socket. Receives stop at the deadline last set (`set_deadline`), sends at the socket's
    SO_SNDTIMEO: TimeoutError when one runs out; a TLS failure is an `ssl.SSLError`
    (`ssl.SSLCertVerificationError` for a certificate refused), as with Python's `ssl`."""

    def __init__(self, sock: socket.socket, setup: Setup, host: str, timeout: float) -> None:
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
            self.conn = rustls.ClientConn(setup.config, sock.fileno(), host)
        except (ValueError, self._error) as err:
            raise ssl.SSLError(1, f"TLS with {host}: {err}") from None
        self.conn.set_deadline(timeout)
        self._call(self.conn.handshake)
        problem = tlscheck.chain_problem(self.conn.peer_chain(), setup.checks)
        if problem:  # before any request
            self.close()
            raise ssl.SSLCertVerificationError(
                1, f"certificate verify failed (CERTIFICATE_VERIFY_FAILED): {problem}"
            )

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
