//! Kernel side of the reactor: conntrack events into the internal cache and
//! the transmit queue, overrun recovery, expectations' masters.

use super::*;

impl Daemon {
    pub(super) fn on_kernel_events(&mut self, now: Instant) {
        let mut items = std::mem::take(&mut self.event_buf);
        items.clear();
        let result = self.events.recv(&mut items, EVENT_BATCH);
        self.events_pending = matches!(result, Ok(n) if n >= EVENT_BATCH);
        if let Err(e) = result {
            self.events_pending = false;
            log::warn!("reading conntrack events failed: {e}");
        }
        self.handle_kernel_events(now, &mut items);
        self.event_buf = items;
    }

    /// Apply kernel events, in order; `items` is left empty.
    pub(super) fn handle_kernel_events(
        &mut self,
        now: Instant,
        items: &mut Vec<netlink::EventItem>,
    ) {
        let own = self.kernel.port_id();
        for item in items.drain(..) {
            self.stats.events_received += 1;
            if item.origin_pid == own && own != 0 {
                // Our own commit: the peer already has these flows.
                self.stats.events_own += 1;
                continue;
            }
            match item.event {
                CtEvent::New(flow) => self.node.local_upsert(now, flow, true),
                CtEvent::Update(flow) => self.node.local_upsert(now, flow, false),
                CtEvent::Destroy(flow) => self.node.local_destroy(&flow),
                CtEvent::ExpNew(exp) => self.node.local_exp(now, *exp, false),
                CtEvent::ExpDestroy(exp) => self.node.local_exp(now, *exp, true),
                CtEvent::Overrun => self.on_overrun(now),
            }
        }
    }

    /// Read every event the kernel has queued for us.
    pub(super) fn drain_kernel_events(&mut self, now: Instant) {
        loop {
            self.on_kernel_events(now);
            if !self.events_pending {
                break;
            }
        }
    }

    /// Read back the masters the node asks for ([`Node::masters_due`]).
    pub(super) fn refresh_masters(&mut self, now: Instant) {
        for key in self.node.masters_due(now) {
            match self.kernel.get(&key) {
                Ok(Some(flow)) => self.node.local_upsert(now, flow, false),
                // Gone meanwhile: its destroy event follows.
                Ok(None) => {}
                Err(e) => log::warn!(
                    "cannot read back {key}, the master of a new expectation: {e}; the peer may lack its NAT sequence adjustment until its next change"
                ),
            }
        }
    }

    pub(super) fn on_overrun(&mut self, now: Instant) {
        self.stats.netlink_overruns += 1;
        let current = self.events.rcvbuf();
        let max = self.cfg.general.netlink.rcvbuf_max.get();
        if current < max {
            let grown = (current * 2).min(max);
            if let Err(e) = self.events.set_rcvbuf(grown) {
                log::warn!("cannot grow the netlink event buffer to {grown} bytes: {e}");
            }
        }
        if self.node.on_overrun(now) {
            log::warn!(
                "conntrack events were lost (netlink overrun, buffer {} bytes); resyncing with the kernel in {:?}",
                self.events.rcvbuf(),
                self.cfg.general.netlink.overrun_resync
            );
        }
    }

    /// Dump the kernel table and reconcile the internal cache with it: new
    /// and changed flows are upserted, flows that vanished are destroyed;
    /// when `tell_peer`, every difference is queued for the peer.
    ///
    /// `claim_all`: every dumped flow becomes ours (start, `-R`); otherwise
    /// (recovery from an overrun) the replicas that direct-to-kernel mode
    /// wrote for the peer stay the peer's.
    pub(super) fn resync_kernel(
        &mut self,
        tell_peer: bool,
        claim_all: bool,
    ) -> io::Result<(usize, usize)> {
        self.stats.kernel_resyncs += 1;
        // Events queued before the dump are older than it: after an overrun
        // some that followed them are lost, so replaying them after the dump
        // would regress flows for good. Events from here on are newer than
        // the dump's start and are applied after it.
        self.events.discard_queued()?;
        self.events_pending = false;
        let mut dumped = Vec::new();
        let mut pause = interlude!(self, Instant::now() + INTERLUDE);
        let mut n = 0u32;
        let ftfw = &mut self.node.ftfw;
        self.kernel.dump_into(|flow| {
            dumped.push(flow);
            n = n.wrapping_add(1);
            if n.is_multiple_of(1024) {
                pause.tick(ftfw);
            }
        })?;
        // Reconciled in steps, answering the peer in between: a million
        // flows take about a second.
        let mut job = self.node.resync_begin(dumped, tell_peer, claim_all);
        let mut next = Instant::now() + INTERLUDE;
        while self.node.resync_step(&mut job, RESYNC_STEP) {
            let mut pause = interlude!(self, next);
            pause.tick(&mut self.node.ftfw);
            next = pause.next;
        }
        let done = self.node.resync_end(Instant::now(), job);
        if self.node.exp.sync.enabled() {
            let dumped = self.kernel.dump_expectations()?;
            self.node.reconcile_expectations(dumped, tell_peer);
        }
        Ok(done)
    }
}
