//! `Flow`: one conntrack entry, the single model that every layer shares.
//!
//! The caches hold a million of these, so the common case (IPv4, TCP or UDP,
//! no labels, no helper) fits in 64 bytes with no heap allocation: IPv6
//! addresses and rare fields (labels, helper, sequence adjustment, SCTP and
//! DCCP details, per-tuple zones) live out of line in [`FlowExtra`].
//!
//! Values are kept in host order; the codecs (netlink, wire formats) convert
//! at the edges.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol numbers the code treats specially.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const DCCP: u8 = 33;
    pub const GRE: u8 = 47;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
    pub const UDPLITE: u8 = 136;
}

/// `IPS_*` status bits (include/uapi/linux/netfilter/nf_conntrack_common.h).
pub mod status {
    pub const EXPECTED: u32 = 1 << 0;
    pub const SEEN_REPLY: u32 = 1 << 1;
    pub const ASSURED: u32 = 1 << 2;
    pub const CONFIRMED: u32 = 1 << 3;
    pub const SRC_NAT: u32 = 1 << 4;
    pub const DST_NAT: u32 = 1 << 5;
    pub const SEQ_ADJUST: u32 = 1 << 6;
    pub const SRC_NAT_DONE: u32 = 1 << 7;
    pub const DST_NAT_DONE: u32 = 1 << 8;
    pub const DYING: u32 = 1 << 9;
    pub const FIXED_TIMEOUT: u32 = 1 << 10;
    pub const TEMPLATE: u32 = 1 << 11;
    pub const UNTRACKED: u32 = 1 << 12;
    pub const HELPER: u32 = 1 << 13;
    pub const OFFLOAD: u32 = 1 << 14;
    pub const HW_OFFLOAD: u32 = 1 << 15;
    /// Bits the kernel refuses or manages itself when a flow is created or
    /// updated through ctnetlink; they are never sent back to a kernel.
    pub const KERNEL_MANAGED: u32 =
        DYING | TEMPLATE | UNTRACKED | HELPER | OFFLOAD | HW_OFFLOAD | EXPECTED;
}

/// Kernel TCP conntrack states (`enum tcp_conntrack`).
pub mod tcp_state {
    pub const NONE: u8 = 0;
    pub const SYN_SENT: u8 = 1;
    pub const SYN_RECV: u8 = 2;
    pub const ESTABLISHED: u8 = 3;
    pub const FIN_WAIT: u8 = 4;
    pub const CLOSE_WAIT: u8 = 5;
    pub const LAST_ACK: u8 = 6;
    pub const TIME_WAIT: u8 = 7;
    pub const CLOSE: u8 = 8;
    pub const SYN_SENT2: u8 = 9;

    /// conntrack-tools' names, indexed by state.
    pub const NAMES: [&str; 10] = [
        "NONE",
        "SYN_SENT",
        "SYN_RECV",
        "ESTABLISHED",
        "FIN_WAIT",
        "CLOSE_WAIT",
        "LAST_ACK",
        "TIME_WAIT",
        "CLOSE",
        "SYN_SENT2",
    ];

    /// conntrack-tools' other names: `CLOSED` for CLOSE, and `LISTEN`, the
    /// kernel's alias of SYN_SENT2 (conntrackd.conf accepts both).
    pub const ALIASES: [(&str, u8); 2] = [("CLOSED", CLOSE), ("LISTEN", SYN_SENT2)];

    /// The state called `name` in [`NAMES`] or [`ALIASES`], any case
    /// (never NONE, which no filter can name).
    pub fn by_name(name: &str) -> Option<u8> {
        let named = NAMES.iter().enumerate().skip(1).map(|(i, n)| (*n, i as u8));
        named.chain(ALIASES).find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, s)| s)
    }

    /// The name `conntrack -L` prints for a state.
    pub fn name(state: u8) -> &'static str {
        NAMES.get(usize::from(state)).copied().unwrap_or("UNKNOWN")
    }
}

/// `IP_CT_TCP_FLAG_*` bits of the TCP protoinfo flags.
pub mod tcp_flag {
    pub const WINDOW_SCALE: u8 = 0x01;
    pub const SACK_PERM: u8 = 0x02;
    pub const CLOSE_INIT: u8 = 0x04;
    pub const BE_LIBERAL: u8 = 0x08;
    pub const DATA_UNACKNOWLEDGED: u8 = 0x10;
    pub const MAXACK_SET: u8 = 0x20;
}

/// The addresses of both tuples. IPv4 is inline; IPv6 is out of line so
/// that the common case stays small.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Addrs {
    /// `[orig src, orig dst, reply src, reply dst]`.
    V4([Ipv4Addr; 4]),
    /// `[orig src, orig dst, reply src, reply dst]`.
    V6(Box<[Ipv6Addr; 4]>),
}

/// Which tuple.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dir {
    Orig,
    Reply,
}

/// TCP protoinfo that ctnetlink exports: window scale and flags per direction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct TcpInfo {
    pub wscale_orig: u8,
    pub wscale_reply: u8,
    pub flags_orig: u8,
    pub flags_reply: u8,
}

/// One direction's NAT sequence adjustment (`CTA_SEQ_ADJ_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct SeqAdj {
    pub correction_pos: u32,
    pub offset_before: u32,
    pub offset_after: u32,
}

/// Fields that most flows do not have, kept out of line.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct FlowExtra {
    /// `CTA_LABELS`: 128 bits, bit i = label i.
    pub labels: Option<u128>,
    /// `CTA_HELP` / `CTA_HELP_NAME`.
    pub helper: Option<Box<str>>,
    /// `CTA_SEQ_ADJ_ORIG`, `CTA_SEQ_ADJ_REPLY`.
    pub seq_adj: Option<[SeqAdj; 2]>,
    /// SCTP verification tags (orig, reply).
    pub sctp_vtags: Option<[u32; 2]>,
    /// DCCP role and handshake sequence number.
    pub dccp: Option<(u8, u64)>,
    /// `CTA_TUPLE_ZONE` of the original and reply tuple, when the kernel
    /// reports directional zones.
    pub tuple_zones: Option<[u16; 2]>,
}

impl FlowExtra {
    fn is_empty(&self) -> bool {
        *self == FlowExtra::default()
    }
}

/// One conntrack entry.
///
/// `l4` holds the layer-4 part of both tuples as `[orig src, orig dst,
/// reply src, reply dst]`: ports for TCP, UDP, UDP-Lite, SCTP and DCCP; GRE
/// keys for GRE; for ICMP and ICMPv6, `[id, type << 8 | code, id, type << 8
/// | code]` (see [`Flow::icmp`]). Other protocols leave it zero.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Flow {
    pub addrs: Addrs,
    pub l4: [u16; 4],
    /// `IPS_*` bits, see [`status`].
    pub status: u32,
    /// Seconds left, as the kernel reported them.
    pub timeout: u32,
    pub mark: u32,
    /// `CTA_ZONE`.
    pub zone: u16,
    pub l4proto: u8,
    /// TCP, SCTP or DCCP protocol state; 0 for other protocols.
    pub proto_state: u8,
    pub tcp: TcpInfo,
    /// Which kernel entry this state was read from, see [`EntryId`].
    pub entry_id: EntryId,
    pub extra: Option<Box<FlowExtra>>,
}

/// The kernel's id of the conntrack entry a flow was read from (`CTA_ID`);
/// 0 when it was not read from this node's kernel (the peer's flows, or a
/// kernel that does not report it).
///
/// It tells apart two entries with the same tuples, such as one that
/// expired and the one a commit created in its place: the destroy event of
/// the old one can reach us after a dump that already shows the new one
/// (reliable events are redelivered late), and must not remove it. The
/// kernel derives the id from the entry's address, so only entries alive at
/// the same time are sure to differ; that covers redelivery, since the
/// kernel keeps an entry allocated until its destroy event is delivered. It
/// is not part of the flow's state, so flows compare equal whatever their ids,
/// and it never goes on the wire.
#[derive(Clone, Copy, Debug, Default)]
pub struct EntryId(pub u32);

impl EntryId {
    /// True when both ids are known and name different kernel entries.
    pub fn differs(self, other: EntryId) -> bool {
        self.0 != 0 && other.0 != 0 && self.0 != other.0
    }
}

impl PartialEq for EntryId {
    fn eq(&self, _: &EntryId) -> bool {
        true
    }
}

impl Eq for EntryId {}

/// What identifies a flow: its original tuple and zone. Used as the key of
/// the caches and carried by DESTROY messages.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4proto: u8,
    /// Original-tuple `l4[0]`, `l4[1]` (see [`Flow`]).
    pub l4: [u16; 2],
    pub zone: u16,
}

/// A NAT mapping as ctnetlink wants it on create (`CTA_NAT_SRC` /
/// `CTA_NAT_DST`): the address and, if it changed, the port.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NatTarget {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

impl Flow {
    /// A plain IPv4 flow with the reply tuple the inverse of the original
    /// (no NAT). Ports are taken as `(sport, dport)`.
    pub fn new_v4(l4proto: u8, src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Flow {
        Flow {
            addrs: Addrs::V4([src, dst, dst, src]),
            l4: [sport, dport, dport, sport],
            status: status::CONFIRMED,
            timeout: 0,
            mark: 0,
            zone: 0,
            l4proto,
            proto_state: 0,
            tcp: TcpInfo::default(),
            entry_id: EntryId::default(),
            extra: None,
        }
    }

    /// A plain flow of either family with no NAT.
    pub fn new(l4proto: u8, src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Flow {
        let mut flow = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Flow::new_v4(l4proto, s, d, sport, dport),
            _ => {
                let s6 = to_v6(src);
                let d6 = to_v6(dst);
                let mut f = Flow::new_v4(
                    l4proto,
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::UNSPECIFIED,
                    sport,
                    dport,
                );
                f.addrs = Addrs::V6(Box::new([s6, d6, d6, s6]));
                f
            }
        };
        if matches!(l4proto, proto::ICMP | proto::ICMPV6) {
            flow.l4 = [sport, dport, sport, dport];
        }
        flow
    }

    /// True for an IPv6 flow.
    pub fn is_ipv6(&self) -> bool {
        matches!(self.addrs, Addrs::V6(_))
    }

    /// `AF_INET` or `AF_INET6`.
    pub fn family(&self) -> u8 {
        if self.is_ipv6() { libc::AF_INET6 as u8 } else { libc::AF_INET as u8 }
    }

    /// Source address of a tuple.
    pub fn src(&self, dir: Dir) -> IpAddr {
        self.addr(dir_index(dir))
    }

    /// Destination address of a tuple.
    pub fn dst(&self, dir: Dir) -> IpAddr {
        self.addr(dir_index(dir) + 1)
    }

    /// Source port (or GRE key, or ICMP id) of a tuple.
    pub fn sport(&self, dir: Dir) -> u16 {
        self.l4[dir_index(dir)]
    }

    /// Destination port (or GRE key, or ICMP type/code) of a tuple.
    pub fn dport(&self, dir: Dir) -> u16 {
        self.l4[dir_index(dir) + 1]
    }

    /// ICMP `(type, code, id)` of a tuple.
    pub fn icmp(&self, dir: Dir) -> (u8, u8, u16) {
        let i = dir_index(dir);
        let [t, c] = self.l4[i + 1].to_be_bytes();
        (t, c, self.l4[i])
    }

    /// Set a tuple's addresses. Mixing families panics in debug builds only
    /// because callers build flows from one family's attributes.
    pub fn set_addrs(&mut self, dir: Dir, src: IpAddr, dst: IpAddr) {
        let i = dir_index(dir);
        match (&mut self.addrs, src, dst) {
            (Addrs::V4(a), IpAddr::V4(s), IpAddr::V4(d)) => {
                a[i] = s;
                a[i + 1] = d;
            }
            (addrs, s, d) => {
                let mut six = match addrs {
                    Addrs::V6(b) => **b,
                    Addrs::V4(a) => a.map(|x| x.to_ipv6_mapped()),
                };
                six[i] = to_v6(s);
                six[i + 1] = to_v6(d);
                *addrs = Addrs::V6(Box::new(six));
            }
        }
    }

    /// The identity of this flow.
    pub fn key(&self) -> FlowKey {
        FlowKey {
            src: self.src(Dir::Orig),
            dst: self.dst(Dir::Orig),
            l4proto: self.l4proto,
            l4: [self.l4[0], self.l4[1]],
            zone: self.zone,
        }
    }

    /// A tuple of this flow as a key: the original one is [`Flow::key`];
    /// the reply one is the key of an entry whose original tuple it is,
    /// which is how a local entry on a flow's NAT mapping is found.
    pub fn tuple_key(&self, dir: Dir) -> FlowKey {
        let at = if dir == Dir::Orig { 0 } else { 2 };
        FlowKey {
            src: self.src(dir),
            dst: self.dst(dir),
            l4proto: self.l4proto,
            l4: [self.l4[at], self.l4[at + 1]],
            zone: self.zone,
        }
    }

    /// True when this flow has the identity `key`, without building a key.
    pub fn matches(&self, key: &FlowKey) -> bool {
        self.l4proto == key.l4proto
            && self.zone == key.zone
            && self.l4[0] == key.l4[0]
            && self.l4[1] == key.l4[1]
            && self.src(Dir::Orig) == key.src
            && self.dst(Dir::Orig) == key.dst
    }

    /// Hash of the identity, equal to hashing [`Flow::key`].
    pub fn key_hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }

    /// Source NAT as ctnetlink's `CTA_NAT_SRC` wants it: the reply tuple's
    /// destination differs from the original source.
    pub fn snat(&self) -> Option<NatTarget> {
        let addr = self.dst(Dir::Reply);
        let port_changed = self.has_ports() && self.dport(Dir::Reply) != self.sport(Dir::Orig);
        if addr != self.src(Dir::Orig) || port_changed {
            return Some(NatTarget { addr, port: port_changed.then(|| self.dport(Dir::Reply)) });
        }
        None
    }

    /// Destination NAT (`CTA_NAT_DST`): the reply tuple's source differs from
    /// the original destination.
    pub fn dnat(&self) -> Option<NatTarget> {
        let addr = self.src(Dir::Reply);
        let port_changed = self.has_ports() && self.sport(Dir::Reply) != self.dport(Dir::Orig);
        if addr != self.dst(Dir::Orig) || port_changed {
            return Some(NatTarget { addr, port: port_changed.then(|| self.sport(Dir::Reply)) });
        }
        None
    }

    /// True when `l4` holds ports (or GRE keys), as opposed to ICMP fields.
    pub fn has_ports(&self) -> bool {
        matches!(
            self.l4proto,
            proto::TCP | proto::UDP | proto::UDPLITE | proto::SCTP | proto::DCCP | proto::GRE
        )
    }

    /// The out-of-line fields, if any.
    pub fn extra(&self) -> Option<&FlowExtra> {
        self.extra.as_deref()
    }

    /// The out-of-line fields, allocated on first use.
    pub fn extra_mut(&mut self) -> &mut FlowExtra {
        self.extra.get_or_insert_with(Default::default)
    }

    /// Drop an empty [`FlowExtra`] so equal flows compare equal.
    pub fn normalize(&mut self) {
        if self.extra.as_ref().is_some_and(|e| e.is_empty()) {
            self.extra = None;
        }
    }

    /// Take from `old`, the same flow as last known, what an update event
    /// left out. ctnetlink puts protocol info, labels and sequence
    /// adjustment into an update event only when the event is about them
    /// (a mark or status change carries none of them), so replacing the
    /// cached flow with the event would lose, say, the offset an FTP
    /// helper's NAT set on its control connection, and the peer could not
    /// forward that connection after a failover. A confirmed TCP, SCTP or
    /// DCCP entry is never in state 0, so state 0 means "not reported";
    /// labels the kernel reports only while any is set, so cleared labels
    /// read as unreported and stay (conntrackd's cache merges the same way).
    pub fn inherit_unreported(&mut self, old: &Flow) {
        let keeps_state = matches!(self.l4proto, proto::TCP | proto::SCTP | proto::DCCP);
        let protoinfo_missing = keeps_state && self.proto_state == 0 && old.proto_state != 0;
        if protoinfo_missing {
            self.proto_state = old.proto_state;
            self.tcp = old.tcp;
        }
        let Some(o) = old.extra() else { return };
        let new = self.extra.as_deref();
        let labels = new.is_none_or(|e| e.labels.is_none()).then_some(o.labels).flatten();
        let seq_adj = new.is_none_or(|e| e.seq_adj.is_none()).then_some(o.seq_adj).flatten();
        let helper = new.is_none_or(|e| e.helper.is_none()).then(|| o.helper.clone()).flatten();
        let (vtags, dccp) = if protoinfo_missing { (o.sctp_vtags, o.dccp) } else { (None, None) };
        if labels.is_none()
            && seq_adj.is_none()
            && helper.is_none()
            && vtags.is_none()
            && dccp.is_none()
        {
            return;
        }
        let e = self.extra_mut();
        e.labels = e.labels.or(labels);
        e.seq_adj = e.seq_adj.or(seq_adj);
        e.sctp_vtags = e.sctp_vtags.or(vtags);
        e.dccp = e.dccp.or(dccp);
        if e.helper.is_none() {
            e.helper = helper;
        }
    }

    /// Labels, if any.
    pub fn labels(&self) -> Option<u128> {
        self.extra().and_then(|e| e.labels)
    }

    /// Helper name, if any.
    pub fn helper(&self) -> Option<&str> {
        self.extra().and_then(|e| e.helper.as_deref())
    }

    fn addr(&self, i: usize) -> IpAddr {
        match &self.addrs {
            Addrs::V4(a) => IpAddr::V4(a[i]),
            Addrs::V6(a) => IpAddr::V6(a[i]),
        }
    }
}

impl FlowKey {
    /// True for an IPv6 key.
    pub fn is_ipv6(&self) -> bool {
        self.src.is_ipv6()
    }
}

/// The name `conntrack -L` prints for a layer-4 protocol.
pub fn proto_name(l4proto: u8) -> &'static str {
    match l4proto {
        proto::TCP => "tcp",
        proto::UDP => "udp",
        proto::ICMP => "icmp",
        proto::ICMPV6 => "icmpv6",
        proto::SCTP => "sctp",
        proto::DCCP => "dccp",
        proto::GRE => "gre",
        proto::UDPLITE => "udplite",
        _ => "unknown",
    }
}

/// conntrack's one-line format, as `conntrack -L` prints it (without
/// counters): `tcp 6 431999 ESTABLISHED src=... dst=... sport=... dport=...
/// src=... dst=... sport=... dport=... [ASSURED] mark=0 use=1`.
impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<8} {} {} ", proto_name(self.l4proto), self.l4proto, self.timeout)?;
        match self.l4proto {
            proto::TCP => write!(f, "{} ", tcp_state::name(self.proto_state))?,
            proto::SCTP | proto::DCCP => write!(f, "{} ", self.proto_state)?,
            _ => {}
        }
        for dir in [Dir::Orig, Dir::Reply] {
            write!(f, "src={} dst={} ", self.src(dir), self.dst(dir))?;
            if matches!(self.l4proto, proto::ICMP | proto::ICMPV6) {
                let (t, c, id) = self.icmp(dir);
                write!(f, "type={t} code={c} id={id} ")?;
            } else if self.l4proto == proto::GRE {
                write!(f, "srckey=0x{:x} dstkey=0x{:x} ", self.sport(dir), self.dport(dir))?;
            } else if self.has_ports() {
                write!(f, "sport={} dport={} ", self.sport(dir), self.dport(dir))?;
            }
            if dir == Dir::Orig && self.status & status::SEEN_REPLY == 0 {
                f.write_str("[UNREPLIED] ")?;
            }
        }
        if self.status & status::ASSURED != 0 {
            f.write_str("[ASSURED] ")?;
        }
        write!(f, "mark={}", self.mark)?;
        if self.zone != 0 {
            write!(f, " zone={}", self.zone)?;
        }
        if let Some(helper) = self.helper() {
            write!(f, " helper={helper}")?;
        }
        if let Some(labels) = self.labels() {
            write!(f, " labels=0x{labels:x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} src={} dst={} sport={} dport={} zone={}",
            proto_name(self.l4proto),
            self.src,
            self.dst,
            self.l4[0],
            self.l4[1],
            self.zone
        )
    }
}

/// The JSON form of a flow for `-i --json` / `-e --json`. Field names are a
/// stable interface for scripts: new fields may be added, none renamed.
impl serde::Serialize for Flow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("family", if self.is_ipv6() { "ipv6" } else { "ipv4" })?;
        map.serialize_entry("proto", proto_name(self.l4proto))?;
        map.serialize_entry("l4proto", &self.l4proto)?;
        map.serialize_entry("timeout", &self.timeout)?;
        if self.l4proto == proto::TCP {
            map.serialize_entry("state", tcp_state::name(self.proto_state))?;
        } else if self.proto_state != 0 {
            map.serialize_entry("state", &self.proto_state)?;
        }
        map.serialize_entry("orig", &TupleJson(self, Dir::Orig))?;
        map.serialize_entry("reply", &TupleJson(self, Dir::Reply))?;
        map.serialize_entry("status", &self.status)?;
        map.serialize_entry("assured", &(self.status & status::ASSURED != 0))?;
        map.serialize_entry("mark", &self.mark)?;
        map.serialize_entry("zone", &self.zone)?;
        if let Some(nat) = self.snat() {
            map.serialize_entry("snat", &nat.addr)?;
        }
        if let Some(nat) = self.dnat() {
            map.serialize_entry("dnat", &nat.addr)?;
        }
        if let Some(helper) = self.helper() {
            map.serialize_entry("helper", helper)?;
        }
        if let Some(labels) = self.labels() {
            map.serialize_entry("labels", &format!("0x{labels:x}"))?;
        }
        map.end()
    }
}

struct TupleJson<'a>(&'a Flow, Dir);

impl serde::Serialize for TupleJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (flow, dir) = (self.0, self.1);
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("src", &flow.src(dir))?;
        map.serialize_entry("dst", &flow.dst(dir))?;
        if matches!(flow.l4proto, proto::ICMP | proto::ICMPV6) {
            let (t, c, id) = flow.icmp(dir);
            map.serialize_entry("type", &t)?;
            map.serialize_entry("code", &c)?;
            map.serialize_entry("id", &id)?;
        } else if flow.has_ports() {
            map.serialize_entry("sport", &flow.sport(dir))?;
            map.serialize_entry("dport", &flow.dport(dir))?;
        }
        map.end()
    }
}

fn dir_index(dir: Dir) -> usize {
    match dir {
        Dir::Orig => 0,
        Dir::Reply => 2,
    }
}

fn to_v6(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_id_tells_entries_apart_but_not_flows() {
        let mut a = Flow::new_v4(proto::UDP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1, 53);
        let mut b = a.clone();
        a.entry_id = EntryId(7);
        b.entry_id = EntryId(8);
        assert_eq!(a, b, "the id is not part of the flow's state");
        assert!(a.entry_id.differs(b.entry_id));
        assert!(!a.entry_id.differs(EntryId(7)));
        // Unknown on either side (the peer's flows): never a difference.
        assert!(!a.entry_id.differs(EntryId::default()));
        assert!(!EntryId::default().differs(b.entry_id));
    }

    #[test]
    fn an_update_event_keeps_what_it_did_not_report() {
        let mut known = Flow::new_v4(proto::TCP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1, 21);
        known.proto_state = tcp_state::ESTABLISHED;
        known.tcp.wscale_orig = 7;
        let adj = SeqAdj { correction_pos: 100, offset_before: 0, offset_after: u32::MAX - 1 };
        known.extra_mut().seq_adj = Some([adj, SeqAdj::default()]);
        known.extra_mut().labels = Some(1 << 5);
        known.extra_mut().helper = Some("ftp".into());

        // A mark change: no protocol info, labels or adjustment in it.
        let mut event = Flow::new_v4(proto::TCP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1, 21);
        event.mark = 9;
        event.inherit_unreported(&known);
        assert_eq!(event.proto_state, tcp_state::ESTABLISHED);
        assert_eq!(event.tcp.wscale_orig, 7);
        assert_eq!(event.extra().and_then(|e| e.seq_adj), Some([adj, SeqAdj::default()]));
        assert_eq!(event.labels(), Some(1 << 5));
        assert_eq!(event.helper(), Some("ftp"));
        assert_eq!(event.mark, 9, "what the event reports wins");

        // What an event does report replaces the old value.
        let mut closing = known.clone();
        closing.proto_state = tcp_state::TIME_WAIT;
        let newer = SeqAdj { correction_pos: 200, offset_before: 5, offset_after: 7 };
        closing.extra_mut().seq_adj = Some([newer, SeqAdj::default()]);
        closing.inherit_unreported(&known);
        assert_eq!(closing.proto_state, tcp_state::TIME_WAIT);
        assert_eq!(closing.extra().and_then(|e| e.seq_adj).map(|a| a[0]), Some(newer));

        // UDP has no protocol state to keep.
        let mut udp = Flow::new_v4(proto::UDP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1, 53);
        let before = udp.clone();
        udp.inherit_unreported(&before);
        assert_eq!(udp, before);
    }

    #[test]
    fn common_flow_is_64_bytes() {
        assert_eq!(std::mem::size_of::<Flow>(), 64);
    }

    #[test]
    fn key_matches_and_hash_agree() {
        let f = Flow::new_v4(proto::TCP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1000, 80);
        let k = f.key();
        assert!(f.matches(&k));
        let mut other = k;
        other.l4[1] = 81;
        assert!(!f.matches(&other));
        use std::collections::hash_map::DefaultHasher;
        let (mut a, mut b) = (DefaultHasher::new(), DefaultHasher::new());
        f.key_hash(&mut a);
        k.hash(&mut b);
        assert_eq!(a.finish(), b.finish());
    }

    #[test]
    fn nat_is_derived_from_the_reply_tuple() {
        let mut f = Flow::new_v4(
            proto::TCP,
            [192, 168, 1, 10].into(),
            [198, 51, 100, 7].into(),
            40000,
            443,
        );
        assert_eq!(f.snat(), None);
        assert_eq!(f.dnat(), None);
        // SNAT to 203.0.113.5:51234: the reply goes back to the NAT address.
        f.set_addrs(Dir::Reply, [198, 51, 100, 7].into(), [203, 0, 113, 5].into());
        f.l4[3] = 51234;
        assert_eq!(f.snat(), Some(NatTarget { addr: [203, 0, 113, 5].into(), port: Some(51234) }));
        assert_eq!(f.dnat(), None);
        // DNAT: the reply comes from the real server.
        let mut d =
            Flow::new_v4(proto::UDP, [10, 0, 0, 1].into(), [203, 0, 113, 5].into(), 5000, 53);
        d.set_addrs(Dir::Reply, [192, 168, 1, 53].into(), [10, 0, 0, 1].into());
        assert_eq!(d.dnat(), Some(NatTarget { addr: [192, 168, 1, 53].into(), port: None }));
    }

    #[test]
    fn icmp_fields_and_ipv6() {
        let f = Flow::new(
            proto::ICMPV6,
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            0x1234,
            u16::from_be_bytes([128, 0]),
        );
        assert!(f.is_ipv6());
        assert_eq!(f.icmp(Dir::Orig), (128, 0, 0x1234));
        assert_eq!(f.key().src, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(f.snat(), None);
    }

    #[test]
    fn display_is_conntrack_like() {
        let mut f = Flow::new_v4(proto::TCP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1000, 80);
        f.proto_state = tcp_state::ESTABLISHED;
        f.status |= status::SEEN_REPLY | status::ASSURED;
        f.timeout = 300;
        let s = f.to_string();
        assert!(
            s.starts_with(
                "tcp      6 300 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1000 dport=80"
            ),
            "{s}"
        );
        assert!(s.contains("[ASSURED] mark=0"), "{s}");
    }

    #[test]
    fn json_has_stable_field_names() {
        let mut f = Flow::new_v4(proto::TCP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1000, 80);
        f.proto_state = tcp_state::ESTABLISHED;
        f.set_addrs(Dir::Reply, [10, 0, 0, 2].into(), [203, 0, 113, 5].into());
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["proto"], "tcp");
        assert_eq!(v["state"], "ESTABLISHED");
        assert_eq!(v["orig"]["sport"], 1000);
        assert_eq!(v["reply"]["dst"], "203.0.113.5");
        assert_eq!(v["snat"], "203.0.113.5");
        assert!(v.get("dnat").is_none());
    }
}
