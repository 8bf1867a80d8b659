//! Receiving (docs/PROTOCOL.md, "Receiving", "Acknowledgments"): a
//! native datagram (its STAMP, handshake, data and ACKs), and the rules
//! both dialects share: admitting a seq, turning a gap into ACK and NACK
//! ranges, applying an accepted message, and releasing or requeueing the
//! resend queue on the peer's ACKs and NACKs. The conntrackd dialect's
//! datagrams enter through `compat.rs`.

use std::time::Instant;

use super::*;

impl Ftfw {
    pub(super) fn process(&mut self, now: Instant, hdr: &DatagramHeader, msgs: &mut [Received]) {
        let stamp = msgs.iter().find_map(|r| match r.msg {
            Ok(Message::Stamp { counter, peer_session }) => Some((counter, peer_session)),
            _ => None,
        });
        // A second copy of an authenticated datagram of the live session,
        // or one without the STAMP its session always sends: refused
        // before anything in it counts, handshake and ACKs included.
        if self.stamping()
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
        let jump_ok = matches!(&self.flavor, Flavor::Conntrackd(c) if c.jump_ok);
        let compat = self.is_compat();
        let rx = self.rx.as_mut()?;
        let d = seq.diff(rx.expected);
        if d < 0 {
            return None;
        }
        if d as u32 > self.cfg.max_seq_jump && !jump_ok {
            self.stats.drop_far_ahead += 1;
            return None;
        }
        if d > 0 {
            // Gap: acknowledge the run so far, report the hole, move on.
            self.stats.gaps += 1;
            if rx.expected.diff(rx.run_start) > 0 {
                let run = (rx.run_start, rx.expected.minus(1));
                self.ranges.push_back(Range::Ack(run.0, run.1));
                if !compat {
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

    pub(super) fn on_sequenced(&mut self, now: Instant, seq: Seq, msg: Result<Message, WireError>) {
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
                let complete = self.rx.is_some_and(|rx| floor >= rx.base_stamp);
                if complete {
                    self.awaiting_bulk = false;
                }
                self.events.push_back(PeerEvent::BulkEnd { floor, complete });
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
            if self.is_compat() && self.resend.take_acknowledged(from, to, &mut self.lost) {
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
        // The peer takes nothing before `to` + 1 any more.
        if let Some(floor) = self.peer_floor {
            let floor = if to.next().diff(floor) > 0 { to.next() } else { floor };
            self.peer_floor = (floor.diff(self.resend.first()) < 0).then_some(floor);
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

    pub(super) fn count_error(&mut self, e: WireError) {
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
}

/// conntrackd dialect: how many seqs may be missing between two far-ahead
/// messages for the second to confirm the first.
pub(super) const MAX_FAR_RUN_GAP: i32 = 64;

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
pub(super) enum Range {
    Ack(Seq, Seq),
    Nack(Seq, Seq),
}
