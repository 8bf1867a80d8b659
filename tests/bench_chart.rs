//! The chart of scripts/bench.sh: scripts/bench/chart.py draws the JSON
//! lines of recorded runs (tests/fixtures/bench/) as an SVG that parses as
//! XML, holds the panels the results have figures for, leaves out those
//! they do not, and is the same bytes every time.
//!
//! Needs python3 (scripts/setup.sh installs it); no root, no network.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn repo(path: &str) -> PathBuf {
    Path::new(ROOT).join(path)
}

/// Runs chart.py on `fixture` into a fresh file and returns the SVG.
fn draw(fixture: &str, tag: &str) -> String {
    let out = std::env::temp_dir().join(format!("ctsync-chart-{}-{tag}.svg", std::process::id()));
    let run = Command::new("python3")
        .arg(repo("scripts/bench/chart.py"))
        .arg(repo(fixture))
        .arg(&out)
        .output()
        .expect("run python3 scripts/bench/chart.py (apt-get install python3)");
    assert!(
        run.status.success(),
        "chart.py {fixture} failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let svg = std::fs::read_to_string(&out).expect("chart.py wrote no SVG");
    let _ = std::fs::remove_file(&out);
    svg
}

/// The SVG parsed by Python's xml.etree: its root tag, then the content of
/// every `<text>`, one a line. Fails if the SVG is not well-formed XML.
fn texts(svg: &str) -> Vec<String> {
    let parse = "import sys, xml.etree.ElementTree as ET\n\
                 root = ET.fromstring(sys.stdin.read())\n\
                 print(root.tag)\n\
                 for t in root.iter('{http://www.w3.org/2000/svg}text'): print(t.text)\n";
    let mut child = Command::new("python3")
        .args(["-c", parse])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(svg.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the SVG does not parse as XML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> =
        String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect();
    assert_eq!(lines.remove(0), "{http://www.w3.org/2000/svg}svg", "root element");
    lines
}

fn has(texts: &[String], part: &str) -> bool {
    texts.iter().any(|t| t.contains(part))
}

#[test]
fn every_mode_draws_every_panel() {
    let svg = draw("tests/fixtures/bench/results.jsonl", "all");
    let t = texts(&svg);
    for part in [
        "(a) Latency CDF",
        "idle (200 creates/s)",
        "loaded",
        // The pooled p50 of the two repetitions, as in the fixture.
        "ctsyncd: p50 0.21, p99 0.9 ms",
        "conntrackd: p50 0.336, p99 1.44 ms",
        "each percentile is the median of the repetitions",
        "(b) ctsyncd / conntrackd",
        "1.0 = same",
        "commit rate, -c on fw2",
        "drain rate of queued events (drain)",
        "bulk -n into a fresh fw2, time (bulk)",
        "bulk -B into a fresh fw2, time (bulk)",
        "0.50x, lower is better (0.8 vs 1.6)",
        "1.30x, higher is better (172k vs 132k)",
        "(c) Rates against the physical limit",
        "drain rate (events/s)",
        "ctsyncd 172k = 17 % of the limit",
        "limit: ctload's batched creates: 416k/s (median of 2 run(s))",
        "limit: queued events read: 993k/s (median of 2 run(s))",
    ] {
        assert!(has(&t, part), "no {part:?} in the chart's texts: {t:#?}");
    }
    // The fixture skips the mixed and defaults modes: nothing of them.
    assert!(!has(&t, "mixed") && !has(&t, "defaults"), "{t:#?}");
    assert_eq!(svg.matches("<polyline").count(), 4, "two daemons, idle and loaded");
    assert_eq!(svg, draw("tests/fixtures/bench/results.jsonl", "again"), "same input, same bytes");
}

#[test]
fn main_mode_alone_leaves_the_other_panels_out() {
    let svg = draw("tests/fixtures/bench/results-main-only.jsonl", "main");
    let t = texts(&svg);
    for part in
        ["(b) ctsyncd / conntrackd", "convergence time, N creates", "(c) Rates", "limit 415k/s"]
    {
        assert!(has(&t, part), "no {part:?} in the chart's texts: {t:#?}");
    }
    // No drain run, no raw event rate: neither the bar nor the limit.
    for part in ["(a) Latency", "drain", "bulk", "queued events"] {
        assert!(!has(&t, part), "{part:?} drawn without its runs: {t:#?}");
    }
    assert!(!svg.contains("<polyline"), "a CDF without latency runs");
}
