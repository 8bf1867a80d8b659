//! Throughput of the native codec and of the FTFW core.
//!
//! `cargo run --release --example proto_bench [flows]`
//!
//! 1. Encode + decode of flow messages on one core (datagrams of up to
//!    1472 bytes, IPv4 TCP flows).
//! 2. End to end: two cores joined in memory, one sends `flows` new flows to
//!    the other, at 0 % and 10 % loss, and as a bulk (`-B`) at 0 % loss;
//!    flows delivered per second of CPU (both cores on this one thread,
//!    codec included).
//! 3. What anti-entropy digests add to a cache change: `flows` inserts and
//!    as many changes into a cache, with and without digests.

mod common;

use hashbrown::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use common::flow;
use ctsync::flow::{Flow, FlowKey};
use ctsync::ftfw::{Ftfw, FtfwConfig, LocalChange, PeerEvent};
use ctsync::wire::native;
use ctsync::wire::{DatagramHeader, MessageRef};

fn codec_bench() {
    let flows: Vec<Flow> = (0..4096).map(flow).collect();
    let per = native::message_len(&MessageRef::FlowUpdate(&flows[0]));
    let per_datagram = (native::DEFAULT_MAX_DATAGRAM - native::HEADER_LEN - native::CRC_LEN) / per;
    let mut buf = [0u8; 1472];
    let mut out = Vec::with_capacity(per_datagram);
    let hdr = DatagramHeader { flags: 0, session: 1, seq: 1 };
    let mut done = 0u64;
    let start = Instant::now();
    let mut i = 0usize;
    while start.elapsed() < Duration::from_secs(2) {
        for _ in 0..100 {
            let refs: Vec<MessageRef<'_>> = (0..per_datagram)
                .map(|k| MessageRef::FlowUpdate(&flows[(i + k) % flows.len()]))
                .collect();
            i += per_datagram;
            let n = native::encode(&hdr, &refs, &mut buf).expect("fits");
            out.clear();
            native::decode(black_box(&buf[..n]), &mut out).expect("decodes");
            done += out.len() as u64;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "codec: {per} bytes per IPv4 TCP flow message, {per_datagram} per datagram; \
         encode+decode {:.2} M flow messages/s ({:.0} MB/s of datagrams)",
        done as f64 / secs / 1e6,
        done as f64 * per as f64 / secs / 1e6
    );
}

fn end_to_end(n: u32, loss_percent: u64, bulk: bool) {
    let cfg = FtfwConfig::default();
    let t0 = Instant::now();
    let mut now = t0;
    let mut a = Ftfw::new(cfg.clone(), 1, 1000, now);
    let mut b = Ftfw::new(cfg, 2, 7000, now);
    let mut external: HashMap<FlowKey, Flow, foldhash::fast::FixedState> = HashMap::default();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut lose = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % 100 < loss_percent
    };
    let mut buf = [0u8; 1472];
    let mut wire: Vec<(bool, Vec<u8>)> = Vec::new();
    let table: Vec<Flow> = if bulk { (0..n).map(flow).collect() } else { Vec::new() };
    let cpu = Instant::now();
    if bulk {
        a.bulk_send(&table);
    } else {
        for i in 0..n {
            a.queue(LocalChange::New(flow(i)));
        }
    }
    let mut rounds = 0u64;
    loop {
        rounds += 1;
        for (to_b, core) in [(true, &mut a), (false, &mut b)] {
            while let Some(len) = core.poll_transmit(now, &mut buf) {
                if !lose() {
                    wire.push((to_b, buf[..len].to_vec()));
                }
            }
        }
        for (to_b, bytes) in wire.drain(..) {
            let core = if to_b { &mut b } else { &mut a };
            assert_eq!(core.handle_datagram(now, &bytes), None, "a datagram was refused");
        }
        while let Some(ev) = b.poll_event() {
            if let PeerEvent::Upsert { flow, .. } = ev {
                external.insert(flow.key(), flow);
            }
        }
        while a.poll_event().is_some() {}
        if external.len() == n as usize
            && a.stats().tx_queue_len == 0
            && a.stats().resend_queue_len == 0
        {
            break;
        }
        // A virtual millisecond per round: timers (keepalive probes) fire.
        now += Duration::from_millis(1);
        a.handle_timeout(now);
        b.handle_timeout(now);
        assert!(now - t0 < Duration::from_secs(3600), "no convergence");
    }
    let secs = cpu.elapsed().as_secs_f64();
    let s = a.stats();
    println!(
        "end to end{}, {loss_percent:>2} % loss: {n} flows in {secs:.3} s CPU = {:.2} M flows/s \
         ({} datagrams, {} resent, {} virtual ms)",
        if bulk { " (bulk)" } else { "" },
        f64::from(n) / secs / 1e6,
        s.datagrams_sent,
        s.resent,
        rounds
    );
}

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(500_000);
    println!("$ cargo run --release --example proto_bench {n}");
    if std::env::args().nth(2).as_deref() != Some("e2e") {
        codec_bench();
    }
    end_to_end(n, 0, false);
    end_to_end(n, 10, false);
    end_to_end(n, 0, true);
    digest_cost(n);
}

fn digest_cost(n: u32) {
    let flows: Vec<Flow> = (0..n).map(flow).collect();
    let t = Instant::now();
    let mut sum = 0u64;
    for f in &flows {
        sum = sum.wrapping_add(ctsync::digest::flow_hash(f));
    }
    let hash = t.elapsed();
    let t = Instant::now();
    for f in &flows {
        sum = sum.wrapping_add(ctsync::digest::range_of(&f.key()) as u64);
    }
    let range = t.elapsed();
    black_box(sum);
    println!(
        "digest hash of a flow: {:.0} ns, its range: {:.0} ns (a change costs two hashes and a range, an insert or removal one of each)",
        hash.as_nanos() as f64 / f64::from(n),
        range.as_nanos() as f64 / f64::from(n)
    );
    for digests in [false, true] {
        let mut cache = ctsync::cache::Cache::new(n as usize);
        if digests {
            cache.enable_digests();
        }
        let t = Instant::now();
        for i in 0..n {
            cache.upsert(flow(i), 0);
        }
        let insert = t.elapsed();
        let t = Instant::now();
        for i in 0..n {
            let mut f = flow(i);
            f.mark = 1;
            cache.upsert(f, 1);
        }
        let change = t.elapsed();
        black_box(cache.digests());
        println!(
            "cache, digests {}: {:.0} ns per insert, {:.0} ns per change",
            if digests { "on " } else { "off" },
            insert.as_nanos() as f64 / f64::from(n),
            change.as_nanos() as f64 / f64::from(n)
        );
    }
}
