//! A supervised device: its spec (what every process of it receives), its state, its current
//! process, and starting a new process.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::protocol::{DeviceStatus, SupervisorResponse};
use super::start::Resources;
use super::{BACKOFF_MAX, BACKOFF_MIN};
use crate::cli::kind_commands::DeviceLayout;
use crate::cli::{JailUser, SandboxMode};
use crate::kinds::Companion;
use crate::process::spawn::{self, Confinement, SpawnError, SpawnRequest};

/// A device as the supervisor starts it.
#[derive(Debug)]
pub struct DeviceSpec {
    /// Its name (unique).
    pub name: String,
    /// Its kind ("block").
    pub kind: &'static str,
    /// What it serves, for messages (`image = /path`).
    pub describe: Vec<(&'static str, String)>,
    /// Its kind's parent-side companion, called around each process.
    pub companion: Option<Box<dyn Companion>>,
    /// What every process of it receives.
    pub resources: Resources,
    /// The fd numbers in its processes (as `args` names them).
    pub layout: DeviceLayout,
    /// Arguments of the device process (`__device <kind> ...`).
    pub args: Vec<OsString>,
    /// Jail or not.
    pub confinement: Confinement,
    /// For messages.
    pub sandbox: SandboxMode,
    /// For messages.
    pub jail_user: JailUser,
}

/// When a device whose processes die before they are ready is given up on. A device that
/// was ready is never given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashPolicy {
    /// More failed starts in a row than this within `window` make the device failed.
    pub max_crashes: u32,
    /// The window.
    pub window: Duration,
}

/// A device's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Started, not ready yet.
    Starting,
    /// Serving.
    Running,
    /// Serving, asleep.
    Asleep,
    /// Asked to stop.
    Stopping,
    /// No process, on request.
    Stopped,
    /// Waiting for the backoff before a restart.
    Restarting,
    /// Its processes died before they were ready too often (or one could not be started).
    Failed,
}

impl State {
    /// As shown by `launcher ctl`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Asleep => "asleep",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Restarting => "restarting",
            State::Failed => "failed",
        }
    }
}

/// Why a process is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Intent {
    Stop,
    Restart,
    Shutdown,
}

/// The supervisor's end of a device's control channel; `None` once it broke.
pub(super) type Channel = Arc<Mutex<Option<UnixStream>>>;

#[derive(Debug)]
pub(super) struct Proc {
    pub(super) pid: Pid,
    pub(super) started: Instant,
    pub(super) ready: Option<Instant>,
    /// Test-only (`fail-starts`): killed right after it was started, so that it dies before
    /// it is ready; its ready byte, should one come, is ignored.
    pub(super) doomed: bool,
    /// A clone of the channel, polled (non-blocking) for the ready byte while starting.
    pub(super) ready_rd: Option<UnixStream>,
    pub(super) channel: Channel,
}

#[derive(Debug)]
pub(super) struct Device {
    pub(super) spec: DeviceSpec,
    pub(super) state: State,
    pub(super) proc_: Option<Proc>,
    pub(super) restarts: u64,
    pub(super) crashes: u64,
    /// Processes in a row that died before they were ready (reset when one is ready).
    pub(super) failed_starts: u64,
    /// When the failed starts of this row happened, pruned to the policy's window.
    pub(super) recent_failed: VecDeque<Instant>,
    /// Crashes in a row of processes that had been ready, for the restart backoff; a
    /// process that served for [`super::STABLE_SERVING`] starts the count over.
    pub(super) crash_streak: u32,
    /// Test-only (`test-trigger DEV fail-starts N`, debug builds): the next N processes are
    /// killed before they can be ready.
    pub(super) doom_next: u32,
    pub(super) last_exit: Option<String>,
    pub(super) failure: Option<String>,
    /// No process of it has been ready yet, and it was started by the launcher's start.
    pub(super) initial: bool,
    pub(super) retry_at: Option<Instant>,
    pub(super) intent: Option<Intent>,
    pub(super) stop_deadline: Option<Instant>,
    /// Replies due when the current start or stop completes.
    pub(super) waiters: Vec<Sender<SupervisorResponse>>,
}

impl Device {
    pub(super) fn summary(&self) -> DeviceStatus {
        DeviceStatus {
            name: self.spec.name.clone(),
            kind: self.spec.kind.to_string(),
            socket: self.spec.resources.socket.path().display().to_string(),
            state: self.state.as_str().to_string(),
            pid: self.proc_.as_ref().map(|p| p.pid.as_raw()),
            uptime_ms: self
                .proc_
                .as_ref()
                .and_then(|p| p.ready)
                .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)),
            restarts: self.restarts,
            crashes: self.crashes,
            failed_starts: self.failed_starts,
            last_exit: self.last_exit.clone(),
            failure: self.failure.clone(),
            report: None,
            report_error: None,
        }
    }

    pub(super) fn reply_all(&mut self, r: &SupervisorResponse) {
        for w in self.waiters.drain(..) {
            let _ = w.send(r.clone());
        }
    }
}

/// The delay before starting a device again after its `in_a_row`-th crash (or failed start)
/// in a row: 100 ms, doubling each time, at most 5 s.
pub fn backoff(in_a_row: u64) -> Duration {
    let shift = u32::try_from(in_a_row.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    BACKOFF_MIN.saturating_mul(1 << shift).min(BACKOFF_MAX)
}

/// Starts a new process for `d` with a fresh control socketpair.
pub(super) fn spawn_device(d: &mut Device) -> Result<(), SpawnError> {
    let (ours, theirs) = UnixStream::pair().map_err(SpawnError::Socketpair)?;
    let fresh = match d.spec.companion.as_mut() {
        Some(c) => c.before_spawn().map_err(SpawnError::Companion)?,
        None => Vec::new(),
    };
    let r = &d.spec.resources;
    let l = &d.spec.layout;
    let mut fds: Vec<_> = r
        .kind_fds
        .iter()
        .chain(&fresh)
        .zip(&l.kind_fds)
        .map(|(fd, n)| (fd.as_fd(), *n))
        .collect();
    fds.push((r.listener.as_fd(), l.socket));
    fds.push((theirs.as_fd(), l.control));
    if let (Some(f), Some(n)) = (&r.filters, l.seccomp) {
        fds.push((f.as_fd(), n));
    }
    let pid = spawn::spawn(&SpawnRequest {
        device: d.spec.kind,
        args: d.spec.args.clone(),
        fds,
        confinement: d.spec.confinement,
    })?;
    drop(theirs);
    drop(fresh);
    if let Some(c) = d.spec.companion.as_mut() {
        c.spawned(pid.as_raw());
    }
    let ready_rd = ours.try_clone().map_err(SpawnError::Socketpair)?;
    ready_rd
        .set_nonblocking(true)
        .map_err(SpawnError::Socketpair)?;
    tracing::info!(
        device = %d.spec.name,
        kind = d.spec.kind,
        pid = pid.as_raw(),
        sandbox = d.spec.sandbox.as_str(),
        jail_user = %format_args!("{}:{}", d.spec.jail_user.uid, d.spec.jail_user.gid),
        serves = %describe(&d.spec.describe),
        "device process started"
    );
    let doomed = cfg!(debug_assertions) && d.doom_next > 0;
    if doomed {
        d.doom_next -= 1;
        tracing::warn!(device = %d.spec.name, pid = pid.as_raw(), left = d.doom_next, "test trigger fail-starts: killing the new process before it is ready");
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    d.proc_ = Some(Proc {
        pid,
        started: Instant::now(),
        ready: None,
        doomed,
        ready_rd: Some(ready_rd),
        channel: Arc::new(Mutex::new(Some(ours))),
    });
    d.state = State::Starting;
    Ok(())
}

/// `key=value` pairs for a log line.
fn describe(pairs: &[(&'static str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(7), Duration::from_secs(5));
        assert_eq!(backoff(1000), Duration::from_secs(5));
    }

    #[test]
    fn states_are_named_for_ctl() {
        let names: Vec<&str> = [
            State::Starting,
            State::Running,
            State::Asleep,
            State::Stopping,
            State::Stopped,
            State::Restarting,
            State::Failed,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        assert_eq!(
            names,
            [
                "starting",
                "running",
                "asleep",
                "stopping",
                "stopped",
                "restarting",
                "failed"
            ]
        );
    }
}
