//! The supervisor: the launcher's parent process (not jailed) keeps N named devices running.
//!
//! Each device has resources the launcher holds for its whole life (image fd and lock,
//! listening socket, compiled seccomp filters) and at most one device process, started with a
//! fresh control socketpair and the same listening socket every time. States:
//!
//! - `starting`: the process runs but has not said "ready" yet;
//! - `running` / `asleep`: serving (asleep after `sleep`, until `wake`);
//! - `stopping`: asked to stop (SIGTERM: drain, flush, exit);
//! - `stopped`: no process, by the operator's request (`start` starts one);
//! - `restarting`: the process died; a new one starts after a backoff (100 ms doubling per
//!   crash in a row, up to 5 s);
//! - `failed`: more than `max_crashes` processes in a row died before they were ready,
//!   within the window (a configuration the device cannot start with); the reason is kept.
//!
//! A device whose process had become ready is always started again when it dies, however
//! often: a served disk is never given up on. Its backoff starts over once a process has
//! served for [`STABLE_SERVING`].
//!
//! One thread (the caller of [`run`]) owns the processes: it spawns, reaps and signals them,
//! driven by a signalfd (SIGCHLD, SIGINT, SIGTERM), the devices' "ready" bytes, timers and
//! commands from control clients (`stop`, `start`, `restart`). Control clients relay
//! device-level requests (status, sleep, wake, snapshot, restore, resize) themselves over the
//! device's control channel, one request at a time per device.
//!
//! A device that dies before it ever became ready while the launcher starts is a failed
//! start: the launcher stops the other devices and exits 1 saying how it died.

mod device;
mod lifecycle;
mod shared;

pub mod control_socket;
pub mod exit;
pub mod listen;
pub mod protocol;
pub mod socket;
pub mod start;

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use crate::metrics::MetricsListener;
use crate::process::ready::DeviceMessage;
use crate::process::spawn::SpawnError;
use crate::systemd::notify::Notifier;
use control_socket::ControlSocket;
pub use device::{backoff, CrashPolicy, DeviceSpec, State};
use device::{spawn_device, Device, Intent};
use exit::DeviceExit;
use protocol::SupervisorResponse;
use shared::Command;
pub use shared::Shared;

/// First restart delay after a crash.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a process must have served for its crash to start the backoff over.
pub const STABLE_SERVING: Duration = Duration::from_secs(30);
/// How long a device may take to say it is ready before it is killed (a failed start).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a device may take to stop (drain, flush) before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a device may take to answer a control request.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why supervising failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// signalfd failed.
    #[error("cannot read signals")]
    SignalFd(#[source] nix::Error),
    /// poll failed.
    #[error("cannot wait for the devices")]
    Poll(#[source] nix::Error),
    /// waitpid failed.
    #[error("cannot wait for the device processes")]
    Wait(#[source] nix::Error),
    /// The internal wake-up channel could not be made.
    #[error("cannot create the supervisor's wake-up channel")]
    WakeChannel(#[source] io::Error),
    /// A device process could not be started.
    #[error("device {name}")]
    Spawn {
        /// The device.
        name: String,
        /// The cause.
        #[source]
        source: SpawnError,
    },
    /// A device died while the launcher was starting.
    #[error("{name}: device {kind} (pid {pid}) {exit}")]
    DeviceDied {
        /// The device's name.
        name: String,
        /// Its kind.
        kind: &'static str,
        /// Its pid.
        pid: i32,
        /// How it ended.
        exit: DeviceExit,
    },
    /// Devices ended badly while the launcher stopped them.
    #[error("while stopping: {0}")]
    StopFailed(String),
    /// A second signal: the devices were killed.
    #[error("devices killed on a second signal without draining or flushing: {0}")]
    Killed(String),
}

/// Supervises `specs` until SIGINT/SIGTERM (every device then drains, flushes and exits), or
/// until a device fails to start. `control` (if any) is served meanwhile and removed at the
/// end, as are the devices' sockets (those the launcher created); so is `metrics` (if any).
/// systemd is told of readiness, status and shutdown when it asked
/// (`crate::systemd::notify`).
pub fn run(
    specs: Vec<DeviceSpec>,
    control: Option<ControlSocket>,
    metrics: Option<MetricsListener>,
    policy: CrashPolicy,
    signals: &SigSet,
) -> Result<(), SupervisorError> {
    let sfd = SignalFd::with_flags(signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(SupervisorError::SignalFd)?;
    let (wake_rd, wake_wr) = UnixStream::pair().map_err(SupervisorError::WakeChannel)?;
    wake_rd
        .set_nonblocking(true)
        .map_err(SupervisorError::WakeChannel)?;
    wake_wr
        .set_nonblocking(true)
        .map_err(SupervisorError::WakeChannel)?;
    let devices = specs
        .into_iter()
        .map(|spec| Device {
            spec,
            state: State::Stopped,
            proc_: None,
            restarts: 0,
            crashes: 0,
            failed_starts: 0,
            recent_failed: VecDeque::new(),
            crash_streak: 0,
            doom_next: 0,
            last_exit: None,
            failure: None,
            initial: true,
            retry_at: None,
            intent: None,
            stop_deadline: None,
            waiters: Vec::new(),
        })
        .collect();
    let shared = Arc::new(Shared {
        devices: Mutex::new(devices),
        commands: Mutex::new(Vec::new()),
        wake: wake_wr,
    });
    let mut sup = Supervisor {
        shared: shared.clone(),
        policy,
        shutting_down: false,
        fatal: None,
        bad_stops: Vec::new(),
        notify: Notifier::from_env(),
    };
    let mut result = sup.start_all();
    if result.is_ok() {
        if let Some(c) = &control {
            c.serve_in_background(shared.clone());
        }
        if let Some(m) = metrics {
            serve_metrics(m, shared.clone());
        }
        result = sup.main_loop(&sfd, &wake_rd);
    }
    if result.is_err() {
        // Never leave a device running unsupervised.
        sup.kill_all();
    } else {
        // Every process stopped cleanly: what the kinds hold (image locks) goes at once.
        for d in shared.devices().iter() {
            if let Some(k) = crate::kinds::find(d.spec.kind) {
                k.release(&d.spec.resources.kind_fds);
            }
        }
    }
    if let Some(c) = &control {
        c.remove();
    }
    // Pending clients get an answer.
    for c in sup.take_commands() {
        let _ = c.reply.send(SupervisorResponse::Error(
            "the launcher is shutting down".into(),
        ));
    }
    let mut devs = shared.devices();
    for d in devs.iter_mut() {
        d.spec.resources.socket.remove();
        // The kind's companion lets go of what it holds (vsock: its --uds-path socket).
        drop(d.spec.companion.take());
        d.reply_all(&SupervisorResponse::Error(
            "the launcher is shutting down".into(),
        ));
    }
    result
}

/// Serves scrapes with what `Metrics` of the control socket answers.
fn serve_metrics(m: MetricsListener, shared: Arc<Shared>) {
    m.serve_in_background(Arc::new(move || match shared.metrics() {
        SupervisorResponse::Metrics(text) => text,
        _ => String::new(),
    }));
}

pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    policy: CrashPolicy,
    shutting_down: bool,
    fatal: Option<SupervisorError>,
    bad_stops: Vec<String>,
    notify: Notifier,
}

impl Supervisor {
    fn start_all(&mut self) -> Result<(), SupervisorError> {
        let mut devs = self.shared.devices();
        for d in devs.iter_mut() {
            spawn_device(d).map_err(|source| SupervisorError::Spawn {
                name: d.spec.name.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn take_commands(&self) -> Vec<Command> {
        std::mem::take(
            &mut *self
                .shared
                .commands
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    fn kill_all(&mut self) {
        let mut devs = self.shared.devices();
        for d in devs.iter_mut() {
            if let Some(p) = d.proc_.take() {
                let _ = kill(p.pid, Signal::SIGKILL);
                let _ = waitpid(p.pid, None);
                d.state = State::Stopped;
            }
        }
    }

    /// Tells systemd what changed (readiness, status, shutdown) and pings its watchdog.
    fn notify_systemd(&mut self) {
        let devs: Vec<_> = self.shared.devices().iter().map(|d| d.summary()).collect();
        self.notify.update(&devs, self.shutting_down);
    }

    fn main_loop(&mut self, sfd: &SignalFd, wake_rd: &UnixStream) -> Result<(), SupervisorError> {
        loop {
            self.notify_systemd();
            if self.shutting_down && self.shared.devices().iter().all(|d| d.proc_.is_none()) {
                if let Some(e) = self.fatal.take() {
                    return Err(e);
                }
                if !self.bad_stops.is_empty() {
                    return Err(SupervisorError::StopFailed(self.bad_stops.join("; ")));
                }
                return Ok(());
            }
            let (starting, timeout) = self.wait_plan();
            let timeout = earlier(timeout, self.notify.next_ping());
            let (sig_ready, wake_ready, ready_devs) = {
                let mut fds = vec![
                    PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(wake_rd.as_fd(), PollFlags::POLLIN),
                ];
                for (_, s) in &starting {
                    fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(nix::Error::EINTR) => continue,
                    Err(e) => return Err(SupervisorError::Poll(e)),
                }
                let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
                let devs: Vec<usize> = fds[2..]
                    .iter()
                    .zip(&starting)
                    .filter(|(f, _)| ready(f))
                    .map(|(_, (i, _))| *i)
                    .collect();
                (ready(&fds[0]), ready(&fds[1]), devs)
            };
            for i in ready_devs {
                self.read_ready(i);
            }
            if sig_ready {
                self.signals(sfd)?;
            }
            if wake_ready {
                let mut buf = [0u8; 64];
                while matches!((&*wake_rd).read(&mut buf), Ok(n) if n > 0) {}
            }
            for c in self.take_commands() {
                let r = self.command(c.req, &c.reply);
                if let Some(r) = r {
                    let _ = c.reply.send(r);
                }
            }
            self.timers();
        }
    }

    /// What the next wait watches besides signals and the wake-up channel (the channels of
    /// starting devices, by index), and how long it may last (until the next timer).
    fn wait_plan(&self) -> (Vec<(usize, UnixStream)>, PollTimeout) {
        let devs = self.shared.devices();
        let mut starting = Vec::new();
        let mut next: Option<Instant> = None;
        let mut earliest = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for (i, d) in devs.iter().enumerate() {
            earliest(d.retry_at);
            earliest(d.stop_deadline);
            if let Some(p) = &d.proc_ {
                if let Some(rd) = &p.ready_rd {
                    if let Ok(c) = rd.try_clone() {
                        starting.push((i, c));
                    }
                    earliest(Some(p.started + READY_TIMEOUT));
                }
            }
        }
        let timeout = match next {
            None => PollTimeout::NONE,
            Some(t) => {
                let ms = t
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .saturating_add(1);
                PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::NONE)
            }
        };
        (starting, timeout)
    }

    /// A starting device's channel is readable: its ready byte, or EOF (it died; SIGCHLD
    /// follows).
    fn read_ready(&mut self, i: usize) {
        let mut devs = self.shared.devices();
        let d = &mut devs[i];
        let Some(p) = d.proc_.as_mut() else { return };
        let Some(rd) = p.ready_rd.as_ref() else {
            return;
        };
        let mut b = [0u8; 1];
        match (&*rd).read(&mut b) {
            Ok(1) if p.doomed => p.ready_rd = None,
            Ok(1) if DeviceMessage::from_byte(b[0]) == Some(DeviceMessage::Ready) => {
                // Back to blocking, with timeouts, for control requests.
                let _ = rd.set_nonblocking(false);
                let _ = rd.set_read_timeout(Some(CONTROL_TIMEOUT));
                let _ = rd.set_write_timeout(Some(CONTROL_TIMEOUT));
                p.ready_rd = None;
                p.ready = Some(Instant::now());
                let pid = p.pid;
                d.initial = false;
                d.failed_starts = 0;
                d.recent_failed.clear();
                if d.intent.is_none() {
                    d.state = State::Running;
                }
                tracing::info!(
                    device = %d.spec.name,
                    pid = pid.as_raw(),
                    "listening on {}",
                    d.spec.resources.socket.path().display()
                );
                d.reply_all(&SupervisorResponse::Ok);
            }
            Ok(1) => {
                tracing::warn!(device = %d.spec.name, byte = b[0], "unknown message on the control channel");
            }
            Ok(_) => {
                // EOF: the process is dying; stop polling it.
                p.ready_rd = None;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => p.ready_rd = None,
        }
    }

    fn signals(&mut self, sfd: &SignalFd) -> Result<(), SupervisorError> {
        while let Some(info) = sfd.read_signal().map_err(SupervisorError::SignalFd)? {
            let sig = i32::try_from(info.ssi_signo)
                .ok()
                .and_then(|s| Signal::try_from(s).ok());
            match sig {
                Some(Signal::SIGCHLD) => self.reap()?,
                Some(sig @ (Signal::SIGINT | Signal::SIGTERM)) if !self.shutting_down => {
                    tracing::info!(signal = %sig, "shutting down: every device drains, flushes and exits");
                    self.begin_shutdown();
                }
                Some(sig @ (Signal::SIGINT | Signal::SIGTERM)) => {
                    tracing::warn!(
                        signal = %sig,
                        "second signal; killing the devices without draining or flushing"
                    );
                    let names: Vec<String> = self
                        .shared
                        .devices()
                        .iter()
                        .filter(|d| d.proc_.is_some())
                        .map(|d| d.spec.name.clone())
                        .collect();
                    self.kill_all();
                    return Err(SupervisorError::Killed(names.join(", ")));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        let mut devs = self.shared.devices();
        for d in devs.iter_mut() {
            d.retry_at = None;
            match &d.proc_ {
                Some(p) => {
                    if d.intent.is_none() || d.intent == Some(Intent::Restart) {
                        // The device blocks SIGTERM and takes it with sigwait.
                        if let Err(e) = kill(p.pid, Signal::SIGTERM) {
                            tracing::warn!(device = %d.spec.name, error = %e, "cannot signal the device");
                        }
                    }
                    d.intent = Some(Intent::Shutdown);
                    d.state = State::Stopping;
                    d.stop_deadline = None;
                }
                None => {
                    d.state = State::Stopped;
                }
            }
            d.reply_all(&SupervisorResponse::Error(
                "the launcher is shutting down".into(),
            ));
        }
    }

    fn reap(&mut self) -> Result<(), SupervisorError> {
        loop {
            let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, DeviceExit::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, DeviceExit::Signaled(sig)),
                Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => return Ok(()),
                Ok(_) => continue,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(SupervisorError::Wait(e)),
            };
            self.exited(pid, exit);
        }
    }
}

/// `timeout`, or less if `deadline` comes first.
fn earlier(timeout: PollTimeout, deadline: Option<Instant>) -> PollTimeout {
    let Some(t) = deadline else { return timeout };
    let ms = t
        .saturating_duration_since(Instant::now())
        .as_millis()
        .saturating_add(1)
        .min(60_000);
    let ms = PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::NONE);
    if timeout == PollTimeout::NONE || ms < timeout {
        ms
    } else {
        timeout
    }
}
