//! The handshake (docs/PROTOCOL.md, "Handshake"): answering HELLO,
//! accepting the HELLO_BACK that echoes our session and round, and
//! tracking a new peer session (a restart of the peer).

use std::time::Instant;

use super::*;

impl Ftfw {
    pub(super) fn on_hello(&mut self, now: Instant, hdr: &DatagramHeader, round: u32) {
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

    pub(super) fn on_hello_back(&mut self, hdr: &DatagramHeader, echoed: u32, round: u32) {
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
            self.peer_floor = self
                .first_hello_back
                .filter(|(session, _)| *session == hdr.session)
                .map(|(_, seq)| seq);
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
}
