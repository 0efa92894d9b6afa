//! Starting the real `launcher` binary from tests and tools, and waiting for it to be ready.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::guest::workspace_root;

/// Environment variable naming the launcher binary to use.
pub const LAUNCHER_ENV: &str = "VU_LAUNCHER";

/// Environment variable naming the control socket of `launcher start` and `launcher ctl`.
pub const CONTROL_ENV: &str = "VU_LAUNCHER_CONTROL";

/// A fresh control socket path in the temporary directory: every launcher started by
/// [`Launcher::try_spawn`] gets one (unless its arguments name one with `--control`), so that
/// launchers of parallel tests do not compete for the default control socket.
pub fn unique_control_path() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("vu-ctl-{}-{n}.sock", std::process::id()))
}

/// Runs `launcher ctl --control CONTROL ARGS...` to completion.
pub fn ctl(control: &Path, args: &[&str]) -> Result<std::process::Output> {
    let bin = launcher_bin()?;
    Command::new(&bin)
        .arg("ctl")
        .arg("--control")
        .arg(control)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} ctl", bin.display()))
}

/// Finds the launcher binary: `$VU_LAUNCHER`, else next to the running test binary's target
/// directory (`target/<profile>/launcher`), else `target/debug/launcher`.
pub fn launcher_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(LAUNCHER_ENV) {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/deps/test-binary or target/<profile>/tool
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join("launcher"));
        }
    }
    candidates.push(workspace_root().join("target/debug/launcher"));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .context("launcher binary not found: run `cargo build -p launcher` or set VU_LAUNCHER")
}

#[derive(Default)]
struct Log {
    lines: Vec<String>,
    closed: bool,
}

/// What [`Launcher::try_spawn`] came to.
#[derive(Debug)]
pub enum Spawned {
    /// It logged `listening on`.
    Ready(Launcher),
    /// It exited first.
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// Everything it wrote to stderr.
        stderr: String,
    },
}

/// The pids whose parent is `parent` (from /proc/PID/stat; /proc/PID/task/*/children needs
/// CONFIG_PROC_CHILDREN, which not every kernel has).
pub fn child_pids(parent: u32) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").context("read /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit while we look: skip it.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// A running launcher process.
pub struct Launcher {
    child: Child,
    log: Arc<(Mutex<Log>, Condvar)>,
    socket: PathBuf,
    control: PathBuf,
}

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launcher")
            .field("pid", &self.child.id())
            .finish()
    }
}

/// How long a launcher may take to bind its socket.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl Launcher {
    /// Runs `launcher start block --socket SOCKET --file IMAGE EXTRA...` and waits until it
    /// reports that it listens.
    pub fn start_block(socket: &Path, image: &Path, extra: &[&str]) -> Result<Launcher> {
        let mut args: Vec<String> = vec![
            "start".into(),
            "block".into(),
            "--socket".into(),
            socket.display().to_string(),
            "--file".into(),
            image.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(&args, socket)
    }

    /// Runs the launcher with `args` and waits for `listening on`.
    pub fn spawn(args: &[String], socket: &Path) -> Result<Launcher> {
        match Self::try_spawn(args, socket)? {
            Spawned::Ready(l) => Ok(l),
            Spawned::Exited { status, stderr } => {
                bail!("launcher did not become ready: it exited ({status})\n{stderr}")
            }
        }
    }

    /// Runs the launcher with `args` and waits until it is ready or has exited: a launcher
    /// that exits first (a refused start, a device that died) is not an error here.
    pub fn try_spawn(args: &[String], socket: &Path) -> Result<Spawned> {
        let bin = launcher_bin()?;
        // A control socket of its own, unless the arguments name one.
        let control = args
            .iter()
            .position(|a| a == "--control")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(unique_control_path);
        let mut child = Command::new(&bin)
            .args(args)
            .env(CONTROL_ENV, &control)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[launcher] {line}");
                let (m, cv) = &*l2;
                m.lock().unwrap_or_else(|e| e.into_inner()).lines.push(line);
                cv.notify_all();
            }
            let (m, cv) = &*l2;
            m.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
            cv.notify_all();
        });
        let mut l = Launcher {
            child,
            log,
            socket: socket.to_path_buf(),
            control,
        };
        match l.wait_for_line("listening on", READY_TIMEOUT) {
            Ok(_) => Ok(Spawned::Ready(l)),
            Err(e) => {
                if l.log_closed() {
                    // stderr closed: the launcher is exiting.
                    let status = l.wait(READY_TIMEOUT)?;
                    return Ok(Spawned::Exited {
                        status,
                        stderr: l.stderr(),
                    });
                }
                let _ = l.child.kill();
                let _ = l.child.wait();
                bail!("launcher did not become ready: {e:#}\n{}", l.stderr());
            }
        }
    }

    fn log_closed(&self) -> bool {
        let (m, _) = &*self.log;
        m.lock().unwrap_or_else(|e| e.into_inner()).closed
    }

    /// The device process the launcher started (its child; the launcher runs one device).
    pub fn device_pid(&self) -> Result<u32> {
        child_pids(self.pid())?
            .into_iter()
            .next()
            .context("the launcher has no device process")
    }

    /// Its control socket.
    pub fn control(&self) -> &Path {
        &self.control
    }

    /// Runs `launcher ctl ARGS...` against this launcher.
    pub fn ctl(&self, args: &[&str]) -> Result<std::process::Output> {
        ctl(&self.control, args)
    }

    /// How many stderr lines so far contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        let (m, _) = &*self.log;
        m.lock()
            .unwrap_or_else(|e| e.into_inner())
            .lines
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until at least `n` stderr lines contain `needle`.
    pub fn wait_for_nth_line(&self, needle: &str, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.log;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if g.lines.iter().filter(|l| l.contains(needle)).count() >= n {
                return Ok(());
            }
            if g.closed {
                bail!("launcher exited before printing {needle:?} {n} times");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("timed out waiting for {needle:?} {n} times");
            }
            g = cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until at least one stderr line contains `needle`.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.log;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(l) = g.lines.iter().find(|l| l.contains(needle)) {
                return Ok(l.clone());
            }
            if g.closed {
                bail!("launcher exited before printing {needle:?}");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("timed out waiting for {needle:?}");
            }
            g = cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Everything the launcher printed so far.
    pub fn stderr(&self) -> String {
        let (m, _) = &*self.log;
        m.lock().unwrap_or_else(|e| e.into_inner()).lines.join("\n")
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `sig` to the launcher.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .context("kill")?;
        Ok(())
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                bail!("launcher did not exit within {timeout:?}");
            }
            // Polling a child's exit status has no readiness fd; a short period is fine.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> Result<ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        let st = self.wait(Duration::from_secs(60))?;
        Ok(st)
    }
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

impl Drop for Launcher {
    /// A launcher still running is killed. One that was killed (here or by the test) cannot
    /// remove its sockets: they are removed here if nobody listens on them.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        // A launcher that exits removes its sockets; a killed one cannot.
        if self.child.wait().map_or(true, |s| s.code().is_none()) {
            remove_stale_socket(&self.control);
            remove_stale_socket(&self.socket);
        }
    }
}
