//! What the core exchanges with its caller besides datagrams: local
//! changes to send, what the peer told us, why a datagram was refused, and
//! the handshake phase.

use super::*;

/// A change of our internal cache, to be sent to the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalChange {
    /// The kernel created this flow: the peer cannot know it yet, so a
    /// DESTROY before it was sent cancels both.
    New(Flow),
    /// The flow's current state (created or changed).
    Upsert(Flow),
    /// The flow is gone.
    Destroy(FlowKey),
    /// An expectation's current state.
    ExpUpsert(Box<Expectation>),
    /// The expectation is gone.
    ExpDestroy(Box<Expectation>),
}

/// Why [`Ftfw::handle_datagram`] refused a whole datagram. Each is also
/// counted in [`FtfwStats`] (the `drop_*` named on each variant); messages
/// dropped one by one (`drop_late`, `drop_unknown_session`) are not
/// refusals of the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `drop_auth`: one side authenticates (or encrypts) and the other not.
    AuthMismatch,
    /// `drop_unknown_key`: a key id not configured here.
    UnknownKey,
    /// `drop_bad_mac`: the MAC (or AEAD tag) does not match.
    BadMac,
    /// `drop_bad_crc`.
    BadCrc,
    /// `drop_malformed`, `drop_truncated`, `drop_bad_magic`,
    /// `drop_bad_version`: it does not parse.
    Malformed,
    /// `drop_replay`: its datagram counter was seen before or is too old
    /// (native, with keys), all its data was received before, or a
    /// handshake answer of another round or incarnation.
    Replay,
}

/// What the peer told us, for the external cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// Store this state; `stamp` is the message's sequence number unwrapped
    /// to 64 bits (monotonic, also across peer restarts).
    Upsert { flow: Flow, stamp: u64 },
    /// Remove this flow.
    Destroy { key: FlowKey },
    /// Store this expectation; `stamp` as for [`PeerEvent::Upsert`].
    ExpUpsert { exp: Box<Expectation>, stamp: u64 },
    /// Remove the expectation with this expected tuple.
    ExpDestroy { key: FlowKey },
    /// End of a bulk from the peer: remove every external entry whose stamp
    /// < floor. `complete`: the bulk began after this session was tracked,
    /// so the external cache now holds the peer's whole table; the end of
    /// a bulk that answered an earlier incarnation of ours is not.
    BulkEnd { floor: u64, complete: bool },
    /// The peer asked for our whole table, or (conntrackd dialect) NACKed
    /// flow messages it had acknowledged: the caller must call
    /// [`Ftfw::bulk_send`] with the internal cache.
    BulkRequested,
    /// The peer is heard from again (or for the first time).
    PeerUp,
    /// Nothing heard from the peer for `peer_timeout`.
    PeerDown,
    /// The peer is alive, but for `stall_timeout` nothing we sent was
    /// acknowledged (`tx`) or nothing it sent was accepted (`rx`).
    Stalled { tx: bool, rx: bool },
    /// A stall ended: the stream moves again.
    StallEnded,
    /// Native dialect: a HELLO from `session` while another session of the
    /// peer is live. The live one goes on; our HELLO asks the new one to
    /// prove itself (a restarted peer does; a recording cannot).
    HelloProbe { session: u32 },
    /// conntrackd dialect: only refused messages (late or far ahead) came
    /// from the peer for half the peer timeout, as after a forged HELLO:
    /// its sequence is tracked again from its latest message and both
    /// sides send their tables.
    Rebased,
    /// The peer restarted (new session id). Its bulk will sweep what it no
    /// longer has; nothing needs to be flushed.
    PeerRestarted,
    /// Anti-entropy: time to send our digests. The caller answers with
    /// [`Ftfw::send_digest`] and the digests of the internal cache.
    DigestDue,
    /// Anti-entropy: the peer's digests of its whole table, consistent with
    /// everything it sent before (all of it applied here). The caller
    /// compares them with the external cache's and calls
    /// [`Ftfw::request_repair`] with the ranges that differ.
    Digest { digests: Vec<u64> },
    /// Anti-entropy: the peer's copy of these ranges of our table differs.
    /// The caller answers with [`Ftfw::repair_send`] and the internal
    /// flows of these ranges.
    RepairRequested { ranges: RangeSet },
    /// A flow resent by a repair: store it as [`PeerEvent::Upsert`]; if
    /// that changes the external cache, it had drifted.
    RepairUpsert { flow: Flow, stamp: u64 },
    /// End of a repair: remove every external entry of these ranges whose
    /// stamp < floor (the peer no longer has them).
    RepairEnd { floor: u64, ranges: RangeSet },
}

/// Handshake phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Sending HELLO, waiting for a HELLO_BACK that echoes our session.
    HelloSent,
    /// The peer knows our session; data flows.
    Established,
    /// Established, but the peer has been silent for `peer_timeout`.
    Silent,
}
