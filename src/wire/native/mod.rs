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
//! [`WireError::BufferTooSmall`] instead of panicking.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, Tag};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

mod expect;
mod flow;
mod message;
mod packet;

pub use flow::{MAX_FLOW_ATTRS, MAX_KEY_ATTR, flow_attrs, key_attr};
pub use message::{DIGEST_OVERHEAD, emit_message, message_len};
use packet::nonce;
pub use packet::{AttrIter, MessageIter, MessagePacket, Packet};

use super::{Codec, DatagramHeader, MessageRef, Received, WireError};

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

/// A shared secret that authenticates datagrams, named by `id` on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey {
    /// The key id carried in the header.
    pub id: u32,
    key: Vec<u8>,
}

impl AuthKey {
    /// A key; the configuration refuses keys shorter than [`MIN_KEY_LEN`].
    pub fn new(id: u32, key: Vec<u8>) -> AuthKey {
        AuthKey { id, key }
    }

    pub(super) fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length: this cannot fail.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }
}

impl std::fmt::Debug for AuthKey {
    // The secret never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// The ChaCha20-Poly1305 key that encrypts datagrams under an [`AuthKey`]'s
/// id.
#[derive(Clone)]
pub struct SealKey {
    /// The key id carried in the header.
    pub id: u32,
    pub(super) cipher: ChaCha20Poly1305,
}

impl SealKey {
    /// What the AEAD uses for `key`: HMAC-SHA256(key, a fixed label), so
    /// that one secret never serves as both an HMAC key and a cipher key
    /// (a peer that does not encrypt still signs with the key itself).
    pub fn derive(key: &AuthKey) -> SealKey {
        let mut mac = key.mac();
        mac.update(b"ctsync v1 ChaCha20-Poly1305 payload key");
        let derived = mac.finalize().into_bytes();
        // 32 bytes from SHA-256 are exactly a ChaCha20 key.
        let cipher = ChaCha20Poly1305::new_from_slice(&derived)
            .unwrap_or_else(|_| unreachable!("SHA-256 output is a 32-byte key"));
        SealKey { id: key.id, cipher }
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// The native codec, for the protocol core. With keys, every datagram sent
/// is authenticated with the first and every datagram received must be
/// authenticated with one of them; without, authenticated datagrams are
/// refused (the peers' configurations disagree). An encrypting codec
/// also encrypts what it sends and refuses datagrams that are not
/// encrypted, and the other way round.
#[derive(Debug, Clone, Default)]
pub struct NativeCodec {
    keys: Option<Arc<[AuthKey]>>,
    encryption: Option<Encryption>,
}

#[derive(Debug, Clone)]
struct Encryption {
    keys: Arc<[SealKey]>,
    /// The next datagram's nonce counter. Clones share it, and a key
    /// reload keeps it, so that one sender never takes a value twice.
    next_counter: Arc<AtomicU64>,
}

impl Encryption {
    fn new(keys: &[AuthKey], next_counter: Arc<AtomicU64>) -> Encryption {
        Encryption { keys: keys.iter().map(SealKey::derive).collect(), next_counter }
    }

    /// Verify the tag, then decrypt: the datagram without its tag, in
    /// clear. In fuzzing builds a datagram whose tag does not verify is
    /// taken as it is, so that the fuzzer reaches the parsers (and what
    /// the codec encrypted still decrypts, for round trips).
    #[allow(unexpected_cfgs)]
    fn open(&self, packet: &Packet<&[u8]>) -> Result<Vec<u8>, WireError> {
        let id = packet.key_id();
        let key = self.keys.iter().find(|k| k.id == id).ok_or(WireError::UnknownKey(id))?;
        let bytes = packet.buffer;
        let len = usize::from(packet.length());
        let head = packet.messages_start();
        let end = len - MAC_LEN;
        let mut plain = vec![0u8; end];
        plain[..head].copy_from_slice(&bytes[..head]);
        let tag = Tag::try_from(&bytes[end..len]).map_err(|_| WireError::BadLength)?;
        let (aad, body) = plain.split_at_mut(head);
        let body = InOutBuf::new(&bytes[head..end], body).map_err(|_| WireError::BadLength)?;
        let nonce = nonce(packet.session(), packet.nonce_counter());
        match key.cipher.decrypt_inout_detached(&nonce, aad, body, &tag) {
            Ok(()) => Ok(plain),
            Err(_) if cfg!(fuzzing) => Ok(bytes[..end].to_vec()),
            Err(_) => Err(WireError::BadMac),
        }
    }
}

impl NativeCodec {
    /// A codec that neither sends nor accepts authentication.
    pub fn insecure() -> NativeCodec {
        NativeCodec { keys: None, encryption: None }
    }

    /// A codec that authenticates with `keys[0]` and accepts any of `keys`.
    /// An empty list means [`NativeCodec::insecure`].
    pub fn with_keys(keys: Vec<AuthKey>) -> NativeCodec {
        NativeCodec {
            keys: if keys.is_empty() { None } else { Some(keys.into()) },
            encryption: None,
        }
    }

    /// As [`NativeCodec::with_keys`], and encrypting: what it sends is
    /// encrypted with `keys[0]` and numbered from `first_counter` on (the
    /// caller makes it random per start, see docs/SECURITY.md); what it
    /// receives must be encrypted. An empty list means
    /// [`NativeCodec::insecure`].
    pub fn encrypting(keys: Vec<AuthKey>, first_counter: u64) -> NativeCodec {
        let mut codec = NativeCodec::with_keys(keys);
        codec.encryption = codec
            .keys
            .as_deref()
            .map(|keys| Encryption::new(keys, Arc::new(AtomicU64::new(first_counter))));
        codec
    }

    /// True when payloads are encrypted.
    pub fn is_encrypting(&self) -> bool {
        self.encryption.is_some()
    }

    /// Check and decode a datagram; see [`decode_with`].
    pub fn decode_datagram(
        &self,
        bytes: &[u8],
        out: &mut Vec<Received>,
    ) -> Result<DatagramHeader, WireError> {
        decode_inner(bytes, self.keys.as_deref(), self.encryption.as_ref(), out)
    }

    fn send_key(&self) -> Option<&AuthKey> {
        self.keys.as_deref().and_then(|k| k.first())
    }
}

impl Codec for NativeCodec {
    fn header_len(&self) -> usize {
        if self.encryption.is_some() { HEADER_LEN + NONCE_LEN } else { HEADER_LEN }
    }

    fn trailer_len(&self) -> usize {
        if self.keys.is_some() { CRC_LEN + MAC_LEN } else { CRC_LEN }
    }

    fn message_len(&self, msg: &MessageRef<'_>) -> usize {
        message_len(msg)
    }

    fn emit_message(
        &self,
        msg: &MessageRef<'_>,
        _seq: u32,
        buf: &mut [u8],
    ) -> Result<usize, WireError> {
        emit_message(msg, buf)
    }

    fn finish(
        &self,
        hdr: &DatagramHeader,
        count: u16,
        end: usize,
        buf: &mut [u8],
    ) -> Result<usize, WireError> {
        let len = end + self.trailer_len();
        let len16 = u16::try_from(len).map_err(|_| WireError::BufferTooSmall)?;
        if end < self.header_len() || buf.len() < len {
            return Err(WireError::BufferTooSmall);
        }
        let mut packet = Packet::new_unchecked(&mut buf[..len]);
        match self.encryption.as_ref().and_then(|e| Some((e, e.keys.first()?))) {
            Some((enc, key)) => {
                let counter = enc.next_counter.fetch_add(1, Ordering::Relaxed);
                packet.seal(hdr, count, len16, key, counter)?;
            }
            None => packet.fill(hdr, count, len16, self.send_key()),
        }
        Ok(len)
    }

    fn decode(&self, bytes: &[u8], out: &mut Vec<Received>) -> Result<DatagramHeader, WireError> {
        self.decode_datagram(bytes, out)
    }

    fn set_auth_keys(&mut self, keys: Vec<AuthKey>) {
        let counter = self.encryption.take().map(|e| e.next_counter);
        *self = NativeCodec::with_keys(keys);
        if let (Some(counter), Some(keys)) = (counter, self.keys.as_deref()) {
            self.encryption = Some(Encryption::new(keys, counter));
        }
    }
}

/// Check and decode an unauthenticated datagram (tests, tools, fuzzing);
/// see [`decode_with`].
pub fn decode(bytes: &[u8], out: &mut Vec<Received>) -> Result<DatagramHeader, WireError> {
    decode_with(bytes, None, out)
}

/// Check and decode a datagram that is not encrypted: lengths, then the
/// MAC when `keys` are given (before anything else is believed), then the
/// CRC, then every message. MAC and CRC checks are skipped in fuzzing
/// builds, so that the fuzzer reaches the parsers.
pub fn decode_with(
    bytes: &[u8],
    keys: Option<&[AuthKey]>,
    out: &mut Vec<Received>,
) -> Result<DatagramHeader, WireError> {
    decode_inner(bytes, keys, None, out)
}

/// [`decode_with`], and with `encryption` the tag check and decryption in
/// place of the MAC check; the CRC then covers the plaintext.
#[allow(unexpected_cfgs)]
fn decode_inner(
    bytes: &[u8],
    keys: Option<&[AuthKey]>,
    encryption: Option<&Encryption>,
    out: &mut Vec<Received>,
) -> Result<DatagramHeader, WireError> {
    let packet = Packet::new_checked(bytes)?;
    let plain = match (keys, encryption) {
        (None, _) if packet.is_authenticated() => return Err(WireError::AuthUnsupported),
        (None, _) => None,
        (Some(_), None) if packet.is_encrypted() => return Err(WireError::EncryptUnsupported),
        (Some(_), Some(_)) if packet.is_authenticated() && !packet.is_encrypted() => {
            return Err(WireError::NotEncrypted);
        }
        (Some(_), Some(enc)) if packet.is_encrypted() => Some(enc.open(&packet)?),
        (Some(keys), _) => {
            if !cfg!(fuzzing) {
                packet.check_mac(keys)?;
            }
            None
        }
    };
    let payload = match &plain {
        Some(plain) => {
            let t = plain.len() - CRC_LEN;
            if !cfg!(fuzzing) && crc32fast::hash(&plain[..t]) != be32(&plain[t..]) {
                return Err(WireError::BadCrc);
            }
            &plain[packet.messages_start()..t]
        }
        None => {
            if !cfg!(fuzzing) {
                packet.check_crc()?;
            }
            packet.payload()
        }
    };
    let hdr =
        DatagramHeader { flags: packet.flags(), session: packet.session(), seq: packet.seq() };
    let start = out.len();
    for m in (MessageIter { rest: payload }) {
        let m = m?;
        out.push(Received {
            sequenced: msg_type::is_sequenced(m.msg_type()),
            msg: m.parse(),
            header: None,
        });
    }
    if out.len() - start != usize::from(packet.count()) {
        out.truncate(start);
        return Err(WireError::BadLength);
    }
    Ok(hdr)
}

/// Encode a whole datagram in one call (tests, tools, the benchmark).
pub fn encode(
    hdr: &DatagramHeader,
    msgs: &[MessageRef<'_>],
    buf: &mut [u8],
) -> Result<usize, WireError> {
    encode_with(&NativeCodec::insecure(), hdr, msgs, buf)
}

/// As [`encode`], authenticated (and encrypted) as `codec` does.
pub fn encode_with(
    codec: &NativeCodec,
    hdr: &DatagramHeader,
    msgs: &[MessageRef<'_>],
    buf: &mut [u8],
) -> Result<usize, WireError> {
    let mut at = codec.header_len();
    for m in msgs {
        at += emit_message(m, buf.get_mut(at..).ok_or(WireError::BufferTooSmall)?)?;
    }
    let count = u16::try_from(msgs.len()).map_err(|_| WireError::BufferTooSmall)?;
    codec.finish(hdr, count, at, buf)
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
    use super::*;
    use crate::flow::{Flow, SeqAdj, TcpInfo, proto, status, tcp_state};
    use crate::wire::Message;

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

    fn key(id: u32, byte: u8) -> AuthKey {
        AuthKey::new(id, vec![byte; MIN_KEY_LEN])
    }

    fn sealed(codec: &NativeCodec, buf: &mut [u8]) -> usize {
        let hdr = DatagramHeader { flags: 0, session: 7, seq: 100 };
        let f = tcp_flow();
        let at =
            HEADER_LEN + emit_message(&MessageRef::FlowUpdate(&f), &mut buf[HEADER_LEN..]).unwrap();
        codec.finish(&hdr, 1, at, buf).unwrap()
    }

    #[test]
    fn mac_good_bad_unknown_key_and_missing() {
        let codec = NativeCodec::with_keys(vec![key(5, 0xaa)]);
        let mut buf = [0u8; 256];
        let len = sealed(&codec, &mut buf);
        assert_eq!(len, HEADER_LEN + 56 + CRC_LEN + MAC_LEN, "16-byte MAC after the CRC");
        assert_eq!(buf[3] & flags::AUTH, flags::AUTH);
        assert_eq!(be32(&buf[16..20]), 5, "key id in the header");
        let mut out = Vec::new();
        assert_eq!(codec.decode_datagram(&buf[..len], &mut out).unwrap().seq, 100);
        assert_eq!(out.len(), 1);

        // Any flipped bit, in the header, the payload, the CRC or the tag.
        for at in [4, HEADER_LEN + 10, len - MAC_LEN - 1, len - 1] {
            let mut b = buf;
            b[at] ^= 0x10;
            out.clear();
            assert_eq!(codec.decode_datagram(&b[..len], &mut out), Err(WireError::BadMac), "{at}");
            assert!(out.is_empty());
        }
        // Same key id, another secret: the MAC check refuses it, even with a valid CRC.
        let forger = NativeCodec::with_keys(vec![key(5, 0xbb)]);
        let mut fb = [0u8; 256];
        let flen = sealed(&forger, &mut fb);
        assert_eq!(Packet::new_checked(&fb[..flen]).unwrap().check_crc(), Ok(()));
        assert_eq!(codec.decode_datagram(&fb[..flen], &mut out), Err(WireError::BadMac));
        // Another key id.
        let other = NativeCodec::with_keys(vec![key(6, 0xaa)]);
        sealed(&other, &mut fb);
        assert_eq!(codec.decode_datagram(&fb[..len], &mut out), Err(WireError::UnknownKey(6)));
        // No MAC at all, where one is required; and a MAC where none is configured.
        let plain = NativeCodec::insecure();
        let plen = sealed(&plain, &mut fb);
        assert_eq!(codec.decode_datagram(&fb[..plen], &mut out), Err(WireError::AuthMissing));
        assert_eq!(plain.decode_datagram(&buf[..len], &mut out), Err(WireError::AuthUnsupported));
        assert!(out.is_empty());
    }

    #[test]
    fn rotation_accepts_both_keys_and_sends_with_the_first() {
        let old = NativeCodec::with_keys(vec![key(1, 1)]);
        let both = NativeCodec::with_keys(vec![key(2, 2), key(1, 1)]);
        let new = NativeCodec::with_keys(vec![key(2, 2)]);
        let mut buf = [0u8; 256];
        let mut out = Vec::new();
        let len = sealed(&old, &mut buf);
        assert!(both.decode_datagram(&buf[..len], &mut out).is_ok());
        let len = sealed(&both, &mut buf);
        assert_eq!(be32(&buf[16..20]), 2);
        assert!(new.decode_datagram(&buf[..len], &mut out).is_ok());
        assert_eq!(old.decode_datagram(&buf[..len], &mut out), Err(WireError::UnknownKey(2)));
        assert!(!format!("{:?}", key(1, 0x42)).contains("66"), "no secret in Debug");
    }

    fn encrypted_with(codec: &NativeCodec, f: &Flow, buf: &mut [u8]) -> usize {
        let hdr = DatagramHeader { flags: 0, session: 7, seq: 100 };
        encode_with(codec, &hdr, &[MessageRef::FlowUpdate(f)], buf).unwrap()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn encrypted_round_trip_hides_the_flow() {
        let codec = NativeCodec::encrypting(vec![key(5, 0xaa)], 3 << 32);
        assert_eq!(codec.header_len(), HEADER_LEN + NONCE_LEN);
        let f = tcp_flow();
        let mut buf = [0u8; 256];
        let len = encrypted_with(&codec, &f, &mut buf);
        assert_eq!(len, HEADER_LEN + NONCE_LEN + 56 + CRC_LEN + MAC_LEN);
        assert_eq!(buf[3] & (flags::AUTH | flags::ENCRYPT), flags::AUTH | flags::ENCRYPT);
        assert_eq!(be32(&buf[16..20]), 5, "key id in clear");
        let packet = Packet::new_checked(&buf[..len]).unwrap();
        assert_eq!((packet.session(), packet.seq(), packet.nonce_counter()), (7, 100, 3 << 32));
        let mut out = Vec::new();
        let hdr = codec.decode_datagram(&buf[..len], &mut out).unwrap();
        assert_eq!((hdr.session, hdr.seq), (7, 100));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].msg, Ok(Message::FlowUpdate(f.clone())));

        // In clear the addresses are there; encrypted, neither they nor
        // the clear message bytes are.
        let mut clear = [0u8; 256];
        let clen = sealed(&NativeCodec::with_keys(vec![key(5, 0xaa)]), &mut clear);
        let messages = &clear[HEADER_LEN..clen - CRC_LEN - MAC_LEN];
        let wire = &buf[HEADER_LEN + NONCE_LEN..len];
        for addr in [[10, 0, 0, 1], [192, 168, 1, 2]] {
            assert!(contains(&clear[..clen], &addr));
            assert!(!contains(&buf[..len], &addr), "{addr:?} in clear on the wire");
        }
        assert_ne!(&wire[..messages.len()], messages);
        assert!(!contains(wire, &[0x9c, 0x40]), "port 40000 in clear");
    }

    #[test]
    fn encrypted_any_flipped_bit_is_refused() {
        let codec = NativeCodec::encrypting(vec![key(5, 0xaa)], 0);
        let mut buf = [0u8; 256];
        let len = encrypted_with(&codec, &tcp_flow(), &mut buf);
        let mut out = Vec::new();
        for at in 0..len {
            for bit in [0x01, 0x80] {
                let mut b = buf;
                b[at] ^= bit;
                let got = codec.decode_datagram(&b[..len], &mut out);
                assert!(got.is_err(), "byte {at} bit {bit:#x} accepted");
                // Magic, version, flags, length and key id are refused for
                // what they say before the tag is checked; everything else
                // (session, seq, count, nonce, ciphertext, tag) by the tag.
                let early = at < 4 || field::LENGTH.contains(&at) || field::KEY_ID.contains(&at);
                if !early || (at == field::FLAGS && bit == 0x80) {
                    assert_eq!(got, Err(WireError::BadMac), "byte {at} bit {bit:#x}");
                }
            }
        }
        assert!(out.is_empty());
    }

    #[test]
    fn encrypted_with_another_key_is_refused() {
        let codec = NativeCodec::encrypting(vec![key(5, 0xaa)], 0);
        let mut buf = [0u8; 256];
        let mut out = Vec::new();
        let forger = NativeCodec::encrypting(vec![key(5, 0xbb)], 0);
        let len = encrypted_with(&forger, &tcp_flow(), &mut buf);
        assert_eq!(codec.decode_datagram(&buf[..len], &mut out), Err(WireError::BadMac));
        let other = NativeCodec::encrypting(vec![key(6, 0xaa)], 0);
        let len = encrypted_with(&other, &tcp_flow(), &mut buf);
        assert_eq!(codec.decode_datagram(&buf[..len], &mut out), Err(WireError::UnknownKey(6)));
        assert!(out.is_empty());
    }

    #[test]
    fn encryption_mismatch_is_refused_both_ways() {
        let keys = || vec![key(5, 0xaa)];
        let (enc, mac, plain) = (
            NativeCodec::encrypting(keys(), 0),
            NativeCodec::with_keys(keys()),
            NativeCodec::insecure(),
        );
        let (mut e, mut m, mut p) = ([0u8; 256], [0u8; 256], [0u8; 256]);
        let elen = encrypted_with(&enc, &tcp_flow(), &mut e);
        let mlen = encrypted_with(&mac, &tcp_flow(), &mut m);
        let plen = encrypted_with(&plain, &tcp_flow(), &mut p);
        let mut out = Vec::new();
        assert_eq!(enc.decode_datagram(&m[..mlen], &mut out), Err(WireError::NotEncrypted));
        assert_eq!(enc.decode_datagram(&p[..plen], &mut out), Err(WireError::AuthMissing));
        assert_eq!(mac.decode_datagram(&e[..elen], &mut out), Err(WireError::EncryptUnsupported));
        assert_eq!(plain.decode_datagram(&e[..elen], &mut out), Err(WireError::AuthUnsupported));
        // ENCRYPT without AUTH has no layout.
        e[3] &= !flags::AUTH;
        assert_eq!(enc.decode_datagram(&e[..elen], &mut out), Err(WireError::BadLength));
        assert!(out.is_empty());
    }

    #[test]
    fn nonce_differs_for_the_same_content_and_survives_a_rekey() {
        let mut codec = NativeCodec::encrypting(vec![key(1, 1)], 41);
        let f = tcp_flow();
        let (mut a, mut b, mut c) = ([0u8; 256], [0u8; 256], [0u8; 256]);
        let len = encrypted_with(&codec, &f, &mut a);
        encrypted_with(&codec.clone(), &f, &mut b);
        let nonce_of = |buf: &[u8]| Packet::new_checked(&buf[..len]).unwrap().nonce_counter();
        assert_eq!((nonce_of(&a), nonce_of(&b)), (41, 42), "clones share the counter");
        assert_eq!(a[..HEADER_LEN], b[..HEADER_LEN], "same header");
        assert_ne!(a[HEADER_LEN + NONCE_LEN..len], b[HEADER_LEN + NONCE_LEN..len]);
        // A rotation keeps encrypting and keeps counting.
        codec.set_auth_keys(vec![key(2, 2), key(1, 1)]);
        encrypted_with(&codec, &f, &mut c);
        assert_eq!((nonce_of(&c), be32(&c[16..20])), (43, 2));
        let mut out = Vec::new();
        let old = NativeCodec::encrypting(vec![key(1, 1)], 0);
        let new = NativeCodec::encrypting(vec![key(2, 2)], 0);
        assert_eq!(old.decode_datagram(&c[..len], &mut out), Err(WireError::UnknownKey(2)));
        assert!(codec.decode_datagram(&a[..len], &mut out).is_ok(), "old key still accepted");
        assert!(new.decode_datagram(&c[..len], &mut out).is_ok());
    }

    #[test]
    fn encrypted_crc_covers_the_plaintext_and_is_checked_after_the_tag() {
        let k = key(5, 0xaa);
        let codec = NativeCodec::encrypting(vec![k.clone()], 9);
        let mut buf = [0u8; 256];
        let len = encrypted_with(&codec, &tcp_flow(), &mut buf);
        let head = HEADER_LEN + NONCE_LEN;
        // Decrypt, check that the CRC is the plaintext's, break it, and
        // encrypt again with a valid tag: only the CRC check can refuse it.
        let sk = SealKey::derive(&k);
        let n = nonce(7, 9);
        let mut body = buf[head..len - MAC_LEN].to_vec();
        let tag = Tag::try_from(&buf[len - MAC_LEN..len]).unwrap();
        sk.cipher
            .decrypt_inout_detached(&n, &buf[..head], body.as_mut_slice().into(), &tag)
            .unwrap();
        let t = body.len() - CRC_LEN;
        let mut plain = buf[..head].to_vec();
        plain.extend_from_slice(&body[..t]);
        assert_eq!(crc32fast::hash(&plain), be32(&body[t..]));
        body[t] ^= 1;
        let tag =
            sk.cipher.encrypt_inout_detached(&n, &buf[..head], body.as_mut_slice().into()).unwrap();
        let mut b = buf;
        b[head..len - MAC_LEN].copy_from_slice(&body);
        b[len - MAC_LEN..len].copy_from_slice(&tag);
        let mut out = Vec::new();
        assert_eq!(codec.decode_datagram(&b[..len], &mut out), Err(WireError::BadCrc));
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
