//! The native ctsync datagram format, version 1 (see `docs/PROTOCOL.md`).
//!
//! ```text
//! datagram: header (20) | message* | crc32 (4) [| mac (16) when flag AUTH]
//! encrypted (flags AUTH|ENCRYPT): header (20) | nonce (8)
//!           | ChaCha20-Poly1305(message* | crc32 (4)) | tag (16)
//! header:   magic "CT" u16 | version u8 | flags u8 | session u32 | seq u32
//!           | length u16 | count u16 | key id u32
//! message:  type u8 | flags u8 | length u16 | body
//! flow body: attribute* where attribute = type u16 | len u16 | value
//! ```
//!
//! All integers are big-endian. [`Packet`] and [`MessagePacket`] are views:
//! once `new_checked` succeeded, no accessor can panic. The `emit_*`
//! functions write into a buffer the caller owns and fail with
//! [`WireError::BufferTooSmall`](crate::wire::WireError::BufferTooSmall)
//! instead of panicking.
//!
//! Layout: the constants and numbers of the format are here; `packet` holds
//! the views and iterators, `message` the message dispatch and the
//! anti-entropy bodies, `flow` and `expect` the flow and expectation
//! bodies, `auth` the HMAC and AEAD keys and checks, and `codec` the
//! [`NativeCodec`] the protocol core uses with the one-call [`encode`] and
//! [`decode`].

mod auth;
mod codec;
mod expect;
mod flow;
mod message;
mod packet;

pub use auth::{AuthKey, SealKey};
pub use codec::{NativeCodec, decode, decode_with, encode, encode_with};
pub use flow::{MAX_FLOW_ATTRS, MAX_KEY_ATTR, flow_attrs, key_attr};
pub use message::{DIGEST_OVERHEAD, emit_message, message_len};
pub use packet::{AttrIter, MessageIter, MessagePacket, Packet};

/// `"CT"`.
pub const MAGIC: u16 = 0x4354;
/// The version this module speaks.
pub const VERSION: u8 = 1;
/// Datagram header length.
pub const HEADER_LEN: usize = field::MESSAGES;
/// CRC32 trailer length.
pub const CRC_LEN: usize = 4;
/// Authentication trailer length: HMAC-SHA256 truncated to its first 16
/// bytes (128 bits, as RFC 2104 §5 allows: forging still takes 2^128 tries).
pub const MAC_LEN: usize = 16;
/// Encrypted datagrams only: the explicit part of the AEAD nonce, a
/// per-sender datagram counter between the header and the ciphertext.
pub const NONCE_LEN: usize = 8;
/// Shortest authentication key accepted (256 bits).
pub const MIN_KEY_LEN: usize = 32;
/// Message header length.
pub const MSG_HEADER_LEN: usize = 4;
/// Attribute header length.
pub const ATTR_HEADER_LEN: usize = 4;
/// Default largest datagram: a 1500-byte MTU minus IPv4 and UDP headers.
pub const DEFAULT_MAX_DATAGRAM: usize = 1472;
/// Longest helper name accepted (the kernel's `NF_CT_HELPER_NAME_LEN` is 16).
pub const MAX_HELPER_LEN: usize = 64;

/// Datagram header flag bits.
pub mod flags {
    /// Authenticated: a [`MAC_LEN`](super::MAC_LEN)-byte HMAC-SHA256 tag
    /// follows the CRC and the key id field names the key.
    pub const AUTH: u8 = 0x01;
    /// The sender's resend queue is filling up: please acknowledge now.
    pub const ACK_REQUEST: u8 = 0x02;
    /// Encrypted (only with AUTH): a [`NONCE_LEN`](super::NONCE_LEN)-byte
    /// counter follows the header, the messages and the CRC are
    /// ChaCha20-Poly1305 ciphertext, and the trailer is its tag.
    pub const ENCRYPT: u8 = 0x04;
}

/// Message type numbers. Types below 64 consume a sequence number, so that
/// a receiver that does not know a type still numbers the others right.
pub mod msg_type {
    /// Flow created.
    pub const FLOW_NEW: u8 = 1;
    /// Flow state changed (full state).
    pub const FLOW_UPDATE: u8 = 2;
    /// Flow destroyed (key only).
    pub const FLOW_DESTROY: u8 = 3;
    /// End of a bulk.
    pub const BULK_END: u8 = 4;
    /// Ask the peer for a bulk of its table.
    pub const RESYNC_REQUEST: u8 = 5;
    /// Anti-entropy: digests of ranges of the sender's table.
    pub const DIGEST: u8 = 6;
    /// Anti-entropy: resend the flows of these ranges.
    pub const REPAIR_REQUEST: u8 = 7;
    /// Anti-entropy: a flow resent by a repair.
    pub const FLOW_REPAIR: u8 = 8;
    /// Anti-entropy: end of a repair (a barrier, as BULK_END).
    pub const REPAIR_END: u8 = 9;
    /// First type reserved for expectation messages (sequenced).
    pub const EXPECT_FIRST: u8 = 32;
    /// An expectation the sender's kernel holds (full state).
    pub const EXP_NEW: u8 = 32;
    /// An expectation is gone (its full state, as in EXP_NEW).
    pub const EXP_DESTROY: u8 = 33;
    /// Last type reserved for expectation messages.
    pub const EXPECT_LAST: u8 = 63;
    /// Acknowledge a range.
    pub const ACK: u8 = 64;
    /// Report a lost range.
    pub const NACK: u8 = 65;
    /// Keepalive.
    pub const ALIVE: u8 = 66;
    /// Handshake request.
    pub const HELLO: u8 = 67;
    /// Handshake answer.
    pub const HELLO_BACK: u8 = 68;
    /// Datagram counter and the receiver's session (with keys).
    pub const STAMP: u8 = 69;

    /// True when a message of this type consumes a sequence number.
    pub fn is_sequenced(t: u8) -> bool {
        t < ACK
    }
}

/// Flow attribute type numbers.
pub mod attr {
    /// IPv4 addresses of both tuples, l4, protocol, state, zone, status,
    /// timeout, mark (40 bytes).
    pub const CORE_V4: u16 = 1;
    /// As [`CORE_V4`] with IPv6 addresses (88 bytes).
    pub const CORE_V6: u16 = 2;
    /// TCP window scales and flags (4 bytes).
    pub const TCP: u16 = 3;
    /// Connection labels (16 bytes).
    pub const LABELS: u16 = 4;
    /// Helper name (UTF-8, up to 64 bytes).
    pub const HELPER: u16 = 5;
    /// NAT sequence adjustment, orig then reply (24 bytes).
    pub const SEQ_ADJ: u16 = 6;
    /// SCTP verification tags (8 bytes).
    pub const SCTP_VTAGS: u16 = 7;
    /// DCCP role and handshake sequence (9 bytes).
    pub const DCCP: u16 = 8;
    /// Per-tuple zones (4 bytes).
    pub const TUPLE_ZONES: u16 = 9;
    /// IPv4 flow key (16 bytes).
    pub const KEY_V4: u16 = 16;
    /// IPv6 flow key (40 bytes).
    pub const KEY_V6: u16 = 17;
    /// Expectation: the master's key, IPv4 (16 bytes, layout of KEY_V4).
    pub const EXP_MASTER_V4: u16 = 32;
    /// Expectation: the master's key, IPv6 (40 bytes).
    pub const EXP_MASTER_V6: u16 = 33;
    /// Expectation: the expected tuple, IPv4 (16 bytes, layout of KEY_V4).
    pub const EXP_TUPLE_V4: u16 = 34;
    /// Expectation: the expected tuple, IPv6 (40 bytes).
    pub const EXP_TUPLE_V6: u16 = 35;
    /// Expectation: source address mask and source port mask, then
    /// timeout, flags and class (IPv4: 4 + 2 + 2 pad + 12 = 20 bytes).
    pub const EXP_CORE_V4: u16 = 36;
    /// As EXP_CORE_V4 with an IPv6 mask (32 bytes).
    pub const EXP_CORE_V6: u16 = 37;
    /// Expectation: helper name (UTF-8, up to 64 bytes).
    pub const EXP_HELPER: u16 = 38;
    /// Expectation NAT: direction u32, address, port u16, 2 pad bytes
    /// (IPv4: 12 bytes).
    pub const EXP_NAT_V4: u16 = 39;
    /// As EXP_NAT_V4 with an IPv6 address (24 bytes).
    pub const EXP_NAT_V6: u16 = 40;
    /// Expectation function name (UTF-8, up to 64 bytes).
    pub const EXP_FN: u16 = 41;
}

pub(super) mod field {
    pub type Field = std::ops::Range<usize>;
    pub const MAGIC: Field = 0..2;
    pub const VERSION: usize = 2;
    pub const FLAGS: usize = 3;
    pub const SESSION: Field = 4..8;
    pub const SEQ: Field = 8..12;
    pub const LENGTH: Field = 12..14;
    pub const COUNT: Field = 14..16;
    pub const KEY_ID: Field = 16..20;
    pub const MESSAGES: usize = 20;

    pub const MSG_TYPE: usize = 0;
    pub const MSG_FLAGS: usize = 1;
    pub const MSG_LENGTH: Field = 2..4;
}

// The slices passed below always have the exact width (ranges of constant
// length over checked buffers), so the conversions cannot fail.
pub(super) fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

pub(super) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

pub(super) fn be128(b: &[u8]) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    u128::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::auth::tests::key;
    use super::*;
    use crate::flow::{Flow, SeqAdj, TcpInfo, proto, status, tcp_state};
    use crate::wire::{DatagramHeader, Message, MessageRef, Received, WireError};

    pub(super) fn tcp_flow() -> Flow {
        let mut f =
            Flow::new_v4(proto::TCP, [10, 0, 0, 1].into(), [192, 168, 1, 2].into(), 40000, 443);
        f.proto_state = tcp_state::ESTABLISHED;
        f.status |= status::SEEN_REPLY | status::ASSURED;
        f.timeout = 431999;
        f.mark = 7;
        f.tcp = TcpInfo { wscale_orig: 7, wscale_reply: 8, flags_orig: 0x23, flags_reply: 0x03 };
        f
    }

    pub(super) fn full_v6_flow() -> Flow {
        let mut f = Flow::new(
            proto::SCTP,
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            5000,
            6000,
        );
        f.zone = 3;
        f.proto_state = 3;
        f.tcp = TcpInfo { wscale_orig: 1, wscale_reply: 2, flags_orig: 3, flags_reply: 4 };
        let e = f.extra_mut();
        e.labels = Some(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        e.helper = Some("ftp".into());
        e.seq_adj = Some([
            SeqAdj { correction_pos: 1, offset_before: 2, offset_after: 3 },
            SeqAdj { correction_pos: 4, offset_before: 5, offset_after: 6 },
        ]);
        e.sctp_vtags = Some([0xdead_beef, 0xcafe_f00d]);
        e.dccp = Some((2, 0x0102_0304_0506_0708));
        e.tuple_zones = Some([11, 12]);
        f
    }

    pub(super) fn roundtrip(msgs: &[Message]) -> Vec<Message> {
        let hdr = DatagramHeader { flags: 0, session: 0x1122_3344, seq: u32::MAX };
        let refs: Vec<_> = msgs.iter().map(Message::as_ref).collect();
        let mut buf = [0u8; 2048];
        let len = encode(&hdr, &refs, &mut buf).unwrap();
        let mut out = Vec::new();
        assert_eq!(decode(&buf[..len], &mut out).unwrap(), hdr);
        out.into_iter().map(|r| r.msg.unwrap()).collect()
    }

    #[test]
    fn datagram_header_fixture() {
        let hdr = DatagramHeader { flags: flags::ACK_REQUEST, session: 0x0102_0304, seq: 9 };
        let mut buf = [0u8; 64];
        let len = encode(&hdr, &[MessageRef::Alive], &mut buf).unwrap();
        assert_eq!(len, 28);
        assert_eq!(
            &buf[..24],
            &[b'C', b'T', 1, 2, 1, 2, 3, 4, 0, 0, 0, 9, 0, 28, 0, 1, 0, 0, 0, 0, 66, 0, 0, 4]
        );
        assert_eq!(&buf[24..28], &crc32fast::hash(&buf[..24]).to_be_bytes());
    }

    #[test]
    fn header_errors() {
        let hdr = DatagramHeader { flags: 0, session: 1, seq: 1 };
        let mut buf = [0u8; 64];
        let len = encode(&hdr, &[MessageRef::Alive], &mut buf).unwrap();
        let mut out = Vec::new();
        assert_eq!(decode(&buf[..10], &mut out), Err(WireError::Truncated));
        assert_eq!(decode(&buf[..len - 1], &mut out), Err(WireError::Truncated));
        let mut b = buf;
        b[0] = b'X';
        assert_eq!(decode(&b[..len], &mut out), Err(WireError::BadMagic));
        let mut b = buf;
        b[2] = 9;
        assert_eq!(decode(&b[..len], &mut out), Err(WireError::BadVersion(9)));
        let mut b = buf;
        b[21] ^= 1;
        assert_eq!(decode(&b[..len], &mut out), Err(WireError::BadCrc));
        let mut b = buf;
        b[3] = flags::AUTH;
        assert_eq!(decode(&b[..len], &mut out), Err(WireError::BadLength), "no room for a MAC");
        assert_eq!(decode(&buf[..len + 1], &mut out), Err(WireError::BadLength));
        assert!(out.is_empty());
    }

    #[test]
    fn unknown_message_type_keeps_its_sequence_slot() {
        let hdr = DatagramHeader { flags: 0, session: 1, seq: 1 };
        let mut buf = [0u8; 64];
        let len = encode(&hdr, &[MessageRef::ResyncRequest, MessageRef::Alive], &mut buf).unwrap();
        buf[HEADER_LEN] = msg_type::EXPECT_LAST;
        buf[HEADER_LEN + 4] = 200;
        let end = len - CRC_LEN;
        let crc = crc32fast::hash(&buf[..end]);
        buf[end..len].copy_from_slice(&crc.to_be_bytes());
        let mut out = Vec::new();
        decode(&buf[..len], &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                Received { sequenced: true, msg: Err(WireError::UnknownMessage(63)), header: None },
                Received {
                    sequenced: false,
                    msg: Err(WireError::UnknownMessage(200)),
                    header: None,
                },
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut out = Vec::new();
            let _ = decode(&bytes, &mut out);
            let _ = NativeCodec::encrypting(vec![key(1, 1)], 0).decode_datagram(&bytes, &mut out);
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                for m in p.messages().flatten() {
                    let _ = m.parse();
                }
            }
            let _ = flow::parse_flow(&bytes);
            let _ = flow::parse_key(&bytes);
        }
    }
}
