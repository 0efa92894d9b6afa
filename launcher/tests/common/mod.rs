//! Helpers shared by the `cli_*` tests: run the built launcher, watch its stderr, signal it.

#![allow(dead_code)]

pub mod inherit;
pub mod metrics;
pub mod notify;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a launcher may take to log its readiness line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a launcher may take to exit after SIGTERM/SIGINT.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A launcher command with a predictable environment (no inherited RUST_LOG) and a control
/// socket of its own (`VU_LAUNCHER_CONTROL`), so that launchers of parallel tests do not
/// compete for the default one.
pub fn launcher() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_launcher"));
    c.env_remove("RUST_LOG")
        .env("VU_LAUNCHER_CONTROL", unique_control_path())
        .stdin(Stdio::null());
    c
}

/// A fresh control socket path in the temporary directory.
pub fn unique_control_path() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("vu-ctl-{}-{n}.sock", std::process::id()))
}

/// `launcher start block --socket SOCKET --file IMAGE EXTRA...`
pub fn start_block(socket: &Path, image: &Path, extra: &[&str]) -> Command {
    let mut c = launcher();
    c.args(["start", "block", "--socket"])
        .arg(socket)
        .arg("--file")
        .arg(image)
        .args(extra);
    c
}

/// Runs `cmd` to completion (it must fail fast) and returns its output.
pub fn output(mut cmd: Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn launcher");
    let mut running = Running::from_child(child);
    running.control = control_of(&cmd);
    let status = running.wait_exit(READY_TIMEOUT);
    Output {
        status,
        stdout: Vec::new(),
        stderr: running.drain_stderr().into_bytes(),
    }
}

/// Asserts that `out` failed with `code` and that stderr mentions every needle.
pub fn assert_fails(out: &Output, code: i32, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit code {code}, got {:?}; stderr:\n{stderr}",
        out.status
    );
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}:\n{stderr}");
    }
    stderr
}

/// A sparse image of `size` bytes.
pub fn sparse_image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).expect("create image");
    f.set_len(size).expect("set_len");
    path
}

/// A launcher that runs in the background, with its stderr read line by line. One that is
/// still running when dropped is killed, and a control socket it left behind removed.
pub struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    control: Option<PathBuf>,
}

/// The control socket `cmd` names: its `--control` argument, else `VU_LAUNCHER_CONTROL`.
fn control_of(cmd: &Command) -> Option<PathBuf> {
    let args: Vec<_> = cmd.get_args().collect();
    args.iter()
        .position(|a| *a == "--control")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .or_else(|| {
            cmd.get_envs()
                .find(|(k, _)| *k == "VU_LAUNCHER_CONTROL")
                .and_then(|(_, v)| v.map(PathBuf::from))
        })
}

/// Removes `path` if it is a socket nobody listens on (what a killed launcher leaves). A
/// launcher run through a wrapper (strace) may outlive the wrapper by a moment: a socket still
/// served is given up to 2 s to go stale.
pub fn remove_stale_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
        if !is_socket {
            return;
        }
        if std::os::unix::net::UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
            return;
        }
        if std::time::Instant::now() >= deadline {
            return;
        }
        // A process's death has no readiness fd to wait on here: poll briefly.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Running {
    /// Spawns `cmd` with stderr piped.
    pub fn spawn(mut cmd: Command) -> Running {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let control = control_of(&cmd);
        let mut r = Running::from_child(cmd.spawn().expect("spawn launcher"));
        r.control = control;
        r
    }

    fn from_child(mut child: Child) -> Running {
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines: rx,
            seen: Vec::new(),
            control: None,
        }
    }

    /// Spawns `cmd` and waits for the readiness line naming `socket`.
    pub fn start(cmd: Command, socket: &Path) -> Running {
        let mut r = Running::spawn(cmd);
        let needle = format!("listening on {}", socket.display());
        if let Err(e) = r.wait_for(&needle, READY_TIMEOUT) {
            panic!("launcher not ready: {e}");
        }
        r
    }

    /// The process id.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits"))
    }

    /// Waits until a stderr line contains `needle`; returns it, or everything seen so far.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no line with {needle:?} within {timeout:?}; stderr:\n{}",
                        self.seen.join("\n")
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "stderr closed before a line with {needle:?} ({:?}); stderr:\n{}",
                        self.child.try_wait(),
                        self.seen.join("\n")
                    ))
                }
            }
        }
    }

    /// A line already read that contains `needle`, else the next one within `timeout`.
    pub fn find_line(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return Ok(l.clone());
        }
        self.wait_for(needle, timeout)
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("kill");
    }

    /// Waits for the process to exit; kills it and panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "launcher did not exit within {timeout:?}; stderr:\n{}",
                    self.drain_stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything written to stderr so far (after exit: all of it).
    pub fn drain_stderr(&mut self) -> String {
        // After exit the reader thread ends at EOF, closing the channel.
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
        self.seen.join("\n")
    }

    /// Sends `sig` and expects a clean exit (status 0) within [`EXIT_TIMEOUT`].
    pub fn stop_with(&mut self, sig: Signal) -> String {
        self.signal(sig);
        let status = self.wait_exit(EXIT_TIMEOUT);
        let stderr = self.drain_stderr();
        assert!(
            status.success(),
            "exit status {status:?} (signal {:?}) after {sig}; stderr:\n{stderr}",
            status.signal()
        );
        stderr
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        // A launcher that exits removes its control socket; a killed one (here or by the
        // test) cannot.
        let killed = self.child.wait().map_or(true, |s| s.code().is_none());
        if let (true, Some(c)) = (killed, &self.control) {
            remove_stale_socket(c);
        }
    }
}

/// `launcher ctl --control CONTROL ARGS...`, run to completion.
pub fn ctl(control: &Path, args: &[&str]) -> Output {
    launcher()
        .arg("ctl")
        .arg("--control")
        .arg(control)
        .args(args)
        .output()
        .expect("run launcher ctl")
}

/// `ctl` that must succeed; returns its stdout.
pub fn ctl_ok(control: &Path, args: &[&str]) -> String {
    let out = ctl(control, args);
    assert!(
        out.status.success(),
        "ctl {args:?}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `ctl --json ARGS...` parsed.
pub fn ctl_json(control: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ctl_ok(control, &a)).expect("ctl --json prints JSON")
}

/// Polls `ctl status DEV --json` until `pred` holds; returns that status.
pub fn wait_status(
    control: &Path,
    dev: &str,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let st = ctl_json(control, &["status", dev]);
        if pred(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "status never matched; last: {st}"
        );
        // The supervisor has no event stream to wait on; poll its status.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A launcher serving one block device named `name` with its control socket in `dir`.
pub fn start_supervised(dir: &Path, name: &str, extra: &[&str]) -> (Running, PathBuf, PathBuf) {
    let image = sparse_image(dir, &format!("{name}.img"), 4 << 20);
    let socket = dir.join(format!("{name}.sock"));
    let control = dir.join("control.sock");
    let mut cmd = start_block(&socket, &image, &["--name", name, "--control"]);
    cmd.arg(&control).args(extra);
    let r = Running::start(cmd, &socket);
    (r, socket, control)
}
