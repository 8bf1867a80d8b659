//! Hostile datagrams on the sync link: garbage, forged, tampered,
//! truncated and replayed ones, floods of forgeries, and forged HELLOs
//! against conntrackd's unauthenticated wire format.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{Netns, wait_for};
use crate::harness::{
    BIN, Pair, Spoofer, captured_sync_datagrams, open_capture, protocol_counter, tcp_flow,
};

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
    // Under load, the start's exchange of tables can end with a second
    // bulk, which waits out the one-a-second spacing: take the baseline
    // once no bulk went for longer than that, or that bulk would count as
    // a forged HELLO's.
    let bulks = |pair: &Pair| protocol_counter(&stats(pair), "bulks_sent");
    let settled = wait_for(Duration::from_secs(10), || {
        let earlier = bulks(&pair);
        std::thread::sleep(Duration::from_millis(1500));
        bulks(&pair) == earlier
    });
    assert!(settled.is_some(), "fw2 kept sending bulks after its start: {}", pair.log(1));
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
