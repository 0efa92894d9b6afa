//! Hostile rng requests: no writable buffer, a read-only buffer, huge lengths, buffers outside
//! guest memory or wrapping the address space. Each gets no bytes (used length 0, guest
//! memory untouched) and the device keeps serving the next request.

mod common;

use std::fs::File;
use std::sync::Arc;

use common::{Buf, Frontend, GUEST_MEM_SIZE};
use vu_devices::rng::{RngConfig, RngDevice, MAX_REQUEST_BYTES};

const POISON: u8 = 0xee;
/// A scratch area of guest memory the test front-end does not allocate from.
const SCRATCH: u64 = 48 << 20;

fn rng() -> (Frontend, Arc<RngDevice>) {
    let mut cfg = RngConfig::new(File::open("/dev/urandom").expect("urandom"));
    cfg.queue_size = 16;
    let dev = RngDevice::new(cfg).expect("device");
    (Frontend::new(dev.clone(), 1, 16), dev)
}

/// A good request still gets its 64 bytes.
fn still_serves(fe: &mut Frontend) {
    let s = fe.submit(0, &[Buf::In(64)]);
    fe.kick(0);
    let got = fe.wait(0, 1);
    assert_eq!(got[0], (u32::from(s.head), 64));
    assert!(fe.written(&s, 64).iter().filter(|&&b| b == POISON).count() < 8);
}

/// Submits `bufs`, expects one completion with length 0.
fn gets_nothing(fe: &mut Frontend, bufs: &[Buf]) {
    let s = fe.submit(0, bufs);
    fe.kick(0);
    let got = fe.wait(0, 1);
    assert_eq!(got[0], (u32::from(s.head), 0), "{bufs:?}");
    for (a, n) in &s.writable {
        assert!(
            fe.read(*a, *n as usize).iter().all(|&b| b == POISON),
            "{bufs:?}: a writable buffer of a refused chain was written"
        );
    }
    still_serves(fe);
}

#[test]
fn a_chain_without_a_writable_buffer_completes_empty() {
    let (mut fe, dev) = rng();
    fe.write(SCRATCH, &[7; 32]);
    let ro = Buf::Raw {
        addr: SCRATCH,
        len: 32,
        write: false,
    };
    gets_nothing(&mut fe, std::slice::from_ref(&ro));
    assert_eq!(
        fe.read(SCRATCH, 32),
        vec![7; 32],
        "read-only buffer untouched"
    );
    gets_nothing(&mut fe, &[Buf::Out(vec![1; 16]), ro]);
    // Zero-length writable descriptors: nothing to fill.
    gets_nothing(
        &mut fe,
        &[Buf::Raw {
            addr: SCRATCH,
            len: 0,
            write: true,
        }],
    );
    let st = dev.stats();
    assert_eq!(st.empty_requests_total, 3);
    assert_eq!(st.requests_total, 6);
    assert_eq!(st.bytes_total, 3 * 64);
}

#[test]
fn buffers_outside_guest_memory_get_nothing() {
    let (mut fe, dev) = rng();
    for (addr, len) in [
        (GUEST_MEM_SIZE, 64),
        (GUEST_MEM_SIZE - 16, 64),
        (GUEST_MEM_SIZE + (1 << 30), 4096),
        (u64::MAX - 15, 64),
        (0, u32::MAX),
        (SCRATCH, u32::MAX),
    ] {
        gets_nothing(
            &mut fe,
            &[Buf::Raw {
                addr,
                len,
                write: true,
            }],
        );
        // The same behind a good writable buffer: the whole chain is refused.
        gets_nothing(
            &mut fe,
            &[
                Buf::In(32),
                Buf::Raw {
                    addr,
                    len,
                    write: true,
                },
            ],
        );
    }
    let q = &fe.handler.status().queues[0];
    assert_eq!(q.chain_errors, 12);
    assert_eq!(dev.stats().bytes_total, 12 * 64);
}

#[test]
fn huge_lengths_inside_guest_memory_are_capped() {
    let (mut fe, _dev) = rng();
    // 16 MiB of writable guest memory: the request gets MAX_REQUEST_BYTES and not a byte
    // more.
    let len = 16 << 20;
    fe.write(SCRATCH - (8 << 20), &vec![POISON; len as usize]);
    let s = fe.submit(
        0,
        &[Buf::Raw {
            addr: SCRATCH - (8 << 20),
            len,
            write: true,
        }],
    );
    fe.kick(0);
    let got = fe.wait(0, 1);
    assert_eq!(got[0], (u32::from(s.head), MAX_REQUEST_BYTES));
    let mem = fe.read(SCRATCH - (8 << 20), len as usize);
    let cap = MAX_REQUEST_BYTES as usize;
    assert!(mem[cap..].iter().all(|&b| b == POISON));
    // Lengths that add up past 4 GiB in one chain are refused as a whole.
    gets_nothing(
        &mut fe,
        &[
            Buf::Raw {
                addr: 0,
                len: u32::MAX,
                write: true,
            },
            Buf::Raw {
                addr: 0,
                len: 2,
                write: true,
            },
        ],
    );
    still_serves(&mut fe);
}

#[test]
fn a_readable_buffer_after_a_writable_one_is_refused() {
    let (mut fe, _dev) = rng();
    gets_nothing(&mut fe, &[Buf::In(64), Buf::Out(vec![0; 16])]);
}
