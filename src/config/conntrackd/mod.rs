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
//!
//! Layout: the entry points, the parser's state and what happens after the
//! last token (validation, conntrackd's paths and defaults, errors pointed
//! at the conntrackd line) are here; `lex` splits the text into tokens and
//! reads words, values and blocks; `translate` maps each section's keywords
//! onto the raw tree.

mod lex;
#[cfg(test)]
mod tests;
mod translate;

use std::path::Path;

use super::locate::Locations;
use super::raw::{RawChannel, RawConfig, Scalar};
use super::{Config, ConfigError, Ctx, Dialect, Position, convert};
use lex::{Kind, Token, end_position, lex};

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
}
