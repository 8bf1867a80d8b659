//! Anti-entropy digests: compact, order-independent summaries of a flow
//! table, split into [`RANGES`] ranges by a hash of the flow key, so that
//! two peers can find which parts of their tables differ without sending
//! the tables (docs/PROTOCOL.md, "Anti-entropy").
//!
//! A range's digest is the wrapping sum of [`flow_hash`] over its flows.
//! A sum is independent of order and is updated in O(1) when one flow is
//! added, changed or removed, so the caches keep their digests current on
//! every change and never scan for them. [`flow_hash`] hashes the flow's
//! attributes exactly as the native wire carries them, so our internal
//! entry and the peer's external copy of it hash alike; [`range_of`]
//! hashes the key attribute. Both use [`hash64`], which is specified in
//! docs/PROTOCOL.md and fixed by a test: two builds must agree on it.

use crate::flow::{Flow, FlowKey};
use crate::wire::native;

/// How many ranges a table is split into. A bitmap of them is a `u128`;
/// the DIGEST of all of them (1 KiB) fits one 1472-byte datagram.
pub const RANGES: usize = 128;

/// A set of ranges, bit `i` = range `i`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeSet(pub u128);

impl RangeSet {
    /// Add range `i` (ignored past [`RANGES`]).
    pub fn insert(&mut self, i: usize) {
        if i < RANGES {
            self.0 |= 1 << i;
        }
    }

    /// True when range `i` is in the set.
    pub fn contains(&self, i: usize) -> bool {
        i < RANGES && self.0 & (1 << i) != 0
    }

    /// Number of ranges in the set.
    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// True when no range is in the set.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// True when the range of this flow key is in the set.
    pub fn holds(&self, key: &FlowKey) -> bool {
        !self.is_empty() && self.contains(range_of(key))
    }
}

/// The specified 64-bit hash (docs/PROTOCOL.md, "Anti-entropy"): the bytes
/// as big-endian 64-bit words, the last one padded with zeros; per word
/// `h = rotl((h ^ w) * K, 29)`, starting from `SEED ^ len`; then
/// MurmurHash3's 64-bit finalizer. Each step is a bijection of the state
/// for a given word, so two inputs of one length that differ in a single
/// word never collide.
pub fn hash64(bytes: &[u8]) -> u64 {
    const SEED: u64 = 0x6374_7379_6e63_6165;
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let step = |h: u64, w: u64| (h ^ w).wrapping_mul(K).rotate_left(29);
    let mut h = SEED ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = step(h, u64::from_be_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        h = step(h, u64::from_be_bytes(last));
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The range of a flow: the top bits of the hash of its key attribute.
pub fn range_of(key: &FlowKey) -> usize {
    let mut buf = [0u8; native::MAX_KEY_ATTR];
    (hash64(native::key_attr(key, &mut buf)) >> (64 - RANGES.trailing_zeros())) as usize
}

/// The hash of a flow's replicated content.
pub fn flow_hash(flow: &Flow) -> u64 {
    let mut buf = [0u8; native::MAX_FLOW_ATTRS];
    hash64(native::flow_attrs(flow, &mut buf))
}

/// The per-range digests of one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digests {
    sums: Box<[u64; RANGES]>,
}

impl Default for Digests {
    fn default() -> Digests {
        Digests { sums: Box::new([0; RANGES]) }
    }
}

impl Digests {
    /// The digests of a whole table, computed from scratch.
    pub fn of<'a>(flows: impl IntoIterator<Item = &'a Flow>) -> Digests {
        let mut d = Digests::default();
        for f in flows {
            d.add(f);
        }
        d
    }

    /// A flow joined the table.
    pub fn add(&mut self, flow: &Flow) {
        let r = range_of(&flow.key());
        self.sums[r] = self.sums[r].wrapping_add(flow_hash(flow));
    }

    /// A flow left the table.
    pub fn remove(&mut self, flow: &Flow) {
        let r = range_of(&flow.key());
        self.sums[r] = self.sums[r].wrapping_sub(flow_hash(flow));
    }

    /// A flow's content changed from `old` to `new` (same key, same range).
    pub fn replace(&mut self, old: &Flow, new: &Flow) {
        let r = range_of(&new.key());
        self.sums[r] = self.sums[r].wrapping_sub(flow_hash(old)).wrapping_add(flow_hash(new));
    }

    /// The table was emptied.
    pub fn clear(&mut self) {
        self.sums.fill(0);
    }

    /// The digests, range by range.
    pub fn values(&self) -> &[u64] {
        &self.sums[..]
    }

    /// The ranges where `theirs` (digests of ranges `0..theirs.len()`)
    /// differs from ours.
    pub fn differing(&self, theirs: &[u64]) -> RangeSet {
        let mut set = RangeSet::default();
        for (i, (a, b)) in self.sums.iter().zip(theirs).enumerate() {
            if a != b {
                set.insert(i);
            }
        }
        set
    }
}

/// Anti-entropy counters, as `ctsyncd -s` and the metrics show them. The
/// `flows_*` counters count what repairs changed in the external cache:
/// exactly the flows that had drifted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AntiEntropyStats {
    /// Complete digests from the peer compared with the external cache.
    pub digests_compared: u64,
    /// Comparisons that found differing ranges (each starts a repair).
    pub digests_differing: u64,
    /// Repairs of our external cache completed (REPAIR_END received).
    pub repairs: u64,
    /// Ranges repaired in our external cache.
    pub ranges_repaired: u64,
    /// Flows a repair added to the external cache (the peer had them, we
    /// did not).
    pub flows_added: u64,
    /// Flows a repair changed in the external cache (our copy was stale).
    pub flows_changed: u64,
    /// Flows a repair removed from the external cache (the peer no longer
    /// has them).
    pub flows_removed: u64,
    /// Repairs the peer asked of us (its copy of our table had drifted).
    pub repairs_served: u64,
    /// Flows we resent for them.
    pub flows_resent: u64,
    /// Digests not compared because the external cache is full (its
    /// drift cannot be repaired).
    pub skipped_full: u64,
}

/// The receiving side of repairs: counts the current round and the totals.
#[derive(Debug, Default)]
pub struct RepairLedger {
    /// Totals.
    pub stats: AntiEntropyStats,
    added: u64,
    changed: u64,
}

impl RepairLedger {
    /// A repaired flow was stored: `created` when it was missing, `changed`
    /// when our copy differed.
    pub fn flow(&mut self, created: bool, changed: bool) {
        if created {
            self.added += 1;
            self.stats.flows_added += 1;
        } else if changed {
            self.changed += 1;
            self.stats.flows_changed += 1;
        }
    }

    /// A repair ended: `removed` flows were swept. Returns the log line of
    /// the round.
    pub fn end(&mut self, ranges: RangeSet, removed: usize) -> String {
        self.stats.repairs += 1;
        self.stats.ranges_repaired += ranges.len() as u64;
        self.stats.flows_removed += removed as u64;
        let line = format!(
            "anti-entropy repair of {} ranges that differed from the peer's table: {} flows added, {} changed, {removed} removed",
            ranges.len(),
            self.added,
            self.changed
        );
        self.added = 0;
        self.changed = 0;
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::proto;
    use crate::wire::{Message, MessageRef};

    fn flow(i: u32) -> Flow {
        let mut f = Flow::new_v4(
            proto::TCP,
            std::net::Ipv4Addr::from(0x0a00_0000 + i),
            [192, 0, 2, 1].into(),
            (i % 50000) as u16 + 1024,
            443,
        );
        f.timeout = i;
        f
    }

    #[test]
    fn hash64_is_the_specified_function() {
        // docs/PROTOCOL.md, "Anti-entropy": peers of different builds must
        // agree, so these values (computed from the written specification
        // by a separate implementation) must never change.
        assert_eq!(hash64(b""), 0x09b9_d170_4e17_712a);
        assert_eq!(hash64(b"ctsync"), 0xb1aa_aca9_31f6_1907);
        assert_eq!(hash64(&[0u8; 8]), 0xe065_9ef3_927b_89ad);
    }

    #[test]
    fn digests_do_not_depend_on_order_and_follow_every_change() {
        let flows: Vec<Flow> = (0..500).map(flow).collect();
        let forward = Digests::of(&flows);
        let backward = Digests::of(flows.iter().rev());
        assert_eq!(forward, backward);
        // Incremental add, change and remove end where a fresh scan ends.
        let mut d = Digests::default();
        for f in &flows {
            d.add(f);
        }
        let mut changed = flows[7].clone();
        changed.mark = 99;
        d.replace(&flows[7], &changed);
        d.remove(&flows[8]);
        let mut now: Vec<Flow> = flows.clone();
        now[7] = changed;
        now.remove(8);
        assert_eq!(d, Digests::of(&now));
        assert_ne!(d, forward);
        // Exactly the ranges of the two touched flows differ.
        let diff = d.differing(forward.values());
        let mut want = RangeSet::default();
        want.insert(range_of(&flows[7].key()));
        want.insert(range_of(&flows[8].key()));
        assert_eq!(diff, want);
        assert!(diff.holds(&flows[8].key()));
        d.clear();
        assert_eq!(d, Digests::default());
    }

    #[test]
    fn ranges_spread_flows_evenly() {
        let mut counts = [0u32; RANGES];
        for i in 0..128_000 {
            counts[range_of(&flow(i).key())] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 800 && *max < 1200, "{min}..{max}");
    }

    #[test]
    fn a_flow_and_its_decoded_copy_hash_alike() {
        // The receiver's copy went through the wire: it must hash like the
        // sender's entry, or every digest would differ forever.
        let mut v6 = Flow::new(
            proto::UDP,
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            53,
            5353,
        );
        v6.extra_mut().labels = Some(3);
        v6.extra_mut().helper = Some("h".repeat(100).into());
        let mut empty_extra = flow(1);
        empty_extra.extra_mut();
        for f in [flow(1), v6, empty_extra] {
            let mut buf = [0u8; 512];
            let n = native::emit_message(&MessageRef::FlowRepair(&f), &mut buf).unwrap();
            let view = native::MessagePacket::new_checked(&buf[..n]).unwrap();
            let Ok(Message::FlowRepair(copy)) = view.parse() else { panic!() };
            assert_eq!(flow_hash(&copy), flow_hash(&f));
            assert_eq!(range_of(&copy.key()), range_of(&f.key()));
        }
    }

    #[test]
    fn ledger_counts_a_round_and_resets_it() {
        let mut l = RepairLedger::default();
        l.flow(true, false);
        l.flow(false, true);
        l.flow(false, false);
        let mut set = RangeSet::default();
        set.insert(3);
        set.insert(100);
        let line = l.end(set, 4);
        assert!(line.contains("2 ranges") && line.contains("1 flows added, 1 changed, 4 removed"));
        assert!(l.end(RangeSet::default(), 0).contains("0 flows added, 0 changed"));
        assert_eq!(
            (l.stats.flows_added, l.stats.flows_changed, l.stats.flows_removed, l.stats.repairs),
            (1, 1, 4, 2)
        );
    }
}
