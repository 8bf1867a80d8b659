//! The statistics report: what `ctsyncd -s` prints, section by section, what
//! `-s --json` serialises, the metrics' source and the systemd status line.
//!
//! The reactor fills a [`StatsReport`] from its layers' counters; everything
//! here is pure text formatting, tested without a daemon.
//!
//! The text of each `-s SECTION` starts with the lines conntrackd 1.4 prints
//! for that section (`src/sync-mode.c`, `src/run.c`, `src/cache.c`,
//! `src/udp.c`, `src/queue.c`, `src/sync-ftfw.c`), with the same labels,
//! tabs and number widths, so that a script written against conntrackd's
//! output finds its lines. Counters that ctsync does not keep print 0.
//! ctsync's own counters follow in an indented `name: value` block.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::cache::CacheStats;
use crate::channel::LinkStatus;
use crate::control::StatsSection;
use crate::defer::{DeferStats, HistogramSnapshot};
use crate::digest::AntiEntropyStats;
use crate::direct::DirectStats;
use crate::expect::{ExpCacheStats, ExpStats};
use crate::ftfw::FtfwStats;
use crate::netlink::EventStats;
use crate::netlink::queue::QueueStats;

/// Daemon-wide counters, as `-s runtime` shows them.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct RuntimeStats {
    pub events_received: u64,
    /// Counted by the node ([`crate::node::Node::events_filtered`]).
    pub events_filtered: u64,
    pub events_own: u64,
    /// Destroy events of a kernel entry that another one with the same
    /// tuples has replaced since (see `flow::EntryId`), ignored.
    pub events_stale: u64,
    pub netlink_overruns: u64,
    pub kernel_resyncs: u64,
    pub commits: u64,
    pub commit_failures: u64,
    /// Kernel entries deleted by commits because they held a synced flow's
    /// NAT mapping.
    pub commit_displaced: u64,
    pub control_requests: u64,
    pub control_errors: u64,
    /// Control clients refused: neither root nor in `general.control_group`.
    pub control_refused: u64,
    /// Permitted control clients turned away: all connections taken, or
    /// the user's share (see `control::admit`).
    pub control_busy: u64,
    /// Control clients closed for sending no request, or leaving the
    /// answer unread, for too long.
    pub control_timeouts: u64,
    pub datagrams_unsent: u64,
}

/// Every counter of the daemon at one moment. Serialised, it is the
/// `-s --json` document (`docs/metrics.md`); fields marked `skip` are for
/// the text and the status line only.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StatsReport {
    pub uptime_seconds: u64,
    pub synced: bool,
    pub ready: bool,
    pub internal: CacheStats,
    pub external: CacheStats,
    pub runtime: RuntimeStats,
    pub netlink: EventStats,
    pub netlink_rcvbuf: usize,
    pub protocol: FtfwStats,
    pub anti_entropy: AntiEntropyStats,
    pub links: Vec<LinkStatus>,
    pub direct: DirectStats,
    /// Only with `sync.defer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defer: Option<DeferReport>,
    /// Only with `sync.expectations`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expectations: Option<ExpReport>,
    /// The peer, for the text and the status line.
    #[serde(skip)]
    pub peer: PeerView,
    /// `sync.resend_queue`, the resend queue's capacity.
    #[serde(skip)]
    pub resend_queue_max: u64,
    /// A datagram no link could send waits to be sent again (the reactor
    /// keeps one).
    #[serde(skip)]
    pub unsent_pending: bool,
    /// `sync.defer.max_held`, when deferring.
    #[serde(skip)]
    pub defer_max_held: u64,
    /// Hold times of deferred packets, with `sync.defer`.
    #[serde(skip)]
    pub defer_hold: Option<HistogramSnapshot>,
    /// Durations of the commits since start.
    #[serde(skip)]
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// `defer` in the report: the held packets and the queue they come from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeferReport {
    #[serde(flatten)]
    pub held: DeferStats,
    pub queue: QueueStats,
}

/// `expectations` in the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExpReport {
    pub internal: ExpCacheStats,
    pub external: ExpCacheStats,
    pub runtime: ExpStats,
}

/// The peer as the status line describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerView {
    /// The peer's address on the active link (`10.255.0.2`).
    pub addr: String,
    /// Where the handshake is.
    pub state: PeerPhase,
    /// Wall-clock time the peer was last seen going down, if it is down.
    pub down_since: Option<SystemTime>,
}

/// The peer's state, from the status line's point of view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PeerPhase {
    /// No answer from the peer yet since start.
    #[default]
    Waiting,
    /// Handshake done, data flowing.
    Up,
    /// Was up, then silent for `sync.peer_timeout`, or no answer to a new
    /// handshake.
    Down,
}

impl StatsReport {
    /// The text `ctsyncd -s [SECTION]` prints. `None` and `ct` are
    /// conntrackd's general statistics.
    pub fn to_text(&self, section: Option<StatsSection>) -> String {
        let mut out = String::new();
        match section {
            None | Some(StatsSection::Ct) => self.general(&mut out),
            Some(StatsSection::Network) => self.network(&mut out),
            Some(StatsSection::Cache) => self.cache(&mut out),
            Some(StatsSection::Runtime) => self.runtime_text(&mut out),
            Some(StatsSection::Link) => self.link(&mut out),
            Some(StatsSection::Rsqueue) => {
                let _ = writeln!(out, "resent queue (len={})", self.protocol.resend_queue_len);
            }
            // conntrackd lists its child processes (commits, dumps); ctsyncd
            // has none, so the list is empty.
            Some(StatsSection::Process) => {}
            Some(StatsSection::Queue) => self.queue(&mut out),
            Some(StatsSection::Expect) => self.expect(&mut out),
        }
        out
    }

    /// The systemd status line (`STATUS=`), e.g. `in sync with 10.255.0.2,
    /// 123 456 flows here, 120 000 from the peer`.
    pub fn status_line(&self) -> String {
        let flows = format!(
            "{} flows here, {} from the peer",
            group_digits(self.internal.active),
            group_digits(self.external.active)
        );
        let peer = &self.peer.addr;
        match self.peer.state {
            PeerPhase::Up if self.protocol.stalled != 0 => {
                format!("replication with {peer} STALLED (see the log), {flows}")
            }
            PeerPhase::Up if self.synced => format!("in sync with {peer}, {flows}"),
            PeerPhase::Up => format!("catching up with {peer}, {flows}"),
            PeerPhase::Waiting => format!("waiting for peer {peer}, {flows}"),
            PeerPhase::Down => match self.peer.down_since {
                Some(t) => format!(
                    "peer {peer} down since {}, {flows}",
                    humantime::format_rfc3339_seconds(t)
                ),
                None => format!("peer {peer} down, {flows}"),
            },
        }
    }

    /// A report for tests: two links, the peer in sync.
    #[cfg(test)]
    pub(crate) fn sample() -> StatsReport {
        use crate::channel::LinkStats;
        StatsReport {
            uptime_seconds: 2 * 86_400 + 3 * 3600 + 4 * 60 + 5,
            synced: true,
            ready: true,
            internal: CacheStats { active: 123_456, created: 200_000, ..Default::default() },
            external: CacheStats { active: 7, created: 9, destroyed: 2, ..Default::default() },
            runtime: RuntimeStats { events_received: 11, control_errors: 3, ..Default::default() },
            netlink: EventStats { received: 11, decode_errors: 1, overruns: 0 },
            netlink_rcvbuf: 8 << 20,
            protocol: FtfwStats {
                drop_bad_crc: 4,
                drop_truncated: 1,
                gaps: 5,
                drop_late: 6,
                resend_queue_len: 17,
                tx_queue_len: 2,
                ..Default::default()
            },
            anti_entropy: AntiEntropyStats::default(),
            links: vec![
                LinkStatus {
                    name: "udp 10.255.0.2:3780 dev sync0".into(),
                    device: "sync0".into(),
                    status: "RUNNING",
                    up: true,
                    active: true,
                    stats: LinkStats { bytes_sent: 1000, packets_recv: 3, ..Default::default() },
                },
                LinkStatus {
                    name: "udp 10.254.0.2:3780 dev sync1".into(),
                    device: "sync1".into(),
                    status: "DOWN",
                    up: false,
                    active: false,
                    stats: LinkStats::default(),
                },
            ],
            direct: DirectStats::default(),
            defer: None,
            expectations: None,
            peer: PeerView { addr: "10.255.0.2".into(), state: PeerPhase::Up, down_since: None },
            resend_queue_max: 131_072,
            unsent_pending: false,
            defer_max_held: 0,
            defer_hold: None,
            commit_seconds: crate::metrics::commit_histogram(),
        }
    }

    /// [`StatsReport::sample`] with the optional parts (defer,
    /// expectations), a commit and held packets.
    #[cfg(test)]
    pub(crate) fn sample_full() -> StatsReport {
        let mut r = StatsReport::sample();
        r.defer = Some(DeferReport { held: DeferStats::default(), queue: QueueStats::default() });
        r.expectations = Some(ExpReport {
            internal: ExpCacheStats { active: 2, ..Default::default() },
            external: ExpCacheStats::default(),
            runtime: ExpStats::default(),
        });
        r.defer_hold = Some(HistogramSnapshot {
            sum: 1.5,
            count: 3,
            buckets: vec![(64e-6, 2), (f64::INFINITY, 1)],
        });
        r.commit_seconds.observe(0.03);
        r
    }

    /// conntrackd's "message tracking" block.
    fn message_tracking(&self, out: &mut String) {
        let _ = write!(
            out,
            "message tracking:\n{:>20} Malformed msgs {:>20} Lost msgs\n\n",
            self.malformed(),
            self.protocol.gaps
        );
    }

    fn malformed(&self) -> u64 {
        let p = &self.protocol;
        p.drop_truncated + p.drop_bad_magic + p.drop_bad_version + p.drop_bad_crc + p.drop_malformed
    }

    /// conntrackd's `STATS`: both caches, the active link's traffic and
    /// message tracking; then the peer.
    fn general(&self, out: &mut String) {
        cache_summary(out, "internal", &self.internal);
        cache_summary(out, "external", &self.external);
        // ctsyncd does not add up the flows' byte and packet counters.
        let _ = write!(out, "traffic processed:\n{:>20} Bytes      {:>20} Pckts\n\n", 0, 0);
        if let Some(link) = self.links.iter().find(|l| l.active) {
            link_summary(out, link);
        }
        self.message_tracking(out);
        let _ = writeln!(out, "sync:");
        let _ = writeln!(out, "  {:<32}{}", "peer:", self.status_line());
        let _ = writeln!(out, "  {:<32}{}", "synced:", self.synced);
        let _ = writeln!(out, "  {:<32}{}", "ready:", self.ready);
    }

    /// conntrackd's `STATS_NETWORK`, then the protocol's own counters and
    /// the active link.
    fn network(&self, out: &mut String) {
        let p = &self.protocol;
        let _ = write!(
            out,
            "network statistics:\n\
             \trecv:\n\
             \t\tMalformed messages:\t{:>20}\n\
             \t\tWrong protocol version:\t{:>20}\n\
             \t\tMalformed header:\t{:>20}\n\
             \t\tMalformed payload:\t{:>20}\n\
             \t\tBad message type:\t{:>20}\n\
             \t\tTruncated message:\t{:>20}\n\
             \t\tBad message size:\t{:>20}\n\
             \tsend:\n\
             \t\tMalformed messages:\t{:>20}\n\n\
             sequence tracking statistics:\n\
             \trecv:\n\
             \t\tPackets lost:\t\t{:>20}\n\
             \t\tPackets before:\t\t{:>20}\n\n",
            self.malformed(),
            p.drop_bad_version,
            p.drop_bad_magic + p.drop_bad_crc,
            p.drop_malformed,
            0,
            p.drop_truncated,
            0,
            0,
            p.gaps,
            p.drop_late,
        );
        tree(out, "protocol", &self.protocol);
        tree(out, "anti_entropy", &self.anti_entropy);
        out.push('\n');
        if let Some(link) = self.links.iter().find(|l| l.active) {
            link_summary(out, link);
        }
    }

    /// conntrackd's `STATS_CACHE`: each cache in its extended layout; then
    /// direct-to-kernel writes.
    fn cache(&self, out: &mut String) {
        cache_extended(out, "internal", &self.internal);
        cache_extended(out, "external", &self.external);
        tree(out, "direct", &self.direct);
    }

    /// conntrackd's `STATS_RUNTIME`: uptime, netlink and runtime counters.
    fn runtime_text(&self, out: &mut String) {
        let r = &self.runtime;
        let _ = write!(
            out,
            "daemon uptime: {}\n\n\
             netlink stats:\n\
             \tevents received:\t{:>20}\n\
             \tevents filtered:\t{:>20}\n\
             \tevents unknown type:\t\t{:>12}\n\
             \tcatch event failed:\t\t{:>12}\n\
             \tdump unknown type:\t\t{:>12}\n\
             \tnetlink overrun:\t\t{:>12}\n\
             \tflush kernel table:\t\t{:>12}\n\
             \tresync with kernel table:\t{:>12}\n\
             \tcurrent buffer size (in bytes):\t{:>12}\n\n\
             runtime stats:\n\
             \tchild process failed:\t\t{:>12}\n\
             \t\tchild process segfault:\t{:>12}\n\
             \t\tchild process termsig:\t{:>12}\n\
             \tselect failed:\t\t\t{:>12}\n\
             \twait failed:\t\t\t{:>12}\n\
             \tlocal read failed:\t\t{:>12}\n\
             \tlocal unknown request:\t\t{:>12}\n\n",
            uptime(Duration::from_secs(self.uptime_seconds)),
            r.events_received,
            r.events_filtered,
            0,
            self.netlink.decode_errors,
            0,
            r.netlink_overruns,
            0,
            r.kernel_resyncs,
            self.netlink_rcvbuf,
            0,
            0,
            0,
            0,
            0,
            0,
            r.control_errors,
        );
        tree(out, "runtime", &self.runtime);
    }

    /// conntrackd's `STATS_LINK`: every link, its state and role.
    fn link(&self, out: &mut String) {
        for link in &self.links {
            let _ = writeln!(
                out,
                "UDP traffic device={} status={} role={}:",
                link.device,
                link.status,
                if link.active { "ACTIVE" } else { "BACKUP" }
            );
            link_counters(out, link);
        }
    }

    /// conntrackd's `STATS_QUEUE`: the transmit and resend queues, and the
    /// deferred packets with `sync.defer`.
    fn queue(&self, out: &mut String) {
        let p = &self.protocol;
        let held = self.defer.as_ref().map_or(0, |d| d.held.held);
        let unsent = u64::from(self.unsent_pending);
        let _ = write!(
            out,
            "allocated queue nodes:\t\t{:>12}\n\n",
            unsent + p.tx_queue_len + p.resend_queue_len + held
        );
        // conntrackd's queue of datagrams a link failed to send: ctsyncd
        // keeps one and sends it again before anything else.
        queue_block(out, "errorq", unsent, 1, 0);
        // The transmit queue holds one entry per changed flow, so it is
        // bounded by the cache, as conntrackd's (INT_MAX) is in practice.
        queue_block(out, "txqueue", p.tx_queue_len, i32::MAX as u64, 0);
        queue_block(out, "rsqueue", p.resend_queue_len, self.resend_queue_max, p.backpressure);
        if let Some(d) = &self.defer {
            queue_block(out, "defer", d.held.held, self.defer_max_held, d.held.overflow);
        }
    }

    /// conntrackd's `EXP_STATS`: the expectation caches, then the active
    /// link and message tracking as in the general statistics.
    fn expect(&self, out: &mut String) {
        if let Some(e) = &self.expectations {
            let as_cache = |c: &ExpCacheStats| CacheStats {
                active: c.active,
                created: c.created,
                updated: c.updated,
                destroyed: c.destroyed,
                failed_full: c.failed_full,
            };
            cache_summary(out, "internal", &as_cache(&e.internal));
            cache_summary(out, "external", &as_cache(&e.external));
            if let Some(link) = self.links.iter().find(|l| l.active) {
                link_summary(out, link);
            }
            self.message_tracking(out);
            tree(out, "expectations", &e.runtime);
        }
        // Like conntrackd without `Sync { Options { ExpectationSync } }`:
        // nothing.
    }
}

/// `123456` → `123 456`.
pub fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// conntrackd's `cache_stats`.
fn cache_summary(out: &mut String, name: &str, c: &CacheStats) {
    let _ = write!(
        out,
        "cache {name}:\n\
         current active connections:\t{:>12}\n\
         connections created:\t\t{:>12}\tfailed:\t{:>12}\n\
         connections updated:\t\t{:>12}\tfailed:\t{:>12}\n\
         connections destroyed:\t\t{:>12}\tfailed:\t{:>12}\n\n",
        c.active, c.created, c.failed_full, c.updated, 0, c.destroyed, 0
    );
}

/// conntrackd's `cache_stats_extended`.
fn cache_extended(out: &mut String, name: &str, c: &CacheStats) {
    let _ = write!(
        out,
        "cache:{name}\tactive objects:\t\t{:>12}\n\
         \tactive/total entries:\t\t{:>12}/{:>12}\n\
         \tcreation OK/failed:\t\t{:>12}/{:>12}\n\
         \t\tno memory available:\t{:>12}\n\
         \t\tno space left in cache:\t{:>12}\n\
         \tupdate OK/failed:\t\t{:>12}/{:>12}\n\
         \t\tentry not found:\t{:>12}\n\
         \tdeletion created/failed:\t{:>12}/{:>12}\n\
         \t\tentry not found:\t{:>12}\n\n",
        c.active,
        c.active,
        c.active,
        c.created,
        c.failed_full,
        0,
        c.failed_full,
        c.updated,
        0,
        0,
        c.destroyed,
        0,
        0
    );
}

/// conntrackd's `udp_snprintf_stats`: the active link.
fn link_summary(out: &mut String, link: &LinkStatus) {
    let _ = writeln!(out, "UDP traffic (active device={}):", link.device);
    link_counters(out, link);
}

fn link_counters(out: &mut String, link: &LinkStatus) {
    let s = &link.stats;
    let _ = write!(
        out,
        "{:>20} Bytes sent {:>20} Bytes recv\n\
         {:>20} Pckts sent {:>20} Pckts recv\n\
         {:>20} Error send {:>20} Error recv\n\
         {:>20} Foreign src {:>19} Foreign port\n\n",
        s.bytes_sent,
        s.bytes_recv,
        s.packets_sent,
        s.packets_recv,
        s.send_errors,
        s.recv_errors,
        s.foreign_source,
        s.foreign_port
    );
}

/// conntrackd's `queue_stats_show`, one queue.
fn queue_block(out: &mut String, name: &str, current: u64, max: u64, enospc: u64) {
    let _ = write!(
        out,
        "queue {name}:\n\
         current elements:\t\t{current:>12}\n\
         maximum elements:\t\t{max:>12}\n\
         not enough space errors:\t{enospc:>12}\n\n"
    );
}

/// conntrackd's uptime: `2 days 3 h 4 min`, `3 h 4 min` or `4 min`.
fn uptime(up: Duration) -> String {
    let secs = up.as_secs();
    let days = secs / 86_400;
    let hours = secs / 3600 % 24;
    let minutes = secs / 60 % 60;
    let mut out = String::new();
    if days > 0 {
        let _ = write!(out, "{days} day{} ", if days == 1 { "" } else { "s" });
    }
    if hours > 0 {
        let _ = write!(out, "{hours} h {minutes} min");
    } else {
        let _ = write!(out, "{minutes} min");
    }
    out
}

/// ctsync's own counters of a block, as `name:` then indented
/// `field: value` lines.
fn tree(out: &mut String, name: &str, value: &impl serde::Serialize) {
    let value = serde_json::to_value(value).unwrap_or_default();
    tree_value(out, name, &value, 0);
}

fn tree_value(out: &mut String, name: &str, value: &serde_json::Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match value {
        serde_json::Value::Object(map) => {
            let _ = writeln!(out, "{pad}{name}:");
            for (k, v) in map {
                tree_value(out, k, v, depth + 1);
            }
        }
        v => {
            let _ = writeln!(out, "{pad}{:<32}{v}", format!("{name}:"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatsReport {
        StatsReport::sample()
    }

    fn has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }

    #[test]
    fn general_statistics_follow_conntrackd() {
        // conntrackd src/cache.c cache_stats, src/udp.c udp_snprintf_stats,
        // src/sync-mode.c dump_stats_sync.
        let text = report().to_text(None);
        assert_eq!(text, report().to_text(Some(StatsSection::Ct)));
        has(&text, "cache internal:");
        has(&text, "current active connections:\t      123456");
        has(&text, "connections created:\t\t      200000\tfailed:\t           0");
        has(&text, "cache external:");
        has(&text, "connections destroyed:\t\t           2\tfailed:\t           0");
        has(&text, "traffic processed:");
        has(&text, "UDP traffic (active device=sync0):");
        has(&text, &format!("{:>20} Bytes sent {:>20} Bytes recv", 1000, 0));
        has(&text, &format!("{:>20} Malformed msgs {:>20} Lost msgs", 5, 5));
        assert!(text.contains("in sync with 10.255.0.2"), "{text}");
        assert!(!text.contains("network statistics"), "{text}");
    }

    #[test]
    fn each_section_prints_only_its_part() {
        let r = report();
        let network = r.to_text(Some(StatsSection::Network));
        has(&network, "network statistics:");
        has(&network, &format!("\t\tMalformed header:\t{:>20}", 4));
        has(&network, &format!("\t\tTruncated message:\t{:>20}", 1));
        has(&network, &format!("\t\tPackets lost:\t\t{:>20}", 5));
        has(&network, &format!("\t\tPackets before:\t\t{:>20}", 6));
        has(&network, "protocol:");
        assert!(!network.contains("cache internal"), "{network}");

        let cache = r.to_text(Some(StatsSection::Cache));
        has(&cache, &format!("cache:internal\tactive objects:\t\t{:>12}", 123_456));
        has(&cache, &format!("\tcreation OK/failed:\t\t{:>12}/{:>12}", 9, 0));
        assert!(!cache.contains("UDP traffic"), "{cache}");

        let runtime = r.to_text(Some(StatsSection::Runtime));
        has(&runtime, "daemon uptime: 2 days 3 h 4 min");
        has(&runtime, &format!("\tevents received:\t{:>20}", 11));
        has(&runtime, &format!("\tcatch event failed:\t\t{:>12}", 1));
        has(&runtime, &format!("\tcurrent buffer size (in bytes):\t{:>12}", 8 << 20));
        has(&runtime, &format!("\tlocal unknown request:\t\t{:>12}", 3));
        assert!(!runtime.contains("cache"), "{runtime}");

        let link = r.to_text(Some(StatsSection::Link));
        has(&link, "UDP traffic device=sync0 status=RUNNING role=ACTIVE:");
        has(&link, "UDP traffic device=sync1 status=DOWN role=BACKUP:");
        has(&link, &format!("{:>20} Pckts sent {:>20} Pckts recv", 0, 3));

        assert_eq!(r.to_text(Some(StatsSection::Rsqueue)), "resent queue (len=17)\n");
        assert_eq!(r.to_text(Some(StatsSection::Process)), "");

        let queue = r.to_text(Some(StatsSection::Queue));
        has(&queue, &format!("allocated queue nodes:\t\t{:>12}", 19));
        has(&queue, "queue rsqueue:");
        has(&queue, "queue errorq:");
        has(&queue, &format!("current elements:\t\t{:>12}", 17));
        has(&queue, &format!("maximum elements:\t\t{:>12}", 131_072));
        assert!(!queue.contains("queue defer"), "{queue}");

        // Without sync.expectations, conntrackd prints nothing either.
        assert_eq!(r.to_text(Some(StatsSection::Expect)), "");
    }

    #[test]
    fn the_status_line_follows_the_peer() {
        let mut r = report();
        assert_eq!(r.status_line(), "in sync with 10.255.0.2, 123 456 flows here, 7 from the peer");
        r.synced = false;
        assert!(r.status_line().starts_with("catching up with 10.255.0.2,"));
        r.peer.state = PeerPhase::Down;
        r.peer.down_since = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_eq!(
            r.status_line(),
            "peer 10.255.0.2 down since 2023-11-14T22:13:20Z, 123 456 flows here, 7 from the peer"
        );
        r.peer.state = PeerPhase::Waiting;
        assert!(r.status_line().starts_with("waiting for peer 10.255.0.2,"));
    }

    #[test]
    fn digits_are_grouped_by_three() {
        for (n, text) in [(0, "0"), (999, "999"), (1000, "1 000"), (123_456, "123 456")] {
            assert_eq!(group_digits(n), text);
        }
        assert_eq!(group_digits(1_234_567), "1 234 567");
    }
}
