//! A conntrack table in memory, for simulations of what the daemon does to
//! the kernel: the behaviour of the kernel's table that the commit and the
//! caches depend on, on a clock the simulation drives.
//!
//! - Entries have an id ([`EntryId`]), a timeout and both tuples; every
//!   tuple of every entry is unique, as in the kernel's hash, so a create
//!   whose original or reply tuple is taken fails with EEXIST. The NAT port
//!   of a committed flow is always given (`convert::emit_create`), so the
//!   kernel never picks another mapping in its place.
//! - An entry expires when the clock passes its deadline; a lookup or a dump
//!   then removes it with a destroy event, as the kernel's lookups and dumps
//!   do (`nf_ct_gc_expired`).
//! - Each create or update of a commit takes one tick, so that entries
//!   expire between the batches of one commit as they do in the kernel.
//! - Events carry whether this daemon's own request caused them: the event
//!   socket's filter drops those (`EventSocket::ignore_origin`).

use std::collections::HashMap;
use std::io;

use crate::flow::{Dir, EntryId, Flow, FlowKey};
use crate::netlink::{CommitOps, CommitOptions, CommitReport, EmitOptions, Table, settle};

/// One event of the table.
#[derive(Clone, Debug)]
pub struct MemEvent {
    pub destroyed: bool,
    /// Caused by a request of the daemon (its port id in `nlmsg_pid`).
    pub own: bool,
    pub flow: Flow,
}

/// The table.
#[derive(Debug, Default)]
pub struct MemTable {
    now: u64,
    /// By original tuple: the entry and the tick it expires at.
    entries: HashMap<FlowKey, (Flow, u64)>,
    /// Both tuples of every entry, to the entry's original tuple.
    tuples: HashMap<FlowKey, FlowKey>,
    next_id: u32,
    events: Vec<MemEvent>,
}

impl MemTable {
    pub fn new() -> MemTable {
        MemTable::default()
    }

    /// The clock, in ticks.
    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn advance(&mut self, ticks: u64) {
        self.now += ticks;
    }

    /// An entry the kernel makes from traffic (not our request), alive for
    /// `ttl` ticks; false if one of its tuples is taken.
    pub fn insert_from_traffic(&mut self, flow: &Flow, ttl: u64) -> bool {
        self.insert(flow, ttl, false)
    }

    /// What `-t` does: every entry expires `ttl` ticks from now.
    pub fn set_timeout_all(&mut self, ttl: u64) {
        let deadline = self.now + ttl;
        for (_, expires) in self.entries.values_mut() {
            *expires = deadline;
        }
    }

    /// Set one entry's deadline (a purge that reached it at another moment).
    pub fn set_expiry(&mut self, key: &FlowKey, at: u64) {
        if let Some((_, expires)) = self.entries.get_mut(key) {
            *expires = at;
        }
    }

    /// The live entries, with their ids; expired ones go, with their events.
    pub fn dump(&mut self) -> Vec<Flow> {
        let now = self.now;
        let expired: Vec<FlowKey> =
            self.entries.iter().filter(|(_, (_, t))| *t <= now).map(|(k, _)| *k).collect();
        for key in expired {
            self.remove(&key, false);
        }
        self.entries.values().map(|(f, _)| f.clone()).collect()
    }

    /// The live entry with this original tuple.
    pub fn get(&mut self, key: &FlowKey) -> Option<&Flow> {
        self.alive(key).then(|| &self.entries[key].0)
    }

    /// Delete entries by original tuple, by our request; how many.
    pub fn delete(&mut self, keys: &[FlowKey]) -> usize {
        keys.iter().filter(|k| self.alive(k) && self.remove(k, true)).count()
    }

    /// The events since the last call, in order.
    pub fn take_events(&mut self) -> Vec<MemEvent> {
        std::mem::take(&mut self.events)
    }

    fn insert(&mut self, flow: &Flow, ttl: u64, own: bool) -> bool {
        let orig = flow.key();
        let reply = flow.tuple_key(Dir::Reply);
        for tuple in [orig, reply] {
            if let Some(owner) = self.tuples.get(&tuple).copied()
                && self.alive(&owner)
            {
                return false;
            }
        }
        self.next_id += 1;
        let mut flow = flow.clone();
        flow.entry_id = EntryId(self.next_id);
        self.tuples.insert(orig, orig);
        self.tuples.insert(reply, orig);
        self.events.push(MemEvent { destroyed: false, own, flow: flow.clone() });
        self.entries.insert(orig, (flow, self.now + ttl));
        true
    }

    /// True if the entry is there and alive; an expired one is removed.
    fn alive(&mut self, key: &FlowKey) -> bool {
        match self.entries.get(key) {
            Some((_, expires)) if *expires <= self.now => {
                self.remove(key, false);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    fn remove(&mut self, key: &FlowKey, own: bool) -> bool {
        let Some((flow, _)) = self.entries.remove(key) else { return false };
        self.tuples.remove(&flow.key());
        self.tuples.remove(&flow.tuple_key(Dir::Reply));
        self.events.push(MemEvent { destroyed: true, own, flow });
        true
    }
}

impl CommitOps for MemTable {
    fn create<'f>(
        &mut self,
        flows: Vec<&'f Flow>,
        eo: &EmitOptions,
    ) -> io::Result<(usize, Vec<(&'f Flow, i32)>)> {
        let mut created = 0;
        let mut refused = Vec::new();
        for flow in flows {
            self.now += 1;
            let ttl = u64::from(eo.timeout.unwrap_or(flow.timeout));
            if self.insert(flow, ttl, true) {
                created += 1;
            } else {
                refused.push((flow, libc::EEXIST));
            }
        }
        Ok((created, refused))
    }

    fn update<'f>(
        &mut self,
        flows: Vec<&'f Flow>,
        eo: &EmitOptions,
    ) -> io::Result<(usize, Vec<(&'f Flow, i32)>)> {
        let mut updated = 0;
        let mut refused = Vec::new();
        for flow in flows {
            self.now += 1;
            let key = flow.key();
            if !self.alive(&key) {
                refused.push((flow, libc::ENOENT));
                continue;
            }
            // An update changes state and timeout, never a tuple or the id.
            let deadline = self.now + u64::from(eo.timeout.unwrap_or(flow.timeout));
            let (entry, expires) = self.entries.get_mut(&key).expect("alive");
            entry.status = flow.status;
            entry.mark = flow.mark;
            entry.proto_state = flow.proto_state;
            *expires = deadline;
            let flow = entry.clone();
            self.events.push(MemEvent { destroyed: false, own: true, flow });
            updated += 1;
        }
        Ok((updated, refused))
    }

    fn displace(&mut self, flow: &Flow) -> io::Result<Option<FlowKey>> {
        let reply = flow.tuple_key(Dir::Reply);
        Ok((self.alive(&reply) && self.remove(&reply, true)).then_some(reply))
    }
}

/// A commit as [`crate::netlink::Kernel::commit_with`] makes it: all the
/// creates (one batch), then [`settle`]; `between` runs after each step.
impl Table for MemTable {
    fn commit_flows(
        &mut self,
        flows: Vec<&Flow>,
        opts: &CommitOptions,
        between: &mut dyn FnMut(),
    ) -> io::Result<CommitReport> {
        let eo = EmitOptions { timeout: opts.timeout, be_liberal: opts.be_liberal };
        let (created, refused) = self.create(flows, &eo)?;
        between();
        let mut report = CommitReport { created, ..CommitReport::default() };
        settle(self, refused, &eo, opts.create_only, &mut report)?;
        between();
        Ok(report)
    }

    fn delete_flows(&mut self, keys: &[FlowKey]) -> io::Result<CommitReport> {
        let mut report = CommitReport::default();
        for key in keys {
            if self.alive(key) && self.remove(key, true) {
                report.deleted += 1;
            } else {
                report.failed.push((*key, libc::ENOENT));
            }
        }
        Ok(report)
    }
}
