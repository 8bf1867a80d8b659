//! The simulation under the attacker: forged, replayed and modified
//! datagrams in both dialects (docs/SECURITY.md).

use super::*;

fn compat_attack(forge_acks: bool) -> Option<Attack> {
    Some(Attack {
        every_ms: 40,
        until_ms: Some(3000),
        forge: true,
        forge_acks,
        ..Attack::default()
    })
}

#[test]
fn compat_heals_within_peer_timeout_after_forgeries_and_replays() {
    let out = compat_attacked(Scenario {
        seed: 43,
        loss: 0.05,
        jitter_ms: 5,
        attack: compat_attack(false),
        ..Scenario::default()
    });
    let a = out.attack;
    assert!(a.forged_hello >= 5 && a.forged_plants > 5 && a.replayed > 5, "{a:?}");
    // Some injections were taken: the views were compared without them.
    let tainted = out.tainted_events[0] + out.tainted_events[1];
    assert!(tainted > 0 && out.tainted_keys.iter().sum::<usize>() > 0, "{:?}", out.tainted_keys);
}

#[test]
fn compat_heals_after_forged_acks_too() {
    compat_attacked(Scenario {
        seed: 47,
        loss: 0.05,
        jitter_ms: 5,
        attack: compat_attack(true),
        ..Scenario::default()
    });
}

// ----- found by the attacker: each failed before its fix ------------

#[test]
fn native_replayed_or_reflected_hellos_do_not_interrupt_the_live_session() {
    // Replays every 5 ms on average, of this run's datagrams and of an
    // earlier run's (other session ids). A HELLO of a session other
    // than the tracked one used to send the live node back to its
    // handshake, so it was seldom synced and the pair never stayed
    // converged; now it is answered with a probe while the live
    // session goes on. Either source sufficed: an earlier run's HELLO
    // (with reflection off), or the node's own HELLO reflected back to
    // it (with no earlier run recorded).
    native_attacked(Scenario {
        seed: 4043174357,
        resend_queue: 8,
        initial_seq: [0, 0x8000_0000],
        ops: 20,
        attack: Some(Attack { every_ms: 5, ..Attack::default() }),
        ..Scenario::default()
    });
}

#[test]
fn compat_forged_alive_ahead_does_not_cost_the_peer_a_message() {
    // One forged CTL ALIVE at seq 1015 to side 1 while side 0's next
    // seq is 1003: side 1 expects 1016 and NACKs [1003, 1014]; side 0
    // takes the NACK past its next seq as "the peer tracks seqs we
    // never sent". It used to jump to 1015 only, so its next flow
    // message (1015) was dropped as late by side 1, then acknowledged
    // by its ACK [1015, 1018]: the flow never reached side 1. A NACK
    // now moves it past the seq after the range, which the peer took.
    compat_attacked(Scenario {
        seed: 35,
        ops: 10,
        attack: Some(Attack {
            every_ms: 100,
            until_ms: Some(100),
            prior_runs: 0,
            forge: true,
            ..Attack::default()
        }),
        ..Scenario::default()
    });
}

#[test]
fn native_a_late_first_copy_of_a_datagram_is_the_links_duplicate() {
    // A datagram of the peer's live session reached side 0 before its
    // handshake and was refused as of an unknown session; a copy the
    // attacker replayed later was taken in sequence. Accepting it is
    // right (the link duplicates too); the harness used to count it as
    // an injection's change.
    native_attacked(Scenario {
        seed: 12325538264451382983,
        loss: 0.12,
        jitter_ms: 18,
        resend_queue: 64,
        initial_seq: [0, 0x8000_0000],
        ops: 51,
        attack: Some(Attack { every_ms: 39, ..Attack::default() }),
        ..Scenario::default()
    });
}

#[test]
fn native_heavy_loss_with_endless_replays_stays_converged() {
    // Under 23% loss one side lost every keepalive of a peer timeout
    // and shook hands again, views intact; the harness took that for a
    // divergence. The idle check now starts over then.
    native_attacked(Scenario {
        seed: 12395705416339070401,
        loss: 0.23,
        dup: 0.03,
        jitter_ms: 12,
        ops: 197,
        resend_queue: 8,
        initial_seq: [2569035833, 421552185],
        attack: Some(Attack { every_ms: 38, until_ms: None, prior_runs: 1, ..Attack::default() }),
        ..Scenario::default()
    });
}

#[test]
fn compat_replayed_hello_heals_within_peer_timeout() {
    // Replays of an earlier run (HELLOs among them), duplicates,
    // reordered bursts and flipped bits. A HELLO re-bases tracking;
    // healing waits half the peer timeout of refusals, then both
    // tables go again through 25% loss and an 8-entry resend queue.
    let out = compat_attacked(Scenario {
        seed: 9015392395150051533,
        loss: 0.25,
        jitter_ms: 11,
        resend_queue: 8,
        initial_seq: [2954601576, 2954601576u32.wrapping_add(0x8000_0000)],
        ops: 107,
        attack: Some(Attack { every_ms: 9, until_ms: Some(633), ..Attack::default() }),
        ..Scenario::default()
    });
    assert!(out.stats[0].rx_rebases + out.stats[1].rx_rebases >= 1, "{:?}", out.stats);
}

#[test]
fn compat_forged_acks_release_nothing_for_good() {
    // A forged NACK ahead of side 1's next seq made it jump to the seq
    // after the range, which a planted pair had taken at side 0: its
    // next message (a destroy) was dropped there as old, then
    // acknowledged. A jump now leaves a margin. A forged ACK released
    // an update side 0 never got; its NACK of that seq now brings the
    // table again (nacks_of_acked; the unit test
    // `compat_a_nack_of_acknowledged_messages_*` pins that rule).
    compat_attacked(Scenario {
        seed: 2043999785363298305,
        loss: 0.21,
        jitter_ms: 3,
        resend_queue: 4096,
        initial_seq: [2864465420, 2864465420u32.wrapping_add(0x8000_0000)],
        ops: 191,
        attack: Some(Attack {
            every_ms: 58,
            until_ms: Some(1364),
            forge: true,
            forge_acks: true,
            ..Attack::default()
        }),
        ..Scenario::default()
    });
}

#[test]
fn compat_a_forged_message_displaces_at_most_what_it_overlaps() {
    // What stays open in this dialect (docs/SECURITY.md): forged
    // messages took seqs side 1 was about to use at side 0, so the
    // genuine ones were dropped there as already received, a flow's
    // destroy and another's creation among them. Both sides still
    // follow each other, and the cost is bounded by the forgeries.
    let out = run(&Scenario {
        exact: false,
        dialect: Dialect::Conntrackd,
        seed: 10222905921817624541,
        loss: 0.26,
        dup: 0.07,
        jitter_ms: 9,
        resend_queue: 4096,
        initial_seq: [59297805, 2206781453],
        ops: 127,
        attack: Some(Attack {
            every_ms: 133,
            until_ms: Some(1267),
            forge: true,
            ..Attack::default()
        }),
        ..Scenario::default()
    });
    assert_forgeries_cost_little(&out);
    assert!(out.mismatches.iter().sum::<usize>() > 0, "{:?}", out.mismatches);
}

/// Forged or modified datagrams in the conntrackd dialect: the stream
/// is never refused for longer than half the peer timeout (the link's
/// gaps aside), both sides end
/// synced, and each such datagram costs at most one genuine change.
fn assert_forgeries_cost_little(out: &Outcome) {
    assert_not_silenced(out);
    assert_eq!(out.synced, [true, true], "{:?}", out.attack);
    let a = out.attack;
    let forged = a.forged_hello + a.forged_alive + 2 * a.forged_plants + a.forged_acks + a.flipped;
    let off = out.mismatches.iter().sum::<usize>() as u64;
    assert!(
        off <= forged,
        "{off} keys off ({:?}) after {forged} forged messages: {a:?}",
        out.mismatches
    );
}

/// A random lossy link and change schedule for the attacked properties.
#[derive(Clone, Debug)]
struct Schedule {
    seed: u64,
    loss: u32,
    dup: u32,
    jitter: u64,
    rs: usize,
    start: u32,
    every: u64,
    ops: usize,
}

impl Schedule {
    fn scenario(&self, attack: Attack) -> Scenario {
        Scenario {
            seed: self.seed,
            loss: f64::from(self.loss) / 100.0,
            dup: f64::from(self.dup) / 100.0,
            jitter_ms: self.jitter,
            resend_queue: self.rs,
            initial_seq: [self.start, self.start.wrapping_add(0x8000_0000)],
            ops: self.ops,
            attack: Some(Attack { every_ms: self.every, ..attack }),
            ..Scenario::default()
        }
    }
}

proptest::prop_compose! {
    fn schedule()(
        seed in proptest::num::u64::ANY,
        loss in 0u32..=30,
        dup in 0u32..=10,
        jitter in 0u64..20,
        rs in proptest::sample::select(vec![8usize, 64, 4096]),
        start in proptest::num::u32::ANY,
        every in 5u64..200,
        ops in 20usize..300,
    ) -> Schedule {
        Schedule { seed, loss, dup, jitter, rs, start, every, ops }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: cases(64), ..Default::default() })]
    #[test]
    fn native_attacked_random_schedules_converge(
        s in schedule(),
        restarts in proptest::collection::vec((0u64..3000, 0usize..2), 0..3),
    ) {
        native_attacked(Scenario { restarts, ..s.scenario(Attack::default()) });
    }

    #[test]
    fn compat_replayed_random_schedules_converge_exactly(s in schedule(), until in 0u64..4000) {
        compat_attacked(s.scenario(Attack { until_ms: Some(until), flip: false, ..Attack::default() }));
    }

    #[test]
    fn compat_forged_random_schedules_resume_within_peer_timeout(
        s in schedule(),
        until in 0u64..4000,
        forge in proptest::bool::ANY,
        forge_acks in proptest::bool::ANY,
    ) {
        let attack = Attack { until_ms: Some(until), forge, forge_acks, ..Attack::default() };
        let out = run(&Scenario {
            exact: false,
            dialect: Dialect::Conntrackd,
            ..s.scenario(attack)
        });
        assert_forgeries_cost_little(&out);
    }
}
