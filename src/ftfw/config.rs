//! The core's configuration: the dialect it speaks and its tunables,
//! filled in by the daemon from the config file.

use super::*;

/// Which protocol the core speaks (docs/PROTOCOL.md); the config's
/// `sync.wire`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// ctsync's own format and rules.
    #[default]
    Native,
    /// conntrackd 1.4's FTFW, to pair with a real conntrackd: every message
    /// sequenced, HELLO as a flag, no BULK_END ("conntrackd
    /// compatibility").
    Conntrackd,
}

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
