//! Network namespaces for tests that need the real kernel.
//!
//! Each test builds its own namespaces with unique names; a [`Netns`] guard
//! deletes its namespace (and so its conntrack table, interfaces and
//! processes' network) when dropped, also when the test panics.
#![allow(dead_code)]

use std::fs::File;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{CloneFlags, setns};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace that exists as long as this value.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create `ctsync-t-<pid>-<n>-<tag>`, with its loopback up.
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("ctsync-t-{}-{n}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec("ip link set lo up");
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run a shell command inside the namespace; panics with its output if
    /// it fails.
    pub fn exec(&self, cmd: &str) -> String {
        let out = self.try_exec(cmd);
        assert!(
            out.status.success(),
            "`{cmd}` in {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run a shell command inside the namespace, whatever its outcome.
    pub fn try_exec(&self, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("cannot run ip netns exec")
    }

    /// Run `f` on a thread that lives in this namespace: netlink sockets it
    /// opens belong to the namespace.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        in_netns(&self.name, f)
    }

    /// Start `f` on a thread in this namespace and return its handle.
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<R> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill what still runs inside (socat servers and the like), then
        // delete the namespace.
        let _ = Command::new("ip").args(["netns", "pids", &self.name]).output().map(|o| {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").arg(pid).status();
            }
        });
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Run `f` on a new thread that first joins the namespace `name`.
pub fn in_netns<R: Send + 'static>(name: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let path = format!("/var/run/netns/{name}");
    let handle = std::thread::spawn(move || {
        enter(&path);
        f()
    });
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn enter(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    setns(file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

/// Run a command in the current (initial) namespace; panics if it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("cannot spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command built by the caller; panics with its stderr if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Poll `check` every 200 ms until it holds (`Some`) or `within` passes.
pub fn wait_for(within: std::time::Duration, mut check: impl FnMut() -> bool) -> Option<()> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if check() {
            return Some(());
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Puts a sysctl (a /proc/sys path) back to its value when dropped.
pub struct SysctlGuard {
    path: String,
    old: String,
}

impl SysctlGuard {
    /// Write `value` to `path`, remembering the old value.
    pub fn set(path: &str, value: &str) -> SysctlGuard {
        let old = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        std::fs::write(path, value).unwrap_or_else(|e| panic!("{path}: {e}"));
        SysctlGuard { path: path.to_owned(), old: old.trim().to_owned() }
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, &self.old);
    }
}

/// examples/ctload (the load tool), built with the profile of this test
/// binary; returns its path (`target/<profile>/examples/ctload`, beside this binary's `deps/`).
pub fn ctload() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let dir_name = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
    // Cargo puts the `dev` profile in target/debug, every other in its name
    // (`ci` too: built as `dev`, the binary run here would be a stale one).
    let profile = if dir_name == "debug" { "dev" } else { dir_name };
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", "ctload", "--profile", profile])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo");
    assert!(status.success(), "cargo build --example ctload failed");
    profile_dir.join("examples").join("ctload")
}
