//! The operator's side: CLI flags, errors without a daemon or with a bad
//! config, `-s` sections, and who gets into the control socket.

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use ctsync::netlink::Kernel;

use crate::common::{in_netns, run_ok as run, wait_for};
use crate::harness::{BIN, Pair, tcp_flow};

#[test]
fn operator_flags_do_what_they_say() {
    let pair = Pair::new("ops");
    pair.commit_flows(0, (0..20).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));

    // -f external empties fw2's external cache; -n asks fw1 for everything.
    pair.cli_ok(1, &["-f", "external"]);
    assert!(pair.cache_lines(1, "-e").is_empty());
    pair.cli_ok(1, &["-n"]);
    pair.converge(0, Duration::from_secs(10));

    // -f internal then -B: fw1 sends nothing it does not hold...
    pair.cli_ok(0, &["-f", "i"]);
    assert!(pair.cache_lines(0, "-i").is_empty());
    // ... -R refills the internal cache from the kernel, -B sends it.
    pair.cli_ok(0, &["-R"]);
    assert_eq!(pair.cache_lines(0, "-i").len(), 20);
    pair.cli_ok(1, &["-f", "external"]);
    pair.cli_ok(0, &["-B"]);
    pair.converge(0, Duration::from_secs(10));

    // -c then -t: committed flows get the purge timeout (60 s).
    pair.cli_ok(1, &["-c"]);
    pair.cli_ok(1, &["-t"]);
    let timeouts: Vec<u32> = in_netns(pair.fw[1].name(), || {
        Kernel::open().unwrap().dump().unwrap().iter().map(|f| f.timeout).collect()
    });
    assert_eq!(timeouts.len(), 20);
    assert!(timeouts.iter().all(|&t| t <= 60), "{timeouts:?}");

    // -F flushes fw2's kernel table.
    pair.cli_ok(1, &["-F"]);
    assert!(pair.kernel_lines(1).is_empty());

    // -s --json is machine-readable and counts what happened.
    let stats: serde_json::Value =
        serde_json::from_str(&pair.cli_ok(1, &["-s", "--json"])).unwrap();
    assert_eq!(stats["external"]["active"], 20, "{stats:#}");

    // -k stops the daemon; the CLI then says so and fails.
    pair.cli_ok(1, &["-k"]);
    wait_for(Duration::from_secs(5), || !pair.cli(1, &["-s"]).status.success())
        .expect("daemon still answers");
}

/// `-B` before any peer answered queues nothing and says where the table
/// goes instead: the peer asks for it once the handshake is done
/// (docs/PROTOCOL.md, "Bulk"), and gets all of it.
#[test]
fn bulk_send_before_a_peer_answered_says_the_peer_gets_the_table_when_it_asks() {
    let mut pair = Pair::new("bulknopeer");
    pair.commit_flows(0, (0..5).map(tcp_flow).collect());
    pair.stop(0);
    pair.stop(1);
    pair.start(0);
    let said = pair.cli_ok(0, &["-B"]);
    assert!(said.contains("no peer has answered yet: all 5 flows go to the peer"), "{said}");
    pair.start(1);
    pair.converge(0, Duration::from_secs(10));
    let said = pair.cli_ok(0, &["-B"]);
    assert!(said.contains("bulk send of 5 flows queued"), "{said}");
}

#[test]
fn the_cli_without_a_daemon_fails_clearly() {
    let dir = std::env::temp_dir().join(format!("ctsync-nodaemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "general:\n  control_socket: {}/none.sock\nsync:\n  auth: {{ insecure: true }}\n  channels:\n    - type: udp\n      local: 127.0.0.1\n      peer: 127.0.0.2\n",
            dir.display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN).args(["-C", cfg.to_str().unwrap(), "-s"]).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is ctsyncd running"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_bad_config_is_refused_with_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("ctsync-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.yaml");
    std::fs::write(&cfg, "general:\n  cache_limit: 10\nsync:\n  ack_windw: 3\n").unwrap();
    let out = Command::new(BIN).args(["-C", cfg.to_str().unwrap()]).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:4") && err.contains("ack_windw"), "{err}");
}

#[test]
fn an_unprivileged_client_is_refused_even_if_the_socket_mode_lets_it_in() {
    let pair = Pair::new("cred");
    let sock = pair.dir.join("fw1.sock");
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", pair.fw[0].name(), "setpriv", "--reuid=65534", "--regid=65534"])
        .args(["--clear-groups", BIN, "-C", &pair.config(0), "-s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // Closed before or while the request is written: no answer either way.
    assert!(err.contains("fw1.sock") && !err.contains("permission denied"), "{err}");
    let stats: serde_json::Value =
        serde_json::from_str(&pair.cli_ok(0, &["-s", "--json"])).unwrap();
    assert_eq!(stats["runtime"]["control_refused"].as_u64(), Some(1), "{stats:#}");
}

/// A throwaway system group, deleted when dropped.
struct TempGroup {
    name: String,
    gid: u32,
}

impl TempGroup {
    fn add(name: &str) -> TempGroup {
        let _ = Command::new("groupdel").arg(name).output();
        run(Command::new("groupadd").args(["--system", name]));
        let gid = nix::unistd::Group::from_name(name).unwrap().expect("group just added").gid;
        TempGroup { name: name.to_owned(), gid: gid.as_raw() }
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

#[test]
fn control_group_members_get_in_by_primary_or_supplementary_group() {
    use std::os::unix::fs::MetadataExt;
    let group = TempGroup::add(&format!("ctsync-t{}", std::process::id()));
    let pair = Pair::with_config("cgrp", &format!("  control_group: {}\n", group.name));
    let meta = std::fs::metadata(pair.dir.join("fw1.sock")).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (group.gid, 0o660));
    // User nobody, with the control group given in one way or another.
    let as_nobody = |ids: &[String]| {
        Command::new("ip")
            .args(["netns", "exec", pair.fw[0].name(), "setpriv", "--reuid=65534"])
            .args(ids)
            .args([BIN, "-C", &pair.config(0), "-s", "--json"])
            .output()
            .unwrap()
    };
    let gid = group.gid;
    for (how, ids) in [
        ("supplementary", vec!["--regid=65534".to_owned(), format!("--groups={gid}")]),
        ("primary", vec![format!("--regid={gid}"), "--clear-groups".to_owned()]),
    ] {
        let out = as_nobody(&ids);
        assert!(
            out.status.success(),
            "{how} member refused: {}{}",
            String::from_utf8_lossy(&out.stderr),
            pair.log(0)
        );
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(stats["runtime"]["control_refused"], 0, "{how}");
    }
    // An outsider is stopped by the file mode, and if that is loosened, by
    // the credential check.
    let outsider = ["--regid=65534".to_owned(), "--groups=100".to_owned()];
    let out = as_nobody(&outsider);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("permission denied"), "{err}");
    std::fs::set_permissions(
        pair.dir.join("fw1.sock"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    assert!(!as_nobody(&outsider).status.success(), "an outsider got in");
    let stats: serde_json::Value =
        serde_json::from_str(&pair.cli_ok(0, &["-s", "--json"])).unwrap();
    assert_eq!(stats["runtime"]["control_refused"], 1, "{stats:#}");
}

/// A member of the control group holds connections open without a word:
/// it gets its share and no more, root still gets in, and the silent
/// connections are closed after the request timeout.
#[test]
fn a_control_group_member_cannot_lock_root_out_of_the_control_socket() {
    let group = TempGroup::add(&format!("ctsync-b{}", std::process::id()));
    let pair = Pair::with_config("cbusy", &format!("  control_group: {}\n", group.name));
    let script = "import resource,socket,sys\n\
        hard=resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n\
        resource.setrlimit(resource.RLIMIT_NOFILE,(hard,hard))\n\
        socks=[]\n\
        for i in range(1100):\n    s=socket.socket(socket.AF_UNIX,socket.SOCK_STREAM); s.connect(sys.argv[1]); socks.append(s)\n\
        print('connected', flush=True)\n\
        sys.stdin.readline()\n\
        answered=closed=still=0\n\
        for s in socks:\n    s.setblocking(False)\n    try:\n        d=s.recv(4096)\n        if d: answered+=1\n        else: closed+=1\n    except BlockingIOError: still+=1\n\
        print(answered, closed, still, flush=True)\n";
    let mut holder = Command::new("ip")
        .args(["netns", "exec", pair.fw[0].name(), "setpriv", "--reuid=65534", "--regid=65534"])
        .arg(format!("--groups={}", group.gid))
        // Not PATH's python3: root's may be a shim nobody cannot run.
        .args(["/usr/bin/python3", "-c", script])
        .arg(pair.dir.join("fw1.sock"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(holder.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "connected");
    // Root's operator, with 1100 connections of the group held open: more
    // than the daemon has file descriptors for, under a default limit.
    let stats: serde_json::Value =
        serde_json::from_str(&pair.cli_ok(0, &["-s", "--json"])).unwrap();
    let busy = stats["runtime"]["control_busy"].as_u64().unwrap();
    assert_eq!(busy, 1100 - ctsync::control::MAX_CLIENTS_PER_UID as u64, "{stats:#}");
    std::thread::sleep(Duration::from_secs(7));
    writeln!(holder.stdin.as_mut().unwrap()).unwrap();
    let counts = lines.next().unwrap().unwrap();
    let _ = holder.wait();
    // The turned-away ones read why; the held ones were closed unanswered.
    let want = format!("{busy} {} 0", ctsync::control::MAX_CLIENTS_PER_UID);
    assert_eq!(counts, want, "answered, closed, still open; log: {}", pair.log(0));
    let stats: serde_json::Value =
        serde_json::from_str(&pair.cli_ok(0, &["-s", "--json"])).unwrap();
    assert_eq!(
        stats["runtime"]["control_timeouts"].as_u64(),
        Some(ctsync::control::MAX_CLIENTS_PER_UID as u64),
        "{stats:#}"
    );
    assert!(pair.log(0).contains("turned away 1084 control connections"), "{}", pair.log(0));
}

/// `-s SECTION` prints that section only, in conntrackd's layout (see
/// `src/stats.rs` for the conntrackd functions each one follows);
/// `--json` stays the whole document whatever the section.
#[test]
fn each_stats_section_prints_its_own_part() {
    let pair = Pair::new("sections");
    pair.fw[0].exec(
        "conntrack -I -p tcp -s 192.0.2.10 -d 198.51.100.20 --sport 40000 --dport 443 \
         --state ESTABLISHED -t 600 -u ASSURED",
    );
    wait_for(Duration::from_secs(10), || {
        pair.cli_ok(1, &["-s", "cache"])
            .contains(&format!("cache:external\tactive objects:\t\t{:>12}", 1))
    })
    .unwrap_or_else(|| panic!("flow not replicated: {}", pair.cli_ok(1, &["-s", "cache"])));

    let general = pair.cli_ok(1, &["-s"]);
    for line in [
        "cache internal:",
        "cache external:",
        "UDP traffic (active device=sync0):",
        "message tracking:",
    ] {
        assert!(general.lines().any(|l| l == line), "-s lacks {line:?}:\n{general}");
    }
    assert!(general.contains("current active connections:\t           1"), "{general}");
    assert_eq!(pair.cli_ok(1, &["-s", "ct"]).lines().next(), general.lines().next());

    // (section, a line it must have, a line of another section it must not)
    let sections = [
        ("network", "network statistics:", "cache internal:"),
        ("n", "sequence tracking statistics:", "daemon uptime"),
        ("cache", "cache:internal\tactive objects:\t\t           0", "network statistics:"),
        ("runtime", "netlink stats:", "cache internal:"),
        ("link", "UDP traffic device=sync0 status=RUNNING role=ACTIVE:", "message tracking:"),
        // Its length moves with the ACKs of the moment.
        ("rsqueue", "resent queue (len=", "cache internal:"),
        ("queue", "queue rsqueue:", "cache internal:"),
    ];
    // The carrier of a new veth comes up within a second (linkwatch), and
    // the daemon looks at its links once a second.
    wait_for(Duration::from_secs(5), || pair.cli_ok(1, &["-s", "link"]).contains("status=RUNNING"))
        .unwrap_or_else(|| panic!("sync0 not running: {}", pair.cli_ok(1, &["-s", "link"])));
    for (section, has, lacks) in sections {
        let text = pair.cli_ok(1, &["-s", section]);
        assert!(text.lines().any(|l| l.starts_with(has)), "-s {section} lacks {has:?}:\n{text}");
        assert!(!text.contains(lacks), "-s {section} has {lacks:?}:\n{text}");
    }
    let runtime = pair.cli_ok(1, &["-s", "runtime"]);
    assert!(runtime.starts_with("daemon uptime: 0 min\n"), "{runtime}");
    // No child processes and no expectation sync: nothing, as conntrackd.
    assert_eq!(pair.cli_ok(1, &["-s", "process"]), "");
    assert_eq!(pair.cli_ok(1, &["-s", "expect"]), "");

    let whole: serde_json::Value =
        serde_json::from_str(&pair.cli_ok(1, &["-s", "--json"])).unwrap();
    let cache: serde_json::Value =
        serde_json::from_str(&pair.cli_ok(1, &["-s", "cache", "--json"])).unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&whole), keys(&cache));
    assert_eq!(cache["external"]["active"], 1);

    // conntrackd's link states: the far end down is no carrier here; this
    // end down is DOWN.
    pair.fw[0].exec("ip link set sync0 down");
    wait_for(Duration::from_secs(5), || {
        pair.cli_ok(1, &["-s", "link"]).contains("device=sync0 status=NO-CARRIER role=ACTIVE:")
    })
    .unwrap_or_else(|| panic!("{}", pair.cli_ok(1, &["-s", "link"])));
    pair.fw[1].exec("ip link set sync0 down");
    wait_for(Duration::from_secs(5), || {
        pair.cli_ok(1, &["-s", "link"]).contains("device=sync0 status=DOWN role=ACTIVE:")
    })
    .unwrap_or_else(|| panic!("{}", pair.cli_ok(1, &["-s", "link"])));
}
