//! Daemon start-up: config, logging, lock file, sockets, then the reactor.

use std::path::Path;
use std::process::ExitCode;

use crate::channel::LinkSpec;
use crate::config::Config;
use crate::filter::Filter;
use crate::ftfw::FtfwConfig;
use crate::logging;
use crate::netlink::EventConfig;
use crate::reactor::{Daemon, DaemonConfig};
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
    let mut daemon = match Daemon::open(
        DaemonConfig { test_hooks, ..daemon_config(&cfg, auth_keys, control_gid) },
        session_id,
        initial_seq,
    ) {
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

/// Translate the validated config into what the reactor needs.
fn daemon_config(
    cfg: &Config,
    auth_keys: Vec<crate::wire::native::AuthKey>,
    control_gid: Option<u32>,
) -> DaemonConfig {
    let sync = &cfg.sync;
    DaemonConfig {
        control_socket: cfg.general.control_socket.clone(),
        control_gid,
        cache_limit: cfg.general.cache_limit.get(),
        events: EventConfig::from_config(cfg),
        rcvbuf_max: cfg.general.netlink.rcvbuf_max.get(),
        overrun_resync: cfg.general.netlink.overrun_resync,
        ftfw: FtfwConfig::from_sync(sync, auth_keys),
        links: sync.channels.iter().map(LinkSpec::from_config).collect(),
        commit_timeout: sync.commit_timeout.map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32),
        purge_timeout: sync.purge_timeout.as_secs().min(u64::from(u32::MAX)) as u32,
        be_liberal: !sync.tcp_window_tracking,
        direct_to_kernel: sync.direct_to_kernel,
        defer: sync.defer,
        filter: Filter::from_config(cfg),
        expectations: cfg.sync.expectations.clone(),
        ready_file: cfg.general.ready_file.clone(),
        key_file: cfg.sync.auth.key_file().map(Path::to_path_buf),
        metrics_listen: cfg.general.metrics_listen,
        test_hooks: false,
    }
}
