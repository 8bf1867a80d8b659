//! Tests of conntrackd's format: captured bytes from conntrackd 1.4.7,
//! round trips of flows and expectations, and decoders fed arbitrary bytes.

use super::*;
use crate::expect::{ExpNat, Expectation};
use crate::flow::{Dir, Flow, proto, status, tcp_state};
use crate::wire::{Codec, DatagramHeader, Message, MessageHeader, MessageRef, Received};

/// conntrackd 1.4.7 → 1.4.7, captured on this machine's kernel
/// (docs/PROTOCOL.md, "conntrackd compatibility"): `tcp
/// 192.168.1.10:40000 → 198.51.100.7:443 ESTABLISHED mark=7 SNAT to
/// 203.0.113.5:51234`.
const CAPTURED_NEW: [u8; 100] = [
    0x10, 0x00, 0x00, 0x64, 0x6b, 0x03, 0xed, 0x52, // nethdr
    0x00, 0x0c, 0x00, 0x00, 0xc0, 0xa8, 0x01, 0x0a, 0xc6, 0x33, 0x64, 0x07, // IPV4
    0x00, 0x08, 0x00, 0x05, 0x00, 0x00, 0x01, 0x9e, // STATUS
    0x00, 0x05, 0x00, 0x02, 0x06, 0x00, 0x00, 0x00, // L4PROTO
    0x00, 0x08, 0x00, 0x03, 0x9c, 0x40, 0x01, 0xbb, // PORT
    0x00, 0x05, 0x00, 0x04, 0x03, 0x00, 0x00, 0x00, // TCP_STATE
    0x00, 0x08, 0x00, 0x06, 0x00, 0x00, 0x01, 0x2c, // TIMEOUT
    0x00, 0x08, 0x00, 0x07, 0x00, 0x00, 0x00, 0x07, // MARK
    0x00, 0x08, 0x00, 0x0c, 0xcb, 0x00, 0x71, 0x05, // SNAT_IPV4
    0x00, 0x06, 0x00, 0x0e, 0x22, 0xc8, 0x00, 0x00, // SPAT_PORT (LE)
    0x00, 0x10, 0x00, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // SYNPROXY
];

fn captured_flow() -> Flow {
    let mut f =
        Flow::new_v4(proto::TCP, [192, 168, 1, 10].into(), [198, 51, 100, 7].into(), 40000, 443);
    f.set_addrs(Dir::Reply, [198, 51, 100, 7].into(), [203, 0, 113, 5].into());
    f.l4[3] = 51234;
    f.status = 0x19e;
    f.proto_state = tcp_state::ESTABLISHED;
    f.timeout = 300;
    f.mark = 7;
    f
}

#[test]
fn captured_message_decodes() {
    let mut out = Vec::new();
    let hdr = decode(&CAPTURED_NEW, &mut out).unwrap();
    assert_eq!(hdr.seq, 1795419474);
    assert_eq!(
        out,
        vec![Received {
            sequenced: true,
            msg: Ok(Message::FlowNew(captured_flow())),
            header: Some(MessageHeader { flags: 0, seq: 1795419474 }),
        }]
    );
}

#[test]
fn emits_the_captured_bytes_but_synproxy() {
    let f = captured_flow();
    let mut buf = [0u8; 200];
    let n = emit_message(&MessageRef::FlowNew(&f), 1795419474, &mut buf).unwrap();
    // We do not send the all-zero NTA_SYNPROXY: 16 bytes less.
    assert_eq!(n, 84);
    let mut expected = CAPTURED_NEW[..84].to_vec();
    expected[3] = 84;
    assert_eq!(&buf[..n], &expected[..]);
}

#[test]
fn control_messages_and_flags() {
    let mut c = ConntrackdCodec;
    let mut buf = [0u8; 64];
    let a = c.emit_message(&MessageRef::Alive, 7, &mut buf).unwrap();
    let b = c.emit_message(&MessageRef::Ack { from: 3, to: 6 }, 8, &mut buf[a..]).unwrap();
    let hdr = DatagramHeader { flags: flags::HELLO, session: 0, seq: 7 };
    let n = c.finish(&hdr, 2, a + b, &mut buf).unwrap();
    // Captured startup: ALIVE|HELLO is 0x30; ACK|HELLO is 0x28.
    assert_eq!(
        &buf[..n],
        &[
            0x1a, 0x30, 0, 8, 0, 0, 0, 7, //
            0x1a, 0x28, 0, 16, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0, 6
        ]
    );
    let mut out = Vec::new();
    c.decode(&buf[..n], &mut out).unwrap();
    assert_eq!(out[0].msg, Ok(Message::Alive));
    assert_eq!(out[1].msg, Ok(Message::Ack { from: 3, to: 6 }));
    assert_eq!(out[1].header, Some(MessageHeader { flags: 0x28, seq: 8 }));
    let r = emit_message(&MessageRef::ResyncRequest, 9, &mut buf).unwrap();
    assert_eq!(&buf[..r], &[0x1a, 0x02, 0, 16, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(emit_message(&MessageRef::BulkEnd { bulk_start: 1 }, 1, &mut buf).is_err());
}

#[test]
fn round_trips_icmp_ipv6_nat_zone_labels() {
    let mut ping =
        Flow::new(proto::ICMP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 0x1234, 8 << 8);
    ping.l4[3] = 0; // echo reply
    ping.status = status::CONFIRMED | status::SEEN_REPLY;
    ping.timeout = 29;
    ping.zone = 258;
    let mut v6 = Flow::new(
        proto::UDP,
        "2001:db8::1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
        5353,
        53,
    );
    v6.set_addrs(Dir::Reply, "2001:db8::99".parse().unwrap(), "2001:db8::1".parse().unwrap());
    v6.l4[2] = 5300;
    v6.extra_mut().labels = Some(1 | 1 << 40);
    v6.extra_mut().helper = Some("ftp".into());
    let mut buf = [0u8; 300];
    for f in [ping, v6, captured_flow()] {
        let n = emit_message(&MessageRef::FlowUpdate(&f), 1, &mut buf).unwrap();
        assert_eq!(n, message_len(&MessageRef::FlowUpdate(&f)));
        let view = MessageView::new_checked(&buf[..n]).unwrap();
        assert_eq!(view.parse(), Ok(Message::FlowUpdate(f.clone())));
        let k = f.key();
        let n = emit_message(&MessageRef::FlowDestroy(&k), 2, &mut buf).unwrap();
        let view = MessageView::new_checked(&buf[..n]).unwrap();
        assert_eq!(view.parse(), Ok(Message::FlowDestroy(k)));
    }
    // ICMP id little-endian, zone big-endian (captured).
    let mut ping = Flow::new(proto::ICMP, [1, 1, 1, 1].into(), [2, 2, 2, 2].into(), 4660, 0);
    ping.zone = 258;
    let n = emit_message(&MessageRef::FlowNew(&ping), 1, &mut buf).unwrap();
    let b = &buf[..n];
    assert!(b.windows(6).any(|w| w == [0, 6, 0, 24, 0x34, 0x12]));
    assert!(b.windows(6).any(|w| w == [0, 6, 0, 32, 0x01, 0x02]));
}

#[test]
fn expectation_messages_follow_exp2msg() {
    // conntrackd's include/network.h (`enum nta_exp_attr`) and
    // build.c (`exp2msg`): master, expected and mask groups, timeout,
    // flags, class, IPv4 NAT, helper, function.
    let mut e = crate::expect::tests::ftp_pasv();
    e.nat = Some(ExpNat { dir: 1, addr: [10, 0, 1, 2].into(), port: 50000 });
    e.expectfn = Some("nat-follow-master".into());
    let mut buf = [0u8; 400];
    let n = emit_message(&MessageRef::ExpNew(&e), 7, &mut buf).unwrap();
    assert_eq!(n, message_len(&MessageRef::ExpNew(&e)));
    let b = &buf[..n];
    assert_eq!(b[0], (VERSION << 4) | msg_type::EXP_NEW);
    #[rustfmt::skip]
    let head: &[u8] = &[
        0, 12, 0, 0, 10, 0, 1, 2, 10, 0, 2, 2, // MASTER_IPV4
        0, 5, 0, 2, 6, 0, 0, 0,                // MASTER_L4PROTO
        0, 8, 0, 3, 0x9c, 0x40, 0, 21,         // MASTER_PORT 40000 → 21
        0, 12, 0, 4, 10, 0, 1, 2, 10, 0, 2, 2, // EXPECT_IPV4
        0, 5, 0, 6, 6, 0, 0, 0,                // EXPECT_L4PROTO
        0, 8, 0, 7, 0, 0, 0xc3, 0x50,          // EXPECT_PORT 0 → 50000
        0, 12, 0, 8, 255, 255, 255, 255, 255, 255, 255, 255, // MASK_IPV4
    ];
    assert_eq!(&b[HEADER_LEN..HEADER_LEN + head.len()], head);
    assert!(b.windows(8).any(|w| w == [0, 8, 0, 12, 0, 0, 1, 44]), "TIMEOUT 300");
    assert!(b.windows(8).any(|w| w == [0, 8, 0, 18, 0, 0, 0, 1]), "NAT_DIR 1");
    assert!(b.windows(8).any(|w| w == [0, 8, 0, 19, b'f', b't', b'p', 0]), "HELPER_NAME");
    let view = MessageView::new_checked(b).unwrap();
    assert_eq!(view.parse(), Ok(Message::ExpNew(Box::new(e.clone()))));
    let n = emit_message(&MessageRef::ExpDestroy(&e), 8, &mut buf).unwrap();
    assert_eq!(buf[0] & 0x0f, msg_type::EXP_DEL);
    let view = MessageView::new_checked(&buf[..n]).unwrap();
    assert_eq!(view.parse(), Ok(Message::ExpDestroy(Box::new(e.clone()))));
    // IPv6 NAT has no attribute in conntrackd: left out, the rest goes.
    let mut v6 = e.clone();
    let a = |n: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n));
    (v6.master.src, v6.master.dst, v6.tuple.src, v6.tuple.dst) = (a(1), a(2), a(1), a(2));
    v6.mask_src = IpAddr::V6(Ipv6Addr::from(u128::MAX));
    v6.nat = Some(ExpNat { dir: 0, addr: a(9), port: 1 });
    let n = emit_message(&MessageRef::ExpNew(&v6), 9, &mut buf).unwrap();
    let view = MessageView::new_checked(&buf[..n]).unwrap();
    assert_eq!(view.parse(), Ok(Message::ExpNew(Box::new(Expectation { nat: None, ..v6 }))));
    // An attribute beyond NTA_EXP_MAX refuses the message.
    let n = emit_message(&MessageRef::ExpNew(&e), 7, &mut buf).unwrap();
    buf[HEADER_LEN + 3] = nta_exp::MAX as u8;
    let view = MessageView::new_checked(&buf[..n]).unwrap();
    assert_eq!(view.parse(), Err(WireError::BadAttribute(nta_exp::MAX)));
}

#[test]
fn unknown_attribute_kills_the_message_not_its_seq() {
    let mut bytes = CAPTURED_NEW;
    bytes[84 + 3] = 40; // SYNPROXY → attribute 40
    let mut out = Vec::new();
    decode(&bytes, &mut out).unwrap();
    assert!(out[0].sequenced);
    assert_eq!(out[0].msg, Err(WireError::BadAttribute(40)));
    // A bad length abandons the rest of the datagram.
    let mut two = CAPTURED_NEW.to_vec();
    two.extend_from_slice(&[0x1a, 0x10, 0, 200, 0, 0, 0, 1]);
    out.clear();
    decode(&two, &mut out).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].msg, Err(WireError::BadLength));
    assert!(decode(&[0x1a, 0x08, 0, 8, 0, 0, 0, 1], &mut out).is_err());
}

proptest::proptest! {
    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
        let mut out = Vec::new();
        let _ = decode(&bytes, &mut out);
        let _ = parse_flow(&bytes);
        let _ = parse_exp(&bytes);
    }

    #[test]
    fn expectation_parser_never_panics_on_mutations(
        flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..8)
    ) {
        let mut e = crate::expect::tests::ftp_pasv();
        e.nat = Some(ExpNat { dir: 1, addr: [10, 0, 1, 2].into(), port: 50000 });
        let mut buf = [0u8; 400];
        let n = emit_message(&MessageRef::ExpNew(&e), 7, &mut buf).unwrap();
        for (at, byte) in flips {
            buf[HEADER_LEN + at % (n - HEADER_LEN)] = byte;
        }
        let _ = parse_exp(&buf[HEADER_LEN..n]);
    }
}
