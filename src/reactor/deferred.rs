//! `sync.defer`: packets the ruleset queues until the peer acknowledged
//! their flow's state.

use super::*;

impl Daemon {
    /// Packets queued by the ruleset (`sync.defer`): send each one's flow
    /// state to the peer now, from the entry the queue delivers (the kernel
    /// reports a new flow only after the packet's release), and hold the
    /// packet until the peer acknowledges it.
    pub(super) fn on_queued_packets(&mut self, now: Instant) {
        let Some(mut d) = self.defer.take() else { return };
        d.packets.clear();
        if let Err(e) = d.queue.recv(&mut d.packets)
            && d.log.allow(now).is_some()
        {
            log::warn!("sync.defer: {e}");
        }
        let up = self.node.ftfw.peer_state() == PeerState::Established;
        for p in std::mem::take(&mut d.packets) {
            // No peer to wait for: no lookup either.
            let flow = if up { p.flow.or_else(|| self.flow_of_packet(p.headers)) } else { None };
            let skip = match flow {
                None if !up => Some(Skip::PeerDown),
                None => Some(Skip::NotReplicated),
                Some(flow) => {
                    let key = flow.key();
                    let born = self.node.external.get(&key).is_none()
                        && self.node.internal.get(&key).is_none();
                    self.node.local_upsert(now, flow, born);
                    if self.node.internal.get(&key).is_none() {
                        Some(Skip::NotReplicated)
                    } else if !d.held.hold(p.id, now) {
                        d.release.push(p.id);
                        None
                    } else {
                        self.node.ftfw.request_ack();
                        None
                    }
                }
            };
            if let Some(why) = skip {
                d.held.skip(why);
                d.release.push(p.id);
            }
        }
        self.defer = Some(d);
    }

    /// A queued packet's flow when the kernel did not send its conntrack
    /// entry: the confirmed entry its tuple belongs to, or else (the first
    /// packet of a flow, not yet confirmed) what its headers say.
    pub(super) fn flow_of_packet(&mut self, headers: Option<Flow>) -> Option<Flow> {
        let headers = headers?;
        // A bare SYN is a flow's first packet: its entry is confirmed only
        // after this packet's release, so asking the kernel would cost a
        // request per new connection for nothing. A retransmitted SYN of a
        // flow the events already brought is taken from the cache.
        if headers.l4proto == proto::TCP && headers.proto_state == tcp_state::SYN_SENT {
            let cached = self.node.internal.get(&headers.key()).map(|e| e.flow.clone());
            return Some(cached.unwrap_or(headers));
        }
        match self.kernel.get(&headers.key()) {
            Ok(Some(flow)) => Some(flow),
            Ok(None) => Some(headers),
            Err(_) => None,
        }
    }

    /// Take barriers for newly held packets, release those the peer
    /// acknowledged or that waited long enough.
    pub(super) fn drive_defer(&mut self, now: Instant) {
        let Some(d) = &mut self.defer else { return };
        let resent = self.node.ftfw.stats().resent;
        if resent != d.resent {
            d.resent = resent;
            d.held.forget_barriers();
        }
        if d.held.needs_barrier() && self.node.ftfw.tx_is_empty() {
            d.held.set_barrier(Seq(self.node.ftfw.next_seq()));
        }
        d.held.release_acked(self.node.ftfw.acked_before(), now, &mut d.release);
        d.held.release_expired(now, &mut d.release);
        if let Err(e) = d.queue.accept(&d.release)
            && d.log.allow(now).is_some()
        {
            log::warn!(
                "sync.defer: {e}; {} packets were not released (fail-open applies only to a full queue)",
                d.release.len()
            );
        }
        d.release.clear();
    }
}
