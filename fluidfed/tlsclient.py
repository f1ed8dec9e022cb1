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
import socket
import ssl
from typing import Any

from fluidfed import tlsserve
from fluidfed.tls import ClientContext

log = logging.getLogger("fluidfed.tls")


def rustls_config(ctx: ssl.SSLContext) -> Any:
    """The rustls client configuration verifying what `ctx` verifies (built again after a
    load into it: a CA reloaded on rotation), or None where Python's `ssl` is to be used.
    Called at each new connection (where `tlsserve.tls_engine()` is rustls): the
    configuration is kept on the context with the state it was built from."""
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
        ctx.generation, ctx.verify_mode, ctx.check_hostname, ctx.minimum_version,
        ctx.maximum_version,
    )  # fmt: skip
    if ctx.engine_config is not None and ctx.engine_config[0] == state:
        return ctx.engine_config[1]
    config = None
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
    else:
        tls12, tls13 = tlsserve.versions(ctx)
        chain, key = ctx.pem if ctx.pem is not None else (None, None)
        try:
            config = rustls.ClientConfig(ctx.ca_pem, chain, key, tls12, tls13)
        except ValueError as err:
            log.warning("receiving TLS with OpenSSL: rustls does not take this context (%s)", err)
    ctx.engine_config = (state, config)
    return config


class RustlsSocket:
    """A connected blocking socket with TLS on rustls, its handshake done and the server's
    certificate verified: what `fluidfed.data.receive` uses of a socket. Each socket wait is
    bounded by the socket's SO_RCVTIMEO/SO_SNDTIMEO (BlockingIOError when one runs out); a
    TLS failure is an `ssl.SSLError`, as with Python's `ssl`."""

    def __init__(self, sock: socket.socket, config: Any, host: str) -> None:
        rustls = tlsserve.rustls_module()
        assert rustls is not None  # a config was built
        self.sock = sock
        self._error = rustls.TLSError
        try:
            self.conn = rustls.ClientConn(config, sock.fileno(), host)
        except (ValueError, self._error) as err:
            raise ssl.SSLError(f"TLS with {host}: {err}") from None
        self._call(self.conn.handshake)

    def _call(self, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except self._error as err:
            msg = str(err)
            if msg.startswith("invalid peer certificate"):  # rustls's words for it
                raise ssl.SSLCertVerificationError(
                    f"certificate verify failed (CERTIFICATE_VERIFY_FAILED): {msg}"
                ) from None
            raise ssl.SSLError(msg) from None
        except BlockingIOError:  # a socket wait ran out (SO_RCVTIMEO/SO_SNDTIMEO)
            raise TimeoutError("timed out") from None

    def fileno(self) -> int:
        return self.sock.fileno()

    def sendall(self, data: bytes) -> None:
        self._call(self.conn.sendall, data)

    def recv(self, n: int) -> bytes:
        return self._call(self.conn.recv, n)  # type: ignore[no-any-return]

    def recv_into(self, buffer: Any, n: int = 0, flags: int = 0) -> int:
        """Fills the first `n` bytes of `buffer` (all of it with 0) unless the server closes
        or a socket wait runs out after some bytes came: how many. `flags` are ignored."""
        return self._call(self.conn.recv_into, buffer, n or None)  # type: ignore[no-any-return]

    def pending(self) -> bool:
        """Whether decrypted bytes (or the server's close) wait unread."""
        return self.conn.pending()  # type: ignore[no-any-return]

    def version(self) -> str | None:
        return self.conn.version()  # type: ignore[no-any-return]

    def getpeercert(self, binary_form: bool = True) -> bytes | None:
        return self.conn.peer_certificate()  # type: ignore[no-any-return]

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # in use by a thread: the socket's own close
            self.conn.detach()
        self.sock.close()
