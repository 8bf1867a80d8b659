//! What keepalived and systemd are told: the ready file, `--check-ready`
//! (also against a stopped daemon) and the unit's `STATUS=` line.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::wait_for;
use crate::harness::{BIN, Pair, tcp_flow};

#[test]
fn the_ready_file_tells_keepalived_when_the_peer_table_is_complete() {
    let dir = std::env::temp_dir().join(format!("ctsync-ready-t-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ready");
    // Both daemons write the same path here; fw2 is the one checked, after
    // fw1 stops.
    let mut pair = Pair::with_config("rdy", &format!("  ready_file: {}\n", file.display()));
    pair.commit_flows(0, (0..50).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));
    pair.stop(0);
    let stats: serde_json::Value =
        serde_json::from_str(&pair.cli_ok(1, &["-s", "--json"])).unwrap();
    assert_eq!(stats["ready"], true, "{stats:#}");
    // fw1's clean stop wrote 1; fw2 only rewrites on a change, so restart
    // fw2 alone: with no peer it must say "not ready".
    pair.stop(1);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "1\n");
    pair.start(1);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "1\n");
    pair.start(0);
    wait_for(Duration::from_secs(10), || std::fs::read_to_string(&file).unwrap() == "0\n")
        .expect("ready file never turned 0 after the peer came back");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ctsyncd --check-ready` (docs/keepalived.md, DESIGN.md principle 8 "Fail
/// closed"): 0 only while a running daemon holds the peer's complete
/// table; non-zero before it arrived and once the daemon is killed, where
/// the deprecated ready file still says ready.
#[test]
fn check_ready_succeeds_only_while_a_running_daemon_holds_the_peer_table() {
    let dir = std::env::temp_dir().join(format!("ctsync-chkrdy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ready");
    // Both daemons write the same path: it is only read once both are dead.
    let mut pair = Pair::with_config("chkrdy", &format!("  ready_file: {}\n", file.display()));
    let check = |pair: &Pair, i: usize| {
        let out = pair.cli(i, &["--check-ready"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(text.lines().count(), 1, "fw{}: not one line: {text:?}", i + 1);
        (out.status.success(), text)
    };
    pair.stop(0);
    pair.stop(1);

    // fw2 with its peer stopped from the start: the table cannot arrive.
    pair.start(1);
    std::thread::sleep(Duration::from_secs(1));
    let (ok, text) = check(&pair, 1);
    assert!(!ok, "ready with no peer: {text}");
    assert!(text.starts_with("not ready: the peer's complete table has not arrived"), "{text}");

    // fw1 starts and bulk-sends its table: fw2 becomes ready.
    pair.commit_flows(0, (0..20).map(tcp_flow).collect());
    pair.start(0);
    wait_for(Duration::from_secs(10), || check(&pair, 1).0).unwrap_or_else(|| {
        panic!("fw2 never became ready: {}\n{}", check(&pair, 1).1, pair.log(1))
    });
    let (_, text) = check(&pair, 1);
    assert!(text.starts_with("ready: this node holds the peer's complete table"), "{text}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "0\n");
    let warnings = pair.log(1).matches("general.ready_file (").count();
    assert_eq!(warnings, 1, "the deprecation is said once at start:\n{}", pair.log(1));

    // SIGKILL: nothing answers, the check fails and says why.
    pair.kill(1);
    let (ok, text) = check(&pair, 1);
    assert!(!ok, "a killed daemon reads as ready: {text}");
    assert!(text.contains("is ctsyncd running?"), "{text}");
    // The fail-open the check replaces: with both daemons killed, the
    // ready file still says ready.
    pair.kill(0);
    assert!(!check(&pair, 0).0);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "0\n", "the ready file changed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A daemon that is stopped (SIGSTOP) or stuck answers nothing, yet its
/// control socket still accepts connections: `--check-ready` must give up
/// on its own, within its timeout, and read as not ready (DESIGN.md
/// principle 8 "Fail closed"), not wait for keepalived's script timeout.
/// Once the daemon runs again, the check answers as before.
#[test]
fn check_ready_fails_within_its_timeout_while_the_daemon_is_stopped() {
    let pair = Pair::new("rdystop");
    wait_for(Duration::from_secs(10), || pair.cli(1, &["--check-ready"]).status.success())
        .unwrap_or_else(|| panic!("fw2 never became ready: {}", pair.log(1)));
    let pid = pair.daemons[1].as_ref().unwrap().id();
    // Declared after the pair, so dropped first: a stopped daemon would
    // never act on the pair's SIGTERM.
    let stopped = Stopped::stop(pid);
    let socket = pair.dir.join("fw2.sock");

    for (args, bound) in
        [(&["--check-ready"][..], "2 s"), (&["--check-ready", "--timeout", "0.5"], "0.5 s")]
    {
        let started = Instant::now();
        let out = cli_within(&pair, 1, args, Duration::from_secs(10));
        let took = started.elapsed();
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{args:?} against a stopped daemon: {text:?}");
        assert_eq!(text.lines().count(), 1, "{args:?}: not one line: {text:?}");
        assert!(
            text.contains(&format!(
                "the daemon at {} did not answer within {bound}",
                socket.display()
            )),
            "{args:?}: {text}"
        );
        assert!(text.trim_end().ends_with("not ready"), "{args:?}: {text}");
        assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
    }

    drop(stopped);
    let out = pair.cli(1, &["--check-ready"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "not ready once running again: {text}{}", pair.log(1));
    assert!(text.starts_with("ready: this node holds the peer's complete table"), "{text}");
}

/// A process stopped with SIGSTOP, continued with SIGCONT when dropped.
struct Stopped(nix::unistd::Pid);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// Run the CLI on fw`i`; if it has not exited within `limit`, kill it and
/// fail, so that a client that hangs fails the test instead of hanging it.
fn cli_within(pair: &Pair, i: usize, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new("ip")
        .args(["netns", "exec", pair.fw[i].name(), BIN, "-C", &pair.config(i)])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ctsyncd {args:?} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The `STATUS=` line systemd shows follows the peer: in sync with it, the
/// flow counts, and when it went down; it is sent when it changes, not per
/// event. The test is the daemon's `NOTIFY_SOCKET`.
#[test]
fn the_systemd_status_follows_the_peer() {
    let mut pair =
        Pair::with_options("status", "", "  alive_interval: 200ms\n  peer_timeout: 1s\n", &[]);
    let socket_path = pair.dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    pair.stop(1);
    pair.start_with_env(1, &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]);

    let mut statuses: Vec<String> = Vec::new();
    let read_until = |statuses: &mut Vec<String>, want: &dyn Fn(&str) -> bool, secs: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        while std::time::Instant::now() < deadline {
            if let Ok(n) = notify.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                for line in text.lines().filter_map(|l| l.strip_prefix("STATUS=")) {
                    statuses.push(line.to_owned());
                }
                if statuses.last().is_some_and(|s| want(s)) {
                    return true;
                }
            }
        }
        false
    };
    assert!(
        read_until(
            &mut statuses,
            &|s| s.starts_with("in sync with 10.255.0.1, 0 flows here, 0 from the peer"),
            10
        ),
        "{statuses:#?}\n{}",
        pair.log(1)
    );

    for i in 1..=50 {
        pair.fw[0].exec(&format!(
            "conntrack -I -p udp -s 10.3.0.{i} -d 10.3.1.1 --sport 4000 --dport 4001 -t 100"
        ));
    }
    assert!(
        read_until(
            &mut statuses,
            &|s| s == "in sync with 10.255.0.1, 0 flows here, 50 from the peer",
            10
        ),
        "{statuses:#?}"
    );
    // 50 events, but at most one line a second while they came in.
    let during = statuses.iter().filter(|s| s.contains("from the peer")).count();
    assert!(during < 20, "one STATUS per event? {statuses:#?}");
    // Nothing changes, nothing is sent.
    let before = statuses.len();
    assert!(!read_until(&mut statuses, &|_| true, 3), "{statuses:#?}");
    assert_eq!(statuses.len(), before);

    pair.stop(0);
    assert!(
        read_until(&mut statuses, &|s| s.starts_with("peer 10.255.0.1 down since 20"), 10),
        "{statuses:#?}"
    );
    assert!(
        statuses.last().unwrap().ends_with(", 0 flows here, 50 from the peer"),
        "{statuses:#?}"
    );
}
