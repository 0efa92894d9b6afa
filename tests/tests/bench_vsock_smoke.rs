//! Keeps `vu-bench vsock` working: its library code against our vsock device served by the
//! launcher (jailed), each workload for half a second, at saturation and paced. Checks that
//! traffic flowed and nothing was reset, never timing.

use std::time::Duration;

use anyhow::{ensure, Result};
use vu_tests::bench::vsock::{run_vsock, Mode, VsockBenchConfig};
use vu_tests::launcher::Launcher;

#[test]
fn every_workload_against_the_launchers_vsock_device() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("vsock-bench").tempdir()?;
    let socket = dir.path().join("vu.sock");
    let uds = dir.path().join("v.sock");
    let args: Vec<String> = [
        "start",
        "vsock",
        "--socket",
        &socket.display().to_string(),
        "--guest-cid",
        "5",
        "--uds-path",
        &uds.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let launcher = Launcher::spawn(&args, &socket)?;
    for (mode, rate, event_idx) in [
        (Mode::ToHost, None, true),
        (Mode::FromHost, None, false),
        (Mode::Churn, None, true),
        (Mode::ToHost, Some(8.0), true),
        (Mode::Churn, Some(200.0), false),
    ] {
        let cfg = VsockBenchConfig {
            socket: socket.clone(),
            uds_path: uds.clone(),
            mode,
            parallel: if mode == Mode::Churn { 8 } else { 2 },
            rate,
            event_idx,
            runtime: Duration::from_millis(500),
            server_pids: vec![launcher.pid()],
            stall_timeout: Duration::from_secs(30),
            ..VsockBenchConfig::default()
        };
        let r = run_vsock(&cfg)?;
        let t = r.table();
        ensure!(r.resets == 0, "{t}");
        match mode {
            Mode::Churn => ensure!(r.connections > 0 && r.bytes == 0, "{t}"),
            _ => ensure!(r.bytes > 0 && r.connections == 0, "{t}"),
        }
        if let Some(mib) = rate.filter(|_| mode != Mode::Churn) {
            // Paced: not much above the rate (a burst of one packet).
            ensure!(r.mib_s() < mib * 2.0 + 1.0, "{t}");
        }
        ensure!(r.server_cpu_s.is_some() && r.event_idx == event_idx, "{t}");
        let j = r.json();
        ensure!(
            j.starts_with('{') && j.ends_with('}') && j.contains("\"device\":\"vsock\""),
            "{j}"
        );
    }
    let st = launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
