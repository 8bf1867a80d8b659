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
//! decoded [`Received`](super::Received) has a
//! [`MessageHeader`](super::MessageHeader). HELLO and HELLO_BACK are flag
//! bits on any message: the protocol core passes them as
//! [`DatagramHeader::flags`](super::DatagramHeader::flags) and
//! [`ConntrackdCodec::finish`](super::Codec::finish) sets them on every
//! message of the datagram.
//!
//! conntrackd's byte-order quirks live here and nowhere else:
//! `NTA_SPAT_PORT`, `NTA_DPAT_PORT` and `NTA_ICMP_ID` are little-endian on
//! the wire (conntrackd applies `htons` to values already in network order,
//! on x86), addresses and orig ports are in network order, every other
//! integer is big-endian.
//!
//! The decoder never panics: [`MessageView::new_checked`] checks the lengths
//! once and the accessors read inside them.
//!
//! Layout: the numbers of the format, the attribute size tables and the
//! attribute walk and layout shared by flows and expectations are here;
//! `codec` holds [`ConntrackdCodec`], the message view and the message
//! dispatch, `flow` the CT message bodies, `expect` the EXP message
//! bodies.

mod codec;
mod expect;
mod flow;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use codec::{ConntrackdCodec, MessageView, decode, emit_message, message_len};
pub use expect::parse_exp;
pub use flow::parse_flow;

use super::{WireError, Writer};

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

fn attr_len(value: usize) -> usize {
    align4(4 + value)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}
fn addr_len(v6: bool) -> usize {
    attr_len(if v6 { 32 } else { 8 })
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
