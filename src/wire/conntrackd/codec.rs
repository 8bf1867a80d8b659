//! The message layer of conntrackd's format: [`ConntrackdCodec`] for the
//! protocol core, the checked [`MessageView`] of one message header, the
//! datagram decoder and the message encoder, which hand the bodies to
//! `flow` and `expect`.

use super::expect::{emit_exp, exp_len, parse_exp};
use super::flow::{emit_flow, emit_key, flow_len, key_len, parse_flow};
use super::{ACK_HEADER_LEN, HEADER_LEN, VERSION, be32, flags, msg_type};
use crate::wire::{
    Codec, DatagramHeader, Message, MessageHeader, MessageRef, Received, WireError, Writer,
};

/// The codec the protocol core uses in conntrackd mode.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConntrackdCodec;

impl Codec for ConntrackdCodec {
    fn header_len(&self) -> usize {
        0
    }

    fn trailer_len(&self) -> usize {
        0
    }

    fn message_len(&self, msg: &MessageRef<'_>) -> usize {
        message_len(msg)
    }

    fn emit_message(
        &self,
        msg: &MessageRef<'_>,
        seq: u32,
        buf: &mut [u8],
    ) -> Result<usize, WireError> {
        emit_message(msg, seq, buf)
    }

    fn finish(
        &mut self,
        hdr: &DatagramHeader,
        _count: u16,
        end: usize,
        buf: &mut [u8],
    ) -> Result<usize, WireError> {
        // HELLO / HELLO_BACK go on every message of the datagram.
        let bits = hdr.flags & (flags::HELLO | flags::HELLO_BACK);
        let buf = buf.get_mut(..end).ok_or(WireError::BufferTooSmall)?;
        let mut at = 0;
        while at + HEADER_LEN <= end {
            buf[at + 1] |= bits;
            let len = usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]]));
            if len < HEADER_LEN {
                return Err(WireError::BadLength);
            }
            at += len;
        }
        Ok(end)
    }

    fn decode(&self, bytes: &[u8], out: &mut Vec<Received>) -> Result<DatagramHeader, WireError> {
        decode(bytes, out)
    }

    fn is_sequenced(&self, msg: &MessageRef<'_>) -> bool {
        !matches!(msg, MessageRef::Hello { .. } | MessageRef::HelloBack { .. })
    }
}

/// A checked view of one message at the start of a buffer.
#[derive(Clone, Copy, Debug)]
pub struct MessageView<'a> {
    bytes: &'a [u8],
}

impl<'a> MessageView<'a> {
    /// Check the header and the length field against `buf` (which may hold
    /// more messages after this one), as conntrackd's receive loop does.
    pub fn new_checked(buf: &'a [u8]) -> Result<MessageView<'a>, WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if len < HEADER_LEN || len > buf.len() {
            return Err(WireError::BadLength);
        }
        let view = MessageView { bytes: &buf[..len] };
        if view.has_range() && len < ACK_HEADER_LEN {
            return Err(WireError::BadLength);
        }
        Ok(view)
    }

    /// The protocol version (high nibble of byte 0).
    pub fn version(&self) -> u8 {
        self.bytes[0] >> 4
    }

    /// The message type (low nibble of byte 0).
    pub fn msg_type(&self) -> u8 {
        self.bytes[0] & 0x0f
    }

    /// Flag bits.
    pub fn flags(&self) -> u8 {
        self.bytes[1]
    }

    /// The whole message's length.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true after `new_checked` (kept for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Sequence number.
    pub fn seq(&self) -> u32 {
        be32(&self.bytes[4..8])
    }

    /// True for a control message carrying a `[from, to]` range.
    pub fn has_range(&self) -> bool {
        self.msg_type() == msg_type::CTL
            && self.flags() & (flags::ACK | flags::NACK | flags::RESYNC) != 0
    }

    /// `from` and `to` of an ACK, NACK or RESYNC.
    pub fn range(&self) -> Option<(u32, u32)> {
        if !self.has_range() {
            return None;
        }
        let b = self.bytes.get(8..16)?;
        Some((be32(&b[0..4]), be32(&b[4..8])))
    }

    /// The attributes of a data message.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// Decode the body, following conntrackd's `digest_msg` order of tests.
    pub fn parse(&self) -> Result<Message, WireError> {
        let t = self.msg_type();
        let f = self.flags();
        if t <= msg_type::STATE_MAX && f & !(flags::HELLO | flags::HELLO_BACK) == 0 {
            return match t {
                msg_type::CT_NEW => Ok(Message::FlowNew(parse_flow(self.payload())?)),
                msg_type::CT_UPD => Ok(Message::FlowUpdate(parse_flow(self.payload())?)),
                msg_type::CT_DEL => Ok(Message::FlowDestroy(parse_flow(self.payload())?.key())),
                msg_type::EXP_NEW | msg_type::EXP_UPD => {
                    Ok(Message::ExpNew(Box::new(parse_exp(self.payload())?)))
                }
                msg_type::EXP_DEL => Ok(Message::ExpDestroy(Box::new(parse_exp(self.payload())?))),
                other => Err(WireError::UnknownMessage(other)),
            };
        }
        if t != msg_type::CTL {
            return Err(WireError::UnknownMessage(t));
        }
        let (from, to) = self.range().unwrap_or((0, 0));
        if f & flags::ACK != 0 {
            Ok(Message::Ack { from, to })
        } else if f & flags::NACK != 0 {
            Ok(Message::Nack { from, to })
        } else if f & flags::RESYNC != 0 {
            Ok(Message::ResyncRequest)
        } else if f & flags::ALIVE != 0 {
            Ok(Message::Alive)
        } else {
            Err(WireError::UnknownMessage(t))
        }
    }
}

/// Decode a datagram of back-to-back messages. As in conntrackd, the first
/// bad length abandons the rest; a message with another version is skipped
/// without consuming a sequence number; a message whose body does not parse
/// still consumed its sequence number.
pub fn decode(bytes: &[u8], out: &mut Vec<Received>) -> Result<DatagramHeader, WireError> {
    let mut rest = bytes;
    let mut first: Option<(u8, u32)> = None;
    while !rest.is_empty() {
        let view = match MessageView::new_checked(rest) {
            Ok(v) => v,
            Err(e) => {
                if first.is_none() {
                    return Err(e);
                }
                out.push(Received { sequenced: false, msg: Err(e), header: None });
                break;
            }
        };
        rest = &rest[view.len()..];
        if view.version() != VERSION {
            out.push(Received {
                sequenced: false,
                msg: Err(WireError::BadVersion(view.version())),
                header: None,
            });
            continue;
        }
        first.get_or_insert((view.flags(), view.seq()));
        out.push(Received {
            sequenced: true,
            msg: view.parse(),
            header: Some(MessageHeader { flags: view.flags(), seq: view.seq() }),
        });
    }
    let (flags, seq) = first.ok_or(WireError::BadVersion(bytes.first().map_or(0, |b| b >> 4)))?;
    Ok(DatagramHeader { flags, session: 0, seq })
}

/// Bytes `msg` takes on the wire (0 for what this format cannot carry:
/// BULK_END, and HELLO / HELLO_BACK, which are flags).
pub fn message_len(msg: &MessageRef<'_>) -> usize {
    match msg {
        MessageRef::FlowNew(f) | MessageRef::FlowUpdate(f) => HEADER_LEN + flow_len(f),
        MessageRef::FlowDestroy(k) => HEADER_LEN + key_len(k),
        MessageRef::ResyncRequest | MessageRef::Ack { .. } | MessageRef::Nack { .. } => {
            ACK_HEADER_LEN
        }
        MessageRef::Alive => HEADER_LEN,
        // conntrackd has no digests: anti-entropy is off in this dialect.
        MessageRef::ExpNew(e) | MessageRef::ExpDestroy(e) => HEADER_LEN + exp_len(e),
        MessageRef::BulkEnd { .. }
        | MessageRef::Hello { .. }
        | MessageRef::HelloBack { .. }
        | MessageRef::Stamp { .. }
        | MessageRef::Digest { .. }
        | MessageRef::RepairRequest { .. }
        | MessageRef::FlowRepair(_)
        | MessageRef::RepairEnd { .. } => 0,
    }
}

/// Write `msg` with sequence number `seq` at the start of `buf`.
pub fn emit_message(msg: &MessageRef<'_>, seq: u32, buf: &mut [u8]) -> Result<usize, WireError> {
    let len = message_len(msg);
    if len == 0 {
        return Err(WireError::BadMessage);
    }
    let len16 = u16::try_from(len).map_err(|_| WireError::BufferTooSmall)?;
    let out = buf.get_mut(..len).ok_or(WireError::BufferTooSmall)?;
    out.fill(0);
    let (t, f, range) = match msg {
        MessageRef::FlowNew(_) => (msg_type::CT_NEW, 0, None),
        MessageRef::FlowUpdate(_) => (msg_type::CT_UPD, 0, None),
        MessageRef::FlowDestroy(_) => (msg_type::CT_DEL, 0, None),
        MessageRef::ExpNew(_) => (msg_type::EXP_NEW, 0, None),
        MessageRef::ExpDestroy(_) => (msg_type::EXP_DEL, 0, None),
        MessageRef::ResyncRequest => (msg_type::CTL, flags::RESYNC, Some((0, 0))),
        MessageRef::Ack { from, to } => (msg_type::CTL, flags::ACK, Some((*from, *to))),
        MessageRef::Nack { from, to } => (msg_type::CTL, flags::NACK, Some((*from, *to))),
        MessageRef::Alive => (msg_type::CTL, flags::ALIVE, None),
        // What the format cannot carry has no length (`message_len`, which
        // names each such message) and was refused above.
        _ => return Err(WireError::BadMessage),
    };
    let mut w = Writer { buf: out, at: 0 };
    w.u8((VERSION << 4) | t);
    w.u8(f);
    w.u16(len16);
    w.u32(seq);
    if let Some((from, to)) = range {
        w.u32(from);
        w.u32(to);
    }
    match msg {
        MessageRef::FlowNew(flow) | MessageRef::FlowUpdate(flow) => emit_flow(flow, &mut w),
        MessageRef::FlowDestroy(key) => emit_key(key, &mut w),
        MessageRef::ExpNew(e) | MessageRef::ExpDestroy(e) => emit_exp(e, &mut w),
        _ => {}
    }
    debug_assert_eq!(w.at, len);
    Ok(len)
}
