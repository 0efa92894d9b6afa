//! Device state moves into a fresh process: mid-workload, `sleep` -> `snapshot --out F` ->
//! `restart` (a new device process) -> `sleep` -> `restore --in F` -> `wake`; the guest's fio
//! continues and verifies. A snapshot with a flipped byte, and a truncated one, are refused
//! with a reason, change nothing, and the device keeps serving; so is a well-formed snapshot
//! of a differently configured device.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vu_tests::e2e::{CMD, POWEROFF};
use vu_tests::guest::Guest;
use vu_tests::supervisor::{
    fio_finish, fio_running, fio_start, DevStatus, SupervisedBlock, RECONNECT_TIMEOUT,
};

const DEV: &str = "data0";

fn fio(tag: &str, seed: u32) -> String {
    format!(
        "fio --name={tag} --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=16 \
         --rw=randwrite --bs=4k --size=48m --verify=crc32c --verify_fatal=1 --do_verify=1 \
         --randseed={seed} --rate_iops=500"
    )
}

/// The refusal of a bad snapshot: exit status 1 and a reason.
fn refused(rig: &SupervisedBlock, file: &str, what: &str) -> Result<String> {
    let out = rig.ctl.run(&["restore", DEV, "--in", file])?;
    ensure!(
        !out.success(),
        "restore of a {what} snapshot succeeded:\n{out}"
    );
    ensure!(
        out.code == 1,
        "restore of a {what} snapshot: exit {} (want 1)\n{out}",
        out.code
    );
    let reason = out.both().trim().to_owned();
    ensure!(
        !reason.is_empty(),
        "restore of a {what} snapshot was refused without a reason"
    );
    eprintln!("{what} snapshot refused: {reason}");
    Ok(reason)
}

fn move_state(rig: &SupervisedBlock, g: &Guest) -> Result<()> {
    let snap = rig.dir.path().join("dev.snap");
    let snap_s = snap.display().to_string();
    fio_start(g, "move", &fio("move", 31))?;
    rig.ctl.wait_io(DEV, 200, Duration::from_secs(300))?;

    rig.ctl_ok(&["sleep", "{dev}"])?;
    rig.ctl_ok(&["snapshot", "{dev}", "--out", &snap_s])?;
    let len = std::fs::metadata(&snap).context("the snapshot file")?.len();
    ensure!(len > 0, "snapshot file is empty");
    let old = rig.status()?;
    let old_pid = old.pid.context("no pid before restart")?;

    rig.ctl_ok(&["restart", "{dev}"])?;
    let new = rig
        .ctl
        .wait_status(DEV, "serving from a new process", RECONNECT_TIMEOUT, |s| {
            s.pid.is_some_and(|p| p != old_pid) && s.frontend_connected == Some(true)
        })?;
    ensure!(
        fio_running(g, "move")?,
        "fio ended before the restore: the move was not mid-workload"
    );
    rig.ctl_ok(&["sleep", "{dev}"])?;
    rig.ctl_ok(&["restore", "{dev}", "--in", &snap_s])?;
    rig.ctl_ok(&["wake", "{dev}"])?;
    let after = rig.status()?;
    ensure!(
        after.state == "running" && after.pid == new.pid,
        "status after restore and wake: {after:?} (new process was {:?})",
        new.pid
    );
    let log = fio_finish(g, "move", CMD)?;
    eprintln!("{log}");
    Ok(())
}

fn bad_snapshots(rig: &SupervisedBlock, g: &Guest) -> Result<()> {
    let good = rig.dir.path().join("good.snap");
    fio_start(g, "bad", &fio("bad", 32))?;
    rig.ctl.wait_io(DEV, 200, Duration::from_secs(300))?;
    rig.ctl_ok(&["sleep", "{dev}"])?;
    rig.ctl_ok(&["snapshot", "{dev}", "--out", &good.display().to_string()])?;
    let bytes = std::fs::read(&good)?;
    ensure!(bytes.len() > 32, "snapshot of {} bytes", bytes.len());

    let mut flipped = bytes.clone();
    let mid = bytes.len() / 2;
    flipped[mid] ^= 0x40;
    let flipped_path = rig.dir.path().join("flipped.snap");
    std::fs::write(&flipped_path, &flipped)?;
    let truncated_path = rig.dir.path().join("truncated.snap");
    std::fs::write(&truncated_path, &bytes[..bytes.len() * 2 / 3])?;

    // A well-formed snapshot of another device: two queues, a smaller disk.
    let other = SupervisedBlock::new(16 << 20, Some("other0"), &["--num-queues", "2"])?;
    let foreign_path = rig.dir.path().join("foreign.snap");
    other.ctl_ok(&["sleep", "{dev}"])?;
    other.ctl_ok(&[
        "snapshot",
        "{dev}",
        "--out",
        &foreign_path.display().to_string(),
    ])?;
    other.launcher.terminate()?;

    let before = rig.status()?;
    refused(rig, &flipped_path.display().to_string(), "corrupt")?;
    refused(rig, &truncated_path.display().to_string(), "truncated")?;
    refused(rig, &foreign_path.display().to_string(), "mismatched")?;
    // Nothing changed: same process, still asleep, nothing failed.
    let st = rig.status()?;
    ensure!(
        st.pid == before.pid && st.state == "asleep",
        "a refused restore changed the device: {before:?} -> {st:?}"
    );
    rig.ctl_ok(&["wake", "{dev}"])?;
    // The device keeps serving: fio finishes and verifies.
    let log = fio_finish(g, "bad", CMD)?;
    eprintln!("{log}");
    let st = rig.status()?;
    ensure!(
        DevStatus::serving(&st) && st.pid == before.pid,
        "after the refused restores: {st:?}"
    );
    Ok(())
}

#[test]
fn snapshot_restart_restore_mid_workload_and_bad_snapshots_are_refused() -> Result<()> {
    let rig = SupervisedBlock::new(64 << 20, Some(DEV), &[])?;
    let guest = rig.boot()?;
    rig.report(&guest, move_state(&rig, &guest))?;
    rig.report(&guest, bad_snapshots(&rig, &guest))?;
    guest.poweroff(POWEROFF)?;
    rig.launcher.terminate()?;
    Ok(())
}
