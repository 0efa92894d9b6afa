//! Service notifications (sd_notify(3)) for `Type=notify` units, sent by the supervisor
//! thread (the unit's main process, as `NotifyAccess=main` wants):
//!
//! - `READY=1` once every device has served its socket (each has said "ready");
//! - `STATUS=...` whenever the one-line summary of the devices changes ("serving 2 devices",
//!   "serving 1 of 2 devices; disk1 restarting (last exit: was killed by SIGKILL)");
//! - `STOPPING=1` when the launcher begins to shut down;
//! - `WATCHDOG=1` every half of WATCHDOG_USEC when the unit has a watchdog (`WatchdogSec=`;
//!   WATCHDOG_PID, when set, must name this process), from the supervisor's loop, so a
//!   supervisor that stops turning stops pinging.
//!
//! Nothing is sent when NOTIFY_SOCKET is unset. A notification that cannot be sent is logged
//! once and otherwise ignored: the devices keep serving.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::supervisor::protocol::DeviceStatus;

/// The supervisor's notifications to systemd.
#[derive(Debug)]
pub struct Notifier {
    /// NOTIFY_SOCKET was set.
    enabled: bool,
    ready_sent: bool,
    stopping_sent: bool,
    status: String,
    /// The watchdog ping interval (half of WATCHDOG_USEC).
    ping_every: Option<Duration>,
    next_ping: Option<Instant>,
    failed_once: bool,
}

impl Notifier {
    /// A notifier for this process's environment (NOTIFY_SOCKET, WATCHDOG_USEC,
    /// WATCHDOG_PID).
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let ping_every = if enabled {
            sd_notify::watchdog_enabled()
                .filter(|d| !d.is_zero())
                .map(|d| d / 2)
        } else {
            None
        };
        if let Some(every) = ping_every {
            tracing::info!(
                interval_ms = every.as_millis() as u64,
                "systemd watchdog on: pinging"
            );
        }
        Notifier {
            enabled,
            ready_sent: false,
            stopping_sent: false,
            status: String::new(),
            ping_every,
            next_ping: ping_every.map(|_| Instant::now()),
            failed_once: false,
        }
    }

    /// When the next watchdog ping is due (the supervisor wakes up for it).
    pub fn next_ping(&self) -> Option<Instant> {
        self.next_ping
    }

    /// Sends what changed since the last call: READY=1 once every device is serving,
    /// STOPPING=1 once `shutting_down`, STATUS= when the summary changed, and WATCHDOG=1
    /// when a ping is due.
    pub fn update(&mut self, devices: &[DeviceStatus], shutting_down: bool) {
        if !self.enabled {
            return;
        }
        let mut states: Vec<NotifyState<'_>> = Vec::new();
        if !self.ready_sent && !shutting_down && !devices.is_empty() && devices.iter().all(serving)
        {
            self.ready_sent = true;
            states.push(NotifyState::Ready);
        }
        if shutting_down && !self.stopping_sent {
            self.stopping_sent = true;
            states.push(NotifyState::Stopping);
        }
        let status = status_line(devices, self.ready_sent, shutting_down);
        let status_changed = status != self.status;
        if status_changed {
            self.status = status;
            states.push(NotifyState::Status(&self.status));
        }
        let now = Instant::now();
        if let (Some(every), Some(due)) = (self.ping_every, self.next_ping) {
            if due <= now {
                states.push(NotifyState::Watchdog);
                self.next_ping = Some(now + every);
            }
        }
        if states.is_empty() {
            return;
        }
        match sd_notify::notify(&states) {
            Ok(()) => {
                if status_changed {
                    tracing::debug!(status = %self.status, "told systemd");
                }
            }
            Err(e) if !self.failed_once => {
                self.failed_once = true;
                tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET); going on");
            }
            Err(_) => {}
        }
    }
}

/// Whether a device serves its socket.
fn serving(d: &DeviceStatus) -> bool {
    matches!(d.state.as_str(), "running" | "asleep")
}

/// "1 device", "2 devices".
fn devices_word(n: usize) -> String {
    if n == 1 {
        "1 device".into()
    } else {
        format!("{n} devices")
    }
}

/// The one-line summary systemd shows as the unit's status.
pub fn status_line(devices: &[DeviceStatus], ready: bool, shutting_down: bool) -> String {
    let n = devices.len();
    let live = devices.iter().filter(|d| d.pid.is_some()).count();
    let up = devices.iter().filter(|d| serving(d)).count();
    if shutting_down {
        return if live == 0 {
            "stopped".into()
        } else {
            format!("stopping: {} draining and flushing", devices_word(live))
        };
    }
    let mut line = if !ready {
        format!("starting: {up} of {} ready", devices_word(n))
    } else if up == n {
        format!("serving {}", devices_word(n))
    } else {
        format!("serving {up} of {}", devices_word(n))
    };
    for d in devices {
        if let Some(note) = note(d) {
            line.push_str("; ");
            line.push_str(&note);
        }
    }
    line
}

/// What the summary says of one device: its state unless running, and its restarts.
fn note(d: &DeviceStatus) -> Option<String> {
    let last = d
        .last_exit
        .as_deref()
        .map(|e| format!(" (last exit: {e})"))
        .unwrap_or_default();
    match d.state.as_str() {
        "running" if d.restarts == 0 => None,
        "running" => Some(format!(
            "{} restarted {} time{}{last}",
            d.name,
            d.restarts,
            if d.restarts == 1 { "" } else { "s" }
        )),
        "failed" => Some(format!(
            "{} failed: {}",
            d.name,
            d.failure.as_deref().unwrap_or("no reason given")
        )),
        "restarting" => Some(format!("{} restarting{last}", d.name)),
        "starting" => None,
        state => Some(format!("{} {state}", d.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, state: &str) -> DeviceStatus {
        DeviceStatus {
            name: name.into(),
            state: state.into(),
            pid: matches!(state, "running" | "asleep" | "starting" | "stopping").then_some(7),
            ..DeviceStatus::default()
        }
    }

    #[test]
    fn summaries() {
        let mut devs = vec![dev("disk0", "running"), dev("disk1", "starting")];
        assert_eq!(
            status_line(&devs, false, false),
            "starting: 1 of 2 devices ready"
        );
        devs[1].state = "running".into();
        assert_eq!(status_line(&devs, true, false), "serving 2 devices");
        devs[1].state = "restarting".into();
        devs[1].pid = None;
        devs[1].last_exit = Some("was killed by SIGKILL".into());
        assert_eq!(
            status_line(&devs, true, false),
            "serving 1 of 2 devices; disk1 restarting (last exit: was killed by SIGKILL)"
        );
        devs[1].state = "running".into();
        devs[1].pid = Some(8);
        devs[1].restarts = 1;
        assert_eq!(
            status_line(&devs, true, false),
            "serving 2 devices; disk1 restarted 1 time (last exit: was killed by SIGKILL)"
        );
        devs[0].state = "failed".into();
        devs[0].pid = None;
        devs[0].failure = Some("crashed 6 times within 30 s".into());
        assert!(status_line(&devs, true, false)
            .starts_with("serving 1 of 2 devices; disk0 failed: crashed 6 times"));
        assert_eq!(
            status_line(&devs, true, true),
            "stopping: 1 device draining and flushing"
        );
        devs[1].pid = None;
        assert_eq!(status_line(&devs, true, true), "stopped");
        assert_eq!(
            status_line(&[dev("rng0", "asleep")], true, false),
            "serving 1 device; rng0 asleep"
        );
    }

    #[test]
    fn silent_without_notify_socket() {
        // The test process has no NOTIFY_SOCKET (cargo does not set one).
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            return;
        }
        let mut n = Notifier::from_env();
        assert!(n.next_ping().is_none());
        n.update(&[dev("disk0", "running")], false);
        assert!(!n.ready_sent);
    }
}
