//! `ctsyncd`: the daemon, and with a running daemon, its command-line client.

use std::process::ExitCode;

use ctsync::cli::{self, Invocation};
use ctsync::{config, control, daemon};

fn main() -> ExitCode {
    match cli::parse() {
        Invocation::Daemon { config, daemonize, test_hooks } => {
            daemon::run(&config, daemonize, test_hooks)
        }
        Invocation::Client { config, request, json } => {
            let cfg = match config::load(&config) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("ctsyncd: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut stdout = std::io::stdout().lock();
            match control::call(&cfg.general.control_socket, &request, json, &mut stdout) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("ctsyncd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Invocation::PrintConfig { config } => match config::load(&config) {
            Ok(cfg) => {
                print!("{}", cfg.to_yaml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ctsyncd: {e}");
                ExitCode::from(2)
            }
        },
    }
}
