//! Boots the test guest without disks and checks the serial-console harness itself.
//!
//! Needs the image: `tests/guest/build-image.sh .cache/guest` (as root), or `$VU_GUEST_DIR`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use vu_tests::guest::{qemu_available, Guest, GuestConfig, GuestImage};

const CMD_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn guest_boots_runs_commands_and_powers_off() -> Result<()> {
    ensure!(qemu_available(), "qemu-system-x86_64 is not installed");
    let image = GuestImage::locate()?;
    let started = Instant::now();
    let guest = Guest::boot(&image, &GuestConfig::default())?;
    eprintln!(
        "guest booted in {:?}; log: {}",
        started.elapsed(),
        guest.log_path().display()
    );
    let result = exercise(&guest);
    if result.is_err() {
        eprintln!(
            "guest log: {}\n{}",
            guest.log_path().display(),
            guest.console()
        );
    }
    result?;
    guest.poweroff(Duration::from_secs(60))?;
    eprintln!("guest session took {:?}", started.elapsed());
    Ok(())
}

fn exercise(guest: &Guest) -> Result<()> {
    // Kernel and command line.
    let release = guest.run_ok("uname -r", CMD_TIMEOUT)?;
    ensure!(
        release.trim().ends_with("-cloud-amd64"),
        "unexpected kernel release {release:?}"
    );
    let cmdline = guest.run_ok("cat /proc/cmdline", CMD_TIMEOUT)?;
    ensure!(
        cmdline.contains("console=ttyS0") && cmdline.contains("panic=-1"),
        "unexpected kernel command line {cmdline:?}"
    );

    // The virtio modules are loaded (no device yet, so virtio_blk just sits there).
    let modules = guest.run_ok("cat /proc/modules", CMD_TIMEOUT)?;
    for module in ["virtio_ring", "virtio_pci", "virtio_blk"] {
        ensure!(modules.contains(module), "{module} not loaded:\n{modules}");
    }

    // fio and its shared libraries made it into the initramfs.
    let fio = guest.run_ok("fio --version", CMD_TIMEOUT)?;
    ensure!(
        fio.trim().starts_with("fio-"),
        "unexpected fio output {fio:?}"
    );
    guest
        .run_ok(
            "blkdiscard --help 2>&1 | head -n1; which dd sync cmp md5sum sha256sum",
            CMD_TIMEOUT,
        )
        .context("busybox applets")?;

    // Exit statuses.
    let out = guest.run("false", CMD_TIMEOUT)?;
    ensure!(
        out.status == 1 && out.stdout.is_empty(),
        "false gave {out:?}"
    );
    let out = guest.run("exit 7", CMD_TIMEOUT)?;
    ensure!(out.status == 7, "exit 7 gave {out:?}");
    ensure!(
        guest.run_ok("false", CMD_TIMEOUT).is_err(),
        "run_ok accepted a failing command"
    );
    let out = guest.run("echo to-stderr >&2; true", CMD_TIMEOUT)?;
    ensure!(
        out.stdout == "to-stderr\n" && out.status == 0,
        "stderr: {out:?}"
    );

    // Output comes back intact: several lines, no trailing newline, many lines, quoting.
    let out = guest.run_ok("echo one; echo two; echo three", CMD_TIMEOUT)?;
    ensure!(out == "one\ntwo\nthree\n", "multi-line output {out:?}");
    let out = guest.run_ok("printf 'no newline'", CMD_TIMEOUT)?;
    ensure!(out == "no newline", "output without newline {out:?}");
    let out = guest.run_ok("for i in 1 2 3; do\n  echo \"line $i\"\ndone", CMD_TIMEOUT)?;
    ensure!(
        out == "line 1\nline 2\nline 3\n",
        "multi-line command {out:?}"
    );
    let out = guest.run_ok("seq 1 2000", CMD_TIMEOUT)?;
    let expected: String = (1..=2000).map(|i| format!("{i}\n")).collect();
    ensure!(out == expected, "seq output differs ({} bytes)", out.len());
    let out = guest.run_ok("echo \"a'b\" 'c\"d' '$HOME'", CMD_TIMEOUT)?;
    ensure!(out == "a'b c\"d $HOME\n", "quoting {out:?}");

    // A command reading stdin gets EOF instead of the harness's next command.
    let out = guest.run_ok("cat; echo after-cat", CMD_TIMEOUT)?;
    ensure!(out == "after-cat\n", "stdin not /dev/null: {out:?}");

    // The shell survives a syntax error.
    let out = guest.run("if then", CMD_TIMEOUT)?;
    ensure!(out.status != 0, "syntax error gave {out:?}");
    ensure!(guest.run_ok("echo still-here", CMD_TIMEOUT)? == "still-here\n");

    // A command that outlives its timeout is interrupted and the shell stays usable.
    ensure!(
        guest.run("sleep 600", Duration::from_secs(2)).is_err(),
        "sleep 600 did not time out"
    );
    ensure!(guest.run_ok("echo recovered", CMD_TIMEOUT)? == "recovered\n");

    ensure!(guest.console().contains(vu_tests::guest::READY_MARKER));
    Ok(())
}

/// qemu-storage-daemon as a reference vhost-user-blk backend: checks that the guest image and
/// the harness's disk arguments work, independently of our backend.
#[test]
fn guest_uses_reference_vhost_user_blk_backend() -> Result<()> {
    ensure!(qemu_available(), "qemu-system-x86_64 is not installed");
    let image = GuestImage::locate()?;
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("disk.img");
    let socket = dir.path().join("blk.sock");
    let pidfile = dir.path().join("qsd.pid");
    std::fs::File::create(&disk)?.set_len(64 << 20)?;
    // --daemonize returns once the export listens.
    let status = std::process::Command::new(vu_tests::guest::qemu_tool("qemu-storage-daemon"))
        .arg("--daemonize")
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("--blockdev")
        .arg(format!("driver=file,node-name=file0,filename={}", disk.display()))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,addr.type=unix,addr.path={},node-name=file0,writable=on,num-queues=2",
            socket.display()
        ))
        .status()
        .context("running qemu-storage-daemon")?;
    ensure!(status.success(), "qemu-storage-daemon failed: {status}");
    let qsd_pid: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    let _qsd = KillOnDrop(qsd_pid);

    let config = GuestConfig {
        cpus: 2,
        vhost_user_blk: vec![vu_tests::guest::VhostUserBlkDisk {
            num_queues: Some(2),
            ..vu_tests::guest::VhostUserBlkDisk::new(&socket)
        }],
        ..GuestConfig::default()
    };
    let guest = Guest::boot(&image, &config)?;
    let result = (|| -> Result<()> {
        let size = guest.run_ok("cat /sys/block/vda/size", CMD_TIMEOUT)?;
        ensure!(size.trim() == "131072", "vda has {size:?} sectors");
        let queues = guest.run_ok("ls /sys/block/vda/mq", CMD_TIMEOUT)?;
        ensure!(queues.split_whitespace().count() == 2, "queues: {queues:?}");
        guest.run_ok(
            "fio --name=verify --filename=/dev/vda --rw=randwrite --bs=4k --size=8M \
             --ioengine=libaio --direct=1 --iodepth=8 --verify=crc32c --output-format=terse",
            Duration::from_secs(300),
        )?;
        guest.run_ok(
            "printf 'vu-guest-was-here' | dd of=/dev/vda bs=512 seek=16384 conv=notrunc,fsync",
            CMD_TIMEOUT,
        )?;
        Ok(())
    })();
    if result.is_err() {
        eprintln!(
            "guest log: {}\n{}",
            guest.log_path().display(),
            guest.console()
        );
    }
    result?;
    guest.poweroff(Duration::from_secs(60))?;
    let data = std::fs::read(&disk)?;
    let at = 16384 * 512;
    ensure!(
        &data[at..at + 17] == b"vu-guest-was-here",
        "guest write not on the host disk"
    );
    Ok(())
}

/// Terminates a daemon by pid when dropped.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}
