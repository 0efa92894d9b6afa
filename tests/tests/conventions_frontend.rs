//! The back-end program conventions and socket activation, seen by an independent vhost-user
//! front-end (the rust-vmm `vhost` crate): the `vu-vhost-user-block` program serves the
//! socket a manager bound and passed with `--fd=N` (as libvirt runs it), and a launcher
//! started by `systemd-socket-activate` serves each passed socket with the device whose
//! `socket_name` names it (told apart by the capacity in their config space).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::VhostBackend;
use vu_tests::launcher::{launcher_bin, unique_control_path};

/// How long a front-end waits for an answer.
const TIMEOUT: Duration = Duration::from_secs(60);
/// VIRTIO_F_VERSION_1, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_BLK_F_RO.
const VERSION_1: u64 = 1 << 32;
const PROTOCOL_FEATURES: u64 = 1 << 30;
const BLK_F_RO: u64 = 1 << 5;

/// A child process killed (and reaped) when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Reaped {
    /// SIGTERM, then a clean exit within `TIMEOUT`.
    fn terminate(mut self) -> Result<()> {
        let pid = Pid::from_raw(i32::try_from(self.0.id())?);
        kill(pid, Signal::SIGTERM)?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(st) = self.0.try_wait()? {
                ensure!(st.success(), "exit status {st} after SIGTERM");
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn sparse(dir: &Path, name: &str, size: u64) -> Result<std::path::PathBuf> {
    let p = dir.join(name);
    std::fs::File::create(&p)?.set_len(size)?;
    Ok(p)
}

/// A front-end on `socket` (the connection waits in the backlog until the device accepts
/// it); negotiates features and CONFIG, and returns (offered features, capacity in sectors).
fn probe(socket: &Path) -> Result<(u64, u64)> {
    let stream = UnixStream::connect(socket).with_context(|| format!("connect {socket:?}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut fe = Frontend::from_stream(stream, 1);
    fe.set_owner().map_err(|e| anyhow!("SET_OWNER: {e}"))?;
    let offered = fe
        .get_features()
        .map_err(|e| anyhow!("GET_FEATURES: {e}"))?;
    ensure!(offered & PROTOCOL_FEATURES != 0, "no PROTOCOL_FEATURES");
    let proto = fe
        .get_protocol_features()
        .map_err(|e| anyhow!("GET_PROTOCOL_FEATURES: {e}"))?;
    ensure!(
        proto.contains(VhostUserProtocolFeatures::CONFIG),
        "no CONFIG"
    );
    fe.set_protocol_features(VhostUserProtocolFeatures::CONFIG)
        .map_err(|e| anyhow!("SET_PROTOCOL_FEATURES: {e}"))?;
    fe.set_features(offered & (VERSION_1 | PROTOCOL_FEATURES))
        .map_err(|e| anyhow!("SET_FEATURES: {e}"))?;
    let (_, payload) = fe
        .get_config(0, 8, VhostUserConfigFlags::empty(), &[0u8; 8])
        .map_err(|e| anyhow!("GET_CONFIG: {e}"))?;
    let capacity = u64::from_le_bytes(
        payload
            .get(..8)
            .context("short config")?
            .try_into()
            .context("8 bytes")?,
    );
    Ok((offered, capacity))
}

#[test]
fn the_block_program_serves_a_socket_passed_by_fd() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let image = sparse(dir.path(), "disk.img", 3 << 20)?;
    let program = dir.path().join("vu-vhost-user-block");
    std::os::unix::fs::symlink(launcher_bin()?, &program)?;
    let socket = dir.path().join("libvirt-disk0.sock");
    let listener = UnixListener::bind(&socket)?;
    let (fd, target): (RawFd, RawFd) = (listener.as_raw_fd(), 9);
    let mut cmd = Command::new(&program);
    cmd.arg(format!("--fd={target}"))
        .arg(format!("--blk-file={}", image.display()))
        .arg("--read-only")
        .env_remove("VU_LAUNCHER_CONTROL")
        .env("XDG_RUNTIME_DIR", dir.path())
        .stdin(Stdio::null());
    let dup = move || -> std::io::Result<()> {
        // SAFETY: dup2 on integers; async-signal-safe, so fit for between fork and exec.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure only calls dup2 (async-signal-safe) and allocates nothing.
    unsafe { cmd.pre_exec(dup) };
    let child = Reaped(cmd.spawn().context("spawn vu-vhost-user-block")?);
    // The program holds the socket now; if it dies, the front-end's connection is refused.
    drop(listener);
    let (offered, capacity) = probe(&socket)?;
    ensure!(offered & VERSION_1 != 0, "VERSION_1: {offered:#x}");
    ensure!(offered & BLK_F_RO != 0, "--read-only: {offered:#x}");
    ensure!(capacity == (3 << 20) / 512, "capacity {capacity}");
    child.terminate()?;
    ensure!(
        socket.exists(),
        "the program removed the socket libvirt bound"
    );
    Ok(())
}

#[test]
fn socket_activated_devices_serve_the_sockets_they_name() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let small = sparse(d, "small.img", 1 << 20)?;
    let large = sparse(d, "large.img", 2 << 20)?;
    let (s0, s1) = (d.join("disk0.sock"), d.join("disk1.sock"));
    let cfg = d.join("vm.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[device]]\nname = \"big\"\nkind = \"block\"\nsocket_name = \"disk1\"\nfile = \"{}\"\n\
             [[device]]\nname = \"little\"\nkind = \"block\"\nsocket_name = \"disk0\"\nfile = \"{}\"\n",
            large.display(),
            small.display()
        ),
    )?;
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg(format!("--listen={}", s0.display()))
        .arg(format!("--listen={}", s1.display()))
        .arg("--fdname=disk0:disk1")
        .arg(format!(
            "--setenv=VU_LAUNCHER_CONTROL={}",
            unique_control_path().display()
        ))
        .arg(launcher_bin()?)
        .args(["start", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null());
    let child = Reaped(
        cmd.spawn()
            .context("spawn systemd-socket-activate (package systemd)")?,
    );
    let deadline = Instant::now() + TIMEOUT;
    while !(s0.exists() && s1.exists()) {
        if Instant::now() > deadline {
            bail!("systemd-socket-activate did not bind its sockets");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The first connection activates the launcher and is served.
    let (_, c0) = probe(&s0)?;
    let (_, c1) = probe(&s1)?;
    ensure!(c0 == (1 << 20) / 512, "disk0 is the small image: {c0}");
    ensure!(c1 == (2 << 20) / 512, "disk1 is the large image: {c1}");
    child.terminate()?;
    ensure!(s0.exists() && s1.exists(), "passed sockets removed");
    Ok(())
}
