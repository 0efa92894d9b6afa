//! Arbitrary guest memory + queue size + head into `Chain::walk`, then `read_at` and
//! `write_at`: never a panic, every segment inside one guest memory region, reads return
//! exactly the chain's readable bytes, and writes change exactly the chain's writable bytes.
//!
//! Guest memory is mapped once per process and refilled for each input; the expected
//! contents are kept in a buffer reused from input to input and compared range by range.

#![no_main]

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vu_core::dirty_log::LogBitmap;
use vu_core::{Chain, GuestMem, Segment};
use vu_core_fuzz::{parse_chain, CHAIN_REGIONS};

/// Bytes of guest memory, all regions end to end.
const TOTAL: usize = CHAIN_REGIONS[0].1 + CHAIN_REGIONS[1].1;

fn memory() -> &'static Arc<GuestMem> {
    static MEM: OnceLock<Arc<GuestMem>> = OnceLock::new();
    MEM.get_or_init(|| {
        let ranges: Vec<(GuestAddress, usize)> = CHAIN_REGIONS
            .iter()
            .map(|&(a, l)| (GuestAddress(a), l))
            .collect();
        let m: GuestMemoryMmap<LogBitmap> =
            GuestMemoryMmap::from_ranges(&ranges).expect("guest memory");
        Arc::new(m)
    })
}

/// Buffers reused by every input.
struct Scratch {
    /// What guest memory should hold, regions end to end.
    expect: Vec<u8>,
    /// What it holds.
    actual: Vec<u8>,
    /// `read_at`'s destination.
    buf: Vec<u8>,
    /// `write_at`'s source: 64 KiB (the largest `len`).
    pattern: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        expect: vec![0; TOTAL],
        actual: vec![0; TOTAL],
        buf: vec![0; u16::MAX as usize + 1],
        pattern: (0..=u16::MAX as usize)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
            .collect(),
    });
}

/// Where guest address `a` lives in the end-to-end layout.
fn flat(a: u64) -> usize {
    let mut base = 0;
    for &(start, len) in &CHAIN_REGIONS {
        if a >= start && a < start + len as u64 {
            return base + (a - start) as usize;
        }
        base += len;
    }
    panic!("address {a:#x} is outside guest memory");
}

/// Fills guest memory (and `expect`) with the input's bytes: region 0 first, the rest in
/// region 1, zeros after.
fn fill(mem: &GuestMem, expect: &mut [u8], memory: &[u8]) {
    let n = memory.len().min(TOTAL);
    expect[..n].copy_from_slice(&memory[..n]);
    expect[n..].fill(0);
    let mut base = 0;
    for &(a, l) in &CHAIN_REGIONS {
        mem.write_slice(&expect[base..base + l], GuestAddress(a))
            .expect("fill");
        base += l;
    }
}

/// Copies all guest memory out, regions end to end.
fn dump(mem: &GuestMem, out: &mut [u8]) {
    let mut base = 0;
    for &(a, l) in &CHAIN_REGIONS {
        mem.read_slice(&mut out[base..base + l], GuestAddress(a))
            .expect("dump");
        base += l;
    }
}

fn check_segment(mem: &GuestMem, s: &Segment) {
    assert!(s.len > 0, "empty segment {s:?}");
    let region = mem
        .find_region(GuestAddress(s.addr))
        .unwrap_or_else(|| panic!("segment {s:?} starts outside guest memory"));
    let start = region.start_addr().0;
    let end = start + region.len();
    let s_end = s
        .addr
        .checked_add(s.len as u64)
        .expect("segment end overflows");
    assert!(
        s_end <= end,
        "segment {s:?} crosses the end of its region {start:#x}..{end:#x}"
    );
    let host = mem
        .get_host_address(GuestAddress(s.addr))
        .expect("host address") as usize;
    assert_eq!(s.host, host, "segment {s:?}: wrong host address");
}

/// The pieces of `segs` from `offset` on, at most `len` bytes: (position in the copied
/// bytes, flat position in guest memory, length). Each segment lies in one region (checked).
fn pieces(segs: &[Segment], offset: u32, len: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut skip = offset as u64;
    let mut done = 0;
    for s in segs {
        if done == len {
            break;
        }
        let slen = s.len as u64;
        if skip >= slen {
            skip -= slen;
            continue;
        }
        let n = ((slen - skip) as usize).min(len - done);
        out.push((done, flat(s.addr + skip), n));
        done += n;
        skip = 0;
    }
    out
}

fn run(s: &mut Scratch, data: &[u8]) {
    let input = parse_chain(data);
    let mem = memory();
    fill(mem, &mut s.expect, &input.memory);

    let mut chain = Chain::default();
    let res = chain.walk(
        mem,
        GuestAddress(input.table as u64),
        input.queue_size,
        input.head,
        input.indirect_ok,
    );
    if res.is_err() {
        assert!(chain.segments().is_empty());
        assert_eq!((chain.readable_len(), chain.writable_len()), (0, 0));
    }
    assert_eq!(chain.head(), input.head);

    let segs = chain.segments();
    for seg in segs {
        check_segment(mem, seg);
    }
    let r = chain.readable();
    let w = chain.writable();
    assert_eq!(r.len() + w.len(), segs.len());
    assert!(r.iter().all(|s| !s.writable) && w.iter().all(|s| s.writable));
    assert_eq!(
        r.iter().map(|s| s.len as u64).sum::<u64>(),
        chain.readable_len() as u64
    );
    assert_eq!(
        w.iter().map(|s| s.len as u64).sum::<u64>(),
        chain.writable_len() as u64
    );

    let len = input.len as usize;
    // read_at returns exactly the readable bytes from `offset`.
    let buf = &mut s.buf[..len];
    let n = chain.read_at(input.offset, buf);
    let want = pieces(r, input.offset, len);
    assert_eq!(n, want.iter().map(|p| p.2).sum::<usize>(), "read_at length");
    for &(at, g, k) in &want {
        assert!(
            buf[at..at + k] == s.expect[g..g + k],
            "read_at bytes at {at}"
        );
    }

    // write_at changes exactly the writable bytes from `offset`, in order.
    let pattern = &s.pattern[..len];
    let n = chain.write_at(input.offset, pattern);
    let want = pieces(w, input.offset, len);
    assert_eq!(
        n,
        want.iter().map(|p| p.2).sum::<usize>(),
        "write_at length"
    );
    for &(at, g, k) in &want {
        s.expect[g..g + k].copy_from_slice(&pattern[at..at + k]);
    }
    dump(mem, &mut s.actual);
    assert!(
        s.actual == s.expect,
        "write_at touched bytes outside the chain's writable part"
    );
}

fuzz_target!(|data: &[u8]| {
    SCRATCH.with(|s| run(&mut s.borrow_mut(), data));
});
