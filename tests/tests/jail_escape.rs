//! The escape battery: from inside a jailed device of every kind, try what a compromised device would
//! (open host files, reach host sockets, signal or trace host processes, open network sockets,
//! map executable memory, mount, unshare, raise capabilities...). Every attempt must fail.
//!
//! Two views of the same jail:
//! * phase `jail` runs every attempt after every layer except seccomp: namespaces, the empty
//!   root, capabilities, no_new_privs and landlock must stop each one on their own, except the
//!   few that only seccomp can stop (`SECCOMP_ONLY` below);
//! * phase `final` runs each attempt alone in a fresh device after seccomp too, in the jail as
//!   it serves: each is refused with an errno or kills the device by SIGSYS.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, ensure, Context, Result};
use vu_tests::kinds::{kinds, minimal};
use vu_tests::launcher::{Launcher, Spawned};

/// Every attempt (the device's `EscapeAttempt` names).
const ATTEMPTS: &[&str] = &[
    "open_host_file",
    "open_proc",
    "create_file",
    "exec_shell",
    "connect_host_socket",
    "connect_abstract_socket",
    "tcp_connect_host",
    "kill_host_pid",
    "ptrace_host_pid",
    "inet_socket",
    "inet6_socket",
    "netlink_socket",
    "mmap_exec",
    "mprotect_exec",
    "mount",
    "unshare_user",
    "unshare_mount",
    "chroot",
    "raise_caps",
];

/// Allowed by every layer but seccomp: a socket in an empty network namespace, executable
/// anonymous memory.
const SECCOMP_ONLY: &[&str] = &[
    "inet_socket",
    "inet6_socket",
    "netlink_socket",
    "mmap_exec",
    "mprotect_exec",
];

/// What the battery aims at on the host, all reachable by the jail user without a jail.
struct Host {
    dir: tempfile::TempDir,
    _unix: UnixListener,
    _abstract: UnixListener,
    _tcp: std::net::TcpListener,
    args: Vec<String>,
}

fn host() -> Result<Host> {
    let dir = tempfile::tempdir()?;
    // World-accessible, so that only the jail stands between the device and the socket.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let path = dir.path().join("host.sock");
    let unix = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "vu-jail-escape-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let abstract_listener = UnixListener::bind_addr(&SocketAddr::from_abstract_name(&name)?)?;
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = tcp.local_addr()?.port();
    let args = vec![
        "--test-escape-host-socket".into(),
        path.display().to_string(),
        "--test-escape-host-abstract".into(),
        name,
        "--test-escape-host-pid".into(),
        std::process::id().to_string(),
        "--test-escape-host-port".into(),
        port.to_string(),
    ];
    Ok(Host {
        dir,
        _unix: unix,
        _abstract: abstract_listener,
        _tcp: tcp,
        args,
    })
}

impl Host {
    fn socket(&self, kind: &str) -> PathBuf {
        self.dir.path().join(format!("{kind}.sock"))
    }

    /// `launcher start KIND` with the kind's simplest configuration, `extra` and the targets.
    fn launcher_args(&self, kind: &str, extra: &[&str]) -> Result<Vec<String>> {
        let m = minimal(kind, self.dir.path(), kind)?;
        let mut v = m.start_args(&self.socket(kind), extra);
        v.extend(self.args.iter().cloned());
        Ok(v)
    }
}

/// The outcome reported for `phase/attempt`, if any.
fn outcome<'a>(log: &'a str, phase: &str, attempt: &str) -> Option<&'a str> {
    let prefix = format!("ESCAPE-TEST {phase}/{attempt}: ");
    log.lines()
        .find_map(|l| l.split_once(&prefix).map(|(_, rest)| rest.trim()))
}

fn require_debug_launcher(log: &str) -> Result<()> {
    if !log.contains("ESCAPE-TEST") {
        bail!(
            "no ESCAPE-TEST lines: test triggers need a launcher built with debug assertions \
             (not --release)\n{log}"
        );
    }
    Ok(())
}

#[test]
fn every_layer_beneath_seccomp_blocks_each_escape_and_openat_answers_enoent() -> Result<()> {
    for kind in kinds() {
        battery(kind).with_context(|| format!("a {kind} device"))?;
    }
    Ok(())
}

fn battery(kind: &str) -> Result<()> {
    let host = host()?;
    let launcher = vu_tests::kinds::spawn(
        kind,
        &host.launcher_args(kind, &["--test-escape-battery"])?,
        &host.socket(kind),
    )?;
    let log = launcher.stderr();
    require_debug_launcher(&log)?;
    ensure!(!log.contains("skipped"), "an attempt had no target:\n{log}");
    for a in ATTEMPTS {
        let o = outcome(&log, "jail", a).with_context(|| format!("no jail/{a} line:\n{log}"))?;
        if SECCOMP_ONLY.contains(a) {
            continue;
        }
        ensure!(o.starts_with("blocked ("), "jail/{a}: {o}\n{log}");
    }
    // After seccomp, openat answers ENOENT (devices receive fds; they do not open paths).
    for a in ["open_host_file", "open_proc"] {
        let o = outcome(&log, "final", a).with_context(|| format!("no final/{a} line:\n{log}"))?;
        ensure!(o == "blocked (ENOENT)", "final/{a}: {o}");
    }
    let st = launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

/// One attempt in the final jail: refused, or the device killed by its seccomp filter.
fn final_attempt(host: &Host, kind: &str, attempt: &str) -> Result<String> {
    let spawned = vu_tests::kinds::try_spawn(
        kind,
        &host.launcher_args(kind, &["--test-escape", attempt])?,
        &host.socket(kind),
    )?;
    match spawned {
        Spawned::Ready(launcher) => {
            let log = launcher.stderr();
            require_debug_launcher(&log)?;
            let prefix = format!("ESCAPE-TEST final/{attempt}: ");
            let o = log
                .lines()
                .filter_map(|l| l.split_once(&prefix).map(|(_, r)| r.trim()))
                .find(|r| *r != "attempting")
                .with_context(|| format!("no result for final/{attempt}:\n{log}"))?
                .to_string();
            ensure!(o.starts_with("blocked ("), "final/{attempt}: {o}\n{log}");
            let st = launcher.terminate()?;
            ensure!(st.success(), "launcher exited with {st}");
            Ok(o)
        }
        Spawned::Exited { status, stderr } => {
            require_debug_launcher(&stderr)?;
            ensure!(
                stderr.contains(&format!("ESCAPE-TEST final/{attempt}: attempting")),
                "the device died before the attempt:\n{stderr}"
            );
            ensure!(
                !stderr.contains("ALLOWED"),
                "final/{attempt} was allowed:\n{stderr}"
            );
            ensure!(
                status.code() == Some(1) && stderr.contains("seccomp violation"),
                "final/{attempt}: the device did not die by its seccomp filter ({status}):\n{stderr}"
            );
            Ok("killed (SIGSYS)".to_string())
        }
    }
}

#[test]
fn every_escape_fails_in_the_final_jail() -> Result<()> {
    let host = host()?;
    for kind in kinds() {
        let mut results = Vec::new();
        for a in ATTEMPTS {
            let r =
                final_attempt(&host, kind, a).with_context(|| format!("{kind}: attempt {a}"))?;
            results.push(format!("{a}: {r}"));
            ensure!(
                !host.socket(kind).exists(),
                "{kind}, {a}: the socket was left behind"
            );
        }
        eprintln!("final jail of a {kind} device:\n  {}", results.join("\n  "));
    }
    Ok(())
}

#[test]
fn the_host_targets_are_reachable_without_a_jail() -> Result<()> {
    // The control: with --sandbox none the same attempts reach the host, so the blocks above
    // come from the jail, not from a test mistake.
    let host = host()?;
    let launcher = Launcher::spawn(
        &host.launcher_args("block", &["--sandbox", "none", "--test-escape-battery"])?,
        &host.socket("block"),
    )?;
    let log = launcher.stderr();
    require_debug_launcher(&log)?;
    for a in [
        "open_host_file",
        "connect_host_socket",
        "connect_abstract_socket",
        "tcp_connect_host",
        "kill_host_pid",
        "inet_socket",
        "mmap_exec",
    ] {
        let o = outcome(&log, "unjailed", a).unwrap_or("no line");
        ensure!(o == "ALLOWED", "{a} unjailed: {o}\n{log}");
    }
    let st = launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
