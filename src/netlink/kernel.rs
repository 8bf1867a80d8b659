//! The request socket: dump, batched commit, delete, timeout update, flush.
//!
//! Batching: messages are packed into one buffer of about [`BATCH_BYTES`]
//! and sent with one `sendmsg`. Each message has its own sequence number and
//! no `NLM_F_ACK`, so the kernel answers only failures, each carrying the
//! failing message's sequence number; the last message of a batch has
//! `NLM_F_ACK`, so its answer (ack or error) always comes, after all the
//! others, and tells that the batch is done.

use std::io;
use std::time::{Duration, Instant};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::convert::{
    EmitOptions, emit_create, emit_key, emit_timeout_update, emit_update, parse_flow,
};
use super::event::{ctx, set_rcvbuf};
use super::expect::{emit_expect_create, emit_expect_key, parse_expectation};
use super::msg::{
    IPCTNL_MSG_CT_DELETE, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_NEW, IPCTNL_MSG_EXP_DELETE,
    IPCTNL_MSG_EXP_GET, IPCTNL_MSG_EXP_NEW, Messages, Msg, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_EXCL, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, add_flags, ct_message, exp_message,
};
use crate::expect::Expectation;
use crate::flow::{Dir, Flow, FlowKey};

/// Bytes of messages per `sendmsg`: well under the default socket send
/// buffer (212992), and small enough that the errors of a batch that fails
/// entirely fit the receive buffer.
pub const BATCH_BYTES: usize = 64 << 10;

/// Receive buffer of the request socket: room for every error of a batch.
const REQUEST_RCVBUF: usize = 8 << 20;

/// How a commit writes flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitOptions {
    /// Override every flow's timeout (seconds).
    pub timeout: Option<u32>,
    /// Add `IP_CT_TCP_FLAG_BE_LIBERAL` (flag and mask) to both TCP
    /// directions, because ctnetlink cannot carry the TCP window.
    pub be_liberal: bool,
    /// Leave entries that exist already as they are (counted in
    /// [`CommitReport::existing`]) instead of updating them: in
    /// direct-to-kernel mode an existing entry is either what the peer sent
    /// last or newer local state, and neither may be rolled back.
    pub create_only: bool,
}

impl CommitOptions {
    /// How `sync` asks commits to write (`commit_timeout`,
    /// `tcp_window_tracking`); `create_only` is the caller's.
    pub fn from_sync(sync: &crate::config::SyncConfig, create_only: bool) -> CommitOptions {
        CommitOptions {
            timeout: sync.commit_timeout.map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32),
            be_liberal: !sync.tcp_window_tracking,
            create_only,
        }
    }
}

/// What a commit or delete did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// Entries created.
    pub created: usize,
    /// Entries that existed and were updated.
    pub updated: usize,
    /// Entries that existed and were left alone ([`CommitOptions::create_only`]).
    pub existing: usize,
    /// Entries deleted ([`Kernel::delete`] only).
    pub deleted: usize,
    /// Flows the kernel refused, with its errno.
    pub failed: Vec<(FlowKey, i32)>,
    /// Entries that expired between their create (EEXIST) and their update
    /// (ENOENT) and were created again ([`Kernel::commit`]).
    pub expired_under: usize,
    /// Entries deleted because they held a committed flow's reply tuple
    /// ([`Kernel::commit`]), by their original tuple.
    pub displaced: Vec<FlowKey>,
    /// Wall time of the whole operation.
    pub elapsed: Duration,
    /// When the first 1 % of the flows (at least one) had been answered by
    /// the kernel, that is were in the table (created or already there) or
    /// refused; zero when there was nothing to do.
    pub first_percent: Duration,
}

impl CommitReport {
    /// One line for `-c`'s reply and log: how many flows, how soon the
    /// first 1 % was in the kernel (the flows that carry traffic, when they
    /// come first), and how long all took.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let total = self.created + self.updated + self.existing + self.failed.len();
        let mut line = format!(
            "{total} flows: first 1 % in {:.1} ms, all in {:.1} ms; {} created, {} updated",
            self.first_percent.as_secs_f64() * 1000.0,
            self.elapsed.as_secs_f64() * 1000.0,
            self.created,
            self.updated,
        );
        if self.existing > 0 {
            let _ = write!(line, ", {} already in the kernel", self.existing);
        }
        if !self.displaced.is_empty() {
            let _ = write!(
                line,
                " ({} local entries that held a flow's NAT mapping were replaced by the flow)",
                self.displaced.len()
            );
        }
        if self.expired_under > 0 {
            let _ = write!(
                line,
                " ({} expired under the commit and were created again)",
                self.expired_under
            );
        }
        let _ = write!(line, ", {} failed", self.failed.len());
        line
    }
}

/// The batched table operations a commit is made of, each answering the
/// flows refused with their errno. [`Kernel::commit`] sends them to the kernel;
/// the handover simulation runs them against a table in memory, so that
/// what a commit does about the kernel's races is tested without one.
pub trait CommitOps {
    /// Create these flows.
    fn create<'f>(
        &mut self,
        flows: Vec<&'f Flow>,
        eo: &EmitOptions,
    ) -> io::Result<(usize, Vec<(&'f Flow, i32)>)>;
    /// Update the entries with these flows' original tuples.
    fn update<'f>(
        &mut self,
        flows: Vec<&'f Flow>,
        eo: &EmitOptions,
    ) -> io::Result<(usize, Vec<(&'f Flow, i32)>)>;
    /// Delete the entry whose original tuple is `flow`'s reply tuple, which
    /// keeps `flow` out of the table; its key, or `None` if there is none.
    fn displace(&mut self, flow: &Flow) -> io::Result<Option<FlowKey>>;
}

/// The table operations the node's plans are made of ([`crate::node::Node::commit`]):
/// the kernel's, or, in the simulations, a table in memory
/// ([`crate::netlink::memtable::MemTable`]), so that a plan is tested as
/// the daemon runs it.
pub trait Table {
    /// [`Kernel::commit_with`]: `between` runs after every batch.
    fn commit_flows(
        &mut self,
        flows: Vec<&Flow>,
        opts: &CommitOptions,
        between: &mut dyn FnMut(),
    ) -> io::Result<CommitReport>;
    /// [`Kernel::delete`]: entries by original tuple, refusals per key.
    fn delete_flows(&mut self, keys: &[FlowKey]) -> io::Result<CommitReport>;
}

impl Table for Kernel {
    fn commit_flows(
        &mut self,
        flows: Vec<&Flow>,
        opts: &CommitOptions,
        between: &mut dyn FnMut(),
    ) -> io::Result<CommitReport> {
        self.commit_with(flows, opts, between)
    }

    fn delete_flows(&mut self, keys: &[FlowKey]) -> io::Result<CommitReport> {
        self.delete(keys)
    }
}

/// The rest of a commit once the creates are answered: EEXIST means
/// update (or, with `create_only`, leave alone), and the kernel's races
/// that end in the update's ENOENT are settled as [`Kernel::commit`] says.
pub fn settle<T: CommitOps + ?Sized>(
    table: &mut T,
    refused: Vec<(&Flow, i32)>,
    eo: &EmitOptions,
    create_only: bool,
    report: &mut CommitReport,
) -> io::Result<()> {
    let mut to_update = Vec::new();
    for (flow, errno) in refused {
        match errno {
            libc::EEXIST => to_update.push(flow),
            _ => report.failed.push((flow.key(), errno)),
        }
    }
    if create_only {
        report.existing = to_update.len();
        return Ok(());
    }
    for pass in 1..=COMMIT_PASSES {
        if to_update.is_empty() {
            break;
        }
        let (updated, refused) = table.update(std::mem::take(&mut to_update), eo)?;
        report.updated += updated;
        let mut gone = Vec::new();
        for (flow, errno) in refused {
            match errno {
                libc::ENOENT if pass < COMMIT_PASSES => gone.push(flow),
                _ => report.failed.push((flow.key(), errno)),
            }
        }
        if gone.is_empty() {
            break;
        }
        let (created, refused) = table.create(gone, eo)?;
        report.created += created;
        report.expired_under += created;
        let mut again = Vec::new();
        for (flow, errno) in refused {
            match errno {
                // No entry has the flow's original tuple (the update said
                // so), yet the create clashes: one holds its reply tuple.
                libc::EEXIST => match table.displace(flow)? {
                    Some(stray) => {
                        report.displaced.push(stray);
                        again.push(flow);
                    }
                    // Created meanwhile by traffic: update it.
                    None => to_update.push(flow),
                },
                _ => report.failed.push((flow.key(), errno)),
            }
        }
        if again.is_empty() {
            continue;
        }
        let (created, refused) = table.create(again, eo)?;
        report.created += created;
        for (flow, errno) in refused {
            match errno {
                libc::EEXIST => to_update.push(flow),
                _ => report.failed.push((flow.key(), errno)),
            }
        }
    }
    report.failed.extend(to_update.into_iter().map(|f| (f.key(), libc::EEXIST)));
    Ok(())
}

/// The kernel as a commit's table, with what to do between batches.
struct Between<'k, 'b> {
    kernel: &'k mut Kernel,
    between: &'b mut dyn FnMut(),
}

impl CommitOps for Between<'_, '_> {
    fn create<'f>(
        &mut self,
        flows: Vec<&'f Flow>,
        eo: &EmitOptions,
    ) -> io::Result<(usize, Vec<(&'f Flow, i32)>)> {
        self.kernel.batched_between(flows, create_message(eo), self.between)
    }

    fn update<'f>(
        &mut self,
        flows: Vec<&'f Flow>,
        eo: &EmitOptions,
    ) -> io::Result<(usize, Vec<(&'f Flow, i32)>)> {
        let update = |buf: &mut Vec<u8>, seq, flow: &Flow| {
            ct_message(buf, IPCTNL_MSG_CT_NEW, NLM_F_REQUEST, seq, flow.family(), |w| {
                emit_update(w, flow, eo)
            })
        };
        self.kernel.batched_between(flows, update, self.between)
    }

    fn displace(&mut self, flow: &Flow) -> io::Result<Option<FlowKey>> {
        self.kernel.displace(flow)
    }
}

impl Kernel {
    /// Delete the entry whose original tuple is `flow`'s reply tuple, which
    /// keeps `flow` out of the table; its key, or `None` if there is none.
    fn displace(&mut self, flow: &Flow) -> io::Result<Option<FlowKey>> {
        if !flow.has_ports() {
            return Ok(None);
        }
        let reply = flow.tuple_key(Dir::Reply);
        // A lookup by tuple finds an entry by either of its tuples: only
        // one whose original tuple this is stands in the flow's way (one
        // whose reply tuple it is would be another flow with the same NAT
        // mapping, which the synced table must not hold twice).
        match self.get(&reply)? {
            Some(holder) if holder.key() == reply => {
                let deleted = self.delete([&reply])?;
                Ok((deleted.deleted == 1).then_some(reply))
            }
            _ => Ok(None),
        }
    }
}

/// The create message of one flow, for [`Kernel::batched`].
fn create_message(eo: &EmitOptions) -> impl FnMut(&mut Vec<u8>, u32, &Flow) + '_ {
    move |buf, seq, flow| {
        let flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL;
        ct_message(buf, IPCTNL_MSG_CT_NEW, flags, seq, flow.family(), |w| emit_create(w, flow, eo))
    }
}

/// How many create-then-update rounds a commit makes for a flow whose entry
/// keeps expiring under it; past that its ENOENT is reported.
pub const COMMIT_PASSES: usize = 3;

/// A blocking ctnetlink request socket.
pub struct Kernel {
    sock: Socket,
    port_id: u32,
    seq: u32,
    send_buf: Vec<u8>,
    recv_buf: Vec<u8>,
    decode_errors: u64,
    /// Items answered so far by the current [`Kernel::batched`] call, and
    /// when, one entry per batch: the commit report's first 1 %.
    progress: Vec<(usize, Instant)>,
}

impl Kernel {
    /// Open a request socket in the current network namespace.
    pub fn open() -> io::Result<Kernel> {
        let mut sock = Socket::new(NETLINK_NETFILTER)
            .map_err(|e| ctx(e, "cannot open a NETLINK_NETFILTER socket"))?;
        let addr = sock.bind_auto().map_err(|e| ctx(e, "cannot bind the request socket"))?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Errors then carry only the failing header, not the whole request.
        sock.set_cap_ack(true).map_err(|e| ctx(e, "cannot set NETLINK_CAP_ACK"))?;
        set_rcvbuf(&sock, REQUEST_RCVBUF)?;
        Ok(Kernel {
            sock,
            port_id: addr.port_number(),
            seq: 1,
            send_buf: Vec::with_capacity(BATCH_BYTES + 4096),
            recv_buf: Vec::with_capacity(1 << 20),
            decode_errors: 0,
            progress: Vec::new(),
        })
    }

    /// Our netlink port id: events whose `origin_pid` equals it were caused
    /// by this socket.
    pub fn port_id(&self) -> u32 {
        self.port_id
    }

    /// Dumped entries that could not be decoded and were skipped, since open.
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// The whole table of both families.
    pub fn dump(&mut self) -> io::Result<Vec<Flow>> {
        let mut flows = Vec::new();
        self.dump_into(|f| flows.push(f))?;
        Ok(flows)
    }

    /// The whole table of both families, one flow at a time.
    pub fn dump_into(&mut self, mut f: impl FnMut(Flow)) -> io::Result<()> {
        let mut errors = 0;
        self.dump_messages(false, |msg| {
            match msg.ctnetlink().map(|(_, attrs)| parse_flow(attrs)) {
                Some(Ok(flow)) => f(flow),
                _ => errors += 1,
            }
        })?;
        self.decode_errors += errors;
        Ok(())
    }

    /// One entry as the kernel holds it now, found by either of its tuples
    /// (and the zone); `None` if the table has no such entry, which includes
    /// one the kernel has not confirmed yet (a packet still on its way
    /// through the first hooks). Unlike an event, the answer carries
    /// everything: protocol info, labels and sequence adjustment.
    pub fn get(&mut self, key: &FlowKey) -> io::Result<Option<Flow>> {
        let seq = self.next_seq();
        self.send_buf.clear();
        let family = if key.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET } as u8;
        let flags = NLM_F_REQUEST | NLM_F_ACK;
        ct_message(&mut self.send_buf, IPCTNL_MSG_CT_GET, flags, seq, family, |w| emit_key(w, key));
        self.sock
            .send(&self.send_buf, 0)
            .map_err(|e| ctx(e, "cannot ask for a conntrack entry"))?;
        let mut found = None;
        let mut errors = 0;
        let answered =
            self.answers(seq, |msg| match msg.ctnetlink().map(|(_, attrs)| parse_flow(attrs)) {
                Some(Ok(flow)) => found = Some(flow),
                _ => errors += 1,
            });
        self.decode_errors += errors;
        match answered {
            Ok(()) => Ok(found),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(ctx(e, "conntrack get")),
        }
    }

    /// Every expectation of both families.
    pub fn dump_expectations(&mut self) -> io::Result<Vec<Expectation>> {
        let mut exps = Vec::new();
        let mut errors = 0;
        self.dump_messages(true, |msg| {
            match msg.ctnetlink_exp().map(|(_, attrs)| parse_expectation(attrs)) {
                Some(Ok(exp)) => exps.push(exp),
                _ => errors += 1,
            }
        })?;
        self.decode_errors += errors;
        Ok(exps)
    }

    /// Send a dump request (conntrack table, or expectations when
    /// `expectations`) and hand each answer message to `f`.
    fn dump_messages(&mut self, expectations: bool, f: impl FnMut(&Msg<'_>)) -> io::Result<()> {
        let seq = self.next_seq();
        self.send_buf.clear();
        let flags = NLM_F_REQUEST | NLM_F_DUMP;
        let family = libc::AF_UNSPEC as u8;
        let what = if expectations { "expectation dump" } else { "conntrack dump" };
        if expectations {
            exp_message(&mut self.send_buf, IPCTNL_MSG_EXP_GET, flags, seq, family, |_| {});
        } else {
            ct_message(&mut self.send_buf, IPCTNL_MSG_CT_GET, flags, seq, family, |_| {});
        }
        self.sock
            .send(&self.send_buf, 0)
            .map_err(|e| ctx(e, &format!("cannot request a {what}")))?;
        self.answers(seq, f).map_err(|e| ctx(e, what))
    }

    /// Read the answers to request `seq`, handing each data message to `f`,
    /// until the dump's end or the acknowledgement; an error the kernel
    /// answers with is returned as its errno.
    fn answers(&mut self, seq: u32, mut f: impl FnMut(&Msg<'_>)) -> io::Result<()> {
        loop {
            self.recv_buf.clear();
            let n = recv(&self.sock, &mut self.recv_buf)?;
            for msg in Messages::new(&self.recv_buf[..n]) {
                let Ok((_, msg)) = msg else {
                    self.decode_errors += 1;
                    break;
                };
                if msg.seq != seq {
                    continue;
                }
                match msg.msg_type {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => match msg.errno() {
                        Some(0) | None => return Ok(()),
                        Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
                    },
                    _ => f(&msg),
                }
            }
        }
    }

    /// Create each expectation. Its master must be in the table already
    /// (else ENOENT) with a helper (else EOPNOTSUPP); one that exists
    /// (EEXIST) counts as updated, since an expectation has nothing an
    /// update could bring but its timeout.
    pub fn commit_expectations<'a>(
        &mut self,
        exps: impl IntoIterator<Item = &'a Expectation>,
    ) -> io::Result<CommitReport> {
        let start = Instant::now();
        let create_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL;
        let (created, refused) = self.batched(exps, |buf, seq, exp: &Expectation| {
            exp_message(buf, IPCTNL_MSG_EXP_NEW, create_flags, seq, exp.family(), |w| {
                emit_expect_create(w, exp)
            })
        })?;
        let mut report = CommitReport { created, ..CommitReport::default() };
        for (exp, errno) in refused {
            if errno == libc::EEXIST {
                report.updated += 1;
            } else {
                report.failed.push((exp.key(), errno));
            }
        }
        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// Delete the expectations with these expected tuples.
    pub fn delete_expectations<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a FlowKey>,
    ) -> io::Result<CommitReport> {
        self.delete_keys(keys, |buf, seq, family, key| {
            exp_message(buf, IPCTNL_MSG_EXP_DELETE, NLM_F_REQUEST, seq, family, |w| {
                emit_expect_key(w, key)
            })
        })
    }

    /// Create each flow; a flow that exists already (EEXIST) is updated
    /// instead, without its reply tuple, NAT and helper, which the kernel
    /// does not let an update change (or left alone with
    /// [`CommitOptions::create_only`]). Flows reach the kernel in the order
    /// given, in batches.
    ///
    /// Two races with the kernel end in the update's ENOENT, and the flow
    /// is created again, up to [`COMMIT_PASSES`] times:
    /// - its entry expired between the create that found it and the
    ///   update (a backup's entries all expire together, one purge timeout
    ///   after its `-t`, and a fail-back commit lands right then);
    /// - another entry holds its reply tuple: one the kernel made from a
    ///   packet that reached the new master's virtual IP before the commit
    ///   (keepalived adds the VIPs before it runs notify_master). The synced
    ///   flow wins: that entry is deleted, and reported in
    ///   [`CommitReport::displaced`].
    pub fn commit<'a>(
        &mut self,
        flows: impl IntoIterator<Item = &'a Flow>,
        opts: &CommitOptions,
    ) -> io::Result<CommitReport> {
        self.commit_with(flows, opts, &mut || {})
    }

    /// [`Kernel::commit`], calling `between` after every batch the kernel
    /// answered. The daemon reads its event socket there: the kernel's
    /// events of these moments (the destroys of entries that expire under
    /// the commit) must not pile up, because with reliable events the
    /// kernel retries the ones a full socket refused, and a commit of 100k
    /// flows over expiring entries then takes four times as long, its
    /// first 1 % a second instead of milliseconds (measured on the test
    /// kernel).
    pub fn commit_with<'a>(
        &mut self,
        flows: impl IntoIterator<Item = &'a Flow>,
        opts: &CommitOptions,
        between: &mut dyn FnMut(),
    ) -> io::Result<CommitReport> {
        let start = Instant::now();
        let eo = EmitOptions { timeout: opts.timeout, be_liberal: opts.be_liberal };
        let (created, refused) = self.batched_between(flows, create_message(&eo), between)?;
        let total = created + refused.len();
        let first_percent = first_percent(&self.progress, total, start);
        let mut report = CommitReport { created, first_percent, ..CommitReport::default() };
        settle(
            &mut Between { kernel: self, between },
            refused,
            &eo,
            opts.create_only,
            &mut report,
        )?;
        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// Delete the entries with these keys; missing ones fail with ENOENT.
    pub fn delete<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a FlowKey>,
    ) -> io::Result<CommitReport> {
        self.delete_keys(keys, |buf, seq, family, key| {
            ct_message(buf, IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST, seq, family, |w| emit_key(w, key))
        })
    }

    /// Batched deletes, one message per key built by `message` (given the
    /// key's address family); refusals are reported per key.
    fn delete_keys<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a FlowKey>,
        mut message: impl FnMut(&mut Vec<u8>, u32, u8, &FlowKey),
    ) -> io::Result<CommitReport> {
        let start = Instant::now();
        let (deleted, refused) = self.batched(keys, |buf, seq, key: &FlowKey| {
            let family = if key.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET } as u8;
            message(buf, seq, family, key)
        })?;
        Ok(CommitReport {
            deleted,
            failed: refused.into_iter().map(|(k, e)| (*k, e)).collect(),
            elapsed: start.elapsed(),
            ..CommitReport::default()
        })
    }

    /// Set the timeout of every entry to `secs`; returns how many entries
    /// were changed (entries that vanished meanwhile are not counted).
    pub fn set_timeout_all(&mut self, secs: u32) -> io::Result<usize> {
        self.set_timeout_where(secs, |_| true)
    }

    /// Set the timeout of the entries for which `pick` is true to `secs`.
    pub fn set_timeout_where(
        &mut self,
        secs: u32,
        mut pick: impl FnMut(&Flow) -> bool,
    ) -> io::Result<usize> {
        let mut flows = self.dump()?;
        flows.retain(|f| pick(f));
        self.set_timeout(&flows, secs)
    }

    /// Set the timeout of these flows' entries to `secs`; returns how many
    /// were changed (missing ones are not counted).
    pub fn set_timeout<'a>(
        &mut self,
        flows: impl IntoIterator<Item = &'a Flow>,
        secs: u32,
    ) -> io::Result<usize> {
        let (changed, _gone) = self.batched(flows, |buf, seq, flow: &Flow| {
            ct_message(buf, IPCTNL_MSG_CT_NEW, NLM_F_REQUEST, seq, flow.family(), |w| {
                emit_timeout_update(w, flow, secs)
            })
        })?;
        Ok(changed)
    }

    /// Remove every entry of both families.
    pub fn flush(&mut self) -> io::Result<()> {
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let (_, refused) = self.batched([&family], |buf, seq, family: &u8| {
                ct_message(buf, IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST, seq, *family, |_| {})
            })?;
            if let Some((_, errno)) = refused.first() {
                return Err(ctx(io::Error::from_raw_os_error(*errno), "conntrack flush"));
            }
        }
        Ok(())
    }

    /// Send one message per item, batched; returns how many succeeded and
    /// the items the kernel refused with their errno.
    fn batched<'i, T: ?Sized + 'i>(
        &mut self,
        items: impl IntoIterator<Item = &'i T>,
        emit: impl FnMut(&mut Vec<u8>, u32, &T),
    ) -> io::Result<(usize, Vec<(&'i T, i32)>)> {
        self.batched_between(items, emit, &mut || {})
    }

    /// [`Kernel::batched`], calling `between` after each batch is answered.
    fn batched_between<'i, T: ?Sized + 'i>(
        &mut self,
        items: impl IntoIterator<Item = &'i T>,
        mut emit: impl FnMut(&mut Vec<u8>, u32, &T),
        between: &mut dyn FnMut(),
    ) -> io::Result<(usize, Vec<(&'i T, i32)>)> {
        let mut ok = 0;
        let mut refused = Vec::new();
        let mut pending: Vec<&'i T> = Vec::new();
        let mut first_seq = 0;
        let mut last_start = 0;
        let mut answered = 0;
        self.progress.clear();
        self.send_buf.clear();
        for item in items {
            let seq = self.next_seq();
            if pending.is_empty() {
                first_seq = seq;
            }
            last_start = self.send_buf.len();
            emit(&mut self.send_buf, seq, item);
            pending.push(item);
            if self.send_buf.len() >= BATCH_BYTES {
                ok += self.send_batch(first_seq, last_start, &pending, &mut refused)?;
                answered += pending.len();
                self.progress.push((answered, Instant::now()));
                pending.clear();
                self.send_buf.clear();
                between();
            }
        }
        if !pending.is_empty() {
            ok += self.send_batch(first_seq, last_start, &pending, &mut refused)?;
            answered += pending.len();
            self.progress.push((answered, Instant::now()));
            self.send_buf.clear();
            between();
        }
        Ok((ok, refused))
    }

    /// Send `send_buf` (messages with sequence numbers `first_seq..`, the
    /// last one starting at `last_start`) and collect the answers.
    fn send_batch<'i, T: ?Sized>(
        &mut self,
        first_seq: u32,
        last_start: usize,
        pending: &[&'i T],
        refused: &mut Vec<(&'i T, i32)>,
    ) -> io::Result<usize> {
        add_flags(&mut self.send_buf, last_start, NLM_F_ACK);
        let last_seq = first_seq.wrapping_add(pending.len() as u32 - 1);
        self.sock.send(&self.send_buf, 0).map_err(|e| ctx(e, "cannot send conntrack requests"))?;
        let mut failures = 0;
        loop {
            self.recv_buf.clear();
            let n = recv(&self.sock, &mut self.recv_buf).map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    ctx(e, "answers to a conntrack batch were lost")
                } else {
                    ctx(e, "cannot read conntrack answers")
                }
            })?;
            let mut done = false;
            for msg in Messages::new(&self.recv_buf[..n]) {
                let Ok((_, msg)) = msg else { break };
                let Some(errno) = msg.errno() else { continue };
                let index = msg.seq.wrapping_sub(first_seq) as usize;
                if let (Some(item), true) = (pending.get(index), errno != 0) {
                    refused.push((*item, errno));
                    failures += 1;
                }
                done |= msg.seq == last_seq;
            }
            if done {
                return Ok(pending.len() - failures);
            }
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }
}

/// Time from `start` until the batch that completed the first 1 % of
/// `total` items (at least one) was answered.
fn first_percent(progress: &[(usize, Instant)], total: usize, start: Instant) -> Duration {
    let target = total.div_ceil(100).max(1);
    progress
        .iter()
        .find(|(answered, _)| *answered >= target)
        .map_or(Duration::ZERO, |(_, at)| at.saturating_duration_since(start))
}

/// One blocking `recv`, retried on EINTR.
fn recv(sock: &Socket, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        match sock.recv(buf, 0) {
            Ok(n) => return Ok(n.min(buf.len())),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_percent_is_the_batch_that_completes_one_percent() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let progress = [(500, at(3)), (1000, at(5)), (150_000, at(400))];
        // 1 % of 150000 is 1500: the third batch.
        assert_eq!(first_percent(&progress, 150_000, start), Duration::from_millis(400));
        // 1 % of 50000 is 500: the first batch.
        assert_eq!(first_percent(&progress, 50_000, start), Duration::from_millis(3));
        // Fewer than 100 flows: the first flow counts.
        assert_eq!(first_percent(&progress, 7, start), Duration::from_millis(3));
        assert_eq!(first_percent(&[], 0, start), Duration::ZERO);
    }

    #[test]
    fn the_summary_gives_the_count_the_first_percent_and_the_total() {
        let key = Flow::new_v4(6, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1, 2).key();
        let report = CommitReport {
            created: 1000,
            updated: 5,
            existing: 98_994,
            failed: vec![(key, libc::ENOMEM)],
            elapsed: Duration::from_millis(412),
            first_percent: Duration::from_micros(3500),
            ..CommitReport::default()
        };
        assert_eq!(
            report.summary(),
            "100000 flows: first 1 % in 3.5 ms, all in 412.0 ms; 1000 created, 5 updated, \
             98994 already in the kernel, 1 failed"
        );
    }
}
