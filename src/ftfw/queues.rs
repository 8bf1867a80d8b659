//! The two sender queues: the coalescing transmit queue and the resend
//! queue indexed by sequence number.

use std::collections::VecDeque;

use hashbrown::HashMap;

use super::Seq;
use crate::expect::Expectation;
use crate::flow::{Flow, FlowKey};

type Map<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// A change waiting to be sent, or a sent message kept for resending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// Full flow state; `new` while the peer cannot know the flow yet.
    Upsert { flow: Flow, new: bool },
    /// The flow is gone.
    Destroy(FlowKey),
    /// An expectation's state.
    ExpUpsert(Box<Expectation>),
    /// The expectation is gone.
    ExpDestroy(Box<Expectation>),
    /// End of a bulk that started at this seq (a barrier in the tx queue).
    BulkEnd(Seq),
    /// Ask the peer for its table.
    Resync,
    /// A sent ACK, held for resending (conntrackd dialect only: there,
    /// control messages are sequenced and can be NACKed).
    Ack(Seq, Seq),
    /// A sent NACK, held for resending (conntrackd dialect only).
    Nack(Seq, Seq),
    /// A sent ALIVE: holds its seq's slot, never resent.
    Alive,
    /// A sent DIGEST part: holds its slot, never resent (its content would
    /// be stale; the next interval sends a fresh one).
    Digest,
    /// Ask the peer to resend the flows of these ranges (a bitmap).
    RepairRequest(u128),
    /// A flow resent by a repair: the peer counts it as repaired when it
    /// changes its copy.
    Repair(Flow),
    /// End of a repair of these ranges that started at this seq (a barrier,
    /// as [`Item::BulkEnd`]).
    RepairEnd(Seq, u128),
}

/// What a queued change is about: a flow, or an expectation (whose
/// expected tuple may equal some flow's key, so the two never share a slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum QueueKey {
    Flow(FlowKey),
    Exp(FlowKey),
}

impl Item {
    fn key(&self) -> Option<QueueKey> {
        match self {
            Item::Upsert { flow, .. } | Item::Repair(flow) => Some(QueueKey::Flow(flow.key())),
            Item::Destroy(k) => Some(QueueKey::Flow(*k)),
            Item::ExpUpsert(e) => Some(QueueKey::Exp(e.key())),
            Item::ExpDestroy(e) => Some(QueueKey::Exp(e.key())),
            _ => None,
        }
    }

    /// True for ACK, NACK and ALIVE: kept only to repair the peer's
    /// sequence tracking, they say nothing about our table.
    pub fn is_control(&self) -> bool {
        matches!(self, Item::Ack(..) | Item::Nack(..) | Item::Alive | Item::Digest)
    }
}

/// One place in the transmit order. Flow slots refer to the pending map by
/// generation, so a slot whose change was dropped or re-queued is skipped.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Flow(QueueKey, u64),
    BulkEnd(Seq),
    Resync,
    RepairRequest(u128),
    RepairEnd(Seq, u128),
}

/// The transmit queue: per flow, only the latest unsent change, kept at the
/// position of the first one.
#[derive(Default)]
pub(crate) struct TxQueue {
    pending: Map<QueueKey, (Item, u64)>,
    order: VecDeque<Slot>,
    next_gen: u64,
    /// BULK_END, RESYNC_REQUEST, REPAIR_REQUEST and REPAIR_END slots in
    /// `order`.
    markers: usize,
    /// Changes absorbed by coalescing (including NEW+DESTROY pairs).
    pub coalesced: u64,
    /// NEW+DESTROY pairs dropped before anything was sent.
    pub cancelled: u64,
}

/// What [`TxQueue::front`] found.
pub(crate) enum Front<'a> {
    Empty,
    Flow(&'a Item),
    BulkEnd(Seq),
    Resync,
    RepairRequest(u128),
    RepairEnd(Seq, u128),
}

impl TxQueue {
    /// Number of distinct pending changes and markers (may over-count
    /// stale slots not yet skipped).
    pub fn len(&self) -> usize {
        self.pending.len() + self.markers
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.markers == 0
    }

    /// Queue a local change, coalescing with a pending one for the same
    /// flow (the rules are in docs/PROTOCOL.md, "Transmit queue").
    pub fn push_change(&mut self, item: Item) {
        let Some(key) = item.key() else { return self.push_marker(item, false) };
        if let Some((old, _)) = self.pending.get_mut(&key) {
            self.coalesced += 1;
            let merged = match (&*old, item) {
                (Item::Upsert { new, .. }, Item::Upsert { flow, .. }) => {
                    Some(Item::Upsert { flow, new: *new })
                }
                (Item::Upsert { new: true, .. }, Item::Destroy(_)) => None,
                (Item::Upsert { new: false, .. }, d @ Item::Destroy(_)) => Some(d),
                // The peer may still hold an older incarnation: overwrite it.
                (Item::Destroy(_), Item::Upsert { flow, .. }) => {
                    Some(Item::Upsert { flow, new: false })
                }
                // A repair of a flow with a change pending is that change:
                // the peer's copy differs because of it, not by drift.
                (Item::Upsert { new, .. }, Item::Repair(flow)) => {
                    Some(Item::Upsert { flow, new: *new })
                }
                (Item::Destroy(_), Item::Repair(flow))
                | (Item::Repair(_), Item::Upsert { flow, .. }) => {
                    Some(Item::Upsert { flow, new: false })
                }
                // Expectations have no NEW/UPDATE distinction: the latest
                // state or the destroy goes.
                (_, other) => Some(other),
            };
            match merged {
                Some(m) => *old = m,
                None => {
                    self.cancelled += 1;
                    self.pending.remove(&key);
                }
            }
            return;
        }
        let generation = self.bump();
        self.pending.insert(key, (item, generation));
        self.order.push_back(Slot::Flow(key, generation));
    }

    /// Put back a message whose transmission was lost, ahead of everything
    /// else, unless a newer change for the same flow is already pending.
    /// Returns false when it was superseded.
    pub fn requeue(&mut self, item: Item) -> bool {
        let Some(key) = item.key() else {
            // A later bulk's end, still waiting, sweeps at a later floor
            // what this one would have.
            if matches!(item, Item::BulkEnd(_)) && self.has_bulk_end() {
                return false;
            }
            self.push_marker(item, true);
            return true;
        };
        if self.pending.contains_key(&key) {
            let generation = self.bump();
            let Some((pending, g)) = self.pending.get_mut(&key) else { return false };
            // The lost message may have been the one that removed an older
            // incarnation from the peer's view: a pending NEW can no longer
            // assume the peer lacks the flow, so a later destroy must go out
            // rather than cancel it.
            if let Item::Upsert { new, .. } = pending {
                *new = false;
            }
            // The pending change takes the lost message's place at the
            // front: queued behind a BULK_END, it would let that barrier go
            // out once the lost message is no longer awaited, and the peer
            // would take a bulk without this flow for its whole table.
            *g = generation;
            self.order.push_front(Slot::Flow(key, generation));
            return false;
        }
        let item = match item {
            Item::Upsert { flow, .. } => Item::Upsert { flow, new: false },
            other => other,
        };
        let generation = self.bump();
        self.pending.insert(key, (item, generation));
        self.order.push_front(Slot::Flow(key, generation));
        true
    }

    /// Queue a BULK_END barrier or a RESYNC_REQUEST.
    pub fn push_marker(&mut self, item: Item, front: bool) {
        let slot = match item {
            Item::BulkEnd(s) => Slot::BulkEnd(s),
            Item::Resync => Slot::Resync,
            Item::RepairRequest(set) => Slot::RepairRequest(set),
            Item::RepairEnd(s, set) => Slot::RepairEnd(s, set),
            _ => return,
        };
        self.markers += 1;
        if front { self.order.push_front(slot) } else { self.order.push_back(slot) }
    }

    /// True when a BULK_END waits.
    fn has_bulk_end(&self) -> bool {
        self.markers > 0 && self.order.iter().any(|s| matches!(s, Slot::BulkEnd(_)))
    }

    /// Drop the BULK_ENDs that wait: a new bulk's end replaces them. The
    /// new bulk carries every flow again and its end sweeps at a later
    /// floor, while an older end, sent now, would tell a peer that
    /// restarted meanwhile that it holds our table although the changes
    /// made since that bulk began still wait behind the end.
    pub fn drop_bulk_ends(&mut self) -> usize {
        let before = self.order.len();
        self.order.retain(|s| !matches!(s, Slot::BulkEnd(_)));
        let dropped = before - self.order.len();
        self.markers -= dropped;
        dropped
    }

    /// A bulk begins (see [`ResendQueue::supersede_states`]): drop the
    /// unsent flow and expectation states, which the bulk sends again for
    /// what we still hold. Destroys stay: harmless, and the peer may hold
    /// the flow.
    pub fn drop_states(&mut self) {
        self.pending.retain(|_, (item, _)| {
            !matches!(item, Item::Upsert { .. } | Item::ExpUpsert(_) | Item::Repair(_))
        });
    }

    /// True when a RESYNC_REQUEST waits.
    pub fn has_resync(&self) -> bool {
        self.markers > 0 && self.order.iter().any(|s| matches!(s, Slot::Resync))
    }

    /// The next thing to send, skipping stale slots.
    pub fn front(&mut self) -> Front<'_> {
        loop {
            match self.order.front() {
                None => return Front::Empty,
                Some(Slot::BulkEnd(s)) => return Front::BulkEnd(*s),
                Some(Slot::Resync) => return Front::Resync,
                Some(Slot::RepairRequest(set)) => return Front::RepairRequest(*set),
                Some(Slot::RepairEnd(s, set)) => return Front::RepairEnd(*s, *set),
                Some(Slot::Flow(key, generation)) => {
                    let live = matches!(self.pending.get(key), Some((_, g)) if g == generation);
                    if live {
                        break;
                    }
                    self.order.pop_front();
                }
            }
        }
        match self.order.front() {
            Some(Slot::Flow(key, _)) => match self.pending.get(key) {
                Some((item, _)) => Front::Flow(item),
                None => Front::Empty,
            },
            _ => Front::Empty,
        }
    }

    /// Remove what [`TxQueue::front`] returned.
    pub fn pop(&mut self) -> Option<Item> {
        if self.order.len() == 1 {
            // The last one: once it is out, what a burst grew is given back.
            let item = self.pop_front();
            release_idle(&mut self.order, &mut self.pending);
            return item;
        }
        self.pop_front()
    }

    fn pop_front(&mut self) -> Option<Item> {
        match self.order.pop_front()? {
            Slot::Flow(key, _) => self.pending.remove(&key).map(|(item, _)| item),
            Slot::BulkEnd(s) => {
                self.markers -= 1;
                Some(Item::BulkEnd(s))
            }
            Slot::Resync => {
                self.markers -= 1;
                Some(Item::Resync)
            }
            Slot::RepairRequest(set) => {
                self.markers -= 1;
                Some(Item::RepairRequest(set))
            }
            Slot::RepairEnd(s, set) => {
                self.markers -= 1;
                Some(Item::RepairEnd(s, set))
            }
        }
    }

    fn bump(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }
}

/// Capacity an idle queue keeps; beyond it, a drained queue frees what a
/// burst (a bulk of a million flows) made it grow to.
const IDLE_CAPACITY: usize = 4096;

fn release_idle<T, K, V>(order: &mut VecDeque<T>, map: &mut Map<K, V>) {
    if order.is_empty() && order.capacity() > IDLE_CAPACITY {
        *order = VecDeque::new();
    }
    if map.is_empty() && map.capacity() > IDLE_CAPACITY {
        *map = Map::default();
    }
}

/// A sent message awaiting acknowledgment.
struct Held {
    item: Item,
    /// False once a newer message for the same flow was sent, or once the
    /// entry was re-queued: it is then never resent.
    live: bool,
}

/// The resend queue: a ring indexed by sequence number, offset by the
/// oldest unacknowledged seq. It never drops an entry on its own: when it
/// is full, the sender stops sending new data.
pub(crate) struct ResendQueue {
    ring: VecDeque<Held>,
    /// Seq of `ring[0]`; when the ring is empty, the next seq to be sent.
    first: Seq,
    latest: Map<QueueKey, Seq>,
    live: usize,
    /// Live entries that are control messages ([`Item::is_control`]).
    live_control: usize,
    capacity: usize,
    /// Spans of seqs whose live flow messages the peer acknowledged, oldest
    /// first, at most [`ACKED_SPANS`]. A later NACK naming one of them
    /// means the ACK was forged or the peer took messages as received that
    /// it lost: what they carried can no longer be resent.
    acked: VecDeque<(Seq, Seq)>,
    /// The acknowledged destroys of those spans, at most
    /// [`ACKED_DESTROYS`]: a table sent again cannot say what is gone.
    acked_destroys: VecDeque<(Seq, Item)>,
    /// Remember acknowledged spans at all (conntrackd dialect only: the
    /// native dialect's ACKs are bound to the session, and keyed).
    remember_acked: bool,
}

/// Acknowledged spans remembered for [`ResendQueue::take_acknowledged`].
const ACKED_SPANS: usize = 64;

/// Acknowledged destroys remembered for [`ResendQueue::take_acknowledged`].
const ACKED_DESTROYS: usize = 4096;

impl ResendQueue {
    pub fn new(capacity: usize, next: Seq) -> ResendQueue {
        ResendQueue {
            ring: VecDeque::new(),
            first: next,
            latest: Map::default(),
            live: 0,
            live_control: 0,
            capacity: capacity.max(1),
            acked: VecDeque::new(),
            acked_destroys: VecDeque::new(),
            remember_acked: false,
        }
    }

    /// Remember what the peer acknowledges, for
    /// [`ResendQueue::take_acknowledged`].
    pub fn remember_acked(&mut self) {
        self.remember_acked = true;
    }

    /// Entries held (live, or superseded or re-queued but not yet
    /// acknowledged: their slots stay so that the ring never runs more
    /// than its capacity ahead of the receiver).
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Entries that would be resent if lost.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Live entries that carry flows or a resync request.
    pub fn live_data(&self) -> usize {
        self.live - self.live_control
    }

    /// Drop dead entries and control messages from the front: nothing is
    /// lost, their peer will never need them, and a silent peer must not
    /// make the ring grow with keepalives.
    pub fn trim_control(&mut self) {
        while let Some(held) = self.ring.front() {
            if held.live && !held.item.is_control() {
                break;
            }
            let Some(held) = self.ring.pop_front() else { break };
            let seq = self.first;
            self.first = self.first.next();
            if held.live {
                self.forget(&held.item, seq);
            }
        }
    }

    /// True when no new sequenced message may be sent.
    pub fn is_full(&self) -> bool {
        self.ring.len() >= self.capacity
    }

    /// Capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The seq of the oldest entry that would be resent if lost: every
    /// flow change sent before it was acknowledged or superseded.
    pub fn oldest_live(&self) -> Option<Seq> {
        let i = self.ring.iter().position(|h| h.live && !h.item.is_control())?;
        Some(self.first.plus(i as u32))
    }

    /// The oldest seq not yet acknowledged (when nothing is held, the next
    /// seq to be sent).
    pub fn first(&self) -> Seq {
        self.first
    }

    /// The seq after the last held entry.
    pub fn next(&self) -> Seq {
        self.first.plus(self.ring.len() as u32)
    }

    /// Hold a message sent with `seq`, which must be [`ResendQueue::next`].
    pub fn push(&mut self, seq: Seq, item: Item) {
        if self.ring.is_empty() {
            self.first = seq;
        }
        debug_assert_eq!(seq, self.next());
        if let Some(key) = item.key()
            && let Some(old) = self.latest.insert(key, seq)
            && let Some(i) = old.distance_from(self.first)
            && let Some(held) = self.ring.get_mut(i as usize)
            && held.live
        {
            held.live = false;
            self.live -= 1;
        }
        let live = !matches!(item, Item::Alive | Item::Digest);
        if live {
            self.live += 1;
            if item.is_control() {
                self.live_control += 1;
            }
        }
        self.ring.push_back(Held { item, live });
    }

    /// The peer accepted `[from, to]` and will never accept anything before
    /// `from`: drop everything up to `to`, returning the live entries
    /// before `from` as lost. `to` must not be after the last held seq.
    pub fn ack(&mut self, from: Seq, to: Seq, lost: &mut Vec<Item>) {
        let end = to.next();
        let Some(n) = end.distance_from(self.first) else { return };
        let n = (n as usize).min(self.ring.len());
        let lost_n = from.distance_from(self.first).map_or(0, |d| (d as usize).min(n));
        let mut span: Option<(Seq, Seq)> = None;
        for i in 0..n {
            let Some(held) = self.ring.pop_front() else { break };
            let seq = self.first;
            self.first = self.first.next();
            if held.live {
                self.forget(&held.item, seq);
                if i < lost_n {
                    lost.push(held.item);
                } else if self.remember_acked && !held.item.is_control() {
                    span = Some((span.map_or(seq, |s| s.0), seq));
                    if matches!(held.item, Item::Destroy(_) | Item::ExpDestroy(_)) {
                        if self.acked_destroys.len() == ACKED_DESTROYS {
                            self.acked_destroys.pop_front();
                        }
                        self.acked_destroys.push_back((seq, held.item));
                    }
                }
            }
        }
        if let Some(span) = span {
            if self.acked.len() == ACKED_SPANS {
                self.acked.pop_front();
            }
            self.acked.push_back(span);
        }
        if self.ring.is_empty() {
            release_idle(&mut self.ring, &mut self.latest);
        }
    }

    /// The peer lost `[from, to]`: return the live entries in it as lost.
    pub fn nack(&mut self, from: Seq, to: Seq, lost: &mut Vec<Item>) {
        let start = from.distance_from(self.first).unwrap_or(0) as usize;
        let Some(end) = to.distance_from(self.first) else { return };
        let end = (end as usize + 1).min(self.ring.len());
        for i in start..end {
            let seq = self.first.plus(i as u32);
            let Some(held) = self.ring.get_mut(i) else { break };
            if held.live {
                held.live = false;
                let item = held.item.clone();
                self.live -= 1;
                if item.is_control() {
                    self.live_control -= 1;
                }
                if let Some(key) = item.key()
                    && self.latest.get(&key) == Some(&seq)
                {
                    self.latest.remove(&key);
                }
                lost.push(item);
            }
        }
    }

    /// True when `[from, to]` names a flow message the peer acknowledged
    /// (of the last [`ACKED_SPANS`] ACKs that released any); the destroys
    /// in `[from, to]` are returned in `lost`. What it names is forgotten,
    /// so that one loss is answered once.
    pub fn take_acknowledged(&mut self, from: Seq, to: Seq, lost: &mut Vec<Item>) -> bool {
        let before = self.acked.len();
        self.acked.retain(|&(a, b)| !(from.diff(b) <= 0 && a.diff(to) <= 0));
        if self.acked.len() == before {
            return false;
        }
        let mut kept = VecDeque::with_capacity(self.acked_destroys.len());
        for (seq, item) in self.acked_destroys.drain(..) {
            if seq.diff(from) >= 0 && seq.diff(to) <= 0 {
                lost.push(item);
            } else {
                kept.push_back((seq, item));
            }
        }
        self.acked_destroys = kept;
        true
    }

    /// A bulk begins: every flow and expectation state held goes again in
    /// it if we still hold its subject, and its BULK_END sweeps at the peer
    /// what we do not. None of them is resent if lost (a resend would take
    /// a seq above the bulk's floor, out of the sweep's reach). Destroys
    /// stay live: one resent above the floor still ends the peer's copy,
    /// and in direct-to-kernel mode only a destroy deletes the kernel
    /// entry. Returns how many were superseded.
    pub fn supersede_states(&mut self) -> usize {
        let mut n = 0;
        for (i, held) in self.ring.iter_mut().enumerate() {
            let state =
                matches!(held.item, Item::Upsert { .. } | Item::ExpUpsert(_) | Item::Repair(_));
            let Some(key) = held.item.key().filter(|_| state && held.live) else { continue };
            held.live = false;
            self.live -= 1;
            n += 1;
            let seq = self.first.plus(i as u32);
            if self.latest.get(&key) == Some(&seq) {
                self.latest.remove(&key);
            }
        }
        n
    }

    /// Empty the queue, returning the live entries; the next seq becomes
    /// `next`.
    pub fn drain_all(&mut self, next: Seq, lost: &mut Vec<Item>) {
        self.acked.clear();
        self.acked_destroys.clear();
        for held in self.ring.drain(..) {
            if held.live {
                lost.push(held.item);
            }
        }
        self.latest.clear();
        self.live = 0;
        self.live_control = 0;
        self.first = next;
    }

    fn forget(&mut self, item: &Item, seq: Seq) {
        self.live -= 1;
        if item.is_control() {
            self.live_control -= 1;
        }
        if let Some(key) = item.key()
            && self.latest.get(&key) == Some(&seq)
        {
            self.latest.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::proto;

    fn flow(port: u16) -> Flow {
        Flow::new_v4(proto::TCP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), port, 80)
    }

    fn drain(q: &mut TxQueue) -> Vec<Item> {
        let mut v = Vec::new();
        while !matches!(q.front(), Front::Empty) {
            v.extend(q.pop());
        }
        v
    }

    #[test]
    fn coalescing_rules() {
        // docs/PROTOCOL.md, "Transmit queue".
        let mut q = TxQueue::default();
        let mut f1 = flow(1);
        q.push_change(Item::Upsert { flow: f1.clone(), new: true });
        f1.mark = 9;
        q.push_change(Item::Upsert { flow: f1.clone(), new: false });
        q.push_change(Item::Upsert { flow: flow(2), new: false });
        q.push_change(Item::Upsert { flow: flow(3), new: true });
        q.push_change(Item::Destroy(flow(3).key()));
        q.push_change(Item::Destroy(flow(2).key()));
        q.push_change(Item::Destroy(flow(4).key()));
        q.push_change(Item::Upsert { flow: flow(4), new: true });
        assert_eq!(
            drain(&mut q),
            vec![
                Item::Upsert { flow: f1, new: true },
                Item::Destroy(flow(2).key()),
                Item::Upsert { flow: flow(4), new: false },
            ]
        );
        assert!(q.is_empty());
        assert_eq!(q.cancelled, 1);
    }

    #[test]
    fn requeue_goes_first_unless_superseded() {
        let mut q = TxQueue::default();
        q.push_change(Item::Upsert { flow: flow(1), new: false });
        assert!(q.requeue(Item::Upsert { flow: flow(2), new: true }));
        assert!(!q.requeue(Item::Destroy(flow(1).key())));
        // The superseded loss (flow 1) brings its pending change to the
        // front in its place.
        assert_eq!(
            drain(&mut q),
            vec![
                Item::Upsert { flow: flow(1), new: false },
                Item::Upsert { flow: flow(2), new: false }
            ]
        );
    }

    #[test]
    fn a_lost_bulk_message_brings_its_flows_pending_change_ahead_of_bulk_end() {
        // A bulk message for flow 1 is lost after flow 1 changed again
        // behind the BULK_END: that change must reach the peer before the
        // barrier, or the peer takes a table without flow 1 for complete
        // (the simulator found this under 30 % loss).
        let mut q = TxQueue::default();
        q.push_marker(Item::BulkEnd(Seq(7)), false);
        q.push_change(Item::Upsert { flow: flow(1), new: false });
        assert!(!q.requeue(Item::Upsert { flow: flow(1), new: false }));
        assert_eq!(
            drain(&mut q),
            vec![Item::Upsert { flow: flow(1), new: false }, Item::BulkEnd(Seq(7))]
        );
    }

    #[test]
    fn a_bulk_supersedes_states_sent_or_queued_before_it_but_not_destroys() {
        // docs/PROTOCOL.md, "Bulk": a state resent above the bulk's floor
        // would keep at the peer a flow the bulk left out.
        let mut ring = ResendQueue::new(8, Seq(10));
        ring.push(Seq(10), Item::Upsert { flow: flow(1), new: true });
        ring.push(Seq(11), Item::Destroy(flow(2).key()));
        ring.push(Seq(12), Item::Alive);
        assert_eq!(ring.supersede_states(), 1);
        assert_eq!(ring.live(), 1);
        let mut lost = Vec::new();
        ring.nack(Seq(10), Seq(12), &mut lost);
        assert_eq!(lost, vec![Item::Destroy(flow(2).key())]);

        let mut q = TxQueue::default();
        q.push_change(Item::Upsert { flow: flow(3), new: false });
        q.push_change(Item::Destroy(flow(4).key()));
        q.drop_states();
        assert_eq!(drain(&mut q), vec![Item::Destroy(flow(4).key())]);
    }

    #[test]
    fn a_new_bulk_replaces_the_ends_that_wait_and_a_lost_older_end() {
        let mut q = TxQueue::default();
        q.push_marker(Item::BulkEnd(Seq(3)), false);
        q.push_change(Item::Upsert { flow: flow(1), new: false });
        assert_eq!(q.drop_bulk_ends(), 1);
        q.push_marker(Item::BulkEnd(Seq(9)), false);
        // The end of the first bulk, sent before and lost, is not resent.
        assert!(!q.requeue(Item::BulkEnd(Seq(1))));
        assert_eq!(
            drain(&mut q),
            vec![Item::Upsert { flow: flow(1), new: false }, Item::BulkEnd(Seq(9))]
        );
        assert!(q.requeue(Item::BulkEnd(Seq(9))));
        assert_eq!(drain(&mut q), vec![Item::BulkEnd(Seq(9))]);
    }

    #[test]
    fn a_lost_destroy_keeps_a_later_new_from_cancelling_the_next_destroy() {
        // The DESTROY of a flow is lost while the flow's next incarnation
        // waits as a NEW; that one dies before it is sent. The peer still
        // holds the first incarnation: the last DESTROY must go (the
        // simulator found this drift through anti-entropy).
        let mut q = TxQueue::default();
        q.push_change(Item::Upsert { flow: flow(1), new: true });
        assert!(!q.requeue(Item::Destroy(flow(1).key())));
        q.push_change(Item::Destroy(flow(1).key()));
        assert_eq!(drain(&mut q), vec![Item::Destroy(flow(1).key())]);
        assert_eq!(q.cancelled, 0);
    }

    #[test]
    fn resend_queue_ack_nack_and_supersede_across_the_wrap() {
        let base = Seq(u32::MAX - 2);
        let mut rs = ResendQueue::new(16, base);
        for i in 0..6u32 {
            let port = if i == 4 { 1 } else { i as u16 + 10 };
            rs.push(base.plus(i), Item::Upsert { flow: flow(port), new: false });
        }
        // seq base+0 was port 10, base+4 supersedes nothing (port 1 is new).
        assert_eq!(rs.live(), 6);
        rs.push(base.plus(6), Item::Destroy(flow(10).key())); // supersedes base+0
        assert_eq!(rs.live(), 6);
        let mut lost = Vec::new();
        rs.nack(base.plus(1), base.plus(2), &mut lost);
        assert_eq!(lost.len(), 2);
        // Dead entries keep their slot until acknowledged: the ring must
        // never run ahead of the receiver's expected seq by more than its
        // capacity (docs/PROTOCOL.md, "Resend queue").
        assert_eq!(rs.len(), 7);
        lost.clear();
        // Accepted [base+4, base+5]; base+3 is lost.
        rs.ack(base.plus(4), base.plus(5), &mut lost);
        assert_eq!(lost, vec![Item::Upsert { flow: flow(13), new: false }]);
        assert_eq!(rs.len(), 1);
        assert_eq!(rs.live(), 1);
        // An ACK for seqs no longer held changes nothing.
        lost.clear();
        rs.ack(base, base.plus(2), &mut lost);
        assert!(lost.is_empty());
        assert_eq!(rs.next(), base.plus(7));
    }

    #[test]
    fn a_nack_of_acknowledged_flow_messages_is_told_once_with_their_destroys() {
        let base = Seq(u32::MAX - 1);
        let mut rs = ResendQueue::new(16, base);
        rs.remember_acked();
        rs.push(base, Item::Upsert { flow: flow(1), new: true });
        rs.push(base.plus(1), Item::Destroy(flow(2).key()));
        rs.push(base.plus(2), Item::Ack(Seq(7), Seq(9)));
        rs.push(base.plus(3), Item::Upsert { flow: flow(3), new: true });
        let mut lost = Vec::new();
        // base+3 was NACKed first: it went again, it is not acknowledged.
        rs.nack(base.plus(3), base.plus(3), &mut lost);
        lost.clear();
        rs.ack(base, base.plus(3), &mut lost);
        assert!(lost.is_empty());
        assert!(
            !rs.take_acknowledged(base.plus(2), base.plus(3), &mut lost),
            "control and resent only"
        );
        assert!(rs.take_acknowledged(base.plus(1), base.plus(1), &mut lost));
        assert_eq!(lost, vec![Item::Destroy(flow(2).key())]);
        lost.clear();
        assert!(!rs.take_acknowledged(base, base.plus(1), &mut lost), "told once");
        assert!(lost.is_empty());
    }

    #[test]
    fn acknowledged_spans_are_not_kept_unless_asked() {
        let mut rs = ResendQueue::new(16, Seq(5));
        rs.push(Seq(5), Item::Destroy(flow(2).key()));
        let mut lost = Vec::new();
        rs.ack(Seq(5), Seq(5), &mut lost);
        assert!(!rs.take_acknowledged(Seq(5), Seq(5), &mut lost));
    }
}
