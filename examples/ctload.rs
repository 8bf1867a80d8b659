//! Load tool: creates, updates or destroys synthetic flows in the current
//! network namespace's conntrack table through batched ctnetlink, at a paced
//! rate or as fast as the kernel allows, and reports the rate achieved.
//!
//! ```text
//! ip netns exec NS ctload create|update|destroy COUNT [--start N] [--rate PER_SEC] [--batch N]
//! ip netns exec NS ctload events COUNT [--start N] [--batch N]
//! ```
//! Flow `i` is TCP ESTABLISHED `10.(i>>16).(i>>8).(i) :(1024 + i % 60000) → 198.51.100.7:443`;
//! every tenth flow is source-NATed to 203.0.113.5 (203.0.114.5 past 600k, ...). `update` changes the
//! mark, so each update is a real change that a sync daemon must carry.
//!
//! `events` measures the kernel's event delivery with nobody else in the
//! way: it subscribes to conntrack events with a receive buffer that holds
//! them all, creates COUNT flows without reading, then times reading the
//! queued events (read, not decoded) and reports the rate.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ctsync::flow::{Dir, Flow, proto, status, tcp_state};
use ctsync::netlink::{CommitOptions, EventConfig, EventSocket, Kernel};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: ctload create|update|destroy|events COUNT [--start N] [--rate PER_SEC] [--batch N] [--mark M]";
    let (Some(op), Some(count)) = (args.first(), args.get(1).and_then(|c| c.parse::<u32>().ok()))
    else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let opt = |name: &str| -> Option<u64> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    let start = opt("--start").unwrap_or(0) as u32;
    let rate = opt("--rate");
    let batch = opt("--batch").unwrap_or(2000).max(1) as u32;
    let mark = opt("--mark").unwrap_or(1) as u32;
    let mut kernel = match Kernel::open() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("ctload: cannot open ctnetlink: {e} (run as root)");
            std::process::exit(1);
        }
    };
    // Opened before the creates so that their events queue in it: about
    // 1 KiB of buffer each, up to the kernel's limit on a socket buffer.
    let mut events = (op == "events").then(|| {
        let rcvbuf = (count as usize).saturating_mul(2048).clamp(8 << 20, 1 << 30);
        EventSocket::open(&EventConfig { rcvbuf, ..EventConfig::default() }).unwrap_or_else(|e| {
            eprintln!("ctload: cannot subscribe to conntrack events: {e} (run as root)");
            std::process::exit(1);
        })
    });
    let began = Instant::now();
    let (mut done, mut failed) = (0u64, 0u64);
    let mut i = start;
    while i < start + count {
        let end = (i + batch).min(start + count);
        let flows: Vec<Flow> = (i..end).map(|n| flow(n, mark)).collect();
        let result = match op.as_str() {
            "create" | "update" | "events" => kernel.commit(
                flows.iter(),
                &CommitOptions { timeout: None, be_liberal: false, create_only: false },
            ),
            "destroy" => {
                let keys: Vec<_> = flows.iter().map(Flow::key).collect();
                kernel.delete(keys.iter())
            }
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        };
        match result {
            Ok(report) => {
                failed += report.failed.len() as u64;
                done += (flows.len() - report.failed.len()) as u64;
            }
            Err(e) => {
                eprintln!("ctload: {op} failed: {e}");
                std::process::exit(1);
            }
        }
        i = end;
        if let Some(rate) = rate.filter(|&r| r > 0) {
            // Pace against the start, not per batch, so rounding does not add up.
            let due = began + Duration::from_secs_f64(f64::from(i - start) / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    if let Some(socket) = events.as_mut() {
        // Every event is queued now: one message each, read until empty.
        let began = Instant::now();
        let read = socket.discard_queued().unwrap_or_else(|e| {
            eprintln!("ctload: {e}");
            std::process::exit(1);
        });
        let secs = began.elapsed().as_secs_f64();
        let overruns = socket.stats().overruns;
        println!(
            "events: {read} events of {done} creates read in {secs:.3} s = {:.0} events/s \
             ({overruns} overruns, {failed} failed)",
            read as f64 / secs.max(1e-9)
        );
        if overruns > 0 || failed > 0 {
            std::process::exit(1);
        }
        return;
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "{op}: {done} flows in {secs:.3} s = {:.0} flows/s ({failed} failed)",
        done as f64 / secs.max(1e-9)
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Synthetic flow number `n`.
pub fn flow(n: u32, mark: u32) -> Flow {
    let mut f = Flow::new_v4(
        proto::TCP,
        Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff)),
        Ipv4Addr::new(198, 51, 100, 7),
        (1024 + n % 60000) as u16,
        443,
    );
    f.proto_state = tcp_state::ESTABLISHED;
    f.status = status::CONFIRMED | status::SEEN_REPLY | status::ASSURED;
    f.timeout = 600;
    f.mark = mark;
    if n.is_multiple_of(10) {
        // One NAT address per 600k flows keeps every reply tuple unique.
        let nat = Ipv4Addr::new(203, 0, 113 + (n / 600_000) as u8, 5);
        f.set_addrs(Dir::Reply, Ipv4Addr::new(198, 51, 100, 7).into(), nat.into());
        f.l4[3] = 1024 + (n / 10 % 60000) as u16;
    }
    f
}
