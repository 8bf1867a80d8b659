//! [`Flow`](crate::flow::Flow) ⇄ ctnetlink attributes, in one place.
//!
//! Decoding on the hot path ([`parse_flow`]: every event, every dumped
//! entry) reads the attributes as views over the message bytes with
//! `netlink-packet-core`'s `NlasIterator`, allocating nothing for a common
//! flow: the crate's typed trees (a `Vec` per nesting level, a copy of every
//! attribute it does not know) cost more than the rest of an event's path
//! through the daemon. [`parse_flow_typed`] decodes the same bytes through
//! `netlink-packet-netfilter`'s typed attributes (tuples, TCP protoinfo,
//! status, timeout, mark; zone, labels, helper, sequence adjustment, ICMP
//! tuple fields, per-tuple zones, SCTP and DCCP arrive there as
//! `Other(DefaultNla)`); the tests hold both to the same result. The
//! constants are those of `include/uapi/linux/netfilter/nfnetlink_conntrack.h`.
//!
//! Encoding writes attribute bytes straight into the caller's batch buffer
//! ([`AttrWriter`]): a commit emits hundreds of thousands of flows per
//! second, and building the crate's attribute trees (a `Vec` per nesting
//! level, per flow) would cost more than the kernel's own insert. The unit
//! tests parse what we emit back through the crate, so both sides agree.
//!
//! Layout: the attribute numbers, [`ConvertError`], [`EmitOptions`] and
//! the labels layout both directions share are here; `decode` holds the
//! two decoders, `encode` the emitters and [`AttrWriter`].

mod decode;
mod encode;
#[cfg(test)]
mod tests;

use netlink_packet_core::DecodeError;

pub(super) use decode::{TupleParts, be_u16, be_u32, for_each_nla};
pub use decode::{flow_from_attrs, parse_flow, parse_flow_typed};
pub use encode::{
    AttrWriter, Nest, emit_create, emit_key, emit_timeout_update, emit_update, status_to_send,
};
pub(super) use encode::{emit_addrs, emit_proto};

use crate::flow::{status, tcp_flag};

/// Top-level `CTA_*` attribute numbers.
pub mod cta {
    pub const TUPLE_ORIG: u16 = 1;
    pub const TUPLE_REPLY: u16 = 2;
    pub const STATUS: u16 = 3;
    pub const PROTOINFO: u16 = 4;
    pub const HELP: u16 = 5;
    pub const NAT_SRC: u16 = 6;
    pub const TIMEOUT: u16 = 7;
    pub const MARK: u16 = 8;
    pub const ID: u16 = 12;
    pub const NAT_DST: u16 = 13;
    pub const SEQ_ADJ_ORIG: u16 = 15;
    pub const SEQ_ADJ_REPLY: u16 = 16;
    pub const ZONE: u16 = 18;
    pub const LABELS: u16 = 22;
}

/// Attributes nested in a tuple and below.
mod tuple {
    pub const IP: u16 = 1;
    pub const PROTO: u16 = 2;
    pub const ZONE: u16 = 3;
    pub const IP_V4_SRC: u16 = 1;
    pub const IP_V4_DST: u16 = 2;
    pub const IP_V6_SRC: u16 = 3;
    pub const IP_V6_DST: u16 = 4;
    pub const PROTO_NUM: u16 = 1;
    pub const PROTO_SRC_PORT: u16 = 2;
    pub const PROTO_DST_PORT: u16 = 3;
    pub const ICMP_ID: u16 = 4;
    pub const ICMP_TYPE: u16 = 5;
    pub const ICMP_CODE: u16 = 6;
    pub const ICMPV6_ID: u16 = 7;
    pub const ICMPV6_TYPE: u16 = 8;
    pub const ICMPV6_CODE: u16 = 9;
}

/// Attributes nested in `CTA_PROTOINFO`, `CTA_HELP`, `CTA_NAT_*` and
/// `CTA_SEQ_ADJ_*`.
mod nested {
    pub const PROTOINFO_TCP: u16 = 1;
    pub const PROTOINFO_DCCP: u16 = 2;
    pub const PROTOINFO_SCTP: u16 = 3;
    pub const TCP_STATE: u16 = 1;
    pub const TCP_WSCALE_ORIG: u16 = 2;
    pub const TCP_WSCALE_REPLY: u16 = 3;
    pub const TCP_FLAGS_ORIG: u16 = 4;
    pub const TCP_FLAGS_REPLY: u16 = 5;
    pub const DCCP_STATE: u16 = 1;
    pub const DCCP_ROLE: u16 = 2;
    pub const DCCP_HANDSHAKE_SEQ: u16 = 3;
    pub const SCTP_STATE: u16 = 1;
    pub const SCTP_VTAG_ORIG: u16 = 2;
    pub const SCTP_VTAG_REPLY: u16 = 3;
    pub const HELP_NAME: u16 = 1;
    pub const NAT_V4_MINIP: u16 = 1;
    pub const NAT_V4_MAXIP: u16 = 2;
    pub const NAT_PROTO: u16 = 3;
    pub const NAT_V6_MINIP: u16 = 4;
    pub const NAT_V6_MAXIP: u16 = 5;
    pub const PROTONAT_PORT_MIN: u16 = 1;
    pub const PROTONAT_PORT_MAX: u16 = 2;
    pub const SEQADJ_CORRECTION_POS: u16 = 1;
    pub const SEQADJ_OFFSET_BEFORE: u16 = 2;
    pub const SEQADJ_OFFSET_AFTER: u16 = 3;
}

/// `NLA_F_NESTED`: libmnl sets it on every nest; newer kernels check it on
/// some families, so we set it too.
const NLA_F_NESTED: u16 = 1 << 15;

/// The attribute type without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`, as
/// `NlaBuffer::kind` reads it (a `DefaultNla` keeps the flags).
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | 1 << 14);

/// TCP flag bits a commit copies from the flow; the others
/// (`MAXACK_SET`, `DATA_UNACKNOWLEDGED`) describe window-tracking state the
/// kernel does not export, so they are left to the receiving kernel.
const TCP_FLAGS_SYNCED: u8 =
    tcp_flag::WINDOW_SCALE | tcp_flag::SACK_PERM | tcp_flag::CLOSE_INIT | tcp_flag::BE_LIBERAL;

/// Status bits a create or update never carries: the kernel manages them,
/// or (NAT) derives them from `CTA_NAT_*`.
const STATUS_NOT_SENT: u32 = status::KERNEL_MANAGED
    | status::SRC_NAT
    | status::DST_NAT
    | status::SRC_NAT_DONE
    | status::DST_NAT_DONE;

/// Why a ctnetlink message could not become a [`Flow`](crate::flow::Flow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvertError {
    /// The attributes did not parse (bad lengths, truncated nests).
    Malformed(String),
    /// `CTA_TUPLE_ORIG` or its addresses are missing.
    NoOrigTuple,
    /// The tuples mix IPv4 and IPv6 addresses.
    MixedFamilies,
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConvertError::Malformed(e) => write!(f, "malformed ctnetlink attributes: {e}"),
            ConvertError::NoOrigTuple => f.write_str("ctnetlink message without original tuple"),
            ConvertError::MixedFamilies => f.write_str("ctnetlink tuples mix IPv4 and IPv6"),
        }
    }
}

impl std::error::Error for ConvertError {}

impl From<DecodeError> for ConvertError {
    fn from(e: DecodeError) -> Self {
        ConvertError::Malformed(e.to_string())
    }
}

/// How a flow is written into a create or update message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmitOptions {
    /// Replace the flow's timeout.
    pub timeout: Option<u32>,
    /// Set `IP_CT_TCP_FLAG_BE_LIBERAL` in both TCP directions.
    pub be_liberal: bool,
}

/// The kernel stores labels as an array of `unsigned long` with bit i =
/// label i, and copies that array as is: 64-bit words in host order.
pub fn labels_to_bytes(labels: u128) -> [u8; 16] {
    let lo = (labels as u64).to_ne_bytes();
    let hi = ((labels >> 64) as u64).to_ne_bytes();
    let mut out = [0; 16];
    out[..8].copy_from_slice(&lo);
    out[8..].copy_from_slice(&hi);
    out
}

/// Inverse of [`labels_to_bytes`]; shorter arrays (kernels with smaller
/// label storage) are zero-extended, longer ones keep their first 128 bits.
pub fn labels_from_bytes(bytes: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = bytes.len().min(16);
    b[..n].copy_from_slice(&bytes[..n]);
    let lo = u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let hi = u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    u128::from(lo) | (u128::from(hi) << 64)
}
