//! Authentication and encryption of native datagrams: the HMAC-SHA256
//! trailer under an [`AuthKey`], and ChaCha20-Poly1305 under the
//! [`SealKey`] derived from it (see `docs/SECURITY.md`).

use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, Nonce, Tag};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{CRC_LEN, MAC_LEN, NONCE_LEN, Packet, field, flags};
use crate::wire::{DatagramHeader, WireError};

/// A shared secret that authenticates datagrams, named by `id` on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey {
    /// The key id carried in the header.
    pub id: u32,
    key: Vec<u8>,
}

impl AuthKey {
    /// A key; the configuration refuses keys shorter than
    /// [`MIN_KEY_LEN`](super::MIN_KEY_LEN).
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

impl<T: AsRef<[u8]>> Packet<T> {
    /// Verify the MAC trailer with the key the key id names, in constant
    /// time. Nothing else of the datagram should be trusted before this.
    pub fn check_mac(&self, keys: &[AuthKey]) -> Result<(), WireError> {
        if !self.is_authenticated() {
            return Err(WireError::AuthMissing);
        }
        let id = self.key_id();
        let key = keys.iter().find(|k| k.id == id).ok_or(WireError::UnknownKey(id))?;
        let len = usize::from(self.length());
        let buf = self.buffer.as_ref();
        let mut mac = key.mac();
        mac.update(&buf[..len - MAC_LEN]);
        mac.verify_truncated_left(&buf[len - MAC_LEN..len]).map_err(|_| WireError::BadMac)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Write an encrypted datagram around the plaintext messages at
    /// `[HEADER_LEN + NONCE_LEN, len - CRC_LEN - MAC_LEN)`: the header
    /// and `counter`, the CRC of that plaintext datagram, then encrypt the
    /// messages and the CRC in place with the header and counter as
    /// associated data, and append the tag.
    pub fn seal(
        &mut self,
        hdr: &DatagramHeader,
        count: u16,
        len: u16,
        key: &SealKey,
        counter: u64,
    ) -> Result<(), WireError> {
        self.fill_header(hdr, flags::AUTH | flags::ENCRYPT, count, len, key.id);
        let buf = self.buffer.as_mut();
        let len = usize::from(len);
        let head = field::MESSAGES + NONCE_LEN;
        buf[field::MESSAGES..head].copy_from_slice(&counter.to_be_bytes());
        let end = len - MAC_LEN - CRC_LEN;
        let crc = crc32fast::hash(&buf[..end]);
        buf[end..end + CRC_LEN].copy_from_slice(&crc.to_be_bytes());
        let (aad, rest) = buf[..len].split_at_mut(head);
        let (body, tag_out) = rest.split_at_mut(len - head - MAC_LEN);
        let tag = key
            .cipher
            .encrypt_inout_detached(&nonce(hdr.session, counter), aad, body.into())
            .map_err(|_| WireError::BufferTooSmall)?;
        tag_out.copy_from_slice(&tag);
        Ok(())
    }
}

/// The AEAD nonce of a datagram: the sender's session id, then its
/// datagram counter (docs/SECURITY.md, "Encryption", says why it never
/// repeats under one key).
pub(super) fn nonce(session: u32, counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&session.to_be_bytes());
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::from(n)
}

/// The sending side's encryption state. Not `Clone`: two copies would
/// number datagrams alike and repeat nonces under one key.
#[derive(Debug)]
pub(super) struct Encryption {
    keys: Box<[SealKey]>,
    /// The next datagram's nonce counter. A key reload keeps it, so that
    /// one sender never takes a value twice.
    next_counter: u64,
}

impl Encryption {
    pub(super) fn new(keys: &[AuthKey], next_counter: u64) -> Encryption {
        Encryption { keys: keys.iter().map(SealKey::derive).collect(), next_counter }
    }

    /// The same counter under other keys (a rotation).
    pub(super) fn rekeyed(self, keys: &[AuthKey]) -> Encryption {
        Encryption::new(keys, self.next_counter)
    }

    /// The key that seals the next datagram and that datagram's nonce
    /// counter, which this takes.
    pub(super) fn next_seal(&mut self) -> Option<(&SealKey, u64)> {
        let key = self.keys.first()?;
        let counter = self.next_counter;
        self.next_counter = counter.wrapping_add(1);
        Some((key, counter))
    }

    /// Verify the tag, then decrypt: the datagram without its tag, in
    /// clear. In fuzzing builds a datagram whose tag does not verify is
    /// taken as it is, so that the fuzzer reaches the parsers (and what
    /// the codec encrypted still decrypts, for round trips).
    #[allow(unexpected_cfgs)]
    pub(super) fn open(&self, packet: &Packet<&[u8]>) -> Result<Vec<u8>, WireError> {
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

#[cfg(test)]
pub(super) mod tests {
    use super::super::tests::tcp_flow;
    use super::*;
    use crate::flow::Flow;
    use crate::wire::native::{
        CRC_LEN, HEADER_LEN, MIN_KEY_LEN, NativeCodec, be32, emit_message, encode_with,
    };
    use crate::wire::{Codec, Message, MessageRef};

    pub(in crate::wire::native) fn key(id: u32, byte: u8) -> AuthKey {
        AuthKey::new(id, vec![byte; MIN_KEY_LEN])
    }

    fn sealed(codec: &mut NativeCodec, buf: &mut [u8]) -> usize {
        let hdr = DatagramHeader { flags: 0, session: 7, seq: 100 };
        let f = tcp_flow();
        let at =
            HEADER_LEN + emit_message(&MessageRef::FlowUpdate(&f), &mut buf[HEADER_LEN..]).unwrap();
        codec.finish(&hdr, 1, at, buf).unwrap()
    }

    #[test]
    fn mac_good_bad_unknown_key_and_missing() {
        let mut codec = NativeCodec::with_keys(vec![key(5, 0xaa)]);
        let mut buf = [0u8; 256];
        let len = sealed(&mut codec, &mut buf);
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
        let mut forger = NativeCodec::with_keys(vec![key(5, 0xbb)]);
        let mut fb = [0u8; 256];
        let flen = sealed(&mut forger, &mut fb);
        assert_eq!(Packet::new_checked(&fb[..flen]).unwrap().check_crc(), Ok(()));
        assert_eq!(codec.decode_datagram(&fb[..flen], &mut out), Err(WireError::BadMac));
        // Another key id.
        let mut other = NativeCodec::with_keys(vec![key(6, 0xaa)]);
        sealed(&mut other, &mut fb);
        assert_eq!(codec.decode_datagram(&fb[..len], &mut out), Err(WireError::UnknownKey(6)));
        // No MAC at all, where one is required; and a MAC where none is configured.
        let mut plain = NativeCodec::insecure();
        let plen = sealed(&mut plain, &mut fb);
        assert_eq!(codec.decode_datagram(&fb[..plen], &mut out), Err(WireError::AuthMissing));
        assert_eq!(plain.decode_datagram(&buf[..len], &mut out), Err(WireError::AuthUnsupported));
        assert!(out.is_empty());
    }

    #[test]
    fn rotation_accepts_both_keys_and_sends_with_the_first() {
        let mut old = NativeCodec::with_keys(vec![key(1, 1)]);
        let mut both = NativeCodec::with_keys(vec![key(2, 2), key(1, 1)]);
        let new = NativeCodec::with_keys(vec![key(2, 2)]);
        let mut buf = [0u8; 256];
        let mut out = Vec::new();
        let len = sealed(&mut old, &mut buf);
        assert!(both.decode_datagram(&buf[..len], &mut out).is_ok());
        let len = sealed(&mut both, &mut buf);
        assert_eq!(be32(&buf[16..20]), 2);
        assert!(new.decode_datagram(&buf[..len], &mut out).is_ok());
        assert_eq!(old.decode_datagram(&buf[..len], &mut out), Err(WireError::UnknownKey(2)));
        assert!(!format!("{:?}", key(1, 0x42)).contains("66"), "no secret in Debug");
    }

    fn encrypted_with(codec: &mut NativeCodec, f: &Flow, buf: &mut [u8]) -> usize {
        let hdr = DatagramHeader { flags: 0, session: 7, seq: 100 };
        encode_with(codec, &hdr, &[MessageRef::FlowUpdate(f)], buf).unwrap()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn encrypted_round_trip_hides_the_flow() {
        let mut codec = NativeCodec::encrypting(vec![key(5, 0xaa)], 3 << 32);
        assert_eq!(codec.header_len(), HEADER_LEN + NONCE_LEN);
        let f = tcp_flow();
        let mut buf = [0u8; 256];
        let len = encrypted_with(&mut codec, &f, &mut buf);
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
        let clen = sealed(&mut NativeCodec::with_keys(vec![key(5, 0xaa)]), &mut clear);
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
        let mut codec = NativeCodec::encrypting(vec![key(5, 0xaa)], 0);
        let mut buf = [0u8; 256];
        let len = encrypted_with(&mut codec, &tcp_flow(), &mut buf);
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
        let mut forger = NativeCodec::encrypting(vec![key(5, 0xbb)], 0);
        let len = encrypted_with(&mut forger, &tcp_flow(), &mut buf);
        assert_eq!(codec.decode_datagram(&buf[..len], &mut out), Err(WireError::BadMac));
        let mut other = NativeCodec::encrypting(vec![key(6, 0xaa)], 0);
        let len = encrypted_with(&mut other, &tcp_flow(), &mut buf);
        assert_eq!(codec.decode_datagram(&buf[..len], &mut out), Err(WireError::UnknownKey(6)));
        assert!(out.is_empty());
    }

    #[test]
    fn encryption_mismatch_is_refused_both_ways() {
        let keys = || vec![key(5, 0xaa)];
        let (mut enc, mut mac, mut plain) = (
            NativeCodec::encrypting(keys(), 0),
            NativeCodec::with_keys(keys()),
            NativeCodec::insecure(),
        );
        let (mut e, mut m, mut p) = ([0u8; 256], [0u8; 256], [0u8; 256]);
        let elen = encrypted_with(&mut enc, &tcp_flow(), &mut e);
        let mlen = encrypted_with(&mut mac, &tcp_flow(), &mut m);
        let plen = encrypted_with(&mut plain, &tcp_flow(), &mut p);
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
        let len = encrypted_with(&mut codec, &f, &mut a);
        encrypted_with(&mut codec, &f, &mut b);
        let nonce_of = |buf: &[u8]| Packet::new_checked(&buf[..len]).unwrap().nonce_counter();
        assert_eq!((nonce_of(&a), nonce_of(&b)), (41, 42), "each datagram takes the next counter");
        assert_eq!(a[..HEADER_LEN], b[..HEADER_LEN], "same header");
        assert_ne!(a[HEADER_LEN + NONCE_LEN..len], b[HEADER_LEN + NONCE_LEN..len]);
        // A rotation keeps encrypting and keeps counting.
        codec.set_auth_keys(vec![key(2, 2), key(1, 1)]);
        encrypted_with(&mut codec, &f, &mut c);
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
        let mut codec = NativeCodec::encrypting(vec![k.clone()], 9);
        let mut buf = [0u8; 256];
        let len = encrypted_with(&mut codec, &tcp_flow(), &mut buf);
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
}
