//! The conntrackd dialect (docs/PROTOCOL.md §7, "conntrackd compatibility"):
//! every message takes a seq, ACK and NACK are sequenced and resent like
//! data, HELLO and HELLO_BACK are flags, and nothing authenticates.

use std::time::{Duration, Instant};

use super::*;

impl Ftfw {
    /// This dialect's own state (none on a native core, where nothing
    /// here runs).
    fn state(&mut self) -> Option<&mut ConntrackdState> {
        match &mut self.flavor {
            Flavor::Conntrackd(state) => Some(state),
            Flavor::Native(_) => None,
        }
    }

    /// `poll_transmit` for conntrackd: every message takes a seq, ACK and
    /// NACK are held for resending like data, HELLO and HELLO_BACK are
    /// flags on every message of the datagram, ALIVE carries them when
    /// nothing else goes.
    pub(super) fn poll_transmit_compat(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let limit = buf.len().min(self.cfg.max_datagram).min(usize::from(u16::MAX));
        let keepalive_due = self.timers[Timer::Keepalive as usize].is_some_and(|t| now >= t);
        let first_seq = self.next_seq;
        let mut dg = Builder { at: 0, limit, count: 0, seq: first_seq };
        let mut flags = 0;
        if self.phase == PeerState::HelloSent {
            flags |= conntrackd::flags::HELLO;
        }
        if self.hello_back.is_some() {
            flags |= conntrackd::flags::HELLO_BACK;
        }
        self.push_ranges(&mut dg, buf);
        // conntrackd's window: ACK every `ack_window` messages and on the
        // keepalive, each ACK starting where the previous one ended (they
        // are reliable here, so they need not overlap).
        if let Some(rx) = self.rx
            && (rx.ack_due || keepalive_due)
            && rx.expected.diff(rx.run_start) > 0
        {
            let (from, to) = (rx.run_start, rx.expected.minus(1));
            if dg.push(&*self.codec, &MessageRef::Ack { from: from.0, to: to.0 }, buf) {
                if let Some(rx) = &mut self.rx {
                    rx.run_start = rx.expected;
                    rx.ack_due = false;
                    rx.since_ack = 0;
                }
                self.stats.acks_sent += 1;
                self.hold(Item::Ack(from, to));
            }
        }
        if self.phase == PeerState::Established {
            self.push_data(&mut dg, buf);
        }
        if dg.count == 0 {
            if !keepalive_due && self.hello_back.is_none() {
                return None;
            }
            if !dg.push(&*self.codec, &MessageRef::Alive, buf) {
                return None;
            }
            self.hold(Item::Alive);
        }
        if keepalive_due {
            self.stats.alive_sent += 1;
        }
        self.hello_back = None;
        self.finish_datagram(now, flags, first_seq, &dg, buf)
    }

    /// Give a control message just emitted its seq and hold it.
    pub(super) fn hold(&mut self, item: Item) {
        if self.resend.is_full() {
            self.resend.trim_control();
            // Data waits for ACKs that never come (a dead peer, a cut
            // link) while keepalives keep taking seqs: past twice the
            // capacity, give the held data up to the transmit queue, which
            // sends it again under new seqs, rather than grow for ever.
            if self.resend.len() >= 2 * self.resend.capacity() {
                self.stats.resend_resets += 1;
                self.requeue_resend();
            }
        }
        let seq = self.next_seq;
        self.next_seq = seq.next();
        self.resend.push(seq, item);
    }

    /// Empty the resend queue, putting what it held that says something
    /// about our table back at the head of the transmit queue.
    fn requeue_resend(&mut self) {
        self.lost.clear();
        self.resend.drain_all(self.next_seq, &mut self.lost);
        for item in self.lost.drain(..).rev() {
            if !item.is_control() {
                self.tx.requeue(item);
            }
        }
    }

    /// conntrackd's `ftfw_recv` for each message of a datagram.
    pub(super) fn process_compat(&mut self, now: Instant, msgs: &mut [Received]) {
        use conntrackd::flags::{HELLO, HELLO_BACK};
        for r in msgs.iter_mut() {
            let Some(hdr) = r.header else {
                if let Err(e) = r.msg {
                    self.count_error(e);
                }
                continue;
            };
            self.stats.msgs_received += 1;
            let seq = Seq(hdr.seq);
            if hdr.flags & HELLO_BACK != 0 && self.phase == PeerState::HelloSent {
                self.phase = PeerState::Established;
                // As conntrackd's StartupResync, ask for the peer's table;
                // and send ours, which conntrackd would not do.
                self.request_resync();
                self.events.push_back(PeerEvent::BulkRequested);
            }
            if hdr.flags & HELLO != 0 {
                self.hello_back = Some((0, 0));
                let same_start = self.state().is_some_and(|c| c.peer_in_hello)
                    && self.rx.is_some_and(|rx| {
                        let d = seq.diff(rx.expected);
                        d >= 0 && d as u32 <= self.cfg.max_seq_jump
                    });
                if !same_start {
                    self.adopt_compat(seq, true, true);
                }
                if let Some(state) = self.state() {
                    state.peer_in_hello = true;
                }
            } else if self.rx.is_none() {
                // We restarted and the peer did not: track from here.
                self.adopt_compat(seq, false, true);
            }
            let far = self.rx.is_some_and(|rx| {
                let d = seq.diff(rx.expected);
                d > 0 && d as u32 > self.cfg.max_seq_jump
            });
            // One forged or corrupted message cannot move tracking far
            // ahead; two in a row (seq, then at most a few further) can.
            if let Some(state) = self.state() {
                state.jump_ok = far
                    && state
                        .far_ahead
                        .is_some_and(|next| (0..=MAX_FAR_RUN_GAP).contains(&seq.diff(next)));
                state.far_ahead = far.then(|| seq.next());
            }
            let before = self.stats.drop_late + self.stats.drop_far_ahead;
            let late_before = self.stats.drop_late;
            let msg = std::mem::replace(&mut r.msg, Err(WireError::BadMessage));
            let print = fingerprint(&msg);
            self.on_sequenced(now, seq, msg);
            if let Some(state) = self.state() {
                state.jump_ok = false;
            }
            if self.stats.drop_late != late_before {
                self.check_collision(now, seq, print);
            } else if self.stats.drop_late + self.stats.drop_far_ahead == before {
                self.note_taken(seq, print);
            }
            if self.stats.drop_late + self.stats.drop_far_ahead != before {
                // Nothing authenticates this dialect: a forged HELLO can
                // move tracking so that all the peer sends looks old. Its
                // messages keep coming; after half the peer timeout of
                // only refusals, follow them (and exchange tables for
                // what was refused meanwhile) before the peer counts as
                // down.
                if self
                    .rx_refused_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.heal_after())
                {
                    self.stats.rx_rebases += 1;
                    self.rx_refused_since = None;
                    self.events.push_back(PeerEvent::Rebased);
                    self.adopt_compat(seq.next(), true, false);
                    if let Some(state) = self.state() {
                        state.peer_in_hello = false;
                    }
                }
                continue;
            }
            if hdr.flags & HELLO == 0
                && let Some(state) = self.state()
            {
                state.peer_in_hello = false;
            }
            self.timers[Timer::PeerTimeout as usize] = Some(now + self.cfg.peer_timeout);
            if !self.peer_alive {
                self.peer_alive = true;
                self.stats.peer_up += 1;
                self.events.push_back(PeerEvent::PeerUp);
            }
        }
    }

    fn note_taken(&mut self, seq: Seq, print: u64) {
        let Some(ConntrackdState { taken, .. }) = self.state() else { return };
        if taken.is_empty() {
            *taken = vec![None; TAKEN_SLOTS];
        }
        taken[seq.0 as usize % TAKEN_SLOTS] = Some((seq, print));
    }

    /// A late message: if we took another message under its seq, one of
    /// the two was forged and what the genuine one carried may be missing
    /// here. Which one cannot be told; the peer's whole table repairs what
    /// it holds (a lost destroy stays: this format has no end of table).
    fn check_collision(&mut self, now: Instant, seq: Seq, print: u64) {
        let heal_after = self.heal_after();
        let Some(state) = self.state() else { return };
        let Some(&Some((taken, taken_print))) = state.taken.get(seq.0 as usize % TAKEN_SLOTS)
        else {
            return;
        };
        if taken != seq || taken_print == print {
            return;
        }
        let due = state
            .collision_resync_at
            .is_none_or(|t| now.saturating_duration_since(t) >= heal_after);
        if due {
            state.collision_resync_at = Some(now);
        }
        self.stats.rx_collisions += 1;
        if due {
            self.request_resync();
        }
    }

    /// How long only refused messages may come before the peer's sequence
    /// is followed again.
    pub(crate) fn heal_after(&self) -> Duration {
        self.cfg.peer_timeout / 2
    }

    /// Track the peer's sequence from `seq`. On a `hello` (the peer
    /// started), it gets our whole table and we ask for its own; if it had
    /// been tracked before, what it had not acknowledged goes again too
    /// (conntrackd would drop all of this). `restart`: count and report it
    /// as the peer's restart.
    pub(super) fn adopt_compat(&mut self, seq: Seq, hello: bool, restart: bool) {
        let base = self.next_epoch_stamp;
        self.next_epoch_stamp = base + (1 << 32);
        if let Some(state) = self.state() {
            state.taken.clear();
        }
        if self.rx.is_some() {
            if restart {
                self.stats.peer_restarts += 1;
                self.events.push_back(PeerEvent::PeerRestarted);
            }
            self.requeue_resend();
            self.ranges.clear();
        }
        if hello {
            self.events.push_back(PeerEvent::BulkRequested);
            if self.phase == PeerState::Established {
                self.request_resync();
            }
        }
        self.rx = Some(Rx {
            session: 0,
            expected: seq,
            expected_stamp: base,
            base_stamp: base,
            run_start: seq,
            since_ack: 0,
            ack_due: false,
            window: None,
        });
    }
}

/// What the conntrackd dialect keeps beyond the shared sequencing: how
/// far its unauthenticated stream may move our tracking.
#[derive(Default)]
pub(super) struct ConntrackdState {
    /// The peer's messages still carry HELLO (it has not yet seen our
    /// HELLO_BACK), so another HELLO is the same start.
    peer_in_hello: bool,
    /// The seq after the last far-ahead message. A message that continues
    /// it shows that the peer's sequence really moved on (its keepalives
    /// take seqs during a partition).
    far_ahead: Option<Seq>,
    /// The message being admitted continues a far-ahead run and may jump.
    pub(super) jump_ok: bool,
    /// What was taken at each recent seq, by `seq % TAKEN_SLOTS`
    /// ([`fingerprint`]), to tell a late copy from a different message
    /// under the same seq.
    taken: Vec<Option<(Seq, u64)>>,
    /// When a collision last asked for the peer's table.
    collision_resync_at: Option<Instant>,
}

/// Recent seqs remembered for [`Ftfw::check_collision`].
const TAKEN_SLOTS: usize = 1024;

/// What tells two messages under one seq apart: their kind and the flow,
/// expectation or range they name.
pub(super) fn fingerprint(msg: &Result<Message, WireError>) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::default().build_hasher();
    match msg {
        Ok(m) => {
            std::mem::discriminant(m).hash(&mut h);
            match m {
                Message::FlowNew(f) | Message::FlowUpdate(f) | Message::FlowRepair(f) => {
                    f.key().hash(&mut h)
                }
                Message::FlowDestroy(k) => k.hash(&mut h),
                Message::ExpNew(e) | Message::ExpDestroy(e) => e.key().hash(&mut h),
                Message::Ack { from, to } | Message::Nack { from, to } => (from, to).hash(&mut h),
                _ => {}
            }
        }
        Err(e) => e.hash(&mut h),
    }
    h.finish()
}
