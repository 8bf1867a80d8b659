//! Direct-to-kernel mode (`sync.direct_to_kernel`, conntrackd's
//! `DisableExternalCache`): the peer's flows are written into the local
//! kernel as they arrive, so a backup already holds the master's state when
//! keepalived gives it the virtual IPs, and no packet can reach it before
//! its flow (`docs/active-active.md`).
//!
//! The external cache is still kept: it tells readiness that the peer's
//! table is complete, `-e` shows it, and `-c` recreates from it whatever
//! the local kernel expired meanwhile.
//!
//! Who owns a flow. A key is this node's while it is in the internal cache
//! (the local kernel reported it); it is the peer's otherwise. When both
//! report the same key, the side whose kernel carries the flow's traffic
//! wins:
//! - when this node is the keepalived master (it ran `-c` more recently
//!   than `-t`, as `primary-backup.sh` does), its own flows are never
//!   overwritten by the peer: the peer is the backup and holds a replica,
//!   possibly an older one (a backup whose daemon restarted sends the
//!   replicas it dumped from its kernel);
//! - otherwise (backup, or no role known, as in active-active) the most
//!   recent report wins, in the order this node sees them: a peer update
//!   that differs from our state takes the key over (it leaves the internal
//!   cache without a destroy to the peer, and the peer's state is written
//!   into the kernel), and a later local kernel event on the key takes it
//!   back and replicates it;
//! - a peer update equal to what we hold (timeout aside) writes nothing
//!   and changes no owner: a bulk resend is not a change;
//! - a peer destroy deletes the kernel entry only if the peer owns the key;
//! - the kernel expiring a flow the peer owns (a DESTROY event from port 0
//!   for a key not in the internal cache) is not sent to the peer: the flow
//!   is not ours, and the peer's own kernel decides when it ends.
//!
//! Writes keep the timeout the peer reported, so a replica lives as long as
//! the peer's entry would without further traffic; `sync.commit_timeout`
//! applies to `-c` only.
//!
//! Our own writes come back as events from our request socket's port id and
//! are dropped by the reactor before they reach the internal cache.

use std::collections::{HashMap, HashSet};
use std::io;
use std::time::{Duration, Instant};

use crate::flow::{Flow, FlowKey};
use crate::logging::RateLimit;
use crate::netlink::{CommitOptions, Table};

/// Counters of direct-to-kernel mode, as `-s` shows them (all zero when the
/// mode is off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DirectStats {
    /// Kernel writes of the peer's flows: entries created.
    pub created: u64,
    /// Kernel writes of the peer's flows: existing entries updated.
    pub updated: u64,
    /// Kernel entries deleted because the peer destroyed its flow.
    pub deleted: u64,
    /// Peer destroys of flows the kernel had already dropped (expired).
    pub already_gone: u64,
    /// Writes or deletes the kernel refused (besides `already_gone`).
    pub failed: u64,
    /// Batches written (one per reactor turn with peer changes).
    pub batches: u64,
    /// Local flows the peer updated later, so it owns them now.
    pub taken_by_peer: u64,
    /// Peer updates and destroys not applied because this node owns the
    /// flow.
    pub kept_local: u64,
    /// Peer updates equal to what was held already (timeout aside).
    pub unchanged: u64,
}

/// This node's keepalived role, as the operator's commands tell it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// No `-c` or `-t` yet (or active-active, where neither is run).
    #[default]
    Unknown,
    /// `-c` ran last: keepalived made this node master.
    Master,
    /// `-t` ran last: keepalived made this node backup (or faulty).
    Backup,
}

/// What is to be written at the end of this reactor turn, per key the last
/// change wins.
#[derive(Debug)]
pub struct DirectToKernel {
    pending: HashMap<FlowKey, Option<Flow>>,
    role: Role,
    purge_at: Option<Instant>,
    /// Keys of the external cache whose flow is not in the kernel (the
    /// kernel expired the replica, or refused it), if known: `None` after
    /// events were lost, until a dump or a full `-c` tells again.
    missing: Option<HashSet<FlowKey>>,
    stats: DirectStats,
    failure_log: RateLimit,
}

impl Default for DirectToKernel {
    fn default() -> Self {
        DirectToKernel::new()
    }
}

impl DirectToKernel {
    /// Nothing pending.
    pub fn new() -> DirectToKernel {
        DirectToKernel {
            pending: HashMap::new(),
            role: Role::Unknown,
            purge_at: None,
            missing: Some(HashSet::new()),
            stats: DirectStats::default(),
            failure_log: RateLimit::new(Duration::from_secs(10)),
        }
    }

    /// Counters.
    pub fn stats(&self) -> DirectStats {
        self.stats
    }

    /// This node's role changed (`-c`: master, `-t`: backup). A master
    /// cancels a purge still waiting for the peer's table: its own flows
    /// are not in that table and are no zombies.
    pub fn set_role(&mut self, role: Role) {
        self.role = role;
        if role == Role::Master {
            self.purge_at = None;
        }
    }

    /// The external cache's keys whose flow is not in the kernel, or `None`
    /// when that is not known (then `-c` writes everything).
    pub fn missing(&self) -> Option<&HashSet<FlowKey>> {
        self.missing.as_ref()
    }

    /// The kernel dropped the entry of `key`, which the external cache
    /// holds (a DESTROY event not caused by us).
    pub fn kernel_dropped(&mut self, key: FlowKey) {
        if let Some(m) = &mut self.missing {
            m.insert(key);
        }
    }

    /// Events were lost (or the table flushed behind our back): which
    /// replicas the kernel holds is unknown until [`DirectToKernel::set_missing`].
    pub fn lost_track(&mut self) {
        self.missing = None;
    }

    /// Exactly these keys are missing from the kernel (after a dump, or a
    /// full commit).
    pub fn set_missing(&mut self, keys: impl IntoIterator<Item = FlowKey>) {
        self.missing = Some(keys.into_iter().collect());
    }

    /// `-t`: this node is backup now. At `at` (a purge timeout later, when
    /// the new master's table has arrived whatever the order of the notify
    /// scripts' steps), the flows in the kernel that the external cache
    /// does not hold are to be purged ([`DirectToKernel::take_purge`]),
    /// like conntrackd's scheduled flush.
    pub fn schedule_purge(&mut self, at: Instant) {
        self.role = Role::Backup;
        self.purge_at = Some(at);
    }

    /// When the scheduled purge is due.
    pub fn purge_at(&self) -> Option<Instant> {
        self.purge_at
    }

    /// True once when the scheduled purge is due at `now`.
    pub fn take_purge(&mut self, now: Instant) -> bool {
        if self.purge_at.is_some_and(|t| t <= now) {
            self.purge_at = None;
            return true;
        }
        false
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The peer created or changed `flow`. `local`: our internal cache's
    /// copy, if we own the key; `held`: the external cache's copy before
    /// this update. Returns true when the key passes to the peer, and the
    /// caller must drop it from the internal cache (without telling the
    /// peer).
    pub fn peer_upsert(&mut self, flow: Flow, local: Option<&Flow>, held: Option<&Flow>) -> bool {
        if let Some(local) = local {
            if same_state(local, &flow) {
                self.stats.unchanged += 1;
                return false;
            }
            if self.role == Role::Master {
                self.stats.kept_local += 1;
                return false;
            }
            self.stats.taken_by_peer += 1;
            self.pending.insert(flow.key(), Some(flow));
            return true;
        }
        // When it is not known which replicas the kernel holds, write.
        let dropped = self.missing.as_ref().is_none_or(|m| m.contains(&flow.key()));
        if !dropped && held.is_some_and(|h| same_state(h, &flow)) {
            self.stats.unchanged += 1;
            return false;
        }
        self.pending.insert(flow.key(), Some(flow));
        false
    }

    /// The peer destroyed `key`; `owned_locally`: it is in the internal
    /// cache, so our kernel changed it after the peer did.
    pub fn peer_destroy(&mut self, key: FlowKey, owned_locally: bool) {
        if let Some(m) = &mut self.missing {
            m.remove(&key);
        }
        if owned_locally {
            self.stats.kept_local += 1;
            // An update queued earlier in this turn must not be written over
            // the local state either.
            self.pending.remove(&key);
            return;
        }
        self.pending.insert(key, None);
    }

    /// The peer's complete table no longer holds `key` (the sweep at the
    /// end of a bulk update). Unlike a destroy this is no proof that the
    /// flow ended (a bulk can race with a flush of the peer's caches), so
    /// the kernel entry stays: it expires by its own timeout, by the purge
    /// after `-t`, or is written again by a later update.
    pub fn peer_forgot(&mut self, key: FlowKey) {
        if let Some(m) = &mut self.missing {
            m.remove(&key);
        }
        self.pending.remove(&key);
    }

    /// True when something waits for [`DirectToKernel::flush`].
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Write what is pending: upserts (created, or updated if the entry
    /// exists), then deletes. A kernel error is logged (rate-limited) and
    /// counted; the flows stay in the external cache, where `-c` finds them.
    pub fn flush<T: Table + ?Sized>(&mut self, kernel: &mut T, opts: &CommitOptions, now: Instant) {
        if self.pending.is_empty() {
            return;
        }
        let (upserts, deletes) = self.take();
        self.stats.batches += 1;
        let opts = CommitOptions { timeout: None, create_only: false, ..*opts };
        let mut failures: Vec<(FlowKey, i32)> = Vec::new();
        let mut error: Option<io::Error> = None;
        if !upserts.is_empty() {
            match kernel.commit_flows(upserts.iter().collect(), &opts, &mut || {}) {
                Ok(r) => {
                    self.stats.created += r.created as u64;
                    self.stats.updated += r.updated as u64;
                    if let Some(m) = &mut self.missing {
                        for flow in &upserts {
                            m.remove(&flow.key());
                        }
                        m.extend(r.failed.iter().map(|(k, _)| *k));
                    }
                    failures.extend(r.failed);
                }
                Err(e) => {
                    self.missing = None;
                    error = Some(e);
                }
            }
        }
        if !deletes.is_empty() && error.is_none() {
            match kernel.delete_flows(&deletes) {
                Ok(r) => {
                    self.stats.deleted += r.deleted as u64;
                    for (key, errno) in r.failed {
                        if errno == libc::ENOENT {
                            self.stats.already_gone += 1;
                        } else {
                            failures.push((key, errno));
                        }
                    }
                }
                Err(e) => error = Some(e),
            }
        }
        self.stats.failed += failures.len() as u64;
        if error.is_none() && failures.is_empty() {
            return;
        }
        if let Some(repeats) = self.failure_log.allow(now) {
            match (error, failures.first()) {
                (Some(e), _) => log::warn!(
                    "writing the peer's flows into the kernel failed: {e}; they stay in the external cache for ctsyncd -c ({repeats} more failures since the last message)"
                ),
                (None, Some((key, errno))) => log::warn!(
                    "the kernel refused {} of the peer's flows, first {key}: {}; they stay in the external cache for ctsyncd -c ({repeats} more failures since the last message)",
                    failures.len(),
                    io::Error::from_raw_os_error(*errno)
                ),
                (None, None) => {}
            }
        }
    }

    /// Drain the pending changes: flows to write and keys to delete.
    fn take(&mut self) -> (Vec<Flow>, Vec<FlowKey>) {
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for (key, change) in self.pending.drain() {
            match change {
                Some(flow) => upserts.push(flow),
                None => deletes.push(key),
            }
        }
        (upserts, deletes)
    }
}

/// Equal but for the timeout, which counts down between two reports of an
/// unchanged flow, and for `BE_LIBERAL`, which a commit adds (so a replica
/// dumped from a kernel has it and the original does not).
fn same_state(a: &Flow, b: &Flow) -> bool {
    let liberal = crate::flow::tcp_flag::BE_LIBERAL;
    let differ = a.timeout != b.timeout
        || (a.tcp.flags_orig ^ b.tcp.flags_orig) & liberal != 0
        || (a.tcp.flags_reply ^ b.tcp.flags_reply) & liberal != 0;
    if !differ {
        return a == b;
    }
    let mut a = a.clone();
    a.timeout = b.timeout;
    a.tcp.flags_orig = (a.tcp.flags_orig & !liberal) | (b.tcp.flags_orig & liberal);
    a.tcp.flags_reply = (a.tcp.flags_reply & !liberal) | (b.tcp.flags_reply & liberal);
    a == *b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::proto;

    fn flow(port: u16, mark: u32) -> Flow {
        let mut f =
            Flow::new_v4(proto::TCP, [192, 168, 60, 10].into(), [203, 0, 113, 10].into(), port, 80);
        f.mark = mark;
        f
    }

    #[test]
    fn the_last_change_of_a_key_in_a_turn_wins() {
        let mut d = DirectToKernel::new();
        d.peer_upsert(flow(1, 1), None, None);
        d.peer_upsert(flow(1, 2), None, Some(&flow(1, 1)));
        d.peer_upsert(flow(2, 1), None, None);
        d.peer_destroy(flow(2, 1).key(), false);
        d.peer_destroy(flow(3, 1).key(), false);
        d.peer_upsert(flow(3, 7), None, None);
        let (mut upserts, deletes) = d.take();
        upserts.sort_by_key(|f| f.l4[0]);
        assert_eq!(upserts, vec![flow(1, 2), flow(3, 7)]);
        assert_eq!(deletes, vec![flow(2, 1).key()]);
        assert!(!d.has_pending());
    }

    #[test]
    fn a_resend_of_what_is_held_writes_nothing() {
        let mut d = DirectToKernel::new();
        let mut older = flow(1, 1);
        older.timeout = 431_990;
        let mut newer = flow(1, 1);
        newer.timeout = 431_000;
        assert!(!d.peer_upsert(newer.clone(), None, Some(&older)));
        assert!(!d.peer_upsert(newer.clone(), Some(&older), None));
        assert!(!d.has_pending());
        assert_eq!(d.stats().unchanged, 2);
    }

    #[test]
    fn a_peer_destroy_leaves_a_locally_owned_flow_alone() {
        let mut d = DirectToKernel::new();
        // The peer's update came first, then our kernel changed the flow
        // (the caller moved it into the internal cache), then the peer's
        // destroy: the flow carries traffic here and must stay.
        d.peer_upsert(flow(1, 1), None, None);
        d.peer_destroy(flow(1, 1).key(), true);
        assert!(!d.has_pending());
        assert_eq!(d.stats().kept_local, 1);
        d.peer_destroy(flow(2, 1).key(), false);
        assert_eq!(d.take().1, vec![flow(2, 1).key()]);
    }

    #[test]
    fn on_a_backup_the_most_recent_report_wins() {
        for role in [Role::Unknown, Role::Backup] {
            let mut d = DirectToKernel::new();
            d.set_role(role);
            assert!(d.peer_upsert(flow(1, 2), Some(&flow(1, 1)), None), "{role:?}");
            assert_eq!(d.stats().taken_by_peer, 1);
            assert_eq!(d.take().0, vec![flow(1, 2)]);
        }
    }

    #[test]
    fn a_purge_runs_once_when_due_unless_the_node_became_master() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        let mut d = DirectToKernel::new();
        assert!(!d.take_purge(later));
        d.schedule_purge(later);
        assert_eq!(d.role(), Role::Backup);
        assert_eq!(d.purge_at(), Some(later));
        assert!(!d.take_purge(t0));
        assert!(d.take_purge(later));
        assert!(!d.take_purge(later));
        // Master again before it was due: nothing to purge.
        d.schedule_purge(later);
        d.set_role(Role::Master);
        assert!(!d.take_purge(later));
    }

    #[test]
    fn missing_replicas_are_tracked_until_events_are_lost() {
        let mut d = DirectToKernel::new();
        assert_eq!(d.missing().map(HashSet::len), Some(0));
        d.kernel_dropped(flow(1, 1).key());
        d.kernel_dropped(flow(2, 1).key());
        d.peer_destroy(flow(2, 1).key(), false);
        assert_eq!(d.missing().unwrap().iter().collect::<Vec<_>>(), vec![&flow(1, 1).key()]);
        d.lost_track();
        assert!(d.missing().is_none());
        d.kernel_dropped(flow(3, 1).key());
        assert!(d.missing().is_none());
        d.set_missing([flow(4, 1).key()]);
        assert!(d.missing().unwrap().contains(&flow(4, 1).key()));
        // A resend of a replica the kernel dropped is written again.
        d.peer_upsert(flow(4, 1), None, Some(&flow(4, 1)));
        assert_eq!(d.take().0, vec![flow(4, 1)]);
    }

    #[test]
    fn on_the_master_a_peer_never_overwrites_a_local_flow() {
        let mut d = DirectToKernel::new();
        d.set_role(Role::Master);
        // A backup that restarted sends the replica it dumped: older state.
        assert!(!d.peer_upsert(flow(1, 1), Some(&flow(1, 2)), None));
        assert!(!d.has_pending());
        assert_eq!(d.stats().kept_local, 1);
        // A flow the master does not own is still written.
        assert!(!d.peer_upsert(flow(2, 1), None, None));
        assert_eq!(d.take().0, vec![flow(2, 1)]);
    }
}
