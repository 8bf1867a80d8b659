//! Byte codecs for the sync link: the native format and conntrackd's.
//!
//! The protocol core ([`crate::ftfw`]) speaks in [`Message`]s and
//! [`DatagramHeader`]s and reaches the bytes only through the [`Codec`]
//! trait, so a second codec (conntrackd 1.4's format, where every message
//! carries its own header and sequence number) can be plugged in without
//! touching the core. [`native`] is the format described in
//! `docs/PROTOCOL.md`; [`conntrackd`] is conntrackd 1.4's.
//!
//! Decoders never panic, whatever the input; every failure is a small
//! [`WireError`] that the core counts.

pub mod conntrackd;
pub mod native;

use crate::expect::Expectation;
use crate::flow::{Flow, FlowKey};

/// Why bytes from the peer were refused. Each variant feeds its own drop
/// counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireError {
    /// Fewer bytes than a header or a length field promised.
    Truncated,
    /// Not our magic number: not a ctsync datagram.
    BadMagic,
    /// A protocol version this build does not speak.
    BadVersion(u8),
    /// The checksum does not match: corrupted on the way.
    BadCrc,
    /// A length field contradicts the bytes around it.
    BadLength,
    /// A message body that does not make sense (missing attribute, bad
    /// UTF-8, duplicate core attribute).
    BadMessage,
    /// A known attribute with the wrong length.
    BadAttribute(u16),
    /// A message type this build does not know (skipped, not fatal).
    UnknownMessage(u8),
    /// The datagram is authenticated but no key is configured here.
    AuthUnsupported,
    /// A key is configured here but the datagram is not authenticated.
    AuthMissing,
    /// The datagram names a key id we do not have.
    UnknownKey(u32),
    /// The MAC does not match: forged, or made with another key.
    BadMac,
    /// Encryption is required here but the datagram is in clear.
    NotEncrypted,
    /// The datagram is encrypted but encryption is off here.
    EncryptUnsupported,
    /// The output buffer is too small for what was to be written.
    BufferTooSmall,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Truncated => f.write_str("truncated"),
            WireError::BadMagic => f.write_str("bad magic"),
            WireError::BadVersion(v) => write!(f, "unsupported version {v}"),
            WireError::BadCrc => f.write_str("checksum mismatch"),
            WireError::BadLength => f.write_str("inconsistent length"),
            WireError::BadMessage => f.write_str("malformed message"),
            WireError::BadAttribute(a) => write!(f, "attribute {a} has a wrong length"),
            WireError::UnknownMessage(t) => write!(f, "unknown message type {t}"),
            WireError::AuthUnsupported => {
                f.write_str("authenticated datagram but no key configured")
            }
            WireError::AuthMissing => f.write_str("unauthenticated datagram but a key is required"),
            WireError::UnknownKey(id) => write!(f, "unknown key id {id}"),
            WireError::BadMac => f.write_str("MAC mismatch"),
            WireError::NotEncrypted => {
                f.write_str("datagram in clear but sync.auth.encrypt is on here")
            }
            WireError::EncryptUnsupported => {
                f.write_str("encrypted datagram but sync.auth.encrypt is off here")
            }
            WireError::BufferTooSmall => f.write_str("output buffer too small"),
        }
    }
}

impl std::error::Error for WireError {}

/// The per-datagram fields the protocol core reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatagramHeader {
    /// Flag bits, see [`native::flags`].
    pub flags: u8,
    /// The sender's session id (random per start).
    pub session: u32,
    /// Sequence number of the first sequenced message in the datagram, or
    /// the sender's next sequence number when there is none.
    pub seq: u32,
}

/// One decoded message, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A flow the peer's kernel created (sequenced).
    FlowNew(Flow),
    /// The full current state of a flow (sequenced).
    FlowUpdate(Flow),
    /// A flow the peer's kernel destroyed (sequenced).
    FlowDestroy(FlowKey),
    /// An expectation the peer's kernel holds (sequenced).
    ExpNew(Box<Expectation>),
    /// This expectation is gone (sequenced). It travels whole because
    /// conntrackd finds the one to remove by more than its tuple.
    ExpDestroy(Box<Expectation>),
    /// End of a bulk that started at `bulk_start` (sequenced).
    BulkEnd { bulk_start: u32 },
    /// The sender wants our whole table (sequenced, so that it is reliable).
    ResyncRequest,
    /// Anti-entropy: the digests of ranges `first..first + digests.len()`
    /// of the sender's table, out of `ranges` (sequenced, never resent).
    /// `oldest` is the seq of the sender's oldest unacknowledged flow
    /// message when it sent this one.
    Digest { oldest: u32, ranges: u16, first: u16, digests: Vec<u64> },
    /// Anti-entropy: the ranges (a bitmap, bit i = range i, of `ranges`
    /// ranges) whose digests differ; the receiver resends their flows
    /// (sequenced).
    RepairRequest { ranges: u16, set: u128 },
    /// A flow resent by an anti-entropy repair: as [`Message::FlowUpdate`]
    /// (sequenced).
    FlowRepair(Flow),
    /// End of a repair of the ranges in `set`, which started at seq
    /// `repair_start` (sequenced).
    RepairEnd { repair_start: u32, ranges: u16, set: u128 },
    /// `[from, to]` were accepted; everything before `from` will never be.
    Ack { from: u32, to: u32 },
    /// `[from, to]` were lost.
    Nack { from: u32, to: u32 },
    /// Keepalive; the header's seq is the sender's next seq.
    Alive,
    /// The sender's session is `session` and it wants ours; `round`
    /// numbers its handshake attempts.
    Hello { session: u32, round: u32 },
    /// Answer to a HELLO, echoing its session and round.
    HelloBack { session: u32, round: u32 },
    /// Native dialect with keys, first in every datagram: the sender's
    /// datagram `counter` in its session (a replay window refuses a second
    /// copy), and the receiver's session as the sender knows it, 0 before
    /// the handshake (the datagram's ACKs and NACKs are about that
    /// session's sequence numbers only).
    Stamp { counter: u64, peer_session: u32 },
}

/// A message to emit, borrowing its flow so that sending does not clone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageRef<'a> {
    /// See [`Message::FlowNew`].
    FlowNew(&'a Flow),
    /// See [`Message::FlowUpdate`].
    FlowUpdate(&'a Flow),
    /// See [`Message::FlowDestroy`].
    FlowDestroy(&'a FlowKey),
    /// See [`Message::ExpNew`].
    ExpNew(&'a Expectation),
    /// See [`Message::ExpDestroy`].
    ExpDestroy(&'a Expectation),
    /// See [`Message::BulkEnd`].
    BulkEnd { bulk_start: u32 },
    /// See [`Message::ResyncRequest`].
    ResyncRequest,
    /// See [`Message::Digest`].
    Digest { oldest: u32, ranges: u16, first: u16, digests: &'a [u64] },
    /// See [`Message::RepairRequest`].
    RepairRequest { ranges: u16, set: u128 },
    /// See [`Message::FlowRepair`].
    FlowRepair(&'a Flow),
    /// See [`Message::RepairEnd`].
    RepairEnd { repair_start: u32, ranges: u16, set: u128 },
    /// See [`Message::Ack`].
    Ack { from: u32, to: u32 },
    /// See [`Message::Nack`].
    Nack { from: u32, to: u32 },
    /// See [`Message::Alive`].
    Alive,
    /// See [`Message::Hello`].
    Hello { session: u32, round: u32 },
    /// See [`Message::HelloBack`].
    HelloBack { session: u32, round: u32 },
    /// See [`Message::Stamp`].
    Stamp { counter: u64, peer_session: u32 },
}

impl Message {
    /// The borrowed form, for emitting.
    pub fn as_ref(&self) -> MessageRef<'_> {
        match self {
            Message::FlowNew(f) => MessageRef::FlowNew(f),
            Message::FlowUpdate(f) => MessageRef::FlowUpdate(f),
            Message::FlowDestroy(k) => MessageRef::FlowDestroy(k),
            Message::ExpNew(e) => MessageRef::ExpNew(e),
            Message::ExpDestroy(k) => MessageRef::ExpDestroy(k),
            Message::BulkEnd { bulk_start } => MessageRef::BulkEnd { bulk_start: *bulk_start },
            Message::ResyncRequest => MessageRef::ResyncRequest,
            Message::Digest { oldest, ranges, first, digests } => {
                MessageRef::Digest { oldest: *oldest, ranges: *ranges, first: *first, digests }
            }
            Message::RepairRequest { ranges, set } => {
                MessageRef::RepairRequest { ranges: *ranges, set: *set }
            }
            Message::FlowRepair(f) => MessageRef::FlowRepair(f),
            Message::RepairEnd { repair_start, ranges, set } => {
                MessageRef::RepairEnd { repair_start: *repair_start, ranges: *ranges, set: *set }
            }
            Message::Ack { from, to } => MessageRef::Ack { from: *from, to: *to },
            Message::Nack { from, to } => MessageRef::Nack { from: *from, to: *to },
            Message::Alive => MessageRef::Alive,
            Message::Hello { session, round } => {
                MessageRef::Hello { session: *session, round: *round }
            }
            Message::HelloBack { session, round } => {
                MessageRef::HelloBack { session: *session, round: *round }
            }
            Message::Stamp { counter, peer_session } => {
                MessageRef::Stamp { counter: *counter, peer_session: *peer_session }
            }
        }
    }

    /// True for messages that consume a sequence number.
    pub fn is_sequenced(&self) -> bool {
        self.as_ref().is_sequenced()
    }
}

impl MessageRef<'_> {
    /// True for messages that consume a sequence number.
    pub fn is_sequenced(&self) -> bool {
        matches!(
            self,
            MessageRef::FlowNew(_)
                | MessageRef::FlowUpdate(_)
                | MessageRef::FlowDestroy(_)
                | MessageRef::ExpNew(_)
                | MessageRef::ExpDestroy(_)
                | MessageRef::BulkEnd { .. }
                | MessageRef::ResyncRequest
                | MessageRef::Digest { .. }
                | MessageRef::RepairRequest { .. }
                | MessageRef::FlowRepair(_)
                | MessageRef::RepairEnd { .. }
        )
    }
}

/// One message slot of a decoded datagram. A message that could not be
/// parsed still says whether it consumed a sequence number, so that one bad
/// message does not shift the numbering of the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// True when the slot consumed a sequence number.
    pub sequenced: bool,
    /// The message, or why it was skipped.
    pub msg: Result<Message, WireError>,
    /// The message's own header, in formats where every message carries
    /// one (conntrackd's); `None` in the native format, where the datagram
    /// header numbers the messages.
    pub header: Option<MessageHeader>,
}

/// A per-message header: flag bits and sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageHeader {
    /// Flag bits, see [`conntrackd::flags`].
    pub flags: u8,
    /// The message's sequence number.
    pub seq: u32,
}

/// A datagram format. The protocol core owns one as a [`DialectCodec`].
///
/// Building a datagram: the core reserves [`Codec::header_len`] bytes and
/// [`Codec::trailer_len`] bytes, emits messages one by one with
/// [`Codec::emit_message`] after the header, then calls
/// [`Codec::finish`] to write header and trailer.
pub trait Codec: Send {
    /// Bytes before the first message.
    fn header_len(&self) -> usize;
    /// Bytes after the last message.
    fn trailer_len(&self) -> usize;
    /// Bytes `msg` takes.
    fn message_len(&self, msg: &MessageRef<'_>) -> usize;
    /// Write `msg` at the start of `buf`; `seq` is its sequence number (for
    /// an unsequenced message, the next one). Returns the bytes written, or
    /// [`WireError::BufferTooSmall`] without side effects when it does not
    /// fit.
    fn emit_message(
        &self,
        msg: &MessageRef<'_>,
        seq: u32,
        buf: &mut [u8],
    ) -> Result<usize, WireError>;
    /// Write header and trailer around `count` messages that occupy
    /// `buf[header_len()..end]`; returns the datagram's total length.
    /// Mutable because a codec may number what it sends (the encrypting
    /// native codec's nonce counter).
    fn finish(
        &mut self,
        hdr: &DatagramHeader,
        count: u16,
        end: usize,
        buf: &mut [u8],
    ) -> Result<usize, WireError>;
    /// Check and decode one datagram, appending its messages to `out`.
    fn decode(&self, bytes: &[u8], out: &mut Vec<Received>) -> Result<DatagramHeader, WireError>;
    /// True when `msg` consumes a sequence number in this format.
    fn is_sequenced(&self, msg: &MessageRef<'_>) -> bool {
        msg.is_sequenced()
    }
}

/// The codec of one dialect, as the protocol core owns it: format-neutral
/// through [`Codec`] (it dereferences to `dyn Codec`), while what only one
/// format has, such as the native format's key rotation
/// ([`native::NativeCodec::set_auth_keys`]), is reached by matching.
#[derive(Debug)]
pub enum DialectCodec {
    /// ctsync's own format.
    Native(native::NativeCodec),
    /// conntrackd 1.4's format.
    Conntrackd(conntrackd::ConntrackdCodec),
}

impl std::ops::Deref for DialectCodec {
    type Target = dyn Codec;

    fn deref(&self) -> &(dyn Codec + 'static) {
        match self {
            DialectCodec::Native(codec) => codec,
            DialectCodec::Conntrackd(codec) => codec,
        }
    }
}

impl std::ops::DerefMut for DialectCodec {
    fn deref_mut(&mut self) -> &mut (dyn Codec + 'static) {
        match self {
            DialectCodec::Native(codec) => codec,
            DialectCodec::Conntrackd(codec) => codec,
        }
    }
}

/// Sequential big-endian writer over a buffer the caller sized beforehand
/// (each codec's length functions), which is why the writes cannot overrun.
/// Each codec adds its own attribute layout in an `impl Writer` of its own.
pub(crate) struct Writer<'a> {
    pub(crate) buf: &'a mut [u8],
    pub(crate) at: usize,
}

impl Writer<'_> {
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }
}

/// A decoded expectation, refused unless its master, expected tuple and
/// mask are of one address family: no kernel entry could match a mixed
/// one, and the commit would fail on it. Both wire formats decode to this.
pub(crate) fn one_family(exp: Expectation) -> Result<Expectation, WireError> {
    let v6 = exp.tuple.is_ipv6();
    if exp.master.is_ipv6() != v6 || exp.mask_src.is_ipv6() != v6 {
        return Err(WireError::BadMessage);
    }
    Ok(exp)
}
