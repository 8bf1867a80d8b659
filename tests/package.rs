//! What the Debian package ships: the man page is current, the conffile
//! waits for a peer, the unit passes `systemd-analyze verify`, the daemon
//! speaks the unit's notify protocol, and the .deb has the right files,
//! fields and maintainer-script behaviour (installed and purged in a
//! throw-away root, never on this machine's own).
//!
//! Tests that need a tool that is missing print why and return.

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::Netns;

#[path = "../examples/manpage.rs"]
mod manpage;

const BIN: &str = env!("CARGO_BIN_EXE_ctsyncd");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn repo(path: &str) -> PathBuf {
    Path::new(ROOT).join(path)
}

fn temp_dir(tag: &str) -> TempDir {
    let path = std::env::temp_dir().join(format!("ctsync-pkg-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).unwrap();
    TempDir(path)
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn man_page_is_generated_from_the_cli_definition() {
    let committed = std::fs::read(manpage::path()).unwrap();
    assert!(
        committed == manpage::render(),
        "man/ctsyncd.8 is stale: run `cargo run --example manpage` and commit it"
    );
    let text = String::from_utf8(committed).unwrap();
    for section in ["OPTIONS", "CONFIGURATION", "FILES", "SIGNALS", "\"EXIT STATUS\"", "EXAMPLES"] {
        assert!(text.contains(&format!(".SH {section}")), "no {section} section");
    }
    for arg in ctsync::cli::command().get_arguments().filter(|a| !a.is_hide_set()) {
        if let Some(long) = arg.get_long() {
            assert!(text.contains(&format!("\\-\\-{}", long.replace('-', "\\-"))), "--{long}");
        }
    }
}

#[test]
fn shipped_config_waits_for_the_peer_and_documents_the_defaults() {
    let path = repo("etc/ctsyncd.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let err = ctsync::config::from_str(&text, &path).expect_err("no peer, so no start");
    assert_eq!(err.key(), Some("sync.channels"), "{err}");
    assert!(err.to_string().contains("at least one channel is required"), "{err}");

    // With the example channel filled in it starts, and every value written
    // out in the file is the default.
    let filled = text.replace("  channels: []\n", "  channels:\n").replace("\n  #  ", "\n    ");
    let config = ctsync::config::from_str(&filled, &path).unwrap_or_else(|e| panic!("{e}"));
    let minimal = "sync:\n  auth: { key_file: /etc/ctsync/sync.key }\n  channels:\n    - { local: \
                   10.255.0.1, peer: 10.255.0.2, interface: sync0 }\n";
    let defaults = ctsync::config::from_str(minimal, Path::new("minimal")).unwrap();
    assert_eq!(config, defaults);
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo("systemd/ctsyncd.service")).unwrap();
    for line in [
        "Type=notify",
        "ExecStart=/usr/sbin/ctsyncd -C /etc/ctsync/ctsyncd.yaml",
        // The same file, so the client finds the daemon's control socket.
        "ExecReload=/usr/sbin/ctsyncd -C /etc/ctsync/ctsyncd.yaml --reload",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "WatchdogSec=30s",
        "RuntimeDirectory=ctsync",
        // A stopped daemon's ready file keeps its 1 (docs/keepalived.md).
        "RuntimeDirectoryPreserve=yes",
        // Where conntrackd.conf's /var/log files move (docs/migrating-from-conntrackd.md).
        "LogsDirectory=ctsync",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
    }
    if !have("systemd-analyze") {
        println!("SKIPPED: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    // verify wants the binary and the man page to exist: point it at the
    // ones just built.
    let dir = temp_dir("verify");
    std::fs::write(dir.0.join("ctsyncd.service"), unit.replace("/usr/sbin/ctsyncd", BIN)).unwrap();
    std::fs::create_dir_all(dir.0.join("man/man8")).unwrap();
    std::fs::copy(repo("man/ctsyncd.8"), dir.0.join("man/man8/ctsyncd.8")).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "ctsyncd.service"])
        .current_dir(&dir.0)
        .env("MANPATH", dir.0.join("man"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What `Type=notify` and `WatchdogSec=` rely on: READY=1 once the daemon
/// is up, then WATCHDOG=1 at half the interval, from the event loop; and
/// around a reload (SIGHUP), RELOADING=1 with MONOTONIC_USEC, then READY=1.
#[test]
fn daemon_reports_ready_and_pings_the_watchdog() {
    let ns = Netns::new("notify");
    ns.exec(
        "ip link add sync0 type veth peer name sync1 && ip addr add 10.255.0.1/30 dev sync0 \
         && ip link set sync0 up && ip link set sync1 up",
    );
    let dir = temp_dir("notify");
    let socket_path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    std::fs::write(
        dir.0.join("d.yaml"),
        format!(
            "general:\n  lock_file: {d}/d.lock\n  control_socket: {d}/d.sock\n\
             sync:\n  auth: {{ insecure: true }}\n  channels:\n    - {{ local: 10.255.0.1, peer: 10.255.0.2, interface: sync0 }}\n",
            d = dir.0.display()
        ),
    )
    .unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), BIN, "-C"])
        .arg(dir.0.join("d.yaml"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut messages = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let mut hup_sent = false;
    while start.elapsed() < Duration::from_millis(1500) {
        if let Ok(n) = socket.recv(&mut buf) {
            messages.push((start.elapsed(), String::from_utf8_lossy(&buf[..n]).into_owned()));
        }
        let ready_seen = messages.iter().any(|(_, m)| m.lines().any(|l| l == "READY=1"));
        if ready_seen && !hup_sent && start.elapsed() > Duration::from_millis(700) {
            // `ip netns exec` execs the daemon, so the child is the daemon.
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGHUP,
            )
            .unwrap();
            hup_sent = true;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let ready = messages.iter().position(|(_, m)| m.lines().any(|l| l == "READY=1"));
    let ready = ready.unwrap_or_else(|| panic!("no READY=1 in {messages:?}"));
    let pings: Vec<Duration> = messages[ready..]
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    // 200 ms apart over about 1.4 s; fewer than 4 would leave systemd's
    // 400 ms without a ping.
    assert!(pings.len() >= 4, "watchdog pings at {pings:?} of {messages:?}");
    for pair in pings.windows(2) {
        assert!(pair[1] - pair[0] < Duration::from_millis(400), "gap in {pings:?}");
    }
    // systemd 253 and later stop a service whose RELOADING=1 comes without
    // MONOTONIC_USEC in the same message.
    let reloading = messages[ready + 1..]
        .iter()
        .position(|(_, m)| {
            m.lines().any(|l| l == "RELOADING=1")
                && m.lines().any(|l| {
                    l.strip_prefix("MONOTONIC_USEC=").is_some_and(|v| v.parse::<u64>().is_ok())
                })
        })
        .map(|i| i + ready + 1)
        .unwrap_or_else(|| panic!("no RELOADING=1 with MONOTONIC_USEC after SIGHUP: {messages:?}"));
    assert!(
        messages[reloading + 1..].iter().any(|(_, m)| m.lines().any(|l| l == "READY=1")),
        "no READY=1 after the reload: {messages:?}"
    );
}

#[test]
fn debian_package_has_the_files_fields_and_scripts_it_should() {
    if !have("dpkg-deb") {
        println!("SKIPPED: dpkg-deb is not installed");
        return;
    }
    let out_dir = temp_dir("deb");
    // Its own target dir: the cargo running this test may hold target/'s lock.
    let built = Command::new(repo("scripts/package.sh"))
        .args(["--output".as_ref(), out_dir.0.as_os_str()])
        .env("CARGO_TARGET_DIR", repo("target/package"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    match built.status.code() {
        Some(0) => {}
        Some(3) => {
            println!("SKIPPED: cargo-deb is not installed and `cargo install cargo-deb` failed");
            return;
        }
        _ => panic!("scripts/package.sh failed (see its output above)"),
    }
    let deb = String::from_utf8_lossy(&built.stdout).lines().last().unwrap_or("").to_owned();
    assert!(deb.ends_with(".deb") && Path::new(&deb).exists(), "no .deb: {deb:?}");

    let field = |name: &str| output(Command::new("dpkg-deb").args(["-f", &deb, name]));
    assert_eq!(field("Package").trim(), "ctsync");
    assert_eq!(field("Section").trim(), "net");
    let depends = field("Depends");
    assert!(depends.contains("libc6"), "Depends computed from the binary: {depends}");
    assert!(!depends.contains("keepalived") && !depends.contains("conntrack"), "{depends}");
    let suggests = field("Suggests");
    assert!(suggests.contains("keepalived") && suggests.contains("conntrack"), "{suggests}");

    let listing = output(Command::new("dpkg-deb").args(["-c", &deb]));
    let files: BTreeSet<String> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect();
    let expected: BTreeSet<String> = [
        "/usr/sbin/ctsyncd",
        "/etc/ctsync/ctsyncd.yaml",
        "/etc/logrotate.d/ctsyncd",
        "/usr/lib/systemd/system/ctsyncd.service",
        "/usr/share/ctsync/primary-backup.sh",
        "/usr/share/man/man8/ctsyncd.8.gz",
        "/usr/share/doc/ctsync/README.md",
        "/usr/share/doc/ctsync/copyright",
        "/usr/share/doc/ctsync/changelog.Debian.gz",
        "/usr/share/doc/ctsync/active-active.md",
        "/usr/share/doc/ctsync/keepalived.md",
        "/usr/share/doc/ctsync/metrics.md",
        "/usr/share/doc/ctsync/migrating-from-conntrackd.md",
        "/usr/share/doc/ctsync/examples/keepalived.conf",
        "/usr/share/doc/ctsync/examples/primary.yaml",
        "/usr/share/doc/ctsync/examples/backup.yaml",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(files, expected);
    assert!(listing.contains("-rwxr-xr-x 0/0") && listing.contains("./usr/sbin/ctsyncd"));

    let info = output(Command::new("dpkg-deb").args(["-I", &deb]));
    for script in ["conffiles", "postinst", "prerm", "postrm"] {
        assert!(info.contains(&format!(" {script} ")), "no {script} in:\n{info}");
    }
    let control = temp_dir("control");
    output(Command::new("dpkg-deb").args(["-e", &deb]).arg(&control.0));
    let conffiles = std::fs::read_to_string(control.0.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/ctsync/ctsyncd.yaml\n/etc/logrotate.d/ctsyncd");
    let postinst = std::fs::read_to_string(control.0.join("postinst")).unwrap();
    // Installed disabled and not started: the shipped config has no peer.
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
    // Enabled again on upgrade only if the admin had enabled it.
    assert!(postinst.contains("deb-systemd-helper debian-installed ctsyncd.service"), "{postinst}");

    install_upgrade_purge(Path::new(&deb));
}

/// `dpkg --root` into a throw-away directory: install, reinstall (the
/// upgrade path of the scripts), purge, and nothing of ours may remain.
/// The maintainer scripts run chrooted there, with a copy of dash.
fn install_upgrade_purge(deb: &Path) {
    if !have("dpkg") || !Path::new("/bin/dash").exists() {
        println!("SKIPPED install/purge: dpkg or /bin/dash missing");
        return;
    }
    let root = temp_dir("root");
    let r = &root.0;
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "bin", "tmp"]
    {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(r.join("var/lib/dpkg/available"), "").unwrap();
    // dash and the libraries it loads, so that `#!/bin/sh` scripts run.
    std::fs::copy("/bin/dash", r.join("bin/sh")).unwrap();
    let libs = output(Command::new("ldd").arg("/bin/dash"));
    for lib in libs.split_whitespace().filter(|w| w.starts_with('/')) {
        let dest = r.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(lib, dest).unwrap();
    }
    let before = tree(r);
    let dpkg = |args: &[&str]| {
        output(
            Command::new("dpkg")
                .arg(format!("--root={}", r.display()))
                .arg(format!("--log={}", r.join("dpkg.log").display()))
                .args(["--force-not-root", "--force-bad-path", "--force-depends"])
                .args(args)
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        )
    };
    let deb = deb.to_str().unwrap();
    dpkg(&["-i", deb]);
    for file in
        ["usr/sbin/ctsyncd", "etc/ctsync/ctsyncd.yaml", "usr/lib/systemd/system/ctsyncd.service"]
    {
        assert!(r.join(file).exists(), "{file} not installed");
    }
    // A changed conffile survives an upgrade.
    let conffile = r.join("etc/ctsync/ctsyncd.yaml");
    let edited = std::fs::read_to_string(&conffile).unwrap() + "# edited\n";
    std::fs::write(&conffile, &edited).unwrap();
    dpkg(&["--force-confold", "-i", deb]);
    assert_eq!(std::fs::read_to_string(&conffile).unwrap(), edited);
    dpkg(&["--purge", "ctsync"]);
    let after = tree(r);
    let left: Vec<&String> = after
        .difference(&before)
        .filter(|p| !p.starts_with("var/lib/dpkg") && *p != "dpkg.log")
        .collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
}

/// Every path under `root`, relative to it.
fn tree(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            out.insert(path.strip_prefix(root).unwrap().display().to_string());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    out
}
