//! Scalar syntaxes of the config file: durations, sizes, protocol names,
//! TCP state names, and address prefixes ([`Cidr`]). Parsers return `None`
//! or a message; the caller adds the key and position.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use super::raw::Scalar;
use crate::flow::{proto, tcp_state};

/// A plain integer.
pub(super) fn integer(v: &Scalar) -> Option<u64> {
    match v {
        Scalar::Int(n) => Some(*n),
        Scalar::Text(s) => s.trim().parse().ok(),
    }
}

/// `500ms`, `1s`, `2m`, `1h`, combinations such as `1m30s`, or a plain
/// number of seconds.
pub(super) fn duration(v: &Scalar) -> Option<Duration> {
    let s = match v {
        Scalar::Int(n) => return Some(Duration::from_secs(*n)),
        Scalar::Text(s) => s.trim(),
    };
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            _ => return None,
        };
        total = total.checked_add(part)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// The shortest exact spelling of `d` that [`duration`] reads back.
pub(super) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) || !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    match secs {
        0 => "0s".to_owned(),
        s if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Bytes or a count: a number, optionally with `K`, `M` or `G` (powers of
/// 1024, an optional trailing `iB` or `B`).
pub(super) fn size(v: &Scalar) -> Option<usize> {
    let s = match v {
        Scalar::Int(n) => return usize::try_from(*n).ok(),
        Scalar::Text(s) => s.trim(),
    };
    let s = s.strip_suffix("iB").or_else(|| s.strip_suffix('B')).unwrap_or(s);
    let (num, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: usize = num.trim().parse().ok()?;
    n.checked_mul(1usize.checked_shl(shift)?)
}

/// Protocol names conntrackd's filter knows, and their numbers.
const PROTOCOLS: [(&str, u8); 9] = [
    ("tcp", proto::TCP),
    ("udp", proto::UDP),
    ("icmp", proto::ICMP),
    ("icmpv6", proto::ICMPV6),
    ("ipv6-icmp", proto::ICMPV6),
    ("sctp", proto::SCTP),
    ("dccp", proto::DCCP),
    ("gre", proto::GRE),
    ("udplite", proto::UDPLITE),
];

/// A protocol name (case-insensitive) or number 0-255.
pub(super) fn protocol(s: &str) -> Result<u8, FilterValueError> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u8>() {
        return Ok(n);
    }
    PROTOCOLS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(s))
        .map(|&(_, n)| n)
        .ok_or_else(|| FilterValueError::Protocol(s.to_owned()))
}

/// The name [`protocol`] reads back for `n`.
pub(super) fn protocol_name(n: u8) -> String {
    PROTOCOLS
        .iter()
        .find(|&&(_, p)| p == n)
        .map_or_else(|| n.to_string(), |(name, _)| (*name).to_owned())
}

/// A TCP state name as conntrack prints it (`ESTABLISHED`), or one of
/// conntrack-tools' aliases (`CLOSED`, `LISTEN`), case-insensitive.
pub(super) fn tcp_state(s: &str) -> Result<u8, FilterValueError> {
    let s = s.trim();
    tcp_state::by_name(s).ok_or_else(|| FilterValueError::TcpState(s.to_owned()))
}

/// An address or prefix of `general.filter.addresses`.
pub(super) fn address(s: &str) -> Result<Cidr, FilterValueError> {
    s.parse().map_err(|error| FilterValueError::Address { text: s.to_owned(), error })
}

/// A `general.filter` list item that is not a protocol, TCP state or
/// address; the config error adds the file, line and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum FilterValueError {
    /// No protocol has this name or number.
    Protocol(String),
    /// No TCP state has this name.
    TcpState(String),
    /// Not an address or prefix.
    Address {
        /// The item as written.
        text: String,
        /// What is wrong with it.
        error: CidrError,
    },
}

impl fmt::Display for FilterValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterValueError::Protocol(s) => write!(
                f,
                "unknown protocol \"{s}\" (use tcp, udp, icmp, icmpv6, sctp, dccp, gre, udplite \
                 or a number 0-255)"
            ),
            FilterValueError::TcpState(s) => write!(
                f,
                "unknown TCP state \"{s}\" (use SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, \
                 CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE or SYN_SENT2)"
            ),
            FilterValueError::Address { text, error } => {
                write!(f, "invalid address or prefix \"{text}\": {error}")
            }
        }
    }
}

impl std::error::Error for FilterValueError {}

/// An IPv4 or IPv6 prefix, such as `10.0.0.0/8` or `fe80::/10`; a bare
/// address is a host prefix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// The prefix `addr/prefix_len`, with the host bits cleared. A length
    /// beyond the family's width is clamped to it.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Cidr {
        let (addr, prefix_len) = match addr {
            IpAddr::V4(a) => {
                let len = prefix_len.min(32);
                (IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(len))), len)
            }
            IpAddr::V6(a) => {
                let len = prefix_len.min(128);
                (IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(len))), len)
            }
        };
        Cidr { addr, prefix_len }
    }

    /// The prefix that holds only `addr`.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr::new(addr, if addr.is_ipv4() { 32 } else { 128 })
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The netmask: `prefix_len` leading one bits, in the family of the
    /// address.
    pub fn netmask(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(mask32(self.prefix_len))),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(mask128(self.prefix_len))),
        }
    }

    /// True when `ip` lies in this prefix. IPv4 prefixes do not match
    /// IPv4-mapped IPv6 addresses: conntrack keeps the two families apart.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix_len) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix_len) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// Why a string is not a [`Cidr`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CidrError {
    /// The part before `/` is not an IP address.
    BadAddress,
    /// The part after `/` is not a number within the family's width.
    BadPrefix,
    /// Bits are set beyond the prefix (`10.0.0.1/8`): probably a typo.
    HostBitsSet,
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CidrError::BadAddress => "not an IPv4 or IPv6 address",
            CidrError::BadPrefix => "prefix length must be 0-32 for IPv4, 0-128 for IPv6",
            CidrError::HostBitsSet => "address has bits set beyond the prefix length",
        })
    }
}

impl std::error::Error for CidrError {}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| CidrError::BadAddress)?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => width,
            Some(l) => match l.trim().parse::<u8>() {
                Ok(n) if n <= width => n,
                _ => return Err(CidrError::BadPrefix),
            },
        };
        let cidr = Cidr::new(addr, len);
        if cidr.addr != addr {
            return Err(CidrError::HostBitsSet);
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Scalar {
        Scalar::Text(s.to_owned())
    }

    #[test]
    fn durations() {
        let d = |s| duration(&text(s));
        assert_eq!(d("1s"), Some(Duration::from_secs(1)));
        assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(d("2m"), Some(Duration::from_secs(120)));
        assert_eq!(d("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(d("1s500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(d("60"), Some(Duration::from_secs(60)));
        assert_eq!(d(" 4s "), Some(Duration::from_secs(4)));
        assert_eq!(duration(&Scalar::Int(7)), Some(Duration::from_secs(7)));
        for bad in ["", "s", "1x", "1.5s", "-1s", "1 s", "ms", "99999999999999999999h"] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
        for ms in [0u64, 1, 500, 1000, 1500, 60_000, 90_000, 3_600_000, 7_200_500] {
            let dur = Duration::from_millis(ms);
            assert_eq!(duration(&text(&format_duration(dur))), Some(dur), "{ms}");
        }
        assert_eq!(format_duration(Duration::from_secs(180)), "3m");
        assert_eq!(format_duration(Duration::from_secs(4)), "4s");
    }

    #[test]
    fn sizes() {
        let z = |s| size(&text(s));
        assert_eq!(z("8M"), Some(8 << 20));
        assert_eq!(z("8MiB"), Some(8 << 20));
        assert_eq!(z("64k"), Some(64 << 10));
        assert_eq!(z("1G"), Some(1 << 30));
        assert_eq!(z("100"), Some(100));
        assert_eq!(z("100B"), Some(100));
        assert_eq!(size(&Scalar::Int(42)), Some(42));
        for bad in ["", "M", "1T", "-1", "1.5M", "x"] {
            assert_eq!(z(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn protocols_and_states() {
        assert_eq!(protocol("TCP"), Ok(6));
        assert_eq!(protocol("ipv6-icmp"), Ok(58));
        assert_eq!(protocol("132"), Ok(132));
        assert!(protocol("256").is_err());
        assert!(protocol("tcpp").unwrap_err().to_string().contains("\"tcpp\""));
        for n in 0..=255u8 {
            assert_eq!(protocol(&protocol_name(n)), Ok(n));
        }
        assert_eq!(tcp_state("established"), Ok(tcp_state::ESTABLISHED));
        assert_eq!(tcp_state("CLOSED"), Ok(tcp_state::CLOSE));
        assert_eq!(tcp_state("listen"), Ok(tcp_state::SYN_SENT2));
        assert_eq!(tcp_state("syn_sent2"), Ok(tcp_state::SYN_SENT2));
        assert_eq!(tcp_state("TIME_WAIT"), Ok(tcp_state::TIME_WAIT));
        assert!(tcp_state("NONE").is_err());
        assert!(tcp_state("OPEN").is_err());
        assert_eq!(
            protocol("tcpp").unwrap_err().to_string(),
            "unknown protocol \"tcpp\" (use tcp, udp, icmp, icmpv6, sctp, dccp, gre, udplite or a number 0-255)"
        );
        assert_eq!(
            tcp_state(" OPEN ").unwrap_err().to_string(),
            "unknown TCP state \"OPEN\" (use SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE or SYN_SENT2)"
        );
        assert_eq!(
            address("10.0.0.1/8").unwrap_err().to_string(),
            "invalid address or prefix \"10.0.0.1/8\": address has bits set beyond the prefix length"
        );
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c = cidr("10.0.0.0/8");
        assert!(c.contains("10.255.1.2".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert_eq!(cidr("10.1.2.3"), Cidr::host("10.1.2.3".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        let c6 = cidr("2001:db8::/32");
        assert!(c6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!c6.contains("2001:db9::1".parse().unwrap()));
        assert!(!c6.contains("10.0.0.1".parse().unwrap()));
        assert!(cidr("::/0").contains("::1".parse().unwrap()));
        assert_eq!(cidr("fe80::1/128").to_string(), "fe80::1/128");
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn cidr_netmask_has_prefix_len_leading_ones() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(cidr("10.0.0.0/8").netmask(), ip("255.0.0.0"));
        assert_eq!(cidr("192.0.2.0/27").netmask(), ip("255.255.255.224"));
        assert_eq!(cidr("0.0.0.0/0").netmask(), ip("0.0.0.0"));
        assert_eq!(cidr("2001:db8::/32").netmask(), ip("ffff:ffff::"));
        assert_eq!(cidr("::1").netmask(), IpAddr::V6(Ipv6Addr::from(u128::MAX)));
    }

    #[test]
    fn cidr_rejects_bad_input() {
        assert_eq!("10.0.0.x".parse::<Cidr>(), Err(CidrError::BadAddress));
        assert_eq!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::BadPrefix));
        assert_eq!("10.0.0.0/-1".parse::<Cidr>(), Err(CidrError::BadPrefix));
        assert_eq!("::/129".parse::<Cidr>(), Err(CidrError::BadPrefix));
        assert_eq!("10.0.0.1/8".parse::<Cidr>(), Err(CidrError::HostBitsSet));
        assert_eq!("".parse::<Cidr>(), Err(CidrError::BadAddress));
    }
}
