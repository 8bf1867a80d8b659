//! Two `ctsyncd` daemons in two firewall namespaces joined by a sync link,
//! against the real kernel: replication, commit, restarts, operator flags,
//! hostile datagrams and netlink overruns.
//!
//! Needs root. Every test builds its own namespaces and removes them.

#[path = "../common/mod.rs"]
mod common;

mod harness;

mod attacks;
mod cli;
mod keys;
mod readiness;
mod replication;
