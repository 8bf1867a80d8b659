//! A sequence of datagrams (and timer ticks) into a protocol core speaking
//! conntrackd's dialect, which authenticates nothing: whatever arrives, it
//! must never panic, `poll_transmit` must end, and its queues must stay
//! bounded.
//!
//! The core first hears a HELLO_BACK from the peer (seq 1000), so that the
//! fuzzer reaches the sequencing, re-basing and healing rules. Input:
//! chunks of `[len u16 | delay u8 | bytes]`; the delay is in units of
//! 50 ms, so that half the peer timeout passes within a few chunks.
#![no_main]

use std::time::{Duration, Instant};

use ctsync::flow::{Flow, proto};
use ctsync::ftfw::{Dialect, Ftfw, FtfwConfig, LocalChange, PeerEvent};
use ctsync::wire::{MessageRef, conntrackd};
use libfuzzer_sys::fuzz_target;

const RESEND_QUEUE: usize = 64;

fuzz_target!(|data: &[u8]| {
    let cfg = FtfwConfig {
        dialect: Dialect::Conntrackd,
        resend_queue: RESEND_QUEUE,
        max_seq_jump: 64,
        ack_window: 8,
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
    let n = conntrackd::emit_message(&MessageRef::Alive, 1000, &mut buf).expect("fits");
    buf[1] |= conntrackd::flags::HELLO_BACK;
    core.handle_datagram(now, &buf[..n]);
    let mut rest = data;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        now += Duration::from_millis(u64::from(rest[2]) * 50);
        rest = &rest[3..];
        let chunk = &rest[..len.min(rest.len())];
        rest = &rest[chunk.len()..];
        core.handle_datagram(now, chunk);
        core.handle_timeout(now);
        // Drain as the daemon does: events first, then datagrams.
        while let Some(ev) = core.poll_event() {
            if ev == PeerEvent::BulkRequested {
                core.bulk_send(&flows);
            }
        }
        let mut sent = 0;
        while core.poll_transmit(now, &mut buf).is_some() {
            sent += 1;
            assert!(sent < 10_000, "poll_transmit never ends");
        }
        let stats = core.stats();
        // Keepalives, ACKs and NACKs take seqs in this dialect even when
        // data waits for ACKs; the queue is given up at twice its size.
        assert!(stats.resend_queue_len <= 2 * RESEND_QUEUE as u64, "{stats:?}");
        // Every local change and bulk entry is for one of the 20 flows.
        assert!(stats.tx_queue_len <= 64, "{stats:?}");
    }
});
