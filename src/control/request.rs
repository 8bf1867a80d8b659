//! The request model: what the CLI asks ([`Request`], with the cache and
//! statistics section it names) and what the daemon answers
//! ([`ControlReply`]), independent of how they travel.

use std::fmt;

use super::codec::{encode_chunk_into, encode_status_into};

/// What the CLI asks the daemon to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// `-c`: commit the external cache into the kernel.
    Commit,
    /// `-f`: flush one cache, or both (`None`).
    FlushCache(Option<CacheSel>),
    /// `-F`: flush the kernel's conntrack table.
    FlushKernel,
    /// `-R`: refill the internal cache from a kernel dump.
    ResyncKernel,
    /// `-B`: send the whole internal cache to the peers.
    BulkSend,
    /// `-n`: ask the peers for a bulk send.
    RequestResync,
    /// `-t`: flush the kernel table after `sync.purge_timeout`.
    Purge,
    /// `-k`: stop the daemon.
    Kill,
    /// `-s`: statistics, all general ones (`None`) or one section.
    Stats(Option<StatsSection>),
    /// `-s --prometheus`: every metric in the Prometheus text format.
    Metrics,
    /// `-i`: dump the internal cache.
    DumpInternal,
    /// `-e`: dump the external cache.
    DumpExternal,
    /// `-i expect` / `-e expect`: dump a cache's expectations.
    DumpExpectations(CacheSel),
    /// Re-read the sync key file (and nothing else).
    Reload,
    /// `--check-ready`: succeed only if this node holds the peer's complete
    /// table. keepalived runs it as a `vrrp_script`: a daemon that is
    /// stopped, killed or stuck answers nothing, so the check fails closed.
    CheckReady,
    /// Test suites only, honoured by a daemon started with `--test-hooks`:
    /// drop (true) or apply again (false) the peer's flow messages, so that
    /// the external cache drifts on purpose (anti-entropy tests).
    TestDropPeerFlows(bool),
}

/// Which cache `-f` flushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheSel {
    /// The flows of this firewall's kernel.
    Internal,
    /// The flows received from the peers.
    External,
}

/// The statistics sections of `-s`, conntrackd's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsSection {
    /// Sync protocol counters: malformed, lost, out of order messages.
    Network,
    /// Cache counters.
    Cache,
    /// Kernel events, overruns, resyncs.
    Runtime,
    /// Per-channel traffic and state (`multicast` is an alias).
    Link,
    /// Sequence numbers waiting in the resend queue.
    Rsqueue,
    /// Child processes (none: kept for compatibility).
    Process,
    /// Queue lengths.
    Queue,
    /// Flow statistics of the kernel table.
    Ct,
    /// Expectation statistics.
    Expect,
}

impl StatsSection {
    /// Every section, in the order of their names' table.
    pub const ALL: [StatsSection; 9] = [
        StatsSection::Network,
        StatsSection::Cache,
        StatsSection::Runtime,
        StatsSection::Link,
        StatsSection::Rsqueue,
        StatsSection::Process,
        StatsSection::Queue,
        StatsSection::Ct,
        StatsSection::Expect,
    ];

    /// The name `-s` takes.
    pub fn name(self) -> &'static str {
        match self {
            StatsSection::Network => "network",
            StatsSection::Cache => "cache",
            StatsSection::Runtime => "runtime",
            StatsSection::Link => "link",
            StatsSection::Rsqueue => "rsqueue",
            StatsSection::Process => "process",
            StatsSection::Queue => "queue",
            StatsSection::Ct => "ct",
            StatsSection::Expect => "expect",
        }
    }
}

/// Largest body frame the daemon sends: a long answer (a dump of a large
/// cache) goes out as many frames of this size.
pub const REPLY_CHUNK: usize = 60 * 1024;

/// The daemon's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlReply {
    /// The request succeeded: text, or JSON when the request asked for it,
    /// that the client prints to stdout.
    Ok(String),
    /// The request failed: the line that says why, which the client prints
    /// to stderr.
    Failed(String),
}

impl ControlReply {
    /// The frames for this answer: a success's body in frames of at most
    /// [`REPLY_CHUNK`] bytes (none for an empty body) then an ok status; a
    /// failure's reason travels as the status message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// [`ControlReply::encode`], appending to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            ControlReply::Ok(body) => {
                out.reserve(body.len() + 16);
                for chunk in body.as_bytes().chunks(REPLY_CHUNK) {
                    encode_chunk_into(out, chunk);
                }
                encode_status_into(out, true, "");
            }
            ControlReply::Failed(reason) => encode_status_into(out, false, reason),
        }
    }
}

impl<E: fmt::Display> From<Result<String, E>> for ControlReply {
    /// A request's outcome: its output, or its error's text.
    fn from(result: Result<String, E>) -> ControlReply {
        match result {
            Ok(body) => ControlReply::Ok(body),
            Err(e) => ControlReply::Failed(e.to_string()),
        }
    }
}
