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
                CtEvent::New(flow) => self.local_upsert(flow, true),
                CtEvent::Update(flow) => self.local_upsert(flow, false),
                CtEvent::Destroy(flow) => self.local_destroy(&flow),
                CtEvent::ExpNew(exp) => {
                    self.master_refresh.push((now + MASTER_REFRESH_DELAY, exp.master));
                    self.local_exp(*exp, false);
                }
                CtEvent::ExpDestroy(exp) => self.local_exp(*exp, true),
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

    /// `born`: the kernel just created this flow, so the peer cannot know it
    /// and a destroy before it is sent cancels both.
    pub(super) fn local_upsert(&mut self, mut flow: Flow, born: bool) {
        if !born && let Some(old) = self.node.internal.get(&flow.key()) {
            flow.inherit_unreported(&old.flow);
        }
        if !self.cfg.filter.accepts(&flow) {
            self.stats.events_filtered += 1;
            // A flow that moved into an ignored state leaves the peer too.
            let key = flow.key();
            if self.node.internal.remove(&key).is_some() {
                self.node.ftfw.queue(LocalChange::Destroy(key));
            }
            return;
        }
        self.internal_stamp += 1;
        match self.node.internal.upsert(flow.clone(), self.internal_stamp) {
            Upsert::Created if born => self.node.ftfw.queue(LocalChange::New(flow)),
            Upsert::Created | Upsert::Updated { changed: true } => {
                self.node.ftfw.queue(LocalChange::Upsert(flow));
            }
            Upsert::Updated { changed: false } => {}
            Upsert::Full => self.node.log_full("internal", Instant::now()),
        }
    }

    pub(super) fn local_destroy(&mut self, flow: &Flow) {
        let key = flow.key();
        let removal = self.node.internal.remove_entry(&key, flow.entry_id);
        if removal == Removal::Stale {
            self.stats.events_stale += 1;
            return;
        }
        if let Some(direct) = &mut self.node.direct
            && self.node.external.get(&key).is_some()
        {
            direct.kernel_dropped(key);
        }
        match removal {
            Removal::Removed(_) => self.node.ftfw.queue(LocalChange::Destroy(key)),
            _ => self.stats.events_filtered += 1,
        }
    }

    pub(super) fn local_exp(&mut self, exp: crate::expect::Expectation, destroyed: bool) {
        if let Some(change) = self.node.exp.local(exp, destroyed) {
            self.queue_exp(change);
        }
    }

    pub(super) fn queue_exp(&mut self, change: ExpChange) {
        self.node.ftfw.queue(match change {
            ExpChange::Upsert(exp) => LocalChange::ExpUpsert(exp),
            ExpChange::Destroy(exp) => LocalChange::ExpDestroy(exp),
        });
    }

    /// A helper that creates an expectation of a NAT flow usually rewrites
    /// an address in the payload too, and the length change becomes the
    /// master's sequence adjustment. The kernel sets that without an event
    /// (only a dump or get reports it), yet a new master that lacks it
    /// mangles every later segment of the control connection. So the master
    /// is read back shortly after the expectation appears (the rewrite
    /// follows the expectation's insertion within the same packet).
    pub(super) fn refresh_masters(&mut self, now: Instant) {
        let mut due = Vec::new();
        self.master_refresh.retain(|&(t, key)| {
            if t <= now {
                due.push(key);
            }
            t > now
        });
        for key in due {
            let natted = self
                .node
                .internal
                .get(&key)
                .is_some_and(|e| e.flow.snat().is_some() || e.flow.dnat().is_some());
            if !natted {
                continue;
            }
            match self.kernel.get(&key) {
                Ok(Some(flow)) => self.local_upsert(flow, false),
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
        if let Some(direct) = &mut self.node.direct {
            direct.lost_track();
        }
        let current = self.events.rcvbuf();
        if current < self.cfg.rcvbuf_max {
            let grown = (current * 2).min(self.cfg.rcvbuf_max);
            if let Err(e) = self.events.set_rcvbuf(grown) {
                log::warn!("cannot grow the netlink event buffer to {grown} bytes: {e}");
            }
        }
        if self.resync_at.is_none() {
            log::warn!(
                "conntrack events were lost (netlink overrun, buffer {} bytes); resyncing with the kernel in {:?}",
                self.events.rcvbuf(),
                self.cfg.overrun_resync
            );
            self.resync_at = Some(now + self.cfg.overrun_resync);
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
        self.kernel.dump_into(|flow| dumped.push(flow))?;
        if let Some(direct) = &mut self.node.direct {
            let in_kernel: std::collections::HashSet<_> = dumped.iter().map(Flow::key).collect();
            let missing = self.node.external.iter().map(|e| e.flow.key());
            direct.set_missing(missing.filter(|k| !in_kernel.contains(k)));
        }
        let ours: Vec<Flow> = dumped
            .into_iter()
            .filter(|f| self.cfg.filter.accepts(f) && (claim_all || !self.owned_by_peer(f)))
            .collect();
        let ftfw = &mut self.node.ftfw;
        let done = self.node.internal.reconcile(ours, &mut self.internal_stamp, |flow| {
            if tell_peer {
                ftfw.queue(LocalChange::Upsert(flow.clone()));
            }
        });
        if done.full > 0 {
            self.node.log_full("internal", Instant::now());
        }
        let (changed, gone) = (done.changed, done.vanished.len());
        if tell_peer {
            for key in done.vanished {
                self.node.ftfw.queue(LocalChange::Destroy(key));
            }
        }
        if self.node.exp.sync.enabled() {
            let dumped = self.kernel.dump_expectations()?;
            for change in self.node.exp.reconcile(dumped) {
                if tell_peer {
                    self.queue_exp(change);
                }
            }
        }
        Ok((changed, gone))
    }

    /// In direct-to-kernel mode, a flow in our kernel that the peer wrote and
    /// we have not changed since: a dump must not claim it as ours.
    pub(super) fn owned_by_peer(&self, flow: &Flow) -> bool {
        let key = flow.key();
        self.node.direct.is_some()
            && self.node.internal.get(&key).is_none()
            && self.node.external.get(&key).is_some()
    }
}
