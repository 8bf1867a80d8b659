//! Admission to the control socket: who may use it (root or the control
//! group) and how many connections each may hold, so that root always
//! gets in at failover time.

/// Who may use the control socket: root, or a process whose primary group
/// (`gid`) or one of whose supplementary `groups` is `control_gid`
/// (`general.control_group`). `SO_PEERCRED` gives only the primary group;
/// an operator is usually in the group as a supplementary one.
pub fn client_allowed(uid: u32, gid: u32, groups: &[u32], control_gid: Option<u32>) -> bool {
    uid == 0 || control_gid.is_some_and(|g| gid == g || groups.contains(&g))
}

/// Control connections open at once, in all.
pub const MAX_CLIENTS: usize = 256;
/// Of [`MAX_CLIENTS`], the connections only root may take: an operator's
/// `-c` at failover time must get in however many the group holds open.
pub const ROOT_SLOTS: usize = 32;
/// Connections one non-root user may hold open at once.
pub const MAX_CLIENTS_PER_UID: usize = 16;

/// Why a permitted client was turned away; the CLI prints the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// All connections are taken (for a non-root user: all but root's).
    Full,
    /// This user already holds [`MAX_CLIENTS_PER_UID`] connections.
    PerUser,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Busy::Full => {
                write!(f, "the daemon is serving {MAX_CLIENTS} control clients; try again")
            }
            Busy::PerUser => write!(
                f,
                "this user already holds {MAX_CLIENTS_PER_UID} control connections; close one and try again"
            ),
        }
    }
}

/// Whether a permitted client of `uid` gets a connection, with `open` held
/// in all and `open_by_uid` by that user.
pub fn admit(uid: u32, open: usize, open_by_uid: usize) -> Result<(), Busy> {
    if uid == 0 {
        return if open < MAX_CLIENTS { Ok(()) } else { Err(Busy::Full) };
    }
    if open >= MAX_CLIENTS - ROOT_SLOTS {
        Err(Busy::Full)
    } else if open_by_uid >= MAX_CLIENTS_PER_UID {
        Err(Busy::PerUser)
    } else {
        Ok(())
    }
}

/// The supplementary groups on the `Groups:` line of a `/proc/PID/status`
/// text; empty when the line is missing or unreadable (refusing is safe).
pub fn status_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().map_while(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

/// The supplementary groups of process `pid`, as the kernel has them now.
pub fn process_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| status_groups(&s))
        .unwrap_or_default()
}
