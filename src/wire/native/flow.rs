//! Flow bodies: the attributes of FLOW_NEW, FLOW_UPDATE and FLOW_REPAIR,
//! and the key of FLOW_DESTROY (see `docs/PROTOCOL.md`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{ATTR_HEADER_LEN, AttrIter, MAX_HELPER_LEN, attr, be16, be32, be128};
use crate::flow::{Addrs, EntryId, Flow, FlowExtra, FlowKey, SeqAdj, TcpInfo};
use crate::wire::{WireError, Writer};

const CORE_TAIL: usize = 24;
const CORE_V4_LEN: usize = 16 + CORE_TAIL;
const CORE_V6_LEN: usize = 64 + CORE_TAIL;
const KEY_V4_LEN: usize = 16;
const KEY_V6_LEN: usize = 40;
/// Largest flow attribute list ([`flow_attrs`]): CORE_V6, TCP and every
/// optional attribute with the longest helper name.
pub const MAX_FLOW_ATTRS: usize =
    8 * ATTR_HEADER_LEN + CORE_V6_LEN + 4 + 16 + MAX_HELPER_LEN + 24 + 8 + 9 + 4;
/// Largest key attribute ([`key_attr`]).
pub const MAX_KEY_ATTR: usize = ATTR_HEADER_LEN + KEY_V6_LEN;

/// The attributes of `f` exactly as FLOW_UPDATE carries them, written into
/// `buf`. Anti-entropy hashes these bytes, so that a flow and the copy a
/// peer decoded from them always hash alike.
pub fn flow_attrs<'b>(f: &Flow, buf: &'b mut [u8; MAX_FLOW_ATTRS]) -> &'b [u8] {
    let len = flow_len(f).min(MAX_FLOW_ATTRS);
    let mut w = Writer { buf: &mut buf[..len], at: 0 };
    emit_flow(f, &mut w);
    let end = w.at;
    &buf[..end]
}

/// The key attribute of `k` as FLOW_DESTROY carries it.
pub fn key_attr<'b>(k: &FlowKey, buf: &'b mut [u8; MAX_KEY_ATTR]) -> &'b [u8] {
    let len = ATTR_HEADER_LEN + if k.is_ipv6() { KEY_V6_LEN } else { KEY_V4_LEN };
    let mut w = Writer { buf: &mut buf[..len], at: 0 };
    emit_key(k, &mut w);
    let end = w.at;
    &buf[..end]
}

/// Bytes the attributes of a flow take.
pub(super) fn flow_len(f: &Flow) -> usize {
    let core = if f.is_ipv6() { CORE_V6_LEN } else { CORE_V4_LEN };
    let mut len = ATTR_HEADER_LEN + core;
    if f.tcp != TcpInfo::default() {
        len += ATTR_HEADER_LEN + 4;
    }
    if let Some(e) = f.extra() {
        let a = ATTR_HEADER_LEN;
        len += e.labels.map_or(0, |_| a + 16)
            + e.helper.as_ref().map_or(0, |h| a + helper_bytes(h).len())
            + e.seq_adj.map_or(0, |_| a + 24)
            + e.sctp_vtags.map_or(0, |_| a + 8)
            + e.dccp.map_or(0, |_| a + 9)
            + e.tuple_zones.map_or(0, |_| a + 4);
    }
    len
}

/// This format's attribute layout on the shared [`Writer`].
impl Writer<'_> {
    pub(super) fn tlv(&mut self, kind: u16, len: usize) {
        self.u16(kind);
        // Attribute values are at most MAX_HELPER_LEN or 88 bytes.
        self.u16(len as u16);
    }
}

pub(super) fn emit_flow(f: &Flow, w: &mut Writer<'_>) {
    match &f.addrs {
        Addrs::V4(a) => {
            w.tlv(attr::CORE_V4, CORE_V4_LEN);
            for ip in a {
                w.bytes(&ip.octets());
            }
        }
        Addrs::V6(a) => {
            w.tlv(attr::CORE_V6, CORE_V6_LEN);
            for ip in a.iter() {
                w.bytes(&ip.octets());
            }
        }
    }
    for p in f.l4 {
        w.u16(p);
    }
    w.u8(f.l4proto);
    w.u8(f.proto_state);
    w.u16(f.zone);
    w.u32(f.status);
    w.u32(f.timeout);
    w.u32(f.mark);
    if f.tcp != TcpInfo::default() {
        w.tlv(attr::TCP, 4);
        w.bytes(&[f.tcp.wscale_orig, f.tcp.wscale_reply, f.tcp.flags_orig, f.tcp.flags_reply]);
    }
    let Some(e) = f.extra() else { return };
    if let Some(l) = e.labels {
        w.tlv(attr::LABELS, 16);
        w.bytes(&l.to_be_bytes());
    }
    if let Some(h) = &e.helper {
        let name = helper_bytes(h);
        w.tlv(attr::HELPER, name.len());
        w.bytes(name);
    }
    if let Some(adj) = e.seq_adj {
        w.tlv(attr::SEQ_ADJ, 24);
        for a in adj {
            w.u32(a.correction_pos);
            w.u32(a.offset_before);
            w.u32(a.offset_after);
        }
    }
    if let Some([o, r]) = e.sctp_vtags {
        w.tlv(attr::SCTP_VTAGS, 8);
        w.u32(o);
        w.u32(r);
    }
    if let Some((role, seq)) = e.dccp {
        w.tlv(attr::DCCP, 9);
        w.u8(role);
        w.bytes(&seq.to_be_bytes());
    }
    if let Some([o, r]) = e.tuple_zones {
        w.tlv(attr::TUPLE_ZONES, 4);
        w.u16(o);
        w.u16(r);
    }
}

pub(super) fn emit_key(k: &FlowKey, w: &mut Writer<'_>) {
    emit_key_as(k, [attr::KEY_V4, attr::KEY_V6], w)
}

/// A key in the layout of KEY_V4 / KEY_V6 under the attribute types
/// `kinds` (IPv4, IPv6).
pub(super) fn emit_key_as(k: &FlowKey, kinds: [u16; 2], w: &mut Writer<'_>) {
    match (k.src, k.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            w.tlv(kinds[0], KEY_V4_LEN);
            w.bytes(&s.octets());
            w.bytes(&d.octets());
        }
        (s, d) => {
            w.tlv(kinds[1], KEY_V6_LEN);
            w.bytes(&v6(s).octets());
            w.bytes(&v6(d).octets());
        }
    }
    w.u16(k.l4[0]);
    w.u16(k.l4[1]);
    w.u8(k.l4proto);
    w.u8(0);
    w.u16(k.zone);
}

pub(super) fn parse_flow(body: &[u8]) -> Result<Flow, WireError> {
    let mut flow: Option<Flow> = None;
    let mut extra = FlowExtra::default();
    let mut tcp = TcpInfo::default();
    for a in AttrIter::new(body) {
        let (kind, v) = a?;
        let want =
            |n: usize| if v.len() == n { Ok(()) } else { Err(WireError::BadAttribute(kind)) };
        match kind {
            attr::CORE_V4 | attr::CORE_V6 => {
                if flow.is_some() {
                    return Err(WireError::BadMessage);
                }
                let (addrs, tail) = if kind == attr::CORE_V4 {
                    want(CORE_V4_LEN)?;
                    let ip = |i: usize| Ipv4Addr::from(be32(&v[i * 4..i * 4 + 4]));
                    (Addrs::V4([ip(0), ip(1), ip(2), ip(3)]), &v[16..])
                } else {
                    want(CORE_V6_LEN)?;
                    let ip = |i: usize| Ipv6Addr::from(be128(&v[i * 16..i * 16 + 16]));
                    (Addrs::V6(Box::new([ip(0), ip(1), ip(2), ip(3)])), &v[64..])
                };
                flow = Some(Flow {
                    addrs,
                    l4: [
                        be16(&tail[0..2]),
                        be16(&tail[2..4]),
                        be16(&tail[4..6]),
                        be16(&tail[6..8]),
                    ],
                    l4proto: tail[8],
                    proto_state: tail[9],
                    zone: be16(&tail[10..12]),
                    status: be32(&tail[12..16]),
                    timeout: be32(&tail[16..20]),
                    mark: be32(&tail[20..24]),
                    tcp: TcpInfo::default(),
                    entry_id: EntryId::default(),
                    extra: None,
                });
            }
            attr::TCP => {
                want(4)?;
                tcp = TcpInfo {
                    wscale_orig: v[0],
                    wscale_reply: v[1],
                    flags_orig: v[2],
                    flags_reply: v[3],
                };
            }
            attr::LABELS => {
                want(16)?;
                extra.labels = Some(be128(v));
            }
            attr::HELPER => {
                if v.len() > MAX_HELPER_LEN {
                    return Err(WireError::BadAttribute(kind));
                }
                let name = std::str::from_utf8(v).map_err(|_| WireError::BadMessage)?;
                extra.helper = Some(name.into());
            }
            attr::SEQ_ADJ => {
                want(24)?;
                let adj = |o: usize| SeqAdj {
                    correction_pos: be32(&v[o..o + 4]),
                    offset_before: be32(&v[o + 4..o + 8]),
                    offset_after: be32(&v[o + 8..o + 12]),
                };
                extra.seq_adj = Some([adj(0), adj(12)]);
            }
            attr::SCTP_VTAGS => {
                want(8)?;
                extra.sctp_vtags = Some([be32(&v[0..4]), be32(&v[4..8])]);
            }
            attr::DCCP => {
                want(9)?;
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&v[1..9]);
                extra.dccp = Some((v[0], u64::from_be_bytes(seq)));
            }
            attr::TUPLE_ZONES => {
                want(4)?;
                extra.tuple_zones = Some([be16(&v[0..2]), be16(&v[2..4])]);
            }
            // A newer peer's attribute: skipped, not fatal.
            _ => {}
        }
    }
    let mut flow = flow.ok_or(WireError::BadMessage)?;
    flow.tcp = tcp;
    flow.extra = Some(Box::new(extra));
    flow.normalize();
    Ok(flow)
}

pub(super) fn parse_key(body: &[u8]) -> Result<FlowKey, WireError> {
    parse_key_as(body, [attr::KEY_V4, attr::KEY_V6])
}

/// The one key of `body` under the attribute types `kinds` (IPv4, IPv6);
/// other attributes are skipped.
pub(super) fn parse_key_as(body: &[u8], kinds: [u16; 2]) -> Result<FlowKey, WireError> {
    let mut key = None;
    for a in AttrIter::new(body) {
        let (kind, v) = a?;
        let Some(key_value) = key_value(kind, v, kinds)? else { continue };
        if key.is_some() {
            return Err(WireError::BadMessage);
        }
        key = Some(key_value);
    }
    key.ok_or(WireError::BadMessage)
}

/// Decode `v` as a key when `kind` is one of `kinds` (IPv4, IPv6).
pub(super) fn key_value(
    kind: u16,
    v: &[u8],
    kinds: [u16; 2],
) -> Result<Option<FlowKey>, WireError> {
    {
        let (src, dst, tail) = match kind {
            k if k == kinds[0] => {
                if v.len() != KEY_V4_LEN {
                    return Err(WireError::BadAttribute(kind));
                }
                let s = IpAddr::V4(be32(&v[0..4]).into());
                (s, IpAddr::V4(be32(&v[4..8]).into()), &v[8..])
            }
            k if k == kinds[1] => {
                if v.len() != KEY_V6_LEN {
                    return Err(WireError::BadAttribute(kind));
                }
                let s = IpAddr::V6(be128(&v[0..16]).into());
                (s, IpAddr::V6(be128(&v[16..32]).into()), &v[32..])
            }
            _ => return Ok(None),
        };
        Ok(Some(FlowKey {
            src,
            dst,
            l4: [be16(&tail[0..2]), be16(&tail[2..4])],
            l4proto: tail[4],
            zone: be16(&tail[6..8]),
        }))
    }
}

pub(super) fn key_len(k: &FlowKey) -> usize {
    ATTR_HEADER_LEN + if k.is_ipv6() { KEY_V6_LEN } else { KEY_V4_LEN }
}

/// The helper name as sent: longer names are cut at a char boundary
/// rather than refused (kernel helper names are at most 16 bytes).
pub(super) fn helper_bytes(h: &str) -> &[u8] {
    let mut n = h.len().min(MAX_HELPER_LEN);
    while !h.is_char_boundary(n) {
        n -= 1;
    }
    &h.as_bytes()[..n]
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::tcp_flow;
    use super::*;
    use crate::wire::native::{
        CRC_LEN, DEFAULT_MAX_DATAGRAM, HEADER_LEN, MessagePacket, attr, emit_message, message_len,
    };
    use crate::wire::{Message, MessageRef};

    #[test]
    fn ipv4_tcp_flow_fixture() {
        let f = tcp_flow();
        let mut buf = [0u8; 128];
        let len = emit_message(&MessageRef::FlowUpdate(&f), &mut buf).unwrap();
        #[rustfmt::skip]
        let want: &[u8] = &[
            2, 0, 0, 56,                    // FLOW_UPDATE, flags, length 56
            0, 1, 0, 40,                    // CORE_V4, 40 bytes
            10, 0, 0, 1, 192, 168, 1, 2,    // orig src, dst
            192, 168, 1, 2, 10, 0, 0, 1,    // reply src, dst
            0x9c, 0x40, 0x01, 0xbb, 0x01, 0xbb, 0x9c, 0x40, // ports
            6, 3, 0, 0,                     // tcp, ESTABLISHED, zone 0
            0, 0, 0, 0x0e,                  // status
            0, 0x06, 0x97, 0x7f,            // timeout 431999
            0, 0, 0, 7,                     // mark
            0, 3, 0, 4, 7, 8, 0x23, 0x03,   // TCP info
        ];
        assert_eq!(&buf[..len], want);
        assert!(len <= 64, "common flows must stay compact");
        let parsed = MessagePacket::new_checked(&buf[..len]).unwrap().parse().unwrap();
        assert_eq!(parsed, Message::FlowUpdate(f));
    }

    #[test]
    fn unknown_attribute_is_skipped_and_wrong_length_is_refused() {
        let f = tcp_flow();
        let mut buf = [0u8; 128];
        let len = emit_message(&MessageRef::FlowUpdate(&f), &mut buf).unwrap();
        // Append an unknown attribute 999 with 3 bytes.
        buf[len..len + 7].copy_from_slice(&[0x03, 0xe7, 0, 3, 1, 2, 3]);
        let new_len = (len + 7) as u16;
        buf[2..4].copy_from_slice(&new_len.to_be_bytes());
        let m = MessagePacket::new_checked(&buf[..len + 7]).unwrap();
        assert_eq!(m.parse().unwrap(), Message::FlowUpdate(f));
        // TCP attribute declared 3 bytes long.
        let mut bad = buf;
        bad[51] = 3;
        bad[2..4].copy_from_slice(&((len - 1) as u16).to_be_bytes());
        let m = MessagePacket::new_checked(&bad[..len - 1]).unwrap();
        assert_eq!(m.parse(), Err(WireError::BadAttribute(attr::TCP)));
    }

    #[test]
    fn many_flows_fit_one_datagram() {
        let f = tcp_flow();
        let per = message_len(&MessageRef::FlowUpdate(&f));
        assert!((DEFAULT_MAX_DATAGRAM - HEADER_LEN - CRC_LEN) / per >= 25);
    }
}
