//! Any bytes a `recvmsg` on the NFQUEUE socket could return, and any packet
//! headers: decoding must never panic, and every flow found (from the
//! conntrack entry or the headers) must survive a create/parse round trip.
#![no_main]

use ctsync::netlink::convert::{AttrWriter, EmitOptions, emit_create, parse_flow};
use ctsync::netlink::queue::{decode_packets, flow_of_headers};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    decode_packets(data, &mut out);
    let _ = flow_of_headers(data);
    let mut buf = Vec::new();
    for flow in out.iter().flat_map(|p| p.flow.iter().chain(p.headers.iter())) {
        buf.clear();
        emit_create(&mut AttrWriter::new(&mut buf), flow, &EmitOptions::default());
        let again = parse_flow(&buf).expect("our own create bytes parse");
        assert_eq!(again.key(), flow.key());
    }
});
