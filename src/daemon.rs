//! Daemon start-up: config, logging, lock file, sockets, then the reactor.

use std::path::Path;
use std::process::ExitCode;

use crate::logging;
use crate::reactor::{Daemon, Start};
use crate::systemd::LockFile;

/// Run the daemon with the config at `path`; `daemonize` forks into the
/// background once every socket is open, so start-up errors still reach
/// the terminal. `test_hooks` lets the control socket take the requests
/// that only test suites send.
pub fn run(path: &Path, daemonize: bool, test_hooks: bool) -> ExitCode {
    let cfg = match crate::config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("ctsyncd: {e}");
            return ExitCode::from(2);
        }
    };
    match crate::check::prepare_paths(&cfg) {
        Ok(()) => {}
        Err(crate::check::PathProblem::Config(e)) => {
            eprintln!("ctsyncd: {e}");
            return ExitCode::from(2);
        }
        Err(crate::check::PathProblem::Missing(e)) => {
            eprintln!("ctsyncd: {e}");
            return ExitCode::from(1);
        }
    }
    if let Err(e) = logging::init(&cfg.general.log) {
        eprintln!("ctsyncd: cannot open the log: {e}");
        // A directory that appeared or a disk that filled may let the next
        // start succeed: only a path the operator must change is final.
        return match e.kind() {
            std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
                ExitCode::from(2)
            }
            _ => ExitCode::from(1),
        };
    }
    for warning in &cfg.warnings {
        log::warn!("{warning}");
    }
    for exposure in crate::check::exposures(&cfg, path) {
        log::warn!("{exposure}");
    }
    if test_hooks {
        log::warn!(
            "--test-hooks: test-only control requests are honoured (they make the caches drift on purpose); never use this in production"
        );
    }
    let auth_keys = match crate::check::keys(&cfg) {
        Ok(keys) => keys,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let control_gid = match &cfg.general.control_group {
        None => None,
        Some(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid.as_raw()),
            Ok(None) => {
                log::error!("{}: general.control_group: no group {name:?}", path.display());
                return ExitCode::from(2);
            }
            Err(e) => {
                log::error!("{}: general.control_group {name:?}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    let lock = match LockFile::acquire(&cfg.general.lock_file) {
        Ok(lock) => lock,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let session_id = rand::random::<u32>();
    let initial_seq = rand::random::<u32>();
    let start = Start { auth_keys, control_gid, test_hooks, session_id, initial_seq };
    let mut daemon = match Daemon::open(cfg, start) {
        Ok(d) => d,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    if daemonize {
        // stderr goes to /dev/null: say so while it can be read, and keep
        // logging through syslog.
        logging::detach();
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
