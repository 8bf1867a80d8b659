//! conntrackd-compatible command-line flags and their long forms.
//!
//! The same binary is the daemon and its client, as with conntrackd:
//! `ctsyncd -C FILE -d` runs the daemon; `ctsyncd -c`, `-s`, ... send one
//! request to the running daemon over its control socket. Keepalived notify
//! scripts written for conntrackd work unchanged.
//!
//! Compatibility details (conntrackd's `src/main.c`):
//! * sub-arguments are prefix-matched in conntrackd's order, so `-s n` is
//!   `network`, `-s c` is `cache`, `-f i` is `internal`, `-i e` is `expect`;
//! * an optional sub-argument is taken only if the next word does not start
//!   with `-`, so `-s -C FILE` and `-C FILE -s` both work;
//! * giving a daemon flag and a client action, or two client actions, is
//!   "Invalid parameters".
//!
//! Differences: `-v` prints the version and exits 0; `-x` (XML) is refused
//! with a pointer to `--json`; `-i expect` / `-e expect` list the cached
//! expectations (`sync.expectations`), but the `expect` variants of `-c`,
//! `-F` and `-R` are refused: expectations go with their flows.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, Parser};

use crate::config::DEFAULT_PATH;
use crate::control::{CacheSel, Request, StatsSection};

/// What this run of the binary does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Run the daemon (`-d` detaches; without it, it stays in the
    /// foreground, as systemd's `Type=notify` wants).
    Daemon {
        /// The configuration file.
        config: PathBuf,
        /// Fork into the background.
        daemonize: bool,
        /// Honour the test-only control requests (`--test-hooks`).
        test_hooks: bool,
    },
    /// Send one request to the running daemon and print the answer.
    Client {
        /// The configuration file, read to find the control socket.
        config: PathBuf,
        /// What to ask.
        request: Request,
        /// Ask for JSON instead of text.
        json: bool,
        /// Give up if the whole exchange takes longer (`--check-ready`
        /// only; other requests wait for the answer).
        timeout: Option<Duration>,
    },
    /// Print the effective configuration as YAML and exit; fails if the
    /// file or its key file does not load.
    PrintConfig {
        /// The configuration file.
        config: PathBuf,
    },
    /// Check the configuration and what it names (key file, interfaces,
    /// addresses), print what the daemon would run with, and exit.
    Check {
        /// The configuration file.
        config: PathBuf,
    },
    /// Write a new random sync key to a file with mode 0600, and exit.
    GenKey {
        /// The key file to write.
        file: PathBuf,
        /// Replace an existing file.
        force: bool,
    },
}

/// Parse the process's arguments; print usage and exit on error, or on
/// `-h` / `-v`.
pub fn parse() -> Invocation {
    match parse_from(std::env::args_os()) {
        Ok(invocation) => invocation,
        Err(e) => e.exit(),
    }
}

/// Parse `args` (the first is the program name).
pub fn parse_from<I, T>(args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Args::try_parse_from(args)?.into_invocation()
}

/// The clap command, for generating the man page and shell completions.
pub fn command() -> clap::Command {
    Args::command()
}

/// How long `--check-ready` waits for the daemon's answer unless
/// `--timeout` says otherwise: a running daemon answers in milliseconds,
/// and keepalived's script `timeout` in docs/keepalived.md is longer.
pub const CHECK_READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Which table a conntrackd sub-argument `ct|expect` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    Ct,
    Expect,
}

#[derive(Parser, Debug)]
#[command(
    name = "ctsyncd",
    version,
    about = "Replicates the conntrack table between firewalls (conntrackd-compatible)",
    long_about = "Replicates the conntrack table between firewalls.\n\n\
        Without a client action, runs the daemon (in the foreground unless -d).\n\
        With one, sends it to the running daemon and prints the answer.",
    disable_version_flag = true,
    after_help = "Examples:\n  ctsyncd --gen-key /etc/ctsync/sync.key    make the sync key (copy it to the peer)\n  \
        ctsyncd --check                           check the configuration before starting\n  \
        ctsyncd -C /etc/ctsync/ctsyncd.yaml -d   run the daemon\n  \
        ctsyncd -c                                commit the external cache (on failover)\n  \
        ctsyncd --check-ready                     exit 0 if this node may take over (keepalived)\n  \
        ctsyncd -s cache --json                   cache statistics as JSON\n  \
        ctsyncd -s --prometheus                   metrics for node_exporter's textfile collector\n\n\
        SIGUSR1 makes the daemon reopen its log file (after logrotate); ctsyncd(8) lists every signal."
)]
struct Args {
    /// Configuration file (YAML).
    #[arg(short = 'C', long = "config", value_name = "FILE", default_value = DEFAULT_PATH)]
    config: PathBuf,

    /// Run the daemon in the background. Its stderr is then lost: with
    /// general.log.target: stderr (the default) it logs to syslog instead.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,

    /// Commit the external cache into the kernel.
    #[arg(short = 'c', long = "commit", value_name = "ct", num_args = 0..=1, value_parser = table)]
    commit: Option<Option<Table>>,

    /// Flush the internal and/or external cache.
    #[arg(
        short = 'f',
        long = "flush-cache",
        value_name = "internal|external",
        num_args = 0..=1,
        value_parser = cache_sel
    )]
    flush_cache: Option<Option<CacheSel>>,

    /// Flush the kernel conntrack table.
    #[arg(
        short = 'F',
        long = "flush-kernel",
        value_name = "ct",
        num_args = 0..=1,
        value_parser = table
    )]
    flush_kernel: Option<Option<Table>>,

    /// Refill the internal cache from the kernel table.
    #[arg(
        short = 'R',
        long = "resync-kernel",
        value_name = "ct",
        num_args = 0..=1,
        value_parser = table
    )]
    resync_kernel: Option<Option<Table>>,

    /// Send the whole internal cache to the peers (before a peer has
    /// answered nothing is queued: it gets the table when it asks).
    #[arg(short = 'B', long = "bulk-send")]
    bulk_send: bool,

    /// Ask the peers to send their whole internal cache.
    #[arg(short = 'n', long = "request-resync")]
    request_resync: bool,

    /// Make every kernel flow expire after sync.purge_timeout unless traffic
    /// refreshes it (clears flows left from the time this node was master).
    #[arg(short = 't', long = "purge")]
    purge: bool,

    /// Stop the daemon.
    #[arg(short = 'k', long = "kill")]
    kill: bool,

    /// Show statistics: conntrackd's general ones, or one section in
    /// conntrackd's layout (`ct` is the general statistics; every counter is
    /// in `--json`, whatever the section).
    #[arg(
        short = 's',
        long = "stats",
        value_name = "network|cache|runtime|link|rsqueue|process|queue|ct|expect",
        num_args = 0..=1,
        value_parser = stats_section
    )]
    stats: Option<Option<StatsSection>>,

    /// Dump the internal cache (this firewall's flows; `expect`: its
    /// expectations).
    #[arg(
        short = 'i',
        long = "dump-internal",
        value_name = "ct|expect",
        num_args = 0..=1,
        value_parser = table
    )]
    dump_internal: Option<Option<Table>>,

    /// Dump the external cache (the peers' flows; `expect`: their
    /// expectations).
    #[arg(
        short = 'e',
        long = "dump-external",
        value_name = "ct|expect",
        num_args = 0..=1,
        value_parser = table
    )]
    dump_external: Option<Option<Table>>,

    /// Make the running daemon re-read its sync key file
    /// (sync.auth.key_file), to rotate keys without a restart; as SIGHUP
    /// does. Nothing else is re-read: any other change to the
    /// configuration needs a restart.
    #[arg(long = "reload")]
    reload: bool,

    /// Exit 0 only if the running daemon holds the peer's complete table
    /// (for keepalived's vrrp_script and for monitoring); 1 if it does not
    /// yet, if no daemon runs, or if it does not answer within --timeout
    /// (stopped or stuck); 2 if the configuration file does not load.
    #[arg(long = "check-ready")]
    check_ready: bool,

    /// With --check-ready: give up and exit 1 (not ready) if the daemon has
    /// not answered within SECONDS (default 2; fractions allowed). Keep it
    /// below keepalived's script timeout.
    #[arg(long = "timeout", value_name = "SECONDS", value_parser = seconds)]
    timeout: Option<Duration>,

    /// Test suites only: the daemon honours test-only control requests.
    #[arg(long = "test-hooks", hide = true)]
    test_hooks: bool,

    /// Test suites only: make a daemon started with --test-hooks drop (on)
    /// or apply again (off) the peer's flow messages.
    #[arg(long = "test-drop-peer-flows", value_name = "on|off", hide = true, value_parser = on_off)]
    test_drop_peer_flows: Option<bool>,

    /// XML output (not supported: use --json).
    #[arg(short = 'x', long = "xml", hide = true)]
    xml: bool,

    /// JSON output for -s, -i and -e.
    #[arg(long = "json")]
    json: bool,

    /// With -s: every metric in the Prometheus text format, as the
    /// metrics listener serves it (for node_exporter's textfile collector).
    #[arg(long = "prometheus")]
    prometheus: bool,

    /// Print the effective configuration as YAML and exit; 2 if the file
    /// or its key file does not load (--check also checks interfaces and
    /// addresses).
    #[arg(long = "print-config")]
    print_config: bool,

    /// Check the configuration and everything it names (key file: exists,
    /// owner root, mode 0600, length; interfaces; local addresses), print
    /// what the daemon would run with, and exit: 0 if fine, 2 with one line
    /// per problem (file, line, key) if not.
    #[arg(long = "check")]
    check: bool,

    /// Write a new random sync key to FILE (mode 0600) and exit; copy the
    /// file to the peer. An existing FILE is kept unless --force.
    #[arg(long = "gen-key", value_name = "FILE")]
    gen_key: Option<PathBuf>,

    /// With --gen-key: replace an existing key file.
    #[arg(long = "force", requires = "gen_key")]
    force: bool,

    /// Print the version.
    #[arg(short = 'v', long = "version", action = ArgAction::Version)]
    version: (),
}

impl Args {
    fn into_invocation(self) -> Result<Invocation, clap::Error> {
        let invalid = |msg: String| Args::command().error(ErrorKind::ArgumentConflict, msg);
        if self.xml {
            return Err(Args::command()
                .error(ErrorKind::InvalidValue, "XML output (-x) is not supported; use --json"));
        }
        let no_expect = |flag: &str, table: Option<Option<Table>>| {
            match table {
            Some(Some(Table::Expect)) => Err(Args::command().error(
                ErrorKind::InvalidValue,
                format!("{flag} expect: ctsyncd handles expectations together with their flows; use {flag}"),
            )),
            _ => Ok(table.is_some()),
        }
        };
        let mut actions: Vec<(&str, Request)> = Vec::new();
        if no_expect("-c", self.commit)? {
            actions.push(("-c", Request::Commit));
        }
        if let Some(sel) = self.flush_cache {
            actions.push(("-f", Request::FlushCache(sel)));
        }
        if no_expect("-F", self.flush_kernel)? {
            actions.push(("-F", Request::FlushKernel));
        }
        if no_expect("-R", self.resync_kernel)? {
            actions.push(("-R", Request::ResyncKernel));
        }
        if self.bulk_send {
            actions.push(("-B", Request::BulkSend));
        }
        if self.request_resync {
            actions.push(("-n", Request::RequestResync));
        }
        if self.purge {
            actions.push(("-t", Request::Purge));
        }
        if self.kill {
            actions.push(("-k", Request::Kill));
        }
        match (self.stats, self.prometheus) {
            (Some(None), true) => actions.push(("-s", Request::Metrics)),
            (Some(Some(section)), true) => {
                return Err(invalid(format!(
                    "Invalid parameters: -s --prometheus prints every metric; drop the section {}",
                    section.name()
                )));
            }
            (None, true) => {
                return Err(invalid("Invalid parameters: --prometheus goes with -s".into()));
            }
            (Some(section), false) => actions.push(("-s", Request::Stats(section))),
            (None, false) => {}
        }
        match self.dump_internal {
            Some(Some(Table::Expect)) => {
                actions.push(("-i", Request::DumpExpectations(CacheSel::Internal)))
            }
            Some(_) => actions.push(("-i", Request::DumpInternal)),
            None => {}
        }
        match self.dump_external {
            Some(Some(Table::Expect)) => {
                actions.push(("-e", Request::DumpExpectations(CacheSel::External)))
            }
            Some(_) => actions.push(("-e", Request::DumpExternal)),
            None => {}
        }
        if self.reload {
            actions.push(("--reload", Request::Reload));
        }
        if self.check_ready {
            actions.push(("--check-ready", Request::CheckReady));
        }
        if let Some(on) = self.test_drop_peer_flows {
            actions.push(("--test-drop-peer-flows", Request::TestDropPeerFlows(on)));
        }
        if self.test_hooks && !actions.is_empty() {
            return Err(invalid("Invalid parameters: --test-hooks goes with the daemon".into()));
        }
        let json_ok = matches!(
            actions.as_slice(),
            [(
                _,
                Request::Stats(_)
                    | Request::DumpInternal
                    | Request::DumpExternal
                    | Request::DumpExpectations(_)
            )]
        );
        if self.json && self.prometheus {
            return Err(invalid("Invalid parameters: --json or --prometheus, not both".into()));
        }
        if self.json && !json_ok {
            return Err(invalid("Invalid parameters: --json goes with -s, -i or -e".into()));
        }
        let check_ready = matches!(actions.as_slice(), [(_, Request::CheckReady)]);
        if self.timeout.is_some() && !check_ready {
            return Err(invalid("Invalid parameters: --timeout goes with --check-ready".into()));
        }
        let mut standalone: Vec<&str> = Vec::new();
        if self.check {
            standalone.push("--check");
        }
        if self.gen_key.is_some() {
            standalone.push("--gen-key");
        }
        if let Some(&flag) = standalone.first() {
            let other = actions
                .first()
                .map(|(f, _)| *f)
                .or(self.daemon.then_some("-d"))
                .or(self.print_config.then_some("--print-config"))
                .or(standalone.get(1).copied())
                .or(self.test_hooks.then_some("--test-hooks"));
            if let Some(other) = other {
                return Err(invalid(format!(
                    "Invalid parameters: {flag} cannot be combined with {other}"
                )));
            }
            return Ok(match self.gen_key {
                Some(file) => Invocation::GenKey { file, force: self.force },
                None => Invocation::Check { config: self.config },
            });
        }
        match (actions.as_slice(), self.daemon, self.print_config) {
            ([], false, true) => Ok(Invocation::PrintConfig { config: self.config }),
            ([], daemonize, false) => Ok(Invocation::Daemon {
                config: self.config,
                daemonize,
                test_hooks: self.test_hooks,
            }),
            ([], true, true) => {
                Err(invalid("Invalid parameters: --print-config cannot be combined with -d".into()))
            }
            ([(_, request)], false, false) => Ok(Invocation::Client {
                config: self.config,
                request: *request,
                json: self.json,
                timeout: check_ready.then(|| self.timeout.unwrap_or(CHECK_READY_TIMEOUT)),
            }),
            ([(flag, _)], true, _) => Err(invalid(format!(
                "Invalid parameters: -d runs the daemon, {flag} talks to a running one"
            ))),
            ([(flag, _)], false, true) => Err(invalid(format!(
                "Invalid parameters: --print-config cannot be combined with {flag}"
            ))),
            ([(first, _), (second, _), ..], _, _) => Err(invalid(format!(
                "Invalid parameters: one action at a time ({first} and {second} given)"
            ))),
        }
    }
}

/// Why a flag's value was refused; clap prints it after the flag and the
/// value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueError {
    /// The value is a prefix of none of these names.
    NotOneOf(Vec<&'static str>),
    /// `--timeout` is not a number of seconds in range.
    Seconds,
    /// Neither `on` nor `off`.
    OnOff,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::NotOneOf(names) => write!(f, "expected one of {}", names.join(", ")),
            ValueError::Seconds => {
                f.write_str("expected a number of seconds from 0.001 to 3600, such as 2 or 0.5")
            }
            ValueError::OnOff => f.write_str("expected on or off"),
        }
    }
}

impl std::error::Error for ValueError {}

/// conntrackd's matching: `arg` is a non-empty prefix of the first name in
/// `names` that it fits.
fn prefix_match<T: Copy>(arg: &str, names: &[(&'static str, T)]) -> Result<T, ValueError> {
    names
        .iter()
        .find(|(name, _)| !arg.is_empty() && name.starts_with(arg))
        .map(|&(_, v)| v)
        .ok_or_else(|| ValueError::NotOneOf(names.iter().map(|(n, _)| *n).collect()))
}

/// A timeout in seconds: more than 0, at most an hour, fractions allowed.
fn seconds(arg: &str) -> Result<Duration, ValueError> {
    let secs: f64 = arg.parse().map_err(|_| ValueError::Seconds)?;
    if !(0.001..=3600.0).contains(&secs) {
        return Err(ValueError::Seconds);
    }
    Ok(Duration::from_secs_f64(secs))
}

fn on_off(arg: &str) -> Result<bool, ValueError> {
    match arg {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(ValueError::OnOff),
    }
}

fn table(arg: &str) -> Result<Table, ValueError> {
    prefix_match(arg, &[("ct", Table::Ct), ("expect", Table::Expect)])
}

fn cache_sel(arg: &str) -> Result<CacheSel, ValueError> {
    prefix_match(arg, &[("internal", CacheSel::Internal), ("external", CacheSel::External)])
}

fn stats_section(arg: &str) -> Result<StatsSection, ValueError> {
    use StatsSection::*;
    // conntrackd's order decides ambiguous prefixes: `c` is cache, not ct.
    prefix_match(
        arg,
        &[
            ("network", Network),
            ("cache", Cache),
            ("runtime", Runtime),
            ("multicast", Link),
            ("link", Link),
            ("rsqueue", Rsqueue),
            ("process", Process),
            ("queue", Queue),
            ("ct", Ct),
            ("expect", Expect),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &str) -> Result<Invocation, clap::Error> {
        parse_from(std::iter::once("ctsyncd").chain(args.split_whitespace()))
    }

    fn client(args: &str) -> (Request, bool) {
        match run(args) {
            Ok(Invocation::Client { request, json, .. }) => (request, json),
            other => panic!("{args}: {other:?}"),
        }
    }

    fn request(args: &str) -> Request {
        client(args).0
    }

    fn fails(args: &str, needle: &str) {
        match run(args) {
            Ok(i) => panic!("{args}: accepted as {i:?}"),
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains(needle), "{args}: {text:?} lacks {needle:?}");
            }
        }
    }

    fn default_config() -> PathBuf {
        PathBuf::from(DEFAULT_PATH)
    }

    #[test]
    fn daemon_modes() {
        assert_eq!(
            run("").unwrap(),
            Invocation::Daemon { config: default_config(), daemonize: false, test_hooks: false }
        );
        assert_eq!(
            run("-d").unwrap(),
            Invocation::Daemon { config: default_config(), daemonize: true, test_hooks: false }
        );
        let expected =
            Invocation::Daemon { config: "/tmp/a.yaml".into(), daemonize: true, test_hooks: false };
        assert_eq!(run("-C /tmp/a.yaml -d").unwrap(), expected);
        assert_eq!(run("-d -C /tmp/a.yaml").unwrap(), expected);
        assert_eq!(run("--daemon --config /tmp/a.yaml").unwrap(), expected);
        assert_eq!(run("--config=/tmp/a.yaml -d").unwrap(), expected);
        assert_eq!(
            run("-C /x.yaml --print-config").unwrap(),
            Invocation::PrintConfig { config: "/x.yaml".into() }
        );
    }

    #[test]
    fn every_client_flag() {
        for (args, req) in [
            ("-c", Request::Commit),
            ("-c ct", Request::Commit),
            ("-c c", Request::Commit),
            ("--commit", Request::Commit),
            ("-f", Request::FlushCache(None)),
            ("-f internal", Request::FlushCache(Some(CacheSel::Internal))),
            ("-f i", Request::FlushCache(Some(CacheSel::Internal))),
            ("-f ext", Request::FlushCache(Some(CacheSel::External))),
            ("--flush-cache external", Request::FlushCache(Some(CacheSel::External))),
            ("-F", Request::FlushKernel),
            ("-F ct", Request::FlushKernel),
            ("--flush-kernel", Request::FlushKernel),
            ("-R", Request::ResyncKernel),
            ("--resync-kernel", Request::ResyncKernel),
            ("-B", Request::BulkSend),
            ("--bulk-send", Request::BulkSend),
            ("-n", Request::RequestResync),
            ("--request-resync", Request::RequestResync),
            ("-t", Request::Purge),
            ("--purge", Request::Purge),
            ("-k", Request::Kill),
            ("--kill", Request::Kill),
            ("-s", Request::Stats(None)),
            ("--stats", Request::Stats(None)),
            ("-i", Request::DumpInternal),
            ("-i ct", Request::DumpInternal),
            ("--dump-internal", Request::DumpInternal),
            ("-e", Request::DumpExternal),
            ("-e c", Request::DumpExternal),
            ("--dump-external", Request::DumpExternal),
            ("-i expect", Request::DumpExpectations(CacheSel::Internal)),
            ("-e exp", Request::DumpExpectations(CacheSel::External)),
            ("--reload", Request::Reload),
            ("--check-ready", Request::CheckReady),
            ("-C /a.yaml --check-ready", Request::CheckReady),
            ("--test-drop-peer-flows on", Request::TestDropPeerFlows(true)),
            ("--test-drop-peer-flows off", Request::TestDropPeerFlows(false)),
        ] {
            assert_eq!(request(args), req, "{args}");
        }
    }

    #[test]
    fn stats_sections_are_prefix_matched_in_conntrackd_order() {
        use StatsSection::*;
        for (arg, section) in [
            ("network", Network),
            ("n", Network),
            ("cache", Cache),
            ("c", Cache),
            ("ct", Ct),
            ("runtime", Runtime),
            ("r", Runtime),
            ("link", Link),
            ("l", Link),
            ("multicast", Link),
            ("rsqueue", Rsqueue),
            ("rs", Rsqueue),
            ("process", Process),
            ("queue", Queue),
            ("q", Queue),
            ("expect", Expect),
            ("e", Expect),
        ] {
            assert_eq!(request(&format!("-s {arg}")), Request::Stats(Some(section)), "{arg}");
        }
        fails("-s bogus", "expected one of network, cache");
        fails("-s networks", "expected one of");
        fails("-f both", "expected one of internal, external");
        fails("-c all", "expected one of ct, expect");
        fails(
            "-f both",
            "invalid value 'both' for '--flush-cache [<internal|external>]': expected one of internal, external",
        );
        fails("--test-drop-peer-flows yes", "expected on or off");
    }

    #[test]
    fn config_and_optional_values_in_any_order() {
        for args in ["-C /a.yaml -s", "-s -C /a.yaml", "-s cache -C /a.yaml", "-C /a.yaml -s cache"]
        {
            match run(args).unwrap() {
                Invocation::Client { config, .. } => assert_eq!(config, PathBuf::from("/a.yaml")),
                other => panic!("{args}: {other:?}"),
            }
        }
        assert_eq!(request("-s -C /a.yaml"), Request::Stats(None));
        assert_eq!(request("-C /a.yaml -s cache"), Request::Stats(Some(StatsSection::Cache)));
        assert_eq!(request("-f -C /a.yaml"), Request::FlushCache(None));
        match run("-c").unwrap() {
            Invocation::Client { config, .. } => assert_eq!(config, default_config()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_goes_with_stats_and_dumps_only() {
        assert_eq!(client("-s --json"), (Request::Stats(None), true));
        assert_eq!(client("--json -s cache"), (Request::Stats(Some(StatsSection::Cache)), true));
        assert_eq!(client("-i --json"), (Request::DumpInternal, true));
        assert_eq!(client("-e --json"), (Request::DumpExternal, true));
        assert_eq!(client("-s"), (Request::Stats(None), false));
        fails("-c --json", "--json goes with -s, -i or -e");
        assert_eq!(client("-s --prometheus"), (Request::Metrics, false));
        assert_eq!(client("--prometheus -s"), (Request::Metrics, false));
        fails("-s cache --prometheus", "drop the section cache");
        fails("--prometheus", "--prometheus goes with -s");
        fails("-i --prometheus", "--prometheus goes with -s");
        fails("-s --json --prometheus", "--json or --prometheus, not both");
        fails("--json", "--json goes with");
        fails("-d --json", "--json goes with");
    }

    #[test]
    fn invalid_combinations() {
        fails("-d -c", "Invalid parameters: -d runs the daemon, -c talks to a running one");
        fails("-s -d", "Invalid parameters");
        fails("-c -f", "Invalid parameters: one action at a time (-c and -f given)");
        fails("-B -n", "one action at a time");
        fails("-k -s cache", "one action at a time");
        fails("--check-ready -c", "one action at a time");
        fails("-d --check-ready", "-d runs the daemon, --check-ready talks to a running one");
        fails("--check-ready --json", "--json goes with -s, -i or -e");
        fails("--print-config -c", "--print-config cannot be combined with -c");
        fails("--print-config -d", "--print-config cannot be combined with -d");
        fails("-s -s", "cannot be used multiple times");
    }

    #[test]
    fn check_ready_has_a_timeout_and_nothing_else_does() {
        let timeout = |args: &str| match run(args) {
            Ok(Invocation::Client { timeout, .. }) => timeout,
            other => panic!("{args}: {other:?}"),
        };
        assert_eq!(timeout("--check-ready"), Some(CHECK_READY_TIMEOUT));
        assert_eq!(timeout("--check-ready --timeout 5"), Some(Duration::from_secs(5)));
        assert_eq!(timeout("--timeout 0.5 --check-ready"), Some(Duration::from_millis(500)));
        // A commit of a big table takes seconds: it waits for its answer.
        for args in ["-c", "-s", "-i", "-f", "-k"] {
            assert_eq!(timeout(args), None, "{args}");
        }
        fails("-c --timeout 5", "Invalid parameters: --timeout goes with --check-ready");
        fails("-s --timeout 5", "--timeout goes with --check-ready");
        fails("--timeout 5", "--timeout goes with --check-ready");
        fails("-d --timeout 5", "--timeout goes with --check-ready");
        for bad in ["0", "-1", "abc", "3601", "NaN", "inf"] {
            fails(&format!("--check-ready --timeout={bad}"), "expected a number of seconds");
        }
    }

    #[test]
    fn refused_features_say_why() {
        fails("-i -x", "XML output (-x) is not supported; use --json");
        fails("-x", "use --json");
        fails("-c expect", "-c expect: ctsyncd handles expectations together with their flows");
        fails("-c e", "together with their flows");
        fails("-F expect", "together with their flows; use -F");
        fails("-R expect", "together with their flows");
        fails("-q", "unexpected argument");
        fails("-C", "a value is required");
    }

    #[test]
    fn check_and_gen_key_run_alone() {
        assert_eq!(
            run("-C /x.yaml --check").unwrap(),
            Invocation::Check { config: "/x.yaml".into() }
        );
        assert_eq!(
            run("--gen-key /k").unwrap(),
            Invocation::GenKey { file: "/k".into(), force: false }
        );
        assert_eq!(
            run("--gen-key /k --force").unwrap(),
            Invocation::GenKey { file: "/k".into(), force: true }
        );
        fails("--check -d", "--check cannot be combined with -d");
        fails("--check -c", "--check cannot be combined with -c");
        fails("--check --print-config", "--check cannot be combined with --print-config");
        fails("--check --gen-key /k", "--check cannot be combined with --gen-key");
        fails("--force", "--gen-key");
    }

    #[test]
    fn version_and_help_are_reported_as_such() {
        assert_eq!(run("-v").unwrap_err().kind(), ErrorKind::DisplayVersion);
        assert_eq!(run("--version").unwrap_err().kind(), ErrorKind::DisplayVersion);
        assert_eq!(run("-h").unwrap_err().kind(), ErrorKind::DisplayHelp);
        assert_eq!(run("--help").unwrap_err().kind(), ErrorKind::DisplayHelp);
        command().debug_assert();
    }
}
