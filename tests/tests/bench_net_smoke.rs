//! Keeps `vu-bench net` working: its library code against our net device (the launcher,
//! jailed) on a tap that sends every frame back, in a network namespace the test creates;
//! every frame kind, saturated and paced, for a fraction of a second. Checks counts and
//! contents, never timing.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vu_tests::bench::net::frames::FrameKind;
use vu_tests::bench::net::{run_net, NetBenchConfig, NetReport};
use vu_tests::launcher::Launcher;
use vu_tests::netns::TestNetns;

#[test]
fn frames_go_through_our_device_and_come_back() -> Result<()> {
    let ns = TestNetns::new("benchnet")?;
    ns.add_tap("vubt0", true, None)?;
    ns.reflect("vubt0")?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("net.sock");
    let args: Vec<String> = [
        "start",
        "net",
        "--socket",
        &socket.display().to_string(),
        "--tap",
        "vubt0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let launcher = ns.run(|| Launcher::spawn(&args, &socket))?;
    for (frame, window, rate) in [
        (FrameKind::Small, 64, None),
        (FrameKind::Mtu, 256, None),
        (FrameKind::Small, 16, Some(2000)),
        (FrameKind::Tso, 4, None),
    ] {
        let cfg = NetBenchConfig {
            socket: socket.clone(),
            frame,
            window,
            rate,
            runtime: Duration::from_millis(300),
            warmup: Duration::from_millis(100),
            check: true,
            server_pids: vec![launcher.pid()],
            stall_timeout: Duration::from_secs(30),
            ..NetBenchConfig::default()
        };
        let r = run_net(&cfg).with_context(|| device_state(&launcher))?;
        eprintln!("{}", r.table());
        check(frame, &r).with_context(|| device_state(&launcher))?;
    }
    let st = launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

/// The checks of one phase's report.
fn check(frame: FrameKind, r: &NetReport) -> Result<()> {
    let t = r.table();
    let res = &r.res;
    ensure!(
        res.rx_frames > 0 && res.matched > 0,
        "nothing came back:\n{t}"
    );
    ensure!(res.mismatched == 0, "frames came back changed:\n{t}");
    ensure!(res.tx_frames >= res.rx_frames, "more back than sent:\n{t}");
    if frame == FrameKind::Tso {
        // The kernel hands the TSO frames back whole (GUEST_TSO4: the tap's offloads).
        ensure!(
            res.rx_bytes / res.rx_frames >= 65000,
            "TSO frames came back segmented:\n{t}"
        );
    }
    ensure!(r.server_cpu_s.is_some(), "no server CPU figure:\n{t}");
    let j = r.json();
    ensure!(
        j.starts_with('{') && j.contains("\"device\":\"net\""),
        "{j}"
    );
    Ok(())
}

/// What the device was doing when a phase failed: its counters and queues as the launcher
/// reports them (`launcher ctl status`: restarts and crashes, kicks, notifications, requests
/// in flight per queue), and where each of its threads waits in the kernel.
fn device_state(launcher: &Launcher) -> String {
    let status = match launcher.ctl(&["status"]) {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("no status: {e:#}"),
    };
    let threads = match launcher.device_pid() {
        Ok(pid) => thread_waits(pid),
        Err(e) => format!("no device process: {e:#}"),
    };
    format!("device state when the phase failed:\n{status}device threads:\n{threads}")
}

/// `name: wchan` of every thread of `pid`.
fn thread_waits(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("process {pid} is gone\n");
    };
    let mut out = String::new();
    for t in tasks.flatten() {
        let read = |f: &str| {
            std::fs::read_to_string(t.path().join(f))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        out += &format!(
            "  {} {}: {}\n",
            t.file_name().to_string_lossy(),
            read("comm"),
            read("wchan")
        );
    }
    out
}
