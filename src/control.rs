//! The UNIX-socket request/response protocol between the CLI and the daemon.
//!
//! The codec is pure (no sockets) so that it can be tested and fuzzed alone;
//! [`call`] is the small blocking client the CLI uses.
//!
//! Every frame is a big-endian `u32` length followed by that many bytes.
//!
//! * Request, exactly one per connection, client → daemon:
//!   `[version = 1][request tag][flags][argument]` (4 bytes; flag bit 0 asks
//!   for JSON; the argument is the cache or statistics section, 0 = none).
//! * Response, daemon → client: zero or more body frames `[1][bytes]`
//!   (so that a dump of a million flows streams instead of being built in
//!   memory), then one status frame `[2][0 = failed | 1 = ok][message]`.
//!   The daemon closes the connection after the status.
//!
//! Unlike conntrackd, whose client exits 0 whenever it could connect, the
//! status frame lets `ctsyncd -c` fail visibly when the commit failed.
//!
//! Decoders never panic and bound what they accept: a request frame longer
//! than [`MAX_REQUEST_LEN`] or a response frame longer than
//! [`MAX_RESPONSE_FRAME`] is an error, not an allocation.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Protocol version carried by every request.
pub const VERSION: u8 = 1;
/// Largest request frame payload accepted.
pub const MAX_REQUEST_LEN: usize = 64;
/// Largest response frame payload accepted (and produced).
pub const MAX_RESPONSE_FRAME: usize = 1 << 20;

/// What the CLI asks the daemon to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// `-c`: commit the external cache into the kernel.
    Commit,
    /// `-f`: flush one cache, or both (`None`).
    FlushCache(Option<CacheSel>),
    /// `-F`: flush the kernel's conntrack table.
    FlushKernel,
    /// `-R`: refill the internal cache from a kernel dump.
    ResyncKernel,
    /// `-B`: send the whole internal cache to the peers.
    BulkSend,
    /// `-n`: ask the peers for a bulk send.
    RequestResync,
    /// `-t`: flush the kernel table after `sync.purge_timeout`.
    Purge,
    /// `-k`: stop the daemon.
    Kill,
    /// `-s`: statistics, all general ones (`None`) or one section.
    Stats(Option<StatsSection>),
    /// `-s --prometheus`: every metric in the Prometheus text format.
    Metrics,
    /// `-i`: dump the internal cache.
    DumpInternal,
    /// `-e`: dump the external cache.
    DumpExternal,
    /// `-i expect` / `-e expect`: dump a cache's expectations.
    DumpExpectations(CacheSel),
    /// Re-read the sync key file (and nothing else).
    Reload,
    /// `--check-ready`: succeed only if this node holds the peer's complete
    /// table. keepalived runs it as a `vrrp_script`: a daemon that is
    /// stopped, killed or stuck answers nothing, so the check fails closed.
    CheckReady,
    /// Test suites only, honoured by a daemon started with `--test-hooks`:
    /// drop (true) or apply again (false) the peer's flow messages, so that
    /// the external cache drifts on purpose (anti-entropy tests).
    TestDropPeerFlows(bool),
}

/// Which cache `-f` flushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheSel {
    /// The flows of this firewall's kernel.
    Internal,
    /// The flows received from the peers.
    External,
}

/// The statistics sections of `-s`, conntrackd's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsSection {
    /// Sync protocol counters: malformed, lost, out of order messages.
    Network,
    /// Cache counters.
    Cache,
    /// Kernel events, overruns, resyncs.
    Runtime,
    /// Per-channel traffic and state (`multicast` is an alias).
    Link,
    /// Sequence numbers waiting in the resend queue.
    Rsqueue,
    /// Child processes (none: kept for compatibility).
    Process,
    /// Queue lengths.
    Queue,
    /// Flow statistics of the kernel table.
    Ct,
    /// Expectation statistics.
    Expect,
}

impl StatsSection {
    /// Every section, in the order of their names' table.
    pub const ALL: [StatsSection; 9] = [
        StatsSection::Network,
        StatsSection::Cache,
        StatsSection::Runtime,
        StatsSection::Link,
        StatsSection::Rsqueue,
        StatsSection::Process,
        StatsSection::Queue,
        StatsSection::Ct,
        StatsSection::Expect,
    ];

    /// The name `-s` takes.
    pub fn name(self) -> &'static str {
        match self {
            StatsSection::Network => "network",
            StatsSection::Cache => "cache",
            StatsSection::Runtime => "runtime",
            StatsSection::Link => "link",
            StatsSection::Rsqueue => "rsqueue",
            StatsSection::Process => "process",
            StatsSection::Queue => "queue",
            StatsSection::Ct => "ct",
            StatsSection::Expect => "expect",
        }
    }
}

/// Largest body frame the daemon sends: a long answer (a dump of a large
/// cache) goes out as many frames of this size.
pub const REPLY_CHUNK: usize = 60 * 1024;

/// The daemon's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlReply {
    /// The request succeeded: text, or JSON when the request asked for it,
    /// that the client prints to stdout.
    Ok(String),
    /// The request failed: the line that says why, which the client prints
    /// to stderr.
    Failed(String),
}

impl ControlReply {
    /// The frames for this answer: a success's body in frames of at most
    /// [`REPLY_CHUNK`] bytes (none for an empty body) then an ok status; a
    /// failure's reason travels as the status message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// [`ControlReply::encode`], appending to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            ControlReply::Ok(body) => {
                out.reserve(body.len() + 16);
                for chunk in body.as_bytes().chunks(REPLY_CHUNK) {
                    encode_chunk_into(out, chunk);
                }
                encode_status_into(out, true, "");
            }
            ControlReply::Failed(reason) => encode_status_into(out, false, reason),
        }
    }
}

impl<E: fmt::Display> From<Result<String, E>> for ControlReply {
    /// A request's outcome: its output, or its error's text.
    fn from(result: Result<String, E>) -> ControlReply {
        match result {
            Ok(body) => ControlReply::Ok(body),
            Err(e) => ControlReply::Failed(e.to_string()),
        }
    }
}

/// A malformed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// The bytes end inside a frame.
    Truncated,
    /// A frame's length is over the limit.
    TooLong(u32),
    /// Bytes follow the request frame.
    TrailingBytes,
    /// A version this build does not speak.
    BadVersion(u8),
    /// An unknown request tag.
    BadRequest(u8),
    /// An argument the request does not take.
    BadArgument(u8),
    /// Unknown flag bits.
    BadFlags(u8),
    /// An unknown response frame kind.
    BadFrame(u8),
    /// A status frame with a status byte other than 0 or 1, or no byte.
    BadStatus,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Truncated => write!(f, "truncated control frame"),
            ControlError::TooLong(n) => write!(f, "control frame of {n} bytes is too long"),
            ControlError::TrailingBytes => write!(f, "bytes after the control request"),
            ControlError::BadVersion(v) => {
                write!(
                    f,
                    "control protocol version {v} (expected {VERSION}): is the CLI the same version as the daemon?"
                )
            }
            ControlError::BadRequest(t) => write!(f, "unknown control request {t}"),
            ControlError::BadArgument(a) => write!(f, "invalid control request argument {a}"),
            ControlError::BadFlags(b) => write!(f, "unknown control request flags {b:#04x}"),
            ControlError::BadFrame(k) => write!(f, "unknown control response frame kind {k}"),
            ControlError::BadStatus => write!(f, "malformed control status frame"),
        }
    }
}

impl std::error::Error for ControlError {}

/// The request frame for `req`.
pub fn encode_request(req: &Request, json: bool) -> Vec<u8> {
    let (tag, arg) = request_code(req);
    let mut out = Vec::with_capacity(8);
    out.extend_from_slice(&4u32.to_be_bytes());
    out.extend_from_slice(&[VERSION, tag, u8::from(json) * FLAG_JSON, arg]);
    out
}

/// How many bytes of `buf` the request frame takes: `Ok(None)` until the
/// whole frame is there, an error as soon as its length is over the limit.
/// Lets the daemon read a request from a non-blocking socket.
pub fn request_frame_len(buf: &[u8]) -> Result<Option<usize>, ControlError> {
    let Some(len) = frame_len(buf) else { return Ok(None) };
    if len as usize > MAX_REQUEST_LEN {
        return Err(ControlError::TooLong(len));
    }
    let total = 4 + len as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// Parse one request frame (length prefix included, nothing after it) into
/// the request and whether JSON was asked for.
pub fn decode_request(buf: &[u8]) -> Result<(Request, bool), ControlError> {
    let total = request_frame_len(buf)?.ok_or(ControlError::Truncated)?;
    if buf.len() > total {
        return Err(ControlError::TrailingBytes);
    }
    let payload = &buf[4..total];
    let &[version, tag, flags, arg] = payload else {
        return Err(if payload.len() < 4 {
            ControlError::Truncated
        } else {
            ControlError::TooLong(payload.len() as u32)
        });
    };
    if version != VERSION {
        return Err(ControlError::BadVersion(version));
    }
    if flags & !FLAG_JSON != 0 {
        return Err(ControlError::BadFlags(flags));
    }
    let plain = |req| if arg == 0 { Ok(req) } else { Err(ControlError::BadArgument(arg)) };
    let req = match tag {
        tag::COMMIT => plain(Request::Commit)?,
        tag::FLUSH_CACHE => Request::FlushCache(match arg {
            0 => None,
            1 => Some(CacheSel::Internal),
            2 => Some(CacheSel::External),
            _ => return Err(ControlError::BadArgument(arg)),
        }),
        tag::FLUSH_KERNEL => plain(Request::FlushKernel)?,
        tag::RESYNC_KERNEL => plain(Request::ResyncKernel)?,
        tag::BULK_SEND => plain(Request::BulkSend)?,
        tag::REQUEST_RESYNC => plain(Request::RequestResync)?,
        tag::PURGE => plain(Request::Purge)?,
        tag::KILL => plain(Request::Kill)?,
        tag::STATS => Request::Stats(match arg {
            0 => None,
            n => Some(
                *StatsSection::ALL.get(usize::from(n) - 1).ok_or(ControlError::BadArgument(arg))?,
            ),
        }),
        tag::DUMP_INTERNAL => plain(Request::DumpInternal)?,
        tag::DUMP_EXTERNAL => plain(Request::DumpExternal)?,
        tag::DUMP_EXPECT => Request::DumpExpectations(match arg {
            1 => CacheSel::Internal,
            2 => CacheSel::External,
            _ => return Err(ControlError::BadArgument(arg)),
        }),
        tag::RELOAD => plain(Request::Reload)?,
        tag::CHECK_READY => plain(Request::CheckReady)?,
        tag::METRICS => plain(Request::Metrics)?,
        tag::TEST_DROP_PEER_FLOWS => Request::TestDropPeerFlows(match arg {
            0 => false,
            1 => true,
            _ => return Err(ControlError::BadArgument(arg)),
        }),
        _ => return Err(ControlError::BadRequest(tag)),
    };
    Ok((req, flags & FLAG_JSON != 0))
}

/// Body frames carrying `body` (split into frames of at most
/// [`MAX_RESPONSE_FRAME`] bytes; nothing for an empty body).
pub fn encode_chunk(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    encode_chunk_into(&mut out, body);
    out
}

/// [`encode_chunk`], appending to `out`.
pub fn encode_chunk_into(out: &mut Vec<u8>, body: &[u8]) {
    for piece in body.chunks(MAX_RESPONSE_FRAME - 1) {
        push_frame(out, FRAME_CHUNK, &[], piece);
    }
}

/// The final status frame.
pub fn encode_status(ok: bool, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 8);
    encode_status_into(&mut out, ok, message);
    out
}

/// [`encode_status`], appending to `out`. A message over the frame limit is
/// cut (at a character boundary).
pub fn encode_status_into(out: &mut Vec<u8>, ok: bool, message: &str) {
    let mut end = message.len().min(MAX_RESPONSE_FRAME - 2);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    push_frame(out, FRAME_STATUS, &[u8::from(ok)], &message.as_bytes()[..end]);
}

/// One decoded response frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseFrame {
    /// Part of the body.
    Chunk(Vec<u8>),
    /// The end of the response.
    Status {
        /// Whether the request succeeded.
        ok: bool,
        /// Why not, or empty.
        message: String,
    },
}

/// Splits a response byte stream into frames, whatever the read sizes.
#[derive(Debug, Default)]
pub struct ResponseDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl ResponseDecoder {
    /// An empty decoder.
    pub fn new() -> ResponseDecoder {
        ResponseDecoder::default()
    }

    /// Bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    // Not an `Iterator`: a decoding error and "need more bytes" differ.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<ResponseFrame>, ControlError> {
        let pending = &self.buf[self.start..];
        let Some(len) = frame_len(pending) else { return Ok(None) };
        if len == 0 {
            return Err(ControlError::Truncated);
        }
        if len as usize > MAX_RESPONSE_FRAME {
            return Err(ControlError::TooLong(len));
        }
        let total = 4 + len as usize;
        let Some(frame) = pending.get(4..total) else { return Ok(None) };
        let result = match frame {
            [FRAME_CHUNK, body @ ..] => ResponseFrame::Chunk(body.to_vec()),
            [FRAME_STATUS, status @ (0 | 1), message @ ..] => ResponseFrame::Status {
                ok: *status == 1,
                message: String::from_utf8_lossy(message).into_owned(),
            },
            [FRAME_STATUS, ..] => return Err(ControlError::BadStatus),
            [kind, ..] => return Err(ControlError::BadFrame(*kind)),
            [] => return Err(ControlError::Truncated),
        };
        self.start += total;
        if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(result))
    }

    /// True when no partial frame is buffered.
    pub fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }
}

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

const FLAG_JSON: u8 = 0x01;
const FRAME_CHUNK: u8 = 1;
const FRAME_STATUS: u8 = 2;

mod tag {
    pub const COMMIT: u8 = 1;
    pub const FLUSH_CACHE: u8 = 2;
    pub const FLUSH_KERNEL: u8 = 3;
    pub const RESYNC_KERNEL: u8 = 4;
    pub const BULK_SEND: u8 = 5;
    pub const REQUEST_RESYNC: u8 = 6;
    pub const PURGE: u8 = 7;
    pub const KILL: u8 = 8;
    pub const STATS: u8 = 9;
    pub const DUMP_INTERNAL: u8 = 10;
    pub const DUMP_EXTERNAL: u8 = 11;
    pub const RELOAD: u8 = 12;
    pub const TEST_DROP_PEER_FLOWS: u8 = 200;
    pub const DUMP_EXPECT: u8 = 13;
    pub const CHECK_READY: u8 = 14;
    pub const METRICS: u8 = 15;
}

fn request_code(req: &Request) -> (u8, u8) {
    match *req {
        Request::Commit => (tag::COMMIT, 0),
        Request::FlushCache(sel) => (
            tag::FLUSH_CACHE,
            match sel {
                None => 0,
                Some(CacheSel::Internal) => 1,
                Some(CacheSel::External) => 2,
            },
        ),
        Request::FlushKernel => (tag::FLUSH_KERNEL, 0),
        Request::ResyncKernel => (tag::RESYNC_KERNEL, 0),
        Request::BulkSend => (tag::BULK_SEND, 0),
        Request::RequestResync => (tag::REQUEST_RESYNC, 0),
        Request::Purge => (tag::PURGE, 0),
        Request::Kill => (tag::KILL, 0),
        Request::Stats(section) => (
            tag::STATS,
            section.map_or(0, |s| {
                StatsSection::ALL.iter().position(|&x| x == s).map_or(0, |i| i as u8 + 1)
            }),
        ),
        Request::DumpInternal => (tag::DUMP_INTERNAL, 0),
        Request::DumpExternal => (tag::DUMP_EXTERNAL, 0),
        Request::DumpExpectations(CacheSel::Internal) => (tag::DUMP_EXPECT, 1),
        Request::DumpExpectations(CacheSel::External) => (tag::DUMP_EXPECT, 2),
        Request::Reload => (tag::RELOAD, 0),
        Request::CheckReady => (tag::CHECK_READY, 0),
        Request::Metrics => (tag::METRICS, 0),
        Request::TestDropPeerFlows(on) => (tag::TEST_DROP_PEER_FLOWS, u8::from(on)),
    }
}

fn frame_len(buf: &[u8]) -> Option<u32> {
    buf.first_chunk::<4>().map(|b| u32::from_be_bytes(*b))
}

fn push_frame(out: &mut Vec<u8>, kind: u8, head: &[u8], body: &[u8]) {
    let len = 1 + head.len() + body.len();
    // Callers keep frames under MAX_RESPONSE_FRAME, far below u32::MAX.
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(head);
    out.extend_from_slice(body);
}

/// Who may use the control socket: root, or a process whose primary group
/// (`gid`) or one of whose supplementary `groups` is `control_gid`
/// (`general.control_group`). `SO_PEERCRED` gives only the primary group;
/// an operator is usually in the group as a supplementary one.
pub fn client_allowed(uid: u32, gid: u32, groups: &[u32], control_gid: Option<u32>) -> bool {
    uid == 0 || control_gid.is_some_and(|g| gid == g || groups.contains(&g))
}

/// Control connections open at once, in all.
pub const MAX_CLIENTS: usize = 256;
/// Of [`MAX_CLIENTS`], the connections only root may take: an operator's
/// `-c` at failover time must get in however many the group holds open.
pub const ROOT_SLOTS: usize = 32;
/// Connections one non-root user may hold open at once.
pub const MAX_CLIENTS_PER_UID: usize = 16;

/// Why a permitted client was turned away; the CLI prints the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// All connections are taken (for a non-root user: all but root's).
    Full,
    /// This user already holds [`MAX_CLIENTS_PER_UID`] connections.
    PerUser,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Busy::Full => {
                write!(f, "the daemon is serving {MAX_CLIENTS} control clients; try again")
            }
            Busy::PerUser => write!(
                f,
                "this user already holds {MAX_CLIENTS_PER_UID} control connections; close one and try again"
            ),
        }
    }
}

/// Whether a permitted client of `uid` gets a connection, with `open` held
/// in all and `open_by_uid` by that user.
pub fn admit(uid: u32, open: usize, open_by_uid: usize) -> Result<(), Busy> {
    if uid == 0 {
        return if open < MAX_CLIENTS { Ok(()) } else { Err(Busy::Full) };
    }
    if open >= MAX_CLIENTS - ROOT_SLOTS {
        Err(Busy::Full)
    } else if open_by_uid >= MAX_CLIENTS_PER_UID {
        Err(Busy::PerUser)
    } else {
        Ok(())
    }
}

/// The supplementary groups on the `Groups:` line of a `/proc/PID/status`
/// text; empty when the line is missing or unreadable (refusing is safe).
pub fn status_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().map_while(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

/// The supplementary groups of process `pid`, as the kernel has them now.
pub fn process_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| status_groups(&s))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_gets_in_where_others_are_turned_away() {
        use super::{Busy, MAX_CLIENTS, MAX_CLIENTS_PER_UID, ROOT_SLOTS, admit};
        let others = MAX_CLIENTS - ROOT_SLOTS;
        assert_eq!(admit(1000, 0, MAX_CLIENTS_PER_UID - 1), Ok(()));
        assert_eq!(admit(1000, 0, MAX_CLIENTS_PER_UID), Err(Busy::PerUser));
        assert_eq!(admit(1000, others - 1, 0), Ok(()));
        assert_eq!(admit(1000, others, 0), Err(Busy::Full));
        assert_eq!(admit(0, others, others), Ok(()));
        assert_eq!(admit(0, MAX_CLIENTS - 1, MAX_CLIENTS - 1), Ok(()));
        assert_eq!(admit(0, MAX_CLIENTS, 0), Err(Busy::Full));
    }

    use super::*;
    use proptest::prelude::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn the_control_group_admits_primary_and_supplementary_members_only() {
        let g = Some(1234);
        assert!(client_allowed(0, 0, &[], None), "root");
        assert!(client_allowed(0, 5, &[], g), "root in any group");
        assert!(client_allowed(1000, 1234, &[], g), "primary group");
        assert!(client_allowed(1000, 1000, &[27, 1234], g), "supplementary group");
        assert!(!client_allowed(1000, 1000, &[27, 100], g), "other groups");
        assert!(!client_allowed(1000, 1234, &[1234], None), "no control group configured");
    }

    #[test]
    fn supplementary_groups_come_from_the_status_groups_line() {
        let status = "Name:\tctsyncd\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t24 27 1234 \nNSpid:\t1\n";
        assert_eq!(status_groups(status), vec![24, 27, 1234]);
        assert_eq!(status_groups("Name:\tx\nGroups:\t\n"), Vec::<u32>::new());
        assert_eq!(status_groups("Name:\tx\n"), Vec::<u32>::new());
        assert_eq!(status_groups("Groups:\t12 x 13\n"), vec![12]);
        // Our own process: whatever its groups, the line parses.
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(process_groups(std::process::id() as i32), status_groups(&own));
    }

    fn all_requests() -> Vec<Request> {
        let mut v = vec![
            Request::Commit,
            Request::FlushCache(None),
            Request::FlushCache(Some(CacheSel::Internal)),
            Request::FlushCache(Some(CacheSel::External)),
            Request::FlushKernel,
            Request::ResyncKernel,
            Request::BulkSend,
            Request::RequestResync,
            Request::Purge,
            Request::Kill,
            Request::Stats(None),
            Request::DumpInternal,
            Request::DumpExternal,
            Request::DumpExpectations(CacheSel::Internal),
            Request::DumpExpectations(CacheSel::External),
            Request::Reload,
            Request::CheckReady,
            Request::Metrics,
            Request::TestDropPeerFlows(true),
            Request::TestDropPeerFlows(false),
        ];
        v.extend(StatsSection::ALL.iter().map(|&s| Request::Stats(Some(s))));
        v
    }

    #[test]
    fn every_request_round_trips() {
        let mut seen = std::collections::HashSet::new();
        for req in all_requests() {
            for json in [false, true] {
                let bytes = encode_request(&req, json);
                assert_eq!(bytes.len(), 8);
                assert_eq!(request_frame_len(&bytes), Ok(Some(8)));
                assert_eq!(decode_request(&bytes), Ok((req, json)));
                assert!(seen.insert(bytes), "two requests share an encoding: {req:?}");
            }
        }
    }

    #[test]
    fn bad_requests_are_refused() {
        let ok = encode_request(&Request::Stats(Some(StatsSection::Link)), true);
        for cut in 0..ok.len() {
            assert_eq!(decode_request(&ok[..cut]), Err(ControlError::Truncated), "{cut}");
            assert_eq!(request_frame_len(&ok[..cut]), Ok(None));
        }
        let mut long = ok.clone();
        long.push(0);
        assert_eq!(decode_request(&long), Err(ControlError::TrailingBytes));
        assert_eq!(decode_request(&[0, 0, 0, 65]), Err(ControlError::TooLong(65)));
        assert_eq!(
            request_frame_len(&[0xff, 0xff, 0xff, 0xff]),
            Err(ControlError::TooLong(u32::MAX))
        );
        assert_eq!(decode_request(&[0, 0, 0, 5, 1, 1, 0, 0, 0]), Err(ControlError::TooLong(5)));
        assert_eq!(decode_request(&[0, 0, 0, 3, 1, 1, 0]), Err(ControlError::Truncated));
        assert_eq!(decode_request(&[0, 0, 0, 4, 2, 1, 0, 0]), Err(ControlError::BadVersion(2)));
        assert_eq!(decode_request(&[0, 0, 0, 4, 1, 0, 0, 0]), Err(ControlError::BadRequest(0)));
        assert_eq!(decode_request(&[0, 0, 0, 4, 1, 99, 0, 0]), Err(ControlError::BadRequest(99)));
        assert_eq!(decode_request(&[0, 0, 0, 4, 1, 1, 2, 0]), Err(ControlError::BadFlags(2)));
        assert_eq!(decode_request(&[0, 0, 0, 4, 1, 1, 0, 1]), Err(ControlError::BadArgument(1)));
        assert_eq!(decode_request(&[0, 0, 0, 4, 1, 2, 0, 3]), Err(ControlError::BadArgument(3)));
        assert_eq!(decode_request(&[0, 0, 0, 4, 1, 9, 0, 10]), Err(ControlError::BadArgument(10)));
    }

    #[test]
    fn check_ready_has_its_own_tag_and_takes_no_argument() {
        // Tag 14, no flags, no argument: a client of another version that
        // does not know it gets BadRequest, never another request.
        let bytes = encode_request(&Request::CheckReady, false);
        assert_eq!(bytes, [0, 0, 0, 4, VERSION, 14, 0, 0]);
        assert_eq!(decode_request(&bytes), Ok((Request::CheckReady, false)));
        assert_eq!(
            decode_request(&[0, 0, 0, 4, VERSION, 14, 0, 1]),
            Err(ControlError::BadArgument(1))
        );
        assert_eq!(
            decode_request(&[0, 0, 0, 4, VERSION, 14, 4, 0]),
            Err(ControlError::BadFlags(4))
        );
        assert_eq!(decode_request(&[0, 0, 0, 4, VERSION, 15, 0, 0]), Ok((Request::Metrics, false)));
        assert_eq!(
            decode_request(&[0, 0, 0, 4, VERSION, 16, 0, 0]),
            Err(ControlError::BadRequest(16))
        );
    }

    fn decode_all(bytes: &[u8], step: usize) -> Result<Vec<ResponseFrame>, ControlError> {
        let mut d = ResponseDecoder::new();
        let mut frames = Vec::new();
        for piece in bytes.chunks(step.max(1)) {
            d.push(piece);
            while let Some(f) = d.next()? {
                frames.push(f);
            }
        }
        assert!(d.is_empty());
        Ok(frames)
    }

    #[test]
    fn responses_stream_in_any_read_size() {
        let mut bytes = encode_chunk(b"first\n");
        bytes.extend(encode_chunk(b""));
        bytes.extend(encode_chunk("second \u{e9}\n".as_bytes()));
        bytes.extend(encode_status(false, "3 entries can't be committed"));
        let expected = vec![
            ResponseFrame::Chunk(b"first\n".to_vec()),
            ResponseFrame::Chunk("second \u{e9}\n".as_bytes().to_vec()),
            ResponseFrame::Status { ok: false, message: "3 entries can't be committed".into() },
        ];
        for step in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(decode_all(&bytes, step).unwrap(), expected, "step {step}");
        }
    }

    #[test]
    fn big_bodies_are_split_into_frames() {
        let body = vec![b'x'; MAX_RESPONSE_FRAME * 2 + 10];
        let bytes = encode_chunk(&body);
        let frames = decode_all(&bytes, 100_000).unwrap();
        assert_eq!(frames.len(), 3);
        let joined: Vec<u8> = frames
            .into_iter()
            .flat_map(|f| match f {
                ResponseFrame::Chunk(b) => b,
                ResponseFrame::Status { .. } => panic!("status"),
            })
            .collect();
        assert_eq!(joined, body);
    }

    #[test]
    fn bad_responses_are_errors() {
        let mut d = ResponseDecoder::new();
        d.push(&[0, 0x20, 0, 0, 1]);
        assert_eq!(d.next(), Err(ControlError::TooLong(0x20_0000)));
        for (bytes, err) in [
            (&[0, 0, 0, 0][..], ControlError::Truncated),
            (&[0, 0, 0, 1, 9], ControlError::BadFrame(9)),
            (&[0, 0, 0, 1, 2], ControlError::BadStatus),
            (&[0, 0, 0, 2, 2, 7], ControlError::BadStatus),
        ] {
            let mut d = ResponseDecoder::new();
            d.push(bytes);
            assert_eq!(d.next(), Err(err), "{bytes:?}");
        }
    }

    #[test]
    fn response_encoding() {
        let frames = decode_all(&ControlReply::Ok("stats\n".into()).encode(), 5).unwrap();
        assert_eq!(
            frames,
            vec![
                ResponseFrame::Chunk(b"stats\n".to_vec()),
                ResponseFrame::Status { ok: true, message: String::new() }
            ]
        );
        let frames = decode_all(&ControlReply::Failed("no peer".into()).encode(), 5).unwrap();
        assert_eq!(frames, vec![ResponseFrame::Status { ok: false, message: "no peer".into() }]);
    }

    /// The bytes a reply puts on the wire: a long body in frames of
    /// [`REPLY_CHUNK`] bytes, each `[len][1][bytes]`, then `[len][2][ok]`;
    /// an empty body in no frame; a failure in the status frame alone.
    #[test]
    fn reply_bytes_on_the_wire() {
        let body = "x".repeat(REPLY_CHUNK + 1);
        let bytes = ControlReply::Ok(body.clone()).encode();
        let mut expected = Vec::new();
        expected.extend_from_slice(&(REPLY_CHUNK as u32 + 1).to_be_bytes());
        expected.push(1);
        expected.extend_from_slice(&body.as_bytes()[..REPLY_CHUNK]);
        expected.extend_from_slice(&[0, 0, 0, 2, 1, b'x']);
        expected.extend_from_slice(&[0, 0, 0, 2, 2, 1]);
        assert_eq!(bytes, expected);
        assert_eq!(ControlReply::Ok(String::new()).encode(), [0, 0, 0, 2, 2, 1]);
        assert_eq!(
            ControlReply::from(Err::<String, _>("no peer")).encode(),
            [&[0u8, 0, 0, 9, 2, 0][..], b"no peer"].concat()
        );
    }

    fn temp_socket(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ctsync-ctl-{}-{name}.sock", std::process::id()))
    }

    #[test]
    fn client_talks_to_a_server() {
        let path = temp_socket("ok");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut req = [0u8; 8];
            conn.read_exact(&mut req).unwrap();
            let (req, json) = decode_request(&req).unwrap();
            let mut reply = encode_chunk(format!("{req:?} {json}\n").as_bytes());
            reply.extend(encode_status(false, "partly failed"));
            conn.write_all(&reply).unwrap();
        });
        let mut out = Vec::new();
        let ok =
            call(&path, &Request::Stats(Some(StatsSection::Cache)), true, None, &mut out).unwrap();
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(!ok);
        assert_eq!(String::from_utf8(out).unwrap(), "Stats(Some(Cache)) true\npartly failed\n");
    }

    #[test]
    fn client_reports_a_missing_daemon_and_a_hang_up() {
        let path = temp_socket("missing");
        let _ = std::fs::remove_file(&path);
        let e = call(&path, &Request::Commit, false, None, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, ClientError::NotRunning { .. }));
        assert_eq!(
            e.to_string(),
            format!(
                "cannot connect to {}: is ctsyncd running? (start it with: systemctl start \
                 ctsyncd, or ctsyncd -C FILE -d)",
                path.display()
            )
        );
        // A socket file nobody listens on any more: connection refused.
        drop(UnixListener::bind(&path).unwrap());
        let e = call(&path, &Request::Commit, false, None, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, ClientError::NotRunning { .. }), "{e}");
        let _ = std::fs::remove_file(&path);

        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || drop(listener.accept().unwrap()));
        let e = call(&path, &Request::Commit, false, None, &mut Vec::new()).unwrap_err();
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            matches!(e, ClientError::Closed { .. }) || matches!(e, ClientError::Io { .. }),
            "{e}"
        );
    }

    /// `call(CheckReady)` with `timeout`, in a thread so that a client that
    /// hangs fails the test instead of hanging it; its error and duration.
    fn check_ready_failing(path: &Path, timeout: Duration) -> (ClientError, Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = path.to_owned();
        std::thread::spawn(move || {
            let started = Instant::now();
            let result = call(&path, &Request::CheckReady, false, Some(timeout), &mut Vec::new());
            let _ = tx.send((result, started.elapsed()));
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok((Err(e), took)) => (e, took),
            Ok((Ok(ok), _)) => panic!("answered {ok} instead of timing out"),
            Err(_) => panic!("--check-ready with a {timeout:?} timeout still waits after 10 s"),
        }
    }

    /// `--check-ready` against a stopped daemon (DESIGN.md principle 8):
    /// its socket still takes connections, the kernel queues them, and
    /// nothing answers. The timeout ends the call, not the caller.
    #[test]
    fn client_gives_up_at_its_timeout_when_nothing_answers() {
        let path = temp_socket("silent");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let timeout = Duration::from_millis(300);
        let (e, took) = check_ready_failing(&path, timeout);
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert!(took >= timeout && took < Duration::from_secs(3), "{took:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "the daemon at {} did not answer within 0.3 s (stopped or busy: see \
                 `systemctl status ctsyncd` and its log)",
                path.display()
            )
        );
        drop(listener);
        let _ = std::fs::remove_file(&path);
    }

    /// The timeout bounds the whole answer, not each read: a daemon that
    /// trickles bytes cannot keep the check waiting.
    #[test]
    fn client_timeout_bounds_the_whole_answer() {
        let path = temp_socket("trickle");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut req = [0u8; 8];
            conn.read_exact(&mut req).unwrap();
            let reply = encode_status(true, "ready: this node holds the peer's complete table");
            for byte in reply {
                if conn.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let timeout = Duration::from_millis(300);
        let (e, took) = check_ready_failing(&path, timeout);
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    /// A daemon stopped long enough has a full listen queue: connecting
    /// would block until it accepts, so the timeout must cover the connect.
    #[test]
    fn client_timeout_covers_a_connect_to_a_full_listen_queue() {
        use socket2::{Domain, SockAddr, Socket, Type};
        let path = temp_socket("full");
        let _ = std::fs::remove_file(&path);
        let addr = SockAddr::unix(&path).unwrap();
        let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        listener.bind(&addr).unwrap();
        listener.listen(0).unwrap();
        let mut queued = Vec::new();
        loop {
            let client = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
            client.set_nonblocking(true).unwrap();
            match client.connect(&addr) {
                Ok(()) => queued.push(client),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
            assert!(queued.len() < 64, "the listen queue never filled");
        }
        let timeout = Duration::from_millis(300);
        let (e, took) = check_ready_failing(&path, timeout);
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert!(took >= timeout && took < Duration::from_secs(3), "{took:?}");
        drop(listener);
        let _ = std::fs::remove_file(&path);
    }

    proptest! {
        #[test]
        fn decode_request_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok((req, json)) = decode_request(&bytes) {
                prop_assert_eq!(encode_request(&req, json), bytes);
            }
        }

        #[test]
        fn decode_request_never_panics_near_valid(tag in any::<u8>(), flags in any::<u8>(), arg in any::<u8>()) {
            let bytes = [0, 0, 0, 4, VERSION, tag, flags, arg];
            if let Ok((req, json)) = decode_request(&bytes) {
                prop_assert_eq!(encode_request(&req, json), bytes.to_vec());
            }
        }

        #[test]
        fn response_decoder_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            step in 1usize..10,
        ) {
            let mut d = ResponseDecoder::new();
            for piece in bytes.chunks(step) {
                d.push(piece);
                while let Ok(Some(_)) = d.next() {}
            }
        }
    }
}
