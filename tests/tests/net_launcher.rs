//! `launcher start net` without a guest, in a network namespace the test creates: taps it
//! cannot serve are refused before any device process starts (exit 1, with what to do), a
//! config file's `kind = "net"` device serves a multi-queue tap, and `launcher ctl status`
//! shows the device's counters and the tap's own.

use std::path::Path;

use anyhow::{bail, ensure, Result};
use vu_tests::launcher::{Launcher, Spawned};
use vu_tests::net::status_number;
use vu_tests::netns::TestNetns;

fn start_args(socket: &Path, tap: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "start".into(),
        "net".into(),
        "--socket".into(),
        socket.display().to_string(),
        "--tap".into(),
        tap.into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Starts a launcher in `ns` that must refuse to start; returns its stderr.
fn refused(ns: &TestNetns, socket: &Path, tap: &str, extra: &[&str]) -> Result<String> {
    let args = start_args(socket, tap, extra);
    match ns.run(|| Launcher::try_spawn(&args, socket))? {
        Spawned::Exited { status, stderr } => {
            ensure!(status.code() == Some(1), "exit status {status}:\n{stderr}");
            ensure!(
                !stderr.contains("device process started"),
                "a device process was started:\n{stderr}"
            );
            ensure!(!socket.exists(), "the socket was left behind");
            Ok(stderr)
        }
        Spawned::Ready(_) => bail!("launcher start net --tap {tap} {extra:?} was not refused"),
    }
}

#[test]
fn taps_that_cannot_be_served_are_refused_before_any_device_starts() -> Result<()> {
    let ns = TestNetns::new("netcli")?;
    ns.add_tap("single", false, None)?;
    ns.ip(&[
        "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
    ])?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("net.sock");

    let e = refused(&ns, &socket, "nosuchtap", &[])?;
    ensure!(
        e.contains("no tap named \"nosuchtap\"")
            && e.contains("ip tuntap add dev nosuchtap mode tap multi_queue vnet_hdr"),
        "a missing tap is not explained:\n{e}"
    );
    let e = refused(&ns, &socket, "single", &["--queue-pairs", "2"])?;
    ensure!(
        e.contains("created without multi_queue") && e.contains("2 queue pairs"),
        "a single-queue tap for two pairs is not explained:\n{e}"
    );
    let e = refused(&ns, &socket, "veth0", &[])?;
    ensure!(
        e.contains("is not a tap"),
        "a veth is not refused as such:\n{e}"
    );
    let e = refused(&ns, &socket, "a-name-far-too-long", &[])?;
    ensure!(
        e.contains("not a valid interface name"),
        "a long name is not refused:\n{e}"
    );
    // A single-queue tap serves one pair.
    let args = start_args(&socket, "single", &[]);
    let l = ns.run(|| Launcher::spawn(&args, &socket))?;
    let st = l.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

#[test]
fn a_config_file_serves_a_multi_queue_tap_and_status_shows_its_counters() -> Result<()> {
    let ns = TestNetns::new("netcfg")?;
    ns.add_tap("vutap0", true, Some("10.77.0.1/24"))?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("net.sock");
    let config = dir.path().join("devices.toml");
    std::fs::write(
        &config,
        format!(
            "[[device]]\nname = \"eth0\"\nkind = \"net\"\nsocket = \"{}\"\ntap = \"vutap0\"\n\
             queue_pairs = 2\nqueue_size = 512\nmtu = 9000\nmac = \"52:54:00:00:00:07\"\n",
            socket.display()
        ),
    )?;
    let args = vec![
        "start".into(),
        "--config".into(),
        config.display().to_string(),
    ];
    let l = ns.run(|| Launcher::spawn(&args, &socket))?;
    let log = l.stderr();
    ensure!(
        log.contains("tap opened") && log.contains("queue_pairs=2"),
        "no tap in the log:\n{log}"
    );
    // Frames sent to the guest's side while no front-end is connected wait in the tap and
    // are dropped there once its queue is full: the tap's own counters show them.
    ns.run(|| {
        let s = std::net::UdpSocket::bind("10.77.0.1:0")?;
        s.set_broadcast(true)?;
        for _ in 0..2000 {
            let _ = s.send_to(&[0u8; 64], "10.77.0.255:9");
        }
        Ok(())
    })?;
    let ctl = vu_tests::supervisor::Ctl::new(l.control());
    let st = ctl.status("eth0")?;
    for (key, want) in [
        ("queue_pairs", "2"),
        ("mtu", "9000"),
        ("mac", "52:54:00:00:00:07"),
    ] {
        let got = st.raw.find_key(key).map(|v| v.text());
        ensure!(got.as_deref() == Some(want), "{key}: {got:?}, not {want}");
    }
    ensure!(
        status_number(&st, "rx_packets")? == 0,
        "frames reached a device without a front-end"
    );
    let dropped = status_number(&st, "tap_dropped_to_device")?;
    ensure!(
        dropped > 0,
        "the tap's counters do not show the dropped frames: {:?}",
        st.raw
    );
    let text = ctl.ok(&["status", "eth0"])?;
    ensure!(
        text.contains("tap_dropped_to_device:") && text.contains("queue 3:"),
        "status text:\n{text}"
    );
    let st = l.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
