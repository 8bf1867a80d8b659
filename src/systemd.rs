//! systemd integration: readiness, watchdog pings, status line and the lock
//! file that keeps one daemon per configuration.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sd_notify::NotifyState;

/// Tell systemd we are ready (no-op outside systemd).
pub fn notify_ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Update the status line `systemctl status` shows.
pub fn notify_status(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(status)]);
}

/// Tell systemd a reload has begun (`RELOADING=1` with the
/// `MONOTONIC_USEC=` that systemd 253 and later require beside it).
pub fn notify_reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    let _ = sd_notify::notify(&states);
}

/// Tell systemd a reload is over, whether it changed anything or not: the
/// daemon runs on.
pub fn notify_reloaded() {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}

/// Tell systemd we are stopping.
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Ping the watchdog.
pub fn notify_watchdog() {
    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
}

/// The interval at which to ping the watchdog: half of `WatchdogSec`, or
/// `None` when systemd does not watch us.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// A lock file holding our pid, removed when dropped. Unlike conntrackd's
/// `O_EXCL` file, a lock left by a crashed daemon does not block the next
/// start: the file is locked with `flock`, which dies with its holder.
pub struct LockFile {
    path: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

impl LockFile {
    /// Take the lock or explain who holds it.
    pub fn acquire(path: &Path) -> io::Result<LockFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(path)
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot open lock file {}: {e}", path.display()))
            })?;
        let locked =
            nix::fcntl::Flock::lock(file.try_clone()?, nix::fcntl::FlockArg::LockExclusiveNonblock);
        let lock = match locked {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let pid = std::fs::read_to_string(path).unwrap_or_default();
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "lock file {} is held by a running ctsyncd (pid {}): stop it first (ctsyncd -k)",
                        path.display(),
                        pid.trim()
                    ),
                ));
            }
            Err((_, e)) => {
                return Err(io::Error::other(format!("cannot lock {}: {e}", path.display())));
            }
        };
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        Ok(LockFile { path: path.to_owned(), _lock: lock })
    }
}

impl LockFile {
    /// Rewrite the pid after forking into the background.
    pub fn write_pid(&self) -> io::Result<()> {
        let mut file: &File = &self._lock;
        file.set_len(0)?;
        use std::io::Seek;
        file.seek(io::SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_and_a_dropped_one_is_released() {
        let dir = std::env::temp_dir().join(format!("ctsync-lock-{}", std::process::id()));
        let path = dir.join("ctsyncd.lock");
        let first = LockFile::acquire(&path).unwrap();
        let err = LockFile::acquire(&path).err().expect("second lock must fail");
        assert!(err.to_string().contains("held by a running ctsyncd"), "{err}");
        drop(first);
        assert!(!path.exists());
        let again = LockFile::acquire(&path).unwrap();
        drop(again);
        let _ = std::fs::remove_dir_all(dir);
    }
}
