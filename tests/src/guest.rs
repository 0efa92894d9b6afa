//! A QEMU guest driven over its serial console, for end-to-end tests.
//!
//! The guest is the kernel + initramfs built by `tests/guest/build-image.sh` (see that script):
//! busybox, fio and the virtio block modules. Its `/init` prints [`READY_MARKER`] on ttyS0 and
//! then runs a shell there with no prompt and no echo. [`Guest::run`] writes a command wrapped
//! in unique begin/end markers and returns what the command printed and its exit status.
//!
//! QEMU runs with `-accel tcg` (nested KVM hangs on this machine; `VU_GUEST_ACCEL=kvm` opts in),
//! guest memory is a shared memfd so vhost-user backends can map it. Every byte the guest prints
//! and everything QEMU writes to stderr also goes to a log file ([`Guest::log_path`]) that is
//! kept after the guest is gone, so a failing test can point at it.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use vu_tests::guest::{Guest, GuestConfig, GuestImage, VhostUserBlkDisk};
//! let image = GuestImage::locate()?;
//! let config = GuestConfig {
//!     vhost_user_blk: vec![VhostUserBlkDisk::new("/tmp/blk.sock")],
//!     ..GuestConfig::default()
//! };
//! let guest = Guest::boot(&image, &config)?;
//! let out = guest.run_ok("blockdev --getsize64 /dev/vda", Duration::from_secs(60))?;
//! println!("{}", out.trim());
//! guest.poweroff(Duration::from_secs(60))?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

pub use crate::guest_device::VhostUserDev;

/// The line the guest's `/init` prints once modules are loaded and the shell is about to start.
pub const READY_MARKER: &str = "VU-GUEST-READY";

/// How long [`Guest::boot`] waits for [`READY_MARKER`].
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// How long [`Guest::boot`] waits for the shell to answer its first command.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// The canonical-mode tty line limit is 4095 bytes; stay well below it.
const MAX_COMMAND_LINE: usize = 3000;

/// Environment variable naming the directory with `vmlinuz` and `initramfs.cpio.gz`.
pub const GUEST_DIR_ENV: &str = "VU_GUEST_DIR";

/// Environment variable choosing the accelerator (default `tcg`; `kvm` where nested KVM works).
pub const ACCEL_ENV: &str = "VU_GUEST_ACCEL";

pub use crate::qemu::{
    qemu_available, qemu_binary, qemu_tool, qemu_version, QEMU_ENV, QEMU_VERSION_ENV,
};

/// The root of the cargo workspace (the parent of the `vu-tests` package).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Kernel and initramfs built by `tests/guest/build-image.sh`.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The kernel (`vmlinuz`).
    pub kernel: PathBuf,
    /// The initramfs (`initramfs.cpio.gz`).
    pub initrd: PathBuf,
}

impl GuestImage {
    /// Finds the image in `$VU_GUEST_DIR`, else in `<workspace root>/.cache/guest`.
    pub fn locate() -> Result<GuestImage> {
        match std::env::var_os(GUEST_DIR_ENV) {
            Some(dir) if !dir.is_empty() => Self::from_dir(Path::new(&dir))
                .with_context(|| format!("guest image from ${GUEST_DIR_ENV}")),
            _ => Self::from_dir(&workspace_root().join(".cache/guest")),
        }
    }

    /// Uses `dir/vmlinuz` and `dir/initramfs.cpio.gz`.
    pub fn from_dir(dir: &Path) -> Result<GuestImage> {
        let image = GuestImage {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initramfs.cpio.gz"),
        };
        for file in [&image.kernel, &image.initrd] {
            if !file.is_file() {
                bail!(
                    "guest image file {} is missing; build it with `tests/guest/build-image.sh {}` \
                     (as root) or point ${GUEST_DIR_ENV} at a built image",
                    file.display(),
                    dir.display()
                );
            }
        }
        Ok(image)
    }
}

/// A `vhost-user-blk-pci` device whose backend listens on `socket`.
#[derive(Debug, Clone, Default)]
pub struct VhostUserBlkDisk {
    /// The backend's listening UNIX socket.
    pub socket: PathBuf,
    /// `num-queues=` (QEMU's default: one per vCPU).
    pub num_queues: Option<u16>,
    /// `reconnect=1` on the chardev: QEMU does not wait for the socket at startup and
    /// reconnects every second after the backend goes away.
    pub reconnect: bool,
    /// `queue-size=` (QEMU's default: 128).
    pub queue_size: Option<u16>,
}

impl VhostUserBlkDisk {
    /// A disk with QEMU's defaults and no reconnect.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        VhostUserBlkDisk {
            socket: socket.into(),
            ..Default::default()
        }
    }
}

/// How to run the guest.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// Guest memory in MiB (default 512); all of it is one shared memfd.
    pub mem_mib: u32,
    /// vCPUs (default 1).
    pub cpus: u32,
    /// vhost-user block disks, in PCI order: the first is `/dev/vda`.
    pub vhost_user_blk: Vec<VhostUserBlkDisk>,
    /// Other vhost-user devices (rng, vsock...), after the disks.
    pub vhost_user: Vec<VhostUserDev>,
    /// Extra QEMU arguments, appended last.
    pub extra_args: Vec<String>,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            mem_mib: 512,
            cpus: 1,
            vhost_user_blk: Vec::new(),
            vhost_user: Vec::new(),
            extra_args: Vec::new(),
        }
    }
}

impl GuestConfig {
    /// The QEMU arguments (without the binary) for `image`.
    pub fn qemu_args(&self, image: &GuestImage) -> Vec<String> {
        let accel = std::env::var(ACCEL_ENV).unwrap_or_else(|_| "tcg".to_owned());
        let mut args: Vec<String> = [
            "-accel",
            &accel,
            "-M",
            "q35",
            "-nographic",
            "-nodefaults",
            "-no-reboot",
            "-m",
            &format!("{}M", self.mem_mib),
            "-smp",
            &self.cpus.to_string(),
            "-kernel",
            &image.kernel.to_string_lossy(),
            "-initrd",
            &image.initrd.to_string_lossy(),
            "-append",
            "console=ttyS0 panic=-1 quiet",
            "-object",
            &format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                self.mem_mib
            ),
            "-numa",
            "node,memdev=mem",
            "-chardev",
            "stdio,id=serial0,signal=off",
            "-serial",
            "chardev:serial0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (i, disk) in self.vhost_user_blk.iter().enumerate() {
            let mut chardev = format!(
                "socket,id=vublk{i},path={}",
                qemu_escape(&disk.socket.to_string_lossy())
            );
            if disk.reconnect {
                chardev.push_str(",reconnect=1");
            }
            let mut device = format!("vhost-user-blk-pci,chardev=vublk{i},id=vublkdev{i}");
            if let Some(n) = disk.num_queues {
                device.push_str(&format!(",num-queues={n}"));
            }
            if let Some(n) = disk.queue_size {
                device.push_str(&format!(",queue-size={n}"));
            }
            args.extend(["-chardev".to_owned(), chardev, "-device".to_owned(), device]);
        }
        for (i, dev) in self.vhost_user.iter().enumerate() {
            args.extend(dev.qemu_args(i));
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// QEMU option values escape a comma by doubling it.
fn qemu_escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// What a command printed (stdout and stderr together, CRs removed) and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    /// Output of the command exactly as printed, with `\r` removed.
    pub stdout: String,
    /// The shell's `$?` after the command.
    pub status: i32,
}

impl CmdOutput {
    /// True if the status is 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// Console text and process state shared with the reader threads.
#[derive(Debug, Default)]
struct ConsoleState {
    /// Everything the guest wrote to its serial port.
    serial: Vec<u8>,
    /// Everything QEMU wrote to stderr.
    stderr: Vec<u8>,
    /// The serial pipe reached EOF: QEMU exited (or closed its stdio).
    serial_eof: bool,
    /// The stderr pipe reached EOF.
    stderr_eof: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<ConsoleState>,
    changed: Condvar,
    log: Mutex<Option<File>>,
    started: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ConsoleState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, bytes: &[u8]) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = log.as_mut() {
            // Logging is best effort: a full disk must not fail the test here.
            let _ = file.write_all(bytes);
        }
    }

    fn log_note(&self, note: &str) {
        let t = self.started.elapsed().as_secs_f64();
        self.log(format!("\n[harness +{t:.3}s] {note}\n").as_bytes());
    }
}

/// Which pipe a reader thread drains.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Serial,
    Stderr,
}

fn reader_thread(shared: Arc<Shared>, mut pipe: impl Read, stream: Stream) {
    let mut buf = [0u8; 8192];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => 0,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        let chunk = &buf[..n];
        match stream {
            Stream::Serial => shared.log(chunk),
            Stream::Stderr if n > 0 => {
                shared.log(b"\n[qemu stderr] ");
                shared.log(chunk);
            }
            Stream::Stderr => {}
        }
        let mut state = shared.lock();
        match stream {
            Stream::Serial => {
                state.serial.extend_from_slice(chunk);
                if n == 0 {
                    state.serial_eof = true;
                }
            }
            Stream::Stderr => {
                state.stderr.extend_from_slice(chunk);
                if n == 0 {
                    state.stderr_eof = true;
                }
            }
        }
        drop(state);
        shared.changed.notify_all();
        if n == 0 {
            return;
        }
    }
}

/// A unique token for this guest's markers, so that nothing else on the console matches them.
fn unique_token() -> String {
    static GUESTS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:x}x{:x}x{:x}",
        std::process::id(),
        GUESTS.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).replace('\r', "")
}

/// A running QEMU guest with a shell on its serial console.
pub struct Guest {
    child: Mutex<Child>,
    stdin: Mutex<Option<ChildStdin>>,
    shared: Arc<Shared>,
    readers: Vec<JoinHandle<()>>,
    token: String,
    next_cmd: AtomicU64,
    log_path: PathBuf,
    args: Vec<String>,
}

impl fmt::Debug for Guest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guest")
            .field("pid", &self.pid())
            .field("token", &self.token)
            .field("log_path", &self.log_path)
            .finish_non_exhaustive()
    }
}

impl Guest {
    /// Starts QEMU, waits for the guest's `/init` to print [`READY_MARKER`] (up to
    /// [`BOOT_TIMEOUT`]) and for the shell to answer a first command.
    pub fn boot(image: &GuestImage, config: &GuestConfig) -> Result<Guest> {
        let args = config.qemu_args(image);
        let log_dir = tempfile::Builder::new()
            .prefix("vu-guest-")
            .tempdir()
            .context("creating the guest log directory")?
            .keep();
        let log_path = log_dir.join("console.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let qemu = qemu_binary();
        eprintln!("guest: {} ({qemu})", qemu_version());
        let shared = Arc::new(Shared {
            state: Mutex::new(ConsoleState::default()),
            changed: Condvar::new(),
            log: Mutex::new(Some(log)),
            started: Instant::now(),
        });
        shared.log_note(&format!("{}: {qemu} {}", qemu_version(), args.join(" ")));

        let mut child = Command::new(&qemu)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {qemu} (is qemu-system-x86 installed?)"))?;
        let (stdin, stdout, stderr) =
            match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
                (Some(i), Some(o), Some(e)) => (i, o, e),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("QEMU was spawned without its stdio pipes");
                }
            };
        let mut readers = Vec::new();
        for (stream, pipe) in [
            (Stream::Serial, Box::new(stdout) as Box<dyn Read + Send>),
            (Stream::Stderr, Box::new(stderr)),
        ] {
            let shared = Arc::clone(&shared);
            let name = format!("guest-{stream:?}").to_lowercase();
            let spawned = std::thread::Builder::new()
                .name(name)
                .spawn(move || reader_thread(shared, pipe, stream));
            match spawned {
                Ok(handle) => readers.push(handle),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e).context("spawning a console reader thread");
                }
            }
        }

        let guest = Guest {
            child: Mutex::new(child),
            stdin: Mutex::new(Some(stdin)),
            shared,
            readers,
            token: unique_token(),
            next_cmd: AtomicU64::new(1),
            log_path,
            args,
        };
        let started = Instant::now();
        guest
            .wait_for_console(0, BOOT_TIMEOUT, "the guest's readiness marker", |buf| {
                find(buf, READY_MARKER.as_bytes()).map(|_| ())
            })
            .context("booting the guest")?;
        // The first command doubles as the handshake: the shell is up and reads the serial line.
        guest
            .run_ok("stty -echo 2>/dev/null; dmesg -n 1", HANDSHAKE_TIMEOUT)
            .context("waiting for the guest shell")?;
        guest
            .shared
            .log_note(&format!("guest ready after {:?}", started.elapsed()));
        Ok(guest)
    }

    /// The QEMU process id.
    pub fn pid(&self) -> u32 {
        self.lock_child().id()
    }

    /// The QEMU arguments this guest was started with.
    pub fn qemu_args(&self) -> &[String] {
        &self.args
    }

    /// The log file with the QEMU command line, all console output, QEMU's stderr and the
    /// commands the harness sent. It is kept after the guest is dropped.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the guest printed on its console so far (CRs removed).
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.shared.lock().serial).replace('\r', "")
    }

    /// Everything QEMU printed on stderr so far.
    pub fn qemu_stderr(&self) -> String {
        String::from_utf8_lossy(&self.shared.lock().stderr).into_owned()
    }

    fn lock_child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes raw bytes to the guest's serial port.
    pub fn write_serial(&self, bytes: &[u8]) -> Result<()> {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        let pipe = stdin
            .as_mut()
            .ok_or_else(|| anyhow!("the guest's serial input is closed"))?;
        pipe.write_all(bytes)
            .and_then(|()| pipe.flush())
            .context("writing to the guest's serial port (QEMU gone?)")
    }

    /// A description of the current state for error messages: log path, console and stderr tails.
    fn diagnostics(&self) -> String {
        let state = self.shared.lock();
        let mut text = format!(
            "guest log: {}\n--- console (tail) ---\n{}",
            self.log_path.display(),
            tail(&state.serial, 3000)
        );
        if !state.stderr.is_empty() {
            text.push_str(&format!(
                "\n--- qemu stderr (tail) ---\n{}",
                tail(&state.stderr, 2000)
            ));
        }
        text
    }

    /// Waits until `matcher` finds something in the serial output from offset `from` on.
    fn wait_for_console<T>(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        mut matcher: impl FnMut(&[u8]) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            let start = from.min(state.serial.len());
            if let Some(found) = matcher(&state.serial[start..]) {
                return Ok(found);
            }
            if state.serial_eof {
                // Let the stderr reader catch QEMU's last words before reporting them.
                let _ =
                    self.shared
                        .changed
                        .wait_timeout_while(state, Duration::from_secs(5), |s| !s.stderr_eof);
                let status = self.lock_child().wait().ok();
                bail!(
                    "QEMU exited ({}) while waiting for {what}\n{}",
                    status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string()),
                    self.diagnostics()
                );
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                bail!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.diagnostics()
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Runs `cmd` in a subshell of the guest's shell and returns its output (stdout and stderr
    /// together) and exit status. `cmd` may span lines; its stdin is `/dev/null`; state such as
    /// `cd` does not persist between calls. Each line must stay under 3000 bytes (tty limit).
    ///
    /// On timeout the harness sends Ctrl-C to the guest shell and returns an error.
    pub fn run(&self, cmd: &str, timeout: Duration) -> Result<CmdOutput> {
        if let Some(line) = cmd.lines().find(|l| l.len() > MAX_COMMAND_LINE) {
            bail!(
                "command line of {} bytes is too long for the serial tty: {:.80}...",
                line.len(),
                line
            );
        }
        let n = self.next_cmd.fetch_add(1, Ordering::Relaxed);
        let token = &self.token;
        // The markers are split by quotes in the command text, so that an echo of the input
        // line can never match them; only the output of `echo` does.
        let begin = format!("VU-BEGIN-{token}-{n}");
        let end = format!("VU-END-{token}-{n}-");
        // `eval` of a quoted string: a syntax error in `cmd` fails the subshell, not the line.
        let quoted = cmd.replace('\'', "'\\''");
        let wrapped = format!(
            "echo \"VU-BEG\"\"IN-{token}-{n}\"; ( eval '{quoted}' ) </dev/null 2>&1; \
             echo \"VU-EN\"\"D-{token}-{n}-$?\"\n"
        );
        let from = self.shared.lock().serial.len();
        self.shared.log_note(&format!("run #{n}: {cmd}"));
        self.write_serial(wrapped.as_bytes())?;

        let parsed = self.wait_for_console(
            from,
            timeout,
            &format!("the end of command #{n} `{cmd}`"),
            |buf| {
                let b = find(buf, begin.as_bytes())?;
                let mut body = b + begin.len();
                // Skip the rest of the marker line.
                body += buf[body..].iter().position(|&c| c == b'\n')? + 1;
                let e = body + find(&buf[body..], end.as_bytes())?;
                let digits = e + end.len();
                let eol = digits + buf[digits..].iter().position(|&c| c == b'\n')?;
                let status = String::from_utf8_lossy(&buf[digits..eol]);
                Some((buf[body..e].to_vec(), status.trim().to_owned()))
            },
        );
        let (body, status) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                // Try to get the shell back for the next command.
                self.shared
                    .log_note(&format!("run #{n} failed; sending Ctrl-C"));
                let _ = self.write_serial(b"\x03");
                return Err(e);
            }
        };
        let status: i32 = status
            .parse()
            .with_context(|| format!("bad exit status {status:?} for `{cmd}`"))?;
        let stdout = String::from_utf8_lossy(&body).replace('\r', "");
        Ok(CmdOutput { stdout, status })
    }

    /// Like [`Guest::run`], but a non-zero exit status is an error carrying the output.
    /// Returns the output.
    pub fn run_ok(&self, cmd: &str, timeout: Duration) -> Result<String> {
        let out = self.run(cmd, timeout)?;
        if out.status != 0 {
            bail!(
                "guest command `{cmd}` exited with status {}; output:\n{}\n(guest log: {})",
                out.status,
                out.stdout,
                self.log_path.display()
            );
        }
        Ok(out.stdout)
    }

    /// Waits up to `timeout` for QEMU to exit and returns its exit status.
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.lock_child().try_wait()? {
            return Ok(status);
        }
        // QEMU closes the serial pipe only when it exits.
        self.wait_for_exit_eof(timeout)?;
        self.lock_child().wait().context("waiting for QEMU")
    }

    fn wait_for_exit_eof(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while !state.serial_eof {
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                bail!(
                    "QEMU did not exit within {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// `sync; poweroff -f` in the guest, then waits up to `timeout` for QEMU to exit cleanly.
    pub fn poweroff(&self, timeout: Duration) -> Result<()> {
        self.shared.log_note("poweroff");
        self.write_serial(b"sync; poweroff -f\n")?;
        let status = self.wait_exit(timeout)?;
        if !status.success() {
            bail!(
                "QEMU exited with {status} on poweroff\n{}",
                self.diagnostics()
            );
        }
        Ok(())
    }

    /// Kills QEMU (SIGKILL) if it is still running and reaps it.
    pub fn kill(&self) -> Result<()> {
        let mut child = self.lock_child();
        if child.try_wait()?.is_none() {
            self.shared.log_note("killing QEMU");
            child.kill().context("killing QEMU")?;
            child.wait().context("reaping QEMU")?;
        }
        Ok(())
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.kill();
        // Closing stdin last: QEMU is gone, nothing reads it.
        drop(self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take());
        for handle in self.readers.drain(..) {
            let _ = handle.join();
        }
        self.shared.log_note("guest dropped");
        let mut log = self.shared.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = log.take() {
            let _ = file.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_args_include_shared_memory_and_disks() {
        let image = GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
        };
        let config = GuestConfig {
            vhost_user_blk: vec![
                VhostUserBlkDisk::new("/tmp/a,b.sock"),
                VhostUserBlkDisk {
                    socket: "/tmp/c.sock".into(),
                    num_queues: Some(2),
                    reconnect: true,
                    queue_size: Some(256),
                },
            ],
            ..GuestConfig::default()
        };
        let args = config.qemu_args(&image).join(" ");
        assert!(args.contains("-object memory-backend-memfd,id=mem,size=512M,share=on"));
        assert!(args.contains("-numa node,memdev=mem"));
        assert!(args.contains("-chardev socket,id=vublk0,path=/tmp/a,,b.sock -device"));
        assert!(args.contains("-chardev socket,id=vublk1,path=/tmp/c.sock,reconnect=1"));
        assert!(args.contains(
            "vhost-user-blk-pci,chardev=vublk1,id=vublkdev1,num-queues=2,queue-size=256"
        ));
    }

    #[test]
    fn find_locates_needles() {
        assert_eq!(find(b"abcdef", b"cd"), Some(2));
        assert_eq!(find(b"abc", b"x"), None);
        assert_eq!(find(b"ab", b"abc"), None);
    }
}
