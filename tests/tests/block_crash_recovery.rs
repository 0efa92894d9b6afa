//! A device process that dies mid-I/O loses no request: the block device is killed with
//! SIGKILL at random moments (20 times) while the guest runs fio random writes with
//! verification; a new device process starts on the same socket, QEMU (chardev `reconnect=1`)
//! reconnects and hands back the inflight area, and the new process resubmits what was in
//! flight. Every fio round must finish with zero errors and the data must read back.
//!
//! The device is jailed (the default). The launcher's supervisor respawns the device on the
//! same listening socket; the crash limit is raised so that 20 kills do not mark the device
//! failed.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Result};
use vu_tests::e2e::{BlockRig, CMD, POWEROFF};
use vu_tests::guest::Guest;

const KILLS: usize = 20;
const LAUNCH: [&str; 2] = ["--max-crashes", "1000"];
const FIO: &str = "fio --name=crash --filename=/dev/vda --direct=1 --ioengine=libaio \
                   --iodepth=16 --rw=randwrite --bs=4k --size=48m --verify=crc32c \
                   --verify_fatal=1 --do_verify=1 --randseed=4242";

/// A small deterministic generator for kill delays (seed printed, so a failure can be replayed).
struct Lcg(u64);

impl Lcg {
    fn next_ms(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (self.0 >> 33) % (hi - lo)
    }
}

fn start_round(g: &Guest, round: usize) -> Result<()> {
    g.run_ok(
        &format!("rm -f /tmp/fio.rc; ({FIO} > /tmp/fio.{round}.log 2>&1; echo $? > /tmp/fio.rc) &"),
        CMD,
    )?;
    Ok(())
}

/// Whether the round finished; an error if it finished with any failure.
fn finished(g: &Guest, round: usize) -> Result<bool> {
    let rc = g.run("cat /tmp/fio.rc 2>/dev/null", CMD)?;
    if !rc.success() || rc.stdout.trim().is_empty() {
        return Ok(false);
    }
    let log = g.run_ok(&format!("cat /tmp/fio.{round}.log"), CMD)?;
    ensure!(
        rc.stdout.trim() == "0",
        "fio round {round} exited with {}:\n{log}",
        rc.stdout.trim()
    );
    ensure!(
        log.contains("err= 0"),
        "fio round {round} reported errors:\n{log}"
    );
    Ok(true)
}

fn kill_and_restart(rig: &mut BlockRig) -> Result<()> {
    let ready = rig.launcher.count_lines("listening on");
    let connected = rig.launcher.count_lines("front-end connected");
    // Kill the device process itself (not the launcher): that is the crash being recovered.
    let device = rig.launcher.device_pid()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(device as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    // The supervisor reports the death and starts a new device process on the same socket
    // and image; QEMU reconnects to it.
    rig.launcher
        .wait_for_nth_line("listening on", ready + 1, Duration::from_secs(60))?;
    rig.launcher.wait_for_nth_line(
        "front-end connected",
        connected + 1,
        Duration::from_secs(120),
    )?;
    ensure!(
        rig.launcher.device_pid()? != device,
        "the device was not replaced"
    );
    Ok(())
}

fn run(rig: &mut BlockRig, g: &Guest, rng: &mut Lcg) -> Result<()> {
    let mut round = 0;
    start_round(g, round)?;
    for kill in 0..KILLS {
        // Let I/O flow for a random while, then kill the device without warning.
        std::thread::sleep(Duration::from_millis(rng.next_ms(200, 1200)));
        if finished(g, round)? {
            // Keep killing during I/O: every round is verified on its own.
            round += 1;
            start_round(g, round)?;
        }
        kill_and_restart(rig)?;
        eprintln!("kill {} done (fio round {round})", kill + 1);
    }
    let deadline = Instant::now() + CMD;
    while !finished(g, round)? {
        if Instant::now() > deadline {
            bail!(
                "fio did not finish: {}",
                g.run_ok(&format!("cat /tmp/fio.{round}.log"), CMD)?
            );
        }
        // fio runs inside the guest; poll its completion marker.
        std::thread::sleep(Duration::from_secs(1));
    }
    // Everything the last round wrote reads back.
    let out = g.run(&format!("{FIO} --verify_only"), CMD)?;
    ensure!(out.success(), "read-back verify failed:\n{}", out.stdout);
    Ok(())
}

#[test]
fn sigkill_during_fio_loses_nothing() -> Result<()> {
    let mut rig = BlockRig::new(64 << 20, &LAUNCH)?;
    let guest = rig.boot(|disk, _| disk.reconnect = true)?;
    let seed = std::env::var("VU_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    eprintln!("kill schedule seed: {seed} (set VU_KILL_SEED to replay)");
    let result = run(&mut rig, &guest, &mut Lcg(seed));
    if result.is_err() {
        eprintln!(
            "---- guest console ({}) ----\n{}",
            guest.log_path().display(),
            guest.console()
        );
    }
    result?;
    guest.poweroff(POWEROFF)?;
    Ok(())
}
