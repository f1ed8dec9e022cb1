//! Client-side TLS for the sidecar's block receive (`fluidfed/tlsclient.py`): one rustls
//! connection on a blocking socket, driven from one of the receive threads. A block's body
//! is received and decrypted straight into the caller's buffer in one call, without the
//! GIL: Python's `ssl` returns one 16 KiB record per call, 256 calls and GIL hand-offs per
//! 4 MiB block.
//!
//! Every call blocks. Receives stop at the deadline the caller set (`set_deadline`: a
//! receive that would wait polls for at most what is left of it, so a server trickling
//! bytes cannot stretch a call past it), sends at the socket's own SO_SNDTIMEO: a wait that
//! runs out raises `TimeoutError` (or `BlockingIOError`). A TLS failure (a certificate that does
//! not chain to the trusted CAs or does not name the host) raises `TLSError` after the
//! alert is sent. Sessions are not resumed: every connection verifies the server's
//! certificate, as Python's `ssl` does without a session given.

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, RootCertStore};

use crate::{versions, Fd, TLSError};

/// A verifying client configuration: the servers' certificates must chain to the CAs
/// given (PEM; nothing else is trusted) and name the host connected to (a DNS name, or an
/// IP address in the certificate's IP SANs). Optionally a client certificate and key (PEM).
#[pyclass(frozen, module = "fluidfed._rustls")]
pub(crate) struct ClientConfig {
    inner: Arc<rustls::ClientConfig>,
}

#[pymethods]
impl ClientConfig {
    #[new]
    #[pyo3(signature = (ca, cert_chain=None, key=None, tls12=true, tls13=true))]
    fn new(
        ca: &[u8],
        cert_chain: Option<&[u8]>,
        key: Option<&[u8]>,
        tls12: bool,
        tls13: bool,
    ) -> PyResult<Self> {
        let bad = |what: &str, err: &dyn std::fmt::Display| {
            PyValueError::new_err(format!("{what}: {err}"))
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca) {
            let cert = cert.map_err(|e| bad("the CA is not PEM", &e))?;
            roots.add(cert).map_err(|e| bad("the CA", &e))?;
        }
        if roots.is_empty() {
            return Err(PyValueError::new_err("no CA to trust"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions(tls12, tls13)?)
            .map_err(|e| bad("TLS versions", &e))?
            .with_root_certificates(roots);
        let mut config = match (cert_chain, key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(chain), Some(key)) => {
                let certs = CertificateDer::pem_slice_iter(chain)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("the client certificate is not PEM", &e))?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| bad("the client key is not PEM", &e))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| bad("the client certificate and key", &e))?
            }
            _ => {
                return Err(PyValueError::new_err(
                    "a client certificate needs both its chain and its key",
                ))
            }
        };
        config.resumption = Resumption::disabled();
        Ok(ClientConfig {
            inner: Arc::new(config),
        })
    }
}

/// The socket as rustls's reader, each receive waiting at most until the deadline.
struct DeadlineReader<'a> {
    fd: RawFd,
    deadline: Option<Instant>,
    mark: &'a mut libc::c_int, // the socket's SO_RCVLOWAT (see `MARK_PATIENCE`)
}

/// How long a wait for the wake-up mark lasts before it is given up for any byte: a
/// server's close_notify (a few dozen bytes, the TCP connection left open, as fluidfed's
/// own server lingers) or the last bytes of a slow stream never reach the mark, and
/// would otherwise be read only at the deadline. A stream at 50 MB/s fills a MiB sooner.
const MARK_PATIENCE: Duration = Duration::from_millis(20);

/// A thread receiving a large body is woken once this many bytes wait in the socket (its
/// SO_RCVLOWAT), not whenever anything arrives (`fluidfed/data/receive.py`, WAKE_EVERY).
const WAKE_EVERY: usize = 1 << 20;

/// Room for the part of a record rustls may hold undecrypted: ciphertext that already
/// left the socket, so the bytes still to come may fall that much short of the plaintext
/// still owed (a TLS record is at most 16 KiB of plaintext plus 256 bytes and a header).
const HELD_RECORD: usize = (1 << 14) + 256 + 5;

/// The socket's wake-up mark while `owed` plaintext bytes of a body are still to come:
/// never above what must still arrive (the poll would wait for bytes that never come),
/// 1 (any byte) for small reads. A power of two, so that it changes (a system call) a
/// few times per body, not at each of the receives of a few KiB rustls makes.
fn mark_for(owed: usize) -> libc::c_int {
    let sure = owed.saturating_sub(HELD_RECORD).min(WAKE_EVERY);
    if sure < 64 * 1024 {
        1
    } else {
        (1usize << sure.ilog2()) as libc::c_int
    }
}

fn set_mark(fd: RawFd, mark: libc::c_int) -> io::Result<()> {
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&mark as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Wait until `fd` is readable, at most until `deadline`: TimedOut when it passes first.
fn wait_readable(fd: RawFd, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        // whole milliseconds, rounded up: poll(0) would not wait at all
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            0 => continue,               // its time ran out: the deadline says whether that is all
            n if n > 0 => return Ok(()), // readable, or an error or hang-up the recv reports
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

// A receive takes what the socket holds without waiting, and only when it holds nothing
// waits in poll, bounded by what is left of the deadline: one system call per receive
// while a body streams in (rustls reads at most 4 KiB past what it holds, 4-5 receives
// per 16 KiB record). Taking them from a 256 KiB buffer of our own instead, one receive per
// 256 KiB, measured the same CPU per GiB and a little less throughput (bench/tls_receive.py).
impl Read for DeadlineReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(deadline) = self.deadline else {
            return Fd(self.fd).read(out); // the socket's own timeout
        };
        loop {
            let n = unsafe {
                libc::recv(
                    self.fd,
                    out.as_mut_ptr().cast(),
                    out.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock if *self.mark > 1 => {
                    let soon = deadline.min(Instant::now() + MARK_PATIENCE);
                    match wait_readable(self.fd, soon) {
                        Err(e) if e.kind() == io::ErrorKind::TimedOut && soon < deadline => {
                            set_mark(self.fd, 1)?; // any byte from now on
                            *self.mark = 1;
                        }
                        other => other?,
                    }
                }
                io::ErrorKind::WouldBlock => wait_readable(self.fd, deadline)?,
                io::ErrorKind::Interrupted => {}
                _ => return Err(err),
            }
        }
    }
}

/// A caller's buffer, written while the GIL is released: the `PyBuffer` export it comes
/// from is held (and its owner alive, not resizable) for the whole call.
struct Out(*mut u8, usize);
unsafe impl Send for Out {}

/// One client connection on a blocking socket descriptor (Python keeps the socket, and
/// closes it).
#[pyclass(module = "fluidfed._rustls")]
pub(crate) struct ClientConn {
    tls: ClientConnection,
    fd: RawFd,
    deadline: Option<Instant>,
    eof: bool,         // the server's close_notify, or the end of its TCP stream
    mark: libc::c_int, // the socket's SO_RCVLOWAT as last set (1: the kernel's default)
}

impl ClientConn {
    fn tls_error(&mut self, err: rustls::Error) -> PyErr {
        let _ = self.send_all_tls(); // the alert rustls queued for it
        TLSError::new_err(err.to_string())
    }

    fn send_all_tls(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut Fd(self.fd))?;
        }
        Ok(())
    }

    fn set_mark(&mut self, mark: libc::c_int) -> io::Result<()> {
        if mark != self.mark {
            set_mark(self.fd, mark)?;
            self.mark = mark;
        }
        Ok(())
    }

    fn read_tls(&mut self) -> io::Result<usize> {
        let mut reader = DeadlineReader {
            fd: self.fd,
            deadline: self.deadline,
            mark: &mut self.mark,
        };
        self.tls.read_tls(&mut reader)
    }

    /// Read records once (waiting for the socket) and decrypt them, `owed` plaintext
    /// bytes still wanted (the wake-up mark follows it: `mark_for`).
    fn more(&mut self, owed: usize) -> Result<(), Failure> {
        // (no deadline: blocking receives, which a mark would hold until enough came)
        let mark = if self.deadline.is_some() {
            mark_for(owed)
        } else {
            1
        };
        self.set_mark(mark).map_err(Failure::Io)?;
        match self.read_tls() {
            Ok(0) => self.eof = true,
            Ok(_) => {}
            Err(e) => return Err(Failure::Io(e)),
        }
        if let Err(e) = self.tls.process_new_packets() {
            return Err(Failure::Tls(e));
        }
        // what rustls has to send after reading (an alert; the answer to a TLS 1.3 key
        // update goes with the next write, the request)
        self.send_all_tls().map_err(Failure::Io)
    }

    /// Decrypted bytes into `out` until it is full or the server closed: how many.
    /// A socket wait that runs out after some bytes returns those (the caller asks again).
    /// The socket's wake-up mark is back at 1 after (the next answer's head; Python's
    /// check of an idle connection).
    fn fill(&mut self, out: &mut [u8]) -> Result<usize, Failure> {
        let got = self.fill_marked(out);
        match (got, self.set_mark(1)) {
            (Ok(_), Err(e)) => Err(Failure::Io(e)),
            (got, _) => got,
        }
    }

    fn fill_marked(&mut self, out: &mut [u8]) -> Result<usize, Failure> {
        let mut got = 0;
        loop {
            while got < out.len() {
                match self.tls.reader().read(&mut out[got..]) {
                    Ok(0) => {
                        self.eof = true; // close_notify
                        return Ok(got);
                    }
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        self.eof = true; // the TCP stream ended without close_notify
                        return Ok(got);
                    }
                    Err(e) => return Err(Failure::Io(e)),
                }
            }
            if got == out.len() || self.eof {
                return Ok(got);
            }
            match self.more(out.len() - got) {
                Err(Failure::Io(e)) if timed_out(&e) && got > 0 => return Ok(got),
                other => other?,
            }
        }
    }

    fn raise(&mut self, failure: Failure) -> PyErr {
        match failure {
            Failure::Io(e) => e.into(),
            Failure::Tls(e) => self.tls_error(e),
        }
    }
}

fn timed_out(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

enum Failure {
    Io(io::Error),
    Tls(rustls::Error),
}

#[pymethods]
impl ClientConn {
    /// A connection to `host` (what the certificate must name) on `fd`, its handshake not
    /// yet begun.
    #[new]
    fn new(config: &ClientConfig, fd: RawFd, host: &str) -> PyResult<Self> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| PyValueError::new_err(format!("{host:?} is not a host name: {e}")))?;
        let tls = ClientConnection::new(config.inner.clone(), name)
            .map_err(|e| TLSError::new_err(e.to_string()))?;
        Ok(ClientConn {
            tls,
            fd,
            deadline: None,
            eof: false,
            mark: 1,
        })
    }

    /// Receives from now on stop `seconds` from now (None: only the socket's own timeout).
    #[pyo3(signature = (seconds))]
    fn set_deadline(&mut self, seconds: Option<f64>) {
        self.deadline = seconds
            .filter(|s| s.is_finite()) // an infinite wait: the socket's own timeout
            .map(|s| Instant::now() + Duration::from_secs_f64(s.clamp(0.0, 1e9)));
    }

    /// The whole handshake, the server's certificate verified.
    fn handshake(&mut self, py: Python<'_>) -> PyResult<()> {
        let done = py.allow_threads(|| -> Result<(), Failure> {
            loop {
                self.send_all_tls().map_err(Failure::Io)?;
                if !self.tls.is_handshaking() {
                    return Ok(());
                }
                match self.read_tls() {
                    Ok(0) => {
                        return Err(Failure::Io(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "the server closed the connection in the TLS handshake",
                        )))
                    }
                    Ok(_) => {}
                    Err(e) => return Err(Failure::Io(e)),
                }
                self.tls.process_new_packets().map_err(Failure::Tls)?;
            }
        });
        done.map_err(|f| self.raise(f))
    }

    /// Encrypt all of `data` and send it.
    fn sendall(&mut self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        let sent = py.allow_threads(|| -> io::Result<()> {
            let mut done = 0;
            while done < data.len() {
                done += self.tls.writer().write(&data[done..])?;
                self.send_all_tls()?;
            }
            self.send_all_tls()
        });
        Ok(sent?)
    }

    /// At most `n` decrypted bytes, waiting for some: b"" once the server closed.
    fn recv<'py>(&mut self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = vec![0u8; n];
        let got = py.allow_threads(|| -> Result<usize, Failure> {
            loop {
                match self.tls.reader().read(&mut out) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(Failure::Io(e)),
                }
                if self.eof {
                    return Ok(0);
                }
                self.more(0)?;
            }
        });
        let got = got.map_err(|f| self.raise(f))?;
        Ok(PyBytes::new(py, &out[..got]))
    }

    /// Decrypted bytes into `buffer` (writable, contiguous) until its first `n` bytes are
    /// filled, the server closed, or a socket wait ran out after some came: how many.
    #[pyo3(signature = (buffer, n=None))]
    fn recv_into(
        &mut self,
        py: Python<'_>,
        buffer: PyBuffer<u8>,
        n: Option<usize>,
    ) -> PyResult<usize> {
        if buffer.readonly() || !buffer.is_c_contiguous() {
            return Err(PyValueError::new_err(
                "recv_into takes a writable contiguous buffer",
            ));
        }
        let n = n.unwrap_or(buffer.len_bytes()).min(buffer.len_bytes());
        let out = Out(buffer.buf_ptr() as *mut u8, n);
        let got = py.allow_threads(|| {
            let out = out;
            // `buffer` is held until after this call: its bytes stay where they are
            let view = unsafe { std::slice::from_raw_parts_mut(out.0, out.1) };
            self.fill(view)
        });
        got.map_err(|f| self.raise(f))
    }

    /// Whether decrypted bytes wait to be read, or the server closed: a kept-alive
    /// connection with either is not used again.
    fn pending(&mut self) -> bool {
        match self.tls.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() || self.eof,
            Err(_) => true,
        }
    }

    /// Forget the descriptor (Python closes the socket next): a later call fails with
    /// EBADF instead of reaching a descriptor the number was given to since.
    fn detach(&mut self) {
        self.fd = -1;
    }

    /// The certificates the server sent (DER, its own first), once the handshake is done.
    fn peer_chain<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        crate::peer_chain(py, &self.tls)
    }
}
