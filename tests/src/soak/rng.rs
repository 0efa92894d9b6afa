//! rng under kills: the guest reads `/dev/hwrng` (served by our device through a hot-plugged
//! `vhost-user-rng-pci` whose chardev reconnects) in rounds of 4 MiB while the device
//! process is killed; after each kill the supervisor starts a new one, QEMU reconnects and
//! the guest's read must go on (its file grows again). Each round must end with every byte
//! it asked for, and look random (gzip cannot shrink it, a chi-square test of its bytes, no
//! repeated 4 KiB block).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{kill_device, progress, wait_respawned, Outcome, Pauses, Plan, RESUME_TIMEOUT};
use crate::e2e::POWEROFF;
use crate::guest::Guest;
use crate::rng::{
    check_random, finish_background, read_in_background, read_so_far, reading, RngRig,
};

/// The device's name under the supervisor.
pub const NAME: &str = "soak-rng0";
/// Bytes per read round: enough that a round outlasts the checks between a kill and the next
/// (on an idle machine the guest reads 1 MiB in about a second).
const ROUND: u64 = 4 << 20;
/// Rounds that may end before a kill finds one going, in a row, before the loop gives up.
const QUICK_ROUNDS: usize = 10;

/// Ends round `round` and counts it: complete and random, or a guest error.
fn end_round(g: &Guest, round: u32, out: &mut Outcome) {
    let tag = round.to_string();
    let r = finish_background(g, &tag, ROUND, Duration::from_secs(900))
        .and_then(|path| check_random(g, &path).map(|()| path));
    match r {
        Ok(path) => {
            out.checks += 1;
            let _ = g.run(&format!("rm -f {path}"), crate::e2e::CMD);
        }
        Err(e) => out.guest_error(format!("hwrng read round {round}: {e:#}")),
    }
}

/// Waits (by the guest's own view) until read `round` has more than `than` bytes or ended.
fn wait_guest_progress(g: &Guest, round: u32, than: u64) -> Result<()> {
    let deadline = Instant::now() + RESUME_TIMEOUT;
    let tag = round.to_string();
    loop {
        if !reading(g, &tag)? || read_so_far(g, &tag)? > than {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the guest's read did not go on within {RESUME_TIMEOUT:?}");
        }
        // Each look is a guest command (a serial round trip): paced by itself.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the kill loop; fills `out`.
pub fn run(plan: &Plan, out: &mut Outcome) -> Result<()> {
    let rig = RngRig::new(NAME, &[])?;
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

/// Makes sure a read round is going, with its file growing (the guest's reads flow through
/// the current process); a round that ended is checked and the next one started.
fn loaded(g: &Guest, round: &mut u32, out: &mut Outcome) -> Result<()> {
    for _ in 0..QUICK_ROUNDS {
        if !reading(g, &round.to_string())? {
            end_round(g, *round, out);
            *round += 1;
            read_in_background(g, &round.to_string(), ROUND)?;
        }
        let at = read_so_far(g, &round.to_string())?;
        wait_guest_progress(g, *round, at)?;
        if reading(g, &round.to_string())? {
            return Ok(());
        }
    }
    bail!("{QUICK_ROUNDS} read rounds in a row ended before a kill found one going")
}

fn kills(rig: &RngRig, g: &Guest, plan: &Plan, out: &mut Outcome) -> Result<()> {
    let started = Instant::now();
    let mut pauses = Pauses::new(plan.seed);
    let mut round = 0u32;
    read_in_background(g, &round.to_string(), ROUND)?;
    for k in 0..plan.kills {
        loaded(g, &mut round, out)?;
        std::thread::sleep(pauses.next(plan.pause_ms));
        let old = kill_device(&rig.ctl, NAME)?;
        let before = read_so_far(g, &round.to_string())?;
        let new = wait_respawned(&rig.ctl, NAME, old, true)?;
        wait_guest_progress(g, round, before)
            .with_context(|| format!("the guest's read stalled after kill {}", k + 1))?;
        out.survived += 1;
        let served = new.raw.find_key("bytes_total").map(|v| v.text());
        progress(
            "rng",
            k,
            plan.kills,
            started,
            &format!(
                "pid {old} -> {:?}, read round {round} at {before} bytes (new process: {} bytes when it came up)",
                new.pid,
                served.unwrap_or_default()
            ),
        );
    }
    end_round(g, round, out);
    out.notes.push(format!(
        "dd from /dev/hwrng (the kernel's virtio_rng, 64-byte requests), 4 MiB per round: {} rounds, each complete and checked random (gzip, chi-square, no repeated 4 KiB block)",
        round + 1
    ));
    Ok(())
}
