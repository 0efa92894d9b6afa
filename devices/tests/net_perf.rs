//! Rough throughput of the net device on a real tap (in a network namespace), for development:
//! frames per second each way and the queue worker's CPU time per frame. Ignored by default;
//! run with `cargo test --release -p vu-devices --test net_perf -- --ignored --nocapture`.
//! The driver side here is the test's own ring code, not a guest: the numbers bound what the
//! device costs, not what a VM gets.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::net::*;
use common::netns::Netns;
use common::Frontend;
use vu_core::message::features;
use vu_devices::net::tap::open_tap;
use vu_devices::net::{NetConfig, NetDevice};

const QSIZE: u16 = 256;
const RUN: Duration = Duration::from_secs(3);
/// Free guest memory with two queues.
const AREA: u64 = 32 << 20;

struct Bench {
    ns: Netns,
    fe: Frontend,
    dev: Arc<NetDevice>,
    rx_tid: u32,
    tx_tid: u32,
}

fn bench() -> Option<Bench> {
    let before = threads("net-q");
    let ns = Netns::new()?;
    ns.ip(&["tuntap", "add", "dev", "tap0", "mode", "tap"]);
    ns.ip(&["link", "set", "tap0", "up"]);
    let taps = ns.run(|| open_tap("tap0", 1)).expect("tap");
    let dev = NetDevice::new(NetConfig {
        taps,
        queue_pairs: 1,
        queue_size: QSIZE,
        mtu: None,
        mac: None,
    })
    .expect("device");
    let fe = Frontend::with_features(dev.clone(), 2, QSIZE, |o| o & !features::LOG_ALL);
    ns.wait_up("tap0");
    let rx_tid = new_threads("net-q0", &before, 1)[0];
    let tx_tid = new_threads("net-q1", &before, 1)[0];
    Some(Bench {
        ns,
        fe,
        dev,
        rx_tid,
        tx_tid,
    })
}

fn report(what: &str, frames: u64, secs: f64, ticks: u64) {
    let ticks_per_sec = 100.0; // USER_HZ
    let cpu = ticks as f64 / ticks_per_sec;
    println!(
        "{what}: {:.0} frames/s, worker CPU {:.0}% ({:.2} us/frame)",
        frames as f64 / secs,
        100.0 * cpu / secs,
        1e6 * cpu / frames.max(1) as f64
    );
}

fn rx(len: usize, buf: u32, tso: bool) {
    let Some(mut b) = bench() else {
        return;
    };
    println!("  offloads {:#x}", b.dev.tap_offloads());
    let mut sock = b.ns.packet_socket("tap0", tso);
    let mut addr_of = std::collections::HashMap::new();
    for i in 0..u64::from(QSIZE) {
        let a = AREA + i * u64::from(buf);
        let h = b.fe.submit_descs(0, &[(a, buf, true)]);
        addr_of.insert(u32::from(h), a);
    }
    b.fe.kick(0);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (st, sn) = (stop.clone(), sent.clone());
    let frame = if tso {
        let f = tcp4_frame(len - 54, 1);
        [
            &hdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, (34, 16))[..10],
            &f[..],
        ]
        .concat()
    } else {
        frame(len, 1)
    };
    let injector = std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            if sock.write_all(&frame).is_ok() {
                sn.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let t0 = Instant::now();
    let c0 = thread_ticks(b.rx_tid);
    let p0 = b.dev.stats().rx_packets;
    while t0.elapsed() < RUN {
        let used = b.fe.poll_used(0);
        if used.is_empty() {
            std::hint::spin_loop();
            continue;
        }
        for (id, _) in used {
            let a = addr_of.remove(&id).expect("posted");
            let h = b.fe.submit_descs(0, &[(a, buf, true)]);
            addr_of.insert(u32::from(h), a);
        }
        b.fe.kick(0);
    }
    let secs = t0.elapsed().as_secs_f64();
    let frames = b.dev.stats().rx_packets - p0;
    let ticks = thread_ticks(b.rx_tid) - c0;
    stop.store(true, Ordering::Relaxed);
    injector.join().expect("injector");
    report(
        &format!("rx {len}-byte frames into {buf}-byte buffers"),
        frames,
        secs,
        ticks,
    );
    let tap = b.ns.run(|| vu_devices::net::tap::tap_stats("tap0"));
    println!(
        "  sent {}; tap {:?}; device {:?}",
        sent.load(Ordering::Relaxed),
        tap,
        b.dev.stats()
    );
}

fn tx(len: usize, tso: bool) {
    let Some(mut b) = bench() else {
        return;
    };
    let (h, f) = if tso {
        (
            hdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, (34, 16)),
            tcp4_frame(len - 54, 2),
        )
    } else {
        (plain_hdr(), frame(len, 2))
    };
    let bytes = [h, f].concat();
    let stride = bytes.len().next_multiple_of(4096) as u64;
    let mut addr_of = std::collections::HashMap::new();
    for i in 0..u64::from(QSIZE) {
        let a = AREA + i * stride;
        b.fe.write(a, &bytes);
        let h = b.fe.submit_descs(1, &[(a, bytes.len() as u32, false)]);
        addr_of.insert(u32::from(h), a);
    }
    b.fe.kick(1);
    let t0 = Instant::now();
    let c0 = thread_ticks(b.tx_tid);
    let p0 = b.dev.stats().tx_packets;
    while t0.elapsed() < RUN {
        let used = b.fe.poll_used(1);
        if used.is_empty() {
            std::hint::spin_loop();
            continue;
        }
        for (id, _) in used {
            let a = addr_of.remove(&id).expect("posted");
            let h = b.fe.submit_descs(1, &[(a, bytes.len() as u32, false)]);
            addr_of.insert(u32::from(h), a);
        }
        b.fe.kick(1);
    }
    let secs = t0.elapsed().as_secs_f64();
    let frames = b.dev.stats().tx_packets - p0;
    report(
        &format!("tx {len}-byte frames"),
        frames,
        secs,
        thread_ticks(b.tx_tid) - c0,
    );
}

#[test]
#[ignore]
fn throughput() {
    let only = std::env::var("NET_PERF").unwrap_or_default();
    let run = |name: &str| only.is_empty() || format!("{only},").contains(name);
    if run("rx64,") {
        rx(64, 2048, false);
    }
    if run("rx1514") {
        rx(1514, 2048, false);
    }
    if run("rx64k") {
        // The kernel segments GSO frames above 64 KiB (gso_max_size) in software.
        rx(54 + 65000, 4096, true);
    }
    if run("tx64,") {
        tx(64, false);
    }
    if run("tx1514") {
        tx(1514, false);
    }
    if run("tx64k") {
        tx(54 + MAX_TCP4_PAYLOAD, true);
    }
}
