//! The quick-start demo: a fresh image, `launcher start block` serving it, a QEMU guest whose
//! /dev/vda is that device, and fio with verification running in the guest.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vu_tests::guest::{Guest, GuestConfig, GuestImage, VhostUserBlkDisk};
use vu_tests::launcher::{Launcher, LAUNCHER_ENV};

const USAGE: &str = "usage: vu-demo [--launcher PATH] [--size-mib N] [--keep DIR]

Creates a fresh raw image (default 256 MiB) in a temporary directory (or DIR with --keep),
starts `launcher start block` on it, boots a QEMU guest (TCG) with the disk as
vhost-user-blk, runs fio random writes with crc32c verification and a sequential read on
/dev/vda, and prints what the guest saw.";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut size_mib: u64 = 256;
    let mut keep: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--launcher" => std::env::set_var(
                LAUNCHER_ENV,
                args.next().context("--launcher needs a path")?,
            ),
            "--size-mib" => size_mib = args.next().context("--size-mib needs a number")?.parse()?,
            "--keep" => {
                keep = Some(PathBuf::from(
                    args.next().context("--keep needs a directory")?,
                ))
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let tmp = tempfile::tempdir()?;
    let dir = match &keep {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => tmp.path().to_path_buf(),
    };
    let image = dir.join("disk.img");
    let socket = dir.join("block.sock");
    std::fs::File::create(&image)?.set_len(size_mib << 20)?;
    println!("demo: image {} ({size_mib} MiB)", image.display());
    let launcher = Launcher::start_block(&socket, &image, &["--serial", "vu-demo"])?;
    println!(
        "demo: launcher pid {} serving {}",
        launcher.pid(),
        socket.display()
    );
    let cfg = GuestConfig {
        vhost_user_blk: vec![VhostUserBlkDisk::new(&socket)],
        ..GuestConfig::default()
    };
    let started = Instant::now();
    let guest = Guest::boot(&GuestImage::locate()?, &cfg)?;
    println!("demo: guest booted in {:.1?}", started.elapsed());
    let t = Duration::from_secs(600);
    println!(
        "{}",
        guest.run_ok(
            "cat /sys/block/vda/serial; echo; cat /sys/block/vda/size",
            t
        )?
    );
    let fio = "fio --name=demo --filename=/dev/vda --direct=1 --ioengine=psync --rw=randwrite \
               --bs=4k --size=32m --verify=crc32c --do_verify=1 --numjobs=1 --group_reporting";
    println!("demo: {fio}");
    println!("{}", guest.run_ok(fio, t)?);
    let seq = "fio --name=seq --filename=/dev/vda --direct=1 --ioengine=psync --rw=read --bs=128k \
               --size=64m";
    println!("demo: {seq}");
    println!("{}", guest.run_ok(seq, t)?);
    guest.poweroff(Duration::from_secs(120))?;
    let st = launcher.terminate()?;
    println!("demo: guest powered off, launcher exited with {st}");
    Ok(())
}
