//! `launcher ctl` on an rng device while a guest reads /dev/hwrng: `sleep` stops the device
//! touching the guest (no byte served, the guest's read stalls) until `wake`; `sleep` ->
//! `snapshot --out F` -> `restart` (a new process, QEMU reconnects) -> `sleep` ->
//! `restore --in F` -> `wake` moves it into a fresh process and the read completes; a
//! corrupted snapshot is refused and changes nothing. The read ends with every byte, random.
//! (QEMU 9.0 and later cannot reconnect a `vhost-user-rng-pci`: there the device is plugged
//! again after the restart and the guest's read starts again on it; see `vu_tests::rng`.)

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vu_tests::e2e::POWEROFF;
use vu_tests::guest::Guest;
use vu_tests::rng::{
    check_random, field, finish_background, read_in_background, read_so_far, reading, RngRig,
};

const DEV: &str = "rng7";
const BYTES: u64 = 16 << 20;

fn served(rig: &RngRig) -> Result<u64> {
    field(&rig.status()?, "bytes_total").context("no bytes_total in status")
}

/// Waits until the device has served `n` more bytes (the guest's read is flowing).
fn flowing(rig: &RngRig, n: u64) -> Result<()> {
    let base = served(rig)?;
    rig.ctl
        .wait_status(DEV, "serving the guest", Duration::from_secs(300), |s| {
            field(s, "bytes_total").unwrap_or(0) >= base + n
        })?;
    Ok(())
}

fn asleep_touches_nothing(rig: &RngRig, g: &Guest) -> Result<()> {
    flowing(rig, 64 << 10)?;
    rig.ctl.ok(&["sleep", DEV])?;
    let st = rig.status()?;
    ensure!(st.state == "asleep", "after sleep: {st:?}");
    let (dev0, guest0) = (served(rig)?, read_so_far(g, "r")?);
    std::thread::sleep(Duration::from_secs(3));
    let (dev1, guest1) = (served(rig)?, read_so_far(g, "r")?);
    ensure!(
        dev1 == dev0,
        "asleep, the device served {} bytes",
        dev1 - dev0
    );
    ensure!(
        guest1 == guest0,
        "asleep, the guest's read grew by {} bytes",
        guest1 - guest0
    );
    ensure!(reading(g, "r")?, "the read ended while the device slept");
    rig.ctl.ok(&["wake", DEV])?;
    ensure!(rig.status()?.state == "running", "not running after wake");
    flowing(rig, 64 << 10)
}

fn moves_into_a_new_process(rig: &RngRig, g: &Guest) -> Result<()> {
    let snap = rig.dir.path().join("rng.snap");
    let snap_s = snap.display().to_string();
    rig.ctl.ok(&["sleep", DEV])?;
    rig.ctl.ok(&["snapshot", DEV, "--out", &snap_s])?;
    let bytes = std::fs::read(&snap).context("the snapshot file")?;
    ensure!(!bytes.is_empty(), "empty snapshot file");
    let old = rig.status()?.pid.context("no pid")?;
    rig.ctl.ok(&["restart", DEV])?;
    let new = rig.wait_back(g, Some(old))?;
    rig.resume_read(g, "r", BYTES)?;
    ensure!(reading(g, "r")?, "the read ended before the restore");
    rig.ctl.ok(&["sleep", DEV])?;

    // A corrupted snapshot is refused and leaves the device as it was.
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x20;
    let bad = rig.dir.path().join("flipped.snap");
    std::fs::write(&bad, &flipped)?;
    let out = rig
        .ctl
        .run(&["restore", DEV, "--in", &bad.display().to_string()])?;
    ensure!(
        out.code == 1 && !out.both().trim().is_empty(),
        "a corrupted snapshot: {out}"
    );
    let st = rig.status()?;
    ensure!(
        st.state == "asleep" && st.pid == new.pid,
        "a refused restore changed the device: {st:?}"
    );

    rig.ctl.ok(&["restore", DEV, "--in", &snap_s])?;
    rig.ctl.ok(&["wake", DEV])?;
    let st = rig.status()?;
    ensure!(
        st.state == "running" && st.pid == new.pid,
        "after restore and wake: {st:?}"
    );
    flowing(rig, 64 << 10)
}

fn run(rig: &RngRig, g: &Guest) -> Result<()> {
    read_in_background(g, "r", BYTES)?;
    asleep_touches_nothing(rig, g)?;
    moves_into_a_new_process(rig, g)?;
    let path = finish_background(g, "r", BYTES, Duration::from_secs(1200))?;
    check_random(g, &path)
}

#[test]
fn sleep_wake_snapshot_restart_restore_while_the_guest_reads() -> Result<()> {
    let rig = RngRig::new(DEV, &[])?;
    let guest = rig.boot()?;
    rig.report(&guest, run(&rig, &guest))?;
    guest.poweroff(POWEROFF)?;
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
