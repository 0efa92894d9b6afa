//! fio in a real guest through our block device: random writes with crc32c verification at
//! 4k and 64k, queue depth 1 and 16, a read-back verification pass over everything written,
//! and a sequential pass; large requests take the offloaded path (io_uring kernel workers).

use anyhow::{ensure, Context, Result};
use vu_tests::e2e::{exercise, BlockRig, CMD, POWEROFF};

/// One fio job over its own 16 MiB slice of the disk.
fn job(name: &str, bs: &str, qd: u32, slice: u32, extra: &str) -> String {
    format!(
        "fio --name={name} --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth={qd} \
         --rw=randwrite --bs={bs} --offset={off}m --size=16m --verify=crc32c --verify_fatal=1 \
         --randseed={seed} --norandommap=0 {extra}",
        off = slice * 16,
        seed = 1000 + slice,
    )
}

#[test]
fn fio_random_write_verify_and_readback() -> Result<()> {
    let rig = BlockRig::new(256 << 20, &[])?;
    let guest = rig.boot(|_, _| {})?;
    let jobs = [
        ("w4k-qd1", "4k", 1, 0),
        ("w4k-qd16", "4k", 16, 1),
        ("w64k-qd1", "64k", 1, 2),
        ("w64k-qd16", "64k", 16, 3),
    ];
    exercise(&rig, &guest, |g| {
        for (name, bs, qd, slice) in jobs {
            let out = g.run(&job(name, bs, qd, slice, "--do_verify=1"), CMD)?;
            ensure!(out.success(), "fio {name} failed:\n{}", out.stdout);
            ensure!(
                out.stdout.contains("err= 0"),
                "fio {name} reported errors:\n{}",
                out.stdout
            );
        }
        // Read everything back once more, after all jobs wrote: nothing was overwritten or
        // lost between jobs.
        for (name, bs, qd, slice) in jobs {
            let out = g.run(&job(name, bs, qd, slice, "--verify_only"), CMD)?;
            ensure!(
                out.success(),
                "read-back verify of {name} failed:\n{}",
                out.stdout
            );
            ensure!(
                !out.stdout.contains("verify: bad"),
                "bad data in {name}:\n{}",
                out.stdout
            );
        }
        // Sequential write with verification, then a sequential read pass.
        let seq = g.run(
            "fio --name=seq --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=8 \
             --rw=write --bs=128k --offset=128m --size=64m --verify=crc32c --verify_fatal=1",
            CMD,
        )?;
        ensure!(
            seq.success(),
            "sequential write+verify failed:\n{}",
            seq.stdout
        );
        let read = g.run(
            "fio --name=seqread --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=8 \
             --rw=read --bs=128k --size=256m",
            CMD,
        )?;
        ensure!(
            read.success() && read.stdout.contains("err= 0"),
            "sequential read failed:\n{}",
            read.stdout
        );
        Ok(())
    })?;
    // With more CPUs than queues (1 here), the large buffered requests above (64k at QD16,
    // 128k at QD8) went to io_uring's kernel workers, and fio verified every byte of them.
    let status = rig.launcher.ctl(&["status"])?;
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let offloaded: u64 = status
        .lines()
        .find_map(|l| l.trim().strip_prefix("offloaded:"))
        .with_context(|| format!("no offloaded counter in the status:\n{status}"))?
        .trim()
        .parse()?;
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        ensure!(
            offloaded > 0,
            "no large copy was offloaded on a multi-CPU machine:\n{status}"
        );
    }
    guest.poweroff(POWEROFF)?;
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
