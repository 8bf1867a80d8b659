//! One side of the simulation: its kernel table in memory, and the node
//! the daemon would run on it, with what the harness tracks about it.

use super::*;

/// One side's kernel table, in memory: what the random changes change, what
/// a dump returns and what a commit writes. The daemon's event socket
/// filters out the events of its own requests, so a commit makes none.
#[derive(Default)]
pub(crate) struct SimKernel(pub(super) HashMap<FlowKey, Flow, Fixed>);

impl SimKernel {
    pub(super) fn dump(&self) -> Vec<Flow> {
        self.0.values().cloned().collect()
    }
}

impl Table for SimKernel {
    fn commit_flows(
        &mut self,
        flows: Vec<&Flow>,
        opts: &CommitOptions,
        between: &mut dyn FnMut(),
    ) -> std::io::Result<CommitReport> {
        let mut report = CommitReport::default();
        for flow in flows {
            match self.0.insert(flow.key(), flow.clone()) {
                Some(old) if opts.create_only => {
                    report.existing += 1;
                    self.0.insert(old.key(), old);
                }
                Some(_) => report.updated += 1,
                None => report.created += 1,
            }
            between();
        }
        Ok(report)
    }

    fn delete_flows(&mut self, keys: &[FlowKey]) -> std::io::Result<CommitReport> {
        let mut report = CommitReport::default();
        for key in keys {
            match self.0.remove(key) {
                Some(_) => report.deleted += 1,
                None => report.failed.push((*key, libc::ENOENT)),
            }
        }
        Ok(report)
    }
}

pub(super) struct Side {
    /// Its kernel's table.
    pub(super) kernel: SimKernel,
    /// Kernel events are lost until then (an overrun under way).
    pub(super) deaf_until: Option<Duration>,
    /// Kernel events lost, and dumps after an overrun.
    pub(super) events_lost: u64,
    pub(super) resyncs: u64,
    /// This node started once the peer's table had stopped changing (no
    /// kernel change, overrun or failover to come): when it becomes
    /// ready, its view must equal that table exactly.
    pub(super) born_calm: bool,
    /// The daemon's node: its internal cache stands for the kernel's table
    /// (random changes reach it as kernel events do), its external cache
    /// is the view.
    pub(super) node: Node,
    /// Virtual time of the last completed repair of `external`.
    pub(super) repaired_at: Option<Duration>,
    /// Keys whose last change in `external` came from an injected datagram.
    pub(super) tainted: HashSet<FlowKey, Fixed>,
    /// Changes of `external` made by injected datagrams.
    pub(super) tainted_events: u64,
    /// Datagrams of this run the link delivered to this side that changed
    /// nothing then (their session was not known yet, say).
    pub(super) unapplied: HashSet<Vec<u8>, Fixed>,
}

impl Side {
    /// Apply one event as the daemon does, through its node; `injected`:
    /// it came from a datagram the attacker sent. Returns true for a flow
    /// message, and whether the node became ready.
    pub(super) fn apply_ready(
        &mut self,
        now: Duration,
        t0: Instant,
        ev: PeerEvent,
        injected: bool,
    ) -> (bool, bool) {
        let taint = |side: &mut Side, key: FlowKey| {
            if injected {
                side.tainted_events += 1;
                side.tainted.insert(key);
            } else {
                side.tainted.remove(&key);
            }
        };
        let flow_msg = match &ev {
            PeerEvent::Upsert { flow, .. } => {
                taint(self, flow.key());
                true
            }
            PeerEvent::Destroy { key } => {
                taint(self, *key);
                true
            }
            PeerEvent::BulkEnd { .. } | PeerEvent::RepairUpsert { .. } => {
                if injected {
                    self.tainted_events += 1;
                }
                false
            }
            PeerEvent::RepairEnd { .. } => {
                if injected {
                    self.tainted_events += 1;
                }
                self.repaired_at = Some(now);
                false
            }
            _ => false,
        };
        // Readiness, the peer's ups and downs and stalls change nothing
        // here; a refill from the kernel is never asked for (no -f here).
        let action = self.node.on_peer_event(t0 + now, ev);
        assert_ne!(action, Some(Action::RefillThenBulk));
        (flow_msg, action == Some(Action::Ready))
    }

    pub(super) fn apply(
        &mut self,
        now: Duration,
        t0: Instant,
        ev: PeerEvent,
        injected: bool,
    ) -> bool {
        self.apply_ready(now, t0, ev, injected).0
    }

    /// A change of the kernel's table, and its event to the node unless an
    /// overrun loses it.
    pub(super) fn kernel_change(&mut self, now: Instant, flow: Flow, destroy: bool) {
        let key = flow.key();
        let (flow, born) = if destroy {
            let Some(old) = self.kernel.0.remove(&key) else { return };
            (old, false)
        } else {
            (flow.clone(), self.kernel.0.insert(key, flow).is_none())
        };
        if self.deaf_until.is_some() {
            self.events_lost += 1;
        } else if destroy {
            self.node.local_destroy(&flow);
        } else {
            self.node.local_upsert(now, flow, born);
        }
    }

    /// The notify script's `primary` steps: commit the peer's flows, then
    /// `-f`, `-R` and `-B`. Every flow of the view is in the kernel after
    /// the commit.
    pub(super) fn primary(&mut self, now: Instant) -> CommitReport {
        let view: Vec<Flow> = self.node.external.iter().map(|e| e.flow.clone()).collect();
        let opts = CommitOptions { timeout: None, be_liberal: false, create_only: false };
        let done = match self.node.commit(&mut self.kernel, &opts, &mut |_| {}) {
            Ok(done) => done,
            Err(e) => panic!("the simulated table refused the commit: {e:?}"),
        };
        for f in &view {
            assert_eq!(self.kernel.0.get(&f.key()), Some(f), "committed, not in the kernel");
        }
        self.node.flush_caches(true, true);
        self.node.reconcile_flows(now, self.kernel.dump(), true, true);
        self.node.internal_flushed = false;
        self.node.bulk_send();
        done.report
    }

    /// The internal cache equals the kernel's table, timeouts aside: a dump
    /// that finds only a flow's seconds left moved keeps the cached state
    /// (`Cache::reconcile_one`), as the peer needs nothing new.
    pub(super) fn matches_kernel(&self) -> bool {
        self.kernel_gaps() == [0, 0]
    }

    /// [in the internal cache only, missing from it or in another state].
    /// In direct-to-kernel mode the view's flows count as the internal
    /// cache's: the kernel must hold them too, as the peer reported them.
    pub(super) fn kernel_gaps(&self) -> [usize; 2] {
        let int = &self.node.internal;
        let ext = self.node.direct.is_some().then_some(&self.node.external);
        let same = |a: &Flow, b: &Flow| {
            Flow { timeout: 0, ..a.clone() } == Flow { timeout: 0, ..b.clone() }
        };
        let held = |f: &Flow| {
            int.get(&f.key()).is_some_and(|e| same(&e.flow, f))
                || ext.and_then(|x| x.get(&f.key())).is_some_and(|e| same(&e.flow, f))
        };
        let expected = int.iter().chain(ext.into_iter().flat_map(|x| x.iter()));
        [
            expected.filter(|e| !self.kernel.0.contains_key(&e.flow.key())).count(),
            self.kernel.0.values().filter(|f| !held(f)).count(),
        ]
    }

    /// Make the drift `d` in the external view.
    pub(super) fn drift(&mut self, d: &Drift, rng: &mut Rng) {
        let external = &mut self.node.external;
        let mut keys: Vec<FlowKey> = external.iter().map(|e| e.flow.key()).collect();
        keys.sort_by_key(|k| (k.l4, k.src));
        assert!(keys.len() >= d.removed + d.changed, "not enough flows to drift: {d:?}");
        for _ in 0..d.removed {
            let k = keys.swap_remove(rng.below(keys.len() as u64) as usize);
            external.remove(&k);
        }
        for _ in 0..d.changed {
            let k = keys.swap_remove(rng.below(keys.len() as u64) as usize);
            if let Some(e) = external.get(&k) {
                let (mut f, stamp) = (e.flow.clone(), e.stamp);
                f.mark ^= 0x8000_0000;
                external.upsert(f, stamp);
            }
        }
        for i in 0..d.added {
            let f = Flow::new_v4(
                proto::UDP,
                [10, 77, 0, 1].into(),
                [10, 9, 9, 9].into(),
                1 + i as u16,
                53,
            );
            external.upsert(f, 0);
        }
    }
}
