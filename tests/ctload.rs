//! The load tool of scripts/bench.sh against the real kernel: it creates,
//! updates and destroys exactly the flows it documents.
//!
//! Needs root. The test builds its own namespace and removes it.

mod common;
use common::{Netns, ctload};

fn load(ns: &Netns, tool: &std::path::Path, args: &str) -> String {
    let out = ns.exec(&format!("{} {args}", tool.display()));
    assert!(out.contains("(0 failed)"), "ctload {args}: {out}");
    out
}

fn count(ns: &Netns) -> usize {
    ns.exec("conntrack -C").trim().parse().expect("conntrack -C prints a number")
}

#[test]
fn creates_updates_and_destroys_the_documented_flows() {
    let tool = ctload();
    let ns = Netns::new("ctload");

    let out = load(&ns, &tool, "create 1000 --batch 300");
    assert!(out.starts_with("create: 1000 flows in "), "{out}");
    assert_eq!(count(&ns), 1000);

    let table = ns.exec("conntrack -L 2>/dev/null");
    // Flow 7: plain. Flow 990 (10.0.3.222): every tenth is source-NATed.
    let plain = "ESTABLISHED src=10.0.0.7 dst=198.51.100.7 sport=1031 dport=443 \
                 src=198.51.100.7 dst=10.0.0.7 sport=443 dport=1031 [ASSURED] mark=1 ";
    let natted = "ESTABLISHED src=10.0.3.222 dst=198.51.100.7 sport=2014 dport=443 \
                  src=198.51.100.7 dst=203.0.113.5 sport=443 dport=1123 [ASSURED] mark=1 ";
    for want in [plain, natted] {
        assert!(table.contains(want), "no `{want}` in:\n{}", &table[..table.len().min(2000)]);
    }
    assert_eq!(table.matches("dst=203.0.113.5").count(), 100, "one flow in ten is NATed");

    // --start shifts the numbering: 1000..1099 are new flows.
    load(&ns, &tool, "create 100 --start 1000");
    assert_eq!(count(&ns), 1100);

    load(&ns, &tool, "update 1000 --mark 7 --rate 20000");
    let table = ns.exec("conntrack -L 2>/dev/null");
    assert_eq!(table.matches(" mark=7 ").count(), 1000, "update sets the mark");
    assert_eq!(table.matches(" mark=1 ").count(), 100);

    load(&ns, &tool, "destroy 1100");
    assert_eq!(count(&ns), 0);

    // Destroying flows that do not exist is reported as failures.
    let failed = ns.try_exec(&format!("{} destroy 10", tool.display()));
    assert!(!failed.status.success(), "destroying missing flows must fail");
    assert!(String::from_utf8_lossy(&failed.stdout).contains("(10 failed)"));
}

#[test]
fn events_reads_one_queued_event_per_create() {
    let tool = ctload();
    let ns = Netns::new("ctload-ev");

    let out = ns.exec(&format!("{} events 5000 --batch 700", tool.display()));
    let rate: f64 = out
        .split("= ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no rate in {out:?}"));
    assert!(out.starts_with("events: 5000 events of 5000 creates read in ") && rate > 0.0, "{out}");
    assert!(out.contains("(0 overruns, 0 failed)"), "{out}");
    assert_eq!(count(&ns), 5000, "the flows were created");
}
