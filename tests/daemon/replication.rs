//! Replication and commit between the pair: flows, updates and destroys
//! reaching the peer and its kernel, restarts, netlink overruns, the
//! handover steps of the notify script, anti-entropy, direct-to-kernel
//! mode and a stalled stream.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ctsync::flow::{Flow, proto};

use crate::common::wait_for;
use crate::harness::{Pair, snat_flow, tcp_flow};

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
