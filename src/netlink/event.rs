//! The conntrack event subscription.

use std::io;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nix::sys::socket::{setsockopt, sockopt};

use super::convert::parse_flow;
use super::expect::parse_expectation;
use super::msg::{
    IPCTNL_MSG_CT_DELETE, IPCTNL_MSG_CT_NEW, IPCTNL_MSG_EXP_DELETE, IPCTNL_MSG_EXP_NEW, Messages,
    NLM_F_CREATE,
};
use crate::expect::Expectation;
use crate::flow::Flow;

/// `NFNLGRP_CONNTRACK_NEW`, `_UPDATE`, `_DESTROY`.
const NFNLGRP_CONNTRACK: [u32; 3] = [1, 2, 3];
/// `NFNLGRP_CONNTRACK_EXP_NEW`, `_DESTROY` (the kernel sends no
/// expectation updates).
const NFNLGRP_CONNTRACK_EXP: [u32; 2] = [4, 6];

/// Size of the receive buffer handed to `recvmsg`: larger than any message
/// ctnetlink sends.
const RECV_BUF: usize = 1 << 20;

/// How the event socket is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventConfig {
    /// Socket receive buffer in bytes, set with `SO_RCVBUFFORCE` (falling
    /// back to `SO_RCVBUF`, capped by `net.core.rmem_max`, without
    /// `CAP_NET_ADMIN`).
    pub rcvbuf: usize,
    /// Set `NETLINK_BROADCAST_SEND_ERROR` and `NETLINK_NO_ENOBUFS`: the
    /// kernel then keeps destroy events it could not deliver and retries
    /// them, instead of dropping events and reporting ENOBUFS.
    pub reliable: bool,
    /// Also subscribe to expectation events.
    pub expectations: bool,
}

impl EventConfig {
    /// The event socket that the config asks for: `general.netlink` sizes
    /// it and chooses reliable events, and expectation events are read
    /// only when `sync.expectations` syncs any.
    pub fn from_config(cfg: &crate::config::Config) -> EventConfig {
        let netlink = &cfg.general.netlink;
        EventConfig {
            rcvbuf: netlink.rcvbuf.get(),
            reliable: netlink.reliable_events,
            expectations: cfg.sync.expectations.enabled(),
        }
    }
}

impl Default for EventConfig {
    fn default() -> Self {
        EventConfig { rcvbuf: 8 << 20, reliable: false, expectations: false }
    }
}

/// One conntrack change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CtEvent {
    /// A new entry.
    New(Flow),
    /// An entry changed (state, status, mark, labels, ...).
    Update(Flow),
    /// An entry was removed.
    Destroy(Flow),
    /// A helper created an expectation.
    ExpNew(Box<Expectation>),
    /// An expectation was used up, timed out or removed with its master.
    ExpDestroy(Box<Expectation>),
    /// `recvmsg` failed with ENOBUFS: events were lost, and the caller must
    /// resync from a dump.
    Overrun,
}

/// An event and who caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventItem {
    /// What happened.
    pub event: CtEvent,
    /// `nlmsg_pid` of the event: the netlink port id of the socket whose
    /// request caused it, 0 when the kernel itself did (traffic, timeouts).
    pub origin_pid: u32,
}

/// Counters of an [`EventSocket`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EventStats {
    /// Events decoded and handed out.
    pub received: u64,
    /// Messages that could not be decoded and were skipped.
    pub decode_errors: u64,
    /// ENOBUFS seen: each one was reported as [`CtEvent::Overrun`].
    pub overruns: u64,
}

/// What [`decode_events`] did with one buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Events appended.
    pub events: usize,
    /// Ctnetlink messages that did not decode, plus a broken netlink
    /// header, after which the rest of the buffer is unreadable.
    pub errors: usize,
    /// Messages of other types (control messages, other subsystems).
    pub ignored: usize,
}

/// Decode the netlink messages of one `recvmsg` buffer into events. Bad
/// messages are counted and skipped; this never panics, whatever the bytes.
pub fn decode_events(buf: &[u8], out: &mut Vec<EventItem>) -> DecodeStats {
    let mut stats = DecodeStats::default();
    for msg in Messages::new(buf) {
        let Ok((_, msg)) = msg else {
            stats.errors += 1;
            break;
        };
        if let Some((kind, attrs)) = msg.ctnetlink_exp() {
            let make: fn(Box<Expectation>) -> CtEvent = match kind {
                IPCTNL_MSG_EXP_NEW => CtEvent::ExpNew,
                IPCTNL_MSG_EXP_DELETE => CtEvent::ExpDestroy,
                _ => {
                    stats.ignored += 1;
                    continue;
                }
            };
            match parse_expectation(attrs) {
                Ok(exp) => {
                    out.push(EventItem { event: make(Box::new(exp)), origin_pid: msg.pid });
                    stats.events += 1;
                }
                Err(_) => stats.errors += 1,
            }
            continue;
        }
        let Some((ct, attrs)) = msg.ctnetlink() else {
            stats.ignored += 1;
            continue;
        };
        let make: fn(Flow) -> CtEvent = match ct {
            IPCTNL_MSG_CT_NEW if msg.flags & NLM_F_CREATE != 0 => CtEvent::New,
            IPCTNL_MSG_CT_NEW => CtEvent::Update,
            IPCTNL_MSG_CT_DELETE => CtEvent::Destroy,
            _ => {
                stats.ignored += 1;
                continue;
            }
        };
        match parse_flow(attrs) {
            Ok(flow) => {
                out.push(EventItem { event: make(flow), origin_pid: msg.pid });
                stats.events += 1;
            }
            Err(_) => stats.errors += 1,
        }
    }
    stats
}

/// A non-blocking socket subscribed to conntrack NEW, UPDATE and DESTROY
/// events of the current network namespace.
pub struct EventSocket {
    sock: Socket,
    buf: Vec<u8>,
    rcvbuf: usize,
    stats: EventStats,
}

impl EventSocket {
    /// Open, size and subscribe the socket.
    pub fn open(cfg: &EventConfig) -> io::Result<EventSocket> {
        let mut sock = Socket::new(NETLINK_NETFILTER)
            .map_err(|e| ctx(e, "cannot open a NETLINK_NETFILTER socket"))?;
        sock.bind(&SocketAddr::new(0, 0)).map_err(|e| ctx(e, "cannot bind the event socket"))?;
        for group in NFNLGRP_CONNTRACK {
            sock.add_membership(group)
                .map_err(|e| ctx(e, "cannot subscribe to conntrack events"))?;
        }
        if cfg.expectations {
            for group in NFNLGRP_CONNTRACK_EXP {
                sock.add_membership(group)
                    .map_err(|e| ctx(e, "cannot subscribe to expectation events"))?;
            }
        }
        if cfg.reliable {
            sock.set_broadcast_error(true)
                .map_err(|e| ctx(e, "cannot set NETLINK_BROADCAST_SEND_ERROR"))?;
            sock.set_no_enobufs(true).map_err(|e| ctx(e, "cannot set NETLINK_NO_ENOBUFS"))?;
        }
        sock.set_non_blocking(true)?;
        let mut s = EventSocket {
            sock,
            buf: Vec::with_capacity(RECV_BUF),
            rcvbuf: 0,
            stats: EventStats::default(),
        };
        s.set_rcvbuf(cfg.rcvbuf)?;
        Ok(s)
    }

    /// Read until the socket would block or at least `max` events were
    /// appended to `out` (one `recvmsg` may bring several). Returns how many
    /// were appended. An ENOBUFS becomes a [`CtEvent::Overrun`] item.
    pub fn recv(&mut self, out: &mut Vec<EventItem>, max: usize) -> io::Result<usize> {
        let mut appended = 0;
        while appended < max {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(n) => {
                    let len = n.min(self.buf.len());
                    let stats = decode_events(&self.buf[..len], out);
                    self.stats.received += stats.events as u64;
                    self.stats.decode_errors += stats.errors as u64;
                    appended += stats.events;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.stats.overruns += 1;
                    out.push(EventItem { event: CtEvent::Overrun, origin_pid: 0 });
                    appended += 1;
                }
                Err(e) => return Err(ctx(e, "cannot read conntrack events")),
            }
        }
        Ok(appended)
    }

    /// Throw away every event queued now, returning how many messages went.
    /// Before a dump that replaces the cache: those events are all older
    /// than the dump, and after an overrun the ones that followed them are
    /// lost, so applying them after the dump would put back states that no
    /// later event corrects.
    pub fn discard_queued(&mut self) -> io::Result<usize> {
        let mut discarded = 0;
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => discarded += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(discarded),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Lost events: the dump that follows covers them too.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => self.stats.overruns += 1,
                Err(e) => return Err(ctx(e, "cannot read conntrack events")),
            }
        }
    }

    /// Counters since open.
    pub fn stats(&self) -> EventStats {
        self.stats
    }

    /// The receive buffer size last asked for, in bytes.
    pub fn rcvbuf(&self) -> usize {
        self.rcvbuf
    }

    /// Resize the receive buffer (after overruns, for instance).
    pub fn set_rcvbuf(&mut self, bytes: usize) -> io::Result<()> {
        set_rcvbuf(&self.sock, bytes)?;
        self.rcvbuf = bytes;
        Ok(())
    }

    /// Have the kernel drop, before they are queued, the events caused by
    /// the request socket with port id `port` (our own commits): a commit
    /// of a whole table would otherwise fill this socket's buffer with
    /// echoes, overrun it and lose the events that matter. A classic BPF
    /// filter on `nlmsg_pid` (conntrackd filters its event socket the same
    /// way); the reactor's own port-id check stays as a fallback.
    pub fn ignore_origin(&self, port: u32) -> io::Result<()> {
        use socket2::SockFilter;
        // BPF_LD|BPF_W|BPF_ABS reads big-endian; nlmsg_pid is host order.
        let pid = u32::from_be_bytes(port.to_ne_bytes());
        let program = [
            SockFilter::new(0x20, 0, 0, 12),       // A = nlmsg_pid
            SockFilter::new(0x15, 0, 1, pid),      // A == port ? next : skip one
            SockFilter::new(0x06, 0, 0, 0),        // drop
            SockFilter::new(0x06, 0, 0, u32::MAX), // keep all of it
        ];
        socket2::SockRef::from(&self.sock)
            .attach_filter(&program)
            .map_err(|e| ctx(e, "cannot attach the event filter"))
    }

    /// The netlink port id of this socket.
    pub fn port_id(&self) -> io::Result<u32> {
        let mut addr = SocketAddr::new(0, 0);
        self.sock.get_address(&mut addr)?;
        Ok(addr.port_number())
    }
}

super::mio_source!(EventSocket, sock);

/// `SO_RCVBUFFORCE`, or `SO_RCVBUF` when not privileged.
pub(super) fn set_rcvbuf(sock: &Socket, bytes: usize) -> io::Result<()> {
    match setsockopt(sock, sockopt::RcvBufForce, &bytes) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => setsockopt(sock, sockopt::RcvBuf, &bytes)
            .map_err(|e| ctx(e.into(), "cannot set SO_RCVBUF")),
        Err(e) => Err(ctx(e.into(), "cannot set SO_RCVBUFFORCE")),
    }
}

/// Keep the error kind (callers match on it) and add what we were doing.
pub(super) fn ctx(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{proto, status};
    use crate::netlink::convert::{AttrWriter, EmitOptions, emit_create, emit_key};
    use crate::netlink::msg::{NLM_F_EXCL, NLM_F_REQUEST, ct_message};
    use proptest::prelude::*;

    /// An event stream as the kernel sends it: NEW (with NLM_F_CREATE),
    /// UPDATE, DESTROY (tuple only), and a message of another subsystem.
    fn stream() -> (Vec<u8>, Flow) {
        let mut f = Flow::new_v4(proto::TCP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1, 2);
        f.status |= status::SEEN_REPLY;
        f.timeout = 30;
        let mut buf = Vec::new();
        let eo = EmitOptions::default();
        let create = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL;
        ct_message(&mut buf, IPCTNL_MSG_CT_NEW, create, 0, 2, |w| emit_create(w, &f, &eo));
        ct_message(&mut buf, IPCTNL_MSG_CT_NEW, 0, 0, 2, |w| emit_create(w, &f, &eo));
        ct_message(&mut buf, IPCTNL_MSG_CT_DELETE, 0, 0, 2, |w| emit_key(w, &f.key()));
        // nfnetlink subsystem 3 (not ctnetlink): ignored.
        let start = buf.len();
        ct_message(&mut buf, IPCTNL_MSG_CT_NEW, 0, 0, 2, |_| {});
        buf[start + 5] = 3;
        (buf, f)
    }

    #[test]
    fn new_update_destroy_and_origin() {
        let (mut buf, f) = stream();
        buf[12..16].copy_from_slice(&77u32.to_ne_bytes()); // nlmsg_pid of the NEW
        let mut out = Vec::new();
        let stats = decode_events(&buf, &mut out);
        assert_eq!(stats, DecodeStats { events: 3, errors: 0, ignored: 1 });
        let mut sent = f.clone();
        sent.status = crate::netlink::convert::status_to_send(f.status);
        assert_eq!(out[0], EventItem { event: CtEvent::New(sent.clone()), origin_pid: 77 });
        assert_eq!(out[1], EventItem { event: CtEvent::Update(sent), origin_pid: 0 });
        let CtEvent::Destroy(d) = &out[2].event else { panic!("{out:?}") };
        assert_eq!(d.key(), f.key());
    }

    #[test]
    fn a_bad_message_is_counted_and_skipped() {
        let (good, _) = stream();
        let mut buf = Vec::new();
        // A NEW whose only attribute is a truncated CTA_TIMEOUT.
        ct_message(&mut buf, IPCTNL_MSG_CT_NEW, 0, 0, 2, |w: &mut AttrWriter<'_>| {
            w.put(7, &[0, 0])
        });
        buf.extend_from_slice(&good);
        let mut out = Vec::new();
        let stats = decode_events(&buf, &mut out);
        assert_eq!((stats.events, stats.errors), (3, 1));
        // A truncated tail: what came before is kept.
        let mut out = Vec::new();
        let stats = decode_events(&good[..good.len() - 3], &mut out);
        assert_eq!((stats.events, stats.errors), (3, 1));
    }

    proptest! {
        #[test]
        fn never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut out = Vec::new();
            let stats = decode_events(&bytes, &mut out);
            prop_assert_eq!(stats.events, out.len());
        }

        #[test]
        fn never_panics_on_mutated_events(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let (mut buf, _) = stream();
            for (at, byte) in flips {
                let i = at % buf.len();
                buf[i] = byte;
            }
            let mut out = Vec::new();
            let stats = decode_events(&buf, &mut out);
            prop_assert_eq!(stats.events, out.len());
        }
    }
}
