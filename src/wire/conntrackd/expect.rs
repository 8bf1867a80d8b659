//! EXP message bodies: an [`Expectation`] from conntrackd's `NTA_EXP_*`
//! attributes with `msg2exp`'s checks, and back in `exp2msg` order, with
//! the length each takes. conntrackd carries IPv4 NAT only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    EXP_SIZES, MAX_EXP_FN_LEN, MAX_HELPER_LEN, addr_len, align4, attr_len, be16, be32,
    for_each_nta, ip4, ip6, nta_exp, to_v6,
};
use crate::expect::{ExpNat, Expectation};
use crate::flow::{FlowKey, proto};
use crate::wire::{WireError, Writer, one_family};

/// Protocols whose expectation tuples get a port group (conntrackd's
/// `exp_l4proto_fcn`).
fn exp_ports(l4proto: u8) -> bool {
    matches!(l4proto, proto::TCP | proto::UDP | proto::SCTP | proto::DCCP)
}

/// The NAT part conntrackd can carry: IPv4 only.
fn exp_nat(e: &Expectation) -> Option<ExpNat> {
    e.nat.filter(|n| n.addr.is_ipv4())
}

fn exp_helper(e: &Expectation) -> Option<&str> {
    Some(&*e.helper).filter(|h| !h.is_empty() && h.len() <= MAX_HELPER_LEN)
}

fn exp_fn(e: &Expectation) -> Option<&str> {
    e.expectfn.as_deref().filter(|f| !f.is_empty() && f.len() <= MAX_EXP_FN_LEN)
}

pub(super) fn exp_len(e: &Expectation) -> usize {
    let ports = if exp_ports(e.tuple.l4proto) { attr_len(4) } else { 0 };
    let tuple = addr_len(e.is_ipv6()) + attr_len(1) + ports;
    let mut len = 3 * tuple + 3 * attr_len(4);
    if exp_nat(e).is_some() {
        len += attr_len(8) + attr_len(1) + ports + attr_len(4);
    }
    len += exp_helper(e).map_or(0, |h| attr_len(h.len() + 1));
    len + exp_fn(e).map_or(0, |f| attr_len(f.len() + 1))
}

/// conntrackd's `exp2msg` order.
pub(super) fn emit_exp(e: &Expectation, w: &mut Writer<'_>) {
    let l4proto = e.tuple.l4proto;
    let v6 = e.is_ipv6();
    let all_ones =
        if v6 { IpAddr::V6(Ipv6Addr::from(u128::MAX)) } else { IpAddr::V4(Ipv4Addr::BROADCAST) };
    let mut tuple = |first: u16, src: IpAddr, dst: IpAddr, l4: [u16; 2]| {
        w.exp_addrs(first + u16::from(v6), src, dst);
        w.nta(first + 2, &[l4proto]);
        if exp_ports(l4proto) {
            w.exp_ports(first + 3, l4);
        }
    };
    tuple(nta_exp::MASTER_IPV4, e.master.src, e.master.dst, e.master.l4);
    tuple(nta_exp::EXPECT_IPV4, e.tuple.src, e.tuple.dst, e.tuple.l4);
    tuple(nta_exp::MASK_IPV4, e.mask_src, all_ones, [e.mask_sport, u16::MAX]);
    w.nta(nta_exp::TIMEOUT, &e.timeout.to_be_bytes());
    w.nta(nta_exp::FLAGS, &e.flags.to_be_bytes());
    w.nta(nta_exp::CLASS, &e.class.to_be_bytes());
    if let Some(nat) = exp_nat(e) {
        w.exp_addrs(nta_exp::NAT_IPV4, nat.addr, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        w.nta(nta_exp::NAT_L4PROTO, &[l4proto]);
        if exp_ports(l4proto) {
            w.exp_ports(nta_exp::NAT_PORT, [nat.port, 0]);
        }
        w.nta(nta_exp::NAT_DIR, &nat.dir.to_be_bytes());
    }
    if let Some(h) = exp_helper(e) {
        w.nta_str(nta_exp::HELPER_NAME, h);
    }
    if let Some(f) = exp_fn(e) {
        w.nta_str(nta_exp::FN, f);
    }
}

/// This format's expectation attributes on the shared [`Writer`].
impl Writer<'_> {
    fn exp_addrs(&mut self, kind: u16, src: IpAddr, dst: IpAddr) {
        let mut v = [0u8; 32];
        let n = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                v[..4].copy_from_slice(&s.octets());
                v[4..8].copy_from_slice(&d.octets());
                8
            }
            (s, d) => {
                v[..16].copy_from_slice(&to_v6(s).octets());
                v[16..].copy_from_slice(&to_v6(d).octets());
                32
            }
        };
        self.nta(kind, &v[..n]);
    }
    fn exp_ports(&mut self, kind: u16, l4: [u16; 2]) {
        let mut v = [0u8; 4];
        v[..2].copy_from_slice(&l4[0].to_be_bytes());
        v[2..].copy_from_slice(&l4[1].to_be_bytes());
        self.nta(kind, &v);
    }
    fn nta_str(&mut self, kind: u16, s: &str) {
        self.u16((4 + s.len() + 1) as u16);
        self.u16(kind);
        self.bytes(s.as_bytes());
        self.u8(0);
        self.at = align4(self.at);
    }
}

/// Parse an EXP message's attributes, with conntrackd's `msg2exp` checks.
pub fn parse_exp(body: &[u8]) -> Result<Expectation, WireError> {
    #[derive(Default, Clone, Copy)]
    struct Tuple {
        addrs: Option<(IpAddr, IpAddr)>,
        l4proto: Option<u8>,
        ports: [u16; 2],
    }
    let mut tuples = [Tuple::default(); 4];
    let (mut timeout, mut flags, mut class, mut dir) = (0, 0, 0, None);
    let mut helper: Box<str> = "".into();
    let mut expectfn = None;
    for_each_nta(body, &EXP_SIZES, |kind, v| {
        let string = |v: &[u8]| -> Result<Box<str>, WireError> {
            let s = v.split(|&b| b == 0).next().unwrap_or(&[]);
            std::str::from_utf8(s).map(Into::into).map_err(|_| WireError::BadMessage)
        };
        match kind {
            // Master, expected, mask: four attributes each, from 0, 4, 8;
            // NAT's address, port and protocol are 15, 16, 17.
            0..=11 | nta_exp::NAT_IPV4..=nta_exp::NAT_L4PROTO => {
                let (t, field) = match kind {
                    0..=11 => (usize::from(kind / 4), kind % 4),
                    nta_exp::NAT_IPV4 => (3, 0),
                    nta_exp::NAT_PORT => (3, 3),
                    _ => (3, 2),
                };
                let t = &mut tuples[t];
                match field {
                    0 => t.addrs = Some((IpAddr::V4(ip4(&v[0..4])), IpAddr::V4(ip4(&v[4..8])))),
                    1 => t.addrs = Some((IpAddr::V6(ip6(&v[0..16])), IpAddr::V6(ip6(&v[16..32])))),
                    2 => t.l4proto = Some(v[0]),
                    _ => t.ports = [be16(&v[0..2]), be16(&v[2..4])],
                }
            }
            nta_exp::TIMEOUT => timeout = be32(v),
            nta_exp::FLAGS => flags = be32(v),
            nta_exp::CLASS => class = be32(v),
            nta_exp::NAT_DIR => dir = Some(be32(v)),
            nta_exp::HELPER_NAME => helper = string(v)?,
            nta_exp::FN => expectfn = Some(string(v)?).filter(|f| !f.is_empty()),
            _ => {}
        }
        Ok(())
    })?;
    let key = |t: Tuple| -> Result<FlowKey, WireError> {
        let ((src, dst), l4proto) = t.addrs.zip(t.l4proto).ok_or(WireError::BadMessage)?;
        let l4 = if exp_ports(l4proto) { t.ports } else { [0, 0] };
        Ok(FlowKey { src, dst, l4proto, l4, zone: 0 })
    };
    let master = key(tuples[0])?;
    let tuple = key(tuples[1])?;
    let (mask_src, mask_sport) = match tuples[2].addrs {
        Some((src, _)) => (src, if exp_ports(tuple.l4proto) { tuples[2].ports[0] } else { 0 }),
        None if tuple.is_ipv6() => (IpAddr::V6(Ipv6Addr::from(u128::MAX)), u16::MAX),
        None => (IpAddr::V4(Ipv4Addr::BROADCAST), u16::MAX),
    };
    let nat = match (tuples[3].addrs, dir) {
        (Some((addr, _)), Some(dir)) => Some(ExpNat { dir, addr, port: tuples[3].ports[0] }),
        _ => None,
    };
    one_family(Expectation {
        master,
        tuple,
        mask_src,
        mask_sport,
        timeout,
        flags,
        class,
        helper,
        nat,
        expectfn,
    })
}
