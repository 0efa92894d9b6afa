//! Unit tests: requests run against chains walked over real guest memory, and the device's
//! construction, config space and snapshot. The queue-level tests (both engines, through the
//! core's handler and worker) are in `devices/tests/block_*.rs`.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vu_core::dirty_log::LogBitmap;
use vu_core::{Chain, GuestMem};

use super::disk::{Disk, DiskParams, Geometry};
use super::iovec::IoVecs;
use super::request::{classify, execute_sync};

mod device;
mod requests;
mod uring_restrictions;

const MEM_SIZE: u64 = 4 << 20;
const TABLE: u64 = 0;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// One buffer of a chain.
#[derive(Debug, Clone)]
pub(super) enum Buf {
    /// Device-readable, with these contents.
    Out(Vec<u8>),
    /// Device-writable, this long.
    In(u32),
    /// Device-readable at a given misalignment (for O_DIRECT bounce tests).
    OutAt(Vec<u8>, u64),
    /// Device-writable at a given misalignment.
    InAt(u32, u64),
}

/// Guest memory with a descriptor table at 0 and a bump allocator for buffers.
pub(super) struct Guest {
    pub mem: Arc<GuestMem>,
    next: u64,
}

impl Guest {
    pub(super) fn new() -> Self {
        let m: GuestMemoryMmap<LogBitmap> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("mem");
        Guest {
            mem: Arc::new(m),
            next: 0x10000,
        }
    }

    fn alloc(&mut self, len: u32, misalign: u64) -> u64 {
        let addr = self.next.next_multiple_of(4096) + misalign;
        self.next = addr + u64::from(len.max(1));
        assert!(self.next < MEM_SIZE, "test guest memory exhausted");
        addr
    }

    /// Lays `bufs` out in memory and walks them as one chain. Returns the chain and the
    /// guest address of each buffer.
    pub(super) fn chain(&mut self, bufs: &[Buf]) -> (Chain, Vec<u64>) {
        self.next = 0x10000;
        let mut addrs = Vec::new();
        for (i, b) in bufs.iter().enumerate() {
            let (len, flags, addr) = match b {
                Buf::Out(d) | Buf::OutAt(d, _) => {
                    let mis = if let Buf::OutAt(_, m) = b { *m } else { 0 };
                    let a = self.alloc(d.len() as u32, mis);
                    self.mem.write_slice(d, GuestAddress(a)).expect("write");
                    (d.len() as u32, 0, a)
                }
                Buf::In(n) | Buf::InAt(n, _) => {
                    let mis = if let Buf::InAt(_, m) = b { *m } else { 0 };
                    let a = self.alloc(*n, mis);
                    self.mem
                        .write_slice(&vec![0xee; *n as usize], GuestAddress(a))
                        .expect("fill");
                    (*n, F_WRITE, a)
                }
            };
            let last = i + 1 == bufs.len();
            let flags = flags | if last { 0 } else { F_NEXT };
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&(i as u16 + 1).to_le_bytes());
            self.mem
                .write_slice(&d, GuestAddress(TABLE + 16 * i as u64))
                .expect("desc");
            addrs.push(addr);
        }
        let mut c = Chain::default();
        c.walk(&self.mem, GuestAddress(TABLE), 256, 0, false)
            .expect("walk");
        (c, addrs)
    }

    pub(super) fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("read");
        v
    }
}

/// A request header.
pub(super) fn header(ty: u32, sector: u64) -> Vec<u8> {
    let mut h = vec![0u8; 16];
    h[..4].copy_from_slice(&ty.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

/// A disk on a fresh temporary file of `size` bytes; `tweak` adjusts the parameters.
pub(super) fn disk(size: u64, tweak: impl FnOnce(&mut DiskParams)) -> Disk {
    let f = tempfile::tempfile().expect("tempfile");
    f.set_len(size).expect("set_len");
    let geometry = Geometry::probe(&f).expect("probe");
    let mut p = DiskParams {
        file: f,
        geometry,
        read_only: false,
        direct: false,
        logical_block_size: 512,
        serial: *b"test-serial\0\0\0\0\0\0\0\0\0",
        writeback: true,
    };
    tweak(&mut p);
    Disk::new(p)
}

/// What a request came back with.
#[derive(Debug)]
pub(super) struct Done {
    pub status: u8,
    pub used: u32,
    pub data: Vec<u8>,
}

/// Runs a request made of header, optional data out, optional data in and a status byte.
pub(super) fn run(
    disk: &Disk,
    g: &mut Guest,
    ty: u32,
    sector: u64,
    out: &[u8],
    in_len: u32,
) -> Done {
    let mut bufs = vec![Buf::Out(header(ty, sector))];
    if !out.is_empty() {
        bufs.push(Buf::Out(out.to_vec()));
    }
    if in_len > 0 {
        bufs.push(Buf::In(in_len));
    }
    bufs.push(Buf::In(1));
    run_bufs(disk, g, &bufs)
}

/// Runs a request laid out as `bufs`; the status is the last byte of the last buffer and the
/// data read is every writable buffer but the last.
pub(super) fn run_bufs(disk: &Disk, g: &mut Guest, bufs: &[Buf]) -> Done {
    let (chain, addrs) = g.chain(bufs);
    let action = classify(disk, &chain);
    let used = execute_sync(disk, &chain, action, &mut IoVecs::default());
    let mut data = Vec::new();
    let mut status = 0xff;
    let writable: Vec<_> = bufs
        .iter()
        .zip(&addrs)
        .filter_map(|(b, a)| match b {
            Buf::In(n) | Buf::InAt(n, _) => Some((*a, *n)),
            _ => None,
        })
        .collect();
    for (i, (a, n)) in writable.iter().enumerate() {
        let bytes = g.read(*a, *n as usize);
        if i + 1 == writable.len() {
            status = bytes[bytes.len() - 1];
        } else {
            data.extend_from_slice(&bytes);
        }
    }
    Done { status, used, data }
}

/// Reads the backing file.
pub(super) fn file_bytes(disk: &Disk, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    disk.file.read_exact_at(&mut v, offset).expect("read file");
    v
}

/// Writes the backing file.
pub(super) fn put_file(disk: &Disk, offset: u64, data: &[u8]) {
    disk.file.write_all_at(data, offset).expect("write file");
}
