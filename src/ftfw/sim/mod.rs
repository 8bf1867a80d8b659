//! Deterministic simulation: two replication nodes ([`crate::node::Node`],
//! the daemon's own, each around its protocol core) joined by a lossy,
//! reordering, duplicating, corrupting link on a virtual clock. Random
//! changes reach each node's internal cache as the kernel's events do; its
//! external cache, the view, is built by the node from the core's
//! [`PeerEvent`]s (bulk-end sweeps, anti-entropy repairs, bulk spacing
//! included), and a restarted side starts a new node from a dump of its
//! table. After a quiet period each side's view must equal the other
//! side's internal cache exactly.
//!
//! An [`Attacker`] (see its module) may sit on the link. A flow change that
//! an injected datagram made in a view *taints* its key until a genuine
//! datagram changes that key again (in the native dialect, a copy of a
//! datagram the link delivered to that side but that changed nothing then
//! counts as genuine: the link duplicates too); tainted keys are left out of the
//! comparison (in the conntrackd dialect, which authenticates nothing, a
//! forged or replayed message may plant a flow: docs/SECURITY.md), and
//! [`Outcome::tainted_events`] counts such changes.
//!
//! Each side's kernel table is a [`SimKernel`]: random changes are made
//! there and reach the node as events, except while an overrun loses them
//! ([`Scenario::overruns`]): the node then schedules a dump and reconciles
//! its internal cache with it, as the daemon does. A failover
//! ([`Scenario::failovers`]) runs the notify script's `primary` steps on
//! one side (the node's commit into its kernel, `-f`, `-R`, `-B`) and the
//! `backup` steps on the other: `-t`, after which the flows the new master
//! took over expire in its kernel (here at once), and `-n`. From the first
//! failover on, only the master's kernel changes (both before it: an
//! active-active pair). At the end each side's internal
//! cache must also equal its kernel's table; in direct-to-kernel mode
//! ([`Scenario::direct`]) the kernel holds the peer's flows too, exactly
//! those of the view.
//!
//! This file is the harness; the scenarios it runs, and what they assert,
//! are in `tests/`.

mod attacker;
mod side;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::BuildHasherDefault;

/// Maps and sets with a fixed hasher: a bulk walks the internal set, so
/// its order is part of the schedule a seed must replay exactly.
type Fixed = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
use std::time::{Duration, Instant};

use super::*;
use crate::cache::Cache;
use crate::digest::AntiEntropyStats;
use crate::flow::{Flow, FlowKey, proto};
use crate::netlink::{CommitOptions, CommitReport, Table};
use crate::node::{Action, Node, NodeConfig};
use crate::wire::native;
pub(crate) use attacker::{Attack, AttackStats, Attacker, Recorded};
use side::Side;
pub(crate) use side::SimKernel;

/// splitmix64: small, seeded, good enough for schedules.
#[derive(Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

/// Faults and events of one run.
#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    pub seed: u64,
    pub loss: f64,
    pub dup: f64,
    pub corrupt: f64,
    /// One-way delay is `delay_ms + jitter` with jitter up to this (reorders).
    pub jitter_ms: u64,
    pub delay_ms: u64,
    pub ops: usize,
    /// Distinct flows per side the ops pick from.
    pub flows: u16,
    pub resend_queue: usize,
    pub initial_seq: [u32; 2],
    /// Link down between these times (ms).
    pub partition: Option<(u64, u64)>,
    /// Restart side `.1` at `.0` ms.
    pub restarts: Vec<(u64, usize)>,
    /// Inject a forged datagram for side 1 `.1` seqs ahead at `.0` ms.
    pub forge: Option<(u64, u32)>,
    /// Ops are spread over this many ms.
    pub op_period_ms: u64,
    /// The protocol both sides speak.
    pub dialect: Dialect,
    /// `anti_entropy_interval` of both sides (zero: off).
    pub anti_entropy: Duration,
    /// Edit one side's external view behind the protocol's back.
    pub drift: Vec<Drift>,
    /// `max_datagram` of both sides.
    pub max_datagram: usize,
    /// An attacker on the link.
    pub attack: Option<Attack>,
    /// Native dialect: both sides authenticate with a shared key.
    pub auth: bool,
    /// Session ids of this run start here (earlier runs use others).
    pub session_base: u32,
    /// Kernel events of side `.1` are lost from `.0` ms for `.2` ms (a
    /// netlink overrun, reported when the burst ends).
    pub overruns: Vec<(u64, usize, u64)>,
    /// At `.0` ms side `.1` becomes the master (the `primary` steps) and
    /// the other side the backup (`-n`).
    pub failovers: Vec<(u64, usize)>,
    /// Require exact convergence; else the run ends once both sides are
    /// synced with nothing left to send, and [`Outcome::mismatches`] tells
    /// how far the views are.
    pub exact: bool,
    /// Direct-to-kernel mode on both sides: the peer's flows are written
    /// into the kernel as they arrive, and each kernel must end holding
    /// its own flows and exactly the peer's.
    pub direct: bool,
}

/// Drift made on purpose in side `side`'s external view at `at_ms`: remove
/// `removed` entries, change `changed`, add `added` the peer never had.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Drift {
    pub at_ms: u64,
    pub side: usize,
    pub removed: usize,
    pub changed: usize,
    pub added: usize,
}

impl Default for Scenario {
    fn default() -> Scenario {
        Scenario {
            seed: 1,
            loss: 0.0,
            dup: 0.0,
            corrupt: 0.0,
            jitter_ms: 0,
            delay_ms: 1,
            ops: 300,
            flows: 100,
            resend_queue: 1024,
            initial_seq: [1000, 5000],
            partition: None,
            restarts: Vec::new(),
            forge: None,
            op_period_ms: 2000,
            dialect: Dialect::Native,
            anti_entropy: Duration::ZERO,
            drift: Vec::new(),
            max_datagram: native::DEFAULT_MAX_DATAGRAM,
            attack: None,
            auth: false,
            session_base: 100,
            overruns: Vec::new(),
            failovers: Vec::new(),
            exact: true,
            direct: false,
        }
    }
}

struct Packet {
    at: Duration,
    id: u64,
    to: usize,
    bytes: Vec<u8>,
}

impl PartialEq for Packet {
    fn eq(&self, o: &Packet) -> bool {
        (self.at, self.id) == (o.at, o.id)
    }
}
impl Eq for Packet {}
impl PartialOrd for Packet {
    fn partial_cmp(&self, o: &Packet) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Packet {
    fn cmp(&self, o: &Packet) -> std::cmp::Ordering {
        (self.at, self.id).cmp(&(o.at, o.id))
    }
}

/// Outcome of a run, for assertions beyond convergence.
pub(crate) struct Outcome {
    pub stats: [FtfwStats; 2],
    /// Virtual time to convergence.
    pub virtual_time: Duration,
    /// Datagrams both sides sent during [`IDLE_CHECK`] after convergence.
    pub idle_datagrams: u64,
    pub delivered_flow_msgs: u64,
    /// Anti-entropy counters of each side's external view.
    pub repairs: [AntiEntropyStats; 2],
    /// Virtual time of each side's last completed repair.
    pub repaired_at: [Option<Duration>; 2],
    /// What the attacker sent.
    pub attack: AttackStats,
    /// Changes of each side's view made by injected datagrams.
    pub tainted_events: [u64; 2],
    /// Keys of each side's view left out of the comparison at the end.
    pub tainted_keys: [usize; 2],
    /// The longest each side refused all the peer's sequenced messages
    /// after an injection (counted from the injection, or from the first
    /// refusal if later).
    pub silenced: [Duration; 2],
    /// Messages of the peer refused more than half the peer timeout into a
    /// run of refusals without making the side follow the peer again
    /// (conntrackd dialect; the link's own gaps aside, this bounds
    /// `silenced`).
    pub unhealed: [u64; 2],
    /// Keys in which the views differ from the peers' tables at the end,
    /// tainted keys aside (none unless [`Scenario::exact`] is false): in a
    /// view but gone from the peer's table, and missing from a view or
    /// in another state.
    pub mismatches: [usize; 2],
    /// Whether each side was synced at the end.
    pub synced: [bool; 2],
    /// Every datagram delivered (kept only for an attacker's later run).
    pub recording: Vec<Recorded>,
    /// Kernel events each side's overruns lost, and its dumps after them.
    pub events_lost: [u64; 2],
    pub resyncs: [u64; 2],
    /// Flows each failover committed into the new master's kernel.
    pub committed: Vec<usize>,
    /// When a side that restarted after the peer's table had stopped
    /// changing became ready, how far its view was from that table:
    /// [extra, missing or different].
    pub ready_gaps: Vec<[usize; 2]>,
}

/// The auth key of [`Scenario::auth`].
fn sim_key() -> native::AuthKey {
    native::AuthKey::new(7, b"simulated shared secret of 32 by".to_vec())
}

/// The delay between an overrun and the node's dump.
const OVERRUN_RESYNC: Duration = Duration::from_millis(200);

/// How long a converged pair is watched.
const IDLE_CHECK: Duration = Duration::from_secs(10);

pub(crate) fn config(resend_queue: usize, dialect: Dialect) -> FtfwConfig {
    FtfwConfig {
        dialect,
        resend_queue,
        max_seq_jump: resend_queue as u32,
        ack_window: 32,
        ..FtfwConfig::default()
    }
}

fn flow_for(side: usize, port: u16, rng: &mut Rng) -> Flow {
    let src = [10, side as u8, 0, 1];
    let mut f = if port.is_multiple_of(7) {
        let mut f = Flow::new(
            proto::TCP,
            format!("2001:db8::{side}").parse().unwrap(),
            "2001:db8::ff".parse().unwrap(),
            port,
            443,
        );
        f.extra_mut().labels = Some(u128::from(port));
        f
    } else {
        Flow::new_v4(proto::TCP, src.into(), [10, 9, 9, 9].into(), port, 80)
    };
    f.timeout = rng.below(1000) as u32;
    f.mark = rng.below(4) as u32;
    f.proto_state = 3;
    f
}

/// Run a scenario to convergence; panics with diagnostics if it does not.
pub(crate) fn run(sc: &Scenario) -> Outcome {
    let Some(attack) = &sc.attack else { return run_recorded(sc, None, false) };
    // The attacker first records earlier runs of the pair: other session
    // ids, sequence numbers and flow states.
    let mut prior = Vec::new();
    for k in 1..=attack.prior_runs as u64 {
        let mut earlier = Rng::new(sc.seed.wrapping_add(k));
        let earlier = Scenario {
            seed: earlier.next_u64(),
            attack: None,
            session_base: sc.session_base + 10_000 * k as u32,
            initial_seq: [earlier.next_u64() as u32, earlier.next_u64() as u32],
            restarts: Vec::new(),
            partition: None,
            forge: None,
            drift: Vec::new(),
            ops: sc.ops / 2,
            ..sc.clone()
        };
        prior.extend(run_recorded(&earlier, None, true).recording);
    }
    let attacker = Attacker::new(attack.clone(), sc.dialect, sc.seed, prior);
    run_recorded(sc, Some(attacker), false)
}

/// [`run`] with this attacker; `record`: keep every delivered datagram.
fn run_recorded(sc: &Scenario, mut attacker: Option<Attacker>, record: bool) -> Outcome {
    let t0 = Instant::now();
    let mut rng = Rng::new(sc.seed);
    let cfg = FtfwConfig {
        anti_entropy_interval: sc.anti_entropy,
        max_datagram: sc.max_datagram,
        auth_keys: if sc.auth { vec![sim_key()] } else { Vec::new() },
        ..config(sc.resend_queue, sc.dialect)
    };
    let mut recording = Vec::new();
    let node = |core: Ftfw| {
        let node_cfg = NodeConfig {
            peer_timeout: cfg.peer_timeout,
            overrun_resync: OVERRUN_RESYNC,
            cache_limit: 1 << 20,
            expectations: crate::expect::ExpectSync::Off,
            filter: crate::filter::Filter::accept_all(),
            direct: sc.direct,
            digests: !cfg.anti_entropy_interval.is_zero(),
            defer: None,
        };
        Node::new(core, node_cfg, crate::readiness::Readiness::new(None))
    };
    let mut sides: Vec<Side> = (0..2)
        .map(|i| Side {
            kernel: SimKernel::default(),
            deaf_until: None,
            events_lost: 0,
            resyncs: 0,
            born_calm: false,
            node: node(Ftfw::new(cfg.clone(), sc.session_base + i as u32, sc.initial_seq[i], t0)),
            repaired_at: None,
            tainted: HashSet::default(),
            tainted_events: 0,
            unapplied: HashSet::default(),
        })
        .collect();
    let mut drifts = sc.drift.clone();
    drifts.sort_by_key(|d| d.at_ms);
    let mut drifts = drifts.into_iter().peekable();
    let mut ops: Vec<(u64, usize, u16, u8)> = (0..sc.ops)
        .map(|_| {
            (
                rng.below(sc.op_period_ms.max(1)),
                rng.below(2) as usize,
                1 + rng.below(u64::from(sc.flows)) as u16,
                rng.below(10) as u8,
            )
        })
        .collect();
    ops.sort();
    let mut ops = ops.into_iter().peekable();
    let mut restarts = sc.restarts.clone();
    restarts.sort();
    let mut restarts = restarts.into_iter().peekable();
    let mut forge = sc.forge;
    let mut overruns = sc.overruns.clone();
    overruns.sort();
    let mut overruns = overruns.into_iter().peekable();
    let mut failovers = sc.failovers.clone();
    failovers.sort();
    let mut failovers = failovers.into_iter().peekable();
    let mut committed = Vec::new();
    let mut ready_gaps = Vec::new();
    let mut master: Option<usize> = None;
    let mut link: BinaryHeap<Reverse<Packet>> = BinaryHeap::new();
    let mut packet_id = 0u64;
    let mut now = Duration::ZERO;
    let mut buf = vec![0u8; 1500];
    let mut delivered = 0u64;
    let quiet_from = sc
        .op_period_ms
        .max(sc.partition.map_or(0, |p| p.1))
        .max(sc.restarts.iter().map(|r| r.0).max().unwrap_or(0))
        .max(sc.drift.iter().map(|d| d.at_ms).max().unwrap_or(0))
        .max(sc.overruns.iter().map(|o| o.0 + o.2).max().unwrap_or(0))
        .max(sc.failovers.iter().map(|f| f.0).max().unwrap_or(0));
    let attack_end = sc.attack.as_ref().and_then(|a| a.until_ms).unwrap_or(0);
    let deadline = Duration::from_millis(quiet_from.max(attack_end) + 600_000);
    let mut session_counter = sc.session_base + 900;
    let mut converged_at = None;
    let mut sent_at_convergence = 0;
    let mut silenced = [Duration::ZERO; 2];
    let mut unhealed = [0u64; 2];

    loop {
        // Drain outputs: transmit, then events (a bulk request feeds
        // transmit again).
        #[allow(clippy::needless_range_loop)] // `1 - i` addresses the other side
        for i in 0..2 {
            loop {
                let mut progressed = false;
                while let Some(n) = sides[i].node.ftfw.poll_transmit(t0 + now, &mut buf) {
                    progressed = true;
                    let ms = now.as_millis() as u64;
                    let cut = sc.partition.is_some_and(|(a, b)| ms >= a && ms < b);
                    let copies = if rng.chance(sc.dup) { 2 } else { 1 };
                    for _ in 0..copies {
                        if cut || rng.chance(sc.loss) {
                            continue;
                        }
                        let mut bytes = buf[..n].to_vec();
                        if rng.chance(sc.corrupt) {
                            let bit = rng.below(n as u64 * 8) as usize;
                            bytes[bit / 8] ^= 1 << (bit % 8);
                        }
                        let delay = sc.delay_ms * 1000 + rng.below(sc.jitter_ms * 1000 + 1);
                        packet_id += 1;
                        link.push(Reverse(Packet {
                            at: now + Duration::from_micros(delay),
                            id: packet_id,
                            to: 1 - i,
                            bytes,
                        }));
                    }
                }
                while let Some(ev) = sides[i].node.ftfw.poll_event() {
                    progressed = true;
                    let (msg, ready) = sides[i].apply_ready(now, t0, ev, false);
                    delivered += u64::from(msg);
                    if ready && sides[i].born_calm {
                        ready_gaps.push(mismatches(&sides[i], &sides[1 - i].node.internal));
                    }
                }
                if !progressed {
                    break;
                }
            }
            // As the reactor does at the end of a turn with peer changes.
            let Side { node, kernel, .. } = &mut sides[i];
            if let Some(direct) = &mut node.direct {
                direct.flush(kernel, &CommitOptions::default(), t0 + now);
            }
        }

        let quiet = now >= Duration::from_millis(quiet_from)
            && ops.peek().is_none()
            && restarts.peek().is_none()
            && drifts.peek().is_none()
            && overruns.peek().is_none()
            && failovers.peek().is_none()
            && sides.iter().all(|s| s.deaf_until.is_none() && s.node.resync_deadline().is_none())
            && forge.is_none()
            && attacker.as_ref().is_none_or(|a| a.endless() || a.due().is_none());
        let calm = ops.peek().is_none()
            && overruns.peek().is_none()
            && failovers.peek().is_none()
            && sides.iter().all(|s| s.deaf_until.is_none() && s.node.resync_deadline().is_none());
        let done = if sc.exact {
            converged(&sides) && sides.iter().all(Side::matches_kernel)
        } else {
            settled(&sides)
        };
        if quiet && done {
            // Stay a while: the views must stay equal and an idle pair must
            // only exchange keepalives.
            match converged_at {
                None => {
                    converged_at = Some(now);
                    sent_at_convergence = sides[0].node.ftfw.stats().datagrams_sent
                        + sides[1].node.ftfw.stats().datagrams_sent;
                }
                Some(t) if now >= t + IDLE_CHECK => break,
                Some(_) => {}
            }
        } else if converged_at.is_some() && quiet && (views_match(&sides) || !sc.exact) {
            // A side left the synced state with its view intact: heavy loss
            // took every keepalive of a peer timeout (it shakes hands
            // again), or in conntrackd's dialect a forged HELLO had moved
            // its tracking and it healed (tables go again). The idle check
            // starts over once both are synced.
            converged_at = None;
        } else if converged_at.is_some() && quiet {
            panic!(
                "views diverged after converging in {sc:?}\nattack: {:?}\nA: synced={} \
                 state={:?} {:?}\nB: synced={} state={:?} {:?}",
                attacker.as_ref().map(|a| a.stats),
                sides[0].node.ftfw.is_synced(),
                sides[0].node.ftfw.peer_state(),
                sides[0].node.ftfw.stats(),
                sides[1].node.ftfw.is_synced(),
                sides[1].node.ftfw.peer_state(),
                sides[1].node.ftfw.stats(),
            );
        }
        if now > deadline {
            let [a, b] = [&sides[0], &sides[1]];
            panic!(
                "no convergence in {sc:?}\nattack: {:?}\nkernel gaps (internal only, missing or other): {:?} {:?}\nA's view: {}\nB's view: {}\nA: {:?} synced={} state={:?} ext={} int={}\nB: {:?} \
                 synced={} state={:?} ext={} int={}",
                attacker.as_ref().map(|a| a.stats),
                a.kernel_gaps(),
                b.kernel_gaps(),
                differences(a, &b.node.internal),
                differences(b, &a.node.internal),
                a.node.ftfw.stats(),
                a.node.ftfw.is_synced(),
                a.node.ftfw.peer_state(),
                a.node.external.len(),
                a.node.internal.len(),
                b.node.ftfw.stats(),
                b.node.ftfw.is_synced(),
                b.node.ftfw.peer_state(),
                b.node.external.len(),
                b.node.internal.len(),
            );
        }

        // Advance the virtual clock to the next thing that happens.
        let mut next = deadline + Duration::from_secs(1);
        if let Some(Reverse(p)) = link.peek() {
            next = next.min(p.at);
        }
        for s in &sides {
            for t in [s.node.ftfw.poll_timeout(), s.node.bulk_deadline(), s.node.resync_deadline()]
                .into_iter()
                .flatten()
            {
                next = next.min(t.saturating_duration_since(t0));
            }
            if let Some(t) = s.deaf_until {
                next = next.min(t);
            }
        }
        if let Some(op) = ops.peek() {
            next = next.min(Duration::from_millis(op.0));
        }
        if let Some(r) = restarts.peek() {
            next = next.min(Duration::from_millis(r.0));
        }
        if let Some(o) = overruns.peek() {
            next = next.min(Duration::from_millis(o.0));
        }
        if let Some(f) = failovers.peek() {
            next = next.min(Duration::from_millis(f.0));
        }
        if let Some(d) = drifts.peek() {
            next = next.min(Duration::from_millis(d.at_ms));
        }
        if let Some(f) = forge {
            next = next.min(Duration::from_millis(f.0));
        }
        if let Some(t) = attacker.as_ref().and_then(Attacker::due) {
            next = next.min(t);
        }
        now = if next > now { next } else { now + Duration::from_micros(100) };

        while link.peek().is_some_and(|Reverse(p)| p.at <= now) {
            let Some(Reverse(p)) = link.pop() else { break };
            // Silence: the peer's messages keep coming and all are refused
            // (this one too, or it made the side follow the peer again).
            let refusing = sides[p.to].node.ftfw.refusing_since();
            let rebases = sides[p.to].node.ftfw.stats().rx_rebases;
            let accepted = |c: &Ftfw| c.stats().flow_msgs_accepted + c.stats().exp_msgs_accepted;
            let before = accepted(&sides[p.to].node.ftfw);
            sides[p.to].node.ftfw.handle_datagram(t0 + now, &p.bytes);
            let applied = accepted(&sides[p.to].node.ftfw) != before;
            let healed = sides[p.to].node.ftfw.stats().rx_rebases != rebases;
            let still = sides[p.to].node.ftfw.refusing_since();
            if let Some(t) = refusing
                && still == Some(t)
                && (t0 + now).saturating_duration_since(t) >= sides[p.to].node.ftfw.heal_after()
            {
                unhealed[p.to] += 1;
            }
            let refusing = still.or(refusing.filter(|_| healed));
            if let Some(a) = &mut attacker {
                a.record(p.to, &p.bytes);
                if !applied {
                    sides[p.to].unapplied.insert(p.bytes.clone());
                }
                if let (Some(t), Some(last)) = (refusing, a.stats.last_at) {
                    let from = t.saturating_duration_since(t0).max(last);
                    let s = &mut silenced[p.to];
                    *s = (*s).max(now.saturating_sub(from));
                }
            }
            if record {
                recording.push(Recorded { to: p.to, bytes: p.bytes });
            }
        }
        for s in &mut sides {
            if s.node.ftfw.poll_timeout().is_some_and(|t| t <= t0 + now) {
                s.node.ftfw.handle_timeout(t0 + now);
            }
            s.node.bulk_if_due(t0 + now);
        }
        while ops.peek().is_some_and(|op| Duration::from_millis(op.0) <= now) {
            let Some((_, i, port, action)) = ops.next() else { break };
            let flow = flow_for(i, port, &mut rng);
            // After a failover only the master's kernel sees traffic.
            if master.is_some_and(|m| m != i) {
                continue;
            }
            let destroy = action <= 2 && sides[i].kernel.0.contains_key(&flow.key());
            sides[i].kernel_change(t0 + now, flow, destroy);
        }
        while overruns.peek().is_some_and(|o| Duration::from_millis(o.0) <= now) {
            let Some((at, i, lost)) = overruns.next() else { break };
            let until = Duration::from_millis(at + lost);
            sides[i].deaf_until = Some(sides[i].deaf_until.map_or(until, |t| t.max(until)));
        }
        for s in &mut sides {
            // The socket reports the overrun once the burst is over.
            if s.deaf_until.is_some_and(|t| t <= now) {
                s.deaf_until = None;
                s.node.on_overrun(t0 + now);
            }
            if s.node.resync_due(t0 + now) {
                s.resyncs += 1;
                let table = s.kernel.dump();
                s.node.reconcile_flows(t0 + now, table, true, false);
            }
        }
        while failovers.peek().is_some_and(|f| Duration::from_millis(f.0) <= now) {
            let Some((_, i)) = failovers.next() else { break };
            master = Some(i);
            let report = sides[i].primary(t0 + now);
            committed.push(report.created + report.updated);
            // The backup's `-t`: its flows, now the master's, expire in its
            // kernel (here at once), and `-n`.
            let backup = &mut sides[1 - i];
            for flow in backup.kernel.dump() {
                backup.kernel_change(t0 + now, flow, true);
            }
            backup.node.ftfw.request_resync();
        }
        while drifts.peek().is_some_and(|d| Duration::from_millis(d.at_ms) <= now) {
            let Some(d) = drifts.next() else { break };
            sides[d.side].drift(&d, &mut rng);
        }
        while restarts.peek().is_some_and(|r| Duration::from_millis(r.0) <= now) {
            let Some((_, i)) = restarts.next() else { break };
            session_counter += 1;
            let initial = rng.next_u64() as u32;
            // The daemon starts afresh and dumps the kernel's table.
            let table = sides[i].kernel.dump();
            sides[i].node = node(Ftfw::new(cfg.clone(), session_counter, initial, t0 + now));
            sides[i].born_calm = calm;
            // A new event socket: what the old one lost is in the dump.
            sides[i].deaf_until = None;
            sides[i].node.reconcile_flows(t0 + now, table, false, true);
        }
        if let Some((at, ahead)) = forge
            && Duration::from_millis(at) <= now
        {
            forge = None;
            let bogus = Flow::new_v4(proto::UDP, [6, 6, 6, 6].into(), [7, 7, 7, 7].into(), 6, 6);
            let hdr = DatagramHeader {
                flags: 0,
                session: sides[0].node.ftfw.session_id(),
                seq: sides[0].node.ftfw.next_seq().wrapping_add(ahead),
            };
            // Far ahead: a flow that must be ignored. Near ahead: a bare
            // ALIVE (a forged flow inside the window would be accepted, as
            // nothing authenticates datagrams yet).
            let msg = if ahead > sc.resend_queue as u32 {
                MessageRef::FlowNew(&bogus)
            } else {
                MessageRef::Alive
            };
            let n = native::encode(&hdr, &[msg], &mut buf).unwrap();
            sides[1].node.ftfw.handle_datagram(t0 + now, &buf[..n]);
        }
        if let Some(a) = &mut attacker
            && a.due().is_some_and(|t| t <= now)
        {
            for Recorded { to, bytes } in a.inject(now) {
                // What genuine datagrams produced is applied first, so that
                // only the injection's own changes count as tainted.
                let side = &mut sides[to];
                while let Some(ev) = side.node.ftfw.poll_event() {
                    delivered += u64::from(side.apply(now, t0, ev, false));
                }
                // Native dialect: a copy of a datagram the link delivered to
                // this side but that changed nothing then (its session was
                // not known yet) is a late duplicate, which the link makes
                // too: the replay window and the session decide, and the
                // views are still compared exactly. Any other injection
                // taints what it changes; in the conntrackd dialect, every
                // one (nothing there tells a late copy from a fresh one).
                let duplicate = sc.dialect == Dialect::Native && side.unapplied.contains(&bytes);
                side.node.ftfw.handle_datagram(t0 + now, &bytes);
                while let Some(ev) = side.node.ftfw.poll_event() {
                    side.apply(now, t0, ev, !duplicate);
                }
            }
        }
    }
    if attacker.is_none() && forge.is_none() && sc.forge.is_none() {
        // Genuine traffic never puts two messages under one seq.
        let collisions =
            [sides[0].node.ftfw.stats().rx_collisions, sides[1].node.ftfw.stats().rx_collisions];
        assert_eq!(collisions, [0, 0], "collisions without an attacker in {sc:?}");
    }
    let idle_datagrams = sides[0].node.ftfw.stats().datagrams_sent
        + sides[1].node.ftfw.stats().datagrams_sent
        - sent_at_convergence;
    Outcome {
        stats: [sides[0].node.ftfw.stats().clone(), sides[1].node.ftfw.stats().clone()],
        virtual_time: converged_at.unwrap_or(now),
        idle_datagrams,
        delivered_flow_msgs: delivered,
        repairs: [sides[0].node.repairs.stats, sides[1].node.repairs.stats],
        repaired_at: [sides[0].repaired_at, sides[1].repaired_at],
        attack: attacker.map(|a| a.stats).unwrap_or_default(),
        tainted_events: [sides[0].tainted_events, sides[1].tainted_events],
        tainted_keys: [sides[0].tainted.len(), sides[1].tainted.len()],
        silenced,
        unhealed,
        mismatches: {
            let [a, b] = [
                mismatches(&sides[0], &sides[1].node.internal),
                mismatches(&sides[1], &sides[0].node.internal),
            ];
            [a[0] + b[0], a[1] + b[1]]
        },
        synced: [sides[0].node.ftfw.is_synced(), sides[1].node.ftfw.is_synced()],
        recording,
        events_lost: [sides[0].events_lost, sides[1].events_lost],
        resyncs: [sides[0].resyncs, sides[1].resyncs],
        committed,
        ready_gaps,
    }
}

/// How many keys of `viewer`'s view differ from the peer's table `int`,
/// tainted keys aside: [extra in the view, missing from it or different].
fn mismatches(viewer: &Side, int: &Cache) -> [usize; 2] {
    let clean = |k: &FlowKey| !viewer.tainted.contains(k);
    let ext = &viewer.node.external;
    [
        ext.iter().filter(|e| clean(&e.flow.key()) && int.get(&e.flow.key()).is_none()).count(),
        int.iter()
            .filter(|e| {
                let k = e.flow.key();
                clean(&k) && ext.get(&k).is_none_or(|g| g.flow != e.flow)
            })
            .count(),
    ]
}

/// How `viewer`'s view differs from the peer's table `int`, tainted keys
/// aside: counts, and a few keys.
fn differences(viewer: &Side, int: &Cache) -> String {
    let ext = &viewer.node.external;
    let clean = |k: &FlowKey| !viewer.tainted.contains(k);
    let keys = |c: &Cache| -> Vec<FlowKey> {
        c.iter().map(|e| e.flow.key()).filter(|k| clean(k)).collect()
    };
    let extra: Vec<_> = keys(ext).into_iter().filter(|k| int.get(k).is_none()).collect();
    let missing: Vec<_> = keys(int).into_iter().filter(|k| ext.get(k).is_none()).collect();
    let changed: Vec<_> = keys(int)
        .into_iter()
        .filter(|k| ext.get(k).zip(int.get(k)).is_some_and(|(g, f)| g.flow != f.flow))
        .collect();
    format!(
        "{} extra {:?}, {} missing {:?}, {} changed {:?}; {} tainted keys left out",
        extra.len(),
        &extra[..extra.len().min(2)],
        missing.len(),
        &missing[..missing.len().min(2)],
        changed.len(),
        &changed[..changed.len().min(2)],
        viewer.tainted.len()
    )
}

/// Each side's view equals the other's table, tainted keys aside.
fn views_match(sides: &[Side]) -> bool {
    mismatches(&sides[1], &sides[0].node.internal) == [0, 0]
        && mismatches(&sides[0], &sides[1].node.internal) == [0, 0]
}

/// Both sides synced with nothing left to send (views aside).
fn settled(sides: &[Side]) -> bool {
    sides.iter().all(|s| s.node.ftfw.is_synced() && s.node.ftfw.tx_is_empty())
}

/// Both sides synced, and each view equals the peer's table exactly, its
/// tainted keys aside.
fn converged(sides: &[Side]) -> bool {
    sides[0].node.ftfw.is_synced() && sides[1].node.ftfw.is_synced() && views_match(sides)
}

#[cfg(test)]
mod tests;
