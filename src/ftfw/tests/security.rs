//! Replays, authentication and encryption (docs/SECURITY.md; docs/PROTOCOL.md,
//! "Versioning and authentication"): recordings of an old or the live
//! session played back, forged and clear datagrams between keyed cores,
//! key rotation, and ACKs about an earlier session of ours.

use super::*;

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
