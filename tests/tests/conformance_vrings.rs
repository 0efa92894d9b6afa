//! Conformance: virtqueue I/O through the echo/xor test device, driven by the `vhost` crate
//! front-end and a driver-side split ring: both queues, with and without EVENT_IDX, indirect
//! descriptors, ring index wrap-around, notification suppression, GET_VRING_BASE (stop, drain
//! and restart), SET_VRING_ENABLE and RESET_DEVICE.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;
use vmm_sys_util::eventfd::EventFd;
use vu_tests::frontend::{
    echo_requests, negotiate, vh, Buf, DriverQueue, Options, TestGuest, TestServer, TIMEOUT,
};
use vu_tests::test_device::{expected_response, Call};

/// Runs `n` requests on each queue at once (one driver thread per queue) and checks every
/// answer, that each request was answered once, and the back-end's counters.
fn io_on_both_queues(opts: Options, queue_size: u16, n: usize) -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut s = server.session(&guest, &opts, queue_size)?;
    let reqs: Vec<_> = (0..2).map(|q| echo_requests(n, q as u8 + 1)).collect();
    let window = queue_size as usize / 2;
    let results = std::thread::scope(|sc| {
        let handles: Vec<_> = s
            .queues
            .iter_mut()
            .zip(&reqs)
            .map(|(dq, r)| sc.spawn(move || dq.run_echo(r, window, TIMEOUT)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("driver panicked")))
            })
            .collect::<Vec<_>>()
    });
    for (q, r) in results.into_iter().enumerate() {
        let done = r?;
        ensure!(done.len() == n, "queue {q}: {} answers", done.len());
        let idx: HashSet<usize> = done.iter().map(|(_, i)| *i).collect();
        ensure!(idx.len() == n, "queue {q}: a request was answered twice");
    }
    let st = server.status();
    for q in 0..2 {
        ensure!(
            st.queues[q].completed == n as u64,
            "queue {q}: {:?}",
            st.queues[q]
        );
        ensure!(
            st.queues[q].chain_errors == 0,
            "queue {q}: {:?}",
            st.queues[q]
        );
        ensure!(st.queues[q].notifications > 0);
        let c = server.device().completions();
        ensure!(c.iter().filter(|c| c.queue == q).count() == n);
    }
    Ok(())
}

#[test]
fn io_on_both_queues_without_event_idx() -> Result<()> {
    // 16 descriptors, 300 requests: the ring indexes go round many times.
    io_on_both_queues(Options::default(), 16, 300)
}

#[test]
fn io_on_both_queues_with_event_idx() -> Result<()> {
    io_on_both_queues(Options::event_idx(), 16, 300)
}

#[test]
fn io_with_a_large_queue() -> Result<()> {
    io_on_both_queues(Options::event_idx(), 256, 600)
}

#[test]
fn indirect_descriptors() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut s = server.session(&guest, &Options::event_idx(), 8)?;
    let dq = &mut s.queues[1];
    // More indirect requests than the ring has descriptors, mixed with direct ones.
    for round in 0..6u8 {
        let mut heads = Vec::new();
        for i in 0..4u8 {
            let req: Vec<u8> = (0..(20 + i as usize * 40))
                .map(|k| k as u8 ^ round)
                .collect();
            let head = if i % 2 == 0 {
                dq.submit_indirect(&req, 192)?
            } else {
                dq.submit(&req, 192)?
            };
            heads.push((head, req));
        }
        dq.kick()?;
        let used = dq.wait_used(heads.len(), TIMEOUT)?;
        ensure!(used.len() == heads.len());
        for u in used {
            let (_, req) = heads
                .iter()
                .find(|(h, _)| *h as u32 == u.id)
                .ok_or_else(|| anyhow::anyhow!("unknown id {}", u.id))?;
            ensure!(
                u.data == expected_response(1, req, 192),
                "round {round} id {}",
                u.id
            );
        }
    }
    ensure!(server.status().queues[1].chain_errors == 0);
    Ok(())
}

#[test]
fn indirect_descriptors_need_the_feature() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let opts = Options {
        indirect: false,
        ..Default::default()
    };
    let mut s = server.session(&guest, &opts, 8)?;
    ensure!(s.neg.features & vu_tests::frontend::bits::INDIRECT_DESC == 0);
    let dq = &mut s.queues[0];
    let head = dq.submit_indirect(b"not negotiated", 64)?;
    dq.kick()?;
    let used = dq.wait_used(1, TIMEOUT)?;
    ensure!(used[0].id == head as u32 && used[0].len == 0, "{used:?}");
    ensure!(dq.wait_err(TIMEOUT)?, "no error notification");
    ensure!(
        server.device().completion_count() == 0,
        "device saw the chain"
    );
    // The ring goes on.
    let done = dq.run_echo(&echo_requests(10, 9), 4, TIMEOUT)?;
    ensure!(done.len() == 10);
    Ok(())
}

#[test]
fn scatter_gather_and_buffers_across_regions() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut s = server.session(&guest, &Options::default(), 16)?;
    let dq = &mut s.queues[0];
    // Request in three pieces, response room in two.
    let parts: [&[u8]; 3] = [b"hello ", b"scatter", b" gather"];
    let head = dq.submit_sg(&parts, &[5, 100])?;
    dq.kick()?;
    let used = dq.wait_used(1, TIMEOUT)?;
    let whole: Vec<u8> = parts.concat();
    ensure!(used[0].id == head as u32);
    ensure!(
        used[0].data == expected_response(0, &whole, 105),
        "{used:?}"
    );

    // Buffers straddling the boundary between region 0 and region 1 (contiguous in guest
    // physical space, separate mappings on both sides): first the request, then the response.
    let (r1, _) = guest.region_range(1);
    let req: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    for (rq, rs) in [(r1 - 100, r1 + 0x1000), (r1 + 0x2000, r1 - 150)] {
        guest.write(rq, &req)?;
        guest.write(rs, &[0u8; 300])?;
        let head = dq.add(&[Buf::r(rq, 300), Buf::w(rs, 300)])?;
        dq.kick()?;
        let used = dq.wait_used(1, TIMEOUT)?;
        ensure!(used[0].id == head as u32 && used[0].len == 300, "{used:?}");
        ensure!(guest.read(rs, 300)? == expected_response(0, &req, 300));
        ensure!(used[0].data == expected_response(0, &req, 300));
    }
    Ok(())
}

/// Starts the rings at index 65530 so both the available and the used index wrap past
/// 65535 during the test.
fn index_wraps(event_idx: bool) -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut fe = server.connect()?;
    let opts = Options {
        event_idx,
        ..Default::default()
    };
    let neg = negotiate(&mut fe, &opts)?;
    vh(
        fe.set_mem_table(&guest.regions_info(&[0, 1])),
        "SET_MEM_TABLE",
    )?;
    let mut dq = DriverQueue::new(&guest, 0, 8, 0)?;
    dq.set_event_idx(neg.features & vu_tests::frontend::bits::EVENT_IDX != 0)?;
    dq.set_start_index(65530)?;
    dq.setup(&mut fe, true)?;
    let done = dq.run_echo(&echo_requests(40, 3), 3, TIMEOUT)?;
    ensure!(done.len() == 40);
    ensure!(dq.next_avail() == 65530u16.wrapping_add(40));
    ensure!(dq.device_used_idx()? == dq.next_avail());
    ensure!(vh(fe.get_vring_base(0), "GET_VRING_BASE")? == dq.next_avail() as u32);
    Ok(())
}

#[test]
fn ring_index_wraps_without_event_idx() -> Result<()> {
    index_wraps(false)
}

#[test]
fn ring_index_wraps_with_event_idx() -> Result<()> {
    index_wraps(true)
}

#[test]
fn event_idx_suppresses_notifications() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut s = server.session(&guest, &Options::event_idx(), 16)?;
    let dq = &mut s.queues[0];
    // The driver stops maintaining used_event and asks to be told only far in the future.
    dq.set_event_idx(false)?;
    dq.set_used_event(dq.last_used().wrapping_add(1000))?;
    for _ in 0..3 {
        dq.submit(b"quiet", 16)?;
    }
    dq.kick()?;
    ensure!(dq.poll_used(3, TIMEOUT)?.len() == 3);
    // One more: once it is used, the worker has long finished deciding about the first three.
    dq.submit(b"quiet", 16)?;
    dq.kick()?;
    ensure!(dq.poll_used(1, TIMEOUT)?.len() == 1);
    ensure!(
        !dq.take_call(),
        "notified although used_event was not reached"
    );
    // The device published avail_event (it wants kicks for what comes next).
    ensure!(
        dq.avail_event()? == dq.next_avail(),
        "avail_event {}",
        dq.avail_event()?
    );
    // Ask for the next one: it is notified.
    dq.set_event_idx(true)?;
    let head = dq.submit(b"loud", 16)?;
    dq.kick()?;
    let used = dq.wait_used(1, TIMEOUT)?;
    ensure!(used[0].id == head as u32);
    Ok(())
}

#[test]
fn no_interrupt_flag_suppresses_notifications() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut s = server.session(&guest, &Options::default(), 16)?;
    let dq = &mut s.queues[1];
    dq.set_avail_flags(1)?;
    for _ in 0..3 {
        dq.submit(b"quiet", 16)?;
    }
    dq.kick()?;
    ensure!(dq.poll_used(3, TIMEOUT)?.len() == 3);
    dq.submit(b"quiet", 16)?;
    dq.kick()?;
    ensure!(dq.poll_used(1, TIMEOUT)?.len() == 1);
    ensure!(
        !dq.take_call(),
        "notified despite VRING_AVAIL_F_NO_INTERRUPT"
    );
    dq.set_avail_flags(0)?;
    dq.submit(b"loud", 16)?;
    dq.kick()?;
    ensure!(dq.wait_used(1, TIMEOUT)?.len() == 1);
    Ok(())
}

#[test]
fn get_vring_base_stops_the_ring_and_it_restarts() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut s = server.session(&guest, &Options::event_idx(), 16)?;
    let fe = &mut s.fe;
    let (q0, q1) = s.queues.split_at_mut(1);
    let (dq, other) = (&mut q0[0], &mut q1[0]);
    ensure!(dq.run_echo(&echo_requests(5, 1), 4, TIMEOUT)?.len() == 5);
    let base = vh(fe.get_vring_base(0), "GET_VRING_BASE")?;
    ensure!(base == 5, "GET_VRING_BASE = {base}");
    let st = server.status();
    ensure!(!st.queues[0].started && st.queues[1].started, "{st:?}");
    ensure!(server.device().calls().contains(&Call::StopQueue(0)));

    // Requests made available on the stopped ring stay untouched.
    let before = server.device().completion_count();
    dq.submit(b"while stopped 1", 32)?;
    dq.submit(b"while stopped 2", 32)?;
    dq.kick()?;
    // The other queue keeps working meanwhile.
    ensure!(other.run_echo(&echo_requests(20, 2), 4, TIMEOUT)?.len() == 20);
    ensure!(server.device().completion_count() == before + 20);
    ensure!(dq.device_used_idx()? == 5, "stopped ring was used");

    // Restart as QEMU does after GET_VRING_BASE: base, kick, enable.
    vh(fe.set_vring_base(0, base as u16), "SET_VRING_BASE")?;
    vh(fe.set_vring_kick(0, &dq.kick), "SET_VRING_KICK")?;
    vh(fe.set_vring_enable(0, true), "SET_VRING_ENABLE")?;
    dq.kick()?;
    let used = dq.wait_used(2, TIMEOUT)?;
    ensure!(used.len() == 2, "{used:?}");
    ensure!(used[0].data == expected_response(0, b"while stopped 1", 32));
    ensure!(used[1].data == expected_response(0, b"while stopped 2", 32));
    ensure!(dq.run_echo(&echo_requests(10, 4), 4, TIMEOUT)?.len() == 10);
    ensure!(vh(fe.get_vring_base(0), "GET_VRING_BASE")? == 17);
    Ok(())
}

#[test]
fn get_vring_base_drains_requests_in_flight() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut s = server.session(&guest, &Options::default(), 8)?;
    let dev = server.device().clone();
    let dq = &mut s.queues[0];
    ensure!(dq.run_echo(&echo_requests(3, 1), 2, TIMEOUT)?.len() == 3);
    dev.set_hold(true);
    let reqs = [
        b"held one".to_vec(),
        b"held two".to_vec(),
        b"held three".to_vec(),
    ];
    for r in &reqs {
        dq.submit(r, 32)?;
    }
    dq.kick()?;
    ensure!(dev.wait_held(0, 3, TIMEOUT), "requests not taken");
    ensure!(dq.device_used_idx()? == 3);
    // GET_VRING_BASE waits for the device to finish what it took: when the reply arrives,
    // the used ring already holds the three requests.
    let base = vh(s.fe.get_vring_base(0), "GET_VRING_BASE")?;
    ensure!(base == 6, "GET_VRING_BASE = {base}");
    ensure!(
        dq.device_used_idx()? == 6,
        "used idx {}",
        dq.device_used_idx()?
    );
    let used = dq.collect()?;
    ensure!(used.len() == 3);
    for (u, r) in used.iter().zip(&reqs) {
        ensure!(u.data == expected_response(0, r, 32));
    }
    ensure!(dev.held(0) == 0);
    Ok(())
}

#[test]
fn set_vring_enable_stops_and_resumes_processing() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut s = server.session(&guest, &Options::default(), 16)?;
    let fe = &mut s.fe;
    let dq = &mut s.queues[0];
    ensure!(dq.run_echo(&echo_requests(4, 1), 4, TIMEOUT)?.len() == 4);
    vh(fe.set_vring_enable(0, false), "SET_VRING_ENABLE 0")?;
    let kicks = server.status().queues[0].kicks;
    let before = server.device().completion_count();
    let head = dq.submit(b"disabled", 16)?;
    dq.kick()?;
    // Wait until the worker has seen the kick; a disabled ring must not process it.
    let deadline = Instant::now() + TIMEOUT;
    while server.status().queues[0].kicks == kicks {
        if Instant::now() >= deadline {
            bail!("the kick never reached the worker");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    ensure!(
        dq.device_used_idx()? == 4,
        "disabled ring processed a request"
    );
    ensure!(server.device().completion_count() == before);
    ensure!(!server.status().queues[0].enabled);
    // Enabling resumes without another kick.
    vh(fe.set_vring_enable(0, true), "SET_VRING_ENABLE 1")?;
    let used = dq.wait_used(1, TIMEOUT)?;
    ensure!(used[0].id == head as u32);
    ensure!(used[0].data == expected_response(0, b"disabled", 16));
    Ok(())
}

#[test]
fn set_vring_call_can_be_replaced_while_running() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut s = server.session(&guest, &Options::default(), 16)?;
    let dq = &mut s.queues[0];
    ensure!(dq.run_echo(&echo_requests(3, 1), 2, TIMEOUT)?.len() == 3);
    let new_call = EventFd::new(libc::EFD_NONBLOCK)?;
    vh(s.fe.set_vring_call(0, &new_call), "SET_VRING_CALL")?;
    let _ = dq.take_call();
    // The eventfd it replaced had been signalled: the new one is signalled once at once, for
    // completions a front-end that stopped reading the old one would never pass on.
    ensure!(
        vu_tests::frontend::wait_readable(std::os::fd::AsRawFd::as_raw_fd(&new_call), TIMEOUT)?,
        "the new call eventfd was not signalled for the old one's notifications"
    );
    ensure!(
        new_call.read()? == 1,
        "more than one notification on replacement"
    );
    ensure!(dq.collect()?.is_empty());
    dq.submit(b"new call", 16)?;
    dq.kick()?;
    ensure!(
        vu_tests::frontend::wait_readable(std::os::fd::AsRawFd::as_raw_fd(&new_call), TIMEOUT)?,
        "no notification on the new call eventfd"
    );
    ensure!(dq.collect()?.len() == 1);
    ensure!(!dq.take_call(), "old call eventfd still signalled");
    Ok(())
}

#[test]
fn reset_device_stops_everything_and_allows_a_new_start() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut s = server.session(&guest, &Options::event_idx(), 16)?;
    for dq in &mut s.queues {
        ensure!(dq.run_echo(&echo_requests(5, 1), 4, TIMEOUT)?.len() == 5);
    }
    server.device().clear_calls();
    vh(s.fe.reset_device(), "RESET_DEVICE")?;
    let calls = server.device().calls();
    for c in [Call::StopQueue(0), Call::StopQueue(1), Call::Reset] {
        ensure!(calls.contains(&c), "{c:?} missing from {calls:?}");
    }
    let st = server.status();
    ensure!(st.queues.iter().all(|q| !q.started), "{st:?}");
    ensure!(
        st.acked_features == 0,
        "features survive RESET_DEVICE: {st:?}"
    );

    // Start again, as a driver does after a reset: features, memory, fresh rings.
    vh(s.fe.set_features(s.neg.features), "SET_FEATURES")?;
    vh(
        s.fe.set_mem_table(&guest.regions_info(&[0, 1])),
        "SET_MEM_TABLE",
    )?;
    for q in 0..2 {
        let mut dq = DriverQueue::new(&guest, q, 8, 0)?;
        dq.set_event_idx(true)?;
        dq.setup(&mut s.fe, true)?;
        ensure!(dq.run_echo(&echo_requests(20, 7), 3, TIMEOUT)?.len() == 20);
    }
    Ok(())
}

/// Dirty-page logging for migration (LOG_ALL + LOG_SHMFD): pages the device writes (data
/// buffers, and with VRING_F_LOG the used ring) are marked in the shared log, one bit per
/// 4 KiB guest page; pages it does not write are not. SET_LOG_BASE is sent by hand: its reply
/// is checked leniently (QEMU accepts any reply payload; see the test report).
#[test]
fn dirty_log_marks_the_pages_the_device_writes() -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    use vu_tests::frontend::raw;

    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut s = server.session(&guest, &Options::default(), 16)?;
    ensure!(s.neg.offered_features & vu_tests::frontend::bits::LOG_ALL != 0);
    // The log: 4 KiB cover 128 MiB of guest memory.
    let log = nix::sys::memfd::memfd_create("log", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    nix::unistd::ftruncate(&log, 4096)?;
    let log = std::fs::File::from(log);
    let mut p = 4096u64.to_ne_bytes().to_vec();
    p.extend_from_slice(&0u64.to_ne_bytes());
    let r = raw::request_on(
        s.fe.as_raw_fd(),
        6, // SET_LOG_BASE
        &p,
        &[log.as_raw_fd()],
    )?;
    match r {
        raw::Reply::Msg(m) => ensure!(m.request == 6, "{m:?}"),
        raw::Reply::Closed => bail!("SET_LOG_BASE closed the connection"),
    }
    // Migration starts: LOG_ALL, and used-ring logging on queue 0.
    vh(
        s.fe.set_features(s.neg.features | vu_tests::frontend::bits::LOG_ALL),
        "SET_FEATURES | LOG_ALL",
    )?;
    let dq = &mut s.queues[0];
    let (_, _, used_gpa) = dq.ring_gpas();
    let mut cfg = dq.config_data()?;
    cfg.flags = 1; // VHOST_VRING_F_LOG
    cfg.log_addr = Some(used_gpa);
    vh(
        s.fe.set_vring_addr(0, &cfg),
        "SET_VRING_ADDR with VRING_F_LOG",
    )?;

    let (r1, _) = guest.region_range(1);
    let (req_at, resp_at, untouched) = (r1 + 0x3_0000, r1 + 0x5_3000, r1 + 0x7_0000);
    guest.write(req_at, b"log me")?;
    let head = dq.add(&[Buf::r(req_at, 6), Buf::w(resp_at, 6)])?;
    dq.kick()?;
    let used = dq.wait_used(1, TIMEOUT)?;
    ensure!(used[0].id == head as u32 && used[0].len == 6);

    let mut bits = vec![0u8; 4096];
    log.read_exact_at(&mut bits, 0)?;
    let marked = |gpa: u64| {
        let page = gpa / 4096;
        bits[(page / 8) as usize] & (1 << (page % 8)) != 0
    };
    ensure!(marked(resp_at), "response page not marked");
    ensure!(marked(used_gpa), "used ring page not marked");
    ensure!(!marked(req_at), "a page the device only read is marked");
    ensure!(!marked(untouched), "an untouched page is marked");
    Ok(())
}

/// SET_LOG_BASE as a rust-vmm front-end (Cloud Hypervisor's) sends it at migration start:
/// the vhost crate waits for the 16-byte log description back as the reply.
#[test]
fn set_log_base_through_the_vhost_crate() -> Result<()> {
    use std::os::fd::AsRawFd;

    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let s = server.session(&guest, &Options::default(), 16)?;
    let log = nix::sys::memfd::memfd_create("log", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    nix::unistd::ftruncate(&log, 4096)?;
    let region = vhost::VhostUserDirtyLogRegion {
        mmap_size: 4096,
        mmap_offset: 0,
        mmap_handle: log.as_raw_fd(),
    };
    let fe = s.fe.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(fe.set_log_base(0, Some(region)).map_err(|e| e.to_string()));
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(r) => r.map_err(|e| anyhow::anyhow!("SET_LOG_BASE: {e}")),
        Err(_) => bail!(
            "SET_LOG_BASE: the vhost crate front-end is still waiting for the reply after \
             {TIMEOUT:?} (the back-end's reply is shorter than the 16-byte log description it \
             expects)"
        ),
    }
}
