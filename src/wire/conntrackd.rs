//! conntrackd 1.4's FTFW wire format, for a pair made of one `ctsyncd` and
//! one `conntrackd` (see `docs/PROTOCOL.md`, "conntrackd compatibility").
//!
//! ```text
//! datagram: message* (no datagram header, no checksum)
//! message:  version:4|type:4 u8 | flags u8 | len be16 (whole message) | seq be32
//!           ACK/NACK/RESYNC: + from be32 | to be32
//!           data (type 0..5): + attribute*
//! attribute: nta_len be16 (4 + value, unpadded) | nta_attr be16 | value | pad to 4
//! ```
//!
//! Every message carries its own header and sequence number, so each
//! decoded [`Received`] has a [`MessageHeader`]. HELLO and HELLO_BACK are
//! flag bits on any message: the protocol core passes them as
//! [`DatagramHeader::flags`] and [`ConntrackdCodec::finish`] sets them on
//! every message of the datagram.
//!
//! conntrackd's byte-order quirks live here and nowhere else:
//! `NTA_SPAT_PORT`, `NTA_DPAT_PORT` and `NTA_ICMP_ID` are little-endian on
//! the wire (conntrackd applies `htons` to values already in network order,
//! on x86), addresses and orig ports are in network order, every other
//! integer is big-endian.
//!
//! The decoder never panics: [`MessageView::new_checked`] checks the lengths
//! once and the accessors read inside them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    Codec, DatagramHeader, Message, MessageHeader, MessageRef, Received, WireError, Writer,
};
use crate::expect::{ExpNat, Expectation};
use crate::flow::{Dir, Flow, FlowKey, SeqAdj, proto};

/// `CONNTRACKD_PROTOCOL_VERSION`.
pub const VERSION: u8 = 1;
/// `NETHDR_SIZ`.
pub const HEADER_LEN: usize = 8;
/// `NETHDR_ACK_SIZ`.
pub const ACK_HEADER_LEN: usize = 16;
/// Largest datagram conntrackd itself builds on a 1500-byte MTU link
/// (MTU − 28, strictly less than that).
pub const DEFAULT_MAX_DATAGRAM: usize = 1471;
/// Longest helper name conntrackd accepts: `nta_len` ≤ 16 with the
/// terminating NUL.
pub const MAX_HELPER_LEN: usize = 11;

/// `NET_T_*` message types.
pub mod msg_type {
    /// A conntrack created.
    pub const CT_NEW: u8 = 0;
    /// A conntrack updated.
    pub const CT_UPD: u8 = 1;
    /// A conntrack destroyed.
    pub const CT_DEL: u8 = 2;
    /// An expectation created.
    pub const EXP_NEW: u8 = 3;
    /// An expectation updated (read as EXP_NEW).
    pub const EXP_UPD: u8 = 4;
    /// An expectation destroyed (the whole expectation).
    pub const EXP_DEL: u8 = 5;
    /// Last data message type.
    pub const STATE_MAX: u8 = 5;
    /// Control message: ACK, NACK, RESYNC or ALIVE, by flag.
    pub const CTL: u8 = 10;
}

/// `NET_F_*` flag bits.
pub mod flags {
    /// Ask the peer for its whole table (type CTL, with from/to).
    pub const RESYNC: u8 = 0x02;
    /// `[from, to]` lost (type CTL).
    pub const NACK: u8 = 0x04;
    /// `[from, to]` received (type CTL).
    pub const ACK: u8 = 0x08;
    /// Keepalive (type CTL, 8 bytes).
    pub const ALIVE: u8 = 0x10;
    /// The sender (re)started: on any message until answered.
    pub const HELLO: u8 = 0x20;
    /// Answer to a HELLO: on one message.
    pub const HELLO_BACK: u8 = 0x40;
}

/// `NTA_*` attribute numbers (conntrackd's `enum nta_attr`).
pub mod nta {
    pub const IPV4: u16 = 0;
    pub const IPV6: u16 = 1;
    pub const L4PROTO: u16 = 2;
    pub const PORT: u16 = 3;
    pub const TCP_STATE: u16 = 4;
    pub const STATUS: u16 = 5;
    pub const TIMEOUT: u16 = 6;
    pub const MARK: u16 = 7;
    pub const MASTER_IPV4: u16 = 8;
    pub const MASTER_IPV6: u16 = 9;
    pub const MASTER_L4PROTO: u16 = 10;
    pub const MASTER_PORT: u16 = 11;
    pub const SNAT_IPV4: u16 = 12;
    pub const DNAT_IPV4: u16 = 13;
    pub const SPAT_PORT: u16 = 14;
    pub const DPAT_PORT: u16 = 15;
    pub const NAT_SEQ_ADJ: u16 = 16;
    pub const SCTP_STATE: u16 = 17;
    pub const SCTP_VTAG_ORIG: u16 = 18;
    pub const SCTP_VTAG_REPL: u16 = 19;
    pub const DCCP_STATE: u16 = 20;
    pub const DCCP_ROLE: u16 = 21;
    pub const ICMP_TYPE: u16 = 22;
    pub const ICMP_CODE: u16 = 23;
    pub const ICMP_ID: u16 = 24;
    pub const TCP_WSCALE_ORIG: u16 = 25;
    pub const TCP_WSCALE_REPL: u16 = 26;
    pub const HELPER_NAME: u16 = 27;
    pub const LABELS: u16 = 28;
    pub const SNAT_IPV6: u16 = 29;
    pub const DNAT_IPV6: u16 = 30;
    pub const SYNPROXY: u16 = 31;
    pub const ZONE: u16 = 32;
    /// `NTA_MAX`: conntrackd 1.4.7 refuses a message with anything above.
    pub const MAX: u16 = 33;
}

/// `NTA_EXP_*` attribute numbers (conntrackd's `enum nta_exp_attr`) of
/// the expectation messages: master, expected and mask tuples as address,
/// protocol and port groups, then the expectation's own fields.
pub mod nta_exp {
    pub const MASTER_IPV4: u16 = 0;
    pub const MASTER_IPV6: u16 = 1;
    pub const MASTER_L4PROTO: u16 = 2;
    pub const MASTER_PORT: u16 = 3;
    pub const EXPECT_IPV4: u16 = 4;
    pub const EXPECT_IPV6: u16 = 5;
    pub const EXPECT_L4PROTO: u16 = 6;
    pub const EXPECT_PORT: u16 = 7;
    pub const MASK_IPV4: u16 = 8;
    pub const MASK_IPV6: u16 = 9;
    pub const MASK_L4PROTO: u16 = 10;
    pub const MASK_PORT: u16 = 11;
    pub const TIMEOUT: u16 = 12;
    pub const FLAGS: u16 = 13;
    pub const CLASS: u16 = 14;
    pub const NAT_IPV4: u16 = 15;
    pub const NAT_PORT: u16 = 16;
    pub const NAT_L4PROTO: u16 = 17;
    pub const NAT_DIR: u16 = 18;
    pub const HELPER_NAME: u16 = 19;
    pub const FN: u16 = 20;
    /// `NTA_EXP_MAX`: a message with anything above is refused.
    pub const MAX: u16 = 21;
}

/// Longest expectation function name conntrackd accepts (`nta_len` ≤ 32
/// with the NUL).
pub const MAX_EXP_FN_LEN: usize = 27;

const EXP_SIZES: [Size; nta_exp::MAX as usize] = {
    use Size::{Exact, Max};
    let tuple = [Exact(8), Exact(32), Exact(1), Exact(4)];
    [
        tuple[0],
        tuple[1],
        tuple[2],
        tuple[3],
        tuple[0],
        tuple[1],
        tuple[2],
        tuple[3],
        tuple[0],
        tuple[1],
        tuple[2],
        tuple[3],
        Exact(4),
        Exact(4),
        Exact(4),
        Exact(8),
        Exact(4),
        Exact(1),
        Exact(4),
        Max(MAX_HELPER_LEN + 1),
        Max(MAX_EXP_FN_LEN + 1),
    ]
};

/// Value length of each attribute: `Exact(n)` must match, `Max(n)` is a
/// bound (strings and labels), as conntrackd's parser checks them.
#[derive(Clone, Copy)]
enum Size {
    Exact(usize),
    Max(usize),
}

const SIZES: [Size; nta::MAX as usize] = {
    use Size::{Exact, Max};
    [
        Exact(8),
        Exact(32),
        Exact(1),
        Exact(4),
        Exact(1),
        Exact(4),
        Exact(4),
        Exact(4),
        Exact(8),
        Exact(32),
        Exact(1),
        Exact(4),
        Exact(4),
        Exact(4),
        Exact(2),
        Exact(2),
        Exact(24),
        Exact(1),
        Exact(4),
        Exact(4),
        Exact(1),
        Exact(1),
        Exact(1),
        Exact(1),
        Exact(2),
        Exact(1),
        Exact(1),
        Max(MAX_HELPER_LEN + 1),
        Max(1024),
        Exact(16),
        Exact(16),
        Exact(12),
        Exact(2),
    ]
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
        MessageRef::BulkEnd { .. }
        | MessageRef::Hello { .. }
        | MessageRef::HelloBack { .. }
        | MessageRef::Stamp { .. }
        | MessageRef::Digest { .. }
        | MessageRef::RepairRequest { .. }
        | MessageRef::FlowRepair(_)
        | MessageRef::RepairEnd { .. } => {
            return Err(WireError::BadMessage);
        }
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

/// Each attribute's type and value, checked against `sizes` (exact or
/// maximum length per type), as conntrackd walks them: while more than an
/// attribute header remains.
fn for_each_nta(
    mut body: &[u8],
    sizes: &[Size],
    mut f: impl FnMut(u16, &[u8]) -> Result<(), WireError>,
) -> Result<(), WireError> {
    while body.len() > 4 {
        let nta_len = usize::from(be16(&body[0..2]));
        let kind = be16(&body[2..4]);
        if nta_len < 4 || nta_len > body.len() {
            return Err(WireError::BadLength);
        }
        let size = sizes.get(usize::from(kind)).ok_or(WireError::BadAttribute(kind))?;
        let v = &body[4..nta_len];
        let ok = match *size {
            Size::Exact(n) => v.len() == n,
            Size::Max(n) => v.len() <= n,
        };
        if !ok {
            return Err(WireError::BadAttribute(kind));
        }
        f(kind, v)?;
        body = &body[align4(nta_len).min(body.len())..];
    }
    Ok(())
}

/// Parse the attributes of a CT message into a flow, rebuilding the reply
/// tuple from the NAT attributes as conntrackd does on commit.
pub fn parse_flow(body: &[u8]) -> Result<Flow, WireError> {
    let mut v4: Option<[Ipv4Addr; 2]> = None;
    let mut v6: Option<[Ipv6Addr; 2]> = None;
    let mut l4proto = None;
    let mut ports = [0u16; 2];
    let mut icmp = [0u8; 2];
    let mut icmp_id = 0u16;
    let mut snat: Option<IpAddr> = None;
    let mut dnat: Option<IpAddr> = None;
    let mut spat = None;
    let mut dpat = None;
    let mut flow = Flow::new_v4(0, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, 0, 0);
    let mut vtags: [Option<u32>; 2] = [None, None];
    for_each_nta(body, &SIZES, |kind, v| {
        match kind {
            nta::IPV4 => v4 = Some([ip4(&v[0..4]), ip4(&v[4..8])]),
            nta::IPV6 => v6 = Some([ip6(&v[0..16]), ip6(&v[16..32])]),
            nta::L4PROTO => l4proto = Some(v[0]),
            nta::PORT => ports = [be16(&v[0..2]), be16(&v[2..4])],
            nta::TCP_STATE | nta::SCTP_STATE | nta::DCCP_STATE => flow.proto_state = v[0],
            nta::STATUS => flow.status = be32(v),
            nta::TIMEOUT => flow.timeout = be32(v),
            nta::MARK => flow.mark = be32(v),
            nta::SNAT_IPV4 => snat = Some(IpAddr::V4(ip4(v))),
            nta::DNAT_IPV4 => dnat = Some(IpAddr::V4(ip4(v))),
            nta::SNAT_IPV6 => snat = Some(IpAddr::V6(ip6(v))),
            nta::DNAT_IPV6 => dnat = Some(IpAddr::V6(ip6(v))),
            nta::SPAT_PORT => spat = Some(le16(v)),
            nta::DPAT_PORT => dpat = Some(le16(v)),
            nta::NAT_SEQ_ADJ => {
                let adj = |i: usize| SeqAdj {
                    correction_pos: be32(&v[i..i + 4]),
                    offset_before: be32(&v[i + 4..i + 8]),
                    offset_after: be32(&v[i + 8..i + 12]),
                };
                flow.extra_mut().seq_adj = Some([adj(0), adj(12)]);
            }
            nta::SCTP_VTAG_ORIG => vtags[0] = Some(be32(v)),
            nta::SCTP_VTAG_REPL => vtags[1] = Some(be32(v)),
            nta::DCCP_ROLE => flow.extra_mut().dccp = Some((v[0], 0)),
            nta::ICMP_TYPE => icmp[0] = v[0],
            nta::ICMP_CODE => icmp[1] = v[0],
            nta::ICMP_ID => icmp_id = le16(v),
            nta::TCP_WSCALE_ORIG => flow.tcp.wscale_orig = v[0],
            nta::TCP_WSCALE_REPL => flow.tcp.wscale_reply = v[0],
            nta::HELPER_NAME => {
                let name = v.split(|&b| b == 0).next().unwrap_or(&[]);
                let name = std::str::from_utf8(name).map_err(|_| WireError::BadMessage)?;
                if !name.is_empty() {
                    flow.extra_mut().helper = Some(name.into());
                }
            }
            nta::LABELS => {
                let mut labels = 0u128;
                for (w, word) in v.chunks_exact(4).take(4).enumerate() {
                    labels |= u128::from(be32(word)) << (32 * w);
                }
                if labels != 0 {
                    flow.extra_mut().labels = Some(labels);
                }
            }
            nta::ZONE => flow.zone = be16(v),
            // Master tuples and synproxy offsets have no place in a Flow.
            _ => {}
        }
        Ok(())
    })?;
    let l4proto = l4proto.ok_or(WireError::BadMessage)?;
    let (src, dst) = match (v4, v6) {
        (Some([s, d]), None) => (IpAddr::V4(s), IpAddr::V4(d)),
        (None, Some([s, d])) => (IpAddr::V6(s), IpAddr::V6(d)),
        _ => return Err(WireError::BadMessage),
    };
    let mut out = if matches!(l4proto, proto::ICMP | proto::ICMPV6) {
        let mut f = Flow::new(l4proto, src, dst, icmp_id, u16::from_be_bytes(icmp));
        let reply_type = icmp_reply_type(l4proto, icmp[0]);
        f.l4[3] = u16::from_be_bytes([reply_type, icmp[1]]);
        f
    } else {
        Flow::new(l4proto, src, dst, ports[0], ports[1])
    };
    if let Some(a) = snat {
        let reply_src = out.src(Dir::Reply);
        out.set_addrs(Dir::Reply, reply_src, a);
    }
    if let Some(a) = dnat {
        let reply_dst = out.dst(Dir::Reply);
        out.set_addrs(Dir::Reply, a, reply_dst);
    }
    if out.has_ports() {
        if let Some(p) = spat {
            out.l4[3] = p;
        }
        if let Some(p) = dpat {
            out.l4[2] = p;
        }
    }
    if let [Some(o), Some(r)] = vtags {
        flow.extra_mut().sctp_vtags = Some([o, r]);
    }
    out.status = flow.status;
    out.timeout = flow.timeout;
    out.mark = flow.mark;
    out.zone = flow.zone;
    out.proto_state = flow.proto_state;
    out.tcp = flow.tcp;
    out.extra = flow.extra;
    out.normalize();
    Ok(out)
}

/// The ICMP type of the reply tuple, as the kernel inverts it
/// (`invmap` in nf_conntrack_proto_icmp.c / icmpv6.c).
fn icmp_reply_type(l4proto: u8, t: u8) -> u8 {
    match (l4proto, t) {
        (proto::ICMP, 8) => 0,
        (proto::ICMP, 0) => 8,
        (proto::ICMP, 13) => 14,
        (proto::ICMP, 14) => 13,
        (proto::ICMP, 15) => 16,
        (proto::ICMP, 16) => 15,
        (proto::ICMP, 17) => 18,
        (proto::ICMP, 18) => 17,
        (proto::ICMPV6, 128) => 129,
        (proto::ICMPV6, 129) => 128,
        (proto::ICMPV6, 139) => 140,
        (proto::ICMPV6, 140) => 139,
        (_, t) => t,
    }
}

fn attr_len(value: usize) -> usize {
    align4(4 + value)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn is_icmp(l4proto: u8) -> bool {
    matches!(l4proto, proto::ICMP | proto::ICMPV6)
}

/// True when `l4proto` gets an `NTA_PORT` (GRE keys travel as ports too).
fn carries_ports(l4proto: u8) -> bool {
    matches!(
        l4proto,
        proto::TCP | proto::UDP | proto::UDPLITE | proto::SCTP | proto::DCCP | proto::GRE
    )
}

/// The helper name as sent, if conntrackd can take it.
fn helper_of(f: &Flow) -> Option<&str> {
    f.helper().filter(|h| !h.is_empty() && h.len() <= MAX_HELPER_LEN)
}

fn nat_attrs(f: &Flow) -> [Option<IpAddr>; 2] {
    let snat = f.dst(Dir::Reply);
    let dnat = f.src(Dir::Reply);
    [(snat != f.src(Dir::Orig)).then_some(snat), (dnat != f.dst(Dir::Orig)).then_some(dnat)]
}

fn pat_attrs(f: &Flow) -> [Option<u16>; 2] {
    if !f.has_ports() {
        return [None, None];
    }
    [(f.l4[3] != f.l4[0]).then_some(f.l4[3]), (f.l4[2] != f.l4[1]).then_some(f.l4[2])]
}

fn addr_len(v6: bool) -> usize {
    attr_len(if v6 { 32 } else { 8 })
}

fn flow_len(f: &Flow) -> usize {
    let mut len = addr_len(f.is_ipv6()) + attr_len(4) + attr_len(1);
    len += proto_len(f.l4proto, f.extra().and_then(|e| e.sctp_vtags).is_some(), f.extra());
    if f.timeout != 0 {
        len += attr_len(4);
    }
    if f.mark != 0 {
        len += attr_len(4);
    }
    for a in nat_attrs(f).into_iter().flatten() {
        len += attr_len(if a.is_ipv6() { 16 } else { 4 });
    }
    len += pat_attrs(f).iter().flatten().count() * attr_len(2);
    if let Some(e) = f.extra() {
        if e.seq_adj.is_some() {
            len += attr_len(24);
        }
        if e.labels.is_some_and(|l| l != 0) {
            len += attr_len(16);
        }
    }
    if let Some(h) = helper_of(f) {
        len += attr_len(h.len() + 1);
    }
    if f.zone != 0 {
        len += attr_len(2);
    }
    len
}

fn proto_len(l4proto: u8, vtags: bool, extra: Option<&crate::flow::FlowExtra>) -> usize {
    let mut len = 0;
    if carries_ports(l4proto) {
        len += attr_len(4);
    }
    match l4proto {
        proto::TCP => len += attr_len(1),
        proto::SCTP => len += attr_len(1) + if vtags { 2 * attr_len(4) } else { 0 },
        proto::DCCP => {
            len += attr_len(1) + if extra.and_then(|e| e.dccp).is_some() { attr_len(1) } else { 0 }
        }
        p if is_icmp(p) => len += 2 * attr_len(1) + attr_len(2),
        _ => {}
    }
    len
}

fn key_len(k: &FlowKey) -> usize {
    let mut len = addr_len(k.is_ipv6()) + attr_len(1);
    if carries_ports(k.l4proto) {
        len += attr_len(4);
    } else if is_icmp(k.l4proto) {
        len += 2 * attr_len(1) + attr_len(2);
    }
    if k.zone != 0 {
        len += attr_len(2);
    }
    len
}

/// This format's attribute layout on the shared [`Writer`].
impl Writer<'_> {
    /// One attribute: header, value, zero padding (the buffer was zeroed).
    fn nta(&mut self, kind: u16, value: &[u8]) {
        // Values are at most 32 bytes here.
        self.u16((4 + value.len()) as u16);
        self.u16(kind);
        self.bytes(value);
        self.at = align4(self.at);
    }
    fn addrs(&mut self, src: IpAddr, dst: IpAddr) {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut v = [0u8; 8];
                v[..4].copy_from_slice(&s.octets());
                v[4..].copy_from_slice(&d.octets());
                self.nta(nta::IPV4, &v);
            }
            (s, d) => {
                let mut v = [0u8; 32];
                v[..16].copy_from_slice(&to_v6(s).octets());
                v[16..].copy_from_slice(&to_v6(d).octets());
                self.nta(nta::IPV6, &v);
            }
        }
    }
    fn l4(&mut self, l4proto: u8, l4: [u16; 2]) {
        if carries_ports(l4proto) {
            let mut v = [0u8; 4];
            v[..2].copy_from_slice(&l4[0].to_be_bytes());
            v[2..].copy_from_slice(&l4[1].to_be_bytes());
            self.nta(nta::PORT, &v);
        }
    }
    fn icmp(&mut self, l4: [u16; 2]) {
        let [t, c] = l4[1].to_be_bytes();
        self.nta(nta::ICMP_TYPE, &[t]);
        self.nta(nta::ICMP_CODE, &[c]);
        // conntrackd's byte-order quirk: little-endian on the wire.
        self.nta(nta::ICMP_ID, &l4[0].to_le_bytes());
    }
}

/// conntrackd's `ct2msg` order.
fn emit_flow(f: &Flow, w: &mut Writer<'_>) {
    w.addrs(f.src(Dir::Orig), f.dst(Dir::Orig));
    w.nta(nta::STATUS, &f.status.to_be_bytes());
    w.nta(nta::L4PROTO, &[f.l4proto]);
    let orig = [f.l4[0], f.l4[1]];
    w.l4(f.l4proto, orig);
    let extra = f.extra();
    match f.l4proto {
        proto::TCP => w.nta(nta::TCP_STATE, &[f.proto_state]),
        proto::SCTP => {
            w.nta(nta::SCTP_STATE, &[f.proto_state]);
            if let Some([o, r]) = extra.and_then(|e| e.sctp_vtags) {
                w.nta(nta::SCTP_VTAG_ORIG, &o.to_be_bytes());
                w.nta(nta::SCTP_VTAG_REPL, &r.to_be_bytes());
            }
        }
        proto::DCCP => {
            w.nta(nta::DCCP_STATE, &[f.proto_state]);
            if let Some((role, _)) = extra.and_then(|e| e.dccp) {
                w.nta(nta::DCCP_ROLE, &[role]);
            }
        }
        p if is_icmp(p) => w.icmp(orig),
        _ => {}
    }
    if f.timeout != 0 {
        w.nta(nta::TIMEOUT, &f.timeout.to_be_bytes());
    }
    if f.mark != 0 {
        w.nta(nta::MARK, &f.mark.to_be_bytes());
    }
    let [snat, dnat] = nat_attrs(f);
    for (addr, k4, k6) in
        [(snat, nta::SNAT_IPV4, nta::SNAT_IPV6), (dnat, nta::DNAT_IPV4, nta::DNAT_IPV6)]
    {
        match addr {
            Some(IpAddr::V4(a)) => w.nta(k4, &a.octets()),
            Some(IpAddr::V6(a)) => w.nta(k6, &a.octets()),
            None => {}
        }
    }
    let [spat, dpat] = pat_attrs(f);
    // conntrackd's byte-order quirk: little-endian on the wire.
    if let Some(p) = spat {
        w.nta(nta::SPAT_PORT, &p.to_le_bytes());
    }
    if let Some(p) = dpat {
        w.nta(nta::DPAT_PORT, &p.to_le_bytes());
    }
    if let Some([o, r]) = extra.and_then(|e| e.seq_adj) {
        let mut v = [0u8; 24];
        for (i, x) in [
            o.correction_pos,
            o.offset_before,
            o.offset_after,
            r.correction_pos,
            r.offset_before,
            r.offset_after,
        ]
        .into_iter()
        .enumerate()
        {
            v[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
        }
        w.nta(nta::NAT_SEQ_ADJ, &v);
    }
    if let Some(h) = helper_of(f) {
        let mut v = [0u8; MAX_HELPER_LEN + 1];
        v[..h.len()].copy_from_slice(h.as_bytes());
        w.nta(nta::HELPER_NAME, &v[..h.len() + 1]);
    }
    if let Some(l) = extra.and_then(|e| e.labels).filter(|&l| l != 0) {
        let mut v = [0u8; 16];
        for i in 0..4 {
            v[i * 4..i * 4 + 4].copy_from_slice(&((l >> (32 * i)) as u32).to_be_bytes());
        }
        w.nta(nta::LABELS, &v);
    }
    if f.zone != 0 {
        w.nta(nta::ZONE, &f.zone.to_be_bytes());
    }
}

/// A DEL for a flow we only have the key of: the original tuple and zone,
/// which is what conntrackd's cache looks entries up by.
fn emit_key(k: &FlowKey, w: &mut Writer<'_>) {
    w.addrs(k.src, k.dst);
    w.nta(nta::L4PROTO, &[k.l4proto]);
    if carries_ports(k.l4proto) {
        w.l4(k.l4proto, k.l4);
    } else if is_icmp(k.l4proto) {
        w.icmp(k.l4);
    }
    if k.zone != 0 {
        w.nta(nta::ZONE, &k.zone.to_be_bytes());
    }
}

/// Protocols whose expectation tuples get a port group (conntrackd's
/// `exp_l4proto_fcn`).
fn exp_ports(l4proto: u8) -> bool {
    matches!(l4proto, proto::TCP | proto::UDP | proto::SCTP | proto::DCCP)
}

/// The NAT part conntrackd can carry: IPv4 only.
fn exp_nat(e: &Expectation) -> Option<ExpNat> {
    e.nat.filter(|n| n.addr.is_ipv4())
}

fn exp_helper(e: &Expectation) -> Option<&str> {
    Some(&*e.helper).filter(|h| !h.is_empty() && h.len() <= MAX_HELPER_LEN)
}

fn exp_fn(e: &Expectation) -> Option<&str> {
    e.expectfn.as_deref().filter(|f| !f.is_empty() && f.len() <= MAX_EXP_FN_LEN)
}

fn exp_len(e: &Expectation) -> usize {
    let ports = if exp_ports(e.tuple.l4proto) { attr_len(4) } else { 0 };
    let tuple = addr_len(e.is_ipv6()) + attr_len(1) + ports;
    let mut len = 3 * tuple + 3 * attr_len(4);
    if exp_nat(e).is_some() {
        len += attr_len(8) + attr_len(1) + ports + attr_len(4);
    }
    len += exp_helper(e).map_or(0, |h| attr_len(h.len() + 1));
    len + exp_fn(e).map_or(0, |f| attr_len(f.len() + 1))
}

/// conntrackd's `exp2msg` order.
fn emit_exp(e: &Expectation, w: &mut Writer<'_>) {
    let l4proto = e.tuple.l4proto;
    let v6 = e.is_ipv6();
    let all_ones =
        if v6 { IpAddr::V6(Ipv6Addr::from(u128::MAX)) } else { IpAddr::V4(Ipv4Addr::BROADCAST) };
    let mut tuple = |first: u16, src: IpAddr, dst: IpAddr, l4: [u16; 2]| {
        w.exp_addrs(first + u16::from(v6), src, dst);
        w.nta(first + 2, &[l4proto]);
        if exp_ports(l4proto) {
            w.exp_ports(first + 3, l4);
        }
    };
    tuple(nta_exp::MASTER_IPV4, e.master.src, e.master.dst, e.master.l4);
    tuple(nta_exp::EXPECT_IPV4, e.tuple.src, e.tuple.dst, e.tuple.l4);
    tuple(nta_exp::MASK_IPV4, e.mask_src, all_ones, [e.mask_sport, u16::MAX]);
    w.nta(nta_exp::TIMEOUT, &e.timeout.to_be_bytes());
    w.nta(nta_exp::FLAGS, &e.flags.to_be_bytes());
    w.nta(nta_exp::CLASS, &e.class.to_be_bytes());
    if let Some(nat) = exp_nat(e) {
        w.exp_addrs(nta_exp::NAT_IPV4, nat.addr, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        w.nta(nta_exp::NAT_L4PROTO, &[l4proto]);
        if exp_ports(l4proto) {
            w.exp_ports(nta_exp::NAT_PORT, [nat.port, 0]);
        }
        w.nta(nta_exp::NAT_DIR, &nat.dir.to_be_bytes());
    }
    if let Some(h) = exp_helper(e) {
        w.nta_str(nta_exp::HELPER_NAME, h);
    }
    if let Some(f) = exp_fn(e) {
        w.nta_str(nta_exp::FN, f);
    }
}

/// This format's expectation attributes on the shared [`Writer`].
impl Writer<'_> {
    fn exp_addrs(&mut self, kind: u16, src: IpAddr, dst: IpAddr) {
        let mut v = [0u8; 32];
        let n = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                v[..4].copy_from_slice(&s.octets());
                v[4..8].copy_from_slice(&d.octets());
                8
            }
            (s, d) => {
                v[..16].copy_from_slice(&to_v6(s).octets());
                v[16..].copy_from_slice(&to_v6(d).octets());
                32
            }
        };
        self.nta(kind, &v[..n]);
    }
    fn exp_ports(&mut self, kind: u16, l4: [u16; 2]) {
        let mut v = [0u8; 4];
        v[..2].copy_from_slice(&l4[0].to_be_bytes());
        v[2..].copy_from_slice(&l4[1].to_be_bytes());
        self.nta(kind, &v);
    }
    fn nta_str(&mut self, kind: u16, s: &str) {
        self.u16((4 + s.len() + 1) as u16);
        self.u16(kind);
        self.bytes(s.as_bytes());
        self.u8(0);
        self.at = align4(self.at);
    }
}

/// Parse an EXP message's attributes, with conntrackd's `msg2exp` checks.
pub fn parse_exp(body: &[u8]) -> Result<Expectation, WireError> {
    #[derive(Default, Clone, Copy)]
    struct Tuple {
        addrs: Option<(IpAddr, IpAddr)>,
        l4proto: Option<u8>,
        ports: [u16; 2],
    }
    let mut tuples = [Tuple::default(); 4];
    let (mut timeout, mut flags, mut class, mut dir) = (0, 0, 0, None);
    let mut helper: Box<str> = "".into();
    let mut expectfn = None;
    for_each_nta(body, &EXP_SIZES, |kind, v| {
        let string = |v: &[u8]| -> Result<Box<str>, WireError> {
            let s = v.split(|&b| b == 0).next().unwrap_or(&[]);
            std::str::from_utf8(s).map(Into::into).map_err(|_| WireError::BadMessage)
        };
        match kind {
            // Master, expected, mask: four attributes each, from 0, 4, 8;
            // NAT's address, port and protocol are 15, 16, 17.
            0..=11 | nta_exp::NAT_IPV4..=nta_exp::NAT_L4PROTO => {
                let (t, field) = match kind {
                    0..=11 => (usize::from(kind / 4), kind % 4),
                    nta_exp::NAT_IPV4 => (3, 0),
                    nta_exp::NAT_PORT => (3, 3),
                    _ => (3, 2),
                };
                let t = &mut tuples[t];
                match field {
                    0 => t.addrs = Some((IpAddr::V4(ip4(&v[0..4])), IpAddr::V4(ip4(&v[4..8])))),
                    1 => t.addrs = Some((IpAddr::V6(ip6(&v[0..16])), IpAddr::V6(ip6(&v[16..32])))),
                    2 => t.l4proto = Some(v[0]),
                    _ => t.ports = [be16(&v[0..2]), be16(&v[2..4])],
                }
            }
            nta_exp::TIMEOUT => timeout = be32(v),
            nta_exp::FLAGS => flags = be32(v),
            nta_exp::CLASS => class = be32(v),
            nta_exp::NAT_DIR => dir = Some(be32(v)),
            nta_exp::HELPER_NAME => helper = string(v)?,
            nta_exp::FN => expectfn = Some(string(v)?).filter(|f| !f.is_empty()),
            _ => {}
        }
        Ok(())
    })?;
    let key = |t: Tuple| -> Result<FlowKey, WireError> {
        let ((src, dst), l4proto) = t.addrs.zip(t.l4proto).ok_or(WireError::BadMessage)?;
        let l4 = if exp_ports(l4proto) { t.ports } else { [0, 0] };
        Ok(FlowKey { src, dst, l4proto, l4, zone: 0 })
    };
    let master = key(tuples[0])?;
    let tuple = key(tuples[1])?;
    let (mask_src, mask_sport) = match tuples[2].addrs {
        Some((src, _)) => (src, if exp_ports(tuple.l4proto) { tuples[2].ports[0] } else { 0 }),
        None if tuple.is_ipv6() => (IpAddr::V6(Ipv6Addr::from(u128::MAX)), u16::MAX),
        None => (IpAddr::V4(Ipv4Addr::BROADCAST), u16::MAX),
    };
    if master.is_ipv6() != tuple.is_ipv6() || mask_src.is_ipv6() != tuple.is_ipv6() {
        return Err(WireError::BadMessage);
    }
    let nat = match (tuples[3].addrs, dir) {
        (Some((addr, _)), Some(dir)) => Some(ExpNat { dir, addr, port: tuples[3].ports[0] }),
        _ => None,
    };
    Ok(Expectation {
        master,
        tuple,
        mask_src,
        mask_sport,
        timeout,
        flags,
        class,
        helper,
        nat,
        expectfn,
    })
}

fn to_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

fn ip4(b: &[u8]) -> Ipv4Addr {
    let mut o = [0u8; 4];
    o.copy_from_slice(&b[..4]);
    Ipv4Addr::from(o)
}

fn ip6(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    Ipv6Addr::from(o)
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{status, tcp_state};

    /// conntrackd 1.4.7 → 1.4.7, captured on this machine's kernel
    /// (docs/PROTOCOL.md, "conntrackd compatibility"): `tcp
    /// 192.168.1.10:40000 → 198.51.100.7:443 ESTABLISHED mark=7 SNAT to
    /// 203.0.113.5:51234`.
    const CAPTURED_NEW: [u8; 100] = [
        0x10, 0x00, 0x00, 0x64, 0x6b, 0x03, 0xed, 0x52, // nethdr
        0x00, 0x0c, 0x00, 0x00, 0xc0, 0xa8, 0x01, 0x0a, 0xc6, 0x33, 0x64, 0x07, // IPV4
        0x00, 0x08, 0x00, 0x05, 0x00, 0x00, 0x01, 0x9e, // STATUS
        0x00, 0x05, 0x00, 0x02, 0x06, 0x00, 0x00, 0x00, // L4PROTO
        0x00, 0x08, 0x00, 0x03, 0x9c, 0x40, 0x01, 0xbb, // PORT
        0x00, 0x05, 0x00, 0x04, 0x03, 0x00, 0x00, 0x00, // TCP_STATE
        0x00, 0x08, 0x00, 0x06, 0x00, 0x00, 0x01, 0x2c, // TIMEOUT
        0x00, 0x08, 0x00, 0x07, 0x00, 0x00, 0x00, 0x07, // MARK
        0x00, 0x08, 0x00, 0x0c, 0xcb, 0x00, 0x71, 0x05, // SNAT_IPV4
        0x00, 0x06, 0x00, 0x0e, 0x22, 0xc8, 0x00, 0x00, // SPAT_PORT (LE)
        0x00, 0x10, 0x00, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // SYNPROXY
    ];

    fn captured_flow() -> Flow {
        let mut f = Flow::new_v4(
            proto::TCP,
            [192, 168, 1, 10].into(),
            [198, 51, 100, 7].into(),
            40000,
            443,
        );
        f.set_addrs(Dir::Reply, [198, 51, 100, 7].into(), [203, 0, 113, 5].into());
        f.l4[3] = 51234;
        f.status = 0x19e;
        f.proto_state = tcp_state::ESTABLISHED;
        f.timeout = 300;
        f.mark = 7;
        f
    }

    #[test]
    fn captured_message_decodes() {
        let mut out = Vec::new();
        let hdr = decode(&CAPTURED_NEW, &mut out).unwrap();
        assert_eq!(hdr.seq, 1795419474);
        assert_eq!(
            out,
            vec![Received {
                sequenced: true,
                msg: Ok(Message::FlowNew(captured_flow())),
                header: Some(MessageHeader { flags: 0, seq: 1795419474 }),
            }]
        );
    }

    #[test]
    fn emits_the_captured_bytes_but_synproxy() {
        let f = captured_flow();
        let mut buf = [0u8; 200];
        let n = emit_message(&MessageRef::FlowNew(&f), 1795419474, &mut buf).unwrap();
        // We do not send the all-zero NTA_SYNPROXY: 16 bytes less.
        assert_eq!(n, 84);
        let mut expected = CAPTURED_NEW[..84].to_vec();
        expected[3] = 84;
        assert_eq!(&buf[..n], &expected[..]);
    }

    #[test]
    fn control_messages_and_flags() {
        let mut c = ConntrackdCodec;
        let mut buf = [0u8; 64];
        let a = c.emit_message(&MessageRef::Alive, 7, &mut buf).unwrap();
        let b = c.emit_message(&MessageRef::Ack { from: 3, to: 6 }, 8, &mut buf[a..]).unwrap();
        let hdr = DatagramHeader { flags: flags::HELLO, session: 0, seq: 7 };
        let n = c.finish(&hdr, 2, a + b, &mut buf).unwrap();
        // Captured startup: ALIVE|HELLO is 0x30; ACK|HELLO is 0x28.
        assert_eq!(
            &buf[..n],
            &[
                0x1a, 0x30, 0, 8, 0, 0, 0, 7, //
                0x1a, 0x28, 0, 16, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0, 6
            ]
        );
        let mut out = Vec::new();
        c.decode(&buf[..n], &mut out).unwrap();
        assert_eq!(out[0].msg, Ok(Message::Alive));
        assert_eq!(out[1].msg, Ok(Message::Ack { from: 3, to: 6 }));
        assert_eq!(out[1].header, Some(MessageHeader { flags: 0x28, seq: 8 }));
        let r = emit_message(&MessageRef::ResyncRequest, 9, &mut buf).unwrap();
        assert_eq!(&buf[..r], &[0x1a, 0x02, 0, 16, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(emit_message(&MessageRef::BulkEnd { bulk_start: 1 }, 1, &mut buf).is_err());
    }

    #[test]
    fn round_trips_icmp_ipv6_nat_zone_labels() {
        let mut ping =
            Flow::new(proto::ICMP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 0x1234, 8 << 8);
        ping.l4[3] = 0; // echo reply
        ping.status = status::CONFIRMED | status::SEEN_REPLY;
        ping.timeout = 29;
        ping.zone = 258;
        let mut v6 = Flow::new(
            proto::UDP,
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            5353,
            53,
        );
        v6.set_addrs(Dir::Reply, "2001:db8::99".parse().unwrap(), "2001:db8::1".parse().unwrap());
        v6.l4[2] = 5300;
        v6.extra_mut().labels = Some(1 | 1 << 40);
        v6.extra_mut().helper = Some("ftp".into());
        let mut buf = [0u8; 300];
        for f in [ping, v6, captured_flow()] {
            let n = emit_message(&MessageRef::FlowUpdate(&f), 1, &mut buf).unwrap();
            assert_eq!(n, message_len(&MessageRef::FlowUpdate(&f)));
            let view = MessageView::new_checked(&buf[..n]).unwrap();
            assert_eq!(view.parse(), Ok(Message::FlowUpdate(f.clone())));
            let k = f.key();
            let n = emit_message(&MessageRef::FlowDestroy(&k), 2, &mut buf).unwrap();
            let view = MessageView::new_checked(&buf[..n]).unwrap();
            assert_eq!(view.parse(), Ok(Message::FlowDestroy(k)));
        }
        // ICMP id little-endian, zone big-endian (captured).
        let mut ping = Flow::new(proto::ICMP, [1, 1, 1, 1].into(), [2, 2, 2, 2].into(), 4660, 0);
        ping.zone = 258;
        let n = emit_message(&MessageRef::FlowNew(&ping), 1, &mut buf).unwrap();
        let b = &buf[..n];
        assert!(b.windows(6).any(|w| w == [0, 6, 0, 24, 0x34, 0x12]));
        assert!(b.windows(6).any(|w| w == [0, 6, 0, 32, 0x01, 0x02]));
    }

    #[test]
    fn expectation_messages_follow_exp2msg() {
        // conntrackd's include/network.h (`enum nta_exp_attr`) and
        // build.c (`exp2msg`): master, expected and mask groups, timeout,
        // flags, class, IPv4 NAT, helper, function.
        let mut e = crate::expect::tests::ftp_pasv();
        e.nat = Some(ExpNat { dir: 1, addr: [10, 0, 1, 2].into(), port: 50000 });
        e.expectfn = Some("nat-follow-master".into());
        let mut buf = [0u8; 400];
        let n = emit_message(&MessageRef::ExpNew(&e), 7, &mut buf).unwrap();
        assert_eq!(n, message_len(&MessageRef::ExpNew(&e)));
        let b = &buf[..n];
        assert_eq!(b[0], (VERSION << 4) | msg_type::EXP_NEW);
        #[rustfmt::skip]
        let head: &[u8] = &[
            0, 12, 0, 0, 10, 0, 1, 2, 10, 0, 2, 2, // MASTER_IPV4
            0, 5, 0, 2, 6, 0, 0, 0,                // MASTER_L4PROTO
            0, 8, 0, 3, 0x9c, 0x40, 0, 21,         // MASTER_PORT 40000 → 21
            0, 12, 0, 4, 10, 0, 1, 2, 10, 0, 2, 2, // EXPECT_IPV4
            0, 5, 0, 6, 6, 0, 0, 0,                // EXPECT_L4PROTO
            0, 8, 0, 7, 0, 0, 0xc3, 0x50,          // EXPECT_PORT 0 → 50000
            0, 12, 0, 8, 255, 255, 255, 255, 255, 255, 255, 255, // MASK_IPV4
        ];
        assert_eq!(&b[HEADER_LEN..HEADER_LEN + head.len()], head);
        assert!(b.windows(8).any(|w| w == [0, 8, 0, 12, 0, 0, 1, 44]), "TIMEOUT 300");
        assert!(b.windows(8).any(|w| w == [0, 8, 0, 18, 0, 0, 0, 1]), "NAT_DIR 1");
        assert!(b.windows(8).any(|w| w == [0, 8, 0, 19, b'f', b't', b'p', 0]), "HELPER_NAME");
        let view = MessageView::new_checked(b).unwrap();
        assert_eq!(view.parse(), Ok(Message::ExpNew(Box::new(e.clone()))));
        let n = emit_message(&MessageRef::ExpDestroy(&e), 8, &mut buf).unwrap();
        assert_eq!(buf[0] & 0x0f, msg_type::EXP_DEL);
        let view = MessageView::new_checked(&buf[..n]).unwrap();
        assert_eq!(view.parse(), Ok(Message::ExpDestroy(Box::new(e.clone()))));
        // IPv6 NAT has no attribute in conntrackd: left out, the rest goes.
        let mut v6 = e.clone();
        let a = |n: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n));
        (v6.master.src, v6.master.dst, v6.tuple.src, v6.tuple.dst) = (a(1), a(2), a(1), a(2));
        v6.mask_src = IpAddr::V6(Ipv6Addr::from(u128::MAX));
        v6.nat = Some(ExpNat { dir: 0, addr: a(9), port: 1 });
        let n = emit_message(&MessageRef::ExpNew(&v6), 9, &mut buf).unwrap();
        let view = MessageView::new_checked(&buf[..n]).unwrap();
        assert_eq!(view.parse(), Ok(Message::ExpNew(Box::new(Expectation { nat: None, ..v6 }))));
        // An attribute beyond NTA_EXP_MAX refuses the message.
        let n = emit_message(&MessageRef::ExpNew(&e), 7, &mut buf).unwrap();
        buf[HEADER_LEN + 3] = nta_exp::MAX as u8;
        let view = MessageView::new_checked(&buf[..n]).unwrap();
        assert_eq!(view.parse(), Err(WireError::BadAttribute(nta_exp::MAX)));
    }

    #[test]
    fn unknown_attribute_kills_the_message_not_its_seq() {
        let mut bytes = CAPTURED_NEW;
        bytes[84 + 3] = 40; // SYNPROXY → attribute 40
        let mut out = Vec::new();
        decode(&bytes, &mut out).unwrap();
        assert!(out[0].sequenced);
        assert_eq!(out[0].msg, Err(WireError::BadAttribute(40)));
        // A bad length abandons the rest of the datagram.
        let mut two = CAPTURED_NEW.to_vec();
        two.extend_from_slice(&[0x1a, 0x10, 0, 200, 0, 0, 0, 1]);
        out.clear();
        decode(&two, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].msg, Err(WireError::BadLength));
        assert!(decode(&[0x1a, 0x08, 0, 8, 0, 0, 0, 1], &mut out).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut out = Vec::new();
            let _ = decode(&bytes, &mut out);
            let _ = parse_flow(&bytes);
            let _ = parse_exp(&bytes);
        }

        #[test]
        fn expectation_parser_never_panics_on_mutations(
            flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..8)
        ) {
            let mut e = crate::expect::tests::ftp_pasv();
            e.nat = Some(ExpNat { dir: 1, addr: [10, 0, 1, 2].into(), port: 50000 });
            let mut buf = [0u8; 400];
            let n = emit_message(&MessageRef::ExpNew(&e), 7, &mut buf).unwrap();
            for (at, byte) in flips {
                buf[HEADER_LEN + at % (n - HEADER_LEN)] = byte;
            }
            let _ = parse_exp(&buf[HEADER_LEN..n]);
        }
    }
}
