use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::config::Cidr;
use crate::config::{ChannelKind, LogTarget, SyncMode, SyslogFacility, load};
use crate::flow::{proto, tcp_state};

const FILE: &str = "/etc/conntrackd/conntrackd.conf";
const EXAMPLES: &str = "/usr/share/doc/conntrackd/examples";

fn parse(text: &str) -> Result<Config> {
    super::super::from_str(text, Path::new(FILE))
}

fn err(text: &str) -> ConfigError {
    match parse(text) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e,
    }
}

/// Asserts the error's line, keyword and that its text contains `needle`.
fn assert_err(text: &str, line: u64, key: Option<&str>, needle: &str) {
    let e = err(text);
    let shown = e.to_string();
    assert_eq!(e.line(), Some(line), "{shown}");
    assert_eq!(e.key(), key, "{shown}");
    assert!(shown.starts_with(&format!("{FILE}:{line}:")), "{shown}");
    assert!(shown.contains(needle), "{shown:?} lacks {needle:?}");
    assert!(!shown.contains('\n'), "{shown:?}");
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conntrackd").join(name)
}

/// A minimal valid file; `general` and `sync` are spliced into the blocks.
fn with(general: &str, sync: &str) -> String {
    format!(
        "Sync {{\n\tMode FTFW {{\n\t}}\n\tUDP {{\n\t\tIPv4_address 10.0.0.1\n\t\t\
         IPv4_Destination_Address 10.0.0.2\n\t}}\n{sync}\n}}\nGeneral {{\n{general}\n}}\n"
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn lexer_splits_words_braces_and_drops_comments() {
    let tokens = lex("Sync{ # a comment { }\n  Mode\tFTFW {}\r\n}#x\n");
    let kinds: Vec<Kind<'_>> = tokens.iter().map(|t| t.kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Word("Sync"),
            Kind::Open,
            Kind::Word("Mode"),
            Kind::Word("FTFW"),
            Kind::Open,
            Kind::Close,
            Kind::Close
        ]
    );
    let at = |i: usize| (tokens[i].pos.line, tokens[i].pos.column);
    assert_eq!(at(0), (1, 1));
    assert_eq!(at(1), (1, 5));
    assert_eq!(at(2), (2, 3));
    assert_eq!(at(3), (2, 8));
    assert_eq!(at(6), (3, 1));
    assert!(lex("# only\n\n   # comments\n").is_empty());
    let paths = lex("Path /var/run/conntrackd.ctl\nIPv6_address fe80::/10");
    assert_eq!(paths[1].kind, Kind::Word("/var/run/conntrackd.ctl"));
    assert_eq!(paths[3].kind, Kind::Word("fe80::/10"));
}

#[test]
fn syntax_is_detected() {
    assert!(is_conntrackd_syntax("Sync {\n}"));
    assert!(is_conntrackd_syntax("# comment\n\nGeneral\n{\n"));
    assert!(is_conntrackd_syntax("Genral {"));
    assert!(!is_conntrackd_syntax("sync:\n  channels: []\n"));
    assert!(!is_conntrackd_syntax("general: {}\n"));
    assert!(!is_conntrackd_syntax("{sync: {}}\n"));
    assert!(!is_conntrackd_syntax("---\n"));
    assert!(!is_conntrackd_syntax(""));
    assert!(!is_conntrackd_syntax("\"Sync\" {"));
}

#[test]
fn a_pair_is_mapped_field_by_field() {
    let c = load(&fixture("primary.conf")).unwrap();
    let g = &c.general;
    // Written as /var/lock/conntrackd.lock, /var/run/conntrackd.ctl and
    // /var/log/conntrackd-fw1.log: moved where the packaged unit may write.
    assert_eq!(g.lock_file, Path::new("/run/ctsync/conntrackd.lock"));
    assert_eq!(g.control_socket, Path::new("/run/ctsync/conntrackd.ctl"));
    assert_eq!(g.control_group, None);
    assert_eq!(g.log.target, LogTarget::File);
    assert_eq!(g.log.file.as_deref(), Some(Path::new("/var/log/ctsync/conntrackd-fw1.log")));
    assert_eq!(g.log.syslog_facility, SyslogFacility::Local2);
    assert_eq!(g.cache_limit.get(), 131_072);
    assert_eq!(g.netlink.rcvbuf.get(), 2_097_152);
    assert_eq!(g.netlink.rcvbuf_max.get(), 8_388_608);
    assert!(g.netlink.reliable_events);
    assert_eq!(g.netlink.overrun_resync, Duration::from_secs(10));
    let f = &g.filter;
    assert!(!f.ignore_loopback && !f.ignore_sync_addresses);
    assert_eq!(
        f.protocols.accept,
        [proto::TCP, proto::UDP, proto::ICMP, proto::ICMPV6, proto::SCTP, proto::GRE]
    );
    assert!(f.protocols.ignore.is_empty());
    let cidrs: Vec<Cidr> = ["127.0.0.1/32", "192.168.100.0/24", "::1/128", "fe80::/10"]
        .map(|s| s.parse().unwrap())
        .into();
    assert_eq!(f.addresses.ignore, cidrs);
    assert!(f.addresses.accept.is_empty());
    assert_eq!(
        f.tcp_states.accept,
        [
            tcp_state::ESTABLISHED,
            tcp_state::CLOSE,
            tcp_state::TIME_WAIT,
            tcp_state::CLOSE_WAIT,
            tcp_state::SYN_SENT2,
            tcp_state::SYN_SENT
        ]
    );
    let s = &c.sync;
    assert_eq!(s.mode, SyncMode::Ftfw);
    assert_eq!(s.wire, Dialect::Conntrackd);
    assert_eq!(s.resend_queue.get(), 65_536);
    assert_eq!(s.ack_window.get(), 100);
    assert_eq!(s.commit_timeout, Some(Duration::from_secs(180)));
    assert_eq!(s.purge_timeout, Duration::from_secs(15));
    assert!(s.startup_resync);
    assert!(s.tcp_window_tracking);
    // Not in conntrackd.conf: ctsyncd's own defaults.
    assert_eq!(s.alive_interval, Duration::from_secs(1));
    assert_eq!(s.peer_timeout, Duration::from_secs(4));
    assert_eq!(s.max_datagram, 1472);
    // `Default` first, then file order.
    assert_eq!(s.channels.len(), 2);
    let (a, b) = (&s.channels[0], &s.channels[1]);
    assert_eq!(a.kind, ChannelKind::Udp { peer: ip("192.168.100.2") });
    assert_eq!(a.local_addr(), "192.168.100.1:3780".parse().unwrap());
    assert_eq!(a.interface.as_deref(), Some("eth2"));
    assert_eq!(a.sndbuf.map(|n| n.get()), Some(1_249_280));
    assert_eq!(a.rcvbuf.map(|n| n.get()), Some(2_498_560));
    assert_eq!(b.kind, ChannelKind::Udp { peer: ip("192.168.2.2") });
    assert_eq!(b.local_addr(), "192.168.2.1:3781".parse().unwrap());
    assert_eq!(b.interface.as_deref(), Some("eth3"));
    assert_eq!((b.sndbuf, b.rcvbuf), (None, None));

    let expected =
        [(49, "UNIX Backlog"), (55, "EventIterationLimit"), (56, "Scheduler"), (45, "Syslog")];
    assert_eq!(c.warnings.len(), expected.len(), "{:#?}", c.warnings);
    let path = fixture("primary.conf");
    for (w, (line, key)) in c.warnings.iter().zip(expected) {
        assert!(w.starts_with(&format!("{}:{line}: {key}: ", path.display())), "{w}");
    }
    assert_eq!(
        c.sync.expectations,
        crate::expect::ExpectSync::Helpers(vec!["ftp".into(), "sip".into()])
    );

    let backup = load(&fixture("backup.conf")).unwrap();
    for (p, b) in c.sync.channels.iter().zip(&backup.sync.channels) {
        assert_eq!((p.local, p.remote()), (b.remote(), b.local));
    }
}

#[test]
fn printed_yaml_loads_back_to_the_same_config() {
    for name in ["primary.conf", "backup.conf"] {
        let c = load(&fixture(name)).unwrap();
        let yaml = c.to_yaml();
        assert!(!is_conntrackd_syntax(&yaml), "{yaml}");
        assert!(yaml.contains("wire: conntrackd"), "{yaml}");
        let again = super::super::from_str(&yaml, Path::new("/tmp/ctsyncd.yaml"))
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert!(again.warnings.is_empty());
        let mut without = c.clone();
        without.warnings.clear();
        assert_eq!(again, without, "{yaml}");
    }
}

#[test]
fn conntrackd_defaults_apply_where_the_file_is_silent() {
    let c = parse(&with("", "")).unwrap();
    // conntrackd's defaults, in the directories the packaged unit may write.
    assert_eq!(c.general.lock_file, Path::new("/run/ctsync/conntrackd.lock"));
    assert_eq!(c.general.control_socket, Path::new("/run/ctsync/conntrackd.ctl"));
    assert_eq!(c.general.log.target, LogTarget::Stderr);
    assert_eq!(c.general.cache_limit.get(), 262_144);
    assert_eq!(c.general.netlink.overrun_resync, Duration::from_secs(30));
    assert!(!c.general.netlink.reliable_events);
    assert_eq!(c.general.filter, crate::config::FilterConfig::accept_all());
    assert_eq!(c.sync.wire, Dialect::Conntrackd);
    assert_eq!(c.sync.commit_timeout, None);
    assert_eq!(c.sync.purge_timeout, Duration::from_secs(60));
    assert_eq!(c.sync.resend_queue.get(), 131_072);
    assert_eq!(c.sync.ack_window.get(), 300);
    assert!(!c.sync.startup_resync);
    assert!(!c.sync.tcp_window_tracking);
    assert_eq!(c.sync.channels[0].port, 3780);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn values_and_booleans() {
    let c = parse(&with(
        "LogFile on\nSyslog on\nNetlinkOverrunResync On\nNetlinkBufferSize 16777216\n\
         NetlinkBufferSizeMaxGrowth 1048576",
        "Options { TCPWindowTracking YES ExpectationSync off }\nCommitTimeout 0\nPurgeTimeout 0",
    ))
    .unwrap();
    assert_eq!(c.general.log.file.as_deref(), Some(Path::new("/var/log/ctsync/conntrackd.log")));
    assert_eq!(c.general.log.target, LogTarget::File);
    assert_eq!(c.general.netlink.overrun_resync, Duration::from_secs(30));
    // A cap below the initial size means "never grow", as in conntrackd.
    assert_eq!(c.general.netlink.rcvbuf_max, c.general.netlink.rcvbuf);
    assert!(c.sync.tcp_window_tracking);
    assert_eq!(c.sync.commit_timeout, None);
    assert_eq!(c.sync.purge_timeout, Duration::from_secs(60));
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains(":14: Syslog: ignored"), "{:?}", c.warnings);

    let c = parse(&with("Syslog local5\nLogFile off\nNetlinkOverrunResync off", "")).unwrap();
    assert_eq!(c.general.log.target, LogTarget::Syslog);
    assert_eq!(c.general.log.syslog_facility, SyslogFacility::Local5);
    assert_eq!(c.general.netlink.overrun_resync, Duration::from_secs(30));
    assert!(c.warnings[0].contains(":13: NetlinkOverrunResync: off is not supported"));

    // Deprecated names conntrackd still accepts.
    let c = parse(&with("SocketBufferSize 1048576\nSocketBufferSizeMaxGrown 4194304", "")).unwrap();
    assert_eq!(c.general.netlink.rcvbuf.get(), 1 << 20);
    assert_eq!(c.general.netlink.rcvbuf_max.get(), 4 << 20);
    let c = parse(&with("", "").replace("Mode FTFW", "Mode nack")).unwrap();
    assert_eq!(c.sync.mode, SyncMode::Ftfw);
    let c = parse(&with("", "").replace("Mode FTFW", "Mode ftfw")).unwrap();
    assert_eq!(c.sync.mode, SyncMode::Ftfw);
}

#[test]
fn parsed_but_unimplemented_options_warn_with_their_line() {
    let c = parse(&with(
        "PollSecs 15\nNice -1\nSystemd off\nHashSize 8192",
        "Mode FTFW { DisableExternalCache on }\nRefreshTime 15\n\
         UDP { IPv4_address 10.0.1.1 IPv4_Destination_Address 10.0.1.2 Checksum off }",
    ))
    .unwrap();
    assert!(c.sync.direct_to_kernel);
    let w = &c.warnings;
    let expect = [
        ":9: RefreshTime: ignored",
        ":10: Checksum: off is ignored",
        ":13: PollSecs: polling is not implemented",
        ":14: Nice: deprecated",
        ":15: Systemd: off is ignored",
    ];
    assert_eq!(w.len(), expect.len(), "{w:#?}");
    for (w, e) in w.iter().zip(expect) {
        assert!(w.starts_with(FILE) && w.contains(e), "{w:?} lacks {e:?}");
    }
    let c = parse(&format!("{}Helper {{ Type ftp inet tcp {{ QueueNum 5 }} }}\n", with("", "")))
        .unwrap();
    assert!(c.warnings[0].contains(":13: Helper: "), "{:?}", c.warnings);
}

#[test]
fn multicast_channels() {
    let c = parse(
        "Sync {\n Mode FTFW { }\n Multicast {\n  IPv4_address 225.0.0.51\n  Group 3781\n  \
         IPv4_interface 10.1.0.1\n  Interface eth3\n }\n Multicast Default {\n  \
         IPv4_address 225.0.0.50\n  Group 3780\n  Interface eth2\n }\n}\n",
    )
    .unwrap();
    let (a, b) = (&c.sync.channels[0], &c.sync.channels[1]);
    assert_eq!(a.kind, ChannelKind::Multicast { group: ip("225.0.0.50") });
    assert_eq!(a.local_addr(), "0.0.0.0:3780".parse().unwrap());
    assert_eq!(b.kind, ChannelKind::Multicast { group: ip("225.0.0.51") });
    assert_eq!(b.local_addr(), "10.1.0.1:3781".parse().unwrap());
    assert_eq!(b.remote_addr(), "225.0.0.51:3781".parse().unwrap());
    let c = parse(
        "Sync { Multicast { IPv6_address ff02::1:3 Interface eth2 IPv6_interface fe80::1 } }",
    )
    .unwrap();
    assert_eq!(c.sync.channels[0].local, ip("::"));
    assert!(c.warnings[0].contains("IPv6_interface: ignored"), "{:?}", c.warnings);
    let c = parse("Sync { UDP { IPv6_Destination_Address fd00::2 } }").unwrap();
    assert_eq!(c.sync.channels[0].local, ip("::"));
}

#[test]
fn shipped_ftfw_example_loads() {
    let path = Path::new(EXAMPLES).join("sync/ftfw/conntrackd.conf");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("{} not installed; skipped", path.display());
        return;
    };
    let c = super::super::from_str(&text, &path).unwrap();
    let ch = &c.sync.channels[0];
    assert_eq!(c.sync.channels.len(), 1);
    assert_eq!(ch.kind, ChannelKind::Multicast { group: ip("225.0.0.50") });
    assert_eq!(ch.local_addr(), "192.168.100.100:3780".parse().unwrap());
    assert_eq!(ch.interface.as_deref(), Some("eth2"));
    assert_eq!(ch.sndbuf.map(|n| n.get()), Some(1_249_280));
    assert_eq!(c.general.cache_limit.get(), 131_072);
    assert_eq!(c.general.lock_file, Path::new("/run/ctsync/conntrack.lock"));
    assert_eq!(c.general.control_socket, Path::new("/run/ctsync/conntrackd.ctl"));
    assert_eq!(c.general.log.file.as_deref(), Some(Path::new("/var/log/ctsync/conntrackd.log")));
    assert_eq!(c.general.filter.protocols.accept, [proto::TCP, proto::SCTP, proto::DCCP]);
    assert_eq!(c.general.filter.addresses.ignore.len(), 6);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn shipped_alarm_notrack_and_stats_examples_are_refused_at_their_line() {
    for (name, needle) in [
        ("sync/alarm/conntrackd.conf", "Mode ALARM is not supported"),
        ("sync/notrack/conntrackd.conf", "Mode NOTRACK is not supported"),
        ("stats/conntrackd.conf", "statistics mode is not supported"),
    ] {
        let path = Path::new(EXAMPLES).join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("{} not installed; skipped", path.display());
            continue;
        };
        let keyword = if name.starts_with("stats") { "Stats {" } else { "Mode " };
        let line = text.lines().position(|l| l.trim_start().starts_with(keyword)).unwrap() + 1;
        let e = super::super::from_str(&text, &path).unwrap_err();
        let shown = e.to_string();
        assert_eq!(e.line(), Some(line as u64), "{shown}");
        assert!(shown.starts_with(&format!("{}:{line}:", path.display())), "{shown}");
        assert!(shown.contains(needle), "{shown}");
    }
}

#[test]
fn syntax_errors_name_the_line() {
    assert_err(&format!("{}}}\n", with("", "")), 13, None, "unexpected '}'");
    assert_err("Sync {\n  Mode FTFW {\n", 3, None, "Mode FTFW block opened at line 2");
    assert_err(&with("Bogus 1", ""), 11, Some("Bogus"), "unknown keyword \"Bogus\" in General");
    assert_err(
        &with("hashlimit 5", ""),
        11,
        Some("hashlimit"),
        "case-sensitive: did you mean HashLimit?",
    );
    assert_err("general {\n}\n", 1, Some("general"), "did you mean General?");
    assert_err(&with("HashLimit lots", ""), 11, Some("HashLimit"), "\"lots\": expected a number");
    assert_err(&with("HashLimit }", ""), 11, None, "unexpected '}', expected a number");
    assert_err(&with("NetlinkEventsReliable maybe", ""), 11, Some("NetlinkEventsReliable"), "");
    assert_err(&with("LockFile var/lock", ""), 11, Some("LockFile"), "absolute path");
    assert_err(&with("UNIX Path /x", ""), 11, None, "expected '{' after UNIX");
    assert_err(&with("Filter { State Accept { ESTABLISHED } }", ""), 11, Some("State"), "for TCP");
    assert_err(&with("Filter { State Accept { OPEN for TCP } }", ""), 11, Some("OPEN"), "");
    // conntrackd's words only, case-sensitive: not our YAML's SYN_SENT2.
    let syn_sent2 = with("Filter { State Accept { SYN_SENT2 for TCP } }", "");
    assert_err(&syn_sent2, 11, Some("SYN_SENT2"), "unknown keyword \"SYN_SENT2\" in State");
    let lower = with("Filter { State Accept { established for TCP } }", "");
    assert_err(&lower, 11, Some("established"), "did you mean ESTABLISHED?");
    assert_err(&with("Filter { State Accept { CLOSE for UDP } }", ""), 11, Some("State"), "");
    assert_err(
        &with("Filter { Address Ignore { IPv4_address ::1 } }", ""),
        11,
        Some("IPv4_address"),
        "invalid IPv4 address \"::1\"",
    );
    assert_err(
        &with("Filter { Protocol Accept { tcpp } }", ""),
        11,
        Some("Protocol Accept"),
        "tcpp",
    );
    assert_err(
        &with("Filter { Address Ignore { IPv4_address 10.1.2.3/8 } }", ""),
        11,
        Some("IPv4_address"),
        "beyond the prefix",
    );
    assert_err(&with("Scheduler { Priority 100 }", ""), 11, Some("Priority"), "0 to 99");
    assert_err(
        "Sync {\n UDP {\n  IPv4_address 10.0.0.1\n  IPv4_Destination_Address 10.0.0.x\n }\n}\n",
        4,
        Some("IPv4_Destination_Address"),
        "invalid IPv4 address",
    );
}

#[test]
fn errors_found_by_shared_validation_point_at_the_conntrackd_line() {
    assert_err(
        &with("", "Mode FTFW {\nResendQueueSize 100\nACKWindowSize 100\n}"),
        10,
        Some("ACKWindowSize"),
        "must be smaller",
    );
    assert_err(&with("HashLimit 0", ""), 11, Some("HashLimit"), "invalid size");
    assert_err(&with("", "Mode FTFW { ResendQueueSize 0 }"), 8, Some("ResendQueueSize"), "");
    assert_err(
        "Sync {\n UDP {\n  IPv4_address 10.0.0.1\n  IPv4_Destination_Address 10.0.0.1\n }\n}\n",
        4,
        Some("IPv4_Destination_Address"),
        "must differ",
    );
    assert_err(
        "Sync {\n UDP {\n  IPv4_Destination_Address 10.0.0.2\n  Port 70000\n }\n}\n",
        4,
        Some("Port"),
        "invalid port",
    );
    assert_err(
        "Sync {\n Multicast {\n  IPv4_address 10.0.0.2\n }\n}\n",
        3,
        Some("IPv4_address"),
        "not a multicast address",
    );
    assert_err(
        "Sync {\n UDP { IPv4_Destination_Address 10.0.0.2 }\n UDP { IPv4_Destination_Address \
         10.0.0.2 }\n}\n",
        3,
        Some("UDP"),
        "earlier channel",
    );
}

#[test]
fn unsupported_setups_are_refused() {
    assert_err(
        &with("", "").replace("Mode FTFW", "Mode ALARM"),
        2,
        Some("Mode"),
        "only speaks FTFW",
    );
    assert_err(
        &with("", "").replace("Mode FTFW", "Mode persistent"),
        2,
        Some("Mode"),
        "Mode persistent is not supported",
    );
    assert_err(&with("", "").replace("Mode FTFW", "Mode NOTRACK"), 2, Some("Mode"), "NOTRACK");
    assert_err(&with("", "").replace("Mode FTFW", "Mode FAST"), 2, Some("Mode"), "unknown mode");
    assert_err(
        &with("", "TCP {\nIPv4_address 10.0.0.1\n}"),
        8,
        Some("TCP"),
        "TCP channels are not supported",
    );
    assert_err(
        &with("", "Multicast {\nIPv4_address 225.0.0.50\n}"),
        8,
        Some("Multicast"),
        "cannot mix Multicast with the UDP channel of line 4",
    );
    assert_err(&format!("{}Stats {{\nLogFile on\n}}\n", with("", "")), 13, Some("Stats"), "both");
    assert_err("General {\n}\nStats {\n}\n", 3, Some("Stats"), "statistics mode");
    assert_err("General {\n HashLimit 10\n}\n", 4, Some("Sync"), "no Sync section");
    assert_err("Sync {\n Mode FTFW { }\n}\n", 1, Some("Sync"), "no channel");
    assert_err("Sync {\n UDP {\n  Port 3780\n }\n}\n", 2, Some("UDP"), "is required");
    assert_err(
        &with("", "Mode FTFW { DisableInternalCache on }"),
        8,
        Some("DisableInternalCache"),
        "NOTRACK",
    );
}

#[test]
fn error_lines_read_as_documented() {
    let e = err(
        "Sync {\n\tUDP { IPv4_Destination_Address 10.0.0.2 }\n}\nGeneral {\n\thashlimit 5\n}\n",
    );
    assert_eq!(
        e.to_string(),
        "/etc/conntrackd/conntrackd.conf:5:2: hashlimit: unknown keyword \"hashlimit\" in General \
         (keywords are case-sensitive: did you mean HashLimit?)"
    );
}

#[test]
fn truncated_and_mangled_files_give_errors_not_panics() {
    let text = std::fs::read_to_string(fixture("primary.conf")).unwrap();
    let full = parse(&text).unwrap();
    for (cut, _) in text.char_indices() {
        if let Ok(c) = parse(&text[..cut]) {
            // Only a cut after the last block can still hold the whole file.
            assert_eq!(c.sync, full.sync, "cut at {cut}");
        }
    }
    for junk in ["}", "{", "Sync", "Sync {", "Sync { UDP Default", "Sync { Mode }", "General { {"] {
        let e = err(junk);
        assert!(e.line().is_some(), "{junk:?}: {e}");
    }
}

#[test]
fn paths_in_conntrackds_directories_move_where_the_unit_may_write() {
    for (written, used) in [
        ("/var/lock/conntrackd.lock", "/run/ctsync/conntrackd.lock"),
        ("/run/lock/x.lock", "/run/ctsync/x.lock"),
        ("/var/run/conntrackd.ctl", "/run/ctsync/conntrackd.ctl"),
        ("/run/conntrackd.ctl", "/run/ctsync/conntrackd.ctl"),
        ("/var/log/conntrackd.log", "/var/log/ctsync/conntrackd.log"),
        // Anywhere else the operator chose the place: kept, and checked at start.
        ("/var/log/fw/conntrackd.log", "/var/log/fw/conntrackd.log"),
        ("/run/ctsync/c.ctl", "/run/ctsync/c.ctl"),
        ("/srv/c.lock", "/srv/c.lock"),
        ("/var/run/", "/var/run/"),
    ] {
        assert_eq!(writable_path(written), used, "{written}");
    }
}
