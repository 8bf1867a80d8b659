//! Timers and liveness (docs/PROTOCOL.md, "Keepalive and liveness"):
//! what `handle_timeout` fires (the anti-entropy interval, the peer
//! timeout) and the stall detector. The keepalive timer is re-armed by
//! every datagram sent (`send.rs`).

use std::time::Instant;

use super::*;

impl Ftfw {
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
    pub(super) fn stall_deadline(&self) -> Option<Instant> {
        if self.stalled || !self.peer_alive {
            return None;
        }
        let tx = (self.resend.live_data() > 0).then_some(self.tx_progress.1);
        tx.into_iter().chain(self.rx_refused_since).min().map(|t| t + self.cfg.stall_timeout)
    }

    /// Note progress of the stream both ways, and report a stall when it
    /// begins or ends.
    pub(super) fn check_stall(&mut self, now: Instant) {
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
}
