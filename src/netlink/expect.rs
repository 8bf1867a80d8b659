//! [`Expectation`] ⇄ ctnetlink expectation attributes
//! (`NFNL_SUBSYS_CTNETLINK_EXP`), which `netlink-packet-netfilter` does
//! not model: the attribute numbers are those of `enum ctattr_expect` in
//! `include/uapi/linux/netfilter/nfnetlink_conntrack.h`; the tuples inside
//! are ordinary conntrack tuples and go through the crate's `Tuple`.
//!
//! What the kernel does with them (net/netfilter/nf_conntrack_netlink.c):
//! a create needs `CTA_EXPECT_MASTER`, `_TUPLE` and `_MASK`, finds the
//! master by its original tuple (ENOENT if absent) and refuses a master
//! without a helper (EOPNOTSUPP). The timeout of a created expectation is
//! the helper's policy timeout, not `CTA_EXPECT_TIMEOUT`. Only the source
//! address and source port of the mask are used. Tuples must not carry
//! `CTA_TUPLE_ZONE`; the zone goes in `CTA_EXPECT_ZONE`, which the kernel
//! never reports.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::convert::{
    AttrWriter, ConvertError, TupleParts, be_u16, be_u32, emit_addrs, emit_proto, for_each_nla,
};
use crate::expect::{ExpNat, Expectation, flag};
use crate::flow::FlowKey;

/// `CTA_EXPECT_*` attribute numbers.
pub mod cta_exp {
    pub const MASTER: u16 = 1;
    pub const TUPLE: u16 = 2;
    pub const MASK: u16 = 3;
    pub const TIMEOUT: u16 = 4;
    pub const ID: u16 = 5;
    pub const HELP_NAME: u16 = 6;
    pub const ZONE: u16 = 7;
    pub const FLAGS: u16 = 8;
    pub const CLASS: u16 = 9;
    pub const NAT: u16 = 10;
    pub const FN: u16 = 11;
    /// Inside `CTA_EXPECT_NAT`.
    pub const NAT_DIR: u16 = 1;
    /// Inside `CTA_EXPECT_NAT`.
    pub const NAT_TUPLE: u16 = 2;
}

/// Longest helper or function name kept (the kernel's are at most 16 and
/// 32 bytes); longer ones are cut.
const MAX_NAME: usize = 64;

/// Decode the attributes of one `IPCTNL_MSG_EXP_NEW`/`DELETE` message (the
/// bytes after `nfgenmsg`).
pub fn parse_expectation(attrs: &[u8]) -> Result<Expectation, ConvertError> {
    let mut master = None;
    let mut tuple = None;
    let mut mask = None;
    let mut zone = 0u16;
    let mut exp_timeout = 0;
    let mut flags = 0;
    let mut class = 0;
    let mut helper = String::new();
    let mut nat = None;
    let mut expectfn = None;
    for_each_nla(attrs, |kind, v| {
        match kind {
            cta_exp::MASTER => master = Some(TupleParts::parse_nest(v)?),
            cta_exp::TUPLE => tuple = Some(TupleParts::parse_nest(v)?),
            cta_exp::MASK => mask = Some(TupleParts::parse_nest(v)?),
            cta_exp::TIMEOUT => exp_timeout = be_u32(v)?,
            cta_exp::ZONE => zone = be_u16(v)?,
            cta_exp::FLAGS => flags = be_u32(v)?,
            cta_exp::CLASS => class = be_u32(v)?,
            cta_exp::HELP_NAME => helper = c_string(v),
            cta_exp::FN => expectfn = Some(c_string(v).into_boxed_str()).filter(|s| !s.is_empty()),
            cta_exp::NAT => nat = Some(parse_nat(v)?),
            _ => {}
        }
        Ok(())
    })?;
    let key = |t: Option<TupleParts>| -> Result<FlowKey, ConvertError> {
        let t = t.ok_or(ConvertError::NoOrigTuple)?;
        let (Some(src), Some(dst)) = (t.src, t.dst) else {
            return Err(ConvertError::NoOrigTuple);
        };
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(ConvertError::MixedFamilies);
        }
        // As for flows: only these protocols' tuples carry l4 fields, so
        // that an expectation reads back the same after a commit.
        let l4 = if has_l4(t.l4proto) { t.l4 } else { [0, 0] };
        Ok(FlowKey { src, dst, l4proto: t.l4proto, l4, zone })
    };
    let master = key(master)?;
    let tuple = key(tuple)?;
    if master.is_ipv6() != tuple.is_ipv6() {
        return Err(ConvertError::MixedFamilies);
    }
    let (mask_src, mask_sport) = match mask {
        Some(TupleParts { src: Some(src), l4, .. }) if src.is_ipv6() == tuple.is_ipv6() => {
            (src, if has_l4(tuple.l4proto) { l4[0] } else { 0 })
        }
        Some(_) => return Err(ConvertError::MixedFamilies),
        // Absent: an exact match, the safe reading.
        None => (all_ones(tuple.is_ipv6()), u16::MAX),
    };
    Ok(Expectation {
        master,
        tuple,
        mask_src,
        mask_sport,
        timeout: exp_timeout,
        flags,
        class,
        helper: helper.into_boxed_str(),
        nat,
        expectfn,
    })
}

/// Append a create's attributes: master, tuple, mask, zone, helper, flags
/// (without `USERSPACE`, which the kernel strips), class, NAT and
/// function. No timeout: the kernel ignores it on create.
pub fn emit_expect_create(w: &mut AttrWriter<'_>, exp: &Expectation) {
    emit_exp_tuple(w, cta_exp::MASTER, &exp.master);
    emit_exp_tuple(w, cta_exp::TUPLE, &exp.tuple);
    let m = w.begin_nest(cta_exp::MASK);
    emit_addrs(w, exp.mask_src, all_ones(exp.is_ipv6()));
    emit_proto(w, exp.tuple.l4proto, exp.is_ipv6(), [exp.mask_sport, u16::MAX]);
    w.end_nest(m);
    if exp.tuple.zone != 0 {
        w.put_u16_be(cta_exp::ZONE, exp.tuple.zone);
    }
    if !exp.helper.is_empty() {
        w.put(cta_exp::HELP_NAME, &c_bytes(&exp.helper));
    }
    w.put_u32_be(cta_exp::FLAGS, exp.flags & !flag::USERSPACE);
    w.put_u32_be(cta_exp::CLASS, exp.class);
    if let Some(nat) = exp.nat {
        let n = w.begin_nest(cta_exp::NAT);
        w.put_u32_be(cta_exp::NAT_DIR, nat.dir);
        let t = w.begin_nest(cta_exp::NAT_TUPLE);
        let unspecified = if nat.addr.is_ipv6() {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        emit_addrs(w, nat.addr, unspecified);
        emit_proto(w, exp.master.l4proto, nat.addr.is_ipv6(), [nat.port, 0]);
        w.end_nest(t);
        w.end_nest(n);
    }
    if let Some(name) = &exp.expectfn {
        w.put(cta_exp::FN, &c_bytes(name));
    }
}

/// Append what identifies an expectation for a delete or get: its tuple
/// and zone.
pub fn emit_expect_key(w: &mut AttrWriter<'_>, key: &FlowKey) {
    emit_exp_tuple(w, cta_exp::TUPLE, key);
    if key.zone != 0 {
        w.put_u16_be(cta_exp::ZONE, key.zone);
    }
}

fn emit_exp_tuple(w: &mut AttrWriter<'_>, kind: u16, k: &FlowKey) {
    let t = w.begin_nest(kind);
    emit_addrs(w, k.src, k.dst);
    emit_proto(w, k.l4proto, k.is_ipv6(), k.l4);
    w.end_nest(t);
}

fn parse_nat(v: &[u8]) -> Result<ExpNat, ConvertError> {
    let mut dir = None;
    let mut tuple = None;
    for_each_nla(v, |kind, v| {
        match kind {
            cta_exp::NAT_DIR => dir = Some(be_u32(v)?),
            cta_exp::NAT_TUPLE => tuple = Some(TupleParts::parse_nest(v)?),
            _ => {}
        }
        Ok(())
    })?;
    match (dir, tuple) {
        (Some(dir), Some(TupleParts { src: Some(addr), l4, .. })) => {
            Ok(ExpNat { dir, addr, port: l4[0] })
        }
        _ => Err(ConvertError::Malformed("CTA_EXPECT_NAT without direction or tuple".into())),
    }
}

fn has_l4(l4proto: u8) -> bool {
    use crate::flow::proto::*;
    matches!(l4proto, TCP | UDP | UDPLITE | SCTP | DCCP | GRE | ICMP | ICMPV6)
}

fn all_ones(ipv6: bool) -> IpAddr {
    if ipv6 { IpAddr::V6(Ipv6Addr::from(u128::MAX)) } else { IpAddr::V4(Ipv4Addr::BROADCAST) }
}

/// A NUL-terminated (or not) kernel string, cut at [`MAX_NAME`].
fn c_string(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len()).min(MAX_NAME);
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn c_bytes(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expect::tests::ftp_pasv;
    use crate::netlink::msg::{IPCTNL_MSG_EXP_NEW, Messages, NLM_F_CREATE, exp_message};
    use proptest::prelude::*;

    fn message(exp: &Expectation) -> Vec<u8> {
        let mut buf = Vec::new();
        exp_message(&mut buf, IPCTNL_MSG_EXP_NEW, NLM_F_CREATE, 1, exp.family(), |w| {
            emit_expect_create(w, exp);
            w.put_u32_be(cta_exp::TIMEOUT, exp.timeout);
        });
        buf
    }

    #[test]
    fn create_round_trips_through_the_parser() {
        let mut exp = ftp_pasv();
        exp.nat = Some(ExpNat { dir: 1, addr: IpAddr::from([10, 0, 1, 2]), port: 50000 });
        exp.expectfn = Some("nat-follow-master".into());
        exp.flags = flag::PERMANENT;
        let buf = message(&exp);
        let (_, msg) = Messages::new(&buf).next().unwrap().unwrap();
        let (kind, attrs) = msg.ctnetlink_exp().unwrap();
        assert_eq!(kind, IPCTNL_MSG_EXP_NEW);
        assert!(msg.ctnetlink().is_none());
        assert_eq!(parse_expectation(attrs).unwrap(), exp);
    }

    #[test]
    fn missing_master_or_tuple_is_an_error() {
        let mut buf = Vec::new();
        exp_message(&mut buf, IPCTNL_MSG_EXP_NEW, 0, 1, 2, |w| {
            emit_exp_tuple(w, cta_exp::TUPLE, &ftp_pasv().tuple)
        });
        let (_, msg) = Messages::new(&buf).next().unwrap().unwrap();
        assert_eq!(
            parse_expectation(msg.ctnetlink_exp().unwrap().1),
            Err(ConvertError::NoOrigTuple)
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_mutated_messages(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut buf = message(&ftp_pasv());
            for (at, byte) in flips {
                let i = 20 + at % (buf.len() - 20);
                buf[i] = byte;
            }
            let _ = parse_expectation(&buf[20..]);
        }
    }
}
