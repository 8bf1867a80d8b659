//! The internal cache (our kernel's flows) and the external cache (the
//! peer's flows): a map by [`FlowKey`] with a bounded size and counters.
//!
//! Memory is the constraint: entries live densely in a `Vec`, and the hash
//! index holds a `u32` position and 32 bits of the key's hash per flow, so a
//! million common flows cost the `Flow` itself plus about 20 bytes of index.
//! The stored hash bits let the index grow without reading a single entry:
//! rehashing from the entries (a cache miss and a key hash each) stalled the
//! event loop for tens of milliseconds whenever a growing table doubled.

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;
use hashbrown::hash_table::Entry as TableEntry;

use crate::digest::Digests;
use crate::flow::{Dir, EntryId, Flow, FlowKey};

/// Counters of one cache, as `-s cache` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub active: u64,
    pub created: u64,
    pub updated: u64,
    pub destroyed: u64,
    /// Inserts refused because the cache was full.
    pub failed_full: u64,
}

/// What an upsert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upsert {
    Created,
    /// The flow was there; `changed` is false when the new state equals the
    /// old one.
    Updated {
        changed: bool,
    },
    /// The cache is at its limit; the flow was not stored.
    Full,
}

/// What a kernel destroy event did to the internal cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    Removed(Flow),
    /// The cache holds another kernel entry with the same tuples (see
    /// [`EntryId`]): the event is older than what the cache knows.
    Stale,
    Absent,
}

/// What [`Cache::reconcile`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Flows new or changed by the dump.
    pub changed: usize,
    /// Flows the dump no longer showed, removed.
    pub vanished: Vec<FlowKey>,
    /// Dumped flows that did not fit ([`Upsert::Full`]).
    pub full: usize,
}

/// One cached flow and its per-entry metadata.
#[derive(Clone, Debug)]
pub struct Entry {
    pub flow: Flow,
    /// Monotonic stamp of the last change: the external cache stores the
    /// unwrapped sequence number of the message that wrote the entry (used by
    /// the end-of-bulk sweep and to commit the most recent flows first); the
    /// internal cache stores the local event counter.
    pub stamp: u64,
}

/// Below this many slots a cache keeps its room.
const MIN_SHRINK_ROOM: usize = 4096;

/// A bounded map from flow identity to flow.
pub struct Cache {
    entries: Vec<Entry>,
    index: HashTable<Slot>,
    hasher: foldhash::fast::FixedState,
    limit: usize,
    stats: CacheStats,
    /// Per-range anti-entropy digests, kept current on every change when
    /// enabled.
    digests: Option<Box<Digests>>,
}

impl Cache {
    /// An empty cache that holds at most `limit` flows.
    pub fn new(limit: usize) -> Cache {
        Cache {
            entries: Vec::new(),
            index: HashTable::new(),
            hasher: foldhash::fast::FixedState::with_seed(0x6374_7379_6e63),
            limit,
            stats: CacheStats::default(),
            digests: None,
        }
    }

    /// Keep per-range digests of the flows from now on (anti-entropy):
    /// each change then updates one range's digest in O(1).
    pub fn enable_digests(&mut self) {
        if self.digests.is_none() {
            self.digests = Some(Box::new(Digests::of(self.entries.iter().map(|e| &e.flow))));
        }
    }

    /// The per-range digests, if enabled.
    pub fn digests(&self) -> Option<&Digests> {
        self.digests.as_deref()
    }

    /// Number of flows held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no flow is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The configured limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Counters, with `active` filled in.
    pub fn stats(&self) -> CacheStats {
        CacheStats { active: self.entries.len() as u64, ..self.stats }
    }

    /// Pre-allocate room for `additional` more flows.
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
        self.index.reserve(additional, Slot::hash);
    }

    /// The flow with this identity.
    pub fn get(&self, key: &FlowKey) -> Option<&Entry> {
        let (hash, bits) = key_hash(&self.hasher, key);
        self.index
            .find(hash, |s| s.bits == bits && self.entries[s.pos as usize].flow.matches(key))
            .map(|s| &self.entries[s.pos as usize])
    }

    /// Insert or replace a flow, stamping it with `stamp`.
    pub fn upsert(&mut self, flow: Flow, stamp: u64) -> Upsert {
        let key = flow.key();
        let (hash, bits) = key_hash(&self.hasher, &key);
        let entries = &mut self.entries;
        match self.index.entry(
            hash,
            |s| s.bits == bits && entries[s.pos as usize].flow.matches(&key),
            Slot::hash,
        ) {
            TableEntry::Occupied(slot) => {
                let entry = &mut entries[slot.get().pos as usize];
                let changed = entry.flow != flow;
                if changed && let Some(d) = &mut self.digests {
                    d.replace(&entry.flow, &flow);
                }
                entry.flow = flow;
                entry.stamp = stamp;
                self.stats.updated += 1;
                Upsert::Updated { changed }
            }
            TableEntry::Vacant(slot) => {
                if entries.len() >= self.limit {
                    self.stats.failed_full += 1;
                    return Upsert::Full;
                }
                slot.insert(Slot { pos: entries.len() as u32, bits });
                if let Some(d) = &mut self.digests {
                    d.add(&flow);
                }
                entries.push(Entry { flow, stamp });
                self.stats.created += 1;
                Upsert::Created
            }
        }
    }

    /// Remove a flow; returns it if it was there.
    pub fn remove(&mut self, key: &FlowKey) -> Option<Flow> {
        let (hash, bits) = key_hash(&self.hasher, key);
        let entries = &self.entries;
        let slot = self
            .index
            .find_entry(hash, |s| s.bits == bits && entries[s.pos as usize].flow.matches(key))
            .ok()?;
        let (slot, _) = slot.remove();
        Some(self.removed_at(slot.pos as usize))
    }

    /// The bookkeeping of a flow whose index slot is gone: take it out of
    /// the entries, the counters and the digests.
    fn removed_at(&mut self, pos: usize) -> Flow {
        self.stats.destroyed += 1;
        let flow = self.take_at(pos);
        if let Some(d) = &mut self.digests {
            d.remove(&flow);
        }
        self.shrink_if_sparse();
        flow
    }

    /// Apply a kernel destroy event of the entry `id` with this key. The
    /// reliable-events mode redelivers destroy events the daemon could not
    /// take in time, after a dump that already shows the entry created in
    /// the old one's place: that one stays.
    pub fn remove_entry(&mut self, key: &FlowKey, id: EntryId) -> Removal {
        let (hash, bits) = key_hash(&self.hasher, key);
        let entries = &self.entries;
        let Ok(slot) = self
            .index
            .find_entry(hash, |s| s.bits == bits && entries[s.pos as usize].flow.matches(key))
        else {
            return Removal::Absent;
        };
        if entries[slot.get().pos as usize].flow.entry_id.differs(id) {
            return Removal::Stale;
        }
        let (slot, _) = slot.remove();
        Removal::Removed(self.removed_at(slot.pos as usize))
    }

    /// Make the cache equal a dump of the kernel table: every dumped flow
    /// is upserted ([`Cache::reconcile_one`]; `changed` sees the new and
    /// changed ones), every cached flow the dump did not show is removed.
    /// `stamp` is the cache's change counter; dumped flows get stamps above
    /// its value on entry.
    pub fn reconcile(
        &mut self,
        dumped: impl IntoIterator<Item = Flow>,
        stamp: &mut u64,
        mut changed: impl FnMut(&Flow),
    ) -> Reconciled {
        let floor = *stamp + 1;
        let mut out = Reconciled::default();
        for flow in dumped {
            match self.reconcile_one(flow.clone(), stamp) {
                Upsert::Created | Upsert::Updated { changed: true } => {
                    out.changed += 1;
                    changed(&flow);
                }
                Upsert::Updated { changed: false } => {}
                Upsert::Full => out.full += 1,
            }
        }
        out.vanished = self.sweep(floor);
        out
    }

    /// One flow of a dump, upserted with the next `stamp`. A flow that
    /// differs from the cached one only in the seconds left keeps the
    /// cached state (its stamp moves on): traffic refreshes a timeout
    /// without an event, so the peer's copy holds the cached one, and a
    /// dump must not resend every flow for the time that passed.
    pub fn reconcile_one(&mut self, mut flow: Flow, stamp: &mut u64) -> Upsert {
        *stamp += 1;
        if let Some(e) = self.get(&flow.key())
            && e.flow.timeout != flow.timeout
        {
            let left = flow.timeout;
            flow.timeout = e.flow.timeout;
            if e.flow != flow {
                flow.timeout = left;
            }
        }
        self.upsert(flow, *stamp)
    }

    /// Remove every flow stamped below `floor` (a dump that started at
    /// `floor` did not show it); returns their keys.
    pub fn sweep(&mut self, floor: u64) -> Vec<FlowKey> {
        let mut vanished = Vec::new();
        self.retain(|e| {
            let keep = e.stamp >= floor;
            if !keep {
                vanished.push(e.flow.key());
            }
            keep
        });
        vanished
    }

    /// Remove every flow for which `keep` returns false; returns how many.
    pub fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) -> usize {
        let before = self.entries.len();
        let digests = &mut self.digests;
        self.entries.retain(|e| {
            let kept = keep(e);
            if !kept && let Some(d) = digests {
                d.remove(&e.flow);
            }
            kept
        });
        let removed = before - self.entries.len();
        if removed > 0 {
            self.stats.destroyed += removed as u64;
            self.rebuild_index();
            self.shrink_if_sparse();
        }
        removed
    }

    /// Remove everything (counted as destroyed), giving the memory back.
    pub fn clear(&mut self) {
        self.stats.destroyed += self.entries.len() as u64;
        self.entries = Vec::new();
        self.index = HashTable::new();
        if let Some(d) = &mut self.digests {
            d.clear();
        }
    }

    /// Give memory back once three quarters of the room is unused, so that
    /// a table that shrinks after a peak does not keep it (conntrackd
    /// does). Halving the room then costs one pass per as many removals as
    /// flows remain: amortised O(1).
    fn shrink_if_sparse(&mut self) {
        let (len, room) = (self.entries.len(), self.entries.capacity());
        if room > MIN_SHRINK_ROOM && len * 4 <= room {
            let keep = (len * 2).max(MIN_SHRINK_ROOM / 2);
            self.entries.shrink_to(keep);
            self.index.shrink_to(keep, Slot::hash);
        }
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Heap bytes held by the cache (entries, index and out-of-line flow
    /// fields), for `-s` and for the memory benchmark.
    pub fn heap_bytes(&self) -> usize {
        let extra: usize = self
            .entries
            .iter()
            .map(|e| {
                let mut n = 0;
                if let crate::flow::Addrs::V6(_) = e.flow.addrs {
                    n += std::mem::size_of::<[std::net::Ipv6Addr; 4]>();
                }
                if let Some(x) = e.flow.extra() {
                    n += std::mem::size_of::<crate::flow::FlowExtra>();
                    n += x.helper.as_ref().map_or(0, |h| h.len());
                }
                n
            })
            .sum();
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.index.allocation_size()
            + extra
    }

    /// Swap-remove the entry at `pos` and repoint the index at the entry
    /// that moved into its place.
    fn take_at(&mut self, pos: usize) -> Flow {
        let last = self.entries.len() - 1;
        if pos != last {
            let (moved_hash, _) = key_hash(&self.hasher, &self.entries[last].flow.key());
            if let Some(slot) = self.index.find_mut(moved_hash, |s| s.pos as usize == last) {
                slot.pos = pos as u32;
            }
        }
        self.entries.swap_remove(pos).flow
    }

    fn rebuild_index(&mut self) {
        self.index.clear();
        for (i, e) in self.entries.iter().enumerate() {
            let (hash, bits) = key_hash(&self.hasher, &e.flow.key());
            self.index.insert_unique(hash, Slot { pos: i as u32, bits }, Slot::hash);
        }
    }
}

/// One index slot: where the entry is, and the 32 bits of its key's hash
/// that the table's hash is made of.
#[derive(Clone, Copy)]
struct Slot {
    pos: u32,
    bits: u32,
}

impl Slot {
    fn hash(&self) -> u64 {
        widen(self.bits)
    }
}

/// The table's hash of a key and the 32 bits it is made of. The bits fill
/// both halves, so that the low bits (the bucket) and the top seven (the
/// control byte) both come from them.
fn key_hash(hasher: &foldhash::fast::FixedState, key: &FlowKey) -> (u64, u32) {
    let mut state = hasher.build_hasher();
    key.hash(&mut state);
    let h = std::hash::Hasher::finish(&state);
    let bits = (h ^ (h >> 32)) as u32;
    (widen(bits), bits)
}

fn widen(bits: u32) -> u64 {
    u64::from(bits) << 32 | u64::from(bits)
}

/// The entries of `local` (our kernel's flows) that would keep flows of
/// `synced` (the peer's, about to be committed) off their NAT mapping: an
/// entry with a synced flow's original tuple but another reply tuple, or
/// one whose original tuple is a synced NAT flow's reply tuple. keepalived
/// adds the virtual IPs before it runs notify_master, and the packets of
/// those moments make them: a client's datagram that the forward chain
/// lets through gets a fresh mapping, a server's datagram to the VIP a
/// local entry. A create cannot replace the first kind and an update
/// cannot change a mapping, so the commit deletes them first: the synced
/// state wins.
pub fn nat_conflicts(local: &Cache, synced: &Cache) -> Vec<FlowKey> {
    let mut conflicts = Vec::new();
    // Local flows the peer does not hold: few at a failover (the rest are
    // the same connections), so the synced table is scanned once against
    // this small set rather than indexed by reply tuple whole.
    let mut strays = std::collections::HashSet::new();
    for e in local.iter() {
        let key = e.flow.key();
        match synced.get(&key) {
            Some(s) if s.flow.tuple_key(Dir::Reply) != e.flow.tuple_key(Dir::Reply) => {
                conflicts.push(key)
            }
            Some(_) => {}
            None => {
                strays.insert(key);
            }
        }
    }
    if !strays.is_empty() {
        for s in synced.iter() {
            let natted = s.flow.snat().is_some() || s.flow.dnat().is_some();
            if natted && strays.remove(&s.flow.tuple_key(Dir::Reply)) {
                conflicts.push(s.flow.tuple_key(Dir::Reply));
            }
        }
    }
    conflicts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::proto;
    use std::net::Ipv4Addr;

    fn flow(i: u32) -> Flow {
        let proto = if i.is_multiple_of(2) { proto::TCP } else { proto::UDP };
        Flow::new_v4(
            proto,
            Ipv4Addr::from(0x0a00_0000 + i),
            Ipv4Addr::new(192, 0, 2, 1),
            (i % 60000) as u16 + 1024,
            443,
        )
    }

    #[test]
    fn upsert_get_remove_keep_the_index_consistent() {
        let mut c = Cache::new(1000);
        for i in 0..100 {
            assert_eq!(c.upsert(flow(i), 0), Upsert::Created);
        }
        assert_eq!(c.upsert(flow(5), 1), Upsert::Updated { changed: false });
        let mut changed = flow(6);
        changed.mark = 9;
        assert_eq!(c.upsert(changed, 2), Upsert::Updated { changed: true });
        // Remove from the middle so that the last entry moves.
        for i in (0..100).step_by(3) {
            assert!(c.remove(&flow(i).key()).is_some(), "{i}");
        }
        assert!(c.remove(&flow(0).key()).is_none());
        for i in 0..100 {
            assert_eq!(c.get(&flow(i).key()).is_some(), i % 3 != 0, "{i}");
        }
        assert_eq!(c.get(&flow(7).key()).unwrap().flow, flow(7));
        assert_eq!(c.len(), 66);
        assert_eq!(c.stats().destroyed, 34);
    }

    #[test]
    fn memory_is_given_back_when_flows_go() {
        let mut c = Cache::new(1 << 20);
        for i in 0..100_000 {
            c.upsert(flow(i), u64::from(i));
        }
        let peak = c.heap_bytes();
        for i in 0..99_000 {
            assert!(c.remove(&flow(i).key()).is_some());
        }
        assert!(c.heap_bytes() * 10 < peak, "{} of {peak} bytes kept", c.heap_bytes());
        // Every flow left is still found where the shrinking moved it.
        for i in 99_000..100_000 {
            assert_eq!(c.get(&flow(i).key()).map(|e| e.stamp), Some(u64::from(i)));
        }
        assert!(c.get(&flow(5).key()).is_none());
        c.clear();
        assert_eq!(c.heap_bytes(), 0);
    }

    #[test]
    fn a_full_cache_refuses_and_counts() {
        let mut c = Cache::new(2);
        c.upsert(flow(1), 0);
        c.upsert(flow(2), 0);
        assert_eq!(c.upsert(flow(3), 0), Upsert::Full);
        assert_eq!(c.upsert(flow(2), 0), Upsert::Updated { changed: false });
        assert_eq!(c.stats().failed_full, 1);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn digests_stay_equal_to_a_fresh_scan_through_every_change() {
        let mut c = Cache::new(1000);
        for i in 0..50 {
            c.upsert(flow(i), 0);
        }
        c.enable_digests();
        let scan = |c: &Cache| Digests::of(c.iter().map(|e| &e.flow));
        assert_eq!(c.digests(), Some(&scan(&c)));
        for i in 40..80 {
            c.upsert(flow(i), 1);
        }
        let mut changed = flow(3);
        changed.mark = 5;
        c.upsert(changed, 2);
        c.upsert(flow(4), 2);
        c.remove(&flow(10).key());
        assert_eq!(c.digests(), Some(&scan(&c)));
        c.retain(|e| e.flow.l4[0] % 3 != 0);
        assert_eq!(c.digests(), Some(&scan(&c)));
        assert_ne!(c.digests(), Some(&Digests::default()));
        c.clear();
        assert_eq!(c.digests(), Some(&Digests::default()));
        assert!(Cache::new(1).digests().is_none());
    }

    #[test]
    fn retain_rebuilds_the_index() {
        let mut c = Cache::new(100);
        for i in 0..50 {
            c.upsert(flow(i), u64::from(i));
        }
        assert_eq!(c.retain(|e| e.stamp >= 20), 20);
        for i in 0..50 {
            assert_eq!(c.get(&flow(i).key()).is_some(), i >= 20);
        }
    }

    /// The memory target: 1M common flows in at most 150 bytes each,
    /// map overhead included. Run with `cargo test --release -- --ignored
    /// bytes_per_flow --nocapture` to see the figure.
    #[test]
    #[ignore = "allocates a million flows; run in release"]
    fn bytes_per_flow_of_a_million_common_flows() {
        const N: u32 = 1_000_000;
        let mut c = Cache::new(N as usize);
        for i in 0..N {
            c.upsert(flow(i), 0);
        }
        let per_flow = c.heap_bytes() as f64 / f64::from(N);
        println!("cache of {N} IPv4 TCP/UDP flows: {per_flow:.1} bytes per flow");
        assert!(per_flow <= 150.0, "{per_flow}");
    }

    #[test]
    fn bytes_per_flow_at_scale_is_bounded() {
        const N: u32 = 100_000;
        let mut c = Cache::new(N as usize);
        for i in 0..N {
            c.upsert(flow(i), 0);
        }
        let per_flow = c.heap_bytes() as f64 / f64::from(N);
        assert!(per_flow <= 150.0, "{per_flow}");
    }

    #[test]
    fn a_dump_that_only_moved_the_seconds_left_changes_nothing() {
        let mut c = Cache::new(16);
        let mut stamp = 0;
        let mut f = flow(1);
        f.timeout = 100;
        c.reconcile([f.clone(), flow(2)], &mut stamp, |_| {});
        let mut later = f.clone();
        later.timeout = 40;
        let mut changed = Vec::new();
        let done = c.reconcile([later.clone(), flow(2)], &mut stamp, |f| changed.push(f.clone()));
        assert_eq!((done.changed, done.vanished.len()), (0, 0), "{changed:?}");
        assert_eq!(c.get(&f.key()).unwrap().flow.timeout, 100, "the peer's copy has 100");
        // A real change goes, with the timeout the kernel reports.
        later.mark = 7;
        let done = c.reconcile([later.clone()], &mut stamp, |_| {});
        assert_eq!((done.changed, done.vanished.len()), (1, 1));
        assert_eq!(c.get(&f.key()).unwrap().flow, later);
    }
}
