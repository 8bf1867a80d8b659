//! The Prometheus endpoint of a real daemon: started in its own namespace
//! with `general.metrics_listen`, scraped with a plain `TcpStream`, and
//! compared with what `ctsyncd -s --json` says; the scrape and
//! `ctsyncd -s --prometheus` pass `promtool check metrics`.
//!
//! Needs root, and promtool (Debian's `prometheus` package). The test
//! builds its own namespace and removes it.

use std::collections::HashMap;
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

/// Every sample of an exposition: name with labels → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(n, v)| (n.to_owned(), v.parse().unwrap()))
        .collect()
}

/// The sample names a `-s --json` field is exported as, by
/// `ctsync::metrics::SPECS`, for one link's `link` label.
fn metric_name(path: &str, link: Option<&str>) -> Option<String> {
    use ctsync::metrics::{Metric, SPECS};
    let spec = SPECS.iter().find(|s| s.path == path)?;
    let labels = link.map(|l| format!("{{link=\"{l}\"}}")).unwrap_or_default();
    match spec.metric {
        Metric::Counter(n) => Some(format!("ctsync_{n}_total{labels}")),
        Metric::Gauge(n) => Some(format!("ctsync_{n}{labels}")),
        Metric::Dropped(reason) => {
            Some(format!("ctsync_protocol_dropped_total{{reason=\"{reason}\"}}"))
        }
        Metric::InHistogram => None,
    }
}

/// Every number of a `-s --json` document: (path, link, value).
fn json_numbers(
    value: &serde_json::Value,
    path: &str,
    link: Option<&str>,
    out: &mut Vec<(String, Option<String>, f64)>,
) {
    use serde_json::Value;
    match value {
        Value::Object(fields) => {
            for (k, v) in fields {
                let sub = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                json_numbers(v, &sub, link, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                json_numbers(item, path, item["name"].as_str(), out);
            }
        }
        Value::Number(n) => {
            out.push((path.to_owned(), link.map(str::to_owned), n.as_f64().unwrap()))
        }
        Value::Bool(b) => {
            out.push((path.to_owned(), link.map(str::to_owned), f64::from(u8::from(*b))))
        }
        _ => {}
    }
}

/// `promtool check metrics` on `text`: its complaints, if any.
fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (apt-get install prometheus, see scripts/setup.sh)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && said.trim().is_empty() { Ok(()) } else { Err(said) }
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
    // A commit (of the empty external cache) for the commit-time histogram.
    assert!(daemon.cli(&["-c"]).status.success(), "{}", daemon.log());
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
    assert!(body.contains("# TYPE ctsync_protocol_dropped_total counter"), "{body}");
    assert_eq!(
        sample(body, "ctsync_protocol_dropped_total{reason=\"bad_crc\"}"),
        Some(0.0),
        "{body}"
    );
    assert!(body.contains("# TYPE ctsync_ready gauge"), "{body}");
    assert!(body.contains("# TYPE ctsync_commit_seconds histogram"), "{body}");
    assert_eq!(sample(body, "ctsync_commit_seconds_count"), Some(1.0), "{body}");
    assert_eq!(sample(body, "ctsync_commit_seconds_bucket{le=\"+Inf\"}"), Some(1.0), "{body}");
    assert_eq!(sample(body, "ctsync_runtime_commits_total"), Some(1.0), "{body}");
    assert!(sample(body, "ctsync_protocol_alive_sent_total").is_some(), "{body}");

    // Every number of -s --json is in the scrape under its name, with the
    // value it had between the JSON taken before and the one taken after.
    let after: serde_json::Value =
        serde_json::from_slice(&daemon.cli(&["-s", "--json"]).stdout).unwrap();
    let scraped = samples(body);
    let (mut before_numbers, mut after_numbers) = (Vec::new(), Vec::new());
    json_numbers(&stats, "", None, &mut before_numbers);
    json_numbers(&after, "", None, &mut after_numbers);
    assert_eq!(before_numbers.len(), after_numbers.len());
    let mut compared = 0;
    for ((path, link, a), (_, _, b)) in before_numbers.iter().zip(&after_numbers) {
        let Some(name) = metric_name(path, link.as_deref()) else { continue };
        let value =
            scraped.get(&name).unwrap_or_else(|| panic!("{path} ({name}) not scraped:\n{body}"));
        assert!(
            a.min(*b) <= *value && *value <= a.max(*b),
            "{name} = {value}, -s --json said {a} then {b}"
        );
        compared += 1;
    }
    assert!(compared > 100, "{compared}");

    promtool_check(body).unwrap_or_else(|e| panic!("promtool on the scrape: {e}\n{body}"));
    let textfile = daemon.cli(&["-s", "--prometheus"]);
    assert!(textfile.status.success(), "{}", String::from_utf8_lossy(&textfile.stderr));
    let textfile = String::from_utf8(textfile.stdout).unwrap();
    assert!(textfile.contains("# TYPE ctsync_internal_active gauge"), "{textfile}");
    assert_eq!(sample(&textfile, "ctsync_internal_active"), Some(1.0), "{textfile}");
    promtool_check(&textfile)
        .unwrap_or_else(|e| panic!("promtool on -s --prometheus: {e}\n{textfile}"));

    let missing = daemon.http("GET / HTTP/1.0\r\n\r\n");
    assert!(missing.starts_with("HTTP/1.0 404"), "{missing}");
    // The daemon is still healthy after serving scrapes.
    assert!(daemon.cli(&["-s"]).status.success(), "{}", daemon.log());
}
