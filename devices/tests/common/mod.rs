//! A tiny front-end and split-ring driver for device tests: guest memory in a memfd, the
//! core's real `Handler` fed vhost-user messages, rings written and read from the driver side.
#![allow(dead_code)]

pub mod vsock;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::memfd::{memfd_create, MFdFlags};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vu_core::connection::Message;
use vu_core::handler::{Handler, HandlerError, Reply};
use vu_core::message::*;
use vu_core::VhostUserDevice;
use zerocopy::IntoBytes;

pub mod net;
pub mod netns;

/// Guest memory size.
pub const MEM_SIZE: usize = 64 << 20;
/// Size of the guest memory (addresses at or beyond it are outside guest memory).
pub const GUEST_MEM_SIZE: u64 = MEM_SIZE as u64;
/// Where the front-end pretends to have guest memory mapped.
const UADDR: u64 = 0x7f00_0000_0000;
/// Per queue: rings in a 1 MiB slice, buffers in a 12 MiB slice from 8 MiB (four queues).
const RING_SLICE: u64 = 1 << 20;
const BUF_BASE: u64 = 8 << 20;
const BUF_SLICE: u64 = 12 << 20;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// One buffer of a chain.
#[derive(Debug, Clone)]
pub enum Buf {
    /// Device-readable, with these contents.
    Out(Vec<u8>),
    /// Device-writable, this long.
    In(u32),
    /// Device-readable, placed this many bytes past a page boundary.
    OutAt(Vec<u8>, u64),
    /// Device-writable, placed this many bytes past a page boundary.
    InAt(u32, u64),
    /// A descriptor with this address and length as they are (nothing is allocated or
    /// written): for buffers outside guest memory or absurd lengths.
    Raw {
        /// Guest physical address.
        addr: u64,
        /// Length.
        len: u32,
        /// Device-writable.
        write: bool,
    },
}

/// A chain placed in a ring.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// Head descriptor index.
    pub head: u16,
    /// Guest address and length of each writable buffer.
    pub writable: Vec<(u64, u32)>,
}

/// A finished block request.
#[derive(Debug)]
pub struct Done {
    /// The status byte.
    pub status: u8,
    /// The used length the device reported.
    pub used: u32,
    /// Every writable byte before the status byte.
    pub data: Vec<u8>,
}

struct Ring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    used_seen: u16,
    next_desc: u16,
    buf_next: u64,
    outstanding: usize,
    kick: EventFd,
    call: EventFd,
}

/// The front-end side of one device.
pub struct Frontend {
    /// The core's protocol handler, owning the device's queue workers.
    pub handler: Handler,
    mem: GuestMemoryMmap,
    rings: Vec<Ring>,
}

fn message(request: Request, payload: &[u8], fds: Vec<OwnedFd>) -> Message {
    Message {
        header: Header {
            request: request as u32,
            flags: VERSION,
            size: payload.len() as u32,
        },
        payload: payload.to_vec(),
        fds,
    }
}

fn dup(fd: &EventFd) -> OwnedFd {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let clone = fd.try_clone().expect("dup eventfd");
    // SAFETY: into_raw_fd releases the clone's descriptor, so the OwnedFd is its only owner.
    unsafe { OwnedFd::from_raw_fd(clone.into_raw_fd()) }
}

impl Frontend {
    /// Negotiates features, shares memory and starts `queues` rings of `size` entries.
    pub fn new(device: Arc<dyn VhostUserDevice>, queues: usize, size: u16) -> Self {
        Self::with_features(device, queues, size, |offered| {
            offered & !(features::RING_EVENT_IDX | features::LOG_ALL)
        })
    }

    /// As `new`, acking `pick(offered)` as the virtio features.
    pub fn with_features(
        device: Arc<dyn VhostUserDevice>,
        queues: usize,
        size: u16,
        pick: impl FnOnce(u64) -> u64,
    ) -> Self {
        let fd = memfd_create("guest", MFdFlags::MFD_CLOEXEC).expect("memfd");
        let file = File::from(fd);
        file.set_len(MEM_SIZE as u64).expect("size memfd");
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            MEM_SIZE,
            Some(FileOffset::new(file.try_clone().expect("dup memfd"), 0)),
        )])
        .expect("map guest memory");
        let mut fe = Frontend {
            handler: Handler::new(device),
            mem,
            rings: Vec::new(),
        };
        fe.send(Request::SetOwner, &[], vec![]).expect("SET_OWNER");
        let offered = fe.get_u64(Request::GetFeatures);
        let wanted = pick(offered);
        fe.send(
            Request::SetFeatures,
            U64 { value: wanted }.as_bytes(),
            vec![],
        )
        .expect("SET_FEATURES");
        let proto = fe.get_u64(Request::GetProtocolFeatures);
        let want = proto & (protocol::CONFIG | protocol::MQ);
        fe.send(
            Request::SetProtocolFeatures,
            U64 { value: want }.as_bytes(),
            vec![],
        )
        .expect("SET_PROTOCOL_FEATURES");
        let mut table = MemoryTableHeader {
            num_regions: 1,
            padding: 0,
        }
        .as_bytes()
        .to_vec();
        table.extend_from_slice(
            MemoryRegion {
                guest_phys_addr: 0,
                memory_size: MEM_SIZE as u64,
                user_addr: UADDR,
                mmap_offset: 0,
            }
            .as_bytes(),
        );
        fe.send(Request::SetMemTable, &table, vec![OwnedFd::from(file)])
            .expect("SET_MEM_TABLE");
        for i in 0..queues {
            fe.start_ring(i, size);
        }
        fe
    }

    /// Sends one message; the handler's answer.
    pub fn send(
        &mut self,
        request: Request,
        payload: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<Option<Reply>, HandlerError> {
        self.handler.handle(message(request, payload, fds))
    }

    fn get_u64(&mut self, request: Request) -> u64 {
        let r = self
            .send(request, &[], vec![])
            .expect("request")
            .expect("reply");
        u64::from_ne_bytes(r.body[..8].try_into().expect("u64 reply"))
    }

    fn start_ring(&mut self, i: usize, size: u16) {
        let base = RING_SLICE * i as u64;
        let desc = base;
        let avail = base + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4096);
        let idx = i as u32;
        let state = |num| VringState { index: idx, num };
        self.send(
            Request::SetVringNum,
            state(u32::from(size)).as_bytes(),
            vec![],
        )
        .expect("SET_VRING_NUM");
        let addr = VringAddr {
            index: idx,
            flags: 0,
            descriptor: UADDR + desc,
            used: UADDR + used,
            available: UADDR + avail,
            log: 0,
        };
        self.send(Request::SetVringAddr, addr.as_bytes(), vec![])
            .expect("SET_VRING_ADDR");
        self.send(Request::SetVringBase, state(0).as_bytes(), vec![])
            .expect("SET_VRING_BASE");
        let kick = EventFd::new(0).expect("kick");
        let call = EventFd::new(libc::EFD_NONBLOCK).expect("call");
        let which = U64 { value: i as u64 };
        self.send(Request::SetVringCall, which.as_bytes(), vec![dup(&call)])
            .expect("SET_VRING_CALL");
        self.send(Request::SetVringKick, which.as_bytes(), vec![dup(&kick)])
            .expect("SET_VRING_KICK");
        self.send(Request::SetVringEnable, state(1).as_bytes(), vec![])
            .expect("SET_VRING_ENABLE");
        let r = Ring {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            used_seen: 0,
            next_desc: 0,
            buf_next: BUF_BASE + BUF_SLICE * i as u64,
            outstanding: 0,
            kick,
            call,
        };
        if self.rings.len() <= i {
            self.rings.push(r);
        } else {
            self.rings[i] = r;
        }
    }

    /// Stops ring `q` (GET_VRING_BASE); returns the next available index the device reports.
    pub fn stop_ring(&mut self, q: usize) -> u32 {
        let st = VringState {
            index: q as u32,
            num: 0,
        };
        let r = self
            .send(Request::GetVringBase, st.as_bytes(), vec![])
            .expect("GET_VRING_BASE")
            .expect("reply");
        u32::from_ne_bytes(r.body[4..8].try_into().expect("num"))
    }

    /// Starts ring `q` again after [`Frontend::stop_ring`], as a driver reset does: its
    /// memory cleared, its indices back at 0.
    pub fn restart_ring(&mut self, q: usize, size: u16) {
        self.write(RING_SLICE * q as u64, &vec![0; RING_SLICE as usize]);
        self.start_ring(q, size);
    }

    /// Buffers of a page or more start on a page (plus `misalign`), of a sector or more on
    /// a sector, smaller ones on 16 bytes. The slice is reused from its start when it runs
    /// out, which must not happen while requests are outstanding.
    fn alloc(&mut self, q: usize, len: u32, misalign: u64) -> u64 {
        let r = &mut self.rings[q];
        let start = BUF_BASE + BUF_SLICE * q as u64;
        let align = match len {
            _ if misalign > 0 => 4096,
            4096.. => 4096,
            512.. => 512,
            _ => 16,
        };
        let mut a = r.buf_next.next_multiple_of(align) + misalign;
        if a + u64::from(len) > start + BUF_SLICE {
            assert_eq!(r.outstanding, 0, "queue {q}: test buffer space exhausted");
            a = start + misalign;
        }
        r.buf_next = a + u64::from(len.max(1));
        a
    }

    /// Writes `bufs` as one chain and makes it available (no kick).
    pub fn submit(&mut self, q: usize, bufs: &[Buf]) -> Submitted {
        self.place(q, bufs, true)
    }

    /// Writes the chain `bufs` into ring `q`; `publish`: also makes it available.
    fn place(&mut self, q: usize, bufs: &[Buf], publish: bool) -> Submitted {
        let mut writable = Vec::new();
        let mut descs = Vec::new();
        for b in bufs {
            match b {
                Buf::Out(d) | Buf::OutAt(d, _) => {
                    let mis = if let Buf::OutAt(_, m) = b { *m } else { 0 };
                    let a = self.alloc(q, d.len() as u32, mis);
                    self.mem.write_slice(d, GuestAddress(a)).expect("out data");
                    descs.push((a, d.len() as u32, 0));
                }
                Buf::In(n) | Buf::InAt(n, _) => {
                    let mis = if let Buf::InAt(_, m) = b { *m } else { 0 };
                    let a = self.alloc(q, *n, mis);
                    self.mem
                        .write_slice(&vec![0xee; *n as usize], GuestAddress(a))
                        .expect("poison");
                    descs.push((a, *n, F_WRITE));
                    writable.push((a, *n));
                }
                Buf::Raw { addr, len, write } => {
                    descs.push((*addr, *len, if *write { F_WRITE } else { 0 }));
                }
            }
        }
        let r = &mut self.rings[q];
        let head = r.next_desc;
        let n = descs.len();
        for (i, (addr, len, flags)) in descs.into_iter().enumerate() {
            let idx = (head + i as u16) % r.size;
            let next = (idx + 1) % r.size;
            let flags = flags | if i + 1 < n { F_NEXT } else { 0 };
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&next.to_le_bytes());
            self.mem
                .write_slice(&d, GuestAddress(r.desc + 16 * u64::from(idx)))
                .expect("descriptor");
        }
        r.next_desc = (head + n as u16) % r.size;
        let slot = r.avail + 4 + 2 * u64::from(r.avail_idx % r.size);
        self.mem
            .write_obj(head, GuestAddress(slot))
            .expect("avail ring");
        r.avail_idx = r.avail_idx.wrapping_add(1);
        r.outstanding += 1;
        if publish {
            self.publish(q);
        }
        Submitted { head, writable }
    }

    /// Writes a chain of raw descriptors (guest address, length, device-writable), any
    /// address at all, and makes it available (no kick). Returns its head.
    pub fn submit_descs(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let bufs: Vec<Buf> = descs
            .iter()
            .map(|&(addr, len, write)| Buf::Raw { addr, len, write })
            .collect();
        self.place(q, &bufs, true).head
    }

    /// Makes everything placed in ring `q` so far available to the device.
    fn publish(&self, q: usize) {
        let r = &self.rings[q];
        self.mem
            .store(r.avail_idx, GuestAddress(r.avail + 2), Ordering::Release)
            .expect("avail idx");
    }

    /// Places every chain of `chains` in ring `q`, then makes them available with one
    /// index update: the device sees the whole batch at once (not as it is written).
    pub fn submit_batch(&mut self, q: usize, chains: &[Vec<Buf>]) -> Vec<Submitted> {
        let subs = chains
            .iter()
            .map(|bufs| self.place(q, bufs, false))
            .collect();
        self.publish(q);
        subs
    }

    /// Used entries of ring `q` published so far, without waiting for any (or None).
    pub fn poll_used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let n = self.pending_used(q);
        if n == 0 {
            return Vec::new();
        }
        self.wait(q, usize::from(n))
    }

    /// Kicks ring `q`.
    pub fn kick(&self, q: usize) {
        self.rings[q].kick.write(1).expect("kick");
    }

    /// Waits until `n` more used entries appear on ring `q`; returns (id, len) of each.
    pub fn wait(&mut self, q: usize, n: usize) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let r = &mut self.rings[q];
        let mut out = Vec::new();
        while out.len() < n {
            let idx: u16 = self
                .mem
                .load(GuestAddress(r.used + 2), Ordering::Acquire)
                .expect("used idx");
            while r.used_seen != idx && out.len() < n {
                let e = r.used + 4 + 8 * u64::from(r.used_seen % r.size);
                let id: u32 = self.mem.read_obj(GuestAddress(e)).expect("used id");
                let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).expect("used len");
                out.push((id, len));
                r.used_seen = r.used_seen.wrapping_add(1);
                r.outstanding = r.outstanding.saturating_sub(1);
            }
            if out.len() < n {
                assert!(
                    Instant::now() < deadline,
                    "queue {q}: {} of {n} completions after 10 s",
                    out.len()
                );
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let _ = r.call.read();
        out
    }

    /// Like `wait`, but gives up after `timeout` and returns what arrived (for devices that
    /// may hold requests, such as a rate-limited rng).
    pub fn try_wait(&mut self, q: usize, n: usize, timeout: Duration) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + timeout;
        let r = &mut self.rings[q];
        let mut out = Vec::new();
        loop {
            let idx: u16 = self
                .mem
                .load(GuestAddress(r.used + 2), Ordering::Acquire)
                .expect("used idx");
            while r.used_seen != idx && out.len() < n {
                let e = r.used + 4 + 8 * u64::from(r.used_seen % r.size);
                let id: u32 = self.mem.read_obj(GuestAddress(e)).expect("used id");
                let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).expect("used len");
                out.push((id, len));
                r.used_seen = r.used_seen.wrapping_add(1);
                r.outstanding = r.outstanding.saturating_sub(1);
            }
            if out.len() >= n || Instant::now() >= deadline {
                let _ = r.call.read();
                return out;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Writes guest memory bytes.
    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .expect("write");
    }

    /// Used entries the device has published that `wait` has not consumed.
    pub fn pending_used(&self, q: usize) -> u16 {
        let r = &self.rings[q];
        let idx: u16 = self
            .mem
            .load(GuestAddress(r.used + 2), Ordering::Acquire)
            .expect("used idx");
        idx.wrapping_sub(r.used_seen)
    }

    /// Queue `q`'s slice of guest memory for buffers (start, length), for drivers that
    /// place buffers themselves (`submit_fixed`).
    pub fn buffer_area(&self, q: usize) -> (u64, u64) {
        (BUF_BASE + BUF_SLICE * q as u64, BUF_SLICE)
    }

    /// The head index the next chain placed in ring `q` gets.
    pub fn next_head(&self, q: usize) -> u16 {
        self.rings[q].next_desc
    }

    /// Makes a chain of buffers at addresses the caller chose available (no kick): each
    /// is (guest address, length, device-writable). Their contents are the caller's.
    pub fn submit_fixed(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> Submitted {
        let r = &mut self.rings[q];
        let head = r.next_desc;
        let n = bufs.len();
        let mut writable = Vec::new();
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % r.size;
            let next = (idx + 1) % r.size;
            let flags = if w { F_WRITE } else { 0 } | if i + 1 < n { F_NEXT } else { 0 };
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&next.to_le_bytes());
            self.mem
                .write_slice(&d, GuestAddress(r.desc + 16 * u64::from(idx)))
                .expect("descriptor");
            if w {
                writable.push((addr, len));
            }
        }
        r.next_desc = (head + n as u16) % r.size;
        let slot = r.avail + 4 + 2 * u64::from(r.avail_idx % r.size);
        self.mem
            .write_obj(head, GuestAddress(slot))
            .expect("avail ring");
        r.avail_idx = r.avail_idx.wrapping_add(1);
        r.outstanding += 1;
        self.publish(q);
        Submitted { head, writable }
    }

    /// Used entries published on ring `q` since the last look, without waiting.
    pub fn used_now(&mut self, q: usize) -> Vec<(u32, u32)> {
        let r = &mut self.rings[q];
        let idx: u16 = self
            .mem
            .load(GuestAddress(r.used + 2), Ordering::Acquire)
            .expect("used idx");
        let mut out = Vec::new();
        while r.used_seen != idx {
            let e = r.used + 4 + 8 * u64::from(r.used_seen % r.size);
            let id: u32 = self.mem.read_obj(GuestAddress(e)).expect("used id");
            let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).expect("used len");
            out.push((id, len));
            r.used_seen = r.used_seen.wrapping_add(1);
            r.outstanding = r.outstanding.saturating_sub(1);
        }
        let _ = r.call.read();
        out
    }

    /// Guest memory bytes.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("read");
        v
    }

    /// The first `used` bytes of a finished chain's writable buffers (rng: the entropy).
    pub fn written(&self, s: &Submitted, used: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut left = used as usize;
        for (a, n) in &s.writable {
            let k = left.min(*n as usize);
            bytes.extend(self.read(*a, k));
            left -= k;
        }
        bytes
    }

    /// Splits a finished chain's writable bytes into data and status.
    pub fn collect(&self, s: &Submitted, used: u32) -> Done {
        let mut bytes = Vec::new();
        for (a, n) in &s.writable {
            bytes.extend(self.read(*a, *n as usize));
        }
        let status = bytes.pop().unwrap_or(0xff);
        Done {
            status,
            used,
            data: bytes,
        }
    }

    /// Submits a chain, kicks and waits for it.
    pub fn run(&mut self, q: usize, bufs: &[Buf]) -> Done {
        let s = self.submit(q, bufs);
        self.kick(q);
        let got = self.wait(q, 1);
        assert_eq!(got[0].0, u32::from(s.head), "completed another request");
        self.collect(&s, got[0].1)
    }

    /// A block request: header, data out, data in (if any), status byte.
    pub fn block(&mut self, q: usize, ty: u32, sector: u64, out: &[u8], in_len: u32) -> Done {
        self.run(q, &block_chain(ty, sector, out, in_len))
    }

    /// GET_CONFIG.
    pub fn get_config(&mut self, offset: u32, size: u32) -> Vec<u8> {
        let mut p = ConfigHeader {
            offset,
            size,
            flags: 0,
        }
        .as_bytes()
        .to_vec();
        p.resize(12 + size as usize, 0);
        let r = self
            .send(Request::GetConfig, &p, vec![])
            .expect("GET_CONFIG")
            .expect("reply");
        r.body[12..].to_vec()
    }

    /// SET_CONFIG.
    pub fn set_config(&mut self, offset: u32, data: &[u8]) -> Result<(), HandlerError> {
        let mut p = ConfigHeader {
            offset,
            size: data.len() as u32,
            flags: 0,
        }
        .as_bytes()
        .to_vec();
        p.extend_from_slice(data);
        self.send(Request::SetConfig, &p, vec![]).map(|_| ())
    }
}

/// A request header.
pub fn header(ty: u32, sector: u64) -> Vec<u8> {
    let mut h = vec![0u8; 16];
    h[..4].copy_from_slice(&ty.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

/// The usual block chain: header, data out, data in, status.
pub fn block_chain(ty: u32, sector: u64, out: &[u8], in_len: u32) -> Vec<Buf> {
    let mut bufs = vec![Buf::Out(header(ty, sector))];
    if !out.is_empty() {
        bufs.push(Buf::Out(out.to_vec()));
    }
    if in_len > 0 {
        bufs.push(Buf::In(in_len));
    }
    bufs.push(Buf::In(1));
    bufs
}

/// A discard / write-zeroes segment.
pub fn seg(sector: u64, num: u32, flags: u32) -> Vec<u8> {
    let mut s = sector.to_le_bytes().to_vec();
    s.extend_from_slice(&num.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

/// Recognisable bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Context switches (voluntary and not) and CPU time in clock ticks, summed over the threads
/// of this process named `name` (a queue worker is `<device>-q<N>`): a worker that sleeps
/// in epoll switches once per wake-up; one that spins burns CPU.
pub fn thread_activity(name: &str) -> (u64, u64) {
    let (mut switches, mut ticks) = (0u64, 0u64);
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    for e in dir.flatten() {
        let p = e.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
        for l in status.lines() {
            if l.starts_with("voluntary_ctxt_switches")
                || l.starts_with("nonvoluntary_ctxt_switches")
            {
                switches += l
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        ticks += stat_ticks(&std::fs::read_to_string(p.join("stat")).unwrap_or_default());
    }
    (switches, ticks)
}

/// CPU time in clock ticks (user + system) from the text of a thread's `stat` file; 0 for
/// fields that do not parse.
pub fn stat_ticks(stat: &str) -> u64 {
    // The name is in parentheses and may hold any, so the fields start after the last ')'.
    // utime and stime: fields 14 and 15 of stat, 11 and 12 after the name.
    let rest = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    [11, 12]
        .iter()
        .map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
        .sum()
}
