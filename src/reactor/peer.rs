//! Peer side of the reactor: datagrams into the protocol core, its events
//! into the external cache (and the kernel in direct mode), its output to
//! the links; anti-entropy brings the caches' digests and flows to the core,
//! which decides when.

use super::*;

impl Daemon {
    pub(super) fn on_datagrams(&mut self, now: Instant, link: usize) {
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
    pub(super) fn drive_protocol(&mut self, now: Instant) {
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

    /// Direct-to-kernel mode, the `-t` scheduled at the last backup
    /// transition: the flows in our kernel that the new master's table does
    /// not hold are leftovers of our time as master.
    pub(super) fn purge_zombies(&mut self) {
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
    pub(super) fn flush_direct(&mut self, now: Instant) {
        let opts = self.commit_options();
        if let Some(direct) = self.direct.as_mut().filter(|d| d.has_pending()) {
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

    /// A flow from the peer into the external cache and, in direct mode,
    /// towards the kernel.
    pub(super) fn peer_upsert(&mut self, flow: Flow, stamp: u64) -> Upsert {
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

    pub(super) fn on_peer_event(&mut self, now: Instant, event: PeerEvent) {
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

impl Daemon {
    pub(super) fn on_anti_entropy(&mut self, now: Instant, event: PeerEvent) {
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
