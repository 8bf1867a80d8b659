//! The kernel adapter against the real kernel. Every test builds its own
//! network namespaces (needs root); the conntrack CLI is the referee.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::Netns;
use ctsync::flow::{Dir, Flow, proto, status, tcp_flag, tcp_state};
use ctsync::netlink::{CommitOptions, CtEvent, EventConfig, EventItem, EventSocket, Kernel};

/// `conntrack -L` lines (both families) of a namespace.
fn conntrack_list(ns: &Netns) -> Vec<String> {
    let out = ns.exec("conntrack -L 2>/dev/null");
    out.lines().map(str::to_owned).collect()
}

/// The one line that contains all of `needles`.
fn line_with<'a>(lines: &'a [String], needles: &[&str]) -> &'a str {
    let found: Vec<&String> =
        lines.iter().filter(|l| needles.iter().all(|n| l.contains(n))).collect();
    assert_eq!(found.len(), 1, "want one line with {needles:?} in {lines:#?}");
    found[0]
}

/// A conntrack line without the parts that change or that `Flow`'s
/// Display leaves out: family prefix, timeout, use and id counters, and
/// labels (the CLI prints them only with a label map installed; the dump
/// checks them).
fn normalized(line: &str) -> (Vec<String>, u32) {
    let mut tokens: Vec<&str> = line.split_whitespace().collect();
    if tokens.first().is_some_and(|t| t.starts_with("ipv")) {
        tokens.drain(..2);
    }
    let timeout = tokens.get(2).and_then(|t| t.parse().ok()).unwrap_or(u32::MAX);
    let rest = tokens
        .iter()
        .enumerate()
        .filter(|(i, t)| *i != 2 && !["use=", "id=", "labels="].iter().any(|p| t.starts_with(p)))
        .map(|(_, t)| t.to_string())
        .collect();
    (rest, timeout)
}

/// Assert that the kernel's line for a flow says what the flow says.
fn assert_listed(lines: &[String], flow: &Flow, needles: &[&str]) {
    let line = line_with(lines, needles);
    let (got, got_timeout) = normalized(line);
    let (want, want_timeout) = normalized(&flow.to_string());
    assert_eq!(got, want, "kernel: {line}\nours:   {flow}");
    // The kernel counts down from the commit: a busy machine may take a
    // few seconds to list it.
    assert!(
        got_timeout.abs_diff(want_timeout) <= 5,
        "timeout {got_timeout} vs {want_timeout}: {line}"
    );
}

fn tcp_established(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Flow {
    let mut f = Flow::new_v4(proto::TCP, src.into(), dst.into(), sport, dport);
    f.status |= status::SEEN_REPLY | status::ASSURED;
    f.proto_state = tcp_state::ESTABLISHED;
    f.timeout = 120;
    f.tcp.flags_orig = tcp_flag::WINDOW_SCALE | tcp_flag::SACK_PERM;
    f.tcp.flags_reply = tcp_flag::WINDOW_SCALE | tcp_flag::SACK_PERM;
    f.tcp.wscale_orig = 7;
    f.tcp.wscale_reply = 7;
    f
}

/// Flows of every kind we commit in the first test, with the conntrack
/// output words that find each one.
fn sample_flows() -> Vec<(Flow, Vec<&'static str>)> {
    let mut out = Vec::new();
    // TCP with SNAT to 203.0.113.5:51234 and a mark.
    let mut snat = tcp_established([192, 168, 1, 10], [198, 51, 100, 7], 40000, 443);
    snat.mark = 0x42;
    snat.set_addrs(Dir::Reply, [198, 51, 100, 7].into(), [203, 0, 113, 5].into());
    snat.l4[3] = 51234;
    out.push((snat, vec!["sport=40000"]));
    // TCP with DNAT to 10.0.0.80:8080.
    let mut dnat = tcp_established([192, 168, 1, 11], [203, 0, 113, 5], 40001, 80);
    dnat.set_addrs(Dir::Reply, [10, 0, 0, 80].into(), [192, 168, 1, 11].into());
    dnat.l4[2] = 8080;
    out.push((dnat, vec!["sport=40001"]));
    // UDP, replied.
    let mut udp = Flow::new_v4(proto::UDP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 5000, 53);
    udp.status |= status::SEEN_REPLY;
    udp.timeout = 60;
    udp.mark = 7;
    out.push((udp, vec!["udp", "sport=5000"]));
    // ICMP echo, reply tuple with echo reply.
    let mut icmp =
        Flow::new_v4(proto::ICMP, [10, 0, 0, 1].into(), [10, 0, 0, 3].into(), 0x1234, 0x0800);
    icmp.l4[3] = 0;
    icmp.timeout = 30;
    out.push((icmp, vec!["icmp", "id=4660"]));
    // IPv6 TCP.
    let mut v6 = Flow::new(
        proto::TCP,
        "2001:db8::1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
        40002,
        22,
    );
    v6.status |= status::SEEN_REPLY | status::ASSURED;
    v6.proto_state = tcp_state::ESTABLISHED;
    v6.timeout = 300;
    out.push((v6, vec!["sport=40002"]));
    // A zone.
    let mut zoned = tcp_established([10, 0, 0, 1], [10, 0, 0, 2], 40003, 80);
    zoned.zone = 9;
    out.push((zoned, vec!["sport=40003"]));
    // Labels.
    let mut labelled = tcp_established([10, 0, 0, 1], [10, 0, 0, 2], 40004, 80);
    labelled.extra_mut().labels = Some((1 << 1) | (1 << 70));
    out.push((labelled, vec!["sport=40004"]));
    // A helper (the FTP one), when the kernel has it.
    let mut ftp = tcp_established([10, 0, 0, 1], [10, 0, 0, 2], 40005, 21);
    ftp.extra_mut().helper = Some("ftp".into());
    out.push((ftp, vec!["sport=40005"]));
    out
}

/// A namespace whose ruleset uses `ct label`, so the kernel attaches the
/// label extension to new entries, and that has NAT hooks.
fn firewall_ns(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.exec(
        "nft -f - <<'EOF'
table ip t {
    chain pre { type filter hook prerouting priority 0; ct label 127 counter; }
}
table ip nat {
    chain post { type nat hook postrouting priority 100; }
    chain pre { type nat hook prerouting priority -100; }
}
table ip6 nat {
    chain post { type nat hook postrouting priority 100; }
}
EOF",
    );
    ns
}

/// `Kernel::get` answers with the entry as a dump shows it (NAT, labels
/// and all), finds it by its reply tuple too, and says `None` for a tuple
/// the table does not hold.
#[test]
fn get_finds_an_entry_by_either_tuple_and_none_for_a_missing_one() {
    let ns = firewall_ns("get");
    let to_commit: Vec<Flow> = sample_flows().into_iter().map(|(f, _)| f).collect();
    let (dumped, got, by_reply, missing) = ns.run(move || {
        let mut k = Kernel::open().unwrap();
        k.commit(&to_commit, &CommitOptions::default()).unwrap();
        let dumped = k.dump().unwrap();
        let got: Vec<Option<Flow>> = dumped.iter().map(|f| k.get(&f.key()).unwrap()).collect();
        let snat = dumped.iter().find(|d| d.sport(Dir::Orig) == 40000).unwrap();
        let mut reply = snat.key();
        reply.src = snat.src(Dir::Reply);
        reply.dst = snat.dst(Dir::Reply);
        reply.l4 = [snat.sport(Dir::Reply), snat.dport(Dir::Reply)];
        let by_reply = k.get(&reply).unwrap();
        let mut absent = snat.key();
        absent.l4[0] = absent.l4[0].wrapping_add(1);
        (dumped, got, by_reply, k.get(&absent).unwrap())
    });
    assert!(!dumped.is_empty());
    for (d, g) in dumped.iter().zip(&got) {
        let mut g = g.clone().unwrap_or_else(|| panic!("{d} not found by get"));
        g.timeout = d.timeout;
        assert_eq!(&g, d);
    }
    let snat = dumped.iter().find(|d| d.sport(Dir::Orig) == 40000).unwrap();
    assert_eq!(by_reply.map(|f| f.key()), Some(snat.key()), "found by its reply tuple");
    assert_eq!(missing, None);
}

#[test]
fn committed_flows_appear_in_conntrack_list() {
    let ns = firewall_ns("commit");
    let flows = sample_flows();
    let to_commit: Vec<Flow> = flows.iter().map(|(f, _)| f.clone()).collect();
    let (report, dumped) = ns.run(move || {
        let mut k = Kernel::open().unwrap();
        let report = k.commit(&to_commit, &CommitOptions::default()).unwrap();
        (report, k.dump().unwrap())
    });
    assert_eq!(report.failed, vec![], "{report:?}");
    assert_eq!(report.created, flows.len());
    let lines = conntrack_list(&ns);
    for (flow, needles) in &flows {
        assert_listed(&lines, flow, needles);
        // Our own dump agrees with what we committed, field for field
        // (bar the timeout, which counts down, and flags the kernel owns).
        let back = dumped.iter().find(|d| d.key() == flow.key()).expect("dumped");
        let mut want = flow.clone();
        want.timeout = back.timeout;
        want.status = back.status;
        want.tcp = back.tcp;
        assert_eq!(back, &want);
        assert_eq!(back.status & !status::KERNEL_MANAGED & !0x1f0, flow.status & !0x1f0);
    }
    // The SNAT and DNAT flows carry the kernel's NAT status bits.
    let snat = dumped.iter().find(|d| d.sport(Dir::Orig) == 40000).unwrap();
    assert_ne!(snat.status & status::SRC_NAT, 0, "{snat} status {:#x}", snat.status);
    assert_eq!(snat.dst(Dir::Reply), IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)));
    let dnat = dumped.iter().find(|d| d.sport(Dir::Orig) == 40001).unwrap();
    assert_ne!(dnat.status & status::DST_NAT, 0, "{dnat}");
    let labelled = dumped.iter().find(|d| d.sport(Dir::Orig) == 40004).unwrap();
    assert_eq!(labelled.labels(), Some((1 << 1) | (1 << 70)));
}

#[test]
fn gre_flow_if_the_kernel_tracks_gre() {
    if !std::path::Path::new("/proc/sys/net/netfilter/nf_conntrack_gre_timeout").exists() {
        println!("skipped: this kernel has no GRE conntrack");
        return;
    }
    let ns = firewall_ns("gre");
    let mut gre = Flow::new_v4(proto::GRE, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 0x10, 0x20);
    gre.status |= status::SEEN_REPLY;
    gre.timeout = 100;
    let f = gre.clone();
    let report = ns.run(move || Kernel::open().unwrap().commit([&f], &Default::default()).unwrap());
    assert_eq!(report.failed, vec![]);
    let lines = conntrack_list(&ns);
    assert_listed(&lines, &gre, &["gre"]);
}

#[test]
fn existing_flows_are_updated_not_duplicated() {
    let ns = firewall_ns("update");
    let mut f = tcp_established([10, 0, 0, 1], [10, 0, 0, 2], 1234, 80);
    f.mark = 1;
    let first = f.clone();
    let mut second = f.clone();
    second.mark = 2;
    second.timeout = 500;
    // A NAT flow: its update must not try to change NAT (EOPNOTSUPP/EBUSY).
    let mut nat = tcp_established([10, 0, 0, 1], [10, 0, 0, 2], 1235, 80);
    nat.set_addrs(Dir::Reply, [10, 0, 0, 2].into(), [10, 9, 9, 9].into());
    let nat_again = nat.clone();
    let (r1, r2, dumped) = ns.run(move || {
        let mut k = Kernel::open().unwrap();
        let r1 = k.commit([&first, &nat], &CommitOptions::default()).unwrap();
        let opts = CommitOptions { timeout: None, be_liberal: true, create_only: false };
        let r2 = k.commit([&second, &nat_again], &opts).unwrap();
        (r1, r2, k.dump().unwrap())
    });
    assert_eq!((r1.created, r1.updated), (2, 0));
    assert_eq!((r2.created, r2.updated, r2.failed.len()), (0, 2, 0), "{r2:?}");
    assert_eq!(dumped.len(), 2);
    let plain = dumped.iter().find(|f| f.sport(Dir::Orig) == 1234).unwrap();
    assert_eq!(plain.mark, 2);
    assert!(plain.timeout > 400);
    assert_ne!(plain.tcp.flags_orig & tcp_flag::BE_LIBERAL, 0);
    assert_ne!(plain.tcp.flags_reply & tcp_flag::BE_LIBERAL, 0);
    let nat = dumped.iter().find(|f| f.sport(Dir::Orig) == 1235).unwrap();
    assert_eq!(nat.dst(Dir::Reply), IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9)));
    assert_ne!(nat.status & status::SRC_NAT, 0);
}

/// Wait until `pred` holds for the events read so far.
fn collect_events(
    sock: &mut EventSocket,
    seen: &mut Vec<EventItem>,
    within: Duration,
    pred: impl Fn(&[EventItem]) -> bool,
) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        sock.recv(seen, usize::MAX).unwrap();
        if pred(seen) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn real_traffic_events_and_dump_match_conntrack() {
    let client = Netns::new("cli");
    let fw = Netns::new("fw");
    let server = Netns::new("srv");
    let (c, f, s) = (client.name(), fw.name(), server.name());
    common::run("ip", &["link", "add", "vc", "netns", c, "type", "veth", "peer", "fc", "netns", f]);
    common::run("ip", &["link", "add", "vs", "netns", s, "type", "veth", "peer", "fs", "netns", f]);
    client.exec(
        "ip addr add 10.1.0.2/24 dev vc && ip link set vc up && ip route add default via 10.1.0.1",
    );
    server.exec(
        "ip addr add 10.2.0.2/24 dev vs && ip link set vs up && ip route add default via 10.2.0.1",
    );
    fw.exec(
        "ip addr add 10.1.0.1/24 dev fc && ip link set fc up && \
         ip addr add 10.2.0.1/24 dev fs && ip link set fs up && \
         sysctl -qw net.ipv4.ip_forward=1 && \
         sysctl -qw net.netfilter.nf_conntrack_events=1",
    );
    fw.exec(
        "nft -f - <<'EOF'
table inet filter {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname fc ct state new accept
    }
}
table ip nat {
    chain post { type nat hook postrouting priority 100; oifname fs snat to 10.2.0.1; }
}
EOF",
    );
    // Subscribe before the traffic starts.
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let watcher = fw.spawn(move || {
        let mut sock = EventSocket::open(&EventConfig::default()).unwrap();
        tx.send(()).unwrap();
        let mut seen = Vec::new();
        let tcp_done = |ev: &[EventItem]| {
            let destroyed = |p: u8| {
                ev.iter().any(|e| matches!(&e.event, CtEvent::Destroy(f) if f.l4proto == p))
            };
            destroyed(proto::TCP) && destroyed(proto::UDP)
        };
        // First phase: until the dump below is done.
        go_rx.recv().unwrap();
        let dumped = Kernel::open().unwrap().dump().unwrap();
        let ok = collect_events(&mut sock, &mut seen, Duration::from_secs(40), tcp_done);
        (ok, seen, dumped)
    });
    rx.recv().unwrap();
    server.exec(
        "python3 -c '
import socket,time
t=socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((\"0.0.0.0\",8080)); t.listen(1)
u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((\"0.0.0.0\",5353))
d,a=u.recvfrom(100); u.sendto(d,a)
c,_=t.accept(); c.recv(10); c.send(b\"pong\"); time.sleep(20)
' >/dev/null 2>&1 &
sleep 0.5",
    );
    client.exec(
        "python3 -c '
import socket,struct,time
u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(3)
u.bind((\"0.0.0.0\",4444)); u.sendto(b\"ping\",(\"10.2.0.2\",5353)); u.recvfrom(10)
t=socket.create_connection((\"10.2.0.2\",8080), timeout=3); t.send(b\"ping\"); t.recv(10)
time.sleep(18)
' >/dev/null 2>&1 &
sleep 1",
    );
    // The client holds its connection open, so the listing and the dump
    // below see the same ESTABLISHED state instead of racing its close. On
    // a busy machine the client may take a while to start: wait for both.
    let mut lines = Vec::new();
    let both = common::wait_for(Duration::from_secs(15), || {
        lines = conntrack_list(&fw);
        let has = |words: &[&str]| lines.iter().any(|l| words.iter().all(|w| l.contains(w)));
        has(&["tcp", "ESTABLISHED", "dport=8080"]) && has(&["udp", "dport=5353"])
    });
    assert!(both.is_some(), "the client's flows never showed up: {lines:#?}");
    go_tx.send(()).unwrap();
    // The TCP entry sits in TIME_WAIT for minutes, and an expired UDP entry
    // waits for the conntrack garbage collector (up to a minute on an idle
    // table): delete both so that their DESTROY comes now.
    fw.exec("conntrack -D -p tcp >/dev/null 2>&1; conntrack -D -p udp >/dev/null 2>&1; true");
    let (ok, seen, dumped) = watcher.join().unwrap();
    let tcp = dumped
        .iter()
        .find(|f| f.l4proto == proto::TCP && f.sport(Dir::Reply) == 8080)
        .expect("tcp flow dumped");
    let udp = dumped.iter().find(|f| f.l4proto == proto::UDP).expect("udp flow dumped");
    for flow in [tcp, udp] {
        let sport = format!("sport={}", flow.sport(Dir::Orig));
        let dport = format!("dport={}", flow.dport(Dir::Orig));
        assert_listed(&lines, flow, &[proto_word(flow.l4proto), &sport, &dport]);
        // SNAT to the firewall's address on the server side.
        assert_eq!(flow.dst(Dir::Reply), IpAddr::V4(Ipv4Addr::new(10, 2, 0, 1)));
        assert_ne!(flow.status & status::SRC_NAT, 0);
    }
    assert!(ok, "no DESTROY for both flows in {seen:#?}");
    for p in [proto::TCP, proto::UDP] {
        let of = |e: &EventItem| match &e.event {
            // The client's flows; late packets after the delete below may
            // open other entries (server to NAT address) that the kernel
            // itself then removes.
            CtEvent::New(f) | CtEvent::Update(f) | CtEvent::Destroy(f) => {
                f.l4proto == p && f.src(Dir::Orig) == IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2))
            }
            CtEvent::Overrun | CtEvent::ExpNew(_) | CtEvent::ExpDestroy(_) => false,
        };
        assert!(seen.iter().any(|e| of(e) && matches!(e.event, CtEvent::New(_))), "NEW {p}");
        assert!(seen.iter().any(|e| of(e) && matches!(e.event, CtEvent::Update(_))), "UPDATE {p}");
        // NEW and UPDATE come from the traffic (port 0), DESTROY from the
        // conntrack CLI's socket.
        for e in seen.iter().filter(|e| of(e)) {
            let from_kernel = !matches!(e.event, CtEvent::Destroy(_));
            assert_eq!(e.origin_pid == 0, from_kernel, "{e:?}");
        }
    }
}

fn proto_word(p: u8) -> &'static str {
    ctsync::flow::proto_name(p)
}

/// `count` distinct UDP flows.
fn many_flows(count: usize) -> Vec<Flow> {
    (0..count)
        .map(|i| {
            let i = i as u32;
            let src = Ipv4Addr::from(0x0a00_0000 | (i >> 14));
            let mut f = Flow::new_v4(
                proto::UDP,
                src,
                Ipv4Addr::new(192, 0, 2, 1),
                1024 + (i & 0x3fff) as u16,
                53,
            );
            f.status |= status::SEEN_REPLY;
            f.timeout = 600;
            f
        })
        .collect()
}

#[test]
fn hundred_thousand_flows_in_batches() {
    let ns = Netns::new("bulk");
    let flows = many_flows(100_000);
    let report =
        ns.run(move || Kernel::open().unwrap().commit(&flows, &Default::default()).unwrap());
    let count: usize = ns.exec("conntrack -C").trim().parse().unwrap();
    println!(
        "100000 flows committed in {:?} ({:.0} flows/s)",
        report.elapsed,
        100_000.0 / report.elapsed.as_secs_f64()
    );
    assert_eq!(report.failed.len(), 0, "{:?}", &report.failed[..report.failed.len().min(5)]);
    assert_eq!(report.created, 100_000);
    assert_eq!(count, 100_000);
}

/// A backup's entries all expire together, one purge timeout after `-t`,
/// and a fail-back commits right then: an entry that was there for the
/// create (EEXIST) is gone for the update (ENOENT). The commit must create
/// it again, not lose the flow. The entries here expire one second after
/// they were made, and the commit starts a little earlier each attempt, so
/// that some attempts land in the race.
#[test]
fn a_commit_recreates_entries_that_expire_under_it() {
    let ns = Netns::new("expiry");
    let attempts = ns.run(|| {
        let mut k = Kernel::open().unwrap();
        let flows = many_flows(60_000);
        let short = CommitOptions { timeout: Some(1), ..Default::default() };
        let mut attempts = Vec::new();
        for delay_ms in [850u64, 900, 950, 1000, 1050, 1100] {
            k.flush().unwrap();
            let start = Instant::now();
            k.commit(&flows, &short).unwrap();
            let at = start + Duration::from_millis(delay_ms);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let report = k.commit(&flows, &Default::default()).unwrap();
            let in_kernel = k.dump().unwrap().len();
            attempts.push((delay_ms, report, in_kernel));
        }
        attempts
    });
    for (delay_ms, report, in_kernel) in &attempts {
        println!("commit {delay_ms} ms after the entries were made: {}", report.summary());
        assert!(
            report.failed.is_empty(),
            "{delay_ms} ms: {:?}",
            &report.failed[..5.min(report.failed.len())]
        );
        assert_eq!(*in_kernel, 60_000, "{delay_ms} ms: {}", report.summary());
    }
    assert!(
        attempts.iter().any(|(_, r, _)| r.expired_under > 0),
        "no attempt raced an expiry; the test did not test the race"
    );
}

/// A dump reports each entry's `CTA_ID`, the id `conntrack -L -o id`
/// prints, and an entry created in place of an expired one has another.
#[test]
fn dumps_carry_the_kernel_entry_id() {
    let ns = Netns::new("entryid");
    let flow = tcp_established([10, 0, 0, 1], [10, 0, 0, 2], 1111, 80);
    let f = flow.clone();
    let first = ns.run(move || {
        let mut k = Kernel::open().unwrap();
        k.commit([&f], &Default::default()).unwrap();
        k.dump().unwrap()[0].entry_id.0
    });
    let listed = ns.exec("conntrack -L -o id 2>/dev/null");
    assert_ne!(first, 0);
    assert!(
        listed.split_whitespace().any(|w| w == format!("id={first}")),
        "id {first} not in {listed}"
    );
    // The kernel derives the id from the entry's address, so an entry made
    // after another was freed may reuse its id; what the daemon relies on is
    // that entries alive at the same time differ (an entry whose destroy
    // event is being redelivered stays allocated until it is delivered).
    let other = tcp_established([10, 0, 0, 1], [10, 0, 0, 2], 1112, 80);
    let (again, second) = ns.run(move || {
        let mut k = Kernel::open().unwrap();
        k.commit([&other], &Default::default()).unwrap();
        let dumped = k.dump().unwrap();
        let id = |f: &Flow| dumped.iter().find(|d| d.key() == f.key()).unwrap().entry_id;
        (id(&flow), id(&other))
    });
    assert!(!again.differs(ctsync::flow::EntryId(first)), "{first} {again:?}");
    assert!(second.differs(ctsync::flow::EntryId(first)), "{first} {second:?}");
}

/// keepalived adds the virtual IPs and sends its gratuitous ARPs before
/// notify_master runs the commit. In those moments a server's datagram to
/// the WAN VIP, a local address now, makes a local entry (when the input
/// chain lets it in) whose original tuple is a synced SNAT flow's reply
/// tuple. The commit must give the synced flow its own mapping, not another
/// port the kernel would pick silently, and remove the stray entry.
#[test]
fn a_local_entry_on_a_synced_flows_nat_mapping_gives_way_to_the_synced_flow() {
    let ns = firewall_ns("natclash");
    ns.exec(
        "conntrack -I -p udp -s 203.0.113.10 -d 203.0.113.1 --sport 5002 --dport 40000 \
         -r 203.0.113.1 -q 203.0.113.10 --reply-port-src 40000 --reply-port-dst 5002 -t 30 >/dev/null 2>&1",
    );
    let mut flow = Flow::new_v4(
        proto::UDP,
        Ipv4Addr::new(192, 168, 60, 10),
        Ipv4Addr::new(203, 0, 113, 10),
        40000,
        5002,
    );
    flow.set_addrs(
        Dir::Reply,
        Ipv4Addr::new(203, 0, 113, 10).into(),
        Ipv4Addr::new(203, 0, 113, 1).into(),
    );
    flow.status |= status::SEEN_REPLY | status::ASSURED;
    flow.timeout = 120;
    let f = flow.clone();
    let report = ns.run(move || Kernel::open().unwrap().commit([&f], &Default::default()).unwrap());
    let lines = conntrack_list(&ns);
    println!("{}\n{lines:#?}", report.summary());
    assert!(report.failed.is_empty(), "{report:?}");
    line_with(
        &lines,
        &["src=192.168.60.10", "src=203.0.113.10 dst=203.0.113.1 sport=5002 dport=40000 "],
    );
    assert_eq!(lines.len(), 1, "the stray local entry is still there: {lines:#?}");
    assert_eq!(report.displaced.len(), 1);
}

#[test]
fn own_commits_are_recognised_by_port_id() {
    let ns = Netns::new("origin");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (cli_tx, cli_rx) = std::sync::mpsc::channel::<()>();
    let handle = ns.spawn(move || {
        let mut sock = EventSocket::open(&EventConfig::default()).unwrap();
        let mut k = Kernel::open().unwrap();
        ready_tx.send(()).unwrap();
        let ours = tcp_established([10, 0, 0, 1], [10, 0, 0, 2], 1111, 80);
        k.commit([&ours], &Default::default()).unwrap();
        cli_rx.recv().unwrap();
        let mut seen = Vec::new();
        let both = |ev: &[EventItem]| ev.len() >= 2;
        collect_events(&mut sock, &mut seen, Duration::from_secs(5), both);
        (k.port_id(), seen)
    });
    ready_rx.recv().unwrap();
    ns.exec(
        "conntrack -I -s 10.0.0.1 -d 10.0.0.2 -p tcp --sport 2222 --dport 80 \
         --state ESTABLISHED -t 100 -u SEEN_REPLY >/dev/null 2>&1",
    );
    cli_tx.send(()).unwrap();
    let (port_id, seen) = handle.join().unwrap();
    assert_ne!(port_id, 0);
    let origin = |sport: u16| {
        seen.iter()
            .find(|e| matches!(&e.event, CtEvent::New(f) if f.sport(Dir::Orig) == sport))
            .map(|e| e.origin_pid)
    };
    assert_eq!(origin(1111), Some(port_id), "{seen:#?}");
    let cli = origin(2222).expect("event of conntrack -I");
    assert_ne!(cli, port_id);
}

#[test]
fn tiny_receive_buffer_overruns() {
    let ns = Netns::new("enobufs");
    let (seen, stats) = ns.run(|| {
        let cfg = EventConfig { rcvbuf: 4096, reliable: false, expectations: false };
        let mut sock = EventSocket::open(&cfg).unwrap();
        let flows = many_flows(20_000);
        Kernel::open().unwrap().commit(&flows, &Default::default()).unwrap();
        let mut seen = Vec::new();
        sock.recv(&mut seen, usize::MAX).unwrap();
        (seen, sock.stats())
    });
    assert!(seen.iter().any(|e| e.event == CtEvent::Overrun), "{} events", seen.len());
    assert!(stats.overruns >= 1);
    assert!(stats.received < 20_000);
}

#[test]
fn delete_set_timeout_all_and_flush() {
    let ns = Netns::new("delete");
    let flows = many_flows(1000);
    let (deleted, missing, changed, left_after_timeout, left) = ns.run(move || {
        let mut k = Kernel::open().unwrap();
        let mut v6 = tcp_established([0; 4], [0; 4], 1, 2);
        v6.set_addrs(Dir::Orig, "2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap());
        v6.set_addrs(Dir::Reply, "2001:db8::2".parse().unwrap(), "2001:db8::1".parse().unwrap());
        let r = k.commit(flows.iter().chain([&v6]), &Default::default()).unwrap();
        assert_eq!(r.created, 1001, "{r:?}");
        let keys: Vec<_> = flows[..100].iter().map(Flow::key).collect();
        let deleted = k.delete(&keys).unwrap();
        let missing = k.delete(&keys[..3]).unwrap();
        let changed = k.set_timeout_all(7).unwrap();
        let dumped = k.dump().unwrap();
        let timeouts_ok = dumped.iter().all(|f| f.timeout <= 7);
        assert!(timeouts_ok);
        k.flush().unwrap();
        (deleted, missing, changed, dumped.len(), k.dump().unwrap().len())
    });
    assert_eq!(deleted.deleted, 100);
    assert!(deleted.failed.is_empty());
    assert_eq!(missing.deleted, 0);
    assert_eq!(missing.failed.len(), 3);
    assert!(missing.failed.iter().all(|(_, e)| *e == libc::ENOENT));
    assert_eq!(changed, 901);
    assert_eq!(left_after_timeout, 901);
    assert_eq!(left, 0);
    assert_eq!(ns.exec("conntrack -C").trim(), "0");
}

#[test]
fn reliable_mode_reports_no_overrun() {
    // NETLINK_NO_ENOBUFS: the same burst into a tiny buffer loses events
    // silently (destroy events are kept and re-sent by the kernel) instead
    // of failing recvmsg.
    let ns = Netns::new("reliable");
    let (seen, stats) = ns.run(|| {
        let cfg = EventConfig { rcvbuf: 4096, reliable: true, expectations: false };
        let mut sock = EventSocket::open(&cfg).unwrap();
        Kernel::open().unwrap().commit(&many_flows(20_000), &Default::default()).unwrap();
        let mut seen = Vec::new();
        sock.recv(&mut seen, usize::MAX).unwrap();
        (seen, sock.stats())
    });
    assert!(seen.iter().all(|e| e.event != CtEvent::Overrun));
    assert_eq!(stats.overruns, 0);
    assert!(stats.received > 0 && stats.received < 20_000, "{stats:?}");
}

#[test]
fn failures_are_reported_per_flow_across_batches() {
    let ns = Netns::new("failures");
    let mut flows: Vec<Flow> = (0..1000)
        .map(|i| tcp_established([10, 0, (i >> 8) as u8, i as u8], [10, 1, 0, 1], 1000, 80))
        .collect();
    // An impossible TCP state: the attribute policy refuses it (ERANGE).
    let bad = [3usize, 500, 999];
    for &i in &bad {
        flows[i].proto_state = 200;
    }
    let want: Vec<_> = bad.iter().map(|&i| (flows[i].key(), libc::ERANGE)).collect();
    let report =
        ns.run(move || Kernel::open().unwrap().commit(&flows, &Default::default()).unwrap());
    assert_eq!(report.created, 997);
    assert_eq!(report.failed, want);
    assert_eq!(ns.exec("conntrack -C").trim(), "997");
}

/// An FTP passive-mode expectation under a master 10.0.1.2:40000 →
/// 10.0.2.2:21: the client may connect to 10.0.2.2:`port` from any port.
fn ftp_expectation(master_sport: u16, port: u16) -> ctsync::expect::Expectation {
    let key = |sport, dport| ctsync::flow::FlowKey {
        src: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 2)),
        dst: IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2)),
        l4proto: proto::TCP,
        l4: [sport, dport],
        zone: 0,
    };
    ctsync::expect::Expectation {
        master: key(master_sport, 21),
        tuple: key(0, port),
        mask_src: IpAddr::V4(Ipv4Addr::BROADCAST),
        mask_sport: 0,
        timeout: 300,
        flags: 0,
        class: 0,
        helper: "ftp".into(),
        nat: None,
        expectfn: None,
    }
}

#[test]
fn expectations_commit_after_their_master_dump_report_and_delete() {
    let ns = Netns::new("expect");
    // Loads nf_conntrack_ftp, so that the helper is found by name.
    ns.exec(
        "nft add table ip t && nft add ct helper ip t ftp-std '{ type \"ftp\" protocol tcp; }'",
    );
    let (k_port, seen, dumped, commit, orphan, deleted) = ns.run(|| {
        let cfg = EventConfig { expectations: true, ..EventConfig::default() };
        let mut sock = EventSocket::open(&cfg).unwrap();
        let mut k = Kernel::open().unwrap();
        let mut master = tcp_established([10, 0, 1, 2], [10, 0, 2, 2], 40000, 21);
        master.extra_mut().helper = Some("ftp".into());
        let report = k.commit([&master], &Default::default()).unwrap();
        assert_eq!(report.created, 1, "{report:?}");
        let exp = ftp_expectation(40000, 50000);
        let commit = k.commit_expectations([&exp]).unwrap();
        // No master 10.0.1.2:40001 → 10.0.2.2:21 in the table.
        let orphan = k.commit_expectations([&ftp_expectation(40001, 50001)]).unwrap();
        let dumped = k.dump_expectations().unwrap();
        let deleted = k.delete_expectations([&exp.key()]).unwrap();
        let mut seen = Vec::new();
        let both = |ev: &[EventItem]| {
            ev.iter()
                .filter(|e| matches!(e.event, CtEvent::ExpNew(_) | CtEvent::ExpDestroy(_)))
                .count()
                >= 2
        };
        collect_events(&mut sock, &mut seen, Duration::from_secs(5), both);
        (k.port_id(), seen, dumped, commit, orphan, deleted)
    });
    let want = ftp_expectation(40000, 50000);
    assert_eq!((commit.created, commit.failed.len()), (1, 0), "{commit:?}");
    assert_eq!(orphan.failed, vec![(ftp_expectation(40001, 50001).key(), libc::ENOENT)]);
    assert_eq!(dumped.len(), 1, "{dumped:#?}");
    // The kernel gives it the ftp helper's policy timeout.
    assert!(dumped[0].timeout > 290 && dumped[0].timeout <= 300, "{:?}", dumped[0]);
    assert_eq!(ctsync::expect::Expectation { timeout: 300, ..dumped[0].clone() }, want);
    assert_eq!(deleted.deleted, 1, "{deleted:?}");
    let exp_events: Vec<_> = seen
        .iter()
        .filter_map(|e| match &e.event {
            CtEvent::ExpNew(x) => Some(("new", x.key(), e.origin_pid)),
            CtEvent::ExpDestroy(x) => Some(("destroy", x.key(), e.origin_pid)),
            _ => None,
        })
        .collect();
    assert_eq!(
        exp_events,
        vec![("new", want.key(), k_port), ("destroy", want.key(), k_port)],
        "{seen:#?}"
    );
    assert!(ns.exec("conntrack -L expect 2>/dev/null").is_empty());
}
