//! The supervisor thread's answers to events: a device process ended, an operator asked to
//! stop, start or restart a device, a timer expired (restart backoff, stop and ready deadlines).

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::device::{backoff, spawn_device, Device, Intent, State};
use super::exit::DeviceExit;
use super::protocol::{SupervisorRequest, SupervisorResponse};
use super::shared::find;
use super::{Supervisor, SupervisorError, READY_TIMEOUT, STABLE_SERVING, STOP_TIMEOUT};
use std::sync::mpsc::Sender;

impl Supervisor {
    /// Device process `pid` ended: what happens next depends on why it was stopping, if it
    /// was.
    pub(super) fn exited(&mut self, pid: Pid, exit: DeviceExit) {
        let mut devs = self.shared.devices();
        let Some(d) = devs
            .iter_mut()
            .find(|d| d.proc_.as_ref().is_some_and(|p| p.pid == pid))
        else {
            return;
        };
        // How long the process served, if it ever became ready.
        let served = d.proc_.take().and_then(|p| p.ready).map(|t| t.elapsed());
        d.stop_deadline = None;
        if let Some(c) = d.spec.companion.as_mut() {
            c.exited();
        }
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
            Some(Intent::Restart) => restart_stopped(d, clean, &desc),
            Some(Intent::Shutdown) => {
                d.state = State::Stopped;
                if clean {
                    tracing::info!(device = %name, pid = pid.as_raw(), "stopped");
                } else {
                    tracing::error!("{name}: {desc} while stopping");
                    self.bad_stops.push(format!("{name}: {desc}"));
                }
            }
            None if d.initial => {
                tracing::error!("{name}: {desc}");
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
            }
            None => {
                tracing::error!("{name}: {desc}");
                d.crashes += 1;
                d.reply_all(&SupervisorResponse::Error(format!("{name}: {desc}")));
                if self.shutting_down {
                    d.state = State::Stopped;
                } else if let Some(served) = served {
                    self.crashed(d, served);
                } else {
                    self.failed_start(d, &desc);
                }
            }
        }
    }

    /// A process that had been ready died: it is always started again, after a backoff that
    /// grows with the crashes in a row (a process that served long enough starts it over).
    fn crashed(&self, d: &mut Device, served: Duration) {
        if served >= STABLE_SERVING {
            d.crash_streak = 0;
        }
        d.crash_streak = d.crash_streak.saturating_add(1);
        let backoff = backoff(u64::from(d.crash_streak));
        tracing::warn!(
            device = %d.spec.name,
            served_ms = u64::try_from(served.as_millis()).unwrap_or(u64::MAX),
            in_a_row = d.crash_streak,
            backoff_ms = backoff.as_millis() as u64,
            "restarting after a crash"
        );
        d.state = State::Restarting;
        d.retry_at = Some(Instant::now() + backoff);
    }

    /// A process died before it was ready: started again after a backoff, unless more than
    /// `max_crashes` did so in a row within the window (the device is then held failed).
    fn failed_start(&self, d: &mut Device, desc: &str) {
        let name = d.spec.name.clone();
        d.failed_starts += 1;
        let now = Instant::now();
        d.recent_failed.push_back(now);
        while d
            .recent_failed
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.window)
        {
            d.recent_failed.pop_front();
        }
        let n = d.recent_failed.len();
        if n > self.policy.max_crashes as usize {
            let reason = format!(
                "{n} processes in a row died before they were ready (within {} s); last: {desc}",
                self.policy.window.as_secs()
            );
            tracing::error!(device = %name, "failed: {reason}; `launcher ctl start {name}` tries again");
            d.state = State::Failed;
            d.failure = Some(reason);
        } else {
            let backoff = backoff(d.failed_starts);
            tracing::warn!(
                device = %name,
                failed_starts = d.failed_starts,
                backoff_ms = backoff.as_millis() as u64,
                "the process died before it was ready; starting another"
            );
            d.state = State::Restarting;
            d.retry_at = Some(now + backoff);
        }
    }

    /// Stop, start, restart. `None`: the answer comes when the process is ready or gone.
    pub(super) fn command(
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
                stop_process(d, Intent::Stop, reply);
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
                stop_process(d, Intent::Restart, reply);
                None
            }
            (_, State::Stopped | State::Failed | State::Restarting) => start_process(d, reply),
        }
    }

    pub(super) fn timers(&mut self) {
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

/// The process of `d` stopped for an operator's restart: start the new one.
fn restart_stopped(d: &mut Device, clean: bool, desc: &str) {
    let name = d.spec.name.clone();
    if clean {
        tracing::info!(device = %name, "stopped; starting a new process");
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

/// Asks the live process of `d` to stop (SIGTERM: drain, flush, exit), to be stopped or
/// restarted as `intent` says; `reply` is answered when that is done.
fn stop_process(d: &mut Device, intent: Intent, reply: &Sender<SupervisorResponse>) {
    if d.intent.is_none() {
        if let Some(p) = &d.proc_ {
            let _ = kill(p.pid, Signal::SIGTERM);
        }
        d.stop_deadline = Some(Instant::now() + STOP_TIMEOUT);
    }
    let what = if intent == Intent::Stop {
        "stopping"
    } else {
        "restarting"
    };
    tracing::info!(device = %d.spec.name, "{what}");
    d.intent = Some(intent);
    d.state = State::Stopping;
    d.waiters.push(reply.clone());
}

/// Starts a process for a device that has none (stopped, failed, or waiting to restart);
/// `reply` is answered once it is ready.
fn start_process(d: &mut Device, reply: &Sender<SupervisorResponse>) -> Option<SupervisorResponse> {
    d.retry_at = None;
    d.recent_failed.clear();
    d.failed_starts = 0;
    d.failure = None;
    d.restarts += 1;
    tracing::info!(device = %d.spec.name, "starting");
    match spawn_device(d) {
        Ok(()) => {
            d.waiters.push(reply.clone());
            None
        }
        Err(e) => {
            let reason = format!("cannot start a new process: {e}");
            d.state = State::Failed;
            d.failure = Some(reason.clone());
            Some(SupervisorResponse::Error(format!(
                "{}: {reason}",
                d.spec.name
            )))
        }
    }
}
