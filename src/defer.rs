//! Deferred packets (`sync.defer`, OpenBSD pfsync's `defer`): a packet the
//! ruleset queues (the first packet of a flow, a SYN-ACK) is held until the
//! peer has acknowledged the state of its flow as of that packet, or until
//! a timeout; then it is accepted. Never dropped.
//!
//! The reactor sends each held packet's flow state to the peer itself, from
//! the conntrack entry the queue delivers: the kernel reports a new flow
//! only when the entry is confirmed, after the last hook, so waiting for
//! that event would wait for the packet's own release
//! (docs/active-active.md, "Deferred packets").
//!
//! A held packet waits for a *barrier*: the FTFW sequence number after the
//! message that carries its flow. It is known once the transmit queue has
//! been drained after the flow was queued; the packet is released when the
//! peer has acknowledged every message before the barrier. After a loss,
//! the protocol sends the lost changes again with new sequence numbers, so
//! every barrier is taken again. This table does no I/O and reads no
//! clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::ftfw::Seq;

/// Counters of deferral, as `-s` and the metrics show them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeferStats {
    /// Gauge: packets held now.
    pub held: u64,
    /// Packets released because the peer acknowledged their flow.
    pub released_by_ack: u64,
    /// Packets released by `sync.defer.timeout` (the peer was slow, lost
    /// the message, or the flow is not replicated).
    pub timeouts: u64,
    /// Packets accepted at once: the table held `max_held` already.
    pub overflow: u64,
    /// Packets accepted at once: no peer to wait for (down, or not yet
    /// synced).
    pub peer_down: u64,
    /// Packets accepted at once: no conntrack entry, or one the filter
    /// does not replicate.
    pub not_replicated: u64,
    /// Hold time of released packets: median, 99th percentile and maximum,
    /// in microseconds (from a log-scale histogram since start, so the
    /// percentiles are upper bounds within a factor of 1.19).
    pub hold_p50_us: u64,
    pub hold_p99_us: u64,
    pub hold_max_us: u64,
}

/// Why a packet was not held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    Overflow,
    PeerDown,
    NotReplicated,
}

struct Held {
    id: u32,
    since: Instant,
    barrier: Option<Seq>,
}

/// The held packets, oldest first.
pub struct Deferral {
    timeout: Duration,
    max_held: usize,
    held: VecDeque<Held>,
    hist: Histogram,
    stats: DeferStats,
}

impl Deferral {
    pub fn new(timeout: Duration, max_held: usize) -> Deferral {
        Deferral {
            timeout,
            max_held: max_held.max(1),
            held: VecDeque::new(),
            hist: Histogram::default(),
            stats: DeferStats::default(),
        }
    }

    /// Hold packet `id`, queued at `now`. False when it must be accepted at
    /// once (the table is full).
    pub fn hold(&mut self, id: u32, now: Instant) -> bool {
        if self.held.len() >= self.max_held {
            self.skip(Skip::Overflow);
            return false;
        }
        self.held.push_back(Held { id, since: now, barrier: None });
        true
    }

    /// Count a packet accepted without holding it.
    pub fn skip(&mut self, why: Skip) {
        match why {
            Skip::Overflow => self.stats.overflow += 1,
            Skip::PeerDown => self.stats.peer_down += 1,
            Skip::NotReplicated => self.stats.not_replicated += 1,
        }
    }

    /// True when some held packet still needs its barrier.
    pub fn needs_barrier(&self) -> bool {
        self.held.iter().any(|h| h.barrier.is_none())
    }

    /// Every change queued so far went out in messages before `next_seq`.
    pub fn set_barrier(&mut self, next_seq: Seq) {
        for h in self.held.iter_mut().filter(|h| h.barrier.is_none()) {
            h.barrier = Some(next_seq);
        }
    }

    /// Messages were lost and go again with new sequence numbers.
    pub fn forget_barriers(&mut self) {
        for h in &mut self.held {
            h.barrier = None;
        }
    }

    /// The peer acknowledged every message before `acked_before`: append
    /// the packets it releases to `out`.
    pub fn release_acked(&mut self, acked_before: Seq, now: Instant, out: &mut Vec<u32>) {
        let before = out.len();
        let hist = &mut self.hist;
        self.held.retain(|h| {
            let done = h.barrier.is_some_and(|b| acked_before.diff(b) >= 0);
            if done {
                out.push(h.id);
                hist.record(now.saturating_duration_since(h.since));
            }
            !done
        });
        self.stats.released_by_ack += (out.len() - before) as u64;
    }

    /// Append the packets held for `timeout` by `now` to `out`.
    pub fn release_expired(&mut self, now: Instant, out: &mut Vec<u32>) {
        while let Some(h) = self.held.front() {
            if now.saturating_duration_since(h.since) < self.timeout {
                break;
            }
            out.push(h.id);
            self.hist.record(now.saturating_duration_since(h.since));
            self.stats.timeouts += 1;
            self.held.pop_front();
        }
    }

    /// Release everything (shutdown): the packets must not be dropped with
    /// the queue.
    pub fn release_all(&mut self, out: &mut Vec<u32>) {
        out.extend(self.held.drain(..).map(|h| h.id));
    }

    /// When the oldest held packet times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.held.front().map(|h| h.since + self.timeout)
    }

    /// Hold times of released packets, for the metrics.
    pub fn hold_histogram(&self) -> HistogramSnapshot {
        self.hist.snapshot()
    }

    pub fn stats(&self) -> DeferStats {
        DeferStats {
            held: self.held.len() as u64,
            hold_p50_us: self.hist.quantile(0.5),
            hold_p99_us: self.hist.quantile(0.99),
            hold_max_us: self.hist.max_us,
            ..self.stats
        }
    }
}

/// Hold times in buckets a quarter of a power of two wide (bucket `i`
/// holds up to 2^(i/4) µs), from 1 µs to about 70 s.
struct Histogram {
    buckets: [u64; 105],
    count: u64,
    max_us: u64,
    sum_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: [0; 105], count: 0, max_us: 0, sum_us: 0 }
    }
}

impl Histogram {
    fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        let i = ((us as f64).log2() * 4.0).ceil() as usize;
        self.buckets[i.min(self.buckets.len() - 1)] += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// The histogram in Prometheus buckets, seconds: upper bounds every
    /// eighth bucket (powers of 4 µs, 64 µs to 16.8 s), which fall on this
    /// histogram's own bounds so the counts are exact; longer holds go to
    /// `+Inf`.
    fn snapshot(&self) -> HistogramSnapshot {
        const FIRST: usize = 24;
        const LAST: usize = 96;
        const STEP: usize = 8;
        let mut buckets: Vec<(f64, u64)> =
            (FIRST..=LAST).step_by(STEP).map(|i| (2f64.powf(i as f64 / 4.0) / 1e6, 0)).collect();
        let mut above = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            match buckets.get_mut(i.saturating_sub(FIRST).div_ceil(STEP)) {
                Some(b) if i <= LAST => b.1 += n,
                _ => above += n,
            }
        }
        buckets.push((f64::INFINITY, above));
        HistogramSnapshot { sum: self.sum_us as f64 / 1e6, count: self.count, buckets }
    }

    /// The upper bound of the bucket holding quantile `q`; 0 when empty.
    fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return (2f64.powf(i as f64 / 4.0).round() as u64).min(self.max_us);
            }
        }
        self.max_us
    }
}

/// A histogram already counted elsewhere (the deferred packets' hold
/// times): per-bucket counts with their upper bounds, `+Inf` last.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// (upper bound, observations in this bucket only).
    pub buckets: Vec<(f64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn released_when_the_barrier_is_acknowledged() {
        let t0 = Instant::now();
        let mut d = Deferral::new(ms(20), 10);
        let mut out = Vec::new();
        assert!(d.hold(1, t0));
        // No barrier yet (the flow is still in the transmit queue): an
        // acknowledgement of everything sent so far releases nothing.
        d.release_acked(Seq(100), t0, &mut out);
        assert!(out.is_empty() && d.needs_barrier());
        d.set_barrier(Seq(101));
        assert!(d.hold(2, t0 + ms(1)));
        d.set_barrier(Seq(103));
        d.release_acked(Seq(100), t0 + ms(2), &mut out);
        assert!(out.is_empty());
        d.release_acked(Seq(101), t0 + ms(2), &mut out);
        assert_eq!(out, [1]);
        d.release_acked(Seq(103), t0 + ms(3), &mut out);
        assert_eq!(out, [1, 2]);
        let s = d.stats();
        assert_eq!((s.held, s.released_by_ack, s.timeouts), (0, 2, 0));
        assert!(s.hold_p50_us >= 1600 && s.hold_max_us == 2000, "{s:?}");
    }

    #[test]
    fn barriers_wrap_around() {
        let t0 = Instant::now();
        let mut d = Deferral::new(ms(20), 10);
        let mut out = Vec::new();
        d.hold(1, t0);
        d.set_barrier(Seq(2));
        d.release_acked(Seq(u32::MAX), t0, &mut out);
        assert!(out.is_empty());
        d.release_acked(Seq(2), t0, &mut out);
        assert_eq!(out, [1]);
    }

    #[test]
    fn a_loss_takes_every_barrier_again() {
        let t0 = Instant::now();
        let mut d = Deferral::new(ms(20), 10);
        let mut out = Vec::new();
        d.hold(1, t0);
        d.set_barrier(Seq(10));
        d.forget_barriers();
        d.release_acked(Seq(10), t0, &mut out);
        assert!(out.is_empty());
        d.set_barrier(Seq(12));
        d.release_acked(Seq(12), t0, &mut out);
        assert_eq!(out, [1]);
    }

    #[test]
    fn timeout_releases_and_never_drops() {
        let t0 = Instant::now();
        let mut d = Deferral::new(ms(20), 2);
        let mut out = Vec::new();
        assert!(d.hold(1, t0));
        assert!(d.hold(2, t0 + ms(5)));
        assert!(!d.hold(3, t0 + ms(6)), "over max_held: accepted at once");
        assert_eq!(d.next_deadline(), Some(t0 + ms(20)));
        d.release_expired(t0 + ms(19), &mut out);
        assert!(out.is_empty());
        d.release_expired(t0 + ms(20), &mut out);
        assert_eq!(out, [1]);
        assert_eq!(d.next_deadline(), Some(t0 + ms(25)));
        d.release_all(&mut out);
        assert_eq!(out, [1, 2]);
        let s = d.stats();
        assert_eq!((s.held, s.timeouts, s.overflow), (0, 1, 1));
    }

    #[test]
    fn the_prometheus_buckets_count_exactly() {
        let mut h = Histogram::default();
        for us in [1, 64, 65, 256, 1000, 20_000_000] {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 6);
        assert!((s.sum - 20.001386).abs() < 1e-9, "{}", s.sum);
        assert_eq!(s.buckets[0], (64e-6, 2));
        assert_eq!(s.buckets[1], (256e-6, 2));
        assert_eq!(s.buckets[2], (1024e-6, 1));
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(s.buckets.iter().map(|b| b.1).sum::<u64>(), 6);
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us * 10));
        }
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((500..=600).contains(&p50), "{p50}");
        assert!((990..=1000).contains(&p99), "{p99}");
        assert_eq!(h.max_us, 1000);
    }
}
