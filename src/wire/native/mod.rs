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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, Tag};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

mod packet;

use packet::nonce;
pub use packet::{AttrIter, MessageIter, MessagePacket, Packet};

use super::{Codec, DatagramHeader, Message, MessageRef, Received, WireError, Writer};
use crate::expect::{ExpNat, Expectation};
use crate::flow::{Addrs, EntryId, Flow, FlowExtra, FlowKey, SeqAdj, TcpInfo};

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

const CORE_TAIL: usize = 24;
const CORE_V4_LEN: usize = 16 + CORE_TAIL;
const CORE_V6_LEN: usize = 64 + CORE_TAIL;
const KEY_V4_LEN: usize = 16;
const KEY_V6_LEN: usize = 40;
/// DIGEST body before the digests: oldest, ranges, first, count, reserved.
const DIGEST_HEAD: usize = 12;
/// Most ranges a REPAIR_REQUEST or REPAIR_END bitmap can name here.
const MAX_RANGES: u16 = 128;

/// Largest flow attribute list ([`flow_attrs`]): CORE_V6, TCP and every
/// optional attribute with the longest helper name.
pub const MAX_FLOW_ATTRS: usize =
    8 * ATTR_HEADER_LEN + CORE_V6_LEN + 4 + 16 + MAX_HELPER_LEN + 24 + 8 + 9 + 4;
/// Largest key attribute ([`key_attr`]).
pub const MAX_KEY_ATTR: usize = ATTR_HEADER_LEN + KEY_V6_LEN;

/// DIGEST bytes besides the digests (message header and fixed fields).
pub const DIGEST_OVERHEAD: usize = MSG_HEADER_LEN + DIGEST_HEAD;

/// The attributes of `f` exactly as FLOW_UPDATE carries them, written into
/// `buf`. Anti-entropy hashes these bytes, so that a flow and the copy a
/// peer decoded from them always hash alike.
pub fn flow_attrs<'b>(f: &Flow, buf: &'b mut [u8; MAX_FLOW_ATTRS]) -> &'b [u8] {
    let len = flow_len(f).min(MAX_FLOW_ATTRS);
    let mut w = Writer { buf: &mut buf[..len], at: 0 };
    emit_flow(f, &mut w);
    let end = w.at;
    &buf[..end]
}

/// The key attribute of `k` as FLOW_DESTROY carries it.
pub fn key_attr<'b>(k: &FlowKey, buf: &'b mut [u8; MAX_KEY_ATTR]) -> &'b [u8] {
    let len = ATTR_HEADER_LEN + if k.is_ipv6() { KEY_V6_LEN } else { KEY_V4_LEN };
    let mut w = Writer { buf: &mut buf[..len], at: 0 };
    emit_key(k, &mut w);
    let end = w.at;
    &buf[..end]
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
        MessageRef::ResyncRequest | MessageRef::Alive => {}
    }
    debug_assert_eq!(w.at, len);
    Ok(len)
}

/// Bytes the attributes of a flow take.
fn flow_len(f: &Flow) -> usize {
    let core = if f.is_ipv6() { CORE_V6_LEN } else { CORE_V4_LEN };
    let mut len = ATTR_HEADER_LEN + core;
    if f.tcp != TcpInfo::default() {
        len += ATTR_HEADER_LEN + 4;
    }
    if let Some(e) = f.extra() {
        let a = ATTR_HEADER_LEN;
        len += e.labels.map_or(0, |_| a + 16)
            + e.helper.as_ref().map_or(0, |h| a + helper_bytes(h).len())
            + e.seq_adj.map_or(0, |_| a + 24)
            + e.sctp_vtags.map_or(0, |_| a + 8)
            + e.dccp.map_or(0, |_| a + 9)
            + e.tuple_zones.map_or(0, |_| a + 4);
    }
    len
}

/// This format's attribute layout on the shared [`Writer`].
impl Writer<'_> {
    fn tlv(&mut self, kind: u16, len: usize) {
        self.u16(kind);
        // Attribute values are at most MAX_HELPER_LEN or 88 bytes.
        self.u16(len as u16);
    }
}

fn emit_flow(f: &Flow, w: &mut Writer<'_>) {
    match &f.addrs {
        Addrs::V4(a) => {
            w.tlv(attr::CORE_V4, CORE_V4_LEN);
            for ip in a {
                w.bytes(&ip.octets());
            }
        }
        Addrs::V6(a) => {
            w.tlv(attr::CORE_V6, CORE_V6_LEN);
            for ip in a.iter() {
                w.bytes(&ip.octets());
            }
        }
    }
    for p in f.l4 {
        w.u16(p);
    }
    w.u8(f.l4proto);
    w.u8(f.proto_state);
    w.u16(f.zone);
    w.u32(f.status);
    w.u32(f.timeout);
    w.u32(f.mark);
    if f.tcp != TcpInfo::default() {
        w.tlv(attr::TCP, 4);
        w.bytes(&[f.tcp.wscale_orig, f.tcp.wscale_reply, f.tcp.flags_orig, f.tcp.flags_reply]);
    }
    let Some(e) = f.extra() else { return };
    if let Some(l) = e.labels {
        w.tlv(attr::LABELS, 16);
        w.bytes(&l.to_be_bytes());
    }
    if let Some(h) = &e.helper {
        let name = helper_bytes(h);
        w.tlv(attr::HELPER, name.len());
        w.bytes(name);
    }
    if let Some(adj) = e.seq_adj {
        w.tlv(attr::SEQ_ADJ, 24);
        for a in adj {
            w.u32(a.correction_pos);
            w.u32(a.offset_before);
            w.u32(a.offset_after);
        }
    }
    if let Some([o, r]) = e.sctp_vtags {
        w.tlv(attr::SCTP_VTAGS, 8);
        w.u32(o);
        w.u32(r);
    }
    if let Some((role, seq)) = e.dccp {
        w.tlv(attr::DCCP, 9);
        w.u8(role);
        w.bytes(&seq.to_be_bytes());
    }
    if let Some([o, r]) = e.tuple_zones {
        w.tlv(attr::TUPLE_ZONES, 4);
        w.u16(o);
        w.u16(r);
    }
}

fn emit_key(k: &FlowKey, w: &mut Writer<'_>) {
    emit_key_as(k, [attr::KEY_V4, attr::KEY_V6], w)
}

/// A key in the layout of KEY_V4 / KEY_V6 under the attribute types
/// `kinds` (IPv4, IPv6).
fn emit_key_as(k: &FlowKey, kinds: [u16; 2], w: &mut Writer<'_>) {
    match (k.src, k.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            w.tlv(kinds[0], KEY_V4_LEN);
            w.bytes(&s.octets());
            w.bytes(&d.octets());
        }
        (s, d) => {
            w.tlv(kinds[1], KEY_V6_LEN);
            w.bytes(&v6(s).octets());
            w.bytes(&v6(d).octets());
        }
    }
    w.u16(k.l4[0]);
    w.u16(k.l4[1]);
    w.u8(k.l4proto);
    w.u8(0);
    w.u16(k.zone);
}

pub(super) fn parse_flow(body: &[u8]) -> Result<Flow, WireError> {
    let mut flow: Option<Flow> = None;
    let mut extra = FlowExtra::default();
    let mut tcp = TcpInfo::default();
    for a in AttrIter::new(body) {
        let (kind, v) = a?;
        let want =
            |n: usize| if v.len() == n { Ok(()) } else { Err(WireError::BadAttribute(kind)) };
        match kind {
            attr::CORE_V4 | attr::CORE_V6 => {
                if flow.is_some() {
                    return Err(WireError::BadMessage);
                }
                let (addrs, tail) = if kind == attr::CORE_V4 {
                    want(CORE_V4_LEN)?;
                    let ip = |i: usize| Ipv4Addr::from(be32(&v[i * 4..i * 4 + 4]));
                    (Addrs::V4([ip(0), ip(1), ip(2), ip(3)]), &v[16..])
                } else {
                    want(CORE_V6_LEN)?;
                    let ip = |i: usize| Ipv6Addr::from(be128(&v[i * 16..i * 16 + 16]));
                    (Addrs::V6(Box::new([ip(0), ip(1), ip(2), ip(3)])), &v[64..])
                };
                flow = Some(Flow {
                    addrs,
                    l4: [
                        be16(&tail[0..2]),
                        be16(&tail[2..4]),
                        be16(&tail[4..6]),
                        be16(&tail[6..8]),
                    ],
                    l4proto: tail[8],
                    proto_state: tail[9],
                    zone: be16(&tail[10..12]),
                    status: be32(&tail[12..16]),
                    timeout: be32(&tail[16..20]),
                    mark: be32(&tail[20..24]),
                    tcp: TcpInfo::default(),
                    entry_id: EntryId::default(),
                    extra: None,
                });
            }
            attr::TCP => {
                want(4)?;
                tcp = TcpInfo {
                    wscale_orig: v[0],
                    wscale_reply: v[1],
                    flags_orig: v[2],
                    flags_reply: v[3],
                };
            }
            attr::LABELS => {
                want(16)?;
                extra.labels = Some(be128(v));
            }
            attr::HELPER => {
                if v.len() > MAX_HELPER_LEN {
                    return Err(WireError::BadAttribute(kind));
                }
                let name = std::str::from_utf8(v).map_err(|_| WireError::BadMessage)?;
                extra.helper = Some(name.into());
            }
            attr::SEQ_ADJ => {
                want(24)?;
                let adj = |o: usize| SeqAdj {
                    correction_pos: be32(&v[o..o + 4]),
                    offset_before: be32(&v[o + 4..o + 8]),
                    offset_after: be32(&v[o + 8..o + 12]),
                };
                extra.seq_adj = Some([adj(0), adj(12)]);
            }
            attr::SCTP_VTAGS => {
                want(8)?;
                extra.sctp_vtags = Some([be32(&v[0..4]), be32(&v[4..8])]);
            }
            attr::DCCP => {
                want(9)?;
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&v[1..9]);
                extra.dccp = Some((v[0], u64::from_be_bytes(seq)));
            }
            attr::TUPLE_ZONES => {
                want(4)?;
                extra.tuple_zones = Some([be16(&v[0..2]), be16(&v[2..4])]);
            }
            // A newer peer's attribute: skipped, not fatal.
            _ => {}
        }
    }
    let mut flow = flow.ok_or(WireError::BadMessage)?;
    flow.tcp = tcp;
    flow.extra = Some(Box::new(extra));
    flow.normalize();
    Ok(flow)
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

pub(super) fn parse_key(body: &[u8]) -> Result<FlowKey, WireError> {
    parse_key_as(body, [attr::KEY_V4, attr::KEY_V6])
}

/// The one key of `body` under the attribute types `kinds` (IPv4, IPv6);
/// other attributes are skipped.
fn parse_key_as(body: &[u8], kinds: [u16; 2]) -> Result<FlowKey, WireError> {
    let mut key = None;
    for a in AttrIter::new(body) {
        let (kind, v) = a?;
        let Some(key_value) = key_value(kind, v, kinds)? else { continue };
        if key.is_some() {
            return Err(WireError::BadMessage);
        }
        key = Some(key_value);
    }
    key.ok_or(WireError::BadMessage)
}

/// Decode `v` as a key when `kind` is one of `kinds` (IPv4, IPv6).
fn key_value(kind: u16, v: &[u8], kinds: [u16; 2]) -> Result<Option<FlowKey>, WireError> {
    {
        let (src, dst, tail) = match kind {
            k if k == kinds[0] => {
                if v.len() != KEY_V4_LEN {
                    return Err(WireError::BadAttribute(kind));
                }
                let s = IpAddr::V4(be32(&v[0..4]).into());
                (s, IpAddr::V4(be32(&v[4..8]).into()), &v[8..])
            }
            k if k == kinds[1] => {
                if v.len() != KEY_V6_LEN {
                    return Err(WireError::BadAttribute(kind));
                }
                let s = IpAddr::V6(be128(&v[0..16]).into());
                (s, IpAddr::V6(be128(&v[16..32]).into()), &v[32..])
            }
            _ => return Ok(None),
        };
        Ok(Some(FlowKey {
            src,
            dst,
            l4: [be16(&tail[0..2]), be16(&tail[2..4])],
            l4proto: tail[4],
            zone: be16(&tail[6..8]),
        }))
    }
}

const EXP_MASTER_KINDS: [u16; 2] = [attr::EXP_MASTER_V4, attr::EXP_MASTER_V6];
const EXP_TUPLE_KINDS: [u16; 2] = [attr::EXP_TUPLE_V4, attr::EXP_TUPLE_V6];
const EXP_CORE_TAIL: usize = 2 + 2 + 12;
const EXP_NAT_TAIL: usize = 4 + 2 + 2;

fn key_len(k: &FlowKey) -> usize {
    ATTR_HEADER_LEN + if k.is_ipv6() { KEY_V6_LEN } else { KEY_V4_LEN }
}

fn addr_len(a: IpAddr) -> usize {
    if a.is_ipv6() { 16 } else { 4 }
}

fn addr_bytes(a: IpAddr, w: &mut Writer<'_>) {
    match a {
        IpAddr::V4(a) => w.bytes(&a.octets()),
        IpAddr::V6(a) => w.bytes(&a.octets()),
    }
}

/// Bytes the attributes of an expectation take.
fn exp_len(e: &Expectation) -> usize {
    let a = ATTR_HEADER_LEN;
    key_len(&e.master)
        + key_len(&e.tuple)
        + a
        + addr_len(e.mask_src)
        + EXP_CORE_TAIL
        + if e.helper.is_empty() { 0 } else { a + helper_bytes(&e.helper).len() }
        + e.nat.map_or(0, |n| a + addr_len(n.addr) + EXP_NAT_TAIL)
        + e.expectfn.as_ref().map_or(0, |f| a + helper_bytes(f).len())
}

fn emit_exp(e: &Expectation, w: &mut Writer<'_>) {
    emit_key_as(&e.master, EXP_MASTER_KINDS, w);
    emit_key_as(&e.tuple, EXP_TUPLE_KINDS, w);
    let core = if e.mask_src.is_ipv6() { attr::EXP_CORE_V6 } else { attr::EXP_CORE_V4 };
    w.tlv(core, addr_len(e.mask_src) + EXP_CORE_TAIL);
    addr_bytes(e.mask_src, w);
    w.u16(e.mask_sport);
    w.u16(0);
    w.u32(e.timeout);
    w.u32(e.flags);
    w.u32(e.class);
    if !e.helper.is_empty() {
        let name = helper_bytes(&e.helper);
        w.tlv(attr::EXP_HELPER, name.len());
        w.bytes(name);
    }
    if let Some(nat) = e.nat {
        let kind = if nat.addr.is_ipv6() { attr::EXP_NAT_V6 } else { attr::EXP_NAT_V4 };
        w.tlv(kind, addr_len(nat.addr) + EXP_NAT_TAIL);
        w.u32(nat.dir);
        addr_bytes(nat.addr, w);
        w.u16(nat.port);
        w.u16(0);
    }
    if let Some(f) = &e.expectfn {
        let name = helper_bytes(f);
        w.tlv(attr::EXP_FN, name.len());
        w.bytes(name);
    }
}

pub(super) fn parse_exp(body: &[u8]) -> Result<Expectation, WireError> {
    let mut master = None;
    let mut tuple = None;
    let mut core = None;
    let mut helper: Box<str> = "".into();
    let mut nat = None;
    let mut expectfn = None;
    let addr = |v: &[u8]| -> IpAddr {
        if v.len() == 16 { IpAddr::V6(be128(v).into()) } else { IpAddr::V4(be32(v).into()) }
    };
    let name = |kind: u16, v: &[u8]| -> Result<Box<str>, WireError> {
        if v.len() > MAX_HELPER_LEN {
            return Err(WireError::BadAttribute(kind));
        }
        std::str::from_utf8(v).map(Into::into).map_err(|_| WireError::BadMessage)
    };
    for a in AttrIter::new(body) {
        let (kind, v) = a?;
        let once = |slot: bool| if slot { Err(WireError::BadMessage) } else { Ok(()) };
        match kind {
            attr::EXP_MASTER_V4 | attr::EXP_MASTER_V6 => {
                once(master.is_some())?;
                master = key_value(kind, v, EXP_MASTER_KINDS)?;
            }
            attr::EXP_TUPLE_V4 | attr::EXP_TUPLE_V6 => {
                once(tuple.is_some())?;
                tuple = key_value(kind, v, EXP_TUPLE_KINDS)?;
            }
            attr::EXP_CORE_V4 | attr::EXP_CORE_V6 => {
                once(core.is_some())?;
                let n = if kind == attr::EXP_CORE_V6 { 16 } else { 4 };
                if v.len() != n + EXP_CORE_TAIL {
                    return Err(WireError::BadAttribute(kind));
                }
                let t = &v[n..];
                core = Some((
                    addr(&v[..n]),
                    be16(&t[0..2]),
                    be32(&t[4..8]),
                    be32(&t[8..12]),
                    be32(&t[12..16]),
                ));
            }
            attr::EXP_HELPER => helper = name(kind, v)?,
            attr::EXP_FN => expectfn = Some(name(kind, v)?),
            attr::EXP_NAT_V4 | attr::EXP_NAT_V6 => {
                let n = if kind == attr::EXP_NAT_V6 { 16 } else { 4 };
                if v.len() != n + EXP_NAT_TAIL {
                    return Err(WireError::BadAttribute(kind));
                }
                nat = Some(ExpNat {
                    dir: be32(&v[0..4]),
                    addr: addr(&v[4..4 + n]),
                    port: be16(&v[4 + n..6 + n]),
                });
            }
            // A newer peer's attribute: skipped, not fatal.
            _ => {}
        }
    }
    let (Some(master), Some(tuple), Some((mask_src, mask_sport, timeout, flags, class))) =
        (master, tuple, core)
    else {
        return Err(WireError::BadMessage);
    };
    if master.is_ipv6() != tuple.is_ipv6() || mask_src.is_ipv6() != tuple.is_ipv6() {
        return Err(WireError::BadMessage);
    }
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

/// The helper name as sent: longer names are cut at a char boundary
/// rather than refused (kernel helper names are at most 16 bytes).
fn helper_bytes(h: &str) -> &[u8] {
    let mut n = h.len().min(MAX_HELPER_LEN);
    while !h.is_char_boundary(n) {
        n -= 1;
    }
    &h.as_bytes()[..n]
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
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
    use crate::flow::{proto, status, tcp_state};

    fn tcp_flow() -> Flow {
        let mut f =
            Flow::new_v4(proto::TCP, [10, 0, 0, 1].into(), [192, 168, 1, 2].into(), 40000, 443);
        f.proto_state = tcp_state::ESTABLISHED;
        f.status |= status::SEEN_REPLY | status::ASSURED;
        f.timeout = 431999;
        f.mark = 7;
        f.tcp = TcpInfo { wscale_orig: 7, wscale_reply: 8, flags_orig: 0x23, flags_reply: 0x03 };
        f
    }

    fn full_v6_flow() -> Flow {
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

    fn roundtrip(msgs: &[Message]) -> Vec<Message> {
        let hdr = DatagramHeader { flags: 0, session: 0x1122_3344, seq: u32::MAX };
        let refs: Vec<_> = msgs.iter().map(Message::as_ref).collect();
        let mut buf = [0u8; 2048];
        let len = encode(&hdr, &refs, &mut buf).unwrap();
        let mut out = Vec::new();
        assert_eq!(decode(&buf[..len], &mut out).unwrap(), hdr);
        out.into_iter().map(|r| r.msg.unwrap()).collect()
    }

    #[test]
    fn expectation_messages_round_trip_and_keep_their_slot() {
        // docs/PROTOCOL.md, "Expectation messages".
        let v4 = crate::expect::tests::ftp_pasv();
        let mut v6 = v4.clone();
        let a = |n: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n));
        (v6.master.src, v6.master.dst, v6.tuple.src, v6.tuple.dst) = (a(1), a(2), a(1), a(2));
        v6.mask_src = IpAddr::V6(Ipv6Addr::from(u128::MAX));
        v6.nat = Some(ExpNat { dir: 1, addr: a(9), port: 2121 });
        v6.expectfn = Some("nat-follow-master".into());
        let msgs = vec![
            Message::ExpNew(Box::new(v4.clone())),
            Message::ExpNew(Box::new(v6.clone())),
            Message::ExpDestroy(Box::new(v4.clone())),
            Message::ExpDestroy(Box::new(v6.clone())),
        ];
        assert_eq!(roundtrip(&msgs), msgs);
        assert!(msgs.iter().all(Message::is_sequenced));
        // An EXP_NEW without its core attribute is refused, alone.
        let mut buf = [0u8; 256];
        let n = emit_message(&MessageRef::FlowDestroy(&v4.key()), &mut buf).unwrap();
        buf[0] = msg_type::EXP_NEW;
        let view = MessagePacket::new_checked(&buf[..n]).unwrap();
        assert_eq!(view.parse(), Err(WireError::BadMessage));
    }

    #[test]
    fn ipv4_tcp_flow_fixture() {
        let f = tcp_flow();
        let mut buf = [0u8; 128];
        let len = emit_message(&MessageRef::FlowUpdate(&f), &mut buf).unwrap();
        #[rustfmt::skip]
        let want: &[u8] = &[
            2, 0, 0, 56,                    // FLOW_UPDATE, flags, length 56
            0, 1, 0, 40,                    // CORE_V4, 40 bytes
            10, 0, 0, 1, 192, 168, 1, 2,    // orig src, dst
            192, 168, 1, 2, 10, 0, 0, 1,    // reply src, dst
            0x9c, 0x40, 0x01, 0xbb, 0x01, 0xbb, 0x9c, 0x40, // ports
            6, 3, 0, 0,                     // tcp, ESTABLISHED, zone 0
            0, 0, 0, 0x0e,                  // status
            0, 0x06, 0x97, 0x7f,            // timeout 431999
            0, 0, 0, 7,                     // mark
            0, 3, 0, 4, 7, 8, 0x23, 0x03,   // TCP info
        ];
        assert_eq!(&buf[..len], want);
        assert!(len <= 64, "common flows must stay compact");
        let parsed = MessagePacket::new_checked(&buf[..len]).unwrap().parse().unwrap();
        assert_eq!(parsed, Message::FlowUpdate(f));
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

    #[test]
    fn unknown_attribute_is_skipped_and_wrong_length_is_refused() {
        let f = tcp_flow();
        let mut buf = [0u8; 128];
        let len = emit_message(&MessageRef::FlowUpdate(&f), &mut buf).unwrap();
        // Append an unknown attribute 999 with 3 bytes.
        buf[len..len + 7].copy_from_slice(&[0x03, 0xe7, 0, 3, 1, 2, 3]);
        let new_len = (len + 7) as u16;
        buf[2..4].copy_from_slice(&new_len.to_be_bytes());
        let m = MessagePacket::new_checked(&buf[..len + 7]).unwrap();
        assert_eq!(m.parse().unwrap(), Message::FlowUpdate(f));
        // TCP attribute declared 3 bytes long.
        let mut bad = buf;
        bad[51] = 3;
        bad[2..4].copy_from_slice(&((len - 1) as u16).to_be_bytes());
        let m = MessagePacket::new_checked(&bad[..len - 1]).unwrap();
        assert_eq!(m.parse(), Err(WireError::BadAttribute(attr::TCP)));
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

    #[test]
    fn many_flows_fit_one_datagram() {
        let f = tcp_flow();
        let per = message_len(&MessageRef::FlowUpdate(&f));
        assert!((DEFAULT_MAX_DATAGRAM - HEADER_LEN - CRC_LEN) / per >= 25);
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
            let _ = parse_flow(&bytes);
            let _ = parse_key(&bytes);
        }
    }
}
