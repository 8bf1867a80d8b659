//! The kernel adapter: ctnetlink events, dumps and batched commits.
//!
//! - [`EventSocket`]: a non-blocking subscription to conntrack events, read
//!   in batches from the reactor; [`decode_events`] is its pure decoder.
//! - [`Kernel`]: a blocking request socket for dump, commit, delete, timeout
//!   updates and flush. Writes are batched, many messages per `sendmsg`,
//!   with one acknowledgement per batch.
//! - [`convert`]: the only place that knows how a [`crate::flow::Flow`]
//!   maps to ctnetlink attributes.

pub mod convert;
mod event;
pub mod expect;
mod kernel;
mod msg;
pub mod queue;

pub use convert::{ConvertError, EmitOptions};
pub use event::{
    CtEvent, DecodeStats, EventConfig, EventItem, EventSocket, EventStats, decode_events,
};
pub use kernel::{CommitOptions, CommitReport, Kernel};
pub use msg::{ct_message, ct_msg_type, exp_message};
