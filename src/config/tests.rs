use super::*;
use crate::flow::{proto, tcp_state};

const FILE: &str = "/etc/ctsync/ctsyncd.yaml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    from_str(text, Path::new(FILE))
}

fn err(text: &str) -> ConfigError {
    match parse(text) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e,
    }
}

/// Asserts the error's key, line and that its text contains `needle`.
fn assert_err(text: &str, key: &str, line: Option<u64>, needle: &str) {
    let e = err(text);
    let shown = e.to_string();
    assert_eq!(e.key(), Some(key), "{shown}");
    assert_eq!(e.line(), line, "{shown}");
    assert!(shown.starts_with(FILE), "{shown}");
    assert!(shown.contains(needle), "{shown:?} lacks {needle:?}");
    assert!(!shown.contains('\n'), "{shown:?}");
}

const MINIMAL: &str =
    "sync:\n  auth: { insecure: true }\n  channels:\n    - { local: 10.0.0.1, peer: 10.0.0.2 }\n";

fn with_sync(extra: &str) -> String {
    format!("{MINIMAL}  {extra}\n")
}

#[test]
fn minimal_file_gets_the_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.general.lock_file, Path::new("/run/ctsync/ctsyncd.lock"));
    assert_eq!(c.general.control_socket, Path::new("/run/ctsync/ctsyncd.sock"));
    assert_eq!(c.general.control_group, None);
    assert_eq!(c.general.log.target, LogTarget::Stderr);
    assert_eq!(c.general.log.level, LogLevel::Info);
    assert_eq!(c.general.log.syslog_facility, SyslogFacility::Daemon);
    assert_eq!(c.general.cache_limit.get(), 1_048_576);
    assert_eq!(c.general.netlink.rcvbuf.get(), 8_388_608);
    assert_eq!(c.general.netlink.rcvbuf_max.get(), 134_217_728);
    assert!(!c.general.netlink.reliable_events);
    assert_eq!(c.general.netlink.overrun_resync, Duration::from_secs(1));
    assert_eq!(c.general.filter, FilterConfig::default());
    assert_eq!(c.sync.mode, SyncMode::Ftfw);
    assert_eq!(c.sync.wire, Dialect::Native);
    assert_eq!(c.sync.resend_queue.get(), 131_072);
    assert_eq!(c.sync.ack_window.get(), 300);
    assert_eq!(c.sync.alive_interval, Duration::from_secs(1));
    assert_eq!(c.sync.peer_timeout, Duration::from_secs(4));
    assert_eq!(c.sync.anti_entropy_interval, Duration::from_secs(30));
    assert_eq!(c.sync.max_datagram, 1472);
    assert_eq!(c.sync.commit_timeout, Some(Duration::from_secs(180)));
    assert_eq!(c.sync.purge_timeout, Duration::from_secs(60));
    assert!(!c.sync.tcp_window_tracking);
    assert!(c.sync.startup_resync);
    assert!(!c.sync.direct_to_kernel);
    let ch = &c.sync.channels[0];
    assert_eq!(ch.kind, ChannelKind::Udp { peer: "10.0.0.2".parse().unwrap() });
    assert_eq!(ch.local_addr(), "10.0.0.1:3780".parse().unwrap());
    assert_eq!(ch.remote_addr(), "10.0.0.2:3780".parse().unwrap());
    assert_eq!((ch.interface.as_deref(), ch.sndbuf, ch.rcvbuf), (None, None, None));
}

/// docs/keepalived.md gives fw1's configuration; it must be accepted as
/// written (it once lacked `sync.auth`).
#[test]
fn the_keepalived_guides_configuration_is_valid() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/keepalived.md"))
            .unwrap();
    let block = doc.split("```yaml\n").nth(1).and_then(|b| b.split("```").next()).unwrap();
    let c = parse(block).unwrap_or_else(|e| panic!("{e}\n{block}"));
    assert_eq!(c.sync.auth, SyncAuth::KeyFile("/etc/ctsync/sync.key".into()));
}

#[test]
fn example_files_are_valid_and_mirror_each_other() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let primary = load(&dir.join("primary.yaml")).unwrap();
    let backup = load(&dir.join("backup.yaml")).unwrap();
    let (p, b) = (&primary.sync.channels[0], &backup.sync.channels[0]);
    assert_eq!(p.local, b.remote());
    assert_eq!(b.local, p.remote());
    assert_eq!(p.interface.as_deref(), Some("sync0"));
    // Apart from the addresses, the two files say the same thing.
    let mut b2 = backup.clone();
    b2.sync.channels = primary.sync.channels.clone();
    b2.general.filter.addresses = primary.general.filter.addresses.clone();
    assert_eq!(b2, primary);
}

#[test]
fn print_config_round_trips() {
    let text = "
general:
  control_group: ctsync
  metrics_listen: '[::1]:9478'
  log: { target: file, file: /var/log/ctsyncd.log, level: debug, syslog_facility: local3 }
  cache_limit: 2M
  netlink: { rcvbuf: 1M, rcvbuf_max: 1G, reliable_events: true, overrun_resync: 1m30s }
  filter:
    ignore_loopback: false
    protocols: { accept: [tcp, 17, ipv6-icmp], ignore: [gre] }
    addresses: { ignore: [10.0.0.0/8, 'fe80::/10', 192.0.2.7] }
    tcp_states: { accept: [ESTABLISHED], ignore: [closed, TIME_WAIT] }
sync:
  wire: conntrackd
  resend_queue: 1000
  ack_window: 10
  alive_interval: 250ms
  peer_timeout: 1500ms
  max_datagram: 9000
  commit_timeout: 0
  purge_timeout: 5
  tcp_window_tracking: true
  startup_resync: false
  direct_to_kernel: true
  channels:
    - { type: multicast, local: 10.1.0.1, group: 225.0.0.50, interface: sync1, port: 3781 }
    - { local: 'fd00::1', peer: 'fd00::2', sndbuf: 4M, rcvbuf: 8388608 }
";
    let c = parse(text).unwrap();
    assert_eq!(c.general.cache_limit.get(), 2 << 20);
    assert_eq!(c.general.netlink.overrun_resync, Duration::from_secs(90));
    assert_eq!(c.general.filter.protocols.accept, vec![proto::TCP, proto::UDP, proto::ICMPV6]);
    assert_eq!(c.general.filter.tcp_states.ignore, vec![tcp_state::CLOSE, tcp_state::TIME_WAIT]);
    assert_eq!(c.general.filter.addresses.ignore[2], "192.0.2.7/32".parse().unwrap());
    assert_eq!(c.sync.commit_timeout, None);
    assert!(c.sync.direct_to_kernel);
    assert_eq!(c.sync.alive_interval, Duration::from_millis(250));
    assert_eq!(c.sync.channels[0].remote_addr(), "225.0.0.50:3781".parse().unwrap());
    assert_eq!(c.sync.channels[1].sndbuf.map(|n| n.get()), Some(4 << 20));
    let printed = c.to_yaml();
    let again = parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(again, c);
    let default = Config::default_for_tests();
    assert_eq!(parse(&default.to_yaml()).unwrap(), default);
}

#[test]
fn empty_and_comment_only_files_need_a_channel() {
    for text in ["", "# nothing\n", "---\n"] {
        assert_err(text, "sync.channels", None, "at least one channel");
    }
    assert_err("sync:\n  channels: []\n", "sync.channels", Some(2), "at least one channel");
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    assert_err(
        "general:\n  lock_file: /x\n  bogus: 1\n",
        "general.bogus",
        Some(3),
        ":3:3: general.bogus: unknown key `bogus`",
    );
    assert_err(&with_sync("typo: 1"), "sync.typo", Some(5), "unknown key `typo`");
    assert_err(
        "sync:\n  channels:\n    - local: 10.0.0.1\n      peer: 10.0.0.2\n      prot: 1\n",
        "sync.channels[0].prot",
        Some(5),
        "expected one of type, local, peer",
    );
    assert_err("extra: 1\n", "extra", Some(1), "unknown key `extra`");
}

#[test]
fn type_errors_name_the_key() {
    assert_err("general:\n  log:\n    level: loud\n", "general.log.level", Some(3), "`loud`");
    assert_err(&with_sync("mode: alarm"), "sync.mode", Some(5), "ftfw");
    assert_err(&with_sync("startup_resync: maybe"), "sync.startup_resync", Some(5), "");
    assert_err(&with_sync("direct_to_kernel: yes please"), "sync.direct_to_kernel", Some(5), "");
    assert_err("sync:\n  ack_window: [1]\n", "sync.ack_window", Some(2), "sequence");
    assert_err("general: [\n", "general", Some(1), "");
}

#[test]
fn bad_values_point_at_the_value() {
    let text = "sync:\n  channels:\n    - local: 10.0.0.1\n      peer: 10.0.0.x\n";
    let e = err(text);
    assert_eq!(
        e.to_string(),
        "/etc/ctsync/ctsyncd.yaml:4:13: sync.channels[0].peer: invalid IP address \"10.0.0.x\""
    );
    assert_err(&with_sync("alive_interval: 1 s"), "sync.alive_interval", Some(5), "500ms");
    assert_err(&with_sync("resend_queue: 0"), "sync.resend_queue", Some(5), "\"0\"");
    assert_err(&with_sync("max_datagram: 100"), "sync.max_datagram", Some(5), "512 to 65507");
    assert_err(
        "general:\n  netlink:\n    rcvbuf: lots\n",
        "general.netlink.rcvbuf",
        Some(3),
        "invalid size \"lots\"",
    );
    assert_err("general:\n  cache_limit: 0\n", "general.cache_limit", Some(2), "");
    assert_err(
        "general:\n  filter:\n    addresses:\n      ignore: [10.0.0.0/8, 10.1.2.3/16]\n",
        "general.filter.addresses.ignore[1]",
        Some(4),
        "beyond the prefix",
    );
    assert_err(
        "general:\n  filter:\n    protocols: { accept: [tcp, tcpp] }\n",
        "general.filter.protocols.accept[1]",
        Some(3),
        "unknown protocol \"tcpp\"",
    );
    assert_err(
        "general:\n  filter:\n    tcp_states:\n      ignore:\n        - OPEN\n",
        "general.filter.tcp_states.ignore[0]",
        Some(5),
        "unknown TCP state",
    );
    assert_err("general:\n  lock_file: run/x\n", "general.lock_file", Some(2), "absolute");
}

#[test]
fn relations_between_values_are_checked() {
    assert_err(
        &with_sync("resend_queue: 100\n  ack_window: 100"),
        "sync.ack_window",
        Some(6),
        "smaller than sync.resend_queue (100)",
    );
    assert_err(
        &with_sync("alive_interval: 2s\n  peer_timeout: 2s"),
        "sync.peer_timeout",
        Some(6),
        "longer than sync.alive_interval (2s)",
    );
    assert_err(&with_sync("alive_interval: 0"), "sync.alive_interval", Some(5), "zero");
    assert_err(
        &with_sync("anti_entropy_interval: 200ms"),
        "sync.anti_entropy_interval",
        Some(5),
        "0 (off) or at least sync.alive_interval (1s)",
    );
    assert_eq!(
        parse(&with_sync("anti_entropy_interval: 0")).unwrap().sync.anti_entropy_interval,
        Duration::ZERO
    );
    assert_err(
        "general:\n  netlink: { rcvbuf: 2M, rcvbuf_max: 1M }\n",
        "general.netlink.rcvbuf_max",
        Some(2),
        "at least",
    );
    assert_err(
        "general:\n  log:\n    target: file\n",
        "general.log.file",
        Some(2),
        "required when general.log.target is file",
    );
}

#[test]
fn channels_are_checked() {
    let ch = |body: &str| format!("sync:\n  channels:\n    - {body}\n");
    assert_err(&ch("{ peer: 10.0.0.2 }"), "sync.channels[0].local", Some(3), "required");
    assert_err(&ch("{ local: 10.0.0.1 }"), "sync.channels[0].peer", Some(3), "required");
    assert_err(
        &ch("{ local: 10.0.0.1, peer: 10.0.0.1 }"),
        "sync.channels[0].peer",
        Some(3),
        "differ",
    );
    assert_err(
        &ch("{ local: 10.0.0.1, peer: 224.0.0.1 }"),
        "sync.channels[0].peer",
        Some(3),
        "type: multicast",
    );
    assert_err(
        &ch("{ local: 10.0.0.1, peer: 'fd00::2' }"),
        "sync.channels[0].peer",
        Some(3),
        "same IP family",
    );
    assert_err(
        &ch("{ local: 10.0.0.1, peer: 10.0.0.2, group: 225.0.0.1 }"),
        "sync.channels[0].group",
        Some(3),
        "only for type: multicast",
    );
    assert_err(
        &ch("{ type: multicast, local: 10.0.0.1, group: 10.0.0.9 }"),
        "sync.channels[0].group",
        Some(3),
        "not a multicast",
    );
    assert_err(
        &ch("{ type: multicast, local: 10.0.0.1 }"),
        "sync.channels[0].group",
        Some(3),
        "required",
    );
    assert_err(
        &ch("{ local: 10.0.0.1, peer: 10.0.0.2, port: 0 }"),
        "sync.channels[0].port",
        Some(3),
        "invalid port",
    );
    assert_err(
        &ch("{ local: 10.0.0.1, peer: 10.0.0.2, interface: this-name-is-too-long }"),
        "sync.channels[0].interface",
        Some(3),
        "15 characters",
    );
    assert_err(
        &ch("{ local: 10.0.0.1, peer: 10.0.0.2 }\n    - { local: 10.0.0.1, peer: 10.0.0.2 }"),
        "sync.channels[1]",
        Some(4),
        "earlier channel",
    );
    assert_err(
        &ch("{ local: 10.0.0.1, peer: 10.0.0.2, sndbuf: 0 }"),
        "sync.channels[0].sndbuf",
        Some(3),
        "",
    );
}

#[test]
fn read_errors_name_the_file() {
    let e = load(Path::new("/nonexistent/ctsyncd.yaml")).unwrap_err();
    let shown = e.to_string();
    assert!(shown.starts_with("/nonexistent/ctsyncd.yaml: cannot read: "), "{shown}");
}

#[test]
fn control_characters_in_input_do_not_reach_the_message() {
    let e = err("general:\n  \"bo\\x1bgus\": 1\n");
    assert!(!e.to_string().contains('\x1b'), "{e}");
}

#[test]
fn duplicate_keys_are_refused() {
    let e = err("sync:\n  ack_window: 10\n  ack_window: 20\n");
    assert_eq!(e.line(), Some(3), "{e}");
    assert_eq!(e.key(), Some("sync.ack_window"), "{e}");
}

#[test]
fn metrics_listen_is_an_address_with_a_port() {
    let with = |value: &str| {
        parse(&format!(
            "general:\n  metrics_listen: {value}\nsync:\n  auth: {{ insecure: true }}\n  channels:\n    - {{ local: 10.0.0.1, peer: 10.0.0.2 }}\n"
        ))
    };
    assert_eq!(Config::default_for_tests().general.metrics_listen, None);
    assert_eq!(
        with("127.0.0.1:9478").unwrap().general.metrics_listen,
        Some("127.0.0.1:9478".parse().unwrap())
    );
    for bad in ["127.0.0.1", "localhost:9478", "127.0.0.1:0", "'[::1]'"] {
        let err = with(bad).expect_err(bad).to_string();
        assert!(err.contains(":2:19: general.metrics_listen: invalid address"), "{bad}: {err}");
    }
}

#[test]
fn native_wire_needs_a_key_or_an_explicit_insecure() {
    let bare = "sync:\n  channels:\n    - { local: 10.0.0.1, peer: 10.0.0.2 }\n";
    assert_err(bare, "sync.auth", Some(1), "ctsyncd --gen-key /etc/ctsync/sync.key");
    let keyed = "sync:\n  auth: { key_file: /etc/ctsync/sync.key }\n  channels:\n    - { local: \
                 10.0.0.1, peer: 10.0.0.2 }\n";
    assert_eq!(parse(keyed).unwrap().sync.auth, SyncAuth::KeyFile("/etc/ctsync/sync.key".into()));
    assert_eq!(parse(MINIMAL).unwrap().sync.auth, SyncAuth::Insecure);
    let conntrackd = "sync:\n  wire: conntrackd\n  channels:\n    - { local: 10.0.0.1, peer: \
                      10.0.0.2 }\n";
    assert_eq!(parse(conntrackd).unwrap().sync.auth, SyncAuth::Insecure);
    let both = with_sync("wire: conntrackd").replace("insecure: true", "key_file: /k");
    assert_err(&both, "sync.auth.key_file", Some(2), "cannot be authenticated");
}

#[test]
fn encrypt_needs_a_key_file() {
    let keyed = "sync:\n  auth:\n    key_file: /etc/ctsync/sync.key\n    encrypt: true\n  \
                 channels:\n    - { local: 10.0.0.1, peer: 10.0.0.2 }\n";
    let c = parse(keyed).unwrap();
    assert!(c.sync.encrypt);
    assert_eq!(parse(&c.to_yaml()).unwrap(), c, "encrypt survives printing");
    assert!(!parse(MINIMAL).unwrap().sync.encrypt, "off by default");
    let insecure = "sync:\n  auth:\n    insecure: true\n    encrypt: true\n  channels:\n    - \
                    { local: 10.0.0.1, peer: 10.0.0.2 }\n";
    assert_err(insecure, "sync.auth.encrypt", Some(4), "set sync.auth.key_file");
}

#[test]
fn key_file_permissions_and_lengths_are_checked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("ctsync-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str, mode: u32| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let k1 = "11".repeat(32);
    let k2 = "22".repeat(32);
    let good = write("good", &format!("# current\n7 {k1}\n\n8 {k2}\n"), 0o600);
    let am_root = nix::unistd::Uid::effective().is_root();
    if am_root {
        let keys = load_key_file(&good).unwrap();
        assert_eq!(keys.iter().map(|k| k.id).collect::<Vec<_>>(), vec![7, 8]);
        let open = write("open", &format!("1 {k1}\n"), 0o640);
        let e = load_key_file(&open).unwrap_err().to_string();
        assert!(e.contains("open: mode 0640") && e.contains("chmod 600"), "{e}");
        let short = write("short", &format!("1 {k1}\n2 {}\n", "ab".repeat(31)), 0o600);
        let e = load_key_file(&short).unwrap_err().to_string();
        assert!(e.contains("short:2: key is 31 bytes, at least 32"), "{e}");
        let three = write("three", &format!("1 {k1}\n2 {k2}\n3 {k1}\n"), 0o600);
        assert!(
            load_key_file(&three).unwrap_err().to_string().contains("three:3: at most two keys")
        );
        let bad = write("bad", "1 zz\n", 0o600);
        assert!(load_key_file(&bad).unwrap_err().to_string().contains("bad:1: key is not hex"));
        let dup = write("dup", &format!("1 {k1}\n1 {k2}\n"), 0o600);
        assert!(
            load_key_file(&dup).unwrap_err().to_string().contains("dup:2: key id 1 appears twice")
        );
        let empty = write("empty", "# nothing\n", 0o600);
        assert!(load_key_file(&empty).unwrap_err().to_string().contains("no key"));
        nix::unistd::chown(&good, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    }
    // Not owned by root (always true for an unprivileged run).
    let e = load_key_file(&good).unwrap_err().to_string();
    assert!(e.contains("good: owned by uid") && e.contains("root"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn expectation_sync_is_off_unless_helpers_are_listed() {
    let sync = |extra: &str| parse(&with_sync(extra)).unwrap().sync.expectations;
    assert_eq!(parse(MINIMAL).unwrap().sync.expectations, ExpectSync::Off);
    assert_eq!(
        sync("expectations: [ftp, sip]"),
        ExpectSync::Helpers(vec!["ftp".into(), "sip".into()])
    );
    assert_eq!(sync("expectations: ftp"), ExpectSync::Helpers(vec!["ftp".into()]));
    assert_eq!(sync("expectations: all"), ExpectSync::All);
    assert_eq!(sync("expectations: true"), ExpectSync::All);
    assert_eq!(sync("expectations: false"), ExpectSync::Off);
    assert_eq!(sync("expectations: []"), ExpectSync::Off);
    assert_err(
        &with_sync("expectations: [ftp, 'not a helper']"),
        "sync.expectations",
        Some(5),
        "invalid helper name \"not a helper\"",
    );
    let compat = parse(&with_sync("expectations: [ftp]\n  wire: conntrackd")).unwrap();
    assert_eq!(compat.sync.expectations, ExpectSync::Helpers(vec!["ftp".into()]));
}

#[test]
fn defer_is_off_by_default_and_checked() {
    assert_eq!(parse(&with_sync("direct_to_kernel: true")).unwrap().sync.defer, None);
    let c = parse(&with_sync("defer: { queue: 3, timeout: 15ms }")).unwrap();
    assert_eq!(
        c.sync.defer,
        Some(crate::config::DeferConfig {
            queue: 3,
            timeout: Duration::from_millis(15),
            max_held: 4096
        })
    );
    let printed = c.to_yaml();
    assert_eq!(parse(&printed).unwrap(), c, "{printed}");
    assert_err(&with_sync("defer: { timeout: 20ms }"), "sync.defer.queue", Some(5), "required");
    assert_err(&with_sync("defer: { queue: 70000 }"), "sync.defer.queue", Some(5), "0 to 65535");
    assert_err(&with_sync("defer: { queue: 0, timeout: 0 }"), "sync.defer.timeout", Some(5), "");
    assert_err(&with_sync("defer: { queue: 0, timeout: 5s }"), "sync.defer.timeout", Some(5), "");
    assert_err(&with_sync("defer: { queue: 0, max_held: 0 }"), "sync.defer.max_held", Some(5), "");
    assert_err(&with_sync("defer: { queue: 0, hold: 1 }"), "sync.defer.hold", Some(5), "unknown");
}
