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
//! - `restarting`: the process crashed; a new one starts after a backoff (100 ms doubling per
//!   recent crash, up to 5 s);
//! - `failed`: more than `max_crashes` crashes within the window; the reason is kept.
//!
//! One thread (the caller of [`run`]) owns the processes: it spawns, reaps and signals them,
//! driven by a signalfd (SIGCHLD, SIGINT, SIGTERM), the devices' "ready" bytes, timers and
//! commands from control clients (`stop`, `start`, `restart`). Control clients relay
//! device-level requests (status, sleep, wake, snapshot, restore, resize) themselves over the
//! device's control channel, one request at a time per device.
//!
//! A device that dies before it ever became ready while the launcher starts is a failed
//! start: the launcher stops the other devices and exits 1 saying how it died.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use vu_core::control::{
    self as proto, DeviceStatus, Request, Response, SupervisorRequest, SupervisorResponse,
};

use crate::cli::{JailUser, SandboxMode};
use crate::control::DeviceMessage;
use crate::control_socket::ControlSocket;
use crate::spawn::{self, Confinement, SpawnError, SpawnRequest};
use crate::start::{
    Resources, BLOCK_FD_CONTROL, BLOCK_FD_IMAGE, BLOCK_FD_SECCOMP, BLOCK_FD_SOCKET,
};
use crate::supervise::DeviceExit;

/// First restart delay after a crash.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a device may take to say it is ready before it is killed (and counted as a crash).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a device may take to stop (drain, flush) before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a device may take to answer a control request.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// A device as the supervisor starts it.
#[derive(Debug)]
pub struct DeviceSpec {
    /// Its name (unique).
    pub name: String,
    /// Its kind ("block").
    pub kind: &'static str,
    /// The image's path, for messages.
    pub image_path: PathBuf,
    /// What every process of it receives.
    pub resources: Resources,
    /// Arguments of the device process (`__device <kind> ...`).
    pub args: Vec<OsString>,
    /// Jail or not.
    pub confinement: Confinement,
    /// For messages.
    pub sandbox: SandboxMode,
    /// For messages.
    pub jail_user: JailUser,
}

/// When a crashing device is given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashPolicy {
    /// More crashes than this within `window` make the device failed.
    pub max_crashes: u32,
    /// The window.
    pub window: Duration,
}

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
    /// Crashed too often.
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
enum Intent {
    Stop,
    Restart,
    Shutdown,
}

/// The supervisor's end of a device's control channel; `None` once it broke.
type Channel = Arc<Mutex<Option<UnixStream>>>;

#[derive(Debug)]
struct Proc {
    pid: Pid,
    started: Instant,
    ready: Option<Instant>,
    /// A clone of the channel, polled (non-blocking) for the ready byte while starting.
    ready_rd: Option<UnixStream>,
    channel: Channel,
}

#[derive(Debug)]
struct Device {
    spec: DeviceSpec,
    state: State,
    proc_: Option<Proc>,
    restarts: u64,
    crashes: u64,
    recent: VecDeque<Instant>,
    last_exit: Option<String>,
    failure: Option<String>,
    /// No process of it has been ready yet, and it was started by the launcher's start.
    initial: bool,
    retry_at: Option<Instant>,
    intent: Option<Intent>,
    stop_deadline: Option<Instant>,
    /// Replies due when the current start or stop completes.
    waiters: Vec<Sender<SupervisorResponse>>,
}

impl Device {
    fn summary(&self) -> DeviceStatus {
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
            last_exit: self.last_exit.clone(),
            failure: self.failure.clone(),
            report: None,
            report_error: None,
        }
    }

    fn reply_all(&mut self, r: &SupervisorResponse) {
        for w in self.waiters.drain(..) {
            let _ = w.send(r.clone());
        }
    }
}

/// A command for the process-owning thread.
#[derive(Debug)]
struct Command {
    req: SupervisorRequest,
    reply: Sender<SupervisorResponse>,
}

/// What control clients share with the supervisor thread.
#[derive(Debug)]
pub struct Shared {
    devices: Mutex<Vec<Device>>,
    commands: Mutex<Vec<Command>>,
    wake: UnixStream,
}

impl Shared {
    fn devices(&self) -> MutexGuard<'_, Vec<Device>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers one request of a control client.
    pub fn handle(&self, req: SupervisorRequest) -> SupervisorResponse {
        match req {
            SupervisorRequest::List => {
                SupervisorResponse::Devices(self.devices().iter().map(Device::summary).collect())
            }
            SupervisorRequest::Status(name) => self.status(name.as_deref()),
            SupervisorRequest::Sleep(name) => self.relay_ok(&name, Request::Sleep),
            SupervisorRequest::Wake(name) => self.relay_ok(&name, Request::Wake),
            SupervisorRequest::Resize(name, size) => self.relay_ok(&name, Request::Resize(size)),
            SupervisorRequest::Restore(name, data) => self.relay_ok(&name, Request::Restore(data)),
            SupervisorRequest::Snapshot(name) => match self.relay(&name, Request::Snapshot) {
                Ok(Response::Snapshot(data)) => SupervisorResponse::Snapshot(data),
                Ok(other) => unexpected(&name, &other),
                Err(e) => SupervisorResponse::Error(e),
            },
            SupervisorRequest::TestTrigger(name, trigger) => {
                self.relay_ok(&name, Request::TestTrigger(trigger))
            }
            req @ (SupervisorRequest::Stop(_)
            | SupervisorRequest::Start(_)
            | SupervisorRequest::Restart(_)) => self.command(req),
        }
    }

    /// Hands a process-management request to the supervisor thread and waits for its answer.
    fn command(&self, req: SupervisorRequest) -> SupervisorResponse {
        let (tx, rx) = mpsc::channel();
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Command { req, reply: tx });
        if let Err(e) = (&self.wake).write_all(&[1]) {
            // A full pipe already wakes the supervisor; anything else is fatal for this call.
            if e.kind() != io::ErrorKind::WouldBlock {
                return SupervisorResponse::Error(format!("cannot reach the supervisor: {e}"));
            }
        }
        rx.recv()
            .unwrap_or_else(|_| SupervisorResponse::Error("the launcher is shutting down".into()))
    }

    fn status(&self, name: Option<&str>) -> SupervisorResponse {
        let names: Vec<String> = {
            let devs = self.devices();
            match name {
                Some(n) => match find(&devs, n) {
                    Ok(_) => vec![n.to_string()],
                    Err(e) => return SupervisorResponse::Error(e),
                },
                None => devs.iter().map(|d| d.spec.name.clone()).collect(),
            }
        };
        let mut out = Vec::new();
        for n in names {
            let live = {
                let devs = self.devices();
                let Ok(i) = find(&devs, &n) else { continue };
                matches!(devs[i].state, State::Running | State::Asleep)
            };
            let (report, report_error) = if live {
                match self.relay(&n, Request::Status) {
                    Ok(Response::Status(r)) => (Some(r), None),
                    Ok(other) => (None, Some(format!("unexpected answer {other:?}"))),
                    Err(e) => (None, Some(e)),
                }
            } else {
                (None, None)
            };
            let devs = self.devices();
            let Ok(i) = find(&devs, &n) else { continue };
            let mut st = devs[i].summary();
            st.report = report;
            st.report_error = report_error;
            out.push(st);
        }
        SupervisorResponse::Devices(out)
    }

    fn relay_ok(&self, name: &str, req: Request) -> SupervisorResponse {
        let what = request_name(&req);
        match self.relay(name, req) {
            Ok(Response::Ok) => {
                let mut devs = self.devices();
                if let Ok(i) = find(&devs, name) {
                    let d = &mut devs[i];
                    match (what, d.state) {
                        ("sleep", State::Running) => d.state = State::Asleep,
                        ("wake", State::Asleep) => d.state = State::Running,
                        _ => {}
                    }
                }
                drop(devs);
                tracing::info!(device = name, request = what, "done");
                SupervisorResponse::Ok
            }
            Ok(Response::Error(e)) => SupervisorResponse::Error(format!("{name}: {what}: {e}")),
            Ok(other) => unexpected(name, &other),
            Err(e) => SupervisorResponse::Error(e),
        }
    }

    /// Sends `req` to the device's current process and returns its answer, or why there is
    /// none. A channel that fails mid-request is out of step: it is closed and the process
    /// killed (the supervisor restarts it like any crashed device).
    fn relay(&self, name: &str, req: Request) -> Result<Response, String> {
        let (channel, pid) = {
            let devs = self.devices();
            let d = &devs[find(&devs, name)?];
            match (&d.proc_, d.state) {
                (Some(p), State::Running | State::Asleep) => (p.channel.clone(), p.pid),
                _ => {
                    return Err(format!(
                        "device {name} is {}; it must be running",
                        d.state.as_str()
                    ))
                }
            }
        };
        let mut guard = channel.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stream) = guard.as_mut() else {
            return Err(format!(
                "device {name} (pid {pid}): its control channel broke; it is being restarted"
            ));
        };
        let trigger = matches!(req, Request::TestTrigger(_));
        match proto::call(stream, &req) {
            Ok(r) => Ok(r),
            Err(proto::ControlError::Closed | proto::ControlError::Io(_)) if trigger => {
                *guard = None;
                Ok(Response::Ok)
            }
            Err(e) => {
                *guard = None;
                let _ = kill(pid, Signal::SIGKILL);
                tracing::error!(device = name, pid = pid.as_raw(), error = %e, "control channel failed; killing the device");
                Err(format!(
                    "device {name} (pid {pid}) did not answer on its control channel ({e}); it \
                     was killed and will be restarted"
                ))
            }
        }
    }
}

fn request_name(req: &Request) -> &'static str {
    match req {
        Request::Ping => "ping",
        Request::Status => "status",
        Request::Sleep => "sleep",
        Request::Wake => "wake",
        Request::Snapshot => "snapshot",
        Request::Restore(_) => "restore",
        Request::Resize(_) => "resize",
        Request::TestTrigger(_) => "test-trigger",
    }
}

fn unexpected(name: &str, r: &Response) -> SupervisorResponse {
    SupervisorResponse::Error(format!("device {name} answered unexpectedly: {r:?}"))
}

fn find(devs: &[Device], name: &str) -> Result<usize, String> {
    devs.iter()
        .position(|d| d.spec.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = devs.iter().map(|d| d.spec.name.as_str()).collect();
            format!(
                "no device named {name:?} (devices: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
}

/// Supervises `specs` until SIGINT/SIGTERM (every device then drains, flushes and exits), or
/// until a device fails to start. `control` is served meanwhile and removed at the end, as
/// are the devices' sockets.
pub fn run(
    specs: Vec<DeviceSpec>,
    control: ControlSocket,
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
            recent: VecDeque::new(),
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
    };
    let mut result = sup.start_all();
    if result.is_ok() {
        control.serve_in_background(shared.clone());
        result = sup.main_loop(&sfd, &wake_rd);
    }
    if result.is_err() {
        // Never leave a device running unsupervised.
        sup.kill_all();
    }
    control.remove();
    // Pending clients get an answer.
    for c in sup.take_commands() {
        let _ = c.reply.send(SupervisorResponse::Error(
            "the launcher is shutting down".into(),
        ));
    }
    let mut devs = shared.devices();
    for d in devs.iter_mut() {
        d.spec.resources.socket.remove();
        d.reply_all(&SupervisorResponse::Error(
            "the launcher is shutting down".into(),
        ));
    }
    result
}

struct Supervisor {
    shared: Arc<Shared>,
    policy: CrashPolicy,
    shutting_down: bool,
    fatal: Option<SupervisorError>,
    bad_stops: Vec<String>,
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

    fn main_loop(&mut self, sfd: &SignalFd, wake_rd: &UnixStream) -> Result<(), SupervisorError> {
        loop {
            if self.shutting_down && self.shared.devices().iter().all(|d| d.proc_.is_none()) {
                if let Some(e) = self.fatal.take() {
                    return Err(e);
                }
                if !self.bad_stops.is_empty() {
                    return Err(SupervisorError::StopFailed(self.bad_stops.join("; ")));
                }
                return Ok(());
            }
            // The fds to poll: signals, the wake-up channel, starting devices' channels.
            let (starting, timeout) = {
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
            };
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
            Ok(1) if DeviceMessage::from_byte(b[0]) == Some(DeviceMessage::Ready) => {
                // Back to blocking, with timeouts, for control requests.
                let _ = rd.set_nonblocking(false);
                let _ = rd.set_read_timeout(Some(CONTROL_TIMEOUT));
                let _ = rd.set_write_timeout(Some(CONTROL_TIMEOUT));
                p.ready_rd = None;
                p.ready = Some(Instant::now());
                let pid = p.pid;
                d.initial = false;
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

    fn exited(&mut self, pid: Pid, exit: DeviceExit) {
        let mut devs = self.shared.devices();
        let Some(d) = devs
            .iter_mut()
            .find(|d| d.proc_.as_ref().is_some_and(|p| p.pid == pid))
        else {
            return;
        };
        d.proc_ = None;
        d.stop_deadline = None;
        let name = d.spec.name.clone();
        let desc = format!("device {} (pid {pid}) {exit}", d.spec.kind);
        d.last_exit = Some(exit.to_string());
        let clean = exit == DeviceExit::Exited(0);
        match d.intent.take() {
            Some(Intent::Stop) => {
                d.state = State::Stopped;
                if clean {
                    tracing::info!(device = %name, pid = pid.as_raw(), "stopped");
                    d.reply_all(&SupervisorResponse::Ok);
                } else {
                    tracing::warn!("{name}: {desc} while stopping");
                    d.reply_all(&SupervisorResponse::Error(format!(
                        "{name}: {desc} while stopping"
                    )));
                }
            }
            Some(Intent::Restart) => {
                if clean {
                    tracing::info!(device = %name, pid = pid.as_raw(), "stopped; starting a new process");
                } else {
                    tracing::warn!("{name}: {desc} while stopping; starting a new process");
                }
                d.restarts += 1;
                if let Err(e) = spawn_device(d) {
                    let reason = format!("cannot start a new process: {e}");
                    tracing::error!(device = %name, "{reason}");
                    d.state = State::Failed;
                    d.failure = Some(reason.clone());
                    d.reply_all(&SupervisorResponse::Error(format!("{name}: {reason}")));
                }
            }
            Some(Intent::Shutdown) => {
                d.state = State::Stopped;
                if clean {
                    tracing::info!(device = %name, pid = pid.as_raw(), "stopped");
                } else {
                    tracing::error!("{name}: {desc} while stopping");
                    self.bad_stops.push(format!("{name}: {desc}"));
                }
            }
            None => {
                tracing::error!("{name}: {desc}");
                if d.initial {
                    d.state = State::Failed;
                    d.failure = Some(format!("failed to start: {desc}"));
                    if self.fatal.is_none() {
                        self.fatal = Some(SupervisorError::DeviceDied {
                            name,
                            kind: d.spec.kind,
                            pid: pid.as_raw(),
                            exit,
                        });
                    }
                    drop(devs);
                    if !self.shutting_down {
                        self.begin_shutdown();
                    }
                    return;
                }
                d.crashes += 1;
                let now = Instant::now();
                d.recent.push_back(now);
                while d
                    .recent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.policy.window)
                {
                    d.recent.pop_front();
                }
                d.reply_all(&SupervisorResponse::Error(format!("{name}: {desc}")));
                let n = d.recent.len();
                if self.shutting_down {
                    d.state = State::Stopped;
                } else if n > self.policy.max_crashes as usize {
                    let reason = format!(
                        "crashed {n} times within {} s; last: {desc}",
                        self.policy.window.as_secs()
                    );
                    tracing::error!(device = %name, "failed: {reason}; `launcher ctl start {name}` tries again");
                    d.state = State::Failed;
                    d.failure = Some(reason);
                } else {
                    let backoff = backoff(n);
                    tracing::warn!(device = %name, backoff_ms = backoff.as_millis() as u64, "restarting after a crash");
                    d.state = State::Restarting;
                    d.retry_at = Some(now + backoff);
                }
            }
        }
    }

    /// Stop, start, restart. `None`: the answer comes when the process is ready or gone.
    fn command(
        &mut self,
        req: SupervisorRequest,
        reply: &Sender<SupervisorResponse>,
    ) -> Option<SupervisorResponse> {
        if self.shutting_down {
            return Some(SupervisorResponse::Error(
                "the launcher is shutting down".into(),
            ));
        }
        let mut devs = self.shared.devices();
        let name = match &req {
            SupervisorRequest::Stop(n)
            | SupervisorRequest::Start(n)
            | SupervisorRequest::Restart(n) => n.clone(),
            _ => return Some(SupervisorResponse::Error("not a supervisor command".into())),
        };
        let i = match find(&devs, &name) {
            Ok(i) => i,
            Err(e) => return Some(SupervisorResponse::Error(e)),
        };
        let d = &mut devs[i];
        let is_start = matches!(req, SupervisorRequest::Start(_));
        match (&req, d.state) {
            (SupervisorRequest::Stop(_), State::Restarting | State::Failed | State::Stopped) => {
                d.retry_at = None;
                d.state = State::Stopped;
                d.failure = None;
                tracing::info!(device = %name, "stopped");
                Some(SupervisorResponse::Ok)
            }
            (SupervisorRequest::Stop(_), _) => {
                if d.intent.is_none() {
                    if let Some(p) = &d.proc_ {
                        let _ = kill(p.pid, Signal::SIGTERM);
                    }
                    d.stop_deadline = Some(Instant::now() + STOP_TIMEOUT);
                }
                tracing::info!(device = %name, "stopping");
                d.intent = Some(Intent::Stop);
                d.state = State::Stopping;
                d.waiters.push(reply.clone());
                None
            }
            (_, State::Running | State::Asleep) if is_start => {
                Some(SupervisorResponse::Error(format!(
                    "device {name} is already {} (pid {}); use restart",
                    d.state.as_str(),
                    d.proc_.as_ref().map_or(0, |p| p.pid.as_raw())
                )))
            }
            (_, State::Starting) if is_start => {
                d.waiters.push(reply.clone());
                None
            }
            (_, State::Running | State::Asleep | State::Starting | State::Stopping) => {
                // Restart a live process.
                if d.intent.is_none() {
                    if let Some(p) = &d.proc_ {
                        let _ = kill(p.pid, Signal::SIGTERM);
                    }
                    d.stop_deadline = Some(Instant::now() + STOP_TIMEOUT);
                }
                tracing::info!(device = %name, "restarting");
                d.intent = Some(Intent::Restart);
                d.state = State::Stopping;
                d.waiters.push(reply.clone());
                None
            }
            (_, State::Stopped | State::Failed | State::Restarting) => {
                d.retry_at = None;
                d.recent.clear();
                d.failure = None;
                d.restarts += 1;
                tracing::info!(device = %name, "starting");
                match spawn_device(d) {
                    Ok(()) => {
                        d.waiters.push(reply.clone());
                        None
                    }
                    Err(e) => {
                        let reason = format!("cannot start a new process: {e}");
                        d.state = State::Failed;
                        d.failure = Some(reason.clone());
                        Some(SupervisorResponse::Error(format!("{name}: {reason}")))
                    }
                }
            }
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let mut devs = self.shared.devices();
        for d in devs.iter_mut() {
            if d.retry_at.is_some_and(|t| t <= now) {
                d.retry_at = None;
                d.restarts += 1;
                if let Err(e) = spawn_device(d) {
                    let reason = format!("cannot start a new process: {e}");
                    tracing::error!(device = %d.spec.name, "{reason}");
                    d.state = State::Failed;
                    d.failure = Some(reason);
                }
            }
            if d.stop_deadline.is_some_and(|t| t <= now) {
                d.stop_deadline = None;
                if let Some(p) = &d.proc_ {
                    tracing::error!(device = %d.spec.name, pid = p.pid.as_raw(), "did not stop in time; killing it");
                    let _ = kill(p.pid, Signal::SIGKILL);
                }
            }
            if let Some(p) = &d.proc_ {
                if p.ready.is_none() && p.ready_rd.is_some() && p.started + READY_TIMEOUT <= now {
                    tracing::error!(device = %d.spec.name, pid = p.pid.as_raw(), "not ready in time; killing it");
                    let _ = kill(p.pid, Signal::SIGKILL);
                }
            }
        }
    }
}

/// The delay before restarting a device that crashed `recent` times within the window
/// (counting this crash): 100 ms, doubling per recent crash, at most 5 s.
pub fn backoff(recent: usize) -> Duration {
    let shift = u32::try_from(recent.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    BACKOFF_MIN.saturating_mul(1 << shift).min(BACKOFF_MAX)
}

/// Starts a new process for `d` with a fresh control socketpair.
fn spawn_device(d: &mut Device) -> Result<(), SpawnError> {
    let (ours, theirs) = UnixStream::pair().map_err(SpawnError::Socketpair)?;
    let r = &d.spec.resources;
    let mut fds = vec![
        (r.image.as_fd(), BLOCK_FD_IMAGE),
        (r.listener.as_fd(), BLOCK_FD_SOCKET),
        (theirs.as_fd(), BLOCK_FD_CONTROL),
    ];
    if let Some(f) = &r.filters {
        fds.push((f.as_fd(), BLOCK_FD_SECCOMP));
    }
    let pid = spawn::spawn(&SpawnRequest {
        device: d.spec.kind,
        args: d.spec.args.clone(),
        fds,
        confinement: d.spec.confinement,
    })?;
    drop(theirs);
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
        image = %d.spec.image_path.display(),
        "device process started"
    );
    d.proc_ = Some(Proc {
        pid,
        started: Instant::now(),
        ready: None,
        ready_rd: Some(ready_rd),
        channel: Arc::new(Mutex::new(Some(ours))),
    });
    d.state = State::Starting;
    Ok(())
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
