//! End-to-end rng tests: a supervised `launcher start rng` device, a guest whose
//! `vhost-user-rng-pci` it serves (hot-plugged with a reconnecting chardev, see
//! [`crate::qmp`]), and what the guest does with `/dev/hwrng`: which rng the kernel uses, reads
//! timed by the guest's clock, reads in the background, and checks that bytes look random
//! with what busybox has (gzip, od, awk, sort).
//!
//! A device process that is replaced (killed, restarted) comes back to the guest in one of two
//! ways, by QEMU version ([`frontend_reconnects`]): QEMU before 9.0 reconnects its chardev and
//! resumes the device, and a guest's read goes on across the restart; QEMU 9.0 and later cannot
//! (their `vhost-user-rng-pci` is built on `vhost-user-base`, which on a back-end disconnect
//! cleans its vhost device up and on the reconnect starts it without initialising it again:
//! QEMU aborts in `vhost_dev_start`, "Assertion `hdev->vhost_ops' failed"). There the rig plugs
//! the device without `reconnect` and plugs it again after its process was replaced
//! ([`RngRig::wait_back`]); a read the unplug cut short ends with an error in the guest and is
//! started again ([`RngRig::resume_read`]).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tempfile::TempDir;

use crate::e2e::CMD;
use crate::guest::{qemu_available, Guest, GuestConfig, GuestImage, VhostUserDev};
use crate::launcher::Launcher;
use crate::qemu::qemu_version;
use crate::qmp::{hotplug, hotplug_args, unplug, Qmp};
use crate::supervisor::{Ctl, DevStatus, RECONNECT_TIMEOUT};

/// The name the guest's virtio_rng driver registers with the hw_random core (first device).
pub const VIRTIO_RNG: &str = "virtio_rng.0";

/// What the guest reads the kernel's current rng from.
pub const RNG_CURRENT: &str = "/sys/devices/virtual/misc/hw_random/rng_current";

/// A supervised rng device (`launcher start rng ... --control CTL`).
#[derive(Debug)]
pub struct RngRig {
    /// Holds sockets, snapshots, sources.
    pub dir: TempDir,
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// The device's name.
    pub name: String,
    /// The supervisor.
    pub launcher: Launcher,
    /// A `ctl` client for it.
    pub ctl: Ctl,
    /// The device in the guest, once [`RngRig::boot`] has plugged it.
    plug: Mutex<Option<RngPlug>>,
}

/// Whether the QEMU under test brings its `vhost-user-rng-pci` back by itself after the
/// back-end's process is replaced: QEMU before 9.0 does (chardev `reconnect`); 9.0 and later
/// abort on the reconnect, so the device is plugged again instead (see the module's notes).
pub fn frontend_reconnects() -> bool {
    qemu_major(&qemu_version()).is_some_and(|m| m < 9)
}

/// The major version in `qemu-system-x86_64 --version`'s first line.
fn qemu_major(version: &str) -> Option<u32> {
    let rest = version.split("version ").nth(1)?;
    rest.split('.').next()?.trim().parse().ok()
}

impl RngRig {
    /// Starts `launcher start rng --socket S --name NAME --control C EXTRA...`.
    pub fn new(name: &str, extra: &[&str]) -> Result<RngRig> {
        let dir = tempfile::tempdir()?;
        Self::in_dir(dir, name, extra)
    }

    /// As [`RngRig::new`], in `dir` (which may already hold a source file).
    pub fn in_dir(dir: TempDir, name: &str, extra: &[&str]) -> Result<RngRig> {
        ensure!(qemu_available(), "qemu-system-x86_64 is not installed");
        let socket = dir.path().join("rng.sock");
        let control = dir.path().join("control.sock");
        let mut args: Vec<String> = ["start", "rng", "--socket"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(socket.display().to_string());
        args.extend(["--name".into(), name.into(), "--control".into()]);
        args.push(control.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let launcher = Launcher::spawn(&args, &socket)?;
        Ok(RngRig {
            socket,
            name: name.to_owned(),
            launcher,
            ctl: Ctl::new(&control),
            dir,
            plug: Mutex::new(None),
        })
    }

    /// Boots a guest and hot-plugs a `vhost-user-rng-pci` on this device's socket, with a
    /// reconnecting chardev where QEMU can take one ([`frontend_reconnects`]); waits until the
    /// guest uses it and the supervisor reports the front-end connected.
    pub fn boot(&self) -> Result<Guest> {
        let qmp_path = self.dir.path().join("qmp.sock");
        let cfg = GuestConfig {
            extra_args: hotplug_args(&qmp_path, 1),
            ..GuestConfig::default()
        };
        let guest = Guest::boot(&GuestImage::locate()?, &cfg)?;
        let qmp = Qmp::connect(&qmp_path, Duration::from_secs(30))?;
        let plug = RngPlug::new(qmp, &self.socket);
        let r = plug.plug(&guest);
        *self.plug.lock().unwrap_or_else(|e| e.into_inner()) = Some(plug);
        self.report(&guest, r)?;
        let r = self.ctl.wait_status(
            &self.name,
            "serving a connected front-end",
            RECONNECT_TIMEOUT,
            DevStatus::serving,
        );
        self.report(&guest, r)?;
        Ok(guest)
    }

    /// After the device process `old_pid` was replaced (killed, restarted): see
    /// [`RngPlug::wait_back`].
    pub fn wait_back(&self, g: &Guest, old_pid: Option<u32>) -> Result<DevStatus> {
        let guard = self.plug.lock().unwrap_or_else(|e| e.into_inner());
        let plug = guard
            .as_ref()
            .context("the device was never plugged (boot)")?;
        plug.wait_back(&self.ctl, &self.name, g, old_pid)
    }

    /// See [`resume_read`].
    pub fn resume_read(&self, g: &Guest, tag: &str, bytes: u64) -> Result<()> {
        resume_read(g, tag, bytes)
    }

    /// `ctl --json status` of the device.
    pub fn status(&self) -> Result<DevStatus> {
        self.ctl.status(&self.name)
    }

    /// Prints guest console and supervisor log when `r` is an error.
    pub fn report<T>(&self, guest: &Guest, r: Result<T>) -> Result<T> {
        if r.is_err() {
            eprintln!(
                "---- guest console ({}) ----\n{}",
                guest.log_path().display(),
                guest.console()
            );
            eprintln!("---- launcher ----\n{}", self.launcher.stderr());
        }
        r
    }
}

/// A `vhost-user-rng-pci` hot-plugged into a guest through its QEMU monitor (root port 0).
#[derive(Debug)]
pub struct RngPlug {
    qmp: Mutex<Qmp>,
    socket: PathBuf,
}

impl RngPlug {
    /// The device for the back-end at `socket`, plugged through `qmp` by [`RngPlug::plug`].
    pub fn new(qmp: Qmp, socket: &Path) -> RngPlug {
        RngPlug {
            qmp: Mutex::new(qmp),
            socket: socket.to_owned(),
        }
    }

    /// Plugs the device, with a reconnecting chardev where QEMU can take one
    /// ([`frontend_reconnects`]), and waits until the guest uses it.
    pub fn plug(&self, g: &Guest) -> Result<()> {
        let mut dev = VhostUserDev::rng(&self.socket);
        dev.reconnect = frontend_reconnects();
        {
            let mut qmp = self.qmp.lock().unwrap_or_else(|e| e.into_inner());
            hotplug(&mut qmp, &dev, 0, RECONNECT_TIMEOUT)?;
        }
        wait_rng_current(g).map(drop)
    }

    /// After device `name`'s process `old_pid` was replaced (killed, restarted): waits for
    /// the new process; where QEMU does not reconnect ([`frontend_reconnects`]) unplugs the
    /// device and plugs a fresh one on the same socket; waits until the new process serves.
    pub fn wait_back(
        &self,
        ctl: &Ctl,
        name: &str,
        g: &Guest,
        old_pid: Option<u32>,
    ) -> Result<DevStatus> {
        let new = |s: &DevStatus| old_pid.is_none() || s.pid != old_pid;
        if !frontend_reconnects() {
            ctl.wait_status(name, "a new process", RECONNECT_TIMEOUT, |s| {
                new(s) && s.state == "running" && s.pid.is_some()
            })?;
            {
                let mut qmp = self.qmp.lock().unwrap_or_else(|e| e.into_inner());
                unplug(&mut qmp, 0, RECONNECT_TIMEOUT)?;
            }
            self.plug(g)?;
        }
        ctl.wait_status(
            name,
            "a new process serving the guest",
            RECONNECT_TIMEOUT,
            |s| new(s) && s.serving(),
        )
    }
}

/// After [`RngPlug::wait_back`], for background read `tag` (of `bytes`) that was running when
/// the device's process was replaced: where QEMU reconnected, the read went on and nothing is
/// done; where the device was plugged again, the unplug ended the read with an error, so it is
/// started again on the new device.
pub fn resume_read(g: &Guest, tag: &str, bytes: u64) -> Result<()> {
    if frontend_reconnects() {
        return Ok(());
    }
    let ended = g.run(
        &format!(
            "i=0; while [ ! -e /tmp/rng.{tag}.rc ] && [ $i -lt 120 ]; do sleep 1; \
             i=$((i+1)); done; test -e /tmp/rng.{tag}.rc"
        ),
        Duration::from_secs(240),
    )?;
    ensure!(
        ended.success(),
        "the read {tag} did not end when its device was unplugged"
    );
    read_in_background(g, tag, bytes)
}

/// A numeric rng status field (`bytes_total`...), from the device's `fields`.
pub fn field(st: &DevStatus, key: &str) -> Option<u64> {
    st.raw
        .find_key(key)
        .and_then(crate::supervisor::Json::as_u64)
}

/// A text rng status field (`source`, `source_kind`).
pub fn text_field(st: &DevStatus, key: &str) -> Option<String> {
    st.raw.find_key(key).map(crate::supervisor::Json::text)
}

/// Waits in the guest until the hw_random core uses [`VIRTIO_RNG`] (a hot-plugged device
/// takes a moment to appear); returns `rng_current`.
pub fn wait_rng_current(g: &Guest) -> Result<String> {
    let out = g.run(
        &format!(
            "i=0; while [ $i -lt 600 ] && ! grep -qx {VIRTIO_RNG} {RNG_CURRENT} 2>/dev/null; do \
             sleep 0.1; i=$((i+1)); done; cat {RNG_CURRENT}; test -c /dev/hwrng"
        ),
        CMD,
    )?;
    ensure!(
        out.success() && out.stdout.trim() == VIRTIO_RNG,
        "rng_current is {:?}, not {VIRTIO_RNG} (or no /dev/hwrng)",
        out.stdout.trim()
    );
    Ok(out.stdout.trim().to_owned())
}

/// Reads `bytes` (a multiple of 4 KiB) from /dev/hwrng into `path` in the guest; returns
/// the seconds it took by the guest's clock (/proc/uptime, 10 ms steps).
pub fn read_hwrng(g: &Guest, path: &str, bytes: u64) -> Result<f64> {
    let (bs, count) = block_count(bytes)?;
    let out = g.run_ok(
        &format!(
            "a=$(cut -d' ' -f1 /proc/uptime); \
             dd if=/dev/hwrng of={path} bs={bs} count={count} iflag=fullblock 2>/dev/null; \
             b=$(cut -d' ' -f1 /proc/uptime); echo \"$a $b $(wc -c < {path})\""
        ),
        CMD,
    )?;
    let v: Vec<f64> = out
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    ensure!(v.len() == 3, "unexpected output {out:?}");
    ensure!(
        v[2] as u64 == bytes,
        "read {} bytes of {bytes} from /dev/hwrng",
        v[2]
    );
    Ok(v[1] - v[0])
}

fn block_count(bytes: u64) -> Result<(u64, u64)> {
    ensure!(
        bytes > 0 && bytes.is_multiple_of(4096),
        "{bytes} is not a multiple of 4 KiB"
    );
    let bs = if bytes.is_multiple_of(65536) {
        65536
    } else {
        4096
    };
    Ok((bs, bytes / bs))
}

/// Starts reading `bytes` from /dev/hwrng into `/tmp/rng.TAG` in the background; its exit
/// status lands in `/tmp/rng.TAG.rc`.
pub fn read_in_background(g: &Guest, tag: &str, bytes: u64) -> Result<()> {
    let (bs, count) = block_count(bytes)?;
    g.run_ok(
        &format!(
            "rm -f /tmp/rng.{tag} /tmp/rng.{tag}.rc; \
             (dd if=/dev/hwrng of=/tmp/rng.{tag} bs={bs} count={count} iflag=fullblock \
             2>/tmp/rng.{tag}.err; echo $? > /tmp/rng.{tag}.tmp; mv /tmp/rng.{tag}.tmp /tmp/rng.{tag}.rc) &"
        ),
        CMD,
    )?;
    Ok(())
}

/// Whether background read `tag` is still running.
pub fn reading(g: &Guest, tag: &str) -> Result<bool> {
    Ok(!g.run(&format!("test -e /tmp/rng.{tag}.rc"), CMD)?.success())
}

/// How many bytes background read `tag` has so far (0 before its dd has made the file).
pub fn read_so_far(g: &Guest, tag: &str) -> Result<u64> {
    let out = g.run_ok(
        &format!("if [ -e /tmp/rng.{tag} ]; then wc -c < /tmp/rng.{tag}; else echo 0; fi"),
        CMD,
    )?;
    out.trim().parse().context("wc output")
}

/// Waits up to `timeout` (by the guest's clock) for background read `tag` to end; checks it
/// succeeded with all `bytes`. Returns the file's path in the guest.
pub fn finish_background(g: &Guest, tag: &str, bytes: u64, timeout: Duration) -> Result<String> {
    let secs = timeout.as_secs().max(1);
    let waited = g.run(
        &format!(
            "i=0; while [ ! -e /tmp/rng.{tag}.rc ] && [ $i -lt {secs} ]; do sleep 1; i=$((i+1)); done; \
             test -e /tmp/rng.{tag}.rc"
        ),
        timeout + Duration::from_secs(120),
    )?;
    ensure!(
        waited.success(),
        "reading /dev/hwrng ({tag}) did not finish within {timeout:?}; {} bytes so far",
        read_so_far(g, tag).unwrap_or(0)
    );
    let rc = g.run_ok(&format!("cat /tmp/rng.{tag}.rc /tmp/rng.{tag}.err"), CMD)?;
    ensure!(
        rc.lines().next().map(str::trim) == Some("0"),
        "dd from /dev/hwrng ({tag}) failed: {rc}"
    );
    let got = read_so_far(g, tag)?;
    ensure!(got == bytes, "read {got} bytes of {bytes} ({tag})");
    Ok(format!("/tmp/rng.{tag}"))
}

/// Checks in the guest that the file at `path` looks random: gzip cannot shrink it, its
/// byte histogram (first 256 KiB) passes a chi-square test with a generous bound, and no
/// 4 KiB block repeats (no stuck source, no block handed out twice, no zero pages).
pub fn check_random(g: &Guest, path: &str) -> Result<()> {
    let size: u64 = g
        .run_ok(&format!("wc -c < {path}"), CMD)?
        .trim()
        .parse()
        .context("size")?;
    ensure!(
        size >= 262_144,
        "{path} has {size} bytes; at least 256 KiB needed"
    );
    let gz: u64 = g
        .run_ok(&format!("gzip -c {path} | wc -c"), CMD)?
        .trim()
        .parse()
        .context("gzip size")?;
    ensure!(
        gz * 100 >= size * 99,
        "gzip shrank {size} bytes to {gz}: not random"
    );
    // 256 bins, 255 degrees of freedom: mean 255, sd 22.6. 400 is 6 sd away.
    let chi = g.run_ok(
        &format!(
            "od -An -v -tu1 -N 262144 {path} | awk '{{for (i = 1; i <= NF; i++) {{c[$i]++; n++}}}} \
             END {{e = n / 256; x = 0; for (k = 0; k < 256; k++) {{d = c[k] - e; x += d * d / e}}; \
             printf \"%d %.1f\\n\", n, x}}'"
        ),
        CMD,
    )?;
    let v: Vec<f64> = chi
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    ensure!(v.len() == 2 && v[0] == 262_144.0, "od/awk printed {chi:?}");
    ensure!(
        v[1] < 400.0,
        "byte histogram chi-square {} (255 degrees of freedom): not uniform",
        v[1]
    );
    let blocks = g.run_ok(
        &format!(
            "od -An -v -tx8 -w4096 {path} | sort | uniq -c | awk '{{n++; if ($1 > 1) d++}} END {{print n, d + 0}}'"
        ),
        CMD,
    )?;
    let v: Vec<u64> = blocks
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    ensure!(
        v.len() == 2 && v[0] == size / 4096,
        "od/sort printed {blocks:?} for {} blocks",
        size / 4096
    );
    ensure!(v[1] == 0, "{} 4 KiB blocks of {path} repeat", v[1]);
    eprintln!(
        "{path}: {size} bytes, gzip {gz}, chi-square {:.1}, no repeated block",
        chi.split_whitespace()
            .nth(1)
            .unwrap_or("?")
            .parse::<f64>()
            .unwrap_or(0.0)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::qemu_major;

    #[test]
    fn qemu_major_versions() {
        assert_eq!(
            qemu_major("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            Some(7)
        );
        assert_eq!(
            qemu_major("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)"),
            Some(10)
        );
        assert_eq!(qemu_major("unknown QEMU version"), None);
    }
}
