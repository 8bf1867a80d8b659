//! Anti-entropy (docs/PROTOCOL.md, "Anti-entropy"): a digest is compared
//! only when everything sent before it arrived, and goes only behind what
//! it describes.

use super::*;

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
