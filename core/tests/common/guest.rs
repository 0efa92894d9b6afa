//! Guest memory (one memfd region) and a driver-side split ring written straight into it.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;

use nix::sys::eventfd::EventFd;

use super::{
    eventfd, mem_table, memfd, req, u64_payload, vring_addr, vring_state, wait_readable, Harness,
    Region, TIMEOUT,
};

/// Guest memory: one memfd region at guest address 0, mapped by the "front-end" at `UVA`.
pub const UVA: u64 = 0x7f00_0000_0000;
pub const MEM_SIZE: u64 = 0x10000;

/// Ring layout inside guest memory, each on its own 4 KiB page.
pub const DESC_GPA: u64 = 0x1000;
pub const AVAIL_GPA: u64 = 0x2000;
pub const USED_GPA: u64 = 0x3000;
pub const READ_BUF_GPA: u64 = 0x5000;
pub const WRITE_BUF_GPA: u64 = 0x8000;
pub const RING_SIZE: u16 = 8;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;

/// The driver's view of guest memory, written with pwrite into the shared memfd.
#[derive(Debug)]
pub struct GuestMemory {
    pub file: File,
}

impl GuestMemory {
    pub fn new() -> Self {
        GuestMemory {
            file: memfd(MEM_SIZE),
        }
    }

    pub fn region() -> Region {
        Region {
            gpa: 0,
            size: MEM_SIZE,
            uva: UVA,
            offset: 0,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub fn write(&self, gpa: u64, data: &[u8]) {
        self.file
            .write_all_at(data, gpa)
            .expect("write guest memory");
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.file
            .read_exact_at(&mut b, gpa)
            .expect("read guest memory");
        b
    }

    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        self.write(DESC_GPA + 16 * i as u64, &d);
    }

    /// Puts `head` in avail slot `slot` and publishes avail idx `idx`.
    pub fn offer(&self, slot: u16, head: u16, idx: u16) {
        self.write(
            AVAIL_GPA + 4 + 2 * (slot % RING_SIZE) as u64,
            &head.to_le_bytes(),
        );
        self.write(AVAIL_GPA + 2, &idx.to_le_bytes());
    }

    pub fn used_idx(&self) -> u16 {
        u16::from_le_bytes(self.read(USED_GPA + 2, 2).try_into().expect("2 bytes"))
    }

    /// (id, len) of used element `slot`.
    pub fn used_elem(&self, slot: u16) -> (u32, u32) {
        let b = self.read(USED_GPA + 4 + 8 * (slot % RING_SIZE) as u64, 8);
        (
            u32::from_le_bytes(b[..4].try_into().expect("4 bytes")),
            u32::from_le_bytes(b[4..].try_into().expect("4 bytes")),
        )
    }
}

impl Default for GuestMemory {
    fn default() -> Self {
        Self::new()
    }
}

/// A started ring on queue `q` of the harness: mem table, num, base, addr, call, kick,
/// enable.
#[derive(Debug)]
pub struct Ring {
    pub mem: GuestMemory,
    pub kick: EventFd,
    pub call: EventFd,
    pub err: EventFd,
}

impl Ring {
    /// Sets up queue `q` over fresh guest memory and enables it. Expects REPLY_ACK and
    /// PROTOCOL_FEATURES negotiated.
    pub fn start(h: &Harness, q: u32, addr_flags: u32, log_addr: u64) -> Ring {
        let ring = Ring::setup(h, q, addr_flags, log_addr);
        h.fe.ok(req::SET_VRING_ENABLE, &vring_state(q, 1), &[]);
        ring
    }

    /// Sets up and starts (SET_VRING_KICK) queue `q` over fresh guest memory, without
    /// SET_VRING_ENABLE. Expects REPLY_ACK negotiated.
    pub fn setup(h: &Harness, q: u32, addr_flags: u32, log_addr: u64) -> Ring {
        Ring::setup_with(h, q, addr_flags, log_addr, GuestMemory::new())
    }

    /// `setup` over guest memory the test prepared (e.g. with requests already offered).
    pub fn setup_with(
        h: &Harness,
        q: u32,
        addr_flags: u32,
        log_addr: u64,
        mem: GuestMemory,
    ) -> Ring {
        h.fe.ok(
            req::SET_MEM_TABLE,
            &mem_table(&[GuestMemory::region()], false),
            &[mem.fd()],
        );
        let ring = Ring {
            mem,
            kick: eventfd(),
            call: eventfd(),
            err: eventfd(),
        };
        h.fe.ok(req::SET_VRING_NUM, &vring_state(q, RING_SIZE as u32), &[]);
        h.fe.ok(req::SET_VRING_BASE, &vring_state(q, 0), &[]);
        h.fe.ok(
            req::SET_VRING_ADDR,
            &vring_addr(
                q,
                addr_flags,
                UVA + DESC_GPA,
                UVA + USED_GPA,
                UVA + AVAIL_GPA,
                log_addr,
            ),
            &[],
        );
        h.fe.ok(
            req::SET_VRING_CALL,
            &u64_payload(q as u64),
            &[ring.call.as_fd()],
        );
        h.fe.ok(
            req::SET_VRING_ERR,
            &u64_payload(q as u64),
            &[ring.err.as_fd()],
        );
        h.fe.ok(
            req::SET_VRING_KICK,
            &u64_payload(q as u64),
            &[ring.kick.as_fd()],
        );
        ring
    }

    /// The usual request: 16 readable bytes at READ_BUF_GPA, 512 writable at WRITE_BUF_GPA,
    /// descriptors 0 -> 1, offered in avail slot `n` as avail idx `n + 1`.
    pub fn offer_request(&self, n: u16) {
        self.mem.set_desc(0, READ_BUF_GPA, 16, DESC_F_NEXT, 1);
        self.mem.set_desc(1, WRITE_BUF_GPA, 512, DESC_F_WRITE, 0);
        self.mem.offer(n, 0, n + 1);
    }

    /// Kicks and waits until the back-end signals the call eventfd.
    pub fn kick_and_wait(&self) {
        self.kick.write(1).expect("kick");
        assert!(
            wait_readable(self.call.as_fd(), TIMEOUT),
            "no used-buffer notification within {TIMEOUT:?}"
        );
        let _ = self.call.read();
    }
}

/// Reads byte `page / 8` of a dirty log and tells whether `page`'s bit is set.
pub fn log_bit(log: &File, page: u64) -> bool {
    let mut b = [0u8; 1];
    log.read_exact_at(&mut b, page / 8).expect("read log");
    b[0] & (1 << (page % 8)) != 0
}
