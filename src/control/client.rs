//! The small blocking client the CLI uses: [`call`] connects, sends one
//! request, streams the body out and returns the status, all within an
//! optional timeout.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{ControlError, Request, ResponseDecoder, ResponseFrame, encode_request};

/// Why the CLI could not get an answer.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens on the socket.
    NotRunning {
        /// The control socket.
        path: PathBuf,
    },
    /// The socket exists but we may not use it.
    PermissionDenied {
        /// The control socket.
        path: PathBuf,
    },
    /// The daemon closed the connection before the status frame.
    Closed {
        /// The control socket.
        path: PathBuf,
    },
    /// Reading, writing or printing failed.
    Io {
        /// The control socket.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The daemon sent something this client cannot parse.
    Protocol {
        /// The control socket.
        path: PathBuf,
        /// What was wrong.
        error: ControlError,
    },
    /// The daemon did not accept, read or answer the request within the
    /// caller's timeout: it is stopped (SIGSTOP), hung, or busy.
    Timeout {
        /// The control socket.
        path: PathBuf,
        /// The timeout that ran out.
        after: Duration,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NotRunning { path } => write!(
                f,
                "cannot connect to {}: is ctsyncd running? (start it with: systemctl start \
                 ctsyncd, or ctsyncd -C FILE -d)",
                path.display()
            ),
            ClientError::PermissionDenied { path } => write!(
                f,
                "cannot connect to {}: permission denied (run as root or as a member of \
                 general.control_group)",
                path.display()
            ),
            ClientError::Closed { path } => write!(
                f,
                "{}: the daemon closed the connection without an answer (see its log)",
                path.display()
            ),
            ClientError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            ClientError::Protocol { path, error } => write!(f, "{}: {error}", path.display()),
            ClientError::Timeout { path, after } => write!(
                f,
                "the daemon at {} did not answer within {} s (stopped or busy: see `systemctl \
                 status ctsyncd` and its log)",
                path.display(),
                after.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io { source, .. } => Some(source),
            ClientError::Protocol { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Send `req` to the daemon listening on `socket`, copy the body to `out` as
/// it arrives, and return whether the daemon reported success. A failure's
/// message is written to `out` too (after the body), ending in a newline.
///
/// With no `timeout`, blocks until the daemon answers: a commit of a large
/// table takes seconds, like conntrackd's. With one, connecting, sending
/// and the whole answer must fit in it, or the call fails with
/// [`ClientError::Timeout`]: a stopped daemon's socket still accepts
/// connections (the kernel queues them) but nothing ever answers.
pub fn call(
    socket: &Path,
    req: &Request,
    json: bool,
    timeout: Option<Duration>,
    out: &mut impl Write,
) -> Result<bool, ClientError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let timed_out =
        || ClientError::Timeout { path: socket.to_owned(), after: timeout.unwrap_or_default() };
    // Time left before the deadline; `Err` once it has passed.
    let left = || match deadline {
        None => Ok(None),
        Some(at) => match at.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(Some(left)),
            _ => Err(timed_out()),
        },
    };
    // A read or write that ran into its timeout, or a connect that found
    // the listen queue full until then (EAGAIN).
    let is_timeout = |e: &io::Error| {
        timeout.is_some() && matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
    };
    let io_err = |source| ClientError::Io { path: socket.to_owned(), source };
    let mut stream = connect(socket, left()?).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning { path: socket.to_owned() }
        }
        io::ErrorKind::PermissionDenied => {
            ClientError::PermissionDenied { path: socket.to_owned() }
        }
        _ if is_timeout(&e) => timed_out(),
        _ => io_err(e),
    })?;
    let write_timeout = left()?.map_or(Duration::from_secs(5), |l| l.min(Duration::from_secs(5)));
    stream.set_write_timeout(Some(write_timeout)).map_err(io_err)?;
    match stream.write_all(&encode_request(req, json)) {
        Err(e) if is_timeout(&e) => return Err(timed_out()),
        // A busy daemon answers and closes without reading: its answer is
        // still there to read.
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(io_err(e)),
        _ => {}
    }
    let mut decoder = ResponseDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(frame) = decoder
            .next()
            .map_err(|error| ClientError::Protocol { path: socket.to_owned(), error })?
        {
            match frame {
                ResponseFrame::Chunk(body) => out.write_all(&body).map_err(io_err)?,
                ResponseFrame::Status { ok, message } => {
                    if !message.is_empty() {
                        out.write_all(message.as_bytes()).map_err(io_err)?;
                        if !message.ends_with('\n') {
                            out.write_all(b"\n").map_err(io_err)?;
                        }
                    }
                    out.flush().map_err(io_err)?;
                    return Ok(ok);
                }
            }
        }
        stream.set_read_timeout(left()?).map_err(io_err)?;
        let n = match stream.read(&mut buf) {
            Ok(0) => return Err(ClientError::Closed { path: socket.to_owned() }),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(timed_out()),
            Err(e) => return Err(io_err(e)),
        };
        decoder.push(&buf[..n]);
    }
}

/// Connect to `socket`. With a `timeout`, a connect that finds the
/// daemon's listen queue full (a stopped daemon accepts nothing, so its
/// queue fills with keepalived's checks) waits at most that long and fails
/// with `WouldBlock`: Linux bounds that wait by the socket's send timeout.
fn connect(socket: &Path, timeout: Option<Duration>) -> io::Result<UnixStream> {
    let Some(timeout) = timeout else { return UnixStream::connect(socket) };
    let client = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    client.set_write_timeout(Some(timeout))?;
    client.connect(&socket2::SockAddr::unix(socket)?)?;
    Ok(client.into())
}
