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

pub mod conntrackd;
mod locate;
mod raw;
mod value;

pub use value::{Cidr, CidrError};

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::expect::ExpectSync;
use crate::ftfw::Dialect;
use locate::Locations;
use raw::{ChannelType, RawChannel, RawConfig, RawLists, Scalar};

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

/// How to make a key, for error messages.
pub const KEY_HOWTO: &str = "create one with `ctsyncd --gen-key /etc/ctsync/sync.key` on one \
     firewall, copy it to the other (`scp -p`), and set \
     `sync.auth: { key_file: /etc/ctsync/sync.key }`";

/// Read the key file of `sync.auth.key_file`: lines `KEYID HEX` (blank
/// lines and `#` comments ignored), one or two keys, the first one signs.
/// Refuses a file that is not owned by root or that group or others may
/// read or write, and keys shorter than 32 bytes; errors name the file and
/// the line.
pub fn load_key_file(path: &Path) -> Result<Vec<crate::wire::native::AuthKey>, KeyFileError> {
    use std::os::unix::fs::MetadataExt;
    let fail = |line, problem| KeyFileError { file: path.to_owned(), line, problem };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => fail(None, KeyProblem::Missing),
        _ => fail(None, KeyProblem::Unreadable(e)),
    })?;
    if meta.uid() != 0 {
        return Err(fail(None, KeyProblem::NotRoot(meta.uid())));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(fail(None, KeyProblem::Mode(meta.mode() & 0o7777)));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(None, KeyProblem::Unreadable(e)))?;
    let mut keys: Vec<crate::wire::native::AuthKey> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = Some(i + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(id), Some(hex), None) = (words.next(), words.next(), words.next()) else {
            return Err(fail(at, KeyProblem::Syntax));
        };
        let id: u32 =
            id.parse().ok().filter(|&id| id != 0).ok_or_else(|| fail(at, KeyProblem::BadId))?;
        let secret = decode_hex(hex).ok_or_else(|| fail(at, KeyProblem::NotHex))?;
        if secret.len() < crate::wire::native::MIN_KEY_LEN {
            return Err(fail(at, KeyProblem::TooShort(secret.len())));
        }
        if keys.iter().any(|k| k.id == id) {
            return Err(fail(at, KeyProblem::DuplicateId(id)));
        }
        if keys.len() == 2 {
            return Err(fail(at, KeyProblem::TooMany));
        }
        keys.push(crate::wire::native::AuthKey::new(id, secret));
    }
    if keys.is_empty() {
        return Err(fail(None, KeyProblem::NoKey));
    }
    Ok(keys)
}

/// Why a key file was refused: the file, the line when one is at fault,
/// and the problem.
#[derive(Debug)]
pub struct KeyFileError {
    /// The key file.
    pub file: PathBuf,
    /// The 1-based line at fault, if the problem is in one line.
    pub line: Option<usize>,
    /// What is wrong.
    pub problem: KeyProblem,
}

/// What is wrong with a key file.
#[derive(Debug)]
pub enum KeyProblem {
    /// The file does not exist.
    Missing,
    /// The file cannot be read.
    Unreadable(io::Error),
    /// The file is owned by this uid, not by root.
    NotRoot(u32),
    /// The file's mode lets group or others read or write it.
    Mode(u32),
    /// A line is not `KEYID HEX`.
    Syntax,
    /// A key id is not a number from 1 to 4294967295.
    BadId,
    /// A key is not hexadecimal.
    NotHex,
    /// A key has this many bytes, fewer than the minimum.
    TooShort(usize),
    /// A key id appears on an earlier line too.
    DuplicateId(u32),
    /// A third key.
    TooMany,
    /// The file holds no key.
    NoKey,
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.line {
            Some(line) => write!(f, "{file}:{line}: ")?,
            None => write!(f, "{file}: ")?,
        }
        match &self.problem {
            KeyProblem::Missing => write!(
                f,
                "no such key file: create it with `ctsyncd --gen-key {file}` on one firewall \
                 and copy it to the other (`scp -p`)"
            ),
            KeyProblem::Unreadable(e) => write!(f, "cannot read: {e}"),
            KeyProblem::NotRoot(uid) => write!(f, "owned by uid {uid}, must be owned by root"),
            KeyProblem::Mode(mode) => write!(
                f,
                "mode {mode:04o} lets group or others read or write the key; run `chmod 600 {file}`"
            ),
            KeyProblem::Syntax => f.write_str("expected `KEYID HEX`"),
            KeyProblem::BadId => f.write_str("key id must be a number from 1 to 4294967295"),
            KeyProblem::NotHex => f.write_str("key is not hex"),
            KeyProblem::TooShort(len) => write!(
                f,
                "key is {len} bytes, at least {} are required ({KEY_HOWTO})",
                crate::wire::native::MIN_KEY_LEN
            ),
            KeyProblem::DuplicateId(id) => write!(f, "key id {id} appears twice"),
            KeyProblem::TooMany => f.write_str("at most two keys (the one in use and the next)"),
            KeyProblem::NoKey => write!(f, "no key ({KEY_HOWTO})"),
        }
    }
}

impl std::error::Error for KeyFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.problem {
            KeyProblem::Unreadable(e) => Some(e),
            _ => None,
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
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

/// A line and a column, both counted from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

/// Why a configuration was refused.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The file.
        file: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file is not valid YAML, does not fit the schema, or holds a value
    /// that does not make sense.
    Invalid {
        /// The file.
        file: PathBuf,
        /// Where, when known.
        position: Option<Position>,
        /// The dotted key path (`sync.channels[0].peer`), when known.
        key: Option<String>,
        /// What is wrong and, where useful, what to write instead.
        message: String,
    },
}

impl ConfigError {
    /// The key the error is about, if known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => key.as_deref(),
            ConfigError::Read { .. } => None,
        }
    }

    /// The line the error is about, if known.
    pub fn line(&self) -> Option<u64> {
        match self {
            ConfigError::Invalid { position, .. } => position.map(|p| p.line),
            ConfigError::Read { .. } => None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, source } => {
                write!(f, "{}: cannot read: {source}", file.display())
            }
            ConfigError::Invalid { file, position, key, message } => {
                write!(f, "{}", file.display())?;
                if let Some(p) = position {
                    write!(f, ":{}:{}", p.line, p.column)?;
                }
                if let Some(key) = key {
                    write!(f, ": {}", Printable(key))?;
                }
                write!(f, ": {}", Printable(message))
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Invalid { .. } => None,
        }
    }
}

/// Text from the file, shown with control characters escaped so that an
/// error stays one line and cannot drive the terminal.
struct Printable<'a>(&'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// What conversion needs to build errors.
struct Ctx<'a> {
    file: &'a Path,
    locations: &'a Locations,
}

impl Ctx<'_> {
    /// An error about the value of `key`.
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let position = self.locations.value_of(key).or_else(|| self.nearest(key));
        ConfigError::Invalid {
            file: self.file.to_owned(),
            position,
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    /// A key that is absent points at its closest written ancestor.
    fn nearest(&self, key: &str) -> Option<Position> {
        let mut path = key;
        while let Some(cut) = path.rfind(['.', '[']) {
            path = &path[..cut];
            if let Some(p) = self.locations.key_of(path) {
                return Some(p);
            }
        }
        None
    }

    fn yaml_error(&self, e: &serde_saphyr::Error) -> ConfigError {
        use serde_saphyr::MessageFormatter;
        let inner = e.without_snippet();
        let message = serde_saphyr::UserMessageFormatter.format_message(inner).replacen(
            "unknown field",
            "unknown key",
            1,
        );
        let position = e
            .location()
            .filter(|l| l.line() > 0)
            .map(|l| Position { line: l.line(), column: l.column() });
        let key = position.and_then(|p| self.locations.path_at(p)).map(str::to_owned);
        ConfigError::Invalid { file: self.file.to_owned(), position, key, message }
    }
}

fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    })
}

/// Raw tree → typed `Config`, checking every value and the relations
/// between them.
fn convert(raw: &RawConfig, ctx: &Ctx<'_>) -> Result<Config, ConfigError> {
    let g = &raw.general;
    let log = LogConfig {
        target: g.log.target,
        level: g.log.level,
        file: g.log.file.as_deref().map(|f| absolute(ctx, "general.log.file", f)).transpose()?,
        syslog_facility: g.log.syslog_facility,
    };
    if log.target == LogTarget::File && log.file.is_none() {
        return Err(ctx.err("general.log.file", "required when general.log.target is file"));
    }
    let netlink = NetlinkConfig {
        rcvbuf: nonzero_size(ctx, "general.netlink.rcvbuf", &g.netlink.rcvbuf)?,
        rcvbuf_max: nonzero_size(ctx, "general.netlink.rcvbuf_max", &g.netlink.rcvbuf_max)?,
        reliable_events: g.netlink.reliable_events,
        overrun_resync: duration(ctx, "general.netlink.overrun_resync", &g.netlink.overrun_resync)?,
    };
    if netlink.rcvbuf_max < netlink.rcvbuf {
        return Err(ctx.err(
            "general.netlink.rcvbuf_max",
            format!("must be at least general.netlink.rcvbuf ({})", netlink.rcvbuf),
        ));
    }
    let f = &g.filter;
    let filter = FilterConfig {
        ignore_loopback: f.ignore_loopback,
        ignore_sync_addresses: f.ignore_sync_addresses,
        protocols: lists(ctx, "general.filter.protocols", &f.protocols, value::protocol)?,
        addresses: lists(ctx, "general.filter.addresses", &f.addresses, value::address)?,
        tcp_states: lists(ctx, "general.filter.tcp_states", &f.tcp_states, value::tcp_state)?,
    };
    if let Some(group) = g.control_group.as_ref().filter(|g| g.is_empty() || g.contains(':')) {
        return Err(ctx.err("general.control_group", format!("invalid group name {group:?}")));
    }
    let general = GeneralConfig {
        lock_file: absolute(ctx, "general.lock_file", &g.lock_file)?,
        control_socket: absolute(ctx, "general.control_socket", &g.control_socket)?,
        control_group: g.control_group.clone(),
        ready_file: g
            .ready_file
            .as_ref()
            .map(|p| absolute(ctx, "general.ready_file", p))
            .transpose()?,
        log,
        cache_limit: nonzero_size(ctx, "general.cache_limit", &g.cache_limit)?,
        netlink,
        filter,
        metrics_listen: metrics_listen(ctx, g.metrics_listen.as_deref())?,
    };

    let s = &raw.sync;
    let resend_queue = nonzero_u32(ctx, "sync.resend_queue", &s.resend_queue)?;
    let ack_window = nonzero_u32(ctx, "sync.ack_window", &s.ack_window)?;
    if ack_window >= resend_queue {
        return Err(ctx.err(
            "sync.ack_window",
            format!(
                "must be smaller than sync.resend_queue ({resend_queue}), or unacknowledged \
                 messages are dropped before the peer acknowledges them"
            ),
        ));
    }
    let alive_interval = duration(ctx, "sync.alive_interval", &s.alive_interval)?;
    if alive_interval.is_zero() {
        return Err(ctx.err("sync.alive_interval", "must be greater than zero"));
    }
    let peer_timeout = duration(ctx, "sync.peer_timeout", &s.peer_timeout)?;
    if peer_timeout <= alive_interval {
        return Err(ctx.err(
            "sync.peer_timeout",
            format!(
                "must be longer than sync.alive_interval ({}); a few intervals is usual",
                value::format_duration(alive_interval)
            ),
        ));
    }
    let stall_timeout = duration(ctx, "sync.stall_timeout", &s.stall_timeout)?;
    if stall_timeout <= peer_timeout {
        return Err(ctx.err(
            "sync.stall_timeout",
            format!(
                "must be longer than sync.peer_timeout ({}): a stall is a peer heard from \
                 whose stream does not move",
                value::format_duration(peer_timeout)
            ),
        ));
    }
    let anti_entropy_interval =
        duration(ctx, "sync.anti_entropy_interval", &s.anti_entropy_interval)?;
    if !anti_entropy_interval.is_zero() && anti_entropy_interval < alive_interval {
        return Err(ctx.err(
            "sync.anti_entropy_interval",
            format!(
                "must be 0 (off) or at least sync.alive_interval ({}); 30s is usual",
                value::format_duration(alive_interval)
            ),
        ));
    }
    let max_datagram = match value::integer(&s.max_datagram) {
        Some(n @ 512..=65507) => n as u16,
        _ => {
            return Err(ctx.err(
                "sync.max_datagram",
                format!(
                    "invalid size \"{}\": must be 512 to 65507 bytes (1472 fits a 1500-byte MTU)",
                    s.max_datagram
                ),
            ));
        }
    };
    let commit_timeout = duration(ctx, "sync.commit_timeout", &s.commit_timeout)?;
    if s.channels.is_empty() {
        return Err(ctx.err(
            "sync.channels",
            "at least one channel is required, e.g. `- { type: udp, local: 10.255.0.1, peer: \
             10.255.0.2 }`",
        ));
    }
    let mut channels = Vec::with_capacity(s.channels.len());
    for (i, c) in s.channels.iter().enumerate() {
        let key = format!("sync.channels[{i}]");
        let channel = channel(ctx, &key, c)?;
        if channels.iter().any(|o: &ChannelConfig| {
            o.local_addr() == channel.local_addr() && o.remote() == channel.remote()
        }) {
            return Err(ctx.err(&key, "same addresses and port as an earlier channel"));
        }
        channels.push(channel);
    }
    let auth = match (&s.auth.key_file, s.auth.insecure, s.wire) {
        (Some(_), true, _) => {
            return Err(ctx.err("sync.auth", "key_file and insecure exclude each other"));
        }
        (Some(_), false, Dialect::Conntrackd) => {
            return Err(ctx.err(
                "sync.auth.key_file",
                "conntrackd's wire format cannot be authenticated; remove key_file",
            ));
        }
        (Some(f), false, Dialect::Native) => {
            SyncAuth::KeyFile(absolute(ctx, "sync.auth.key_file", f)?)
        }
        (None, _, Dialect::Conntrackd) | (None, true, Dialect::Native) => SyncAuth::Insecure,
        (None, false, Dialect::Native) => {
            return Err(ctx.err(
                "sync.auth",
                format!(
                    "required: a shared key authenticates the sync link; {KEY_HOWTO}; or set \
                     `sync.auth: {{ insecure: true }}` to run without (anyone who can reach \
                     the sync port can then inject flows)"
                ),
            ));
        }
    };
    if s.auth.encrypt && !matches!(auth, SyncAuth::KeyFile(_)) {
        return Err(ctx.err(
            "sync.auth.encrypt",
            "encryption uses the shared key: set sync.auth.key_file too (and remove \
             insecure), or remove encrypt",
        ));
    }
    let sync = SyncConfig {
        mode: s.mode,
        wire: s.wire,
        resend_queue,
        ack_window,
        alive_interval,
        peer_timeout,
        stall_timeout,
        anti_entropy_interval,
        max_datagram,
        commit_timeout: (!commit_timeout.is_zero()).then_some(commit_timeout),
        purge_timeout: duration(ctx, "sync.purge_timeout", &s.purge_timeout)?,
        tcp_window_tracking: s.tcp_window_tracking,
        startup_resync: s.startup_resync,
        expectations: expectations(ctx, s)?,
        direct_to_kernel: s.direct_to_kernel,
        defer: defer(ctx, s)?,
        auth,
        encrypt: s.auth.encrypt,
        channels,
    };
    Ok(Config { general, sync, warnings: Vec::new(), origins: Origins::default() })
}

/// `sync.defer`: absent (off), or `{ queue: N, timeout: 20ms, max_held: 4096 }`.
fn defer(ctx: &Ctx<'_>, s: &raw::RawSync) -> Result<Option<DeferConfig>, ConfigError> {
    let Some(d) = &s.defer else { return Ok(None) };
    let queue = match &d.queue {
        Some(q) => match value::integer(q) {
            Some(n) if n <= u64::from(u16::MAX) => n as u16,
            _ => {
                return Err(ctx.err(
                    "sync.defer.queue",
                    format!("invalid queue number \"{q}\": must be 0 to 65535, the number of the nft rule's `queue num`"),
                ));
            }
        },
        None => {
            return Err(ctx.err(
                "sync.defer.queue",
                "required: the NFQUEUE number of the nft rule `ct state new queue num N bypass`",
            ));
        }
    };
    let timeout = duration(ctx, "sync.defer.timeout", &d.timeout)?;
    if timeout.is_zero() || timeout > Duration::from_secs(1) {
        return Err(ctx.err(
            "sync.defer.timeout",
            format!(
                "must be more than 0 and at most 1s (each held packet waits up to this long); 20ms is usual, got {}",
                value::format_duration(timeout)
            ),
        ));
    }
    let max_held = match value::integer(&d.max_held) {
        Some(n @ 1..=1_000_000) => n as u32,
        _ => {
            return Err(ctx.err(
                "sync.defer.max_held",
                format!("invalid count \"{}\": must be 1 to 1000000", d.max_held),
            ));
        }
    };
    if s.wire == Dialect::Conntrackd {
        return Err(ctx.err(
            "sync.defer",
            "needs wire: native (conntrackd's format cannot ask the peer for a prompt ACK, so every packet would wait the whole timeout)",
        ));
    }
    Ok(Some(DeferConfig { queue, timeout, max_held }))
}

/// `sync.expectations`: `[ftp, sip]`, `all`, `true`/`false`, or absent
/// (off).
fn expectations(ctx: &Ctx<'_>, s: &raw::RawSync) -> Result<ExpectSync, ConfigError> {
    const KEY: &str = "sync.expectations";
    let sync = match &s.expectations {
        None | Some(raw::RawExpectations::Flag(false)) => ExpectSync::Off,
        Some(raw::RawExpectations::Flag(true)) => ExpectSync::All,
        Some(raw::RawExpectations::Word(w)) => match w.as_str() {
            "all" | "on" => ExpectSync::All,
            "off" | "none" => ExpectSync::Off,
            name => helper_list(ctx, KEY, std::slice::from_ref(&name.to_owned()))?,
        },
        Some(raw::RawExpectations::List(names)) => helper_list(ctx, KEY, names)?,
    };
    Ok(sync)
}

fn helper_list(ctx: &Ctx<'_>, key: &str, names: &[String]) -> Result<ExpectSync, ConfigError> {
    if names.is_empty() {
        return Ok(ExpectSync::Off);
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let valid = !name.is_empty()
            && name.len() <= 15
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid || name == "all" {
            return Err(ctx.err(
                key,
                format!(
                    "invalid helper name \"{name}\": give kernel helper names such as [ftp, sip, tftp], or all"
                ),
            ));
        }
        out.push(name.clone());
    }
    Ok(ExpectSync::Helpers(out))
}

fn channel(ctx: &Ctx<'_>, key: &str, c: &RawChannel) -> Result<ChannelConfig, ConfigError> {
    let field = |name: &str| format!("{key}.{name}");
    let ip = |name: &str, v: &Scalar| {
        v.to_string()
            .parse::<IpAddr>()
            .map_err(|_| ctx.err(&field(name), format!("invalid IP address \"{v}\"")))
    };
    let Some(local) = &c.local else {
        return Err(ctx.err(&field("local"), "required: this firewall's address on the link"));
    };
    let local = ip("local", local)?;
    let kind = match c.kind {
        ChannelType::Udp => {
            if c.group.is_some() {
                return Err(ctx.err(&field("group"), "only for type: multicast; use peer"));
            }
            let Some(peer) = &c.peer else {
                return Err(ctx.err(&field("peer"), "required for type: udp: the peer's address"));
            };
            let peer = ip("peer", peer)?;
            if peer.is_multicast() || peer.is_unspecified() {
                return Err(ctx.err(
                    &field("peer"),
                    format!("{peer} is not a unicast address (for a group use type: multicast)"),
                ));
            }
            if peer == local {
                return Err(ctx.err(&field("peer"), "must differ from local"));
            }
            ChannelKind::Udp { peer }
        }
        ChannelType::Multicast => {
            if c.peer.is_some() {
                return Err(ctx.err(&field("peer"), "only for type: udp; use group"));
            }
            let Some(group) = &c.group else {
                return Err(ctx.err(&field("group"), "required for type: multicast"));
            };
            let group = ip("group", group)?;
            if !group.is_multicast() {
                return Err(ctx.err(&field("group"), format!("{group} is not a multicast address")));
            }
            ChannelKind::Multicast { group }
        }
    };
    let remote = match kind {
        ChannelKind::Udp { .. } => "peer",
        ChannelKind::Multicast { .. } => "group",
    };
    if !local.is_unspecified() && local.is_ipv4() != kind_addr(kind).is_ipv4() {
        return Err(ctx.err(&field(remote), "must be of the same IP family as local"));
    }
    let bad_name = |n: &&String| n.is_empty() || n.len() > 15 || n.contains(['/', ' ', '\t', ':']);
    if let Some(name) = c.interface.as_ref().filter(bad_name) {
        return Err(ctx.err(
            &field("interface"),
            format!("invalid interface name {name:?} (1 to 15 characters, no '/', ':' or space)"),
        ));
    }
    let port = match value::integer(&c.port) {
        Some(n @ 1..=65535) => n as u16,
        _ => return Err(ctx.err(&field("port"), format!("invalid port \"{}\"", c.port))),
    };
    let buffer = |name: &str, v: &Option<Scalar>| {
        v.as_ref().map(|v| nonzero_size(ctx, &field(name), v)).transpose()
    };
    Ok(ChannelConfig {
        kind,
        local,
        interface: c.interface.clone(),
        port,
        sndbuf: buffer("sndbuf", &c.sndbuf)?,
        rcvbuf: buffer("rcvbuf", &c.rcvbuf)?,
    })
}

/// The metrics endpoint: an address and a port, never a wildcard port.
fn metrics_listen(ctx: &Ctx<'_>, text: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(text) = text else { return Ok(None) };
    match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(Some(addr)),
        _ => Err(ctx.err(
            "general.metrics_listen",
            format!("invalid address \"{text}\" (write e.g. 127.0.0.1:9478 or [::1]:9478)"),
        )),
    }
}

fn kind_addr(kind: ChannelKind) -> IpAddr {
    match kind {
        ChannelKind::Udp { peer } => peer,
        ChannelKind::Multicast { group } => group,
    }
}

fn absolute(ctx: &Ctx<'_>, key: &str, path: &str) -> Result<PathBuf, ConfigError> {
    if !path.starts_with('/') {
        return Err(ctx.err(key, format!("\"{path}\" must be an absolute path")));
    }
    Ok(PathBuf::from(path))
}

fn duration(ctx: &Ctx<'_>, key: &str, v: &Scalar) -> Result<Duration, ConfigError> {
    value::duration(v).ok_or_else(|| {
        ctx.err(key, format!("invalid duration \"{v}\" (write e.g. 500ms, 4s, 2m, or seconds)"))
    })
}

fn nonzero_size(ctx: &Ctx<'_>, key: &str, v: &Scalar) -> Result<NonZeroUsize, ConfigError> {
    value::size(v).and_then(NonZeroUsize::new).ok_or_else(|| {
        ctx.err(key, format!("invalid size \"{v}\" (a positive number, optionally with K, M or G)"))
    })
}

fn nonzero_u32(ctx: &Ctx<'_>, key: &str, v: &Scalar) -> Result<NonZeroU32, ConfigError> {
    value::integer(v)
        .and_then(|n| u32::try_from(n).ok())
        .and_then(NonZeroU32::new)
        .ok_or_else(|| ctx.err(key, format!("invalid number \"{v}\" (1 to 4294967295)")))
}

fn lists<T>(
    ctx: &Ctx<'_>,
    key: &str,
    raw: &RawLists,
    parse: impl Fn(&str) -> Result<T, value::FilterValueError>,
) -> Result<AcceptIgnore<T>, ConfigError> {
    let list = |name: &str, items: &[Scalar]| {
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                parse(&v.to_string())
                    .map_err(|e| ctx.err(&format!("{key}.{name}[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<T>, ConfigError>>()
    };
    Ok(AcceptIgnore { accept: list("accept", &raw.accept)?, ignore: list("ignore", &raw.ignore)? })
}

/// Typed `Config` → raw tree, for printing.
fn unconvert(c: &Config) -> RawConfig {
    let g = &c.general;
    let text = |s: String| Scalar::Text(s);
    let size = |n: NonZeroUsize| Scalar::Int(n.get() as u64);
    let dur = |d: Duration| text(value::format_duration(d));
    let lists = |l: &AcceptIgnore<String>| RawLists {
        accept: l.accept.iter().cloned().map(text).collect(),
        ignore: l.ignore.iter().cloned().map(text).collect(),
    };
    let map = |l: &AcceptIgnore<u8>, name: fn(u8) -> String| AcceptIgnore {
        accept: l.accept.iter().map(|&x| name(x)).collect(),
        ignore: l.ignore.iter().map(|&x| name(x)).collect(),
    };
    let cidrs = AcceptIgnore {
        accept: g.filter.addresses.accept.iter().map(Cidr::to_string).collect(),
        ignore: g.filter.addresses.ignore.iter().map(Cidr::to_string).collect(),
    };
    let s = &c.sync;
    RawConfig {
        general: raw::RawGeneral {
            lock_file: g.lock_file.display().to_string(),
            control_socket: g.control_socket.display().to_string(),
            control_group: g.control_group.clone(),
            ready_file: g.ready_file.as_ref().map(|f| f.display().to_string()),
            log: raw::RawLog {
                target: g.log.target,
                level: g.log.level,
                file: g.log.file.as_ref().map(|f| f.display().to_string()),
                syslog_facility: g.log.syslog_facility,
            },
            cache_limit: size(g.cache_limit),
            netlink: raw::RawNetlink {
                rcvbuf: size(g.netlink.rcvbuf),
                rcvbuf_max: size(g.netlink.rcvbuf_max),
                reliable_events: g.netlink.reliable_events,
                overrun_resync: dur(g.netlink.overrun_resync),
            },
            filter: raw::RawFilter {
                ignore_loopback: g.filter.ignore_loopback,
                ignore_sync_addresses: g.filter.ignore_sync_addresses,
                protocols: lists(&map(&g.filter.protocols, value::protocol_name)),
                addresses: lists(&cidrs),
                tcp_states: lists(&map(&g.filter.tcp_states, |s| {
                    crate::flow::tcp_state::name(s).to_owned()
                })),
            },
            metrics_listen: g.metrics_listen.map(|a| a.to_string()),
        },
        sync: raw::RawSync {
            mode: s.mode,
            wire: s.wire,
            resend_queue: Scalar::Int(s.resend_queue.get().into()),
            ack_window: Scalar::Int(s.ack_window.get().into()),
            alive_interval: dur(s.alive_interval),
            peer_timeout: dur(s.peer_timeout),
            stall_timeout: dur(s.stall_timeout),
            anti_entropy_interval: dur(s.anti_entropy_interval),
            max_datagram: Scalar::Int(s.max_datagram.into()),
            commit_timeout: dur(s.commit_timeout.unwrap_or_default()),
            purge_timeout: dur(s.purge_timeout),
            tcp_window_tracking: s.tcp_window_tracking,
            startup_resync: s.startup_resync,
            expectations: match &s.expectations {
                ExpectSync::Off => None,
                ExpectSync::All => Some(raw::RawExpectations::Word("all".into())),
                ExpectSync::Helpers(names) => Some(raw::RawExpectations::List(names.clone())),
            },
            direct_to_kernel: s.direct_to_kernel,
            defer: s.defer.map(|d| raw::RawDefer {
                queue: Some(Scalar::Int(d.queue.into())),
                timeout: dur(d.timeout),
                max_held: Scalar::Int(d.max_held.into()),
            }),
            auth: match &s.auth {
                SyncAuth::KeyFile(f) => raw::RawAuth {
                    key_file: Some(f.display().to_string()),
                    insecure: false,
                    encrypt: s.encrypt,
                },
                SyncAuth::Insecure => raw::RawAuth {
                    key_file: None,
                    insecure: s.wire == Dialect::Native,
                    encrypt: false,
                },
            },
            channels: s
                .channels
                .iter()
                .map(|ch| {
                    let (kind, peer, group) = match ch.kind {
                        ChannelKind::Udp { peer } => (ChannelType::Udp, Some(peer), None),
                        ChannelKind::Multicast { group } => {
                            (ChannelType::Multicast, None, Some(group))
                        }
                    };
                    let ip = |a: Option<IpAddr>| a.map(|a| text(a.to_string()));
                    RawChannel {
                        kind,
                        local: Some(text(ch.local.to_string())),
                        peer: ip(peer),
                        group: ip(group),
                        interface: ch.interface.clone(),
                        port: Scalar::Int(ch.port.into()),
                        sndbuf: ch.sndbuf.map(size),
                        rcvbuf: ch.rcvbuf.map(size),
                    }
                })
                .collect(),
        },
    }
}

#[cfg(test)]
mod tests;
