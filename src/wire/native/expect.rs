//! Expectation bodies: EXP_NEW and EXP_DESTROY carry the master's key,
//! the expected tuple, the mask and the rest of the expectation as
//! attributes (see `docs/PROTOCOL.md`, "Expectation messages").

use std::net::IpAddr;

use super::flow::{emit_key_as, helper_bytes, key_len, key_value};
use super::{ATTR_HEADER_LEN, AttrIter, MAX_HELPER_LEN, attr, be16, be32, be128};
use crate::expect::{ExpNat, Expectation};
use crate::wire::{WireError, Writer, one_family};

const EXP_MASTER_KINDS: [u16; 2] = [attr::EXP_MASTER_V4, attr::EXP_MASTER_V6];
const EXP_TUPLE_KINDS: [u16; 2] = [attr::EXP_TUPLE_V4, attr::EXP_TUPLE_V6];
const EXP_CORE_TAIL: usize = 2 + 2 + 12;
const EXP_NAT_TAIL: usize = 4 + 2 + 2;

fn addr_len(a: IpAddr) -> usize {
    if a.is_ipv6() { 16 } else { 4 }
}

fn addr_bytes(a: IpAddr, w: &mut Writer<'_>) {
    match a {
        IpAddr::V4(a) => w.bytes(&a.octets()),
        IpAddr::V6(a) => w.bytes(&a.octets()),
    }
}

/// Bytes the attributes of an expectation take.
pub(super) fn exp_len(e: &Expectation) -> usize {
    let a = ATTR_HEADER_LEN;
    key_len(&e.master)
        + key_len(&e.tuple)
        + a
        + addr_len(e.mask_src)
        + EXP_CORE_TAIL
        + if e.helper.is_empty() { 0 } else { a + helper_bytes(&e.helper).len() }
        + e.nat.map_or(0, |n| a + addr_len(n.addr) + EXP_NAT_TAIL)
        + e.expectfn.as_ref().map_or(0, |f| a + helper_bytes(f).len())
}

pub(super) fn emit_exp(e: &Expectation, w: &mut Writer<'_>) {
    emit_key_as(&e.master, EXP_MASTER_KINDS, w);
    emit_key_as(&e.tuple, EXP_TUPLE_KINDS, w);
    let core = if e.mask_src.is_ipv6() { attr::EXP_CORE_V6 } else { attr::EXP_CORE_V4 };
    w.tlv(core, addr_len(e.mask_src) + EXP_CORE_TAIL);
    addr_bytes(e.mask_src, w);
    w.u16(e.mask_sport);
    w.u16(0);
    w.u32(e.timeout);
    w.u32(e.flags);
    w.u32(e.class);
    if !e.helper.is_empty() {
        let name = helper_bytes(&e.helper);
        w.tlv(attr::EXP_HELPER, name.len());
        w.bytes(name);
    }
    if let Some(nat) = e.nat {
        let kind = if nat.addr.is_ipv6() { attr::EXP_NAT_V6 } else { attr::EXP_NAT_V4 };
        w.tlv(kind, addr_len(nat.addr) + EXP_NAT_TAIL);
        w.u32(nat.dir);
        addr_bytes(nat.addr, w);
        w.u16(nat.port);
        w.u16(0);
    }
    if let Some(f) = &e.expectfn {
        let name = helper_bytes(f);
        w.tlv(attr::EXP_FN, name.len());
        w.bytes(name);
    }
}

pub(super) fn parse_exp(body: &[u8]) -> Result<Expectation, WireError> {
    let mut master = None;
    let mut tuple = None;
    let mut core = None;
    let mut helper: Box<str> = "".into();
    let mut nat = None;
    let mut expectfn = None;
    let addr = |v: &[u8]| -> IpAddr {
        if v.len() == 16 { IpAddr::V6(be128(v).into()) } else { IpAddr::V4(be32(v).into()) }
    };
    let name = |kind: u16, v: &[u8]| -> Result<Box<str>, WireError> {
        if v.len() > MAX_HELPER_LEN {
            return Err(WireError::BadAttribute(kind));
        }
        std::str::from_utf8(v).map(Into::into).map_err(|_| WireError::BadMessage)
    };
    for a in AttrIter::new(body) {
        let (kind, v) = a?;
        let once = |slot: bool| if slot { Err(WireError::BadMessage) } else { Ok(()) };
        match kind {
            attr::EXP_MASTER_V4 | attr::EXP_MASTER_V6 => {
                once(master.is_some())?;
                master = key_value(kind, v, EXP_MASTER_KINDS)?;
            }
            attr::EXP_TUPLE_V4 | attr::EXP_TUPLE_V6 => {
                once(tuple.is_some())?;
                tuple = key_value(kind, v, EXP_TUPLE_KINDS)?;
            }
            attr::EXP_CORE_V4 | attr::EXP_CORE_V6 => {
                once(core.is_some())?;
                let n = if kind == attr::EXP_CORE_V6 { 16 } else { 4 };
                if v.len() != n + EXP_CORE_TAIL {
                    return Err(WireError::BadAttribute(kind));
                }
                let t = &v[n..];
                core = Some((
                    addr(&v[..n]),
                    be16(&t[0..2]),
                    be32(&t[4..8]),
                    be32(&t[8..12]),
                    be32(&t[12..16]),
                ));
            }
            attr::EXP_HELPER => helper = name(kind, v)?,
            attr::EXP_FN => expectfn = Some(name(kind, v)?),
            attr::EXP_NAT_V4 | attr::EXP_NAT_V6 => {
                let n = if kind == attr::EXP_NAT_V6 { 16 } else { 4 };
                if v.len() != n + EXP_NAT_TAIL {
                    return Err(WireError::BadAttribute(kind));
                }
                nat = Some(ExpNat {
                    dir: be32(&v[0..4]),
                    addr: addr(&v[4..4 + n]),
                    port: be16(&v[4 + n..6 + n]),
                });
            }
            // A newer peer's attribute: skipped, not fatal.
            _ => {}
        }
    }
    let (Some(master), Some(tuple), Some((mask_src, mask_sport, timeout, flags, class))) =
        (master, tuple, core)
    else {
        return Err(WireError::BadMessage);
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

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::super::tests::roundtrip;
    use super::*;
    use crate::wire::native::{MessagePacket, emit_message, msg_type};
    use crate::wire::{Message, MessageRef};

    #[test]
    fn expectation_messages_round_trip_and_keep_their_slot() {
        // docs/PROTOCOL.md, "Expectation messages".
        let v4 = crate::expect::tests::ftp_pasv();
        let mut v6 = v4.clone();
        let a = |n: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n));
        (v6.master.src, v6.master.dst, v6.tuple.src, v6.tuple.dst) = (a(1), a(2), a(1), a(2));
        v6.mask_src = IpAddr::V6(Ipv6Addr::from(u128::MAX));
        v6.nat = Some(ExpNat { dir: 1, addr: a(9), port: 2121 });
        v6.expectfn = Some("nat-follow-master".into());
        let msgs = vec![
            Message::ExpNew(Box::new(v4.clone())),
            Message::ExpNew(Box::new(v6.clone())),
            Message::ExpDestroy(Box::new(v4.clone())),
            Message::ExpDestroy(Box::new(v6.clone())),
        ];
        assert_eq!(roundtrip(&msgs), msgs);
        assert!(msgs.iter().all(Message::is_sequenced));
        // An EXP_NEW without its core attribute is refused, alone.
        let mut buf = [0u8; 256];
        let n = emit_message(&MessageRef::FlowDestroy(&v4.key()), &mut buf).unwrap();
        buf[0] = msg_type::EXP_NEW;
        let view = MessagePacket::new_checked(&buf[..n]).unwrap();
        assert_eq!(view.parse(), Err(WireError::BadMessage));
    }
}
