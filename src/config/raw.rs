//! The YAML schema as serde sees it: every section optional, unknown keys
//! refused, values that need checking kept as text until
//! [`super::validate`] turns them into types with the key path at hand.
//!
//! The defaults live here, once: `Default` of each struct is what an absent
//! key means.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{Dialect, LogLevel, LogTarget, SyncMode, SyslogFacility};

#[derive(Deserialize, Serialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub general: RawGeneral,
    pub sync: RawSync,
}

#[derive(Deserialize, Serialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawGeneral {
    pub lock_file: String,
    pub control_socket: String,
    pub control_group: Option<String>,
    pub ready_file: Option<String>,
    pub log: RawLog,
    pub cache_limit: Scalar,
    pub netlink: RawNetlink,
    pub filter: RawFilter,
    pub metrics_listen: Option<String>,
}

impl Default for RawGeneral {
    fn default() -> Self {
        RawGeneral {
            lock_file: "/run/ctsync/ctsyncd.lock".into(),
            control_socket: "/run/ctsync/ctsyncd.sock".into(),
            control_group: None,
            ready_file: None,
            log: RawLog::default(),
            cache_limit: Scalar::Int(1_048_576),
            netlink: RawNetlink::default(),
            filter: RawFilter::default(),
            metrics_listen: None,
        }
    }
}

#[derive(Deserialize, Serialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    pub target: LogTarget,
    pub level: LogLevel,
    pub file: Option<String>,
    pub syslog_facility: SyslogFacility,
}

#[derive(Deserialize, Serialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawNetlink {
    pub rcvbuf: Scalar,
    pub rcvbuf_max: Scalar,
    pub reliable_events: bool,
    pub overrun_resync: Scalar,
}

impl Default for RawNetlink {
    fn default() -> Self {
        RawNetlink {
            rcvbuf: Scalar::Int(8 << 20),
            rcvbuf_max: Scalar::Int(128 << 20),
            reliable_events: false,
            overrun_resync: Scalar::Text("1s".into()),
        }
    }
}

#[derive(Deserialize, Serialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFilter {
    pub ignore_loopback: bool,
    pub ignore_sync_addresses: bool,
    pub protocols: RawLists,
    pub addresses: RawLists,
    pub tcp_states: RawLists,
}

impl Default for RawFilter {
    fn default() -> Self {
        RawFilter {
            ignore_loopback: true,
            ignore_sync_addresses: true,
            protocols: RawLists::default(),
            addresses: RawLists::default(),
            tcp_states: RawLists::default(),
        }
    }
}

#[derive(Deserialize, Serialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLists {
    pub accept: Vec<Scalar>,
    pub ignore: Vec<Scalar>,
}

#[derive(Deserialize, Serialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSync {
    pub mode: SyncMode,
    pub wire: Dialect,
    pub resend_queue: Scalar,
    pub ack_window: Scalar,
    pub alive_interval: Scalar,
    pub peer_timeout: Scalar,
    pub stall_timeout: Scalar,
    pub anti_entropy_interval: Scalar,
    pub max_datagram: Scalar,
    pub commit_timeout: Scalar,
    pub purge_timeout: Scalar,
    pub tcp_window_tracking: bool,
    pub startup_resync: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expectations: Option<RawExpectations>,
    pub direct_to_kernel: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defer: Option<RawDefer>,
    pub auth: RawAuth,
    pub channels: Vec<RawChannel>,
}

/// `sync.expectations`: a list of helper names, `all`, or a boolean.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub(super) enum RawExpectations {
    Flag(bool),
    Word(String),
    List(Vec<String>),
}

/// `sync.defer`: hold queued packets until the peer has their flow.
#[derive(Deserialize, Serialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDefer {
    pub queue: Option<Scalar>,
    pub timeout: Scalar,
    pub max_held: Scalar,
}

impl Default for RawDefer {
    fn default() -> Self {
        RawDefer { queue: None, timeout: Scalar::Text("20ms".into()), max_held: Scalar::Int(4096) }
    }
}

#[derive(Deserialize, Serialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAuth {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub encrypt: bool,
}

impl Default for RawSync {
    fn default() -> Self {
        RawSync {
            mode: SyncMode::Ftfw,
            wire: Dialect::Native,
            resend_queue: Scalar::Int(131_072),
            ack_window: Scalar::Int(300),
            alive_interval: Scalar::Text("1s".into()),
            peer_timeout: Scalar::Text("4s".into()),
            stall_timeout: Scalar::Text("10s".into()),
            anti_entropy_interval: Scalar::Text("30s".into()),
            max_datagram: Scalar::Int(1472),
            commit_timeout: Scalar::Text("180s".into()),
            purge_timeout: Scalar::Text("60s".into()),
            tcp_window_tracking: false,
            startup_resync: true,
            expectations: None,
            direct_to_kernel: false,
            defer: None,
            auth: RawAuth::default(),
            channels: Vec::new(),
        }
    }
}

#[derive(Deserialize, Serialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawChannel {
    #[serde(rename = "type")]
    pub kind: ChannelType,
    pub local: Option<Scalar>,
    pub peer: Option<Scalar>,
    pub group: Option<Scalar>,
    pub interface: Option<String>,
    pub port: Scalar,
    pub sndbuf: Option<Scalar>,
    pub rcvbuf: Option<Scalar>,
}

impl Default for RawChannel {
    fn default() -> Self {
        RawChannel {
            kind: ChannelType::Udp,
            local: None,
            peer: None,
            group: None,
            interface: None,
            port: Scalar::Int(3780),
            sndbuf: None,
            rcvbuf: None,
        }
    }
}

#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum ChannelType {
    Udp,
    Multicast,
}

/// A YAML scalar kept as written, whether the YAML resolver saw a number or
/// a string: `1s`, `500ms`, `8M`, `10.0.0.1` and `3780` all arrive here and
/// are converted where the key path is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Scalar {
    Int(u64),
    Text(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Int(n) => write!(f, "{n}"),
            Scalar::Text(s) => f.write_str(s),
        }
    }
}

impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Scalar::Int(n) => serializer.serialize_u64(*n),
            Scalar::Text(s) => serializer.serialize_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Scalar, D::Error> {
        struct ScalarVisitor;

        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a string")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(u64::try_from(v).map_or_else(|_| Scalar::Text(v.to_string()), Scalar::Int))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.to_string()))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.to_string()))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.to_owned()))
            }
        }

        deserializer.deserialize_any(ScalarVisitor)
    }
}
