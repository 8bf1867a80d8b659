//! Table-driven tests of the protocol rules. Each case cites the section of
//! docs/PROTOCOL.md that states the rule.

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
fn established(peer_seq: u32, now: Instant) -> Ftfw {
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
    assert!(ev.contains(&PeerEvent::BulkEnd { floor: stamps[1] }));
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

/// Every datagram a peer session `session` sent in an exchange with us:
/// the handshake, then flow data from `seq`.
fn recording(session: u32, us: u32, seq: u32) -> Vec<Vec<u8>> {
    vec![
        datagram_from(session, 0, seq, &[Message::Hello { session, round: 1 }]),
        datagram_from(
            session,
            0,
            seq,
            &[Message::Hello { session, round: 1 }, Message::HelloBack { session: us, round: 1 }],
        ),
        datagram_from(session, 0, seq, &[upsert(1), upsert(2)]),
        datagram_from(session, 0, seq + 2, &[Message::FlowDestroy(flow(3).key())]),
        datagram_from(session, 0, seq + 3, &[Message::BulkEnd { bulk_start: seq }]),
    ]
}

#[test]
fn replayed_datagrams_of_an_old_session_are_not_applied_after_our_restart() {
    // docs/PROTOCOL.md, "Handshake": a session is tracked only once its
    // HELLO_BACK echoes our current session and round.
    let now = Instant::now();
    let old = recording(PEER, US, 50);
    // We restart: a new random session. The attacker replays everything.
    let mut core = Ftfw::new(cfg(), US + 1000, 500, now);
    let mut refused = Vec::new();
    for _ in 0..3 {
        for d in &old {
            refused.push(core.handle_datagram(now, d));
        }
    }
    // The stale HELLO_BACKs are refused as replays; data of a session we
    // do not track is dropped message by message, not refused.
    assert_eq!(refused.iter().filter(|r| **r == Some(Refusal::Replay)).count(), 3);
    assert_eq!(refused.iter().filter(|r| r.is_some()).count(), 3, "{refused:?}");
    assert!(events(&mut core).is_empty(), "nothing applied, no PeerUp");
    assert_eq!(core.peer_state(), PeerState::HelloSent);
    assert!(!messages(&mut core, now).iter().any(Message::is_sequenced), "no data sent");
    assert_eq!(core.stats().flow_msgs_accepted, 0);
    assert_eq!(core.stats().drop_replay, 3, "HELLO_BACKs echoing our old session");
    assert_eq!(core.stats().drop_unknown_session, 15);
    // The real peer then completes the handshake, in a round the replays
    // could not know.
    let hello = Message::Hello { session: PEER + 1, round: 1 };
    core.handle_datagram(now, &datagram_from(PEER + 1, 0, 9, &[hello]));
    let out = messages(&mut core, now);
    assert!(out.contains(&Message::Hello { session: US + 1000, round: 2 }), "{out:?}");
    assert!(out.contains(&Message::HelloBack { session: PEER + 1, round: 1 }));
    let back = Message::HelloBack { session: US + 1000, round: 2 };
    core.handle_datagram(now, &datagram_from(PEER + 1, 0, 9, &[back, upsert(7)]));
    assert_eq!(core.peer_state(), PeerState::Established);
    match events(&mut core).as_slice() {
        [PeerEvent::PeerUp, PeerEvent::Upsert { flow: f, .. }] => assert_eq!(f.l4[0], 7),
        e => panic!("{e:?}"),
    }
}

#[test]
fn replayed_hello_of_an_old_peer_session_does_not_reset_tracking() {
    let now = Instant::now();
    let old = recording(PEER + 5, US, 1000);
    let mut core = established(50, now);
    core.handle_datagram(now, &datagram(50, &[upsert(1)]));
    assert_eq!(events(&mut core).len(), 1);
    for d in &old {
        core.handle_datagram(now, d);
    }
    // A probe is the whole cost: the live session is neither reset nor
    // paused.
    let probes = events(&mut core);
    assert!(probes.iter().all(|e| matches!(e, PeerEvent::HelloProbe { .. })), "{probes:?}");
    assert_eq!(core.stats().peer_restarts, 0);
    assert_eq!(core.peer_state(), PeerState::Established);
    core.queue(LocalChange::Upsert(flow(10)));
    let out = messages(&mut core, now);
    assert!(out.iter().any(|m| matches!(m, Message::FlowUpdate(_))), "data goes on: {out:?}");
    assert!(out.contains(&Message::Hello { session: US, round: 2 }));
    // The live peer goes on at seq 51 and answers our new round.
    core.handle_datagram(
        now,
        &datagram(51, &[Message::HelloBack { session: US, round: 2 }, upsert(2)]),
    );
    assert_eq!(core.peer_state(), PeerState::Established);
    match events(&mut core).as_slice() {
        [PeerEvent::Upsert { flow: f, .. }] => assert_eq!(f.l4[0], 2),
        e => panic!("{e:?}"),
    }
    assert!(!messages(&mut core, now).contains(&Message::ResyncRequest), "stream unbroken");
    assert_eq!(core.stats().drop_late, 0);
}

/// Four rounds of everything each core has to send, delivered to the
/// other: enough for a handshake and the data queued before it.
fn exchange(a: &mut Ftfw, b: &mut Ftfw, now: Instant) {
    let mut buf = [0u8; 1472];
    for _ in 0..4 {
        while let Some(n) = a.poll_transmit(now, &mut buf) {
            b.handle_datagram(now, &buf[..n]);
        }
        while let Some(n) = b.poll_transmit(now, &mut buf) {
            a.handle_datagram(now, &buf[..n]);
        }
    }
}

#[test]
fn authenticated_cores_drop_forgeries_by_reason_and_go_on() {
    use crate::wire::native::{AuthKey, NativeCodec};
    let now = Instant::now();
    let key = |id: u32, b: u8| AuthKey::new(id, vec![b; native::MIN_KEY_LEN]);
    let keyed = |k: Vec<AuthKey>| FtfwConfig { auth_keys: k, ..cfg() };
    let mut a = Ftfw::new(keyed(vec![key(1, 0x11)]), 1, 10, now);
    let mut b = Ftfw::new(keyed(vec![key(1, 0x11)]), 2, 20, now);
    let pump = |a: &mut Ftfw, b: &mut Ftfw| exchange(a, b, now);
    pump(&mut a, &mut b);
    assert_eq!(a.peer_state(), PeerState::Established);
    assert_eq!(b.peer_state(), PeerState::Established);
    // Forgeries in b's session: wrong secret, unknown key id, no MAC.
    let forge = |mut codec: NativeCodec, seq: u32| {
        let f = flow(9);
        let mut buf = [0u8; 256];
        let at = native::HEADER_LEN
            + native::emit_message(&MessageRef::FlowUpdate(&f), &mut buf[native::HEADER_LEN..])
                .unwrap();
        let hdr = DatagramHeader { flags: 0, session: 2, seq };
        let n = codec.finish(&hdr, 1, at, &mut buf).unwrap();
        buf[..n].to_vec()
    };
    let seq = b.stats().msgs_sent as u32 + 20;
    // Each refusal is returned (the daemon logs it) and counted.
    let refused = [
        a.handle_datagram(now, &forge(NativeCodec::with_keys(vec![key(1, 0x22)]), seq)),
        a.handle_datagram(now, &forge(NativeCodec::with_keys(vec![key(2, 0x11)]), seq)),
        a.handle_datagram(now, &forge(NativeCodec::insecure(), seq)),
        a.handle_datagram(now, b"not a datagram at all"),
    ];
    assert_eq!(
        refused,
        [
            Some(Refusal::BadMac),
            Some(Refusal::UnknownKey),
            Some(Refusal::AuthMismatch),
            Some(Refusal::Malformed)
        ]
    );
    let s = a.stats();
    assert_eq!((s.drop_bad_mac, s.drop_unknown_key, s.drop_auth), (1, 1, 1));
    assert!(!events(&mut a).iter().any(|e| matches!(e, PeerEvent::Upsert { .. })));
    // Sync goes on.
    b.queue(LocalChange::Upsert(flow(4)));
    pump(&mut a, &mut b);
    assert!(
        events(&mut a)
            .iter()
            .any(|e| matches!(e, PeerEvent::Upsert { flow: f, .. } if f.l4[0] == 4))
    );
}

#[test]
fn encrypting_cores_sync_rotate_and_refuse_clear_datagrams() {
    use crate::wire::native::AuthKey;
    let now = Instant::now();
    let key = |id: u32, b: u8| AuthKey::new(id, vec![b; native::MIN_KEY_LEN]);
    let sealed = |k: Vec<AuthKey>| FtfwConfig { auth_keys: k, encrypt: true, ..cfg() };
    let mut a = Ftfw::new(sealed(vec![key(1, 0x11)]), 1, 10, now);
    let mut b = Ftfw::new(sealed(vec![key(1, 0x11)]), 2, 20, now);
    let mut clear = Ftfw::new(FtfwConfig { auth_keys: vec![key(1, 0x11)], ..cfg() }, 2, 20, now);
    let pump = |a: &mut Ftfw, b: &mut Ftfw| exchange(a, b, now);
    // A peer that only signs gets nowhere, and is counted.
    pump(&mut a, &mut clear);
    assert_ne!(a.peer_state(), PeerState::Established);
    assert!(a.stats().drop_auth > 0 && clear.stats().drop_auth > 0);
    let mut a = Ftfw::new(sealed(vec![key(1, 0x11)]), 1, 10, now);
    pump(&mut a, &mut b);
    assert_eq!(a.peer_state(), PeerState::Established);
    b.queue(LocalChange::Upsert(flow(4)));
    pump(&mut a, &mut b);
    let got = |a: &mut Ftfw, port: u16| {
        events(a).iter().any(|e| matches!(e, PeerEvent::Upsert { flow: f, .. } if f.l4[0] == port))
    };
    assert!(got(&mut a, 4));
    // docs/SECURITY.md, "Rotating keys", with encryption on.
    for keys in [vec![key(1, 0x11), key(2, 0x22)], vec![key(2, 0x22), key(1, 0x11)]] {
        a.set_auth_keys(keys.clone());
        b.queue(LocalChange::Upsert(flow(5)));
        pump(&mut a, &mut b);
        b.set_auth_keys(keys);
        b.queue(LocalChange::Upsert(flow(6)));
        pump(&mut a, &mut b);
        assert!(got(&mut a, 6));
    }
    a.set_auth_keys(vec![key(2, 0x22)]);
    b.set_auth_keys(vec![key(2, 0x22)]);
    b.queue(LocalChange::Upsert(flow(7)));
    pump(&mut a, &mut b);
    assert!(got(&mut a, 7));
    let s = a.stats();
    assert_eq!((s.drop_bad_mac, s.drop_unknown_key, s.drop_auth), (0, 0, 0));
}

fn anti_entropy_core(now: Instant) -> Ftfw {
    let cfg = FtfwConfig { anti_entropy_interval: Duration::from_secs(30), ..cfg() };
    let mut core = established_with(cfg, 1000, now);
    // The bulk we asked for ends: digests may be compared from here on.
    core.handle_datagram(now, &datagram(1000, &[Message::BulkEnd { bulk_start: 1000 }]));
    events(&mut core);
    core
}

fn digest(oldest: u32, first: u16, n: usize) -> Message {
    Message::Digest { oldest, ranges: 128, first, digests: vec![u64::from(first); n] }
}

#[test]
fn a_digest_is_compared_only_when_everything_sent_before_it_arrived() {
    // docs/PROTOCOL.md, "Anti-entropy", "When the receiver compares".
    let now = Instant::now();
    let mut core = anti_entropy_core(now);
    let compared = |core: &mut Ftfw| {
        events(core).iter().filter(|e| matches!(e, PeerEvent::Digest { .. })).count()
    };
    // Nothing unacknowledged at the peer: compared.
    core.handle_datagram(now, &datagram(1001, &[digest(1001, 0, 128)]));
    assert_eq!(compared(&mut core), 1);
    // The peer's oldest unacknowledged message (1002) is lost: skipped.
    core.handle_datagram(now, &datagram(1003, &[digest(1002, 0, 128)]));
    assert_eq!(compared(&mut core), 0);
    // Its oldest unacknowledged one is after the gap, in our run: compared.
    core.handle_datagram(now, &datagram(1004, &[upsert(1), digest(1003, 0, 128)]));
    assert_eq!(compared(&mut core), 1);
    // Parts in sequence make one digest; a part out of sequence, none.
    core.handle_datagram(now, &datagram(1006, &[digest(1006, 0, 64)]));
    core.handle_datagram(now, &datagram(1007, &[digest(1006, 64, 64)]));
    let ev = events(&mut core);
    let [PeerEvent::Digest { digests }] = &ev[..] else { panic!("{ev:?}") };
    assert_eq!((digests[0], digests[64], digests.len()), (0, 64, 128));
    core.handle_datagram(now, &datagram(1008, &[digest(1008, 64, 64)]));
    assert_eq!(compared(&mut core), 0);
    // While a repair we asked for is under way: skipped, until its end.
    let mut set = RangeSet::default();
    set.insert(5);
    core.request_repair(set);
    assert!(messages(&mut core, now).contains(&Message::RepairRequest { ranges: 128, set: 32 }));
    core.handle_datagram(now, &datagram(1009, &[digest(1009, 0, 128)]));
    assert_eq!(compared(&mut core), 0);
    core.handle_datagram(
        now,
        &datagram(1010, &[Message::RepairEnd { repair_start: 1010, ranges: 128, set: 32 }]),
    );
    assert!(events(&mut core).contains(&PeerEvent::RepairEnd { floor: 1 << 32 | 10, ranges: set }));
    core.handle_datagram(now, &datagram(1011, &[digest(1011, 0, 128)]));
    assert_eq!(compared(&mut core), 1);
    let s = core.stats();
    assert_eq!((s.digests_received, s.digests_skipped), (4, 3));
}

#[test]
fn a_digest_goes_only_behind_what_it_describes() {
    // docs/PROTOCOL.md, "Anti-entropy", "Sending".
    let now = Instant::now();
    let mut core = anti_entropy_core(now);
    // What goes, ACKs aside.
    let data = |core: &mut Ftfw| -> Vec<Message> {
        messages(core, now).into_iter().filter(|m| !matches!(m, Message::Ack { .. })).collect()
    };
    let ours = [9u64; crate::digest::RANGES];
    core.queue(LocalChange::Upsert(flow(1)));
    assert!(!core.send_digest(now, &ours), "a change waits: not yet");
    assert_eq!(data(&mut core), vec![upsert(1)]);
    // Sent, not acknowledged: the digest names it as the oldest.
    assert!(core.send_digest(now, &ours));
    let out = messages(&mut core, now);
    assert!(
        matches!(&out[..], [Message::Ack { .. }, Message::Digest { oldest: 101, first: 0, digests, .. }] if digests.len() == 128),
        "{out:?}"
    );
    // A digest not yet sent when a message before it is lost is dropped:
    // the lost change goes again, after where the digest would have been.
    core.queue(LocalChange::Upsert(flow(2)));
    assert_eq!(data(&mut core), vec![upsert(2)]);
    assert!(core.send_digest(now, &ours));
    core.handle_datagram(now, &datagram(1001, &[Message::Nack { from: 103, to: 103 }]));
    assert_eq!(data(&mut core), vec![upsert(2)]);
    assert_eq!(core.stats().digests_sent, 1);
    // A repair request is answered with the flows and a REPAIR_END barrier.
    let mut set = RangeSet::default();
    set.insert(3);
    core.handle_datagram(now, &datagram(1001, &[Message::Ack { from: 101, to: 104 }]));
    core.repair_send(set, [&flow(7)]);
    assert_eq!(data(&mut core), vec![Message::FlowRepair(flow(7))], "the barrier waits");
    core.handle_datagram(now, &datagram(1001, &[Message::Ack { from: 105, to: 105 }]));
    assert_eq!(
        data(&mut core),
        vec![Message::RepairEnd { repair_start: 105, ranges: 128, set: 8 }]
    );
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

fn keyed_cfg() -> FtfwConfig {
    let key = native::AuthKey::new(1, vec![0x11; native::MIN_KEY_LEN]);
    FtfwConfig { auth_keys: vec![key], ..cfg() }
}

/// Run `rounds` turns of a exchanging with b, a second apart (so that
/// keepalives and periodic ACKs go too), and return what b sent to a.
fn exchange_recording(a: &mut Ftfw, b: &mut Ftfw, start: Instant, rounds: u64) -> Vec<Vec<u8>> {
    let mut buf = [0u8; 1472];
    let mut recorded = Vec::new();
    for r in 0..rounds {
        let now = start + Duration::from_secs(r);
        a.handle_timeout(now);
        b.handle_timeout(now);
        while let Some(n) = a.poll_transmit(now, &mut buf) {
            b.handle_datagram(now, &buf[..n]);
        }
        while let Some(n) = b.poll_transmit(now, &mut buf) {
            recorded.push(buf[..n].to_vec());
            a.handle_datagram(now, &buf[..n]);
        }
    }
    recorded
}

/// Every datagram the peer sent in the live session, replayed: each copy
/// is refused as a replay before anything in it counts, ACKs, keepalives
/// and handshake included (without a datagram counter only the copies
/// whose data all lay behind were refused, and the others' ACKs and
/// HELLOs were taken again).
#[test]
fn replayed_datagrams_of_the_live_session_are_refused_and_change_nothing() {
    let now = Instant::now();
    let mut a = Ftfw::new(keyed_cfg(), 1, 10, now);
    let mut b = Ftfw::new(keyed_cfg(), 2, 20, now);
    let mut recorded = exchange_recording(&mut a, &mut b, now, 3);
    b.queue(LocalChange::Upsert(flow(4)));
    a.queue(LocalChange::Upsert(flow(5)));
    recorded.extend(exchange_recording(&mut a, &mut b, now + Duration::from_secs(3), 4));
    assert_eq!(a.peer_state(), PeerState::Established);
    events(&mut a);
    let before = a.stats().clone();
    let later = now + Duration::from_secs(8);
    let refused: Vec<_> = recorded.iter().map(|d| a.handle_datagram(later, d)).collect();
    assert!(refused.iter().all(|r| *r == Some(Refusal::Replay)), "{refused:?}");
    let s = a.stats();
    assert_eq!(s.drop_replay - before.drop_replay, recorded.len() as u64);
    assert_eq!((s.msgs_received, s.acks_received), (before.msgs_received, before.acks_received));
    assert!(events(&mut a).is_empty());
    assert_eq!(a.peer_state(), PeerState::Established);
}

/// We restart; the peer's session goes on, so its ACKs to our previous
/// session are authentic and fresh to the replay window, and their seqs
/// overlap ours (both sessions started at 10). Only the session an ACK is
/// about (the STAMP's) tells them apart: such an ACK releases nothing; the
/// same ACK about our current session does.
#[test]
fn an_ack_to_our_previous_session_releases_nothing_after_our_restart() {
    let now = Instant::now();
    let keys = keyed_cfg().auth_keys;
    let mut a = Ftfw::new(keyed_cfg(), 1, 10, now);
    let mut b = Ftfw::new(keyed_cfg(), 2, 20, now);
    exchange_recording(&mut a, &mut b, now, 2);
    let mut restarted = Ftfw::new(keyed_cfg(), 3, 10, now);
    let mut buf = [0u8; 1472];
    for r in 5..9 {
        let t = now + Duration::from_secs(r);
        restarted.handle_timeout(t);
        b.handle_timeout(t);
        while let Some(n) = restarted.poll_transmit(t, &mut buf) {
            b.handle_datagram(t, &buf[..n]);
        }
        while let Some(n) = b.poll_transmit(t, &mut buf) {
            let mut msgs = Vec::new();
            native::decode_with(&buf[..n], Some(&keys), &mut msgs).unwrap();
            if msgs.iter().any(|m| matches!(m.msg, Ok(Message::HelloBack { .. }))) {
                restarted.handle_datagram(t, &buf[..n]);
            }
        }
    }
    assert_eq!(restarted.peer_state(), PeerState::Established);
    for p in 1..6 {
        restarted.queue(LocalChange::Upsert(flow(p)));
    }
    let t = now + Duration::from_secs(9);
    // Sent, and lost on the way.
    while restarted.poll_transmit(t, &mut buf).is_some() {}
    let unacked = restarted.acked_before();
    let next = restarted.next_seq();
    assert!(next.wrapping_sub(unacked.0) > 1);
    let mut peer = NativeCodec::with_keys(keys);
    let mut ack_about = |session: u32, counter: u64| {
        let mut out = [0u8; 256];
        let mut at = native::HEADER_LEN;
        for m in [
            MessageRef::Stamp { counter, peer_session: session },
            MessageRef::Ack { from: unacked.0, to: next - 1 },
        ] {
            at += native::emit_message(&m, &mut out[at..]).unwrap();
        }
        let hdr = DatagramHeader { flags: 0, session: 2, seq: b.next_seq() };
        let n = peer.finish(&hdr, 2, at, &mut out).unwrap();
        out[..n].to_vec()
    };
    restarted.handle_datagram(t, &ack_about(1, 1 << 40));
    assert_eq!(restarted.acked_before(), unacked, "an ACK to our old session released data");
    restarted.handle_datagram(t, &ack_about(3, (1 << 40) + 1));
    assert_eq!(restarted.acked_before(), Seq(next));
}

// ----- conntrackd dialect (docs/PROTOCOL.md §7) ---------------------------

/// One conntrackd-format message from the peer, with these flag bits.
fn compat_message(flags: u8, seq: u32, msg: &Message) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let n = crate::wire::conntrackd::emit_message(&msg.as_ref(), seq, &mut buf).unwrap();
    buf.truncate(n);
    buf[1] |= flags;
    buf
}

/// Every message the core transmits now, with its seq.
fn compat_sent(core: &mut Ftfw, now: Instant) -> Vec<(u32, Message)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1472];
    while let Some(n) = core.poll_transmit(now, &mut buf) {
        let mut msgs = Vec::new();
        crate::wire::conntrackd::decode(&buf[..n], &mut msgs).unwrap();
        for r in msgs {
            out.push((r.header.unwrap().seq, r.msg.unwrap()));
        }
    }
    out
}

/// A conntrackd-dialect core whose HELLO the peer answered; the peer's
/// next seq is 101.
fn compat_established(now: Instant) -> Ftfw {
    let cfg = FtfwConfig { dialect: Dialect::Conntrackd, ..cfg() };
    let mut core = Ftfw::new(cfg, US, 500, now);
    compat_sent(&mut core, now);
    let hello_back =
        compat_message(crate::wire::conntrackd::flags::HELLO_BACK, 100, &Message::Alive);
    assert_eq!(core.handle_datagram(now, &hello_back), None);
    assert_eq!(core.peer_state(), PeerState::Established);
    compat_sent(&mut core, now);
    events(&mut core);
    core
}

#[test]
fn compat_a_nack_of_acknowledged_messages_brings_their_destroys_and_the_table() {
    // "NACK of what was acknowledged": a forged ACK released messages the
    // peer never got; its NACK of them cannot be answered from the resend
    // queue any more.
    let now = Instant::now();
    let mut core = compat_established(now);
    core.queue(LocalChange::New(flow(1)));
    core.queue(LocalChange::Destroy(flow(2).key()));
    let out = compat_sent(&mut core, now);
    let seq_of = |m: &Message| out.iter().find(|(_, x)| x == m).map(|(s, _)| *s).unwrap();
    let destroy = seq_of(&Message::FlowDestroy(flow(2).key()));
    let first = out[0].0;
    let last = out.last().unwrap().0;
    let ack = Message::Ack { from: first, to: last };
    core.handle_datagram(now, &compat_message(0, 101, &ack));
    assert_eq!(core.stats().nacks_of_acked, 0);
    let nack = Message::Nack { from: destroy, to: destroy };
    core.handle_datagram(now, &compat_message(0, 102, &nack));
    assert_eq!(core.stats().nacks_of_acked, 1);
    assert!(events(&mut core).contains(&PeerEvent::BulkRequested));
    let again: Vec<_> = compat_sent(&mut core, now).into_iter().map(|(_, m)| m).collect();
    assert!(again.contains(&Message::FlowDestroy(flow(2).key())), "{again:?}");
    // Told once: a second copy of the NACK asks for nothing more.
    core.handle_datagram(now, &compat_message(0, 103, &nack));
    assert_eq!(core.stats().nacks_of_acked, 1);
    assert!(!events(&mut core).contains(&PeerEvent::BulkRequested));
}

#[test]
fn compat_a_late_message_under_a_taken_seq_asks_for_the_table() {
    let now = Instant::now();
    let mut core = compat_established(now);
    let new = Message::FlowNew(flow(1));
    core.handle_datagram(now, &compat_message(0, 101, &new));
    // The link's duplicate: the same message, nothing to say.
    core.handle_datagram(now, &compat_message(0, 101, &new));
    assert_eq!(core.stats().drop_late, 1);
    assert_eq!(core.stats().rx_collisions, 0);
    compat_sent(&mut core, now);
    // A late message under a seq never taken here (before tracking began)
    // proves nothing.
    core.handle_datagram(now, &compat_message(0, 0, &Message::FlowNew(flow(9))));
    assert_eq!(core.stats().drop_late, 2);
    assert_eq!(core.stats().rx_collisions, 0);
    // Another message under 101: one of the two was forged.
    let destroy = Message::FlowDestroy(flow(2).key());
    core.handle_datagram(now, &compat_message(0, 101, &destroy));
    assert_eq!(core.stats().rx_collisions, 1);
    let out: Vec<_> = compat_sent(&mut core, now).into_iter().map(|(_, m)| m).collect();
    assert!(out.contains(&Message::ResyncRequest), "{out:?}");
    // At most one request per half peer timeout.
    core.handle_datagram(now, &compat_message(0, 101, &Message::FlowNew(flow(3))));
    assert_eq!(core.stats().rx_collisions, 2);
    let out: Vec<_> = compat_sent(&mut core, now).into_iter().map(|(_, m)| m).collect();
    assert!(!out.contains(&Message::ResyncRequest), "{out:?}");
}

#[test]
fn compat_keepalives_to_a_silent_peer_keep_the_resend_queue_bounded() {
    let mut now = Instant::now();
    let cfg = FtfwConfig { dialect: Dialect::Conntrackd, resend_queue: 16, ..cfg() };
    let mut core = Ftfw::new(cfg, US, 500, now);
    compat_sent(&mut core, now);
    let hello_back =
        compat_message(crate::wire::conntrackd::flags::HELLO_BACK, 100, &Message::Alive);
    core.handle_datagram(now, &hello_back);
    for port in 0..40 {
        core.queue(LocalChange::New(flow(port)));
    }
    // Backpressure stops new data at the queue's capacity; the peer never
    // answers, and every keepalive takes a seq in this dialect.
    let first = compat_sent(&mut core, now);
    assert!(first.iter().any(|(_, m)| matches!(m, Message::FlowNew(_))));
    let mut most = 0;
    for _ in 0..2000 {
        now += Duration::from_millis(250);
        core.handle_timeout(now);
        compat_sent(&mut core, now);
        most = most.max(core.stats().resend_queue_len);
    }
    assert!(most <= 32, "the resend queue grew to {most} entries for a silent peer");
    // What the peer never acknowledged is sent again after the queue is
    // given up, so none of it is lost when the peer comes back.
    assert!(core.stats().resend_resets > 0, "{:?}", core.stats());
}
