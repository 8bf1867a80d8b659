//! Replays of recorded datagrams, from earlier sessions of the pair and
//! from the live one, into two native cores that authenticate with a shared
//! key: whatever is replayed, when, to which side and in which order, once
//! the replays stop and the link runs clean, each side's view must equal
//! the other's table exactly (a recorded datagram must not release data
//! the peer never got, nor undo what it has), and nothing may panic.
//!
//! The recording (three earlier sessions of each side, each with its own
//! session id and sequence numbers) is made once. Input: a sequence of
//! three-byte steps `[op | a | b]`:
//! - op % 4 == 0: deliver what both sides have to send;
//! - 1: replay recorded datagram `a << 8 | b` (modulo the recording, the
//!   live session's datagrams included) to the side it was meant for,
//!   or reflected to its sender when `op & 0x80`;
//! - 2: a change on side `a % 2` of flow `b % 32` (create or destroy);
//! - 3: `a` times 10 ms pass.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ctsync::flow::{Flow, FlowKey, proto};
use ctsync::ftfw::{Ftfw, FtfwConfig, LocalChange, PeerEvent};
use ctsync::wire::native::AuthKey;
use libfuzzer_sys::fuzz_target;

/// One datagram and the side it was delivered to.
type Recorded = (usize, Vec<u8>);

struct Side {
    core: Ftfw,
    internal: HashMap<FlowKey, Flow>,
    external: HashMap<FlowKey, (Flow, u64)>,
}

fn config() -> FtfwConfig {
    FtfwConfig {
        resend_queue: 64,
        max_seq_jump: 64,
        ack_window: 8,
        auth_keys: vec![AuthKey::new(1, b"fuzzed pair's shared key, 32 by.".to_vec())],
        ..FtfwConfig::default()
    }
}

fn flow(side: usize, port: u16) -> Flow {
    Flow::new_v4(proto::TCP, [10, side as u8, 0, 1].into(), [10, 9, 9, 9].into(), port, 80)
}

fn pair(sessions: [u32; 2], seqs: [u32; 2], now: Instant) -> [Side; 2] {
    [0, 1].map(|i| Side {
        core: Ftfw::new(config(), sessions[i], seqs[i], now),
        internal: HashMap::new(),
        external: HashMap::new(),
    })
}

/// Drain both sides once: events, then datagrams, delivered at once.
/// Returns how many datagrams went.
fn pump(sides: &mut [Side; 2], now: Instant, record: &mut Vec<Recorded>) -> usize {
    let mut buf = [0u8; 1472];
    let mut sent = 0;
    for i in 0..2 {
        while let Some(ev) = sides[i].core.poll_event() {
            let side = &mut sides[i];
            match ev {
                PeerEvent::Upsert { flow, stamp } => {
                    side.external.insert(flow.key(), (flow, stamp));
                }
                PeerEvent::Destroy { key } => {
                    side.external.remove(&key);
                }
                PeerEvent::BulkEnd { floor, .. } => side.external.retain(|_, (_, s)| *s >= floor),
                PeerEvent::BulkRequested => {
                    side.core.bulk_send(side.internal.values());
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        while let Some(n) = sides[i].core.poll_transmit(now, &mut buf) {
            out.push(buf[..n].to_vec());
            assert!(out.len() < 10_000, "poll_transmit never ends");
        }
        for bytes in out {
            sides[1 - i].core.handle_datagram(now, &bytes);
            record.push((1 - i, bytes));
            sent += 1;
        }
    }
    sent
}

/// Run a clean link for `secs` virtual seconds.
fn settle(sides: &mut [Side; 2], now: &mut Instant, secs: u64, record: &mut Vec<Recorded>) {
    let end = *now + Duration::from_secs(secs);
    while *now < end {
        *now += Duration::from_millis(50);
        for s in sides.iter_mut() {
            s.core.handle_timeout(*now);
        }
        while pump(sides, *now, record) > 0 {}
    }
}

fn apply(sides: &mut [Side; 2], i: usize, port: u16) {
    let f = flow(i, port);
    let key = f.key();
    let side = &mut sides[i];
    let change = if side.internal.remove(&key).is_some() {
        LocalChange::Destroy(key)
    } else {
        side.internal.insert(key, f.clone());
        LocalChange::New(f)
    };
    side.core.queue(change);
}

/// Three earlier sessions of the pair, each with some changes.
fn recording() -> &'static [Recorded] {
    static REC: OnceLock<Vec<Recorded>> = OnceLock::new();
    REC.get_or_init(|| {
        let mut rec = Vec::new();
        let mut now = Instant::now();
        for k in 0..3u32 {
            let mut sides = pair([10 + 2 * k, 11 + 2 * k], [k << 20, (k << 20) + 7], now);
            for port in 0..24 {
                apply(&mut sides, (port % 2) as usize, port + k as u16);
                if port % 5 == 0 {
                    settle(&mut sides, &mut now, 1, &mut rec);
                }
            }
            settle(&mut sides, &mut now, 5, &mut rec);
        }
        rec
    })
}

fuzz_target!(|data: &[u8]| {
    let earlier = recording();
    let mut now = Instant::now();
    let mut sides = pair([100, 101], [1 << 20, (1 << 20) + 3], now);
    let mut live: Vec<Recorded> = Vec::new();
    for step in data.chunks_exact(3).take(2000) {
        let (op, a, b) = (step[0], step[1], step[2]);
        match op % 4 {
            0 => {
                pump(&mut sides, now, &mut live);
            }
            1 => {
                let idx = (usize::from(a) << 8 | usize::from(b)) % (earlier.len() + live.len());
                let (to, bytes) = match idx.checked_sub(earlier.len()) {
                    Some(i) => live[i].clone(),
                    None => earlier[idx].clone(),
                };
                let to = if op & 0x80 != 0 { 1 - to } else { to };
                sides[to].core.handle_datagram(now, &bytes);
            }
            2 => apply(&mut sides, usize::from(a % 2), u16::from(b % 32)),
            _ => {
                now += Duration::from_millis(u64::from(a) * 10);
                for s in sides.iter_mut() {
                    s.core.handle_timeout(now);
                }
            }
        }
        let stats = sides[0].core.stats();
        assert!(stats.resend_queue_len <= 64, "{stats:?}");
    }
    // The replays stop: a clean link for peer_timeout and more.
    settle(&mut sides, &mut now, 10, &mut live);
    for i in 0..2 {
        let (viewer, table) = (&sides[i].external, &sides[1 - i].internal);
        let view: HashMap<&FlowKey, &Flow> = viewer.iter().map(|(k, (f, _))| (k, f)).collect();
        let want: HashMap<&FlowKey, &Flow> = table.iter().collect();
        assert_eq!(view, want, "side {i}'s view of its peer's table");
        assert!(sides[i].core.is_synced(), "side {i} not synced: {:?}", sides[i].core.stats());
    }
});
