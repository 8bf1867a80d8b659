//! `ctsyncd --check` and `ctsyncd --gen-key`: what an operator runs before
//! the first start.
//!
//! [`environment`] checks what a valid configuration names outside itself
//! (the key file, interfaces, local addresses, the control group) the way
//! the daemon will use them, so that `--check` passing means the start
//! will not fail on them. Each problem is a [`ConfigError`] pointing at the
//! line that names the thing. [`gen_key`] writes a key file the daemon
//! accepts, without tools a minimal system may lack. [`prepare_paths`] is
//! the start-up check of the directories the daemon writes in, which tells
//! a path the operator must change (exit status 2) from a directory that
//! may still appear (exit status 1, which the unit restarts).
//! [`exposures`] lists what a valid configuration leaves open on the sync
//! link, which the daemon warns about at every start.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::{self, ChannelKind, Config, ConfigError, SyncAuth};
use crate::ftfw::Dialect;
use crate::wire::native::{AuthKey, MIN_KEY_LEN};

/// The keys of `sync.auth.key_file` (none without one); an error names the
/// configuration line, the key and the key file, and says how to make one.
pub fn keys(cfg: &Config) -> Result<Vec<AuthKey>, ConfigError> {
    match &cfg.sync.auth {
        SyncAuth::KeyFile(file) => config::load_key_file(file)
            .map_err(|e| cfg.error_at("sync.auth.key_file", e.to_string())),
        SyncAuth::Insecure => Ok(Vec::new()),
    }
}

/// Everything the configuration names outside itself that the daemon would
/// fail on at start, one error per problem.
pub fn environment(cfg: &Config) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    if let Err(e) = keys(cfg) {
        problems.push(e);
    }
    let local_addresses = local_addresses();
    for (i, channel) in cfg.sync.channels.iter().enumerate() {
        if let Some(name) = &channel.interface
            && nix::net::if_::if_nametoindex(name.as_str()).is_err()
        {
            problems.push(cfg.error_at(
                &format!("sync.channels[{i}].interface"),
                format!("no interface {name:?} on this host (`ip link` lists them)"),
            ));
        }
        if let Ok(addresses) = &local_addresses
            && !channel.local.is_unspecified()
            && !addresses.contains(&channel.local)
        {
            problems.push(cfg.error_at(
                &format!("sync.channels[{i}].local"),
                format!(
                    "{} is not an address of this host (`ip address` lists them): the daemon could not bind it",
                    channel.local
                ),
            ));
        }
    }
    if let Some(name) = &cfg.general.control_group {
        match nix::unistd::Group::from_name(name) {
            Ok(Some(_)) => {}
            Ok(None) => {
                problems.push(cfg.error_at("general.control_group", format!("no group {name:?}")))
            }
            Err(e) => {
                problems.push(cfg.error_at("general.control_group", format!("{name:?}: {e}")))
            }
        }
    }
    problems
}

/// A directory the daemon must write in is not usable.
#[derive(Debug)]
pub enum PathProblem {
    /// Read-only or forbidden: the operator must change the path or the
    /// unit (exit status 2, which the unit does not restart).
    Config(ConfigError),
    /// Missing, e.g. a file system not mounted yet: a restart may find it
    /// (exit status 1, which the unit restarts).
    Missing(ConfigError),
}

/// Make sure the daemon can write its lock file, control socket and log
/// file, before it opens them: the lock file's and control socket's
/// directories are created (with their parents), a log file's directory
/// one level only. Errors point at the line that set the path and say
/// what to change.
pub fn prepare_paths(cfg: &Config) -> Result<(), PathProblem> {
    let g = &cfg.general;
    let mut paths = vec![
        ("general.lock_file", &g.lock_file, true),
        ("general.control_socket", &g.control_socket, true),
    ];
    if g.log.target == config::LogTarget::File
        && let Some(file) = &g.log.file
    {
        paths.push(("general.log.file", file, false));
    }
    for (key, path, create_parents) in paths {
        let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
            continue;
        };
        let made = if create_parents { std::fs::create_dir_all(dir) } else { make_dir(dir) };
        let result = made.and_then(|()| {
            nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).map_err(std::io::Error::from)
        });
        if let Err(e) = result {
            let shown = dir.display();
            return Err(match e.kind() {
                std::io::ErrorKind::NotFound => PathProblem::Missing(cfg.error_at(
                    key,
                    format!(
                        "{}: no directory {shown} (nor its parent): create it, or mount what holds it; exiting with status 1 so that systemd tries again",
                        path.display()
                    ),
                )),
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
                    PathProblem::Config(cfg.error_at(
                        key,
                        format!(
                            "{}: cannot write in {shown}: {e}; under the packaged unit \
                             (ProtectSystem=strict) only {} and {} are writable: use a path \
                             there, or allow this directory with a drop-in \
                             (`systemctl edit ctsyncd`: `[Service]` then `ReadWritePaths={shown}`)",
                            path.display(),
                            config::conntrackd::RUNTIME_DIR,
                            config::conntrackd::LOG_DIR,
                        ),
                    ))
                }
                _ => PathProblem::Missing(cfg.error_at(key, format!("{}: cannot use {shown}: {e}", path.display()))),
            });
        }
    }
    Ok(())
}

/// Create `dir` if it is missing, but not its parents.
fn make_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// What the daemon would run with, in a few lines: the file, the key, each
/// channel, the sockets and the log.
pub fn summary(cfg: &Config, keys: &[AuthKey]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: configuration OK", cfg.file().display());
    let sync = &cfg.sync;
    let wire = match sync.wire {
        crate::ftfw::Dialect::Native => "native",
        crate::ftfw::Dialect::Conntrackd => "conntrackd (unauthenticated)",
    };
    let _ = writeln!(out, "  wire format: {wire}");
    match &sync.auth {
        SyncAuth::KeyFile(file) => {
            let ids: Vec<String> = keys.iter().map(|k| k.id.to_string()).collect();
            let _ = writeln!(
                out,
                "  key file: {} (signing with key {}, accepting {}{})",
                file.display(),
                ids.first().map(String::as_str).unwrap_or("-"),
                ids.join(" and "),
                if sync.encrypt { "; payload encrypted" } else { "" }
            );
        }
        SyncAuth::Insecure => {
            let _ = writeln!(out, "  key file: none, the sync link is not authenticated");
        }
    }
    for (i, c) in sync.channels.iter().enumerate() {
        let kind = match c.kind {
            ChannelKind::Udp { .. } => "udp",
            ChannelKind::Multicast { .. } => "multicast",
        };
        let _ = writeln!(
            out,
            "  channel {i}: {kind} {} -> {}{}",
            c.local_addr(),
            c.remote_addr(),
            c.interface.as_deref().map(|n| format!(" on {n}")).unwrap_or_default()
        );
    }
    let g = &cfg.general;
    let _ = writeln!(out, "  control socket: {}", g.control_socket.display());
    let _ = writeln!(out, "  lock file: {}", g.lock_file.display());
    let log = match (&g.log.target, &g.log.file) {
        (config::LogTarget::File, Some(file)) => format!("file {}", file.display()),
        (config::LogTarget::Syslog, _) => "syslog".to_owned(),
        _ => "stderr".to_owned(),
    };
    let _ = writeln!(out, "  log: {log}");
    if let Some(addr) = g.metrics_listen {
        let _ = writeln!(out, "  metrics: http://{addr}/metrics");
    }
    out
}

/// What the configuration leaves open on the sync link, one line per
/// exposure, each naming the file at `path` and the key to change: the
/// daemon logs them as warnings at every start. conntrackd's wire format
/// has no MAC, so only the address filter (a unicast peer, an interface)
/// stands between the sync port and anyone who can reach it; the native
/// format with `sync.auth.insecure` has no MAC either.
pub fn exposures(cfg: &Config, path: &Path) -> Vec<String> {
    let path = path.display();
    let mut lines = Vec::new();
    match (cfg.sync.wire, &cfg.sync.auth) {
        (Dialect::Conntrackd, _) => {
            lines.push(format!(
                "{path}: speaking conntrackd's wire format, which is unauthenticated and unchecksummed: anyone who can send to the sync port can inject or delete flows; use a dedicated link"
            ));
            for (i, c) in cfg.sync.channels.iter().enumerate() {
                if matches!(c.kind, ChannelKind::Multicast { .. }) {
                    lines.push(format!(
                        "{path}: sync.channels[{i}] is multicast in conntrackd's wire format: every host that can send to the group is taken for the peer; use a unicast channel"
                    ));
                }
                if c.interface.is_none() {
                    lines.push(format!(
                        "{path}: sync.channels[{i}] has no interface in conntrackd's wire format: a datagram with the peer's address is taken from any interface; set sync.channels[{i}].interface to the sync link"
                    ));
                }
            }
        }
        (Dialect::Native, SyncAuth::Insecure) => lines.push(format!(
            "{path}: sync.auth.insecure: the sync link is unauthenticated: anyone who can send to the sync port can inject or delete flows"
        )),
        (Dialect::Native, SyncAuth::KeyFile(_)) => {}
    }
    lines
}

/// Write a new random key (id 1, [`MIN_KEY_LEN`] bytes) to `path` with mode
/// 0600. An existing file is kept unless `force`. Returns what to do next.
pub fn gen_key(path: &Path, force: bool) -> Result<String, GenKeyError> {
    let file = path.display();
    let secret: [u8; MIN_KEY_LEN] = rand::random();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let text = format!(
        "# ctsync sync key, made by `ctsyncd --gen-key`: the same file on both firewalls,\n\
         # owned by root, mode 0600. Lines are `KEYID HEX`; the first key signs.\n\
         1 {hex}\n"
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let file_path = || path.to_owned();
    let mut out = options.open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => GenKeyError::Exists(file_path()),
        std::io::ErrorKind::NotFound => GenKeyError::NoDirectory(file_path()),
        _ => GenKeyError::Create { file: file_path(), source },
    })?;
    // An existing file keeps its mode through open: set it.
    use std::os::unix::fs::PermissionsExt;
    out.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| out.write_all(text.as_bytes()))
        .and_then(|()| out.sync_all())
        .map_err(|source| GenKeyError::Write { file: file_path(), source })?;
    Ok(format!(
        "wrote a new key to {file} (mode 0600): copy it to the peer with the same mode and owner \
         (e.g. `scp -p {file} root@PEER:{file}`) and set `sync.auth: {{ key_file: {file} }}` on both"
    ))
}

/// Why `--gen-key` wrote no key.
#[derive(Debug)]
pub enum GenKeyError {
    /// The file exists and `--force` was not given.
    Exists(PathBuf),
    /// The file's directory does not exist.
    NoDirectory(PathBuf),
    /// The file could not be created.
    Create {
        /// The key file.
        file: PathBuf,
        /// Why not.
        source: std::io::Error,
    },
    /// The key could not be written to the file.
    Write {
        /// The key file.
        file: PathBuf,
        /// Why not.
        source: std::io::Error,
    },
}

impl fmt::Display for GenKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenKeyError::Exists(file) => write!(
                f,
                "{} exists: keep it, or add --force to replace it (the peer then needs the new one too)",
                file.display()
            ),
            GenKeyError::NoDirectory(file) => {
                let dir = file.parent().map(|d| d.display().to_string()).unwrap_or_default();
                write!(f, "cannot create {}: no directory {dir} (mkdir -p {dir})", file.display())
            }
            GenKeyError::Create { file, source } => {
                write!(f, "cannot create {}: {source}", file.display())
            }
            GenKeyError::Write { file, source } => {
                write!(f, "cannot write {}: {source}", file.display())
            }
        }
    }
}

impl std::error::Error for GenKeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GenKeyError::Create { source, .. } | GenKeyError::Write { source, .. } => Some(source),
            GenKeyError::Exists(_) | GenKeyError::NoDirectory(_) => None,
        }
    }
}

fn local_addresses() -> nix::Result<Vec<IpAddr>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|ifa| {
            let addr = ifa.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ctsync-check-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn gen_key_writes_a_key_the_daemon_accepts_and_keeps_an_existing_one() {
        use std::os::unix::fs::MetadataExt;
        let dir = temp_dir("gen");
        let path = dir.join("sync.key");
        gen_key(&path, false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let keys = config::load_key_file(&path).unwrap();
        assert_eq!(keys.len(), 1);
        let first = std::fs::read_to_string(&path).unwrap();
        let refused = gen_key(&path, false).unwrap_err();
        assert!(matches!(refused, GenKeyError::Exists(_)));
        assert!(refused.to_string().contains("--force"), "{refused}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        gen_key(&path, true).unwrap();
        assert_ne!(std::fs::read_to_string(&path).unwrap(), first, "a new random key");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A key file in a directory that does not exist: the line says which
    /// directory and the command that makes it.
    #[test]
    fn gen_key_names_a_missing_directory() {
        let dir = temp_dir("nodir");
        let path = dir.join("absent").join("sync.key");
        let e = gen_key(&path, false).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        let absent = dir.join("absent");
        assert!(matches!(e, GenKeyError::NoDirectory(_)));
        assert_eq!(
            e.to_string(),
            format!(
                "cannot create {}: no directory {1} (mkdir -p {1})",
                path.display(),
                absent.display()
            )
        );
    }

    #[test]
    fn a_missing_key_file_names_the_line_the_key_and_how_to_make_one() {
        let dir = temp_dir("missing");
        let key = dir.join("sync.key");
        let text = format!(
            "sync:\n  auth:\n    key_file: {}\n  channels:\n    - {{ local: 127.0.0.1, peer: 127.0.0.2 }}\n",
            key.display()
        );
        let cfg = config::from_str(&text, Path::new("/etc/ctsync/ctsyncd.yaml")).unwrap();
        let e = keys(&cfg).unwrap_err();
        assert_eq!(e.line(), Some(3), "{e}");
        assert_eq!(e.key(), Some("sync.auth.key_file"), "{e}");
        let shown = e.to_string();
        assert!(shown.starts_with("/etc/ctsync/ctsyncd.yaml:3:"), "{shown}");
        assert!(shown.contains(&format!("ctsyncd --gen-key {}", key.display())), "{shown}");
        assert_eq!(environment(&cfg).len(), 1, "only the key is missing: {shown}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// docs/SECURITY.md: conntrackd's format and `insecure: true` leave the
    /// sync port open, and each start says how; a key file says nothing.
    #[test]
    fn exposures_name_each_open_door_of_the_sync_link() {
        let file = Path::new("/etc/ctsync/ctsyncd.yaml");
        let load = |text: &str| config::from_str(text, file).unwrap();
        let conntrackd = load(
            "sync:\n  wire: conntrackd\n  channels:\n    - { type: multicast, local: 127.0.0.1, group: 239.1.1.1, \
             interface: lo }\n    - { local: 127.0.0.1, peer: 127.0.0.2 }\n",
        );
        let lines = exposures(&conntrackd, file);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].contains("conntrackd's wire format, which is unauthenticated"));
        assert!(lines[1].contains("sync.channels[0] is multicast"), "{}", lines[1]);
        assert!(lines[2].contains("sync.channels[1] has no interface"), "{}", lines[2]);
        assert!(lines.iter().all(|l| l.starts_with("/etc/ctsync/ctsyncd.yaml: ")));
        let insecure = Config::default_for_tests();
        let lines = exposures(&insecure, file);
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(lines[0].contains("sync.auth.insecure: the sync link is unauthenticated"));
        let mut keyed = insecure;
        keyed.sync.auth = SyncAuth::KeyFile("/etc/ctsync/sync.key".into());
        assert!(exposures(&keyed, file).is_empty());
    }

    #[test]
    fn a_missing_interface_and_a_foreign_address_point_at_their_lines() {
        let text = "sync:\n  auth: { insecure: true }\n  channels:\n    - local: 192.0.2.77\n      \
                    peer: 192.0.2.78\n      interface: ctsync-nosuch0\n";
        let cfg = config::from_str(text, Path::new("/x.yaml")).unwrap();
        let problems = environment(&cfg);
        let keys: Vec<_> = problems.iter().map(|e| (e.key(), e.line())).collect();
        assert_eq!(
            keys,
            [
                (Some("sync.channels[0].interface"), Some(6)),
                (Some("sync.channels[0].local"), Some(4))
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn runtime_directories_are_made_and_a_missing_log_directory_names_its_line() {
        let dir = temp_dir("paths");
        let text = |log: &str| {
            format!(
                "General {{\n  LockFile {d}/run/c.lock\n  UNIX {{ Path {d}/run/c.ctl }}\n  LogFile {log}\n}}\n\
                 Sync {{\n  Mode FTFW {{ }}\n  UDP {{ IPv4_address 127.0.0.1 IPv4_Destination_Address 127.0.0.2 }}\n}}\n",
                d = dir.display()
            )
        };
        let cfg = |log: &str| config::from_str(&text(log), Path::new("/c.conf")).unwrap();
        // The runtime directory is made; the log directory one level only.
        prepare_paths(&cfg(&format!("{}/log/c.log", dir.display()))).unwrap();
        assert!(dir.join("run").is_dir() && dir.join("log").is_dir());
        match prepare_paths(&cfg(&format!("{}/not/mounted/c.log", dir.display()))) {
            Err(PathProblem::Missing(e)) => {
                assert_eq!(e.line(), Some(4), "{e}");
                assert!(e.to_string().contains("LogFile (general.log.file)"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // A read-only directory (the packaged unit's view) is a config error:
        // tests/install.rs starts the daemon under such mounts.
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn conntrackd_errors_name_the_keyword() {
        let text = "Sync {\n  Mode FTFW { }\n  UDP {\n    IPv4_address 192.0.2.77\n    \
                    IPv4_Destination_Address 192.0.2.78\n    Port 3780\n    Interface ctsync-nosuch0\n  }\n}\n\
                    General {\n}\n";
        let cfg = config::from_str(text, Path::new("/c.conf")).unwrap();
        let shown: Vec<String> = environment(&cfg).iter().map(|e| e.to_string()).collect();
        assert!(shown[0].starts_with("/c.conf:7:") && shown[0].contains("Interface"), "{shown:?}");
    }
}
