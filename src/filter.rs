//! Accept/ignore flows by protocol, address (CIDR) and TCP state.
//!
//! Rules, as in conntrackd's userspace filter: for each of the three
//! categories, a non-empty accept list means the flow must match it, and a
//! match in the ignore list rejects the flow. The address rules look at the
//! flow's *real* endpoints, the original source and the reply source (the
//! original destination after DNAT), the two addresses conntrackd's address
//! filter checks. The TCP state rules apply to TCP flows only.
//!
//! [`Filter::accepts`] runs on every kernel event, so it does no allocation:
//! protocols and states are bitmaps, prefixes are pre-masked integers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::{AcceptIgnore, Cidr, Config, FilterConfig};
use crate::flow::{Addrs, Flow, proto};

/// Decides which kernel flows are replicated.
#[derive(Clone, Debug)]
pub struct Filter {
    protocols: AcceptIgnoreSet<ProtoSet>,
    tcp_states: AcceptIgnoreSet<u16>,
    addresses: AcceptIgnoreSet<PrefixSet>,
    /// Loopback and sync-link addresses: a match always rejects.
    always_ignore: PrefixSet,
}

impl Filter {
    /// A filter from the config's `general.filter` section. When the section
    /// asks for it, the sync channels' local and peer addresses are ignored:
    /// flows between the firewalls on the sync link are theirs alone.
    pub fn from_config(config: &Config) -> Filter {
        let sync_addresses = config.sync.channels.iter().flat_map(|c| [c.local, c.remote()]);
        Filter::new(&config.general.filter, sync_addresses)
    }

    /// A filter from a filter section and the addresses of the sync links
    /// (ignored if `filter.ignore_sync_addresses`).
    pub fn new(filter: &FilterConfig, sync_addresses: impl IntoIterator<Item = IpAddr>) -> Filter {
        let mut always_ignore = PrefixSet::default();
        if filter.ignore_loopback {
            always_ignore.insert(Cidr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8));
            always_ignore.insert(Cidr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128));
        }
        if filter.ignore_sync_addresses {
            for addr in sync_addresses {
                if !addr.is_unspecified() {
                    always_ignore.insert(Cidr::host(addr));
                }
            }
        }
        Filter {
            protocols: AcceptIgnoreSet::build(&filter.protocols, |set: &mut ProtoSet, p| {
                set.0[usize::from(*p)] = true
            }),
            tcp_states: AcceptIgnoreSet::build(&filter.tcp_states, |set: &mut u16, s| {
                *set |= 1u16.checked_shl(u32::from(*s)).unwrap_or(0)
            }),
            addresses: AcceptIgnoreSet::build(&filter.addresses, |set: &mut PrefixSet, c| {
                set.insert(*c)
            }),
            always_ignore,
        }
    }

    /// A filter that accepts every flow.
    pub fn accept_all() -> Filter {
        Filter::new(&FilterConfig::accept_all(), [])
    }

    /// True when `flow` should be kept in the internal cache and sent to the
    /// peers.
    pub fn accepts(&self, flow: &Flow) -> bool {
        let proto = flow.l4proto;
        if !self.protocols.admits(|set| set.0[usize::from(proto)]) {
            return false;
        }
        if proto == proto::TCP {
            let bit = 1u16.checked_shl(u32::from(flow.proto_state)).unwrap_or(0);
            if !self.tcp_states.admits(|set| set & bit != 0) {
                return false;
            }
        }
        let (a, b) = real_endpoints(&flow.addrs);
        if self.always_ignore.contains(a) || self.always_ignore.contains(b) {
            return false;
        }
        self.addresses.admits(|set| set.contains(a) || set.contains(b))
    }
}

/// Orig source and reply source: the endpoints before NAT on the client
/// side and after DNAT on the server side.
fn real_endpoints(addrs: &Addrs) -> (IpAddr, IpAddr) {
    match addrs {
        Addrs::V4(a) => (IpAddr::V4(a[0]), IpAddr::V4(a[2])),
        Addrs::V6(a) => (IpAddr::V6(a[0]), IpAddr::V6(a[2])),
    }
}

/// One category's compiled lists.
#[derive(Clone, Debug)]
struct AcceptIgnoreSet<S> {
    accept: Option<S>,
    ignore: Option<S>,
}

impl<S: Default> AcceptIgnoreSet<S> {
    fn build<T>(lists: &AcceptIgnore<T>, mut add: impl FnMut(&mut S, &T)) -> Self {
        let mut compile = |items: &[T]| {
            (!items.is_empty()).then(|| {
                let mut set = S::default();
                items.iter().for_each(|i| add(&mut set, i));
                set
            })
        };
        AcceptIgnoreSet { accept: compile(&lists.accept), ignore: compile(&lists.ignore) }
    }

    /// Applies both lists given a membership test.
    fn admits(&self, matches: impl Fn(&S) -> bool) -> bool {
        self.accept.as_ref().is_none_or(&matches) && !self.ignore.as_ref().is_some_and(&matches)
    }
}

/// A bitmap of IP protocol numbers.
#[derive(Clone, Debug)]
struct ProtoSet([bool; 256]);

impl Default for ProtoSet {
    fn default() -> Self {
        ProtoSet([false; 256])
    }
}

/// Prefixes by family, as (network, mask) integers, so that a lookup is a
/// few AND-and-compare steps.
#[derive(Clone, Debug, Default)]
struct PrefixSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl PrefixSet {
    fn insert(&mut self, cidr: Cidr) {
        match (cidr.addr(), cidr.netmask()) {
            (IpAddr::V4(a), IpAddr::V4(m)) => self.v4.push((u32::from(a), u32::from(m))),
            (IpAddr::V6(a), IpAddr::V6(m)) => self.v6.push((u128::from(a), u128::from(m))),
            // A prefix and its netmask are of one family.
            _ => {}
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => {
                let ip = u32::from(ip);
                self.v4.iter().any(|&(net, mask)| ip & mask == net)
            }
            IpAddr::V6(ip) => {
                let ip = u128::from(ip);
                self.v6.iter().any(|&(net, mask)| ip & mask == net)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Dir, tcp_state};

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn v4(l4proto: u8, src: &str, dst: &str) -> Flow {
        Flow::new(l4proto, src.parse().unwrap(), dst.parse().unwrap(), 40000, 80)
    }

    fn tcp(state: u8) -> Flow {
        let mut f = v4(proto::TCP, "192.0.2.1", "198.51.100.1");
        f.proto_state = state;
        f
    }

    fn open() -> FilterConfig {
        FilterConfig::accept_all()
    }

    #[test]
    fn empty_filter_accepts_everything_but_loopback() {
        let f = Filter::new(&FilterConfig::default(), []);
        assert!(f.accepts(&v4(proto::UDP, "192.0.2.1", "198.51.100.1")));
        assert!(!f.accepts(&v4(proto::UDP, "127.0.0.1", "127.0.0.1")));
        assert!(!f.accepts(&v4(proto::UDP, "::1", "::1")));
        assert!(Filter::accept_all().accepts(&v4(proto::UDP, "127.0.0.1", "127.0.0.1")));
    }

    #[test]
    fn sync_addresses_are_ignored_on_request() {
        let sync: IpAddr = "10.255.0.1".parse().unwrap();
        let flow = v4(proto::UDP, "10.255.0.1", "10.255.0.2");
        assert!(!Filter::new(&FilterConfig::default(), [sync]).accepts(&flow));
        let keep = FilterConfig { ignore_sync_addresses: false, ..FilterConfig::default() };
        assert!(Filter::new(&keep, [sync]).accepts(&flow));
    }

    #[test]
    fn protocol_lists() {
        let mut cfg = open();
        cfg.protocols.accept = vec![proto::TCP, proto::UDP];
        let f = Filter::new(&cfg, []);
        assert!(f.accepts(&v4(proto::TCP, "192.0.2.1", "192.0.2.2")));
        assert!(!f.accepts(&v4(proto::ICMP, "192.0.2.1", "192.0.2.2")));
        cfg.protocols.ignore = vec![proto::UDP];
        let f = Filter::new(&cfg, []);
        assert!(!f.accepts(&v4(proto::UDP, "192.0.2.1", "192.0.2.2")));
        assert!(f.accepts(&v4(proto::TCP, "192.0.2.1", "192.0.2.2")));
    }

    #[test]
    fn address_lists_match_real_endpoints() {
        let mut cfg = open();
        cfg.addresses.ignore = vec![cidr("192.168.1.0/24")];
        let f = Filter::new(&cfg, []);
        assert!(!f.accepts(&v4(proto::TCP, "192.168.1.7", "203.0.113.1")));
        assert!(!f.accepts(&v4(proto::TCP, "203.0.113.1", "192.168.1.7")));
        assert!(f.accepts(&v4(proto::TCP, "203.0.113.1", "203.0.113.2")));
        // DNAT: the client asked for a public address, the reply comes from
        // the ignored backend: the real destination decides.
        let mut dnat = v4(proto::TCP, "203.0.113.9", "198.51.100.80");
        dnat.set_addrs(Dir::Reply, "192.168.1.80".parse().unwrap(), "203.0.113.9".parse().unwrap());
        assert!(!f.accepts(&dnat));

        let mut cfg = open();
        cfg.addresses.accept = vec![cidr("2001:db8::/32")];
        let f = Filter::new(&cfg, []);
        assert!(f.accepts(&v4(proto::TCP, "2001:db8::1", "2001:db9::1")));
        assert!(!f.accepts(&v4(proto::TCP, "2001:db9::1", "2001:dba::1")));
        assert!(!f.accepts(&v4(proto::TCP, "192.0.2.1", "192.0.2.2")));
    }

    #[test]
    fn tcp_states_apply_to_tcp_only() {
        let mut cfg = open();
        cfg.tcp_states.accept = vec![tcp_state::ESTABLISHED];
        cfg.tcp_states.ignore = vec![tcp_state::TIME_WAIT];
        let f = Filter::new(&cfg, []);
        assert!(f.accepts(&tcp(tcp_state::ESTABLISHED)));
        assert!(!f.accepts(&tcp(tcp_state::SYN_SENT)));
        assert!(!f.accepts(&tcp(tcp_state::TIME_WAIT)));
        assert!(f.accepts(&v4(proto::UDP, "192.0.2.1", "192.0.2.2")));

        let mut cfg = open();
        cfg.tcp_states.ignore = vec![tcp_state::TIME_WAIT, tcp_state::CLOSE];
        let f = Filter::new(&cfg, []);
        assert!(f.accepts(&tcp(tcp_state::ESTABLISHED)));
        assert!(!f.accepts(&tcp(tcp_state::CLOSE)));
        // Out-of-range states from a future kernel do not panic and match nothing.
        assert!(f.accepts(&tcp(200)));
    }

    #[test]
    fn from_config_ignores_channel_addresses() {
        let cfg = Config::default_for_tests();
        let f = Filter::from_config(&cfg);
        let ch = &cfg.sync.channels[0];
        let peer = ch.remote();
        assert!(!f.accepts(&Flow::new(proto::UDP, ch.local, peer, 3780, 3780)));
        assert!(f.accepts(&v4(proto::UDP, "192.0.2.1", "192.0.2.2")));
    }
}
