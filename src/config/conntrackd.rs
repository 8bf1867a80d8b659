//! Reading an existing conntrackd.conf (conntrack-tools 1.4) as a [`Config`].
//!
//! The grammar is conntrackd's (`read_config_lex.l`, `read_config_yy.y`):
//! `Section { Key value ... }` with nested blocks, `#` comments to the end
//! of the line, case-sensitive keywords, booleans `on|off|yes|no` in any
//! case, paths that start with `/`. Newlines mean nothing, so the parser
//! knows how many values each keyword takes.
//!
//! The file is mapped onto the same raw tree the YAML schema fills, with
//! conntrackd's defaults where they differ from ours, and then validated by
//! the same code; errors name the conntrackd keyword and its line. Options
//! that are read but not acted on become [`Config::warnings`]. Modes and
//! transports ctsyncd does not speak (ALARM, NOTRACK, TCP channels, Stats)
//! are refused at their line.

use std::net::IpAddr;
use std::path::Path;

use super::locate::Locations;
use super::raw::{ChannelType, RawChannel, RawConfig, RawExpectations, Scalar};
use super::{Config, ConfigError, Ctx, Dialect, Position, SyslogFacility, convert};

/// conntrackd's compiled-in lock file.
pub const DEFAULT_LOCK_FILE: &str = "/var/lock/conntrackd.lock";
/// The control socket of conntrackd's example configurations, used when the
/// file has no `UNIX { Path }`.
pub const DEFAULT_CONTROL_SOCKET: &str = "/var/run/conntrackd.ctl";
/// The file `LogFile on` writes to.
pub const DEFAULT_LOG_FILE: &str = "/var/log/conntrackd.log";

/// Where ctsyncd keeps its runtime files (the unit's `RuntimeDirectory`).
pub const RUNTIME_DIR: &str = "/run/ctsync";
/// Where ctsyncd keeps a log file (the unit's `LogsDirectory`).
pub const LOG_DIR: &str = "/var/log/ctsync";

/// A conntrackd path directly in `/var/lock`, `/run/lock`, `/var/run` or
/// `/run` moved to [`RUNTIME_DIR`], one directly in `/var/log` moved to
/// [`LOG_DIR`], under the same file name; any other path as written.
pub fn writable_path(path: &str) -> String {
    let Some((dir, name)) = path.rsplit_once('/') else {
        return path.to_owned();
    };
    if name.is_empty() || name == "." || name == ".." {
        return path.to_owned();
    }
    match dir.trim_end_matches('/') {
        "/var/lock" | "/run/lock" | "/var/run" | "/run" => format!("{RUNTIME_DIR}/{name}"),
        "/var/log" => format!("{LOG_DIR}/{name}"),
        _ => path.to_owned(),
    }
}

/// Whether `text` looks like conntrackd.conf rather than YAML: its first
/// word (comments and blank lines aside) is a bare keyword followed by `{`,
/// as in `General {` or `Sync {`. YAML puts a `:` after its first key.
pub fn is_conntrackd_syntax(text: &str) -> bool {
    let tokens = lex(text);
    match tokens.as_slice() {
        [Token { kind: Kind::Word(w), .. }, Token { kind: Kind::Open, .. }, ..] => {
            let mut chars = w.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        _ => false,
    }
}

/// Parse `text` as conntrackd.conf read from `origin` (which only appears in
/// error messages) and map it onto a [`Config`] with `sync.wire:
/// conntrackd`.
pub fn from_str(text: &str, origin: &Path) -> Result<Config> {
    let tokens = lex(text);
    let end = end_position(text);
    let mut parser = Parser::new(&tokens, origin, end);
    parser.file()?;
    parser.finish()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind<'a> {
    Word(&'a str),
    Open,
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Token<'a> {
    kind: Kind<'a>,
    pos: Position,
}

/// Splits `text` into words and braces. Anything that is not white space, a
/// brace or a comment belongs to a word, so lexing cannot fail; the parser
/// judges the words.
fn lex(text: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        let line_no = index as u64 + 1;
        let column = |byte: usize| line[..byte].chars().count() as u64 + 1;
        let mut rest = line.char_indices().peekable();
        while let Some((start, c)) = rest.next() {
            let pos = Position { line: line_no, column: column(start) };
            match c {
                '#' => break,
                '{' => tokens.push(Token { kind: Kind::Open, pos }),
                '}' => tokens.push(Token { kind: Kind::Close, pos }),
                c if c.is_whitespace() => {}
                _ => {
                    let mut end = start + c.len_utf8();
                    while let Some(&(i, c)) = rest.peek() {
                        if c.is_whitespace() || matches!(c, '{' | '}' | '#') {
                            break;
                        }
                        end = i + c.len_utf8();
                        rest.next();
                    }
                    tokens.push(Token { kind: Kind::Word(&line[start..end]), pos });
                }
            }
        }
    }
    tokens
}

fn end_position(text: &str) -> Position {
    let line = text.split('\n').count() as u64;
    let last = text.rsplit('\n').next().unwrap_or("");
    Position { line, column: last.chars().count() as u64 + 1 }
}

/// Where a value of the raw tree came from, to point errors found by the
/// shared validation at the conntrackd line.
struct Place {
    /// The raw tree's key path (`sync.channels[0].peer`).
    path: String,
    /// The conntrackd keyword that set it.
    keyword: String,
    pos: Position,
}

/// A channel block before the `Default` one is moved to the front.
struct Channel {
    raw: RawChannel,
    default: bool,
    /// (field of the raw channel, keyword, where).
    places: Vec<(&'static str, String, Position)>,
    keyword: String,
    pos: Position,
}

/// Which of the mutually exclusive top-level sections were seen.
#[derive(Default)]
struct Sections {
    sync: Option<Position>,
    stats: Option<Position>,
}

/// Recursive descent over the tokens, filling a raw tree as it goes.
struct Parser<'a> {
    tokens: &'a [Token<'a>],
    next: usize,
    file: &'a Path,
    end: Position,
    raw: RawConfig,
    places: Vec<Place>,
    warnings: Vec<String>,
    sections: Sections,
    channels: Vec<Channel>,
    /// The first channel block's keyword and line: all must be alike.
    channel_type: Option<(&'a str, Position)>,
    log_file: Option<(String, Position)>,
    syslog: Option<Position>,
    /// `NetlinkBufferSizeMaxGrowth`, applied once the initial size is known.
    rcvbuf_max: Option<(u64, Position)>,
}

type Result<T> = std::result::Result<T, ConfigError>;

impl<'a> Parser<'a> {
    fn new(tokens: &'a [Token<'a>], file: &'a Path, end: Position) -> Parser<'a> {
        // conntrackd's defaults where they differ from ctsyncd's.
        let mut raw = RawConfig::default();
        raw.general.lock_file = DEFAULT_LOCK_FILE.to_owned();
        raw.general.control_socket = DEFAULT_CONTROL_SOCKET.to_owned();
        raw.general.cache_limit = Scalar::Int(262_144);
        raw.general.netlink.overrun_resync = Scalar::Int(30);
        raw.general.filter.ignore_loopback = false;
        raw.general.filter.ignore_sync_addresses = false;
        raw.sync.wire = Dialect::Conntrackd;
        raw.sync.commit_timeout = Scalar::Int(0);
        raw.sync.startup_resync = false;
        Parser {
            tokens,
            next: 0,
            file,
            end,
            raw,
            places: Vec::new(),
            warnings: Vec::new(),
            sections: Sections::default(),
            channels: Vec::new(),
            channel_type: None,
            log_file: None,
            syslog: None,
            rcvbuf_max: None,
        }
    }

    // ---- the grammar ----

    fn file(&mut self) -> Result<()> {
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
                            return Err(self.unknown(item, at, "in State", TCP_STATES));
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

    // ---- after the last token ----

    fn finish(mut self) -> Result<Config> {
        match (self.sections.sync, self.sections.stats) {
            (Some(_), Some(at)) => {
                return Err(self.error(
                    at,
                    "Stats",
                    "cannot use both Sync and Stats (conntrackd refuses this too)",
                ));
            }
            (None, Some(at)) => {
                return Err(self.error(
                    at,
                    "Stats",
                    "statistics mode is not supported: ctsyncd only synchronises (Sync)",
                ));
            }
            (None, None) => {
                return Err(self.error(self.end, "Sync", "no Sync section: nothing to do"));
            }
            (Some(_), None) => {}
        }
        if self.channels.is_empty() {
            let at = self.sections.sync.unwrap_or(self.end);
            return Err(self.error(
                at,
                "Sync",
                "no channel: add a UDP { ... } or Multicast { ... } block",
            ));
        }
        self.apply_log();
        self.apply_writable_paths();
        self.apply_rcvbuf_max();
        self.order_channels();
        let ctx = Ctx { file: self.file, locations: &Locations::default() };
        let mut config = convert(&self.raw, &ctx).map_err(|e| self.locate(e))?;
        config.warnings = self.warnings;
        config.origins = super::Origins {
            file: self.file.to_owned(),
            entries: self
                .places
                .into_iter()
                .map(|p| (p.path, super::Origin { position: p.pos, keyword: Some(p.keyword) }))
                .collect(),
        };
        Ok(config)
    }

    /// conntrackd can log to a file and to syslog at once; ctsyncd has one
    /// target, and the file wins because that is where operators look.
    fn apply_log(&mut self) {
        use super::LogTarget;
        let log = &mut self.raw.general.log;
        match (self.log_file.clone(), self.syslog) {
            (Some((file, at)), syslog) => {
                log.target = LogTarget::File;
                log.file = Some(file);
                self.place("general.log.file", "LogFile", at);
                if let Some(s) = syslog {
                    self.warn(s, "Syslog", "ignored: ctsyncd logs to one place, the LogFile");
                }
            }
            (None, Some(at)) => {
                log.target = LogTarget::Syslog;
                self.place("general.log.target", "Syslog", at);
            }
            (None, None) => {}
        }
    }

    /// conntrackd keeps its lock file, control socket and log in
    /// `/var/lock`, `/var/run` and `/var/log`, which the packaged unit
    /// (`ProtectSystem=strict`) cannot write: a file directly in one of them
    /// moves, under the same name, to `/run/ctsync` (the unit's
    /// `RuntimeDirectory`) or `/var/log/ctsync` (its `LogsDirectory`).
    /// Daemon and client read the file the same way, so they still meet.
    fn apply_writable_paths(&mut self) {
        let general = &mut self.raw.general;
        general.lock_file = writable_path(&general.lock_file);
        general.control_socket = writable_path(&general.control_socket);
        if let Some(file) = &mut general.log.file {
            *file = writable_path(file);
        }
    }

    fn apply_rcvbuf_max(&mut self) {
        let rcvbuf = super::value::size(&self.raw.general.netlink.rcvbuf).unwrap_or(0) as u64;
        match self.rcvbuf_max {
            Some((max, at)) => {
                // conntrackd simply never grows a buffer already at its cap.
                self.raw.general.netlink.rcvbuf_max = Scalar::Int(max.max(rcvbuf));
                self.place("general.netlink.rcvbuf_max", "NetlinkBufferSizeMaxGrowth", at);
            }
            None => {
                let ours = super::value::size(&self.raw.general.netlink.rcvbuf_max).unwrap_or(0);
                self.raw.general.netlink.rcvbuf_max = Scalar::Int((ours as u64).max(rcvbuf));
            }
        }
    }

    /// The channel marked `Default` first (the last one marked, as in
    /// conntrackd), the others in file order.
    fn order_channels(&mut self) {
        let mut channels = std::mem::take(&mut self.channels);
        if let Some(i) = channels.iter().rposition(|c| c.default) {
            let default = channels.remove(i);
            channels.insert(0, default);
        }
        for (i, channel) in channels.into_iter().enumerate() {
            let key = format!("sync.channels[{i}]");
            self.place(&key, &channel.keyword, channel.pos);
            for (field, keyword, pos) in &channel.places {
                self.place(&format!("{key}.{field}"), keyword, *pos);
            }
            self.raw.sync.channels.push(channel.raw);
        }
        self.place("sync.channels", "Sync", self.sections.sync.unwrap_or(self.end));
    }

    /// Points an error of the shared validation at the conntrackd line of
    /// the key, or of its closest written ancestor.
    fn locate(&self, e: ConfigError) -> ConfigError {
        let ConfigError::Invalid { file, position: None, key: Some(key), message } = e else {
            return e;
        };
        let mut path = key.as_str();
        loop {
            if let Some(place) = self.places.iter().rev().find(|p| p.path == path) {
                return ConfigError::Invalid {
                    file,
                    position: Some(place.pos),
                    key: Some(place.keyword.clone()),
                    message,
                };
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None => {
                    return ConfigError::Invalid { file, position: None, key: Some(key), message };
                }
            }
        }
    }

    // ---- tokens and values ----

    fn advance(&mut self) -> Option<Token<'a>> {
        let token = self.tokens.get(self.next).copied();
        self.next += usize::from(token.is_some());
        token
    }

    fn expect(&mut self, what: &str) -> Result<Token<'a>> {
        self.advance().ok_or_else(|| {
            self.error(self.end, "", format!("unexpected end of file, expected {what}"))
        })
    }

    /// The next token inside a block opened at `pos`.
    fn expect_in(&mut self, block: &str, pos: Position) -> Result<Token<'a>> {
        self.advance().ok_or_else(|| {
            self.error(
                self.end,
                "",
                format!(
                    "unexpected end of file: the {block} block opened at line {} has no \
                     closing '}}'",
                    pos.line
                ),
            )
        })
    }

    /// Items of a block whose `{` was just read, up to its `}`.
    fn block(
        &mut self,
        name: &str,
        pos: Position,
        mut item: impl FnMut(&mut Self, &'a str, Position) -> Result<()>,
    ) -> Result<()> {
        loop {
            let token = self.expect_in(name, pos)?;
            match token.kind {
                Kind::Close => return Ok(()),
                Kind::Word(word) => item(self, word, token.pos)?,
                Kind::Open => return Err(self.unexpected(token, &format!("a keyword in {name}"))),
            }
        }
    }

    /// A block whose content ctsyncd has no use for; only its braces must
    /// balance.
    fn skip_block(&mut self, name: &str, pos: Position) -> Result<()> {
        let mut depth = 1usize;
        while depth > 0 {
            match self.expect_in(name, pos)?.kind {
                Kind::Open => depth += 1,
                Kind::Close => depth -= 1,
                Kind::Word(_) => {}
            }
        }
        Ok(())
    }

    fn open(&mut self, after: &str) -> Result<()> {
        let token = self.expect(&format!("'{{' after {after}"))?;
        match token.kind {
            Kind::Open => Ok(()),
            _ => Err(self.unexpected(token, &format!("'{{' after {after}"))),
        }
    }

    fn word(&mut self, what: &str) -> Result<(&'a str, Position)> {
        let token = self.expect(what)?;
        match token.kind {
            Kind::Word(w) => Ok((w, token.pos)),
            _ => Err(self.unexpected(token, what)),
        }
    }

    fn keyword_of(&self, token: Token<'a>, what: &str) -> Result<(&'a str, Position)> {
        match token.kind {
            Kind::Word(w) => Ok((w, token.pos)),
            _ => Err(self.unexpected(token, what)),
        }
    }

    /// The value after `keyword`.
    fn value(&mut self, keyword: &str, what: &str) -> Result<&'a str> {
        self.word(&format!("{what} after {keyword}")).map(|(w, _)| w)
    }

    fn number(&mut self, keyword: &str) -> Result<u64> {
        let (value, pos) = self.word(&format!("a number after {keyword}"))?;
        digits(value).ok_or_else(|| self.bad_value(keyword, pos, value, "a number"))
    }

    fn boolean(&mut self, keyword: &str) -> Result<bool> {
        let (value, pos) = self.word(&format!("on or off after {keyword}"))?;
        bool_word(value).ok_or_else(|| self.bad_value(keyword, pos, value, "on, off, yes or no"))
    }

    fn path(&mut self, keyword: &str) -> Result<&'a str> {
        let (value, pos) = self.word(&format!("a path after {keyword}"))?;
        if !value.starts_with('/') {
            return Err(self.bad_value(keyword, pos, value, "an absolute path"));
        }
        Ok(value)
    }

    fn current(&mut self) -> &mut Channel {
        match self.channels.last_mut() {
            Some(channel) => channel,
            // Channel items are only parsed inside the block that pushed one.
            None => unreachable!("channel item outside a channel block"),
        }
    }

    // ---- bookkeeping ----

    fn place(&mut self, path: &str, keyword: &str, pos: Position) {
        self.places.push(Place { path: path.to_owned(), keyword: keyword.to_owned(), pos });
    }

    fn channel_place(&mut self, field: &'static str, keyword: &str, pos: Position) {
        self.current().places.push((field, keyword.to_owned(), pos));
    }

    fn push_filter(
        &mut self,
        category: &str,
        accept: bool,
        keyword: &str,
        pos: Position,
        value: String,
    ) {
        let filter = &mut self.raw.general.filter;
        let lists = match category {
            "protocols" => &mut filter.protocols,
            "addresses" => &mut filter.addresses,
            _ => &mut filter.tcp_states,
        };
        let (list, name) =
            if accept { (&mut lists.accept, "accept") } else { (&mut lists.ignore, "ignore") };
        let path = format!("general.filter.{category}.{name}[{}]", list.len());
        list.push(Scalar::Text(value));
        self.place(&path, keyword, pos);
    }

    fn warn(&mut self, pos: Position, keyword: &str, message: &str) {
        self.warnings.push(format!("{}:{}: {keyword}: {message}", self.file.display(), pos.line));
    }

    // ---- errors ----

    fn error(&self, pos: Position, keyword: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            position: Some(pos),
            key: (!keyword.is_empty()).then(|| keyword.to_owned()),
            message: message.into(),
        }
    }

    fn unexpected(&self, token: Token<'_>, expected: &str) -> ConfigError {
        let found = match token.kind {
            Kind::Word(w) => format!("\"{w}\""),
            Kind::Open => "'{'".to_owned(),
            Kind::Close => "'}'".to_owned(),
        };
        self.error(token.pos, "", format!("unexpected {found}, expected {expected}"))
    }

    fn bad_value(&self, keyword: &str, pos: Position, value: &str, want: &str) -> ConfigError {
        self.error(pos, keyword, format!("invalid value \"{value}\": expected {want}"))
    }

    fn unknown(&self, word: &str, pos: Position, context: &str, known: &[&str]) -> ConfigError {
        let hint = known
            .iter()
            .find(|k| k.eq_ignore_ascii_case(word))
            .map(|k| format!(" (keywords are case-sensitive: did you mean {k}?)"))
            .unwrap_or_default();
        self.error(pos, word, format!("unknown keyword \"{word}\" {context}{hint}"))
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
const TCP_STATES: &[&str] = &[
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "CLOSED",
    "LISTEN",
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

/// conntrackd's booleans, in any case.
fn bool_word(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("on") || s.eq_ignore_ascii_case("yes") {
        Some(true)
    } else if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("no") {
        Some(false)
    } else {
        None
    }
}

/// An unsigned decimal number, as conntrackd's `[0-9]+`.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
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
    Some(match word {
        "SYN_SENT" => "SYN_SENT",
        "SYN_RECV" => "SYN_RECV",
        "ESTABLISHED" => "ESTABLISHED",
        "FIN_WAIT" => "FIN_WAIT",
        "CLOSE_WAIT" => "CLOSE_WAIT",
        "LAST_ACK" => "LAST_ACK",
        "TIME_WAIT" => "TIME_WAIT",
        "CLOSE" | "CLOSED" => "CLOSE",
        "LISTEN" => "SYN_SENT2",
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
