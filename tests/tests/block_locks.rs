//! Image locks against the real QEMU (the one the tests run: `VU_QEMU_VERSION`): our block
//! server locks images as qemu-storage-daemon's vhost-user-blk export does, both ways and
//! read-only included. Every scenario runs once with qemu-storage-daemon as the server and
//! once with ours, and the outcomes must match; the ones the issue names are checked too:
//! a VM that opens an image we serve writable as a drive is refused ("Failed to get shared
//! \"write\" lock"), we refuse an image a VM holds (naming the permission and what to do),
//! read-only servers coexist with read-only users, two of our servers never share a writable
//! image, and a server that stopped lets a VM have the image at once. No guest boots: QEMU
//! with `-S` opens and locks its drives when it starts (its QMP greeting says it is up).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use vu_tests::guest::{qemu_available, qemu_binary, qemu_tool, qemu_version};
use vu_tests::launcher::{Launcher, Spawned};

/// How long a QEMU program may take to open the image and greet on QMP.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Rw,
    Ro,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Qsd,
    Ours,
}

/// What one program that tried to open the image came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Opened,
    /// Refused; its error output.
    Refused(String),
}

impl Outcome {
    fn opened(&self) -> bool {
        *self == Outcome::Opened
    }

    /// QEMU's phrase (`Failed to get shared "write" lock`), or the whole text.
    fn reason(&self) -> String {
        match self {
            Outcome::Opened => "opened".into(),
            Outcome::Refused(e) => e
                .lines()
                .find_map(|l| l.find("Failed to get").map(|i| l[i..].to_owned()))
                .unwrap_or_else(|| e.clone()),
        }
    }
}

/// A program that opened the image and holds it until dropped.
enum Holder {
    Qemu(#[allow(dead_code)] QemuProc),
    Launcher(Launcher),
}

/// A QEMU process, killed when dropped.
struct QemuProc(Child);

impl Drop for QemuProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test's image and a place for sockets.
struct Rig {
    dir: tempfile::TempDir,
    image: PathBuf,
    n: std::cell::Cell<u32>,
}

impl Rig {
    fn new() -> Result<Rig> {
        let dir = tempfile::tempdir()?;
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)?.set_len(16 << 20)?;
        Ok(Rig {
            dir,
            image,
            n: std::cell::Cell::new(0),
        })
    }

    fn socket(&self) -> PathBuf {
        self.n.set(self.n.get() + 1);
        self.dir.path().join(format!("s{}.sock", self.n.get()))
    }

    fn server(&self, s: Server, m: Mode) -> Result<(Outcome, Option<Holder>)> {
        match s {
            Server::Qsd => self.qsd(m),
            Server::Ours => self.ours(m),
        }
    }

    /// qemu-storage-daemon exporting the image over vhost-user-blk.
    fn qsd(&self, m: Mode) -> Result<(Outcome, Option<Holder>)> {
        let ro = if m == Mode::Ro { ",read-only=on" } else { "" };
        let mut c = Command::new(qemu_tool("qemu-storage-daemon"));
        c.arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=f0,filename={}{ro}",
                self.image.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path={},writable={}",
                self.socket().display(),
                if m == Mode::Rw { "on" } else { "off" }
            ))
            // Last: the monitor greets once the export exists.
            .args(["--chardev", "stdio,id=m0", "--monitor", "chardev=m0"]);
        qmp_open(c)
    }

    /// A VM (not started: -S) with the image as a virtio-blk drive.
    fn vm(&self, m: Mode) -> Result<(Outcome, Option<Holder>)> {
        let ro = if m == Mode::Ro { ",readonly=on" } else { "" };
        let mut c = Command::new(qemu_binary());
        c.args(["-S", "-accel", "tcg", "-display", "none", "-nodefaults"])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=d0{ro}",
                self.image.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=d0", "-qmp", "stdio"]);
        qmp_open(c)
    }

    /// Our launcher serving the image.
    fn ours(&self, m: Mode) -> Result<(Outcome, Option<Holder>)> {
        let sock = self.socket();
        let mut args: Vec<String> = [
            "start",
            "block",
            "--socket",
            &sock.display().to_string(),
            "--file",
            &self.image.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if m == Mode::Ro {
            args.push("--read-only".into());
        }
        Ok(match Launcher::try_spawn(&args, &sock)? {
            Spawned::Ready(l) => (Outcome::Opened, Some(Holder::Launcher(l))),
            Spawned::Exited { stderr, .. } => (Outcome::Refused(stderr), None),
        })
    }

    /// qemu-io reading (read-only) or writing one sector, then exiting.
    fn qemu_io(&self, m: Mode) -> Result<Outcome> {
        let mut c = Command::new(qemu_tool("qemu-io"));
        c.args(["-f", "raw"]);
        match m {
            Mode::Ro => c.args(["-r", "-c", "read 0 512"]),
            Mode::Rw => c.args(["-c", "write 0 512"]),
        };
        one_shot(c.arg(&self.image))
    }

    /// `qemu-img info`.
    fn qemu_img_info(&self) -> Result<Outcome> {
        let mut c = Command::new(qemu_tool("qemu-img"));
        one_shot(c.arg("info").arg(&self.image))
    }

    /// Every peer tried while something holds the image, by name.
    fn peers(&self) -> Result<Vec<(String, Outcome)>> {
        let mut out = Vec::new();
        for m in [Mode::Rw, Mode::Ro] {
            out.push((format!("VM {m:?} drive"), self.vm(m)?.0));
            out.push((format!("qsd {m:?} export"), self.qsd(m)?.0));
            out.push((format!("qemu-io {m:?}"), self.qemu_io(m)?));
        }
        out.push(("qemu-img info".into(), self.qemu_img_info()?));
        Ok(out)
    }
}

/// Runs a QEMU program whose stdin and stdout are a QMP monitor: opened when it answers a
/// command (QMP commands run in the main loop, after every option was acted on: the greeting
/// alone comes earlier), refused when it exits first.
fn qmp_open(mut c: Command) -> Result<(Outcome, Option<Holder>)> {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {c:?}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        // A program that exits at once closes the pipe: its error output says why.
        let _ = stdin.write_all(b"{\"execute\": \"qmp_capabilities\"}\n");
        // Kept open: QEMU quits when its monitor's input ends.
        std::mem::forget(stdin);
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let answered = lines.any(|l| l.is_ok_and(|l| l.contains("\"return\"")));
        let _ = tx.send(answered);
    });
    let answered = rx.recv_timeout(OPEN_TIMEOUT).unwrap_or(false);
    if answered {
        // Keep draining stderr so that the program never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        return Ok((Outcome::Opened, Some(Holder::Qemu(QemuProc(child)))));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err);
    ensure!(
        !err.is_empty(),
        "{c:?} neither answered on QMP nor said why"
    );
    Ok((Outcome::Refused(err), None))
}

fn one_shot(c: &mut Command) -> Result<Outcome> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {c:?}"))?;
    Ok(if out.status.success() {
        Outcome::Opened
    } else {
        Outcome::Refused(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

fn started(what: &str, r: (Outcome, Option<Holder>)) -> Result<Holder> {
    match r {
        (Outcome::Opened, Some(h)) => Ok(h),
        (o, _) => bail!("{what} could not open a free image: {}", o.reason()),
    }
}

fn skip() -> bool {
    if !qemu_available() {
        eprintln!("skipped: {} does not run", qemu_binary());
        return true;
    }
    eprintln!("block locks against {}", qemu_version());
    false
}

/// Server first, then every QEMU program: the same outcomes with ours as with qsd's export.
#[test]
fn qemu_programs_meet_our_server_as_they_meet_qsd() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let rig = Rig::new()?;
    for m in [Mode::Rw, Mode::Ro] {
        let mut seen = Vec::new();
        for s in [Server::Qsd, Server::Ours] {
            let _server = started(&format!("{s:?} {m:?}"), rig.server(s, m)?)?;
            seen.push(rig.peers()?);
        }
        for ((peer, qsd), (_, ours)) in seen[0].iter().zip(&seen[1]) {
            eprintln!(
                "{m:?} server, then {peer}: qsd: {}; ours: {}",
                qsd.reason(),
                ours.reason()
            );
            ensure!(
                qsd.reason() == ours.reason(),
                "{peer} after a {m:?} server: with qsd {qsd:?}, with ours {ours:?}"
            );
        }
        // The issue's own words, with ours.
        let vm_rw = &seen[1][0].1;
        match m {
            Mode::Rw => ensure!(
                vm_rw.reason() == "Failed to get shared \"write\" lock",
                "a VM opened an image we serve writable: {vm_rw:?}"
            ),
            Mode::Ro => ensure!(vm_rw.opened(), "read-only serving kept a VM out: {vm_rw:?}"),
        }
    }
    Ok(())
}

/// Every QEMU program first, then a server: ours refuses or starts as qsd's export does, and
/// says why.
#[test]
fn our_server_meets_qemu_programs_as_qsd_does() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let rig = Rig::new()?;
    for holder_mode in [Mode::Rw, Mode::Ro] {
        for holder in ["VM", "qsd"] {
            let what = format!("{holder} {holder_mode:?}");
            let _h = started(
                &what,
                if holder == "VM" {
                    rig.vm(holder_mode)?
                } else {
                    rig.qsd(holder_mode)?
                },
            )?;
            for m in [Mode::Rw, Mode::Ro] {
                let (qsd, _q) = rig.server(Server::Qsd, m)?;
                drop(_q);
                let (ours, _o) = rig.server(Server::Ours, m)?;
                drop(_o);
                eprintln!(
                    "{what}, then a {m:?} server: qsd: {}; ours: {}",
                    qsd.reason(),
                    ours.reason()
                );
                ensure!(
                    qsd.opened() == ours.opened(),
                    "a {m:?} server after {what}: qsd {qsd:?}, ours {ours:?}"
                );
                if let Outcome::Refused(e) = &ours {
                    ensure!(
                        e.contains("failed to get \"write\" lock")
                            && e.contains("does not share \"write\"")
                            && e.contains("--read-only"),
                        "our refusal does not say why: {e}"
                    );
                }
            }
            // A VM with the image as a drive (read-only ones too) keeps writable servers out.
            if holder == "VM" {
                ensure!(
                    !rig.ours(Mode::Rw)?.0.opened(),
                    "we served an image writable that a VM holds ({holder_mode:?})"
                );
                ensure!(
                    rig.ours(Mode::Ro)?.0.opened(),
                    "read-only serving refused beside a VM's {holder_mode:?} drive"
                );
            }
        }
    }
    Ok(())
}

/// Two of our servers never share a writable image; read-only ones share; a server that
/// stopped leaves the image to a VM at once (QEMU does not retry).
#[test]
fn our_servers_exclude_each_other_and_release_at_once() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let rig = Rig::new()?;
    let first = started("ours Rw", rig.ours(Mode::Rw)?)?;
    match rig.ours(Mode::Rw)?.0 {
        Outcome::Refused(e) => ensure!(e.contains("in use by another server of ours"), "{e}"),
        Outcome::Opened => bail!("two of our servers serve one image writable"),
    }
    ensure!(!rig.ours(Mode::Ro)?.0.opened(), "read-only beside writable");
    let Holder::Launcher(l) = first else {
        bail!("not a launcher")
    };
    let st = l.terminate()?;
    ensure!(st.success(), "launcher exited {st}");
    let (vm, h) = rig.vm(Mode::Rw)?;
    ensure!(
        vm.opened(),
        "a VM right after our server stopped: {}",
        vm.reason()
    );
    drop(h);
    let _a = started("ours Ro", rig.ours(Mode::Ro)?)?;
    let _b = started("a second ours Ro", rig.ours(Mode::Ro)?)?;
    ensure!(!rig.ours(Mode::Rw)?.0.opened(), "writable beside read-only");
    Ok(())
}
