//! The protocol state machine of one device: negotiated features, the memory table, vring
//! configuration and workers, inflight area, dirty log, status. `backend_server.rs` feeds it
//! validated messages; this file decides what each one means.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;
use zerocopy::{FromBytes, IntoBytes};

use crate::backend_client::ConfigNotifier;
use crate::connection::Message;
use crate::device::{DeviceError, VhostUserDevice};
use crate::dirty_log::{DirtyLog, DirtyLogError};
use crate::inflight::{InflightArea, InflightError};
use crate::memory::{MemoryError, MemoryMap, MAX_MEM_SLOTS};
use crate::message::*;
use crate::snapshot::{self, SnapshotBody, SnapshotError, VringSnapshot};
use crate::vring::{QueueIo, QueueSetup, VringError, VringShared, Worker};

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Unknown request code.
    #[error(transparent)]
    UnknownRequest(#[from] UnknownRequest),
    /// A request we do not implement or whose feature was not negotiated.
    #[error("{0:?} is not supported or not negotiated")]
    NotNegotiated(Request),
    /// Payload size is wrong for the request.
    #[error("{request:?}: payload of {got} bytes, expected {expected}")]
    PayloadSize {
        /// The request.
        request: Request,
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        expected: String,
    },
    /// Wrong number of file descriptors for the request.
    #[error("{request:?}: {got} file descriptors, expected {expected}")]
    FdCount {
        /// The request.
        request: Request,
        /// Descriptors received.
        got: usize,
        /// Descriptors expected.
        expected: usize,
    },
    /// Vring index out of range.
    #[error("vring index {0} out of range")]
    BadIndex(u64),
    /// Invalid value for a field.
    #[error("invalid {0}")]
    Invalid(String),
    /// Features the back-end did not offer.
    #[error("features {0:#x} were not offered")]
    UnofferedFeatures(u64),
    /// Configuration change on a running ring.
    #[error("vring {0} is running")]
    RingRunning(usize),
    /// Memory table errors.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Dirty log errors.
    #[error(transparent)]
    Log(#[from] DirtyLogError),
    /// Inflight errors.
    #[error(transparent)]
    Inflight(#[from] InflightError),
    /// Vring start errors.
    #[error(transparent)]
    Vring(#[from] VringError),
    /// The device refused.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Address translation failed.
    #[error("ring address {0:#x} does not translate into guest memory")]
    BadAddress(u64),
    /// An eventfd could not be duplicated or created.
    #[error("eventfd error")]
    EventFd(#[source] std::io::Error),
    /// The snapshot was refused.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The device is asleep and the request would need it awake.
    #[error("device is asleep")]
    Asleep,
}

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

/// Whether a request always carries an explicit reply body.
pub fn has_explicit_reply(r: Request) -> bool {
    matches!(
        r,
        Request::GetFeatures
            | Request::GetProtocolFeatures
            | Request::GetVringBase
            | Request::GetQueueNum
            | Request::GetConfig
            | Request::GetInflightFd
            | Request::GetMaxMemSlots
            | Request::GetStatus
            | Request::SetLogBase
    )
}

#[derive(Debug, Default)]
struct VringConfig {
    size: u16,
    addr: Option<VringAddr>,
    gpa: Option<(u64, u64, u64)>,
    base: u16,
    kick: Option<EventFd>,
    shared: Arc<VringShared>,
    worker: Option<Worker>,
    last_used: u16,
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
pub const CORE_FEATURES: u64 = features::VERSION_1
    | features::RING_EVENT_IDX
    | features::RING_INDIRECT_DESC
    | features::PROTOCOL_FEATURES
    | features::LOG_ALL;

/// The per-device protocol state.
pub struct Handler {
    device: Arc<dyn VhostUserDevice>,
    owner: bool,
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
}

fn body<T: FromBytes>(msg: &Message, request: Request) -> Result<T, HandlerError> {
    T::read_from_bytes(&msg.payload).map_err(|_| HandlerError::PayloadSize {
        request,
        got: msg.payload.len(),
        expected: std::mem::size_of::<T>().to_string(),
    })
}

fn fds(msg: &mut Message, request: Request, n: usize) -> Result<Vec<OwnedFd>, HandlerError> {
    if msg.fds.len() != n {
        return Err(HandlerError::FdCount {
            request,
            got: msg.fds.len(),
            expected: n,
        });
    }
    Ok(std::mem::take(&mut msg.fds))
}

fn no_payload(msg: &Message, request: Request) -> Result<(), HandlerError> {
    if !msg.payload.is_empty() {
        return Err(HandlerError::PayloadSize {
            request,
            got: msg.payload.len(),
            expected: "0".into(),
        });
    }
    Ok(())
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

    /// The device.
    pub fn device(&self) -> &Arc<dyn VhostUserDevice> {
        &self.device
    }

    /// Virtio features offered.
    pub fn offered_features(&self) -> u64 {
        self.device.device_features() | CORE_FEATURES
    }

    /// Protocol features offered.
    pub fn offered_protocol_features(&self) -> u64 {
        let mut p = CORE_PROTOCOL_FEATURES | self.device.protocol_features();
        if self.device.config_size() > 0 {
            p |= protocol::CONFIG;
        }
        p
    }

    fn proto(&self, bit: u64) -> bool {
        self.acked_protocol & bit != 0
    }

    /// Whether REPLY_ACK has been negotiated.
    pub fn reply_ack(&self) -> bool {
        self.acked_protocol & protocol::REPLY_ACK != 0
    }

    fn vring_index(&self, idx: u64) -> Result<usize, HandlerError> {
        let i = usize::try_from(idx).map_err(|_| HandlerError::BadIndex(idx))?;
        if i >= self.vrings.len() {
            return Err(HandlerError::BadIndex(idx));
        }
        Ok(i)
    }

    fn require(&self, request: Request, bit: u64) -> Result<(), HandlerError> {
        if self.proto(bit) {
            Ok(())
        } else {
            Err(HandlerError::NotNegotiated(request))
        }
    }

    /// Handles one message. `Ok(None)`: no explicit reply (an ack may still be due).
    pub fn handle(&mut self, mut msg: Message) -> Result<Option<Reply>, HandlerError> {
        let request = Request::try_from(msg.header.request)?;
        use Request::*;
        match request {
            GetFeatures => {
                no_payload(&msg, request)?;
                fds(&mut msg, request, 0)?;
                Ok(Reply::u64(self.offered_features()))
            }
            SetFeatures => {
                fds(&mut msg, request, 0)?;
                let v: U64 = body(&msg, request)?;
                let unoffered = v.value & !self.offered_features();
                if unoffered != 0 {
                    return Err(HandlerError::UnofferedFeatures(unoffered));
                }
                self.device.set_features(v.value)?;
                self.acked_features = v.value;
                self.log.set_active(v.value & features::LOG_ALL != 0);
                Ok(None)
            }
            GetProtocolFeatures => {
                no_payload(&msg, request)?;
                fds(&mut msg, request, 0)?;
                Ok(Reply::u64(self.offered_protocol_features()))
            }
            SetProtocolFeatures => {
                fds(&mut msg, request, 0)?;
                let v: U64 = body(&msg, request)?;
                let unoffered = v.value & !self.offered_protocol_features();
                if unoffered != 0 {
                    return Err(HandlerError::UnofferedFeatures(unoffered));
                }
                self.acked_protocol = v.value;
                Ok(None)
            }
            SetOwner => {
                no_payload(&msg, request)?;
                fds(&mut msg, request, 0)?;
                self.owner = true;
                Ok(None)
            }
            ResetOwner => {
                // Deprecated; the spec recommends treating it as "disable all rings".
                no_payload(&msg, request)?;
                fds(&mut msg, request, 0)?;
                self.stop_all();
                Ok(None)
            }
            SetMemTable => self.set_mem_table(msg),
            GetMaxMemSlots => {
                self.require(request, protocol::CONFIGURE_MEM_SLOTS)?;
                no_payload(&msg, request)?;
                fds(&mut msg, request, 0)?;
                Ok(Reply::u64(MAX_MEM_SLOTS as u64))
            }
            AddMemReg => {
                self.require(request, protocol::CONFIGURE_MEM_SLOTS)?;
                let r: SingleMemoryRegion = body(&msg, request)?;
                let mut f = fds(&mut msg, request, 1)?;
                let fd = f.pop().ok_or(HandlerError::FdCount {
                    request,
                    got: 0,
                    expected: 1,
                })?;
                self.mem.add_region(r.region, fd)?;
                Ok(None)
            }
            RemMemReg => {
                self.require(request, protocol::CONFIGURE_MEM_SLOTS)?;
                let r: SingleMemoryRegion = body(&msg, request)?;
                // The spec allows one (ignored) fd for compatibility.
                if msg.fds.len() > 1 {
                    return Err(HandlerError::FdCount {
                        request,
                        got: msg.fds.len(),
                        expected: 0,
                    });
                }
                msg.fds.clear();
                self.mem.remove_region(&r.region)?;
                Ok(None)
            }
            GetQueueNum => {
                self.require(request, protocol::MQ)?;
                no_payload(&msg, request)?;
                fds(&mut msg, request, 0)?;
                Ok(Reply::u64(self.vrings.len() as u64))
            }
            SetVringNum => {
                fds(&mut msg, request, 0)?;
                let s: VringState = body(&msg, request)?;
                let i = self.vring_index(s.index as u64)?;
                let max = (self.device.max_queue_size() as u32).min(MAX_QUEUE_SIZE);
                if s.num == 0 || s.num > max || !s.num.is_power_of_two() {
                    return Err(HandlerError::Invalid(format!(
                        "queue size {} (max {max})",
                        s.num
                    )));
                }
                self.stopped(i)?;
                let size = s.num as u16;
                // Addresses may come before the size (libvhost-user accepts either order):
                // re-check them against the new size.
                let gpa = match self.vrings[i].addr {
                    Some(a) => self.translate(&a, size).ok(),
                    None => None,
                };
                let v = &mut self.vrings[i];
                if gpa.is_none() {
                    v.addr = None;
                }
                v.gpa = gpa;
                v.size = size;
                Ok(None)
            }
            SetVringAddr => self.set_vring_addr(msg),
            SetVringBase => {
                fds(&mut msg, request, 0)?;
                let s: VringState = body(&msg, request)?;
                let i = self.vring_index(s.index as u64)?;
                if s.num > u16::MAX as u32 {
                    return Err(HandlerError::Invalid(format!("vring base {}", s.num)));
                }
                self.stopped(i)?;
                self.vrings[i].base = s.num as u16;
                Ok(None)
            }
            GetVringBase => {
                fds(&mut msg, request, 0)?;
                let s: VringState = body(&msg, request)?;
                let i = self.vring_index(s.index as u64)?;
                self.stop_vring(i);
                let v = &mut self.vrings[i];
                v.kick = None;
                let reply = VringState {
                    index: s.index,
                    num: v.base as u32,
                };
                Ok(Reply::bytes(reply.as_bytes()))
            }
            SetVringKick => self.set_vring_fd(msg, request),
            SetVringCall => self.set_vring_fd(msg, request),
            SetVringErr => self.set_vring_fd(msg, request),
            SetVringEnable => {
                fds(&mut msg, request, 0)?;
                let s: VringState = body(&msg, request)?;
                let i = self.vring_index(s.index as u64)?;
                if self.acked_features & features::PROTOCOL_FEATURES == 0 {
                    return Err(HandlerError::NotNegotiated(request));
                }
                if s.num > 1 {
                    return Err(HandlerError::Invalid(format!("enable value {}", s.num)));
                }
                let v = &self.vrings[i];
                v.shared.enabled.store(s.num == 1, Ordering::Release);
                if let Some(w) = v.worker.as_ref() {
                    w.poke();
                }
                Ok(None)
            }
            GetConfig => self.get_config(msg),
            SetConfig => self.set_config(msg),
            SetBackendReqFd => {
                self.require(request, protocol::BACKEND_REQ)?;
                no_payload(&msg, request)?;
                let mut f = fds(&mut msg, request, 1)?;
                let fd = f.pop().ok_or(HandlerError::FdCount {
                    request,
                    got: 0,
                    expected: 1,
                })?;
                self.notifier.set_channel(Some(UnixStream::from(fd)));
                Ok(None)
            }
            GetInflightFd => {
                self.require(request, protocol::INFLIGHT_SHMFD)?;
                fds(&mut msg, request, 0)?;
                let d = inflight_body(&msg, request)?;
                if d.num_queues as usize > self.vrings.len() {
                    return Err(HandlerError::Invalid(format!(
                        "{} inflight queues",
                        d.num_queues
                    )));
                }
                let (area, fd, size) = InflightArea::create(d.num_queues, d.queue_size)?;
                self.inflight = Some(area);
                let reply = InflightDescription {
                    mmap_size: size,
                    mmap_offset: 0,
                    num_queues: d.num_queues,
                    queue_size: d.queue_size,
                    padding: [0; 4],
                };
                Ok(Some(Reply {
                    body: reply.as_bytes().to_vec(),
                    fds: vec![fd],
                }))
            }
            SetInflightFd => {
                self.require(request, protocol::INFLIGHT_SHMFD)?;
                let d = inflight_body(&msg, request)?;
                let mut f = fds(&mut msg, request, 1)?;
                let fd = f.pop().ok_or(HandlerError::FdCount {
                    request,
                    got: 0,
                    expected: 1,
                })?;
                if d.num_queues as usize > self.vrings.len() {
                    return Err(HandlerError::Invalid(format!(
                        "{} inflight queues",
                        d.num_queues
                    )));
                }
                let area = InflightArea::open(
                    &fd,
                    d.mmap_size,
                    d.mmap_offset,
                    d.num_queues,
                    d.queue_size,
                )?;
                self.inflight = Some(area);
                Ok(None)
            }
            ResetDevice => {
                self.require(request, protocol::RESET_DEVICE)?;
                no_payload(&msg, request)?;
                fds(&mut msg, request, 0)?;
                self.reset_device();
                Ok(None)
            }
            SetStatus => {
                self.require(request, protocol::STATUS)?;
                fds(&mut msg, request, 0)?;
                let v: U64 = body(&msg, request)?;
                if v.value > 0xff {
                    return Err(HandlerError::Invalid(format!("status {:#x}", v.value)));
                }
                self.status = v.value as u8;
                Ok(None)
            }
            GetStatus => {
                self.require(request, protocol::STATUS)?;
                no_payload(&msg, request)?;
                fds(&mut msg, request, 0)?;
                Ok(Reply::u64(self.status as u64))
            }
            SetLogBase => {
                self.require(request, protocol::LOG_SHMFD)?;
                let d: LogDescription = body(&msg, request)?;
                let mut f = fds(&mut msg, request, 1)?;
                let fd = f.pop().ok_or(HandlerError::FdCount {
                    request,
                    got: 0,
                    expected: 1,
                })?;
                self.log.set_area(fd, d.mmap_size, d.mmap_offset)?;
                // The spec gives this reply no layout; QEMU accepts any, rust-vmm front-ends
                // wait for the log description back. Echo it.
                Ok(Reply::bytes(d.as_bytes()))
            }
            SetLogFd => {
                no_payload(&msg, request)?;
                let mut f = fds(&mut msg, request, 1)?;
                let fd = f.pop().ok_or(HandlerError::FdCount {
                    request,
                    got: 0,
                    expected: 1,
                })?;
                self.log_fd = Some(eventfd_from(fd));
                Ok(None)
            }
            VringKick | SendRarp | NetSetMtu | IotlbMsg | SetVringEndian | CreateCryptoSession
            | CloseCryptoSession | PostcopyAdvise | PostcopyListen | PostcopyEnd | GpuSetSocket
            | GetSharedObject | SetDeviceStateFd | CheckDeviceState => {
                Err(HandlerError::NotNegotiated(request))
            }
        }
    }

    fn stopped(&self, i: usize) -> Result<(), HandlerError> {
        if self.vrings[i].worker.is_some() {
            return Err(HandlerError::RingRunning(i));
        }
        Ok(())
    }

    fn set_mem_table(&mut self, mut msg: Message) -> Result<Option<Reply>, HandlerError> {
        let request = Request::SetMemTable;
        let hdr_len = std::mem::size_of::<MemoryTableHeader>();
        let region_len = std::mem::size_of::<MemoryRegion>();
        let (h, rest) = MemoryTableHeader::read_from_prefix(&msg.payload).map_err(|_| {
            HandlerError::PayloadSize {
                request,
                got: msg.payload.len(),
                expected: hdr_len.to_string(),
            }
        })?;
        let n = h.num_regions as usize;
        if n == 0 || n > MAX_MEM_TABLE_REGIONS {
            return Err(HandlerError::Invalid(format!("{n} memory regions")));
        }
        // QEMU always sends room for 8 regions; accept exactly n or the full table.
        if rest.len() != n * region_len && rest.len() != MAX_MEM_TABLE_REGIONS * region_len {
            return Err(HandlerError::PayloadSize {
                request,
                got: msg.payload.len(),
                expected: format!(
                    "{} or {}",
                    hdr_len + n * region_len,
                    hdr_len + 8 * region_len
                ),
            });
        }
        let mut regions = Vec::with_capacity(n);
        for i in 0..n {
            let r = MemoryRegion::read_from_bytes(&rest[i * region_len..(i + 1) * region_len])
                .map_err(|_| HandlerError::Invalid("memory region".into()))?;
            regions.push(r);
        }
        let f = fds(&mut msg, request, n)?;
        let table: Vec<_> = regions.into_iter().zip(f).collect();
        self.mem.set_table(table)?;
        // Rings keep their guest physical addresses; re-translate what was configured.
        for i in 0..self.vrings.len() {
            if let Some(a) = self.vrings[i].addr {
                if self.vrings[i].worker.is_none() {
                    self.vrings[i].gpa = self.translate(&a, self.vrings[i].size).ok();
                }
            }
        }
        Ok(None)
    }

    fn translate(&self, a: &VringAddr, size: u16) -> Result<(u64, u64, u64), HandlerError> {
        let n = size as u64;
        let desc = self
            .mem
            .uva_to_gpa(a.descriptor, 16 * n)
            .ok_or(HandlerError::BadAddress(a.descriptor))?;
        let avail = self
            .mem
            .uva_to_gpa(a.available, 6 + 2 * n)
            .ok_or(HandlerError::BadAddress(a.available))?;
        let used = self
            .mem
            .uva_to_gpa(a.used, 6 + 8 * n)
            .ok_or(HandlerError::BadAddress(a.used))?;
        if desc % 16 != 0 || avail % 2 != 0 || used % 4 != 0 {
            return Err(HandlerError::Invalid("ring alignment".into()));
        }
        Ok((desc, avail, used))
    }

    fn set_vring_addr(&mut self, mut msg: Message) -> Result<Option<Reply>, HandlerError> {
        let request = Request::SetVringAddr;
        fds(&mut msg, request, 0)?;
        let a: VringAddr = body(&msg, request)?;
        let i = self.vring_index(a.index as u64)?;
        if !a.is_valid() {
            return Err(HandlerError::Invalid(format!("vring flags {:#x}", a.flags)));
        }
        let size = match self.vrings[i].size {
            0 => self.device.max_queue_size().min(MAX_QUEUE_SIZE as u16),
            s => s,
        };
        let gpa = self.translate(&a, size)?;
        let v = &mut self.vrings[i];
        if v.worker.is_some() {
            // Only the log flag may change on a running ring (migration start/stop).
            if v.gpa != Some(gpa) {
                return Err(HandlerError::RingRunning(i));
            }
        }
        v.shared
            .log_used
            .store(a.flags & VRING_F_LOG != 0, Ordering::Release);
        v.shared.log_addr.store(a.log, Ordering::Release);
        v.size = size;
        v.addr = Some(a);
        v.gpa = Some(gpa);
        Ok(None)
    }

    fn set_vring_fd(
        &mut self,
        mut msg: Message,
        request: Request,
    ) -> Result<Option<Reply>, HandlerError> {
        let v: U64 = body(&msg, request)?;
        if v.value & !(VRING_IDX_MASK | VRING_NOFD_MASK) != 0 {
            return Err(HandlerError::Invalid(format!(
                "vring fd payload {:#x}",
                v.value
            )));
        }
        let i = self.vring_index(v.value & VRING_IDX_MASK)?;
        let nofd = v.value & VRING_NOFD_MASK != 0;
        let mut f = fds(&mut msg, request, if nofd { 0 } else { 1 })?;
        let fd = f.pop().map(eventfd_from);
        match request {
            Request::SetVringCall => {
                *self.vrings[i]
                    .shared
                    .call
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = fd;
            }
            Request::SetVringErr => {
                *self.vrings[i]
                    .shared
                    .err
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = fd;
            }
            _ => {
                self.stop_vring(i);
                self.vrings[i].kick = fd;
                if self.vrings[i].kick.is_some() {
                    self.start_vring(i)?;
                } else {
                    tracing::warn!(
                        queue = i,
                        "front-end asked for polling mode; ring stays stopped"
                    );
                }
            }
        }
        Ok(None)
    }

    fn start_vring(&mut self, i: usize) -> Result<(), HandlerError> {
        let v = &self.vrings[i];
        let (desc, avail, used) = match v.gpa {
            Some(g) => g,
            None => match v.addr {
                Some(a) => self.translate(&a, v.size)?,
                None => return Err(HandlerError::Invalid(format!("vring {i} has no addresses"))),
            },
        };
        if v.size == 0 {
            return Err(HandlerError::Invalid(format!("vring {i} has no size")));
        }
        if self.acked_features & features::PROTOCOL_FEATURES == 0 {
            v.shared.enabled.store(true, Ordering::Release);
        }
        let setup = QueueSetup {
            index: i,
            size: v.size,
            desc,
            avail,
            used,
            base: v.base,
            event_idx: self.acked_features & features::RING_EVENT_IDX != 0,
            indirect: self.acked_features & features::RING_INDIRECT_DESC != 0,
        };
        let tracker = match self.inflight.as_ref() {
            Some(area) if (i as u16) < area.num_queues() => match area.queue(i, v.size) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(queue = i, error = %e, "inflight tracking disabled for this queue");
                    None
                }
            },
            _ => None,
        };
        let kick = v
            .kick
            .as_ref()
            .ok_or_else(|| HandlerError::Invalid(format!("vring {i} has no kick fd")))?
            .try_clone()
            .map_err(HandlerError::EventFd)?;
        let io = QueueIo::new(
            &setup,
            self.mem.atomic(),
            tracker,
            self.log.clone(),
            v.shared.clone(),
        )?;
        let handler = self.device.start_queue(i)?;
        let worker = Worker::spawn(io, handler, kick, self.device.name(), self.poll_us)?;
        if self.asleep {
            worker.sleep();
        }
        tracing::debug!(queue = i, size = setup.size, "vring started");
        self.vrings[i].worker = Some(worker);
        Ok(())
    }

    fn stop_vring(&mut self, i: usize) {
        if let Some(w) = self.vrings[i].worker.take() {
            if let Some(io) = w.stop() {
                self.vrings[i].base = io.next_avail();
                self.vrings[i].last_used = io.next_used();
            }
            self.device.stop_queue(i);
            tracing::debug!(queue = i, base = self.vrings[i].base, "vring stopped");
        }
    }

    fn stop_all(&mut self) {
        for i in 0..self.vrings.len() {
            self.stop_vring(i);
        }
    }

    fn reset_device(&mut self) {
        self.stop_all();
        for v in &mut self.vrings {
            *v = VringConfig::default();
        }
        self.acked_features = 0;
        self.log.clear();
        self.inflight = None;
        self.status = 0;
        self.device.reset();
    }

    /// The front-end went away: stop everything and forget the session.
    pub fn disconnect(&mut self) {
        self.reset_device();
        self.acked_protocol = 0;
        self.owner = false;
        self.mem.clear();
        self.log_fd = None;
        self.notifier.set_channel(None);
    }

    /// Common checks of GET/SET_CONFIG: no fds, CONFIG negotiated, a config header.
    fn config_message<'m>(
        &self,
        msg: &'m Message,
        request: Request,
    ) -> Result<(ConfigHeader, &'m [u8]), HandlerError> {
        if !msg.fds.is_empty() {
            return Err(HandlerError::FdCount {
                request,
                got: msg.fds.len(),
                expected: 0,
            });
        }
        self.require(request, protocol::CONFIG)?;
        ConfigHeader::read_from_prefix(&msg.payload).map_err(|_| HandlerError::PayloadSize {
            request,
            got: msg.payload.len(),
            expected: "12 + size".into(),
        })
    }

    fn get_config(&mut self, msg: Message) -> Result<Option<Reply>, HandlerError> {
        let request = Request::GetConfig;
        let (h, rest) = self.config_message(&msg, request)?;
        // Reads may reach past the device's fields (a newer front-end's larger struct): those
        // bytes read as zero, up to the largest config space the protocol carries.
        self.check_config_range(request, &h, rest.len(), MAX_CONFIG_SIZE as usize)?;
        let mut out = h.as_bytes().to_vec();
        let start = out.len();
        out.resize(start + h.size as usize, 0);
        let size = self.device.config_size();
        let off = h.offset as usize;
        if off < size {
            let n = (h.size as usize).min(size - off);
            self.device.read_config(off, &mut out[start..start + n]);
        }
        Ok(Some(Reply {
            body: out,
            fds: Vec::new(),
        }))
    }

    fn check_config_range(
        &self,
        request: Request,
        h: &ConfigHeader,
        data_len: usize,
        limit: usize,
    ) -> Result<(), HandlerError> {
        if h.size as usize != data_len {
            return Err(HandlerError::PayloadSize {
                request,
                got: data_len,
                expected: h.size.to_string(),
            });
        }
        let end = h
            .offset
            .checked_add(h.size)
            .ok_or_else(|| HandlerError::Invalid("config range".into()))?;
        if h.size == 0 || h.size > MAX_CONFIG_SIZE || end as usize > limit {
            return Err(HandlerError::Invalid(format!(
                "config range {}+{}",
                h.offset, h.size
            )));
        }
        Ok(())
    }

    fn set_config(&mut self, msg: Message) -> Result<Option<Reply>, HandlerError> {
        let request = Request::SetConfig;
        let (h, rest) = self.config_message(&msg, request)?;
        if h.flags & !CONFIG_FLAG_MIGRATION != 0 {
            return Err(HandlerError::Invalid(format!(
                "config flags {:#x}",
                h.flags
            )));
        }
        self.check_config_range(request, &h, rest.len(), self.device.config_size())?;
        self.device.write_config(h.offset as usize, rest)?;
        Ok(None)
    }

    /// Drains every running queue and tells the device to sleep. Idempotent.
    pub fn sleep(&mut self) -> Result<(), HandlerError> {
        if self.asleep {
            return Ok(());
        }
        for v in &self.vrings {
            if let Some(w) = v.worker.as_ref() {
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
        for v in &self.vrings {
            if let Some(w) = v.worker.as_ref() {
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
                })
                .collect(),
        }
    }

    /// The config-change notifier (for tests and the control plane).
    pub fn notifier(&self) -> &Arc<ConfigNotifier> {
        &self.notifier
    }
}

fn inflight_body(msg: &Message, request: Request) -> Result<InflightDescription, HandlerError> {
    let p = &msg.payload;
    if p.len() == std::mem::size_of::<InflightDescription>() {
        return InflightDescription::read_from_bytes(p)
            .map_err(|_| HandlerError::Invalid("inflight".into()));
    }
    if p.len() == INFLIGHT_DESCRIPTION_PACKED_SIZE {
        let mut full = [0u8; 24];
        full[..20].copy_from_slice(p);
        return InflightDescription::read_from_bytes(&full[..])
            .map_err(|_| HandlerError::Invalid("inflight".into()));
    }
    Err(HandlerError::PayloadSize {
        request,
        got: p.len(),
        expected: "24 (or 20)".into(),
    })
}

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
