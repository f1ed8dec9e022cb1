//! Server-side TLS for fluidfed's HTTPS transport (`fluidfed/tlsserve.py`): one rustls
//! connection per accepted socket, its records encrypted and written straight to the
//! socket's descriptor in the same call that takes the plaintext. The client side, for the
//! sidecar's block receive, is in `client.rs`.
//!
//! Python keeps the socket (and closes it), the event loop watches the descriptor, and the
//! transport calls `Conn.handshake`, `read`, `write` and `flush` when the loop says the
//! descriptor is ready. Every call is non-blocking: a socket that would block is reported
//! in the return value, never raised. A TLS failure raises `TLSError` (after the alert is
//! sent where the socket takes it); a socket failure raises `OSError` with its errno.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;

use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConnection};

mod client;

create_exception!(
    _rustls,
    TLSError,
    PyException,
    "A TLS protocol failure on a connection."
);

/// What one `read` takes from the socket before returning (the loop calls again while the
/// descriptor stays readable): a fast peer does not keep the loop from the others.
const READ_BUDGET: usize = 256 * 1024;
/// The encrypted bytes rustls may hold for a socket that takes no more; `write` takes no
/// more plaintext beyond it (the transport keeps the rest, and counts it for flow control).
const TLS_BUFFER: usize = 64 * 1024;
/// Writes at least this large encrypt without the GIL (the worker's 4 MiB blocks).
const UNLOCKED_WRITE: usize = 256 * 1024;

const DONE: u8 = 0;
const WANT_READ: u8 = 1;
const WANT_WRITE: u8 = 2;

/// A socket descriptor as rustls's reader and writer; never closed here.
pub(crate) struct Fd(pub(crate) RawFd);

fn retry<T>(mut op: impl FnMut() -> isize, ok: impl Fn(isize) -> T) -> io::Result<T> {
    loop {
        let n = op();
        if n >= 0 {
            return Ok(ok(n));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

impl Read for Fd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        retry(
            || unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) },
            |n| n as usize,
        )
    }
}

impl Write for Fd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        retry(
            || unsafe { libc::send(self.0, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) },
            |n| n as usize,
        )
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // IoSlice is an iovec on Unix; sendmsg takes at most IOV_MAX of them
        let count = bufs.len().min(1024);
        retry(
            || unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
                msg.msg_iovlen = count as _;
                libc::sendmsg(self.0, &msg, libc::MSG_NOSIGNAL)
            },
            |n| n as usize,
        )
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The protocol versions allowed, newest first.
pub(crate) fn versions(
    tls12: bool,
    tls13: bool,
) -> PyResult<Vec<&'static rustls::SupportedProtocolVersion>> {
    let mut out = Vec::new();
    if tls13 {
        out.push(&rustls::version::TLS13);
    }
    if tls12 {
        out.push(&rustls::version::TLS12);
    }
    if out.is_empty() {
        return Err(PyValueError::new_err("no TLS version allowed"));
    }
    Ok(out)
}

/// "TLSv1.3" or "TLSv1.2", once the handshake is done.
pub(crate) fn version(tls: &rustls::CommonState) -> Option<&'static str> {
    match tls.protocol_version()? {
        rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
        rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
        _ => None,
    }
}

/// The certificates the peer sent (DER, its own first): none before the handshake is done,
/// or from a client that presented none.
pub(crate) fn peer_chain<'py>(
    py: Python<'py>,
    tls: &rustls::CommonState,
) -> Vec<Bound<'py, PyBytes>> {
    tls.peer_certificates()
        .map(|certs| certs.iter().map(|c| PyBytes::new(py, c.as_ref())).collect())
        .unwrap_or_default()
}

fn blocked(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// A serving configuration: the certificate chain and key (PEM), optionally the CAs (PEM)
/// whose client certificates are verified, required or not, and the TLS versions served
/// (1.2 and 1.3 by default; rustls serves no older one). The cipher suites are rustls's
/// own safe defaults.
#[pyclass(frozen, module = "fluidfed._rustls")]
struct ServerConfig {
    inner: Arc<rustls::ServerConfig>,
}

#[pymethods]
impl ServerConfig {
    #[new]
    #[pyo3(signature = (cert_chain, key, client_ca=None, client_cert_required=false, tls12=true, tls13=true))]
    fn new(
        cert_chain: &[u8],
        key: &[u8],
        client_ca: Option<&[u8]>,
        client_cert_required: bool,
        tls12: bool,
        tls13: bool,
    ) -> PyResult<Self> {
        let bad = |what: &str, err: &dyn std::fmt::Display| {
            PyValueError::new_err(format!("{what}: {err}"))
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("the certificate chain is not PEM", &e))?;
        if certs.is_empty() {
            return Err(PyValueError::new_err(
                "the certificate chain holds no certificate",
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("the key is not PEM", &e))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions(tls12, tls13)?)
            .map_err(|e| bad("TLS versions", &e))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| bad("the client CA is not PEM", &e))?;
                    roots.add(cert).map_err(|e| bad("the client CA", &e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if client_cert_required {
                    verifier.build()
                } else {
                    verifier.allow_unauthenticated().build()
                }
                .map_err(|e| bad("the client CA", &e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| bad("the certificate and key", &e))?;
        Ok(ServerConfig {
            inner: Arc::new(config),
        })
    }
}

/// One server-side connection on a non-blocking socket descriptor.
#[pyclass(module = "fluidfed._rustls")]
struct Conn {
    tls: ServerConnection,
    fd: RawFd,
    eof: bool, // the peer's close_notify, or its end of the TCP stream
}

impl Conn {
    fn tls_error(&mut self, err: rustls::Error) -> PyErr {
        // the alert rustls queued for it, where the socket takes it
        let _ = self.tls.write_tls(&mut Fd(self.fd));
        TLSError::new_err(err.to_string())
    }

    /// Send what rustls holds; Ok(true) when nothing is left, Ok(false) when the socket
    /// took no more.
    fn flush_tls(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut Fd(self.fd)) {
                Ok(_) => {}
                Err(e) if blocked(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Plaintext in, records out: all of `data` unless the socket stops taking records
    /// while rustls holds TLS_BUFFER of them. How much of `data` was taken.
    fn write_all(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        loop {
            if done < data.len() {
                done += self.tls.writer().write(&data[done..])?;
            }
            let flushed = self.flush_tls()?;
            if done == data.len() || !flushed {
                return Ok(done);
            }
        }
    }

    fn plaintext(&mut self, out: &mut Vec<u8>) -> PyResult<()> {
        let mut reader = self.tls.reader();
        loop {
            let at = out.len();
            out.resize(at + 16 * 1024, 0);
            match reader.read(&mut out[at..]) {
                Ok(0) => {
                    out.truncate(at);
                    self.eof = true; // close_notify
                    return Ok(());
                }
                Ok(n) => out.truncate(at + n),
                Err(e) => {
                    out.truncate(at);
                    return match e.kind() {
                        io::ErrorKind::WouldBlock => Ok(()),
                        io::ErrorKind::UnexpectedEof => {
                            self.eof = true; // the TCP stream ended without close_notify
                            Ok(())
                        }
                        _ => Err(e.into()),
                    };
                }
            }
        }
    }
}

#[pymethods]
impl Conn {
    #[new]
    fn new(config: &ServerConfig, fd: RawFd) -> PyResult<Self> {
        let mut tls = ServerConnection::new(config.inner.clone())
            .map_err(|e| TLSError::new_err(e.to_string()))?;
        tls.set_buffer_limit(Some(TLS_BUFFER));
        Ok(Conn {
            tls,
            fd,
            eof: false,
        })
    }

    /// One step of the handshake: 0 done, 1 wants the socket readable, 2 writable.
    fn handshake(&mut self) -> PyResult<u8> {
        loop {
            if !self.flush_tls()? {
                return Ok(WANT_WRITE);
            }
            if !self.tls.is_handshaking() {
                return Ok(DONE);
            }
            match self.tls.read_tls(&mut Fd(self.fd)) {
                Ok(0) => {
                    return Err(TLSError::new_err(
                        "the client closed the connection in the handshake",
                    ))
                }
                Ok(_) => {}
                Err(e) if blocked(&e) => return Ok(WANT_READ),
                Err(e) => return Err(e.into()),
            }
            if let Err(e) = self.tls.process_new_packets() {
                if let rustls::Error::InvalidMessage(_) = e {
                    // not TLS at all (plain HTTP to this port, say): no alert, whose bytes
                    // such a client would take for the start of an answer; the socket is
                    // closed, and the client sees a closed connection, as with OpenSSL
                    return Err(TLSError::new_err(e.to_string()));
                }
                return Err(self.tls_error(e));
            }
        }
    }

    /// The plaintext the peer sent: bytes; b"" once it closed (close_notify or end of
    /// stream) and nothing is left; None when nothing came yet. Data and the close may
    /// come in one call: the data is returned, and `eof` says the close came too. What
    /// rustls has to send after reading (an alert) goes as far as the socket takes it
    /// (`wants_write` says whether some waits); the answer to a TLS 1.3 key update goes
    /// with the next write.
    fn read<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let mut out = Vec::new();
        let mut taken = 0;
        loop {
            self.plaintext(&mut out)?;
            if self.eof || out.len() >= READ_BUDGET || taken >= READ_BUDGET {
                break;
            }
            match self.tls.read_tls(&mut Fd(self.fd)) {
                Ok(0) => self.eof = true,
                Ok(n) => taken += n,
                Err(e) if blocked(&e) => break,
                Err(e) => return Err(e.into()),
            }
            if let Err(e) = self.tls.process_new_packets() {
                return Err(self.tls_error(e));
            }
            if self.eof {
                self.plaintext(&mut out)?;
                break;
            }
        }
        self.flush_tls()?;
        if out.is_empty() && !self.eof {
            return Ok(None);
        }
        Ok(Some(PyBytes::new(py, &out)))
    }

    /// Encrypt `data` and send it. 0: all of it taken and its records sent; -1: all of it
    /// taken, some records wait for the socket (`flush` when it is writable); n > 0: its
    /// last n bytes were not taken, as the socket stopped taking records while rustls
    /// holds its limit (the caller keeps them, and writes them after a `flush`).
    fn write(&mut self, py: Python<'_>, data: PyBuffer<u8>) -> PyResult<isize> {
        if !data.is_c_contiguous() {
            return Err(PyValueError::new_err("write takes a contiguous buffer"));
        }
        if data.len_bytes() == 0 {
            return Ok(if self.tls.wants_write() { -1 } else { 0 });
        }
        // the buffer stays exported (and its owner alive) until `data` drops, after this
        let view =
            unsafe { std::slice::from_raw_parts(data.buf_ptr() as *const u8, data.len_bytes()) };
        let done = if view.len() >= UNLOCKED_WRITE {
            py.allow_threads(|| self.write_all(view))?
        } else {
            self.write_all(view)?
        };
        Ok(if done < view.len() {
            (view.len() - done) as isize
        } else if self.tls.wants_write() {
            -1
        } else {
            0
        })
    }

    /// Send what rustls holds: True when all of it went.
    fn flush(&mut self) -> PyResult<bool> {
        Ok(self.flush_tls()?)
    }

    /// Whether the peer closed (close_notify, or the end of the TCP stream).
    fn eof(&self) -> bool {
        self.eof
    }

    /// Whether rustls holds records the socket did not take yet.
    fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }

    /// Queue close_notify and send what rustls holds: True when all of it went.
    fn close_notify(&mut self) -> PyResult<bool> {
        self.tls.send_close_notify();
        Ok(self.flush_tls()?)
    }

    /// The client's certificate (DER), if it presented one.
    fn peer_certificate<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        peer_chain(py, &self.tls).into_iter().next()
    }

    /// The certificates the client sent (DER, its own first), if it presented one.
    fn peer_chain<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        peer_chain(py, &self.tls)
    }

    /// "TLSv1.3" or "TLSv1.2", once the handshake is done.
    fn version(&self) -> Option<&'static str> {
        version(&self.tls)
    }

    /// The cipher suite's IANA name, once the handshake is done.
    fn cipher(&self) -> Option<&'static str> {
        self.tls.negotiated_cipher_suite()?.suite().as_str()
    }
}

#[pymodule]
fn _rustls(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ServerConfig>()?;
    m.add_class::<Conn>()?;
    m.add_class::<client::ClientConfig>()?;
    m.add_class::<client::ClientConn>()?;
    m.add("TLSError", m.py().get_type::<TLSError>())?;
    m.add("DONE", DONE)?;
    m.add("WANT_READ", WANT_READ)?;
    m.add("WANT_WRITE", WANT_WRITE)?;
    Ok(())
}
