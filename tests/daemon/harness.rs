//! The pair of firewalls the tests run on: two network namespaces joined
//! by a veth sync link, one `ctsyncd` in each, and the flows, captures and
//! spoofed datagrams the tests feed them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ctsync::flow::{Dir, Flow, proto, status, tcp_state};
use ctsync::netlink::{CommitOptions, Kernel};

use crate::common::{Netns, in_netns, run_ok as run, wait_for};

/// The daemon under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_ctsyncd");

/// fw1 and fw2, each with a daemon, joined by `sync0` (10.255.0.1/.2).
pub(crate) struct Pair {
    pub(crate) fw: [Netns; 2],
    pub(crate) dir: PathBuf,
    pub(crate) daemons: [Option<Child>; 2],
    /// Extra daemon flags.
    args: Vec<String>,
}

impl Pair {
    pub(crate) fn new(tag: &str) -> Pair {
        Pair::with_config(tag, "")
    }

    /// `extra` is YAML appended under `general:` of both configs.
    pub(crate) fn with_config(tag: &str, extra_general: &str) -> Pair {
        Pair::with_options(tag, extra_general, "", &[])
    }

    /// As [`Pair::with_config`], with YAML under `sync:` and daemon flags.
    pub(crate) fn with_options(
        tag: &str,
        extra_general: &str,
        extra_sync: &str,
        args: &[&str],
    ) -> Pair {
        Pair::with_auth(tag, extra_general, extra_sync, args, ["", ""])
    }

    /// As [`Pair::with_options`], with more keys in each side's
    /// `sync.auth` flow mapping (after `key_file`), e.g. `, encrypt: true`.
    pub(crate) fn with_auth(
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

    pub(crate) fn config(&self, i: usize) -> String {
        self.dir.join(format!("fw{}.yaml", i + 1)).display().to_string()
    }

    pub(crate) fn start(&mut self, i: usize) {
        self.start_with_env(i, &[]);
    }

    /// Start fw`i`'s daemon with more environment variables.
    pub(crate) fn start_with_env(&mut self, i: usize, env: &[(&str, &str)]) {
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
    pub(crate) fn stop(&mut self, i: usize) {
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
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.daemons[i].take() {
            // `ip netns exec` execs the daemon, so the child is the daemon.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("fw{}.log", i + 1))).unwrap_or_default()
    }

    pub(crate) fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", self.fw[i].name(), BIN, "-C", &self.config(i)])
            .args(args)
            .output()
            .unwrap()
    }

    pub(crate) fn cli_ok(&self, i: usize, args: &[&str]) -> String {
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
    pub(crate) fn cache_lines(&self, i: usize, flag: &str) -> BTreeSet<String> {
        self.cli_ok(i, &[flag]).lines().filter(|l| !l.is_empty()).map(strip_timeout).collect()
    }

    /// Flows of fw`i`'s kernel as the same kind of lines, without the sync
    /// link's own flow (the daemons ignore it by default).
    pub(crate) fn kernel_lines(&self, i: usize) -> BTreeSet<String> {
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

    pub(crate) fn delete_flows(&self, i: usize, flows: Vec<Flow>) {
        in_netns(self.fw[i].name(), move || {
            let keys: Vec<_> = flows.iter().map(Flow::key).collect();
            let report = Kernel::open().unwrap().delete(keys.iter()).unwrap();
            assert!(report.failed.is_empty(), "{:?}", &report.failed[..report.failed.len().min(5)]);
        })
    }

    pub(crate) fn commit_flows(&self, i: usize, flows: Vec<Flow>) {
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
    pub(crate) fn converge(&self, from: usize, within: Duration) {
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

pub(crate) fn tcp_flow(i: u32) -> Flow {
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

pub(crate) fn snat_flow(i: u32) -> Flow {
    let mut f = tcp_flow(i);
    // A reply tuple unique per flow: two SNAT flows with one reply tuple
    // clash in the kernel.
    let nat = Ipv4Addr::new(203, 0, 113 + (i / 60000) as u8, 5);
    f.set_addrs(Dir::Reply, Ipv4Addr::new(198, 51, 100, 7).into(), nat.into());
    f.l4[3] = 1024 + (i % 60000) as u16;
    f
}

/// An `AF_PACKET` socket in fw2's namespace that sees every IP packet of
/// its interfaces, opened before the traffic to record.
pub(crate) fn open_capture(pair: &Pair) -> std::os::fd::OwnedFd {
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
pub(crate) fn captured_sync_datagrams(fd: &std::os::fd::OwnedFd) -> Vec<Vec<u8>> {
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

pub(crate) fn protocol_counter(stats: &serde_json::Value, name: &str) -> u64 {
    stats["protocol"][name].as_u64().unwrap_or_else(|| panic!("no protocol.{name}: {stats:#}"))
}

/// A raw socket in a namespace of the pair (fw1's): it sends UDP datagrams
/// to fw2's sync port with fw1's address and any source port, as an
/// attacker on the link can.
pub(crate) struct Spoofer(socket2::Socket);

impl Spoofer {
    pub(crate) fn open(ns: &Netns) -> Spoofer {
        use socket2::{Domain, Protocol, Socket, Type};
        // IPPROTO_RAW: we write the IP header.
        ns.run(|| Spoofer(Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255))).unwrap()))
    }

    /// One datagram from 10.255.0.1:`sport` to 10.255.0.2:3780 (UDP
    /// checksum 0: none; the kernel fills in the IP checksum).
    pub(crate) fn send(&self, sport: u16, payload: &[u8]) -> std::io::Result<()> {
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
