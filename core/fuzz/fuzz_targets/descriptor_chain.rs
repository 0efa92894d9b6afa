//! Arbitrary guest memory + queue size + head into `Chain::walk`, then `read_at` and
//! `write_at`: never a panic, every segment inside one guest memory region, reads return
//! exactly the chain's readable bytes, and writes change exactly the chain's writable bytes.

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vu_core::dirty_log::LogBitmap;
use vu_core::{Chain, GuestMem, Segment};
use vu_core_fuzz::{parse_chain, CHAIN_REGIONS};

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

/// Copies out all guest memory, region by region.
fn dump(mem: &GuestMem) -> Vec<Vec<u8>> {
    CHAIN_REGIONS
        .iter()
        .map(|&(a, l)| {
            let mut v = vec![0u8; l];
            mem.read_slice(&mut v, GuestAddress(a)).expect("dump");
            v
        })
        .collect()
}

/// Where guest address `a` lives in a dump.
fn locate(a: u64) -> (usize, usize) {
    for (i, &(start, len)) in CHAIN_REGIONS.iter().enumerate() {
        if a >= start && a < start + len as u64 {
            return (i, (a - start) as usize);
        }
    }
    panic!("address {a:#x} is outside guest memory");
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

/// The bytes of `segs` from `offset` on, at most `len` of them, as (region, offset) pairs.
fn positions(segs: &[Segment], offset: u32, len: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut skip = offset as u64;
    for s in segs {
        for k in 0..s.len as u64 {
            if out.len() == len {
                return out;
            }
            if skip > 0 {
                skip -= 1;
                continue;
            }
            out.push(locate(s.addr + k));
        }
    }
    out
}

/// The bytes `write_at` writes: 64 KiB (the largest `len`), built once.
fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        (0..=u16::MAX as usize)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
            .collect()
    })
}

fn zeros() -> &'static [u8] {
    static Z: OnceLock<Vec<u8>> = OnceLock::new();
    Z.get_or_init(|| vec![0u8; CHAIN_REGIONS.iter().map(|r| r.1).max().unwrap_or(0)])
}

fuzz_target!(|data: &[u8]| {
    let input = parse_chain(data);
    let mem = memory();
    // Reset guest memory: zeros, then the input's contents.
    for &(a, l) in &CHAIN_REGIONS {
        mem.write_slice(&zeros()[..l], GuestAddress(a))
            .expect("zero");
    }
    let (r0, rest) = input
        .memory
        .split_at(input.memory.len().min(CHAIN_REGIONS[0].1));
    mem.write_slice(r0, GuestAddress(CHAIN_REGIONS[0].0))
        .expect("fill 0");
    let rest = &rest[..rest.len().min(CHAIN_REGIONS[1].1)];
    mem.write_slice(rest, GuestAddress(CHAIN_REGIONS[1].0))
        .expect("fill 1");

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
    for s in segs {
        check_segment(mem, s);
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

    let before = dump(mem);
    let len = input.len as usize;

    // read_at returns exactly the readable bytes from `offset`.
    let mut buf = vec![0u8; len];
    let n = chain.read_at(input.offset, &mut buf);
    let want = positions(r, input.offset, len);
    assert_eq!(n, want.len(), "read_at length");
    for (i, &(reg, off)) in want.iter().enumerate() {
        assert_eq!(buf[i], before[reg][off], "read_at byte {i}");
    }

    // write_at changes exactly the writable bytes from `offset`, in order.
    let pattern = &pattern()[..len];
    let n = chain.write_at(input.offset, pattern);
    let want = positions(w, input.offset, len);
    assert_eq!(n, want.len(), "write_at length");
    let mut expect = before;
    for (i, &(reg, off)) in want.iter().enumerate() {
        expect[reg][off] = pattern[i];
    }
    assert!(
        dump(mem) == expect,
        "write_at touched bytes outside the chain's writable part"
    );
});
