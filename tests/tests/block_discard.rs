//! DISCARD and WRITE_ZEROES from the guest take effect in the image: zeros read back, in the
//! guest and on the host.

use anyhow::{ensure, Context, Result};
use vu_tests::e2e::{exercise, pattern, pattern_cmd, BlockRig, CMD, POWEROFF};

const MIB: usize = 1 << 20;

#[test]
fn discard_and_write_zeroes_leave_zeros() -> Result<()> {
    let rig = BlockRig::new(32 << 20, &[])?;
    let guest = rig.boot(|_, _| {})?;
    exercise(&rig, &guest, |g| {
        let dmax = g.run_ok("cat /sys/block/vda/queue/discard_max_bytes", CMD)?;
        ensure!(dmax.trim() != "0", "guest sees no discard support");
        let wz = g.run_ok("cat /sys/block/vda/queue/write_zeroes_max_bytes", CMD)?;
        ensure!(wz.trim() != "0", "guest sees no write-zeroes support");
        g.run_ok(&pattern_cmd("fill", 1024, "/tmp/fill4m"), CMD)?;
        g.run_ok(
            "dd if=/tmp/fill4m of=/dev/vda bs=1M seek=4 oflag=direct conv=fsync",
            CMD,
        )?;
        // Discard [5 MiB, 6 MiB) and write zeroes over [6 MiB, 7 MiB). Full path: the busybox
        // shell prefers its own blkdiscard applet, which has no -z.
        g.run_ok(
            "/usr/sbin/blkdiscard -o $((5<<20)) -l $((1<<20)) /dev/vda",
            CMD,
        )?;
        g.run_ok(
            "/usr/sbin/blkdiscard -z -o $((6<<20)) -l $((1<<20)) /dev/vda",
            CMD,
        )?;
        let zeros = g.run_ok(
            "dd if=/dev/vda bs=1M skip=5 count=2 iflag=direct 2>/dev/null | tr -d '\\000' | wc -c",
            CMD,
        )?;
        ensure!(
            zeros.trim() == "0",
            "guest reads non-zero bytes after discard: {zeros}"
        );
        Ok(())
    })?;
    guest.poweroff(POWEROFF)?;
    let image = std::fs::read(&rig.image).context("read image")?;
    let fill = pattern("fill", 1024);
    ensure!(
        image[4 * MIB..5 * MIB] == fill[..MIB],
        "data before the discarded range changed"
    );
    ensure!(
        image[5 * MIB..7 * MIB].iter().all(|b| *b == 0),
        "discarded range is not zero on the host"
    );
    ensure!(
        image[7 * MIB..8 * MIB] == fill[3 * MIB..],
        "data after the zeroed range changed"
    );
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
