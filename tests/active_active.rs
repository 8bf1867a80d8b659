//! Asymmetric routing through two firewalls in direct-to-kernel mode: the
//! client's packets go through fw1, the server's through fw2. The ruleset
//! is strict (`nf_conntrack_tcp_loose=0`; new TCP only with SYN; the rest
//! only as established), so a connection passes only if each firewall
//! holds the state the other one created before the packet that needs it
//! arrives: fw2 needs fw1's entry for the SYN-ACK, fw1 needs to know that
//! fw2 saw the SYN-ACK for the client's ACK (Linux marks an ACK in
//! SYN_SENT invalid).
//!
//! With `sync.defer` the SYN (on fw1) and the SYN-ACK (on fw2) wait in
//! NFQUEUE until the peer has acknowledged their flow's state; without it
//! they race the sync and lose (the negative control). The test opens
//! 1000 short connections each way and prints how many failed and the
//! connect times (docs/active-active.md, "Deferred packets").
//!
//! Real components: nftables, the kernel's conntrack and nfnetlink_queue,
//! two ctsyncd, Python clients and servers. Needs root; skipped otherwise.
//! Run it alone with its report:
//! `cargo nextest run --cargo-profile ci --test active_active --no-capture`.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Netns, run_ok, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_ctsyncd");

/// Connections per run.
const CONNECTIONS: usize = 1000;

/// A connection counts as failed when it does not complete its echo within
/// this: a dropped SYN or SYN-ACK is retransmitted only after 1 s, so a
/// failure means a firewall dropped a packet.
const DEADLINE_S: f64 = 0.8;

/// Echo server: one thread per connection, so slow ones do not block.
const SERVER: &str = r#"
import socketserver
class H(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(3)
        try:
            data = self.request.recv(64)
            self.request.sendall(data)
        except OSError:
            pass
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 512
S(("10.0.2.2", 8000), H).serve_forever()
"#;

/// Opens `n` connections, `par` at a time; prints failures and the
/// connect and total times (ms, median and 99th percentile) as JSON.
const CLIENT: &str = r#"
import json, socket, sys, threading, time
n, par, deadline = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
lock = threading.Lock()
connect, total, failed = [], [], []
todo = list(range(n))
def one(i):
    t0 = time.monotonic()
    s = socket.socket()
    s.settimeout(deadline)
    try:
        s.connect(("10.0.2.2", 8000))
        t1 = time.monotonic()
        msg = b"hello %d" % i
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            s.settimeout(max(0.001, deadline - (time.monotonic() - t0)))
            chunk = s.recv(64)
            if not chunk:
                break
            got += chunk
        if got != msg:
            raise OSError("short echo")
        t2 = time.monotonic()
        with lock:
            connect.append((t1 - t0) * 1000)
            total.append((t2 - t0) * 1000)
    except OSError as e:
        with lock:
            failed.append(type(e).__name__)
    finally:
        s.close()
def worker():
    while True:
        with lock:
            if not todo:
                return
            i = todo.pop()
        one(i)
threads = [threading.Thread(target=worker) for _ in range(par)]
for t in threads: t.start()
for t in threads: t.join()
def q(v, p):
    v = sorted(v)
    return round(v[min(len(v) - 1, int(len(v) * p))], 3) if v else None
print(json.dumps({"ok": len(total), "failed": len(failed),
    "connect_p50": q(connect, 0.5), "connect_p99": q(connect, 0.99),
    "total_p50": q(total, 0.5), "total_p99": q(total, 0.99)}))
"#;

/// Strict forwarding.
const RULESET: &str = r#"table inet strict {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        tcp flags & (syn | ack) == syn ct state new accept
    }
}"#;

/// The deferral rules of docs/active-active.md, in iptables' form: this
/// test kernel has xt_NFQUEUE but not nft_queue. The kernel's `bypass`
/// accepts the packets while no daemon binds queue 0 (the run without
/// deferral).
const DEFER_RULES: [&str; 2] = ["-m conntrack --ctstate NEW", "-p tcp --tcp-flags SYN,ACK SYN,ACK"];

struct Lab {
    cl: Netns,
    srv: Netns,
    fw: [Netns; 2],
    dir: PathBuf,
    daemons: Vec<Child>,
}

impl Lab {
    /// `symmetric`: the server answers through fw1 too (the baseline of
    /// connect times, without deferral).
    fn new(tag: &str, defer: bool, symmetric: bool) -> Lab {
        let lab = Lab {
            cl: Netns::new(&format!("{tag}-cl")),
            srv: Netns::new(&format!("{tag}-srv")),
            fw: [Netns::new(&format!("{tag}-fw1")), Netns::new(&format!("{tag}-fw2"))],
            dir: std::env::temp_dir().join(format!("ctsync-aa-{}-{tag}", std::process::id())),
            daemons: Vec::new(),
        };
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
        // Replies reach the client on the other interface than its route:
        // no reverse-path filter on the hosts.
        let no_rp = "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0";
        lab.cl.exec(&format!("{no_rp} && ip addr add 10.0.1.2/32 dev lo"));
        lab.srv.exec(&format!("{no_rp} && ip addr add 10.0.2.2/32 dev lo"));
        for (i, fw) in lab.fw.iter().enumerate() {
            let n = i + 1;
            veth(&lab.cl, &format!("c{n}"), fw, "lan");
            veth(&lab.srv, &format!("s{n}"), fw, "wan");
            lab.cl.exec(&format!("ip addr add 169.254.1{n}.2/30 dev c{n} && ip link set c{n} up"));
            lab.srv.exec(&format!("ip addr add 169.254.2{n}.2/30 dev s{n} && ip link set s{n} up"));
            fw.exec(&format!(
                "{no_rp} && \
                 ip addr add 169.254.1{n}.1/30 dev lan && ip link set lan up && \
                 ip addr add 169.254.2{n}.1/30 dev wan && ip link set wan up && \
                 ip route add 10.0.1.2/32 via 169.254.1{n}.2 && \
                 ip route add 10.0.2.2/32 via 169.254.2{n}.2 && \
                 sysctl -qw net.ipv4.ip_forward=1 net.netfilter.nf_conntrack_tcp_loose=0"
            ));
            fw.exec(&format!("nft -f - <<'EOF'\n{RULESET}\nEOF"));
            for rule in DEFER_RULES {
                fw.exec(&format!(
                    "iptables -t mangle -A POSTROUTING ! -o sync0 {rule} \
                     -j NFQUEUE --queue-num 0 --queue-bypass"
                ));
            }
        }
        // Asymmetric: the client reaches the server through fw1, the
        // server answers through fw2.
        lab.cl.exec("ip route add 10.0.2.2/32 via 169.254.11.1 src 10.0.1.2");
        let back = if symmetric { "169.254.21.1" } else { "169.254.22.1" };
        lab.srv.exec(&format!("ip route add 10.0.1.2/32 via {back} src 10.0.2.2"));
        for c in ["c1", "c2"] {
            lab.cl.exec(&format!("sysctl -qw net.ipv4.conf.{c}.rp_filter=0"));
        }
        for s in ["s1", "s2"] {
            lab.srv.exec(&format!("sysctl -qw net.ipv4.conf.{s}.rp_filter=0"));
        }
        veth(&lab.fw[0], "sync0", &lab.fw[1], "sync0");
        let key = lab.dir.join("sync.key");
        std::fs::write(&key, format!("1 {}\n", "a5".repeat(32))).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        for (i, fw) in lab.fw.iter().enumerate() {
            let n = i + 1;
            let (d, p) = (lab.dir.display(), 2 - i);
            fw.exec(&format!("ip addr add 10.255.0.{n}/30 dev sync0 && ip link set sync0 up"));
            let text = format!(
                "general:\n  lock_file: {d}/fw{n}.lock\n  control_socket: {d}/fw{n}.sock\n\
                 sync:\n  direct_to_kernel: true\n{defer}  auth: {{ key_file: {d}/sync.key }}\n  \
                 channels:\n    \
                 - {{ type: udp, local: 10.255.0.{n}, peer: 10.255.0.{p}, interface: sync0 }}\n",
                defer = if defer { "  defer: { queue: 0, timeout: 20ms }\n" } else { "" },
            );
            std::fs::write(lab.config(i), text).unwrap();
        }
        lab
    }

    fn config(&self, i: usize) -> String {
        self.dir.join(format!("fw{}.yaml", i + 1)).display().to_string()
    }

    fn start(&mut self) {
        for i in 0..2 {
            let log = std::fs::File::create(self.dir.join(format!("fw{}.log", i + 1))).unwrap();
            let child = Command::new("ip")
                .args(["netns", "exec", self.fw[i].name(), BIN, "-C", &self.config(i)])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start ctsyncd");
            self.daemons.push(child);
            wait_for(Duration::from_secs(10), || self.cli(i, &["-s"]).status.success())
                .unwrap_or_else(|| panic!("fw{} daemon did not start: {}", i + 1, self.log(i)));
        }
        // Both sides synced: the handshake is done, so deferral waits for
        // the peer rather than passing packets for want of one.
        wait_for(Duration::from_secs(10), || (0..2).all(|i| self.stats(i)["synced"] == true))
            .unwrap_or_else(|| panic!("the pair did not sync: {}{}", self.log(0), self.log(1)));
        let server = Command::new("ip")
            .args(["netns", "exec", self.srv.name(), "python3", "-c", SERVER])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the echo server");
        self.daemons.push(server);
        wait_for(Duration::from_secs(5), || {
            self.srv.try_exec("ss -ltn | grep -q 10.0.2.2:8000").status.success()
        })
        .expect("the echo server did not listen");
    }

    fn cli(&self, i: usize, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", self.fw[i].name(), BIN, "-C", &self.config(i)])
            .args(args)
            .output()
            .unwrap()
    }

    fn stats(&self, i: usize) -> serde_json::Value {
        let out = self.cli(i, &["-s", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("fw{}.log", i + 1))).unwrap_or_default()
    }

    /// Run the client: `n` connections, `par` at a time.
    fn connections(&self, n: usize, par: usize) -> serde_json::Value {
        let out = self.cl.exec(&format!(
            "python3 -c '{}' {n} {par} {DEADLINE_S}",
            CLIENT.replace('\'', "'\\''")
        ));
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("client output {out:?}: {e}"))
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

fn skip() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return true;
    }
    if Command::new("iptables").arg("-V").stdout(Stdio::null()).status().is_err() {
        eprintln!("skipped: iptables is not installed (scripts/setup.sh installs it)");
        return true;
    }
    false
}

/// One run: the numbers, and fw1's and fw2's `defer` stats.
fn run(tag: &str, defer: bool, symmetric: bool) -> (serde_json::Value, [serde_json::Value; 2]) {
    let mut lab = Lab::new(tag, defer, symmetric);
    lab.start();
    let result = lab.connections(CONNECTIONS, 40);
    let stats = [lab.stats(0)["defer"].clone(), lab.stats(1)["defer"].clone()];
    println!(
        "{}, {} deferral: {} of {CONNECTIONS} connections failed (not echoed within {DEADLINE_S} s); \
         connect ms p50 {} p99 {}, whole exchange ms p50 {} p99 {}",
        if symmetric { "symmetric routing" } else { "asymmetric routing" },
        if defer { "with" } else { "without" },
        result["failed"],
        result["connect_p50"],
        result["connect_p99"],
        result["total_p50"],
        result["total_p99"],
    );
    if defer {
        for (i, s) in stats.iter().enumerate() {
            println!("  fw{} defer: {s}", i + 1);
        }
    }
    (result, stats)
}

#[test]
fn asymmetric_routing_needs_deferral_and_passes_with_it() {
    if skip() {
        return;
    }
    let (baseline, _) = run("aas", false, true);
    let (without, _) = run("aan", false, false);
    let (with, stats) = run("aad", true, false);
    let failed = |r: &serde_json::Value| r["failed"].as_u64().unwrap_or(u64::MAX);
    assert_eq!(failed(&baseline), 0, "symmetric routing needs no deferral: {baseline}");
    // Negative control: the SYN-ACK reaches fw2 before fw1's state does.
    assert!(
        failed(&without) > (CONNECTIONS / 10) as u64,
        "without deferral most connections should lose the race with the sync: {without}"
    );
    // With deferral every packet that needs the peer's state waits for it;
    // the 20 ms timeout lets one through early only if the sync link takes
    // longer than that, which on an idle veth it does not. A bound of 1%
    // leaves room for a loaded CI machine.
    assert!(
        failed(&with) <= (CONNECTIONS / 100) as u64,
        "with deferral at most 1% may fail: {with}; fw1 {} fw2 {}",
        stats[0],
        stats[1]
    );
    let released = |s: &serde_json::Value| s["released_by_ack"].as_u64().unwrap_or(0);
    assert!(
        released(&stats[0]) >= (CONNECTIONS * 9 / 10) as u64
            && released(&stats[1]) >= (CONNECTIONS * 9 / 10) as u64,
        "fw1 should hold the SYNs and fw2 the SYN-ACKs until acknowledged: fw1 {} fw2 {}",
        stats[0],
        stats[1]
    );
}

/// Never drop: when the peer does not acknowledge (its side of the sync
/// link drops our datagrams, so it still looks alive from its keepalives),
/// every held packet is accepted when `sync.defer.timeout` passes; when the
/// peer is down, nothing is held.
#[test]
fn held_packets_pass_at_the_timeout_and_none_wait_for_a_dead_peer() {
    if skip() {
        return;
    }
    let mut lab = Lab::new("aat", true, true);
    lab.start();
    lab.fw[1].exec(
        "nft -f - <<'EOF'\ntable netdev lossy {\n    chain in {\n        \
         type filter hook ingress device \"sync0\" priority 0;\n        \
         udp dport 3780 drop\n    }\n}\nEOF",
    );
    let result = lab.connections(50, 5);
    let fw1 = lab.stats(0)["defer"].clone();
    println!("peer silent: {result}; fw1 defer: {fw1}");
    assert_eq!(result["failed"], 0, "held packets must pass after the timeout: {result}");
    let timeouts = fw1["timeouts"].as_u64().unwrap_or(0);
    // Symmetric routing: fw1 holds each connection's SYN and its SYN-ACK.
    assert!(timeouts >= 100, "fw1 should have released by timeout: {fw1}");
    assert_eq!(fw1["released_by_ack"], 0, "{fw1}");
    assert_eq!(fw1["held"], 0, "{fw1}");

    // Once the peer is down (its daemon stopped, `sync.peer_timeout`
    // passed), packets are not held at all.
    let _ = lab.daemons[1].kill();
    let _ = lab.daemons[1].wait();
    wait_for(Duration::from_secs(10), || lab.stats(0)["protocol"]["peer_down"] == 1)
        .unwrap_or_else(|| panic!("fw1 did not see the peer go: {}", lab.stats(0)));
    let result = lab.connections(20, 5);
    let fw1 = lab.stats(0)["defer"].clone();
    println!("peer down: {result}; fw1 defer: {fw1}");
    assert_eq!(result["failed"], 0, "{result}");
    assert!(fw1["peer_down"].as_u64().unwrap_or(0) >= 40, "{fw1}");
    assert_eq!(fw1["timeouts"], timeouts, "nothing more waits for the timeout: {fw1}");
}
