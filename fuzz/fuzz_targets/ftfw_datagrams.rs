//! A sequence of datagrams (and timer ticks) into a protocol core: it must
//! never panic and its queues must stay bounded.
//!
//! The core first completes a handshake with peer session 77 (seq 1000),
//! so that the fuzzer reaches the sequencing rules. Input: chunks of
//! `[len u16 | delay u8 | bytes]`.
#![no_main]

use std::time::{Duration, Instant};

use ctsync::flow::{Flow, proto};
use ctsync::ftfw::{Ftfw, FtfwConfig, LocalChange, PeerEvent};
use ctsync::wire::{DatagramHeader, MessageRef, native};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = FtfwConfig {
        resend_queue: 64,
        max_seq_jump: 64,
        // Digests and repairs are exercised too.
        anti_entropy_interval: Duration::from_millis(500),
        ..FtfwConfig::default()
    };
    let mut now = Instant::now();
    let mut core = Ftfw::new(cfg, 1, u32::MAX - 10, now);
    let flows: Vec<Flow> = (0..20u16)
        .map(|port| Flow::new_v4(proto::UDP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), port, 53))
        .collect();
    for f in &flows {
        core.queue(LocalChange::New(f.clone()));
    }
    let mut buf = [0u8; 1472];
    let hello = [
        MessageRef::Hello { session: 77, round: 1 },
        MessageRef::HelloBack { session: 1, round: 1 },
    ];
    let hdr = DatagramHeader { flags: 0, session: 77, seq: 1000 };
    let n = native::encode(&hdr, &hello, &mut buf).expect("fits");
    core.handle_datagram(now, &buf[..n]);
    let mut rest = data;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        now += Duration::from_millis(u64::from(rest[2]) * 10);
        rest = &rest[3..];
        let chunk = &rest[..len.min(rest.len())];
        rest = &rest[chunk.len()..];
        core.handle_datagram(now, chunk);
        core.handle_timeout(now);
        let mut sent = 0;
        while core.poll_transmit(now, &mut buf).is_some() {
            sent += 1;
            assert!(sent < 10_000, "poll_transmit never ends");
        }
        while let Some(ev) = core.poll_event() {
            match ev {
                PeerEvent::BulkRequested => {
                    core.bulk_send(std::iter::empty());
                }
                PeerEvent::DigestDue => {
                    core.send_digest(now, &[7; ctsync::digest::RANGES]);
                }
                PeerEvent::Digest { digests } => {
                    let ours = ctsync::digest::Digests::default();
                    core.request_repair(ours.differing(&digests));
                }
                PeerEvent::RepairRequested { ranges } => core.repair_send(ranges, &flows),
                _ => {}
            }
        }
        assert!(core.stats().resend_queue_len <= 64);
    }
});
