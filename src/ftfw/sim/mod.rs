//! Deterministic simulation: two cores joined by a lossy, reordering,
//! duplicating, corrupting link on a virtual clock. Each side has an
//! internal set (its "kernel") that random changes hit, and an external view
//! built only from [`PeerEvent`]s. After a quiet period each side's external
//! view must equal the other side's internal set exactly.
//!
//! An [`Attacker`] (see its module) may sit on the link. A flow change that
//! an injected datagram made in a view *taints* its key until a genuine
//! datagram changes that key again (in the native dialect, a copy of a
//! datagram the link delivered to that side but that changed nothing then
//! counts as genuine: the link duplicates too); tainted keys are left out of the
//! comparison (in the conntrackd dialect, which authenticates nothing, a
//! forged or replayed message may plant a flow: docs/SECURITY.md), and
//! [`Outcome::tainted_events`] counts such changes.

mod attacker;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::BuildHasherDefault;

/// Maps and sets with a fixed hasher: a bulk walks the internal set, so
/// its order is part of the schedule a seed must replay exactly.
type Fixed = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
use std::time::{Duration, Instant};

use super::*;
use crate::digest::{AntiEntropyStats, Digests, RepairLedger};
use crate::flow::{Flow, FlowKey, proto};
use crate::wire::native;
pub(crate) use attacker::{Attack, AttackStats, Attacker, Recorded};

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
    /// Require exact convergence; else the run ends once both sides are
    /// synced with nothing left to send, and [`Outcome::mismatches`] tells
    /// how far the views are.
    pub exact: bool,
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
            exact: true,
        }
    }
}

struct Side {
    core: Ftfw,
    internal: HashMap<FlowKey, Flow, Fixed>,
    external: HashMap<FlowKey, (Flow, u64), Fixed>,
    ledger: RepairLedger,
    /// Virtual time of the last completed repair of `external`.
    repaired_at: Option<Duration>,
    /// Keys whose last change in `external` came from an injected datagram.
    tainted: HashSet<FlowKey, Fixed>,
    /// Changes of `external` made by injected datagrams.
    tainted_events: u64,
    /// Datagrams of this run the link delivered to this side that changed
    /// nothing then (their session was not known yet, say).
    unapplied: HashSet<Vec<u8>, Fixed>,
}

impl Side {
    /// Apply one event as the daemon does; `injected`: it came from a
    /// datagram the attacker sent. Returns true for a flow message.
    fn apply(&mut self, now: Duration, t0: Instant, ev: PeerEvent, injected: bool) -> bool {
        let taint = |side: &mut Side, key: FlowKey| {
            if injected {
                side.tainted_events += 1;
                side.tainted.insert(key);
            } else {
                side.tainted.remove(&key);
            }
        };
        match ev {
            PeerEvent::Upsert { flow, stamp } => {
                taint(self, flow.key());
                self.external.insert(flow.key(), (flow, stamp));
                return true;
            }
            PeerEvent::Destroy { key } => {
                taint(self, key);
                self.external.remove(&key);
                return true;
            }
            PeerEvent::BulkEnd { floor } => {
                if injected {
                    self.tainted_events += 1;
                }
                self.external.retain(|_, (_, stamp)| *stamp >= floor);
            }
            PeerEvent::BulkRequested => {
                let Side { core, internal, .. } = self;
                core.bulk_send(internal.values());
            }
            // The daemon logs these; nothing else changes.
            PeerEvent::PeerUp
            | PeerEvent::PeerDown
            | PeerEvent::PeerRestarted
            | PeerEvent::Rebased
            | PeerEvent::Stalled { .. }
            | PeerEvent::StallEnded
            | PeerEvent::ExpUpsert { .. }
            | PeerEvent::ExpDestroy { .. } => {}
            ev @ (PeerEvent::RepairUpsert { .. } | PeerEvent::RepairEnd { .. }) => {
                if injected {
                    self.tainted_events += 1;
                }
                self.anti_entropy(now, t0, ev);
            }
            ev => self.anti_entropy(now, t0, ev),
        }
        false
    }

    /// The caller's part of anti-entropy, as the reactor does it (with
    /// digests computed by a scan rather than kept by a cache).
    fn anti_entropy(&mut self, now: Duration, t0: Instant, ev: PeerEvent) {
        match ev {
            PeerEvent::DigestDue => {
                let d = Digests::of(self.internal.values());
                self.core.send_digest(t0 + now, d.values());
            }
            PeerEvent::Digest { digests } => {
                self.ledger.stats.digests_compared += 1;
                let ours = Digests::of(self.external.values().map(|(f, _)| f));
                let differ = ours.differing(&digests);
                if !differ.is_empty() {
                    self.ledger.stats.digests_differing += 1;
                    self.core.request_repair(differ);
                }
            }
            PeerEvent::RepairRequested { ranges } => {
                let flows: Vec<&Flow> =
                    self.internal.values().filter(|f| ranges.holds(&f.key())).collect();
                self.ledger.stats.repairs_served += 1;
                self.core.repair_send(ranges, flows);
            }
            PeerEvent::RepairUpsert { flow, stamp } => {
                let old = self.external.insert(flow.key(), (flow.clone(), stamp));
                self.ledger.flow(old.is_none(), old.is_some_and(|(o, _)| o != flow));
            }
            PeerEvent::RepairEnd { floor, ranges } => {
                let before = self.external.len();
                self.external.retain(|k, (_, stamp)| *stamp >= floor || !ranges.holds(k));
                self.ledger.end(ranges, before - self.external.len());
                self.repaired_at = Some(now);
            }
            _ => {}
        }
    }

    /// Make the drift `d` in the external view.
    fn drift(&mut self, d: &Drift, rng: &mut Rng) {
        let mut keys: Vec<FlowKey> = self.external.keys().copied().collect();
        keys.sort_by_key(|k| (k.l4, k.src));
        assert!(keys.len() >= d.removed + d.changed, "not enough flows to drift: {d:?}");
        for _ in 0..d.removed {
            let k = keys.swap_remove(rng.below(keys.len() as u64) as usize);
            self.external.remove(&k);
        }
        for _ in 0..d.changed {
            let k = keys.swap_remove(rng.below(keys.len() as u64) as usize);
            if let Some((f, _)) = self.external.get_mut(&k) {
                f.mark ^= 0x8000_0000;
            }
        }
        for i in 0..d.added {
            let f = Flow::new_v4(
                proto::UDP,
                [10, 77, 0, 1].into(),
                [10, 9, 9, 9].into(),
                1 + i as u16,
                53,
            );
            self.external.insert(f.key(), (f, 0));
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
}

/// The auth key of [`Scenario::auth`].
fn sim_key() -> native::AuthKey {
    native::AuthKey::new(7, b"simulated shared secret of 32 by".to_vec())
}

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
    let mut sides: Vec<Side> = (0..2)
        .map(|i| Side {
            core: Ftfw::new(cfg.clone(), sc.session_base + i as u32, sc.initial_seq[i], t0),
            internal: HashMap::default(),
            external: HashMap::default(),
            ledger: RepairLedger::default(),
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
    let mut link: BinaryHeap<Reverse<Packet>> = BinaryHeap::new();
    let mut packet_id = 0u64;
    let mut now = Duration::ZERO;
    let mut buf = vec![0u8; 1500];
    let mut delivered = 0u64;
    let quiet_from = sc
        .op_period_ms
        .max(sc.partition.map_or(0, |p| p.1))
        .max(sc.restarts.iter().map(|r| r.0).max().unwrap_or(0))
        .max(sc.drift.iter().map(|d| d.at_ms).max().unwrap_or(0));
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
                while let Some(n) = sides[i].core.poll_transmit(t0 + now, &mut buf) {
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
                while let Some(ev) = sides[i].core.poll_event() {
                    progressed = true;
                    delivered += u64::from(sides[i].apply(now, t0, ev, false));
                }
                if !progressed {
                    break;
                }
            }
        }

        let quiet = now >= Duration::from_millis(quiet_from)
            && ops.peek().is_none()
            && restarts.peek().is_none()
            && drifts.peek().is_none()
            && forge.is_none()
            && attacker.as_ref().is_none_or(|a| a.endless() || a.due().is_none());
        let done = if sc.exact { converged(&sides) } else { settled(&sides) };
        if quiet && done {
            // Stay a while: the views must stay equal and an idle pair must
            // only exchange keepalives.
            match converged_at {
                None => {
                    converged_at = Some(now);
                    sent_at_convergence =
                        sides[0].core.stats().datagrams_sent + sides[1].core.stats().datagrams_sent;
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
                sides[0].core.is_synced(),
                sides[0].core.peer_state(),
                sides[0].core.stats(),
                sides[1].core.is_synced(),
                sides[1].core.peer_state(),
                sides[1].core.stats(),
            );
        }
        if now > deadline {
            let [a, b] = [&sides[0], &sides[1]];
            panic!(
                "no convergence in {sc:?}\nattack: {:?}\nA's view: {}\nB's view: {}\nA: {:?} synced={} state={:?} ext={} int={}\nB: {:?} \
                 synced={} state={:?} ext={} int={}",
                attacker.as_ref().map(|a| a.stats),
                differences(a, &b.internal),
                differences(b, &a.internal),
                a.core.stats(),
                a.core.is_synced(),
                a.core.peer_state(),
                a.external.len(),
                a.internal.len(),
                b.core.stats(),
                b.core.is_synced(),
                b.core.peer_state(),
                b.external.len(),
                b.internal.len(),
            );
        }

        // Advance the virtual clock to the next thing that happens.
        let mut next = deadline + Duration::from_secs(1);
        if let Some(Reverse(p)) = link.peek() {
            next = next.min(p.at);
        }
        for s in &sides {
            if let Some(t) = s.core.poll_timeout() {
                next = next.min(t.saturating_duration_since(t0));
            }
        }
        if let Some(op) = ops.peek() {
            next = next.min(Duration::from_millis(op.0));
        }
        if let Some(r) = restarts.peek() {
            next = next.min(Duration::from_millis(r.0));
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
            let refusing = sides[p.to].core.refusing_since();
            let rebases = sides[p.to].core.stats().rx_rebases;
            let accepted = |c: &Ftfw| c.stats().flow_msgs_accepted + c.stats().exp_msgs_accepted;
            let before = accepted(&sides[p.to].core);
            sides[p.to].core.handle_datagram(t0 + now, &p.bytes);
            let applied = accepted(&sides[p.to].core) != before;
            let healed = sides[p.to].core.stats().rx_rebases != rebases;
            let still = sides[p.to].core.refusing_since();
            if let Some(t) = refusing
                && still == Some(t)
                && (t0 + now).saturating_duration_since(t) >= sides[p.to].core.heal_after()
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
            if s.core.poll_timeout().is_some_and(|t| t <= t0 + now) {
                s.core.handle_timeout(t0 + now);
            }
        }
        while ops.peek().is_some_and(|op| Duration::from_millis(op.0) <= now) {
            let Some((_, i, port, action)) = ops.next() else { break };
            let side = &mut sides[i];
            let flow = flow_for(i, port, &mut rng);
            let key = flow.key();
            let change = match (side.internal.contains_key(&key), action) {
                (true, 0..=2) => {
                    side.internal.remove(&key);
                    LocalChange::Destroy(key)
                }
                (true, _) => {
                    side.internal.insert(key, flow.clone());
                    LocalChange::Upsert(flow)
                }
                (false, _) => {
                    side.internal.insert(key, flow.clone());
                    LocalChange::New(flow)
                }
            };
            side.core.queue(change);
        }
        while drifts.peek().is_some_and(|d| Duration::from_millis(d.at_ms) <= now) {
            let Some(d) = drifts.next() else { break };
            sides[d.side].drift(&d, &mut rng);
        }
        while restarts.peek().is_some_and(|r| Duration::from_millis(r.0) <= now) {
            let Some((_, i)) = restarts.next() else { break };
            session_counter += 1;
            let initial = rng.next_u64() as u32;
            sides[i].core = Ftfw::new(cfg.clone(), session_counter, initial, t0 + now);
            sides[i].external.clear();
        }
        if let Some((at, ahead)) = forge
            && Duration::from_millis(at) <= now
        {
            forge = None;
            let bogus = Flow::new_v4(proto::UDP, [6, 6, 6, 6].into(), [7, 7, 7, 7].into(), 6, 6);
            let hdr = DatagramHeader {
                flags: 0,
                session: sides[0].core.session_id(),
                seq: sides[0].core.next_seq().wrapping_add(ahead),
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
            sides[1].core.handle_datagram(t0 + now, &buf[..n]);
        }
        if let Some(a) = &mut attacker
            && a.due().is_some_and(|t| t <= now)
        {
            for Recorded { to, bytes } in a.inject(now) {
                // What genuine datagrams produced is applied first, so that
                // only the injection's own changes count as tainted.
                let side = &mut sides[to];
                while let Some(ev) = side.core.poll_event() {
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
                side.core.handle_datagram(t0 + now, &bytes);
                while let Some(ev) = side.core.poll_event() {
                    side.apply(now, t0, ev, !duplicate);
                }
            }
        }
    }
    if attacker.is_none() && forge.is_none() && sc.forge.is_none() {
        // Genuine traffic never puts two messages under one seq.
        let collisions = [sides[0].core.stats().rx_collisions, sides[1].core.stats().rx_collisions];
        assert_eq!(collisions, [0, 0], "collisions without an attacker in {sc:?}");
    }
    let idle_datagrams = sides[0].core.stats().datagrams_sent
        + sides[1].core.stats().datagrams_sent
        - sent_at_convergence;
    Outcome {
        stats: [sides[0].core.stats().clone(), sides[1].core.stats().clone()],
        virtual_time: converged_at.unwrap_or(now),
        idle_datagrams,
        delivered_flow_msgs: delivered,
        repairs: [sides[0].ledger.stats, sides[1].ledger.stats],
        repaired_at: [sides[0].repaired_at, sides[1].repaired_at],
        attack: attacker.map(|a| a.stats).unwrap_or_default(),
        tainted_events: [sides[0].tainted_events, sides[1].tainted_events],
        tainted_keys: [sides[0].tainted.len(), sides[1].tainted.len()],
        silenced,
        unhealed,
        mismatches: {
            let [a, b] = [
                mismatches(&sides[0], &sides[1].internal),
                mismatches(&sides[1], &sides[0].internal),
            ];
            [a[0] + b[0], a[1] + b[1]]
        },
        synced: [sides[0].core.is_synced(), sides[1].core.is_synced()],
        recording,
    }
}

/// How `viewer`'s view differs from the peer's table `int`, tainted keys
/// aside: counts, and a few keys.
/// How many keys of `viewer`'s view differ from the peer's table `int`,
/// tainted keys aside.
fn mismatches(viewer: &Side, int: &HashMap<FlowKey, Flow, Fixed>) -> [usize; 2] {
    let clean = |k: &FlowKey| !viewer.tainted.contains(k);
    let ext = &viewer.external;
    [
        ext.keys().filter(|k| clean(k) && !int.contains_key(*k)).count(),
        int.iter().filter(|(k, f)| clean(k) && ext.get(*k).is_none_or(|(g, _)| g != *f)).count(),
    ]
}

fn differences(viewer: &Side, int: &HashMap<FlowKey, Flow, Fixed>) -> String {
    let ext = &viewer.external;
    let clean = |k: &FlowKey| !viewer.tainted.contains(k);
    let extra: Vec<_> = ext.keys().filter(|k| clean(k) && !int.contains_key(*k)).collect();
    let missing: Vec<_> = int.keys().filter(|k| clean(k) && !ext.contains_key(*k)).collect();
    let changed: Vec<_> = int
        .iter()
        .filter(|(k, f)| clean(k) && ext.get(*k).is_some_and(|(g, _)| g != *f))
        .map(|(k, _)| k)
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
    let view_matches = |viewer: &Side, int: &HashMap<FlowKey, Flow, Fixed>| {
        let ext = &viewer.external;
        let clean = |k: &&FlowKey| !viewer.tainted.contains(*k);
        ext.keys().filter(clean).all(|k| int.contains_key(k))
            && int
                .iter()
                .filter(|(k, _)| clean(k))
                .all(|(k, f)| ext.get(k).is_some_and(|(g, _)| g == f))
    };
    view_matches(&sides[1], &sides[0].internal) && view_matches(&sides[0], &sides[1].internal)
}

/// Both sides synced with nothing left to send (views aside).
fn settled(sides: &[Side]) -> bool {
    sides.iter().all(|s| s.core.is_synced() && s.core.tx_is_empty())
}

/// Both sides synced, and each view equals the peer's table exactly, its
/// tainted keys aside.
fn converged(sides: &[Side]) -> bool {
    sides[0].core.is_synced() && sides[1].core.is_synced() && views_match(sides)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_link() {
        let out = run(&Scenario::default());
        assert!(out.delivered_flow_msgs > 100, "{}", out.delivered_flow_msgs);
        assert!(out.virtual_time < Duration::from_secs(10));
        assert_eq!(out.stats[0].resent, 0);
        // docs/PROTOCOL.md, "Keepalive": one datagram per interval each way.
        assert!(out.idle_datagrams <= 2 * 11, "{}", out.idle_datagrams);
        assert_eq!(out.stats[1].drop_bad_crc, 0);
    }

    #[test]
    fn heavy_loss_reorder_dup_corruption() {
        run(&Scenario {
            seed: 7,
            loss: 0.3,
            dup: 0.1,
            corrupt: 0.05,
            jitter_ms: 20,
            ..Scenario::default()
        });
    }

    #[test]
    fn half_of_everything_lost() {
        let out = run(&Scenario { seed: 3, loss: 0.5, ops: 200, ..Scenario::default() });
        assert!(out.stats[0].resent + out.stats[1].resent > 0);
    }

    #[test]
    fn sequence_numbers_wrap() {
        run(&Scenario {
            seed: 11,
            loss: 0.1,
            jitter_ms: 5,
            initial_seq: [u32::MAX - 50, u32::MAX - 3],
            ..Scenario::default()
        });
    }

    #[test]
    fn tiny_resend_queue_applies_backpressure() {
        let out = run(&Scenario {
            seed: 5,
            loss: 0.2,
            resend_queue: 8,
            ops: 400,
            op_period_ms: 100,
            ..Scenario::default()
        });
        assert!(out.stats[0].backpressure + out.stats[1].backpressure > 0);
    }

    #[test]
    fn partition_heals() {
        let out = run(&Scenario {
            seed: 13,
            loss: 0.05,
            partition: Some((500, 9000)),
            ..Scenario::default()
        });
        assert!(out.stats[0].peer_down >= 1 && out.stats[0].peer_up >= 2);
    }

    #[test]
    fn restart_of_either_side_mid_burst() {
        let out = run(&Scenario {
            seed: 17,
            loss: 0.1,
            jitter_ms: 3,
            restarts: vec![(700, 0), (1400, 1)],
            ..Scenario::default()
        });
        assert!(out.stats[0].peer_restarts + out.stats[1].peer_restarts >= 1);
    }

    #[test]
    fn forged_far_ahead_datagram_does_not_stall() {
        let out = run(&Scenario { seed: 19, forge: Some((900, 1 << 30)), ..Scenario::default() });
        assert_eq!(out.stats[1].drop_far_ahead, 1);
    }

    #[test]
    fn forged_near_ahead_datagram_heals_by_jumping() {
        let out = run(&Scenario { seed: 23, forge: Some((900, 50)), ..Scenario::default() });
        assert!(out.stats[0].seq_jumps >= 1);
    }

    /// The conntrackd dialect on the same lossy links (docs/PROTOCOL.md,
    /// "conntrackd compatibility"). Not simulated there: corruption (the
    /// format has no checksum) and restarts (it has no BULK_END, so flows
    /// destroyed while a side was down stay in the other's view).
    fn compat(sc: Scenario) -> Outcome {
        run(&Scenario { dialect: Dialect::Conntrackd, ..sc })
    }

    #[test]
    fn compat_clean_link_pings_one_message_per_second() {
        let out = compat(Scenario::default());
        assert_eq!(out.stats[0].resent, 0);
        // An idle pair exchanges one ACK or ALIVE per second each way, as
        // conntrackd does.
        assert!(out.idle_datagrams <= 2 * 11, "{}", out.idle_datagrams);
        assert!(out.idle_datagrams >= 2 * 9, "{}", out.idle_datagrams);
    }

    #[test]
    fn compat_loss_reorder_dup() {
        let out = compat(Scenario {
            seed: 29,
            loss: 0.3,
            dup: 0.1,
            jitter_ms: 20,
            ..Scenario::default()
        });
        assert!(out.stats[0].nacks_sent + out.stats[1].nacks_sent > 0);
    }

    #[test]
    fn compat_wrap_backpressure_partition() {
        compat(Scenario {
            seed: 31,
            loss: 0.1,
            initial_seq: [u32::MAX - 50, u32::MAX - 3],
            resend_queue: 8,
            ops: 400,
            op_period_ms: 300,
            partition: Some((200, 5000)),
            ..Scenario::default()
        });
    }

    #[test]
    fn lost_destroy_under_a_pending_new_is_not_cancelled() {
        // A destroy lost in a partition, the flow re-created and destroyed
        // again before the loss is noticed: the peer still holds the first
        // incarnation, so the second destroy must be sent.
        compat(Scenario {
            seed: 17035293351901932946,
            loss: 0.2,
            dup: 0.04,
            resend_queue: 64,
            initial_seq: [296184259, 2443667907],
            partition: Some((243, 1592)),
            ops: 335,
            ..Scenario::default()
        });
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
        #[test]
        fn compat_random_schedules_converge(
            seed in proptest::num::u64::ANY,
            loss in 0u32..=50,
            dup in 0u32..=20,
            jitter in 0u64..30,
            rs in proptest::sample::select(vec![8usize, 64, 4096]),
            start in proptest::num::u32::ANY,
            partition in proptest::option::of((0u64..2000, 100u64..5000)),
            ops in 20usize..400,
        ) {
            compat(Scenario {
                seed,
                loss: f64::from(loss) / 100.0,
                dup: f64::from(dup) / 100.0,
                jitter_ms: jitter,
                resend_queue: rs,
                initial_seq: [start, start.wrapping_add(0x8000_0000)],
                partition: partition.map(|(a, len)| (a, a + len)),
                ops,
                ..Scenario::default()
            });
        }
    }

    #[test]
    fn stale_hello_of_an_older_incarnation_does_not_win() {
        // Two restarts 11 ms apart with 11 ms of jitter: the first
        // incarnation's HELLO_BACK arrives after the second one's HELLO.
        // docs/PROTOCOL.md, "Handshake" (rounds).
        run(&Scenario {
            seed: 1795131453620218000,
            dup: 0.01,
            jitter_ms: 11,
            resend_queue: 64,
            initial_seq: [0, 0x8000_0000],
            restarts: vec![(197, 1), (208, 1)],
            ops: 109,
            ..Scenario::default()
        });
    }

    #[test]
    fn superseded_entries_keep_their_slot_until_acked() {
        // The ring must not run more than its capacity ahead of the
        // receiver: docs/PROTOCOL.md, "Resend queue".
        run(&Scenario {
            seed: 16094329664063358698,
            loss: 0.4,
            dup: 0.17,
            corrupt: 0.05,
            jitter_ms: 29,
            resend_queue: 64,
            initial_seq: [1704860602, 3852344250],
            partition: Some((743, 2076)),
            ops: 186,
            ..Scenario::default()
        });
    }

    /// Drift made in side 1's view at 5 s, after the changes stopped.
    fn drift_scenario(loss: f64, dup: f64, jitter_ms: u64) -> Scenario {
        Scenario {
            seed: 7,
            loss,
            dup,
            jitter_ms,
            ops: 400,
            flows: 200,
            op_period_ms: 3000,
            anti_entropy: Duration::from_secs(2),
            drift: vec![
                Drift { at_ms: 5000, side: 1, removed: 7, changed: 5, added: 3 },
                Drift { at_ms: 5000, side: 0, removed: 0, changed: 2, added: 0 },
            ],
            ..Scenario::default()
        }
    }

    #[test]
    fn anti_entropy_finds_and_repairs_drift_within_the_interval_counting_it_exactly() {
        // docs/PROTOCOL.md, "Anti-entropy": the digests after the drift
        // differ in the drifted ranges only; their repair restores the
        // views (run() checks they equal the peers' tables) and counts
        // exactly what had drifted.
        let sc = drift_scenario(0.0, 0.0, 0);
        let out = run(&sc);
        let r = out.repairs[1];
        assert_eq!((r.flows_added, r.flows_changed, r.flows_removed), (7, 5, 3), "{r:?}");
        assert_eq!(r.repairs, r.digests_differing);
        assert!(r.ranges_repaired >= 1 && r.ranges_repaired <= 15, "{r:?}");
        let l = out.repairs[0];
        assert_eq!((l.flows_added, l.flows_changed, l.flows_removed), (0, 2, 0), "{l:?}");
        let took = out.repaired_at[1].unwrap() - Duration::from_millis(5000);
        assert!(took <= sc.anti_entropy + Duration::from_millis(100), "{took:?}");
        assert_eq!(out.repairs[0].repairs_served, out.repairs[1].repairs);
    }

    #[test]
    fn anti_entropy_repairs_exactly_through_loss_duplication_and_reordering() {
        let out = run(&drift_scenario(0.2, 0.1, 15));
        let r = out.repairs[1];
        assert_eq!((r.flows_added, r.flows_changed, r.flows_removed), (7, 5, 3), "{r:?}");
        let l = out.repairs[0];
        assert_eq!((l.flows_added, l.flows_changed, l.flows_removed), (0, 2, 0), "{l:?}");
    }

    #[test]
    fn anti_entropy_repairs_drift_while_changes_keep_flowing() {
        // A busy pair is never idle: digests must still be sent and
        // compared. Changes made meanwhile may fix some drifted flows
        // themselves, so the repair counts at most what drifted.
        let sc = Scenario {
            ops: 4000,
            flows: 300,
            op_period_ms: 20_000,
            drift: vec![Drift { at_ms: 10_000, side: 1, removed: 7, changed: 5, added: 3 }],
            ..drift_scenario(0.0, 0.0, 5)
        };
        let out = run(&sc);
        let r = out.repairs[1];
        let repaired = r.flows_added + r.flows_changed + r.flows_removed;
        assert!((1..=15).contains(&repaired), "{r:?}");
        assert!(r.digests_compared >= 8, "{r:?}");
        assert_eq!(r.flows_removed, 3, "nothing else can remove the added flows: {r:?}");
        let took = out.repaired_at[1].unwrap() - Duration::from_millis(10_000);
        assert!(took <= sc.anti_entropy + Duration::from_millis(500), "{took:?}");
    }

    #[test]
    fn anti_entropy_digests_in_parts_when_a_datagram_is_small() {
        // 512-byte datagrams hold 57 digests: three DIGEST parts, which the
        // receiver compares only once all arrived in order.
        let out = run(&Scenario { max_datagram: 512, ..drift_scenario(0.1, 0.05, 10) });
        let r = out.repairs[1];
        assert_eq!((r.flows_added, r.flows_changed, r.flows_removed), (7, 5, 3), "{r:?}");
        assert!(out.stats[0].digests_sent >= 2 && out.stats[1].digests_received >= 2);
    }

    #[test]
    fn anti_entropy_makes_no_false_repair_while_changes_flow_through_a_bad_link() {
        // Digests cross the link while changes are in flight, lost,
        // duplicated and reordered: every one compared must match.
        let out = run(&Scenario {
            seed: 11,
            loss: 0.2,
            dup: 0.1,
            corrupt: 0.02,
            jitter_ms: 20,
            ops: 3000,
            flows: 300,
            op_period_ms: 30_000,
            anti_entropy: Duration::from_millis(500),
            ..Scenario::default()
        });
        for (side, r) in out.repairs.iter().enumerate() {
            assert!(r.digests_compared >= 20, "side {side}: {r:?} {:?}", out.stats[side]);
            assert_eq!(r.digests_differing, 0, "side {side}: {r:?}");
        }
        assert!(out.stats[0].digests_skipped + out.stats[1].digests_skipped > 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
        #[test]
        fn anti_entropy_never_repairs_what_did_not_drift(
            seed in proptest::num::u64::ANY,
            loss in 0u32..=40,
            dup in 0u32..=20,
            jitter in 0u64..30,
            rs in proptest::sample::select(vec![8usize, 64, 4096]),
            restarts in proptest::collection::vec((0u64..3000, 0usize..2), 0..2),
            partition in proptest::option::of((0u64..2000, 100u64..3000)),
            ops in 20usize..400,
        ) {
            let out = run(&Scenario {
                seed,
                loss: f64::from(loss) / 100.0,
                dup: f64::from(dup) / 100.0,
                jitter_ms: jitter,
                resend_queue: rs,
                restarts,
                partition: partition.map(|(a, len)| (a, a + len)),
                ops,
                anti_entropy: Duration::from_millis(300),
                ..Scenario::default()
            });
            for r in out.repairs {
                proptest::prop_assert_eq!(r.digests_differing, 0, "{:?}", r);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 160, ..Default::default() })]
        #[test]
        fn random_schedules_converge(
            seed in proptest::num::u64::ANY,
            loss in 0u32..=50,
            dup in 0u32..=20,
            corrupt in 0u32..=10,
            jitter in 0u64..30,
            rs in proptest::sample::select(vec![8usize, 64, 4096]),
            start in proptest::num::u32::ANY,
            restarts in proptest::collection::vec((0u64..3000, 0usize..2), 0..3),
            partition in proptest::option::of((0u64..2000, 100u64..5000)),
            forge in proptest::option::of((0u64..2500, 1u32..=u32::MAX)),
            ops in 20usize..400,
        ) {
            run(&Scenario {
                seed,
                loss: f64::from(loss) / 100.0,
                dup: f64::from(dup) / 100.0,
                corrupt: f64::from(corrupt) / 100.0,
                jitter_ms: jitter,
                resend_queue: rs,
                initial_seq: [start, start.wrapping_add(0x8000_0000)],
                restarts,
                partition: partition.map(|(a, len)| (a, a + len)),
                forge,
                ops,
                ..Scenario::default()
            });
        }
    }

    /// With a shared key (docs/SECURITY.md, "Threat model"), an
    /// attacker that replays recorded datagrams, duplicates, reorders,
    /// reflects and flips bits, and keeps going through the convergence
    /// check, must change neither view: `run` checks both views equal the
    /// peers' tables exactly and stay so for `IDLE_CHECK`, and no injected
    /// datagram may make a single change of a view (but a copy of one the
    /// link delivered before the session was known, which changed nothing
    /// then, as the link's own late duplicates may).
    fn native_attacked(sc: Scenario) -> Outcome {
        let out = run(&Scenario { auth: true, ..sc });
        assert_eq!(out.tainted_events, [0, 0], "{:?}", out.attack);
        assert!(out.attack.total() > 0);
        out
    }

    /// Replays of the live sessions only; those of earlier sessions and
    /// restarts are in `native_attacked_random_schedules_converge`.
    #[test]
    fn native_with_keys_converges_exactly_while_replays_keep_coming() {
        let out = native_attacked(Scenario {
            seed: 41,
            loss: 0.1,
            dup: 0.05,
            jitter_ms: 5,
            attack: Some(Attack { every_ms: 50, prior_runs: 0, ..Attack::default() }),
            ..Scenario::default()
        });
        assert!(out.attack.replayed + out.attack.reflected > 50, "{:?}", out.attack);
    }

    /// The conntrackd dialect authenticates nothing: forged HELLO, ALIVE
    /// and data messages, replays of this run and an earlier one,
    /// duplicates, reordered bursts and flipped bits, during the changes.
    /// The peer's stream must never be refused whole for longer than half
    /// the peer timeout plus the link's own gaps, and both views must end equal to
    /// the peers' tables exactly, leaving out the tainted keys: those
    /// whose last change in a view came from an injected datagram (a
    /// planted flow of 10.66.0.0/16, or a real flow set back to a recorded
    /// state), until a genuine message changes them again. Nothing sweeps
    /// a planted flow in this dialect (no BULK_END), so it stays in the
    /// view (docs/SECURITY.md).
    fn compat_attacked(sc: Scenario) -> Outcome {
        let out = run(&Scenario { dialect: Dialect::Conntrackd, ..sc });
        assert_not_silenced(&out);
        out
    }

    /// Random schedules per property: 64, or `PROPTEST_CASES`.
    fn sim_cases() -> u32 {
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
    }

    /// The first of the peer's messages refused half the peer timeout or
    /// more into a run of refusals makes the side follow the peer again:
    /// only the link's own losses can stretch a silence past that.
    fn assert_not_silenced(out: &Outcome) {
        assert_eq!(
            out.unhealed,
            [0, 0],
            "refused after half the peer timeout of refusals (silenced {:?}): {:?}\nA: {:?}\nB: {:?}",
            out.silenced,
            out.attack,
            out.stats[0],
            out.stats[1]
        );
    }

    fn compat_attack(forge_acks: bool) -> Option<Attack> {
        Some(Attack {
            every_ms: 40,
            until_ms: Some(3000),
            forge: true,
            forge_acks,
            ..Attack::default()
        })
    }

    #[test]
    fn compat_heals_within_peer_timeout_after_forgeries_and_replays() {
        let out = compat_attacked(Scenario {
            seed: 43,
            loss: 0.05,
            jitter_ms: 5,
            attack: compat_attack(false),
            ..Scenario::default()
        });
        let a = out.attack;
        assert!(a.forged_hello >= 5 && a.forged_plants > 5 && a.replayed > 5, "{a:?}");
        // Some injections were taken: the views were compared without them.
        let tainted = out.tainted_events[0] + out.tainted_events[1];
        assert!(
            tainted > 0 && out.tainted_keys.iter().sum::<usize>() > 0,
            "{:?}",
            out.tainted_keys
        );
    }

    #[test]
    fn compat_heals_after_forged_acks_too() {
        compat_attacked(Scenario {
            seed: 47,
            loss: 0.05,
            jitter_ms: 5,
            attack: compat_attack(true),
            ..Scenario::default()
        });
    }

    // ----- found by the attacker: each failed before its fix ------------

    #[test]
    fn native_replayed_or_reflected_hellos_do_not_interrupt_the_live_session() {
        // Replays every 5 ms on average, of this run's datagrams and of an
        // earlier run's (other session ids). A HELLO of a session other
        // than the tracked one used to send the live node back to its
        // handshake, so it was seldom synced and the pair never stayed
        // converged; now it is answered with a probe while the live
        // session goes on. Either source sufficed: an earlier run's HELLO
        // (with reflection off), or the node's own HELLO reflected back to
        // it (with no earlier run recorded).
        native_attacked(Scenario {
            seed: 4043174357,
            resend_queue: 8,
            initial_seq: [0, 0x8000_0000],
            ops: 20,
            attack: Some(Attack { every_ms: 5, ..Attack::default() }),
            ..Scenario::default()
        });
    }

    #[test]
    fn compat_forged_alive_ahead_does_not_cost_the_peer_a_message() {
        // One forged CTL ALIVE at seq 1015 to side 1 while side 0's next
        // seq is 1003: side 1 expects 1016 and NACKs [1003, 1014]; side 0
        // takes the NACK past its next seq as "the peer tracks seqs we
        // never sent". It used to jump to 1015 only, so its next flow
        // message (1015) was dropped as late by side 1, then acknowledged
        // by its ACK [1015, 1018]: the flow never reached side 1. A NACK
        // now moves it past the seq after the range, which the peer took.
        compat_attacked(Scenario {
            seed: 35,
            ops: 10,
            attack: Some(Attack {
                every_ms: 100,
                until_ms: Some(100),
                prior_runs: 0,
                forge: true,
                ..Attack::default()
            }),
            ..Scenario::default()
        });
    }

    #[test]
    fn native_a_late_first_copy_of_a_datagram_is_the_links_duplicate() {
        // A datagram of the peer's live session reached side 0 before its
        // handshake and was refused as of an unknown session; a copy the
        // attacker replayed later was taken in sequence. Accepting it is
        // right (the link duplicates too); the harness used to count it as
        // an injection's change.
        native_attacked(Scenario {
            seed: 12325538264451382983,
            loss: 0.12,
            jitter_ms: 18,
            resend_queue: 64,
            initial_seq: [0, 0x8000_0000],
            ops: 51,
            attack: Some(Attack { every_ms: 39, ..Attack::default() }),
            ..Scenario::default()
        });
    }

    #[test]
    fn native_heavy_loss_with_endless_replays_stays_converged() {
        // Under 23% loss one side lost every keepalive of a peer timeout
        // and shook hands again, views intact; the harness took that for a
        // divergence. The idle check now starts over then.
        native_attacked(Scenario {
            seed: 12395705416339070401,
            loss: 0.23,
            dup: 0.03,
            jitter_ms: 12,
            ops: 197,
            resend_queue: 8,
            initial_seq: [2569035833, 421552185],
            attack: Some(Attack {
                every_ms: 38,
                until_ms: None,
                prior_runs: 1,
                ..Attack::default()
            }),
            ..Scenario::default()
        });
    }

    #[test]
    fn compat_replayed_hello_heals_within_peer_timeout() {
        // Replays of an earlier run (HELLOs among them), duplicates,
        // reordered bursts and flipped bits. A HELLO re-bases tracking;
        // healing waits half the peer timeout of refusals, then both
        // tables go again through 25% loss and an 8-entry resend queue.
        let out = compat_attacked(Scenario {
            seed: 9015392395150051533,
            loss: 0.25,
            jitter_ms: 11,
            resend_queue: 8,
            initial_seq: [2954601576, 2954601576u32.wrapping_add(0x8000_0000)],
            ops: 107,
            attack: Some(Attack { every_ms: 9, until_ms: Some(633), ..Attack::default() }),
            ..Scenario::default()
        });
        assert!(out.stats[0].rx_rebases + out.stats[1].rx_rebases >= 1, "{:?}", out.stats);
    }

    #[test]
    fn compat_forged_acks_release_nothing_for_good() {
        // A forged NACK ahead of side 1's next seq made it jump to the seq
        // after the range, which a planted pair had taken at side 0: its
        // next message (a destroy) was dropped there as old, then
        // acknowledged. A jump now leaves a margin. A forged ACK released
        // an update side 0 never got; its NACK of that seq now brings the
        // table again (nacks_of_acked; the unit test
        // `compat_a_nack_of_acknowledged_messages_*` pins that rule).
        compat_attacked(Scenario {
            seed: 2043999785363298305,
            loss: 0.21,
            jitter_ms: 3,
            resend_queue: 4096,
            initial_seq: [2864465420, 2864465420u32.wrapping_add(0x8000_0000)],
            ops: 191,
            attack: Some(Attack {
                every_ms: 58,
                until_ms: Some(1364),
                forge: true,
                forge_acks: true,
                ..Attack::default()
            }),
            ..Scenario::default()
        });
    }

    #[test]
    fn compat_a_forged_message_displaces_at_most_what_it_overlaps() {
        // What stays open in this dialect (docs/SECURITY.md): forged
        // messages took seqs side 1 was about to use at side 0, so the
        // genuine ones were dropped there as already received, a flow's
        // destroy and another's creation among them. Both sides still
        // follow each other, and the cost is bounded by the forgeries.
        let out = run(&Scenario {
            exact: false,
            dialect: Dialect::Conntrackd,
            seed: 10222905921817624273,
            loss: 0.26,
            dup: 0.07,
            jitter_ms: 9,
            resend_queue: 4096,
            initial_seq: [59297805, 2206781453],
            ops: 127,
            attack: Some(Attack {
                every_ms: 133,
                until_ms: Some(1267),
                forge: true,
                ..Attack::default()
            }),
            ..Scenario::default()
        });
        assert_forgeries_cost_little(&out);
        assert!(out.mismatches.iter().sum::<usize>() > 0, "{:?}", out.mismatches);
    }

    /// Forged or modified datagrams in the conntrackd dialect: the stream
    /// is never refused for longer than half the peer timeout (the link's
    /// gaps aside), both sides end
    /// synced, and each such datagram costs at most one genuine change.
    fn assert_forgeries_cost_little(out: &Outcome) {
        assert_not_silenced(out);
        assert_eq!(out.synced, [true, true], "{:?}", out.attack);
        let a = out.attack;
        let forged =
            a.forged_hello + a.forged_alive + 2 * a.forged_plants + a.forged_acks + a.flipped;
        let off = out.mismatches.iter().sum::<usize>() as u64;
        assert!(
            off <= forged,
            "{off} keys off ({:?}) after {forged} forged messages: {a:?}",
            out.mismatches
        );
    }

    /// A random lossy link and change schedule for the attacked properties.
    #[derive(Clone, Debug)]
    struct Schedule {
        seed: u64,
        loss: u32,
        dup: u32,
        jitter: u64,
        rs: usize,
        start: u32,
        every: u64,
        ops: usize,
    }

    impl Schedule {
        fn scenario(&self, attack: Attack) -> Scenario {
            Scenario {
                seed: self.seed,
                loss: f64::from(self.loss) / 100.0,
                dup: f64::from(self.dup) / 100.0,
                jitter_ms: self.jitter,
                resend_queue: self.rs,
                initial_seq: [self.start, self.start.wrapping_add(0x8000_0000)],
                ops: self.ops,
                attack: Some(Attack { every_ms: self.every, ..attack }),
                ..Scenario::default()
            }
        }
    }

    proptest::prop_compose! {
        fn schedule()(
            seed in proptest::num::u64::ANY,
            loss in 0u32..=30,
            dup in 0u32..=10,
            jitter in 0u64..20,
            rs in proptest::sample::select(vec![8usize, 64, 4096]),
            start in proptest::num::u32::ANY,
            every in 5u64..200,
            ops in 20usize..300,
        ) -> Schedule {
            Schedule { seed, loss, dup, jitter, rs, start, every, ops }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: sim_cases(), ..Default::default() })]
        #[test]
        fn native_attacked_random_schedules_converge(
            s in schedule(),
            restarts in proptest::collection::vec((0u64..3000, 0usize..2), 0..3),
        ) {
            native_attacked(Scenario { restarts, ..s.scenario(Attack::default()) });
        }

        #[test]
        fn compat_replayed_random_schedules_converge_exactly(s in schedule(), until in 0u64..4000) {
            compat_attacked(s.scenario(Attack { until_ms: Some(until), flip: false, ..Attack::default() }));
        }

        #[test]
        fn compat_forged_random_schedules_resume_within_peer_timeout(
            s in schedule(),
            until in 0u64..4000,
            forge in proptest::bool::ANY,
            forge_acks in proptest::bool::ANY,
        ) {
            let attack = Attack { until_ms: Some(until), forge, forge_acks, ..Attack::default() };
            let out = run(&Scenario {
                exact: false,
                dialect: Dialect::Conntrackd,
                ..s.scenario(attack)
            });
            assert_forgeries_cost_little(&out);
        }
    }
}
