//! Prometheus metrics: every number of `ctsyncd -s --json` in the text
//! exposition format (version 0.0.4), served on `general.metrics_listen`
//! and printed by `ctsyncd -s --prometheus` (for node_exporter's textfile
//! collector).
//!
//! Encoding goes through the `prometheus-client` crate: each render builds
//! a registry from one [`StatsReport`] and encodes it, so the scrape and
//! `-s --json` come from the same snapshot and cannot disagree. [`SPECS`]
//! says which metric exports each JSON field, with its type and help text;
//! a unit test checks that no field of the report is left out.
//! `docs/metrics.md` lists them all.
//!
//! Names: `ctsync_` and the JSON path with `.` as `_` (`protocol.acks_sent`
//! is `ctsync_protocol_acks_sent_total`), except where a base unit goes in
//! the name (`ctsync_netlink_rcvbuf_bytes`, `ctsync_links_sent_bytes_total`)
//! and for the drops of `protocol.drop_*`, which are one counter with a
//! `reason` label. Counters end in `_total`; booleans are gauges of 0 or 1;
//! each link's series carry `link="<name>"`. Hold and commit times are
//! histograms in seconds.
//!
//! The server is the smallest HTTP/1.0 that Prometheus accepts: one request
//! per connection, `GET /metrics` answered and the connection closed. It is
//! non-blocking and driven by the reactor's `Poll`, so a slow scraper cannot
//! stall replication.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use serde_json::Value;

use crate::defer::HistogramSnapshot;
use crate::stats::StatsReport;

/// The listening socket's token.
pub const LISTENER: Token = Token(3);

/// Connections get tokens from here on, clear of the reactor's own.
const FIRST_CONNECTION: usize = 1 << 28;
/// Concurrent scrapes; the oldest is dropped to admit a new one.
const MAX_CONNECTIONS: usize = 16;
/// A request head larger than this is refused.
const MAX_REQUEST: usize = 8192;

/// Upper bounds of the commit-time histogram, seconds.
pub const COMMIT_BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// How one JSON field of `-s --json` is exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// A counter; the name is given without `_total`.
    Counter(&'static str),
    /// A gauge.
    Gauge(&'static str),
    /// A sample of `ctsync_protocol_dropped_total{reason="..."}`.
    Dropped(&'static str),
    /// Left out: the hold-time histogram carries it.
    InHistogram,
}

/// One JSON field, its metric and its help text.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// The field's path in `-s --json`, `links.` fields per link.
    pub path: &'static str,
    /// How it is exported.
    pub metric: Metric,
    /// The `# HELP` text.
    pub help: &'static str,
}

/// The help text of `ctsync_protocol_dropped_total`.
pub const DROPPED_HELP: &str = "FTFW protocol: datagrams or messages from the peer dropped, by reason (docs/metrics.md says what each reason means)";

/// Every number of `-s --json` and its metric.
#[rustfmt::skip]
pub const SPECS: &[Spec] = &[
    Spec { path: "ready", metric: Metric::Gauge("ready"), help: "This node holds the peer's complete table and may take over (what ctsyncd --check-ready answers), 0 or 1" },
    Spec { path: "uptime_seconds", metric: Metric::Gauge("uptime_seconds"), help: "Seconds since the daemon started" },
    Spec { path: "synced", metric: Metric::Gauge("synced"), help: "Handshake with the peer done, nothing unsent or unacknowledged, no gap pending, and the last full-table transfer asked for is complete" },
    Spec { path: "netlink_rcvbuf", metric: Metric::Gauge("netlink_rcvbuf_bytes"), help: "Current receive buffer of the kernel event socket, bytes (grows after overruns up to general.netlink.rcvbuf_max)" },
    Spec { path: "internal.active", metric: Metric::Gauge("internal_active"), help: "Internal cache (this firewall's flows): flows in the cache" },
    Spec { path: "external.active", metric: Metric::Gauge("external_active"), help: "External cache (the peer's flows): flows in the cache" },
    Spec { path: "internal.created", metric: Metric::Counter("internal_created"), help: "Internal cache (this firewall's flows): flows added" },
    Spec { path: "external.created", metric: Metric::Counter("external_created"), help: "External cache (the peer's flows): flows added" },
    Spec { path: "internal.updated", metric: Metric::Counter("internal_updated"), help: "Internal cache (this firewall's flows): updates of a flow already there" },
    Spec { path: "external.updated", metric: Metric::Counter("external_updated"), help: "External cache (the peer's flows): updates of a flow already there" },
    Spec { path: "internal.destroyed", metric: Metric::Counter("internal_destroyed"), help: "Internal cache (this firewall's flows): flows removed" },
    Spec { path: "external.destroyed", metric: Metric::Counter("external_destroyed"), help: "External cache (the peer's flows): flows removed" },
    Spec { path: "internal.failed_full", metric: Metric::Counter("internal_failed_full"), help: "Internal cache (this firewall's flows): flows refused because the cache held general.cache_limit flows" },
    Spec { path: "external.failed_full", metric: Metric::Counter("external_failed_full"), help: "External cache (the peer's flows): flows refused because the cache held general.cache_limit flows" },
    Spec { path: "runtime.events_received", metric: Metric::Counter("runtime_events_received"), help: "Conntrack events read from the kernel" },
    Spec { path: "runtime.events_filtered", metric: Metric::Counter("runtime_events_filtered"), help: "Events not replicated (general.filter, or a destroy of a flow never replicated)" },
    Spec { path: "runtime.events_own", metric: Metric::Counter("runtime_events_own"), help: "Events caused by this daemon's own commits (not sent back to the peer)" },
    Spec { path: "runtime.events_stale", metric: Metric::Counter("runtime_events_stale"), help: "Destroy events of a kernel entry that another entry with the same tuples has replaced since (the kernel redelivers them late with reliable_events), ignored" },
    Spec { path: "runtime.netlink_overruns", metric: Metric::Counter("runtime_netlink_overruns"), help: "Times the kernel dropped events (ENOBUFS); each schedules a resync with the kernel" },
    Spec { path: "runtime.kernel_resyncs", metric: Metric::Counter("runtime_kernel_resyncs"), help: "Dumps of the kernel table (at start, after overruns, ctsyncd -R)" },
    Spec { path: "runtime.commits", metric: Metric::Counter("runtime_commits"), help: "Ctsyncd -c runs" },
    Spec { path: "runtime.commit_failures", metric: Metric::Counter("runtime_commit_failures"), help: "Flows the kernel refused during commits" },
    Spec { path: "runtime.commit_displaced", metric: Metric::Counter("runtime_commit_displaced"), help: "Kernel entries a commit deleted because they held a synced flow's NAT mapping (made by packets that reached the virtual IPs before the commit)" },
    Spec { path: "runtime.control_requests", metric: Metric::Counter("runtime_control_requests"), help: "Requests on the control socket" },
    Spec { path: "runtime.control_errors", metric: Metric::Counter("runtime_control_errors"), help: "Malformed requests on the control socket" },
    Spec { path: "runtime.control_refused", metric: Metric::Counter("runtime_control_refused"), help: "Control clients refused by their credentials (neither root nor general.control_group)" },
    Spec { path: "runtime.control_busy", metric: Metric::Counter("runtime_control_busy"), help: "Permitted control clients turned away: 16 open for that user, or all 256 connections taken (32 are kept for root)" },
    Spec { path: "runtime.control_timeouts", metric: Metric::Counter("runtime_control_timeouts"), help: "Control clients closed for sending no request within 5 s or leaving the answer unread for 60 s" },
    Spec { path: "runtime.datagrams_unsent", metric: Metric::Counter("runtime_datagrams_unsent"), help: "Datagrams no link could send (the protocol resends them)" },
    Spec { path: "netlink.received", metric: Metric::Counter("netlink_received"), help: "Kernel event socket: events decoded" },
    Spec { path: "netlink.decode_errors", metric: Metric::Counter("netlink_decode_errors"), help: "Kernel event socket: messages that could not be decoded and were skipped" },
    Spec { path: "netlink.overruns", metric: Metric::Counter("netlink_overruns"), help: "Kernel event socket: ENOBUFS seen" },
    Spec { path: "protocol.datagrams_sent", metric: Metric::Counter("protocol_datagrams_sent"), help: "FTFW protocol: datagrams built / handed in" },
    Spec { path: "protocol.datagrams_received", metric: Metric::Counter("protocol_datagrams_received"), help: "FTFW protocol: datagrams built / handed in" },
    Spec { path: "protocol.msgs_sent", metric: Metric::Counter("protocol_msgs_sent"), help: "FTFW protocol: messages of any type" },
    Spec { path: "protocol.msgs_received", metric: Metric::Counter("protocol_msgs_received"), help: "FTFW protocol: messages of any type" },
    Spec { path: "protocol.flow_msgs_sent", metric: Metric::Counter("protocol_flow_msgs_sent"), help: "FTFW protocol: flow messages (new, update, destroy) sent, resends included" },
    Spec { path: "protocol.flow_msgs_accepted", metric: Metric::Counter("protocol_flow_msgs_accepted"), help: "FTFW protocol: flow messages accepted from the peer" },
    Spec { path: "protocol.resent", metric: Metric::Counter("protocol_resent"), help: "FTFW protocol: messages put back in the transmit queue after a loss" },
    Spec { path: "protocol.resend_superseded", metric: Metric::Counter("protocol_resend_superseded"), help: "FTFW protocol: lost messages not resent because a newer change was pending" },
    Spec { path: "protocol.acks_sent", metric: Metric::Counter("protocol_acks_sent"), help: "FTFW protocol: acknowledgements" },
    Spec { path: "protocol.acks_received", metric: Metric::Counter("protocol_acks_received"), help: "FTFW protocol: acknowledgements" },
    Spec { path: "protocol.nacks_sent", metric: Metric::Counter("protocol_nacks_sent"), help: "FTFW protocol: acknowledgements" },
    Spec { path: "protocol.nacks_received", metric: Metric::Counter("protocol_nacks_received"), help: "FTFW protocol: acknowledgements" },
    Spec { path: "protocol.alive_sent", metric: Metric::Counter("protocol_alive_sent"), help: "FTFW protocol: keepalives" },
    Spec { path: "protocol.gaps", metric: Metric::Counter("protocol_gaps"), help: "FTFW protocol: gaps in the peer's sequence (each answered by a NACK)" },
    Spec { path: "protocol.drop_truncated", metric: Metric::Dropped("truncated"), help: "FTFW protocol: datagrams or messages dropped, by reason" },
    Spec { path: "protocol.drop_bad_magic", metric: Metric::Dropped("bad_magic"), help: "FTFW protocol: datagrams or messages dropped, by reason" },
    Spec { path: "protocol.drop_bad_version", metric: Metric::Dropped("bad_version"), help: "FTFW protocol: datagrams or messages dropped, by reason" },
    Spec { path: "protocol.drop_bad_crc", metric: Metric::Dropped("bad_crc"), help: "FTFW protocol: datagrams or messages dropped, by reason" },
    Spec { path: "protocol.drop_malformed", metric: Metric::Dropped("malformed"), help: "FTFW protocol: datagrams or messages dropped, by reason" },
    Spec { path: "protocol.drop_auth", metric: Metric::Dropped("auth"), help: "FTFW protocol: datagrams or messages dropped, by reason" },
    Spec { path: "protocol.drop_bad_mac", metric: Metric::Dropped("bad_mac"), help: "FTFW protocol: datagrams or messages dropped, by reason" },
    Spec { path: "protocol.drop_unknown_key", metric: Metric::Dropped("unknown_key"), help: "FTFW protocol: datagrams or messages dropped, by reason" },
    Spec { path: "protocol.drop_replay", metric: Metric::Dropped("replay"), help: "FTFW protocol: datagrams or messages dropped, by reason" },
    Spec { path: "protocol.drop_unknown_session", metric: Metric::Dropped("unknown_session"), help: "FTFW protocol: datagrams or messages dropped, by reason" },
    Spec { path: "protocol.drop_late", metric: Metric::Dropped("late"), help: "FTFW protocol: sequenced messages older than expected (late or duplicate)" },
    Spec { path: "protocol.drop_far_ahead", metric: Metric::Dropped("far_ahead"), help: "FTFW protocol: datagrams too far ahead in sequence (ignored)" },
    Spec { path: "protocol.bad_acks", metric: Metric::Counter("protocol_bad_acks"), help: "FTFW protocol: ACK/NACK ranges that made no sense (ignored)" },
    Spec { path: "protocol.seq_jumps", metric: Metric::Counter("protocol_seq_jumps"), help: "FTFW protocol: times the peer acknowledged sequence numbers not sent yet" },
    Spec { path: "protocol.coalesced", metric: Metric::Counter("protocol_coalesced"), help: "FTFW protocol: local changes absorbed by a pending change of the same flow" },
    Spec { path: "protocol.cancelled", metric: Metric::Counter("protocol_cancelled"), help: "FTFW protocol: new+destroy pairs dropped before sending" },
    Spec { path: "protocol.backpressure", metric: Metric::Counter("protocol_backpressure"), help: "FTFW protocol: times sending stopped because the resend queue was full or a restarted peer was not caught up" },
    Spec { path: "protocol.tx_queue_len", metric: Metric::Gauge("protocol_tx_queue_len"), help: "FTFW protocol: changes waiting to be sent" },
    Spec { path: "protocol.resend_queue_len", metric: Metric::Gauge("protocol_resend_queue_len"), help: "FTFW protocol: messages waiting for the peer's acknowledgement" },
    Spec { path: "protocol.peer_up", metric: Metric::Counter("protocol_peer_up"), help: "FTFW protocol: transitions of the peer's state" },
    Spec { path: "protocol.peer_down", metric: Metric::Counter("protocol_peer_down"), help: "FTFW protocol: transitions of the peer's state" },
    Spec { path: "protocol.peer_restarts", metric: Metric::Counter("protocol_peer_restarts"), help: "FTFW protocol: new peer sessions after the first" },
    Spec { path: "protocol.stalled", metric: Metric::Gauge("protocol_stalled"), help: "FTFW protocol: 1 while replication is stalled: the peer is heard from but for sync.stall_timeout nothing we sent was acknowledged or nothing it sent was accepted" },
    Spec { path: "protocol.stalls", metric: Metric::Counter("protocol_stalls"), help: "FTFW protocol: stalls begun (see protocol_stalled)" },
    Spec { path: "protocol.hello_probes", metric: Metric::Counter("protocol_hello_probes"), help: "FTFW protocol: HELLOs of another peer session while one was live, answered with a probe while the live session goes on" },
    Spec { path: "protocol.rx_rebases", metric: Metric::Counter("protocol_rx_rebases"), help: "FTFW protocol, conntrackd wire: times the peer's sequence was followed again after only refused messages came for half sync.peer_timeout (a forged HELLO or a missed restart)" },
    Spec { path: "protocol.nacks_of_acked", metric: Metric::Counter("protocol_nacks_of_acked"), help: "FTFW protocol, conntrackd wire: NACKs naming flow messages the peer had acknowledged (a forged ACK, or a peer that lost them), each answered with our whole table" },
    Spec { path: "protocol.resend_resets", metric: Metric::Counter("protocol_resend_resets"), help: "FTFW protocol, conntrackd wire: times the resend queue reached twice sync.resend_queue while the peer acknowledged nothing (its keepalives take seqs); what it held was queued to be sent again" },
    Spec { path: "protocol.rx_collisions", metric: Metric::Counter("protocol_rx_collisions"), help: "FTFW protocol, conntrackd wire: late messages under a seq already taken by a different message (one of the two was forged), each answered with a request for the peer's table" },
    Spec { path: "protocol.bulks_sent", metric: Metric::Counter("protocol_bulks_sent"), help: "FTFW protocol: full-table transfers" },
    Spec { path: "protocol.bulks_received", metric: Metric::Counter("protocol_bulks_received"), help: "FTFW protocol: full-table transfers" },
    Spec { path: "protocol.resync_requests_sent", metric: Metric::Counter("protocol_resync_requests_sent"), help: "FTFW protocol: full-table requests" },
    Spec { path: "protocol.resync_requests_received", metric: Metric::Counter("protocol_resync_requests_received"), help: "FTFW protocol: full-table requests" },
    Spec { path: "protocol.digests_sent", metric: Metric::Counter("protocol_digests_sent"), help: "FTFW protocol: anti-entropy digests of our table sent (PROTOCOL.md, \"Anti-entropy\")" },
    Spec { path: "protocol.digests_deferred", metric: Metric::Counter("protocol_digests_deferred"), help: "FTFW protocol: digests postponed because changes were waiting to be sent (retried within alive_interval / 5)" },
    Spec { path: "protocol.digests_received", metric: Metric::Counter("protocol_digests_received"), help: "FTFW protocol: complete digests from the peer that could be compared" },
    Spec { path: "protocol.digests_skipped", metric: Metric::Counter("protocol_digests_skipped"), help: "FTFW protocol: digests from the peer not compared: a gap since its oldest unacknowledged message, a bulk or repair under way, or a part missing (the next one is compared)" },
    Spec { path: "protocol.repair_requests_sent", metric: Metric::Counter("protocol_repair_requests_sent"), help: "FTFW protocol: requests to resend the flows of differing ranges" },
    Spec { path: "protocol.repair_requests_received", metric: Metric::Counter("protocol_repair_requests_received"), help: "FTFW protocol: requests to resend the flows of differing ranges" },
    Spec { path: "protocol.repair_flows_sent", metric: Metric::Counter("protocol_repair_flows_sent"), help: "FTFW protocol: flows resent for the peer's repairs, resends included" },
    Spec { path: "protocol.repair_ends_received", metric: Metric::Counter("protocol_repair_ends_received"), help: "FTFW protocol: repairs of our external cache the peer completed" },
    Spec { path: "protocol.exp_msgs_sent", metric: Metric::Counter("protocol_exp_msgs_sent"), help: "FTFW protocol: expectation messages (EXP_NEW, EXP_DESTROY) sent (resends included) and accepted" },
    Spec { path: "protocol.exp_msgs_accepted", metric: Metric::Counter("protocol_exp_msgs_accepted"), help: "FTFW protocol: expectation messages (EXP_NEW, EXP_DESTROY) sent (resends included) and accepted" },
    Spec { path: "anti_entropy.digests_compared", metric: Metric::Counter("anti_entropy_digests_compared"), help: "Anti-entropy: the peer's digests compared with the external cache's" },
    Spec { path: "anti_entropy.digests_differing", metric: Metric::Counter("anti_entropy_digests_differing"), help: "Anti-entropy: comparisons that found differing ranges; each starts one repair" },
    Spec { path: "anti_entropy.repairs", metric: Metric::Counter("anti_entropy_repairs"), help: "Anti-entropy: repairs of the external cache completed" },
    Spec { path: "anti_entropy.ranges_repaired", metric: Metric::Counter("anti_entropy_ranges_repaired"), help: "Anti-entropy: ranges those repairs covered (128 ranges make a table)" },
    Spec { path: "anti_entropy.flows_added", metric: Metric::Counter("anti_entropy_flows_added"), help: "Anti-entropy: flows a repair added: the peer had them, the external cache did not" },
    Spec { path: "anti_entropy.flows_changed", metric: Metric::Counter("anti_entropy_flows_changed"), help: "Anti-entropy: flows a repair changed: the external cache held a stale state" },
    Spec { path: "anti_entropy.flows_removed", metric: Metric::Counter("anti_entropy_flows_removed"), help: "Anti-entropy: flows a repair removed: the peer no longer has them" },
    Spec { path: "anti_entropy.repairs_served", metric: Metric::Counter("anti_entropy_repairs_served"), help: "Anti-entropy: repairs the peer asked of us (its copy of our table had drifted)" },
    Spec { path: "anti_entropy.flows_resent", metric: Metric::Counter("anti_entropy_flows_resent"), help: "Anti-entropy: flows we resent for those repairs" },
    Spec { path: "anti_entropy.skipped_full", metric: Metric::Counter("anti_entropy_skipped_full"), help: "Anti-entropy: digests not compared because the external cache is full (general.cache_limit): raise it" },
    Spec { path: "direct.created", metric: Metric::Counter("direct_created"), help: "Direct-to-kernel mode: kernel entries created / updated from the peer's flows" },
    Spec { path: "direct.updated", metric: Metric::Counter("direct_updated"), help: "Direct-to-kernel mode: kernel entries created / updated from the peer's flows" },
    Spec { path: "direct.deleted", metric: Metric::Counter("direct_deleted"), help: "Direct-to-kernel mode: kernel entries deleted because the peer destroyed its flow" },
    Spec { path: "direct.already_gone", metric: Metric::Counter("direct_already_gone"), help: "Direct-to-kernel mode: peer destroys of flows the kernel had already expired" },
    Spec { path: "direct.failed", metric: Metric::Counter("direct_failed"), help: "Direct-to-kernel mode: writes or deletes the kernel refused" },
    Spec { path: "direct.batches", metric: Metric::Counter("direct_batches"), help: "Direct-to-kernel mode: kernel writes (one per reactor turn with changes from the peer)" },
    Spec { path: "direct.taken_by_peer", metric: Metric::Counter("direct_taken_by_peer"), help: "Direct-to-kernel mode: local flows the peer changed later, so the peer owns them now" },
    Spec { path: "direct.kept_local", metric: Metric::Counter("direct_kept_local"), help: "Direct-to-kernel mode: peer updates or destroys not applied: this node owns the flow (it is master, or changed the flow later)" },
    Spec { path: "direct.unchanged", metric: Metric::Counter("direct_unchanged"), help: "Direct-to-kernel mode: peer updates equal to what was held (timeout aside): nothing written" },
    Spec { path: "defer.held", metric: Metric::Gauge("defer_held"), help: "Deferred packets: packets held now" },
    Spec { path: "defer.released_by_ack", metric: Metric::Counter("defer_released_by_ack"), help: "Deferred packets: packets accepted because the peer acknowledged their flow" },
    Spec { path: "defer.timeouts", metric: Metric::Counter("defer_timeouts"), help: "Deferred packets: packets accepted by sync.defer.timeout before the peer's acknowledgment" },
    Spec { path: "defer.overflow", metric: Metric::Counter("defer_overflow"), help: "Deferred packets: packets accepted at once: max_held were held already" },
    Spec { path: "defer.peer_down", metric: Metric::Counter("defer_peer_down"), help: "Deferred packets: packets accepted at once: the peer is down or not yet through its handshake" },
    Spec { path: "defer.not_replicated", metric: Metric::Counter("defer_not_replicated"), help: "Deferred packets: packets accepted at once: no conntrack entry, or a flow general.filter leaves out" },
    Spec { path: "defer.hold_p50_us", metric: Metric::InHistogram, help: "Deferred packets: hold time of released packets since start, microseconds: median and 99th percentile (upper bounds of log-scale buckets, within 19 %) and maximum" },
    Spec { path: "defer.hold_p99_us", metric: Metric::InHistogram, help: "Deferred packets: hold time of released packets since start, microseconds: median and 99th percentile (upper bounds of log-scale buckets, within 19 %) and maximum" },
    Spec { path: "defer.hold_max_us", metric: Metric::InHistogram, help: "Deferred packets: hold time of released packets since start, microseconds: median and 99th percentile (upper bounds of log-scale buckets, within 19 %) and maximum" },
    Spec { path: "defer.queue.packets", metric: Metric::Counter("defer_queue_packets"), help: "Deferred packets: packets read from the NFQUEUE" },
    Spec { path: "defer.queue.without_flow", metric: Metric::Counter("defer_queue_without_flow"), help: "Deferred packets: packets that came without their conntrack entry (kernels without CONFIG_NETFILTER_NETLINK_GLUE_CT; the entry is then looked up)" },
    Spec { path: "defer.queue.decode_errors", metric: Metric::Counter("defer_queue_decode_errors"), help: "Deferred packets: queue messages that did not decode" },
    Spec { path: "defer.queue.verdict_errors", metric: Metric::Counter("defer_queue_verdict_errors"), help: "Deferred packets: verdicts the kernel refused or that could not be sent" },
    Spec { path: "links.up", metric: Metric::Gauge("links_up"), help: "Sync link: the interface is up and running" },
    Spec { path: "links.active", metric: Metric::Gauge("links_active"), help: "Sync link: this link carries the traffic now" },
    Spec { path: "links.bytes_sent", metric: Metric::Counter("links_sent_bytes"), help: "Sync link: bytes of the datagrams sent" },
    Spec { path: "links.packets_sent", metric: Metric::Counter("links_sent_packets"), help: "Sync link: datagrams sent" },
    Spec { path: "links.bytes_recv", metric: Metric::Counter("links_received_bytes"), help: "Sync link: bytes of the datagrams received" },
    Spec { path: "links.packets_recv", metric: Metric::Counter("links_received_packets"), help: "Sync link: datagrams received" },
    Spec { path: "links.send_errors", metric: Metric::Counter("links_send_errors"), help: "Sync link: sends that failed (socket errors)" },
    Spec { path: "links.recv_errors", metric: Metric::Counter("links_recv_errors"), help: "Sync link: receives that failed (socket errors)" },
    Spec { path: "links.foreign_source", metric: Metric::Counter("links_foreign_source"), help: "Sync link: datagrams from an address that is not the peer (dropped)" },
    Spec { path: "links.foreign_port", metric: Metric::Counter("links_foreign_port"), help: "Sync link: datagrams from the peer's address but not from the port it sends from (dropped)" },
    Spec { path: "expectations.internal.active", metric: Metric::Gauge("expectations_internal_active"), help: "Expectation cache internal (this firewall's expectations): expectations in the cache" },
    Spec { path: "expectations.internal.created", metric: Metric::Counter("expectations_internal_created"), help: "Expectation cache internal (this firewall's expectations): expectations added" },
    Spec { path: "expectations.internal.updated", metric: Metric::Counter("expectations_internal_updated"), help: "Expectation cache internal (this firewall's expectations): updates of an expectation already there" },
    Spec { path: "expectations.internal.destroyed", metric: Metric::Counter("expectations_internal_destroyed"), help: "Expectation cache internal (this firewall's expectations): expectations removed" },
    Spec { path: "expectations.internal.failed_full", metric: Metric::Counter("expectations_internal_failed_full"), help: "Expectation cache internal (this firewall's expectations): expectations refused because the cache held general.cache_limit entries" },
    Spec { path: "expectations.external.active", metric: Metric::Gauge("expectations_external_active"), help: "Expectation cache external (the peer's expectations): expectations in the cache" },
    Spec { path: "expectations.external.created", metric: Metric::Counter("expectations_external_created"), help: "Expectation cache external (the peer's expectations): expectations added" },
    Spec { path: "expectations.external.updated", metric: Metric::Counter("expectations_external_updated"), help: "Expectation cache external (the peer's expectations): updates of an expectation already there" },
    Spec { path: "expectations.external.destroyed", metric: Metric::Counter("expectations_external_destroyed"), help: "Expectation cache external (the peer's expectations): expectations removed" },
    Spec { path: "expectations.external.failed_full", metric: Metric::Counter("expectations_external_failed_full"), help: "Expectation cache external (the peer's expectations): expectations refused because the cache held general.cache_limit entries" },
    Spec { path: "expectations.runtime.events", metric: Metric::Counter("expectations_runtime_events"), help: "Expectation sync: expectation events read from the kernel" },
    Spec { path: "expectations.runtime.ignored_helper", metric: Metric::Counter("expectations_runtime_ignored_helper"), help: "Expectation sync: events and dumped expectations of helpers not listed in sync.expectations" },
    Spec { path: "expectations.runtime.committed", metric: Metric::Counter("expectations_runtime_committed"), help: "Expectation sync: expectations created in the kernel by -c" },
    Spec { path: "expectations.runtime.commit_existing", metric: Metric::Counter("expectations_runtime_commit_existing"), help: "Expectation sync: expectations -c found in the kernel already" },
    Spec { path: "expectations.runtime.commit_no_master", metric: Metric::Counter("expectations_runtime_commit_no_master"), help: "Expectation sync: expectations -c left out: their master flow is neither in the external cache nor in this kernel" },
    Spec { path: "expectations.runtime.commit_failed", metric: Metric::Counter("expectations_runtime_commit_failed"), help: "Expectation sync: expectations the kernel refused on -c (logged with the errno)" },
];

/// Render `report` in the Prometheus text format.
pub fn render(report: &StatsReport) -> String {
    let mut registry = prometheus_client::registry::Registry::with_prefix("ctsync");
    let json = serde_json::to_value(report).unwrap_or_default();
    let mut samples: Vec<(&str, Option<&str>, u64)> = Vec::new();
    if let Value::Object(sections) = &json {
        for (name, value) in sections {
            collect(&mut samples, name, value, None);
        }
    }
    let dropped = Family::<Vec<(String, String)>, Counter<u64>>::default();
    let mut dropped_registered = false;
    for spec in SPECS {
        let mine: Vec<_> = samples.iter().filter(|(p, _, _)| *p == spec.path).collect();
        if mine.is_empty() {
            continue;
        }
        match spec.metric {
            Metric::Counter(name) if name.starts_with("links_") => {
                let family = Family::<Vec<(String, String)>, Counter<u64>>::default();
                for (_, link, v) in &mine {
                    family.get_or_create(&link_label(*link)).inc_by(*v);
                }
                registry.register(name, spec.help, family);
            }
            Metric::Gauge(name) if name.starts_with("links_") => {
                let family = Family::<Vec<(String, String)>, Gauge<i64>>::default();
                for (_, link, v) in &mine {
                    family
                        .get_or_create(&link_label(*link))
                        .set(i64::try_from(*v).unwrap_or(i64::MAX));
                }
                registry.register(name, spec.help, family);
            }
            Metric::Counter(name) => {
                let counter = Counter::<u64>::default();
                counter.inc_by(mine[0].2);
                registry.register(name, spec.help, counter);
            }
            Metric::Gauge(name) => {
                let gauge = Gauge::<i64>::default();
                gauge.set(i64::try_from(mine[0].2).unwrap_or(i64::MAX));
                registry.register(name, spec.help, gauge);
            }
            Metric::Dropped(reason) => {
                dropped
                    .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
                    .inc_by(mine[0].2);
                if !dropped_registered {
                    registry.register("protocol_dropped", DROPPED_HELP, dropped.clone());
                    dropped_registered = true;
                }
            }
            Metric::InHistogram => {}
        }
    }
    if let Some(hold) = &report.defer_hold {
        registry.register(
            "defer_hold_seconds",
            "Deferred packets: how long released packets were held, seconds",
            hold.clone(),
        );
    }
    registry.register(
        "commit_seconds",
        "How long each commit of the external cache into the kernel (ctsyncd -c) took, seconds",
        report.commit_seconds.clone(),
    );
    let mut out = String::new();
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

impl TypedMetric for HistogramSnapshot {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for HistogramSnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A new, empty commit-time histogram ([`COMMIT_BUCKETS`]).
pub fn commit_histogram() -> Histogram {
    Histogram::new(COMMIT_BUCKETS)
}

/// What a request head asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics` (or `HEAD`): the metrics.
    Metrics {
        /// Send headers only.
        head: bool,
    },
    /// A path other than `/metrics`.
    NotFound,
    /// A method other than GET or HEAD.
    BadMethod,
    /// Not an HTTP request line.
    Malformed,
}

/// Parse a request head: `None` until the blank line that ends it arrives.
pub fn parse_request(input: &[u8]) -> Option<Request> {
    let end = input.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| {
        // Hand-typed requests (`nc`) often end lines with a bare LF.
        input.windows(2).position(|w| w == b"\n\n")
    })?;
    let head = std::str::from_utf8(&input[..end]).ok();
    let line = head.and_then(|h| h.lines().next()).unwrap_or("");
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Some(Request::Malformed);
    };
    if !version.starts_with("HTTP/1.") {
        return Some(Request::Malformed);
    }
    let path = target.split('?').next().unwrap_or("");
    Some(match (method, path) {
        ("GET" | "HEAD", "/metrics") => Request::Metrics { head: method == "HEAD" },
        ("GET" | "HEAD", _) => Request::NotFound,
        _ => Request::BadMethod,
    })
}

/// The full HTTP/1.0 response to `request`; `render` is called only when
/// the metrics are wanted.
pub fn respond(request: Request, render: impl FnOnce() -> String) -> Vec<u8> {
    let (status, body, head) = match request {
        Request::Metrics { head } => ("200 OK", render(), head),
        Request::NotFound => ("404 Not Found", "metrics are at /metrics\n".to_owned(), false),
        Request::BadMethod => ("405 Method Not Allowed", "use GET\n".to_owned(), false),
        Request::Malformed => ("400 Bad Request", "bad request\n".to_owned(), false),
    };
    let content_type = match request {
        Request::Metrics { .. } => "text/plain; version=0.0.4; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The metrics endpoint: a listener and the scrapes in progress.
pub struct Server {
    listener: TcpListener,
    connections: HashMap<Token, Connection>,
    next: usize,
}

struct Connection {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// Accept order, to find the oldest.
    serial: usize,
}

/// Why the metrics endpoint could not be opened.
#[derive(Debug)]
pub enum BindError {
    /// `general.metrics_listen` cannot be bound: in use, or an address
    /// this host does not have.
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// The socket's error.
        source: io::Error,
    },
    /// The listener could not join the event loop.
    Register(io::Error),
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::Listen { addr, source } => {
                write!(f, "cannot listen for metrics on {addr}: {source}")
            }
            BindError::Register(e) => write!(f, "cannot register the metrics listener: {e}"),
        }
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BindError::Listen { source, .. } | BindError::Register(source) => Some(source),
        }
    }
}

impl Server {
    /// Listen on `addr` and register with `registry` under [`LISTENER`].
    pub fn bind(addr: SocketAddr, registry: &Registry) -> Result<Server, BindError> {
        let mut listener =
            TcpListener::bind(addr).map_err(|source| BindError::Listen { addr, source })?;
        registry
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(BindError::Register)?;
        Ok(Server { listener, connections: HashMap::new(), next: 0 })
    }

    /// Whether `token` is one of this server's connections.
    pub fn owns(token: Token) -> bool {
        token.0 >= FIRST_CONNECTION
    }

    /// The listener is readable: accept every pending connection.
    pub fn accept(&mut self, registry: &Registry) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.connections.len() >= MAX_CONNECTIONS {
                        self.drop_oldest(registry);
                    }
                    let token = Token(FIRST_CONNECTION + self.next % (1 << 20));
                    if registry.register(&mut stream, token, Interest::READABLE).is_ok() {
                        let connection = Connection {
                            stream,
                            input: Vec::new(),
                            output: Vec::new(),
                            written: 0,
                            serial: self.next,
                        };
                        self.connections.insert(token, connection);
                    }
                    self.next += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("metrics listener accept failed: {e}");
                    break;
                }
            }
        }
    }

    /// A connection is ready: read its request, answer with `render()`'s
    /// text, and close it once the answer is written.
    pub fn on_ready(&mut self, registry: &Registry, token: Token, render: impl FnOnce() -> String) {
        let Some(mut conn) = self.connections.remove(&token) else { return };
        let mut open = true;
        if conn.output.is_empty() {
            let mut buf = [0u8; 1024];
            loop {
                match conn.stream.read(&mut buf) {
                    Ok(0) => {
                        open = false;
                        break;
                    }
                    Ok(n) => conn.input.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        open = false;
                        break;
                    }
                }
            }
            let request = match parse_request(&conn.input) {
                None if conn.input.len() > MAX_REQUEST => Some(Request::Malformed),
                parsed => parsed,
            };
            if let Some(request) = request {
                conn.output = respond(request, render);
                open = true;
            }
        }
        if open && !conn.output.is_empty() {
            while conn.written < conn.output.len() {
                match conn.stream.write(&conn.output[conn.written..]) {
                    Ok(n) => conn.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        open = false;
                        break;
                    }
                }
            }
            if conn.written == conn.output.len() {
                open = false;
            }
        }
        if !open {
            let _ = registry.deregister(&mut conn.stream);
            return;
        }
        let interest = if conn.output.is_empty() { Interest::READABLE } else { Interest::WRITABLE };
        if registry.reregister(&mut conn.stream, token, interest).is_ok() {
            self.connections.insert(token, conn);
        }
    }

    fn drop_oldest(&mut self, registry: &Registry) {
        let oldest = self.connections.iter().min_by_key(|(_, c)| c.serial).map(|(t, _)| *t);
        if let Some(mut conn) = oldest.and_then(|t| self.connections.remove(&t)) {
            let _ = registry.deregister(&mut conn.stream);
        }
    }
}

fn link_label(link: Option<&str>) -> Vec<(String, String)> {
    vec![("link".to_owned(), link.unwrap_or_default().to_owned())]
}

/// Every number in `value`, with its JSON path and, under `links`, the
/// link's name.
fn collect<'a>(
    out: &mut Vec<(&'static str, Option<&'a str>, u64)>,
    path: &str,
    value: &'a Value,
    link: Option<&'a str>,
) {
    let number = match value {
        Value::Object(fields) => {
            for (name, value) in fields {
                collect(out, &format!("{path}.{name}"), value, link);
            }
            return;
        }
        Value::Array(items) => {
            // Only `links` is a list: one series per link, named by it.
            for item in items {
                let name = item.get("name").and_then(Value::as_str);
                if let Value::Object(fields) = item {
                    for (field, value) in fields.iter().filter(|(k, _)| *k != "name") {
                        collect(out, &format!("{path}.{field}"), value, name);
                    }
                }
            }
            return;
        }
        // Every number of the report is a u64.
        Value::Number(n) => n.as_u64().unwrap_or_default(),
        Value::Bool(b) => u64::from(*b),
        // Text and absent values have no number to show.
        Value::String(_) | Value::Null => return,
    };
    // A field without a spec is left out; a unit test makes sure there
    // is none.
    if let Some(spec) = SPECS.iter().find(|s| s.path == path) {
        out.push((spec.path, link, number));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address already in use is named in the start-up error.
    #[test]
    fn bind_error_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let poll = mio::Poll::new().unwrap();
        let e = Server::bind(addr, poll.registry()).map(|_| ()).unwrap_err();
        assert!(matches!(e, BindError::Listen { .. }));
        let in_use = io::Error::from_raw_os_error(libc::EADDRINUSE);
        assert_eq!(e.to_string(), format!("cannot listen for metrics on {addr}: {in_use}"));
    }

    /// Every JSON path of a report with every optional part present.
    fn paths(value: &Value, path: &str, out: &mut Vec<String>) {
        match value {
            Value::Object(fields) => {
                for (name, value) in fields {
                    let sub = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
                    paths(value, &sub, out);
                }
            }
            Value::Array(items) => {
                for item in items {
                    paths(item, path, out);
                }
            }
            _ => out.push(path.to_owned()),
        }
    }

    #[test]
    fn every_field_of_stats_json_has_exactly_one_metric() {
        let json = serde_json::to_value(StatsReport::sample_full()).unwrap();
        let mut found = Vec::new();
        paths(&json, "", &mut found);
        found.retain(|p| p != "links.name");
        for path in &found {
            assert_eq!(SPECS.iter().filter(|s| s.path == path).count(), 1, "{path}");
        }
        for spec in SPECS {
            assert!(found.iter().any(|p| p == spec.path), "{} is in no report", spec.path);
        }
        let mut names: Vec<_> = SPECS
            .iter()
            .filter_map(|s| match s.metric {
                Metric::Counter(n) | Metric::Gauge(n) => Some(n),
                _ => None,
            })
            .collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all, "two fields share a metric name");
    }

    #[test]
    fn docs_metrics_md_lists_every_metric() {
        let doc = include_str!("../docs/metrics.md");
        for spec in SPECS {
            let name = match spec.metric {
                Metric::Counter(n) => format!("`ctsync_{n}_total`"),
                Metric::Gauge(n) => format!("`ctsync_{n}`"),
                Metric::Dropped(reason) => format!("`{reason}`"),
                Metric::InHistogram => continue,
            };
            assert!(doc.contains(&name), "docs/metrics.md does not list {name}");
        }
        for name in
            ["ctsync_protocol_dropped_total", "ctsync_defer_hold_seconds", "ctsync_commit_seconds"]
        {
            assert!(doc.contains(&format!("`{name}`")), "docs/metrics.md does not list {name}");
        }
    }

    #[test]
    fn types_units_reasons_and_histograms() {
        let text = render(&StatsReport::sample_full());
        for line in [
            "# TYPE ctsync_uptime_seconds gauge",
            "# TYPE ctsync_ready gauge",
            "ctsync_ready 1",
            "ctsync_synced 1",
            "# TYPE ctsync_internal_active gauge",
            "ctsync_internal_active 123456",
            "# TYPE ctsync_internal_created_total counter",
            "ctsync_internal_created_total 200000",
            "# TYPE ctsync_netlink_rcvbuf_bytes gauge",
            "ctsync_netlink_rcvbuf_bytes 8388608",
            "# TYPE ctsync_protocol_dropped_total counter",
            "ctsync_protocol_dropped_total{reason=\"bad_crc\"} 4",
            "ctsync_protocol_dropped_total{reason=\"truncated\"} 1",
            "ctsync_protocol_resend_queue_len 17",
            "# TYPE ctsync_links_up gauge",
            "ctsync_links_up{link=\"udp 10.255.0.2:3780 dev sync0\"} 1",
            "ctsync_links_up{link=\"udp 10.254.0.2:3780 dev sync1\"} 0",
            "ctsync_links_sent_bytes_total{link=\"udp 10.255.0.2:3780 dev sync0\"} 1000",
            "# TYPE ctsync_defer_hold_seconds histogram",
            "ctsync_defer_hold_seconds_bucket{le=\"6.4e-05\"} 2",
            "ctsync_defer_hold_seconds_bucket{le=\"+Inf\"} 3",
            "ctsync_defer_hold_seconds_count 3",
            "# TYPE ctsync_commit_seconds histogram",
            "ctsync_commit_seconds_bucket{le=\"0.05\"} 1",
            "ctsync_commit_seconds_count 1",
            "ctsync_expectations_internal_active 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // One family per metric even with two links; no drop counter of
        // its own; no microseconds.
        assert_eq!(text.matches("# TYPE ctsync_links_sent_bytes_total").count(), 1);
        assert!(!text.contains("drop_bad_crc"), "{text}");
        assert!(!text.contains("_us"), "{text}");
        assert!(!text.contains("ctsync_ready_total"), "{text}");
        for line in text.lines().filter(|l| l.starts_with("# HELP")) {
            assert!(line.len() > 30 && !line.contains("-s --json:"), "{line}");
        }
    }

    #[test]
    fn requests_are_recognised_once_complete() {
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Request::Metrics { head: false })
        );
        assert_eq!(
            parse_request(b"HEAD /metrics?x=1 HTTP/1.0\n\n"),
            Some(Request::Metrics { head: true })
        );
        assert_eq!(parse_request(b"GET / HTTP/1.0\r\n\r\n"), Some(Request::NotFound));
        assert_eq!(parse_request(b"POST /metrics HTTP/1.0\r\n\r\n"), Some(Request::BadMethod));
        assert_eq!(parse_request(b"GET /metrics\r\n\r\n"), Some(Request::Malformed));
        assert_eq!(parse_request(b"\xff\xfe\r\n\r\n"), Some(Request::Malformed));
    }

    #[test]
    fn responses_carry_length_and_close() {
        let ok = respond(Request::Metrics { head: false }, || "a 1\n".into());
        let ok = String::from_utf8(ok).unwrap();
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 4\r\n"), "{ok}");
        assert!(ok.contains("Connection: close\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\na 1\n"), "{ok}");
        let head = String::from_utf8(respond(Request::Metrics { head: true }, || "a 1\n".into()));
        assert!(head.unwrap().ends_with("Content-Length: 4\r\nConnection: close\r\n\r\n"));
        let missing = respond(Request::NotFound, || unreachable!("rendered for a 404"))
            .starts_with(b"HTTP/1.0 404");
        assert!(missing);
    }
}
