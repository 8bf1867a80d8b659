//! The FTFW protocol state machine: no sockets, no clock, no randomness.
//!
//! [`Ftfw`] is sans-IO in the manner of quinn-proto. Its API has four kinds
//! of methods:
//! - inputs: [`Ftfw::handle_datagram`], [`Ftfw::handle_timeout`];
//! - commands: [`Ftfw::queue`], [`Ftfw::bulk_send`], [`Ftfw::request_resync`],
//!   and for anti-entropy [`Ftfw::send_digest`], [`Ftfw::request_repair`],
//!   [`Ftfw::repair_send`];
//! - outputs: [`Ftfw::poll_transmit`], [`Ftfw::poll_event`],
//!   [`Ftfw::poll_timeout`];
//! - getters: [`Ftfw::stats`], [`Ftfw::peer_state`], [`Ftfw::is_synced`],
//!   and for deferred packets [`Ftfw::acked_before`], [`Ftfw::tx_is_empty`]
//!   (with the command [`Ftfw::request_ack`]).
//!
//! **Drain order**: after any input or command, call `poll_event` until
//! `None` (applying each event; a [`PeerEvent::BulkRequested`] is answered
//! with `bulk_send`), then `poll_transmit` until it returns `None` (sending
//! each datagram), then arm a timer for `poll_timeout` and call
//! `handle_timeout` when it expires. Events first, so that the ACKs sent
//! go out after what they acknowledge was applied (the peer's deferred
//! packets wait for them); the core itself accepts either order.
//!
//! The rules (sequencing, ACK, NACK, bulk, handshake) are written in
//! `docs/PROTOCOL.md`; the tests cite them.

mod anti_entropy;
mod compat;
mod queues;
mod replay;
mod seq;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use seq::Seq;

use crate::digest::{RANGES, RangeSet};
use crate::expect::Expectation;
use crate::flow::{Flow, FlowKey};
use crate::wire::conntrackd::{self, ConntrackdCodec};
use crate::wire::native::{self, NativeCodec};
use crate::wire::{Codec, DatagramHeader, DialectCodec, Message, MessageRef, Received, WireError};
use queues::{Front, Item, ResendQueue, TxQueue};
use replay::ReplayWindow;

/// Which protocol the core speaks (docs/PROTOCOL.md); the config's
/// `sync.wire`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// ctsync's own format and rules.
    #[default]
    Native,
    /// conntrackd 1.4's FTFW, to pair with a real conntrackd: every message
    /// sequenced, HELLO as a flag, no BULK_END ("conntrackd
    /// compatibility").
    Conntrackd,
}

/// Tunables of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FtfwConfig {
    /// The protocol spoken; it also chooses the wire codec.
    pub dialect: Dialect,
    /// Most sent messages held awaiting acknowledgment; when full, sending
    /// new data pauses (backpressure), nothing is dropped.
    pub resend_queue: usize,
    /// The receiver acknowledges every `ack_window` accepted messages.
    pub ack_window: u32,
    /// An idle side sends one ALIVE (with its latest ACK) this often.
    pub alive_interval: Duration,
    /// No datagram from the peer for this long: the peer is down.
    pub peer_timeout: Duration,
    /// Largest datagram built.
    pub max_datagram: usize,
    /// A sequence number further ahead of the expected one than this is
    /// ignored (a corrupted or forged datagram must not derail tracking).
    pub max_seq_jump: u32,
    /// Native dialect: the shared keys that authenticate every datagram
    /// (the first signs what we send, any of them is accepted). Empty:
    /// no authentication. The conntrackd dialect ignores them.
    pub auth_keys: Vec<native::AuthKey>,
    /// Native dialect with keys: encrypt what we send and refuse what is
    /// not encrypted (ChaCha20-Poly1305, docs/SECURITY.md).
    pub encrypt: bool,
    /// Native dialect: send a DIGEST of our table this often, so that the
    /// peer finds and repairs drift (docs/PROTOCOL.md, "Anti-entropy").
    /// Zero: off. The conntrackd dialect has no digests.
    pub anti_entropy_interval: Duration,
    /// The peer is alive but the sequenced stream makes no progress for
    /// this long (our data unacknowledged, or only refused messages from
    /// it): replication has stalled, which the daemon reports loudly.
    pub stall_timeout: Duration,
}

impl Default for FtfwConfig {
    fn default() -> FtfwConfig {
        FtfwConfig {
            dialect: Dialect::Native,
            resend_queue: 131072,
            ack_window: 300,
            alive_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(4),
            max_datagram: native::DEFAULT_MAX_DATAGRAM,
            max_seq_jump: 131072,
            auth_keys: Vec::new(),
            encrypt: false,
            anti_entropy_interval: Duration::ZERO,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

/// A change of our internal cache, to be sent to the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalChange {
    /// The kernel created this flow: the peer cannot know it yet, so a
    /// DESTROY before it was sent cancels both.
    New(Flow),
    /// The flow's current state (created or changed).
    Upsert(Flow),
    /// The flow is gone.
    Destroy(FlowKey),
    /// An expectation's current state.
    ExpUpsert(Box<Expectation>),
    /// The expectation is gone.
    ExpDestroy(Box<Expectation>),
}

/// Why [`Ftfw::handle_datagram`] refused a whole datagram. Each is also
/// counted in [`FtfwStats`] (the `drop_*` named on each variant); messages
/// dropped one by one (`drop_late`, `drop_unknown_session`) are not
/// refusals of the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `drop_auth`: one side authenticates (or encrypts) and the other not.
    AuthMismatch,
    /// `drop_unknown_key`: a key id not configured here.
    UnknownKey,
    /// `drop_bad_mac`: the MAC (or AEAD tag) does not match.
    BadMac,
    /// `drop_bad_crc`.
    BadCrc,
    /// `drop_malformed`, `drop_truncated`, `drop_bad_magic`,
    /// `drop_bad_version`: it does not parse.
    Malformed,
    /// `drop_replay`: its datagram counter was seen before or is too old
    /// (native, with keys), all its data was received before, or a
    /// handshake answer of another round or incarnation.
    Replay,
}

/// What the peer told us, for the external cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// Store this state; `stamp` is the message's sequence number unwrapped
    /// to 64 bits (monotonic, also across peer restarts).
    Upsert { flow: Flow, stamp: u64 },
    /// Remove this flow.
    Destroy { key: FlowKey },
    /// Store this expectation; `stamp` as for [`PeerEvent::Upsert`].
    ExpUpsert { exp: Box<Expectation>, stamp: u64 },
    /// Remove the expectation with this expected tuple.
    ExpDestroy { key: FlowKey },
    /// End of a bulk from the peer: remove every external entry whose stamp
    /// < floor.
    BulkEnd { floor: u64 },
    /// The peer asked for our whole table, or (conntrackd dialect) NACKed
    /// flow messages it had acknowledged: the caller must call
    /// [`Ftfw::bulk_send`] with the internal cache.
    BulkRequested,
    /// The peer is heard from again (or for the first time).
    PeerUp,
    /// Nothing heard from the peer for `peer_timeout`.
    PeerDown,
    /// The peer is alive, but for `stall_timeout` nothing we sent was
    /// acknowledged (`tx`) or nothing it sent was accepted (`rx`).
    Stalled { tx: bool, rx: bool },
    /// A stall ended: the stream moves again.
    StallEnded,
    /// Native dialect: a HELLO from `session` while another session of the
    /// peer is live. The live one goes on; our HELLO asks the new one to
    /// prove itself (a restarted peer does; a recording cannot).
    HelloProbe { session: u32 },
    /// conntrackd dialect: only refused messages (late or far ahead) came
    /// from the peer for half the peer timeout, as after a forged HELLO:
    /// its sequence is tracked again from its latest message and both
    /// sides send their tables.
    Rebased,
    /// The peer restarted (new session id). Its bulk will sweep what it no
    /// longer has; nothing needs to be flushed.
    PeerRestarted,
    /// Anti-entropy: time to send our digests. The caller answers with
    /// [`Ftfw::send_digest`] and the digests of the internal cache.
    DigestDue,
    /// Anti-entropy: the peer's digests of its whole table, consistent with
    /// everything it sent before (all of it applied here). The caller
    /// compares them with the external cache's and calls
    /// [`Ftfw::request_repair`] with the ranges that differ.
    Digest { digests: Vec<u64> },
    /// Anti-entropy: the peer's copy of these ranges of our table differs.
    /// The caller answers with [`Ftfw::repair_send`] and the internal
    /// flows of these ranges.
    RepairRequested { ranges: RangeSet },
    /// A flow resent by a repair: store it as [`PeerEvent::Upsert`]; if
    /// that changes the external cache, it had drifted.
    RepairUpsert { flow: Flow, stamp: u64 },
    /// End of a repair: remove every external entry of these ranges whose
    /// stamp < floor (the peer no longer has them).
    RepairEnd { floor: u64, ranges: RangeSet },
}

/// Handshake phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Sending HELLO, waiting for a HELLO_BACK that echoes our session.
    HelloSent,
    /// The peer knows our session; data flows.
    Established,
    /// Established, but the peer has been silent for `peer_timeout`.
    Silent,
}

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
    /// Times `poll_transmit` stopped because the resend queue was full.
    pub backpressure: u64,
    /// Gauge: pending distinct changes in the transmit queue.
    pub tx_queue_len: u64,
    /// Gauge: entries in the resend queue.
    pub resend_queue_len: u64,
    /// Transitions to up (first contact included).
    pub peer_up: u64,
    /// Transitions to down (peer_timeout of silence).
    pub peer_down: u64,
    /// 1 while replication is stalled (see [`FtfwConfig::stall_timeout`]).
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

/// Receive-side tracking of one peer session.
#[derive(Clone, Copy, Debug)]
struct Rx {
    session: u32,
    /// Next seq we accept.
    expected: Seq,
    /// The stamp `expected` gets when accepted.
    expected_stamp: u64,
    /// The stamp of the first seq tracked in this session: a bulk that
    /// started before it does not answer a request of ours.
    base_stamp: u64,
    /// First seq of the run accepted since the last gap: ACKs cover
    /// `[run_start, expected - 1]`.
    run_start: Seq,
    /// Accepted since the last ACK was sent.
    since_ack: u32,
    /// An ACK must go out with the next datagram.
    ack_due: bool,
    /// Native dialect with keys: the session's datagram counters, from its
    /// first STAMP on; from then on every datagram must carry one.
    window: Option<ReplayWindow>,
}

/// Timers, a table indexed by this enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    /// Send ALIVE (or HELLO while handshaking).
    Keepalive = 0,
    /// Declare the peer down.
    PeerTimeout = 1,
    /// Anti-entropy: send our digests.
    AntiEntropy = 2,
}

/// The FTFW protocol core for one peer.
pub struct Ftfw {
    cfg: FtfwConfig,
    codec: DialectCodec,
    session: u32,
    phase: PeerState,
    next_seq: Seq,
    tx: TxQueue,
    resend: ResendQueue,
    rx: Option<Rx>,
    /// Stamp base for the next peer session.
    next_epoch_stamp: u64,
    /// A HELLO to answer: its session and round.
    hello_back: Option<(u32, u32)>,
    /// Our handshake attempt; bumped each time we restart the handshake.
    hello_round: u32,
    /// The untracked peer session whose HELLO the current round answers.
    hello_from: Option<u32>,
    /// ACK and NACK ranges produced by gaps, sent before anything else.
    ranges: VecDeque<Range>,
    /// Recent runs closed by a gap, with how many more times their ACK is
    /// repeated alongside the periodic ACK.
    closed_runs: VecDeque<(Seq, Seq, u8)>,
    /// We sent a RESYNC_REQUEST and have not yet seen the BULK_END.
    awaiting_bulk: bool,
    /// Speaking conntrackd's dialect.
    compat: bool,
    /// conntrackd dialect: the peer's messages still carry HELLO (it has
    /// not yet seen our HELLO_BACK), so another HELLO is the same start.
    peer_in_hello: bool,
    /// conntrackd dialect: the seq after the last far-ahead message. A
    /// message that continues it shows that the peer's sequence really
    /// moved on (its keepalives take seqs during a partition).
    far_ahead: Option<Seq>,
    /// conntrackd dialect: the message being admitted continues a
    /// far-ahead run and may jump.
    jump_ok: bool,
    peer_alive: bool,
    last_tx: Option<Instant>,
    /// When the first message refused since the last accepted one came.
    rx_refused_since: Option<Instant>,
    /// conntrackd dialect: what was taken at each recent seq, by
    /// `seq % TAKEN_SLOTS` ([`compat::fingerprint`]), to tell a late copy
    /// from a different message under the same seq.
    taken: Vec<Option<(Seq, u64)>>,
    /// conntrackd dialect: when a collision last asked for the peer's table.
    collision_resync_at: Option<Instant>,
    /// The oldest unacknowledged seq, and since when it has been.
    tx_progress: (Seq, Instant),
    /// Stalled as last reported.
    stalled: bool,
    /// Native dialect with keys: every datagram starts with a STAMP.
    stamping: bool,
    /// The counter of the last datagram sent (STAMP).
    tx_counter: u64,
    /// Established with a live peer, another peer session said HELLO: our
    /// HELLOs go out while data keeps flowing to the live session, until a
    /// HELLO_BACK of our current round comes.
    probing: bool,
    /// Anti-entropy: digests to send, and how many of them went already.
    pending_digest: Option<(Vec<u64>, usize)>,
    /// Anti-entropy: the parts of a DIGEST received so far, and the seq the
    /// next part must have.
    digest_parts: Option<(Seq, Vec<u64>)>,
    /// Anti-entropy: REPAIR_REQUESTs sent whose REPAIR_END has not come.
    repairs_outstanding: u32,
    timers: [Option<Instant>; 3],
    /// The next datagram with data asks for a prompt ACK (deferred packets
    /// wait for it).
    ack_wanted: bool,
    events: VecDeque<PeerEvent>,
    decoded: Vec<Received>,
    /// Why the datagram being handled was refused, if it was.
    refused: Option<Refusal>,
    lost: Vec<Item>,
    stats: FtfwStats,
}

impl Ftfw {
    /// A core with our `session_id` (random per start) and first sequence
    /// number `initial_seq` (random), speaking the format of
    /// `cfg.dialect`.
    pub fn new(cfg: FtfwConfig, session_id: u32, initial_seq: u32, now: Instant) -> Ftfw {
        let codec = match cfg.dialect {
            // The nonce counter starts at a random multiple of 2^32, so
            // that two starts with the same session id still do not meet
            // (docs/SECURITY.md, "Encryption").
            Dialect::Native if cfg.encrypt => DialectCodec::Native(NativeCodec::encrypting(
                cfg.auth_keys.clone(),
                u64::from(initial_seq) << 32,
            )),
            Dialect::Native => DialectCodec::Native(NativeCodec::with_keys(cfg.auth_keys.clone())),
            Dialect::Conntrackd => DialectCodec::Conntrackd(ConntrackdCodec),
        };
        Ftfw::with_codec(cfg, session_id, initial_seq, now, codec)
    }

    /// Replace the authentication keys (a key rotation) without touching
    /// sequence tracking or queues, so sync goes on. The first key signs
    /// what we send; every key is accepted. Returns false, changing
    /// nothing, for the conntrackd dialect, which has no authentication.
    pub fn set_auth_keys(&mut self, keys: Vec<native::AuthKey>) -> bool {
        let DialectCodec::Native(codec) = &mut self.codec else {
            return false;
        };
        codec.set_auth_keys(keys.clone());
        self.stamping = !keys.is_empty();
        self.cfg.auth_keys = keys;
        true
    }

    /// As [`Ftfw::new`] with a codec the caller built.
    pub fn with_codec(
        cfg: FtfwConfig,
        session_id: u32,
        initial_seq: u32,
        now: Instant,
        codec: DialectCodec,
    ) -> Ftfw {
        let next_seq = Seq(initial_seq);
        let compat = cfg.dialect == Dialect::Conntrackd;
        let mut resend = ResendQueue::new(cfg.resend_queue, next_seq);
        if compat {
            resend.remember_acked();
        }
        let mut core = Ftfw {
            cfg,
            codec,
            session: session_id,
            phase: PeerState::HelloSent,
            next_seq,
            tx: TxQueue::default(),
            resend,
            rx: None,
            next_epoch_stamp: 1 << 32,
            hello_back: None,
            hello_round: 1,
            hello_from: None,
            ranges: VecDeque::new(),
            closed_runs: VecDeque::new(),
            awaiting_bulk: false,
            compat,
            peer_in_hello: false,
            far_ahead: None,
            jump_ok: false,
            peer_alive: false,
            last_tx: None,
            rx_refused_since: None,
            taken: Vec::new(),
            collision_resync_at: None,
            tx_progress: (next_seq, now),
            stalled: false,
            stamping: false,
            tx_counter: 0,
            probing: false,
            pending_digest: None,
            digest_parts: None,
            repairs_outstanding: 0,
            timers: [None; 3],
            ack_wanted: false,
            events: VecDeque::new(),
            decoded: Vec::new(),
            refused: None,
            lost: Vec::new(),
            stats: FtfwStats::default(),
        };
        core.timers[Timer::Keepalive as usize] = Some(now);
        core.stamping = !core.compat && !core.cfg.auth_keys.is_empty();
        if core.anti_entropy() {
            core.timers[Timer::AntiEntropy as usize] = Some(now + core.cfg.anti_entropy_interval);
        }
        core
    }

    // ----- getters -------------------------------------------------------

    /// Counters.
    pub fn stats(&self) -> &FtfwStats {
        &self.stats
    }

    /// Handshake phase.
    pub fn peer_state(&self) -> PeerState {
        match self.phase {
            PeerState::Established if !self.peer_alive => PeerState::Silent,
            p => p,
        }
    }

    /// Our session id.
    pub fn session_id(&self) -> u32 {
        self.session
    }

    /// The peer session we track, 0 before the first handshake.
    pub fn peer_session(&self) -> u32 {
        self.rx.map_or(0, |rx| rx.session)
    }

    /// The seq the next sequenced message will get.
    pub fn next_seq(&self) -> u32 {
        self.next_seq.0
    }

    /// Handshake done, no gap waiting to be reported, nothing unsent or
    /// unacknowledged, and the last bulk we asked the peer for is complete.
    pub fn is_synced(&self) -> bool {
        self.phase == PeerState::Established
            && self.rx.is_some()
            && self.ranges.is_empty()
            && self.tx.is_empty()
            && self.resend.live_data() == 0
            && !self.awaiting_bulk
    }

    // ----- inputs --------------------------------------------------------

    /// Process one datagram from the peer.
    /// Returns why the datagram was refused, if it was (the daemon logs
    /// it); a refused datagram changes nothing but a counter.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) -> Option<Refusal> {
        self.stats.datagrams_received += 1;
        self.refused = None;
        let mut decoded = std::mem::take(&mut self.decoded);
        decoded.clear();
        match self.codec.decode(bytes, &mut decoded) {
            Ok(_) if self.compat => self.process_compat(now, &mut decoded),
            Ok(hdr) => self.process(now, &hdr, &mut decoded),
            Err(e) => self.count_error(e),
        }
        decoded.clear();
        self.decoded = decoded;
        self.check_stall(now);
        self.update_gauges();
        self.refused.take()
    }

    /// Fire expired timers. A spurious call does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.check_stall(now);
        if let Some(t) = self.timers[Timer::AntiEntropy as usize]
            && now >= t
        {
            self.timers[Timer::AntiEntropy as usize] = Some(now + self.cfg.anti_entropy_interval);
            if self.phase == PeerState::Established && self.rx.is_some() {
                self.events.push_back(PeerEvent::DigestDue);
            }
        }
        if let Some(t) = self.timers[Timer::PeerTimeout as usize]
            && now >= t
        {
            self.timers[Timer::PeerTimeout as usize] = None;
            if self.peer_alive {
                self.peer_alive = false;
                self.stats.peer_down += 1;
                self.events.push_back(PeerEvent::PeerDown);
            }
            if self.probing {
                // The live session fell silent: the claimed new one may
                // be the real peer; shake hands as after a start.
                self.probing = false;
                self.phase = PeerState::HelloSent;
            }
        }
    }

    // ----- commands ------------------------------------------------------

    /// Queue a local change for the peer.
    pub fn queue(&mut self, change: LocalChange) {
        let item = match change {
            LocalChange::New(flow) => Item::Upsert { flow, new: true },
            LocalChange::Upsert(flow) => Item::Upsert { flow, new: false },
            LocalChange::Destroy(key) => Item::Destroy(key),
            LocalChange::ExpUpsert(exp) => Item::ExpUpsert(exp),
            LocalChange::ExpDestroy(exp) => Item::ExpDestroy(exp),
        };
        self.tx.push_change(item);
        self.update_gauges();
    }

    /// Send our whole table, then a BULK_END that lets the peer sweep what
    /// we no longer have (see docs/PROTOCOL.md, "Bulk").
    pub fn bulk_send<'a>(&mut self, flows: impl IntoIterator<Item = &'a Flow>) {
        self.bulk_send_with_expectations(flows, []);
    }

    /// As [`Ftfw::bulk_send`], with our expectations after the flows (their
    /// masters), before the BULK_END.
    pub fn bulk_send_with_expectations<'a, 'b>(
        &mut self,
        flows: impl IntoIterator<Item = &'a Flow>,
        exps: impl IntoIterator<Item = &'b Expectation>,
    ) {
        let start = self.next_seq;
        for f in flows {
            self.tx.push_change(Item::Upsert { flow: f.clone(), new: false });
        }
        for e in exps {
            self.tx.push_change(Item::ExpUpsert(Box::new(e.clone())));
        }
        // conntrackd has no BULK_END (and cannot parse one).
        if !self.compat {
            self.tx.push_marker(Item::BulkEnd(start), false);
        }
        self.stats.bulks_sent += 1;
        self.update_gauges();
    }

    /// Ask the peer for its whole table.
    pub fn request_resync(&mut self) {
        if !self.tx.has_resync() {
            self.tx.push_marker(Item::Resync, false);
        }
        // conntrackd's answer has no end marker to wait for.
        self.awaiting_bulk = !self.compat;
        self.update_gauges();
    }

    // ----- outputs -------------------------------------------------------

    /// Every sequenced message before this seq was acknowledged by the
    /// peer, or was lost and counted in [`FtfwStats::resent`] (its change
    /// goes again with a new seq).
    pub fn acked_before(&self) -> Seq {
        self.resend.first()
    }

    /// True when every queued change has been given a sequence number.
    pub fn tx_is_empty(&self) -> bool {
        self.tx.is_empty()
    }

    /// Have the next datagram that carries data ask the peer for its ACK at
    /// once rather than at the end of its window (native dialect; the
    /// conntrackd dialect has no such flag).
    pub fn request_ack(&mut self) {
        self.ack_wanted = true;
    }

    /// Build the next datagram into `buf`; `None` when nothing is due.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if self.compat {
            return self.poll_transmit_compat(now, buf);
        }
        let max = buf.len().min(self.cfg.max_datagram).min(usize::from(u16::MAX));
        let header = self.codec.header_len();
        let limit = max.checked_sub(self.codec.trailer_len())?;
        if limit < header {
            return None;
        }
        let keepalive_due = self.timers[Timer::Keepalive as usize].is_some_and(|t| now >= t);
        let first_seq = self.next_seq;
        // The STAMP goes first, written once the datagram is known to go.
        let stamp = MessageRef::Stamp { counter: 0, peer_session: 0 };
        let stamp_len = if self.stamping { self.codec.message_len(&stamp) } else { 0 };
        let mut dg = Builder { at: header + stamp_len, limit, count: 0, seq: first_seq };

        if (self.phase == PeerState::HelloSent || self.probing) && keepalive_due {
            let hello = MessageRef::Hello { session: self.session, round: self.hello_round };
            dg.push(&*self.codec, &hello, buf);
        }
        if let Some((session, round)) = self.hello_back
            && dg.push(&*self.codec, &MessageRef::HelloBack { session, round }, buf)
        {
            self.hello_back = None;
        }
        self.push_ranges(&mut dg, buf);
        if let Some(rx) = &mut self.rx
            && (rx.ack_due || keepalive_due)
        {
            // Runs closed by recent gaps are acknowledged again a few times,
            // oldest first, so that one lost ACK does not make the sender
            // resend a whole run that arrived.
            for run in self.closed_runs.iter_mut() {
                let msg = MessageRef::Ack { from: run.0.0, to: run.1.0 };
                if run.2 > 0 && dg.push(&*self.codec, &msg, buf) {
                    run.2 -= 1;
                    self.stats.acks_sent += 1;
                }
            }
            self.closed_runs.retain(|run| run.2 > 0);
            let msg = MessageRef::Ack { from: rx.run_start.0, to: rx.expected.minus(1).0 };
            if dg.push(&*self.codec, &msg, buf) {
                rx.ack_due = false;
                rx.since_ack = 0;
                self.stats.acks_sent += 1;
            }
        }
        let mut blocked = false;
        if self.phase == PeerState::Established {
            blocked = self.push_data(&mut dg, buf);
        }
        if dg.count == 0 {
            if !keepalive_due {
                return None;
            }
            dg.push(&*self.codec, &MessageRef::Alive, buf);
        }
        if keepalive_due {
            self.stats.alive_sent += 1;
        }
        let sequenced = dg.seq.diff(first_seq) > 0;
        let mut flags = 0;
        // Ask for a prompt ACK when the resend queue fills or waits, but
        // only from datagrams that carry data or from the keepalive timer:
        // an ACK sent in reply never asks for one, so no ping-pong.
        if (sequenced || keepalive_due)
            && (blocked || self.resend.len() * 2 >= self.resend.capacity() || !sequenced)
            && self.resend.live() > 0
        {
            flags |= native::flags::ACK_REQUEST;
        }
        if sequenced && self.ack_wanted {
            self.ack_wanted = false;
            flags |= native::flags::ACK_REQUEST;
        }
        if self.stamping {
            self.tx_counter += 1;
            let peer_session = self.rx.map_or(0, |rx| rx.session);
            let stamp = MessageRef::Stamp { counter: self.tx_counter, peer_session };
            self.codec.emit_message(&stamp, 0, &mut buf[header..header + stamp_len]).ok()?;
            dg.count += 1;
        }
        self.finish_datagram(now, flags, first_seq, &dg, buf)
    }

    /// The next event for the caller.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` (and `poll_transmit`) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().flatten().copied().chain(self.stall_deadline()).min()
    }

    /// Since when every sequenced message of the peer was refused (as late
    /// or far ahead), if none was accepted since.
    pub fn refusing_since(&self) -> Option<Instant> {
        self.rx_refused_since
    }

    /// True while replication is stalled ([`PeerEvent::Stalled`]).
    pub fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// When the stream becomes stalled if nothing moves before.
    fn stall_deadline(&self) -> Option<Instant> {
        if self.stalled || !self.peer_alive {
            return None;
        }
        let tx = (self.resend.live_data() > 0).then_some(self.tx_progress.1);
        tx.into_iter().chain(self.rx_refused_since).min().map(|t| t + self.cfg.stall_timeout)
    }

    /// Note progress of the stream both ways, and report a stall when it
    /// begins or ends.
    fn check_stall(&mut self, now: Instant) {
        let oldest = self.resend.first();
        let outstanding = self.resend.live_data() > 0;
        if !outstanding || oldest != self.tx_progress.0 {
            self.tx_progress = (oldest, now);
        }
        let stuck = |since: Instant| now.saturating_duration_since(since) >= self.cfg.stall_timeout;
        let tx = self.peer_alive && outstanding && stuck(self.tx_progress.1);
        let rx = self.peer_alive && self.rx_refused_since.is_some_and(stuck);
        let stalled = tx || rx;
        if stalled && !self.stalled {
            self.stats.stalls += 1;
            self.events.push_back(PeerEvent::Stalled { tx, rx });
        } else if !stalled && self.stalled {
            self.events.push_back(PeerEvent::StallEnded);
        }
        self.stalled = stalled;
        self.stats.stalled = u64::from(stalled);
    }

    // ----- sending -------------------------------------------------------

    /// Append sequenced messages from the transmit queue. Returns true when
    /// sending stopped for backpressure or at a bulk barrier.
    /// Close a datagram (header, trailer), count it, and re-arm the
    /// keepalive: unacknowledged data is probed faster, because the peer
    /// finds a lost tail only when a later seq arrives.
    fn finish_datagram(
        &mut self,
        now: Instant,
        flags: u8,
        first_seq: Seq,
        dg: &Builder,
        buf: &mut [u8],
    ) -> Option<usize> {
        let hdr = DatagramHeader { flags, session: self.session, seq: first_seq.0 };
        let len = self.codec.finish(&hdr, dg.count, dg.at, buf).ok()?;
        self.stats.datagrams_sent += 1;
        self.stats.msgs_sent += u64::from(dg.count);
        self.last_tx = Some(now);
        let interval = if self.resend.live_data() > 0 {
            self.cfg.alive_interval / 5
        } else {
            self.cfg.alive_interval
        };
        self.timers[Timer::Keepalive as usize] = Some(now + interval);
        self.update_gauges();
        Some(len)
    }

    /// Append the ACK and NACK ranges gaps produced, as many as fit; in
    /// the conntrackd dialect each takes a seq and is held for resending.
    fn push_ranges(&mut self, dg: &mut Builder, buf: &mut [u8]) {
        while let Some(&range) = self.ranges.front() {
            let (msg, item) = match range {
                Range::Ack(f, t) => (MessageRef::Ack { from: f.0, to: t.0 }, Item::Ack(f, t)),
                Range::Nack(f, t) => (MessageRef::Nack { from: f.0, to: t.0 }, Item::Nack(f, t)),
            };
            if !dg.push(&*self.codec, &msg, buf) {
                break;
            }
            self.ranges.pop_front();
            match range {
                Range::Ack(..) => self.stats.acks_sent += 1,
                Range::Nack(..) => self.stats.nacks_sent += 1,
            }
            if self.compat {
                self.hold(item);
            }
        }
    }

    fn push_data(&mut self, dg: &mut Builder, buf: &mut [u8]) -> bool {
        loop {
            if self.resend.is_full() {
                self.stats.backpressure += 1;
                return true;
            }
            if self.pending_digest.is_some() {
                if !self.push_digest(dg, buf) {
                    return false;
                }
                continue;
            }
            let fits = match self.tx.front() {
                Front::Empty => return false,
                Front::BulkEnd(start) => {
                    // Barrier: everything before it must be acknowledged.
                    if self.resend.live() > 0 {
                        return true;
                    }
                    dg.push(&*self.codec, &MessageRef::BulkEnd { bulk_start: start.0 }, buf)
                }
                Front::Resync => dg.push(&*self.codec, &MessageRef::ResyncRequest, buf),
                Front::RepairRequest(set) => {
                    let msg = MessageRef::RepairRequest { ranges: RANGES as u16, set };
                    dg.push(&*self.codec, &msg, buf)
                }
                Front::RepairEnd(start, set) => {
                    // A barrier, as BULK_END.
                    if self.resend.live() > 0 {
                        return true;
                    }
                    let msg =
                        MessageRef::RepairEnd { repair_start: start.0, ranges: RANGES as u16, set };
                    dg.push(&*self.codec, &msg, buf)
                }
                Front::Flow(item) => {
                    let msg = match item {
                        Item::Upsert { flow, new: true } => MessageRef::FlowNew(flow),
                        Item::Upsert { flow, new: false } => MessageRef::FlowUpdate(flow),
                        Item::Repair(flow) => MessageRef::FlowRepair(flow),
                        Item::Destroy(key) => MessageRef::FlowDestroy(key),
                        Item::ExpUpsert(exp) => MessageRef::ExpNew(exp),
                        Item::ExpDestroy(exp) => MessageRef::ExpDestroy(exp),
                        _ => return false,
                    };
                    let ok = dg.push(&*self.codec, &msg, buf);
                    if ok && matches!(msg, MessageRef::ExpNew(_) | MessageRef::ExpDestroy(_)) {
                        self.stats.exp_msgs_sent += 1;
                    } else if ok {
                        self.stats.flow_msgs_sent += 1;
                        if matches!(msg, MessageRef::FlowRepair(_)) {
                            self.stats.repair_flows_sent += 1;
                        }
                    }
                    ok
                }
            };
            if !fits {
                return false;
            }
            let Some(item) = self.tx.pop() else { return false };
            match item {
                Item::Resync => self.stats.resync_requests_sent += 1,
                Item::RepairRequest(_) => self.stats.repair_requests_sent += 1,
                _ => {}
            }
            let seq = self.next_seq;
            self.next_seq = seq.next();
            self.resend.push(seq, item);
        }
    }

    // ----- receiving -----------------------------------------------------

    fn process(&mut self, now: Instant, hdr: &DatagramHeader, msgs: &mut [Received]) {
        let stamp = msgs.iter().find_map(|r| match r.msg {
            Ok(Message::Stamp { counter, peer_session }) => Some((counter, peer_session)),
            _ => None,
        });
        // A second copy of an authenticated datagram of the live session,
        // or one without the STAMP its session always sends: refused
        // before anything in it counts, handshake and ACKs included.
        if self.stamping
            && let Some(rx) = self.rx.as_mut().filter(|rx| rx.session == hdr.session)
        {
            let fresh = match (stamp, &mut rx.window) {
                (Some((counter, _)), Some(window)) => window.accept(counter),
                (Some((counter, _)), window @ None) => {
                    *window = Some(ReplayWindow::new(counter));
                    true
                }
                (None, window) => window.is_none(),
            };
            if !fresh {
                self.stats.drop_replay += 1;
                self.refused = Some(Refusal::Replay);
                return;
            }
        }
        // Handshake first: a HELLO sets the base for the rest.
        for r in msgs.iter() {
            match r.msg {
                Ok(Message::Hello { session, round }) if session == hdr.session => {
                    self.on_hello(now, hdr, round);
                }
                Ok(Message::HelloBack { session, round }) => {
                    self.on_hello_back(hdr, session, round);
                    if let (Some((counter, _)), Some(rx)) = (stamp, self.rx.as_mut())
                        && rx.session == hdr.session
                        && rx.window.is_none()
                    {
                        rx.window = Some(ReplayWindow::new(counter));
                    }
                }
                _ => {}
            }
        }
        let Some(rx) = self.rx.filter(|rx| rx.session == hdr.session) else {
            self.stats.drop_unknown_session += 1;
            return;
        };
        self.stats.msgs_received += msgs.len() as u64;
        self.timers[Timer::PeerTimeout as usize] = Some(now + self.cfg.peer_timeout);
        if !self.peer_alive {
            self.peer_alive = true;
            self.stats.peer_up += 1;
            self.events.push_back(PeerEvent::PeerUp);
        }
        let first = Seq(hdr.seq);
        // One far-ahead test per datagram: all its seqs are first + i.
        if first.diff(rx.expected) > 0 && first.diff(rx.expected) as u32 > self.cfg.max_seq_jump {
            self.stats.drop_far_ahead += 1;
            return;
        }
        if hdr.flags & native::flags::ACK_REQUEST != 0
            && let Some(rx) = &mut self.rx
        {
            rx.ack_due = true;
        }
        let mut seq = first;
        let mut any_sequenced = false;
        let late_before = self.stats.drop_late;
        for r in msgs.iter_mut() {
            if !r.sequenced {
                continue;
            }
            any_sequenced = true;
            let msg = std::mem::replace(&mut r.msg, Err(WireError::BadMessage));
            self.on_sequenced(now, seq, msg);
            seq = seq.next();
        }
        // Every seq is sent once (a resend takes a new one), so a datagram
        // whose data all lies behind us is a recording or a duplicate.
        if any_sequenced
            && self.stats.drop_late - late_before == u64::from(seq.0.wrapping_sub(first.0))
        {
            self.stats.drop_replay += 1;
            self.refused = Some(Refusal::Replay);
            return;
        }
        if !any_sequenced {
            // The header carries the sender's next seq: a lost tail shows.
            self.admit(first);
        }
        // ACKs and NACKs name seqs of the session the sender knew us by:
        // those about an earlier one of ours must not release anything.
        if stamp.is_none_or(|(_, peer_session)| peer_session == self.session) {
            self.process_control(msgs);
        }
    }

    fn process_control(&mut self, msgs: &[Received]) {
        // Sequenced slots were counted by `on_sequenced`.
        for r in msgs.iter().filter(|r| !r.sequenced) {
            match &r.msg {
                Ok(Message::Ack { from, to }) => {
                    self.stats.acks_received += 1;
                    self.on_ack(Seq(*from), Seq(*to), true);
                }
                Ok(Message::Nack { from, to }) => {
                    self.stats.nacks_received += 1;
                    self.on_ack(Seq(*from), Seq(*to), false);
                }
                Ok(_) => {}
                Err(e) => self.count_error(*e),
            }
        }
    }

    /// Apply the receive rules to `seq` (docs/PROTOCOL.md, "Receiving");
    /// returns the stamp `seq` gets when it may be accepted.
    fn admit(&mut self, seq: Seq) -> Option<u64> {
        let rx = self.rx.as_mut()?;
        let d = seq.diff(rx.expected);
        if d < 0 {
            return None;
        }
        if d as u32 > self.cfg.max_seq_jump && !self.jump_ok {
            self.stats.drop_far_ahead += 1;
            return None;
        }
        if d > 0 {
            // Gap: acknowledge the run so far, report the hole, move on.
            self.stats.gaps += 1;
            if rx.expected.diff(rx.run_start) > 0 {
                let run = (rx.run_start, rx.expected.minus(1));
                self.ranges.push_back(Range::Ack(run.0, run.1));
                if !self.compat {
                    self.closed_runs.push_back((run.0, run.1, ACK_REPEATS));
                }
                if self.closed_runs.len() > MAX_CLOSED_RUNS {
                    self.closed_runs.pop_front();
                }
            }
            self.ranges.push_back(Range::Nack(rx.expected, seq.minus(1)));
            while self.ranges.len() > MAX_PENDING_RANGES {
                // Advisory only: the next cumulative ACK repairs a lost one.
                self.ranges.pop_front();
            }
            rx.expected_stamp += d as u64;
            rx.expected = seq;
            rx.run_start = seq;
            rx.since_ack = 0;
            rx.ack_due = false;
        }
        self.rx_refused_since = None;
        Some(rx.expected_stamp)
    }

    fn on_sequenced(&mut self, now: Instant, seq: Seq, msg: Result<Message, WireError>) {
        let late = self.rx.is_some_and(|rx| seq.diff(rx.expected) < 0);
        let Some(stamp) = self.admit(seq) else {
            if late {
                self.stats.drop_late += 1;
            }
            self.rx_refused_since.get_or_insert(now);
            return;
        };
        let Some(rx) = self.rx.as_mut() else { return };
        rx.expected = seq.next();
        rx.expected_stamp = stamp + 1;
        rx.since_ack += 1;
        if rx.since_ack >= self.cfg.ack_window {
            rx.ack_due = true;
        }
        let (expected, expected_stamp) = (rx.expected, rx.expected_stamp);
        match msg {
            Ok(Message::FlowNew(flow) | Message::FlowUpdate(flow)) => {
                self.stats.flow_msgs_accepted += 1;
                self.events.push_back(PeerEvent::Upsert { flow, stamp });
            }
            Ok(Message::FlowDestroy(key)) => {
                self.stats.flow_msgs_accepted += 1;
                self.events.push_back(PeerEvent::Destroy { key });
            }
            Ok(Message::ExpNew(exp)) => {
                self.stats.exp_msgs_accepted += 1;
                self.events.push_back(PeerEvent::ExpUpsert { exp, stamp });
            }
            Ok(Message::ExpDestroy(exp)) => {
                self.stats.exp_msgs_accepted += 1;
                self.events.push_back(PeerEvent::ExpDestroy { key: exp.key() });
            }
            Ok(Message::BulkEnd { bulk_start }) => {
                let back = i64::from(Seq(bulk_start).diff(expected));
                let floor = (expected_stamp as i64).saturating_add(back).max(0) as u64;
                self.stats.bulks_received += 1;
                // The end of a bulk begun before we tracked this session
                // (an answer to an older incarnation of ours) leaves out
                // what that incarnation had acknowledged.
                if self.rx.is_some_and(|rx| floor >= rx.base_stamp) {
                    self.awaiting_bulk = false;
                }
                self.events.push_back(PeerEvent::BulkEnd { floor });
            }
            Ok(Message::ResyncRequest) => {
                self.stats.resync_requests_received += 1;
                self.events.push_back(PeerEvent::BulkRequested);
            }
            Ok(Message::Digest { oldest, ranges, first, digests }) => {
                self.on_digest(seq, Seq(oldest), ranges, first, digests);
            }
            Ok(Message::RepairRequest { ranges, set }) => {
                self.stats.repair_requests_received += 1;
                if usize::from(ranges) == RANGES && set != 0 {
                    self.events.push_back(PeerEvent::RepairRequested { ranges: RangeSet(set) });
                }
            }
            Ok(Message::FlowRepair(flow)) => {
                self.stats.flow_msgs_accepted += 1;
                self.events.push_back(PeerEvent::RepairUpsert { flow, stamp });
            }
            Ok(Message::RepairEnd { repair_start, ranges, set }) => {
                let back = i64::from(Seq(repair_start).diff(expected));
                let floor = (expected_stamp as i64).saturating_add(back).max(0) as u64;
                self.stats.repair_ends_received += 1;
                self.repairs_outstanding = self.repairs_outstanding.saturating_sub(1);
                if usize::from(ranges) == RANGES {
                    self.events.push_back(PeerEvent::RepairEnd { floor, ranges: RangeSet(set) });
                }
            }
            // Sequenced only in the conntrackd dialect.
            Ok(Message::Ack { from, to }) => {
                self.stats.acks_received += 1;
                self.on_ack(Seq(from), Seq(to), true);
            }
            Ok(Message::Nack { from, to }) => {
                self.stats.nacks_received += 1;
                self.on_ack(Seq(from), Seq(to), false);
            }
            Ok(_) => {}
            Err(e) => self.count_error(e),
        }
    }

    fn on_hello(&mut self, now: Instant, hdr: &DatagramHeader, round: u32) {
        // Answering is harmless even when the HELLO is a recording: the
        // echo names a session that nobody tracks any more.
        self.hello_back = Some((hdr.session, round));
        if self.rx.is_some_and(|rx| rx.session == hdr.session) {
            return;
        }
        // A session we do not track: a restarted peer, or an old HELLO
        // replayed. Nothing changes until a HELLO_BACK echoes our session
        // (random per start) and our current round, which no recording can
        // hold: a replay costs one handshake, never the tracking.
        // A new round, so that answers to older HELLOs (perhaps from an
        // older incarnation of the peer) do not count: when leaving the
        // established state, or when another peer session says HELLO. The
        // first HELLO after our own start keeps round 1: every answer to it
        // echoes our fresh session, so none can predate us.
        let first = self.rx.is_none() && self.hello_from.is_none();
        let new_round =
            self.phase != PeerState::HelloSent || (!first && self.hello_from != Some(hdr.session));
        if self.phase == PeerState::Established && self.peer_alive {
            // The live session goes on: a recording must not pause it.
            // Our HELLOs go along with its data until the claimed new
            // session answers one of this round (a real restart does, at
            // once), or the live one falls silent.
            if !self.probing || self.hello_from != Some(hdr.session) {
                self.stats.hello_probes += 1;
                self.events.push_back(PeerEvent::HelloProbe { session: hdr.session });
                self.hello_round = self.hello_round.wrapping_add(1);
            }
            self.probing = true;
        } else if new_round {
            self.phase = PeerState::HelloSent;
            self.probing = false;
            self.hello_round = self.hello_round.wrapping_add(1);
        }
        self.hello_from = Some(hdr.session);
        self.timers[Timer::Keepalive as usize] = Some(now);
    }

    fn on_hello_back(&mut self, hdr: &DatagramHeader, echoed: u32, round: u32) {
        if echoed != self.session || round != self.hello_round {
            // An answer to a HELLO of another round or incarnation of ours.
            self.stats.drop_replay += 1;
            self.refused = Some(Refusal::Replay);
            return;
        }
        if self.phase != PeerState::HelloSent && !self.probing {
            return;
        }
        self.probing = false;
        // The answer proves the peer is live and knows us: only now is its
        // session tracked (from the header's next seq).
        let known = self.rx.is_some_and(|rx| rx.session == hdr.session);
        self.adopt(hdr);
        self.phase = PeerState::Established;
        if !known {
            // A new peer session: ask for its table. The same session means
            // only our side re-handshook (a replayed HELLO): its stream went
            // on unbroken, nothing to repair.
            self.request_resync();
        }
    }

    /// Track the peer session of `hdr` if it is not the one tracked: from
    /// its current seq, with stamps above everything an older incarnation
    /// produced. Returns true when it replaced another session (a restart).
    fn adopt(&mut self, hdr: &DatagramHeader) -> bool {
        if self.rx.is_some_and(|rx| rx.session == hdr.session) {
            return false;
        }
        let base = self.next_epoch_stamp;
        self.next_epoch_stamp = base + (1 << 32);
        let restarted = self.rx.is_some();
        if restarted {
            self.stats.peer_restarts += 1;
            self.events.push_back(PeerEvent::PeerRestarted);
            // Unacknowledged data goes again to the new incarnation (it
            // also asks for a bulk): if the "restart" was a stale datagram
            // of an older one, nothing is lost either.
            self.lost.clear();
            self.resend.drain_all(self.next_seq, &mut self.lost);
            self.lost_before_digest();
            for item in self.lost.drain(..).rev() {
                self.tx.requeue(item);
            }
            self.ranges.clear();
        }
        self.closed_runs.clear();
        // A new peer session: its repairs will not come, its digest parts
        // belong to an older stream.
        self.repairs_outstanding = 0;
        self.digest_parts = None;
        let expected = Seq(hdr.seq);
        self.rx = Some(Rx {
            session: hdr.session,
            expected,
            expected_stamp: base,
            base_stamp: base,
            run_start: expected,
            since_ack: 0,
            ack_due: false,
            window: None,
        });
        restarted
    }

    /// ACK `[from, to]` (`is_ack`) or NACK `[from, to]` from the peer.
    fn on_ack(&mut self, from: Seq, to: Seq, is_ack: bool) {
        let next = self.next_seq;
        // An empty ACK range is to == from - 1.
        let Some(width) = to.next().distance_from(from) else {
            self.stats.bad_acks += 1;
            return;
        };
        if width == 0 && !is_ack {
            self.stats.bad_acks += 1;
            return;
        }
        self.lost.clear();
        if let Some(ahead) = to.next().distance_from(next)
            && ahead > 0
        {
            if ahead > self.cfg.max_seq_jump {
                self.stats.bad_acks += 1;
                return;
            }
            // The peer tracks seqs we never sent (a forged or corrupted
            // datagram moved it): jump past them and resend everything
            // unacknowledged with fresh seqs. Nothing is lost. A NACK's
            // range ends before the message that revealed the gap, which
            // the peer took: jump past that one too, or our next message
            // would land on its seq and be dropped as old, then
            // acknowledged (a forged ALIVE ahead does exactly this).
            // The peer may have taken more forged messages since (a
            // planted pair takes two seqs): leave a margin, which costs
            // only a NACK of seqs we never used.
            self.stats.seq_jumps += 1;
            let past = if is_ack { to.next() } else { to.plus(2) };
            self.next_seq = past.plus(JUMP_MARGIN);
            self.resend.drain_all(self.next_seq, &mut self.lost);
        } else if is_ack {
            self.resend.ack(from, to, &mut self.lost);
        } else {
            if self.compat && self.resend.take_acknowledged(from, to, &mut self.lost) {
                // Nothing authenticates this dialect's ACKs: one that was
                // forged (or a peer that acknowledges what it lost, as
                // conntrackd's ACK may span a NACKed run) released flow
                // messages the peer never got. Its destroys are resent; for
                // the rest, our whole table is.
                self.stats.nacks_of_acked += 1;
                self.events.push_back(PeerEvent::BulkRequested);
            }
            self.resend.nack(from, to, &mut self.lost);
        }
        self.lost_before_digest();
        // Requeued at the front in reverse, so that they go in seq order.
        for item in self.lost.drain(..).rev() {
            let range = match item {
                Item::Ack(from, to) => Some(Range::Ack(from, to)),
                Item::Nack(from, to) => Some(Range::Nack(from, to)),
                _ => None,
            };
            if let Some(range) = range {
                // conntrackd dialect: a lost ACK or NACK goes again.
                self.ranges.push_back(range);
                self.stats.resent += 1;
            } else if self.tx.requeue(item) {
                self.stats.resent += 1;
            } else {
                self.stats.resend_superseded += 1;
            }
        }
    }

    fn count_error(&mut self, e: WireError) {
        let c = &mut self.stats;
        let (counter, refusal) = match e {
            WireError::Truncated => (&mut c.drop_truncated, Refusal::Malformed),
            WireError::BadMagic => (&mut c.drop_bad_magic, Refusal::Malformed),
            WireError::BadVersion(_) => (&mut c.drop_bad_version, Refusal::Malformed),
            WireError::BadCrc => (&mut c.drop_bad_crc, Refusal::BadCrc),
            WireError::AuthUnsupported
            | WireError::AuthMissing
            | WireError::NotEncrypted
            | WireError::EncryptUnsupported => (&mut c.drop_auth, Refusal::AuthMismatch),
            WireError::BadMac => (&mut c.drop_bad_mac, Refusal::BadMac),
            WireError::UnknownKey(_) => (&mut c.drop_unknown_key, Refusal::UnknownKey),
            WireError::BadLength
            | WireError::BadMessage
            | WireError::BadAttribute(_)
            | WireError::UnknownMessage(_)
            | WireError::BufferTooSmall => (&mut c.drop_malformed, Refusal::Malformed),
        };
        *counter += 1;
        self.refused = Some(refusal);
    }

    fn update_gauges(&mut self) {
        self.stats.tx_queue_len = self.tx.len() as u64;
        self.stats.resend_queue_len = self.resend.len() as u64;
        self.stats.coalesced = self.tx.coalesced;
        self.stats.cancelled = self.tx.cancelled;
    }
}

/// conntrackd dialect: how many seqs may be missing between two far-ahead
/// messages for the second to confirm the first.
const MAX_FAR_RUN_GAP: i32 = 64;

/// Seqs left unused after a jump past what the peer tracks.
const JUMP_MARGIN: u32 = MAX_FAR_RUN_GAP as u32;

/// Bound on gap-produced ranges waiting to be sent (forged input must not
/// grow memory).
const MAX_PENDING_RANGES: usize = 1024;

/// Closed runs remembered for repeated ACKs.
const MAX_CLOSED_RUNS: usize = 32;

/// How many periodic ACKs repeat a closed run's ACK.
const ACK_REPEATS: u8 = 3;

/// An ACK or NACK range produced by a gap.
#[derive(Clone, Copy, Debug)]
enum Range {
    Ack(Seq, Seq),
    Nack(Seq, Seq),
}

/// A datagram being filled.
struct Builder {
    at: usize,
    limit: usize,
    count: u16,
    /// Seq of the next sequenced message.
    seq: Seq,
}

impl Builder {
    /// Append `msg` if it fits.
    fn push(&mut self, codec: &dyn Codec, msg: &MessageRef<'_>, buf: &mut [u8]) -> bool {
        let len = codec.message_len(msg);
        if len == 0 || self.at + len > self.limit || self.count == u16::MAX {
            return false;
        }
        let Some(out) = buf.get_mut(self.at..self.limit) else { return false };
        match codec.emit_message(msg, self.seq.0, out) {
            Ok(n) => {
                self.at += n;
                self.count += 1;
                if codec.is_sequenced(msg) {
                    self.seq = self.seq.next();
                }
                true
            }
            Err(_) => false,
        }
    }
}
