//! [`Flow`] → ctnetlink attributes, written straight into the caller's
//! batch buffer through [`AttrWriter`].

use std::net::IpAddr;

use netlink_packet_core::NlaBuffer;

use super::{EmitOptions, STATUS_NOT_SENT, TCP_FLAGS_SYNCED, cta, labels_to_bytes, nested, tuple};
use crate::flow::{Addrs, Dir, Flow, FlowKey, SeqAdj, proto, status, tcp_flag};

/// Append a flow's create attributes: both tuples, NAT, status with
/// `IPS_CONFIRMED`, timeout, mark, zone, protoinfo, labels, helper and
/// sequence adjustment.
///
/// A NAT flow is sent with the reply tuple of the same flow without NAT,
/// plus `CTA_NAT_SRC`/`CTA_NAT_DST`: the kernel then rewrites the reply
/// tuple itself and sets `IPS_SRC_NAT`/`IPS_DST_NAT`, which is what makes it
/// translate packets. Given the translated reply tuple instead, it keeps
/// that tuple but, seeing nothing to change, sets no NAT bit, and the
/// entry's packets would go out untranslated.
pub fn emit_create(w: &mut AttrWriter<'_>, flow: &Flow, opts: &EmitOptions) {
    emit_tuple(w, cta::TUPLE_ORIG, flow, 0);
    let snat = flow.snat();
    let dnat = flow.dnat();
    if snat.is_some() || dnat.is_some() {
        emit_untranslated_reply(w, flow);
    } else {
        emit_tuple(w, cta::TUPLE_REPLY, flow, 2);
    }
    // The port goes with the address even when NAT kept it: without it the
    // kernel picks another one when an entry holds the mapping, silently.
    let ports = flow.has_ports();
    if let Some(nat) = snat {
        emit_nat(w, cta::NAT_SRC, nat.addr, ports.then(|| flow.dport(Dir::Reply)));
    }
    if let Some(nat) = dnat {
        emit_nat(w, cta::NAT_DST, nat.addr, ports.then(|| flow.sport(Dir::Reply)));
    }
    if let Some(helper) = flow.helper() {
        let n = w.begin_nest(cta::HELP);
        let mut name = Vec::with_capacity(helper.len() + 1);
        name.extend_from_slice(helper.as_bytes());
        name.push(0);
        w.put(nested::HELP_NAME, &name);
        w.end_nest(n);
    }
    emit_mutable(w, flow, opts);
}

/// Append an update's attributes: the original tuple (the lookup key) and
/// the fields the kernel lets an existing entry change. Reply tuple, NAT and
/// helper are left out: the kernel refuses to change them.
pub fn emit_update(w: &mut AttrWriter<'_>, flow: &Flow, opts: &EmitOptions) {
    emit_tuple(w, cta::TUPLE_ORIG, flow, 0);
    emit_mutable(w, flow, opts);
}

/// Append only what an update of the timeout needs.
pub fn emit_timeout_update(w: &mut AttrWriter<'_>, flow: &Flow, secs: u32) {
    emit_tuple(w, cta::TUPLE_ORIG, flow, 0);
    if flow.zone != 0 {
        w.put_u16_be(cta::ZONE, flow.zone);
    }
    w.put_u32_be(cta::TIMEOUT, secs);
}

/// Append the attributes that identify an entry for a delete.
pub fn emit_key(w: &mut AttrWriter<'_>, key: &FlowKey) {
    let t = w.begin_nest(cta::TUPLE_ORIG);
    emit_addrs(w, key.src, key.dst);
    emit_proto(w, key.l4proto, key.is_ipv6(), key.l4);
    w.end_nest(t);
    if key.zone != 0 {
        w.put_u16_be(cta::ZONE, key.zone);
    }
}

/// The status a create or update carries.
pub fn status_to_send(flow_status: u32) -> u32 {
    (flow_status & !STATUS_NOT_SENT) | status::CONFIRMED
}

fn emit_mutable(w: &mut AttrWriter<'_>, flow: &Flow, opts: &EmitOptions) {
    w.put_u32_be(cta::STATUS, status_to_send(flow.status));
    w.put_u32_be(cta::TIMEOUT, opts.timeout.unwrap_or(flow.timeout));
    w.put_u32_be(cta::MARK, flow.mark);
    if flow.zone != 0 {
        w.put_u16_be(cta::ZONE, flow.zone);
    }
    emit_protoinfo(w, flow, opts.be_liberal);
    if let Some(extra) = flow.extra() {
        if let Some(labels) = extra.labels {
            w.put(cta::LABELS, &labels_to_bytes(labels));
        }
        if let Some([o, r]) = extra.seq_adj {
            emit_seq_adj(w, cta::SEQ_ADJ_ORIG, &o);
            emit_seq_adj(w, cta::SEQ_ADJ_REPLY, &r);
        }
    }
}

pub(super) fn emit_tuple(w: &mut AttrWriter<'_>, kind: u16, flow: &Flow, i: usize) {
    let t = w.begin_nest(kind);
    let (src, dst) = match &flow.addrs {
        Addrs::V4(a) => (IpAddr::V4(a[i]), IpAddr::V4(a[i + 1])),
        Addrs::V6(a) => (IpAddr::V6(a[i]), IpAddr::V6(a[i + 1])),
    };
    emit_addrs(w, src, dst);
    emit_proto(w, flow.l4proto, flow.is_ipv6(), [flow.l4[i], flow.l4[i + 1]]);
    if let Some(zones) = flow.extra().and_then(|e| e.tuple_zones) {
        w.put_u16_be(tuple::ZONE, zones[i / 2]);
    }
    w.end_nest(t);
}

/// The reply tuple as if there were no NAT: the inverse of the original.
fn emit_untranslated_reply(w: &mut AttrWriter<'_>, flow: &Flow) {
    let t = w.begin_nest(cta::TUPLE_REPLY);
    emit_addrs(w, flow.dst(Dir::Orig), flow.src(Dir::Orig));
    let l4 = if flow.has_ports() {
        [flow.dport(Dir::Orig), flow.sport(Dir::Orig)]
    } else {
        // ICMP: the id of the original and the reply's own type and code.
        [flow.sport(Dir::Orig), flow.dport(Dir::Reply)]
    };
    emit_proto(w, flow.l4proto, flow.is_ipv6(), l4);
    if let Some(zones) = flow.extra().and_then(|e| e.tuple_zones) {
        w.put_u16_be(tuple::ZONE, zones[1]);
    }
    w.end_nest(t);
}

pub(in crate::netlink) fn emit_addrs(w: &mut AttrWriter<'_>, src: IpAddr, dst: IpAddr) {
    let ip = w.begin_nest(tuple::IP);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            w.put(tuple::IP_V4_SRC, &s.octets());
            w.put(tuple::IP_V4_DST, &d.octets());
        }
        (s, d) => {
            w.put(tuple::IP_V6_SRC, &to_v6(s).octets());
            w.put(tuple::IP_V6_DST, &to_v6(d).octets());
        }
    }
    w.end_nest(ip);
}

pub(in crate::netlink) fn emit_proto(
    w: &mut AttrWriter<'_>,
    l4proto: u8,
    ipv6: bool,
    l4: [u16; 2],
) {
    let p = w.begin_nest(tuple::PROTO);
    w.put(tuple::PROTO_NUM, &[l4proto]);
    match l4proto {
        proto::ICMP | proto::ICMPV6 => {
            let (id, ty, code) = if ipv6 && l4proto == proto::ICMPV6 {
                (tuple::ICMPV6_ID, tuple::ICMPV6_TYPE, tuple::ICMPV6_CODE)
            } else {
                (tuple::ICMP_ID, tuple::ICMP_TYPE, tuple::ICMP_CODE)
            };
            let [t, c] = l4[1].to_be_bytes();
            w.put_u16_be(id, l4[0]);
            w.put(ty, &[t]);
            w.put(code, &[c]);
        }
        proto::TCP | proto::UDP | proto::UDPLITE | proto::SCTP | proto::DCCP | proto::GRE => {
            w.put_u16_be(tuple::PROTO_SRC_PORT, l4[0]);
            w.put_u16_be(tuple::PROTO_DST_PORT, l4[1]);
        }
        _ => {}
    }
    w.end_nest(p);
}

fn emit_nat(w: &mut AttrWriter<'_>, kind: u16, addr: IpAddr, port: Option<u16>) {
    let n = w.begin_nest(kind);
    match addr {
        IpAddr::V4(a) => {
            w.put(nested::NAT_V4_MINIP, &a.octets());
            w.put(nested::NAT_V4_MAXIP, &a.octets());
        }
        IpAddr::V6(a) => {
            w.put(nested::NAT_V6_MINIP, &a.octets());
            w.put(nested::NAT_V6_MAXIP, &a.octets());
        }
    }
    if let Some(port) = port {
        let p = w.begin_nest(nested::NAT_PROTO);
        w.put_u16_be(nested::PROTONAT_PORT_MIN, port);
        w.put_u16_be(nested::PROTONAT_PORT_MAX, port);
        w.end_nest(p);
    }
    w.end_nest(n);
}

fn emit_protoinfo(w: &mut AttrWriter<'_>, flow: &Flow, be_liberal: bool) {
    match flow.l4proto {
        proto::TCP => {
            let pi = w.begin_nest(cta::PROTOINFO);
            let tcp = w.begin_nest(nested::PROTOINFO_TCP);
            w.put(nested::TCP_STATE, &[flow.proto_state]);
            w.put(nested::TCP_WSCALE_ORIG, &[flow.tcp.wscale_orig]);
            w.put(nested::TCP_WSCALE_REPLY, &[flow.tcp.wscale_reply]);
            let liberal = if be_liberal { tcp_flag::BE_LIBERAL } else { 0 };
            let orig = (flow.tcp.flags_orig | liberal) & TCP_FLAGS_SYNCED;
            let reply = (flow.tcp.flags_reply | liberal) & TCP_FLAGS_SYNCED;
            // `struct nf_ct_tcp_flags { flags, mask }`: the kernel clears the
            // masked bits, then sets those of `flags`.
            w.put(nested::TCP_FLAGS_ORIG, &[orig, TCP_FLAGS_SYNCED]);
            w.put(nested::TCP_FLAGS_REPLY, &[reply, TCP_FLAGS_SYNCED]);
            w.end_nest(tcp);
            w.end_nest(pi);
        }
        proto::SCTP => {
            let pi = w.begin_nest(cta::PROTOINFO);
            let sctp = w.begin_nest(nested::PROTOINFO_SCTP);
            let [vo, vr] = flow.extra().and_then(|e| e.sctp_vtags).unwrap_or([0, 0]);
            w.put(nested::SCTP_STATE, &[flow.proto_state]);
            w.put_u32_be(nested::SCTP_VTAG_ORIG, vo);
            w.put_u32_be(nested::SCTP_VTAG_REPLY, vr);
            w.end_nest(sctp);
            w.end_nest(pi);
        }
        proto::DCCP => {
            let pi = w.begin_nest(cta::PROTOINFO);
            let dccp = w.begin_nest(nested::PROTOINFO_DCCP);
            let (role, seq) = flow.extra().and_then(|e| e.dccp).unwrap_or((0, 0));
            w.put(nested::DCCP_STATE, &[flow.proto_state]);
            w.put(nested::DCCP_ROLE, &[role]);
            w.put(nested::DCCP_HANDSHAKE_SEQ, &seq.to_be_bytes());
            w.end_nest(dccp);
            w.end_nest(pi);
        }
        _ => {}
    }
}

fn emit_seq_adj(w: &mut AttrWriter<'_>, kind: u16, adj: &SeqAdj) {
    let n = w.begin_nest(kind);
    w.put_u32_be(nested::SEQADJ_CORRECTION_POS, adj.correction_pos);
    w.put_u32_be(nested::SEQADJ_OFFSET_BEFORE, adj.offset_before);
    w.put_u32_be(nested::SEQADJ_OFFSET_AFTER, adj.offset_after);
    w.end_nest(n);
}

fn to_v6(a: IpAddr) -> std::net::Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// Appends netlink attributes to a buffer; nests are patched with their
/// length when they end.
pub struct AttrWriter<'a> {
    buf: &'a mut Vec<u8>,
}

/// An open nest: where its header starts.
#[must_use]
pub struct Nest(usize);

impl<'a> AttrWriter<'a> {
    /// Write at the end of `buf`, which must be 4-byte aligned.
    pub fn new(buf: &'a mut Vec<u8>) -> AttrWriter<'a> {
        AttrWriter { buf }
    }

    /// One attribute with its value, padded to 4 bytes.
    pub fn put(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.header(kind, len);
        self.buf.extend_from_slice(value);
        let pad = len.next_multiple_of(4) - len;
        self.buf.extend_from_slice(&[0; 3][..pad]);
    }

    /// A big-endian u16 attribute.
    pub fn put_u16_be(&mut self, kind: u16, v: u16) {
        self.put(kind, &v.to_be_bytes());
    }

    /// A big-endian u32 attribute.
    pub fn put_u32_be(&mut self, kind: u16, v: u32) {
        self.put(kind, &v.to_be_bytes());
    }

    /// Open a nested attribute.
    pub fn begin_nest(&mut self, kind: u16) -> Nest {
        let at = self.buf.len();
        self.header(kind, 4);
        NlaBuffer::new(&mut self.buf[at..at + 4]).set_nested_flag();
        Nest(at)
    }

    /// Close a nest: its length covers everything written since it began.
    pub fn end_nest(&mut self, nest: Nest) {
        let len = self.buf.len() - nest.0;
        let mut nla = NlaBuffer::new(&mut self.buf[nest.0..nest.0 + 4]);
        nla.set_length(u16::try_from(len).unwrap_or(u16::MAX));
    }

    /// `struct nlattr { u16 nla_len; u16 nla_type; }` in host order, written
    /// directly: this runs about fifteen times per committed flow.
    fn header(&mut self, kind: u16, len: usize) {
        let len = u16::try_from(len).unwrap_or(u16::MAX);
        let [l0, l1] = len.to_ne_bytes();
        let [k0, k1] = kind.to_ne_bytes();
        self.buf.extend_from_slice(&[l0, l1, k0, k1]);
    }
}
