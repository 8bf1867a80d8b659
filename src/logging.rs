//! Operator logs: one line per event that matters, to stderr (what systemd's
//! journal reads), syslog (`/dev/log`) or a file, with a level, as the
//! config's `general.log` section says.
//!
//! Each place gets what its readers expect:
//! * stderr connected to the journal (`JOURNAL_STREAM` names stderr's
//!   device and inode, as systemd sets it): every line starts with its
//!   syslog priority, `<4>` for a warning (sd-daemon(3)), so that
//!   `journalctl -p warning` finds the warnings;
//! * stderr about to be lost (`-d` sends it to /dev/null): [`detach`] says
//!   so on stderr while it is still there, and the lines go to syslog;
//! * a file: reopened by [`reopen`] (the daemon calls it on SIGUSR1), so
//!   that logrotate can rename it without `copytruncate`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::{LogConfig, LogLevel, LogTarget};

/// The syslog facility `-d` falls back to when stderr would be lost.
pub const DAEMON_FACILITY: u8 = 3;

/// The file of `general.log.target: file` when `general.log.file` is unset
/// (validation refuses that, so only a hand-built config gets it).
const DEFAULT_FILE: &str = "/var/log/ctsync/ctsyncd.log";

enum Sink {
    /// `journal`: stderr is the journal's stream, so lines carry their
    /// priority.
    Stderr {
        journal: bool,
    },
    /// `facility`: the syslog facility number (daemon = 3).
    Syslog {
        socket: Option<UnixDatagram>,
        facility: u8,
    },
    File {
        file: File,
        path: PathBuf,
    },
}

struct Logger {
    level: Mutex<log::LevelFilter>,
    sink: Mutex<Sink>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Install the process logger, or point the installed one at what the
/// `general.log` section names.
pub fn init(log: &LogConfig) -> std::io::Result<()> {
    let level = level_filter(log.level);
    let sink = match log.target {
        LogTarget::Stderr => Sink::Stderr {
            journal: stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()),
        },
        LogTarget::Syslog => syslog((log.syslog_facility.code() / 8) as u8),
        LogTarget::File => {
            let path = log.file.clone().unwrap_or_else(|| DEFAULT_FILE.into());
            Sink::File { file: open_log(&path)?, path }
        }
    };
    let logger = LOGGER.get_or_init(|| Logger {
        level: Mutex::new(level),
        sink: Mutex::new(Sink::Stderr { journal: false }),
    });
    if let Ok(mut current) = logger.sink.lock() {
        *current = sink;
    }
    if let Ok(mut current) = logger.level.lock() {
        *current = level;
    }
    let _ = log::set_logger(logger);
    log::set_max_level(level);
    Ok(())
}

/// The daemon is about to detach from its terminal (`-d`), which sends
/// stderr to /dev/null. When the log goes to stderr, say so there while it
/// can be read and log to syslog (facility daemon) from now on. Returns
/// whether the target changed.
pub fn detach() -> bool {
    let Some(logger) = LOGGER.get() else { return false };
    let Ok(mut sink) = logger.sink.lock() else { return false };
    if !matches!(*sink, Sink::Stderr { .. }) {
        return false;
    }
    let line = "-d detaches from stderr, where general.log.target: stderr sends the log: logging to syslog (facility daemon) instead; set general.log.target to syslog or file to choose";
    let _ = writeln!(std::io::stderr(), "{}: {line}", tag(log::Level::Warn));
    *sink = syslog(DAEMON_FACILITY);
    if matches!(*sink, Sink::Syslog { socket: None, .. }) {
        let _ = writeln!(
            std::io::stderr(),
            "{}: no syslog daemon answers on /dev/log: the log will be lost; set general.log.target: file",
            tag(log::Level::Error)
        );
    }
    drop(sink);
    log::warn!("{line}");
    true
}

/// Open the log file again (after logrotate renamed it), keeping the old
/// one when the new one cannot be opened. `Ok(None)` when the log is not a
/// file.
pub fn reopen() -> Result<Option<PathBuf>, ReopenError> {
    let Some(logger) = LOGGER.get() else { return Ok(None) };
    let Ok(mut sink) = logger.sink.lock() else { return Ok(None) };
    let Sink::File { file, path } = &mut *sink else { return Ok(None) };
    let _ = file.flush();
    *file = open_log(path).map_err(ReopenError)?;
    Ok(Some(path.clone()))
}

/// The log file could not be opened again; the daemon goes on writing to
/// the old one.
#[derive(Debug)]
pub struct ReopenError(pub std::io::Error);

impl std::fmt::Display for ReopenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot reopen the log: {}; still writing to the old file", self.0)
    }
}

impl std::error::Error for ReopenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Whether `journal_stream` (the `JOURNAL_STREAM` variable, `DEV:INODE`)
/// names this process's stderr.
fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some(stat) = nix::sys::stat::fstat(std::io::stderr()).ok() else { return false };
    names_stream(journal_stream, stat.st_dev, stat.st_ino)
}

/// Whether `journal_stream` is `dev:inode` of the given file.
fn names_stream(journal_stream: Option<&str>, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.and_then(|v| v.split_once(':')) else { return false };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

fn level_filter(level: LogLevel) -> log::LevelFilter {
    match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    }
}

fn syslog(facility: u8) -> Sink {
    let socket = UnixDatagram::unbound().ok().filter(|s| s.connect("/dev/log").is_ok());
    Sink::Syslog { socket, facility }
}

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("log file {}: {e}", path.display())))
}

/// The syslog severity of a level: what `<N>` prefixes carry.
fn severity(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.level.lock().is_ok_and(|l| metadata.level() <= *l)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Ok(mut sink) = self.sink.lock() else { return };
        match &mut *sink {
            Sink::Stderr { journal: false } => {
                let _ = writeln!(std::io::stderr(), "{}: {}", tag(record.level()), record.args());
            }
            Sink::Stderr { journal: true } => {
                let _ = writeln!(
                    std::io::stderr(),
                    "<{}>{}: {}",
                    severity(record.level()),
                    tag(record.level()),
                    record.args()
                );
            }
            Sink::Syslog { socket, facility } => {
                let line = format!(
                    "<{}>ctsyncd[{}]: {}",
                    u32::from(*facility) * 8 + u32::from(severity(record.level())),
                    std::process::id(),
                    record.args()
                );
                let sent = socket.as_ref().is_some_and(|s| s.send(line.as_bytes()).is_ok());
                if !sent {
                    let _ =
                        writeln!(std::io::stderr(), "{}: {}", tag(record.level()), record.args());
                }
            }
            Sink::File { file, .. } => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let _ = writeln!(file, "[{secs}] {}: {}", tag(record.level()), record.args());
            }
        }
    }

    fn flush(&self) {
        if let Ok(mut sink) = self.sink.lock()
            && let Sink::File { file: f, .. } = &mut *sink
        {
            let _ = f.flush();
        }
    }
}

fn tag(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error",
        log::Level::Warn => "warning",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

/// Lets a recurring condition log once per interval, with the number of
/// repeats it swallowed, so a storm never floods the log.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// A limiter that lets one line through per `interval`.
    pub fn new(interval: Duration) -> RateLimit {
        RateLimit { interval, last: None, suppressed: 0 }
    }

    /// `Some(repeats swallowed since the last line)` when a line may be
    /// logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_stderr_exactly() {
        assert!(names_stream(Some("64769:1234"), 64769, 1234));
        assert!(!names_stream(Some("64769:1235"), 64769, 1234));
        assert!(!names_stream(Some("64768:1234"), 64769, 1234));
        assert!(!names_stream(Some("garbage"), 64769, 1234));
        assert!(!names_stream(Some(""), 0, 0));
        assert!(!names_stream(None, 64769, 1234));
    }

    #[test]
    fn priorities_follow_sd_daemon() {
        // sd-daemon(3): <3> error, <4> warning, <6> info, <7> debug.
        assert_eq!(severity(log::Level::Error), 3);
        assert_eq!(severity(log::Level::Warn), 4);
        assert_eq!(severity(log::Level::Info), 6);
        assert_eq!(severity(log::Level::Debug), 7);
    }

    #[test]
    fn rate_limit_lets_one_line_per_interval_and_counts_the_rest() {
        let mut r = RateLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.allow(t0), Some(0));
        assert_eq!(r.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(r.allow(t0 + Duration::from_secs(11)), Some(2));
    }
}
