//! CT message bodies: a [`Flow`] from conntrackd's attributes (rebuilding
//! the reply tuple from the NAT attributes) and back in `ct2msg` order,
//! with the length each takes. Where conntrackd puts a port little-endian,
//! the code says so.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    MAX_HELPER_LEN, SIZES, addr_len, attr_len, be16, be32, for_each_nta, ip4, ip6, le16, nta, to_v6,
};
use crate::flow::{Dir, Flow, FlowKey, SeqAdj, proto};
use crate::wire::{WireError, Writer};

/// Parse the attributes of a CT message into a flow, rebuilding the reply
/// tuple from the NAT attributes as conntrackd does on commit.
pub fn parse_flow(body: &[u8]) -> Result<Flow, WireError> {
    let mut v4: Option<[Ipv4Addr; 2]> = None;
    let mut v6: Option<[Ipv6Addr; 2]> = None;
    let mut l4proto = None;
    let mut ports = [0u16; 2];
    let mut icmp = [0u8; 2];
    let mut icmp_id = 0u16;
    let mut snat: Option<IpAddr> = None;
    let mut dnat: Option<IpAddr> = None;
    let mut spat = None;
    let mut dpat = None;
    let mut flow = Flow::new_v4(0, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, 0, 0);
    let mut vtags: [Option<u32>; 2] = [None, None];
    for_each_nta(body, &SIZES, |kind, v| {
        match kind {
            nta::IPV4 => v4 = Some([ip4(&v[0..4]), ip4(&v[4..8])]),
            nta::IPV6 => v6 = Some([ip6(&v[0..16]), ip6(&v[16..32])]),
            nta::L4PROTO => l4proto = Some(v[0]),
            nta::PORT => ports = [be16(&v[0..2]), be16(&v[2..4])],
            nta::TCP_STATE | nta::SCTP_STATE | nta::DCCP_STATE => flow.proto_state = v[0],
            nta::STATUS => flow.status = be32(v),
            nta::TIMEOUT => flow.timeout = be32(v),
            nta::MARK => flow.mark = be32(v),
            nta::SNAT_IPV4 => snat = Some(IpAddr::V4(ip4(v))),
            nta::DNAT_IPV4 => dnat = Some(IpAddr::V4(ip4(v))),
            nta::SNAT_IPV6 => snat = Some(IpAddr::V6(ip6(v))),
            nta::DNAT_IPV6 => dnat = Some(IpAddr::V6(ip6(v))),
            nta::SPAT_PORT => spat = Some(le16(v)),
            nta::DPAT_PORT => dpat = Some(le16(v)),
            nta::NAT_SEQ_ADJ => {
                let adj = |i: usize| SeqAdj {
                    correction_pos: be32(&v[i..i + 4]),
                    offset_before: be32(&v[i + 4..i + 8]),
                    offset_after: be32(&v[i + 8..i + 12]),
                };
                flow.extra_mut().seq_adj = Some([adj(0), adj(12)]);
            }
            nta::SCTP_VTAG_ORIG => vtags[0] = Some(be32(v)),
            nta::SCTP_VTAG_REPL => vtags[1] = Some(be32(v)),
            nta::DCCP_ROLE => flow.extra_mut().dccp = Some((v[0], 0)),
            nta::ICMP_TYPE => icmp[0] = v[0],
            nta::ICMP_CODE => icmp[1] = v[0],
            nta::ICMP_ID => icmp_id = le16(v),
            nta::TCP_WSCALE_ORIG => flow.tcp.wscale_orig = v[0],
            nta::TCP_WSCALE_REPL => flow.tcp.wscale_reply = v[0],
            nta::HELPER_NAME => {
                let name = v.split(|&b| b == 0).next().unwrap_or(&[]);
                let name = std::str::from_utf8(name).map_err(|_| WireError::BadMessage)?;
                if !name.is_empty() {
                    flow.extra_mut().helper = Some(name.into());
                }
            }
            nta::LABELS => {
                let mut labels = 0u128;
                for (w, word) in v.chunks_exact(4).take(4).enumerate() {
                    labels |= u128::from(be32(word)) << (32 * w);
                }
                if labels != 0 {
                    flow.extra_mut().labels = Some(labels);
                }
            }
            nta::ZONE => flow.zone = be16(v),
            // Master tuples and synproxy offsets have no place in a Flow.
            _ => {}
        }
        Ok(())
    })?;
    let l4proto = l4proto.ok_or(WireError::BadMessage)?;
    let (src, dst) = match (v4, v6) {
        (Some([s, d]), None) => (IpAddr::V4(s), IpAddr::V4(d)),
        (None, Some([s, d])) => (IpAddr::V6(s), IpAddr::V6(d)),
        _ => return Err(WireError::BadMessage),
    };
    let mut out = if matches!(l4proto, proto::ICMP | proto::ICMPV6) {
        let mut f = Flow::new(l4proto, src, dst, icmp_id, u16::from_be_bytes(icmp));
        let reply_type = icmp_reply_type(l4proto, icmp[0]);
        f.l4[3] = u16::from_be_bytes([reply_type, icmp[1]]);
        f
    } else {
        Flow::new(l4proto, src, dst, ports[0], ports[1])
    };
    if let Some(a) = snat {
        let reply_src = out.src(Dir::Reply);
        out.set_addrs(Dir::Reply, reply_src, a);
    }
    if let Some(a) = dnat {
        let reply_dst = out.dst(Dir::Reply);
        out.set_addrs(Dir::Reply, a, reply_dst);
    }
    if out.has_ports() {
        if let Some(p) = spat {
            out.l4[3] = p;
        }
        if let Some(p) = dpat {
            out.l4[2] = p;
        }
    }
    if let [Some(o), Some(r)] = vtags {
        flow.extra_mut().sctp_vtags = Some([o, r]);
    }
    out.status = flow.status;
    out.timeout = flow.timeout;
    out.mark = flow.mark;
    out.zone = flow.zone;
    out.proto_state = flow.proto_state;
    out.tcp = flow.tcp;
    out.extra = flow.extra;
    out.normalize();
    Ok(out)
}

/// The ICMP type of the reply tuple, as the kernel inverts it
/// (`invmap` in nf_conntrack_proto_icmp.c / icmpv6.c).
fn icmp_reply_type(l4proto: u8, t: u8) -> u8 {
    match (l4proto, t) {
        (proto::ICMP, 8) => 0,
        (proto::ICMP, 0) => 8,
        (proto::ICMP, 13) => 14,
        (proto::ICMP, 14) => 13,
        (proto::ICMP, 15) => 16,
        (proto::ICMP, 16) => 15,
        (proto::ICMP, 17) => 18,
        (proto::ICMP, 18) => 17,
        (proto::ICMPV6, 128) => 129,
        (proto::ICMPV6, 129) => 128,
        (proto::ICMPV6, 139) => 140,
        (proto::ICMPV6, 140) => 139,
        (_, t) => t,
    }
}

fn is_icmp(l4proto: u8) -> bool {
    matches!(l4proto, proto::ICMP | proto::ICMPV6)
}

/// True when `l4proto` gets an `NTA_PORT` (GRE keys travel as ports too).
fn carries_ports(l4proto: u8) -> bool {
    matches!(
        l4proto,
        proto::TCP | proto::UDP | proto::UDPLITE | proto::SCTP | proto::DCCP | proto::GRE
    )
}

/// The helper name as sent, if conntrackd can take it.
fn helper_of(f: &Flow) -> Option<&str> {
    f.helper().filter(|h| !h.is_empty() && h.len() <= MAX_HELPER_LEN)
}

fn nat_attrs(f: &Flow) -> [Option<IpAddr>; 2] {
    let snat = f.dst(Dir::Reply);
    let dnat = f.src(Dir::Reply);
    [(snat != f.src(Dir::Orig)).then_some(snat), (dnat != f.dst(Dir::Orig)).then_some(dnat)]
}

fn pat_attrs(f: &Flow) -> [Option<u16>; 2] {
    if !f.has_ports() {
        return [None, None];
    }
    [(f.l4[3] != f.l4[0]).then_some(f.l4[3]), (f.l4[2] != f.l4[1]).then_some(f.l4[2])]
}

pub(super) fn flow_len(f: &Flow) -> usize {
    let mut len = addr_len(f.is_ipv6()) + attr_len(4) + attr_len(1);
    len += proto_len(f.l4proto, f.extra().and_then(|e| e.sctp_vtags).is_some(), f.extra());
    if f.timeout != 0 {
        len += attr_len(4);
    }
    if f.mark != 0 {
        len += attr_len(4);
    }
    for a in nat_attrs(f).into_iter().flatten() {
        len += attr_len(if a.is_ipv6() { 16 } else { 4 });
    }
    len += pat_attrs(f).iter().flatten().count() * attr_len(2);
    if let Some(e) = f.extra() {
        if e.seq_adj.is_some() {
            len += attr_len(24);
        }
        if e.labels.is_some_and(|l| l != 0) {
            len += attr_len(16);
        }
    }
    if let Some(h) = helper_of(f) {
        len += attr_len(h.len() + 1);
    }
    if f.zone != 0 {
        len += attr_len(2);
    }
    len
}

fn proto_len(l4proto: u8, vtags: bool, extra: Option<&crate::flow::FlowExtra>) -> usize {
    let mut len = 0;
    if carries_ports(l4proto) {
        len += attr_len(4);
    }
    match l4proto {
        proto::TCP => len += attr_len(1),
        proto::SCTP => len += attr_len(1) + if vtags { 2 * attr_len(4) } else { 0 },
        proto::DCCP => {
            len += attr_len(1) + if extra.and_then(|e| e.dccp).is_some() { attr_len(1) } else { 0 }
        }
        p if is_icmp(p) => len += 2 * attr_len(1) + attr_len(2),
        _ => {}
    }
    len
}

pub(super) fn key_len(k: &FlowKey) -> usize {
    let mut len = addr_len(k.is_ipv6()) + attr_len(1);
    if carries_ports(k.l4proto) {
        len += attr_len(4);
    } else if is_icmp(k.l4proto) {
        len += 2 * attr_len(1) + attr_len(2);
    }
    if k.zone != 0 {
        len += attr_len(2);
    }
    len
}

/// Flow attributes on the shared [`Writer`].
impl Writer<'_> {
    fn addrs(&mut self, src: IpAddr, dst: IpAddr) {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut v = [0u8; 8];
                v[..4].copy_from_slice(&s.octets());
                v[4..].copy_from_slice(&d.octets());
                self.nta(nta::IPV4, &v);
            }
            (s, d) => {
                let mut v = [0u8; 32];
                v[..16].copy_from_slice(&to_v6(s).octets());
                v[16..].copy_from_slice(&to_v6(d).octets());
                self.nta(nta::IPV6, &v);
            }
        }
    }
    fn l4(&mut self, l4proto: u8, l4: [u16; 2]) {
        if carries_ports(l4proto) {
            let mut v = [0u8; 4];
            v[..2].copy_from_slice(&l4[0].to_be_bytes());
            v[2..].copy_from_slice(&l4[1].to_be_bytes());
            self.nta(nta::PORT, &v);
        }
    }
    fn icmp(&mut self, l4: [u16; 2]) {
        let [t, c] = l4[1].to_be_bytes();
        self.nta(nta::ICMP_TYPE, &[t]);
        self.nta(nta::ICMP_CODE, &[c]);
        // conntrackd's byte-order quirk: little-endian on the wire.
        self.nta(nta::ICMP_ID, &l4[0].to_le_bytes());
    }
}

/// conntrackd's `ct2msg` order.
pub(super) fn emit_flow(f: &Flow, w: &mut Writer<'_>) {
    w.addrs(f.src(Dir::Orig), f.dst(Dir::Orig));
    w.nta(nta::STATUS, &f.status.to_be_bytes());
    w.nta(nta::L4PROTO, &[f.l4proto]);
    let orig = [f.l4[0], f.l4[1]];
    w.l4(f.l4proto, orig);
    let extra = f.extra();
    match f.l4proto {
        proto::TCP => w.nta(nta::TCP_STATE, &[f.proto_state]),
        proto::SCTP => {
            w.nta(nta::SCTP_STATE, &[f.proto_state]);
            if let Some([o, r]) = extra.and_then(|e| e.sctp_vtags) {
                w.nta(nta::SCTP_VTAG_ORIG, &o.to_be_bytes());
                w.nta(nta::SCTP_VTAG_REPL, &r.to_be_bytes());
            }
        }
        proto::DCCP => {
            w.nta(nta::DCCP_STATE, &[f.proto_state]);
            if let Some((role, _)) = extra.and_then(|e| e.dccp) {
                w.nta(nta::DCCP_ROLE, &[role]);
            }
        }
        p if is_icmp(p) => w.icmp(orig),
        _ => {}
    }
    if f.timeout != 0 {
        w.nta(nta::TIMEOUT, &f.timeout.to_be_bytes());
    }
    if f.mark != 0 {
        w.nta(nta::MARK, &f.mark.to_be_bytes());
    }
    let [snat, dnat] = nat_attrs(f);
    for (addr, k4, k6) in
        [(snat, nta::SNAT_IPV4, nta::SNAT_IPV6), (dnat, nta::DNAT_IPV4, nta::DNAT_IPV6)]
    {
        match addr {
            Some(IpAddr::V4(a)) => w.nta(k4, &a.octets()),
            Some(IpAddr::V6(a)) => w.nta(k6, &a.octets()),
            None => {}
        }
    }
    let [spat, dpat] = pat_attrs(f);
    // conntrackd's byte-order quirk: little-endian on the wire.
    if let Some(p) = spat {
        w.nta(nta::SPAT_PORT, &p.to_le_bytes());
    }
    if let Some(p) = dpat {
        w.nta(nta::DPAT_PORT, &p.to_le_bytes());
    }
    if let Some([o, r]) = extra.and_then(|e| e.seq_adj) {
        let mut v = [0u8; 24];
        for (i, x) in [
            o.correction_pos,
            o.offset_before,
            o.offset_after,
            r.correction_pos,
            r.offset_before,
            r.offset_after,
        ]
        .into_iter()
        .enumerate()
        {
            v[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
        }
        w.nta(nta::NAT_SEQ_ADJ, &v);
    }
    if let Some(h) = helper_of(f) {
        let mut v = [0u8; MAX_HELPER_LEN + 1];
        v[..h.len()].copy_from_slice(h.as_bytes());
        w.nta(nta::HELPER_NAME, &v[..h.len() + 1]);
    }
    if let Some(l) = extra.and_then(|e| e.labels).filter(|&l| l != 0) {
        let mut v = [0u8; 16];
        for i in 0..4 {
            v[i * 4..i * 4 + 4].copy_from_slice(&((l >> (32 * i)) as u32).to_be_bytes());
        }
        w.nta(nta::LABELS, &v);
    }
    if f.zone != 0 {
        w.nta(nta::ZONE, &f.zone.to_be_bytes());
    }
}

/// A DEL for a flow we only have the key of: the original tuple and zone,
/// which is what conntrackd's cache looks entries up by.
pub(super) fn emit_key(k: &FlowKey, w: &mut Writer<'_>) {
    w.addrs(k.src, k.dst);
    w.nta(nta::L4PROTO, &[k.l4proto]);
    if carries_ports(k.l4proto) {
        w.l4(k.l4proto, k.l4);
    } else if is_icmp(k.l4proto) {
        w.icmp(k.l4);
    }
    if k.zone != 0 {
        w.nta(nta::ZONE, &k.zone.to_be_bytes());
    }
}
