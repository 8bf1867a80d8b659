//! The node's own decisions in the simulation: overruns and the dump
//! after them, failovers and fail-backs with their commits, and readiness
//! after a restart, with the seeds the properties found.

use super::*;

/// Kernel events lost to an overrun on each side in turn, under loss:
/// the node's dump after the overrun puts its internal cache and the
/// peer's view right again (the run asserts both exactly).
#[test]
fn an_overrun_loses_events_and_the_dump_after_it_repairs_both_sides() {
    let out = run(&Scenario {
        seed: 21,
        loss: 0.1,
        jitter_ms: 5,
        ops: 600,
        overruns: vec![(300, 0, 400), (900, 1, 300), (1500, 0, 200)],
        ..Scenario::default()
    });
    assert!(out.events_lost[0] > 0 && out.events_lost[1] > 0, "{:?}", out.events_lost);
    // Two overruns of side 0: a dump after each.
    assert_eq!(out.resyncs, [2, 1]);
}

/// Overruns that overlap: one dump, once the burst is over.
#[test]
fn overlapping_overruns_are_repaired_by_one_dump() {
    let out = run(&Scenario {
        seed: 22,
        ops: 400,
        overruns: vec![(300, 1, 300), (400, 1, 300)],
        ..Scenario::default()
    });
    assert!(out.events_lost[1] > 0, "{:?}", out.events_lost);
    assert_eq!(out.resyncs, [0, 1]);
}

/// A failover while both sides change their tables, then a fail-back
/// right after it, over a lossy link: each `primary` commits every flow
/// of the new master's view into its kernel (asserted at the commit),
/// and the pair ends exact, each internal cache equal to its kernel.
#[test]
fn failover_and_fail_back_commit_the_view_and_converge_exactly() {
    let out = run(&Scenario {
        seed: 23,
        loss: 0.2,
        dup: 0.05,
        jitter_ms: 10,
        ops: 500,
        op_period_ms: 3000,
        failovers: vec![(2000, 1), (2050, 0)],
        ..Scenario::default()
    });
    assert_eq!(out.committed.len(), 2);
    assert!(out.committed[0] > 20, "{:?}", out.committed);
}

/// A side that restarts once the tables are quiet becomes ready only
/// with the peer's complete table, under loss.
#[test]
fn a_restarted_side_is_ready_only_with_the_whole_table() {
    let out = run(&Scenario {
        seed: 24,
        loss: 0.3,
        jitter_ms: 10,
        ops: 400,
        op_period_ms: 1000,
        restarts: vec![(3000, 1), (6000, 0)],
        ..Scenario::default()
    });
    assert!(out.ready_gaps.len() >= 2, "{:?}", out.ready_gaps);
    assert!(out.ready_gaps.iter().all(|g| *g == [0, 0]), "{:?}", out.ready_gaps);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: cases(48), ..Default::default() })]
    /// Overruns and failovers at random moments, in both dialects, with
    /// loss and reordering: exact views, internal caches equal to the
    /// kernels, and readiness only with a complete table.
    #[test]
    fn overruns_and_failovers_at_random_converge_exactly(
        seed in proptest::num::u64::ANY,
        loss in 0u32..=40,
        jitter in 0u64..20,
        compat_dialect in proptest::bool::ANY,
        overruns in proptest::collection::vec((0u64..3000, 0usize..2, 1u64..500), 0..4),
        failovers in proptest::collection::vec((0u64..4000, 0usize..2), 0..3),
        restart in proptest::option::of((0u64..4000, 0usize..2)),
        ops in 50usize..500,
    ) {
        let out = run(&Scenario {
            seed,
            loss: f64::from(loss) / 100.0,
            jitter_ms: jitter,
            dialect: if compat_dialect { Dialect::Conntrackd } else { Dialect::Native },
            // conntrackd's format has no end of bulk to sweep a flow whose
            // destroy a side never told (docs/PROTOCOL.md): one lost by a
            // restart, or by an overrun before `-f` emptied the cache that
            // knew it. Restarts, and failovers during overruns, in ours
            // only.
            failovers: if compat_dialect && !overruns.is_empty() { Vec::new() } else { failovers },
            overruns,
            restarts: restart.filter(|_| !compat_dialect).into_iter().collect(),
            ops,
            op_period_ms: 3000,
            ..Scenario::default()
        });
        proptest::prop_assert!(out.ready_gaps.iter().all(|g| *g == [0, 0]), "{:?}", out.ready_gaps);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: cases(48), ..Default::default() })]
    /// Direct-to-kernel mode, active-active (no role), under loss,
    /// reordering, a partition and overruns: the peer's flows reach the
    /// kernel as they arrive and leave it when destroyed or swept by a
    /// BULK_END, and an overrun's dump does not take them for ours. Each
    /// kernel ends holding its own flows and exactly the peer's.
    #[test]
    fn direct_mode_kernels_end_with_exactly_both_tables(
        seed in proptest::num::u64::ANY,
        loss in 0u32..=40,
        dup in 0u32..=10,
        jitter in 0u64..20,
        partition in proptest::option::of((0u64..2000, 100u64..5000)),
        overruns in proptest::collection::vec((0u64..3000, 0usize..2, 1u64..500), 0..3),
        ops in 50usize..500,
    ) {
        let out = run(&Scenario {
            seed,
            loss: f64::from(loss) / 100.0,
            dup: f64::from(dup) / 100.0,
            jitter_ms: jitter,
            partition: partition.map(|(a, len)| (a, a + len)),
            overruns,
            ops,
            op_period_ms: 3000,
            direct: true,
            ..Scenario::default()
        });
        proptest::prop_assert!(out.delivered_flow_msgs > 0);
    }
}

/// Found by the property above: side 0 restarts while side 1 is still
/// sending a bulk to its previous incarnation. The end of that bulk swept
/// the new view and made the node ready with 22 flows missing; only the
/// end of a bulk begun for this incarnation may make it ready.
#[test]
fn the_end_of_a_bulk_for_an_older_incarnation_does_not_make_a_node_ready() {
    let out = run(&Scenario {
        seed: 4164897993081919219,
        loss: 0.24,
        jitter_ms: 12,
        restarts: vec![(2995, 0)],
        ops: 374,
        op_period_ms: 3000,
        ..Scenario::default()
    });
    assert!(!out.ready_gaps.is_empty());
    assert!(out.ready_gaps.iter().all(|g| *g == [0, 0]), "{:?}", out.ready_gaps);
}

/// Found by the property above: side 1 becomes master at once (a `-B`
/// before the first handshake) and the handshake takes 4 s under loss.
/// The empty table of that moment ended in a BULK_END that the changes
/// made since waited behind, so side 0, restarted meanwhile, was ready
/// holding none of the master's 61 flows. Before the first handshake no
/// bulk is queued: the peer asks for the table once it knows us.
#[test]
fn a_bulk_asked_for_before_the_first_handshake_does_not_make_the_peer_ready_early() {
    let out = run(&Scenario {
        seed: 1425981824260679396,
        loss: 0.25,
        jitter_ms: 6,
        failovers: vec![(0, 1)],
        restarts: vec![(2995, 0)],
        ops: 214,
        op_period_ms: 3000,
        ..Scenario::default()
    });
    assert!(!out.ready_gaps.is_empty());
    assert!(out.ready_gaps.iter().all(|g| *g == [0, 0]), "{:?}", out.ready_gaps);
}

/// Found by the property above: side 0 queued a bulk, changed a flow
/// (queued behind that bulk's end), then learned that side 1 restarted and
/// queued another bulk. Under 30 % loss the first bulk's end was still
/// waiting; sent after the restart, it fell within what the new side 1
/// had received, so side 1 was ready while 8 of side 0's changes still
/// waited behind it. A new bulk now replaces the ends that wait.
#[test]
fn an_older_bulks_end_that_still_waits_does_not_make_a_restarted_peer_ready() {
    let out = run(&Scenario {
        seed: 14485592993818493878,
        loss: 0.30,
        jitter_ms: 15,
        overruns: vec![(0, 0, 431)],
        restarts: vec![(2984, 1)],
        ops: 342,
        op_period_ms: 3000,
        ..Scenario::default()
    });
    assert!(!out.ready_gaps.is_empty());
    assert!(out.ready_gaps.iter().all(|g| *g == [0, 0]), "{:?}", out.ready_gaps);
}

/// Found by the property above: side 0 restarts under 29 % loss with an
/// 8-entry resend ring. Side 1 answered its HELLO at some seq E, went on
/// sending, then adopted the new session and emptied its ring; its stream
/// was by then more than `max_seq_jump` past E, so the new side 0, which
/// expects E, dropped every datagram as too far ahead and the two never
/// converged. After a peer restarts we send no new data further than
/// `max_seq_jump` past what it has acknowledged.
#[test]
fn a_restarted_peer_never_finds_our_stream_too_far_ahead() {
    run(&Scenario {
        seed: 14688804717782177412,
        loss: 0.29,
        dup: 0.06,
        corrupt: 0.02,
        jitter_ms: 23,
        resend_queue: 8,
        initial_seq: [0, 0x8000_0000],
        restarts: vec![(355, 0)],
        ops: 336,
        ..Scenario::default()
    });
}

/// Found by the property above once failovers may fall within overruns:
/// side 0 sent a change of a flow that its kernel then destroyed while
/// its events were being lost, and the change was lost on the link. The
/// failover's `-f`, `-R` and `-B` left the flow out of the bulk, but the
/// lost change was resent after the bulk began, above the BULK_END's
/// floor: side 1 kept the flow for good. A bulk now supersedes every
/// change still unsent or unacknowledged, as it carries all we hold.
#[test]
fn a_change_lost_before_a_bulk_is_not_resent_above_its_floor() {
    run(&Scenario {
        seed: 5381798087020197432,
        loss: 0.14,
        jitter_ms: 10,
        ops: 192,
        overruns: vec![(2134, 0, 229)],
        failovers: vec![(2363, 0)],
        op_period_ms: 3000,
        ..Scenario::default()
    });
}
