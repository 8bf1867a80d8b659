//! Readiness for keepalived: whether this node holds a complete copy of
//! the peer's table, published as a `track_file` so that a node that is
//! not ready cannot win the VRRP election against one that is (as pfsync
//! demotes CARP until its bulk update is done).
//!
//! A node becomes ready when a bulk update from the peer has completed
//! since the daemon started (the peer's end-of-bulk marker arrived, so the
//! external cache equals the peer's table). Once ready it stays ready:
//! a peer restart does not make our copy wrong until the peer's new bulk
//! replaces it, and dropping readiness on a master would hand the VIPs to
//! a peer that has just restarted. The file holds `1` until then and `0`
//! after; keepalived's `track_file ... weight -N` turns the `1` into a
//! priority penalty.
//!
//! The file fails open: keepalived reads a missing file as 0, and a daemon
//! killed with SIGKILL leaves `0` behind. It is deprecated in favour of
//! `ctsyncd --check-ready` (a `vrrp_script`), which asks the running daemon
//! for [`Readiness::is_ready`] and fails when nothing answers.

use std::io;
use std::path::PathBuf;

use crate::ftfw::PeerEvent;

/// The readiness state and the file that publishes it.
#[derive(Debug)]
pub struct Readiness {
    ready: bool,
    path: Option<PathBuf>,
    published: Option<bool>,
}

impl Readiness {
    /// Not ready; `path` is where to publish (none: keep it in memory only).
    pub fn new(path: Option<PathBuf>) -> Readiness {
        Readiness { ready: false, path, published: None }
    }

    /// True once a complete table from the peer has arrived.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Feed every peer event; returns true when readiness changed.
    pub fn observe(&mut self, event: &PeerEvent) -> bool {
        if matches!(event, PeerEvent::BulkEnd { complete: true, .. }) && !self.ready {
            self.ready = true;
            return true;
        }
        false
    }

    /// Write the file if its content is not current. The write is atomic
    /// (temporary file, then rename), so keepalived never reads half a file.
    pub fn publish(&mut self) -> io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        if self.published == Some(self.ready) {
            return Ok(());
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, if self.ready { "0\n" } else { "1\n" })?;
        std::fs::rename(&tmp, path)?;
        self.published = Some(self.ready);
        Ok(())
    }

    /// Mark the node not ready and write `1` (on a clean stop: a stopped
    /// daemon is not ready). The file is not removed, because keepalived
    /// reads a missing file as 0, that is, ready.
    pub fn withdraw(&mut self) -> io::Result<()> {
        self.ready = false;
        self.publish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Flow, proto};

    #[test]
    fn ready_after_the_first_complete_bulk_and_stays_ready() {
        let dir = std::env::temp_dir().join(format!("ctsync-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ready");
        let mut r = Readiness::new(Some(path.clone()));
        r.publish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        let flow = Flow::new_v4(proto::TCP, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1, 2);
        assert!(!r.observe(&PeerEvent::Upsert { flow, stamp: 1 }));
        assert!(!r.observe(&PeerEvent::PeerUp));
        assert!(!r.is_ready());
        // The tail of a bulk that answered an earlier incarnation.
        assert!(!r.observe(&PeerEvent::BulkEnd { floor: 0, complete: false }));
        assert!(!r.is_ready());
        assert!(r.observe(&PeerEvent::BulkEnd { floor: 0, complete: true }));
        r.publish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0\n");
        // A peer restart or outage does not take readiness away.
        assert!(!r.observe(&PeerEvent::PeerRestarted));
        assert!(!r.observe(&PeerEvent::PeerDown));
        assert!(r.is_ready());
        r.withdraw().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        let _ = std::fs::remove_dir_all(dir);
    }
}
