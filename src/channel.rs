//! UDP sync channels (unicast, multicast) with failover between links.
//!
//! Several links are configured in preference order; one is active and
//! sends. A link is usable when its interface (if one is named) is up and
//! running and its last send did not fail. The most preferred usable link is
//! active, so traffic moves to the next link when the active one fails and
//! back when it recovers. All links share one sequence space (the protocol
//! core does not know about links). Datagrams are accepted on every link,
//! but only from the configured peer address (unicast) — conntrackd accepts
//! anything that reaches its port.
//!
//! A unicast link also pins the port the peer sends from: the first
//! datagram from the peer's address pins its source port, and datagrams
//! from the peer's address but another port are refused (`foreign_port`).
//! ctsyncd sends from its bound sync port; conntrackd sends from an unbound
//! socket, a new ephemeral port at every start. So once nothing has come
//! from the pinned port for a hold-off (half `sync.peer_timeout`), the next
//! port the peer's address sends from is taken instead: the peer restarted.
//! Multicast links accept any member but ourselves.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{ChannelConfig, ChannelKind};

/// One configured link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSpec {
    /// Transport and destination, as `sync.channels[i]` gives them.
    pub kind: ChannelKind,
    /// Address to bind (and, for multicast, the interface address).
    pub local: Option<IpAddr>,
    /// Interface to bind to (`SO_BINDTODEVICE`) and whose state decides
    /// whether the link is usable.
    pub interface: Option<String>,
    pub port: u16,
    pub sndbuf: Option<usize>,
    pub rcvbuf: Option<usize>,
}

impl LinkSpec {
    /// The link that one `sync.channels[i]` entry describes.
    pub fn from_config(channel: &ChannelConfig) -> LinkSpec {
        LinkSpec {
            kind: channel.kind,
            local: Some(channel.local),
            interface: channel.interface.clone(),
            port: channel.port,
            sndbuf: channel.sndbuf.map(|n| n.get()),
            rcvbuf: channel.rcvbuf.map(|n| n.get()),
        }
    }
}

/// Counters of one link, as `-s link` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkStats {
    pub bytes_sent: u64,
    pub packets_sent: u64,
    pub bytes_recv: u64,
    pub packets_recv: u64,
    pub send_errors: u64,
    pub recv_errors: u64,
    /// Datagrams from an address that is not the configured peer.
    pub foreign_source: u64,
    /// Datagrams from the peer's address but not from the port it sends
    /// from (unicast links).
    pub foreign_port: u64,
}

/// A link's state for statistics.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LinkStatus {
    pub name: String,
    /// The interface (`sync0`), or the name when the link has none; for
    /// the text of `-s`, not in `-s --json`.
    #[serde(skip)]
    pub device: String,
    /// The interface's state as conntrackd's `-s link` names it:
    /// `RUNNING`, `NO-CARRIER` (up without carrier) or `DOWN` (`up` also
    /// needs the link to have sent without error lately).
    #[serde(skip)]
    pub status: &'static str,
    pub up: bool,
    pub active: bool,
    #[serde(flatten)]
    pub stats: LinkStats,
}

/// What [`Channels::recv`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recv {
    /// `len` bytes from the peer (or a multicast member) at `from`.
    Datagram { len: usize, from: SocketAddr },
    /// `len` bytes from the peer's address at a new source port, taken
    /// (and pinned from now on) because nothing came from port `was` for
    /// the hold-off: the peer restarted. Handled like [`Recv::Datagram`].
    PeerMoved { len: usize, from: SocketAddr, was: u16 },
    /// A datagram from an address that is not the peer, dropped.
    Foreign { from: SocketAddr },
    /// A datagram from the peer's address but not from `pinned`, the port
    /// the peer sends from, dropped.
    WrongPort { from: SocketAddr, pinned: u16 },
}

/// A link could not be opened.
#[derive(Debug)]
pub struct ChannelError {
    pub link: String,
    pub what: &'static str,
    pub source: io::Error,
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sync link {}: {} failed: {} (check sync.channels in the config: address, interface, port)",
            self.link, self.what, self.source
        )
    }
}

impl std::error::Error for ChannelError {}

/// Socket buffer size of a link when the config names none.
const DEFAULT_SOCKET_BUFFER: usize = 4 << 20;

/// How long a link that failed to send stays out of use before it is
/// tried again.
const SEND_FAILURE_HOLDOFF: Duration = Duration::from_secs(1);

struct Link {
    spec: LinkSpec,
    name: String,
    socket: UdpSocket,
    dest: SocketAddr,
    interface_up: bool,
    /// Administratively up (`IFF_UP`), with or without carrier.
    admin_up: bool,
    failed_until: Option<Instant>,
    /// The port the unicast peer sends from, once it sent.
    peer_port: Option<PinnedPort>,
    /// How long the pinned port must be silent before another is taken.
    port_holdoff: Duration,
    stats: LinkStats,
}

/// The source port a unicast peer sends from, and when it was last heard.
#[derive(Clone, Copy, Debug)]
struct PinnedPort {
    port: u16,
    last_heard: Instant,
}

/// What [`Link::admit`] decided about a datagram's source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admit {
    Peer,
    PeerMoved { was: u16 },
    Foreign,
    WrongPort { pinned: u16 },
}

/// The set of links and which one is active.
pub struct Channels {
    links: Vec<Link>,
    active: usize,
    switches: u64,
    port_holdoff: Duration,
}

impl Channels {
    /// Open every link. Fails on the first link that cannot be opened, naming it.
    ///
    /// `port_holdoff` is how long a unicast peer's pinned source port must
    /// be silent before datagrams from another port of its address are
    /// taken (the daemon uses half `sync.peer_timeout`).
    pub fn open(specs: &[LinkSpec], port_holdoff: Duration) -> Result<Channels, ChannelError> {
        let mut links = Vec::with_capacity(specs.len());
        for spec in specs {
            links.push(Link::open(spec, port_holdoff)?);
        }
        let mut channels = Channels { links, active: 0, switches: 0, port_holdoff };
        channels.refresh(Instant::now());
        Ok(channels)
    }

    /// Register link `i` under token `first.0 + i`.
    pub fn register(&mut self, registry: &Registry, first: Token) -> io::Result<()> {
        for (i, link) in self.links.iter_mut().enumerate() {
            registry.register(&mut link.socket, Token(first.0 + i), Interest::READABLE)?;
        }
        Ok(())
    }

    /// Number of links.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// True when no link is configured.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Index of the active link.
    pub fn active(&self) -> usize {
        self.active
    }

    /// How many times the active link changed.
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// Send one datagram on the active link. A hard error takes the link out
    /// of use for a while and retries once on the next usable link;
    /// `WouldBlock` is returned as is so the caller can send the same bytes
    /// later.
    pub fn send(&mut self, now: Instant, datagram: &[u8]) -> io::Result<()> {
        let first = self.active;
        match self.links[first].send(datagram) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            Err(e) => {
                self.links[first].failed_until = Some(now + SEND_FAILURE_HOLDOFF);
                self.refresh(now);
                if self.active != first {
                    return self.links[self.active].send(datagram);
                }
                Err(e)
            }
        }
    }

    /// Read one datagram from link `index` into `buf`, received at `now`.
    /// Returns `Ok(None)` when the socket is drained. A datagram from
    /// anyone but the peer is counted and reported as [`Recv::Foreign`],
    /// one from the peer's address but another port than the pinned one as
    /// [`Recv::WrongPort`]; their bytes are not to be read.
    pub fn recv(&mut self, index: usize, now: Instant, buf: &mut [u8]) -> io::Result<Option<Recv>> {
        let Some(link) = self.links.get_mut(index) else { return Ok(None) };
        loop {
            match link.socket.recv_from(buf) {
                Ok((n, from)) => {
                    let was = match link.admit(from, now) {
                        Admit::Peer => None,
                        Admit::PeerMoved { was } => Some(was),
                        Admit::Foreign => {
                            link.stats.foreign_source += 1;
                            return Ok(Some(Recv::Foreign { from }));
                        }
                        Admit::WrongPort { pinned } => {
                            link.stats.foreign_port += 1;
                            return Ok(Some(Recv::WrongPort { from, pinned }));
                        }
                    };
                    link.stats.packets_recv += 1;
                    link.stats.bytes_recv += n as u64;
                    return Ok(Some(match was {
                        None => Recv::Datagram { len: n, from },
                        Some(was) => Recv::PeerMoved { len: n, from, was },
                    }));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors from earlier sends surface here
                    // (ECONNREFUSED when the peer's daemon is down); they
                    // say nothing about this read, so count and go on.
                    link.stats.recv_errors += 1;
                    if link.stats.recv_errors % 1000 == 1 {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Re-read interface states and pick the most preferred usable link.
    /// Returns `Some((from, to))` when the active link changed.
    pub fn refresh(&mut self, now: Instant) -> Option<(usize, usize)> {
        let ifaces = interface_states();
        for link in &mut self.links {
            if let Some(name) = &link.spec.interface {
                let flags = ifaces.iter().find(|(n, _, _)| n == name);
                link.admin_up = flags.is_some_and(|(_, admin, _)| *admin);
                link.interface_up = flags.is_some_and(|(_, admin, running)| *admin && *running);
            }
            if link.failed_until.is_some_and(|t| t <= now) {
                link.failed_until = None;
            }
        }
        let best = self.links.iter().position(|l| l.usable()).unwrap_or(self.active);
        if best != self.active {
            let from = self.active;
            self.active = best;
            self.switches += 1;
            return Some((from, best));
        }
        None
    }

    /// How long a unicast peer's pinned source port must be silent before
    /// another port of its address is taken.
    pub fn port_holdoff(&self) -> Duration {
        self.port_holdoff
    }

    /// Name of link `i` for logs.
    pub fn name(&self, i: usize) -> &str {
        self.links.get(i).map_or("?", |l| l.name.as_str())
    }

    /// The peer's address (or multicast group) on link `i`.
    pub fn peer_addr(&self, i: usize) -> Option<IpAddr> {
        self.links.get(i).map(|l| l.dest.ip())
    }

    /// True when at least one link is usable.
    pub fn any_usable(&self) -> bool {
        self.links.iter().any(Link::usable)
    }

    /// Per-link state and counters.
    pub fn status(&self) -> Vec<LinkStatus> {
        self.links
            .iter()
            .enumerate()
            .map(|(i, l)| LinkStatus {
                name: l.name.clone(),
                device: l.spec.interface.clone().unwrap_or_else(|| l.name.clone()),
                status: match (l.interface_up, l.admin_up) {
                    (true, _) => "RUNNING",
                    (false, true) => "NO-CARRIER",
                    (false, false) => "DOWN",
                },
                up: l.usable(),
                active: i == self.active,
                stats: l.stats,
            })
            .collect()
    }

    /// Addresses this node uses on the sync links (flows to and from them are
    /// sync traffic, not worth replicating).
    pub fn local_addrs(&self) -> Vec<IpAddr> {
        self.links.iter().filter_map(|l| l.spec.local).collect()
    }
}

impl Link {
    fn open(spec: &LinkSpec, port_holdoff: Duration) -> Result<Link, ChannelError> {
        let name = link_name(spec);
        let err = |what: &'static str| {
            let name = name.clone();
            move |source| ChannelError { link: name, what, source }
        };
        let (remote, v6) = match spec.kind {
            ChannelKind::Udp { peer } => (peer, peer.is_ipv6()),
            ChannelKind::Multicast { group } => (group, group.is_ipv6()),
        };
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let socket =
            Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(err("socket"))?;
        socket.set_reuse_address(true).map_err(err("SO_REUSEADDR"))?;
        socket.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
        if let Some(iface) = &spec.interface {
            socket.bind_device(Some(iface.as_bytes())).map_err(err("SO_BINDTODEVICE"))?;
        }
        // The system default (about 200 KiB) overflows during a bulk of 100k
        // flows and turns into NACKs and resends; a few MiB do not.
        let rcvbuf = spec.rcvbuf.unwrap_or(DEFAULT_SOCKET_BUFFER);
        let sndbuf = spec.sndbuf.unwrap_or(DEFAULT_SOCKET_BUFFER);
        force_buffer(&socket, rcvbuf, true).map_err(err("SO_RCVBUFFORCE"))?;
        force_buffer(&socket, sndbuf, false).map_err(err("SO_SNDBUFFORCE"))?;
        let unspecified =
            if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
        let bind_addr = match spec.kind {
            ChannelKind::Udp { .. } => spec.local.unwrap_or(unspecified),
            // A multicast socket must be bound to the group (or the wildcard)
            // to receive it; binding to the group keeps unrelated unicast out.
            ChannelKind::Multicast { group } => group,
        };
        if let ChannelKind::Multicast { group } = spec.kind {
            match (group, spec.local) {
                (IpAddr::V4(g), local) => {
                    let iface = match local {
                        Some(IpAddr::V4(a)) => a,
                        _ => Ipv4Addr::UNSPECIFIED,
                    };
                    socket.join_multicast_v4(&g, &iface).map_err(err("IP_ADD_MEMBERSHIP"))?;
                    socket.set_multicast_if_v4(&iface).map_err(err("IP_MULTICAST_IF"))?;
                    socket.set_multicast_loop_v4(false).map_err(err("IP_MULTICAST_LOOP"))?;
                }
                (IpAddr::V6(g), _) => {
                    let index = spec
                        .interface
                        .as_deref()
                        .map(nix::net::if_::if_nametoindex)
                        .transpose()
                        .map_err(|e| err("if_nametoindex")(io::Error::from(e)))?
                        .unwrap_or(0);
                    socket.join_multicast_v6(&g, index).map_err(err("IPV6_ADD_MEMBERSHIP"))?;
                    socket.set_multicast_if_v6(index).map_err(err("IPV6_MULTICAST_IF"))?;
                    socket.set_multicast_loop_v6(false).map_err(err("IPV6_MULTICAST_LOOP"))?;
                }
            }
        }
        socket.bind(&SocketAddr::new(bind_addr, spec.port).into()).map_err(err("bind"))?;
        let socket = UdpSocket::from_std(socket.into());
        Ok(Link {
            spec: spec.clone(),
            name,
            socket,
            dest: SocketAddr::new(remote, spec.port),
            interface_up: true,
            admin_up: true,
            failed_until: None,
            peer_port: None,
            port_holdoff,
            stats: LinkStats::default(),
        })
    }

    fn usable(&self) -> bool {
        self.interface_up && self.failed_until.is_none()
    }

    fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        loop {
            match self.socket.send_to(datagram, self.dest) {
                Ok(_) => {
                    self.stats.packets_sent += 1;
                    self.stats.bytes_sent += datagram.len() as u64;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                // The peer's port was closed when an earlier datagram arrived
                // (its daemon restarts): the link itself is fine.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(()),
                Err(e) => {
                    self.stats.send_errors += 1;
                    return Err(e);
                }
            }
        }
    }

    /// Decide on a datagram's source, pinning the unicast peer's port.
    fn admit(&mut self, from: SocketAddr, now: Instant) -> Admit {
        let peer = match self.spec.kind {
            ChannelKind::Udp { peer } => peer,
            // Multicast members are not known in advance; the protocol's
            // session and (with a key) authentication decide.
            ChannelKind::Multicast { .. } if Some(from.ip()) == self.spec.local => {
                return Admit::Foreign;
            }
            ChannelKind::Multicast { .. } => return Admit::Peer,
        };
        if canonical(from.ip()) != canonical(peer) {
            return Admit::Foreign;
        }
        let port = from.port();
        match &mut self.peer_port {
            Some(pinned) if pinned.port == port => {
                pinned.last_heard = now;
                Admit::Peer
            }
            // Silent for the hold-off: the peer restarted on a new port.
            Some(pinned)
                if now.saturating_duration_since(pinned.last_heard) >= self.port_holdoff =>
            {
                let was = pinned.port;
                *pinned = PinnedPort { port, last_heard: now };
                Admit::PeerMoved { was }
            }
            Some(pinned) => Admit::WrongPort { pinned: pinned.port },
            None => {
                self.peer_port = Some(PinnedPort { port, last_heard: now });
                Admit::Peer
            }
        }
    }
}

fn link_name(spec: &LinkSpec) -> String {
    let target = match spec.kind {
        ChannelKind::Udp { peer } => format!("udp {peer}:{}", spec.port),
        ChannelKind::Multicast { group } => format!("multicast {group}:{}", spec.port),
    };
    match &spec.interface {
        Some(i) => format!("{target} dev {i}"),
        None => target,
    }
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

fn force_buffer(socket: &Socket, bytes: usize, receive: bool) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let result = if receive {
        setsockopt(socket, sockopt::RcvBufForce, &bytes)
    } else {
        setsockopt(socket, sockopt::SndBufForce, &bytes)
    };
    match result {
        Ok(()) => Ok(()),
        // Without CAP_NET_ADMIN, fall back to the capped variant.
        Err(nix::errno::Errno::EPERM) if receive => socket.set_recv_buffer_size(bytes),
        Err(nix::errno::Errno::EPERM) => socket.set_send_buffer_size(bytes),
        Err(e) => Err(e.into()),
    }
}

/// `(name, up and running)` of every interface in our network namespace.
/// Every interface: name, administratively up (`IFF_UP`), carrier
/// (`IFF_RUNNING`).
fn interface_states() -> Vec<(String, bool, bool)> {
    use nix::net::if_::InterfaceFlags;
    let mut out: Vec<(String, bool, bool)> = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let up = ifa.flags.contains(InterfaceFlags::IFF_UP);
            let running = ifa.flags.contains(InterfaceFlags::IFF_RUNNING);
            if !out.iter().any(|(n, _, _)| *n == ifa.interface_name) {
                out.push((ifa.interface_name, up, running));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unicast(local: &str, peer: &str, port: u16) -> LinkSpec {
        LinkSpec {
            kind: ChannelKind::Udp { peer: peer.parse().unwrap() },
            local: Some(local.parse().unwrap()),
            interface: None,
            port,
            sndbuf: None,
            rcvbuf: None,
        }
    }

    #[test]
    fn a_configured_channel_becomes_a_link_bound_to_its_local_address() {
        let cfg = crate::config::Config::default_for_tests();
        let spec = LinkSpec::from_config(&cfg.sync.channels[0]);
        assert_eq!(
            spec,
            LinkSpec {
                kind: ChannelKind::Udp { peer: "10.255.0.2".parse().unwrap() },
                local: Some("10.255.0.1".parse().unwrap()),
                interface: Some("sync0".to_owned()),
                port: cfg.sync.channels[0].port,
                sndbuf: None,
                rcvbuf: None,
            }
        );
    }

    /// Wait up to half a second for a datagram on link 0 of `ch`.
    fn recv_wait(ch: &mut Channels, now: Instant, buf: &mut [u8]) -> Recv {
        for _ in 0..100 {
            if let Some(r) = ch.recv(0, now, buf).unwrap() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no datagram within 0.5 s");
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn loopback_pair_exchanges_and_filters_sources() {
        // Two links on loopback addresses, each other's peer.
        let port = 40000 + (std::process::id() % 20000) as u16;
        let mut a = Channels::open(&[unicast("127.0.0.1", "127.0.0.2", port)], HOUR).unwrap();
        let mut b = Channels::open(&[unicast("127.0.0.2", "127.0.0.1", port)], HOUR).unwrap();
        let now = Instant::now();
        a.send(now, b"hello").unwrap();
        let mut buf = [0u8; 64];
        // It leaves from the bound sync port, which the peer pins.
        let Recv::Datagram { len, from } = recv_wait(&mut b, now, &mut buf) else {
            panic!("not a datagram from the peer")
        };
        assert_eq!(from, SocketAddr::from(([127, 0, 0, 1], port)));
        assert_eq!(&buf[..len], b"hello");
        // A stranger on loopback is refused and counted.
        let stranger = std::net::UdpSocket::bind("127.0.0.3:0").unwrap();
        stranger.send_to(b"forged", ("127.0.0.2", port)).unwrap();
        let from = stranger.local_addr().unwrap();
        assert_eq!(recv_wait(&mut b, now, &mut buf), Recv::Foreign { from });
        assert_eq!(b.recv(0, now, &mut buf).unwrap(), None);
        assert_eq!(b.status()[0].stats.foreign_source, 1);
        assert_eq!(b.status()[0].stats.foreign_port, 0);
    }

    #[test]
    fn the_peers_address_from_another_port_is_refused_while_its_port_is_heard() {
        let port = 40000 + (std::process::id() % 20000) as u16 + 3;
        let holdoff = Duration::from_millis(50);
        let mut a = Channels::open(&[unicast("127.0.0.1", "127.0.0.2", port)], holdoff).unwrap();
        let mut b = Channels::open(&[unicast("127.0.0.2", "127.0.0.1", port)], holdoff).unwrap();
        // The forger has the peer's address, not its port.
        let forger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let forged_from = forger.local_addr().unwrap();
        let mut buf = [0u8; 64];
        let t0 = Instant::now();
        a.send(t0, b"real").unwrap();
        assert!(matches!(recv_wait(&mut b, t0, &mut buf), Recv::Datagram { .. }));
        // Times on a virtual clock: the hold-off counts from the last
        // datagram of the pinned port, and refusals do not move it.
        for ms in [1, 20, 49] {
            forger.send_to(b"forged", ("127.0.0.2", port)).unwrap();
            let now = t0 + Duration::from_millis(ms);
            let got = recv_wait(&mut b, now, &mut buf);
            assert_eq!(got, Recv::WrongPort { from: forged_from, pinned: port }, "at {ms} ms");
        }
        // The peer is heard again at 49 ms: the forger must wait until 99.
        a.send(t0, b"real").unwrap();
        let at49 = t0 + Duration::from_millis(49);
        assert!(matches!(recv_wait(&mut b, at49, &mut buf), Recv::Datagram { .. }));
        forger.send_to(b"forged", ("127.0.0.2", port)).unwrap();
        let at98 = t0 + Duration::from_millis(98);
        assert_eq!(
            recv_wait(&mut b, at98, &mut buf),
            Recv::WrongPort { from: forged_from, pinned: port }
        );
        let stats = b.status()[0].stats;
        assert_eq!((stats.foreign_port, stats.foreign_source), (4, 0));
        assert_eq!(stats.packets_recv, 2);
    }

    #[test]
    fn a_peer_silent_for_the_holdoff_is_followed_to_its_new_port() {
        let port = 40000 + (std::process::id() % 20000) as u16 + 4;
        let holdoff = Duration::from_millis(50);
        let mut b = Channels::open(&[unicast("127.0.0.2", "127.0.0.1", port)], holdoff).unwrap();
        // Like conntrackd: an unbound socket, a new port at each start.
        let first = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let restarted = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (was, now_at) = (first.local_addr().unwrap(), restarted.local_addr().unwrap());
        let mut buf = [0u8; 64];
        let t0 = Instant::now();
        first.send_to(b"before", ("127.0.0.2", port)).unwrap();
        assert_eq!(recv_wait(&mut b, t0, &mut buf), Recv::Datagram { len: 6, from: was });
        restarted.send_to(b"early", ("127.0.0.2", port)).unwrap();
        let early = t0 + Duration::from_millis(10);
        assert_eq!(
            recv_wait(&mut b, early, &mut buf),
            Recv::WrongPort { from: now_at, pinned: was.port() }
        );
        restarted.send_to(b"after", ("127.0.0.2", port)).unwrap();
        let later = t0 + holdoff;
        assert_eq!(
            recv_wait(&mut b, later, &mut buf),
            Recv::PeerMoved { len: 5, from: now_at, was: was.port() }
        );
        assert_eq!(&buf[..5], b"after");
        // The new port is pinned now; the old one is the stranger.
        restarted.send_to(b"again", ("127.0.0.2", port)).unwrap();
        assert_eq!(recv_wait(&mut b, later, &mut buf), Recv::Datagram { len: 5, from: now_at });
        first.send_to(b"stale", ("127.0.0.2", port)).unwrap();
        assert_eq!(
            recv_wait(&mut b, later + holdoff / 2, &mut buf),
            Recv::WrongPort { from: was, pinned: now_at.port() }
        );
        let stats = b.status()[0].stats;
        assert_eq!((stats.packets_recv, stats.foreign_port), (3, 2));
    }

    #[test]
    fn a_link_whose_interface_is_missing_is_not_used() {
        let port = 40000 + (std::process::id() % 20000) as u16 + 1;
        let mut down = unicast("127.0.0.1", "127.0.0.2", port);
        down.interface = Some("ctsync-nonexistent0".into());
        // SO_BINDTODEVICE on a missing device fails at open, naming the link.
        let err = Channels::open(&[down], HOUR).err().expect("must fail");
        assert!(err.to_string().contains("SO_BINDTODEVICE"), "{err}");
    }

    #[test]
    fn failover_prefers_the_first_usable_link() {
        let port = 40000 + (std::process::id() % 20000) as u16 + 2;
        let mut lo = unicast("127.0.0.1", "127.0.0.2", port);
        lo.interface = Some("lo".into());
        let second = unicast("127.0.0.1", "127.0.0.2", port + 1);
        let mut ch = Channels::open(&[lo, second], HOUR).unwrap();
        assert_eq!(ch.active(), 0);
        let now = Instant::now();
        ch.links[0].failed_until = Some(now + Duration::from_secs(1));
        assert_eq!(ch.refresh(now), Some((0, 1)));
        assert_eq!(ch.refresh(now + Duration::from_secs(2)), Some((1, 0)));
        assert_eq!(ch.switches(), 2);
    }
}
