//! The operator's path on the installed package, not on the build tree.
//!
//! The .deb is built from the binary this test run built, and unpacked
//! (`dpkg-deb -x`) into each of two "firewalls": a network namespace each,
//! plus a mount namespace in which the package's `/etc` and `/usr` lie over
//! this host's (overlayfs, writes kept in the test's directory), `/run` and
//! `/var/log` are private, and `/run/ctsync` and `/var/log/ctsync` exist as
//! the unit's `RuntimeDirectory=` and `LogsDirectory=` make them. The daemon
//! runs as the unit's `ExecStart=` line under the unit's view of the file
//! system: everything read-only but those two (`ProtectSystem=strict`).
//! Nothing of this host's file system changes.
//!
//! * `readme_install_steps_bring_a_pair_into_sync` walks the README's
//!   install block line by line (it fails on a line it does not know).
//! * `debians_example_conntrackd_conf_syncs_under_the_packaged_unit` follows
//!   docs/migrating-from-conntrackd.md with the conntrackd.conf of Debian's
//!   conntrackd package, changing only addresses and interfaces.
//!
//! Needs root, cargo-deb, dpkg-deb, conntrack, util-linux and overlayfs;
//! the conntrackd test needs the conntrackd package (its example).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

mod common;
use common::{Netns, run, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_ctsyncd");
const REPO: &str = env!("CARGO_MANIFEST_DIR");
const DEBIAN_EXAMPLE: &str = "/usr/share/doc/conntrackd/examples/sync/ftfw/conntrackd.conf";

#[test]
fn readme_install_steps_bring_a_pair_into_sync() {
    let Some(mut lab) = Lab::new("readme") else { return };
    let readme = std::fs::read_to_string(lab.fw[0].file("/usr/share/doc/ctsync/README.md"))
        .expect("the package ships the README");
    let steps = install_block(&readme);
    assert!(steps.iter().any(|s| s.starts_with("dpkg -i")), "{steps:?}");
    for step in &steps {
        let words: Vec<&str> = step.split_whitespace().collect();
        match words.as_slice() {
            ["scripts/package.sh", ..] | ["dpkg", "-i", ..] => {} // Lab::new did both.
            // "on ONE firewall, then copy it to the other".
            ["ctsyncd", "--gen-key", file] => {
                let out = lab.fw[0].sh_ok(&format!("ctsyncd --gen-key {file}"));
                assert!(out.contains("wrote a new key"), "{out}");
            }
            ["scp", "-p", from, to] => {
                let (_, to) = to.split_once(':').expect("scp to HOST:PATH");
                copy_preserving_mode(&lab.fw[0].file(from), &lab.fw[1].file(to));
            }
            ["$EDITOR", file] => {
                for (i, fw) in lab.fw.iter().enumerate() {
                    fill_in_the_channel(&fw.file(file), i);
                }
            }
            ["ctsyncd", "--check"] => {
                for fw in &lab.fw {
                    let out = fw.sh_ok("ctsyncd --check");
                    assert!(out.contains("configuration OK"), "{out}");
                    assert!(out.contains("signing with key 1"), "{out}");
                }
            }
            ["systemctl", "enable", "--now", "ctsyncd"] => {
                let exec_start = unit_line(&lab.fw[0], "ExecStart=");
                lab.start_both(&exec_start);
            }
            _ => panic!("the README's install section has a step this test does not walk: {step}"),
        }
    }
    assert_eq!(lab.daemons.len(), 2, "the README never starts the daemon: {steps:?}");
    lab.assert_in_sync("-C /etc/ctsync/ctsyncd.yaml");
    // `systemctl reload ctsyncd` runs the unit's ExecReload= line.
    let reload = unit_line(&lab.fw[1], "ExecReload=");
    let out = lab.fw[1].sh_ok(reload.strip_prefix("ExecReload=").unwrap());
    assert!(out.contains("reloaded the sync keys from /etc/ctsync/sync.key"), "{out}");
}

#[test]
fn debians_example_conntrackd_conf_syncs_under_the_packaged_unit() {
    let Ok(example) = std::fs::read_to_string(DEBIAN_EXAMPLE) else {
        println!("SKIPPED: {DEBIAN_EXAMPLE} is missing (apt-get install conntrackd)");
        return;
    };
    let Some(mut lab) = Lab::new("cdconf") else { return };
    for (i, fw) in lab.fw.iter().enumerate() {
        // The example's dedicated link is eth2 with 192.168.100.100.
        let ours = example
            .replace("192.168.100.100", &format!("10.255.0.{}", i + 1))
            .replace("Interface eth2", "Interface sync0");
        let conf = fw.file("/etc/conntrackd/conntrackd.conf");
        std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
        std::fs::write(&conf, ours).unwrap();
        // Step 1 of the guide.
        let out = fw.sh_ok("ctsyncd -C /etc/conntrackd/conntrackd.conf --check");
        assert!(out.contains("lock file: /run/ctsync/conntrack.lock"), "{out}");
        assert!(out.contains("control socket: /run/ctsync/conntrackd.ctl"), "{out}");
        assert!(out.contains("log: file /var/log/ctsync/conntrackd.log"), "{out}");
    }
    // Step 2: the drop-in's ExecStart, as the installed guide gives it.
    let guide = std::fs::read_to_string(
        lab.fw[0].file("/usr/share/doc/ctsync/migrating-from-conntrackd.md"),
    )
    .unwrap();
    let exec_start = guide
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("ExecStart=/"))
        .expect("the guide gives the drop-in's ExecStart")
        .to_owned();
    assert_eq!(exec_start, "ExecStart=/usr/sbin/ctsyncd -C /etc/conntrackd/conntrackd.conf");
    lab.start_both(&exec_start);
    lab.assert_in_sync("-C /etc/conntrackd/conntrackd.conf");
    // The drop-in's ExecReload= reaches the daemon (conntrackd's format has
    // no key to reload).
    let reload = guide
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("ExecReload=/"))
        .expect("the guide gives the drop-in's ExecReload");
    let out = lab.fw[1].sh_ok(reload.strip_prefix("ExecReload=").unwrap());
    assert!(out.contains("nothing to reload"), "{out}");
    // `LogFile on` writes where the unit lets it.
    let log = lab.fw[1].sh_ok("cat /var/log/ctsync/conntrackd.log");
    assert!(!log.is_empty(), "nothing in /var/log/ctsync/conntrackd.log");
}

/// Under the unit's read-only view, a path elsewhere is refused with its
/// line and the drop-in (exit 2, not restarted), and a missing log
/// directory exits 1 (restarted).
#[test]
fn unwritable_and_missing_directories_under_the_unit_exit_2_and_1() {
    let Some(lab) = Lab::new("paths") else { return };
    let fw = &lab.fw[0];
    let conf = |general: &str| {
        format!(
            "General {{\n{general}\n}}\nSync {{\n  Mode FTFW {{ }}\n  UDP {{\n    IPv4_address 10.255.0.1\n    \
             IPv4_Destination_Address 10.255.0.2\n    Interface sync0\n  }}\n}}\n"
        )
    };
    std::fs::create_dir_all(fw.file("/etc/conntrackd")).unwrap();
    std::fs::write(fw.file("/etc/conntrackd/ro.conf"), conf("  LockFile /var/lib/c.lock")).unwrap();
    std::fs::write(
        fw.file("/etc/conntrackd/missing.conf"),
        conf("  LogFile /var/log/not/mounted/c.log"),
    )
    .unwrap();
    let out = fw.unit_run("/usr/sbin/ctsyncd -C /etc/conntrackd/ro.conf");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/etc/conntrackd/ro.conf:2:"), "{err}");
    assert!(err.contains("LockFile (general.lock_file)"), "{err}");
    assert!(err.contains("ReadWritePaths=/var/lib"), "{err}");
    let out = fw.unit_run("/usr/sbin/ctsyncd -C /etc/conntrackd/missing.conf");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no directory /var/log/not/mounted"), "{err}");
}

/// Two firewalls joined by `sync0` (10.255.0.1/30 and .2), each with the
/// package unpacked; the daemons started, then the firewalls, then the
/// test's directory are taken down in that order.
struct Lab {
    daemons: Vec<Daemon>,
    fw: Vec<Machine>,
    _work: Work,
}

impl Lab {
    /// `None` (with a line saying why) when a tool is missing.
    fn new(tag: &str) -> Option<Lab> {
        for tool in ["dpkg-deb", "nsenter", "unshare", "conntrack"] {
            if !have(tool) {
                println!("SKIPPED: {tool} is not installed");
                return None;
            }
        }
        let work = Work::new(tag);
        let deb = build_deb(&work.dir)?;
        let fw: Vec<Machine> = (1..=2).map(|n| Machine::new(&work, n, tag, &deb)).collect();
        run(
            "ip",
            &[
                "link",
                "add",
                "sync0",
                "netns",
                fw[0].net.name(),
                "type",
                "veth",
                "peer",
                "name",
                "sync0",
                "netns",
                fw[1].net.name(),
            ],
        );
        for (i, m) in fw.iter().enumerate() {
            m.net.exec(&format!(
                "ip addr add 10.255.0.{}/30 dev sync0 && ip link set sync0 up",
                i + 1
            ));
        }
        Some(Lab { daemons: Vec::new(), fw, _work: work })
    }

    /// Start the daemon on both firewalls with `exec_start` (a unit's
    /// `ExecStart=` line) and wait until each answers.
    fn start_both(&mut self, exec_start: &str) {
        let command = exec_start.strip_prefix("ExecStart=").expect("an ExecStart= line");
        let config = command.split_whitespace().skip_while(|w| *w != "-C").nth(1).unwrap_or("");
        for fw in &self.fw {
            let log = fw.dir.join("daemon.log");
            let child = fw
                .unit_command(command)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            self.daemons.push(Daemon(child));
            wait_for(Duration::from_secs(10), || {
                fw.sh(&format!("ctsyncd -C {config} -s")).status.success()
            })
            .unwrap_or_else(|| {
                panic!("{exec_start}: no answer: {}", std::fs::read_to_string(&log).unwrap())
            });
        }
    }

    /// A flow made in fw1's kernel reaches fw2's external cache, and fw2's
    /// kernel after a commit (`-c`, keepalived's notify_master).
    fn assert_in_sync(&self, config: &str) {
        self.fw[0].sh_ok(
            "conntrack -I -p tcp -s 10.1.0.1 -d 10.2.0.1 --sport 40000 --dport 80 \
             --state ESTABLISHED -u SEEN_REPLY,ASSURED -t 300",
        );
        let logs = || {
            self.fw
                .iter()
                .map(|f| std::fs::read_to_string(f.dir.join("daemon.log")).unwrap_or_default())
                .collect::<Vec<_>>()
        };
        wait_for(Duration::from_secs(15), || {
            self.fw[1].sh_ok(&format!("ctsyncd {config} -e")).contains("src=10.1.0.1 dst=10.2.0.1")
        })
        .unwrap_or_else(|| panic!("fw2 never learnt fw1's flow; logs: {:?}", logs()));
        self.fw[1].sh_ok(&format!("ctsyncd {config} -c"));
        let table = self.fw[1].sh_ok("conntrack -L 2>/dev/null");
        assert!(table.contains("src=10.1.0.1 dst=10.2.0.1 sport=40000 dport=80"), "{table}");
    }
}

/// One firewall: a network namespace, and a mount namespace (kept in a
/// file) where the unpacked package lies over `/etc` and `/usr`.
struct Machine {
    net: Netns,
    /// This firewall's directory: `root/` holds the package's files and
    /// every file written under `/etc` or `/usr`.
    dir: PathBuf,
    mount_ns: PathBuf,
}

impl Machine {
    fn new(work: &Work, n: usize, tag: &str, deb: &Path) -> Machine {
        let net = Netns::new(&format!("{tag}-fw{n}"));
        let dir = work.dir.join(format!("fw{n}"));
        let root = dir.join("root");
        for sub in ["root", "work-etc", "work-usr"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        run("dpkg-deb", &["-x", deb.to_str().unwrap(), root.to_str().unwrap()]);
        let mount_ns = work.ns_dir.join(format!("fw{n}"));
        std::fs::write(&mount_ns, "").unwrap();
        let (r, d) = (root.display(), dir.display());
        let setup = format!(
            "set -e
             mount -t overlay overlay -o lowerdir=/etc,upperdir={r}/etc,workdir={d}/work-etc /etc
             mount -t overlay overlay -o lowerdir=/usr,upperdir={r}/usr,workdir={d}/work-usr /usr
             mount -t tmpfs -o mode=0755 tmpfs /run
             mkdir -p /run/lock /run/ctsync
             mount -t tmpfs -o mode=0700 tmpfs /run/ctsync
             mount -t tmpfs -o mode=0755 tmpfs /var/log
             mkdir /var/log/ctsync
             mount -t tmpfs -o mode=0750 tmpfs /var/log/ctsync"
        );
        let out = Command::new("unshare")
            .arg(format!("--mount={}", mount_ns.display()))
            .args(["--propagation", "private", "sh", "-c", &setup])
            .output()
            .unwrap();
        assert!(out.status.success(), "mount namespace: {}", String::from_utf8_lossy(&out.stderr));
        Machine { net, dir, mount_ns }
    }

    /// Where `path` of this firewall's file system is kept (for `/etc` and
    /// `/usr`): the package's file, or what was written over it.
    fn file(&self, path: &str) -> PathBuf {
        self.dir.join("root").join(path.trim_start_matches('/'))
    }

    /// Run a shell command on this firewall, as the operator does.
    fn sh(&self, script: &str) -> Output {
        self.enter().args(["sh", "-c", script]).output().unwrap()
    }

    fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "`{script}` on {}: {}{}",
            self.net.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `command` as the unit runs it: everything read-only but
    /// /run/ctsync and /var/log/ctsync (`ProtectSystem=strict`). The child
    /// is the command itself (nsenter, unshare and sh each exec the next).
    fn unit_command(&self, command: &str) -> Command {
        let mut cmd = self.enter();
        cmd.args([
            "unshare",
            "--mount",
            "sh",
            "-c",
            "awk '{print $5}' /proc/self/mountinfo | while read -r m; do
               case \"$m\" in /proc*|/sys*|/dev*|/run/ctsync|/var/log/ctsync) continue ;; esac
               mount -o remount,bind,ro \"$m\" 2>/dev/null || true
             done
             exec \"$@\"",
            "sh",
        ]);
        cmd.args(command.split_whitespace());
        cmd
    }

    fn unit_run(&self, command: &str) -> Output {
        self.unit_command(command).output().unwrap()
    }

    fn enter(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .arg(format!("--mount={}", self.mount_ns.display()))
            .arg(format!("--net=/run/netns/{}", self.net.name()));
        cmd
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount_ns).status();
    }
}

/// The test's directory; `ns/` is a private mount point that holds the
/// mount namespaces' files.
struct Work {
    dir: PathBuf,
    ns_dir: PathBuf,
}

impl Work {
    fn new(tag: &str) -> Work {
        let dir = std::env::temp_dir().join(format!("ctsync-install-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ns_dir = dir.join("ns");
        std::fs::create_dir_all(&ns_dir).unwrap();
        let ns = ns_dir.to_str().unwrap().to_owned();
        run("mount", &["--bind", &ns, &ns]);
        let work = Work { dir, ns_dir };
        run("mount", &["--make-private", &ns]);
        work
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.ns_dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A daemon this test started, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The .deb, as scripts/package.sh builds it but from the binary this test
/// run built (`--no-build --profile ci`, quick compression): the package
/// test builds it from scratch.
fn build_deb(dir: &Path) -> Option<PathBuf> {
    let target = Path::new(BIN).parent().and_then(Path::parent).unwrap();
    let path = format!(
        "{}/.cargo/bin:{}",
        std::env::var("HOME").unwrap_or_default(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("cargo")
        .args(["deb", "--no-build", "--profile", "ci", "--fast", "--output"])
        .arg(dir)
        .env("CARGO_TARGET_DIR", target)
        .env("PATH", path)
        .current_dir(REPO)
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("no such command") {
            println!("SKIPPED: cargo-deb is not installed (scripts/package.sh installs it)");
            return None;
        }
        panic!("cargo deb: {err}");
    }
    let deb = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim().to_owned();
    assert!(deb.ends_with(".deb"), "{deb}");
    Some(PathBuf::from(deb))
}

/// The commands of the README's "Installing the Debian package" block,
/// comments removed.
fn install_block(readme: &str) -> Vec<String> {
    let section = readme
        .split("## Installing the Debian package")
        .nth(1)
        .expect("the README has an install section");
    let block = section.split("```sh").nth(1).and_then(|b| b.split("```").next()).unwrap();
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// "Uncomment the entry below and fill in the addresses": fw1 keeps the
/// example's, fw2 swaps them.
fn fill_in_the_channel(file: &Path, i: usize) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains("  channels: []\n"), "the shipped file has an empty channel list");
    let mut out = String::new();
    let mut in_entry = false;
    for line in text.lines() {
        if line == "  channels: []" {
            out.push_str("  channels:\n");
            in_entry = true;
            continue;
        }
        let line = match line.strip_prefix("  #  ") {
            Some(rest) if in_entry => {
                let rest = if i == 1 {
                    rest.replace("local: 10.255.0.1", "local: 10.255.0.2")
                        .replace("peer: 10.255.0.2", "peer: 10.255.0.1")
                } else {
                    rest.to_owned()
                };
                format!("    {rest}")
            }
            _ => {
                in_entry = false;
                line.to_owned()
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    std::fs::write(file, out).unwrap();
}

fn copy_preserving_mode(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap();
    let mode = std::fs::metadata(from).unwrap().permissions().mode();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The line of the installed unit that starts with `key`.
fn unit_line(fw: &Machine, key: &str) -> String {
    let unit = std::fs::read_to_string(fw.file("/usr/lib/systemd/system/ctsyncd.service")).unwrap();
    unit.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key}")).to_owned()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
