//! The commit's plan (`-c`): which of our kernel's entries go first, in
//! which order the peer's flows are written, and what the caches and the
//! peer learn from the kernel's answer. Run against any [`Table`]: the
//! kernel in the daemon, a table in memory in the simulations.

use std::io;

use super::{Node, commit_order};
use crate::flow::FlowKey;
use crate::ftfw::Ftfw;
use crate::netlink::{CommitOptions, CommitReport, Table};

/// What a commit did.
#[derive(Debug, Default)]
pub struct Committed {
    /// The write of the external cache.
    pub report: CommitReport,
    /// Our entries deleted first because they held a synced flow's NAT
    /// mapping, and the first of them.
    pub conflicts_deleted: usize,
    pub first_conflict: Option<FlowKey>,
}

/// The step of a commit the kernel refused.
#[derive(Debug)]
pub enum CommitError {
    DeleteConflicts(io::Error),
    Commit(io::Error),
}

impl Node {
    /// Write the external cache into `table`. `between` runs between the
    /// table's batches with the protocol core, so that the caller can
    /// answer the peer during a long commit (the caches are being read).
    /// The table's events of the commit's moments are the caller's to
    /// apply afterwards ([`Node::local_upsert`], [`Node::local_destroy`]),
    /// after the ones it made before the commit.
    pub fn commit<T: Table + ?Sized>(
        &mut self,
        table: &mut T,
        opts: &CommitOptions,
        between: &mut dyn FnMut(&mut Ftfw),
    ) -> Result<Committed, CommitError> {
        let conflicts = self.commit_conflicts();
        let mut done =
            Committed { first_conflict: conflicts.first().copied(), ..Committed::default() };
        if !conflicts.is_empty() {
            let report = table.delete_flows(&conflicts).map_err(CommitError::DeleteConflicts)?;
            done.conflicts_deleted = report.deleted;
        }
        self.forget_deleted(&conflicts);
        let Node { external, direct, ftfw, .. } = self;
        let order = commit_order(external, direct.as_ref());
        let report =
            table.commit_flows(order, opts, &mut || between(ftfw)).map_err(CommitError::Commit)?;
        if let Some(direct) = &mut self.direct {
            direct.set_missing(report.failed.iter().map(|(k, _)| *k));
        }
        self.forget_deleted(&report.displaced);
        done.report = report;
        Ok(done)
    }
}
