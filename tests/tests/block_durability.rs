//! Nothing lost, nothing extra: the guest writes a known pattern (direct and through its page
//! cache), flushes and powers off; the host then finds exactly that pattern in the image and
//! zeros everywhere else.

use anyhow::{ensure, Context, Result};
use vu_tests::e2e::{exercise, pattern, pattern_cmd, BlockRig, CMD, POWEROFF};

const MIB: usize = 1 << 20;

#[test]
fn written_pattern_is_exactly_in_the_image_after_poweroff() -> Result<()> {
    let rig = BlockRig::new(64 << 20, &[])?;
    let guest = rig.boot(|_, _| {})?;
    let direct = pattern("direct", 512); // 2 MiB at 3 MiB, O_DIRECT
    let cached = pattern("cached", 256); // 1 MiB at 40 MiB, through the page cache + sync
    exercise(&rig, &guest, |g| {
        g.run_ok(&pattern_cmd("direct", 512, "/tmp/direct"), CMD)?;
        g.run_ok(&pattern_cmd("cached", 256, "/tmp/cached"), CMD)?;
        g.run_ok(
            "dd if=/tmp/direct of=/dev/vda bs=1M seek=3 oflag=direct conv=fsync",
            CMD,
        )?;
        g.run_ok("dd if=/tmp/cached of=/dev/vda bs=1M seek=40 && sync", CMD)?;
        // The guest reads back what it wrote (from the device, not its cache).
        g.run_ok("echo 3 > /proc/sys/vm/drop_caches", CMD)?;
        g.run_ok(
            "dd if=/dev/vda bs=1M skip=3 count=2 iflag=direct | cmp - /tmp/direct",
            CMD,
        )?;
        Ok(())
    })?;
    guest.poweroff(POWEROFF)?;
    // The device is still running: what the guest flushed must already be in the file.
    let image = std::fs::read(&rig.image).context("read image")?;
    ensure!(
        image.len() == 64 * MIB,
        "image size changed to {}",
        image.len()
    );
    ensure!(
        image[3 * MIB..5 * MIB] == direct[..],
        "direct pattern differs in the image"
    );
    ensure!(
        image[40 * MIB..41 * MIB] == cached[..],
        "cached pattern differs in the image"
    );
    let extra = image
        .iter()
        .enumerate()
        .filter(|(i, _)| !(3 * MIB..5 * MIB).contains(i) && !(40 * MIB..41 * MIB).contains(i))
        .find(|(_, b)| **b != 0);
    ensure!(
        extra.is_none(),
        "unexpected data at offset {:?}",
        extra.map(|(i, _)| i)
    );
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
