//! What can fail in the daemon's own work: starting (the one line
//! `ctsyncd` logs before it exits), and a control request (the reason sent
//! back to the client).

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::channel::ChannelError;
use crate::control::ControlError;
use crate::metrics;

use super::MAX_LINKS;

/// Why the daemon could not start. Its text is the one line `ctsyncd`
/// logs before it exits with status 1.
#[derive(Debug)]
pub enum StartError {
    /// `epoll` could not be created.
    EventLoop(io::Error),
    /// The conntrack event subscription failed: no root or CAP_NET_ADMIN,
    /// or no `nf_conntrack_netlink` module.
    Events(io::Error),
    /// The ctnetlink socket for commits and dumps could not be opened.
    Ctnetlink(io::Error),
    /// More sync channels than the daemon can poll.
    TooManyChannels(usize),
    /// A sync channel could not be opened.
    Channel(ChannelError),
    /// The control socket's directory could not be created.
    ControlDir {
        /// The directory.
        dir: PathBuf,
        /// Why not.
        source: io::Error,
    },
    /// Another daemon answers on the control socket.
    ControlInUse(PathBuf),
    /// The control socket could not be bound, given to its group, or set
    /// to its mode.
    Control {
        /// Which of these.
        step: ControlStep,
        /// The control socket.
        path: PathBuf,
        /// Why not.
        source: io::Error,
    },
    /// The signal handlers could not be installed.
    Signals(io::Error),
    /// A socket could not join the event loop.
    Register(io::Error),
    /// The metrics endpoint could not be opened.
    Metrics(metrics::BindError),
    /// The `sync.defer` packet queue could not be opened.
    Defer(io::Error),
    /// The first dump of the conntrack table failed.
    Dump(io::Error),
    /// The ready file could not be written.
    ReadyFile {
        /// The file.
        path: PathBuf,
        /// Why not.
        source: io::Error,
    },
}

/// What was done to the control socket when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlStep {
    /// Binding it.
    Bind,
    /// Giving it to `general.control_group`.
    Group,
    /// Setting its mode.
    Mode,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::EventLoop(e) => write!(f, "cannot create the event loop: {e}"),
            StartError::Events(e) => write!(
                f,
                "cannot subscribe to conntrack events: {e} (needs root or CAP_NET_ADMIN and the nf_conntrack_netlink module)"
            ),
            StartError::Ctnetlink(e) => write!(f, "cannot open a ctnetlink socket: {e}"),
            StartError::TooManyChannels(n) => write!(
                f,
                "sync.channels: {n} channels configured, at most {MAX_LINKS} are supported"
            ),
            StartError::Channel(e) => e.fmt(f),
            StartError::ControlDir { dir, source } => {
                write!(f, "cannot create {}: {source}", dir.display())
            }
            StartError::ControlInUse(path) => write!(
                f,
                "control socket {} is in use: another ctsyncd runs with this config (stop it with ctsyncd -k)",
                path.display()
            ),
            StartError::Control { step, path, source } => {
                let path = path.display();
                match step {
                    ControlStep::Bind => write!(f, "cannot bind control socket {path}: {source}"),
                    ControlStep::Group => write!(
                        f,
                        "cannot give control socket {path} to general.control_group: {source}"
                    ),
                    ControlStep::Mode => {
                        write!(f, "cannot set the mode of control socket {path}: {source}")
                    }
                }
            }
            StartError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            StartError::Register(e) => {
                write!(f, "cannot register a socket with the event loop: {e}")
            }
            StartError::Metrics(e) => e.fmt(f),
            StartError::Defer(e) => write!(f, "sync.defer: {e}"),
            StartError::Dump(e) => write!(f, "cannot dump the conntrack table: {e}"),
            StartError::ReadyFile { path, source } => {
                write!(f, "cannot write the ready file {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::EventLoop(e)
            | StartError::Events(e)
            | StartError::Ctnetlink(e)
            | StartError::Signals(e)
            | StartError::Register(e)
            | StartError::Defer(e)
            | StartError::Dump(e)
            | StartError::ControlDir { source: e, .. }
            | StartError::Control { source: e, .. }
            | StartError::ReadyFile { source: e, .. } => Some(e),
            StartError::Channel(e) => Some(e),
            StartError::Metrics(e) => Some(e),
            StartError::TooManyChannels(_) | StartError::ControlInUse(_) => None,
        }
    }
}

/// Why an operator request failed. Its text is the status line the client
/// prints to stderr (and, for a SIGHUP reload, the logged error).
#[derive(Debug)]
pub enum RequestError {
    /// The request frame could not be decoded: a CLI of another version, or
    /// a client that does not speak the control protocol.
    Malformed(ControlError),
    /// A kernel operation failed; nothing after it in the request was done.
    Kernel {
        /// Which operation.
        op: KernelOp,
        /// The kernel's (or the socket's) error.
        source: io::Error,
    },
    /// The sync key file could not be read or is invalid; the keys in use
    /// stay.
    KeyFile(crate::config::KeyFileError),
    /// `--check-ready` on a node that has not received the peer's whole
    /// table since it started.
    NotReady,
    /// A test-suite request to a daemon started without `--test-hooks`.
    TestHooksOff,
}

/// The kernel operations an operator request runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelOp {
    /// `-F`: flush the conntrack table.
    Flush,
    /// `-R`: dump the table into the internal cache.
    Dump,
    /// `-t`: set every entry's timeout.
    SetTimeouts,
    /// `-c`: delete the local entries holding synced flows' NAT mappings.
    DeleteConflicts,
    /// `-c`: write the external cache's flows.
    Commit,
    /// `-c`: write the external cache's expectations.
    CommitExpectations,
}

impl KernelOp {
    /// What the operation does, as the start of its error line.
    pub fn description(self) -> &'static str {
        match self {
            KernelOp::Flush => "flushing the kernel table",
            KernelOp::Dump => "dumping the kernel table",
            KernelOp::SetTimeouts => "setting kernel timeouts",
            KernelOp::DeleteConflicts => "deleting the entries in the way of synced flows",
            KernelOp::Commit => "commit to the kernel",
            KernelOp::CommitExpectations => "commit of expectations to the kernel",
        }
    }

    /// A `map_err` adapter: this operation failed with the given error.
    pub fn failed(self) -> impl FnOnce(io::Error) -> RequestError {
        move |source| RequestError::Kernel { op: self, source }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Malformed(e) => write!(f, "bad request: {e}"),
            RequestError::Kernel { op, source } => {
                write!(f, "{} failed: {source}", op.description())
            }
            RequestError::KeyFile(e) => {
                write!(f, "key reload failed, keeping the current keys: {e}")
            }
            RequestError::NotReady => f.write_str(
                "not ready: the peer's complete table has not arrived since the daemon started (is the peer's ctsyncd running and the sync link up? see ctsyncd -s link)",
            ),
            RequestError::TestHooksOff => f.write_str(
                "test hooks are off: they are honoured only by a daemon started with --test-hooks, which test suites use",
            ),
        }
    }
}

impl std::error::Error for RequestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RequestError::Malformed(e) => Some(e),
            RequestError::KeyFile(e) => Some(e),
            RequestError::Kernel { source, .. } => Some(source),
            _ => None,
        }
    }
}
