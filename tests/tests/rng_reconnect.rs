//! The rng device killed (SIGKILL) while a guest reads /dev/hwrng: the supervisor starts a
//! new process on the same socket, QEMU's chardev reconnects (`reconnect`) and resumes the
//! device, the requests the dead process had taken are fetched again (QEMU rewinds the ring
//! to the used index), and the guest's read completes with every byte it asked for, random.
//! Once while the device streams without a limit (three kills), once while the rate limit
//! holds the guest's request in the device (the kill lands while it waits).
//!
//! QEMU 9.0 and later cannot reconnect a `vhost-user-rng-pci` (it aborts; see
//! `vu_tests::rng`): there the device is plugged again after each kill, the unplug ends the
//! guest's read with an error, and a read started on the new device must complete.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vu_tests::e2e::POWEROFF;
use vu_tests::guest::Guest;
use vu_tests::rng::{
    check_random, field, finish_background, read_in_background, read_so_far, reading, RngRig,
};
use vu_tests::supervisor::{pid_alive, sigkill, DevStatus};

/// Kills the device process and waits for its successor to serve the guest again.
fn kill_and_wait(rig: &RngRig, g: &Guest, n: u64) -> Result<DevStatus> {
    let st = rig.status()?;
    let pid = st.pid.context("no device process")?;
    sigkill(pid)?;
    let new = rig.wait_back(g, Some(pid))?;
    ensure!(!pid_alive(pid), "killed process {pid} is still there");
    ensure!(new.restarts == Some(n), "restarts after kill {n}: {new:?}");
    ensure!(
        new.last_exit
            .as_deref()
            .is_some_and(|e| e.contains("SIGKILL") || e.contains("signal 9")),
        "last exit does not say SIGKILL: {new:?}"
    );
    Ok(new)
}

/// Waits until the device has served `n` more bytes than now.
fn wait_served(rig: &RngRig, n: u64) -> Result<()> {
    let base = field(&rig.status()?, "bytes_total").context("bytes_total")?;
    rig.ctl.wait_status(
        &rig.name,
        &format!("{n} more bytes served"),
        Duration::from_secs(300),
        |s| field(s, "bytes_total").unwrap_or(0) >= base + n,
    )?;
    Ok(())
}

fn streaming(rig: &RngRig, g: &Guest) -> Result<()> {
    const BYTES: u64 = 8 << 20;
    read_in_background(g, "stream", BYTES)?;
    for n in 1..=3 {
        wait_served(rig, 64 << 10)?;
        ensure!(reading(g, "stream")?, "the read ended before kill {n}");
        kill_and_wait(rig, g, n)?;
        rig.resume_read(g, "stream", BYTES)?;
    }
    let path = finish_background(g, "stream", BYTES, Duration::from_secs(900))?;
    check_random(g, &path)
}

fn held_by_the_limit(rig: &RngRig, g: &Guest) -> Result<()> {
    const BYTES: u64 = 32 << 10;
    read_in_background(g, "held", BYTES)?;
    // The first window's budget is spent at once; the guest's next request then waits in
    // the device for the next window.
    rig.ctl.wait_status(
        &rig.name,
        "waiting for the rate limit",
        Duration::from_secs(300),
        |s| field(s, "rate_limit_waits_total").unwrap_or(0) > 0,
    )?;
    let before = read_so_far(g, "held")?;
    ensure!(before < BYTES, "the read ended before the kill");
    kill_and_wait(rig, g, 1)?;
    rig.resume_read(g, "held", BYTES)?;
    let path = finish_background(g, "held", BYTES, Duration::from_secs(600))?;
    ensure!(
        g.run_ok(&format!("wc -c < {path}"), vu_tests::e2e::CMD)?
            .trim()
            == BYTES.to_string(),
        "short read"
    );
    Ok(())
}

fn with_guest(rig: RngRig, f: fn(&RngRig, &Guest) -> Result<()>) -> Result<()> {
    let guest = rig.boot()?;
    rig.report(&guest, f(&rig, &guest))?;
    guest.poweroff(POWEROFF)?;
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

#[test]
fn a_killed_device_comes_back_and_the_guest_reads_on() -> Result<()> {
    with_guest(RngRig::new("stream0", &[])?, streaming)
}

#[test]
fn requests_the_limit_held_are_served_by_the_next_process() -> Result<()> {
    let rig = RngRig::new("held0", &["--max-bytes", "4096", "--period", "1000"])?;
    with_guest(rig, held_by_the_limit)
}
