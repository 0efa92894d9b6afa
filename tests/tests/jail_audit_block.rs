//! Coverage audit of the block device's seccomp policy (`block_device.policy`) against the
//! real workload: boot, fio with verify, flushes, discard and write-zeroes, a guest power-off
//! and a second guest reconnecting, then the device's shutdown; once with the io_uring
//! engine and once with the sync engine. The audit itself (strace, the checks, the report of
//! unused rules and `cold-path:` explanations) is `vu_tests::audit`.

use anyhow::{ensure, Result};
use vu_tests::audit::{run_audit, Run};
use vu_tests::e2e::{exercise, pattern_cmd, BlockRig, CMD, POWEROFF};

#[test]
fn block_policy_covers_the_workload_and_nothing_is_unexplained() -> Result<()> {
    run_audit(
        "block",
        vec![
            Run {
                name: "io_uring",
                extra: &[],
                workload: Box::new(|| workload(true)),
            },
            Run {
                name: "sync",
                extra: &["--engine", "sync", "--writethrough"],
                workload: Box::new(|| workload(false)),
            },
        ],
    )
}

/// The end-to-end block workload. `full`: also fio at several depths, a second guest
/// reconnecting after a power-off.
fn workload(full: bool) -> Result<()> {
    let rig = BlockRig::new(128 << 20, &[])?;
    let first = rig.boot(|_, _| {})?;
    let written = exercise(&rig, &first, |g| {
        let depths: &[u32] = if full { &[1, 16] } else { &[4] };
        for (i, qd) in depths.iter().enumerate() {
            let out = g.run(
                &format!(
                    "fio --name=audit{i} --filename=/dev/vda --direct=1 --ioengine=libaio \
                     --iodepth={qd} --rw=randwrite --bs=4k --offset={off}m --size=8m \
                     --verify=crc32c --verify_fatal=1 --do_verify=1",
                    off = 16 + 8 * i
                ),
                CMD,
            )?;
            ensure!(
                out.success() && out.stdout.contains("err= 0"),
                "fio failed:\n{}",
                out.stdout
            );
        }
        // Flushes: through the page cache then sync, and direct with fsync.
        g.run_ok(&pattern_cmd("audit", 256, "/tmp/p"), CMD)?;
        g.run_ok("dd if=/tmp/p of=/dev/vda bs=1M seek=1 && sync", CMD)?;
        g.run_ok(
            "dd if=/tmp/p of=/dev/vda bs=1M seek=8 oflag=direct conv=fsync",
            CMD,
        )?;
        // Discard and write-zeroes.
        g.run_ok(
            "/usr/sbin/blkdiscard -o $((4<<20)) -l $((1<<20)) /dev/vda",
            CMD,
        )?;
        g.run_ok(
            "/usr/sbin/blkdiscard -z -o $((5<<20)) -l $((1<<20)) /dev/vda",
            CMD,
        )?;
        g.run_ok(
            "dd if=/dev/vda bs=1M skip=8 count=1 iflag=direct 2>/dev/null | md5sum",
            CMD,
        )
    })?;
    first.poweroff(POWEROFF)?;
    drop(first);
    if full {
        let second = rig.boot(|_, _| {})?;
        let read = exercise(&rig, &second, |g| {
            g.run_ok(
                "dd if=/dev/vda bs=1M skip=8 count=1 iflag=direct 2>/dev/null | md5sum",
                CMD,
            )
        })?;
        ensure!(
            read.trim() == written.trim(),
            "the second guest read {read:?}, the first wrote {written:?}"
        );
        second.poweroff(POWEROFF)?;
    }
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
