//! `ctsyncd`: the daemon, and with a running daemon, its command-line client.

use std::process::ExitCode;

use ctsync::cli::{self, Invocation};
use ctsync::{check, config, control, daemon};

fn main() -> ExitCode {
    match cli::parse() {
        Invocation::Daemon { config, daemonize, test_hooks } => {
            daemon::run(&config, daemonize, test_hooks)
        }
        Invocation::Client { config, request, json, timeout } => {
            let cfg = match config::load(&config) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("ctsyncd: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut stdout = std::io::stdout().lock();
            let socket = &cfg.general.control_socket;
            match control::call(socket, &request, json, timeout, &mut stdout) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                // Exit 1 as for "not ready": keepalived and monitoring must
                // read a stuck daemon as not ready.
                Err(e @ control::ClientError::Timeout { .. }) => {
                    eprintln!("ctsyncd --check-ready: {e}: not ready");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("ctsyncd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Invocation::PrintConfig { config } => match loaded_with_keys(&config) {
            Ok((cfg, _)) => {
                print!("{}", cfg.to_yaml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Invocation::Check { config } => match checked(&config) {
            Ok((cfg, keys)) => {
                for warning in &cfg.warnings {
                    eprintln!("ctsyncd: warning: {warning}");
                }
                print!("{}", check::summary(&cfg, &keys));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Invocation::GenKey { file, force } => match check::gen_key(&file, force) {
            Ok(next) => {
                println!("{next}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ctsyncd: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Load the configuration and its key file (not the interfaces and
/// addresses, so that a file can be printed on another host); on a
/// problem, print it and give exit status 2.
fn loaded_with_keys(
    path: &std::path::Path,
) -> Result<(config::Config, Vec<ctsync::wire::native::AuthKey>), ExitCode> {
    let fail = |e: config::ConfigError| {
        eprintln!("ctsyncd: {e}");
        ExitCode::from(2)
    };
    let cfg = config::load(path).map_err(fail)?;
    let keys = check::keys(&cfg).map_err(fail)?;
    Ok((cfg, keys))
}

/// Load the configuration and check what it names; on a problem, print one
/// line per problem and give exit status 2.
fn checked(
    path: &std::path::Path,
) -> Result<(config::Config, Vec<ctsync::wire::native::AuthKey>), ExitCode> {
    let cfg = config::load(path).map_err(|e| {
        eprintln!("ctsyncd: {e}");
        ExitCode::from(2)
    })?;
    let problems = check::environment(&cfg);
    if !problems.is_empty() {
        for e in &problems {
            eprintln!("ctsyncd: {e}");
        }
        return Err(ExitCode::from(2));
    }
    let keys = check::keys(&cfg).map_err(|e| {
        eprintln!("ctsyncd: {e}");
        ExitCode::from(2)
    })?;
    Ok((cfg, keys))
}
