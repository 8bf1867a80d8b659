//! [`NativeCodec`], the native format behind the protocol core's
//! [`Codec`] trait, and the one-call [`encode`] and [`decode`] functions
//! for tests, tools and fuzzing.

use super::auth::Encryption;
use super::{
    AuthKey, CRC_LEN, HEADER_LEN, MAC_LEN, MessageIter, NONCE_LEN, Packet, be32, emit_message,
    message_len, msg_type,
};
use crate::wire::{Codec, DatagramHeader, MessageRef, Received, WireError};

/// The native codec, for the protocol core. With keys, every datagram sent
/// is authenticated with the first and every datagram received must be
/// authenticated with one of them; without, authenticated datagrams are
/// refused (the peers' configurations disagree). An encrypting codec
/// also encrypts what it sends and refuses datagrams that are not
/// encrypted, and the other way round.
///
/// Not `Clone`: an encrypting codec numbers the datagrams it sends, and a
/// copy would number them again.
#[derive(Debug, Default)]
pub struct NativeCodec {
    keys: Option<Box<[AuthKey]>>,
    encryption: Option<Encryption>,
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
        codec.encryption = codec.keys.as_deref().map(|keys| Encryption::new(keys, first_counter));
        codec
    }

    /// Replace the authentication keys (a key rotation): the first signs
    /// (and encrypts) what is sent, every one is accepted. An encrypting
    /// codec keeps encrypting and keeps its nonce counter, which must
    /// never restart under a key it already used. An empty list turns
    /// authentication off, as in [`NativeCodec::with_keys`].
    pub fn set_auth_keys(&mut self, keys: Vec<AuthKey>) {
        let encryption = self.encryption.take();
        *self = NativeCodec::with_keys(keys);
        if let (Some(encryption), Some(keys)) = (encryption, self.keys.as_deref()) {
            self.encryption = Some(encryption.rekeyed(keys));
        }
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
        &mut self,
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
        let send_key = self.keys.as_deref().and_then(|k| k.first());
        match self.encryption.as_mut().and_then(Encryption::next_seal) {
            Some((key, counter)) => packet.seal(hdr, count, len16, key, counter)?,
            None => packet.fill(hdr, count, len16, send_key),
        }
        Ok(len)
    }

    fn decode(&self, bytes: &[u8], out: &mut Vec<Received>) -> Result<DatagramHeader, WireError> {
        self.decode_datagram(bytes, out)
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
    encode_with(&mut NativeCodec::insecure(), hdr, msgs, buf)
}

/// As [`encode`], authenticated (and encrypted) as `codec` does.
pub fn encode_with(
    codec: &mut NativeCodec,
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
