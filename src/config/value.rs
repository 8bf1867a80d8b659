//! Scalar syntaxes of the config file: durations, sizes, protocol names,
//! TCP state names. Parsers return `None` or a message; the caller adds the
//! key and position.

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
pub(super) fn protocol(s: &str) -> Result<u8, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u8>() {
        return Ok(n);
    }
    PROTOCOLS.iter().find(|(name, _)| name.eq_ignore_ascii_case(s)).map(|&(_, n)| n).ok_or_else(
        || {
            format!(
                "unknown protocol \"{s}\" (use tcp, udp, icmp, icmpv6, sctp, dccp, gre, udplite \
                 or a number 0-255)"
            )
        },
    )
}

/// The name [`protocol`] reads back for `n`.
pub(super) fn protocol_name(n: u8) -> String {
    PROTOCOLS
        .iter()
        .find(|&&(_, p)| p == n)
        .map_or_else(|| n.to_string(), |(name, _)| (*name).to_owned())
}

/// A TCP state name as conntrack prints it (`ESTABLISHED`), case-insensitive;
/// `CLOSED` is conntrackd's alias of `CLOSE`.
pub(super) fn tcp_state(s: &str) -> Result<u8, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("CLOSED") {
        return Ok(tcp_state::CLOSE);
    }
    tcp_state::NAMES
        .iter()
        .position(|name| name.eq_ignore_ascii_case(s))
        .filter(|&i| i != usize::from(tcp_state::NONE))
        .map(|i| i as u8)
        .ok_or_else(|| {
            format!(
                "unknown TCP state \"{s}\" (use SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, \
                 CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE or SYN_SENT2)"
            )
        })
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
        assert!(protocol("tcpp").unwrap_err().contains("\"tcpp\""));
        for n in 0..=255u8 {
            assert_eq!(protocol(&protocol_name(n)), Ok(n));
        }
        assert_eq!(tcp_state("established"), Ok(tcp_state::ESTABLISHED));
        assert_eq!(tcp_state("CLOSED"), Ok(tcp_state::CLOSE));
        assert_eq!(tcp_state("TIME_WAIT"), Ok(tcp_state::TIME_WAIT));
        assert!(tcp_state("NONE").is_err());
        assert!(tcp_state("OPEN").is_err());
    }
}
