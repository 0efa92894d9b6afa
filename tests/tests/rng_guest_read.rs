//! A real guest uses our rng device: the kernel's hw_random core picks `virtio_rng.0`, the
//! guest reads 4 MiB from /dev/hwrng and they look random (gzip cannot shrink them, a flat
//! byte histogram, no 4 KiB block twice), and `launcher ctl status` shows the rng fields
//! (the source, its kind, the bytes and requests served, no EOF or error).

use anyhow::{ensure, Context, Result};
use vu_tests::e2e::{CMD, POWEROFF};
use vu_tests::guest::Guest;
use vu_tests::rng::{check_random, field, read_hwrng, text_field, RngRig, RNG_CURRENT, VIRTIO_RNG};

const DEV: &str = "entropy0";
const BYTES: u64 = 4 << 20;

fn run(rig: &RngRig, g: &Guest) -> Result<()> {
    let current = g.run_ok(&format!("cat {RNG_CURRENT}"), CMD)?;
    ensure!(current.trim() == VIRTIO_RNG, "rng_current: {current:?}");
    let before = rig.status()?;
    let served_before = field(&before, "bytes_total").context("no bytes_total in status")?;

    let secs = read_hwrng(g, "/tmp/r", BYTES)?;
    eprintln!(
        "the guest read {BYTES} bytes from /dev/hwrng in {secs:.2} s ({:.0} KiB/s)",
        BYTES as f64 / 1024.0 / secs.max(0.01)
    );
    check_random(g, "/tmp/r")?;

    let st = rig.status()?;
    ensure!(st.serving(), "status: {st:?}");
    ensure!(
        text_field(&st, "source").as_deref() == Some("ok"),
        "source: {st:?}"
    );
    ensure!(
        text_field(&st, "source_kind").as_deref() == Some("character device"),
        "source_kind: {st:?}"
    );
    let served = field(&st, "bytes_total").context("bytes_total")?;
    ensure!(
        served >= served_before + BYTES,
        "the device served {} bytes while the guest read {BYTES}",
        served - served_before
    );
    // The guest's driver asks for small buffers, one at a time.
    let requests = field(&st, "requests_total").context("requests_total")?;
    ensure!(
        requests >= BYTES / 4096,
        "{requests} requests for {served} bytes"
    );
    for k in [
        "empty_requests_total",
        "source_eof_total",
        "source_errors_total",
        "rate_limit_waits_total",
    ] {
        ensure!(field(&st, k) == Some(0), "{k}: {st:?}");
    }
    ensure!(
        st.completed.unwrap_or(0) >= requests,
        "queue counters: {st:?}"
    );
    // The human status names the rng fields too.
    let human = rig.ctl.ok(&["status", DEV])?;
    for k in ["source", "character device", "bytes_total"] {
        ensure!(human.contains(k), "human status lacks {k}:\n{human}");
    }
    Ok(())
}

#[test]
fn a_guest_reads_random_bytes_from_hwrng() -> Result<()> {
    let rig = RngRig::new(DEV, &[])?;
    let guest = rig.boot()?;
    rig.report(&guest, run(&rig, &guest))?;
    guest.poweroff(POWEROFF)?;
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
