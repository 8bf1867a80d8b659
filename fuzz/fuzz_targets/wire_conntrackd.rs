//! The conntrackd decoder on arbitrary bytes: it must never panic, and each
//! message it parses must re-encode (with its own sequence number) to bytes
//! that parse to the same message.
#![no_main]

use ctsync::wire::Message;
use ctsync::wire::conntrackd;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    if conntrackd::decode(data, &mut out).is_err() {
        return;
    }
    let mut buf = vec![0u8; 65536];
    for r in out {
        let (Ok(msg), Some(hdr)) = (r.msg, r.header) else { continue };
        let Ok(n) = conntrackd::emit_message(&msg.as_ref(), hdr.seq, &mut buf) else { continue };
        let mut again = Vec::new();
        conntrackd::decode(&buf[..n], &mut again).expect("re-encoded message decodes");
        let again: Vec<Message> =
            again.into_iter().map(|r| r.msg.expect("re-encoded message parses")).collect();
        assert_eq!(again, vec![msg]);
    }
});
