//! The mio reactor: reads sockets, calls the layers, arms timers. Glue only.
//!
//! One thread, one `Poll`. Each turn reads the clock once, drains every
//! ready source until `WouldBlock`, feeds the protocol core, then drains the
//! core's outputs in its documented order (events, transmit, timeout).
//! Decisions about the protocol live in [`crate::ftfw`]; about flows in
//! [`crate::cache`] and [`crate::filter`]; about the kernel in
//! [`crate::netlink`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;

use crate::cache::{Cache, Removal, Upsert};
use crate::channel::{Channels, LinkSpec, Recv};
use crate::control::{self, CacheSel, ControlReply, Request};
use crate::defer::{Deferral, Skip};
use crate::digest::{self, RepairLedger};
use crate::direct::{DirectToKernel, Role};
use crate::expect::{ExpChange, ExpState, ExpWritten, ExpectSync};
use crate::filter::Filter;
use crate::flow::{Flow, FlowKey, proto, tcp_state};
use crate::ftfw::{Ftfw, FtfwConfig, LocalChange, PeerEvent, PeerState, Seq};
use crate::logging::RateLimit;
use crate::metrics;
use crate::netlink::queue::{QueueSocket, QueuedPacket};
use crate::netlink::{self, CommitOptions, CtEvent, EventConfig, EventSocket, Kernel};
use crate::readiness::Readiness;
use crate::reject;
use crate::stats::{DeferReport, ExpReport, PeerPhase, PeerView, RuntimeStats, StatsReport};
use crate::systemd;

mod error;
pub use error::{ControlStep, KernelOp, RequestError, StartError};

/// What the reactor needs from the configuration, already validated.
pub struct DaemonConfig {
    pub control_socket: PathBuf,
    /// Besides root, members of this group (primary or supplementary) may
    /// use the control socket (`general.control_group`, resolved); the
    /// socket file is then group-owned by it with mode 0660.
    pub control_gid: Option<u32>,
    pub cache_limit: usize,
    pub events: EventConfig,
    /// The event socket's buffer doubles on each overrun up to this.
    pub rcvbuf_max: usize,
    /// Delay between an overrun and the reconciling dump.
    pub overrun_resync: Duration,
    pub ftfw: FtfwConfig,
    pub links: Vec<LinkSpec>,
    /// Timeout given to committed flows; `None` keeps what the peer sent.
    pub commit_timeout: Option<u32>,
    /// Timeout `-t` gives every kernel entry.
    pub purge_timeout: u32,
    /// Mark committed TCP flows `BE_LIBERAL` (no window tracking).
    pub be_liberal: bool,
    /// Write the peer's flows into the kernel as they arrive
    /// (`sync.direct_to_kernel`, see [`crate::direct`]).
    pub direct_to_kernel: bool,
    /// Hold queued packets until the peer has their flow (`sync.defer`).
    pub defer: Option<crate::config::DeferConfig>,
    pub filter: Filter,
    /// Which helpers' expectations are synced (`sync.expectations`).
    pub expectations: ExpectSync,
    /// Where the sync keys come from, re-read on SIGHUP and `--reload`.
    pub key_file: Option<PathBuf>,
    /// keepalived `track_file` for readiness, if configured.
    pub ready_file: Option<PathBuf>,
    /// Serve Prometheus metrics here (`general.metrics_listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// Honour the test-only control requests (`--test-hooks`).
    pub test_hooks: bool,
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
/// How long after a new expectation its master is read back.
const MASTER_REFRESH_DELAY: Duration = Duration::from_millis(5);
const LINK_CHECK: Duration = Duration::from_secs(1);
const MAX_REQUEST: usize = 4096;
/// At most one log line about HELLO probes this often.
const PROBE_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Bulks to the peer start at least this far apart: in conntrackd's wire
/// format anyone can send a HELLO, and each would cost a walk of the
/// whole table. Requests in between are served by one bulk at the end.
const BULK_SPACING: Duration = Duration::from_secs(1);

/// The running daemon.
pub struct Daemon {
    cfg: DaemonConfig,
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
    /// When a HELLO probe was last logged.
    last_probe_log: Option<Instant>,
    next_client: usize,
    signals: Signals,
    metrics: Option<metrics::Server>,
    ftfw: Ftfw,
    internal: Cache,
    external: Cache,
    exp: ExpState,
    stats: RuntimeStats,
    started: Instant,
    internal_stamp: u64,
    event_buf: Vec<netlink::EventItem>,
    unsent: Option<Vec<u8>>,
    resync_at: Option<Instant>,
    /// When the last bulk to the peer started, and whether another one was
    /// asked for since that must wait for [`BULK_SPACING`].
    last_bulk: Option<Instant>,
    bulk_pending: bool,
    /// Peer restarts since the last log line about one.
    restarts_unlogged: u64,
    last_restart_log: Option<Instant>,
    /// Masters of new expectations to read back from the kernel, and when.
    master_refresh: Vec<(Instant, FlowKey)>,
    next_link_check: Instant,
    watchdog: Option<(Duration, Instant)>,
    full_log: RateLimit,
    reject_log: reject::RejectLog,
    readiness: Readiness,
    events_pending: bool,
    /// Sync links left unread when their turn's budget ran out (bit per
    /// link): mio reports a socket once, so the next turns read on.
    links_pending: u64,
    /// `Some` in direct-to-kernel mode.
    direct: Option<DirectToKernel>,
    stop: bool,
    /// Anti-entropy repairs of the external cache, counted.
    repairs: RepairLedger,
    /// Test hook: the peer's flow messages are dropped (drift on purpose).
    test_drop_peer_flows: bool,
    /// `Some` with `sync.defer`.
    defer: Option<Defer>,
    /// `-f` emptied the internal cache and no `-R` has refilled it yet.
    internal_flushed: bool,
    /// When the peer went down (wall clock, for the status line); `None`
    /// while it is up or before it was ever up.
    peer_down_since: Option<SystemTime>,
    /// The systemd status line last sent.
    status_sent: String,
    /// How long commits took.
    commit_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// Deferred packets: the queue they arrive on and the packets held.
struct Defer {
    queue: QueueSocket,
    held: Deferral,
    /// The protocol's loss counter when barriers were last taken.
    resent: u64,
    packets: Vec<QueuedPacket>,
    release: Vec<u32>,
    log: RateLimit,
}

struct Client {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// Close after the output is flushed.
    done: bool,
    uid: u32,
    /// Dropped if it makes no progress by then: the request must come
    /// soon after the connect, the answer must be read on.
    deadline: Instant,
}

impl Daemon {
    /// Open every socket and fill the internal cache from the kernel.
    ///
    /// The event socket is opened before the dump, so that a flow that
    /// changes during the dump is not lost (conntrackd dumps first).
    pub fn open(
        cfg: DaemonConfig,
        session_id: u32,
        initial_seq: u32,
    ) -> Result<Daemon, StartError> {
        let poll = Poll::new().map_err(StartError::EventLoop)?;
        let mut events = EventSocket::open(&cfg.events).map_err(StartError::Events)?;
        let kernel = Kernel::open().map_err(StartError::Ctnetlink)?;
        if let Err(e) = events.ignore_origin(kernel.port_id()) {
            log::warn!("{e}: our own commits will come back as events and be dropped one by one");
        }
        if cfg.links.len() > MAX_LINKS {
            return Err(StartError::TooManyChannels(cfg.links.len()));
        }
        // A restarted conntrackd sends from a new port: followed once its
        // old one has been silent for half the time that declares it down.
        let port_holdoff = cfg.ftfw.peer_timeout / 2;
        let mut channels = Channels::open(&cfg.links, port_holdoff).map_err(StartError::Channel)?;
        let mut control = bind_control(&cfg.control_socket, cfg.control_gid)?;
        let mut signals =
            Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1]).map_err(StartError::Signals)?;
        let registry = poll.registry();
        let reg = StartError::Register;
        registry.register(&mut events, EVENTS, Interest::READABLE).map_err(reg)?;
        registry.register(&mut signals, SIGNALS, Interest::READABLE).map_err(reg)?;
        registry.register(&mut control, CONTROL, Interest::READABLE).map_err(reg)?;
        channels.register(registry, LINKS).map_err(reg)?;
        let metrics = cfg
            .metrics_listen
            .map(|a| metrics::Server::bind(a, registry))
            .transpose()
            .map_err(StartError::Metrics)?;
        let defer = match cfg.defer {
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
                    held: Deferral::new(d.timeout, d.max_held as usize),
                    resent: 0,
                    packets: Vec::new(),
                    release: Vec::new(),
                    log: RateLimit::new(Duration::from_secs(10)),
                })
            }
            None => None,
        };
        let now = Instant::now();
        let readiness_file = cfg.ready_file.clone();
        let direct = cfg.direct_to_kernel.then(DirectToKernel::new);
        let ftfw = Ftfw::new(cfg.ftfw.clone(), session_id, initial_seq, now);
        let mut daemon = Daemon {
            internal: Cache::new(cfg.cache_limit),
            external: Cache::new(cfg.cache_limit),
            exp: ExpState::new(cfg.expectations.clone(), cfg.cache_limit),
            cfg,
            poll,
            events,
            kernel,
            channels,
            control,
            clients: HashMap::new(),
            client_uids: HashMap::new(),
            busy_unlogged: 0,
            last_probe_log: None,
            next_client: 0,
            signals,
            metrics,
            ftfw,
            stats: RuntimeStats::default(),
            started: now,
            internal_stamp: 0,
            event_buf: Vec::with_capacity(EVENT_BATCH),
            unsent: None,
            resync_at: None,
            last_bulk: None,
            bulk_pending: false,
            restarts_unlogged: 0,
            last_restart_log: None,
            master_refresh: Vec::new(),
            next_link_check: now + LINK_CHECK,
            watchdog: systemd::watchdog_interval().map(|d| (d, now)),
            full_log: RateLimit::new(Duration::from_secs(10)),
            reject_log: reject::RejectLog::default(),
            readiness: Readiness::new(readiness_file.clone()),
            events_pending: false,
            links_pending: 0,
            direct,
            stop: false,
            repairs: RepairLedger::default(),
            test_drop_peer_flows: false,
            defer,
            internal_flushed: false,
            peer_down_since: None,
            status_sent: String::new(),
            commit_seconds: metrics::commit_histogram(),
        };
        if !daemon.cfg.ftfw.anti_entropy_interval.is_zero() {
            daemon.internal.enable_digests();
            daemon.external.enable_digests();
        }
        daemon.resync_kernel(false, true).map_err(StartError::Dump)?;
        daemon.readiness.publish().map_err(|source| StartError::ReadyFile {
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
            self.internal.len(),
            self.channels.name(self.channels.active()),
            if self.direct.is_some() {
                ", the peer's flows go straight into the kernel"
            } else {
                ""
            }
        );
        if let Some(path) = &self.cfg.ready_file {
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
        if let Some(d) = &mut self.defer {
            // Closing the queue would drop what it holds.
            d.held.release_all(&mut d.release);
            let _ = d.queue.accept(&d.release);
        }
        if let Err(e) = self.readiness.withdraw() {
            log::warn!("cannot mark this node not ready for keepalived: {e}");
        }
        let _ = std::fs::remove_file(&self.cfg.control_socket);
        Ok(())
    }
}

// Kernel side.
impl Daemon {
    fn on_kernel_events(&mut self, now: Instant) {
        let mut items = std::mem::take(&mut self.event_buf);
        items.clear();
        let result = self.events.recv(&mut items, EVENT_BATCH);
        self.events_pending = matches!(result, Ok(n) if n >= EVENT_BATCH);
        if let Err(e) = result {
            self.events_pending = false;
            log::warn!("reading conntrack events failed: {e}");
        }
        self.handle_kernel_events(now, &mut items);
        self.event_buf = items;
    }

    /// Apply kernel events, in order; `items` is left empty.
    fn handle_kernel_events(&mut self, now: Instant, items: &mut Vec<netlink::EventItem>) {
        let own = self.kernel.port_id();
        for item in items.drain(..) {
            self.stats.events_received += 1;
            if item.origin_pid == own && own != 0 {
                // Our own commit: the peer already has these flows.
                self.stats.events_own += 1;
                continue;
            }
            match item.event {
                CtEvent::New(flow) => self.local_upsert(flow, true),
                CtEvent::Update(flow) => self.local_upsert(flow, false),
                CtEvent::Destroy(flow) => self.local_destroy(&flow),
                CtEvent::ExpNew(exp) => {
                    self.master_refresh.push((now + MASTER_REFRESH_DELAY, exp.master));
                    self.local_exp(*exp, false);
                }
                CtEvent::ExpDestroy(exp) => self.local_exp(*exp, true),
                CtEvent::Overrun => self.on_overrun(now),
            }
        }
    }

    /// Read every event the kernel has queued for us.
    fn drain_kernel_events(&mut self, now: Instant) {
        loop {
            self.on_kernel_events(now);
            if !self.events_pending {
                break;
            }
        }
    }

    /// `born`: the kernel just created this flow, so the peer cannot know it
    /// and a destroy before it is sent cancels both.
    fn local_upsert(&mut self, mut flow: Flow, born: bool) {
        if !born && let Some(old) = self.internal.get(&flow.key()) {
            flow.inherit_unreported(&old.flow);
        }
        if !self.cfg.filter.accepts(&flow) {
            self.stats.events_filtered += 1;
            // A flow that moved into an ignored state leaves the peer too.
            let key = flow.key();
            if self.internal.remove(&key).is_some() {
                self.ftfw.queue(LocalChange::Destroy(key));
            }
            return;
        }
        self.internal_stamp += 1;
        match self.internal.upsert(flow.clone(), self.internal_stamp) {
            Upsert::Created if born => self.ftfw.queue(LocalChange::New(flow)),
            Upsert::Created | Upsert::Updated { changed: true } => {
                self.ftfw.queue(LocalChange::Upsert(flow));
            }
            Upsert::Updated { changed: false } => {}
            Upsert::Full => self.log_full("internal", Instant::now()),
        }
    }

    fn local_destroy(&mut self, flow: &Flow) {
        let key = flow.key();
        let removal = self.internal.remove_entry(&key, flow.entry_id);
        if removal == Removal::Stale {
            self.stats.events_stale += 1;
            return;
        }
        if let Some(direct) = &mut self.direct
            && self.external.get(&key).is_some()
        {
            direct.kernel_dropped(key);
        }
        match removal {
            Removal::Removed(_) => self.ftfw.queue(LocalChange::Destroy(key)),
            _ => self.stats.events_filtered += 1,
        }
    }

    fn local_exp(&mut self, exp: crate::expect::Expectation, destroyed: bool) {
        if let Some(change) = self.exp.local(exp, destroyed) {
            self.queue_exp(change);
        }
    }

    fn queue_exp(&mut self, change: ExpChange) {
        self.ftfw.queue(match change {
            ExpChange::Upsert(exp) => LocalChange::ExpUpsert(exp),
            ExpChange::Destroy(exp) => LocalChange::ExpDestroy(exp),
        });
    }

    /// A helper that creates an expectation of a NAT flow usually rewrites
    /// an address in the payload too, and the length change becomes the
    /// master's sequence adjustment. The kernel sets that without an event
    /// (only a dump or get reports it), yet a new master that lacks it
    /// mangles every later segment of the control connection. So the master
    /// is read back shortly after the expectation appears (the rewrite
    /// follows the expectation's insertion within the same packet).
    fn refresh_masters(&mut self, now: Instant) {
        let mut due = Vec::new();
        self.master_refresh.retain(|&(t, key)| {
            if t <= now {
                due.push(key);
            }
            t > now
        });
        for key in due {
            let natted = self
                .internal
                .get(&key)
                .is_some_and(|e| e.flow.snat().is_some() || e.flow.dnat().is_some());
            if !natted {
                continue;
            }
            match self.kernel.get(&key) {
                Ok(Some(flow)) => self.local_upsert(flow, false),
                // Gone meanwhile: its destroy event follows.
                Ok(None) => {}
                Err(e) => log::warn!(
                    "cannot read back {key}, the master of a new expectation: {e}; the peer may lack its NAT sequence adjustment until its next change"
                ),
            }
        }
    }

    fn on_overrun(&mut self, now: Instant) {
        self.stats.netlink_overruns += 1;
        if let Some(direct) = &mut self.direct {
            direct.lost_track();
        }
        let current = self.events.rcvbuf();
        if current < self.cfg.rcvbuf_max {
            let grown = (current * 2).min(self.cfg.rcvbuf_max);
            if let Err(e) = self.events.set_rcvbuf(grown) {
                log::warn!("cannot grow the netlink event buffer to {grown} bytes: {e}");
            }
        }
        if self.resync_at.is_none() {
            log::warn!(
                "conntrack events were lost (netlink overrun, buffer {} bytes); resyncing with the kernel in {:?}",
                self.events.rcvbuf(),
                self.cfg.overrun_resync
            );
            self.resync_at = Some(now + self.cfg.overrun_resync);
        }
    }

    /// Dump the kernel table and reconcile the internal cache with it: new
    /// and changed flows are upserted, flows that vanished are destroyed;
    /// when `tell_peer`, every difference is queued for the peer.
    ///
    /// `claim_all`: every dumped flow becomes ours (start, `-R`); otherwise
    /// (recovery from an overrun) the replicas that direct-to-kernel mode
    /// wrote for the peer stay the peer's.
    fn resync_kernel(&mut self, tell_peer: bool, claim_all: bool) -> io::Result<(usize, usize)> {
        self.stats.kernel_resyncs += 1;
        // Events queued before the dump are older than it: after an overrun
        // some that followed them are lost, so replaying them after the dump
        // would regress flows for good. Events from here on are newer than
        // the dump's start and are applied after it.
        self.events.discard_queued()?;
        self.events_pending = false;
        let mut dumped = Vec::new();
        self.kernel.dump_into(|flow| dumped.push(flow))?;
        if let Some(direct) = &mut self.direct {
            let in_kernel: std::collections::HashSet<_> = dumped.iter().map(Flow::key).collect();
            let missing = self.external.iter().map(|e| e.flow.key());
            direct.set_missing(missing.filter(|k| !in_kernel.contains(k)));
        }
        let ours: Vec<Flow> = dumped
            .into_iter()
            .filter(|f| self.cfg.filter.accepts(f) && (claim_all || !self.owned_by_peer(f)))
            .collect();
        let ftfw = &mut self.ftfw;
        let done = self.internal.reconcile(ours, &mut self.internal_stamp, |flow| {
            if tell_peer {
                ftfw.queue(LocalChange::Upsert(flow.clone()));
            }
        });
        if done.full > 0 {
            self.log_full("internal", Instant::now());
        }
        let (changed, gone) = (done.changed, done.vanished.len());
        if tell_peer {
            for key in done.vanished {
                self.ftfw.queue(LocalChange::Destroy(key));
            }
        }
        if self.exp.sync.enabled() {
            let dumped = self.kernel.dump_expectations()?;
            for change in self.exp.reconcile(dumped) {
                if tell_peer {
                    self.queue_exp(change);
                }
            }
        }
        Ok((changed, gone))
    }

    /// In direct-to-kernel mode, a flow in our kernel that the peer wrote and
    /// we have not changed since: a dump must not claim it as ours.
    fn owned_by_peer(&self, flow: &Flow) -> bool {
        let key = flow.key();
        self.direct.is_some()
            && self.internal.get(&key).is_none()
            && self.external.get(&key).is_some()
    }

    fn log_full(&mut self, which: &str, now: Instant) {
        if let Some(repeats) = self.full_log.allow(now) {
            log::warn!(
                "{which} cache is full ({} flows): new flows are not replicated ({repeats} more refused since the last message); raise general.cache_limit",
                self.cfg.cache_limit
            );
        }
    }
}

// Peer side.
impl Daemon {
    fn on_datagrams(&mut self, now: Instant, link: usize) {
        let mut buf = [0u8; 65536];
        self.links_pending &= !(1 << link);
        for read in 0.. {
            if read == DATAGRAM_BATCH {
                self.links_pending |= 1 << link;
                break;
            }
            let (len, from) = match self.channels.recv(link, now, &mut buf) {
                Ok(Some(Recv::Datagram { len, from })) => (len, from),
                Ok(Some(Recv::PeerMoved { len, from, was })) => {
                    log::info!(
                        "sync link {}: peer now sends from port {} (was {was}): nothing came from port {was} for {:?} or more, the peer restarted",
                        self.channels.name(link),
                        from.port(),
                        self.channels.port_holdoff()
                    );
                    (len, from)
                }
                Ok(Some(Recv::Foreign { from })) => {
                    let name = self.channels.name(link);
                    self.reject_log.note(reject::Reason::WrongSource, from, name, now);
                    continue;
                }
                Ok(Some(Recv::WrongPort { from, .. })) => {
                    let name = self.channels.name(link);
                    self.reject_log.note(reject::Reason::WrongPort, from, name, now);
                    continue;
                }
                Ok(None) => break,
                Err(e) => {
                    log::debug!("sync link {}: {e}", self.channels.name(link));
                    continue;
                }
            };
            if let Some(refusal) = self.ftfw.handle_datagram(now, &buf[..len]) {
                let name = self.channels.name(link);
                self.reject_log.note(refusal.into(), from, name, now);
            }
        }
    }

    /// Drain the protocol core: apply peer events, transmit, and let it
    /// re-arm its timer.
    fn drive_protocol(&mut self, now: Instant) {
        if self.ftfw.poll_timeout().is_some_and(|t| t <= now) {
            self.ftfw.handle_timeout(now);
        }
        // Apply the peer's changes before acknowledging them: in
        // direct-to-kernel mode an ACK then means the flows are in this
        // kernel, which the peer's deferred packets wait for.
        while let Some(event) = self.ftfw.poll_event() {
            self.on_peer_event(now, event);
        }
        self.flush_direct(now);
        let mut buf = [0u8; 65536];
        if let Some(bytes) = self.unsent.take()
            && !self.send(now, &bytes)
        {
            return;
        }
        while let Some(n) = self.ftfw.poll_transmit(now, &mut buf) {
            if !self.send(now, &buf[..n]) {
                break;
            }
        }
    }

    /// Packets queued by the ruleset (`sync.defer`): send each one's flow
    /// state to the peer now, from the entry the queue delivers (the kernel
    /// reports a new flow only after the packet's release), and hold the
    /// packet until the peer acknowledges it.
    fn on_queued_packets(&mut self, now: Instant) {
        let Some(mut d) = self.defer.take() else { return };
        d.packets.clear();
        if let Err(e) = d.queue.recv(&mut d.packets)
            && d.log.allow(now).is_some()
        {
            log::warn!("sync.defer: {e}");
        }
        let up = self.ftfw.peer_state() == PeerState::Established;
        for p in std::mem::take(&mut d.packets) {
            // No peer to wait for: no lookup either.
            let flow = if up { p.flow.or_else(|| self.flow_of_packet(p.headers)) } else { None };
            let skip = match flow {
                None if !up => Some(Skip::PeerDown),
                None => Some(Skip::NotReplicated),
                Some(flow) => {
                    let key = flow.key();
                    let born =
                        self.external.get(&key).is_none() && self.internal.get(&key).is_none();
                    self.local_upsert(flow, born);
                    if self.internal.get(&key).is_none() {
                        Some(Skip::NotReplicated)
                    } else if !d.held.hold(p.id, now) {
                        d.release.push(p.id);
                        None
                    } else {
                        self.ftfw.request_ack();
                        None
                    }
                }
            };
            if let Some(why) = skip {
                d.held.skip(why);
                d.release.push(p.id);
            }
        }
        self.defer = Some(d);
    }

    /// A queued packet's flow when the kernel did not send its conntrack
    /// entry: the confirmed entry its tuple belongs to, or else (the first
    /// packet of a flow, not yet confirmed) what its headers say.
    fn flow_of_packet(&mut self, headers: Option<Flow>) -> Option<Flow> {
        let headers = headers?;
        // A bare SYN is a flow's first packet: its entry is confirmed only
        // after this packet's release, so asking the kernel would cost a
        // request per new connection for nothing. A retransmitted SYN of a
        // flow the events already brought is taken from the cache.
        if headers.l4proto == proto::TCP && headers.proto_state == tcp_state::SYN_SENT {
            let cached = self.internal.get(&headers.key()).map(|e| e.flow.clone());
            return Some(cached.unwrap_or(headers));
        }
        match self.kernel.get(&headers.key()) {
            Ok(Some(flow)) => Some(flow),
            Ok(None) => Some(headers),
            Err(_) => None,
        }
    }

    /// Take barriers for newly held packets, release those the peer
    /// acknowledged or that waited long enough.
    fn drive_defer(&mut self, now: Instant) {
        let Some(d) = &mut self.defer else { return };
        let resent = self.ftfw.stats().resent;
        if resent != d.resent {
            d.resent = resent;
            d.held.forget_barriers();
        }
        if d.held.needs_barrier() && self.ftfw.tx_is_empty() {
            d.held.set_barrier(Seq(self.ftfw.next_seq()));
        }
        d.held.release_acked(self.ftfw.acked_before(), now, &mut d.release);
        d.held.release_expired(now, &mut d.release);
        if let Err(e) = d.queue.accept(&d.release)
            && d.log.allow(now).is_some()
        {
            log::warn!(
                "sync.defer: {e}; {} packets were not released (fail-open applies only to a full queue)",
                d.release.len()
            );
        }
        d.release.clear();
    }

    /// Direct-to-kernel mode, the `-t` scheduled at the last backup
    /// transition: the flows in our kernel that the new master's table does
    /// not hold are leftovers of our time as master.
    fn purge_zombies(&mut self) {
        let external = &self.external;
        let secs = self.cfg.purge_timeout;
        match self.kernel.set_timeout_where(secs, |f| external.get(&f.key()).is_none()) {
            Ok(n) => log::info!(
                "{n} kernel flows the peer does not hold now expire in {secs} s unless traffic refreshes them"
            ),
            Err(e) => log::error!("purging the flows the peer does not hold failed: {e}"),
        }
    }

    /// Direct-to-kernel mode: write this turn's peer changes in one batch.
    fn flush_direct(&mut self, now: Instant) {
        let opts = self.commit_options();
        if let Some(direct) = self.direct.as_mut().filter(|d| d.has_pending()) {
            direct.flush(&mut self.kernel, &opts, now);
        }
    }

    /// Send one datagram; false when the socket is full and the bytes were
    /// kept for the next turn.
    fn send(&mut self, now: Instant, bytes: &[u8]) -> bool {
        match self.channels.send(now, bytes) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.unsent = Some(bytes.to_vec());
                false
            }
            Err(_) => {
                // Every link failed: the datagram is lost like on a lossy
                // wire, and the protocol repairs it once a link is back.
                self.stats.datagrams_unsent += 1;
                true
            }
        }
    }

    /// A flow from the peer into the external cache and, in direct mode,
    /// towards the kernel.
    fn peer_upsert(&mut self, flow: Flow, stamp: u64) -> Upsert {
        if let Some(direct) = &mut self.direct {
            let key = flow.key();
            let local = self.internal.get(&key).map(|e| &e.flow);
            let held = self.external.get(&key).map(|e| &e.flow);
            if direct.peer_upsert(flow.clone(), local, held) {
                self.internal.remove(&key);
            }
        }
        self.external.upsert(flow, stamp)
    }

    fn on_peer_event(&mut self, now: Instant, event: PeerEvent) {
        if self.readiness.observe(&event) {
            log::info!("holding the peer's complete table: ready to take over");
            if let Err(e) = self.readiness.publish() {
                log::error!("cannot mark this node ready for keepalived: {e}");
            }
        }
        if self.test_drop_peer_flows
            && matches!(
                event,
                PeerEvent::Upsert { .. }
                    | PeerEvent::Destroy { .. }
                    | PeerEvent::RepairUpsert { .. }
            )
        {
            return;
        }
        match event {
            PeerEvent::DigestDue
            | PeerEvent::Digest { .. }
            | PeerEvent::RepairRequested { .. }
            | PeerEvent::RepairUpsert { .. }
            | PeerEvent::RepairEnd { .. } => self.on_anti_entropy(now, event),
            PeerEvent::Upsert { flow, stamp } => {
                if self.peer_upsert(flow, stamp) == Upsert::Full {
                    self.log_full("external", now);
                }
            }
            PeerEvent::Destroy { key } => {
                self.external.remove(&key);
                if let Some(direct) = &mut self.direct {
                    direct.peer_destroy(key, self.internal.get(&key).is_some());
                }
            }
            PeerEvent::ExpUpsert { exp, stamp } => self.exp.peer_upsert(*exp, stamp),
            PeerEvent::ExpDestroy { key } => self.exp.peer_destroy(&key),
            PeerEvent::BulkEnd { floor } => {
                self.exp.peer_bulk_end(floor);
                let mut gone = Vec::new();
                let direct = self.direct.is_some();
                let stale = self.external.retain(|e| {
                    let keep = e.stamp >= floor;
                    if !keep && direct {
                        gone.push(e.flow.clone());
                    }
                    keep
                });
                if let Some(direct) = &mut self.direct {
                    // Not deleted from the kernel: a bulk can race with a
                    // flush of the peer's caches (primary-backup.sh's -f),
                    // so missing from it is no proof that a flow ended.
                    for flow in &gone {
                        direct.peer_forgot(flow.key());
                    }
                }
                log::info!(
                    "bulk update from the peer complete: {} flows in the external cache, {stale} stale ones removed",
                    self.external.len()
                );
            }
            PeerEvent::BulkRequested => {
                if self.internal_flushed {
                    // primary-backup.sh flushes the caches (-f) before it
                    // resyncs (-R), and the peer's backup script asks for
                    // our table (-n) at the same moment: an empty bulk
                    // would end in a sweep of the peer's whole copy. The
                    // kernel's table is the answer, as -R would make it.
                    log::info!(
                        "the peer asked for our table while the internal cache is flushed: resyncing it with the kernel first"
                    );
                    if let Err(e) = self.resync_kernel(false, true) {
                        log::warn!(
                            "cannot dump the conntrack table for the peer's resync request: {e}; sending the internal cache as it is"
                        );
                    }
                    self.internal_flushed = false;
                }
                if self.last_bulk.is_some_and(|t| now < t + BULK_SPACING) {
                    self.bulk_pending = true;
                } else {
                    self.bulk_now(now);
                }
            }
            PeerEvent::PeerUp => {
                self.peer_down_since = None;
                log::info!("peer is up")
            }
            PeerEvent::PeerDown => {
                self.peer_down_since = Some(SystemTime::now());
                log::warn!("peer is down: no datagram for {:?}", self.cfg.ftfw.peer_timeout)
            }
            PeerEvent::PeerRestarted => {
                self.restarts_unlogged += 1;
                if self.last_restart_log.is_none_or(|t| now >= t + PROBE_LOG_INTERVAL) {
                    self.last_restart_log = Some(now);
                    match self.restarts_unlogged {
                        1 => log::info!("peer restarted: exchanging full tables"),
                        n => log::warn!(
                            "peer restarted {n} times since the last such line: exchanging full tables (at most one bulk a second); many restarts in conntrackd's wire format are forged HELLOs"
                        ),
                    }
                    self.restarts_unlogged = 0;
                }
            }
            PeerEvent::Stalled { tx, rx } => log::error!(
                "replication with {} has stalled: the peer is heard from, but for {:?} {}; check both daemons' -s protocol counters and the sync link's filtering",
                self.channels.name(self.channels.active()),
                self.cfg.ftfw.stall_timeout,
                match (tx, rx) {
                    (true, true) =>
                        "nothing we sent was acknowledged and nothing it sent was accepted",
                    (true, false) => "nothing we sent was acknowledged",
                    _ => "nothing it sent was accepted (late or far ahead)",
                }
            ),
            PeerEvent::StallEnded => log::info!("replication moves again after a stall"),
            PeerEvent::HelloProbe { session } => {
                // A stream of replayed HELLOs must not fill the log.
                if self.last_probe_log.is_none_or(|t| now >= t + PROBE_LOG_INTERVAL) {
                    self.last_probe_log = Some(now);
                    log::warn!(
                        "HELLO from peer session {session:#010x} while session {:#010x} is live: probing it, the live session goes on (a restarted peer answers at once; a replayed HELLO never does); {} such HELLOs in all",
                        self.ftfw.peer_session(),
                        self.ftfw.stats().hello_probes
                    );
                }
            }
            PeerEvent::Rebased => log::warn!(
                "only refused messages from the peer for half the peer timeout (a forged HELLO, or a restart we missed): following its sequence again and exchanging full tables"
            ),
        }
    }
}

// Anti-entropy (docs/PROTOCOL.md): the protocol decides when; this only
// brings the caches' digests and flows to it.
impl Daemon {
    fn on_anti_entropy(&mut self, now: Instant, event: PeerEvent) {
        match event {
            PeerEvent::DigestDue => {
                if let Some(d) = self.internal.digests() {
                    self.ftfw.send_digest(now, d.values());
                }
            }
            PeerEvent::Digest { digests } => {
                let Some(ours) = self.external.digests() else { return };
                if self.test_drop_peer_flows {
                    return;
                }
                if self.external.len() >= self.cfg.cache_limit {
                    // A repair could not store what is missing.
                    self.repairs.stats.skipped_full += 1;
                    return;
                }
                self.repairs.stats.digests_compared += 1;
                let differ = ours.differing(&digests);
                if !differ.is_empty() {
                    self.repairs.stats.digests_differing += 1;
                    log::debug!(
                        "anti-entropy: {} of {} ranges differ from the peer's table; asking for them",
                        differ.len(),
                        digest::RANGES
                    );
                    self.ftfw.request_repair(differ);
                }
            }
            PeerEvent::RepairRequested { ranges } => {
                let flows: Vec<&Flow> = self
                    .internal
                    .iter()
                    .map(|e| &e.flow)
                    .filter(|f| ranges.holds(&f.key()))
                    .collect();
                log::info!(
                    "anti-entropy: the peer's copy of {} ranges of our table differs; resending their {} flows",
                    ranges.len(),
                    flows.len()
                );
                self.repairs.stats.repairs_served += 1;
                self.repairs.stats.flows_resent += flows.len() as u64;
                self.ftfw.repair_send(ranges, flows);
            }
            PeerEvent::RepairUpsert { flow, stamp } => match self.peer_upsert(flow, stamp) {
                Upsert::Created => self.repairs.flow(true, false),
                Upsert::Updated { changed } => self.repairs.flow(false, changed),
                Upsert::Full => self.log_full("external", now),
            },
            PeerEvent::RepairEnd { floor, ranges } => {
                let mut gone = Vec::new();
                let direct = self.direct.is_some();
                let removed = self.external.retain(|e| {
                    let keep = !(e.stamp < floor && ranges.holds(&e.flow.key()));
                    if !keep && direct {
                        gone.push(e.flow.key());
                    }
                    keep
                });
                // The digests proved the peer no longer has these: a destroy
                // that was lost, so the kernel's replica goes too.
                if let Some(direct) = &mut self.direct {
                    for key in gone {
                        direct.peer_destroy(key, self.internal.get(&key).is_some());
                    }
                }
                log::info!("{}", self.repairs.end(ranges, removed));
            }
            _ => {}
        }
    }
}

// Timers and signals.
impl Daemon {
    fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.next_link_check;
        for t in [
            self.ftfw.poll_timeout(),
            self.resync_at,
            self.bulk_pending.then(|| self.last_bulk.map(|t| t + BULK_SPACING)).flatten(),
            self.master_refresh.iter().map(|(t, _)| *t).min(),
            self.direct.as_ref().and_then(DirectToKernel::purge_at),
            self.watchdog.map(|(interval, last)| last + interval),
            self.defer.as_ref().and_then(|d| d.held.next_deadline()),
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
        if self.bulk_pending && self.last_bulk.is_none_or(|t| now >= t + BULK_SPACING) {
            self.bulk_now(now);
        }
        if self.master_refresh.iter().any(|(t, _)| *t <= now) {
            self.refresh_masters(now);
        }
        if self.direct.as_mut().is_some_and(|d| d.take_purge(now)) {
            self.purge_zombies();
        }
        if self.resync_at.is_some_and(|t| t <= now) {
            self.resync_at = None;
            match self.resync_kernel(true, false) {
                Ok((changed, gone)) => log::info!(
                    "resynced with the kernel after an overrun: {changed} flows new or changed, {gone} gone"
                ),
                Err(e) => {
                    log::error!(
                        "resync with the kernel failed: {e}; retrying in {:?}",
                        self.cfg.overrun_resync
                    );
                    self.resync_at = Some(now + self.cfg.overrun_resync);
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
        let Some(file) = self.cfg.key_file.clone() else {
            return Ok(
                "no key file configured: nothing to reload (other settings need a restart)".into()
            );
        };
        let keys = crate::config::load_key_file(&file).map_err(RequestError::KeyFile)?;
        let ids: Vec<String> = keys.iter().map(|k| k.id.to_string()).collect();
        self.ftfw.set_auth_keys(keys);
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

// Control socket.
impl Daemon {
    fn accept_clients(&mut self, now: Instant) {
        loop {
            match self.control.accept() {
                Ok((mut stream, _)) => {
                    let Some(uid) = self.client_uid(&stream) else {
                        self.stats.control_refused += 1;
                        continue;
                    };
                    let by_uid = self.client_uids.get(&uid).copied().unwrap_or(0);
                    if let Err(busy) = control::admit(uid, self.clients.len(), by_uid) {
                        // Said, not just closed: the CLI prints why. A
                        // client that does not read it loses nothing.
                        self.stats.control_busy += 1;
                        self.busy_unlogged += 1;
                        let _ = stream.write(&ControlReply::Failed(busy.to_string()).encode());
                        continue;
                    }
                    let token = Token(LINKS.0 + MAX_LINKS + self.next_client % (1 << 20));
                    self.next_client += 1;
                    if self.poll.registry().register(&mut stream, token, Interest::READABLE).is_ok()
                    {
                        *self.client_uids.entry(uid).or_default() += 1;
                        self.clients.insert(
                            token,
                            Client {
                                stream,
                                input: Vec::new(),
                                output: Vec::new(),
                                written: 0,
                                done: false,
                                uid,
                                deadline: now + REQUEST_TIMEOUT,
                            },
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("control socket accept failed: {e}");
                    break;
                }
            }
        }
    }

    /// The uid of a client that may use the control socket. The socket
    /// file is mode 0600 (0660 for the control group), but a file mode can
    /// be loosened by hand or by a package: the kernel's word on who
    /// connected decides.
    fn client_uid(&self, stream: &UnixStream) -> Option<u32> {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        match getsockopt(stream, PeerCredentials) {
            Ok(c) => {
                let groups = match self.cfg.control_gid {
                    Some(g) if c.uid() != 0 && c.gid() != g => control::process_groups(c.pid()),
                    _ => Vec::new(),
                };
                control::client_allowed(c.uid(), c.gid(), &groups, self.cfg.control_gid)
                    .then_some(c.uid())
            }
            Err(e) => {
                log::warn!("control socket: cannot read the client's credentials: {e}");
                None
            }
        }
    }

    fn close_client(&mut self, mut client: Client) {
        let _ = self.poll.registry().deregister(&mut client.stream);
        if let Some(n) = self.client_uids.get_mut(&client.uid) {
            *n -= 1;
            if *n == 0 {
                self.client_uids.remove(&client.uid);
            }
        }
    }

    /// Close the clients past their deadline, and say once how many were
    /// turned away as busy since the last time.
    fn expire_clients(&mut self, now: Instant) {
        let late: Vec<Token> =
            self.clients.iter().filter(|(_, c)| c.deadline <= now).map(|(t, _)| *t).collect();
        for token in &late {
            if let Some(client) = self.clients.remove(token) {
                self.stats.control_timeouts += 1;
                self.close_client(client);
            }
        }
        if !late.is_empty() {
            log::warn!(
                "closed {} control connections that sent no request within {REQUEST_TIMEOUT:?} or left the answer unread for {ANSWER_TIMEOUT:?}",
                late.len()
            );
        }
        if self.busy_unlogged > 0 {
            log::warn!(
                "turned away {} control connections: {} open, at most {} per user and {} in all ({} kept for root)",
                self.busy_unlogged,
                self.clients.len(),
                control::MAX_CLIENTS_PER_UID,
                control::MAX_CLIENTS,
                control::ROOT_SLOTS
            );
            self.busy_unlogged = 0;
        }
    }

    fn on_client(&mut self, now: Instant, token: Token, readable: bool) {
        let Some(mut client) = self.clients.remove(&token) else { return };
        let mut keep = true;
        if readable && !client.done {
            let mut buf = [0u8; 1024];
            loop {
                match client.stream.read(&mut buf) {
                    Ok(0) => {
                        keep = false;
                        break;
                    }
                    Ok(n) => client.input.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        keep = false;
                        break;
                    }
                }
            }
            let frame = control::request_frame_len(&client.input);
            if let Ok(None) = frame {
                if client.input.len() > MAX_REQUEST {
                    keep = false;
                }
            } else {
                let decoded = frame.and_then(|n| {
                    control::decode_request(&client.input[..n.unwrap_or(client.input.len())])
                });
                let reply = match decoded {
                    Ok((request, json)) => {
                        self.stats.control_requests += 1;
                        self.execute(request, json)
                    }
                    Err(e) => {
                        self.stats.control_errors += 1;
                        Err(RequestError::Malformed(e))
                    }
                };
                ControlReply::from(reply).encode_into(&mut client.output);
                client.done = true;
                client.deadline = now + ANSWER_TIMEOUT;
                keep = true;
            }
        }
        if keep && client.written < client.output.len() {
            loop {
                match client.stream.write(&client.output[client.written..]) {
                    Ok(n) => {
                        client.written += n;
                        client.deadline = now + ANSWER_TIMEOUT;
                        if client.written == client.output.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        keep = false;
                        break;
                    }
                }
            }
        }
        let flushed = client.done && client.written >= client.output.len();
        if !keep || flushed {
            self.close_client(client);
            return;
        }
        let interest = if client.written < client.output.len() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let _ = self.poll.registry().reregister(&mut client.stream, token, interest);
        self.clients.insert(token, client);
    }

    /// Carry out one operator request; the text (or JSON) to print, or an
    /// error line.
    fn execute(&mut self, request: Request, json: bool) -> Result<String, RequestError> {
        match request {
            Request::Commit => {
                if let Some(direct) = &mut self.direct {
                    direct.set_role(Role::Master);
                }
                self.commit()
            }
            Request::FlushCache(which) => {
                let (i, e) = match which {
                    Some(CacheSel::Internal) => (true, false),
                    Some(CacheSel::External) => (false, true),
                    None => (true, true),
                };
                let mut out = String::new();
                if i {
                    let _ = writeln!(
                        out,
                        "flushed {} flows from the internal cache",
                        self.internal.len()
                    );
                    self.internal.clear();
                    self.internal_flushed = true;
                }
                if e {
                    let _ = writeln!(
                        out,
                        "flushed {} flows from the external cache",
                        self.external.len()
                    );
                    self.external.clear();
                    self.exp.external.clear();
                }
                if i {
                    self.exp.internal.clear();
                }
                Ok(out)
            }
            Request::FlushKernel => {
                if let Some(direct) = &mut self.direct {
                    direct.lost_track();
                }
                self.kernel.flush().map_err(KernelOp::Flush.failed())?;
                Ok("kernel conntrack table flushed\n".into())
            }
            Request::ResyncKernel => {
                let (changed, gone) =
                    self.resync_kernel(true, true).map_err(KernelOp::Dump.failed())?;
                self.internal_flushed = false;
                Ok(format!(
                    "internal cache resynced with the kernel: {} flows, {changed} new or changed, {gone} gone\n",
                    self.internal.len()
                ))
            }
            Request::BulkSend => {
                self.bulk_send();
                Ok(format!("bulk send of {} flows queued\n", self.internal.len()))
            }
            Request::RequestResync => {
                self.ftfw.request_resync();
                Ok("resync requested from the peer\n".into())
            }
            Request::Purge => {
                if let Some(direct) = &mut self.direct {
                    // The peer's flows in our kernel are its replicas, not
                    // zombies of our time as master; which are which is
                    // known once the new master's table is here.
                    direct.schedule_purge(
                        Instant::now() + Duration::from_secs(self.cfg.purge_timeout.into()),
                    );
                    return Ok(format!(
                        "in {0} s, kernel flows the peer does not hold will be set to expire in {0} s unless traffic refreshes them\n",
                        self.cfg.purge_timeout
                    ));
                }
                let n = self
                    .kernel
                    .set_timeout_all(self.cfg.purge_timeout)
                    .map_err(KernelOp::SetTimeouts.failed())?;
                Ok(format!(
                    "{n} kernel flows now expire in {} s unless traffic refreshes them\n",
                    self.cfg.purge_timeout
                ))
            }
            Request::Kill => {
                self.stop = true;
                Ok("ctsyncd stopping\n".into())
            }
            Request::Stats(section) => Ok(self.stats_report(section, json)),
            Request::Metrics => Ok(metrics::render(&self.report())),
            Request::DumpInternal => Ok(dump(&self.internal, json)),
            Request::DumpExternal => Ok(dump(&self.external, json)),
            Request::DumpExpectations(which) => {
                let cache = match which {
                    CacheSel::Internal => &self.exp.internal,
                    CacheSel::External => &self.exp.external,
                };
                Ok(crate::expect::dump(cache, json))
            }
            Request::Reload => self.reload().map(|line| line + "\n"),
            // The answer itself is the proof of life: keepalived's check
            // fails when nothing answers, so only a running daemon with
            // the peer's table can make a node look ready.
            Request::CheckReady if self.readiness.is_ready() => {
                Ok("ready: this node holds the peer's complete table and may take over\n".into())
            }
            Request::CheckReady => Err(RequestError::NotReady),
            Request::TestDropPeerFlows(on) => {
                if !self.cfg.test_hooks {
                    return Err(RequestError::TestHooksOff);
                }
                self.test_drop_peer_flows = on;
                log::warn!(
                    "test hook: the peer's flow messages are {}",
                    if on { "dropped" } else { "applied again" }
                );
                Ok(format!("peer flow messages {}\n", if on { "dropped" } else { "applied" }))
            }
        }
    }

    fn commit_options(&self) -> CommitOptions {
        CommitOptions {
            timeout: self.cfg.commit_timeout,
            be_liberal: self.cfg.be_liberal,
            // In direct-to-kernel mode what the kernel holds is the peer's
            // latest state or newer local state: only fill in what expired.
            create_only: self.direct.is_some(),
        }
    }

    /// Entries our own request deleted: their destroy events carry our
    /// port id and never come back, so the internal cache and the peer
    /// learn it here.
    fn forget_deleted(&mut self, keys: &[FlowKey]) {
        for key in keys {
            if self.internal.remove(key).is_some() {
                self.ftfw.queue(LocalChange::Destroy(*key));
            }
        }
    }

    fn commit(&mut self) -> Result<String, RequestError> {
        let started = Instant::now();
        // What the kernel made until now must be in the internal cache
        // before the conflicts are looked for.
        self.drain_kernel_events(started);
        let conflicts = if self.direct.is_none() {
            crate::cache::nat_conflicts(&self.internal, &self.external)
        } else {
            Vec::new()
        };
        let displaced = if conflicts.is_empty() {
            0
        } else {
            let report =
                self.kernel.delete(&conflicts).map_err(KernelOp::DeleteConflicts.failed())?;
            log::warn!(
                "commit: {} kernel entries stood in the way of synced flows' NAT mappings and were deleted (first: {}); packets that reached this node's virtual IPs before the commit made them",
                report.deleted,
                conflicts[0]
            );
            report.deleted
        };
        self.forget_deleted(&conflicts);
        // Most recently updated first: the flows carrying traffic now reach
        // the kernel before a long tail of idle ones.
        // In direct-to-kernel mode only the replicas the kernel dropped need
        // it, when the daemon knows which they are.
        let missing = self.direct.as_ref().and_then(DirectToKernel::missing);
        let mut order: Vec<(u64, &Flow)> = self
            .external
            .iter()
            .filter(|e| missing.is_none_or(|m| m.contains(&e.flow.key())))
            .map(|e| (e.stamp, &e.flow))
            .collect();
        order.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        let opts = self.commit_options();
        // The events of the commit's moments are read between its batches
        // (see Kernel::commit_with) and applied once it is done.
        let mut during = Vec::new();
        let events = &mut self.events;
        let mut read_events = || {
            if let Err(e) = events.recv(&mut during, usize::MAX) {
                log::warn!("reading conntrack events during the commit failed: {e}");
            }
        };
        let result =
            self.kernel.commit_with(order.into_iter().map(|(_, f)| f), &opts, &mut read_events);
        self.handle_kernel_events(Instant::now(), &mut during);
        let report = result.map_err(KernelOp::Commit.failed())?;
        if let Some(direct) = &mut self.direct {
            direct.set_missing(report.failed.iter().map(|(k, _)| *k));
        }
        self.stats.commits += 1;
        self.commit_seconds.observe(started.elapsed().as_secs_f64());
        self.stats.commit_failures += report.failed.len() as u64;
        for (key, errno) in report.failed.iter().take(5) {
            log::warn!("commit of {key} failed: {}", io::Error::from_raw_os_error(*errno));
        }
        self.stats.commit_displaced += (displaced + report.displaced.len()) as u64;
        self.forget_deleted(&report.displaced);
        if let Some(first) = report.displaced.first() {
            log::warn!(
                "commit: {} kernel entries held the NAT mapping of a synced flow and were deleted for it (first: {first}); they were made by packets that reached this node's virtual IPs before the commit",
                report.displaced.len()
            );
        }
        let mut line = format!("committed {}", report.summary());
        if displaced > 0 {
            let _ = write!(
                line,
                "; {displaced} entries in the way of synced flows' NAT mappings deleted first"
            );
        }
        log::info!("{line}");
        if !self.exp.sync.enabled() {
            return Ok(line + "\n");
        }
        let failed: std::collections::HashSet<_> = report.failed.iter().map(|(k, _)| *k).collect();
        let exp_line = self.commit_expectations(&failed)?;
        Ok(format!("{line}\n{exp_line}\n"))
    }

    /// Commit the external expectations whose master is now in the kernel:
    /// committed from the external cache just now (and not in `failed`),
    /// or one of this kernel's own flows.
    fn commit_expectations(
        &mut self,
        failed: &std::collections::HashSet<crate::flow::FlowKey>,
    ) -> Result<String, RequestError> {
        let (external, internal, kernel) = (&self.external, &self.internal, &mut self.kernel);
        self.exp
            .commit(
                |m| (external.get(m).is_some() && !failed.contains(m)) || internal.get(m).is_some(),
                |ready| {
                    let done = kernel.commit_expectations(ready)?;
                    Ok(ExpWritten {
                        created: done.created,
                        updated: done.updated,
                        failed: done.failed,
                    })
                },
            )
            .map_err(KernelOp::CommitExpectations.failed())
    }

    /// Start a bulk of the internal cache now.
    fn bulk_now(&mut self, now: Instant) {
        self.last_bulk = Some(now);
        self.bulk_pending = false;
        log::info!("sending all {} internal flows to the peer", self.internal.len());
        self.bulk_send();
    }

    fn bulk_send(&mut self) {
        let exps = self.exp.internal.iter().map(|e| &e.exp);
        self.ftfw.bulk_send_with_expectations(self.internal.iter().map(|e| &e.flow), exps);
    }

    fn stats_report(&self, section: Option<control::StatsSection>, json: bool) -> String {
        let report = self.report();
        if json {
            return serde_json::to_string_pretty(&report).unwrap_or_default() + "\n";
        }
        report.to_text(section)
    }

    /// The counters `-s` and the metrics show.
    fn report(&self) -> StatsReport {
        let links = self.channels.status();
        let state = match self.ftfw.peer_state() {
            PeerState::Established => PeerPhase::Up,
            PeerState::Silent => PeerPhase::Down,
            PeerState::HelloSent if self.peer_down_since.is_some() => PeerPhase::Down,
            PeerState::HelloSent => PeerPhase::Waiting,
        };
        let active = self.channels.active();
        StatsReport {
            uptime_seconds: self.started.elapsed().as_secs(),
            synced: self.ftfw.is_synced(),
            ready: self.readiness.is_ready(),
            internal: self.internal.stats(),
            external: self.external.stats(),
            runtime: self.stats,
            netlink: self.events.stats(),
            netlink_rcvbuf: self.events.rcvbuf(),
            protocol: self.ftfw.stats().clone(),
            anti_entropy: self.repairs.stats,
            links,
            expectations: self.exp.sync.enabled().then(|| ExpReport {
                internal: self.exp.internal.stats(),
                external: self.exp.external.stats(),
                runtime: self.exp.stats,
            }),
            direct: self.direct.as_ref().map(DirectToKernel::stats).unwrap_or_default(),
            defer: self
                .defer
                .as_ref()
                .map(|d| DeferReport { held: d.held.stats(), queue: d.queue.stats() }),
            peer: PeerView {
                addr: self.channels.peer_addr(active).map(|a| a.to_string()).unwrap_or_default(),
                state,
                down_since: self.peer_down_since,
            },
            resend_queue_max: self.cfg.ftfw.resend_queue as u64,
            unsent_pending: self.unsent.is_some(),
            defer_max_held: self.cfg.defer.as_ref().map_or(0, |d| u64::from(d.max_held)),
            defer_hold: self.defer.as_ref().map(|d| d.held.hold_histogram()),
            commit_seconds: self.commit_seconds.clone(),
        }
    }

    /// Send the systemd status line if it changed (called once a second).
    fn update_status(&mut self) {
        let line = self.report().status_line();
        if line != self.status_sent {
            systemd::notify_status(&line);
            self.status_sent = line;
        }
    }

    /// A metrics scrape is ready to accept, read or write.
    fn on_metrics(&mut self, token: Token) {
        let Some(mut server) = self.metrics.take() else { return };
        if token == metrics::LISTENER {
            server.accept(self.poll.registry());
        } else {
            server.on_ready(self.poll.registry(), token, || metrics::render(&self.report()));
        }
        self.metrics = Some(server);
    }
}

fn dump(cache: &Cache, json: bool) -> String {
    let mut out = String::with_capacity(cache.len() * 160);
    for entry in cache.iter() {
        if json {
            // One JSON object per line, so a million flows stream and parse
            // line by line.
            let _ = writeln!(out, "{}", serde_json::to_string(&entry.flow).unwrap_or_default());
        } else {
            let _ = writeln!(out, "{}", entry.flow);
        }
    }
    out
}

/// Bind the control socket with mode 0600, or group-owned by `group` with
/// mode 0660. A socket file left by a dead daemon is replaced; one that
/// answers belongs to a running daemon.
fn bind_control(path: &Path, group: Option<u32>) -> Result<UnixListener, StartError> {
    let failed = |step| move |source| StartError::Control { step, path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|source| StartError::ControlDir { dir: dir.to_owned(), source })?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StartError::ControlInUse(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(failed(ControlStep::Bind))?;
    // Created 0600 by the umask, so the group gets in only once it owns it.
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(failed(ControlStep::Group))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(failed(ControlStep::Mode))?;
    Ok(listener)
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

    /// A second daemon on the same control socket stops with the line that
    /// says which socket and how to stop the first; a socket path under a
    /// regular file names the directory that cannot be made.
    #[test]
    fn control_socket_start_errors() {
        let dir = std::env::temp_dir().join(format!("ctsync-start-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("ctl.sock");
        let first = bind_control(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let second = bind_control(&path, None).map(|_| ()).unwrap_err();
        let file = dir.join("file");
        std::fs::write(&file, "").unwrap();
        let under_file = bind_control(&file.join("ctl.sock"), None).map(|_| ()).unwrap_err();
        drop(first);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode, 0o600);
        assert!(matches!(second, StartError::ControlInUse(_)));
        assert_eq!(
            second.to_string(),
            format!(
                "control socket {} is in use: another ctsyncd runs with this config (stop it with ctsyncd -k)",
                path.display()
            )
        );
        assert!(
            under_file.to_string().starts_with(&format!("cannot create {}: ", file.display())),
            "{under_file}"
        );
    }
}
