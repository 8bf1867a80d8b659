//! The core's counters, as `-s` and the metrics show them.

/// Counters, as `-s` and the metrics show them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FtfwStats {
    /// Datagrams built by `poll_transmit`.
    pub datagrams_sent: u64,
    /// Datagrams handed to `handle_datagram`.
    pub datagrams_received: u64,
    /// Messages sent (all types).
    pub msgs_sent: u64,
    /// Messages decoded from valid datagrams.
    pub msgs_received: u64,
    /// Flow messages sent (NEW, UPDATE, DESTROY), resends included.
    pub flow_msgs_sent: u64,
    /// Flow messages accepted from the peer.
    pub flow_msgs_accepted: u64,
    /// Messages put back in the transmit queue after a loss.
    pub resent: u64,
    /// Lost messages not resent because a newer change was pending.
    pub resend_superseded: u64,
    /// ACKs sent.
    pub acks_sent: u64,
    /// ACKs received.
    pub acks_received: u64,
    /// NACKs sent.
    pub nacks_sent: u64,
    /// NACKs received.
    pub nacks_received: u64,
    /// Keepalive datagrams (ALIVE, or the ACK that stands for it).
    pub alive_sent: u64,
    /// Gaps seen in the peer's sequence (each answered by a NACK).
    pub gaps: u64,
    /// Dropped: shorter than its header or length fields.
    pub drop_truncated: u64,
    /// Dropped: not our magic number.
    pub drop_bad_magic: u64,
    /// Dropped: unsupported version.
    pub drop_bad_version: u64,
    /// Dropped: CRC mismatch.
    pub drop_bad_crc: u64,
    /// Dropped datagrams (bad framing) or skipped messages (bad body,
    /// unknown type).
    pub drop_malformed: u64,
    /// Dropped: the peers disagree on authentication (an authenticated
    /// datagram and no key here, or a key here and no MAC) or on
    /// encryption (`sync.auth.encrypt` on one side only).
    pub drop_auth: u64,
    /// Dropped: MAC mismatch (forged, or made with another key).
    pub drop_bad_mac: u64,
    /// Dropped: authenticated with a key id we do not have.
    pub drop_unknown_key: u64,
    /// Dropped: a stale handshake answer (a HELLO_BACK that does not echo
    /// our current session and round), or a datagram of the tracked session
    /// whose sequenced messages were all accepted before (a recording
    /// replayed, or a duplicate), or, with keys, whose STAMP counter the
    /// replay window has seen or left behind.
    pub drop_replay: u64,
    /// Dropped: from a session we have no handshake with.
    pub drop_unknown_session: u64,
    /// Sequenced messages older than the expected seq (late or duplicate).
    pub drop_late: u64,
    /// Datagrams whose seq was more than `max_seq_jump` ahead (ignored).
    pub drop_far_ahead: u64,
    /// ACK/NACK ranges that made no sense (ignored).
    pub bad_acks: u64,
    /// Times the peer acknowledged seqs we had not sent yet, and we jumped
    /// our sequence past them.
    pub seq_jumps: u64,
    /// Local changes absorbed by coalescing.
    pub coalesced: u64,
    /// NEW+DESTROY pairs dropped before sending.
    pub cancelled: u64,
    /// Times `poll_transmit` stopped because the resend queue was full, or
    /// because a restarted peer had not yet acknowledged enough to take
    /// more (docs/PROTOCOL.md, "Resend queue").
    pub backpressure: u64,
    /// Gauge: pending distinct changes in the transmit queue.
    pub tx_queue_len: u64,
    /// Gauge: entries in the resend queue.
    pub resend_queue_len: u64,
    /// Transitions to up (first contact included).
    pub peer_up: u64,
    /// Transitions to down (peer_timeout of silence).
    pub peer_down: u64,
    /// 1 while replication is stalled (see
    /// [`FtfwConfig::stall_timeout`](super::FtfwConfig::stall_timeout)).
    pub stalled: u64,
    /// Stalls begun.
    pub stalls: u64,
    /// HELLOs of another peer session while one was live, answered with a
    /// probe instead of a new handshake.
    pub hello_probes: u64,
    /// conntrackd dialect: times the peer's sequence was taken again after
    /// only refused messages came for half the peer timeout.
    pub rx_rebases: u64,
    /// conntrackd dialect: NACKs naming flow messages the peer had
    /// acknowledged (a forged ACK, or a peer that lost them), each
    /// answered with our whole table.
    pub nacks_of_acked: u64,
    /// conntrackd dialect: the resend queue reached twice its capacity while
    /// the peer acknowledged nothing; what it held was queued to be sent
    /// again.
    pub resend_resets: u64,
    /// conntrackd dialect: late messages whose seq we had taken for a
    /// different message (one of the two was forged), each answered with a
    /// request for the peer's table (at most one per half peer timeout).
    pub rx_collisions: u64,
    /// New peer session ids seen after a first one.
    pub peer_restarts: u64,
    /// Bulks we started.
    pub bulks_sent: u64,
    /// BULK_ENDs accepted from the peer.
    pub bulks_received: u64,
    /// RESYNC_REQUESTs sent.
    pub resync_requests_sent: u64,
    /// RESYNC_REQUESTs accepted from the peer.
    pub resync_requests_received: u64,
    /// Complete DIGESTs sent.
    pub digests_sent: u64,
    /// Digests not sent when due because data was waiting (retried soon).
    pub digests_deferred: u64,
    /// Complete and consistent DIGESTs received (handed over for comparison).
    pub digests_received: u64,
    /// DIGESTs received but not compared: a gap since the peer's oldest
    /// unacknowledged message, a bulk or repair still under way, or parts
    /// missing.
    pub digests_skipped: u64,
    /// REPAIR_REQUESTs sent.
    pub repair_requests_sent: u64,
    /// REPAIR_REQUESTs accepted from the peer.
    pub repair_requests_received: u64,
    /// FLOW_REPAIR messages sent, resends included.
    pub repair_flows_sent: u64,
    /// REPAIR_ENDs accepted from the peer.
    pub repair_ends_received: u64,
    /// Expectation messages (EXP_NEW, EXP_DESTROY) sent, resends included.
    pub exp_msgs_sent: u64,
    /// Expectation messages accepted from the peer.
    pub exp_msgs_accepted: u64,
}
