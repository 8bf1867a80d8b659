//! Message bodies other than flows and expectations, and the dispatch by
//! message type: [`MessagePacket::parse`] reads a [`Message`] from a view,
//! [`message_len`] and [`emit_message`] write one.

use super::expect::{emit_exp, exp_len, parse_exp};
use super::flow::{emit_flow, emit_key, flow_len, key_len, parse_flow, parse_key};
use super::{MSG_HEADER_LEN, MessagePacket, be16, be32, field, msg_type};
use crate::wire::{Message, MessageRef, WireError, Writer};

/// DIGEST body before the digests: oldest, ranges, first, count, reserved.
const DIGEST_HEAD: usize = 12;
/// Most ranges a REPAIR_REQUEST or REPAIR_END bitmap can name here.
const MAX_RANGES: u16 = 128;
/// DIGEST bytes besides the digests (message header and fixed fields).
pub const DIGEST_OVERHEAD: usize = MSG_HEADER_LEN + DIGEST_HEAD;

impl<'a> MessagePacket<'a> {
    /// Decode the body. Unknown types give [`WireError::UnknownMessage`].
    pub fn parse(&self) -> Result<Message, WireError> {
        let body = self.body();
        let word = |i: usize| -> Result<u32, WireError> {
            body.get(i..i + 4).map(be32).ok_or(WireError::Truncated)
        };
        Ok(match self.msg_type() {
            msg_type::FLOW_NEW => Message::FlowNew(parse_flow(body)?),
            msg_type::FLOW_UPDATE => Message::FlowUpdate(parse_flow(body)?),
            msg_type::FLOW_DESTROY => Message::FlowDestroy(parse_key(body)?),
            msg_type::EXP_NEW => Message::ExpNew(Box::new(parse_exp(body)?)),
            msg_type::EXP_DESTROY => Message::ExpDestroy(Box::new(parse_exp(body)?)),
            msg_type::BULK_END => Message::BulkEnd { bulk_start: word(0)? },
            msg_type::RESYNC_REQUEST => Message::ResyncRequest,
            msg_type::DIGEST => parse_digest(body)?,
            msg_type::REPAIR_REQUEST => {
                let (ranges, set) = parse_range_set(body)?;
                Message::RepairRequest { ranges, set }
            }
            msg_type::FLOW_REPAIR => Message::FlowRepair(parse_flow(body)?),
            msg_type::REPAIR_END => {
                let (ranges, set) = parse_range_set(body.get(4..).ok_or(WireError::Truncated)?)?;
                Message::RepairEnd { repair_start: word(0)?, ranges, set }
            }
            msg_type::ACK => Message::Ack { from: word(0)?, to: word(4)? },
            msg_type::NACK => Message::Nack { from: word(0)?, to: word(4)? },
            msg_type::ALIVE => Message::Alive,
            msg_type::HELLO => Message::Hello { session: word(0)?, round: word(4)? },
            msg_type::HELLO_BACK => Message::HelloBack { session: word(0)?, round: word(4)? },
            msg_type::STAMP => Message::Stamp {
                counter: u64::from(word(0)?) << 32 | u64::from(word(4)?),
                peer_session: word(8)?,
            },
            t => return Err(WireError::UnknownMessage(t)),
        })
    }
}

/// Bytes a message takes, header included.
pub fn message_len(msg: &MessageRef<'_>) -> usize {
    MSG_HEADER_LEN
        + match msg {
            MessageRef::FlowNew(f) | MessageRef::FlowUpdate(f) | MessageRef::FlowRepair(f) => {
                flow_len(f)
            }
            MessageRef::Digest { digests, .. } => DIGEST_HEAD + 8 * digests.len(),
            MessageRef::RepairRequest { ranges, .. } => range_set_len(*ranges),
            MessageRef::RepairEnd { ranges, .. } => 4 + range_set_len(*ranges),
            MessageRef::FlowDestroy(k) => key_len(k),
            MessageRef::ExpNew(e) | MessageRef::ExpDestroy(e) => exp_len(e),
            MessageRef::Ack { .. }
            | MessageRef::Nack { .. }
            | MessageRef::Hello { .. }
            | MessageRef::HelloBack { .. } => 8,
            MessageRef::BulkEnd { .. } => 4,
            MessageRef::Stamp { .. } => 12,
            MessageRef::ResyncRequest | MessageRef::Alive => 0,
        }
}

/// Write one message at the start of `buf`.
pub fn emit_message(msg: &MessageRef<'_>, buf: &mut [u8]) -> Result<usize, WireError> {
    let len = message_len(msg);
    let len16 = u16::try_from(len).map_err(|_| WireError::BufferTooSmall)?;
    let buf = buf.get_mut(..len).ok_or(WireError::BufferTooSmall)?;
    let kind = match msg {
        MessageRef::FlowNew(_) => msg_type::FLOW_NEW,
        MessageRef::FlowUpdate(_) => msg_type::FLOW_UPDATE,
        MessageRef::FlowDestroy(_) => msg_type::FLOW_DESTROY,
        MessageRef::ExpNew(_) => msg_type::EXP_NEW,
        MessageRef::ExpDestroy(_) => msg_type::EXP_DESTROY,
        MessageRef::BulkEnd { .. } => msg_type::BULK_END,
        MessageRef::ResyncRequest => msg_type::RESYNC_REQUEST,
        MessageRef::Digest { .. } => msg_type::DIGEST,
        MessageRef::RepairRequest { .. } => msg_type::REPAIR_REQUEST,
        MessageRef::FlowRepair(_) => msg_type::FLOW_REPAIR,
        MessageRef::RepairEnd { .. } => msg_type::REPAIR_END,
        MessageRef::Ack { .. } => msg_type::ACK,
        MessageRef::Nack { .. } => msg_type::NACK,
        MessageRef::Alive => msg_type::ALIVE,
        MessageRef::Hello { .. } => msg_type::HELLO,
        MessageRef::HelloBack { .. } => msg_type::HELLO_BACK,
        MessageRef::Stamp { .. } => msg_type::STAMP,
    };
    buf[field::MSG_TYPE] = kind;
    buf[field::MSG_FLAGS] = 0;
    buf[field::MSG_LENGTH].copy_from_slice(&len16.to_be_bytes());
    let mut w = Writer { buf, at: MSG_HEADER_LEN };
    match msg {
        MessageRef::FlowNew(f) | MessageRef::FlowUpdate(f) | MessageRef::FlowRepair(f) => {
            emit_flow(f, &mut w)
        }
        MessageRef::FlowDestroy(k) => emit_key(k, &mut w),
        MessageRef::ExpNew(e) | MessageRef::ExpDestroy(e) => emit_exp(e, &mut w),
        MessageRef::BulkEnd { bulk_start: v } => w.u32(*v),
        MessageRef::Digest { oldest, ranges, first, digests } => {
            // The count field bounds what fits a datagram anyway.
            let count = u16::try_from(digests.len()).map_err(|_| WireError::BufferTooSmall)?;
            w.u32(*oldest);
            w.u16(*ranges);
            w.u16(*first);
            w.u16(count);
            w.u16(0);
            for d in digests.iter() {
                w.bytes(&d.to_be_bytes());
            }
        }
        MessageRef::RepairRequest { ranges, set } => emit_range_set(*ranges, *set, &mut w),
        MessageRef::RepairEnd { repair_start, ranges, set } => {
            w.u32(*repair_start);
            emit_range_set(*ranges, *set, &mut w);
        }
        MessageRef::Ack { from: a, to: b }
        | MessageRef::Nack { from: a, to: b }
        | MessageRef::Hello { session: a, round: b }
        | MessageRef::HelloBack { session: a, round: b } => {
            w.u32(*a);
            w.u32(*b);
        }
        MessageRef::Stamp { counter, peer_session } => {
            w.bytes(&counter.to_be_bytes());
            w.u32(*peer_session);
        }
        MessageRef::ResyncRequest | MessageRef::Alive => {}
    }
    debug_assert_eq!(w.at, len);
    Ok(len)
}

pub(super) fn parse_digest(body: &[u8]) -> Result<Message, WireError> {
    let head = body.get(..DIGEST_HEAD).ok_or(WireError::Truncated)?;
    let (ranges, first, count) = (be16(&head[4..6]), be16(&head[6..8]), be16(&head[8..10]));
    let n = usize::from(count);
    let values = body.get(DIGEST_HEAD..DIGEST_HEAD + 8 * n).ok_or(WireError::Truncated)?;
    if usize::from(first) + n > usize::from(ranges) {
        return Err(WireError::BadMessage);
    }
    let digests = values
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    Ok(Message::Digest { oldest: be32(&head[0..4]), ranges, first, digests })
}

/// `ranges u16 | reserved u16 | bitmap`: range i is bit `i % 8` of byte
/// `i / 8`; the bitmap has `ceil(ranges / 8)` bytes.
fn range_set_len(ranges: u16) -> usize {
    4 + usize::from(ranges).div_ceil(8)
}

fn emit_range_set(ranges: u16, set: u128, w: &mut Writer<'_>) {
    w.u16(ranges);
    w.u16(0);
    let bytes = set.to_le_bytes();
    for i in 0..usize::from(ranges).div_ceil(8) {
        w.u8(bytes.get(i).copied().unwrap_or(0));
    }
}

pub(super) fn parse_range_set(body: &[u8]) -> Result<(u16, u128), WireError> {
    let ranges = body.get(0..2).map(be16).ok_or(WireError::Truncated)?;
    if ranges > MAX_RANGES {
        return Err(WireError::BadMessage);
    }
    let n = usize::from(ranges).div_ceil(8);
    let bitmap = body.get(4..4 + n).ok_or(WireError::Truncated)?;
    let mut bytes = [0u8; 16];
    bytes[..n].copy_from_slice(bitmap);
    let mask = if ranges >= 128 { u128::MAX } else { (1u128 << ranges) - 1 };
    Ok((ranges, u128::from_le_bytes(bytes) & mask))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{full_v6_flow, roundtrip, tcp_flow};
    use super::*;
    use crate::flow::{Flow, proto};

    #[test]
    fn every_flow_field_round_trips() {
        let mut icmp =
            Flow::new_v4(proto::ICMP, [1, 2, 3, 4].into(), [5, 6, 7, 8].into(), 77, 0x0800);
        icmp.status = 0;
        let mut weird = full_v6_flow();
        weird.extra_mut().helper = Some("".into());
        let msgs = vec![
            Message::FlowNew(tcp_flow()),
            Message::FlowUpdate(full_v6_flow()),
            Message::FlowUpdate(icmp),
            Message::FlowNew(weird),
            Message::FlowDestroy(tcp_flow().key()),
            Message::FlowDestroy(full_v6_flow().key()),
            Message::BulkEnd { bulk_start: 0xffff_fff0 },
            Message::ResyncRequest,
            Message::Ack { from: 1, to: 2 },
            Message::Nack { from: u32::MAX, to: 3 },
            Message::Alive,
            Message::Hello { session: 42, round: 1 },
            Message::HelloBack { session: 43, round: 2 },
            Message::Stamp { counter: 0x0102_0304_0506_0708, peer_session: 44 },
            Message::Digest { oldest: 9, ranges: 128, first: 120, digests: vec![1, u64::MAX] },
            Message::RepairRequest { ranges: 128, set: 1 << 127 | 5 },
            Message::FlowRepair(full_v6_flow()),
            Message::RepairEnd { repair_start: u32::MAX, ranges: 128, set: 1 << 64 },
        ];
        assert_eq!(roundtrip(&msgs), msgs);
    }

    #[test]
    fn anti_entropy_bodies_are_checked() {
        // docs/PROTOCOL.md §2: a bitmap of more than 128 ranges, or digests
        // past `ranges`, are refused; bits past `ranges` are ignored.
        let parse = |t: u8, body: &[u8]| {
            let mut buf = vec![t, 0, 0, (4 + body.len()) as u8];
            buf.extend_from_slice(body);
            MessagePacket::new_checked(&buf).unwrap().parse()
        };
        let mut set = vec![0, 12, 0, 0, 0xff, 0xff];
        assert_eq!(
            parse(msg_type::REPAIR_REQUEST, &set),
            Ok(Message::RepairRequest { ranges: 12, set: 0xfff })
        );
        set[1] = 129;
        assert_eq!(parse(msg_type::REPAIR_REQUEST, &set), Err(WireError::BadMessage));
        assert_eq!(parse(msg_type::REPAIR_END, &[0, 0, 0, 1, 0, 16]), Err(WireError::Truncated));
        let digest =
            [0, 0, 0, 1, 0, 4, 0, 3, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(parse(msg_type::DIGEST, &digest), Err(WireError::BadMessage), "3 + 2 > 4");
        let mut ok = digest;
        ok[7] = 2;
        assert_eq!(
            parse(msg_type::DIGEST, &ok),
            Ok(Message::Digest { oldest: 1, ranges: 4, first: 2, digests: vec![1, 2] })
        );
        assert_eq!(parse(msg_type::DIGEST, &ok[..20]), Err(WireError::Truncated));
    }
}
