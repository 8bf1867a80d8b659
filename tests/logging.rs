//! Where a real daemon's log lines go: with priorities under journald, to
//! syslog when `-d` would lose stderr, and to a log file reopened on
//! SIGUSR1 after logrotate renamed it.
//!
//! Needs root. Each test builds its own namespace and removes it, and
//! stops the daemons it started by their pid.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

mod common;
use common::{Netns, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_ctsyncd");

/// A namespace with a sync interface and a directory for one daemon's
/// files; kills the daemon it knows of when dropped.
struct Setup {
    ns: Netns,
    dir: PathBuf,
    child: Option<Child>,
    /// A daemon that went to the background: its lock file holds its pid.
    detached: bool,
}

impl Setup {
    /// `log` is the YAML of `general.log`, or empty for the default.
    fn new(tag: &str, log: &str) -> Setup {
        let ns = Netns::new(tag);
        ns.exec("ip link add sync0 type veth peer name sync1 && ip addr add 10.255.0.1/30 dev sync0 && ip link set sync0 up && ip link set sync1 up");
        let dir = std::env::temp_dir().join(format!("ctsync-log-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "general:\n  lock_file: {d}/d.lock\n  control_socket: {d}/d.sock\n{log}\
             sync:\n  auth: {{ insecure: true }}\n  channels:\n    - {{ local: 10.255.0.1, peer: 10.255.0.2, interface: sync0 }}\n",
            d = dir.display()
        );
        std::fs::write(dir.join("d.yaml"), config).unwrap();
        Setup { ns, dir, child: None, detached: false }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Start the daemon in the foreground, stderr into `stderr`.
    fn start(&mut self, stderr: &Path, env: &[(&str, &str)]) {
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns.name(), BIN, "-C"])
            .arg(self.path("d.yaml"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .expect("start ctsyncd");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        wait_for(Duration::from_secs(10), || {
            Command::new("ip")
                .args(["netns", "exec", self.ns.name(), BIN, "-C"])
                .arg(self.path("d.yaml"))
                .arg("-s")
                .output()
                .unwrap()
                .status
                .success()
        })
        .expect("the daemon answers -s");
    }

    /// SIGTERM the foreground daemon and wait for it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.detached
            && let Ok(pid) = self.read("d.lock").trim().parse::<i32>()
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            // Gone once its lock file is (SIGKILL leaves the file, so wait
            // for the pid instead).
            let _ = wait_for(Duration::from_secs(5), || kill(Pid::from_raw(pid), None).is_err());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Under systemd, stderr is the journal's stream and `JOURNAL_STREAM` says
/// so (its device and inode): each line then starts with its syslog
/// priority (sd-daemon(3)), which journald strips and stores, so that
/// `journalctl -p warning` finds the warnings. Elsewhere, no prefix.
#[test]
fn under_journald_each_line_carries_its_priority() {
    let mut setup = Setup::new("journal", "");
    let stderr = setup.path("stderr");
    std::fs::write(&stderr, "").unwrap();
    let meta = std::fs::metadata(&stderr).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    setup.start(&stderr, &[("JOURNAL_STREAM", &stream)]);
    let log = setup.read("stderr");
    setup.stop();
    // The insecure sync link is a warning, the start an info line.
    assert!(
        log.lines().any(|l| l.starts_with("<4>warning: ") && l.contains("unauthenticated")),
        "{log}"
    );
    assert!(log.lines().any(|l| l.starts_with("<6>info: ctsyncd started")), "{log}");
    assert!(log.lines().all(|l| l.starts_with('<')), "{log}");

    // JOURNAL_STREAM inherited from elsewhere (another file): plain lines.
    let other = setup.path("stderr2");
    setup.start(&other, &[("JOURNAL_STREAM", &stream)]);
    let log = setup.read("stderr2");
    setup.stop();
    assert!(log.lines().any(|l| l.starts_with("info: ctsyncd started")), "{log}");
    assert!(!log.contains('<'), "{log}");
}

/// `-d` sends stderr to /dev/null; with the default `target: stderr` the
/// daemon says so on stderr before it detaches and logs to syslog. The
/// test's /dev/log is a socket it binds, mounted over /dev/log in a mount
/// namespace of the daemon's own.
#[test]
fn daemonized_without_a_log_target_warns_and_logs_to_syslog() {
    let mut setup = Setup::new("detach", "");
    let syslog = UnixDatagram::bind(setup.path("log.sock")).unwrap();
    syslog.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let d = setup.dir.display().to_string();
    let script = format!(
        "set -e; mkdir -p {d}/dev.real; mount --bind /dev {d}/dev.real; mount -t tmpfs none /dev; \
         for n in null zero urandom random; do touch /dev/$n; mount --bind {d}/dev.real/$n /dev/$n; done; \
         touch /dev/log; mount --bind {d}/log.sock /dev/log; \
         exec ip netns exec {ns} {BIN} -C {d}/d.yaml -d",
        ns = setup.ns.name()
    );
    setup.detached = true;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: -d detaches from stderr") && stderr.contains("logging to syslog"),
        "{stderr}"
    );
    assert!(!stderr.contains("ctsyncd started"), "{stderr}");
    setup.wait_ready();
    let pid = setup.read("d.lock").trim().to_owned();

    let mut lines = Vec::new();
    let mut buf = [0u8; 2048];
    let started = wait_for(Duration::from_secs(10), || {
        if let Ok(n) = syslog.recv(&mut buf) {
            lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        lines.iter().any(|l| l.contains("ctsyncd started"))
    });
    assert!(started.is_some(), "{lines:#?}");
    // Facility daemon (3), severity info (6): <30>; the warning went too.
    let start = lines.iter().find(|l| l.contains("ctsyncd started")).unwrap();
    assert!(start.starts_with(&format!("<30>ctsyncd[{pid}]: ")), "{start}");
    assert!(lines.iter().any(|l| l.starts_with("<28>") && l.contains("-d detaches")), "{lines:#?}");
}

/// logrotate renames the file, then sends SIGUSR1 (the package's
/// /etc/logrotate.d/ctsyncd): the daemon writes to a new file at the old
/// path, and the renamed one gets nothing more.
#[test]
fn sigusr1_reopens_the_log_file_after_a_rename() {
    let mut setup = Setup::new("reopen", "");
    let file = setup.path("ctsyncd.log");
    let config = setup.read("d.yaml").replace(
        "general:\n",
        &format!("general:\n  log: {{ target: file, file: {} }}\n", file.display()),
    );
    std::fs::write(setup.path("d.yaml"), config).unwrap();
    setup.start(&setup.path("stderr"), &[]);
    wait_for(Duration::from_secs(5), || setup.read("ctsyncd.log").contains("ctsyncd started"))
        .unwrap_or_else(|| panic!("no start line: {}", setup.read("ctsyncd.log")));

    std::fs::rename(&file, setup.path("ctsyncd.log.1")).unwrap();
    let pid = setup.child.as_ref().unwrap().id() as i32;
    kill(Pid::from_raw(pid), Signal::SIGUSR1).unwrap();
    wait_for(Duration::from_secs(5), || {
        setup.read("ctsyncd.log").contains("reopened the log file")
    })
    .unwrap_or_else(|| panic!("not reopened: {:?}", setup.read("ctsyncd.log.1")));
    let old = setup.read("ctsyncd.log.1");
    assert!(old.contains("ctsyncd started") && !old.contains("reopened"), "{old}");

    // And it keeps writing there.
    setup.stop();
    assert!(
        setup.read("ctsyncd.log").contains("ctsyncd stopping"),
        "{}",
        setup.read("ctsyncd.log")
    );
    assert!(!setup.read("ctsyncd.log.1").contains("stopping"));
}
