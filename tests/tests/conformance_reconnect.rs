//! Conformance: front-end disconnect and reconnect. The back-end resets the device when the
//! front-end goes away and serves the next one, which may start afresh or continue on the
//! same rings (as QEMU does with `reconnect=`).

use std::sync::mpsc;

use anyhow::{ensure, Context, Result};
use vhost::VhostBackend;
use vu_tests::frontend::{echo_requests, negotiate, vh, Options, TestGuest, TestServer, TIMEOUT};
use vu_tests::test_device::{expected_response, Call};

#[test]
fn a_second_frontend_is_served_after_the_first_leaves() -> Result<()> {
    let server = TestServer::start_default()?;
    let guest = TestGuest::standard()?;
    let mut s = server.session(&guest, &Options::event_idx(), 16)?;
    for dq in &mut s.queues {
        ensure!(dq.run_echo(&echo_requests(20, 1), 4, TIMEOUT)?.len() == 20);
    }
    drop(s);
    ensure!(
        server.device().wait_call(TIMEOUT, |c| *c == Call::Reset),
        "device not reset after disconnect"
    );
    let calls = server.device().calls();
    let reset = calls
        .iter()
        .position(|c| *c == Call::Reset)
        .context("reset")?;
    for q in 0..2 {
        let stop = calls
            .iter()
            .position(|c| *c == Call::StopQueue(q))
            .context("stop")?;
        ensure!(stop < reset, "queue {q} stopped after the reset: {calls:?}");
    }
    server.device().clear_calls();

    // A different guest, a fresh start.
    let guest2 = TestGuest::standard()?;
    let mut s2 = server.session(&guest2, &Options::default(), 8)?;
    let st = server.status();
    ensure!(
        st.memory_regions == 2 && st.acked_features == s2.neg.features,
        "{st:?}"
    );
    for dq in &mut s2.queues {
        ensure!(dq.run_echo(&echo_requests(30, 2), 3, TIMEOUT)?.len() == 30);
    }
    ensure!(server.device().calls().contains(&Call::StartQueue(0)));
    ensure!(server.is_alive());
    Ok(())
}

#[test]
fn a_reconnecting_frontend_continues_on_the_same_rings() -> Result<()> {
    let server = TestServer::start_default()?;
    let guest = TestGuest::standard()?;
    let s = server.session(&guest, &Options::event_idx(), 16)?;
    let (fe, mut queues) = (s.fe, s.queues);
    for dq in &mut queues {
        ensure!(dq.run_echo(&echo_requests(25, 1), 5, TIMEOUT)?.len() == 25);
    }
    drop(fe);
    ensure!(server.device().wait_call(TIMEOUT, |c| *c == Call::Reset));

    // Same guest memory, same rings: the new front-end restores the ring bases.
    let mut fe = server.connect()?;
    negotiate(&mut fe, &Options::event_idx())?;
    vh(
        fe.set_mem_table(&guest.regions_info(&[0, 1])),
        "SET_MEM_TABLE",
    )?;
    for dq in &mut queues {
        ensure!(dq.device_used_idx()? == 25);
        dq.setup(&mut fe, true)?;
        ensure!(dq.run_echo(&echo_requests(40, 2), 6, TIMEOUT)?.len() == 40);
        ensure!(vh(fe.get_vring_base(dq.index()), "GET_VRING_BASE")? == 65);
    }
    Ok(())
}

#[test]
fn disconnect_completes_requests_the_device_holds() -> Result<()> {
    let server = TestServer::start_default()?;
    let guest = TestGuest::standard()?;
    let dev = server.device().clone();
    let s = server.session(&guest, &Options::default(), 16)?;
    let (fe, mut queues) = (s.fe, s.queues);
    let dq = &mut queues[0];
    dev.set_hold(true);
    dq.submit(b"held at disconnect 1", 32)?;
    dq.submit(b"held at disconnect 2", 32)?;
    dq.kick()?;
    ensure!(dev.wait_held(0, 2, TIMEOUT));
    drop(fe);
    ensure!(dev.wait_call(TIMEOUT, |c| *c == Call::Reset));
    // The device drained before the reset: both requests reached the used ring.
    let used = dq.collect()?;
    ensure!(used.len() == 2, "{used:?}");
    ensure!(used[0].data == expected_response(0, b"held at disconnect 1", 32));
    ensure!(used[1].data == expected_response(0, b"held at disconnect 2", 32));
    ensure!(dev.held(0) == 0);
    Ok(())
}

#[test]
fn one_frontend_at_a_time() -> Result<()> {
    let server = TestServer::start_default()?;
    let guest = TestGuest::standard()?;
    let mut s = server.session(&guest, &Options::default(), 8)?;
    // A second front-end connects (the kernel queues it) and asks for the features.
    let second = server.connect()?;
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let r = second.get_features().map_err(|e| e.to_string());
        let _ = tx.send(r);
        second
    });
    // The first one keeps working undisturbed.
    ensure!(
        s.queues[0]
            .run_echo(&echo_requests(10, 1), 4, TIMEOUT)?
            .len()
            == 10
    );
    ensure!(
        rx.try_recv().is_err(),
        "the second front-end was served while the first was connected"
    );
    drop(s);
    let features = rx
        .recv_timeout(TIMEOUT)
        .context("second front-end never served")?
        .map_err(|e| anyhow::anyhow!("GET_FEATURES: {e}"))?;
    ensure!(features & vu_tests::frontend::bits::PROTOCOL_FEATURES != 0);
    let _second = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("waiter panicked"))?;
    Ok(())
}

#[test]
fn server_shutdown_with_a_connected_frontend() -> Result<()> {
    let server = TestServer::start_default()?;
    let guest = TestGuest::standard()?;
    let dev = server.device().clone();
    let mut s = server.session(&guest, &Options::default(), 8)?;
    ensure!(
        s.queues[1]
            .run_echo(&echo_requests(5, 1), 2, TIMEOUT)?
            .len()
            == 5
    );
    server.stop()?;
    ensure!(dev.calls().contains(&Call::Reset), "no reset on shutdown");
    // The front-end sees the socket closed.
    ensure!(
        s.fe.get_features().is_err(),
        "back-end still answering after shutdown"
    );
    Ok(())
}
