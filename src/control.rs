//! The UNIX-socket request/response protocol between the CLI and the daemon.
