//! The rate limit as the guest sees it: with `--max-bytes 10000 --period 250` (not a
//! multiple of the guest's 512-byte requests, so some are filled in part) a guest reading
//! 256 KiB from /dev/hwrng takes at least as long as the windows allow, by its own clock,
//! and not so long that the limit starves it; the device's own counter, sampled from the
//! host while the guest reads, never runs ahead of the limit; status shows the limit and
//! the waits.
//!
//! The limit counts fixed windows of one period, each with a budget of max-bytes (QEMU's
//! rng-random and vhost-device-rng count the same way): in any stretch of time T at most
//! max-bytes * (T / period + 2) bytes go out (a window may start just before the stretch and
//! another end just after it).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use vu_tests::e2e::{CMD, POWEROFF};
use vu_tests::guest::Guest;
use vu_tests::rng::{
    check_random, field, finish_background, read_hwrng, read_in_background, RngRig,
};

const DEV: &str = "slow0";
const MAX_BYTES: u64 = 10_000;
const PERIOD: Duration = Duration::from_millis(250);
const BYTES: u64 = 256 << 10;

/// The least time `bytes` can take under the limit.
fn least_time(bytes: u64) -> f64 {
    (bytes as f64 / MAX_BYTES as f64 - 2.0).max(0.0) * PERIOD.as_secs_f64()
}

/// The most bytes the limit lets out in `secs`.
fn most_bytes(secs: f64) -> f64 {
    MAX_BYTES as f64 * (secs / PERIOD.as_secs_f64() + 2.0)
}

fn run(rig: &RngRig, g: &Guest) -> Result<()> {
    let st = rig.status()?;
    ensure!(
        field(&st, "max_bytes") == Some(MAX_BYTES)
            && field(&st, "period_ms") == Some(PERIOD.as_millis() as u64),
        "status does not show the limit: {st:?}"
    );

    // By the guest's clock.
    let secs = read_hwrng(g, "/tmp/r", BYTES)?;
    let least = least_time(BYTES);
    eprintln!(
        "the guest read {BYTES} bytes in {secs:.2} s ({:.0} B/s; the limit allows {:.0} B/s, so \
         at least {least:.2} s)",
        BYTES as f64 / secs,
        MAX_BYTES as f64 / PERIOD.as_secs_f64()
    );
    // /proc/uptime counts in 10 ms steps.
    ensure!(
        secs + 0.02 >= least,
        "the guest read {BYTES} bytes in {secs:.2} s: faster than the limit allows ({least:.2} s)"
    );
    ensure!(
        secs <= least * 4.0 + 60.0,
        "the guest read {BYTES} bytes in {secs:.2} s: the limit starves it ({least:.2} s expected)"
    );
    check_random(g, "/tmp/r")?;

    // By the device's counter, sampled from the host while the guest reads.
    read_in_background(g, "bg", BYTES)?;
    let (t0, b0) = (Instant::now(), served(rig)?);
    std::thread::sleep(Duration::from_secs(3));
    let mut worst: f64 = 0.0;
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(1));
        // The window is measured from before the first sample to after the last one: a
        // longer stretch than the bytes really took, so the check errs towards passing only
        // by the scheduling delay of a `ctl` call.
        let b1 = served(rig)?;
        let secs = t0.elapsed().as_secs_f64();
        let allowed = most_bytes(secs);
        let got = (b1 - b0) as f64;
        worst = worst.max(got / allowed);
        ensure!(
            got <= allowed,
            "the device served {got} bytes in {secs:.2} s; the limit allows {allowed:.0}"
        );
    }
    eprintln!(
        "device counter: at most {:.0}% of what the limit allows",
        worst * 100.0
    );
    ensure!(worst > 0.3, "the device served little while the guest read");
    finish_background(g, "bg", BYTES, Duration::from_secs(600))?;
    let st = rig.status()?;
    ensure!(
        field(&st, "rate_limit_waits_total").unwrap_or(0) > 0,
        "no rate-limit waits counted: {st:?}"
    );
    ensure!(
        field(&st, "empty_requests_total") == Some(0),
        "empty requests: {st:?}"
    );
    Ok(())
}

fn served(rig: &RngRig) -> Result<u64> {
    field(&rig.status()?, "bytes_total").context("no bytes_total in status")
}

#[test]
fn the_rate_limit_holds_as_the_guest_sees_it() -> Result<()> {
    let rig = RngRig::new(
        DEV,
        &[
            "--max-bytes",
            &MAX_BYTES.to_string(),
            "--period",
            &PERIOD.as_millis().to_string(),
        ],
    )?;
    let guest = rig.boot()?;
    rig.report(&guest, run(&rig, &guest))?;
    let st = rig.status()?;
    guest.run_ok("true", CMD)?;
    guest.poweroff(POWEROFF)?;
    let end = rig.launcher.terminate()?;
    ensure!(end.success(), "launcher exited with {end} ({st:?})");
    Ok(())
}
