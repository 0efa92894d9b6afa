//! What the control plane asks of the handler: sleep and wake, snapshot and restore, and
//! the status report.

use std::sync::atomic::Ordering;

use super::{Handler, HandlerError};
use crate::snapshot::{self, SnapshotBody, SnapshotError, VringSnapshot};

/// A read-only view of the handler for status reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerStatus {
    /// Negotiated virtio features.
    pub acked_features: u64,
    /// Negotiated protocol features.
    pub acked_protocol_features: u64,
    /// Number of memory regions.
    pub memory_regions: usize,
    /// Per-queue: (started, enabled, completed, chain errors, kicks, notifications).
    pub queues: Vec<QueueStatus>,
    /// Whether the device is asleep.
    pub asleep: bool,
}

/// Status of one queue (also what the control channel reports, as `control::QueueReport`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueStatus {
    /// Worker running.
    pub started: bool,
    /// Enabled by the front-end (SET_VRING_ENABLE).
    pub enabled: bool,
    /// Requests completed.
    pub completed: u64,
    /// Bytes read from driver buffers.
    pub bytes_from_driver: u64,
    /// Bytes written into driver buffers.
    pub bytes_to_driver: u64,
    /// Malformed chains.
    pub chain_errors: u64,
    /// Kicks received.
    pub kicks: u64,
    /// Calls sent.
    pub notifications: u64,
    /// Requests taken by the device and not completed yet.
    pub in_flight: u64,
}

impl Handler {
    /// Drains every running queue and tells the device to sleep. Idempotent.
    pub fn sleep(&mut self) -> Result<(), HandlerError> {
        if self.asleep {
            return Ok(());
        }
        for v in &mut self.vrings {
            if let Some(w) = v.worker.as_mut() {
                w.sleep();
            }
        }
        self.asleep = true;
        self.device.sleep()?;
        Ok(())
    }

    /// Resumes after `sleep`. Idempotent.
    pub fn wake(&mut self) -> Result<(), HandlerError> {
        if !self.asleep {
            return Ok(());
        }
        self.device.wake()?;
        self.asleep = false;
        for v in &mut self.vrings {
            if let Some(w) = v.worker.as_mut() {
                w.wake();
            }
        }
        Ok(())
    }

    /// Whether the device is asleep.
    pub fn is_asleep(&self) -> bool {
        self.asleep
    }

    /// Snapshot of the handler and device (the device must be asleep).
    pub fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
        if !self.asleep {
            return Err(HandlerError::Invalid(
                "snapshot needs the device asleep".into(),
            ));
        }
        let vrings = self
            .vrings
            .iter()
            .map(|v| {
                let (desc, avail, used) = v.gpa.unwrap_or_default();
                let started = v.worker.is_some();
                VringSnapshot {
                    size: v.size,
                    desc,
                    avail,
                    used,
                    next_avail: if started {
                        v.shared.last_avail.load(Ordering::Acquire) as u16
                    } else {
                        v.base
                    },
                    next_used: if started {
                        v.shared.last_used.load(Ordering::Acquire) as u16
                    } else {
                        v.last_used
                    },
                    enabled: v.shared.enabled.load(Ordering::Acquire),
                    started,
                }
            })
            .collect();
        let body = SnapshotBody {
            device: self.device.name().to_string(),
            acked_features: self.acked_features,
            acked_protocol_features: self.acked_protocol,
            status: self.status,
            vrings,
            device_state: self.device.snapshot()?,
        };
        Ok(snapshot::encode(&body)?)
    }

    /// Restores device state from a snapshot (the device must be asleep). Ring state is
    /// re-established by the front-end on reconnect; a snapshot that does not fit is refused
    /// and nothing changes.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), HandlerError> {
        if !self.asleep {
            return Err(HandlerError::Invalid(
                "restore needs the device asleep".into(),
            ));
        }
        let body = snapshot::decode(data)?;
        if body.device != self.device.name() {
            return Err(SnapshotError::WrongDevice {
                found: body.device,
                expected: self.device.name().to_string(),
            }
            .into());
        }
        if body.vrings.len() > self.vrings.len() {
            return Err(HandlerError::Invalid(format!(
                "snapshot has {} queues, device has {}",
                body.vrings.len(),
                self.vrings.len()
            )));
        }
        self.device
            .restore(&body.device_state)
            .map_err(|e| SnapshotError::Device(e.to_string()))?;
        Ok(())
    }

    /// Counters and negotiated state.
    pub fn status(&self) -> HandlerStatus {
        HandlerStatus {
            acked_features: self.acked_features,
            acked_protocol_features: self.acked_protocol,
            memory_regions: self.mem.len(),
            asleep: self.asleep,
            queues: self
                .vrings
                .iter()
                .map(|v| QueueStatus {
                    started: v.worker.is_some(),
                    enabled: v.shared.enabled.load(Ordering::Relaxed),
                    completed: v.shared.stats.completed.load(Ordering::Relaxed),
                    bytes_from_driver: v.shared.stats.bytes_from_driver.load(Ordering::Relaxed),
                    bytes_to_driver: v.shared.stats.bytes_to_driver.load(Ordering::Relaxed),
                    chain_errors: v.shared.stats.chain_errors.load(Ordering::Relaxed),
                    kicks: v.shared.stats.kicks.load(Ordering::Relaxed),
                    notifications: v.shared.stats.notifications.load(Ordering::Relaxed),
                    in_flight: v.shared.stats.in_flight.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}
