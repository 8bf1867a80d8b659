//! Sending (docs/PROTOCOL.md, "Sending", "Resend queue"): the native
//! dialect's `poll_transmit`, and what both dialects use to fill a
//! datagram: the ACK and NACK ranges gaps produced, sequenced messages
//! moved from the transmit queue into the resend queue (with backpressure
//! and bulk barriers), and closing a datagram. The conntrackd dialect's
//! `poll_transmit` is in `compat.rs`.

use std::time::Instant;

use super::*;

impl Ftfw {
    /// Build the next datagram into `buf`; `None` when nothing is due.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if self.is_compat() {
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
        let stamp_len = if self.stamping() { self.codec.message_len(&stamp) } else { 0 };
        let mut dg = Builder { at: header + stamp_len, limit, count: 0, seq: first_seq };

        if (self.phase == PeerState::HelloSent || self.probing) && keepalive_due {
            let hello = MessageRef::Hello { session: self.session, round: self.hello_round };
            dg.push(&*self.codec, &hello, buf);
        }
        if let Some((session, round)) = self.hello_back
            && dg.push(&*self.codec, &MessageRef::HelloBack { session, round }, buf)
        {
            self.hello_back = None;
            if self.first_hello_back.is_none_or(|(s, _)| s != session) {
                self.first_hello_back = Some((session, first_seq));
            }
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
        if let Flavor::Native(native) = &mut self.flavor
            && native.stamping
        {
            native.tx_counter += 1;
            let peer_session = self.rx.map_or(0, |rx| rx.session);
            let stamp = MessageRef::Stamp { counter: native.tx_counter, peer_session };
            self.codec.emit_message(&stamp, 0, &mut buf[header..header + stamp_len]).ok()?;
            dg.count += 1;
        }
        self.finish_datagram(now, flags, first_seq, &dg, buf)
    }

    /// Close a datagram (header, trailer), count it, and re-arm the
    /// keepalive: unacknowledged data is probed faster, because the peer
    /// finds a lost tail only when a later seq arrives.
    pub(super) fn finish_datagram(
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
    pub(super) fn push_ranges(&mut self, dg: &mut Builder, buf: &mut [u8]) {
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
            if self.is_compat() {
                self.hold(item);
            }
        }
    }

    /// Append sequenced messages from the transmit queue. Returns true when
    /// sending stopped for backpressure or at a bulk barrier.
    pub(super) fn push_data(&mut self, dg: &mut Builder, buf: &mut [u8]) -> bool {
        loop {
            if self.resend.is_full() || self.beyond_peer_floor() {
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
}

impl Ftfw {
    /// A restarted peer tracks us from the seq of our first answer to its
    /// HELLO, while the ring we drained for it no longer bounds how far we
    /// run ahead of that: hold new data until its ACKs catch up.
    fn beyond_peer_floor(&self) -> bool {
        self.peer_floor.is_some_and(|floor| {
            self.next_seq.diff(floor) >= 0
                && self.next_seq.diff(floor) as u32 >= self.cfg.max_seq_jump
        })
    }
}

/// A datagram being filled.
pub(super) struct Builder {
    pub(super) at: usize,
    pub(super) limit: usize,
    pub(super) count: u16,
    /// Seq of the next sequenced message.
    pub(super) seq: Seq,
}

impl Builder {
    /// Append `msg` if it fits.
    pub(super) fn push(&mut self, codec: &dyn Codec, msg: &MessageRef<'_>, buf: &mut [u8]) -> bool {
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
