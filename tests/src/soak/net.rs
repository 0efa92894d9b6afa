//! net under kills: a guest whose NIC is our net device (one queue pair, a tap in a network
//! namespace the run creates, QEMU's chardev with `reconnect=1`) moves 32 MiB each way over
//! TCP per round (busybox `nc` in the guest, host peers in the namespace; SHA-256 taken at
//! both ends, as tests/tests/net_crash.rs does). Each round, once the host peers have moved
//! 2 MiB through the current process and after the seeded pause, the device process is
//! SIGKILLed; the supervisor starts a new one on the same tap queues, QEMU reconnects, TCP
//! retransmits what was lost on the wire, and the transfer must complete with matching sums
//! both ways. A kill counts when the new process runs with QEMU connected, the transfer
//! moved more bytes after it came up, the sums matched, and the new process's counters
//! show frames both ways.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Result};

use super::{kill_device, progress, wait_respawned, Outcome, Pauses, Plan, RESUME_TIMEOUT};
use crate::e2e::POWEROFF;
use crate::guest::Guest;
use crate::net::{self, status_number, transfer, NetRig};
use crate::supervisor::Ctl;

/// The device's name under the supervisor (as `NetRig` names it).
pub const NAME: &str = "net0";
const MIB: u64 = 1 << 20;
/// Bytes each way per round: with the kill after 2 MiB and a pause of up to a second, it
/// lands well inside the transfer (about 25 MiB/s both ways together under TCG here).
const ROUND: u64 = 32 * MIB;
/// Bytes the host peers must have moved (both ways together) before a kill.
const LOADED: u64 = 2 * MIB;
/// Bytes that must move after the new process came up, unless the transfer ends first.
const RESUMED: u64 = 256 << 10;

/// Runs the kill loop; fills `out`.
pub fn run(plan: &Plan, out: &mut Outcome) -> Result<()> {
    let rig = NetRig::new(1, &[])?;
    let guest = rig.boot(1, true)?;
    let r = kills(&rig, &guest, plan, out);
    let r = rig.report(&guest, r);
    out.restarts = rig.ctl().status(NAME).ok().and_then(|s| s.restarts);
    r?;
    guest.poweroff(POWEROFF)?;
    drop(guest);
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

/// Waits until the host peers moved `bytes` in all (true) or the transfer ended (false).
fn wait_moved(moved: &AtomicU64, bytes: u64, done: &AtomicBool) -> Result<bool> {
    let deadline = Instant::now() + RESUME_TIMEOUT;
    while moved.load(Ordering::Relaxed) < bytes {
        if done.load(Ordering::Relaxed) {
            return Ok(false);
        }
        ensure!(
            Instant::now() < deadline,
            "the transfer stalled at {} bytes",
            moved.load(Ordering::Relaxed)
        );
        // The peers count; nothing to block on here.
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(true)
}

/// A kill made during a transfer.
struct Killed {
    old: u32,
    new: Option<u32>,
    /// Bytes moved (both ways) at the kill.
    killed_at: u64,
    /// Bytes moved when the new process was up.
    at: u64,
}

/// Kills the device once the transfer is loaded and `pause` has passed; `None` when the
/// transfer ended first.
fn kill_mid_transfer(
    ctl: &Ctl,
    moved: &AtomicU64,
    done: &AtomicBool,
    pause: Duration,
) -> Result<Option<Killed>> {
    if !wait_moved(moved, LOADED, done)? {
        return Ok(None);
    }
    std::thread::sleep(pause);
    // Everything moved: the guest is only summing what it got.
    let killed_at = moved.load(Ordering::Relaxed);
    if done.load(Ordering::Relaxed) || killed_at >= 2 * ROUND {
        return Ok(None);
    }
    let old = kill_device(ctl, NAME)?;
    let new = wait_respawned(ctl, NAME, old, true)?;
    let at = moved.load(Ordering::Relaxed);
    // Or the transfer ended: `transfer` says whether it completed intact.
    wait_moved(moved, at + RESUMED, done)?;
    Ok(Some(Killed {
        old,
        new: new.pid,
        killed_at,
        at,
    }))
}

/// One round: a transfer each way on ports `port` (to the host) and `port + 100` (to the
/// guest), the device killed during it.
fn round(
    rig: &NetRig,
    g: &Guest,
    port: u16,
    pause: Duration,
) -> (Result<Option<Killed>>, Result<net::Moved>) {
    let ctl = rig.ctl();
    let moved = Arc::new(AtomicU64::new(0));
    let done = AtomicBool::new(false);
    let plan = net::Plan {
        flows: 1,
        bytes: ROUND,
        port,
    };
    std::thread::scope(|s| {
        let killer = s.spawn(|| kill_mid_transfer(&ctl, &moved, &done, pause));
        let r = transfer(&rig.netns, g, plan, &moved);
        done.store(true, Ordering::Relaxed);
        let k = killer
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the killer thread panicked")));
        (k, r)
    })
}

fn kills(rig: &NetRig, g: &Guest, plan: &Plan, out: &mut Outcome) -> Result<()> {
    let started = Instant::now();
    let ctl = rig.ctl();
    let mut pauses = Pauses::new(plan.seed);
    let (mut k, mut rounds, mut late, mut failed_in_a_row) = (0, 0u16, 0, 0);
    while k < plan.kills {
        // After a transfer that ended before its kill, the next kill comes without a pause.
        let pause = if late == 0 {
            pauses.next(plan.pause_ms)
        } else {
            Duration::ZERO
        };
        let port = 6000 + rounds % 100;
        rounds += 1;
        let (killed, moved) = round(rig, g, port, pause);
        let Some(killed) = killed? else {
            // No kill this round: a transfer without one is still checked.
            late += 1;
            ensure!(
                late < 3,
                "three transfers in a row ended (or failed) before their kill"
            );
            match moved {
                Ok(_) => out.checks += 1,
                Err(e) => out.guest_error(format!("transfer {rounds} (no kill): {e:#}")),
            }
            continue;
        };
        late = 0;
        let st = ctl.status(NAME)?;
        ensure!(
            st.last_exit
                .as_deref()
                .is_some_and(|e| e.contains("SIGKILL")),
            "kill {}: the last exit does not say SIGKILL: {:?}",
            k + 1,
            st.last_exit
        );
        let verdict = moved.and_then(|m| {
            // Counters start again with each process: the new one carried the rest.
            let (tx, rx) = (
                status_number(&st, "tx_packets")?,
                status_number(&st, "rx_packets")?,
            );
            ensure!(
                tx > 0 && rx > 0,
                "the new process moved {tx} frames from the guest and {rx} to it"
            );
            Ok(m)
        });
        match verdict {
            Ok(m) => {
                out.checks += 1;
                out.survived += 1;
                failed_in_a_row = 0;
                progress(
                    "net",
                    k,
                    plan.kills,
                    started,
                    &format!(
                        "pid {} killed at {} of {} KiB moved -> {:?} up at {} KiB; {} MiB each way intact in {:.1} s",
                        killed.old,
                        killed.killed_at >> 10,
                        (2 * ROUND) >> 10,
                        killed.new,
                        killed.at >> 10,
                        m.to_host / MIB,
                        m.elapsed.as_secs_f64()
                    ),
                );
            }
            Err(e) => {
                out.guest_error(format!("transfer across kill {}: {e:#}", k + 1));
                failed_in_a_row += 1;
                if failed_in_a_row >= 3 {
                    bail!("three kills in a row not survived");
                }
            }
        }
        k += 1;
    }
    out.notes.push(format!(
        "TCP through a tap in the run's own network namespace, one queue pair: per kill a transfer of {} MiB each way (busybox nc in the guest, host peers), the device SIGKILLed after 2 MiB had moved and the pause; the transfer must complete after the new process comes up, SHA-256 equal at both ends each way, and the new process's counters show frames both ways ({rounds} transfers in all)",
        ROUND / MIB
    ));
    Ok(())
}
