//! Block under kills: a guest runs fio random writes with crc32c verification on
//! `/dev/vda` in rounds (each round verifies everything it wrote, across the kills it saw)
//! while the device process is killed; after each kill the supervisor starts a new one, QEMU
//! (`reconnect=1`) reconnects and hands back the inflight area, and the guest's I/O must flow
//! through the new process. At the end the last round is read back once more, and the
//! guest's kernel log must hold no I/O error.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{kill_device, progress, wait_respawned, Outcome, Pauses, Plan, RESUME_TIMEOUT};
use crate::e2e::{CMD, POWEROFF};
use crate::guest::Guest;
use crate::supervisor::{fio_finish, fio_running, fio_start, SupervisedBlock};

/// The device's name under the supervisor.
pub const NAME: &str = "soak-blk0";
/// Requests that must complete through a new process before a kill counts as survived.
const RESUMED_REQUESTS: u64 = 64;

fn fio(round: u32) -> String {
    format!(
        "fio --name=soak --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=16 \
         --rw=randwrite --bs=4k --size=48m --verify=crc32c --verify_fatal=1 --do_verify=1 \
         --randseed={}",
        4242 + round
    )
}

/// Ends fio round `round` and counts it: verified, or a guest error.
fn end_round(g: &Guest, round: u32, out: &mut Outcome) -> Result<()> {
    match fio_finish(g, &round.to_string(), CMD) {
        Ok(_) => out.checks += 1,
        Err(e) => out.guest_error(format!("fio round {round} (seed {}): {e:#}", 4242 + round)),
    }
    Ok(())
}

/// Runs the kill loop; fills `out`.
pub fn run(plan: &Plan, out: &mut Outcome) -> Result<()> {
    let rig = SupervisedBlock::new(256 << 20, Some(NAME), &[])?;
    let guest = rig.boot()?;
    let r = kills(&rig, &guest, plan, out);
    let r = rig.report(&guest, r);
    out.restarts = rig.status().ok().and_then(|s| s.restarts);
    r?;
    guest.poweroff(POWEROFF)?;
    let st = rig.launcher.terminate()?;
    anyhow::ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

/// Waits until the new process has completed [`RESUMED_REQUESTS`] requests, or fio's round
/// has ended (it may end right after a kill; the next loop checks its verification). On a
/// timeout the error carries what the guest shows: fio's log, its processes, its kernel log.
fn wait_resumed(rig: &SupervisedBlock, g: &Guest, round: u32) -> Result<()> {
    let base = rig.status()?.completed.unwrap_or(0);
    let deadline = Instant::now() + RESUME_TIMEOUT;
    loop {
        let st = rig.status()?;
        if st.completed.unwrap_or(0) >= base + RESUMED_REQUESTS
            || !fio_running(g, &round.to_string())?
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let guest = g
                .run(
                    &format!("cat /tmp/fio.{round}.log; ps; dmesg | tail -n 30"),
                    CMD,
                )
                .map(|o| o.stdout)
                .unwrap_or_default();
            bail!(
                "{} requests in {RESUME_TIMEOUT:?} through the new process (want {RESUMED_REQUESTS}) \
                 while fio round {round} runs; status {st:?}; the guest:\n{guest}",
                st.completed.unwrap_or(0) - base
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn kills(rig: &SupervisedBlock, g: &Guest, plan: &Plan, out: &mut Outcome) -> Result<()> {
    let started = Instant::now();
    let mut pauses = Pauses::new(plan.seed);
    let mut round = 0u32;
    fio_start(g, &round.to_string(), &fio(round))?;
    rig.ctl.wait_io(NAME, RESUMED_REQUESTS, RESUME_TIMEOUT)?;
    for k in 0..plan.kills {
        if !fio_running(g, &round.to_string())? {
            end_round(g, round, out)?;
            round += 1;
            fio_start(g, &round.to_string(), &fio(round))?;
            rig.ctl.wait_io(NAME, RESUMED_REQUESTS, RESUME_TIMEOUT)?;
        }
        std::thread::sleep(pauses.next(plan.pause_ms));
        let old = kill_device(&rig.ctl, NAME)?;
        let new = wait_respawned(&rig.ctl, NAME, old, true)?;
        wait_resumed(rig, g, round)
            .with_context(|| format!("I/O did not resume after kill {}", k + 1))?;
        out.survived += 1;
        progress(
            "block",
            k,
            plan.kills,
            started,
            &format!("pid {old} -> {:?}, fio round {round}", new.pid),
        );
    }
    end_round(g, round, out)?;
    // What the last round wrote reads back once more, through the last process.
    let verify = g.run(&format!("{} --verify_only", fio(round)), CMD)?;
    if verify.success() && verify.stdout.contains("err= 0") {
        out.checks += 1;
    } else {
        out.guest_error(format!(
            "read-back of fio round {round}:\n{}",
            verify.stdout
        ));
    }
    let io_errors = g.run_ok(
        "dmesg | grep -ciE 'I/O error|blk_update_request|buffer i/o' || true",
        CMD,
    )?;
    let n: u64 = io_errors.trim().parse().unwrap_or(0);
    if n > 0 {
        out.guest_error(format!("{n} I/O error lines in the guest's kernel log"));
    }
    out.notes.push(format!(
        "fio randwrite 4k QD16 with crc32c verify, 48 MiB per round: {} rounds, the last read back again; guest kernel log checked for I/O errors",
        round + 1
    ));
    Ok(())
}
