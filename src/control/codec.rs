//! The frame codec, pure so that it is tested and fuzzed without sockets:
//! the request frame both ways, the body and status frames of a response,
//! and [`ResponseDecoder`], which splits a response stream whatever the
//! read sizes. [`ControlError`] is a malformed frame.

use std::fmt;

use super::{CacheSel, MAX_REQUEST_LEN, MAX_RESPONSE_FRAME, Request, StatsSection, VERSION};

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
