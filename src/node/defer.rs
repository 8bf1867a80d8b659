//! `sync.defer` in the node: which packets the ruleset queued wait for the
//! peer's acknowledgment of their flow's state, and when each one goes. The
//! reactor owns the queue socket: it reads the packets, looks up a flow the
//! kernel did not send with them, and passes the verdicts back.

use std::time::Instant;

use super::Node;
use crate::defer::{Deferral, Skip};
use crate::flow::Flow;
use crate::ftfw::{PeerState, Seq};

/// Held packets, and the protocol's loss count when barriers were last
/// taken.
pub struct Deferred {
    pub held: Deferral,
    resent: u64,
}

impl Deferred {
    pub fn new(held: Deferral) -> Deferred {
        Deferred { held, resent: 0 }
    }
}

impl Node {
    /// Whether a queued packet's flow is worth looking up: only a peer that
    /// is there can acknowledge it.
    pub fn defer_wants_flows(&self) -> bool {
        self.ftfw.peer_state() == PeerState::Established
    }

    /// Packet `id` was queued, with its flow if known. The flow's state goes
    /// to the peer now (the kernel reports a new flow only after the
    /// packet's release); true when the packet is held until the peer
    /// acknowledges it, false when it must be released at once.
    pub fn defer_packet(&mut self, now: Instant, id: u32, flow: Option<Flow>) -> bool {
        if self.defer.is_none() {
            return false;
        }
        let skip = match flow {
            None if !self.defer_wants_flows() => Skip::PeerDown,
            None => Skip::NotReplicated,
            Some(flow) => {
                let key = flow.key();
                let born = self.external.get(&key).is_none() && self.internal.get(&key).is_none();
                self.local_upsert(now, flow, born);
                let replicated = self.internal.get(&key).is_some();
                let Some(d) = &mut self.defer else { return false };
                if !replicated {
                    Skip::NotReplicated
                } else if d.held.hold(id, now) {
                    self.ftfw.request_ack();
                    return true;
                } else {
                    // Full: counted by `hold`.
                    return false;
                }
            }
        };
        if let Some(d) = &mut self.defer {
            d.held.skip(skip);
        }
        false
    }

    /// Take barriers for newly held packets; append those the peer
    /// acknowledged, or that waited long enough, to `release`.
    pub fn defer_tick(&mut self, now: Instant, release: &mut Vec<u32>) {
        let Some(d) = &mut self.defer else { return };
        // Lost messages go again with new seqs: the barriers move with them.
        let resent = self.ftfw.stats().resent;
        if resent != d.resent {
            d.resent = resent;
            d.held.forget_barriers();
        }
        if d.held.needs_barrier() && self.ftfw.tx_is_empty() {
            d.held.set_barrier(Seq(self.ftfw.next_seq()));
        }
        d.held.release_acked(self.ftfw.acked_before(), now, release);
        d.held.release_expired(now, release);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::defer::DeferStats;
    use crate::flow::proto;
    use crate::ftfw::{Ftfw, FtfwConfig};
    use crate::node::NodeConfig;
    use crate::readiness::Readiness;

    fn node(ftfw: Ftfw) -> Node {
        let cfg = NodeConfig {
            peer_timeout: Duration::from_secs(4),
            overrun_resync: Duration::from_secs(1),
            cache_limit: 1000,
            expectations: crate::expect::ExpectSync::Off,
            filter: crate::filter::Filter::accept_all(),
            direct: false,
            digests: false,
            defer: Some((Duration::from_millis(300), 2)),
        };
        Node::new(ftfw, cfg, Readiness::new(None))
    }

    fn flow(port: u16) -> Flow {
        Flow::new_v4(proto::TCP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), port, 80)
    }

    fn counts(n: &Node) -> DeferStats {
        n.defer.as_ref().unwrap().held.stats()
    }

    #[test]
    fn without_a_peer_packets_go_at_once_and_are_counted() {
        let now = Instant::now();
        let mut n = node(Ftfw::new(FtfwConfig::default(), 1, 100, now));
        assert!(!n.defer_wants_flows());
        assert!(!n.defer_packet(now, 1, None));
        let s = counts(&n);
        assert_eq!((s.peer_down, s.held), (1, 0));
    }

    #[test]
    fn with_a_peer_a_packet_waits_for_its_flow_until_the_timeout() {
        let now = Instant::now();
        let mut n = node(crate::ftfw::tests::established(500, now));
        assert!(n.defer_wants_flows());
        // Its flow goes to the peer now, and the packet waits.
        assert!(n.defer_packet(now, 1, Some(flow(1))));
        assert!(n.internal.get(&flow(1).key()).is_some());
        assert!(n.defer_packet(now, 2, Some(flow(2))));
        // Two held at most: the third goes at once.
        assert!(!n.defer_packet(now, 3, Some(flow(3))));
        // A packet whose flow the kernel could not tell goes at once.
        assert!(!n.defer_packet(now, 4, None));
        let s = counts(&n);
        assert_eq!((s.held, s.overflow, s.not_replicated), (2, 1, 1));
        let mut release = Vec::new();
        n.defer_tick(now + Duration::from_millis(100), &mut release);
        assert!(release.is_empty(), "nothing acknowledged yet: {release:?}");
        n.defer_tick(now + Duration::from_millis(300), &mut release);
        assert_eq!(release, [1, 2]);
        assert_eq!(counts(&n).timeouts, 2);
    }
}
