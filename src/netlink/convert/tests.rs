//! Tests of the conversion: both decoders held to the same flow, what we
//! emit parsed back through `netlink-packet-netfilter`, and byte layouts
//! the kernel reads.

use netlink_packet_core::{NlasIterator, Parseable};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ProtoInfo, ProtoInfoTCP};

use super::encode::emit_tuple;
use super::*;
use crate::flow::Dir;
use crate::flow::{Flow, FlowExtra, SeqAdj, TcpInfo, proto, tcp_state};
use std::net::Ipv4Addr;

fn emit(f: impl FnOnce(&mut AttrWriter<'_>)) -> Vec<u8> {
    let mut buf = Vec::new();
    f(&mut AttrWriter::new(&mut buf));
    buf
}

fn tcp_flow() -> Flow {
    let mut f = Flow::new_v4(
        proto::TCP,
        Ipv4Addr::new(192, 168, 1, 10),
        Ipv4Addr::new(198, 51, 100, 7),
        40000,
        443,
    );
    f.status |= status::SEEN_REPLY | status::ASSURED;
    f.timeout = 120;
    f.mark = 0x42;
    f.proto_state = tcp_state::ESTABLISHED;
    f.tcp = TcpInfo {
        wscale_orig: 7,
        wscale_reply: 9,
        flags_orig: tcp_flag::WINDOW_SCALE | tcp_flag::SACK_PERM,
        flags_reply: tcp_flag::WINDOW_SCALE,
    };
    f
}

/// What a flow looks like after a round trip: the kernel-only TCP flag
/// bits are not sent.
fn round_trip(f: &Flow) -> Flow {
    let bytes = emit(|w| emit_create(w, f, &EmitOptions::default()));
    let fast = parse_flow(&bytes).expect("own bytes parse");
    assert_eq!(parse_flow_typed(&bytes).as_ref(), Ok(&fast), "the decoders disagree");
    fast
}

proptest::proptest! {
    /// The fast decoder and the crate's typed one read any bytes alike:
    /// mutations of a flow with every optional field.
    #[test]
    fn fast_and_typed_decoders_agree(
        flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 0..6),
        cut in proptest::option::of(proptest::num::usize::ANY),
    ) {
        let mut f = tcp_flow();
        f.zone = 3;
        let x = f.extra_mut();
        x.labels = Some(0x1234);
        x.helper = Some("ftp".into());
        x.seq_adj = Some([SeqAdj { correction_pos: 1, offset_before: 2, offset_after: 3 }; 2]);
        let mut bytes = emit(|w| emit_create(w, &f, &EmitOptions::default()));
        for (at, v) in flips {
            let n = bytes.len();
            bytes[at % n] ^= v;
        }
        if let Some(c) = cut {
            bytes.truncate(c % (bytes.len() + 1));
        }
        let (fast, typed) = (parse_flow(&bytes), parse_flow_typed(&bytes));
        proptest::prop_assert_eq!(fast.is_ok(), typed.is_ok(), "{:?} vs {:?}", fast, typed);
        if let (Ok(a), Ok(b)) = (&fast, &typed) {
            proptest::prop_assert_eq!(a, b);
        }
    }
}

fn expected_after_trip(f: &Flow) -> Flow {
    let mut e = f.clone();
    e.status = status_to_send(f.status);
    e.tcp.flags_orig &= TCP_FLAGS_SYNCED;
    e.tcp.flags_reply &= TCP_FLAGS_SYNCED;
    e
}

#[test]
fn tuple_bytes_match_the_kernel_layout() {
    let f = Flow::new_v4(proto::UDP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 5000, 53);
    let bytes = emit(|w| emit_tuple(w, cta::TUPLE_ORIG, &f, 0));
    #[rustfmt::skip]
    let want: &[u8] = &[
        52, 0, 0x01, 0x80,          // CTA_TUPLE_ORIG, nested
          20, 0, 0x01, 0x80,        // CTA_TUPLE_IP
            8, 0, 1, 0, 10, 0, 0, 1, // CTA_IP_V4_SRC
            8, 0, 2, 0, 10, 0, 0, 2, // CTA_IP_V4_DST
          28, 0, 0x02, 0x80,        // CTA_TUPLE_PROTO
            5, 0, 1, 0, 17, 0, 0, 0, // CTA_PROTO_NUM
            6, 0, 2, 0, 0x13, 0x88, 0, 0, // CTA_PROTO_SRC_PORT 5000
            6, 0, 3, 0, 0, 53, 0, 0, // CTA_PROTO_DST_PORT 53
    ];
    assert_eq!(bytes, want);
}

#[test]
fn crate_reads_what_we_emit() {
    let f = tcp_flow();
    let bytes = emit(|w| emit_create(w, &f, &EmitOptions::default()));
    let attrs: Vec<ConntrackAttribute> = NlasIterator::new(&bytes[..])
        .map(|n| ConntrackAttribute::parse(&n.unwrap()).unwrap())
        .collect();
    assert!(attrs.contains(&ConntrackAttribute::CtaMark(0x42)));
    assert!(attrs.contains(&ConntrackAttribute::CtaTimeout(120)));
    assert!(
        attrs.iter().any(|a| matches!(a, ConntrackAttribute::CtaTupleReply(t) if t.len() == 2))
    );
    let Some(ConntrackAttribute::CtaProtoInfo(pi)) =
        attrs.iter().find(|a| matches!(a, ConntrackAttribute::CtaProtoInfo(_)))
    else {
        panic!("no protoinfo in {attrs:?}");
    };
    let ProtoInfo::TCP(tcp) = &pi[0] else { panic!("{pi:?}") };
    assert!(tcp.contains(&ProtoInfoTCP::State(tcp_state::ESTABLISHED)));
    assert!(tcp.contains(&ProtoInfoTCP::OriginalWindowScale(7)));
}

#[test]
fn tcp_round_trip_keeps_every_field() {
    let f = tcp_flow();
    assert_eq!(round_trip(&f), expected_after_trip(&f));
}

#[test]
fn status_never_carries_kernel_bits_and_always_confirmed() {
    let s =
        status_to_send(status::SEEN_REPLY | status::DYING | status::SRC_NAT | status::SRC_NAT_DONE);
    assert_eq!(s, status::SEEN_REPLY | status::CONFIRMED);
}

#[test]
fn be_liberal_sets_flag_in_both_directions_with_mask() {
    let f = tcp_flow();
    let opts = EmitOptions { timeout: Some(30), be_liberal: true };
    let bytes = emit(|w| emit_create(w, &f, &opts));
    let back = parse_flow(&bytes).unwrap();
    assert_ne!(back.tcp.flags_orig & tcp_flag::BE_LIBERAL, 0);
    assert_ne!(back.tcp.flags_reply & tcp_flag::BE_LIBERAL, 0);
    assert_eq!(back.timeout, 30);
    // flags then mask, the mask includes BE_LIBERAL.
    let needle = [6, 0, 4, 0, f.tcp.flags_orig | tcp_flag::BE_LIBERAL, TCP_FLAGS_SYNCED];
    assert!(bytes.windows(6).any(|w| w == needle), "{bytes:?}");
}

#[test]
fn snat_emits_nat_src_with_port_range() {
    let mut f = tcp_flow();
    f.set_addrs(Dir::Reply, [198, 51, 100, 7].into(), [203, 0, 113, 5].into());
    f.l4[3] = 51234;
    let bytes = emit(|w| emit_create(w, &f, &EmitOptions::default()));
    #[rustfmt::skip]
    let nat: &[u8] = &[
        40, 0, 6, 0x80,                 // CTA_NAT_SRC
          8, 0, 1, 0, 203, 0, 113, 5,   // V4_MINIP
          8, 0, 2, 0, 203, 0, 113, 5,   // V4_MAXIP
          20, 0, 3, 0x80,               // CTA_NAT_PROTO
            6, 0, 1, 0, 0xc8, 0x22, 0, 0, // PORT_MIN 51234
            6, 0, 2, 0, 0xc8, 0x22, 0, 0, // PORT_MAX
    ];
    assert!(bytes.windows(nat.len()).any(|w| w == nat), "{bytes:?}");
    // The reply tuple sent is the untranslated one; the kernel derives
    // the translated one from CTA_NAT_SRC.
    let sent = round_trip(&f);
    assert_eq!(sent.snat(), None);
    assert_eq!(sent.dst(Dir::Reply), f.src(Dir::Orig));
    assert_eq!(sent.dport(Dir::Reply), 40000);
    assert_eq!(sent.key(), f.key());
    // An update carries neither the reply tuple nor NAT.
    let upd = emit(|w| emit_update(w, &f, &EmitOptions::default()));
    let back = parse_flow(&upd).unwrap();
    assert_eq!(back.snat(), None);
    assert!(!upd.windows(4).any(|w| w == [40, 0, 6, 0x80]));
}

#[test]
fn dnat_v6_emits_nat_dst() {
    let mut f = Flow::new(
        proto::UDP,
        "2001:db8::1".parse().unwrap(),
        "2001:db8::80".parse().unwrap(),
        5000,
        53,
    );
    f.set_addrs(Dir::Reply, "fd00::53".parse().unwrap(), "2001:db8::1".parse().unwrap());
    let bytes = emit(|w| emit_create(w, &f, &EmitOptions::default()));
    // Both addresses and the port range, though the port did not change:
    // without it the kernel may pick another port.
    let mut nat = vec![64, 0, 13, 0x80, 20, 0, 4, 0];
    nat.extend_from_slice(&"fd00::53".parse::<std::net::Ipv6Addr>().unwrap().octets());
    assert!(bytes.windows(nat.len()).any(|w| w == nat), "{bytes:?}");
    let ports: &[u8] = &[20, 0, 3, 0x80, 6, 0, 1, 0, 0, 53, 0, 0, 6, 0, 2, 0, 0, 53, 0, 0];
    assert!(bytes.windows(ports.len()).any(|w| w == ports), "{bytes:?}");
    let sent = round_trip(&f);
    assert_eq!(sent.dnat(), None);
    assert_eq!(sent.src(Dir::Reply), f.dst(Dir::Orig));
}

#[test]
fn icmp_and_icmpv6_fields() {
    let mut f =
        Flow::new_v4(proto::ICMP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 0x1234, 0x0800);
    f.l4[3] = 0x0000; // echo reply in the reply tuple
    let bytes = emit(|w| emit_create(w, &f, &EmitOptions::default()));
    // CTA_PROTO_ICMP_ID, TYPE 8, CODE 0
    assert!(bytes.windows(8).any(|w| w == [6, 0, 4, 0, 0x12, 0x34, 0, 0]));
    assert!(bytes.windows(8).any(|w| w == [5, 0, 5, 0, 8, 0, 0, 0]));
    assert_eq!(round_trip(&f), expected_after_trip(&f));
    let f6 = Flow::new(
        proto::ICMPV6,
        "2001:db8::1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
        7,
        u16::from_be_bytes([128, 0]),
    );
    let bytes = emit(|w| emit_create(w, &f6, &EmitOptions::default()));
    assert!(bytes.windows(8).any(|w| w == [5, 0, 8, 0, 128, 0, 0, 0]));
    assert_eq!(round_trip(&f6), expected_after_trip(&f6));
}

#[test]
fn gre_keys_travel_as_ports() {
    let f = Flow::new_v4(proto::GRE, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 0x10, 0x20);
    let bytes = emit(|w| emit_create(w, &f, &EmitOptions::default()));
    assert!(bytes.windows(8).any(|w| w == [6, 0, 2, 0, 0, 0x10, 0, 0]));
    assert_eq!(round_trip(&f), expected_after_trip(&f));
}

#[test]
fn zone_labels_helper_seqadj_tuple_zones() {
    let mut f = tcp_flow();
    f.zone = 7;
    *f.extra_mut() = FlowExtra {
        labels: Some((1u128 << 3) | (1u128 << 100)),
        helper: Some("ftp".into()),
        seq_adj: Some([
            SeqAdj { correction_pos: 1, offset_before: 2, offset_after: 3 },
            SeqAdj { correction_pos: 4, offset_before: 5, offset_after: 6 },
        ]),
        sctp_vtags: None,
        dccp: None,
        tuple_zones: Some([7, 8]),
    };
    let bytes = emit(|w| emit_create(w, &f, &EmitOptions::default()));
    assert!(bytes.windows(8).any(|w| w == [6, 0, 18, 0, 0, 7, 0, 0]), "CTA_ZONE");
    assert!(bytes.windows(8).any(|w| w == [6, 0, 3, 0, 0, 8, 0, 0]), "CTA_TUPLE_ZONE");
    assert!(bytes.windows(8).any(|w| w == [8, 0, 1, 0, b'f', b't', b'p', 0]), "helper");
    assert_eq!(round_trip(&f), expected_after_trip(&f));
}

#[test]
fn labels_are_host_order_words() {
    let b = labels_to_bytes(1 << 3);
    if cfg!(target_endian = "little") {
        assert_eq!(b[0], 0x08);
    }
    assert_eq!(labels_from_bytes(&labels_to_bytes(u128::MAX - 5)), u128::MAX - 5);
    assert_eq!(labels_from_bytes(&[1]), if cfg!(target_endian = "little") { 1 } else { 1 << 56 });
}

#[test]
fn sctp_and_dccp_protoinfo() {
    let mut s = Flow::new_v4(proto::SCTP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1000, 2000);
    s.proto_state = 3;
    s.extra_mut().sctp_vtags = Some([0xdead_beef, 0x1234_5678]);
    assert_eq!(round_trip(&s), expected_after_trip(&s));
    let mut d = Flow::new_v4(proto::DCCP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1000, 2000);
    d.proto_state = 4;
    d.extra_mut().dccp = Some((1, 0x0102_0304_0506));
    assert_eq!(round_trip(&d), expected_after_trip(&d));
}

#[test]
fn key_emits_orig_tuple_and_zone() {
    let mut f = tcp_flow();
    f.zone = 3;
    let a = emit(|w| emit_key(w, &f.key()));
    let b = emit(|w| {
        emit_tuple(w, cta::TUPLE_ORIG, &f, 0);
        w.put_u16_be(cta::ZONE, 3);
    });
    assert_eq!(a, b);
    let back = parse_flow(&a).unwrap();
    assert_eq!(back.key(), f.key());
}

#[test]
fn missing_reply_tuple_is_the_inverse() {
    let f = tcp_flow();
    let bytes = emit(|w| emit_tuple(w, cta::TUPLE_ORIG, &f, 0));
    let back = parse_flow(&bytes).unwrap();
    assert_eq!(back.addrs, f.addrs);
    assert_eq!(back.l4, f.l4);
}

#[test]
fn errors_not_panics() {
    assert_eq!(parse_flow(&[]), Err(ConvertError::NoOrigTuple));
    assert!(matches!(parse_flow(&[8, 0, 7, 0, 0]), Err(ConvertError::Malformed(_))));
    // CTA_ZONE with one byte.
    let mut f = tcp_flow();
    f.zone = 1;
    let mut bytes = emit(|w| emit_tuple(w, cta::TUPLE_ORIG, &f, 0));
    bytes.extend_from_slice(&[5, 0, 18, 0, 1, 0, 0, 0]);
    assert!(matches!(parse_flow(&bytes), Err(ConvertError::Malformed(_))));
    // Mixed families.
    let v6 = Flow::new(proto::TCP, "::1".parse().unwrap(), "::2".parse().unwrap(), 1, 2);
    let mut mixed = emit(|w| emit_tuple(w, cta::TUPLE_ORIG, &f, 0));
    mixed.extend(emit(|w| emit_tuple(w, cta::TUPLE_REPLY, &v6, 2)));
    assert_eq!(parse_flow(&mixed), Err(ConvertError::MixedFamilies));
}
