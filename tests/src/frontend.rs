//! The front-end side of conformance tests.
//!
//! The protocol is spoken by an independent implementation, the rust-vmm `vhost` crate's
//! [`Frontend`]; this module adds what a VMM would add around it:
//!
//! - [`TestGuest`]: guest memory made of memfd-backed regions mapped in this process (their
//!   addresses here are the "front-end user addresses" of the protocol);
//! - [`DriverQueue`]: the driver half of a split virtqueue in that memory (descriptor table,
//!   available ring, used ring; kick, call and err eventfds);
//! - [`TestServer`]: a [`BackendServer`] with a [`TestDevice`] on a socket in a temporary
//!   directory, served on its own thread;
//! - [`negotiate`] and [`TestServer::session`]: the standard negotiation and set-up sequence;
//! - [`raw`]: hand-written messages for what the `vhost` crate cannot or will not send.

use std::collections::HashMap;
use std::fs::File;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};
use vmm_sys_util::eventfd::EventFd;
use vu_core::handler::{Handler, HandlerStatus};
use vu_core::{bind_socket, BackendServer, VhostUserDevice};

use crate::test_device::{TestDevice, DEVICE_NAME};

/// How long any single wait in a conformance test may take. Generous: the tests must hold
/// on a loaded two-core machine.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Virtio feature bits, spelled out here (not taken from vu-core) so the tests check the
/// back-end against the specification rather than against itself.
pub mod bits {
    /// VIRTIO_RING_F_INDIRECT_DESC.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// VIRTIO_RING_F_EVENT_IDX.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// VHOST_USER_F_PROTOCOL_FEATURES.
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    /// VHOST_F_LOG_ALL.
    pub const LOG_ALL: u64 = 1 << 26;
    /// VIRTIO_F_VERSION_1.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Split-ring descriptor flags.
pub mod desc_flags {
    /// VIRTQ_DESC_F_NEXT.
    pub const NEXT: u16 = 1;
    /// VIRTQ_DESC_F_WRITE.
    pub const WRITE: u16 = 2;
    /// VIRTQ_DESC_F_INDIRECT.
    pub const INDIRECT: u16 = 4;
}

/// The protocol features a well-behaved front-end asks for from this back-end.
pub fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
        | VhostUserProtocolFeatures::RESET_DEVICE
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::STATUS
}

// ---------------------------------------------------------------------------------------------
// Guest memory

/// Region layout of [`TestGuest::standard`]: two contiguous regions (so a buffer can straddle
/// them) and a third far away that tests add and remove at run time.
pub const STANDARD_LAYOUT: [(u64, u64); 3] = [
    (0, 0x10_0000),
    (0x10_0000, 0x10_0000),
    (0x1000_0000, 0x10_0000),
];

/// A guest physical address that no region of the standard layout covers.
pub const UNMAPPED_GPA: u64 = 0x4000_0000;

/// Guest memory backed by memfds, mapped shared in this process.
#[derive(Debug)]
pub struct TestGuest {
    mem: GuestMemoryMmap,
    /// Regions in the order they were given (not sorted).
    regions: Vec<Arc<GuestRegionMmap>>,
    next: Mutex<Vec<u64>>,
}

impl TestGuest {
    /// Guest memory with one memfd per `(guest physical address, size)`.
    pub fn new(layout: &[(u64, u64)]) -> Result<Arc<Self>> {
        let mut regions = Vec::new();
        for (i, &(gpa, size)) in layout.iter().enumerate() {
            let fd = nix::sys::memfd::memfd_create(
                format!("guest-ram-{i}").as_str(),
                nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
            )
            .context("memfd_create")?;
            nix::unistd::ftruncate(&fd, size as i64).context("ftruncate")?;
            let file = File::from(fd);
            let region = GuestRegionMmap::from_range(
                GuestAddress(gpa),
                size as usize,
                Some(FileOffset::new(file, 0)),
            )
            .map_err(|e| anyhow!("cannot map guest region {i}: {e:?}"))?;
            regions.push(Arc::new(region));
        }
        let mut sorted = regions.clone();
        sorted.sort_by_key(|r| r.start_addr());
        let mem = GuestMemoryMmap::from_arc_regions(sorted)
            .map_err(|e| anyhow!("invalid guest layout: {e:?}"))?;
        Ok(Arc::new(TestGuest {
            mem,
            next: Mutex::new(vec![0; regions.len()]),
            regions,
        }))
    }

    /// The [`STANDARD_LAYOUT`].
    pub fn standard() -> Result<Arc<Self>> {
        Self::new(&STANDARD_LAYOUT)
    }

    /// The whole guest memory, as the driver sees it.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Number of regions.
    pub fn num_regions(&self) -> usize {
        self.regions.len()
    }

    /// `(guest physical address, size)` of region `i`.
    pub fn region_range(&self, i: usize) -> (u64, u64) {
        let r = &self.regions[i];
        (r.start_addr().0, r.len())
    }

    /// Region `i` as the vhost crate describes it (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG).
    pub fn region_info(&self, i: usize) -> VhostUserMemoryRegionInfo {
        let r = &self.regions[i];
        VhostUserMemoryRegionInfo {
            guest_phys_addr: r.start_addr().0,
            memory_size: r.len(),
            userspace_addr: r.as_ptr() as u64,
            mmap_offset: 0,
            mmap_handle: r.file_offset().map(|f| f.file().as_raw_fd()).unwrap_or(-1),
        }
    }

    /// The memfd of region `i`.
    pub fn region_fd(&self, i: usize) -> RawFd {
        self.region_info(i).mmap_handle
    }

    /// Descriptions of regions `idx`.
    pub fn regions_info(&self, idx: &[usize]) -> Vec<VhostUserMemoryRegionInfo> {
        idx.iter().map(|&i| self.region_info(i)).collect()
    }

    /// The front-end user address (address in this process) of `gpa`.
    pub fn host_addr(&self, gpa: u64) -> Result<u64> {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|e| anyhow!("gpa {gpa:#x} is not guest memory: {e}"))
    }

    /// Allocates `len` bytes aligned to `align` in region `region`; returns the guest
    /// physical address.
    pub fn alloc(&self, region: usize, len: u64, align: u64) -> Result<u64> {
        let (start, size) = self.region_range(region);
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let off = next[region].next_multiple_of(align);
        ensure!(
            off + len <= size,
            "region {region} is full ({len} bytes wanted)"
        );
        next[region] = off + len;
        Ok(start + off)
    }

    /// Writes guest memory.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| anyhow!("write at {gpa:#x}: {e}"))
    }

    /// Reads guest memory.
    pub fn read(&self, gpa: u64, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(gpa))
            .map_err(|e| anyhow!("read at {gpa:#x}: {e}"))?;
        Ok(v)
    }

    fn store_u16(&self, gpa: u64, v: u16) -> Result<()> {
        self.mem
            .store(v, GuestAddress(gpa), Ordering::Release)
            .map_err(|e| anyhow!("store at {gpa:#x}: {e}"))
    }

    fn load_u16(&self, gpa: u64) -> Result<u16> {
        self.mem
            .load(GuestAddress(gpa), Ordering::Acquire)
            .map_err(|e| anyhow!("load at {gpa:#x}: {e}"))
    }
}

// ---------------------------------------------------------------------------------------------
// The driver side of a split virtqueue

/// Bytes of data buffer reserved per descriptor by [`DriverQueue`].
pub const SLOT_SIZE: u64 = 512;

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    /// Guest physical address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

impl Buf {
    /// A device-readable buffer.
    pub fn r(addr: u64, len: u32) -> Self {
        Buf {
            addr,
            len,
            write: false,
        }
    }

    /// A device-writable buffer.
    pub fn w(addr: u64, len: u32) -> Self {
        Buf {
            addr,
            len,
            write: true,
        }
    }
}

/// A used element the driver collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Used {
    /// Head index (`id` of the used element).
    pub id: u32,
    /// Bytes the device wrote.
    pub len: u32,
    /// The first `len` bytes of the chain's writable buffers (empty if the driver did not
    /// know the chain or cannot read them).
    pub data: Vec<u8>,
}

/// The driver half of a split virtqueue living in a [`TestGuest`].
#[derive(Debug)]
pub struct DriverQueue {
    guest: Arc<TestGuest>,
    index: usize,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    slots: u64,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    writable: HashMap<u16, Vec<(u64, u32)>>,
    next_avail: Wrapping<u16>,
    last_used: Wrapping<u16>,
    event_idx: bool,
    /// Kick eventfd (driver -> device).
    pub kick: EventFd,
    /// Call eventfd (device -> driver).
    pub call: EventFd,
    /// Error eventfd (device -> front-end).
    pub err: EventFd,
}

fn nonblocking_eventfd() -> Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).context("eventfd")
}

impl DriverQueue {
    /// A queue of `size` descriptors, rings and data slots allocated in region `region`.
    pub fn new(guest: &Arc<TestGuest>, index: usize, size: u16, region: usize) -> Result<Self> {
        ensure!(size.is_power_of_two(), "queue size {size}");
        let n = size as u64;
        let desc = guest.alloc(region, 16 * n, 16)?;
        let avail = guest.alloc(region, 6 + 2 * n, 2)?;
        let used = guest.alloc(region, 6 + 8 * n, 4)?;
        let slots = guest.alloc(region, SLOT_SIZE * n, 64)?;
        Self::new_at(guest, index, size, desc, avail, used, slots)
    }

    /// A queue with its rings and data slots (`SLOT_SIZE` bytes per descriptor) at the given
    /// guest physical addresses.
    pub fn new_at(
        guest: &Arc<TestGuest>,
        index: usize,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
        slots: u64,
    ) -> Result<Self> {
        ensure!(size.is_power_of_two(), "queue size {size}");
        guest.write(desc, &vec![0u8; 16 * size as usize])?;
        guest.write(avail, &vec![0u8; 6 + 2 * size as usize])?;
        guest.write(used, &vec![0u8; 6 + 8 * size as usize])?;
        Ok(DriverQueue {
            guest: guest.clone(),
            index,
            size,
            desc,
            avail,
            used,
            slots,
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
            writable: HashMap::new(),
            next_avail: Wrapping(0),
            last_used: Wrapping(0),
            event_idx: false,
            kick: nonblocking_eventfd()?,
            call: nonblocking_eventfd()?,
            err: nonblocking_eventfd()?,
        })
    }

    /// Queue index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The guest this queue lives in.
    pub fn guest(&self) -> &Arc<TestGuest> {
        &self.guest
    }

    /// Guest physical addresses of (descriptor table, available ring, used ring).
    pub fn ring_gpas(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }

    /// The data slot reserved for descriptor `d`.
    pub fn slot(&self, d: u16) -> u64 {
        self.slots + d as u64 * SLOT_SIZE
    }

    /// Number of free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Chains made available and not yet seen in the used ring.
    pub fn outstanding(&self) -> usize {
        self.chains.len()
    }

    /// The next available index the driver will publish.
    pub fn next_avail(&self) -> u16 {
        self.next_avail.0
    }

    /// The used index as far as the driver has consumed it.
    pub fn last_used(&self) -> u16 {
        self.last_used.0
    }

    /// The used index the device published.
    pub fn device_used_idx(&self) -> Result<u16> {
        self.guest.load_u16(self.used + 2)
    }

    /// The driver negotiated VIRTIO_RING_F_EVENT_IDX: maintain `used_event`.
    pub fn set_event_idx(&mut self, on: bool) -> Result<()> {
        self.event_idx = on;
        if on {
            self.set_used_event(self.last_used.0)?;
        }
        Ok(())
    }

    /// Writes `used_event` (the used index at which the driver wants a notification).
    pub fn set_used_event(&self, v: u16) -> Result<()> {
        self.guest
            .store_u16(self.avail + 4 + 2 * self.size as u64, v)
    }

    /// The device's `avail_event`.
    pub fn avail_event(&self) -> Result<u16> {
        self.guest.load_u16(self.used + 4 + 8 * self.size as u64)
    }

    /// Writes the available ring's flags (1 = VRING_AVAIL_F_NO_INTERRUPT).
    pub fn set_avail_flags(&self, flags: u16) -> Result<()> {
        self.guest.store_u16(self.avail, flags)
    }

    /// Before the ring is handed to the device: start both indexes at `idx` (to test index
    /// wrap-around without 65536 requests).
    pub fn set_start_index(&mut self, idx: u16) -> Result<()> {
        ensure!(self.chains.is_empty(), "ring in use");
        self.next_avail = Wrapping(idx);
        self.last_used = Wrapping(idx);
        self.guest.store_u16(self.avail + 2, idx)?;
        self.guest.store_u16(self.used + 2, idx)?;
        if self.event_idx {
            self.set_used_event(idx)?;
        }
        Ok(())
    }

    /// Ring addresses as the vhost crate sends them (front-end user addresses).
    pub fn config_data(&self) -> Result<VringConfigData> {
        Ok(VringConfigData {
            queue_max_size: self.size,
            queue_size: self.size,
            flags: 0,
            desc_table_addr: self.guest.host_addr(self.desc)?,
            used_ring_addr: self.guest.host_addr(self.used)?,
            avail_ring_addr: self.guest.host_addr(self.avail)?,
            log_addr: None,
        })
    }

    /// The standard ring set-up: SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE (the driver's
    /// next available index), SET_VRING_CALL, SET_VRING_ERR, SET_VRING_KICK and, if asked,
    /// SET_VRING_ENABLE(1).
    pub fn setup(&self, fe: &mut Frontend, enable: bool) -> Result<()> {
        self.setup_with_base(fe, self.next_avail.0, enable)
    }

    /// [`Self::setup`] with an explicit SET_VRING_BASE.
    pub fn setup_with_base(&self, fe: &mut Frontend, base: u16, enable: bool) -> Result<()> {
        let q = self.index;
        fe.set_vring_num(q, self.size).context("SET_VRING_NUM")?;
        fe.set_vring_addr(q, &self.config_data()?)
            .context("SET_VRING_ADDR")?;
        fe.set_vring_base(q, base).context("SET_VRING_BASE")?;
        fe.set_vring_call(q, &self.call).context("SET_VRING_CALL")?;
        fe.set_vring_err(q, &self.err).context("SET_VRING_ERR")?;
        fe.set_vring_kick(q, &self.kick).context("SET_VRING_KICK")?;
        if enable {
            fe.set_vring_enable(q, true).context("SET_VRING_ENABLE")?;
        }
        Ok(())
    }

    fn write_desc(&self, table: u64, i: u16, b: &Buf, flags: u16, next: u16) -> Result<()> {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&b.addr.to_le_bytes());
        d[8..12].copy_from_slice(&b.len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.guest.write(table + 16 * i as u64, &d)
    }

    fn take_descriptors(&mut self, n: usize) -> Result<Vec<u16>> {
        ensure!(
            n > 0 && n <= self.free.len(),
            "queue {}: {n} descriptors wanted, {} free",
            self.index,
            self.free.len()
        );
        let at = self.free.len() - n;
        let mut ds = self.free.split_off(at);
        ds.reverse();
        Ok(ds)
    }

    fn publish(&mut self, head: u16) -> Result<()> {
        let slot = (self.next_avail.0 % self.size) as u64;
        let mut b = [0u8; 2];
        b.copy_from_slice(&head.to_le_bytes());
        self.guest.write(self.avail + 4 + 2 * slot, &b)?;
        self.next_avail += Wrapping(1);
        // The ring entry before the index (store with Release ordering).
        fence(Ordering::SeqCst);
        self.guest.store_u16(self.avail + 2, self.next_avail.0)?;
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Makes a chain of `bufs` available (without kicking). Returns its head.
    pub fn add(&mut self, bufs: &[Buf]) -> Result<u16> {
        let ds = self.take_descriptors(bufs.len())?;
        for (k, b) in bufs.iter().enumerate() {
            let last = k + 1 == bufs.len();
            let mut flags = if b.write { desc_flags::WRITE } else { 0 };
            let next = if last { 0 } else { ds[k + 1] };
            if !last {
                flags |= desc_flags::NEXT;
            }
            self.write_desc(self.desc, ds[k], b, flags, next)?;
        }
        let head = ds[0];
        self.writable.insert(
            head,
            bufs.iter()
                .filter(|b| b.write)
                .map(|b| (b.addr, b.len))
                .collect(),
        );
        self.chains.insert(head, ds);
        self.publish(head)?;
        Ok(head)
    }

    /// Makes available a chain made of one descriptor with raw `addr`, `len`, `flags` and
    /// `next` (for malformed chains). Returns its head.
    pub fn add_raw(&mut self, addr: u64, len: u32, flags: u16, next: u16) -> Result<u16> {
        let ds = self.take_descriptors(1)?;
        let head = ds[0];
        self.write_desc(self.desc, head, &Buf::r(addr, len), flags, next)?;
        self.writable.insert(head, Vec::new());
        self.chains.insert(head, ds);
        self.publish(head)?;
        Ok(head)
    }

    /// The descriptor the next `add*` call will use as its head.
    pub fn peek_free(&self) -> Option<u16> {
        self.free.last().copied()
    }

    /// Publishes `head` in the available ring as it is, with no chain behind it (for hostile
    /// drivers: out-of-range heads, heads already in flight).
    pub fn add_head(&mut self, head: u16) -> Result<()> {
        self.publish(head)
    }

    /// Sets the available index to `idx` without adding entries (for hostile drivers).
    pub fn set_avail_idx(&mut self, idx: u16) -> Result<()> {
        self.next_avail = Wrapping(idx);
        self.guest.store_u16(self.avail + 2, idx)
    }

    /// Writes descriptor `i` of the ring's table directly (for malformed chains).
    pub fn write_raw_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) -> Result<()> {
        self.write_desc(self.desc, i, &Buf::r(addr, len), flags, next)
    }

    /// Writes descriptor `i` of a table at `table` (an indirect table) directly.
    pub fn write_raw_desc_at(
        &self,
        table: u64,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<()> {
        self.write_desc(table, i, &Buf::r(addr, len), flags, next)
    }

    /// Makes available one INDIRECT descriptor whose table (in the head descriptor's data
    /// slot) holds `bufs`. Returns its head.
    pub fn add_indirect(&mut self, bufs: &[Buf]) -> Result<u16> {
        ensure!(
            bufs.len() as u64 * 16 <= SLOT_SIZE,
            "indirect table too long"
        );
        let ds = self.take_descriptors(1)?;
        let head = ds[0];
        let table = self.slot(head);
        for (k, b) in bufs.iter().enumerate() {
            let last = k + 1 == bufs.len();
            let mut flags = if b.write { desc_flags::WRITE } else { 0 };
            if !last {
                flags |= desc_flags::NEXT;
            }
            let next = if last { 0 } else { k as u16 + 1 };
            self.write_desc(table, k as u16, b, flags, next)?;
        }
        let t = Buf::r(table, 16 * bufs.len() as u32);
        self.write_desc(self.desc, head, &t, desc_flags::INDIRECT, 0)?;
        self.writable.insert(
            head,
            bufs.iter()
                .filter(|b| b.write)
                .map(|b| (b.addr, b.len))
                .collect(),
        );
        self.chains.insert(head, ds);
        self.publish(head)?;
        Ok(head)
    }

    /// Submits a request: `request` in one readable descriptor, `response_len` bytes of room
    /// in one writable descriptor, both in the descriptors' data slots. Returns the head.
    pub fn submit(&mut self, request: &[u8], response_len: u32) -> Result<u16> {
        self.submit_sg(&[request], &[response_len])
    }

    /// Submits a request scattered over several readable and writable descriptors.
    pub fn submit_sg(&mut self, request: &[&[u8]], response: &[u32]) -> Result<u16> {
        let n = request.len() + response.len();
        ensure!(n > 0, "empty request");
        // Peek the descriptors `add` will take to place the data in their slots.
        ensure!(n <= self.free.len(), "queue {}: ring full", self.index);
        let ds: Vec<u16> = self.free[self.free.len() - n..]
            .iter()
            .rev()
            .copied()
            .collect();
        let mut bufs = Vec::with_capacity(n);
        for (k, part) in request.iter().enumerate() {
            ensure!(part.len() as u64 <= SLOT_SIZE, "request part too long");
            let a = self.slot(ds[k]);
            self.guest.write(a, part)?;
            bufs.push(Buf::r(a, part.len() as u32));
        }
        for (k, &len) in response.iter().enumerate() {
            ensure!(len as u64 <= SLOT_SIZE, "response part too long");
            let a = self.slot(ds[request.len() + k]);
            self.guest.write(a, &vec![0u8; len as usize])?;
            bufs.push(Buf::w(a, len));
        }
        self.add(&bufs)
    }

    /// Submits a request through an indirect table: one readable and one writable buffer,
    /// both inside the head's data slot (request and response up to 192 bytes).
    pub fn submit_indirect(&mut self, request: &[u8], response_len: u32) -> Result<u16> {
        ensure!(request.len() <= 192 && response_len <= 192, "too long");
        let Some(&head) = self.free.last() else {
            bail!("queue {}: ring full", self.index);
        };
        let s = self.slot(head);
        self.guest.write(s + 64, request)?;
        self.guest
            .write(s + 320, &vec![0u8; response_len as usize])?;
        self.add_indirect(&[
            Buf::r(s + 64, request.len() as u32),
            Buf::w(s + 320, response_len),
        ])
    }

    /// Notifies the device.
    pub fn kick(&self) -> Result<()> {
        self.kick.write(1).context("kick")
    }

    /// Collects whatever the device has put in the used ring, without waiting.
    pub fn collect(&mut self) -> Result<Vec<Used>> {
        let mut out = Vec::new();
        let dev = Wrapping(self.guest.load_u16(self.used + 2)?);
        ensure!(
            (dev - self.last_used).0 <= self.size,
            "queue {}: device used index {} is more than a ring ahead of {}",
            self.index,
            dev.0,
            self.last_used.0
        );
        while self.last_used != dev {
            let pos = (self.last_used.0 % self.size) as u64;
            let e = self.guest.read(self.used + 4 + 8 * pos, 8)?;
            let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            let head = id as u16;
            let mut data = Vec::new();
            if let Some(bufs) = self.writable.remove(&head) {
                let mut left = len as usize;
                for (addr, blen) in bufs {
                    if left == 0 {
                        break;
                    }
                    let n = left.min(blen as usize);
                    // Buffers outside this guest's memory (aliases, other guests) are
                    // checked by the caller.
                    match self.guest.read(addr, n) {
                        Ok(d) => data.extend(d),
                        Err(_) => break,
                    }
                    left -= n;
                }
            }
            if let Some(ds) = self.chains.remove(&head) {
                self.free.extend(ds.iter().rev());
            }
            out.push(Used { id, len, data });
            self.last_used += Wrapping(1);
        }
        if self.event_idx {
            self.set_used_event(self.last_used.0)?;
            fence(Ordering::SeqCst);
        }
        Ok(out)
    }

    /// Waits for notifications on the call eventfd until at least `n` used elements were
    /// collected. Fails if the device does not notify within `timeout`.
    pub fn wait_used(&mut self, n: usize, timeout: Duration) -> Result<Vec<Used>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            out.extend(self.collect()?);
            if out.len() >= n {
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "queue {}: {} of {n} used elements after {timeout:?} (device used idx {}, \
                     driver avail idx {})",
                    self.index,
                    out.len(),
                    self.device_used_idx()?,
                    self.next_avail.0
                );
            }
            if wait_readable(self.call.as_raw_fd(), deadline - now)? {
                let _ = self.call.read();
            }
        }
    }

    /// Polls the used ring (not the call eventfd) until at least `n` elements were collected:
    /// for tests where notifications are suppressed on purpose.
    pub fn poll_used(&mut self, n: usize, timeout: Duration) -> Result<Vec<Used>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            out.extend(self.collect()?);
            if out.len() >= n {
                return Ok(out);
            }
            if Instant::now() >= deadline {
                bail!(
                    "queue {}: {} of {n} used elements after {timeout:?}",
                    self.index,
                    out.len()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Consumes a pending notification on the call eventfd; returns whether there was one.
    pub fn take_call(&self) -> bool {
        self.call.read().is_ok()
    }

    /// Waits for a notification on the err eventfd.
    pub fn wait_err(&self, timeout: Duration) -> Result<bool> {
        if wait_readable(self.err.as_raw_fd(), timeout)? {
            let _ = self.err.read();
            return Ok(true);
        }
        Ok(false)
    }

    /// Submits `requests` (request bytes, response room) keeping at most `window` in flight,
    /// kicking after each batch; returns the used elements in used-ring order together with
    /// the request each answers. Checks every answer against the echo/xor device.
    pub fn run_echo(
        &mut self,
        requests: &[(Vec<u8>, u32)],
        window: usize,
        timeout: Duration,
    ) -> Result<Vec<(Used, usize)>> {
        let mut by_head: HashMap<u16, usize> = HashMap::new();
        let mut done = Vec::new();
        let mut next = 0;
        while done.len() < requests.len() {
            let mut added = false;
            while next < requests.len() && by_head.len() < window && self.free.len() >= 2 {
                let (req, room) = &requests[next];
                let head = self.submit(req, *room)?;
                ensure!(
                    by_head.insert(head, next).is_none(),
                    "head {head} reused while in flight"
                );
                next += 1;
                added = true;
            }
            if added {
                self.kick()?;
            }
            for u in self.wait_used(1, timeout)? {
                let i = by_head
                    .remove(&(u.id as u16))
                    .ok_or_else(|| anyhow!("queue {}: unexpected used id {}", self.index, u.id))?;
                let (req, room) = &requests[i];
                let want = crate::test_device::expected_response(self.index, req, *room as usize);
                ensure!(
                    u.len as usize == want.len() && u.data == want,
                    "queue {}: request {i} (head {}) answered {} bytes {:?}, expected {:?}",
                    self.index,
                    u.id,
                    u.len,
                    &u.data[..u.data.len().min(16)],
                    &want[..want.len().min(16)]
                );
                done.push((u, i));
            }
        }
        Ok(done)
    }
}

/// Waits until `fd` is readable or `timeout` passes; returns whether it is readable.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // SAFETY: the caller keeps `fd` open for the duration of this call.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut fds = [PollFd::new(bfd, PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
            .unwrap_or(PollTimeout::NONE);
        match poll(&mut fds, ms) {
            Ok(0) => {
                if Instant::now() >= deadline {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(true),
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
    }
}

/// Echo requests of assorted sizes: `n` requests, request `i` has a distinct pattern.
pub fn echo_requests(n: usize, seed: u8) -> Vec<(Vec<u8>, u32)> {
    (0..n)
        .map(|i| {
            let len = 1 + (i * 37 + seed as usize) % 300;
            let data: Vec<u8> = (0..len)
                .map(|k| (k as u8).wrapping_mul(31).wrapping_add(i as u8 ^ seed))
                .collect();
            // Sometimes less room than the request: the device writes what fits.
            let room = if i % 7 == 3 { len as u32 / 2 } else { 320 };
            (data, room)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The back-end under test

static BACKEND_PANICS: AtomicUsize = AtomicUsize::new(0);
static PANIC_HOOK: Once = Once::new();

/// Panics seen on back-end threads (the server thread and the queue workers) in this
/// test process.
pub fn backend_panics() -> usize {
    BACKEND_PANICS.load(Ordering::SeqCst)
}

const SERVER_THREAD: &str = "vu-test-server";

fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().unwrap_or("").to_string();
            if name == SERVER_THREAD || name.starts_with(&format!("{DEVICE_NAME}-q")) {
                BACKEND_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            prev(info);
        }));
    });
}

/// A [`BackendServer`] serving a [`TestDevice`] (or, with [`TestServer::start_device`], any
/// device) on a temporary socket, on its own thread.
pub struct TestServer {
    dir: tempfile::TempDir,
    path: PathBuf,
    /// The test device, when that is what is served.
    device: Option<TestDevice>,
    num_queues: usize,
    handler: Arc<Mutex<Handler>>,
    shutdown: Arc<nix::sys::eventfd::EventFd>,
    thread: Option<JoinHandle<Result<(), vu_core::backend_server::ServeError>>>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("path", &self.path)
            .finish()
    }
}

impl TestServer {
    /// Serves `device` on a fresh socket.
    pub fn start(device: TestDevice) -> Result<Self> {
        Self::serve(Arc::new(device.clone()), Some(device))
    }

    /// Serves any device (an `RngDevice`...); [`Self::device`] is then not available.
    pub fn start_device(device: Arc<dyn VhostUserDevice>) -> Result<Self> {
        Self::serve(device, None)
    }

    fn serve(served: Arc<dyn VhostUserDevice>, device: Option<TestDevice>) -> Result<Self> {
        install_panic_hook();
        let dir = tempfile::tempdir().context("tempdir")?;
        let path = dir.path().join("vu.sock");
        let listener = bind_socket(&path)?;
        let num_queues = served.num_queues();
        let server = BackendServer::new(served, listener)?;
        let handler = server.handler();
        let shutdown = server.shutdown_handle();
        let thread = std::thread::Builder::new()
            .name(SERVER_THREAD.into())
            .spawn(move || server.serve())
            .context("spawn server")?;
        Ok(TestServer {
            dir,
            path,
            device,
            num_queues,
            handler,
            shutdown,
            thread: Some(thread),
        })
    }

    /// A server with the default two-queue test device.
    pub fn start_default() -> Result<Self> {
        Self::start(TestDevice::default())
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary directory holding the socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The test device (shares state with the served one). Panics for a server started
    /// with [`Self::start_device`].
    pub fn device(&self) -> &TestDevice {
        self.device
            .as_ref()
            .expect("this server serves another device than the TestDevice")
    }

    /// The core's protocol state.
    pub fn handler(&self) -> &Arc<Mutex<Handler>> {
        &self.handler
    }

    /// Counters and negotiated state.
    pub fn status(&self) -> HandlerStatus {
        self.handler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .status()
    }

    /// Whether the serving thread is still running.
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Connects a vhost-crate front-end (the server serves one at a time: a second
    /// connection waits in the backlog until the first is gone).
    pub fn connect(&self) -> Result<Frontend> {
        Frontend::connect(&self.path, self.num_queues as u64).map_err(|e| anyhow!("connect: {e}"))
    }

    /// Connects a raw socket.
    pub fn connect_raw(&self) -> Result<raw::RawConn> {
        raw::RawConn::connect(&self.path)
    }

    /// Connects, negotiates with `opts`, sends SET_MEM_TABLE with regions 0 and 1 of `guest`
    /// and sets up and enables one queue of `queue_size` per device queue, rings in region 0.
    pub fn session(
        &self,
        guest: &Arc<TestGuest>,
        opts: &Options,
        queue_size: u16,
    ) -> Result<Session> {
        let mut fe = self.connect()?;
        let neg = negotiate(&mut fe, opts)?;
        fe.set_mem_table(&guest.regions_info(&[0, 1]))
            .map_err(|e| anyhow!("SET_MEM_TABLE: {e}"))?;
        let mut queues = Vec::new();
        for q in 0..self.num_queues {
            let mut dq = DriverQueue::new(guest, q, queue_size, 0)?;
            dq.set_event_idx(neg.features & bits::EVENT_IDX != 0)?;
            dq.setup(&mut fe, true)?;
            queues.push(dq);
        }
        Ok(Session { fe, neg, queues })
    }

    /// Stops serving (closing any connection) and joins the thread; fails if it panicked or
    /// returned an error.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        let _ = self.shutdown.write(1);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(r) => r.map_err(|e| anyhow!("server: {e}"))?,
                Err(_) => bail!("the server thread panicked"),
            }
        }
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// What [`negotiate`] asks for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Accept VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
    /// Accept VIRTIO_RING_F_INDIRECT_DESC.
    pub indirect: bool,
    /// Protocol features to accept (intersected with the offer).
    pub protocol: VhostUserProtocolFeatures,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            event_idx: false,
            indirect: true,
            protocol: wanted_protocol_features(),
        }
    }
}

impl Options {
    /// Default options with EVENT_IDX.
    pub fn event_idx() -> Self {
        Options {
            event_idx: true,
            ..Default::default()
        }
    }
}

/// Result of [`negotiate`].
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// GET_FEATURES.
    pub offered_features: u64,
    /// What was sent with SET_FEATURES.
    pub features: u64,
    /// GET_PROTOCOL_FEATURES (all bits, also those the vhost crate does not name).
    pub offered_protocol: u64,
    /// What was sent with SET_PROTOCOL_FEATURES.
    pub protocol: VhostUserProtocolFeatures,
}

/// The standard negotiation, in QEMU's order: SET_OWNER, GET_FEATURES,
/// GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, then SET_FEATURES. Once REPLY_ACK is
/// negotiated every following request asks for an acknowledgement, so the vhost crate
/// reports refused requests as errors.
pub fn negotiate(fe: &mut Frontend, opts: &Options) -> Result<Negotiated> {
    fe.set_owner().map_err(|e| anyhow!("SET_OWNER: {e}"))?;
    let offered = fe
        .get_features()
        .map_err(|e| anyhow!("GET_FEATURES: {e}"))?;
    ensure!(
        offered & bits::PROTOCOL_FEATURES != 0,
        "PROTOCOL_FEATURES not offered"
    );
    let proto = fe
        .get_protocol_features()
        .map_err(|e| anyhow!("GET_PROTOCOL_FEATURES: {e}"))?;
    let offered_protocol = proto.bits();
    let protocol = proto & opts.protocol;
    fe.set_protocol_features(protocol)
        .map_err(|e| anyhow!("SET_PROTOCOL_FEATURES: {e}"))?;
    if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
    let mut want =
        bits::VERSION_1 | bits::PROTOCOL_FEATURES | crate::test_device::TEST_DEVICE_FEATURES;
    if opts.event_idx {
        want |= bits::EVENT_IDX;
    }
    if opts.indirect {
        want |= bits::INDIRECT_DESC;
    }
    let features = offered & want;
    fe.set_features(features)
        .map_err(|e| anyhow!("SET_FEATURES: {e}"))?;
    Ok(Negotiated {
        offered_features: offered,
        features,
        offered_protocol,
        protocol,
    })
}

/// A connected, negotiated front-end with its driver queues.
pub struct Session {
    /// The vhost crate front-end.
    pub fe: Frontend,
    /// What was negotiated.
    pub neg: Negotiated,
    /// One driver queue per device queue.
    pub queues: Vec<DriverQueue>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("neg", &self.neg)
            .field("queues", &self.queues)
            .finish()
    }
}

/// Turns a vhost crate result into an anyhow one.
pub fn vh<T>(r: vhost::Result<T>, what: &str) -> Result<T> {
    r.map_err(|e| anyhow!("{what}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Raw messages

/// Hand-written vhost-user messages, for requests the vhost crate has no method for
/// (SET_STATUS, GET_STATUS) and for malformed ones it refuses to send.
pub mod raw {
    use super::*;
    use std::io::{IoSlice, IoSliceMut};

    use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

    /// Header version 1.
    pub const VERSION: u32 = 1;
    /// Reply flag.
    pub const REPLY: u32 = 1 << 2;
    /// Need-reply flag.
    pub const NEED_REPLY: u32 = 1 << 3;

    /// Request codes used by the tests (from the specification).
    pub mod req {
        #![allow(missing_docs)]
        pub const GET_FEATURES: u32 = 1;
        pub const SET_FEATURES: u32 = 2;
        pub const SET_OWNER: u32 = 3;
        pub const SET_MEM_TABLE: u32 = 5;
        pub const SET_VRING_NUM: u32 = 8;
        pub const SET_VRING_ADDR: u32 = 9;
        pub const SET_VRING_BASE: u32 = 10;
        pub const GET_VRING_BASE: u32 = 11;
        pub const SET_VRING_KICK: u32 = 12;
        pub const SET_VRING_CALL: u32 = 13;
        pub const GET_PROTOCOL_FEATURES: u32 = 15;
        pub const SET_PROTOCOL_FEATURES: u32 = 16;
        pub const GET_QUEUE_NUM: u32 = 17;
        pub const SET_VRING_ENABLE: u32 = 18;
        pub const GET_CONFIG: u32 = 24;
        pub const SET_CONFIG: u32 = 25;
        pub const GET_INFLIGHT_FD: u32 = 31;
        pub const SET_INFLIGHT_FD: u32 = 32;
        pub const ADD_MEM_REG: u32 = 37;
        pub const REM_MEM_REG: u32 = 38;
        pub const SET_STATUS: u32 = 39;
        pub const GET_STATUS: u32 = 40;
    }

    /// A received message.
    #[derive(Debug)]
    pub struct Msg {
        /// Request code.
        pub request: u32,
        /// Flags.
        pub flags: u32,
        /// Payload.
        pub payload: Vec<u8>,
        /// Attached descriptors.
        pub fds: Vec<OwnedFd>,
    }

    impl Msg {
        /// The payload as one u64 (an acknowledgement or a u64 reply).
        pub fn u64(&self) -> Option<u64> {
            let b: [u8; 8] = self.payload.as_slice().try_into().ok()?;
            Some(u64::from_ne_bytes(b))
        }
    }

    /// What came back.
    #[derive(Debug)]
    pub enum Reply {
        /// A message.
        Msg(Msg),
        /// The back-end closed the connection.
        Closed,
    }

    impl Reply {
        /// An acknowledgement (u64 payload), if that is what came back.
        pub fn ack(&self) -> Option<u64> {
            match self {
                Reply::Msg(m) => m.u64(),
                Reply::Closed => None,
            }
        }

        /// Whether the request was refused: a non-zero acknowledgement or a closed
        /// connection.
        pub fn is_refusal(&self) -> bool {
            match self {
                Reply::Msg(m) => m.u64().is_some_and(|v| v != 0),
                Reply::Closed => true,
            }
        }
    }

    /// A message header.
    pub fn header(request: u32, flags: u32, size: u32) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[..4].copy_from_slice(&request.to_ne_bytes());
        h[4..8].copy_from_slice(&flags.to_ne_bytes());
        h[8..].copy_from_slice(&size.to_ne_bytes());
        h
    }

    /// Sends `bytes` as they are, with `fds` attached to the first byte.
    pub fn send_bytes(fd: RawFd, bytes: &[u8], fds: &[RawFd]) -> Result<()> {
        let mut sent = 0;
        while sent < bytes.len() {
            let iov = [IoSlice::new(&bytes[sent..])];
            let cm = [ControlMessage::ScmRights(fds)];
            let cmsgs: &[ControlMessage] = if sent == 0 && !fds.is_empty() {
                &cm
            } else {
                &[]
            };
            match sendmsg::<()>(fd, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(n) => sent += n,
                Err(nix::Error::EINTR) => {}
                Err(e) => return Err(e).context("sendmsg"),
            }
        }
        Ok(())
    }

    /// Sends a well-framed message.
    pub fn send(fd: RawFd, request: u32, flags: u32, payload: &[u8], fds: &[RawFd]) -> Result<()> {
        let mut b = header(request, flags, payload.len() as u32).to_vec();
        b.extend_from_slice(payload);
        send_bytes(fd, &b, fds)
    }

    fn recv_some(
        fd: RawFd,
        buf: &mut [u8],
        deadline: Instant,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(wait_readable(fd, left)?, "no reply within the timeout");
        let mut cmsg = nix::cmsg_space!([RawFd; 16]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => m,
            Err(nix::Error::ECONNRESET) => return Ok(0),
            Err(nix::Error::EINTR) | Err(nix::Error::EAGAIN) => return Ok(usize::MAX),
            Err(e) => return Err(e).context("recvmsg"),
        };
        for c in msg.cmsgs().context("cmsgs")? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for f in raw {
                    // SAFETY: the kernel just installed `f` in our table via SCM_RIGHTS;
                    // nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(f) });
                }
            }
        }
        Ok(msg.bytes)
    }

    fn recv_exact(
        fd: RawFd,
        buf: &mut [u8],
        deadline: Instant,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match recv_some(fd, &mut buf[got..], deadline, fds)? {
                0 => return Ok(false),
                usize::MAX => continue,
                n => got += n,
            }
        }
        Ok(true)
    }

    /// Receives one message, or notices that the peer closed. Fails after `timeout`.
    pub fn recv(fd: RawFd, timeout: Duration) -> Result<Reply> {
        let deadline = Instant::now() + timeout;
        let mut fds = Vec::new();
        let mut h = [0u8; 12];
        if !recv_exact(fd, &mut h, deadline, &mut fds)? {
            return Ok(Reply::Closed);
        }
        let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let (request, flags, size) = (word(0), word(4), word(8));
        ensure!(size <= 0x10000, "reply announces {size} bytes");
        let mut payload = vec![0u8; size as usize];
        if !recv_exact(fd, &mut payload, deadline, &mut fds)? {
            return Ok(Reply::Closed);
        }
        Ok(Reply::Msg(Msg {
            request,
            flags,
            payload,
            fds,
        }))
    }

    /// Sends a request with NEED_REPLY and waits for the reply (or the close).
    pub fn request(fd: RawFd, request: u32, payload: &[u8], fds: &[RawFd]) -> Result<Reply> {
        send(fd, request, VERSION | NEED_REPLY, payload, fds)?;
        let r = recv(fd, TIMEOUT)?;
        if let Reply::Msg(m) = &r {
            ensure!(
                m.request == request && m.flags & REPLY != 0,
                "reply {}/{:#x} does not answer request {request}",
                m.request,
                m.flags
            );
        }
        Ok(r)
    }

    /// SET_STATUS through the socket of a vhost crate front-end (which has no method for
    /// it). Returns the acknowledgement.
    pub fn set_status(fe: &Frontend, status: u8) -> Result<u64> {
        let r = request(
            fe.as_raw_fd(),
            req::SET_STATUS,
            &(status as u64).to_ne_bytes(),
            &[],
        )?;
        r.ack()
            .ok_or_else(|| anyhow!("SET_STATUS: no acknowledgement ({r:?})"))
    }

    /// GET_STATUS through the socket of a vhost crate front-end.
    pub fn get_status(fe: &Frontend) -> Result<u8> {
        let r = request(fe.as_raw_fd(), req::GET_STATUS, &[], &[])?;
        let v = r
            .ack()
            .ok_or_else(|| anyhow!("GET_STATUS: no u64 reply ({r:?})"))?;
        u8::try_from(v).map_err(|_| anyhow!("GET_STATUS: {v:#x}"))
    }

    /// A raw front-end connection.
    #[derive(Debug)]
    pub struct RawConn {
        sock: UnixStream,
    }

    impl RawConn {
        /// Connects to `path`.
        pub fn connect(path: &Path) -> Result<Self> {
            Ok(RawConn {
                sock: UnixStream::connect(path).context("connect")?,
            })
        }

        /// The socket.
        pub fn fd(&self) -> RawFd {
            self.sock.as_raw_fd()
        }

        /// Sends `bytes` as they are.
        pub fn send_bytes(&self, bytes: &[u8], fds: &[RawFd]) -> Result<()> {
            send_bytes(self.fd(), bytes, fds)
        }

        /// Closes the sending direction (the back-end sees EOF).
        pub fn shutdown_write(&self) -> Result<()> {
            self.sock
                .shutdown(std::net::Shutdown::Write)
                .context("shutdown")
        }

        /// Sends without asking for a reply.
        pub fn send(&self, request: u32, payload: &[u8], fds: &[RawFd]) -> Result<()> {
            send(self.fd(), request, VERSION, payload, fds)
        }

        /// Sends with NEED_REPLY and waits for the reply or the close.
        pub fn request(&self, request: u32, payload: &[u8], fds: &[RawFd]) -> Result<Reply> {
            request_on(self.fd(), request, payload, fds)
        }

        /// A request whose reply is a u64.
        pub fn get_u64(&self, request: u32) -> Result<u64> {
            send(self.fd(), request, VERSION, &[], &[])?;
            match recv(self.fd(), TIMEOUT)? {
                Reply::Msg(m) => m.u64().ok_or_else(|| anyhow!("reply to {request}: {m:?}")),
                Reply::Closed => bail!("closed on request {request}"),
            }
        }

        /// Negotiates VERSION_1 + PROTOCOL_FEATURES and every offered protocol feature the
        /// tests know (REPLY_ACK among them). Returns the protocol features.
        pub fn negotiate(&self) -> Result<u64> {
            self.send(req::SET_OWNER, &[], &[])?;
            let f = self.get_u64(req::GET_FEATURES)?;
            ensure!(f & bits::PROTOCOL_FEATURES != 0, "no PROTOCOL_FEATURES");
            let p = self.get_u64(req::GET_PROTOCOL_FEATURES)? & wanted_protocol_features().bits();
            self.send(req::SET_PROTOCOL_FEATURES, &p.to_ne_bytes(), &[])?;
            let r = self.request(
                req::SET_FEATURES,
                &(bits::VERSION_1 | bits::PROTOCOL_FEATURES).to_ne_bytes(),
                &[],
            )?;
            ensure!(r.ack() == Some(0), "SET_FEATURES refused: {r:?}");
            Ok(p)
        }

        /// Whether the back-end closed the connection (waits up to `timeout` for the close,
        /// discarding anything else that arrives).
        pub fn wait_closed(&self, timeout: Duration) -> Result<bool> {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                match recv(self.fd(), left) {
                    Ok(Reply::Closed) => return Ok(true),
                    Ok(Reply::Msg(_)) => {}
                    Err(_) => return Ok(false),
                }
            }
        }
    }

    /// [`request`] on any socket.
    pub fn request_on(fd: RawFd, code: u32, payload: &[u8], fds: &[RawFd]) -> Result<Reply> {
        request(fd, code, payload, fds)
    }

    /// SINGLE_MEMORY_REGION payload (ADD_MEM_REG / REM_MEM_REG).
    pub fn single_region(gpa: u64, size: u64, uva: u64, offset: u64) -> Vec<u8> {
        let mut v = vec![0u8; 8];
        v.extend(region(gpa, size, uva, offset));
        v
    }

    /// One memory region as on the wire.
    pub fn region(gpa: u64, size: u64, uva: u64, offset: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(32);
        for x in [gpa, size, uva, offset] {
            v.extend_from_slice(&x.to_ne_bytes());
        }
        v
    }

    /// SET_MEM_TABLE payload for `regions` (gpa, size, uva, offset).
    pub fn mem_table(regions: &[(u64, u64, u64, u64)]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(regions.len() as u32).to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        for &(g, s, u, o) in regions {
            v.extend(region(g, s, u, o));
        }
        v
    }

    /// VRING_STATE payload.
    pub fn vring_state(index: u32, num: u32) -> Vec<u8> {
        let mut v = index.to_ne_bytes().to_vec();
        v.extend_from_slice(&num.to_ne_bytes());
        v
    }

    /// VRING_ADDR payload.
    pub fn vring_addr(index: u32, flags: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
        let mut v = index.to_ne_bytes().to_vec();
        v.extend_from_slice(&flags.to_ne_bytes());
        for x in [desc, used, avail, 0u64] {
            v.extend_from_slice(&x.to_ne_bytes());
        }
        v
    }
}
