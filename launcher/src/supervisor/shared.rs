//! What control clients share with the supervisor thread: the devices, and requests for it.
//! Device-level requests (status, sleep, wake, snapshot, restore, resize) are relayed by the
//! client's own thread over the device's control channel, one at a time per device;
//! process-management requests (stop, start, restart) go to the supervisor thread.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, MutexGuard};

use nix::sys::signal::{kill, Signal};
use vu_core::control::{self as proto, Request, Response};

use super::device::{Device, State};
use super::protocol::{SupervisorRequest, SupervisorResponse};

/// A command for the process-owning thread.
#[derive(Debug)]
pub(super) struct Command {
    pub(super) req: SupervisorRequest,
    pub(super) reply: Sender<SupervisorResponse>,
}

/// What control clients share with the supervisor thread.
#[derive(Debug)]
pub struct Shared {
    pub(super) devices: Mutex<Vec<Device>>,
    pub(super) commands: Mutex<Vec<Command>>,
    pub(super) wake: UnixStream,
}

impl Shared {
    pub(super) fn devices(&self) -> MutexGuard<'_, Vec<Device>> {
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
                match trigger.strip_prefix("fail-starts ") {
                    Some(n) => self.fail_starts(&name, n),
                    None => self.relay_ok(&name, Request::TestTrigger(trigger)),
                }
            }
            SupervisorRequest::Metrics => self.metrics(),
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

    /// Every device's metrics: its status, with the report of each live device.
    pub(crate) fn metrics(&self) -> SupervisorResponse {
        match self.status(None) {
            SupervisorResponse::Devices(d) => {
                SupervisorResponse::Metrics(crate::metrics::render_devices(&d))
            }
            other => other,
        }
    }

    /// Test-only (debug builds): the next `n` processes of device `name` are killed before
    /// they can be ready, as if its configuration kept them from starting.
    fn fail_starts(&self, name: &str, n: &str) -> SupervisorResponse {
        if !cfg!(debug_assertions) {
            return SupervisorResponse::Error(
                "test triggers are honoured by debug builds only".into(),
            );
        }
        let Ok(n) = n.trim().parse::<u32>() else {
            return SupervisorResponse::Error(format!("fail-starts {n:?}: not a count"));
        };
        let mut devs = self.devices();
        match find(&devs, name) {
            Ok(i) => {
                devs[i].doom_next = n;
                tracing::warn!(
                    device = name,
                    n,
                    "test trigger: the next processes fail to start"
                );
                SupervisorResponse::Ok
            }
            Err(e) => SupervisorResponse::Error(e),
        }
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
            let mut report = report;
            if let (Some(r), Some(c)) = (report.as_mut(), devs[i].spec.companion.as_ref()) {
                r.fields.extend(c.status_fields());
            }
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

pub(super) fn find(devs: &[Device], name: &str) -> Result<usize, String> {
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
