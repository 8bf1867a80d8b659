//! Failover of a live TCP stream between two firewalls run by the real
//! keepalived, with ctsyncd syncing their conntrack tables (tests/lab/).
//!
//! Needs root, keepalived, nftables, conntrack and python3 (scripts/setup.sh
//! installs them); skipped when not root. Knobs, read from the environment:
//! `CTSYNC_LAB_CYCLES` (failover/fail-back rounds, default 10),
//! `CTSYNC_LAB_LINK_CYCLES` (rounds with links set down, default 3) and
//! `CTSYNC_LAB_FLOWS` (background flows in fw1's table, default 100000).
//! Run alone with its report: `cargo test --test failover -- --nocapture`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The two scenarios share the machine's two cores and measure gaps: they
/// run one after the other.
static SERIAL: Mutex<()> = Mutex::new(());
static RUN: AtomicUsize = AtomicUsize::new(0);

/// A hard limit per scenario; the script's own waits are much shorter.
const RUN_LIMIT: Duration = Duration::from_secs(480);

fn lab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab")
}

/// Removes everything a lab run made (namespaces, its processes, its work
/// directory), whether the run passed, failed, panicked or was killed.
struct LabGuard {
    id: String,
    log: PathBuf,
}

impl LabGuard {
    fn new() -> Self {
        let id = format!("t{}-{}", std::process::id(), RUN.fetch_add(1, Ordering::Relaxed));
        let log = std::env::temp_dir().join(format!("ctsync-lab-{id}.log"));
        LabGuard { id, log }
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let status = Command::new(lab_dir().join("lab.sh"))
            .args(["down", &self.id])
            .stdout(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("lab teardown of {} failed: {status:?}", self.id);
        }
        let _ = fs::remove_file(&self.log);
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Runs tests/lab/failover.sh with `vars`; returns whether it exited 0 and
/// its output (also printed, so the figures show with `--nocapture`).
fn run_failover(vars: &[(&str, String)], with_ctsyncd: bool) -> (bool, String) {
    let guard = LabGuard::new();
    let log = fs::File::create(&guard.log).expect("create the lab log file");
    let mut cmd = Command::new(lab_dir().join("failover.sh"));
    cmd.env("LAB_ID", &guard.id)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the lab log handle"))
        .stderr(log);
    if with_ctsyncd {
        if !vars.iter().any(|(k, _)| *k == "CTSYNCD") {
            cmd.env("CTSYNCD", env!("CARGO_BIN_EXE_ctsyncd"));
        }
    } else {
        cmd.env_remove("CTSYNCD");
    }
    let mut child = cmd.spawn().expect("start tests/lab/failover.sh");
    let start = Instant::now();
    let status = loop {
        match child.try_wait().expect("wait for failover.sh") {
            Some(status) => break Some(status),
            None if start.elapsed() > RUN_LIMIT => {
                // SIGKILL skips the script's trap; the guard cleans up.
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => sleep(Duration::from_millis(200)),
        }
    };
    let output = fs::read_to_string(&guard.log).unwrap_or_default();
    println!("{output}");
    match status {
        Some(s) => (s.success(), output),
        None => (false, format!("{output}\nfailover.sh killed after {RUN_LIMIT:?}")),
    }
}

fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Every failover and fail-back keeps the TCP stream: no reset, no EOF,
/// every counter in order, no stall long enough to hit the client's 3 s
/// TCP user timeout.
#[test]
fn tcp_stream_survives_failovers_with_ctsyncd() {
    if !is_root() {
        eprintln!("skipped: the failover lab needs root");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let vars = [
        ("LAB_EXPECT", "survive".to_string()),
        ("LAB_TRIGGER", "sigterm".to_string()),
        ("LAB_CYCLES", env_or("CTSYNC_LAB_CYCLES", "10")),
        ("LAB_FLOWS", env_or("CTSYNC_LAB_FLOWS", "100000")),
    ];
    let (ok, output) = run_failover(&vars, true);
    assert!(ok, "the TCP stream did not survive the failovers:\n{}", tail(&output));
    assert!(output.contains("PASS: the TCP stream survived"), "no verdict:\n{}", tail(&output));
}

/// A rolling upgrade half done: fw1 runs ctsyncd and fw2 the real
/// conntrackd 1.4.7, both started from the same kind of conntrackd.conf,
/// speaking conntrackd's wire format to each other.
#[test]
fn tcp_stream_survives_failovers_with_a_mixed_pair() {
    if !is_root() {
        eprintln!("skipped: the failover lab needs root");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let vars = [
        ("LAB_EXPECT", "survive".to_string()),
        ("LAB_TRIGGER", "sigterm".to_string()),
        ("LAB_CYCLES", env_or("CTSYNC_LAB_MIXED_CYCLES", "3")),
        ("LAB_FLOWS", env_or("CTSYNC_LAB_MIXED_FLOWS", "20000")),
        ("CTSYNCD", lab_dir().join("mixed.sh").display().to_string()),
        ("MIXED_CTSYNCD", env!("CARGO_BIN_EXE_ctsyncd").to_string()),
    ];
    let (ok, output) = run_failover(&vars, true);
    assert!(ok, "the TCP stream did not survive the mixed pair's failovers:\n{}", tail(&output));
    assert!(output.contains("PASS: the TCP stream survived"), "no verdict:\n{}", tail(&output));
    // Both daemons really ran: ctsyncd on fw1, conntrackd on fw2.
    assert!(output.contains("mixed.sh"), "{}", tail(&output));
}

/// The same with fw1's LAN and WAN links set down instead of a clean
/// keepalived stop: fw2 takes over only when fw1's adverts stop coming.
#[test]
fn tcp_stream_survives_link_failures_with_ctsyncd() {
    if !is_root() {
        eprintln!("skipped: the failover lab needs root");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let vars = [
        ("LAB_EXPECT", "survive".to_string()),
        ("LAB_TRIGGER", "links".to_string()),
        ("LAB_CYCLES", env_or("CTSYNC_LAB_LINK_CYCLES", "3")),
        ("LAB_FLOWS", env_or("CTSYNC_LAB_FLOWS", "100000")),
    ];
    let (ok, output) = run_failover(&vars, true);
    assert!(ok, "the TCP stream did not survive the link failures:\n{}", tail(&output));
    assert!(output.contains("PASS: the TCP stream survived"), "no verdict:\n{}", tail(&output));
}

/// Negative control: the same failover without any state sync must break
/// the stream; if it does not, the lab's ruleset is too loose to prove
/// anything about ctsyncd.
#[test]
fn tcp_stream_breaks_on_failover_without_sync() {
    if !is_root() {
        eprintln!("skipped: the failover lab needs root");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let vars = [
        ("LAB_EXPECT", "break".to_string()),
        ("LAB_TRIGGER", "sigterm".to_string()),
        ("LAB_CYCLES", "1".to_string()),
        // Enough background flows for a realistic table; the count does
        // not matter without sync.
        ("LAB_FLOWS", "10000".to_string()),
    ];
    let (ok, output) = run_failover(&vars, false);
    assert!(ok, "the negative control failed:\n{}", tail(&output));
    assert!(output.contains("tcp stream broken"), "no break reported:\n{}", tail(&output));
}
