//! Failover of a live TCP stream between two firewalls run by the real
//! keepalived, with ctsyncd syncing their conntrack tables (tests/lab/).
//!
//! Needs root, keepalived, nftables, conntrack and python3 (scripts/setup.sh
//! installs them); skipped when not root. Knobs, read from the environment:
//! `CTSYNC_LAB_CYCLES` (failover/fail-back rounds, default 10),
//! `CTSYNC_LAB_HANDOVER_ROUNDS` (rounds of the exact-handover runs, 4; the
//! closing note of the handover work gives runs of 50),
//! `CTSYNC_LAB_LINK_CYCLES` (rounds with links set down, default 3) and
//! `CTSYNC_LAB_FLOWS` (background flows in fw1's table, default 100000);
//! for the loaded direct-to-kernel runs `CTSYNC_LAB_LOADED_FLOWS` (200000),
//! `CTSYNC_LAB_BASELINE_CYCLES` (3) and `CTSYNC_LAB_LOADED_CYCLES` (10).
//! Run alone with its report:
//! `cargo nextest run --cargo-profile ci --test failover --no-capture`.

mod common;

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
        // fw2 notices the silence only after keepalived's master-down
        // interval, and TCP's doubling retransmission timer turns an
        // outage just past 3 s into a 6 s gap: on a loaded machine the
        // notify script starts late enough for that. What survival means
        // stays strict: no reset, every counter in order, none missing.
        ("LAB_MAX_GAP_MS", "7000".to_string()),
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

/// The handover lab of DESIGN.md's "every handover is exact": fw1 fails by
/// losing its links, fails back about `purge_timeout` (5 s) later, and the
/// next round follows as soon, so that the entries each node's `-t` set to
/// expire do so while the other commits; 100k background flows, the
/// strict ruleset with SNAT. After every switch, once the pair is quiet,
/// the lab compares full dumps: the new master's kernel holds every flow
/// the old master's held, its internal cache equals its kernel, the peer's
/// external cache equals that (labtool.py tables). `mode` adds the
/// variables of a wire format or of direct-to-kernel mode.
fn handover_stays_exact(mode: &[(&'static str, String)]) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rounds: usize = env_or("CTSYNC_LAB_HANDOVER_ROUNDS", "4").parse().unwrap();
    let mut vars = vec![
        ("LAB_EXPECT", "survive".to_string()),
        ("LAB_TRIGGER", "links".to_string()),
        ("LAB_CYCLES", rounds.to_string()),
        ("LAB_FLOWS", env_or("CTSYNC_LAB_FLOWS", "100000")),
        ("LAB_HOLD", "3".to_string()),
        ("LAB_PURGE_TIMEOUT", "5".to_string()),
        ("LAB_ADVERT_INT", "0.2".to_string()),
        ("LAB_CHECK", "1".to_string()),
        // As for the other link-failure runs: TCP's doubling retransmission
        // timer turns an outage just past 3 s into a 6 s gap.
        ("LAB_MAX_GAP_MS", "7000".to_string()),
    ];
    vars.extend(mode.iter().cloned());
    let (ok, output) = run_failover(&vars, true);
    assert!(ok, "the handover lost state or the stream:\n{}", tail(&output));
    assert!(output.contains("PASS: the TCP stream survived"), "no verdict:\n{}", tail(&output));
    let checked = output.lines().filter(|l| l.starts_with("[tables] ")).count();
    assert_eq!(checked, 2 * rounds, "not every switch was checked:\n{}", tail(&output));
}

#[test]
fn the_handover_stays_exact_with_expiries_racing_the_commit() {
    if !is_root() {
        eprintln!("skipped: the failover lab needs root");
        return;
    }
    handover_stays_exact(&[]);
}

/// The same with conntrackd.conf (conntrackd's wire format, reliable
/// netlink events, PurgeTimeout 5, CommitTimeout 180).
#[test]
fn the_handover_stays_exact_with_expiries_racing_the_commit_conntrackd_wire() {
    if !is_root() {
        eprintln!("skipped: the failover lab needs root");
        return;
    }
    handover_stays_exact(&[
        ("CTSYNCD", lab_dir().join("conntrackd-ref.sh").display().to_string()),
        ("REF_DAEMON", env!("CARGO_BIN_EXE_ctsyncd").to_string()),
    ]);
}

#[test]
fn the_handover_stays_exact_with_expiries_racing_the_commit_direct_to_kernel() {
    if !is_root() {
        eprintln!("skipped: the failover lab needs root");
        return;
    }
    handover_stays_exact(&[("LAB_DIRECT", "1".to_string())]);
}

/// keepalived adds the virtual IPs and sends its gratuitous ARPs before
/// notify_master commits. A server that pushes a UDP stream to the client
/// (a media or VPN server: always to the address and port it first saw)
/// reaches the new master first; with a lax input chain its datagrams make
/// a local entry on the stream's NAT mapping, and the client's next
/// datagram then gets a fresh mapping of its own. The commit must put the
/// synced mapping back (it did not: the stream stopped until the
/// fail-back, in 3 runs of 3).
#[test]
fn a_pushed_udp_stream_survives_datagrams_that_reach_the_vip_before_the_commit() {
    if !is_root() {
        eprintln!("skipped: the failover lab needs root");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let vars = [
        ("LAB_EXPECT", "survive".to_string()),
        ("LAB_TRIGGER", "links".to_string()),
        ("LAB_CYCLES", "3".to_string()),
        ("LAB_FLOWS", "0".to_string()),
        ("LAB_HOLD", "3".to_string()),
        ("LAB_ADVERT_INT", "0.2".to_string()),
        ("LAB_LAX_INPUT", "1".to_string()),
        ("LAB_UDP_SERVER", "push".to_string()),
        ("LAB_UDP_CLIENT_INTERVAL_MS", "250".to_string()),
        ("LAB_UDP_MAX_GAP_MS", "3000".to_string()),
        ("LAB_MAX_GAP_MS", "7000".to_string()),
    ];
    // Whether a pushed datagram beats the commit to the new master is up
    // to the scheduler: the stream must survive every run, and one of at
    // most three runs must show the race the commit resolved.
    let mut outputs = Vec::new();
    for _ in 0..3 {
        let (ok, output) = run_failover(&vars, true);
        assert!(ok, "the pushed UDP stream did not survive:\n{}", tail(&output));
        let raced =
            output.contains("entries in the way of synced flows' NAT mappings deleted first");
        outputs.push(output);
        if raced {
            return;
        }
    }
    panic!(
        "no commit met an entry in the way in {} runs: the lab did not race\n{}",
        outputs.len(),
        tail(outputs.last().unwrap())
    );
}

/// One `OUTAGE phase=P switch=S n=N median_ms=M max_ms=X` line of the
/// lab's report: the longest gap the TCP stream saw after each switch.
#[derive(Debug, Clone, Copy)]
struct Outage {
    n: usize,
    median_ms: f64,
    max_ms: f64,
}

fn outage(output: &str, phase: &str, switch: &str) -> Option<Outage> {
    let head = format!("OUTAGE phase={phase} switch={switch} ");
    let line = output.lines().find(|l| l.starts_with(&head))?;
    let field = |name: &str| {
        line.split_whitespace().find_map(|w| w.strip_prefix(name)).and_then(|v| v.parse().ok())
    };
    Some(Outage {
        n: field("n=")? as usize,
        median_ms: field("median_ms=")?,
        max_ms: field("max_ms=")?,
    })
}

/// Knobs of the loaded runs: 200k background flows made with ctload, the
/// stream's outage measured per switch first without them (baseline
/// phase), then with them. Before each failover fw2 forgets the streams and
/// relearns them from fw1 (LAB_FORGET), so that its state comes from sync
/// alone, not from having carried the stream a round earlier. Rounds are
/// shorter than in the tests above (2 s on each master, the client aborting
/// a stream stalled for 1.5 s) so that the three loaded runs (10 failovers
/// and 10 fail-backs each for the two direct-to-kernel ones) stay within
/// about six minutes together.
fn loaded_vars(direct: bool, tcp_loose: &str) -> Vec<(&'static str, String)> {
    vec![
        ("LAB_TRIGGER", "sigterm".to_string()),
        ("LAB_DIRECT", if direct { "1" } else { "0" }.to_string()),
        ("LAB_TCP_LOOSE", tcp_loose.to_string()),
        ("LAB_FLOWS", env_or("CTSYNC_LAB_LOADED_FLOWS", "200000")),
        ("LAB_CTLOAD", common::ctload().display().to_string()),
        ("LAB_HOLD", "2".to_string()),
        ("LAB_USER_TIMEOUT_MS", "1500".to_string()),
        ("LAB_GAP_LOG_MS", "20".to_string()),
        ("LAB_FORGET", "1".to_string()),
        // A switch under this load takes seconds of notify work; on a busy
        // machine more than the lab's usual 20 s limit.
        ("LAB_SWITCH_TIMEOUT_MS", "60000".to_string()),
    ]
}

/// Issue 10: in direct-to-kernel mode the backup's kernel holds the
/// stream's state before keepalived moves the addresses, so the stream
/// survives every switch, and the outage it sees with 200k background
/// flows is within 50 ms of the outage without them (medians over all
/// switches of each phase; the maxima are printed for the record).
fn direct_to_kernel_keeps_the_outage_of_an_empty_table(tcp_loose: &str) {
    if !is_root() {
        eprintln!("skipped: the failover lab needs root");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut vars = loaded_vars(true, tcp_loose);
    vars.push(("LAB_EXPECT", "survive".to_string()));
    vars.push(("LAB_BASELINE_CYCLES", env_or("CTSYNC_LAB_BASELINE_CYCLES", "3")));
    vars.push(("LAB_CYCLES", env_or("CTSYNC_LAB_LOADED_CYCLES", "10")));
    let (ok, output) = run_failover(&vars, true);
    assert!(ok, "the TCP stream did not survive (tcp_loose={tcp_loose}):\n{}", tail(&output));
    assert!(output.contains("PASS: the TCP stream survived"), "no verdict:\n{}", tail(&output));
    let base = outage(&output, "baseline", "all").expect("baseline outage line");
    let loaded = outage(&output, "background", "all").expect("loaded outage line");
    for (phase, o) in [("without background flows", base), ("with 200k background flows", loaded)] {
        println!(
            "outage tcp_loose={tcp_loose} direct-to-kernel {phase}: median {:.0} ms, max {:.0} ms over {} switches",
            o.median_ms, o.max_ms, o.n
        );
    }
    assert!(
        loaded.median_ms <= base.median_ms + 50.0,
        "tcp_loose={tcp_loose}: median outage {:.0} ms with the background flows, {:.0} ms without: more than 50 ms apart\n{}",
        loaded.median_ms,
        base.median_ms,
        tail(&output)
    );
}

#[test]
fn direct_to_kernel_survives_failovers_under_200k_flows_tcp_loose_1() {
    direct_to_kernel_keeps_the_outage_of_an_empty_table("1");
}

#[test]
fn direct_to_kernel_survives_failovers_under_200k_flows_tcp_loose_0() {
    direct_to_kernel_keeps_the_outage_of_an_empty_table("0");
}

/// Negative control of the test above: the default mode commits the
/// external cache only when keepalived has already moved the addresses.
/// The stream's flow changed state long before the 200k background flows,
/// so the most-recent-first commit writes it last, and its packets on the
/// new master find no state until then: the loaded failover loses at least
/// one segment (a TCP retransmission waits 200 ms or more), or the stream
/// breaks. Only that is asserted; the figures are printed. One loaded
/// round: in the default mode every switch under this load costs tens of
/// seconds of notify work (`-t` rewrites 200k timeouts, `-c` 200k flows).
#[test]
fn commit_at_failover_under_200k_flows_shows_the_gap() {
    if !is_root() {
        eprintln!("skipped: the failover lab needs root");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut vars = loaded_vars(false, "1");
    vars.push(("LAB_EXPECT", "measure".to_string()));
    vars.push(("LAB_BASELINE_CYCLES", "1".to_string()));
    vars.push(("LAB_CYCLES", "1".to_string()));
    // The lab's usual 3 s, so that a long outage is measured, not aborted.
    vars.push(("LAB_USER_TIMEOUT_MS", "3000".to_string()));
    vars.push(("LAB_HOLD", "4".to_string()));
    let (ok, output) = run_failover(&vars, true);
    assert!(ok, "the control run failed:\n{}", tail(&output));
    let broke = output.contains("MEASURED: the TCP stream broke");
    let base = outage(&output, "baseline", "failover").expect("baseline outage line");
    let loaded = outage(&output, "background", "failover");
    println!(
        "outage tcp_loose=1 commit at failover without background flows: median {:.0} ms, max {:.0} ms",
        base.median_ms, base.max_ms
    );
    match loaded {
        Some(o) => println!(
            "outage tcp_loose=1 commit at failover with 200k background flows: median {:.0} ms, max {:.0} ms{}",
            o.median_ms,
            o.max_ms,
            if broke { " (the stream broke)" } else { "" }
        ),
        None => println!("commit at failover with 200k background flows: the stream broke"),
    }
    assert!(
        broke || loaded.is_some_and(|o| o.max_ms >= 200.0),
        "committing at failover lost nothing under 200k flows: the control shows no gap\n{}",
        tail(&output)
    );
}

/// Issue 10: a ctsyncd that has just started (empty external cache) must
/// not take the virtual IPs from a ready master, though its keepalived has
/// the higher priority, and must take them once its resync is complete
/// (general.ready_file tracked by keepalived's track_file, see
/// tests/lab/readiness.sh).
#[test]
fn a_fresh_daemon_takes_the_vips_only_once_it_holds_the_peer_table() {
    if !is_root() {
        eprintln!("skipped: the failover lab needs root");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (ok, text) = run_lab_script("readiness.sh", &[]);
    assert!(ok, "readiness scenario failed:\n{}", tail(&text));
    assert!(text.contains("PASS: a fresh ctsyncd waited"), "no verdict:\n{}", tail(&text));
}

/// Runs a script of tests/lab/ (readiness.sh, ftp.sh) with this build's
/// ctsyncd and `vars`; its success and output (also printed).
fn run_lab_script(script: &str, vars: &[(&str, &str)]) -> (bool, String) {
    let guard = LabGuard::new();
    let out = Command::new(lab_dir().join(script))
        .env("LAB_ID", &guard.id)
        .env("CTSYNCD", env!("CARGO_BIN_EXE_ctsyncd"))
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run tests/lab/{script}: {e}"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    (out.status.success(), text)
}

/// DESIGN.md principle 8 with keepalived (docs/keepalived.md): with the
/// recommended vrrp_script (`ctsyncd --check-ready`, weight -100), a backup
/// whose ctsyncd was killed with SIGKILL, or stopped cleanly, does not take
/// the VIPs when the master's priority falls to 50 (its own ctsyncd
/// restarted); once its daemon runs and is ready again, it takes over when
/// the master's keepalived stops.
#[test]
fn readiness_a_backup_whose_daemon_is_dead_never_takes_the_vips() {
    if !is_root() {
        eprintln!("skipped: the failover lab needs root");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (ok, text) =
        run_lab_script("readiness.sh", &[("LAB_SCENARIO", "dead-backup"), ("LAB_READY", "script")]);
    assert!(ok, "dead-backup scenario failed:\n{}", tail(&text));
    assert!(text.contains("PASS: a backup whose ctsyncd was not running never"), "{}", tail(&text));
}

/// The negative control of the test above, and the issue it fixes: with
/// the deprecated track_file, the same killed backup reads as ready (its
/// file keeps 0) and takes the VIPs. If this fails, the scenario above
/// proves nothing.
#[test]
fn readiness_negative_control_the_ready_file_lets_a_killed_backup_win() {
    if !is_root() {
        eprintln!("skipped: the failover lab needs root");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (ok, text) = run_lab_script(
        "readiness.sh",
        &[
            ("LAB_SCENARIO", "dead-backup"),
            ("LAB_READY", "1"),
            ("LAB_DEAD_STOPS", "kill"),
            ("LAB_EXPECT", "takeover"),
        ],
    );
    assert!(ok, "negative control failed:\n{}", tail(&text));
    assert!(text.contains("PASS (negative control)"), "{}", tail(&text));
}

fn have_vsftpd() -> bool {
    let found = Command::new("vsftpd").arg("-v").stdin(Stdio::null()).output().is_ok();
    if !found {
        eprintln!("skipped: vsftpd is not installed (scripts/setup.sh installs it)");
    }
    found
}

/// Issue 11: after keepalived moves the VIPs, a passive and an active FTP
/// data connection pass fw2 as `related`: fw2 holds the expectations and
/// the control connection's NAT sequence adjustment (which the kernel sets
/// without an event, so the daemon reads the master back).
#[test]
fn ftp_data_connections_pass_the_new_master_after_a_keepalived_failover() {
    if !is_root() || !have_vsftpd() {
        eprintln!("skipped: the FTP lab needs root and vsftpd");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (ok, text) =
        run_lab_script("ftp.sh", &[("LAB_EXPECTATIONS", "1"), ("LAB_EXPECT", "survive")]);
    assert!(ok, "FTP through the failover failed:\n{}", tail(&text));
    assert!(text.contains("FTP passive after failover: OK 100000"), "{}", tail(&text));
    assert!(text.contains("FTP active after failover: OK 100000"), "{}", tail(&text));
}

/// Negative control: the same lab without expectation sync; both data
/// connections must fail, or the ruleset proves nothing.
#[test]
fn ftp_data_connections_fail_after_a_keepalived_failover_without_expectation_sync() {
    if !is_root() || !have_vsftpd() {
        eprintln!("skipped: the FTP lab needs root and vsftpd");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (ok, text) =
        run_lab_script("ftp.sh", &[("LAB_EXPECTATIONS", "0"), ("LAB_EXPECT", "break")]);
    assert!(ok, "the negative control failed:\n{}", tail(&text));
    assert!(text.contains("FTP passive after failover: FAIL"), "{}", tail(&text));
    assert!(text.contains("FTP active after failover: FAIL"), "{}", tail(&text));
}
