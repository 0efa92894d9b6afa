//! The control channel between the supervisor and a device process: versioned,
//! length-prefixed postcard messages over a stream socket (a socketpair made before fork).
//!
//! Frame: `u32` little-endian length, then postcard of [`Envelope`]. Every request gets exactly
//! one response; a request that cannot be decoded gets `Response::Error` and the channel stays
//! open; a broken frame (length beyond [`MAX_FRAME`], EOF mid-frame) closes it.
//!
//! The launcher's own protocol between `launcher ctl` and its supervisor uses the same framing
//! ([`write_frame`], [`read_frame`]) with its own messages; it lives in the launcher.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::handler::Handler;
use crate::metrics::Metric;

/// Protocol version carried in every envelope. Postcard is not self-describing: a message
/// whose layout changes (a field added to [`DeviceReport`]) needs a new version, so that a peer
/// of another build is refused by name rather than misread. Version 2: `DeviceReport::metrics`.
pub const CONTROL_VERSION: u16 = 2;
/// Largest frame accepted (snapshots included).
pub const MAX_FRAME: usize = 64 << 20;

/// Framing and encoding errors.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The peer closed the channel between frames.
    #[error("control channel closed")]
    Closed,
    /// Socket error.
    #[error("control channel I/O error")]
    Io(#[from] std::io::Error),
    /// A frame longer than MAX_FRAME.
    #[error("control frame of {0} bytes is too large")]
    TooLarge(usize),
    /// The body does not decode.
    #[error("malformed control message: {0}")]
    Decode(String),
    /// The peer speaks another version.
    #[error("control protocol version {0} is not supported (this build speaks {CONTROL_VERSION})")]
    Version(u16),
}

/// What travels in a frame.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope<T> {
    /// CONTROL_VERSION of the sender.
    pub version: u16,
    /// The message.
    pub body: T,
}

/// Requests from the supervisor to a device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Request {
    /// Liveness check.
    Ping,
    /// Counters and negotiated state.
    Status,
    /// Stop taking requests, finish those in flight, flush; touch nothing until `Wake`.
    Sleep,
    /// Resume after `Sleep`.
    Wake,
    /// Device + vring state in the snapshot format (device must be asleep).
    Snapshot,
    /// Restore from a snapshot (device must be asleep).
    Restore(Vec<u8>),
    /// Change the device size (bytes).
    Resize(u64),
    /// Test-only: make the device misbehave in a named way (honoured only by debug builds).
    TestTrigger(String),
}

/// Counters of one queue, as the device reports them.
pub use crate::handler::QueueStatus as QueueReport;

/// A device's status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceReport {
    /// Device kind.
    pub device: String,
    /// A front-end is connected.
    pub frontend_connected: bool,
    /// Asleep (control `Sleep`).
    pub asleep: bool,
    /// Negotiated virtio features.
    pub acked_features: u64,
    /// Negotiated protocol features.
    pub acked_protocol_features: u64,
    /// Mapped memory regions.
    pub memory_regions: usize,
    /// Per-queue counters.
    pub queues: Vec<QueueReport>,
    /// Device-specific (name, value) pairs.
    pub fields: Vec<(String, String)>,
    /// Device-specific metrics (`VhostUserDevice::metrics`), since version 2.
    pub metrics: Vec<Metric>,
}

/// Responses from a device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Response {
    /// Done.
    Ok,
    /// Reply to Ping.
    Pong,
    /// Reply to Status.
    Status(DeviceReport),
    /// Reply to Snapshot.
    Snapshot(Vec<u8>),
    /// The request was refused, with the reason.
    Error(String),
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, body: &T) -> Result<(), ControlError> {
    let env = Envelope {
        version: CONTROL_VERSION,
        body,
    };
    let bytes = postcard::to_allocvec(&env).map_err(|e| ControlError::Decode(e.to_string()))?;
    if bytes.len() > MAX_FRAME {
        return Err(ControlError::TooLarge(bytes.len()));
    }
    let mut frame = Vec::with_capacity(4 + bytes.len());
    frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    frame.extend_from_slice(&bytes);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame's raw bytes. `Closed` on EOF before the length.
pub fn read_raw_frame(r: &mut impl Read) -> Result<Vec<u8>, ControlError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(ControlError::Closed),
            Ok(0) => return Err(ControlError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(ControlError::TooLarge(n));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Decodes a frame's bytes, checking the version.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ControlError> {
    // The version comes first in the envelope: read it alone so a newer peer gets a version
    // error rather than a decode error.
    let (version, _) =
        postcard::take_from_bytes::<u16>(bytes).map_err(|e| ControlError::Decode(e.to_string()))?;
    if version != CONTROL_VERSION {
        return Err(ControlError::Version(version));
    }
    let (env, rest): (Envelope<T>, _) =
        postcard::take_from_bytes(bytes).map_err(|e| ControlError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ControlError::Decode(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(env.body)
}

/// Reads and decodes one frame.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, ControlError> {
    decode(&read_raw_frame(r)?)
}

/// Sends a request and waits for its response.
pub fn call(stream: &mut UnixStream, req: &Request) -> Result<Response, ControlError> {
    write_frame(stream, req)?;
    read_frame(stream)
}

/// Device-side state the control server reports on.
#[derive(Debug, Clone)]
pub struct ControlTarget {
    /// The protocol handler.
    pub handler: Arc<Mutex<Handler>>,
    /// Whether a front-end is connected (kept by the serving loop).
    pub connected: Arc<AtomicBool>,
}

impl ControlTarget {
    /// Answers one request.
    pub fn answer(&self, req: Request) -> Response {
        let mut h = self.handler.lock().unwrap_or_else(|e| e.into_inner());
        let res = match req {
            Request::Ping => return Response::Pong,
            Request::Status => {
                let st = h.status();
                return Response::Status(DeviceReport {
                    device: h.device().name().to_string(),
                    frontend_connected: self.connected.load(Ordering::Acquire),
                    asleep: st.asleep,
                    acked_features: st.acked_features,
                    acked_protocol_features: st.acked_protocol_features,
                    memory_regions: st.memory_regions,
                    queues: st.queues,
                    fields: h.device().status_fields(),
                    metrics: h.device().metrics(),
                });
            }
            Request::Sleep => h.sleep(),
            Request::Wake => h.wake(),
            Request::Snapshot => {
                return match h.snapshot() {
                    Ok(data) => Response::Snapshot(data),
                    Err(e) => Response::Error(e.to_string()),
                }
            }
            Request::Restore(data) => h.restore(&data),
            Request::Resize(size) => h.device().resize(size).map_err(Into::into),
            Request::TestTrigger(name) => {
                return Response::Error(format!("test trigger {name:?} is not handled by the core"))
            }
        };
        match res {
            Ok(()) => Response::Ok,
            Err(e) => Response::Error(e.to_string()),
        }
    }

    /// Serves requests on `stream` until the peer closes it or framing breaks. `extra` gets
    /// first refusal on each request (for device-process-level requests such as test triggers).
    ///
    /// The stream is used through read(2) and write(2) (not recv/send), the calls a jailed
    /// device's seccomp policy allows anyway.
    pub fn serve(&self, stream: UnixStream, extra: &dyn Fn(&Request) -> Option<Response>) {
        let mut stream = File::from(OwnedFd::from(stream));
        loop {
            let raw = match read_raw_frame(&mut stream) {
                Ok(r) => r,
                Err(ControlError::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "control channel broken; closing it");
                    return;
                }
            };
            let resp = match decode::<Request>(&raw) {
                Ok(req) => extra(&req).unwrap_or_else(|| self.answer(req)),
                Err(e) => Response::Error(e.to_string()),
            };
            if let Err(e) = write_frame(&mut stream, &resp) {
                tracing::warn!(error = %e, "cannot answer on the control channel");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_refuse_garbage() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Resize(1 << 30)).expect("write");
        let back: Request = read_frame(&mut buf.as_slice()).expect("read");
        assert_eq!(back, Request::Resize(1 << 30));
        // A newer version is refused by name.
        let env = Envelope {
            version: CONTROL_VERSION + 1,
            body: Request::Ping,
        };
        let bytes = postcard::to_allocvec(&env).expect("encode");
        assert!(matches!(
            decode::<Request>(&bytes),
            Err(ControlError::Version(_))
        ));
        // Garbage and oversized frames.
        assert!(matches!(
            decode::<Request>(&[CONTROL_VERSION as u8, 0, 0xff, 0xff]),
            Err(ControlError::Decode(_))
        ));
        let huge = (MAX_FRAME as u32 + 1).to_le_bytes();
        assert!(matches!(
            read_raw_frame(&mut huge.as_slice()),
            Err(ControlError::TooLarge(_))
        ));
        assert!(matches!(
            read_raw_frame(&mut [].as_slice()),
            Err(ControlError::Closed)
        ));
    }
}
