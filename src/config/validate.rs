//! Validation: the raw tree serde read becomes a typed [`Config`], every
//! value checked and the relations between them too; each error names the
//! key path and points at its line and column.

use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::locate::Locations;
use super::raw::{self, ChannelType, RawChannel, RawConfig, RawLists, Scalar};
use super::*;

/// What conversion needs to build errors.
pub(super) struct Ctx<'a> {
    pub(super) file: &'a Path,
    pub(super) locations: &'a Locations,
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

    pub(super) fn yaml_error(&self, e: &serde_saphyr::Error) -> ConfigError {
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

pub(super) fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    })
}

/// Raw tree → typed `Config`, checking every value and the relations
/// between them.
pub(super) fn convert(raw: &RawConfig, ctx: &Ctx<'_>) -> Result<Config, ConfigError> {
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
