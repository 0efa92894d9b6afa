//! Coverage audit of the net device's seccomp policy (`net_device.policy`) against the real
//! workload, with the audit of `vu_tests::audit` (strace, every call of the device's threads
//! after its filter checked against the parsed policy, arguments included; unused rules must
//! say `cold-path:`).
//!
//! The workload, in a network namespace the test creates, with two queue pairs and a
//! multi-queue tap: a two-vCPU guest (QEMU reconnecting) moves data both ways over two flows;
//! sleep and wake; sleep, snapshot, restart (a new process), restore, wake; the device killed
//! (SIGKILL) during a transfer, respawned and reconnected; the guest powered off; a second
//! front-end (rust-vmm's) that asks for an inflight area, receives and transmits frames and
//! disables and enables a receive ring (the tap queue is detached and attached); a third
//! front-end, a one-vCPU guest; the device's shutdown (SIGTERM).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vu_tests::audit::{run_audit, Run};
use vu_tests::e2e::POWEROFF;
use vu_tests::frontend::{bits, negotiate, vh, DriverQueue, Options, TestGuest};
use vu_tests::net::{transfer, NetRig, Plan};
use vu_tests::supervisor::{sigkill, RECONNECT_TIMEOUT};

const DEV: &str = "net0";
const MIB: u64 = 1 << 20;

#[test]
fn net_policy_covers_the_workload_and_nothing_is_unexplained() -> Result<()> {
    run_audit(
        "net",
        vec![Run {
            name: "mq",
            extra: &[],
            workload: Box::new(workload),
        }],
    )
}

/// The device process of the launcher (under strace, the launcher is strace's child and the
/// device the launcher's).
fn device_pid(rig: &NetRig) -> Result<u32> {
    let st = rig.ctl().status(DEV)?;
    st.pid.context("no device process")
}

fn wait_serving(rig: &NetRig, old: Option<u32>) -> Result<u32> {
    let st = rig
        .ctl()
        .wait_status(DEV, "serving", RECONNECT_TIMEOUT, |s| {
            s.serving() && (old.is_none() || s.pid != old)
        })?;
    st.pid.context("no device process")
}

fn workload() -> Result<()> {
    let rig = NetRig::new(2, &[])?;
    let ctl = rig.ctl();
    let guest = rig.boot(2, true)?;
    let progress = Arc::new(AtomicU64::new(0));
    let plan = |port| Plan {
        flows: 2,
        bytes: 8 * MIB,
        port,
    };
    let r = (|| -> Result<()> {
        transfer(&rig.netns, &guest, plan(5000), &progress)?;
        ctl.ok(&["sleep", DEV])?;
        ctl.ok(&["wake", DEV])?;
        let snap = rig.dir.path().join("s.bin").display().to_string();
        ctl.ok(&["sleep", DEV])?;
        ctl.ok(&["snapshot", DEV, "--out", &snap])?;
        let before = device_pid(&rig)?;
        ctl.ok(&["restart", DEV])?;
        ctl.wait_status(DEV, "restarted", RECONNECT_TIMEOUT, |s| {
            s.pid.is_some() && s.pid != Some(before)
        })?;
        ctl.ok(&["sleep", DEV])?;
        ctl.ok(&["restore", DEV, "--in", &snap])?;
        ctl.ok(&["wake", DEV])?;
        wait_serving(&rig, None)?;
        transfer(&rig.netns, &guest, plan(5200), &progress)?;
        // Killed during a transfer.
        let pid = device_pid(&rig)?;
        std::thread::scope(|s| -> Result<()> {
            let t = s.spawn(|| transfer(&rig.netns, &guest, plan(5400), &progress));
            let start = progress.load(Ordering::Relaxed);
            let deadline = Instant::now() + Duration::from_secs(300);
            while progress.load(Ordering::Relaxed) < start + 8 * MIB && !t.is_finished() {
                ensure!(Instant::now() < deadline, "the transfer does not move");
                std::thread::sleep(Duration::from_millis(20));
            }
            sigkill(pid)?;
            wait_serving(&rig, Some(pid))?;
            t.join()
                .map_err(|_| anyhow::anyhow!("transfer thread panicked"))??;
            Ok(())
        })
    })();
    rig.report(&guest, r)?;
    guest.poweroff(POWEROFF)?;
    drop(guest);
    rig.launcher
        .wait_for_line("waiting for the next one", Duration::from_secs(60))?;
    second_front_end(&rig)?;
    let third = rig.boot(1, false)?;
    let r = transfer(
        &rig.netns,
        &third,
        Plan {
            flows: 1,
            bytes: MIB,
            port: 5600,
        },
        &progress,
    );
    rig.report(&third, r)?;
    third.poweroff(POWEROFF)?;
    drop(third);
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

/// rust-vmm's front-end: an inflight area (QEMU's vhost-user-net asks for none), a frame
/// each way, and a receive ring disabled and enabled again.
fn second_front_end(rig: &NetRig) -> Result<()> {
    let guest = TestGuest::standard()?;
    let mut fe = vh(Frontend::connect(&rig.socket, 4), "connect")?;
    let neg = negotiate(&mut fe, &Options::event_idx())?;
    ensure!(neg.features & bits::VERSION_1 != 0, "no VERSION_1");
    let want = VhostUserInflight {
        mmap_size: 0,
        mmap_offset: 0,
        num_queues: 4,
        queue_size: 256,
    };
    let (info, file) = vh(fe.get_inflight_fd(&want), "GET_INFLIGHT_FD")?;
    vh(
        fe.set_inflight_fd(&info, file.as_raw_fd()),
        "SET_INFLIGHT_FD",
    )?;
    vh(
        fe.set_mem_table(&guest.regions_info(&[0, 1])),
        "SET_MEM_TABLE",
    )?;
    // Both receive rings: the tap steers a frame to either queue.
    let mut rx = DriverQueue::new(&guest, 0, 256, 0)?;
    let mut tx = DriverQueue::new(&guest, 1, 256, 0)?;
    let mut rx1 = DriverQueue::new(&guest, 2, 256, 1)?;
    for q in [&mut rx, &mut tx, &mut rx1] {
        q.set_event_idx(neg.features & bits::EVENT_IDX != 0)?;
        q.setup(&mut fe, true)?;
    }
    for q in [&mut rx, &mut rx1] {
        for _ in 0..8 {
            q.submit_sg(&[], &[512; 4])?;
        }
        q.kick()?;
    }
    // A broadcast ARP request: 12-byte header (no offloads), then the frame.
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&[0x52, 0x54, 0, 0x77, 0, 0x09]);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&[0x52, 0x54, 0, 0x77, 0, 0x09, 10, 77, 0, 9]);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&[10, 77, 0, 1]);
    frame.resize(12 + 60, 0);
    tx.submit_sg(&[&frame], &[])?;
    tx.kick()?;
    tx.wait_used(1, Duration::from_secs(60))?;
    // The host answers the ARP request: a frame for one of the receive rings.
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let mut got = rx.collect()?;
        got.extend(rx1.collect()?);
        if !got.is_empty() {
            break got;
        }
        ensure!(Instant::now() < deadline, "no frame received in 60 s");
        // Two rings to watch, no notification to wait for on both: poll.
        std::thread::sleep(Duration::from_millis(10));
    };
    ensure!(got[0].len > 12, "an empty frame: {got:?}");
    vh(fe.set_vring_enable(0, false), "SET_VRING_ENABLE 0")?;
    vh(fe.set_vring_enable(0, true), "SET_VRING_ENABLE 1")?;
    Ok(())
}
