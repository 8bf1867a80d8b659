//! The datagram and message views: checked once by `new_checked`, then
//! read through accessors that cannot panic, and the iterators over the
//! messages of a datagram and the attributes of a message body.

use hmac::Mac;

use super::{
    ATTR_HEADER_LEN, AuthKey, CRC_LEN, HEADER_LEN, MAC_LEN, MAGIC, MSG_HEADER_LEN, NONCE_LEN,
    VERSION, be16, be32, field, flags,
};
use crate::wire::{DatagramHeader, WireError};

/// A view of a whole datagram.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    pub(super) buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap without checking; accessors may panic on short buffers.
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wrap and check magic, version, flags and length, so that no accessor
    /// can panic. The CRC is checked separately by [`Packet::check_crc`].
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// The checks of [`Packet::new_checked`].
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        if buf.len() < HEADER_LEN + CRC_LEN {
            return Err(WireError::Truncated);
        }
        if self.magic() != MAGIC {
            return Err(WireError::BadMagic);
        }
        if self.version() != VERSION {
            return Err(WireError::BadVersion(self.version()));
        }
        let len = usize::from(self.length());
        if len > buf.len() {
            return Err(WireError::Truncated);
        }
        // ENCRYPT without AUTH has no defined layout: its trailer is a tag.
        if self.is_encrypted() && !self.is_authenticated() {
            return Err(WireError::BadLength);
        }
        if len != buf.len() || len < self.messages_start() + self.trailer_len() {
            return Err(WireError::BadLength);
        }
        Ok(())
    }

    /// True when the AUTH flag is set.
    pub fn is_authenticated(&self) -> bool {
        self.flags() & flags::AUTH != 0
    }

    /// True when the ENCRYPT flag is set.
    pub fn is_encrypted(&self) -> bool {
        self.flags() & flags::ENCRYPT != 0
    }

    /// Where the messages (or their ciphertext) begin.
    pub fn messages_start(&self) -> usize {
        if self.is_encrypted() { field::MESSAGES + NONCE_LEN } else { field::MESSAGES }
    }

    /// Bytes after the messages: the CRC, and the MAC when authenticated.
    pub fn trailer_len(&self) -> usize {
        if self.is_authenticated() { CRC_LEN + MAC_LEN } else { CRC_LEN }
    }

    /// Verify the CRC32 trailer.
    pub fn check_crc(&self) -> Result<(), WireError> {
        if self.crc() == self.computed_crc() { Ok(()) } else { Err(WireError::BadCrc) }
    }

    /// Magic number.
    pub fn magic(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::MAGIC])
    }
    /// Format version.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }
    /// Flag bits, see [`flags`].
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    /// Sender session id.
    pub fn session(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::SESSION])
    }
    /// Seq of the first sequenced message, or the sender's next seq.
    pub fn seq(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::SEQ])
    }
    /// Length of the datagram including the CRC.
    pub fn length(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::LENGTH])
    }
    /// Number of messages.
    pub fn count(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::COUNT])
    }
    /// Authentication key id (0 when not authenticated).
    pub fn key_id(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::KEY_ID])
    }
    /// The sender's datagram counter of an encrypted datagram (0 when
    /// not encrypted).
    pub fn nonce_counter(&self) -> u64 {
        if !self.is_encrypted() {
            return 0;
        }
        let b = &self.buffer.as_ref()[field::MESSAGES..field::MESSAGES + NONCE_LEN];
        u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }
    /// The messages; for an encrypted datagram, their ciphertext.
    pub fn payload(&self) -> &[u8] {
        let end = usize::from(self.length()) - self.trailer_len();
        &self.buffer.as_ref()[self.messages_start()..end]
    }
    /// The CRC trailer as received (encrypted in an encrypted datagram).
    pub fn crc(&self) -> u32 {
        let end = usize::from(self.length()) - self.trailer_len() + CRC_LEN;
        be32(&self.buffer.as_ref()[end - CRC_LEN..end])
    }
    /// The CRC32 of everything before the trailer, as received (for an
    /// encrypted datagram the CRC covers the plaintext instead).
    pub fn computed_crc(&self) -> u32 {
        let end = usize::from(self.length()) - self.trailer_len();
        crc32fast::hash(&self.buffer.as_ref()[..end])
    }
    /// Iterate over the messages.
    pub fn messages(&self) -> MessageIter<'_> {
        MessageIter { rest: self.payload() }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Write the header fields, the CRC and, with a `key`, the MAC. `len`
    /// is the total length, trailers included.
    pub fn fill(&mut self, hdr: &DatagramHeader, count: u16, len: u16, key: Option<&AuthKey>) {
        let auth = if key.is_some() { flags::AUTH } else { 0 };
        self.fill_header(hdr, auth, count, len, key.map_or(0, |k| k.id));
        let buf = self.buffer.as_mut();
        let len = usize::from(len);
        let mac_len = if key.is_some() { MAC_LEN } else { 0 };
        let end = len - mac_len - CRC_LEN;
        let crc = crc32fast::hash(&buf[..end]);
        buf[end..end + CRC_LEN].copy_from_slice(&crc.to_be_bytes());
        if let Some(key) = key {
            let mut mac = key.mac();
            mac.update(&buf[..len - MAC_LEN]);
            let tag = mac.finalize().into_bytes();
            buf[len - MAC_LEN..len].copy_from_slice(&tag[..MAC_LEN]);
        }
    }

    pub(super) fn fill_header(
        &mut self,
        hdr: &DatagramHeader,
        auth: u8,
        count: u16,
        len: u16,
        key_id: u32,
    ) {
        let buf = self.buffer.as_mut();
        buf[field::MAGIC].copy_from_slice(&MAGIC.to_be_bytes());
        buf[field::VERSION] = VERSION;
        buf[field::FLAGS] = (hdr.flags & !(flags::AUTH | flags::ENCRYPT)) | auth;
        buf[field::SESSION].copy_from_slice(&hdr.session.to_be_bytes());
        buf[field::SEQ].copy_from_slice(&hdr.seq.to_be_bytes());
        buf[field::LENGTH].copy_from_slice(&len.to_be_bytes());
        buf[field::COUNT].copy_from_slice(&count.to_be_bytes());
        buf[field::KEY_ID].copy_from_slice(&key_id.to_be_bytes());
    }
}

/// A view of one message.
#[derive(Debug, Clone, Copy)]
pub struct MessagePacket<'a> {
    buffer: &'a [u8],
}

impl<'a> MessagePacket<'a> {
    /// Check the header and length; the view covers exactly the message.
    pub fn new_checked(buffer: &'a [u8]) -> Result<MessagePacket<'a>, WireError> {
        if buffer.len() < MSG_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = usize::from(be16(&buffer[field::MSG_LENGTH]));
        if len < MSG_HEADER_LEN {
            return Err(WireError::BadLength);
        }
        let buffer = buffer.get(..len).ok_or(WireError::Truncated)?;
        Ok(MessagePacket { buffer })
    }
    /// Message type, see [`msg_type`](super::msg_type).
    pub fn msg_type(&self) -> u8 {
        self.buffer[field::MSG_TYPE]
    }
    /// Message flags (none defined; must be zero, ignored on receipt).
    pub fn flags(&self) -> u8 {
        self.buffer[field::MSG_FLAGS]
    }
    /// Total length, header included.
    pub fn len(&self) -> usize {
        self.buffer.len()
    }
    /// True when the body is empty.
    pub fn is_empty(&self) -> bool {
        self.buffer.len() == MSG_HEADER_LEN
    }
    /// The body.
    pub fn body(&self) -> &'a [u8] {
        &self.buffer[MSG_HEADER_LEN..]
    }
}

/// Iterator over the messages of a payload; stops after the first framing
/// error (the rest of the datagram cannot be delimited).
#[derive(Debug, Clone)]
pub struct MessageIter<'a> {
    pub(super) rest: &'a [u8],
}

impl<'a> Iterator for MessageIter<'a> {
    type Item = Result<MessagePacket<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match MessagePacket::new_checked(self.rest) {
            Ok(m) => {
                self.rest = &self.rest[m.len()..];
                Some(Ok(m))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// Iterator over TLV attributes: `(type, value)`; stops after an error.
#[derive(Debug, Clone)]
pub struct AttrIter<'a> {
    rest: &'a [u8],
}

impl<'a> AttrIter<'a> {
    /// Attributes of a message body.
    pub fn new(body: &'a [u8]) -> AttrIter<'a> {
        AttrIter { rest: body }
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = Result<(u16, &'a [u8]), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = (|| {
            let hdr = self.rest.get(..ATTR_HEADER_LEN).ok_or(WireError::Truncated)?;
            let kind = be16(&hdr[0..2]);
            let len = usize::from(be16(&hdr[2..4]));
            let value = self
                .rest
                .get(ATTR_HEADER_LEN..ATTR_HEADER_LEN + len)
                .ok_or(WireError::Truncated)?;
            Ok((kind, value, ATTR_HEADER_LEN + len))
        })();
        match item {
            Ok((kind, value, used)) => {
                self.rest = &self.rest[used..];
                Some(Ok((kind, value)))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}
