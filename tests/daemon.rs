//! Two `ctsyncd` daemons in two firewall namespaces joined by a sync link,
//! against the real kernel: replication, commit, restarts, operator flags,
//! hostile datagrams and netlink overruns.
//!
//! Needs root. Every test builds its own namespaces and removes them.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ctsync::flow::{Dir, Flow, proto, status, tcp_state};
use ctsync::netlink::{CommitOptions, Kernel};

mod common;
use common::{Netns, in_netns, run_ok as run, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_ctsyncd");

/// fw1 and fw2, each with a daemon, joined by `sync0` (10.255.0.1/.2).
struct Pair {
    fw: [Netns; 2],
    dir: PathBuf,
    daemons: [Option<Child>; 2],
    /// Extra daemon flags.
    args: Vec<String>,
}

impl Pair {
    fn new(tag: &str) -> Pair {
        Pair::with_config(tag, "")
    }

    /// `extra` is YAML appended under `general:` of both configs.
    fn with_config(tag: &str, extra_general: &str) -> Pair {
        Pair::with_options(tag, extra_general, "", &[])
    }

    /// As [`Pair::with_config`], with YAML under `sync:` and daemon flags.
    fn with_options(tag: &str, extra_general: &str, extra_sync: &str, args: &[&str]) -> Pair {
        Pair::with_auth(tag, extra_general, extra_sync, args, ["", ""])
    }

    /// As [`Pair::with_options`], with more keys in each side's
    /// `sync.auth` flow mapping (after `key_file`), e.g. `, encrypt: true`.
    fn with_auth(
        tag: &str,
        extra_general: &str,
        extra_sync: &str,
        args: &[&str],
        extra_auth: [&str; 2],
    ) -> Pair {
        let fw = [Netns::new(&format!("{tag}-fw1")), Netns::new(&format!("{tag}-fw2"))];
        let dir = std::env::temp_dir().join(format!("ctsync-test-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The shared key, as the operator makes it: root's, mode 0600.
        let key = dir.join("sync.key");
        std::fs::write(&key, format!("1 {}\n", "5c".repeat(32))).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
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
            ns.exec(&format!(
                "ip addr add 10.255.0.{}/30 dev sync0 && ip link set sync0 up",
                i + 1
            ));
            let peer = 2 - i;
            std::fs::write(
                dir.join(format!("fw{}.yaml", i + 1)),
                format!(
                    "general:\n  lock_file: {d}/fw{n}.lock\n  control_socket: {d}/fw{n}.sock\n{extra_general}\
                     sync:\n{extra_sync}  auth: {{ key_file: {d}/sync.key{auth} }}\n  channels:\n    - type: udp\n      local: 10.255.0.{n}\n      peer: 10.255.0.{peer}\n      interface: sync0\n",
                    d = dir.display(),
                    n = i + 1,
                    auth = extra_auth[i],
                ),
            )
            .unwrap();
        }
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut pair = Pair { fw, dir, daemons: [None, None], args };
        pair.start(0);
        pair.start(1);
        pair
    }

    fn config(&self, i: usize) -> String {
        self.dir.join(format!("fw{}.yaml", i + 1)).display().to_string()
    }

    fn start(&mut self, i: usize) {
        self.start_with_env(i, &[]);
    }

    /// Start fw`i`'s daemon with more environment variables.
    fn start_with_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.dir.join(format!("fw{}.log", i + 1))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", self.fw[i].name(), BIN, "-C", &self.config(i)])
            .args(&self.args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ctsyncd");
        self.daemons[i] = Some(child);
        wait_for(Duration::from_secs(10), || self.cli(i, &["-s"]).status.success())
            .unwrap_or_else(|| panic!("fw{} daemon did not start: {}", i + 1, self.log(i)));
    }

    /// Stop a daemon with SIGTERM and wait for it.
    fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.daemons[i].take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    /// Kill a daemon with SIGKILL, as a crash would, and wait for it: it
    /// cannot withdraw anything it published.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.daemons[i].take() {
            // `ip netns exec` execs the daemon, so the child is the daemon.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("fw{}.log", i + 1))).unwrap_or_default()
    }

    fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", self.fw[i].name(), BIN, "-C", &self.config(i)])
            .args(args)
            .output()
            .unwrap()
    }

    fn cli_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.cli(i, args);
        assert!(
            out.status.success(),
            "ctsyncd {args:?} on fw{} failed: {}{}\nlog: {}",
            i + 1,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log(i)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The flows of a cache (`-i` or `-e`) as sorted conntrack-style lines
    /// without the timeout, which ticks.
    fn cache_lines(&self, i: usize, flag: &str) -> BTreeSet<String> {
        self.cli_ok(i, &[flag]).lines().filter(|l| !l.is_empty()).map(strip_timeout).collect()
    }

    /// Flows of fw`i`'s kernel as the same kind of lines, without the sync
    /// link's own flow (the daemons ignore it by default).
    fn kernel_lines(&self, i: usize) -> BTreeSet<String> {
        in_netns(self.fw[i].name(), || {
            let mut k = Kernel::open().unwrap();
            k.dump()
                .unwrap()
                .iter()
                .map(|f| strip_timeout(&f.to_string()))
                .filter(|l| !l.contains("src=10.255.0."))
                .collect()
        })
    }

    fn delete_flows(&self, i: usize, flows: Vec<Flow>) {
        in_netns(self.fw[i].name(), move || {
            let keys: Vec<_> = flows.iter().map(Flow::key).collect();
            let report = Kernel::open().unwrap().delete(keys.iter()).unwrap();
            assert!(report.failed.is_empty(), "{:?}", &report.failed[..report.failed.len().min(5)]);
        })
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

    /// Wait until fw2's external cache equals fw1's kernel table.
    fn converge(&self, from: usize, within: Duration) {
        let to = 1 - from;
        let mut last = (BTreeSet::new(), BTreeSet::new());
        let ok = wait_for(within, || {
            last = (self.kernel_lines(from), self.cache_lines(to, "-e"));
            last.0 == last.1
        });
        if ok.is_none() {
            let missing: Vec<_> = last.0.difference(&last.1).take(5).collect();
            let extra: Vec<_> = last.1.difference(&last.0).take(5).collect();
            panic!(
                "fw{}'s external cache did not converge to fw{}'s kernel ({} vs {} flows)\nmissing: {missing:#?}\nextra: {extra:#?}\nlog fw1: {}\nlog fw2: {}\nstats fw1: {}\nstats fw2: {}",
                to + 1,
                from + 1,
                last.1.len(),
                last.0.len(),
                self.log(0),
                self.log(1),
                self.cli_ok(0, &["-s", "--json"]),
                self.cli_ok(1, &["-s", "--json"]),
            );
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop(0);
        self.stop(1);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Drop the timeout (third field), which differs between a kernel and a
/// cache snapshot of the same flow.
fn strip_timeout(line: &str) -> String {
    let mut fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() > 2 {
        fields.remove(2);
    }
    fields.join(" ")
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
    // A reply tuple unique per flow: two SNAT flows with one reply tuple
    // clash in the kernel.
    let nat = Ipv4Addr::new(203, 0, 113 + (i / 60000) as u8, 5);
    f.set_addrs(Dir::Reply, Ipv4Addr::new(198, 51, 100, 7).into(), nat.into());
    f.l4[3] = 1024 + (i % 60000) as u16;
    f
}

#[test]
fn flows_updates_and_destroys_reach_the_peer_and_commit_into_its_kernel() {
    let pair = Pair::new("repl");
    let mut flows: Vec<Flow> = (0..50).map(tcp_flow).collect();
    flows.extend((50..60).map(snat_flow));
    let mut udp =
        Flow::new_v4(proto::UDP, [10, 2, 0, 1].into(), [198, 51, 100, 53].into(), 5000, 53);
    udp.timeout = 120;
    flows.push(udp);
    pair.commit_flows(0, flows.clone());
    // conntrack's own CLI, as an operator would.
    pair.fw[0].exec("conntrack -I -p udp -s 10.3.0.1 -d 10.3.0.2 --sport 4000 --dport 4001 -t 100");
    pair.converge(0, Duration::from_secs(10));
    assert_eq!(pair.cache_lines(1, "-e").len(), 62);

    // Updates (mark) and destroys follow.
    pair.fw[0].exec("conntrack -U -s 10.1.0.3 -m 42");
    pair.fw[0].exec("conntrack -D -s 10.1.0.4");
    pair.converge(0, Duration::from_secs(10));
    let ext = pair.cache_lines(1, "-e");
    assert!(ext.iter().any(|l| l.contains("src=10.1.0.3 ") && l.contains("mark=42")), "{ext:#?}");
    assert!(!ext.iter().any(|l| l.contains("src=10.1.0.4 ")));

    // Commit into fw2's kernel: same tuples (NAT included), states, marks.
    let before = pair.kernel_lines(1);
    assert!(before.is_empty(), "{before:#?}");
    let out = pair.cli_ok(1, &["-c"]);
    assert!(out.contains("61 created"), "{out}");
    let committed = pair.kernel_lines(1);
    let source = pair.kernel_lines(0);
    // Committed TCP flows are BE_LIBERAL and get the commit timeout; the
    // one-line form shows neither, so the sets must be equal.
    assert_eq!(committed, source);
}

#[test]
fn a_hundred_thousand_flows_converge_exactly_and_commit() {
    let pair = Pair::new("bulk");
    let flows: Vec<Flow> =
        (0..100_000).map(|i| if i % 10 == 0 { snat_flow(i) } else { tcp_flow(i) }).collect();
    pair.commit_flows(0, flows);
    pair.converge(0, Duration::from_secs(60));
    let out = pair.cli_ok(1, &["-c"]);
    println!("fw2 -c of 100k flows: {out}");
    assert!(out.contains("100000 created"), "{out}");
    assert_eq!(pair.kernel_lines(1), pair.kernel_lines(0));
}

#[test]
fn restarts_of_either_daemon_reconverge() {
    let mut pair = Pair::new("rst");
    pair.commit_flows(0, (0..200).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));

    // fw2 restarts: it comes back empty and must get everything again.
    pair.stop(1);
    pair.commit_flows(0, (200..300).map(tcp_flow).collect());
    pair.start(1);
    pair.converge(0, Duration::from_secs(15));

    // fw1 restarts while flows die: fw2 must drop what fw1 lost meanwhile.
    pair.stop(0);
    pair.delete_flows(0, (0..100).map(tcp_flow).collect());
    pair.start(0);
    pair.converge(0, Duration::from_secs(15));
    assert_eq!(pair.cache_lines(1, "-e").len(), 200);
}

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
    let resync = pair.cli_ok(0, &["-R"]);
    // Only the seconds left moved since the flows were made: nothing to
    // tell the peer.
    assert!(resync.contains("200000 flows, 0 new or changed, 0 gone"), "{resync}");
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
fn garbage_datagrams_are_dropped_and_counted_and_sync_goes_on() {
    let pair = Pair::new("junk");
    pair.commit_flows(0, (0..10).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));
    // From the peer's own address and port (so the source check lets them
    // through): random bytes, a truncated header, and a valid-looking
    // header with a bad checksum.
    let mut random = [0u8; 1400];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .unwrap();
    let spoofer = Spoofer::open(&pair.fw[0]);
    for i in 0..200 {
        spoofer.send(3780, &random[..i * 7 % 1400 + 1]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    spoofer.send(3780, b"CT\x01").unwrap();
    pair.commit_flows(0, (10..30).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));
    let stats: serde_json::Value =
        serde_json::from_str(&pair.cli_ok(1, &["-s", "--json"])).unwrap();
    let proto = &stats["protocol"];
    let dropped: u64 = proto
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.contains("drop") || k.contains("bad") || k.contains("malformed"))
        .filter_map(|(_, v)| v.as_u64())
        .sum();
    assert!(dropped >= 200, "{proto:#}");
}

#[test]
fn datagrams_with_a_wrong_key_are_dropped_as_bad_mac_and_sync_goes_on() {
    use ctsync::wire::native::{AuthKey, HEADER_LEN, NativeCodec, emit_message};
    use ctsync::wire::{Codec, DatagramHeader, MessageRef};
    let pair = Pair::new("badmac");
    pair.commit_flows(0, (0..10).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));
    // Well-formed flow updates from the peer's own address, with the right
    // key id and CRC but another secret: what an attacker on the link can
    // make without the key.
    let mut forger = NativeCodec::with_keys(vec![AuthKey::new(1, vec![0x5d; 32])]);
    let forged: Vec<Vec<u8>> = (0..50u32)
        .map(|i| {
            let f = tcp_flow(1000 + i);
            let mut buf = vec![0u8; 512];
            let end = HEADER_LEN
                + emit_message(&MessageRef::FlowUpdate(&f), &mut buf[HEADER_LEN..]).unwrap();
            let hdr = DatagramHeader { flags: 0, session: i, seq: i };
            let n = forger.finish(&hdr, 1, end, &mut buf).unwrap();
            buf.truncate(n);
            buf
        })
        .collect();
    let spoofer = Spoofer::open(&pair.fw[0]);
    for d in &forged {
        spoofer.send(3780, d).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    pair.commit_flows(0, (10..30).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));
    let stats: serde_json::Value =
        serde_json::from_str(&pair.cli_ok(1, &["-s", "--json"])).unwrap();
    let proto = &stats["protocol"];
    assert_eq!(proto["drop_bad_mac"].as_u64(), Some(50), "{proto:#}");
    assert_eq!(proto["drop_unknown_key"].as_u64(), Some(0), "{proto:#}");
    // converge() compared fw2's external cache with fw1's kernel exactly:
    // none of the forged flows was applied.
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

/// The first run of the issue: a missing key file passed --print-config and
/// stopped the start with a bare "cannot read". Now --check, --print-config
/// and the start each exit 2 naming the config line, the key and the path,
/// and say how to make the key; after --gen-key, --check passes.
#[test]
fn a_missing_key_file_is_named_with_its_line_by_check_print_config_and_the_start() {
    let dir = std::env::temp_dir().join(format!("ctsync-nokey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("sync.key");
    let cfg = dir.join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "general:\n  lock_file: {d}/l.lock\n  control_socket: {d}/c.sock\nsync:\n  auth:\n    key_file: {k}\n  channels:\n    - {{ local: 127.0.0.1, peer: 127.0.0.2 }}\n",
            d = dir.display(),
            k = key.display()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    for args in [&["--check"][..], &["--print-config"], &[]] {
        let out = Command::new(BIN).args(["-C", cfg]).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("c.yaml:6:15: sync.auth.key_file: {}", key.display())),
            "{args:?}: {err}"
        );
        assert!(err.contains(&format!("ctsyncd --gen-key {}", key.display())), "{args:?}: {err}");
    }
    let out = Command::new(BIN).args(["--gen-key", key.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success());
    let out = Command::new(BIN).args(["-C", cfg, "--check"]).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("signing with key 1"));
}

#[test]
fn a_key_file_others_can_read_is_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("ctsync-keymode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("sync.key");
    std::fs::write(&key, format!("1 {}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let cfg = dir.join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "general:\n  lock_file: {d}/l.lock\n  control_socket: {d}/c.sock\nsync:\n  auth: {{ key_file: {d}/sync.key }}\n  channels:\n    - {{ local: 127.0.0.1, peer: 127.0.0.2 }}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN).args(["-C", cfg.to_str().unwrap()]).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sync.key: mode 0644") && err.contains("chmod 600"), "{err}");
}

#[test]
fn a_netlink_overrun_ends_in_exact_convergence() {
    // A tiny event buffer that cannot grow: a burst must overrun it.
    let pair = Pair::with_config(
        "ovr",
        "  netlink:\n    rcvbuf: 4096\n    rcvbuf_max: 4096\n    overrun_resync: 200ms\n",
    );
    pair.commit_flows(0, (0..20_000).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(60));
    let stats: serde_json::Value =
        serde_json::from_str(&pair.cli_ok(0, &["-s", "--json"])).unwrap();
    assert!(stats["runtime"]["netlink_overruns"].as_u64().unwrap() >= 1, "{stats:#}");
    assert!(stats["runtime"]["kernel_resyncs"].as_u64().unwrap() >= 2, "{stats:#}");
}

/// The notify script's `primary` steps on a node whose own entries of the
/// same flows expire around the commit (a backup purged by `-t` that
/// fails back within the purge timeout), with reliable events and a small
/// event buffer. The kernel redelivers the destroy events it could not
/// deliver, late: before the daemon read its events between the commit's
/// batches, they arrived after `-R` had dumped the entries the commit
/// created in their place and emptied the internal cache of them (the
/// bulk of `-B` sent 18 362 of 20 000); the entry-id rule that ignores
/// such events is also proven by the handover simulation
/// (`src/handover_sim.rs`). The internal cache must equal the kernel
/// (DESIGN.md, "every handover is exact"), at several offsets from the
/// expiry.
#[test]
fn late_destroy_events_of_replaced_entries_leave_the_internal_cache_exact() {
    let pair = Pair::with_config(
        "stale",
        "  netlink:\n    rcvbuf: 1M\n    rcvbuf_max: 1M\n    reliable_events: true\n",
    );
    let flows: Vec<Flow> = (0..20_000).map(tcp_flow).collect();
    // In chunks that the small buffer holds: the kernel drops new events
    // silently in reliable mode (it only keeps destroy events).
    for chunk in flows.chunks(2000) {
        pair.commit_flows(0, chunk.to_vec());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut stale = 0;
    for offset_ms in [1900u64, 2000, 2100, 2300, 2600] {
        // The script's -f also flushed the external cache: ask again.
        pair.cli_ok(1, &["-n"]);
        pair.converge(0, Duration::from_secs(60));
        let zombies: Vec<Flow> = flows
            .iter()
            .cloned()
            .map(|mut f| {
                f.timeout = 2;
                f
            })
            .collect();
        pair.commit_flows(1, zombies);
        std::thread::sleep(Duration::from_millis(offset_ms));
        for step in ["-c", "-f", "-R", "-B"] {
            println!("{offset_ms} ms: {}", pair.cli_ok(1, &[step]).trim());
        }
        // The kernel retries undelivered events every few jiffies; leave
        // them time to arrive.
        std::thread::sleep(Duration::from_secs(2));
        let kernel = pair.kernel_lines(1);
        let internal = pair.cache_lines(1, "-i");
        let missing: Vec<_> = kernel.difference(&internal).take(3).collect();
        assert_eq!(
            kernel.len(),
            internal.len(),
            "{offset_ms} ms after the entries were made: the internal cache lost flows of the kernel, e.g. {missing:#?}\nlog: {}",
            pair.log(1)
        );
        assert_eq!(kernel.len(), flows.len());
        let stats: serde_json::Value =
            serde_json::from_str(&pair.cli_ok(1, &["-s", "--json"])).unwrap();
        stale = stats["runtime"]["events_stale"].as_u64().unwrap_or(0);
    }
    println!("destroy events of replaced entries ignored: {stale}");
    pair.converge(1, Duration::from_secs(30));
}

/// keepalived runs the new master's `primary` (-c, -f, -R, -B) and the old
/// master's `backup` (-t, -n) at the same moment, so the peer's resync
/// request can land between our -f and -R. Answering it with the flushed
/// internal cache sent an empty bulk, whose end-of-bulk sweep emptied the
/// peer's copy of our table (seen in the handover lab: "sending all 0
/// internal flows to the peer").
#[test]
fn a_resync_request_between_flush_and_resync_gets_the_kernel_table() {
    let pair = Pair::new("flushreq");
    pair.commit_flows(0, (0..2000).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(30));
    pair.cli_ok(0, &["-f"]);
    pair.cli_ok(1, &["-n"]);
    // Long enough for a bulk of 2000 flows and its end-of-bulk sweep.
    std::thread::sleep(Duration::from_secs(2));
    pair.converge(0, Duration::from_secs(5));
    assert!(pair.log(0).contains("while the internal cache is flushed"), "{}", pair.log(0));
}

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

/// docs/SECURITY.md's rotation: add the new key on both, send with it on
/// both, drop the old one — each step a reload, with no datagram refused
/// and sync going on.
/// The three steps of docs/SECURITY.md's rotation from key 1 (5c..) to key
/// 2 (a7..), both daemons reloaded at each, with 20 new flows from fw1
/// (numbered from `first`) converging after each step.
fn rotate_keys_while_syncing(pair: &Pair, first: u32) {
    let key = pair.dir.join("sync.key");
    let (old, new) = ("5c".repeat(32), "a7".repeat(32));
    let steps =
        [format!("1 {old}\n2 {new}\n"), format!("2 {new}\n1 {old}\n"), format!("2 {new}\n")];
    for (i, keys) in steps.iter().enumerate() {
        std::fs::write(&key, keys).unwrap();
        for fw in 0..2 {
            let out = pair.cli_ok(fw, &["--reload"]);
            assert!(out.contains("reloaded the sync keys"), "{out}");
        }
        let from = first + 20 * i as u32;
        pair.commit_flows(0, (from..from + 20).map(tcp_flow).collect());
        pair.converge(0, Duration::from_secs(10));
    }
}

#[test]
fn a_key_rotation_by_reload_keeps_sync_going() {
    let pair = Pair::new("rot");
    pair.commit_flows(0, (0..20).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));
    rotate_keys_while_syncing(&pair, 20);
    for fw in 0..2 {
        let stats: serde_json::Value =
            serde_json::from_str(&pair.cli_ok(fw, &["-s", "--json"])).unwrap();
        for counter in ["drop_bad_mac", "drop_unknown_key", "drop_auth"] {
            assert_eq!(stats["protocol"][counter], 0, "fw{}: {counter}: {stats:#}", fw + 1);
        }
    }
    // A broken key file is refused and the keys in use stay.
    let key = pair.dir.join("sync.key");
    std::fs::write(&key, "2 zz\n").unwrap();
    let out = pair.cli(0, &["--reload"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("keeping the current keys"));
    std::fs::write(&key, format!("2 {}\n", "a7".repeat(32))).unwrap();
    pair.commit_flows(0, (100..110).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));
}

/// SIGHUP and `--reload` re-read the key file (and only it), each on its
/// own: fw1 is told by signal, fw2 by the CLI. Between the two, fw1 signs
/// with a key fw2 does not know yet, so the drop counter shows that the
/// signal really changed fw1's keys.
#[test]
fn sighup_and_the_reload_flag_each_re_read_a_changed_key() {
    let pair = Pair::new("hup");
    pair.commit_flows(0, (0..10).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));
    let key = pair.dir.join("sync.key");
    std::fs::write(&key, format!("3 {}\n", "e1".repeat(32))).unwrap();
    let fw1 = pair.daemons[0].as_ref().unwrap().id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(fw1 as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for(Duration::from_secs(5), || pair.log(0).contains("sending with key 3, accepting 3"))
        .unwrap_or_else(|| panic!("fw1 did not reload on SIGHUP: {}", pair.log(0)));
    pair.commit_flows(0, (10..20).map(tcp_flow).collect());
    wait_for(Duration::from_secs(5), || {
        let stats: serde_json::Value =
            serde_json::from_str(&pair.cli_ok(1, &["-s", "--json"])).unwrap();
        protocol_counter(&stats, "drop_unknown_key") > 0
    })
    .unwrap_or_else(|| panic!("fw2 accepted fw1's datagrams signed with a key it lacks"));
    let out = pair.cli_ok(1, &["--reload"]);
    assert!(out.contains("sending with key 3, accepting 3"), "{out}");
    pair.converge(0, Duration::from_secs(10));
}

/// The drift test: fw2 drops fw1's flow messages for a while
/// (`--test-hooks`), so its external cache misses new flows, keeps stale
/// states and flows fw1 no longer has. The digests must find it within the
/// configured interval and the repair must count exactly what drifted.
/// docs/PROTOCOL.md, "Anti-entropy".
#[test]
fn anti_entropy_finds_and_repairs_drift_within_the_interval() {
    const INTERVAL: Duration = Duration::from_secs(2);
    let pair = Pair::with_options("ae", "", "  anti_entropy_interval: 2s\n", &["--test-hooks"]);
    pair.commit_flows(0, (0..300).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));

    // Without the switch, the hook is refused.
    let plain = Pair::new("aeoff");
    let out = plain.cli(1, &["--test-drop-peer-flows", "on"]);
    assert!(!out.status.success(), "the hook must need --test-hooks");
    assert!(String::from_utf8_lossy(&out.stdout).contains("--test-hooks"));
    drop(plain);

    pair.cli_ok(1, &["--test-drop-peer-flows", "on"]);
    // While fw2 drops them: 20 new flows, 10 changed marks, 15 destroyed.
    pair.commit_flows(0, (300..320).map(tcp_flow).collect());
    for i in 10..20 {
        pair.fw[0].exec(&format!("conntrack -U -s 10.1.0.{i} -m 99"));
    }
    pair.delete_flows(0, (100..115).map(tcp_flow).collect());
    let stats = |i: usize| -> serde_json::Value {
        serde_json::from_str(&pair.cli_ok(i, &["-s", "--json"])).unwrap()
    };
    // fw1 has sent all of it and fw2 acknowledged it (and dropped it).
    wait_for(Duration::from_secs(10), || {
        let s = stats(0);
        s["synced"] == true && s["internal"]["active"] == 305
    })
    .unwrap_or_else(|| panic!("fw1 did not settle: {:#}", stats(0)));
    let ext = pair.cache_lines(1, "-e");
    assert_eq!(ext.len(), 300, "the hook did not drop anything");
    assert_ne!(ext, pair.kernel_lines(0));
    assert_eq!(stats(1)["anti_entropy"]["repairs"], 0);

    pair.cli_ok(1, &["--test-drop-peer-flows", "off"]);
    let t = std::time::Instant::now();
    wait_for(INTERVAL * 2 + Duration::from_secs(2), || {
        stats(1)["anti_entropy"]["repairs"].as_u64().unwrap() >= 1
    })
    .unwrap_or_else(|| {
        panic!("no repair: fw2 {:#}\nlog fw2: {}", stats(1), pair.log(1));
    });
    let took = t.elapsed();
    println!("drift found and repaired {took:?} after it could be seen (interval {INTERVAL:?})");
    assert!(took <= INTERVAL + Duration::from_millis(1500), "{took:?}");
    assert_eq!(pair.cache_lines(1, "-e"), pair.kernel_lines(0));
    let ae = stats(1)["anti_entropy"].clone();
    assert_eq!(
        (&ae["flows_added"], &ae["flows_changed"], &ae["flows_removed"]),
        (&20.into(), &10.into(), &15.into()),
        "{ae:#}"
    );
    assert_eq!(ae["repairs"], 1, "{ae:#}");
    assert_eq!(stats(0)["anti_entropy"]["repairs_served"], 1);
    let log = pair.log(1);
    assert!(log.contains("20 flows added, 10 changed, 15 removed"), "{log}");
    // The views stay equal: later digests match and repair nothing.
    std::thread::sleep(INTERVAL * 2);
    let after = stats(1);
    assert!(after["anti_entropy"]["digests_compared"].as_u64().unwrap() >= 2, "{after:#}");
    assert_eq!(after["anti_entropy"]["repairs"], 1, "{after:#}");
    // The counters reach the metrics too: fw1's table never drifted.
    assert_eq!(stats(0)["anti_entropy"]["flows_added"], 0);
}

/// Direct-to-kernel mode (docs/active-active.md): the peer's flows reach
/// the local kernel without `-c`; our own writes do not come back into the
/// internal cache (nothing is echoed to the peer); a replica the local
/// kernel drops is not replicated as a local destroy, and `-c` recreates
/// exactly it; a destroy on the peer deletes the replica.
#[test]
fn direct_to_kernel_writes_the_peers_flows_and_keeps_replicas_to_itself() {
    let pair = Pair::with_options("dtk", "", "  direct_to_kernel: true\n", &[]);
    let mut flows: Vec<Flow> = (0..50).map(tcp_flow).collect();
    flows.extend((50..55).map(snat_flow));
    pair.commit_flows(0, flows);
    let source = pair.kernel_lines(0);
    assert_eq!(source.len(), 55);
    let mut last = BTreeSet::new();
    let same = wait_for(Duration::from_secs(10), || {
        last = pair.kernel_lines(1);
        last == source
    });
    assert!(same.is_some(), "fw2's kernel never matched fw1's:\n{last:#?}\nlog: {}", pair.log(1));
    // Our own writes are not our flows: nothing in fw2's internal cache,
    // nothing sent back into fw1's external cache.
    assert!(pair.cache_lines(1, "-i").is_empty(), "{:#?}", pair.cache_lines(1, "-i"));
    assert_eq!(pair.cache_lines(1, "-e").len(), 55);
    let stats: serde_json::Value =
        serde_json::from_str(&pair.cli_ok(1, &["-s", "--json"])).unwrap();
    assert!(stats["direct"]["created"].as_u64().unwrap() >= 55, "{stats:#}");

    // fw2's kernel drops a replica (as when its timeout runs out): that is
    // not a local destroy, so fw1 keeps the flow and fw2 its cache entry.
    pair.delete_flows(1, vec![tcp_flow(3)]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(pair.cache_lines(0, "-e").is_empty(), "{:#?}", pair.cache_lines(0, "-e"));
    assert_eq!(pair.kernel_lines(0), source);
    assert_eq!(pair.cache_lines(1, "-e").len(), 55);
    // -c writes back exactly what the kernel lost, and says how fast.
    let out = pair.cli_ok(1, &["-c"]);
    assert!(out.contains("committed 1 flows: first 1 % in"), "{out}");
    assert!(out.contains("1 created"), "{out}");
    assert_eq!(pair.kernel_lines(1), source);

    // A destroy on fw1 deletes the replica on fw2.
    pair.delete_flows(0, vec![tcp_flow(7)]);
    let gone = wait_for(Duration::from_secs(10), || {
        !pair.kernel_lines(1).iter().any(|l| l.contains("src=10.1.0.7 "))
    });
    assert!(gone.is_some(), "the replica of a destroyed flow stayed: {}", pair.log(1));
    assert_eq!(pair.kernel_lines(1).len(), 54);
}

/// An `AF_PACKET` socket in fw2's namespace that sees every IP packet of
/// its interfaces, opened before the traffic to record.
fn open_capture(pair: &Pair) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    in_netns(pair.fw[1].name(), || {
        socket(
            AddressFamily::Packet,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK,
            SockProtocol::EthAll,
        )
        .expect("AF_PACKET socket")
    })
}

/// The UDP payloads fw1 sent to fw2's sync port so far, in order.
fn captured_sync_datagrams(fd: &std::os::fd::OwnedFd) -> Vec<Vec<u8>> {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
        let p = &buf[..n];
        if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 17 || p[12..16] != [10, 255, 0, 1] {
            continue;
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let Some(udp) = p.get(ihl..) else { continue };
        if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != 3780 {
            continue;
        }
        let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        if let Some(payload) = udp.get(8..len) {
            out.push(payload.to_vec());
        }
    }
    out
}

fn protocol_counter(stats: &serde_json::Value, name: &str) -> u64 {
    stats["protocol"][name].as_u64().unwrap_or_else(|| panic!("no protocol.{name}: {stats:#}"))
}

/// The test sender: from the peer's own address and port (so the
/// source check passes), while real flows sync, it injects forged, tampered, wrong-key,
/// unauthenticated, truncated and replayed datagrams, the replays again
/// after the receiver restarted. Each is refused under its own counter and
/// logged (rate-limited), fw2's external cache takes none of them, and it
/// still ends equal to fw1's kernel.
#[test]
fn injected_forged_tampered_truncated_and_replayed_datagrams_are_refused_by_reason() {
    use ctsync::wire::native::{AuthKey, HEADER_LEN, MAC_LEN, NativeCodec, emit_message};
    use ctsync::wire::{Codec, DatagramHeader, Message, MessageRef};
    let mut pair = Pair::new("inject");
    let mut real = NativeCodec::with_keys(vec![AuthKey::new(1, vec![0x5c; 32])]);
    pair.converge(0, Duration::from_secs(10));

    // Record the link while the first batch syncs, then destroy that batch:
    // a replay that were accepted would bring its flows back.
    let capture = open_capture(&pair);
    pair.commit_flows(0, (0..100).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));
    // Every datagram fw1 sent in this session: flows, and those with only
    // ACKs and keepalives, which a replay must not pass off either.
    let recorded: Vec<Vec<u8>> = captured_sync_datagrams(&capture)
        .into_iter()
        .filter(|d| {
            let mut msgs = Vec::new();
            real.decode(d, &mut msgs).is_ok()
                && !msgs
                    .iter()
                    .any(|r| matches!(r.msg, Ok(Message::Hello { .. } | Message::HelloBack { .. })))
        })
        .collect();
    drop(capture);
    assert!(!recorded.is_empty(), "no flow datagram recorded on the link");
    pair.delete_flows(0, (0..100).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));

    // Well-formed datagrams about flows fw1 never had.
    let craft = |codec: &mut NativeCodec, i: u32| -> Vec<u8> {
        let f = tcp_flow(5000 + i);
        let mut buf = vec![0u8; 512];
        let end =
            HEADER_LEN + emit_message(&MessageRef::FlowNew(&f), &mut buf[HEADER_LEN..]).unwrap();
        let hdr = DatagramHeader { flags: 0, session: 1 + i, seq: i };
        let n = codec.finish(&hdr, 1, end, &mut buf).unwrap();
        buf.truncate(n);
        buf
    };
    let mut random = [0u8; 20 * MAC_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .unwrap();
    let forged: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            let mut d = craft(&mut real, i as u32);
            let n = d.len();
            d[n - MAC_LEN..].copy_from_slice(&random[i * MAC_LEN..(i + 1) * MAC_LEN]);
            d
        })
        .collect();
    let tampered: Vec<Vec<u8>> = recorded
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut d = d.clone();
            let at = HEADER_LEN + i % (d.len() - HEADER_LEN - MAC_LEN);
            d[at] ^= 1 << (i % 8);
            d
        })
        .collect();
    let mut other_secret = NativeCodec::with_keys(vec![AuthKey::new(1, vec![0xa7; 32])]);
    let mut other_id = NativeCodec::with_keys(vec![AuthKey::new(9, vec![0x5c; 32])]);
    let wrong_secret: Vec<Vec<u8>> = (20..30).map(|i| craft(&mut other_secret, i)).collect();
    let wrong_id: Vec<Vec<u8>> = (30..40).map(|i| craft(&mut other_id, i)).collect();
    let unsigned: Vec<Vec<u8>> = (40..45).map(|i| craft(&mut NativeCodec::insecure(), i)).collect();
    let truncated: Vec<Vec<u8>> =
        recorded.iter().flat_map(|d| [d[..d.len() - 1].to_vec(), d[..10].to_vec()]).collect();

    let before: serde_json::Value =
        serde_json::from_str(&pair.cli_ok(1, &["-s", "--json"])).unwrap();
    let injections: Vec<Vec<u8>> = [&forged, &tampered, &wrong_secret, &wrong_id, &unsigned]
        .into_iter()
        .chain([&truncated, &recorded])
        .flatten()
        .cloned()
        .collect();
    let spoofer = Spoofer::open(&pair.fw[0]);
    let sender = std::thread::spawn(move || {
        for d in &injections {
            spoofer.send(3780, d).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    // From fw2's own address: not the peer, refused before any parsing.
    pair.fw[1].run(|| {
        let s = std::net::UdpSocket::bind("10.255.0.2:0").unwrap();
        for _ in 0..5 {
            s.send_to(b"not from the peer", "10.255.0.2:3780").unwrap();
        }
    });
    // Real sync meanwhile.
    pair.commit_flows(0, (200..400).map(tcp_flow).collect());
    sender.join().unwrap();
    pair.converge(0, Duration::from_secs(10));

    let after: serde_json::Value =
        serde_json::from_str(&pair.cli_ok(1, &["-s", "--json"])).unwrap();
    let delta = |name: &str| protocol_counter(&after, name) - protocol_counter(&before, name);
    let n = |v: &Vec<Vec<u8>>| v.len() as u64;
    assert_eq!(delta("drop_bad_mac"), n(&forged) + n(&tampered) + n(&wrong_secret), "{after:#}");
    assert_eq!(delta("drop_unknown_key"), n(&wrong_id), "{after:#}");
    assert_eq!(delta("drop_auth"), n(&unsigned), "{after:#}");
    assert_eq!(delta("drop_truncated"), n(&truncated), "{after:#}");
    assert_eq!(delta("drop_replay"), n(&recorded), "{after:#}");
    assert_eq!(delta("drop_bad_crc") + delta("drop_malformed"), 0, "{after:#}");
    let foreign = after["links"][0]["foreign_source"].as_u64().unwrap()
        - before["links"][0]["foreign_source"].as_u64().unwrap();
    assert_eq!(foreign, 5, "{after:#}");
    // converge() compared fw2's external cache with fw1's kernel exactly:
    // no forged flow (5000..) and no replayed one (0..100) is in it.
    let external = pair.cache_lines(1, "-e");
    assert_eq!(external.len(), 200);
    println!(
        "refused: {} forged, {} tampered, {} wrong secret, {} wrong key id, {} unsigned, {} truncated, {} replayed, 5 foreign",
        forged.len(),
        tampered.len(),
        wrong_secret.len(),
        wrong_id.len(),
        unsigned.len(),
        truncated.len(),
        recorded.len()
    );

    // One line per reason per interval, naming the sender; the test takes
    // well under the 10 s interval per burst, so each reason logged once or
    // twice for dozens of datagrams.
    let log = pair.log(1);
    for (what, reason) in [
        ("bad MAC", "MAC mismatch"),
        ("unknown key", "key id not in our key file"),
        ("no MAC", "sync.auth.key_file and the other not"),
        ("truncated", "malformed or truncated"),
        ("replayed", "replayed or duplicated"),
        ("foreign", "not from the configured peer address"),
    ] {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("refused a datagram") && l.contains(reason))
            .collect();
        assert!(!lines.is_empty() && lines.len() <= 2, "{what}: {lines:#?}\n{log}");
        let from = if what == "foreign" { "from 10.255.0.2:" } else { "from 10.255.0.1:" };
        assert!(lines[0].contains(from), "{what}: {lines:#?}");
    }

    // The recording again, after fw2 restarted with empty caches: fw1's
    // session is the same, but fw2 tracks it from its current seq.
    pair.stop(1);
    pair.start(1);
    pair.converge(0, Duration::from_secs(15));
    let spoofer = Spoofer::open(&pair.fw[0]);
    for d in &recorded {
        spoofer.send(3780, d).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    pair.commit_flows(0, (400..450).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));
    let stats: serde_json::Value =
        serde_json::from_str(&pair.cli_ok(1, &["-s", "--json"])).unwrap();
    assert_eq!(protocol_counter(&stats, "drop_replay"), n(&recorded), "{stats:#}");
    assert_eq!(pair.cache_lines(1, "-e").len(), 250);
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

/// The rotation of docs/SECURITY.md while fw1's kernel keeps creating
/// flows: every reload lands between datagrams in flight, none is refused
/// and every flow arrives.
#[test]
fn flows_created_during_a_key_rotation_all_arrive() {
    let pair = Pair::new("rotlive");
    let key = pair.dir.join("sync.key");
    let (old, new) = ("5c".repeat(32), "a7".repeat(32));
    pair.converge(0, Duration::from_secs(10));
    let creator = pair.fw[0].spawn(|| {
        let mut k = Kernel::open().unwrap();
        let opts = CommitOptions { timeout: None, be_liberal: false, create_only: false };
        for batch in 0..60u32 {
            let flows: Vec<Flow> = (batch * 10..batch * 10 + 10).map(tcp_flow).collect();
            let report = k.commit(flows.iter(), &opts).unwrap();
            assert!(report.failed.is_empty(), "{:?}", report.failed);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let steps =
        [format!("1 {old}\n2 {new}\n"), format!("2 {new}\n1 {old}\n"), format!("2 {new}\n")];
    for keys in &steps {
        std::fs::write(&key, keys).unwrap();
        for fw in 0..2 {
            let out = pair.cli_ok(fw, &["--reload"]);
            assert!(out.contains("reloaded the sync keys"), "{out}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    creator.join().unwrap();
    pair.converge(0, Duration::from_secs(10));
    assert_eq!(pair.cache_lines(1, "-e").len(), 600);
    for fw in 0..2 {
        let stats: serde_json::Value =
            serde_json::from_str(&pair.cli_ok(fw, &["-s", "--json"])).unwrap();
        for counter in ["drop_bad_mac", "drop_unknown_key", "drop_auth"] {
            assert_eq!(stats["protocol"][counter], 0, "fw{}: {counter}: {stats:#}", fw + 1);
        }
    }
}

/// `sync.auth.encrypt` on a real pair: flows sync, a recording of the link
/// holds none of their addresses or ports in clear, and the key rotation
/// of docs/SECURITY.md works with encryption on.
#[test]
fn an_encrypted_pair_syncs_and_rotates_keys_with_no_flow_in_clear_on_the_link() {
    use ctsync::wire::Message;
    use ctsync::wire::native::{AuthKey, NativeCodec, flags};
    let on = ", encrypt: true";
    let pair = Pair::with_auth("aead", "", "", &[], [on, on]);
    pair.converge(0, Duration::from_secs(10));
    let capture = open_capture(&pair);
    let flows: Vec<Flow> = (0..50).map(tcp_flow).collect();
    pair.commit_flows(0, flows.clone());
    pair.converge(0, Duration::from_secs(10));
    let recorded = captured_sync_datagrams(&capture);
    drop(capture);
    assert!(!recorded.is_empty(), "nothing recorded on the link");
    // What the link carried were the flows (the key opens them) ...
    let codec = NativeCodec::encrypting(vec![AuthKey::new(1, vec![0x5c; 32])], 0);
    let mut seen = 0;
    for d in &recorded {
        assert_eq!(d[3] & (flags::AUTH | flags::ENCRYPT), flags::AUTH | flags::ENCRYPT);
        let mut msgs = Vec::new();
        codec.decode_datagram(d, &mut msgs).expect("a datagram of the pair decodes");
        seen += msgs.iter().filter(|r| matches!(r.msg, Ok(Message::FlowNew(_)))).count();
    }
    assert!(seen >= 10, "only {seen} flow messages recorded");
    // ... and none of their addresses or ports is readable without it.
    let window = |d: &[u8], needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
    for d in &recorded {
        assert!(!window(d, &[198, 51, 100, 7]), "destination address in clear: {d:02x?}");
        for f in &flows {
            let src = match f.key().src {
                std::net::IpAddr::V4(a) => a.octets(),
                a => panic!("{a}"),
            };
            assert!(!window(d, &src), "{src:?} in clear: {d:02x?}");
        }
    }

    rotate_keys_while_syncing(&pair, 50);
    for fw in 0..2 {
        let stats: serde_json::Value =
            serde_json::from_str(&pair.cli_ok(fw, &["-s", "--json"])).unwrap();
        for counter in ["drop_bad_mac", "drop_unknown_key", "drop_auth", "drop_bad_crc"] {
            assert_eq!(stats["protocol"][counter], 0, "fw{}: {counter}: {stats:#}", fw + 1);
        }
    }
}

/// One side encrypts, the other only signs: nothing syncs, both count
/// the other's datagrams under `drop_auth` and log the reason.
#[test]
fn one_side_encrypting_and_the_other_not_syncs_nothing_and_counts_drop_auth() {
    let pair = Pair::with_auth("aeadmix", "", "", &[], [", encrypt: true", ""]);
    pair.commit_flows(0, (0..10).map(tcp_flow).collect());
    let drops = |fw: usize| {
        let stats: serde_json::Value =
            serde_json::from_str(&pair.cli_ok(fw, &["-s", "--json"])).unwrap();
        protocol_counter(&stats, "drop_auth")
    };
    wait_for(Duration::from_secs(10), || drops(0) >= 3 && drops(1) >= 3).unwrap_or_else(|| {
        panic!("drop_auth {} and {}\n{}\n{}", drops(0), drops(1), pair.log(0), pair.log(1))
    });
    assert!(pair.cache_lines(1, "-e").is_empty(), "fw2 took flows from a mismatched peer");
    assert!(pair.cache_lines(0, "-e").is_empty());
    for fw in 0..2 {
        assert!(pair.log(fw).contains("(protocol.drop_auth)"), "fw{}: {}", fw + 1, pair.log(fw));
    }
}

/// A datagram as big as the link takes, well formed down to its CRC and
/// key id, with a MAC made with another secret: the most work a forger
/// without the key can make the receiver do per datagram.
fn forged_full_datagram(session: u32) -> Vec<u8> {
    use ctsync::wire::native::{
        AuthKey, DEFAULT_MAX_DATAGRAM, HEADER_LEN, NativeCodec, emit_message,
    };
    use ctsync::wire::{Codec, DatagramHeader, MessageRef};
    let mut forger = NativeCodec::with_keys(vec![AuthKey::new(1, vec![0x5d; 32])]);
    let mut buf = vec![0u8; DEFAULT_MAX_DATAGRAM];
    let mut end = HEADER_LEN;
    for i in 0.. {
        let f = tcp_flow(5000 + i);
        match emit_message(&MessageRef::FlowUpdate(&f), &mut buf[end..DEFAULT_MAX_DATAGRAM - 64]) {
            Ok(n) => end += n,
            Err(_) => break,
        }
    }
    let hdr = DatagramHeader { flags: 0, session, seq: 1 };
    let n = forger.finish(&hdr, 1, end, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// Threads sending one forged datagram each, in a loop, from the peer's
/// address and port; stopped when dropped, so a failing test does not leave
/// them on.
struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(from: &Netns, threads: u8) -> Flood {
        use std::sync::atomic::Ordering::Relaxed;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads = (0..threads)
            .map(|t| {
                let (stop, sent) = (stop.clone(), sent.clone());
                let junk = forged_full_datagram(u32::from(t));
                let spoofer = Spoofer::open(from);
                std::thread::spawn(move || {
                    while !stop.load(Relaxed) {
                        if spoofer.send(3780, &junk).is_ok() {
                            sent.fetch_add(1, Relaxed);
                        }
                    }
                })
            })
            .collect();
        Flood { stop, sent, threads }
    }

    /// Stop the threads; how many datagrams they sent.
    fn stop(mut self) -> u64 {
        self.halt();
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A flood of forgeries from the peer's address, from more threads than the
/// machine has cores, so the daemon reads slower than they send: it must go
/// on reading its kernel's events, replicating them, answering its operator
/// and pinging systemd's watchdog between the datagrams.
#[test]
fn a_datagram_flood_starves_neither_replication_nor_the_operator() {
    let mut pair = Pair::new("flood");
    // A deep socket buffer, so that the backlog below does not depend on
    // how fast this machine happens to run the flooders.
    let mut cfg = std::fs::read_to_string(pair.config(1)).unwrap();
    cfg.push_str("      rcvbuf: 268435456\n");
    std::fs::write(pair.config(1), cfg).unwrap();
    // systemd's watchdog as the unit sets it: a ping every 0.5 s expected.
    let notify = pair.dir.join("notify.sock");
    let pings = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    pings.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    pair.stop(1);
    let notify = notify.display().to_string();
    pair.start_with_env(1, &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "1000000")]);
    pair.commit_flows(1, (0..10).map(tcp_flow).collect());
    pair.converge(1, Duration::from_secs(10));
    let daemon = nix::unistd::Pid::from_raw(pair.daemons[1].as_ref().unwrap().id() as i32);
    let flood = Flood::start(&pair.fw[0], 6);
    // Paused while the flood fills its socket: a backlog of tens of
    // thousands of forgeries it must check before the socket is empty.
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGCONT).unwrap();
    let resumed = Instant::now();
    let watch = std::thread::spawn(move || {
        let mut at = Vec::new();
        let mut buf = [0u8; 4096];
        while resumed.elapsed() < Duration::from_secs(4) {
            if let Ok(n) = pings.recv(&mut buf)
                && buf[..n].split(|b| *b == b'\n').any(|l| l == b"WATCHDOG=1")
            {
                at.push(resumed.elapsed());
            }
        }
        at
    });
    let start = Instant::now();
    let out = Command::new("timeout")
        .args(["10", "ip", "netns", "exec", pair.fw[1].name(), BIN, "-C", &pair.config(1), "-s"])
        .output()
        .unwrap();
    let answered = start.elapsed();
    // Without a budget per turn the read loop runs until the socket is
    // empty, and the flood refills it faster than the MACs are checked.
    assert!(out.status.success(), "-s got no answer within 10 s of the flood");
    pair.commit_flows(1, (10..60).map(tcp_flow).collect());
    let start = Instant::now();
    let converged =
        wait_for(Duration::from_secs(15), || pair.kernel_lines(1) == pair.cache_lines(0, "-e"));
    let took = start.elapsed();
    let pings = watch.join().unwrap();
    let sent = flood.stop();
    let after: serde_json::Value =
        serde_json::from_str(&pair.cli_ok(1, &["-s", "--json"])).unwrap();
    let proto = &after["protocol"];
    println!("{sent} forgeries sent; -s answered in {answered:?}, replicated in {took:?}");
    // The first ping comes within one interval of the pause's end, the
    // others at most one interval apart: systemd never kills the daemon.
    let gaps: Vec<Duration> = std::iter::once(Duration::ZERO)
        .chain(pings.iter().copied())
        .zip(pings.iter().copied())
        .map(|(a, b)| b - a)
        .collect();
    assert!(
        pings.len() >= 4 && gaps.iter().all(|g| *g < Duration::from_secs(1)),
        "watchdog pings during the flood at {pings:?}"
    );
    assert!(converged.is_some(), "no replication during the flood: {proto:#}");
    assert!(proto["drop_bad_mac"].as_u64() > Some(1000), "{proto:#}");
    // The exact comparison above also shows no forged flow got in.
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

/// Both daemons speaking conntrackd's wire format (no key).
fn conntrackd_wire_pair(tag: &str) -> Pair {
    let mut pair = Pair::new(tag);
    for i in 0..2 {
        pair.stop(i);
        let cfg = std::fs::read_to_string(pair.config(i)).unwrap();
        let start = cfg.find("  auth:").unwrap();
        let end = start + cfg[start..].find('\n').unwrap() + 1;
        let cfg = format!("{}  wire: conntrackd\n{}", &cfg[..start], &cfg[end..]);
        std::fs::write(pair.config(i), cfg).unwrap();
    }
    pair.start(0);
    pair.start(1);
    pair
}

/// A raw socket in a namespace of the pair (fw1's): it sends UDP datagrams
/// to fw2's sync port with fw1's address and any source port, as an
/// attacker on the link can.
struct Spoofer(socket2::Socket);

impl Spoofer {
    fn open(ns: &Netns) -> Spoofer {
        use socket2::{Domain, Protocol, Socket, Type};
        // IPPROTO_RAW: we write the IP header.
        ns.run(|| Spoofer(Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255))).unwrap()))
    }

    /// One datagram from 10.255.0.1:`sport` to 10.255.0.2:3780 (UDP
    /// checksum 0: none; the kernel fills in the IP checksum).
    fn send(&self, sport: u16, payload: &[u8]) -> std::io::Result<()> {
        let udp_len = 8 + payload.len() as u16;
        let mut packet = vec![0x45, 0];
        packet.extend_from_slice(&(20 + udp_len).to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 10, 255, 0, 1, 10, 255, 0, 2]);
        for field in [sport, 3780, udp_len, 0] {
            packet.extend_from_slice(&field.to_be_bytes());
        }
        packet.extend_from_slice(payload);
        let to = std::net::SocketAddr::from(([10, 255, 0, 2], 0));
        self.0.send_to(&packet, &to.into()).map(|_| ())
    }
}

/// Send `payloads` to fw2's sync port from fw1's address and port `sport`,
/// 10 ms apart.
fn spoof_from_fw1(pair: &Pair, sport: u16, payloads: &[Vec<u8>]) {
    let spoofer = Spoofer::open(&pair.fw[0]);
    for p in payloads {
        spoofer.send(sport, p).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// conntrackd's format has no authentication, so a forged HELLO is taken
/// for the peer's restart and moves the receive tracking wherever the
/// forger likes; the peer's real messages then look late (or far ahead)
/// and are refused. That may cost a moment, never the sync: once only
/// refused traffic has come for half the peer timeout, the receiver takes
/// the peer's sequence again and both sides send their tables. Each forged
/// HELLO also asks for our whole table: at most one bulk a second goes.
#[test]
fn forged_hellos_in_conntrackd_wire_mode_silence_replication_only_briefly() {
    let pair = conntrackd_wire_pair("cdhello");
    let capture = open_capture(&pair);
    pair.commit_flows(0, (0..10).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));
    // What fw1 sends now, as the forger on the link sees it: every
    // message starts with its sequence number at bytes 4..8.
    let sniffed = captured_sync_datagrams(&capture);
    let last = sniffed.last().expect("fw1 sent nothing");
    let seq = u32::from_be_bytes(last[4..8].try_into().unwrap());
    let stats = |pair: &Pair| -> serde_json::Value {
        serde_json::from_str(&pair.cli_ok(1, &["-s", "--json"])).unwrap()
    };
    let bulks_before = protocol_counter(&stats(&pair), "bulks_sent");
    // 200 CTL messages with ALIVE|HELLO at sequence numbers all over the
    // space, 10 ms apart (each one a peer "restart" that asks for our whole
    // table), the last one half the space ahead, so that fw1's own
    // messages look old whatever the others did.
    let forged: Vec<Vec<u8>> = (0..199u32)
        .map(|i| i.wrapping_mul(0x9e37_79b9))
        .chain([seq.wrapping_add(1 << 31)])
        .map(|seq| {
            let mut m = vec![0x1a, 0x30, 0, 8];
            m.extend_from_slice(&seq.to_be_bytes());
            m
        })
        .collect();
    spoof_from_fw1(&pair, 3780, &forged);
    pair.commit_flows(0, (10..1010).map(tcp_flow).collect());
    let start = Instant::now();
    pair.converge(0, Duration::from_secs(15));
    println!("1000 flows after 200 forged HELLOs replicated in {:?}", start.elapsed());
    let after = stats(&pair);
    assert!(after["protocol"]["rx_rebases"].as_u64() >= Some(1), "{:#}", after["protocol"]);
    // At most one bulk a second, however many HELLOs: about 2 s of them.
    let bulks = protocol_counter(&after, "bulks_sent") - bulks_before;
    println!("{bulks} bulks sent for 200 forged HELLOs");
    assert!(bulks <= 6, "{bulks} bulks for 200 forged HELLOs");
}

/// conntrackd's format has no authentication, but the link pins the port
/// the peer sends from: HELLOs forged with fw1's address and another port,
/// while fw1 is alive, are refused at the link (`links[].foreign_port`,
/// logged once) before the protocol sees them. fw2 counts no peer restart,
/// sends no bulk and rebases nothing, and flows keep replicating.
#[test]
fn forged_hellos_from_the_peers_address_but_another_port_are_refused() {
    let pair = conntrackd_wire_pair("cdport");
    pair.commit_flows(0, (0..10).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));
    let stats = |pair: &Pair| -> serde_json::Value {
        serde_json::from_str(&pair.cli_ok(1, &["-s", "--json"])).unwrap()
    };
    let before = stats(&pair);
    // CTL messages with ALIVE|HELLO at sequence numbers all over the
    // space: each one accepted would be a peer restart and a bulk.
    let forged: Vec<Vec<u8>> = (0..50u32)
        .map(|i| {
            let mut m = vec![0x1a, 0x30, 0, 8];
            m.extend_from_slice(&i.wrapping_mul(0x9e37_79b9).to_be_bytes());
            m
        })
        .collect();
    // A port conntrackd could have picked, and the one next to ours.
    spoof_from_fw1(&pair, 45_678, &forged[..25]);
    spoof_from_fw1(&pair, 3781, &forged[25..]);
    pair.commit_flows(0, (10..510).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));
    let after = stats(&pair);
    let link = |v: &serde_json::Value, name: &str| v["links"][0][name].as_u64().unwrap();
    for counter in ["peer_restarts", "bulks_sent", "rx_rebases"] {
        let delta = protocol_counter(&after, counter) - protocol_counter(&before, counter);
        assert_eq!(delta, 0, "{counter}: {:#}", after["protocol"]);
    }
    assert_eq!(link(&after, "foreign_port") - link(&before, "foreign_port"), 50, "{after:#}");
    assert_eq!(link(&after, "foreign_source"), link(&before, "foreign_source"), "{after:#}");
    let text = pair.cli_ok(1, &["-s", "link"]);
    assert!(text.contains("50 Foreign port"), "{text}");
    let log = pair.log(1);
    let refusals: Vec<&str> =
        log.lines().filter(|l| l.contains("not from the port it sends from")).collect();
    assert_eq!(refusals.len(), 1, "one line per 10 s: {refusals:#?}");
    assert!(refusals[0].contains("from 10.255.0.1:45678"), "{refusals:#?}");
    assert!(!log.contains("peer now sends from port"), "{log}");
}

/// fw2 drops what fw1 sends but fw1 still hears fw2's keepalives: fw1's
/// changes are never acknowledged. That is not a dead peer, and must not
/// look like a quiet one: fw1 reports the stall in its log, `-s` and its
/// metrics, and the report ends when the stream moves again.
#[test]
fn a_stream_that_stops_moving_while_the_peer_is_alive_is_reported_as_stalled() {
    let pair = Pair::with_options("stall", "", "  stall_timeout: 5s\n", &[]);
    pair.commit_flows(0, (0..10).map(tcp_flow).collect());
    pair.converge(0, Duration::from_secs(10));
    pair.fw[1].exec(
        "nft add table inet stall && nft add chain inet stall in '{ type filter hook input priority 0; }' \
         && nft add rule inet stall in ip saddr 10.255.0.1 udp dport 3780 drop",
    );
    pair.commit_flows(0, (10..20).map(tcp_flow).collect());
    let stalled = |pair: &Pair| {
        let stats: serde_json::Value =
            serde_json::from_str(&pair.cli_ok(0, &["-s", "--json"])).unwrap();
        stats["protocol"]["stalled"].as_u64()
    };
    wait_for(Duration::from_secs(15), || stalled(&pair) == Some(1))
        .unwrap_or_else(|| panic!("no stall reported: {}", pair.log(0)));
    assert!(pair.log(0).contains("has stalled: the peer is heard from"), "{}", pair.log(0));
    let text = pair.cli_ok(0, &["-s", "--prometheus"]);
    assert!(text.lines().any(|l| l == "ctsync_protocol_stalled 1"), "{text}");
    pair.fw[1].exec("nft delete table inet stall");
    pair.converge(0, Duration::from_secs(15));
    wait_for(Duration::from_secs(5), || stalled(&pair) == Some(0))
        .unwrap_or_else(|| panic!("the stall did not end: {}", pair.log(0)));
    assert!(pair.log(0).contains("replication moves again after a stall"), "{}", pair.log(0));
}

/// In conntrackd's wire format only the address filter guards the sync
/// port, so a channel not bound to the sync link is said at start.
#[test]
fn conntrackd_wire_mode_warns_about_a_channel_without_an_interface() {
    let mut pair = conntrackd_wire_pair("cdiface");
    assert!(!pair.log(1).contains("has no interface"), "{}", pair.log(1));
    pair.stop(1);
    let cfg =
        std::fs::read_to_string(pair.config(1)).unwrap().replace("      interface: sync0\n", "");
    std::fs::write(pair.config(1), cfg).unwrap();
    pair.start(1);
    assert!(
        pair.log(1).contains("sync.channels[0] has no interface in conntrackd's wire format"),
        "{}",
        pair.log(1)
    );
}

/// A commit of many flows used to hold the loop from start to end: the
/// peer heard nothing for longer than its `peer_timeout` and declared this
/// node down in the middle of a failover (and a long enough one missed the
/// unit's watchdog). The loop now answers the peer between the commit's
/// batches.
#[test]
fn a_commit_longer_than_the_peer_timeout_keeps_both_sides_up() {
    let pair =
        Pair::with_options("longcommit", "", "  alive_interval: 200ms\n  peer_timeout: 1s\n", &[]);
    let flows: Vec<Flow> = (0..250_000).map(tcp_flow).collect();
    pair.commit_flows(0, flows);
    pair.converge(0, Duration::from_secs(120));
    let downs = |i: usize| -> u64 {
        let stats: serde_json::Value =
            serde_json::from_str(&pair.cli_ok(i, &["-s", "--json"])).unwrap();
        stats["protocol"]["peer_down"].as_u64().unwrap()
    };
    let before = [downs(0), downs(1)];
    let started = Instant::now();
    let out = pair.cli_ok(1, &["-c"]);
    let took = started.elapsed();
    println!("fw2 -c of 250k flows in {took:?}: {out}");
    assert!(out.contains("250000 created"), "{out}");
    // Let a peer timeout pass, so that a down that the commit caused shows.
    std::thread::sleep(Duration::from_millis(1500));
    let after = [downs(0), downs(1)];
    assert_eq!(
        after,
        before,
        "a commit of {took:?} made a side declare its peer down (peer_timeout 1 s)\nlog fw1: {}\nlog fw2: {}",
        pair.log(0),
        pair.log(1)
    );
    assert!(
        took > Duration::from_secs(1),
        "the commit took {took:?}, less than the peer timeout: this test needs more flows here"
    );
    // A resync with the kernel's table (-R) dumps all of it, just as long.
    let started = Instant::now();
    let resync = pair.cli_ok(0, &["-R"]);
    // Only the seconds left moved since the flows were made: nothing to
    // tell the peer.
    assert!(resync.contains("250000 flows, 0 new or changed, 0 gone"), "{resync}");
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        [downs(0), downs(1)],
        before,
        "a resync of {took:?} made a side declare its peer down\nlog fw1: {}\nlog fw2: {}",
        pair.log(0),
        pair.log(1)
    );
    println!("fw1 -R of 250k flows in {took:?}");
}
