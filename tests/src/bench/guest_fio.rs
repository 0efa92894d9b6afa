//! `vu-bench guest-fio`: fio inside a TCG guest against a vhost-user-blk server socket (the
//! secondary table of `tests/bench/compare.sh --guest`). Under TCG the guest CPU is the
//! bottleneck, so this measures what a guest sees, not the backend's ceiling.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::procstat;
use crate::guest::{Guest, GuestConfig, GuestImage, VhostUserBlkDisk};

/// Runs fio in a fresh guest and prints one JSON object: IOPS, MiB/s, mean completion
/// and median completion latency (us) as fio reports them, and the server's CPU seconds during the fio run.
/// Usage: `vu-bench guest-fio --socket S --rw MODE --bs SIZE --iodepth N --runtime SEC
/// [--server-pid PID] [--label TEXT]`.
pub fn guest_fio<I: IntoIterator<Item = String>>(args: I) -> Result<()> {
    let (mut socket, mut rw, mut bs, mut iodepth) =
        (None, "randread".to_string(), "4k".to_string(), 1u32);
    let (mut runtime, mut pid, mut label) = (3u32, None::<u32>, String::new());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--socket" => socket = Some(PathBuf::from(v()?)),
            "--rw" => rw = v()?,
            "--bs" => bs = v()?,
            "--iodepth" => iodepth = v()?.parse().context("--iodepth")?,
            "--runtime" => runtime = v()?.parse().context("--runtime")?,
            "--server-pid" => pid = Some(v()?.parse().context("--server-pid")?),
            "--label" => label = v()?,
            other => bail!("guest-fio: unknown argument `{other}`"),
        }
    }
    let socket = socket.context("guest-fio needs --socket")?;
    for (what, s) in [("--rw", &rw), ("--bs", &bs)] {
        if !s.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("{what} {s}: letters and digits only");
        }
    }
    let image = GuestImage::locate()?;
    let config = GuestConfig {
        vhost_user_blk: vec![VhostUserBlkDisk::new(socket)],
        ..GuestConfig::default()
    };
    let guest = Guest::boot(&image, &config)?;
    let cmd = format!(
        "fio --name=g --filename=/dev/vda --direct=1 --ioengine=libaio --rw={rw} --bs={bs} \
         --iodepth={iodepth} --runtime={runtime} --time_based --size=128M --minimal"
    );
    let pids: BTreeSet<u32> = pid
        .map(|p| procstat::process_tree(&[p]))
        .unwrap_or_default();
    let cpu0 = procstat::cpu_seconds(&pids);
    let t0 = Instant::now();
    let out = guest.run_ok(&cmd, Duration::from_secs(u64::from(runtime) + 60))?;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = procstat::cpu_seconds(&pids) - cpu0;
    let _ = guest.kill();
    // fio --minimal (terse v3): 7 read KiB/s, 8 read IOPS, 16 read clat mean (us);
    // 48 write KiB/s, 49 write IOPS, 57 write clat mean.
    let line = out
        .lines()
        .find(|l| l.starts_with("3;"))
        .with_context(|| format!("no terse fio line in:\n{out}"))?;
    let f: Vec<&str> = line.split(';').collect();
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let read = num(7) > 0.0;
    let (kib, iops, clat) = if read {
        (num(6), num(7), num(15))
    } else {
        (num(47), num(48), num(56))
    };
    // Completion latency percentiles follow as `P%=us` fields: read 18-37, write 59-78.
    let pct = if read { 17..37 } else { 58..78 };
    let p50 = f[pct.start.min(f.len())..pct.end.min(f.len())]
        .iter()
        .find_map(|e| e.strip_prefix("50.000000%="))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or_else(|| "null".to_string(), |v| format!("{v:.1}"));
    println!(
        "{{\"label\":\"{label}\",\"iops\":{iops:.1},\"mib_s\":{:.2},\"clat_mean_us\":{clat:.1},\"clat_p50_us\":{p50},\"server_cpu_s\":{cpu:.3},\"elapsed_s\":{elapsed:.3}}}",
        kib / 1024.0
    );
    Ok(())
}
