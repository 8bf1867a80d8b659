//! Refused sync datagrams in the operator's log: one line per reason per
//! interval, naming the sender and how many more were refused meanwhile.
//!
//! The refusal is decided and counted where it happens (the protocol
//! core returns a [`Refusal`] and counts it in its `drop_*`; a link counts
//! `foreign_source` and `foreign_port`); this module only turns it into a log line, so the
//! core stays free of logging and a storm of forgeries costs one line per
//! interval, not one per datagram.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::ftfw::Refusal;
use crate::logging::RateLimit;

/// Why a datagram was refused, as an operator needs to tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The MAC does not match.
    BadMac,
    /// A key id that is not configured here.
    UnknownKey,
    /// The two sides disagree on whether datagrams are authenticated, or
    /// encrypted.
    AuthMismatch,
    /// A stale handshake answer, or data already received.
    Replay,
    /// Checksum mismatch.
    BadCrc,
    /// Does not parse.
    Malformed,
    /// Not from the configured peer address.
    WrongSource,
    /// From the peer's address, but not from the port it sends from.
    WrongPort,
}

const ALL: [Reason; 8] = [
    Reason::BadMac,
    Reason::UnknownKey,
    Reason::AuthMismatch,
    Reason::Replay,
    Reason::BadCrc,
    Reason::Malformed,
    Reason::WrongSource,
    Reason::WrongPort,
];

impl Reason {
    /// What it means and which counter has it, for the log line.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::BadMac => {
                "MAC mismatch: forged, altered, or made with another key (protocol.drop_bad_mac)"
            }
            Reason::UnknownKey => {
                "signed with a key id not in our key file (protocol.drop_unknown_key); check both key files during a rotation"
            }
            Reason::AuthMismatch => {
                "one side has sync.auth.key_file and the other not, or sync.auth.encrypt differs (protocol.drop_auth)"
            }
            Reason::Replay => {
                "replayed or duplicated: its data or handshake answer is already past (protocol.drop_replay)"
            }
            Reason::BadCrc => "checksum mismatch (protocol.drop_bad_crc)",
            Reason::Malformed => {
                "malformed or truncated (protocol.drop_malformed, drop_truncated, drop_bad_magic, drop_bad_version)"
            }
            Reason::WrongSource => "not from the configured peer address (links.foreign_source)",
            Reason::WrongPort => {
                "from the peer's address but not from the port it sends from (links.foreign_port); a peer that restarted on a new port is followed once its old port has been silent for half sync.peer_timeout"
            }
        }
    }

    fn index(self) -> usize {
        ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl From<Refusal> for Reason {
    fn from(r: Refusal) -> Reason {
        match r {
            Refusal::AuthMismatch => Reason::AuthMismatch,
            Refusal::UnknownKey => Reason::UnknownKey,
            Refusal::BadMac => Reason::BadMac,
            Refusal::BadCrc => Reason::BadCrc,
            Refusal::Malformed => Reason::Malformed,
            Refusal::Replay => Reason::Replay,
        }
    }
}

/// How often each reason may log a line.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// One rate limiter per reason.
#[derive(Debug)]
pub struct RejectLog {
    limits: Vec<RateLimit>,
}

impl Default for RejectLog {
    fn default() -> RejectLog {
        RejectLog::new(INTERVAL)
    }
}

impl RejectLog {
    pub fn new(interval: Duration) -> RejectLog {
        RejectLog { limits: ALL.iter().map(|_| RateLimit::new(interval)).collect() }
    }

    /// The line to log for a datagram refused now, if this reason may log.
    pub fn line(
        &mut self,
        reason: Reason,
        from: SocketAddr,
        link: &str,
        now: Instant,
    ) -> Option<String> {
        let suppressed = self.limits[reason.index()].allow(now)?;
        Some(format!(
            "sync link {link}: refused a datagram from {from}: {}; {suppressed} more refused for this reason since the last such line",
            reason.describe()
        ))
    }

    /// Log a datagram refused now (at most one line per reason per interval).
    pub fn note(&mut self, reason: Reason, from: SocketAddr, link: &str, now: Instant) {
        if let Some(line) = self.line(reason, from, link, now) {
            log::warn!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_logs_once_per_interval_with_the_count_it_swallowed() {
        let mut log = RejectLog::new(Duration::from_secs(10));
        let from: SocketAddr = "10.255.0.1:40000".parse().unwrap();
        let t0 = Instant::now();
        let first = log.line(Reason::BadMac, from, "udp 10.255.0.1:3780", t0).unwrap();
        assert!(first.contains("10.255.0.1:40000") && first.contains("MAC mismatch"), "{first}");
        assert!(first.contains("0 more refused"), "{first}");
        for i in 1..=5 {
            assert_eq!(log.line(Reason::BadMac, from, "l", t0 + Duration::from_secs(i)), None);
        }
        // Another reason has its own budget.
        let crc = log.line(Reason::BadCrc, from, "l", t0 + Duration::from_secs(1)).unwrap();
        assert!(crc.contains("checksum"), "{crc}");
        let next = log.line(Reason::BadMac, from, "l", t0 + Duration::from_secs(11)).unwrap();
        assert!(next.contains("5 more refused"), "{next}");
    }
}
