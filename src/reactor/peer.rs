//! Peer side of the reactor: datagrams into the protocol core, its events
//! into the external cache (and the kernel in direct mode), its output to
//! the links; anti-entropy brings the caches' digests and flows to the core,
//! which decides when.

use super::*;

/// What reading the sync links touches, borrowed apart from the caches so
/// that a commit can go on reading them while it walks the external cache.
pub(super) struct Links<'a> {
    pub channels: &'a mut Channels,
    pub reject_log: &'a mut reject::RejectLog,
    pub links_pending: &'a mut u64,
}

impl Links<'_> {
    /// Read up to [`DATAGRAM_BATCH`] datagrams from `link` into the core.
    pub(super) fn read(&mut self, ftfw: &mut Ftfw, now: Instant, link: usize) {
        let mut buf = [0u8; 65536];
        *self.links_pending &= !(1 << link);
        for read in 0.. {
            if read == DATAGRAM_BATCH {
                *self.links_pending |= 1 << link;
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
            if let Some(refusal) = ftfw.handle_datagram(now, &buf[..len]) {
                let name = self.channels.name(link);
                self.reject_log.note(refusal.into(), from, name, now);
            }
        }
    }

    /// Between the batches of a long commit: read every link, and let the
    /// core answer (ACK, ALIVE, and what else it has to send), so that the
    /// peer does not take this node for down and its stream does not
    /// stall. The peer's changes wait in the core until the commit is
    /// done: the external cache is what is being committed.
    pub(super) fn interlude(&mut self, ftfw: &mut Ftfw, now: Instant) {
        for link in 0..self.channels.len() {
            self.read(ftfw, now, link);
        }
        if ftfw.poll_timeout().is_some_and(|t| t <= now) {
            ftfw.handle_timeout(now);
        }
        let mut buf = [0u8; 65536];
        while let Some(n) = ftfw.poll_transmit(now, &mut buf) {
            // A full socket loses the datagram, as a lossy link would; the
            // protocol sends its content again.
            if self.channels.send(now, &buf[..n]).is_err() {
                break;
            }
        }
    }
}

/// Keeps the peer answered and the watchdog fed while a long kernel
/// operation (a commit, a dump of the table) holds the loop: every
/// [`INTERLUDE`] at most, when [`Interlude::tick`] is called between its
/// steps. Not in direct-to-kernel mode (`links` is `None`), where an ACK
/// says that the peer's flows are in this kernel.
pub(super) struct Interlude<'a> {
    pub links: Option<Links<'a>>,
    pub watchdog: &'a mut Option<(Duration, Instant)>,
    pub next: Instant,
}

impl Interlude<'_> {
    pub(super) fn tick(&mut self, ftfw: &mut Ftfw) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + INTERLUDE;
        if let Some(links) = &mut self.links {
            links.interlude(ftfw, now);
        }
        if let Some((interval, last)) = *self.watchdog
            && last + interval <= now
        {
            systemd::notify_watchdog();
            *self.watchdog = Some((interval, now));
        }
    }
}

impl Daemon {
    pub(super) fn on_datagrams(&mut self, now: Instant, link: usize) {
        let mut links = Links {
            channels: &mut self.channels,
            reject_log: &mut self.reject_log,
            links_pending: &mut self.links_pending,
        };
        links.read(&mut self.node.ftfw, now, link);
    }

    /// Drain the protocol core: apply peer events, transmit, and let it
    /// re-arm its timer.
    pub(super) fn drive_protocol(&mut self, now: Instant) {
        if self.node.ftfw.poll_timeout().is_some_and(|t| t <= now) {
            self.node.ftfw.handle_timeout(now);
        }
        // Apply the peer's changes before acknowledging them: in
        // direct-to-kernel mode an ACK then means the flows are in this
        // kernel, which the peer's deferred packets wait for.
        while let Some(event) = self.node.ftfw.poll_event() {
            if let Some(action) = self.node.on_peer_event(now, event) {
                self.act(now, action);
            }
        }
        self.flush_direct(now);
        let mut buf = [0u8; 65536];
        if let Some(bytes) = self.unsent.take()
            && !self.send(now, &bytes)
        {
            return;
        }
        while let Some(n) = self.node.ftfw.poll_transmit(now, &mut buf) {
            if !self.send(now, &buf[..n]) {
                break;
            }
        }
    }

    /// Direct-to-kernel mode, the `-t` scheduled at the last backup
    /// transition: the flows in our kernel that the new master's table does
    /// not hold are leftovers of our time as master.
    pub(super) fn purge_zombies(&mut self) {
        let external = &self.node.external;
        let secs = self.purge_timeout();
        match self.kernel.set_timeout_where(secs, |f| external.get(&f.key()).is_none()) {
            Ok(n) => log::info!(
                "{n} kernel flows the peer does not hold now expire in {secs} s unless traffic refreshes them"
            ),
            Err(e) => log::error!("purging the flows the peer does not hold failed: {e}"),
        }
    }

    /// Direct-to-kernel mode: write this turn's peer changes in one batch.
    pub(super) fn flush_direct(&mut self, now: Instant) {
        let opts = self.commit_options();
        if let Some(direct) = self.node.direct.as_mut().filter(|d| d.has_pending()) {
            direct.flush(&mut self.kernel, &opts, now);
        }
    }

    /// Send one datagram; false when the socket is full and the bytes were
    /// kept for the next turn.
    pub(super) fn send(&mut self, now: Instant, bytes: &[u8]) -> bool {
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

    /// Carry out what the node asked for.
    fn act(&mut self, now: Instant, action: Action) {
        match action {
            Action::Ready => {
                if let Err(e) = self.node.readiness.publish() {
                    log::error!("cannot mark this node ready for keepalived: {e}");
                }
            }
            Action::RefillThenBulk => {
                if let Err(e) = self.resync_kernel(false, true) {
                    log::warn!(
                        "cannot dump the conntrack table for the peer's resync request: {e}; sending the internal cache as it is"
                    );
                }
                self.node.internal_flushed = false;
                self.node.bulk_requested(now);
            }
            Action::PeerUp => self.peer_down_since = None,
            Action::PeerDown => self.peer_down_since = Some(SystemTime::now()),
            Action::Stalled { tx, rx } => log::error!(
                "replication with {} has stalled: the peer is heard from, but for {:?} {}; check both daemons' -s protocol counters and the sync link's filtering",
                self.channels.name(self.channels.active()),
                self.node.ftfw.config().stall_timeout,
                match (tx, rx) {
                    (true, true) =>
                        "nothing we sent was acknowledged and nothing it sent was accepted",
                    (true, false) => "nothing we sent was acknowledged",
                    _ => "nothing it sent was accepted (late or far ahead)",
                }
            ),
        }
    }
}
