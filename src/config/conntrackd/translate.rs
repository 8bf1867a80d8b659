//! Translation: each conntrackd.conf section and keyword onto the raw tree
//! the YAML schema fills, with the keyword lists that unknown-keyword
//! errors offer and conntrackd's names of facilities and TCP states.

use std::net::IpAddr;

use super::lex::{Kind, bool_word, digits};
use super::{Channel, DEFAULT_LOG_FILE, Parser, Result};
use crate::config::raw::{ChannelType, RawChannel, RawExpectations, Scalar};
use crate::config::{Position, SyslogFacility};
use crate::flow::tcp_state;

impl<'a> Parser<'a> {
    // ---- the grammar ----

    pub(super) fn file(&mut self) -> Result<()> {
        while let Some(token) = self.advance() {
            let (word, pos) =
                self.keyword_of(token, "a section: General, Sync, Stats or Helper")?;
            match word {
                "General" => {
                    self.open(word)?;
                    self.block(word, pos, Self::general)?;
                }
                "Sync" => {
                    self.open(word)?;
                    self.sections.sync.get_or_insert(pos);
                    self.block(word, pos, Self::sync)?;
                }
                "Stats" => {
                    self.open(word)?;
                    self.sections.stats.get_or_insert(pos);
                    self.skip_block(word, pos)?;
                }
                "Helper" => {
                    self.open(word)?;
                    self.skip_block(word, pos)?;
                    self.warn(pos, "Helper", "userspace conntrack helpers are not run by ctsyncd");
                }
                _ => return Err(self.unknown(word, pos, "at the top level", TOP)),
            }
        }
        Ok(())
    }

    fn general(&mut self, word: &'a str, pos: Position) -> Result<()> {
        match word {
            // ctsyncd's cache grows by itself, so a bucket count means nothing.
            "HashSize" => drop(self.number(word)?),
            "HashLimit" => {
                let n = self.number(word)?;
                self.raw.general.cache_limit = Scalar::Int(n);
                self.place("general.cache_limit", word, pos);
            }
            "LogFile" => {
                let value = self.value(word, "on, off or an absolute path")?;
                match bool_word(value) {
                    Some(true) => self.log_file = Some((DEFAULT_LOG_FILE.to_owned(), pos)),
                    Some(false) => self.log_file = None,
                    None if value.starts_with('/') => {
                        self.log_file = Some((value.to_owned(), pos));
                    }
                    None => return Err(self.bad_value(word, pos, value, "on, off or a path")),
                }
            }
            "Syslog" => {
                let value = self.value(word, "on, off or a facility")?;
                match bool_word(value) {
                    Some(true) => {
                        self.syslog = Some(pos);
                        self.raw.general.log.syslog_facility = SyslogFacility::Daemon;
                    }
                    Some(false) => self.syslog = None,
                    None => match facility(value) {
                        Some(f) => {
                            self.syslog = Some(pos);
                            self.raw.general.log.syslog_facility = f;
                        }
                        // conntrackd logs this and carries on.
                        None => self.warn(
                            pos,
                            "Syslog",
                            &format!(
                                "unknown facility \"{value}\" ignored (daemon, local0..local7)"
                            ),
                        ),
                    },
                }
            }
            "LockFile" => {
                let path = self.path(word)?;
                self.raw.general.lock_file = path.to_owned();
                self.place("general.lock_file", word, pos);
            }
            "UNIX" => {
                self.open(word)?;
                self.block(word, pos, Self::unix)?;
            }
            "NetlinkBufferSize" | "SocketBufferSize" => {
                let n = self.number(word)?;
                self.raw.general.netlink.rcvbuf = Scalar::Int(n);
                self.place("general.netlink.rcvbuf", word, pos);
            }
            "NetlinkBufferSizeMaxGrowth"
            | "SocketBufferSizeMaxGrown"
            | "SocketBufferSizeMaxGrowth" => {
                let n = self.number(word)?;
                self.rcvbuf_max = Some((n, pos));
            }
            "NetlinkOverrunResync" => {
                let value = self.value(word, "on, off or a number of seconds")?;
                let secs = match bool_word(value) {
                    Some(true) => 30,
                    Some(false) => {
                        self.warn(
                            pos,
                            word,
                            "off is not supported: ctsyncd always resynchronises with the \
                             kernel after lost events, here after 30 seconds",
                        );
                        30
                    }
                    None => match digits(value) {
                        // conntrackd reads 0 as "not set".
                        Some(0) => 30,
                        Some(n) => n,
                        None => {
                            return Err(self.bad_value(word, pos, value, "on, off or seconds"));
                        }
                    },
                };
                self.raw.general.netlink.overrun_resync = Scalar::Int(secs);
                self.place("general.netlink.overrun_resync", word, pos);
            }
            "NetlinkEventsReliable" => {
                self.raw.general.netlink.reliable_events = self.boolean(word)?;
                self.place("general.netlink.reliable_events", word, pos);
            }
            "EventIterationLimit" => {
                self.number(word)?;
                self.warn(
                    pos,
                    word,
                    "not used: ctsyncd drains kernel events in batches of its own",
                );
            }
            "PollSecs" => {
                self.number(word)?;
                self.warn(pos, word, "polling is not implemented: ctsyncd follows kernel events");
            }
            "Nice" => {
                let value = self.value(word, "a number")?;
                let n = value.strip_prefix(['-', '+']).unwrap_or(value);
                if digits(n).is_none() {
                    return Err(self.bad_value(word, pos, value, "a signed number"));
                }
                self.warn(pos, word, "deprecated in conntrackd and ignored; use nice(1)");
            }
            "Scheduler" => {
                self.open(word)?;
                self.block(word, pos, Self::scheduler)?;
                self.warn(pos, word, "not implemented: ctsyncd keeps the normal scheduler");
            }
            "Systemd" => {
                if !self.boolean(word)? {
                    self.warn(
                        pos,
                        word,
                        "off is ignored: ctsyncd notifies systemd whenever it runs under a \
                         Type=notify unit",
                    );
                }
            }
            "Filter" => self.filter(pos)?,
            _ => return Err(self.unknown(word, pos, "in General", GENERAL)),
        }
        Ok(())
    }

    fn unix(&mut self, word: &'a str, pos: Position) -> Result<()> {
        match word {
            "Path" => {
                let path = self.path(word)?;
                self.raw.general.control_socket = path.to_owned();
                self.place("general.control_socket", word, pos);
            }
            "Backlog" => {
                self.number(word)?;
                self.warn(pos, "UNIX Backlog", "deprecated in conntrackd and ignored");
            }
            _ => return Err(self.unknown(word, pos, "in UNIX", &["Path", "Backlog"])),
        }
        Ok(())
    }

    fn scheduler(&mut self, word: &'a str, pos: Position) -> Result<()> {
        match word {
            "Type" => {
                let value = self.value(word, "RR or FIFO")?;
                if !value.eq_ignore_ascii_case("rr") && !value.eq_ignore_ascii_case("fifo") {
                    return Err(self.bad_value(word, pos, value, "RR or FIFO"));
                }
            }
            "Priority" => {
                if self.number(word)? > 99 {
                    return Err(self.error(pos, word, "must be 0 to 99"));
                }
            }
            _ => return Err(self.unknown(word, pos, "in Scheduler", &["Type", "Priority"])),
        }
        Ok(())
    }

    /// `Filter [From Userspace|Kernelspace] { ... }`. ctsyncd filters in
    /// userspace either way; the outcome is the same.
    fn filter(&mut self, pos: Position) -> Result<()> {
        let token = self.expect("'{' or From after Filter")?;
        match token.kind {
            Kind::Open => {}
            Kind::Word("From") => {
                let (space, at) = self.word("Userspace or Kernelspace after Filter From")?;
                if space != "Userspace" && space != "Kernelspace" {
                    return Err(self.error(
                        at,
                        "Filter From",
                        format!("expected Userspace or Kernelspace, found \"{space}\""),
                    ));
                }
                self.open("Filter From")?;
            }
            _ => return Err(self.unexpected(token, "'{' or From after Filter")),
        }
        self.block("Filter", pos, Self::filter_item)
    }

    fn filter_item(&mut self, word: &'a str, pos: Position) -> Result<()> {
        let category = match word {
            "Protocol" => "protocols",
            "Address" => "addresses",
            "State" => "tcp_states",
            _ => {
                return Err(self.unknown(
                    word,
                    pos,
                    "in Filter",
                    &["Protocol", "Address", "State"],
                ));
            }
        };
        let (action, at) = self.word("Accept or Ignore")?;
        let accept = match action {
            "Accept" => true,
            "Ignore" => false,
            _ => {
                return Err(self.error(
                    at,
                    word,
                    format!("expected Accept or Ignore, found \"{action}\""),
                ));
            }
        };
        let list = if accept { "accept" } else { "ignore" };
        let keyword = format!("{word} {action}");
        self.open(&keyword)?;
        let path = format!("general.filter.{category}.{list}");
        self.place(&path, &keyword, pos);
        let mut pending_states: Vec<(&str, Position)> = Vec::new();
        loop {
            let token = self.expect_in(&keyword, pos)?;
            let (item, at) = match token.kind {
                Kind::Close => break,
                Kind::Word(w) => (w, token.pos),
                Kind::Open => return Err(self.unexpected(token, "a list item")),
            };
            match word {
                "Protocol" => self.push_filter(category, accept, &keyword, at, item.to_owned()),
                "Address" => {
                    let family = match item {
                        "IPv4_address" => Family::V4,
                        "IPv6_address" => Family::V6,
                        _ => {
                            return Err(self.unknown(
                                item,
                                at,
                                "in Address",
                                &["IPv4_address", "IPv6_address"],
                            ));
                        }
                    };
                    let (value, vpos) = self.word("an address")?;
                    let addr = value.split_once('/').map_or(value, |(a, _)| a);
                    match addr.parse::<IpAddr>() {
                        Ok(ip) if family.matches(ip) => {}
                        _ => {
                            return Err(self.error(
                                vpos,
                                item,
                                format!("invalid {} \"{value}\"", family.describe()),
                            ));
                        }
                    }
                    self.push_filter(category, accept, item, vpos, value.to_owned());
                }
                _ => match item {
                    "for" => {
                        let (proto, ppos) = self.word("TCP after for")?;
                        if proto != "TCP" {
                            return Err(self.error(
                                ppos,
                                "State",
                                format!("states can only be given for TCP, not \"{proto}\""),
                            ));
                        }
                        for (state, spos) in pending_states.drain(..) {
                            self.push_filter(category, accept, &keyword, spos, state.to_owned());
                        }
                    }
                    _ => {
                        let Some(state) = tcp_state(item) else {
                            return Err(self.unknown(item, at, "in State", &tcp_state_words()));
                        };
                        pending_states.push((state, at));
                    }
                },
            }
        }
        if let Some(&(_, at)) = pending_states.first() {
            return Err(self.error(at, "State", "a list of states must end with `for TCP`"));
        }
        Ok(())
    }

    fn sync(&mut self, word: &'a str, pos: Position) -> Result<()> {
        match word {
            "Mode" => {
                let (mode, at) = self.word("a mode (FTFW) after Mode")?;
                if mode.eq_ignore_ascii_case("ftfw") || mode.eq_ignore_ascii_case("nack") {
                    self.open("Mode FTFW")?;
                    self.block("Mode FTFW", pos, Self::ftfw)?;
                } else if ["alarm", "persistent", "notrack"]
                    .iter()
                    .any(|m| mode.eq_ignore_ascii_case(m))
                {
                    return Err(self.error(
                        at,
                        "Mode",
                        format!(
                            "Mode {mode} is not supported: ctsyncd only speaks FTFW; set `Mode \
                             FTFW {{ }}` on both nodes"
                        ),
                    ));
                } else {
                    return Err(self.error(
                        at,
                        "Mode",
                        format!("unknown mode \"{mode}\" (conntrackd knows FTFW, ALARM, NOTRACK)"),
                    ));
                }
            }
            "Multicast" | "UDP" => self.channel(word, pos)?,
            "TCP" => {
                return Err(self.error(
                    pos,
                    word,
                    "TCP channels are not supported: use UDP or Multicast (FTFW already \
                     recovers lost messages)",
                ));
            }
            "Options" => {
                self.open(word)?;
                self.block(word, pos, Self::options)?;
            }
            "CommitTimeout" | "PurgeTimeout" => self.timeout(word, pos)?,
            "RefreshTime" | "CacheTimeout" => {
                self.number(word)?;
                self.warn(pos, word, "ignored: only Mode ALARM uses it");
            }
            _ => return Err(self.unknown(word, pos, "in Sync", SYNC)),
        }
        Ok(())
    }

    fn ftfw(&mut self, word: &'a str, pos: Position) -> Result<()> {
        match word {
            "ResendQueueSize" => {
                self.raw.sync.resend_queue = Scalar::Int(self.number(word)?);
                self.place("sync.resend_queue", word, pos);
            }
            "ACKWindowSize" => {
                self.raw.sync.ack_window = Scalar::Int(self.number(word)?);
                self.place("sync.ack_window", word, pos);
            }
            "CommitTimeout" | "PurgeTimeout" => self.timeout(word, pos)?,
            "DisableExternalCache" => {
                self.raw.sync.direct_to_kernel = self.boolean(word)?;
                self.place("sync.direct_to_kernel", word, pos);
            }
            "StartupResync" => {
                self.raw.sync.startup_resync = self.boolean(word)?;
                self.place("sync.startup_resync", word, pos);
            }
            "DisableInternalCache" => {
                return Err(self.error(pos, word, "conntrackd only accepts it in Mode NOTRACK"));
            }
            _ => return Err(self.unknown(word, pos, "in Mode FTFW", FTFW)),
        }
        Ok(())
    }

    fn timeout(&mut self, word: &'a str, pos: Position) -> Result<()> {
        let n = self.number(word)?;
        if word == "CommitTimeout" {
            // 0 or absent: keep the timeout the peer sent, as conntrackd does.
            self.raw.sync.commit_timeout = Scalar::Int(n);
            self.place("sync.commit_timeout", word, pos);
        } else {
            // conntrackd reads 0 as "not set".
            self.raw.sync.purge_timeout = Scalar::Int(if n == 0 { 60 } else { n });
            self.place("sync.purge_timeout", word, pos);
        }
        Ok(())
    }

    fn options(&mut self, word: &'a str, pos: Position) -> Result<()> {
        match word {
            "TCPWindowTracking" => {
                self.raw.sync.tcp_window_tracking = self.boolean(word)?;
                self.place("sync.tcp_window_tracking", word, pos);
            }
            "ExpectationSync" => {
                let token = self.expect("on, off or '{' after ExpectationSync")?;
                let helpers = match token.kind {
                    Kind::Open => {
                        let mut names = Vec::new();
                        loop {
                            match self.expect_in(word, pos)?.kind {
                                Kind::Close => break,
                                Kind::Word(w) => names.push(w.to_ascii_lowercase()),
                                Kind::Open => self.skip_block(word, pos)?,
                            }
                        }
                        Some(if names.is_empty() {
                            RawExpectations::Word("all".into())
                        } else {
                            RawExpectations::List(names)
                        })
                    }
                    Kind::Word(w) => match bool_word(w) {
                        Some(true) => Some(RawExpectations::Word("all".into())),
                        Some(false) => None,
                        None => {
                            return Err(self.bad_value(word, token.pos, w, "on, off or a list"));
                        }
                    },
                    Kind::Close => return Err(self.unexpected(token, "on, off or '{'")),
                };
                self.raw.sync.expectations = helpers;
                self.place("sync.expectations", word, pos);
            }
            _ => {
                return Err(self.unknown(
                    word,
                    pos,
                    "in Options",
                    &["TCPWindowTracking", "ExpectationSync"],
                ));
            }
        }
        Ok(())
    }

    /// `Multicast [Default] { ... }` or `UDP [Default] { ... }`.
    fn channel(&mut self, word: &'a str, pos: Position) -> Result<()> {
        match self.channel_type {
            Some((first, at)) if first != word => {
                return Err(self.error(
                    pos,
                    word,
                    format!(
                        "cannot mix {word} with the {first} channel of line {}: all channels \
                         must use the same transport",
                        at.line
                    ),
                ));
            }
            Some(_) => {}
            None => self.channel_type = Some((word, pos)),
        }
        let token = self.expect("'{' or Default")?;
        let default = match token.kind {
            Kind::Open => false,
            Kind::Word("Default") => {
                self.open(word)?;
                true
            }
            _ => return Err(self.unexpected(token, &format!("'{{' or Default after {word}"))),
        };
        let kind = if word == "UDP" { ChannelType::Udp } else { ChannelType::Multicast };
        let raw = RawChannel { kind, ..RawChannel::default() };
        self.channels.push(Channel {
            raw,
            default,
            places: Vec::new(),
            keyword: word.to_owned(),
            pos,
        });
        if word == "UDP" {
            self.block(word, pos, Self::udp_item)?;
        } else {
            self.block(word, pos, Self::multicast_item)?;
        }
        self.complete_channel(pos)
    }

    fn udp_item(&mut self, word: &'a str, pos: Position) -> Result<()> {
        match word {
            "IPv4_address" | "IPv6_address" => self.channel_ip(word, "local"),
            "IPv4_Destination_Address" | "IPv6_Destination_Address" => {
                self.channel_ip(word, "peer")
            }
            "Port" => self.channel_port(word, pos),
            _ => self.channel_common(word, pos, "in UDP", UDP),
        }
    }

    fn multicast_item(&mut self, word: &'a str, pos: Position) -> Result<()> {
        match word {
            "IPv4_address" | "IPv6_address" => self.channel_ip(word, "group"),
            "IPv4_interface" => self.channel_ip(word, "local"),
            "IPv6_interface" => {
                self.word("an address")?;
                // conntrackd ignores it too: IPv6 multicast goes out of `Interface`.
                self.warn(pos, word, "ignored, as conntrackd does; Interface selects the link");
                Ok(())
            }
            "Group" => self.channel_port(word, pos),
            _ => self.channel_common(word, pos, "in Multicast", MULTICAST),
        }
    }

    fn channel_common(
        &mut self,
        word: &'a str,
        pos: Position,
        context: &str,
        known: &[&str],
    ) -> Result<()> {
        match word {
            "Interface" => {
                let (name, _) = self.word("an interface name")?;
                self.current().raw.interface = Some(name.to_owned());
                self.channel_place("interface", word, pos);
            }
            "SndSocketBuffer" | "RcvSocketBuffer" => {
                let n = self.number(word)?;
                // conntrackd reads 0 as "the system default".
                let value = (n != 0).then_some(Scalar::Int(n));
                let (field, raw) = if word == "SndSocketBuffer" {
                    ("sndbuf", &mut self.current().raw.sndbuf)
                } else {
                    ("rcvbuf", &mut self.current().raw.rcvbuf)
                };
                *raw = value;
                self.channel_place(field, word, pos);
            }
            "Checksum" => {
                if !self.boolean(word)? {
                    self.warn(pos, "Checksum", "off is ignored: every message is checksummed");
                }
            }
            _ => return Err(self.unknown(word, pos, context, known)),
        }
        Ok(())
    }

    fn channel_ip(&mut self, word: &'a str, field: &'static str) -> Result<()> {
        let (value, at) = self.word("an address")?;
        let family = if word.starts_with("IPv4") { Family::V4 } else { Family::V6 };
        match value.parse::<IpAddr>() {
            Ok(ip) if family.matches(ip) => {}
            _ => {
                return Err(self.error(
                    at,
                    word,
                    format!("invalid {} \"{value}\"", family.describe()),
                ));
            }
        }
        let text = Some(Scalar::Text(value.to_owned()));
        let raw = &mut self.current().raw;
        match field {
            "local" => raw.local = text,
            "peer" => raw.peer = text,
            _ => raw.group = text,
        }
        self.channel_place(field, word, at);
        Ok(())
    }

    fn channel_port(&mut self, word: &'a str, pos: Position) -> Result<()> {
        let n = self.number(word)?;
        self.current().raw.port = Scalar::Int(n);
        self.channel_place("port", word, pos);
        Ok(())
    }

    /// A channel without a local address binds the wildcard of the
    /// destination's family, as conntrackd does.
    fn complete_channel(&mut self, pos: Position) -> Result<()> {
        let channel = self.current();
        let remote = match channel.raw.kind {
            ChannelType::Udp => &channel.raw.peer,
            ChannelType::Multicast => &channel.raw.group,
        };
        let Some(remote) = remote else {
            let (keyword, needed) = match channel.raw.kind {
                ChannelType::Udp => ("UDP", "IPv4_Destination_Address or IPv6_Destination_Address"),
                ChannelType::Multicast => ("Multicast", "IPv4_address or IPv6_address (the group)"),
            };
            return Err(self.error(pos, keyword, format!("{needed} is required")));
        };
        if channel.raw.local.is_none() {
            let v6 = remote.to_string().contains(':');
            let any = if v6 { "::" } else { "0.0.0.0" };
            channel.raw.local = Some(Scalar::Text(any.to_owned()));
        }
        Ok(())
    }
}

const TOP: &[&str] = &["General", "Sync", "Stats", "Helper"];
const GENERAL: &[&str] = &[
    "HashSize",
    "HashLimit",
    "LogFile",
    "Syslog",
    "LockFile",
    "UNIX",
    "NetlinkBufferSize",
    "NetlinkBufferSizeMaxGrowth",
    "NetlinkOverrunResync",
    "NetlinkEventsReliable",
    "EventIterationLimit",
    "PollSecs",
    "Nice",
    "Scheduler",
    "Systemd",
    "Filter",
];
const SYNC: &[&str] = &[
    "Mode",
    "Multicast",
    "UDP",
    "TCP",
    "Options",
    "CommitTimeout",
    "PurgeTimeout",
    "RefreshTime",
    "CacheTimeout",
];
const FTFW: &[&str] = &[
    "ResendQueueSize",
    "ACKWindowSize",
    "CommitTimeout",
    "PurgeTimeout",
    "DisableExternalCache",
    "StartupResync",
];
const UDP: &[&str] = &[
    "IPv4_address",
    "IPv6_address",
    "IPv4_Destination_Address",
    "IPv6_Destination_Address",
    "Port",
    "Interface",
    "SndSocketBuffer",
    "RcvSocketBuffer",
    "Checksum",
];
const MULTICAST: &[&str] = &[
    "IPv4_address",
    "IPv6_address",
    "IPv4_interface",
    "IPv6_interface",
    "Group",
    "Interface",
    "SndSocketBuffer",
    "RcvSocketBuffer",
    "Checksum",
];

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn matches(self, ip: IpAddr) -> bool {
        matches!((self, ip), (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_)))
    }

    fn describe(self) -> &'static str {
        match self {
            Family::V4 => "IPv4 address",
            Family::V6 => "IPv6 address",
        }
    }
}

/// The facilities conntrackd's `Syslog` accepts (exact, lower case).
fn facility(s: &str) -> Option<SyslogFacility> {
    Some(match s {
        "daemon" => SyslogFacility::Daemon,
        "local0" => SyslogFacility::Local0,
        "local1" => SyslogFacility::Local1,
        "local2" => SyslogFacility::Local2,
        "local3" => SyslogFacility::Local3,
        "local4" => SyslogFacility::Local4,
        "local5" => SyslogFacility::Local5,
        "local6" => SyslogFacility::Local6,
        "local7" => SyslogFacility::Local7,
        _ => return None,
    })
}

/// A state keyword of conntrackd's filter, as the name our schema reads.
/// `LISTEN` is the kernel's `TCP_CONNTRACK_LISTEN`, which is `SYN_SENT2`.
fn tcp_state(word: &str) -> Option<&'static str> {
    // Case-sensitive, as conntrackd's lexer; our own name for the YAML.
    let state = tcp_state_words().contains(&word).then(|| tcp_state::by_name(word)).flatten()?;
    tcp_state::NAMES.get(usize::from(state)).copied()
}

/// The state words of conntrackd.conf: conntrack's names from SYN_SENT to
/// CLOSE and its aliases (the grammar has no SYN_SENT2, only LISTEN).
fn tcp_state_words() -> Vec<&'static str> {
    let (first, last) = (usize::from(tcp_state::SYN_SENT), usize::from(tcp_state::CLOSE));
    let names = tcp_state::NAMES[first..=last].iter().copied();
    names.chain(tcp_state::ALIASES.iter().map(|(name, _)| *name)).collect()
}
