//! Expectations: the related connections a conntrack helper (ftp, sip,
//! ...) told the kernel to let in, and the small caches that hold them
//! beside the flows.
//!
//! An expectation belongs to a master flow: the kernel refuses to create
//! one whose master it does not have (ENOENT) or whose master has no
//! helper attached (EOPNOTSUPP). A commit therefore writes the flows first
//! and then only the expectations whose master the table now holds.
//!
//! They are few (one per FTP data transfer announced, gone once used or
//! after the helper's timeout, five minutes for ftp), so a plain map is
//! enough; the flow caches' dense layout is not needed here.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use crate::flow::{FlowKey, proto_name};

/// `NF_CT_EXPECT_*` flag bits.
pub mod flag {
    /// The expectation survives its first match.
    pub const PERMANENT: u32 = 1;
    /// Not yet active (SIP).
    pub const INACTIVE: u32 = 2;
    /// Created from user space; the kernel strips it on create.
    pub const USERSPACE: u32 = 4;
}

/// One expectation, as ctnetlink reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    /// The master flow's original tuple and zone: its key in the flow
    /// caches.
    pub master: FlowKey,
    /// The connection expected. Its `zone` is the expectation's zone (the
    /// master's); fields the mask leaves out are zero.
    pub tuple: FlowKey,
    /// Which bits of the expected source address must match (the kernel
    /// masks only the source side: destination, protocol are exact).
    pub mask_src: IpAddr,
    /// Which bits of the expected source port must match.
    pub mask_sport: u16,
    /// Seconds left.
    pub timeout: u32,
    /// `NF_CT_EXPECT_*` bits, see [`flag`].
    pub flags: u32,
    /// The helper's expectation class (SIP has several, ftp one).
    pub class: u32,
    /// The master's helper (`CTA_EXPECT_HELP_NAME`), empty if none.
    pub helper: Box<str>,
    /// Where the expected connection is NATed to, when the helper mangled
    /// the announcement (`CTA_EXPECT_NAT`).
    pub nat: Option<ExpNat>,
    /// The function the kernel runs on the expected connection
    /// (`CTA_EXPECT_FN`, e.g. `nat-follow-master`).
    pub expectfn: Option<Box<str>>,
}

/// `CTA_EXPECT_NAT`: the direction and the address and port the helper
/// replaced in the announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExpNat {
    pub dir: u32,
    pub addr: IpAddr,
    pub port: u16,
}

impl Expectation {
    /// What identifies an expectation in the kernel and in the caches: the
    /// expected tuple and its zone.
    pub fn key(&self) -> FlowKey {
        self.tuple
    }

    /// True for an IPv6 expectation.
    pub fn is_ipv6(&self) -> bool {
        self.tuple.is_ipv6()
    }

    /// The nfnetlink family byte of this expectation.
    pub fn family(&self) -> u8 {
        if self.is_ipv6() { libc::AF_INET6 as u8 } else { libc::AF_INET as u8 }
    }
}

/// `conntrack -L expect`'s one-line format: `300 proto=6 src=... dst=...
/// sport=0 dport=... mask-src=... mask-dst=... sport=... dport=...
/// master-src=... master-dst=... sport=... dport=... class=0 helper=ftp`.
impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.tuple;
        let m = &self.master;
        let mask_dst: IpAddr = if t.is_ipv6() {
            IpAddr::V6(std::net::Ipv6Addr::from(u128::MAX))
        } else {
            IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
        };
        write!(
            f,
            "{} proto={} src={} dst={} sport={} dport={} mask-src={} mask-dst={mask_dst} \
             sport={} dport=65535 master-src={} master-dst={} sport={} dport={}",
            self.timeout,
            t.l4proto,
            t.src,
            t.dst,
            t.l4[0],
            t.l4[1],
            self.mask_src,
            self.mask_sport,
            m.src,
            m.dst,
            m.l4[0],
            m.l4[1],
        )?;
        if self.flags & flag::PERMANENT != 0 {
            f.write_str(" PERMANENT")?;
        }
        if self.flags & flag::INACTIVE != 0 {
            f.write_str(" INACTIVE")?;
        }
        write!(f, " class={}", self.class)?;
        if t.zone != 0 {
            write!(f, " zone={}", t.zone)?;
        }
        if !self.helper.is_empty() {
            write!(f, " helper={}", self.helper)?;
        }
        if let Some(nat) = self.nat {
            write!(f, " nat-dir={} nat-src={} nat-sport={}", nat.dir, nat.addr, nat.port)?;
        }
        if let Some(name) = &self.expectfn {
            write!(f, " fn={name}")?;
        }
        write!(f, " ({})", proto_name(t.l4proto))
    }
}

/// The JSON form for `-i exp --json`: one object per expectation.
impl serde::Serialize for Expectation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let key = |k: &FlowKey| {
            serde_json::json!({
                "proto": k.l4proto, "src": k.src.to_string(), "dst": k.dst.to_string(),
                "sport": k.l4[0], "dport": k.l4[1], "zone": k.zone,
            })
        };
        let mut m = serializer.serialize_map(None)?;
        m.serialize_entry("tuple", &key(&self.tuple))?;
        m.serialize_entry("master", &key(&self.master))?;
        m.serialize_entry("mask_src", &self.mask_src.to_string())?;
        m.serialize_entry("mask_sport", &self.mask_sport)?;
        m.serialize_entry("timeout", &self.timeout)?;
        m.serialize_entry("flags", &self.flags)?;
        m.serialize_entry("class", &self.class)?;
        m.serialize_entry("helper", &*self.helper)?;
        if let Some(nat) = self.nat {
            m.serialize_entry(
                "nat",
                &serde_json::json!({"dir": nat.dir, "addr": nat.addr.to_string(), "port": nat.port}),
            )?;
        }
        if let Some(name) = &self.expectfn {
            m.serialize_entry("fn", &**name)?;
        }
        m.end()
    }
}

/// Which expectations are synced (`sync.expectations`), by their helper.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ExpectSync {
    /// None (the default, as conntrackd's `ExpectationSync off`).
    #[default]
    Off,
    /// Every helper's.
    All,
    /// Only these helpers' (kernel helper names: `ftp`, `sip`, ...).
    Helpers(Vec<String>),
}

impl ExpectSync {
    /// True when anything is synced: the event socket then subscribes to
    /// expectation events.
    pub fn enabled(&self) -> bool {
        *self != ExpectSync::Off
    }

    /// True when expectations of `helper` are synced.
    pub fn accepts(&self, helper: &str) -> bool {
        match self {
            ExpectSync::Off => false,
            ExpectSync::All => true,
            ExpectSync::Helpers(names) => names.iter().any(|n| n.eq_ignore_ascii_case(helper)),
        }
    }
}

/// Counters of one expectation cache, as `-s` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExpCacheStats {
    pub active: u64,
    pub created: u64,
    pub updated: u64,
    pub destroyed: u64,
    /// Inserts refused because the cache was full.
    pub failed_full: u64,
}

/// One cached expectation and the stamp of the change that wrote it (same
/// meaning as [`crate::cache::Entry::stamp`]).
#[derive(Clone, Debug)]
pub struct ExpEntry {
    pub exp: Expectation,
    pub stamp: u64,
}

/// A bounded map from expected tuple to expectation.
pub struct ExpCache {
    map: HashMap<FlowKey, ExpEntry>,
    limit: usize,
    stats: ExpCacheStats,
}

impl ExpCache {
    /// An empty cache holding at most `limit` expectations.
    pub fn new(limit: usize) -> ExpCache {
        ExpCache { map: HashMap::new(), limit, stats: ExpCacheStats::default() }
    }

    /// Number held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Counters with `active` filled in.
    pub fn stats(&self) -> ExpCacheStats {
        ExpCacheStats { active: self.map.len() as u64, ..self.stats }
    }

    /// The expectation for this expected tuple.
    pub fn get(&self, key: &FlowKey) -> Option<&ExpEntry> {
        self.map.get(key)
    }

    /// Insert or replace; returns false when the cache is full.
    pub fn upsert(&mut self, exp: Expectation, stamp: u64) -> bool {
        let key = exp.key();
        if let Some(entry) = self.map.get_mut(&key) {
            *entry = ExpEntry { exp, stamp };
            self.stats.updated += 1;
            return true;
        }
        if self.map.len() >= self.limit {
            self.stats.failed_full += 1;
            return false;
        }
        self.map.insert(key, ExpEntry { exp, stamp });
        self.stats.created += 1;
        true
    }

    /// Remove one; returns it if it was there.
    pub fn remove(&mut self, key: &FlowKey) -> Option<Expectation> {
        let e = self.map.remove(key)?;
        self.stats.destroyed += 1;
        Some(e.exp)
    }

    /// Remove every entry for which `keep` is false; returns how many.
    pub fn retain(&mut self, mut keep: impl FnMut(&ExpEntry) -> bool) -> usize {
        let before = self.map.len();
        self.map.retain(|_, e| keep(e));
        let gone = before - self.map.len();
        self.stats.destroyed += gone as u64;
        gone
    }

    /// Remove everything.
    pub fn clear(&mut self) {
        self.stats.destroyed += self.map.len() as u64;
        self.map.clear();
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &ExpEntry> {
        self.map.values()
    }
}

/// The `-i expect` / `-e expect` listing: one line (or JSON object) per
/// expectation.
pub fn dump(cache: &ExpCache, json: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for e in cache.iter() {
        if json {
            let _ = writeln!(out, "{}", serde_json::to_string(&e.exp).unwrap_or_default());
        } else {
            let _ = writeln!(out, "{}", e.exp);
        }
    }
    out
}

/// Daemon-side counters of expectation sync, as `-s` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExpStats {
    /// Expectation events read from the kernel.
    pub events: u64,
    /// Events and dumped entries of helpers not listed in
    /// `sync.expectations`.
    pub ignored_helper: u64,
    /// Expectations created in the kernel by commits.
    pub committed: u64,
    /// Expectations a commit found in the kernel already.
    pub commit_existing: u64,
    /// Expectations a commit left out because their master flow is
    /// neither in the external cache nor in this kernel.
    pub commit_no_master: u64,
    /// Expectations the kernel refused on commit.
    pub commit_failed: u64,
}

/// Everything the daemon keeps about expectations: which to sync, the
/// internal (our kernel's) and external (the peer's) caches, counters.
/// The reactor calls it at the same points as the flow caches.
pub struct ExpState {
    pub sync: ExpectSync,
    pub internal: ExpCache,
    pub external: ExpCache,
    pub stats: ExpStats,
    stamp: u64,
}

/// What [`ExpState::local`] asks to send to the peer.
pub enum ExpChange {
    /// Send this state.
    Upsert(Box<Expectation>),
    /// Tell the peer it is gone.
    Destroy(Box<Expectation>),
}

/// What a kernel write of expectations did, for [`ExpState::commit`].
#[derive(Debug, Default)]
pub struct ExpWritten {
    pub created: usize,
    pub updated: usize,
    /// Refused by the kernel: expected tuple and errno.
    pub failed: Vec<(FlowKey, i32)>,
}

/// What a commit of the external expectations did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpCommitReport {
    pub created: usize,
    pub existing: usize,
    /// Left out: no master flow to attach them to.
    pub no_master: usize,
    /// Refused by the kernel: expected tuple and errno.
    pub failed: Vec<(FlowKey, i32)>,
}

impl ExpState {
    /// Empty caches of at most `limit` expectations each.
    pub fn new(sync: ExpectSync, limit: usize) -> ExpState {
        ExpState {
            sync,
            internal: ExpCache::new(limit),
            external: ExpCache::new(limit),
            stats: ExpStats::default(),
            stamp: 0,
        }
    }

    /// A kernel event: `Some` when the peer must hear of it.
    pub fn local(&mut self, exp: Expectation, destroyed: bool) -> Option<ExpChange> {
        self.stats.events += 1;
        if !self.sync.accepts(&exp.helper) {
            self.stats.ignored_helper += 1;
            return None;
        }
        let key = exp.key();
        if destroyed {
            return self.internal.remove(&key).map(|gone| ExpChange::Destroy(Box::new(gone)));
        }
        self.stamp += 1;
        self.internal.upsert(exp.clone(), self.stamp).then(|| ExpChange::Upsert(Box::new(exp)))
    }

    /// Reconcile the internal cache with a kernel dump; returns the
    /// changes for the peer (new ones, and destroys of vanished ones).
    pub fn reconcile(&mut self, dumped: Vec<Expectation>) -> Vec<ExpChange> {
        let floor = self.stamp + 1;
        let mut changes = Vec::new();
        for exp in dumped {
            if !self.sync.accepts(&exp.helper) {
                self.stats.ignored_helper += 1;
                continue;
            }
            self.stamp += 1;
            let known = self.internal.get(&exp.key()).map(|e| e.exp.clone());
            // The timeout ticks down between dumps: not a change worth sending.
            let changed = known.is_none_or(|k| Expectation { timeout: exp.timeout, ..k } != exp);
            if self.internal.upsert(exp.clone(), self.stamp) && changed {
                changes.push(ExpChange::Upsert(Box::new(exp)));
            }
        }
        self.internal.retain(|e| {
            let keep = e.stamp >= floor;
            if !keep {
                changes.push(ExpChange::Destroy(Box::new(e.exp.clone())));
            }
            keep
        });
        changes
    }

    /// The peer's expectation, stamped like the flows of the external cache.
    pub fn peer_upsert(&mut self, exp: Expectation, stamp: u64) {
        self.external.upsert(exp, stamp);
    }

    /// The peer's expectation is gone.
    pub fn peer_destroy(&mut self, key: &FlowKey) {
        self.external.remove(key);
    }

    /// End of the peer's bulk: drop what it did not send again.
    pub fn peer_bulk_end(&mut self, floor: u64) -> usize {
        self.external.retain(|e| e.stamp >= floor)
    }

    /// The external expectations whose master is present (`has_master`),
    /// and how many were left out for want of one. Commit them after the
    /// flows.
    pub fn committable(&self, has_master: impl Fn(&FlowKey) -> bool) -> (Vec<&Expectation>, usize) {
        let mut ready = Vec::new();
        let mut missing = 0;
        for e in self.external.iter() {
            if has_master(&e.exp.master) {
                ready.push(&e.exp);
            } else {
                missing += 1;
            }
        }
        (ready, missing)
    }

    /// Commit the external expectations whose master `has_master` says the
    /// kernel holds (call it after the flows' commit) with `write`, which
    /// puts them in the kernel and says what it created, updated and
    /// refused; returns the line `-c` prints, or the kernel's error.
    pub fn commit(
        &mut self,
        has_master: impl Fn(&FlowKey) -> bool,
        write: impl FnOnce(Vec<&Expectation>) -> std::io::Result<ExpWritten>,
    ) -> std::io::Result<String> {
        let (ready, no_master) = self.committable(has_master);
        let done = write(ready)?;
        let report = ExpCommitReport {
            created: done.created,
            existing: done.updated,
            no_master,
            failed: done.failed,
        };
        self.count_commit(&report);
        for (key, errno) in report.failed.iter().take(5) {
            log::warn!(
                "commit of the expectation {key} failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            );
        }
        let line = format!(
            "committed {} expectations: {} created, {} existed, {} failed, {} skipped without their master flow",
            report.created + report.existing + report.failed.len(),
            report.created,
            report.existing,
            report.failed.len(),
            report.no_master
        );
        log::info!("{line}");
        Ok(line)
    }

    /// Count a commit's outcome.
    pub fn count_commit(&mut self, report: &ExpCommitReport) {
        self.stats.committed += report.created as u64;
        self.stats.commit_existing += report.existing as u64;
        self.stats.commit_no_master += report.no_master as u64;
        self.stats.commit_failed += report.failed.len() as u64;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::flow::proto;

    /// An FTP passive-mode expectation: client 10.0.1.2 may open a data
    /// connection to server 10.0.2.2:50000, any source port.
    pub(crate) fn ftp_pasv() -> Expectation {
        let v4 = |a: [u8; 4]| IpAddr::from(a);
        Expectation {
            master: FlowKey {
                src: v4([10, 0, 1, 2]),
                dst: v4([10, 0, 2, 2]),
                l4proto: proto::TCP,
                l4: [40000, 21],
                zone: 0,
            },
            tuple: FlowKey {
                src: v4([10, 0, 1, 2]),
                dst: v4([10, 0, 2, 2]),
                l4proto: proto::TCP,
                l4: [0, 50000],
                zone: 0,
            },
            mask_src: v4([255, 255, 255, 255]),
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
    fn helper_selection() {
        assert!(!ExpectSync::Off.accepts("ftp"));
        assert!(ExpectSync::All.accepts("sip"));
        let some = ExpectSync::Helpers(vec!["ftp".into()]);
        assert!(some.accepts("ftp") && !some.accepts("sip") && some.enabled());
        assert!(!ExpectSync::Off.enabled());
    }

    #[test]
    fn cache_upsert_remove_retain_and_limit() {
        let mut c = ExpCache::new(2);
        let a = ftp_pasv();
        let mut b = ftp_pasv();
        b.tuple.l4[1] = 50001;
        let mut d = ftp_pasv();
        d.tuple.l4[1] = 50002;
        assert!(c.upsert(a.clone(), 1));
        assert!(c.upsert(a.clone(), 2));
        assert!(c.upsert(b.clone(), 3));
        assert!(!c.upsert(d, 4));
        assert_eq!(
            c.stats(),
            ExpCacheStats { active: 2, created: 2, updated: 1, destroyed: 0, failed_full: 1 }
        );
        assert_eq!(c.get(&a.key()).map(|e| e.stamp), Some(2));
        assert_eq!(c.retain(|e| e.stamp >= 3), 1);
        assert_eq!(c.remove(&b.key()), Some(b));
        assert!(c.is_empty());
    }

    #[test]
    fn local_events_follow_the_helper_list_and_reconcile_finds_changes() {
        let mut st = ExpState::new(ExpectSync::Helpers(vec!["ftp".into()]), 100);
        let mut sip = ftp_pasv();
        sip.helper = "sip".into();
        assert!(st.local(sip, false).is_none());
        assert!(matches!(st.local(ftp_pasv(), false), Some(ExpChange::Upsert(_))));
        // Only the timeout moved: nothing to send; a vanished one is destroyed.
        let mut older = ftp_pasv();
        older.timeout = 200;
        assert!(st.reconcile(vec![older]).is_empty());
        let changes = st.reconcile(Vec::new());
        assert!(
            matches!(changes.as_slice(), [ExpChange::Destroy(e)] if e.key() == ftp_pasv().key())
        );
        assert!(st.local(ftp_pasv(), true).is_none(), "already gone");
        assert_eq!(st.stats.ignored_helper, 1);
    }

    #[test]
    fn commit_takes_only_expectations_whose_master_is_present() {
        let mut st = ExpState::new(ExpectSync::All, 100);
        let with_master = ftp_pasv();
        let mut orphan = ftp_pasv();
        orphan.tuple.l4[1] = 50001;
        orphan.master.l4[0] = 40001;
        st.peer_upsert(with_master.clone(), 1);
        st.peer_upsert(orphan, 2);
        let (ready, missing) = st.committable(|m| *m == with_master.master);
        assert_eq!((ready, missing), (vec![&with_master], 1));
        assert_eq!(st.peer_bulk_end(2), 1);
    }

    #[test]
    fn conntrack_style_line() {
        let line = ftp_pasv().to_string();
        assert!(
            line.starts_with("300 proto=6 src=10.0.1.2 dst=10.0.2.2 sport=0 dport=50000"),
            "{line}"
        );
        assert!(line.contains("master-src=10.0.1.2 master-dst=10.0.2.2 sport=40000 dport=21"));
        assert!(line.contains("helper=ftp"));
    }
}
