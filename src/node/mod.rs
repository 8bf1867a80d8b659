//! The replication node: our table (the internal cache), the peer's (the
//! external cache), expectations, direct-mode ownership, readiness,
//! anti-entropy and the protocol core that links them, with what each
//! event of the peer does to them.
//!
//! Sans I/O, like the core inside it: no socket, no clock read, no
//! kernel call. The reactor reads the clock once per turn and passes
//! `now`, hands over the core's events, and carries out the [`Action`]s
//! the node returns (a dump of the kernel table, the ready file, the
//! status line). Log lines go through the `log` facade, as the core's
//! callers expect one line per event that matters.

use std::time::{Duration, Instant};

mod commit;
mod defer;
pub use commit::{CommitError, Committed};
pub use defer::Deferred;

use crate::cache::{Cache, Removal, Upsert};
use crate::defer::Deferral;
use crate::digest::{self, RepairLedger};
use crate::direct::DirectToKernel;
use crate::expect::{ExpChange, ExpState, ExpectSync, Expectation};
use crate::filter::Filter;
use crate::flow::{Flow, FlowKey};
use crate::ftfw::{Ftfw, LocalChange, PeerEvent};
use crate::logging::RateLimit;
use crate::readiness::Readiness;

/// Bulks to the peer start at least this far apart: in conntrackd's wire
/// format anyone can send a HELLO, and each would cost a walk of the
/// whole table. Requests in between are served by one bulk at the end.
pub const BULK_SPACING: Duration = Duration::from_secs(1);

/// At most one log line about peer restarts or HELLO probes this often.
const PROBE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the node needs done outside itself, at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The peer's complete table is here: publish readiness.
    Ready,
    /// The peer asked for our table while the internal cache is flushed
    /// (`-f` without `-R` yet): refill it from the kernel, clear
    /// [`Node::internal_flushed`], then call [`Node::bulk_requested`].
    RefillThenBulk,
    PeerUp,
    PeerDown,
    /// Replication stalled: `tx`, nothing we sent was acknowledged; `rx`,
    /// nothing the peer sent was accepted.
    Stalled {
        tx: bool,
        rx: bool,
    },
}

/// How long after a new expectation its master is read back.
const MASTER_REFRESH_DELAY: Duration = Duration::from_millis(5);

/// What the node is built from.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The protocol's `peer_timeout`, for the log line of a peer down.
    pub peer_timeout: Duration,
    /// How long after lost kernel events the table is dumped again: the
    /// storm that overran the socket has time to pass.
    pub overrun_resync: Duration,
    /// Most flows in each cache (and expectations in each of theirs).
    pub cache_limit: usize,
    pub expectations: ExpectSync,
    /// Which of our kernel's flows are replicated.
    pub filter: Filter,
    /// Direct-to-kernel mode: the peer's flows go to our kernel at once.
    pub direct: bool,
    /// Keep anti-entropy digests of both caches.
    pub digests: bool,
    /// `sync.defer`: how long a queued packet may wait for the peer, and
    /// how many may wait.
    pub defer: Option<(Duration, usize)>,
}

impl NodeConfig {
    /// The node the configuration asks for, around a core built with
    /// `ftfw`.
    pub fn from_config(cfg: &crate::config::Config, ftfw: &crate::ftfw::FtfwConfig) -> NodeConfig {
        NodeConfig {
            peer_timeout: ftfw.peer_timeout,
            overrun_resync: cfg.general.netlink.overrun_resync,
            cache_limit: cfg.general.cache_limit.get(),
            expectations: cfg.sync.expectations.clone(),
            filter: Filter::from_config(cfg),
            direct: cfg.sync.direct_to_kernel,
            digests: !ftfw.anti_entropy_interval.is_zero(),
            defer: cfg.sync.defer.map(|d| (d.timeout, d.max_held as usize)),
        }
    }
}

/// The flows a commit writes, most recently updated first, so that the
/// flows carrying traffic now reach the kernel before a long tail of idle
/// ones. In direct-to-kernel mode only the replicas the kernel dropped are
/// written, when it is known which they are. A function of the two parts
/// of the node it reads, so that the core can answer the peer while the
/// commit walks the list.
pub fn commit_order<'a>(external: &'a Cache, direct: Option<&DirectToKernel>) -> Vec<&'a Flow> {
    let missing = direct.and_then(DirectToKernel::missing);
    let mut order: Vec<(u64, &Flow)> = external
        .iter()
        .filter(|e| missing.is_none_or(|m| m.contains(&e.flow.key())))
        .map(|e| (e.stamp, &e.flow))
        .collect();
    order.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
    order.into_iter().map(|(_, f)| f).collect()
}

/// A reconciliation of the internal cache with a dump, under way.
pub struct Resync {
    dumped: std::vec::IntoIter<Flow>,
    /// The internal cache's stamp when it began: what stays below was not
    /// in the dump.
    floor: u64,
    tell_peer: bool,
    claim_all: bool,
    changed: usize,
    full: usize,
}

/// One node of the replication.
pub struct Node {
    pub ftfw: Ftfw,
    pub internal: Cache,
    pub external: Cache,
    pub exp: ExpState,
    /// `Some` in direct-to-kernel mode.
    pub direct: Option<DirectToKernel>,
    /// `Some` with `sync.defer`: the packets held for the peer's ACK.
    pub defer: Option<Deferred>,
    /// Masters of new expectations to read back from the kernel, and when.
    master_refresh: Vec<(Instant, FlowKey)>,
    pub readiness: Readiness,
    /// Anti-entropy repairs of the external cache, counted.
    pub repairs: RepairLedger,
    /// `-f` emptied the internal cache and no `-R` has refilled it yet.
    pub internal_flushed: bool,
    /// Test hook: the peer's flow messages are dropped (drift on purpose).
    pub test_drop_peer_flows: bool,
    /// Which flows are replicated.
    pub filter: Filter,
    /// Stamp of the latest change of the internal cache.
    internal_stamp: u64,
    /// Kernel events about flows the filter refuses, or about flows the
    /// internal cache does not hold.
    pub events_filtered: u64,
    /// Destroy events of kernel entries the cache had already replaced.
    pub events_stale: u64,
    /// When the last bulk to the peer started, and whether another one was
    /// asked for since that must wait for [`BULK_SPACING`].
    last_bulk: Option<Instant>,
    bulk_pending: bool,
    /// When to reconcile the internal cache with a dump of the kernel,
    /// after events were lost.
    resync_at: Option<Instant>,
    overrun_resync: Duration,
    /// Peer restarts since the last log line about one.
    restarts_unlogged: u64,
    last_restart_log: Option<Instant>,
    /// When a HELLO probe was last logged.
    last_probe_log: Option<Instant>,
    full_log: RateLimit,
    peer_timeout: Duration,
}

impl Node {
    /// A node with empty caches, around the protocol core `ftfw`.
    pub fn new(ftfw: Ftfw, cfg: NodeConfig, readiness: Readiness) -> Node {
        let NodeConfig {
            peer_timeout,
            overrun_resync,
            cache_limit,
            expectations,
            filter,
            direct,
            digests,
            defer,
        } = cfg;
        let mut node = Node {
            ftfw,
            internal: Cache::new(cache_limit),
            external: Cache::new(cache_limit),
            exp: ExpState::new(expectations, cache_limit),
            direct: direct.then(DirectToKernel::new),
            defer: defer.map(|(timeout, max)| Deferred::new(Deferral::new(timeout, max))),
            master_refresh: Vec::new(),
            readiness,
            repairs: RepairLedger::default(),
            internal_flushed: false,
            test_drop_peer_flows: false,
            filter,
            internal_stamp: 0,
            events_filtered: 0,
            events_stale: 0,
            last_bulk: None,
            bulk_pending: false,
            resync_at: None,
            overrun_resync,
            restarts_unlogged: 0,
            last_restart_log: None,
            last_probe_log: None,
            full_log: RateLimit::new(Duration::from_secs(10)),
            peer_timeout,
        };
        if digests {
            node.internal.enable_digests();
            node.external.enable_digests();
        }
        node
    }

    /// The peer asked for our table: send it now, or once [`BULK_SPACING`]
    /// has passed since the last one ([`Node::bulk_if_due`]).
    pub fn bulk_requested(&mut self, now: Instant) {
        if self.last_bulk.is_some_and(|t| now < t + BULK_SPACING) {
            self.bulk_pending = true;
        } else {
            self.bulk_now(now);
        }
    }

    /// When a bulk asked for during the spacing may start.
    pub fn bulk_deadline(&self) -> Option<Instant> {
        self.bulk_pending.then(|| self.last_bulk.map(|t| t + BULK_SPACING)).flatten()
    }

    /// Start the bulk that waited for the spacing, if it is time.
    pub fn bulk_if_due(&mut self, now: Instant) {
        if self.bulk_pending && self.last_bulk.is_none_or(|t| now >= t + BULK_SPACING) {
            self.bulk_now(now);
        }
    }

    /// Send our whole table now.
    pub fn bulk_now(&mut self, now: Instant) {
        self.last_bulk = Some(now);
        self.bulk_pending = false;
        log::info!("sending all {} internal flows to the peer", self.internal.len());
        self.bulk_send();
    }

    /// Queue our whole table (flows and expectations) on the protocol;
    /// false before the first handshake, which sends it when it completes
    /// ([`Ftfw::bulk_send`]).
    pub fn bulk_send(&mut self) -> bool {
        let exps = self.exp.internal.iter().map(|e| &e.exp);
        self.ftfw.bulk_send_with_expectations(self.internal.iter().map(|e| &e.flow), exps)
    }

    // ----- our kernel's changes -----------------------------------------

    /// `born`: the kernel just created this flow, so the peer cannot know it
    /// and a destroy before it is sent cancels both.
    pub fn local_upsert(&mut self, now: Instant, mut flow: Flow, born: bool) {
        if !born && let Some(old) = self.internal.get(&flow.key()) {
            flow.inherit_unreported(&old.flow);
        }
        if !self.filter.accepts(&flow) {
            self.events_filtered += 1;
            // A flow that moved into an ignored state leaves the peer too.
            let key = flow.key();
            if self.internal.remove(&key).is_some() {
                self.ftfw.queue(LocalChange::Destroy(key));
            }
            return;
        }
        self.internal_stamp += 1;
        match self.internal.upsert(flow.clone(), self.internal_stamp) {
            Upsert::Created if born => self.ftfw.queue(LocalChange::New(flow)),
            Upsert::Created | Upsert::Updated { changed: true } => {
                self.ftfw.queue(LocalChange::Upsert(flow));
            }
            Upsert::Updated { changed: false } => {}
            Upsert::Full => self.log_full("internal", now),
        }
    }

    pub fn local_destroy(&mut self, flow: &Flow) {
        let key = flow.key();
        let removal = self.internal.remove_entry(&key, flow.entry_id);
        if removal == Removal::Stale {
            self.events_stale += 1;
            return;
        }
        if let Some(direct) = &mut self.direct
            && self.external.get(&key).is_some()
        {
            direct.kernel_dropped(key);
        }
        match removal {
            Removal::Removed(_) => self.ftfw.queue(LocalChange::Destroy(key)),
            _ => self.events_filtered += 1,
        }
    }

    /// Our kernel's expectation event. A new one's master is read back
    /// shortly after ([`Node::masters_due`]): a helper that creates an
    /// expectation of a NAT flow usually rewrites an address in the
    /// payload too, and the length change becomes the master's sequence
    /// adjustment, which the kernel sets without an event (only a dump or
    /// get reports it); a new master that lacks it mangles every later
    /// segment of the control connection. The rewrite follows the
    /// expectation's insertion within the same packet.
    pub fn local_exp(&mut self, now: Instant, exp: crate::expect::Expectation, destroyed: bool) {
        if !destroyed {
            self.master_refresh.push((now + MASTER_REFRESH_DELAY, exp.master));
        }
        if let Some(change) = self.exp.local(exp, destroyed) {
            self.queue_exp(change);
        }
    }

    /// The masters to read back from the kernel now (and pass to
    /// [`Node::local_upsert`]): those of expectations that appeared
    /// [`MASTER_REFRESH_DELAY`] ago, if they are NAT flows.
    pub fn masters_due(&mut self, now: Instant) -> Vec<FlowKey> {
        let mut due = Vec::new();
        self.master_refresh.retain(|&(t, key)| {
            if t <= now {
                due.push(key);
            }
            t > now
        });
        let natted = |e: &crate::cache::Entry| e.flow.snat().is_some() || e.flow.dnat().is_some();
        due.retain(|key| self.internal.get(key).is_some_and(natted));
        due
    }

    /// When the next master is to be read back.
    pub fn masters_deadline(&self) -> Option<Instant> {
        self.master_refresh.iter().map(|(t, _)| *t).min()
    }

    pub fn queue_exp(&mut self, change: ExpChange) {
        self.ftfw.queue(match change {
            ExpChange::Upsert(exp) => LocalChange::ExpUpsert(exp),
            ExpChange::Destroy(exp) => LocalChange::ExpDestroy(exp),
        });
    }

    /// In direct-to-kernel mode, a flow in our kernel that the peer wrote and
    /// we have not changed since: a dump must not claim it as ours.
    pub fn owned_by_peer(&self, flow: &Flow) -> bool {
        let key = flow.key();
        self.direct.is_some()
            && self.internal.get(&key).is_none()
            && self.external.get(&key).is_some()
    }

    /// `-f`: empty the internal cache, the external one, or both (their
    /// expectations with them); how many flows each held. An emptied
    /// internal cache is refilled by the next `-R`, or by a dump when the
    /// peer asks for our table before that.
    pub fn flush_caches(&mut self, internal: bool, external: bool) -> (usize, usize) {
        let held = (self.internal.len(), self.external.len());
        if internal {
            self.internal.clear();
            self.exp.internal.clear();
            self.internal_flushed = true;
        }
        if external {
            self.external.clear();
            self.exp.external.clear();
        }
        held
    }

    /// The kernel lost events for us (a netlink overrun): what the internal
    /// cache holds, and in direct mode which replicas the kernel holds, is
    /// no longer known. A dump reconciles both, once the storm had
    /// [`NodeConfig::overrun_resync`] to pass; true if this overrun
    /// scheduled it (one already scheduled covers this one too).
    pub fn on_overrun(&mut self, now: Instant) -> bool {
        if let Some(direct) = &mut self.direct {
            direct.lost_track();
        }
        if self.resync_at.is_some() {
            return false;
        }
        self.resync_at = Some(now + self.overrun_resync);
        true
    }

    /// When the dump after an overrun is due.
    pub fn resync_deadline(&self) -> Option<Instant> {
        self.resync_at
    }

    /// True, once, when the dump after an overrun is due: the caller runs
    /// it ([`Node::resync_begin`] with `tell_peer`, without `claim_all`) or,
    /// if the kernel refuses the dump, calls [`Node::resync_failed`].
    pub fn resync_due(&mut self, now: Instant) -> bool {
        let due = self.resync_at.is_some_and(|t| t <= now);
        if due {
            self.resync_at = None;
        }
        due
    }

    /// The dump after an overrun failed: try again after the same delay.
    pub fn resync_failed(&mut self, now: Instant) {
        self.resync_at = Some(now + self.overrun_resync);
    }

    /// Reconcile the internal cache with a dump of the kernel table: new
    /// and changed flows are upserted, flows that vanished are destroyed;
    /// when `tell_peer`, every difference is queued for the peer. Returns
    /// how many changed and how many vanished. In one go; the reactor runs
    /// [`Node::resync_begin`] and its steps instead, to answer the peer
    /// between them.
    ///
    /// `claim_all`: every dumped flow becomes ours (start, `-R`); otherwise
    /// (recovery from an overrun) the replicas that direct-to-kernel mode
    /// wrote for the peer stay the peer's.
    pub fn reconcile_flows(
        &mut self,
        now: Instant,
        dumped: Vec<Flow>,
        tell_peer: bool,
        claim_all: bool,
    ) -> (usize, usize) {
        let mut job = self.resync_begin(dumped, tell_peer, claim_all);
        while self.resync_step(&mut job, usize::MAX) {}
        self.resync_end(now, job)
    }

    /// Start reconciling the internal cache with this dump (see
    /// [`Node::reconcile_flows`]).
    pub fn resync_begin(&mut self, dumped: Vec<Flow>, tell_peer: bool, claim_all: bool) -> Resync {
        if let Some(direct) = &mut self.direct {
            let in_kernel: std::collections::HashSet<_> = dumped.iter().map(Flow::key).collect();
            let missing = self.external.iter().map(|e| e.flow.key());
            direct.set_missing(missing.filter(|k| !in_kernel.contains(k)));
        }
        Resync {
            dumped: dumped.into_iter(),
            floor: self.internal_stamp + 1,
            tell_peer,
            claim_all,
            changed: 0,
            full: 0,
        }
    }

    /// Reconcile up to `n` more dumped flows; false once all are done.
    pub fn resync_step(&mut self, job: &mut Resync, n: usize) -> bool {
        for flow in job.dumped.by_ref().take(n) {
            if !self.filter.accepts(&flow) || (!job.claim_all && self.owned_by_peer(&flow)) {
                continue;
            }
            let key = flow.key();
            match self.internal.reconcile_one(flow, &mut self.internal_stamp) {
                Upsert::Created | Upsert::Updated { changed: true } => {
                    job.changed += 1;
                    // Copied only when it goes to the peer: most flows of a
                    // dump are unchanged.
                    if job.tell_peer
                        && let Some(e) = self.internal.get(&key)
                    {
                        self.ftfw.queue(LocalChange::Upsert(e.flow.clone()));
                    }
                }
                Upsert::Updated { changed: false } => {}
                Upsert::Full => job.full += 1,
            }
        }
        job.dumped.len() > 0
    }

    /// Finish: remove (and tell the peer about) what the dump did not show.
    /// Returns how many flows changed and how many vanished.
    pub fn resync_end(&mut self, now: Instant, job: Resync) -> (usize, usize) {
        if job.full > 0 {
            self.log_full("internal", now);
        }
        let vanished = self.internal.sweep(job.floor);
        let gone = vanished.len();
        if job.tell_peer {
            for key in vanished {
                self.ftfw.queue(LocalChange::Destroy(key));
            }
        }
        (job.changed, gone)
    }

    /// Reconcile the expectations with a dump of the kernel's.
    pub fn reconcile_expectations(&mut self, dumped: Vec<Expectation>, tell_peer: bool) {
        for change in self.exp.reconcile(dumped) {
            if tell_peer {
                self.queue_exp(change);
            }
        }
    }

    // ----- the commit ------------------------------------------------------

    /// Our kernel's flows that hold the NAT mapping of a synced flow: they
    /// must go before the commit, or the synced flow cannot be created (in
    /// direct-to-kernel mode the kernel already holds the replicas).
    pub fn commit_conflicts(&self) -> Vec<FlowKey> {
        if self.direct.is_some() {
            return Vec::new();
        }
        crate::cache::nat_conflicts(&self.internal, &self.external)
    }

    /// Entries our own request deleted: their destroy events carry our
    /// port id and never come back, so the internal cache and the peer
    /// learn it here.
    pub fn forget_deleted(&mut self, keys: &[FlowKey]) {
        for key in keys {
            if self.internal.remove(key).is_some() {
                self.ftfw.queue(LocalChange::Destroy(*key));
            }
        }
    }

    /// Log, rate-limited, that `which` cache refused a flow.
    pub fn log_full(&mut self, which: &str, now: Instant) {
        if let Some(repeats) = self.full_log.allow(now) {
            log::warn!(
                "{which} cache is full ({} flows): new flows are not replicated ({repeats} more refused since the last message); raise general.cache_limit",
                self.internal.limit()
            );
        }
    }

    /// A flow from the peer into the external cache and, in direct mode,
    /// towards the kernel.
    pub fn peer_upsert(&mut self, flow: Flow, stamp: u64) -> Upsert {
        if let Some(direct) = &mut self.direct {
            let key = flow.key();
            let local = self.internal.get(&key).map(|e| &e.flow);
            let held = self.external.get(&key).map(|e| &e.flow);
            if direct.peer_upsert(flow.clone(), local, held) {
                self.internal.remove(&key);
            }
        }
        self.external.upsert(flow, stamp)
    }

    /// Apply one event of the protocol core. What it returns must be
    /// carried out before the next event: it may be the dump that the
    /// answer to the peer needs.
    pub fn on_peer_event(&mut self, now: Instant, event: PeerEvent) -> Option<Action> {
        let ready = self.readiness.observe(&event);
        if ready {
            log::info!("holding the peer's complete table: ready to take over");
        }
        let action = self.apply(now, event);
        if ready { Some(Action::Ready) } else { action }
    }

    fn apply(&mut self, now: Instant, event: PeerEvent) -> Option<Action> {
        if self.test_drop_peer_flows
            && matches!(
                event,
                PeerEvent::Upsert { .. }
                    | PeerEvent::Destroy { .. }
                    | PeerEvent::RepairUpsert { .. }
            )
        {
            return None;
        }
        match event {
            PeerEvent::DigestDue
            | PeerEvent::Digest { .. }
            | PeerEvent::RepairRequested { .. }
            | PeerEvent::RepairUpsert { .. }
            | PeerEvent::RepairEnd { .. } => self.on_anti_entropy(now, event),
            PeerEvent::Upsert { flow, stamp } => {
                if self.peer_upsert(flow, stamp) == Upsert::Full {
                    self.log_full("external", now);
                }
            }
            PeerEvent::Destroy { key } => {
                self.external.remove(&key);
                if let Some(direct) = &mut self.direct {
                    direct.peer_destroy(key, self.internal.get(&key).is_some());
                }
            }
            PeerEvent::ExpUpsert { exp, stamp } => self.exp.peer_upsert(*exp, stamp),
            PeerEvent::ExpDestroy { key } => self.exp.peer_destroy(&key),
            PeerEvent::BulkEnd { floor, .. } => {
                self.exp.peer_bulk_end(floor);
                let mut gone = Vec::new();
                let direct = self.direct.is_some();
                let stale = self.external.retain(|e| {
                    let keep = e.stamp >= floor;
                    if !keep && direct {
                        gone.push(e.flow.clone());
                    }
                    keep
                });
                if let Some(direct) = &mut self.direct {
                    // Not deleted from the kernel: a bulk can race with a
                    // flush of the peer's caches (primary-backup.sh's -f),
                    // so missing from it is no proof that a flow ended.
                    for flow in &gone {
                        direct.peer_forgot(flow.key());
                    }
                }
                log::info!(
                    "bulk update from the peer complete: {} flows in the external cache, {stale} stale ones removed",
                    self.external.len()
                );
            }
            PeerEvent::BulkRequested => {
                if self.internal_flushed {
                    // primary-backup.sh flushes the caches (-f) before it
                    // resyncs (-R), and the peer's backup script asks for
                    // our table (-n) at the same moment: an empty bulk
                    // would end in a sweep of the peer's whole copy. The
                    // kernel's table is the answer, as -R would make it.
                    log::info!(
                        "the peer asked for our table while the internal cache is flushed: resyncing it with the kernel first"
                    );
                    return Some(Action::RefillThenBulk);
                }
                self.bulk_requested(now);
            }
            PeerEvent::PeerUp => {
                log::info!("peer is up");
                return Some(Action::PeerUp);
            }
            PeerEvent::PeerDown => {
                log::warn!("peer is down: no datagram for {:?}", self.peer_timeout);
                return Some(Action::PeerDown);
            }
            PeerEvent::PeerRestarted => {
                self.restarts_unlogged += 1;
                if self.last_restart_log.is_none_or(|t| now >= t + PROBE_LOG_INTERVAL) {
                    self.last_restart_log = Some(now);
                    match self.restarts_unlogged {
                        1 => log::info!("peer restarted: exchanging full tables"),
                        n => log::warn!(
                            "peer restarted {n} times since the last such line: exchanging full tables (at most one bulk a second); many restarts in conntrackd's wire format are forged HELLOs"
                        ),
                    }
                    self.restarts_unlogged = 0;
                }
            }
            PeerEvent::Stalled { tx, rx } => return Some(Action::Stalled { tx, rx }),
            PeerEvent::StallEnded => log::info!("replication moves again after a stall"),
            PeerEvent::HelloProbe { session } => {
                // A stream of replayed HELLOs must not fill the log.
                if self.last_probe_log.is_none_or(|t| now >= t + PROBE_LOG_INTERVAL) {
                    self.last_probe_log = Some(now);
                    log::warn!(
                        "HELLO from peer session {session:#010x} while session {:#010x} is live: probing it, the live session goes on (a restarted peer answers at once; a replayed HELLO never does); {} such HELLOs in all",
                        self.ftfw.peer_session(),
                        self.ftfw.stats().hello_probes
                    );
                }
            }
            PeerEvent::Rebased => log::warn!(
                "only refused messages from the peer for half the peer timeout (a forged HELLO, or a restart we missed): following its sequence again and exchanging full tables"
            ),
        }
        None
    }

    pub fn on_anti_entropy(&mut self, now: Instant, event: PeerEvent) {
        match event {
            PeerEvent::DigestDue => {
                if let Some(d) = self.internal.digests() {
                    self.ftfw.send_digest(now, d.values());
                }
            }
            PeerEvent::Digest { digests } => {
                let Some(ours) = self.external.digests() else { return };
                if self.test_drop_peer_flows {
                    return;
                }
                if self.external.len() >= self.external.limit() {
                    // A repair could not store what is missing.
                    self.repairs.stats.skipped_full += 1;
                    return;
                }
                self.repairs.stats.digests_compared += 1;
                let differ = ours.differing(&digests);
                if !differ.is_empty() {
                    self.repairs.stats.digests_differing += 1;
                    log::debug!(
                        "anti-entropy: {} of {} ranges differ from the peer's table; asking for them",
                        differ.len(),
                        digest::RANGES
                    );
                    self.ftfw.request_repair(differ);
                }
            }
            PeerEvent::RepairRequested { ranges } => {
                let flows: Vec<&Flow> = self
                    .internal
                    .iter()
                    .map(|e| &e.flow)
                    .filter(|f| ranges.holds(&f.key()))
                    .collect();
                log::info!(
                    "anti-entropy: the peer's copy of {} ranges of our table differs; resending their {} flows",
                    ranges.len(),
                    flows.len()
                );
                self.repairs.stats.repairs_served += 1;
                self.repairs.stats.flows_resent += flows.len() as u64;
                self.ftfw.repair_send(ranges, flows);
            }
            PeerEvent::RepairUpsert { flow, stamp } => match self.peer_upsert(flow, stamp) {
                Upsert::Created => self.repairs.flow(true, false),
                Upsert::Updated { changed } => self.repairs.flow(false, changed),
                Upsert::Full => self.log_full("external", now),
            },
            PeerEvent::RepairEnd { floor, ranges } => {
                let mut gone = Vec::new();
                let direct = self.direct.is_some();
                let removed = self.external.retain(|e| {
                    let keep = !(e.stamp < floor && ranges.holds(&e.flow.key()));
                    if !keep && direct {
                        gone.push(e.flow.key());
                    }
                    keep
                });
                // The digests proved the peer no longer has these: a destroy
                // that was lost, so the kernel's replica goes too.
                if let Some(direct) = &mut self.direct {
                    for key in gone {
                        direct.peer_destroy(key, self.internal.get(&key).is_some());
                    }
                }
                // Outside the macro: it skips its arguments below the
                // configured log level, and the ledger must count anyway.
                let line = self.repairs.end(ranges, removed);
                log::info!("{line}");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::proto;
    use crate::ftfw::FtfwConfig;

    fn flow(port: u16) -> Flow {
        Flow::new_v4(proto::TCP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), port, 80)
    }

    fn node(now: Instant) -> Node {
        // Bulks go only to a peer that answered.
        let ftfw = crate::ftfw::tests::established(500, now);
        let cfg = NodeConfig {
            peer_timeout: FtfwConfig::default().peer_timeout,
            overrun_resync: Duration::from_secs(1),
            cache_limit: 100,
            expectations: ExpectSync::Off,
            filter: Filter::accept_all(),
            direct: false,
            digests: false,
            defer: None,
        };
        Node::new(ftfw, cfg, Readiness::new(None))
    }

    #[test]
    fn the_end_of_a_bulk_sweeps_what_it_did_not_refresh_and_makes_the_node_ready_once() {
        let now = Instant::now();
        let mut n = node(now);
        for (port, stamp) in [(1, 5), (2, 9), (3, 10)] {
            assert_eq!(n.on_peer_event(now, PeerEvent::Upsert { flow: flow(port), stamp }), None);
        }
        assert!(!n.readiness.is_ready());
        assert_eq!(
            n.on_peer_event(now, PeerEvent::BulkEnd { floor: 9, complete: true }),
            Some(Action::Ready)
        );
        let mut left: Vec<u16> =
            n.external.iter().map(|e| e.flow.sport(crate::flow::Dir::Orig)).collect();
        left.sort();
        assert_eq!(left, [2, 3]);
        assert_eq!(n.on_peer_event(now, PeerEvent::BulkEnd { floor: 0, complete: true }), None);
        assert!(n.readiness.is_ready());
    }

    #[test]
    fn bulks_asked_for_within_the_spacing_go_as_one_when_it_ends() {
        let now = Instant::now();
        let mut n = node(now);
        n.internal.upsert(flow(1), 1);
        n.on_peer_event(now, PeerEvent::BulkRequested);
        assert_eq!(n.ftfw.stats().bulks_sent, 1);
        for ms in [10, 200, 900] {
            n.on_peer_event(now + Duration::from_millis(ms), PeerEvent::BulkRequested);
        }
        assert_eq!(n.ftfw.stats().bulks_sent, 1);
        assert_eq!(n.bulk_deadline(), Some(now + BULK_SPACING));
        n.bulk_if_due(now + Duration::from_millis(999));
        assert_eq!(n.ftfw.stats().bulks_sent, 1);
        n.bulk_if_due(now + BULK_SPACING);
        assert_eq!(n.ftfw.stats().bulks_sent, 2);
        assert_eq!(n.bulk_deadline(), None);
    }

    #[test]
    fn a_bulk_asked_for_while_the_internal_cache_is_flushed_waits_for_the_kernel() {
        let now = Instant::now();
        let mut n = node(now);
        n.internal_flushed = true;
        assert_eq!(n.on_peer_event(now, PeerEvent::BulkRequested), Some(Action::RefillThenBulk));
        assert_eq!(n.ftfw.stats().bulks_sent, 0, "an empty bulk would sweep the peer's copy");
    }

    #[test]
    fn a_commit_writes_the_most_recently_updated_flows_first() {
        let now = Instant::now();
        let mut n = node(now);
        for (port, stamp) in [(1, 7), (2, 30), (3, 12)] {
            n.on_peer_event(now, PeerEvent::Upsert { flow: flow(port), stamp });
        }
        let ports: Vec<u16> = commit_order(&n.external, n.direct.as_ref())
            .iter()
            .map(|f| f.sport(crate::flow::Dir::Orig))
            .collect();
        assert_eq!(ports, [2, 3, 1]);
    }
}
