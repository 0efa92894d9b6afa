//! vsock under kills: a host program streams through an echo service in the guest (`socat
//! VSOCK-LISTEN PIPE`, so both directions carry data) while the device process is killed.
//! Its connection dies with the process (the host's stream ends; nothing that came back
//! may differ from what was sent); the supervisor starts a new process, and since QEMU's
//! vhost-user-vsock does not reconnect by itself, the device is re-plugged over the QEMU
//! monitor (`device_del`, then `device_add` on a fresh chardev), as tests/tests/vsock_respawn.rs
//! does. Then fresh connections must carry data intact both ways: 256 KiB through the echo
//! service, compared byte for byte, and 256 KiB the guest sends to a host listener, compared
//! by SHA-256.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use tempfile::TempDir;

use super::{kill_device, progress, wait_respawned, Outcome, Pauses, Plan, RESUME_TIMEOUT};
use crate::guest::Guest;
use crate::launcher::Launcher;
use crate::supervisor::{Ctl, DevStatus, RECONNECT_TIMEOUT};
use crate::vsock::{
    boot_pluggable, connect_guest, echo_service, first_word, guest_spawn, listen_port, read_all,
    replug, sha256_hex, CMD, CONNECT_TIMEOUT,
};

/// The device's name under the supervisor.
pub const NAME: &str = "soak-vsock0";
const ECHO: u32 = 5000;
const UPLOAD: u32 = 6000;
/// Bytes of each verification transfer.
const VERIFY: usize = 256 << 10;
/// Bytes that must come back through the echo before a kill.
const LOADED: u64 = 256 << 10;

/// Byte `i` of what the host sends on stream `seed`.
fn byte_at(seed: u64, i: u64) -> u8 {
    let x = i
        .wrapping_add(seed << 40)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 29) as u8
}

/// A supervised vsock device (`--control`), its sockets in a temporary directory.
struct Rig {
    dir: TempDir,
    socket: PathBuf,
    uds: PathBuf,
    launcher: Launcher,
    ctl: Ctl,
}

impl Rig {
    fn start() -> Result<Rig> {
        let dir = tempfile::Builder::new().prefix("soak-vsock").tempdir()?;
        let socket = dir.path().join("vu.sock");
        let uds = dir.path().join("v.sock");
        let control = dir.path().join("control.sock");
        let args: Vec<String> = [
            "start",
            "vsock",
            "--socket",
            &socket.display().to_string(),
            "--guest-cid",
            "3",
            "--uds-path",
            &uds.display().to_string(),
            "--name",
            NAME,
            "--control",
            &control.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let launcher = Launcher::spawn(&args, &socket)?;
        Ok(Rig {
            dir,
            socket,
            uds,
            launcher,
            ctl: Ctl::new(control),
        })
    }

    fn status(&self) -> Result<DevStatus> {
        self.ctl.status(NAME)
    }
}

/// A stream through the echo service, written and read on two threads.
struct Load {
    /// The stream itself, shut down by [`Load::finish`] so that a writer blocked on a peer
    /// that stopped reading returns.
    stream: UnixStream,
    writer: JoinHandle<()>,
    reader: JoinHandle<Result<u64>>,
    echoed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

fn start_load(uds: &Path, seed: u64) -> Result<Load> {
    let (stream, _) = connect_guest(uds, ECHO, CONNECT_TIMEOUT)?;
    let mut w = stream.try_clone()?;
    let mut r = stream.try_clone()?;
    r.set_read_timeout(Some(RECONNECT_TIMEOUT))?;
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let stop_w = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut off = 0u64;
        let mut buf = vec![0u8; 16 << 10];
        while !stop_w.load(Ordering::Relaxed) {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = byte_at(seed, off + i as u64);
            }
            if w.write_all(&buf).is_err() {
                return;
            }
            off += buf.len() as u64;
        }
        let _ = w.shutdown(Shutdown::Write);
    });
    let seen = echoed.clone();
    let reader = std::thread::spawn(move || -> Result<u64> {
        let mut pos = 0u64;
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => return Ok(pos),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(pos),
                Err(e) => return Err(e).context("reading the echo"),
            };
            if let Some(i) = (0..n).find(|&i| buf[i] != byte_at(seed, pos + i as u64)) {
                bail!("echoed byte {} differs from what was sent", pos + i as u64);
            }
            pos += n as u64;
            seen.store(pos, Ordering::Relaxed);
        }
    });
    Ok(Load {
        stream,
        writer,
        reader,
        echoed,
        stop,
    })
}

impl Load {
    /// Waits until `n` bytes came back.
    fn wait_echoed(&self, n: u64) -> Result<()> {
        let deadline = Instant::now() + RESUME_TIMEOUT;
        while self.echoed.load(Ordering::Relaxed) < n {
            ensure!(
                !self.reader.is_finished(),
                "the echo stream ended after {} bytes",
                self.echoed.load(Ordering::Relaxed)
            );
            ensure!(Instant::now() < deadline, "the echo stream stalled");
            // The reader thread counts; nothing to block on here.
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops writing and waits for the stream to end: the bytes that came back, all equal
    /// to what was sent.
    fn finish(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let got = self
            .reader
            .join()
            .map_err(|_| anyhow!("the echo reader panicked"))?;
        let _ = self.stream.shutdown(Shutdown::Both);
        let _ = self.writer.join();
        got
    }
}

/// 256 KiB through the echo service on a fresh connection, back byte for byte.
fn verify_echo(uds: &Path, seed: u64) -> Result<()> {
    let (s, _) = connect_guest(uds, ECHO, CONNECT_TIMEOUT)?;
    let data: Vec<u8> = (0..VERIFY as u64).map(|i| byte_at(seed, i)).collect();
    let mut w = s.try_clone()?;
    let sent = data.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        w.write_all(&sent)?;
        w.shutdown(Shutdown::Write)
    });
    let mut r = s;
    r.set_read_timeout(Some(CMD))?;
    let got = read_all(&mut r, VERIFY + 1)?;
    writer
        .join()
        .map_err(|_| anyhow!("the echo writer panicked"))??;
    ensure!(got == data, "{} bytes came back, differing", got.len());
    Ok(())
}

/// Accepts one connection on `l` within `timeout`.
fn accept_within(l: &UnixListener, timeout: Duration) -> Result<UnixStream> {
    let mut fds = [nix::poll::PollFd::new(
        l.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).context("poll")?;
    ensure!(n > 0, "no connection from the guest within {timeout:?}");
    Ok(l.accept()?.0)
}

/// The guest sends its 256 KiB file to a host listener; compared by SHA-256.
fn verify_upload(g: &Guest, l: &UnixListener, sum: &str) -> Result<()> {
    guest_spawn(
        g,
        &format!("socat -u FILE:/tmp/up VSOCK-CONNECT:2:{UPLOAD}"),
        "/tmp/up.log",
    )?;
    let mut s = accept_within(l, Duration::from_secs(60))?;
    s.set_read_timeout(Some(CMD))?;
    let got = read_all(&mut s, VERIFY + 1)?;
    let have = sha256_hex(&got)?;
    ensure!(
        have == sum,
        "the host received {} bytes with SHA-256 {have}, the guest sent {sum}",
        got.len()
    );
    Ok(())
}

/// Where each of the guest's socat processes waits (kernel wait channel and state), in one
/// line: a diagnostic for a stream that stalled.
fn echo_service_state(g: &Guest) -> String {
    let script = "for p in $(pidof socat); do \
        printf '%s:%s:%s ' $p $(cat /proc/$p/wchan) $(cut -d' ' -f3 /proc/$p/stat); done";
    match g.run(script, CMD) {
        Ok(o) => o.stdout.trim().to_string(),
        Err(e) => format!("(not read: {e:#})"),
    }
}

/// Runs the kill loop; fills `out`.
pub fn run(plan: &Plan, out: &mut Outcome) -> Result<()> {
    let rig = Rig::start()?;
    let upload = listen_port(&rig.uds, UPLOAD)?;
    let monitor = rig.dir.path().join("mon.sock");
    let guest = boot_pluggable(&rig.socket, &monitor)?;
    let r = kills(&rig, &guest, &upload, &monitor, plan, out);
    if r.is_err() {
        eprintln!(
            "---- guest console ({}) ----\n{}\n---- launcher ----\n{}",
            guest.log_path().display(),
            guest.console(),
            rig.launcher.stderr()
        );
    }
    out.restarts = rig.status().ok().and_then(|s| s.restarts);
    r?;
    guest.poweroff(CMD)?;
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

/// One verification: counted as a check or a guest error; whether it passed.
fn verified(out: &mut Outcome, what: &str, r: Result<()>) -> bool {
    match r {
        Ok(()) => {
            out.checks += 1;
            true
        }
        Err(e) => {
            out.guest_error(format!("{what}: {e:#}"));
            false
        }
    }
}

fn kills(
    rig: &Rig,
    g: &Guest,
    upload: &UnixListener,
    monitor: &Path,
    plan: &Plan,
    out: &mut Outcome,
) -> Result<()> {
    let started = Instant::now();
    let mut pauses = Pauses::new(plan.seed);
    guest_spawn(g, &echo_service(ECHO, ""), "/tmp/echo.log")?;
    let sum = g.run_ok(
        &format!("head -c {VERIFY} /dev/urandom > /tmp/up && sha256sum /tmp/up"),
        CMD,
    )?;
    let sum = first_word(&sum)?;
    let mut failed_in_a_row = 0;
    for k in 0..plan.kills {
        let load = start_load(&rig.uds, 2 * k as u64)?;
        if let Err(e) = load.wait_echoed(LOADED) {
            // A stream that fails before its kill is a guest-visible failure of the device
            // that serves it: counted, and the loop goes on (three in a row end it). What the
            // echo service's processes wait for in the guest tells a stall of the device from
            // one of the service.
            let echo_state = echo_service_state(g);
            let _ = load.finish();
            out.guest_error(format!(
                "stream before kill {} (seed {}): {e:#}; the guest's socat processes: {echo_state}",
                k + 1,
                plan.seed
            ));
            failed_in_a_row += 1;
            ensure!(failed_in_a_row < 3, "three kills in a row not survived");
            continue;
        }
        std::thread::sleep(pauses.next(plan.pause_ms));
        let old = kill_device(&rig.ctl, NAME)?;
        let new = wait_respawned(&rig.ctl, NAME, old, false)?;
        let echoed = load.finish();
        let cut = verified(
            out,
            &format!("stream cut by kill {}", k + 1),
            echoed.map(|_| ()),
        );
        replug(g, monitor, &rig.socket, k as u32, || Ok(()))
            .with_context(|| format!("re-plugging after kill {}", k + 1))?;
        rig.ctl.wait_status(
            NAME,
            "serving the re-plugged device",
            RECONNECT_TIMEOUT,
            DevStatus::serving,
        )?;
        let echo = verified(
            out,
            &format!("echo after kill {}", k + 1),
            verify_echo(&rig.uds, 2 * k as u64 + 1),
        );
        let up = verified(
            out,
            &format!("upload after kill {}", k + 1),
            verify_upload(g, upload, &sum),
        );
        if cut && echo && up {
            out.survived += 1;
            failed_in_a_row = 0;
        } else {
            failed_in_a_row += 1;
            ensure!(failed_in_a_row < 3, "three kills in a row not survived");
        }
        progress(
            "vsock",
            k,
            plan.kills,
            started,
            &format!("pid {old} -> {:?}, re-plugged", new.pid),
        );
    }
    out.notes.push(
        "a host stream through the guest's echo service cut by each kill (what came back must equal what was sent), the device re-plugged, then 256 KiB echoed byte for byte and 256 KiB guest-to-host by SHA-256 on fresh connections".into(),
    );
    Ok(())
}
