//! Shared pieces of the end-to-end vsock tests: a launcher serving a vsock device, a guest
//! with `vhost-user-vsock-pci`, and the host side of hybrid vsock (a host program that
//! connects to a guest port through `--uds-path`, or listens on `<uds-path>_<port>` for the
//! guest).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

use crate::guest::{qemu_available, Guest, GuestConfig, GuestImage};
use crate::launcher::Launcher;

/// Timeout for one guest command (TCG on a loaded machine).
pub const CMD: Duration = Duration::from_secs(600);
/// How long a host program retries `CONNECT` while the guest's listener comes up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

/// The QEMU arguments of a `vhost-user-vsock-pci` device whose back-end listens on `socket`
/// (QEMU reads the guest CID from the back-end). `id` names the chardev and the device.
pub fn qemu_vsock_args(socket: &Path, id: &str) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!(
            "socket,id={id},path={}",
            socket.display().to_string().replace(',', ",,")
        ),
        "-device".into(),
        format!("vhost-user-vsock-pci,chardev={id},id={id}dev"),
    ]
}

/// Boots a guest whose only vhost-user device is the vsock device on `socket`.
pub fn boot_guest(socket: &Path) -> Result<Guest> {
    ensure!(qemu_available(), "qemu-system-x86_64 is not installed");
    let cfg = GuestConfig {
        extra_args: qemu_vsock_args(socket, "vsock0"),
        ..GuestConfig::default()
    };
    Guest::boot(&GuestImage::locate()?, &cfg)
}

/// A launcher serving one vsock device, its sockets in a temporary directory.
#[derive(Debug)]
pub struct VsockRig {
    /// Holds the sockets.
    pub dir: TempDir,
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// `--uds-path`.
    pub uds: PathBuf,
    /// The guest CID.
    pub cid: u64,
    /// The launcher.
    pub launcher: Launcher,
}

impl VsockRig {
    /// `launcher start vsock --socket DIR/vu.sock --guest-cid CID --uds-path DIR/v.sock EXTRA`.
    pub fn start(cid: u64, extra: &[&str]) -> Result<VsockRig> {
        ensure!(qemu_available(), "qemu-system-x86_64 is not installed");
        let dir = tempfile::Builder::new().prefix("vsock").tempdir()?;
        let socket = dir.path().join("vu.sock");
        let uds = dir.path().join("v.sock");
        let mut args: Vec<String> = vec![
            "start".into(),
            "vsock".into(),
            "--socket".into(),
            socket.display().to_string(),
            "--guest-cid".into(),
            cid.to_string(),
            "--uds-path".into(),
            uds.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let launcher = Launcher::spawn(&args, &socket)?;
        Ok(VsockRig {
            dir,
            socket,
            uds,
            cid,
            launcher,
        })
    }

    /// Boots a guest with this device.
    pub fn boot(&self) -> Result<Guest> {
        boot_guest(&self.socket)
    }

    /// Listens where a guest connecting to host port `port` is sent: `<uds-path>_<port>`.
    pub fn listen(&self, port: u32) -> Result<UnixListener> {
        listen_port(&self.uds, port)
    }

    /// A host program's stream to the guest's listener on `port` (see [`connect_guest`]).
    pub fn connect(&self, port: u32) -> Result<(UnixStream, u32)> {
        connect_guest(&self.uds, port, CONNECT_TIMEOUT)
    }

    /// Prints the launcher's log and the guest console when `r` failed.
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

/// Binds `<uds>_<port>`.
pub fn listen_port(uds: &Path, port: u32) -> Result<UnixListener> {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    UnixListener::bind(&p).with_context(|| format!("binding {}", Path::new(&p).display()))
}

/// Connects to `uds` as a host program does: `CONNECT <port>\n`, then reads `OK <host port>\n`.
/// The device closes the stream when nothing listens on the port yet: retried until
/// `timeout`. Returns the stream and the host port of the `OK` line.
pub fn connect_guest(uds: &Path, port: u32, timeout: Duration) -> Result<(UnixStream, u32)> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match try_connect(uds, port) {
            Ok(Some(found)) => return Ok(found),
            Ok(None) => "the device closed the stream (nothing listens yet?)".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "CONNECT {port} through {} failed until {timeout:?}: {last}",
                uds.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn try_connect(uds: &Path, port: u32) -> Result<Option<(UnixStream, u32)>> {
    let mut s =
        UnixStream::connect(uds).with_context(|| format!("connecting {}", uds.display()))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    // Byte by byte: nothing after the line may be consumed here.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match s.read(&mut b) {
            Ok(0) => return Ok(None),
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e).context("reading the OK line"),
        }
        ensure!(line.len() <= 32, "an overlong answer: {line:?}");
    }
    s.set_read_timeout(None)?;
    let text = String::from_utf8_lossy(&line);
    let host_port = text
        .trim_end()
        .strip_prefix("OK ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("not an OK line: {text:?}"))?;
    Ok(Some((s, host_port)))
}

/// `len` bytes of a reproducible pseudo-random pattern (xorshift64 from `seed`).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The SHA-256 of `data` in hex, as `sha256sum` prints it.
pub fn sha256_hex(data: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running sha256sum")?;
    let mut stdin = child.stdin.take().context("sha256sum stdin")?;
    stdin.write_all(data)?;
    drop(stdin);
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "sha256sum failed");
    first_word(&String::from_utf8_lossy(&out.stdout))
}

/// The first word of `text` (a checksum line), checked to be 64 hex digits.
pub fn first_word(text: &str) -> Result<String> {
    let w = text.split_whitespace().next().unwrap_or_default();
    ensure!(
        w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a sha256 line: {text:?}"
    );
    Ok(w.to_string())
}

/// Starts `script` in the guest in the background (its output to `log`), returning at once.
pub fn guest_spawn(g: &Guest, script: &str, log: &str) -> Result<()> {
    let quoted = script.replace('\'', r"'\''");
    g.run_ok(
        &format!("setsid sh -c '{quoted}' > {log} 2>&1 < /dev/null &"),
        CMD,
    )?;
    Ok(())
}

/// The guest shell command of an echo service on vsock port `port` (`listen_opts` are added to
/// socat's VSOCK-LISTEN options, e.g. `backlog=512`): socat sends each connection's bytes
/// through a pipe back to it. `-b 4096`: socat then reads at most a page at a time and writes it
/// into the pipe only when poll says the pipe has room for it, so that write never blocks. With
/// socat's default 8 KiB blocks it can: while the stream's send side waits for credit, socat
/// keeps filling the pipe, and a write of 8 KiB into a pipe with room for less blocks for good,
/// since socat itself is the pipe's only reader (seen as socat processes stuck in `pipe_write`
/// and a stalled stream in the vsock soak).
pub fn echo_service(port: u32, listen_opts: &str) -> String {
    let opts = if listen_opts.is_empty() {
        String::new()
    } else {
        format!(",{listen_opts}")
    };
    format!("socat -b 4096 VSOCK-LISTEN:{port},fork{opts} PIPE")
}

/// Waits (polling in the guest) until file `path` exists and is not empty; returns it.
pub fn guest_wait_file(g: &Guest, path: &str, timeout: Duration) -> Result<String> {
    let secs = timeout.as_secs().max(1);
    let out = g.run(
        &format!(
            "i=0; while [ ! -s {path} ] && [ $i -lt {n} ]; do sleep 0.1; i=$((i+1)); done; cat {path}",
            n = secs * 10
        ),
        timeout + CMD,
    )?;
    ensure!(
        out.success() && !out.stdout.trim().is_empty(),
        "{path} did not appear in the guest within {timeout:?}: {}",
        out.stdout
    );
    Ok(out.stdout)
}

/// Reads `stream` to its end (or `limit` bytes), into memory.
pub fn read_all(stream: &mut UnixStream, limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    stream.take(limit as u64).read_to_end(&mut out)?;
    Ok(out)
}

/// QEMU's human monitor on a UNIX socket (`-monitor unix:PATH,server=on,wait=off`).
#[derive(Debug)]
pub struct Monitor {
    stream: UnixStream,
}

impl Monitor {
    /// The QEMU arguments that open a monitor at `path`.
    pub fn qemu_args(path: &Path) -> Vec<String> {
        vec![
            "-monitor".into(),
            format!("unix:{},server=on,wait=off", path.display()),
        ]
    }

    /// Connects and waits for the first prompt.
    pub fn connect(path: &Path) -> Result<Monitor> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("connecting the QEMU monitor {}", path.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut m = Monitor { stream };
        m.until_prompt()?;
        Ok(m)
    }

    fn until_prompt(&mut self) -> Result<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !out.ends_with(b"(qemu) ") {
            let n = self
                .stream
                .read(&mut buf)
                .context("reading the QEMU monitor")?;
            ensure!(n > 0, "the QEMU monitor closed");
            out.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Runs one command and returns what it printed.
    pub fn run(&mut self, cmd: &str) -> Result<String> {
        self.stream.write_all(format!("{cmd}\n").as_bytes())?;
        self.until_prompt()
    }
}

/// Boots a guest whose vsock device sits on a PCIe root port (so it can be unplugged and
/// plugged again, see [`replug`]) with a QEMU monitor at `monitor`.
pub fn boot_pluggable(socket: &Path, monitor: &Path) -> Result<Guest> {
    ensure!(qemu_available(), "qemu-system-x86_64 is not installed");
    let mut extra = vec![
        "-device".to_string(),
        "pcie-root-port,id=rp0,chassis=1".to_string(),
        "-chardev".to_string(),
        format!(
            "socket,id=vs0,path={}",
            socket.display().to_string().replace(',', ",,")
        ),
        "-device".to_string(),
        "vhost-user-vsock-pci,chardev=vs0,id=vsdev0,bus=rp0".to_string(),
    ];
    extra.extend(Monitor::qemu_args(monitor));
    let cfg = GuestConfig {
        extra_args: extra,
        ..GuestConfig::default()
    };
    Guest::boot(&GuestImage::locate()?, &cfg)
}

/// Shell loop that waits (up to 2 minutes) until the guest's vsock transport is bound
/// (`present`) or gone.
fn wait_transport(g: &Guest, present: bool) -> Result<()> {
    let cond = if present { "until" } else { "while" };
    g.run_ok(
        &format!(
            "i=0; {cond} ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/ | grep -q virtio; \
             do [ $i -gt 600 ] && exit 1; sleep 0.2; i=$((i+1)); done"
        ),
        CMD,
    )?;
    Ok(())
}

/// Unplugs the vsock device of a guest booted by [`boot_pluggable`] (plugged `n` times
/// before: the first plug is 0) and plugs a new one whose chardev connects `socket` afresh:
/// how QEMU's vhost-user-vsock, which does not reconnect to a back-end by itself, meets a
/// new device process. `between` runs once the guest has let go of the old device.
pub fn replug(
    g: &Guest,
    monitor: &Path,
    socket: &Path,
    n: u32,
    between: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let mut mon = Monitor::connect(monitor)?;
    mon.run(&format!("device_del vsdev{n}"))?;
    wait_transport(g, false)?;
    // QEMU finishes the removal once the guest let go of the device.
    let deadline = Instant::now() + Duration::from_secs(60);
    while mon.run("info pci")?.contains("1af4:1053") {
        ensure!(Instant::now() < deadline, "QEMU still has the device");
        std::thread::sleep(Duration::from_millis(200));
    }
    between()?;
    mon.run(&format!("chardev-remove vs{n}"))?;
    let next = n + 1;
    mon.run(&format!(
        "chardev-add socket,id=vs{next},path={}",
        socket.display().to_string().replace(',', ",,")
    ))?;
    let out = mon.run(&format!(
        "device_add vhost-user-vsock-pci,chardev=vs{next},id=vsdev{next},bus=rp0"
    ))?;
    ensure!(!out.contains("rror"), "device_add: {out}");
    wait_transport(g, true)
}
