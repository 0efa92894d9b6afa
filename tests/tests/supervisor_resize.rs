//! `launcher ctl resize` grows a disk under a running guest: the image grows, the device's
//! capacity follows, the guest is told (config change) and sees the new size in
//! /sys/block/vda/size without a reboot, and it can write to the new area. Shrinking and an
//! unaligned size are refused and change nothing.

use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use vu_tests::e2e::{pattern, pattern_cmd, CMD, POWEROFF};
use vu_tests::guest::Guest;
use vu_tests::supervisor::SupervisedBlock;

const DEV: &str = "grow0";
const OLD: u64 = 64 << 20;
const NEW: u64 = 96 << 20;
/// How long the guest may take to notice the config change.
const NOTICE: Duration = Duration::from_secs(60);
/// Blocks written past the old end.
const BLOCKS: usize = 64;

fn sectors(g: &Guest) -> Result<u64> {
    Ok(g.run_ok("cat /sys/block/vda/size", CMD)?.trim().parse()?)
}

fn run(rig: &SupervisedBlock, g: &Guest) -> Result<()> {
    ensure!(
        sectors(g)? == OLD / 512,
        "guest sees {} sectors",
        sectors(g)?
    );
    let pid = rig.status()?.pid;

    rig.ctl_ok(&["resize", "{dev}", "96M"])?;
    ensure!(
        std::fs::metadata(&rig.image)?.len() == NEW,
        "the image is {} bytes after resize to {NEW}",
        std::fs::metadata(&rig.image)?.len()
    );
    let st = rig.status()?;
    ensure!(
        st.capacity_bytes == Some(NEW),
        "status after resize: {st:?}"
    );
    ensure!(st.pid == pid, "resize restarted the device: {st:?}");

    // The guest learns of the new size by itself (no rescan, no reboot): poll for it.
    let deadline = Instant::now() + NOTICE;
    loop {
        let n = sectors(g)?;
        if n == NEW / 512 {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "after {NOTICE:?} the guest still sees {n} sectors (want {})",
                NEW / 512
            );
        }
        // The guest has no event we can wait on from here; poll its sysfs.
        std::thread::sleep(Duration::from_millis(500));
    }
    let bytes = g.run_ok("blockdev --getsize64 /dev/vda", CMD)?;
    ensure!(bytes.trim() == NEW.to_string(), "blockdev says {bytes}");

    // Write into the new area (starting right at the old end), read it back in the guest.
    let seek = OLD / 4096;
    g.run_ok(&pattern_cmd("GROW", BLOCKS, "/tmp/grow.bin"), CMD)?;
    g.run_ok(
        &format!("dd if=/tmp/grow.bin of=/dev/vda bs=4096 seek={seek} oflag=direct conv=fsync"),
        CMD,
    )?;
    g.run_ok(
        &format!(
            "dd if=/dev/vda of=/tmp/back.bin bs=4096 skip={seek} count={BLOCKS} iflag=direct \
             && cmp /tmp/grow.bin /tmp/back.bin"
        ),
        CMD,
    )?;
    // And the bytes are in the image, past the old end.
    let want = pattern("GROW", BLOCKS);
    let mut got = vec![0u8; want.len()];
    let mut f = std::fs::File::open(&rig.image)?;
    f.seek(SeekFrom::Start(OLD))?;
    f.read_exact(&mut got)?;
    ensure!(
        got == want,
        "the image does not hold what the guest wrote past the old end"
    );
    // Writing past the new end still fails.
    let out = g.run(
        &format!(
            "dd if=/tmp/grow.bin of=/dev/vda bs=4096 seek={} count=1 oflag=direct",
            NEW / 4096
        ),
        CMD,
    )?;
    ensure!(
        !out.success(),
        "a write past the new end succeeded:\n{}",
        out.stdout
    );

    // Shrinking, and a size that is not a whole number of sectors, are refused with a reason
    // and change nothing.
    for bad in ["64M", "100000001"] {
        let out = rig.ctl.run(&["resize", DEV, bad])?;
        ensure!(
            out.code == 1 && !out.stderr.trim().is_empty(),
            "resize to {bad}:\n{out}"
        );
        ensure!(
            std::fs::metadata(&rig.image)?.len() == NEW,
            "refused resize to {bad} changed the image"
        );
        ensure!(
            rig.status()?.capacity_bytes == Some(NEW),
            "refused resize to {bad} changed the capacity"
        );
    }
    ensure!(
        sectors(g)? == NEW / 512,
        "refused resizes changed the guest's size"
    );
    g.run_ok(
        &format!("dd if=/dev/vda bs=4096 skip={seek} count={BLOCKS} iflag=direct 2>/dev/null | cmp - /tmp/grow.bin"),
        CMD,
    )?;
    Ok(())
}

#[test]
fn resize_grows_the_disk_under_a_running_guest() -> Result<()> {
    let rig = SupervisedBlock::new(OLD, Some(DEV), &[])?;
    let guest = rig.boot()?;
    rig.report(&guest, run(&rig, &guest))?;
    guest.poweroff(POWEROFF)?;
    rig.launcher.terminate()?;
    Ok(())
}
