//! The native decoder on arbitrary bytes: it must never panic, and what it
//! accepts must re-encode to a datagram that decodes to the same messages.
#![no_main]

use ctsync::wire::native;
use ctsync::wire::{Message, MessageRef};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let Ok(hdr) = native::decode(data, &mut out) else { return };
    let msgs: Vec<Message> = out.into_iter().filter_map(|r| r.msg.ok()).collect();
    let refs: Vec<MessageRef<'_>> = msgs.iter().map(Message::as_ref).collect();
    let mut buf = vec![0u8; 65536];
    let Ok(n) = native::encode(&hdr, &refs, &mut buf) else { return };
    let mut again = Vec::new();
    let hdr2 = native::decode(&buf[..n], &mut again).expect("re-encoded datagram decodes");
    assert_eq!(hdr.session, hdr2.session);
    let again: Vec<Message> =
        again.into_iter().map(|r| r.msg.expect("re-encoded message")).collect();
    assert_eq!(msgs, again);
});
