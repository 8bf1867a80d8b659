//! ctsync: keeps the Linux connection-tracking tables of two firewalls in
//! sync, so that established flows survive a keepalived failover.
//!
//! Layers, from the kernel to the peer:
//! [`netlink`] ⇄ [`flow::Flow`] ⇄ [`cache`] ⇄ [`ftfw`] ⇄ [`wire`] ⇄ [`channel`].
#![forbid(unsafe_code)]

pub mod cache;
pub mod channel;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod defer;
pub mod digest;
pub mod direct;
pub mod expect;
pub mod filter;
pub mod flow;
pub mod ftfw;
#[cfg(test)]
mod handover_sim;
pub mod logging;
pub mod metrics;
pub mod netlink;
pub mod node;
pub mod reactor;
pub mod readiness;
pub mod reject;
pub mod stats;
pub mod systemd;
pub mod wire;
