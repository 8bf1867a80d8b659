//! `sync.defer`'s I/O: the packets the ruleset queues, the lookup of a
//! flow the kernel did not send with its packet, and the releases. Which
//! packet waits, and for what, is decided in `node/defer.rs`.

use super::*;

impl Daemon {
    /// Packets queued by the ruleset (`sync.defer`): each one's flow, from
    /// the entry the queue delivers or looked up, goes to the node, which
    /// says whether the packet waits for the peer's ACK
    /// ([`Node::defer_packet`]).
    pub(super) fn on_queued_packets(&mut self, now: Instant) {
        let Some(mut d) = self.defer.take() else { return };
        d.packets.clear();
        if let Err(e) = d.queue.recv(&mut d.packets)
            && d.log.allow(now).is_some()
        {
            log::warn!("sync.defer: {e}");
        }
        let lookup = self.node.defer_wants_flows();
        for p in std::mem::take(&mut d.packets) {
            // No peer to wait for: no lookup either.
            let flow =
                if lookup { p.flow.or_else(|| self.flow_of_packet(p.headers)) } else { None };
            if !self.node.defer_packet(now, p.id, flow) {
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

    /// Release the packets the node lets go (acknowledged, or waited long
    /// enough).
    pub(super) fn drive_defer(&mut self, now: Instant) {
        let Some(d) = &mut self.defer else { return };
        self.node.defer_tick(now, &mut d.release);
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
