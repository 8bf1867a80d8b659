//! The native decoder on arbitrary bytes: it must never panic, and what it
//! accepts must re-encode to a datagram that decodes to the same messages,
//! in clear and encrypted.
#![no_main]

use ctsync::wire::native::{self, AuthKey, NativeCodec};
use ctsync::wire::{Message, MessageRef};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
    // The fuzzer seldom makes the length field equal the input's length:
    // a copy with magic, version and length made right reaches the flags,
    // the encrypted layout and the messages behind them.
    if let Ok(len) = u16::try_from(data.len())
        && data.len() >= native::HEADER_LEN
    {
        let mut fixed = data.to_vec();
        fixed[..3].copy_from_slice(b"CT\x01");
        fixed[12..14].copy_from_slice(&len.to_be_bytes());
        check(&fixed);
    }
});

fn check(data: &[u8]) {
    // The encrypted path (flags, nonce, tag, decryption) on the same
    // bytes; in fuzzing builds a tag that does not verify lets the bytes
    // through as they are, so this reaches the parsers too.
    let sealed = NativeCodec::encrypting(vec![AuthKey::new(1, vec![0x5c; 32])], 1 << 32);
    let _ = sealed.decode_datagram(data, &mut Vec::new());

    let mut out = Vec::new();
    let Ok(hdr) = native::decode(data, &mut out) else { return };
    let msgs: Vec<Message> = out.into_iter().filter_map(|r| r.msg.ok()).collect();
    let refs: Vec<MessageRef<'_>> = msgs.iter().map(Message::as_ref).collect();
    let mut buf = vec![0u8; 65536];
    for mut codec in [NativeCodec::insecure(), sealed] {
        let Ok(n) = native::encode_with(&mut codec, &hdr, &refs, &mut buf) else { return };
        let mut again = Vec::new();
        let hdr2 =
            codec.decode_datagram(&buf[..n], &mut again).expect("re-encoded datagram decodes");
        assert_eq!(hdr.session, hdr2.session);
        let again: Vec<Message> =
            again.into_iter().map(|r| r.msg.expect("re-encoded message")).collect();
        assert_eq!(msgs, again);
    }
}
