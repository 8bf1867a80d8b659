//! An attacker on the simulated sync link (docs/SECURITY.md, "Threat
//! model"). It sees every datagram delivered, both ways, in every session:
//! the live ones and those of earlier runs of the pair (`prior_runs`,
//! with other session ids and sequence numbers). At seeded random times it
//! sends, with the peer's address:
//! - replays of any recorded datagram, to the side it was meant for, or
//!   reflected back to its sender (one in ten); half of them among the
//!   small ones (at most [`SMALL`] bytes: handshakes, ACKs, NACKs,
//!   keepalives), as an attacker that cannot read them would guess;
//! - duplicates of the latest datagrams to a side;
//! - reordered bursts: the latest two to six datagrams to a side, shuffled;
//! - copies of recorded datagrams with one to three bits flipped;
//! - in the conntrackd dialect only, which authenticates nothing, forged
//!   messages: a CTL with HELLO and/or ALIVE (or HELLO_BACK) at a sequence
//!   number near the one the target expects or anywhere; two CT_NEW at Y
//!   and Y + 1 that plant a flow of [`PLANTED_NET`]; with `forge_acks`,
//!   also (or only) ACK and NACK ranges over what the target recently sent.
//!
//! It records at delivery, so a replay never arrives before its original:
//! whatever a replay changes, it changes after the genuine copy did.

use std::time::Duration;

use super::Rng;
use crate::flow::{Flow, proto};
use crate::ftfw::Dialect;
use crate::wire::MessageRef;
use crate::wire::conntrackd;

/// What the attacker does, and when.
#[derive(Clone, Debug)]
pub(crate) struct Attack {
    /// Mean time between two injections (each is one to six datagrams).
    pub every_ms: u64,
    /// No injection after this time (ms); `None`: until the run ends,
    /// through the convergence check.
    pub until_ms: Option<u64>,
    /// Earlier runs of the pair recorded before this one.
    pub prior_runs: usize,
    /// conntrackd dialect: forge HELLO, ALIVE and data messages.
    pub forge: bool,
    /// conntrackd dialect: forge ACK and NACK (with `forge` or alone).
    pub forge_acks: bool,
    /// Flip bits in copies (in the conntrackd dialect, which has no
    /// checksum, that forges a message too); else replay instead.
    pub flip: bool,
}

impl Default for Attack {
    fn default() -> Attack {
        Attack {
            every_ms: 50,
            until_ms: None,
            prior_runs: 1,
            forge: false,
            forge_acks: false,
            flip: true,
        }
    }
}

/// Forged flows come from this /16 (10.66.0.0), which no side's table
/// holds.
pub(crate) const PLANTED_NET: [u8; 2] = [10, 66];

/// Datagrams this short are taken for control datagrams.
pub(crate) const SMALL: usize = 96;

/// A recorded datagram and the side it was delivered to.
#[derive(Clone)]
pub(crate) struct Recorded {
    pub to: usize,
    pub bytes: Vec<u8>,
}

/// What was sent, by kind (datagrams).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AttackStats {
    pub replayed: u64,
    pub reflected: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub flipped: u64,
    pub forged_hello: u64,
    pub forged_alive: u64,
    pub forged_plants: u64,
    pub forged_acks: u64,
    /// Virtual time of the last injection.
    pub last_at: Option<Duration>,
}

impl AttackStats {
    /// Every datagram injected.
    pub fn total(&self) -> u64 {
        self.replayed
            + self.reflected
            + self.duplicated
            + self.reordered
            + self.flipped
            + self.forged_hello
            + self.forged_alive
            + self.forged_plants
            + self.forged_acks
    }
}

/// The attacker of one run.
pub(crate) struct Attacker {
    cfg: Attack,
    dialect: Dialect,
    rng: Rng,
    recorded: Vec<Recorded>,
    /// Indices in `recorded` of the live run's datagrams, per target side.
    live: [Vec<usize>; 2],
    next_at: Duration,
    pub stats: AttackStats,
}

impl Attacker {
    /// An attacker that already holds `prior` (earlier runs' datagrams).
    pub fn new(cfg: Attack, dialect: Dialect, seed: u64, prior: Vec<Recorded>) -> Attacker {
        let mut rng = Rng::new(seed ^ 0xa77a_c4e5);
        let next_at = Duration::from_millis(1 + rng.below(2 * cfg.every_ms));
        Attacker {
            cfg,
            dialect,
            rng,
            recorded: prior,
            live: [Vec::new(), Vec::new()],
            next_at,
            stats: AttackStats::default(),
        }
    }

    /// A datagram of the live run was delivered to side `to`.
    pub fn record(&mut self, to: usize, bytes: &[u8]) {
        self.live[to].push(self.recorded.len());
        self.recorded.push(Recorded { to, bytes: bytes.to_vec() });
    }

    /// When the next injection is due; `None` once the attack is over.
    pub fn due(&self) -> Option<Duration> {
        let over = self.cfg.until_ms.is_some_and(|u| self.next_at > Duration::from_millis(u));
        (!over).then_some(self.next_at)
    }

    /// True when the attack lasts until the run ends.
    pub fn endless(&self) -> bool {
        self.cfg.until_ms.is_none()
    }

    /// The datagrams of the injection due at `now`, each with its target.
    pub fn inject(&mut self, now: Duration) -> Vec<Recorded> {
        self.next_at = now + Duration::from_millis(1 + self.rng.below(2 * self.cfg.every_ms));
        let to = self.rng.below(2) as usize;
        let compat = self.dialect == Dialect::Conntrackd;
        let kinds = match (compat, self.cfg.forge, self.cfg.forge_acks) {
            (true, true, _) => 8,
            (true, false, true) => 6,
            _ => 5,
        };
        let out = match self.rng.below(kinds) {
            0 | 1 => self.replay(),
            2 => self.duplicate(to),
            3 => self.reorder(to),
            4 if self.cfg.flip => self.flip(),
            4 => self.replay(),
            5 if !self.cfg.forge => self.forge_ack(to),
            5 => self.forge_ctl(to),
            6 => self.plant(to),
            _ if self.cfg.forge_acks => self.forge_ack(to),
            _ => self.forge_ctl(to),
        };
        if !out.is_empty() {
            self.stats.last_at = Some(now);
        }
        out
    }

    fn pick(&mut self) -> Option<Recorded> {
        let n = self.recorded.len() as u64;
        if n > 0 && self.rng.chance(0.5) {
            // A few tries at a small one.
            for _ in 0..16 {
                let r = &self.recorded[self.rng.below(n) as usize];
                if r.bytes.len() <= SMALL {
                    return Some(r.clone());
                }
            }
        }
        (n > 0).then(|| self.recorded[self.rng.below(n) as usize].clone())
    }

    fn replay(&mut self) -> Vec<Recorded> {
        let Some(mut r) = self.pick() else { return Vec::new() };
        if self.rng.chance(0.1) {
            r.to = 1 - r.to;
            self.stats.reflected += 1;
        } else {
            self.stats.replayed += 1;
        }
        vec![r]
    }

    /// The last `n` live datagrams delivered to `to`.
    fn latest(&self, to: usize, n: usize) -> Vec<Recorded> {
        let live = &self.live[to];
        live[live.len().saturating_sub(n)..].iter().map(|&i| self.recorded[i].clone()).collect()
    }

    fn duplicate(&mut self, to: usize) -> Vec<Recorded> {
        let copies = 1 + self.rng.below(3) as usize;
        let Some(last) = self.latest(to, 1).pop() else { return Vec::new() };
        self.stats.duplicated += copies as u64;
        vec![last; copies]
    }

    fn reorder(&mut self, to: usize) -> Vec<Recorded> {
        let n = 2 + self.rng.below(5) as usize;
        let mut burst = self.latest(to, n);
        for i in (1..burst.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            burst.swap(i, j);
        }
        self.stats.reordered += burst.len() as u64;
        burst
    }

    fn flip(&mut self) -> Vec<Recorded> {
        let Some(mut r) = self.pick() else { return Vec::new() };
        for _ in 0..1 + self.rng.below(3) {
            let bit = self.rng.below(r.bytes.len() as u64 * 8) as usize;
            r.bytes[bit / 8] ^= 1 << (bit % 8);
        }
        self.stats.flipped += 1;
        vec![r]
    }

    /// The seq of the last message delivered to `to` in the live run.
    fn last_seq_to(&self, to: usize) -> Option<u32> {
        let last = self.latest(to, 1).pop()?;
        let mut msgs = Vec::new();
        let hdr = conntrackd::decode(&last.bytes, &mut msgs).ok()?;
        Some(hdr.seq.wrapping_add(msgs.len() as u32 - 1))
    }

    /// A seq the target may accept (just after what it last got), or any.
    fn target_seq(&mut self, to: usize) -> u32 {
        match self.last_seq_to(to) {
            Some(s) if self.rng.chance(0.6) => {
                s.wrapping_add(self.rng.below(24) as u32).wrapping_sub(3)
            }
            _ => self.rng.next_u64() as u32,
        }
    }

    fn forge_ctl(&mut self, to: usize) -> Vec<Recorded> {
        use conntrackd::flags::{ALIVE, HELLO, HELLO_BACK};
        let seq = self.target_seq(to);
        let flags = [HELLO | ALIVE, HELLO, ALIVE, HELLO_BACK | ALIVE][self.rng.below(4) as usize];
        let mut buf = [0u8; conntrackd::HEADER_LEN];
        let Ok(n) = conntrackd::emit_message(&MessageRef::Alive, seq, &mut buf) else {
            return Vec::new();
        };
        buf[1] = flags;
        if flags & HELLO != 0 {
            self.stats.forged_hello += 1;
        } else {
            self.stats.forged_alive += 1;
        }
        vec![Recorded { to, bytes: buf[..n].to_vec() }]
    }

    fn plant(&mut self, to: usize) -> Vec<Recorded> {
        let seq = self.target_seq(to);
        let port = 1 + self.rng.below(60_000) as u16;
        let [a, b] = PLANTED_NET;
        let host = self.rng.below(250) as u8;
        let flow =
            Flow::new_v4(proto::UDP, [a, b, 0, host].into(), [10, 99, 0, 1].into(), port, 53);
        // Y and Y + 1, as two datagrams (conntrackd sends one message per
        // datagram under load too).
        let mut out = Vec::new();
        for s in [seq, seq.wrapping_add(1)] {
            let mut buf = vec![0u8; 512];
            if let Ok(n) = conntrackd::emit_message(&MessageRef::FlowNew(&flow), s, &mut buf) {
                buf.truncate(n);
                out.push(Recorded { to, bytes: buf });
            }
        }
        self.stats.forged_plants += out.len() as u64;
        out
    }

    fn forge_ack(&mut self, to: usize) -> Vec<Recorded> {
        // The ranges cover what `to` recently sent; the message's own seq is
        // one `to` may accept.
        let Some(sent) = self.last_seq_to(1 - to) else { return Vec::new() };
        let from = sent.wrapping_sub(self.rng.below(40) as u32);
        let range = (from, from.wrapping_add(self.rng.below(40) as u32));
        let msg = if self.rng.chance(0.5) {
            MessageRef::Ack { from: range.0, to: range.1 }
        } else {
            MessageRef::Nack { from: range.0, to: range.1 }
        };
        let seq = self.target_seq(to);
        let mut buf = [0u8; conntrackd::ACK_HEADER_LEN];
        let Ok(n) = conntrackd::emit_message(&msg, seq, &mut buf) else { return Vec::new() };
        self.stats.forged_acks += 1;
        vec![Recorded { to, bytes: buf[..n].to_vec() }]
    }
}
