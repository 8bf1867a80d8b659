//! Operator requests: what `-c`, `-f`, `-R`, `-n`, `-s`, `-i`/`-e` and
//! the others do, and the reports and metrics they read.

use super::*;

impl Daemon {
    /// Carry out one operator request; the text (or JSON) to print, or an
    /// error line.
    pub(super) fn execute(&mut self, request: Request, json: bool) -> Result<String, RequestError> {
        match request {
            Request::Commit => {
                if let Some(direct) = &mut self.node.direct {
                    direct.set_role(Role::Master);
                }
                self.commit()
            }
            Request::FlushCache(which) => {
                let (i, e) = match which {
                    Some(CacheSel::Internal) => (true, false),
                    Some(CacheSel::External) => (false, true),
                    None => (true, true),
                };
                let (internal, external) = self.node.flush_caches(i, e);
                let mut out = String::new();
                if i {
                    let _ = writeln!(out, "flushed {internal} flows from the internal cache");
                }
                if e {
                    let _ = writeln!(out, "flushed {external} flows from the external cache");
                }
                Ok(out)
            }
            Request::FlushKernel => {
                if let Some(direct) = &mut self.node.direct {
                    direct.lost_track();
                }
                self.kernel.flush().map_err(KernelOp::Flush.failed())?;
                Ok("kernel conntrack table flushed\n".into())
            }
            Request::ResyncKernel => {
                let (changed, gone) =
                    self.resync_kernel(true, true).map_err(KernelOp::Dump.failed())?;
                self.node.internal_flushed = false;
                Ok(format!(
                    "internal cache resynced with the kernel: {} flows, {changed} new or changed, {gone} gone\n",
                    self.node.internal.len()
                ))
            }
            Request::BulkSend => {
                if self.node.bulk_send() {
                    Ok(format!("bulk send of {} flows queued\n", self.node.internal.len()))
                } else {
                    Ok(format!(
                        "no peer has answered yet: all {} flows go to the peer when it does (it asks for them)\n",
                        self.node.internal.len()
                    ))
                }
            }
            Request::RequestResync => {
                self.node.ftfw.request_resync();
                Ok("resync requested from the peer\n".into())
            }
            Request::Purge => {
                let secs = self.purge_timeout();
                if let Some(direct) = &mut self.node.direct {
                    // The peer's flows in our kernel are its replicas, not
                    // zombies of our time as master; which are which is
                    // known once the new master's table is here.
                    direct.schedule_purge(Instant::now() + Duration::from_secs(secs.into()));
                    return Ok(format!(
                        "in {secs} s, kernel flows the peer does not hold will be set to expire in {secs} s unless traffic refreshes them\n"
                    ));
                }
                let n =
                    self.kernel.set_timeout_all(secs).map_err(KernelOp::SetTimeouts.failed())?;
                Ok(format!(
                    "{n} kernel flows now expire in {secs} s unless traffic refreshes them\n"
                ))
            }
            Request::Kill => {
                self.stop = true;
                Ok("ctsyncd stopping\n".into())
            }
            Request::Stats(section) => Ok(self.stats_report(section, json)),
            Request::Metrics => Ok(metrics::render(&self.report())),
            Request::DumpInternal => Ok(dump(&self.node.internal, json)),
            Request::DumpExternal => Ok(dump(&self.node.external, json)),
            Request::DumpExpectations(which) => {
                let cache = match which {
                    CacheSel::Internal => &self.node.exp.internal,
                    CacheSel::External => &self.node.exp.external,
                };
                Ok(crate::expect::dump(cache, json))
            }
            Request::Reload => self.reload().map(|line| line + "\n"),
            // The answer itself is the proof of life: keepalived's check
            // fails when nothing answers, so only a running daemon with
            // the peer's table can make a node look ready.
            Request::CheckReady if self.node.readiness.is_ready() => {
                Ok("ready: this node holds the peer's complete table and may take over\n".into())
            }
            Request::CheckReady => Err(RequestError::NotReady),
            Request::TestDropPeerFlows(on) => {
                if !self.test_hooks {
                    return Err(RequestError::TestHooksOff);
                }
                self.node.test_drop_peer_flows = on;
                log::warn!(
                    "test hook: the peer's flow messages are {}",
                    if on { "dropped" } else { "applied again" }
                );
                Ok(format!("peer flow messages {}\n", if on { "dropped" } else { "applied" }))
            }
        }
    }

    pub(super) fn commit_options(&self) -> CommitOptions {
        // In direct-to-kernel mode what the kernel holds is the peer's
        // latest state or newer local state: only fill in what expired.
        CommitOptions::from_sync(&self.cfg.sync, self.node.direct.is_some())
    }

    /// The timeout `-t` gives every kernel entry (`sync.purge_timeout`),
    /// in seconds.
    pub(super) fn purge_timeout(&self) -> u32 {
        self.cfg.sync.purge_timeout.as_secs().min(u64::from(u32::MAX)) as u32
    }

    pub(super) fn commit(&mut self) -> Result<String, RequestError> {
        let started = Instant::now();
        // What the kernel made until now must be in the internal cache
        // before the conflicts are looked for.
        self.drain_kernel_events(started);
        let opts = self.commit_options();
        // Between batches the peer is answered and the watchdog fed.
        let mut pause = interlude!(self, started + INTERLUDE);
        // The events of the commit's moments are read between its batches
        // (see Kernel::commit_with) and applied once it is done.
        let mut during = Vec::new();
        let events = &mut self.events;
        let mut between = |ftfw: &mut Ftfw| {
            if let Err(e) = events.recv(&mut during, usize::MAX) {
                log::warn!("reading conntrack events during the commit failed: {e}");
            }
            pause.tick(ftfw);
        };
        let result = self.node.commit(&mut self.kernel, &opts, &mut between);
        self.handle_kernel_events(Instant::now(), &mut during);
        let Committed { report, conflicts_deleted: displaced, first_conflict } =
            result.map_err(|e| match e {
                CommitError::DeleteConflicts(e) => KernelOp::DeleteConflicts.failed()(e),
                CommitError::Commit(e) => KernelOp::Commit.failed()(e),
            })?;
        if let Some(first) = first_conflict {
            log::warn!(
                "commit: {displaced} kernel entries stood in the way of synced flows' NAT mappings and were deleted (first: {first}); packets that reached this node's virtual IPs before the commit made them"
            );
        }
        self.stats.commits += 1;
        self.commit_seconds.observe(started.elapsed().as_secs_f64());
        self.stats.commit_failures += report.failed.len() as u64;
        for (key, errno) in report.failed.iter().take(5) {
            log::warn!("commit of {key} failed: {}", io::Error::from_raw_os_error(*errno));
        }
        self.stats.commit_displaced += (displaced + report.displaced.len()) as u64;
        if let Some(first) = report.displaced.first() {
            log::warn!(
                "commit: {} kernel entries held the NAT mapping of a synced flow and were deleted for it (first: {first}); they were made by packets that reached this node's virtual IPs before the commit",
                report.displaced.len()
            );
        }
        let mut line = format!("committed {}", report.summary());
        if displaced > 0 {
            let _ = write!(
                line,
                "; {displaced} entries in the way of synced flows' NAT mappings deleted first"
            );
        }
        log::info!("{line}");
        if !self.node.exp.sync.enabled() {
            return Ok(line + "\n");
        }
        let failed: std::collections::HashSet<_> = report.failed.iter().map(|(k, _)| *k).collect();
        let exp_line = self.commit_expectations(&failed)?;
        Ok(format!("{line}\n{exp_line}\n"))
    }

    /// Commit the external expectations whose master is now in the kernel:
    /// committed from the external cache just now (and not in `failed`),
    /// or one of this kernel's own flows.
    pub(super) fn commit_expectations(
        &mut self,
        failed: &std::collections::HashSet<crate::flow::FlowKey>,
    ) -> Result<String, RequestError> {
        let (external, internal, kernel) =
            (&self.node.external, &self.node.internal, &mut self.kernel);
        self.node
            .exp
            .commit(
                |m| (external.get(m).is_some() && !failed.contains(m)) || internal.get(m).is_some(),
                |ready| {
                    let done = kernel.commit_expectations(ready)?;
                    Ok(ExpWritten {
                        created: done.created,
                        updated: done.updated,
                        failed: done.failed,
                    })
                },
            )
            .map_err(KernelOp::CommitExpectations.failed())
    }

    /// Start a bulk of the internal cache now.
    pub(super) fn stats_report(
        &self,
        section: Option<control::StatsSection>,
        json: bool,
    ) -> String {
        let report = self.report();
        if json {
            return serde_json::to_string_pretty(&report).unwrap_or_default() + "\n";
        }
        report.to_text(section)
    }

    /// The counters `-s` and the metrics show.
    pub(super) fn report(&self) -> StatsReport {
        let links = self.channels.status();
        let state = match self.node.ftfw.peer_state() {
            PeerState::Established => PeerPhase::Up,
            PeerState::Silent => PeerPhase::Down,
            PeerState::HelloSent if self.peer_down_since.is_some() => PeerPhase::Down,
            PeerState::HelloSent => PeerPhase::Waiting,
        };
        let active = self.channels.active();
        StatsReport {
            uptime_seconds: self.started.elapsed().as_secs(),
            synced: self.node.ftfw.is_synced(),
            ready: self.node.readiness.is_ready(),
            internal: self.node.internal.stats(),
            external: self.node.external.stats(),
            runtime: RuntimeStats {
                events_filtered: self.node.events_filtered,
                events_stale: self.node.events_stale,
                ..self.stats
            },
            netlink: self.events.stats(),
            netlink_rcvbuf: self.events.rcvbuf(),
            protocol: self.node.ftfw.stats().clone(),
            anti_entropy: self.node.repairs.stats,
            links,
            expectations: self.node.exp.sync.enabled().then(|| ExpReport {
                internal: self.node.exp.internal.stats(),
                external: self.node.exp.external.stats(),
                runtime: self.node.exp.stats,
            }),
            direct: self.node.direct.as_ref().map(DirectToKernel::stats).unwrap_or_default(),
            defer: self
                .defer
                .as_ref()
                .zip(self.node.defer.as_ref())
                .map(|(d, n)| DeferReport { held: n.held.stats(), queue: d.queue.stats() }),
            peer: PeerView {
                addr: self.channels.peer_addr(active).map(|a| a.to_string()).unwrap_or_default(),
                state,
                down_since: self.peer_down_since,
            },
            resend_queue_max: self.node.ftfw.config().resend_queue as u64,
            unsent_pending: self.unsent.is_some(),
            defer_max_held: self.cfg.sync.defer.as_ref().map_or(0, |d| u64::from(d.max_held)),
            defer_hold: self.node.defer.as_ref().map(|d| d.held.hold_histogram()),
            commit_seconds: self.commit_seconds.clone(),
        }
    }

    /// Send the systemd status line if it changed (called once a second).
    pub(super) fn update_status(&mut self) {
        let line = self.report().status_line();
        if line != self.status_sent {
            systemd::notify_status(&line);
            self.status_sent = line;
        }
    }

    /// A metrics scrape is ready to accept, read or write.
    pub(super) fn on_metrics(&mut self, token: Token) {
        let Some(mut server) = self.metrics.take() else { return };
        if token == metrics::LISTENER {
            server.accept(self.poll.registry());
        } else {
            server.on_ready(self.poll.registry(), token, || metrics::render(&self.report()));
        }
        self.metrics = Some(server);
    }
}

fn dump(cache: &Cache, json: bool) -> String {
    let mut out = String::with_capacity(cache.len() * 160);
    for entry in cache.iter() {
        if json {
            // One JSON object per line, so a million flows stream and parse
            // line by line.
            let _ = writeln!(out, "{}", serde_json::to_string(&entry.flow).unwrap_or_default());
        } else {
            let _ = writeln!(out, "{}", entry.flow);
        }
    }
    out
}
