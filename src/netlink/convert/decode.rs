//! ctnetlink attributes → [`Flow`]: the allocation-free decoder of the hot
//! path, the typed one it is tested against, and the readers of values
//! both share.

use std::net::IpAddr;

use netlink_packet_core::{DefaultNla, Nla, NlasIterator, Parseable};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Tuple,
};

use super::{ConvertError, NLA_F_NESTED, NLA_TYPE_MASK, cta, labels_from_bytes, nested, tuple};
use crate::flow::{Addrs, EntryId, Flow, SeqAdj, proto};

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

/// One tuple as decoded.
#[derive(Default)]
pub(in crate::netlink) struct TupleParts {
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
    pub(in crate::netlink) fn parse_nest(value: &[u8]) -> Result<TupleParts, ConvertError> {
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
pub(in crate::netlink) fn for_each_nla(
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

pub(in crate::netlink) fn be_u16(v: &[u8]) -> Result<u16, ConvertError> {
    Ok(u16::from_be_bytes(exact("u16 attribute", v)?))
}

pub(in crate::netlink) fn be_u32(v: &[u8]) -> Result<u32, ConvertError> {
    Ok(u32::from_be_bytes(exact("u32 attribute", v)?))
}

fn be_u64(v: &[u8]) -> Result<u64, ConvertError> {
    Ok(u64::from_be_bytes(exact("u64 attribute", v)?))
}
