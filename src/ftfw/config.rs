//! The core's configuration: the dialect it speaks and its tunables,
//! built from the config file's `sync` section by [`FtfwConfig::from_sync`].

use super::*;

/// Which protocol the core speaks: defined with the config's `sync.wire`,
/// which the config reads without knowing the core.
pub use crate::config::Dialect;

/// Tunables of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FtfwConfig {
    /// The protocol spoken; it also chooses the wire codec.
    pub dialect: Dialect,
    /// Most sent messages held awaiting acknowledgment; when full, sending
    /// new data pauses (backpressure), nothing is dropped.
    pub resend_queue: usize,
    /// The receiver acknowledges every `ack_window` accepted messages.
    pub ack_window: u32,
    /// An idle side sends one ALIVE (with its latest ACK) this often.
    pub alive_interval: Duration,
    /// No datagram from the peer for this long: the peer is down.
    pub peer_timeout: Duration,
    /// Largest datagram built.
    pub max_datagram: usize,
    /// A sequence number further ahead of the expected one than this is
    /// ignored (a corrupted or forged datagram must not derail tracking).
    pub max_seq_jump: u32,
    /// Native dialect: the shared keys that authenticate every datagram
    /// (the first signs what we send, any of them is accepted). Empty:
    /// no authentication. The conntrackd dialect ignores them.
    pub auth_keys: Vec<native::AuthKey>,
    /// Native dialect with keys: encrypt what we send and refuse what is
    /// not encrypted (ChaCha20-Poly1305, docs/SECURITY.md).
    pub encrypt: bool,
    /// Native dialect: send a DIGEST of our table this often, so that the
    /// peer finds and repairs drift (docs/PROTOCOL.md, "Anti-entropy").
    /// Zero: off. The conntrackd dialect has no digests.
    pub anti_entropy_interval: Duration,
    /// The peer is alive but the sequenced stream makes no progress for
    /// this long (our data unacknowledged, or only refused messages from
    /// it): replication has stalled, which the daemon reports loudly.
    pub stall_timeout: Duration,
}

impl Default for FtfwConfig {
    fn default() -> FtfwConfig {
        FtfwConfig {
            dialect: Dialect::Native,
            resend_queue: 131072,
            ack_window: 300,
            alive_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(4),
            max_datagram: native::DEFAULT_MAX_DATAGRAM,
            max_seq_jump: 131072,
            auth_keys: Vec::new(),
            encrypt: false,
            anti_entropy_interval: Duration::ZERO,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

impl FtfwConfig {
    /// The core's settings from the validated `sync` section, with the
    /// dialect's own rules applied: conntrackd's datagrams are capped at
    /// conntrackd's limit on a 1500-byte link, and conntrackd has no
    /// digests, so anti-entropy is off with it. `auth_keys` are the keys
    /// of `sync.auth`'s key file, already read.
    pub fn from_sync(
        sync: &crate::config::SyncConfig,
        auth_keys: Vec<native::AuthKey>,
    ) -> FtfwConfig {
        let max_datagram = usize::from(sync.max_datagram);
        FtfwConfig {
            dialect: sync.wire,
            resend_queue: sync.resend_queue.get() as usize,
            ack_window: sync.ack_window.get(),
            alive_interval: sync.alive_interval,
            peer_timeout: sync.peer_timeout,
            stall_timeout: sync.stall_timeout,
            max_datagram: match sync.wire {
                Dialect::Native => max_datagram,
                Dialect::Conntrackd => {
                    max_datagram.min(crate::wire::conntrackd::DEFAULT_MAX_DATAGRAM)
                }
            },
            max_seq_jump: sync.resend_queue.get(),
            auth_keys,
            encrypt: sync.encrypt,
            anti_entropy_interval: match sync.wire {
                Dialect::Native => sync.anti_entropy_interval,
                Dialect::Conntrackd => Duration::ZERO,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn sync(wire: Dialect) -> crate::config::SyncConfig {
        let mut sync = Config::default_for_tests().sync;
        sync.wire = wire;
        sync.max_datagram = 9000;
        sync.anti_entropy_interval = Duration::from_secs(30);
        sync
    }

    #[test]
    fn native_keeps_the_configured_datagram_size_and_anti_entropy() {
        let ftfw = FtfwConfig::from_sync(&sync(Dialect::Native), Vec::new());
        assert_eq!(ftfw.dialect, Dialect::Native);
        assert_eq!(ftfw.max_datagram, 9000);
        assert_eq!(ftfw.anti_entropy_interval, Duration::from_secs(30));
        assert_eq!(ftfw.max_seq_jump as usize, ftfw.resend_queue);
    }

    /// docs/PROTOCOL.md, "conntrackd compatibility": no anti-entropy, and
    /// datagrams capped at conntrackd's own limit.
    #[test]
    fn conntrackd_caps_the_datagram_size_and_turns_anti_entropy_off() {
        let ftfw = FtfwConfig::from_sync(&sync(Dialect::Conntrackd), Vec::new());
        assert_eq!(ftfw.dialect, Dialect::Conntrackd);
        assert_eq!(ftfw.max_datagram, crate::wire::conntrackd::DEFAULT_MAX_DATAGRAM);
        assert_eq!(ftfw.anti_entropy_interval, Duration::ZERO);
    }
}
