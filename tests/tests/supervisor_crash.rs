//! Devices survive crashes: the block device process is killed with SIGKILL at random moments,
//! 20 times in quick succession, and (with the default settings) 10 times 2 to 5 s apart, as an
//! operator's script or the OOM killer would, while the guest runs fio random writes with
//! verification. The supervisor reaps each dead process and starts a new one on the same
//! socket, however often a device that served dies; QEMU (chardev `reconnect=1`) reconnects
//! and hands back the inflight area, and the new process resubmits what was in flight. fio
//! ends with zero errors, the data reads back, the device ends running, and `status` counts
//! the restarts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use vu_tests::e2e::{CMD, POWEROFF};
use vu_tests::guest::Guest;
use vu_tests::supervisor::{
    fio_finish, fio_running, fio_start, pid_alive, sigkill, SupervisedBlock, RECONNECT_TIMEOUT,
};

const DEV: &str = "crash0";
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

/// How many kills, and the pause before each (ms, drawn from `lo..hi`).
struct Schedule {
    kills: usize,
    lo: u64,
    hi: u64,
}

fn run(rig: &SupervisedBlock, g: &Guest, rng: &mut Lcg, plan: &Schedule) -> Result<()> {
    let dev = rig.name.as_str();
    let start = rig.status()?;
    let restarts0 = start.restarts.context("status has no `restarts` counter")?;
    let mut round = 0;
    fio_start(g, &round.to_string(), FIO)?;
    for kill in 0..plan.kills {
        // Let I/O flow for a random while, then kill the device without warning.
        std::thread::sleep(Duration::from_millis(rng.next_ms(plan.lo, plan.hi)));
        if !fio_running(g, &round.to_string())? {
            // Keep killing during I/O: every round is verified on its own.
            fio_finish(g, &round.to_string(), CMD)?;
            round += 1;
            fio_start(g, &round.to_string(), FIO)?;
        }
        let victim = rig.status()?;
        let pid = victim.pid.context("no device pid to kill")?;
        sigkill(pid)?;
        let next =
            rig.ctl
                .wait_status(dev, "respawned and reconnected", RECONNECT_TIMEOUT, |s| {
                    s.pid.is_some_and(|p| p != pid) && s.serving()
                })?;
        ensure!(!pid_alive(pid), "killed device {pid} is still there");
        eprintln!(
            "kill {} of pid {pid} done (fio round {round}); new pid {:?}, restarts {:?}",
            kill + 1,
            next.pid,
            next.restarts
        );
    }
    let log = fio_finish(g, &round.to_string(), CMD)?;
    eprintln!("{log}");
    // Everything the last round wrote reads back.
    let out = g.run(&format!("{FIO} --verify_only"), CMD)?;
    ensure!(out.success(), "read-back verify failed:\n{}", out.stdout);
    ensure!(
        out.stdout.contains("err= 0"),
        "read-back verify reported errors:\n{}",
        out.stdout
    );
    let end = rig.status()?;
    let restarts = end.restarts.context("status has no `restarts` counter")?;
    let kills = plan.kills;
    ensure!(
        restarts >= restarts0 + kills as u64,
        "status counts {restarts} restarts after {kills} kills (from {restarts0}): {end:?}"
    );
    ensure!(end.serving(), "device not serving at the end: {end:?}");
    let reason = end
        .last_exit
        .clone()
        .unwrap_or_default()
        .to_ascii_lowercase();
    ensure!(
        reason.contains("kill") || reason.contains("signal") || reason.contains('9'),
        "last exit reason does not name the signal: {end:?}"
    );
    Ok(())
}

fn seed() -> u64 {
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
    seed
}

fn kill_loop(dev: &str, extra: &[&str], plan: &Schedule) -> Result<()> {
    let rig = SupervisedBlock::new(64 << 20, Some(dev), extra)?;
    let guest = rig.boot()?;
    let mut rng = Lcg(seed());
    rig.report(&guest, run(&rig, &guest, &mut rng, plan))?;
    guest.poweroff(POWEROFF)?;
    rig.launcher.terminate()?;
    Ok(())
}

#[test]
fn sigkill_loop_under_supervisor_loses_nothing() -> Result<()> {
    // Twenty kills in quick succession, with the default crash policy.
    kill_loop(
        DEV,
        &[],
        &Schedule {
            kills: 20,
            lo: 100,
            hi: 1500,
        },
    )
}

#[test]
fn ten_spaced_sigkills_with_default_settings_never_fail_the_disk() -> Result<()> {
    // The operator's script or the OOM killer: ten kills, 2 to 5 s apart, default settings.
    // More crashes than --max-crashes within --crash-window, yet the disk keeps serving.
    kill_loop(
        "spaced0",
        &[],
        &Schedule {
            kills: 10,
            lo: 2000,
            hi: 5000,
        },
    )
}
