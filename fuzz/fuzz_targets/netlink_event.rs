//! Any bytes a `recvmsg` on the event socket could return: decoding must
//! never panic, and every decoded flow or expectation must survive a
//! create/parse round trip without panicking either.
#![no_main]

use ctsync::netlink::convert::{AttrWriter, EmitOptions, emit_create, emit_update, parse_flow};
use ctsync::netlink::expect::{emit_expect_create, parse_expectation};
use ctsync::netlink::{CtEvent, decode_events};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let stats = decode_events(data, &mut out);
    assert_eq!(stats.events, out.len());
    let mut buf = Vec::new();
    for item in &out {
        if let CtEvent::ExpNew(exp) | CtEvent::ExpDestroy(exp) = &item.event {
            buf.clear();
            emit_expect_create(&mut AttrWriter::new(&mut buf), exp);
            let again = parse_expectation(&buf).expect("our own create bytes parse");
            assert_eq!(again.key(), exp.key());
            continue;
        }
        let (CtEvent::New(flow) | CtEvent::Update(flow) | CtEvent::Destroy(flow)) = &item.event
        else {
            continue;
        };
        buf.clear();
        emit_create(&mut AttrWriter::new(&mut buf), flow, &EmitOptions::default());
        let again = parse_flow(&buf).expect("our own create bytes parse");
        assert_eq!(again.key(), flow.key());
        buf.clear();
        emit_update(&mut AttrWriter::new(&mut buf), flow, &EmitOptions::default());
        let _ = parse_flow(&buf);
    }
    // The attribute decoder alone, on the raw bytes.
    let _ = parse_flow(data);
    let _ = parse_expectation(data);
});
