//! virtio-rng through the core's real handler, queue runtime and worker: requests are filled
//! with bytes that look random, readable buffers are ignored, writable segments are filled in
//! order, one request gets at most `MAX_REQUEST_BYTES`, and every legal queue size works.

mod common;

use std::fs::File;
use std::sync::Arc;

use common::{Buf, Frontend};
use vu_devices::rng::{RngConfig, RngDevice, MAX_REQUEST_BYTES};

const POISON: u8 = 0xee;

fn rng(queue_size: u16) -> (Frontend, Arc<RngDevice>) {
    let mut cfg = RngConfig::new(File::open("/dev/urandom").expect("urandom"));
    cfg.queue_size = queue_size;
    let dev = RngDevice::new(cfg).expect("device");
    (Frontend::new(dev.clone(), 1, queue_size), dev)
}

/// Every byte value about as often as the others (a loose chi-square bound), and not the
/// test's poison: what a broken fill (zeros, poison, a repeated block) would fail.
fn assert_random(data: &[u8]) {
    assert!(data.len() >= 64 << 10, "need a sample of 64 KiB or more");
    let mut counts = [0u64; 256];
    for &b in data {
        counts[b as usize] += 1;
    }
    let expected = data.len() as f64 / 256.0;
    let chi2: f64 = counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum();
    // 255 degrees of freedom: mean 255, standard deviation about 22.6; 400 is beyond six
    // deviations for random data, and far below what any pattern produces.
    assert!(
        chi2 < 400.0,
        "byte frequencies are not uniform: chi2 = {chi2:.0}"
    );
    let run = data
        .windows(16)
        .filter(|w| w.iter().all(|&b| b == w[0]))
        .count();
    assert_eq!(run, 0, "16 equal bytes in a row");
}

#[test]
fn bytes_arrive_and_look_random() {
    let (mut fe, dev) = rng(256);
    let chains: Vec<Vec<Buf>> = (0..64).map(|_| vec![Buf::In(4096)]).collect();
    let subs = fe.submit_batch(0, &chains);
    fe.kick(0);
    let done = fe.wait(0, 64);
    let mut all = Vec::new();
    let mut blocks = Vec::new();
    for (s, (id, used)) in subs.iter().zip(&done) {
        assert_eq!((*id, *used), (u32::from(s.head), 4096), "in order, full");
        let d = fe.written(s, *used);
        blocks.push(d.clone());
        all.extend(d);
    }
    assert_random(&all);
    blocks.sort();
    blocks.dedup();
    assert_eq!(blocks.len(), 64, "no two requests got the same bytes");
    let st = dev.stats();
    assert_eq!((st.bytes_total, st.requests_total), (64 * 4096, 64));
}

#[test]
fn readable_buffers_are_ignored_and_writable_segments_filled_in_order() {
    let (mut fe, dev) = rng(8);
    // A readable buffer at a known address, with known contents.
    let readable = 40 << 20;
    fe.write(readable, &[0x5a; 64]);
    let r = fe.run(
        0,
        &[
            Buf::Raw {
                addr: readable,
                len: 64,
                write: false,
            },
            Buf::In(100),
            Buf::InAt(200, 3),
        ],
    );
    // `run` returns the last writable byte apart as "status": 299 + 1 bytes.
    assert_eq!(r.used, 300);
    assert_eq!(r.data.len(), 299);
    assert!(r.data.iter().filter(|&&b| b == POISON).count() < 16);
    assert_eq!(
        fe.read(readable, 64),
        vec![0x5a; 64],
        "readable buffer untouched"
    );
    assert_eq!(dev.stats().bytes_total, 300);
}

#[test]
fn one_request_gets_at_most_the_cap() {
    let (mut fe, _dev) = rng(8);
    let big = 1 << 20;
    let s = fe.submit(0, &[Buf::In(big)]);
    fe.kick(0);
    let got = fe.wait(0, 1);
    assert_eq!(got[0].1, MAX_REQUEST_BYTES);
    let mem = fe.read(s.writable[0].0, big as usize);
    let cap = MAX_REQUEST_BYTES as usize;
    assert!(
        mem[cap..].iter().all(|&b| b == POISON),
        "nothing past the cap"
    );
    assert_random(&mem[..cap]);
    // The cap spans segments: 40 KiB, then 24 of the next 40 KiB.
    let seg = 40 << 10;
    let s = fe.submit(0, &[Buf::In(seg), Buf::In(seg)]);
    fe.kick(0);
    let got = fe.wait(0, 1);
    assert_eq!(got[0].1, MAX_REQUEST_BYTES);
    let second = fe.read(s.writable[1].0, seg as usize);
    let rest = cap - seg as usize;
    assert!(second[rest..].iter().all(|&b| b == POISON));
    assert!(second[..rest].iter().filter(|&&b| b == POISON).count() < rest / 64);
}

#[test]
fn every_legal_queue_size_serves_a_full_ring() {
    for qs in [1u16, 2, 4, 8, 64, 1024, 32768] {
        let (mut fe, dev) = rng(qs);
        for round in 0..2 {
            let chains: Vec<Vec<Buf>> = (0..qs).map(|_| vec![Buf::In(16)]).collect();
            let subs = fe.submit_batch(0, &chains);
            fe.kick(0);
            let done = fe.wait(0, usize::from(qs));
            for (s, (id, used)) in subs.iter().zip(&done) {
                assert_eq!(
                    (*id, *used),
                    (u32::from(s.head), 16),
                    "qs {qs} round {round}"
                );
            }
        }
        let st = dev.stats();
        assert_eq!(st.requests_total, 2 * u64::from(qs), "qs {qs}");
        assert_eq!(st.bytes_total, 32 * u64::from(qs), "qs {qs}");
    }
}

#[test]
fn qemu_shape_one_queue_of_four_with_512_byte_requests() {
    // What Linux's virtio-rng driver does: one 512-byte buffer at a time.
    let (mut fe, dev) = rng(4);
    let mut all = Vec::new();
    for _ in 0..256 {
        let s = fe.submit(0, &[Buf::In(512)]);
        fe.kick(0);
        let got = fe.wait(0, 1);
        assert_eq!(got[0], (u32::from(s.head), 512));
        all.extend(fe.written(&s, 512));
    }
    assert_random(&all);
    assert_eq!(dev.stats().requests_total, 256);
}
