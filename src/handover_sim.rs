//! The notify script's `primary` steps (`-c`, `-f`, `-R`) on a node whose
//! kernel races them, simulated with an in-memory table
//! ([`crate::netlink::memtable`]) and the daemon's own decisions: the
//! commit's [`settle`], [`nat_conflicts`], and the internal cache's rules
//! for kernel events and dumps ([`Cache::remove_entry`],
//! [`Cache::reconcile`]). The steps run in the reactor's order: events
//! drained before the commit, the entries in the way of synced NAT
//! mappings deleted, the commit, then `-f` and `-R`.
//!
//! The kernel's side of the race, drawn per case: entries left by the
//! purge of the node's time as backup (`-t`) expire at any tick of the
//! commit; a client's packet made a fresh NAT mapping of a synced flow, a
//! server's packet a local entry on a synced flow's mapping; the destroy
//! events of the commit's moments arrive at once or, as the reliable-events
//! mode redelivers them, after `-R`.
//!
//! Invariants (DESIGN.md, "every handover is exact"), checked once the
//! steps are done: every synced flow is in the table with its own NAT
//! mapping, and the internal cache equals the table.

use std::collections::HashSet;

use proptest::prelude::*;

use crate::cache::{Cache, Removal, Upsert, nat_conflicts};
use crate::flow::{Dir, Flow, FlowKey, proto, status};
use crate::netlink::memtable::{MemEvent, MemTable};
use crate::netlink::{CommitReport, EmitOptions, settle};

/// What the new master's kernel holds of one synced flow before the commit.
#[derive(Clone, Copy, Debug)]
enum Before {
    Nothing,
    /// Its own entry, purged by `-t`: it expires at this tick of the commit.
    Zombie(u64),
    /// An entry of the same connection with another NAT port, made by a
    /// client packet after keepalived moved the VIPs.
    FreshMapping,
    /// A local entry whose original tuple is the flow's reply tuple, made by
    /// a server packet to the VIP.
    LocalOnMapping,
}

fn before() -> impl Strategy<Value = Before> {
    prop_oneof![
        1 => Just(Before::Nothing),
        4 => (0u64..400).prop_map(Before::Zombie),
        1 => Just(Before::FreshMapping),
        1 => Just(Before::LocalOnMapping),
    ]
}

/// Synced flow `i`: a LAN client to a server, SNATed to the WAN VIP.
fn synced(i: u16) -> Flow {
    let mut f = Flow::new_v4(
        if i.is_multiple_of(3) { proto::UDP } else { proto::TCP },
        [192, 168, 60, 10 + (i % 100) as u8].into(),
        [203, 0, 113, 10].into(),
        10_000 + i,
        5000 + i % 7,
    );
    f.set_addrs(Dir::Reply, [203, 0, 113, 10].into(), [203, 0, 113, 1].into());
    f.status |= status::SEEN_REPLY | status::ASSURED;
    f.timeout = 1000;
    f
}

/// The same connection with the mapping a fresh client packet got.
fn fresh_mapping(flow: &Flow) -> Flow {
    let mut f = flow.clone();
    f.l4[3] = flow.l4[3].wrapping_add(20_000);
    f.status = status::CONFIRMED;
    f
}

/// The local entry a server packet to the VIP made on `flow`'s mapping.
fn local_on_mapping(flow: &Flow) -> Flow {
    let (src, dst) = (flow.src(Dir::Reply), flow.dst(Dir::Reply));
    let mut f = Flow::new(flow.l4proto, src, dst, flow.l4[2], flow.l4[3]);
    f.status = status::CONFIRMED;
    f
}

/// Apply kernel events to the internal cache as the reactor does: our own
/// are filtered out by the socket, destroys go through the cache's rule.
fn apply(internal: &mut Cache, stamp: &mut u64, events: Vec<MemEvent>) {
    for e in events.into_iter().filter(|e| !e.own) {
        if e.destroyed {
            let _: Removal = internal.remove_entry(&e.flow.key(), e.flow.entry_id);
        } else {
            *stamp += 1;
            let _: Upsert = internal.upsert(e.flow, *stamp);
        }
    }
}

/// A flow as the invariants compare it: both tuples.
fn tuples(flow: &Flow) -> (FlowKey, FlowKey) {
    (flow.key(), flow.tuple_key(Dir::Reply))
}

/// Runs the steps; `late` says, per destroy event of the commit's moments
/// (in order), whether it arrives only after `-R`. Returns the commit's
/// report and the invariants' failures.
fn primary(states: &[Before], late: &[bool]) -> (CommitReport, Vec<String>) {
    let flows: Vec<Flow> = (0..states.len() as u16).map(synced).collect();
    let mut table = MemTable::new();
    let mut internal = Cache::new(1 << 16);
    let mut external = Cache::new(1 << 16);
    let mut stamp = 0;
    for (i, f) in flows.iter().enumerate() {
        external.upsert(f.clone(), i as u64);
        let made = match states[i] {
            Before::Nothing => true,
            Before::Zombie(at) => {
                let ok = table.insert_from_traffic(f, 10_000);
                table.set_expiry(&f.key(), at);
                ok
            }
            Before::FreshMapping => table.insert_from_traffic(&fresh_mapping(f), 10_000),
            Before::LocalOnMapping => table.insert_from_traffic(&local_on_mapping(f), 10_000),
        };
        assert!(made, "the scenario's own entries never clash");
    }
    // The reactor drains the events before the commit.
    let events = table.take_events();
    apply(&mut internal, &mut stamp, events);

    // -c
    let conflicts = nat_conflicts(&internal, &external);
    table.delete(&conflicts);
    for key in &conflicts {
        internal.remove(key);
    }
    let mut order: Vec<&Flow> = external.iter().map(|e| &e.flow).collect();
    order.sort_by_key(|f| f.key().l4);
    let eo = EmitOptions { timeout: Some(5000), be_liberal: true };
    let (created, refused) = crate::netlink::CommitOps::create(&mut table, order, &eo).unwrap();
    let mut report = CommitReport { created, ..CommitReport::default() };
    settle(&mut table, refused, &eo, false, &mut report).unwrap();

    // The destroy events of the commit's moments: now, or after -R.
    let mut now = Vec::new();
    let mut after = Vec::new();
    let mut n = 0;
    for e in table.take_events() {
        if e.destroyed && !e.own {
            if late.get(n).copied().unwrap_or(false) {
                after.push(e);
            } else {
                now.push(e);
            }
            n += 1;
        } else {
            now.push(e);
        }
    }
    apply(&mut internal, &mut stamp, now);

    // -f, then -R: the dump, and what the dump itself evicted.
    internal.clear();
    external.clear();
    let dumped = table.dump();
    internal.reconcile(dumped, &mut stamp, |_| {});
    let evicted = table.take_events();
    apply(&mut internal, &mut stamp, after);
    apply(&mut internal, &mut stamp, evicted);

    let mut problems = Vec::new();
    for f in &flows {
        match table.get(&f.key()) {
            None => problems.push(format!("{} is not in the table", f.key())),
            Some(k) if k.tuple_key(Dir::Reply) != f.tuple_key(Dir::Reply) => {
                problems.push(format!("{} has another NAT mapping: {k}", f.key()))
            }
            Some(_) => {}
        }
    }
    let in_table: HashSet<_> = table.dump().iter().map(tuples).collect();
    let in_cache: HashSet<_> = internal.iter().map(|e| tuples(&e.flow)).collect();
    if in_table != in_cache {
        problems.push(format!(
            "internal cache != table: {} missing, {} extra",
            in_table.difference(&in_cache).count(),
            in_cache.difference(&in_table).count()
        ));
    }
    (report, problems)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..Default::default() })]

    #[test]
    fn the_primary_steps_leave_the_table_and_the_cache_exact(
        states in proptest::collection::vec(before(), 1..120),
        late in proptest::collection::vec(any::<bool>(), 0..120),
    ) {
        let (report, problems) = primary(&states, &late);
        prop_assert!(problems.is_empty(), "{problems:?}\n{}", report.summary());
        prop_assert!(report.failed.is_empty(), "{}", report.summary());
    }
}

/// The three races, each in one fixed case: the property above is only
/// as good as its scenario's ability to produce them.
#[test]
fn each_race_happens_in_the_simulation() {
    // Zombies that expire between their create (EEXIST) and update.
    let states: Vec<Before> = (0..40).map(|i| Before::Zombie(40 + i)).collect();
    let (report, problems) = primary(&states, &[]);
    assert!(problems.is_empty(), "{problems:?}");
    assert!(report.expired_under > 0, "{}", report.summary());
    // Their destroy events arrive after -R.
    let (_, problems) = primary(&states, &[true; 40]);
    assert!(problems.is_empty(), "{problems:?}");
    // Entries on the synced mappings.
    let states = [Before::FreshMapping, Before::LocalOnMapping, Before::Nothing];
    let (report, problems) = primary(&states, &[]);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(report.created, 3, "{}", report.summary());
}
