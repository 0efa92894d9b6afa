//! Launcher options as the guest sees them: read-only, serial, capacity, logical block size,
//! number of queues (with bounded queue polling on).

use anyhow::{ensure, Context, Result};
use vu_tests::e2e::{exercise, BlockRig, CMD, POWEROFF};

#[test]
fn read_only_disk_refuses_writes_and_image_is_unchanged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("ro.img");
    let content: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&image, &content)?;
    let rig = BlockRig::with_image(dir, image, &["--read-only"])?;
    let guest = rig.boot(|_, _| {})?;
    exercise(&rig, &guest, |g| {
        let ro = g.run_ok("cat /sys/block/vda/ro", CMD)?;
        ensure!(
            ro.trim() == "1",
            "guest does not see a read-only disk: {ro}"
        );
        let w = g.run(
            "dd if=/dev/zero of=/dev/vda bs=4k count=1 oflag=direct",
            CMD,
        )?;
        ensure!(
            !w.success(),
            "a write to the read-only disk succeeded:\n{}",
            w.stdout
        );
        let sum = g.run_ok(
            "dd if=/dev/vda bs=1M count=8 iflag=direct 2>/dev/null | md5sum",
            CMD,
        )?;
        ensure!(sum.len() >= 32, "no checksum: {sum}");
        Ok(())
    })?;
    guest.poweroff(POWEROFF)?;
    let after = std::fs::read(&rig.image).context("read image")?;
    ensure!(after == content, "the read-only image changed");
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

#[test]
fn serial_capacity_block_size_and_queues_are_visible() -> Result<()> {
    let rig = BlockRig::new(
        48 << 20,
        &[
            "--serial",
            "vu-serial-42",
            "--logical-block-size",
            "4096",
            "--num-queues",
            "2",
            // Bounded polling on, so a jailed polling device is exercised end to end.
            "--poll-us",
            "50",
        ],
    )?;
    let guest = rig.boot(|disk, cfg| {
        disk.num_queues = Some(2);
        cfg.cpus = 2;
    })?;
    exercise(&rig, &guest, |g| {
        let serial = g.run_ok("cat /sys/block/vda/serial", CMD)?;
        ensure!(serial.trim() == "vu-serial-42", "serial is {serial:?}");
        let size = g.run_ok("cat /sys/block/vda/size", CMD)?;
        ensure!(
            size.trim() == (48u64 * 2048).to_string(),
            "capacity in 512-byte sectors is {size:?}"
        );
        let lbs = g.run_ok("cat /sys/block/vda/queue/logical_block_size", CMD)?;
        ensure!(lbs.trim() == "4096", "logical block size is {lbs:?}");
        let mq = g.run_ok("ls /sys/block/vda/mq | wc -l", CMD)?;
        ensure!(mq.trim() == "2", "guest sees {mq:?} hardware queues");
        // Both queues carry I/O.
        g.run_ok(
            "fio --name=mq --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=8 --rw=randwrite \
             --bs=4k --size=16m --offset_increment=16m --numjobs=2 --cpus_allowed_policy=split \
             --verify=crc32c --verify_fatal=1 --group_reporting",
            CMD,
        )?;
        Ok(())
    })?;
    guest.poweroff(POWEROFF)?;
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
