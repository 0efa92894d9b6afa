//! `launcher ctl sleep` quiesces a disk for a consistent host-side copy: during a guest fio
//! write+verify run the device is put to sleep; while asleep the image's contents do not
//! change (sampled several times a few seconds apart) and `status` says so; after `wake` fio
//! finishes with no verify error (no request lost or repeated).

use std::time::Duration;

use anyhow::{ensure, Result};
use vu_tests::e2e::{CMD, POWEROFF};
use vu_tests::guest::Guest;
use vu_tests::supervisor::{file_digest, fio_finish, fio_running, fio_start, SupervisedBlock};

const DEV: &str = "data0";
const FIO: &str = "fio --name=sleep --filename=/dev/vda --direct=1 --ioengine=libaio \
                   --iodepth=16 --rw=randwrite --bs=4k --size=48m --verify=crc32c \
                   --verify_fatal=1 --do_verify=1 --randseed=777 --rate_iops=500";
/// Host-side samples of the image while the device sleeps, and the time between them.
const SAMPLES: usize = 4;
const SAMPLE_GAP: Duration = Duration::from_secs(3);

fn run(rig: &SupervisedBlock, g: &Guest) -> Result<()> {
    fio_start(g, "sleep", FIO)?;
    // The guest's writes are flowing through the device.
    rig.ctl.wait_io(DEV, 200, Duration::from_secs(300))?;
    let before = rig.status()?;

    rig.ctl_ok(&["sleep", "{dev}"])?;
    let asleep = rig.status()?;
    ensure!(
        asleep.state == "asleep",
        "status after an acknowledged sleep: {asleep:?}"
    );
    ensure!(
        asleep.pid == before.pid,
        "sleep changed the device process: {before:?} -> {asleep:?}"
    );
    ensure!(
        fio_running(g, "sleep")?,
        "fio ended before the device was asleep: the sleep was not mid-workload"
    );

    // Once acknowledged, the device touches neither guest memory nor the image.
    let first = file_digest(&rig.image)?;
    let completed = asleep.completed;
    for i in 1..SAMPLES {
        // Letting time pass while the device sleeps is the point of this test.
        std::thread::sleep(SAMPLE_GAP);
        let d = file_digest(&rig.image)?;
        ensure!(
            d == first,
            "the image changed while the device was asleep (sample {i}: {d:#x} != {first:#x})"
        );
        let st = rig.status()?;
        ensure!(st.state == "asleep", "sample {i}: status {st:?}");
        ensure!(
            st.completed == completed,
            "requests completed while asleep: {completed:?} -> {:?}",
            st.completed
        );
    }
    ensure!(
        fio_running(g, "sleep")?,
        "fio finished while its disk was asleep"
    );

    rig.ctl_ok(&["wake", "{dev}"])?;
    let awake = rig.status()?;
    ensure!(awake.state == "running", "status after wake: {awake:?}");
    // I/O resumes and fio's verify pass finds every block it wrote.
    let log = fio_finish(g, "sleep", CMD)?;
    eprintln!("{log}");
    ensure!(
        file_digest(&rig.image)? != first,
        "the image did not change after wake"
    );
    Ok(())
}

#[test]
fn sleep_freezes_the_image_and_wake_loses_nothing() -> Result<()> {
    let rig = SupervisedBlock::new(64 << 20, Some(DEV), &[])?;
    let guest = rig.boot()?;
    rig.report(&guest, run(&rig, &guest))?;
    guest.poweroff(POWEROFF)?;
    rig.launcher.terminate()?;
    Ok(())
}
