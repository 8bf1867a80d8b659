//! NFQUEUE (nfnetlink_queue): the packets an nft `queue` rule hands to the
//! daemon, and the verdicts that release them (`sync.defer`,
//! docs/active-active.md).
//!
//! The queue is bound with `NFQA_CFG_F_FAIL_OPEN` (a full queue accepts
//! packets instead of dropping them) and `NFQA_CFG_F_CONNTRACK`: each packet
//! comes with its conntrack entry in `NFQA_CT` (ctnetlink's attributes,
//! decoded by [`super::convert::parse_flow`]). Kernels built without
//! `CONFIG_NETFILTER_NETLINK_GLUE_CT` refuse that flag; then the packet's
//! first bytes (copy mode PACKET, [`COPY_RANGE`] bytes) give its addresses
//! and ports, and the caller looks the entry up by them (see
//! [`QueuedPacket::headers`]). [`decode_packets`] is the pure decoder of
//! what the socket reads.

use std::io;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::convert::{AttrWriter, be_u32, for_each_nla, parse_flow};
use super::event::{ctx, set_rcvbuf};
use super::msg::{Messages, NFGENMSG_LEN, NLM_F_ACK, NLM_F_REQUEST, nfnl_message};
use crate::flow::Flow;

/// `NFNL_SUBSYS_QUEUE`.
const NFNL_SUBSYS_QUEUE: u16 = 3;
/// `NFQNL_MSG_PACKET`, `_VERDICT`, `_CONFIG`.
const MSG_PACKET: u8 = 0;
const MSG_VERDICT: u8 = 1;
const MSG_CONFIG: u8 = 2;

/// `enum nfqnl_attr_type`.
mod nfqa {
    pub const PACKET_HDR: u16 = 1;
    pub const VERDICT_HDR: u16 = 2;
    pub const PAYLOAD: u16 = 10;
    pub const CT: u16 = 11;
    #[cfg(test)]
    pub const CT_INFO: u16 = 12;
}
/// `enum nfqnl_attr_config`.
mod cfg {
    pub const CMD: u16 = 1;
    pub const PARAMS: u16 = 2;
    pub const QUEUE_MAXLEN: u16 = 3;
    pub const MASK: u16 = 4;
    pub const FLAGS: u16 = 5;
    pub const CMD_BIND: u8 = 1;
    pub const COPY_PACKET: u8 = 2;
    pub const F_FAIL_OPEN: u32 = 1;
    pub const F_CONNTRACK: u32 = 2;
}
const NF_ACCEPT: u32 = 1;
const RECV_BUF: usize = 1 << 16;
/// Packet bytes copied to us: the longest IPv4 header (60 bytes) plus a TCP
/// header's ports and flags, or an IPv6 header plus the same.
pub const COPY_RANGE: u32 = 80;

/// One queued packet: its id (for the verdict) and, when the kernel sent
/// it, its conntrack entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedPacket {
    pub id: u32,
    /// `None`: the packet has no conntrack entry (untracked), the entry
    /// did not decode, or the kernel does not send entries.
    pub flow: Option<Flow>,
    /// The flow the packet's own headers describe, if TCP or UDP over IP:
    /// addresses and ports as the packet carries them (so the reply tuple
    /// for a reply), no NAT, TCP state SYN_SENT for a SYN and ESTABLISHED
    /// otherwise. For a lookup when `flow` is `None`, and as the state of a
    /// flow the kernel has not confirmed yet.
    pub headers: Option<Flow>,
}

/// Counters of the queue socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Packets read from the queue.
    pub packets: u64,
    /// Packets whose conntrack entry was missing or did not decode.
    pub without_flow: u64,
    /// Messages that were not queued packets, or did not frame.
    pub decode_errors: u64,
    /// Verdicts the kernel did not take (the packet was then accepted by
    /// fail-open or dropped when the queue went away).
    pub verdict_errors: u64,
}

/// Decode the messages of one `recvmsg` buffer into `out`; returns how
/// many were not queued packets (errors, other types, bad framing).
pub fn decode_packets(buf: &[u8], out: &mut Vec<QueuedPacket>) -> usize {
    let mut errors = 0;
    for msg in Messages::new(buf) {
        let Ok((_, msg)) = msg else {
            errors += 1;
            break;
        };
        if msg.msg_type != (NFNL_SUBSYS_QUEUE << 8) | u16::from(MSG_PACKET) {
            errors += 1;
            continue;
        }
        let Some(attrs) = msg.payload.get(NFGENMSG_LEN..) else {
            errors += 1;
            continue;
        };
        let mut id = None;
        let mut flow = None;
        let mut headers = None;
        let walked = for_each_nla(attrs, |kind, v| {
            match kind & 0x3fff {
                nfqa::PACKET_HDR => id = Some(be_u32(v.get(..4).unwrap_or(v))?),
                nfqa::CT => flow = parse_flow(v).ok(),
                nfqa::PAYLOAD => headers = flow_of_headers(v),
                _ => {}
            }
            Ok(())
        });
        match (walked, id) {
            (Ok(()), Some(id)) => out.push(QueuedPacket { id, flow, headers }),
            (Err(_), Some(id)) => out.push(QueuedPacket { id, flow: None, headers: None }),
            _ => errors += 1,
        }
    }
    errors
}

/// `tcp_conntrack` states and the kernel's default timeouts for them.
const TCP_SYN_SENT: (u8, u32) = (1, 120);
const TCP_ESTABLISHED: (u8, u32) = (3, 432_000);
const UDP_TIMEOUT: u32 = 30;

/// The flow a TCP or UDP packet's headers describe (see
/// [`QueuedPacket::headers`]).
pub fn flow_of_headers(p: &[u8]) -> Option<Flow> {
    let (proto, src, dst, l4): (u8, std::net::IpAddr, std::net::IpAddr, &[u8]) =
        match p.first()? >> 4 {
            4 => {
                let ihl = usize::from(p[0] & 0x0f) * 4;
                let frag = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]) & 0x1fff;
                if ihl < 20 || frag != 0 {
                    return None;
                }
                let a: [u8; 4] = p.get(12..16)?.try_into().ok()?;
                let b: [u8; 4] = p.get(16..20)?.try_into().ok()?;
                (*p.get(9)?, a.into(), b.into(), p.get(ihl..)?)
            }
            6 => {
                let a: [u8; 16] = p.get(8..24)?.try_into().ok()?;
                let b: [u8; 16] = p.get(24..40)?.try_into().ok()?;
                (*p.get(6)?, a.into(), b.into(), p.get(40..)?)
            }
            _ => return None,
        };
    let sport = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
    let dport = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
    let mut flow = Flow::new(proto, src, dst, sport, dport);
    match proto {
        6 => {
            let flags = *l4.get(13)?;
            let syn_only = flags & 0x12 == 0x02;
            let (state, timeout) = if syn_only { TCP_SYN_SENT } else { TCP_ESTABLISHED };
            flow.proto_state = state;
            flow.timeout = timeout;
        }
        17 => flow.timeout = UDP_TIMEOUT,
        _ => return None,
    }
    Some(flow)
}

/// Append one accept verdict for packet `id` of queue `queue` to `buf`.
pub fn accept_message(buf: &mut Vec<u8>, queue: u16, id: u32) {
    queue_message(buf, MSG_VERDICT, 0, queue, |w| {
        let mut hdr = [0u8; 8];
        hdr[..4].copy_from_slice(&NF_ACCEPT.to_be_bytes());
        hdr[4..].copy_from_slice(&id.to_be_bytes());
        w.put(nfqa::VERDICT_HDR, &hdr);
    });
}

fn queue_message(
    buf: &mut Vec<u8>,
    msg: u8,
    flags: u16,
    queue: u16,
    attrs: impl FnOnce(&mut AttrWriter<'_>),
) {
    // AF_UNSPEC; the queue number is the resource id.
    nfnl_message(buf, NFNL_SUBSYS_QUEUE, msg, NLM_F_REQUEST | flags, 0, 0, queue, attrs);
}

/// A non-blocking socket bound to one NFQUEUE.
pub struct QueueSocket {
    sock: Socket,
    queue: u16,
    buf: Vec<u8>,
    out: Vec<u8>,
    stats: QueueStats,
    with_conntrack: bool,
}

impl QueueSocket {
    /// Bind queue `queue`, holding up to `maxlen` packets in the kernel
    /// (past that, fail-open accepts them).
    pub fn open(queue: u16, maxlen: u32) -> io::Result<QueueSocket> {
        let mut sock = Socket::new(NETLINK_NETFILTER)
            .map_err(|e| ctx(e, "cannot open a NETLINK_NETFILTER socket"))?;
        sock.bind(&SocketAddr::new(0, 0)).map_err(|e| ctx(e, "cannot bind the queue socket"))?;
        let mut s = QueueSocket {
            sock,
            queue,
            buf: Vec::with_capacity(RECV_BUF),
            out: Vec::new(),
            stats: QueueStats::default(),
            with_conntrack: false,
        };
        s.configure(|w| {
            // cmd, pad, pf (ignored by current kernels for BIND).
            w.put(cfg::CMD, &[cfg::CMD_BIND, 0, 0, 0]);
        })
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) | Some(libc::EPERM) => ctx(
                e,
                &format!(
                    "NFQUEUE {queue} is bound by another process (choose another sync.defer.queue), or this process lacks CAP_NET_ADMIN"
                ),
            ),
            _ => ctx(e, &format!("cannot bind NFQUEUE {queue} (needs the nfnetlink_queue module)")),
        })?;
        let setup = |flags: u32| {
            move |w: &mut AttrWriter<'_>| {
                let mut params = [0u8; 5];
                params[..4].copy_from_slice(&COPY_RANGE.to_be_bytes());
                params[4] = cfg::COPY_PACKET;
                w.put(cfg::PARAMS, &params);
                w.put_u32_be(cfg::QUEUE_MAXLEN, maxlen);
                w.put_u32_be(cfg::FLAGS, flags);
                w.put_u32_be(cfg::MASK, cfg::F_FAIL_OPEN | cfg::F_CONNTRACK);
            }
        };
        s.with_conntrack = true;
        if let Err(e) = s.configure(setup(cfg::F_FAIL_OPEN | cfg::F_CONNTRACK)) {
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(ctx(e, &format!("cannot configure NFQUEUE {queue}")));
            }
            s.with_conntrack = false;
            s.configure(setup(cfg::F_FAIL_OPEN))
                .map_err(|e| ctx(e, &format!("cannot configure NFQUEUE {queue}")))?;
        }
        // Lost verdict requests would leave packets held; errors go to
        // `verdict_errors` instead of overrunning the socket.
        let _ = set_rcvbuf(&s.sock, 4 << 20);
        s.sock.set_no_enobufs(true).map_err(|e| ctx(e, "cannot set NETLINK_NO_ENOBUFS"))?;
        s.sock.set_non_blocking(true)?;
        Ok(s)
    }

    /// The queue number.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// False when the kernel does not send conntrack entries with packets
    /// (built without `CONFIG_NETFILTER_NETLINK_GLUE_CT`).
    pub fn with_conntrack(&self) -> bool {
        self.with_conntrack
    }

    /// Read every packet queued now into `out`.
    pub fn recv(&mut self, out: &mut Vec<QueuedPacket>) -> io::Result<()> {
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(n) => {
                    let len = n.min(self.buf.len());
                    let before = out.len();
                    let mut errors = 0;
                    // Verdict errors come back on this socket too.
                    for m in Messages::new(&self.buf[..len]).flatten() {
                        if m.1.errno().is_some_and(|e| e != 0) {
                            self.stats.verdict_errors += 1;
                            errors += 1;
                        }
                    }
                    let bad = decode_packets(&self.buf[..len], out).saturating_sub(errors);
                    self.stats.decode_errors += bad as u64;
                    for p in &out[before..] {
                        self.stats.packets += 1;
                        if p.flow.is_none() {
                            self.stats.without_flow += 1;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Packets the kernel could not hand over were accepted by
                // fail-open: nothing of ours is lost.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) => return Err(ctx(e, "cannot read the NFQUEUE socket")),
            }
        }
    }

    /// Accept these packets, in one `sendmsg`.
    pub fn accept(&mut self, ids: &[u32]) -> io::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.out.clear();
        for &id in ids {
            accept_message(&mut self.out, self.queue, id);
        }
        loop {
            match self.sock.send(&self.out, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.stats.verdict_errors += ids.len() as u64;
                    return Err(ctx(e, "cannot send NFQUEUE verdicts"));
                }
            }
        }
    }

    /// Counters since open.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Send one config message and wait for its acknowledgement (the socket
    /// is still blocking).
    fn configure(&mut self, attrs: impl FnOnce(&mut AttrWriter<'_>)) -> io::Result<()> {
        self.out.clear();
        queue_message(&mut self.out, MSG_CONFIG, NLM_F_ACK, self.queue, attrs);
        self.sock.send(&self.out, 0)?;
        loop {
            self.buf.clear();
            let n = self.sock.recv(&mut self.buf, 0)?;
            for m in Messages::new(&self.buf[..n.min(self.buf.len())]) {
                let (_, m) = m.map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
                match m.errno() {
                    Some(0) => return Ok(()),
                    Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
                    None => {}
                }
            }
        }
    }
}

super::mio_source!(QueueSocket, sock);

#[cfg(test)]
mod tests {
    use super::*;

    /// A queued packet as the kernel sends it: header, then `attrs`.
    fn packet(attrs: impl FnOnce(&mut AttrWriter<'_>)) -> Vec<u8> {
        let mut buf = Vec::new();
        queue_message(&mut buf, MSG_PACKET, 0, 0, attrs);
        buf
    }

    #[test]
    fn verdict_layout() {
        let mut buf = Vec::new();
        accept_message(&mut buf, 5, 0x0102_0304);
        let mut want = Vec::new();
        want.extend_from_slice(&32u32.to_ne_bytes());
        want.extend_from_slice(&0x0301u16.to_ne_bytes());
        want.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        want.extend_from_slice(&[0; 8]);
        want.extend_from_slice(&[0, 0, 0, 5]);
        want.extend_from_slice(&[12, 0, 2, 0, 0, 0, 0, 1, 1, 2, 3, 4]);
        assert_eq!(buf, want);
    }

    #[test]
    fn packet_with_and_without_conntrack() {
        let flow = Flow::new_v4(6, [10, 0, 0, 1].into(), [10, 0, 1, 1].into(), 40000, 80);
        let mut ct = Vec::new();
        crate::netlink::convert::emit_create(
            &mut AttrWriter::new(&mut ct),
            &flow,
            &Default::default(),
        );
        let mut buf = packet(|w| {
            w.put(nfqa::PACKET_HDR, &[0, 0, 0, 7, 0x08, 0x00, 4]);
            w.put(nfqa::CT, &ct);
            w.put_u32_be(nfqa::CT_INFO, 2);
        });
        buf.extend(packet(|w| w.put(nfqa::PACKET_HDR, &[0, 0, 0, 8, 0x08, 0x00, 4])));
        buf.extend(packet(|w| w.put_u32_be(nfqa::CT_INFO, 2))); // no header: no id
        let mut out = Vec::new();
        assert_eq!(decode_packets(&buf, &mut out), 1);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].id, 7);
        assert_eq!(out[0].flow.as_ref().map(Flow::key), Some(flow.key()));
        assert_eq!(out[1], QueuedPacket { id: 8, flow: None, headers: None });
    }

    #[test]
    fn garbage_never_panics() {
        let mut out = Vec::new();
        for len in 0..64 {
            let buf: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            decode_packets(&buf, &mut out);
        }
        let bad_ct = packet(|w| {
            w.put(nfqa::PACKET_HDR, &[0, 0, 0, 9]);
            w.put(nfqa::CT, &[200, 0, 1, 0]);
        });
        out.clear();
        decode_packets(&bad_ct, &mut out);
        assert_eq!(out, vec![QueuedPacket { id: 9, flow: None, headers: None }]);
    }

    #[test]
    fn flows_of_packet_headers() {
        #[rustfmt::skip]
        let syn: &[u8] = &[
            0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 1, 2, 10, 0, 2, 2,
            0x9c, 0x40, 0x1f, 0x40, 0, 0, 0, 1, 0, 0, 0, 0, 0xa0, 0x02, 0xff, 0xff,
        ];
        let f = flow_of_headers(syn).unwrap();
        assert_eq!(
            f.key(),
            Flow::new_v4(6, [10, 0, 1, 2].into(), [10, 0, 2, 2].into(), 40000, 8000).key()
        );
        assert_eq!((f.proto_state, f.timeout), TCP_SYN_SENT);
        let mut synack = syn.to_vec();
        synack[33] = 0x12;
        assert_eq!(flow_of_headers(&synack).unwrap().proto_state, TCP_ESTABLISHED.0);
        let mut udp = syn.to_vec();
        udp[9] = 17;
        assert_eq!(flow_of_headers(&udp).unwrap().timeout, UDP_TIMEOUT);
        let mut icmp = syn.to_vec();
        icmp[9] = 1;
        assert!(flow_of_headers(&icmp).is_none());
        let mut fragment = syn.to_vec();
        fragment[7] = 1;
        assert!(flow_of_headers(&fragment).is_none());
        for len in 0..syn.len() {
            let _ = flow_of_headers(&syn[..len]);
        }
        assert!(flow_of_headers(&syn[..22]).is_none());
        let mut v6 = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        v6.extend_from_slice(&[0xfd; 16]);
        v6.extend_from_slice(&[0xfe; 16]);
        v6.extend_from_slice(&syn[20..]);
        let f = flow_of_headers(&v6).unwrap();
        assert_eq!((f.key().l4, f.proto_state), ([40000, 8000], TCP_SYN_SENT.0));
    }
}
