//! Operator logs: one line per event that matters, to stderr (what systemd's
//! journal reads), syslog (`/dev/log`) or a file, with a level.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    /// syslog through `/dev/log` with this facility number (daemon = 3).
    Syslog {
        facility: u8,
    },
    File(PathBuf),
}

enum Sink {
    Stderr,
    Syslog { socket: Option<UnixDatagram>, facility: u8 },
    File(File),
}

struct Logger {
    level: log::LevelFilter,
    sink: Mutex<Sink>,
}

/// Install the process logger. Safe to call more than once (later calls only
/// change the level).
pub fn init(target: &LogTarget, level: log::LevelFilter) -> std::io::Result<()> {
    let sink = match target {
        LogTarget::Stderr => Sink::Stderr,
        LogTarget::Syslog { facility } => {
            let socket = UnixDatagram::unbound().ok().filter(|s| s.connect("/dev/log").is_ok());
            Sink::Syslog { socket, facility: *facility }
        }
        LogTarget::File(path) => {
            Sink::File(OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("log file {}: {e}", path.display()))
            })?)
        }
    };
    let logger = Box::new(Logger { level, sink: Mutex::new(sink) });
    // A second call keeps the first sink; only the level changes.
    let _ = log::set_boxed_logger(logger);
    log::set_max_level(level);
    Ok(())
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Ok(mut sink) = self.sink.lock() else { return };
        match &mut *sink {
            Sink::Stderr => {
                let _ = writeln!(std::io::stderr(), "{}: {}", tag(record.level()), record.args());
            }
            Sink::Syslog { socket, facility } => {
                let severity = match record.level() {
                    log::Level::Error => 3,
                    log::Level::Warn => 4,
                    log::Level::Info => 6,
                    log::Level::Debug | log::Level::Trace => 7,
                };
                let line = format!(
                    "<{}>ctsyncd[{}]: {}",
                    u32::from(*facility) * 8 + severity,
                    std::process::id(),
                    record.args()
                );
                let sent = socket.as_ref().is_some_and(|s| s.send(line.as_bytes()).is_ok());
                if !sent {
                    let _ =
                        writeln!(std::io::stderr(), "{}: {}", tag(record.level()), record.args());
                }
            }
            Sink::File(file) => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let _ = writeln!(file, "[{secs}] {}: {}", tag(record.level()), record.args());
            }
        }
    }

    fn flush(&self) {
        if let Ok(mut sink) = self.sink.lock()
            && let Sink::File(f) = &mut *sink
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
    fn rate_limit_lets_one_line_per_interval_and_counts_the_rest() {
        let mut r = RateLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.allow(t0), Some(0));
        assert_eq!(r.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(r.allow(t0 + Duration::from_secs(11)), Some(2));
    }
}
