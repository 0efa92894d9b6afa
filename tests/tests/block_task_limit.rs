//! The block device under a task limit: a pids cgroup whose pids.max leaves no room for
//! io_uring's kernel workers. The kernel cancels what it would have run on a worker (every
//! fsync, and the large buffered copies the device offloads); the device must finish those
//! requests itself, so that the guest sees neither an error nor a lost write.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vu_tests::e2e::{exercise, BlockRig, CMD, POWEROFF};

/// A pids cgroup of its own (cgroup v1 `pids` hierarchy, or v2 with the pids controller),
/// removed on drop once its processes are gone.
struct PidsCgroup {
    dir: PathBuf,
}

impl PidsCgroup {
    fn new() -> Result<Self> {
        let name = format!("vu-test-task-limit-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/pids");
        let v2 = Path::new("/sys/fs/cgroup");
        let dir = if v1.join("cgroup.procs").exists() {
            v1.join(name)
        } else if std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "pids"))
        {
            // The controller must be enabled for the root's children.
            std::fs::write(v2.join("cgroup.subtree_control"), "+pids")
                .context("enable the pids controller in /sys/fs/cgroup")?;
            v2.join(name)
        } else {
            bail!("this test needs the pids cgroup controller (v1 or v2) and root");
        };
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(PidsCgroup { dir })
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        std::fs::write(self.dir.join(file), value)
            .with_context(|| format!("write {value} to {}/{file}", self.dir.display()))
    }

    fn read(&self, file: &str) -> Result<String> {
        std::fs::read_to_string(self.dir.join(file))
            .with_context(|| format!("read {}/{file}", self.dir.display()))
    }

    /// How many times a task could not be created because of pids.max.
    fn refused(&self) -> Result<u64> {
        let events = self.read("pids.events")?;
        events
            .lines()
            .find_map(|l| l.strip_prefix("max "))
            .context("no max line in pids.events")?
            .trim()
            .parse()
            .context("pids.events")
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = self.write("pids.max", "max");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn guest_io_survives_a_task_limit_that_leaves_no_room_for_kernel_workers() -> Result<()> {
    let rig = BlockRig::new(256 << 20, &["--num-queues", "1"])?;
    let cg = PidsCgroup::new()?;
    // Only the device process: its threads are main, signals and control, plus one worker
    // per started queue. Room for exactly that worker, none for io_uring's.
    let device = rig.launcher.device_pid()?;
    cg.write("cgroup.procs", &device.to_string())?;
    let tasks: u64 = cg.read("pids.current")?.trim().parse()?;
    cg.write("pids.max", &(tasks + 1).to_string())?;

    let guest = rig.boot(|disk, _| disk.num_queues = Some(1))?;
    exercise(&rig, &guest, |g| {
        // Flushes (fsync is always a worker's job in io_uring) and 128 KiB writes and reads
        // at queue depth 8 (offloaded copies), verified.
        let out = g.run(
            "fio --name=limited --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=8 \
             --rw=write --bs=128k --size=32m --fsync=4 --verify=crc32c --verify_fatal=1",
            CMD,
        )?;
        ensure!(
            out.success() && out.stdout.contains("err= 0"),
            "fio under the task limit failed:\n{}",
            out.stdout
        );
        let out = g.run(
            "fio --name=limited --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=8 \
             --rw=read --bs=128k --size=32m --verify=crc32c --verify_only --verify_fatal=1",
            CMD,
        )?;
        ensure!(
            out.success() && !out.stdout.contains("verify: bad"),
            "read-back under the task limit failed:\n{}",
            out.stdout
        );
        Ok(())
    })?;
    // The limit was really hit, and the device said what it did about it.
    ensure!(
        cg.refused()? > 0,
        "the kernel never refused a task: the test did not exercise the limit"
    );
    ensure!(
        rig.launcher
            .count_lines("io_uring could not start a kernel worker")
            > 0,
        "no warning about the task limit:\n{}",
        rig.launcher.stderr()
    );
    guest.poweroff(POWEROFF)?;
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
