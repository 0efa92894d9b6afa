//! Metrics move with real traffic: an independent front-end (the rust-vmm `vhost` crate)
//! connects to an rng device under the launcher and takes entropy; `launcher ctl metrics` then
//! shows the front-end connected, the queue started and enabled, its requests, bytes, kicks
//! and notifications, and the rng's own bytes and requests, all agreeing with what the
//! front-end got; after it disconnects, the front-end is no longer connected.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vhost::vhost_user::Frontend;
use vhost::VhostBackend;
use vu_tests::frontend::{negotiate, DriverQueue, Options, TestGuest, TIMEOUT};
use vu_tests::launcher::Launcher;

/// Requests and bytes per request the front-end sends.
const REQUESTS: usize = 12;
const LEN: u32 = 256;

/// The value of the sample `name` of device `rng0` whose labels include `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (n, rest) = l.split_at(l.find(['{', ' ']).unwrap_or(l.len()));
            n == name
                && rest.contains("device=\"rng0\"")
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn metrics(l: &Launcher) -> Result<String> {
    let out = l.ctl(&["metrics"])?;
    ensure!(
        out.status.success(),
        "ctl metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Reads metrics until `pred` holds (the device reports what it has done so far).
fn metrics_until(l: &Launcher, what: &str, pred: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let m = metrics(l)?;
        if pred(&m) {
            return Ok(m);
        }
        if Instant::now() >= deadline {
            bail!("never {what}:\n{m}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn traffic_moves_the_queue_and_rng_metrics() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("rng0.sock");
    let args: Vec<String> = ["start", "rng", "--name", "rng0", "--socket"]
        .iter()
        .map(|s| s.to_string())
        .chain([socket.display().to_string()])
        .collect();
    let l = Launcher::spawn(&args, &socket)?;
    let before = metrics(&l)?;
    ensure!(
        sample(&before, "vu_device_frontend_connected", &[]) == Some(0.0),
        "connected before any front-end:\n{before}"
    );

    let mut fe = Frontend::connect(&socket, 1).context("connect")?;
    let guest = TestGuest::standard()?;
    negotiate(&mut fe, &Options::default())?;
    fe.set_mem_table(&guest.regions_info(&[0, 1]))
        .context("SET_MEM_TABLE")?;
    let mut dq = DriverQueue::new(&guest, 0, 16, 0)?;
    dq.setup(&mut fe, true)?;
    let mut got = 0usize;
    for _ in 0..REQUESTS / 4 {
        for _ in 0..4 {
            dq.submit_sg(&[], &[LEN])?;
        }
        dq.kick()?;
        let used = dq.wait_used(4, TIMEOUT)?;
        got += used.iter().map(|u| u.len as usize).sum::<usize>();
    }
    ensure!(got == REQUESTS * LEN as usize, "got {got} bytes");

    let q0 = [("queue", "0")];
    let m = metrics_until(&l, "all requests counted", |m| {
        sample(m, "vu_queue_requests_total", &q0) == Some(REQUESTS as f64)
    })?;
    let check = |name: &str, labels: &[(&str, &str)], want: f64| -> Result<()> {
        let v = sample(&m, name, labels);
        ensure!(
            v == Some(want),
            "{name}{labels:?} = {v:?}, want {want}:\n{m}"
        );
        Ok(())
    };
    check("vu_device_frontend_connected", &[], 1.0)?;
    check("vu_queue_started", &q0, 1.0)?;
    check("vu_queue_enabled", &q0, 1.0)?;
    check("vu_queue_to_driver_bytes_total", &q0, got as f64)?;
    check("vu_queue_from_driver_bytes_total", &q0, 0.0)?;
    check("vu_queue_chain_errors_total", &q0, 0.0)?;
    check("vu_rng_bytes_total", &[("kind", "rng")], got as f64)?;
    check("vu_rng_requests_total", &[], REQUESTS as f64)?;
    check("vu_rng_source_state", &[("state", "ok")], 1.0)?;
    let kicks = sample(&m, "vu_queue_kicks_total", &q0).unwrap_or(0.0);
    ensure!(kicks >= 1.0, "kicks {kicks}:\n{m}");
    let calls = sample(&m, "vu_queue_notifications_total", &q0).unwrap_or(0.0);
    ensure!(calls >= 1.0, "notifications {calls}:\n{m}");

    drop(dq);
    drop(fe);
    metrics_until(&l, "the front-end gone", |m| {
        sample(m, "vu_device_frontend_connected", &[]) == Some(0.0)
    })?;
    let st = l.terminate()?;
    ensure!(st.success(), "launcher exit: {st}");
    Ok(())
}
