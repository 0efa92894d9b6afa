//! SIGKILL of the net device in the middle of TCP transfers both ways: the launcher starts a
//! new device process on the same socket and tap queues, QEMU (`reconnect=1`) connects to it
//! again, TCP retransmits what was lost on the wire, and all 64 MiB arrive intact each way
//! (SHA-256 at both ends). Twice during one transfer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use vu_tests::e2e::POWEROFF;
use vu_tests::net::{status_number, transfer, NetRig, Plan};
use vu_tests::supervisor::{sigkill, RECONNECT_TIMEOUT};

const MIB: u64 = 1 << 20;

/// Waits until the host peers have moved `bytes` in all (or the transfer ended).
fn wait_progress(progress: &AtomicU64, bytes: u64, done: &AtomicU64) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while progress.load(Ordering::Relaxed) < bytes {
        if done.load(Ordering::Relaxed) != 0 {
            return Ok(false);
        }
        ensure!(
            Instant::now() < deadline,
            "the transfer did not reach {bytes} bytes"
        );
        // The counter has no notification; the transfer takes seconds.
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(true)
}

#[test]
fn sigkill_of_the_device_mid_transfer_loses_nothing() -> Result<()> {
    let rig = NetRig::new(1, &[])?;
    let guest = rig.boot(1, true)?;
    let ctl = rig.ctl();
    let progress = Arc::new(AtomicU64::new(0));
    let done = AtomicU64::new(0);
    let plan = Plan {
        flows: 1,
        bytes: 64 * MIB,
        port: 6000,
    };
    let outcome = std::thread::scope(|s| -> Result<()> {
        let killer = s.spawn(|| -> Result<Vec<u32>> {
            let mut killed = Vec::new();
            // Both directions count: 128 MiB in all.
            for at in [24 * MIB, 72 * MIB] {
                if !wait_progress(&progress, at, &done)? {
                    bail!("the transfer ended before {} MiB", at / MIB);
                }
                let pid = rig.launcher.device_pid()?;
                sigkill(pid)?;
                killed.push(pid);
                ctl.wait_status("net0", "serving again", RECONNECT_TIMEOUT, |st| {
                    st.serving() && st.pid.is_some_and(|p| p != pid)
                })?;
            }
            Ok(killed)
        });
        let moved = transfer(&rig.netns, &guest, plan, &progress);
        done.store(1, Ordering::Relaxed);
        let killed = killer
            .join()
            .map_err(|_| anyhow::anyhow!("the killer thread panicked"))?;
        let moved = moved?;
        let killed = killed?;
        eprintln!(
            "moved {} MiB each way in {:.1} s with the device killed {} times (pids {killed:?})",
            moved.to_host / MIB,
            moved.elapsed.as_secs_f64(),
            killed.len()
        );
        let st = ctl.status("net0")?;
        ensure!(
            st.restarts.unwrap_or(0) >= 2,
            "the device was not restarted twice: {st:?}"
        );
        ensure!(
            st.last_exit
                .as_deref()
                .is_some_and(|e| e.contains("SIGKILL")),
            "last exit does not say SIGKILL: {:?}",
            st.last_exit
        );
        // The device's counters start again with each process: the last one moved frames.
        ensure!(
            status_number(&st, "tx_packets")? > 0 && status_number(&st, "rx_packets")? > 0,
            "the last device process moved no frames: {:?}",
            st.raw
        );
        Ok(())
    });
    rig.report(&guest, outcome)?;
    guest.poweroff(POWEROFF)?;
    drop(guest);
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
