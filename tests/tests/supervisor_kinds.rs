//! Two kinds under one supervisor (`launcher start --config`): a block device and an rng
//! device serve one guest (its /dev/vda and its /dev/hwrng). `ctl list` shows both with their
//! kinds; each is controlled by name (status with its own fields, sleep/wake, restart) while
//! the other serves on undisturbed; each killed (SIGKILL) is started again, the guest's
//! QEMU reconnects and the other keeps its process. (QEMU 9.0 and later cannot reconnect a
//! `vhost-user-rng-pci`: there the rng device is plugged again after its process is
//! replaced, and a read it cut short starts again; see `vu_tests::rng`.)

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vu_tests::e2e::{pattern_cmd, CMD, POWEROFF};
use vu_tests::guest::{qemu_available, Guest, GuestConfig, GuestImage, VhostUserBlkDisk};
use vu_tests::launcher::Launcher;
use vu_tests::qmp::{hotplug_args, Qmp};
use vu_tests::rng::{
    check_random, field, finish_background, read_hwrng, read_in_background, resume_read,
    text_field, RngPlug,
};
use vu_tests::supervisor::{pid_alive, sigkill, Ctl, DevStatus, RECONNECT_TIMEOUT};

const DISK: &str = "disk0";
const RNG: &str = "rng0";
const BLOCKS: usize = 32;

fn serving(ctl: &Ctl, dev: &str) -> Result<DevStatus> {
    ctl.wait_status(dev, "serving", RECONNECT_TIMEOUT, DevStatus::serving)
}

/// The guest's disk answers: writes the pattern and reads it back.
fn disk_works(g: &Guest) -> Result<()> {
    g.run_ok(
        "dd if=/tmp/p of=/dev/vda bs=4096 oflag=direct conv=fsync 2>/dev/null",
        CMD,
    )?;
    g.run_ok(
        &format!("dd if=/dev/vda bs=4096 count={BLOCKS} iflag=direct 2>/dev/null | cmp - /tmp/p"),
        CMD,
    )?;
    Ok(())
}

/// The guest's rng answers.
fn rng_works(g: &Guest) -> Result<()> {
    read_hwrng(g, "/tmp/r", 64 << 10)?;
    Ok(())
}

fn list_shows_both(ctl: &Ctl) -> Result<()> {
    let list = ctl.ok(&["list"])?;
    for (name, kind) in [(DISK, "block"), (RNG, "rng")] {
        ensure!(
            list.lines()
                .any(|l| l.split_whitespace().any(|w| w == name) && l.contains(kind)),
            "`ctl list` has no line with {name} and {kind}:\n{list}"
        );
    }
    let json = ctl.json(&["list"])?;
    for (name, kind) in [(DISK, "block"), (RNG, "rng")] {
        let d = json.device(name).context("device in ctl --json list")?;
        ensure!(
            d.get("kind").map(|k| k.text()).as_deref() == Some(kind),
            "{name}: kind in ctl --json list: {d:?}"
        );
    }
    Ok(())
}

/// Waits for `dev`'s process after `old` to serve the guest: the rng device through `rng`
/// (which plugs it again where QEMU cannot reconnect it), the disk by QEMU's reconnect.
fn wait_back(
    ctl: &Ctl,
    g: &Guest,
    rng: &RngPlug,
    dev: &str,
    old: Option<u32>,
) -> Result<DevStatus> {
    if dev == RNG {
        return rng.wait_back(ctl, dev, g, old);
    }
    ctl.wait_status(dev, "respawned", RECONNECT_TIMEOUT, |s| {
        s.pid.is_some() && s.pid != old && s.serving()
    })
}

/// Kills `dev`, waits for its successor to serve; the other device keeps its process.
fn kill_one(ctl: &Ctl, g: &Guest, rng: &RngPlug, dev: &str, other: &str) -> Result<()> {
    let before = ctl.status(other)?;
    let pid = ctl.status(dev)?.pid.context("no pid")?;
    sigkill(pid)?;
    let st = wait_back(ctl, g, rng, dev, Some(pid))?;
    ensure!(!pid_alive(pid), "{dev}: killed process {pid} still there");
    ensure!(st.restarts == Some(1), "{dev}: {st:?}");
    let after = ctl.status(other)?;
    ensure!(
        after.pid == before.pid && after.restarts == before.restarts && after.serving(),
        "{other} was disturbed by the kill of {dev}: {before:?} -> {after:?}"
    );
    Ok(())
}

/// Sleeps `dev`; the other device serves the guest meanwhile; wakes it.
fn sleep_one(ctl: &Ctl, g: &Guest, dev: &str, other_works: fn(&Guest) -> Result<()>) -> Result<()> {
    ctl.ok(&["sleep", dev])?;
    let other = if dev == DISK { RNG } else { DISK };
    ensure!(ctl.status(dev)?.state == "asleep", "{dev} not asleep");
    ensure!(ctl.status(other)?.state == "running", "{other} not running");
    other_works(g)?;
    ctl.ok(&["wake", dev])?;
    ensure!(ctl.status(dev)?.state == "running", "{dev} not running");
    Ok(())
}

/// Restarts `dev` by name: a new process, the guest reconnected; the other keeps its own.
fn restart_one(ctl: &Ctl, g: &Guest, rng: &RngPlug, dev: &str, other: &str) -> Result<()> {
    let old = ctl.status(dev)?.pid;
    let other_pid = ctl.status(other)?.pid;
    ctl.ok(&["restart", dev])?;
    wait_back(ctl, g, rng, dev, old)?;
    ensure!(
        ctl.status(other)?.pid == other_pid,
        "{other} changed process when {dev} restarted"
    );
    Ok(())
}

fn run(ctl: &Ctl, g: &Guest, plug: &RngPlug) -> Result<()> {
    let disk = serving(ctl, DISK)?;
    let rng = serving(ctl, RNG)?;
    ensure!(disk.pid != rng.pid, "one process for both devices");
    list_shows_both(ctl)?;
    // Each status has its kind's fields.
    ensure!(disk.capacity_bytes == Some(32 << 20), "{disk:?}");
    ensure!(
        text_field(&rng, "source_kind").as_deref() == Some("character device")
            && field(&rng, "max_bytes") == Some(4 << 20),
        "{rng:?}"
    );
    ensure!(
        field(&disk, "bytes_total").is_none() && disk.raw.find_key("source").is_none(),
        "the block device's status has rng fields: {disk:?}"
    );
    g.run_ok(&pattern_cmd("KINDS", BLOCKS, "/tmp/p"), CMD)?;
    disk_works(g)?;
    rng_works(g)?;

    // Each killed while the guest uses it.
    read_in_background(g, "k", 1 << 20)?;
    kill_one(ctl, g, plug, RNG, DISK)?;
    resume_read(g, "k", 1 << 20)?;
    disk_works(g)?;
    let path = finish_background(g, "k", 1 << 20, Duration::from_secs(600))?;
    check_random(g, &path)?;
    kill_one(ctl, g, plug, DISK, RNG)?;
    disk_works(g)?;
    rng_works(g)?;

    // Each controlled by name.
    sleep_one(ctl, g, RNG, disk_works)?;
    rng_works(g)?;
    sleep_one(ctl, g, DISK, rng_works)?;
    disk_works(g)?;
    restart_one(ctl, g, plug, RNG, DISK)?;
    rng_works(g)?;
    restart_one(ctl, g, plug, DISK, RNG)?;
    disk_works(g)
}

fn config(dir: &Path) -> String {
    let p = |n: &str| dir.join(n).display().to_string();
    format!(
        "control = \"{ctl}\"\n\n\
         [[device]]\nname = \"{DISK}\"\nkind = \"block\"\nsocket = \"{bs}\"\nfile = \"{img}\"\n\n\
         [[device]]\nname = \"{RNG}\"\nkind = \"rng\"\nsocket = \"{rs}\"\n\
         source = \"/dev/urandom\"\nmax_bytes = {max}\nperiod = 1000\nqueue_size = 64\n",
        ctl = p("control.sock"),
        bs = p("disk.sock"),
        img = p("disk.img"),
        rs = p("rng.sock"),
        max = 4 << 20,
    )
}

#[test]
fn a_block_and_an_rng_device_under_one_supervisor() -> Result<()> {
    ensure!(qemu_available(), "qemu-system-x86_64 is not installed");
    let dir = tempfile::tempdir()?;
    let p = |n: &str| dir.path().join(n);
    std::fs::File::create(p("disk.img"))?.set_len(32 << 20)?;
    std::fs::write(p("vm.toml"), config(dir.path()))?;
    let launcher = Launcher::spawn(
        &[
            "start".into(),
            "--config".into(),
            p("vm.toml").display().to_string(),
            // The file's `control`: the harness otherwise hands the launcher its own.
            "--control".into(),
            p("control.sock").display().to_string(),
        ],
        &p("disk.sock"),
    )?;
    let ctl = Ctl::new(p("control.sock"));
    ctl.wait_status(RNG, "running", Duration::from_secs(60), |s| {
        s.state == "running"
    })?;
    let mut disk = VhostUserBlkDisk::new(p("disk.sock"));
    disk.reconnect = true;
    let cfg = GuestConfig {
        vhost_user_blk: vec![disk],
        extra_args: hotplug_args(&p("qmp.sock"), 1),
        ..GuestConfig::default()
    };
    let guest = Guest::boot(&GuestImage::locate()?, &cfg)?;
    let qmp = Qmp::connect(&p("qmp.sock"), Duration::from_secs(30))?;
    let rng = RngPlug::new(qmp, &p("rng.sock"));
    let r = rng.plug(&guest).and_then(|()| run(&ctl, &guest, &rng));
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
    for s in ["disk.sock", "rng.sock", "control.sock"] {
        ensure!(!p(s).exists(), "{s} left behind");
    }
    Ok(())
}
