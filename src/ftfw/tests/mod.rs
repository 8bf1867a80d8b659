//! Table-driven tests of the protocol rules. Each case cites the section of
//! docs/PROTOCOL.md that states the rule.
//!
//! This file holds the helpers every case uses and the rules of
//! sequencing, acknowledgment, bulk, handshake and liveness; the child
//! modules hold replays and authentication (`security`), anti-entropy,
//! and the conntrackd dialect (`compat`).

mod anti_entropy;
mod compat;
mod security;

use std::time::{Duration, Instant};

use super::*;
use crate::flow::{Flow, proto};
use crate::wire::native::{self, NativeCodec};

const PEER: u32 = 77;
const US: u32 = 1;

fn flow(port: u16) -> Flow {
    Flow::new_v4(proto::TCP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), port, 80)
}

fn cfg() -> FtfwConfig {
    FtfwConfig { resend_queue: 16, ack_window: 4, max_seq_jump: 16, ..FtfwConfig::default() }
}

fn datagram(seq: u32, msgs: &[Message]) -> Vec<u8> {
    datagram_from(PEER, 0, seq, msgs)
}

fn datagram_from(session: u32, flags: u8, seq: u32, msgs: &[Message]) -> Vec<u8> {
    let refs: Vec<_> = msgs.iter().map(Message::as_ref).collect();
    let mut buf = vec![0u8; 4096];
    let n = native::encode(&DatagramHeader { flags, session, seq }, &refs, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// Everything the core transmits now, decoded: (header, messages).
fn sent(core: &mut Ftfw, now: Instant) -> Vec<(DatagramHeader, Vec<Message>)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1472];
    while let Some(n) = core.poll_transmit(now, &mut buf) {
        let mut msgs = Vec::new();
        let hdr = native::decode(&buf[..n], &mut msgs).unwrap();
        out.push((hdr, msgs.into_iter().map(|r| r.msg.unwrap()).collect()));
    }
    out
}

fn messages(core: &mut Ftfw, now: Instant) -> Vec<Message> {
    sent(core, now).into_iter().flat_map(|(_, m)| m).collect()
}

fn events(core: &mut Ftfw) -> Vec<PeerEvent> {
    std::iter::from_fn(|| core.poll_event()).collect()
}

/// A core that completed the handshake with a peer whose next seq is
/// `peer_seq`; its own next seq is 101 (100 went to RESYNC_REQUEST).
pub(crate) fn established(peer_seq: u32, now: Instant) -> Ftfw {
    established_with(cfg(), peer_seq, now)
}

/// As [`established`] with another configuration.
fn established_with(cfg: FtfwConfig, peer_seq: u32, now: Instant) -> Ftfw {
    let mut core = Ftfw::new(cfg, US, 100, now);
    let hello = messages(&mut core, now);
    assert_eq!(hello, vec![Message::Hello { session: US, round: 1 }]);
    core.handle_datagram(
        now,
        &datagram(
            peer_seq,
            &[
                Message::Hello { session: PEER, round: 9 },
                Message::HelloBack { session: US, round: 1 },
            ],
        ),
    );
    assert_eq!(core.peer_state(), PeerState::Established);
    let out = messages(&mut core, now);
    assert!(out.contains(&Message::HelloBack { session: PEER, round: 9 }));
    assert!(out.contains(&Message::ResyncRequest));
    assert_eq!(events(&mut core), vec![PeerEvent::PeerUp]);
    // The peer acknowledges the RESYNC_REQUEST (seq 100).
    core.handle_datagram(now, &datagram(peer_seq, &[Message::Ack { from: 100, to: 100 }]));
    core
}

fn upsert(port: u16) -> Message {
    Message::FlowUpdate(flow(port))
}

#[test]
fn receiver_rules() {
    // docs/PROTOCOL.md, "Receiving": (name, datagrams as (seq, n flows),
    // accepted flow ports, ACKs, NACKs, late drops, far-ahead drops).
    type Case = (
        &'static str,
        &'static [(u32, u16)],
        &'static [u16],
        &'static [(u32, u32)],
        &'static [(u32, u32)],
        u64,
        u64,
    );
    let p = 1000u32;
    let cases: &[Case] = &[
        ("in order", &[(1000, 1), (1001, 1)], &[1000, 1001], &[], &[], 0, 0),
        (
            "gap: ack run, nack hole, accept",
            &[(1000, 2), (1005, 1)],
            &[1000, 1001, 1005],
            &[(1000, 1001)],
            &[(1002, 1004)],
            0,
            0,
        ),
        ("gap at start: nack only", &[(1003, 1)], &[1003], &[], &[(1000, 1002)], 0, 0),
        (
            "late and duplicate dropped",
            &[(1000, 2), (1001, 1), (1000, 1)],
            &[1000, 1001],
            &[],
            &[],
            2,
            0,
        ),
        ("far ahead ignored, tracking kept", &[(1000 + 17, 1), (1000, 1)], &[1000], &[], &[], 0, 1),
        (
            "ahead by exactly max_seq_jump accepted",
            &[(1000 + 16, 1)],
            &[1016],
            &[],
            &[(1000, 1015)],
            0,
            0,
        ),
        (
            "partly late datagram: new tail accepted",
            &[(1000, 2), (1001, 3)],
            &[1000, 1001, 1002, 1003],
            &[],
            &[],
            1,
            0,
        ),
    ];
    for (name, input, want_ports, want_acks, want_nacks, late, far) in cases {
        let now = Instant::now();
        let mut core = established(p, now);
        let mut port_seq = 0u16;
        for &(seq, n) in input.iter() {
            // Ports encode the seq so that accepted messages are visible.
            let msgs: Vec<_> = (0..n).map(|i| upsert((seq + u32::from(i)) as u16)).collect();
            core.handle_datagram(now, &datagram(seq, &msgs));
            port_seq += n;
        }
        let _ = port_seq;
        let got: Vec<u16> = events(&mut core)
            .into_iter()
            .filter_map(|e| match e {
                PeerEvent::Upsert { flow, .. } => Some(flow.l4[0]),
                _ => None,
            })
            .collect();
        assert_eq!(&got, want_ports, "{name}");
        let out = messages(&mut core, now);
        let acks: Vec<_> = out
            .iter()
            .filter_map(|m| match m {
                Message::Ack { from, to } => Some((*from, *to)),
                _ => None,
            })
            .collect();
        let nacks: Vec<_> = out
            .iter()
            .filter_map(|m| match m {
                Message::Nack { from, to } => Some((*from, *to)),
                _ => None,
            })
            .collect();
        assert_eq!(&nacks, want_nacks, "{name}");
        // ACKs of runs closed by a gap are sent at once; others wait for
        // the window or the keepalive.
        for a in want_acks.iter() {
            assert!(acks.contains(a), "{name}: {acks:?}");
        }
        assert_eq!(core.stats().drop_late, *late, "{name}");
        assert_eq!(core.stats().drop_far_ahead, *far, "{name}");
    }
}

#[test]
fn ack_window_and_keepalive_ack() {
    // docs/PROTOCOL.md, "Acknowledgments".
    let now = Instant::now();
    let mut core = established(50, now);
    core.handle_datagram(now, &datagram(50, &[upsert(1), upsert(2), upsert(3)]));
    assert!(messages(&mut core, now).is_empty(), "below the window: quiet");
    core.handle_datagram(now, &datagram(53, &[upsert(4)]));
    assert_eq!(messages(&mut core, now), vec![Message::Ack { from: 50, to: 53 }]);
    // Idle: the keepalive carries the latest ACK again (repairs a lost one).
    let later = now + Duration::from_secs(1);
    assert_eq!(messages(&mut core, later), vec![Message::Ack { from: 50, to: 53 }]);
    assert_eq!(core.poll_timeout(), Some(later + Duration::from_secs(1)));
    assert!(messages(&mut core, later).is_empty(), "no ping-pong");
}

#[test]
fn lost_tail_is_seen_from_the_keepalive_header() {
    // docs/PROTOCOL.md, "Receiving": a datagram without sequenced messages
    // carries the sender's next seq.
    let now = Instant::now();
    let mut core = established(50, now);
    core.handle_datagram(now, &datagram(50, &[upsert(1)]));
    core.handle_datagram(now, &datagram(53, &[Message::Alive]));
    let out = messages(&mut core, now);
    assert!(out.contains(&Message::Nack { from: 51, to: 52 }), "{out:?}");
    assert!(out.contains(&Message::Ack { from: 50, to: 50 }), "{out:?}");
}

#[test]
fn sender_rules() {
    // docs/PROTOCOL.md, "Sending" and "Loss": (name, peer's answer,
    // ports sent again, resent count).
    type Case = (&'static str, Vec<Message>, Vec<u16>);
    let cases: Vec<Case> = vec![
        ("ack all", vec![Message::Ack { from: 101, to: 104 }], vec![]),
        ("nack middle", vec![Message::Nack { from: 102, to: 103 }], vec![2, 3]),
        ("ack tail: before from is lost", vec![Message::Ack { from: 103, to: 104 }], vec![1, 2]),
        ("empty ack: all before from lost", vec![Message::Ack { from: 103, to: 102 }], vec![1, 2]),
        (
            "nack of seqs no longer held is ignored",
            vec![Message::Ack { from: 101, to: 104 }, Message::Nack { from: 101, to: 104 }],
            vec![],
        ),
        (
            "nack twice resends once",
            vec![Message::Nack { from: 101, to: 101 }, Message::Nack { from: 101, to: 101 }],
            vec![1],
        ),
        ("inverted range ignored", vec![Message::Nack { from: 104, to: 101 }], vec![]),
    ];
    for (name, answer, want) in cases {
        let now = Instant::now();
        let mut core = established(50, now);
        for port in 1..=4 {
            core.queue(LocalChange::Upsert(flow(port)));
        }
        let out = sent(&mut core, now);
        assert_eq!(out.len(), 1, "{name}");
        assert_eq!(out[0].0.seq, 101, "{name}");
        core.handle_datagram(now, &datagram(50, &answer));
        let again: Vec<u16> = messages(&mut core, now)
            .into_iter()
            .filter_map(|m| match m {
                Message::FlowUpdate(f) => Some(f.l4[0]),
                _ => None,
            })
            .collect();
        assert_eq!(again, want, "{name}");
    }
}

#[test]
fn superseded_messages_are_not_resent() {
    // docs/PROTOCOL.md, "Resend queue".
    let now = Instant::now();
    let mut core = established(50, now);
    core.queue(LocalChange::Upsert(flow(1)));
    sent(&mut core, now); // seq 101
    let mut newer = flow(1);
    newer.mark = 5;
    core.queue(LocalChange::Upsert(newer.clone()));
    sent(&mut core, now); // seq 102 supersedes 101
    core.handle_datagram(now, &datagram(50, &[Message::Nack { from: 101, to: 102 }]));
    assert_eq!(messages(&mut core, now), vec![Message::FlowUpdate(newer)]);
}

#[test]
fn full_resend_queue_applies_backpressure() {
    // docs/PROTOCOL.md, "Resend queue": never drop the oldest.
    let now = Instant::now();
    let mut core = established(50, now);
    for port in 1..=40 {
        core.queue(LocalChange::New(flow(port)));
    }
    let first = messages(&mut core, now);
    // One slot of 16 went to RESYNC_REQUEST and was acked; 16 more fit.
    assert_eq!(first.len(), 16);
    assert!(core.stats().backpressure > 0);
    assert!(messages(&mut core, now).is_empty());
    core.handle_datagram(now, &datagram(50, &[Message::Ack { from: 101, to: 108 }]));
    assert_eq!(messages(&mut core, now).len(), 8);
}

#[test]
fn ack_ahead_of_our_seq_jumps_and_resends() {
    // docs/PROTOCOL.md, "Loss": the peer tracks seqs we never sent.
    let now = Instant::now();
    let mut core = established(50, now);
    core.queue(LocalChange::Upsert(flow(1)));
    sent(&mut core, now); // seq 101
    core.handle_datagram(now, &datagram(50, &[Message::Nack { from: 101, to: 109 }]));
    let out = sent(&mut core, now);
    // The NACK shows the peer took 110, the seq after its range; the jump
    // leaves 64 more unused, in case it took further forged messages.
    assert_eq!(out[0].0.seq, 111 + 64);
    assert_eq!(out[0].1, vec![Message::FlowUpdate(flow(1))]);
    assert_eq!(core.stats().seq_jumps, 1);
    // Far beyond max_seq_jump: ignored.
    core.handle_datagram(now, &datagram(50, &[Message::Ack { from: 5000, to: 6000 }]));
    assert_eq!(core.stats().bad_acks, 1);
}

#[test]
fn bulk_end_waits_for_every_ack() {
    // docs/PROTOCOL.md, "Bulk": BULK_END is a barrier.
    let now = Instant::now();
    let mut core = established(50, now);
    let flows = [flow(1), flow(2)];
    core.bulk_send(flows.iter());
    core.queue(LocalChange::Upsert(flow(3)));
    let out = messages(&mut core, now);
    assert_eq!(out, vec![upsert(1), upsert(2)], "stops at the barrier");
    core.handle_datagram(now, &datagram(50, &[Message::Ack { from: 101, to: 102 }]));
    assert_eq!(messages(&mut core, now), vec![Message::BulkEnd { bulk_start: 101 }, upsert(3)]);
}

#[test]
fn bulk_end_from_the_peer_gives_the_sweep_floor() {
    // docs/PROTOCOL.md, "Bulk": stamps are unwrapped seqs.
    let now = Instant::now();
    let start = u32::MAX - 1;
    let mut core = established(start, now);
    core.handle_datagram(now, &datagram(start, &[upsert(1), upsert(2), upsert(3)]));
    core.handle_datagram(
        now,
        &datagram(start.wrapping_add(3), &[Message::BulkEnd { bulk_start: start.wrapping_add(1) }]),
    );
    let ev = events(&mut core);
    let stamps: Vec<u64> = ev
        .iter()
        .filter_map(|e| match e {
            PeerEvent::Upsert { stamp, .. } => Some(*stamp),
            _ => None,
        })
        .collect();
    assert_eq!(stamps[1], stamps[0] + 1);
    assert_eq!(stamps[2], stamps[0] + 2, "monotonic across the wrap");
    assert!(ev.contains(&PeerEvent::BulkEnd { floor: stamps[1], complete: true }));
}

#[test]
fn handshake_and_peer_restart() {
    // docs/PROTOCOL.md, "Handshake".
    let now = Instant::now();
    let mut core = established(50, now);
    core.handle_datagram(now, &datagram(50, &[upsert(1)]));
    let old_stamp = match events(&mut core).as_slice() {
        [PeerEvent::Upsert { stamp, .. }] => *stamp,
        e => panic!("{e:?}"),
    };
    core.queue(LocalChange::Upsert(flow(9)));
    sent(&mut core, now);
    // The peer restarts: new session, new seq base.
    core.handle_datagram(
        now,
        &datagram_from(88, 0, 7, &[Message::Hello { session: 88, round: 1 }]),
    );
    // A HELLO alone proves nothing (it may be a replay): the live session
    // goes on while a HELLO of a new round probes the new one.
    assert_eq!(core.peer_state(), PeerState::Established);
    assert_eq!(events(&mut core), [PeerEvent::HelloProbe { session: 88 }]);
    core.queue(LocalChange::Upsert(flow(10)));
    let out = messages(&mut core, now);
    assert!(out.contains(&Message::HelloBack { session: 88, round: 1 }));
    assert!(out.contains(&Message::Hello { session: US, round: 2 }));
    assert!(out.iter().any(|m| matches!(m, Message::FlowUpdate(_))), "data goes on: {out:?}");
    // Data from the new session is tracked from its base, stamps above.
    core.handle_datagram(
        now,
        &datagram_from(88, 0, 7, &[Message::HelloBack { session: US, round: 2 }, upsert(2)]),
    );
    assert_eq!(core.peer_state(), PeerState::Established);
    match events(&mut core).as_slice() {
        [PeerEvent::PeerRestarted, PeerEvent::Upsert { stamp, .. }] => {
            assert!(*stamp > old_stamp + (1 << 31))
        }
        e => panic!("{e:?}"),
    }
    // A resync request goes to the new incarnation.
    assert!(messages(&mut core, now).contains(&Message::ResyncRequest));
    // The old session is not listened to any more.
    core.handle_datagram(now, &datagram(52, &[upsert(3)]));
    assert!(events(&mut core).is_empty());
    // The restarted peer's lone HELLO, then the old session's data.
    assert_eq!(core.stats().drop_unknown_session, 2);
}

#[test]
fn resync_request_from_the_peer_asks_for_a_bulk() {
    let now = Instant::now();
    let mut core = established(50, now);
    core.handle_datagram(now, &datagram(50, &[Message::ResyncRequest]));
    assert_eq!(events(&mut core), vec![PeerEvent::BulkRequested]);
}

#[test]
fn liveness() {
    // docs/PROTOCOL.md, "Keepalive".
    let now = Instant::now();
    let mut core = established(50, now);
    let t = now + Duration::from_secs(4);
    assert!(core.poll_timeout().is_some_and(|d| d <= t));
    core.handle_timeout(now + Duration::from_secs(3));
    assert!(events(&mut core).is_empty());
    core.handle_timeout(t);
    assert_eq!(events(&mut core), vec![PeerEvent::PeerDown]);
    assert_eq!(core.peer_state(), PeerState::Silent);
    core.handle_datagram(t, &datagram(50, &[Message::Alive]));
    assert_eq!(events(&mut core), vec![PeerEvent::PeerUp]);
}

#[test]
fn bad_datagrams_are_counted_not_fatal() {
    let now = Instant::now();
    let mut core = established(50, now);
    let mut d = datagram(50, &[upsert(1)]);
    d[30] ^= 0x40;
    core.handle_datagram(now, &d);
    core.handle_datagram(now, b"garbage");
    core.handle_datagram(now, &datagram(50, &[upsert(2)]));
    assert_eq!(core.stats().drop_bad_crc, 1);
    assert_eq!(core.stats().drop_truncated, 1);
    assert_eq!(events(&mut core).len(), 1);
}

#[test]
fn is_synced_needs_everything_acked_and_the_bulk() {
    let now = Instant::now();
    let mut core = established(50, now);
    assert!(!core.is_synced(), "awaiting the peer's bulk");
    core.handle_datagram(now, &datagram(50, &[Message::BulkEnd { bulk_start: 50 }]));
    assert!(core.is_synced());
    core.queue(LocalChange::Destroy(flow(1).key()));
    assert!(!core.is_synced());
    sent(&mut core, now);
    assert!(!core.is_synced());
    core.handle_datagram(now, &datagram(51, &[Message::Ack { from: 101, to: 101 }]));
    assert!(core.is_synced());
}

#[test]
fn expectations_travel_after_their_flows_and_in_bulks() {
    // docs/PROTOCOL.md, "Expectation messages": sequenced like flows,
    // coalesced per expected tuple, sent in a bulk before its BULK_END.
    let now = Instant::now();
    let mut core = established(5000, now);
    let exp = crate::expect::tests::ftp_pasv();
    core.queue(LocalChange::Upsert(flow(1)));
    core.queue(LocalChange::ExpUpsert(Box::new(exp.clone())));
    let mut older = exp.clone();
    older.timeout = 1;
    core.queue(LocalChange::ExpUpsert(Box::new(older)));
    let out = messages(&mut core, now);
    let data: Vec<_> = out.iter().filter(|m| m.is_sequenced()).cloned().collect();
    assert_eq!(data.len(), 2, "{out:?}");
    assert_eq!(data[0], upsert(1));
    assert!(matches!(&data[1], Message::ExpNew(e) if e.timeout == 1));
    assert_eq!(core.stats().exp_msgs_sent, 1);
    core.bulk_send_with_expectations([&flow(2)], [&exp]);
    let out = messages(&mut core, now);
    let kinds: Vec<_> = out
        .iter()
        .filter(|m| m.is_sequenced())
        .map(|m| match m {
            Message::FlowUpdate(_) => "flow",
            Message::ExpNew(_) => "exp",
            Message::BulkEnd { .. } => "end",
            _ => "other",
        })
        .collect();
    // The BULK_END waits for the bulk's ACK: flow then expectation first.
    assert_eq!(kinds, ["flow", "exp"], "{out:?}");
    // Receiving: both kinds become events with stamps.
    core.handle_datagram(
        now,
        &datagram(
            5000,
            &[Message::ExpNew(Box::new(exp.clone())), Message::ExpDestroy(Box::new(exp.clone()))],
        ),
    );
    let ev = events(&mut core);
    assert!(matches!(&ev[0], PeerEvent::ExpUpsert { exp: e, .. } if **e == exp), "{ev:?}");
    assert_eq!(ev[1], PeerEvent::ExpDestroy { key: exp.key() });
    assert_eq!(core.stats().exp_msgs_accepted, 2);
}

#[test]
fn a_requested_ack_and_the_acknowledged_floor() {
    // docs/PROTOCOL.md §1, ACK_REQUEST; docs/active-active.md, "Deferred
    // packets": the sender asks for a prompt ACK and learns when every
    // message up to its change was acknowledged.
    let now = Instant::now();
    let mut core = established(50, now);
    assert_eq!(core.acked_before(), Seq(101));
    core.queue(LocalChange::New(flow(1)));
    assert!(!core.tx_is_empty());
    let out = sent(&mut core, now);
    assert_eq!(out[0].0.flags & native::flags::ACK_REQUEST, 0, "not asked for");
    core.queue(LocalChange::New(flow(2)));
    core.request_ack();
    let out = sent(&mut core, now);
    assert_eq!((out.len(), out[0].0.seq), (1, 102));
    assert_ne!(out[0].0.flags & native::flags::ACK_REQUEST, 0);
    assert!(core.tx_is_empty());
    assert_eq!(core.next_seq(), 103);
    // Only sequenced data carries the request: a later ACK does not.
    core.handle_datagram(now, &datagram(50, &[Message::Ack { from: 101, to: 101 }]));
    assert_eq!(core.acked_before(), Seq(102));
    core.handle_datagram(now, &datagram(50, &[Message::Ack { from: 101, to: 102 }]));
    assert_eq!(core.acked_before(), Seq(103));
    // A loss is counted, so a deferred packet waits for the resend.
    let resent = core.stats().resent;
    core.queue(LocalChange::New(flow(3)));
    sent(&mut core, now);
    core.handle_datagram(now, &datagram(50, &[Message::Nack { from: 103, to: 103 }]));
    assert_eq!(core.stats().resent, resent + 1);
}
