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
//!
//! Layout: the protocol's limits are here; `request` is the model of what
//! is asked ([`Request`]) and answered ([`ControlReply`]), `codec` the pure
//! frame encoders and decoders, `client` the CLI's [`call`], and `access`
//! who the daemon lets in and how many at once.

mod access;
mod client;
mod codec;
mod request;
#[cfg(test)]
mod tests;

pub use access::{
    Busy, MAX_CLIENTS, MAX_CLIENTS_PER_UID, ROOT_SLOTS, admit, client_allowed, process_groups,
    status_groups,
};
pub use client::{ClientError, call};
pub use codec::{
    ControlError, ResponseDecoder, ResponseFrame, decode_request, encode_chunk, encode_chunk_into,
    encode_request, encode_status, encode_status_into, request_frame_len,
};
pub use request::{CacheSel, ControlReply, REPLY_CHUNK, Request, StatsSection};

/// Protocol version carried by every request.
pub const VERSION: u8 = 1;
/// Largest request frame payload accepted.
pub const MAX_REQUEST_LEN: usize = 64;
/// Largest response frame payload accepted (and produced).
pub const MAX_RESPONSE_FRAME: usize = 1 << 20;
