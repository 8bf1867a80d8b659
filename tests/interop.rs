//! ctsyncd paired with the real conntrackd 1.4 (`/usr/sbin/conntrackd`)
//! over conntrackd's own FTFW wire format, in two firewall namespaces
//! joined by a sync link (docs/PROTOCOL.md, "conntrackd compatibility").
//!
//! Needs root and conntrackd. Every test builds its own namespaces and
//! removes them; only the processes it started are killed.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ctsync::flow::{Dir, Flow, proto, status, tcp_state};
use ctsync::netlink::{CommitOptions, Kernel};

mod common;
use common::{Netns, in_netns, run_ok as run, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_ctsyncd");
const CONNTRACKD: &str = "/usr/sbin/conntrackd";

/// Which daemon runs on a firewall.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Ctsyncd,
    Conntrackd,
}

/// fw1 and fw2 joined by `sync0` (10.255.0.1/.2, port 3780), one daemon
/// of each kind.
struct Mixed {
    fw: [Netns; 2],
    kinds: [Kind; 2],
    dir: PathBuf,
    daemons: [Option<Child>; 2],
}

impl Mixed {
    fn new(tag: &str, kinds: [Kind; 2]) -> Mixed {
        let fw = [Netns::new(&format!("{tag}-fw1")), Netns::new(&format!("{tag}-fw2"))];
        let dir = std::env::temp_dir().join(format!("ctsync-interop-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        run(Command::new("ip").args(["link", "add", "sync0", "netns", fw[0].name()]).args([
            "type",
            "veth",
            "peer",
            "name",
            "sync0",
            "netns",
            fw[1].name(),
        ]));
        for (i, ns) in fw.iter().enumerate() {
            let n = i + 1;
            let peer = 2 - i;
            ns.exec(&format!("ip addr add 10.255.0.{n}/30 dev sync0 && ip link set sync0 up"));
            let d = dir.display();
            let yaml = format!(
                "general:\n  lock_file: {d}/fw{n}.lock\n  control_socket: {d}/fw{n}.sock\n\
                 sync:\n  wire: conntrackd\n  channels:\n    - type: udp\n      local: 10.255.0.{n}\n      peer: 10.255.0.{peer}\n      interface: sync0\n"
            );
            std::fs::write(dir.join(format!("fw{n}.yaml")), yaml).unwrap();
            let conf = format!(
                "Sync {{\n\tMode FTFW {{\n\t}}\n\tUDP {{\n\t\tIPv4_address 10.255.0.{n}\n\
                 \t\tIPv4_Destination_Address 10.255.0.{peer}\n\t\tPort 3780\n\t\tInterface sync0\n\
                 \t\tChecksum on\n\t}}\n}}\nGeneral {{\n\tHashSize 65536\n\tHashLimit 262144\n\
                 \tLockFile {d}/fw{n}.cd.lock\n\tLogFile {d}/fw{n}.cd.log\n\tSystemd off\n\
                 \tUNIX {{\n\t\tPath {d}/fw{n}.ctl\n\t}}\n\tNetlinkBufferSize 8388608\n\
                 \tNetlinkBufferSizeMaxGrowth 67108864\n\tFilter From Userspace {{\n\
                 \t\tAddress Ignore {{\n\t\t\tIPv4_address 10.255.0.0/30\n\t\t}}\n\t}}\n}}\n"
            );
            std::fs::write(dir.join(format!("fw{n}.conf")), conf).unwrap();
        }
        Mixed { fw, kinds, dir, daemons: [None, None] }
    }

    fn config(&self, i: usize) -> String {
        let ext = if self.kinds[i] == Kind::Ctsyncd { "yaml" } else { "conf" };
        self.dir.join(format!("fw{}.{ext}", i + 1)).display().to_string()
    }

    fn start(&mut self, i: usize) {
        let log = std::fs::File::create(self.dir.join(format!("fw{}.out", i + 1))).unwrap();
        let bin = if self.kinds[i] == Kind::Ctsyncd { BIN } else { CONNTRACKD };
        let child = Command::new("ip")
            .args(["netns", "exec", self.fw[i].name(), bin, "-C", &self.config(i)])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start daemon");
        self.daemons[i] = Some(child);
        wait_for(Duration::from_secs(10), || self.cli(i, &["-s"]).status.success())
            .unwrap_or_else(|| panic!("fw{} daemon did not start: {}", i + 1, self.log(i)));
    }

    /// SIGTERM the daemon we started, wait for it.
    fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.daemons[i].take() {
            // `ip netns exec` execs the daemon: the child's pid is its pid.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    fn log(&self, i: usize) -> String {
        let mut s =
            std::fs::read_to_string(self.dir.join(format!("fw{}.out", i + 1))).unwrap_or_default();
        s += &std::fs::read_to_string(self.dir.join(format!("fw{}.cd.log", i + 1)))
            .unwrap_or_default();
        s.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    }

    /// The same client flags work for both daemons.
    fn cli(&self, i: usize, args: &[&str]) -> Output {
        let bin = if self.kinds[i] == Kind::Ctsyncd { BIN } else { CONNTRACKD };
        Command::new("ip")
            .args(["netns", "exec", self.fw[i].name(), bin, "-C", &self.config(i)])
            .args(args)
            .output()
            .unwrap()
    }

    fn cli_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.cli(i, args);
        assert!(
            out.status.success(),
            "{args:?} on fw{} failed: {}{}\nlog: {}",
            i + 1,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log(i)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The external cache of fw`i` as original-tuple views (conntrackd's
    /// `-e` prints no reply tuple).
    fn external(&self, i: usize) -> BTreeSet<String> {
        self.cli_ok(i, &["-e"]).lines().filter(|l| !l.trim().is_empty()).map(orig_view).collect()
    }

    /// fw`i`'s kernel table through `conntrack -L`, without the sync
    /// link's own flows: full lines without timeout and use count.
    fn kernel(&self, i: usize) -> BTreeSet<String> {
        let out =
            self.fw[i].exec("conntrack -L -f ipv4 2>/dev/null; conntrack -L -f ipv6 2>/dev/null");
        out.lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("src=10.255.0."))
            .map(full_view)
            .collect()
    }

    /// Wait until fw`to`'s external cache matches fw`from`'s kernel.
    fn converge(&self, from: usize, within: Duration) -> Duration {
        let to = 1 - from;
        let t0 = Instant::now();
        let mut last = (BTreeSet::new(), BTreeSet::new());
        let ok = wait_for(within, || {
            let want: BTreeSet<String> = self.kernel(from).iter().map(|l| orig_view(l)).collect();
            last = (want, self.external(to));
            last.0 == last.1
        });
        if ok.is_none() {
            let missing: Vec<_> = last.0.difference(&last.1).take(5).collect();
            let extra: Vec<_> = last.1.difference(&last.0).take(5).collect();
            panic!(
                "fw{}'s external cache ({:?}) did not converge to fw{}'s kernel ({} vs {} flows)\nmissing: {missing:#?}\nextra: {extra:#?}\nlog fw1: {}\nlog fw2: {}\nstats fw1: {}\nstats fw2: {}",
                to + 1,
                self.kinds[to],
                from + 1,
                last.1.len(),
                last.0.len(),
                self.log(0),
                self.log(1),
                String::from_utf8_lossy(&self.cli(0, &["-s"]).stdout),
                String::from_utf8_lossy(&self.cli(1, &["-s"]).stdout),
            );
        }
        t0.elapsed()
    }

    /// Commit fw`to`'s external cache and check its kernel now holds
    /// exactly fw`from`'s flows, reply tuples (NAT) included.
    fn commit_and_compare(&self, from: usize) {
        let to = 1 - from;
        // Start from an empty table so that flows committed before and
        // destroyed since do not count.
        self.fw[to].exec("conntrack -F 2>/dev/null");
        self.cli_ok(to, &["-c"]);
        let want = self.kernel(from);
        assert!(want.len() > 20, "too few flows to compare: {want:?}");
        let mut got = BTreeSet::new();
        let ok = wait_for(Duration::from_secs(10), || {
            got = self.kernel(to);
            got == want
        });
        if ok.is_none() {
            let missing: Vec<_> = want.difference(&got).take(5).collect();
            let extra: Vec<_> = got.difference(&want).take(5).collect();
            panic!(
                "fw{}'s kernel after commit differs from fw{}'s\nmissing: {missing:#?}\nextra: {extra:#?}",
                to + 1,
                from + 1
            );
        }
    }

    fn commit_flows(&self, i: usize, flows: Vec<Flow>) {
        in_netns(self.fw[i].name(), move || {
            let mut k = Kernel::open().unwrap();
            let report = k
                .commit(
                    flows.iter(),
                    &CommitOptions { timeout: None, be_liberal: false, create_only: false },
                )
                .unwrap();
            assert!(report.failed.is_empty(), "{:?}", &report.failed[..report.failed.len().min(5)]);
        })
    }

    fn delete_flows(&self, i: usize, flows: Vec<Flow>) {
        in_netns(self.fw[i].name(), move || {
            let keys: Vec<_> = flows.iter().map(Flow::key).collect();
            let report = Kernel::open().unwrap().delete(keys.iter()).unwrap();
            assert!(report.failed.is_empty(), "{:?}", &report.failed[..report.failed.len().min(5)]);
        })
    }

    /// Drop 10 % of the sync datagrams arriving at fw`i`.
    fn lossy(&self, i: usize) {
        self.fw[i].exec(
            "nft add table netdev loss && nft add chain netdev loss in '{ type filter hook ingress device sync0 priority 0; }' && nft add rule netdev loss in udp dport 3780 numgen random mod 100 '<' 10 counter drop",
        );
    }

    /// Remove the loss rule; returns how many datagrams it dropped.
    fn lossless(&self, i: usize) -> u64 {
        let rules = self.fw[i].exec("nft list table netdev loss");
        self.fw[i].exec("nft delete table netdev loss");
        rules
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Mixed {
    fn drop(&mut self) {
        self.stop(0);
        self.stop(1);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `conntrack -L` line without its timeout and use count.
fn full_view(line: &str) -> String {
    let mut out = Vec::new();
    for (i, tok) in line.split_whitespace().enumerate() {
        if (i == 2 && tok.parse::<u32>().is_ok()) || tok.starts_with("use=") {
            continue;
        }
        out.push(tok);
    }
    out.join(" ")
}

/// What both `conntrack -L` and a daemon's `-e` show: protocol, state,
/// the original tuple, the status words, a non-zero mark and the zone.
fn orig_view(line: &str) -> String {
    let mut out = Vec::new();
    let mut tuples = 0;
    let mut in_since = false;
    for (i, tok) in line.split_whitespace().enumerate() {
        if i < 2 {
            out.push(tok.to_owned());
            continue;
        }
        if in_since {
            in_since = !tok.ends_with(']');
            continue;
        }
        if tok == "[active" {
            in_since = true;
            continue;
        }
        if let Some((key, value)) = tok.split_once('=') {
            if key == "src" {
                tuples += 1;
            }
            let keep = match key {
                "src" | "dst" | "sport" | "dport" | "type" | "code" | "id" => tuples <= 1,
                "mark" => value != "0",
                "zone" => true,
                _ => false,
            };
            if keep {
                out.push(tok.to_owned());
            }
        } else if tok == "[UNREPLIED]" || tok == "[ASSURED]" {
            out.push(tok.to_owned());
        } else if i == 2 && tok.parse::<u32>().is_ok() {
            // the timeout
        } else if tok.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            out.push(tok.to_owned());
        }
    }
    out.join(" ")
}

fn tcp_flow(i: u32) -> Flow {
    let mut f = Flow::new_v4(
        proto::TCP,
        Ipv4Addr::from(0x0a01_0000 + i),
        Ipv4Addr::new(198, 51, 100, 7),
        (1024 + i % 60000) as u16,
        443,
    );
    f.proto_state = tcp_state::ESTABLISHED;
    f.status = status::CONFIRMED | status::SEEN_REPLY | status::ASSURED;
    f.timeout = 600;
    f.mark = i % 7;
    f
}

fn snat_flow(i: u32) -> Flow {
    let mut f = tcp_flow(i);
    let nat = Ipv4Addr::new(203, 0, 113 + (i / 60000) as u8, 5);
    f.set_addrs(Dir::Reply, Ipv4Addr::new(198, 51, 100, 7).into(), nat.into());
    f.l4[3] = 1024 + (i % 60000) as u16;
    f.status |= status::SRC_NAT | status::SRC_NAT_DONE;
    f
}

/// TCP (some with SNAT and port translation), UDP, ICMP, marks, IPv6.
fn mixed_flows() -> Vec<Flow> {
    let mut flows: Vec<Flow> = (0..20).map(tcp_flow).collect();
    flows.extend((20..30).map(snat_flow));
    let mut udp =
        Flow::new_v4(proto::UDP, [10, 2, 0, 1].into(), [198, 51, 100, 53].into(), 5000, 53);
    udp.timeout = 120;
    udp.mark = 0x42;
    flows.push(udp);
    let mut v6 = Flow::new(
        proto::TCP,
        "2001:db8::1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
        40000,
        22,
    );
    v6.proto_state = tcp_state::ESTABLISHED;
    v6.status |= status::SEEN_REPLY | status::ASSURED;
    v6.timeout = 600;
    flows.push(v6);
    flows
}

/// Made with conntrack's own CLI, as an operator would.
const CLI_FLOWS: &str = "conntrack -I -p udp -s 10.3.0.1 -d 10.3.0.2 --sport 4000 --dport 4001 -t 100 -m 3 && \
     conntrack -I -p icmp -s 10.4.0.1 -d 10.4.0.2 --icmp-type 8 --icmp-code 0 --icmp-id 4660 -t 60 && \
     conntrack -I -p icmpv6 -s 2001:db8::5 -d 2001:db8::6 --icmpv6-type 128 --icmpv6-code 0 --icmpv6-id 77 -t 60";

/// Flows made on the sender appear in the receiver's external cache, its
/// commit reproduces them (NAT included), updates and destroys follow.
fn replicate(sender: usize, kinds: [Kind; 2], tag: &str) {
    let mut m = Mixed::new(tag, kinds);
    m.start(1 - sender);
    m.start(sender);
    let flows = mixed_flows();
    m.commit_flows(sender, flows.clone());
    m.fw[sender].exec(CLI_FLOWS);
    m.converge(sender, Duration::from_secs(15));
    m.commit_and_compare(sender);
    // Updates (mark) and destroys follow.
    let mut changed: Vec<Flow> = flows[..10].to_vec();
    for f in &mut changed {
        f.mark = 99;
    }
    m.commit_flows(sender, changed);
    m.delete_flows(sender, flows[10..15].to_vec());
    m.fw[sender].exec("conntrack -D -p icmp -s 10.4.0.1 >/dev/null 2>&1");
    m.converge(sender, Duration::from_secs(15));
    m.commit_and_compare(sender);
}

#[test]
fn ctsyncd_to_conntrackd_replicates_commits_updates_destroys() {
    replicate(0, [Kind::Ctsyncd, Kind::Conntrackd], "c2d");
}

#[test]
fn conntrackd_to_ctsyncd_replicates_commits_updates_destroys() {
    replicate(0, [Kind::Conntrackd, Kind::Ctsyncd], "d2c");
}

/// A 10k-flow burst through a sync link that drops 10 % of the datagrams
/// arriving at the receiver.
fn burst_with_loss(kinds: [Kind; 2], tag: &str) -> Result<Duration, String> {
    let mut m = Mixed::new(tag, kinds);
    m.start(1);
    m.start(0);
    m.lossy(1);
    m.lossy(0);
    let flows: Vec<Flow> =
        (0..10_000).map(|i| if i % 10 == 0 { snat_flow(i) } else { tcp_flow(i) }).collect();
    m.commit_flows(0, flows);
    let t0 = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m.converge(0, Duration::from_secs(30));
    }));
    let took = t0.elapsed();
    let dropped = m.lossless(0) + m.lossless(1);
    assert!(dropped > 0, "the loss rule dropped nothing");
    r.map(|_| took).map_err(|e| {
        e.downcast_ref::<String>().cloned().unwrap_or_else(|| "no convergence".to_owned())
    })
}

#[test]
fn ctsyncd_as_sender_converges_through_ten_percent_loss() {
    let took = burst_with_loss([Kind::Ctsyncd, Kind::Conntrackd], "loss-c2d").unwrap();
    eprintln!("10k flows, 10% loss, ctsyncd -> conntrackd: converged in {took:?}");
}

#[test]
fn conntrackd_as_sender_converges_through_ten_percent_loss() {
    // Our NACKs and ACKs are sequenced and resent when conntrackd NACKs
    // them, so its resend queue recovers every loss at this rate.
    let took = burst_with_loss([Kind::Conntrackd, Kind::Ctsyncd], "loss-d2c").unwrap();
    eprintln!("10k flows, 10% loss, conntrackd -> ctsyncd: converged in {took:?}");
}

/// Restart either side: the pair converges again. A restarted ctsyncd
/// asks conntrackd for its table (as StartupResync) and sends its own; a
/// restarted conntrackd gets ctsyncd's table when its HELLO arrives, and
/// is asked for its own.
#[test]
fn restarts_of_either_side_reconverge() {
    let mut m = Mixed::new("restart", [Kind::Ctsyncd, Kind::Conntrackd]);
    m.start(1);
    m.start(0);
    m.commit_flows(0, (0..200).map(tcp_flow).collect());
    m.commit_flows(1, (1000..1100).map(snat_flow).collect());
    m.converge(0, Duration::from_secs(15));
    m.converge(1, Duration::from_secs(15));
    // conntrackd restarts: it forgets its external cache.
    m.stop(1);
    m.commit_flows(0, (200..300).map(tcp_flow).collect());
    m.start(1);
    let took = m.converge(0, Duration::from_secs(15));
    eprintln!("restarted conntrackd got ctsyncd's table in {took:?}");
    m.converge(1, Duration::from_secs(15));
    // It came back on a new ephemeral port, which ctsyncd follows once the
    // old one has been silent for half sync.peer_timeout: its new flows
    // arrive.
    m.commit_flows(1, (1150..1160).map(snat_flow).collect());
    let took = m.converge(1, Duration::from_secs(15));
    eprintln!("the restarted conntrackd's new flows arrived in {took:?}");
    let log = std::fs::read_to_string(m.dir.join("fw1.out")).unwrap();
    assert!(log.contains("peer now sends from port"), "{log}");
    for line in log.lines().filter(|l| l.contains("sends from")) {
        eprintln!("ctsyncd: {line}");
    }
    // ctsyncd restarts: it asks conntrackd for its table.
    m.stop(0);
    m.commit_flows(1, (1100..1150).map(snat_flow).collect());
    m.start(0);
    let took = m.converge(1, Duration::from_secs(15));
    eprintln!("restarted ctsyncd got conntrackd's table in {took:?}");
    m.commit_flows(0, (300..350).map(tcp_flow).collect());
    m.converge(0, Duration::from_secs(15));
}

/// A `-s` line with its numbers (and the spaces that pad them) as `N`:
/// what a script parsing the line relies on.
fn stats_shape(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ' ' || c.is_ascii_digit() {
            let mut run = String::from(c);
            while let Some(&n) = chars.peek().filter(|n| **n == ' ' || n.is_ascii_digit()) {
                run.push(n);
                chars.next();
            }
            // Padding before a number goes with it; a lone space stays.
            let trimmed = run.trim_start_matches(' ');
            let digits: String = trimmed.chars().take_while(char::is_ascii_digit).collect();
            if digits.is_empty() {
                out.push_str(&run);
            } else {
                out.push('N');
                out.push_str(&trimmed[digits.len()..]);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `ctsyncd -s [SECTION]` prints the lines `conntrackd -s [SECTION]`
/// prints, with the same labels, tabs and layout (numbers aside), so that
/// a script that parses conntrackd's statistics reads ours. ctsyncd does
/// not list the messages of its resend queue one by one.
#[test]
fn stats_sections_have_conntrackds_lines() {
    let mut mixed = Mixed::new("stats", [Kind::Ctsyncd, Kind::Conntrackd]);
    mixed.start(0);
    mixed.start(1);
    // Both see the new veth's carrier (it comes up within a second).
    for i in [0, 1] {
        wait_for(Duration::from_secs(5), || {
            mixed.cli_ok(i, &["-s", "link"]).contains("status=RUNNING")
        })
        .unwrap_or_else(|| panic!("fw{}: {}", i + 1, mixed.cli_ok(i, &["-s", "link"])));
    }
    let mut report = String::new();
    for section in [
        None,
        Some("network"),
        Some("cache"),
        Some("runtime"),
        Some("link"),
        Some("rsqueue"),
        Some("queue"),
        Some("process"),
    ] {
        let args: Vec<&str> = std::iter::once("-s").chain(section).collect();
        let ours: BTreeSet<String> = mixed.cli_ok(0, &args).lines().map(stats_shape).collect();
        let theirs = mixed.cli_ok(1, &args);
        // `-s rsqueue` also lists the messages awaiting acknowledgement
        // at that moment ("control -> seq:..."): contents, not layout.
        let layout = theirs.lines().filter(|l| !l.contains(" -> seq:"));
        for line in layout.map(stats_shape) {
            if !ours.contains(&line) {
                report += &format!("-s {}: {line:?}\n", section.unwrap_or(""));
            }
        }
    }
    assert!(report.is_empty(), "lines of conntrackd's -s that ctsyncd lacks:\n{report}");
}
