//! A guest powers off; a second guest connects to the same running device and reads what the
//! first one wrote.

use anyhow::{ensure, Result};
use vu_tests::e2e::{exercise, pattern_cmd, BlockRig, CMD, POWEROFF};

#[test]
fn second_guest_reads_what_the_first_wrote() -> Result<()> {
    let rig = BlockRig::new(32 << 20, &[])?;
    let first = rig.boot(|_, _| {})?;
    let sum1 = exercise(&rig, &first, |g| {
        g.run_ok(&pattern_cmd("first", 512, "/tmp/p"), CMD)?;
        g.run_ok(
            "dd if=/tmp/p of=/dev/vda bs=1M seek=1 oflag=direct conv=fsync",
            CMD,
        )?;
        g.run_ok("md5sum < /tmp/p", CMD)
    })?;
    first.poweroff(POWEROFF)?;
    drop(first);
    let second = rig.boot(|_, _| {})?;
    let sum2 = exercise(&rig, &second, |g| {
        g.run_ok(
            "dd if=/dev/vda bs=1M skip=1 count=2 iflag=direct 2>/dev/null | md5sum",
            CMD,
        )
    })?;
    ensure!(
        sum1.trim() == sum2.trim(),
        "second guest read {sum2:?}, first wrote {sum1:?}"
    );
    second.poweroff(POWEROFF)?;
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
