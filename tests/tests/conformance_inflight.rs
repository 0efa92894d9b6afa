//! Conformance: inflight I/O tracking (INFLIGHT_SHMFD). The shared area has the layout of
//! the specification's "Inflight I/O tracking" section, and after a back-end crash a brand
//! new back-end handed the same area resubmits exactly the requests that were in flight, in
//! the order they were fetched, and each is completed once.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use anyhow::{ensure, Result};
use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vu_tests::frontend::{
    echo_requests, negotiate, vh, DriverQueue, Options, TestGuest, TestServer, TIMEOUT,
};
use vu_tests::test_device::{expected_response, DrainMode, TestDevice};

const QUEUE_SIZE: u16 = 16;

/// One queue's region as the specification lays it out.
#[derive(Debug)]
struct QueueRegion {
    version: u16,
    desc_num: u16,
    used_idx: u16,
    /// (inflight, counter) per descriptor.
    desc: Vec<(u8, u64)>,
}

fn region_size(queue_size: u16) -> u64 {
    // features u64, version u16, desc_num u16, last_batch_head u16, used_idx u16, then one
    // DescStateSplit (inflight u8, padding [u8; 5], next u16, counter u64) per descriptor.
    16 + 16 * queue_size as u64
}

fn read_region(file: &File, info: &VhostUserInflight, q: usize) -> Result<QueueRegion> {
    let size = region_size(info.queue_size);
    let mut b = vec![0u8; size as usize];
    file.read_exact_at(&mut b, info.mmap_offset + q as u64 * size)?;
    let u16_at = |o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
    let desc = (0..info.queue_size as usize)
        .map(|i| {
            let o = 16 + 16 * i;
            let mut c = [0u8; 8];
            c.copy_from_slice(&b[o + 8..o + 16]);
            (b[o], u64::from_ne_bytes(c))
        })
        .collect();
    Ok(QueueRegion {
        version: u16_at(8),
        desc_num: u16_at(10),
        used_idx: u16_at(14),
        desc,
    })
}

/// Connects to `server`, negotiates, gets (or, given `area`, sets) the inflight area, sends
/// the memory table. Returns the front-end and the area.
fn start(
    server: &TestServer,
    guest: &TestGuest,
    area: Option<(VhostUserInflight, &File)>,
) -> Result<(Frontend, Option<(VhostUserInflight, File)>)> {
    let mut fe = server.connect()?;
    negotiate(&mut fe, &Options::event_idx())?;
    let got = match area {
        None => {
            let want = VhostUserInflight {
                mmap_size: 0,
                mmap_offset: 0,
                num_queues: 2,
                queue_size: QUEUE_SIZE,
            };
            let (info, file) = vh(fe.get_inflight_fd(&want), "GET_INFLIGHT_FD")?;
            // QEMU hands the area straight back.
            vh(
                fe.set_inflight_fd(&info, file.as_raw_fd()),
                "SET_INFLIGHT_FD",
            )?;
            Some((info, file))
        }
        Some((info, file)) => {
            vh(
                fe.set_inflight_fd(&info, file.as_raw_fd()),
                "SET_INFLIGHT_FD",
            )?;
            None
        }
    };
    vh(
        fe.set_mem_table(&guest.regions_info(&[0, 1])),
        "SET_MEM_TABLE",
    )?;
    Ok((fe, got))
}

#[test]
fn inflight_area_layout() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let dev = server.device().clone();
    let (mut fe, area) = start(&server, &guest, None)?;
    let (info, file) = area.ok_or_else(|| anyhow::anyhow!("no area"))?;
    let (size, offset, nq, qs) = (
        info.mmap_size,
        info.mmap_offset,
        info.num_queues,
        info.queue_size,
    );
    ensure!(nq == 2 && qs == QUEUE_SIZE, "reply {nq} queues of {qs}");
    ensure!(size >= 2 * region_size(QUEUE_SIZE), "mmap_size {size}");
    ensure!(file.metadata()?.len() >= offset + size);
    for q in 0..2 {
        let r = read_region(&file, &info, q)?;
        ensure!(
            r.version == 1 && r.desc_num == QUEUE_SIZE,
            "queue {q}: {r:?}"
        );
        ensure!(r.desc.iter().all(|d| d.0 == 0), "queue {q}: {r:?}");
    }

    let mut dq = DriverQueue::new(&guest, 0, QUEUE_SIZE, 0)?;
    dq.set_event_idx(true)?;
    dq.setup(&mut fe, true)?;
    ensure!(dq.run_echo(&echo_requests(5, 1), 2, TIMEOUT)?.len() == 5);
    let r = read_region(&file, &info, 0)?;
    ensure!(r.used_idx == 5 && r.desc.iter().all(|d| d.0 == 0), "{r:?}");

    // Three requests held by the device are in flight, in fetch order.
    dev.set_hold(true);
    let heads: Vec<u16> = (0..3)
        .map(|i| dq.submit(&[i as u8; 10], 10))
        .collect::<Result<_>>()?;
    dq.kick()?;
    ensure!(dev.wait_held(0, 3, TIMEOUT));
    let r = read_region(&file, &info, 0)?;
    for (i, d) in r.desc.iter().enumerate() {
        let held = heads.contains(&(i as u16));
        ensure!(
            d.0 == held as u8,
            "descriptor {i}: inflight {} ({r:?})",
            d.0
        );
    }
    let counters: Vec<u64> = heads.iter().map(|&h| r.desc[h as usize].1).collect();
    ensure!(
        counters.windows(2).all(|w| w[0] < w[1]),
        "counters not in fetch order: {counters:?}"
    );
    ensure!(r.used_idx == 5);
    // Queue 1 was never started: its region is untouched.
    let r1 = read_region(&file, &info, 1)?;
    ensure!(r1.desc.iter().all(|d| d == &(0, 0)), "{r1:?}");

    // Released: nothing in flight, used index follows.
    dev.release_all();
    ensure!(dq.wait_used(3, TIMEOUT)?.len() == 3);
    let r = read_region(&file, &info, 0)?;
    ensure!(r.used_idx == 8 && r.desc.iter().all(|d| d.0 == 0), "{r:?}");
    Ok(())
}

#[test]
fn crash_with_requests_in_flight_resubmits_them_once() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server_a = TestServer::start_default()?;
    let dev_a = server_a.device().clone();
    let (mut fe, area) = start(&server_a, &guest, None)?;
    let (info, file) = area.ok_or_else(|| anyhow::anyhow!("no area"))?;
    let mut queues = Vec::new();
    for q in 0..2 {
        let mut dq = DriverQueue::new(&guest, q, QUEUE_SIZE, 0)?;
        dq.set_event_idx(true)?;
        dq.setup(&mut fe, true)?;
        ensure!(dq.run_echo(&echo_requests(21 + q, 1), 4, TIMEOUT)?.len() == 21 + q);
        queues.push(dq);
    }

    // Requests in flight on both queues when the device "dies". On queue 0 the device
    // finished the middle one of four out of order: a back-end that simply re-read the
    // available ring from the used index would complete that one twice and lose the first.
    dev_a.set_hold(true);
    let mut held: Vec<Vec<(u16, Vec<u8>)>> = vec![Vec::new(), Vec::new()];
    for (q, dq) in queues.iter_mut().enumerate() {
        let n = 4 - 2 * q;
        for i in 0..n {
            let req = format!("in flight q{q} #{i}").into_bytes();
            held[q].push((dq.submit(&req, 32)?, req));
        }
        dq.kick()?;
        ensure!(dev_a.wait_held(q, n, TIMEOUT));
    }
    let (early, early_req) = held[0].remove(1);
    ensure!(dev_a.release_heads(0, &[early]));
    let used = queues[0].wait_used(1, TIMEOUT)?;
    ensure!(used[0].id == early as u32 && used[0].data == expected_response(0, &early_req, 32));
    ensure!(dev_a.wait_held(0, 3, TIMEOUT));
    let before_crash = dev_a.completion_count();
    ensure!(before_crash == 21 + 22 + 1);

    // Crash: the device forgets what it holds, the connection and the server go away.
    dev_a.set_drain_mode(DrainMode::Abandon);
    drop(fe);
    server_a.stop()?;
    ensure!(
        dev_a.completion_count() == before_crash,
        "the dead device completed requests"
    );
    for (q, h) in held.iter().enumerate() {
        let r = read_region(&file, &info, q)?;
        for (head, _) in h {
            ensure!(
                r.desc[*head as usize].0 == 1,
                "queue {q} head {head} not in flight: {r:?}"
            );
        }
        ensure!(queues[q].device_used_idx()? == 22);
    }

    // A brand new back-end process: new device, new server, new socket.
    let server_b = TestServer::start(TestDevice::default())?;
    let dev_b = server_b.device().clone();
    let (mut fe, _) = start(&server_b, &guest, Some((info, &file)))?;
    for dq in &mut queues {
        // After a back-end crash QEMU cannot ask for the ring base; it uses the used index.
        let used_idx = dq.device_used_idx()?;
        dq.setup_with_base(&mut fe, used_idx, true)?;
    }
    for (q, dq) in queues.iter_mut().enumerate() {
        let used = dq.wait_used(held[q].len(), TIMEOUT)?;
        ensure!(used.len() == held[q].len(), "queue {q}: {used:?}");
        // Resubmitted in the order they were fetched, each answered correctly.
        for (u, (head, req)) in used.iter().zip(&held[q]) {
            ensure!(
                u.id == *head as u32,
                "queue {q}: order {used:?} vs {:?}",
                held[q]
            );
            ensure!(
                u.data == expected_response(q, req, 32),
                "queue {q} head {head}"
            );
        }
    }
    // Exactly once: the new device completed exactly the held requests.
    let done = dev_b.completions();
    ensure!(done.len() == 3 + 2, "{done:?}");
    ensure!(
        !done.iter().any(|c| c.queue == 0 && c.head == early),
        "completed twice"
    );
    for (q, h) in held.iter().enumerate() {
        for (head, req) in h {
            let n = done
                .iter()
                .filter(|c| c.queue == q && c.head == *head && &c.request == req)
                .count();
            ensure!(n == 1, "queue {q} head {head} completed {n} times");
        }
    }
    // Nothing in flight any more; new requests continue where the ring left off.
    for (q, dq) in queues.iter_mut().enumerate() {
        let r = read_region(&file, &info, q)?;
        ensure!(r.desc.iter().all(|d| d.0 == 0), "queue {q}: {r:?}");
        ensure!(dq.run_echo(&echo_requests(30, 5), 6, TIMEOUT)?.len() == 30);
        let expect = (21 + q + (4 - 2 * q) + 30) as u32;
        ensure!(vh(fe.get_vring_base(q), "GET_VRING_BASE")? == expect);
    }
    ensure!(dev_b.completion_count() == 5 + 60);
    Ok(())
}

#[test]
fn clean_reconnect_with_the_inflight_area_resubmits_nothing() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let dev = server.device().clone();
    let (mut fe, area) = start(&server, &guest, None)?;
    let (info, file) = area.ok_or_else(|| anyhow::anyhow!("no area"))?;
    let mut dq = DriverQueue::new(&guest, 1, QUEUE_SIZE, 0)?;
    dq.set_event_idx(true)?;
    dq.setup(&mut fe, true)?;
    ensure!(dq.run_echo(&echo_requests(12, 1), 4, TIMEOUT)?.len() == 12);
    let base = vh(fe.get_vring_base(1), "GET_VRING_BASE")?;
    drop(fe);
    ensure!(dev.wait_call(TIMEOUT, |c| *c == vu_tests::test_device::Call::Reset));
    dev.clear_calls();
    let count = dev.completion_count();

    let (mut fe, _) = start(&server, &guest, Some((info, &file)))?;
    dq.setup_with_base(&mut fe, base as u16, true)?;
    ensure!(dq.run_echo(&echo_requests(12, 2), 4, TIMEOUT)?.len() == 12);
    ensure!(
        dev.completion_count() == count + 12,
        "something was resubmitted"
    );
    Ok(())
}
