//! FTP through a firewall pair with the kernel's ftp helper and SNAT: the
//! control connection is opened through fw1, the pair fails over to fw2,
//! then a passive data transfer must pass fw2. The ruleset lets a data
//! connection in only as `ct state related`, so it passes only if fw2
//! holds the expectation fw1's helper created: with `sync.expectations`
//! it does, without it the same transfer fails (the negative control).
//!
//! Real components: vsftpd (Debian's package, installed by
//! scripts/setup.sh), Python's ftplib as the client, nftables, ctsyncd,
//! and conntrackd on one side for the runs over its wire format.
//! The failover is a route switch plus `ctsyncd -c` on fw2, what
//! keepalived's notify script does, without keepalived's timers; the same
//! FTP scenario through a real keepalived failover (with an SNAT that
//! changes the announcement's length) is tests/lab/ftp.sh, run by
//! tests/failover.rs.
//! Needs root; skipped otherwise or when vsftpd is missing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::{Netns, run_ok, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_ctsyncd");
const CONNTRACKD: &str = "/usr/sbin/conntrackd";

/// Which daemon a firewall runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Ctsyncd,
    Conntrackd,
}

const PAYLOAD_LEN: usize = 100_000;

/// tests/lab: the FTP client (`labtool.py ftp-client`) and vsftpd's
/// configuration are shared with the keepalived FTP lab.
fn lab_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("lab")
}

/// fw1 and fw2 share the client-facing and the server-facing addresses
/// (each on its own point-to-point links), so the SNAT address 10.0.2.1
/// stays valid after the switch.
struct Lab {
    cl: Netns,
    srv: Netns,
    fw: [Netns; 2],
    kinds: [Kind; 2],
    dir: PathBuf,
    daemons: Vec<Child>,
}

impl Lab {
    /// `expectations`: sync them (`[ftp]`) or not. With a conntrackd on
    /// either side, both speak its wire format.
    fn new(tag: &str, kinds: [Kind; 2], expectations: bool) -> Lab {
        let lab = Lab {
            cl: Netns::new(&format!("{tag}-cl")),
            srv: Netns::new(&format!("{tag}-srv")),
            fw: [Netns::new(&format!("{tag}-fw1")), Netns::new(&format!("{tag}-fw2"))],
            kinds,
            dir: std::env::temp_dir().join(format!("ctsync-exp-{}-{tag}", std::process::id())),
            daemons: Vec::new(),
        };
        let compat = kinds.contains(&Kind::Conntrackd);
        std::fs::create_dir_all(&lab.dir).unwrap();
        let veth = |a: &Netns, an: &str, b: &Netns, bn: &str| {
            run_ok(Command::new("ip").args(["link", "add", an, "netns", a.name()]).args([
                "type",
                "veth",
                "peer",
                "name",
                bn,
                "netns",
                b.name(),
            ]));
        };
        lab.cl.exec("ip addr add 10.0.1.2/32 dev lo");
        lab.srv.exec("ip addr add 10.0.2.2/32 dev lo");
        for (i, fw) in lab.fw.iter().enumerate() {
            let n = i + 1;
            veth(&lab.cl, &format!("c{n}"), fw, "lan");
            veth(&lab.srv, &format!("s{n}"), fw, "wan");
            lab.cl.exec(&format!("ip addr add 169.254.1{n}.2/30 dev c{n} && ip link set c{n} up"));
            lab.srv.exec(&format!("ip addr add 169.254.2{n}.2/30 dev s{n} && ip link set s{n} up"));
            fw.exec(&format!(
                "ip addr add 169.254.1{n}.1/30 dev lan && ip link set lan up && \
                 ip addr add 169.254.2{n}.1/30 dev wan && ip link set wan up && \
                 ip addr add 10.0.2.1/32 dev lo && \
                 ip route add 10.0.1.2/32 via 169.254.1{n}.2 && \
                 ip route add 10.0.2.2/32 via 169.254.2{n}.2 && \
                 sysctl -qw net.ipv4.ip_forward=1 net.netfilter.nf_conntrack_tcp_loose=0"
            ));
            fw.exec(&format!("nft -f - <<'EOF'\n{}\nEOF", ruleset()));
        }
        veth(&lab.fw[0], "sync0", &lab.fw[1], "sync0");
        let key = lab.dir.join("sync.key");
        std::fs::write(&key, format!("1 {}\n", "5c".repeat(32))).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        for (i, fw) in lab.fw.iter().enumerate() {
            let n = i + 1;
            let (d, p) = (lab.dir.display(), 2 - i);
            fw.exec(&format!("ip addr add 10.255.0.{n}/30 dev sync0 && ip link set sync0 up"));
            let text = match (kinds[i], compat) {
                (Kind::Ctsyncd, _) => format!(
                    "general:\n  lock_file: {d}/fw{n}.lock\n  control_socket: {d}/fw{n}.sock\n\
                     sync:\n{exp}{auth}  channels:\n    \
                     - {{ type: udp, local: 10.255.0.{n}, peer: 10.255.0.{p}, interface: sync0 }}\n",
                    exp = if expectations { "  expectations: [ftp]\n" } else { "" },
                    auth = if compat {
                        "  wire: conntrackd\n".to_owned()
                    } else {
                        format!("  auth: {{ key_file: {d}/sync.key }}\n")
                    },
                ),
                (Kind::Conntrackd, _) => format!(
                    "Sync {{\n\tMode FTFW {{\n\t}}\n\tUDP {{\n\t\tIPv4_address 10.255.0.{n}\n\
                     \t\tIPv4_Destination_Address 10.255.0.{p}\n\t\tPort 3780\n\t\tInterface sync0\n\
                     \t\tChecksum on\n\t}}\n\tOptions {{\n\t\tExpectationSync {exp}\n\t}}\n}}\n\
                     General {{\n\tHashSize 8192\n\tHashLimit 65536\n\
                     \tLockFile {d}/fw{n}.cd.lock\n\tLogFile {d}/fw{n}.log\n\tSystemd off\n\
                     \tUNIX {{\n\t\tPath {d}/fw{n}.ctl\n\t}}\n\tFilter From Userspace {{\n\
                     \t\tAddress Ignore {{\n\t\t\tIPv4_address 10.255.0.0/30\n\t\t}}\n\t}}\n}}\n",
                    exp = if expectations { "{\n\t\t\tftp\n\t\t}" } else { "off" },
                ),
            };
            std::fs::write(lab.config(i), text).unwrap();
        }
        lab.route_via(1);
        lab
    }

    fn config(&self, i: usize) -> String {
        let ext = if self.kinds[i] == Kind::Ctsyncd { "yaml" } else { "conf" };
        self.dir.join(format!("fw{}.{ext}", i + 1)).display().to_string()
    }

    fn bin(&self, i: usize) -> &'static str {
        if self.kinds[i] == Kind::Ctsyncd { BIN } else { CONNTRACKD }
    }

    /// Send client and server traffic through fw`n` only.
    fn route_via(&self, n: usize) {
        self.cl.exec(&format!("ip route replace 10.0.2.0/24 via 169.254.1{n}.1 src 10.0.1.2"));
        self.srv.exec(&format!("ip route replace 10.0.2.1/32 via 169.254.2{n}.1 src 10.0.2.2"));
    }

    fn start_daemons(&mut self) {
        for i in 0..2 {
            let name = if self.kinds[i] == Kind::Ctsyncd { "log" } else { "out" };
            let log = std::fs::File::create(self.dir.join(format!("fw{}.{name}", i + 1))).unwrap();
            let child = Command::new("ip")
                .args(["netns", "exec", self.fw[i].name(), self.bin(i), "-C", &self.config(i)])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start ctsyncd");
            self.daemons.push(child);
            wait_for(Duration::from_secs(10), || self.cli(i, &["-s"]).status.success())
                .unwrap_or_else(|| panic!("fw{} daemon did not start: {}", i + 1, self.log(i)));
        }
    }

    fn start_ftp_server(&mut self) {
        let root = self.dir.join("ftproot");
        let empty = self.dir.join("empty");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::write(root.join("payload"), vec![b'x'; PAYLOAD_LEN]).unwrap();
        let conf = self.dir.join("vsftpd.conf");
        let template = std::fs::read_to_string(lab_dir().join("vsftpd.conf.in")).unwrap();
        let text = template
            .replace("@LISTEN@", "10.0.2.2")
            .replace("@ROOT@", &root.display().to_string())
            .replace("@EMPTY@", &empty.display().to_string());
        std::fs::write(&conf, text).unwrap();
        let log = std::fs::File::create(self.dir.join("vsftpd.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", self.srv.name(), "vsftpd"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vsftpd");
        self.daemons.push(child);
        wait_for(Duration::from_secs(5), || {
            self.srv.try_exec("ss -ltn | grep -q 10.0.2.2:21").status.success()
        })
        .expect("vsftpd did not listen");
    }

    fn cli(&self, i: usize, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", self.fw[i].name(), self.bin(i), "-C", &self.config(i)])
            .args(args)
            .output()
            .unwrap()
    }

    fn cli_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.cli(i, args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "ctsyncd {args:?}: {text}{}", self.log(i));
        text
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("fw{}.log", i + 1))).unwrap_or_default()
    }

    /// No unacknowledged bytes on either end of the FTP control
    /// connections (Send-Q is 0 on both sides), so nothing of them will be
    /// retransmitted after the route switch.
    fn control_quiescent(&self) -> bool {
        [&self.cl, &self.srv].iter().all(|ns| {
            let out = ns.try_exec("ss -tnH state established '( sport = :21 or dport = :21 )'");
            let text = String::from_utf8_lossy(&out.stdout);
            out.status.success()
                && text.lines().count() == 2
                && text.lines().all(|l| l.split_whitespace().nth(1) == Some("0"))
        })
    }

    fn external_expectations(&self, i: usize) -> u64 {
        if self.kinds[i] == Kind::Conntrackd {
            return self
                .cli_ok(i, &["-e", "expect"])
                .lines()
                .filter(|l| l.contains("proto=6"))
                .count() as u64;
        }
        let out = self.cli(i, &["-s", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        json["expectations"]["external"]["active"].as_u64().unwrap_or(0)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.daemons {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Strict forwarding: new connections only to the FTP control port, with
/// SYN; everything else only as established or related (the data
/// connection needs the helper's expectation). SNAT to the shared address.
fn ruleset() -> &'static str {
    r#"table inet ftpfw {
    ct helper ftp-standard {
        type "ftp" protocol tcp
        l3proto ip
    }
    chain pre {
        type filter hook prerouting priority filter;
        iifname "lan" tcp dport 21 ct helper set "ftp-standard"
    }
    chain forward_strict {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" tcp dport 21 tcp flags & (syn | ack) == syn ct state new accept
    }
}
table ip ftpnat {
    chain post {
        type nat hook postrouting priority srcnat;
        oifname "wan" snat to 10.0.2.1
    }
}"#
}

struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    fn start(ns: &Netns, mode: &str) -> Client {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "python3"])
            .arg(lab_dir().join("labtool.py"))
            .args(["ftp-client", mode, "10.0.2.2", "10.0.1.2"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the ftp client");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Client { child, stdin, stdout }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the scenario with one passive and one active session (two
/// control connections: the ftp helper keeps one expectation per
/// master); returns both clients' verdicts, fw2's commit output and the
/// lab.
fn ftp_across_failover(
    tag: &str,
    kinds: [Kind; 2],
    expectations: bool,
) -> ([String; 2], String, Lab) {
    let mut lab = Lab::new(tag, kinds, expectations);
    lab.start_ftp_server();
    lab.start_daemons();
    let mut clients = [Client::start(&lab.cl, "pasv"), Client::start(&lab.cl, "port")];
    for (client, want) in clients.iter_mut().zip(["PASV 10.0.2.2 ", "PORT 10.0.1.2 "]) {
        let line = client.line();
        assert!(line.starts_with(want), "client: {line:?}");
    }
    // fw2 holds both control connections (and, when synced, both
    // expectations).
    wait_for(Duration::from_secs(10), || lab.cli_ok(1, &["-e"]).matches("dport=21 ").count() == 2)
        .unwrap_or_else(|| panic!("control flows not synced: {}", lab.log(0)));
    if expectations {
        wait_for(Duration::from_secs(10), || lab.external_expectations(1) == 2)
            .unwrap_or_else(|| panic!("expectations not synced: {}", lab.log(0)));
    }
    // Every control segment must be acknowledged before the switch: a
    // retransmitted 227 reply crossing fw2 would let fw2's own ftp helper
    // (committed with the control flow) create the expectation itself,
    // and the negative control would pass for the wrong reason.
    wait_for(Duration::from_secs(10), || lab.control_quiescent())
        .expect("control connections still had unacknowledged data");
    lab.route_via(2);
    let mut commit = lab.cli_ok(1, &["-c"]);
    if kinds[1] == Kind::Conntrackd && expectations {
        // conntrackd 1.4.7's plain -c commits the flows only (VyOS's
        // notify script runs `-c exp` after it for this reason).
        commit += &lab.cli_ok(1, &["-c", "expect"]);
    }
    for client in &mut clients {
        client.stdin.write_all(b"go\n").unwrap();
    }
    let verdicts = clients.map(|mut c| c.line());
    (verdicts, commit, lab)
}

fn skip() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return true;
    }
    if Command::new("vsftpd").arg("-v").stdin(Stdio::null()).output().is_err() {
        eprintln!("skipped: vsftpd is not installed (scripts/setup.sh installs it)");
        return true;
    }
    false
}

#[test]
fn passive_and_active_ftp_survive_a_failover_with_expectation_sync() {
    if skip() {
        return;
    }
    let (verdicts, commit, lab) = ftp_across_failover("ftpx", [Kind::Ctsyncd; 2], true);
    println!("{commit}{verdicts:?}");
    assert!(commit.contains("committed 2 expectations: 2 created"), "{commit}{}", lab.log(1));
    let ok = format!("OK {PAYLOAD_LEN}");
    assert_eq!(verdicts, [ok.clone(), ok], "fw2: {}", lab.log(1));
    // fw2 lists what it committed: both carry the helper's NAT state (the
    // original port, and the function that NATs the data connection like
    // its master), the active one back towards the client (dir 1, reply).
    let listed = lab.cli_ok(1, &["-e", "expect"]);
    assert_eq!(listed.matches("helper=ftp").count(), 2, "{listed}");
    assert_eq!(listed.matches("fn=nat-follow-master").count(), 2, "{listed}");
    assert!(
        listed.contains("src=10.0.2.2 dst=10.0.2.1 ") && listed.contains("nat-dir=1"),
        "{listed}"
    );
}

#[test]
fn passive_and_active_ftp_fail_after_a_failover_without_expectation_sync() {
    if skip() {
        return;
    }
    let (verdicts, commit, _lab) = ftp_across_failover("ftpn", [Kind::Ctsyncd; 2], false);
    println!("{commit}{verdicts:?}");
    assert!(!commit.contains("expectations"), "{commit}");
    for v in &verdicts {
        assert!(v.starts_with("FAIL"), "a data connection passed without expectation sync: {v}");
    }
}

/// conntrackd's `ExpectationSync` on fw1, ctsyncd over conntrackd's wire
/// format on fw2: conntrackd's EXP messages are understood and committed.
#[test]
fn expectations_from_conntrackd_are_committed_by_ctsyncd() {
    if skip() {
        return;
    }
    let (verdicts, commit, lab) =
        ftp_across_failover("ftpcx", [Kind::Conntrackd, Kind::Ctsyncd], true);
    println!("{commit}{verdicts:?}");
    assert!(commit.contains("committed 2 expectations: 2 created"), "{commit}{}", lab.log(1));
    let ok = format!("OK {PAYLOAD_LEN}");
    assert_eq!(verdicts, [ok.clone(), ok], "fw1: {}\nfw2: {}", lab.log(0), lab.log(1));
}

/// ctsyncd on fw1 sending conntrackd's EXP messages; conntrackd on fw2
/// takes them and commits them with its own `-c expect`. Only the passive
/// transfer is asserted: conntrackd 1.4.7 commits expectations without
/// their NAT state (`CTA_EXPECT_NAT`, `CTA_EXPECT_FN`), so an active
/// transfer behind SNAT fails on a conntrackd backup whoever sent it (a
/// conntrackd pair fails the same way).
#[test]
fn expectations_from_ctsyncd_are_committed_by_conntrackd() {
    if skip() {
        return;
    }
    let (verdicts, commit, lab) =
        ftp_across_failover("ftpxc", [Kind::Ctsyncd, Kind::Conntrackd], true);
    println!("{commit}{verdicts:?}");
    assert!(
        commit.contains("Committed 2 new expectations")
            || lab.log(1).contains("Committed 2 new expectations"),
        "{commit}{}",
        lab.log(1)
    );
    let kernel = lab.fw[1].exec("conntrack -L 2>&1; conntrack -L expect 2>&1");
    assert_eq!(
        verdicts[0],
        format!("OK {PAYLOAD_LEN}"),
        "fw2 kernel: {kernel}\nfw2: {}",
        lab.log(1)
    );
}
