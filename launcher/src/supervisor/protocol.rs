//! The protocol between `launcher ctl` (or any operator tool) and the supervisor, on its
//! control socket: the framing of `vu_core::control` (versioned, length-prefixed postcard)
//! carrying [`SupervisorRequest`] and [`SupervisorResponse`]. The supervisor relays
//! device-level requests to the device processes (`vu_core::control::Request`).

use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};
use vu_core::control::{read_frame, write_frame, ControlError, DeviceReport};

/// Requests from an operator tool (`launcher ctl`) to the supervisor. `String`s name devices.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum SupervisorRequest {
    /// Every device, without asking the devices.
    List,
    /// Full status of one device, or of all (`None`).
    Status(Option<String>),
    /// Sleep the device: drain, flush, touch nothing until `Wake`.
    Sleep(String),
    /// Wake the device.
    Wake(String),
    /// The device's snapshot (it must be asleep).
    Snapshot(String),
    /// Restore the device from a snapshot (it must be asleep).
    Restore(String, Vec<u8>),
    /// Stop the device process (drain, flush, exit); its socket stays bound.
    Stop(String),
    /// Start a stopped or failed device.
    Start(String),
    /// Stop, then start the device process.
    Restart(String),
    /// Resize the device (bytes).
    Resize(String, u64),
    /// Test-only: relay a test trigger to the device (honoured by debug builds only).
    TestTrigger(String, String),
    /// Every device's metrics in Prometheus' text format.
    Metrics,
}

/// What the supervisor knows about one device (and, for `Status`, what the device says).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceStatus {
    /// The device's name.
    pub name: String,
    /// Its kind ("block").
    pub kind: String,
    /// The vhost-user socket it serves.
    pub socket: String,
    /// starting, running, asleep, stopping, stopped, restarting or failed.
    pub state: String,
    /// The current device process.
    pub pid: Option<i32>,
    /// Milliseconds since the current process became ready.
    pub uptime_ms: Option<u64>,
    /// Device processes started after the first one (crash respawns and restarts).
    pub restarts: u64,
    /// Device processes that ended without being asked to.
    pub crashes: u64,
    /// Processes in a row that died before they were ready (0 once one is ready).
    pub failed_starts: u64,
    /// How the last device process ended.
    pub last_exit: Option<String>,
    /// Why the device is failed (state `failed`).
    pub failure: Option<String>,
    /// The device's own report (`Status` of a live device only).
    pub report: Option<DeviceReport>,
    /// Why the report is missing although the device is live.
    pub report_error: Option<String>,
}

/// Responses of the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum SupervisorResponse {
    /// Done.
    Ok,
    /// Reply to `List` and `Status`.
    Devices(Vec<DeviceStatus>),
    /// Reply to `Snapshot`.
    Snapshot(Vec<u8>),
    /// The request was refused or failed, with the reason.
    Error(String),
    /// Reply to `Metrics`: the text exposition.
    Metrics(String),
}

/// Sends a supervisor request and waits for its response. A supervisor that refuses the
/// client answers and closes, possibly before the whole request was sent: its answer is read
/// even when sending failed, and returned if there is one.
pub fn call(
    stream: &mut UnixStream,
    req: &SupervisorRequest,
) -> Result<SupervisorResponse, ControlError> {
    if let Err(e) = write_frame(stream, req) {
        return match e {
            ControlError::Io(_) => read_frame(stream).map_err(|_| e),
            e => Err(e),
        };
    }
    read_frame(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_read_even_when_the_request_could_not_be_sent() {
        let (mut client, mut server) = UnixStream::pair().expect("socketpair");
        // The server answers before reading and closes: the client's write fails.
        write_frame(
            &mut server,
            &SupervisorResponse::Error("permission denied".into()),
        )
        .expect("answer");
        drop(server);
        let big = SupervisorRequest::Restore("d".into(), vec![0; 4 << 20]);
        match call(&mut client, &big) {
            Ok(SupervisorResponse::Error(e)) => assert_eq!(e, "permission denied"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn supervisor_messages_round_trip() {
        let mut buf = Vec::new();
        let req = SupervisorRequest::Restore("disk0".into(), vec![1, 2, 3]);
        write_frame(&mut buf, &req).expect("write");
        let back: SupervisorRequest = read_frame(&mut buf.as_slice()).expect("read");
        assert_eq!(back, req);
        let resp = SupervisorResponse::Devices(vec![DeviceStatus {
            name: "disk0".into(),
            state: "running".into(),
            pid: Some(7),
            ..DeviceStatus::default()
        }]);
        let mut buf = Vec::new();
        write_frame(&mut buf, &resp).expect("write");
        let back: SupervisorResponse = read_frame(&mut buf.as_slice()).expect("read");
        assert_eq!(back, resp);
    }
}
