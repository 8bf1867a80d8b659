//! [`Flow`] ⇄ ctnetlink attributes, in one place.
//!
//! Decoding on the hot path ([`parse_flow`]: every event, every dumped
//! entry) reads the attributes as views over the message bytes with
//! `netlink-packet-core`'s `NlasIterator`, allocating nothing for a common
//! flow: the crate's typed trees (a `Vec` per nesting level, a copy of every
//! attribute it does not know) cost more than the rest of an event's path
//! through the daemon. [`parse_flow_typed`] decodes the same bytes through
//! `netlink-packet-netfilter`'s typed attributes (tuples, TCP protoinfo,
//! status, timeout, mark; zone, labels, helper, sequence adjustment, ICMP
//! tuple fields, per-tuple zones, SCTP and DCCP arrive there as
//! `Other(DefaultNla)`); the tests hold both to the same result. The
//! constants are those of `include/uapi/linux/netfilter/nfnetlink_conntrack.h`.
//!
//! Encoding writes attribute bytes straight into the caller's batch buffer
//! ([`AttrWriter`]): a commit emits hundreds of thousands of flows per
//! second, and building the crate's attribute trees (a `Vec` per nesting
//! level, per flow) would cost more than the kernel's own insert. The unit
//! tests parse what we emit back through the crate, so both sides agree.

use std::net::IpAddr;

use netlink_packet_core::{DecodeError, DefaultNla, Nla, NlaBuffer, NlasIterator, Parseable};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Tuple,
};

use crate::flow::{Addrs, Dir, EntryId, Flow, FlowKey, SeqAdj, proto, status, tcp_flag};

/// Top-level `CTA_*` attribute numbers.
pub mod cta {
    pub const TUPLE_ORIG: u16 = 1;
    pub const TUPLE_REPLY: u16 = 2;
    pub const STATUS: u16 = 3;
    pub const PROTOINFO: u16 = 4;
    pub const HELP: u16 = 5;
    pub const NAT_SRC: u16 = 6;
    pub const TIMEOUT: u16 = 7;
    pub const MARK: u16 = 8;
    pub const ID: u16 = 12;
    pub const NAT_DST: u16 = 13;
    pub const SEQ_ADJ_ORIG: u16 = 15;
    pub const SEQ_ADJ_REPLY: u16 = 16;
    pub const ZONE: u16 = 18;
    pub const LABELS: u16 = 22;
}

/// Attributes nested in a tuple and below.
mod tuple {
    pub const IP: u16 = 1;
    pub const PROTO: u16 = 2;
    pub const ZONE: u16 = 3;
    pub const IP_V4_SRC: u16 = 1;
    pub const IP_V4_DST: u16 = 2;
    pub const IP_V6_SRC: u16 = 3;
    pub const IP_V6_DST: u16 = 4;
    pub const PROTO_NUM: u16 = 1;
    pub const PROTO_SRC_PORT: u16 = 2;
    pub const PROTO_DST_PORT: u16 = 3;
    pub const ICMP_ID: u16 = 4;
    pub const ICMP_TYPE: u16 = 5;
    pub const ICMP_CODE: u16 = 6;
    pub const ICMPV6_ID: u16 = 7;
    pub const ICMPV6_TYPE: u16 = 8;
    pub const ICMPV6_CODE: u16 = 9;
}

/// Attributes nested in `CTA_PROTOINFO`, `CTA_HELP`, `CTA_NAT_*` and
/// `CTA_SEQ_ADJ_*`.
mod nested {
    pub const PROTOINFO_TCP: u16 = 1;
    pub const PROTOINFO_DCCP: u16 = 2;
    pub const PROTOINFO_SCTP: u16 = 3;
    pub const TCP_STATE: u16 = 1;
    pub const TCP_WSCALE_ORIG: u16 = 2;
    pub const TCP_WSCALE_REPLY: u16 = 3;
    pub const TCP_FLAGS_ORIG: u16 = 4;
    pub const TCP_FLAGS_REPLY: u16 = 5;
    pub const DCCP_STATE: u16 = 1;
    pub const DCCP_ROLE: u16 = 2;
    pub const DCCP_HANDSHAKE_SEQ: u16 = 3;
    pub const SCTP_STATE: u16 = 1;
    pub const SCTP_VTAG_ORIG: u16 = 2;
    pub const SCTP_VTAG_REPLY: u16 = 3;
    pub const HELP_NAME: u16 = 1;
    pub const NAT_V4_MINIP: u16 = 1;
    pub const NAT_V4_MAXIP: u16 = 2;
    pub const NAT_PROTO: u16 = 3;
    pub const NAT_V6_MINIP: u16 = 4;
    pub const NAT_V6_MAXIP: u16 = 5;
    pub const PROTONAT_PORT_MIN: u16 = 1;
    pub const PROTONAT_PORT_MAX: u16 = 2;
    pub const SEQADJ_CORRECTION_POS: u16 = 1;
    pub const SEQADJ_OFFSET_BEFORE: u16 = 2;
    pub const SEQADJ_OFFSET_AFTER: u16 = 3;
}

/// `NLA_F_NESTED`: libmnl sets it on every nest; newer kernels check it on
/// some families, so we set it too.
const NLA_F_NESTED: u16 = 1 << 15;

/// The attribute type without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`, as
/// `NlaBuffer::kind` reads it (a `DefaultNla` keeps the flags).
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | 1 << 14);

/// TCP flag bits a commit copies from the flow; the others
/// (`MAXACK_SET`, `DATA_UNACKNOWLEDGED`) describe window-tracking state the
/// kernel does not export, so they are left to the receiving kernel.
const TCP_FLAGS_SYNCED: u8 =
    tcp_flag::WINDOW_SCALE | tcp_flag::SACK_PERM | tcp_flag::CLOSE_INIT | tcp_flag::BE_LIBERAL;

/// Status bits a create or update never carries: the kernel manages them,
/// or (NAT) derives them from `CTA_NAT_*`.
const STATUS_NOT_SENT: u32 = status::KERNEL_MANAGED
    | status::SRC_NAT
    | status::DST_NAT
    | status::SRC_NAT_DONE
    | status::DST_NAT_DONE;

/// Why a ctnetlink message could not become a [`Flow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvertError {
    /// The attributes did not parse (bad lengths, truncated nests).
    Malformed(String),
    /// `CTA_TUPLE_ORIG` or its addresses are missing.
    NoOrigTuple,
    /// The tuples mix IPv4 and IPv6 addresses.
    MixedFamilies,
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConvertError::Malformed(e) => write!(f, "malformed ctnetlink attributes: {e}"),
            ConvertError::NoOrigTuple => f.write_str("ctnetlink message without original tuple"),
            ConvertError::MixedFamilies => f.write_str("ctnetlink tuples mix IPv4 and IPv6"),
        }
    }
}

impl std::error::Error for ConvertError {}

impl From<DecodeError> for ConvertError {
    fn from(e: DecodeError) -> Self {
        ConvertError::Malformed(e.to_string())
    }
}

/// How a flow is written into a create or update message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmitOptions {
    /// Replace the flow's timeout.
    pub timeout: Option<u32>,
    /// Set `IP_CT_TCP_FLAG_BE_LIBERAL` in both TCP directions.
    pub be_liberal: bool,
}

/// Decode the attributes of one `IPCTNL_MSG_CT_NEW`/`DELETE` message (the
/// bytes after the `nfgenmsg` header) into a flow.
pub fn parse_flow(attrs: &[u8]) -> Result<Flow, ConvertError> {
    let mut orig = TupleParts::default();
    let mut reply = TupleParts::default();
    let mut flow = empty_flow();
    for_each_nla(attrs, |kind, v| {
        match kind & !NLA_F_NESTED {
            cta::TUPLE_ORIG => orig = TupleParts::from_bytes(v)?,
            cta::TUPLE_REPLY => reply = TupleParts::from_bytes(v)?,
            cta::STATUS => flow.status = be_u32(v)?,
            cta::TIMEOUT => flow.timeout = be_u32(v)?,
            cta::MARK => flow.mark = be_u32(v)?,
            // Only a hint for telling entries apart: a malformed one must
            // not cost the flow.
            cta::ID => flow.entry_id = be_u32(v).map(EntryId).unwrap_or_default(),
            cta::PROTOINFO => for_each_nla(v, |kind, v| parse_protoinfo_nla(&mut flow, kind, v))?,
            kind => parse_other(&mut flow, kind, v)?,
        }
        Ok(())
    })?;
    finish(flow, orig, reply)
}

/// [`parse_flow`] through `netlink-packet-netfilter`'s typed attributes:
/// the reference the fast decoder is tested against.
pub fn parse_flow_typed(attrs: &[u8]) -> Result<Flow, ConvertError> {
    let mut parsed = Vec::with_capacity(12);
    for nla in NlasIterator::new(attrs) {
        parsed.push(ConntrackAttribute::parse(&nla?)?);
    }
    flow_from_attrs(&parsed)
}

/// Build a flow from the crate's typed attributes.
pub fn flow_from_attrs(attrs: &[ConntrackAttribute]) -> Result<Flow, ConvertError> {
    let mut orig = TupleParts::default();
    let mut reply = TupleParts::default();
    let mut flow = empty_flow();
    for attr in attrs {
        match attr {
            ConntrackAttribute::CtaTupleOrig(t) => orig = TupleParts::from_crate(t)?,
            ConntrackAttribute::CtaTupleReply(t) => reply = TupleParts::from_crate(t)?,
            ConntrackAttribute::CtaStatus(s) => flow.status = s.bits(),
            ConntrackAttribute::CtaTimeout(t) => flow.timeout = *t,
            ConntrackAttribute::CtaMark(m) => flow.mark = *m,
            ConntrackAttribute::CtaProtoInfo(infos) => parse_protoinfo(&mut flow, infos)?,
            ConntrackAttribute::Other(nla) => {
                parse_other(&mut flow, nla.kind() & NLA_TYPE_MASK, &nla_value(nla))?
            }
            _ => {}
        }
    }
    finish(flow, orig, reply)
}

fn empty_flow() -> Flow {
    let mut flow = Flow::new_v4(0, [0; 4].into(), [0; 4].into(), 0, 0);
    flow.status = 0;
    flow
}

/// The tuples into the flow, once every attribute has been read.
fn finish(mut flow: Flow, orig: TupleParts, reply: TupleParts) -> Result<Flow, ConvertError> {
    let (Some(osrc), Some(odst)) = (orig.src, orig.dst) else {
        return Err(ConvertError::NoOrigTuple);
    };
    flow.l4proto = orig.l4proto;
    flow.l4[0] = orig.l4[0];
    flow.l4[1] = orig.l4[1];
    // DESTROY events may come without a reply tuple: assume no NAT.
    let (rsrc, rdst) = match (reply.src, reply.dst) {
        (Some(s), Some(d)) => {
            flow.l4[2] = reply.l4[0];
            flow.l4[3] = reply.l4[1];
            (s, d)
        }
        _ => {
            if matches!(flow.l4proto, proto::ICMP | proto::ICMPV6) {
                flow.l4[2] = orig.l4[0];
                flow.l4[3] = orig.l4[1];
            } else {
                flow.l4[2] = orig.l4[1];
                flow.l4[3] = orig.l4[0];
            }
            (odst, osrc)
        }
    };
    flow.addrs = match (osrc, odst, rsrc, rdst) {
        (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(c), IpAddr::V4(d)) => Addrs::V4([a, b, c, d]),
        (IpAddr::V6(a), IpAddr::V6(b), IpAddr::V6(c), IpAddr::V6(d)) => {
            Addrs::V6(Box::new([a, b, c, d]))
        }
        _ => return Err(ConvertError::MixedFamilies),
    };
    // Only ports, GRE keys and ICMP fields are part of a tuple; anything
    // else a message carries for other protocols is dropped, so that the
    // flow reads back the same after a commit.
    if !flow.has_ports() && !matches!(flow.l4proto, proto::ICMP | proto::ICMPV6) {
        flow.l4 = [0; 4];
    }
    if orig.zone.is_some() || reply.zone.is_some() {
        flow.extra_mut().tuple_zones = Some([orig.zone.unwrap_or(0), reply.zone.unwrap_or(0)]);
    }
    flow.normalize();
    Ok(flow)
}

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

fn emit_tuple(w: &mut AttrWriter<'_>, kind: u16, flow: &Flow, i: usize) {
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

pub(super) fn emit_addrs(w: &mut AttrWriter<'_>, src: IpAddr, dst: IpAddr) {
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

pub(super) fn emit_proto(w: &mut AttrWriter<'_>, l4proto: u8, ipv6: bool, l4: [u16; 2]) {
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

/// The kernel stores labels as an array of `unsigned long` with bit i =
/// label i, and copies that array as is: 64-bit words in host order.
pub fn labels_to_bytes(labels: u128) -> [u8; 16] {
    let lo = (labels as u64).to_ne_bytes();
    let hi = ((labels >> 64) as u64).to_ne_bytes();
    let mut out = [0; 16];
    out[..8].copy_from_slice(&lo);
    out[8..].copy_from_slice(&hi);
    out
}

/// Inverse of [`labels_to_bytes`]; shorter arrays (kernels with smaller
/// label storage) are zero-extended, longer ones keep their first 128 bits.
pub fn labels_from_bytes(bytes: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = bytes.len().min(16);
    b[..n].copy_from_slice(&bytes[..n]);
    let lo = u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let hi = u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    u128::from(lo) | (u128::from(hi) << 64)
}

/// One tuple as decoded.
#[derive(Default)]
pub(super) struct TupleParts {
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub l4proto: u8,
    pub l4: [u16; 2],
    pub zone: Option<u16>,
}

impl TupleParts {
    fn from_bytes(v: &[u8]) -> Result<TupleParts, ConvertError> {
        let mut t = TupleParts::default();
        let (mut icmp_type, mut icmp_code) = (0u8, 0u8);
        for_each_nla(v, |kind, v| {
            match kind & !NLA_F_NESTED {
                tuple::IP => for_each_nla(v, |kind, v| {
                    match kind {
                        // The family is in the length, as the typed decoder reads it.
                        tuple::IP_V4_SRC | tuple::IP_V6_SRC => t.src = Some(ip(v)?),
                        tuple::IP_V4_DST | tuple::IP_V6_DST => t.dst = Some(ip(v)?),
                        _ => {}
                    }
                    Ok(())
                })?,
                tuple::PROTO => for_each_nla(v, |kind, v| {
                    match kind {
                        tuple::PROTO_NUM => t.l4proto = u8_of(v)?,
                        tuple::PROTO_SRC_PORT => t.l4[0] = be_u16(v)?,
                        tuple::PROTO_DST_PORT => t.l4[1] = be_u16(v)?,
                        tuple::ICMP_ID | tuple::ICMPV6_ID => t.l4[0] = be_u16(v)?,
                        tuple::ICMP_TYPE | tuple::ICMPV6_TYPE => icmp_type = u8_of(v)?,
                        tuple::ICMP_CODE | tuple::ICMPV6_CODE => icmp_code = u8_of(v)?,
                        _ => {}
                    }
                    Ok(())
                })?,
                tuple::ZONE => t.zone = Some(be_u16(v)?),
                _ => {}
            }
            Ok(())
        })?;
        if matches!(t.l4proto, proto::ICMP | proto::ICMPV6) {
            t.l4[1] = u16::from_be_bytes([icmp_type, icmp_code]);
        }
        Ok(t)
    }

    /// Decode the value of a tuple nest (`CTA_TUPLE_IP`, `CTA_TUPLE_PROTO`,
    /// `CTA_TUPLE_ZONE` inside), as the expectation attributes carry them.
    pub(super) fn parse_nest(value: &[u8]) -> Result<TupleParts, ConvertError> {
        TupleParts::from_bytes(value)
    }

    fn from_crate(parts: &[Tuple]) -> Result<TupleParts, ConvertError> {
        let mut t = TupleParts::default();
        let (mut icmp_type, mut icmp_code) = (0u8, 0u8);
        for part in parts {
            match part {
                Tuple::Ip(ips) => {
                    for ip in ips {
                        match ip {
                            IPTuple::SourceAddress(a) => t.src = Some(*a),
                            IPTuple::DestinationAddress(a) => t.dst = Some(*a),
                            _ => {}
                        }
                    }
                }
                Tuple::Proto(protos) => {
                    for p in protos {
                        match p {
                            ProtoTuple::Protocol(n) => t.l4proto = u8::from(*n),
                            ProtoTuple::SourcePort(v) => t.l4[0] = *v,
                            ProtoTuple::DestinationPort(v) => t.l4[1] = *v,
                            ProtoTuple::Other(nla) => {
                                let v = &nla_value(nla);
                                match nla.kind() & NLA_TYPE_MASK {
                                    tuple::ICMP_ID | tuple::ICMPV6_ID => t.l4[0] = be_u16(v)?,
                                    tuple::ICMP_TYPE | tuple::ICMPV6_TYPE => icmp_type = u8_of(v)?,
                                    tuple::ICMP_CODE | tuple::ICMPV6_CODE => icmp_code = u8_of(v)?,
                                    _ => {}
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Tuple::Other(nla) if nla.kind() & NLA_TYPE_MASK == tuple::ZONE => {
                    t.zone = Some(be_u16(&nla_value(nla))?);
                }
                _ => {}
            }
        }
        if matches!(t.l4proto, proto::ICMP | proto::ICMPV6) {
            t.l4[1] = u16::from_be_bytes([icmp_type, icmp_code]);
        }
        Ok(t)
    }
}

fn parse_protoinfo(flow: &mut Flow, infos: &[ProtoInfo]) -> Result<(), ConvertError> {
    for info in infos {
        match info {
            ProtoInfo::TCP(items) => {
                for item in items {
                    match item {
                        ProtoInfoTCP::State(s) => flow.proto_state = *s,
                        ProtoInfoTCP::OriginalWindowScale(s) => flow.tcp.wscale_orig = *s,
                        ProtoInfoTCP::ReplyWindowScale(s) => flow.tcp.wscale_reply = *s,
                        ProtoInfoTCP::OriginalFlags(f) => flow.tcp.flags_orig = f.flags,
                        ProtoInfoTCP::ReplyFlags(f) => flow.tcp.flags_reply = f.flags,
                        _ => {}
                    }
                }
            }
            ProtoInfo::Other(nla) => {
                parse_protoinfo_nla(flow, nla.kind() & NLA_TYPE_MASK, &nla_value(nla))?
            }
            _ => {}
        }
    }
    Ok(())
}

/// One attribute nested in `CTA_PROTOINFO`.
fn parse_protoinfo_nla(flow: &mut Flow, kind: u16, v: &[u8]) -> Result<(), ConvertError> {
    match kind & !NLA_F_NESTED {
        nested::PROTOINFO_TCP => for_each_nla(v, |kind, v| {
            match kind {
                nested::TCP_STATE => flow.proto_state = u8_of(v)?,
                nested::TCP_WSCALE_ORIG => flow.tcp.wscale_orig = u8_of(v)?,
                nested::TCP_WSCALE_REPLY => flow.tcp.wscale_reply = u8_of(v)?,
                nested::TCP_FLAGS_ORIG => flow.tcp.flags_orig = tcp_flags(v)?,
                nested::TCP_FLAGS_REPLY => flow.tcp.flags_reply = tcp_flags(v)?,
                _ => {}
            }
            Ok(())
        })?,
        nested::PROTOINFO_SCTP => {
            let mut vtags = [0u32; 2];
            for_each_nla(v, |kind, v| {
                match kind {
                    nested::SCTP_STATE => flow.proto_state = u8_of(v)?,
                    nested::SCTP_VTAG_ORIG => vtags[0] = be_u32(v)?,
                    nested::SCTP_VTAG_REPLY => vtags[1] = be_u32(v)?,
                    _ => {}
                }
                Ok(())
            })?;
            flow.extra_mut().sctp_vtags = Some(vtags);
        }
        nested::PROTOINFO_DCCP => {
            let (mut role, mut seq) = (0u8, 0u64);
            for_each_nla(v, |kind, v| {
                match kind {
                    nested::DCCP_STATE => flow.proto_state = u8_of(v)?,
                    nested::DCCP_ROLE => role = u8_of(v)?,
                    nested::DCCP_HANDSHAKE_SEQ => seq = be_u64(v)?,
                    _ => {}
                }
                Ok(())
            })?;
            flow.extra_mut().dccp = Some((role, seq));
        }
        _ => {}
    }
    Ok(())
}

/// A top-level attribute the typed decoder leaves as `Other`.
fn parse_other(flow: &mut Flow, kind: u16, v: &[u8]) -> Result<(), ConvertError> {
    match kind {
        cta::ZONE => flow.zone = be_u16(v)?,
        cta::LABELS => {
            let labels = labels_from_bytes(v);
            if labels != 0 {
                flow.extra_mut().labels = Some(labels);
            }
        }
        cta::HELP => {
            let mut name = None;
            for_each_nla(v, |kind, v| {
                if kind == nested::HELP_NAME {
                    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
                    name = Some(String::from_utf8_lossy(&v[..end]).into_owned());
                }
                Ok(())
            })?;
            if let Some(name) = name.filter(|n| !n.is_empty()) {
                flow.extra_mut().helper = Some(name.into_boxed_str());
            }
        }
        kind @ (cta::SEQ_ADJ_ORIG | cta::SEQ_ADJ_REPLY) => {
            let mut adj = SeqAdj::default();
            for_each_nla(v, |k, v| {
                match k {
                    nested::SEQADJ_CORRECTION_POS => adj.correction_pos = be_u32(v)?,
                    nested::SEQADJ_OFFSET_BEFORE => adj.offset_before = be_u32(v)?,
                    nested::SEQADJ_OFFSET_AFTER => adj.offset_after = be_u32(v)?,
                    _ => {}
                }
                Ok(())
            })?;
            let both = flow.extra_mut().seq_adj.get_or_insert_default();
            both[usize::from(kind == cta::SEQ_ADJ_REPLY)] = adj;
        }
        _ => {}
    }
    Ok(())
}

/// `DefaultNla` keeps its value private; emitting it is the public way in.
fn nla_value(nla: &DefaultNla) -> Vec<u8> {
    let mut v = vec![0; nla.value_len()];
    nla.emit_value(&mut v);
    v
}

/// Each attribute's type (without flags) and value, with the checks and
/// the stop-at-first-error of `NlasIterator`. Hand-written because the hot
/// path reads every event through it: `NlaBuffer` re-reads and re-checks
/// the header in each accessor, which cost a tenth of an event's time.
pub(super) fn for_each_nla(
    mut buf: &[u8],
    mut f: impl FnMut(u16, &[u8]) -> Result<(), ConvertError>,
) -> Result<(), ConvertError> {
    while let [l0, l1, k0, k1, ..] = *buf {
        let len = usize::from(u16::from_ne_bytes([l0, l1]));
        if len < 4 || len > buf.len() {
            return Err(ConvertError::Malformed(format!(
                "attribute of {len} bytes in {} bytes",
                buf.len()
            )));
        }
        f(u16::from_ne_bytes([k0, k1]) & NLA_TYPE_MASK, &buf[4..len])?;
        buf = buf.get((len + 3) & !3..).unwrap_or_default();
    }
    if !buf.is_empty() {
        return Err(ConvertError::Malformed(format!("{} trailing bytes", buf.len())));
    }
    Ok(())
}

// Values must have exactly their type's size, as the kernel sends them
// and as `netlink-packet-core`'s parsers demand.

fn exact<const N: usize>(what: &str, v: &[u8]) -> Result<[u8; N], ConvertError> {
    v.try_into().map_err(|_| short(what, v))
}

fn ip(v: &[u8]) -> Result<IpAddr, ConvertError> {
    match v.len() {
        4 => Ok(IpAddr::from(exact::<4>("IPv4 address", v)?)),
        _ => Ok(IpAddr::from(exact::<16>("IP address", v)?)),
    }
}

/// `struct nf_ct_tcp_flags { u8 flags; u8 mask; }`: the flags (a longer
/// value is read, as the typed decoder reads it).
fn tcp_flags(v: &[u8]) -> Result<u8, ConvertError> {
    match v {
        [flags, _mask, ..] => Ok(*flags),
        _ => Err(short("TCP flags", v)),
    }
}

fn short(what: &str, v: &[u8]) -> ConvertError {
    ConvertError::Malformed(format!("{what}: {} bytes", v.len()))
}

fn u8_of(v: &[u8]) -> Result<u8, ConvertError> {
    Ok(exact::<1>("u8 attribute", v)?[0])
}

pub(super) fn be_u16(v: &[u8]) -> Result<u16, ConvertError> {
    Ok(u16::from_be_bytes(exact("u16 attribute", v)?))
}

pub(super) fn be_u32(v: &[u8]) -> Result<u32, ConvertError> {
    Ok(u32::from_be_bytes(exact("u32 attribute", v)?))
}

fn be_u64(v: &[u8]) -> Result<u64, ConvertError> {
    Ok(u64::from_be_bytes(exact("u64 attribute", v)?))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Dir;
    use crate::flow::{FlowExtra, TcpInfo, tcp_state};
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
        let s = status_to_send(
            status::SEEN_REPLY | status::DYING | status::SRC_NAT | status::SRC_NAT_DONE,
        );
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
        assert_eq!(
            labels_from_bytes(&[1]),
            if cfg!(target_endian = "little") { 1 } else { 1 << 56 }
        );
    }

    #[test]
    fn sctp_and_dccp_protoinfo() {
        let mut s =
            Flow::new_v4(proto::SCTP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1000, 2000);
        s.proto_state = 3;
        s.extra_mut().sctp_vtags = Some([0xdead_beef, 0x1234_5678]);
        assert_eq!(round_trip(&s), expected_after_trip(&s));
        let mut d =
            Flow::new_v4(proto::DCCP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1000, 2000);
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
}
