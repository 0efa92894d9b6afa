//! Several devices under one supervisor (`launcher start --config FILE.toml`): each has its
//! own process and its own options; a crash or a sleep of one leaves the other serving; one
//! SIGTERM stops both and removes their sockets.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vu_tests::e2e::{pattern_cmd, CMD, POWEROFF};
use vu_tests::guest::{qemu_available, Guest, GuestConfig, GuestImage, VhostUserBlkDisk};
use vu_tests::launcher::Launcher;
use vu_tests::supervisor::{pid_alive, sigkill, Ctl, DevStatus, RECONNECT_TIMEOUT};

const BLOCKS: usize = 32;

fn serving(ctl: &Ctl, dev: &str) -> Result<DevStatus> {
    ctl.wait_status(dev, "serving", RECONNECT_TIMEOUT, DevStatus::serving)
}

fn run(ctl: &Ctl, g: &Guest) -> Result<()> {
    let a = serving(ctl, "sys")?;
    let b = serving(ctl, "data")?;
    let (pa, pb) = (a.pid.context("no pid")?, b.pid.context("no pid")?);
    ensure!(pa != pb, "both devices report process {pa}");
    let list = ctl.ok(&["list"])?;
    ensure!(
        list.contains("sys") && list.contains("data"),
        "list:\n{list}"
    );
    // The options of each reached its device.
    ensure!(
        g.run_ok(
            "cat /sys/block/vda/size /sys/block/vdb/size /sys/block/vdb/ro",
            CMD
        )?
        .split_whitespace()
        .collect::<Vec<_>>()
            == ["65536", "32768", "1"],
        "sizes or read-only flag wrong"
    );
    ensure!(a.capacity_bytes == Some(32 << 20), "{a:?}");
    let write_b = g.run(
        "dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct",
        CMD,
    )?;
    ensure!(
        !write_b.success(),
        "a write to the read-only disk succeeded"
    );

    g.run_ok(&pattern_cmd("SYS", BLOCKS, "/tmp/sys.bin"), CMD)?;
    let write_a = "dd if=/tmp/sys.bin of=/dev/vda bs=4096 oflag=direct conv=fsync";
    let check_a = format!(
        "dd if=/dev/vda bs=4096 count={BLOCKS} iflag=direct 2>/dev/null | cmp - /tmp/sys.bin"
    );
    let read_b = "dd if=/dev/vdb of=/dev/null bs=4096 count=64 iflag=direct";
    g.run_ok(write_a, CMD)?;

    // A crash of one device: it comes back, the other is untouched and serves meanwhile.
    sigkill(pa)?;
    g.run_ok(read_b, CMD)?;
    let a2 = ctl.wait_status("sys", "respawned", RECONNECT_TIMEOUT, |s| {
        s.pid.is_some_and(|p| p != pa) && s.serving()
    })?;
    ensure!(!pid_alive(pa), "killed process {pa} still there");
    let b2 = ctl.status("data")?;
    ensure!(
        b2.pid == Some(pb) && b2.restarts == Some(0) && b2.serving(),
        "the other device was disturbed: {b2:?}"
    );
    ensure!(a2.restarts == Some(1), "{a2:?}");
    g.run_ok(&check_a, CMD)?;

    // One asleep, the other serves.
    ctl.ok(&["sleep", "data"])?;
    g.run_ok(write_a, CMD)?;
    g.run_ok(&check_a, CMD)?;
    ensure!(ctl.status("data")?.state == "asleep", "data not asleep");
    ensure!(ctl.status("sys")?.state == "running", "sys not running");
    ctl.ok(&["wake", "data"])?;
    g.run_ok(read_b, CMD)?;
    Ok(())
}

#[test]
fn two_devices_from_a_config_file_are_independent() -> Result<()> {
    ensure!(qemu_available(), "qemu-system-x86_64 is not installed");
    let dir = tempfile::tempdir()?;
    let p = |n: &str| dir.path().join(n);
    std::fs::File::create(p("sys.img"))?.set_len(32 << 20)?;
    std::fs::File::create(p("data.img"))?.set_len(16 << 20)?;
    let config = format!(
        "control = \"{ctl}\"\n\n\
         [[device]]\nname = \"sys\"\nkind = \"block\"\nsocket = \"{sa}\"\nfile = \"{fa}\"\n\
         num_queues = 2\n\n\
         [[device]]\nname = \"data\"\nkind = \"block\"\nsocket = \"{sb}\"\nfile = \"{fb}\"\n\
         read_only = true\n",
        ctl = p("control.sock").display(),
        sa = p("sys.sock").display(),
        fa = p("sys.img").display(),
        sb = p("data.sock").display(),
        fb = p("data.img").display(),
    );
    std::fs::write(p("vm.toml"), &config)?;
    let launcher = Launcher::spawn(
        &[
            "start".into(),
            "--config".into(),
            p("vm.toml").display().to_string(),
            // The same path as the file's `control`: the test harness otherwise hands every
            // launcher a control socket of its own (through the environment), which wins.
            "--control".into(),
            p("control.sock").display().to_string(),
        ],
        &p("sys.sock"),
    )?;
    let ctl = Ctl::new(p("control.sock"));
    ctl.wait_status("data", "running", Duration::from_secs(60), |s| {
        s.state == "running"
    })?;
    let disks = ["sys.sock", "data.sock"].map(|s| {
        let mut d = VhostUserBlkDisk::new(p(s));
        d.reconnect = true;
        d
    });
    let cfg = GuestConfig {
        vhost_user_blk: disks.to_vec(),
        ..GuestConfig::default()
    };
    let guest = Guest::boot(&GuestImage::locate()?, &cfg)?;
    let r = run(&ctl, &guest);
    if r.is_err() {
        eprintln!(
            "---- guest console ({}) ----\n{}\n---- launcher ----\n{}",
            guest.log_path().display(),
            guest.console(),
            launcher.stderr()
        );
    }
    r?;
    guest.poweroff(POWEROFF)?;
    let st = launcher.terminate()?;
    ensure!(st.success(), "supervisor exited {st}");
    for s in ["sys.sock", "data.sock", "control.sock"] {
        ensure!(!p(s).exists(), "{s} left behind");
    }
    Ok(())
}
