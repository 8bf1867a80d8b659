//! The kernel adapter: ctnetlink events, dumps and batched commits.
//!
//! - [`EventSocket`]: a non-blocking subscription to conntrack events, read
//!   in batches from the reactor; [`decode_events`] is its pure decoder.
//! - [`Kernel`]: a blocking request socket for dump, commit, delete, timeout
//!   updates and flush. Writes are batched, many messages per `sendmsg`,
//!   with one acknowledgement per batch.
//! - [`convert`]: the only place that knows how a [`crate::flow::Flow`]
//!   maps to ctnetlink attributes.

/// `mio::event::Source` for a type that polls through its netlink socket
/// field.
macro_rules! mio_source {
    ($ty:ty, $field:ident) => {
        impl mio::event::Source for $ty {
            fn register(
                &mut self,
                registry: &mio::Registry,
                token: mio::Token,
                interests: mio::Interest,
            ) -> std::io::Result<()> {
                self.$field.register(registry, token, interests)
            }

            fn reregister(
                &mut self,
                registry: &mio::Registry,
                token: mio::Token,
                interests: mio::Interest,
            ) -> std::io::Result<()> {
                self.$field.reregister(registry, token, interests)
            }

            fn deregister(&mut self, registry: &mio::Registry) -> std::io::Result<()> {
                self.$field.deregister(registry)
            }
        }
    };
}
use mio_source;

pub mod convert;
mod event;
pub mod expect;
mod kernel;
#[cfg(test)]
pub mod memtable;
mod msg;
pub mod queue;

pub use convert::{ConvertError, EmitOptions};
pub use event::{
    CtEvent, DecodeStats, EventConfig, EventItem, EventSocket, EventStats, decode_events,
};
pub use kernel::{COMMIT_PASSES, CommitOps, CommitOptions, CommitReport, Kernel, Table, settle};
pub use msg::{ct_message, ct_msg_type, exp_message};
