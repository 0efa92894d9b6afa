//! The protocol state machine of one device: negotiated features, the memory table, vring
//! configuration and workers, inflight area, dirty log, status. `backend_server.rs` feeds it
//! framed messages; `handle` checks each against its request's rule (`checks.rs`: negotiated
//! feature, payload size, file descriptors; and the value checks each request calls) and
//! hands it to the file that does what the request means:
//!
//! - `features.rs`: virtio and protocol features, owner, device status, reset, disconnect;
//! - `memory_table.rs`: SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG;
//! - `vrings.rs`: SET/GET_VRING_*, starting and stopping queues;
//! - `inflight_log.rs`: the inflight area, the dirty log, the back-end request channel;
//! - `config.rs`: GET/SET_CONFIG;
//! - `control.rs`: what the control plane asks: sleep, wake, snapshot, restore, status.

mod checks;
mod config;
mod control;
mod error;
mod features;
mod inflight_log;
mod memory_table;
mod vrings;

use std::os::fd::OwnedFd;
use std::sync::{Arc, Weak};

use vmm_sys_util::eventfd::EventFd;

use crate::backend_client::ConfigNotifier;
use crate::connection::Message;
use crate::device::VhostUserDevice;
use crate::dirty_log::DirtyLog;
use crate::inflight::InflightArea;
use crate::memory::{MemoryMap, MAX_MEM_SLOTS};
use crate::message::features as virtio;
use crate::message::*;
use crate::worker::WorkerGroup;

use checks::{inflight_body, one_fd, read, Rule};
use vrings::VringConfig;

pub use checks::has_explicit_reply;
pub use control::{HandlerStatus, QueueStatus};
pub use error::HandlerError;

/// What to send back for a request.
#[derive(Debug, Default)]
pub struct Reply {
    /// Payload bytes.
    pub body: Vec<u8>,
    /// File descriptors to attach.
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    fn u64(v: u64) -> Option<Self> {
        Some(Reply {
            body: v.to_ne_bytes().to_vec(),
            fds: Vec::new(),
        })
    }

    fn bytes(b: &[u8]) -> Option<Self> {
        Some(Reply {
            body: b.to_vec(),
            fds: Vec::new(),
        })
    }
}

/// Core protocol features always offered.
pub const CORE_PROTOCOL_FEATURES: u64 = protocol::MQ
    | protocol::LOG_SHMFD
    | protocol::REPLY_ACK
    | protocol::BACKEND_REQ
    | protocol::INFLIGHT_SHMFD
    | protocol::RESET_DEVICE
    | protocol::CONFIGURE_MEM_SLOTS
    | protocol::STATUS;

/// Core virtio feature bits always offered.
pub const CORE_FEATURES: u64 = virtio::VERSION_1
    | virtio::RING_EVENT_IDX
    | virtio::RING_INDIRECT_DESC
    | virtio::PROTOCOL_FEATURES
    | virtio::LOG_ALL;

/// The per-device protocol state.
pub struct Handler {
    device: Arc<dyn VhostUserDevice>,
    owner: bool,
    /// This connection asked for or set the protocol features (see `resume_protocol`).
    protocol_negotiated: bool,
    acked_features: u64,
    acked_protocol: u64,
    mem: MemoryMap,
    log: Arc<DirtyLog>,
    log_fd: Option<EventFd>,
    vrings: Vec<VringConfig>,
    inflight: Option<Arc<InflightArea>>,
    notifier: Arc<ConfigNotifier>,
    status: u8,
    asleep: bool,
    /// Busy-poll budget of each queue worker before it sleeps, in microseconds (0: off).
    poll_us: u32,
    /// Queues run on the caller's thread (`set_inline_queues`).
    inline_queues: bool,
    /// The worker threads of the device's queue groups, while a queue of theirs runs.
    groups: Vec<(usize, Weak<WorkerGroup>)>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("device", &self.device.name())
            .field("acked_features", &self.acked_features)
            .field("acked_protocol", &self.acked_protocol)
            .finish()
    }
}

impl Handler {
    /// A handler for `device`.
    pub fn new(device: Arc<dyn VhostUserDevice>) -> Self {
        let log = DirtyLog::new();
        let notifier = Arc::new(ConfigNotifier::new());
        device.set_config_notifier(notifier.clone());
        let n = device.num_queues();
        Handler {
            device,
            owner: false,
            protocol_negotiated: false,
            acked_features: 0,
            acked_protocol: 0,
            mem: MemoryMap::new(log.clone()),
            log,
            log_fd: None,
            vrings: (0..n).map(|_| VringConfig::default()).collect(),
            inflight: None,
            notifier,
            status: 0,
            asleep: false,
            poll_us: 0,
            inline_queues: false,
            groups: Vec::new(),
        }
    }

    /// Lets each queue worker busy-poll its available ring for up to `us` microseconds after
    /// it runs out of work, before it sleeps; driver notifications are suppressed meanwhile.
    /// While the device has requests in the kernel the worker sleeps until they complete
    /// instead (`QueueHandler::in_flight`). 0 (the default) turns polling off. Applies to
    /// queues started afterwards.
    pub fn set_poll_us(&mut self, us: u32) {
        self.poll_us = us;
    }

    /// Runs the queues started afterwards on the thread that calls `handle` instead of a
    /// worker thread each: for fuzzing and deterministic tests, where a thread per started
    /// queue costs more than the work and makes runs differ. Such a queue processes its ring
    /// when it starts, when SET_VRING_ENABLE or `wake` resumes it, and on `run_queues`; kicks
    /// and the device's event fds are not watched (the caller decides when the ring is
    /// looked at), and busy polling (`set_poll_us`) does not apply.
    pub fn set_inline_queues(&mut self, inline: bool) {
        self.inline_queues = inline;
    }

    /// With inline queues (`set_inline_queues`): processes every started queue's ring once,
    /// as its worker would after a kick (counted as one). Worker threads are not affected:
    /// they wait for the real kick.
    pub fn run_queues(&mut self) {
        for v in &mut self.vrings {
            if let Some(w) = v.worker.as_mut() {
                w.kick();
            }
        }
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn VhostUserDevice> {
        &self.device
    }

    /// Whether REPLY_ACK has been negotiated.
    pub fn reply_ack(&self) -> bool {
        self.acked_protocol & protocol::REPLY_ACK != 0
    }

    /// The config-change notifier (for tests and the control plane).
    pub fn notifier(&self) -> &Arc<ConfigNotifier> {
        &self.notifier
    }

    /// Handles one message. `Ok(None)`: no explicit reply (an ack may still be due).
    pub fn handle(&mut self, mut msg: Message) -> Result<Option<Reply>, HandlerError> {
        let request = Request::try_from(msg.header.request)?;
        let need_reply = msg.header.need_reply();
        self.resume_protocol(request, need_reply);
        let rule = Rule::of(request).ok_or(HandlerError::NotNegotiated(request))?;
        rule.check(request, &msg, self.acked_protocol, self.acked_features)?;
        let fds = std::mem::take(&mut msg.fds);
        let reply = self.dispatch(request, &msg.payload, fds);
        if request == Request::SetFeatures && reply.is_ok() {
            // A SET_FEATURES that wants an ack may itself be the first request of a resumed
            // session (see `resume_protocol`).
            self.resume_protocol(request, need_reply);
        }
        reply
    }

    /// Does what a checked message asks.
    fn dispatch(
        &mut self,
        request: Request,
        p: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<Option<Reply>, HandlerError> {
        use Request::*;
        let r = request;
        match request {
            GetFeatures => Ok(Reply::u64(self.offered_features())),
            SetFeatures => self.set_features(read::<U64>(r, p)?.value),
            GetProtocolFeatures => {
                self.protocol_negotiated = true;
                Ok(Reply::u64(self.offered_protocol_features()))
            }
            SetProtocolFeatures => self.set_protocol_features(read::<U64>(r, p)?.value),
            SetOwner => self.set_owner(),
            ResetOwner => self.reset_owner(),
            SetMemTable => self.set_mem_table(p, fds),
            GetMaxMemSlots => Ok(Reply::u64(MAX_MEM_SLOTS as u64)),
            AddMemReg => self.add_mem_reg(read(r, p)?, one_fd(r, fds)?),
            RemMemReg => self.rem_mem_reg(read(r, p)?),
            GetQueueNum => Ok(Reply::u64(self.vrings.len() as u64)),
            SetVringNum => self.set_vring_num(read(r, p)?),
            SetVringAddr => self.set_vring_addr(read(r, p)?),
            SetVringBase => self.set_vring_base(read(r, p)?),
            GetVringBase => self.get_vring_base(read(r, p)?),
            SetVringKick | SetVringCall | SetVringErr => {
                self.set_vring_fd(r, read::<U64>(r, p)?.value, fds)
            }
            SetVringEnable => self.set_vring_enable(read(r, p)?),
            GetConfig => self.get_config(p),
            SetConfig => self.set_config(p),
            SetBackendReqFd => self.set_backend_req_fd(one_fd(r, fds)?),
            GetInflightFd => self.get_inflight_fd(inflight_body(r, p)?),
            SetInflightFd => self.set_inflight_fd(inflight_body(r, p)?, one_fd(r, fds)?),
            ResetDevice => self.reset_request(),
            SetStatus => self.set_status(read::<U64>(r, p)?.value),
            GetStatus => Ok(Reply::u64(self.status as u64)),
            SetLogBase => self.set_log_base(read(r, p)?, one_fd(r, fds)?),
            SetLogFd => self.set_log_fd(one_fd(r, fds)?),
            // Refused by `Rule::of` already.
            VringKick | SendRarp | NetSetMtu | IotlbMsg | SetVringEndian | CreateCryptoSession
            | CloseCryptoSession | PostcopyAdvise | PostcopyListen | PostcopyEnd | GpuSetSocket
            | GetSharedObject | SetDeviceStateFd | CheckDeviceState => {
                Err(HandlerError::NotNegotiated(request))
            }
        }
    }
}

/// An eventfd from a received file descriptor.
fn eventfd_from(fd: OwnedFd) -> EventFd {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` was just released from an OwnedFd, so the EventFd becomes its only owner.
    // An fd that is not an eventfd only makes later reads/writes fail, never unsafe.
    unsafe { EventFd::from_raw_fd(raw) }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.stop_all();
    }
}
