//! SIGTERM to the supervisor while a guest writes: every device sleeps, flushes and exits,
//! the supervisor exits 0 and removes its sockets, and what the guest had written (and
//! flushed) is in the image. A new launcher can take the image right after a stop.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vu_tests::bench::{self, Config, Rw};
use vu_tests::e2e::{pattern, pattern_cmd, CMD};
use vu_tests::launcher::Launcher;
use vu_tests::supervisor::{fio_start, pid_alive, SupervisedBlock};

const DEV: &str = "term0";
const BLOCKS: usize = 64;

#[test]
fn sigterm_stops_devices_cleanly_and_removes_sockets() -> Result<()> {
    let rig = SupervisedBlock::new(32 << 20, Some(DEV), &[])?;
    let guest = rig.boot()?;
    let r = (|| -> Result<()> {
        // Known data at the start of the disk, then writes elsewhere still going on.
        guest.run_ok(&pattern_cmd("TERM", BLOCKS, "/tmp/term.bin"), CMD)?;
        guest.run_ok(
            "dd if=/tmp/term.bin of=/dev/vda bs=4096 oflag=direct conv=fsync",
            CMD,
        )?;
        fio_start(
            &guest,
            "bg",
            "fio --name=bg --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=8 \
             --rw=randwrite --bs=4k --offset=8m --size=16m --time_based --runtime=600",
        )?;
        rig.ctl.wait_io(DEV, 100, Duration::from_secs(120))?;
        Ok(())
    })();
    let r = rig.report(&guest, r);
    r?;
    let pid = rig.status()?.pid.context("no device pid")?;
    let (image, socket, control) = (rig.image.clone(), rig.socket.clone(), rig.control.clone());
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "supervisor exited {st} on SIGTERM");
    ensure!(!pid_alive(pid), "device {pid} outlived its supervisor");
    ensure!(!socket.exists(), "vhost-user socket left behind");
    ensure!(!control.exists(), "control socket left behind");
    let data = std::fs::read(&image)?;
    ensure!(
        data[..BLOCKS * 4096] == pattern("TERM", BLOCKS)[..],
        "the image lost what the guest wrote and flushed"
    );
    drop(guest);
    drop(rig.dir);
    Ok(())
}

/// A launcher started right after another one stopped serving the same image gets it. The old
/// device's io_uring rings hold the image as a registered file until the kernel tears them
/// down, which happens after the process is gone; the image lock must not turn that moment
/// into an "in use" failure. Eight stop/start cycles, each with both queues running I/O.
#[test]
fn a_new_launcher_takes_the_image_right_after_a_stop() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)?.set_len(4 << 20)?;
    let socket = dir.path().join("blk.sock");
    for round in 0..8 {
        let launcher = Launcher::start_block(&socket, &image, &["--num-queues", "2"])
            .with_context(|| format!("start {round} (right after the previous stop)"))?;
        let cfg = Config {
            socket: Some(socket.clone()),
            rw: Rw::Mixed,
            queues: 2,
            iodepth: 4,
            requests: Some(400),
            ..Config::default()
        };
        let r = bench::run(&cfg).with_context(|| format!("I/O in round {round}"))?;
        ensure!(
            r.completed == 400 && r.errors == 0,
            "round {round}: {}",
            r.table()
        );
        let st = launcher.terminate()?;
        ensure!(
            st.success(),
            "round {round}: launcher exited {st} on SIGTERM"
        );
    }
    Ok(())
}
