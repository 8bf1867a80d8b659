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
//!
//! This file holds the core's state and its small methods. The rest of
//! `Ftfw` is in `impl` blocks, one child module per part of the protocol:
//! - `send.rs`: [`Ftfw::poll_transmit`] and filling a datagram;
//! - `receive.rs`: a datagram in, the receive rules (gaps into ACK and
//!   NACK ranges), the peer's ACKs and NACKs;
//! - `handshake.rs`: HELLO, HELLO_BACK, tracking a peer session;
//! - `liveness.rs`: [`Ftfw::handle_timeout`], the peer timeout, stalls;
//! - `anti_entropy.rs`: digests and repairs (native dialect);
//! - `compat.rs`: what the conntrackd dialect does differently, with the
//!   state only it keeps (`Flavor` holds each dialect's own);
//! - `queues.rs`, `seq.rs`, `replay.rs`: the transmit and resend queues,
//!   sequence numbers, the replay window;
//! - `config.rs`, `events.rs`, `stats.rs`: the public types.
//!
//! Tests: `tests/` (the protocol rules, table-driven) and `sim/` (two
//! cores on a lossy link, seeded).

mod anti_entropy;
mod compat;
mod config;
mod events;
mod handshake;
mod liveness;
mod queues;
mod receive;
mod replay;
mod send;
mod seq;
#[cfg(test)]
mod sim;
mod stats;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use config::{Dialect, FtfwConfig};
pub use events::{LocalChange, PeerEvent, PeerState, Refusal};
pub use seq::Seq;
pub use stats::FtfwStats;

use crate::digest::{RANGES, RangeSet};
use crate::expect::Expectation;
use crate::flow::{Flow, FlowKey};
use crate::wire::conntrackd::{self, ConntrackdCodec};
use crate::wire::native::{self, NativeCodec};
use crate::wire::{Codec, DatagramHeader, DialectCodec, Message, MessageRef, Received, WireError};
use compat::ConntrackdState;
use queues::{Front, Item, ResendQueue, TxQueue};
use receive::{MAX_FAR_RUN_GAP, Range};
use replay::ReplayWindow;
use send::Builder;

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

/// What each wire dialect keeps beyond what both share (sequence space,
/// resend ring, ACK/NACK, handshake): the rules that use it are in
/// `send.rs` and `receive.rs` for the native dialect, `compat.rs` for
/// conntrackd's.
enum Flavor {
    Native(NativeState),
    Conntrackd(ConntrackdState),
}

/// The native dialect's own state.
struct NativeState {
    /// With keys: every datagram starts with a STAMP.
    stamping: bool,
    /// The counter of the last datagram sent (STAMP).
    tx_counter: u64,
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
    /// The peer session whose HELLO we answered first, and the seq that
    /// first answer carried: the lowest seq that session can track us from.
    first_hello_back: Option<(u32, Seq)>,
    /// After the peer restarted: the lowest seq it may still expect from
    /// us, raised by its ACKs. No new data goes `max_seq_jump` past it, or
    /// the new incarnation would drop all of it as too far ahead.
    peer_floor: Option<Seq>,
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
    /// What the dialect spoken keeps beyond the shared sequencing.
    flavor: Flavor,
    peer_alive: bool,
    last_tx: Option<Instant>,
    /// When the first message refused since the last accepted one came.
    rx_refused_since: Option<Instant>,
    /// The oldest unacknowledged seq, and since when it has been.
    tx_progress: (Seq, Instant),
    /// Stalled as last reported.
    stalled: bool,
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
        if let Flavor::Native(native) = &mut self.flavor {
            native.stamping = !keys.is_empty();
        }
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
        let cfg_auth_empty = cfg.auth_keys.is_empty();
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
            first_hello_back: None,
            peer_floor: None,
            hello_round: 1,
            hello_from: None,
            ranges: VecDeque::new(),
            closed_runs: VecDeque::new(),
            awaiting_bulk: false,
            flavor: if compat {
                Flavor::Conntrackd(ConntrackdState::default())
            } else {
                Flavor::Native(NativeState { stamping: !cfg_auth_empty, tx_counter: 0 })
            },
            peer_alive: false,
            last_tx: None,
            rx_refused_since: None,
            tx_progress: (next_seq, now),
            stalled: false,
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
        if core.anti_entropy() {
            core.timers[Timer::AntiEntropy as usize] = Some(now + core.cfg.anti_entropy_interval);
        }
        core
    }

    // ----- getters -------------------------------------------------------

    /// Speaking conntrackd's dialect.
    fn is_compat(&self) -> bool {
        matches!(self.flavor, Flavor::Conntrackd(_))
    }

    /// Native dialect with keys: every datagram starts with a STAMP.
    fn stamping(&self) -> bool {
        matches!(self.flavor, Flavor::Native(NativeState { stamping: true, .. }))
    }

    /// The settings the core runs with.
    pub fn config(&self) -> &FtfwConfig {
        &self.cfg
    }

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
            Ok(_) if self.is_compat() => self.process_compat(now, &mut decoded),
            Ok(hdr) => self.process(now, &hdr, &mut decoded),
            Err(e) => self.count_error(e),
        }
        decoded.clear();
        self.decoded = decoded;
        self.check_stall(now);
        self.update_gauges();
        self.refused.take()
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
    ///
    /// Before the first handshake nothing is queued and false returned: the
    /// peer asks for our table as soon as it knows our session, and gets it
    /// as it is then. A table queued now would end in a BULK_END that the
    /// changes made until the handshake wait behind, and a peer that takes
    /// that end for a complete table would report ready without them.
    pub fn bulk_send<'a>(&mut self, flows: impl IntoIterator<Item = &'a Flow>) -> bool {
        self.bulk_send_with_expectations(flows, [])
    }

    /// As [`Ftfw::bulk_send`], with our expectations after the flows (their
    /// masters), before the BULK_END.
    pub fn bulk_send_with_expectations<'a, 'b>(
        &mut self,
        flows: impl IntoIterator<Item = &'a Flow>,
        exps: impl IntoIterator<Item = &'b Expectation>,
    ) -> bool {
        if self.rx.is_none() {
            return false;
        }
        self.tx.drop_bulk_ends();
        if !self.is_compat() {
            // Everything we hold goes below with a seq at or above `start`,
            // and the BULK_END sweeps at the peer what we no longer hold: an
            // older state still unsent, or lost and resent, would go above
            // the floor and keep a flow we no longer have (docs/PROTOCOL.md,
            // "Bulk").
            self.tx.drop_states();
            self.resend.supersede_states();
        }
        let start = self.next_seq;
        for f in flows {
            self.tx.push_change(Item::Upsert { flow: f.clone(), new: false });
        }
        for e in exps {
            self.tx.push_change(Item::ExpUpsert(Box::new(e.clone())));
        }
        // conntrackd has no BULK_END (and cannot parse one).
        if !self.is_compat() {
            self.tx.push_marker(Item::BulkEnd(start), false);
        }
        self.stats.bulks_sent += 1;
        self.update_gauges();
        true
    }

    /// Ask the peer for its whole table.
    pub fn request_resync(&mut self) {
        if !self.tx.has_resync() {
            self.tx.push_marker(Item::Resync, false);
        }
        // conntrackd's answer has no end marker to wait for.
        self.awaiting_bulk = !self.is_compat();
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

    /// The next event for the caller.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` (and `poll_transmit`) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().flatten().copied().chain(self.stall_deadline()).min()
    }

    fn update_gauges(&mut self) {
        self.stats.tx_queue_len = self.tx.len() as u64;
        self.stats.resend_queue_len = self.resend.len() as u64;
        self.stats.coalesced = self.tx.coalesced;
        self.stats.cancelled = self.tx.cancelled;
    }
}
