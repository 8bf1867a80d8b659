//! Configuration: the YAML schema, defaults and validation.
//!
//! [`load`] reads a YAML file into a [`Config`] of typed values. Every error
//! is one line an operator can act on, naming the file, the line and column
//! and the key:
//!
//! ```text
//! /etc/ctsync/ctsyncd.yaml:12:13: sync.channels[0].peer: invalid IP address "10.0.0.x"
//! ```
//!
//! The schema is written out with its defaults in `config/primary.yaml`;
//! option names follow conntrackd's (see `conntrackd-protocol.md`).
//!
//! An existing conntrackd.conf is read too: [`from_str`] recognises its
//! syntax and hands it to [`conntrackd`], which maps it onto the same
//! `Config`.
//!
//! Layout: the schema's types and the entry points are here; `raw` is the
//! tree serde reads, `validate` turns it into a [`Config`] checking every
//! value, `render` turns a `Config` back into YAML, `error` is
//! [`ConfigError`], `key` reads the sync key file, and `locate` and `value`
//! find positions in the text and parse values.

pub mod conntrackd;
mod error;
mod key;
mod locate;
mod raw;
mod render;
mod validate;
mod value;

pub use error::{ConfigError, Position};
pub use key::{KEY_HOWTO, KeyFileError, KeyProblem, load_key_file};
pub use value::{Cidr, CidrError};

use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::expect::ExpectSync;
use locate::Locations;
use raw::RawConfig;
use render::unconvert;
use validate::{Ctx, convert, is_blank};

/// The default configuration file.
pub const DEFAULT_PATH: &str = "/etc/ctsync/ctsyncd.yaml";

/// Read and validate the configuration file at `path`: our YAML or a
/// conntrackd.conf.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { file: path.to_owned(), source })?;
    from_str(&text, path)
}

/// Parse and validate `text` as if it had been read from `origin` (which
/// only appears in error messages): as conntrackd.conf if
/// [`conntrackd::is_conntrackd_syntax`] says so, as YAML otherwise.
pub fn from_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    if conntrackd::is_conntrackd_syntax(text) {
        return conntrackd::from_str(text, origin);
    }
    let locations = Locations::scan(text);
    let ctx = Ctx { file: origin, locations: &locations };
    let raw: RawConfig = if is_blank(text) {
        RawConfig::default()
    } else {
        serde_saphyr::from_str(text).map_err(|e| ctx.yaml_error(&e))?
    };
    let mut config = convert(&raw, &ctx)?;
    config.origins = Origins {
        file: origin.to_owned(),
        entries: locations
            .values()
            .map(|(path, position)| (path.to_owned(), Origin { position, keyword: None }))
            .collect(),
    };
    Ok(config)
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Daemon-wide settings.
    pub general: GeneralConfig,
    /// Replication settings.
    pub sync: SyncConfig,
    /// Options of a conntrackd.conf that were read but are not acted on,
    /// each naming the file, line and option; the daemon logs them at
    /// start. Always empty for YAML, and not part of [`Config::to_yaml`].
    pub warnings: Vec<String>,
    /// Where each value was written, for errors found after parsing (a
    /// missing key file, a read-only directory). Not part of
    /// [`Config::to_yaml`] nor of equality.
    pub origins: Origins,
}

/// The file a [`Config`] was read from and where its values were written.
#[derive(Clone, Debug, Default)]
pub struct Origins {
    file: PathBuf,
    /// Key path (`sync.auth.key_file`) and where its value is.
    entries: Vec<(String, Origin)>,
}

/// Where one value was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Line and column of the value.
    pub position: Position,
    /// The conntrackd.conf keyword that set it; `None` in YAML, where the
    /// key path is what the file says.
    pub keyword: Option<String>,
}

/// Two configurations are equal when their values are, wherever they were
/// written.
impl PartialEq for Origins {
    fn eq(&self, _: &Origins) -> bool {
        true
    }
}

impl Origins {
    /// Where the value of the key path `key` (or of its closest written
    /// ancestor) is.
    pub fn get(&self, key: &str) -> Option<&Origin> {
        let mut path = key;
        loop {
            if let Some((_, origin)) = self.entries.iter().rev().find(|(p, _)| p == path) {
                return Some(origin);
            }
            path = &path[..path.rfind(['.', '['])?];
        }
    }
}

impl Config {
    /// The file this configuration was read from.
    pub fn file(&self) -> &Path {
        &self.origins.file
    }

    /// An error about the value of `key` found after parsing, pointing at
    /// the line that set it (or naming the key when a default applies).
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let origin = self.origins.get(key);
        ConfigError::Invalid {
            file: self.origins.file.clone(),
            position: origin.map(|o| o.position),
            key: Some(match origin.and_then(|o| o.keyword.as_deref()) {
                Some(keyword) => format!("{keyword} ({key})"),
                None => key.to_owned(),
            }),
            message: message.into(),
        }
    }
}

/// The `general` section.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneralConfig {
    /// Refuses a second daemon (conntrackd's `LockFile`).
    pub lock_file: PathBuf,
    /// The UNIX socket the CLI talks to; created with mode 0600 (0660 with
    /// `control_group`).
    pub control_socket: PathBuf,
    /// A group allowed on the control socket besides root (its members by
    /// primary or supplementary group); the socket file becomes its, 0660.
    pub control_group: Option<String>,
    /// A file the daemon keeps at `0` once it holds a complete copy of the
    /// peer's table and `1` before, for keepalived's `track_file`.
    /// Deprecated: it fails open (a missing file reads as ready, a killed
    /// daemon leaves `0`); `ctsyncd --check-ready` replaces it.
    pub ready_file: Option<PathBuf>,
    /// Where log lines go.
    pub log: LogConfig,
    /// Maximum flows per cache (conntrackd's `HashLimit`).
    pub cache_limit: NonZeroUsize,
    /// The kernel event socket.
    pub netlink: NetlinkConfig,
    /// Which flows are replicated.
    pub filter: FilterConfig,
    /// Where Prometheus scrapes `GET /metrics`; `None` serves nothing.
    pub metrics_listen: Option<SocketAddr>,
}

/// The `general.log` section.
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    /// Where log lines go.
    pub target: LogTarget,
    /// The least severe level logged.
    pub level: LogLevel,
    /// The file for [`LogTarget::File`].
    pub file: Option<PathBuf>,
    /// The facility for [`LogTarget::Syslog`].
    pub syslog_facility: SyslogFacility,
}

/// Log destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogTarget {
    /// Standard error (journald picks it up under systemd).
    #[default]
    Stderr,
    /// The local syslog socket.
    Syslog,
    /// Appended to `general.log.file`.
    File,
}

/// Log levels, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Failures only.
    Error,
    /// Failures and anomalies.
    Warn,
    /// Plus state changes (peer up/down, commits, resyncs).
    #[default]
    Info,
    /// Plus per-batch detail.
    Debug,
    /// Plus per-message detail.
    Trace,
}

/// Syslog facilities conntrackd accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum SyslogFacility {
    #[default]
    Daemon,
    User,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl SyslogFacility {
    /// The `LOG_*` facility code (already shifted, as `openlog` wants it).
    pub fn code(self) -> i32 {
        match self {
            SyslogFacility::Daemon => libc::LOG_DAEMON,
            SyslogFacility::User => libc::LOG_USER,
            SyslogFacility::Local0 => libc::LOG_LOCAL0,
            SyslogFacility::Local1 => libc::LOG_LOCAL1,
            SyslogFacility::Local2 => libc::LOG_LOCAL2,
            SyslogFacility::Local3 => libc::LOG_LOCAL3,
            SyslogFacility::Local4 => libc::LOG_LOCAL4,
            SyslogFacility::Local5 => libc::LOG_LOCAL5,
            SyslogFacility::Local6 => libc::LOG_LOCAL6,
            SyslogFacility::Local7 => libc::LOG_LOCAL7,
        }
    }
}

/// The `general.netlink` section: the kernel event socket.
#[derive(Clone, Debug, PartialEq)]
pub struct NetlinkConfig {
    /// Initial `SO_RCVBUFFORCE`, bytes.
    pub rcvbuf: NonZeroUsize,
    /// On ENOBUFS the buffer doubles up to this, bytes.
    pub rcvbuf_max: NonZeroUsize,
    /// Ask the kernel to keep undelivered events (`NETLINK_NO_ENOBUFS` and
    /// `NETLINK_BROADCAST_SEND_ERROR`) instead of dropping them.
    pub reliable_events: bool,
    /// Delay between an overrun and the kernel dump that recovers from it.
    pub overrun_resync: Duration,
}

/// The `general.filter` section. See [`crate::filter`] for the rules.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterConfig {
    /// Never replicate flows from or to 127.0.0.0/8 or ::1.
    pub ignore_loopback: bool,
    /// Never replicate flows from or to the sync channels' addresses.
    pub ignore_sync_addresses: bool,
    /// IP protocol numbers.
    pub protocols: AcceptIgnore<u8>,
    /// Prefixes, matched against a flow's real source and destination.
    pub addresses: AcceptIgnore<Cidr>,
    /// TCP states ([`crate::flow::tcp_state`]).
    pub tcp_states: AcceptIgnore<u8>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            ignore_loopback: true,
            ignore_sync_addresses: true,
            protocols: AcceptIgnore::default(),
            addresses: AcceptIgnore::default(),
            tcp_states: AcceptIgnore::default(),
        }
    }
}

impl FilterConfig {
    /// A filter section that lets every flow through, loopback included.
    pub fn accept_all() -> FilterConfig {
        FilterConfig { ignore_loopback: false, ignore_sync_addresses: false, ..Default::default() }
    }
}

/// One category of filter rules: a non-empty `accept` list must match; an
/// `ignore` match rejects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptIgnore<T> {
    /// If non-empty, only matching flows pass.
    pub accept: Vec<T>,
    /// Matching flows never pass.
    pub ignore: Vec<T>,
}

impl<T> Default for AcceptIgnore<T> {
    fn default() -> Self {
        AcceptIgnore { accept: Vec::new(), ignore: Vec::new() }
    }
}

/// The `sync` section.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncConfig {
    /// The replication protocol.
    pub mode: SyncMode,
    /// The datagram format.
    pub wire: Dialect,
    /// Messages kept for retransmission until acknowledged
    /// (`ResendQueueSize`).
    pub resend_queue: NonZeroU32,
    /// The receiver acknowledges every this many messages (`ACKWindowSize`).
    pub ack_window: NonZeroU32,
    /// ALIVE messages are sent this often when there is nothing else to say.
    pub alive_interval: Duration,
    /// A peer silent this long is considered down.
    pub peer_timeout: Duration,
    /// A peer alive this long while its stream makes no progress (nothing
    /// acknowledged, or nothing accepted) is reported as stalled.
    pub stall_timeout: Duration,
    /// Digests of the replicated table are exchanged this often to find
    /// and repair drift (native format only); zero turns it off.
    pub anti_entropy_interval: Duration,
    /// Largest UDP payload sent, bytes.
    pub max_datagram: u16,
    /// Timeout given to committed flows; `None` keeps the one the peer sent.
    pub commit_timeout: Option<Duration>,
    /// Delay of the kernel purge that `-t` schedules (`PurgeTimeout`).
    pub purge_timeout: Duration,
    /// Keep TCP window tracking on committed flows; when off they get
    /// `BE_LIBERAL`.
    pub tcp_window_tracking: bool,
    /// Ask the peer for a full resync at start.
    pub startup_resync: bool,
    /// Which helpers' expectations are synced (`ExpectationSync`).
    pub expectations: crate::expect::ExpectSync,
    /// Write the peer's flows into the local kernel as they arrive
    /// (conntrackd's `DisableExternalCache`, though the external cache is
    /// still kept for `-e`, readiness and `-c`); see `docs/active-active.md`.
    pub direct_to_kernel: bool,
    /// Hold the packets an nft rule queues until the peer has acknowledged
    /// their flow (`sync.defer`, pfsync's `defer`); `None`: off.
    pub defer: Option<DeferConfig>,
    /// How datagrams are authenticated (`sync.auth`).
    pub auth: SyncAuth,
    /// Encrypt the payload of native datagrams with the key file's keys
    /// (`sync.auth.encrypt`; only with [`SyncAuth::KeyFile`]).
    pub encrypt: bool,
    /// Links to the peer, in order of preference; never empty.
    pub channels: Vec<ChannelConfig>,
}

/// `sync.defer`: see `docs/active-active.md`, "Deferred packets".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeferConfig {
    /// The NFQUEUE number the nft rule queues to.
    pub queue: u16,
    /// A packet is accepted after this long even without the peer's ACK.
    pub timeout: Duration,
    /// Most packets held at once; past it, packets are accepted at once.
    pub max_held: u32,
}

/// `sync.auth`: native datagrams are authenticated unless the operator
/// says otherwise in so many words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncAuth {
    /// HMAC-SHA256 with the keys of this file (see [`load_key_file`]).
    KeyFile(PathBuf),
    /// `insecure: true`, or the conntrackd format (which has no
    /// authentication): anyone who can reach the sync port can inject flows.
    Insecure,
}

impl SyncAuth {
    /// The key file, when there is one.
    pub fn key_file(&self) -> Option<&Path> {
        match self {
            SyncAuth::KeyFile(file) => Some(file),
            SyncAuth::Insecure => None,
        }
    }
}

/// Replication protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// conntrackd's reliable protocol: sequence numbers, ACK/NACK, resend.
    #[default]
    Ftfw,
}

/// One link to the peer (`sync.channels[i]`).
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelConfig {
    /// Transport and destination.
    pub kind: ChannelKind,
    /// The address bound on this firewall.
    pub local: IpAddr,
    /// The interface to bind to (`SO_BINDTODEVICE`) or to send multicast on.
    pub interface: Option<String>,
    /// UDP port, the same on both ends.
    pub port: u16,
    /// `SO_SNDBUFFORCE`, bytes.
    pub sndbuf: Option<NonZeroUsize>,
    /// `SO_RCVBUFFORCE`, bytes.
    pub rcvbuf: Option<NonZeroUsize>,
}

/// Transport of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    /// Unicast UDP to one peer.
    Udp {
        /// The peer's address on the link.
        peer: IpAddr,
    },
    /// UDP to a multicast group.
    Multicast {
        /// The group address.
        group: IpAddr,
    },
}

impl ChannelConfig {
    /// Where datagrams go: the peer or the multicast group.
    pub fn remote(&self) -> IpAddr {
        match self.kind {
            ChannelKind::Udp { peer } => peer,
            ChannelKind::Multicast { group } => group,
        }
    }

    /// The address and port to bind.
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::new(self.local, self.port)
    }

    /// The address and port to send to.
    pub fn remote_addr(&self) -> SocketAddr {
        SocketAddr::new(self.remote(), self.port)
    }
}

impl Config {
    /// A valid configuration with one UDP channel 10.255.0.1 → 10.255.0.2
    /// on `sync0`, everything else at its default.
    pub fn default_for_tests() -> Config {
        let text = "sync:\n  auth: { insecure: true }\n  channels:\n    - { local: 10.255.0.1, \
                    peer: 10.255.0.2, interface: sync0 }\n";
        match from_str(text, Path::new("<built-in>")) {
            Ok(config) => config,
            Err(e) => unreachable!("built-in configuration is invalid: {e}"),
        }
    }

    /// The configuration as YAML, every key present, in the schema's order:
    /// what `--print-config` shows and what [`from_str`] reads back to an
    /// equal `Config`.
    pub fn to_yaml(&self) -> String {
        let raw = unconvert(self);
        match serde_saphyr::to_string(&raw) {
            Ok(text) => text,
            // The raw tree holds only strings, numbers, booleans and lists.
            Err(e) => format!("# cannot render the configuration: {e}\n"),
        }
    }
}

#[cfg(test)]
mod tests;

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
