//! The mio reactor: reads sockets, calls the layers, arms timers. Glue only.
//!
//! One thread, one `Poll`. Each turn reads the clock once, drains every
//! ready source until `WouldBlock`, feeds the protocol core, then drains the
//! core's outputs in its documented order (events, transmit, timeout).
//! Decisions about the protocol live in [`crate::ftfw`]; about flows in
//! [`crate::cache`] and [`crate::filter`]; about the kernel in
//! [`crate::netlink`].
//!
//! This file opens the daemon and runs the loop, its timers and signals;
//! each kind of input has its own file: kernel events (`local`), the peer
//! (`peer`), deferred packets (`deferred`), the control socket (`clients`)
//! and the requests it carries (`requests`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;

use crate::cache::Cache;
use crate::channel::{Channels, LinkSpec, Recv};
use crate::config::Config;
use crate::control::{self, CacheSel, ControlReply, Request};
use crate::direct::{DirectToKernel, Role};
use crate::expect::ExpWritten;
use crate::flow::{Flow, proto, tcp_state};
use crate::ftfw::{Ftfw, FtfwConfig, PeerState};
use crate::logging::RateLimit;
use crate::metrics;
use crate::netlink::queue::{QueueSocket, QueuedPacket};
use crate::netlink::{self, CommitOptions, CtEvent, EventConfig, EventSocket, Kernel};
use crate::node::{Action, CommitError, Committed, Node, NodeConfig};
use crate::readiness::Readiness;
use crate::reject;
use crate::stats::{DeferReport, ExpReport, PeerPhase, PeerView, RuntimeStats, StatsReport};
use crate::systemd;

/// An [`Interlude`] over the daemon's links and watchdog, borrowing only
/// those fields: a method would borrow the whole daemon, whose kernel
/// socket and caches the long operation is using.
macro_rules! interlude {
    ($daemon:expr, $next:expr) => {
        Interlude {
            links: $daemon.node.direct.is_none().then(|| Links {
                channels: &mut $daemon.channels,
                reject_log: &mut $daemon.reject_log,
                links_pending: &mut $daemon.links_pending,
            }),
            watchdog: &mut $daemon.watchdog,
            next: $next,
        }
    };
}

mod clients;
use clients::{Client, bind_control};
mod deferred;
mod error;
mod local;
mod peer;
use peer::{Interlude, Links};
mod requests;
pub use error::{ControlStep, KernelOp, RequestError, StartError};

/// What the start decided beside the validated configuration.
pub struct Start {
    /// The sync keys `sync.auth` names (re-read on SIGHUP and `--reload`).
    pub auth_keys: Vec<crate::wire::native::AuthKey>,
    /// `general.control_group`, resolved: besides root, its members
    /// (primary or supplementary) may use the control socket, which is
    /// then group-owned by it with mode 0660.
    pub control_gid: Option<u32>,
    /// Honour the test-only control requests (`--test-hooks`).
    pub test_hooks: bool,
    /// Our session id and first seq, random per start.
    pub session_id: u32,
    pub initial_seq: u32,
}

const EVENTS: Token = Token(0);
const SIGNALS: Token = Token(1);
const CONTROL: Token = Token(2);
const QUEUE: Token = Token(4);
const LINKS: Token = Token(16);
/// Sync links get the tokens from `LINKS` on, control clients those above.
const MAX_LINKS: usize = 64;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may leave its answer unread (a pager waiting for a
/// key): not forever, or such clients fill every slot.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// How many kernel events one turn handles before it serves the network and
/// the control socket again, so a storm cannot starve them.
const EVENT_BATCH: usize = 8192;
/// How many datagrams one turn reads from a sync link. Anyone who can reach
/// the port can send faster than the MACs are checked; without a budget a
/// flood keeps the read loop going, and kernel events, the operator and the
/// watchdog wait until it stops.
const DATAGRAM_BATCH: usize = 256;
/// How often a long kernel operation (a commit, a dump) stops to answer
/// the peer: well inside the shortest sensible `peer_timeout`, rare enough
/// to cost it nothing measurable.
const INTERLUDE: Duration = Duration::from_millis(20);
/// Dumped flows reconciled with the internal cache between two looks at
/// the clock for an [`INTERLUDE`].
const RESYNC_STEP: usize = 4096;
const LINK_CHECK: Duration = Duration::from_secs(1);
const MAX_REQUEST: usize = 4096;

/// The running daemon.
pub struct Daemon {
    cfg: Config,
    control_gid: Option<u32>,
    test_hooks: bool,
    poll: Poll,
    events: EventSocket,
    kernel: Kernel,
    channels: Channels,
    control: UnixListener,
    clients: HashMap<Token, Client>,
    /// Open control connections per user, for [`control::admit`].
    client_uids: HashMap<u32, usize>,
    /// Clients turned away as busy since the last log line about it.
    busy_unlogged: u64,
    next_client: usize,
    signals: Signals,
    metrics: Option<metrics::Server>,
    /// The replication state and its decisions.
    node: Node,
    stats: RuntimeStats,
    started: Instant,
    event_buf: Vec<netlink::EventItem>,
    unsent: Option<Vec<u8>>,
    next_link_check: Instant,
    watchdog: Option<(Duration, Instant)>,
    reject_log: reject::RejectLog,
    events_pending: bool,
    /// Sync links left unread when their turn's budget ran out (bit per
    /// link): mio reports a socket once, so the next turns read on.
    links_pending: u64,
    stop: bool,
    /// `Some` with `sync.defer`.
    defer: Option<Defer>,
    /// When the peer went down (wall clock, for the status line); `None`
    /// while it is up or before it was ever up.
    peer_down_since: Option<SystemTime>,
    /// The systemd status line last sent.
    status_sent: String,
    /// How long commits took.
    commit_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// `sync.defer`'s queue socket and its buffers; which packets wait is the
/// node's (`Node::defer_packet`).
struct Defer {
    queue: QueueSocket,
    packets: Vec<QueuedPacket>,
    release: Vec<u32>,
    log: RateLimit,
}

impl Daemon {
    /// Open every socket and fill the internal cache from the kernel.
    ///
    /// The event socket is opened before the dump, so that a flow that
    /// changes during the dump is not lost (conntrackd dumps first).
    pub fn open(cfg: Config, start: Start) -> Result<Daemon, StartError> {
        let poll = Poll::new().map_err(StartError::EventLoop)?;
        let mut events =
            EventSocket::open(&EventConfig::from_config(&cfg)).map_err(StartError::Events)?;
        let kernel = Kernel::open().map_err(StartError::Ctnetlink)?;
        if let Err(e) = events.ignore_origin(kernel.port_id()) {
            log::warn!("{e}: our own commits will come back as events and be dropped one by one");
        }
        let links: Vec<LinkSpec> = cfg.sync.channels.iter().map(LinkSpec::from_config).collect();
        if links.len() > MAX_LINKS {
            return Err(StartError::TooManyChannels(links.len()));
        }
        let ftfw_cfg = FtfwConfig::from_sync(&cfg.sync, start.auth_keys);
        // A restarted conntrackd sends from a new port: followed once its
        // old one has been silent for half the time that declares it down.
        let port_holdoff = ftfw_cfg.peer_timeout / 2;
        let mut channels = Channels::open(&links, port_holdoff).map_err(StartError::Channel)?;
        let mut control = bind_control(&cfg.general.control_socket, start.control_gid)?;
        let mut signals =
            Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1]).map_err(StartError::Signals)?;
        let registry = poll.registry();
        let reg = StartError::Register;
        registry.register(&mut events, EVENTS, Interest::READABLE).map_err(reg)?;
        registry.register(&mut signals, SIGNALS, Interest::READABLE).map_err(reg)?;
        registry.register(&mut control, CONTROL, Interest::READABLE).map_err(reg)?;
        channels.register(registry, LINKS).map_err(reg)?;
        let metrics = cfg
            .general
            .metrics_listen
            .map(|a| metrics::Server::bind(a, registry))
            .transpose()
            .map_err(StartError::Metrics)?;
        let defer = match cfg.sync.defer {
            Some(d) => {
                // The kernel queue is longer than what we hold, so that our
                // cap (counted) is reached before the kernel's fail-open.
                let mut queue = QueueSocket::open(d.queue, d.max_held.saturating_mul(2))
                    .map_err(StartError::Defer)?;
                registry.register(&mut queue, QUEUE, Interest::READABLE).map_err(reg)?;
                if !queue.with_conntrack() {
                    log::info!(
                        "sync.defer: this kernel does not send conntrack entries with queued packets (no CONFIG_NETFILTER_NETLINK_GLUE_CT): flows are looked up by the packets' addresses and ports"
                    );
                }
                Some(Defer {
                    queue,
                    packets: Vec::new(),
                    release: Vec::new(),
                    log: RateLimit::new(Duration::from_secs(10)),
                })
            }
            None => None,
        };
        let now = Instant::now();
        let readiness_file = cfg.general.ready_file.clone();
        let node_cfg = NodeConfig::from_config(&cfg, &ftfw_cfg);
        let ftfw = Ftfw::new(ftfw_cfg, start.session_id, start.initial_seq, now);
        let node = Node::new(ftfw, node_cfg, Readiness::new(readiness_file.clone()));
        let mut daemon = Daemon {
            node,
            cfg,
            control_gid: start.control_gid,
            test_hooks: start.test_hooks,
            poll,
            events,
            kernel,
            channels,
            control,
            clients: HashMap::new(),
            client_uids: HashMap::new(),
            busy_unlogged: 0,
            next_client: 0,
            signals,
            metrics,
            stats: RuntimeStats::default(),
            started: now,
            event_buf: Vec::with_capacity(EVENT_BATCH),
            unsent: None,
            next_link_check: now + LINK_CHECK,
            watchdog: systemd::watchdog_interval().map(|d| (d, now)),
            reject_log: reject::RejectLog::default(),
            events_pending: false,
            links_pending: 0,
            stop: false,
            defer,
            peer_down_since: None,
            status_sent: String::new(),
            commit_seconds: metrics::commit_histogram(),
        };
        daemon.resync_kernel(false, true).map_err(StartError::Dump)?;
        daemon.node.readiness.publish().map_err(|source| StartError::ReadyFile {
            path: readiness_file.unwrap_or_default(),
            source,
        })?;
        Ok(daemon)
    }

    /// Run until SIGTERM, SIGINT or `-k`.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        self.status_sent = self.report().status_line();
        systemd::notify_ready(&self.status_sent);
        log::info!(
            "ctsyncd started: {} flows in the internal cache, sync via {}{}",
            self.node.internal.len(),
            self.channels.name(self.channels.active()),
            if self.node.direct.is_some() {
                ", the peer's flows go straight into the kernel"
            } else {
                ""
            }
        );
        if let Some(path) = &self.cfg.general.ready_file {
            // Kept for a release; said once, at start, so a log does not
            // fill with it.
            log::warn!(
                "general.ready_file ({}) is deprecated: keepalived reads a missing file as ready and a killed daemon leaves 0 in it, so the node can look ready with no daemon; track `ctsyncd --check-ready` in a vrrp_script instead (see docs/keepalived.md) and remove general.ready_file",
                path.display()
            );
        }
        while !self.stop {
            let now = Instant::now();
            let timeout = self.next_deadline().map(|t| t.saturating_duration_since(now));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    EVENTS => self.on_kernel_events(now),
                    SIGNALS => self.on_signals(),
                    CONTROL => self.accept_clients(now),
                    QUEUE => self.on_queued_packets(now),
                    metrics::LISTENER => self.on_metrics(metrics::LISTENER),
                    t if metrics::Server::owns(t) => self.on_metrics(t),
                    t if t.0 >= LINKS.0 && t.0 < LINKS.0 + self.channels.len() => {
                        self.on_datagrams(now, t.0 - LINKS.0)
                    }
                    t => self.on_client(now, t, event.is_readable()),
                }
            }
            // A storm may have left events unread (batch limit); mio is
            // edge-triggered, so read on until the socket is drained.
            if self.events_pending {
                self.on_kernel_events(now);
            }
            for link in 0..self.channels.len() {
                if self.links_pending & (1 << link) != 0 {
                    self.on_datagrams(now, link);
                }
            }
            self.on_timers(now);
            self.drive_protocol(now);
            self.drive_defer(now);
        }
        log::info!("ctsyncd stopping");
        systemd::notify_stopping();
        // Flush what the protocol still has to say, best effort.
        self.drive_protocol(Instant::now());
        if let (Some(d), Some(held)) = (&mut self.defer, &mut self.node.defer) {
            // Closing the queue would drop what it holds.
            held.held.release_all(&mut d.release);
            let _ = d.queue.accept(&d.release);
        }
        if let Err(e) = self.node.readiness.withdraw() {
            log::warn!("cannot mark this node not ready for keepalived: {e}");
        }
        let _ = std::fs::remove_file(&self.cfg.general.control_socket);
        Ok(())
    }
}

// Timers and signals.
impl Daemon {
    fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.next_link_check;
        for t in [
            self.node.ftfw.poll_timeout(),
            self.node.resync_deadline(),
            self.node.bulk_deadline(),
            self.node.masters_deadline(),
            self.node.direct.as_ref().and_then(DirectToKernel::purge_at),
            self.watchdog.map(|(interval, last)| last + interval),
            self.node.defer.as_ref().and_then(|d| d.held.next_deadline()),
        ]
        .into_iter()
        .flatten()
        {
            next = next.min(t);
        }
        // Unread events: look at the other sockets and go straight on. A
        // full link socket: give the kernel a moment to drain it.
        if self.events_pending || self.links_pending != 0 {
            next = next.min(Instant::now());
        } else if self.unsent.is_some() {
            next = next.min(Instant::now() + Duration::from_millis(1));
        }
        Some(next)
    }

    fn on_timers(&mut self, now: Instant) {
        self.node.bulk_if_due(now);
        if self.node.masters_deadline().is_some_and(|t| t <= now) {
            self.refresh_masters(now);
        }
        if self.node.direct.as_mut().is_some_and(|d| d.take_purge(now)) {
            self.purge_zombies();
        }
        if self.node.resync_due(now) {
            match self.resync_kernel(true, false) {
                Ok((changed, gone)) => log::info!(
                    "resynced with the kernel after an overrun: {changed} flows new or changed, {gone} gone"
                ),
                Err(e) => {
                    log::error!(
                        "resync with the kernel failed: {e}; retrying in {:?}",
                        self.cfg.general.netlink.overrun_resync
                    );
                    self.node.resync_failed(now);
                }
            }
        }
        if self.next_link_check <= now {
            self.next_link_check = now + LINK_CHECK;
            self.expire_clients(now);
            if let Some((from, to)) = self.channels.refresh(now) {
                log::warn!(
                    "sync link {} is down, now using {}",
                    self.channels.name(from),
                    self.channels.name(to)
                );
            }
            self.update_status();
        }
        if let Some((interval, last)) = self.watchdog
            && last + interval <= now
        {
            systemd::notify_watchdog();
            self.watchdog = Some((interval, now));
        }
    }

    fn on_signals(&mut self) {
        for signal in self.signals.pending() {
            match signal {
                SIGTERM | SIGINT => self.stop = true,
                SIGHUP => {
                    if let Err(e) = self.reload() {
                        log::error!("{e}");
                    }
                }
                // logrotate's postrotate: the log file was renamed.
                SIGUSR1 => match crate::logging::reopen() {
                    Ok(Some(path)) => log::info!("reopened the log file {}", path.display()),
                    Ok(None) => log::info!("SIGUSR1: the log is not a file, nothing to reopen"),
                    Err(e) => log::error!("{e}"),
                },
                _ => {}
            }
        }
    }

    /// Re-read the sync key file (`sync.auth.key_file`, at the path the
    /// daemon started with): a rotation without dropping sync. Nothing else
    /// is re-read; on any error the keys in use stay. systemd hears
    /// `RELOADING=1` before and `READY=1` after.
    fn reload(&mut self) -> Result<String, RequestError> {
        systemd::notify_reloading();
        let result = self.reload_keys();
        systemd::notify_reloaded();
        result
    }

    fn reload_keys(&mut self) -> Result<String, RequestError> {
        let Some(file) = self.cfg.sync.auth.key_file().map(Path::to_path_buf) else {
            return Ok(
                "no key file configured: nothing to reload (other settings need a restart)".into()
            );
        };
        let keys = crate::config::load_key_file(&file).map_err(RequestError::KeyFile)?;
        let ids: Vec<String> = keys.iter().map(|k| k.id.to_string()).collect();
        self.node.ftfw.set_auth_keys(keys);
        let line = format!(
            "reloaded the sync keys from {}: sending with key {}, accepting {}",
            file.display(),
            ids.first().map_or("-", String::as_str),
            ids.join(", ")
        );
        log::info!("{line}");
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ControlError;

    /// The lines `ctsyncd -c`, `-F`, `-R`, `-t`, `--reload` and
    /// `--check-ready` print on failure, which scripts and operators read.
    #[test]
    fn request_error_lines() {
        let eperm = || io::Error::from_raw_os_error(libc::EPERM);
        let eperm_text = eperm().to_string();
        for (e, line) in [
            (KernelOp::Flush.failed()(eperm()), "flushing the kernel table failed: "),
            (KernelOp::Dump.failed()(eperm()), "dumping the kernel table failed: "),
            (KernelOp::SetTimeouts.failed()(eperm()), "setting kernel timeouts failed: "),
            (
                KernelOp::DeleteConflicts.failed()(eperm()),
                "deleting the entries in the way of synced flows failed: ",
            ),
            (KernelOp::Commit.failed()(eperm()), "commit to the kernel failed: "),
            (
                KernelOp::CommitExpectations.failed()(eperm()),
                "commit of expectations to the kernel failed: ",
            ),
        ] {
            assert_eq!(e.to_string(), format!("{line}{eperm_text}"));
        }
        assert_eq!(
            RequestError::Malformed(ControlError::BadRequest(99)).to_string(),
            "bad request: unknown control request 99"
        );
        assert_eq!(
            RequestError::KeyFile(crate::config::KeyFileError {
                file: "/etc/ctsync/sync.key".into(),
                line: Some(3),
                problem: crate::config::KeyProblem::NotHex,
            })
            .to_string(),
            "key reload failed, keeping the current keys: /etc/ctsync/sync.key:3: key is not hex"
        );
        assert!(RequestError::NotReady.to_string().starts_with("not ready: the peer's complete"));
        assert!(RequestError::TestHooksOff.to_string().contains("--test-hooks"));
    }
}
