//! What authentication and encryption cost per datagram and per flow.
//!
//! `cargo run --release --example aead_bench [seconds per case]`
//!
//! For each protection of the native format (CRC only, HMAC-SHA256 as
//! with `sync.auth.key_file`, ChaCha20-Poly1305 as with
//! `sync.auth.encrypt`), builds datagrams the way the protocol core does
//! (emit the messages, then `Codec::finish`) and decodes them the way a
//! peer does, on one core: a full datagram of IPv4 TCP flow updates (the
//! bulk and busy case), a datagram of one flow, and a keepalive. Prints
//! nanoseconds per datagram to build (emit + CRC, MAC or encryption) and
//! to decode (checks, decryption and parsing), and their sum per flow.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::flow;
use ctsync::flow::Flow;
use ctsync::wire::native::{self, AuthKey, NativeCodec};
use ctsync::wire::{Codec, DatagramHeader, MessageRef};

/// Build `msgs` into `buf` as the core does; the datagram's length.
fn build(codec: &mut NativeCodec, msgs: &[MessageRef<'_>], seq: u32, buf: &mut [u8]) -> usize {
    let mut at = codec.header_len();
    for m in msgs {
        at += codec.emit_message(m, seq, &mut buf[at..]).expect("fits");
    }
    let hdr = DatagramHeader { flags: 0, session: 0x1234_5678, seq };
    codec.finish(&hdr, msgs.len() as u16, at, buf).expect("fits")
}

/// Nanoseconds per call of `f`, run for about `budget`.
fn time(budget: Duration, mut f: impl FnMut(u32)) -> f64 {
    let mut calls = 0u64;
    let start = Instant::now();
    while start.elapsed() < budget {
        for _ in 0..256 {
            f(calls as u32);
            calls += 1;
        }
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1.0);
    let budget = Duration::from_secs_f64(secs);
    let key = || vec![AuthKey::new(1, vec![0x5c; native::MIN_KEY_LEN])];
    let mut codecs = [
        ("crc only", NativeCodec::insecure()),
        ("hmac-sha256", NativeCodec::with_keys(key())),
        ("chacha20-poly1305", NativeCodec::encrypting(key(), 1 << 32)),
    ];
    let flows: Vec<Flow> = (0..64).map(flow).collect();
    let per = native::message_len(&MessageRef::FlowUpdate(&flows[0]));
    // The fewest flows any of the three fits into a full datagram, so
    // that every row carries the same messages.
    let room = native::DEFAULT_MAX_DATAGRAM
        - native::HEADER_LEN
        - native::NONCE_LEN
        - native::CRC_LEN
        - native::MAC_LEN;
    let full: Vec<MessageRef<'_>> =
        flows[..room / per].iter().map(MessageRef::FlowUpdate).collect();
    let one = [MessageRef::FlowUpdate(&flows[0])];
    let alive = [MessageRef::Alive];
    let cases: [(&str, &[MessageRef<'_>]); 3] =
        [("full datagram", &full), ("one flow", &one), ("keepalive", &alive)];
    println!(
        "{:<18} {:<14} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "protection", "datagram", "flows", "bytes", "build ns", "decode ns", "ns/flow", "vs crc"
    );
    for (case, msgs) in cases {
        let flows_in = msgs.iter().filter(|m| matches!(m, MessageRef::FlowUpdate(_))).count();
        let mut base = None;
        for (name, codec) in &mut codecs {
            let mut buf = [0u8; native::DEFAULT_MAX_DATAGRAM];
            let mut out = Vec::with_capacity(msgs.len());
            let build_ns = time(budget, |i| {
                black_box(build(codec, msgs, i, &mut buf));
            });
            let n = build(codec, msgs, 1, &mut buf);
            let check_ns = time(budget, |_| {
                out.clear();
                codec.decode_datagram(black_box(&buf[..n]), &mut out).expect("decodes");
            });
            let total = build_ns + check_ns;
            let base = *base.get_or_insert(total);
            let per_flow =
                if flows_in > 0 { format!("{:.0}", total / flows_in as f64) } else { "-".into() };
            println!(
                "{name:<18} {case:<14} {flows_in:>6} {n:>6} {build_ns:>10.0} {check_ns:>10.0} {per_flow:>10} {:>9.2}x",
                total / base
            );
        }
    }
}
