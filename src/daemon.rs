//! Daemon start-up: config, logging, lock file, sockets, then the reactor.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::logging;
use crate::reactor::{Daemon, DaemonConfig};
use crate::systemd::LockFile;

/// Run the daemon with the config at `path`; `daemonize` forks into the
/// background once every socket is open, so start-up errors still reach
/// the terminal.
pub fn run(path: &Path, daemonize: bool) -> ExitCode {
    let cfg = match crate::config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("ctsyncd: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = logging::init(&cfg.log_target(), cfg.log_level()) {
        eprintln!("ctsyncd: cannot open the log: {e}");
        return ExitCode::from(2);
    }
    for warning in cfg.warnings() {
        log::warn!("{}: {warning}", path.display());
    }
    let lock = match LockFile::acquire(&cfg.general.lock_file) {
        Ok(lock) => lock,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let session_id = rand::random::<u32>();
    let initial_seq = rand::random::<u32>();
    let mut daemon = match Daemon::open(daemon_config(&cfg), session_id, initial_seq) {
        Ok(d) => d,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    if daemonize {
        if let Err(e) = nix::unistd::daemon(false, false) {
            log::error!("cannot go to the background: {e}");
            return ExitCode::from(1);
        }
        if let Err(e) = lock.write_pid() {
            log::warn!("cannot write the pid to the lock file: {e}");
        }
    }
    match daemon.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("event loop failed: {e}");
            ExitCode::from(1)
        }
    }
}

fn daemon_config(cfg: &Config) -> DaemonConfig {
    cfg.daemon_config()
}
