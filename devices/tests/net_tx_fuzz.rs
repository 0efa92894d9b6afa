//! Robustness of virtio-net transmit over random chain shapes (a seeded generator, so a
//! failure replays): readable and writable buffers in any order and number, empty ones,
//! headers cut short, frames too long, buffers outside guest memory or running off its end.
//! Every chain comes back exactly once with length 0, exactly the well-formed frames reach
//! the tap, in order and byte-exact, and the counters account for every chain.

mod common;

use std::time::Duration;

use common::net::*;
use common::{Frontend, MEM_SIZE};
use vu_devices::net::{NetConfig, NetDevice};

const TX: usize = 1;
const QSIZE: u16 = 256;
/// Guest memory the frontend leaves alone with two queues: chain data goes here.
const SCRATCH: u64 = 40 << 20;
const MAX_LEN: usize = 12 + 65550;

/// xorshift64*: small, seeded, good enough to pick shapes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One descriptor: where, how long, device-writable.
struct Desc {
    addr: u64,
    len: u32,
    write: bool,
}

/// A random chain and what the device should send for it (None: dropped).
fn chain(rng: &mut Rng, fe: &Frontend, cursor: &mut u64) -> (Vec<Desc>, Option<Vec<u8>>) {
    let n = 1 + rng.below(6) as usize;
    // Total readable bytes: mostly plausible frames, sometimes degenerate.
    let total = match rng.below(10) {
        0 => rng.below(12) as usize,
        1 => MAX_LEN + 1 + rng.below(100) as usize,
        2 => MAX_LEN - rng.below(2) as usize,
        _ => 12 + 14 + rng.below(3000) as usize,
    };
    let data: Vec<u8> = (0..total)
        .map(|i| (i as u8) ^ (rng.below(251) as u8))
        .collect();
    // Split the readable bytes over the first descriptors (some empty).
    let readable = 1 + rng.below(n as u64) as usize;
    let mut descs = Vec::new();
    let mut off = 0;
    for i in 0..readable {
        let left = total - off;
        let len = if i + 1 == readable {
            left
        } else if rng.below(4) == 0 {
            0
        } else {
            rng.below(left as u64 + 1) as usize
        };
        let addr = *cursor;
        fe.write(addr, &data[off..off + len]);
        *cursor += len as u64 + rng.below(64);
        descs.push(Desc {
            addr,
            len: len as u32,
            write: false,
        });
        off += len;
    }
    for _ in readable..n {
        descs.push(Desc {
            addr: *cursor,
            len: 1 + rng.below(2048) as u32,
            write: true,
        });
        *cursor += 4096;
    }
    let mut bad_memory = false;
    let mut bad_order = false;
    match rng.below(12) {
        // A buffer far outside guest memory.
        0 => {
            let i = rng.below(n as u64) as usize;
            descs[i].addr = 1 << 40;
            bad_memory = descs[i].len > 0;
        }
        // One running off the end of guest memory.
        1 => {
            let i = rng.below(n as u64) as usize;
            descs[i].addr = MEM_SIZE as u64 - 100;
            descs[i].len = descs[i].len.max(101);
            bad_memory = true;
        }
        // A readable buffer after a writable one.
        2 if n > readable => {
            descs.push(Desc {
                addr: SCRATCH,
                len: 10,
                write: false,
            });
            bad_order = true;
        }
        _ => {}
    }
    let readable_len: usize = descs
        .iter()
        .filter(|d| !d.write)
        .map(|d| d.len as usize)
        .sum();
    let ok = !bad_memory && !bad_order && (12..=MAX_LEN).contains(&readable_len);
    (descs, ok.then_some(data))
}

#[test]
fn random_transmit_chains_never_upset_the_device() {
    let (dev_end, mut peer) = frame_pair();
    let dev = NetDevice::new(NetConfig {
        taps: vec![dev_end],
        queue_pairs: 1,
        queue_size: QSIZE,
        mtu: None,
        mac: None,
    })
    .expect("device");
    let mut fe = Frontend::new(dev.clone(), 2, QSIZE);
    let mut rng = Rng(0x5eed_1234_abcd_0042);
    let mut chains = 0u64;
    let mut sent = 0u64;
    for round in 0..40 {
        let mut cursor = SCRATCH;
        let mut heads = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..32 {
            let (descs, frame) = chain(&mut rng, &fe, &mut cursor);
            let raw: Vec<(u64, u32, bool)> =
                descs.iter().map(|d| (d.addr, d.len, d.write)).collect();
            heads.push(fe.submit_descs(TX, &raw));
            expected.extend(frame);
        }
        fe.kick(TX);
        // Read as they come: the tap (a socket here) fills up and makes the queue wait.
        for (i, e) in expected.iter().enumerate() {
            let got = recv_timeout(&mut peer, Duration::from_secs(20)).expect("frame");
            assert_eq!(&got, e, "round {round}, frame {i}");
        }
        let used = fe.wait(TX, heads.len());
        let mut ids: Vec<u32> = used.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        let mut want: Vec<u32> = heads.iter().map(|h| u32::from(*h)).collect();
        want.sort_unstable();
        assert_eq!(ids, want, "round {round}: each chain back exactly once");
        assert!(used.iter().all(|(_, len)| *len == 0));
        assert!(recv_timeout(&mut peer, Duration::from_millis(1)).is_none());
        chains += heads.len() as u64;
        sent += expected.len() as u64;
    }
    let st = dev.stats();
    let core_refused = fe.handler.status().queues[TX].chain_errors;
    assert_eq!(st.tx_packets, sent);
    assert_eq!(st.tx_dropped_write_error, 0);
    assert_eq!(
        st.tx_packets + st.tx_dropped_malformed + core_refused,
        chains
    );
    assert!(
        st.tx_dropped_malformed > 0 && core_refused > 0,
        "both kinds exercised"
    );
}
