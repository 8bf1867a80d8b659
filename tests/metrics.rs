//! The Prometheus endpoint of a real daemon: started in its own namespace
//! with `general.metrics_listen`, scraped with a plain `TcpStream`, and
//! compared with what `ctsyncd -s --json` says.
//!
//! Needs root. The test builds its own namespace and removes it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Netns, in_netns};

const BIN: &str = env!("CARGO_BIN_EXE_ctsyncd");
const METRICS: &str = "127.0.0.1:9478";

/// One daemon whose peer never answers: enough for counters to exist.
struct Daemon {
    ns: Netns,
    dir: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn start(tag: &str) -> Daemon {
        let ns = Netns::new(tag);
        ns.exec("ip link add sync0 type veth peer name sync1 && ip addr add 10.255.0.1/30 dev sync0 && ip link set sync0 up && ip link set sync1 up");
        let dir = std::env::temp_dir().join(format!("ctsync-test-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "general:\n  lock_file: {d}/d.lock\n  control_socket: {d}/d.sock\n  metrics_listen: {METRICS}\n\
             sync:\n  auth: {{ insecure: true }}\n  channels:\n    - {{ local: 10.255.0.1, peer: 10.255.0.2, interface: sync0 }}\n",
            d = dir.display()
        );
        std::fs::write(dir.join("d.yaml"), config).unwrap();
        let log = std::fs::File::create(dir.join("d.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), BIN, "-C"])
            .arg(dir.join("d.yaml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ctsyncd");
        let daemon = Daemon { ns, dir, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !daemon.cli(&["-s"]).status.success() {
            assert!(Instant::now() < deadline, "daemon did not start: {}", daemon.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", self.ns.name(), BIN, "-C"])
            .arg(self.dir.join("d.yaml"))
            .args(args)
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("d.log")).unwrap_or_default()
    }

    /// Send `request` to the metrics port from inside the namespace and
    /// return the whole answer; the server closes after one response.
    fn http(&self, request: &'static str) -> String {
        in_netns(self.ns.name(), move || {
            let mut stream = TcpStream::connect(METRICS).expect("connect to the metrics port");
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).expect("read until the server closes");
            answer
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of the sample `name` (with its labels) in an exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
}

#[test]
fn a_scrape_shows_the_same_counters_as_stats_json() {
    let daemon = Daemon::start("metrics");
    daemon.ns.exec(
        "conntrack -I -p tcp -s 192.0.2.10 -d 198.51.100.20 --sport 40000 --dport 443 \
         --state ESTABLISHED -t 600 -u ASSURED",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let out = daemon.cli(&["-s", "--json"]);
        assert!(out.status.success(), "{}", daemon.log());
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if stats["internal"]["active"] == 1 {
            break stats;
        }
        assert!(Instant::now() < deadline, "flow not seen: {stats}");
        std::thread::sleep(Duration::from_millis(50));
    };

    let answer = daemon.http("GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a header and a body");
    assert!(head.starts_with("HTTP/1.0 200 OK"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");

    assert_eq!(sample(body, "ctsync_internal_active"), Some(1.0), "{body}");
    assert_eq!(sample(body, "ctsync_internal_created_total"), Some(1.0), "{body}");
    assert_eq!(
        sample(body, "ctsync_runtime_events_received_total"),
        stats["runtime"]["events_received"].as_f64(),
        "{body}"
    );
    assert_eq!(
        sample(body, "ctsync_links_up{link=\"udp 10.255.0.2:3780 dev sync0\"}"),
        Some(1.0),
        "{body}"
    );
    assert!(body.contains("# TYPE ctsync_protocol_drop_bad_crc_total counter"), "{body}");
    assert!(sample(body, "ctsync_protocol_alive_sent_total").is_some(), "{body}");

    let missing = daemon.http("GET / HTTP/1.0\r\n\r\n");
    assert!(missing.starts_with("HTTP/1.0 404"), "{missing}");
    // The daemon is still healthy after serving scrapes.
    assert!(daemon.cli(&["-s"]).status.success(), "{}", daemon.log());
}
