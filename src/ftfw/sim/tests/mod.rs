//! The simulation's property tests: convergence through loss,
//! duplication, reordering, corruption, partitions and restarts in both
//! dialects; anti-entropy repairing drift; and convergence under the
//! attacker (docs/SECURITY.md). Each runs seeded scenarios of the harness
//! (`sim/mod.rs`). The attacked properties are in `attacks.rs`; the node's
//! own decisions (overruns, failovers, readiness after a restart) in
//! `node.rs`.

use super::*;

mod attacks;
mod node;

#[test]
fn clean_link() {
    let out = run(&Scenario::default());
    assert!(out.delivered_flow_msgs > 100, "{}", out.delivered_flow_msgs);
    assert!(out.virtual_time < Duration::from_secs(10));
    assert_eq!(out.stats[0].resent, 0);
    // docs/PROTOCOL.md, "Keepalive": one datagram per interval each way.
    assert!(out.idle_datagrams <= 2 * 11, "{}", out.idle_datagrams);
    assert_eq!(out.stats[1].drop_bad_crc, 0);
}

#[test]
fn heavy_loss_reorder_dup_corruption() {
    run(&Scenario {
        seed: 7,
        loss: 0.3,
        dup: 0.1,
        corrupt: 0.05,
        jitter_ms: 20,
        ..Scenario::default()
    });
}

#[test]
fn half_of_everything_lost() {
    let out = run(&Scenario { seed: 3, loss: 0.5, ops: 200, ..Scenario::default() });
    assert!(out.stats[0].resent + out.stats[1].resent > 0);
}

#[test]
fn sequence_numbers_wrap() {
    run(&Scenario {
        seed: 11,
        loss: 0.1,
        jitter_ms: 5,
        initial_seq: [u32::MAX - 50, u32::MAX - 3],
        ..Scenario::default()
    });
}

#[test]
fn tiny_resend_queue_applies_backpressure() {
    let out = run(&Scenario {
        seed: 5,
        loss: 0.2,
        resend_queue: 8,
        ops: 400,
        op_period_ms: 100,
        ..Scenario::default()
    });
    assert!(out.stats[0].backpressure + out.stats[1].backpressure > 0);
}

#[test]
fn partition_heals() {
    let out = run(&Scenario {
        seed: 13,
        loss: 0.05,
        partition: Some((500, 9000)),
        ..Scenario::default()
    });
    assert!(out.stats[0].peer_down >= 1 && out.stats[0].peer_up >= 2);
}

#[test]
fn restart_of_either_side_mid_burst() {
    let out = run(&Scenario {
        seed: 17,
        loss: 0.1,
        jitter_ms: 3,
        restarts: vec![(700, 0), (1400, 1)],
        ..Scenario::default()
    });
    assert!(out.stats[0].peer_restarts + out.stats[1].peer_restarts >= 1);
}

#[test]
fn forged_far_ahead_datagram_does_not_stall() {
    let out = run(&Scenario { seed: 19, forge: Some((900, 1 << 30)), ..Scenario::default() });
    assert_eq!(out.stats[1].drop_far_ahead, 1);
}

#[test]
fn forged_near_ahead_datagram_heals_by_jumping() {
    let out = run(&Scenario { seed: 23, forge: Some((900, 50)), ..Scenario::default() });
    assert!(out.stats[0].seq_jumps >= 1);
}

/// The conntrackd dialect on the same lossy links (docs/PROTOCOL.md,
/// "conntrackd compatibility"). Not simulated there: corruption (the
/// format has no checksum) and restarts (it has no BULK_END, so flows
/// destroyed while a side was down stay in the other's view).
fn compat(sc: Scenario) -> Outcome {
    run(&Scenario { dialect: Dialect::Conntrackd, ..sc })
}

#[test]
fn compat_clean_link_pings_one_message_per_second() {
    let out = compat(Scenario::default());
    assert_eq!(out.stats[0].resent, 0);
    // An idle pair exchanges one ACK or ALIVE per second each way, as
    // conntrackd does.
    assert!(out.idle_datagrams <= 2 * 11, "{}", out.idle_datagrams);
    assert!(out.idle_datagrams >= 2 * 9, "{}", out.idle_datagrams);
}

#[test]
fn compat_loss_reorder_dup() {
    let out =
        compat(Scenario { seed: 29, loss: 0.3, dup: 0.1, jitter_ms: 20, ..Scenario::default() });
    assert!(out.stats[0].nacks_sent + out.stats[1].nacks_sent > 0);
}

#[test]
fn compat_wrap_backpressure_partition() {
    compat(Scenario {
        seed: 31,
        loss: 0.1,
        initial_seq: [u32::MAX - 50, u32::MAX - 3],
        resend_queue: 8,
        ops: 400,
        op_period_ms: 300,
        partition: Some((200, 5000)),
        ..Scenario::default()
    });
}

#[test]
fn lost_destroy_under_a_pending_new_is_not_cancelled() {
    // A destroy lost in a partition, the flow re-created and destroyed
    // again before the loss is noticed: the peer still holds the first
    // incarnation, so the second destroy must be sent.
    compat(Scenario {
        seed: 17035293351901932946,
        loss: 0.2,
        dup: 0.04,
        resend_queue: 64,
        initial_seq: [296184259, 2443667907],
        partition: Some((243, 1592)),
        ops: 335,
        ..Scenario::default()
    });
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: cases(64), ..Default::default() })]
    #[test]
    fn compat_random_schedules_converge(
        seed in proptest::num::u64::ANY,
        loss in 0u32..=50,
        dup in 0u32..=20,
        jitter in 0u64..30,
        rs in proptest::sample::select(vec![8usize, 64, 4096]),
        start in proptest::num::u32::ANY,
        partition in proptest::option::of((0u64..2000, 100u64..5000)),
        ops in 20usize..400,
    ) {
        compat(Scenario {
            seed,
            loss: f64::from(loss) / 100.0,
            dup: f64::from(dup) / 100.0,
            jitter_ms: jitter,
            resend_queue: rs,
            initial_seq: [start, start.wrapping_add(0x8000_0000)],
            partition: partition.map(|(a, len)| (a, a + len)),
            ops,
            ..Scenario::default()
        });
    }
}

#[test]
fn stale_hello_of_an_older_incarnation_does_not_win() {
    // Two restarts 11 ms apart with 11 ms of jitter: the first
    // incarnation's HELLO_BACK arrives after the second one's HELLO.
    // docs/PROTOCOL.md, "Handshake" (rounds).
    run(&Scenario {
        seed: 1795131453620218000,
        dup: 0.01,
        jitter_ms: 11,
        resend_queue: 64,
        initial_seq: [0, 0x8000_0000],
        restarts: vec![(197, 1), (208, 1)],
        ops: 109,
        ..Scenario::default()
    });
}

#[test]
fn superseded_entries_keep_their_slot_until_acked() {
    // The ring must not run more than its capacity ahead of the
    // receiver: docs/PROTOCOL.md, "Resend queue".
    run(&Scenario {
        seed: 16094329664063358698,
        loss: 0.4,
        dup: 0.17,
        corrupt: 0.05,
        jitter_ms: 29,
        resend_queue: 64,
        initial_seq: [1704860602, 3852344250],
        partition: Some((743, 2076)),
        ops: 186,
        ..Scenario::default()
    });
}

/// Drift made in side 1's view at 5 s, after the changes stopped.
fn drift_scenario(loss: f64, dup: f64, jitter_ms: u64) -> Scenario {
    Scenario {
        seed: 7,
        loss,
        dup,
        jitter_ms,
        ops: 400,
        flows: 200,
        op_period_ms: 3000,
        anti_entropy: Duration::from_secs(2),
        drift: vec![
            Drift { at_ms: 5000, side: 1, removed: 7, changed: 5, added: 3 },
            Drift { at_ms: 5000, side: 0, removed: 0, changed: 2, added: 0 },
        ],
        ..Scenario::default()
    }
}

#[test]
fn anti_entropy_finds_and_repairs_drift_within_the_interval_counting_it_exactly() {
    // docs/PROTOCOL.md, "Anti-entropy": the digests after the drift
    // differ in the drifted ranges only; their repair restores the
    // views (run() checks they equal the peers' tables) and counts
    // exactly what had drifted.
    let sc = drift_scenario(0.0, 0.0, 0);
    let out = run(&sc);
    let r = out.repairs[1];
    assert_eq!((r.flows_added, r.flows_changed, r.flows_removed), (7, 5, 3), "{r:?}");
    assert_eq!(r.repairs, r.digests_differing);
    assert!(r.ranges_repaired >= 1 && r.ranges_repaired <= 15, "{r:?}");
    let l = out.repairs[0];
    assert_eq!((l.flows_added, l.flows_changed, l.flows_removed), (0, 2, 0), "{l:?}");
    let took = out.repaired_at[1].unwrap() - Duration::from_millis(5000);
    assert!(took <= sc.anti_entropy + Duration::from_millis(100), "{took:?}");
    assert_eq!(out.repairs[0].repairs_served, out.repairs[1].repairs);
}

#[test]
fn anti_entropy_repairs_exactly_through_loss_duplication_and_reordering() {
    let out = run(&drift_scenario(0.2, 0.1, 15));
    let r = out.repairs[1];
    assert_eq!((r.flows_added, r.flows_changed, r.flows_removed), (7, 5, 3), "{r:?}");
    let l = out.repairs[0];
    assert_eq!((l.flows_added, l.flows_changed, l.flows_removed), (0, 2, 0), "{l:?}");
}

#[test]
fn anti_entropy_repairs_drift_while_changes_keep_flowing() {
    // A busy pair is never idle: digests must still be sent and
    // compared. Changes made meanwhile may fix some drifted flows
    // themselves, so the repair counts at most what drifted.
    let sc = Scenario {
        ops: 4000,
        flows: 300,
        op_period_ms: 20_000,
        drift: vec![Drift { at_ms: 10_000, side: 1, removed: 7, changed: 5, added: 3 }],
        ..drift_scenario(0.0, 0.0, 5)
    };
    let out = run(&sc);
    let r = out.repairs[1];
    let repaired = r.flows_added + r.flows_changed + r.flows_removed;
    assert!((1..=15).contains(&repaired), "{r:?}");
    assert!(r.digests_compared >= 8, "{r:?}");
    assert_eq!(r.flows_removed, 3, "nothing else can remove the added flows: {r:?}");
    let took = out.repaired_at[1].unwrap() - Duration::from_millis(10_000);
    assert!(took <= sc.anti_entropy + Duration::from_millis(500), "{took:?}");
}

#[test]
fn anti_entropy_digests_in_parts_when_a_datagram_is_small() {
    // 512-byte datagrams hold 57 digests: three DIGEST parts, which the
    // receiver compares only once all arrived in order.
    let out = run(&Scenario { max_datagram: 512, ..drift_scenario(0.1, 0.05, 10) });
    let r = out.repairs[1];
    assert_eq!((r.flows_added, r.flows_changed, r.flows_removed), (7, 5, 3), "{r:?}");
    assert!(out.stats[0].digests_sent >= 2 && out.stats[1].digests_received >= 2);
}

#[test]
fn anti_entropy_makes_no_false_repair_while_changes_flow_through_a_bad_link() {
    // Digests cross the link while changes are in flight, lost,
    // duplicated and reordered: every one compared must match.
    let out = run(&Scenario {
        seed: 11,
        loss: 0.2,
        dup: 0.1,
        corrupt: 0.02,
        jitter_ms: 20,
        ops: 3000,
        flows: 300,
        op_period_ms: 30_000,
        anti_entropy: Duration::from_millis(500),
        ..Scenario::default()
    });
    for (side, r) in out.repairs.iter().enumerate() {
        assert!(r.digests_compared >= 20, "side {side}: {r:?} {:?}", out.stats[side]);
        assert_eq!(r.digests_differing, 0, "side {side}: {r:?}");
    }
    assert!(out.stats[0].digests_skipped + out.stats[1].digests_skipped > 0);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: cases(64), ..Default::default() })]
    #[test]
    fn anti_entropy_never_repairs_what_did_not_drift(
        seed in proptest::num::u64::ANY,
        loss in 0u32..=40,
        dup in 0u32..=20,
        jitter in 0u64..30,
        rs in proptest::sample::select(vec![8usize, 64, 4096]),
        restarts in proptest::collection::vec((0u64..3000, 0usize..2), 0..2),
        partition in proptest::option::of((0u64..2000, 100u64..3000)),
        ops in 20usize..400,
    ) {
        let out = run(&Scenario {
            seed,
            loss: f64::from(loss) / 100.0,
            dup: f64::from(dup) / 100.0,
            jitter_ms: jitter,
            resend_queue: rs,
            restarts,
            partition: partition.map(|(a, len)| (a, a + len)),
            ops,
            anti_entropy: Duration::from_millis(300),
            ..Scenario::default()
        });
        for r in out.repairs {
            proptest::prop_assert_eq!(r.digests_differing, 0, "{:?}", r);
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: cases(160), ..Default::default() })]
    #[test]
    fn random_schedules_converge(
        seed in proptest::num::u64::ANY,
        loss in 0u32..=50,
        dup in 0u32..=20,
        corrupt in 0u32..=10,
        jitter in 0u64..30,
        rs in proptest::sample::select(vec![8usize, 64, 4096]),
        start in proptest::num::u32::ANY,
        restarts in proptest::collection::vec((0u64..3000, 0usize..2), 0..3),
        partition in proptest::option::of((0u64..2000, 100u64..5000)),
        forge in proptest::option::of((0u64..2500, 1u32..=u32::MAX)),
        ops in 20usize..400,
    ) {
        run(&Scenario {
            seed,
            loss: f64::from(loss) / 100.0,
            dup: f64::from(dup) / 100.0,
            corrupt: f64::from(corrupt) / 100.0,
            jitter_ms: jitter,
            resend_queue: rs,
            initial_seq: [start, start.wrapping_add(0x8000_0000)],
            restarts,
            partition: partition.map(|(a, len)| (a, a + len)),
            forge,
            ops,
            ..Scenario::default()
        });
    }
}

/// With a shared key (docs/SECURITY.md, "Threat model"), an
/// attacker that replays recorded datagrams, duplicates, reorders,
/// reflects and flips bits, and keeps going through the convergence
/// check, must change neither view: `run` checks both views equal the
/// peers' tables exactly and stay so for `IDLE_CHECK`, and no injected
/// datagram may make a single change of a view (but a copy of one the
/// link delivered before the session was known, which changed nothing
/// then, as the link's own late duplicates may).
fn native_attacked(sc: Scenario) -> Outcome {
    let out = run(&Scenario { auth: true, ..sc });
    assert_eq!(out.tainted_events, [0, 0], "{:?}", out.attack);
    assert!(out.attack.total() > 0);
    out
}

/// Replays of the live sessions only; those of earlier sessions and
/// restarts are in `native_attacked_random_schedules_converge`.
#[test]
fn native_with_keys_converges_exactly_while_replays_keep_coming() {
    let out = native_attacked(Scenario {
        seed: 41,
        loss: 0.1,
        dup: 0.05,
        jitter_ms: 5,
        attack: Some(Attack { every_ms: 50, prior_runs: 0, ..Attack::default() }),
        ..Scenario::default()
    });
    assert!(out.attack.replayed + out.attack.reflected > 50, "{:?}", out.attack);
}

/// The conntrackd dialect authenticates nothing: forged HELLO, ALIVE
/// and data messages, replays of this run and an earlier one,
/// duplicates, reordered bursts and flipped bits, during the changes.
/// The peer's stream must never be refused whole for longer than half
/// the peer timeout plus the link's own gaps, and both views must end equal to
/// the peers' tables exactly, leaving out the tainted keys: those
/// whose last change in a view came from an injected datagram (a
/// planted flow of 10.66.0.0/16, or a real flow set back to a recorded
/// state), until a genuine message changes them again. Nothing sweeps
/// a planted flow in this dialect (no BULK_END), so it stays in the
/// view (docs/SECURITY.md).
fn compat_attacked(sc: Scenario) -> Outcome {
    let out = run(&Scenario { dialect: Dialect::Conntrackd, ..sc });
    assert_not_silenced(&out);
    out
}

/// Random schedules per property: `default`, or `PROPTEST_CASES` for a
/// longer search.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The first of the peer's messages refused half the peer timeout or
/// more into a run of refusals makes the side follow the peer again:
/// only the link's own losses can stretch a silence past that.
fn assert_not_silenced(out: &Outcome) {
    assert_eq!(
        out.unhealed,
        [0, 0],
        "refused after half the peer timeout of refusals (silenced {:?}): {:?}\nA: {:?}\nB: {:?}",
        out.silenced,
        out.attack,
        out.stats[0],
        out.stats[1]
    );
}
