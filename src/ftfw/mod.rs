//! The FTFW protocol state machine: no sockets, no clock.
