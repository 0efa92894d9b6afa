//! Coverage audit of the rng device's seccomp policy (`rng_device.policy`) against the real
//! workload, with the audit of `vu_tests::audit` (strace, every call checked against the
//! policy, unused rules explained by `cold-path:` comments):
//!
//! * `urandom`: a guest reads /dev/hwrng (the default source); sleep and wake; sleep,
//!   snapshot, restart (a new process), sleep, restore, wake; the device killed (SIGKILL)
//!   while the guest reads, respawned and reconnected; a second front-end (rust-vmm's) that
//!   asks for an inflight area after the guest has gone; the device's shutdown (SIGTERM);
//! * `limited`: the same reads under `--max-bytes/--period` (the timer waits);
//! * `eof`: a regular file as the source: the guest reads it to its end, the device finds
//!   EOF and retries on its timer, the file grows and the guest's read completes.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use std::os::fd::AsRawFd;
use vu_tests::audit::{run_audit, Run};
use vu_tests::e2e::{CMD, POWEROFF};

use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vu_tests::frontend::{bits, negotiate, vh, DriverQueue, Options, TestGuest};
use vu_tests::guest::Guest;
use vu_tests::rng::{field, finish_background, read_hwrng, read_in_background, text_field, RngRig};
use vu_tests::supervisor::sigkill;

const DEV: &str = "rng0";

#[test]
fn rng_policy_covers_the_workload_and_nothing_is_unexplained() -> Result<()> {
    run_audit(
        "rng",
        vec![
            Run {
                name: "urandom",
                extra: &[],
                workload: Box::new(urandom),
            },
            Run {
                name: "limited",
                extra: &[],
                workload: Box::new(limited),
            },
            Run {
                name: "eof",
                extra: &[],
                workload: Box::new(eof),
            },
        ],
    )
}

/// Boots a guest on `rig`, runs `f`, powers the guest off and stops the launcher.
fn with_guest(rig: &RngRig, f: impl FnOnce(&Guest) -> Result<()>) -> Result<()> {
    let guest = rig.boot()?;
    rig.report(&guest, f(&guest))?;
    guest.poweroff(POWEROFF)?;
    Ok(())
}

fn urandom() -> Result<()> {
    let rig = RngRig::new(DEV, &[])?;
    with_guest(&rig, |g| {
        read_hwrng(g, "/tmp/a", 1 << 20)?;
        rig.ctl.ok(&["sleep", DEV])?;
        rig.ctl.ok(&["wake", DEV])?;
        read_hwrng(g, "/tmp/b", 64 << 10)?;
        let snap = rig.dir.path().join("s.bin").display().to_string();
        rig.ctl.ok(&["sleep", DEV])?;
        rig.ctl.ok(&["snapshot", DEV, "--out", &snap])?;
        let pid = rig.status()?.pid;
        rig.ctl.ok(&["restart", DEV])?;
        rig.wait_back(g, pid)?;
        rig.ctl.ok(&["sleep", DEV])?;
        rig.ctl.ok(&["restore", DEV, "--in", &snap])?;
        rig.ctl.ok(&["wake", DEV])?;
        read_hwrng(g, "/tmp/c", 64 << 10)?;
        // Killed while the guest reads: respawned, back in the guest, the read completes.
        read_in_background(g, "k", 2 << 20)?;
        let st = rig.status()?;
        sigkill(st.pid.context("no pid")?)?;
        rig.wait_back(g, st.pid)?;
        rig.resume_read(g, "k", 2 << 20)?;
        finish_background(g, "k", 2 << 20, Duration::from_secs(600))?;
        Ok(())
    })?;
    second_front_end(&rig)?;
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

/// A second front-end after the guest: rust-vmm's, with an inflight area (QEMU's
/// vhost-user-rng asks for none) and a few requests.
fn second_front_end(rig: &RngRig) -> Result<()> {
    let guest = TestGuest::standard()?;
    let mut fe = vh(Frontend::connect(&rig.socket, 1), "connect")?;
    let neg = negotiate(&mut fe, &Options::event_idx())?;
    let want = VhostUserInflight {
        mmap_size: 0,
        mmap_offset: 0,
        num_queues: 1,
        queue_size: 4,
    };
    let (info, file) = vh(fe.get_inflight_fd(&want), "GET_INFLIGHT_FD")?;
    vh(
        fe.set_inflight_fd(&info, file.as_raw_fd()),
        "SET_INFLIGHT_FD",
    )?;
    vh(
        fe.set_mem_table(&guest.regions_info(&[0, 1])),
        "SET_MEM_TABLE",
    )?;
    let mut dq = DriverQueue::new(&guest, 0, 4, 0)?;
    dq.set_event_idx(neg.features & bits::EVENT_IDX != 0)?;
    dq.setup(&mut fe, true)?;
    for _ in 0..4 {
        dq.submit_sg(&[], &[512])?;
    }
    dq.kick()?;
    let used = dq.wait_used(4, Duration::from_secs(60))?;
    ensure!(
        used.iter().all(|u| u.len == 512),
        "second front-end: {used:?}"
    );
    Ok(())
}

fn limited() -> Result<()> {
    let rig = RngRig::new(DEV, &["--max-bytes", "4096", "--period", "200"])?;
    with_guest(&rig, |g| {
        read_hwrng(g, "/tmp/a", 64 << 10)?;
        let st = rig.status()?;
        ensure!(
            field(&st, "rate_limit_waits_total").unwrap_or(0) > 0,
            "no waits: {st:?}"
        );
        Ok(())
    })?;
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

fn eof() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("entropy.bin");
    let chunk = |n: usize| -> Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        std::fs::File::open("/dev/urandom")?.read_exact_into(&mut v)?;
        Ok(v)
    };
    std::fs::write(&source, chunk(128 << 10)?)?;
    let source_s = source.display().to_string();
    let rig = RngRig::in_dir(dir, DEV, &["--source", &source_s])?;
    with_guest(&rig, |g| {
        // More than the file holds: the read waits at EOF.
        read_in_background(g, "e", 256 << 10)?;
        rig.ctl
            .wait_status(DEV, "at the end of its source", CMD, |s| {
                field(s, "source_eof_total").unwrap_or(0) >= 2
            })?;
        let st = rig.status()?;
        ensure!(
            text_field(&st, "source").is_some_and(|s| s != "ok"),
            "status does not report the source's end: {st:?}"
        );
        // The file grows: the device serves again and the read completes.
        OpenOptions::new()
            .append(true)
            .open(&source)?
            .write_all(&chunk(1 << 20)?)?;
        finish_background(g, "e", 256 << 10, Duration::from_secs(600))?;
        Ok(())
    })?;
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

/// `read_exact` for a `File` (one place, so the closure above stays short).
trait ReadExactInto {
    fn read_exact_into(&mut self, buf: &mut [u8]) -> std::io::Result<()>;
}

impl ReadExactInto for std::fs::File {
    fn read_exact_into(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        std::io::Read::read_exact(self, buf)
    }
}
