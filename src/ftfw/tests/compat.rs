//! The conntrackd dialect (docs/PROTOCOL.md §7, "conntrackd
//! compatibility"): NACKs of acknowledged messages, a late message under a
//! taken seq, and keepalives to a silent peer.

use super::*;

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
