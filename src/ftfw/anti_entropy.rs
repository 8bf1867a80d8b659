//! Anti-entropy (docs/PROTOCOL.md, "Anti-entropy"): digests of the table
//! sent in the sequence, compared by the peer, and repairs of the ranges
//! that differ. Native dialect only.

use std::time::Instant;

use super::*;

impl Ftfw {
    /// Anti-entropy: send `digests` (one per range, of the internal cache
    /// as it is now) in the sequence right after everything queued so far.
    /// Only taken while nothing waits to be sent, so that they describe
    /// exactly what the peer has been sent; otherwise false, and the core
    /// asks again shortly ([`PeerEvent::DigestDue`]).
    pub fn send_digest(&mut self, now: Instant, digests: &[u64]) -> bool {
        if !self.anti_entropy() {
            return false;
        }
        let ready = self.phase == PeerState::Established
            && self.tx.is_empty()
            && self.pending_digest.is_none()
            && digests.len() == RANGES;
        if !ready {
            self.stats.digests_deferred += 1;
            let retry = (self.cfg.alive_interval / 5).min(self.cfg.anti_entropy_interval);
            self.timers[Timer::AntiEntropy as usize] = Some(now + retry);
            return false;
        }
        self.pending_digest = Some((digests.to_vec(), 0));
        // The digest's datagram carries our ACK as a keepalive would: it
        // resets the keepalive timer, and a peer whose resend queue holds
        // only superseded entries does not ask for one.
        if let Some(rx) = &mut self.rx {
            rx.ack_due = true;
        }
        true
    }

    /// Anti-entropy: ask the peer to resend the flows of these ranges of its
    /// table (their digests differ from the external cache's).
    pub fn request_repair(&mut self, ranges: RangeSet) {
        if self.is_compat() || ranges.is_empty() {
            return;
        }
        self.tx.push_marker(Item::RepairRequest(ranges.0), false);
        self.repairs_outstanding += 1;
        self.update_gauges();
    }

    /// Anti-entropy: resend `flows` (the internal flows of `ranges`), then a
    /// REPAIR_END that lets the peer sweep the rest of these ranges (as
    /// [`Ftfw::bulk_send`] for the whole table).
    pub fn repair_send<'a>(&mut self, ranges: RangeSet, flows: impl IntoIterator<Item = &'a Flow>) {
        if self.is_compat() {
            return;
        }
        let start = self.next_seq;
        for f in flows {
            self.tx.push_change(Item::Repair(f.clone()));
        }
        self.tx.push_marker(Item::RepairEnd(start, ranges.0), false);
        self.update_gauges();
    }

    /// Append as much of the pending digest as fits. Returns false when
    /// nothing more fits this datagram.
    pub(super) fn push_digest(&mut self, dg: &mut Builder, buf: &mut [u8]) -> bool {
        let Some((values, sent)) = self.pending_digest.take() else { return true };
        let room = dg.limit.saturating_sub(dg.at).saturating_sub(native::DIGEST_OVERHEAD) / 8;
        let n = room.min(values.len() - sent);
        if n == 0 {
            if dg.count > 0 {
                // A fresh datagram has room.
                self.pending_digest = Some((values, sent));
            }
            return false;
        }
        // Every flow change sent before this seq and not acknowledged is at
        // `oldest` or later: the peer compares only if it got all of them.
        let oldest = self.resend.oldest_live().unwrap_or(self.next_seq);
        let msg = MessageRef::Digest {
            oldest: oldest.0,
            ranges: RANGES as u16,
            first: sent as u16,
            digests: &values[sent..sent + n],
        };
        if !dg.push(&*self.codec, &msg, buf) {
            self.pending_digest = Some((values, sent));
            return false;
        }
        let seq = self.next_seq;
        self.next_seq = seq.next();
        self.resend.push(seq, Item::Digest);
        if sent + n < values.len() {
            self.pending_digest = Some((values, sent + n));
        } else {
            self.stats.digests_sent += 1;
        }
        true
    }

    /// Messages sent before a digest that is not fully sent yet were lost:
    /// their content goes again after it, so the digest would describe
    /// changes the peer has not got. It is dropped; the next one goes at
    /// the next interval.
    pub(super) fn lost_before_digest(&mut self) {
        if self.pending_digest.is_some() && self.lost.iter().any(|i| !i.is_control()) {
            self.pending_digest = None;
            self.stats.digests_deferred += 1;
        }
    }

    /// Anti-entropy runs: native dialect, interval set.
    pub(super) fn anti_entropy(&self) -> bool {
        !self.is_compat() && !self.cfg.anti_entropy_interval.is_zero()
    }

    /// A DIGEST part `seq` arrived and was accepted. Once all parts are
    /// there, hand them over if they are comparable: the peer's oldest
    /// unacknowledged message (`oldest`) and everything after it arrived in
    /// one run without a gap, so every change the peer sent before the
    /// digest has been applied here; and no bulk or repair we asked for is
    /// still under way.
    pub(super) fn on_digest(
        &mut self,
        seq: Seq,
        oldest: Seq,
        ranges: u16,
        first: u16,
        part: Vec<u64>,
    ) {
        if !self.anti_entropy() {
            // Off here: no digests of the external cache to compare with.
            self.stats.digests_skipped += 1;
            return;
        }
        let assembled = match self.digest_parts.take() {
            _ if usize::from(ranges) != RANGES => None,
            _ if first == 0 => Some(part),
            // The next part, right after the previous one in the sequence.
            Some((next, mut values)) if next == seq && values.len() == usize::from(first) => {
                values.extend_from_slice(&part);
                Some(values)
            }
            _ => None,
        };
        let Some(all) = assembled else {
            self.stats.digests_skipped += 1;
            return;
        };
        if all.len() < RANGES {
            self.digest_parts = Some((seq.next(), all));
            return;
        }
        let in_run =
            self.rx.is_some_and(|rx| oldest.diff(rx.run_start) >= 0 && seq.diff(oldest) >= 0);
        if !in_run || self.awaiting_bulk || self.repairs_outstanding > 0 || all.len() != RANGES {
            self.stats.digests_skipped += 1;
            return;
        }
        self.stats.digests_received += 1;
        self.events.push_back(PeerEvent::Digest { digests: all });
    }
}
